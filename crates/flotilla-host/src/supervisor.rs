//! The supervisor: runs each version's instances as process groups, restarts crashed ones with
//! backoff, health-checks them, and stops them with SIGTERM, then SIGKILL after `stop_timeout`.
//!
//! Each instance is `sh -c <command>` in the release directory, in its own process group (so
//! whatever it forks dies with it), with `PORT` (a free loopback port chosen here),
//! `FLOTILLA_DEPLOYMENT_NAME`, `FLOTILLA_DEPLOYMENT_ID` and `FLOTILLA_INSTANCE` set, and its output
//! appended to `<state_dir>/logs/<id>/<instance>.log` (the process writes the file itself, so it
//! needs no daemon to keep running). Every process group is recorded in SQLite with its start time,
//! the boot id and its port before it serves, so a daemon that died or exited without stopping its
//! children finds them ([`Supervisor::restore`]): one that is still the recorded process (same pid,
//! same start time in the same boot, still leading its group) and still wanted is *adopted*, with
//! no restart; anything else of ours is stopped, and missing instances are started. None is
//! duplicated.
//!
//! An adopted process is not this daemon's child, so its exit cannot be waited for: its monitor
//! polls `/proc` every [`ADOPTED_POLL`] instead, and stops it by process group as usual.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use flotilla_core::{DeploymentId, DeploymentName, InstanceId};
use flotilla_engine::ports::ComputeStatus;
use flotilla_process::Signal;
use flotilla_process::group::{self, Leftovers};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::HostError;
use crate::health;
use crate::procfs;
use crate::release::tail_lines;
use crate::state::{ComputeRecord, ProcessRecord, Store};

/// How often a healthy instance is checked.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);
/// How often an instance not yet healthy is checked (so deploys switch quickly).
const STARTING_HEALTH_INTERVAL: Duration = Duration::from_millis(200);
/// How long one health check may take.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
/// Consecutive failed checks after which a healthy instance counts as unhealthy.
const UNHEALTHY_AFTER: u32 = 2;
/// The first restart delay; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// The longest restart delay.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// An instance that ran this long before exiting restarts with the first delay again.
const STABLE_RUN: Duration = Duration::from_secs(30);
/// The longest a restarted daemon waits for a dead daemon's leftover processes to stop.
const LEFTOVER_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the monitor of an adopted process (not a child: no `wait`) looks whether it runs.
const ADOPTED_POLL: Duration = Duration::from_millis(100);

/// What one instance is doing, shared between its monitor task, the router and `observe`.
#[derive(Debug)]
pub struct InstanceState {
    /// The instance id (`i1`, `i2`, ...).
    pub instance: InstanceId,
    port: AtomicU16,
    pid: AtomicU32,
    running: AtomicBool,
    healthy: AtomicBool,
    /// The app's own session count from its health JSON; `u64::MAX` when it reports none.
    app_sessions: AtomicU64,
    restarts: AtomicU32,
    problem: Mutex<Option<String>>,
    log_path: PathBuf,
}

impl InstanceState {
    /// An instance the supervisor does not run, listening on `addr` and taken as running and
    /// healthy: for driving the router directly (tests, the router benchmark harness).
    pub fn external(instance: InstanceId, addr: SocketAddr) -> Arc<InstanceState> {
        Arc::new(InstanceState {
            instance,
            port: AtomicU16::new(addr.port()),
            pid: AtomicU32::new(0),
            running: AtomicBool::new(true),
            healthy: AtomicBool::new(true),
            app_sessions: AtomicU64::new(u64::MAX),
            restarts: AtomicU32::new(0),
            problem: Mutex::new(None),
            log_path: PathBuf::new(),
        })
    }

    /// Marks an [`InstanceState::external`] instance healthy or not.
    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
    }

    /// The loopback address it listens on.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port.load(Ordering::Relaxed)))
    }

    /// Its process (group) id, while running.
    pub fn pid(&self) -> Option<u32> {
        match self.pid.load(Ordering::Relaxed) {
            0 => None,
            pid => Some(pid),
        }
    }

    /// Whether its process is running.
    pub fn running(&self) -> bool {
        self.running.load(Ordering::Relaxed)
    }

    /// Whether its last health checks passed.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// The session count the app itself reported, if any.
    pub fn app_sessions(&self) -> Option<u64> {
        match self.app_sessions.load(Ordering::Relaxed) {
            u64::MAX => None,
            n => Some(n),
        }
    }

    /// How often it was restarted after exiting.
    pub fn restarts(&self) -> u32 {
        self.restarts.load(Ordering::Relaxed)
    }

    /// The last problem seen (exit status, failed health check).
    pub fn problem(&self) -> Option<String> {
        lock(&self.problem).clone()
    }

    /// Its log file.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    fn set_problem(&self, problem: Option<String>) {
        *lock(&self.problem) = problem;
    }
}

/// One instance as the router and the status page see it.
#[derive(Clone, Debug)]
pub struct InstanceView {
    /// The version.
    pub id: DeploymentId,
    /// The instance's shared state.
    pub state: Arc<InstanceState>,
    /// Whether autoscaling is winding it down: it takes no new sessions, and stops once its
    /// sessions have ended.
    pub winding_down: bool,
}

struct Slot {
    state: Arc<InstanceState>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

struct VersionRun {
    record: ComputeRecord,
    slots: BTreeMap<u32, Slot>,
    /// Slots numbered above this take no new sessions (autoscaling winds them down).
    wind_down_above: Option<u32>,
}

/// Called whenever an instance's address, health or liveness changes.
pub type ChangeHook = Arc<dyn Fn() + Send + Sync>;

struct Inner {
    name: DeploymentName,
    store: Arc<Store>,
    logs_dir: PathBuf,
    stop_timeout: Duration,
    versions: Mutex<BTreeMap<DeploymentId, VersionRun>>,
    on_change: ChangeHook,
}

/// Runs the instances of every version of one deployment name.
#[derive(Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Supervisor {
    /// A supervisor with nothing running yet.
    pub fn new(
        name: DeploymentName,
        store: Arc<Store>,
        logs_dir: PathBuf,
        stop_timeout: Duration,
        on_change: ChangeHook,
    ) -> Self {
        Supervisor {
            inner: Arc::new(Inner {
                name,
                store,
                logs_dir,
                stop_timeout,
                versions: Mutex::new(BTreeMap::new()),
                on_change,
            }),
        }
    }

