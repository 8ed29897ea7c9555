//! A private Docker Engine and image registry for tests, started the way the moto harness starts
//! moto: on private sockets and ports under a temporary directory, never touching the machine's own
//! Docker (if it has one) and never Docker Hub.
//!
//! - [`Docker`]: a `dockerd` from Debian's `docker.io` (`--iptables=false --bridge=none
//!   --storage-driver=vfs`, its own socket, data root, exec root and pidfile), driven through the
//!   `docker` CLI of the same package. Containers run with `--network host`.
//! - [`Registry`]: Debian's `docker-registry` on a free loopback port; docker allows plain HTTP to
//!   registries on 127.0.0.0/8, so `127.0.0.1:<port>/repo:tag` pushes and pulls without TLS.
//! - Base images without Docker Hub: Debian minbase root filesystems built by
//!   `scripts/base-images.sh` (debootstrap, cached in `.cache/images/`, no CA bundle) and imported
//!   with `docker import`; `FROM scratch` images from static binaries such as Debian's
//!   `busybox-static` ([`BUSYBOX`]).
//!
//! Everything is installed by `scripts/docker.sh`. Each daemon and registry has a watchdog process
//! that removes its containers, stops it by PID and deletes its directory when the value is
//! dropped or, for the shared ones ([`Docker::shared`], [`Registry::shared`]), when the test
//! process exits, however it exits.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Debian's docker daemon (package `docker.io`).
pub const DOCKERD: &str = "/usr/sbin/dockerd";
/// The docker CLI of the same package. Not whatever `docker` is first on `PATH`: a newer CLI
/// would talk to the 20.10 daemon through API version negotiation, which is one more variable.
pub const DOCKER_CLI: &str = "/usr/bin/docker";
/// Debian's image registry (package `docker-registry`).
pub const DOCKER_REGISTRY: &str = "/usr/bin/docker-registry";
/// A statically linked busybox (package `busybox-static`): a whole userland in one file, for
/// `FROM scratch` test images.
pub const BUSYBOX: &str = "/bin/busybox";

/// How long a daemon or registry may take to answer after it is started.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// What went wrong starting or driving the private Docker.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// A binary the harness needs is not installed.
    #[error("{binary} is not installed; run scripts/docker.sh as root (installs {package})")]
    NotInstalled {
        /// The missing file.
        binary: &'static str,
        /// The Debian package that provides it.
        package: &'static str,
    },
    /// A daemon did not come up; `log` is the end of its log.
    #[error("{what} did not start within {timeout:?}; the end of its log:\n{log}")]
    Start {
        /// Which service.
        what: String,
        /// How long the harness waited.
        timeout: Duration,
        /// The last lines it logged.
        log: String,
    },
    /// A docker (or other) command failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// A file or process operation of the harness itself failed.
    #[error("{what}")]
    Io {
        /// What the harness was doing.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Something did not reach the state a test waited for.
    #[error("{0}")]
    Timeout(String),
    /// Anything else the harness found wrong, said in full.
    #[error("{0}")]
    Failed(String),
    /// The shared daemon or registry failed to start in an earlier test of this process.
    #[error("the shared {0}")]
    Shared(String),
}

impl DockerError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DockerError {
        let what = what.into();
        move |source| DockerError::Io { what, source }
    }
}

/// Result of the harness's operations.
pub type Result<T, E = DockerError> = std::result::Result<T, E>;

fn require(binary: &'static str, package: &'static str) -> Result<()> {
    if Path::new(binary).exists() {
        Ok(())
    } else {
        Err(DockerError::NotInstalled { binary, package })
    }
}

/// Whether this process runs as root (`Uid:` in `/proc/self/status`: real, effective, ...).
fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            == Some("0")
    })
}

/// A fresh directory `/tmp/<prefix>-<pid>-<n>`. Short on purpose: Unix socket paths (dockerd's,
/// containerd's under the exec root) must stay under 108 bytes.
pub(crate) fn private_dir(prefix: &str) -> Result<PathBuf> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = PathBuf::from(format!("/tmp/{prefix}-{}-{n}", std::process::id()));
    if dir.exists() {
        // Left by an earlier process with the same PID that was killed before its watchdog ran.
        std::fs::remove_dir_all(&dir)
            .map_err(DockerError::io(format!("remove {}", dir.display())))?;
    }
    std::fs::create_dir_all(&dir).map_err(DockerError::io(format!("create {}", dir.display())))?;
    Ok(dir)
}

pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn command_line(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `cmd` to completion and returns its stdout, or its stderr in the error. With
/// `FLOTILLA_DOCKER_TRACE` set, prints each command and how long it took to stderr.
pub fn output(mut cmd: Command) -> Result<String> {
    let started = Instant::now();
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(DockerError::io(format!("run {}", command_line(&cmd))))?;
    if std::env::var_os("FLOTILLA_DOCKER_TRACE").is_some() {
        eprintln!(
            "[{:>6.2}s] {}",
            started.elapsed().as_secs_f64(),
            command_line(&cmd)
        );
    }
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(DockerError::Command {
            command: command_line(&cmd),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// The watchdog: waits until the test process exits or `$4` (the stop file) appears, runs the
/// pre-stop command (`$5...`), stops the service (`$2`) with SIGTERM then SIGKILL, stops any
/// process that left a pidfile under the directory (`$3`) and names it on its command line (the
/// containerd that dockerd starts), unmounts what is left mounted there and deletes it. A zombie
/// counts as stopped: the service is the test process's child and is reaped there.
const WATCHDOG: &str = r#"
watched=$1 service=$2 dir=$3 stopfile=$4
shift 4
while kill -0 "$watched" 2>/dev/null && [ ! -e "$stopfile" ]; do sleep 0.2; done
live() { s=$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null) && [ "$s" != Z ]; }
stop() {
    kill -TERM "$1" 2>/dev/null
    i=0
    while live "$1" && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
    live "$1" && kill -KILL "$1" 2>/dev/null
}
[ "$#" -gt 0 ] && timeout 60 "$@" >/dev/null 2>&1
stop "$service"
for f in $(find "$dir" -name '*.pid' 2>/dev/null); do
    p=$(cat "$f" 2>/dev/null)
    case "$p" in ''|*[!0-9]*) continue ;; esac
    live "$p" && tr '\0' ' ' <"/proc/$p/cmdline" | grep -qF "$dir" && stop "$p"
done
awk -v d="$dir/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r |
    while read -r m; do umount -l "$m" 2>/dev/null; done
rm -rf "$dir"
"#;

/// A service process (dockerd, a registry) and the watchdog that stops it and deletes its
/// directory.
#[derive(Debug)]
pub(crate) struct Supervised {
    child: Child,
    watchdog: Child,
    dir: PathBuf,
    stop_file: PathBuf,
}

impl Supervised {
    /// Starts `cmd` in its own process group (so a terminal's Ctrl-C or a test runner's signal to
    /// the test's group reaches the watchdog's orderly stop, not the service directly), its output
    /// in `<dir>/<log>`, and a watchdog that runs `pre_stop` before stopping it.
    pub(crate) fn spawn(
        mut cmd: Command,
        dir: &Path,
        log: &str,
        pre_stop: Vec<OsString>,
    ) -> Result<Self> {
        let log_path = dir.join(log);
        let log_file = std::fs::File::create(&log_path)
            .map_err(DockerError::io(format!("create {}", log_path.display())))?;
        let err_file = log_file
            .try_clone()
            .map_err(DockerError::io("clone log file handle"))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(err_file)
            .process_group(0)
            .spawn()
            .map_err(DockerError::io(format!("start {}", command_line(&cmd))))?;
        let stop_file = dir.join(".stop");
        let watchdog = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("watchdog")
            .arg(std::process::id().to_string())
            .arg(child.id().to_string())
            .arg(dir)
            .arg(&stop_file)
            .args(pre_stop)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn();
        let watchdog = match watchdog {
            Ok(w) => w,
            Err(e) => {
                let mut child = child;
                let _ = child.kill();
                let _ = child.wait();
                return Err(DockerError::io("start the watchdog (sh)")(e));
            }
        };
        Ok(Supervised {
            child,
            watchdog,
            dir: dir.to_owned(),
            stop_file,
        })
    }

    /// The service's exit status if it has already exited.
    pub(crate) fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        if std::fs::write(&self.stop_file, b"").is_err() {
            // The directory is gone already; the service cannot be ours any more.
            let _ = self.watchdog.kill();
        }
        let _ = self.watchdog.wait();
        let _ = self.child.wait();
        // The watchdog removed the directory; make sure even if it was killed.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Polls `check` every 100 ms until it returns `Ok(Some(_))`, an error, or `timeout` passes.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check()? {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(DockerError::Timeout(format!(
                "{what}: not reached within {timeout:?}"
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A private Docker Engine: one `dockerd` with everything under its own temporary directory.
#[derive(Debug)]
pub struct Docker {
    dir: PathBuf,
    socket: PathBuf,
    daemon: Mutex<Supervised>,
    /// Serialises imports of base images, so two tests of one process import each once.
    imports: Mutex<()>,
}

impl Docker {
    /// Starts a daemon that is stopped (its containers removed, its directory deleted) when the
    /// value is dropped.
    pub fn start() -> Result<Docker> {
        if !running_as_root() {
            return Err(DockerError::Failed(
                "dockerd needs root; run the container tests as root (CI does)".into(),
            ));
        }
        require(DOCKERD, "docker.io")?;
        require(DOCKER_CLI, "docker.io")?;
        let dir = private_dir("flotilla-docker")?;
        let socket = dir.join("docker.sock");
        // An explicit empty configuration file, so /etc/docker/daemon.json cannot change the
        // daemon under test.
        let config = dir.join("daemon.json");
        std::fs::write(&config, b"{}\n").map_err(DockerError::io("write daemon.json"))?;
        let mut cmd = Command::new(DOCKERD);
        cmd.arg("--host")
            .arg(format!("unix://{}", socket.display()))
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("docker.pid"))
            .arg("--config-file")
            .arg(&config)
            .args([
                "--iptables=false",
                "--ip-forward=false",
                "--ip-masq=false",
                "--bridge=none",
                "--storage-driver=vfs",
                "--shutdown-timeout=2",
            ]);
        let host = format!("unix://{}", socket.display());
        // The watchdog's pre-stop: remove every container of this daemon (all were started by
        // the tests of this process) and their anonymous volumes.
        let pre_stop: Vec<OsString> = [
            "sh",
            "-c",
            r#"ids=$("$0" -H "$1" ps -aq); [ -z "$ids" ] || "$0" -H "$1" rm -f -v $ids"#,
            DOCKER_CLI,
            &host,
        ]
        .iter()
        .map(OsString::from)
        .collect();
        let daemon = Supervised::spawn(cmd, &dir, "dockerd.log", pre_stop)?;
        let docker = Docker {
            dir: dir.clone(),
            socket,
            daemon: Mutex::new(daemon),
            imports: Mutex::new(()),
        };
        std::fs::create_dir_all(docker.cli_config())
            .map_err(DockerError::io("create the CLI's config directory"))?;
        let started = wait_for("dockerd answering", START_TIMEOUT, || {
            if let Some(status) = docker.lock_daemon().exited() {
                return Err(DockerError::Start {
                    what: format!("dockerd (exited: {status})"),
                    timeout: START_TIMEOUT,
                    log: tail(&dir.join("dockerd.log"), 30),
                });
            }
            let mut version = docker.command();
            version.args(["version", "--format", "{{.Server.Version}}"]);
            Ok(output(version).ok())
        });
        match started {
            Ok(_) => Ok(docker),
            Err(DockerError::Timeout(_)) => Err(DockerError::Start {
                what: "dockerd".into(),
                timeout: START_TIMEOUT,
                log: tail(&dir.join("dockerd.log"), 30),
            }),
            Err(e) => Err(e),
        }
    }

    /// One daemon for every test of this process, started by the first caller. It is stopped by
    /// its watchdog when the process exits (statics are never dropped).
    pub fn shared() -> Result<&'static Docker> {
        static SHARED: OnceLock<std::result::Result<Docker, String>> = OnceLock::new();
        SHARED
            .get_or_init(|| Docker::start().map_err(|e| format!("docker daemon: {e}")))
            .as_ref()
            .map_err(|e| DockerError::Shared(e.clone()))
    }

    fn lock_daemon(&self) -> std::sync::MutexGuard<'_, Supervised> {
        self.daemon.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cli_config(&self) -> PathBuf {
        self.dir.join("cli")
    }

    /// The daemon's socket, as `unix:///...` for `DOCKER_HOST` or `-H`.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// The daemon's PID.
    pub fn pid(&self) -> u32 {
        self.lock_daemon().pid()
    }

    /// The daemon's private directory (data root, exec root, logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A `docker` command aimed at this daemon, with its own CLI configuration directory (no
    /// credential helpers or contexts from the machine) and the classic builder.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(DOCKER_CLI);
        cmd.env("DOCKER_HOST", self.host())
            .env("DOCKER_CONFIG", self.cli_config())
            .env("DOCKER_BUILDKIT", "0")
            .env_remove("DOCKER_CONTEXT")
            .env_remove("DOCKER_TLS_VERIFY");
        cmd
    }

    /// Runs `docker <args>` and returns its stdout.
    pub fn run<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut cmd = self.command();
        cmd.args(args);
        output(cmd)
    }

    /// Whether the daemon has an image called `reference`.
    pub fn has_image(&self, reference: &str) -> bool {
        self.run(["image", "inspect", "--format", "{{.Id}}", reference])
            .is_ok()
    }

    /// Builds `tag` from a Dockerfile and the files of its context (the classic builder, so a
    /// `FROM` names an image this daemon has or can pull from a private registry).
    pub fn build(&self, tag: &str, dockerfile: &str, files: &[ContextFile]) -> Result<()> {
        let ctx = private_dir("flotilla-build")?;
        let result = (|| {
            std::fs::write(ctx.join("Dockerfile"), dockerfile)
                .map_err(DockerError::io("write the Dockerfile"))?;
            for file in files {
                file.write_into(&ctx)?;
            }
            let mut cmd = self.command();
            // No bridge network exists (`--bridge=none`): RUN steps use the host's.
            cmd.args(["build", "--quiet", "--network", "host", "--tag", tag])
                .arg(&ctx);
            output(cmd).map(|_| ())
        })();
        let _ = std::fs::remove_dir_all(&ctx);
        result
    }

    /// Builds `name_tag` (such as `app:v1`) and pushes it to `registry`; returns the pushed
    /// reference, `127.0.0.1:<port>/app:v1`.
    pub fn build_and_push(
        &self,
        registry: &Registry,
        name_tag: &str,
        dockerfile: &str,
        files: &[ContextFile],
    ) -> Result<String> {
        let reference = registry.reference(name_tag);
        self.build(&reference, dockerfile, files)?;
        self.run(["push", &reference])?;
        Ok(reference)
    }

    /// `FROM scratch` plus Debian's static busybox as `/bin/busybox` with its applets linked in
    /// `/bin`, a world-writable `/tmp` and `/etc/passwd` naming root and `app` (uid 1000): a tiny
    /// userland with no libc, for tests that need a shell in a container. Built once per daemon;
    /// returns its tag.
    pub fn busybox_image(&self) -> Result<String> {
        const TAG: &str = "flotilla-test/busybox:static";
        let _guard = self.imports.lock().unwrap_or_else(|p| p.into_inner());
        if self.has_image(TAG) {
            return Ok(TAG.to_owned());
        }
        require(BUSYBOX, "busybox-static")?;
        let elf = crate::elf::ElfInfo::read(Path::new(BUSYBOX))?;
        if !elf.is_static {
            return Err(DockerError::Failed(format!(
                "{BUSYBOX} is dynamically linked; install Debian's busybox-static (scripts/docker.sh)"
            )));
        }
        let mut list = Command::new(BUSYBOX);
        list.arg("--list");
        let applets = output(list)?;
        // One COPY of a prepared tree (the applets as symlinks, /tmp with its sticky mode) and
        // no RUN step: a RUN starts a container and commits a layer, which costs seconds on vfs.
        let mut files = vec![
            ContextFile::copy("rootfs/bin/busybox", BUSYBOX),
            ContextFile::bytes(
                "rootfs/etc/passwd",
                "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/tmp:/bin/sh\n",
            ),
            ContextFile::bytes("rootfs/etc/group", "root:x:0:\napp:x:1000:\n"),
            ContextFile::dir("rootfs/tmp").mode(0o1777),
            ContextFile::dir("rootfs/root").mode(0o700),
        ];
        files.extend(
            applets
                .lines()
                .filter(|a| !a.is_empty() && *a != "busybox")
                .map(|a| ContextFile::symlink(format!("rootfs/bin/{a}"), "busybox")),
        );
        let dockerfile = "FROM scratch\nCOPY rootfs/ /\nENV PATH=/bin\nCMD [\"/bin/sh\"]\n";
        self.build(TAG, dockerfile, &files)?;
        Ok(TAG.to_owned())
    }

    /// A Debian minbase image of `suite` (no CA certificates), imported from the tarball
    /// `scripts/base-images.sh` builds and caches; the first call per cache builds it (minutes).
    /// Returns its tag, `flotilla-base/debian:<suite>`.
    pub fn debian_image(&self, suite: DebianSuite) -> Result<String> {
        let tag = format!("flotilla-base/debian:{}", suite.name());
        let _guard = self.imports.lock().unwrap_or_else(|p| p.into_inner());
        if self.has_image(&tag) {
            return Ok(tag);
        }
        let tarball = base_image_tarball(suite)?;
        let mut cmd = self.command();
        cmd.args([
            "import",
            "--change",
            "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "--change",
            "CMD [\"bash\"]",
        ])
        .arg(&tarball)
        .arg(&tag);
        output(cmd)?;
        Ok(tag)
    }
}

