//! One ELF object, parsed once: its load segments, function symbols and DWARF (its own or a
//! separate debug file's), and the lookup of one address in it.

use super::debug_file::{self, DebugFile};
use super::{Frame, ModuleInfo};
use crate::demangle::demangle;

use object::{Object, ObjectSection, ObjectSymbol, SymbolKind};

use crate::load_segments::LoadSegments;
use std::path::Path;
use std::sync::Arc;

/// DWARF sections share the file's bytes through an `Arc`: no copy per section.
type DwarfReader = gimli::EndianArcSlice<gimli::RunTimeEndian>;

#[derive(Debug)]
struct Symbol {
    start: u64,
    size: u64,
    /// 0 global, 1 weak, 2 local: among aliases the exported name is the one people know
    /// (glibc's `__strdup`, not its internal `__GI___strdup`).
    rank: u8,
    name: String,
}

/// What one ELF file offers for symbolization.
pub(super) struct Module {
    pub info: ModuleInfo,
    segments: LoadSegments,
    /// Sorted by start address.
    symbols: Vec<Symbol>,
    dwarf: Option<addr2line::Context<DwarfReader>>,
}

/// One level of a DWARF lookup: a function (inlined or not) and the line in it.
struct SourceFrame {
    function: Option<String>,
    file: Option<String>,
    line: Option<u32>,
}

impl Module {
    /// Parses `bytes`, the object mapped from `path` (as the target names it), and finds its
    /// separate debug file under `debug_root` when it carries no DWARF itself.
    pub fn parse(bytes: Arc<[u8]>, path: &Path, debug_root: &Path) -> object::Result<Module> {
        let file = object::File::parse(&*bytes)?;
        let segments = LoadSegments::of(&file);
        let mut info = ModuleInfo {
            path: path.to_path_buf(),
            build_id: debug_file::build_id_hex(&file),
            debug_file: None,
        };
        let own_dwarf = load_dwarf(&file, &bytes);
        let separate = match own_dwarf {
            Some(_) => None,
            None => debug_file::find(&file, path, debug_root),
        };
        let separate = separate.and_then(|DebugFile { path, bytes }| {
            let parsed = object::File::parse(&*bytes).ok()?;
            let dwarf = load_dwarf(&parsed, &bytes);
            let symbols = function_symbols(parsed.symbols());
            Some((path, dwarf, symbols))
        });
        // .symtab of the object, else of its debug file (stripped objects keep only .dynsym).
        let mut symbols = function_symbols(file.symbols());
        let mut dwarf = own_dwarf;
        if let Some((debug_path, debug_dwarf, debug_symbols)) = separate {
            info.debug_file = Some(debug_path);
            dwarf = debug_dwarf;
            if symbols.is_empty() {
                symbols = debug_symbols;
            }
        }
        if symbols.is_empty() {
            symbols = function_symbols(file.dynamic_symbols());
        }
        Ok(Module {
            info,
            segments,
            symbols,
            dwarf,
        })
    }

    /// The virtual address the byte at `offset` in the file is loaded at.
    pub fn vaddr_of(&self, offset: u64) -> Option<u64> {
        self.segments.vaddr_of(offset)
    }

    /// The frames of the code at `vaddr`, innermost first: the functions inlined there, then
    /// the real function. `base` carries the address and module fields every frame shares.
    pub fn describe(&self, vaddr: u64, base: &Frame) -> Vec<Frame> {
        let symbol = self.symbol_at(vaddr).map(|symbol| demangle(&symbol.name));
        let mut source = self.source_frames(vaddr);
        let Some(outermost) = source.pop() else {
            return vec![Frame {
                function: symbol,
                ..base.clone()
            }];
        };
        let mut frames: Vec<Frame> = source
            .into_iter()
            .map(|inlined| Frame {
                function: inlined.function,
                file: inlined.file,
                line: inlined.line,
                inlined: true,
                ..base.clone()
            })
            .collect();
        // The symbol names the real function more reliably than DWARF (`foo.cold` parts,
        // and objects whose DWARF lacks linkage names).
        frames.push(Frame {
            function: symbol.or(outermost.function),
            file: outermost.file,
            line: outermost.line,
            ..base.clone()
        });
        frames
    }

    fn source_frames(&self, vaddr: u64) -> Vec<SourceFrame> {
        let mut found = Vec::new();
        let Some(dwarf) = &self.dwarf else {
            return found;
        };
        let Ok(mut frames) = dwarf.find_frames(vaddr).skip_all_loads() else {
            return found;
        };
        while let Ok(Some(frame)) = frames.next() {
            let function = frame
                .function
                .as_ref()
                .and_then(|name| name.raw_name().ok())
                .map(|raw| demangle(&raw));
            let (file, line) = frame
                .location
                .map(|location| (location.file.map(str::to_owned), location.line))
                .unwrap_or_default();
            found.push(SourceFrame {
                function,
                file,
                line,
            });
        }
        found
    }

    fn symbol_at(&self, vaddr: u64) -> Option<&Symbol> {
        let after = self.symbols.partition_point(|s| s.start <= vaddr);
        // Usually the last symbol starting at or below vaddr covers it; look a few further
        // back for an enclosing symbol in case a small one is nested inside a bigger one.
        self.symbols[..after]
            .iter()
            .rev()
            .take(4)
            .find(|s| vaddr - s.start < s.size)
    }
}

