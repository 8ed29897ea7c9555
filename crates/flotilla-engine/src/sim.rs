//! The simulated provider: every port in memory, a virtual clock, and deterministic fault
//! injection. A test tool, not a provider users can pick.
//!
//! One [`Sim`] is one shared world: compute, routing, images, the state store, the deploy lock and
//! the clock. [`Sim::ports`] hands out [`Ports`] over it; the test keeps the `Sim` to steer time,
//! instance behaviour and faults, and to inspect what exists ([`Sim::view`], [`WorldView::orphans`]).
//!
//! Time is virtual: [`Clock::sleep`] and [`Sim::advance`] move it forward instantly, and the world
//! evolves with it (instances start, get healthy, stop; scheduled events fire). Nothing here reads
//! the real clock or uses randomness, so every run of a test is the same.
//!
//! Faults: every port call except [`Clock::now`] is counted. A fault armed with [`Sim::arm`] (or
//! [`Sim::fail_call`], [`Sim::crash_after_call`]) triggers on the k-th call after arming, or on the
//! next call of a named operation. `Fail` makes that call return an error without effect; `CrashAfter`
//! lets the call take effect and then stops the simulated process: every later call fails with
//! [`ErrorKind::Unavailable`] and changes nothing until [`Sim::revive`], as if the CLI had died.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use flotilla_core::drain::Readiness;
use flotilla_core::routing::{
    RouteDecision, RouteRequest, RoutingError, RoutingTable, WeightedTarget, route,
};
use flotilla_core::{DeploymentId, DeploymentName, InstanceId, Timestamp, VersionState};

use crate::events::Progress;
use crate::ports::{
    AppEnv, Clock, Compute, ComputeStatus, ErrorKind, ImageRef, ImageRequest, ImageSource,
    LockInfo, LockOutcome, PortError, Ports, Routing, StateStore, VersionRecord, VersionSpec,
};

/// How the instances of a version behave once started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behavior {
    /// Running `start` after starting, healthy `healthy` after that.
    Healthy {
        /// From start to running.
        start: Duration,
        /// From running to healthy.
        healthy: Duration,
    },
    /// Running `start` after starting, but never passes its health check.
    NeverHealthy {
        /// From start to running.
        start: Duration,
    },
    /// Exits at once: never running, never healthy.
    Crash,
}

impl Default for Behavior {
    /// Running after 3 s, healthy 4 s later.
    fn default() -> Self {
        Behavior::Healthy {
            start: Duration::from_secs(3),
            healthy: Duration::from_secs(4),
        }
    }
}

/// Which call an armed fault triggers on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// The k-th counted call after arming (1-based).
    Call(u64),
    /// The next call of this operation, e.g. `compute.create` (see [`Sim::call_log`] for names).
    Operation(String),
}

/// What an armed fault does when it triggers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultMode {
    /// The call fails with this kind and has no effect.
    Fail(ErrorKind),
    /// The call takes effect; then the process "dies": every later call fails with
    /// [`ErrorKind::Unavailable`] and has no effect until [`Sim::revive`].
    CrashAfter,
}

/// Which kind of resource an orphan is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ResourceKind {
    /// Instances (a service on AWS, processes on the host).
    Compute,
    /// An affinity rule (serving or retired).
    Affinity,
    /// A target of the default forward.
    DefaultTarget,
    /// A prepared image.
    Image,
}

/// A resource that no record owns: only a bug or someone outside flotilla can make one.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Orphan {
    /// The version the resource belongs to.
    pub id: DeploymentId,
    /// What it is.
    pub kind: ResourceKind,
}

/// Everything that exists in the simulated world at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorldView {
    /// The virtual time.
    pub now: Timestamp,
    /// Every version with compute, as [`Compute::observe`] would report it.
    pub compute: BTreeMap<DeploymentId, ComputeStatus>,
    /// The routing table.
    pub routing: RoutingTable,
    /// Every prepared image.
    pub images: BTreeMap<DeploymentId, ImageRef>,
    /// Every record.
    pub records: BTreeMap<DeploymentId, VersionRecord>,
    /// The deploy lock, if held (expired or not).
    pub lock: Option<LockInfo>,
}

impl WorldView {
    /// Resources without a record. A record whose resources are gone is not an orphan (see
    /// [`WorldView::unfinished`]).
    pub fn orphans(&self) -> Vec<Orphan> {
        let mut found = BTreeSet::new();
        let mut check = |id: &DeploymentId, kind| {
            if !self.records.contains_key(id) {
                found.insert(Orphan {
                    id: id.clone(),
                    kind,
                });
            }
        };
        for id in self.compute.keys() {
            check(id, ResourceKind::Compute);
        }
        for id in self.routing.affinities().keys() {
            check(id, ResourceKind::Affinity);
        }
        for target in self.routing.default_targets() {
            check(&target.id, ResourceKind::DefaultTarget);
        }
        for id in self.images.keys() {
            check(id, ResourceKind::Image);
        }
        found.into_iter().collect()
    }

    /// Records a re-run or the reaper still has to finish: deploying, retired or failed.
    pub fn unfinished(&self) -> Vec<DeploymentId> {
        self.records
            .values()
            .filter(|r| {
                matches!(
                    r.version.state,
                    VersionState::Deploying | VersionState::Retired | VersionState::Failed
                )
            })
            .map(|r| r.version.id.clone())
            .collect()
    }