    /// After a daemon restart: adopts every recorded process that still runs and is still wanted
    /// (no restart), stops every other process group a previous daemon left running, then starts
    /// each recorded version's missing instances, with the same instance ids.
    pub async fn restore(&self) -> Result<Vec<DeploymentId>, HostError> {
        let records = self.inner.store.list_compute()?;
        let processes = self.inner.store.list_processes()?;
        let mut adopted: BTreeMap<(DeploymentId, InstanceId), Adopted> = BTreeMap::new();
        let boot = procfs::boot_id();
        let mut leftovers = Vec::new();
        for p in &processes {
            let wanted = records.iter().any(|r| {
                r.spec.id == p.id
                    && instance_slot(&p.instance).is_some_and(|n| (1..=r.desired).contains(&n))
            });
            match adoption(p, procfs::stat(p.pid), wanted, boot.as_deref()) {
                Fate::Adopt(a) => {
                    tracing::info!(id = %p.id, instance = %p.instance, pid = p.pid, port = p.port,
                        "adopting a process a previous daemon started");
                    adopted.insert((p.id.clone(), p.instance.clone()), a);
                }
                Fate::Stop => {
                    // Forget the record first: a process that is not adopted gets a new one.
                    self.inner.store.delete_process(&p.id, &p.instance, p.pid)?;
                    leftovers.push(p);
                }
            }
        }
        let live: Vec<_> = leftovers
            .iter()
            .filter(|p| !group_members(p.pid, &p.id, &p.instance).is_empty())
            .collect();
        for p in &live {
            tracing::warn!(id = %p.id, instance = %p.instance, pgid = p.pid,
                "stopping processes left by a previous daemon");
            let _ = group::signal_group(p.pid, Signal::SIGTERM);
        }
        // Orphans are not our children: poll /proc (zombies count as gone) until they have exited.
        let deadline = Instant::now() + self.inner.stop_timeout.min(LEFTOVER_TIMEOUT);
        loop {
            let remaining: Vec<_> = live
                .iter()
                .filter(|p| !group_members(p.pid, &p.id, &p.instance).is_empty())
                .collect();
            if remaining.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                for p in remaining {
                    tracing::warn!(pgid = p.pid, "leftover processes ignored SIGTERM: SIGKILL");
                    let _ = group::signal_group(p.pid, Signal::SIGKILL);
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let mut restored = Vec::new();
        for record in records {
            let id = record.spec.id.clone();
            restored.push(id.clone());
            lock(&self.inner.versions)
                .entry(id.clone())
                .or_insert(VersionRun {
                    record,
                    slots: BTreeMap::new(),
                    wind_down_above: None,
                });
            let mine: BTreeMap<InstanceId, Adopted> = adopted
                .iter()
                .filter(|((v, _), _)| *v == id)
                .map(|((_, i), a)| (i.clone(), *a))
                .collect();
            self.reconcile_adopting(&id, mine);
        }
        Ok(restored)
    }

    /// Leaves every instance running and forgets them, for the next daemon to adopt: the daemon is
    /// exiting without stopping its apps (SIGTERM from a service manager, an upgrade). Their
    /// process records stay.
    pub fn release(&self) {
        let runs: Vec<VersionRun> = {
            let mut versions = lock(&self.inner.versions);
            std::mem::take(&mut *versions).into_values().collect()
        };
        let mut left = 0;
        for slot in runs.into_iter().flat_map(|r| r.slots.into_values()) {
            // Aborting drops the monitor at an await point: never between spawning a process and
            // recording it, which happen with no await in between.
            slot.task.abort();
            left += usize::from(slot.state.running());
        }
        tracing::info!(
            instances = left,
            "leaving instances running for the next daemon"
        );
        (self.inner.on_change)();
    }

    /// Records and starts a version's compute. A version already known is left as it is.
    pub fn create(&self, record: ComputeRecord) -> Result<(), HostError> {
        if lock(&self.inner.versions).contains_key(&record.spec.id) {
            return Ok(());
        }
        self.inner.store.put_compute(&record)?;
        self.run_version(record);
        Ok(())
    }

    fn run_version(&self, record: ComputeRecord) {
        let id = record.spec.id.clone();
        lock(&self.inner.versions)
            .entry(id.clone())
            .or_insert(VersionRun {
                record,
                slots: BTreeMap::new(),
                wind_down_above: None,
            });
        self.reconcile(&id);
    }

    /// Sets how many instances of `id` run. Unknown versions are a not-found error.
    pub fn scale(&self, id: &DeploymentId, desired: u32) -> Result<bool, HostError> {
        let record = {
            let mut versions = lock(&self.inner.versions);
            let Some(run) = versions.get_mut(id) else {
                return Ok(false);
            };
            run.record.desired = desired;
            run.record.clone()
        };
        self.inner.store.put_compute(&record)?;
        self.reconcile(id);
        Ok(true)
    }

    /// Applies an autoscaling step to `id` if it still runs `from` instances as recorded (so a
    /// step decided before a concurrent scale, such as the reaper's scale to zero, is dropped):
    /// the new count, and which slots take no new sessions. Says whether it applied.
    pub fn autoscale(
        &self,
        id: &DeploymentId,
        from: u32,
        step: flotilla_core::autoscale::ScaleStep,
    ) -> Result<bool, HostError> {
        let (record, count_changed, wind_changed) = {
            let mut versions = lock(&self.inner.versions);
            let Some(run) = versions.get_mut(id) else {
                return Ok(false);
            };
            if run.record.desired != from {
                return Ok(false);
            }
            let wind_changed = run.wind_down_above != step.wind_down_above;
            run.wind_down_above = step.wind_down_above;
            let count_changed = run.record.desired != step.desired;
            run.record.desired = step.desired;
            (run.record.clone(), count_changed, wind_changed)
        };
        if count_changed {
            self.inner.store.put_compute(&record)?;
            self.reconcile(id);
        }
        if wind_changed {
            (self.inner.on_change)();
        }
        Ok(true)
    }

    /// How many instances of `id` are meant to run, and the slots that exist now with their
    /// instance ids, lowest first (`None` for a version it does not run).
    pub fn slots(&self, id: &DeploymentId) -> Option<(u32, Vec<InstanceId>)> {
        let versions = lock(&self.inner.versions);
        let run = versions.get(id)?;
        let slots = run
            .slots
            .values()
            .map(|slot| slot.state.instance.clone())
            .collect();
        Some((run.record.desired, slots))
    }

    /// Starts missing slots `1..=desired` and asks slots above `desired` to stop.
    fn reconcile(&self, id: &DeploymentId) {
        self.reconcile_adopting(id, BTreeMap::new());
    }

    /// [`Supervisor::reconcile`], where the missing slots named in `adopted` take over a process
    /// that already runs instead of starting one.
    fn reconcile_adopting(&self, id: &DeploymentId, mut adopted: BTreeMap<InstanceId, Adopted>) {
        let mut versions = lock(&self.inner.versions);
        let Some(run) = versions.get_mut(id) else {
            return;
        };
        // Forget slots whose task ended (stopped on request).
        run.slots.retain(|_, slot| !slot.task.is_finished());
        let desired = run.record.desired;
        for n in 1..=desired {
            if run.slots.contains_key(&n) {
                continue;
            }
            let instance =
                InstanceId::new(&format!("i{n}")).expect("i<number> is a valid instance id");
            let log_path = self
                .inner
                .logs_dir
                .join(id.as_str())
                .join(format!("{instance}.log"));
            let state = Arc::new(InstanceState {
                instance,
                port: AtomicU16::new(0),
                pid: AtomicU32::new(0),
                running: AtomicBool::new(false),
                healthy: AtomicBool::new(false),
                app_sessions: AtomicU64::new(u64::MAX),
                restarts: AtomicU32::new(0),
                problem: Mutex::new(None),
                log_path,
            });
            let (stop, stop_rx) = watch::channel(false);
            let monitor = Monitor {
                inner: self.inner.clone(),
                id: id.clone(),
                record: run.record.clone(),
                adopted: adopted.remove(&state.instance),
                state: state.clone(),
                stop: stop_rx,
            };
            let task = tokio::spawn(monitor.run());
            run.slots.insert(n, Slot { state, stop, task });
        }
        for (n, slot) in run.slots.iter() {
            if *n > desired {
                slot.stop.send_replace(true);
            }
        }
    }

    /// Stops every instance of `id`, waits for them to exit, and forgets its compute.
    pub async fn delete(&self, id: &DeploymentId) -> Result<(), HostError> {
        let run = lock(&self.inner.versions).remove(id);
        if let Some(run) = run {
            stop_slots(run.slots).await;
        }
        self.inner.store.delete_compute(id)?;
        (self.inner.on_change)();
        Ok(())
    }

    /// Stops every instance of every version (the daemon is shutting down) but keeps the compute
    /// records, so the next daemon starts the same instances again.
    pub async fn shutdown(&self) {
        let runs: Vec<VersionRun> = {
            let mut versions = lock(&self.inner.versions);
            std::mem::take(&mut *versions).into_values().collect()
        };
        let all: Vec<_> = runs
            .into_iter()
            .flat_map(|r| r.slots.into_values())
            .collect();
        stop_slots_vec(all).await;
        (self.inner.on_change)();
    }

    /// The compute of each of `ids` that has any.
    pub fn observe(
        &self,
        ids: &[DeploymentId],
        sessions: impl Fn(&DeploymentId, &InstanceId) -> u64,
    ) -> BTreeMap<DeploymentId, ComputeStatus> {
        let versions = lock(&self.inner.versions);
        let mut out = BTreeMap::new();
        for id in ids {
            let Some(run) = versions.get(id) else {
                continue;
            };
            let mut status = ComputeStatus {
                desired: run.record.desired,
                ..ComputeStatus::default()
            };
            let mut total = 0u64;
            for slot in run.slots.values() {
                let s = &slot.state;
                if s.running() {
                    status.running += 1;
                    status.instances.push(s.instance.clone());
                    total += sessions(id, &s.instance) + s.app_sessions().unwrap_or(0);
                    if s.healthy() {
                        status.healthy += 1;
                    }
                }
            }
            status.sessions = Some(total);
            out.insert(id.clone(), status);
        }
        out
    }

    /// Every version with compute.
    pub fn list(&self) -> Vec<DeploymentId> {
        lock(&self.inner.versions).keys().cloned().collect()
    }

    /// Every instance of every version, for the router and the status page.
    pub fn instances(&self) -> Vec<InstanceView> {
        let versions = lock(&self.inner.versions);
        versions
            .iter()
            .flat_map(|(id, run)| {
                run.slots.iter().map(|(n, slot)| InstanceView {
                    id: id.clone(),
                    state: slot.state.clone(),
                    winding_down: run.wind_down_above.is_some_and(|above| *n > above),
                })
            })
            .collect()
    }

    /// The last `lines` log lines of `id`'s instances, a failing instance's first.
    pub fn recent_logs(&self, id: &DeploymentId, lines: usize) -> Vec<String> {
        let dir = self.inner.logs_dir.join(id.as_str());
        let mut files: Vec<(bool, u32, String, PathBuf)> = Vec::new();
        let states: BTreeMap<String, Arc<InstanceState>> = self
            .instances()
            .into_iter()
            .filter(|v| &v.id == id)
            .map(|v| (v.state.instance.to_string(), v.state))
            .collect();
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for entry in rd.flatten() {
                let path = entry.path();
                let Some(instance) = path.file_stem().and_then(|s| s.to_str()).map(str::to_owned)
                else {
                    continue;
                };
                let (healthy, restarts) = states
                    .get(&instance)
                    .map_or((false, 0), |s| (s.healthy(), s.restarts()));
                files.push((healthy, u32::MAX - restarts, instance, path));
            }
        }
        // Unhealthy first, then the most restarted, then by instance id.
        files.sort();
        let Some((_, _, instance, path)) = files.first() else {
            return Vec::new();
        };
        let text = std::fs::read_to_string(path).unwrap_or_default();
        tail_lines(&text, lines)
            .into_iter()
            .map(|l| format!("[{instance}] {l}"))
            .collect()
    }
}

async fn stop_slots(slots: BTreeMap<u32, Slot>) {
    stop_slots_vec(slots.into_values().collect()).await;
}

async fn stop_slots_vec(slots: Vec<Slot>) {
    for slot in &slots {
        slot.stop.send_replace(true);
    }
    for slot in slots {
        if let Err(e) = slot.task.await {
            tracing::error!(error = %e, "instance monitor ended abnormally");
        }
    }
}

/// The task that keeps one instance running.
struct Monitor {
    inner: Arc<Inner>,
    id: DeploymentId,
    record: ComputeRecord,
    /// A process a previous daemon started, taken over by the first run instead of a spawn.
    adopted: Option<Adopted>,
    state: Arc<InstanceState>,
    stop: watch::Receiver<bool>,
}

/// A running process of an instance that a previous daemon started and recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Adopted {
    /// Its process (and process group) id.
    pub pid: u32,
    /// Its start time, which it must still have for the id to still name it.
    pub start_time: u64,
    /// The port it listens on.
    pub port: u16,
}

