//! The terminal summary printed when a session ends.

use super::numbers::{human_bytes, short_bytes, thousands};
use crate::heap::Mode;
use crate::leak_check::Reachability;
use crate::report::{Report, Site, StackFrame, UnlistedSites};
use std::io::{self, Write};

/// Frames printed per site; the JSON and the flame graph have the whole stack.
const FRAMES_SHOWN: usize = 6;

/// Writes the summary, the top `top` leak and mapping sites, and any double frees.
pub fn write_text(report: &Report, out: &mut impl Write, top: usize) -> io::Result<()> {
    // The report's names may come from a recording: untrusted text for a terminal.
    let mut printable = super::Printable::new(out);
    let out = &mut printable;
    write_header(report, out)?;
    write_lost(report, out)?;
    write_heap(report, out)?;
    write_calls(report, out)?;
    write_leak_check(report, out)?;
    let leaks = (&report.leaks[..], report.unlisted_leaks);
    write_sites(out, &leak_title(report), leaks, top, "blocks")?;
    write_mmap(report, out, top)?;
    write_double_frees(report, out, top)?;
    super::text_analyses::write_analyses(report, out)?;
    write_processes(report, out, top)?;
    printable.finish().map(drop)
}

/// One line per process image of a followed tree, then the largest leak sites across them.
fn write_processes(report: &Report, out: &mut impl Write, top: usize) -> io::Result<()> {
    if report.processes.is_empty() {
        return Ok(());
    }
    writeln!(
        out,
        "\nProcesses: {} images (a pid from its start or exec to its exit or next exec)",
        report.processes.len()
    )?;
    writeln!(
        out,
        "  {:>7} {:>3} {:>10} {:>10} {:>10} {:>7}  {:<13} {:<20} command",
        "pid", "#", "allocs", "peak", "leaked", "blocks", "end", "report"
    )?;
    for process in &report.processes {
        let end = process.ending();
        writeln!(
            out,
            "  {:>7} {:>3} {:>10} {:>10} {:>10} {:>7}  {:<13} {:<20} {}",
            process.pid,
            process.image,
            thousands(process.allocations),
            short_bytes(process.peak_live_bytes),
            short_bytes(process.leaked_bytes),
            thousands(process.leaked_blocks),
            end,
            process.output,
            process.command.join(" "),
        )?;
    }
    let leaks = crate::report::tree_leaks(&report.processes);
    if leaks.is_empty() {
        return Ok(());
    }
    writeln!(
        out,
        "Top leak sites across the processes (merged by function):"
    )?;
    for leak in leaks.iter().take(top) {
        writeln!(
            out,
            "  {:>10} in {:>6} blocks  {}  {}",
            short_bytes(leak.bytes),
            thousands(leak.blocks),
            leak.frame,
            leak.where_()
        )?;
    }
    Ok(())
}

fn write_header(report: &Report, out: &mut impl Write) -> io::Result<()> {
    let target = &report.target;
    let mode = match report.mode {
        Mode::Run => "run",
        Mode::Attach => "attach",
    };
    writeln!(
        out,
        "memprof {} ({mode}) pid {}: {}",
        report.memprof_version,
        target.pid,
        target.command.join(" ")
    )?;
    // argv[0] is whatever the process was given (a symlink, `exec -a`): name the file too.
    if let Some(executable) = &target.executable {
        writeln!(out, "executable: {executable}")?;
    }
    if let Some(capture) = &target.capture {
        writeln!(out, "captured by {}: {}", capture.path, capture.reason)?;
    }
    let ending = match target.exit {
        Some(exit) => match (exit.code, exit.signal) {
            (Some(code), _) => format!("exited with code {code}"),
            (None, Some(signal)) => format!("killed by signal {signal}"),
            (None, None) => "exited (exit status unknown)".to_owned(),
        },
        None => "still running".to_owned(),
    };
    writeln!(
        out,
        "target {ending}, recorded {:.3} s",
        target.duration_secs
    )?;
    if let Some(held) = target.held {
        writeln!(
            out,
            "its threads were held {} times ({:.3} s in all) while memprof caught up: no event \
             was lost, but times and rates include those pauses",
            thousands(held.times),
            held.secs
        )?;
    }
    writeln!(out)
}

fn write_lost(report: &Report, out: &mut impl Write) -> io::Result<()> {
    let lost = &report.lost;
    if lost.total > 0 {
        writeln!(
            out,
            "!!! LOST EVENTS: {} events never reached memprof; some figures below are uncertain !!!",
            thousands(lost.total)
        )?;
        let by_kind: Vec<String> = lost
            .by_kind
            .iter()
            .map(|(name, n)| format!("{name} {}", thousands(*n)))
            .collect();
        if !by_kind.is_empty() {
            writeln!(out, "  ring buffer full: {}", by_kind.join(", "))?;
        }
        if lost.inflight_full > 0 {
            writeln!(
                out,
                "  in-flight table full: {}",
                thousands(lost.inflight_full)
            )?;
        }
        for line in &lost.uncertain {
            writeln!(out, "  - {line}")?;
        }
        writeln!(out)?;
    }
    if lost.stack_errors > 0 {
        // A stack the unwinder could not take to its root still has the frames up to there
        // (a static musl program's start code has no unwind information, for one).
        writeln!(
            out,
            "note: {} stacks could not be followed to their root: they end where unwinding \
             stopped (marked truncated; [no stack] when not one frame could be read)",
            thousands(lost.stack_errors)
        )?;
        writeln!(out)?;
    }
    Ok(())
}

