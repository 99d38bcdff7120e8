//! Return addresses to function, file and line.
//!
//! addr -> mapping (from [`ProcessMaps`]) -> offset in the mapped file -> the ELF virtual
//! address that file offset is loaded at (via the PT_LOAD segment containing it) -> the symbol
//! covering that address (.symtab, else .dynsym) and, when the file has DWARF, its file:line.
//! Going through file offsets makes PIE executables and shared libraries work without knowing
//! their load bias.

use crate::demangle::demangle;
use crate::fasthash::FastHashMap;
use crate::maps::ProcessMaps;

use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol, SymbolKind};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One symbolized stack frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The address as recorded (a return address for every frame memprof records).
    pub address: u64,
    /// File name of the mapped object, a pseudo-name like `[vdso]`, or `[unknown]`.
    pub module: String,
    /// Offset of `address` in the module's file (0 when the module is unknown).
    pub module_offset: u64,
    /// Demangled function name.
    pub function: Option<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
}

/// DWARF sections share the file's bytes through an `Arc`: no copy per section.
type DwarfReader = gimli::EndianArcSlice<gimli::RunTimeEndian>;

/// A PT_LOAD segment: file bytes `[file_offset, file_offset + file_size)` live at `vaddr`.
#[derive(Clone, Copy, Debug)]
struct Segment {
    file_offset: u64,
    file_size: u64,
    vaddr: u64,
}

#[derive(Debug)]
struct Symbol {
    start: u64,
    size: u64,
    name: String,
}

/// What one ELF file offers for symbolization, loaded once.
struct Module {
    segments: Vec<Segment>,
    /// Sorted by start address.
    symbols: Vec<Symbol>,
    dwarf: Option<addr2line::Context<DwarfReader>>,
}

/// Why a module could not be used; frames in it get no function name.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot parse {path} as an object file: {source}")]
    Parse {
        path: PathBuf,
        source: object::Error,
    },
    #[error("{path} was deleted after being mapped; its replacement may not match")]
    Deleted { path: PathBuf },
}

/// Symbolizes addresses of one process, opening each mapped ELF file at most once.
pub struct Symbolizer {
    maps: ProcessMaps,
    modules: HashMap<PathBuf, Result<Module, ModuleError>>,
    frames: FastHashMap<u64, Frame>,
}

impl Symbolizer {
    pub fn new(maps: &ProcessMaps) -> Self {
        Self {
            maps: maps.clone(),
            modules: HashMap::new(),
            frames: FastHashMap::default(),
        }
    }

    /// Symbolizes a return address. The lookup uses `address - 1`: a call that is the last
    /// instruction of a function returns to the first byte of the next one.
    pub fn symbolize(&mut self, address: u64) -> Frame {
        if let Some(frame) = self.frames.get(&address) {
            return frame.clone();
        }
        let frame = self.resolve(address);
        self.frames.insert(address, frame.clone());
        frame
    }

    /// Modules that could not be loaded, with the reason (for a warning in the CLI).
    pub fn module_errors(&self) -> impl Iterator<Item = &ModuleError> {
        self.modules
            .values()
            .filter_map(|module| module.as_ref().err())
    }

    fn resolve(&mut self, address: u64) -> Frame {
        let mut frame = Frame {
            address,
            module: "[unknown]".to_owned(),
            module_offset: 0,
            function: None,
            file: None,
            line: None,
        };
        let probe = address.saturating_sub(1);
        let Some(mapping) = self.maps.find(probe) else {
            return frame;
        };
        if mapping.path.as_os_str().is_empty() {
            return frame; // anonymous memory: JIT code or a corrupt stack
        }
        frame.module = mapping
            .path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_else(|| mapping.path.to_string_lossy().into_owned());
        frame.module_offset = mapping.file_offset(address);
        if !mapping.is_file() {
            return frame; // [vdso], [heap], ...
        }
        let probe_offset = mapping.file_offset(probe);
        let module = self
            .modules
            .entry(mapping.path.clone())
            .or_insert_with(|| Module::open(&mapping.path, mapping.deleted));
        if let Ok(module) = module
            && let Some(vaddr) = module.vaddr_of(probe_offset)
        {
            module.describe(vaddr, &mut frame);
        }
        frame
    }
}

impl Module {
    fn open(path: &Path, deleted: bool) -> Result<Module, ModuleError> {
        if deleted {
            return Err(ModuleError::Deleted {
                path: path.to_owned(),
            });
        }
        let bytes: Arc<[u8]> = std::fs::read(path)
            .map_err(|source| ModuleError::Read {
                path: path.to_owned(),
                source,
            })?
            .into();
        let file = object::File::parse(&*bytes).map_err(|source| ModuleError::Parse {
            path: path.to_owned(),
            source,
        })?;
        let segments = file
            .segments()
            .map(|segment| {
                let (file_offset, file_size) = segment.file_range();
                Segment {
                    file_offset,
                    file_size,
                    vaddr: segment.address(),
                }
            })
            .collect();
        Ok(Module {
            segments,
            symbols: function_symbols(&file),
            dwarf: load_dwarf(&file, &bytes),
        })
    }

    /// The virtual address the byte at `offset` in the file is loaded at.
    fn vaddr_of(&self, offset: u64) -> Option<u64> {
        self.segments
            .iter()
            .find(|s| offset >= s.file_offset && offset - s.file_offset < s.file_size)
            .map(|s| s.vaddr + (offset - s.file_offset))
    }

