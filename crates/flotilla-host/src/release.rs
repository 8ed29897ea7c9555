//! Releases: a snapshot of the app directory (respecting `.gitignore`) under
//! `<state_dir>/releases/<id>`, with the optional build command run inside it.
//!
//! A release is complete once its marker file exists; a half-made one (the daemon died while
//! copying or building) is removed and made again, so `prepare` is idempotent per id.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use flotilla_core::DeploymentId;

use crate::error::HostError;

/// The file whose presence marks a complete release.
pub const COMPLETE_MARKER: &str = ".flotilla-release";

/// Lines of build output kept in an error.
const BUILD_TAIL_LINES: usize = 30;

/// Why a release could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// Copying the app directory failed.
    #[error(transparent)]
    Host(#[from] HostError),
    /// Walking the app directory failed.
    #[error("cannot read the app directory {}: {message}", .dir.display())]
    Walk {
        /// The app directory.
        dir: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The build command failed.
    #[error("the build command `{command}` failed ({status}) in {}; its last output:\n{tail}\nfix the build and deploy again", .dir.display())]
    Build {
        /// The command.
        command: String,
        /// How it ended.
        status: String,
        /// The release directory it ran in.
        dir: PathBuf,
        /// Its last lines of output.
        tail: String,
    },
}

/// The release directory of `id`.
pub fn release_dir(releases: &Path, id: &DeploymentId) -> PathBuf {
    releases.join(id.as_str())
}

/// Makes the release of `id` from `app_dir` (unless it is complete already) and returns its path.
///
/// Never copies `state_dir` (it usually lives inside the app directory) nor `.git`.
pub async fn prepare(
    app_dir: &Path,
    state_dir: &Path,
    releases: &Path,
    id: &DeploymentId,
    build: Option<&str>,
) -> Result<PathBuf, ReleaseError> {
    let dir = release_dir(releases, id);
    if dir.join(COMPLETE_MARKER).exists() {
        return Ok(dir);
    }
    if dir.exists() {
        tokio::fs::remove_dir_all(&dir)
            .await
            .map_err(HostError::io("remove half-made release", &dir))?;
    }
    let (from, to, skip) = (app_dir.to_path_buf(), dir.clone(), state_dir.to_path_buf());
    tokio::task::spawn_blocking(move || snapshot(&from, &to, &skip))
        .await
        .map_err(|e| ReleaseError::Walk {
            dir: app_dir.to_path_buf(),
            message: e.to_string(),
        })??;
    if let Some(command) = build {
        run_build(command, app_dir, &dir).await?;
    }
    tokio::fs::write(dir.join(COMPLETE_MARKER), id.as_str())
        .await
        .map_err(HostError::io("mark release complete", &dir))?;
    Ok(dir)
}

/// Copies every file of `from` that `.gitignore` rules do not exclude into `to`.
fn snapshot(from: &Path, to: &Path, skip: &Path) -> Result<(), ReleaseError> {
    std::fs::create_dir_all(to).map_err(HostError::io("create release directory", to))?;
    let skip = skip.to_path_buf();
    let walker = ignore::WalkBuilder::new(from)
        .hidden(false)
        .git_ignore(true)
        .git_exclude(true)
        .git_global(false)
        .ignore(true)
        .require_git(false)
        .parents(true)
        .follow_links(false)
        .filter_entry(move |e| {
            let p = e.path();
            !(p.starts_with(&skip) || e.file_name() == ".git" || e.file_name() == ".flotilla")
        })
        .build();
    for entry in walker {
        let entry = entry.map_err(|e| ReleaseError::Walk {
            dir: from.to_path_buf(),
            message: e.to_string(),
        })?;
        let rel = match entry.path().strip_prefix(from) {
            Ok(rel) if !rel.as_os_str().is_empty() => rel,
            _ => continue,
        };
        let target = to.join(rel);
        let Some(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            std::fs::create_dir_all(&target).map_err(HostError::io("create directory", &target))?;
        } else if kind.is_symlink() {
            let link = std::fs::read_link(entry.path())
                .map_err(HostError::io("read link", entry.path()))?;
            std::os::unix::fs::symlink(&link, &target)
                .map_err(HostError::io("create link", &target))?;
        } else if kind.is_file() {
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(HostError::io("create directory", parent))?;
            }
            std::fs::copy(entry.path(), &target).map_err(HostError::io("copy", entry.path()))?;
        }
    }
    Ok(())
}

