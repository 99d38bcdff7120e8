/* The C allocation API's edge cases under libmemprof_alloc.so; prints one line per failed check
 * and "api ok" at the end. Build: gcc -O2 -fno-builtin -pthread api.c */
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static int failures;
#define CHECK(cond)                                                   \
    do {                                                              \
        if (!(cond)) {                                                \
            printf("FAILED line %d: %s\n", __LINE__, #cond);          \
            failures++;                                               \
        }                                                             \
    } while (0)

static void *worker(void *arg) {
    void **blocks = arg;
    for (int i = 0; i < 10000; i++) {
        free(blocks[i]); /* allocated by the main thread */
        blocks[i] = malloc(1 + i % 2000);
    }
    return NULL;
}

int main(void) {
    /* Every power of two up to 64 KiB, through each aligned API. */
    for (size_t align = sizeof(void *); align <= 65536; align *= 2) {
        void *p = NULL;
        CHECK(posix_memalign(&p, align, 100) == 0 && (uintptr_t)p % align == 0);
        free(p);
        p = aligned_alloc(align, 3 * align);
        CHECK(p != NULL && (uintptr_t)p % align == 0);
        memset(p, 1, 3 * align);
        free(p);
        p = memalign(align, 50000);
        CHECK(p != NULL && (uintptr_t)p % align == 0);
        free(p);
    }
    void *p = (void *)1;
    CHECK(posix_memalign(&p, 24, 100) == EINVAL && p == (void *)1);
    CHECK(posix_memalign(&p, 4, 100) == EINVAL);
    p = valloc(10);
    CHECK(p != NULL && (uintptr_t)p % 4096 == 0);
    free(p);
    p = pvalloc(5000);
    CHECK(p != NULL && malloc_usable_size(p) >= 8192);
    free(p);

    /* Usable size is the class. */
    CHECK(malloc_usable_size(p = malloc(0)) == 16);
    free(p);
    CHECK(malloc_usable_size(p = malloc(129)) == 160);
    free(p);
    CHECK(malloc_usable_size(p = malloc(32769)) == 36864);
    free(p);

    /* calloc overflow, huge malloc: null and ENOMEM. */
    errno = 0;
    CHECK(calloc(SIZE_MAX / 2, 3) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK(malloc(SIZE_MAX - 100) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK(reallocarray(NULL, SIZE_MAX / 2, 3) == NULL && errno == ENOMEM);

    /* realloc: NULL allocates, grows and shrinks keep contents, 0 frees. */
    char *s = realloc(NULL, 6);
    CHECK(s != NULL);
    strcpy(s, "hello");
    s = realloc(s, 100000);
    CHECK(s && strcmp(s, "hello") == 0);
    s = realloc(s, 8);
    CHECK(s && strcmp(s, "hello") == 0);
    CHECK(realloc(s, 0) == NULL);

    /* calloc of a reused block is zeroed. */
    unsigned char *d = malloc(256);
    memset(d, 0xFF, 256);
    free(d);
    d = calloc(1, 256);
    int zero = 1;
    for (int i = 0; i < 256; i++)
        zero &= d[i] == 0;
    CHECK(zero);
    free(d);

    /* Blocks freed by another thread. */
    static void *blocks[10000];
    for (int i = 0; i < 10000; i++)
        blocks[i] = malloc(1 + i % 3000);
    pthread_t t;
    pthread_create(&t, NULL, worker, blocks);
    pthread_join(t, NULL);
    for (int i = 0; i < 10000; i++)
        free(blocks[i]);

    /* fork while another thread allocates; the child allocates too. */
    pthread_create(&t, NULL, worker, blocks);
    pid_t pid = fork();
    if (pid == 0) {
        void *c = malloc(1000);
        free(c);
        _exit(c ? 0 : 1);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    pthread_join(t, NULL);

    printf(failures ? "api FAILED\n" : "api ok\n");
    return failures != 0;
}
