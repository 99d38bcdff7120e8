/* tree.c -- a process tree with known allocations per process, for `memprof run` following
 * forks and execs.
 *
 * Build: gcc -O2 -g -fno-builtin [-fno-omit-frame-pointer | -fomit-frame-pointer] tree.c
 *
 * Modes (argv[1]); every block is leaked unless said otherwise; children end with _exit (no
 * atexit work, no stdio):
 *   tree    parent: before_fork 2 x malloc(100) (p0, and one held by `sink` only); forks A, B
 *           and D; waits for them; parent_after 1 x malloc(1000), which overwrites `sink`.
 *           Parent: 3 allocations; live 3 blocks, 1200 bytes; at exit the second block of
 *           before_fork is definitely lost, the other two still reachable.
 *           A: inherits both (2 blocks, 200 bytes); frees p0 (a free of an inherited
 *              block); child_a_leak 3 x malloc(200); exit 0. A: 3 allocations, 1 free;
 *              live 4 blocks, 700 bytes.
 *           B: inherits 2 blocks, 200 bytes; forks C and waits for it; child_b_leak
 *              4 x malloc(50); exit 3. B: 4 allocations; live 6 blocks, 400 bytes.
 *           C (B's child): inherits 2 blocks, 200 bytes; grandchild_leak 1 x malloc(300);
 *              exit 0. C: 1 allocation; live 3 blocks, 500 bytes.
 *           D: inherits 2 blocks, 200 bytes; killed_leak 2 x malloc(77); kills itself with
 *              SIGKILL. D: 2 allocations; live 4 blocks, 354 bytes; killed by signal 9.
 *           The children run one after the other (the parent waits for each).
 *   chain K chain_step: K + 1 x malloc(64), then execs `tree chain K-1`; at K = 0,
 *           chain_end 5 x malloc(32) and exit 0. Image for K: K + 1 allocations, its blocks
 *           released by the exec (64 * (K + 1) bytes); the last: 6 allocations, 6 blocks,
 *           224 bytes live.
 *   seq N   seq_leak: N x malloc(128); returns 0. N allocations, N blocks, 128 * N bytes.
 *   bomb N  forks N children at once, then waits for them all; child i: bomb_leak
 *           1 x malloc(1000 + i), exit 0. Parent: no allocation.
 *   daemon  a double fork: the parent forks B and waits for it; B forks C and exits at once;
 *           C (setsid, stdio closed, reparented) daemon_leak 1 x malloc(42), tells the parent through a pipe
 *           and sleeps 2 s, then 1 x malloc(43) and exits. The parent returns once told: C is
 *           still running (1 allocation, 1 block of 42 bytes besides what it inherited).
 *   prefork W N  a pre-fork server: the parent allocates its configuration (config_block
 *           1 x malloc(4096), freed after the workers end), forks W workers that run at the
 *           same time, waits for them all. Worker i: serve N requests (serve_request: malloc
 *           (64 + i) and free it, N times), then worker_leak i + 1 x malloc(256); exit 0.
 *           Worker i: N + i + 1 allocations, N frees; live i + 1 blocks, 256 * (i + 1) bytes
 *           plus the inherited configuration (1 block, 4096 bytes). Parent: 1 allocation, 1
 *           free, nothing live.
 *   closefds  a child closes every descriptor above 2 (as Python's subprocess does), then
 *           execs `tree seq 3`: that image makes 3 allocations, 384 bytes, all live; the
 *           parent waits for it.
 *   attach  for `memprof attach --children`: prints "ready" and waits for a line on stdin,
 *           then does what `tree` does (the same figures per process), prints "done" and
 *           waits for stdin to close; exits 0.
 * No stdio: printf would malloc a buffer of its own. */
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common.h"

static void *p0;

NOIPA void before_fork(void) {
    p0 = malloc(100);
    sink = malloc(100);
}

NOIPA void child_a_leak(void) {
    for (int i = 0; i < 3; i++)
        sink = malloc(200);
}

NOIPA void child_b_leak(void) {
    for (int i = 0; i < 4; i++)
        sink = malloc(50);
}

NOIPA void grandchild_leak(void) { sink = malloc(300); }

NOIPA void killed_leak(void) {
    for (int i = 0; i < 2; i++)
        sink = malloc(77);
}

NOIPA void parent_after(void) { sink = malloc(1000); }

NOIPA void chain_step(int k) {
    for (int i = 0; i <= k; i++)
        sink = malloc(64);
}

NOIPA void chain_end(void) {
    for (int i = 0; i < 5; i++)
        sink = malloc(32);
}

