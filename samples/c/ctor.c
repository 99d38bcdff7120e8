/* ctor.c -- an allocation made before main by a constructor.
 *
 * Build: gcc -O2 -g -fno-builtin [-fno-omit-frame-pointer | -fomit-frame-pointer] ctor.c
 *
 * Expected, exact: malloc 2 calls, 1332 bytes; free 0.
 *   leaks: ctor_leak 1 block 777 bytes (runs from a constructor, before main)
 *          main_leak 1 block 555 bytes
 * Checked with valgrind: "2 allocs, 0 frees, 1,332 bytes allocated". */
#include <stdlib.h>

#include "common.h"

NOIPA void ctor_leak(void) { sink = malloc(777); }

NOIPA void main_leak(void) { sink = malloc(555); }

__attribute__((constructor)) static void before_main(void) {
    ctor_leak();
    after_call++;
}

int main(void) {
    main_leak();
    return 0;
}
