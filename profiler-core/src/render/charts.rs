//! Hand-written SVG charts of the analyses: the heap over time (`timeline.svg`) and the
//! size-class histogram (`sizes.svg`). No script and no `id` attributes, so they can be inlined
//! into report.html as they are; every coordinate is printed with one decimal, so the same
//! report gives the same bytes.

use super::markup::escape;
use super::numbers::{short_bytes, thousands};
use crate::analysis::AnalysesReport;
use crate::report::Report;
use std::fmt::Write as _;
use std::io::{self, Write};

const WIDTH: f64 = 1000.0;
const LEFT: f64 = 90.0;
const RIGHT: f64 = 30.0;
const FONT: &str = "font-family=\"Verdana, sans-serif\"";
const LIVE_COLOUR: &str = "#3b78c2";
const RSS_COLOUR: &str = "#d9822b";
const WASTE_COLOUR: &str = "#c0392b";
/// Bars drawn in the size-class chart at most; the most requested classes are kept.
pub const MAX_BARS: usize = 40;

/// Writes `timeline.svg`: live heap bytes over time, RSS when it was sampled, the peak marked.
pub fn write_timeline_svg(report: &Report, out: &mut impl Write) -> io::Result<()> {
    out.write_all(XML_PROLOG.as_bytes())?;
    out.write_all(timeline_svg(report).as_bytes())
}

/// Writes `sizes.svg`: requests and internal-fragmentation waste per size class.
pub fn write_sizes_svg(report: &Report, out: &mut impl Write) -> io::Result<()> {
    out.write_all(XML_PROLOG.as_bytes())?;
    out.write_all(sizes_svg(report).as_bytes())
}

const XML_PROLOG: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n";

/// The `<svg>` element of the timeline (no XML prolog: for inlining into HTML).
pub fn timeline_svg(report: &Report) -> String {
    let title = format!("Live heap over time: {}", report.target.command.join(" "));
    let Some(analyses) = report
        .analyses
        .as_ref()
        .filter(|a| !a.timeline.points.is_empty())
    else {
        return message_svg(&title, "No allocations were recorded.");
    };
    Timeline::new(report, analyses).svg(&title)
}

/// The `<svg>` element of the size-class chart (no XML prolog: for inlining into HTML).
pub fn sizes_svg(report: &Report) -> String {
    let title = "Requests and internal fragmentation by size class";
    let Some(analyses) = &report.analyses else {
        return message_svg(title, "No analyses in this report.");
    };
    let bars = size_bars(analyses);
    if bars.bars.is_empty() {
        return message_svg(title, "No allocations were recorded.");
    }
    sizes_chart(title, &bars)
}

struct Timeline<'a> {
    analyses: &'a AnalysesReport,
    time: Axis,
    bytes: Axis,
    top: f64,
    bottom: f64,
}

impl<'a> Timeline<'a> {
    const HEIGHT: f64 = 420.0;

    fn new(report: &Report, analyses: &'a AnalysesReport) -> Self {
        let timeline = &analyses.timeline;
        // The session's end; the last bucket may end a little after it.
        let last = timeline.points.last().map_or(0.0, |p| p.time_secs);
        let end = if report.target.duration_secs > 0.0 {
            report.target.duration_secs
        } else {
            last
        };
        let highest = timeline
            .points
            .iter()
            .map(|p| p.max_live_bytes.max(p.rss_bytes.unwrap_or(0)))
            .chain(timeline.peak.as_ref().map(|peak| peak.live_bytes))
            .max()
            .unwrap_or(0);
        Timeline {
            analyses,
            time: Axis::seconds(end).ending_at(end),
            bytes: Axis::bytes(highest as f64 * 1.08),
            top: 50.0,
            bottom: Self::HEIGHT - 55.0,
        }
    }

    fn x(&self, secs: f64) -> f64 {
        LEFT + (WIDTH - LEFT - RIGHT) * (secs / self.time.max).clamp(0.0, 1.0)
    }

    fn y(&self, bytes: f64) -> f64 {
        self.bottom - (self.bottom - self.top) * (bytes / self.bytes.max).clamp(0.0, 1.0)
    }

