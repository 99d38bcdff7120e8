//! What the probe planner needs from an ELF object: its dependencies, the defined function
//! symbols it exports, and the bytes at a symbol (to decode the prologue).
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use object::{
    Object as _, ObjectSymbol as _, ObjectSymbolTable as _, RelocationTarget, SymbolKind,
    elf::{DT_NEEDED, DT_SONAME, PT_INTERP, PT_LOAD},
    read::elf::{Dyn as _, ElfFile64, ProgramHeader as _},
};

/// A loadable segment: where file bytes land in the object's virtual address space.
#[derive(Clone, Copy, Debug)]
struct Segment {
    vaddr: u64,
    offset: u64,
    filesz: u64,
}

/// One ELF object on disk, reduced to what probe placement needs.
pub struct ElfObject {
    pub path: PathBuf,
    /// DT_SONAME, the name other objects' DT_NEEDED entries use for this one.
    pub soname: Option<String>,
    pub needed: Vec<String>,
    pub interpreter: Option<String>,
    /// Defined function symbols by name: virtual address and size.
    functions: HashMap<String, (u64, u64)>,
    segments: Vec<Segment>,
    data: Vec<u8>,
}

impl ElfObject {
    /// Reads the object at `path`, keeping only the functions named in `wanted`.
    pub fn read(path: &Path, wanted: &[&str]) -> Result<ElfObject> {
        let data = profiler_core::module_file::read(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let elf = ElfFile64::<object::Endianness>::parse(&*data)
            .with_context(|| format!("{} is not a 64-bit ELF object", path.display()))?;
        let endian = elf.endian();

        let mut segments = Vec::new();
        let mut interpreter = None;
        for header in elf.elf_program_headers() {
            match header.p_type(endian) {
                PT_LOAD => segments.push(Segment {
                    vaddr: header.p_vaddr(endian),
                    offset: header.p_offset(endian),
                    filesz: header.p_filesz(endian),
                }),
                PT_INTERP => {
                    if let Ok(bytes) = header.data(endian, &*data) {
                        let text = bytes.split(|b| *b == 0).next().unwrap_or_default();
                        interpreter = Some(String::from_utf8_lossy(text).into_owned());
                    }
                }
                _ => {}
            }
        }

        let (needed, soname) = dynamic_names(&elf, &data)?;

        // The dynamic symbol table is what ld.so binds against; a static executable has only
        // .symtab, which then decides.
        let mut functions = HashMap::new();
        let symbols = if elf.dynamic_symbols().next().is_some() {
            elf.dynamic_symbols()
        } else {
            elf.symbols()
        };
        for symbol in symbols {
            if symbol.kind() != SymbolKind::Text || !symbol.is_definition() {
                continue;
            }
            let Ok(name) = symbol.name() else { continue };
            if wanted.contains(&name) && !functions.contains_key(name) {
                functions.insert(name.to_owned(), (symbol.address(), symbol.size()));
            }
        }

        Ok(ElfObject {
            path: path.to_owned(),
            soname,
            needed,
            interpreter,
            functions,
            segments,
            data,
        })
    }

    /// The address and size of a defined function, if this object exports it.
    pub fn function(&self, name: &str) -> Option<(u64, u64)> {
        self.functions.get(name).copied()
    }

    /// The file offset of a virtual address (what a uprobe is attached at).
    pub fn file_offset(&self, vaddr: u64) -> Option<u64> {
        self.segments
            .iter()
            .find(|s| vaddr >= s.vaddr && vaddr < s.vaddr + s.filesz)
            .map(|s| vaddr - s.vaddr + s.offset)
    }

    /// Up to `len` bytes of code starting at a virtual address.
    pub fn code_at(&self, vaddr: u64, len: usize) -> Option<&[u8]> {
        let segment = self
            .segments
            .iter()
            .find(|s| vaddr >= s.vaddr && vaddr < s.vaddr + s.filesz)?;
        let start = usize::try_from(vaddr - segment.vaddr + segment.offset).ok()?;
        let end = usize::try_from(segment.offset + segment.filesz).ok()?;
        self.data.get(start..end.min(start + len))
    }

    /// A function this object exports under any name (not only the wanted ones): what ld.so
    /// binds a reference to `name` to, as (address, size). Reads the table on demand.
    pub fn exported(&self, name: &str) -> Option<(u64, u64)> {
        let elf = ElfFile64::<object::Endianness>::parse(&*self.data).ok()?;
        elf.dynamic_symbols()
            .find(|s| s.kind() == SymbolKind::Text && s.is_definition() && s.name() == Ok(name))
            .map(|s| (s.address(), s.size()))
    }

    /// The size of the function symbol starting at `vaddr`, if one does.
    pub fn function_len_at(&self, vaddr: u64) -> Option<u64> {
        let elf = ElfFile64::<object::Endianness>::parse(&*self.data).ok()?;
        elf.dynamic_symbols()
            .chain(elf.symbols())
            .find(|s| s.kind() == SymbolKind::Text && s.is_definition() && s.address() == vaddr)
            .map(|s| s.size())
    }

    /// The symbol the dynamic loader stores in the GOT slot at `slot` (a JUMP_SLOT or
    /// GLOB_DAT relocation): where a `jmp *slot(%rip)` (a PLT stub) goes.
    pub fn got_symbol(&self, slot: u64) -> Option<String> {
        let elf = ElfFile64::<object::Endianness>::parse(&*self.data).ok()?;
        let table = elf.dynamic_symbol_table()?;
        let (_, relocation) = elf.dynamic_relocations()?.find(|(at, _)| *at == slot)?;
        let RelocationTarget::Symbol(index) = relocation.target() else {
            return None;
        };
        let name = table.symbol_by_index(index).ok()?.name().ok()?;
        Some(name.to_owned())
    }
}

fn dynamic_names(
    elf: &ElfFile64<object::Endianness>,
    data: &[u8],
) -> Result<(Vec<String>, Option<String>)> {
    let endian = elf.endian();
    let sections = elf.elf_section_table();
    let Some((entries, strings_index)) = sections.dynamic(endian, data)? else {
        return Ok((Vec::new(), None));
    };
    let strings = sections.strings(endian, data, strings_index)?;
    let mut needed = Vec::new();
    let mut soname = None;
    for entry in entries {
        let tag = entry.d_tag(endian) as u32;
        if tag != DT_NEEDED && tag != DT_SONAME {
            continue;
        }
        let Ok(name) = entry.string(endian, strings) else {
            bail!("bad dynamic string")
        };
        let name = String::from_utf8_lossy(name).into_owned();
        if tag == DT_NEEDED {
            needed.push(name);
        } else {
            soname = Some(name);
        }
    }
    Ok((needed, soname))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libc_exports_malloc_and_free() {
        let libc = Path::new("/lib/x86_64-linux-gnu/libc.so.6");
        let object = ElfObject::read(libc, &["malloc", "free"]).unwrap();
        let (malloc, size) = object.function("malloc").expect("malloc in libc");
        assert!(size > 0);
        assert!(object.function("free").is_some());
        let offset = object.file_offset(malloc).unwrap();
        assert!(offset > 0);
        assert_eq!(object.soname.as_deref(), Some("libc.so.6"));
        assert!(object.code_at(malloc, 16).unwrap().len() == 16);
    }

    #[test]
    fn executables_name_their_interpreter_and_needs() {
        let object = ElfObject::read(Path::new("/bin/true"), &[]).unwrap();
        assert!(object.interpreter.unwrap().contains("ld-linux"));
        assert!(object.needed.iter().any(|n| n == "libc.so.6"));
    }
}
