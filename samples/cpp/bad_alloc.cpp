// A program that catches std::bad_alloc from `new`, as servers under memory limits do
// (profiler-cli/tests/e2e/cxx_alloc.rs runs it under allocators that serve the operators with
// their own code: the exception must unwind through the capture library's hooks).
//
// Build: g++ -O2 -g -fno-omit-frame-pointer -o bad_alloc bad_alloc.cpp
//
// Calls: 3 operator new[](2^61), each throwing (caught); operator new[](2^61, nothrow), null;
// operator new[](40), deleted; operator new(16), leaked. Prints "caught 3, nothrow null" with
// write(2), which allocates nothing.
#include <new>
#include <unistd.h>

namespace bad {

// Opaque to the optimizer, so that every new is made and none is elided.
__attribute__((noinline)) char* huge(size_t bytes) { return new char[bytes]; }
__attribute__((noinline)) long* leak() { return new long[2]; }

}  // namespace bad

int main() {
    volatile size_t bytes = size_t(1) << 61;
    int caught = 0;
    for (int i = 0; i < 3; i++) {
        try {
            bad::huge(bytes)[0] = 1;
        } catch (const std::bad_alloc&) {
            caught++;
        }
    }
    char* none = new (std::nothrow) char[bytes];
    int* some = new int[10];
    some[9] = 9;
    delete[] some;
    long* leaked = bad::leak();
    leaked[1] = 1;
    const char* line = caught == 3 && none == nullptr ? "caught 3, nothrow null\n" : "unexpected\n";
    ssize_t written = write(1, line, __builtin_strlen(line));
    return written > 0 && caught == 3 ? 0 : 1;
}
