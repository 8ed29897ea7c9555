//! The daemon: implements the ports for real (SQLite, the supervisor, the router), runs the
//! engine over them for the workflows commands send over its Unix socket (see [`crate::rpc`]),
//! runs the router and the status page, observes drain readiness every `[drain] poll_seconds`,
//! and runs its own reaper every `[reaper] interval_seconds`.
//!
//! Start-up order: take the daemon lock → open state → publish the saved routing table (so
//! retired ids answer 410 at once) → bind the router and the status page (or take the sockets a
//! daemon handing over passed on, see [`crate::handover`]) → adopt the instances a previous daemon
//! left running, stop its other leftovers, and start every recorded version's missing instances →
//! route → bind the socket → tell systemd `READY=1`. A version that was active or draining serves
//! again as soon as its instances pass health checks (an adopted one is checked at once).
//!
//! The router runs on one thread per CPU, each with a single-threaded runtime and its own
//! `SO_REUSEPORT` listener on `[host] listen` (see `run_router_workers`), sharing one [`Router`].
//!
//! Shutdown: stop accepting requests on the socket, let the router drain open connections with a
//! deadline (and log what it cut), then, as the shutdown asked ([`OnExit`]): stop every instance
//! (SIGTERM, then SIGKILL after `stop_timeout`; `flotilla host stop`), or leave them running for
//! the next daemon to adopt (SIGTERM to the daemon: a service manager's restart).
//! Compute records stay either way, so the next daemon serves the same versions again.
//!
//! Handover (`flotilla host upgrade`, SIGUSR2): `hand_over` runs the old daemon's side of the
//! protocol in [`crate::handover`]; once the successor routes, the router drains by a
//! [`DrainPlan`] with a linger and `[host] upgrade_deadline_seconds`, while the daemon writes the
//! sessions it still holds for the successor, and the instances are left to the successor.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use flotilla_core::drain::{DrainTracker, Readiness, Sessions};
use flotilla_core::routing::{RoutingTable, RuleBudget, WeightedTarget};
use flotilla_core::{DeploymentId, InstanceId, Timestamp, VersionState};
use flotilla_engine::events::{Event, Progress};
use flotilla_engine::ports::{
    Clock, Compute, ComputeStatus, ErrorKind, ImageRef, ImageRequest, ImageSource, LockInfo,
    LockOutcome, PortError, Ports, Routing, StateStore, VersionRecord, VersionSpec,
};
use flotilla_engine::workflows::{LocalHolders, Workflow};
use flotilla_engine::{Engine, Settings};
use flotilla_proxy::{ConnectionLimit, DrainPlan, ProxyConfig};
use nix::fcntl::{Flock, FlockArg};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::sync::watch;

use crate::error::HostError;
use crate::handover;
use crate::release::{self, ReleaseError};
use crate::router::{InstanceKey, Router};
use crate::rpc::{DaemonInfo, Reply, Request, SystemClock, UpgradeReport};
use crate::settings::HostSettings;
use crate::state::{ComputeRecord, Launch, Store};
use crate::supervisor::Supervisor;

/// How long the router may take to drain its connections at shutdown, at most.
const MAX_ROUTER_DRAIN: Duration = Duration::from_secs(10);
/// How long a daemon behind the front door waits for its versions' health before registering.
const FRONT_DOOR_HEALTH_WAIT: Duration = Duration::from_secs(5);

/// How long a deploy lock taken by the daemon's reaper lives.
const REAPER_LOCK_TTL: Duration = Duration::from_secs(300);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The daemon's live state, shared by the socket server, the loops and the status page.
pub struct Host {
    settings: HostSettings,
    store: Arc<Store>,
    supervisor: Supervisor,
    router: Arc<Router>,
    routing: Mutex<RoutingTable>,
    tombstones: Mutex<Vec<DeploymentId>>,
    trackers: Mutex<HashMap<InstanceKey, DrainTracker>>,
    clock: SystemClock,
    /// What the reaper loop has done, for `/metrics`.
    reaper_meter: crate::metrics::ReaperMeter,
    /// Where this daemon's registration with the front door stands (`Connecting` when it has
    /// none configured, and never changes then).
    front_door: watch::Sender<crate::front_door::member::MembershipState>,
    /// What a handover to a new daemon needs (see [`crate::handover`]).
    handover: HandoverState,
}

/// A request to hand over to a new daemon, from the socket or SIGUSR2.
struct UpgradeOrder {
    /// The new daemon's executable; the daemon's own when `None`.
    binary: Option<PathBuf>,
    /// Where the outcome goes (none for SIGUSR2: the log says it).
    reply: Option<tokio::sync::oneshot::Sender<Result<UpgradeReport, PortError>>>,
}

/// The daemon's side of a handover.
struct HandoverState {
    /// Every writer of the state directory (a socket request, a reaper pass, a drain
    /// observation) holds this for reading; a handover holds it for writing, so it waits for
    /// them and no new one starts.
    writers: tokio::sync::RwLock<()>,
    /// Set once a successor routes: no more writes, every request is answered `HANDED_OVER`.
    handed_over: AtomicBool,
    /// Set while the supervisor has let its instances go: the router keeps the instances it had
    /// instead of being told there are none.
    router_frozen: AtomicBool,
    /// A handover is under way.
    upgrading: AtomicBool,
    /// While true the socket server does not accept: clients queue until it is known which
    /// daemon answers.
    rpc_paused: watch::Sender<bool>,
    /// How the router drains when it stops.
    drain_plan: Mutex<DrainPlan>,
    /// Where upgrade requests go.
    orders: tokio::sync::mpsc::Sender<UpgradeOrder>,
    /// The executable this daemon was started from, resolved at start.
    exe: Option<PathBuf>,
    /// Tells the socket server to bind its path again if another socket took it.
    rebind: tokio::sync::Notify,
    /// The router's connection limit, which counts its open connections.
    connection_limit: Mutex<Option<ConnectionLimit>>,
    /// When the drain after a handover ends at the latest (seconds since the epoch).
    deadline_unix: std::sync::atomic::AtomicU64,
    /// The inode of this daemon's socket: until the path names another one, a successor has
    /// not bound it (and connecting would only queue on this daemon's own, paused socket).
    socket_inode: std::sync::atomic::AtomicU64,
}

impl HandoverState {
    fn new(orders: tokio::sync::mpsc::Sender<UpgradeOrder>, exe: Option<PathBuf>) -> Self {
        HandoverState {
            writers: tokio::sync::RwLock::new(()),
            handed_over: AtomicBool::new(false),
            router_frozen: AtomicBool::new(false),
            upgrading: AtomicBool::new(false),
            rpc_paused: watch::Sender::new(false),
            drain_plan: Mutex::new(DrainPlan {
                linger: Duration::ZERO,
                deadline: MAX_ROUTER_DRAIN,
            }),
            orders,
            exe,
            rebind: tokio::sync::Notify::new(),
            connection_limit: Mutex::new(None),
            deadline_unix: std::sync::atomic::AtomicU64::new(0),
            socket_inode: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn handed_over(&self) -> bool {
        self.handed_over.load(Ordering::SeqCst)
    }

    /// Remembers which socket the path names now: this daemon's own, just bound.
    fn note_socket(&self, path: &Path) {
        use std::os::unix::fs::MetadataExt;
        if let Ok(m) = std::fs::metadata(path) {
            self.socket_inode.store(m.ino(), Ordering::SeqCst);
        }
    }

    /// Whether the socket path names another socket than this daemon's own.
    fn socket_taken(&self, path: &Path) -> bool {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).is_ok_and(|m| m.ino() != self.socket_inode.load(Ordering::SeqCst))
    }
}

fn port_err(operation: &str, resource: &str) -> impl FnOnce(HostError) -> PortError {
    let (operation, resource) = (operation.to_owned(), resource.to_owned());
    move |e| e.into_port(&operation, &resource)
}

impl Host {
    /// Publishes the routing table, tombstones and instances to the router.
    fn refresh(&self) {
        if self.handover.router_frozen.load(Ordering::SeqCst) {
            return;
        }
        let table = lock(&self.routing).clone();
        let tombstones = lock(&self.tombstones).clone();
        self.router
            .publish(&table, &tombstones, &self.supervisor.instances());
    }

    /// Changes the routing table with `change`, saves it, then publishes it.
    fn change_routing(
        &self,
        operation: &str,
        id: &str,
        change: impl FnOnce(&mut RoutingTable) -> Result<(), flotilla_core::routing::RoutingError>,
    ) -> Result<(), PortError> {
        {
            let mut table = lock(&self.routing);
            let mut next = table.clone();
            change(&mut next)
                .map_err(|e| PortError::new(ErrorKind::Conflict, operation, id, e.to_string()))?;
            self.store
                .save_routing(&next)
                .map_err(port_err(operation, id))?;
            *table = next;
        }
        self.refresh();
        Ok(())
    }

    async fn create(
        &self,
        spec: &VersionSpec,
        command: &str,
        health_path: &str,
    ) -> Result<(), PortError> {
        let op = "create instances of";
        let release_dir = std::path::PathBuf::from(&spec.image.0);
        if !release_dir.is_dir() {
            return Err(PortError::new(
                ErrorKind::Invalid,
                op,
                spec.id.as_str(),
                format!("release directory {} does not exist", release_dir.display()),
            ));
        }
        let record = ComputeRecord {
            spec: spec.clone(),
            launch: Launch {
                command: command.to_owned(),
                release_dir,
                health_path: health_path.to_owned(),
            },
            desired: spec.instances,
        };
        self.supervisor
            .create(record)
            .map_err(port_err(op, spec.id.as_str()))
    }

    async fn scale(&self, id: &DeploymentId, desired: u32) -> Result<(), PortError> {
        let found = self
            .supervisor
            .scale(id, desired)
            .map_err(port_err("scale", id.as_str()))?;
        if !found && desired > 0 {
            return Err(PortError::new(
                ErrorKind::NotFound,
                "scale",
                id.as_str(),
                "no instances exist for this version",
            ));
        }
        Ok(())
    }

    async fn delete_compute(&self, id: &DeploymentId) -> Result<(), PortError> {
        self.supervisor
            .delete(id)
            .await
            .map_err(port_err("delete instances of", id.as_str()))?;
        lock(&self.trackers).retain(|(v, _), _| v != id);
        Ok(())
    }

    fn observe(&self, ids: &[DeploymentId]) -> BTreeMap<DeploymentId, ComputeStatus> {
        // Sessions a previous daemon still serves keep their versions from being retired.
        let previous = handover::read_previous(&self.settings.state_dir);
        let mut observed = self.supervisor.observe(ids, |id, instance| {
            self.routed_sessions(previous.as_ref(), id, instance)
        });
        for (id, status) in &mut observed {
            status.client_blocked_by_csp = self
                .router
                .stats()
                .total_where(|(v, _)| v == id)
                .csp_blocked_total;
        }
        observed
    }