    /// Versions recorded in `state`, oldest first.
    pub fn in_state(&self, state: VersionState) -> Vec<DeploymentId> {
        self.records
            .values()
            .filter(|r| r.version.state == state)
            .map(|r| r.version.id.clone())
            .collect()
    }

    /// The ids in the default forward.
    pub fn default_ids(&self) -> Vec<DeploymentId> {
        self.routing
            .default_targets()
            .iter()
            .map(|t| t.id.clone())
            .collect()
    }

    /// Where a request with no affinity goes: the version, or `None` for "no version deployed".
    pub fn fresh_target(&self) -> Option<DeploymentId> {
        match route(&self.routing, &RouteRequest::default()) {
            RouteDecision::Fresh(id) | RouteDecision::Pinned(id) => Some(id.clone()),
            RouteDecision::Gone { .. } | RouteDecision::NoVersion => None,
        }
    }

    /// Whether a request pinned to `id` reaches `id` and `id` has a healthy instance to answer it.
    pub fn serves(&self, id: &DeploymentId) -> bool {
        let pinned = route(
            &self.routing,
            &RouteRequest {
                header: Some(id.as_str()),
                ..RouteRequest::default()
            },
        ) == RouteDecision::Pinned(id);
        pinned && self.compute.get(id).is_some_and(|c| c.healthy > 0)
    }

    /// Whether nothing at all exists: no compute, routing, images or records.
    pub fn is_empty(&self) -> bool {
        self.compute.is_empty()
            && self.routing.affinities().is_empty()
            && self.routing.default_targets().is_empty()
            && self.images.is_empty()
            && self.records.is_empty()
    }
}

/// The simulated provider. Cheap to clone: clones share one world.
#[derive(Clone)]
pub struct Sim {
    world: Arc<Mutex<World>>,
}

impl Sim {
    /// An empty world for deployment `name` whose clock starts at `start`.
    pub fn new(name: DeploymentName, start: Timestamp) -> Self {
        Sim {
            world: Arc::new(Mutex::new(World::new(name, start))),
        }
    }

    /// The ports of this world, for an [`crate::Engine`]. Every call goes through the fault injector.
    pub fn ports(&self) -> Ports {
        let port = Arc::new(SimPort {
            world: Arc::clone(&self.world),
        });
        Ports {
            compute: port.clone(),
            routing: port.clone(),
            state: port.clone(),
            images: port.clone(),
            clock: port,
        }
    }

