use super::*;

#[inline(never)]
fn marker_function_for_symbolizer_test() -> u64 {
    std::hint::black_box(42)
}

#[test]
fn symbolizes_own_function_via_proc_self_maps() {
    let maps = ProcessMaps::read(std::process::id()).unwrap();
    let mut symbolizer = Symbolizer::new(&maps);
    let entry = marker_function_for_symbolizer_test as fn() -> u64 as usize as u64;
    // +1: symbolize treats addresses as return addresses and looks up address - 1.
    let frame = symbolizer.symbolize(entry + 1);
    assert_eq!(frame.address, entry + 1);
    let function = frame.function.expect("test binary has a symbol table");
    assert!(
        function.ends_with("symbolize::tests::marker_function_for_symbolizer_test"),
        "{function}"
    );
    let exe = std::env::current_exe().unwrap();
    assert_eq!(frame.module, exe.file_name().unwrap().to_string_lossy());
    let file = frame.file.expect("tests build with debug info");
    assert!(file.ends_with("symbolize/tests.rs"), "{file}");
    assert!(frame.line.is_some());
    // Cached: the same answer again.
    assert_eq!(symbolizer.symbolize(entry + 1).function, Some(function));
}

#[test]
fn unmapped_and_anonymous_addresses_are_unknown() {
    let maps =
        ProcessMaps::parse("10000-20000 rw-p 0 00:00 0\n30000-31000 r-xp 0 00:00 0 [vdso]\n")
            .unwrap();
    let mut symbolizer = Symbolizer::new(&maps);
    let frame = symbolizer.symbolize(0x5000);
    assert_eq!(
        (frame.module.as_str(), frame.module_offset, frame.function),
        ("[unknown]", 0, None)
    );
    assert_eq!(symbolizer.symbolize(0x10010).module, "[unknown]");
    let vdso = symbolizer.symbolize(0x30010);
    assert_eq!((vdso.module.as_str(), vdso.module_offset), ("[vdso]", 0x10));
}

#[test]
fn unreadable_module_is_reported_once() {
    let maps = ProcessMaps::parse("10000-20000 r-xp 0 00:00 1 /nonexistent/libgone.so\n").unwrap();
    let mut symbolizer = Symbolizer::new(&maps);
    let frame = symbolizer.symbolize(0x10100);
    assert_eq!(
        (frame.module.as_str(), frame.module_offset, frame.function),
        ("libgone.so", 0xff + 1, None)
    );
    symbolizer.symbolize(0x10200);
    let errors: Vec<String> = symbolizer.module_errors().map(|e| e.to_string()).collect();
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].starts_with("cannot read /nonexistent/libgone.so"),
        "{}",
        errors[0]
    );
}

/// Frames of `libgone.so` (mapped at 0x10000, a file that does not exist) as a recording
/// carries them.
fn gone_frames() -> Vec<(u64, Vec<Frame>)> {
    let frame = |address: u64, function: &str, line, inlined| Frame {
        address,
        module: "libgone.so".to_owned(),
        module_offset: address - 0x10000,
        function: Some(function.to_owned()),
        file: Some("gone.c".to_owned()),
        line: Some(line),
        inlined,
    };
    vec![
        (
            0x10100,
            vec![
                frame(0x10100, "inner", 3, true),
                frame(0x10100, "outer", 9, false),
            ],
        ),
        (0x10180, vec![frame(0x10180, "outer", 12, false)]),
    ]
}

