//! Facts the probes need from the running kernel's BTF (`/sys/kernel/btf/vmlinux`): where
//! `task_struct.blocked` (the thread's blocked-signal mask) lies, so that a probe can tell
//! whether its thread blocks the hold signal; and where `task_struct.mm` and
//! `mm_struct.start_stack` lie, so that a probe can bound its stack copy at the main thread's
//! `argc`. Read with a small BTF walker: the format is a header, a type section of
//! variable-length records (numbered from 1 in order), and a string section.

use anyhow::{Context as _, Result, bail};

const MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;

/// The type records of a BTF blob, indexed by type id.
struct Types<'a> {
    btf: &'a [u8],
    strings: &'a [u8],
    /// Where each type's record starts in `btf`; type id N is at index N - 1.
    records: Vec<usize>,
}

/// One struct or union member: its name's string offset, type id and offset in bytes.
struct Member {
    name_off: u32,
    type_id: u32,
    offset: u32,
}

impl<'a> Types<'a> {
    fn parse(btf: &'a [u8]) -> Result<Types<'a>> {
        if btf.len() < 24 || u16::from_le_bytes([btf[0], btf[1]]) != MAGIC {
            bail!("not little-endian BTF");
        }
        let header_len = u32_at(btf, 4)? as usize;
        let (type_off, type_len) = (u32_at(btf, 8)? as usize, u32_at(btf, 12)? as usize);
        let (str_off, str_len) = (u32_at(btf, 16)? as usize, u32_at(btf, 20)? as usize);
        let types = header_len + type_off;
        let strings = btf
            .get(header_len + str_off..header_len + str_off + str_len)
            .context("BTF strings cut short")?;
        let mut records = Vec::new();
        let mut at = types;
        while at < types + type_len {
            records.push(at);
            let info = u32_at(btf, at + 4)?;
            let (kind, vlen) = ((info >> 24) & 0x1f, (info & 0xffff) as usize);
            at +=
                12 + extra_bytes(kind, vlen).with_context(|| format!("unknown BTF kind {kind}"))?;
        }
        Ok(Types {
            btf,
            strings,
            records,
        })
    }

    fn string(&self, offset: u32) -> &[u8] {
        let rest = self.strings.get(offset as usize..).unwrap_or_default();
        &rest[..rest.iter().position(|&b| b == 0).unwrap_or(rest.len())]
    }

    /// (kind, name offset) of the record at `at`.
    fn kind_and_name(&self, at: usize) -> Result<(u32, u32)> {
        Ok((
            (u32_at(self.btf, at + 4)? >> 24) & 0x1f,
            u32_at(self.btf, at)?,
        ))
    }

    /// The members of the struct or union whose record is at `at`.
    fn members(&self, at: usize) -> Result<Vec<Member>> {
        let info = u32_at(self.btf, at + 4)?;
        let kind_flag = info >> 31 != 0;
        (0..(info & 0xffff) as usize)
            .map(|index| {
                let record = at + 12 + index * 12;
                let offset = u32_at(self.btf, record + 8)?;
                // With the kind flag, the low 24 bits are the bit offset.
                let bits = if kind_flag {
                    offset & 0xff_ffff
                } else {
                    offset
                };
                Ok(Member {
                    name_off: u32_at(self.btf, record)?,
                    type_id: u32_at(self.btf, record + 4)?,
                    offset: bits / 8,
                })
            })
            .collect()
    }

    /// Byte offset of `member` in the struct or union at `at`, looking into its anonymous
    /// struct and union members too (the kernel groups fields in them: `mm_struct`'s are all
    /// in one).
    fn offset_in(&self, at: usize, member: &str) -> Result<Option<u32>> {
        self.offset_within(at, member, 0)
    }

    /// [`Self::offset_in`], `depth` anonymous members down; a blob nesting them deeper than
    /// the kernel does (or in a cycle) is not followed further.
    fn offset_within(&self, at: usize, member: &str, depth: u32) -> Result<Option<u32>> {
        const MAX_DEPTH: u32 = 8;
        if depth > MAX_DEPTH {
            return Ok(None);
        }
        for field in self.members(at)? {
            if field.name_off != 0 {
                if self.string(field.name_off) == member.as_bytes() {
                    return Ok(Some(field.offset));
                }
                continue;
            }
            let Some(&inner) = self.records.get((field.type_id as usize).wrapping_sub(1)) else {
                continue;
            };
            if matches!(self.kind_and_name(inner)?.0, KIND_STRUCT | KIND_UNION)
                && let Some(offset) = self.offset_within(inner, member, depth + 1)?
            {
                return Ok(Some(field.offset + offset));
            }
        }
        Ok(None)
    }

    /// Byte offset of member `member` in the struct named `name`.
    fn member_offset(&self, name: &str, member: &str) -> Result<u32> {
        for &at in &self.records {
            let (kind, name_off) = self.kind_and_name(at)?;
            if kind == KIND_STRUCT && self.string(name_off) == name.as_bytes() {
                return self
                    .offset_in(at, member)?
                    .with_context(|| format!("{name} has no member {member}"));
            }
        }
        bail!("no struct {name}")
    }
}

fn u32_at(btf: &[u8], at: usize) -> Result<u32> {
    let bytes = btf.get(at..at + 4).context("BTF cut short")?;
    Ok(u32::from_le_bytes(bytes.try_into().expect("4 bytes")))
}

/// Byte offset of member `member` in the struct named `name`, from the BTF blob `btf`.
#[cfg(test)]
fn member_offset(btf: &[u8], name: &str, member: &str) -> Result<u32> {
    Types::parse(btf)?.member_offset(name, member)
}

/// Bytes following a type record's 12-byte common part, by kind.
fn extra_bytes(kind: u32, vlen: usize) -> Option<usize> {
    Some(match kind {
        1 | 14 | 17 => 4,                            // int, var, decl tag
        3 => 12,                                     // array
        4 | 5 | 15 | 19 => vlen * 12,                // struct, union, datasec, enum64
        6 | 13 => vlen * 8,                          // enum, func proto
        2 | 7 | 8 | 9 | 10 | 11 | 12 | 16 | 18 => 0, // ptr, fwd, typedef, modifiers, func, float, type tag
        _ => return None,
    })
}

/// Where the probes find what they read in the kernel's structures, on this kernel. A field
/// whose offset is unknown (no BTF) is 0, and the probe goes without it: a thread blocking
/// the hold signal is sent it anyway (and does not take it), and stack copies are not
/// bounded at `argc`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `task_struct.blocked`, the thread's blocked-signal mask.
    pub task_blocked: u32,
    /// `task_struct.mm`.
    pub task_mm: u32,
    /// `mm_struct.start_stack`: the address of `argc` on the main thread's stack, set at each
    /// exec (`/proc/PID/stat`'s `startstack`).
    pub mm_start_stack: u32,
}