async fn run_build(command: &str, app_dir: &Path, dir: &Path) -> Result<(), ReleaseError> {
    let log = dir.join(".flotilla-build.log");
    let file = std::fs::File::create(&log).map_err(HostError::io("create build log", &log))?;
    let err_file = file
        .try_clone()
        .map_err(HostError::io("open build log", &log))?;
    let status = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .current_dir(dir)
        .env("FLOTILLA_APP_DIR", app_dir)
        .env("FLOTILLA_RELEASE_DIR", dir)
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err_file)
        .process_group(0)
        .kill_on_drop(true)
        .status()
        .await
        .map_err(HostError::io("run build command in", dir))?;
    if status.success() {
        return Ok(());
    }
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    Err(ReleaseError::Build {
        command: command.to_owned(),
        status: status.to_string(),
        dir: dir.to_path_buf(),
        tail: tail_lines(&text, BUILD_TAIL_LINES).join("\n"),
    })
}

/// The last `n` lines of `text`.
pub fn tail_lines(text: &str, n: usize) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| (*l).to_owned())
        .collect()
}

/// Removes release directories beyond the newest `keep` that are not in `in_use`.
pub fn prune(
    releases: &Path,
    keep: usize,
    in_use: &[DeploymentId],
) -> Result<Vec<PathBuf>, HostError> {
    let mut ids: Vec<String> = match std::fs::read_dir(releases) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| DeploymentId::new(n).is_ok())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(HostError::io("list releases", releases)(e)),
    };
    ids.sort();
    let mut removed = Vec::new();
    let cut = ids.len().saturating_sub(keep);
    for name in &ids[..cut] {
        if in_use.iter().any(|id| id.as_str() == name) {
            continue;
        }
        let dir = releases.join(name);
        std::fs::remove_dir_all(&dir).map_err(HostError::io("remove release", &dir))?;
        removed.push(dir);
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_core::Timestamp;

    fn id(n: u64) -> DeploymentId {
        DeploymentId::generate(Timestamp::from_secs(1_764_000_000 + n), n)
    }

    #[tokio::test]
    async fn snapshot_respects_gitignore_and_skips_state() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let app = tmp.path().join("app");
        let state = app.join(".flotilla/host");
        std::fs::create_dir_all(app.join("src")).expect("mkdir");
        std::fs::create_dir_all(app.join("target")).expect("mkdir");
        std::fs::create_dir_all(&state).expect("mkdir");
        std::fs::write(app.join(".gitignore"), "target/\n*.log\n").expect("write");
        std::fs::write(app.join("src/main.txt"), "hi").expect("write");
        std::fs::write(app.join("target/big"), "x").expect("write");
        std::fs::write(app.join("debug.log"), "x").expect("write");
        std::fs::write(app.join(".env.example"), "A=1").expect("write");
        let releases = state.join("releases");
        let dir = prepare(
            &app,
            &state,
            &releases,
            &id(1),
            Some("echo built > out.txt"),
        )
        .await
        .expect("prepare");
        assert_eq!(
            std::fs::read_to_string(dir.join("src/main.txt")).expect("copied"),
            "hi"
        );
        assert!(dir.join(".env.example").exists(), "hidden files are kept");
        assert!(!dir.join("target").exists(), "gitignored directory skipped");
        assert!(!dir.join("debug.log").exists(), "gitignored file skipped");
        assert!(!dir.join(".flotilla").exists(), "state directory skipped");
        assert_eq!(
            std::fs::read_to_string(dir.join("out.txt")).expect("built"),
            "built\n"
        );
        // Idempotent: a complete release is reused, not rebuilt.
        std::fs::write(dir.join("out.txt"), "kept").expect("write");
        prepare(
            &app,
            &state,
            &releases,
            &id(1),
            Some("echo built > out.txt"),
        )
        .await
        .expect("again");
        assert_eq!(
            std::fs::read_to_string(dir.join("out.txt")).expect("kept"),
            "kept"
        );
    }

    #[tokio::test]
    async fn failing_build_reports_its_output() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let app = tmp.path().join("app");
        std::fs::create_dir_all(&app).expect("mkdir");
        let state = tmp.path().join("state");
        let err = prepare(
            &app,
            &state,
            &state.join("releases"),
            &id(2),
            Some("echo compile error here; exit 3"),
        )
        .await
        .expect_err("build fails");
        let text = err.to_string();
        assert!(text.contains("compile error here"), "{text}");
        assert!(text.contains("exit status: 3"), "{text}");
        assert!(
            !state
                .join("releases")
                .join(id(2).as_str())
                .join(COMPLETE_MARKER)
                .exists()
        );
    }

    #[test]
    fn prune_keeps_newest_and_in_use() {
        let tmp = tempfile::tempdir().expect("tempdir");
        for n in 1..=5 {
            std::fs::create_dir_all(tmp.path().join(id(n).as_str())).expect("mkdir");
        }
        let removed = prune(tmp.path(), 2, &[id(1)]).expect("prune");
        assert_eq!(removed.len(), 2);
        for (n, exists) in [(1, true), (2, false), (3, false), (4, true), (5, true)] {
            assert_eq!(tmp.path().join(id(n).as_str()).exists(), exists, "{n}");
        }
    }
}
