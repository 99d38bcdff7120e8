/* allocreplay.c -- replays a program's recorded allocation calls, for `cargo xtask bench alloc`.
 *
 * Build: gcc -O2 allocreplay.c
 * Usage: allocreplay TRACE REPEAT
 * TRACE is written by xtask from a memprof recording (xtask/src/alloc_trace.rs): the program's
 * malloc, calloc, realloc, aligned allocations and frees in the order memprof saw them, each
 * block named by a slot number instead of its address. The whole trace is replayed REPEAT
 * times in one thread (what is still live at the end of a pass is freed, timed too, before the
 * next); reading the trace is not timed. Each new block's first byte is written, as the program
 * would. Prints "ops N ops_per_sec N peak_kib N": ops per second of the replay, and how far
 * the replay raised the peak resident set (VmHWM) above what it was once the trace was read.
 *
 * The format, little-endian: "MPTRACE1", u32 slots, u32 zero, u64 count, then count records
 * of struct op. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { OP_MALLOC = 1, OP_CALLOC = 2, OP_REALLOC = 3, OP_FREE = 4, OP_ALIGNED = 5 };

struct op {
    uint32_t kind;
    uint32_t slot;     /* the block made or freed */
    uint32_t old_slot; /* realloc's input block */
    uint32_t align;    /* OP_ALIGNED */
    uint64_t size;
};

struct trace_header {
    char magic[8];
    uint32_t slots;
    uint32_t zero;
    uint64_t count;
};

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static long status_kib(const char *name) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long value = -1;
    size_t len = strlen(name);
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, name, len) == 0)
            value = strtol(line + len, NULL, 10);
    if (f)
        fclose(f);
    return value;
}

static struct op *load(const char *path, struct trace_header *header) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        return NULL;
    }
    struct op *ops = NULL;
    if (fread(header, sizeof *header, 1, f) != 1 || memcmp(header->magic, "MPTRACE1", 8) != 0) {
        fprintf(stderr, "%s: not an allocation trace\n", path);
    } else if (!(ops = malloc(header->count * sizeof *ops))) {
        fprintf(stderr, "%s: %llu records do not fit in memory\n", path,
                (unsigned long long)header->count);
    } else if (fread(ops, sizeof *ops, header->count, f) != header->count) {
        fprintf(stderr, "%s: cut short\n", path);
        free(ops);
        ops = NULL;
    }
    fclose(f);
    return ops;
}

/* One pass over the trace; returns 0, or -1 if an allocation failed. */
static int replay(const struct op *ops, uint64_t count, void **slots) {
    for (uint64_t i = 0; i < count; i++) {
        const struct op *op = &ops[i];
        void *p = NULL;
        switch (op->kind) {
        case OP_MALLOC:
            p = malloc(op->size);
            break;
        case OP_CALLOC:
            p = calloc(1, op->size);
            break;
        case OP_REALLOC:
            p = realloc(slots[op->old_slot], op->size);
            slots[op->old_slot] = NULL;
            break;
        case OP_ALIGNED:
            if (posix_memalign(&p, op->align, op->size) != 0)
                p = NULL;
            break;
        case OP_FREE:
            free(slots[op->slot]);
            slots[op->slot] = NULL;
            continue;
        }
        if (!p && op->size != 0)
            return -1;
        if (p && op->size != 0)
            *(volatile char *)p = (char)i;
        slots[op->slot] = p;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: allocreplay TRACE REPEAT\n");
        return 2;
    }
    long repeat = strtol(argv[2], NULL, 10);
    struct trace_header header;
    struct op *ops = load(argv[1], &header);
    void **slots = ops ? calloc(header.slots ? header.slots : 1, sizeof *slots) : NULL;
    if (!ops || !slots || repeat < 1)
        return 1;
    for (uint64_t i = 0; i < header.count; i++) {
        const struct op *op = &ops[i];
        if (op->slot >= header.slots || (op->kind == OP_REALLOC && op->old_slot >= header.slots) ||
            op->kind < OP_MALLOC || op->kind > OP_ALIGNED) {
            fprintf(stderr, "%s: record %llu is invalid\n", argv[1], (unsigned long long)i);
            return 1;
        }
    }
    long base_kib = status_kib("VmHWM:");
    double start = now();
    for (long pass = 0; pass < repeat; pass++) {
        if (replay(ops, header.count, slots) != 0) {
            fprintf(stderr, "allocation failed in pass %ld\n", pass);
            return 1;
        }
        for (uint32_t s = 0; s < header.slots; s++) {
            free(slots[s]);
            slots[s] = NULL;
        }
    }
    double elapsed = now() - start;
    uint64_t total = header.count * (uint64_t)repeat;
    printf("ops %llu ops_per_sec %.0f peak_kib %ld\n", (unsigned long long)total,
           total / elapsed, status_kib("VmHWM:") - base_kib);
    return 0;
}