    fn install_affinity(&self, id: &DeploymentId) -> Result<(), PortError> {
        self.store
            .remove_tombstone(id)
            .map_err(port_err("install affinity of", id.as_str()))?;
        lock(&self.tombstones).retain(|t| t != id);
        self.change_routing("install affinity of", id.as_str(), |t| {
            t.install_affinity(id.clone());
            Ok(())
        })
    }

    fn retire_affinity(&self, id: &DeploymentId) -> Result<(), PortError> {
        self.change_routing("retire affinity of", id.as_str(), |t| {
            t.mark_retired(id.clone())
        })
    }

    fn remove_affinity(&self, id: &DeploymentId) -> Result<(), PortError> {
        let op = "remove affinity of";
        let had = lock(&self.routing).affinity(id).is_some();
        if had {
            // The tombstone goes in first: from now on the id answers 410 even with no affinity.
            self.store
                .add_tombstone(id, self.clock.now())
                .map_err(port_err(op, id.as_str()))?;
            let mut tombs = lock(&self.tombstones);
            if !tombs.contains(id) {
                tombs.push(id.clone());
            }
        }
        self.change_routing(op, id.as_str(), |t| t.remove_affinity(id))
    }

    fn set_default(&self, targets: &[WeightedTarget]) -> Result<(), PortError> {
        self.change_routing("set default", "routing", |t| {
            if targets.is_empty() {
                t.clear_default();
                Ok(())
            } else {
                t.set_default(targets.to_vec())
            }
        })
    }

    async fn prepare(
        &self,
        id: &DeploymentId,
        request: &ImageRequest,
        build: Option<&str>,
        progress: &dyn Progress,
    ) -> Result<ImageRef, PortError> {
        let op = "prepare release";
        match request {
            ImageRequest::Prebuilt(path) => {
                if Path::new(path).is_dir() {
                    Ok(ImageRef(path.clone()))
                } else {
                    Err(PortError::new(
                        ErrorKind::Invalid,
                        op,
                        id.as_str(),
                        format!("{path} is not a directory"),
                    ))
                }
            }
            ImageRequest::Build(dir) => {
                let app_dir = if dir.is_relative() {
                    self.settings.app_dir.join(dir)
                } else {
                    dir.clone()
                };
                let log = release::build_log(&self.settings.logs_dir(), id);
                let build = build.map(|command| release::Build { command, log: &log });
                let made = release::prepare(
                    &app_dir,
                    &self.settings.state_dir,
                    &self.settings.releases_dir(),
                    id,
                    build,
                    progress,
                )
                .await;
                match made {
                    Ok(path) => Ok(ImageRef(path.display().to_string())),
                    Err(ReleaseError::Build(_))
                    | Err(ReleaseError::Walk { .. })
                    | Err(ReleaseError::Empty { .. }) => Err(PortError::new(
                        ErrorKind::Invalid,
                        op,
                        id.as_str(),
                        made.err().map(|e| e.to_string()).unwrap_or_default(),
                    )),
                    Err(ReleaseError::Host(e)) => Err(e.into_port(op, id.as_str())),
                }
            }
        }
    }

    async fn discard(&self, id: &DeploymentId) -> Result<(), PortError> {
        let releases = self.settings.releases_dir();
        let in_use = self.supervisor.list();
        let keep = usize::try_from(self.settings.keep_releases).unwrap_or(usize::MAX);
        let dir = release::release_dir(&releases, id);
        // Keep the newest `keep_releases` releases for inspection; this one goes if it is older.
        let mut names: Vec<String> = std::fs::read_dir(&releases)
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        let newest: Vec<&String> = names.iter().rev().take(keep).collect();
        if dir.exists() && !in_use.contains(id) && !newest.iter().any(|n| n.as_str() == id.as_str())
        {
            std::fs::remove_dir_all(&dir).map_err(|e| {
                HostError::io("remove release", &dir)(e).into_port("discard release", id.as_str())
            })?;
        }
        release::prune(&releases, keep, &in_use)
            .map_err(port_err("prune releases", id.as_str()))?;
        Ok(())
    }

    /// An instance's live sessions through the router: this daemon's, and those the daemon it
    /// took over from (`previous`) still serves.
    fn routed_sessions(
        &self,
        previous: Option<&handover::PreviousDaemon>,
        id: &DeploymentId,
        instance: &InstanceId,
    ) -> u64 {
        self.router.sessions(id, instance)
            + previous
                .and_then(|p| p.held(id, instance))
                .map_or(0, |h| h.live)
    }

    /// One drain observation: each running instance's readiness from its sessions (counted by the
    /// router, plus what the app reports in its health JSON) and its version's state. The grace
    /// period counts from the observation that first saw no session (see
    /// `flotilla_core::drain`); a daemon that restarted starts it again at its first observation.
    fn observe_drain(&self) -> Result<(), HostError> {
        let now = self.clock.now();
        let records: HashMap<DeploymentId, VersionState> = self
            .store
            .list_versions()?
            .into_iter()
            .map(|r| (r.version.id, r.version.state))
            .collect();
        let mut per_version: BTreeMap<DeploymentId, BTreeMap<InstanceId, Readiness>> =
            BTreeMap::new();
        // A daemon that handed over to this one still serves sessions of its own: they count.
        let previous = handover::read_previous(&self.settings.state_dir);
        let mut seen = Vec::new();
        {
            let mut trackers = lock(&self.trackers);
            for view in self.supervisor.instances() {
                let Some(state) = records.get(&view.id) else {
                    continue;
                };
                per_version.entry(view.id.clone()).or_default();
                if !view.state.running() {
                    continue;
                }
                let key = (view.id.clone(), view.state.instance.clone());
                let routed = self.router.stats().snapshot_of(&key).unwrap_or_default();
                // The router's running total of sessions catches a tab that reconnected and left
                // again between two observations; the app's own count has no such total.
                let held = previous
                    .as_ref()
                    .and_then(|p| p.held(&view.id, &view.state.instance));
                let sessions = Sessions {
                    live: routed.sessions
                        + view.state.app_sessions().unwrap_or(0)
                        + held.map_or(0, |h| h.live),
                    started: routed.sessions_total + held.map_or(0, |h| h.started),
                };
                let status = trackers.entry(key.clone()).or_default().observe(
                    matches!(state, VersionState::Draining | VersionState::Retired),
                    sessions,
                    now,
                    self.settings.drain_grace,
                );
                seen.push(key);
                per_version
                    .get_mut(&view.id)
                    .expect("inserted above")
                    .insert(view.state.instance.clone(), status.readiness());
            }
            trackers.retain(|k, _| seen.contains(k));
        }
        for (id, values) in per_version {
            if self.store.set_readiness(&id, &values)? {
                tracing::info!(%id, readiness = ?values, "instance readiness changed");
            }
        }
        Ok(())
    }

    fn info(&self) -> DaemonInfo {
        DaemonInfo {
            name: self.settings.name.clone(),
            pid: std::process::id(),
            listen: self.settings.listen.to_string(),
            admin_listen: self.settings.admin_listen.to_string(),
            state_dir: self.settings.state_dir.clone(),
            previous: handover::read_previous(&self.settings.state_dir),
            protocol: crate::rpc::PROTOCOL,
        }
    }

    /// What this daemon's router serves, for the successor of a handover: its sessions per
    /// instance and its connections, with its pid, start time and the drain's deadline.
    fn held_sessions(&self) -> handover::PreviousDaemon {
        handover::PreviousDaemon {
            pid: std::process::id(),
            start_time: crate::procfs::stat(std::process::id()).map_or(0, |s| s.start_time),
            deadline_unix: self.handover.deadline_unix.load(Ordering::SeqCst),
            connections: lock(&self.handover.connection_limit)
                .as_ref()
                .map_or(0, |l| u64::try_from(l.open()).unwrap_or(u64::MAX)),
            sessions: self
                .router
                .stats()
                .snapshot()
                .into_iter()
                .map(|((id, instance), s)| handover::HeldSessions {
                    id,
                    instance,
                    live: s.sessions,
                    started: s.sessions_total,
                })
                .collect(),
        }
    }

    /// The router, for the status page.
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// The supervisor, for the status page.
    pub fn supervisor(&self) -> &Supervisor {
        &self.supervisor
    }

    /// What the reaper loop has done since the daemon started, for `/metrics`.
    pub fn reaper_meter(&self) -> &crate::metrics::ReaperMeter {
        &self.reaper_meter
    }

    /// What the daemon says about itself.
    pub fn daemon_info(&self) -> DaemonInfo {
        self.info()
    }

    /// Queues a handover, refusing one while another is under way or a previous daemon still
    /// drains (a third daemon would not see the first one's sessions).
    fn order_upgrade(&self, order: UpgradeOrder) -> Result<(), PortError> {
        let refused = |message: String| {
            Err(PortError::new(
                ErrorKind::Conflict,
                "upgrade",
                "the daemon",
                message,
            ))
        };
        if self.handover.handed_over() {
            return refused("this daemon already handed over to a new one".into());
        }
        if let Some(previous) = handover::read_previous(&self.settings.state_dir) {
            return refused(format!(
                "the previous daemon (pid {}) still serves {} session(s) on {} connection(s) \
                 it held when it handed over, until they end or at most {}s from now; upgrade \
                 again once it has exited",
                previous.pid,
                previous.live_sessions(),
                previous.connections,
                previous.deadline_unix.saturating_sub(unix_now()),
            ));
        }
        if self.handover.upgrading.swap(true, Ordering::SeqCst) {
            return refused(
                "an upgrade of this daemon is already in progress; wait for it to finish".into(),
            );
        }
        self.handover.orders.try_send(order).map_err(|_| {
            self.handover.upgrading.store(false, Ordering::SeqCst);
            PortError::new(
                ErrorKind::Unavailable,
                "upgrade",
                "the daemon",
                "the daemon is stopping",
            )
        })
    }