    fn world(&self) -> MutexGuard<'_, World> {
        lock_world(&self.world)
    }

    /// The virtual time.
    pub fn now(&self) -> Timestamp {
        self.world().now
    }

    /// Moves virtual time forward by `d`; instances evolve and scheduled events fire.
    pub fn advance(&self, d: Duration) {
        let mut w = self.world();
        let to = w.now.plus(d);
        w.advance_to(to);
    }

    /// How instances of versions without their own behaviour behave (affects instances started
    /// from now on).
    pub fn set_default_behavior(&self, behavior: Behavior) {
        self.world().default_behavior = behavior;
    }

    /// How instances of `id` behave (affects instances started from now on).
    pub fn set_behavior(&self, id: &DeploymentId, behavior: Behavior) {
        self.world().behaviors.insert(id.clone(), behavior);
    }

    /// How long a stopped instance keeps running (counted in `running`, not healthy). Default 0.
    pub fn set_stop_delay(&self, d: Duration) {
        self.world().stop_delay = d;
    }

    /// How much virtual time `ImageSource::prepare` takes for a build. Default 0.
    pub fn set_build_time(&self, d: Duration) {
        self.world().build_time = d;
    }

    /// The drain grace period of the session model. Default 30 s.
    pub fn set_grace(&self, d: Duration) {
        self.world().grace = d;
    }

    /// Sets the live sessions of every current instance of `id` (instances started later have 0).
    pub fn set_sessions(&self, id: &DeploymentId, sessions: u64) {
        if let Some(service) = self.world().compute.get_mut(id) {
            for instance in &mut service.instances {
                instance.sessions = sessions;
            }
        }
    }

    /// Counts `responses` answered by `id`, `errors` of them 5xx, each taking `latency` to its
    /// head (what [`Compute::counters`] reports, cumulatively).
    pub fn add_traffic(&self, id: &DeploymentId, responses: u64, errors: u64, latency: Duration) {
        let mut w = self.world();
        let counters = w.traffic.entry(id.clone()).or_default();
        counters.responses += responses;
        counters.errors += errors;
        let bound = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        match counters.latency.iter_mut().find(|(b, _)| *b == bound) {
            Some((_, n)) => *n += responses,
            None => {
                counters.latency.push((bound, responses));
                counters.latency.sort_unstable();
            }
        }
    }

    /// Overrides what every current instance of `id` reports as readiness; `None` goes back to the
    /// session model (`draining` once the version has drained for the grace period with no
    /// sessions, `healthy` otherwise).
    pub fn set_readiness(&self, id: &DeploymentId, readiness: Option<Readiness>) {
        if let Some(service) = self.world().compute.get_mut(id) {
            for instance in &mut service.instances {
                instance.readiness = readiness;
            }
        }
    }

    /// Sets the live sessions of one instance of `id`. Returns whether the instance exists.
    pub fn set_instance_sessions(
        &self,
        id: &DeploymentId,
        instance: &InstanceId,
        sessions: u64,
    ) -> bool {
        self.with_instance(id, instance, |i| i.sessions = sessions)
    }

    /// Overrides what one instance of `id` reports (`None`: back to the session model). Returns
    /// whether the instance exists.
    pub fn set_instance_readiness(
        &self,
        id: &DeploymentId,
        instance: &InstanceId,
        readiness: Option<Readiness>,
    ) -> bool {
        self.with_instance(id, instance, |i| i.readiness = readiness)
    }

    fn with_instance(
        &self,
        id: &DeploymentId,
        instance: &InstanceId,
        change: impl FnOnce(&mut Instance),
    ) -> bool {
        let mut w = self.world();
        let found = w
            .compute
            .get_mut(id)
            .and_then(|s| s.instances.iter_mut().find(|i| &i.id == instance));
        match found {
            Some(i) => {
                change(i);
                true
            }
            None => false,
        }
    }

    /// The app environment `id`'s compute was created with, if it has compute.
    pub fn env_of(&self, id: &DeploymentId) -> Option<AppEnv> {
        self.world().compute.get(id).map(|s| s.env.clone())
    }

    /// Adds log lines to `id`'s logs, after what its instances log by themselves.
    pub fn add_logs(&self, id: &DeploymentId, lines: &[&str]) {
        if let Some(service) = self.world().compute.get_mut(id) {
            service
                .extra_logs
                .extend(lines.iter().map(|l| (*l).to_owned()));
        }
    }

    /// Makes `id`'s running instances report these problems (as an agent whose drain source
    /// keeps failing would), until set again.
    pub fn set_problems(&self, id: &DeploymentId, lines: &[&str]) {
        if let Some(service) = self.world().compute.get_mut(id) {
            service.problems = lines.iter().map(|l| (*l).to_owned()).collect();
        }
    }

    /// Schedules another process to take the deploy lock at `at`, as `acquire_lock` without force
    /// would (it only succeeds if the lock has lapsed or is free by then).
    pub fn schedule_lock_takeover(&self, at: Timestamp, owner: &str, ttl: Duration) {
        self.world().scheduled.push(Scheduled::TakeLock {
            at,
            owner: owner.to_owned(),
            ttl,
        });
    }

    /// Creates compute, serving affinity and an image for `id` with no record, as something outside
    /// flotilla might. Not counted as a call.
    pub fn create_unrecorded(&self, id: &DeploymentId, instances: u32) {
        let mut w = self.world();
        w.routing.install_affinity(id.clone());
        w.images
            .insert(id.clone(), ImageRef(format!("outside/{id}")));
        let spec = VersionSpec {
            name: w.name.clone(),
            id: id.clone(),
            image: ImageRef(format!("outside/{id}")),
            instances,
            env: Default::default(),
        };
        w.create_service(&spec);
    }

    /// Arms a fault, replacing any armed one. Calls are counted from here.
    pub fn arm(&self, trigger: Trigger, mode: FaultMode) {
        let mut w = self.world();
        w.faults.armed = Some((trigger, mode));
        w.faults.since_arm = 0;
        w.faults.hit = None;
    }

    /// Arms a fault that makes the k-th call from now (1-based) fail with `kind`.
    pub fn fail_call(&self, k: u64, kind: ErrorKind) {
        self.arm(Trigger::Call(k), FaultMode::Fail(kind));
    }

    /// Arms a fault that stops the process right after the k-th call from now (1-based).
    pub fn crash_after_call(&self, k: u64) {
        self.arm(Trigger::Call(k), FaultMode::CrashAfter);
    }

    /// Removes an armed fault that has not triggered.
    pub fn disarm(&self) {
        self.world().faults.armed = None;
    }

    /// Brings a stopped process back (and removes any armed fault): calls work again.
    pub fn revive(&self) {
        let mut w = self.world();
        w.faults.crashed = false;
        w.faults.armed = None;
    }

    /// The call the last armed fault triggered on (`operation resource`), if it did.
    pub fn fault_hit(&self) -> Option<String> {
        self.world().faults.hit.clone()
    }

    /// Whether the process is stopped by a `CrashAfter` fault.
    pub fn crashed(&self) -> bool {
        self.world().faults.crashed
    }

    /// Counted calls so far (every port call but `Clock::now`, not counting calls refused while
    /// crashed).
    pub fn calls(&self) -> u64 {
        self.world().faults.total
    }

    /// Every counted call so far, as `operation resource`, e.g. `compute.create 20261125-190633-k3x9`.
    pub fn call_log(&self) -> Vec<String> {
        self.world().call_log.clone()
    }

    /// Everything that exists now.
    pub fn view(&self) -> WorldView {
        let mut w = self.world();
        w.settle();
        let now = w.now;
        WorldView {
            now,
            compute: w
                .compute
                .iter()
                .map(|(id, s)| (id.clone(), s.status(now)))
                .collect(),
            routing: w.routing.clone(),
            images: w.images.clone(),
            records: w.records.clone(),
            lock: w.lock.clone(),
        }
    }

    /// Resources without a record (see [`WorldView::orphans`]).
    pub fn orphans(&self) -> Vec<Orphan> {
        self.view().orphans()
    }
}

/// The world behind every port of one [`Sim`].
struct World {
    name: DeploymentName,
    now: Timestamp,
    default_behavior: Behavior,
    behaviors: BTreeMap<DeploymentId, Behavior>,
    stop_delay: Duration,
    build_time: Duration,
    grace: Duration,
    compute: BTreeMap<DeploymentId, Service>,
    routing: RoutingTable,
    images: BTreeMap<DeploymentId, ImageRef>,
    records: BTreeMap<DeploymentId, VersionRecord>,
    lock: Option<LockInfo>,
    scheduled: Vec<Scheduled>,
    faults: Faults,
    call_log: Vec<String>,
    /// Traffic counted per version, for canary judgements.
    traffic: BTreeMap<DeploymentId, flotilla_core::canary::Counters>,
}

