/* waiter.c -- a target for `memprof attach`.
 *
 * Build: gcc -O2 -g -fno-builtin [-fno-omit-frame-pointer | -fomit-frame-pointer] waiter.c
 *
 * Protocol (stdout is written with write(2): no stdio buffer is ever allocated):
 *   1. prints "ready\n" and blocks until a line arrives on stdin (allocates nothing so far);
 *   2. attach_leak: 5 x malloc(4096), leaked; attach_churn: 100 x (malloc(128); free);
 *   3. prints "done\n" and blocks reading stdin until EOF; exits 0.
 * Expected for an attach window that spans step 2, exact:
 *   malloc 105 calls, 33280 bytes (5 x 4096 + 100 x 128); frees 100
 *   leaks: attach_leak 5 blocks, 20480 bytes; nothing else.
 * Checked with valgrind: "105 allocs, 100 frees, 33,280 bytes allocated". */
#include <stdlib.h>

#include "common.h"

NOIPA void attach_leak(void) {
    for (int i = 0; i < 5; i++)
        sink = malloc(4096);
}

NOIPA void attach_churn(void) {
    for (int i = 0; i < 100; i++) {
        void *p = malloc(128);
        sink = p;
        free(p);
    }
}

int main(void) {
    say("ready\n");
    if (!read_line())
        return 2;
    attach_leak();
    attach_churn();
    say("done\n");
    char buf[64];
    while (read(0, buf, sizeof buf) > 0) {
    }
    return 0;
}
