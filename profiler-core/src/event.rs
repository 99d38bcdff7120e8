//! Decoding ring-buffer records into [`Event`]s without copying or allocating.
//!
//! A record is an [`EventHeader`] (56 bytes, little-endian, `#[repr(C)]`) followed by
//! `stack_depth` u64 return addresses, innermost first (frame-pointer mode), or, when its flags
//! have `FLAG_STACK_SNAPSHOT`, by a [`StackSnapshot`] (32 bytes: ip, sp, bp, byte count, flags)
//! and that many bytes of user stack, for [`crate::unwind`] to turn into return addresses. Ring records are only 8-byte aligned by
//! convention, and callers may hand over slices of a larger buffer, so every field is read with
//! `from_le_bytes` at its offset rather than by casting a reference.

use profiler_common::{
    EVENT_HEADER_SIZE, EventHeader, EventKind, FLAG_STACK_MISSING, FLAG_STACK_NUMBERED,
    FLAG_STACK_SNAPSHOT, FLAG_STACK_TRUNCATED, SNAPSHOT_CUT, STACK_SNAPSHOT_SIZE, StackSnapshot,
};
use std::mem::offset_of;

/// Resolution of event times from [`decode`] on: a microsecond. Finer than what either capture
/// path can tell apart (a uprobe hit alone costs about a microsecond; a hooked call tens of
/// nanoseconds, jittered by the clock read), and what lets a recording hold a time in well
/// under a byte: the low bits of nanosecond deltas are noise that does not compress.
pub const CLOCK_TICK_NS: u64 = 1_000;

/// `ts_ns` rounded down to [`CLOCK_TICK_NS`]: what every consumer of a session sees, live or
/// replayed.
#[inline]
pub fn to_clock_tick(ts_ns: u64) -> u64 {
    ts_ns - ts_ns % CLOCK_TICK_NS
}

/// One probed call, as the kernel side saw it. Field meanings per kind are documented on
/// [`EventHeader`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub tid: u32,
    /// CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    pub addr: u64,
    pub size: u64,
    pub old_addr: u64,
    pub aux: u64,
    /// `FLAG_STACK_*` bits.
    pub flags: u32,
}

/// Events for tests: `Event::of(kind)` is a call of `kind` by thread 1 at time 0 with every
/// other field 0, and each setter sets one field.
#[cfg(test)]
impl Event {
    pub fn of(kind: EventKind) -> Event {
        Event {
            kind,
            tid: 1,
            ts_ns: 0,
            addr: 0,
            size: 0,
            old_addr: 0,
            aux: 0,
            flags: 0,
        }
    }

    pub fn addr(self, addr: u64) -> Event {
        Event { addr, ..self }
    }

    pub fn size(self, size: u64) -> Event {
        Event { size, ..self }
    }

    pub fn old(self, old_addr: u64) -> Event {
        Event { old_addr, ..self }
    }

    pub fn tid(self, tid: u32) -> Event {
        Event { tid, ..self }
    }

    pub fn at(self, ts_ns: u64) -> Event {
        Event { ts_ns, ..self }
    }

    pub fn aux(self, aux: u64) -> Event {
        Event { aux, ..self }
    }
}

impl Event {
    /// The probe cut the stack at its depth limit: the outermost frames are missing.
    pub fn stack_truncated(&self) -> bool {
        self.flags & FLAG_STACK_TRUNCATED != 0
    }

    /// The kernel could not read the user stack at all.
    pub fn stack_missing(&self) -> bool {
        self.flags & FLAG_STACK_MISSING != 0
    }
}

/// Why a record could not be decoded. Any of these means the producer and this decoder
/// disagree about the format (or the buffer was cut), never a property of the target.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("short record: {len} bytes, the event header alone is {EVENT_HEADER_SIZE}")]
    ShortRecord { len: usize },
    #[error("unknown event kind {kind}")]
    UnknownKind { kind: u32 },
    #[error(
        "stack depth {depth} exceeds record length: {len} bytes hold a header and {room} frames"
    )]
    StackTooDeep { depth: u32, len: usize, room: usize },
    #[error("stack snapshot of {stack_bytes} bytes exceeds record length {len}")]
    SnapshotTooLong { stack_bytes: u32, len: usize },
}