    /// Carries out one request other than a workflow (see [`run_workflow`]).
    async fn dispatch(
        &self,
        request: Request,
        shutdown: &watch::Sender<bool>,
    ) -> Result<Reply, PortError> {
        fn json<T: Serialize>(value: T) -> Result<Reply, PortError> {
            Ok(Reply::Ok(
                serde_json::to_value(value).expect("results serialise to JSON"),
            ))
        }
        match request {
            Request::Hello { name, protocol } => {
                if let Some(protocol) = protocol
                    && protocol != crate::rpc::PROTOCOL
                {
                    return Ok(Reply::Mismatch {
                        protocol: crate::rpc::PROTOCOL,
                        pid: std::process::id(),
                    });
                }
                if name != self.settings.name {
                    return Err(PortError::new(
                        ErrorKind::Conflict,
                        "connect to",
                        "daemon",
                        HostError::NameMismatch {
                            state_dir: self.settings.state_dir.clone(),
                            serving: self.settings.name.to_string(),
                            asked: name.to_string(),
                        }
                        .to_string(),
                    ));
                }
                json(self.info())
            }
            Request::Run(_) | Request::Cancel => Err(PortError::new(
                ErrorKind::Invalid,
                "answer",
                "the request",
                "a workflow is run by `rpc_connection`, and a cancel only follows one",
            )),
            Request::Shutdown => {
                tracing::info!("shutdown requested over the socket");
                shutdown.send_replace(true);
                json(())
            }
            Request::Upgrade { binary } => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                self.order_upgrade(UpgradeOrder {
                    binary,
                    reply: Some(tx),
                })?;
                json(rx.await.map_err(|_| {
                    PortError::new(
                        ErrorKind::Unavailable,
                        "upgrade",
                        "the daemon",
                        "the daemon stopped before the upgrade finished",
                    )
                })??)
            }
        }
    }
}

/// The daemon's ports over its live state: its own engine's (reaper, canary driver) and those of
/// each workflow a command runs over the socket, which also carry the command's app settings and
/// a stop switch (the command went away: the workflow stops before its next port call, never in
/// the middle of one).
#[derive(Clone)]
pub struct LocalPorts {
    host: Arc<Host>,
    app: Option<Arc<crate::rpc::AppCommands>>,
    stop: Option<Arc<AtomicBool>>,
}

impl LocalPorts {
    /// The daemon's own ports, with the app settings it started with.
    pub fn new(host: Arc<Host>) -> Self {
        LocalPorts {
            host,
            app: None,
            stop: None,
        }
    }

    /// The ports of one workflow a command asked for: instances start with the command's app
    /// settings, and every port call fails once `stop` is set.
    fn for_workflow(host: Arc<Host>, app: crate::rpc::AppCommands, stop: Arc<AtomicBool>) -> Self {
        LocalPorts {
            host,
            app: Some(Arc::new(app)),
            stop: Some(stop),
        }
    }

    /// Refuses a port call of a workflow whose command went away.
    fn go(&self) -> Result<(), PortError> {
        match &self.stop {
            Some(stop) if stop.load(Ordering::SeqCst) => Err(PortError::new(
                ErrorKind::Unavailable,
                "continue",
                "the workflow",
                "the command that asked for it went away (interrupted or killed); it stopped \
                 between two steps and running the command again resumes",
            )),
            _ => Ok(()),
        }
    }

    /// The shell command of each instance, its health path and the build command.
    fn commands(&self) -> (&str, &str, Option<&str>) {
        match &self.app {
            Some(app) => (&app.command, &app.health_path, app.build.as_deref()),
            None => {
                let s = &self.host.settings;
                (&s.command, &s.health_path, s.build.as_deref())
            }
        }
    }

    /// Bundles these ports for an [`Engine`].
    pub fn ports(&self) -> Ports {
        let me = Arc::new(self.clone());
        Ports {
            compute: me.clone(),
            routing: me.clone(),
            state: me.clone(),
            images: me,
            clock: Arc::new(SystemClock),
        }
    }
}

#[async_trait]
impl Compute for LocalPorts {
    async fn create(&self, spec: &VersionSpec) -> Result<(), PortError> {
        self.go()?;
        let (command, health_path, _) = self.commands();
        self.host.create(spec, command, health_path).await
    }
    async fn scale(&self, id: &DeploymentId, desired: u32) -> Result<(), PortError> {
        self.go()?;
        self.host.scale(id, desired).await
    }
    async fn delete(&self, id: &DeploymentId) -> Result<(), PortError> {
        self.go()?;
        self.host.delete_compute(id).await
    }
    async fn observe(
        &self,
        ids: &[DeploymentId],
    ) -> Result<BTreeMap<DeploymentId, ComputeStatus>, PortError> {
        self.go()?;
        Ok(self.host.observe(ids))
    }
    async fn list(&self) -> Result<Vec<DeploymentId>, PortError> {
        self.go()?;
        Ok(self.host.supervisor.list())
    }
    async fn recent_logs(&self, id: &DeploymentId, lines: usize) -> Result<Vec<String>, PortError> {
        self.go()?;
        Ok(self.host.supervisor.recent_logs(id, lines))
    }
    async fn counters(
        &self,
        ids: &[DeploymentId],
    ) -> Result<BTreeMap<DeploymentId, flotilla_core::canary::Counters>, PortError> {
        self.go()?;
        let stats = self.host.router.stats();
        Ok(ids
            .iter()
            .map(|id| {
                let total = stats.total_where(|key| &key.0 == id);
                (id.clone(), crate::metrics::canary_counters(&total))
            })
            .collect())
    }
}

#[async_trait]
impl Routing for LocalPorts {
    async fn install_affinity(&self, id: &DeploymentId) -> Result<(), PortError> {
        self.go()?;
        self.host.install_affinity(id)
    }
    async fn retire_affinity(&self, id: &DeploymentId) -> Result<(), PortError> {
        self.go()?;
        self.host.retire_affinity(id)
    }
    async fn remove_affinity(&self, id: &DeploymentId) -> Result<(), PortError> {
        self.go()?;
        self.host.remove_affinity(id)
    }
    async fn set_default(&self, targets: &[WeightedTarget]) -> Result<(), PortError> {
        self.go()?;
        self.host.set_default(targets)
    }
    async fn snapshot(&self) -> Result<RoutingTable, PortError> {
        self.go()?;
        Ok(lock(&self.host.routing).clone())
    }
}

#[async_trait]
impl StateStore for LocalPorts {
    async fn list(&self) -> Result<Vec<VersionRecord>, PortError> {
        self.go()?;
        self.host
            .store
            .list_versions()
            .map_err(port_err("list", "versions"))
    }
    async fn get(&self, id: &DeploymentId) -> Result<Option<VersionRecord>, PortError> {
        self.go()?;
        self.host
            .store
            .get_version(id)
            .map_err(port_err("read record of", id.as_str()))
    }
    async fn put(&self, record: &VersionRecord) -> Result<(), PortError> {
        self.go()?;
        self.host
            .store
            .put_version(record)
            .map_err(port_err("write record of", record.version.id.as_str()))
    }
    async fn delete(&self, id: &DeploymentId) -> Result<(), PortError> {
        self.go()?;
        self.host
            .store
            .delete_version(id)
            .map_err(port_err("delete record of", id.as_str()))
    }
    async fn readiness(
        &self,
        ids: &[DeploymentId],
    ) -> Result<BTreeMap<DeploymentId, BTreeMap<InstanceId, Readiness>>, PortError> {
        self.go()?;
        self.host
            .store
            .readiness(ids)
            .map_err(port_err("read", "readiness"))
    }
    async fn acquire_lock(
        &self,
        owner: &str,
        now: Timestamp,
        ttl: Duration,
        force: bool,
    ) -> Result<LockOutcome, PortError> {
        self.go()?;
        self.host
            .store
            .acquire_lock(owner, now, ttl, force)
            .map_err(port_err("take", "deploy lock"))
    }
    async fn release_lock(&self, owner: &str) -> Result<(), PortError> {
        self.go()?;
        self.host
            .store
            .release_lock(owner)
            .map_err(port_err("release", "deploy lock"))
    }
    async fn lock_info(&self) -> Result<Option<LockInfo>, PortError> {
        self.go()?;
        self.host
            .store
            .lock_info()
            .map_err(port_err("read", "deploy lock"))
    }
}

#[async_trait]
impl ImageSource for LocalPorts {
    async fn prepare(
        &self,
        id: &DeploymentId,
        request: &ImageRequest,
        progress: &dyn Progress,
    ) -> Result<ImageRef, PortError> {
        self.go()?;
        let (_, _, build) = self.commands();
        self.host.prepare(id, request, build, progress).await
    }
    async fn discard(&self, id: &DeploymentId) -> Result<(), PortError> {
        self.go()?;
        self.host.discard(id).await
    }
}

/// The engine settings of the daemon's own engine (reaper, status page).
pub fn engine_settings(settings: &HostSettings) -> Settings {
    Settings {
        name: settings.name.clone(),
        policy: settings.reaper_policy,
        budget: RuleBudget::default(),
        health_timeout: settings.health_timeout,
        health_poll: Duration::from_millis(500),
        lock_ttl: REAPER_LOCK_TTL,
        lock_owner: format!("{DAEMON_LOCK_OWNER}{})", std::process::id()),
        local_holders: None,
    }
}

/// Releases a deploy lock a previous daemon took (for a reaper pass or a canary step) and never
/// released because it was killed: this daemon holds `daemon.lock`, so no other daemon runs, and
/// its lock would otherwise block the reaper and the canary until it lapses.
async fn release_previous_daemon_lock(ports: &LocalPorts, settings: &Settings) {
    let Ok(Some(lock)) = ports.lock_info().await else {
        return;
    };
    if lock.owner != settings.lock_owner && lock.owner.starts_with(DAEMON_LOCK_OWNER) {
        tracing::info!(owner = %lock.owner, "releasing the deploy lock of a daemon that no longer runs");
        if let Err(e) = ports.release_lock(&lock.owner).await {
            tracing::warn!(error = %e, "could not release a previous daemon's deploy lock; it lapses by itself");
        }
    }
}

/// How a daemon's deploy lock owner begins.
const DAEMON_LOCK_OWNER: &str = "flotilla host daemon (pid ";

struct LogProgress;

impl Progress for LogProgress {
    fn event(&self, event: Event) {
        match event {
            Event::Reaped { action, dry_run } => tracing::info!(?action, dry_run, "reaper"),
            other => tracing::debug!(event = ?other, "reaper"),
        }
    }
}

/// What happens to the app's instances when the daemon exits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnExit {
    /// Stop them all (`flotilla host stop`); the next daemon starts them again.
    StopInstances,
    /// Leave them running, recorded, for the next daemon to adopt without a restart.
    LeaveRunning,
}

/// Runs the daemon for `settings` until `shutdown` completes or a client asks it to stop, then
/// stops every instance.
pub async fn serve(
    settings: &HostSettings,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), HostError> {
    serve_until(settings, async {
        shutdown.await;
        OnExit::StopInstances
    })
    .await
}

