//! How long blocks live, per site: log2 histograms of the time from allocation to free, and
//! the sites whose blocks die young in numbers (pool or arena candidates).

use super::{Analysis, Observed, SessionEnd, TOP};
use crate::heap::Effect;
use crate::stacks::StackId;
use profiler_common::EventKind;
use serde::{Deserialize, Serialize};

/// Buckets of the lifetime histograms: bucket k holds lifetimes in [2^k, 2^(k+1)) ns (bucket
/// 0 also holds 0), the last one everything from 2^47 ns (39 hours) on.
pub const LIFETIME_BUCKETS: usize = 48;
/// "Short-lived": freed less than this long after allocation.
pub const SHORT_LIVED_NS: u64 = 1_000_000;
/// A site is a pool candidate when at least this many of its blocks were freed...
pub const POOL_MIN_FREED: u64 = 100;
/// ...and at least this fraction of them were short-lived.
pub const POOL_MIN_SHORT_FRACTION: f64 = 0.9;
/// Distinct sizes remembered per site; others are only counted.
pub const SIZES_KEPT: usize = 4;

pub type Histogram = [u64; LIFETIME_BUCKETS];

pub fn bucket_of(lifetime_ns: u64) -> usize {
    (63 - lifetime_ns.max(1).leading_zeros() as usize).min(LIFETIME_BUCKETS - 1)
}

/// The lifetimes of one site's freed blocks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SiteLifetimes {
    pub histogram: Histogram,
    pub freed: u64,
    pub short_lived: u64,
    /// Requested sizes of the short-lived blocks: the first [`SIZES_KEPT`] distinct sizes
    /// with their counts, the rest counted in `other_sizes`; plus the range.
    pub sizes: [(u64, u64); SIZES_KEPT],
    pub other_sizes: u64,
    pub min_size: u64,
    pub max_size: u64,
}

impl Default for SiteLifetimes {
    fn default() -> Self {
        Self {
            histogram: [0; LIFETIME_BUCKETS],
            freed: 0,
            short_lived: 0,
            sizes: [(0, 0); SIZES_KEPT],
            other_sizes: 0,
            min_size: u64::MAX,
            max_size: 0,
        }
    }
}

impl SiteLifetimes {
    fn record(&mut self, lifetime_ns: u64, size: u64) {
        self.histogram[bucket_of(lifetime_ns)] += 1;
        self.freed += 1;
        if lifetime_ns >= SHORT_LIVED_NS {
            return;
        }
        self.short_lived += 1;
        self.min_size = self.min_size.min(size);
        self.max_size = self.max_size.max(size);
        match self
            .sizes
            .iter_mut()
            .find(|(s, count)| *s == size || *count == 0)
        {
            Some(slot) => *slot = (size, slot.1 + 1),
            None => self.other_sizes += 1,
        }
    }

    /// The pool-candidate rule (see the constants).
    pub fn is_pool_candidate(&self) -> bool {
        self.freed >= POOL_MIN_FREED
            && self.short_lived as f64 >= POOL_MIN_SHORT_FRACTION * self.freed as f64
    }
}

#[derive(Debug)]
pub struct Lifetimes {
    pub all: Histogram,
    /// Indexed by StackId; boxed so that sites that never free cost one pointer.
    sites: Vec<Option<Box<SiteLifetimes>>>,
}

impl Default for Lifetimes {
    fn default() -> Self {
        Self {
            all: [0; LIFETIME_BUCKETS],
            sites: Vec::new(),
        }
    }
}

impl Analysis for Lifetimes {
    type Report = LifetimesReport;

    #[inline]
    fn observe(&mut self, seen: &Observed<'_>) {
        self.follow(seen.event.kind, seen.event.ts_ns, seen.effect);
    }

    fn report(&self, _input: &SessionEnd<'_>) -> LifetimesReport {
        let mut sites: Vec<_> = self.sites().collect();
        sites.sort_by(|(a_id, a), (b_id, b)| b.freed.cmp(&a.freed).then(a_id.cmp(b_id)));
        let pool_candidates = sites
            .iter()
            .filter(|(_, site)| site.is_pool_candidate())
            .take(TOP)
            .map(|(id, site)| PoolCandidate {
                stack_id: id.0,
                freed: site.freed,
                short_lived: site.short_lived,
                sizes: site
                    .sizes
                    .iter()
                    .filter(|(_, count)| *count > 0)
                    .map(|&(size, count)| SizeCount { size, count })
                    .collect(),
                other_sizes: site.other_sizes,
                min_size: site.min_size,
                max_size: site.max_size,
            })
            .collect();
        LifetimesReport {
            rule: format!(
                "pool or arena candidate: at least {} blocks freed, at least {}% of them within \
                 {} ns of their allocation",
                POOL_MIN_FREED,
                POOL_MIN_SHORT_FRACTION * 100.0,
                SHORT_LIVED_NS
            ),
            histogram: lifetime_buckets(&self.all),
            sites: sites
                .iter()
                .take(TOP)
                .map(|(id, site)| SiteLifetime {
                    stack_id: id.0,
                    freed: site.freed,
                    short_lived: site.short_lived,
                    histogram: lifetime_buckets(&site.histogram),
                })
                .collect(),
            pool_candidates,
        }
    }
}

