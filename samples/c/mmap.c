/* mmap.c -- anonymous mappings, full and partial unmaps, mremap.
 *
 * Build: gcc -O2 -g -fno-builtin [-fno-omit-frame-pointer | -fomit-frame-pointer] mmap.c
 *
 * Every length is a page multiple (4096-byte pages), so requested and mapped sizes agree.
 *   map_a: 4 pages (16384), map_b: 8 pages (32768), map_c: 2 pages (8192), map_d: 3 pages (12288)
 *   unmap_c:      munmap(c, 8192)                  -> c gone
 *   punch_b:      munmap(b + 2 pages, 2 pages)     -> b split into [0, 2) and [4, 8) pages
 *   grow_a:       mremap(a, 16384, 65536, MREMAP_MAYMOVE) -> a becomes 16 pages
 * Expected, exact (no malloc at all, so libc makes no mmap calls of its own):
 *   mmap: 4 calls, 69632 bytes; munmap: 2 calls, 0 unknown; mremap: 1 call
 *   live mapped regions at exit: 4 (a, two halves of b, d), 102400 bytes (65536 + 24576 + 12288)
 *   peak mapped bytes: 102400 (reached by the mremap; before it 69632 was the highest)
 *   mappings by site: grow_a 65536 bytes, map_b 24576 bytes (2 regions), map_d 12288 bytes
 *   heap: 0 allocations, 0 frees, 0 live blocks.
 * Checked with strace -e trace=memory (after the ld.so startup mappings) and /proc/PID/maps. */
#define _GNU_SOURCE
#include <sys/mman.h>

#include "common.h"

#define PAGE 4096UL

static inline __attribute__((always_inline)) void *map_pages(unsigned long pages) {
    void *p = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        _exit(10);
    *(volatile char *)p = 1; /* touch it: observable */
    return p;
}

NOIPA void *map_a(void) { void *p = map_pages(4); after_call++; return p; }
NOIPA void *map_b(void) { void *p = map_pages(8); after_call++; return p; }
NOIPA void *map_c(void) { void *p = map_pages(2); after_call++; return p; }
NOIPA void *map_d(void) { void *p = map_pages(3); after_call++; return p; }

NOIPA void unmap_c(void *c) {
    if (munmap(c, 2 * PAGE) != 0)
        _exit(11);
    after_call++;
}

NOIPA void punch_b(void *b) {
    if (munmap((char *)b + 2 * PAGE, 2 * PAGE) != 0)
        _exit(12);
    after_call++;
}

NOIPA void *grow_a(void *a) {
    void *p = mremap(a, 4 * PAGE, 16 * PAGE, MREMAP_MAYMOVE);
    if (p == MAP_FAILED)
        _exit(13);
    after_call++;
    return p;
}

int main(void) {
    void *a = map_a();
    void *b = map_b();
    void *c = map_c();
    void *d = map_d();
    unmap_c(c);
    punch_b(b);
    a = grow_a(a);
    sink = a;
    sink = d;
    return 0;
}
