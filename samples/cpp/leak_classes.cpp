// C++ containers for the leak check (profiler-cli/tests/e2e/leak_check.rs), held to
// `valgrind --leak-check=full --show-leak-kinds=all --run-cxx-freeres=no` on the same binary.
//
// Build: g++ -O2 -g -fno-omit-frame-pointer (or -fomit-frame-pointer) -o leak_classes leak_classes.cpp
//
// At exit (blocks through libstdc++'s operator new, which calls glibc's malloc):
//   definitely lost: lose_vector's std::vector object (24 B) and lose_string's std::string
//                    object (32 B)
//   indirectly lost: their buffers: 100 ints (400 B) and 64 chars + NUL (65 B)
//   still reachable: a map (48 B) held by a global pointer, its 2 nodes (72 B each) and
//                    their strings (41 and 51 B); a vector (24 B) held likewise, its buffer
//                    of 1 std::string (32 B) and that string's characters (61 B);
//                    `new Widget[4]` (40 B), held by a global through the pointer 8 bytes
//                    in, past the element count (memcheck's newarray heuristic);
//                    libstdc++'s emergency exception pool (72,704 B, which valgrind frees
//                    at exit unless --run-cxx-freeres=no)
// (Containers that are globals themselves would be destroyed at exit, freeing everything.)
// No iostream: it would allocate buffers of its own.
#include <map>
#include <string>
#include <vector>
#include <unistd.h>

#define NOIPA __attribute__((noipa))

struct Widget {
    long id = 0;
    ~Widget() { id = -1; }
};

std::map<int, std::string> *volatile kept_map;
std::vector<std::string> *volatile kept_vector;
Widget *volatile kept_widgets;
void *volatile sink;

NOIPA void keep_containers() {
    auto *map = new std::map<int, std::string>;
    (*map)[1] = std::string(40, 'a');
    (*map)[2] = std::string(50, 'b');
    kept_map = map;
    auto *vector = new std::vector<std::string>;
    vector->push_back(std::string(60, 'c'));
    kept_vector = vector;
}

NOIPA void keep_array() { kept_widgets = new Widget[4]; }

NOIPA void lose_vector() {
    sink = new std::vector<int>(100);
    sink = nullptr;
}

NOIPA void lose_string() {
    sink = new std::string(64, 'x');
    sink = nullptr;
}

NOIPA void scrub_stack() {
    volatile char scratch[16384];
    for (unsigned i = 0; i < sizeof scratch; i++)
        scratch[i] = 0;
}

int main() {
    keep_containers();
    keep_array();
    lose_vector();
    lose_string();
    scrub_stack();
    return 0;
}
