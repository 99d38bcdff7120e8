/* dlclose.c -- a library loaded, allocated from, and unloaded before the program ends.
 *
 * Build: gcc -O2 -g -fno-builtin dlclose.c -ldl -Wl,-rpath,'$ORIGIN' (with libstackdemo.so,
 * from libstackdemo.c, in the same directory)
 *
 * dlopen("libstackdemo.so"), one stackdemo_make_buffer(100) kept in `sink` (a leak), then
 * dlclose: the library's mapping is gone long before memprof writes its report, yet the
 * leak's stack must read stackdemo_make_buffer (libstackdemo.c) <- main, not [unknown]. */
#include <dlfcn.h>

#include "common.h"

int main(void) {
    void *library = dlopen("libstackdemo.so", RTLD_NOW);
    if (!library)
        return 2;
    void *(*make)(unsigned long) = (void *(*)(unsigned long))dlsym(library, "stackdemo_make_buffer");
    if (!make)
        return 3;
    sink = make(100); /* @make-call */
    after_call++;
    dlclose(library);
    return 0;
}
