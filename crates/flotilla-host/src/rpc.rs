//! The daemon's protocol over its Unix socket, and the client side: [`connect`] returns the
//! engine's [`Ports`] whose every call is one request to the daemon.
//!
//! Framing: one JSON object per line. The client writes a [`Request`] line and reads one
//! [`Reply`] line; a connection may carry several requests in turn. A request that asks for them
//! (`ImagePrepare` with `events`) is answered by progress lines (`{"event": ...}`, such as each
//! line a build prints) before its reply; a daemon never sends them unasked, so an older client
//! keeps working. During a handover to a new daemon the client retries a connection that fails
//! while a live daemon holds the state directory, and a request the old daemon answered
//! [`HANDED_OVER`]. Every port method has its own
//! request, so the daemon implements the ports and the CLI's engine drives them unchanged.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use flotilla_core::drain::Readiness;
use flotilla_core::routing::{RoutingTable, WeightedTarget};
use flotilla_core::{DeploymentId, DeploymentName, InstanceId, Timestamp};
use flotilla_engine::events::{Event, Progress, Silent};
use flotilla_engine::ports::{
    Clock, Compute, ComputeStatus, ErrorKind, ImageRef, ImageRequest, ImageSource, LockInfo,
    LockOutcome, PortError, Ports, Routing, StateStore, VersionRecord, VersionSpec,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::error::HostError;
use crate::release::tail_lines;
use crate::settings::HostSettings;

/// One request to the daemon.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Checks that the daemon serves `name`; answers [`DaemonInfo`].
    Hello {
        /// The deployment name the client works on.
        name: DeploymentName,
    },
    /// `Compute::create`, with how to launch the instances.
    ComputeCreate {
        /// The spec.
        spec: VersionSpec,
        /// The shell command of each instance.
        command: String,
        /// The health path.
        health_path: String,
    },
    /// `Compute::scale`.
    ComputeScale {
        /// The version.
        id: DeploymentId,
        /// Instances wanted.
        desired: u32,
    },
    /// `Compute::delete`.
    ComputeDelete {
        /// The version.
        id: DeploymentId,
    },
    /// `Compute::observe`.
    ComputeObserve {
        /// The versions.
        ids: Vec<DeploymentId>,
    },
    /// `Compute::list`.
    ComputeList,
    /// `Compute::recent_logs`.
    ComputeRecentLogs {
        /// The version.
        id: DeploymentId,
        /// Lines wanted.
        lines: usize,
    },
    /// `Routing::install_affinity`.
    RoutingInstall {
        /// The version.
        id: DeploymentId,
    },
    /// `Routing::retire_affinity`.
    RoutingRetire {
        /// The version.
        id: DeploymentId,
    },
    /// `Routing::remove_affinity`.
    RoutingRemove {
        /// The version.
        id: DeploymentId,
    },
    /// `Routing::set_default`.
    RoutingSetDefault {
        /// The new default forward.
        targets: Vec<WeightedTarget>,
    },
    /// `Routing::snapshot`.
    RoutingSnapshot,
    /// `StateStore::list`.
    StateList,
    /// `StateStore::get`.
    StateGet {
        /// The version.
        id: DeploymentId,
    },
    /// `StateStore::put`.
    StatePut {
        /// The record.
        record: VersionRecord,
    },
    /// `StateStore::delete`.
    StateDelete {
        /// The version.
        id: DeploymentId,
    },
    /// `StateStore::readiness`.
    StateReadiness {
        /// The versions.
        ids: Vec<DeploymentId>,
    },
    /// `StateStore::acquire_lock`.
    StateAcquireLock {
        /// Who asks.
        owner: String,
        /// The caller's clock reading.
        now: Timestamp,
        /// How long the lock lives, in milliseconds.
        ttl_ms: u64,
        /// Break a live lock.
        force: bool,
    },
    /// `StateStore::release_lock`.
    StateReleaseLock {
        /// Who releases.
        owner: String,
    },
    /// `StateStore::lock_info`.
    StateLockInfo,
    /// `ImageSource::prepare`, with the build command.
    ImagePrepare {
        /// The version.
        id: DeploymentId,
        /// Where its code comes from.
        request: ImageRequest,
        /// The build command to run in the release, if any.
        build: Option<String>,
        /// Send progress events (the build's output) before the reply.
        #[serde(default)]
        events: bool,
    },
    /// `ImageSource::discard`.
    ImageDiscard {
        /// The version.
        id: DeploymentId,
    },
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

/// The answer to one request: `{"ok": value}` or `{"err": PortError}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// Success, with the method's result as JSON.
    Ok(serde_json::Value),
    /// Failure.
    Err(PortError),
    /// Progress while the request runs; the reply follows.
    Event(Event),
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
}

