/* Frees one block twice; with libmemprof_alloc.so the second free is counted and ignored. */
#include <stdio.h>
#include <stdlib.h>

int main(void) {
    void *volatile p = malloc(40);
    free(p);
    free(p);
    void *a = malloc(40), *b = malloc(40);
    printf(a != b ? "distinct\n" : "same block twice\n");
    return 0;
}