/// The stack part of a record: return addresses walked by the kernel, or a snapshot to unwind.
#[derive(Clone, Debug)]
pub enum RecordStack<'a> {
    Frames(Frames<'a>),
    Snapshot(Snapshot<'a>),
    /// Return addresses the in-process capture numbered (`FLAG_STACK_NUMBERED`): later
    /// records of the same stack carry only `number`.
    Define {
        number: u64,
        frames: Frames<'a>,
    },
    /// The stack the in-process capture defined as this number.
    Numbered(u64),
}

/// Registers and a copy of the user stack at a probed function's return (DWARF mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Snapshot<'a> {
    /// Return address into the caller: frame 0.
    pub ip: u64,
    /// The caller's stack pointer after the return: `stack[0]` is the byte at `sp`.
    pub sp: u64,
    pub bp: u64,
    pub stack: &'a [u8],
    /// The copy stopped at the byte limit: the stack goes on above `sp + stack.len()`.
    pub cut: bool,
}

/// The return addresses of one record, innermost first, read lazily from the record bytes.
#[derive(Clone, Debug)]
pub struct Frames<'a> {
    bytes: std::slice::ChunksExact<'a, u8>,
}

impl Frames<'_> {
    /// Replaces `buf`'s contents with these frames; reusing `buf` keeps the hot path free of
    /// allocations once it has grown to the deepest stack.
    pub fn copy_into(self, buf: &mut Vec<u64>) {
        buf.clear();
        buf.extend(self);
    }
}

impl Iterator for Frames<'_> {
    type Item = u64;

    #[inline]
    fn next(&mut self) -> Option<u64> {
        self.bytes
            .next()
            .map(|chunk| u64::from_le_bytes(chunk.try_into().expect("chunks of 8")))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.bytes.size_hint()
    }
}

impl ExactSizeIterator for Frames<'_> {}

#[inline]
fn read_u32(record: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(record[offset..offset + 4].try_into().expect("4 bytes"))
}

#[inline]
fn read_u64(record: &[u8], offset: usize) -> u64 {
    u64::from_le_bytes(record[offset..offset + 8].try_into().expect("8 bytes"))
}

/// Decodes one record. Bytes after the stack are ignored (the ring pads records to 8).
pub fn decode(record: &[u8]) -> Result<(Event, RecordStack<'_>), DecodeError> {
    if record.len() < EVENT_HEADER_SIZE {
        return Err(DecodeError::ShortRecord { len: record.len() });
    }
    let raw_kind = read_u32(record, offset_of!(EventHeader, kind));
    let kind = EventKind::from_u32(raw_kind).ok_or(DecodeError::UnknownKind { kind: raw_kind })?;
    let flags = read_u32(record, offset_of!(EventHeader, flags));
    let event = Event {
        kind,
        tid: read_u32(record, offset_of!(EventHeader, tid)),
        ts_ns: to_clock_tick(read_u64(record, offset_of!(EventHeader, ts_ns))),
        addr: read_u64(record, offset_of!(EventHeader, addr)),
        size: read_u64(record, offset_of!(EventHeader, size)),
        old_addr: read_u64(record, offset_of!(EventHeader, old_addr)),
        aux: read_u64(record, offset_of!(EventHeader, aux)),
        // How a stack travelled is not part of the event.
        flags: flags & !FLAG_STACK_NUMBERED,
    };
    if event.flags & FLAG_STACK_SNAPSHOT != 0 {
        return Ok((event, RecordStack::Snapshot(decode_snapshot(record)?)));
    }
    let numbered = flags & FLAG_STACK_NUMBERED != 0;
    let number_bytes = if numbered { 8 } else { 0 };
    let frames_start = EVENT_HEADER_SIZE + number_bytes;
    let depth = read_u32(record, offset_of!(EventHeader, stack_depth));
    let room = record.len().saturating_sub(frames_start) / 8;
    if depth as usize > room || record.len() < frames_start {
        return Err(DecodeError::StackTooDeep {
            depth,
            len: record.len(),
            room,
        });
    }
    let stack_end = frames_start + depth as usize * 8;
    let frames = Frames {
        bytes: record[frames_start..stack_end].chunks_exact(8),
    };
    if !numbered {
        return Ok((event, RecordStack::Frames(frames)));
    }
    let number = read_u64(record, EVENT_HEADER_SIZE);
    let stack = if depth == 0 {
        RecordStack::Numbered(number)
    } else {
        RecordStack::Define { number, frames }
    };
    Ok((event, stack))
}