/// A daemon the client started in the background.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StartedDaemon {
    /// Its process id.
    pub pid: u32,
    /// Where it writes its log.
    pub log: PathBuf,
}

/// The result of [`connect_reporting`]: the ports, the daemon's identity, and whether it had to be
/// started.
pub struct Connection {
    /// The ports, speaking to the daemon.
    pub ports: Ports,
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
/// run, and returns ports for `settings.name` that speak to it.
pub async fn connect(settings: &HostSettings) -> Result<Ports, HostError> {
    Ok(connect_reporting(settings).await?.ports)
}

/// Like [`connect`], and also says whether the daemon was started (and where its log is).
pub async fn connect_reporting(settings: &HostSettings) -> Result<Connection, HostError> {
    let settings = settings.resolved().map_err(HostError::io(
        "resolve the app directory",
        &settings.app_dir,
    ))?;
    let client = Arc::new(Client {
        socket: settings.socket_path(),
        log: settings.daemon_log_path(),
        settings: settings.clone(),
    });
    let hello = Request::Hello {
        name: settings.name.clone(),
    };
    let mut started = None;
    let info: DaemonInfo = match client.call_raw(&hello).await {
        Ok(reply) => reply_value(reply).map_err(|e| port_to_host(e, &client))?,
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
    let ports = Ports {
        compute: client.clone(),
        routing: client.clone(),
        state: client.clone(),
        images: client.clone(),
        clock: Arc::new(SystemClock),
    };
    Ok(Connection {
        ports,
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
            Ok(reply) => return reply_value(reply).map_err(|e| port_to_host(e, client)),
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
        Reply::Event(event) => Err(PortError::new(
            ErrorKind::Invalid,
            "decode reply",
            "flotilla host daemon",
            format!("a progress event where the reply was expected: {event:?}"),
        )),
    }
}

/// The client side of the ports: every call is one request over the Unix socket.
struct Client {
    socket: PathBuf,
    log: PathBuf,
    settings: HostSettings,
}

impl Client {
    async fn call_raw(&self, request: &Request) -> Result<Reply, HostError> {
        self.call_with_events(request, &Silent).await
    }

    /// Sends `request` and returns its reply, passing the progress events that come before it
    /// to `progress`.
    async fn call_with_events(
        &self,
        request: &Request,
        progress: &dyn Progress,
    ) -> Result<Reply, HostError> {
        // During a handover (see `crate::handover`) the socket is briefly not answered, and the
        // old daemon answers what it had queued with `HANDED_OVER`: both are retried, as long
        // as a live daemon holds the state directory, up to the start timeout.
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            let reply = self.call_once(request, progress).await;
            let retry = match &reply {
                Ok(Reply::Err(e)) => e.message.contains(HANDED_OVER),
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
    ) -> Result<Reply, HostError> {
        let unavailable = |message: String| HostError::Unavailable {
            socket: self.socket.clone(),
            log: self.log.clone(),
            message,
        };
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|e| unavailable(format!("cannot connect: {e}")))?;
        let (read, mut write) = stream.into_split();
        let mut line = serde_json::to_string(request).expect("requests serialise to JSON");
        line.push('\n');
        write
            .write_all(line.as_bytes())
            .await
            .map_err(|e| unavailable(format!("cannot send: {e}")))?;
        let mut reader = BufReader::new(read);
        loop {
            let mut answer = String::new();
            let n = reader
                .read_line(&mut answer)
                .await
                .map_err(|e| unavailable(format!("cannot read the answer: {e}")))?;
            if n == 0 {
                return Err(unavailable(
                    "it closed the connection without answering (did it stop or crash?)".to_owned(),
                ));
            }
            match serde_json::from_str(&answer)
                .map_err(|e| HostError::Protocol(format!("{e} in {answer:?}")))?
            {
                Reply::Event(event) => progress.event(event),
                reply => return Ok(reply),
            }
        }
    }

    async fn call<T: DeserializeOwned>(
        &self,
        request: Request,
        operation: &str,
        resource: &str,
    ) -> Result<T, PortError> {
        let reply = self
            .call_raw(&request)
            .await
            .map_err(|e| e.into_port(operation, resource))?;
        reply_value(reply)
    }
}

#[async_trait]
impl Compute for Client {
    async fn create(&self, spec: &VersionSpec) -> Result<(), PortError> {
        let request = Request::ComputeCreate {
            spec: spec.clone(),
            command: self.settings.command.clone(),
            health_path: self.settings.health_path.clone(),
        };
        self.call(request, "create instances of", spec.id.as_str())
            .await
    }

    async fn scale(&self, id: &DeploymentId, desired: u32) -> Result<(), PortError> {
        self.call(
            Request::ComputeScale {
                id: id.clone(),
                desired,
            },
            "scale",
            id.as_str(),
        )
        .await
    }

    async fn delete(&self, id: &DeploymentId) -> Result<(), PortError> {
        self.call(
            Request::ComputeDelete { id: id.clone() },
            "delete instances of",
            id.as_str(),
        )
        .await
    }

    async fn observe(
        &self,
        ids: &[DeploymentId],
    ) -> Result<BTreeMap<DeploymentId, ComputeStatus>, PortError> {
        self.call(
            Request::ComputeObserve { ids: ids.to_vec() },
            "observe",
            "instances",
        )
        .await
    }

    async fn list(&self) -> Result<Vec<DeploymentId>, PortError> {
        self.call(Request::ComputeList, "list", "instances").await
    }

    async fn recent_logs(&self, id: &DeploymentId, lines: usize) -> Result<Vec<String>, PortError> {
        self.call(
            Request::ComputeRecentLogs {
                id: id.clone(),
                lines,
            },
            "read logs of",
            id.as_str(),
        )
        .await
    }
}

#[async_trait]
impl Routing for Client {
    async fn install_affinity(&self, id: &DeploymentId) -> Result<(), PortError> {
        self.call(
            Request::RoutingInstall { id: id.clone() },
            "install affinity of",
            id.as_str(),
        )
        .await
    }

    async fn retire_affinity(&self, id: &DeploymentId) -> Result<(), PortError> {
        self.call(
            Request::RoutingRetire { id: id.clone() },
            "retire affinity of",
            id.as_str(),
        )
        .await
    }

    async fn remove_affinity(&self, id: &DeploymentId) -> Result<(), PortError> {
        self.call(
            Request::RoutingRemove { id: id.clone() },
            "remove affinity of",
            id.as_str(),
        )
        .await
    }

    async fn set_default(&self, targets: &[WeightedTarget]) -> Result<(), PortError> {
        self.call(
            Request::RoutingSetDefault {
                targets: targets.to_vec(),
            },
            "set default",
            "routing",
        )
        .await
    }

    async fn snapshot(&self) -> Result<RoutingTable, PortError> {
        self.call(Request::RoutingSnapshot, "read", "routing").await
    }
}

#[async_trait]
impl StateStore for Client {
    async fn list(&self) -> Result<Vec<VersionRecord>, PortError> {
        self.call(Request::StateList, "list", "versions").await
    }

    async fn get(&self, id: &DeploymentId) -> Result<Option<VersionRecord>, PortError> {
        self.call(
            Request::StateGet { id: id.clone() },
            "read record of",
            id.as_str(),
        )
        .await
    }

    async fn put(&self, record: &VersionRecord) -> Result<(), PortError> {
        self.call(
            Request::StatePut {
                record: record.clone(),
            },
            "write record of",
            record.version.id.as_str(),
        )
        .await
    }

    async fn delete(&self, id: &DeploymentId) -> Result<(), PortError> {
        self.call(
            Request::StateDelete { id: id.clone() },
            "delete record of",
            id.as_str(),
        )
        .await
    }

    async fn readiness(
        &self,
        ids: &[DeploymentId],
    ) -> Result<BTreeMap<DeploymentId, BTreeMap<InstanceId, Readiness>>, PortError> {
        self.call(
            Request::StateReadiness { ids: ids.to_vec() },
            "read",
            "readiness",
        )
        .await
    }

    async fn acquire_lock(
        &self,
        owner: &str,
        now: Timestamp,
        ttl: Duration,
        force: bool,
    ) -> Result<LockOutcome, PortError> {
        let request = Request::StateAcquireLock {
            owner: owner.to_owned(),
            now,
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
            force,
        };
        self.call(request, "take", "deploy lock").await
    }

    async fn release_lock(&self, owner: &str) -> Result<(), PortError> {
        self.call(
            Request::StateReleaseLock {
                owner: owner.to_owned(),
            },
            "release",
            "deploy lock",
        )
        .await
    }

    async fn lock_info(&self) -> Result<Option<LockInfo>, PortError> {
        self.call(Request::StateLockInfo, "read", "deploy lock")
            .await
    }
}

#[async_trait]
impl ImageSource for Client {
    async fn prepare(
        &self,
        id: &DeploymentId,
        request: &ImageRequest,
        progress: &dyn Progress,
    ) -> Result<ImageRef, PortError> {
        let request = Request::ImagePrepare {
            id: id.clone(),
            request: request.clone(),
            build: self.settings.build.clone(),
            events: true,
        };
        let reply = self
            .call_with_events(&request, progress)
            .await
            .map_err(|e| e.into_port("prepare release", id.as_str()))?;
        reply_value(reply)
    }

    async fn discard(&self, id: &DeploymentId) -> Result<(), PortError> {
        self.call(
            Request::ImageDiscard { id: id.clone() },
            "discard release",
            id.as_str(),
        )
        .await
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

    #[test]
    fn wire_format_is_one_tagged_object() {
        let id = DeploymentId::new("20261125-190633-k3x9").expect("valid");
        let text = serde_json::to_string(&Request::ComputeScale { id, desired: 0 }).expect("json");
        assert_eq!(
            text,
            r#"{"op":"compute_scale","id":"20261125-190633-k3x9","desired":0}"#
        );
        let reply: Reply = serde_json::from_str(r#"{"ok":null}"#).expect("json");
        assert!(matches!(reply, Reply::Ok(serde_json::Value::Null)));
        let err = Reply::Err(PortError::new(ErrorKind::NotFound, "scale", "x", "gone"));
        let back: Reply =
            serde_json::from_str(&serde_json::to_string(&err).expect("json")).expect("json");
        assert!(matches!(back, Reply::Err(e) if e.kind == ErrorKind::NotFound));
    }

    #[test]
    fn progress_lines_come_before_the_reply_only_when_asked_for() {
        let id = DeploymentId::new("20261125-190633-k3x9").expect("valid");
        let event = Reply::Event(Event::BuildOutput {
            id: id.clone(),
            line: "compiling".to_owned(),
        });
        let text = serde_json::to_string(&event).expect("json");
        assert_eq!(
            text,
            r#"{"event":{"event":"build_output","id":"20261125-190633-k3x9","line":"compiling"}}"#
        );
        let back: Reply = serde_json::from_str(&text).expect("json");
        assert!(
            matches!(back, Reply::Event(Event::BuildOutput { line, .. }) if line == "compiling")
        );
        // A request from a client that does not know about events never asks for them.
        let old = r#"{"op":"image_prepare","id":"20261125-190633-k3x9","request":{"build":"."},"build":null}"#;
        let request: Request = serde_json::from_str(old).expect("an older client's request");
        assert!(matches!(
            request,
            Request::ImagePrepare { events: false, .. }
        ));
    }
}