/// A Debian release the harness can build a base image of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DebianSuite {
    /// Debian 12, glibc 2.36: what `debian:bookworm-slim` is.
    Bookworm,
    /// Debian 11, glibc 2.31: older than the 2.34 a binary built on a current machine needs.
    Bullseye,
}

impl DebianSuite {
    /// The suite's codename.
    pub fn name(self) -> &'static str {
        match self {
            DebianSuite::Bookworm => "bookworm",
            DebianSuite::Bullseye => "bullseye",
        }
    }

    /// The glibc version the suite ships.
    pub fn glibc(self) -> &'static str {
        match self {
            DebianSuite::Bookworm => "2.36",
            DebianSuite::Bullseye => "2.31",
        }
    }
}

pub use crate::repo_root;

/// The cached root filesystem tarball of `suite`, built by `scripts/base-images.sh` when missing.
pub fn base_image_tarball(suite: DebianSuite) -> Result<PathBuf> {
    let script = repo_root().join("scripts/base-images.sh");
    let mut cmd = Command::new("bash");
    // Its progress (and how long a build took) goes to the test's log.
    cmd.arg(&script)
        .arg("--path")
        .arg(suite.name())
        .stderr(Stdio::inherit());
    let out = output(cmd)?;
    let path = PathBuf::from(out.trim());
    if path.is_file() {
        Ok(path)
    } else {
        Err(DockerError::Failed(format!(
            "{} printed {:?}, which is not a file",
            script.display(),
            out.trim()
        )))
    }
}