/// Something that happens on its own at a virtual time.
enum Scheduled {
    TakeLock {
        at: Timestamp,
        owner: String,
        ttl: Duration,
    },
}

#[derive(Default)]
struct Faults {
    armed: Option<(Trigger, FaultMode)>,
    since_arm: u64,
    total: u64,
    crashed: bool,
    hit: Option<String>,
}

/// One version's compute.
struct Service {
    desired: u32,
    instances: Vec<Instance>,
    next_instance: u32,
    behavior: Behavior,
    extra_logs: Vec<String>,
    env: AppEnv,
    problems: Vec<String>,
}

struct Instance {
    id: InstanceId,
    started_at: Timestamp,
    stopping_at: Option<Timestamp>,
    behavior: Behavior,
    sessions: u64,
    readiness: Option<Readiness>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Starting,
    Running,
    Healthy,
    Exited,
}

impl Instance {
    fn phase(&self, now: Timestamp) -> Phase {
        let age = now.since(self.started_at);
        match self.behavior {
            Behavior::Crash => Phase::Exited,
            Behavior::NeverHealthy { start } if age >= start => Phase::Running,
            Behavior::Healthy { start, healthy } if age >= start + healthy => {
                if self.stopping_at.is_some() {
                    Phase::Running
                } else {
                    Phase::Healthy
                }
            }
            Behavior::Healthy { start, .. } if age >= start => Phase::Running,
            _ => Phase::Starting,
        }
    }

    fn runs(&self, now: Timestamp) -> bool {
        matches!(self.phase(now), Phase::Running | Phase::Healthy)
    }
}

impl Service {
    fn status(&self, now: Timestamp) -> ComputeStatus {
        let running: Vec<&Instance> = self.instances.iter().filter(|i| i.runs(now)).collect();
        ComputeStatus {
            desired: self.desired,
            running: count(running.len()),
            healthy: count(
                running
                    .iter()
                    .filter(|i| i.phase(now) == Phase::Healthy)
                    .count(),
            ),
            instances: running.iter().map(|i| i.id.clone()).collect(),
            sessions: Some(running.iter().map(|i| i.sessions).sum()),
            stopped: Vec::new(),
            problems: Vec::new(),
            client_blocked_by_csp: 0,
        }
    }

    fn start_instance(&mut self, now: Timestamp) {
        self.next_instance += 1;
        let id = InstanceId::new(&format!("i{}", self.next_instance))
            .expect("`i` followed by digits is a valid instance id");
        self.instances.push(Instance {
            id,
            started_at: now,
            stopping_at: None,
            behavior: self.behavior,
            sessions: 0,
            readiness: None,
        });
    }