impl Lifetimes {
    /// Counts blocks that were freed (free, or realloc to size 0); a realloc that moves a
    /// block does not end its life, and an overwritten block's free was never seen.
    fn follow(&mut self, kind: EventKind, ts_ns: u64, effect: &Effect) {
        let Some((_, block)) = &effect.released else {
            return;
        };
        if effect.created.is_some() && !kind.is_free() {
            return;
        }
        let lifetime = ts_ns.saturating_sub(block.ts_ns);
        self.all[bucket_of(lifetime)] += 1;
        let Some(id) = block.stack else { return };
        let index = id.0 as usize;
        if index >= self.sites.len() {
            self.sites.resize_with(index + 1, || None);
        }
        self.sites[index]
            .get_or_insert_with(Box::default)
            .record(lifetime, block.size);
    }

    /// Sites that freed at least one block, by ascending id.
    pub fn sites(&self) -> impl Iterator<Item = (StackId, &SiteLifetimes)> {
        self.sites
            .iter()
            .enumerate()
            .filter_map(|(index, site)| Some((StackId(index as u32), site.as_deref()?)))
    }
}

fn lifetime_buckets(histogram: &Histogram) -> Vec<LifetimeBucket> {
    histogram
        .iter()
        .enumerate()
        .filter(|(_, count)| **count > 0)
        .map(|(index, &count)| LifetimeBucket {
            min_ns: if index == 0 { 0 } else { 1 << index },
            max_ns: (index + 1 < LIFETIME_BUCKETS).then(|| (1u64 << (index + 1)) - 1),
            count,
        })
        .collect()
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LifetimesReport {
    pub rule: String,
    /// Lifetimes of every freed block, in log2 buckets of nanoseconds.
    pub histogram: Vec<LifetimeBucket>,
    /// The sites that freed most blocks, with their histograms.
    pub sites: Vec<SiteLifetime>,
    pub pool_candidates: Vec<PoolCandidate>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LifetimeBucket {
    pub min_ns: u64,
    /// Null for the last, open-ended bucket.
    pub max_ns: Option<u64>,
    pub count: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteLifetime {
    pub stack_id: u32,
    pub freed: u64,
    pub short_lived: u64,
    pub histogram: Vec<LifetimeBucket>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolCandidate {
    pub stack_id: u32,
    pub freed: u64,
    pub short_lived: u64,
    /// Requested sizes of the short-lived blocks (up to four distinct ones)...
    pub sizes: Vec<SizeCount>,
    /// ...short-lived blocks of other sizes, and the size range of all of them.
    pub other_sizes: u64,
    pub min_size: u64,
    pub max_size: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SizeCount {
    pub size: u64,
    pub count: u64,
}

impl LifetimesReport {
    /// The stacks it refers to.
    pub fn stack_ids(&self) -> impl Iterator<Item = u32> + '_ {
        let sites = self.sites.iter().map(|site| site.stack_id);
        sites.chain(self.pool_candidates.iter().map(|site| site.stack_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_log2_of_nanoseconds() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(1), 0);
        assert_eq!(bucket_of(2), 1);
        assert_eq!(bucket_of(1023), 9);
        assert_eq!(bucket_of(1024), 10);
        assert_eq!(bucket_of(u64::MAX), LIFETIME_BUCKETS - 1);
    }

    #[test]
    fn keeps_four_sizes_then_counts_the_rest() {
        let mut site = SiteLifetimes::default();
        for size in [8, 16, 8, 24, 32, 40, 8] {
            site.record(10, size);
        }
        site.record(SHORT_LIVED_NS, 4096); // not short-lived: sizes untouched
        assert_eq!(site.sizes, [(8, 3), (16, 1), (24, 1), (32, 1)]);
        assert_eq!((site.other_sizes, site.min_size, site.max_size), (1, 8, 40));
        assert_eq!((site.freed, site.short_lived), (8, 7));
    }
}