/// Runs the daemon for `settings` until `shutdown` completes (and says what becomes of the
/// instances) or a client asks it to stop (which stops them).
pub async fn serve_until(
    settings: &HostSettings,
    shutdown: impl Future<Output = OnExit> + Send,
) -> Result<(), HostError> {
    let settings = settings.resolved().map_err(HostError::io(
        "resolve the app directory",
        &settings.app_dir,
    ))?;
    // Before anything starts: a status page open to other machines is refused.
    let admin_token = crate::admin::AdminToken::for_settings(&settings)?;
    // The executable a handover starts by default, resolved now: after a package upgrade
    // replaced it, /proc/self/exe names a deleted file, while this path names the new one.
    let exe = std::env::current_exe().ok();
    // Sockets handed over by a previous daemon (see `crate::handover`): used instead of binding.
    let mut inherited = handover::Inherited::from_env().map_err(HostError::io(
        "take the inherited sockets",
        handover::LISTEN_FDS_VAR,
    ))?;
    let state_dir = settings.state_dir.clone();
    crate::private::private_dir(&state_dir)
        .map_err(HostError::io("create state directory", &state_dir))?;
    let lock_path = settings.daemon_lock_path();
    let daemon_lock = take_daemon_lock(&lock_path, &state_dir, inherited.is_some()).await?;

    let connection_limit = connection_limit(&settings);
    let store = Arc::new(Store::open(&settings.database_path(), &settings.name)?);
    let router = Arc::new(
        Router::new(&settings.affinity_header, &settings.affinity_query)
            .map_err(|e| HostError::Protocol(e.to_string()))?
            .with_stale(&settings.stale)
            .map_err(|e| HostError::Protocol(e.to_string()))?,
    );
    let routing = store.load_routing()?;
    let tombstones = store.tombstones()?;
    let (upgrade_tx, mut upgrade_rx) = tokio::sync::mpsc::channel::<UpgradeOrder>(4);
    let host = Arc::new_cyclic(|weak: &std::sync::Weak<Host>| {
        let weak = weak.clone();
        let on_change: crate::supervisor::ChangeHook = Arc::new(move || {
            if let Some(host) = weak.upgrade() {
                host.refresh();
            }
        });
        Host {
            supervisor: Supervisor::new(
                settings.name.clone(),
                store.clone(),
                settings.logs_dir(),
                settings.stop_timeout,
                on_change,
            ),
            settings: settings.clone(),
            store: store.clone(),
            router: router.clone(),
            routing: Mutex::new(routing),
            tombstones: Mutex::new(tombstones),
            trackers: Mutex::new(HashMap::new()),
            clock: SystemClock,
            reaper_meter: crate::metrics::ReaperMeter::default(),
            front_door: watch::channel(crate::front_door::member::MembershipState::Connecting).0,
            handover: HandoverState::new(upgrade_tx, exe),
        }
    });
    host.refresh();

    let mut inherited_router = inherited
        .as_mut()
        .map(|i| i.take(handover::ROUTER))
        .unwrap_or_default();
    let mut inherited_https = inherited
        .as_mut()
        .map(|i| i.take(handover::HTTPS))
        .unwrap_or_default();
    let (listeners, front_door) = match &settings.front_door {
        None if inherited_router.is_empty() => (
            router_listeners(settings.listen, router_workers())
                .map_err(|source| HostError::bind(settings.listen, "router", source))?,
            None,
        ),
        None => {
            for l in &mut inherited_router {
                l.set_nonblocking(true)
                    .map_err(|source| HostError::bind(settings.listen, "router", source))?;
            }
            (inherited_router, None)
        }
        Some(member) => {
            // A front door that refuses this app (a host name another app holds) is a
            // configuration error worth stopping for; one not running yet is not.
            let membership = front_door_membership(&settings, member);
            crate::front_door::member::check(&membership)
                .await
                .map_err(|reason| {
                    HostError::Protocol(format!(
                        "the front door on {} refused this app: {reason}",
                        member.socket.display()
                    ))
                })?;
            let plain = handed_over_workers(router_workers());
            let tls = if settings.https.is_some() {
                handed_over_workers(router_workers())
            } else {
                (Vec::new(), Vec::new())
            };
            (Vec::new(), Some((member.clone(), plain, tls)))
        }
    };
    // HTTPS: inherited, bound here, or (behind the front door) handed over like plain HTTP.
    let https_listeners = match (&settings.https, &settings.front_door) {
        (Some(https), None) if inherited_https.is_empty() => {
            https_listeners(https.listen, router_workers())?
        }
        (Some(https), None) => {
            for l in &mut inherited_https {
                l.set_nonblocking(true)
                    .map_err(|source| HostError::bind(https.listen, "HTTPS router", source))?;
            }
            inherited_https
        }
        _ => Vec::new(),
    };
    let admin = match inherited
        .as_mut()
        .and_then(|i| i.take(handover::ADMIN).pop())
    {
        Some(admin) => admin,
        None => std::net::TcpListener::bind(settings.admin_listen)
            .map_err(|source| HostError::bind(settings.admin_listen, "status page", source))?,
    };
    admin
        .set_nonblocking(true)
        .map_err(|source| HostError::bind(settings.admin_listen, "status page", source))?;
    if let Some(left) = inherited
        .as_ref()
        .map(|i| i.left())
        .filter(|l| !l.is_empty())
    {
        tracing::warn!(
            ?left,
            "inherited listening sockets of kinds this daemon does not serve; they stay unused"
        );
    }
    // Copies of the listening sockets (close-on-exec) for a handover to a successor: every
    // kind of listener adds its own, by name, and takes them back from `inherited` above.
    let mut handover_sockets = HandoverSockets::default();
    for l in &listeners {
        handover_sockets
            .add(handover::ROUTER, l)
            .map_err(HostError::io("copy the listening sockets", "router"))?;
    }
    for l in &https_listeners {
        handover_sockets
            .add(handover::HTTPS, l)
            .map_err(HostError::io("copy the listening sockets", "HTTPS router"))?;
    }
    handover_sockets
        .add(handover::ADMIN, &admin)
        .map_err(HostError::io("copy the listening sockets", "status page"))?;
    let admin =
        TcpListener::from_std(admin).map_err(HostError::io("listen on", "the status page"))?;
    let admin_addr = admin.local_addr().unwrap_or(settings.admin_listen);

    let restored = host.supervisor.restore().await?;
    host.refresh();
    if inherited.is_some() {
        // Route only once the adopted instances answer their first health checks, so that the
        // requests this daemon accepts from the shared sockets find them healthy.
        wait_healthy(&host, Duration::from_secs(5)).await;
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let engine = Arc::new(Engine::new(
        LocalPorts::new(host.clone()).ports(),
        engine_settings(&settings),
    ));
    release_previous_daemon_lock(&LocalPorts::new(host.clone()), &engine_settings(&settings)).await;

    let proxy_config = ProxyConfig {
        deployment_header: ProxyConfig::header_name(&settings.affinity_header)
            .map_err(|e| HostError::Protocol(e.to_string()))?,
        inject_client: settings.inject_client,
        client_query_param: Some(settings.affinity_query.clone()),
        shutdown_deadline: settings.stop_timeout.min(MAX_ROUTER_DRAIN),
        // One limit for every worker: each worker's config is a clone sharing it.
        connection_limit: connection_limit.clone(),
        first_byte_timeout: settings.first_byte_timeout,
        access_log: match &settings.access_log {
            None => None,
            Some(log) => Some(Arc::new(
                crate::access_log::JsonLines::start(settings.name.as_ref(), log)
                    .map_err(HostError::io("open the access log", &log.path))?,
            ) as Arc<dyn flotilla_proxy::AccessLog>),
        },
        ..ProxyConfig::default()
    };
    let mut workers: Vec<WorkerIncoming> = listeners
        .into_iter()
        .map(WorkerIncoming::Listener)
        .collect();
    let mut tls_workers: Vec<WorkerIncoming> = https_listeners
        .into_iter()
        .map(WorkerIncoming::Listener)
        .collect();
    let front_door_task = front_door.map(|(member, (plain, plain_senders), (tls, tls_senders))| {
        workers.extend(plain);
        tls_workers.extend(tls);
        let membership = front_door_membership(&settings, &member);
        let (host, stop) = (host.clone(), stop_rx.clone());
        tokio::spawn(async move {
            // Connections the front door held while this app was away (or while the daemon
            // handing over to this one drained) are handed over as soon as it registers:
            // register once they can be served.
            wait_versions_healthy(&host, FRONT_DOOR_HEALTH_WAIT).await;
            run_front_door_member(
                membership,
                plain_senders,
                tls_senders,
                host.front_door.clone(),
                stop,
            )
            .await;
        })
    });
    let (plain_route, https_task) = match https_router(&settings, tls_workers)? {
        Some(https) => {
            let (route, task) =
                https.start(&proxy_config, router.clone(), host.clone(), &stop_rx)?;
            (route, Some(task))
        }
        None => (
            crate::tls::PlainRoute {
                router: router.clone(),
                https: None,
            },
            None,
        ),
    };
    *lock(&host.handover.connection_limit) = Some(connection_limit.clone());
    // How the router drains when it stops: as configured, unless a handover chose otherwise.
    *lock(&host.handover.drain_plan) = DrainPlan {
        linger: Duration::ZERO,
        deadline: proxy_config.shutdown_deadline,
    };
    let proxy_task = {
        let rx = stop_rx.clone();
        let route = Arc::new(plain_route);
        let host = host.clone();
        tokio::spawn(async move {
            let report = run_router_workers(workers, proxy_config, route, host, rx).await;
            if report.cut == 0 {
                tracing::info!("router drained every connection");
            } else {
                tracing::warn!(cut = report.cut, "router shutdown deadline cut connections");
            }
        })
    };
    let admin_task = tokio::spawn(crate::admin::serve(
        admin,
        host.clone(),
        engine.clone(),
        admin_token,
        stop_rx.clone(),
    ));

    // The socket is bound last: a client (or the daemon handing over) that gets an answer knows
    // that this daemon routes.
    let socket_path = settings.socket_path();
    match std::fs::remove_file(&socket_path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(HostError::io("remove stale socket", &socket_path)(e)),
    }
    let unix =
        UnixListener::bind(&socket_path).map_err(HostError::io("listen on", &socket_path))?;
    std::fs::set_permissions(&socket_path, std::fs::Permissions::from_mode(0o600))
        .map_err(HostError::io("restrict permissions of", &socket_path))?;
    host.handover.note_socket(&socket_path);
    let rpc_task = tokio::spawn(rpc_server(
        unix,
        host.clone(),
        stop_tx.clone(),
        stop_rx.clone(),
    ));
    match &settings.front_door {
        None => tracing::info!(
            name = %settings.name, pid = std::process::id(), listen = %settings.listen,
            admin = %admin_addr, socket = %socket_path.display(), restored = restored.len(),
            inherited = inherited.is_some(),
            "flotilla host daemon serving"
        ),
        Some(member) => tracing::info!(
            name = %settings.name, pid = std::process::id(), hosts = ?member.hosts,
            front_door = %member.socket.display(), admin = %admin_addr,
            socket = %socket_path.display(), restored = restored.len(),
            inherited = inherited.is_some(),
            "flotilla host daemon serving behind the front door"
        ),
    }
    // Under systemd (`Type=notify`): ready, and, after a handover, the service's main process.
    let notify = if inherited.is_some() {
        format!("MAINPID={}\nREADY=1", std::process::id())
    } else {
        "READY=1".to_owned()
    };
    if let Err(error) = handover::sd_notify(&notify) {
        tracing::warn!(%error, "could not notify systemd that the daemon is ready");
    }

    let drain_task = {
        let tick = tokio::time::interval(host.settings.drain_poll);
        let h = host.clone();
        spawn_writer_loop(host.clone(), tick, stop_rx.clone(), move || {
            let host = h.clone();
            Box::pin(async move {
                if let Err(e) = host.observe_drain() {
                    tracing::error!(error = %e, "drain observation failed");
                }
            })
        })
    };
    let reaper_task = {
        let engine = engine.clone();
        let interval = settings.reaper_interval;
        let tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        let h = host.clone();
        // What draining versions waited for at the last pass: logged only when it changes, so
        // that a version draining for hours does not log a line every pass.
        let waiting = Arc::new(std::sync::Mutex::new(Vec::new()));
        spawn_writer_loop(host.clone(), tick, stop_rx.clone(), move || {
            let (engine, host, waiting) = (engine.clone(), h.clone(), waiting.clone());
            Box::pin(async move {
                match engine.reap(false, &LogProgress).await {
                    Ok(report) => {
                        host.reaper_meter.record(&report);
                        for (action, error) in &report.failed {
                            tracing::warn!(?action, %error, "reaper action failed; the next pass retries it");
                        }
                        let mut waiting = waiting
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        if report.skipped_locked.is_none() && report.waiting != *waiting {
                            for w in &report.waiting {
                                tracing::info!(id = %w.id, reason = ?w.reason, retire_by = %w.retire_by, "draining version not retired yet");
                            }
                            *waiting = report.waiting;
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "reaper pass failed"),
                }
            })
        })
    };
    // The canary driver: steps, judges, promotes or rolls back a running canary, so that it goes
    // on when the CLI that started it exits; its state is in the store, so a restarted daemon
    // resumes it.
    let canary_task = {
        let engine = engine.clone();
        let tick = tokio::time::interval(settings.canary_interval);
        spawn_writer_loop(host.clone(), tick, stop_rx.clone(), move || {
            let engine = engine.clone();
            Box::pin(async move {
                match engine.canary_tick(&LogProgress).await {
                    Ok(
                        flotilla_engine::workflows::CanaryTick::Idle
                        | flotilla_engine::workflows::CanaryTick::Locked
                        | flotilla_engine::workflows::CanaryTick::Waiting { .. },
                    ) => {}
                    Ok(done) => tracing::info!(?done, "canary"),
                    Err(e) => {
                        tracing::error!(error = %e, "canary tick failed; the next tick retries it")
                    }
                }
            })
        })
    };
    // Autoscaling of each version's instances, when `[host] max_instances` turns it on.
    let _autoscale_task = settings.autoscale.map(|policy| {
        let tick = tokio::time::interval(settings.drain_poll);
        let h = host.clone();
        let autoscaler = Arc::new(tokio::sync::Mutex::new(crate::autoscale::Autoscaler::new(
            policy,
        )));
        spawn_writer_loop(host.clone(), tick, stop_rx.clone(), move || {
            let (host, autoscaler) = (h.clone(), autoscaler.clone());
            Box::pin(async move {
                let versions = match host.store.list_versions() {
                    Ok(records) => records
                        .into_iter()
                        .map(|r| (r.version.id, r.version.state))
                        .collect::<Vec<_>>(),
                    Err(error) => {
                        tracing::error!(%error, "autoscaling could not read the versions");
                        return;
                    }
                };
                let previous = handover::read_previous(&host.settings.state_dir);
                autoscaler.lock().await.tick(
                    &versions,
                    &host.supervisor,
                    &host.router,
                    &|id, instance| host.routed_sessions(previous.as_ref(), id, instance),
                    host.clock.now(),
                );
            })
        })
    });
    let _signal_task = tokio::spawn(upgrade_on_sigusr2(host.clone()));

    let mut daemon_lock = Some(daemon_lock);
    tokio::pin!(shutdown);
    let on_exit = {
        let mut rx = stop_rx.clone();
        loop {
            tokio::select! {
                on_exit = &mut shutdown => break Some(on_exit),
                _ = crate::supervisor::stop_requested(&mut rx) => break Some(OnExit::StopInstances),
                Some(order) = upgrade_rx.recv() => {
                    let started = std::time::Instant::now();
                    let binary = order.binary.clone();
                    match hand_over(&host, binary, &handover_sockets, &mut daemon_lock).await {
                        Ok(successor) => {
                            let report = UpgradeReport {
                                old_pid: std::process::id(),
                                new_pid: successor.pid,
                                binary: successor.binary,
                                ready_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                                draining_connections: u64::try_from(connection_limit.open()).unwrap_or(u64::MAX),
                                draining_sessions: router.stats().snapshot().iter().map(|(_, s)| s.sessions).sum(),
                                deadline_seconds: settings.upgrade_deadline.as_secs(),
                                log: settings.daemon_log_path(),
                            };
                            tracing::info!(?report, "handed over to the new daemon; draining what this one holds");
                            if let Some(reply) = order.reply {
                                let _ = reply.send(Ok(report));
                            }
                            break None;
                        }
                        Err(error) => {
                            tracing::error!(%error, "the upgrade failed; this daemon serves on as before");
                            if let Some(reply) = order.reply {
                                let _ = reply.send(Err(error));
                            }
                        }
                    }
                }
            }
        }
    };
    drop(handover_sockets);
    match on_exit {
        Some(on_exit) => {
            tracing::info!(?on_exit, "shutting down: draining the router");
            stop_tx.send_replace(true);
            let _ = rpc_task.await;
            let _ = tokio::fs::remove_file(&socket_path).await;
            let _ = drain_task.await;
            let _ = reaper_task.await;
            let _ = canary_task.await;
            if let Some(task) = front_door_task {
                let _ = task.await;
            }
            let _ = proxy_task.await;
            if let Some(task) = https_task {
                let _ = task.await;
            }
            let _ = admin_task.await;
            match on_exit {
                OnExit::StopInstances => host.supervisor.shutdown().await,
                OnExit::LeaveRunning => host.supervisor.release(),
            }
        }
        None => {
            // Handed over: the successor owns the state directory, the socket path and the
            // instances. Serve what this daemon holds until it ends or the deadline passes,
            // telling the successor what it still holds every second.
            *lock(&host.handover.drain_plan) = DrainPlan {
                linger: handover::LINGER,
                deadline: settings.upgrade_deadline,
            };
            // A moment for the socket server to answer what queued during the handover
            // (`HANDED_OVER`, which the clients send again to the successor).
            tokio::time::sleep(Duration::from_millis(200)).await;
            stop_tx.send_replace(true);
            let report = || host.held_sessions();
            tokio::pin!(proxy_task);
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = &mut proxy_task => break,
                    // Asked to stop while draining (SIGTERM, Ctrl-C): what is still open is cut
                    // now rather than at the deadline; the instances stay with the successor.
                    _ = &mut shutdown => {
                        tracing::warn!(
                            connections = connection_limit.open(),
                            "asked to stop while draining after a handover: cutting what is still open"
                        );
                        break;
                    }
                    _ = tick.tick() => {
                        if let Err(error) = handover::write_previous(&state_dir, &report()) {
                            tracing::warn!(%error, "could not write the sessions this daemon still serves");
                        }
                    }
                }
            }
            // TLS connections drain by the same plan (their own workers).
            if let Some(task) = https_task {
                let _ = task.await;
            }
            let _ = std::fs::remove_file(handover::previous_daemon_path(&state_dir));
            if let Some(task) = front_door_task {
                let _ = task.await;
            }
            let _ = rpc_task.await;
            let _ = drain_task.await;
            let _ = reaper_task.await;
            let _ = canary_task.await;
            let _ = admin_task.await;
        }
    }
    drop(daemon_lock);
    tracing::info!("flotilla host daemon stopped");
    Ok(())
}

