//! The heap over time: live bytes and blocks, allocation rate and RSS in a fixed number of
//! buckets. When the recording outgrows them, neighbouring buckets merge and the bucket width
//! doubles, so memory stays constant however long the session.

use super::{Analysis, Observed, SessionEnd, TOP};
use crate::heap::Effect;
use crate::sites::SiteStats;
use serde::{Deserialize, Serialize};
use std::ops::Range;

/// Buckets kept; the report has at most this many points.
pub const TIMELINE_BUCKETS: usize = 128;
/// Width of a bucket before any coarsening.
pub const INITIAL_BUCKET_NS: u64 = 1_000_000;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Bucket {
    /// Something happened in this bucket (an event or an RSS sample).
    touched: bool,
    allocations: u64,
    bytes_allocated: u64,
    frees: u64,
    /// Live heap after the last event of the bucket.
    live_bytes: u64,
    live_blocks: u64,
    max_live_bytes: u64,
    /// Last RSS sample of the bucket.
    rss_bytes: Option<u64>,
}

impl Bucket {
    /// `self` followed by `later`.
    fn merge(self, later: Bucket) -> Bucket {
        if !later.touched {
            return self;
        }
        if !self.touched {
            return later;
        }
        Bucket {
            touched: true,
            allocations: self.allocations + later.allocations,
            bytes_allocated: self.bytes_allocated + later.bytes_allocated,
            frees: self.frees + later.frees,
            live_bytes: later.live_bytes,
            live_blocks: later.live_blocks,
            max_live_bytes: self.max_live_bytes.max(later.max_live_bytes),
            rss_bytes: later.rss_bytes.or(self.rss_bytes),
        }
    }
}

/// The global peak as the timeline saw it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Peak {
    pub ts_ns: u64,
    pub bytes: u64,
    pub blocks: u64,
}

#[derive(Debug)]
pub struct Timeline {
    /// Time of bucket 0's start: the first thing observed.
    origin_ns: Option<u64>,
    width_ns: u64,
    buckets: Vec<Bucket>,
    /// The bucket the last event went to and the offsets from the origin it covers:
    /// consecutive events nearly always share a bucket, and this spares them a division.
    current: usize,
    current_span: Range<u64>,
    live_bytes: u64,
    live_blocks: u64,
    peak: Option<Peak>,
}

impl Default for Timeline {
    fn default() -> Self {
        Self {
            origin_ns: None,
            width_ns: INITIAL_BUCKET_NS,
            buckets: vec![Bucket::default(); TIMELINE_BUCKETS],
            current: 0,
            current_span: 0..0,
            live_bytes: 0,
            live_blocks: 0,
            peak: None,
        }
    }
}

/// One point of the timeline in the report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TimelinePoint {
    /// End of the bucket, seconds since the session start.
    pub time_secs: f64,
    /// Live heap at the end of the bucket, and its highest value within it.
    pub live_bytes: u64,
    pub live_blocks: u64,
    pub max_live_bytes: u64,
    pub allocations: u64,
    pub bytes_allocated: u64,
    pub frees: u64,
    pub allocations_per_sec: f64,
    pub bytes_per_sec: f64,
    /// Last RSS sample at or before the end of the bucket (null before the first sample).
    pub rss_bytes: Option<u64>,
}

/// What [`Timeline::points`] hands the report.
#[derive(Clone, Debug, PartialEq)]
pub struct TimelineData {
    pub bucket_secs: f64,
    pub points: Vec<TimelinePoint>,
    pub peak: Option<Peak>,
}

impl Analysis for Timeline {
    type Report = TimelineReport;

    #[inline]
    fn observe(&mut self, seen: &Observed<'_>) {
        self.follow(
            seen.event.ts_ns,
            seen.effect,
            (seen.live_bytes, seen.live_blocks),
        );
    }

    fn report(&self, input: &SessionEnd<'_>) -> TimelineReport {
        let timeline = self.points(|ts_ns| input.secs(ts_ns));
        TimelineReport {
            bucket_secs: timeline.bucket_secs,
            peak: timeline.peak.map(|peak| PeakReport {
                time_secs: input.secs(peak.ts_ns),
                live_bytes: peak.bytes,
                live_blocks: peak.blocks,
                sites: sites_at_peak(input.sites),
            }),
            points: timeline.points,
        }
    }
}

impl Timeline {
    /// `live` is the live bytes and blocks after the event.
    fn follow(&mut self, ts_ns: u64, effect: &Effect, live: (u64, u64)) {
        (self.live_bytes, self.live_blocks) = live;
        let (live_bytes, live_blocks) = live;
        let bucket = self.bucket_mut(ts_ns);
        bucket.touched = true;
        // A realloc releases and creates: it is neither a free nor counted twice.
        if effect.released.is_some() && effect.created.is_none() {
            bucket.frees += 1;
        }
        if let Some((_, block)) = &effect.created {
            bucket.allocations += 1;
            bucket.bytes_allocated += block.size;
        }
        bucket.live_bytes = live_bytes;
        bucket.live_blocks = live_blocks;
        bucket.max_live_bytes = bucket.max_live_bytes.max(live_bytes);
        if effect.new_peak {
            self.peak = Some(Peak {
                ts_ns,
                bytes: live_bytes,
                blocks: live_blocks,
            });
        }
    }

