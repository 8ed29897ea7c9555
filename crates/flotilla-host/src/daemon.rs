//! The daemon: implements the ports for real (SQLite, the supervisor, the router), serves them
//! over its Unix socket, runs the router and the status page, observes drain readiness every
//! `[drain] poll_seconds`, and runs its own reaper every `[reaper] interval_seconds`.
//!
//! Start-up order: take the daemon lock → open state → publish the saved routing table (so
//! retired ids answer 410 at once) → bind the router, the status page and the socket → adopt the
//! instances a previous daemon left running, stop its other leftovers, and start every recorded
//! version's missing instances. A version that was active or draining serves again as soon as its
//! instances pass health checks (an adopted one is checked at once).
//!
//! The router runs on one thread per CPU, each with a single-threaded runtime and its own
//! `SO_REUSEPORT` listener on `[host] listen` (see `run_router_workers`), sharing one [`Router`].
//!
//! Shutdown: stop accepting requests on the socket, let the router drain open connections with a
//! deadline (and log what it cut), then, as the shutdown asked ([`OnExit`]): stop every instance
//! (SIGTERM, then SIGKILL after `stop_timeout`; `flotilla host stop`), or leave them running for
//! the next daemon to adopt (SIGTERM to the daemon: a service manager's restart, an upgrade).
//! Compute records stay either way, so the next daemon serves the same versions again.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use flotilla_core::drain::{DrainTracker, Readiness, Sessions};
use flotilla_core::routing::{RoutingTable, RuleBudget, WeightedTarget};
use flotilla_core::{DeploymentId, InstanceId, Timestamp, VersionState};
use flotilla_engine::events::{Event, Progress, Silent};
use flotilla_engine::ports::{
    Clock, Compute, ComputeStatus, ErrorKind, ImageRef, ImageRequest, ImageSource, LockInfo,
    LockOutcome, PortError, Ports, Routing, StateStore, VersionRecord, VersionSpec,
};
use flotilla_engine::{Engine, Settings};
use flotilla_proxy::{ConnectionLimit, ProxyConfig};
use nix::fcntl::{Flock, FlockArg};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::sync::watch;

use crate::error::HostError;
use crate::release::{self, ReleaseError};
use crate::router::{InstanceKey, Router};
use crate::rpc::{DaemonInfo, Reply, Request, SystemClock};
use crate::settings::HostSettings;
use crate::state::{ComputeRecord, Launch, Store};
use crate::supervisor::Supervisor;

/// How long the router may take to drain its connections at shutdown, at most.
const MAX_ROUTER_DRAIN: Duration = Duration::from_secs(10);
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
}

fn port_err(operation: &str, resource: &str) -> impl FnOnce(HostError) -> PortError {
    let (operation, resource) = (operation.to_owned(), resource.to_owned());
    move |e| e.into_port(&operation, &resource)
}

