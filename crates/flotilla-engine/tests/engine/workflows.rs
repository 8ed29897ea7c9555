//! Workflow behaviour over the simulated provider: what each workflow does, refuses and reports.

use std::path::PathBuf;
use std::time::Duration;

use flotilla_core::VersionState;
use flotilla_core::drain::Readiness;
use flotilla_core::reaper::{CleanupReason, ReapAction, RetireReason, WaitReason};
use flotilla_core::routing::{Affinity, RouteDecision, RouteRequest, RuleBudget, route};
use flotilla_engine::events::{Event, Recorder, Silent};
use flotilla_engine::ports::{AppEnv, ErrorKind, ImageRequest, LockOutcome, SecretSource};
use flotilla_engine::sim::{Behavior, FaultMode, Trigger};
use flotilla_engine::workflows::{DeployRequest, TeardownTarget};
use flotilla_engine::{Engine, EngineError};

use crate::support::{LOCK_TTL, MIN, World, assert_converged, request};

fn steps(recorder: &Recorder) -> Vec<String> {
    recorder
        .0
        .lock()
        .expect("not poisoned")
        .iter()
        .filter_map(|e| match e {
            Event::Step { what, .. } => Some(what.clone()),
            _ => None,
        })
        .collect()
}

fn refusal(err: EngineError) -> (String, String) {
    match err {
        EngineError::Refused { message, hint } => (message, hint),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn second_deploy_switches_fresh_traffic_and_drains_the_first() {
    let w = World::new();
    let alice = w.engine("alice");
    let v1 = w.next_id();
    let recorder = Recorder::default();
    let first = alice
        .deploy(request(&v1, false), &recorder)
        .await
        .expect("deploys");
    assert_eq!((first.resumed, first.draining.len()), (false, 0));
    let order = steps(&recorder);
    let pos = |what: &str| {
        order
            .iter()
            .position(|s| s.starts_with(what))
            .unwrap_or_else(|| panic!("no step `{what}` in {order:?}"))
    };
    assert!(pos("recording it deploying") < pos("preparing the image"));
    assert!(pos("preparing the image") < pos("installing its affinity"));
    assert!(pos("installing its affinity") < pos("creating 2 instances"));
    assert!(pos("creating 2 instances") < pos("waiting for 1 healthy"));
    assert!(pos("waiting for 1 healthy") < pos("switching fresh traffic"));
    assert!(pos("switching fresh traffic") < pos("recording it active"));
    let polls = recorder
        .0
        .lock()
        .expect("not poisoned")
        .iter()
        .filter(|e| matches!(e, Event::WaitingHealthy { .. }))
        .count();
    assert!(
        polls >= 2,
        "the first poll sees nothing healthy yet ({polls} polls)"
    );

    w.sim.advance(5 * MIN);
    let v2 = w.next_id();
    let second = w.deploy(&alice, &v2).await.expect("deploys");
    assert_eq!(second.draining, vec![v1.clone()]);
    let view = w.view();
    assert_eq!(w.state(&v1), Some(VersionState::Draining));
    assert_eq!(w.state(&v2), Some(VersionState::Active));
    assert_eq!(view.fresh_target(), Some(v2.clone()));
    assert!(
        view.serves(&v1),
        "tabs pinned to the old version keep reaching it"
    );
    assert_eq!(view.lock, None, "the lock is released");
    assert_eq!(
        view.records[&v2].image.as_ref().map(|i| i.0.as_str()),
        Some(format!("registry.example/shop:{v2}").as_str())
    );
}

#[tokio::test]
async fn a_deploy_that_never_gets_healthy_removes_itself_and_keeps_traffic() {
    let cases = [
        (
            Behavior::NeverHealthy {
                start: Duration::from_secs(3),
            },
            "GET /healthz -> 500",
        ),
        (Behavior::Crash, "exited with status 1"),
    ];
    for (behavior, log_line) in cases {
        let w = World::new();
        let alice = w.engine("alice");
        let v1 = w.deployed(&alice).await;
        w.sim.advance(5 * MIN);
        let v2 = w.next_id();
        w.sim.set_behavior(&v2, behavior);
        let started = w.sim.now();
        let err = w.deploy(&alice, &v2).await.expect_err("never healthy");
        let EngineError::NotHealthy {
            id,
            previous,
            healthy,
            needed,
            waited,
            logs,
        } = &err
        else {
            panic!("expected NotHealthy, got {err:?}");
        };
        assert_eq!((id, *healthy, *needed), (&v2, 0, 1));
        assert_eq!(previous.as_ref(), Some(&v1));
        assert_eq!(*waited, Duration::from_secs(120));
        assert_eq!(
            w.sim.now().since(started),
            Duration::from_secs(120),
            "virtual time"
        );
        assert!(
            logs.iter().any(|l| l.contains(log_line)),
            "{behavior:?}: {logs:?}"
        );
        assert!(err.to_string().contains(&format!(
            "fresh traffic stays on the previous version, {v1}"
        )));
        let view = w.view();
        assert_eq!(view.fresh_target(), Some(v1.clone()));
        assert_eq!(w.state(&v1), Some(VersionState::Active));
        assert!(!view.compute.contains_key(&v2) && !view.images.contains_key(&v2));
        assert_eq!(view.routing.affinity(&v2), None);
        assert_eq!(w.state(&v2), None);
        assert_converged(&view, "after a failed deploy");
    }
}

/// A first deploy that never got healthy once said "traffic stays on the previous version".
#[tokio::test]
async fn a_failed_first_deploy_does_not_speak_of_a_previous_version() {
    let w = World::new();
    let alice = w.engine("alice");
    let v1 = w.next_id();
    w.sim.set_behavior(&v1, Behavior::Crash);
    let err = w.deploy(&alice, &v1).await.expect_err("never healthy");
    assert!(
        matches!(&err, EngineError::NotHealthy { previous: None, .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(!text.contains("previous"), "{text}");
    assert!(
        text.contains("no version serves yet (this was the first deploy)"),
        "{text}"
    );
    assert_eq!(w.view().fresh_target(), None);
}

#[tokio::test]
async fn reusing_the_id_of_a_finished_version_is_refused() {
    let w = World::new();
    let alice = w.engine("alice");
    let v1 = w.deployed(&alice).await;
    w.sim.advance(MIN);
    let v2 = w.deployed(&alice).await;
    let err = w.deploy(&alice, &v1).await.expect_err("v1 is draining");
    assert!(
        matches!(&err, EngineError::IdInUse { id, state: VersionState::Draining } if id == &v1),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("deploy with a new id (omit --id)"),
        "{err}"
    );
    // Re-deploying the id that already serves is a finished deploy: nothing to do.
    let again = w.deploy(&alice, &v2).await.expect("idempotent");
    assert!(again.resumed && again.draining.is_empty());
    assert_converged(&w.view(), "after refused reuse");
}

#[tokio::test]
async fn an_interrupted_deploy_resumes_with_the_same_id() {
    let w = World::new();
    let alice = w.engine("alice");
    let v1 = w.deployed(&alice).await;
    w.sim.advance(MIN);
    let v2 = w.next_id();
    w.sim.arm(
        Trigger::Operation("compute.create".into()),
        FaultMode::CrashAfter,
    );
    let err = w.deploy(&alice, &v2).await.expect_err("the process died");
    assert!(
        matches!(&err, EngineError::Port { source, .. } if source.kind == ErrorKind::Unavailable),
        "{err:?}"
    );
    w.sim.revive();
    assert_eq!(w.state(&v2), Some(VersionState::Deploying));
    assert_eq!(
        w.view().fresh_target(),
        Some(v1.clone()),
        "traffic untouched"
    );

    let bob = w.engine("bob");
    let err = w.deploy(&bob, &v2).await.expect_err("alice's lock is live");
    assert!(matches!(err, EngineError::LockHeld { .. }), "{err:?}");
    let creates_before = w
        .sim
        .call_log()
        .iter()
        .filter(|c| c.starts_with("compute.create"))
        .count();
    let outcome = bob
        .deploy(request(&v2, true), &Silent)
        .await
        .expect("resumes");
    assert!(outcome.resumed);
    assert_eq!(outcome.draining, vec![v1.clone()]);
    let creates = w
        .sim
        .call_log()
        .iter()
        .filter(|c| c.starts_with("compute.create"))
        .count();
    assert_eq!(
        creates,
        creates_before + 1,
        "create is called again, idempotently"
    );
    assert_eq!(
        w.view().compute[&v2].instances.len(),
        2,
        "no duplicate instances"
    );
    assert_eq!(assert_converged(&w.view(), "after resume"), Some(v2));
}

#[tokio::test]
async fn a_new_deploy_recovers_interrupted_ones() {
    // Died before the switch: cleaned up. Died after it: its activation is completed.
    for (operation, completed) in [
        ("routing.install_affinity", false),
        ("routing.set_default", true),
    ] {
        let w = World::new();
        let alice = w.engine("alice");
        let v1 = w.deployed(&alice).await;
        w.sim.advance(MIN);
        let v2 = w.next_id();
        w.sim
            .arm(Trigger::Operation(operation.into()), FaultMode::CrashAfter);
        w.deploy(&alice, &v2).await.expect_err("the process died");
        w.sim.revive();
        let v3 = w.next_id();
        let bob = w.engine("bob");
        let outcome = bob
            .deploy(request(&v3, true), &Silent)
            .await
            .expect("deploys");
        assert_eq!(outcome.recovered, vec![v2.clone()], "{operation}");
        assert!(!outcome.resumed);
        if completed {
            assert_eq!(w.state(&v2), Some(VersionState::Draining), "{operation}");
            assert_eq!(outcome.draining, vec![v1.clone(), v2.clone()]);
        } else {
            assert_eq!(w.state(&v2), None, "{operation}");
            assert_eq!(outcome.draining, vec![v1.clone()]);
        }
        assert_eq!(assert_converged(&w.view(), operation), Some(v3));
    }
}

#[tokio::test]
async fn rollback_is_instant_and_refuses_what_cannot_serve() {
    let w = World::new();
    let alice = w.engine("alice");
    let v1 = w.deployed(&alice).await;
    w.sim.advance(MIN);
    let v2 = w.deployed(&alice).await;
    let calls = w.sim.calls();
    let before = w.sim.now();
    let outcome = alice.rollback(None, &Silent).await.expect("rolls back");
    assert_eq!(
        (outcome.active, outcome.draining),
        (v1.clone(), Some(v2.clone()))
    );
    assert_eq!(w.sim.now(), before, "no waiting");
    let log = w.sim.call_log();
    assert!(
        log[calls as usize..]
            .iter()
            .all(|c| !c.starts_with("compute.create") && !c.starts_with("clock.sleep")),
        "nothing is created: {log:?}"
    );
    assert_eq!(w.view().fresh_target(), Some(v1.clone()));
    assert!(w.view().serves(&v2), "tabs on v2 keep reaching it");

    let again = alice
        .rollback(Some(v1.clone()), &Silent)
        .await
        .expect("idempotent");
    assert_eq!((again.active, again.draining), (v1.clone(), None));

    // Retire v2 (sessions ended), then try to roll back to it.
    w.sim.advance(MIN);
    for _ in 0..2 {
        alice.reap(false, &Silent).await.expect("reaps");
    }
    assert_eq!(w.state(&v2), Some(VersionState::Retired));
    let (message, hint) = refusal(
        alice
            .rollback(Some(v2.clone()), &Silent)
            .await
            .expect_err("retired"),
    );
    assert!(message.contains("retired"), "{message}");
    assert!(hint.contains("flotilla deploy"), "{hint}");
    let (message, hint) = refusal(
        alice
            .rollback(None, &Silent)
            .await
            .expect_err("nothing draining"),
    );
    assert!(message.contains("nothing to roll back to"), "{message}");
    assert!(hint.contains("flotilla deploy"), "{hint}");
    let unknown = w.next_id();
    let err = alice
        .rollback(Some(unknown), &Silent)
        .await
        .expect_err("unknown");
    assert!(matches!(err, EngineError::UnknownVersion { .. }), "{err:?}");
    assert_eq!(w.view().fresh_target(), Some(v1));
}

#[tokio::test]
async fn rollback_refuses_a_draining_version_with_nothing_running() {
    let w = World::new();
    let alice = w.engine("alice");
    let v1 = w.deployed(&alice).await;
    w.sim.advance(MIN);
    w.deployed(&alice).await;
    // Someone scaled v1 down by hand.
    w.sim.ports().compute.scale(&v1, 0).await.expect("scales");
    let (message, hint) = refusal(
        alice
            .rollback(None, &Silent)
            .await
            .expect_err("nothing runs"),
    );
    assert!(message.contains("no draining version"), "{message}");
    assert!(hint.contains("flotilla deploy"), "{hint}");
    let (message, _) = refusal(
        alice
            .rollback(Some(v1.clone()), &Silent)
            .await
            .expect_err("nothing runs"),
    );
    assert!(message.contains("no running instances"), "{message}");
}

#[tokio::test]
async fn an_interrupted_rollback_is_finished_not_reversed() {
    let w = World::new();
    let alice = w.engine("alice");
    let v1 = w.deployed(&alice).await;
    w.sim.advance(MIN);
    let v2 = w.deployed(&alice).await;
    w.sim.arm(
        Trigger::Operation("routing.set_default".into()),
        FaultMode::CrashAfter,
    );
    alice
        .rollback(None, &Silent)
        .await
        .expect_err("died after the switch");
    w.sim.revive();
    let bob = w.engine("bob");
    w.sim.advance(LOCK_TTL);
    let outcome = bob.rollback(None, &Silent).await.expect("finishes");
    assert_eq!(
        (outcome.active, outcome.draining),
        (v1.clone(), Some(v2.clone()))
    );

    // Died after recording the target active: the reaper finishes it.
    let w = World::new();
    let v1 = w.deployed(&alice_of(&w)).await;
    w.sim.advance(MIN);
    let v2 = w.deployed(&alice_of(&w)).await;
    w.sim.arm(
        Trigger::Operation("state.put".into()),
        FaultMode::CrashAfter,
    );
    alice_of(&w)
        .rollback(None, &Silent)
        .await
        .expect_err("died after the first record");
    w.sim.revive();
    assert_eq!(
        w.view().in_state(VersionState::Active),
        vec![v1.clone(), v2.clone()]
    );
    w.sim.advance(LOCK_TTL);
    let report = w
        .engine("reaper")
        .reap(false, &Silent)
        .await
        .expect("reaps");
    assert_eq!(report.recovered, vec![v2.clone()]);
    assert_eq!(w.state(&v2), Some(VersionState::Draining));
    assert_eq!(
        assert_converged(&w.view(), "after reaper recovery"),
        Some(v1)
    );
}

fn alice_of(w: &World) -> Engine {
    w.engine("alice")
}

#[tokio::test]
async fn drain_refuses_the_active_version_and_is_a_no_op_when_draining() {
    let w = World::new();
    let alice = w.engine("alice");
    let v1 = w.deployed(&alice).await;
    w.sim.advance(MIN);
    let v2 = w.deployed(&alice).await;
    let (message, hint) = refusal(alice.drain(v2.clone(), &Silent).await.expect_err("active"));
    assert!(message.contains("is active"), "{message}");
    assert!(hint.contains("flotilla rollback"), "{hint}");
    let before = w.view().records[&v1].clone();
    alice
        .drain(v1.clone(), &Silent)
        .await
        .expect("already draining");
    assert_eq!(w.view().records[&v1], before, "no-op keeps the drain clock");
    let err = alice
        .drain(w.next_id(), &Silent)
        .await
        .expect_err("unknown");
    assert!(err.to_string().contains("flotilla status"), "{err}");
    assert_eq!(w.view().lock, None);
}

#[tokio::test]
async fn reaper_retires_after_consecutive_ready_passes_then_deletes() {
    let w = World::new();
    w.sim.set_stop_delay(Duration::from_secs(20));
    let alice = w.engine("alice");
    let v1 = w.deployed(&alice).await;
    w.sim.advance(10 * MIN);
    let v2 = w.deployed(&alice).await;
    let reap = || async { alice.reap(false, &Silent).await.expect("reaps") };

    assert_eq!(
        reap().await.actions,
        vec![],
        "within the drain grace period"
    );
    w.sim.advance(Duration::from_secs(31));
    assert_eq!(
        reap().await.actions,
        vec![ReapAction::RecordReadyPasses {
            id: v1.clone(),
            passes: 1
        }]
    );
    // A session comes back: the count starts over.
    w.sim.set_sessions(&v1, 1);
    assert_eq!(
        reap().await.actions,
        vec![ReapAction::RecordReadyPasses {
            id: v1.clone(),
            passes: 0
        }]
    );
    w.sim.set_sessions(&v1, 0);
    assert_eq!(
        reap().await.actions,
        vec![ReapAction::RecordReadyPasses {
            id: v1.clone(),
            passes: 1
        }]
    );
    assert_eq!(
        reap().await.actions,
        vec![ReapAction::Retire {
            id: v1.clone(),
            reason: RetireReason::SessionsEnded
        }]
    );
    let view = w.view();
    assert_eq!(w.state(&v1), Some(VersionState::Retired));
    assert_eq!(view.routing.affinity(&v1), Some(Affinity::Retired));
    let gone = route(
        &view.routing,
        &RouteRequest {
            header: Some(v1.as_str()),
            ..Default::default()
        },
    );
    assert_eq!(
        gone,
        RouteDecision::Gone {
            retired: &v1,
            current: Some(&v2)
        }
    );
    assert_eq!(
        (view.compute[&v1].desired, view.compute[&v1].running),
        (0, 2),
        "stopping"
    );
    assert_eq!(
        reap().await.actions,
        vec![],
        "waits for the last instance to stop"
    );
    w.sim.advance(Duration::from_secs(20));
    assert_eq!(
        reap().await.actions,
        vec![ReapAction::DeleteResources { id: v1.clone() }]
    );
    assert_eq!(w.state(&v1), None);
    assert_eq!(assert_converged(&w.view(), "after reaping"), Some(v2));
}

/// `reap` once said only "nothing to reap" whether a version was too young, its instances were
/// not ready, or it was on pass 1 of 2.
#[tokio::test]
async fn reap_reports_what_each_draining_version_waits_for() {
    let w = World::new();
    let alice = w.engine("alice");
    let v1 = w.deployed(&alice).await;
    w.sim.advance(10 * MIN);
    let v2 = w.deployed(&alice).await;
    let v3 = w.deployed(&alice).await;
    let waits = |report: flotilla_engine::workflows::ReapReport| -> Vec<_> {
        report
            .waiting
            .into_iter()
            .map(|w| (w.id, w.reason))
            .collect()
    };
    let not_ready = WaitReason::InstancesNotReady {
        ready: 0,
        instances: 2,
    };
    let young = WaitReason::TooYoung {
        until: v2.created_at().plus(MIN),
    };
    let dry = alice.reap(true, &Silent).await.expect("dry run");
    assert_eq!(dry.actions, vec![]);
    assert_eq!(
        waits(dry),
        vec![(v1.clone(), not_ready), (v2.clone(), young)],
        "a dry run explains too"
    );
    w.sim.advance(Duration::from_secs(61));
    assert_eq!(
        waits(alice.reap(false, &Silent).await.expect("reaps")),
        vec![
            (
                v1.clone(),
                WaitReason::ReadyPasses {
                    passes: 1,
                    needed: 2
                }
            ),
            (
                v2.clone(),
                WaitReason::ReadyPasses {
                    passes: 1,
                    needed: 2
                }
            ),
        ]
    );
    let report = alice.reap(false, &Silent).await.expect("reaps");
    assert_eq!(report.actions.len(), 2, "{:?}", report.actions);
    assert_eq!(waits(report), vec![], "both retired: nothing waits");
    assert_eq!(w.view().fresh_target(), Some(v3));
}

#[tokio::test]
async fn reaper_forces_retirement_at_max_age_and_cleans_up_dead_deploys() {
    let w = World::new();
    let alice = w.engine("alice");
    let v1 = w.deployed(&alice).await;
    w.sim.advance(MIN);
    let v2 = w.deployed(&alice).await;
    w.sim.set_readiness(&v1, Some(Readiness::Healthy));
    // A deploy that died after creating its instances, under another process's lock.
    let v3 = w.next_id();
    w.sim.arm(
        Trigger::Operation("compute.create".into()),
        FaultMode::CrashAfter,
    );
    w.deploy(&w.engine("crashed"), &v3).await.expect_err("died");
    w.sim.revive();
    let reaper = w.engine("reaper");
    let skipped = reaper.reap(false, &Silent).await.expect("reaps");
    assert_eq!(
        skipped.skipped_locked.map(|l| l.owner),
        Some("crashed".to_owned())
    );
    w.sim.advance(LOCK_TTL + MIN);
    assert_eq!(
        reaper.reap(false, &Silent).await.expect("reaps").actions,
        vec![],
        "v3 may still be starting"
    );
    w.sim.advance(20 * MIN);
    assert_eq!(
        reaper.reap(false, &Silent).await.expect("reaps").actions,
        vec![ReapAction::CleanUpFailed {
            id: v3.clone(),
            reason: CleanupReason::DeployTimedOut
        }]
    );
    w.sim.advance(Duration::from_secs(48 * 3600));
    assert_eq!(
        reaper.reap(false, &Silent).await.expect("reaps").actions,
        vec![ReapAction::Retire {
            id: v1.clone(),
            reason: RetireReason::MaxAge
        }],
        "sessions never ended, but max age is reached"
    );
    assert_eq!(
        reaper.reap(false, &Silent).await.expect("reaps").actions,
        vec![ReapAction::DeleteResources { id: v1 }]
    );
    assert_eq!(assert_converged(&w.view(), "after max age"), Some(v2));
}

#[tokio::test]
async fn reaper_removes_a_failed_deploy_left_half_cleaned() {
    let w = World::new();
    let alice = w.engine("alice");
    let v1 = w.deployed(&alice).await;
    let v2 = w.next_id();
    w.sim.set_behavior(&v2, Behavior::Crash);
    w.sim.arm(
        Trigger::Operation("compute.delete".into()),
        FaultMode::Fail(ErrorKind::Transient),
    );
    let err = w.deploy(&alice, &v2).await.expect_err("cleanup failed");
    assert!(
        err.to_string()
            .contains("`flotilla reap` finishes the removal"),
        "{err}"
    );
    assert_eq!(w.state(&v2), Some(VersionState::Failed));
    let err = w.deploy(&alice, &v2).await.expect_err("failed id");
    assert!(
        matches!(
            err,
            EngineError::IdInUse {
                state: VersionState::Failed,
                ..
            }
        ),
        "{err:?}"
    );
    w.sim.advance(MIN);
    let report = alice.reap(false, &Silent).await.expect("reaps");
    assert_eq!(
        report.actions,
        vec![ReapAction::CleanUpFailed {
            id: v2,
            reason: CleanupReason::Failed
        }]
    );
    assert_eq!(assert_converged(&w.view(), "after cleanup"), Some(v1));
}

#[tokio::test]
async fn reaper_removes_orphans_and_a_dry_run_changes_nothing() {
    let w = World::new();
    let alice = w.engine("alice");
    let v1 = w.deployed(&alice).await;
    let stranger = w.next_id();
    w.sim.create_unrecorded(&stranger, 1);
    let status = alice.status().await.expect("status");
    assert_eq!(status.orphans, vec![stranger.clone()]);
    w.sim.advance(MIN);
    w.sim
        .ports()
        .state
        .acquire_lock("bob", w.sim.now(), LOCK_TTL, false)
        .await
        .expect("locks");
    let before = w.view();
    let dry = alice
        .reap(true, &Silent)
        .await
        .expect("dry run ignores the lock");
    assert_eq!(dry.orphans_removed, vec![stranger.clone()]);
    assert_eq!(w.view(), before, "a dry run changes nothing");
    w.sim
        .ports()
        .state
        .release_lock("bob")
        .await
        .expect("unlocks");
    let report = alice.reap(false, &Silent).await.expect("reaps");
    assert_eq!(report.orphans_removed, vec![stranger]);
    assert_eq!(
        assert_converged(&w.view(), "after orphan removal"),
        Some(v1)
    );
}

#[tokio::test]
async fn teardown_one_refuses_the_serving_version_and_all_removes_everything() {
    let w = World::new();
    let alice = w.engine("alice");
    let v1 = w.deployed(&alice).await;
    w.sim.advance(MIN);
    let v2 = w.deployed(&alice).await;
    let (message, hint) = refusal(
        alice
            .teardown(TeardownTarget::One(v2.clone()), false, &Silent)
            .await
            .expect_err("serving"),
    );
    assert!(message.contains(v1.as_str()), "{message}");
    assert!(
        hint.contains("flotilla rollback") && hint.contains("--all"),
        "{hint}"
    );
    let report = alice
        .teardown(TeardownTarget::One(v1.clone()), false, &Silent)
        .await
        .expect("removes v1");
    assert_eq!(report.removed, vec![v1.clone()]);
    assert_eq!(
        assert_converged(&w.view(), "after teardown of v1"),
        Some(v2.clone())
    );
    let err = alice
        .teardown(TeardownTarget::One(v1), false, &Silent)
        .await
        .expect_err("gone");
    assert!(matches!(err, EngineError::UnknownVersion { .. }), "{err:?}");
    // The only version left may go: fresh traffic then gets "no version deployed".
    alice
        .teardown(TeardownTarget::One(v2), false, &Silent)
        .await
        .expect("removes v2");
    assert!(w.view().is_empty());

    let w = World::new();
    let alice = w.engine("alice");
    w.deployed(&alice).await;
    w.sim.advance(MIN);
    w.deployed(&alice).await;
    w.sim.create_unrecorded(&w.next_id(), 1);
    let report = alice
        .teardown(TeardownTarget::All, false, &Silent)
        .await
        .expect("removes all");
    assert_eq!((report.removed.len(), report.orphans_removed.len()), (2, 1));
    let view = w.view();
    assert!(view.is_empty(), "{view:#?}");
    assert_eq!(view.fresh_target(), None);
    assert_converged(&view, "after teardown --all");
}

#[tokio::test]
async fn a_held_lock_refuses_workflows_and_skips_the_reaper() {
    let w = World::new();
    let alice = w.engine("alice");
    let v1 = w.deployed(&alice).await;
    let bob = w.sim.ports();
    let got = bob
        .state
        .acquire_lock("bob@ci (pid 7)", w.sim.now(), LOCK_TTL, false)
        .await
        .expect("ok");
    assert_eq!(got, LockOutcome::Acquired);
    let v2 = w.next_id();
    let err = w.deploy(&alice, &v2).await.expect_err("locked");
    let text = err.to_string();
    assert!(
        text.contains("bob@ci (pid 7)") && text.contains("--break-lock"),
        "{text}"
    );
    let locked = |r: Result<(), EngineError>| matches!(r, Err(EngineError::LockHeld { .. }));
    assert!(locked(alice.rollback(None, &Silent).await.map(|_| ())));
    assert!(locked(alice.drain(v1.clone(), &Silent).await));
    assert!(locked(
        alice
            .teardown(TeardownTarget::All, false, &Silent)
            .await
            .map(|_| ())
    ));
    let report = alice
        .reap(false, &Silent)
        .await
        .expect("skipped, not failed");
    assert!(report.skipped_locked.is_some() && report.actions.is_empty());
    assert_eq!(w.state(&v2), None, "nothing was recorded");
    alice
        .deploy(request(&v2, true), &Silent)
        .await
        .expect("--break-lock");
    assert_eq!(
        assert_converged(&w.view(), "after breaking the lock"),
        Some(v2)
    );
}

#[tokio::test]
async fn a_deploy_that_would_exceed_the_rule_budget_is_refused() {
    let w = World::new();
    let mut settings = w.settings("alice");
    settings.budget = RuleBudget { limit: 4 };
    let alice = Engine::new(w.sim.ports(), settings);
    w.deployed(&alice).await;
    w.sim.advance(MIN);
    w.deployed(&alice).await;
    let v3 = w.next_id();
    let err = w.deploy(&alice, &v3).await.expect_err("no room");
    let text = err.to_string();
    assert!(
        text.contains("4 of 4 are in use by 2 versions (1 active, 1 draining)"),
        "{text}"
    );
    assert!(
        text.contains("flotilla reap") && text.contains("flotilla teardown ID"),
        "{text}"
    );
    assert_eq!(w.state(&v3), None);
    assert_eq!(w.view().compute.len(), 2);
    let status = alice.status().await.expect("status");
    assert_eq!((status.rules_used, status.rules_limit), (4, 4));
}

#[tokio::test]
async fn bad_deploy_requests_are_refused_before_anything_is_made() {
    let w = World::new();
    let alice = w.engine("alice");
    let id = w.next_id();
    for (instances, min_healthy) in [(0, 1), (2, 0), (2, 3)] {
        let req = DeployRequest {
            instances,
            min_healthy,
            ..request(&id, false)
        };
        let (message, hint) = refusal(alice.deploy(req, &Silent).await.expect_err("bad request"));
        assert!(message.contains(id.as_str()), "{message}");
        assert!(hint.contains("instances"), "{hint}");
    }
    assert_eq!(w.sim.calls(), 0);
}

#[tokio::test]
async fn status_reports_versions_weights_readiness_and_the_lock() {
    let w = World::new();
    let alice = w.engine("alice");
    let v1 = w.deployed(&alice).await;
    w.sim.advance(MIN);
    let v2 = w.deployed(&alice).await;
    w.sim
        .ports()
        .state
        .acquire_lock("bob", w.sim.now(), LOCK_TTL, false)
        .await
        .expect("locks");
    let status = alice.status().await.expect("status");
    let ids: Vec<_> = status
        .versions
        .iter()
        .map(|v| v.record.version.id.clone())
        .collect();
    assert_eq!(ids, vec![v1.clone(), v2.clone()], "oldest first");
    let weights: Vec<_> = status.versions.iter().map(|v| v.weight).collect();
    assert_eq!(weights, vec![0, 100]);
    assert!(
        status
            .versions
            .iter()
            .all(|v| v.affinity == Some(Affinity::Serving))
    );
    assert_eq!(
        status.versions[0].readiness.len(),
        2,
        "one report per running instance"
    );
    assert_eq!(
        status.versions[1].compute.as_ref().map(|c| c.healthy),
        Some(2)
    );
    assert_eq!(status.lock.map(|l| l.owner), Some("bob".to_owned()));
    assert_eq!((status.rules_used, status.orphans.len()), (4, 0));
}

#[tokio::test]
async fn a_long_build_renews_the_lock_and_stops_if_it_was_taken_over() {
    let w = World::new();
    let alice = w.engine("alice");
    w.sim.set_build_time(15 * MIN);
    let build = |id| DeployRequest {
        image: ImageRequest::Build(PathBuf::from("/src/shop")),
        ..request(id, false)
    };
    // Nobody else wanted the lock: the deploy renews it after the build and carries on.
    let v1 = w.next_id();
    alice.deploy(build(&v1), &Silent).await.expect("deploys");
    assert_eq!(w.state(&v1), Some(VersionState::Active));
    let renewals = w
        .sim
        .call_log()
        .iter()
        .filter(|c| c.starts_with("state.acquire_lock"))
        .count();
    assert_eq!(renewals, 2, "taken once, renewed once after the build");

    // Another process took the lapsed lock during the build: the deploy stops before routing.
    let v2 = w.next_id();
    w.sim
        .schedule_lock_takeover(w.sim.now().plus(12 * MIN), "bob", LOCK_TTL);
    let err = alice
        .deploy(build(&v2), &Silent)
        .await
        .expect_err("lost the lock");
    assert!(
        matches!(&err, EngineError::LockHeld { lock, .. } if lock.owner == "bob"),
        "{err:?}"
    );
    let view = w.view();
    assert_eq!(view.routing.affinity(&v2), None);
    assert!(!view.compute.contains_key(&v2));
    assert_eq!(
        view.lock.as_ref().map(|l| l.owner.as_str()),
        Some("bob"),
        "bob keeps his lock"
    );
    assert_eq!(view.fresh_target(), Some(v1));
}

#[tokio::test]
async fn a_ready_pass_count_from_before_a_rollback_does_not_shorten_the_next_drain() {
    let w = World::new();
    let alice = w.engine("alice");
    let v1 = w.deployed(&alice).await;
    w.sim.advance(MIN);
    let v2 = w.deployed(&alice).await;
    w.sim.advance(MIN);
    let report = alice.reap(false, &Silent).await.expect("reaps");
    assert_eq!(
        report.actions,
        vec![ReapAction::RecordReadyPasses {
            id: v1.clone(),
            passes: 1
        }]
    );
    alice
        .rollback(Some(v1.clone()), &Silent)
        .await
        .expect("back to v1");
    alice
        .rollback(Some(v2.clone()), &Silent)
        .await
        .expect("forward to v2");
    assert_eq!(
        w.view().records[&v1].ready_passes,
        0,
        "a new drain starts counting at 0"
    );
    w.sim.advance(MIN);
    let report = alice.reap(false, &Silent).await.expect("reaps");
    assert_eq!(
        report.actions,
        vec![ReapAction::RecordReadyPasses { id: v1, passes: 1 }],
        "one ready pass is not enough to retire"
    );
}

#[tokio::test]
async fn each_version_runs_with_the_environment_its_deploy_declared() {
    let w = World::new();
    let alice = w.engine("alice");
    let env_of = |value: &str| AppEnv {
        vars: [("FEATURE".to_owned(), value.to_owned())].into(),
        secrets: [(
            "TOKEN".to_owned(),
            SecretSource::Reference(format!("ssm:/shop/{value}")),
        )]
        .into(),
    };
    let v1 = w.next_id();
    let first = DeployRequest {
        env: env_of("first"),
        ..request(&v1, false)
    };
    alice.deploy(first, &Silent).await.expect("deploys v1");
    w.sim.advance(MIN);
    let v2 = w.next_id();
    let second = DeployRequest {
        env: env_of("second"),
        ..request(&v2, false)
    };
    alice.deploy(second, &Silent).await.expect("deploys v2");
    assert_eq!(w.sim.env_of(&v1), Some(env_of("first")));
    assert_eq!(w.sim.env_of(&v2), Some(env_of("second")));
    // A rollback points fresh traffic at v1 as it runs: its values come back with it.
    alice
        .rollback(Some(v1.clone()), &Silent)
        .await
        .expect("rolls back");
    assert_eq!(w.sim.view().fresh_target(), Some(v1.clone()));
    assert_eq!(w.sim.env_of(&v1), Some(env_of("first")));
}

#[test]
fn secret_values_never_show_in_debug_output() {
    let env = AppEnv {
        vars: Default::default(),
        secrets: [(
            "DB_PASSWORD".to_owned(),
            SecretSource::Value("hunter2".to_owned()),
        )]
        .into(),
    };
    let shown = format!("{env:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("DB_PASSWORD"), "{shown}");
}

/// The port calls that touch `id`'s routing or instances, in order, without reads.
fn removal_calls(w: &World, id: &flotilla_core::DeploymentId) -> Vec<String> {
    w.sim
        .call_log()
        .into_iter()
        .filter(|c| c.ends_with(id.as_str()))
        .filter_map(|c| c.split_whitespace().next().map(str::to_owned))
        .filter(|op| {
            [
                "routing.retire_affinity",
                "routing.remove_affinity",
                "compute.scale",
                "compute.delete",
            ]
            .contains(&op.as_str())
        })
        .collect()
}

#[tokio::test]
async fn removing_a_version_stops_routing_then_deletes_instances_then_rules_and_target_group() {
    // Teardown of a version that still serves its affinity.
    let w = World::new();
    let alice = w.engine("alice");
    let v1 = w.deployed(&alice).await;
    w.sim.advance(MIN);
    let v2 = w.deployed(&alice).await;
    let before = w.sim.call_log().len();
    alice
        .teardown(TeardownTarget::One(v1.clone()), false, &Silent)
        .await
        .expect("removes v1");
    assert_eq!(
        removal_calls(&w, &v1),
        [
            "routing.retire_affinity",
            "compute.delete",
            "routing.remove_affinity"
        ],
        "{:?}",
        &w.sim.call_log()[before..]
    );
    assert_converged(&w.view(), "after teardown of v1");

    // A deploy that never gets healthy is removed the same way.
    let v3 = w.next_id();
    w.sim.set_behavior(&v3, Behavior::Crash);
    w.deploy(&alice, &v3).await.expect_err("never healthy");
    let calls = removal_calls(&w, &v3);
    assert_eq!(
        calls,
        [
            "routing.retire_affinity",
            "compute.delete",
            "routing.remove_affinity"
        ]
    );
    assert_eq!(w.view().fresh_target(), Some(v2));

    // The reaper: 410 and scale to zero when it retires, and later instances before routing.
    let w = World::new();
    let alice = w.engine("alice");
    let v1 = w.deployed(&alice).await;
    w.sim.advance(MIN);
    w.deployed(&alice).await;
    w.sim.set_readiness(&v1, Some(Readiness::ShutdownReady));
    w.settle().await;
    assert_eq!(w.state(&v1), None, "the reaper removed v1");
    assert_eq!(
        removal_calls(&w, &v1),
        [
            "routing.retire_affinity",
            "compute.scale",
            "compute.delete",
            "routing.remove_affinity"
        ]
    );
}

#[tokio::test]
async fn status_shows_what_running_instances_report_and_survives_not_knowing() {
    let w = World::new();
    let alice = w.engine("alice");
    let v1 = w.deployed(&alice).await;
    let problem = "task i0: the agent's drain source keeps failing: connection refused";
    w.sim.set_problems(&v1, &[problem]);
    let status = alice.status().await.expect("status");
    assert_eq!(
        status.versions[0]
            .compute
            .as_ref()
            .map(|c| c.problems.clone()),
        Some(vec![problem.to_owned()])
    );
    // Finding out fails: status still reports everything else, with the failure as the line.
    w.sim.arm(
        Trigger::Operation("compute.problems".into()),
        FaultMode::Fail(ErrorKind::Transient),
    );
    let status = alice.status().await.expect("status without the reports");
    let c = status.versions[0].compute.as_ref().expect("compute");
    assert_eq!(c.healthy, 2);
    assert_eq!(c.problems.len(), 1);
    assert!(
        c.problems[0].starts_with("(what the instances report is unknown: "),
        "{:?}",
        c.problems
    );
}

#[tokio::test]
async fn a_failed_build_keeps_nothing_of_the_version_and_traffic_where_it_was() {
    let w = World::new();
    let alice = w.engine("alice");
    let v1 = w.deployed(&alice).await;
    let v2 = w.next_id();
    w.sim.arm(
        Trigger::Operation("images.prepare".into()),
        FaultMode::Fail(ErrorKind::Invalid),
    );
    let err = w.deploy(&alice, &v2).await.expect_err("the build fails");
    assert!(
        matches!(&err, EngineError::ImageFailed { id, source } if id == &v2 && source.kind == ErrorKind::Invalid),
        "{err:?}"
    );
    assert_eq!(
        w.state(&v2),
        None,
        "no record of the failed version is left"
    );
    assert_eq!(
        assert_converged(&w.view(), "after a failed build"),
        Some(v1.clone())
    );
    assert_eq!(w.state(&v1), Some(VersionState::Active));
    // The next deploy goes ahead as if nothing had happened.
    let v3 = w.deployed(&alice).await;
    assert_eq!(
        assert_converged(&w.view(), "after the next deploy"),
        Some(v3)
    );
}

#[tokio::test]
async fn a_lock_whose_holder_on_this_host_no_longer_runs_is_broken_with_a_note() {
    use flotilla_engine::workflows::LocalHolders;
    let w = World::new();
    let dead = "alice@box (pid 11)";
    let alice = w.engine(dead);
    let v1 = w.deployed(&alice).await;
    w.sim.advance(MIN);
    // alice's CLI is killed mid-deploy: its lock stays.
    let v2 = w.next_id();
    w.sim.arm(
        Trigger::Operation("compute.create".into()),
        FaultMode::CrashAfter,
    );
    w.deploy(&alice, &v2).await.expect_err("the process died");
    w.sim.revive();

    let on = |owner: &str, host: &str, alive: fn(u32) -> bool| {
        let mut settings = w.settings(owner);
        settings.local_holders = Some(LocalHolders {
            host: host.to_owned(),
            alive,
        });
        Engine::new(w.sim.ports(), settings)
    };
    // Another host cannot tell whether pid 11 runs; a live holder keeps its lock.
    let elsewhere = on("bob@other (pid 12)", "other", |_| false);
    let err = w.deploy(&elsewhere, &w.next_id()).await.expect_err("held");
    assert!(matches!(err, EngineError::LockHeld { .. }), "{err:?}");
    let alive = on("bob@box (pid 12)", "box", |_| true);
    let err = w.deploy(&alive, &w.next_id()).await.expect_err("held");
    assert!(matches!(err, EngineError::LockHeld { .. }), "{err:?}");

    // On the same host, with pid 11 gone, a new deploy breaks the lock and says so.
    let bob = on("bob@box (pid 12)", "box", |pid| pid != 11);
    let recorder = Recorder::default();
    let v3 = w.next_id();
    let outcome = bob
        .deploy(request(&v3, false), &recorder)
        .await
        .expect("the dead holder's lock is broken");
    assert_eq!(outcome.deployment_id, v3);
    let notes: Vec<String> = recorder
        .0
        .lock()
        .expect("not poisoned")
        .iter()
        .filter_map(|e| match e {
            Event::Note { message } => Some(message.clone()),
            _ => None,
        })
        .collect();
    assert!(
        notes.iter().any(
            |n| n == "broke the deploy lock of alice@box (pid 11): that process no longer runs"
        ),
        "{notes:?}"
    );
    assert_eq!(w.view().fresh_target(), Some(v3.clone()));
    assert_ne!(w.state(&v2), Some(VersionState::Deploying), "v2 cleaned up");
    assert_eq!(outcome.draining, vec![v1]);
}
