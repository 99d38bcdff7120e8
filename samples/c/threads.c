/* threads.c -- allocations from 4 threads.
 *
 * Build: gcc -O2 -g -fno-builtin -pthread [-fno-omit-frame-pointer | -fomit-frame-pointer] threads.c
 * Usage: threads [CHURN [PAUSE_MS]]   (CHURN malloc/free pairs per thread, default 499;
 *        PAUSE_MS: each thread sleeps that long after its first pair, default 0)
 *
 * Each thread: 499 x (malloc(32); free) in thread_churn, then 1 x malloc(32) in thread_leak.
 * Expected from the program's own calls, exact:
 *   malloc: 2000 calls, 64000 bytes; free: 1996
 *   leaks: thread_leak 4 blocks, 128 bytes (one per thread)
 * glibc adds calls of its own that the program did not write (checked with gdb breakpoints):
 *   - pthread_create: 1 x calloc per thread for the new thread's DTV (ld.so's
 *     _dl_allocate_tls), kept alive in glibc's stack cache, so it is live at exit;
 *     272 bytes each: calloc 4 calls, 1088 bytes.
 *   - thread exit (__libc_thread_freeres -> tcache_thread_shutdown): free() of the thread's
 *     tcache (never returned by malloc: an unknown free) and of every chunk still cached in
 *     it. thread_leak takes back the chunk thread_churn freed last, so the tcache is empty
 *     and no already-freed pointer is freed again (no double free may be reported).
 *   - each new thread's arena and stack come from mmap/munmap inside libc.
 * So: malloc 2000 calls 64000 bytes, calloc 4 calls 1088 bytes, frees 1996, live 8 blocks.
 * Checked with count_calls.py and valgrind ("2,004 allocs ... 65,088 bytes allocated").
 * With CHURN = N: malloc 4 * (N + 1) calls, frees 4 * N, the rest as above. */
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

#include "common.h"

#define THREADS 4

static long churn = 499;
static long pause_ms = 0;

NOIPA void thread_churn(void) {
    for (long i = 0; i < churn; i++) {
        void *p = malloc(32);
        sink = p;
        free(p);
        if (i == 0 && pause_ms > 0)
            usleep(pause_ms * 1000);
    }
}

NOIPA void thread_leak(void) { sink = malloc(32); }

NOIPA void *thread_main(void *arg) {
    thread_churn();
    thread_leak();
    after_call++;
    return arg;
}

int main(int argc, char **argv) {
    pthread_t threads[THREADS];
    if (argc > 1)
        churn = atol(argv[1]);
    if (argc > 2)
        pause_ms = atol(argv[2]);
    for (int i = 0; i < THREADS; i++)
        if (pthread_create(&threads[i], NULL, thread_main, NULL) != 0)
            return 1;
    for (int i = 0; i < THREADS; i++)
        if (pthread_join(threads[i], NULL) != 0)
            return 1;
    return 0;
}
