//! Drain readiness of one instance: when may a draining instance be stopped?
//!
//! A draining instance is kept while a session may still come back: a tab whose socket dropped
//! reconnects within seconds, and it must reach the same version. So the grace period counts from
//! the moment the instance's live sessions reached zero, not from the start of the drain, and it
//! starts over whenever a session returns. An instance is ready to stop when it is draining and has
//! had no session for at least `grace`, as observed.
//!
//! "As observed" is conservative: sessions are sampled at each observation, so the quiet period
//! starts at the first observation that saw none (later than the real moment the last one ended).
//! A session that opened and closed between two observations is caught by the monotonic count of
//! sessions started ([`Sessions::started`]): when it moved, the quiet period starts again at the
//! later observation. A tracker that is new (the agent or the daemon restarted, and what it knew
//! is lost) starts the quiet period at its first observation. When the drain begins with no
//! session, the quiet period begins with it.

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
    /// Draining, with no session for at least the grace period. Wire form `draining`: the value the
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

/// What an instance counts about its sessions at one observation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sessions {
    /// Sessions open now (WebSockets, event streams, and what the app reports).
    pub live: u64,
    /// Sessions started since the counter began, a count that only grows while the instance
    /// runs. Any change between two observations (a restarted counter too) means a session was
    /// live in between.
    pub started: u64,
}

impl Sessions {
    /// Counts without a running total: only `live` is known.
    pub fn live(live: u64) -> Self {
        Sessions { live, started: 0 }
    }
}

/// The drain status of one instance after an observation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainStatus {
    /// Whether the version is draining.
    pub draining: bool,
    /// When this instance first saw it draining.
    pub since: Option<Timestamp>,
    /// While draining with no session: the observation from which no session was seen (the
    /// start of the grace period). `None` while a session is live or when not draining.
    pub idle_since: Option<Timestamp>,
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

/// Tracks one instance's view of draining and of its sessions across observations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DrainTracker {
    since: Option<Timestamp>,
    idle_since: Option<Timestamp>,
    started: Option<u64>,
}

impl DrainTracker {
    /// A tracker that has observed nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records an observation: whether the version is draining, the instance's sessions, and the
    /// time. The instance is ready once it is draining and no session was seen (live, or started
    /// since the previous observation) for at least `grace`. Leaving draining (a rollback made
    /// the version active again) forgets the drain; the next one starts over.
    pub fn observe(
        &mut self,
        draining: bool,
        sessions: Sessions,
        now: Timestamp,
        grace: Duration,
    ) -> DrainStatus {
        let started_moved = self
            .started
            .is_some_and(|before| before != sessions.started);
        self.started = Some(sessions.started);
        if !draining {
            self.since = None;
            self.idle_since = None;
            return DrainStatus {
                draining: false,
                since: None,
                idle_since: None,
                ready: false,
            };
        }
        let since = *self.since.get_or_insert(now);
        if sessions.live > 0 || started_moved {
            self.idle_since = None;
        }
        let idle_since = if sessions.live > 0 {
            None
        } else {
            Some(*self.idle_since.get_or_insert(now))
        };
        let ready = idle_since.is_some_and(|idle| now.since(idle) >= grace);
        DrainStatus {
            draining: true,
            since: Some(since),
            idle_since,
            ready,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One observation `(draining, live, started, now)` and what must follow: `(ready, idle_since)`.
    type Step = (bool, u64, u64, u64, bool, Option<u64>);

    /// Observes each step in turn, checking readiness and the start of the quiet period after each.
    fn check(tracker: &mut DrainTracker, steps: &[Step]) {
        let grace = Duration::from_secs(20);
        for &(draining, live, started, now, ready, idle) in steps {
            let status = tracker.observe(
                draining,
                Sessions { live, started },
                Timestamp::from_secs(now),
                grace,
            );
            assert_eq!(
                (status.ready, status.idle_since),
                (ready, idle.map(Timestamp::from_secs)),
                "draining={draining} live={live} started={started} now={now}"
            );
        }
    }

    #[test]
    fn grace_counts_from_the_last_session_not_from_the_drain() {
        let mut tracker = DrainTracker::new();
        check(
            &mut tracker,
            &[
                (false, 1, 1, 100, false, None),
                // Draining with a session open, long past the grace period: kept.
                (true, 1, 1, 110, false, None),
                (true, 1, 1, 200, false, None),
                // The session drops at 200..205: the quiet period starts at 205, not 110.
                (true, 0, 1, 205, false, Some(205)),
                (true, 0, 1, 224, false, Some(205)),
                // It reconnects within the grace period: still not ready, and the window restarts.
                (true, 1, 2, 226, false, None),
                (true, 0, 2, 230, false, Some(230)),
                (true, 0, 2, 249, false, Some(230)),
                (true, 0, 2, 250, true, Some(230)),
                (true, 0, 2, 400, true, Some(230)),
                // A session comes back after readiness: not ready again until grace after it ends.
                (true, 1, 3, 401, false, None),
                (true, 0, 3, 402, false, Some(402)),
                (true, 0, 3, 422, true, Some(402)),
            ],
        );
    }

    #[test]
    fn a_session_between_two_observations_restarts_the_window() {
        let mut tracker = DrainTracker::new();
        check(
            &mut tracker,
            &[
                (true, 0, 7, 100, false, Some(100)),
                // A tab connected and left again between 110 and 118: never seen live.
                (true, 0, 7, 110, false, Some(100)),
                (true, 0, 8, 118, false, Some(118)),
                (true, 0, 8, 137, false, Some(118)),
                (true, 0, 8, 138, true, Some(118)),
            ],
        );
        // A counter that goes back (the instance restarted) counts as activity too.
        check(
            &mut tracker,
            &[
                (true, 0, 0, 140, false, Some(140)),
                (true, 0, 0, 160, true, Some(140)),
            ],
        );
    }

    #[test]
    fn a_drain_that_begins_with_no_session_counts_from_its_start() {
        let mut tracker = DrainTracker::new();
        check(
            &mut tracker,
            &[
                // Idle while active does not count toward the grace period.
                (false, 0, 0, 0, false, None),
                (false, 0, 0, 100, false, None),
                (true, 0, 0, 110, false, Some(110)),
                (true, 0, 0, 129, false, Some(110)),
                (true, 0, 0, 130, true, Some(110)),
                // Rolled back to active, then draining again: the grace period starts over.
                (false, 0, 0, 150, false, None),
                (true, 0, 0, 160, false, Some(160)),
                (true, 0, 0, 180, true, Some(160)),
            ],
        );
    }

    #[test]
    fn a_fresh_tracker_starts_the_window_at_its_first_observation() {
        // After a restart nothing is known about when sessions ended, however long the version
        // has drained: the window starts now.
        let mut tracker = DrainTracker::new();
        check(
            &mut tracker,
            &[
                (true, 0, 0, 5000, false, Some(5000)),
                (true, 0, 0, 5019, false, Some(5000)),
                (true, 0, 0, 5020, true, Some(5000)),
            ],
        );
        let status = tracker.observe(
            true,
            Sessions::live(0),
            Timestamp::from_secs(5021),
            Duration::ZERO,
        );
        assert_eq!(
            status.since,
            Some(Timestamp::from_secs(5000)),
            "the drain start is kept"
        );
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
            idle_since: None,
            ready: true,
        };
        assert_eq!(status.readiness(), Readiness::ShutdownReady);
    }
}
