//! Return addresses to function, file and line, with inlined functions expanded.
//!
//! addr -> mapping (from [`ProcessMaps`]) -> offset in the mapped file -> the ELF virtual
//! address that file offset is loaded at (via the PT_LOAD segment containing it) -> the symbol
//! covering that address (.symtab, the debug file's .symtab, else .dynsym) and, when DWARF is
//! found (in the object or in a separate debug file, see `debug_file.rs`), the chain of inlined
//! functions at that address with their file:line.
//! Going through file offsets makes PIE executables and shared libraries work without knowing
//! their load bias.
//!
//! Each module is parsed once, at report time; nothing here runs on the event path.

mod debug_file;
mod module;
mod recorded;

pub use debug_file::DEFAULT_DEBUG_ROOT;
pub use recorded::{
    RecordedAddress, RecordedFrame, RecordedModule, RecordedSymbols, RecordedSymbolsError,
};

use crate::fasthash::FastHashMap;
use crate::maps::{Mapping, ProcessMaps};
use crate::module_file;
use module::Module;

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
    /// A function the compiler inlined into the next (outer) frame at this address.
    pub inlined: bool,
}

/// An object file that was opened for symbolization, for the report's `modules` list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModuleInfo {
    /// Path as the target mapped it.
    pub path: PathBuf,
    /// NT_GNU_BUILD_ID as hex.
    pub build_id: Option<String>,
    /// The separate debug file whose DWARF was used.
    pub debug_file: Option<PathBuf>,
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
    /// The target, when its files should be opened through `/proc/PID/` (its mount namespace,
    /// and its mappings of deleted files while it lives).
    pid: Option<u32>,
    debug_root: PathBuf,
    modules: HashMap<PathBuf, Result<Module, ModuleError>>,
    /// The modules a recording's symbols came from ([`Symbolizer::with_recorded`]).
    recorded_modules: Vec<ModuleInfo>,
    frames: FastHashMap<u64, Vec<Frame>>,
}

impl Symbolizer {
    /// Opens modules by the paths in `maps`, as seen from this process.
    pub fn new(maps: &ProcessMaps) -> Self {
        Self {
            maps: maps.clone(),
            pid: None,
            debug_root: PathBuf::from(DEFAULT_DEBUG_ROOT),
            modules: HashMap::new(),
            recorded_modules: Vec::new(),
            frames: FastHashMap::default(),
        }
    }

    /// Opens modules the way process `pid` sees them: through `/proc/PID/map_files/` while it
    /// is alive (which also reaches deleted or replaced files), else `/proc/PID/root/PATH`,
    /// else PATH.
    pub fn for_process(maps: &ProcessMaps, pid: u32) -> Self {
        Self {
            pid: Some(pid),
            ..Self::new(maps)
        }
    }

    /// Takes over the modules `previous` opened that this process maps from the same file
    /// (same path, device and inode): the processes of a tree map the same libraries, and
    /// reading a module's symbols and DWARF again for each would cost the most.
    pub fn with_modules_of(mut self, previous: Symbolizer) -> Self {
        let file_id = |maps: &ProcessMaps, path: &Path| {
            maps.iter()
                .find(|mapping| mapping.path == path)
                .and_then(|mapping| mapping.file_id)
        };
        for (path, module) in previous.modules {
            let same = module.is_ok()
                && file_id(&self.maps, &path)
                    .is_some_and(|id| file_id(&previous.maps, &path) == Some(id));
            if same {
                self.modules.insert(path, module);
            }
        }
        self
    }

    /// Answers the addresses `symbols` holds as the session that recorded them did, without
    /// opening a file; other addresses are resolved as usual. The report lists the recorded
    /// modules among those opened.
    pub fn with_recorded(mut self, symbols: &RecordedSymbols) -> Self {
        self.frames.extend(symbols.frames());
        self.recorded_modules = symbols.modules().collect();
        self
    }

    /// Every address resolved so far with its frames, and the modules opened: what a
    /// recording carries so that its replay names frames the same way.
    pub fn recorded(&self) -> RecordedSymbols {
        let frames = self
            .frames
            .iter()
            .map(|(&address, frames)| (address, frames.as_slice()));
        RecordedSymbols::collect(frames, &self.modules())
    }