    fn svg(&self, title: &str) -> String {
        let timeline = &self.analyses.timeline;
        let mut svg = open_svg(Self::HEIGHT, title);
        self.axes(&mut svg);
        // The live heap: the highest value in each bucket, so that no peak is smoothed away.
        let first = &timeline.points[0];
        let start = (first.time_secs - timeline.bucket_secs).max(0.0);
        let mut area = format!("M{:.1},{:.1}", self.x(start), self.y(0.0));
        for point in &timeline.points {
            let _ = write!(
                area,
                " L{:.1},{:.1}",
                self.x(point.time_secs),
                self.y(point.max_live_bytes as f64)
            );
        }
        // After the last event the heap stays as it was until the session ends.
        let last = timeline.points.last().expect("points are not empty");
        let _ = write!(
            area,
            " L{0:.1},{1:.1} L{2:.1},{1:.1} L{2:.1},{3:.1} Z",
            self.x(last.time_secs),
            self.y(last.live_bytes as f64),
            self.x(self.time.end),
            self.y(0.0)
        );
        let _ = writeln!(
            svg,
            "<path d=\"{area}\" fill=\"{LIVE_COLOUR}\" fill-opacity=\"0.35\" stroke=\"{LIVE_COLOUR}\" stroke-width=\"1.5\"/>"
        );
        let rss: Vec<String> = timeline
            .points
            .iter()
            .filter_map(|p| {
                let rss = p.rss_bytes?;
                Some(format!(
                    "{:.1},{:.1}",
                    self.x(p.time_secs),
                    self.y(rss as f64)
                ))
            })
            .collect();
        if !rss.is_empty() {
            let _ = writeln!(
                svg,
                "<polyline points=\"{}\" fill=\"none\" stroke=\"{RSS_COLOUR}\" stroke-width=\"2\" stroke-dasharray=\"6,3\"/>",
                rss.join(" ")
            );
        }
        self.peak(&mut svg);
        self.legend(&mut svg, !rss.is_empty());
        svg.push_str("</svg>\n");
        svg
    }

    fn axes(&self, svg: &mut String) {
        for tick in self.bytes.ticks() {
            let y = self.y(tick);
            let _ = writeln!(
                svg,
                "<line x1=\"{LEFT:.1}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\
                 <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" font-size=\"12\" {FONT}>{}</text>",
                WIDTH - RIGHT,
                LEFT - 8.0,
                y + 4.0,
                self.bytes.label(tick)
            );
        }
        for tick in self.time.ticks() {
            let x = self.x(tick);
            let _ = writeln!(
                svg,
                "<line x1=\"{x:.1}\" y1=\"{:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#888\"/>\
                 <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"12\" {FONT}>{}</text>",
                self.bottom,
                self.bottom + 5.0,
                self.bottom + 20.0,
                self.time.label(tick)
            );
        }
        let _ = writeln!(
            svg,
            "<line x1=\"{LEFT:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"#888\"/>\
             <line x1=\"{LEFT:.1}\" y1=\"{:.1}\" x2=\"{LEFT:.1}\" y2=\"{:.1}\" stroke=\"#888\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"12\" {FONT}>time since start</text>",
            self.bottom,
            WIDTH - RIGHT,
            self.bottom,
            self.top,
            self.bottom,
            (LEFT + WIDTH - RIGHT) / 2.0,
            self.bottom + 40.0
        );
    }

    fn peak(&self, svg: &mut String) {
        let Some(peak) = &self.analyses.timeline.peak else {
            return;
        };
        let (x, y) = (self.x(peak.time_secs), self.y(peak.live_bytes as f64));
        // The label goes on the side with room for it.
        let (anchor, dx) = if x > WIDTH * 0.6 {
            ("end", -8.0)
        } else {
            ("start", 8.0)
        };
        let _ = writeln!(
            svg,
            "<line x1=\"{x:.1}\" y1=\"{y:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#333\" stroke-dasharray=\"2,3\"/>\
             <circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"4.5\" fill=\"#333\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"{anchor}\" font-size=\"12\" font-weight=\"bold\" {FONT}>peak {} in {} blocks at {}</text>",
            self.bottom,
            x + dx,
            (y - 6.0).max(self.top + 12.0),
            short_bytes(peak.live_bytes),
            thousands(peak.live_blocks),
            seconds_label(peak.time_secs)
        );
    }