    fn logs(&self, now: Timestamp) -> Vec<String> {
        let mut lines = Vec::new();
        for i in &self.instances {
            lines.push(format!("{}: starting", i.id));
            match (i.behavior, i.phase(now)) {
                (Behavior::Crash, _) => {
                    lines.push(format!("{}: error: address already in use", i.id));
                    lines.push(format!("{}: exited with status 1", i.id));
                }
                (_, Phase::Starting) => {}
                (Behavior::NeverHealthy { .. }, _) => {
                    lines.push(format!("{}: listening", i.id));
                    lines.push(format!(
                        "{}: GET /healthz -> 500 Internal Server Error",
                        i.id
                    ));
                }
                (_, _) => lines.push(format!("{}: listening", i.id)),
            }
        }
        lines.extend(self.extra_logs.iter().cloned());
        lines
    }
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl World {
    fn new(name: DeploymentName, start: Timestamp) -> Self {
        World {
            name,
            now: start,
            default_behavior: Behavior::default(),
            behaviors: BTreeMap::new(),
            stop_delay: Duration::ZERO,
            build_time: Duration::ZERO,
            grace: Duration::from_secs(30),
            compute: BTreeMap::new(),
            routing: RoutingTable::new(),
            images: BTreeMap::new(),
            records: BTreeMap::new(),
            lock: None,
            scheduled: Vec::new(),
            faults: Faults::default(),
            call_log: Vec::new(),
            traffic: BTreeMap::new(),
        }
    }

    /// Counts a call and applies an armed fault. `Err` means the call must fail without effect.
    fn enter(&mut self, operation: &str, resource: &str) -> Result<(), PortError> {
        self.settle();
        if self.faults.crashed {
            return Err(PortError::new(
                ErrorKind::Unavailable,
                operation,
                resource,
                "the simulated process has stopped",
            ));
        }
        self.faults.total += 1;
        self.faults.since_arm += 1;
        let call = format!("{operation} {resource}");
        self.call_log.push(call.clone());
        let triggered = match &self.faults.armed {
            Some((Trigger::Call(k), _)) => self.faults.since_arm == *k,
            Some((Trigger::Operation(op), _)) => op == operation,
            None => false,
        };
        if !triggered {
            return Ok(());
        }
        let Some((_, mode)) = self.faults.armed.take() else {
            return Ok(());
        };
        self.faults.hit = Some(call);
        match mode {
            FaultMode::Fail(kind) => {
                Err(PortError::new(kind, operation, resource, "injected fault"))
            }
            FaultMode::CrashAfter => {
                // The call still takes effect: the caller's process dies after it returns.
                self.faults.crashed = true;
                Ok(())
            }
        }
    }

    /// Moves time to `to`, firing scheduled events in order on the way.
    fn advance_to(&mut self, to: Timestamp) {
        self.scheduled.sort_by_key(|s| match s {
            Scheduled::TakeLock { at, .. } => *at,
        });
        while let Some(Scheduled::TakeLock { at, .. }) = self.scheduled.first() {
            if *at > to {
                break;
            }
            let Scheduled::TakeLock { at, owner, ttl } = self.scheduled.remove(0);
            self.now = self.now.max(at);
            self.take_lock(&owner, at, ttl, false);
        }
        self.now = self.now.max(to);
        self.settle();
    }

    /// Drops instances that have finished stopping.
    fn settle(&mut self) {
        let (now, stop_delay) = (self.now, self.stop_delay);
        for service in self.compute.values_mut() {
            service
                .instances
                .retain(|i| i.stopping_at.is_none_or(|s| now.since(s) < stop_delay));
        }
    }

    fn take_lock(
        &mut self,
        owner: &str,
        now: Timestamp,
        ttl: Duration,
        force: bool,
    ) -> LockOutcome {
        let acquired_at = match &self.lock {
            Some(held) if held.owner == owner => held.acquired_at,
            Some(held) if now < held.expires_at && !force => {
                return LockOutcome::Held(held.clone());
            }
            _ => now,
        };
        self.lock = Some(LockInfo {
            owner: owner.to_owned(),
            acquired_at,
            expires_at: now.plus(ttl),
        });
        LockOutcome::Acquired
    }

    fn create_service(&mut self, spec: &VersionSpec) {
        if self.compute.contains_key(&spec.id) {
            return;
        }
        let behavior = self
            .behaviors
            .get(&spec.id)
            .copied()
            .unwrap_or(self.default_behavior);
        let mut service = Service {
            desired: spec.instances,
            instances: Vec::new(),
            next_instance: 0,
            behavior,
            extra_logs: Vec::new(),
            problems: Vec::new(),
            env: spec.env.clone(),
        };
        for _ in 0..spec.instances {
            service.start_instance(self.now);
        }
        self.compute.insert(spec.id.clone(), service);
    }

    fn readiness_of(&self, id: &DeploymentId) -> BTreeMap<InstanceId, Readiness> {
        let Some(service) = self.compute.get(id) else {
            return BTreeMap::new();
        };
        let drained = self.records.get(id).is_some_and(|r| {
            r.version.state == VersionState::Draining
                && r.version.time_in_state(self.now) >= self.grace
        });
        service
            .instances
            .iter()
            .filter(|i| i.runs(self.now))
            .map(|i| {
                let model = if drained && i.sessions == 0 {
                    Readiness::ShutdownReady
                } else {
                    Readiness::Healthy
                };
                (i.id.clone(), i.readiness.unwrap_or(model))
            })
            .collect()
    }
}

fn lock_world(world: &Mutex<World>) -> MutexGuard<'_, World> {
    // A panic in a test while holding the lock must not hide the world from the rest of the test.
    world
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn routing_error(operation: &str, id: &str, e: RoutingError) -> PortError {
    let kind = match e {
        RoutingError::InDefault(_) => ErrorKind::Conflict,
        _ => ErrorKind::Invalid,
    };
    PortError::new(kind, operation, id, e.to_string())
}

/// The port implementations, sharing the world of one [`Sim`].
struct SimPort {
    world: Arc<Mutex<World>>,
}

impl SimPort {
    fn world(&self) -> MutexGuard<'_, World> {
        lock_world(&self.world)
    }
}

fn ids_text(ids: &[DeploymentId]) -> String {
    ids.iter()
        .map(DeploymentId::as_str)
        .collect::<Vec<_>>()
        .join(",")
}

#[async_trait]
impl Compute for SimPort {
    async fn create(&self, spec: &VersionSpec) -> Result<(), PortError> {
        let mut w = self.world();
        w.enter("compute.create", spec.id.as_str())?;
        // As on AWS: a service can only use a target group already attached to the listener.
        if w.routing.affinity(&spec.id).is_none() {
            return Err(PortError::new(
                ErrorKind::Invalid,
                "compute.create",
                spec.id.as_str(),
                "its target group is not attached to the listener; install affinity first",
            ));
        }
        w.create_service(spec);
        Ok(())
    }

    async fn scale(&self, id: &DeploymentId, desired: u32) -> Result<(), PortError> {
        let mut w = self.world();
        w.enter("compute.scale", id.as_str())?;
        let now = w.now;
        let Some(service) = w.compute.get_mut(id) else {
            if desired == 0 {
                return Ok(());
            }
            return Err(PortError::new(
                ErrorKind::NotFound,
                "compute.scale",
                id.as_str(),
                "no such service",
            ));
        };
        service.desired = desired;
        let live: Vec<usize> = service
            .instances
            .iter()
            .enumerate()
            .filter(|(_, i)| i.stopping_at.is_none())
            .map(|(n, _)| n)
            .collect();
        let want = desired as usize;
        if live.len() > want {
            for &n in &live[want..] {
                service.instances[n].stopping_at = Some(now);
            }
        }
        for _ in live.len()..want {
            service.start_instance(now);
        }
        w.settle();
        Ok(())
    }

