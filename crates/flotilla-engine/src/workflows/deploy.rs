//! Deploy: a new version brought up, waited for until healthy and switched to; one that never
//! gets healthy is removed with its instances' last logs kept for the error.

use std::time::Duration;

use flotilla_core::canary::{self, CanaryPlan, CanaryState};
use flotilla_core::routing::WeightedTarget;
use flotilla_core::{DeploymentId, Timestamp, Version, VersionState};
use serde::{Deserialize, Serialize};

use crate::error::EngineError;
use crate::events::{Event, Progress};
use crate::ports::{AppEnv, CanaryRecord, ErrorKind, ImageRequest, VersionRecord, VersionSpec};

use super::Engine;
use super::canary::live_canary;
use super::common::{note, refused, serves_affinity, step};

/// What to deploy.
#[derive(Clone, Debug, Serialize, Deserialize)]
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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

/// A version that missed its health deadline.
struct Unhealthy {
    healthy: u32,
    waited: Duration,
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
        self.deploy_with(request, None, progress).await
    }

    /// A deploy, as a canary under `canary` if given (see [`Engine::deploy_canary`]).
    pub(super) async fn deploy_with(
        &self,
        request: DeployRequest,
        canary: Option<CanaryPlan>,
        progress: &dyn Progress,
    ) -> Result<DeployOutcome, EngineError> {
        validate(&request)?;
        let mut lease = self.lock(request.break_lock, progress).await?;
        let result = self
            .deploy_locked(&request, canary, &mut lease, progress)
            .await;
        self.unlock(progress).await;
        result
    }

    async fn deploy_locked(
        &self,
        request: &DeployRequest,
        canary: Option<CanaryPlan>,
        lease: &mut Timestamp,
        progress: &dyn Progress,
    ) -> Result<DeployOutcome, EngineError> {
        let id = &request.id;
        let mut records = self.records().await?;
        let table = self.routing().await?;
        if let Some(pos) = live_canary(&records, &table)
            && &records[pos].version.id != id
        {
            let other = &records[pos].version.id;
            return refused(
                format!("a canary of {other} is running"),
                "wait for it to be promoted or rolled back, or end it now with `flotilla promote` or `flotilla rollback`",
            );
        }
        // A canary is judged against the one version fresh traffic goes to now.
        let recorded = records.iter().any(|r| &r.version.id == id);
        let baseline = match (&canary, table.default_targets()) {
            (None, _) => None,
            // A resumed deploy keeps the canary it recorded.
            (Some(_), _) if recorded => None,
            (Some(_), [only]) if &only.id != id => Some(only.id.clone()),
            (Some(_), _) => {
                return refused(
                    format!(
                        "a canary of {id} needs one current version to judge it against, and fresh traffic of `{}` goes to {} versions",
                        self.settings.name,
                        table.default_targets().len()
                    ),
                    "deploy without --canary for a first version",
                );
            }
        };
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
                    canary: canary.zip(baseline).map(|(plan, baseline)| {
                        Box::new(CanaryRecord {
                            percent: plan.steps[0],
                            plan,
                            baseline,
                            state: CanaryState::start(self.now()),
                            marks: None,
                            last: None,
                            outcome: None,
                            settled: false,
                        })
                    }),
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
        if record.canary.as_deref().is_some_and(CanaryRecord::running) {
            // The current version stays active beside the canary until it is promoted.
            return Ok(outcome);
        }
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
        let (what, targets) = match record.canary.as_ref().filter(|c| c.running()) {
            Some(c) => {
                let (old, new) = canary::weights(c.percent);
                (
                    format!("sending {}% of fresh sessions to it", c.percent),
                    vec![
                        WeightedTarget {
                            id: c.baseline.clone(),
                            weight: old,
                        },
                        WeightedTarget {
                            id: id.clone(),
                            weight: new,
                        },
                    ],
                )
            }
            None => (
                "switching fresh traffic to it".to_owned(),
                vec![WeightedTarget {
                    id: id.clone(),
                    weight: 100,
                }],
            ),
        };
        let on_err = step(progress, &id, &what);
        self.ports
            .routing
            .set_default(&targets)
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
}
