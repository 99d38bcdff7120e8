/* aligned.c -- the aligned allocation functions.
 *
 * Build: gcc -O2 -g -fno-builtin [-fno-omit-frame-pointer | -fomit-frame-pointer] aligned.c
 *
 * Every alignment is above 16, so glibc never relays to malloc (it does for alignment <= 16).
 * pvalloc sizes are page multiples, so requested and rounded sizes agree.
 * In Debian 12's glibc (2.36) aligned_alloc and memalign are one function (same address), so a
 * profiler may report all four of their calls under either name: sum the two.
 *
 * Expected, exact:
 *   posix_memalign:          2 calls,   300 bytes (100 leaked, 200 freed)
 *   aligned_alloc + memalign: 4 calls,  1132 bytes (256 + 300 leaked, 512 + 64 freed)
 *   valloc:                  2 calls,  6000 bytes (1000 leaked, 5000 freed)
 *   pvalloc:                 2 calls, 12288 bytes (8192 leaked, 4096 freed)
 *   malloc: 0 calls; frees 5; allocations 10, bytes_allocated 19720
 *   live at exit: 5 blocks, 9848 bytes
 *   leaks: leak_posix_memalign 1 x 100, leak_aligned_alloc 1 x 256, leak_memalign 1 x 300,
 *          leak_valloc 1 x 1000, leak_pvalloc 1 x 8192
 * Checked with count_calls.py (gdb breakpoints: every call above, each of the four
 * aligned_alloc/memalign calls hits both names, no malloc) -- valgrind aborts at pvalloc. */
#include <malloc.h>
#include <stdlib.h>

#include "common.h"

NOIPA void leak_posix_memalign(void) {
    void *p = NULL;
    if (posix_memalign(&p, 64, 100) != 0)
        _exit(10);
    sink = p;
}

NOIPA void leak_aligned_alloc(void) { sink = aligned_alloc(64, 256); }

NOIPA void leak_memalign(void) { sink = memalign(256, 300); }

NOIPA void leak_valloc(void) { sink = valloc(1000); }

NOIPA void leak_pvalloc(void) { sink = pvalloc(8192); }

NOIPA void aligned_freed(void) {
    void *p = NULL;
    if (posix_memalign(&p, 4096, 200) != 0)
        _exit(11);
    sink = p;
    free(p);
    p = aligned_alloc(128, 512);
    sink = p;
    free(p);
    p = memalign(32, 64);
    sink = p;
    free(p);
    p = valloc(5000);
    sink = p;
    free(p);
    p = pvalloc(4096);
    sink = p;
    free(p);
}

int main(void) {
    leak_posix_memalign();
    leak_aligned_alloc();
    leak_memalign();
    leak_valloc();
    leak_pvalloc();
    aligned_freed();
    return 0;
}
