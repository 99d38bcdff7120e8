/* Built as libstackdemo.so next to the stacks target (see stacks.c). */
#include <stdlib.h>

#include "libstackdemo.h"

/* Keeps the call below from being a tail call (its frame must stay on the stack). */
static volatile unsigned long stackdemo_calls;

__attribute__((noipa)) void *stackdemo_make_buffer(size_t n) {
    void *p = malloc(n); /* @lib-malloc */
    stackdemo_calls++;
    return p;
}