/// A background writer of the state directory (drain observation, reaper, canary driver): runs
/// `work` on every `tick` until the daemon stops, each run under the handover's writer lock, and
/// ends once the daemon has handed over (the new daemon writes from then on).
fn spawn_writer_loop(
    host: Arc<Host>,
    mut tick: tokio::time::Interval,
    mut stop: tokio::sync::watch::Receiver<bool>,
    mut work: impl FnMut() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
    + Send
    + 'static,
) -> tokio::task::JoinHandle<()> {
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let _writing = host.handover.writers.read().await;
                    if host.handover.handed_over() {
                        break;
                    }
                    work().await;
                }
                _ = crate::supervisor::stop_requested(&mut stop) => break,
            }
        }
    })
}

/// Takes the state directory's lock. A daemon started by a handover waits for the daemon handing
/// over to release it (at most [`handover::LOCK_TIMEOUT`]); any other refuses at once when it is
/// held.
async fn take_daemon_lock(
    lock_path: &Path,
    state_dir: &Path,
    handed_over: bool,
) -> Result<Flock<std::fs::File>, HostError> {
    let deadline = tokio::time::Instant::now() + handover::LOCK_TIMEOUT;
    let mut lock_file = crate::private::private_append(lock_path)
        .map_err(HostError::io("open daemon lock", lock_path))?;
    let daemon_lock = loop {
        match Flock::lock(lock_file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => break lock,
            Err((file, _)) if handed_over && tokio::time::Instant::now() < deadline => {
                lock_file = file;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(_) => {
                return Err(HostError::AlreadyRunning {
                    state_dir: state_dir.to_path_buf(),
                });
            }
        }
    };
    // The lock file names the daemon holding it, for operators and tests.
    {
        use std::io::Write;
        let mut file: &std::fs::File = &daemon_lock;
        file.set_len(0)
            .and_then(|()| writeln!(file, "{}", std::process::id()))
            .map_err(HostError::io("write daemon lock", lock_path))?;
    }
    Ok(daemon_lock)
}

/// Raises the descriptor limit and derives the router's connection limit from it, saying so once
/// in the log.
fn connection_limit(settings: &HostSettings) -> ConnectionLimit {
    let (fd_limit, raised_from) = match crate::fdlimit::raise_nofile() {
        Ok(raised) => {
            if let Some(error) = &raised.error {
                tracing::warn!(
                    %error, soft = raised.before, hard = raised.hard,
                    "could not raise the file descriptor limit to the hard limit; keeping the soft one"
                );
            }
            (raised.after, raised.before)
        }
        Err(error) => {
            // Without a limit to go by, assume the usual default soft limit.
            tracing::warn!(%error, "could not read the file descriptor limit; assuming 1024");
            (1024, 1024)
        }
    };
    let budget = crate::fdlimit::connection_budget(fd_limit, settings.max_connections);
    if let Some(wanted) = budget.clamped_from {
        tracing::warn!(
            configured = wanted,
            max_connections = budget.max_connections,
            fd_limit,
            "the configured router connection limit does not fit in the file descriptor limit \
             (2 per connection, plus a reserve); lowered"
        );
    }
    tracing::info!(
        fd_limit,
        raised_from,
        reserve = budget.reserve,
        max_connections = budget.max_connections,
        overflow = budget.overflow,
        "router connection limit (shared by every worker); connections beyond it get a 503"
    );
    ConnectionLimit::with_overflow(budget.max_connections, budget.overflow)
}

/// Router worker threads: one per CPU, at most 8.
fn router_workers() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8)
}

