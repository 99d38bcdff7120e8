/* bigheap.c -- a large live heap for the leak check's benchmark (cargo xtask bench leak-check).
 *
 * Build: gcc -O2 -g -fno-builtin bigheap.c
 * Usage: bigheap MIB [wait]
 *
 * Allocates MIB MiB in 4 KiB blocks. A table (one block) holds every block but each tenth;
 * each block holds a pointer into the middle of a block a quarter of the heap away, then
 * pseudo-random words (an LCG: most are no pointer, as in real data). So a scan meets
 * reachable and possibly lost blocks, and reads every byte of the heap once.
 * With `wait`: prints "ready", allocates after a line on stdin, prints "done", and blocks
 * until stdin closes (for `memprof attach --leak-check`). Without: allocates and exits. */
#include <stdlib.h>

#include "common.h"

#define BLOCK 4096
#define WORDS (BLOCK / sizeof(unsigned long))

static unsigned long *volatile *volatile table;

NOIPA void build(size_t blocks) {
    table = malloc(blocks * sizeof *table);
    unsigned long **all = (unsigned long **)table;
    for (size_t i = 0; i < blocks; i++)
        all[i] = malloc(BLOCK);
    unsigned long state = 42;
    for (size_t i = 0; i < blocks; i++) {
        unsigned long *block = all[i];
        block[0] = (unsigned long)all[(i + blocks / 4) % blocks] + BLOCK / 2;
        for (size_t w = 1; w < WORDS; w++) {
            state = state * 6364136223846793005UL + 1442695040888963407UL;
            block[w] = state;
        }
    }
    for (size_t i = 0; i < blocks; i += 10)
        all[i] = 0;
}

int main(int argc, char **argv) {
    if (argc < 2)
        return 2;
    size_t blocks = (size_t)atol(argv[1]) * (1 << 20) / BLOCK;
    int wait = argc > 2;
    if (wait) {
        say("ready\n");
        if (!read_line())
            return 2;
    }
    build(blocks);
    say("done\n");
    if (wait) {
        char buf[64];
        while (read(0, buf, sizeof buf) > 0) {
        }
    }
    return 0;
}
