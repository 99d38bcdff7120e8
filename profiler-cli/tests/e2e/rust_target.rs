//! `memprof run` on samples/src/bin/rust_leaks.rs. std allocates a little on its own at
//! startup (thread and stack-guard setup, reading /proc/self/maps), so only the sample's own
//! sites are asserted, never global totals.
use crate::report::{Name, assert_nothing_lost, assert_sites, sites_with};
use crate::support::{Build, Capture, compile_rust, on_both_paths, privileged, profile_on};

fn check_rust(test: &str, build: Build, capture: Capture) {
    let Some(env) = privileged(test) else { return };
    let target = compile_rust(env.dir.path(), build);
    let report = profile_on(capture, env.dir.path(), &target, &[]);
    assert_nothing_lost(&report);

    // These call malloc from their own body (Box, alloc and the first Vec allocation are
    // inlined), so even a walk that only sees the first frame names them.
    assert_sites(&report, "leaks", Name::Contains("rust_leak_boxes"), 4, 4000);
    assert_sites(&report, "leaks", Name::Contains("rust_leak_raw"), 1, 2048);
    assert_sites(&report, "leaks", Name::Contains("rust_forget_vec"), 1, 3000);
    // Everything rust_freed allocates is dropped.
    assert_sites(&report, "leaks", Name::Contains("rust_freed"), 0, 0);
    if build == Build::FramePointers {
        // The Vec's last realloc (to 128 x 8 bytes) happens in RawVecInner::finish_grow; with
        // frame pointers the walk goes on to the function that pushed.
        assert_sites(&report, "leaks", Name::Contains("rust_vec_growth"), 1, 1024);
    } else {
        // Without frame pointers the walk stops in finish_grow: the block is still reported.
        let grown = sites_with(&report, "leaks", Name::Contains("finish_grow"));
        assert!(
            grown
                .iter()
                .any(|site| site["blocks"] == 1 && site["bytes"] == 1024),
            "no leak site of 1 x 1024 bytes in finish_grow; leaks:{}",
            crate::report::describe(&report, "leaks")
        );
    }
}

on_both_paths!(
    check_rust(Build::FramePointers),
    rust_leaks_fp,
    rust_leaks_fp_preload
);
on_both_paths!(
    check_rust(Build::NoFramePointers),
    rust_leaks_nofp,
    rust_leaks_nofp_preload
);
