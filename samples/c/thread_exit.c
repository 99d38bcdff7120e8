/* thread_exit.c -- threads that exit with freed chunks still cached in their tcache.
 *
 * Build: gcc -O2 -g -fno-builtin -pthread [-fno-omit-frame-pointer | -fomit-frame-pointer] thread_exit.c
 * Run:   ./thread_exit          (no double free by the program)
 *        ./thread_exit double   (also one real double free, in double_free)
 *
 * Each of 4 threads (thread_work): 5 x malloc of 16, 32, 64 and 128 bytes, then frees all 20.
 * Five chunks per size stay cached in the thread's tcache (a bin holds up to 7).
 * main: 1 x malloc(200) in main_leak, never freed.
 * Expected from the program's own calls, exact:
 *   malloc: 81 calls, 4 x 5 x (16 + 32 + 64 + 128) + 200 = 5000 bytes; free: 80
 *   leaks: main_leak 1 block, 200 bytes
 * glibc 2.36 adds calls of its own (checked with count_calls.py):
 *   - pthread_create: 1 x calloc(1, 272) per thread (the DTV), live at exit in the stack cache.
 *   - thread exit (start_thread -> __libc_thread_freeres -> tcache_thread_shutdown): free() of
 *     every chunk still in the thread's tcache (20, already freed by the program) and of the
 *     tcache itself (allocated with _int_malloc, never returned by malloc): 21 x 4 = 84 frees
 *     whose caller is libc. They are the allocator recycling its caches: neither double nor
 *     unknown frees of the program.
 *   - each thread's arena (mmap inside malloc) and stack (mmap in pthread_create, kept in
 *     glibc's stack cache after the join).
 * So: malloc 81 calls 5000 bytes, calloc 4 calls 1088 bytes, frees 80, live 5 blocks, 1288 bytes.
 *
 * With "double", main then runs double_free: 7 x malloc(48) fill the 64-byte tcache bin once
 * freed, then p (double_victim) and q (malloc(48)) are freed into the fastbin and p is freed
 * again. glibc only compares a freed chunk with the fastbin's top (q), so it does not abort:
 * one real double free of the program, of the block allocated in double_victim.
 * Adds malloc 9 calls 432 bytes, 9 frees; live blocks and bytes unchanged. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

#define THREADS 4
#define PER_SIZE 5

static const size_t sizes[] = {16, 32, 64, 128};
#define NSIZES (sizeof sizes / sizeof sizes[0])

NOIPA void thread_work(void) {
    void *blocks[NSIZES * PER_SIZE];
    for (size_t i = 0; i < NSIZES * PER_SIZE; i++) {
        blocks[i] = malloc(sizes[i / PER_SIZE]);
        sink = blocks[i];
    }
    for (size_t i = 0; i < NSIZES * PER_SIZE; i++)
        free(blocks[i]);
}

NOIPA void *thread_main(void *arg) {
    thread_work();
    after_call++;
    return arg;
}

NOIPA void main_leak(void) { sink = malloc(200); }

NOIPA void *double_victim(void) {
    void *p = malloc(48);
    after_call++; /* not a tail call: double_victim stays on the stack */
    return p;
}

NOIPA void double_free(void) {
    void *fill[7];
    for (int i = 0; i < 7; i++) {
        fill[i] = malloc(48);
        sink = fill[i];
    }
    void *p = double_victim();
    void *q = malloc(48);
    sink = q;
    for (int i = 0; i < 7; i++)
        free(fill[i]);
    free(p);
    free(q);
    free(p); /* @second-free (the double free, reported with this caller) */
    after_call++;
}

int main(int argc, char **argv) {
    pthread_t threads[THREADS];
    for (int i = 0; i < THREADS; i++)
        if (pthread_create(&threads[i], NULL, thread_main, NULL) != 0)
            return 1;
    for (int i = 0; i < THREADS; i++)
        if (pthread_join(threads[i], NULL) != 0)
            return 1;
    main_leak();
    if (argc > 1 && strcmp(argv[1], "double") == 0)
        double_free();
    say("done\n");
    return 0;
}
