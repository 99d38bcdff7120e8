/* main_exit.c -- a process whose main thread has exited while another thread runs on.
 *
 * Build: gcc -O2 -g -fno-builtin -pthread [-fno-omit-frame-pointer | -fomit-frame-pointer] main_exit.c
 *
 * main starts `reader`, prints "ready\n" and ends with pthread_exit: the process lives on in
 * reader, and its thread group leader is a zombie (/proc/PID/stat state Z, its exe, maps and
 * root unreadable; /proc/PID/task/READER_TID still has them). reader blocks reading stdin and
 * exits the process with status 0 at EOF. Nothing is allocated after "ready" (pthread_create
 * callocs the reader's DTV before it). */
#include <pthread.h>

#include "common.h"

static void *reader(void *arg) {
    (void)arg;
    char buf[64];
    while (read(0, buf, sizeof buf) > 0) {
    }
    _exit(0);
}

int main(void) {
    pthread_t thread;
    if (pthread_create(&thread, NULL, reader, NULL) != 0)
        return 2;
    say("ready\n");
    pthread_exit(NULL);
}
