//! Record encoding shared by the writer and the reader: tags, varints, and the delta state
//! both sides keep in step.

use super::recent::RecentBlocks;
use crate::event::{CLOCK_TICK_NS, Event};
use crate::fasthash::FastHashMap;
use crate::heap::{Block, Lookup, RecordedLookups};
use crate::stacks::StackId;
use profiler_common::EventKind;

pub const TAG_STACK: u8 = 0x00;
pub const TAG_MAPS: u8 = 0x10;
pub const TAG_RSS: u8 = 0x20;
pub const TAG_TRAILER: u8 = 0x30;
pub const TAG_LOST: u8 = 0x40;
/// Non-event tags from here on (high nibble 5-15) are record types added after version 2:
/// each is a varint length and that many bytes, so a reader that does not know one skips it.
pub const FIRST_SKIPPABLE_TAG: u8 = 0x50;
/// The blocks live at the end, before the trailer (version 4 on; see [`put_block`]).
pub const TAG_LIVE_BLOCKS: u8 = 0x70;
/// The fragmentation at the peak the session's report gave (version 4 on), before the live
/// blocks: JSON `Option<FragmentationSnapshot>`.
pub const TAG_PEAK_FRAGMENTATION: u8 = 0x80;
/// The frames the session's report named ([`RecordedSymbols`](crate::symbolize::RecordedSymbols)
/// as JSON), before the trailer.
pub const TAG_SYMBOLS: u8 = 0x60;

/// The low nibble of an event tag holds its kind when below this; this value (version 2 on)
/// says the kind follows the tag as a varint instead, which leaves room for any number of
/// kinds. Version 1 used 15 for `OperatorDelete`.
pub const KIND_ESCAPE: u8 = 0x0f;

const EVENT_TID: u8 = 1 << 4;
const EVENT_STACK: u8 = 1 << 5;
const EVENT_EXTRAS: u8 = 1 << 6;
const EVENT_SIZE: u8 = 1 << 7;

/// Deepest stack a reader accepts: well above any unwinder's limit, low enough that a corrupt
/// count cannot make it allocate much.
const MAX_FRAMES: u64 = 1024;

const EXTRA_OLD_ADDR: u8 = 1 << 0;
const EXTRA_AUX: u8 = 1 << 1;
const EXTRA_FLAGS: u8 = 1 << 2;
/// Version 4 on: the answers of the event's heap lookups that the reader's ring cannot infer
/// (`heap/block_store.rs`) follow the flags.
const EXTRA_LOOKUPS: u8 = 1 << 3;

/// Codes of a recorded lookup answer.
const FOUND_ABSENT: u64 = 0;
const FOUND_LIVE: u64 = 1;
const FOUND_FREED: u64 = 2;

/// What blocks have in common, which a recording defines once and names by number: the
/// first use of an info carries it, later ones its number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RecordedInfo {
    pub size: u64,
    pub kind: EventKind,
    pub tid: u32,
    pub stack: Option<StackId>,
}

impl RecordedInfo {
    fn of(block: &Block) -> RecordedInfo {
        RecordedInfo {
            size: block.size,
            kind: block.kind,
            tid: block.tid,
            stack: block.stack,
        }
    }
}

/// The writer's numbers of the infos it defined. Keyed by the info packed into two words
/// (hashed and compared as integers, once per answer that names a block: 6 million on
/// python3), or whole for a size of 2^56 or more or the last stack id (neither happens).
#[derive(Debug, Default)]
pub struct InfoNumbers {
    packed: FastHashMap<(u64, u64), u64>,
    whole: FastHashMap<RecordedInfo, u64>,
}

/// Bits of a packed key's first word holding the size; the kind sits above them.
const PACKED_SIZE_BITS: u32 = 56;

impl InfoNumbers {
    /// The number of `info`, and whether this is its first use (it was just given one).
    #[inline]
    fn number(&mut self, info: &RecordedInfo) -> (u64, bool) {
        let next = (self.packed.len() + self.whole.len()) as u64;
        // The stack id + 1 in 32 bits (0: none).
        let stack = match info.stack {
            None => Some(0),
            Some(id) => id.0.checked_add(1),
        };
        let number = match stack {
            Some(stack) if info.size >> PACKED_SIZE_BITS == 0 => {
                let key = (
                    (info.kind as u64) << PACKED_SIZE_BITS | info.size,
                    u64::from(info.tid) << 32 | u64::from(stack),
                );
                *self.packed.entry(key).or_insert(next)
            }
            _ => *self.whole.entry(*info).or_insert(next),
        };
        (number, number == next)
    }
}

