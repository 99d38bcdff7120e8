//! The server's figures, as the STATS reply and the exit summary show them
//! (`requests=N connections=N ...`, one `name=value` per field, in this order).

use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Requests handled since start, the current one included.
    pub requests: u64,
    /// Connections open now.
    pub connections: u64,
    pub cache_entries: u64,
    /// Payload bytes held by the cache.
    pub cache_bytes: u64,
    /// Entries the cache dropped to stay under its byte budget.
    pub evictions: u64,
    /// Messages waiting in all queues.
    pub queued: u64,
    pub queued_bytes: u64,
    /// Payloads leaked by `--leak-every`.
    pub leaked: u64,
    pub leaked_bytes: u64,
    /// Capacity of the open connections' read and write buffers.
    pub buffer_bytes: u64,
}

const FIELDS: usize = 10;

impl Stats {
    fn fields(&self) -> [(&'static str, u64); FIELDS] {
        [
            ("requests", self.requests),
            ("connections", self.connections),
            ("cache_entries", self.cache_entries),
            ("cache_bytes", self.cache_bytes),
            ("evictions", self.evictions),
            ("queued", self.queued),
            ("queued_bytes", self.queued_bytes),
            ("leaked", self.leaked),
            ("leaked_bytes", self.leaked_bytes),
            ("buffer_bytes", self.buffer_bytes),
        ]
    }

    fn field_mut(&mut self, name: &str) -> Option<&mut u64> {
        Some(match name {
            "requests" => &mut self.requests,
            "connections" => &mut self.connections,
            "cache_entries" => &mut self.cache_entries,
            "cache_bytes" => &mut self.cache_bytes,
            "evictions" => &mut self.evictions,
            "queued" => &mut self.queued,
            "queued_bytes" => &mut self.queued_bytes,
            "leaked" => &mut self.leaked,
            "leaked_bytes" => &mut self.leaked_bytes,
            "buffer_bytes" => &mut self.buffer_bytes,
            _ => return None,
        })
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (name, value)) in self.fields().into_iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{name}={value}")?;
        }
        Ok(())
    }
}

impl FromStr for Stats {
    type Err = String;

    /// Parses what Display writes; every field must be present exactly once.
    fn from_str(text: &str) -> Result<Stats, String> {
        let mut stats = Stats::default();
        let mut seen = Vec::with_capacity(FIELDS);
        for word in text.split_ascii_whitespace() {
            let (name, value) = word
                .split_once('=')
                .ok_or_else(|| format!("{word:?} is not name=value"))?;
            let field = stats
                .field_mut(name)
                .ok_or_else(|| format!("unknown field {name:?}"))?;
            *field = value
                .parse()
                .map_err(|_| format!("{name}={value:?} is not a count"))?;
            if seen.contains(&name) {
                return Err(format!("{name} given twice"));
            }
            seen.push(name);
        }
        if seen.len() != FIELDS {
            return Err(format!("{FIELDS} fields expected, got {}", seen.len()));
        }
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_from_str_round_trip() {
        let stats = Stats {
            requests: 1,
            connections: 2,
            cache_entries: 3,
            cache_bytes: 4,
            evictions: 5,
            queued: 6,
            queued_bytes: 7,
            leaked: 8,
            leaked_bytes: 9,
            buffer_bytes: 10,
        };
        let text = stats.to_string();
        assert_eq!(
            text,
            "requests=1 connections=2 cache_entries=3 cache_bytes=4 evictions=5 queued=6 \
             queued_bytes=7 leaked=8 leaked_bytes=9 buffer_bytes=10"
        );
        assert_eq!(text.parse::<Stats>(), Ok(stats));
    }

    #[test]
    fn incomplete_or_unknown_fields_are_errors() {
        assert!("requests=1".parse::<Stats>().is_err());
        assert!("bogus=1".parse::<Stats>().is_err());
        assert!("requests=x".parse::<Stats>().is_err());
    }
}
