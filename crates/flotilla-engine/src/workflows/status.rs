//! Status: every version's record, compute and routing, read together.

use std::collections::BTreeMap;

use flotilla_core::drain::Readiness;
use flotilla_core::routing::{Affinity, RoutingTable, RuleBudget};
use flotilla_core::{DeploymentId, DeploymentName, InstanceId};
use serde::{Deserialize, Serialize};

use crate::error::EngineError;
use crate::ports::{ComputeStatus, LockInfo, VersionRecord};

use super::Engine;
use super::common::orphan_ids;

/// One version as `status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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

impl Engine {
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
}
