//! The clock every capture path stamps its records with.

/// CLOCK_MONOTONIC in nanoseconds: the clock of bpf_ktime_get_ns and of the capture
/// library's records.
pub fn monotonic_ns() -> u64 {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always available");
    now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64
}
