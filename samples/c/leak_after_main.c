/* leak_after_main.c -- leaks made after the main thread has ended, for the leak check at the
 * process's real end (the exit stop of its last thread, not of its main thread).
 *
 * Build: gcc -O2 -g -fno-builtin -pthread [-fno-omit-frame-pointer | -fomit-frame-pointer] leak_after_main.c
 *
 * main starts `worker` and ends with pthread_exit; worker waits until the main thread is a
 * zombie, then allocates and exits the process with status 0. Expected at exit, exact, as
 * `valgrind --leak-check=full --show-leak-kinds=all` reports it too:
 *   definitely lost: 2 blocks, 300 bytes   (lose_after_main: 100 + 200, pointers dropped)
 *   still reachable: 1 block,  64 bytes    (keep_after_main: held by a global)
 * plus what glibc's pthread_create allocates for the worker (its DTV, calloc(272): in the
 * thread descriptor, itself in the worker's stack mapping), classified alike by both. */
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>

#include "common.h"

void *volatile kept;

NOIPA void lose_after_main(void) {
    sink = malloc(100);
    sink = malloc(200);
    sink = 0;
}

NOIPA void keep_after_main(void) {
    kept = malloc(64);
}

/* Whether the main thread (its tid is the pid) is a zombie: it has passed pthread_exit. */
static int main_ended(void) {
    char path[64] = "/proc/self/task/", digits[16], stat[256];
    int len = 0;
    for (int pid = getpid(); pid > 0; pid /= 10)
        digits[len++] = (char)('0' + pid % 10);
    char *at = path + strlen(path);
    while (len > 0)
        *at++ = digits[--len];
    memcpy(at, "/stat", 6);
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return 1;
    ssize_t n = read(fd, stat, sizeof stat - 1);
    close(fd);
    if (n <= 0)
        return 1;
    stat[n] = 0;
    const char *state = strrchr(stat, ')');
    return state && (state[2] == 'Z' || state[2] == 'X');
}

static void *worker(void *arg) {
    (void)arg;
    while (!main_ended())
        usleep(1000);
    lose_after_main();
    keep_after_main();
    exit(0);
}

int main(void) {
    pthread_t thread;
    if (pthread_create(&thread, NULL, worker, NULL) != 0)
        return 2;
    pthread_exit(NULL);
}
