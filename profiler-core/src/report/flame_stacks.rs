//! Every stack of a session as the flame graphs see it: symbolized frame names, root first,
//! with the stack's weight in each of the four graphs. The report lists the top sites in full
//! ([`super::LISTED_SITES`]); the flame graphs are drawn from all of them, so they are kept
//! here, compactly: each distinct name once, each stack as a list of name ids.

use super::{Report, StackFrame};
use std::collections::HashMap;
use std::fmt;

/// The root of a stack whose outermost frames the probe cut off.
pub const TRUNCATED_ROOT: &str = "[truncated]";
/// The whole stack of what was recorded without one.
pub const NO_STACK: &str = "[no stack]";
/// The stacks of sites that a report read back from report.json no longer lists
/// (`unlisted_leaks`, `unlisted_sites`).
pub const UNLISTED: &str = "[sites not listed]";

/// One stack's weight in each flame graph.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StackWeights {
    /// Bytes live at the end (`leaks`).
    pub leaked_bytes: u64,
    /// Of those, the bytes the leak check found lost (definitely, indirectly or possibly);
    /// 0 when no check ran.
    pub lost_bytes: u64,
    /// Bytes requested by successful allocations, their number, and bytes live at the
    /// global peak (`sites`).
    pub allocated_bytes: u64,
    pub allocations: u64,
    pub peak_bytes: u64,
}

impl StackWeights {
    pub(crate) fn add(&mut self, other: &StackWeights) {
        self.leaked_bytes += other.leaked_bytes;
        self.lost_bytes += other.lost_bytes;
        self.allocated_bytes += other.allocated_bytes;
        self.allocations += other.allocations;
        self.peak_bytes += other.peak_bytes;
    }
}

/// Distinct symbolized stacks and their weights (see the module doc).
#[derive(Clone, Default, PartialEq)]
pub struct FlameStacks {
    /// Frame names as in the folded files, indexed by the ids in `stacks`.
    names: Vec<String>,
    /// Root first, sorted by name ids (so a stack's descendants follow it), each once.
    stacks: Vec<(Box<[u32]>, StackWeights)>,
}

impl FlameStacks {
    /// The stacks, root first, as name ids (see [`FlameStacks::name`]), sorted by those ids:
    /// a stack comes before every stack it is a prefix of, and those follow it in one run.
    pub fn stacks(&self) -> impl ExactSizeIterator<Item = (&[u32], &StackWeights)> {
        self.stacks
            .iter()
            .map(|(path, weights)| (&path[..], weights))
    }

    /// The frame name of `id`.
    pub fn name(&self, id: u32) -> &str {
        &self.names[id as usize]
    }

    /// Rebuilds the stacks of a report that has none (one read back from report.json, or
    /// built in a test) from its listed sites; what `unlisted_leaks` and `unlisted_sites`
    /// sum up goes under [`UNLISTED`], the rest of the summary's totals under [`NO_STACK`].
    pub fn from_listed_sites(report: &Report) -> FlameStacks {
        let mut builder = FlameStacksBuilder::default();
        let mut path = Vec::new();
        for site in &report.leaks {
            builder.frames_path(&site.stack, site.truncated, &mut path);
            let lost = site
                .reachability
                .is_some_and(crate::leak_check::Reachability::is_lost);
            let weights = StackWeights {
                leaked_bytes: site.bytes,
                lost_bytes: if lost { site.bytes } else { 0 },
                ..StackWeights::default()
            };
            builder.add(&path, &weights);
        }
        let mut attributed = StackWeights::default();
        for site in &report.sites {
            builder.frames_path(&site.stack, site.truncated, &mut path);
            let weights = StackWeights {
                allocated_bytes: site.allocated_bytes,
                allocations: site.allocations,
                peak_bytes: site.peak_live_bytes,
                ..StackWeights::default()
            };
            attributed.add(&weights);
            builder.add(&path, &weights);
        }
        let mut unlisted = StackWeights::default();
        if let Some(rest) = &report.unlisted_leaks {
            unlisted.leaked_bytes = rest.bytes;
        }
        if let Some(rest) = &report.unlisted_sites {
            unlisted.allocated_bytes = rest.allocated_bytes;
            unlisted.allocations = rest.allocations;
            unlisted.peak_bytes = rest.peak_live_bytes;
        }
        attributed.add(&unlisted);
        let unlisted_id = builder.name(UNLISTED);
        builder.add(&[unlisted_id], &unlisted);
        builder.add_unattributed(report, &attributed);
        builder.finish()
    }
}

