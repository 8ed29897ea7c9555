//! Rollback and drain: fresh traffic sent back to an older version, or taken off one.

use flotilla_core::routing::{RoutingTable, WeightedTarget};
use flotilla_core::{DeploymentId, VersionState};
use serde::{Deserialize, Serialize};

use crate::error::EngineError;
use crate::events::Progress;
use crate::ports::VersionRecord;

use super::Engine;
use super::common::{note, refused, step};

/// What a rollback did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackOutcome {
    /// The version fresh traffic goes to now.
    pub active: DeploymentId,
    /// The version that was active and now drains.
    pub draining: Option<DeploymentId>,
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

impl Engine {
    /// Re-points fresh traffic to `target` (default: the newest draining version that still runs)
    /// and marks the current active version draining. Instant: nothing is created.
    ///
    /// During a canary, it ends the canary instead: fresh sessions go back to the version the
    /// canary was judged against, and the canary drains.
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

    async fn rollback_locked(
        &self,
        target: Option<DeploymentId>,
        progress: &dyn Progress,
    ) -> Result<RollbackOutcome, EngineError> {
        // During a canary, a rollback ends it: fresh sessions back to its baseline.
        if let Some(outcome) = self.abort_canary(target.as_ref(), progress).await? {
            return Ok(outcome);
        }
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
}
