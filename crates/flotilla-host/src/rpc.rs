//! The daemon's protocol over its Unix socket, and the client side: [`connect`] returns the
//! [`Workflows`] a command runs, each one request to the daemon, which runs the engine over its
//! own ports.
//!
//! Framing: one JSON object per line. A client first sends [`Request::Hello`] with its
//! [`PROTOCOL`]; the daemon answers its [`DaemonInfo`] (which carries the daemon's protocol), or
//! [`Reply::Mismatch`] when the versions differ, and the client refuses a daemon of another
//! protocol ([`HostError::ProtocolMismatch`]). The hello's shape never changes, so that any two
//! flotillas can tell each other which protocol they speak.
//!
//! A workflow is one [`Request::Run`] (the [`Workflow`], the engine settings and the app's
//! commands from the command's `flotilla.toml`): the daemon answers with progress lines
//! ([`Reply::Event`]) as they happen, then one line with the outcome ([`Reply::Ok`]) or the
//! workflow's error ([`Reply::Failed`], an `EngineError` with its kind). While it runs, the client
//! may send [`Request::Cancel`] (Ctrl-C): the workflow stops before its next port call and its
//! deploy lock is released. A client that disconnects without a word (killed) stops it the same
//! way, but its lock stays with it until the next command finds its process gone and breaks it.
//!
//! During a handover to a new daemon the client retries a connection that fails while a live
//! daemon holds the state directory, and a request the old daemon answered [`HANDED_OVER`].

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use flotilla_core::{DeploymentName, Timestamp};
use flotilla_engine::events::{Event, Progress};
use flotilla_engine::ports::{Clock, ErrorKind, PortError};
use flotilla_engine::workflows::{Interrupt, Outcome, Ran, Workflow, Workflows};
use flotilla_engine::{EngineError, Settings};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::error::HostError;
use crate::release::tail_lines;
use crate::settings::HostSettings;

/// The protocol this flotilla speaks on the daemon's socket. Raised whenever a request or a
/// reply changes shape; a client and a daemon of different protocols refuse each other at the
/// hello with [`HostError::ProtocolMismatch`]. 1 was the port-by-port protocol (no version in
/// its hello).
pub const PROTOCOL: u32 = 2;

/// One request to the daemon.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Checks that the daemon serves `name` and speaks `protocol`; answers [`DaemonInfo`], or
    /// [`Reply::Mismatch`]. Without `protocol` (a flotilla of protocol 1, or a daemon checking
    /// that its successor answers during a handover) it answers `DaemonInfo` alone.
    Hello {
        /// The deployment name the client works on.
        name: DeploymentName,
        /// The client's [`PROTOCOL`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        protocol: Option<u32>,
    },
    /// Runs a workflow; answered by its progress events, then its outcome.
    Run(Box<RunWorkflow>),
    /// Sent while a [`Request::Run`] runs on the same connection: stop it before its next step
    /// and release its deploy lock.
    Cancel,
    /// Asks the daemon to shut down gracefully.
    Shutdown,
    /// Asks the daemon to hand over to a new daemon started from `binary` (its own executable
    /// when `None`), answered once the new one routes (see [`crate::handover`]).
    Upgrade {
        /// The executable of the new daemon.
        #[serde(default)]
        binary: Option<PathBuf>,
    },
}

/// A workflow a command asks the daemon to run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunWorkflow {
    /// The workflow.
    pub workflow: Workflow,
    /// The engine settings, from the command's configuration (the daemon fills in how it tells
    /// whether a lock's holder still runs).
    pub settings: Settings,
    /// How the app's instances start, from the command's configuration.
    pub app: AppCommands,
}

/// What the command's configuration says about starting the app, which a deploy's instances
/// use (the daemon's own settings are those it started with, which may be older).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppCommands {
    /// The shell command of each instance.
    pub command: String,
    /// The health path.
    pub health_path: String,
    /// The build command run in a release, if any.
    pub build: Option<String>,
}