impl KernelOffsets {
    /// This kernel's, from `/sys/kernel/btf/vmlinux` (read and parsed once).
    pub fn of_running_kernel() -> KernelOffsets {
        std::fs::read("/sys/kernel/btf/vmlinux")
            .ok()
            .and_then(|btf| KernelOffsets::from_btf(&btf).ok())
            .unwrap_or_default()
    }

    fn from_btf(btf: &[u8]) -> Result<KernelOffsets> {
        let types = Types::parse(btf)?;
        let offset = |name: &str, member: &str| types.member_offset(name, member).ok();
        let (task_mm, mm_start_stack) = match (
            offset("task_struct", "mm"),
            offset("mm_struct", "start_stack"),
        ) {
            (Some(task_mm), Some(mm_start_stack)) => (task_mm, mm_start_stack),
            _ => (0, 0),
        };
        Ok(KernelOffsets {
            task_blocked: offset("task_struct", "blocked").unwrap_or(0),
            task_mm,
            mm_start_stack,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob of `types` (records) and `strings`.
    fn blob(types: &[u32], strings: &[u8]) -> Vec<u8> {
        let types: Vec<u8> = types.iter().flat_map(|word| word.to_le_bytes()).collect();
        let mut btf = Vec::new();
        btf.extend_from_slice(&MAGIC.to_le_bytes());
        btf.extend_from_slice(&[1, 0]); // version, flags
        for word in [
            24,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            btf.extend_from_slice(&word.to_le_bytes());
        }
        btf.extend_from_slice(&types);
        btf.extend_from_slice(strings);
        btf
    }

    #[test]
    fn finds_a_member_of_a_struct_in_handmade_btf() {
        // Types: 1 = int, 2 = struct point { int x; int y; } (y at bit 32).
        let strings = b"\0int\0point\0x\0y\0";
        let btf = blob(
            &[
                1,
                1 << 24,
                4,
                32, // "int", kind 1, size 4, encoding
                5,
                (4 << 24) | 2,
                8, // "point", struct, 2 members, size 8
                11,
                1,
                0, // x: int at bit 0
                13,
                1,
                32, // y: int at bit 32
            ],
            strings,
        );
        assert_eq!(member_offset(&btf, "point", "y").unwrap(), 4);
        assert_eq!(member_offset(&btf, "point", "x").unwrap(), 0);
        assert!(member_offset(&btf, "point", "z").is_err());
        assert!(member_offset(&btf, "line", "x").is_err());
        assert!(member_offset(&btf[..30], "point", "y").is_err());
    }

    #[test]
    fn finds_a_member_inside_anonymous_structs_and_unions() {
        // 1 = int; 2 = union { int u; }; 3 = struct { int a; int b; union 2; } (anonymous,
        // the union at byte 8); 4 = struct mm { int first; struct 3; } (struct 3 at byte 8).
        let strings = b"\0int\0u\0a\0b\0mm\0first\0";
        let btf = blob(
            &[
                1,
                1 << 24,
                4,
                32, // int
                0,
                (5 << 24) | 1,
                4,
                5,
                1,
                0, // union { int u; }
                0,
                (4 << 24) | 3,
                12,
                7,
                1,
                0,
                9,
                1,
                32,
                0,
                2,
                64, // struct { a; b; union }
                11,
                (4 << 24) | 2,
                20,
                14,
                1,
                0,
                0,
                3,
                64, // struct mm { first; struct }
            ],
            strings,
        );
        assert_eq!(member_offset(&btf, "mm", "first").unwrap(), 0);
        assert_eq!(member_offset(&btf, "mm", "a").unwrap(), 8);
        assert_eq!(member_offset(&btf, "mm", "b").unwrap(), 12);
        assert_eq!(member_offset(&btf, "mm", "u").unwrap(), 16);
        assert!(member_offset(&btf, "mm", "c").is_err());
    }

    #[test]
    fn an_anonymous_member_cycle_ends_the_search() {
        // 1 = int; 2 = struct loop { int a; struct 2; } (itself, anonymous, at byte 4).
        let strings = b"\0int\0loop\0a\0";
        let btf = blob(
            &[
                1,
                1 << 24,
                4,
                32, // int
                5,
                (4 << 24) | 2,
                8,
                10,
                1,
                0,
                0,
                2,
                32, // struct loop { a; struct loop; }
            ],
            strings,
        );
        assert_eq!(member_offset(&btf, "loop", "a").unwrap(), 0);
        assert!(member_offset(&btf, "loop", "b").is_err());
    }

    #[test]
    fn this_kernel_says_where_the_probes_fields_are() {
        let btf =
            std::fs::read("/sys/kernel/btf/vmlinux").expect("this kernel has BTF (CI's does)");
        let offsets = KernelOffsets::from_btf(&btf).unwrap();
        assert_eq!(offsets, KernelOffsets::of_running_kernel());
        // Deep in task_struct, 8-aligned (a sigset_t of one u64 on x86-64).
        assert!(
            offsets.task_blocked > 512 && offsets.task_blocked.is_multiple_of(8),
            "{offsets:?}"
        );
        // Pointers and unsigned longs: 8-aligned. start_stack follows the code, data and brk
        // bounds in mm_struct's anonymous struct, past its first cache lines.
        assert!(offsets.task_mm.is_multiple_of(8), "{offsets:?}");
        assert!(
            offsets.mm_start_stack > 64 && offsets.mm_start_stack.is_multiple_of(8),
            "{offsets:?}"
        );
    }
}
