/* many_stacks.c -- one leaked block from each of N distinct call stacks (argv[1], default
 * 1000), for the cost of many distinct stacks in memprof (collector, report, flame graphs).
 *
 * Build: gcc -O2 -g -fno-builtin [-fno-omit-frame-pointer | -fomit-frame-pointer] many_stacks.c
 * Usage: many_stacks [N]
 *
 * Block i (0 <= i < N) is allocated at the bottom of a recursion of depth D, the smallest
 * D >= 1 with 2^D >= N: main -> descend(D, i) -> D steps, levels D-1 down to 0. The step at
 * level k is step_one if bit k of i is set, else step_zero (so the top bit is nearest main),
 * and the level-0 step calls malloc itself. Each of the D frames below descend is a return
 * address in step_zero or in step_one, so together they spell the D bits of i: N genuinely
 * distinct return-address sequences (and N distinct symbolized stacks).
 *
 * Expected, exact, for N:
 *   malloc    N calls, block i is malloc(8 + 8 * (i % 8)): 8 to 64 bytes, all leaked
 *   bytes     sum over i < N of 8 + 8 * (i % 8): for N = 8q + r,
 *             288 q + 4 r (r + 1) bytes (N = 200000: 7,200,000 bytes; N = 20000: 720,000)
 *   live      N blocks at the end and at the peak (nothing is freed)
 *   sites     N allocation sites, N leak sites; each site is 1 block. The largest, 64-byte
 *             blocks (i % 8 == 7) number floor(N / 8): 25,000 for N = 200000, 2,500 for
 *             N = 20000.
 *   stacks    D + 1 frames of ours (D steps, descend) + main + libc's start-up frames.
 *   report    for N > 1000, report.json lists 1000 sites in `leaks` and in `sites`, the
 *             largest (for N >= 8000 all of 64 bytes), and sums up the other N - 1000 sites,
 *             1 block each, in `unlisted_leaks` and `unlisted_sites`: for N = 20000, 19,000
 *             blocks of 656,000 bytes (720,000 - 1000 * 64).
 * Checked with valgrind, N = 20000: "in use at exit: 720,000 bytes in 20,000 blocks",
 * "total heap usage: 20,000 allocs, 0 frees, 720,000 bytes allocated".
 * Run time without memprof, N = 200000: about 0.03 s. */
#include <stdlib.h>

#include "common.h"

NOIPA void step_one(unsigned level, unsigned long index);

/* One level of the recursion for block `index`: the next level's step follows bit
 * (level - 1) of index; level 0 allocates. */
NOIPA void step_zero(unsigned level, unsigned long index) {
    if (level == 0) {
        sink = malloc(8 + 8 * (index % 8));
    } else if ((index >> (level - 1)) & 1) {
        step_one(level - 1, index);
    } else {
        step_zero(level - 1, index);
    }
    after_call++;
}

NOIPA void step_one(unsigned level, unsigned long index) {
    if (level == 0) {
        sink = malloc(8 + 8 * (index % 8));
    } else if ((index >> (level - 1)) & 1) {
        step_one(level - 1, index);
    } else {
        step_zero(level - 1, index);
    }
    after_call++;
}

/* Enters the recursion through the step named by the top bit. */
NOIPA void descend(unsigned depth, unsigned long index) {
    if ((index >> (depth - 1)) & 1)
        step_one(depth - 1, index);
    else
        step_zero(depth - 1, index);
    after_call++;
}

int main(int argc, char **argv) {
    unsigned long n = 1000;
    if (argc > 1) {
        char *end = NULL;
        n = strtoul(argv[1], &end, 10);
        if (*argv[1] == '\0' || *end != '\0')
            return 2;
    }
    unsigned depth = 1;
    while (depth < 64 && (1UL << depth) < n)
        depth++;
    for (unsigned long i = 0; i < n; i++)
        descend(depth, i);
    say("many_stacks done\n");
    return 0;
}
