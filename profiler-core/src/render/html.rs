//! `report.html`: the whole report in one self-contained page that opens offline: no external
//! asset, style in the page, charts inlined.
//!
//! The two charts (`charts.rs`) have no script and no ids, so they are inlined as `<svg>`.
//! The flame graphs cannot be: inferno's script looks its elements up by id
//! (`document.getElementById("frames")`) and takes the page's first `<svg>` as its own, so four
//! of them in one document would collide and break zoom and search. Each is embedded instead as
//! `<object type="image/svg+xml" data="data:image/svg+xml;base64,...">`: a document of its own
//! in which inferno's script runs as in the standalone file (an `<img>` would not run it).

use super::charts::{sizes_svg, timeline_svg};
use super::flame::{FlameKind, write_flamegraph};
use super::markup::escape;
use super::numbers::{human_bytes, percent, short_bytes, thousands};
use crate::analysis::fragmentation::FragmentationSnapshot;
use crate::analysis::{AnalysesReport, LifetimeBucket};
use crate::leak_check::Reachability;
use crate::report::{Report, StackFrame};
use base64::Engine as _;
use std::fmt::Write as _;
use std::io::{self, Write};

/// Leak sites listed in full; the flame graph and report.json hold the rest.
pub const MAX_LEAK_ROWS: usize = 100;

/// Writes the report as one HTML page.
pub fn write_html(report: &Report, out: &mut impl Write) -> io::Result<()> {
    let mut page = Page::default();
    page.head(report);
    page.summary(report);
    page.processes(report);
    page.leaks(report);
    page.flamegraphs(report)?;
    match &report.analyses {
        Some(analyses) => {
            page.timeline(report, analyses);
            page.sizes(report, analyses);
            page.lifetimes(analyses);
            page.fragmentation(analyses);
            page.reallocs(report, analyses);
            page.per_operation(analyses);
        }
        None => page.html.push_str(
            "<section id=\"analyses\"><h2>Analyses</h2><p>This report has no analyses \
             section.</p></section>\n",
        ),
    }
    let _ = write!(
        page.html,
        "<footer>memprof {}</footer>\n</body>\n</html>\n",
        escape(&report.memprof_version)
    );
    out.write_all(page.html.as_bytes())
}

const STYLE: &str = "\
body{font-family:Verdana,sans-serif;font-size:14px;margin:0 auto;max-width:1240px;padding:0 20px;color:#222}\n\
h1{font-size:22px}h2{font-size:18px;border-bottom:1px solid #ccc;padding-bottom:4px;margin-top:32px}\n\
h3{font-size:15px}nav a{margin-right:12px}\n\
table{border-collapse:collapse;margin:8px 0}th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}\n\
td.n{text-align:right;font-variant-numeric:tabular-nums}th{background:#f4f4f4}\n\
ol.stack{margin:4px 0;padding-left:24px;font-family:monospace;font-size:12px}\n\
details summary{cursor:pointer;font-family:monospace;font-size:12px}\n\
.warn{color:#a00;font-weight:bold}svg{max-width:100%;height:auto}\n\
object.flame{width:100%;border:1px solid #ddd}footer{margin:32px 0;color:#777;font-size:12px}\n";

#[derive(Default)]
struct Page {
    html: String,
}

impl Page {
    fn head(&mut self, report: &Report) {
        let command = escape(&report.target.command.join(" "));
        let _ = write!(
            self.html,
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
             <title>memprof: {command}</title>\n<style>\n{STYLE}</style>\n</head>\n<body>\n\
             <h1>memprof report: <code>{command}</code></h1>\n<nav>\
             <a href=\"#summary\">Summary</a><a href=\"#leaks\">Leaks</a>\
             <a href=\"#flamegraphs\">Flame graphs</a><a href=\"#timeline\">Timeline</a>\
             <a href=\"#sizes\">Size classes</a><a href=\"#lifetimes\">Lifetimes</a>\
             <a href=\"#fragmentation\">Fragmentation</a><a href=\"#reallocs\">Reallocs</a>\
             <a href=\"#per-operation\">Per operation</a></nav>\n"
        );
    }