impl fmt::Debug for FlameStacks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlameStacks")
            .field("names", &self.names.len())
            .field("stacks", &self.stacks.len())
            .finish()
    }
}

/// Collects stacks (as name ids) and their weights; stacks with the same names are one.
#[derive(Default)]
pub(crate) struct FlameStacksBuilder {
    names: Vec<String>,
    name_ids: HashMap<String, u32>,
    /// As added: [`FlameStacksBuilder::finish`] sorts them and merges equal paths (a sort
    /// costs less memory than a map when most stacks are distinct).
    stacks: Vec<(Box<[u32]>, StackWeights)>,
}

impl FlameStacksBuilder {
    /// The id of `name`, a frame name as in the folded files.
    pub fn name(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.name_ids.get(name) {
            return id;
        }
        let id = u32::try_from(self.names.len()).expect("fewer than 4 billion frame names");
        self.names.push(name.to_owned());
        self.name_ids.insert(name.to_owned(), id);
        id
    }

    /// The id of `frame`'s name in a folded line: [`StackFrame::located_name`], without the
    /// `;` that separates frames and the newline that ends the line (Rust array types such as
    /// `[u8; 4]` contain a `;`).
    pub fn frame_name(&mut self, frame: &StackFrame) -> u32 {
        let name = frame.located_name().replace(';', ",").replace('\n', " ");
        self.name(&name)
    }

    /// Adds `weights` to the stack `path` (name ids, root first; not empty).
    pub fn add(&mut self, path: &[u32], weights: &StackWeights) {
        if *weights != StackWeights::default() {
            self.stacks.push((path.into(), *weights));
        }
    }

    /// The weights of the summary's totals that no stack accounts for (allocations recorded
    /// without a stack), under [`NO_STACK`]. Leaks need none: blocks without a stack are a
    /// leak site of their own.
    pub fn add_unattributed(&mut self, report: &Report, attributed: &StackWeights) {
        let s = &report.summary;
        let rest = StackWeights {
            leaked_bytes: 0,
            lost_bytes: 0,
            allocated_bytes: s.bytes_allocated.saturating_sub(attributed.allocated_bytes),
            allocations: (s.allocations - s.failed_allocations)
                .saturating_sub(attributed.allocations),
            peak_bytes: s.peak_live_bytes.saturating_sub(attributed.peak_bytes),
        };
        let no_stack = self.name(NO_STACK);
        self.add(&[no_stack], &rest);
    }

    /// Sets `path` to the folded path of a symbolized stack (innermost first): root first,
    /// under [`TRUNCATED_ROOT`] when cut, [`NO_STACK`] alone when empty.
    fn frames_path(&mut self, stack: &[StackFrame], truncated: bool, path: &mut Vec<u32>) {
        path.clear();
        if stack.is_empty() {
            path.push(self.name(NO_STACK));
            return;
        }
        if truncated {
            path.push(self.name(TRUNCATED_ROOT));
        }
        for frame in stack.iter().rev() {
            let id = self.frame_name(frame);
            path.push(id);
        }
    }

    pub fn finish(self) -> FlameStacks {
        let mut stacks = self.stacks;
        stacks.sort_unstable_by(|(a, _), (b, _)| a.cmp(b));
        // Sorted, equal paths are neighbours: `dedup_by` hands each one to the one it merges
        // into (the first of its run).
        stacks.dedup_by(|(path, weights), (kept, sum)| {
            let same = path == kept;
            if same {
                sum.add(weights);
            }
            same
        });
        stacks.shrink_to_fit();
        FlameStacks {
            names: self.names,
            stacks,
        }
    }
}