fn write_heap(report: &Report, out: &mut impl Write) -> io::Result<()> {
    let s = &report.summary;
    let end = match (report.mode, report.target.exit.is_some()) {
        (Mode::Attach, false) => "at detach",
        _ => "at exit",
    };
    writeln!(out, "Heap (malloc family)")?;
    writeln!(
        out,
        "  allocations        {} ({} failed)",
        thousands(s.allocations),
        thousands(s.failed_allocations)
    )?;
    writeln!(out, "  frees              {}", thousands(s.frees))?;
    writeln!(
        out,
        "  bytes allocated    {}",
        human_bytes(s.bytes_allocated)
    )?;
    writeln!(
        out,
        "  live {end:<13} {} in {} blocks",
        human_bytes(s.live_bytes),
        thousands(s.live_blocks)
    )?;
    let peak_time = s
        .peak_time_secs
        .map(|t| format!(" at {t:.3} s"))
        .unwrap_or_default();
    writeln!(
        out,
        "  peak live          {} in {} blocks{peak_time}",
        human_bytes(s.peak_live_bytes),
        thousands(s.peak_live_blocks)
    )?;
    writeln!(
        out,
        "  unknown frees {}, double frees {}, unknown reallocs {}, overwritten blocks {}",
        thousands(s.unknown_frees),
        thousands(s.double_frees),
        thousands(s.unknown_reallocs),
        thousands(s.overwritten_blocks)
    )?;
    if let Some(inherited) = s.inherited_at_fork {
        writeln!(
            out,
            "  inherited at fork {} ({} blocks): live in the parent when it forked this process",
            human_bytes(inherited.bytes),
            thousands(inherited.blocks)
        )?;
    }
    if let Some(released) = s.released_by_exec {
        writeln!(
            out,
            "  released by exec {} ({} blocks): live when the target exec'd another program",
            human_bytes(released.bytes),
            thousands(released.blocks)
        )?;
    }
    if s.allocator_internal_frees > 0 {
        writeln!(
            out,
            "  allocator's own frees {} (caches flushed at thread exit; not the program's)",
            thousands(s.allocator_internal_frees)
        )?;
    }
    writeln!(out)
}

fn write_calls(report: &Report, out: &mut impl Write) -> io::Result<()> {
    let by_function = &report.summary.by_function;
    if by_function.is_empty() {
        return Ok(());
    }
    writeln!(out, "Calls")?;
    for (name, count) in by_function.iter() {
        writeln!(
            out,
            "  {name:<15} {:>14} calls  {}",
            thousands(count.calls),
            human_bytes(count.bytes)
        )?;
    }
    writeln!(out)
}

/// The leak check's classes, the lost ones first.
fn write_leak_check(report: &Report, out: &mut impl Write) -> io::Result<()> {
    let Some(check) = &report.summary.leak_check else {
        return Ok(());
    };
    let class = |class: Reachability| {
        let total = check.class(class);
        format!(
            "{} {} ({}) {}",
            thousands(total.blocks),
            if total.blocks == 1 { "block" } else { "blocks" },
            human_bytes(total.bytes),
            class.words()
        )
    };
    writeln!(
        out,
        "Leak check: {}, {}, {}; {}",
        class(Reachability::DefinitelyLost),
        class(Reachability::IndirectlyLost),
        class(Reachability::PossiblyLost),
        class(Reachability::StillReachable),
    )?;
    let mut scan = format!(
        "{} of memory scanned in {:.3} s",
        human_bytes(check.scan.bytes_scanned),
        check.scan.secs
    );
    if check.scan.bytes_unreadable > 0 {
        // Read as zeros: a block only they point to would be called lost.
        scan.push_str(&format!(
            ", {} unreadable, taken as zeros",
            human_bytes(check.scan.bytes_unreadable)
        ));
    }
    if check.scan.paused_secs > 0.0 {
        scan.push_str(&format!(
            ", the process paused {:.3} s",
            check.scan.paused_secs
        ));
    }
    writeln!(out, "  ({scan})")
}

fn leak_title(report: &Report) -> String {
    match (report.mode, report.target.exit.is_some()) {
        (Mode::Run, true) => "Leaks (live at exit)".to_owned(),
        (Mode::Run, false) => "Leaks (live when recording stopped)".to_owned(),
        (Mode::Attach, false) => "Leaks (allocated while attached, live at detach)".to_owned(),
        (Mode::Attach, true) => "Leaks (allocated while attached, live at exit)".to_owned(),
    }
}

/// The listed sites and the sum of the others.
type Sites<'a> = (&'a [Site], Option<UnlistedSites>);

