//! Canary deploys over the simulator: a good canary steps through its plan and is promoted, a
//! failing one is rolled back, and a tick interrupted at any call (failed, or the process dying
//! right after it) is finished by the ticks after it with the same outcome.

use std::time::Duration;

use flotilla_core::canary::{CanaryPlan, Outcome, Thresholds};
use flotilla_core::routing::WeightedTarget;
use flotilla_core::{DeploymentId, VersionState};
use flotilla_engine::events::Silent;
use flotilla_engine::workflows::CanaryTick;
use flotilla_engine::{Engine, EngineError};

use crate::support::{LOCK_TTL, World, assert_converged, request};

const PAUSE: Duration = Duration::from_secs(60);

fn plan() -> CanaryPlan {
    CanaryPlan {
        steps: vec![10, 50],
        pause: PAUSE,
        thresholds: Thresholds {
            min_requests: 20,
            ..Thresholds::default()
        },
        max_extensions: 1,
    }
}

fn weights(w: &World) -> Vec<(DeploymentId, u16)> {
    w.view()
        .routing
        .default_targets()
        .iter()
        .map(|t: &WeightedTarget| (t.id.clone(), t.weight))
        .collect()
}

/// A current version and a canary of it at its first step.
async fn started(w: &World, engine: &Engine) -> (DeploymentId, DeploymentId) {
    let v1 = w.deployed(engine).await;
    let v2 = w.next_id();
    engine
        .deploy_canary(request(&v2, false), plan(), &Silent)
        .await
        .expect("the canary deploys");
    (v1, v2)
}

/// One window of traffic: both versions answer 100 requests, the canary `errors` of them 5xx.
fn traffic(w: &World, v1: &DeploymentId, v2: &DeploymentId, errors: u64) {
    w.sim.add_traffic(v1, 100, 0, Duration::from_millis(20));
    w.sim
        .add_traffic(v2, 100, errors, Duration::from_millis(20));
}

#[tokio::test]
async fn a_good_canary_steps_through_its_plan_and_is_promoted() {
    let w = World::new();
    let engine = w.engine("cli");
    let (v1, v2) = started(&w, &engine).await;
    assert_eq!(weights(&w), vec![(v1.clone(), 90), (v2.clone(), 10)]);
    assert_eq!(w.state(&v1), Some(VersionState::Active));
    assert_eq!(w.state(&v2), Some(VersionState::Active));

    let daemon = w.engine("daemon");
    assert!(matches!(
        daemon.canary_tick(&Silent).await,
        Ok(CanaryTick::Started { .. })
    ));
    traffic(&w, &v1, &v2, 0);
    assert!(matches!(
        daemon.canary_tick(&Silent).await,
        Ok(CanaryTick::Waiting { .. })
    ));
    w.sim.advance(PAUSE);
    assert_eq!(
        daemon.canary_tick(&Silent).await.expect("tick"),
        CanaryTick::Stepped {
            id: v2.clone(),
            percent: 50
        }
    );
    assert_eq!(weights(&w), vec![(v1.clone(), 50), (v2.clone(), 50)]);
    // A deploy is refused while the canary runs.
    let refused = w.deploy(&engine, &w.next_id()).await;
    assert!(
        matches!(&refused, Err(EngineError::Refused { message, .. }) if message.contains("canary")),
        "{refused:?}"
    );

    traffic(&w, &v1, &v2, 0);
    w.sim.advance(PAUSE);
    assert_eq!(
        daemon.canary_tick(&Silent).await.expect("tick"),
        CanaryTick::Ended {
            id: v2.clone(),
            outcome: Outcome::Promoted { by_hand: false }
        }
    );
    assert_eq!(weights(&w), vec![(v2.clone(), 100)]);
    assert_eq!(w.state(&v1), Some(VersionState::Draining));
    assert_eq!(w.state(&v2), Some(VersionState::Active));
    assert_eq!(
        daemon.canary_tick(&Silent).await.expect("tick"),
        CanaryTick::Idle
    );
    w.settle().await;
    assert_eq!(assert_converged(&w.view(), "after a promotion"), Some(v2));
}

#[tokio::test]
async fn a_canary_answering_5xx_is_rolled_back_and_one_without_traffic_too() {
    let w = World::new();
    let engine = w.engine("cli");
    let (v1, v2) = started(&w, &engine).await;
    let daemon = w.engine("daemon");
    daemon.canary_tick(&Silent).await.expect("start");
    traffic(&w, &v1, &v2, 30);
    w.sim.advance(PAUSE);
    let tick = daemon.canary_tick(&Silent).await.expect("tick");
    assert!(
        matches!(&tick, CanaryTick::Ended { outcome: Outcome::RolledBack { failures, by_hand: false }, .. } if !failures.is_empty()),
        "{tick:?}"
    );
    assert_eq!(weights(&w), vec![(v1.clone(), 100)]);
    assert_eq!(w.state(&v2), Some(VersionState::Draining));
    assert_eq!(w.state(&v1), Some(VersionState::Active));
    let record = w.view().records[&v2].clone();
    let last = record.canary.expect("canary").last.expect("judged");
    assert_eq!((last.canary.requests, last.canary.errors), (100, 30));
    assert_eq!((last.baseline.requests, last.baseline.errors), (100, 0));

    // No traffic at all: extended once, then rolled back.
    let v3 = w.next_id();
    engine
        .deploy_canary(request(&v3, false), plan(), &Silent)
        .await
        .expect("another canary deploys");
    daemon.canary_tick(&Silent).await.expect("start");
    w.sim.advance(PAUSE);
    assert_eq!(
        daemon.canary_tick(&Silent).await.expect("tick"),
        CanaryTick::Extended { id: v3.clone() }
    );
    w.sim.advance(PAUSE);
    let tick = daemon.canary_tick(&Silent).await.expect("tick");
    assert!(
        matches!(
            &tick,
            CanaryTick::Ended {
                outcome: Outcome::RolledBack { .. },
                ..
            }
        ),
        "{tick:?}"
    );
    assert_eq!(weights(&w), vec![(v1.clone(), 100)]);
}

