/* Deterministic call stacks for symbolization (profiler-cli/tests/e2e/stacks.rs).
 *
 * Build (the tests do this, with -fno-omit-frame-pointer or -fomit-frame-pointer):
 *   gcc -O2 -g -fno-builtin -shared -fPIC -o DIR/libstackdemo.so libstackdemo.c
 *   gcc -O2 -g -fno-builtin -o DIR/stacks stacks.c -LDIR -lstackdemo -Wl,-rpath,'$ORIGIN'
 *
 * Five allocations, each leaked, each from its own stack (innermost first):
 *   48 B    malloc in deep_leaf <- chain_inline (static inline, always inlined into
 *           chain_middle) <- chain_middle <- chain_outer <- main
 *   15 B    strdup("memprof-stacks"): malloc in libc's __strdup <- dup_name <- main
 *   24 B    malloc in compare_and_leak, the qsort comparator (first call only)
 *           <- libc's msort_with_tmp ... qsort <- sort_words <- main
 *   472 B   fopen("/dev/null", "r"): the FILE (glibc 2.36's locked_FILE) malloc'd in libc's
 *           __fopen_internal <- open_log <- main; never fclose'd
 *   100 B   malloc in stackdemo_make_buffer (libstackdemo.so) <- use_library <- main
 * Nothing is freed. The `@name` comments mark the lines the test expects in each frame.
 *
 * Code built with frame pointers still loses the caller of a libc function that allocates
 * (libc has no frame pointers: the walk goes from its caller's frame pointer straight to the
 * caller's caller). Only an unwinder that reads DWARF CFI sees dup_name and open_log.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "libstackdemo.h"

NOIPA void *deep_leaf(size_t n) {
    void *p = malloc(n); /* @leaf-malloc */
    after_call++;
    return p;
}

static inline __attribute__((always_inline)) void *chain_inline(size_t n) {
    void *p = deep_leaf(n); /* @inline-call */
    after_call++;
    return p;
}

NOIPA void chain_middle(void) {
    sink = chain_inline(48); /* @middle-call */
    after_call++;
}

NOIPA void chain_outer(void) {
    chain_middle(); /* @outer-call */
    after_call++;
}

NOIPA void dup_name(void) {
    sink = strdup("memprof-stacks"); /* @strdup-call */
    after_call++;
}

static void *volatile first_comparison;

NOIPA int compare_and_leak(const void *a, const void *b) {
    if (first_comparison == 0)
        first_comparison = malloc(24); /* @compare-malloc */
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

NOIPA void sort_words(void) {
    const char *words[] = {"pear", "apple", "fig", "kiwi"};
    qsort(words, 4, sizeof words[0], compare_and_leak); /* @qsort-call */
    after_call++;
}

NOIPA void open_log(void) {
    sink = fopen("/dev/null", "r"); /* @fopen-call */
    after_call++;
}

NOIPA void use_library(void) {
    sink = stackdemo_make_buffer(100); /* @library-call */
    after_call++;
}

int main(void) {
    chain_outer(); /* @main-chain */
    dup_name(); /* @main-strdup */
    sort_words(); /* @main-qsort */
    open_log(); /* @main-fopen */
    use_library(); /* @main-library */
    say("stacks done\n");
    return 0;
}
