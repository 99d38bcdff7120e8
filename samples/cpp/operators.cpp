// Every kind of C++ operator new/delete a compiler emits, with known counts
// (profiler-cli/tests/e2e/cxx_alloc.rs runs it under glibc, jemalloc, mimalloc, tcmalloc and
// memprof's allocator, which must all give the same figures).
//
// Build: g++ -O2 -g -fno-omit-frame-pointer -o operators operators.cpp
//
// Calls (sizes in bytes; g++ 12 uses the sized and aligned deletes):
// - make_item, 3 times, each deleted:  operator new(16),            operator delete(p, 16)
// - make_array, deleted:               operator new[](32),          operator delete[](p)
// - make_line, 2 times, one deleted:   operator new(64, align 64),  operator delete(p, 64, 64)
// - make_nothrow, leaked:              operator new(16, nothrow)
// Totals: 7 allocations (224 bytes), 5 frees, 2 blocks leaked: 64 bytes from make_line and
// 16 from make_nothrow. Nothing else allocates: no iostream.
#include <new>
#include <unistd.h>

namespace ops {

struct Item {
    long id;
    long area;
};

struct alignas(64) Line {
    char bytes[64];
};

__attribute__((noipa)) Item *make_item(long id) { return new Item{id, id * 2}; }

__attribute__((noipa)) long *make_array() { return new long[4](); }

__attribute__((noipa)) Line *make_line() { return new Line(); }

__attribute__((noipa)) Item *make_nothrow() { return new (std::nothrow) Item{1, 2}; }

__attribute__((noipa)) void drop_item(Item *item) { delete item; }

__attribute__((noipa)) void drop_array(long *array) { delete[] array; }

__attribute__((noipa)) void drop_line(Line *line) { delete line; }

} // namespace ops

int main() {
    for (long id = 0; id < 3; id++) {
        ops::drop_item(ops::make_item(id));
    }
    ops::drop_array(ops::make_array());
    ops::drop_line(ops::make_line());
    static ops::Line *volatile kept_line = ops::make_line();
    static ops::Item *volatile kept_item = ops::make_nothrow();
    (void)kept_line;
    (void)kept_item;
    const char done[] = "operators done\n";
    return write(1, done, sizeof done - 1) == sizeof done - 1 ? 0 : 1;
}