#[tokio::test]
async fn promote_and_rollback_by_hand_end_a_canary() {
    let w = World::new();
    let engine = w.engine("cli");
    let (v1, v2) = started(&w, &engine).await;
    let rolled = engine.rollback(None, &Silent).await.expect("rollback");
    assert_eq!(
        (rolled.active, rolled.draining),
        (v1.clone(), Some(v2.clone()))
    );
    assert_eq!(weights(&w), vec![(v1.clone(), 100)]);
    assert!(engine.promote(&Silent).await.is_err(), "no canary runs");

    let v3 = w.next_id();
    engine
        .deploy_canary(request(&v3, false), plan(), &Silent)
        .await
        .expect("another canary deploys");
    assert_eq!(
        engine.promote(&Silent).await.expect("promote"),
        CanaryTick::Ended {
            id: v3.clone(),
            outcome: Outcome::Promoted { by_hand: true }
        }
    );
    assert_eq!(weights(&w), vec![(v3.clone(), 100)]);
    assert_eq!(w.state(&v1), Some(VersionState::Draining));
}

/// Runs ticks (a new daemon after every failure, the clock past the dead one's lock) until the
/// canary's record says it has ended and that is carried out; returns its outcome.
async fn tick_to_end(w: &World, v1: &DeploymentId, v2: &DeploymentId, errors: u64) -> Outcome {
    for n in 0..20 {
        let canary = w.view().records[v2].canary.clone().expect("canary");
        if let (true, Some(outcome)) = (canary.settled, canary.outcome) {
            return outcome;
        }
        let daemon = w.engine(&format!("daemon-{n}"));
        match daemon.canary_tick(&Silent).await {
            Ok(CanaryTick::Ended { outcome, .. }) => return outcome,
            Ok(CanaryTick::Locked) => w.sim.advance(LOCK_TTL + Duration::from_secs(1)),
            Ok(_) | Err(_) => {
                traffic(w, v1, v2, errors);
                w.sim.advance(PAUSE);
            }
        }
    }
    panic!("the canary never ended: {:#?}", w.view());
}

#[tokio::test]
async fn a_canary_tick_interrupted_at_any_call_is_finished_with_the_same_outcome() {
    for (errors, want_promoted) in [(0, true), (50, false)] {
        for crash in [false, true] {
            let mut k = 1;
            loop {
                let w = World::new();
                let engine = w.engine("cli");
                let (v1, v2) = started(&w, &engine).await;
                w.engine("daemon")
                    .canary_tick(&Silent)
                    .await
                    .expect("start");
                traffic(&w, &v1, &v2, errors);
                w.sim.advance(PAUSE);
                // The first window is judged with the fault armed: a step when it passes, the
                // rollback when it fails.
                if crash {
                    w.sim.crash_after_call(k);
                } else {
                    w.sim
                        .fail_call(k, flotilla_engine::ports::ErrorKind::Transient);
                }
                let first = w.engine("daemon").canary_tick(&Silent).await;
                let hit = w.sim.fault_hit().is_some();
                w.sim.revive();
                let outcome = match first {
                    Ok(CanaryTick::Ended { outcome, .. }) if !hit => outcome,
                    _ => tick_to_end(&w, &v1, &v2, errors).await,
                };
                let context = format!("errors {errors}, crash {crash}, call {k}");
                let (winner, loser) = if want_promoted {
                    (&v2, &v1)
                } else {
                    (&v1, &v2)
                };
                assert_eq!(
                    matches!(outcome, Outcome::Promoted { .. }),
                    want_promoted,
                    "{context}: {outcome:?}"
                );
                assert_eq!(weights(&w), vec![(winner.clone(), 100)], "{context}");
                assert_eq!(w.state(winner), Some(VersionState::Active), "{context}");
                assert_eq!(w.state(loser), Some(VersionState::Draining), "{context}");
                let canary = w.view().records[&v2].canary.clone().expect("canary");
                assert!(canary.settled, "{context}");
                w.settle().await;
                assert_eq!(
                    assert_converged(&w.view(), &context).as_ref(),
                    Some(winner),
                    "{context}"
                );
                if !hit {
                    break;
                }
                k += 1;
                assert!(k < 200, "the tick never ends");
            }
            println!("errors {errors}, crash {crash}: {} fault points", k - 1);
            assert!(k > 3, "a judged tick makes several calls");
        }
    }
}
