/* fork_threads.c -- forks while other threads allocate.
 *
 * Build: gcc -O2 -g -fno-builtin -pthread fork_threads.c
 * Usage: fork_threads [FORKS]   (default 100)
 *
 * 3 threads malloc/free 64 bytes in bursts until told to stop; meanwhile the main thread
 * forks FORKS times, and each child makes one malloc(48) and leaves with _exit(0); the parent
 * waits for each. A fork lands while another thread is inside malloc (and inside a profiler's
 * hook, holding its locks): the child, which has only the forking thread, must still be able
 * to allocate. Then the threads stop and main leaks one malloc(4096) from leak_after_forks.
 * Says "forks: all" when every child exited 0, "forks: some failed" otherwise. */
#include <pthread.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common.h"

#define THREADS 3

static volatile int stop;

/* Bursts of 20 pairs a millisecond: enough for forks to land inside the hooks, few enough
 * events for an unoptimised memprof to keep up. */
NOIPA void churn_until_stopped(void) {
    while (!stop) {
        for (int i = 0; i < 20; i++) {
            void *p = malloc(64);
            sink = p;
            free(p);
        }
        usleep(1000);
    }
}

static void *worker(void *arg) {
    (void)arg;
    churn_until_stopped();
    return NULL;
}

NOIPA void child_allocates(void) { sink = malloc(48); }

NOIPA void leak_after_forks(void) { sink = malloc(4096); }

int main(int argc, char **argv) {
    long forks = argc > 1 ? strtol(argv[1], NULL, 10) : 100;
    pthread_t threads[THREADS];
    for (int i = 0; i < THREADS; i++)
        pthread_create(&threads[i], NULL, worker, NULL);
    long ok = 0;
    for (long i = 0; i < forks; i++) {
        pid_t pid = fork();
        if (pid == 0) {
            child_allocates();
            _exit(0);
        }
        int status;
        if (pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status) &&
            WEXITSTATUS(status) == 0)
            ok++;
    }
    stop = 1;
    for (int i = 0; i < THREADS; i++)
        pthread_join(threads[i], NULL);
    leak_after_forks();
    say(ok == forks ? "forks: all\n" : "forks: some failed\n");
    return 0;
}