#[test]
fn recorded_symbols_answer_without_opening_a_file() {
    let maps = ProcessMaps::parse("10000-20000 r-xp 0 00:00 1 /nonexistent/libgone.so\n").unwrap();
    let frames = gone_frames();
    let module = ModuleInfo {
        path: "/nonexistent/libgone.so".into(),
        build_id: Some("ab12".to_owned()),
        debug_file: None,
    };
    let symbols = RecordedSymbols::of(&frames, std::slice::from_ref(&module));
    // Each string once.
    assert_eq!(symbols.strings, ["libgone.so", "inner", "gone.c", "outer"]);
    let read: RecordedSymbols =
        serde_json::from_slice(&serde_json::to_vec(&symbols).unwrap()).unwrap();
    assert_eq!(read, symbols);
    read.check().unwrap();

    let mut symbolizer = Symbolizer::new(&maps).with_recorded(&read);
    for (address, expected) in &frames {
        assert_eq!(symbolizer.frames(*address), &expected[..]);
    }
    assert_eq!(symbolizer.module_errors().count(), 0, "no file was opened");
    assert_eq!(symbolizer.modules(), [module]);
    // What it records again is what it was given.
    assert_eq!(symbolizer.recorded(), read);
    // Another address is looked up in the file, as without a record.
    assert_eq!(symbolizer.symbolize(0x10200).function, None);
    assert_eq!(symbolizer.module_errors().count(), 1);
}

#[test]
fn recorded_symbols_that_name_no_frame_or_a_missing_string_are_refused() {
    let frames = gone_frames();
    let symbols = RecordedSymbols::of(&frames, &[]);
    let mut no_frame = symbols.clone();
    no_frame.addresses[1].frames.clear();
    assert_eq!(
        no_frame.check(),
        Err(RecordedSymbolsError::NoFrame(0x10180))
    );
    let mut missing = symbols;
    missing.addresses[0].frames[0].file = Some(4);
    assert_eq!(
        missing.check(),
        Err(RecordedSymbolsError::NoSuchString(4, 4))
    );
}

/// A C file compiled with zlib-compressed DWARF (`-gz=zlib`, as Debian's debug files come),
/// and the virtual address of its function `leaf`.
fn compressed_dwarf_object(dir: &std::path::Path) -> (std::path::PathBuf, u64) {
    use object::{Object as _, ObjectSection as _, ObjectSymbol as _};
    let source = dir.join("compressed.c");
    std::fs::write(
        &source,
        "int leaf(int x) {\n  return x * 3 + 1;\n}\nint main(void) { return leaf(2); }\n",
    )
    .unwrap();
    let binary = dir.join("compressed");
    let status = std::process::Command::new("gcc")
        .args(["-g", "-O0", "-gz=zlib", "-o"])
        .arg(&binary)
        .arg(&source)
        .status()
        .expect("gcc runs (setup installs it)");
    assert!(status.success(), "gcc -gz=zlib: {status}");
    let bytes = std::fs::read(&binary).unwrap();
    let file = object::File::parse(&*bytes).unwrap();
    let info = file.section_by_name(".debug_info").expect("built with -g");
    assert_eq!(
        info.compressed_data().unwrap().format,
        object::CompressionFormat::Zlib,
        "gcc compressed the DWARF"
    );
    let leaf = file
        .symbols()
        .find(|symbol| symbol.name() == Ok("leaf"))
        .expect("leaf in the symbol table");
    (binary, leaf.address())
}

#[test]
fn compressed_dwarf_names_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let (binary, leaf) = compressed_dwarf_object(dir.path());
    let bytes: std::sync::Arc<[u8]> = std::fs::read(&binary).unwrap().into();
    let module = module::Module::parse(bytes, &binary, dir.path()).unwrap();
    let base = Frame {
        address: leaf,
        module: "compressed".into(),
        module_offset: 0,
        function: None,
        file: None,
        line: None,
        inlined: false,
    };
    // Past the prologue: the body's line, 2.
    let frames = module.describe(leaf + 8, &base);
    let frame = frames.last().expect("one frame");
    assert_eq!(frame.function.as_deref(), Some("leaf"));
    assert!(
        frame
            .file
            .as_deref()
            .is_some_and(|file| file.ends_with("compressed.c")),
        "{frames:?}"
    );
    assert_eq!(frame.line, Some(2), "{frames:?}");
}
