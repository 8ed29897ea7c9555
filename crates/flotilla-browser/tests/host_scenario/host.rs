//! The host provider as the browser tests use it: testkit's host app directory (its own
//! `flotilla.toml`, free loopback ports, the real `flotilla` binary, everything it started
//! stopped by PID when the test ends, pass or fail) with these scenarios' timings and app
//! settings, and the workspace binaries found beside this test's executable.

use std::path::{Path, PathBuf};
use std::time::Duration;

use flotilla_testkit::host::{HostApp, Timing};

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

/// One app directory with its own daemon, router and status page (testkit's [`HostApp`], which
/// stops everything when dropped), configured the way these scenarios configure it.
pub struct HostEnv {
    host: HostApp,
}

impl std::ops::Deref for HostEnv {
    type Target = HostApp;

    fn deref(&self) -> &HostApp {
        &self.host
    }
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

    /// The shared `flotilla.toml` template with these scenarios' timings; `place` replaces
    /// `listen` when given.
    fn configured(
        name: &str,
        app_lines: &str,
        grace_seconds: u64,
        place: Option<&str>,
        host_lines: &str,
        tail: &str,
    ) -> HostEnv {
        let env = HostEnv {
            host: HostApp::new(flotilla_bin(), "flotilla-browser-host-", COMMAND_LIMIT, 5),
        };
        let timing = Timing {
            poll: POLL_SECONDS,
            grace: grace_seconds,
            interval: REAPER_INTERVAL_SECONDS,
            health_timeout: 30,
        };
        env.host.write_config(
            name,
            timing,
            app_lines,
            place,
            &format!("{host_lines}{tail}"),
        );
        env
    }

    /// The router's URL for `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.listen)
    }
}

pub use flotilla_testkit::host::{state_of, version_in};