fn decode_snapshot(record: &[u8]) -> Result<Snapshot<'_>, DecodeError> {
    let base = EVENT_HEADER_SIZE;
    let stack_start = base + STACK_SNAPSHOT_SIZE;
    if record.len() < stack_start {
        return Err(DecodeError::SnapshotTooLong {
            stack_bytes: 0,
            len: record.len(),
        });
    }
    let stack_bytes = read_u32(record, base + offset_of!(StackSnapshot, stack_bytes));
    let stack_end = stack_start + stack_bytes as usize;
    if stack_end > record.len() {
        return Err(DecodeError::SnapshotTooLong {
            stack_bytes,
            len: record.len(),
        });
    }
    Ok(Snapshot {
        ip: read_u64(record, base + offset_of!(StackSnapshot, ip)),
        sp: read_u64(record, base + offset_of!(StackSnapshot, sp)),
        bp: read_u64(record, base + offset_of!(StackSnapshot, bp)),
        stack: &record[stack_start..stack_end],
        cut: read_u32(record, base + offset_of!(StackSnapshot, flags)) & SNAPSHOT_CUT != 0,
    })
}

/// Serializes a header and frames the way the BPF program lays them out. The inverse of
/// [`decode`]; used by tests and by tools that replay recordings.
pub fn encode(header: &EventHeader, frames: &[u64], out: &mut Vec<u8>) {
    out.extend_from_slice(&header.kind.to_le_bytes());
    out.extend_from_slice(&header.tid.to_le_bytes());
    out.extend_from_slice(&header.ts_ns.to_le_bytes());
    out.extend_from_slice(&header.addr.to_le_bytes());
    out.extend_from_slice(&header.size.to_le_bytes());
    out.extend_from_slice(&header.old_addr.to_le_bytes());
    out.extend_from_slice(&header.aux.to_le_bytes());
    out.extend_from_slice(&header.stack_depth.to_le_bytes());
    out.extend_from_slice(&header.flags.to_le_bytes());
    for frame in frames {
        out.extend_from_slice(&frame.to_le_bytes());
    }
}

