//! Reaper properties: what one pass may and must plan, and that repeated passes over a world that
//! carries the plans out (with interrupted actions and lagging compute) reap everything in the end.

use std::collections::BTreeMap;
use std::time::Duration;

use flotilla_core::drain::Readiness;
use flotilla_core::reaper::{
    CleanupReason, ComputeCounts, ReapAction, ReapPolicy, RetireReason, VersionView, WaitReason,
    plan_pass, plan_reap,
};
use flotilla_core::routing::Affinity;
use flotilla_core::{DeploymentId, Timestamp, Version, VersionState};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

/// The reaper's clock in the single-pass property, in milliseconds.
const NOW_MS: u64 = 1_764_100_000_000;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn policy() -> impl Strategy<Value = ReapPolicy> {
    (0u64..=600, 0u64..=7200, 0u32..=4, 0u64..=3600).prop_map(
        |(min_age, max_age, consecutive_ready_passes, deploying_timeout)| ReapPolicy {
            min_age: secs(min_age),
            max_age: secs(max_age),
            consecutive_ready_passes,
            deploying_timeout: secs(deploying_timeout),
        },
    )
}

/// A duration in milliseconds that often lands on, or within two seconds of, one of the policy's
/// thresholds, so that every `<` and `>=` in the plan is exercised at its boundary.
fn near_thresholds(policy: &ReapPolicy) -> impl Strategy<Value = u64> + use<> {
    let thresholds: Vec<u64> = [policy.min_age, policy.max_age, policy.deploying_timeout]
        .iter()
        .map(|d| d.as_millis() as u64)
        .collect();
    prop_oneof![
        1 => 0u64..20_000_000,
        3 => (prop::sample::select(thresholds), boundary_offset())
            .prop_map(|(t, delta)| t.saturating_add_signed(delta)),
    ]
}

/// Milliseconds from a threshold: exactly on it, one millisecond or one second either side, or
/// anywhere within two seconds.
fn boundary_offset() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(0i64),
        Just(-1),
        Just(1),
        Just(-1000),
        Just(1000),
        -2000i64..=2000,
    ]
}

fn readiness() -> impl Strategy<Value = Option<Readiness>> {
    prop_oneof![
        1 => Just(None),
        1 => Just(Some(Readiness::Healthy)),
        3 => Just(Some(Readiness::ShutdownReady)),
    ]
}

fn affinity() -> impl Strategy<Value = Option<Affinity>> {
    prop::option::of(prop_oneof![
        Just(Affinity::Serving),
        Just(Affinity::Retired)
    ])
}

/// One version as the reaper sees it; `entropy` keeps ids distinct within a fleet.
fn view(policy: &ReapPolicy, entropy: u64) -> impl Strategy<Value = VersionView> + use<> {
    (
        prop::sample::select(VersionState::ALL.to_vec()),
        near_thresholds(policy),
        near_thresholds(policy),
        // Mostly consistent (entered its state after it was created); sometimes not, as skewed or
        // hand-edited state might be. The invariants must hold either way.
        prop::bool::weighted(0.85),
        prop::option::weighted(0.85, (0u32..4, 0u32..4)),
        prop::collection::vec(readiness(), 0..5),
        0u32..5,
        affinity(),
        prop::bool::weighted(0.2),
    )
        .prop_map(
            move |(
                state,
                age,
                in_state,
                consistent,
                compute,
                instances,
                ready_passes,
                affinity,
                in_default,
            )| {
                let in_state = if consistent {
                    in_state.min(age)
                } else {
                    in_state
                };
                let created_at = Timestamp::from_millis(NOW_MS - age);
                VersionView {
                    version: Version {
                        id: DeploymentId::generate(created_at, entropy),
                        state,
                        created_at,
                        state_changed_at: Timestamp::from_millis(NOW_MS - in_state),
                    },
                    compute: compute.map(|(desired, running)| ComputeCounts { desired, running }),
                    instances,
                    ready_passes,
                    affinity,
                    in_default,
                }
            },
        )
}

fn fleet_and_policy() -> impl Strategy<Value = (Vec<VersionView>, ReapPolicy)> {
    policy().prop_flat_map(|policy| {
        let views: Vec<_> = (0..8u64).map(|n| view(&policy, n)).collect();
        (0usize..=8, views).prop_map(move |(len, mut views)| {
            views.truncate(len);
            (views, policy)
        })
    })
}

fn kind(action: &ReapAction) -> &'static str {
    action.name()
}

