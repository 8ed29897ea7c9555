//! The fault-at-every-call test on the AWS provider: for every port call k of a deploy (over a
//! running version), a reaper pass and a teardown, and for both fault modes (the k-th call fails
//! without effect; the k-th call takes effect and then the process dies), run the workflow with
//! the fault, run it again as a user would, and check that the world converged with nothing
//! orphaned in moto: no target group, rule, service, parameter or task definition left over.
//!
//! k runs from 1 until a run hits no fault, so every call is covered whatever their number.

use std::future::Future;

use flotilla_core::{DeploymentId, names};
use flotilla_engine::events::Silent;
use flotilla_engine::ports::ErrorKind;
use flotilla_engine::workflows::TeardownTarget;
use flotilla_engine::{Engine, EngineError};

use crate::support::faults::{Mode, Plan};
use crate::support::{Inventory, Moto, World, eager_policy, faulty, next_id};

const KINDS: [ErrorKind; 6] = [
    ErrorKind::Transient,
    ErrorKind::Throttled,
    ErrorKind::Conflict,
    ErrorKind::NotFound,
    ErrorKind::AccessDenied,
    ErrorKind::Unavailable,
];

fn mode(crash: bool, k: u64) -> Mode {
    if crash {
        Mode::Crash
    } else {
        Mode::Fail(KINDS[(k % KINDS.len() as u64) as usize])
    }
}

/// Runs `one(moto, k, crash)` for k = 1.. until the fault is not hit, in both modes, on one
/// moto server reset between runs. `one` returns the server, whether the fault hit, and the
/// calls the faulted run made.
async fn sweep<F, Fut>(what: &str, one: F)
where
    F: Fn(Moto, u64, bool) -> Fut,
    Fut: Future<Output = (Moto, bool, u64)>,
{
    let mut moto = Moto::start();
    for crash in [false, true] {
        let mut k = 1;
        loop {
            moto.reset();
            let (m, hit, calls) = one(moto, k, crash).await;
            moto = m;
            if !hit {
                // The run got past every call before k without meeting the fault, so calls
                // 1..k-1 were each a fault point in an earlier run. How many calls a deploy makes
                // depends on how many health polls it waits for, which varies with the machine's
                // load, so the clean run may make fewer calls than the run before it did.
                assert!(
                    calls < k,
                    "{what}: a run of {calls} calls did not meet a fault at call {k}"
                );
                eprintln!("{what} (crash={crash}): {calls} fault points");
                break;
            }
            k += 1;
            assert!(k < 200, "{what}: the workflow never ends");
        }
    }
}

/// Exactly `ids` own resources, and nothing else does.
fn assert_only(inv: &Inventory, ids: &[&DeploymentId], ctx: &str) {
    let want: std::collections::BTreeSet<String> = ids.iter().map(|i| i.to_string()).collect();
    assert_eq!(inv.ids(), want, "{ctx}: {inv:#?}");
    assert_eq!(inv.target_groups.len(), ids.len(), "{ctx}: {inv:#?}");
    assert_eq!(inv.rules.len(), 2 * ids.len(), "{ctx}: {inv:#?}");
    assert_eq!(inv.services.len(), ids.len(), "{ctx}: {inv:#?}");
    assert_eq!(inv.task_definitions, ids.len(), "{ctx}: {inv:#?}");
}

