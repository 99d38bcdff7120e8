//! Number formatting for people: thousands separators, percentages and binary-prefixed byte
//! sizes.

/// `0.1234` -> `12.3%`.
pub fn percent(ratio: f64) -> String {
    format!("{:.1}%", ratio * 100.0)
}

/// `1234567` -> `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// `1536` -> `1.5 KiB (1,536 bytes)`; below 1 KiB the exact count alone: `512 B`.
pub fn human_bytes(bytes: u64) -> String {
    match short_bytes(bytes) {
        short if bytes < 1024 => short,
        short => format!("{short} ({} bytes)", thousands(bytes)),
    }
}

/// `1536` -> `1.5 KiB`; below 1 KiB the exact count: `512 B`. For titles.
pub fn short_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(u64::MAX), "18,446,744,073,709,551,615");
    }

    #[test]
    fn human_bytes_keeps_the_exact_count() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB (1,536 bytes)");
        assert_eq!(human_bytes(3 << 20), "3.0 MiB (3,145,728 bytes)");
        assert_eq!(human_bytes(5 << 30), "5.0 GiB (5,368,709,120 bytes)");
    }
}