    fn summary(&mut self, report: &Report) {
        let s = &report.summary;
        let target = &report.target;
        let exit = match &target.exit {
            None => "still running (memprof detached)".to_owned(),
            Some(exit) => match (exit.code, exit.signal) {
                (Some(code), _) => format!("exit code {code}"),
                (None, Some(signal)) => format!("killed by signal {signal}"),
                (None, None) => "exited (exit status unknown)".to_owned(),
            },
        };
        let peak = match s.peak_time_secs {
            Some(time) => format!(
                "{} in {} blocks at {}",
                human_bytes(s.peak_live_bytes),
                thousands(s.peak_live_blocks),
                secs(time)
            ),
            None => "nothing was ever live".to_owned(),
        };
        let mut rows: Vec<(&str, &str, String)> = vec![
            ("command", "target", target.command.join(" ")),
            ("pid", "pid", target.pid.to_string()),
            ("mode", "mode", format!("{:?}", report.mode).to_lowercase()),
            ("exit", "exit", exit),
            ("duration", "duration", secs(target.duration_secs)),
            ("allocations", "allocations", thousands(s.allocations)),
            (
                "failed_allocations",
                "failed allocations",
                thousands(s.failed_allocations),
            ),
            ("frees", "frees", thousands(s.frees)),
            (
                "bytes_allocated",
                "bytes allocated",
                human_bytes(s.bytes_allocated),
            ),
            (
                "live_at_end",
                "live at the end",
                format!(
                    "{} in {} blocks",
                    human_bytes(s.live_bytes),
                    thousands(s.live_blocks)
                ),
            ),
            ("peak", "peak", peak),
            (
                "mmap",
                "mmap",
                format!(
                    "{} calls, {}; {} live in {} regions at the end, peak {}",
                    thousands(s.mmap.calls),
                    human_bytes(s.mmap.bytes),
                    human_bytes(s.mmap.live_bytes),
                    thousands(s.mmap.live_regions),
                    human_bytes(s.mmap.peak_bytes)
                ),
            ),
            ("lost_events", "lost events", thousands(s.lost_events)),
            ("unknown_frees", "unknown frees", thousands(s.unknown_frees)),
            ("double_frees", "double frees", thousands(s.double_frees)),
            (
                "unknown_reallocs",
                "unknown reallocs",
                thousands(s.unknown_reallocs),
            ),
            (
                "overwritten_blocks",
                "overwritten blocks",
                thousands(s.overwritten_blocks),
            ),
        ];
        if let Some(check) = &s.leak_check {
            let class = |class: Reachability| {
                let total = check.class(class);
                format!(
                    "{} {} in {} blocks",
                    class.words(),
                    human_bytes(total.bytes),
                    thousands(total.blocks)
                )
            };
            rows.insert(
                rows.iter()
                    .position(|(id, _, _)| *id == "peak")
                    .unwrap_or(rows.len()),
                (
                    "leak_check",
                    "leak check",
                    format!(
                        "{}; {}; {}; {}",
                        class(Reachability::DefinitelyLost),
                        class(Reachability::IndirectlyLost),
                        class(Reachability::PossiblyLost),
                        class(Reachability::StillReachable)
                    ),
                ),
            );
        }
        if let Some(held) = target.held {
            rows.insert(
                5,
                (
                    "held",
                    "held while memprof caught up",
                    format!(
                        "{} times, {} in all (nothing lost; times include the pauses)",
                        thousands(held.times),
                        secs(held.secs)
                    ),
                ),
            );
        }
        if let Some(executable) = &target.executable {
            rows.insert(1, ("executable", "executable", executable.clone()));
        }
        self.html
            .push_str("<section id=\"summary\">\n<h2>Summary</h2>\n<table>\n");
        for (key, label, value) in rows {
            let _ = writeln!(
                self.html,
                "<tr data-figure=\"{key}\"><th>{label}</th><td>{}</td></tr>",
                escape(&value)
            );
        }
        self.html.push_str("</table>\n");
        let lost = &report.lost;
        if lost.total > 0 || lost.stack_errors > 0 || lost.inflight_full > 0 {
            let by_kind: Vec<String> = lost
                .by_kind
                .iter()
                .map(|(kind, count)| format!("{kind}: {}", thousands(*count)))
                .collect();
            let _ = writeln!(
                self.html,
                "<p class=\"warn\" data-figure=\"lost\">LOST EVENTS: {} ({}); {} stacks unreadable; \
                 {} calls not remembered (in-flight table full)</p>",
                thousands(lost.total),
                escape(&by_kind.join(", ")),
                thousands(lost.stack_errors),
                thousands(lost.inflight_full)
            );
            if !lost.uncertain.is_empty() {
                self.html.push_str("<ul>\n");
                for line in &lost.uncertain {
                    let _ = writeln!(self.html, "<li>{}</li>", escape(line));
                }
                self.html.push_str("</ul>\n");
            }
        }
        self.html.push_str("</section>\n");
    }