    fn legend(&self, svg: &mut String, with_rss: bool) {
        let y = 36.0;
        let bucket = seconds_label(self.analyses.timeline.bucket_secs);
        let _ = writeln!(
            svg,
            "<rect x=\"{LEFT:.1}\" y=\"{:.1}\" width=\"14\" height=\"10\" fill=\"{LIVE_COLOUR}\" fill-opacity=\"0.35\" stroke=\"{LIVE_COLOUR}\"/>\
             <text x=\"{:.1}\" y=\"{y:.1}\" font-size=\"12\" {FONT}>live heap (malloc family; highest in each {bucket})</text>",
            y - 9.0,
            LEFT + 20.0
        );
        if with_rss {
            let x = LEFT + 420.0;
            let _ = writeln!(
                svg,
                "<line x1=\"{x:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"{RSS_COLOUR}\" stroke-width=\"2\" stroke-dasharray=\"6,3\"/>\
                 <text x=\"{:.1}\" y=\"{y:.1}\" font-size=\"12\" {FONT}>resident set size (RSS)</text>",
                y - 4.0,
                x + 20.0,
                y - 4.0,
                x + 26.0
            );
        }
    }
}

/// One bar of the size chart.
#[derive(Clone, Debug, PartialEq)]
struct SizeBar {
    label: String,
    requests: u64,
    requested_bytes: u64,
    /// usable - requested bytes; None when the allocator (so the class) is unknown.
    waste: Option<u64>,
}

struct SizeBars {
    bars: Vec<SizeBar>,
    /// Classes (or buckets) in the report, shown or not.
    total: usize,
    /// Classes are the allocator's; otherwise power-of-two buckets of requested sizes.
    classes: bool,
}

fn size_bars(analyses: &AnalysesReport) -> SizeBars {
    let sizes = &analyses.size_classes;
    let mut bars: Vec<(u64, SizeBar)> = if sizes.classes.is_empty() {
        sizes
            .requested
            .iter()
            .map(|bucket| {
                let label = if bucket.min == bucket.max {
                    size_label(bucket.min)
                } else if bucket.max < 10 * 1024 {
                    format!("{}-{} B", bucket.min, bucket.max)
                } else {
                    format!("{}-{}", short_bytes(bucket.min), short_bytes(bucket.max))
                };
                let bar = SizeBar {
                    label,
                    requests: bucket.count,
                    requested_bytes: bucket.bytes,
                    waste: None,
                };
                (bucket.min, bar)
            })
            .collect()
    } else {
        sizes
            .classes
            .iter()
            .map(|class| {
                let bar = SizeBar {
                    label: size_label(class.usable),
                    requests: class.count,
                    requested_bytes: class.requested_bytes,
                    waste: Some(class.usable_bytes.saturating_sub(class.requested_bytes)),
                };
                (class.usable, bar)
            })
            .collect()
    };
    let total = bars.len();
    if total > MAX_BARS {
        // Keep the most requested, then put them back in size order.
        bars.sort_by(|(a_size, a), (b_size, b)| {
            b.requests.cmp(&a.requests).then(a_size.cmp(b_size))
        });
        bars.truncate(MAX_BARS);
        bars.sort_by_key(|(size, _)| *size);
    }
    SizeBars {
        bars: bars.into_iter().map(|(_, bar)| bar).collect(),
        total,
        classes: !sizes.classes.is_empty(),
    }
}

