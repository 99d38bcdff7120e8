/* realloc_edge.c -- realloc and reallocarray corner cases.
 *
 * Build: gcc -O2 -g -fno-builtin [-fno-omit-frame-pointer | -fomit-frame-pointer] realloc_edge.c
 *
 * glibc 2.36 implements realloc(NULL, n) by calling malloc, realloc(p, 0) by calling free and
 * reallocarray by calling realloc; the profiler must count only the outer call (the figures
 * below count what the program called).
 *
 * realloc_cycle:      realloc(NULL, 100), grow to 200, shrink to 50, realloc(p, 0) (frees p,
 *                     returns NULL). Nothing left live.
 * array_grow:         reallocarray(NULL, 10, 20) (200), reallocarray(q, 20, 20) (400),
 *                     reallocarray(q, 2^62, 4) (overflows: NULL, q stays live). Leaks q.
 *                     The product wraps to exactly 0 in 64 bits: a profiler that multiplies
 *                     without an overflow check mistakes it for reallocarray(q, 0, 4), a free.
 * failed_realloc:     s = malloc(64); realloc(s, 2^63) fails (NULL, s stays live). Leaks s.
 * realloc_then_free:  malloc(10), realloc to 5000, free.
 * grow_leak:          malloc(16), realloc to 32. Leaks the 32-byte block.
 *
 * Expected, exact:
 *   malloc:        3 calls,   90 bytes (64 + 10 + 16)
 *   realloc:       7 calls, 5382 bytes (successful: 100 + 200 + 50 + 5000 + 32;
 *                  realloc(p, 0) and the failed one add nothing)
 *   reallocarray:  3 calls,  600 bytes (200 + 400; the overflowing one adds nothing)
 *   allocations 13, failed_allocations 2, bytes_allocated 6072
 *   frees 1 (realloc_then_free; realloc(p, 0) is a realloc call, not a free call)
 *   live at exit: 3 blocks, 496 bytes
 *   leaks: array_grow    1 block 400 bytes (reallocarray)
 *          failed_realloc 1 block  64 bytes (malloc)
 *          grow_leak      1 block  32 bytes (realloc)
 * Checked with valgrind: "in use at exit: 496 bytes in 3 blocks", "6,072 bytes allocated"
 * (valgrind counts a realloc as one alloc plus one free, so its call totals differ), and with
 * count_calls.py, which also shows glibc's nested calls: realloc(NULL, 100) -> malloc(100),
 * realloc(p, 0) -> free, reallocarray -> realloc (-> malloc when q is NULL). */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>

#include "common.h"

/* Volatile so that gcc neither folds nor warns about the impossible sizes. */
static volatile size_t huge_size = (size_t)1 << 63;
static volatile size_t huge_count = (size_t)1 << 62;

NOIPA void realloc_cycle(void) {
    void *p = realloc(NULL, 100);
    sink = p;
    p = realloc(p, 200);
    sink = p;
    p = realloc(p, 50);
    sink = p;
    void *r = realloc(p, 0);
    if (r != NULL)
        _exit(10); /* glibc 2.36 frees and returns NULL */
    sink = r;
}

NOIPA void array_grow(void) {
    void *q = reallocarray(NULL, 10, 20);
    sink = q;
    q = reallocarray(q, 20, 20);
    sink = q;
    void *r = reallocarray(q, huge_count, 4);
    if (r != NULL || errno != ENOMEM)
        _exit(11);
    sink = q;
}

NOIPA void failed_realloc(void) {
    void *s = malloc(64);
    sink = s;
    void *t = realloc(s, huge_size);
    if (t != NULL)
        _exit(12);
    sink = s;
}

NOIPA void realloc_then_free(void) {
    void *p = malloc(10);
    sink = p;
    p = realloc(p, 5000);
    sink = p;
    free(p);
}

NOIPA void grow_leak(void) {
    void *p = malloc(16);
    sink = p;
    p = realloc(p, 32);
    sink = p;
}

int main(void) {
    realloc_cycle();
    array_grow();
    failed_realloc();
    realloc_then_free();
    grow_leak();
    return 0;
}
