/* realloc_race.c -- 64 threads that malloc, calloc, realloc and free at once.
 *
 * Build: gcc -O2 -g -fno-builtin -pthread realloc_race.c
 *
 * A realloc that moves a block releases it inside the call; another thread can be handed
 * that address and record its allocation before the realloc's own record is written. memprof
 * must not take that for a lost free (an "overwritten block") and, later, a double free.
 *
 * Each thread's calls follow its own seeded sequence, so the counts are the same every run;
 * the program prints them ("calls: N") and frees everything it allocated (through `work`)
 * before it exits. Expected: no double free, overwritten block, unknown free or realloc, no
 * leak from `work`, and as many allocations at `work`'s sites as it printed. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

#include "common.h"

#define THREADS 64
#define STEPS 20000
#define SLOTS 16

static atomic_ulong allocation_calls;

NOIPA void *work(void *arg) {
    unsigned state = (unsigned)(long)arg;
    void *slot[SLOTS] = {0};
    unsigned long calls = 0;
    for (int i = 0; i < STEPS; i++) {
        state = state * 1103515245u + 12345u;
        int k = (state >> 8) % SLOTS;
        switch ((state >> 16) & 3) {
        case 0:
            free(slot[k]);
            slot[k] = malloc(16 + (state & 255));
            calls++;
            break;
        case 1:
            free(slot[k]);
            slot[k] = calloc(1, 32 + (state & 127));
            calls++;
            break;
        case 2:
            slot[k] = realloc(slot[k], 8 + (state & 511));
            calls++;
            break;
        default:
            free(slot[k]);
            slot[k] = 0;
        }
    }
    for (int k = 0; k < SLOTS; k++)
        free(slot[k]);
    atomic_fetch_add(&allocation_calls, calls);
    return 0;
}

int main(void) {
    pthread_t threads[THREADS];
    for (long i = 0; i < THREADS; i++)
        pthread_create(&threads[i], 0, work, (void *)i);
    for (int i = 0; i < THREADS; i++)
        pthread_join(threads[i], 0);
    char line[64];
    snprintf(line, sizeof line, "calls: %lu\n", atomic_load(&allocation_calls));
    say(line);
    return 0;
}