fn sizes_chart(title: &str, sizes: &SizeBars) -> String {
    const PANEL: f64 = 170.0;
    let first_top = 70.0;
    let second_top = first_top + PANEL + 50.0;
    // Labels are slanted when their slots are narrow, and then need more room.
    let slot = (WIDTH - LEFT - RIGHT) / sizes.bars.len() as f64;
    let slanted = slot < 60.0;
    let labels_room = if slanted { 90.0 } else { 30.0 };
    // Without the allocator's classes there is no waste panel: one line says so instead.
    let last_bottom = if sizes.classes {
        second_top + PANEL
    } else {
        first_top + PANEL
    };
    let height = last_bottom + labels_room + if sizes.classes { 0.0 } else { 30.0 };
    let mut svg = open_svg(height, title);
    let shown = if sizes.bars.len() < sizes.total {
        format!(
            "; the {} most requested of {} shown",
            sizes.bars.len(),
            sizes.total
        )
    } else {
        String::new()
    };
    let what = if sizes.classes {
        "classes of the allocator (usable size)"
    } else {
        "requested sizes in power-of-two buckets (allocator unknown)"
    };
    let _ = writeln!(
        svg,
        "<text x=\"{LEFT:.1}\" y=\"{:.1}\" font-size=\"12\" {FONT}>{}{}</text>",
        first_top - 28.0,
        what,
        escape(&shown)
    );
    let requests: Vec<u64> = sizes.bars.iter().map(|bar| bar.requests).collect();
    bar_panel(
        &mut svg,
        first_top,
        PANEL,
        "requests",
        &requests,
        // Headroom for the value printed above the tallest bar.
        Axis::count(max_of(&requests) as f64 * 1.1),
        LIVE_COLOUR,
        &sizes.bars,
    );
    let label = "internal fragmentation: bytes wasted (usable - requested)";
    if sizes.classes {
        let waste: Vec<u64> = sizes
            .bars
            .iter()
            .map(|bar| bar.waste.unwrap_or(0))
            .collect();
        bar_panel(
            &mut svg,
            second_top,
            PANEL,
            label,
            &waste,
            Axis::bytes(max_of(&waste) as f64 * 1.1),
            WASTE_COLOUR,
            &sizes.bars,
        );
    } else {
        let _ = writeln!(
            svg,
            "<text x=\"{LEFT:.1}\" y=\"{:.1}\" font-size=\"12\" {FONT}>{label}: unknown, the serving allocator is not one memprof models</text>",
            last_bottom + labels_room + 12.0
        );
    }
    // Class labels under the lower panel.
    let base = last_bottom + 14.0;
    for (index, bar) in sizes.bars.iter().enumerate() {
        let x = LEFT + slot * (index as f64 + 0.5);
        if !slanted {
            let _ = writeln!(
                svg,
                "<text x=\"{x:.1}\" y=\"{base:.1}\" text-anchor=\"middle\" font-size=\"11\" {FONT}>{}</text>",
                escape(&bar.label)
            );
        } else {
            let _ = writeln!(
                svg,
                "<text x=\"{x:.1}\" y=\"{base:.1}\" text-anchor=\"end\" font-size=\"11\" transform=\"rotate(-45 {x:.1} {base:.1})\" {FONT}>{}</text>",
                escape(&bar.label)
            );
        }
    }
    svg.push_str("</svg>\n");
    svg
}

