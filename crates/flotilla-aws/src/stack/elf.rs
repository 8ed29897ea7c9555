//! What the reaper's code must be, read from a Linux executable's ELF headers: the CPU, whether
//! it is static, the shared libraries it needs and the glibc symbol versions it requires.
//!
//! Pure (bytes in, facts out) and small enough to parse by hand: the ELF header, the program
//! headers (`PT_INTERP`: a dynamic loader is asked for), and the section headers for `.dynamic`
//! (`DT_NEEDED` libraries) and `.gnu.version_r` (`GLIBC_2.34` and the like). Only 64-bit
//! little-endian files are accepted: Lambda runs x86_64 and arm64.

use flotilla_baseline::Architecture;

/// The newest glibc of Lambda's `provided.al2023` runtime (Amazon Linux 2023 ships 2.34).
pub const LAMBDA_GLIBC: (u32, u32) = (2, 34);

/// Shared libraries a glibc binary may need on `provided.al2023` (all part of glibc, or libgcc).
pub const LAMBDA_LIBRARIES: &[&str] = &[
    "libc.so.6",
    "libm.so.6",
    "libdl.so.2",
    "libpthread.so.0",
    "librt.so.1",
    "libutil.so.1",
    "libgcc_s.so.1",
    "ld-linux-x86-64.so.2",
    "ld-linux-aarch64.so.1",
];

/// The facts about one executable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElfInfo {
    /// The CPU it is built for.
    pub architecture: Architecture,
    /// The dynamic loader it asks for (`PT_INTERP`), `None` for a static executable.
    pub interpreter: Option<String>,
    /// The shared libraries it needs (`DT_NEEDED`).
    pub needed: Vec<String>,
    /// The glibc versions it requires (`GLIBC_x.y` in `.gnu.version_r`), sorted, deduplicated.
    pub glibc: Vec<(u32, u32)>,
}

impl ElfInfo {
    /// Whether it runs without a dynamic loader or shared libraries.
    pub fn is_static(&self) -> bool {
        self.interpreter.is_none() && self.needed.is_empty()
    }

    /// The newest glibc it requires.
    pub fn newest_glibc(&self) -> Option<(u32, u32)> {
        self.glibc.last().copied()
    }

    /// Why Lambda's `provided.al2023` could not run it, if it could not: a glibc newer than
    /// [`LAMBDA_GLIBC`], or a library the runtime does not have.
    pub fn lambda_problem(&self) -> Option<String> {
        if self.is_static() {
            return None;
        }
        if let Some(newest) = self.newest_glibc()
            && newest > LAMBDA_GLIBC
        {
            return Some(format!(
                "needs GLIBC_{}.{}, and Lambda's provided.al2023 has glibc {}.{}",
                newest.0, newest.1, LAMBDA_GLIBC.0, LAMBDA_GLIBC.1
            ));
        }
        let missing: Vec<&str> = self
            .needed
            .iter()
            .map(String::as_str)
            .filter(|lib| !LAMBDA_LIBRARIES.contains(lib))
            .collect();
        if !missing.is_empty() {
            return Some(format!(
                "needs shared libraries Lambda's provided.al2023 does not have: {}",
                missing.join(", ")
            ));
        }
        None
    }
}

const PT_INTERP: u32 = 3;
const SHT_DYNAMIC: u32 = 6;
const SHT_GNU_VERNEED: u32 = 0x6fff_fffe;
const DT_NEEDED: u64 = 1;