    /// One row per process image of a followed tree, each linking to its own page, then the
    /// largest leak sites across them.
    fn processes(&mut self, report: &Report) {
        if report.processes.is_empty() {
            return;
        }
        let _ = writeln!(
            self.html,
            "<section id=\"processes\">\n<h2>Processes</h2>\n<p>{} process images (a pid from \
             its start or exec to its exit or next exec), each with its own report.</p>",
            report.processes.len()
        );
        self.html.push_str(
            "<table>\n<tr><th>pid</th><th>image</th><th>parent</th><th>allocations</th>\
             <th>peak bytes</th><th>leaked bytes</th><th>leaked blocks</th><th>end</th>\
             <th>command</th></tr>\n",
        );
        for process in &report.processes {
            let end = process.ending();
            let _ = writeln!(
                self.html,
                "<tr><td class=\"n\"><a href=\"{}/report.html\">{}</a></td><td class=\"n\">{}</td>\
                 <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
                 <td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td><td>{}</td></tr>",
                escape(&process.output),
                process.pid,
                process.image,
                process
                    .parent_pid
                    .map_or(String::new(), |pid| pid.to_string()),
                thousands(process.allocations),
                thousands(process.peak_live_bytes),
                thousands(process.leaked_bytes),
                thousands(process.leaked_blocks),
                end,
                escape(&process.command.join(" "))
            );
        }
        self.html.push_str("</table>\n");
        let leaks = crate::report::tree_leaks(&report.processes);
        if !leaks.is_empty() {
            self.html.push_str(
                "<h3>Largest leak sites across the processes (merged by function)</h3>\n<table>\n\
                 <tr><th>bytes</th><th>blocks</th><th>allocated in</th><th>images</th></tr>\n",
            );
            for leak in leaks.iter().take(MAX_LEAK_ROWS) {
                let _ = writeln!(
                    self.html,
                    "<tr><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td>\
                     <td>{}</td></tr>",
                    thousands(leak.bytes),
                    thousands(leak.blocks),
                    escape(&leak.frame),
                    escape(&leak.where_())
                );
            }
            self.html.push_str("</table>\n");
        }
        self.html.push_str("</section>\n");
    }

