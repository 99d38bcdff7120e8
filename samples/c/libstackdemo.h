/* A shared library of our own for stacks.c: allocations made inside it must be symbolized
 * with its own file:line (libstackdemo.c), through its own mapping. */
#ifndef MEMPROF_SAMPLES_LIBSTACKDEMO_H
#define MEMPROF_SAMPLES_LIBSTACKDEMO_H

#include <stddef.h>

/* malloc(n) from inside the library. */
void *stackdemo_make_buffer(size_t n);

#endif
