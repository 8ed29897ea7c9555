//! Releases: a snapshot of the app directory (respecting `.gitignore`) under
//! `<state_dir>/releases/<id>`, with the optional build command run inside it.
//!
//! The build's output (stdout and stderr, line by line in the order they come) goes to its log
//! file, kept outside the release so that it outlives a failed one, and to the caller as
//! progress events while the build runs; a failure carries the exit status, the last lines and
//! the log's path.
//!
//! A release is complete once its marker file exists; a half-made one (the daemon died while
//! copying or building) is removed and made again, so `prepare` is idempotent per id.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use flotilla_core::DeploymentId;
use flotilla_engine::events::{BuildLines, Event, Progress};
use tokio::sync::mpsc;

use crate::error::HostError;

/// The file whose presence marks a complete release.
pub const COMPLETE_MARKER: &str = ".flotilla-release";

/// How long output still pending is read after the build command exited (a process it left in
/// the background may hold its output open).
const OUTPUT_AFTER_EXIT: Duration = Duration::from_secs(2);

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
    /// The snapshot holds no file: everything in the app directory is ignored, or the app
    /// directory lies inside the state directory (which a snapshot never copies).
    #[error(
        "the release snapshot of {} is empty: no file there is copied (the state directory {} \
         and .git are never copied, nor what .gitignore and .ignore exclude); check \
         `[host] state_dir` and the ignore files",
        .app_dir.display(), .state_dir.display()
    )]
    Empty {
        /// The app directory.
        app_dir: PathBuf,
        /// The state directory.
        state_dir: PathBuf,
    },
    /// The build command failed.
    #[error(transparent)]
    Build(Box<BuildFailure>),
}

/// How a build command failed, with what the user needs to fix it.
#[derive(Debug, thiserror::Error)]
#[error("the build command `{command}` failed ({status}) after {:.1}s in {}; its last output:\n{tail}\nits whole output is in {}", .elapsed.as_secs_f64(), .dir.display(), .log.display())]
pub struct BuildFailure {
    /// The command.
    pub command: String,
    /// How it ended.
    pub status: String,
    /// How long it ran.
    pub elapsed: Duration,
    /// The release directory it ran in.
    pub dir: PathBuf,
    /// Its last lines of output, each indented as `  | line`.
    pub tail: String,
    /// The file with its whole output.
    pub log: PathBuf,
}

/// The release directory of `id`.
pub fn release_dir(releases: &Path, id: &DeploymentId) -> PathBuf {
    releases.join(id.as_str())
}

/// A build command to run in a release, and the file that keeps its output.
#[derive(Clone, Copy, Debug)]
pub struct Build<'a> {
    /// The shell command (`[host] build`).
    pub command: &'a str,
    /// Its log file (created or truncated when it starts).
    pub log: &'a Path,
}

/// The build log of `id` under the logs directory: `<logs>/build-<id>.log`.
pub fn build_log(logs_dir: &Path, id: &DeploymentId) -> PathBuf {
    logs_dir.join(format!("build-{id}.log"))
}

/// Makes the release of `id` from `app_dir` (unless it is complete already) and returns its path,
/// telling `progress` when the build starts, each line it prints, and when it finished.
///
/// Never copies `state_dir` (it usually lives inside the app directory) nor `.git`.
pub async fn prepare(
    app_dir: &Path,
    state_dir: &Path,
    releases: &Path,
    id: &DeploymentId,
    build: Option<Build<'_>>,
    progress: &dyn Progress,
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
    let copied = tokio::task::spawn_blocking(move || snapshot(&from, &to, &skip))
        .await
        .map_err(|e| ReleaseError::Walk {
            dir: app_dir.to_path_buf(),
            message: e.to_string(),
        })??;
    if copied.files == 0 {
        let _ = tokio::fs::remove_dir_all(&dir).await;
        return Err(ReleaseError::Empty {
            app_dir: app_dir.to_path_buf(),
            state_dir: state_dir.to_path_buf(),
        });
    }
    if !copied.secret_like.is_empty() {
        progress.event(Event::Note {
            message: secrets_note(&copied.secret_like),
        });
    }
    if let Some(build) = build {
        run_build(build, app_dir, &dir, id, progress).await?;
    }
    tokio::fs::write(dir.join(COMPLETE_MARKER), id.as_str())
        .await
        .map_err(HostError::io("mark release complete", &dir))?;
    Ok(dir)
}

