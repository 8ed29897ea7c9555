//! Drain readiness of one instance: when may a draining instance be stopped?
//!
//! An instance first sees that its version is draining at `t0`. It is ready to stop when
//! `now - t0 >= grace` and it has no live sessions. Readiness is recomputed at every observation,
//! so an instance whose sessions come back (a reconnecting tab) is not ready again until they end.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::time::Timestamp;

/// What an instance reports about itself to the reaper.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Readiness {
    /// Serving, or draining but not yet ready to stop. Wire form `healthy`.
    #[serde(rename = "healthy")]
    Healthy,
    /// Draining, past its grace period, with no live sessions. Wire form `draining`: the value the
    /// shipped system writes to `/apps/<name>/<id>/tasks/<task_id>`.
    #[serde(rename = "draining")]
    ShutdownReady,
}

impl Readiness {
    /// The wire form stored in the per-instance parameter.
    pub fn as_str(self) -> &'static str {
        match self {
            Readiness::Healthy => "healthy",
            Readiness::ShutdownReady => "draining",
        }
    }
}

impl fmt::Display for Readiness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A readiness value that is neither `healthy` nor `draining`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown readiness `{0}`; expected healthy or draining")]
pub struct UnknownReadiness(pub String);

impl FromStr for Readiness {
    type Err = UnknownReadiness;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "healthy" => Ok(Readiness::Healthy),
            "draining" => Ok(Readiness::ShutdownReady),
            other => Err(UnknownReadiness(other.to_owned())),
        }
    }
}

/// The drain status of one instance after an observation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainStatus {
    /// Whether the version is draining.
    pub draining: bool,
    /// When this instance first saw it draining.
    pub since: Option<Timestamp>,
    /// Whether the instance may be stopped now.
    pub ready: bool,
}

impl DrainStatus {
    /// What to report to the reaper.
    pub fn readiness(&self) -> Readiness {
        if self.ready {
            Readiness::ShutdownReady
        } else {
            Readiness::Healthy
        }
    }
}

/// Tracks one instance's view of draining across observations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DrainTracker {
    since: Option<Timestamp>,
}

impl DrainTracker {
    /// A tracker that has not seen draining.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records an observation: whether the version is draining, the instance's live sessions, and
    /// the time. Leaving draining (a rollback made the version active again) resets the clock.
    pub fn observe(
        &mut self,
        draining: bool,
        live_sessions: u64,
        now: Timestamp,
        grace: Duration,
    ) -> DrainStatus {
        if !draining {
            self.since = None;
            return DrainStatus {
                draining: false,
                since: None,
                ready: false,
            };
        }
        let since = *self.since.get_or_insert(now);
        let ready = now.since(since) >= grace && live_sessions == 0;
        DrainStatus {
            draining: true,
            since: Some(since),
            ready,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_follows_grace_and_sessions() {
        let grace = Duration::from_secs(20);
        let t = Timestamp::from_secs;
        let mut tracker = DrainTracker::new();
        let mut check = |draining, sessions, now, ready| {
            let status = tracker.observe(draining, sessions, t(now), grace);
            assert_eq!(
                status.ready, ready,
                "draining={draining} sessions={sessions} now={now}"
            );
            status
        };
        check(false, 0, 100, false);
        assert_eq!(check(true, 0, 110, false).since, Some(t(110)));
        check(true, 0, 129, false);
        check(true, 3, 130, false);
        check(true, 0, 130, true);
        // A session comes back: not ready again until it ends.
        check(true, 1, 140, false);
        assert_eq!(check(true, 0, 141, true).since, Some(t(110)));
        // Rolled back to active, then draining again: the grace period starts over.
        check(false, 0, 150, false);
        check(true, 0, 160, false);
        check(true, 0, 180, true);
    }

    #[test]
    fn wire_forms() {
        assert_eq!(Readiness::ShutdownReady.as_str(), "draining");
        assert_eq!("healthy".parse(), Ok(Readiness::Healthy));
        assert_eq!("draining".parse(), Ok(Readiness::ShutdownReady));
        assert!("ready".parse::<Readiness>().is_err());
        let status = DrainStatus {
            draining: true,
            since: None,
            ready: true,
        };
        assert_eq!(status.readiness(), Readiness::ShutdownReady);
    }
}