/// `n` listeners on `addr` sharing the port through `SO_REUSEPORT`, so the kernel spreads new
/// connections over the router workers. A port of 0 is resolved by the first bind.
///
/// `SO_REUSEPORT` would also let this daemon join a port that another process bound with it
/// (another app's daemon), and the kernel would split traffic between two unrelated apps. So a
/// probe socket without `SO_REUSEPORT` is bound first: it fails with `AddrInUse` whenever anything
/// listens on the port, and is closed before the workers' sockets are bound.
fn router_listeners(addr: SocketAddr, n: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    if addr.port() != 0 {
        let probe = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        probe.set_reuseaddr(true)?;
        probe.bind(addr)?;
        drop(probe);
    }
    let mut out: Vec<std::net::TcpListener> = Vec::with_capacity(n);
    let mut bind_to = addr;
    for _ in 0..n {
        let socket = if bind_to.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.set_reuseport(true)?;
        socket.bind(bind_to)?;
        let listener = socket.listen(1024)?.into_std()?;
        bind_to = listener.local_addr()?;
        out.push(listener);
    }
    Ok(out)
}

/// Where one router worker's connections come from.
enum WorkerIncoming {
    /// Its own `SO_REUSEPORT` listener.
    Listener(std::net::TcpListener),
    /// Connections the front door handed to this daemon.
    Handed(flotilla_proxy::HandedOver),
}

/// This daemon's registration with the front door.
fn front_door_membership(
    settings: &HostSettings,
    member: &crate::settings::FrontDoorMember,
) -> crate::front_door::member::Membership {
    crate::front_door::member::Membership {
        socket: member.socket.clone(),
        app: settings.name.to_string(),
        hosts: member.hosts.clone(),
        doors: if settings.https.is_some() {
            vec![
                crate::front_door::wire::Door::Http,
                crate::front_door::wire::Door::Https,
            ]
        } else {
            vec![crate::front_door::wire::Door::Http]
        },
    }
}

/// `n` router workers fed by the front door: their incoming channels, and the senders a
/// distributor spreads handed-over connections over.
fn handed_over_workers(
    n: usize,
) -> (
    Vec<WorkerIncoming>,
    Vec<tokio::sync::mpsc::UnboundedSender<flotilla_proxy::HandedConnection>>,
) {
    (0..n)
        .map(|_| {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            (WorkerIncoming::Handed(flotilla_proxy::HandedOver(rx)), tx)
        })
        .unzip()
}

/// Keeps this daemon registered with the front door and spreads the connections it hands over
/// across the router workers, in turn.
async fn run_front_door_member(
    membership: crate::front_door::member::Membership,
    plain: Vec<tokio::sync::mpsc::UnboundedSender<flotilla_proxy::HandedConnection>>,
    tls: Vec<tokio::sync::mpsc::UnboundedSender<flotilla_proxy::HandedConnection>>,
    state: watch::Sender<crate::front_door::member::MembershipState>,
    stop: watch::Receiver<bool>,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let register = tokio::spawn(crate::front_door::member::run(membership, tx, state, stop));
    let mut next = 0usize;
    while let Some(handed) = rx.recv().await {
        let crate::front_door::member::Handed {
            door,
            stream,
            peer,
            local,
        } = handed;
        // The front door sends TLS only to a daemon that registered for it.
        let workers = match door {
            crate::front_door::wire::Door::Http => &plain,
            crate::front_door::wire::Door::Https => &tls,
        };
        if workers.is_empty() {
            continue;
        }
        let _ = workers[next % workers.len()].send((stream, peer, local));
        next = next.wrapping_add(1);
    }
    let _ = register.await;
}

/// HTTPS on the router (`[host] https_listen`): its listeners, bound at start beside the plain
/// ones, and its certificates. Kept apart from the plain listeners so that handing listeners
/// over to another daemon can take each by name.
struct HttpsRouter {
    listeners: Vec<WorkerIncoming>,
    port: u16,
    certs: Arc<crate::tls::CertStore>,
    challenges: Arc<crate::tls::HttpChallenges>,
    /// ACME, with the stored certificate it loaded (if any); `None` with certificate files.
    acme: Option<(crate::acme::Acme, Option<crate::tls::CertInfo>)>,
}

/// Binds the HTTPS listeners and loads the certificates: files (refusing to start if they are
/// unusable), or the stored ACME certificate (starting without one if there is none: ACME
/// obtains it in the background).
fn https_router(
    settings: &HostSettings,
    listeners: Vec<WorkerIncoming>,
) -> Result<Option<HttpsRouter>, HostError> {
    use crate::settings::CertificateSource;
    let Some(https) = &settings.https else {
        return Ok(None);
    };
    let certs = Arc::new(crate::tls::CertStore::new());
    let challenges = Arc::new(crate::tls::HttpChallenges::default());
    let acme = match &https.certificates {
        CertificateSource::Files { certificate, key } => {
            let key = crate::tls::load_files(certificate, key)?;
            certs.set_fallback(Arc::new(key));
            None
        }
        CertificateSource::Acme(acme) => {
            let acme = crate::acme::Acme::new(
                acme.clone(),
                settings.acme_dir(),
                certs.clone(),
                challenges.clone(),
            );
            let stored = acme.load_stored();
            Some((acme, stored))
        }
    };
    // The port redirects name: the one bound (a port of 0 is resolved by binding), else, behind
    // the front door, `https_listen` as configured.
    let port = listeners
        .iter()
        .find_map(|l| match l {
            WorkerIncoming::Listener(l) => l.local_addr().ok(),
            WorkerIncoming::Handed(_) => None,
        })
        .map_or(https.listen.port(), |a| a.port());
    Ok(Some(HttpsRouter {
        listeners,
        port,
        certs,
        challenges,
        acme,
    }))
}

/// The HTTPS listeners on `addr`, as [`router_listeners`] binds the plain ones.
fn https_listeners(addr: SocketAddr, n: usize) -> Result<Vec<std::net::TcpListener>, HostError> {
    router_listeners(addr, n).map_err(|source| HostError::bind(addr, "HTTPS router", source))
}

impl HttpsRouter {
    /// Starts the HTTPS workers and ACME; returns the plain listener's route (redirects and
    /// HTTP-01 answers) and the task that ends when HTTPS has drained.
    fn start(
        self,
        plain: &ProxyConfig,
        router: Arc<Router>,
        host: Arc<Host>,
        stop: &watch::Receiver<bool>,
    ) -> Result<(crate::tls::PlainRoute, tokio::task::JoinHandle<()>), HostError> {
        let tls = flotilla_proxy::tls::server_config(self.certs.clone())
            .map_err(|e| HostError::Protocol(format!("TLS configuration: {e}")))?;
        let config = ProxyConfig {
            tls: Some(Arc::new(tls)),
            ..plain.clone()
        };
        if let Some((acme, stored)) = self.acme {
            tokio::spawn(acme.run(stored, stop.clone()));
        }
        let route = crate::tls::PlainRoute {
            router: router.clone(),
            https: Some(crate::tls::Https {
                certs: self.certs,
                challenges: self.challenges,
                port: self.port,
            }),
        };
        let rx = stop.clone();
        let listeners = self.listeners;
        let task = tokio::spawn(async move {
            let report = run_router_workers(listeners, config, router, host, rx).await;
            if report.cut == 0 {
                tracing::info!("HTTPS router drained every connection");
            } else {
                tracing::warn!(
                    cut = report.cut,
                    "HTTPS router shutdown deadline cut connections"
                );
            }
        });
        Ok((route, task))
    }
}

/// What the router workers' shutdown cut, summed.
struct RouterReport {
    cut: usize,
}

/// Runs the proxy on each listener in its own thread with a single-threaded runtime, the way
/// nginx runs one event loop per worker: a request, its upstream connection and its response stay
/// on one thread, with no cross-thread wake-ups on the hot path. They share the router (an
/// `ArcSwap` snapshot and atomic counters), so routing and session accounting are the same.
async fn run_router_workers<R: flotilla_proxy::Route>(
    listeners: Vec<WorkerIncoming>,
    config: ProxyConfig,
    router: Arc<R>,
    host: Arc<Host>,
    stop: watch::Receiver<bool>,
) -> RouterReport {
    let mut done = Vec::new();
    for (n, listener) in listeners.into_iter().enumerate() {
        let (tx, rx) = tokio::sync::oneshot::channel::<usize>();
        let (config, router, mut stop) = (config.clone(), router.clone(), stop.clone());
        let host = host.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("flotilla-router-{n}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start a router worker");
                        return;
                    }
                };
                let cut = runtime.block_on(async move {
                    let stopped = async move {
                        crate::supervisor::stop_requested(&mut stop).await;
                        // A handover chose a longer drain than a stop's before stopping.
                        *lock(&host.handover.drain_plan)
                    };
                    let report = match listener {
                        WorkerIncoming::Listener(listener) => {
                            let listener = match TcpListener::from_std(listener) {
                                Ok(l) => l,
                                Err(e) => {
                                    tracing::error!(error = %e, "cannot use the router listener");
                                    return 0;
                                }
                            };
                            flotilla_proxy::serve_handing_over(listener, config, router, stopped)
                                .await
                        }
                        WorkerIncoming::Handed(handed) => {
                            flotilla_proxy::serve_handing_over(handed, config, router, stopped)
                                .await
                        }
                    };
                    report.cut()
                });
                let _ = tx.send(cut);
            });
        match spawned {
            Ok(_) => done.push(rx),
            Err(e) => tracing::error!(error = %e, "cannot start a router worker thread"),
        }
    }
    let mut cut = 0;
    for rx in done {
        cut += rx.await.unwrap_or(0);
    }
    RouterReport { cut }
}

