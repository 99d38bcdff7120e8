//! The frames a session's report named, in the form its recording carries them (record
//! `0x60`): `memprof report` then names every frame as the live session did without opening
//! the target's files. That is most of its memory on a small recording (the DWARF of libc's
//! debug file alone held 41 MiB of heap while `ls`'s recording was reported), and it names
//! frames on a machine that lacks the target's files or has other versions of them.
//!
//! Strings are stored once (a function is named by every call site in it, a file by every
//! line).

use super::{Frame, ModuleInfo};
use crate::string_table::StringTable;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Every address a symbolizer resolved, with its frames, and the modules it opened.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedSymbols {
    pub modules: Vec<RecordedModule>,
    /// Module names, functions and files, each once; frames refer to them by index.
    pub strings: Vec<String>,
    /// By ascending address.
    pub addresses: Vec<RecordedAddress>,
}

/// A [`ModuleInfo`] with its paths as text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedModule {
    pub path: String,
    pub build_id: Option<String>,
    pub debug_file: Option<String>,
}

/// One return address and its frames, innermost first (at least one).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedAddress {
    #[serde(rename = "a")]
    pub address: u64,
    #[serde(rename = "f")]
    pub frames: Vec<RecordedFrame>,
}

/// A [`Frame`] without its address (its [`RecordedAddress`]'s), strings as indices into
/// [`RecordedSymbols::strings`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedFrame {
    #[serde(rename = "m")]
    pub module: u32,
    #[serde(rename = "o")]
    pub module_offset: u64,
    #[serde(rename = "f", default, skip_serializing_if = "Option::is_none")]
    pub function: Option<u32>,
    #[serde(rename = "s", default, skip_serializing_if = "Option::is_none")]
    pub file: Option<u32>,
    #[serde(rename = "l", default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    #[serde(rename = "i", default, skip_serializing_if = "is_false")]
    pub inlined: bool,
}

fn is_false(value: &bool) -> bool {
    !*value
}

/// Why a symbols record cannot be used.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordedSymbolsError {
    #[error("address {0:#x} has no frame")]
    NoFrame(u64),
    #[error("a frame names string {0}, past the {1} recorded")]
    NoSuchString(u32, usize),
}

impl RecordedSymbols {
    /// Collects `frames` (address -> frames, as a symbolizer caches them) and `modules`.
    pub fn collect<'a>(
        frames: impl IntoIterator<Item = (u64, &'a [Frame])>,
        modules: &[ModuleInfo],
    ) -> RecordedSymbols {
        let mut strings = StringTable::default();
        // Positions fit: a record's strings come from one session's frames.
        let mut index = |text: &str| strings.position(text) as u32;
        let mut addresses: Vec<RecordedAddress> = frames
            .into_iter()
            .map(|(address, frames)| RecordedAddress {
                address,
                frames: frames
                    .iter()
                    .map(|frame| RecordedFrame {
                        module: index(&frame.module),
                        module_offset: frame.module_offset,
                        function: frame.function.as_deref().map(&mut index),
                        file: frame.file.as_deref().map(&mut index),
                        line: frame.line,
                        inlined: frame.inlined,
                    })
                    .collect(),
            })
            .collect();
        addresses.sort_unstable_by_key(|address| address.address);
        RecordedSymbols {
            modules: modules
                .iter()
                .map(|module| RecordedModule {
                    path: module.path.to_string_lossy().into_owned(),
                    build_id: module.build_id.clone(),
                    debug_file: module
                        .debug_file
                        .as_ref()
                        .map(|path| path.to_string_lossy().into_owned()),
                })
                .collect(),
            strings: strings.into_list(),
            addresses,
        }
    }

    /// [`RecordedSymbols::collect`] of frames held by address.
    #[cfg(test)]
    pub(crate) fn of(frames: &[(u64, Vec<Frame>)], modules: &[ModuleInfo]) -> RecordedSymbols {
        let frames = frames
            .iter()
            .map(|(address, frames)| (*address, frames.as_slice()));
        RecordedSymbols::collect(frames, modules)
    }

