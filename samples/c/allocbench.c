/* allocbench.c -- allocator throughput and fragmentation, for `cargo xtask bench alloc`.
 *
 * Build: gcc -O2 -pthread allocbench.c
 * Usage: allocbench st OPS      one thread, OPS malloc/free pairs: "ops_per_sec N"
 *        allocbench mt OPS      two threads, OPS pairs each:       "ops_per_sec N" (total)
 *        allocbench frag        fragmenting workload:               "rss_kib N hwm_kib N"
 * The throughput loop replaces a random one of 1024 live blocks per step, sizes mostly 16..512
 * bytes with one in 16 up to 8 KiB: a working set that stays in the thread caches of every
 * allocator measured, as most real programs' hot paths do. */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SLOTS 1024

static uint64_t next_random(uint64_t *state) {
    uint64_t x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *state = x;
}

static size_t pick_size(uint64_t r) {
    if ((r & 15) == 0)
        return 16 + (r >> 8) % 8192;
    return 16 + (r >> 8) % 497;
}

struct job {
    long ops;
    uint64_t seed;
};

static void *churn(void *arg) {
    struct job *job = arg;
    void *slots[SLOTS] = {0};
    uint64_t state = job->seed;
    for (long i = 0; i < job->ops; i++) {
        uint64_t r = next_random(&state);
        unsigned slot = r % SLOTS;
        free(slots[slot]);
        char *p = malloc(pick_size(r >> 10));
        p[0] = (char)i; /* touch it, as a program would */
        slots[slot] = p;
    }
    for (int i = 0; i < SLOTS; i++)
        free(slots[i]);
    return NULL;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static long status_kib(const char *field) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long value = -1;
    size_t len = strlen(field);
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, field, len) == 0)
            value = strtol(line + len, NULL, 10);
    if (f)
        fclose(f);
    return value;
}

/* Many mixed sizes, every other one freed (holes no size class or bin can merge), then larger
 * blocks: what is left resident shows how well freed memory is reused. */
static void fragment(void) {
    enum { N = 200000 };
    static void *blocks[N];
    uint64_t state = 42;
    for (int i = 0; i < N; i++) {
        size_t size = 16 + next_random(&state) % 2000;
        blocks[i] = malloc(size);
        memset(blocks[i], 1, size);
    }
    for (int i = 0; i < N; i += 2)
        free(blocks[i]);
    for (int i = 0; i < N; i += 2) {
        size_t size = 1000 + next_random(&state) % 3000;
        blocks[i] = malloc(size);
        memset(blocks[i], 2, size);
    }
    printf("rss_kib %ld hwm_kib %ld\n", status_kib("VmRSS:"), status_kib("VmHWM:"));
    for (int i = 0; i < N; i++)
        free(blocks[i]);
}

int main(int argc, char **argv) {
    if (argc >= 2 && strcmp(argv[1], "frag") == 0) {
        fragment();
        return 0;
    }
    if (argc < 3 || (strcmp(argv[1], "st") != 0 && strcmp(argv[1], "mt") != 0)) {
        fprintf(stderr, "usage: allocbench st|mt OPS | allocbench frag\n");
        return 2;
    }
    long ops = atol(argv[2]);
    int threads = strcmp(argv[1], "mt") == 0 ? 2 : 1;
    struct job jobs[2] = {{ops, 0x9E3779B97F4A7C15ull}, {ops, 0xD1B54A32D192ED03ull}};
    pthread_t ids[2];
    double start = now();
    if (threads == 1) {
        churn(&jobs[0]);
    } else {
        for (int t = 0; t < 2; t++)
            pthread_create(&ids[t], NULL, churn, &jobs[t]);
        for (int t = 0; t < 2; t++)
            pthread_join(ids[t], NULL);
    }
    double elapsed = now() - start;
    printf("ops_per_sec %.0f\n", ops * threads / elapsed);
    return 0;
}