/// What each side remembers between records: deltas are taken from it.
#[derive(Clone, Debug)]
pub struct DeltaState {
    pub tid: u32,
    /// Time of the previous event or RSS sample, in this file's unit ([`DeltaState::ticks`]).
    pub ts_ticks: u64,
    pub addr: u64,
    /// Version 3 on: times are in ticks of [`CLOCK_TICK_NS`], and addresses are named by
    /// their distance in `created` or `released` when they can. Before: nanoseconds and
    /// address deltas only.
    compact: bool,
    /// Version 4 on: events may carry lookup answers ([`put_lookups`]).
    lookups: bool,
    /// Addresses of the last events with a size (the blocks they created), which an event
    /// without one (a free) names.
    created: RecentBlocks,
    /// Addresses of the last events without a size (the blocks they released), which an
    /// allocation handed the same address again (a free list's head) names.
    released: RecentBlocks,
    /// The reader's block infos, by number (the writer's are in [`InfoNumbers`]).
    infos: Vec<RecordedInfo>,
}

impl DeltaState {
    /// The state at the start of a file of format `version` whose header gives `start_ns`.
    pub fn new(version: u32, start_ns: u64) -> DeltaState {
        let mut state = DeltaState {
            tid: 0,
            ts_ticks: 0,
            addr: 0,
            compact: version >= 3,
            lookups: version >= 4,
            created: RecentBlocks::default(),
            released: RecentBlocks::default(),
            infos: Vec::new(),
        };
        state.ts_ticks = state.ticks(start_ns);
        state
    }

    /// The recent addresses an event looks its address up in, and those it adds it to.
    #[inline]
    fn sides(&mut self, sized: bool) -> (&mut RecentBlocks, &mut RecentBlocks) {
        if sized {
            (&mut self.released, &mut self.created)
        } else {
            (&mut self.created, &mut self.released)
        }
    }

    /// `ts_ns` in this file's time unit (rounded down).
    #[inline]
    pub fn ticks(&self, ts_ns: u64) -> u64 {
        if self.compact {
            ts_ns / CLOCK_TICK_NS
        } else {
            ts_ns
        }
    }

    /// Nanoseconds of a time in this file's unit (wrapping: a corrupt file cannot panic).
    #[inline]
    pub fn nanoseconds(&self, ticks: u64) -> u64 {
        if self.compact {
            ticks.wrapping_mul(CLOCK_TICK_NS)
        } else {
            ticks
        }
    }
}

#[inline]
pub fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

#[inline]
fn zigzag(delta: u64) -> u64 {
    let delta = delta as i64;
    ((delta << 1) ^ (delta >> 63)) as u64
}

#[inline]
fn unzigzag(value: u64) -> u64 {
    ((value >> 1) as i64 ^ -((value & 1) as i64)) as u64
}

/// `value - base` (wrapping), zigzag-encoded.
#[inline]
pub fn put_delta(out: &mut Vec<u8>, value: u64, base: u64) {
    put_varint(out, zigzag(value.wrapping_sub(base)));
}

/// Appends one event record.
#[inline]
#[cfg(test)]
pub fn put_event(out: &mut Vec<u8>, state: &mut DeltaState, event: &Event, stack: Option<StackId>) {
    put_event_of_kind(out, state, event.kind as u8, event, stack, &[]);
}

/// Appends one event record with its encoded lookup answers (`lookups`, from
/// [`put_lookups`]; empty when the ring infers them all).
#[inline]
pub fn put_answered_event(
    out: &mut Vec<u8>,
    state: &mut DeltaState,
    event: &Event,
    stack: Option<StackId>,
    lookups: &[u8],
) {
    put_event_of_kind(out, state, event.kind as u8, event, stack, lookups);
}

