/* processes.c -- a program that forks, execs and allocates in a signal handler.
 *
 * Build: gcc -O2 -g -fno-builtin [-fno-omit-frame-pointer | -fomit-frame-pointer] processes.c
 *
 * Modes (argv[1]):
 *   fork    parent_leak: 3 x malloc(100), leaked; then fork(): the child mallocs 5 x 1000
 *           (child_work), frees nothing and _exit(0)s; the parent waits for it.
 *           Expected for the profiled process (the parent): malloc 3 calls, 300 bytes,
 *           live at exit 3 blocks / 300 bytes at parent_leak; nothing of the child's.
 *   exec    before_exec: 2 x malloc(64), leaked; then execv(self, "after"), same pid.
 *   after   after_exec: 7 x malloc(50), leaked.
 *           Expected for `exec`: two images of one pid: the first mallocs 2 calls, 128
 *           bytes, and the exec releases them (neither freed nor leaked); the second, the
 *           session's own report, mallocs 7 calls, 350 bytes, leaked by after_exec. With
 *           `--no-follow`, one heap: malloc 9 calls, 478 bytes, the same leaks.
 *   signal  handler_leak: a SIGUSR1 handler mallocs 1 x 4000 (leaked); main raises SIGUSR1
 *           twice between 10 malloc(16)/free pairs (main_churn).
 *           Expected: malloc 12 calls, 8160 bytes; frees 10; live 2 blocks / 8000 bytes at
 *           handler_leak.
 * No stdio: printf would malloc a buffer of its own. */
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common.h"

NOIPA void parent_leak(void) {
    for (int i = 0; i < 3; i++)
        sink = malloc(100);
}

NOIPA void child_work(void) {
    for (int i = 0; i < 5; i++)
        sink = malloc(1000);
}

NOIPA void before_exec(void) {
    for (int i = 0; i < 2; i++)
        sink = malloc(64);
}

NOIPA void after_exec(void) {
    for (int i = 0; i < 7; i++)
        sink = malloc(50);
}

NOIPA void handler_leak(void) { sink = malloc(4000); }

static void on_usr1(int signal) {
    (void)signal;
    handler_leak();
    after_call++;
}

NOIPA void main_churn(void) {
    for (int i = 0; i < 10; i++) {
        void *p = malloc(16);
        sink = p;
        if (i == 3 || i == 7)
            raise(SIGUSR1);
        free(p);
    }
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "";
    if (strcmp(mode, "fork") == 0) {
        parent_leak();
        pid_t child = fork();
        if (child == 0) {
            child_work();
            _exit(0);
        }
        int status;
        waitpid(child, &status, 0);
        return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
    }
    if (strcmp(mode, "exec") == 0) {
        before_exec();
        char *next[] = {argv[0], "after", NULL};
        execv("/proc/self/exe", next);
        return 2;
    }
    if (strcmp(mode, "after") == 0) {
        after_exec();
        return 0;
    }
    if (strcmp(mode, "signal") == 0) {
        signal(SIGUSR1, on_usr1);
        main_churn();
        return 0;
    }
    say("usage: processes fork|exec|signal\n");
    return 2;
}
