/* signal_storm.c -- allocations under a storm of signals, for `memprof attach --hold`.
 *
 * Build: gcc -O2 -g -fno-builtin signal_storm.c
 *
 * A 5 kHz interval timer (SIGALRM, handled) runs from the start. Prints "ready", waits for a
 * line on stdin, then does 2000 x (malloc(64); free) with a 100 us sleep between, prints
 * "done" and waits for stdin to close. Under `attach --hold` every signal stops the thread in
 * memprof's tracer on its way: a tracer that takes a millisecond to notice each stop freezes
 * the program (18 allocations a second instead of thousands). */
#include <signal.h>
#include <stdlib.h>
#include <sys/time.h>

#include "common.h"

static volatile unsigned long signals;

static void on_alarm(int sig) {
    (void)sig;
    signals++;
}

NOIPA void churn_once(void) {
    void *p = malloc(64);
    sink = p;
    free(p);
}

int main(void) {
    struct sigaction action = {0};
    action.sa_handler = on_alarm;
    action.sa_flags = SA_RESTART;
    sigaction(SIGALRM, &action, 0);
    struct itimerval every = {{0, 200}, {0, 200}};
    setitimer(ITIMER_REAL, &every, 0);
    say("ready\n");
    if (!read_line())
        return 2;
    for (int i = 0; i < 2000; i++) {
        churn_once();
        usleep(100);
    }
    say("done\n");
    char buf[64];
    while (read(0, buf, sizeof buf) > 0) {
    }
    return 0;
}
