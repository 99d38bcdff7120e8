/* Shared helpers for memprof's deterministic C targets.
 *
 * Every function that allocates is NOIPA so that gcc neither inlines it, clones it
 * (foo.constprop.0 would change its symbol name) nor turns its last call into a tail call
 * that would drop its frame from the stack. Every allocation result is stored into a volatile
 * sink, so that -O2 cannot delete the call even without -fno-builtin.
 * No stdio: printf would malloc a buffer of its own; output goes through write(2). */
#ifndef MEMPROF_SAMPLES_COMMON_H
#define MEMPROF_SAMPLES_COMMON_H

#include <string.h>
#include <unistd.h>

#define NOIPA __attribute__((noipa))

/* Results land here; a volatile store is observable, so the allocation stays. */
static void *volatile sink;
/* Incremented after calls that would otherwise be tail calls. */
static volatile unsigned long after_call;

static inline void say(const char *text) {
    size_t len = strlen(text);
    while (len > 0) {
        ssize_t n = write(1, text, len);
        if (n <= 0)
            _exit(99);
        text += n;
        len -= (size_t)n;
    }
}

/* Reads stdin up to and including a newline; returns 0 at EOF before one. */
static inline int read_line(void) {
    char ch;
    for (;;) {
        ssize_t n = read(0, &ch, 1);
        if (n <= 0)
            return 0;
        if (ch == '\n')
            return 1;
    }
}

#endif
