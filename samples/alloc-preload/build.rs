//! Links libmemprof_alloc.so with GNU ld instead of rustc's default (lld). lld keeps the
//! standard library's unwinding personality routine alive, and with it the panic and backtrace
//! machinery (about 290 KiB of code), although nothing in this library can panic in a release
//! build; GNU ld's section garbage collection drops all of it. The library is preloaded into
//! every process it serves, so that code would be resident in each of them.
fn main() {
    println!("cargo::rustc-cdylib-link-arg=-fuse-ld=bfd");
}
