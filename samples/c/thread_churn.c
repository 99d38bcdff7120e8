/* thread_churn.c -- many short threads, one after another, each allocating from a deep stack.
 *
 * Build: gcc -O2 -g -fno-builtin -pthread [-fno-omit-frame-pointer | -fomit-frame-pointer] thread_churn.c
 * Run:   thread_churn [THREADS]   (default 300)
 *
 * Each thread: descend 20 calls deep (descend), then churn_leak: malloc(32) kept (a leak);
 * it then exits and is joined before the next one starts. Expected from the program's own
 * calls, exact: leaks from churn_leak, THREADS blocks, 32 * THREADS bytes.
 *
 * At the end it prints "arena_rss_kib: N": the resident size of the mapping named
 * memprof-capture-arena (the preloaded capture library's own memory), 0 without it. Each
 * thread that allocates takes a stack walker there (rule caches and its last walk, tens of KiB);
 * a walker must go back for the next thread when its thread exits, so this stays the size of a
 * few walkers however many threads came and went. */
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>

#include "common.h"

NOIPA void churn_leak(void) { sink = malloc(32); }

NOIPA void descend(int depth) {
    if (depth > 0)
        descend(depth - 1);
    else
        churn_leak();
    after_call++;
}

static void *thread_main(void *arg) {
    (void)arg;
    descend(20);
    return NULL;
}

/* The Rss of the arena's mapping in /proc/self/smaps, in KiB (no stdio: no allocation). */
static long arena_rss_kib(void) {
    static char smaps[1 << 22];
    int fd = open("/proc/self/smaps", O_RDONLY);
    if (fd < 0)
        return -1;
    size_t len = 0;
    ssize_t n;
    while (len < sizeof smaps - 1 && (n = read(fd, smaps + len, sizeof smaps - 1 - len)) > 0)
        len += (size_t)n;
    close(fd);
    smaps[len] = 0;
    long total = 0;
    int in_arena = 0;
    for (char *line = smaps; *line;) {
        char *end = strchr(line, '\n');
        if (end)
            *end = 0;
        /* A mapping's header line starts with its address range: a hex digit, then a '-'. */
        if (strchr(line, '-') && strchr(line, '-') < strchr(line, ' ') && line[0] != ' ' &&
            strchr("0123456789abcdef", line[0]))
            in_arena = strstr(line, "memprof-capture-arena") != NULL;
        else if (in_arena && strncmp(line, "Rss:", 4) == 0)
            total += strtol(line + 4, NULL, 10);
        if (!end)
            break;
        line = end + 1;
    }
    return total;
}

static void say_number(const char *label, long value) {
    char text[64], digits[24];
    int n = 0;
    unsigned long v = value < 0 ? 0 : (unsigned long)value;
    do {
        digits[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    size_t at = strlen(label);
    memcpy(text, label, at);
    while (n)
        text[at++] = digits[--n];
    text[at++] = '\n';
    text[at] = 0;
    say(text);
}

int main(int argc, char **argv) {
    long threads = argc > 1 ? strtol(argv[1], NULL, 10) : 300;
    for (long i = 0; i < threads; i++) {
        pthread_t thread;
        if (pthread_create(&thread, NULL, thread_main, NULL) != 0)
            return 1;
        pthread_join(thread, NULL);
    }
    say_number("arena_rss_kib: ", arena_rss_kib());
    return 0;
}