async fn rpc_server(
    mut listener: UnixListener,
    host: Arc<Host>,
    stop_tx: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) {
    let mut accept_errors = flotilla_proxy::WarnLimiter::new(Duration::from_secs(5));
    let mut paused = host.handover.rpc_paused.subscribe();
    loop {
        // Paused during a handover: connections queue in the socket's backlog meanwhile.
        if *paused.borrow_and_update() {
            tokio::select! {
                _ = paused.changed() => continue,
                _ = crate::supervisor::stop_requested(&mut stop) => break,
            }
        }
        tokio::select! {
            _ = paused.changed() => continue,
            _ = host.handover.rebind.notified() => {
                if let Some(rebound) = rebind_socket(&host.settings.socket_path(), &host.handover) {
                    listener = rebound;
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let host = host.clone();
                    let stop_tx = stop_tx.clone();
                    tokio::spawn(async move {
                        if let Err(e) = rpc_connection(stream, host, stop_tx).await {
                            tracing::debug!(error = %e, "socket connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    // Out of descriptors, this fails on every try: one line every few seconds.
                    if let Some(suppressed) = accept_errors.hit(std::time::Instant::now()) {
                        tracing::warn!(error = %e, suppressed, "accept on the socket failed; retrying");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = crate::supervisor::stop_requested(&mut stop) => break,
        }
    }
}

/// The listening sockets a handover passes on, each with its kind, as copies (close-on-exec, so
/// no app process inherits them).
#[derive(Default)]
struct HandoverSockets {
    sockets: Vec<(&'static str, std::net::TcpListener)>,
}

impl HandoverSockets {
    /// Adds a copy of `listener`, of `kind` (the name the successor takes it by).
    fn add(&mut self, kind: &'static str, listener: &std::net::TcpListener) -> std::io::Result<()> {
        self.sockets.push((kind, listener.try_clone()?));
        Ok(())
    }
}

/// Seconds since the epoch.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A new daemon that routes.
struct Successor {
    pid: u32,
    binary: PathBuf,
}

/// SIGUSR2 (systemd's `ExecReload=`) asks for a handover to this daemon's own executable.
async fn upgrade_on_sigusr2(host: Arc<Host>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut usr2) = signal(SignalKind::user_defined2()) else {
        tracing::warn!("cannot listen for SIGUSR2: upgrades only through `flotilla host upgrade`");
        return;
    };
    while usr2.recv().await.is_some() {
        tracing::info!("SIGUSR2: handing over to a new daemon started from this executable");
        if let Err(error) = host.order_upgrade(UpgradeOrder {
            binary: None,
            reply: None,
        }) {
            tracing::warn!(%error, "SIGUSR2: upgrade refused");
        }
    }
}

/// Waits until every instance is healthy, at most `limit`. (Not only the running ones: an
/// adopted instance counts as running only once its monitor has started, a moment after
/// `restore` returns, and routing before then would answer 503.)
/// Waits until every version with instances has a healthy one (an adopted instance counts
/// once its first health check passed, whether or not its process was seen running yet), or
/// `limit` passed; then says which have none.
async fn wait_versions_healthy(host: &Host, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let mut healthy: BTreeMap<DeploymentId, bool> = BTreeMap::new();
        for view in host.supervisor.instances() {
            *healthy.entry(view.id).or_default() |= view.state.healthy();
        }
        let waiting: Vec<DeploymentId> = healthy
            .into_iter()
            .filter(|(_, healthy)| !healthy)
            .map(|(id, _)| id)
            .collect();
        if waiting.is_empty() {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                ?waiting,
                "registering with the front door although these versions have no healthy \
                 instance yet"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn wait_healthy(host: &Host, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let views = host.supervisor.instances();
        if views.iter().all(|v| v.state.healthy()) {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                unhealthy = views.iter().filter(|v| !v.state.healthy()).count(),
                "routing before every adopted instance passed a health check"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Hands the daemon over to a new one (the protocol is in [`crate::handover`]). On success this
/// daemon has stopped writing for good and the successor routes; on failure this daemon holds
/// the lock and supervises its instances again, as before.
async fn hand_over(
    host: &Arc<Host>,
    binary: Option<PathBuf>,
    sockets: &HandoverSockets,
    daemon_lock: &mut Option<Flock<std::fs::File>>,
) -> Result<Successor, PortError> {
    let result = hand_over_inner(host, binary, sockets, daemon_lock).await;
    host.handover.upgrading.store(false, Ordering::SeqCst);
    result
}

async fn hand_over_inner(
    host: &Arc<Host>,
    binary: Option<PathBuf>,
    sockets: &HandoverSockets,
    daemon_lock: &mut Option<Flock<std::fs::File>>,
) -> Result<Successor, PortError> {
    let settings = &host.settings;
    let log = settings.daemon_log_path();
    let failed = |message: String| {
        PortError::new(
            ErrorKind::Unavailable,
            "upgrade",
            "the daemon",
            format!(
                "{message}; this daemon (pid {}) serves on as before. The daemons' log is {}",
                std::process::id(),
                log.display()
            ),
        )
    };
    let Some(binary) = binary.or_else(|| host.handover.exe.clone()) else {
        return Err(failed(
            "this daemon does not know its own executable; pass --binary".into(),
        ));
    };
    if !binary.is_file() {
        return Err(failed(format!("{} is not a file", binary.display())));
    }

    // 1. Start the successor with the listening sockets as descriptors 3, 4, ...
    let kinds: Vec<&str> = sockets.sockets.iter().map(|(k, _)| *k).collect();
    let mut mappings = Vec::new();
    for ((_, socket), child_fd) in sockets.sockets.iter().zip(handover::FIRST_FD..) {
        let copy = socket
            .try_clone()
            .map_err(|e| failed(format!("cannot copy a listening socket: {e}")))?;
        mappings.push(command_fds::FdMapping {
            parent_fd: std::os::fd::OwnedFd::from(copy),
            child_fd,
        });
    }
    let mut command = std::process::Command::new(&binary);
    command
        .args(std::env::args_os().skip(1))
        .env(
            handover::LISTEN_FDS_VAR,
            handover::render_listen_fds(kinds.iter().copied()),
        )
        .env("LISTEN_FDS", kinds.len().to_string())
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDNAMES")
        .env(handover::UPGRADE_FROM_VAR, std::process::id().to_string())
        .stdin(std::process::Stdio::null());
    // Its own process group, as the daemon the CLI starts: a Ctrl-C at this daemon's terminal
    // does not reach it.
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    command_fds::CommandFdExt::fd_mappings(&mut command, mappings)
        .map_err(|e| failed(format!("cannot pass the listening sockets: {e}")))?;
    let mut child = command
        .spawn()
        .map_err(|e| failed(format!("cannot start {}: {e}", binary.display())))?;
    let pid = child.id();
    tracing::info!(pid, binary = %binary.display(), "started the new daemon; handing over");

    // 2. Stop every writer: the socket first (clients queue), then wait for those in progress.
    host.handover.rpc_paused.send_replace(true);
    let writers =
        match tokio::time::timeout(Duration::from_secs(30), host.handover.writers.write()).await {
            Ok(guard) => guard,
            Err(_) => {
                kill_successor(&mut child).await;
                host.handover.rpc_paused.send_replace(false);
                return Err(failed(
                    "a request to this daemon (a build?) did not finish within 30s".into(),
                ));
            }
        };
    host.handover.router_frozen.store(true, Ordering::SeqCst);
    host.supervisor.release();
    host.handover.deadline_unix.store(
        unix_now().saturating_add(settings.upgrade_deadline.as_secs()),
        Ordering::SeqCst,
    );
    // The successor's first drain observation must already see the sessions this router holds.
    if let Err(error) = handover::write_previous(&settings.state_dir, &host.held_sessions()) {
        tracing::warn!(%error, "could not write the sessions this daemon serves");
    }
    let file = match daemon_lock.take().map(Flock::unlock) {
        Some(Ok(file)) => Some(file),
        Some(Err((lock, errno))) => {
            *daemon_lock = Some(lock);
            return Err(resume(
                host,
                writers,
                daemon_lock,
                None,
                &mut child,
                failed(format!("cannot unlock the state directory: {errno}")),
            )
            .await);
        }
        None => None,
    };

    // 3. Wait until the successor answers on the socket with its pid.
    let deadline = tokio::time::Instant::now() + handover::READY_TIMEOUT;
    let outcome = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break Err(format!(
                "the new daemon (pid {pid}) exited at once ({status})"
            ));
        }
        if host.handover.socket_taken(&settings.socket_path())
            && successor_answers(&settings.socket_path(), &settings.name, pid).await
        {
            break Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            break Err(format!(
                "the new daemon (pid {pid}) did not become ready within {}s",
                handover::READY_TIMEOUT.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    match outcome {
        Ok(()) => {
            host.handover.handed_over.store(true, Ordering::SeqCst);
            drop(writers);
            // Accept what queued meanwhile, to answer it `HANDED_OVER`.
            host.handover.rpc_paused.send_replace(false);
            // Nobody waits for the successor: it outlives this daemon.
            std::thread::spawn(move || {
                let _ = child.wait();
            });
            Ok(Successor { pid, binary })
        }
        Err(why) => {
            let _ = std::fs::remove_file(handover::previous_daemon_path(&settings.state_dir));
            Err(resume(host, writers, daemon_lock, file, &mut child, failed(why)).await)
        }
    }
}

/// Whether the daemon answering `Hello` on `socket` is `pid`.
async fn successor_answers(socket: &Path, name: &flotilla_core::DeploymentName, pid: u32) -> bool {
    let Ok(stream) = UnixStream::connect(socket).await else {
        return false;
    };
    let (read, mut write) = stream.into_split();
    // No protocol: any daemon answers such a hello, whichever protocol it speaks.
    let mut line = serde_json::to_string(&Request::Hello {
        name: name.clone(),
        protocol: None,
    })
    .expect("requests serialise to JSON");
    line.push('\n');
    if write.write_all(line.as_bytes()).await.is_err() {
        return false;
    }
    let mut answer = String::new();
    let read = tokio::time::timeout(
        Duration::from_secs(2),
        BufReader::new(read).read_line(&mut answer),
    )
    .await;
    if !matches!(read, Ok(Ok(n)) if n > 0) {
        return false;
    }
    match serde_json::from_str::<Reply>(&answer) {
        Ok(Reply::Ok(value)) => {
            serde_json::from_value::<DaemonInfo>(value).is_ok_and(|info| info.pid == pid)
        }
        _ => false,
    }
}

/// After a failed handover: stops the successor if it still runs, takes the lock back, adopts
/// the instances again and resumes writing and answering. Returns `error` for the caller.
/// The writers stay stopped (`writers` is held) until the lock is back and the instances are
/// adopted again, so this daemon never writes while the successor might.
async fn resume(
    host: &Arc<Host>,
    writers: tokio::sync::RwLockWriteGuard<'_, ()>,
    daemon_lock: &mut Option<Flock<std::fs::File>>,
    file: Option<std::fs::File>,
    child: &mut std::process::Child,
    error: PortError,
) -> PortError {
    kill_successor(child).await;
    if let Some(mut file) = file {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => {
                    *daemon_lock = Some(lock);
                    break;
                }
                Err((f, errno)) => {
                    if tokio::time::Instant::now() >= deadline {
                        // Someone else holds it (the successor did not die): never a second
                        // writer. This daemon goes on routing what it has, and writes nothing.
                        tracing::error!(
                            %errno,
                            "cannot take the state directory's lock back; this daemon stops \
                             writing and only routes (stop it once the lock holder serves)"
                        );
                        host.handover.handed_over.store(true, Ordering::SeqCst);
                        host.handover.rpc_paused.send_replace(false);
                        return error;
                    }
                    file = f;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
        if let Some(lock) = daemon_lock.as_ref() {
            use std::io::Write;
            let mut f: &std::fs::File = lock;
            let _ = f
                .set_len(0)
                .and_then(|()| writeln!(f, "{}", std::process::id()));
        }
    }
    if let Err(e) = host.supervisor.restore().await {
        tracing::error!(error = %e, "adopting the instances again failed");
    }
    wait_healthy(host, Duration::from_secs(5)).await;
    host.handover.router_frozen.store(false, Ordering::SeqCst);
    host.refresh();
    // A successor that bound the socket path before it failed took the path from this daemon's
    // socket: the socket server binds it again.
    host.handover.rebind.notify_one();
    drop(writers);
    host.handover.rpc_paused.send_replace(false);
    error
}

/// Stops a successor that failed (SIGKILL: it never became ready) and reaps it.
async fn kill_successor(child: &mut std::process::Child) {
    if matches!(child.try_wait(), Ok(None)) {
        let _ = child.kill();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while matches!(child.try_wait(), Ok(None)) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Binds the socket path again when it no longer names this daemon's socket (a failed successor
/// took it, or removed it).
fn rebind_socket(path: &Path, handover: &HandoverState) -> Option<UnixListener> {
    if std::fs::metadata(path).is_ok() && !handover.socket_taken(path) {
        return None;
    }
    let _ = std::fs::remove_file(path);
    match UnixListener::bind(path) {
        Ok(rebound) => {
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
            handover.note_socket(path);
            tracing::info!(socket = %path.display(), "bound the socket again");
            Some(rebound)
        }
        Err(error) => {
            tracing::error!(%error, socket = %path.display(), "cannot bind the socket again");
            None
        }
    }
}

async fn rpc_connection(
    stream: UnixStream,
    host: Arc<Host>,
    stop_tx: watch::Sender<bool>,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Some(line) = lines.next_line().await? {
        let request = match serde_json::from_str::<Request>(&line) {
            Ok(request) => request,
            Err(e) => {
                write_reply(&mut write, &Reply::Err(undecodable(&line, &e))).await?;
                continue;
            }
        };
        // Every request but an upgrade writes (or may): it waits while a handover decides
        // which daemon owns the state directory, and after a handover it is answered
        // `HANDED_OVER`, which the client sends again to the new daemon. A workflow holds it
        // until it ends, so a handover waits for the workflows that run.
        let writing = if matches!(request, Request::Upgrade { .. }) {
            None
        } else {
            Some(host.handover.writers.read().await)
        };
        if host.handover.handed_over() {
            let e = PortError::new(
                ErrorKind::Unavailable,
                "answer",
                "the request",
                format!("{}: send it again", crate::rpc::HANDED_OVER),
            );
            write_reply(&mut write, &Reply::Err(e)).await?;
            continue;
        }
        let reply = match request {
            Request::Run(run) => {
                let crate::rpc::RunWorkflow {
                    workflow,
                    settings,
                    app,
                } = *run;
                let ran = run_workflow(&host, workflow, settings, app, &mut lines, &mut write);
                match ran.await {
                    Some(reply) => reply,
                    // The client went away; the workflow stopped (see `run_workflow`).
                    None => return Ok(()),
                }
            }
            request => host
                .dispatch(request, &stop_tx)
                .await
                .unwrap_or_else(Reply::Err),
        };
        drop(writing);
        write_reply(&mut write, &reply).await?;
    }
    Ok(())
}

/// The answer to a line that is not a request of this protocol: a flotilla of another protocol
/// sends requests this daemon does not know (protocol 1 sent one per port call).
fn undecodable(line: &str, e: &serde_json::Error) -> PortError {
    let op = serde_json::from_str::<serde_json::Value>(line)
        .ok()
        .and_then(|v| v.get("op").and_then(|op| op.as_str()).map(str::to_owned));
    let message = match op {
        Some(op) => format!(
            "this flotilla host daemon (pid {}) speaks protocol {} and does not know the request \
             `{op}`: the flotilla that sent it speaks another protocol; run `flotilla host \
             upgrade` with that flotilla to hand the daemon over to it, or use the flotilla the \
             daemon runs",
            std::process::id(),
            crate::rpc::PROTOCOL,
        ),
        None => e.to_string(),
    };
    PortError::new(ErrorKind::Invalid, "decode request", "socket", message)
}

/// Runs one workflow a command asked for, over this daemon's ports with the command's settings,
/// writing its progress events as they come and returning its outcome (or error), or `None`
/// when the client went away.
///
/// The workflow stops before its next port call, never in the middle of one, when the client
/// sends [`Request::Cancel`] (Ctrl-C; its deploy lock is then released, so the command can be
/// run again at once) or disconnects (killed; its lock stays, held by a process that no longer
/// runs, which the next command breaks at once). Either way every step done so far is
/// recorded, and running the same command again resumes.
async fn run_workflow(
    host: &Arc<Host>,
    workflow: Workflow,
    mut settings: Settings,
    app: crate::rpc::AppCommands,
    lines: &mut tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
    write: &mut tokio::net::unix::OwnedWriteHalf,
) -> Option<Reply> {
    settings.local_holders = Some(LocalHolders {
        host: flotilla_process::procfs::hostname(),
        alive: crate::procfs::alive,
    });
    let owner = settings.lock_owner.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let ports = LocalPorts::for_workflow(host.clone(), app, stop.clone());
    let engine = Engine::new(ports.ports(), settings);
    let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let progress = ChannelProgress(tx);
    let run = engine.run(workflow, &progress);
    tokio::pin!(run);
    let mut client_gone = false;
    let mut cancelled = false;
    let result = loop {
        tokio::select! {
            result = &mut run => break result,
            Some(event) = events.recv() => {
                if !client_gone {
                    client_gone = write_reply(write, &Reply::Event(event)).await.is_err();
                }
            }
            line = lines.next_line(), if !client_gone && !cancelled => match line {
                Ok(Some(line)) => {
                    if matches!(serde_json::from_str(&line), Ok(Request::Cancel)) {
                        tracing::info!(owner, "workflow cancelled by its command; it stops before its next step");
                        cancelled = true;
                        stop.store(true, Ordering::SeqCst);
                    }
                }
                Ok(None) | Err(_) => {
                    tracing::info!(owner, "the command of a workflow went away; it stops before its next step");
                    client_gone = true;
                    stop.store(true, Ordering::SeqCst);
                }
            },
        }
    };
    if cancelled {
        // The stopped workflow could not release its lock through its own ports.
        if let Err(e) = LocalPorts::new(host.clone()).release_lock(&owner).await {
            tracing::warn!(error = %e, owner, "could not release the deploy lock of a cancelled workflow; it lapses by itself");
        }
    }
    while let Ok(event) = events.try_recv() {
        if !client_gone {
            client_gone = write_reply(write, &Reply::Event(event)).await.is_err();
        }
    }
    if client_gone {
        return None;
    }
    Some(match result {
        Ok(outcome) => {
            Reply::Ok(serde_json::to_value(outcome).expect("outcomes serialise to JSON"))
        }
        Err(e) => Reply::Failed(e),
    })
}

/// Writes one reply line.
async fn write_reply(
    write: &mut (impl tokio::io::AsyncWrite + Unpin),
    reply: &Reply,
) -> std::io::Result<()> {
    let mut text = serde_json::to_string(reply).expect("replies serialise to JSON");
    text.push('\n');
    write.write_all(text.as_bytes()).await
}

/// Passes a request's progress events to the connection that asked for them.
struct ChannelProgress(tokio::sync::mpsc::UnboundedSender<Event>);

impl Progress for ChannelProgress {
    fn event(&self, event: Event) {
        // The connection is gone when this fails; the request still runs to its end.
        let _ = self.0.send(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A status page on a non-loopback address without `admin_token_file` would be open to every
    /// machine that reaches it: the daemon refuses to start, before it creates or binds anything.
    #[tokio::test]
    async fn a_non_loopback_status_page_without_a_token_is_refused() {
        let app = tempfile::tempdir().expect("temporary directory");
        let mut settings = HostSettings::new(
            flotilla_core::DeploymentName::new("web").expect("valid name"),
            app.path(),
            "true",
        );
        settings.listen = "127.0.0.1:0".parse().expect("addr");
        settings.admin_listen = "0.0.0.0:0".parse().expect("addr");
        let refused = tokio::time::timeout(
            Duration::from_secs(10),
            serve(&settings, std::future::pending()),
        )
        .await
        .expect("refused at once")
        .expect_err("no token, not loopback");
        assert!(matches!(refused, HostError::AdminToken(_)), "{refused:?}");
        assert!(
            refused
                .to_string()
                .contains("set `admin_token_file` in [host]"),
            "{refused}"
        );
        assert!(
            !app.path().join(".flotilla").exists(),
            "nothing was created before the refusal"
        );
    }

    /// Another app's daemon binds its port with `SO_REUSEPORT` too; the kernel would let this
    /// daemon join it. The probe refuses, and the error names the port.
    #[tokio::test]
    async fn a_port_another_process_listens_on_is_refused_even_with_reuseport() {
        let other = tokio::net::TcpSocket::new_v4().expect("socket");
        other.set_reuseport(true).expect("reuseport");
        other
            .bind("127.0.0.1:0".parse().expect("addr"))
            .expect("bind");
        let other = other.listen(16).expect("listen");
        let addr = other.local_addr().expect("addr");

        let err = router_listeners(addr, 2).expect_err("the port is taken");
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
        let text = HostError::bind(addr, "router", err).to_string();
        assert!(
            text.contains(&format!("cannot listen on {addr} (router)"))
                && text.contains(&format!("port {}", addr.port()))
                && text.contains("does not share a port"),
            "{text}"
        );

        // A free port still gets one listener per worker.
        drop(other);
        let listeners = router_listeners(addr, 2).expect("the port is free again");
        assert_eq!(listeners.len(), 2);
    }
}
