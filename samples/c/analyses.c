/* analyses.c -- known timelines, growth, lifetimes and sizes for memprof's analyses.
 *
 * Build: gcc -O2 -g -fno-builtin -fno-omit-frame-pointer analyses.c
 * Run:   analyses MODE   (no stdio anywhere: the only allocations are the ones below)
 *
 * peak:  peak_big: 10 x malloc(1 MiB), each touched, 2 ms apart; all freed;
 *        then peak_after: 3 x malloc(1 MiB), left live at exit.
 *        Expected: peak 10 MiB (10485760 bytes) in 10 blocks, all from peak_big; the
 *        peak_big blocks are mmapped by glibc (usable 1052656), the later three come from
 *        the heap once free() raised the mmap threshold (usable 1048584).
 * mix:   short_lived: 200 x (malloc(64); free), nothing else in between (pool candidate:
 *        200 of 200 freed within 1 ms, size 64);
 *        size_mix: 100 x malloc(24), 50 x malloc(100), 10 x malloc(1000), all freed 5 ms later.
 *        glibc classes: 24 -> 24 (100), 64 -> 72 (200), 100 -> 104 (50), 1000 -> 1000 (10).
 *        Then it prints "ops: 20" (its work counted as 20 operations, for --ops-from-output):
 *        18 allocations and 1510 bytes per operation.
 * cache: prints "ready", then every 20 ms cache_put: malloc(4096) kept forever (an
 *        unbounded cache growing by 4096 bytes per 20 ms, ~200 KiB/s) until killed.
 * clock: one size_mix(24), freed; then 40 x cache_put 10 ms apart, reading CLOCK_MONOTONIC
 *        just before and just after the first and the last; prints "clock: INNER OUTER", the nanoseconds from after the
 *        first to before the last and from before the first to after the last: the span
 *        between the two calls' recorded times lies between them. */
#include <stdlib.h>
#include <time.h>

#include "common.h"

#define MIB (1024 * 1024)

static void pause_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

NOIPA void *peak_big(void) {
    char *p = malloc(MIB);
    memset(p, 1, MIB);
    return p;
}

NOIPA void *peak_after(void) {
    char *p = malloc(MIB);
    memset(p, 2, MIB);
    return p;
}

static void peak(void) {
    void *big[10];
    for (int i = 0; i < 10; i++) {
        big[i] = peak_big();
        pause_ms(2);
    }
    for (int i = 0; i < 10; i++)
        free(big[i]);
    for (int i = 0; i < 3; i++)
        sink = peak_after();
}

NOIPA void short_lived(void) {
    for (int i = 0; i < 200; i++) {
        void *p = malloc(64);
        sink = p;
        free(p);
    }
}

NOIPA void *size_mix(size_t size) {
    return malloc(size);
}

static void mix(void) {
    static void *blocks[160];
    short_lived();
    int n = 0;
    for (int i = 0; i < 100; i++)
        blocks[n++] = size_mix(24);
    for (int i = 0; i < 50; i++)
        blocks[n++] = size_mix(100);
    for (int i = 0; i < 10; i++)
        blocks[n++] = size_mix(1000);
    pause_ms(5); /* they live longer than 1 ms: not short-lived */
    for (int i = 0; i < n; i++)
        free(blocks[i]);
    say("ops: 20\n");
}

NOIPA void cache_put(void **slot) {
    *slot = malloc(4096);
}

static void cache(void) {
    static void *entries[100000];
    say("ready\n");
    for (int i = 0; i < 100000; i++) {
        cache_put(&entries[i]);
        pause_ms(20);
    }
}

static unsigned long long monotonic_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (unsigned long long)ts.tv_sec * 1000000000ULL + (unsigned long long)ts.tv_nsec;
}

/* Appends the decimal digits of `value` at `out`; returns the end. */
static char *digits(char *out, unsigned long long value) {
    char reversed[24];
    int n = 0;
    do {
        reversed[n++] = (char)('0' + value % 10);
        value /= 10;
    } while (value);
    while (n)
        *out++ = reversed[--n];
    return out;
}

static void clock_check(void) {
    static void *entries[40];
    unsigned long long first_before = 0, first_after = 0, last_before = 0, last_after = 0;
    /* The profiler's first call sets it up (reads the loaded objects): not one of those timed. */
    free(size_mix(24));
    for (int i = 0; i < 40; i++) {
        if (i > 0)
            pause_ms(10);
        unsigned long long before = monotonic_ns();
        cache_put(&entries[i]); /* one call site: one stack for all 40 */
        unsigned long long after = monotonic_ns();
        if (i == 0) {
            first_before = before;
            first_after = after;
        }
        last_before = before;
        last_after = after;
    }
    char line[80] = "clock: ";
    char *end = digits(line + 7, last_before - first_after);
    *end++ = ' ';
    end = digits(end, last_after - first_before);
    *end++ = '\n';
    *end = 0;
    say(line);
}

int main(int argc, char **argv) {
    if (argc != 2)
        return 2;
    if (strcmp(argv[1], "peak") == 0)
        peak();
    else if (strcmp(argv[1], "mix") == 0)
        mix();
    else if (strcmp(argv[1], "cache") == 0)
        cache();
    else if (strcmp(argv[1], "clock") == 0)
        clock_check();
    else
        return 2;
    return 0;
}