/// Starts an error message of a daemon that handed over to another and so answers nothing more;
/// the client sends the request again, which reaches the new daemon.
pub const HANDED_OVER: &str = "this daemon handed over to a new one";

/// What [`Request::Upgrade`] did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpgradeReport {
    /// The daemon that handed over, which now drains what it holds.
    pub old_pid: u32,
    /// The new daemon.
    pub new_pid: u32,
    /// The new daemon's executable.
    pub binary: PathBuf,
    /// From the request until the new daemon routed and answered, in milliseconds.
    pub ready_ms: u64,
    /// Client connections the old daemon still serves (WebSockets and event streams among them).
    pub draining_connections: u64,
    /// Sessions (WebSockets, event streams) the old daemon still serves.
    pub draining_sessions: u64,
    /// How long the old daemon serves them at most, in seconds.
    pub deadline_seconds: u64,
    /// Where the daemons log.
    pub log: PathBuf,
}

/// One line of the daemon's answer: progress events, then one of the others.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// Success, with the result as JSON (a [`DaemonInfo`], an [`Outcome`], ...).
    Ok(serde_json::Value),
    /// The request could not be carried out (undecodable, handed over, ...).
    Err(PortError),
    /// Progress while the request runs; the reply follows.
    Event(Event),
    /// The workflow of a [`Request::Run`] failed.
    Failed(EngineError),
    /// The hello's protocol is not the daemon's.
    Mismatch {
        /// The daemon's protocol.
        protocol: u32,
        /// The daemon's process id.
        pid: u32,
    },
}

/// What the daemon says about itself in answer to [`Request::Hello`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonInfo {
    /// The deployment name it serves.
    pub name: DeploymentName,
    /// Its process id.
    pub pid: u32,
    /// Where its router listens.
    pub listen: String,
    /// Where its status page listens.
    pub admin_listen: String,
    /// Its state directory.
    pub state_dir: PathBuf,
    /// A daemon that handed over to this one and still serves connections it held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<crate::handover::PreviousDaemon>,
    /// The protocol it speaks; a daemon of protocol 1 does not say.
    #[serde(default = "protocol_one")]
    pub protocol: u32,
}

fn protocol_one() -> u32 {
    1
}

/// A daemon the client started in the background.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StartedDaemon {
    /// Its process id.
    pub pid: u32,
    /// Where it writes its log.
    pub log: PathBuf,
}

/// The result of [`connect_reporting`]: the workflows, the daemon's identity, and whether it had
/// to be started.
pub struct Connection {
    /// The workflows, each run by the daemon.
    pub workflows: Arc<dyn Workflows>,
    /// What the daemon said about itself.
    pub daemon: DaemonInfo,
    /// Set when this call started the daemon.
    pub started: Option<StartedDaemon>,
    /// Differences between the settings asked for and what the running daemon uses (it reads
    /// listen addresses only when it starts), each with what to do.
    pub warnings: Vec<String>,
}

/// How long a starting daemon gets to open its socket.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// Connects to the daemon of `settings.state_dir`, starting it in the background if it does not
/// run, and returns the workflows of `settings.name`, which the daemon runs with `engine`.
pub async fn connect(
    settings: &HostSettings,
    engine: Settings,
) -> Result<Arc<dyn Workflows>, HostError> {
    Ok(connect_reporting(settings, engine).await?.workflows)
}

