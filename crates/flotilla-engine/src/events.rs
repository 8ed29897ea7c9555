//! Progress events: what a workflow tells its caller while it runs. The engine never prints; the
//! CLI renders these for people, or as JSON lines for scripts.

use std::time::Duration;

use flotilla_core::DeploymentId;
use flotilla_core::reaper::ReapAction;
use serde::{Deserialize, Serialize};

/// One thing a workflow did or is waiting for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A step is starting.
    Step {
        /// The version it concerns.
        id: DeploymentId,
        /// What is being done, in words ("creating instances").
        what: String,
    },
    /// Still waiting for a version to get healthy.
    WaitingHealthy {
        /// The version.
        id: DeploymentId,
        /// Healthy instances so far.
        healthy: u32,
        /// Healthy instances needed.
        needed: u32,
        /// Instances running.
        running: u32,
        /// Time waited so far.
        elapsed: Duration,
        /// The deadline.
        timeout: Duration,
    },
    /// A build command the provider runs for a version (the host's `[host] build`) started.
    BuildStarted {
        /// The version.
        id: DeploymentId,
        /// The shell command.
        command: String,
        /// The file that keeps its whole output.
        log: String,
    },
    /// One line the build printed (stdout and stderr together, in the order they came).
    BuildOutput {
        /// The version.
        id: DeploymentId,
        /// The line, without its newline.
        line: String,
    },
    /// The build command succeeded.
    BuildFinished {
        /// The version.
        id: DeploymentId,
        /// How long it ran.
        elapsed: Duration,
        /// The file that keeps its whole output.
        log: String,
    },
    /// A reaper action was taken (or, in a dry run, would be).
    Reaped {
        /// The action.
        action: ReapAction,
        /// Whether it was only planned.
        dry_run: bool,
    },
    /// Something worth telling that needs no action.
    Note {
        /// The message.
        message: String,
    },
}

/// Receives progress events.
pub trait Progress: Send + Sync {
    /// Called for each event, in order.
    fn event(&self, event: Event);
}

/// A [`Progress`] that drops every event.
pub struct Silent;

impl Progress for Silent {
    fn event(&self, _event: Event) {}
}

/// A [`Progress`] that keeps every event, for tests.
#[derive(Default)]
pub struct Recorder(pub std::sync::Mutex<Vec<Event>>);

impl Progress for Recorder {
    fn event(&self, event: Event) {
        if let Ok(mut events) = self.0.lock() {
            events.push(event);
        }
    }
}
