//! Inlined frames and separate debug files, on a C fixture compiled at test time: the
//! return address after a call made from an always-inlined function must come out as two
//! frames, and a stripped copy must get the same file:line from its debug file, found by
//! .gnu_debuglink (CRC checked) or by build-id.

use object::{Object, ObjectSegment};
use profiler_core::maps::ProcessMaps;
use profiler_core::symbolize::{Frame, Symbolizer};
use std::path::{Path, PathBuf};
use std::process::Command;

const SOURCE: &str = r#"#include <stdlib.h>
__attribute__((noipa)) void *fixture_leaf(unsigned long n) { return malloc(n); }
static inline __attribute__((always_inline)) void *fixture_helper(unsigned long n) {
    void *p = fixture_leaf(n);
    return p;
}
__attribute__((noipa)) void *fixture_outer(unsigned long n) {
    void *p = fixture_helper(n);
    volatile int keep = 1;
    (void)keep;
    return p;
}
int main(void) { return fixture_outer(16) == 0; }
"#;

const LOAD_BIAS: u64 = 0x5600_0000_0000;
const PAGE: u64 = 4096;

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn compile(dir: &Path) -> PathBuf {
    let source = dir.join("fixture.c");
    let binary = dir.join("fixture");
    std::fs::write(&source, SOURCE).unwrap();
    run(Command::new("cc")
        .args(["-O2", "-g", "-fPIE", "-pie", "-Wl,--build-id", "-o"])
        .arg(&binary)
        .arg(&source));
    binary
}

/// The return address of the call to fixture_leaf inside fixture_outer (where
/// fixture_helper was inlined), as a file virtual address, found with objdump.
fn return_address_in_outer(binary: &Path) -> u64 {
    let out = Command::new("objdump")
        .args(["-d", "--no-show-raw-insn"])
        .arg(binary)
        .output()
        .expect("objdump (binutils) is needed for this test");
    let text = String::from_utf8(out.stdout).unwrap();
    let body = text
        .split("<fixture_outer>:\n")
        .nth(1)
        .expect("fixture_outer in the disassembly");
    let mut lines = body.lines();
    lines
        .by_ref()
        .find(|line| line.contains("call") && line.contains("<fixture_leaf>"))
        .expect("a call to fixture_leaf in fixture_outer");
    let next = lines.next().expect("an instruction after the call");
    let address = next.trim().split(':').next().unwrap();
    u64::from_str_radix(address, 16).unwrap()
}

/// Maps the way ld.so would load `binary` at LOAD_BIAS.
fn maps_for(binary: &Path) -> ProcessMaps {
    let data = std::fs::read(binary).unwrap();
    let file = object::File::parse(&*data).unwrap();
    let mut text = String::new();
    for segment in file.segments() {
        let (offset, _) = segment.file_range();
        let start = LOAD_BIAS + segment.address() / PAGE * PAGE;
        let end = (LOAD_BIAS + segment.address() + segment.size()).div_ceil(PAGE) * PAGE;
        text.push_str(&format!(
            "{start:x}-{end:x} r-xp {:08x} 08:01 42 {}\n",
            offset / PAGE * PAGE,
            binary.display()
        ));
    }
    ProcessMaps::parse(&text).unwrap()
}

/// (function, file base name, line, inlined) of each frame.
fn described(frames: &[Frame]) -> Vec<(String, String, u32, bool)> {
    frames
        .iter()
        .map(|f| {
            let file = f.file.clone().unwrap_or_default();
            let base = file.rsplit('/').next().unwrap_or_default().to_owned();
            (
                f.function.clone().unwrap_or_default(),
                base,
                f.line.unwrap_or(0),
                f.inlined,
            )
        })
        .collect()
}

fn expected() -> Vec<(String, String, u32, bool)> {
    vec![
        ("fixture_helper".into(), "fixture.c".into(), 4, true),
        ("fixture_outer".into(), "fixture.c".into(), 8, false),
    ]
}

fn symbolize(binary: &Path, debug_root: &Path, vaddr: u64) -> (Symbolizer, Vec<Frame>) {
    let mut symbolizer = Symbolizer::new(&maps_for(binary)).with_debug_root(debug_root);
    let frames = symbolizer.frames(LOAD_BIAS + vaddr).to_vec();
    (symbolizer, frames)
}