    async fn delete(&self, id: &DeploymentId) -> Result<(), PortError> {
        let mut w = self.world();
        w.enter("compute.delete", id.as_str())?;
        w.compute.remove(id);
        Ok(())
    }

    async fn observe(
        &self,
        ids: &[DeploymentId],
    ) -> Result<BTreeMap<DeploymentId, ComputeStatus>, PortError> {
        let mut w = self.world();
        w.enter("compute.observe", &ids_text(ids))?;
        let now = w.now;
        Ok(ids
            .iter()
            .filter_map(|id| w.compute.get(id).map(|s| (id.clone(), s.status(now))))
            .collect())
    }

    async fn counters(
        &self,
        ids: &[DeploymentId],
    ) -> Result<BTreeMap<DeploymentId, flotilla_core::canary::Counters>, PortError> {
        let mut w = self.world();
        w.enter("compute.counters", &ids_text(ids))?;
        Ok(ids
            .iter()
            .filter_map(|id| w.traffic.get(id).map(|c| (id.clone(), c.clone())))
            .collect())
    }

    async fn list(&self) -> Result<Vec<DeploymentId>, PortError> {
        let mut w = self.world();
        w.enter("compute.list", "")?;
        Ok(w.compute.keys().cloned().collect())
    }

    async fn recent_logs(&self, id: &DeploymentId, lines: usize) -> Result<Vec<String>, PortError> {
        let mut w = self.world();
        w.enter("compute.recent_logs", id.as_str())?;
        let now = w.now;
        let all = w.compute.get(id).map(|s| s.logs(now)).unwrap_or_default();
        let skip = all.len().saturating_sub(lines);
        Ok(all.into_iter().skip(skip).collect())
    }

    async fn problems(
        &self,
        running: &BTreeMap<DeploymentId, Vec<InstanceId>>,
    ) -> Result<BTreeMap<DeploymentId, Vec<String>>, PortError> {
        let mut w = self.world();
        let ids: Vec<DeploymentId> = running.keys().cloned().collect();
        w.enter("compute.problems", &ids_text(&ids))?;
        Ok(running
            .keys()
            .filter_map(|id| {
                let service = w.compute.get(id)?;
                (!service.problems.is_empty()).then(|| (id.clone(), service.problems.clone()))
            })
            .collect())
    }
}

#[async_trait]
impl Routing for SimPort {
    async fn install_affinity(&self, id: &DeploymentId) -> Result<(), PortError> {
        let mut w = self.world();
        w.enter("routing.install_affinity", id.as_str())?;
        w.routing.install_affinity(id.clone());
        Ok(())
    }

    async fn retire_affinity(&self, id: &DeploymentId) -> Result<(), PortError> {
        let mut w = self.world();
        w.enter("routing.retire_affinity", id.as_str())?;
        w.routing
            .mark_retired(id.clone())
            .map_err(|e| routing_error("routing.retire_affinity", id.as_str(), e))
    }

    async fn remove_affinity(&self, id: &DeploymentId) -> Result<(), PortError> {
        let mut w = self.world();
        w.enter("routing.remove_affinity", id.as_str())?;
        w.routing
            .remove_affinity(id)
            .map_err(|e| routing_error("routing.remove_affinity", id.as_str(), e))
    }

    async fn set_default(&self, targets: &[WeightedTarget]) -> Result<(), PortError> {
        let mut w = self.world();
        let text = targets
            .iter()
            .map(|t| format!("{}={}", t.id, t.weight))
            .collect::<Vec<_>>()
            .join(",");
        w.enter("routing.set_default", &text)?;
        if targets.is_empty() {
            w.routing.clear_default();
            return Ok(());
        }
        w.routing
            .set_default(targets.to_vec())
            .map_err(|e| routing_error("routing.set_default", &text, e))
    }

    async fn snapshot(&self) -> Result<RoutingTable, PortError> {
        let mut w = self.world();
        w.enter("routing.snapshot", "")?;
        Ok(w.routing.clone())
    }
}

#[async_trait]
impl StateStore for SimPort {
    async fn list(&self) -> Result<Vec<VersionRecord>, PortError> {
        let mut w = self.world();
        w.enter("state.list", "")?;
        let mut records: Vec<VersionRecord> = w.records.values().cloned().collect();
        records.sort_by(|a, b| {
            (a.version.created_at, &a.version.id).cmp(&(b.version.created_at, &b.version.id))
        });
        Ok(records)
    }

    async fn get(&self, id: &DeploymentId) -> Result<Option<VersionRecord>, PortError> {
        let mut w = self.world();
        w.enter("state.get", id.as_str())?;
        Ok(w.records.get(id).cloned())
    }

    async fn put(&self, record: &VersionRecord) -> Result<(), PortError> {
        let mut w = self.world();
        let resource = format!("{} {}", record.version.id, record.version.state);
        w.enter("state.put", &resource)?;
        w.records.insert(record.version.id.clone(), record.clone());
        Ok(())
    }

    async fn delete(&self, id: &DeploymentId) -> Result<(), PortError> {
        let mut w = self.world();
        w.enter("state.delete", id.as_str())?;
        w.records.remove(id);
        Ok(())
    }

    async fn readiness(
        &self,
        ids: &[DeploymentId],
    ) -> Result<BTreeMap<DeploymentId, BTreeMap<InstanceId, Readiness>>, PortError> {
        let mut w = self.world();
        w.enter("state.readiness", &ids_text(ids))?;
        Ok(ids
            .iter()
            .map(|id| (id.clone(), w.readiness_of(id)))
            .filter(|(_, r)| !r.is_empty())
            .collect())
    }

