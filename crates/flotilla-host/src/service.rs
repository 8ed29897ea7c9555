//! Running the daemon as a systemd service: the unit text (a pure function of [`UnitSpec`]),
//! where it goes, and installing or removing it with `systemctl`.
//!
//! The unit runs `flotilla host serve` for one app. Its `KillMode=process` matches what SIGTERM
//! means to the daemon: it exits and leaves the app's process groups running, so a
//! `systemctl restart` (or an upgrade of the flotilla binary followed by one) never restarts the
//! apps: the next daemon adopts them. `Restart=on-failure` brings a crashed daemon back within
//! `RestartSec`; a daemon stopped with `flotilla host stop` exits 0 and stays stopped.
//! `RestartPreventExitStatus` is the exit code of "another daemon already serves this state
//! directory" (one the CLI started in the background while the service was down): retrying would
//! only fail again.
//!
//! `Type=notify`: the daemon says `READY=1` once it routes. `systemctl reload` sends SIGUSR2,
//! which makes the daemon hand over to a new daemon from the executable it was started from
//! (`crate::handover`); the new one says `MAINPID=<its pid>` and `READY=1`, and
//! `NotifyAccess=all` lets systemd take that from a process that is not (yet) the main one, so it
//! follows the new daemon while the old one drains and exits.

use std::path::{Path, PathBuf};
use std::process::Command;

use flotilla_core::DeploymentName;

/// The exit code `flotilla host serve` ends with when another daemon already holds the state
/// directory (the CLI's "refused").
pub const ALREADY_RUNNING_EXIT: u8 = 6;

/// Which systemd manager runs the unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// The system manager (`/etc/systemd/system`), started at boot; needs root to install.
    System,
    /// The user's manager (`~/.config/systemd/user`); at boot only with `loginctl enable-linger`.
    User,
}

impl Scope {
    /// The `systemctl` flag for this scope, if any.
    pub fn systemctl_flag(self) -> Option<&'static str> {
        match self {
            Scope::System => None,
            Scope::User => Some("--user"),
        }
    }
}

/// What the unit runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitSpec {
    /// The deployment name (names the unit).
    pub name: DeploymentName,
    /// The absolute path of the flotilla executable.
    pub exe: PathBuf,
    /// The absolute path of the app's `flotilla.toml`.
    pub config: PathBuf,
    /// The app directory (the daemon's working directory).
    pub working_dir: PathBuf,
    /// The user the daemon runs as (system units only; `None`: root).
    pub user: Option<String>,
    /// `PATH` for the daemon, its builds and its instances (the installing shell's).
    pub path_env: Option<String>,
    /// How long the daemon may take to exit after SIGTERM (its router drains first).
    pub stop_timeout_secs: u64,
    /// Which manager runs it.
    pub scope: Scope,
}

/// The unit's file name: `flotilla-<name>.service`.
pub fn unit_name(name: &DeploymentName) -> String {
    format!("flotilla-{name}.service")
}

/// The directory units of `scope` are installed in: `/etc/systemd/system`, or
/// `$XDG_CONFIG_HOME/systemd/user` (default `$HOME/.config/systemd/user`).
pub fn unit_dir(
    scope: Scope,
    xdg_config_home: Option<&Path>,
    home: Option<&Path>,
) -> Option<PathBuf> {
    match scope {
        Scope::System => Some(PathBuf::from("/etc/systemd/system")),
        Scope::User => xdg_config_home
            .filter(|p| p.is_absolute())
            .map(Path::to_path_buf)
            .or_else(|| home.map(|h| h.join(".config")))
            .map(|c| c.join("systemd/user")),
    }
}

