//! The workflows, written once against the ports: deploy, rollback, drain, reap, teardown, status.
//!
//! Every workflow records its progress in the state store before each step that creates or
//! changes a resource, so that running it again after a crash converges instead of duplicating.
//! Records are created before any resource of a version and deleted after all of them, so a
//! resource never exists without a record that leads the reaper or a re-run to it.

use std::collections::BTreeMap;
use std::time::Duration;

use flotilla_core::drain::Readiness;
use flotilla_core::reaper::{ReapAction, ReapPolicy};
use flotilla_core::routing::{Affinity, RoutingTable, RuleBudget};
use flotilla_core::{DeploymentId, DeploymentName, InstanceId};
use serde::Serialize;

use crate::error::EngineError;
use crate::events::Progress;
use crate::ports::{ComputeStatus, ImageRequest, LockInfo, Ports, VersionRecord};

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
    /// Who this process is, for the lock (`user@host (pid N)`).
    pub lock_owner: String,
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
    /// Whether the pass was skipped because another operation held the lock.
    pub skipped_locked: Option<LockInfo>,
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
    pub async fn deploy(
        &self,
        request: DeployRequest,
        progress: &dyn Progress,
    ) -> Result<DeployOutcome, EngineError> {
        let _ = (request, progress);
        todo!("flotilla-engine helper implements the deploy workflow")
    }

    /// Re-points fresh traffic to `target` (default: the newest draining version that still runs)
    /// and marks the current active version draining. Instant: nothing is created.
    pub async fn rollback(
        &self,
        target: Option<DeploymentId>,
        progress: &dyn Progress,
    ) -> Result<RollbackOutcome, EngineError> {
        let _ = (target, progress);
        todo!("flotilla-engine helper implements the rollback workflow")
    }

    /// Marks a version draining by hand. Refused for the active version (deploy or roll back
    /// first); a no-op for one already draining.
    pub async fn drain(
        &self,
        id: DeploymentId,
        progress: &dyn Progress,
    ) -> Result<(), EngineError> {
        let _ = (id, progress);
        todo!("flotilla-engine helper implements the drain workflow")
    }

    /// One reaper pass: observe, plan with `flotilla_core::reaper::plan_reap`, carry the plan out
    /// (unless `dry_run`). Skipped, not failed, when another operation holds the lock.
    pub async fn reap(
        &self,
        dry_run: bool,
        progress: &dyn Progress,
    ) -> Result<ReapReport, EngineError> {
        let _ = (dry_run, progress);
        todo!("flotilla-engine helper implements the reap workflow")
    }

    /// Removes one version or all, leaving nothing behind.
    pub async fn teardown(
        &self,
        target: TeardownTarget,
        break_lock: bool,
        progress: &dyn Progress,
    ) -> Result<TeardownReport, EngineError> {
        let _ = (target, break_lock, progress);
        todo!("flotilla-engine helper implements the teardown workflow")
    }

    /// Every version with its state, compute, weight, affinity and readiness; rule usage; the lock.
    pub async fn status(&self) -> Result<StatusReport, EngineError> {
        todo!("flotilla-engine helper implements the status workflow")
    }
}
