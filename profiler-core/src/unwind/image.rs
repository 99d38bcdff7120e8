//! What the unwinder needs from one ELF file: its call-frame sections and its load segments.
//!
//! Only `.eh_frame` and `.eh_frame_hdr` (or `.debug_frame` when there is no `.eh_frame`) are
//! read, through a read cache, so a binary with hundreds of MiB of debug info costs a few
//! hundred KiB here. The data is shared (`Arc`) by every mapping of the file.

use std::fs::File;
use std::ops::Range;
use std::sync::Arc;

use object::{Object, ObjectSection, ReadCache, ReadRef};

use crate::load_segments::LoadSegments;

/// Why a module's unwind information could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{name}: {reason}")]
pub struct ImageError {
    pub name: String,
    pub reason: String,
}

/// One section framehop may ask for: its address in the file's own address space (SVMA) and,
/// for the sections it reads, its bytes.
#[derive(Debug)]
struct Section {
    name: &'static [u8],
    svma: Range<u64>,
    data: Option<Arc<[u8]>>,
}

/// The unwind sections and load segments of one ELF file.
#[derive(Debug)]
pub struct ModuleImage {
    pub name: String,
    sections: Vec<Section>,
    segments: LoadSegments,
}

/// Sections whose address framehop uses as a DWARF base (`.text`, `.got`) or reads.
const WANTED: [&[u8]; 5] = [
    b".eh_frame",
    b".eh_frame_hdr",
    b".debug_frame",
    b".text",
    b".got",
];

impl ModuleImage {
    /// Reads the unwind sections of an open ELF file.
    pub fn read(file: File, name: impl Into<String>) -> Result<ModuleImage, ImageError> {
        let cache = ReadCache::new(file);
        Self::parse(&cache, name.into())
    }

    /// Reads the unwind sections of an ELF file held in memory.
    pub fn from_bytes(data: &[u8], name: impl Into<String>) -> Result<ModuleImage, ImageError> {
        Self::parse(data, name.into())
    }

    fn parse<'data, R: ReadRef<'data>>(data: R, name: String) -> Result<ModuleImage, ImageError> {
        let fail = |reason: String| ImageError {
            name: name.clone(),
            reason,
        };
        let file = object::File::parse(data).map_err(|e| fail(e.to_string()))?;
        let has_eh_frame = file.section_by_name(".eh_frame").is_some();
        let mut sections = Vec::new();
        for wanted in WANTED {
            let Some(section) = file.section_by_name_bytes(wanted) else {
                continue;
            };
            let read = match wanted {
                b".eh_frame" | b".eh_frame_hdr" => true,
                b".debug_frame" => !has_eh_frame,
                _ => false,
            };
            let data = if read {
                let bytes = section
                    .uncompressed_data()
                    .map_err(|e| fail(format!("{}: {e}", String::from_utf8_lossy(wanted))))?;
                Some(Arc::from(&*bytes))
            } else {
                None
            };
            let start = section.address();
            sections.push(Section {
                name: wanted,
                svma: start..start + section.size(),
                data,
            });
        }
        let segments = LoadSegments::of(&file);
        Ok(ModuleImage {
            name,
            sections,
            segments,
        })
    }

    /// Whether the file has call-frame information at all.
    pub fn has_unwind_info(&self) -> bool {
        self.sections.iter().any(|s| s.data.is_some())
    }

    /// The load bias of a mapping of this file at `start` from file offset `offset`: what to
    /// add to a file address (SVMA) to get the process address (AVMA). None when no load
    /// segment covers the offset.
    pub fn bias(&self, start: u64, offset: u64) -> Option<u64> {
        self.segments.bias(start, offset)
    }

    /// The framehop view of this image.
    pub(super) fn section_info(&self) -> SectionInfo<'_> {
        SectionInfo(self)
    }
}

/// Hands framehop the sections of a [`ModuleImage`]; SVMAs are the ELF addresses, base 0.
pub(super) struct SectionInfo<'a>(&'a ModuleImage);

impl framehop::ModuleSectionInfo<Arc<[u8]>> for SectionInfo<'_> {
    fn base_svma(&self) -> u64 {
        0
    }

    fn section_svma_range(&mut self, name: &[u8]) -> Option<Range<u64>> {
        let section = self.0.sections.iter().find(|s| s.name == name)?;
        Some(section.svma.clone())
    }

    fn section_data(&mut self, name: &[u8]) -> Option<Arc<[u8]>> {
        let section = self.0.sections.iter().find(|s| s.name == name)?;
        section.data.clone()
    }
}