    fn leaks(&mut self, report: &Report) {
        self.html
            .push_str("<section id=\"leaks\">\n<h2>Leaks</h2>\n");
        if report.leaks.is_empty() {
            self.html
                .push_str("<p>Nothing allocated was still live at the end.</p>\n</section>\n");
            return;
        }
        let unlisted = report.unlisted_leaks.map_or(0, |rest| rest.sites);
        let all_sites = report.leaks.len() as u64 + unlisted;
        let checked = report.summary.leak_check.is_some();
        let order = match &report.summary.leak_check {
            Some(check) => format!(
                "; the program can no longer reach {} of them (definitely, indirectly or \
                 possibly lost, listed first), {} is still reachable",
                human_bytes(check.lost_bytes()),
                human_bytes(check.still_reachable.bytes)
            ),
            None => ", largest first".to_owned(),
        };
        let _ = writeln!(
            self.html,
            "<p>{} leak sites: {} in {} blocks still live at the end{order}.</p>",
            thousands(all_sites),
            human_bytes(report.summary.live_bytes),
            thousands(report.summary.live_blocks)
        );
        let _ = writeln!(
            self.html,
            "<table>\n<tr><th>bytes</th><th>blocks</th>{}<th>first seen</th><th>last seen</th>\
             <th>allocated in (click for the stack, innermost frame first)</th></tr>",
            if checked { "<th>class</th>" } else { "" }
        );
        for site in report.leaks.iter().take(MAX_LEAK_ROWS) {
            let class = match (checked, site.reachability) {
                (true, class) => format!("<td>{}</td>", class.map_or("", Reachability::words)),
                (false, _) => String::new(),
            };
            let _ = writeln!(
                self.html,
                "<tr class=\"leak\"><td class=\"n\">{}</td><td class=\"n\">{}</td>{class}\
                 <td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
                thousands(site.bytes),
                thousands(site.blocks),
                secs(site.first_seen_secs),
                secs(site.last_seen_secs),
                stack_html(&site.stack, site.truncated)
            );
        }
        self.html.push_str("</table>\n");
        if unlisted > 0 {
            let _ = writeln!(
                self.html,
                "<p>The first {MAX_LEAK_ROWS} sites are shown; report.json lists the first {} \
                 and sums up the other {} (the flame graphs and profile.pb.gz have them all).</p>",
                thousands(report.leaks.len() as u64),
                thousands(unlisted)
            );
        } else if report.leaks.len() > MAX_LEAK_ROWS {
            let _ = writeln!(
                self.html,
                "<p>The first {MAX_LEAK_ROWS} sites are shown; report.json has all {}.</p>",
                report.leaks.len()
            );
        }
        self.html.push_str("</section>\n");
    }

    fn flamegraphs(&mut self, report: &Report) -> io::Result<()> {
        self.html.push_str(
            "<section id=\"flamegraphs\">\n<h2>Flame graphs</h2>\n<p>Click a frame to zoom in, \
             Ctrl-F to search (each graph is also in its own .svg file).</p>\n",
        );
        for kind in FlameKind::ALL {
            let mut svg = Vec::new();
            write_flamegraph(report, kind, &mut svg)?;
            let encoded = base64::engine::general_purpose::STANDARD.encode(&svg);
            let _ = writeln!(
                self.html,
                "<h3>{}</h3>\n<object class=\"flame\" data-flame=\"{stem}\" type=\"image/svg+xml\" \
                 data=\"data:image/svg+xml;base64,{encoded}\">{stem}.svg</object>",
                escape(&kind.title(report)),
                stem = kind.file_stem(),
            );
        }
        self.html.push_str("</section>\n");
        Ok(())
    }

    fn timeline(&mut self, report: &Report, analyses: &AnalysesReport) {
        self.html
            .push_str("<section id=\"timeline\">\n<h2>Heap over time</h2>\n");
        self.html.push_str(&timeline_svg(report));
        let timeline = &analyses.timeline;
        if let Some(peak) = &timeline.peak {
            let _ = writeln!(
                self.html,
                "<h3>At the peak ({} in {} blocks at {})</h3>",
                human_bytes(peak.live_bytes),
                thousands(peak.live_blocks),
                secs(peak.time_secs)
            );
            self.html.push_str(
                "<table>\n<tr><th>live bytes</th><th>blocks</th><th>allocated at</th></tr>\n",
            );
            for site in &peak.sites {
                let _ = writeln!(
                    self.html,
                    "<tr><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
                    thousands(site.live_bytes),
                    thousands(site.live_blocks),
                    stack_html(analyses.stack(site.stack_id), false)
                );
            }
            self.html.push_str("</table>\n");
        }
        let leaks = &analyses.leaks;
        self.html.push_str("<h3>Growing sites</h3>\n");
        if leaks.growing.is_empty() {
            self.html
                .push_str("<p>No site's live bytes grew steadily over the session.</p>\n");
        } else {
            self.html.push_str(
                "<table>\n<tr><th>growth</th><th>r&#178;</th><th>live at the end</th>\
                 <th>allocations</th><th>allocated at</th></tr>\n",
            );
            for site in &leaks.growing {
                let _ = writeln!(
                    self.html,
                    "<tr><td class=\"n\">{}/s</td><td class=\"n\">{:.3}</td><td class=\"n\">{} in {} blocks</td>\
                     <td class=\"n\">{}</td><td>{}</td></tr>",
                    short_bytes(site.slope_bytes_per_sec.max(0.0) as u64),
                    site.r2,
                    short_bytes(site.live_bytes),
                    thousands(site.live_blocks),
                    thousands(site.allocations),
                    stack_html(analyses.stack(site.stack_id), false)
                );
            }
            self.html.push_str("</table>\n");
        }
        let _ = writeln!(
            self.html,
            "<p class=\"rule\">Rule: {}.</p>\n</section>",
            escape(&leaks.growth_rule)
        );
    }