    async fn acquire_lock(
        &self,
        owner: &str,
        now: Timestamp,
        ttl: Duration,
        force: bool,
    ) -> Result<LockOutcome, PortError> {
        let mut w = self.world();
        w.enter("state.acquire_lock", owner)?;
        Ok(w.take_lock(owner, now, ttl, force))
    }

    async fn release_lock(&self, owner: &str) -> Result<(), PortError> {
        let mut w = self.world();
        w.enter("state.release_lock", owner)?;
        if w.lock.as_ref().is_some_and(|l| l.owner == owner) {
            w.lock = None;
        }
        Ok(())
    }

    async fn lock_info(&self) -> Result<Option<LockInfo>, PortError> {
        let mut w = self.world();
        w.enter("state.lock_info", "")?;
        Ok(w.lock.clone())
    }
}

#[async_trait]
impl ImageSource for SimPort {
    async fn prepare(
        &self,
        id: &DeploymentId,
        request: &ImageRequest,
        _progress: &dyn Progress,
    ) -> Result<ImageRef, PortError> {
        let mut w = self.world();
        w.enter("images.prepare", id.as_str())?;
        if let Some(existing) = w.images.get(id) {
            return Ok(existing.clone());
        }
        let image = match request {
            ImageRequest::Prebuilt(uri) => ImageRef(uri.clone()),
            ImageRequest::Build(dir) => {
                let to = w.now.plus(w.build_time);
                w.advance_to(to);
                ImageRef(format!("sim-build/{}/{id}", dir.display()))
            }
        };
        w.images.insert(id.clone(), image.clone());
        Ok(image)
    }

    async fn discard(&self, id: &DeploymentId) -> Result<(), PortError> {
        let mut w = self.world();
        w.enter("images.discard", id.as_str())?;
        w.images.remove(id);
        Ok(())
    }
}

#[async_trait]
impl Clock for SimPort {
    fn now(&self) -> Timestamp {
        self.world().now
    }

