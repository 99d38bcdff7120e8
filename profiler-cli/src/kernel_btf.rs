//! One fact the probes need from the running kernel's BTF (`/sys/kernel/btf/vmlinux`): where
//! `task_struct.blocked` (the thread's blocked-signal mask) lies, so that a probe can tell
//! whether its thread blocks the hold signal. Read with a small BTF walker: the format is a
//! header, a type section of variable-length records, and a string section.

use anyhow::{Context as _, Result, bail};

const MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;

/// Byte offset of member `member` in the struct named `name`, from the BTF blob `btf`.
pub fn member_offset(btf: &[u8], name: &str, member: &str) -> Result<u32> {
    let u32_at = |at: usize| -> Result<u32> {
        let bytes = btf.get(at..at + 4).context("BTF cut short")?;
        Ok(u32::from_le_bytes(bytes.try_into().expect("4 bytes")))
    };
    if btf.len() < 24 || u16::from_le_bytes([btf[0], btf[1]]) != MAGIC {
        bail!("not little-endian BTF");
    }
    let header_len = u32_at(4)? as usize;
    let (type_off, type_len) = (u32_at(8)? as usize, u32_at(12)? as usize);
    let (str_off, str_len) = (u32_at(16)? as usize, u32_at(20)? as usize);
    let types = header_len + type_off;
    let strings = btf
        .get(header_len + str_off..header_len + str_off + str_len)
        .context("BTF strings cut short")?;
    let string = |offset: u32| -> &[u8] {
        let rest = strings.get(offset as usize..).unwrap_or_default();
        &rest[..rest.iter().position(|&b| b == 0).unwrap_or(rest.len())]
    };
    let mut at = types;
    while at < types + type_len {
        let (name_off, info) = (u32_at(at)?, u32_at(at + 4)?);
        let kind = (info >> 24) & 0x1f;
        let vlen = (info & 0xffff) as usize;
        let kind_flag = info >> 31 != 0;
        let body = at + 12;
        if kind == KIND_STRUCT && string(name_off) == name.as_bytes() {
            for index in 0..vlen {
                let record = body + index * 12;
                if string(u32_at(record)?) == member.as_bytes() {
                    let offset = u32_at(record + 8)?;
                    // With the kind flag, the low 24 bits are the bit offset.
                    let bits = if kind_flag {
                        offset & 0xff_ffff
                    } else {
                        offset
                    };
                    return Ok(bits / 8);
                }
            }
            bail!("{name} has no member {member}");
        }
        at = body + extra_bytes(kind, vlen).with_context(|| format!("unknown BTF kind {kind}"))?;
    }
    bail!("no struct {name}")
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

/// The offset of `task_struct.blocked` on this kernel; None without BTF (the probes then
/// always send the hold signal, which a thread blocking it does not take).
pub fn task_blocked_offset() -> Option<u32> {
    let btf = std::fs::read("/sys/kernel/btf/vmlinux").ok()?;
    member_offset(&btf, "task_struct", "blocked").ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_member_of_a_struct_in_handmade_btf() {
        // Types: 1 = int, 2 = struct point { int x; int y; } (y at bit 32).
        let strings = b"\0int\0point\0x\0y\0";
        let mut types = Vec::new();
        let put = |types: &mut Vec<u8>, words: &[u32]| {
            for word in words {
                types.extend_from_slice(&word.to_le_bytes());
            }
        };
        put(&mut types, &[1, 1 << 24, 4, 32]); // "int", kind 1, size 4, encoding
        put(&mut types, &[5, (4 << 24) | 2, 8]); // "point", struct, 2 members, size 8
        put(&mut types, &[11, 1, 0]); // x: int at bit 0
        put(&mut types, &[13, 1, 32]); // y: int at bit 32
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
        assert_eq!(member_offset(&btf, "point", "y").unwrap(), 4);
        assert_eq!(member_offset(&btf, "point", "x").unwrap(), 0);
        assert!(member_offset(&btf, "point", "z").is_err());
        assert!(member_offset(&btf, "line", "x").is_err());
        assert!(member_offset(&btf[..30], "point", "y").is_err());
    }

    #[test]
    fn this_kernel_says_where_a_tasks_blocked_signals_are() {
        let offset = task_blocked_offset().expect("this kernel has BTF (CI's does)");
        // Deep in task_struct, 8-aligned (a sigset_t of one u64 on x86-64).
        assert!(offset > 512 && offset.is_multiple_of(8), "{offset}");
    }
}
