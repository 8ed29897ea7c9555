//! What an ELF executable's headers say about where it can run: its CPU architecture and whether
//! it is statically linked (no `PT_INTERP`, so no dynamic loader and no libc needed in the image).
//! arm64 binaries cannot run on the x86_64 test machines; their headers are what tests can check.

use std::path::Path;

use crate::docker::DockerError;

/// The CPU an ELF file is for (`e_machine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Machine {
    /// `EM_X86_64`.
    X86_64,
    /// `EM_AARCH64`.
    Aarch64,
    /// Any other value of `e_machine`.
    Other(u16),
}

/// The facts read from a 64-bit little-endian ELF file's headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElfInfo {
    /// The CPU it is for.
    pub machine: Machine,
    /// Whether it has no program interpreter (a static executable).
    pub is_static: bool,
}

impl ElfInfo {
    /// Reads the headers of the file at `path`.
    pub fn read(path: &Path) -> Result<ElfInfo, DockerError> {
        let bytes = std::fs::read(path).map_err(|source| DockerError::Io {
            what: format!("read {}", path.display()),
            source,
        })?;
        ElfInfo::parse(&bytes).ok_or_else(|| {
            DockerError::Failed(format!("{} is not a 64-bit ELF file", path.display()))
        })
    }

    /// Parses the headers of an ELF image; `None` unless it is 64-bit little-endian ELF.
    pub fn parse(bytes: &[u8]) -> Option<ElfInfo> {
        const PT_INTERP: u32 = 3;
        if bytes.get(..4)? != b"\x7fELF" || bytes.get(4)? != &2 || bytes.get(5)? != &1 {
            return None;
        }
        let u16_at = |o: usize| Some(u16::from_le_bytes(bytes.get(o..o + 2)?.try_into().ok()?));
        let u32_at = |o: usize| Some(u32::from_le_bytes(bytes.get(o..o + 4)?.try_into().ok()?));
        let u64_at = |o: usize| Some(u64::from_le_bytes(bytes.get(o..o + 8)?.try_into().ok()?));
        let machine = match u16_at(0x12)? {
            0x3e => Machine::X86_64,
            0xb7 => Machine::Aarch64,
            other => Machine::Other(other),
        };
        let phoff = usize::try_from(u64_at(0x20)?).ok()?;
        let phentsize = usize::from(u16_at(0x36)?);
        let phnum = usize::from(u16_at(0x38)?);
        let mut is_static = true;
        for i in 0..phnum {
            if u32_at(phoff + i * phentsize)? == PT_INTERP {
                is_static = false;
            }
        }
        Some(ElfInfo { machine, is_static })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_running_test_binary_is_dynamic_and_native() {
        let me = std::env::current_exe().expect("own path");
        let info = ElfInfo::read(&me).expect("own headers");
        assert!(
            !info.is_static,
            "a Rust test binary on glibc has an interpreter"
        );
        if cfg!(target_arch = "x86_64") {
            assert_eq!(info.machine, Machine::X86_64);
        }
    }

    #[test]
    fn not_elf_is_refused() {
        assert_eq!(ElfInfo::parse(b"#!/bin/sh\n"), None);
        assert_eq!(ElfInfo::parse(b""), None);
    }
}
