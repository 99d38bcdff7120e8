// C++ `new` from a method of a class in a namespace (profiler-cli/tests/e2e/stacks.rs):
// the frames must come out demangled, e.g. `shapes::Registry::make_item(int)`.
//
// Build: g++ -O2 -g -fno-omit-frame-pointer (or -fomit-frame-pointer) -o shapes shapes.cpp
//
// Allocations (glibc malloc via libstdc++'s operator new): one `new Item` of 16 bytes, leaked,
// from operator new <- shapes::Registry::make_item(int) <- shapes::Registry::remember(int)
// <- main. libstdc++ has no frame pointers, so a frame-pointer walk skips make_item (the
// caller of operator new); DWARF unwinding sees it. Nothing else allocates: no iostream.
#include <unistd.h>

namespace shapes {

struct Item {
    long id;
    long area;
};

class Registry {
  public:
    __attribute__((noipa)) Item *make_item(int id) {
        Item *item = new Item{id, id * 2L}; // @new-call
        made_++;
        return item;
    }

    __attribute__((noipa)) void remember(int id) {
        last_ = make_item(id); // @make-call
        made_++;
    }

  private:
    Item *volatile last_ = nullptr;
    volatile long made_ = 0;
};

} // namespace shapes

int main() {
    static shapes::Registry registry;
    registry.remember(7); // @main-remember
    const char done[] = "shapes done\n";
    return write(1, done, sizeof done - 1) == sizeof done - 1 ? 0 : 1;
}
