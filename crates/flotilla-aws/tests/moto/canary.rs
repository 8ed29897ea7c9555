//! Canary deploys on the AWS provider: the split as the listener's weighted forward (read back
//! with DescribeListeners at every step), the judgement fed by the target groups' CloudWatch
//! metrics, ticks run by the reaper Lambda's handler, and promote and rollback by hand.
//!
//! moto runs no ALB traffic, so each test publishes the target groups' metrics itself
//! (PutMetricData into `AWS/ApplicationELB` with the `LoadBalancer` and `TargetGroup`
//! dimensions). moto 5.2 computes no percentile: a `p99` query answers 500. These tests judge the
//! latency by `Maximum` instead (`RoutingSettings::latency_statistic`); the query the provider
//! makes in production differs only in that statistic's name.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use aws_sdk_cloudwatch::types::{Dimension, MetricDatum, StandardUnit};
use flotilla_aws::lambda::{ReaperConfig, handle};
use flotilla_aws::metrics;
use flotilla_core::canary::{CanaryPlan, Outcome, Thresholds};
use flotilla_core::{DeploymentId, VersionState, names};
use flotilla_engine::Engine;
use flotilla_engine::events::Silent;
use flotilla_engine::workflows::CanaryTick;

use crate::support::{World, next_id};

async fn world(name: &str) -> World {
    let mut w = World::new(name).await;
    w.settings.routing.latency_statistic = "Maximum".to_owned();
    w
}

fn plan(steps: &[u8]) -> CanaryPlan {
    CanaryPlan {
        steps: steps.to_vec(),
        pause: Duration::from_secs(1),
        thresholds: Thresholds {
            min_requests: 20,
            ..Thresholds::default()
        },
        max_extensions: 1,
    }
}

/// The current version `v1`, then `v2` deployed as a canary of it under `plan`.
async fn canary_of(w: &World, engine: &Engine, plan: CanaryPlan) -> (DeploymentId, DeploymentId) {
    let v1 = next_id();
    w.deploy(engine, &v1).await.expect("deploy v1");
    let v2 = next_id();
    w.ecs()
        .while_settling(engine.deploy_canary(World::request(&v2), plan, &Silent))
        .await
        .expect("deploy v2 as a canary");
    (v1, v2)
}

/// The listener's default forward as ELB has it: each version's weight.
async fn forward(w: &World) -> BTreeMap<DeploymentId, i32> {
    let out = w
        .clients
        .elb
        .describe_listeners()
        .listener_arns(&w.listener_arn)
        .send()
        .await
        .expect("describe listener");
    let action = &out.listeners()[0].default_actions()[0];
    let mut weights = BTreeMap::new();
    let groups = action
        .forward_config()
        .map(|f| f.target_groups().to_vec())
        .unwrap_or_default();
    for t in groups {
        let arn = t.target_group_arn().expect("arn");
        let name = arn
            .split(":targetgroup/")
            .nth(1)
            .and_then(|r| r.split('/').next())
            .expect("name");
        let id = DeploymentId::new(&name[name.len() - flotilla_core::ids::ID_LEN..]).expect("id");
        weights.insert(id, t.weight().unwrap_or(1));
    }
    weights
}

fn weights(pairs: &[(&DeploymentId, i32)]) -> BTreeMap<DeploymentId, i32> {
    pairs.iter().map(|(id, w)| ((*id).clone(), *w)).collect()
}