/// Encodes the answers of `answers` that are recorded, for an event at `ts_ns`: a mask of
/// which lookups they answer, then each answer (nothing when none is recorded).
pub fn put_lookups(
    out: &mut Vec<u8>,
    infos: &mut InfoNumbers,
    answers: &RecordedLookups,
    ts_ns: u64,
) {
    let mask = answers
        .iter()
        .enumerate()
        .filter(|(_, answer)| answer.is_some())
        .fold(0u8, |mask, (i, _)| mask | 1 << i);
    if mask == 0 {
        return;
    }
    out.push(mask);
    for answer in answers.iter().flatten() {
        match answer {
            Lookup::Absent => put_varint(out, FOUND_ABSENT),
            Lookup::Live(block) => {
                put_varint(out, FOUND_LIVE);
                put_block(out, infos, block, ts_ns);
            }
            Lookup::Freed { size, stack } => {
                put_varint(out, FOUND_FREED);
                put_varint(out, *size);
                put_varint(out, stack.map_or(0, |id| u64::from(id.0) + 1));
            }
        }
    }
}

/// A block: its info's number + 1, or 0 and the info (size, kind, tid, stack id + 1 or 0),
/// then its allocation time in ticks, zigzag from `base_ns`'s.
pub fn put_block(out: &mut Vec<u8>, infos: &mut InfoNumbers, block: &Block, base_ns: u64) {
    let info = RecordedInfo::of(block);
    let (number, first) = infos.number(&info);
    if first {
        put_varint(out, 0);
        put_varint(out, info.size);
        put_varint(out, info.kind as u64);
        put_varint(out, u64::from(info.tid));
        put_varint(out, info.stack.map_or(0, |id| u64::from(id.0) + 1));
    } else {
        put_varint(out, number + 1);
    }
    put_delta(out, block.ts_ns / CLOCK_TICK_NS, base_ns / CLOCK_TICK_NS);
}

/// Appends one event record of kind `kind` (any number, for tests of kinds a later memprof
/// adds; `event.kind` is not read).
pub fn put_event_of_kind(
    out: &mut Vec<u8>,
    state: &mut DeltaState,
    kind: u8,
    event: &Event,
    stack: Option<StackId>,
    lookups: &[u8],
) {
    let mut tag = kind.min(KIND_ESCAPE);
    let mut extras = 0u8;
    if !lookups.is_empty() {
        extras |= EXTRA_LOOKUPS;
    }
    if event.old_addr != 0 {
        extras |= EXTRA_OLD_ADDR;
    }
    if event.aux != 0 {
        extras |= EXTRA_AUX;
    }
    if event.flags != 0 {
        extras |= EXTRA_FLAGS;
    }
    if event.tid != state.tid {
        tag |= EVENT_TID;
    }
    if stack.is_some() {
        tag |= EVENT_STACK;
    }
    if extras != 0 {
        tag |= EVENT_EXTRAS;
    }
    if event.size != 0 {
        tag |= EVENT_SIZE;
    }
    out.push(tag);
    if kind >= KIND_ESCAPE {
        put_varint(out, u64::from(kind));
    }
    if event.tid != state.tid {
        put_varint(out, u64::from(event.tid));
    }
    let ticks = state.ticks(event.ts_ns);
    put_delta(out, ticks, state.ts_ticks);
    put_address(out, state, event);
    if event.size != 0 {
        put_varint(out, event.size);
    }
    if extras != 0 {
        out.push(extras);
        if event.old_addr != 0 {
            put_delta(out, event.old_addr, event.addr);
        }
        if event.aux != 0 {
            put_varint(out, event.aux);
        }
        if event.flags != 0 {
            put_varint(out, u64::from(event.flags));
        }
        out.extend_from_slice(lookups);
    }
    if let Some(id) = stack {
        put_varint(out, u64::from(id.0));
    }
    state.tid = event.tid;
    state.ts_ticks = ticks;
    state.addr = event.addr;
}

/// An event's address: a zigzag delta from the previous event's. From version 3 on, first the
/// distance of the address in the recent addresses of the other side (1 to
/// [`recent::WINDOW`](super::recent::WINDOW), or 0: the delta follows): an event without a size
/// (a free) looks in the blocks recently created, one with a size in those recently released.
#[inline]
fn put_address(out: &mut Vec<u8>, state: &mut DeltaState, event: &Event) {
    if state.compact {
        let (look_in, push_to) = state.sides(event.size != 0);
        push_to.push(event.addr);
        if let Some(distance) = look_in.find(event.addr) {
            put_varint(out, distance);
            return;
        }
        out.push(0);
    }
    put_delta(out, event.addr, state.addr);
}

/// Appends a stack definition: count, truncated, first frame, then deltas between frames
/// (frames of one stack are mostly in the same few modules, so the deltas are short).
pub fn put_stack(out: &mut Vec<u8>, frames: &[u64], truncated: bool) {
    out.push(TAG_STACK);
    put_varint(out, frames.len() as u64);
    out.push(u8::from(truncated));
    let mut previous = 0;
    for &frame in frames {
        put_delta(out, frame, previous);
        previous = frame;
    }
}

