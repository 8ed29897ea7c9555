//! The reaper's pass: the core's plan (`plan_pass`) over what the ports observe, carried out.

use std::collections::BTreeMap;

use flotilla_core::drain::Readiness;
use flotilla_core::reaper::{ComputeCounts, ReapAction, VersionView, Waiting, plan_pass};
use flotilla_core::routing::RoutingTable;
use flotilla_core::{DeploymentId, InstanceId, VersionState};
use serde::{Deserialize, Serialize};

use crate::error::EngineError;
use crate::events::{Event, Progress};
use crate::ports::{ComputeStatus, ErrorKind, LockInfo, LockOutcome, VersionRecord};

use super::Engine;
use super::common::{note, orphan_ids, serves_affinity, step};

/// What a reaper pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
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

impl Engine {
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

    pub(super) async fn retire_routing(
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
}