    async fn sleep(&self, duration: Duration) {
        let mut w = self.world();
        // A failed or refused sleep returns at once: the caller's next call sees the fault.
        if w.enter("clock.sleep", &format!("{}ms", duration.as_millis()))
            .is_ok()
        {
            let to = w.now.plus(duration);
            w.advance_to(to);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_core::routing::Affinity;

    fn id(n: u64) -> DeploymentId {
        DeploymentId::generate(Timestamp::from_secs(1_764_000_000 + n), n)
    }

    fn sim() -> Sim {
        Sim::new(
            DeploymentName::new("shop").expect("valid"),
            Timestamp::from_secs(1_764_000_000),
        )
    }

    fn spec(sim: &Sim, id: &DeploymentId, instances: u32) -> VersionSpec {
        VersionSpec {
            name: sim.world().name.clone(),
            id: id.clone(),
            image: ImageRef("img".into()),
            instances,
            env: Default::default(),
        }
    }

    #[tokio::test]
    async fn instances_start_get_healthy_and_stop_with_time() {
        let sim = sim();
        let ports = sim.ports();
        let v = id(1);
        sim.set_stop_delay(Duration::from_secs(10));
        ports.routing.install_affinity(&v).await.expect("install");
        ports
            .compute
            .create(&spec(&sim, &v, 2))
            .await
            .expect("create");
        let status = |sim: &Sim| sim.view().compute.get(&v).cloned().expect("exists");
        assert_eq!((status(&sim).running, status(&sim).healthy), (0, 0));
        sim.advance(Duration::from_secs(3));
        assert_eq!((status(&sim).running, status(&sim).healthy), (2, 0));
        sim.advance(Duration::from_secs(4));
        assert_eq!((status(&sim).running, status(&sim).healthy), (2, 2));
        ports.compute.scale(&v, 0).await.expect("scale");
        assert_eq!((status(&sim).desired, status(&sim).running), (0, 2));
        assert_eq!(
            status(&sim).healthy,
            0,
            "stopping instances take no traffic"
        );
        sim.advance(Duration::from_secs(10));
        assert_eq!(status(&sim).running, 0);
    }

    #[tokio::test]
    async fn compute_needs_affinity_first_and_default_needs_serving_affinity() {
        let sim = sim();
        let ports = sim.ports();
        let v = id(1);
        let err = ports
            .compute
            .create(&spec(&sim, &v, 1))
            .await
            .expect_err("no target group yet");
        assert_eq!(err.kind, ErrorKind::Invalid);
        let target = [WeightedTarget {
            id: v.clone(),
            weight: 100,
        }];
        let err = ports
            .routing
            .set_default(&target)
            .await
            .expect_err("no affinity");
        assert_eq!(err.kind, ErrorKind::Invalid);
        ports.routing.install_affinity(&v).await.expect("install");
        ports.routing.set_default(&target).await.expect("switch");
        let err = ports
            .routing
            .remove_affinity(&v)
            .await
            .expect_err("in default");
        assert_eq!(err.kind, ErrorKind::Conflict);
        ports.routing.set_default(&[]).await.expect("clear");
        ports.routing.remove_affinity(&v).await.expect("remove");
        assert!(sim.view().is_empty());
    }

    #[tokio::test]
    async fn fail_at_k_fails_only_that_call_without_effect() {
        let sim = sim();
        let ports = sim.ports();
        let (a, b) = (id(1), id(2));
        sim.fail_call(2, ErrorKind::Throttled);
        ports.routing.install_affinity(&a).await.expect("call 1");
        let err = ports
            .routing
            .install_affinity(&b)
            .await
            .expect_err("call 2");
        assert_eq!(err.kind, ErrorKind::Throttled);
        assert_eq!(
            sim.fault_hit().as_deref(),
            Some(format!("routing.install_affinity {b}").as_str())
        );
        ports.routing.install_affinity(&a).await.expect("call 3");
        let view = sim.view();
        assert_eq!(view.routing.affinity(&a), Some(Affinity::Serving));
        assert_eq!(view.routing.affinity(&b), None);
        assert_eq!(sim.calls(), 3);
        assert_eq!(view.orphans().len(), 1, "a's affinity has no record");
    }

    #[tokio::test]
    async fn crash_after_k_lets_the_call_happen_then_refuses_everything_until_revived() {
        let sim = sim();
        let ports = sim.ports();
        let (a, b) = (id(1), id(2));
        sim.crash_after_call(1);
        ports
            .routing
            .install_affinity(&a)
            .await
            .expect("takes effect");
        assert!(sim.crashed());
        let before = sim.now();
        ports.clock.sleep(Duration::from_secs(60)).await;
        assert_eq!(sim.now(), before, "a dead process does not sleep");
        let err = ports.routing.install_affinity(&b).await.expect_err("dead");
        assert_eq!(err.kind, ErrorKind::Unavailable);
        assert_eq!(sim.view().routing.affinity(&b), None);
        sim.revive();
        ports
            .routing
            .install_affinity(&b)
            .await
            .expect("alive again");
        assert_eq!(sim.view().routing.affinity(&b), Some(Affinity::Serving));
    }

    #[tokio::test]
    async fn operation_trigger_and_lock_semantics() {
        let sim = sim();
        let ports = sim.ports();
        let ttl = Duration::from_secs(60);
        let now = sim.now();
        let got = ports
            .state
            .acquire_lock("a", now, ttl, false)
            .await
            .expect("ok");
        assert_eq!(got, LockOutcome::Acquired);
        let held = ports
            .state
            .acquire_lock("b", now, ttl, false)
            .await
            .expect("ok");
        assert!(matches!(held, LockOutcome::Held(ref l) if l.owner == "a"));
        let later = now.plus(Duration::from_secs(61));
        let taken = ports
            .state
            .acquire_lock("b", later, ttl, false)
            .await
            .expect("ok");
        assert_eq!(taken, LockOutcome::Acquired, "a lapsed lock is taken over");
        ports
            .state
            .release_lock("a")
            .await
            .expect("not held by a: no-op");
        assert_eq!(sim.view().lock.map(|l| l.owner), Some("b".to_owned()));
        sim.arm(
            Trigger::Operation("state.release_lock".into()),
            FaultMode::Fail(ErrorKind::Transient),
        );
        ports
            .state
            .lock_info()
            .await
            .expect("other operations pass");
        ports.state.release_lock("b").await.expect_err("armed");
        ports.state.release_lock("b").await.expect("released");
        assert_eq!(sim.view().lock, None);
    }

    #[tokio::test]
    async fn readiness_follows_the_session_model_unless_set() {
        let sim = sim();
        let ports = sim.ports();
        let v = id(1);
        ports.routing.install_affinity(&v).await.expect("install");
        ports
            .compute
            .create(&spec(&sim, &v, 2))
            .await
            .expect("create");
        sim.advance(Duration::from_secs(10));
        let mut record = VersionRecord {
            version: flotilla_core::Version::new(v.clone(), sim.now()),
            image: None,
            instances: 2,
            ready_passes: 0,
            canary: None,
        };
        record.version.state = VersionState::Draining;
        ports.state.put(&record).await.expect("put");
        let read = || async {
            ports
                .state
                .readiness(std::slice::from_ref(&v))
                .await
                .expect("read")
                .remove(&v)
                .unwrap_or_default()
                .into_values()
                .collect::<Vec<_>>()
        };
        assert_eq!(read().await, vec![Readiness::Healthy; 2], "within grace");
        sim.advance(Duration::from_secs(30));
        assert_eq!(read().await, vec![Readiness::ShutdownReady; 2]);
        sim.set_sessions(&v, 1);
        assert_eq!(read().await, vec![Readiness::Healthy; 2], "sessions remain");
        sim.set_readiness(&v, Some(Readiness::ShutdownReady));
        assert_eq!(
            read().await,
            vec![Readiness::ShutdownReady; 2],
            "overridden"
        );
        let i2 = InstanceId::new("i2").expect("valid");
        assert!(sim.set_instance_readiness(&v, &i2, Some(Readiness::Healthy)));
        assert_eq!(
            read().await,
            vec![Readiness::ShutdownReady, Readiness::Healthy],
            "one instance overridden"
        );
        sim.set_readiness(&v, None);
        sim.set_sessions(&v, 0);
        assert!(sim.set_instance_sessions(&v, &i2, 3));
        assert_eq!(
            read().await,
            vec![Readiness::ShutdownReady, Readiness::Healthy],
            "one instance still has sessions"
        );
        assert_eq!(sim.view().compute[&v].sessions, Some(3));
        let missing = InstanceId::new("i9").expect("valid");
        assert!(!sim.set_instance_sessions(&v, &missing, 1));
    }
}
