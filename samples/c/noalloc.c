/* noalloc.c -- a static binary with no allocator symbols at all (no libc).
 *
 * Build: gcc -static -nostdlib -nostartfiles -O2 -o noalloc noalloc.c
 *
 * It only exits with status 0. `memprof run -- ./noalloc` must refuse it (nothing to probe).
 * Checked: `nm noalloc` lists only _start (and linker symbols), `./noalloc; echo $?` prints 0. */
__attribute__((noreturn)) void _start(void) {
    __asm__ volatile("mov $60, %%eax\n\t" /* SYS_exit */
                     "xor %%edi, %%edi\n\t"
                     "syscall"
                     :
                     :
                     : "memory");
    __builtin_unreachable();
}