impl Host {
    /// Publishes the routing table, tombstones and instances to the router.
    fn refresh(&self) {
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
        let mut observed = self
            .supervisor
            .observe(ids, |id, instance| self.router.sessions(id, instance));
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
                let sessions = Sessions {
                    live: routed.sessions + view.state.app_sessions().unwrap_or(0),
                    started: routed.sessions_total,
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

    /// Carries out one request. `progress` receives the events of a request that asked for them.
    async fn dispatch(
        &self,
        request: Request,
        shutdown: &watch::Sender<bool>,
        progress: &dyn Progress,
    ) -> Result<serde_json::Value, PortError> {
        fn json<T: Serialize>(value: T) -> Result<serde_json::Value, PortError> {
            Ok(serde_json::to_value(value).expect("port results serialise to JSON"))
        }
        let st = |op: &'static str, res: String| move |e: HostError| e.into_port(op, &res);
        match request {
            Request::Hello { name } => {
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
            Request::ComputeCreate {
                spec,
                command,
                health_path,
            } => json(self.create(&spec, &command, &health_path).await?),
            Request::ComputeScale { id, desired } => json(self.scale(&id, desired).await?),
            Request::ComputeDelete { id } => json(self.delete_compute(&id).await?),
            Request::ComputeObserve { ids } => json(self.observe(&ids)),
            Request::ComputeList => json(self.supervisor.list()),
            Request::ComputeRecentLogs { id, lines } => {
                json(self.supervisor.recent_logs(&id, lines))
            }
            Request::RoutingInstall { id } => json(self.install_affinity(&id)?),
            Request::RoutingRetire { id } => json(self.retire_affinity(&id)?),
            Request::RoutingRemove { id } => json(self.remove_affinity(&id)?),
            Request::RoutingSetDefault { targets } => json(self.set_default(&targets)?),
            Request::RoutingSnapshot => json(lock(&self.routing).clone()),
            Request::StateList => json(
                self.store
                    .list_versions()
                    .map_err(st("list", "versions".into()))?,
            ),
            Request::StateGet { id } => json(
                self.store
                    .get_version(&id)
                    .map_err(st("read record of", id.to_string()))?,
            ),
            Request::StatePut { record } => {
                let id = record.version.id.to_string();
                json(
                    self.store
                        .put_version(&record)
                        .map_err(st("write record of", id))?,
                )
            }
            Request::StateDelete { id } => json(
                self.store
                    .delete_version(&id)
                    .map_err(st("delete record of", id.to_string()))?,
            ),
            Request::StateReadiness { ids } => json(
                self.store
                    .readiness(&ids)
                    .map_err(st("read", "readiness".into()))?,
            ),
            Request::StateAcquireLock {
                owner,
                now,
                ttl_ms,
                force,
            } => json(
                self.store
                    .acquire_lock(&owner, now, Duration::from_millis(ttl_ms), force)
                    .map_err(st("take", "deploy lock".into()))?,
            ),
            Request::StateReleaseLock { owner } => json(
                self.store
                    .release_lock(&owner)
                    .map_err(st("release", "deploy lock".into()))?,
            ),
            Request::StateLockInfo => json(
                self.store
                    .lock_info()
                    .map_err(st("read", "deploy lock".into()))?,
            ),
            Request::ImagePrepare {
                id,
                request,
                build,
                events,
            } => {
                let progress = if events { progress } else { &Silent };
                json(
                    self.prepare(&id, &request, build.as_deref(), progress)
                        .await?,
                )
            }
            Request::ImageDiscard { id } => json(self.discard(&id).await?),
            Request::Shutdown => {
                tracing::info!("shutdown requested over the socket");
                shutdown.send_replace(true);
                json(())
            }
        }
    }
}

/// The daemon's own ports over its live state, for its reaper and its status page.
#[derive(Clone)]
pub struct LocalPorts(pub Arc<Host>);

impl LocalPorts {
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
        let s = &self.0.settings;
        self.0.create(spec, &s.command, &s.health_path).await
    }
    async fn scale(&self, id: &DeploymentId, desired: u32) -> Result<(), PortError> {
        self.0.scale(id, desired).await
    }
    async fn delete(&self, id: &DeploymentId) -> Result<(), PortError> {
        self.0.delete_compute(id).await
    }
    async fn observe(
        &self,
        ids: &[DeploymentId],
    ) -> Result<BTreeMap<DeploymentId, ComputeStatus>, PortError> {
        Ok(self.0.observe(ids))
    }
    async fn list(&self) -> Result<Vec<DeploymentId>, PortError> {
        Ok(self.0.supervisor.list())
    }
    async fn recent_logs(&self, id: &DeploymentId, lines: usize) -> Result<Vec<String>, PortError> {
        Ok(self.0.supervisor.recent_logs(id, lines))
    }
}

#[async_trait]
impl Routing for LocalPorts {
    async fn install_affinity(&self, id: &DeploymentId) -> Result<(), PortError> {
        self.0.install_affinity(id)
    }
    async fn retire_affinity(&self, id: &DeploymentId) -> Result<(), PortError> {
        self.0.retire_affinity(id)
    }
    async fn remove_affinity(&self, id: &DeploymentId) -> Result<(), PortError> {
        self.0.remove_affinity(id)
    }
    async fn set_default(&self, targets: &[WeightedTarget]) -> Result<(), PortError> {
        self.0.set_default(targets)
    }
    async fn snapshot(&self) -> Result<RoutingTable, PortError> {
        Ok(lock(&self.0.routing).clone())
    }
}

#[async_trait]
impl StateStore for LocalPorts {
    async fn list(&self) -> Result<Vec<VersionRecord>, PortError> {
        self.0
            .store
            .list_versions()
            .map_err(port_err("list", "versions"))
    }
    async fn get(&self, id: &DeploymentId) -> Result<Option<VersionRecord>, PortError> {
        self.0
            .store
            .get_version(id)
            .map_err(port_err("read record of", id.as_str()))
    }
    async fn put(&self, record: &VersionRecord) -> Result<(), PortError> {
        self.0
            .store
            .put_version(record)
            .map_err(port_err("write record of", record.version.id.as_str()))
    }
    async fn delete(&self, id: &DeploymentId) -> Result<(), PortError> {
        self.0
            .store
            .delete_version(id)
            .map_err(port_err("delete record of", id.as_str()))
    }
    async fn readiness(
        &self,
        ids: &[DeploymentId],
    ) -> Result<BTreeMap<DeploymentId, BTreeMap<InstanceId, Readiness>>, PortError> {
        self.0
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
        self.0
            .store
            .acquire_lock(owner, now, ttl, force)
            .map_err(port_err("take", "deploy lock"))
    }
    async fn release_lock(&self, owner: &str) -> Result<(), PortError> {
        self.0
            .store
            .release_lock(owner)
            .map_err(port_err("release", "deploy lock"))
    }
    async fn lock_info(&self) -> Result<Option<LockInfo>, PortError> {
        self.0
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
        let build = self.0.settings.build.clone();
        self.0
            .prepare(id, request, build.as_deref(), progress)
            .await
    }
    async fn discard(&self, id: &DeploymentId) -> Result<(), PortError> {
        self.0.discard(id).await
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
        lock_owner: format!("flotilla host daemon (pid {})", std::process::id()),
        local_holders: None,
    }
}

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
    let state_dir = settings.state_dir.clone();
    crate::private::private_dir(&state_dir)
        .map_err(HostError::io("create state directory", &state_dir))?;
    let lock_path = settings.daemon_lock_path();
    let lock_file = crate::private::private_append(&lock_path)
        .map_err(HostError::io("open daemon lock", &lock_path))?;
    let daemon_lock = Flock::lock(lock_file, FlockArg::LockExclusiveNonblock).map_err(|_| {
        HostError::AlreadyRunning {
            state_dir: state_dir.clone(),
        }
    })?;
    // The lock file names the daemon holding it, for operators and tests.
    {
        use std::io::Write;
        let mut file: &std::fs::File = &daemon_lock;
        file.set_len(0)
            .and_then(|()| writeln!(file, "{}", std::process::id()))
            .map_err(HostError::io("write daemon lock", &lock_path))?;
    }

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
        }
    });
    host.refresh();

    let listeners = router_listeners(settings.listen, router_workers())
        .map_err(|source| HostError::bind(settings.listen, "router", source))?;
    let https = https_router(&settings)?;
    let admin = TcpListener::bind(settings.admin_listen)
        .await
        .map_err(|source| HostError::bind(settings.admin_listen, "status page", source))?;
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

    let restored = host.supervisor.restore().await?;
    host.refresh();
    tracing::info!(
        name = %settings.name, pid = std::process::id(), listen = %settings.listen,
        https = ?settings.https.as_ref().map(|h| h.listen),
        admin = %settings.admin_listen, socket = %socket_path.display(), restored = restored.len(),
        "flotilla host daemon serving"
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let engine = Arc::new(Engine::new(
        LocalPorts(host.clone()).ports(),
        engine_settings(&settings),
    ));

    let proxy_config = ProxyConfig {
        deployment_header: ProxyConfig::header_name(&settings.affinity_header)
            .map_err(|e| HostError::Protocol(e.to_string()))?,
        inject_client: settings.inject_client,
        client_query_param: Some(settings.affinity_query.clone()),
        shutdown_deadline: settings.stop_timeout.min(MAX_ROUTER_DRAIN),
        // One limit for every worker: each worker's config is a clone sharing it.
        connection_limit,
        first_byte_timeout: settings.first_byte_timeout,
        ..ProxyConfig::default()
    };
    let (plain_route, https_task) = match https {
        Some(https) => {
            let (route, task) = https.start(&proxy_config, router.clone(), &stop_rx)?;
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
    let proxy_task = {
        let rx = stop_rx.clone();
        let route = Arc::new(plain_route);
        tokio::spawn(async move {
            let report = run_router_workers(listeners, proxy_config, route, rx).await;
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
    let rpc_task = tokio::spawn(rpc_server(
        unix,
        host.clone(),
        stop_tx.clone(),
        stop_rx.clone(),
    ));
    let drain_task = {
        let host = host.clone();
        let mut rx = stop_rx.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(host.settings.drain_poll);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        if let Err(e) = host.observe_drain() {
                            tracing::error!(error = %e, "drain observation failed");
                        }
                    }
                    _ = crate::supervisor::stop_requested(&mut rx) => break,
                }
            }
        })
    };
    let reaper_task = {
        let engine = engine.clone();
        let host = host.clone();
        let interval = settings.reaper_interval;
        let mut rx = stop_rx.clone();
        tokio::spawn(async move {
            let mut tick =
                tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // What draining versions waited for at the last pass: logged only when it changes, so
            // that a version draining for hours does not log a line every pass.
            let mut waiting = Vec::new();
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        match engine.reap(false, &LogProgress).await {
                            Ok(report) => {
                                host.reaper_meter.record(&report);
                                for (action, error) in &report.failed {
                                    tracing::warn!(?action, %error, "reaper action failed; the next pass retries it");
                                }
                                if report.skipped_locked.is_none() && report.waiting != waiting {
                                    for w in &report.waiting {
                                        tracing::info!(id = %w.id, reason = ?w.reason, retire_by = %w.retire_by, "draining version not retired yet");
                                    }
                                    waiting = report.waiting;
                                }
                            }
                            Err(e) => tracing::error!(error = %e, "reaper pass failed"),
                        }
                    }
                    _ = crate::supervisor::stop_requested(&mut rx) => break,
                }
            }
        })
    };

    let on_exit = {
        let mut rx = stop_rx.clone();
        tokio::select! {
            on_exit = shutdown => on_exit,
            _ = crate::supervisor::stop_requested(&mut rx) => OnExit::StopInstances,
        }
    };
    tracing::info!(?on_exit, "shutting down: draining the router");
    stop_tx.send_replace(true);
    let _ = rpc_task.await;
    let _ = tokio::fs::remove_file(&socket_path).await;
    let _ = drain_task.await;
    let _ = reaper_task.await;
    let _ = proxy_task.await;
    if let Some(task) = https_task {
        let _ = task.await;
    }
    let _ = admin_task.await;
    match on_exit {
        OnExit::StopInstances => host.supervisor.shutdown().await,
        OnExit::LeaveRunning => host.supervisor.release(),
    }
    tracing::info!("flotilla host daemon stopped");
    Ok(())
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