/// A tagged record holding a length-prefixed blob (JSON).
pub fn put_blob(out: &mut Vec<u8>, tag: u8, blob: &[u8]) {
    out.push(tag);
    put_varint(out, blob.len() as u64);
    out.extend_from_slice(blob);
}

pub fn put_rss(out: &mut Vec<u8>, state: &mut DeltaState, ts_ns: u64, bytes: u64) {
    out.push(TAG_RSS);
    let ticks = state.ticks(ts_ns);
    put_delta(out, ticks, state.ts_ticks);
    put_varint(out, bytes);
    state.ts_ticks = ticks;
}

/// Longest LEB128 encoding of a u64.
const MAX_VARINT_BYTES: usize = 10;

/// Decodes one varint from the bytes `next` yields (at most [`MAX_VARINT_BYTES`] calls).
#[inline(always)]
fn varint_from(mut next: impl FnMut() -> DecodeResult<u8>) -> DecodeResult<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = next()?;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            if shift == 63 && byte > 1 {
                return Err("varint overflows 64 bits");
            }
            return Ok(value);
        }
    }
    Err("varint longer than 10 bytes")
}

/// Why a record did not decode; the reader adds where.
pub type DecodeResult<T> = Result<T, &'static str>;

/// Reads records from one chunk's decompressed bytes.
pub struct Cursor<'a> {
    pub bytes: &'a [u8],
    pub pos: usize,
}

impl<'a> Cursor<'a> {
    #[inline]
    pub fn byte(&mut self) -> DecodeResult<u8> {
        let byte = *self
            .bytes
            .get(self.pos)
            .ok_or("record cut at the end of its chunk")?;
        self.pos += 1;
        Ok(byte)
    }

    /// One LEB128 varint. Away from the end of the chunk it is read from a fixed window that
    /// holds the longest varint, with no bounds check per byte; the one- and two-byte values
    /// that make up most of a recording (deltas, sizes, stack ids) take the shortest path.
    #[inline(always)]
    pub fn varint(&mut self) -> DecodeResult<u64> {
        let window = self
            .bytes
            .get(self.pos..)
            .and_then(|rest| rest.first_chunk::<MAX_VARINT_BYTES>());
        let Some(window) = window else {
            return self.varint_near_end();
        };
        let (low, high) = (window[0], window[1]);
        if low < 0x80 {
            self.pos += 1;
            return Ok(u64::from(low));
        }
        if high < 0x80 {
            self.pos += 2;
            return Ok(u64::from(low & 0x7f) | u64::from(high) << 7);
        }
        let mut read = 0;
        let value = varint_from(|| {
            let byte = window[read];
            read += 1;
            Ok(byte)
        });
        self.pos += read;
        value
    }

    /// Byte by byte, so that a varint cut by the end of the chunk is reported as such.
    #[cold]
    fn varint_near_end(&mut self) -> DecodeResult<u64> {
        varint_from(|| self.byte())
    }

    #[inline(always)]
    pub fn delta(&mut self, base: u64) -> DecodeResult<u64> {
        Ok(base.wrapping_add(unzigzag(self.varint()?)))
    }

    #[inline(always)]
    pub fn u32(&mut self, what: &'static str) -> DecodeResult<u32> {
        u32::try_from(self.varint()?).map_err(|_| what)
    }

