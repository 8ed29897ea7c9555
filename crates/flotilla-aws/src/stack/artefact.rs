//! The reaper's code: which executable it is, checked for what Lambda can run, zipped as
//! `bootstrap` (the name a Lambda custom runtime starts), deterministically, so the same binary
//! always gives the same zip, the same SHA-256 and so the same S3 key
//! (`reaper/<sha256>/bootstrap.zip`).
//!
//! Which executable ([`choose`]): an explicit `--reaper-binary`; else the static
//! `flotilla-aws-reaper-<arch>` that `scripts/build-static.sh` builds, found next to the running
//! `flotilla` or in `target/static/` beside its build directory; else the running `flotilla`
//! itself, if Lambda's `provided.al2023` can run it (see [`elf::ElfInfo::lambda_problem`]).

use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};

use flotilla_baseline::Architecture;
use sha2::{Digest, Sha256};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, DateTime, ZipWriter};

use super::StackError;
use super::elf;

/// The largest unzipped function code Lambda accepts (250 MB, code and layers together).
pub const LAMBDA_UNZIPPED_MAX: u64 = 250 * 1024 * 1024;

/// The largest zip Lambda accepts uploaded directly (50 MB); flotilla keeps under it although it
/// uploads through S3, so the same artefact can be deployed either way.
pub const LAMBDA_ZIPPED_MAX: u64 = 50 * 1024 * 1024;

/// The name Lambda's custom runtime (`provided.al2023`) starts.
pub const BOOTSTRAP: &str = "bootstrap";

/// The static reaper's file name for `arch`, as `scripts/build-static.sh` names it.
pub fn static_reaper_name(arch: Architecture) -> String {
    let arch = match arch {
        Architecture::X86_64 => "x86_64",
        Architecture::Arm64 => "arm64",
    };
    format!("flotilla-aws-reaper-{arch}")
}

/// Where the reaper's executable came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReaperSource {
    /// `--reaper-binary PATH`.
    Explicit(PathBuf),
    /// A static reaper found next to the running binary or in the static build's output.
    Static(PathBuf),
    /// The running `flotilla` binary.
    Running(PathBuf),
}

impl ReaperSource {
    /// The executable's path.
    pub fn path(&self) -> &Path {
        match self {
            ReaperSource::Explicit(p) | ReaperSource::Static(p) | ReaperSource::Running(p) => p,
        }
    }

    /// How it was chosen, in words.
    pub fn describe(&self) -> &'static str {
        match self {
            ReaperSource::Explicit(_) => "given with --reaper-binary",
            ReaperSource::Static(_) => "the static reaper built by scripts/build-static.sh",
            ReaperSource::Running(_) => "this flotilla binary",
        }
    }
}

/// The places a static reaper for `arch` is looked for, given the running binary `running`:
/// beside it (a release archive ships them together), and in `target/static/` when it runs from
/// `target/<profile>/` (where `scripts/build-static.sh` puts it).
pub fn static_candidates(running: &Path, arch: Architecture) -> Vec<PathBuf> {
    static_candidates_named(running, &static_reaper_name(arch))
}

/// The places a static executable `name` from `scripts/build-static.sh` is looked for, given the
/// running binary `running` (see [`static_candidates`]); the agent is found the same way.
pub fn static_candidates_named(running: &Path, name: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(dir) = running.parent() {
        out.push(dir.join(name));
        if let Some(target) = dir.parent() {
            out.push(target.join("static").join(name));
        }
    }
    out
}

/// Chooses the reaper's executable: `explicit` if given; else the first static reaper for
/// `arch` that exists among [`static_candidates`] of `running`; else `running`.
pub fn choose(explicit: Option<&Path>, running: &Path, arch: Architecture) -> ReaperSource {
    if let Some(path) = explicit {
        return ReaperSource::Explicit(path.to_owned());
    }
    static_candidates(running, arch)
        .into_iter()
        .find(|p| p.is_file())
        .map(ReaperSource::Static)
        .unwrap_or_else(|| ReaperSource::Running(running.to_owned()))
}

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
    /// Whether the binary is static (no dynamic loader, no shared libraries).
    pub is_static: bool,
}