NOIPA void seq_leak(int n) {
    for (int i = 0; i < n; i++)
        sink = malloc(128);
}

NOIPA void bomb_leak(int i) { sink = malloc(1000 + (size_t)i); }

NOIPA void daemon_leak(size_t size) { sink = malloc(size); }

NOIPA void *config_block(void) { return malloc(4096); }

NOIPA void serve_request(int i) {
    void *p = malloc(64 + (size_t)i);
    sink = p;
    free(p);
}

NOIPA void worker_leak(int i) {
    for (int k = 0; k <= i; k++)
        sink = malloc(256);
}

static int prefork(int workers, int requests) {
    void *config = config_block();
    for (int i = 0; i < workers; i++) {
        if (fork() == 0) {
            for (int r = 0; r < requests; r++)
                serve_request(i);
            worker_leak(i);
            _exit(0);
        }
    }
    while (wait(NULL) > 0) {
    }
    free(config);
    return 0;
}

static void wait_for(pid_t pid) {
    int status;
    waitpid(pid, &status, 0);
}

static int tree(void) {
    before_fork();
    pid_t a = fork();
    if (a == 0) {
        free(p0);
        child_a_leak();
        _exit(0);
    }
    wait_for(a);
    pid_t b = fork();
    if (b == 0) {
        pid_t c = fork();
        if (c == 0) {
            grandchild_leak();
            _exit(0);
        }
        wait_for(c);
        child_b_leak();
        _exit(3);
    }
    wait_for(b);
    pid_t d = fork();
    if (d == 0) {
        killed_leak();
        kill(getpid(), SIGKILL);
        _exit(1);
    }
    wait_for(d);
    parent_after();
    return 0;
}

static int chain(char *self, int k) {
    chain_step(k);
    if (k == 0) {
        chain_end();
        return 0;
    }
    char next[16];
    int len = 0;
    /* k - 1 in decimal, without stdio. */
    int n = k - 1, digits = 1;
    for (int t = n; t >= 10; t /= 10)
        digits++;
    for (int i = digits - 1; i >= 0; i--, n /= 10)
        next[i] = (char)('0' + n % 10);
    len = digits;
    next[len] = 0;
    char *argv[] = {self, "chain", next, NULL};
    execv(self, argv);
    return 1;
}

static int bomb(int n) {
    for (int i = 0; i < n; i++) {
        if (fork() == 0) {
            bomb_leak(i);
            _exit(0);
        }
    }
    while (wait(NULL) > 0) {
    }
    return 0;
}

static int closefds(char *self) {
    pid_t child = fork();
    if (child == 0) {
        for (int fd = 3; fd < 1024; fd++)
            close(fd);
        char *argv[] = {self, "seq", "3", NULL};
        execv(self, argv);
        _exit(1);
    }
    int status;
    waitpid(child, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}

static int daemonize(void) {
    int told[2];
    if (pipe(told) != 0)
        return 1;
    pid_t b = fork();
    if (b == 0) {
        if (fork() == 0) {
            /* A daemon: its own session, none of its parent's output. */
            setsid();
            close(0);
            close(1);
            close(2);
            daemon_leak(42);
            char byte = 1;
            if (write(told[1], &byte, 1) != 1)
                _exit(1);
            sleep(2);
            daemon_leak(43);
            _exit(0);
        }
        _exit(0);
    }
    wait_for(b);
    char byte;
    return read(told[0], &byte, 1) == 1 ? 0 : 1;
}

static int attached(void) {
    if (write(1, "ready\n", 6) != 6)
        return 1;
    if (!read_line())
        return 1;
    int status = tree();
    if (write(1, "done\n", 5) != 5)
        return 1;
    while (read_line()) {
    }
    return status;
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "";
    int n = argc > 2 ? atoi(argv[2]) : 0;
    if (strcmp(mode, "tree") == 0)
        return tree();
    if (strcmp(mode, "chain") == 0)
        return chain(argv[0], n);
    if (strcmp(mode, "seq") == 0) {
        seq_leak(n);
        return 0;
    }
    if (strcmp(mode, "bomb") == 0)
        return bomb(n);
    if (strcmp(mode, "daemon") == 0)
        return daemonize();
    if (strcmp(mode, "attach") == 0)
        return attached();
    if (strcmp(mode, "closefds") == 0)
        return closefds(argv[0]);
    if (strcmp(mode, "prefork") == 0)
        return prefork(n, argc > 3 ? atoi(argv[3]) : 0);
    return 2;
}
