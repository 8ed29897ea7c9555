//! Canary deploys: the plan (the share of fresh sessions the new version gets at each step, and
//! how long each step runs), the judgement of the new version against the current one over the
//! same window, and what to do next. Pure: providers measure, the engine acts.
//!
//! Only *fresh* sessions are split: a tab keeps the version that first served it through every
//! step, a promotion and a rollback (its affinity is untouched), until that version is retired.
//!
//! A step ends when its pause has passed; the window is judged then:
//! - **fail** (the canary's 5xx ratio is over the limit, or higher than the current version's by
//!   more than allowed, or its p99 more than the allowed multiple of the current one's): roll
//!   back at once, whatever step it is at;
//! - **pass**: the next step, or after the last step the promotion (all fresh sessions);
//! - **inconclusive** (fewer requests than the minimum reached the canary): the step is
//!   extended by another pause, at most `max_extensions` times, then the canary is rolled back,
//!   as a version nobody could judge must not take all the traffic.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::time::Timestamp;

/// The steps of a canary deploy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CanaryPlan {
    /// The canary's share of fresh sessions at each step, in percent: increasing, each 1 to 99.
    /// After the last step passes, it gets 100 (promotion).
    pub steps: Vec<u8>,
    /// How long each step runs before it is judged.
    pub pause: Duration,
    /// The limits of the judgement.
    pub thresholds: Thresholds,
    /// How many times an inconclusive step is extended before the canary is rolled back.
    pub max_extensions: u32,
}

/// Why a canary plan cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// No steps.
    #[error("a canary needs at least one step (e.g. steps = [5, 25, 50])")]
    NoSteps,
    /// A step outside 1 to 99.
    #[error(
        "canary step {0}% is not between 1 and 99 (100 is the promotion that follows the last step)"
    )]
    StepOutOfRange(u8),
    /// Steps not strictly increasing.
    #[error("canary steps must increase: {0}% follows {1}%")]
    NotIncreasing(u8, u8),
    /// A pause of zero.
    #[error("a canary step's pause must be at least one second")]
    NoPause,
}

impl CanaryPlan {
    /// Checks the plan's shape.
    pub fn validate(&self) -> Result<(), PlanError> {
        if self.steps.is_empty() {
            return Err(PlanError::NoSteps);
        }
        let mut previous: Option<u8> = None;
        for &step in &self.steps {
            if !(1..=99).contains(&step) {
                return Err(PlanError::StepOutOfRange(step));
            }
            if let Some(p) = previous
                && step <= p
            {
                return Err(PlanError::NotIncreasing(step, p));
            }
            previous = Some(step);
        }
        if self.pause < Duration::from_secs(1) {
            return Err(PlanError::NoPause);
        }
        Ok(())
    }
}

/// The limits a canary must stay within.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    /// The highest 5xx ratio the canary may show (0.05 = 5 %).
    pub max_error_ratio: f64,
    /// How far the canary's 5xx ratio may exceed the current version's (0.01 = one point).
    pub max_error_ratio_increase: f64,
    /// The canary's p99 may be at most this multiple of the current version's (1.5 = 50 %
    /// slower), and is not judged when the current version has no p99 in the window.
    pub max_p99_ratio: f64,
    /// The fewest requests the canary must have served in the window for a verdict.
    pub min_requests: u64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            max_error_ratio: 0.05,
            max_error_ratio_increase: 0.01,
            max_p99_ratio: 1.5,
            min_requests: 50,
        }
    }
}

/// What one version did in the judged window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowStats {
    /// Requests answered.
    pub requests: u64,
    /// Of which with a 5xx status (the router's own 502/504 included).
    pub errors: u64,
    /// The 99th percentile of time to the response head, if any request was answered.
    pub p99: Option<Duration>,
}

impl WindowStats {
    /// The 5xx share of requests; 0 without requests.
    pub fn error_ratio(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors.min(self.requests) as f64 / self.requests as f64
        }
    }
}

/// One reason a canary failed its judgement.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Failure {
    /// Its 5xx ratio is over the limit.
    ErrorRatio {
        /// The canary's ratio.
        canary: f64,
        /// The limit.
        limit: f64,
    },
    /// Its 5xx ratio exceeds the current version's by more than allowed.
    ErrorRatioIncrease {
        /// The canary's ratio.
        canary: f64,
        /// The current version's ratio.
        baseline: f64,
        /// The allowed increase.
        limit: f64,
    },
    /// Its p99 is too far above the current version's.
    Latency {
        /// The canary's p99, in milliseconds.
        canary_ms: f64,
        /// The current version's p99, in milliseconds.
        baseline_ms: f64,
        /// The allowed multiple.
        limit: f64,
    },
    /// No verdict was possible within the allowed extensions.
    NotEnoughTraffic {
        /// Requests the canary served in the last window.
        requests: u64,
        /// The minimum.
        needed: u64,
    },
}

