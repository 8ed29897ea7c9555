//! API calls of a deploy and of reaper passes over N versions, counted by an SDK interceptor
//! against moto, printed next to the call pattern of the shipped Python system for the same N.
//!
//! Run: `cargo test -p flotilla-aws --bench api_calls` (the counts do not depend on the
//! optimisation level, so the dev profile avoids a release build of the SDK). `FLOTILLA_BENCH_N`
//! sets the sizes (default `5,20`).

#![allow(
    dead_code,
    reason = "the shared test support has helpers this benchmark does not use"
)]

#[path = "../tests/moto/support/mod.rs"]
mod support;

use std::collections::BTreeMap;

use flotilla_engine::Engine;
use flotilla_engine::events::Silent;
use support::{Moto, World, eager_policy, next_id};

/// Tasks per version (the deploy's `instances`).
const TASKS: u64 = 2;

/// The shipped Python system's calls, from its code path (pulse-aws 0.1.12), for a deploy over
/// `n - 1` older versions. Image build and the health-wait polls are left out on both sides.
fn python_deploy(n: u64) -> BTreeMap<&'static str, u64> {
    let older = n - 1;
    BTreeMap::from([
        ("RegisterTaskDefinition", 1),
        ("CreateTargetGroup", 1),
        ("DescribeRules (priority)", 1),
        ("CreateRule", 1),
        ("CreateService", 1),
        ("PutParameter (deploying, active)", 2),
        ("ModifyListener", 1),
        ("TagResource (active)", 1),
        ("ListServices", 1),
        ("DescribeServices (10 per call)", n.div_ceil(10)),
        ("ListTagsForResource (per service)", n),
        ("PutParameter (draining, per older)", older),
        ("TagResource (draining, per older)", older),
    ])
}

/// The Python reaper's calls for one pass that only looks (no version ready yet), over `n`
/// services of which `n - 1` are draining, each with `TASKS` tasks.
fn python_reap_look(n: u64) -> BTreeMap<&'static str, u64> {
    let draining = n - 1;
    BTreeMap::from([
        ("ListServices", 1),
        ("DescribeServices (10 per call)", n.div_ceil(10)),
        ("ListTagsForResource (per service)", n),
        ("ListTasks (per draining service)", draining),
        ("DescribeTasks (per draining service)", draining),
        ("GetParameter (per task)", draining * TASKS),
    ])
}

fn total(m: &BTreeMap<&'static str, u64>) -> u64 {
    m.values().sum()
}

fn print(title: &str, ours: &BTreeMap<String, u64>, python: Option<&BTreeMap<&'static str, u64>>) {
    let ours_total: u64 = ours.values().sum();
    println!("  {title}: flotilla {ours_total} calls");
    for (op, n) in ours {
        println!("      {n:>4}  {op}");
    }
    if let Some(p) = python {
        println!("    shipped Python pattern: {} calls", total(p));
        for (op, n) in p {
            println!("      {n:>4}  {op}");
        }
    }
}

async fn measure(n: u64) {
    let w = World::on(Moto::start(), "bench").await;
    let alice = w.engine("alice");
    for _ in 0..n - 1 {
        w.deploy(&alice, &next_id()).await.expect("set-up deploy");
    }
    w.ecs().settle().await;

    println!("\nN = {n} versions ({TASKS} tasks each)");
    let counted = Engine::new(
        w.counted_ports(),
        w.engine_settings("alice", eager_policy(2)),
    );
    w.counter.reset();
    let last = next_id();
    w.deploy(&counted, &last).await.expect("measured deploy");
    print(
        "deploy of version N (health polls included)",
        &w.counter.snapshot(),
        Some(&python_deploy(n)),
    );

    w.ecs().settle().await;
    let reaper = Engine::new(
        w.counted_ports(),
        w.engine_settings("reaper", eager_policy(2)),
    );
    w.counter.reset();
    reaper.reap(false, &Silent).await.expect("look pass");
    print(
        "reaper pass, sessions still open (look only)",
        &w.counter.snapshot(),
        Some(&python_reap_look(n)),
    );

    let ids: Vec<_> = w
        .inventory()
        .await
        .ids()
        .into_iter()
        .filter(|id| id != last.as_str())
        .collect();
    for id in &ids {
        let id = flotilla_core::DeploymentId::new(id).expect("id");
        w.report_readiness(&id, "draining").await;
    }
    for (i, what) in [
        "reaper pass 1 of 2 all-ready passes (records the count)",
        "reaper pass 2: retire N-1 versions (410 + scale to 0)",
    ]
    .iter()
    .enumerate()
    {
        w.counter.reset();
        let report = reaper.reap(false, &Silent).await.expect("pass");
        assert!(report.failed.is_empty(), "pass {i}: {report:?}");
        print(what, &w.counter.snapshot(), None);
        w.ecs().settle().await;
    }
    w.counter.reset();
    reaper.reap(false, &Silent).await.expect("delete pass");
    print(
        "reaper pass 3: delete N-1 versions (rules, target groups, services, parameters, task definitions)",
        &w.counter.snapshot(),
        None,
    );
    let left = w.inventory().await.ids();
    assert_eq!(left.len(), 1, "only the newest version remains: {left:?}");
}

fn main() {
    let sizes: Vec<u64> = std::env::var("FLOTILLA_BENCH_N")
        .unwrap_or_else(|_| "5,20".to_owned())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .filter(|n| *n >= 2 && *n <= 50)
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!("AWS API calls (counted per operation by an SDK interceptor, against moto)");
    for n in sizes {
        rt.block_on(measure(n));
    }
}
