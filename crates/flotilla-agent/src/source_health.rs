//! Whether the drain source is working: the record of the poll loop's recent calls that the health
//! document shows and the log reports.
//!
//! A drain source that keeps failing is not a blip: the agent cannot learn that its version drains
//! (so it keeps taking new sessions) nor report readiness (so the reaper retires the version only
//! at its maximum drain age, and its listener rules pile up). A TLS handshake that fails because
//! the image has no CA bundle, a task role without `ssm:GetParameter`, a wrong region: each fails
//! every poll. So a failure is *persistent* when it needs a human (access denied, a value that is
//! not a state) or when [`PERSISTENT_AFTER`] polls in a row have failed, and the health document
//! (`drain_source`) says so for as long as it lasts, next to the error.

use serde_json::{Value, json};

use flotilla_core::Timestamp;

use crate::source::{DrainError, DrainErrorKind};

/// The field every log line about the drain source's health carries, with the value
/// [`LOG_FAILING`] or [`LOG_RECOVERED`]: `flotilla status` on AWS finds these lines in the task's
/// log (which reaches CloudWatch even when the agent cannot reach AWS itself) to say which tasks
/// cannot learn their drain state. One term, so one CloudWatch filter pattern finds both.
pub const LOG_FIELD: &str = "flotilla_drain_source";
/// [`LOG_FIELD`]'s value on a line that says the failure is persistent (and on its repeats).
pub const LOG_FAILING: &str = "failing";
/// [`LOG_FIELD`]'s value on a line that says the source works again.
pub const LOG_RECOVERED: &str = "recovered";

/// Failed polls in a row after which a throttled or transient failure counts as persistent.
pub const PERSISTENT_AFTER: u32 = 3;

/// While a failure persists, the log repeats it every this many failed polls.
pub const REPEAT_EVERY: u32 = 20;

/// What changed with one poll's outcome, for the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceChange {
    /// Nothing worth a new log line.
    None,
    /// The first failure after a success (or after starting).
    Failing,
    /// The failure has just become persistent.
    Persistent,
    /// The failure persists; say so again (every [`REPEAT_EVERY`] failed polls).
    StillFailing,
    /// A poll succeeded after `failures` failed ones.
    Recovered {
        /// How many polls in a row had failed.
        failures: u32,
    },
}

/// The drain source's recent record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceHealth {
    /// Failed polls in a row (0 after a successful poll).
    pub consecutive_failures: u32,
    /// When the current run of failures started.
    pub failing_since: Option<Timestamp>,
    /// The last failure of the current run.
    pub last_error: Option<DrainError>,
    /// When a poll last succeeded.
    pub last_success: Option<Timestamp>,
    /// What the source is working around, if anything ([`crate::DrainSource::degraded`]): the
    /// polls succeed, so this is not a failure, but it is not the design either.
    pub degraded: Option<String>,
}

impl SourceHealth {
    /// Records a poll in which at least one call failed (`err` is the first failure).
    pub fn failed(&mut self, err: &DrainError, at: Timestamp) -> SourceChange {
        let was_persistent = self.persistent();
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        if self.failing_since.is_none() {
            self.failing_since = Some(at);
        }
        self.last_error = Some(err.clone());
        if self.persistent() && !was_persistent {
            SourceChange::Persistent
        } else if self.consecutive_failures == 1 {
            SourceChange::Failing
        } else if self.persistent() && self.consecutive_failures.is_multiple_of(REPEAT_EVERY) {
            SourceChange::StillFailing
        } else {
            SourceChange::None
        }
    }

    /// Records a poll whose every call succeeded.
    pub fn succeeded(&mut self, at: Timestamp) -> SourceChange {
        let failures = self.consecutive_failures;
        self.consecutive_failures = 0;
        self.failing_since = None;
        self.last_error = None;
        self.last_success = Some(at);
        if failures > 0 {
            SourceChange::Recovered { failures }
        } else {
            SourceChange::None
        }
    }

