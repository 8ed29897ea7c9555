//! How many instances a version runs under the host's autoscaling: the decision of one tick.
//!
//! A version wants enough instances for its live sessions and its request rate, within the
//! policy's range. Growing happens at once (only for the active version: a draining one never
//! grows). Shrinking waits until the load has stayed low for `scale_in_after`, and never stops an
//! instance that holds sessions: instances are numbered `1..=n` and the highest go first, so the
//! instances above what is wanted are *wound down* (they take no new sessions) and each stops
//! only once its sessions have ended. Nothing is cut.

use std::time::Duration;

use crate::lifecycle::VersionState;
use crate::time::Timestamp;

/// The autoscaling range and targets of every version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ScalePolicy {
    /// Fewest instances of the active version (a draining one may go down to 1).
    pub min: u32,
    /// Most instances of any version.
    pub max: u32,
    /// Live sessions one instance is meant to hold.
    pub sessions_per_instance: u32,
    /// Requests per second one instance is meant to serve; `None`: the rate does not count.
    pub requests_per_second_per_instance: Option<u32>,
    /// How long the load must stay low before instances are wound down.
    pub scale_in_after: Duration,
}

/// What one version does now, as the tick sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct VersionLoad {
    /// Its lifecycle state.
    pub state: VersionState,
    /// Live sessions of each instance, instance `1` first: as many entries as it runs now.
    pub sessions: Vec<u64>,
    /// Requests per second over the last tick, all instances together.
    pub requests_per_second: f64,
}

/// What a version's autoscaling remembers between ticks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScaleMemory {
    /// Since when the version has wanted fewer instances than it runs.
    low_since: Option<Timestamp>,
}

/// What to do with a version this tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScaleStep {
    /// Instances to run.
    pub desired: u32,
    /// Instances numbered above this take no new sessions (they are being wound down); `None`:
    /// every instance takes them.
    pub wind_down_above: Option<u32>,
}

/// The instances `load` calls for under `policy`, before the range: enough for its sessions and
/// its request rate.
pub fn wanted(policy: &ScalePolicy, load: &VersionLoad) -> u32 {
    let sessions: u64 = load.sessions.iter().sum();
    let per = u64::from(policy.sessions_per_instance.max(1));
    let for_sessions = u32::try_from(sessions.div_ceil(per)).unwrap_or(u32::MAX);
    let for_requests = policy
        .requests_per_second_per_instance
        .filter(|per| *per > 0)
        .map_or(0, |per| {
            let needed = (load.requests_per_second / f64::from(per)).ceil();
            if needed >= f64::from(u32::MAX) {
                u32::MAX
            } else if needed > 0.0 {
                needed as u32
            } else {
                0
            }
        });
    for_sessions.max(for_requests)
}