/// The outcome of judging one window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// Within every limit.
    Pass,
    /// Over at least one limit.
    Fail {
        /// Every limit it broke.
        failures: Vec<Failure>,
    },
    /// Too few requests reached the canary to judge.
    Inconclusive {
        /// Requests it served.
        requests: u64,
        /// The minimum.
        needed: u64,
    },
}

/// Judges the canary against the current version over the same window.
pub fn judge(canary: &WindowStats, baseline: &WindowStats, t: &Thresholds) -> Verdict {
    if canary.requests < t.min_requests {
        return Verdict::Inconclusive {
            requests: canary.requests,
            needed: t.min_requests,
        };
    }
    let mut failures = Vec::new();
    let (c, b) = (canary.error_ratio(), baseline.error_ratio());
    if c > t.max_error_ratio {
        failures.push(Failure::ErrorRatio {
            canary: c,
            limit: t.max_error_ratio,
        });
    }
    if baseline.requests > 0 && c > b + t.max_error_ratio_increase {
        failures.push(Failure::ErrorRatioIncrease {
            canary: c,
            baseline: b,
            limit: t.max_error_ratio_increase,
        });
    }
    if let (Some(cp), Some(bp)) = (canary.p99, baseline.p99)
        && !bp.is_zero()
        && cp.as_secs_f64() > bp.as_secs_f64() * t.max_p99_ratio
    {
        failures.push(Failure::Latency {
            canary_ms: cp.as_secs_f64() * 1000.0,
            baseline_ms: bp.as_secs_f64() * 1000.0,
            limit: t.max_p99_ratio,
        });
    }
    if failures.is_empty() {
        Verdict::Pass
    } else {
        Verdict::Fail { failures }
    }
}

/// Where a canary stands, as recorded between steps (so an interrupted one resumes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CanaryState {
    /// The index of the current step in the plan.
    pub step: usize,
    /// When the current step (or its latest extension) began.
    pub since: Timestamp,
    /// How many times the current step was extended for want of traffic.
    pub extensions: u32,
}

impl CanaryState {
    /// The state of a canary that has just started its first step at `now`.
    pub fn start(now: Timestamp) -> Self {
        CanaryState {
            step: 0,
            since: now,
            extensions: 0,
        }
    }
}

/// What to do next.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Next {
    /// Nothing until this time (the step's pause is running).
    Wait {
        /// When to judge.
        until: Timestamp,
    },
    /// Give the canary this share of fresh sessions; the state to record with it.
    Step {
        /// The canary's share, in percent.
        percent: u8,
        /// The new state.
        state: CanaryState,
    },
    /// Extend the current step for want of traffic; the state to record.
    Extend {
        /// The new state.
        state: CanaryState,
    },
    /// All fresh sessions to the canary: it becomes the current version.
    Promote,
    /// Drain the canary and send fresh sessions back to the current version.
    RollBack {
        /// Why.
        failures: Vec<Failure>,
    },
}

/// The next action for a canary in `state` at `now`, given the verdict on the window that ends
/// now (`None` when the step's pause has not passed and nothing was judged).
pub fn next(
    plan: &CanaryPlan,
    state: &CanaryState,
    now: Timestamp,
    verdict: Option<&Verdict>,
) -> Next {
    let due = state.since.plus(plan.pause);
    let Some(verdict) = verdict.filter(|_| now >= due) else {
        return Next::Wait { until: due };
    };
    match verdict {
        Verdict::Fail { failures } => Next::RollBack {
            failures: failures.clone(),
        },
        Verdict::Inconclusive { requests, needed } => {
            if state.extensions >= plan.max_extensions {
                Next::RollBack {
                    failures: vec![Failure::NotEnoughTraffic {
                        requests: *requests,
                        needed: *needed,
                    }],
                }
            } else {
                Next::Extend {
                    state: CanaryState {
                        step: state.step,
                        since: now,
                        extensions: state.extensions + 1,
                    },
                }
            }
        }
        Verdict::Pass => match plan.steps.get(state.step + 1) {
            Some(&percent) => Next::Step {
                percent,
                state: CanaryState {
                    step: state.step + 1,
                    since: now,
                    extensions: 0,
                },
            },
            None => Next::Promote,
        },
    }
}