#[expect(
    clippy::too_many_arguments,
    reason = "one panel's geometry, data and look"
)]
fn bar_panel(
    svg: &mut String,
    top: f64,
    height: f64,
    label: &str,
    values: &[u64],
    axis: Axis,
    colour: &str,
    bars: &[SizeBar],
) {
    let bottom = top + height;
    let y = |value: f64| bottom - height * (value / axis.max).clamp(0.0, 1.0);
    let _ = writeln!(
        svg,
        "<text x=\"{LEFT:.1}\" y=\"{:.1}\" font-size=\"13\" font-weight=\"bold\" {FONT}>{}</text>",
        top - 8.0,
        escape(label)
    );
    for tick in axis.ticks() {
        let _ = writeln!(
            svg,
            "<line x1=\"{LEFT:.1}\" y1=\"{0:.1}\" x2=\"{1:.1}\" y2=\"{0:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{2:.1}\" y=\"{3:.1}\" text-anchor=\"end\" font-size=\"11\" {FONT}>{4}</text>",
            y(tick),
            WIDTH - RIGHT,
            LEFT - 8.0,
            y(tick) + 4.0,
            axis.label(tick)
        );
    }
    let slot = (WIDTH - LEFT - RIGHT) / values.len() as f64;
    for (index, (&value, bar)) in values.iter().zip(bars).enumerate() {
        let x = LEFT + slot * index as f64 + slot * 0.15;
        // A nonzero value stays visible next to a bar a thousand times taller.
        let top_y = if value > 0 {
            y(value as f64).min(bottom - 1.5)
        } else {
            bottom
        };
        let tooltip = match bar.waste {
            Some(waste) => format!(
                "{}: {} requests, {} requested, {} wasted",
                bar.label,
                thousands(bar.requests),
                short_bytes(bar.requested_bytes),
                short_bytes(waste)
            ),
            None => format!(
                "{}: {} requests, {} requested",
                bar.label,
                thousands(bar.requests),
                short_bytes(bar.requested_bytes)
            ),
        };
        let _ = writeln!(
            svg,
            "<rect x=\"{x:.1}\" y=\"{top_y:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{colour}\"><title>{}</title></rect>",
            slot * 0.7,
            bottom - top_y,
            escape(&tooltip)
        );
        if slot >= 40.0 {
            let text = match axis.unit {
                Unit::Bytes => short_bytes(value),
                _ => thousands(value),
            };
            let _ = writeln!(
                svg,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"10\" {FONT}>{text}</text>",
                x + slot * 0.35,
                top_y - 3.0
            );
        }
    }
    let _ = writeln!(
        svg,
        "<line x1=\"{LEFT:.1}\" y1=\"{bottom:.1}\" x2=\"{:.1}\" y2=\"{bottom:.1}\" stroke=\"#888\"/>",
        WIDTH - RIGHT
    );
}

/// Sizes exact below 10 KiB (`1032 B` and `1000 B` are different classes), short above.
fn size_label(bytes: u64) -> String {
    if bytes < 10 * 1024 {
        format!("{bytes} B")
    } else {
        short_bytes(bytes)
    }
}

fn max_of(values: &[u64]) -> u64 {
    values.iter().copied().max().unwrap_or(0)
}

fn open_svg(height: f64, title: &str) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" version=\"1.1\" width=\"{WIDTH:.0}\" height=\"{height:.0}\" viewBox=\"0 0 {WIDTH:.0} {height:.0}\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"#fff\"/>\n\
         <text x=\"{:.1}\" y=\"20\" text-anchor=\"middle\" font-size=\"16\" {FONT}>{}</text>\n",
        WIDTH / 2.0,
        escape(title)
    )
}

fn message_svg(title: &str, message: &str) -> String {
    let mut svg = open_svg(90.0, title);
    let _ = writeln!(
        svg,
        "<text x=\"{:.1}\" y=\"55\" text-anchor=\"middle\" font-size=\"12\" {FONT}>{}</text>\n</svg>",
        WIDTH / 2.0,
        escape(message)
    );
    svg
}

/// What an axis measures, which picks its tick spacing and labels.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Unit {
    Bytes,
    Seconds,
    Count,
}

/// A value axis from 0 to `max`, `max` rounded up to a whole number of ticks.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Axis {
    unit: Unit,
    step: f64,
    max: f64,
    /// Where the data ends (at most `max`).
    end: f64,
}

impl Axis {
    /// About five ticks, on 1-2-5 steps of the unit's scale (binary prefixes for bytes).
    fn new(unit: Unit, max: f64) -> Axis {
        let max = if max > 0.0 && max.is_finite() {
            max
        } else {
            1.0
        };
        let scale = match unit {
            Unit::Bytes => byte_scale(max).0,
            Unit::Seconds | Unit::Count => 1.0,
        };
        let raw = max / scale / 5.0;
        let magnitude = 10f64.powf(raw.log10().floor());
        let step = [1.0, 2.0, 5.0, 10.0]
            .into_iter()
            .map(|m| m * magnitude)
            .find(|step| *step >= raw)
            .unwrap_or(10.0 * magnitude);
        // Counts are whole.
        let step = if unit == Unit::Count {
            step.max(1.0)
        } else {
            step
        } * scale;
        Axis {
            unit,
            step,
            max: (max / step).ceil() * step,
            end: max,
        }
    }