impl ReaperArtefact {
    /// Zips the Linux executable at `path` as `bootstrap`.
    ///
    /// Refuses what Lambda could not run: a file that is not a 64-bit little-endian Linux ELF
    /// executable for x86_64 or arm64, a glibc build that needs a newer glibc (or a library)
    /// than `provided.al2023` has, and one over Lambda's 250 MB unzipped or 50 MB zipped.
    pub fn from_binary(path: &Path) -> Result<ReaperArtefact, StackError> {
        let problem = |problem: String| StackError::Artefact {
            path: path.to_owned(),
            problem,
        };
        let binary = std::fs::read(path).map_err(|e| problem(format!("cannot be read: {e}")))?;
        let info = elf::inspect(&binary).map_err(problem)?;
        if let Some(why) = info.lambda_problem() {
            return Err(problem(format!(
                "cannot run on Lambda: it {why}. Build the static reaper with \
                 `scripts/build-static.sh` (then `baseline up` finds it), or pass one with \
                 --reaper-binary"
            )));
        }
        let unzipped_size = binary.len() as u64;
        if unzipped_size > LAMBDA_UNZIPPED_MAX {
            return Err(problem(format!(
                "is {} MB; Lambda accepts at most 250 MB unzipped. Build the static reaper \
                 with `scripts/build-static.sh` (a few MB), or a release build \
                 (`cargo build --release -p flotilla-cli`, stripped)",
                unzipped_size / (1024 * 1024)
            )));
        }
        let zip = zip_bootstrap(&binary).map_err(|e| problem(format!("cannot be zipped: {e}")))?;
        if zip.len() as u64 > LAMBDA_ZIPPED_MAX {
            return Err(problem(format!(
                "zips to {} MB; Lambda accepts at most 50 MB zipped. Build the static reaper \
                 with `scripts/build-static.sh`",
                zip.len() / (1024 * 1024)
            )));
        }
        let sha256 = hex::encode(Sha256::digest(&zip));
        Ok(ReaperArtefact {
            source: path.to_owned(),
            zip,
            sha256,
            unzipped_size,
            architecture: info.architecture,
            is_static: info.is_static(),
        })
    }

    /// The S3 key the zip is uploaded under.
    pub fn key(&self) -> String {
        flotilla_baseline::contract::reaper_code_key(&self.sha256)
    }

    /// One line for the user: what, how big unzipped and zipped.
    pub fn summary(&self) -> String {
        format!(
            "{} ({}, {}), {:.1} MB unzipped, {:.1} MB zipped (Lambda allows 250 and 50)",
            self.source.display(),
            match self.architecture {
                Architecture::X86_64 => "x86_64",
                Architecture::Arm64 => "arm64",
            },
            if self.is_static { "static" } else { "glibc" },
            self.unzipped_size as f64 / 1_048_576.0,
            self.zip.len() as f64 / 1_048_576.0,
        )
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
    fn choose_prefers_explicit_then_static_then_running() {
        let dir = tempfile::tempdir().expect("temp dir");
        let release = dir.path().join("target/release");
        std::fs::create_dir_all(&release).expect("mkdir");
        let running = release.join("flotilla");
        std::fs::write(&running, elf(0x3e)).expect("write");

        let choice = choose(None, &running, Architecture::X86_64);
        assert_eq!(choice, ReaperSource::Running(running.clone()));
        assert_eq!(choice.describe(), "this flotilla binary");

        // The static build's output beside the build directory.
        let static_dir = dir.path().join("target/static");
        std::fs::create_dir_all(&static_dir).expect("mkdir");
        let built = static_dir.join("flotilla-aws-reaper-x86_64");
        std::fs::write(&built, elf(0x3e)).expect("write");
        assert_eq!(
            choose(None, &running, Architecture::X86_64),
            ReaperSource::Static(built.clone())
        );
        // Not for the other architecture.
        assert_eq!(
            choose(None, &running, Architecture::Arm64),
            ReaperSource::Running(running.clone())
        );
        // One right beside the binary wins (a release archive ships them together).
        let beside = release.join("flotilla-aws-reaper-x86_64");
        std::fs::write(&beside, elf(0x3e)).expect("write");
        assert_eq!(
            choose(None, &running, Architecture::X86_64),
            ReaperSource::Static(beside)
        );
        // An explicit path always wins.
        let explicit = dir.path().join("mine");
        assert_eq!(
            choose(Some(&explicit), &running, Architecture::X86_64),
            ReaperSource::Explicit(explicit)
        );
    }

    #[test]
    fn a_glibc_binary_newer_than_lambdas_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("flotilla");
        let newer = elf::tests::build_elf(
            0x3e,
            Some("/lib64/ld-linux-x86-64.so.2"),
            &["libc.so.6"],
            &[("libc.so.6", &["GLIBC_2.2.5", "GLIBC_2.38"])],
        );
        std::fs::write(&path, &newer).expect("write");
        let err = ReaperArtefact::from_binary(&path).expect_err("refused");
        let text = err.to_string();
        assert!(text.contains("GLIBC_2.38"), "{text}");
        assert!(text.contains("scripts/build-static.sh"), "{text}");

        let ok = elf::tests::build_elf(
            0x3e,
            Some("/lib64/ld-linux-x86-64.so.2"),
            &["libc.so.6"],
            &[("libc.so.6", &["GLIBC_2.2.5", "GLIBC_2.34"])],
        );
        std::fs::write(&path, &ok).expect("write");
        let artefact = ReaperArtefact::from_binary(&path).expect("2.34 runs on al2023");
        assert!(!artefact.is_static);
        assert!(
            artefact.summary().contains("glibc"),
            "{}",
            artefact.summary()
        );
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
