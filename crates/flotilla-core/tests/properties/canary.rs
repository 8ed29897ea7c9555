//! Canary judgements and step sequences over random windows and random verdict histories.

use std::time::Duration;

use flotilla_core::canary::{
    CanaryPlan, CanaryState, Next, Thresholds, Verdict, WindowStats, judge, next,
};
use flotilla_core::time::Timestamp;
use proptest::prelude::*;

fn window() -> impl Strategy<Value = WindowStats> {
    (0u64..5_000, 0u64..5_000, proptest::option::of(0u64..10_000)).prop_map(|(r, e, p)| {
        WindowStats {
            requests: r,
            errors: e.min(r),
            p99: p.map(Duration::from_millis),
        }
    })
}

fn thresholds() -> impl Strategy<Value = Thresholds> {
    (0.0f64..0.2, 0.0f64..0.1, 1.0f64..3.0, 0u64..500).prop_map(|(a, b, c, d)| Thresholds {
        max_error_ratio: a,
        max_error_ratio_increase: b,
        max_p99_ratio: c,
        min_requests: d,
    })
}

fn plan() -> impl Strategy<Value = CanaryPlan> {
    (
        proptest::collection::btree_set(1u8..100, 1..6),
        1u64..600,
        0u32..4,
    )
        .prop_map(|(steps, pause, max_extensions)| CanaryPlan {
            steps: steps.into_iter().collect(),
            pause: Duration::from_secs(pause),
            thresholds: Thresholds::default(),
            max_extensions,
        })
}

fn verdict() -> impl Strategy<Value = Verdict> {
    prop_oneof![
        6 => Just(Verdict::Pass),
        1 => Just(Verdict::Fail { failures: vec![] }),
        2 => (0u64..50).prop_map(|r| Verdict::Inconclusive { requests: r, needed: 50 }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A verdict is reached only with enough requests, and a pass never breaks a limit.
    #[test]
    fn a_pass_is_within_every_limit(c in window(), b in window(), t in thresholds()) {
        match judge(&c, &b, &t) {
            Verdict::Inconclusive { requests, needed } => {
                prop_assert!(c.requests < t.min_requests);
                prop_assert_eq!((requests, needed), (c.requests, t.min_requests));
            }
            Verdict::Pass => {
                prop_assert!(c.requests >= t.min_requests);
                prop_assert!(c.error_ratio() <= t.max_error_ratio);
                if b.requests > 0 {
                    prop_assert!(c.error_ratio() <= b.error_ratio() + t.max_error_ratio_increase);
                }
                if let (Some(cp), Some(bp)) = (c.p99, b.p99) && !bp.is_zero() {
                    prop_assert!(cp.as_secs_f64() <= bp.as_secs_f64() * t.max_p99_ratio);
                }
            }
            Verdict::Fail { failures } => prop_assert!(!failures.is_empty()),
        }
    }

    /// Along any history: the canary's share only grows, through the plan's steps in order; it is
    /// promoted only after every step passed; a failure rolls back at once; and an inconclusive
    /// step is extended at most `max_extensions` times before a roll-back.
    #[test]
    fn a_canary_follows_its_plan_or_rolls_back(plan in plan(), verdicts in proptest::collection::vec(verdict(), 1..40)) {
        prop_assert!(plan.validate().is_ok());
        let mut now = Timestamp::from_secs(1_000_000);
        let mut state = CanaryState::start(now);
        let mut shares = vec![plan.steps[0]];
        let mut passes = 0usize;
        let mut extensions_in_step = 0u32;
        for v in &verdicts {
            // Judged before the pause ends: nothing happens.
            let early = next(&plan, &state, now.plus(plan.pause / 2), Some(v));
            let is_wait = matches!(early, Next::Wait { .. });
            prop_assert!(is_wait || plan.pause / 2 >= plan.pause);
            now = now.plus(plan.pause);
            match next(&plan, &state, now, Some(v)) {
                Next::Step { percent, state: s } => {
                    let passed = matches!(v, Verdict::Pass);
                    prop_assert!(passed);
                    prop_assert!(percent > *shares.last().expect("a share"));
                    prop_assert_eq!(percent, plan.steps[s.step]);
                    prop_assert_eq!(s.step, state.step + 1);
                    shares.push(percent);
                    passes += 1;
                    extensions_in_step = 0;
                    state = s;
                }
                Next::Extend { state: s } => {
                    let inconclusive = matches!(v, Verdict::Inconclusive { .. });
                    prop_assert!(inconclusive);
                    extensions_in_step += 1;
                    prop_assert!(extensions_in_step <= plan.max_extensions);
                    prop_assert_eq!(s.step, state.step);
                    state = s;
                }
                Next::Promote => {
                    let passed = matches!(v, Verdict::Pass);
                    prop_assert!(passed);
                    prop_assert_eq!(passes + 1, plan.steps.len());
                    prop_assert_eq!(&shares, &plan.steps);
                    return Ok(());
                }
                Next::RollBack { .. } => {
                    let inconclusive_too_long = matches!(v, Verdict::Inconclusive { .. })
                        && extensions_in_step == plan.max_extensions;
                    let failed = matches!(v, Verdict::Fail { .. });
                    prop_assert!(failed || inconclusive_too_long);
                    return Ok(());
                }
                Next::Wait { .. } => prop_assert!(false, "judged after the pause, yet told to wait"),
            }
        }
    }
}