    pub fn observe_rss(&mut self, ts_ns: u64, rss_bytes: u64) {
        let (live_bytes, live_blocks) = (self.live_bytes, self.live_blocks);
        let bucket = self.bucket_mut(ts_ns);
        if !bucket.touched {
            bucket.touched = true;
            bucket.live_bytes = live_bytes;
            bucket.live_blocks = live_blocks;
            bucket.max_live_bytes = live_bytes;
        }
        bucket.rss_bytes = Some(rss_bytes);
    }

    /// The first thing observed, if anything was.
    pub fn origin_ns(&self) -> Option<u64> {
        self.origin_ns
    }

    /// The bucket holding `ts_ns`, coarsening until it fits. Times before the origin (events
    /// of another CPU stamped a little earlier) go to the first bucket.
    #[inline(always)]
    fn bucket_mut(&mut self, ts_ns: u64) -> &mut Bucket {
        let origin = *self.origin_ns.get_or_insert(ts_ns);
        let offset = ts_ns.saturating_sub(origin);
        if !self.current_span.contains(&offset) {
            self.locate(offset);
        }
        &mut self.buckets[self.current]
    }

    /// Makes the bucket holding `offset` (ns since the origin) the current one.
    #[cold]
    fn locate(&mut self, offset: u64) {
        let mut index = offset / self.width_ns;
        while index >= TIMELINE_BUCKETS as u64 {
            self.coarsen();
            index = offset / self.width_ns;
        }
        let start = index * self.width_ns;
        self.current = index as usize;
        self.current_span = start..start.saturating_add(self.width_ns);
    }

    /// Merges bucket pairs in place and doubles the width (the current bucket moves).
    fn coarsen(&mut self) {
        self.current_span = 0..0;
        for index in 0..TIMELINE_BUCKETS / 2 {
            self.buckets[index] = self.buckets[2 * index].merge(self.buckets[2 * index + 1]);
        }
        for bucket in &mut self.buckets[TIMELINE_BUCKETS / 2..] {
            *bucket = Bucket::default();
        }
        self.width_ns *= 2;
    }

    /// The points up to the last touched bucket; untouched buckets carry the live heap and
    /// RSS of the one before. `secs` turns a timestamp into seconds since the session start.
    pub fn points(&self, secs: impl Fn(u64) -> f64) -> TimelineData {
        let mut points = Vec::new();
        let bucket_secs = self.width_ns as f64 / 1e9;
        if let (Some(origin), Some(last)) = (
            self.origin_ns,
            self.buckets.iter().rposition(|bucket| bucket.touched),
        ) {
            let mut carried = Bucket::default();
            for (index, bucket) in self.buckets[..=last].iter().enumerate() {
                let current = if bucket.touched {
                    Bucket {
                        rss_bytes: bucket.rss_bytes.or(carried.rss_bytes),
                        ..*bucket
                    }
                } else {
                    Bucket {
                        touched: false,
                        allocations: 0,
                        bytes_allocated: 0,
                        frees: 0,
                        max_live_bytes: carried.live_bytes,
                        ..carried
                    }
                };
                let end_ns = origin + (index as u64 + 1) * self.width_ns;
                points.push(TimelinePoint {
                    time_secs: secs(end_ns),
                    live_bytes: current.live_bytes,
                    live_blocks: current.live_blocks,
                    max_live_bytes: current.max_live_bytes,
                    allocations: current.allocations,
                    bytes_allocated: current.bytes_allocated,
                    frees: current.frees,
                    allocations_per_sec: current.allocations as f64 / bucket_secs,
                    bytes_per_sec: current.bytes_allocated as f64 / bucket_secs,
                    rss_bytes: current.rss_bytes,
                });
                carried = current;
            }
        }
        TimelineData {
            bucket_secs,
            points,
            peak: self.peak,
        }
    }
}

fn sites_at_peak(sites: &SiteStats) -> Vec<SiteAtPeak> {
    let mut at_peak: Vec<SiteAtPeak> = sites
        .iter()
        .filter(|(_, counts)| counts.peak_live_blocks > 0)
        .map(|(id, counts)| SiteAtPeak {
            stack_id: id.0,
            live_bytes: counts.peak_live_bytes,
            live_blocks: counts.peak_live_blocks,
        })
        .collect();
    at_peak.sort_by(|a, b| {
        b.live_bytes
            .cmp(&a.live_bytes)
            .then(b.live_blocks.cmp(&a.live_blocks))
            .then(a.stack_id.cmp(&b.stack_id))
    });
    at_peak.truncate(TOP);
    at_peak
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TimelineReport {
    /// Width of each point's bucket (it doubles as the recording outgrows the buckets).
    pub bucket_secs: f64,
    pub points: Vec<TimelinePoint>,
    /// The malloc-family peak (null when nothing was ever live).
    pub peak: Option<PeakReport>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeakReport {
    pub time_secs: f64,
    pub live_bytes: u64,
    pub live_blocks: u64,
    /// What was live at the peak, by site, largest first.
    pub sites: Vec<SiteAtPeak>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteAtPeak {
    pub stack_id: u32,
    pub live_bytes: u64,
    pub live_blocks: u64,
}

impl TimelineReport {
    /// The stacks it refers to.
    pub fn stack_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.peak
            .iter()
            .flat_map(|peak| peak.sites.iter().map(|site| site.stack_id))
    }
}
