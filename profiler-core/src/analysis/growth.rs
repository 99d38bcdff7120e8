//! Sites whose live bytes grow steadily: the unbounded cache and the growing buffer.
//!
//! Each site's live bytes form a step function of time. Its least-squares line over the
//! window is computed exactly from three integrals (of y, t*y and y^2 dt), updated in O(1)
//! when the site changes, so nothing is sampled and memory is a few words per site.

use super::{Analysis, Observed, SessionEnd, TOP};
use crate::heap::{Block, Effect};
use crate::stacks::StackId;
use serde::{Deserialize, Serialize};

/// A site is reported as growing when its fit is at least this good...
pub const MIN_R2: f64 = 0.8;
/// ...and at least this fraction of its changes were increases.
pub const MIN_MONOTONICITY: f64 = 0.9;

#[derive(Clone, Copy, Debug, Default)]
struct SiteSeries {
    live_bytes: u64,
    /// Seconds since the origin of the last change.
    last_secs: f64,
    /// Integrals over [origin, last_secs] of y dt, t*y dt and y^2 dt.
    int_y: f64,
    int_ty: f64,
    int_yy: f64,
    rises: u64,
    falls: u64,
}

impl SiteSeries {
    /// Adds the constant segment [last_secs, t] at the current value.
    fn advance(&mut self, t: f64) {
        let t = t.max(self.last_secs);
        let y = self.live_bytes as f64;
        let (a, b) = (self.last_secs, t);
        self.int_y += y * (b - a);
        self.int_ty += y * (b * b - a * a) / 2.0;
        self.int_yy += y * y * (b - a);
        self.last_secs = t;
    }
}

/// The least-squares line of one site over the window.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Fit {
    pub stack: StackId,
    pub slope_bytes_per_sec: f64,
    /// Coefficient of determination of the line (1 = a perfect line).
    pub r2: f64,
    /// Fraction of the site's changes that increased its live bytes.
    pub monotonicity: f64,
}

#[derive(Debug, Default)]
pub struct Growth {
    origin_ns: Option<u64>,
    sites: Vec<SiteSeries>,
}

impl Analysis for Growth {
    type Report = LeaksReport;

    #[inline]
    fn observe(&mut self, seen: &Observed<'_>) {
        self.follow(seen.event.ts_ns, seen.effect);
    }

    fn report(&self, input: &SessionEnd<'_>) -> LeaksReport {
        let end_ns = input.end_ns;
        let secs = |ts_ns: u64| input.secs(ts_ns);
        let mut fits: Vec<_> = self
            .fits(end_ns)
            .into_iter()
            .filter(Fit::is_steady_growth)
            .collect();
        fits.sort_by(|a, b| {
            b.slope_bytes_per_sec
                .total_cmp(&a.slope_bytes_per_sec)
                .then(a.stack.cmp(&b.stack))
        });
        let growing = fits
            .iter()
            .take(TOP)
            .map(|fit| {
                let counts = input.sites.get(fit.stack);
                GrowingSite {
                    stack_id: fit.stack.0,
                    slope_bytes_per_sec: fit.slope_bytes_per_sec,
                    r2: fit.r2,
                    monotonicity: fit.monotonicity,
                    live_blocks: counts.live_blocks,
                    live_bytes: counts.live_bytes,
                    allocations: counts.allocations,
                    first_seen_secs: secs(counts.first_ts_ns),
                    last_seen_secs: secs(counts.last_ts_ns),
                }
            })
            .collect();
        let mut oldest: Vec<(u64, u64, u64, Option<StackId>)> = input
            .heap
            .blocks()
            .map(|(addr, block)| (block.ts_ns, addr, block.size, block.stack))
            .collect();
        oldest.sort_unstable_by_key(|&(ts, addr, _, _)| (ts, addr));
        let stats = input.heap.stats();
        LeaksReport {
            live_at_end: LiveAtEnd {
                blocks: stats.live_blocks,
                bytes: stats.live_bytes,
                sites: input
                    .sites
                    .iter()
                    .filter(|(_, counts)| counts.live_blocks > 0)
                    .count() as u64,
            },
            growing,
            growth_rule: format!(
                "least-squares line of the site's live bytes over the window: slope > 0, r2 >= {}, \
                 and at least {}% of its changes were increases; ranked by slope",
                MIN_R2,
                MIN_MONOTONICITY * 100.0
            ),
            oldest: oldest
                .into_iter()
                .take(TOP)
                .map(|(ts, addr, size, stack)| OldBlock {
                    address: format!("{addr:#x}"),
                    size,
                    allocated_secs: secs(ts),
                    age_secs: end_ns.saturating_sub(ts) as f64 / 1e9,
                    stack_id: stack.map(|id| id.0),
                })
                .collect(),
        }
    }
}