fn build_id(binary: &Path) -> String {
    let data = std::fs::read(binary).unwrap();
    let file = object::File::parse(&*data).unwrap();
    let id = file.build_id().unwrap().expect("built with --build-id");
    id.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn inlined_function_is_its_own_frame() {
    let dir = tempfile::tempdir().unwrap();
    let binary = compile(dir.path());
    let vaddr = return_address_in_outer(&binary);
    let (symbolizer, frames) = symbolize(&binary, dir.path(), vaddr);
    assert_eq!(described(&frames), expected(), "{frames:?}");
    assert!(frames.iter().all(|f| f.address == LOAD_BIAS + vaddr));
    let modules = symbolizer.modules();
    assert_eq!(modules.len(), 1);
    assert_eq!(modules[0].path, binary);
    assert_eq!(
        modules[0].build_id.as_deref(),
        Some(build_id(&binary).as_str())
    );
    assert_eq!(
        modules[0].debug_file, None,
        "the binary carries its own DWARF"
    );
}

#[test]
fn stripped_binary_uses_its_debuglink_file() {
    let dir = tempfile::tempdir().unwrap();
    let binary = compile(dir.path());
    let vaddr = return_address_in_outer(&binary);
    let debug = dir.path().join("fixture.debug");
    let stripped = dir.path().join("fixture.stripped");
    run(Command::new("objcopy")
        .arg("--only-keep-debug")
        .arg(&binary)
        .arg(&debug));
    run(Command::new("objcopy")
        .arg("--strip-debug")
        .arg(format!("--add-gnu-debuglink={}", debug.display()))
        .arg(&binary)
        .arg(&stripped));
    let empty_root = dir.path().join("no-debug-root");
    let (symbolizer, frames) = symbolize(&stripped, &empty_root, vaddr);
    assert_eq!(described(&frames), expected(), "{frames:?}");
    assert_eq!(
        symbolizer.modules()[0].debug_file.as_deref(),
        Some(debug.as_path())
    );

    // A debug file whose CRC does not match the link is not used: names from .symtab only.
    let mut bytes = std::fs::read(&debug).unwrap();
    bytes.push(0);
    std::fs::write(&debug, bytes).unwrap();
    let (symbolizer, frames) = symbolize(&stripped, &empty_root, vaddr);
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0].function.as_deref(), Some("fixture_outer"));
    assert_eq!((frames[0].file.as_deref(), frames[0].line), (None, None));
    assert_eq!(symbolizer.modules()[0].debug_file, None);
}

#[test]
fn stripped_binary_finds_its_debug_file_by_build_id() {
    let dir = tempfile::tempdir().unwrap();
    let binary = compile(dir.path());
    let vaddr = return_address_in_outer(&binary);
    let id = build_id(&binary);
    let root = dir.path().join("debug");
    let by_id = root
        .join(".build-id")
        .join(&id[..2])
        .join(format!("{}.debug", &id[2..]));
    std::fs::create_dir_all(by_id.parent().unwrap()).unwrap();
    run(Command::new("objcopy")
        .arg("--only-keep-debug")
        .arg(&binary)
        .arg(&by_id));
    // Stripped of everything, .symtab included: names and lines come from the debug file.
    let stripped = dir.path().join("fixture.stripped");
    run(Command::new("objcopy")
        .arg("--strip-all")
        .arg(&binary)
        .arg(&stripped));
    let (symbolizer, frames) = symbolize(&stripped, &root, vaddr);
    assert_eq!(described(&frames), expected(), "{frames:?}");
    assert_eq!(
        symbolizer.modules()[0].debug_file.as_deref(),
        Some(by_id.as_path())
    );
    assert_eq!(
        symbolizer.modules()[0].build_id.as_deref(),
        Some(id.as_str())
    );
}

/// Debian's libc6-dbg (installed by `cargo xtask setup`) gives glibc frames file:line.
#[test]
fn glibc_frames_get_file_and_line_from_libc6_dbg() {
    let maps = ProcessMaps::read(std::process::id()).unwrap();
    let mut symbolizer = Symbolizer::new(&maps);
    let malloc = libc_malloc_address();
    let frame = symbolizer.symbolize(malloc + 1);
    assert_eq!(frame.module, "libc.so.6");
    assert!(
        frame.function.as_deref().unwrap().contains("malloc"),
        "{frame:?}"
    );
    let file = frame
        .file
        .clone()
        .expect("libc6-dbg provides DWARF for libc");
    assert!(file.ends_with("malloc.c"), "{frame:?}");
    let libc = symbolizer
        .modules()
        .into_iter()
        .find(|m| m.path.ends_with("libc.so.6"))
        .unwrap();
    let debug = libc.debug_file.expect("found by build-id");
    assert!(
        debug.starts_with("/usr/lib/debug/.build-id/"),
        "{}",
        debug.display()
    );
}

fn libc_malloc_address() -> u64 {
    unsafe extern "C" {
        fn malloc(size: usize) -> *mut std::ffi::c_void;
    }
    malloc as unsafe extern "C" fn(usize) -> *mut std::ffi::c_void as usize as u64
}
