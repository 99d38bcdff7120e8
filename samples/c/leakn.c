/* leakn.c -- a leak whose size is a command-line argument, for `memprof diff`.
 *
 * Build: gcc -O2 -g -fno-builtin [-fno-omit-frame-pointer | -fomit-frame-pointer] leakn.c
 * Usage: leakn [N [free|lose]]   (default 5)
 *
 * Expected, exact, for N:
 *   churn        100 x malloc(64), each freed at once: 100 allocations, 6400 bytes, nothing live
 *   leak_fixed     3 x malloc(100), leaked: 300 bytes live at the end and at the peak
 *   leak_n         N x malloc(48), leaked: 48 * N bytes allocated, live at the end and at the
 *                  peak (the peak is the last allocation: nothing is freed after churn)
 * So two runs with N = 5 and N = 12 differ only at leak_n: +7 allocations, +336 bytes in each
 * byte figure. Checked with valgrind: N = 5 "108 allocs, 100 frees, 6,940 bytes allocated",
 * "in use at exit: 540 bytes in 8 blocks"; N = 12 "115 allocs, 100 frees, 7,276 bytes
 * allocated", "876 bytes in 15 blocks".
 * `leakn N free` is the same program with its leaks fixed: the same allocations, then
 * release_all frees the 3 + N blocks before main returns, so nothing is live at the end (the
 * peak is unchanged). Checked with valgrind, N = 5: "108 allocs, 108 frees, 6,940 bytes
 * allocated", "in use at exit: 0 bytes in 0 blocks".
 * `leakn N lose` drops the only pointer to the chain instead (lose_all, which also zeroes the
 * stack below main: see scrub_stack): the same blocks live at the end, but none reachable. The chain's head, the last leak_n block, is definitely lost
 * and the other 2 + N indirectly. Checked with valgrind, N = 5: "definitely lost: 48 bytes in
 * 1 blocks", "indirectly lost: 492 bytes in 7 blocks". Without `lose`, all 3 + N are still
 * reachable (valgrind: "still reachable: 540 bytes in 8 blocks"). */
#include <stdlib.h>
#include <string.h>

#include "common.h"

NOIPA void churn(void) {
    for (int i = 0; i < 100; i++) {
        void *p = malloc(64);
        sink = p;
        free(p);
    }
}

/* Every block leak_fixed and leak_n allocate, chained through its first word, so that
 * `free` mode can release them (no allocation of its own for the bookkeeping). */
static void *kept;

static void keep(void *block) {
    *(void **)block = kept;
    kept = block;
    sink = block;
}

NOIPA void leak_fixed(void) {
    for (int i = 0; i < 3; i++)
        keep(malloc(100));
}

NOIPA void leak_n(unsigned long n) {
    for (unsigned long i = 0; i < n; i++)
        keep(malloc(48));
}

NOIPA void release_all(void) {
    while (kept != NULL) {
        void *next = *(void **)kept;
        free(kept);
        kept = next;
    }
}

/* Zeroes the stack below main's frame: the frames exit() pushes there do not initialise every
 * slot, and a slot malloc's own frames left a block's address in would be a (stale) root. */
NOIPA void scrub_stack(void) {
    volatile char pad[16384];
    for (unsigned long i = 0; i < sizeof pad; i++)
        pad[i] = 0;
}

NOIPA void lose_all(void) {
    *(void *volatile *)&kept = NULL;
    sink = NULL;
    scrub_stack();
}

int main(int argc, char **argv) {
    unsigned long n = 5;
    if (argc > 1) {
        char *end = NULL;
        n = strtoul(argv[1], &end, 10);
        if (*argv[1] == '\0' || *end != '\0')
            return 2;
    }
    int fixed = argc > 2 && strcmp(argv[2], "free") == 0;
    int lost = argc > 2 && strcmp(argv[2], "lose") == 0;
    if (argc > 3 || (argc > 2 && !fixed && !lost))
        return 2;
    churn();
    leak_fixed();
    leak_n(n);
    if (fixed)
        release_all();
    if (lost)
        lose_all();
    return 0;
}