    /// Where separate debug files are looked for (default [`DEFAULT_DEBUG_ROOT`]).
    pub fn with_debug_root(mut self, root: &Path) -> Self {
        self.debug_root = root.to_owned();
        self
    }

    /// Symbolizes a return address to the function that contains it, the outermost of
    /// [`Symbolizer::frames`].
    pub fn symbolize(&mut self, address: u64) -> Frame {
        self.frames(address)
            .last()
            .cloned()
            .expect("every address has at least one frame")
    }

    /// Symbolizes a return address into its frames, innermost first: the functions inlined
    /// at the call site (`inlined: true`), then the function that contains it. The lookup
    /// uses `address - 1`: a call that is the last instruction of a function returns to the
    /// first byte of the next one.
    pub fn frames(&mut self, address: u64) -> &[Frame] {
        if !self.frames.contains_key(&address) {
            let frames = self.resolve(address);
            self.frames.insert(address, frames);
        }
        &self.frames[&address]
    }

    /// Modules that could not be loaded, with the reason (for a warning in the CLI).
    pub fn module_errors(&self) -> impl Iterator<Item = &ModuleError> {
        self.modules
            .values()
            .filter_map(|module| module.as_ref().err())
    }

    /// The modules opened so far, and those of recorded symbols, by path.
    pub fn modules(&self) -> Vec<ModuleInfo> {
        let mut modules: Vec<ModuleInfo> = self
            .modules
            .values()
            .filter_map(|module| module.as_ref().ok())
            .map(|module| module.info.clone())
            .chain(self.recorded_modules.iter().cloned())
            .collect();
        modules.sort_by(|a, b| a.path.cmp(&b.path));
        modules.dedup_by(|a, b| a.path == b.path);
        modules
    }

    fn resolve(&mut self, address: u64) -> Vec<Frame> {
        let mut frame = Frame {
            address,
            module: "[unknown]".to_owned(),
            module_offset: 0,
            function: None,
            file: None,
            line: None,
            inlined: false,
        };
        let probe = address.saturating_sub(1);
        let Some(mapping) = self.maps.find(probe) else {
            return vec![frame];
        };
        if mapping.path.as_os_str().is_empty() {
            return vec![frame]; // anonymous memory: JIT code or a corrupt stack
        }
        frame.module = mapping
            .path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_else(|| mapping.path.to_string_lossy().into_owned());
        frame.module_offset = mapping.file_offset(address);
        if !mapping.is_file() {
            return vec![frame]; // [vdso], [heap], ...
        }
        let probe_offset = mapping.file_offset(probe);
        let (pid, debug_root) = (self.pid, &self.debug_root);
        let module = self
            .modules
            .entry(mapping.path.clone())
            .or_insert_with(|| open_module(mapping, pid, debug_root));
        match module {
            Ok(module) => match module.vaddr_of(probe_offset) {
                Some(vaddr) => module.describe(vaddr, &frame),
                None => vec![frame],
            },
            Err(_) => vec![frame],
        }
    }
}

/// Reads the object behind `mapping` from the first place that has it.
fn open_module(
    mapping: &Mapping,
    pid: Option<u32>,
    debug_root: &Path,
) -> Result<Module, ModuleError> {
    let path = &mapping.path;
    let read = match pid {
        Some(pid) => module_file::open_mapped(pid, mapping).and_then(module_file::read_all),
        None if mapping.deleted => return Err(ModuleError::Deleted { path: path.clone() }),
        None => module_file::read(path),
    };
    let bytes = read.map_err(|source| {
        if mapping.deleted {
            ModuleError::Deleted { path: path.clone() }
        } else {
            ModuleError::Read {
                path: path.clone(),
                source,
            }
        }
    })?;
    Module::parse(Arc::from(bytes), path, debug_root).map_err(|source| ModuleError::Parse {
        path: path.clone(),
        source,
    })
}

#[cfg(test)]
mod tests;
