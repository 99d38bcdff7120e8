//! `MEMPROF_TIMINGS=1`: memprof prints how long its own steps took and what it used (CPU,
//! peak RSS). memprof's own knob: the programs it launches do not see it, so that their
//! environment (which some copy, python's `os.environ`) is the one they would have otherwise.

/// The variable's name.
pub const VAR: &str = "MEMPROF_TIMINGS";

/// Whether timings are asked for.
pub fn enabled() -> bool {
    std::env::var_os(VAR).is_some()
}