    fn ending_at(self, end: f64) -> Axis {
        Axis {
            end: end.min(self.max),
            ..self
        }
    }

    fn bytes(max: f64) -> Axis {
        Axis::new(Unit::Bytes, max)
    }

    fn seconds(max: f64) -> Axis {
        Axis::new(Unit::Seconds, max)
    }

    fn count(max: f64) -> Axis {
        Axis::new(Unit::Count, max)
    }

    fn ticks(&self) -> impl Iterator<Item = f64> + '_ {
        let count = (self.max / self.step).round() as u64;
        (0..=count).map(move |index| index as f64 * self.step)
    }

    fn label(&self, value: f64) -> String {
        match self.unit {
            Unit::Bytes if value == 0.0 => "0".to_owned(),
            Unit::Bytes => {
                let (scale, name) = byte_scale(self.max);
                format!("{} {name}", trim_number(value / scale))
            }
            Unit::Seconds => seconds_label(value),
            Unit::Count => thousands(value.round() as u64),
        }
    }
}

/// The binary prefix for values up to `max`.
fn byte_scale(max: f64) -> (f64, &'static str) {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut scale = 1.0;
    let mut unit = 0;
    while max >= scale * 1024.0 && unit < UNITS.len() - 1 {
        scale *= 1024.0;
        unit += 1;
    }
    (scale, UNITS[unit])
}

/// `0.0005` -> `0.5 ms`, `2.5` -> `2.5 s`, `90` -> `1.5 min`.
fn seconds_label(secs: f64) -> String {
    if secs == 0.0 {
        "0".to_owned()
    } else if secs < 1e-3 {
        format!("{} us", trim_number(secs * 1e6))
    } else if secs < 1.0 {
        format!("{} ms", trim_number(secs * 1e3))
    } else if secs < 120.0 {
        format!("{} s", trim_number(secs))
    } else {
        format!("{} min", trim_number(secs / 60.0))
    }
}

/// Up to three decimals, trailing zeros dropped: `2.50` -> `2.5`, `3.000` -> `3`.
fn trim_number(value: f64) -> String {
    let text = format!("{value:.3}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text == "-0" {
        "0".to_owned()
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_axes_step_on_binary_prefixes() {
        let axis = Axis::bytes(9132.0 * 1.08);
        assert_eq!(axis.label(axis.step), "2 KiB");
        assert_eq!(axis.max, 10.0 * 1024.0);
        assert_eq!(
            axis.ticks().map(|t| axis.label(t)).collect::<Vec<_>>(),
            ["0", "2 KiB", "4 KiB", "6 KiB", "8 KiB", "10 KiB"]
        );
        let axis = Axis::bytes(300.0 * 1024.0 * 1024.0);
        assert_eq!(axis.step, 100.0 * 1024.0 * 1024.0);
        assert_eq!(axis.label(axis.max), "300 MiB");
        assert_eq!(Axis::bytes(0.0).max, 1.0);
    }

    #[test]
    fn time_and_count_axes() {
        // 12.3 ms / 5 = 2.46 ms: the next 1-2-5 step is 5 ms.
        let axis = Axis::seconds(0.0123);
        assert_eq!((axis.step, axis.max), (0.005, 0.015));
        assert_eq!(axis.label(0.01), "10 ms");
        assert_eq!(seconds_label(2.5), "2.5 s");
        assert_eq!(seconds_label(0.0000125), "12.5 us");
        assert_eq!(seconds_label(600.0), "10 min");
        let axis = Axis::count(3.0);
        assert_eq!((axis.step, axis.max), (1.0, 3.0));
        let axis = Axis::count(1000.0);
        assert_eq!((axis.step, axis.max), (200.0, 1000.0));
        assert_eq!(axis.label(1000.0), "1,000");
    }

    #[test]
    fn escapes_markup() {
        assert_eq!(escape("a<b>&\"c'"), "a&lt;b&gt;&amp;&quot;c&#39;");
    }
}
