//! The workflows, written once against the ports: deploy, rollback, drain, reap, teardown, status.
//!
//! Every workflow records its progress in the state store before each step that creates or
//! changes a resource, so that running it again after a crash converges instead of duplicating.
//! Records are created before any resource of a version and deleted after all of them, so a
//! resource never exists without a record that leads the reaper or a re-run to it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use flotilla_core::drain::Readiness;
use flotilla_core::reaper::{
    ComputeCounts, ReapAction, ReapPolicy, VersionView, Waiting, plan_pass,
};
use flotilla_core::routing::{Affinity, RoutingTable, RuleBudget, WeightedTarget};
use flotilla_core::{DeploymentId, DeploymentName, InstanceId, Timestamp, Version, VersionState};
use serde::Serialize;

use crate::error::EngineError;
use crate::events::{Event, Progress};
use crate::ports::{
    AppEnv, ComputeStatus, ErrorKind, ImageRequest, LockInfo, LockOutcome, PortError, Ports,
    VersionRecord, VersionSpec,
};

/// How the workflows behave for one deployment name.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The deployment name.
    pub name: DeploymentName,
    /// The reaper's policy.
    pub policy: ReapPolicy,
    /// The listener-rule budget.
    pub budget: RuleBudget,
    /// How long a deploy waits for `min_healthy` healthy instances.
    pub health_timeout: Duration,
    /// How often a deploy checks health while waiting.
    pub health_poll: Duration,
    /// How long a lock lives without being released (a crashed holder's lock lapses after this).
    pub lock_ttl: Duration,
    /// Who this process is, for the lock (`user@host (pid N)`, see `flotilla_core::lock`).
    pub lock_owner: String,
    /// This host and how to ask whether a process of it runs, when the caller can answer: a lock
    /// held by a process of this host that no longer runs is broken at once (with a note) rather
    /// than blocking until it lapses.
    pub local_holders: Option<LocalHolders>,
}

/// The edge's answer to "does the process that holds this lock still run?".
#[derive(Clone, Debug)]
pub struct LocalHolders {
    /// This host's name, as written in lock owners.
    pub host: String,
    /// Whether process `pid` of this host runs.
    pub alive: fn(u32) -> bool,
}

/// What to deploy.
#[derive(Clone, Debug)]
pub struct DeployRequest {
    /// The new version's id. The caller generates it (`DeploymentId::generate`) so it can print it
    /// before the deploy starts. An id whose record is still `deploying` (an interrupted deploy) is
    /// resumed; an id of any other recorded version is refused.
    pub id: DeploymentId,
    /// Where its code comes from.
    pub image: ImageRequest,
    /// Instances to run.
    pub instances: u32,
    /// Healthy instances required before fresh traffic switches to it.
    pub min_healthy: u32,
    /// Break a lock held by someone else.
    pub break_lock: bool,
    /// The app's environment for this version.
    pub env: AppEnv,
}

/// What a successful deploy did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeployOutcome {
    /// The new active version.
    pub deployment_id: DeploymentId,
    /// Versions marked draining by this deploy.
    pub draining: Vec<DeploymentId>,
    /// Whether an interrupted deploy of the same id was resumed.
    pub resumed: bool,
    /// Interrupted deploys of other ids found and cleaned up (or completed) first.
    pub recovered: Vec<DeploymentId>,
}

/// What a rollback did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RollbackOutcome {
    /// The version fresh traffic goes to now.
    pub active: DeploymentId,
    /// The version that was active and now drains.
    pub draining: Option<DeploymentId>,
}

/// What a reaper pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ReapReport {
    /// Actions taken (or planned, in a dry run).
    pub actions: Vec<ReapAction>,
    /// Actions that failed, with the error; the next pass retries them.
    pub failed: Vec<(ReapAction, String)>,
    /// Draining versions the pass left draining, with what each waits for.
    pub waiting: Vec<Waiting>,
    /// Whether the pass was skipped because another operation held the lock.
    pub skipped_locked: Option<LockInfo>,
    /// Versions whose records were brought in line with the default forward first (a deploy or
    /// rollback that died after switching traffic): recorded active, or draining beside it.
    pub recovered: Vec<DeploymentId>,
    /// Versions with resources but no record, whose resources were removed (or, in a dry run,
    /// would be).
    pub orphans_removed: Vec<DeploymentId>,
    /// Orphans whose removal failed, with the error; the next pass retries them.
    pub orphans_failed: Vec<(DeploymentId, String)>,
}

/// Which versions a teardown removes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TeardownTarget {
    /// One version (refused for the active one while others exist; roll back first).
    One(DeploymentId),
    /// Every version; fresh requests then get "no version deployed yet".
    All,
}

/// What a teardown removed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TeardownReport {
    /// Versions removed.
    pub removed: Vec<DeploymentId>,
    /// Versions with resources but no record whose resources were removed (`--all` only).
    pub orphans_removed: Vec<DeploymentId>,
}

/// One version as `status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VersionStatus {
    /// The record.
    pub record: VersionRecord,
    /// Its compute, if any exists.
    pub compute: Option<ComputeStatus>,
    /// Its share of fresh traffic (0 when not in the default forward).
    pub weight: u16,
    /// What its affinity does.
    pub affinity: Option<Affinity>,
    /// What each instance last reported.
    pub readiness: BTreeMap<InstanceId, Readiness>,
}

/// Everything `status` reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StatusReport {
    /// The deployment name.
    pub name: DeploymentName,
    /// Every recorded version, oldest first.
    pub versions: Vec<VersionStatus>,
    /// The routing as the provider has it.
    pub routing: RoutingTable,
    /// Listener rules in use.
    pub rules_used: u32,
    /// The rule budget.
    pub rules_limit: u32,
    /// Who holds the lock, if anyone.
    pub lock: Option<LockInfo>,
    /// Versions with compute or routing but no record (should be empty; `reap` removes them).
    pub orphans: Vec<DeploymentId>,
}

/// The workflows of one deployment name on one provider.
pub struct Engine {
    ports: Ports,
    settings: Settings,
}

/// How many log lines a failed deploy fetches from its instances.
const LOG_LINES: usize = 50;

/// The shortest health poll: a zero poll would spin on a real clock.
const MIN_POLL: Duration = Duration::from_millis(100);