/// Publishes what the ALB would for `id`'s target group over the last seconds: `requests`, of
/// which `errors` 5xx from the target, answered in at most `slowest` seconds.
async fn traffic(w: &World, id: &DeploymentId, requests: f64, errors: f64, slowest: f64) {
    let tg = w
        .clients
        .elb
        .describe_target_groups()
        .names(names::target_group_name(&w.name, id))
        .send()
        .await
        .expect("describe target group");
    let tg_arn = tg.target_groups()[0].target_group_arn().expect("arn");
    let dims = [
        Dimension::builder()
            .name("LoadBalancer")
            .value(metrics::load_balancer_dimension(&w.listener_arn).expect("an ALB listener"))
            .build(),
        Dimension::builder()
            .name("TargetGroup")
            .value(metrics::target_group_dimension(tg_arn).expect("a target group"))
            .build(),
    ];
    let now = aws_smithy_types::DateTime::from(SystemTime::now());
    let datum = |metric: &str, value: f64, unit: StandardUnit| {
        MetricDatum::builder()
            .metric_name(metric)
            .set_dimensions(Some(dims.to_vec()))
            .value(value)
            .unit(unit)
            .timestamp(now)
            .build()
    };
    w.clients
        .cloudwatch
        .put_metric_data()
        .namespace(metrics::NAMESPACE)
        .metric_data(datum(metrics::REQUESTS, requests, StandardUnit::Count))
        .metric_data(datum(metrics::ERRORS, errors, StandardUnit::Count))
        .metric_data(datum(metrics::LATENCY, slowest, StandardUnit::Seconds))
        .send()
        .await
        .expect("put metric data");
}

async fn state_of(w: &World, id: &DeploymentId) -> VersionState {
    w.ports()
        .state
        .get(id)
        .await
        .expect("read record")
        .expect("recorded")
        .version
        .state
}

/// The reaper Lambda's configuration for `w`, with a minimum age no test version reaches (the
/// pass must leave the versions alone; these tests are about the canary tick before it).
fn reaper_config(w: &World) -> ReaperConfig {
    let b = &w.settings.baseline_overrides;
    let env = [
        ("FLOTILLA_DEPLOYMENT_NAME", w.name.to_string()),
        ("FLOTILLA_CLUSTER", b.cluster.clone().expect("cluster")),
        (
            "FLOTILLA_LISTENER_ARN",
            b.listener_arn.clone().expect("listener"),
        ),
        ("FLOTILLA_REAPER_INTERVAL_SECONDS", "60".to_owned()),
        ("FLOTILLA_REAPER_MIN_AGE_SECONDS", "3600".to_owned()),
        ("FLOTILLA_REAPER_MAX_AGE_SECONDS", "172800".to_owned()),
        ("FLOTILLA_REAPER_CONSECUTIVE_PASSES", "1".to_owned()),
        (
            "FLOTILLA_REAPER_DEPLOYING_TIMEOUT_SECONDS",
            "1800".to_owned(),
        ),
    ];
    let mut config =
        ReaperConfig::from_vars(|k| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone()))
            .expect("config");
    config.settings.routing.latency_statistic = w.settings.routing.latency_statistic.clone();
    config
}

