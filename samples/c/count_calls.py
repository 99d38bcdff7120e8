# count_calls.py -- an independent count of the calls memprof probes, for checking the
# expectations written at the top of each sample.
#
# Usage: gdb -q -batch -x count_calls.py --args ./leaks.fp
#
# gdb breakpoints sit on function addresses, exactly like uprobes, so this sees what the probes
# see, including glibc's calls to its own entry points (realloc(NULL, n) -> malloc, ...).
# Prints one line per (function, caller, size argument, result is NULL/0) with its hit count.
import collections

import gdb

FUNCS = ["malloc", "calloc", "realloc", "reallocarray", "free", "posix_memalign",
         "aligned_alloc", "memalign", "valloc", "pvalloc", "mmap", "munmap", "mremap"]
hits = collections.Counter()


def reg(name):
    return int(gdb.parse_and_eval("$" + name)) & 0xFFFFFFFFFFFFFFFF


def size_of(func):
    rdi, rsi, rdx = reg("rdi"), reg("rsi"), reg("rdx")
    return {
        "malloc": rdi, "valloc": rdi, "pvalloc": rdi, "free": rdi != 0,
        "calloc": (rdi * rsi) & 0xFFFFFFFFFFFFFFFF,
        "realloc": ("old=0" if rdi == 0 else "old!=0", rsi),
        "reallocarray": ("old=0" if rdi == 0 else "old!=0", (rsi * rdx) & 0xFFFFFFFFFFFFFFFF),
        "posix_memalign": (rsi, rdx), "aligned_alloc": (rdi, rsi), "memalign": (rdi, rsi),
        "mmap": rsi, "munmap": rsi, "mremap": (rsi, rdx),
    }[func]


class Probe(gdb.Breakpoint):
    def __init__(self, func):
        super().__init__(func, internal=True)
        self.func = func

    def stop(self):
        frame = gdb.newest_frame()
        # Only libc's entry points: ld.so has private helpers of its own.
        objfile = gdb.current_progspace().solib_name(frame.pc()) or ""
        if "libc.so" not in objfile:
            return False
        caller = frame.older()
        name = caller.name() if caller is not None else None
        hits[(self.func, name, str(size_of(self.func)))] += 1
        return False


gdb.execute("set breakpoint pending on")
gdb.execute("set pagination off")
for func in FUNCS:
    Probe(func)
gdb.execute("run")
for (func, caller, size), count in sorted(hits.items(), key=lambda kv: (kv[0][0], str(kv[0][1]), kv[0][2])):
    print(f"CALL {func:15} from {str(caller):28} size {size:28} x {count}")
