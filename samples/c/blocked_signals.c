/* blocked_signals.c -- a program that blocks every signal and reads SIGCHLD from a signalfd.
 *
 * Build: gcc -O2 -g -fno-builtin blocked_signals.c
 *
 * 1,000,000 x (malloc(64); free), then one non-blocking read of the signalfd; prints
 * "signals read: N" (0: nobody sent it one). Under `memprof run --ring-mib 1` the ring fills
 * many times over: memprof must hold the thread without a signal it can block or see
 * (the probes send SIGSTOP, not SIGCHLD, to a thread that blocks SIGCHLD), and lose nothing.
 * Expected: malloc 1,000,000 calls, 64,000,000 bytes; 1,000,000 frees; no leak. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/signalfd.h>

#include "common.h"

NOIPA void churn(void) {
    for (int i = 0; i < 1000000; i++) {
        void *p = malloc(64);
        sink = p;
        free(p);
    }
}

int main(void) {
    sigset_t all;
    sigfillset(&all);
    sigprocmask(SIG_BLOCK, &all, 0);
    sigset_t child;
    sigemptyset(&child);
    sigaddset(&child, SIGCHLD);
    int fd = signalfd(-1, &child, SFD_NONBLOCK);
    if (fd < 0)
        return 2;
    churn();
    struct signalfd_siginfo info;
    int read_signals = 0;
    while (read(fd, &info, sizeof info) == sizeof info)
        read_signals++;
    char line[64];
    snprintf(line, sizeof line, "signals read: %d\n", read_signals);
    say(line);
    return 0;
}
