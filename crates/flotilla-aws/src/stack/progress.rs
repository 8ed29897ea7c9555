//! What the lifecycle reports while it works: stack events as lines, steps, the certificate's
//! validation records, and "still waiting"; [`StackProgress`] is where they go.

use std::time::Duration;

use flotilla_baseline::outputs::ValidationRecord;
use serde::Serialize;

/// One stack event, as progress shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EventLine {
    /// When it happened (RFC 3339).
    pub time: String,
    /// The logical id (the stack's own name for stack-level events).
    pub logical_id: String,
    /// The resource type.
    pub resource_type: String,
    /// The status, e.g. `CREATE_IN_PROGRESS`.
    pub status: String,
    /// CloudFormation's reason, when it gives one.
    pub reason: Option<String>,
}

/// What the lifecycle reports while it works.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StackNotice {
    /// A step begins, in words.
    Step(String),
    /// A new stack event.
    Event(EventLine),
    /// The DNS records ACM needs to validate the certificate (create them to let the stack
    /// finish).
    ValidationRecords(Vec<ValidationRecord>),
    /// Nothing new for a while; the stack is still in `status`.
    StillWaiting {
        /// The stack's status.
        status: String,
        /// Time waited so far.
        waited: Duration,
    },
}

/// Where notices go (the CLI prints them).
pub trait StackProgress: Send + Sync {
    /// One notice.
    fn notice(&self, notice: StackNotice);
}

/// Discards every notice.
pub struct Quiet;

impl StackProgress for Quiet {
    fn notice(&self, _notice: StackNotice) {}
}