/// A version's cumulative traffic counters as a provider that counts measures them (the host
/// router's per-version sums). A window is the difference of two readings (see [`window`]). A
/// provider that keeps no counters measures a window between two times instead (AWS: the target
/// groups' CloudWatch statistics) and gives [`WindowStats`] directly.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Responses answered so far.
    pub responses: u64,
    /// Of which with a 5xx status.
    pub errors: u64,
    /// Responses by time to their head: the upper bound of each bucket in microseconds (the last
    /// may be `u64::MAX`, no bound) and how many fell in it (not cumulative).
    pub latency: Vec<(u64, u64)>,
}

/// What one version did between two readings of its counters. A counter that went down (the
/// provider restarted and counts from zero again) counts from zero: the window is then what was
/// counted since the restart.
pub fn window(before: &Counters, after: &Counters) -> WindowStats {
    let reset = after.responses < before.responses || after.errors < before.errors;
    let base = |b: u64, a: u64| if reset || a < b { a } else { a - b };
    let buckets: Vec<(u64, u64)> = after
        .latency
        .iter()
        .map(|&(bound, count)| {
            let earlier = before
                .latency
                .iter()
                .find(|(b, _)| *b == bound)
                .map_or(0, |(_, c)| *c);
            (bound, base(earlier, count))
        })
        .collect();
    let requests = base(before.responses, after.responses);
    WindowStats {
        requests,
        errors: base(before.errors, after.errors).min(requests),
        p99: percentile(&buckets, 0.99),
    }
}

/// The `q` quantile of a histogram, interpolated linearly within the bucket it falls in (as
/// Prometheus's `histogram_quantile` does: adjacent bounds are 2 to 2.5 times apart, too coarse
/// to compare p99s by bucket); in the unbounded last bucket, the last finite bound. `None` when
/// the histogram is empty.
pub fn percentile(buckets: &[(u64, u64)], q: f64) -> Option<Duration> {
    let total: u64 = buckets.iter().map(|(_, c)| c).sum();
    if total == 0 {
        return None;
    }
    let rank = (total as f64) * q.clamp(0.0, 1.0);
    let mut seen = 0u64;
    let mut lower = 0u64;
    for &(bound, count) in buckets {
        if bound == u64::MAX {
            return Some(Duration::from_micros(lower));
        }
        if count > 0 && (seen + count) as f64 >= rank {
            let within = ((rank - seen as f64) / count as f64).clamp(0.0, 1.0);
            let micros = lower as f64 + (bound - lower) as f64 * within;
            return Some(Duration::from_micros(micros.round() as u64));
        }
        seen += count;
        lower = bound;
    }
    Some(Duration::from_micros(lower))
}

/// The default forward's weights at `percent` for the canary: `[current, canary]`, summing to
/// 100. Both targets stay in the forward at every step, so a step is one weight change.
pub fn weights(percent: u8) -> (u16, u16) {
    let p = u16::from(percent.min(100));
    (100 - p, p)
}