/// What a restarted daemon does with one recorded process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// It is the recorded process and its instance is still wanted: keep it running.
    Adopt(Adopted),
    /// Anything else: stop whatever of that instance still runs in its group (found by
    /// environment, so an unrelated process that reused the id is never signalled) and start
    /// the instance afresh if it is wanted.
    Stop,
}

/// Decides the fate of a recorded process from what `/proc` says of its pid now (`None`: no such
/// process) and this boot's id. Only the very process that was recorded is adopted: alive,
/// started at the recorded time in this boot (a reused pid has another start time; a start time
/// of an earlier boot means nothing now), leading its own process group, and of an instance the
/// compute records still want. A record without a start time or boot id (written by an older
/// daemon) cannot be checked and is never adopted.
pub fn adoption(
    record: &ProcessRecord,
    now: Option<procfs::Stat>,
    wanted: bool,
    boot_id: Option<&str>,
) -> Fate {
    match (record.start_time, now) {
        (Some(recorded), Some(stat))
            if wanted
                && boot_id.is_some()
                && record.boot_id.as_deref() == boot_id
                && !stat.zombie()
                && stat.start_time == recorded
                && stat.pgrp == record.pid
                && record.port != 0 =>
        {
            Fate::Adopt(Adopted {
                pid: record.pid,
                start_time: recorded,
                port: record.port,
            })
        }
        _ => Fate::Stop,
    }
}