/// One file of a build context.
#[derive(Debug, Clone)]
pub struct ContextFile {
    name: String,
    contents: Contents,
    mode: Option<u32>,
}

#[derive(Debug, Clone)]
enum Contents {
    Bytes(Vec<u8>),
    Copy(PathBuf),
    Symlink(PathBuf),
    Dir,
}

impl ContextFile {
    /// `name` (a relative path in the context) holding `contents`, mode 0644.
    pub fn bytes(name: impl Into<String>, contents: impl Into<Vec<u8>>) -> Self {
        ContextFile {
            name: name.into(),
            contents: Contents::Bytes(contents.into()),
            mode: None,
        }
    }

    /// `name` copied from `source`, keeping its mode (an executable stays executable).
    pub fn copy(name: impl Into<String>, source: impl Into<PathBuf>) -> Self {
        ContextFile {
            name: name.into(),
            contents: Contents::Copy(source.into()),
            mode: None,
        }
    }

    /// `name` as a symbolic link to `target` (COPY keeps it a link).
    pub fn symlink(name: impl Into<String>, target: impl Into<PathBuf>) -> Self {
        ContextFile {
            name: name.into(),
            contents: Contents::Symlink(target.into()),
            mode: None,
        }
    }

    /// `name` as an empty directory (give it a mode such as `0o1777` for a `/tmp`).
    pub fn dir(name: impl Into<String>) -> Self {
        ContextFile {
            name: name.into(),
            contents: Contents::Dir,
            mode: None,
        }
    }

