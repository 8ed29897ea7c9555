//! The test that matters: for every call k of a deploy, a reaper pass and a teardown, and for both
//! fault modes (the k-th call fails; the process dies right after the k-th call), run the workflow
//! with the fault armed, run it again, let the reaper pass with the clock past every timeout, and
//! check that the world converges: no orphans, nothing unfinished, one active version that fresh
//! traffic reaches and that serves.
//!
//! k runs from 1 until a run hits no fault, so every call of each workflow is covered whatever
//! their number; each sweep also checks that the number of fault points equals the calls of a clean
//! run.

use std::future::Future;
use std::time::Duration;

use flotilla_core::reaper::{CleanupReason, ReapAction, RetireReason};
use flotilla_core::{DeploymentId, VersionState};
use flotilla_engine::EngineError;
use flotilla_engine::events::Silent;
use flotilla_engine::ports::ErrorKind;
use flotilla_engine::sim::{Behavior, FaultMode, Sim, Trigger};
use flotilla_engine::workflows::TeardownTarget;

use crate::support::{MIN, World, assert_converged, request};

#[derive(Clone, Copy, Debug)]
enum Mode {
    /// The k-th call fails (with a kind that rotates with k) and has no effect.
    Fail,
    /// The k-th call takes effect, then the process dies.
    Crash,
}

const KINDS: [ErrorKind; 6] = [
    ErrorKind::Transient,
    ErrorKind::Throttled,
    ErrorKind::Conflict,
    ErrorKind::NotFound,
    ErrorKind::AccessDenied,
    ErrorKind::Unavailable,
];

fn arm(sim: &Sim, mode: Mode, k: u64) {
    match mode {
        Mode::Fail => sim.fail_call(k, KINDS[(k % KINDS.len() as u64) as usize]),
        Mode::Crash => sim.crash_after_call(k),
    }
}

/// What one faulted run saw.
struct Run {
    /// Whether the armed fault triggered.
    hit: bool,
    /// Calls the faulted workflow made.
    calls: u64,
}

/// Runs `run(k, mode)` for k = 1, 2, ... until the fault is not hit, for both modes; checks that
/// every call of a clean run was a fault point. Returns the number of fault points.
async fn sweep<F, Fut>(what: &str, run: F) -> u64
where
    F: Fn(u64, Mode) -> Fut,
    Fut: Future<Output = Run>,
{
    let mut points = Vec::new();
    for mode in [Mode::Fail, Mode::Crash] {
        let mut k = 1;
        let clean = loop {
            let outcome = run(k, mode).await;
            if !outcome.hit {
                break outcome.calls;
            }
            k += 1;
            assert!(k < 1000, "{what}: the workflow never ends");
        };
        assert_eq!(
            k - 1,
            clean,
            "{what} {mode:?}: every call of a clean run is a fault point"
        );
        points.push(k - 1);
    }
    assert_eq!(
        points[0], points[1],
        "{what}: both modes cover the same calls"
    );
    eprintln!("{what}: {} fault points per mode", points[0]);
    points[0]
}

/// Orphans other than `expected` (resources a test created behind flotilla's back).
fn unexpected_orphans(w: &World, expected: Option<&DeploymentId>) -> Vec<String> {
    w.view()
        .orphans()
        .into_iter()
        .filter(|o| Some(&o.id) != expected)
        .map(|o| format!("{o:?}"))
        .collect()
}

#[derive(Clone, Copy, Debug)]
enum Rerun {
    /// The user re-runs the deploy with the id it printed (`--id`, `--break-lock`).
    SameId,
    /// The user starts a fresh deploy: the interrupted one must be recovered.
    NewId,
}