/// The slot number of instance `iN`.
fn instance_slot(instance: &InstanceId) -> Option<u32> {
    instance.as_str().strip_prefix('i')?.parse().ok()
}

/// How the monitor knows that the process it watches has exited.
enum Running {
    /// A child of this daemon: waited for.
    Child(tokio::process::Child),
    /// A process adopted from a previous daemon: polled through `/proc`.
    Adopted { start_time: u64 },
}

impl Running {
    /// Resolves when process `pid` has exited, with a description of how.
    async fn exited(&mut self, pid: u32) -> String {
        match self {
            Running::Child(child) => match child.wait().await {
                Ok(s) => format!("exited ({s})"),
                Err(e) => format!("could not be waited for: {e}"),
            },
            Running::Adopted { start_time } => loop {
                tokio::time::sleep(ADOPTED_POLL).await;
                if !procfs::same_group_leader(pid, *start_time) {
                    break "exited (adopted from a previous daemon, so its exit status is unknown)"
                        .to_owned();
                }
            },
        }
    }

    fn child(&mut self) -> Option<&mut tokio::process::Child> {
        match self {
            Running::Child(child) => Some(child),
            Running::Adopted { .. } => None,
        }
    }
}

enum RunEnd {
    Stopped,
    Exited(String),
}

impl Monitor {
    async fn run(mut self) {
        let mut backoff = FIRST_BACKOFF;
        loop {
            if *self.stop.borrow() {
                break;
            }
            let started = Instant::now();
            let end = match self.spawn_and_watch().await {
                Ok(end) => end,
                Err(e) => RunEnd::Exited(format!("could not start: {e}")),
            };
            self.state.running.store(false, Ordering::Relaxed);
            self.state.healthy.store(false, Ordering::Relaxed);
            self.state.pid.store(0, Ordering::Relaxed);
            (self.inner.on_change)();
            let RunEnd::Exited(why) = end else {
                break;
            };
            if started.elapsed() >= STABLE_RUN {
                backoff = FIRST_BACKOFF;
            }
            self.state.restarts.fetch_add(1, Ordering::Relaxed);
            self.state.set_problem(Some(why.clone()));
            self.log_line(&format!("{why}; restarting in {}ms", backoff.as_millis()));
            tracing::warn!(id = %self.id, instance = %self.state.instance, "{why}; restarting in {}ms", backoff.as_millis());
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop_requested(&mut self.stop) => break,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    fn log_line(&self, message: &str) {
        if let Some(parent) = self.state.log_path.parent() {
            let _ = crate::private::private_dir(parent);
        }
        if let Ok(mut f) = crate::private::private_append(&self.state.log_path) {
            let _ = writeln!(f, "flotilla: {message}");
        }
    }

    /// Starts the instance's process, or takes over the adopted one, and records it.
    fn spawn(&mut self) -> Result<(u32, Running), HostError> {
        if let Some(a) = self.adopted.take() {
            self.state.port.store(a.port, Ordering::Relaxed);
            self.log_line(&format!(
                "adopted pid {} on port {} from a previous daemon",
                a.pid, a.port
            ));
            return Ok((
                a.pid,
                Running::Adopted {
                    start_time: a.start_time,
                },
            ));
        }
        let port = pick_port(self.state.port.load(Ordering::Relaxed)).map_err(HostError::io(
            "choose a free port for",
            &self.state.log_path,
        ))?;
        self.state.port.store(port, Ordering::Relaxed);
        let log_path = self.state.log_path.clone();
        if let Some(parent) = log_path.parent() {
            crate::private::private_dir(parent)
                .map_err(HostError::io("create log directory", parent))?;
        }
        let log = crate::private::private_append(&log_path)
            .map_err(HostError::io("open instance log", &log_path))?;
        let err_log = log
            .try_clone()
            .map_err(HostError::io("open instance log", &log_path))?;
        let launch = &self.record.launch;
        let child = group::spawn_in_own_group(
            tokio::process::Command::new("sh")
                .arg("-c")
                .arg(&launch.command)
                .current_dir(&launch.release_dir)
                // The version's environment is what its deploy declared, not whatever the command
                // that first started the daemon happened to have: only the basics pass through.
                .env_clear()
                .envs(inherited_env(std::env::vars_os()))
                .envs(self.record.spec.env.values())
                .env("PORT", port.to_string())
                .env("FLOTILLA_DEPLOYMENT_NAME", self.inner.name.as_str())
                .env("FLOTILLA_DEPLOYMENT_ID", self.id.as_str())
                .env("FLOTILLA_INSTANCE", self.state.instance.as_str())
                .env("FLOTILLA_RELEASE_DIR", &launch.release_dir)
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(err_log)
                .kill_on_drop(false),
        )
        .map_err(HostError::io("start instance in", &launch.release_dir))?;
        let pid = child.id().unwrap_or(0);
        // Not the command line: a value written inline there (a token) must not reach the log.
        self.log_line(&format!("started pid {pid} on port {port}"));
        Ok((pid, Running::Child(child)))
    }

    async fn spawn_and_watch(&mut self) -> Result<RunEnd, HostError> {
        let adopting = self.adopted.is_some();
        let (pid, mut running) = self.spawn()?;
        if let Running::Child(child) = &mut running {
            // Recorded before it can serve, with no await since the spawn: a daemon that dies or
            // exits from here on finds this group, and can tell it from a later user of its pid.
            let record = ProcessRecord {
                id: self.id.clone(),
                instance: self.state.instance.clone(),
                pid,
                start_time: procfs::stat(pid).map(|s| s.start_time),
                port: self.state.port.load(Ordering::Relaxed),
                boot_id: procfs::boot_id(),
            };
            if let Err(e) = self.inner.store.put_process(&record) {
                tracing::error!(error = %e, "could not record process {pid}; stopping it");
                stop_group(pid, Some(child), self.inner.stop_timeout).await;
                return Err(e);
            }
        }
        self.state.pid.store(pid, Ordering::Relaxed);
        self.state.running.store(true, Ordering::Relaxed);
        (self.inner.on_change)();

        let addr = self.state.addr();
        let health_path = self.record.launch.health_path.clone();
        let mut failures = 0u32;
        // An adopted process has served all along: check it at once, so routing resumes as soon
        // as the new daemon starts.
        let first_check = if adopting {
            Duration::ZERO
        } else {
            STARTING_HEALTH_INTERVAL
        };
        let mut next_check = tokio::time::Instant::now() + first_check;
        let mut stop = self.stop.clone();
        let end = loop {
            tokio::select! {
                why = running.exited(pid) => {
                    // Whatever it forked dies with it, so a restart cannot collide with leftovers.
                    let _ = group::signal_group(pid, Signal::SIGKILL);
                    break RunEnd::Exited(why);
                }
                _ = stop_requested(&mut stop) => {
                    self.state.healthy.store(false, Ordering::Relaxed);
                    (self.inner.on_change)();
                    self.log_line("stopping: SIGTERM");
                    let killed = stop_group(pid, running.child(), self.inner.stop_timeout).await;
                    if killed {
                        self.log_line(&format!("did not stop within {}s: SIGKILL", self.inner.stop_timeout.as_secs()));
                    }
                    self.log_line("stopped");
                    break RunEnd::Stopped;
                }
                _ = tokio::time::sleep_until(next_check) => {
                    let report = health::check(addr, &health_path, HEALTH_TIMEOUT).await;
                    let was = self.state.healthy();
                    self.state.app_sessions.store(report.sessions.unwrap_or(u64::MAX), Ordering::Relaxed);
                    let now_healthy = if report.healthy {
                        failures = 0;
                        true
                    } else {
                        failures += 1;
                        was && failures < UNHEALTHY_AFTER
                    };
                    if !report.healthy {
                        self.state.set_problem(report.problem.clone());
                    } else if !was {
                        self.state.set_problem(None);
                    }
                    if now_healthy != was {
                        self.state.healthy.store(now_healthy, Ordering::Relaxed);
                        (self.inner.on_change)();
                    }
                    let interval = if now_healthy { HEALTH_INTERVAL } else { STARTING_HEALTH_INTERVAL };
                    next_check = tokio::time::Instant::now() + interval;
                }
            }
        };
        if let Err(e) = self
            .inner
            .store
            .delete_process(&self.id, &self.state.instance, pid)
        {
            tracing::error!(error = %e, "could not forget process {pid}");
        }
        Ok(end)
    }
}

/// Resolves once a stop was asked for (or the supervisor is gone).
pub(crate) async fn stop_requested(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// A free loopback port: `previous` if it can still be bound, else one the kernel picks.
fn pick_port(previous: u16) -> std::io::Result<u16> {
    if previous != 0
        && let Ok(l) = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, previous))
    {
        drop(l);
        return Ok(previous);
    }
    let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(l.local_addr()?.port())
}

/// Stops a process group: SIGTERM, then wait until the leader has exited and the group is empty,
/// then SIGKILL whatever is left once `timeout` has passed. Returns whether SIGKILL was needed.
async fn stop_group(
    pgid: u32,
    child: Option<&mut tokio::process::Child>,
    timeout: Duration,
) -> bool {
    if pgid == 0 {
        return false;
    }
    group::stop_group(pgid, child, Signal::SIGTERM, timeout, Leftovers::Await)
        .await
        .killed
}

/// The live (not zombie) processes in process group `pgid` that belong to `id`'s instance `instance` (their
/// environment says so), found through `/proc`. Checking the environment keeps a reused process
/// id from getting an unrelated process killed.
fn group_members(pgid: u32, id: &DeploymentId, instance: &InstanceId) -> Vec<u32> {
    let want_id = format!("FLOTILLA_DEPLOYMENT_ID={id}");
    let want_instance = format!("FLOTILLA_INSTANCE={instance}");
    procfs::pids()
        .into_iter()
        .filter(|pid| procfs::stat(*pid).is_some_and(|s| s.pgrp == pgid && !s.zombie()))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|environ| {
                let vars: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
                vars.contains(&want_id.as_bytes()) && vars.contains(&want_instance.as_bytes())
            })
        })
        .collect()
}