/// One invocation of the reaper Lambda's handler; the canary tick it ran.
async fn reaper_tick(w: &World, config: &ReaperConfig, n: usize) -> serde_json::Value {
    let report = handle(
        &w.clients,
        config,
        &format!("req-{n}"),
        &serde_json::json!({}),
    )
    .await
    .expect("reaper invocation");
    report["canary"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_answering_5xx_is_rolled_back_by_the_reaper() {
    if flotilla_testkit::slow::skip("moto") {
        return;
    }
    let w = world("shop").await;
    let engine = w.engine("alice");
    let (v1, v2) = canary_of(&w, &engine, plan(&[10, 50])).await;
    assert_eq!(forward(&w).await, weights(&[(&v1, 90), (&v2, 10)]));
    assert_eq!(state_of(&w, &v1).await, VersionState::Active);

    let config = reaper_config(&w);
    let tick = reaper_tick(&w, &config, 1).await;
    assert_eq!(tick["tick"], "started", "{tick}");
    traffic(&w, &v1, 900.0, 1.0, 0.05).await;
    traffic(&w, &v2, 100.0, 30.0, 0.05).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let tick = reaper_tick(&w, &config, 2).await;
    assert_eq!(tick["tick"], "ended", "{tick}");
    assert_eq!(tick["outcome"]["outcome"], "rolled_back", "{tick}");
    assert_eq!(tick["outcome"]["by_hand"], false, "{tick}");
    assert_eq!(
        tick["outcome"]["failures"][0]["kind"], "error_ratio",
        "{tick}"
    );

    // Fresh sessions back to v1 alone; v2 drains; the record has the figures status shows.
    assert_eq!(forward(&w).await, weights(&[(&v1, 100)]));
    assert_eq!(state_of(&w, &v2).await, VersionState::Draining);
    assert_eq!(state_of(&w, &v1).await, VersionState::Active);
    let record = w.ports().state.get(&v2).await.expect("read").expect("v2");
    let canary = record.canary.expect("a canary record");
    let last = canary.last.expect("a judged window");
    assert_eq!((last.canary.requests, last.canary.errors), (100, 30));
    assert_eq!((last.baseline.requests, last.baseline.errors), (900, 1));
    assert_eq!(last.canary.p99, Some(Duration::from_millis(50)));
    assert!(canary.settled);

    // The next invocation finds nothing to drive.
    assert_eq!(reaper_tick(&w, &config, 3).await["tick"], "idle");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_canary_steps_then_is_promoted() {
    if flotilla_testkit::slow::skip("moto") {
        return;
    }
    let w = world("shop").await;
    let engine = w.engine("alice");
    let (v1, v2) = canary_of(&w, &engine, plan(&[5, 25])).await;
    assert_eq!(forward(&w).await, weights(&[(&v1, 95), (&v2, 5)]));

    let config = reaper_config(&w);
    assert_eq!(reaper_tick(&w, &config, 1).await["tick"], "started");
    // Within the pause: nothing is judged yet.
    let tick = reaper_tick(&w, &config, 2).await;
    assert_eq!(tick["tick"], "waiting", "{tick}");
    traffic(&w, &v1, 950.0, 2.0, 0.08).await;
    traffic(&w, &v2, 50.0, 0.0, 0.09).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let tick = reaper_tick(&w, &config, 3).await;
    assert_eq!(tick["tick"], "stepped", "{tick}");
    assert_eq!(tick["percent"], 25, "{tick}");
    assert_eq!(forward(&w).await, weights(&[(&v1, 75), (&v2, 25)]));

    traffic(&w, &v1, 750.0, 1.0, 0.08).await;
    traffic(&w, &v2, 250.0, 1.0, 0.1).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let tick = reaper_tick(&w, &config, 4).await;
    assert_eq!(tick["tick"], "ended", "{tick}");
    assert_eq!(
        tick["outcome"],
        serde_json::json!({"outcome": "promoted", "by_hand": false})
    );
    assert_eq!(forward(&w).await, weights(&[(&v2, 100)]));
    assert_eq!(state_of(&w, &v1).await, VersionState::Draining);
    assert_eq!(state_of(&w, &v2).await, VersionState::Active);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promote_and_rollback_by_hand() {
    if flotilla_testkit::slow::skip("moto") {
        return;
    }
    let w = world("shop").await;
    let engine = w.engine("alice");
    let (v1, v2) = canary_of(&w, &engine, plan(&[20, 60])).await;
    assert_eq!(forward(&w).await, weights(&[(&v1, 80), (&v2, 20)]));
    let tick = engine.promote(&Silent).await.expect("promote");
    assert_eq!(
        tick,
        CanaryTick::Ended {
            id: v2.clone(),
            outcome: Outcome::Promoted { by_hand: true }
        }
    );
    assert_eq!(forward(&w).await, weights(&[(&v2, 100)]));
    assert_eq!(state_of(&w, &v1).await, VersionState::Draining);

    // A canary of v2, ended by `rollback`: fresh sessions back to v2, v3 drains.
    let v3 = next_id();
    w.ecs()
        .while_settling(engine.deploy_canary(World::request(&v3), plan(&[30]), &Silent))
        .await
        .expect("deploy v3 as a canary");
    assert_eq!(forward(&w).await, weights(&[(&v2, 70), (&v3, 30)]));
    let outcome = engine.rollback(None, &Silent).await.expect("rollback");
    assert_eq!(
        (outcome.active, outcome.draining),
        (v2.clone(), Some(v3.clone()))
    );
    assert_eq!(forward(&w).await, weights(&[(&v2, 100)]));
    assert_eq!(state_of(&w, &v3).await, VersionState::Draining);
    assert_eq!(state_of(&w, &v2).await, VersionState::Active);
    // Nothing is left to drive.
    assert_eq!(
        engine.canary_tick(&Silent).await.expect("tick"),
        CanaryTick::Idle
    );
}
