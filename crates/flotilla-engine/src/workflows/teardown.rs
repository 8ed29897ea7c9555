//! Teardown: removing one version, or every version of the deployment, on request.

use flotilla_core::DeploymentId;
use serde::{Deserialize, Serialize};

use crate::error::EngineError;
use crate::events::Progress;

use super::Engine;
use super::common::{note, orphan_ids, refused, serves_affinity, step};

/// Which versions a teardown removes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TeardownTarget {
    /// One version (refused for the active one while others exist; roll back first).
    One(DeploymentId),
    /// Every version; fresh requests then get "no version deployed yet".
    All,
}

/// What a teardown removed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TeardownReport {
    /// Versions removed.
    pub removed: Vec<DeploymentId>,
    /// Versions with resources but no record whose resources were removed (`--all` only).
    pub orphans_removed: Vec<DeploymentId>,
}

fn ids_list(ids: &[&DeploymentId]) -> String {
    ids.iter()
        .map(|id| id.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

impl Engine {
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
}