/// HTTPS on the router (`[host] https_listen`): its listeners, bound at start beside the plain
/// ones, and its certificates. Kept apart from the plain listeners so that handing listeners
/// over to another daemon can take each by name.
struct HttpsRouter {
    listeners: Vec<std::net::TcpListener>,
    port: u16,
    certs: Arc<crate::tls::CertStore>,
    challenges: Arc<crate::tls::HttpChallenges>,
    /// ACME, with the stored certificate it loaded (if any); `None` with certificate files.
    acme: Option<(crate::acme::Acme, Option<crate::tls::CertInfo>)>,
}

/// Binds the HTTPS listeners and loads the certificates: files (refusing to start if they are
/// unusable), or the stored ACME certificate (starting without one if there is none: ACME
/// obtains it in the background).
fn https_router(settings: &HostSettings) -> Result<Option<HttpsRouter>, HostError> {
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
    let listeners = https_listeners(https.listen, router_workers())?;
    let port = listeners
        .first()
        .and_then(|l| l.local_addr().ok())
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
            let report = run_router_workers(listeners, config, router, rx).await;
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
    listeners: Vec<std::net::TcpListener>,
    config: ProxyConfig,
    router: Arc<R>,
    stop: watch::Receiver<bool>,
) -> RouterReport {
    let mut done = Vec::new();
    for (n, listener) in listeners.into_iter().enumerate() {
        let (tx, rx) = tokio::sync::oneshot::channel::<usize>();
        let (config, router, mut stop) = (config.clone(), router.clone(), stop.clone());
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
                    let listener = match TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            tracing::error!(error = %e, "cannot use the router listener");
                            return 0;
                        }
                    };
                    let report = flotilla_proxy::serve(listener, config, router, async move {
                        crate::supervisor::stop_requested(&mut stop).await;
                    })
                    .await;
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
    listener: UnixListener,
    host: Arc<Host>,
    stop_tx: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) {
    let mut accept_errors = flotilla_proxy::WarnLimiter::new(Duration::from_secs(5));
    loop {
        tokio::select! {
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

async fn rpc_connection(
    stream: UnixStream,
    host: Arc<Host>,
    stop_tx: watch::Sender<bool>,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Some(line) = lines.next_line().await? {
        let reply = match serde_json::from_str::<Request>(&line) {
            Ok(request) => {
                // Progress events are written as they come, ahead of the reply. A client that
                // went away does not stop the request (a build runs to its end, as it would
                // without events); its events are dropped.
                let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
                let progress = ChannelProgress(tx);
                let dispatch = host.dispatch(request, &stop_tx, &progress);
                tokio::pin!(dispatch);
                let mut client_gone = false;
                let result = loop {
                    tokio::select! {
                        result = &mut dispatch => break result,
                        Some(event) = events.recv() => {
                            if !client_gone {
                                client_gone =
                                    write_reply(&mut write, &Reply::Event(event)).await.is_err();
                            }
                        }
                    }
                };
                while let Ok(event) = events.try_recv() {
                    if !client_gone {
                        client_gone = write_reply(&mut write, &Reply::Event(event)).await.is_err();
                    }
                }
                match result {
                    Ok(value) => Reply::Ok(value),
                    Err(e) => Reply::Err(e),
                }
            }
            Err(e) => Reply::Err(PortError::new(
                ErrorKind::Invalid,
                "decode request",
                "socket",
                e.to_string(),
            )),
        };
        write_reply(&mut write, &reply).await?;
    }
    Ok(())
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