/// How a canary ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// It took all fresh sessions; the version it was judged against drains.
    Promoted {
        /// Promoted by hand (`flotilla promote`) rather than by passing every step.
        by_hand: bool,
    },
    /// Fresh sessions went back to the current version; the canary drains.
    RolledBack {
        /// Why (empty when rolled back by hand).
        failures: Vec<Failure>,
        /// Rolled back by hand (`flotilla rollback`).
        by_hand: bool,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> CanaryPlan {
        CanaryPlan {
            steps: vec![5, 25, 50],
            pause: Duration::from_secs(60),
            thresholds: Thresholds::default(),
            max_extensions: 2,
        }
    }

    fn stats(requests: u64, errors: u64, p99_ms: u64) -> WindowStats {
        WindowStats {
            requests,
            errors,
            p99: Some(Duration::from_millis(p99_ms)),
        }
    }

    #[test]
    fn plans_are_checked() {
        let mut p = plan();
        assert_eq!(p.validate(), Ok(()));
        p.steps = vec![];
        assert_eq!(p.validate(), Err(PlanError::NoSteps));
        p.steps = vec![5, 100];
        assert_eq!(p.validate(), Err(PlanError::StepOutOfRange(100)));
        p.steps = vec![25, 5];
        assert_eq!(p.validate(), Err(PlanError::NotIncreasing(5, 25)));
        p.steps = vec![5];
        p.pause = Duration::ZERO;
        assert_eq!(p.validate(), Err(PlanError::NoPause));
    }

    #[test]
    fn judgement_table() {
        let t = Thresholds::default();
        let base = stats(10_000, 10, 100);
        let cases = [
            (stats(1000, 5, 110), "pass"),
            (stats(49, 49, 900), "inconclusive"),
            (stats(1000, 60, 100), "fail"), // 6 % > 5 %
            (stats(1000, 15, 100), "fail"), // 1.5 % > 0.1 % + 1 point
            (stats(1000, 0, 151), "fail"),  // p99 1.51x
            (stats(1000, 0, 150), "pass"),  // p99 exactly 1.5x
        ];
        for (canary, want) in cases {
            let got = match judge(&canary, &base, &t) {
                Verdict::Pass => "pass",
                Verdict::Fail { .. } => "fail",
                Verdict::Inconclusive { .. } => "inconclusive",
            };
            assert_eq!(got, want, "{canary:?}");
        }
        // With no traffic on the current version, only the absolute limit applies.
        assert_eq!(
            judge(&stats(100, 2, 5000), &WindowStats::default(), &t),
            Verdict::Pass
        );
    }

    #[test]
    fn a_canary_steps_through_the_plan_then_is_promoted() {
        let p = plan();
        let t0 = Timestamp::from_secs(1000);
        let mut state = CanaryState::start(t0);
        assert_eq!(
            next(
                &p,
                &state,
                t0.plus(Duration::from_secs(30)),
                Some(&Verdict::Pass)
            ),
            Next::Wait {
                until: t0.plus(p.pause)
            },
            "not judged before the pause ends"
        );
        let mut now = t0;
        let mut shares = Vec::new();
        loop {
            now = now.plus(p.pause);
            match next(&p, &state, now, Some(&Verdict::Pass)) {
                Next::Step { percent, state: s } => {
                    shares.push(percent);
                    state = s;
                }
                Next::Promote => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(shares, vec![25, 50]);
    }

    #[test]
    fn an_inconclusive_step_is_extended_then_rolled_back() {
        let p = plan();
        let t0 = Timestamp::from_secs(1000);
        let verdict = Verdict::Inconclusive {
            requests: 3,
            needed: 50,
        };
        let mut state = CanaryState::start(t0);
        let mut now = t0;
        for n in 1..=2 {
            now = now.plus(p.pause);
            match next(&p, &state, now, Some(&verdict)) {
                Next::Extend { state: s } => {
                    assert_eq!((s.step, s.extensions, s.since), (0, n, now));
                    state = s;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        now = now.plus(p.pause);
        assert_eq!(
            next(&p, &state, now, Some(&verdict)),
            Next::RollBack {
                failures: vec![Failure::NotEnoughTraffic {
                    requests: 3,
                    needed: 50
                }]
            }
        );
    }

    fn counters(responses: u64, errors: u64, latency: &[(u64, u64)]) -> Counters {
        Counters {
            responses,
            errors,
            latency: latency.to_vec(),
        }
    }

    #[test]
    fn a_window_is_the_difference_of_two_readings() {
        let before = counters(100, 2, &[(5_000, 90), (50_000, 10), (u64::MAX, 0)]);
        let after = counters(300, 12, &[(5_000, 190), (50_000, 108), (u64::MAX, 2)]);
        let w = window(&before, &after);
        assert_eq!((w.requests, w.errors), (200, 10));
        // 200 in the window: the 198th is the 98th of the 98 in the 5 to 50 ms bucket.
        assert_eq!(w.p99, Some(Duration::from_millis(50)));
        // A provider that restarted counts from zero: the window is what it counted since.
        let w = window(&after, &counters(40, 1, &[(5_000, 40)]));
        assert_eq!((w.requests, w.errors), (40, 1));
        // 39.6 of the 40 in the first bucket, 0 to 5 ms.
        assert_eq!(w.p99, Some(Duration::from_micros(4950)));
        assert_eq!(window(&after, &after).p99, None);
    }

    #[test]
    fn percentiles_of_a_histogram() {
        fn check(buckets: &[(u64, u64)], q: f64, want_us: Option<u64>) {
            assert_eq!(
                percentile(buckets, q),
                want_us.map(Duration::from_micros),
                "{buckets:?} q={q}"
            );
        }
        check(&[], 0.99, None);
        check(&[(5_000, 0), (10_000, 0)], 0.99, None);
        check(&[(5_000, 99), (10_000, 1)], 0.99, Some(5_000));
        // The 99th of 100 is the first of the two in the 5 to 10 ms bucket: half-way.
        check(&[(5_000, 98), (10_000, 2)], 0.99, Some(7_500));
        check(&[(5_000, 98), (10_000, 0), (25_000, 2)], 0.99, Some(17_500));
        check(
            &[(5_000, 1), (10_000, 0), (u64::MAX, 99)],
            0.99,
            Some(10_000),
        );
        check(&[(5_000, 2)], 0.5, Some(2_500));
    }

    #[test]
    fn weights_sum_to_one_hundred() {
        assert_eq!(weights(5), (95, 5));
        assert_eq!(weights(100), (0, 100));
        assert_eq!(weights(200), (0, 100));
    }
}
