//! pprof output: a gzipped `perftools.profiles.Profile` protobuf (github.com/google/pprof,
//! proto/profile.proto) that `go tool pprof` and most profile viewers load.
//!
//! One sample per allocation stack with four values, in this order: alloc_objects/count,
//! alloc_space/bytes, inuse_objects/count, inuse_space/bytes (the default). Locations are
//! return addresses; each carries its lines innermost first (several for inlined frames).

use crate::sites::SiteCounts;
use crate::string_table::StringTable;
use flate2::{Compression, write::GzEncoder};
use prost::Message;
use std::collections::HashMap;
use std::io::{self, Write};
use std::path::PathBuf;

/// The subset of profile.proto memprof writes; field numbers are the proto's.
mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Profile {
        #[prost(message, repeated, tag = "1")]
        pub sample_type: Vec<ValueType>,
        #[prost(message, repeated, tag = "2")]
        pub sample: Vec<Sample>,
        #[prost(message, repeated, tag = "3")]
        pub mapping: Vec<Mapping>,
        #[prost(message, repeated, tag = "4")]
        pub location: Vec<Location>,
        #[prost(message, repeated, tag = "5")]
        pub function: Vec<Function>,
        #[prost(string, repeated, tag = "6")]
        pub string_table: Vec<String>,
        #[prost(int64, tag = "9")]
        pub time_nanos: i64,
        #[prost(int64, tag = "10")]
        pub duration_nanos: i64,
        #[prost(message, optional, tag = "11")]
        pub period_type: Option<ValueType>,
        #[prost(int64, tag = "12")]
        pub period: i64,
        #[prost(int64, tag = "14")]
        pub default_sample_type: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ValueType {
        #[prost(int64, tag = "1")]
        pub r#type: i64,
        #[prost(int64, tag = "2")]
        pub unit: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Sample {
        #[prost(uint64, repeated, tag = "1")]
        pub location_id: Vec<u64>,
        #[prost(int64, repeated, tag = "2")]
        pub value: Vec<i64>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Mapping {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(uint64, tag = "2")]
        pub memory_start: u64,
        #[prost(uint64, tag = "3")]
        pub memory_limit: u64,
        #[prost(uint64, tag = "4")]
        pub file_offset: u64,
        #[prost(int64, tag = "5")]
        pub filename: i64,
        #[prost(int64, tag = "6")]
        pub build_id: i64,
        #[prost(bool, tag = "7")]
        pub has_functions: bool,
        #[prost(bool, tag = "8")]
        pub has_filenames: bool,
        #[prost(bool, tag = "9")]
        pub has_line_numbers: bool,
        #[prost(bool, tag = "10")]
        pub has_inline_frames: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Location {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(uint64, tag = "2")]
        pub mapping_id: u64,
        #[prost(uint64, tag = "3")]
        pub address: u64,
        #[prost(message, repeated, tag = "4")]
        pub line: Vec<Line>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Line {
        #[prost(uint64, tag = "1")]
        pub function_id: u64,
        #[prost(int64, tag = "2")]
        pub line: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Function {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(int64, tag = "2")]
        pub name: i64,
        #[prost(int64, tag = "3")]
        pub system_name: i64,
        #[prost(int64, tag = "4")]
        pub filename: i64,
    }
}

/// A mapped file, for pprof's Mapping table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PprofMapping {
    pub start: u64,
    pub end: u64,
    pub offset: u64,
    pub path: PathBuf,
    /// Lowercase hex GNU build-id.
    pub build_id: Option<String>,
}

/// One source line of a location; a location has several when calls were inlined.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PprofLine {
    /// Function name (`module+0xoffset` when unknown).
    pub function: String,
    pub file: Option<String>,
    pub line: Option<u32>,
}

/// What a profile holds besides its samples.
#[derive(Clone, Debug, Default)]
pub struct PprofMeta {
    /// Wall clock of the start, ns since the Unix epoch (0 if unknown).
    pub time_nanos: u64,
    pub duration_nanos: u64,
    /// The target's mapped files (non-file mappings are ignored).
    pub mappings: Vec<PprofMapping>,
}

/// Sample types, in value order; `inuse_space` is the default.
const SAMPLE_TYPES: [(&str, &str); 4] = [
    ("alloc_objects", "count"),
    ("alloc_space", "bytes"),
    ("inuse_objects", "count"),
    ("inuse_space", "bytes"),
];

