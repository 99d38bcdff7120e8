/* churn.c -- malloc/free pairs for the overhead benchmark.
 *
 * Build: gcc -O2 -g -fno-builtin churn.c
 * Usage: churn [PAIRS [--wait]]   (default 1000000)
 *   --wait: reads one byte from stdin before the first pair (so that `memprof attach`, once
 *   attached, sees every pair; `cargo xtask bench live`), allocating nothing until then.
 *
 * Pair i mallocs SIZES[i % 8] bytes and frees it at once.
 * Expected, exact, for PAIRS = N: malloc N calls, frees N, no leaks, and
 *   bytes = (N / 8) * 2024 + sum of the first N % 8 sizes  (2024 = sum of SIZES)
 *   e.g. N = 10000: 2530000 bytes; N = 1000000: 253000000 bytes.
 * Checked with valgrind for N = 10000: "10,000 allocs, 10,000 frees, 2,530,000 bytes allocated". */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"

static const size_t SIZES[8] = {16, 24, 32, 64, 128, 256, 480, 1024};

NOIPA void churn_pairs(unsigned long pairs) {
    for (unsigned long i = 0; i < pairs; i++) {
        void *p = malloc(SIZES[i % 8]);
        sink = p;
        free(p);
    }
}

int main(int argc, char **argv) {
    unsigned long pairs = 1000000;
    if (argc > 1) {
        char *end = NULL;
        pairs = strtoul(argv[1], &end, 10);
        if (*argv[1] == '\0' || *end != '\0')
            return 2;
    }
    if (argc > 2) {
        char byte;
        if (strcmp(argv[2], "--wait") != 0 || read(0, &byte, 1) != 1)
            return 2;
    }
    churn_pairs(pairs);
    return 0;
}
