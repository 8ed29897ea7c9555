//! Removing a version and its resources: shared by a failed deploy, the reaper and teardown.

use flotilla_core::{DeploymentId, VersionState};

use crate::error::EngineError;
use crate::events::Progress;
use crate::ports::VersionRecord;

use super::Engine;
use super::common::{note, step};

impl Engine {
    /// Records the version on its way out (`retired`, or `failed` if it never served), then
    /// removes its resources ([`Engine::remove_resources`]; `routed`: its affinity still forwards
    /// to it).
    pub(super) async fn remove_version(
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
    pub(super) async fn remove_resources(
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
    pub(super) async fn remove_orphan(
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
}
