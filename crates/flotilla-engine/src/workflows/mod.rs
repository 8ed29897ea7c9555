//! The workflows, written once against the ports: deploy, rollback, drain, reap, teardown, status.
//!
//! Every workflow records its progress in the state store before each step that creates or
//! changes a resource, so that running it again after a crash converges instead of duplicating.
//! Records are created before any resource of a version and deleted after all of them, so a
//! resource never exists without a record that leads the reaper or a re-run to it.
//!
//! `call` has them as plain data (`Workflow`, `Outcome`) and the seam a command runs them through
//! (`Workflows`: this engine, or the host daemon over its socket).
//!
//! Modules, one per concern: `deploy`, `rollback` (with drain), `reap`, `teardown`,
//! `status`, `canary` (a canary's deploy, its ticks, promote and its rollback); `remove` (a version's resources, removed by the three workflows that retire
//! versions), `lock` (the deploy lock) and `common` (what they all share).

use std::time::Duration;

use flotilla_core::DeploymentName;
use flotilla_core::reaper::ReapPolicy;
use flotilla_core::routing::RuleBudget;
use serde::{Deserialize, Serialize};

use crate::ports::Ports;

mod call;
mod canary;
mod common;
mod deploy;
mod lock;
mod reap;
mod remove;
mod rollback;
mod status;
mod teardown;

pub use call::{Interrupt, Outcome, Ran, Workflow, Workflows, never};
pub use canary::CanaryTick;
pub use deploy::{DeployOutcome, DeployRequest};
pub use reap::ReapReport;
pub use rollback::RollbackOutcome;
pub use status::{StatusReport, VersionStatus};
pub use teardown::{TeardownReport, TeardownTarget};

/// How the workflows behave for one deployment name.
#[derive(Clone, Debug, Serialize, Deserialize)]
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
    /// Who this process is, for the lock (`user@host (pid N)`, see `flotilla_core::lock`).
    pub lock_owner: String,
    /// This host and how to ask whether a process of it runs, when the caller can answer: a lock
    /// held by a process of this host that no longer runs is broken at once (with a note) rather
    /// than blocking until it lapses.
    /// Never sent over a wire: whoever runs the workflows fills it in for its own host.
    #[serde(skip)]
    pub local_holders: Option<LocalHolders>,
}

/// The edge's answer to "does the process that holds this lock still run?".
#[derive(Clone, Debug)]
pub struct LocalHolders {
    /// This host's name, as written in lock owners.
    pub host: String,
    /// Whether process `pid` of this host runs.
    pub alive: fn(u32) -> bool,
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
}