/// Whether a file named `name` looks like it holds a secret: `.env` files (not `.env.example`,
/// `.env.sample`, `.env.template`), private keys and certificates' keys, credential files.
pub fn looks_like_secret(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    if name == ".env" {
        return true;
    }
    if let Some(variant) = name.strip_prefix(".env.") {
        return !matches!(
            variant,
            "example" | "sample" | "template" | "dist" | "defaults"
        );
    }
    if name.ends_with(".env") && name != ".env" {
        return !name.ends_with(".example.env") && !name.ends_with(".sample.env");
    }
    const NAMES: &[&str] = &[
        "id_rsa",
        "id_dsa",
        "id_ecdsa",
        "id_ed25519",
        ".netrc",
        ".npmrc",
        ".pypirc",
        "credentials",
        "credentials.json",
        "secrets.json",
        "secrets.yml",
        "secrets.yaml",
    ];
    const EXTENSIONS: &[&str] = &[".pem", ".key", ".p12", ".pfx", ".keystore", ".jks"];
    NAMES.contains(&name.as_str()) || EXTENSIONS.iter().any(|ext| name.ends_with(ext))
}

/// The note `deploy` shows for the release's files that look like secrets.
fn secrets_note(files: &[String]) -> String {
    const SHOWN: usize = 10;
    let mut list = files
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if files.len() > SHOWN {
        list.push_str(&format!(" and {} more", files.len() - SHOWN));
    }
    format!(
        "the release holds files that look like secrets: {list}; every release snapshot copies \
         them and the app can read them. Add them to .gitignore (or .ignore) to leave them out, \
         and give secrets through [host] secrets_file instead"
    )
}

/// What a snapshot copied.
struct Copied {
    /// Files and links copied.
    files: usize,
    /// The relative paths of those that look like secrets, sorted.
    secret_like: Vec<String>,
}

/// Copies every file of `from` that `.gitignore` rules do not exclude into `to`.
fn snapshot(from: &Path, to: &Path, skip: &Path) -> Result<Copied, ReleaseError> {
    let mut copied = Copied {
        files: 0,
        secret_like: Vec::new(),
    };
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
            copied.files += 1;
        } else if kind.is_file() {
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(HostError::io("create directory", parent))?;
            }
            std::fs::copy(entry.path(), &target).map_err(HostError::io("copy", entry.path()))?;
            copied.files += 1;
            if looks_like_secret(&entry.file_name().to_string_lossy()) {
                copied.secret_like.push(rel.display().to_string());
            }
        }
    }
    copied.secret_like.sort();
    Ok(copied)
}

async fn run_build(
    build: Build<'_>,
    app_dir: &Path,
    dir: &Path,
    id: &DeploymentId,
    progress: &dyn Progress,
) -> Result<(), ReleaseError> {
    let log = build.log;
    if let Some(parent) = log.parent() {
        crate::private::private_dir(parent)
            .map_err(HostError::io("create log directory", parent))?;
    }
    let mut file =
        crate::private::private_create(log).map_err(HostError::io("create build log", log))?;
    progress.event(Event::BuildStarted {
        id: id.clone(),
        command: build.command.to_owned(),
        log: log.display().to_string(),
    });
    let started = Instant::now();
    // One pipe for stdout and stderr, so that the lines keep the order the build printed them
    // in. Close-on-exec, so that no other process the daemon starts meanwhile holds it open.
    let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| HostError::io("create a pipe for the build in", dir)(e.into()))?;
    let err_end = write_end
        .try_clone()
        .map_err(HostError::io("create a pipe for the build in", dir))?;
    let mut child = {
        // The command holds the pipe's write ends until it is dropped here, right after the
        // spawn: the output ends when the build (and whatever it left running) closes them.
        let mut command = tokio::process::Command::new("sh");
        command
            .arg("-c")
            .arg(build.command)
            .current_dir(dir)
            .env("FLOTILLA_APP_DIR", app_dir)
            .env("FLOTILLA_RELEASE_DIR", dir)
            // A daemon started by a handover names its inherited sockets in its environment;
            // they are not the build's (they are close-on-exec, and the names would mislead a
            // tool that honours socket activation).
            .env_remove(crate::handover::LISTEN_FDS_VAR)
            .env_remove("LISTEN_FDS")
            .env_remove(crate::handover::UPGRADE_FROM_VAR)
            .stdin(Stdio::null())
            .stdout(Stdio::from(write_end))
            .stderr(Stdio::from(err_end))
            .process_group(0)
            .kill_on_drop(true);
        command
            .spawn()
            .map_err(HostError::io("run build command in", dir))?
    };
    let (tx, mut lines) = mpsc::unbounded_channel();
    // A blocking reader: it ends at end of file, even when nobody waits for it any more.
    std::thread::spawn(move || read_lines(std::fs::File::from(read_end), tx));
    let mut output = BuildLines::new(id.clone(), progress);
    let mut on_line = |line: String| {
        use std::io::Write as _;
        // A log that cannot be written must not fail the build; the events still show it.
        let _ = writeln!(file, "{line}");
        output.line(&line);
    };
    let status = loop {
        tokio::select! {
            Some(line) = lines.recv() => on_line(line),
            status = child.wait() => break status.map_err(HostError::io("wait for build command in", dir))?,
        }
    };
    let _ = tokio::time::timeout(OUTPUT_AFTER_EXIT, async {
        while let Some(line) = lines.recv().await {
            on_line(line);
        }
    })
    .await;
    let elapsed = started.elapsed();
    if status.success() {
        progress.event(Event::BuildFinished {
            id: id.clone(),
            elapsed,
            log: log.display().to_string(),
        });
        return Ok(());
    }
    Err(ReleaseError::Build(Box::new(BuildFailure {
        command: build.command.to_owned(),
        status: status.to_string(),
        elapsed,
        dir: dir.to_path_buf(),
        tail: output.tail_text(),
        log: log.to_path_buf(),
    })))
}