/// One word of a command line as systemd reads it: `%` doubled (specifiers), `$` doubled
/// (variable expansion), and double-quoted with `\` and `"` escaped when it holds anything
/// else than plain path characters.
fn exec_word(word: &str) -> String {
    let escaped = word.replace('%', "%%").replace('$', "$$");
    let plain = escaped
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@%$".contains(c));
    if plain && !escaped.is_empty() {
        escaped
    } else {
        format!("\"{}\"", escaped.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

/// A value of a setting that takes a path: only specifiers need escaping.
fn path_value(path: &Path) -> String {
    path.display().to_string().replace('%', "%%")
}

/// The unit file's text.
pub fn render_unit(spec: &UnitSpec) -> String {
    let exec: Vec<String> = [
        spec.exe.display().to_string(),
        "--config".to_owned(),
        spec.config.display().to_string(),
        "--name".to_owned(),
        spec.name.to_string(),
        "--provider".to_owned(),
        "host".to_owned(),
        "host".to_owned(),
        "serve".to_owned(),
    ]
    .iter()
    .map(|w| exec_word(w))
    .collect();
    let mut out = String::new();
    out.push_str("# Written by `flotilla host install`; `flotilla host uninstall` removes it.\n");
    out.push_str("[Unit]\n");
    out.push_str(&format!(
        "Description=flotilla host daemon of {} ({})\n",
        spec.name,
        path_value(&spec.config)
    ));
    out.push_str("After=network-online.target\nWants=network-online.target\n\n");
    out.push_str("[Service]\nType=notify\nNotifyAccess=all\n");
    out.push_str(&format!("ExecStart={}\n", exec.join(" ")));
    out.push_str(
        "# Reload hands the daemon over to a new one from the same executable path (a new flotilla\n\
         # after a package upgrade) without cutting a session; the new one becomes the main PID.\n\
         ExecReload=/bin/kill -USR2 $MAINPID\n",
    );
    out.push_str(&format!(
        "WorkingDirectory={}\n",
        path_value(&spec.working_dir)
    ));
    if let (Scope::System, Some(user)) = (spec.scope, &spec.user) {
        out.push_str(&format!("User={user}\n"));
    }
    if let Some(path) = &spec.path_env {
        out.push_str(&format!(
            "Environment={}\n",
            exec_word(&format!("PATH={path}"))
        ));
    }
    out.push_str(
        "# SIGTERM goes to the daemon only: it exits and leaves the app's processes running, and\n\
         # the next daemon adopts them (a restart or an upgrade does not restart the app).\n\
         # `flotilla host stop` stops the app, and the daemon exits 0: no restart.\n",
    );
    out.push_str("KillMode=process\nKillSignal=SIGTERM\n");
    out.push_str(&format!("TimeoutStopSec={}\n", spec.stop_timeout_secs));
    out.push_str("Restart=on-failure\nRestartSec=1\n");
    out.push_str(&format!(
        "# Exit code {ALREADY_RUNNING_EXIT}: another daemon already serves this app; retrying cannot help.\n\
         RestartPreventExitStatus={ALREADY_RUNNING_EXIT}\n"
    ));
    out.push_str("StartLimitBurst=20\n\n");
    out.push_str("[Install]\n");
    out.push_str(&format!("WantedBy={}\n", wanted_by(spec.scope)));
    out
}

/// The `systemctl` command lines that take the unit into use (`enable`) or out of it.
pub fn systemctl_commands(scope: Scope, unit: &str, enable: bool) -> Vec<Vec<String>> {
    let base = |args: &[&str]| -> Vec<String> {
        std::iter::once("systemctl")
            .chain(scope.systemctl_flag())
            .chain(args.iter().copied())
            .map(str::to_owned)
            .collect()
    };
    if enable {
        vec![base(&["daemon-reload"]), base(&["enable", "--now", unit])]
    } else {
        vec![base(&["disable", "--now", unit]), base(&["daemon-reload"])]
    }
}

/// Whether the machine was booted with systemd (`/run/systemd/system` exists), the test
/// `sd_booted(3)` makes.
pub fn systemd_running() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

/// Runs each command line in turn; the first failure is returned with its output.
pub fn run_commands(commands: &[Vec<String>]) -> Result<(), String> {
    for argv in commands {
        let out = Command::new(&argv[0])
            .args(&argv[1..])
            .output()
            .map_err(|e| format!("cannot run `{}`: {e}", argv.join(" ")))?;
        if !out.status.success() {
            return Err(format!(
                "`{}` failed ({}): {}",
                argv.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    Ok(())
}

/// The name of the user owning `path` (from `/etc/passwd`), if it is not root.
pub fn owner(path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata(path).ok()?.uid();
    if uid == 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let id: u32 = fields.nth(1)?.parse().ok()?;
        (id == uid).then(|| name.to_owned())
    })
}

/// What installing or removing a unit did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Outcome {
    /// The unit's name.
    pub unit: String,
    /// Its file.
    pub path: PathBuf,
    /// Its manager.
    pub scope: Scope,
    /// The `systemctl` command lines that were run.
    pub ran: Vec<String>,
    /// The command lines that still need running (not run: `--no-enable`, no systemd).
    pub commands: Vec<String>,
    /// Why they were not run.
    pub why_not_run: Option<String>,
}

/// Why installing or removing a unit failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The unit file could not be written or removed.
    #[error("cannot {operation} {}: {source}", .path.display())]
    File {
        /// What was being done.
        operation: &'static str,
        /// The unit file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A unit of that name exists and runs another app's configuration.
    #[error("{} exists and does not run {}", .path.display(), .config.display())]
    NotOurs {
        /// The unit file.
        path: PathBuf,
        /// This app's configuration.
        config: PathBuf,
    },
    /// A `systemctl` command failed.
    #[error("{0}")]
    Systemctl(String),
}

fn joined(commands: &[Vec<String>]) -> Vec<String> {
    commands.iter().map(|c| c.join(" ")).collect()
}

/// Writes the unit into `dir` and, when `systemctl` is asked for and systemd runs, enables and
/// starts it. A unit of the same name that runs another configuration is refused.
pub fn install(spec: &UnitSpec, dir: &Path, systemctl: bool) -> Result<Outcome, ServiceError> {
    let unit = unit_name(&spec.name);
    let path = dir.join(&unit);
    let text = render_unit(spec);
    if let Ok(existing) = std::fs::read_to_string(&path)
        && !existing.contains(&exec_word(&spec.config.display().to_string()))
    {
        return Err(ServiceError::NotOurs {
            path,
            config: spec.config.clone(),
        });
    }
    write_unit(dir, &path, &text)?;
    finish(unit, path, spec.scope, systemctl, true)
}

/// Writes a unit file's `text` at `path`, creating `dir` if needed.
fn write_unit(dir: &Path, path: &Path, text: &str) -> Result<(), ServiceError> {
    let file_err = |operation| {
        let path = path.to_owned();
        move |source| ServiceError::File {
            operation,
            path,
            source,
        }
    };
    std::fs::create_dir_all(dir).map_err(file_err("create the directory of"))?;
    std::fs::write(path, text).map_err(file_err("write"))
}

/// Disables and stops the unit of `name` (when `systemctl` is asked for and systemd runs), then
/// removes its file from `dir`.
pub fn uninstall(
    name: &DeploymentName,
    scope: Scope,
    dir: &Path,
    systemctl: bool,
) -> Result<Outcome, ServiceError> {
    uninstall_unit(unit_name(name), scope, dir, systemctl)
}

/// The front door's unit file name.
pub const FRONT_DOOR_UNIT: &str = "flotilla-front-door.service";

/// What the front door's unit runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontDoorUnitSpec {
    /// The absolute path of the flotilla executable.
    pub exe: PathBuf,
    /// The arguments after `host front-door` (ports, socket, group, hold).
    pub args: Vec<String>,
    /// The user it runs as (system units only; `None`: root). Not root, it gets the capability
    /// to bind ports below 1024 and nothing else.
    pub user: Option<String>,
    /// Which manager runs it.
    pub scope: Scope,
}

/// The front door's unit file text.
pub fn render_front_door_unit(spec: &FrontDoorUnitSpec) -> String {
    let exec: Vec<String> = [
        spec.exe.display().to_string(),
        "host".into(),
        "front-door".into(),
    ]
    .into_iter()
    .chain(spec.args.iter().cloned())
    .map(|w| exec_word(&w))
    .collect();
    let mut out = String::new();
    out.push_str(
        "# Written by `flotilla host front-door --install`; `--uninstall` removes it.\n[Unit]\n",
    );
    out.push_str("Description=flotilla front door (ports shared by the apps on this machine)\n");
    out.push_str("After=network-online.target\nWants=network-online.target\n\n");
    out.push_str("[Service]\nType=notify\nNotifyAccess=all\n");
    out.push_str(&format!("ExecStart={}\n", exec.join(" ")));
    out.push_str(
        "# Reload hands the ports to a new front door from the same executable path (a new\n\
         # flotilla after a package upgrade) without refusing a connection; it becomes the main PID.\n\
         ExecReload=/bin/kill -USR2 $MAINPID\n",
    );
    if let (Scope::System, Some(user)) = (spec.scope, &spec.user)
        && user != "root"
    {
        out.push_str(&format!("User={user}\n"));
        out.push_str("AmbientCapabilities=CAP_NET_BIND_SERVICE\n");
        out.push_str("CapabilityBoundingSet=CAP_NET_BIND_SERVICE\n");
    }
    out.push_str(
        "# The apps' daemons register again by themselves when the front door comes back; while\n\
         # it is down, new connections are refused and open ones (held by the daemons) go on.\n",
    );
    out.push_str("Restart=always\nRestartSec=1\nStartLimitBurst=20\n\n");
    out.push_str("[Install]\n");
    out.push_str(&format!("WantedBy={}\n", wanted_by(spec.scope)));
    out
}

/// Writes the front door's unit into `dir` and, when `systemctl` is asked for and systemd runs,
/// enables and starts it.
pub fn install_front_door(
    spec: &FrontDoorUnitSpec,
    dir: &Path,
    systemctl: bool,
) -> Result<Outcome, ServiceError> {
    let path = dir.join(FRONT_DOOR_UNIT);
    write_unit(dir, &path, &render_front_door_unit(spec))?;
    finish(
        FRONT_DOOR_UNIT.to_owned(),
        path,
        spec.scope,
        systemctl,
        true,
    )
}

/// Disables and stops the front door's unit, then removes its file from `dir`.
pub fn uninstall_front_door(
    scope: Scope,
    dir: &Path,
    systemctl: bool,
) -> Result<Outcome, ServiceError> {
    uninstall_unit(FRONT_DOOR_UNIT.to_owned(), scope, dir, systemctl)
}

fn uninstall_unit(
    unit: String,
    scope: Scope,
    dir: &Path,
    systemctl: bool,
) -> Result<Outcome, ServiceError> {
    let path = dir.join(&unit);
    // Disabled and stopped before the file goes, so systemd still knows what to stop.
    let commands = systemctl_commands(scope, &unit, false);
    let mut outcome = Outcome {
        unit: unit.clone(),
        path: path.clone(),
        scope,
        ran: Vec::new(),
        commands: Vec::new(),
        why_not_run: None,
    };
    let run = systemctl && systemd_running();
    if run {
        run_commands(&commands[..1]).map_err(ServiceError::Systemctl)?;
        outcome.ran.push(commands[0].join(" "));
    }
    // Without systemctl, the link `enable` made goes with the file (a `disable` afterwards could
    // not find the unit), and what is left to run is stopping the loaded unit.
    let wants = dir.join(wanted_by(scope).to_owned() + ".wants").join(&unit);
    for file in [&path, &wants] {
        match std::fs::remove_file(file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(ServiceError::File {
                    operation: "remove",
                    path: file.clone(),
                    source,
                });
            }
        }
    }
    if run {
        run_commands(&commands[1..]).map_err(ServiceError::Systemctl)?;
        outcome.ran.push(commands[1].join(" "));
    } else {
        let flag = scope.systemctl_flag();
        let line = |args: &[&str]| -> String {
            std::iter::once("systemctl")
                .chain(flag)
                .chain(args.iter().copied())
                .collect::<Vec<_>>()
                .join(" ")
        };
        outcome.commands = vec![line(&["stop", &unit]), line(&["daemon-reload"])];
        outcome.why_not_run = Some(not_run_reason(systemctl));
    }
    Ok(outcome)
}

/// The target whose `.wants` directory `enable` links the unit into.
fn wanted_by(scope: Scope) -> &'static str {
    match scope {
        Scope::System => "multi-user.target",
        Scope::User => "default.target",
    }
}

fn not_run_reason(asked: bool) -> String {
    if asked {
        "systemd does not run on this machine (no /run/systemd/system)".to_owned()
    } else {
        "systemctl was not run, as asked".to_owned()
    }
}

fn finish(
    unit: String,
    path: PathBuf,
    scope: Scope,
    systemctl: bool,
    enable: bool,
) -> Result<Outcome, ServiceError> {
    let commands = systemctl_commands(scope, &unit, enable);
    let mut outcome = Outcome {
        unit,
        path,
        scope,
        ran: Vec::new(),
        commands: Vec::new(),
        why_not_run: None,
    };
    if systemctl && systemd_running() {
        run_commands(&commands).map_err(ServiceError::Systemctl)?;
        outcome.ran = joined(&commands);
    } else {
        outcome.commands = joined(&commands);
        outcome.why_not_run = Some(not_run_reason(systemctl));
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(scope: Scope) -> UnitSpec {
        UnitSpec {
            name: DeploymentName::new("shop").expect("valid"),
            exe: PathBuf::from("/usr/local/bin/flotilla"),
            config: PathBuf::from("/srv/shop app/flotilla.toml"),
            working_dir: PathBuf::from("/srv/shop app"),
            user: Some("shop".to_owned()),
            path_env: Some("/usr/local/bin:/usr/bin:/bin".to_owned()),
            stop_timeout_secs: 45,
            scope,
        }
    }

    #[test]
    fn the_system_unit_runs_host_serve_for_this_config_and_leaves_the_apps_to_the_next_daemon() {
        expect_test::expect![[r#"
            # Written by `flotilla host install`; `flotilla host uninstall` removes it.
            [Unit]
            Description=flotilla host daemon of shop (/srv/shop app/flotilla.toml)
            After=network-online.target
            Wants=network-online.target

            [Service]
            Type=notify
            NotifyAccess=all
            ExecStart=/usr/local/bin/flotilla --config "/srv/shop app/flotilla.toml" --name shop --provider host host serve
            # Reload hands the daemon over to a new one from the same executable path (a new flotilla
            # after a package upgrade) without cutting a session; the new one becomes the main PID.
            ExecReload=/bin/kill -USR2 $MAINPID
            WorkingDirectory=/srv/shop app
            User=shop
            Environment=PATH=/usr/local/bin:/usr/bin:/bin
            # SIGTERM goes to the daemon only: it exits and leaves the app's processes running, and
            # the next daemon adopts them (a restart or an upgrade does not restart the app).
            # `flotilla host stop` stops the app, and the daemon exits 0: no restart.
            KillMode=process
            KillSignal=SIGTERM
            TimeoutStopSec=45
            Restart=on-failure
            RestartSec=1
            # Exit code 6: another daemon already serves this app; retrying cannot help.
            RestartPreventExitStatus=6
            StartLimitBurst=20

            [Install]
            WantedBy=multi-user.target
        "#]]
        .assert_eq(&render_unit(&spec(Scope::System)));
    }

    #[test]
    fn a_user_unit_has_no_user_and_is_wanted_by_the_default_target() {
        let text = render_unit(&spec(Scope::User));
        assert!(!text.contains("User="), "{text}");
        assert!(text.contains("WantedBy=default.target\n"), "{text}");
    }

    #[test]
    fn command_words_are_escaped_the_way_systemd_reads_them() {
        for (word, want) in [
            ("/usr/bin/flotilla", "/usr/bin/flotilla"),
            ("/srv/a b/flotilla.toml", "\"/srv/a b/flotilla.toml\""),
            ("/srv/100%/x", "/srv/100%%/x"),
            ("/srv/$HOME", "/srv/$$HOME"),
            ("/srv/say \"hi\"", "\"/srv/say \\\"hi\\\"\""),
            ("", "\"\""),
        ] {
            assert_eq!(exec_word(word), want, "{word}");
        }
    }

    #[test]
    fn units_go_where_each_manager_reads_them() {
        let home = Path::new("/home/ann");
        assert_eq!(
            unit_dir(Scope::User, None, Some(home)),
            Some(PathBuf::from("/home/ann/.config/systemd/user"))
        );
        assert_eq!(
            unit_dir(Scope::User, Some(Path::new("/x/cfg")), Some(home)),
            Some(PathBuf::from("/x/cfg/systemd/user"))
        );
        assert_eq!(
            unit_dir(Scope::User, Some(Path::new("relative")), Some(home)),
            Some(PathBuf::from("/home/ann/.config/systemd/user"))
        );
        assert_eq!(
            unit_dir(Scope::System, None, None),
            Some(PathBuf::from("/etc/systemd/system"))
        );
        assert_eq!(
            systemctl_commands(Scope::User, "flotilla-shop.service", true),
            vec![
                vec!["systemctl", "--user", "daemon-reload"],
                vec![
                    "systemctl",
                    "--user",
                    "enable",
                    "--now",
                    "flotilla-shop.service"
                ],
            ]
        );
    }

    #[test]
    fn the_front_door_unit_binds_low_ports_without_root_and_verifies() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = FrontDoorUnitSpec {
            exe: std::env::current_exe().expect("test executable"),
            args: vec!["--socket-group".into(), "flotilla apps".into()],
            user: Some("www-data".into()),
            scope: Scope::System,
        };
        let text = render_front_door_unit(&spec);
        assert!(
            text.contains(" host front-door --socket-group \"flotilla apps\"\n"),
            "{text}"
        );
        assert!(
            text.contains("User=www-data\nAmbientCapabilities=CAP_NET_BIND_SERVICE\n"),
            "{text}"
        );
        let as_root = render_front_door_unit(&FrontDoorUnitSpec {
            user: None,
            ..spec.clone()
        });
        assert!(
            !as_root.contains("User=") && !as_root.contains("Capabilit"),
            "{as_root}"
        );
        let path = dir.path().join(FRONT_DOOR_UNIT);
        std::fs::write(&path, &as_root).expect("write unit");
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&path)
            .output()
            .expect("systemd-analyze runs (Debian's systemd package; scripts/systemd.sh)");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let about_unit: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains(FRONT_DOOR_UNIT))
            .collect();
        assert!(out.status.success() && about_unit.is_empty(), "{stderr}");
        let outcome = install_front_door(&spec, dir.path(), false).expect("install");
        assert_eq!(outcome.unit, FRONT_DOOR_UNIT);
        assert!(!outcome.commands.is_empty());
        uninstall_front_door(Scope::System, dir.path(), false).expect("uninstall");
        assert!(!path.exists());
    }

    /// `systemd-analyze verify` accepts the unit (it needs the ExecStart binary to exist: this
    /// test's own executable stands in for flotilla).
    #[test]
    fn systemd_analyze_verifies_the_unit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let app = dir.path().join("app");
        std::fs::create_dir(&app).expect("app dir");
        let config = app.join("flotilla.toml");
        std::fs::write(&config, "name = \"shop\"\n").expect("config");
        for scope in [Scope::System, Scope::User] {
            let spec = UnitSpec {
                exe: std::env::current_exe().expect("test executable"),
                config: config.clone(),
                working_dir: app.clone(),
                user: Some("root".to_owned()),
                ..spec(scope)
            };
            let path = dir.path().join(unit_name(&spec.name));
            std::fs::write(&path, render_unit(&spec)).expect("write unit");
            let mut cmd = Command::new("systemd-analyze");
            cmd.arg("verify");
            if scope == Scope::User {
                // The user manager needs a runtime directory, which a test machine may lack.
                cmd.arg("--user").env("XDG_RUNTIME_DIR", dir.path());
            }
            let out = cmd
                .arg(&path)
                .output()
                .expect("systemd-analyze runs (Debian's systemd package; scripts/systemd.sh)");
            let stderr = String::from_utf8_lossy(&out.stderr);
            // Complaints about the unit name the file (systemd-analyze exits 0 on a setting it
            // cannot parse, and only says so); other lines are about this machine (no running
            // systemd in a container).
            let about_unit: Vec<&str> = stderr
                .lines()
                .filter(|l| l.contains("flotilla-shop.service"))
                .collect();
            assert!(
                out.status.success() && about_unit.is_empty(),
                "{scope:?}: {}\n{stderr}",
                out.status
            );
        }
    }
}