/// Serializes a header (which must have `FLAG_STACK_SNAPSHOT`), a snapshot and its stack
/// bytes the way the BPF program lays them out. The inverse of [`decode`] for DWARF mode.
pub fn encode_snapshot(
    header: &EventHeader,
    snapshot: &StackSnapshot,
    stack: &[u8],
    out: &mut Vec<u8>,
) {
    encode(header, &[], out);
    out.extend_from_slice(&snapshot.ip.to_le_bytes());
    out.extend_from_slice(&snapshot.sp.to_le_bytes());
    out.extend_from_slice(&snapshot.bp.to_le_bytes());
    out.extend_from_slice(&snapshot.stack_bytes.to_le_bytes());
    out.extend_from_slice(&snapshot.flags.to_le_bytes());
    out.extend_from_slice(stack);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(kind: EventKind, depth: u32) -> EventHeader {
        EventHeader {
            kind: kind as u32,
            tid: 4242,
            ts_ns: 1_000_000_007,
            addr: 0x5555_0000_1230,
            size: 48,
            old_addr: 0x5555_0000_0ff0,
            aux: 16,
            stack_depth: depth,
            flags: FLAG_STACK_TRUNCATED,
        }
    }

    /// The hand-written encoder must agree with the in-memory `#[repr(C)]` layout the BPF side
    /// writes, or the round trip below would prove nothing.
    #[test]
    fn encode_matches_repr_c_layout() {
        let h = header(EventKind::Realloc, 0);
        let mut bytes = Vec::new();
        encode(&h, &[], &mut bytes);
        // SAFETY: EventHeader is repr(C), Copy, with explicit padding-free u32/u64 fields.
        let raw = unsafe {
            std::slice::from_raw_parts((&h as *const EventHeader).cast::<u8>(), EVENT_HEADER_SIZE)
        };
        assert_eq!(bytes, raw);
    }

    #[test]
    fn round_trip_with_frames() {
        let frames = [0x401000, 0x401234, 0x7f00_dead_beef];
        let mut bytes = Vec::new();
        encode(&header(EventKind::Realloc, 3), &frames, &mut bytes);
        let (event, RecordStack::Frames(decoded)) = decode(&bytes).unwrap() else {
            panic!("frames expected");
        };
        assert_eq!(
            event,
            Event {
                kind: EventKind::Realloc,
                tid: 4242,
                // Rounded down to the microsecond.
                ts_ns: 1_000_000_000,
                addr: 0x5555_0000_1230,
                size: 48,
                old_addr: 0x5555_0000_0ff0,
                aux: 16,
                flags: FLAG_STACK_TRUNCATED,
            }
        );
        assert!(event.stack_truncated());
        assert!(!event.stack_missing());
        assert_eq!(decoded.len(), 3);
        assert_eq!(decoded.collect::<Vec<_>>(), frames);
    }

    #[test]
    fn decodes_unaligned_records_and_ignores_padding() {
        let mut bytes = vec![0xAA]; // shift everything by one byte
        encode(&header(EventKind::Malloc, 2), &[7, 9], &mut bytes);
        bytes.extend_from_slice(&[0; 8]); // ring padding
        let (event, RecordStack::Frames(frames)) = decode(&bytes[1..]).unwrap() else {
            panic!("frames expected");
        };
        assert_eq!(event.kind, EventKind::Malloc);
        let mut buf = vec![1, 2, 3, 4];
        frames.copy_into(&mut buf);
        assert_eq!(buf, [7, 9]);
    }

    #[test]
    fn rejects_short_record() {
        let mut bytes = Vec::new();
        encode(&header(EventKind::Free, 0), &[], &mut bytes);
        assert_eq!(
            decode(&bytes[..55]).unwrap_err(),
            DecodeError::ShortRecord { len: 55 }
        );
    }

    #[test]
    fn rejects_unknown_kind() {
        let mut bytes = Vec::new();
        let mut h = header(EventKind::Free, 0);
        h.kind = 16;
        encode(&h, &[], &mut bytes);
        assert_eq!(
            decode(&bytes).unwrap_err(),
            DecodeError::UnknownKind { kind: 16 }
        );
        h.kind = 0;
        bytes.clear();
        encode(&h, &[], &mut bytes);
        assert_eq!(
            decode(&bytes).unwrap_err(),
            DecodeError::UnknownKind { kind: 0 }
        );
    }

    #[test]
    fn rejects_stack_deeper_than_record() {
        let mut bytes = Vec::new();
        encode(&header(EventKind::Malloc, 3), &[1, 2], &mut bytes);
        bytes.extend_from_slice(&[0; 7]); // 7 bytes: not a whole frame
        let err = decode(&bytes).unwrap_err();
        assert_eq!(
            err,
            DecodeError::StackTooDeep {
                depth: 3,
                len: 56 + 16 + 7,
                room: 2
            }
        );
        assert_eq!(
            err.to_string(),
            "stack depth 3 exceeds record length: 79 bytes hold a header and 2 frames"
        );
    }

    #[test]
    fn snapshot_round_trip() {
        let mut h = header(EventKind::Malloc, 0);
        h.flags = FLAG_STACK_SNAPSHOT;
        let stack: Vec<u8> = (0..24).collect();
        let snapshot = StackSnapshot {
            ip: 0x401234,
            sp: 0x7ffd_0000_1000,
            bp: 0x7ffd_0000_1040,
            stack_bytes: 24,
            flags: SNAPSHOT_CUT,
        };
        let mut bytes = Vec::new();
        encode_snapshot(&h, &snapshot, &stack, &mut bytes);
        assert_eq!(bytes.len(), 56 + 32 + 24);
        // SAFETY: StackSnapshot is repr(C) with padding-free u32/u64 fields.
        let raw = unsafe {
            std::slice::from_raw_parts(
                (&snapshot as *const StackSnapshot).cast::<u8>(),
                STACK_SNAPSHOT_SIZE,
            )
        };
        assert_eq!(&bytes[56..88], raw);
        bytes.extend_from_slice(&[0; 8]); // ring padding
        let (event, RecordStack::Snapshot(decoded)) = decode(&bytes).unwrap() else {
            panic!("snapshot expected");
        };
        assert_eq!(event.kind, EventKind::Malloc);
        assert_eq!(
            decoded,
            Snapshot {
                ip: 0x401234,
                sp: 0x7ffd_0000_1000,
                bp: 0x7ffd_0000_1040,
                stack: &stack,
                cut: true,
            }
        );
    }

    #[test]
    fn rejects_snapshot_longer_than_record() {
        let mut h = header(EventKind::Malloc, 0);
        h.flags = FLAG_STACK_SNAPSHOT;
        let snapshot = StackSnapshot {
            stack_bytes: 64,
            ..StackSnapshot::default()
        };
        let mut bytes = Vec::new();
        encode_snapshot(&h, &snapshot, &[0; 16], &mut bytes);
        assert_eq!(
            decode(&bytes).unwrap_err(),
            DecodeError::SnapshotTooLong {
                stack_bytes: 64,
                len: 56 + 32 + 16
            }
        );
        assert_eq!(
            decode(&bytes[..60]).unwrap_err(),
            DecodeError::SnapshotTooLong {
                stack_bytes: 0,
                len: 60
            }
        );
    }

    /// A numbered definition carries its number before the frames, a numbered reference only
    /// the number; the flag itself is dropped, and a record too short for its number or
    /// frames is refused.
    #[test]
    fn numbered_stacks_decode_to_their_number() {
        let mut header = header(EventKind::Malloc, 2);
        header.flags = FLAG_STACK_NUMBERED;
        let mut bytes = Vec::new();
        encode(&header, &[7, 0x401000, 0x402000], &mut bytes);
        let (event, RecordStack::Define { number, frames }) = decode(&bytes).unwrap() else {
            panic!("a definition expected");
        };
        assert_eq!((number, event.flags), (7, 0));
        assert_eq!(frames.collect::<Vec<_>>(), [0x401000, 0x402000]);

        header.stack_depth = 0;
        bytes.clear();
        encode(&header, &[7], &mut bytes);
        let (_, stack) = decode(&bytes).unwrap();
        assert!(matches!(stack, RecordStack::Numbered(7)), "{stack:?}");

        bytes.truncate(EVENT_HEADER_SIZE + 4);
        assert!(matches!(
            decode(&bytes),
            Err(DecodeError::StackTooDeep { .. })
        ));
        header.stack_depth = 3;
        bytes.clear();
        encode(&header, &[7, 0x401000, 0x402000], &mut bytes);
        assert!(matches!(
            decode(&bytes),
            Err(DecodeError::StackTooDeep { .. })
        ));
    }
}
