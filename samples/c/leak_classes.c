/* leak_classes.c -- one of each of memcheck's leak kinds, for the leak check.
 *
 * Build: gcc -O2 -g -fno-builtin [-fno-omit-frame-pointer | -fomit-frame-pointer] leak_classes.c
 *
 * Expected at exit, exact (no stdio, nothing else allocates), as
 * `valgrind --leak-check=full --show-leak-kinds=all` reports it too:
 *   definitely lost:  6 blocks,  460 bytes
 *     lose_blocks      3 x 100   (the pointer is dropped)
 *     lose_behind_free 1 x 72    (its only pointer lies in a block the program freed: stale)
 *     lose_list        1 x 48    (the head of a 3-node list nobody holds)
 *     lose_cycle       1 x 40    (two blocks pointing at each other, nobody at them;
 *                                 the lower address leads the clique)
 *   indirectly lost:  3 blocks,  136 bytes
 *     lose_list        2 x 48    (the list's other nodes, reachable only from its head)
 *     lose_cycle       1 x 40
 *   possibly lost:    1 block,   256 bytes
 *     hold_interior    1 x 256   (a global holds a pointer 40 bytes into it)
 *   still reachable:  3 blocks,  224 bytes
 *     keep_blocks      64 + 128  (held by a global array)
 *     keep_blocks      32        (held by the 128-byte block)
 * In all: 13 blocks, 1076 bytes live at exit.
 *
 * With an argument (`leak_classes wait`), for `memprof attach --leak-check`: prints "ready",
 * waits for a line on stdin before allocating anything, prints "done" after, then blocks
 * until stdin closes: a window spanning the allocations sees the same classes. */
#include <stdlib.h>

#include "common.h"

struct node {
    struct node *next;
    char payload[40];
};

/* Globals the program keeps its pointers in (volatile: -O2 would drop stores never read). */
void *volatile kept[2];
char *volatile interior;

NOIPA void lose_blocks(void) {
    for (int i = 0; i < 3; i++)
        sink = malloc(100);
    sink = 0;
}

NOIPA void lose_list(void) {
    struct node *head = 0;
    for (int i = 0; i < 3; i++) {
        struct node *n = malloc(sizeof *n);
        n->next = head;
        head = n;
    }
    sink = 0;
}

NOIPA void lose_cycle(void) {
    void **a = malloc(40);
    void **b = malloc(40);
    memset(a, 0, 40);
    memset(b, 0, 40);
    a[0] = b;
    b[0] = a;
    sink = 0;
}

NOIPA void lose_behind_free(void) {
    /* 88 bytes: a size class nothing after asks for, so the holder is not handed out again.
     * The pointer sits past the words glibc's and the other allocators' free lists write. */
    void **holder = malloc(88);
    memset(holder, 0, 88);
    holder[3] = malloc(72);
    free(holder);
}

NOIPA void hold_interior(void) {
    char *block = malloc(256);
    memset(block, 0, 256);
    interior = block + 40;
}

NOIPA void keep_blocks(void) {
    void **parent = malloc(128);
    memset(parent, 0, 128);
    parent[0] = malloc(32);
    kept[0] = malloc(64);
    kept[1] = parent;
}

/* Overwrites the stack below main's frame, where the calls above left their pointers: a
 * conservative scan reads whatever is there (memcheck and memprof alike). */
NOIPA void scrub_stack(void) {
    volatile char scratch[16384];
    for (unsigned i = 0; i < sizeof scratch; i++)
        scratch[i] = 0;
}

int main(int argc, char **argv) {
    (void)argv;
    int wait = argc > 1;
    if (wait) {
        say("ready\n");
        if (!read_line())
            return 2;
    }
    lose_blocks();
    lose_list();
    lose_cycle();
    lose_behind_free();
    hold_interior();
    keep_blocks();
    scrub_stack();
    say("done\n");
    if (wait) {
        char buf[64];
        while (read(0, buf, sizeof buf) > 0) {
        }
    }
    return 0;
}