/// Writes the gzipped profile. `sites` are (stack frames innermost first, counts) pairs;
/// `lines` symbolizes one return address into its lines, innermost first.
pub fn write_pprof<'a>(
    sites: impl IntoIterator<Item = (&'a [u64], SiteCounts)>,
    meta: &PprofMeta,
    mut lines: impl FnMut(u64) -> Vec<PprofLine>,
    out: impl Write,
) -> io::Result<()> {
    let mut builder = Builder::default();
    builder.string(""); // index 0 is always the empty string
    let profile_sample_types = SAMPLE_TYPES
        .iter()
        .map(|(kind, unit)| proto::ValueType {
            r#type: builder.string(kind),
            unit: builder.string(unit),
        })
        .collect();
    let mappings: Vec<&PprofMapping> = {
        let mut files: Vec<&PprofMapping> = meta
            .mappings
            .iter()
            .filter(|m| m.path.is_absolute())
            .collect();
        files.sort_by_key(|m| m.start);
        files
    };
    let mut samples = Vec::new();
    for (frames, counts) in sites {
        let location_id = frames
            .iter()
            .map(|&address| builder.location(address, &mappings, &mut lines))
            .collect();
        let value = [
            counts.allocations,
            counts.allocated_bytes,
            counts.live_blocks,
            counts.live_bytes,
        ]
        .iter()
        .map(|&v| i64::try_from(v).unwrap_or(i64::MAX))
        .collect();
        samples.push(proto::Sample { location_id, value });
    }
    let used = std::mem::take(&mut builder.used_mappings);
    let mapping = used
        .iter()
        .map(|&index| {
            let m = mappings[index];
            let filename = builder.string(&m.path.to_string_lossy());
            let build_id = m.build_id.as_deref().map_or(0, |id| builder.string(id));
            proto::Mapping {
                id: index as u64 + 1,
                memory_start: m.start,
                memory_limit: m.end,
                file_offset: m.offset,
                filename,
                build_id,
                has_functions: true,
                has_filenames: true,
                has_line_numbers: true,
                has_inline_frames: true,
            }
        })
        .collect();
    let space = builder.string("space");
    let bytes = builder.string("bytes");
    let default_sample_type = builder.string("inuse_space");
    let profile = proto::Profile {
        sample_type: profile_sample_types,
        sample: samples,
        mapping,
        location: builder.locations,
        function: builder.functions,
        string_table: builder.strings.into_list(),
        time_nanos: i64::try_from(meta.time_nanos).unwrap_or(0),
        duration_nanos: i64::try_from(meta.duration_nanos).unwrap_or(0),
        period_type: Some(proto::ValueType {
            r#type: space,
            unit: bytes,
        }),
        period: 1,
        default_sample_type,
    };
    let mut gzip = GzEncoder::new(out, Compression::default());
    gzip.write_all(&profile.encode_to_vec())?;
    gzip.finish()?.flush()
}

/// Interns strings, functions, locations and the mappings they use.
#[derive(Default)]
struct Builder {
    strings: StringTable,
    functions: Vec<proto::Function>,
    function_ids: HashMap<(i64, i64), u64>,
    locations: Vec<proto::Location>,
    location_ids: HashMap<u64, u64>,
    /// Indices into the sorted mapping list, in first-use order.
    used_mappings: Vec<usize>,
}

impl Builder {
    fn string(&mut self, text: &str) -> i64 {
        self.strings.position(text) as i64
    }

    fn function(&mut self, name: &str, file: Option<&str>) -> u64 {
        let name = self.string(name);
        let filename = file.map_or(0, |file| self.string(file));
        let next = self.functions.len() as u64 + 1;
        let id = *self.function_ids.entry((name, filename)).or_insert(next);
        if id == next {
            self.functions.push(proto::Function {
                id,
                name,
                system_name: name,
                filename,
            });
        }
        id
    }

    fn location(
        &mut self,
        address: u64,
        mappings: &[&PprofMapping],
        lines: &mut impl FnMut(u64) -> Vec<PprofLine>,
    ) -> u64 {
        if let Some(&id) = self.location_ids.get(&address) {
            return id;
        }
        let mapping_id = mapping_index(mappings, address).map_or(0, |index| {
            if !self.used_mappings.contains(&index) {
                self.used_mappings.push(index);
            }
            index as u64 + 1
        });
        let line = lines(address)
            .into_iter()
            .map(|line| proto::Line {
                function_id: self.function(&line.function, line.file.as_deref()),
                line: line.line.map_or(0, i64::from),
            })
            .collect();
        let id = self.locations.len() as u64 + 1;
        self.locations.push(proto::Location {
            id,
            mapping_id,
            address,
            line,
        });
        self.location_ids.insert(address, id);
        id
    }
}

/// The mapping holding `address` (sorted by start, non-overlapping).
fn mapping_index(mappings: &[&PprofMapping], address: u64) -> Option<usize> {
    let after = mappings.partition_point(|m| m.start <= address);
    let index = after.checked_sub(1)?;
    (address < mappings[index].end).then_some(index)
}

#[cfg(test)]
mod tests;