/// Little-endian reads that fail on truncation instead of panicking.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn slice(&self, at: u64, len: u64) -> Result<&[u8], String> {
        let start = usize::try_from(at).map_err(|_| truncated())?;
        let len = usize::try_from(len).map_err(|_| truncated())?;
        let end = start.checked_add(len).ok_or_else(truncated)?;
        self.0.get(start..end).ok_or_else(truncated)
    }
    fn u16(&self, at: u64) -> Result<u16, String> {
        let b = self.slice(at, 2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&self, at: u64) -> Result<u32, String> {
        let b = self.slice(at, 4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&self, at: u64) -> Result<u64, String> {
        let b = self.slice(at, 8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    /// The NUL-terminated string at `at`.
    fn cstr(&self, at: u64) -> Result<String, String> {
        let start = usize::try_from(at).map_err(|_| truncated())?;
        let rest = self.0.get(start..).ok_or_else(truncated)?;
        let end = rest.iter().position(|&b| b == 0).ok_or_else(truncated)?;
        Ok(String::from_utf8_lossy(&rest[..end]).into_owned())
    }
}

fn truncated() -> String {
    "is a truncated or damaged ELF file".to_owned()
}

/// One section header's fields that matter here.
struct Section {
    kind: u32,
    offset: u64,
    size: u64,
    link: u32,
    info: u32,
}

/// Reads the facts of a 64-bit little-endian ELF executable, or says what it is instead.
pub fn inspect(binary: &[u8]) -> Result<ElfInfo, String> {
    if binary.len() < 64 || &binary[..4] != b"\x7fELF" {
        return Err(format!(
            "is not a Linux executable; the reaper runs on Lambda's Linux, so on {} build it \
             with scripts/build-static.sh or pass a Linux build of flotilla with --reaper-binary",
            std::env::consts::OS
        ));
    }
    if binary[4] != 2 || binary[5] != 1 {
        return Err("is not a 64-bit little-endian executable; Lambda runs x86_64 or arm64".into());
    }
    let b = Bytes(binary);
    let architecture = match b.u16(18)? {
        0x3e => Architecture::X86_64,
        0xb7 => Architecture::Arm64,
        other => {
            return Err(format!(
                "is built for ELF machine {other:#x}; Lambda runs x86_64 (0x3e) or arm64 (0xb7)"
            ));
        }
    };

    // Program headers: PT_INTERP names the dynamic loader.
    let (phoff, phentsize, phnum) = (b.u64(32)?, u64::from(b.u16(54)?), u64::from(b.u16(56)?));
    let mut interpreter = None;
    for i in 0..phnum {
        let at = phoff + i * phentsize;
        if b.u32(at)? == PT_INTERP {
            let (offset, size) = (b.u64(at + 8)?, b.u64(at + 32)?);
            let raw = b.slice(offset, size)?;
            let text = String::from_utf8_lossy(raw);
            interpreter = Some(text.trim_end_matches('\0').to_owned());
        }
    }

    // Section headers: .dynamic (DT_NEEDED) and .gnu.version_r (required symbol versions).
    let (shoff, shentsize, shnum) = (b.u64(40)?, u64::from(b.u16(58)?), u64::from(b.u16(60)?));
    let mut sections = Vec::new();
    for i in 0..shnum {
        let at = shoff + i * shentsize;
        sections.push(Section {
            kind: b.u32(at + 4)?,
            offset: b.u64(at + 24)?,
            size: b.u64(at + 32)?,
            link: b.u32(at + 40)?,
            info: b.u32(at + 44)?,
        });
    }
    let strtab = |link: u32| -> Result<u64, String> {
        sections
            .get(link as usize)
            .map(|s| s.offset)
            .ok_or_else(truncated)
    };
    let mut needed = Vec::new();
    let mut glibc = Vec::new();
    for section in &sections {
        match section.kind {
            SHT_DYNAMIC => {
                let names = strtab(section.link)?;
                for i in 0..section.size / 16 {
                    let at = section.offset + i * 16;
                    let tag = b.u64(at)?;
                    if tag == 0 {
                        break;
                    }
                    if tag == DT_NEEDED {
                        needed.push(b.cstr(names + b.u64(at + 8)?)?);
                    }
                }
            }
            SHT_GNU_VERNEED => {
                let names = strtab(section.link)?;
                // `info` entries of Elf64_Verneed, each with its chain of Elf64_Vernaux.
                let mut need = section.offset;
                for _ in 0..section.info {
                    let count = b.u16(need + 2)?;
                    let mut aux = need + u64::from(b.u32(need + 8)?);
                    for _ in 0..count {
                        let name = b.cstr(names + u64::from(b.u32(aux + 8)?))?;
                        if let Some(version) = glibc_version(&name) {
                            glibc.push(version);
                        }
                        let next = b.u32(aux + 12)?;
                        if next == 0 {
                            break;
                        }
                        aux += u64::from(next);
                    }
                    let next = b.u32(need + 12)?;
                    if next == 0 {
                        break;
                    }
                    need += u64::from(next);
                }
            }
            _ => {}
        }
    }
    glibc.sort_unstable();
    glibc.dedup();
    Ok(ElfInfo {
        architecture,
        interpreter,
        needed,
        glibc,
    })
}

/// `GLIBC_2.34` as `(2, 34)`; other version names (`GLIBC_PRIVATE`, `GCC_3.0`) are `None`.
pub fn glibc_version(name: &str) -> Option<(u32, u32)> {
    let rest = name.strip_prefix("GLIBC_")?;
    let mut parts = rest.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A small ELF64 file for `machine`, optionally with a `PT_INTERP`, `DT_NEEDED` libraries and
    /// `.gnu.version_r` needs (`(file, [versions])`), laid out the way linkers do.
    pub(crate) fn build_elf(
        machine: u16,
        interp: Option<&str>,
        needed: &[&str],
        verneed: &[(&str, &[&str])],
    ) -> Vec<u8> {
        // String table: offsets of each name.
        let mut strtab = vec![0u8];
        let mut add = |s: &str| -> u32 {
            let at = strtab.len() as u32;
            strtab.extend_from_slice(s.as_bytes());
            strtab.push(0);
            at
        };
        let needed_at: Vec<u32> = needed.iter().map(|n| add(n)).collect();
        let verneed_at: Vec<(u32, Vec<u32>)> = verneed
            .iter()
            .map(|(file, versions)| (add(file), versions.iter().map(|v| add(v)).collect()))
            .collect();
        // .dynamic
        let mut dynamic = Vec::new();
        for at in &needed_at {
            dynamic.extend_from_slice(&DT_NEEDED.to_le_bytes());
            dynamic.extend_from_slice(&u64::from(*at).to_le_bytes());
        }
        dynamic.extend_from_slice(&[0u8; 16]);
        // .gnu.version_r
        let mut vr = Vec::new();
        for (i, (file, versions)) in verneed_at.iter().enumerate() {
            let last = i + 1 == verneed_at.len();
            let size = 16 + 16 * versions.len() as u32;
            vr.extend_from_slice(&1u16.to_le_bytes());
            vr.extend_from_slice(&(versions.len() as u16).to_le_bytes());
            vr.extend_from_slice(&file.to_le_bytes());
            vr.extend_from_slice(&16u32.to_le_bytes());
            vr.extend_from_slice(&(if last { 0 } else { size }).to_le_bytes());
            for (j, v) in versions.iter().enumerate() {
                let last_aux = j + 1 == versions.len();
                vr.extend_from_slice(&0u32.to_le_bytes()); // hash
                vr.extend_from_slice(&0u16.to_le_bytes()); // flags
                vr.extend_from_slice(&2u16.to_le_bytes()); // other
                vr.extend_from_slice(&v.to_le_bytes());
                vr.extend_from_slice(&(if last_aux { 0u32 } else { 16 }).to_le_bytes());
            }
        }
        let interp_bytes = interp.map(|i| {
            let mut v = i.as_bytes().to_vec();
            v.push(0);
            v
        });

        let mut out = vec![0u8; 64];
        out[..4].copy_from_slice(b"\x7fELF");
        out[4] = 2;
        out[5] = 1;
        out[6] = 1;
        out[16] = 2; // ET_EXEC
        out[18..20].copy_from_slice(&machine.to_le_bytes());
        // Program header table right after the ELF header: one PT_INTERP if asked.
        let phnum: u16 = u16::from(interp.is_some());
        let phoff = 64u64;
        out[32..40].copy_from_slice(&phoff.to_le_bytes());
        out[54..56].copy_from_slice(&56u16.to_le_bytes());
        out[56..58].copy_from_slice(&phnum.to_le_bytes());
        let data_start = 64 + 56 * u64::from(phnum);
        let mut data = Vec::new();
        let interp_off = data_start;
        if let Some(bytes) = &interp_bytes {
            data.extend_from_slice(bytes);
        }
        let strtab_off = data_start + data.len() as u64;
        data.extend_from_slice(&strtab);
        let dynamic_off = data_start + data.len() as u64;
        data.extend_from_slice(&dynamic);
        let vr_off = data_start + data.len() as u64;
        data.extend_from_slice(&vr);
        if let Some(bytes) = &interp_bytes {
            let mut ph = vec![0u8; 56];
            ph[..4].copy_from_slice(&PT_INTERP.to_le_bytes());
            ph[8..16].copy_from_slice(&interp_off.to_le_bytes());
            ph[32..40].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
            out.extend_from_slice(&ph);
        }
        out.extend_from_slice(&data);
        // Section headers: null, .dynstr, .dynamic, .gnu.version_r.
        let shoff = out.len() as u64;
        let section = |kind: u32, offset: u64, size: u64, link: u32, info: u32| {
            let mut sh = vec![0u8; 64];
            sh[4..8].copy_from_slice(&kind.to_le_bytes());
            sh[24..32].copy_from_slice(&offset.to_le_bytes());
            sh[32..40].copy_from_slice(&size.to_le_bytes());
            sh[40..44].copy_from_slice(&link.to_le_bytes());
            sh[44..48].copy_from_slice(&info.to_le_bytes());
            sh
        };
        out.extend(section(0, 0, 0, 0, 0));
        out.extend(section(3, strtab_off, strtab.len() as u64, 0, 0));
        out.extend(section(
            SHT_DYNAMIC,
            dynamic_off,
            dynamic.len() as u64,
            1,
            0,
        ));
        out.extend(section(
            SHT_GNU_VERNEED,
            vr_off,
            vr.len() as u64,
            1,
            verneed.len() as u32,
        ));
        out[40..48].copy_from_slice(&shoff.to_le_bytes());
        out[58..60].copy_from_slice(&64u16.to_le_bytes());
        out[60..62].copy_from_slice(&4u16.to_le_bytes());
        out
    }

    #[test]
    fn glibc_versions_table() {
        let check = |name: &str, want: Option<(u32, u32)>| {
            assert_eq!(glibc_version(name), want, "{name}");
        };
        check("GLIBC_2.34", Some((2, 34)));
        check("GLIBC_2.2.5", Some((2, 2)));
        check("GLIBC_PRIVATE", None);
        check("GCC_3.0", None);
        check("GLIBC_", None);
    }

    #[test]
    fn reads_machine_loader_libraries_and_glibc_versions() {
        let glibc = build_elf(
            0x3e,
            Some("/lib64/ld-linux-x86-64.so.2"),
            &["libgcc_s.so.1", "libc.so.6"],
            &[
                ("libgcc_s.so.1", &["GCC_3.0"]),
                ("libc.so.6", &["GLIBC_2.2.5", "GLIBC_2.34", "GLIBC_2.28"]),
            ],
        );
        let info = inspect(&glibc).expect("parses");
        assert_eq!(info.architecture, Architecture::X86_64);
        assert_eq!(
            info.interpreter.as_deref(),
            Some("/lib64/ld-linux-x86-64.so.2")
        );
        assert_eq!(info.needed, ["libgcc_s.so.1", "libc.so.6"]);
        assert_eq!(info.glibc, [(2, 2), (2, 28), (2, 34)]);
        assert!(!info.is_static());
        assert_eq!(info.lambda_problem(), None, "2.34 is what al2023 has");

        let static_arm = inspect(&build_elf(0xb7, None, &[], &[])).expect("parses");
        assert_eq!(static_arm.architecture, Architecture::Arm64);
        assert!(static_arm.is_static());
        assert_eq!(static_arm.lambda_problem(), None);
    }

    #[test]
    fn lambda_refuses_a_newer_glibc_or_a_library_it_lacks() {
        let newer = build_elf(
            0x3e,
            Some("/lib64/ld-linux-x86-64.so.2"),
            &["libc.so.6"],
            &[("libc.so.6", &["GLIBC_2.39", "GLIBC_2.2.5"])],
        );
        let problem = inspect(&newer)
            .expect("parses")
            .lambda_problem()
            .expect("refused");
        assert!(problem.contains("GLIBC_2.39"), "{problem}");
        assert!(problem.contains("2.34"), "{problem}");
        let ssl = build_elf(
            0xb7,
            Some("/lib/ld-linux-aarch64.so.1"),
            &["libssl.so.3", "libc.so.6"],
            &[("libc.so.6", &["GLIBC_2.17"])],
        );
        let problem = inspect(&ssl)
            .expect("parses")
            .lambda_problem()
            .expect("refused");
        assert!(problem.contains("libssl.so.3"), "{problem}");
    }

    #[test]
    fn refuses_what_is_not_a_64_bit_executable_for_lambda() {
        let check = |bytes: &[u8], needle: &str| {
            let err = inspect(bytes).expect_err("refused");
            assert!(err.contains(needle), "{err}");
        };
        check(b"#!/bin/sh\necho hi\n", "not a Linux executable");
        check(b"", "not a Linux executable");
        check(&build_elf(0x28, None, &[], &[]), "ELF machine 0x28");
        let mut bits32 = build_elf(0x3e, None, &[], &[]);
        bits32[4] = 1;
        check(&bits32, "64-bit");
        // Section headers pointing past the end of the file.
        let mut cut = build_elf(
            0x3e,
            None,
            &["libc.so.6"],
            &[("libc.so.6", &["GLIBC_2.17"])],
        );
        cut.truncate(cut.len() - 30);
        check(&cut, "truncated");
    }

    #[test]
    fn this_test_binary_parses() {
        // The test executable itself: a real linker's output for this host.
        let exe = std::env::current_exe().expect("current exe");
        let info = inspect(&std::fs::read(exe).expect("read")).expect("parses");
        let want = match std::env::consts::ARCH {
            "aarch64" => Architecture::Arm64,
            _ => Architecture::X86_64,
        };
        assert_eq!(info.architecture, want);
        if info.interpreter.is_some() && cfg!(target_env = "gnu") {
            assert!(info.needed.iter().any(|n| n == "libc.so.6"), "{info:?}");
            assert!(info.newest_glibc().is_some_and(|v| v >= (2, 2)), "{info:?}");
        }
    }
}