/// Deploys v2 over a running v1 with a fault at call k, then re-runs as `rerun` says.
async fn deploy_over_running(k: u64, mode: Mode, rerun: Rerun, healthy: bool) -> Run {
    let w = World::new();
    let alice = w.engine("alice");
    let v1 = w.deployed(&alice).await;
    w.sim.advance(5 * MIN);
    let v2 = w.next_id();
    if !healthy {
        w.sim.set_behavior(
            &v2,
            Behavior::NeverHealthy {
                start: Duration::from_secs(3),
            },
        );
    }
    let ctx = format!("deploy (healthy={healthy}) {mode:?} at call {k}, re-run {rerun:?}");
    let before = w.sim.calls();
    arm(&w.sim, mode, k);
    let first = w.deploy(&alice, &v2).await;
    let calls = w.sim.calls() - before;
    let hit = w.sim.fault_hit().is_some();
    w.sim.revive();
    match (hit, healthy, &first) {
        (true, _, _) => {}
        (false, true, Ok(outcome)) => assert_eq!(outcome.draining, vec![v1.clone()], "{ctx}"),
        (false, false, Err(EngineError::NotHealthy { .. })) => {}
        (false, _, other) => panic!("{ctx}: a clean run gave {other:?}"),
    }
    assert_eq!(
        unexpected_orphans(&w, None),
        Vec::<String>::new(),
        "{ctx}: journal first"
    );
    assert!(
        w.view().in_state(VersionState::Active).len() <= 2,
        "{ctx}: at most the old and the new"
    );
    let fresh = w.view().fresh_target();
    assert!(
        fresh == Some(v1.clone()) || fresh == Some(v2.clone()),
        "{ctx}: fresh traffic always has a version: {fresh:?}"
    );
    let left_deploying = w.state(&v2) == Some(VersionState::Deploying);

    let bob = w.engine("bob");
    let expected = match rerun {
        Rerun::SameId => {
            let second = bob.deploy(request(&v2, true), &Silent).await;
            if healthy {
                let outcome = second.unwrap_or_else(|e| panic!("{ctx}: re-run failed: {e}"));
                assert_eq!(outcome.deployment_id, v2, "{ctx}");
                v2.clone()
            } else {
                match second {
                    Err(EngineError::NotHealthy { .. })
                    | Err(EngineError::IdInUse {
                        state: VersionState::Failed,
                        ..
                    }) => {}
                    other => panic!("{ctx}: re-run of an unhealthy deploy gave {other:?}"),
                }
                v1.clone()
            }
        }
        Rerun::NewId => {
            let v3 = w.next_id();
            let outcome = bob
                .deploy(request(&v3, true), &Silent)
                .await
                .unwrap_or_else(|e| panic!("{ctx}: new deploy failed: {e}"));
            if left_deploying {
                assert!(outcome.recovered.contains(&v2), "{ctx}: {outcome:?}");
            }
            assert!(
                !matches!(
                    w.state(&v2),
                    Some(VersionState::Active | VersionState::Deploying)
                ),
                "{ctx}: v2 was recovered or left draining"
            );
            v3
        }
    };
    assert_eq!(
        w.view().fresh_target(),
        Some(expected.clone()),
        "{ctx}: right after the re-run"
    );
    w.settle().await;
    assert_eq!(assert_converged(&w.view(), &ctx), Some(expected), "{ctx}");
    Run { hit, calls }
}

#[tokio::test]
async fn deploy_converges_after_a_fault_at_every_call() {
    let same = sweep("deploy, re-run with the same id", |k, mode| {
        deploy_over_running(k, mode, Rerun::SameId, true)
    })
    .await;
    let new = sweep("deploy, re-run with a new id", |k, mode| {
        deploy_over_running(k, mode, Rerun::NewId, true)
    })
    .await;
    assert_eq!(same, new, "the same faulted deploy");
    assert!(same >= 15, "a deploy makes many calls, not {same}");
}

#[tokio::test]
async fn an_unhealthy_deploy_converges_after_a_fault_at_every_call() {
    let points = sweep("unhealthy deploy, re-run with the same id", |k, mode| {
        deploy_over_running(k, mode, Rerun::SameId, false)
    })
    .await;
    sweep("unhealthy deploy, re-run with a new id", |k, mode| {
        deploy_over_running(k, mode, Rerun::NewId, false)
    })
    .await;
    assert!(
        points >= 40,
        "the health wait polls until the deadline, not {points} calls"
    );
}

/// v1 retired and stopped (ready to delete), v2 draining with one ready pass (retires this pass),
/// v3 active, v4 a deploy that died 31 minutes ago, and an orphan made outside flotilla.
struct ReapFleet {
    w: World,
    v1: DeploymentId,
    v2: DeploymentId,
    v3: DeploymentId,
    v4: DeploymentId,
    stranger: DeploymentId,
}

async fn reap_fleet() -> ReapFleet {
    let w = World::new();
    w.sim.set_stop_delay(Duration::from_secs(20));
    let alice = w.engine("alice");
    let v1 = w.deployed(&alice).await;
    w.sim.advance(5 * MIN);
    let v2 = w.deployed(&alice).await;
    w.sim.advance(5 * MIN);
    let v3 = w.deployed(&alice).await;
    w.sim.set_sessions(&v2, 1);
    w.sim.advance(MIN);
    let reaper = w.engine("reaper-a");
    for _ in 0..2 {
        reaper.reap(false, &Silent).await.expect("set-up pass");
    }
    w.sim.set_sessions(&v2, 0);
    let report = reaper.reap(false, &Silent).await.expect("set-up pass");
    assert_eq!(
        report.actions,
        vec![ReapAction::RecordReadyPasses {
            id: v2.clone(),
            passes: 1
        }]
    );
    let v4 = w.next_id();
    w.sim.arm(
        Trigger::Operation("compute.create".into()),
        FaultMode::CrashAfter,
    );
    w.deploy(&w.engine("dead-cli"), &v4)
        .await
        .expect_err("the deploy died");
    w.sim.revive();
    let stranger = w.next_id();
    w.sim.create_unrecorded(&stranger, 1);
    w.sim.advance(31 * MIN);
    assert_eq!(w.state(&v1), Some(VersionState::Retired));
    assert_eq!(w.view().compute[&v1].running, 0);
    ReapFleet {
        w,
        v1,
        v2,
        v3,
        v4,
        stranger,
    }
}

