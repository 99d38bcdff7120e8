//! The target's executable mappings, loaded for the DWARF unwinder on demand.
//!
//! The unwinder asks for the module of an address it does not know. The answer comes from the
//! union of the target's maps seen so far; when that has nothing there, `/proc/PID/maps` is
//! read again (a library dlopen'ed since), at most once per [`REREAD_INTERVAL`] unless the
//! address is in a page not asked about before (a 1 MiB region was too coarse: a library
//! dlopen'ed next to one asked about went unread, and unsymbolized once dlclose'd). Files are opened through
//! `/proc/PID/map_files/` (reaches deleted or replaced binaries), then `/proc/PID/root/PATH`,
//! then PATH (after the target exited), and each file is read once (keyed by device and
//! inode). Loaded modules stay loaded, so stacks drained after the target exited still unwind.
use std::{
    collections::{HashMap, HashSet},
    fs::File,
    os::unix::fs::MetadataExt as _,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use profiler_core::{
    maps::{Mapping, ProcessMaps},
    unwind::{ModuleImage, ModuleSet, ModuleSource},
};

/// Least time between two reads of `/proc/PID/maps` for addresses in already-tried regions.
const REREAD_INTERVAL: Duration = Duration::from_millis(100);
/// Regions (1 MiB) remembered as tried; beyond this only the interval rate-limits reads.
const MAX_TRIED_REGIONS: usize = 4096;

pub struct TargetModules {
    pid: u32,
    /// Union of the maps seen, so that modules stay findable after the target exited.
    maps: ProcessMaps,
    /// A maps read since the collector last took them (for symbolization).
    fresh_maps: Option<ProcessMaps>,
    images: HashMap<(u64, u64), Arc<ModuleImage>>,
    /// Mappings whose file could not be read, by (start, path): not retried.
    unreadable: HashSet<(u64, PathBuf)>,
    tried_regions: HashSet<u64>,
    last_read: Option<Instant>,
    /// Reads of `/proc/PID/maps` made for unknown addresses.
    pub rereads: u64,
    /// Filled by the launcher while the exiting target is stopped with its memory mapped
    /// (`run`): records drained after it died still find the libraries it had.
    exit_maps: Option<SharedMaps>,
}

/// Maps handed over from another thread.
pub type SharedMaps = Arc<Mutex<Option<ProcessMaps>>>;

impl TargetModules {
    pub fn new(pid: u32) -> TargetModules {
        TargetModules {
            pid,
            maps: ProcessMaps::default(),
            fresh_maps: None,
            images: HashMap::new(),
            unreadable: HashSet::new(),
            tried_regions: HashSet::new(),
            last_read: None,
            rereads: 0,
            exit_maps: None,
        }
    }

    /// Where the launcher leaves the maps it reads as the target exits.
    pub fn watch_exit_maps(&mut self, maps: SharedMaps) {
        self.exit_maps = Some(maps);
    }

    /// Adds a maps snapshot read elsewhere (the collector's periodic read, the exit read).
    pub fn merge(&mut self, maps: ProcessMaps) {
        self.maps.merge(maps);
    }

    /// The maps read here since the last call, for the collector's union.
    pub fn take_fresh_maps(&mut self) -> Option<ProcessMaps> {
        self.fresh_maps.take()
    }

    fn reread(&mut self) {
        self.last_read = Some(Instant::now());
        self.rereads += 1;
        let at_exit = self
            .exit_maps
            .as_ref()
            .and_then(|shared| shared.lock().ok()?.take());
        if let Some(maps) = at_exit {
            self.maps.merge(maps);
        }
        if let Ok(maps) = ProcessMaps::read(self.pid) {
            self.maps.merge(maps.clone());
            match &mut self.fresh_maps {
                Some(fresh) => fresh.merge(maps),
                None => self.fresh_maps = Some(maps),
            }
        }
    }

    /// Loads the executable file mapping containing `pc`, if it is not loaded yet.
    fn load(&mut self, pc: u64, modules: &mut ModuleSet) -> bool {
        let Some(mapping) = self
            .maps
            .find(pc)
            .filter(|m| m.is_file() && m.perms.contains('x'))
            .cloned()
        else {
            return false;
        };
        if modules
            .find(pc)
            .is_some_and(|m| m.range.start == mapping.start)
        {
            return true;
        }
        let key = (mapping.start, mapping.path.clone());
        if self.unreadable.contains(&key) {
            return false;
        }
        let loaded = self.image(&mapping).and_then(|image| {
            let bias = image.bias(mapping.start, mapping.offset)?;
            modules.add(mapping.start..mapping.end, bias, &image);
            Some(())
        });
        if loaded.is_none() {
            self.unreadable.insert(key);
        }
        loaded.is_some()
    }

    fn image(&mut self, mapping: &Mapping) -> Option<Arc<ModuleImage>> {
        let file = self.open(mapping)?;
        let meta = file.metadata().ok()?;
        let key = (meta.dev(), meta.ino());
        if let Some(image) = self.images.get(&key) {
            return Some(Arc::clone(image));
        }
        let image = ModuleImage::read(file, mapping.path.display().to_string()).ok()?;
        let image = Arc::new(image);
        self.images.insert(key, Arc::clone(&image));
        Some(image)
    }

    fn open(&self, mapping: &Mapping) -> Option<File> {
        profiler_core::module_file::open_mapped(self.pid, mapping).ok()
    }
}

impl TargetModules {
    /// Whether to read the maps again for an address they do not cover: at once for a page
    /// not asked about before, otherwise at most once per [`REREAD_INTERVAL`].
    fn reread_due(&mut self, pc: u64) -> bool {
        let new_region =
            self.tried_regions.len() < MAX_TRIED_REGIONS && self.tried_regions.insert(pc >> 12);
        new_region
            || self
                .last_read
                .is_none_or(|at| at.elapsed() >= REREAD_INTERVAL)
    }
}

impl ModuleSource for TargetModules {
    fn find_module(&mut self, pc: u64, modules: &mut ModuleSet) {
        if self.load(pc, modules) {
            return;
        }
        if self.reread_due(pc) {
            self.reread();
            self.load(pc, modules);
        }
    }

    fn maps_covering(&mut self, pc: u64) -> Option<&ProcessMaps> {
        if self.maps.find(pc).is_none() && self.reread_due(pc) {
            self.reread();
        }
        Some(&self.maps)
    }
}