impl Growth {
    /// Up to three blocks change (overwritten, released, created); blocks of one site add up
    /// to one change (a realloc at one site is one change by the difference). Only stacks and
    /// sizes are taken from the effect: copying its blocks around costs more than the fit.
    fn follow(&mut self, ts_ns: u64, effect: &Effect) {
        let origin = *self.origin_ns.get_or_insert(ts_ns);
        let secs = || ts_ns.saturating_sub(origin) as f64 / 1e9;
        match (&effect.overwritten, &effect.released, &effect.created) {
            // A malloc or a free, nearly every event: one block, nothing to merge.
            (None, None, Some((_, block))) | (None, Some((_, block)), None) => {
                if let Some(stack) = block.stack {
                    let size = i128::from(block.size);
                    let delta = if effect.created.is_some() {
                        size
                    } else {
                        -size
                    };
                    self.change(stack, secs(), delta);
                }
            }
            _ => self.observe_merged(secs, effect),
        }
    }

    /// [`Growth::observe`] for events that change several blocks.
    fn observe_merged(&mut self, secs: impl Fn() -> f64, effect: &Effect) {
        let mut changes = [
            site_delta(&effect.overwritten, false),
            site_delta(&effect.released, false),
            site_delta(&effect.created, true),
        ];
        let mut t = None;
        for index in 0..changes.len() {
            let Some((stack, mut delta)) = changes[index] else {
                continue;
            };
            // Later blocks of the same site join this change.
            for later in &mut changes[index + 1..] {
                if let Some((other, other_delta)) = *later
                    && other == stack
                {
                    delta += other_delta;
                    *later = None;
                }
            }
            let t = *t.get_or_insert_with(&secs);
            self.change(stack, t, delta);
        }
    }

    /// Site `id`'s live bytes change by `delta` at `t` seconds.
    fn change(&mut self, id: StackId, t: f64, delta: i128) {
        let index = id.0 as usize;
        if index >= self.sites.len() {
            self.sites.resize(index + 1, SiteSeries::default());
        }
        let site = &mut self.sites[index];
        site.advance(t);
        site.live_bytes = (i128::from(site.live_bytes) + delta).max(0) as u64;
        match delta.signum() {
            1 => site.rises += 1,
            -1 => site.falls += 1,
            _ => {}
        }
    }

    /// When the first change was seen: the start of every line's window.
    pub fn origin_ns(&self) -> Option<u64> {
        self.origin_ns
    }

    /// Every site's line over [origin, end_ns], for sites that changed at least twice.
    pub fn fits(&self, end_ns: u64) -> Vec<Fit> {
        let Some(origin) = self.origin_ns else {
            return Vec::new();
        };
        let window = end_ns.saturating_sub(origin) as f64 / 1e9;
        if window <= 0.0 {
            return Vec::new();
        }
        self.sites
            .iter()
            .enumerate()
            .filter(|(_, site)| site.rises + site.falls >= 2)
            .map(|(index, site)| {
                let mut closed = *site;
                closed.advance(window);
                let w = window;
                let mean_y = closed.int_y / w;
                let var_t = w * w / 12.0;
                let cov = closed.int_ty / w - (w / 2.0) * mean_y;
                let var_y = (closed.int_yy / w - mean_y * mean_y).max(0.0);
                let slope = cov / var_t;
                let r2 = if var_y > 0.0 {
                    (cov * cov / (var_t * var_y)).min(1.0)
                } else {
                    0.0
                };
                Fit {
                    stack: StackId(index as u32),
                    slope_bytes_per_sec: slope,
                    r2,
                    monotonicity: closed.rises as f64 / (closed.rises + closed.falls) as f64,
                }
            })
            .collect()
    }
}

/// The site of a changed block and its signed size; None without a block or a stack.
#[inline]
fn site_delta(slot: &Option<(u64, Block)>, created: bool) -> Option<(StackId, i128)> {
    let (_, block) = slot.as_ref()?;
    let size = i128::from(block.size);
    Some((block.stack?, if created { size } else { -size }))
}

impl Fit {
    /// The rule for "grows steadily".
    pub fn is_steady_growth(&self) -> bool {
        self.slope_bytes_per_sec > 0.0 && self.r2 >= MIN_R2 && self.monotonicity >= MIN_MONOTONICITY
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LeaksReport {
    /// What is live at the end; the sites themselves are the report's top-level `leaks`.
    pub live_at_end: LiveAtEnd,
    /// Sites whose live bytes grew steadily over the window (the unbounded-cache and
    /// growing-buffer patterns), fastest first.
    pub growing: Vec<GrowingSite>,
    pub growth_rule: String,
    /// The oldest live blocks.
    pub oldest: Vec<OldBlock>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveAtEnd {
    pub blocks: u64,
    pub bytes: u64,
    pub sites: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GrowingSite {
    pub stack_id: u32,
    pub slope_bytes_per_sec: f64,
    pub r2: f64,
    pub monotonicity: f64,
    pub live_blocks: u64,
    pub live_bytes: u64,
    pub allocations: u64,
    /// First and last allocation at this site.
    pub first_seen_secs: f64,
    pub last_seen_secs: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OldBlock {
    pub address: String,
    pub size: u64,
    pub allocated_secs: f64,
    /// Time from allocation to the end of the session.
    pub age_secs: f64,
    pub stack_id: Option<u32>,
}

impl LeaksReport {
    /// The stacks it refers to.
    pub fn stack_ids(&self) -> impl Iterator<Item = u32> + '_ {
        let growing = self.growing.iter().map(|site| site.stack_id);
        growing.chain(self.oldest.iter().filter_map(|block| block.stack_id))
    }
}
