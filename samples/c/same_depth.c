/* Stacks that share their innermost frames, at the same stack addresses, and differ above
 * them (profiler-cli/tests/e2e/stacks.rs). The preloaded capture takes a walk's outer frames
 * from the walk before where both reach one frame with the same registers and the words above
 * it are unchanged; here `leaf`'s frame sits at the same address with the same registers
 * whether `left` or `right` called it, and only the return address above it differs.
 *
 * Build: gcc -O2 -g -fno-builtin [-fomit-frame-pointer] -o DIR/same_depth same_depth.c
 *
 * ROUNDS rounds, each: leaf <- left <- main, leaf <- right <- main, leaf <- descend x3 <- main,
 * leaf <- descend <- main. Every path makes ROUNDS 16-byte allocations, each freed at once. */
#include <stdlib.h>

#include "common.h"

#define ROUNDS 1000

NOIPA void leaf(void) {
    void *p = malloc(16); /* @leaf-malloc */
    sink = p;
    free(p);
    after_call++;
}

NOIPA void left(void) {
    leaf(); /* @left-call */
    after_call++;
}

/* The same body as `left`: the same frame, so `leaf` runs at the same address. */
NOIPA void right(void) {
    leaf(); /* @right-call */
    after_call++;
}

NOIPA void descend(int levels) {
    if (levels > 1)
        descend(levels - 1); /* @descend-call */
    else
        leaf(); /* @descend-leaf */
    after_call++;
}

int main(void) {
    for (int round = 0; round < ROUNDS; round++) {
        left();     /* @main-left */
        right();    /* @main-right */
        descend(3); /* @main-deep */
        descend(1); /* @main-shallow */
    }
    return 0;
}
