//! Statistics: global atomics, fed in batches by each thread's pending counters so that the
//! hot path does no atomic read-modify-write.
//!
//! Counts and byte totals reach the globals every [`FLUSH_OPS`] operations of a thread, when
//! its cache exchanges blocks with the central lists, when it exits, and for the calling
//! thread whenever [`stats`] is read. The peak is exact for a single thread: a thread publishes
//! its live delta as soon as it could raise the peak. With several threads running, other
//! threads' unpublished frees can make it lag by a little.
use core::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

/// A snapshot of the allocator's counters. Bytes are usable sizes (the class size, or the
/// page-rounded size), not the sizes asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Successful allocations (a realloc that moves or resizes counts one, plus one free).
    pub allocations: u64,
    pub frees: u64,
    /// Bytes handed out, cumulative.
    pub bytes_allocated: u64,
    pub bytes_freed: u64,
    pub live_blocks: u64,
    pub live_bytes: u64,
    /// Highest `live_bytes` seen.
    pub peak_live_bytes: u64,
    /// Requests that returned null (out of memory, overflow, bad alignment).
    pub failures: u64,
    /// Frees of a block that was not allocated: already freed, or never ours. Counted and
    /// otherwise ignored.
    pub invalid_frees: u64,
}

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static FREES: AtomicU64 = AtomicU64::new(0);
static BYTES_ALLOCATED: AtomicU64 = AtomicU64::new(0);
static BYTES_FREED: AtomicU64 = AtomicU64::new(0);
static FAILURES: AtomicU64 = AtomicU64::new(0);
static INVALID_FREES: AtomicU64 = AtomicU64::new(0);
static LIVE: AtomicI64 = AtomicI64::new(0);
static PEAK: AtomicI64 = AtomicI64::new(0);

/// Operations a thread may keep unpublished.
const FLUSH_OPS: u32 = 1024;

/// A thread's not yet published counts.
#[derive(Default)]
pub struct Pending {
    allocations: u64,
    frees: u64,
    bytes_allocated: u64,
    bytes_freed: u64,
    /// Live delta not yet added to LIVE.
    live: i64,
    ops: u32,
}

impl Pending {
    pub const fn new() -> Pending {
        Pending {
            allocations: 0,
            frees: 0,
            bytes_allocated: 0,
            bytes_freed: 0,
            live: 0,
            ops: 0,
        }
    }

    #[inline]
    pub fn allocated(&mut self, bytes: usize) {
        self.allocations += 1;
        self.bytes_allocated += bytes as u64;
        self.live += bytes as i64;
        self.ops += 1;
        if LIVE.load(Relaxed) + self.live > PEAK.load(Relaxed) {
            self.publish_live();
        }
        if self.ops >= FLUSH_OPS {
            self.flush();
        }
    }

    #[inline]
    pub fn freed(&mut self, bytes: usize) {
        self.frees += 1;
        self.bytes_freed += bytes as u64;
        self.live -= bytes as i64;
        self.ops += 1;
        if self.ops >= FLUSH_OPS {
            self.flush();
        }
    }

    fn publish_live(&mut self) {
        let live = LIVE.fetch_add(self.live, Relaxed) + self.live;
        PEAK.fetch_max(live, Relaxed);
        self.live = 0;
    }

    /// Publishes everything.
    pub fn flush(&mut self) {
        if self.ops == 0 {
            return;
        }
        self.publish_live();
        ALLOCATIONS.fetch_add(self.allocations, Relaxed);
        FREES.fetch_add(self.frees, Relaxed);
        BYTES_ALLOCATED.fetch_add(self.bytes_allocated, Relaxed);
        BYTES_FREED.fetch_add(self.bytes_freed, Relaxed);
        *self = Pending::new();
    }
}

pub fn failed() {
    FAILURES.fetch_add(1, Relaxed);
}

pub fn invalid_free() {
    INVALID_FREES.fetch_add(1, Relaxed);
}

/// The counters, after publishing the calling thread's pending ones.
pub fn stats() -> Stats {
    crate::cache::flush_current_stats();
    let allocations = ALLOCATIONS.load(Relaxed);
    let frees = FREES.load(Relaxed);
    let bytes_allocated = BYTES_ALLOCATED.load(Relaxed);
    let bytes_freed = BYTES_FREED.load(Relaxed);
    Stats {
        allocations,
        frees,
        bytes_allocated,
        bytes_freed,
        live_blocks: allocations.saturating_sub(frees),
        live_bytes: bytes_allocated.saturating_sub(bytes_freed),
        peak_live_bytes: PEAK.load(Relaxed).max(0) as u64,
        failures: FAILURES.load(Relaxed),
        invalid_frees: INVALID_FREES.load(Relaxed),
    }
}

/// A fixed buffer that formats without allocating, and without `core::fmt` or indexing: no
/// panic path, which would link the standard library's panic machinery (see
/// `classes::in_range`). Bytes past its end are dropped.
struct Line {
    buf: [u8; 512],
    len: usize,
}

impl Line {
    fn push(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if let Some(slot) = self.buf.get_mut(self.len) {
                *slot = b;
                self.len += 1;
            }
        }
    }

    fn number(&mut self, mut n: u64) {
        let mut digits = [0u8; 20];
        let mut start = digits.len();
        for slot in digits.iter_mut().rev() {
            *slot = b'0' + (n % 10) as u8;
            start -= 1;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.push(digits.get(start..).unwrap_or_default());
    }
}

/// One line of statistics on stderr, formatted without allocating.
pub fn print() {
    let s = stats();
    let mut line = Line {
        buf: [0; 512],
        len: 0,
    };
    line.push(b"memprof-alloc:");
    for (name, value) in [
        (&b"allocations"[..], s.allocations),
        (b"frees", s.frees),
        (b"bytes_allocated", s.bytes_allocated),
        (b"live_blocks", s.live_blocks),
        (b"live_bytes", s.live_bytes),
        (b"peak_live_bytes", s.peak_live_bytes),
        (b"failures", s.failures),
        (b"invalid_frees", s.invalid_frees),
    ] {
        line.push(b" ");
        line.push(name);
        line.push(b" ");
        line.number(value);
    }
    line.push(b"\n");
    crate::os::write_stderr(line.buf.get(..line.len).unwrap_or_default());
}

pub extern "C" fn print_at_exit() {
    print();
}
