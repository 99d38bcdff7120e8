/* exit_status.c -- exits with the status given as argv[1] (default 0), allocating nothing.
 *
 * Build: gcc -O2 -g exit_status.c
 * Used to check that memprof exits with its target's status. */
#include <stdlib.h>

int main(int argc, char **argv) {
    if (argc < 2)
        return 0;
    return (int)strtol(argv[1], NULL, 10);
}
