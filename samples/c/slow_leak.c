/* slow_leak.c -- a slow, steady leak for the live view (`memprof run --live`).
 *
 * Build: gcc -O2 -g -fno-builtin slow_leak.c
 * Usage: slow_leak [N]   (default 100)
 *
 * Expected, exact, for N: slow_leak_site leaks one malloc(1000) every 50 ms, N times: N
 * blocks and 1000 * N bytes live at the end (and at the peak, reached by the last one);
 * nothing else is allocated. Says "slow_leak: start" and "slow_leak: done" on stdout (the
 * live view's e2e test finds them in DIR/target-output.log). Exits 0. */
#include <stdlib.h>
#include <time.h>

#include "common.h"

NOIPA void slow_leak_site(void) {
    sink = malloc(1000);
}

int main(int argc, char **argv) {
    unsigned long n = 100;
    if (argc > 1) {
        char *end = NULL;
        n = strtoul(argv[1], &end, 10);
        if (*argv[1] == '\0' || *end != '\0')
            return 2;
    }
    say("slow_leak: start\n");
    const struct timespec pause = {.tv_sec = 0, .tv_nsec = 50 * 1000 * 1000};
    for (unsigned long i = 0; i < n; i++) {
        slow_leak_site();
        after_call++;
        nanosleep(&pause, NULL);
    }
    say("slow_leak: done\n");
    return 0;
}
