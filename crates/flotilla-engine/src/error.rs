//! What a workflow can fail with. Each variant carries what identifies the failure and its message
//! ends with what the user can do about it.

use std::time::Duration;

use flotilla_core::lifecycle::{TransitionError, VersionState};
use flotilla_core::routing::{BudgetError, RoutingError};
use flotilla_core::{DeploymentId, DeploymentName};

use crate::ports::{LockInfo, PortError};

/// A workflow failure.
#[derive(Debug, serde::Serialize, serde::Deserialize, thiserror::Error)]
#[serde(tag = "kind", content = "error", rename_all = "snake_case")]
pub enum EngineError {
    /// Another deploy (or reaper pass) holds the lock of this deployment name.
    #[error(
        "another operation on `{name}` is in progress: the lock is held by {} since {} (expires {}); \
         wait for it to finish, or if that process is gone, run again with --break-lock",
        .lock.owner, .lock.acquired_at, .lock.expires_at
    )]
    LockHeld {
        /// The deployment name.
        name: DeploymentName,
        /// Who holds the lock.
        lock: LockInfo,
    },
    /// A deploy asked for an id that already belongs to a finished deploy.
    #[error(
        "deployment id {id} is already used by a version that is {state}; deploy with a new id (omit --id)"
    )]
    IdInUse {
        /// The id.
        id: DeploymentId,
        /// The state of the version holding it.
        state: VersionState,
    },
    /// The id names no recorded version.
    #[error("no version {id} of `{name}`; run `flotilla status` to list versions")]
    UnknownVersion {
        /// The deployment name.
        name: DeploymentName,
        /// The id asked for.
        id: DeploymentId,
    },
    /// The new version did not get healthy in time; what it created was removed and traffic
    /// stayed where it was.
    #[error(
        "version {id} did not become healthy within {}s ({healthy} of {needed} instances healthy); \
         it was removed and {}; check the logs below and the health path",
        .waited.as_secs(),
        where_traffic_stays(.previous.as_ref())
    )]
    NotHealthy {
        /// The version.
        id: DeploymentId,
        /// The version fresh traffic stays on, or `None` on a first deploy (nothing serves).
        previous: Option<DeploymentId>,
        /// Healthy instances at the deadline.
        healthy: u32,
        /// Healthy instances required.
        needed: u32,
        /// How long the deploy waited.
        waited: Duration,
        /// The last log lines of a failing instance.
        logs: Vec<String>,
    },
    /// The new version's image could not be made (its build failed, or the image is unusable);
    /// nothing of the version was kept and traffic stayed where it was. The source says why.
    #[error(
        "the image of version {id} could not be made; nothing of it was kept and traffic stays \
         where it was"
    )]
    ImageFailed {
        /// The version.
        id: DeploymentId,
        /// What the provider said (for a build: its exit status, last lines and log file).
        #[source]
        source: PortError,
    },
    /// The rule budget has no room for another version.
    #[error(transparent)]
    Budget(#[from] BudgetError),
    /// A lifecycle transition that is not allowed.
    #[error(transparent)]
    Transition(#[from] TransitionError),
    /// A routing change that would break the routing model.
    #[error(transparent)]
    Routing(#[from] RoutingError),
    /// The request makes no sense in the current state; the message says why and what to do.
    #[error("{message}; {hint}")]
    Refused {
        /// What is wrong.
        message: String,
        /// What to do instead.
        hint: String,
    },
    /// A provider call failed at a named step. Running the same command again resumes.
    #[error("{step} failed: {source}")]
    Port {
        /// The workflow step, e.g. `create compute for 20261125-190633-k3x9`.
        step: String,
        /// The provider's error.
        #[source]
        source: PortError,
    },
}

impl EngineError {
    /// Wraps a port error with the step it happened in.
    pub fn port(step: impl Into<String>) -> impl FnOnce(PortError) -> EngineError {
        let step = step.into();
        move |source| EngineError::Port { step, source }
    }
}

/// Where fresh traffic is after a deploy that gave up: on the version that served before, or
/// nowhere when the deploy was the first.
fn where_traffic_stays(previous: Option<&DeploymentId>) -> String {
    match previous {
        Some(previous) => format!("fresh traffic stays on the previous version, {previous}"),
        None => "no version serves yet (this was the first deploy)".to_owned(),
    }
}
