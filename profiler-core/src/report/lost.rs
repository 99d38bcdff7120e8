//! Turns the kernel's loss counters into the report's `lost` section, naming which figures
//! each kind of loss makes uncertain and in which direction.

use super::{KindMap, Lost, LostCounts};
use profiler_common::EventKind;

pub(super) fn describe(counts: &LostCounts) -> Lost {
    let lost = |kind: EventKind| counts.by_kind[kind as usize];
    let by_kind = EventKind::ALL
        .iter()
        .filter(|&&kind| lost(kind) > 0)
        .map(|&kind| (kind.symbol().to_owned(), lost(kind)))
        .collect::<KindMap<u64>>();

    let mut uncertain = Vec::new();
    let frees = lost(EventKind::Free) + lost(EventKind::OperatorDelete);
    if frees > 0 {
        uncertain.push(format!(
            "{frees} lost free events: their blocks still look live, so live_blocks, \
             live_bytes, peak_live_bytes and leaks may be overstated (a later allocation at \
             such an address is counted in overwritten_blocks)"
        ));
    }
    let allocations: u64 = EventKind::ALL
        .iter()
        .filter(|kind| kind.is_malloc_family())
        .map(|&kind| lost(kind))
        .sum();
    if allocations > 0 {
        uncertain.push(format!(
            "{allocations} lost allocation events: allocations, bytes_allocated, \
             peak_live_bytes and by_function may be understated, and the frees of those \
             blocks are counted as unknown_frees (or unknown_reallocs)"
        ));
    }
    let reallocs = lost(EventKind::Realloc) + lost(EventKind::Reallocarray);
    if reallocs > 0 {
        uncertain.push(format!(
            "{reallocs} lost realloc events: the blocks they released still look live, so \
             live_bytes and leaks may be overstated"
        ));
    }
    let mappings = lost(EventKind::Mmap) + lost(EventKind::Munmap) + lost(EventKind::Mremap);
    if mappings > 0 {
        uncertain.push(format!(
            "{mappings} lost mmap/munmap/mremap events: mmap live_regions, live_bytes, \
             peak_bytes, unknown_munmaps and mappings may be off in either direction"
        ));
    }
    if counts.inflight_full > 0 {
        uncertain.push(format!(
            "{} calls not recorded because the in-flight call table was full: any \
             allocation or mmap figure may be understated",
            counts.inflight_full
        ));
    }
    Lost {
        total: counts.total(),
        by_kind,
        stack_errors: counts.stack_errors,
        inflight_full: counts.inflight_full,
        uncertain,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_lost_nothing_uncertain() {
        let lost = describe(&LostCounts::default());
        assert_eq!(lost.total, 0);
        assert!(lost.by_kind.is_empty());
        assert!(lost.uncertain.is_empty());
    }

    #[test]
    fn each_loss_names_its_figures() {
        let mut counts = LostCounts::default();
        counts.by_kind[EventKind::Free as usize] = 3;
        counts.by_kind[EventKind::Malloc as usize] = 2;
        counts.by_kind[EventKind::Realloc as usize] = 1;
        counts.by_kind[EventKind::Munmap as usize] = 4;
        counts.inflight_full = 5;
        counts.stack_errors = 9;
        let lost = describe(&counts);
        assert_eq!(lost.total, 3 + 2 + 1 + 4 + 5);
        assert_eq!(
            lost.by_kind.0,
            [
                ("malloc".to_owned(), 2),
                ("realloc".to_owned(), 1),
                ("free".to_owned(), 3),
                ("munmap".to_owned(), 4)
            ]
        );
        assert_eq!(lost.uncertain.len(), 5);
        assert!(lost.uncertain[0].starts_with("3 lost free events"));
        assert!(lost.uncertain[0].contains("overstated"));
        // realloc is malloc family: 2 + 1.
        assert!(lost.uncertain[1].starts_with("3 lost allocation events"));
        assert!(lost.uncertain[1].contains("unknown_frees"));
        assert!(lost.uncertain[2].starts_with("1 lost realloc events"));
        assert!(lost.uncertain[3].starts_with("4 lost mmap/munmap/mremap events"));
        assert!(lost.uncertain[4].starts_with("5 calls not recorded"));
        assert_eq!((lost.stack_errors, lost.inflight_full), (9, 5));
    }
}
