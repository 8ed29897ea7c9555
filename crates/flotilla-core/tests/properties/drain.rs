//! Drain readiness properties: over random histories of observations (sessions opening and
//! closing, blips between observations, rollbacks, restarts that lose the tracker), an instance is
//! never ready to stop unless it has been draining with no session, continuously as observed, for
//! at least the grace period, and it is ready as soon as that holds.

use std::time::Duration;

use flotilla_core::Timestamp;
use flotilla_core::drain::{DrainTracker, Sessions};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

/// One observation as the history generates it.
#[derive(Clone, Copy, Debug)]
struct Step {
    /// Milliseconds since the previous observation.
    dt: u64,
    draining: bool,
    live: u64,
    /// Sessions started since the previous observation (a blip when `live` is 0).
    opened: u64,
    /// The agent or daemon restarted before this observation: a fresh tracker, and a counter that
    /// starts again from zero.
    restart: bool,
}

fn step(grace_ms: u64) -> impl Strategy<Value = Step> {
    (
        prop_oneof![
            3 => 0..=grace_ms.max(1),
            1 => Just(grace_ms),
            1 => 0..=3 * grace_ms.max(1),
        ],
        prop::bool::weighted(0.9),
        prop_oneof![4 => Just(0u64), 1 => 1u64..3],
        prop_oneof![5 => Just(0u64), 1 => 1u64..3],
        prop::bool::weighted(0.04),
    )
        .prop_map(|(dt, draining, live, opened, restart)| Step {
            dt,
            draining,
            live,
            opened,
            restart,
        })
}

fn history() -> impl Strategy<Value = (u64, Vec<Step>)> {
    prop_oneof![Just(0u64), 1u64..5_000]
        .prop_flat_map(|grace| (Just(grace), prop::collection::vec(step(grace), 1..80)))
}

/// One observation as the tracker saw it.
#[derive(Clone, Copy, Debug)]
struct Seen {
    at: Timestamp,
    draining: bool,
    sessions: Sessions,
}

/// The reference: the start of the quiet period at the last observation of `seen` (the
/// observations of one tracker's life), found by scanning back. It is the earliest observation
/// from which every later one was draining with no live session and no session started in
/// between; `None` when the last observation itself has a session or is not draining.
fn quiet_since(seen: &[Seen]) -> Option<Timestamp> {
    let mut start = None;
    for (i, o) in seen.iter().enumerate().rev() {
        if !o.draining || o.sessions.live > 0 {
            break;
        }
        start = Some(o.at);
        // A session started between the previous observation and this one: the quiet period
        // cannot reach further back than this observation.
        if i > 0 && seen[i - 1].sessions.started != o.sessions.started {
            break;
        }
    }
    start
}

fn run((grace_ms, steps): &(u64, Vec<Step>)) -> Result<(), TestCaseError> {
    let grace = Duration::from_millis(*grace_ms);
    let mut now = Timestamp::from_millis(1_764_100_000_000);
    let mut tracker = DrainTracker::new();
    let mut seen: Vec<Seen> = Vec::new();
    let mut started = 0u64;
    for s in steps {
        now = now.plus(Duration::from_millis(s.dt));
        if s.restart {
            tracker = DrainTracker::new();
            seen.clear();
            started = 0;
        }
        started += s.opened + s.live;
        let sessions = Sessions {
            live: s.live,
            started,
        };
        let status = tracker.observe(s.draining, sessions, now, grace);
        seen.push(Seen {
            at: now,
            draining: s.draining,
            sessions,
        });
        let quiet = quiet_since(&seen);
        prop_assert_eq!(
            status.idle_since,
            quiet,
            "the quiet period starts where it should"
        );
        let quiet_long_enough = quiet.is_some_and(|q| now.since(q) >= grace);
        if status.ready {
            prop_assert!(s.draining, "ready while not draining");
            prop_assert_eq!(s.live, 0, "ready with a live session");
            prop_assert!(
                quiet_long_enough,
                "ready after {:?} without a session, grace {:?}",
                quiet.map(|q| now.since(q)),
                grace
            );
        } else {
            prop_assert!(
                !quiet_long_enough,
                "not ready after {:?} without a session, grace {:?}",
                quiet.map(|q| now.since(q)),
                grace
            );
        }
        // The drain start is the first observation of the current drain in this tracker's life.
        let drain_start = seen
            .iter()
            .rev()
            .take_while(|o| o.draining)
            .last()
            .map(|o| o.at);
        prop_assert_eq!(status.since, drain_start);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Ready exactly when the instance has been draining with no session, as observed, for at
    /// least the grace period: never earlier (a reconnecting tab finds its version), never later.
    #[test]
    fn ready_only_after_grace_without_a_session(h in history()) {
        run(&h)?;
    }
}

#[test]
fn a_fresh_tracker_is_never_ready_at_once() {
    // However long the version has drained, a tracker that lost its state waits a full grace.
    let grace = Duration::from_secs(10);
    let mut tracker = DrainTracker::new();
    let t0 = Timestamp::from_secs(1_764_100_000);
    assert!(!tracker.observe(true, Sessions::live(0), t0, grace).ready);
    assert!(
        !tracker
            .observe(
                true,
                Sessions::live(0),
                t0.plus(Duration::from_millis(9_999)),
                grace
            )
            .ready
    );
    assert!(
        tracker
            .observe(true, Sessions::live(0), t0.plus(grace), grace)
            .ready
    );
}