async fn reap_with_fault(k: u64, mode: Mode) -> Run {
    let ReapFleet {
        w,
        v1,
        v2,
        v3,
        v4,
        stranger,
    } = reap_fleet().await;
    let ctx = format!("reap {mode:?} at call {k}");
    let reaper = w.engine("reaper-a");
    let before = w.sim.calls();
    arm(&w.sim, mode, k);
    let first = reaper.reap(false, &Silent).await;
    let calls = w.sim.calls() - before;
    let hit = w.sim.fault_hit().is_some();
    w.sim.revive();
    if !hit {
        let report = first.unwrap_or_else(|e| panic!("{ctx}: clean pass failed: {e}"));
        assert_eq!(
            report.actions,
            vec![
                ReapAction::DeleteResources { id: v1.clone() },
                ReapAction::Retire {
                    id: v2.clone(),
                    reason: RetireReason::SessionsEnded
                },
                ReapAction::CleanUpFailed {
                    id: v4.clone(),
                    reason: CleanupReason::DeployTimedOut
                },
            ],
            "{ctx}"
        );
        assert_eq!(report.orphans_removed, vec![stranger.clone()], "{ctx}");
    }
    assert_eq!(
        unexpected_orphans(&w, Some(&stranger)),
        Vec::<String>::new(),
        "{ctx}"
    );
    assert_eq!(
        w.view().fresh_target(),
        Some(v3.clone()),
        "{ctx}: the reaper never moves traffic"
    );
    // Another reaper process runs next; it may find the dead one's lock and skip.
    w.engine("reaper-b")
        .reap(false, &Silent)
        .await
        .unwrap_or_else(|e| panic!("{ctx}: second pass failed: {e}"));
    w.settle().await;
    let view = w.view();
    assert_eq!(assert_converged(&view, &ctx), Some(v3.clone()), "{ctx}");
    assert_eq!(view.records.keys().collect::<Vec<_>>(), vec![&v3], "{ctx}");
    Run { hit, calls }
}

#[tokio::test]
async fn a_reaper_pass_converges_after_a_fault_at_every_call() {
    let points = sweep("reap", reap_with_fault).await;
    assert!(points >= 20, "a busy pass makes many calls, not {points}");
}

/// v1 retired and stopped, v2 draining, v3 active, and an orphan.
async fn teardown_fleet() -> (World, [DeploymentId; 3], DeploymentId) {
    let w = World::new();
    let alice = w.engine("alice");
    let v1 = w.deployed(&alice).await;
    w.sim.advance(5 * MIN);
    let v2 = w.deployed(&alice).await;
    w.sim.advance(5 * MIN);
    let v3 = w.deployed(&alice).await;
    w.sim.set_sessions(&v2, 1);
    w.sim.advance(MIN);
    for _ in 0..2 {
        alice.reap(false, &Silent).await.expect("set-up pass");
    }
    assert_eq!(w.state(&v1), Some(VersionState::Retired));
    let stranger = w.next_id();
    w.sim.create_unrecorded(&stranger, 1);
    (w, [v1, v2, v3], stranger)
}

async fn teardown_with_fault(k: u64, mode: Mode, all: bool) -> Run {
    let (w, [_, v2, v3], stranger) = teardown_fleet().await;
    let target = || {
        if all {
            TeardownTarget::All
        } else {
            TeardownTarget::One(v2.clone())
        }
    };
    let ctx = format!("teardown (all={all}) {mode:?} at call {k}");
    let alice = w.engine("alice");
    let before = w.sim.calls();
    arm(&w.sim, mode, k);
    let first = alice.teardown(target(), false, &Silent).await;
    let calls = w.sim.calls() - before;
    let hit = w.sim.fault_hit().is_some();
    w.sim.revive();
    if !hit {
        let report = first.unwrap_or_else(|e| panic!("{ctx}: clean teardown failed: {e}"));
        assert_eq!(report.removed.len(), if all { 3 } else { 1 }, "{ctx}");
    }
    assert_eq!(
        unexpected_orphans(&w, Some(&stranger)),
        Vec::<String>::new(),
        "{ctx}"
    );
    let second = w.engine("bob").teardown(target(), true, &Silent).await;
    match second {
        Ok(_) => {}
        // The first run got as far as deleting the record.
        Err(EngineError::UnknownVersion { .. }) if !all => {}
        Err(e) => panic!("{ctx}: re-run failed: {e}"),
    }
    w.settle().await;
    let view = w.view();
    if all {
        assert!(view.is_empty(), "{ctx}: {view:#?}");
        assert_eq!(assert_converged(&view, &ctx), None);
    } else {
        assert_eq!(assert_converged(&view, &ctx), Some(v3.clone()), "{ctx}");
        assert_eq!(view.records.keys().collect::<Vec<_>>(), vec![&v3], "{ctx}");
    }
    Run { hit, calls }
}

#[tokio::test]
async fn teardown_converges_after_a_fault_at_every_call() {
    let all = sweep("teardown --all", |k, mode| {
        teardown_with_fault(k, mode, true)
    })
    .await;
    let one = sweep("teardown ID", |k, mode| teardown_with_fault(k, mode, false)).await;
    assert!(
        all > one && one >= 8,
        "teardown --all {all}, teardown ID {one}"
    );
}
