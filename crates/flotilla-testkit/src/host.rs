//! The host provider as an end-to-end test uses it: a temporary app directory with its own
//! `flotilla.toml` (small drain and reaper timings, free loopback ports), the real `flotilla`
//! binary run in it as a user would run it, and a guard that stops the daemon (`flotilla host
//! stop`) and kills by PID whatever it left (every process whose working directory is in the app
//! directory) when the test ends, pass or fail.
//!
//! The CLI's host tests (`tests/host_e2e/util.rs`) and the browser scenarios
//! (`tests/host_scenario/host.rs`) each wrap a [`HostApp`] with what only they need: which app
//! the instances run, where the `flotilla` binary is, the HTTP client they talk to it with.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::net::free_port;

/// The drain, reaper and health timings of one app's `flotilla.toml`, in seconds.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// `[drain] poll_seconds`.
    pub poll: u64,
    /// `[drain] grace_seconds`.
    pub grace: u64,
    /// `[reaper] interval_seconds`.
    pub interval: u64,
    /// `[app] health_timeout_seconds`.
    pub health_timeout: u64,
}

/// One app directory with its own daemon, router and status page; the daemon is stopped and
/// every process left in the directory killed when it is dropped.
pub struct HostApp {
    /// The app directory.
    pub dir: tempfile::TempDir,
    /// The router's address (`[host] listen`, unless the app is behind a front door).
    pub listen: SocketAddr,
    /// The status page's address (`[host] admin_listen`).
    pub admin: SocketAddr,
    flotilla: PathBuf,
    command_limit: Duration,
    kill_rounds: u32,
}

impl HostApp {
    /// A fresh, empty app directory (named `prefix...`) with two free loopback ports, driven by
    /// the `flotilla` binary at `flotilla`. A `flotilla` command is killed after `command_limit`;
    /// when dropped, what outlives `flotilla host stop` is SIGKILLed, in up to `kill_rounds`
    /// rounds 100 ms apart.
    pub fn new(flotilla: PathBuf, prefix: &str, command_limit: Duration, kill_rounds: u32) -> Self {
        HostApp {
            dir: tempfile::Builder::new()
                .prefix(prefix)
                .tempdir()
                .expect("create the app directory"),
            listen: SocketAddr::from(([127, 0, 0, 1], free_port())),
            admin: SocketAddr::from(([127, 0, 0, 1], free_port())),
            flotilla,
            command_limit,
            kill_rounds,
        }
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

    /// Writes the one `flotilla.toml` template: app `name` with `timing`, `app_lines` under
    /// `[app]`, `place` (which replaces `listen` when given: the hosts it serves behind a front
    /// door), the status page's address, and `host_lines` under `[host]` (anything after, more
    /// sections included).
    pub fn write_config(
        &self,
        name: &str,
        timing: Timing,
        app_lines: &str,
        place: Option<&str>,
        host_lines: &str,
    ) {
        let text = format!(
            r#"name = "{name}"
provider = "host"
[app]
{app_lines}health_timeout_seconds = {health}
stop_timeout_seconds = 3
[drain]
poll_seconds = {poll}
grace_seconds = {grace}
[reaper]
interval_seconds = {interval}
consecutive_passes = 1
min_age_seconds = 1
[host]
{place}admin_listen = "{admin}"
{host_lines}"#,
            health = timing.health_timeout,
            poll = timing.poll,
            grace = timing.grace,
            interval = timing.interval,
            place = place.map_or_else(|| format!("listen = \"{}\"\n", self.listen), str::to_owned),
            admin = self.admin,
        );
        self.write("flotilla.toml", &text);
    }

    /// Runs `flotilla ARGS` in the app directory, without any `FLOTILLA_*` variable of the test
    /// process; killed after the command limit.
    pub fn flotilla(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(&self.flotilla);
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
        let limit = self.command_limit;
        crate::procs::output_within(&mut cmd, limit)
            .unwrap_or_else(|| panic!("flotilla {args:?} did not finish within {limit:?}"))
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

    /// The daemon's pid, from its lock file, while it runs.
    pub fn daemon_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.app().join(".flotilla/host/daemon.lock"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .filter(|pid| crate::procs::alive(*pid))
    }

    /// The last 30 lines of the daemon's log, for failure messages.
    pub fn daemon_log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.app().join(".flotilla/host/daemon.log"))
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Every live process (not a zombie) whose working directory is inside this app directory:
    /// the daemon and every instance.
    pub fn processes(&self) -> Vec<u32> {
        let Ok(root) = std::fs::canonicalize(self.app()) else {
            return Vec::new();
        };
        crate::procs::processes_under(&root)
    }

    /// The processes running `id`'s instances (their environment names it).
    pub fn processes_of(&self, id: &str) -> Vec<u32> {
        crate::procs::running_version(self.processes(), id)
    }
}

impl Drop for HostApp {
    fn drop(&mut self) {
        let _ = self.flotilla(&["host", "stop"]);
        // Whatever survived (a wedged daemon, an instance it lost track of) is killed by PID.
        crate::procs::kill_survivors(self.kill_rounds, || self.processes());
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
