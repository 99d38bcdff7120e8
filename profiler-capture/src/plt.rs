//! Where a function's first instructions lead, when they only jump: the operators' decision
//! (`operators.rs`) of whether an allocator's operator is a hooked function in disguise.
//!
//! Only the bytes of the instruction each step finds are read, one prefix at a time, so a walk
//! never reads past the code it follows. A jump through a GOT entry (a PLT stub, or a call
//! built with `-fno-plt`) is named by the relocation that fills the entry: the entry itself
//! may not be bound yet (lazy binding: jemalloc's is not).

use core::ffi::{CStr, c_int, c_void};

/// Jumps followed before giving up (mimalloc's aligned delete takes three).
const MAX_HOPS: usize = 8;

/// Where a chain of tail jumps from a function's entry ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lands {
    /// At code that is not a jump (the function itself, if it does not jump at once).
    At(usize),
    /// At a jump through the GOT entry of this symbol, which the loader binds by name. The
    /// name lives in the loaded object's string table.
    Plt(&'static [u8]),
    /// Somewhere this walk cannot tell: a GOT entry no relocation names, or too many hops.
    Unknown,
}

/// The byte at `address` (code of a loaded object, read one instruction at a time).
fn byte(address: usize, offset: usize) -> u8 {
    // SAFETY: the caller reads only bytes of an instruction whose first bytes said it is there.
    unsafe { ((address + offset) as *const u8).read() }
}

fn i32_at(address: usize) -> i64 {
    // SAFETY: as in `byte`: the four bytes of a displacement of a decoded jump.
    i64::from(unsafe { (address as *const i32).read_unaligned() })
}

/// Follows the jumps `address` starts with: `endbr64`, `jmp rel32`, `jmp rel8`, and
/// `[bnd] jmp *disp32(%rip)`.
pub fn follow_tail_jumps(mut address: usize) -> Lands {
    for _ in 0..MAX_HOPS {
        if byte(address, 0) == 0xf3
            && byte(address, 1) == 0x0f
            && byte(address, 2) == 0x1e
            && byte(address, 3) == 0xfa
        {
            address += 4;
        }
        let bnd = usize::from(byte(address, 0) == 0xf2);
        match byte(address, bnd) {
            0xe9 if bnd == 0 => {
                address = (address as i64 + 5 + i32_at(address + 1)) as usize;
            }
            0xeb if bnd == 0 => {
                address = (address as i64 + 2 + i64::from(byte(address, 1) as i8)) as usize;
            }
            0xff if byte(address, bnd + 1) == 0x25 => {
                let end = address + bnd + 6;
                let entry = (end as i64 + i32_at(address + bnd + 2)) as usize;
                return match symbol_filling(entry) {
                    Some(name) => Lands::Plt(name),
                    None => Lands::Unknown,
                };
            }
            _ => return Lands::At(address),
        }
    }
    Lands::Unknown
}

const DT_NULL: i64 = 0;
const DT_PLTRELSZ: i64 = 2;
const DT_STRTAB: i64 = 5;
const DT_SYMTAB: i64 = 6;
const DT_RELA: i64 = 7;
const DT_RELASZ: i64 = 8;
const DT_STRSZ: i64 = 10;
const DT_JMPREL: i64 = 23;
const R_X86_64_GLOB_DAT: u64 = 6;
const R_X86_64_JUMP_SLOT: u64 = 7;

/// The search of [`symbol_filling`]: the GOT entry, and the name once found.
struct Search {
    entry: usize,
    found: Option<&'static [u8]>,
}

/// The symbol whose relocation (`JUMP_SLOT` or `GLOB_DAT`) fills the GOT entry at `entry`.
fn symbol_filling(entry: usize) -> Option<&'static [u8]> {
    let mut search = Search { entry, found: None };
    // SAFETY: the callback gets each loaded object's headers; `search` outlives the call.
    unsafe { libc::dl_iterate_phdr(Some(look_in_object), (&raw mut search).cast::<c_void>()) };
    search.found
}

unsafe extern "C" fn look_in_object(
    info: *mut libc::dl_phdr_info,
    _size: usize,
    data: *mut c_void,
) -> c_int {
    // SAFETY: dl_iterate_phdr passes a valid info and our `Search`.
    let (info, search) = unsafe { (&*info, &mut *data.cast::<Search>()) };
    let bias = info.dlpi_addr as usize;
    // SAFETY: dlpi_phdr holds dlpi_phnum headers.
    let headers = unsafe { core::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum.into()) };
    let holds = headers.iter().any(|h| {
        h.p_type == libc::PT_LOAD
            && (bias + h.p_vaddr as usize..bias + (h.p_vaddr + h.p_memsz) as usize)
                .contains(&search.entry)
    });
    if !holds {
        return 0;
    }
    if let Some(dynamic) = headers.iter().find(|h| h.p_type == libc::PT_DYNAMIC) {
        // SAFETY: the object's dynamic section, mapped with it.
        search.found = unsafe { named_in(bias, bias + dynamic.p_vaddr as usize, search.entry) };
    }
    1
}