/// Sends each line read from `from` (without its line ending; invalid UTF-8 replaced) until it
/// closes or nobody listens any more.
fn read_lines(from: std::fs::File, to: mpsc::UnboundedSender<String>) {
    use std::io::BufRead as _;
    let mut reader = std::io::BufReader::new(from);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let text = String::from_utf8_lossy(&buf);
                let line = text.trim_end_matches(['\n', '\r']).to_owned();
                if to.send(line).is_err() {
                    return;
                }
            }
        }
    }
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
    use flotilla_engine::events::{Recorder, Silent};

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
        let log = state.join("logs/build.log");
        let build = Build {
            command: "echo built > out.txt",
            log: &log,
        };
        let dir = prepare(&app, &state, &releases, &id(1), Some(build), &Silent)
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
        let recorder = Recorder::default();
        prepare(&app, &state, &releases, &id(1), Some(build), &recorder)
            .await
            .expect("again");
        assert_eq!(recorder.0.lock().expect("lock").len(), 0, "no build ran");
        assert_eq!(
            std::fs::read_to_string(dir.join("out.txt")).expect("kept"),
            "kept"
        );
    }

    #[test]
    fn secret_looking_names_are_recognised_and_examples_are_not() {
        for name in [
            ".env",
            ".env.local",
            ".env.production",
            "prod.env",
            "id_rsa",
            "id_ed25519",
            "server.pem",
            "tls.KEY",
            "cert.p12",
            ".npmrc",
            "credentials.json",
        ] {
            assert!(looks_like_secret(name), "{name}");
        }
        for name in [
            ".env.example",
            ".env.sample",
            ".env.template",
            "id_rsa.pub",
            "main.rs",
            "README",
            "environment.ts",
            "keys.txt",
        ] {
            assert!(!looks_like_secret(name), "{name}");
        }
    }

    #[tokio::test]
    async fn deploy_is_told_which_files_of_the_release_look_like_secrets() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let app = tmp.path().join("app");
        std::fs::create_dir_all(app.join("config")).expect("mkdir");
        std::fs::write(app.join("start.sh"), "x").expect("write");
        std::fs::write(app.join(".env"), "SECRET=1").expect("write");
        std::fs::write(app.join(".env.example"), "SECRET=").expect("write");
        std::fs::write(app.join("config/server.pem"), "x").expect("write");
        let state = tmp.path().join("state");
        let recorder = Recorder::default();
        prepare(&app, &state, &state.join("r"), &id(9), None, &recorder)
            .await
            .expect("prepare");
        let notes: Vec<Event> = events(&recorder);
        assert_eq!(
            notes,
            vec![Event::Note {
                message: "the release holds files that look like secrets: .env, \
                          config/server.pem; every release snapshot copies them and the app can \
                          read them. Add them to .gitignore (or .ignore) to leave them out, and \
                          give secrets through [host] secrets_file instead"
                    .to_owned()
            }]
        );

        // Ignored, they are neither copied nor named.
        std::fs::write(app.join(".gitignore"), ".env\n*.pem\n").expect("write");
        let recorder = Recorder::default();
        prepare(&app, &state, &state.join("r"), &id(10), None, &recorder)
            .await
            .expect("prepare");
        assert!(events(&recorder).is_empty(), "{:?}", events(&recorder));
    }

    #[tokio::test]
    async fn an_empty_snapshot_fails_clearly_and_leaves_no_release() {
        let tmp = tempfile::tempdir().expect("tempdir");
        // The state directory contains the app directory (state_dir = ".."): nothing is copied.
        let state = tmp.path().to_path_buf();
        let app = state.join("app");
        std::fs::create_dir_all(&app).expect("mkdir");
        std::fs::write(app.join("start.sh"), "exec ./app\n").expect("write");
        let releases = state.join("releases");
        let err = prepare(&app, &state, &releases, &id(7), None, &Silent)
            .await
            .expect_err("nothing to copy");
        assert!(matches!(err, ReleaseError::Empty { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains(&format!("release snapshot of {} is empty", app.display()))
                && text.contains("[host] state_dir"),
            "{text}"
        );
        assert!(
            !release_dir(&releases, &id(7)).exists(),
            "no half-made release"
        );

        // Everything ignored: the same clear error.
        let other = tempfile::tempdir().expect("tempdir");
        std::fs::write(other.path().join(".ignore"), "*\n").expect("write");
        std::fs::write(other.path().join("start.sh"), "x").expect("write");
        let state = tmp.path().join("elsewhere");
        let err = prepare(
            other.path(),
            &state,
            &state.join("r"),
            &id(8),
            None,
            &Silent,
        )
        .await
        .expect_err("everything ignored");
        assert!(matches!(err, ReleaseError::Empty { .. }), "{err}");
    }

    fn events(recorder: &Recorder) -> Vec<Event> {
        recorder.0.lock().expect("lock").clone()
    }

    #[tokio::test]
    async fn a_build_streams_its_output_and_says_how_long_it_took() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let app = tmp.path().join("app");
        std::fs::create_dir_all(&app).expect("mkdir");
        std::fs::write(app.join("start.sh"), "exec ./app\n").expect("write");
        let state = tmp.path().join("state");
        let log = state.join("logs/build.log");
        let command = "echo compiling; echo 'a warning' >&2; printf 'no newline'";
        let recorder = Recorder::default();
        let build = Build { command, log: &log };
        prepare(
            &app,
            &state,
            &state.join("releases"),
            &id(3),
            Some(build),
            &recorder,
        )
        .await
        .expect("prepare");
        let events = events(&recorder);
        assert_eq!(
            events.first(),
            Some(&Event::BuildStarted {
                id: id(3),
                command: command.to_owned(),
                log: log.display().to_string(),
            })
        );
        let lines: Vec<String> = events
            .iter()
            .filter_map(|e| match e {
                Event::BuildOutput { line, .. } => Some(line.clone()),
                _ => None,
            })
            .collect();
        // stdout and stderr share one pipe: the lines keep the order they were printed in.
        assert_eq!(lines, ["compiling", "a warning", "no newline"]);
        assert!(
            matches!(events.last(), Some(Event::BuildFinished { log: l, .. }) if *l == log.display().to_string()),
            "{events:?}"
        );
        let logged = std::fs::read_to_string(&log).expect("log");
        assert_eq!(
            logged, "compiling\na warning\nno newline\n",
            "the log keeps every line"
        );
    }

    #[tokio::test]
    async fn a_build_that_leaves_a_process_holding_its_output_still_ends() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let app = tmp.path().join("app");
        std::fs::create_dir_all(&app).expect("mkdir");
        std::fs::write(app.join("start.sh"), "exec ./app\n").expect("write");
        let state = tmp.path().join("state");
        let log = state.join("logs/build.log");
        let build = Build {
            command: "sleep 6 & echo started a server",
            log: &log,
        };
        let recorder = Recorder::default();
        let started = Instant::now();
        prepare(
            &app,
            &state,
            &state.join("releases"),
            &id(4),
            Some(build),
            &recorder,
        )
        .await
        .expect("prepare");
        assert!(
            started.elapsed() < OUTPUT_AFTER_EXIT + Duration::from_secs(2),
            "waited {:?} for output after the build exited",
            started.elapsed()
        );
        assert!(events(&recorder).contains(&Event::BuildOutput {
            id: id(4),
            line: "started a server".to_owned()
        }));
    }

    #[tokio::test]
    async fn failing_build_reports_its_tail_status_and_log() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let app = tmp.path().join("app");
        std::fs::create_dir_all(&app).expect("mkdir");
        std::fs::write(app.join("start.sh"), "exec ./app\n").expect("write");
        let state = tmp.path().join("state");
        let log = state.join("logs/build.log");
        let build = Build {
            command: "for i in $(seq 1 40); do echo line $i; done; echo compile error here; exit 3",
            log: &log,
        };
        let recorder = Recorder::default();
        let err = prepare(
            &app,
            &state,
            &state.join("releases"),
            &id(2),
            Some(build),
            &recorder,
        )
        .await
        .expect_err("build fails");
        let text = err.to_string();
        assert!(text.contains("  | compile error here"), "{text}");
        assert!(text.contains("  | line 40"), "{text}");
        assert!(!text.contains("line 11\n"), "only the tail: {text}");
        assert!(text.contains("exit status: 3"), "{text}");
        assert!(text.contains(&log.display().to_string()), "{text}");
        let logged = std::fs::read_to_string(&log).expect("log");
        assert!(logged.starts_with("line 1\n") && logged.contains("compile error here"));
        assert_eq!(
            events(&recorder)
                .iter()
                .filter(|e| matches!(e, Event::BuildOutput { .. }))
                .count(),
            41
        );
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
