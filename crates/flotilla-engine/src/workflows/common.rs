//! What the workflows share: progress events, refusals, affinity and orphan checks, and reading
//! and writing records, routing, compute and readiness through the ports.

use std::collections::{BTreeMap, BTreeSet};

use flotilla_core::drain::Readiness;
use flotilla_core::routing::{Affinity, RoutingTable};
use flotilla_core::{DeploymentId, InstanceId, Timestamp, VersionState};

use crate::error::EngineError;
use crate::events::{Event, Progress};
use crate::ports::{ComputeStatus, PortError, VersionRecord};

use super::Engine;

/// Records brought in line with the default forward.
#[derive(Default)]
pub(super) struct Reconciled {
    /// Versions recorded `active` because fresh traffic already goes to them.
    pub(super) activated: Vec<DeploymentId>,
    /// Versions recorded `draining` because they were `active` beside the one fresh traffic goes to.
    pub(super) drained: Vec<DeploymentId>,
}

/// Emits the start of a step and returns what wraps a port error of it.
pub(super) fn step(
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

pub(super) fn note(progress: &dyn Progress, message: String) {
    progress.event(Event::Note { message });
}

pub(super) fn refused<T>(message: String, hint: impl Into<String>) -> Result<T, EngineError> {
    Err(EngineError::Refused {
        message,
        hint: hint.into(),
    })
}

/// Ids that have compute, affinity or a default share but no record.
/// Whether `id`'s affinity still forwards to it (so removing it starts with a 410).
pub(super) fn serves_affinity(table: &RoutingTable, id: &DeploymentId) -> bool {
    table.affinity(id) == Some(Affinity::Serving)
}

pub(super) fn orphan_ids(
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

impl Engine {
    /// Brings records in line with the default forward after an interrupted switch: when fresh
    /// traffic goes to exactly one recorded version, that version is recorded `active` and every
    /// other `active` one `draining`. `except` (a deploy's own id) is left to its deploy.
    pub(super) async fn reconcile(
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

    /// Moves `record` to `to` and stores it; nothing happens if it is already there.
    ///
    /// The ready-pass count starts over with every state change: it belongs to one drain, and a
    /// count left from before a rollback must not shorten the next one.
    pub(super) async fn record_state(
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

    pub(super) async fn put(
        &self,
        record: &VersionRecord,
        progress: &dyn Progress,
        what: &str,
    ) -> Result<(), EngineError> {
        let on_err = step(progress, &record.version.id, what);
        self.ports.state.put(record).await.map_err(on_err)
    }

    // ---- reads --------------------------------------------------------------------------------

    pub(super) fn now(&self) -> Timestamp {
        self.ports.clock.now()
    }

    pub(super) fn unknown(&self, id: &DeploymentId) -> EngineError {
        EngineError::UnknownVersion {
            name: self.settings.name.clone(),
            id: id.clone(),
        }
    }

    /// Every record, oldest first (whatever order the store keeps).
    pub(super) async fn records(&self) -> Result<Vec<VersionRecord>, EngineError> {
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

    pub(super) async fn routing(&self) -> Result<RoutingTable, EngineError> {
        self.ports
            .routing
            .snapshot()
            .await
            .map_err(EngineError::port(format!(
                "reading the routing of `{}`",
                self.settings.name
            )))
    }

    pub(super) async fn compute_ids(&self) -> Result<Vec<DeploymentId>, EngineError> {
        self.ports
            .compute
            .list()
            .await
            .map_err(EngineError::port(format!(
                "listing the compute of `{}`",
                self.settings.name
            )))
    }

    pub(super) async fn observe(
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

    pub(super) async fn readiness(
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
}
