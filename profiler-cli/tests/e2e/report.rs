//! Queries on report.json, with failure messages that show what the report did contain.
use serde_json::Value;

/// The u64 at a dotted path (e.g. "summary.frees"); panics naming the path when absent.
pub fn num(report: &Value, path: &str) -> u64 {
    let mut node = report;
    for key in path.split('.') {
        node = node
            .get(key)
            .unwrap_or_else(|| panic!("report.json has no {path} (missing {key:?})"));
    }
    node.as_u64()
        .unwrap_or_else(|| panic!("report.json {path} is not an unsigned integer: {node}"))
}

/// Asserts the u64 at a dotted path, naming the path (and the summary) when it differs.
pub fn assert_num(report: &Value, path: &str, expected: u64) {
    assert_eq!(
        num(report, path),
        expected,
        "{path}; summary = {}",
        report["summary"]
    );
}

/// summary.by_function.FUNC.FIELD; 0 when FUNC is absent (only functions with calls are listed).
pub fn by_function(report: &Value, func: &str, field: &str) -> u64 {
    match report
        .get("summary")
        .and_then(|s| s.get("by_function"))
        .and_then(|f| f.get(func))
    {
        Some(_) => num(report, &format!("summary.by_function.{func}.{field}")),
        None => 0,
    }
}

/// Asserts calls and bytes of one allocation function.
pub fn assert_function(report: &Value, func: &str, calls: u64, bytes: u64) {
    let seen = (
        by_function(report, func, "calls"),
        by_function(report, func, "bytes"),
    );
    assert_eq!(
        seen,
        (calls, bytes),
        "(calls, bytes) of {func}; by_function = {}",
        report["summary"]["by_function"]
    );
}

/// Fails first, with a clear reason, when events were lost: every exact figure depends on it.
pub fn assert_nothing_lost(report: &Value) {
    assert_eq!(
        num(report, "summary.lost_events"),
        0,
        "events were lost, so no figure can be exact: {}",
        report["lost"]
    );
}

/// How a frame's function name is compared.
#[derive(Clone, Copy)]
pub enum Name<'a> {
    /// C symbols: the whole name.
    Exact(&'a str),
    /// Rust symbols: a path segment of the demangled name (it carries a hash suffix).
    Contains(&'a str),
}

impl Name<'_> {
    fn matches(self, function: &str) -> bool {
        match self {
            Name::Exact(name) => function == name,
            Name::Contains(part) => function.contains(part),
        }
    }

    fn text(self) -> &'static str {
        match self {
            Name::Exact(_) => "named",
            Name::Contains(_) => "containing",
        }
    }

    fn name(&self) -> &str {
        match self {
            Name::Exact(n) | Name::Contains(n) => n,
        }
    }
}

fn functions(site: &Value) -> Vec<&str> {
    site["stack"]
        .as_array()
        .map(|frames| {
            frames
                .iter()
                .map(|f| f["function"].as_str().unwrap_or("?"))
                .collect()
        })
        .unwrap_or_default()
}

/// The sites of SECTION ("leaks" or "mappings") whose stack has a frame matching NAME.
pub fn sites_with<'r>(report: &'r Value, section: &str, name: Name<'_>) -> Vec<&'r Value> {
    report[section]
        .as_array()
        .unwrap_or_else(|| panic!("report.json has no {section} array"))
        .iter()
        .filter(|site| functions(site).into_iter().any(|f| name.matches(f)))
        .collect()
}

/// One line per site: "blocks x bytes: f0 <- f1 <- ...", for assertion messages.
pub fn describe(report: &Value, section: &str) -> String {
    let Some(sites) = report[section].as_array() else {
        return format!("(no {section} array)");
    };
    let mut text = String::new();
    for site in sites {
        text.push_str(&format!(
            "\n  {} blocks, {} bytes: {}",
            site["blocks"],
            site["bytes"],
            functions(site).join(" <- ")
        ));
    }
    if text.is_empty() {
        text.push_str(" (none)");
    }
    text
}

/// Sums blocks and bytes over SECTION's sites that name NAME, and asserts them. Several sites
/// can share a function (gcc unrolls loops, so each copy of the call is its own return address).
pub fn assert_sites(report: &Value, section: &str, name: Name<'_>, blocks: u64, bytes: u64) {
    let sites = sites_with(report, section, name);
    let total = sites.iter().fold((0, 0), |(bl, by), site| {
        (
            bl + site["blocks"].as_u64().expect("blocks"),
            by + site["bytes"].as_u64().expect("bytes"),
        )
    });
    assert_eq!(
        total,
        (blocks, bytes),
        "(blocks, bytes) of the {section} sites with a frame {} {:?}; {section}:{}",
        name.text(),
        name.name(),
        describe(report, section)
    );
}

/// Asserts that the sites of SECTION add up to exactly BLOCKS and BYTES: nothing unexpected.
pub fn assert_section_total(report: &Value, section: &str, blocks: u64, bytes: u64) {
    let total = report[section]
        .as_array()
        .unwrap_or_else(|| panic!("report.json has no {section} array"))
        .iter()
        .fold((0, 0), |(bl, by), site| {
            (
                bl + site["blocks"].as_u64().expect("blocks"),
                by + site["bytes"].as_u64().expect("bytes"),
            )
        });
    assert_eq!(
        total,
        (blocks, bytes),
        "(blocks, bytes) over all {section}:{}",
        describe(report, section)
    );
}

/// Asserts that one site's stack holds CHAIN in this order, innermost first (other frames may
/// come between, e.g. the probed function itself).
pub fn assert_chain(report: &Value, section: &str, chain: &[&str]) {
    let sites = sites_with(report, section, Name::Exact(chain[0]));
    let found = sites.iter().any(|site| {
        let mut frames = functions(site).into_iter();
        chain.iter().all(|want| frames.any(|f| f == *want))
    });
    assert!(
        found,
        "no {section} site with the frames {chain:?} in this order; {section}:{}",
        describe(report, section)
    );
}
