//! The host provider as the browser tests use it: a temporary app directory with its own
//! `flotilla.toml` (small drain and reaper timings, free loopback ports), the real `flotilla`
//! binary run as a user would run it, and a guard that stops the daemon (`flotilla host stop`)
//! and kills by PID whatever it left (every process whose working directory is in the app
//! directory) when the test ends, pass or fail.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The longest any single `flotilla` command may take before the test gives up on it.
const COMMAND_LIMIT: Duration = Duration::from_secs(90);

/// The directory holding the workspace's binaries (`target/debug`): this test's executable lives
/// in its `deps/`, so the binaries are found wherever the target directory is.
fn bin_dir() -> PathBuf {
    let from_exe = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent()?.parent().map(Path::to_path_buf));
    from_exe.unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../target/debug")
            .to_path_buf()
    })
}

/// A workspace binary, which must have been built before the tests (scripts/test.sh runs
/// `cargo build --workspace --bins` first).
pub fn binary(name: &str, package: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "{} does not exist. Build the binaries these tests drive first:\n  \
         cargo build -p flotilla-cli -p {package}\n(scripts/test.sh builds every binary before \
         it runs the tests)",
        path.display()
    );
    path
}

/// The `flotilla` binary.
pub fn flotilla_bin() -> PathBuf {
    binary("flotilla", "flotilla-cli")
}

pub use flotilla_testkit::net::free_port;

/// What one test's `flotilla.toml` says beyond the shared timings.
pub struct AppConfig {
    /// `[app] inject_client`.
    pub inject_client: bool,
    /// `[host] instances`.
    pub instances: u32,
    /// `[host] build`, run in each release directory.
    pub build: String,
    /// `[host] command`.
    pub command: String,
    /// More `[app]` lines, as TOML.
    pub app_extra: String,
}

/// Drain and reaper timings small enough for a test: poll 1 s, grace 2 s, reaper every second,
/// one pass, minimum age 1 s.
pub const POLL_SECONDS: u64 = 1;
/// See [`POLL_SECONDS`].
pub const GRACE_SECONDS: u64 = 2;
/// See [`POLL_SECONDS`].
pub const REAPER_INTERVAL_SECONDS: u64 = 1;

/// One app directory with its own daemon, router and status page.
pub struct HostEnv {
    dir: tempfile::TempDir,
    /// The router's address (`[host] listen`).
    pub listen: SocketAddr,
    /// The status page's address (`[host] admin_listen`).
    pub admin: SocketAddr,
}

impl HostEnv {
    /// A fresh app directory with a `flotilla.toml` for `app`.
    pub fn new(name: &str, app: &AppConfig) -> HostEnv {
        let app_lines = format!(
            "health_path = \"/healthz\"\ninject_client = {inject}\n{extra}",
            inject = app.inject_client,
            extra = if app.app_extra.is_empty() {
                String::new()
            } else {
                format!("{}\n", app.app_extra.trim_end())
            },
        );
        let host_lines = format!(
            "instances = {instances}\nbuild = {build:?}\ncommand = {command:?}\n",
            instances = app.instances,
            build = app.build,
            command = app.command,
        );
        HostEnv::with_config(name, &app_lines, GRACE_SECONDS, &host_lines, "")
    }

    /// A fresh app directory whose `flotilla.toml` has the shared timings (except the drain's
    /// grace), free ports, `app_lines` under `[app]`, `host_lines` under `[host]` and `tail` at
    /// the end (more sections).
    pub fn with_config(
        name: &str,
        app_lines: &str,
        grace_seconds: u64,
        host_lines: &str,
        tail: &str,
    ) -> HostEnv {
        Self::configured(name, app_lines, grace_seconds, None, host_lines, tail)
    }

    /// Like [`HostEnv::with_config`], for an app behind the front door on `socket` serving
    /// `hosts`: its router binds no port of its own (`listen` is left out, and [`HostEnv::url`]
    /// does not apply).
    pub fn behind_front_door(
        name: &str,
        app_lines: &str,
        socket: &Path,
        hosts: &[&str],
        host_lines: &str,
    ) -> HostEnv {
        let place = format!("hosts = {hosts:?}\nfront_door_socket = {socket:?}\n");
        Self::configured(name, app_lines, GRACE_SECONDS, Some(&place), host_lines, "")
    }