/// How a deploy treats the id it was given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DeployMode {
    /// No record: a new version.
    New,
    /// A `deploying` record that takes no fresh traffic yet: an interrupted deploy, run again
    /// from its first step (every step is idempotent).
    Resume,
    /// A `deploying` or `active` record already in the default forward: the deploy died after the
    /// switch, and only its bookkeeping is left.
    Finish,
}

/// Records brought in line with the default forward.
#[derive(Default)]
struct Reconciled {
    /// Versions recorded `active` because fresh traffic already goes to them.
    activated: Vec<DeploymentId>,
    /// Versions recorded `draining` because they were `active` beside the one fresh traffic goes to.
    drained: Vec<DeploymentId>,
}

/// A version that missed its health deadline.
struct Unhealthy {
    healthy: u32,
    waited: Duration,
}

/// Emits the start of a step and returns what wraps a port error of it.
fn step(
    progress: &dyn Progress,
    id: &DeploymentId,
    what: &str,
) -> impl FnOnce(PortError) -> EngineError + use<> {
    progress.event(Event::Step {
        id: id.clone(),
        what: what.to_owned(),
    });
    let step = format!("{what} for {id}");
    move |source| EngineError::Port { step, source }
}

fn note(progress: &dyn Progress, message: String) {
    progress.event(Event::Note { message });
}

fn refused<T>(message: String, hint: impl Into<String>) -> Result<T, EngineError> {
    Err(EngineError::Refused {
        message,
        hint: hint.into(),
    })
}