    /// Records what the source is working around after a poll; returns whether it changed.
    pub fn set_degraded(&mut self, degraded: Option<String>) -> bool {
        let changed = self.degraded != degraded;
        self.degraded = degraded;
        changed
    }

    /// Whether the current failure needs attention: a permanent failure, or
    /// [`PERSISTENT_AFTER`] failed polls in a row.
    pub fn persistent(&self) -> bool {
        match &self.last_error {
            None => false,
            Some(err) => {
                err.kind == DrainErrorKind::Permanent
                    || self.consecutive_failures >= PERSISTENT_AFTER
            }
        }
    }

    /// The `drain_source` object of the health document.
    pub fn to_json(&self, describe: &str) -> Value {
        let kind = self.last_error.as_ref().map(|e| match e.kind {
            DrainErrorKind::Throttled => "throttled",
            DrainErrorKind::Transient => "transient",
            DrainErrorKind::Permanent => "permanent",
        });
        json!({
            "source": describe,
            "ok": self.last_error.is_none(),
            "persistent_failure": self.persistent(),
            "consecutive_failures": self.consecutive_failures,
            "failing_since_ms": self.failing_since.map(|t| t.as_millis()),
            "last_success_ms": self.last_success.map(|t| t.as_millis()),
            "error": self.last_error.as_ref().map(|e| e.to_string()),
            "error_kind": kind,
            "degraded": self.degraded,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(kind: DrainErrorKind) -> DrainError {
        DrainError::new(kind, "read drain state", "/apps/x/y/state", "boom")
    }

    #[test]
    fn repeated_transient_failures_become_persistent_and_recover() {
        let mut h = SourceHealth::default();
        let t = Timestamp::from_millis;
        let transient = err(DrainErrorKind::Transient);
        assert_eq!(h.failed(&transient, t(1)), SourceChange::Failing);
        assert!(!h.persistent(), "one blip is not persistent");
        assert_eq!(h.failed(&transient, t(2)), SourceChange::None);
        assert_eq!(h.failed(&transient, t(3)), SourceChange::Persistent);
        assert!(h.persistent());
        assert_eq!(h.failing_since, Some(t(1)));
        let mut changes = Vec::new();
        for i in 4..=REPEAT_EVERY {
            changes.push(h.failed(&transient, t(u64::from(i))));
        }
        assert_eq!(changes.last(), Some(&SourceChange::StillFailing));
        assert_eq!(
            changes.iter().filter(|c| **c != SourceChange::None).count(),
            1,
            "repeated only every {REPEAT_EVERY} polls: {changes:?}"
        );
        let doc = h.to_json("SSM /apps/x/y/state");
        assert_eq!(doc["ok"], false);
        assert_eq!(doc["persistent_failure"], true);
        assert_eq!(doc["consecutive_failures"], REPEAT_EVERY);
        assert_eq!(doc["failing_since_ms"], 1);
        assert_eq!(doc["error_kind"], "transient");
        assert!(doc["error"].as_str().is_some_and(|e| e.contains("boom")));

        assert_eq!(
            h.succeeded(t(100)),
            SourceChange::Recovered {
                failures: REPEAT_EVERY
            }
        );
        assert!(!h.persistent());
        let doc = h.to_json("SSM /apps/x/y/state");
        assert_eq!(doc["ok"], true);
        assert_eq!(doc["persistent_failure"], false);
        assert_eq!(doc["error"], Value::Null);
        assert_eq!(doc["last_success_ms"], 100);
        assert_eq!(h.succeeded(t(101)), SourceChange::None);
    }

    #[test]
    fn a_permanent_failure_is_persistent_at_once() {
        let mut h = SourceHealth::default();
        let change = h.failed(&err(DrainErrorKind::Permanent), Timestamp::from_millis(5));
        assert_eq!(change, SourceChange::Persistent);
        assert!(h.persistent());
        assert_eq!(
            h.to_json("x")["error_kind"],
            "permanent",
            "the kind is shown"
        );
    }
}