/// Like [`connect`], and also says whether the daemon was started (and where its log is).
pub async fn connect_reporting(
    settings: &HostSettings,
    engine: Settings,
) -> Result<Connection, HostError> {
    let settings = settings.resolved().map_err(HostError::io(
        "resolve the app directory",
        &settings.app_dir,
    ))?;
    let client = Client {
        socket: settings.socket_path(),
        log: settings.daemon_log_path(),
        settings: settings.clone(),
    };
    let hello = Request::Hello {
        name: settings.name.clone(),
        protocol: Some(PROTOCOL),
    };
    let mut started = None;
    let info: DaemonInfo = match client.call_raw(&hello).await {
        Ok(reply) => hello_answer(reply, &client)?,
        Err(HostError::Unavailable { .. }) => {
            // A daemon that holds the state directory but does not answer yet is starting
            // (perhaps under systemd): wait for it rather than start a second one that would only
            // fail. If it exits instead (it was stopping), start one.
            let waited = match starting_daemon(&settings) {
                Some(pid) => {
                    let s = StartedDaemon {
                        pid,
                        log: settings.daemon_log_path(),
                    };
                    match wait_for_daemon(&client, &hello, &s).await {
                        Ok(info) => Some(info),
                        Err(_) if starting_daemon(&settings).is_none() => None,
                        Err(e) => return Err(e),
                    }
                }
                None => None,
            };
            match waited {
                Some(info) => info,
                None => {
                    let s = start_daemon(&settings).await?;
                    let info = wait_for_daemon(&client, &hello, &s).await?;
                    started = Some(s);
                    info
                }
            }
        }
        Err(e) => return Err(e),
    };
    if info.name != settings.name {
        return Err(HostError::NameMismatch {
            state_dir: settings.state_dir.clone(),
            serving: info.name.to_string(),
            asked: settings.name.to_string(),
        });
    }
    let mut warnings = Vec::new();
    for (what, want, have) in [
        ("listens", settings.listen.to_string(), &info.listen),
        (
            "serves its status page",
            settings.admin_listen.to_string(),
            &info.admin_listen,
        ),
    ] {
        if &want != have {
            warnings.push(format!(
                "the running daemon (pid {}) {what} on {have}, not {want} as configured; \
                 run `flotilla host stop` to apply the new address (versions come back with it)",
                info.pid
            ));
        }
    }
    Ok(Connection {
        workflows: Arc::new(DaemonWorkflows { client, engine }),
        daemon: info,
        started,
        warnings,
    })
}

/// Asks the running daemon of `settings` to hand over to a new daemon started from `binary`
/// (the daemon's own executable when `None`) and waits until the new one routes. Never starts a
/// daemon: with none running, the error says so.
pub async fn upgrade_daemon(
    settings: &HostSettings,
    binary: Option<PathBuf>,
) -> Result<Result<UpgradeReport, PortError>, HostError> {
    let settings = settings.resolved().map_err(HostError::io(
        "resolve the app directory",
        &settings.app_dir,
    ))?;
    let client = Client {
        socket: settings.socket_path(),
        log: settings.daemon_log_path(),
        settings: settings.clone(),
    };
    let reply = client.call_raw(&Request::Upgrade { binary }).await?;
    Ok(reply_value(reply))
}