/// The step for one version at `now`, updating `memory`; `None` for a version autoscaling leaves
/// alone (deploying, retired, failed, or running nothing).
pub fn decide(
    policy: &ScalePolicy,
    load: &VersionLoad,
    memory: &mut ScaleMemory,
    now: Timestamp,
) -> Option<ScaleStep> {
    let current = u32::try_from(load.sessions.len()).unwrap_or(u32::MAX);
    let (floor, may_grow) = match load.state {
        VersionState::Active => (policy.min.max(1), true),
        VersionState::Draining => (1, false),
        VersionState::Deploying | VersionState::Retired | VersionState::Failed => return None,
    };
    if current == 0 {
        return None;
    }
    let ceiling = if may_grow {
        policy.max.max(floor)
    } else {
        current
    };
    let want = wanted(policy, load).clamp(floor, ceiling);
    if want >= current {
        memory.low_since = None;
        return Some(ScaleStep {
            desired: want,
            wind_down_above: None,
        });
    }
    let since = *memory.low_since.get_or_insert(now);
    if now.since(since) < policy.scale_in_after {
        return Some(ScaleStep {
            desired: current,
            wind_down_above: None,
        });
    }
    // The highest instance that still holds a session stays until it is empty.
    let occupied = load
        .sessions
        .iter()
        .rposition(|s| *s > 0)
        .map_or(0, |i| u32::try_from(i + 1).unwrap_or(u32::MAX));
    let desired = want.max(occupied);
    Some(ScaleStep {
        desired,
        wind_down_above: (desired > want).then_some(want),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: ScalePolicy = ScalePolicy {
        min: 1,
        max: 4,
        sessions_per_instance: 2,
        requests_per_second_per_instance: Some(100),
        scale_in_after: Duration::from_secs(60),
    };

    fn at(s: u64) -> Timestamp {
        Timestamp::from_secs(1_000 + s)
    }

    fn load(state: VersionState, sessions: &[u64], rps: f64) -> VersionLoad {
        VersionLoad {
            state,
            sessions: sessions.to_vec(),
            requests_per_second: rps,
        }
    }

    fn step(desired: u32, wind_down_above: Option<u32>) -> Option<ScaleStep> {
        Some(ScaleStep {
            desired,
            wind_down_above,
        })
    }

    #[test]
    fn the_active_version_grows_at_once_for_sessions_or_requests_within_the_range() {
        let mut m = ScaleMemory::default();
        let active = VersionState::Active;
        assert_eq!(
            decide(&POLICY, &load(active, &[5], 0.0), &mut m, at(0)),
            step(3, None)
        );
        assert_eq!(
            decide(&POLICY, &load(active, &[1], 250.0), &mut m, at(0)),
            step(3, None)
        );
        assert_eq!(
            decide(&POLICY, &load(active, &[40], 0.0), &mut m, at(0)),
            step(4, None)
        );
        assert_eq!(
            decide(&POLICY, &load(active, &[0], 0.0), &mut m, at(0)),
            step(1, None)
        );
    }

    #[test]
    fn shrinking_waits_for_low_load_then_winds_down_without_cutting_sessions() {
        let mut m = ScaleMemory::default();
        let active = VersionState::Active;
        // Three instances, one session left on instance 2: one instance is wanted.
        let quiet = load(active, &[0, 1, 0], 0.0);
        assert_eq!(decide(&POLICY, &quiet, &mut m, at(0)), step(3, None));
        assert_eq!(decide(&POLICY, &quiet, &mut m, at(59)), step(3, None));
        // After a minute: instance 3 (empty) goes, instance 2 stays but takes no new sessions.
        assert_eq!(decide(&POLICY, &quiet, &mut m, at(60)), step(2, Some(1)));
        // Its session ends: it goes too.
        assert_eq!(
            decide(&POLICY, &load(active, &[0, 0], 0.0), &mut m, at(61)),
            step(1, None)
        );
    }

    #[test]
    fn load_coming_back_cancels_the_wait() {
        let mut m = ScaleMemory::default();
        let active = VersionState::Active;
        assert_eq!(
            decide(&POLICY, &load(active, &[0, 0], 0.0), &mut m, at(0)),
            step(2, None)
        );
        assert_eq!(
            decide(&POLICY, &load(active, &[2, 2], 0.0), &mut m, at(30)),
            step(2, None)
        );
        // The low period starts over.
        assert_eq!(
            decide(&POLICY, &load(active, &[0, 0], 0.0), &mut m, at(70)),
            step(2, None)
        );
        assert_eq!(
            decide(&POLICY, &load(active, &[0, 0], 0.0), &mut m, at(130)),
            step(1, None)
        );
    }

    #[test]
    fn a_draining_version_never_grows_and_shrinks_to_its_sessions() {
        let mut m = ScaleMemory::default();
        let draining = VersionState::Draining;
        assert_eq!(
            decide(&POLICY, &load(draining, &[9, 0], 500.0), &mut m, at(0)),
            step(2, None),
            "no growth however busy"
        );
        let mut m = ScaleMemory::default();
        let few = load(draining, &[1, 0, 0], 0.0);
        assert_eq!(decide(&POLICY, &few, &mut m, at(0)), step(3, None));
        assert_eq!(
            decide(&POLICY, &few, &mut m, at(60)),
            step(1, None),
            "below min"
        );
    }

    #[test]
    fn versions_that_are_not_serving_are_left_alone() {
        let mut m = ScaleMemory::default();
        for state in [
            VersionState::Deploying,
            VersionState::Retired,
            VersionState::Failed,
        ] {
            assert_eq!(
                decide(&POLICY, &load(state, &[9], 0.0), &mut m, at(0)),
                None
            );
        }
        assert_eq!(
            decide(
                &POLICY,
                &load(VersionState::Active, &[], 0.0),
                &mut m,
                at(0)
            ),
            None,
            "a version scaled to zero is not autoscaling's to start"
        );
    }
}