    fn sizes(&mut self, report: &Report, analyses: &AnalysesReport) {
        let sizes = &analyses.size_classes;
        self.html
            .push_str("<section id=\"sizes\">\n<h2>Size classes</h2>\n");
        self.html.push_str(&sizes_svg(report));
        let allocator = format!("{:?}", sizes.allocator).to_lowercase();
        let _ = write!(
            self.html,
            "<p data-figure=\"internal_fragmentation\">Allocator: {allocator}. {} allocations requested {}",
            thousands(sizes.allocations),
            human_bytes(sizes.requested_bytes)
        );
        match (sizes.usable_bytes, sizes.internal_fragmentation) {
            (Some(usable), Some(ratio)) => {
                let _ = writeln!(
                    self.html,
                    "; they got {} usable: internal fragmentation {}.</p>",
                    human_bytes(usable),
                    percent(ratio)
                );
            }
            _ => self.html.push_str(
                "; the allocator is not one memprof models, so usable sizes are unknown.</p>\n",
            ),
        }
        if sizes.coarsened {
            self.html.push_str(
                "<p>More than 65,536 distinct sizes above 4 KiB: later ones were rounded up to \
                 4 KiB.</p>\n",
            );
        }
        self.html.push_str("</section>\n");
    }

    fn lifetimes(&mut self, analyses: &AnalysesReport) {
        let lifetimes = &analyses.lifetimes;
        self.html
            .push_str("<section id=\"lifetimes\">\n<h2>Lifetimes</h2>\n");
        self.html.push_str("<h3>Lifetimes of freed blocks</h3>\n");
        self.html.push_str(&lifetime_table(&lifetimes.histogram));
        self.html
            .push_str("<h3>Short-lived sites: pool or arena candidates</h3>\n");
        if lifetimes.pool_candidates.is_empty() {
            self.html.push_str("<p>None.</p>\n");
        } else {
            self.html.push_str(
                "<table>\n<tr><th>freed</th><th>short-lived</th><th>sizes</th>\
                 <th>allocated at</th></tr>\n",
            );
            for site in &lifetimes.pool_candidates {
                let sizes: Vec<String> = site
                    .sizes
                    .iter()
                    .map(|size| format!("{} x {}", thousands(size.count), short_bytes(size.size)))
                    .collect();
                let _ = writeln!(
                    self.html,
                    "<tr class=\"pool\"><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td><td>{}</td></tr>",
                    thousands(site.freed),
                    thousands(site.short_lived),
                    escape(&sizes.join(", ")),
                    stack_html(analyses.stack(site.stack_id), false)
                );
            }
            self.html.push_str("</table>\n");
        }
        self.html
            .push_str("<h3>Sites that freed the most blocks</h3>\n");
        if lifetimes.sites.is_empty() {
            self.html.push_str("<p>No block was freed.</p>\n");
        } else {
            self.html.push_str(
                "<table>\n<tr><th>freed</th><th>short-lived</th><th>allocated at</th></tr>\n",
            );
            for site in &lifetimes.sites {
                let _ = writeln!(
                    self.html,
                    "<tr><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
                    thousands(site.freed),
                    thousands(site.short_lived),
                    stack_html(analyses.stack(site.stack_id), false)
                );
            }
            self.html.push_str("</table>\n");
        }
        let _ = writeln!(
            self.html,
            "<p class=\"rule\">Rule: {}.</p>\n</section>",
            escape(&lifetimes.rule)
        );
    }