    /// The one `flotilla.toml` template: `place` replaces `listen` when given.
    fn configured(
        name: &str,
        app_lines: &str,
        grace_seconds: u64,
        place: Option<&str>,
        host_lines: &str,
        tail: &str,
    ) -> HostEnv {
        let env = HostEnv {
            dir: tempfile::Builder::new()
                .prefix("flotilla-browser-host-")
                .tempdir()
                .expect("create the app directory"),
            listen: SocketAddr::from(([127, 0, 0, 1], free_port())),
            admin: SocketAddr::from(([127, 0, 0, 1], free_port())),
        };
        let text = format!(
            r#"name = "{name}"
provider = "host"
[app]
{app_lines}health_timeout_seconds = 30
stop_timeout_seconds = 3
[drain]
poll_seconds = {POLL_SECONDS}
grace_seconds = {grace_seconds}
[reaper]
interval_seconds = {REAPER_INTERVAL_SECONDS}
consecutive_passes = 1
min_age_seconds = 1
[host]
{place}admin_listen = "{admin}"
{host_lines}{tail}"#,
            place = place.map_or_else(|| format!("listen = \"{}\"\n", env.listen), str::to_owned),
            admin = env.admin,
        );
        env.write("flotilla.toml", &text);
        env
    }

    /// The app directory.
    pub fn app(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a file in the app directory (the next deploy's release snapshots it).
    pub fn write(&self, name: &str, text: &str) {
        std::fs::write(self.app().join(name), text)
            .unwrap_or_else(|e| panic!("write {name} in the app directory: {e}"));
    }

    /// The router's URL for `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.listen)
    }

    /// Runs `flotilla ARGS` in the app directory, without any `FLOTILLA_*` variable of ours;
    /// killed after [`COMMAND_LIMIT`].
    pub fn flotilla(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(flotilla_bin());
        cmd.args(args)
            .current_dir(self.app())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, _) in std::env::vars() {
            if k.starts_with("FLOTILLA_") {
                cmd.env_remove(k);
            }
        }
        flotilla_testkit::procs::output_within(&mut cmd, COMMAND_LIMIT)
            .unwrap_or_else(|| panic!("flotilla {args:?} did not finish within {COMMAND_LIMIT:?}"))
    }

    /// `flotilla deploy --json`, which must succeed; the new deployment id.
    pub fn deploy(&self) -> String {
        let out = self.flotilla(&["deploy", "--json"]);
        assert!(
            out.status.success(),
            "flotilla deploy failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).expect("deploy --json prints JSON");
        v["deployment_id"]
            .as_str()
            .expect("deploy --json names deployment_id")
            .to_owned()
    }

    /// `flotilla status --json`, which must succeed.
    pub fn status(&self) -> Value {
        let out = self.flotilla(&["status", "--json"]);
        assert!(
            out.status.success(),
            "flotilla status failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status --json prints JSON")
    }

    /// One version's entry in `flotilla status --json`, if the version still has a record.
    pub fn version(&self, id: &str) -> Option<Value> {
        version_in(&self.status(), id)
    }

    /// Polls `flotilla status --json` until `done` holds of it or `within` passes; the last
    /// status either way.
    pub fn status_until(&self, within: Duration, done: impl Fn(&Value) -> bool) -> (bool, Value) {
        let deadline = Instant::now() + within;
        loop {
            let status = self.status();
            if done(&status) {
                return (true, status);
            }
            if Instant::now() >= deadline {
                return (false, status);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Every live process (not a zombie) whose working directory is inside this app directory:
    /// the daemon and every instance.
    pub fn processes(&self) -> Vec<u32> {
        let Ok(root) = std::fs::canonicalize(self.app()) else {
            return Vec::new();
        };
        flotilla_testkit::procs::processes_under(&root)
    }

    /// The processes running `id`'s instances (their environment names it).
    pub fn processes_of(&self, id: &str) -> Vec<u32> {
        flotilla_testkit::procs::running_version(self.processes(), id)
    }

    /// The daemon's log, for failure messages.
    pub fn daemon_log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.app().join(".flotilla/host/daemon.log"))
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for HostEnv {
    fn drop(&mut self) {
        let _ = self.flotilla(&["host", "stop"]);
        // Whatever survived (a wedged daemon, an instance it lost track of) is killed by PID.
        flotilla_testkit::procs::kill_survivors(5, || self.processes());
    }
}

/// One version's entry in a `flotilla status --json` document.
pub fn version_in(status: &Value, id: &str) -> Option<Value> {
    status["versions"]
        .as_array()?
        .iter()
        .find(|v| v["record"]["version"]["id"] == id)
        .cloned()
}

/// A version's lifecycle state in a status entry (`active`, `draining`, `retired`, ...).
pub fn state_of(version: &Value) -> &str {
    version["record"]["version"]["state"]
        .as_str()
        .unwrap_or("?")
}