/// Asks the daemon of `settings` to shut down, and waits until it has. Returns `false` if no daemon
/// was running.
pub async fn stop_daemon(settings: &HostSettings, wait: Duration) -> Result<bool, HostError> {
    let settings = settings.resolved().map_err(HostError::io(
        "resolve the app directory",
        &settings.app_dir,
    ))?;
    let client = Client {
        socket: settings.socket_path(),
        log: settings.daemon_log_path(),
        settings: settings.clone(),
    };
    match client.call_raw(&Request::Shutdown).await {
        Ok(_) => {}
        Err(HostError::Unavailable { .. }) => return Ok(false),
        Err(e) => return Err(e),
    }
    // The daemon holds its lock file until its last instance has stopped and it exits.
    let lock_path = settings.daemon_lock_path();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .open(&lock_path)
            .map_err(HostError::io("open daemon lock", &lock_path))?;
        if nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockSharedNonblock).is_ok() {
            return Ok(true);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(HostError::Unavailable {
                socket: client.socket.clone(),
                log: client.log.clone(),
                message: format!("it did not stop within {}s", wait.as_secs()),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The daemon's answer to a hello: its identity, if it speaks this flotilla's protocol.
fn hello_answer(reply: Reply, client: &Client) -> Result<DaemonInfo, HostError> {
    let mismatch = |protocol, pid| HostError::ProtocolMismatch {
        daemon: protocol,
        client: PROTOCOL,
        pid,
    };
    if let Reply::Mismatch { protocol, pid } = reply {
        return Err(mismatch(protocol, pid));
    }
    let info: DaemonInfo = reply_value(reply).map_err(|e| port_to_host(e, client))?;
    if info.protocol != PROTOCOL {
        return Err(mismatch(info.protocol, info.pid));
    }
    Ok(info)
}

fn port_to_host(e: PortError, client: &Client) -> HostError {
    if e.kind == ErrorKind::Conflict {
        return HostError::Protocol(e.message);
    }
    HostError::Unavailable {
        socket: client.socket.clone(),
        log: client.log.clone(),
        message: e.to_string(),
    }
}

/// The pid of the live daemon holding the state directory's lock, if one does.
fn starting_daemon(settings: &HostSettings) -> Option<u32> {
    let lock_path = settings.daemon_lock_path();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .open(&lock_path)
        .ok()?;
    if nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockSharedNonblock).is_ok() {
        return None;
    }
    let pid: u32 = std::fs::read_to_string(&lock_path)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    crate::procfs::alive(pid).then_some(pid)
}

async fn start_daemon(settings: &HostSettings) -> Result<StartedDaemon, HostError> {
    crate::private::private_dir(&settings.state_dir)
        .map_err(HostError::io("create state directory", &settings.state_dir))?;
    let log_path = settings.daemon_log_path();
    let log = crate::private::private_append(&log_path)
        .map_err(HostError::io("open daemon log", &log_path))?;
    let err_log = log
        .try_clone()
        .map_err(HostError::io("open daemon log", &log_path))?;
    let argv = match &settings.serve_command {
        Some(argv) if !argv.is_empty() => argv.clone(),
        _ => {
            let exe = std::env::current_exe().map_err(HostError::io(
                "find the flotilla executable",
                "/proc/self/exe",
            ))?;
            vec![exe.into_os_string(), "host".into(), "serve".into()]
        }
    };
    let mut cmd = std::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .current_dir(&settings.app_dir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err_log);
    // Its own process group, so a Ctrl-C meant for the CLI does not reach the daemon.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let child = cmd
        .spawn()
        .map_err(HostError::io("start the daemon", Path::new(&argv[0])))?;
    let pid = child.id();
    // Nobody waits for it: it outlives this process. Reap it in the background if it exits early.
    std::thread::spawn(move || {
        let mut child = child;
        let _ = child.wait();
    });
    Ok(StartedDaemon { pid, log: log_path })
}

async fn wait_for_daemon(
    client: &Client,
    hello: &Request,
    started: &StartedDaemon,
) -> Result<DaemonInfo, HostError> {
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    loop {
        match client.call_raw(hello).await {
            Ok(reply) => return hello_answer(reply, client),
            Err(HostError::Unavailable { .. }) => {}
            Err(e) => return Err(e),
        }
        let exited = !crate::procfs::alive(started.pid);
        if exited || tokio::time::Instant::now() >= deadline {
            let text = std::fs::read_to_string(&started.log).unwrap_or_default();
            let why = if exited {
                "it exited at once"
            } else {
                "it did not open its socket in time"
            };
            return Err(HostError::Unavailable {
                socket: client.socket.clone(),
                log: started.log.clone(),
                message: format!(
                    "started the daemon (pid {}) but {why}; its last log lines:\n{}",
                    started.pid,
                    tail_lines(&text, 15).join("\n")
                ),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn reply_value<T: DeserializeOwned>(reply: Reply) -> Result<T, PortError> {
    match reply {
        Reply::Ok(v) => serde_json::from_value(v).map_err(|e| {
            PortError::new(
                ErrorKind::Invalid,
                "decode reply",
                "flotilla host daemon",
                e.to_string(),
            )
        }),
        Reply::Err(e) => Err(e),
        other => Err(PortError::new(
            ErrorKind::Invalid,
            "decode reply",
            "flotilla host daemon",
            format!("{other:?} where a reply was expected"),
        )),
    }
}

/// A connection to the daemon's socket (one per request).
struct Client {
    socket: PathBuf,
    log: PathBuf,
    settings: HostSettings,
}

impl Client {
    async fn call_raw(&self, request: &Request) -> Result<Reply, HostError> {
        let mut never = flotilla_engine::workflows::never();
        let reply = self
            .call_with_events(request, &flotilla_engine::events::Silent, &mut never)
            .await?;
        Ok(reply.expect("a request nobody interrupts is answered"))
    }

    /// Sends `request` and returns its reply, passing the progress events that come before it
    /// to `progress`; `None` when `interrupt` came first (the daemon was asked to cancel).
    async fn call_with_events(
        &self,
        request: &Request,
        progress: &dyn Progress,
        interrupt: &mut Interrupt,
    ) -> Result<Option<Reply>, HostError> {
        // During a handover (see `crate::handover`) the socket is briefly not answered, and the
        // old daemon answers what it had queued with `HANDED_OVER`: both are retried, as long
        // as a live daemon holds the state directory, up to the start timeout.
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            let reply = self.call_once(request, progress, interrupt).await;
            let retry = match &reply {
                Ok(Some(Reply::Err(e))) => e.message.contains(HANDED_OVER),
                Err(HostError::Unavailable { .. }) => starting_daemon(&self.settings).is_some(),
                _ => false,
            };
            if !retry || tokio::time::Instant::now() >= deadline {
                return reply;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    async fn call_once(
        &self,
        request: &Request,
        progress: &dyn Progress,
        interrupt: &mut Interrupt,
    ) -> Result<Option<Reply>, HostError> {
        let unavailable = |message: String| HostError::Unavailable {
            socket: self.socket.clone(),
            log: self.log.clone(),
            message,
        };
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|e| unavailable(format!("cannot connect: {e}")))?;
        let (read, mut write) = stream.into_split();
        write
            .write_all(&line_of(request))
            .await
            .map_err(|e| unavailable(format!("cannot send: {e}")))?;
        let mut lines = BufReader::new(read).lines();
        loop {
            let answer = tokio::select! {
                answer = lines.next_line() => answer
                    .map_err(|e| unavailable(format!("cannot read the answer: {e}")))?,
                () = &mut *interrupt => {
                    *interrupt = flotilla_engine::workflows::never();
                    // The daemon stops the workflow before its next step and releases its lock;
                    // wait a little for it to say so, so that the same command can be run
                    // again at once, but not for a step that takes long (a build).
                    if write.write_all(&line_of(&Request::Cancel)).await.is_ok() {
                        let _ = tokio::time::timeout(CANCEL_WAIT, async {
                            while let Ok(Some(line)) = lines.next_line().await {
                                if !matches!(serde_json::from_str(&line), Ok(Reply::Event(_))) {
                                    break;
                                }
                            }
                        })
                        .await;
                    }
                    return Ok(None);
                }
            };
            let Some(answer) = answer else {
                return Err(unavailable(
                    "it closed the connection without answering (did it stop or crash?)".to_owned(),
                ));
            };
            match serde_json::from_str(&answer)
                .map_err(|e| HostError::Protocol(format!("{e} in {answer:?}")))?
            {
                Reply::Event(event) => progress.event(event),
                reply => return Ok(Some(reply)),
            }
        }
    }
}

/// How long an interrupted command waits for the daemon to stop its workflow.
const CANCEL_WAIT: Duration = Duration::from_secs(5);

/// `request` as one line of the protocol.
fn line_of(request: &Request) -> Vec<u8> {
    let mut line = serde_json::to_vec(request).expect("requests serialise to JSON");
    line.push(b'\n');
    line
}

/// The workflows of one deployment name, each run by the daemon: the host provider's side of the
/// engine's [`Workflows`] seam.
struct DaemonWorkflows {
    client: Client,
    engine: Settings,
}

#[async_trait]
impl Workflows for DaemonWorkflows {
    async fn run(
        &self,
        workflow: Workflow,
        progress: &dyn Progress,
        mut interrupt: Interrupt,
    ) -> Result<Ran, EngineError> {
        let s = &self.client.settings;
        let request = Request::Run(Box::new(RunWorkflow {
            workflow,
            settings: self.engine.clone(),
            app: AppCommands {
                command: s.command.clone(),
                health_path: s.health_path.clone(),
                build: s.build.clone(),
            },
        }));
        let step = "run the workflow in the flotilla host daemon";
        let reply = self
            .client
            .call_with_events(&request, progress, &mut interrupt)
            .await
            .map_err(|e| EngineError::Port {
                step: step.to_owned(),
                source: e.into_port("run a workflow in", "the flotilla host daemon"),
            })?;
        match reply {
            None => Ok(Ran::Interrupted),
            Some(Reply::Ok(value)) => serde_json::from_value::<Outcome>(value)
                .map(Ran::Finished)
                .map_err(|e| EngineError::Port {
                    step: step.to_owned(),
                    source: PortError::new(
                        ErrorKind::Invalid,
                        "decode the outcome of",
                        "the workflow",
                        e.to_string(),
                    ),
                }),
            Some(Reply::Failed(e)) => Err(e),
            Some(Reply::Err(e)) => Err(EngineError::Port {
                step: step.to_owned(),
                source: e,
            }),
            Some(other) => Err(EngineError::Port {
                step: step.to_owned(),
                source: PortError::new(
                    ErrorKind::Invalid,
                    "decode the outcome of",
                    "the workflow",
                    format!("the daemon answered {other:?}"),
                ),
            }),
        }
    }

    fn now(&self) -> Timestamp {
        SystemClock.now()
    }
}

/// The system clock.
pub struct SystemClock;

#[async_trait]
impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Timestamp::from_millis(millis)
    }

    async fn sleep(&self, duration: Duration) {
        tokio::time::sleep(duration).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_core::DeploymentId;

    #[test]
    fn wire_format_is_one_tagged_object_per_line() {
        let id = DeploymentId::new("20261125-190633-k3x9").expect("valid");
        let name = DeploymentName::new("shop").expect("valid");
        let hello = Request::Hello {
            name: name.clone(),
            protocol: Some(PROTOCOL),
        };
        assert_eq!(
            serde_json::to_string(&hello).expect("json"),
            r#"{"op":"hello","name":"shop","protocol":2}"#
        );
        let text = serde_json::to_string(&Request::Cancel).expect("json");
        assert_eq!(text, r#"{"op":"cancel"}"#);
        let drain = serde_json::to_value(Workflow::Drain { id: id.clone() }).expect("json");
        assert_eq!(drain["workflow"], "drain");
        let failed = Reply::Failed(EngineError::UnknownVersion {
            name,
            id: id.clone(),
        });
        let back: Reply =
            serde_json::from_str(&serde_json::to_string(&failed).expect("json")).expect("json");
        assert!(matches!(
            back,
            Reply::Failed(EngineError::UnknownVersion { .. })
        ));
        let event = Reply::Event(Event::BuildOutput {
            id,
            line: "compiling".to_owned(),
        });
        assert_eq!(
            serde_json::to_string(&event).expect("json"),
            r#"{"event":{"event":"build_output","id":"20261125-190633-k3x9","line":"compiling"}}"#
        );
    }

    #[test]
    fn a_protocol_one_hello_and_daemon_info_still_decode() {
        // A flotilla of protocol 1 (and a daemon checking its successor) sends no protocol.
        let hello: Request =
            serde_json::from_str(r#"{"op":"hello","name":"shop"}"#).expect("an old hello");
        assert!(matches!(hello, Request::Hello { protocol: None, .. }));
        // A daemon of protocol 1 does not say which protocol it speaks.
        let info: DaemonInfo = serde_json::from_str(
            r#"{"name":"shop","pid":7,"listen":"127.0.0.1:8080","admin_listen":"127.0.0.1:9090","state_dir":"/srv/shop/.flotilla/host"}"#,
        )
        .expect("an old daemon's info");
        assert_eq!(info.protocol, 1);
    }
}
