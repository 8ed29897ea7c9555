//! The reaper's code: the `flotilla` binary itself zipped as `bootstrap` (the name a Lambda custom
//! runtime starts), deterministically, so the same binary always gives the same zip, the same
//! SHA-256 and so the same S3 key (`reaper/<sha256>/bootstrap.zip`).

use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};

use flotilla_baseline::Architecture;
use sha2::{Digest, Sha256};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, DateTime, ZipWriter};

use super::StackError;

/// The largest unzipped function code Lambda accepts (250 MB, code and layers together).
pub const LAMBDA_UNZIPPED_MAX: u64 = 250 * 1024 * 1024;

/// The name Lambda's custom runtime (`provided.al2023`) starts.
pub const BOOTSTRAP: &str = "bootstrap";

/// The reaper's code zip, ready to upload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReaperArtefact {
    /// The binary it was made from.
    pub source: PathBuf,
    /// The zip's bytes.
    pub zip: Vec<u8>,
    /// The zip's SHA-256, lowercase hex.
    pub sha256: String,
    /// The binary's size.
    pub unzipped_size: u64,
    /// The CPU the binary is built for, read from its ELF header.
    pub architecture: Architecture,
}

impl ReaperArtefact {
    /// Zips the Linux executable at `path` as `bootstrap`.
    ///
    /// Refuses what Lambda could not run: a file that is not a 64-bit little-endian Linux ELF
    /// executable for x86_64 or arm64, or one over Lambda's 250 MB unzipped limit.
    pub fn from_binary(path: &Path) -> Result<ReaperArtefact, StackError> {
        let problem = |problem: String| StackError::Artefact {
            path: path.to_owned(),
            problem,
        };
        let binary = std::fs::read(path).map_err(|e| problem(format!("cannot be read: {e}")))?;
        let architecture = elf_architecture(&binary).map_err(problem)?;
        let unzipped_size = binary.len() as u64;
        if unzipped_size > LAMBDA_UNZIPPED_MAX {
            return Err(problem(format!(
                "is {} MB; Lambda accepts at most 250 MB unzipped. Use a release build \
                 (`cargo build --release -p flotilla-cli`), which is much smaller",
                unzipped_size / (1024 * 1024)
            )));
        }
        let zip = zip_bootstrap(&binary).map_err(|e| problem(format!("cannot be zipped: {e}")))?;
        let sha256 = hex::encode(Sha256::digest(&zip));
        Ok(ReaperArtefact {
            source: path.to_owned(),
            zip,
            sha256,
            unzipped_size,
            architecture,
        })
    }

    /// The S3 key the zip is uploaded under.
    pub fn key(&self) -> String {
        flotilla_baseline::contract::reaper_code_key(&self.sha256)
    }
}

/// One `bootstrap` entry, executable, with a fixed timestamp: the same input gives the same bytes.
fn zip_bootstrap(binary: &[u8]) -> zip::result::ZipResult<Vec<u8>> {
    let mut writer = ZipWriter::new(Cursor::new(Vec::new()));
    let options = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Deflated)
        .last_modified_time(DateTime::default())
        .unix_permissions(0o755)
        .large_file(binary.len() as u64 >= u64::from(u32::MAX));
    writer.start_file(BOOTSTRAP, options)?;
    writer.write_all(binary)?;
    Ok(writer.finish()?.into_inner())
}

/// The Lambda architecture of a 64-bit little-endian ELF executable, or what is wrong with it.
pub fn elf_architecture(binary: &[u8]) -> Result<Architecture, String> {
    if binary.len() < 20 || &binary[..4] != b"\x7fELF" {
        return Err(format!(
            "is not a Linux executable; the reaper runs on Lambda's Linux, so on {} pass a \
             Linux build of flotilla with --reaper-binary",
            std::env::consts::OS
        ));
    }
    if binary[4] != 2 || binary[5] != 1 {
        return Err("is not a 64-bit little-endian executable; Lambda runs x86_64 or arm64".into());
    }
    match u16::from_le_bytes([binary[18], binary[19]]) {
        0x3e => Ok(Architecture::X86_64),
        0xb7 => Ok(Architecture::Arm64),
        other => Err(format!(
            "is built for ELF machine {other:#x}; Lambda runs x86_64 (0x3e) or arm64 (0xb7)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF header for `machine`.
    fn elf(machine: u16) -> Vec<u8> {
        let mut b = vec![0u8; 64];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[18..20].copy_from_slice(&machine.to_le_bytes());
        b
    }

    #[test]
    fn architectures_from_elf_headers() {
        let check = |bytes: &[u8], want: Result<Architecture, &str>| {
            let got = elf_architecture(bytes);
            match want {
                Ok(arch) => assert_eq!(got, Ok(arch)),
                Err(needle) => {
                    let msg = got.expect_err("refused");
                    assert!(msg.contains(needle), "{msg}");
                }
            }
        };
        check(&elf(0x3e), Ok(Architecture::X86_64));
        check(&elf(0xb7), Ok(Architecture::Arm64));
        check(&elf(0x28), Err("ELF machine 0x28"));
        check(b"#!/bin/sh\necho hi\n", Err("not a Linux executable"));
        check(b"", Err("not a Linux executable"));
        let mut bits32 = elf(0x3e);
        bits32[4] = 1;
        check(&bits32, Err("64-bit"));
    }

    #[test]
    fn the_same_binary_gives_the_same_zip_and_key() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("flotilla");
        let mut binary = elf(0x3e);
        binary.extend(std::iter::repeat_n(b'x', 10_000));
        std::fs::write(&path, &binary).expect("write");
        let a = ReaperArtefact::from_binary(&path).expect("zips");
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let b = ReaperArtefact::from_binary(&path).expect("zips");
        assert_eq!(a.zip, b.zip, "timestamps must not leak into the zip");
        assert_eq!(a.key(), format!("reaper/{}/bootstrap.zip", a.sha256));
        assert_eq!(a.sha256.len(), 64);
        assert_eq!(a.architecture, Architecture::X86_64);
        assert!(a.zip.len() < binary.len(), "deflated");

        let mut archive = zip::ZipArchive::new(Cursor::new(a.zip.clone())).expect("a zip");
        assert_eq!(archive.len(), 1);
        let entry = archive.by_index(0).expect("entry");
        assert_eq!(entry.name(), BOOTSTRAP);
        assert_eq!(entry.unix_mode().map(|m| m & 0o777), Some(0o755));
        assert_eq!(entry.size(), binary.len() as u64);

        binary.push(b'y');
        std::fs::write(&path, &binary).expect("write");
        let c = ReaperArtefact::from_binary(&path).expect("zips");
        assert_ne!(c.key(), a.key(), "a new build is a new key");
    }

    #[test]
    fn refusals_name_the_file_and_what_to_do() {
        let dir = tempfile::tempdir().expect("temp dir");
        let script = dir.path().join("run.sh");
        std::fs::write(&script, "#!/bin/sh\n").expect("write");
        let err = ReaperArtefact::from_binary(&script).expect_err("not ELF");
        let text = err.to_string();
        assert!(text.contains("run.sh"), "{text}");
        assert!(err.hint().contains("--reaper-binary"), "{}", err.hint());
        let missing = ReaperArtefact::from_binary(&dir.path().join("nope")).expect_err("missing");
        assert!(missing.to_string().contains("cannot be read"), "{missing}");
    }
}