    /// Sets the file's mode, such as `0o755`.
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = Some(mode);
        self
    }

    fn write_into(&self, ctx: &Path) -> Result<()> {
        let path = ctx.join(&self.name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(DockerError::io(format!("create {}", parent.display())))?;
        }
        match &self.contents {
            Contents::Bytes(b) => std::fs::write(&path, b).map(|_| ()),
            Contents::Copy(src) => std::fs::copy(src, &path).map(|_| ()),
            Contents::Symlink(target) => std::os::unix::fs::symlink(target, &path),
            Contents::Dir => std::fs::create_dir_all(&path),
        }
        .map_err(DockerError::io(format!(
            "write {} into the build context",
            self.name
        )))?;
        if let Some(mode) = self.mode {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                .map_err(DockerError::io(format!("chmod {}", path.display())))?;
        }
        Ok(())
    }
}

/// A private image registry (Debian's `docker-registry`) on a free loopback port, its storage
/// under its own temporary directory.
#[derive(Debug)]
pub struct Registry {
    addr: SocketAddr,
    _process: Supervised,
}

impl Registry {
    /// Starts a registry that is stopped and deleted when the value is dropped.
    pub fn start() -> Result<Registry> {
        require(DOCKER_REGISTRY, "docker-registry")?;
        // The port is picked by binding port 0 and released before the registry binds it; another
        // process can take it in between, so a failure to come up is retried on a new port.
        let mut last = None;
        for _ in 0..3 {
            match Registry::start_once() {
                Ok(r) => return Ok(r),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("the loop ran at least once"))
    }

    fn start_once() -> Result<Registry> {
        let dir = private_dir("flotilla-registry")?;
        let addr = crate::net::free_loopback_addr()
            .map_err(DockerError::io("pick a free loopback port"))?;
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\n\
                 log:\n  level: warn\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                 http:\n  addr: {addr}\n",
                dir.join("storage").display()
            ),
        )
        .map_err(DockerError::io("write the registry's config.yml"))?;
        let mut cmd = Command::new(DOCKER_REGISTRY);
        cmd.arg("serve").arg(&config);
        let mut process = Supervised::spawn(cmd, &dir, "registry.log", Vec::new())?;
        let up = wait_for("registry answering", Duration::from_secs(20), || {
            if process.exited().is_some() {
                return Err(DockerError::Start {
                    what: format!("docker-registry on {addr}"),
                    timeout: Duration::ZERO,
                    log: tail(&dir.join("registry.log"), 20),
                });
            }
            Ok(http_get_status(addr, "/v2/").filter(|s| *s == 200))
        });
        match up {
            Ok(_) => Ok(Registry {
                addr,
                _process: process,
            }),
            Err(DockerError::Timeout(_)) => Err(DockerError::Start {
                what: format!("docker-registry on {addr}"),
                timeout: Duration::from_secs(20),
                log: tail(&dir.join("registry.log"), 20),
            }),
            Err(e) => Err(e),
        }
    }

    /// One registry for every test of this process; stopped by its watchdog at exit.
    pub fn shared() -> Result<&'static Registry> {
        static SHARED: OnceLock<std::result::Result<Registry, String>> = OnceLock::new();
        SHARED
            .get_or_init(|| Registry::start().map_err(|e| format!("registry: {e}")))
            .as_ref()
            .map_err(|e| DockerError::Shared(e.clone()))
    }

    /// `127.0.0.1:<port>`: the registry's host as it appears in image references.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// The full reference of `name_tag` in this registry: `127.0.0.1:<port>/<name_tag>`.
    pub fn reference(&self, name_tag: &str) -> String {
        format!("{}/{name_tag}", self.addr)
    }

    /// The tags the registry holds for `repository` (its HTTP API, not docker's view).
    pub fn tags(&self, repository: &str) -> Result<Vec<String>> {
        let body = http_get(self.addr, &format!("/v2/{repository}/tags/list"))
            .map_err(DockerError::io(format!("GET tags of {repository}")))?;
        let json = body.split("\r\n\r\n").nth(1).unwrap_or_default();
        let value: serde_json::Value = serde_json::from_str(json).map_err(|e| {
            DockerError::Failed(format!("registry answered {json:?} for tags: {e}"))
        })?;
        Ok(value["tags"]
            .as_array()
            .map(|t| {
                t.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default())
    }
}

fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

fn http_get_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let response = http_get(addr, path).ok()?;
    response.split_whitespace().nth(1)?.parse().ok()
}
