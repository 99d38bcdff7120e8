/* leaks.c -- the basic leak target.
 *
 * Build: gcc -O2 -g -fno-builtin [-fno-omit-frame-pointer | -fomit-frame-pointer] leaks.c
 *
 * Expected, exact (the program calls nothing else that allocates; it uses no stdio):
 *   malloc:  1004 calls, 68396 bytes  (3 x 100 leak_small + 1000 x 64 churn + 1 x 4096 d)
 *   calloc:     2 calls,   640 bytes  (2 x calloc(10, 32) in leak_calloc)
 *   free:    1000 (churn)
 *   live at exit: 6 blocks, 5036 bytes
 *   leaks per site:
 *     leak_small   3 blocks   300 bytes (malloc)
 *     leak_calloc  2 blocks   640 bytes (calloc)
 *     d            1 block   4096 bytes (malloc; called as main -> a -> b -> c -> d)
 *   churn leaks nothing.
 * Checked with valgrind: "total heap usage: 1,006 allocs, 1,000 frees, 69,036 bytes allocated",
 * "in use at exit: 5,036 bytes in 6 blocks". */
#include <stdlib.h>

#include "common.h"

NOIPA void leak_small(void) {
    for (int i = 0; i < 3; i++)
        sink = malloc(100);
}

NOIPA void leak_calloc(void) {
    for (int i = 0; i < 2; i++)
        sink = calloc(10, 32);
}

NOIPA void churn(void) {
    for (int i = 0; i < 1000; i++) {
        void *p = malloc(64);
        sink = p;
        free(p);
    }
}

/* a -> b -> c -> d: the increments after each call keep every frame on the stack. */
NOIPA void d(void) { sink = malloc(4096); }
NOIPA void c(void) { d(); after_call++; }
NOIPA void b(void) { c(); after_call++; }
NOIPA void a(void) { b(); after_call++; }

int main(void) {
    leak_small();
    leak_calloc();
    churn();
    a();
    return 0;
}