fn faulted_engine(w: &World, plan: std::sync::Arc<Plan>, owner: &str) -> Engine {
    Engine::new(
        faulty(w.ports(), plan),
        w.engine_settings(owner, eager_policy(1)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_interrupted_at_any_call_converges_when_run_again() {
    if flotilla_testkit::slow::skip("moto") {
        return;
    }
    sweep("deploy", |moto, k, crash| async move {
        let w = World::on(moto, "shop").await;
        let v1 = next_id();
        w.deploy(&w.engine("alice"), &v1).await.expect("deploy v1");
        let v2 = next_id();
        let ctx = format!("deploy crash={crash} k={k}");
        let plan = Plan::new(k, mode(crash, k));
        let first = w
            .deploy(&faulted_engine(&w, plan.clone(), "alice"), &v2)
            .await;
        let hit = plan.hit().is_some();
        if !hit {
            first
                .as_ref()
                .unwrap_or_else(|e| panic!("{ctx}: clean run failed: {e}"));
        } else {
            // The user runs the same command again (same id; the lock is theirs).
            match w.deploy(&w.engine("alice"), &v2).await {
                Ok(out) => assert_eq!(out.deployment_id, v2, "{ctx}"),
                Err(EngineError::IdInUse { .. }) if first.is_err() => {
                    // The crash came after the deploy had finished.
                }
                Err(e) => panic!("{ctx}: the re-run failed: {e} (after {:?})", plan.hit()),
            }
        }
        let inv = w.inventory().await;
        assert_only(&inv, &[&v1, &v2], &ctx);
        let tg2 = names::target_group_name(&w.name, &v2);
        assert_eq!(inv.default, format!("forward {tg2}*100"), "{ctx}");
        assert_eq!(
            inv.parameters[&names::state_parameter(&w.name, &v2)],
            "active",
            "{ctx}"
        );
        assert_eq!(
            inv.parameters[&names::state_parameter(&w.name, &v1)],
            "draining",
            "{ctx}"
        );
        assert!(
            !inv.parameters.contains_key(&names::lock_parameter(&w.name)),
            "{ctx}: the lock is released"
        );
        (w.into_moto(), hit, plan.calls())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reaper_pass_interrupted_at_any_call_converges_on_later_passes() {
    if flotilla_testkit::slow::skip("moto") {
        return;
    }
    sweep("reap", |moto, k, crash| async move {
        let w = World::on(moto, "shop").await;
        let alice = w.engine("alice");
        let (v1, v2) = (next_id(), next_id());
        w.deploy(&alice, &v1).await.expect("deploy v1");
        w.deploy(&alice, &v2).await.expect("deploy v2");
        w.ecs().settle().await;
        w.report_readiness(&v1, "draining").await;
        let ctx = format!("reap crash={crash} k={k}");
        let plan = Plan::new(k, mode(crash, k));
        // Pass 1 retires v1 (410 + scale 0); pass 2 deletes it. The fault may hit either.
        let faulted = faulted_engine(&w, plan.clone(), "reaper");
        for _ in 0..2 {
            let _ = faulted.reap(false, &Silent).await;
            w.ecs().settle().await;
        }
        let hit = plan.hit().is_some();
        let reaper = Engine::new(w.ports(), w.engine_settings("reaper", eager_policy(1)));
        // Later passes (by the same reaper, which renews a lock a failed release left) finish.
        for _ in 0..4 {
            w.ecs().settle().await;
            reaper
                .reap(false, &Silent)
                .await
                .unwrap_or_else(|e| panic!("{ctx}: clean pass failed: {e}"));
            if w.inventory().await.ids().len() == 1 {
                break;
            }
        }
        let inv = w.inventory().await;
        assert_only(&inv, &[&v2], &ctx);
        assert!(
            !inv.parameters.contains_key(&names::lock_parameter(&w.name)),
            "{ctx}: the lock is released"
        );
        (w.into_moto(), hit, plan.calls())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_teardown_interrupted_at_any_call_converges_when_run_again() {
    if flotilla_testkit::slow::skip("moto") {
        return;
    }
    sweep("teardown", |moto, k, crash| async move {
        let w = World::on(moto, "shop").await;
        let alice = w.engine("alice");
        let (v1, v2) = (next_id(), next_id());
        w.deploy(&alice, &v1).await.expect("deploy v1");
        w.deploy(&alice, &v2).await.expect("deploy v2");
        w.ecs().settle().await;
        let ctx = format!("teardown crash={crash} k={k}");
        let plan = Plan::new(k, mode(crash, k));
        let first = faulted_engine(&w, plan.clone(), "alice")
            .teardown(TeardownTarget::All, false, &Silent)
            .await;
        let hit = plan.hit().is_some();
        if hit {
            alice
                .teardown(TeardownTarget::All, false, &Silent)
                .await
                .unwrap_or_else(|e| panic!("{ctx}: the re-run failed: {e}"));
        } else {
            first.unwrap_or_else(|e| panic!("{ctx}: clean run failed: {e}"));
        }
        let inv = w.inventory().await;
        assert_eq!(
            inv,
            Inventory {
                default: "fixed 503".to_owned(),
                ..Default::default()
            },
            "{ctx}"
        );
        (w.into_moto(), hit, plan.calls())
    })
    .await;
}
