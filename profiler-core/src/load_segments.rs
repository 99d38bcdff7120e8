//! An ELF file's `PT_LOAD` segments: where a file offset sits in the file's own addresses.
//! The symbolizer and the unwinder both map process addresses back into files through them.

use object::{Object, ObjectSegment, ReadRef};

/// A `PT_LOAD` segment: file bytes `[file_offset, file_offset + file_size)` live at `vaddr`.
#[derive(Clone, Copy, Debug)]
struct Segment {
    file_offset: u64,
    file_size: u64,
    vaddr: u64,
}

/// The load segments of one ELF file.
#[derive(Clone, Debug, Default)]
pub struct LoadSegments(Vec<Segment>);

impl LoadSegments {
    pub fn of<'data, R: ReadRef<'data>>(file: &object::File<'data, R>) -> LoadSegments {
        LoadSegments(
            file.segments()
                .map(|segment| {
                    let (file_offset, file_size) = segment.file_range();
                    Segment {
                        file_offset,
                        file_size,
                        vaddr: segment.address(),
                    }
                })
                .collect(),
        )
    }

    /// The virtual address the byte at `offset` in the file is loaded at.
    pub fn vaddr_of(&self, offset: u64) -> Option<u64> {
        self.0
            .iter()
            .find(|s| offset >= s.file_offset && offset - s.file_offset < s.file_size)
            .map(|s| s.vaddr + (offset - s.file_offset))
    }

    /// The load bias of a mapping of this file at `start` from file offset `offset`: what to
    /// add to a file address (SVMA) to get the process address (AVMA). None when no load
    /// segment covers the offset.
    pub fn bias(&self, start: u64, offset: u64) -> Option<u64> {
        // ld.so maps each segment from its page-aligned file offset, so that is the segment
        // a mapping starts with; two segments may share a page (the end of one, the start of
        // the next), so an exact match comes before a segment merely containing the offset.
        let page_start = |s: &Segment| s.file_offset & !0xfff;
        let segment = self
            .0
            .iter()
            .find(|s| page_start(s) == offset)
            .or_else(|| {
                self.0
                    .iter()
                    .find(|s| page_start(s) <= offset && offset < s.file_offset + s.file_size)
            })?;
        // The byte at file offset `o` of this segment is at vaddr `o - file_offset + vaddr`.
        let svma = (offset + segment.vaddr).checked_sub(segment.file_offset)?;
        Some(start.wrapping_sub(svma))
    }
}
