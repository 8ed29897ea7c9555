//! Workflows as plain data: a [`Workflow`] names one workflow with its arguments, an [`Outcome`]
//! is its report, and [`Engine::run`] is the one place that maps the first to the method that
//! produces the second. [`Workflows`] is the seam a command runs them through, whether the engine
//! runs in the same process (AWS) or in the host daemon, which receives the same `Workflow` over
//! its socket and streams the progress `Event`s and the `Outcome` (or the `EngineError`) back.
//!
//! A new workflow is its `Engine` method, a variant here and its arm in [`Engine::run`] (plus an
//! [`Outcome`] variant if it reports something new); no provider changes.

use std::future::Future;
use std::pin::Pin;

use async_trait::async_trait;
use flotilla_core::canary::CanaryPlan;
use flotilla_core::{DeploymentId, Timestamp};
use serde::{Deserialize, Serialize};

use crate::error::EngineError;
use crate::events::Progress;

use super::{
    CanaryTick, DeployOutcome, DeployRequest, Engine, ReapReport, RollbackOutcome, StatusReport,
    TeardownReport, TeardownTarget,
};

/// One workflow and its arguments, as a command asks for it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "workflow", rename_all = "snake_case")]
pub enum Workflow {
    /// `Engine::deploy`, or `Engine::deploy_canary` with a canary plan.
    Deploy {
        /// What to deploy.
        request: DeployRequest,
        /// Deploy it as a canary with these steps.
        #[serde(default)]
        canary: Option<CanaryPlan>,
    },
    /// `Engine::rollback`.
    Rollback {
        /// The version to go back to; the previous one when `None`.
        id: Option<DeploymentId>,
    },
    /// `Engine::promote`.
    Promote,
    /// `Engine::drain`.
    Drain {
        /// The version to drain.
        id: DeploymentId,
    },
    /// `Engine::reap`.
    Reap {
        /// Plan only.
        dry_run: bool,
    },
    /// `Engine::teardown`.
    Teardown {
        /// Which versions.
        target: TeardownTarget,
        /// Break a lock held by someone else.
        break_lock: bool,
    },
    /// `Engine::status`.
    Status,
    /// The last `lines` log lines of one version's instances (`Compute::recent_logs`).
    RecentLogs {
        /// The version.
        id: DeploymentId,
        /// Lines wanted.
        lines: usize,
    },
}

/// What a [`Workflow`] reported, one variant per report type.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", content = "report", rename_all = "snake_case")]
pub enum Outcome {
    /// A deploy (canary or not).
    Deployed(DeployOutcome),
    /// A rollback.
    RolledBack(RollbackOutcome),
    /// A promote: how the canary ended.
    Promoted(CanaryTick),
    /// A drain.
    Drained,
    /// A reaper pass.
    Reaped(ReapReport),
    /// A teardown.
    TornDown(TeardownReport),
    /// A status report.
    Status(Box<StatusReport>),
    /// Log lines, oldest first.
    Logs(Vec<String>),
}

impl Engine {
    /// Runs `workflow` to its end.
    pub async fn run(
        &self,
        workflow: Workflow,
        progress: &dyn Progress,
    ) -> Result<Outcome, EngineError> {
        Ok(match workflow {
            Workflow::Deploy {
                request,
                canary: None,
            } => Outcome::Deployed(self.deploy(request, progress).await?),
            Workflow::Deploy {
                request,
                canary: Some(plan),
            } => Outcome::Deployed(self.deploy_canary(request, plan, progress).await?),
            Workflow::Rollback { id } => Outcome::RolledBack(self.rollback(id, progress).await?),
            Workflow::Promote => Outcome::Promoted(self.promote(progress).await?),
            Workflow::Drain { id } => {
                self.drain(id, progress).await?;
                Outcome::Drained
            }
            Workflow::Reap { dry_run } => Outcome::Reaped(self.reap(dry_run, progress).await?),
            Workflow::Teardown { target, break_lock } => {
                Outcome::TornDown(self.teardown(target, break_lock, progress).await?)
            }
            Workflow::Status => Outcome::Status(Box::new(self.status().await?)),
            Workflow::RecentLogs { id, lines } => Outcome::Logs(
                self.ports()
                    .compute
                    .recent_logs(&id, lines)
                    .await
                    .map_err(EngineError::port(format!("read the logs of {id}")))?,
            ),
        })
    }
}

/// What resolves when the command is interrupted (Ctrl-C); `never()` for a workflow nobody
/// interrupts.
pub type Interrupt = Pin<Box<dyn Future<Output = ()> + Send>>;

/// An [`Interrupt`] that never comes.
pub fn never() -> Interrupt {
    Box::pin(std::future::pending())
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Ran {
    /// The workflow finished with this report.
    Finished(Outcome),
    /// The interrupt came first: the workflow stopped between two steps (every step done so far
    /// is recorded, so running the same command again resumes) and its deploy lock was released.
    Interrupted,
}

/// Where a command's workflows run: the one seam between a command and the engine. The engine
/// itself implements it (the workflows run in this process, over the provider's ports); the
/// host provider's daemon client implements it by sending the [`Workflow`] over its socket.
#[async_trait]
pub trait Workflows: Send + Sync {
    /// Runs `workflow`, passing its progress events to `progress` as they come, until it ends
    /// or `interrupt` resolves.
    async fn run(
        &self,
        workflow: Workflow,
        progress: &dyn Progress,
        interrupt: Interrupt,
    ) -> Result<Ran, EngineError>;

    /// The time now on the clock the workflows use (a new deployment id is made from it).
    fn now(&self) -> Timestamp;
}

#[async_trait]
impl Workflows for Engine {
    async fn run(
        &self,
        workflow: Workflow,
        progress: &dyn Progress,
        interrupt: Interrupt,
    ) -> Result<Ran, EngineError> {
        tokio::select! {
            result = Engine::run(self, workflow, progress) => result.map(Ran::Finished),
            () = interrupt => {
                // The workflow's future is dropped at an await, between two port calls. Release
                // the lock it may hold so the command can be run again at once, instead of
                // waiting for the lock to lapse; a no-op unless this engine is the holder.
                let owner = &self.settings().lock_owner;
                let _ = self.ports().state.release_lock(owner).await;
                Ok(Ran::Interrupted)
            }
        }
    }

    fn now(&self) -> Timestamp {
        self.ports().clock.now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workflow_and_its_error_are_plain_tagged_json() {
        let id = DeploymentId::new("20261125-190633-k3x9").expect("valid");
        let text = serde_json::to_string(&Workflow::Drain { id: id.clone() }).expect("json");
        assert_eq!(text, r#"{"workflow":"drain","id":"20261125-190633-k3x9"}"#);
        let err = EngineError::UnknownVersion {
            name: flotilla_core::DeploymentName::new("shop").expect("valid"),
            id,
        };
        let back: EngineError =
            serde_json::from_str(&serde_json::to_string(&err).expect("json")).expect("json");
        assert!(matches!(back, EngineError::UnknownVersion { .. }));
        assert_eq!(back.to_string(), err.to_string());
    }
}