fn write_sites(
    out: &mut impl Write,
    title: &str,
    (sites, unlisted): Sites<'_>,
    top: usize,
    unit: &str,
) -> io::Result<()> {
    let unlisted = unlisted.unwrap_or_default();
    let bytes: u64 = sites.iter().map(|site| site.bytes).sum::<u64>() + unlisted.bytes;
    let count: u64 = sites.iter().map(|site| site.blocks).sum::<u64>() + unlisted.blocks;
    let all_sites = sites.len() as u64 + unlisted.sites;
    writeln!(
        out,
        "{title}: {} in {} {unit} from {} sites",
        human_bytes(bytes),
        thousands(count),
        thousands(all_sites)
    )?;
    // With a leak check, `top` counts lost sites (listed first); reachable ones follow only
    // when fewer are lost.
    let lost = sites
        .iter()
        .filter(|site| site.reachability.is_some_and(Reachability::is_lost))
        .count();
    let top = if lost > 0 { top.min(lost) } else { top };
    for (rank, site) in sites.iter().take(top).enumerate() {
        writeln!(
            out,
            "  #{} {} in {} {unit}{}, allocated {:.3}..{:.3} s{}",
            rank + 1,
            human_bytes(site.bytes),
            thousands(site.blocks),
            site.reachability
                .map_or(String::new(), |class| format!(", {}", class.words())),
            site.first_seen_secs,
            site.last_seen_secs,
            if site.truncated {
                " (stack truncated)"
            } else {
                ""
            }
        )?;
        write_stack(out, &site.stack)?;
    }
    let shown = sites.len().min(top) as u64;
    if all_sites > shown {
        writeln!(out, "  ... {} more sites", thousands(all_sites - shown))?;
    }
    writeln!(out)
}

fn write_stack(out: &mut impl Write, stack: &[StackFrame]) -> io::Result<()> {
    if stack.is_empty() {
        return writeln!(out, "      [no stack]");
    }
    // The allocator's own frames say nothing about who allocated: start at the site frame.
    let plumbing = stack
        .iter()
        .take_while(|frame| frame.is_allocation_plumbing())
        .count()
        .min(stack.len() - 1);
    if plumbing > 0 {
        writeln!(out, "      ({plumbing} allocator frames above)")?;
    }
    let shown = &stack[plumbing..];
    for frame in shown.iter().take(FRAMES_SHOWN) {
        writeln!(out, "      {}", frame_line(frame))?;
    }
    if shown.len() > FRAMES_SHOWN {
        writeln!(out, "      ... {} more frames", shown.len() - FRAMES_SHOWN)?;
    }
    Ok(())
}

/// `function (file:line) in module`, leaving out what is unknown.
fn frame_line(frame: &StackFrame) -> String {
    let mut line = frame.display_name();
    if let Some(file) = &frame.file {
        match frame.line {
            Some(number) => line.push_str(&format!(" ({file}:{number})")),
            None => line.push_str(&format!(" ({file})")),
        }
    }
    if frame.function.is_some() || frame.module != "[unknown]" {
        line.push_str(" in ");
        line.push_str(&frame.module);
    }
    line
}

fn write_mmap(report: &Report, out: &mut impl Write, top: usize) -> io::Result<()> {
    let m = &report.summary.mmap;
    if m.calls == 0 && m.munmap_calls == 0 && report.mappings.is_empty() {
        return Ok(());
    }
    writeln!(
        out,
        "mmap: {} calls ({} failed) mapping {}; munmap: {} calls ({} of untracked memory)",
        thousands(m.calls),
        thousands(m.failed_calls),
        human_bytes(m.bytes),
        thousands(m.munmap_calls),
        thousands(m.unknown_munmaps)
    )?;
    writeln!(
        out,
        "  live {} in {} regions, peak {}",
        human_bytes(m.live_bytes),
        thousands(m.live_regions),
        human_bytes(m.peak_bytes)
    )?;
    if m.allocator_internal_mmaps + m.allocator_internal_munmaps > 0 {
        writeln!(
            out,
            "  the allocator's own, not tracked: {} mmaps inside free, {} munmaps",
            thousands(m.allocator_internal_mmaps),
            thousands(m.allocator_internal_munmaps)
        )?;
    }
    if report.mappings.is_empty() {
        return writeln!(out);
    }
    let mappings = (&report.mappings[..], report.unlisted_mappings);
    write_sites(out, "Live mappings", mappings, top, "regions")
}

fn write_double_frees(report: &Report, out: &mut impl Write, top: usize) -> io::Result<()> {
    let count = report.summary.double_frees;
    if count == 0 {
        return Ok(());
    }
    writeln!(out, "Double frees: {}", thousands(count))?;
    for double in report.double_frees.iter().take(top) {
        let caller = match double.freed_from.first() {
            Some(frame) => format!(" from {}", frame_line(frame)),
            None => String::new(),
        };
        writeln!(
            out,
            "  {} ({}) freed again at {:.3} s by thread {}{caller}; allocated at:",
            double.address,
            human_bytes(double.size),
            double.time_secs,
            double.tid
        )?;
        write_stack(out, &double.alloc_stack)?;
    }
    Ok(())
}
