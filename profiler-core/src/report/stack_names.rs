//! What the report needs to know of every stack without symbolizing it into frames: the name
//! it is sorted by and its path in the flame graphs. Each distinct return address is
//! symbolized once and reduced to a few name ids, so a session with hundreds of thousands of
//! distinct stacks costs a few ids per frame here, not a `StackFrame` with its strings.

use super::StackFrame;
use super::flame_stacks::{FlameStacksBuilder, NO_STACK, TRUNCATED_ROOT};
use crate::fasthash::FastHashMap;
use crate::stacks::{StackId, StackTable};
use crate::symbolize::Symbolizer;
use std::collections::HashMap;

/// One return address, symbolized (its inlined frames included, innermost first).
struct AddressNames {
    /// Folded frame names, innermost first.
    folded: Box<[u32]>,
    /// [`StackFrame::display_name`] of the first frame outside the allocation plumbing.
    site: Option<u32>,
    /// [`StackFrame::display_name`] of the innermost frame.
    innermost: u32,
}

/// Names of stacks, over a [`Symbolizer`] (see the module doc).
pub(crate) struct StackNames<'s> {
    symbolizer: &'s mut Symbolizer,
    addresses: FastHashMap<u64, AddressNames>,
    /// The frames of each stack symbolized in full so far (listed sites, the analyses' stacks).
    stacks: FastHashMap<StackId, Vec<StackFrame>>,
    /// Display names, by id (the sort key of sites).
    display: Vec<String>,
    display_ids: HashMap<String, u32>,
    /// Folded frame names and the stacks of the flame graphs.
    pub flames: FlameStacksBuilder,
}

impl<'s> StackNames<'s> {
    pub fn new(symbolizer: &'s mut Symbolizer) -> Self {
        let mut names = StackNames {
            symbolizer,
            addresses: FastHashMap::default(),
            stacks: FastHashMap::default(),
            display: Vec::new(),
            display_ids: HashMap::new(),
            flames: FlameStacksBuilder::default(),
        };
        // Id 0: the name of a site without frames.
        names.display_id(String::new());
        names
    }

    /// The frames of `stack` (return addresses, innermost first), symbolized.
    pub fn frames(&mut self, stack: &[u64]) -> Vec<StackFrame> {
        stack
            .iter()
            .flat_map(|&address| self.symbolizer.frames(address).to_vec())
            .map(StackFrame::from)
            .collect()
    }

    /// The symbolizer the names come from.
    pub fn symbolizer(&self) -> &Symbolizer {
        self.symbolizer
    }

    /// The frames of stack `id` of `stacks`, symbolized once for the whole report.
    pub fn stack_frames(&mut self, stacks: &StackTable, id: StackId) -> Vec<StackFrame> {
        if let Some(frames) = self.stacks.get(&id) {
            return frames.clone();
        }
        let frames = self.frames(stacks.get(id));
        self.stacks.insert(id, frames.clone());
        frames
    }

    /// The id of the name a site is known by ([`super::site_frame`]'s display name; id 0,
    /// the empty name, for an empty stack): see [`StackNames::display_name`].
    pub fn site_name(&mut self, stack: &[u64]) -> u32 {
        let Some(&innermost) = stack.first() else {
            return 0;
        };
        for &address in stack {
            if let Some(site) = self.address(address).site {
                return site;
            }
        }
        self.address(innermost).innermost
    }

    /// The name of a [`StackNames::site_name`] id.
    pub fn display_name(&self, id: u32) -> &str {
        &self.display[id as usize]
    }

    /// Sets `path` to the flame graphs' path of `stack`: folded names root first, under
    /// [`TRUNCATED_ROOT`] when cut, [`NO_STACK`] alone when empty (or absent).
    pub fn folded_path(&mut self, stack: &[u64], truncated: bool, path: &mut Vec<u32>) {
        path.clear();
        if stack.is_empty() {
            path.push(self.flames.name(NO_STACK));
            return;
        }
        if truncated {
            path.push(self.flames.name(TRUNCATED_ROOT));
        }
        for &address in stack.iter().rev() {
            path.extend(self.address(address).folded.iter().rev());
        }
    }

    fn address(&mut self, address: u64) -> &AddressNames {
        if !self.addresses.contains_key(&address) {
            let frames: Vec<StackFrame> = self
                .symbolizer
                .frames(address)
                .iter()
                .cloned()
                .map(StackFrame::from)
                .collect();
            let folded = frames
                .iter()
                .map(|frame| self.flames.frame_name(frame))
                .collect();
            let site = frames
                .iter()
                .find(|frame| !frame.is_allocation_plumbing())
                .map(|frame| self.display_id(frame.display_name()));
            let innermost = frames
                .first()
                .map_or(0, |frame| self.display_id(frame.display_name()));
            let names = AddressNames {
                folded,
                site,
                innermost,
            };
            self.addresses.insert(address, names);
        }
        &self.addresses[&address]
    }

    fn display_id(&mut self, name: String) -> u32 {
        if let Some(&id) = self.display_ids.get(&name) {
            return id;
        }
        let id = u32::try_from(self.display.len()).expect("fewer than 4 billion names");
        self.display.push(name.clone());
        self.display_ids.insert(name, id);
        id
    }
}