/// Variables of the daemon's own environment that every instance inherits: what a shell needs
/// to find programs and speak the right language. Everything else comes from the version's
/// declared environment.
const INHERITED_VARS: &[&str] = &[
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR",
];

/// The part of `vars` (the daemon's environment) an instance inherits: [`INHERITED_VARS`] and the
/// `LC_*` locale variables.
fn inherited_env(
    vars: impl Iterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
) -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
    vars.filter(|(k, _)| {
        k.to_str()
            .is_some_and(|k| INHERITED_VARS.contains(&k) || k.starts_with("LC_"))
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Launch;
    use flotilla_core::Timestamp;
    use flotilla_engine::ports::{ImageRef, VersionSpec};

    fn id(n: u64) -> DeploymentId {
        DeploymentId::generate(Timestamp::from_secs(1_764_000_000 + n), n)
    }

    struct Fixture {
        _tmp: tempfile::TempDir,
        dir: PathBuf,
        store: Arc<Store>,
        sup: Supervisor,
    }

    fn fixture() -> Fixture {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let name = DeploymentName::new("web").expect("valid");
        let store = Arc::new(Store::open(&dir.join("state.db"), &name).expect("open"));
        let sup = Supervisor::new(
            name,
            store.clone(),
            dir.join("logs"),
            Duration::from_secs(2),
            Arc::new(|| {}),
        );
        Fixture {
            _tmp: tmp,
            dir,
            store,
            sup,
        }
    }

    fn record(f: &Fixture, n: u64, command: &str, desired: u32) -> ComputeRecord {
        ComputeRecord {
            spec: VersionSpec {
                name: DeploymentName::new("web").expect("valid"),
                id: id(n),
                image: ImageRef(f.dir.display().to_string()),
                instances: desired,
                env: Default::default(),
            },
            launch: Launch {
                command: command.to_owned(),
                release_dir: f.dir.clone(),
                health_path: "/healthz".to_owned(),
            },
            desired,
        }
    }

    async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn alive(pid: u32) -> bool {
        // A zombie counts as gone: read its state from /proc.
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rfind(')')
                    .is_some_and(|i| !s[i + 1..].trim_start().starts_with('Z'))
            })
            .unwrap_or(false)
    }

    #[tokio::test]
    async fn runs_instances_with_their_environment_and_stops_their_children() {
        let f = fixture();
        let cmd = "echo \"port=$PORT name=$FLOTILLA_DEPLOYMENT_NAME id=$FLOTILLA_DEPLOYMENT_ID inst=$FLOTILLA_INSTANCE\"; sleep 60 & sleep 60";
        f.sup.create(record(&f, 1, cmd, 2)).expect("create");
        wait_until("two running", || {
            f.sup.observe(&[id(1)], |_, _| 0)[&id(1)].running == 2
        })
        .await;
        let views = f.sup.instances();
        assert_eq!(views.len(), 2);
        let pids: Vec<u32> = views.iter().filter_map(|v| v.state.pid()).collect();
        assert_eq!(f.store.list_processes().expect("list").len(), 2);
        let log = f.dir.join("logs").join(id(1).as_str()).join("i2.log");
        wait_until("log written", || {
            std::fs::read_to_string(&log).is_ok_and(|t| t.contains("inst=i2"))
        })
        .await;
        let text = std::fs::read_to_string(&log).expect("log");
        assert!(text.contains(&format!("name=web id={}", id(1))), "{text}");
        let children: Vec<u32> = pids
            .iter()
            .flat_map(|p| {
                group_members(*p, &id(1), &InstanceId::new("i1").expect("valid"))
                    .into_iter()
                    .chain(group_members(
                        *p,
                        &id(1),
                        &InstanceId::new("i2").expect("valid"),
                    ))
            })
            .collect();
        assert!(
            children.len() >= 4,
            "sh plus two sleeps per group: {children:?}"
        );
        f.sup.delete(&id(1)).await.expect("delete");
        for p in children {
            assert!(!alive(p), "process {p} survived the stop");
        }
        assert!(f.store.list_processes().expect("list").is_empty());
        assert!(f.store.list_compute().expect("list").is_empty());
    }

    #[tokio::test]
    async fn instances_see_their_declared_environment_and_not_the_daemons() {
        use flotilla_engine::ports::{AppEnv, SecretSource};
        let f = fixture();
        // HOSTNAME is in this test process's environment on most machines; FLOTILLA_TEST_LEAK is
        // set for sure. Neither is declared, so neither may reach the instance.
        let leaked = std::env::vars()
            .find(|(k, _)| !INHERITED_VARS.contains(&k.as_str()) && !k.starts_with("LC_"));
        let cmd = "echo \"feature=$FEATURE token=$API_TOKEN path=${PATH:+set}\"; env | cut -d= -f1 | sort | tr '\\n' ' '; echo; sleep 60";
        let mut rec = record(&f, 9, cmd, 1);
        rec.spec.env = AppEnv {
            vars: [("FEATURE".to_owned(), "second".to_owned())].into(),
            secrets: [(
                "API_TOKEN".to_owned(),
                SecretSource::Value("s3cr3t-value".to_owned()),
            )]
            .into(),
        };
        f.sup.create(rec).expect("create");
        let log = f.dir.join("logs").join(id(9).as_str()).join("i1.log");
        wait_until("log written", || {
            std::fs::read_to_string(&log).is_ok_and(|t| t.contains("PORT"))
        })
        .await;
        let text = std::fs::read_to_string(&log).expect("log");
        assert!(
            text.contains("feature=second token=s3cr3t-value path=set"),
            "{text}"
        );
        if let Some((var, _)) = leaked {
            let names = text.lines().find(|l| l.contains("PORT")).unwrap_or("");
            assert!(
                !names.split_whitespace().any(|n| n == var),
                "{var} leaked from the daemon's environment: {names}"
            );
        }
        // flotilla's own lines never carry the command (which could hold an inline value).
        for line in text.lines().filter(|l| l.starts_with("flotilla: ")) {
            assert!(!line.contains("echo"), "{line}");
        }
        f.sup.delete(&id(9)).await.expect("delete");
    }

    #[tokio::test]
    async fn crashed_instances_restart_with_backoff() {
        let f = fixture();
        f.sup
            .create(record(&f, 2, "echo boom; exit 7", 1))
            .expect("create");
        wait_until("two restarts", || {
            f.sup.instances()[0].state.restarts() >= 2
        })
        .await;
        let logs = f.sup.recent_logs(&id(2), 10);
        assert!(logs.iter().any(|l| l.contains("boom")), "{logs:?}");
        assert!(
            logs.iter().any(|l| l.contains("exit status: 7")),
            "{logs:?}"
        );
        f.sup.delete(&id(2)).await.expect("delete");
    }

    #[tokio::test]
    async fn sigkill_after_stop_timeout() {
        let f = fixture();
        f.sup
            .create(record(
                &f,
                3,
                "trap '' TERM; while true; do sleep 0.1; done",
                1,
            ))
            .expect("create");
        wait_until("running", || {
            f.sup.instances().first().is_some_and(|v| v.state.running())
        })
        .await;
        let started = Instant::now();
        f.sup.delete(&id(3)).await.expect("delete");
        assert!(
            started.elapsed() >= Duration::from_secs(2),
            "waited for the stop timeout"
        );
        let log = std::fs::read_to_string(f.dir.join("logs").join(id(3).as_str()).join("i1.log"))
            .expect("log");
        assert!(log.contains("SIGKILL"), "{log}");
    }

    /// A "crashed daemon": its monitors are gone, its processes still run.
    fn crash(sup: &Supervisor) {
        for run in lock(&sup.inner.versions).values() {
            for slot in run.slots.values() {
                slot.task.abort();
            }
        }
    }

    fn second_daemon(f: &Fixture) -> Supervisor {
        Supervisor::new(
            DeploymentName::new("web").expect("valid"),
            f.store.clone(),
            f.dir.join("logs"),
            Duration::from_secs(2),
            Arc::new(|| {}),
        )
    }

    fn pids_of(sup: &Supervisor) -> BTreeMap<String, u32> {
        sup.instances()
            .iter()
            .filter_map(|v| Some((v.state.instance.to_string(), v.state.pid()?)))
            .collect()
    }

    /// A static file server answering `/` with 200: enough for health checks.
    const SERVER: &str = "exec python3 -m http.server \"$PORT\" --bind 127.0.0.1";

    #[tokio::test]
    async fn a_restarted_daemon_adopts_running_instances_keeps_checking_them_and_stops_unwanted_ones()
     {
        let f = fixture();
        let mut rec = record(&f, 4, SERVER, 2);
        rec.launch.health_path = "/".to_owned();
        f.sup.create(rec.clone()).expect("create");
        wait_until("two healthy", || {
            f.sup.observe(&[id(4)], |_, _| 0)[&id(4)].healthy == 2
        })
        .await;
        let before = pids_of(&f.sup);
        let ports: Vec<u16> = f
            .sup
            .instances()
            .iter()
            .map(|v| v.state.addr().port())
            .collect();
        crash(&f.sup);
        // While the daemon was down, the version was scaled to one instance.
        f.store
            .put_compute(&ComputeRecord { desired: 1, ..rec })
            .expect("scale the record");

        let sup2 = second_daemon(&f);
        let started = Instant::now();
        assert_eq!(sup2.restore().await.expect("restore"), vec![id(4)]);
        wait_until("the adopted instance healthy", || {
            sup2.observe(&[id(4)], |_, _| 0)[&id(4)].healthy == 1
        })
        .await;
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "healthy again after {:?}",
            started.elapsed()
        );
        let views = sup2.instances();
        assert_eq!(views.len(), 1);
        assert_eq!(
            views[0].state.pid(),
            Some(before["i1"]),
            "i1 kept its process"
        );
        assert_eq!(views[0].state.addr().port(), ports[0], "and its port");
        assert_eq!(views[0].state.restarts(), 0);
        assert!(!alive(before["i2"]), "i2, no longer wanted, was stopped");
        let processes = f.store.list_processes().expect("list");
        assert_eq!(processes.len(), 1);
        assert_eq!(processes[0].pid, before["i1"]);
        let log = std::fs::read_to_string(f.dir.join("logs").join(id(4).as_str()).join("i1.log"))
            .expect("log");
        assert!(
            log.contains(&format!("adopted pid {}", before["i1"])),
            "{log}"
        );

        // Its exit is noticed without being its parent, and it is started again.
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(before["i1"] as i32),
            Signal::SIGKILL,
        )
        .expect("kill the adopted process");
        wait_until("restarted", || {
            sup2.instances()[0].state.restarts() == 1 && sup2.instances()[0].state.healthy()
        })
        .await;
        assert_ne!(sup2.instances()[0].state.pid(), Some(before["i1"]));
        sup2.delete(&id(4)).await.expect("delete");
        assert!(f.store.list_processes().expect("list").is_empty());
    }

    #[tokio::test]
    async fn an_adopted_instance_that_ignores_sigterm_is_killed_after_the_stop_timeout() {
        let f = fixture();
        f.sup
            .create(record(
                &f,
                5,
                "trap '' TERM; while true; do sleep 0.1; done",
                1,
            ))
            .expect("create");
        wait_until("running", || {
            f.sup.instances().first().is_some_and(|v| v.state.running())
        })
        .await;
        let pid = pids_of(&f.sup)["i1"];
        crash(&f.sup);
        let sup2 = second_daemon(&f);
        sup2.restore().await.expect("restore");
        wait_until("watching", || pids_of(&sup2).contains_key("i1")).await;
        assert_eq!(pids_of(&sup2)["i1"], pid, "adopted");
        let started = Instant::now();
        sup2.delete(&id(5)).await.expect("delete");
        assert!(
            started.elapsed() >= Duration::from_secs(2),
            "waited for the stop timeout"
        );
        assert!(!alive(pid), "the adopted group was killed");
        let log = std::fs::read_to_string(f.dir.join("logs").join(id(5).as_str()).join("i1.log"))
            .expect("log");
        assert!(log.contains("SIGKILL"), "{log}");
    }

    #[tokio::test]
    async fn a_released_instance_keeps_running_and_the_next_daemon_adopts_it() {
        let f = fixture();
        f.sup.create(record(&f, 6, "sleep 60", 1)).expect("create");
        wait_until("running", || {
            f.sup.instances().first().is_some_and(|v| v.state.running())
        })
        .await;
        let pid = pids_of(&f.sup)["i1"];
        f.sup.release();
        assert!(f.sup.instances().is_empty());
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(alive(pid), "release leaves the process running");
        let sup2 = second_daemon(&f);
        sup2.restore().await.expect("restore");
        wait_until("watching", || pids_of(&sup2).contains_key("i1")).await;
        assert_eq!(pids_of(&sup2)["i1"], pid);
        sup2.shutdown().await;
        assert!(!alive(pid), "shutdown stops an adopted process too");
    }

    fn check_adoption(
        start_time: Option<u64>,
        now: Option<(char, u32, u64)>,
        wanted: bool,
        boot: &str,
    ) -> Fate {
        let record = ProcessRecord {
            id: id(1),
            instance: InstanceId::new("i1").expect("valid"),
            pid: 4242,
            start_time,
            port: 40001,
            boot_id: Some("boot-1".to_owned()),
        };
        let now = now.map(|(state, pgrp, start_time)| procfs::Stat {
            state,
            ppid: 1,
            pgrp,
            start_time,
        });
        adoption(&record, now, wanted, Some(boot))
    }

    #[test]
    fn only_the_recorded_process_of_a_wanted_instance_is_adopted() {
        let adopted = Fate::Adopt(Adopted {
            pid: 4242,
            start_time: 777,
            port: 40001,
        });
        // (recorded start time, what /proc says now: state, pgrp, start time, wanted, this boot)
        // -> fate
        let table = [
            (Some(777), Some(('S', 4242, 777)), true, "boot-1", adopted),
            // Recorded in an earlier boot: the same pid and start time name another process.
            (
                Some(777),
                Some(('S', 4242, 777)),
                true,
                "boot-2",
                Fate::Stop,
            ),
            // The pid was reused by a process that started later: never adopted.
            (
                Some(777),
                Some(('S', 4242, 901)),
                true,
                "boot-1",
                Fate::Stop,
            ),
            (
                Some(777),
                Some(('S', 4242, 776)),
                true,
                "boot-1",
                Fate::Stop,
            ),
            // Gone, or a zombie.
            (Some(777), None, true, "boot-1", Fate::Stop),
            (
                Some(777),
                Some(('Z', 4242, 777)),
                true,
                "boot-1",
                Fate::Stop,
            ),
            // No longer leading its own group.
            (Some(777), Some(('S', 1, 777)), true, "boot-1", Fate::Stop),
            // Not wanted any more (scaled down, version deleted).
            (
                Some(777),
                Some(('S', 4242, 777)),
                false,
                "boot-1",
                Fate::Stop,
            ),
            // Recorded by an older daemon, without a start time: cannot be checked.
            (None, Some(('S', 4242, 777)), true, "boot-1", Fate::Stop),
        ];
        for (recorded, now, wanted, boot, want) in table {
            assert_eq!(
                check_adoption(recorded, now, wanted, boot),
                want,
                "{recorded:?} {now:?} wanted={wanted} {boot}"
            );
        }
    }

    #[tokio::test]
    async fn a_recorded_pid_with_another_start_time_is_not_adopted_nor_signalled() {
        let f = fixture();
        f.store
            .put_compute(&record(&f, 7, "sleep 60", 1))
            .expect("record compute");
        // An unrelated process leading its own group now has the recorded pid, but it started at
        // another time than the one recorded: the pid was reused.
        let mut unrelated = std::process::Command::new("sleep");
        std::os::unix::process::CommandExt::process_group(&mut unrelated, 0);
        let mut unrelated = unrelated.arg("30").spawn().expect("spawn sleep");
        let pid = unrelated.id();
        let real = procfs::stat(pid).expect("stat").start_time;
        f.store
            .put_process(&ProcessRecord {
                id: id(7),
                instance: InstanceId::new("i1").expect("valid"),
                pid,
                start_time: Some(real + 1),
                port: 40002,
                boot_id: procfs::boot_id(),
            })
            .expect("record process");

        f.sup.restore().await.expect("restore");
        wait_until("a fresh instance", || {
            f.sup
                .instances()
                .first()
                .and_then(|v| v.state.pid())
                .is_some()
        })
        .await;
        assert_ne!(
            pids_of(&f.sup)["i1"],
            pid,
            "a fresh process, not the reused pid"
        );
        assert!(alive(pid), "the unrelated process was left alone");
        let _ = unrelated.kill();
        let _ = unrelated.wait();
        f.sup.delete(&id(7)).await.expect("delete");
    }
}