    pub fn blob(&mut self) -> DecodeResult<&'a [u8]> {
        let len = self.varint()?;
        let available = (self.bytes.len() - self.pos) as u64;
        if len > available {
            return Err("blob longer than its chunk");
        }
        let blob = &self.bytes[self.pos..self.pos + len as usize];
        self.pos += len as usize;
        Ok(blob)
    }

    /// The kind of an event whose tag is `tag`, in a file of format `version` (the varint
    /// after the tag for [`KIND_ESCAPE`] from version 2 on).
    #[inline]
    pub fn event_kind(&mut self, tag: u8, version: u32) -> DecodeResult<u64> {
        match tag & 0x0f {
            KIND_ESCAPE if version >= 2 => self.varint(),
            nibble => Ok(u64::from(nibble)),
        }
    }

    /// Decodes the body of an event whose tag is `tag` into `out` (of kind `kind`) and
    /// returns its stack; `stacks` is how many stacks are defined so far (an id beyond them
    /// is corruption). `out` is written in place rather than returned: moving a decoded event
    /// through a few return values costs more than decoding it.
    #[inline]
    pub fn event(
        &mut self,
        tag: u8,
        kind: EventKind,
        state: &mut DeltaState,
        stacks: u32,
        out: &mut Event,
        lookups: &mut RecordedLookups,
    ) -> DecodeResult<Option<StackId>> {
        if tag & EVENT_TID != 0 {
            state.tid = self.u32("thread id above 32 bits")?;
        }
        state.ts_ticks = self.delta(state.ts_ticks)?;
        let sized = tag & EVENT_SIZE != 0;
        state.addr = self.address(state, sized)?;
        let size = if sized { self.varint()? } else { 0 };
        let (mut old_addr, mut aux, mut flags) = (0, 0, 0);
        if tag & EVENT_EXTRAS != 0 {
            let extras = self.byte()?;
            let known = if state.lookups {
                EXTRA_OLD_ADDR | EXTRA_AUX | EXTRA_FLAGS | EXTRA_LOOKUPS
            } else {
                EXTRA_OLD_ADDR | EXTRA_AUX | EXTRA_FLAGS
            };
            if extras & !known != 0 {
                return Err("unknown event extras bits");
            }
            if extras & EXTRA_OLD_ADDR != 0 {
                old_addr = self.delta(state.addr)?;
            }
            if extras & EXTRA_AUX != 0 {
                aux = self.varint()?;
            }
            if extras & EXTRA_FLAGS != 0 {
                flags = self.u32("event flags above 32 bits")?;
            }
            if extras & EXTRA_LOOKUPS != 0 {
                let ts_ns = state.nanoseconds(state.ts_ticks);
                self.lookups(state, ts_ns, lookups)?;
            }
        }
        let stack = if tag & EVENT_STACK != 0 {
            let id = self.u32("stack id above 32 bits")?;
            if id >= stacks {
                return Err("event names a stack not defined before it");
            }
            Some(StackId(id))
        } else {
            None
        };
        *out = Event {
            kind,
            tid: state.tid,
            ts_ns: state.nanoseconds(state.ts_ticks),
            addr: state.addr,
            size,
            old_addr,
            aux,
            flags,
        };
        Ok(stack)
    }

    /// An event's address (see [`put_address`]); `sized`: the event has a size.
    #[inline(always)]
    fn address(&mut self, state: &mut DeltaState, sized: bool) -> DecodeResult<u64> {
        if !state.compact {
            return self.delta(state.addr);
        }
        let previous = state.addr;
        let (look_in, push_to) = state.sides(sized);
        let addr = match self.varint()? {
            0 => self.delta(previous)?,
            distance => look_in
                .get(distance)
                .ok_or("event names an address further back than any recent one")?,
        };
        push_to.push(addr);
        Ok(addr)
    }

    /// The recorded answers of an event at `ts_ns` (see [`put_lookups`]).
    fn lookups(
        &mut self,
        state: &mut DeltaState,
        ts_ns: u64,
        out: &mut RecordedLookups,
    ) -> DecodeResult<()> {
        let mask = self.byte()?;
        if mask == 0 || u32::from(mask) >> out.len() != 0 {
            return Err("lookup answers for lookups no event makes");
        }
        for (i, answer) in out.iter_mut().enumerate() {
            if mask & 1 << i == 0 {
                continue;
            }
            *answer = Some(match self.varint()? {
                FOUND_ABSENT => Lookup::Absent,
                FOUND_LIVE => Lookup::Live(self.block(state, ts_ns)?),
                FOUND_FREED => Lookup::Freed {
                    size: self.varint()?,
                    stack: self.stack_ref()?,
                },
                _ => return Err("unknown lookup answer"),
            });
        }
        Ok(())
    }

    /// A block (see [`put_block`]) whose time is relative to `base_ns`.
    pub fn block(&mut self, state: &mut DeltaState, base_ns: u64) -> DecodeResult<Block> {
        let info = match self.varint()? {
            0 => {
                let size = self.varint()?;
                let kind = u32::try_from(self.varint()?)
                    .ok()
                    .and_then(EventKind::from_u32)
                    .ok_or("block of an unknown kind")?;
                let tid = self.u32("thread id above 32 bits")?;
                let stack = self.stack_ref()?;
                let info = RecordedInfo {
                    size,
                    kind,
                    tid,
                    stack,
                };
                state.infos.push(info);
                info
            }
            number => *usize::try_from(number - 1)
                .ok()
                .and_then(|at| state.infos.get(at))
                .ok_or("block of an info not defined before it")?,
        };
        let ticks = self.delta(base_ns / CLOCK_TICK_NS)?;
        Ok(Block {
            size: info.size,
            kind: info.kind,
            tid: info.tid,
            ts_ns: ticks.wrapping_mul(CLOCK_TICK_NS),
            stack: info.stack,
        })
    }

    /// A stack id + 1, or 0 for none.
    fn stack_ref(&mut self) -> DecodeResult<Option<StackId>> {
        Ok(match self.u32("stack id above 32 bits")? {
            0 => None,
            id => Some(StackId(id - 1)),
        })
    }

    /// Decodes a stack definition's body into `frames`; returns `truncated`.
    pub fn stack(&mut self, frames: &mut Vec<u64>) -> DecodeResult<bool> {
        let count = self.varint()?;
        if count > MAX_FRAMES {
            return Err("stack deeper than any memprof records");
        }
        let truncated = match self.byte()? {
            0 => false,
            1 => true,
            _ => return Err("stack truncation flag is neither 0 nor 1"),
        };
        frames.clear();
        let mut previous = 0;
        for _ in 0..count {
            previous = self.delta(previous)?;
            frames.push(previous);
        }
        Ok(truncated)
    }

    pub fn rss(&mut self, state: &mut DeltaState) -> DecodeResult<(u64, u64)> {
        state.ts_ticks = self.delta(state.ts_ticks)?;
        Ok((state.nanoseconds(state.ts_ticks), self.varint()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_numbers_tell_every_field_apart_even_at_the_edges() {
        let mut numbers = InfoNumbers::default();
        let info = |size, kind, tid, stack: Option<u32>| RecordedInfo {
            size,
            kind,
            tid,
            stack: stack.map(StackId),
        };
        let infos = [
            info(8, EventKind::Malloc, 1, None),
            info(8, EventKind::Calloc, 1, None),
            info(8, EventKind::Malloc, 2, None),
            info(8, EventKind::Malloc, 1, Some(0)),
            info(8, EventKind::Malloc, 0, Some(u32::MAX)),
            info(8, EventKind::Malloc, 1, Some(u32::MAX - 1)),
            info(1 << 56, EventKind::Malloc, 1, None),
            info((1 << 56) - 1, EventKind::OperatorDelete, u32::MAX, Some(7)),
            info(u64::MAX, EventKind::Malloc, 1, None),
        ];
        for (i, info) in infos.iter().enumerate() {
            assert_eq!(numbers.number(info), (i as u64, true), "{info:?}");
        }
        for (i, info) in infos.iter().enumerate() {
            assert_eq!(numbers.number(info), (i as u64, false), "{info:?}");
        }
    }

    #[test]
    fn varints_round_trip_at_the_edges() {
        for value in [0, 1, 127, 128, 16383, 16384, u64::from(u32::MAX), u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, value);
            let mut cursor = Cursor {
                bytes: &out,
                pos: 0,
            };
            assert_eq!(cursor.varint(), Ok(value));
            assert_eq!(cursor.pos, out.len());
        }
        let mut out = Vec::new();
        put_varint(&mut out, 300);
        assert_eq!(out, [0xac, 0x02]);
    }

    #[test]
    fn deltas_round_trip_both_ways() {
        for (value, base) in [(5, 10), (10, 5), (0, u64::MAX), (u64::MAX, 0), (1 << 63, 0)] {
            let mut out = Vec::new();
            put_delta(&mut out, value, base);
            assert_eq!(
                Cursor {
                    bytes: &out,
                    pos: 0
                }
                .delta(base),
                Ok(value)
            );
        }
        let mut out = Vec::new();
        put_delta(&mut out, 9, 10);
        assert_eq!(out, [1], "-1 zigzags to 1");
    }

    #[test]
    fn rejects_overlong_varints() {
        let bytes = [0xff; 11];
        assert_eq!(
            Cursor {
                bytes: &bytes,
                pos: 0
            }
            .varint(),
            Err("varint longer than 10 bytes")
        );
        let bytes = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        assert_eq!(
            Cursor {
                bytes: &bytes,
                pos: 0
            }
            .varint(),
            Err("varint overflows 64 bits")
        );
    }
}