    fn fragmentation(&mut self, analyses: &AnalysesReport) {
        let fragmentation = &analyses.fragmentation;
        self.html
            .push_str("<section id=\"fragmentation\">\n<h2>Fragmentation</h2>\n");
        let snapshots = [
            ("at the peak", fragmentation.at_peak.as_ref()),
            ("at the end", Some(&fragmentation.at_end)),
        ];
        for (when, snapshot) in snapshots {
            let Some(snapshot) = snapshot else { continue };
            let _ = writeln!(self.html, "<h3>Heap {when}</h3>");
            self.html.push_str(&snapshot_html(snapshot));
        }
        if let Some(last) = fragmentation.overhead.last() {
            let ratio = last
                .rss_per_live_byte
                .map_or("n/a".to_owned(), |r| format!("{r:.2}"));
            let _ = writeln!(
                self.html,
                "<p data-figure=\"overhead\">Last RSS sample ({}): {} resident for {} live, \
                 {ratio} resident bytes per live byte.</p>",
                secs(last.time_secs),
                human_bytes(last.rss_bytes),
                human_bytes(last.live_bytes)
            );
        }
        self.html.push_str("</section>\n");
    }

    fn reallocs(&mut self, report: &Report, analyses: &AnalysesReport) {
        let reallocs = &analyses.reallocs;
        self.html
            .push_str("<section id=\"reallocs\">\n<h2>Reallocs and odd frees</h2>\n");
        let _ = writeln!(
            self.html,
            "<p data-figure=\"reallocs\">{} reallocs of live blocks; {} unknown frees, {} double \
             frees, {} reallocs of unknown pointers.</p>",
            thousands(reallocs.reallocs),
            thousands(reallocs.unknown_frees),
            thousands(reallocs.double_frees),
            thousands(reallocs.unknown_reallocs)
        );
        if !reallocs.longest_chains.is_empty() {
            self.html.push_str(
                "<h3>Longest realloc chains</h3>\n<table>\n<tr><th>reallocs</th><th>size</th>\
                 <th>live at the end</th><th>first allocated at</th><th>last reallocated at</th></tr>\n",
            );
            for chain in &reallocs.longest_chains {
                let stack = |id: Option<u32>| {
                    id.map_or_else(String::new, |id| stack_html(analyses.stack(id), false))
                };
                let _ = writeln!(
                    self.html,
                    "<tr class=\"chain\"><td class=\"n\">{}</td><td>{} &#8594; {}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    chain.reallocs,
                    short_bytes(chain.first_size),
                    short_bytes(chain.final_size),
                    if chain.live { "yes" } else { "no" },
                    stack(chain.stack_id),
                    stack(chain.last_realloc_stack_id)
                );
            }
            self.html.push_str("</table>\n");
        }
        if !reallocs.odd_frees.is_empty() {
            self.html.push_str(
                "<h3>Frees of pointers that were not live</h3>\n<table>\n<tr><th>call</th>\
                 <th>address</th><th>thread</th><th>time</th><th>kind</th><th>block allocated at</th></tr>\n",
            );
            for odd in &reallocs.odd_frees {
                let _ = writeln!(
                    self.html,
                    "<tr><td>{}</td><td><code>{}</code></td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
                     <td>{}</td><td>{}</td></tr>",
                    escape(&odd.function),
                    escape(&odd.address),
                    odd.tid,
                    secs(odd.time_secs),
                    if odd.double_free {
                        "double free"
                    } else {
                        "never seen allocated"
                    },
                    odd.alloc_stack_id
                        .map_or_else(String::new, |id| stack_html(analyses.stack(id), false))
                );
            }
            self.html.push_str("</table>\n");
        }
        if !report.double_frees.is_empty() {
            let _ = writeln!(
                self.html,
                "<p class=\"warn\">{} double frees (see report.json for each).</p>",
                thousands(report.double_frees.len() as u64)
            );
        }
        let _ = writeln!(
            self.html,
            "<p class=\"rule\">{}</p>\n</section>",
            escape(&reallocs.note)
        );
    }