fn ids_list(ids: &[&DeploymentId]) -> String {
    ids.iter()
        .map(|id| id.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Ids that have compute, affinity or a default share but no record.
/// Whether `id`'s affinity still forwards to it (so removing it starts with a 410).
fn serves_affinity(table: &RoutingTable, id: &DeploymentId) -> bool {
    table.affinity(id) == Some(Affinity::Serving)
}

fn orphan_ids(
    table: &RoutingTable,
    with_compute: &[DeploymentId],
    records: &[VersionRecord],
) -> Vec<DeploymentId> {
    let recorded: BTreeSet<&DeploymentId> = records.iter().map(|r| &r.version.id).collect();
    let mut found = BTreeSet::new();
    found.extend(with_compute.iter());
    found.extend(table.affinities().keys());
    found.extend(table.default_targets().iter().map(|t| &t.id));
    found
        .into_iter()
        .filter(|id| !recorded.contains(id))
        .cloned()
        .collect()
}

/// What the reaper needs to know about one recorded version.
fn version_view(
    record: &VersionRecord,
    observed: &BTreeMap<DeploymentId, ComputeStatus>,
    readiness: &BTreeMap<DeploymentId, BTreeMap<InstanceId, Readiness>>,
    table: &RoutingTable,
) -> VersionView {
    let id = &record.version.id;
    let compute = observed.get(id);
    let reports = readiness.get(id);
    VersionView {
        version: record.version.clone(),
        compute: compute.map(|c| ComputeCounts {
            desired: c.desired,
            running: c.running,
        }),
        instances: compute
            .map(|c| {
                c.instances
                    .iter()
                    .map(|i| reports.and_then(|r| r.get(i).copied()))
                    .collect()
            })
            .unwrap_or_default(),
        ready_passes: record.ready_passes,
        affinity: table.affinity(id),
        in_default: table.in_default(id),
    }
}

/// The version a rollback without a target should finish, when an earlier rollback to it died
/// after switching the default: the default's only target is recorded draining, or it is recorded
/// active beside a newer active version.
fn interrupted_rollback(records: &[VersionRecord], table: &RoutingTable) -> Option<DeploymentId> {
    let [target] = table.default_targets() else {
        return None;
    };
    let record = records.iter().find(|r| r.version.id == target.id)?;
    let key = |r: &VersionRecord| (r.version.created_at, r.version.id.clone());
    let newer_active = records.iter().any(|r| {
        r.version.id != target.id && r.version.state == VersionState::Active && key(r) > key(record)
    });
    match record.version.state {
        VersionState::Draining => Some(target.id.clone()),
        VersionState::Active if newer_active => Some(target.id.clone()),
        _ => None,
    }
}

fn validate(request: &DeployRequest) -> Result<(), EngineError> {
    if request.instances == 0 {
        return refused(
            format!("deploy {} asks for 0 instances", request.id),
            "run at least one instance (`instances` in the provider's section of flotilla.toml)",
        );
    }
    if request.min_healthy == 0 || request.min_healthy > request.instances {
        return refused(
            format!(
                "deploy {} requires {} healthy instances but runs {}",
                request.id, request.min_healthy, request.instances
            ),
            "set `min_healthy` in [app] between 1 and the number of instances",
        );
    }
    Ok(())
}

impl Engine {
    /// An engine over `ports` with `settings`.
    pub fn new(ports: Ports, settings: Settings) -> Self {
        Engine { ports, settings }
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The ports.
    pub fn ports(&self) -> &Ports {
        &self.ports
    }

    /// Deploys a new version: lock → check the rule budget → recover interrupted deploys →
    /// record `deploying` → prepare the image → install affinity (before compute: an ALB target
    /// group must be attached to the listener before an ECS service uses it) → create compute →
    /// wait for `min_healthy` healthy instances within `health_timeout` → switch the default to it →
    /// record it `active` → record every older active version `draining` → unlock.
    ///
    /// If it never gets healthy, everything it created is removed, the record deleted, traffic left
    /// where it was, and [`EngineError::NotHealthy`] returned with the failing instance's last logs.
    ///
    /// A port error leaves the record as it is: deploying the same id again resumes (every step is
    /// idempotent), and otherwise the reaper removes it after `deploying_timeout`. An id whose
    /// deploy died after the switch (its record is `deploying` or `active` and the default already
    /// points at it) is finished rather than refused.
    pub async fn deploy(
        &self,
        request: DeployRequest,
        progress: &dyn Progress,
    ) -> Result<DeployOutcome, EngineError> {
        validate(&request)?;
        let mut lease = self.lock(request.break_lock, progress).await?;
        let result = self.deploy_locked(&request, &mut lease, progress).await;
        self.unlock(progress).await;
        result
    }

    /// Re-points fresh traffic to `target` (default: the newest draining version that still runs)
    /// and marks the current active version draining. Instant: nothing is created.
    ///
    /// Without a target, a rollback that died after its switch is finished instead of starting
    /// another. Retired, failed and deploying versions, and versions with nothing running, are
    /// refused: deploy their code again instead.
    pub async fn rollback(
        &self,
        target: Option<DeploymentId>,
        progress: &dyn Progress,
    ) -> Result<RollbackOutcome, EngineError> {
        self.lock(false, progress).await?;
        let result = self.rollback_locked(target, progress).await;
        self.unlock(progress).await;
        result
    }

    /// Marks a version draining by hand. Refused for the active version (deploy or roll back
    /// first); a no-op for one already draining. An `active` version that fresh traffic no longer
    /// reaches (a switch away from it was interrupted) is recorded draining.
    pub async fn drain(
        &self,
        id: DeploymentId,
        progress: &dyn Progress,
    ) -> Result<(), EngineError> {
        self.lock(false, progress).await?;
        let result = self.drain_locked(&id, progress).await;
        self.unlock(progress).await;
        result
    }

    /// One reaper pass: observe, plan with `flotilla_core::reaper::plan_pass`, carry the plan out
    /// (unless `dry_run`). Skipped, not failed, when another operation holds the lock.
    ///
    /// Before planning, records are brought in line with the default forward (a deploy or rollback
    /// that died after its switch is finished). An action that fails is reported in
    /// [`ReapReport::failed`] and the pass goes on; the next pass retries it. Resources no record
    /// owns are removed too. A dry run takes no lock and changes nothing.
    pub async fn reap(
        &self,
        dry_run: bool,
        progress: &dyn Progress,
    ) -> Result<ReapReport, EngineError> {
        if dry_run {
            return self.reap_pass(true, progress).await;
        }
        if let LockOutcome::Held(lock) = self.acquire(self.now(), false).await? {
            note(
                progress,
                format!(
                    "reaper pass skipped: {} holds the lock until {}",
                    lock.owner, lock.expires_at
                ),
            );
            return Ok(ReapReport {
                skipped_locked: Some(lock),
                ..ReapReport::default()
            });
        }
        let result = self.reap_pass(false, progress).await;
        self.unlock(progress).await;
        result
    }

    /// Removes one version or all, leaving nothing behind.
    ///
    /// Each version is first recorded `retired` (or `failed` if it never served), then its routing,
    /// compute, image and record are removed in that order, so an interrupted teardown leaves a
    /// record that a re-run or the reaper finishes. `All` first empties the default forward, and
    /// also removes resources no record owns.
    pub async fn teardown(
        &self,
        target: TeardownTarget,
        break_lock: bool,
        progress: &dyn Progress,
    ) -> Result<TeardownReport, EngineError> {
        self.lock(break_lock, progress).await?;
        let result = self.teardown_locked(target, progress).await;
        self.unlock(progress).await;
        result
    }

    /// Every version with its state, compute, weight, affinity and readiness; rule usage; the lock.
    pub async fn status(&self) -> Result<StatusReport, EngineError> {
        let table = self.routing().await?;
        let with_compute = self.compute_ids().await?;
        let records = self.records().await?;
        let ids: Vec<DeploymentId> = records.iter().map(|r| r.version.id.clone()).collect();
        let mut observed = self.observe(&ids).await?;
        self.add_stopped(&mut observed).await;
        self.add_problems(&mut observed).await;
        let readiness = self.readiness(&ids).await?;
        let lock = self
            .ports
            .state
            .lock_info()
            .await
            .map_err(EngineError::port(format!(
                "reading the deploy lock of `{}`",
                self.settings.name
            )))?;
        let rules_used = RuleBudget::on_listener(&table);
        let orphans = orphan_ids(&table, &with_compute, &records);
        let statuses = records
            .into_iter()
            .map(|record| {
                let id = &record.version.id;
                VersionStatus {
                    compute: observed.get(id).cloned(),
                    weight: table
                        .default_targets()
                        .iter()
                        .find(|t| &t.id == id)
                        .map_or(0, |t| t.weight),
                    affinity: table.affinity(id),
                    readiness: readiness.get(id).cloned().unwrap_or_default(),
                    record,
                }
            })
            .collect();
        Ok(StatusReport {
            name: self.settings.name.clone(),
            versions: statuses,
            routing: table,
            rules_used,
            rules_limit: self.settings.budget.limit,
            lock,
            orphans,
        })
    }

    /// Adds why instances stopped to the versions short of healthy instances. `status` must
    /// report the rest without it, so a failure becomes that one line.
    async fn add_stopped(&self, observed: &mut BTreeMap<DeploymentId, ComputeStatus>) {
        let short: Vec<DeploymentId> = observed
            .iter()
            .filter(|(_, c)| c.healthy < c.desired)
            .map(|(id, _)| id.clone())
            .collect();
        if short.is_empty() {
            return;
        }
        match self.ports.compute.stopped(&short).await {
            Ok(mut stopped) => {
                for (id, status) in observed.iter_mut() {
                    if let Some(lines) = stopped.remove(id) {
                        status.stopped = lines;
                    }
                }
            }
            Err(e) => {
                for id in &short {
                    if let Some(status) = observed.get_mut(id) {
                        status.stopped = vec![format!("(why instances stopped is unknown: {e})")];
                    }
                }
            }
        }
    }

    /// Adds what running instances report is wrong with them. Like [`Self::add_stopped`], a
    /// failure to find out becomes one line instead of failing `status`.
    async fn add_problems(&self, observed: &mut BTreeMap<DeploymentId, ComputeStatus>) {
        let running: BTreeMap<DeploymentId, Vec<InstanceId>> = observed
            .iter()
            .filter(|(_, c)| !c.instances.is_empty())
            .map(|(id, c)| (id.clone(), c.instances.clone()))
            .collect();
        if running.is_empty() {
            return;
        }
        match self.ports.compute.problems(&running).await {
            Ok(mut problems) => {
                for (id, status) in observed.iter_mut() {
                    if let Some(lines) = problems.remove(id) {
                        status.problems = lines;
                    }
                }
            }
            Err(e) => {
                for id in running.keys() {
                    if let Some(status) = observed.get_mut(id) {
                        status.problems =
                            vec![format!("(what the instances report is unknown: {e})")];
                    }
                }
            }
        }
    }

    // ---- deploy -------------------------------------------------------------------------------

    async fn deploy_locked(
        &self,
        request: &DeployRequest,
        lease: &mut Timestamp,
        progress: &dyn Progress,
    ) -> Result<DeployOutcome, EngineError> {
        let id = &request.id;
        let mut records = self.records().await?;
        let table = self.routing().await?;
        let mode = match records.iter().find(|r| &r.version.id == id) {
            None => DeployMode::New,
            Some(r) => match r.version.state {
                VersionState::Deploying | VersionState::Active if table.in_default(id) => {
                    DeployMode::Finish
                }
                VersionState::Deploying => DeployMode::Resume,
                state => {
                    return Err(EngineError::IdInUse {
                        id: id.clone(),
                        state,
                    });
                }
            },
        };
        if mode != DeployMode::Finish {
            // Interrupted deploys that take no traffic are removed below and free their rules.
            let holding: Vec<Version> = records
                .iter()
                .filter(|r| {
                    &r.version.id != id
                        && (r.version.state != VersionState::Deploying
                            || table.in_default(&r.version.id))
                })
                .map(|r| r.version.clone())
                .collect();
            self.settings.budget.check_new_version(&holding)?;
        }
        if mode != DeployMode::New {
            note(progress, format!("resuming the interrupted deploy of {id}"));
        }
        let mut outcome = DeployOutcome {
            deployment_id: id.clone(),
            draining: Vec::new(),
            resumed: mode != DeployMode::New,
            recovered: Vec::new(),
        };

        // We hold the lock, so any other `deploying` record belongs to a deploy that died.
        let fixed = self
            .reconcile(&mut records, &table, Some(id), progress)
            .await?;
        outcome.recovered.extend(fixed.activated);
        outcome.draining.extend(fixed.drained);
        let mut removed = Vec::new();
        for record in records
            .iter_mut()
            .filter(|r| &r.version.id != id && r.version.state == VersionState::Deploying)
        {
            let other = record.version.id.clone();
            note(
                progress,
                format!("removing {other}: its deploy was interrupted before it took traffic"),
            );
            let routed = serves_affinity(&table, &other);
            self.remove_version(record, routed, progress).await?;
            removed.push(other);
        }
        records.retain(|r| !removed.contains(&r.version.id));
        outcome.recovered.extend(removed);

        let mut record = match records.iter().find(|r| &r.version.id == id) {
            Some(existing) => existing.clone(),
            None => {
                let record = VersionRecord {
                    version: Version::new(id.clone(), self.now()),
                    image: None,
                    instances: request.instances,
                    ready_passes: 0,
                };
                self.put(&record, progress, "recording it deploying")
                    .await?;
                record
            }
        };
        if mode != DeployMode::Finish {
            let previous = table
                .default_targets()
                .iter()
                .map(|t| t.id.clone())
                .find(|t| t != id);
            self.bring_up(&mut record, request, previous, lease, progress)
                .await?;
        }
        self.record_state(&mut record, VersionState::Active, progress)
            .await?;
        for other in records
            .iter_mut()
            .filter(|r| &r.version.id != id && r.version.state == VersionState::Active)
        {
            self.record_state(other, VersionState::Draining, progress)
                .await?;
            outcome.draining.push(other.version.id.clone());
        }
        Ok(outcome)
    }

    /// Prepares, routes, starts and health-gates a recorded `deploying` version, then switches
    /// fresh traffic to it.
    async fn bring_up(
        &self,
        record: &mut VersionRecord,
        request: &DeployRequest,
        previous: Option<DeploymentId>,
        lease: &mut Timestamp,
        progress: &dyn Progress,
    ) -> Result<(), EngineError> {
        let id = record.version.id.clone();
        let on_err = step(progress, &id, "preparing the image");
        let image = match self
            .ports
            .images
            .prepare(&id, &request.image, progress)
            .await
        {
            Ok(image) => image,
            // A build that failed fails again the same way: nothing of the version is kept
            // (it has no routing nor instances yet), so that no half-made version is left
            // behind. Other failures leave the record for `flotilla deploy --id` to resume.
            Err(source) if source.kind == ErrorKind::Invalid => {
                let error = EngineError::ImageFailed {
                    id: id.clone(),
                    source,
                };
                if let Err(cleanup) = self.remove_version(record, false, progress).await {
                    note(
                        progress,
                        format!("{cleanup}; `flotilla reap` finishes removing {id}"),
                    );
                }
                return Err(error);
            }
            Err(e) => return Err(on_err(e)),
        };
        if record.image.as_ref() != Some(&image) {
            let updated = VersionRecord {
                image: Some(image.clone()),
                ..record.clone()
            };
            self.put(&updated, progress, "recording its image").await?;
            *record = updated;
        }
        // A build can take long; make sure the lock is still ours before creating more.
        self.keep_lock(lease).await?;
        let on_err = step(progress, &id, "installing its affinity routing");
        self.ports
            .routing
            .install_affinity(&id)
            .await
            .map_err(on_err)?;
        let spec = VersionSpec {
            name: self.settings.name.clone(),
            id: id.clone(),
            image,
            instances: record.instances,
            env: request.env.clone(),
        };
        let what = format!("creating {} instances", record.instances);
        let on_err = step(progress, &id, &what);
        self.ports.compute.create(&spec).await.map_err(on_err)?;
        let needed = request.min_healthy.min(record.instances);
        if let Err(unhealthy) = self.wait_healthy(&id, needed, lease, progress).await? {
            return Err(self
                .give_up(record, needed, unhealthy, previous, progress)
                .await);
        }
        let on_err = step(progress, &id, "switching fresh traffic to it");
        self.ports
            .routing
            .set_default(&[WeightedTarget {
                id: id.clone(),
                weight: 100,
            }])
            .await
            .map_err(on_err)
    }

    /// Polls until `needed` instances are healthy; `Ok(Err(..))` when the deadline passed first.
    async fn wait_healthy(
        &self,
        id: &DeploymentId,
        needed: u32,
        lease: &mut Timestamp,
        progress: &dyn Progress,
    ) -> Result<Result<(), Unhealthy>, EngineError> {
        let timeout = self.settings.health_timeout;
        let poll = self.settings.health_poll.max(MIN_POLL);
        let started = self.now();
        let what = format!(
            "waiting for {needed} healthy instances (up to {}s)",
            timeout.as_secs()
        );
        progress.event(Event::Step {
            id: id.clone(),
            what,
        });
        loop {
            let mut observed = self
                .ports
                .compute
                .observe(std::slice::from_ref(id))
                .await
                .map_err(EngineError::port(format!("checking the health of {id}")))?;
            let status = observed.remove(id).unwrap_or_default();
            let elapsed = self.now().since(started);
            progress.event(Event::WaitingHealthy {
                id: id.clone(),
                healthy: status.healthy,
                needed,
                running: status.running,
                elapsed,
                timeout,
            });
            if status.healthy >= needed {
                return Ok(Ok(()));
            }
            if elapsed >= timeout {
                return Ok(Err(Unhealthy {
                    healthy: status.healthy,
                    waited: elapsed,
                }));
            }
            self.keep_lock(lease).await?;
            self.ports.clock.sleep(poll.min(timeout - elapsed)).await;
        }
    }

    /// Removes a version that never got healthy and says why, with its logs. Traffic never
    /// reached it, so nothing else changes.
    async fn give_up(
        &self,
        record: &mut VersionRecord,
        needed: u32,
        unhealthy: Unhealthy,
        previous: Option<DeploymentId>,
        progress: &dyn Progress,
    ) -> EngineError {
        let id = record.version.id.clone();
        progress.event(Event::Step {
            id: id.clone(),
            what: "fetching the logs of its instances".to_owned(),
        });
        let logs = match self.ports.compute.recent_logs(&id, LOG_LINES).await {
            Ok(lines) => lines,
            Err(e) => vec![format!("(the logs could not be fetched: {e})")],
        };
        // Its affinity was installed before its instances were created.
        if let Err(e) = self.remove_version(record, true, progress).await {
            return match e {
                EngineError::Port { step, source } => EngineError::Port {
                    step: format!(
                        "{step} (removing {id}, which did not become healthy within {}s; \
                         `flotilla reap` finishes the removal)",
                        unhealthy.waited.as_secs()
                    ),
                    source,
                },
                other => other,
            };
        }
        EngineError::NotHealthy {
            id,
            previous,
            healthy: unhealthy.healthy,
            needed,
            waited: unhealthy.waited,
            logs,
        }
    }

    // ---- rollback and drain -------------------------------------------------------------------

    async fn rollback_locked(
        &self,
        target: Option<DeploymentId>,
        progress: &dyn Progress,
    ) -> Result<RollbackOutcome, EngineError> {
        let mut records = self.records().await?;
        let table = self.routing().await?;
        let target = match target {
            Some(id) => id,
            None => match interrupted_rollback(&records, &table) {
                Some(id) => {
                    note(
                        progress,
                        format!("finishing the interrupted rollback to {id}"),
                    );
                    id
                }
                None => self.rollback_candidate(&records, &table).await?,
            },
        };
        let Some(pos) = records.iter().position(|r| r.version.id == target) else {
            return Err(self.unknown(&target));
        };
        let redeploy = "deploy the code you want as a new version (`flotilla deploy`)";
        match records[pos].version.state {
            VersionState::Retired => {
                return refused(
                    format!(
                        "version {target} is retired: its instances are stopped and its affinity answers 410"
                    ),
                    redeploy,
                );
            }
            VersionState::Failed => {
                return refused(
                    format!("version {target} failed to deploy and never served"),
                    redeploy,
                );
            }
            VersionState::Deploying => {
                return refused(
                    format!("version {target} is still deploying and has never served"),
                    format!(
                        "wait for its deploy to finish, or resume it with `flotilla deploy --id {target}`"
                    ),
                );
            }
            VersionState::Active | VersionState::Draining => {}
        }
        if !table.in_default(&target) {
            let running = self
                .observe(std::slice::from_ref(&target))
                .await?
                .get(&target)
                .map_or(0, |c| c.running);
            if running == 0 {
                return refused(
                    format!("version {target} has no running instances to take traffic"),
                    redeploy,
                );
            }
        }
        let on_err = step(progress, &target, "switching fresh traffic to it");
        self.ports
            .routing
            .set_default(&[WeightedTarget {
                id: target.clone(),
                weight: 100,
            }])
            .await
            .map_err(on_err)?;
        self.record_state(&mut records[pos], VersionState::Active, progress)
            .await?;
        let mut drained = Vec::new();
        for other in records
            .iter_mut()
            .filter(|r| r.version.id != target && r.version.state == VersionState::Active)
        {
            self.record_state(other, VersionState::Draining, progress)
                .await?;
            drained.push(other.version.id.clone());
        }
        Ok(RollbackOutcome {
            active: target,
            draining: drained.into_iter().next(),
        })
    }

    /// The newest draining version that takes no fresh traffic and still runs.
    async fn rollback_candidate(
        &self,
        records: &[VersionRecord],
        table: &RoutingTable,
    ) -> Result<DeploymentId, EngineError> {
        let redeploy = "deploy the code you want as a new version (`flotilla deploy`)";
        let candidates: Vec<DeploymentId> = records
            .iter()
            .rev()
            .filter(|r| {
                r.version.state == VersionState::Draining && !table.in_default(&r.version.id)
            })
            .map(|r| r.version.id.clone())
            .collect();
        if candidates.is_empty() {
            return refused(
                format!(
                    "no earlier version of `{}` is draining, so there is nothing to roll back to",
                    self.settings.name
                ),
                redeploy,
            );
        }
        let observed = self.observe(&candidates).await?;
        match candidates
            .into_iter()
            .find(|id| observed.get(id).is_some_and(|c| c.running > 0))
        {
            Some(id) => Ok(id),
            None => refused(
                format!(
                    "no draining version of `{}` still has running instances",
                    self.settings.name
                ),
                redeploy,
            ),
        }
    }

    async fn drain_locked(
        &self,
        id: &DeploymentId,
        progress: &dyn Progress,
    ) -> Result<(), EngineError> {
        let record = self
            .ports
            .state
            .get(id)
            .await
            .map_err(EngineError::port(format!("reading the record of {id}")))?;
        let Some(mut record) = record else {
            return Err(self.unknown(id));
        };
        match record.version.state {
            VersionState::Draining => {
                note(progress, format!("{id} is already draining"));
                Ok(())
            }
            VersionState::Active => {
                let table = self.routing().await?;
                if table.in_default(id) {
                    return refused(
                        format!("version {id} is active: fresh traffic goes to it"),
                        "deploy a new version or roll back to an earlier one (`flotilla rollback`); \
                         the active version then drains by itself",
                    );
                }
                self.record_state(&mut record, VersionState::Draining, progress)
                    .await?;
                Ok(())
            }
            VersionState::Deploying => refused(
                format!("version {id} is still deploying and has never served"),
                format!(
                    "wait for its deploy to finish or fail; to give up on it, run `flotilla teardown {id}`"
                ),
            ),
            VersionState::Retired => refused(
                format!("version {id} is already retired"),
                format!(
                    "the reaper removes it once its instances stop; `flotilla teardown {id}` removes it now"
                ),
            ),
            VersionState::Failed => refused(
                format!("version {id} failed to deploy and is being removed"),
                "`flotilla reap` finishes removing it",
            ),
        }
    }

    // ---- reap ---------------------------------------------------------------------------------

    async fn reap_pass(
        &self,
        dry_run: bool,
        progress: &dyn Progress,
    ) -> Result<ReapReport, EngineError> {
        // Resources are read before records: a record is written before its version's first
        // resource and deleted after its last, so a resource seen here whose record is missing
        // from the later list truly has no record.
        let table = self.routing().await?;
        let with_compute = self.compute_ids().await?;
        let mut records = self.records().await?;
        let orphans = orphan_ids(&table, &with_compute, &records);
        let mut report = ReapReport::default();
        if !dry_run {
            let fixed = self.reconcile(&mut records, &table, None, progress).await?;
            report.recovered.extend(fixed.activated);
            report.recovered.extend(fixed.drained);
        }
        let ids: Vec<DeploymentId> = records.iter().map(|r| r.version.id.clone()).collect();
        let observed = self.observe(&ids).await?;
        let draining: Vec<DeploymentId> = records
            .iter()
            .filter(|r| {
                r.version.state == VersionState::Draining && observed.contains_key(&r.version.id)
            })
            .map(|r| r.version.id.clone())
            .collect();
        let readiness = self.readiness(&draining).await?;
        let fleet: Vec<VersionView> = records
            .iter()
            .map(|r| version_view(r, &observed, &readiness, &table))
            .collect();
        let plan = plan_pass(&fleet, self.now(), &self.settings.policy);
        report.waiting = plan.waiting;
        for action in plan.actions {
            if !dry_run
                && let Err(e) = self
                    .carry_out(&action, &mut records, &table, progress)
                    .await
            {
                note(progress, format!("{e}; the next reaper pass tries again"));
                report.failed.push((action, e.to_string()));
                continue;
            }
            progress.event(Event::Reaped {
                action: action.clone(),
                dry_run,
            });
            report.actions.push(action);
        }
        for id in orphans {
            if dry_run {
                note(
                    progress,
                    format!("{id} has resources but no record; a reaper pass removes them"),
                );
                report.orphans_removed.push(id);
                continue;
            }
            if table.in_default(&id) {
                let why = format!(
                    "{id} has no record but fresh traffic still goes to it; deploy a new version \
                     (or roll back to a recorded one) and reap again"
                );
                note(progress, why.clone());
                report.orphans_failed.push((id, why));
                continue;
            }
            match self
                .remove_orphan(&id, serves_affinity(&table, &id), progress)
                .await
            {
                Ok(()) => report.orphans_removed.push(id),
                Err(e) => {
                    note(progress, format!("{e}; the next reaper pass tries again"));
                    report.orphans_failed.push((id, e.to_string()));
                }
            }
        }
        Ok(report)
    }

    /// Carries out one planned reaper action. Every action is idempotent.
    async fn carry_out(
        &self,
        action: &ReapAction,
        records: &mut [VersionRecord],
        table: &RoutingTable,
        progress: &dyn Progress,
    ) -> Result<(), EngineError> {
        let routed = serves_affinity(table, action.id());
        let id = action.id();
        let Some(record) = records.iter_mut().find(|r| &r.version.id == id) else {
            return Err(self.unknown(id));
        };
        match action {
            ReapAction::RecordReadyPasses { passes, .. } => {
                let updated = VersionRecord {
                    ready_passes: *passes,
                    ..record.clone()
                };
                let what = format!("recording {passes} consecutive ready passes");
                self.put(&updated, progress, &what).await?;
                *record = updated;
                Ok(())
            }
            ReapAction::Retire { .. } => {
                self.record_state(record, VersionState::Retired, progress)
                    .await?;
                self.retire_routing(id, progress).await?;
                self.scale_to_zero(id, progress).await
            }
            ReapAction::RetireRouting { .. } => self.retire_routing(id, progress).await,
            ReapAction::ScaleToZero { .. } => self.scale_to_zero(id, progress).await,
            ReapAction::DeleteResources { .. } => self.remove_resources(id, routed, progress).await,
            ReapAction::CleanUpFailed { .. } => self.remove_version(record, routed, progress).await,
        }
    }

    async fn retire_routing(
        &self,
        id: &DeploymentId,
        progress: &dyn Progress,
    ) -> Result<(), EngineError> {
        let on_err = step(progress, id, "making its affinity answer 410 Gone");
        self.ports.routing.retire_affinity(id).await.map_err(on_err)
    }

    async fn scale_to_zero(
        &self,
        id: &DeploymentId,
        progress: &dyn Progress,
    ) -> Result<(), EngineError> {
        let on_err = step(progress, id, "scaling it to zero");
        match self.ports.compute.scale(id, 0).await {
            Err(e) if e.kind != ErrorKind::NotFound => Err(on_err(e)),
            // Nothing to scale down is what scaling to zero wants.
            _ => Ok(()),
        }
    }

    // ---- teardown -----------------------------------------------------------------------------

    async fn teardown_locked(
        &self,
        target: TeardownTarget,
        progress: &dyn Progress,
    ) -> Result<TeardownReport, EngineError> {
        let table = self.routing().await?;
        let mut report = TeardownReport::default();
        match target {
            TeardownTarget::One(id) => {
                let mut records = self.records().await?;
                let Some(pos) = records.iter().position(|r| r.version.id == id) else {
                    return Err(self.unknown(&id));
                };
                if table.in_default(&id) {
                    let others: Vec<&DeploymentId> = records
                        .iter()
                        .filter(|r| r.version.id != id && r.version.state.runs())
                        .map(|r| &r.version.id)
                        .collect();
                    if !others.is_empty() {
                        return refused(
                            format!(
                                "version {id} takes the fresh traffic of `{}` while other versions run ({})",
                                self.settings.name,
                                ids_list(&others)
                            ),
                            "roll back to one of them first (`flotilla rollback`), or remove \
                             everything with `flotilla teardown --all`",
                        );
                    }
                    let on_err = step(
                        progress,
                        &id,
                        "stopping fresh traffic (no other version is deployed)",
                    );
                    self.ports.routing.set_default(&[]).await.map_err(on_err)?;
                }
                let routed = serves_affinity(&table, &id);
                self.remove_version(&mut records[pos], routed, progress)
                    .await?;
                report.removed.push(id);
            }
            TeardownTarget::All => {
                let with_compute = self.compute_ids().await?;
                let mut records = self.records().await?;
                let orphans = orphan_ids(&table, &with_compute, &records);
                if !table.default_targets().is_empty() {
                    note(
                        progress,
                        format!(
                            "stopping fresh traffic to `{}`: requests get \"no version deployed\"",
                            self.settings.name
                        ),
                    );
                    self.ports
                        .routing
                        .set_default(&[])
                        .await
                        .map_err(EngineError::port(format!(
                            "emptying the default forward of `{}`",
                            self.settings.name
                        )))?;
                }
                for record in &mut records {
                    let routed = serves_affinity(&table, &record.version.id);
                    self.remove_version(record, routed, progress).await?;
                    report.removed.push(record.version.id.clone());
                }
                for id in orphans {
                    self.remove_orphan(&id, serves_affinity(&table, &id), progress)
                        .await?;
                    report.orphans_removed.push(id);
                }
            }
        }
        Ok(report)
    }

    // ---- shared steps -------------------------------------------------------------------------

    /// Brings records in line with the default forward after an interrupted switch: when fresh
    /// traffic goes to exactly one recorded version, that version is recorded `active` and every
    /// other `active` one `draining`. `except` (a deploy's own id) is left to its deploy.
    async fn reconcile(
        &self,
        records: &mut [VersionRecord],
        table: &RoutingTable,
        except: Option<&DeploymentId>,
        progress: &dyn Progress,
    ) -> Result<Reconciled, EngineError> {
        let mut done = Reconciled::default();
        let [target] = table.default_targets() else {
            return Ok(done);
        };
        let serving = &target.id;
        if except == Some(serving) {
            return Ok(done);
        }
        let Some(pos) = records.iter().position(|r| &r.version.id == serving) else {
            return Ok(done);
        };
        match records[pos].version.state {
            VersionState::Active => {}
            state @ (VersionState::Deploying | VersionState::Draining) => {
                note(
                    progress,
                    format!(
                        "{serving} takes fresh traffic but is recorded {state}: finishing the interrupted switch to it"
                    ),
                );
                self.record_state(&mut records[pos], VersionState::Active, progress)
                    .await?;
                done.activated.push(serving.clone());
            }
            VersionState::Retired | VersionState::Failed => return Ok(done),
        }
        for record in records.iter_mut() {
            if &record.version.id != serving
                && Some(&record.version.id) != except
                && record.version.state == VersionState::Active
            {
                self.record_state(record, VersionState::Draining, progress)
                    .await?;
                done.drained.push(record.version.id.clone());
            }
        }
        Ok(done)
    }

    /// Records the version on its way out (`retired`, or `failed` if it never served), then
    /// removes its resources ([`Engine::remove_resources`]; `routed`: its affinity still forwards
    /// to it).
    async fn remove_version(
        &self,
        record: &mut VersionRecord,
        routed: bool,
        progress: &dyn Progress,
    ) -> Result<(), EngineError> {
        let path: &[VersionState] = match record.version.state {
            VersionState::Deploying => &[VersionState::Failed],
            VersionState::Active => &[VersionState::Draining, VersionState::Retired],
            VersionState::Draining => &[VersionState::Retired],
            VersionState::Retired | VersionState::Failed => &[],
        };
        if let Some(last) = path.last() {
            let now = self.now();
            let mut version = record.version.clone();
            for &next in path {
                version.transition(next, now)?;
            }
            let updated = VersionRecord {
                version,
                ..record.clone()
            };
            self.put(&updated, progress, &format!("recording it {last}"))
                .await?;
            *record = updated;
        }
        self.remove_resources(&record.version.id, routed, progress)
            .await
    }

    /// Removes a version's resources, each step succeeding if its resource is already gone:
    /// first its affinity answers 410 Gone (when `routed`, it still forwards to the version), so
    /// no request meets a version whose instances are stopping; then its instances are scaled to
    /// zero and deleted; then its rules and target group go (the provider waits out a target group
    /// still briefly in use); then its image and, last, its record.
    async fn remove_resources(
        &self,
        id: &DeploymentId,
        routed: bool,
        progress: &dyn Progress,
    ) -> Result<(), EngineError> {
        if routed {
            self.retire_routing(id, progress).await?;
        }
        let on_err = step(progress, id, "deleting its instances");
        self.ports.compute.delete(id).await.map_err(on_err)?;
        let on_err = step(progress, id, "removing its routing");
        self.ports
            .routing
            .remove_affinity(id)
            .await
            .map_err(on_err)?;
        let on_err = step(progress, id, "discarding its image");
        self.ports.images.discard(id).await.map_err(on_err)?;
        let on_err = step(progress, id, "deleting its record");
        self.ports.state.delete(id).await.map_err(on_err)
    }

    /// Removes resources that no record owns. Orphans are found by their compute and routing, and
    /// images cannot be listed, so the image and readiness go first: an interrupted removal still
    /// leaves something that leads the next pass back here. Then the same order as
    /// [`Engine::remove_resources`]: 410 (when `routed`), instances, routing.
    async fn remove_orphan(
        &self,
        id: &DeploymentId,
        routed: bool,
        progress: &dyn Progress,
    ) -> Result<(), EngineError> {
        note(
            progress,
            format!("removing resources of {id}, which no record owns"),
        );
        let on_err = step(progress, id, "discarding its image");
        self.ports.images.discard(id).await.map_err(on_err)?;
        let on_err = step(progress, id, "deleting its instance readiness");
        self.ports.state.delete(id).await.map_err(on_err)?;
        if routed {
            self.retire_routing(id, progress).await?;
        }
        let on_err = step(progress, id, "deleting its instances");
        self.ports.compute.delete(id).await.map_err(on_err)?;
        let on_err = step(progress, id, "removing its routing");
        self.ports.routing.remove_affinity(id).await.map_err(on_err)
    }

    /// Moves `record` to `to` and stores it; nothing happens if it is already there.
    ///
    /// The ready-pass count starts over with every state change: it belongs to one drain, and a
    /// count left from before a rollback must not shorten the next one.
    async fn record_state(
        &self,
        record: &mut VersionRecord,
        to: VersionState,
        progress: &dyn Progress,
    ) -> Result<(), EngineError> {
        if record.version.state == to {
            return Ok(());
        }
        let mut version = record.version.clone();
        version.transition(to, self.now())?;
        let updated = VersionRecord {
            version,
            ready_passes: 0,
            ..record.clone()
        };
        self.put(&updated, progress, &format!("recording it {to}"))
            .await?;
        *record = updated;
        Ok(())
    }

    async fn put(
        &self,
        record: &VersionRecord,
        progress: &dyn Progress,
        what: &str,
    ) -> Result<(), EngineError> {
        let on_err = step(progress, &record.version.id, what);
        self.ports.state.put(record).await.map_err(on_err)
    }

    // ---- reads --------------------------------------------------------------------------------

    fn now(&self) -> Timestamp {
        self.ports.clock.now()
    }

    fn unknown(&self, id: &DeploymentId) -> EngineError {
        EngineError::UnknownVersion {
            name: self.settings.name.clone(),
            id: id.clone(),
        }
    }

    /// Every record, oldest first (whatever order the store keeps).
    async fn records(&self) -> Result<Vec<VersionRecord>, EngineError> {
        let mut records = self
            .ports
            .state
            .list()
            .await
            .map_err(EngineError::port(format!(
                "reading the versions of `{}`",
                self.settings.name
            )))?;
        records.sort_by(|a, b| {
            (a.version.created_at, &a.version.id).cmp(&(b.version.created_at, &b.version.id))
        });
        Ok(records)
    }

    async fn routing(&self) -> Result<RoutingTable, EngineError> {
        self.ports
            .routing
            .snapshot()
            .await
            .map_err(EngineError::port(format!(
                "reading the routing of `{}`",
                self.settings.name
            )))
    }

    async fn compute_ids(&self) -> Result<Vec<DeploymentId>, EngineError> {
        self.ports
            .compute
            .list()
            .await
            .map_err(EngineError::port(format!(
                "listing the compute of `{}`",
                self.settings.name
            )))
    }

    async fn observe(
        &self,
        ids: &[DeploymentId],
    ) -> Result<BTreeMap<DeploymentId, ComputeStatus>, EngineError> {
        if ids.is_empty() {
            return Ok(BTreeMap::new());
        }
        self.ports
            .compute
            .observe(ids)
            .await
            .map_err(EngineError::port(format!(
                "observing the instances of `{}`",
                self.settings.name
            )))
    }

    async fn readiness(
        &self,
        ids: &[DeploymentId],
    ) -> Result<BTreeMap<DeploymentId, BTreeMap<InstanceId, Readiness>>, EngineError> {
        if ids.is_empty() {
            return Ok(BTreeMap::new());
        }
        self.ports
            .state
            .readiness(ids)
            .await
            .map_err(EngineError::port(format!(
                "reading instance readiness of `{}`",
                self.settings.name
            )))
    }

    // ---- the lock -----------------------------------------------------------------------------

    /// Takes the deploy lock; returns when it was taken. A lock whose holder ran on this host and
    /// no longer runs (a CLI killed with `kill -9`) is broken, with a note saying whose it was.
    async fn lock(&self, force: bool, progress: &dyn Progress) -> Result<Timestamp, EngineError> {
        let now = self.now();
        match self.acquire(now, force).await? {
            LockOutcome::Acquired => Ok(now),
            LockOutcome::Held(lock) if self.holder_is_gone(&lock) => {
                match self.acquire(now, true).await? {
                    LockOutcome::Acquired => {
                        note(
                            progress,
                            format!(
                                "broke the deploy lock of {}: that process no longer runs",
                                lock.owner
                            ),
                        );
                        Ok(now)
                    }
                    LockOutcome::Held(lock) => Err(EngineError::LockHeld {
                        name: self.settings.name.clone(),
                        lock,
                    }),
                }
            }
            LockOutcome::Held(lock) => Err(EngineError::LockHeld {
                name: self.settings.name.clone(),
                lock,
            }),
        }
    }

    fn holder_is_gone(&self, lock: &LockInfo) -> bool {
        self.settings.local_holders.as_ref().is_some_and(|local| {
            flotilla_core::lock::holder_is_gone(&lock.owner, &local.host, local.alive)
        })
    }

    async fn acquire(&self, now: Timestamp, force: bool) -> Result<LockOutcome, EngineError> {
        self.ports
            .state
            .acquire_lock(
                &self.settings.lock_owner,
                now,
                self.settings.lock_ttl,
                force,
            )
            .await
            .map_err(EngineError::port(format!(
                "taking the deploy lock of `{}`",
                self.settings.name
            )))
    }

    /// Renews the lock once a third of its lifetime has passed since `lease`, so a long deploy
    /// does not lose it; fails if someone else took it over meanwhile.
    async fn keep_lock(&self, lease: &mut Timestamp) -> Result<(), EngineError> {
        let now = self.now();
        if now.since(*lease) < self.settings.lock_ttl / 3 {
            return Ok(());
        }
        match self.acquire(now, false).await? {
            LockOutcome::Acquired => {
                *lease = now;
                Ok(())
            }
            LockOutcome::Held(lock) => Err(EngineError::LockHeld {
                name: self.settings.name.clone(),
                lock,
            }),
        }
    }

    /// Releases the lock. A failure only delays the next operation until the lock lapses, so it is
    /// reported, not returned.
    async fn unlock(&self, progress: &dyn Progress) {
        if let Err(e) = self
            .ports
            .state
            .release_lock(&self.settings.lock_owner)
            .await
        {
            note(
                progress,
                format!(
                    "could not release the deploy lock ({e}); it lapses by itself within {}s",
                    self.settings.lock_ttl.as_secs()
                ),
            );
        }
    }
}
