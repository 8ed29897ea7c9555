//! Host autoscaling over random histories of load: never an instance with sessions stopped,
//! never outside the range, never growth of a draining version, and settling where the load says.

use std::time::Duration;

use flotilla_core::autoscale::{ScaleMemory, ScalePolicy, VersionLoad, decide, wanted};
use flotilla_core::lifecycle::VersionState;
use flotilla_core::time::Timestamp;
use proptest::prelude::*;

fn policy() -> impl Strategy<Value = ScalePolicy> {
    (
        1u32..4,
        0u32..6,
        1u32..10,
        proptest::option::of(1u32..200),
        0u64..120,
    )
        .prop_map(|(min, extra, per, rps, after)| ScalePolicy {
            min,
            max: min + extra,
            sessions_per_instance: per,
            requests_per_second_per_instance: rps,
            scale_in_after: Duration::from_secs(after),
        })
}

/// One tick of a history: seconds since the last, and the sessions opened (positive) or closed.
fn ticks() -> impl Strategy<Value = Vec<(u64, i64, f64)>> {
    proptest::collection::vec((1u64..90, -20i64..20, 0.0f64..2_000.0), 1..60)
}

proptest! {
    #[test]
    fn a_history_of_ticks_keeps_every_promise(
        policy in policy(),
        ticks in ticks(),
        draining_from in 0usize..80,
    ) {
        let mut memory = ScaleMemory::default();
        let mut sessions: Vec<u64> = vec![0; policy.min as usize];
        let mut now = Timestamp::from_secs(1_000);
        let mut wound_down: Option<u32> = None;
        for (i, (elapsed, change, rps)) in ticks.into_iter().enumerate() {
            now = now.plus(Duration::from_secs(elapsed));
            let state = if i >= draining_from { VersionState::Draining } else { VersionState::Active };
            // Sessions open on instances not wound down (fewest first), and close anywhere.
            if change > 0 {
                for _ in 0..change {
                    let open_to = wound_down.map_or(sessions.len(), |w| w as usize).min(sessions.len()).max(1);
                    let (slot, _) = sessions[..open_to].iter().enumerate().min_by_key(|(_, s)| **s).expect("an instance");
                    sessions[slot] += 1;
                }
            } else {
                for k in 0..(-change) as usize {
                    let n = sessions.len();
                    let slot = (k * 7) % n;
                    sessions[slot] = sessions[slot].saturating_sub(1);
                }
            }
            let load = VersionLoad { state, sessions: sessions.clone(), requests_per_second: rps };
            let current = sessions.len() as u32;
            let Some(step) = decide(&policy, &load, &mut memory, now) else {
                prop_assert!(false, "an active or draining version with instances is always decided");
                unreachable!();
            };
            // No instance holding a session is stopped.
            let occupied = sessions.iter().rposition(|s| *s > 0).map_or(0, |i| i as u32 + 1);
            prop_assert!(step.desired >= occupied, "{step:?} would stop a session: {sessions:?}");
            prop_assert!(step.desired >= 1);
            if state == VersionState::Draining {
                prop_assert!(step.desired <= current, "a draining version grew: {step:?}");
            } else {
                prop_assert!(step.desired <= policy.max.max(current), "{step:?} above the range");
                if step.desired > current {
                    prop_assert_eq!(step.desired, wanted(&policy, &load).clamp(policy.min, policy.max));
                }
            }
            if let Some(w) = step.wind_down_above {
                prop_assert!(w < step.desired);
            }
            wound_down = step.wind_down_above;
            sessions.resize(step.desired as usize, 0);
        }
    }
}