    fn per_operation(&mut self, analyses: &AnalysesReport) {
        self.html
            .push_str("<section id=\"per-operation\">\n<h2>Per operation</h2>\n");
        match &analyses.per_operation {
            None => self.html.push_str(
                "<p>Give the number of operations the target performed (<code>--ops N</code>) to \
                 get allocations, bytes and frees per operation.</p>\n",
            ),
            Some(per) => {
                let _ = writeln!(
                    self.html,
                    "<table>\n<tr data-figure=\"ops\"><th>operations</th><td class=\"n\">{}</td></tr>\n\
                     <tr data-figure=\"allocations_per_op\"><th>allocations per operation</th><td class=\"n\">{:.3}</td></tr>\n\
                     <tr data-figure=\"bytes_per_op\"><th>bytes allocated per operation</th><td class=\"n\">{:.1}</td></tr>\n\
                     <tr data-figure=\"frees_per_op\"><th>frees per operation</th><td class=\"n\">{:.3}</td></tr>\n</table>",
                    thousands(per.ops),
                    per.allocations_per_op,
                    per.bytes_per_op,
                    per.frees_per_op
                );
            }
        }
        self.html.push_str("</section>\n");
    }
}

/// A stack as a collapsible list: the site frame (first outside the allocator) as the
/// summary, every frame inside.
fn stack_html(stack: &[StackFrame], truncated: bool) -> String {
    let Some(first) = crate::report::site_frame(stack) else {
        return "<span>[no stack]</span>".to_owned();
    };
    let mut html = format!(
        "<details><summary>{}</summary><ol class=\"stack\">",
        escape(&first.located_name())
    );
    for frame in stack {
        let inlined = if frame.inlined { " [inlined]" } else { "" };
        let _ = write!(
            html,
            "<li title=\"{} {}\">{}{inlined}</li>",
            escape(&frame.module),
            escape(&frame.address),
            escape(&frame.located_name())
        );
    }
    if truncated {
        html.push_str("<li>[truncated: deeper than --max-depth]</li>");
    }
    html.push_str("</ol></details>");
    html
}

fn lifetime_table(buckets: &[LifetimeBucket]) -> String {
    if buckets.is_empty() {
        return "<p>No block was freed.</p>\n".to_owned();
    }
    let mut html = "<table>\n<tr><th>lived</th><th class=\"n\">blocks</th></tr>\n".to_owned();
    for bucket in buckets {
        let range = match bucket.max_ns {
            Some(max) => format!("{} - {}", nanos(bucket.min_ns), nanos(max)),
            None => format!("{} or more", nanos(bucket.min_ns)),
        };
        let _ = writeln!(
            html,
            "<tr><td>{range}</td><td class=\"n\">{}</td></tr>",
            thousands(bucket.count)
        );
    }
    html.push_str("</table>\n");
    html
}

fn snapshot_html(snapshot: &FragmentationSnapshot) -> String {
    let ranges = match snapshot.ranges {
        1 => "1 address range".to_string(),
        n => format!("{} address ranges", thousands(n as u64)),
    };
    let mut html = format!(
        "<p>{} used and {} free in gaps, in {ranges}; {} blocks mmapped on their own.</p>\n",
        human_bytes(snapshot.used_bytes),
        human_bytes(snapshot.free_bytes),
        thousands(snapshot.mmapped_blocks)
    );
    if snapshot.largest_ranges.is_empty() {
        return html;
    }
    html.push_str(
        "<table>\n<tr><th>range</th><th>blocks</th><th>used</th><th>free</th>\
         <th>largest gap</th><th>fragmentation</th></tr>\n",
    );
    for range in &snapshot.largest_ranges {
        let _ = writeln!(
            html,
            "<tr><td><code>{}..{}</code></td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            escape(&range.start),
            escape(&range.end),
            thousands(range.blocks),
            short_bytes(range.used_bytes),
            short_bytes(range.free_bytes),
            short_bytes(range.largest_free_bytes),
            percent(range.fragmentation)
        );
    }
    html.push_str("</table>\n");
    html
}

fn secs(value: f64) -> String {
    format!("{value:.3} s")
}

/// `1500` -> `1.5 us`; exact below a microsecond.
fn nanos(ns: u64) -> String {
    match ns {
        0..1_000 => format!("{ns} ns"),
        1_000..1_000_000 => format!("{:.1} us", ns as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1} ms", ns as f64 / 1e6),
        _ => format!("{:.1} s", ns as f64 / 1e9),
    }
}
