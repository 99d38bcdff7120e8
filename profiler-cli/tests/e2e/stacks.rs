//! Exact symbolized stacks: inlined frames, allocations made inside libc (strdup, a qsort
//! comparator, fopen), in a shared library of our own, from a C++ method, and from Rust's
//! Vec growth; each with and without frame pointers (the latter need DWARF unwinding).
//! Expected lines come from `@name` markers in the sample sources.

use serde_json::Value;

use crate::support::{
    Build, Capture, compile_c, compile_cpp, compile_rust_bin, compile_stacks, marker_line,
    on_both_paths, privileged, profile_on,
};

/// What one frame must be: its function, and its file base name and line for our own code
/// (`None` for library internals, whose lines belong to the library's version).
#[derive(Debug)]
struct Expect {
    function: &'static str,
    module: Option<&'static str>,
    location: Option<(&'static str, u32)>,
    inlined: bool,
}

fn ours(function: &'static str, file: &'static str, line: u32) -> Expect {
    Expect {
        function,
        module: None,
        location: Some((file, line)),
        inlined: false,
    }
}

fn inlined(function: &'static str, file: &'static str, line: u32) -> Expect {
    Expect {
        inlined: true,
        ..ours(function, file, line)
    }
}

fn library(function: &'static str, module: &'static str) -> Expect {
    Expect {
        function,
        module: Some(module),
        location: None,
        inlined: false,
    }
}

fn describe(frame: &Value) -> String {
    format!(
        "{} in {} at {}:{} inlined={}",
        frame["function"], frame["module"], frame["file"], frame["line"], frame["inlined"]
    )
}

fn matches(frame: &Value, expect: &Expect) -> bool {
    let file_base = frame["file"]
        .as_str()
        .map(|file| file.rsplit('/').next().unwrap_or(file));
    frame["function"].as_str() == Some(expect.function)
        && expect.module.is_none_or(|module| frame["module"] == module)
        && expect.location.is_none_or(|(file, line)| {
            file_base == Some(file) && frame["line"].as_u64() == Some(u64::from(line))
        })
        && frame["inlined"].as_bool() == Some(expect.inlined)
}

fn stack_text(stack: &[Value]) -> String {
    stack
        .iter()
        .map(|f| format!("\n  {}", describe(f)))
        .collect()
}

/// The stack starts with exactly `top`.
fn assert_top(stack: &[Value], top: &[Expect]) {
    assert!(
        stack.len() >= top.len(),
        "stack too short:{}",
        stack_text(stack)
    );
    for (index, (frame, expect)) in stack.iter().zip(top).enumerate() {
        assert!(
            matches(frame, expect),
            "frame {index} should be {expect:?}; stack:{}",
            stack_text(stack)
        );
    }
}

/// `wanted` appear in this order in the stack (library internals may sit between them).
fn assert_in_order(stack: &[Value], wanted: &[Expect]) {
    let mut rest = stack.iter();
    for expect in wanted {
        assert!(
            rest.any(|frame| matches(frame, expect)),
            "{expect:?} missing (or out of order) in:{}",
            stack_text(stack)
        );
    }
}

/// The single leak of `bytes` bytes.
fn leak_of(report: &Value, bytes: u64) -> Vec<Value> {
    let sites: Vec<&Value> = report["leaks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|site| site["bytes"] == bytes)
        .collect();
    assert_eq!(
        sites.len(),
        1,
        "one leak of {bytes} bytes in {:#}",
        report["leaks"]
    );
    assert_eq!(sites[0]["blocks"], 1);
    sites[0]["stack"].as_array().unwrap().clone()
}

fn c_stacks(test: &str, build: Build, capture: Capture) {
    let Some(p) = privileged(test) else { return };
    let target = compile_stacks(p.dir.path(), build);
    let report = profile_on(capture, p.dir.path(), &target, &[]);
    let line = |name| marker_line("c/stacks.c", name);
    let s = &report["summary"];
    assert_eq!(
        (s["allocations"].as_u64(), s["live_bytes"].as_u64()),
        (Some(5), Some(659))
    );
    // Lost sites first: the pointers to the 48 and 15 bytes were overwritten in `sink`; the
    // FILE stays on libc's list of open files, the last block in `sink`, and the comparator's
    // block in its static.
    let classes: Vec<(&str, u64)> = report["leaks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|site| {
            (
                site["reachability"].as_str().unwrap(),
                site["bytes"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        classes,
        [
            ("definitely_lost", 48),
            ("definitely_lost", 15),
            ("still_reachable", 472),
            ("still_reachable", 100),
            ("still_reachable", 24),
        ]
    );

    // A call chain with a static inline function between deep_leaf and its caller.
    assert_top(
        &leak_of(&report, 48),
        &[
            ours("deep_leaf", "stacks.c", line("leaf-malloc")),
            inlined("chain_inline", "stacks.c", line("inline-call")),
            ours("chain_middle", "stacks.c", line("middle-call")),
            ours("chain_outer", "stacks.c", line("outer-call")),
            ours("main", "stacks.c", line("main-chain")),
        ],
    );
    // Inside libc, glibc's own frames named from libc6-dbg.
    assert_top(
        &leak_of(&report, 15),
        &[
            library("__strdup", "libc.so.6"),
            ours("dup_name", "stacks.c", line("strdup-call")),
            ours("main", "stacks.c", line("main-strdup")),
        ],
    );
    let strdup = &leak_of(&report, 15)[0];
    assert!(
        strdup["file"].as_str().unwrap().ends_with("strdup.c"),
        "libc frames have file:line: {}",
        describe(strdup)
    );
    let comparator = leak_of(&report, 24);
    assert_top(
        &comparator,
        &[ours("compare_and_leak", "stacks.c", line("compare-malloc"))],
    );
    assert_eq!(
        comparator[1]["module"],
        "libc.so.6",
        "{}",
        stack_text(&comparator)
    );
    assert!(
        comparator[1]["function"]
            .as_str()
            .unwrap()
            .starts_with("msort_with_tmp"),
        "{}",
        stack_text(&comparator)
    );
    assert_in_order(
        &comparator,
        &[
            library("qsort_r", "libc.so.6"),
            ours("sort_words", "stacks.c", line("qsort-call")),
            ours("main", "stacks.c", line("main-qsort")),
        ],
    );
    assert_top(
        &leak_of(&report, 472),
        &[
            library("__fopen_internal", "libc.so.6"),
            ours("open_log", "stacks.c", line("fopen-call")),
            ours("main", "stacks.c", line("main-fopen")),
        ],
    );
    // In our own shared library, symbolized through its own mapping.
    assert_top(
        &leak_of(&report, 100),
        &[
            Expect {
                module: Some("libstackdemo.so"),
                ..ours(
                    "stackdemo_make_buffer",
                    "libstackdemo.c",
                    marker_line("c/libstackdemo.c", "lib-malloc"),
                )
            },
            ours("use_library", "stacks.c", line("library-call")),
            ours("main", "stacks.c", line("main-library")),
        ],
    );

    // Every module used is listed with its build-id; libc's DWARF came from libc6-dbg.
    let modules = report["modules"].as_array().unwrap();
    let module = |suffix: &str| {
        modules
            .iter()
            .find(|m| m["path"].as_str().unwrap().ends_with(suffix))
            .unwrap_or_else(|| panic!("no module {suffix} in {modules:#?}"))
    };
    assert!(module("/stacks")["build_id"].as_str().unwrap().len() >= 16);
    assert!(module("/stacks")["debug_file"].is_null());
    let libc = module("/libc.so.6");
    assert!(
        libc["debug_file"]
            .as_str()
            .unwrap()
            .starts_with("/usr/lib/debug/.build-id/"),
        "{libc}"
    );

    // The four flame graphs, with `function (file:line)` frames, inlined ones included.
    let out = p.dir.path().join("out");
    for stem in ["leaks", "alloc-bytes", "alloc-count", "peak"] {
        let svg = std::fs::read_to_string(out.join(format!("{stem}.svg"))).unwrap();
        assert!(svg.contains("stacks"), "{stem}.svg names the target");
    }
    let counts = std::fs::read_to_string(out.join("alloc-count.folded")).unwrap();
    let chain = format!(
        "chain_middle (stacks.c:{});chain_inline (stacks.c:{});deep_leaf (stacks.c:{}) 1",
        line("middle-call"),
        line("inline-call"),
        line("leaf-malloc")
    );
    assert!(
        counts.lines().any(|l| l.ends_with(&chain)),
        "{chain} in:\n{counts}"
    );
}

on_both_paths!(
    c_stacks(Build::FramePointers),
    c_stacks_with_frame_pointers,
    c_stacks_with_frame_pointers_preload
);

// Needs DWARF unwinding: without frame pointers a frame-pointer walk stops after frame 0.
on_both_paths!(
    c_stacks(Build::NoFramePointers),
    c_stacks_without_frame_pointers,
    c_stacks_without_frame_pointers_preload
);

fn cpp_new(test: &str, build: Build, capture: Capture) {
    let Some(p) = privileged(test) else { return };
    let target = compile_cpp(p.dir.path(), "shapes", build);
    let report = profile_on(capture, p.dir.path(), &target, &[]);
    let line = |name| marker_line("cpp/shapes.cpp", name);
    assert_top(
        &leak_of(&report, 16),
        &[
            library("operator new(unsigned long)", "libstdc++.so.6.0.30"),
            ours(
                "shapes::Registry::make_item(int)",
                "shapes.cpp",
                line("new-call"),
            ),
            ours(
                "shapes::Registry::remember(int)",
                "shapes.cpp",
                line("make-call"),
            ),
            ours("main", "shapes.cpp", line("main-remember")),
        ],
    );
}

on_both_paths!(
    cpp_new(Build::FramePointers),
    cpp_new_with_frame_pointers,
    cpp_new_with_frame_pointers_preload
);
on_both_paths!(
    cpp_new(Build::NoFramePointers),
    cpp_new_without_frame_pointers,
    cpp_new_without_frame_pointers_preload
);

fn rust_vec(test: &str, build: Build, capture: Capture) {
    let Some(p) = privileged(test) else { return };
    let target = compile_rust_bin(p.dir.path(), "vec_leak", build);
    let report = profile_on(capture, p.dir.path(), &target, &[]);
    // The last buffer of 100 pushes: capacity 128 u64s, grown by realloc.
    let stack = leak_of(&report, 1024);
    let rust = |function| Expect {
        function,
        module: None,
        location: None,
        inlined: false,
    };
    assert_top(
        &stack,
        &[Expect {
            inlined: true,
            ..rust("alloc::alloc::realloc")
        }],
    );
    assert_in_order(
        &stack,
        &[
            rust("alloc::raw_vec::RawVecInner<A>::finish_grow"),
            Expect {
                inlined: true,
                ..rust("alloc::vec::Vec<T,A>::push")
            },
            ours(
                "vec_leak::fill_and_forget",
                "vec_leak.rs",
                marker_line("src/bin/vec_leak.rs", "vec-push"),
            ),
            rust("vec_leak::main"),
        ],
    );
}

on_both_paths!(
    rust_vec(Build::FramePointers),
    rust_vec_growth_with_frame_pointers,
    rust_vec_growth_with_frame_pointers_preload
);
on_both_paths!(
    rust_vec(Build::NoFramePointers),
    rust_vec_growth_without_frame_pointers,
    rust_vec_growth_without_frame_pointers_preload
);

/// One leaf called on four paths in turn, its frame at the same address with the same
/// registers on the first two: each path's allocations stay on its own stack (the preloaded
/// capture joins the walk before only where the words above a shared frame are unchanged).
fn same_depth(test: &str, capture: Capture) {
    let Some(p) = privileged(test) else { return };
    let target = compile_c(p.dir.path(), "same_depth", Build::NoFramePointers);
    let report = profile_on(capture, p.dir.path(), &target, &[]);
    let s = &report["summary"];
    assert_eq!(
        (s["allocations"].as_u64(), s["frees"].as_u64()),
        (Some(4000), Some(4000))
    );
    let at = |function: &str, marker: &str| {
        format!(
            "{function} (same_depth.c:{})",
            marker_line("c/same_depth.c", marker)
        )
    };
    let leaf = at("leaf", "leaf-malloc");
    let paths = [
        vec![at("main", "main-left"), at("left", "left-call")],
        vec![at("main", "main-right"), at("right", "right-call")],
        vec![
            at("main", "main-deep"),
            at("descend", "descend-call"),
            at("descend", "descend-call"),
            at("descend", "descend-leaf"),
        ],
        vec![at("main", "main-shallow"), at("descend", "descend-leaf")],
    ];
    let counts =
        std::fs::read_to_string(p.dir.path().join("out").join("alloc-count.folded")).unwrap();
    for path in paths {
        let folded = format!("{};{leaf} 1000", path.join(";"));
        let found = counts
            .lines()
            .filter(|l| l.ends_with(&folded) && l[..l.len() - folded.len()].ends_with(';'))
            .count();
        assert_eq!(found, 1, "{folded} in:\n{counts}");
    }
    let leaf_lines = counts.lines().filter(|l| l.contains(&leaf)).count();
    assert_eq!(leaf_lines, 4, "{counts}");
}

on_both_paths!(
    same_depth(),
    stacks_sharing_frames_at_one_address,
    stacks_sharing_frames_at_one_address_preload
);