/// Sized function symbols of one table, sorted by address.
fn function_symbols<'data>(symbols: impl Iterator<Item = impl ObjectSymbol<'data>>) -> Vec<Symbol> {
    let mut symbols: Vec<Symbol> = symbols
        .filter(|s| s.kind() == SymbolKind::Text && s.is_definition() && s.size() > 0)
        .filter_map(|s| {
            let name = s.name().ok()?;
            // Versioned definitions keep their version in .symtab: `foo@@GLIBC_2.34`.
            let name = name.split_once('@').map_or(name, |(base, _)| base);
            Some(Symbol {
                start: s.address(),
                size: s.size(),
                // is_global() is true for weak symbols too.
                rank: match (s.is_weak(), s.is_global()) {
                    (true, _) => 1,
                    (false, true) => 0,
                    (false, false) => 2,
                },
                name: name.to_owned(),
            })
        })
        .collect();
    // Among aliases at one address, prefer the largest, then the most visible; then by name
    // for determinism.
    symbols.sort_by(|a, b| {
        (a.start, std::cmp::Reverse(a.size), a.rank, &a.name).cmp(&(
            b.start,
            std::cmp::Reverse(b.size),
            b.rank,
            &b.name,
        ))
    });
    symbols.dedup_by_key(|s| s.start);
    symbols
}

/// Builds an addr2line context when the file carries DWARF; best effort.
fn load_dwarf(
    file: &object::File<'_>,
    bytes: &Arc<[u8]>,
) -> Option<addr2line::Context<DwarfReader>> {
    file.section_by_name(".debug_info")?;
    let endian = if file.is_little_endian() {
        gimli::RunTimeEndian::Little
    } else {
        gimli::RunTimeEndian::Big
    };
    let whole = DwarfReader::new(bytes.clone(), endian);
    let load = |id: gimli::SectionId| -> Result<DwarfReader, gimli::Error> {
        // Variables' locations and macros: addr2line reads neither, and in a compressed debug
        // file (Debian's libc6-dbg) inflating them was a sixth of loading libc's DWARF.
        let unread = matches!(
            id,
            gimli::SectionId::DebugLoc
                | gimli::SectionId::DebugLocLists
                | gimli::SectionId::DebugMacinfo
                | gimli::SectionId::DebugMacro
        );
        let Some(section) = file.section_by_name(id.name()).filter(|_| !unread) else {
            return Ok(whole.range(0..0));
        };
        // Uncompressed sections are a range of the file; compressed ones get their own buffer.
        if let Ok(compressed) = section.compressed_file_range()
            && compressed.format == object::CompressionFormat::None
        {
            let start = compressed.offset as usize;
            return Ok(whole.range(start..start + compressed.uncompressed_size as usize));
        }
        match inflated(&section) {
            Some(data) => Ok(DwarfReader::new(data, endian)),
            None => Ok(whole.range(0..0)),
        }
    };
    let dwarf = gimli::Dwarf::load(load).ok()?;
    addr2line::Context::from_dwarf(dwarf).ok()
}

/// Most bytes a section is inflated straight into (see [`inflated`]); a larger one goes
/// through object's decompression, which reserves its buffer fallibly.
const INFLATED_DIRECTLY_MAX: u64 = 256 << 20;
/// Deflate's largest expansion: a stream of N bytes inflates to at most ~1032 N.
const DEFLATE_MAX_RATIO: u64 = 1032;

/// A compressed section's bytes. zlib's (what Debian's debug files use) are inflated straight
/// into the buffer the DWARF reader shares: object's own decompression returns a `Vec` that
/// an `Arc<[u8]>` would copy (12 MiB for libc6-dbg's DWARF). The size is the file's word, and
/// the file may be the target's: a size deflate cannot reach from the section's bytes is
/// refused, and a large one gets object's fallible buffer, so a lying file is an
/// unsymbolized module, never memprof aborting on an allocation. `None` if the section does
/// not decompress to the size it announces.
fn inflated(section: &object::Section<'_, '_>) -> Option<Arc<[u8]>> {
    let compressed = section.compressed_data().ok()?;
    let direct = compressed.uncompressed_size <= INFLATED_DIRECTLY_MAX;
    if compressed.format != object::CompressionFormat::Zlib || !direct {
        return section
            .uncompressed_data()
            .ok()
            .map(|data| Arc::from(&*data));
    }
    inflate_zlib(compressed.data, compressed.uncompressed_size)
}

/// The zlib stream `data`, inflated into a shared buffer of exactly `size` bytes.
fn inflate_zlib(data: &[u8], size: u64) -> Option<Arc<[u8]>> {
    if size > (data.len() as u64).saturating_mul(DEFLATE_MAX_RATIO) {
        return None;
    }
    let size = usize::try_from(size).ok()?;
    // SAFETY: zeroed bytes are valid `u8`s.
    let mut inflated: Arc<[u8]> = unsafe { Arc::<[u8]>::new_zeroed_slice(size).assume_init() };
    let out = Arc::get_mut(&mut inflated)?;
    let mut inflate = flate2::Decompress::new(true);
    let status = inflate
        .decompress(data, out, flate2::FlushDecompress::Finish)
        .ok()?;
    (status == flate2::Status::StreamEnd && inflate.total_out() == size as u64).then_some(inflated)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn zlib(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    #[test]
    fn a_zlib_section_inflates_only_to_the_size_it_truly_has() {
        let bytes = vec![7u8; 100_000];
        let stream = zlib(&bytes);
        assert_eq!(inflate_zlib(&stream, 100_000).as_deref(), Some(&bytes[..]));
        // Announced shorter or longer than the stream: refused, not cut or padded.
        assert_eq!(inflate_zlib(&stream, 99_999), None);
        assert_eq!(inflate_zlib(&stream, 100_001), None);
        // A size deflate cannot reach from these bytes is refused before any allocation
        // (a file claiming a terabyte would otherwise abort memprof).
        assert_eq!(inflate_zlib(&stream, 1 << 40), None);
        assert_eq!(inflate_zlib(&[], 1), None);
    }
}
