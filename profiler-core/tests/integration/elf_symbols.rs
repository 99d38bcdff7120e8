//! Symbolization against a real ELF: a tiny C program compiled at test time.

use object::{Object, ObjectSegment, ObjectSymbol};
use profiler_core::maps::ProcessMaps;
use profiler_core::symbolize::Symbolizer;
use std::path::Path;
use std::process::Command;

const SOURCE: &str = r#"#include <stdlib.h>

__attribute__((noinline)) void *memprof_fixture_leak(size_t n) {
    void *p = malloc(n);
    return p;
}

int main(void) {
    return memprof_fixture_leak(16) == 0;
}
"#;

/// Where the fake maps put the PIE; any page-aligned address works.
const LOAD_BIAS: u64 = 0x5600_0000_0000;
const PAGE: u64 = 4096;

fn compile(dir: &Path) -> std::path::PathBuf {
    let source = dir.join("fixture.c");
    let binary = dir.join("fixture");
    std::fs::write(&source, SOURCE).unwrap();
    let status = Command::new("cc")
        .args(["-g", "-O0", "-fPIE", "-pie", "-o"])
        .arg(&binary)
        .arg(&source)
        .status()
        .expect("a C compiler `cc` is needed for this test");
    assert!(status.success(), "cc failed");
    binary
}

/// A maps text that loads `binary` the way ld.so would: each PT_LOAD at bias + vaddr, on
/// page boundaries.
fn fake_maps(binary: &Path, data: &[u8]) -> String {
    let file = object::File::parse(data).unwrap();
    let mut text = String::new();
    for segment in file.segments() {
        let (offset, _) = segment.file_range();
        let start = LOAD_BIAS + segment.address() / PAGE * PAGE;
        let end = (LOAD_BIAS + segment.address() + segment.size()).div_ceil(PAGE) * PAGE;
        let offset = offset / PAGE * PAGE;
        text.push_str(&format!(
            "{start:x}-{end:x} r-xp {offset:08x} 08:01 42 {}\n",
            binary.display()
        ));
    }
    text
}

#[test]
fn resolves_function_file_and_line_in_a_compiled_pie() {
    let dir = tempfile::tempdir().unwrap();
    let binary = compile(dir.path());
    let data = std::fs::read(&binary).unwrap();
    let file = object::File::parse(&*data).unwrap();
    let symbol = file
        .symbols()
        .find(|s| s.name() == Ok("memprof_fixture_leak"))
        .expect("fixture symbol in .symtab");
    let maps = ProcessMaps::parse(&fake_maps(&binary, &data)).unwrap();
    let mut symbolizer = Symbolizer::new(&maps);

    // A return address a few bytes into the function body.
    let return_address = LOAD_BIAS + symbol.address() + 9;
    let frame = symbolizer.symbolize(return_address);
    assert_eq!(frame.function.as_deref(), Some("memprof_fixture_leak"));
    assert_eq!(frame.module, "fixture");
    assert_eq!(frame.address, return_address);
    let mapping = maps.find(return_address).unwrap();
    assert_eq!(
        frame.module_offset,
        return_address - mapping.start + mapping.offset
    );
    assert!(
        frame.file.as_deref().unwrap().ends_with("fixture.c"),
        "{frame:?}"
    );
    let line = frame.line.unwrap();
    assert!(
        (3..=6).contains(&line),
        "line {line} outside memprof_fixture_leak"
    );

    // A return address one past the function's end still belongs to it (lookup uses addr-1).
    let past_end = LOAD_BIAS + symbol.address() + symbol.size();
    let frame = symbolizer.symbolize(past_end);
    assert_eq!(frame.function.as_deref(), Some("memprof_fixture_leak"));

    // main is found too, and with no errors recorded for the module.
    let main = file.symbols().find(|s| s.name() == Ok("main")).unwrap();
    let frame = symbolizer.symbolize(LOAD_BIAS + main.address() + 5);
    assert_eq!(frame.function.as_deref(), Some("main"));
    assert_eq!(symbolizer.module_errors().count(), 0);
}
