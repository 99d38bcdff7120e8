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