/// Whether every running instance of a view has reported that it may stop.
fn all_reported_ready(view: &VersionView) -> bool {
    let running = view.compute.map_or(0, |c| c.running) as usize;
    running == 0
        || (view.instances.len() >= running
            && view
                .instances
                .iter()
                .all(|r| *r == Some(Readiness::ShutdownReady)))
}

/// Checks one planned pass against every invariant a single pass must keep.
fn check_plan(
    fleet: &[VersionView],
    now: Timestamp,
    policy: &ReapPolicy,
    plan: &[ReapAction],
) -> Result<(), TestCaseError> {
    let by_id: BTreeMap<&DeploymentId, &VersionView> =
        fleet.iter().map(|v| (&v.version.id, v)).collect();
    let mut kinds: BTreeMap<(&DeploymentId, &str), usize> = BTreeMap::new();
    for action in plan {
        let view = by_id.get(action.id()).copied();
        prop_assert!(
            view.is_some(),
            "action for a version not in the fleet: {action:?}"
        );
        let Some(view) = view else { continue };
        let v = &view.version;
        let age = v.age(now);
        *kinds.entry((action.id(), kind(action))).or_default() += 1;

        // Never touch what is active, what fresh traffic reaches, what is still starting, or
        // what is too young.
        prop_assert_ne!(
            v.state,
            VersionState::Active,
            "touched an active version: {:?}",
            action
        );
        prop_assert!(
            !view.in_default,
            "touched a version in the default: {action:?}"
        );
        prop_assert!(
            !(v.state == VersionState::Deploying && age < policy.deploying_timeout),
            "touched a version deploying within its timeout: {action:?} age {age:?}"
        );
        prop_assert!(
            age >= policy.min_age,
            "touched a version younger than min_age: {action:?}"
        );

        match action {
            ReapAction::RecordReadyPasses { .. } => {
                prop_assert_eq!(v.state, VersionState::Draining);
            }
            ReapAction::Retire { reason, .. } => {
                prop_assert_eq!(
                    v.state,
                    VersionState::Draining,
                    "retired a non-draining version"
                );
                // Never on a blind timer: either max age forced it, or every instance reported
                // ready for the required number of passes in a row.
                match reason {
                    RetireReason::MaxAge => {
                        prop_assert!(v.time_in_state(now) >= policy.max_age);
                    }
                    RetireReason::SessionsEnded => {
                        prop_assert!(all_reported_ready(view), "retired with sessions left");
                        prop_assert!(
                            view.ready_passes.saturating_add(1) >= policy.consecutive_ready_passes
                        );
                    }
                }
            }
            ReapAction::RetireRouting { .. } => {
                prop_assert_eq!(v.state, VersionState::Retired);
                prop_assert_eq!(view.affinity, Some(Affinity::Serving));
            }
            ReapAction::ScaleToZero { .. } => {
                prop_assert_eq!(v.state, VersionState::Retired);
                prop_assert!(view.compute.is_some_and(|c| c.desired > 0));
            }
            ReapAction::DeleteResources { .. } => {
                prop_assert_eq!(
                    v.state,
                    VersionState::Retired,
                    "deleted a non-retired version"
                );
                let counts = view.compute.unwrap_or(ComputeCounts {
                    desired: 0,
                    running: 0,
                });
                prop_assert_eq!(
                    counts.desired,
                    0,
                    "deleted a version with desired instances"
                );
                prop_assert_eq!(
                    counts.running,
                    0,
                    "deleted a version with running instances"
                );
            }
            ReapAction::CleanUpFailed { reason, .. } => match reason {
                CleanupReason::Failed => prop_assert_eq!(v.state, VersionState::Failed),
                CleanupReason::DeployTimedOut => {
                    prop_assert_eq!(v.state, VersionState::Deploying);
                }
            },
        }
    }
    for ((id, kind), count) in &kinds {
        prop_assert!(*count <= 1, "{count} {kind} actions for {id}");
    }
    for view in fleet {
        let v = &view.version;
        let id = &v.id;
        prop_assert!(
            !(kinds.contains_key(&(id, "retire")) && kinds.contains_key(&(id, "delete_resources"))),
            "retired and deleted {id} in one pass"
        );
        let eligible = !view.in_default && v.age(now) >= policy.min_age;
        if eligible && v.state == VersionState::Draining && v.time_in_state(now) >= policy.max_age {
            let want = ReapAction::Retire {
                id: id.clone(),
                reason: RetireReason::MaxAge,
            };
            prop_assert!(
                plan.contains(&want),
                "{id} drained past max_age but was not retired"
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// One pass over a random fleet keeps every single-pass invariant, and each version's actions
    /// depend on that version alone.
    #[test]
    fn one_pass_keeps_every_invariant((fleet, policy) in fleet_and_policy()) {
        let now = Timestamp::from_millis(NOW_MS);
        let plan = plan_reap(&fleet, now, &policy);
        check_plan(&fleet, now, &policy, &plan)?;
        let one_by_one: Vec<ReapAction> = fleet
            .iter()
            .flat_map(|v| plan_reap(std::slice::from_ref(v), now, &policy))
            .collect();
        prop_assert_eq!(plan, one_by_one);
    }

    /// Every draining version is either retired by the pass or explained, never both, and the
    /// explanation agrees with the facts: "nothing to reap" never leaves a draining version
    /// unaccounted for.
    #[test]
    fn every_draining_version_is_retired_or_explained((fleet, policy) in fleet_and_policy()) {
        let now = Timestamp::from_millis(NOW_MS);
        let pass = plan_pass(&fleet, now, &policy);
        prop_assert_eq!(&pass.actions, &plan_reap(&fleet, now, &policy));
        for view in &fleet {
            let v = &view.version;
            let waits: Vec<&WaitReason> = pass
                .waiting
                .iter()
                .filter(|w| w.id == v.id)
                .map(|w| &w.reason)
                .collect();
            if v.state != VersionState::Draining {
                prop_assert!(waits.is_empty(), "explained a {} version", v.state);
                continue;
            }
            let retired = pass
                .actions
                .iter()
                .any(|a| matches!(a, ReapAction::Retire { id, .. } if *id == v.id));
            prop_assert_eq!(
                waits.len() + usize::from(retired),
                1,
                "{} retired: {}, explained {:?}",
                v.id,
                retired,
                waits
            );
            let Some(reason) = waits.first() else { continue };
            match reason {
                WaitReason::InDefault => prop_assert!(view.in_default),
                WaitReason::TooYoung { until } => {
                    prop_assert!(!view.in_default);
                    prop_assert!(v.age(now) < policy.min_age);
                    prop_assert!(*until > now);
                }
                WaitReason::InstancesNotReady { ready, instances } => {
                    prop_assert!(!all_reported_ready(view));
                    prop_assert!(ready < instances, "{ready} of {instances} ready yet not all");
                }
                WaitReason::ReadyPasses { passes, needed } => {
                    prop_assert!(all_reported_ready(view));
                    prop_assert!(passes < needed);
                    let record = ReapAction::RecordReadyPasses {
                        id: v.id.clone(),
                        passes: *passes,
                    };
                    prop_assert!(pass.actions.contains(&record), "the count shown is the one stored");
                }
            }
        }
    }
}

/// One version of the simulated world, with the facts a provider would observe.
#[derive(Clone, Debug, PartialEq)]
struct Sim {
    version: Version,
    compute: Option<ComputeCounts>,
    ready_passes: u32,
    affinity: Option<Affinity>,
    in_default: bool,
    /// From this time on every instance reports ready; `None`: sessions never end.
    sessions_end: Option<Timestamp>,
}

/// The world the reaper passes run against, and the faults and noise it injects.
#[derive(Clone, Debug)]
struct History {
    start: Timestamp,
    policy: ReapPolicy,
    world: Vec<Sim>,
    /// Seconds between passes, used in turn.
    steps: Vec<u64>,
    /// Readiness reports before sessions end, used in turn: includes missing and premature ones.
    noise: Vec<Option<Readiness>>,
    /// How many steps of an action are carried out before a crash (large: the whole action).
    crashes: Vec<usize>,
    /// Whether compute lags behind its desired count for one more pass, used in turn.
    lags: Vec<bool>,
}

fn sim(start: Timestamp, entropy: u64) -> impl Strategy<Value = Sim> {
    (
        prop::sample::select(vec![
            VersionState::Deploying,
            VersionState::Draining,
            VersionState::Draining,
            VersionState::Draining,
            VersionState::Retired,
            VersionState::Retired,
            VersionState::Failed,
        ]),
        0u64..20_000,
        0u64..20_000,
        prop::option::weighted(0.9, (0u32..4, 0u32..4)),
        0u32..3,
        affinity(),
        prop::option::weighted(0.7, 0u64..20_000),
    )
        .prop_map(
            move |(state, age, in_state, compute, ready_passes, affinity, sessions_end)| {
                let created_at = Timestamp::from_secs(start.as_secs() - age);
                let version = Version {
                    id: DeploymentId::generate(created_at, entropy),
                    state,
                    created_at,
                    state_changed_at: Timestamp::from_secs(start.as_secs() - in_state.min(age)),
                };
                Sim {
                    version,
                    compute: compute.map(|(desired, running)| ComputeCounts { desired, running }),
                    ready_passes,
                    affinity,
                    in_default: false,
                    sessions_end: sessions_end.map(|s| start.plus(secs(s))),
                }
            },
        )
}

fn history() -> impl Strategy<Value = History> {
    let start = Timestamp::from_secs(1_764_100_000);
    let active = Sim {
        version: Version {
            id: DeploymentId::generate(start, 999),
            state: VersionState::Active,
            created_at: start,
            state_changed_at: start,
        },
        compute: Some(ComputeCounts {
            desired: 2,
            running: 2,
        }),
        ready_passes: 0,
        affinity: Some(Affinity::Serving),
        in_default: true,
        sessions_end: None,
    };
    (
        policy(),
        prop::collection::vec(any::<bool>(), 6),
        (0..6u64).map(|n| sim(start, n)).collect::<Vec<_>>(),
        prop::collection::vec(1u64..1800, 1..40),
        prop::collection::vec(readiness(), 1..8),
        prop::collection::vec(prop_oneof![3 => Just(usize::MAX), 1 => 0usize..5], 1..10),
        prop::collection::vec(any::<bool>(), 1..6),
        any::<bool>(),
    )
        .prop_map(
            move |(policy, keep, sims, steps, noise, crashes, lags, with_active)| {
                let mut world: Vec<Sim> = sims
                    .into_iter()
                    .zip(keep)
                    .filter_map(|(s, keep)| keep.then_some(s))
                    .collect();
                // The count belongs to the current drain (providers reset it when a version
                // enters draining), and only passes that evaluate a version record it: a version
                // still younger than `min_age` cannot have one.
                for s in &mut world {
                    if s.version.state != VersionState::Draining
                        || s.version.age(start) < policy.min_age
                    {
                        s.ready_passes = 0;
                    }
                }
                if with_active {
                    world.push(active.clone());
                }
                History {
                    start,
                    policy,
                    world,
                    steps,
                    noise,
                    crashes,
                    lags,
                }
            },
        )
}

/// What the provider observes of one simulated version at a pass.
fn observe(s: &Sim, now: Timestamp, noise: &[Option<Readiness>], pass: usize) -> VersionView {
    let running = s.compute.map_or(0, |c| c.running) as usize;
    let ended = s.sessions_end.is_some_and(|t| now >= t);
    let instances = (0..running)
        .map(|i| {
            if ended {
                Some(Readiness::ShutdownReady)
            } else {
                noise[(pass + i) % noise.len()]
            }
        })
        .collect();
    VersionView {
        version: s.version.clone(),
        compute: s.compute,
        instances,
        ready_passes: s.ready_passes,
        affinity: s.affinity,
        in_default: s.in_default,
    }
}

/// Carries out the first `steps` steps of `action`, in the order a provider would (recording
/// progress first), as if the process died after them.
fn apply(
    world: &mut Vec<Sim>,
    action: &ReapAction,
    now: Timestamp,
    steps: usize,
) -> Result<(), TestCaseError> {
    let index = world.iter().position(|s| &s.version.id == action.id());
    prop_assert!(
        index.is_some(),
        "action for a version not in the world: {action:?}"
    );
    let Some(index) = index else { return Ok(()) };
    let s = &mut world[index];
    // Step k (from 1) is carried out only when the crash comes after it.
    let done = |k: usize| steps >= k;
    let mut remove = false;
    match action {
        // Bookkeeping is a single write and is not interrupted here: a lost reset would let the
        // next ready pass count one pass too many, which no plan could detect.
        ReapAction::RecordReadyPasses { passes, .. } => s.ready_passes = *passes,
        ReapAction::Retire { .. } => {
            if done(1) {
                let result = s.version.transition(VersionState::Retired, now);
                prop_assert!(result.is_ok(), "retire: {result:?}");
            }
            if done(2) {
                s.affinity = Some(Affinity::Retired);
            }
            if done(3)
                && let Some(c) = &mut s.compute
            {
                c.desired = 0;
            }
        }
        ReapAction::RetireRouting { .. } => {
            if done(1) {
                s.affinity = Some(Affinity::Retired);
            }
        }
        ReapAction::ScaleToZero { .. } => {
            if done(1)
                && let Some(c) = &mut s.compute
            {
                c.desired = 0;
            }
        }
        ReapAction::DeleteResources { .. } | ReapAction::CleanUpFailed { .. } => {
            // A timed-out deploy is recorded failed first; then rules and target group, then
            // compute, then the state record last: a crash in between leaves a record that the
            // next pass finds again.
            let first = if matches!(action, ReapAction::CleanUpFailed { .. }) {
                if done(1) {
                    let result = s.version.transition(VersionState::Failed, now);
                    prop_assert!(result.is_ok(), "clean up: {result:?}");
                }
                2
            } else {
                1
            };
            if done(first) {
                s.affinity = None;
            }
            if done(first + 1) {
                s.compute = None;
            }
            remove = done(first + 2);
        }
    }
    if remove {
        world.remove(index);
    }
    Ok(())
}

fn run_history(h: &History) -> Result<(), TestCaseError> {
    let policy = h.policy;
    let mut world = h.world.clone();
    let active_before: Vec<Sim> = world.iter().filter(|s| s.in_default).cloned().collect();
    // Past the horizon every clock has run out and faults stop; a few passes more must finish.
    let longest = policy
        .min_age
        .max(policy.max_age)
        .max(policy.deploying_timeout);
    let horizon = h.start.plus(longest).plus(secs(60));
    let mut now = h.start;
    let mut passes_after_horizon = 0;
    let mut pass = 0usize;
    // Passes in a row in which every instance of a draining version reported ready, as the test
    // saw them; the history before the first pass is taken from the world.
    let mut observed_ready: BTreeMap<DeploymentId, u32> = world
        .iter()
        .map(|s| (s.version.id.clone(), s.ready_passes))
        .collect();
    while passes_after_horizon < policy.consecutive_ready_passes as usize + 4 {
        prop_assert!(pass < 10_000, "the history does not end");
        let past_horizon = now >= horizon;
        let fleet: Vec<VersionView> = world
            .iter()
            .map(|s| observe(s, now, &h.noise, pass))
            .collect();
        for view in fleet
            .iter()
            .filter(|v| v.version.state == VersionState::Draining)
        {
            let count = observed_ready.entry(view.version.id.clone()).or_default();
            *count = if all_reported_ready(view) {
                *count + 1
            } else {
                0
            };
        }
        let plan = plan_reap(&fleet, now, &policy);
        check_plan(&fleet, now, &policy, &plan)?;
        for action in &plan {
            if let ReapAction::Retire {
                id,
                reason: RetireReason::SessionsEnded,
            } = action
            {
                let seen = observed_ready.get(id).copied().unwrap_or(0);
                prop_assert!(
                    seen >= policy.consecutive_ready_passes,
                    "{id} retired after {seen} ready passes in a row"
                );
            }
        }
        for (k, action) in plan.iter().enumerate() {
            let steps = if past_horizon {
                usize::MAX
            } else {
                h.crashes[(pass * 7 + k) % h.crashes.len()]
            };
            apply(&mut world, action, now, steps)?;
        }
        if past_horizon {
            // A pass without faults finishes every interrupted retirement: no retired version
            // still serves its affinity or asks for instances.
            for s in world
                .iter()
                .filter(|s| s.version.state == VersionState::Retired)
            {
                prop_assert_ne!(
                    s.affinity,
                    Some(Affinity::Serving),
                    "{} still serves",
                    s.version.id
                );
                prop_assert!(
                    s.compute.is_none_or(|c| c.desired == 0),
                    "{} still asks for instances",
                    s.version.id
                );
            }
        }
        let lag = !past_horizon && h.lags[pass % h.lags.len()];
        if !lag {
            for c in world.iter_mut().filter_map(|s| s.compute.as_mut()) {
                c.running = c.desired;
            }
        }
        let active_now: Vec<Sim> = world.iter().filter(|s| s.in_default).cloned().collect();
        prop_assert_eq!(
            &active_now,
            &active_before,
            "the reaper changed what fresh traffic reaches"
        );
        if past_horizon {
            passes_after_horizon += 1;
        }
        now = now.plus(secs(h.steps[pass % h.steps.len()]));
        pass += 1;
    }
    let left: Vec<String> = world
        .iter()
        .filter(|s| !s.in_default)
        .map(|s| format!("{} {} {:?}", s.version.id, s.version.state, s.compute))
        .collect();
    prop_assert!(
        left.is_empty(),
        "after {pass} passes these were never fully reaped: {left:?}"
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Repeated passes, with interrupted actions, lagging compute and flapping readiness, retire
    /// every draining version (by readiness or max age) and delete every retired, failed or
    /// timed-out version completely, while the active version is never touched.
    #[test]
    fn repeated_passes_reap_everything_in_the_end(h in history()) {
        run_history(&h)?;
    }
}