    /// Fills in function, file and line for the code at `vaddr`.
    fn describe(&self, vaddr: u64, frame: &mut Frame) {
        frame.function = self.symbol_at(vaddr).map(|symbol| demangle(&symbol.name));
        let Some(dwarf) = &self.dwarf else {
            return;
        };
        // The outermost frame is the real (not inlined) function: its location is the line in
        // that function, which matches the symbol name.
        let Ok(mut frames) = dwarf.find_frames(vaddr).skip_all_loads() else {
            return;
        };
        let mut outermost = None;
        while let Ok(Some(inner)) = frames.next() {
            outermost = Some(inner);
        }
        let Some(outermost) = outermost else {
            return;
        };
        if let Some(location) = outermost.location {
            frame.file = location.file.map(str::to_owned);
            frame.line = location.line;
        }
        if frame.function.is_none()
            && let Some(name) = outermost.function
            && let Ok(raw) = name.raw_name()
        {
            frame.function = Some(demangle(&raw));
        }
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

/// Sized function symbols from .symtab, or from .dynsym when the file is stripped.
fn function_symbols(file: &object::File<'_>) -> Vec<Symbol> {
    let collect = |symbols: object::SymbolIterator<'_, '_>| -> Vec<Symbol> {
        symbols
            .filter(|s| s.kind() == SymbolKind::Text && s.is_definition() && s.size() > 0)
            .filter_map(|s| {
                Some(Symbol {
                    start: s.address(),
                    size: s.size(),
                    name: s.name().ok()?.to_owned(),
                })
            })
            .collect()
    };
    let mut symbols = collect(file.symbols());
    if symbols.is_empty() {
        symbols = collect(file.dynamic_symbols());
    }
    // Among aliases at one address, prefer the largest; then by name for determinism.
    symbols.sort_by(|a, b| {
        (a.start, std::cmp::Reverse(a.size), &a.name).cmp(&(
            b.start,
            std::cmp::Reverse(b.size),
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
        let Some(section) = file.section_by_name(id.name()) else {
            return Ok(whole.range(0..0));
        };
        // Uncompressed sections are a range of the file; compressed ones get their own buffer.
        if let Ok(compressed) = section.compressed_file_range()
            && compressed.format == object::CompressionFormat::None
        {
            let start = compressed.offset as usize;
            return Ok(whole.range(start..start + compressed.uncompressed_size as usize));
        }
        match section.uncompressed_data() {
            Ok(data) => Ok(DwarfReader::new(Arc::from(&*data), endian)),
            Err(_) => Ok(whole.range(0..0)),
        }
    };
    let dwarf = gimli::Dwarf::load(load).ok()?;
    addr2line::Context::from_dwarf(dwarf).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn marker_function_for_symbolizer_test() -> u64 {
        std::hint::black_box(42)
    }

    #[test]
    fn symbolizes_own_function_via_proc_self_maps() {
        let maps = ProcessMaps::read(std::process::id()).unwrap();
        let mut symbolizer = Symbolizer::new(&maps);
        let entry = marker_function_for_symbolizer_test as fn() -> u64 as usize as u64;
        // +1: symbolize treats addresses as return addresses and looks up address - 1.
        let frame = symbolizer.symbolize(entry + 1);
        assert_eq!(frame.address, entry + 1);
        let function = frame.function.expect("test binary has a symbol table");
        assert!(
            function.ends_with("symbolize::tests::marker_function_for_symbolizer_test"),
            "{function}"
        );
        let exe = std::env::current_exe().unwrap();
        assert_eq!(frame.module, exe.file_name().unwrap().to_string_lossy());
        let file = frame.file.expect("tests build with debug info");
        assert!(file.ends_with("symbolize.rs"), "{file}");
        assert!(frame.line.is_some());
        // Cached: the same answer again.
        assert_eq!(symbolizer.symbolize(entry + 1).function, Some(function));
    }

    #[test]
    fn unmapped_and_anonymous_addresses_are_unknown() {
        let maps =
            ProcessMaps::parse("10000-20000 rw-p 0 00:00 0\n30000-31000 r-xp 0 00:00 0 [vdso]\n")
                .unwrap();
        let mut symbolizer = Symbolizer::new(&maps);
        let frame = symbolizer.symbolize(0x5000);
        assert_eq!(
            (frame.module.as_str(), frame.module_offset, frame.function),
            ("[unknown]", 0, None)
        );
        assert_eq!(symbolizer.symbolize(0x10010).module, "[unknown]");
        let vdso = symbolizer.symbolize(0x30010);
        assert_eq!((vdso.module.as_str(), vdso.module_offset), ("[vdso]", 0x10));
    }

    #[test]
    fn unreadable_module_is_reported_once() {
        let maps =
            ProcessMaps::parse("10000-20000 r-xp 0 00:00 1 /nonexistent/libgone.so\n").unwrap();
        let mut symbolizer = Symbolizer::new(&maps);
        let frame = symbolizer.symbolize(0x10100);
        assert_eq!(
            (frame.module.as_str(), frame.module_offset, frame.function),
            ("libgone.so", 0xff + 1, None)
        );
        symbolizer.symbolize(0x10200);
        let errors: Vec<String> = symbolizer.module_errors().map(|e| e.to_string()).collect();
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].starts_with("cannot read /nonexistent/libgone.so"),
            "{}",
            errors[0]
        );
    }
}