    /// Checks that every address has a frame and every string index is in range (a
    /// recording is untrusted input).
    pub fn check(&self) -> Result<(), RecordedSymbolsError> {
        let count = self.strings.len();
        let in_range = |index: u32| {
            if (index as usize) < count {
                Ok(())
            } else {
                Err(RecordedSymbolsError::NoSuchString(index, count))
            }
        };
        for address in &self.addresses {
            if address.frames.is_empty() {
                return Err(RecordedSymbolsError::NoFrame(address.address));
            }
            for frame in &address.frames {
                in_range(frame.module)?;
                frame.function.map_or(Ok(()), in_range)?;
                frame.file.map_or(Ok(()), in_range)?;
            }
        }
        Ok(())
    }

    /// The frames of each address, as [`Frame`]s. Call on a [`check`](Self::check)ed record.
    pub fn frames(&self) -> impl Iterator<Item = (u64, Vec<Frame>)> + '_ {
        let string = |index: u32| self.strings[index as usize].clone();
        self.addresses.iter().map(move |recorded| {
            let frames = recorded
                .frames
                .iter()
                .map(|frame| Frame {
                    address: recorded.address,
                    module: string(frame.module),
                    module_offset: frame.module_offset,
                    function: frame.function.map(string),
                    file: frame.file.map(string),
                    line: frame.line,
                    inlined: frame.inlined,
                })
                .collect();
            (recorded.address, frames)
        })
    }

    /// `self` cut into records of at most `addresses` addresses each, each with the strings
    /// it names (the modules go with the first): a record stays well under the chunk size a
    /// reader accepts however many frames a program has.
    pub fn parts(&self, addresses: usize) -> Vec<RecordedSymbols> {
        let mut parts: Vec<RecordedSymbols> = self
            .addresses
            .chunks(addresses.max(1))
            .map(|chunk| {
                let mut strings = StringTable::default();
                let mut string =
                    |index: u32| strings.position(&self.strings[index as usize]) as u32;
                let addresses = chunk
                    .iter()
                    .map(|recorded| RecordedAddress {
                        address: recorded.address,
                        frames: recorded
                            .frames
                            .iter()
                            .map(|frame| RecordedFrame {
                                module: string(frame.module),
                                function: frame.function.map(&mut string),
                                file: frame.file.map(&mut string),
                                ..frame.clone()
                            })
                            .collect(),
                    })
                    .collect();
                RecordedSymbols {
                    modules: Vec::new(),
                    strings: strings.into_list(),
                    addresses,
                }
            })
            .collect();
        match parts.first_mut() {
            Some(first) => first.modules = self.modules.clone(),
            None => parts.push(RecordedSymbols {
                modules: self.modules.clone(),
                ..RecordedSymbols::default()
            }),
        }
        parts
    }

    /// Adds the addresses, strings and modules of `part` (one of [`RecordedSymbols::parts`]).
    pub fn merge(&mut self, part: RecordedSymbols) {
        let offset = self.strings.len() as u32;
        self.strings.extend(part.strings);
        self.addresses
            .extend(part.addresses.into_iter().map(|mut recorded| {
                for frame in &mut recorded.frames {
                    frame.module += offset;
                    frame.function = frame.function.map(|index| index + offset);
                    frame.file = frame.file.map(|index| index + offset);
                }
                recorded
            }));
        self.modules.extend(part.modules);
    }

    /// The modules, as the report lists them.
    pub fn modules(&self) -> impl Iterator<Item = ModuleInfo> + '_ {
        self.modules.iter().map(|module| ModuleInfo {
            path: PathBuf::from(&module.path),
            build_id: module.build_id.clone(),
            debug_file: module.debug_file.as_ref().map(PathBuf::from),
        })
    }
}