/// Reads the dynamic section at `dynamic` of the object loaded at `bias` for the relocation
/// filling `entry`.
///
/// # Safety
/// `dynamic` is the loaded object's dynamic section.
unsafe fn named_in(bias: usize, dynamic: usize, entry: usize) -> Option<&'static [u8]> {
    let mut tags = [0usize; 24];
    let mut at = dynamic as *const [i64; 2];
    loop {
        // SAFETY: the section is an array of (tag, value) ended by DT_NULL.
        let [tag, value] = unsafe { at.read() };
        if tag == DT_NULL {
            break;
        }
        if let Some(slot) = usize::try_from(tag).ok().and_then(|t| tags.get_mut(t)) {
            *slot = value as usize;
        }
        // SAFETY: not past DT_NULL yet.
        at = unsafe { at.add(1) };
    }
    // The loader rewrites the section's addresses to absolute ones in place; other objects
    // keep them relative to the load address.
    let address = |tag: i64| match tags[tag as usize] {
        0 => 0,
        value if value < bias => value + bias,
        value => value,
    };
    let (symbols, strings, string_bytes) = (
        address(DT_SYMTAB),
        address(DT_STRTAB),
        tags[DT_STRSZ as usize],
    );
    if symbols == 0 || strings == 0 {
        return None;
    }
    let tables = [
        (address(DT_JMPREL), tags[DT_PLTRELSZ as usize]),
        (address(DT_RELA), tags[DT_RELASZ as usize]),
    ];
    for (table, bytes) in tables {
        if table == 0 {
            continue;
        }
        // SAFETY: a relocation table of the object, `bytes` long, of Elf64_Rela entries.
        let relocations =
            unsafe { core::slice::from_raw_parts(table as *const [u64; 3], bytes / 24) };
        for &[offset, info, _addend] in relocations {
            let kind = info & 0xffff_ffff;
            if bias.wrapping_add(offset as usize) != entry
                || (kind != R_X86_64_JUMP_SLOT && kind != R_X86_64_GLOB_DAT)
            {
                continue;
            }
            // SAFETY: the symbol index of a relocation of this object indexes its symbol
            // table (Elf64_Sym: the name's offset is the first 4 of 24 bytes).
            let name = unsafe { ((symbols + (info >> 32) as usize * 24) as *const u32).read() };
            if name as usize >= string_bytes {
                return None;
            }
            // SAFETY: an offset into the object's string table, NUL-terminated there.
            let name = unsafe { CStr::from_ptr((strings + name as usize) as *const _) };
            return Some(name.to_bytes());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jump_chain_is_followed_to_its_end() {
        // endbr64; jmp +2 -> jmp rel8 +0 -> ret
        let code: [u8; 16] = [
            0xf3, 0x0f, 0x1e, 0xfa, 0xe9, 0x02, 0, 0, 0, 0x90, 0x90, 0xeb, 0x00, 0xc3, 0, 0,
        ];
        let start = code.as_ptr() as usize;
        assert_eq!(follow_tail_jumps(start), Lands::At(start + 13));
        assert_eq!(follow_tail_jumps(start + 13), Lands::At(start + 13));
    }

    #[test]
    fn a_plt_stub_is_named_by_the_relocation_of_its_got_entry() {
        // This test binary calls libc's `dl_iterate_phdr` through a GOT entry (the hooks define `free`
        // and the rest themselves): a jump through that entry lands on the name.
        let entry =
            got_entry_of(b"dl_iterate_phdr").expect("the test binary imports dl_iterate_phdr");
        let displacement = |from: usize| i32::try_from(entry as i64 - from as i64).unwrap();
        // In the binary's own data, within a displacement's reach of its GOT.
        static mut CODE: [u8; 16] = [0; 16];
        let start = (&raw mut CODE) as usize;
        let write = |bytes: &[u8]| {
            // SAFETY: this test alone uses CODE, 16 bytes long.
            unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), start as *mut u8, bytes.len()) }
        };
        write(
            &[
                [0xff, 0x25].as_slice(),
                &displacement(start + 6).to_le_bytes(),
            ]
            .concat(),
        );
        assert_eq!(follow_tail_jumps(start), Lands::Plt(b"dl_iterate_phdr"));
        write(
            &[
                [0xf2, 0xff, 0x25].as_slice(),
                &displacement(start + 7).to_le_bytes(),
            ]
            .concat(),
        );
        assert_eq!(follow_tail_jumps(start), Lands::Plt(b"dl_iterate_phdr"));
    }

    /// The GOT entry of `symbol` in this test binary, found from its relocations by brute
    /// force: every word-aligned address of its writable segments is asked for its name.
    fn got_entry_of(symbol: &[u8]) -> Option<usize> {
        let mut candidates: Vec<(usize, usize)> = Vec::new();
        unsafe extern "C" fn segments(
            info: *mut libc::dl_phdr_info,
            _size: usize,
            data: *mut c_void,
        ) -> c_int {
            // SAFETY: as in look_in_object; the first object is the executable.
            let (info, out) = unsafe { (&*info, &mut *data.cast::<Vec<(usize, usize)>>()) };
            let bias = info.dlpi_addr as usize;
            let headers =
                unsafe { core::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum.into()) };
            for h in headers
                .iter()
                .filter(|h| h.p_type == libc::PT_LOAD && h.p_flags & 2 != 0)
            {
                out.push((bias + h.p_vaddr as usize, h.p_memsz as usize));
            }
            1
        }
        // SAFETY: the callback fills the Vec it is given.
        unsafe { libc::dl_iterate_phdr(Some(segments), (&raw mut candidates).cast()) };
        candidates.into_iter().find_map(|(start, bytes)| {
            (start..start + bytes)
                .step_by(8)
                .find(|&entry| symbol_filling(entry) == Some(symbol))
        })
    }
}
