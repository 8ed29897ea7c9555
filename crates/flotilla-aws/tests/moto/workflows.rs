//! The engine's workflows on the AWS provider: deploy, a second deploy, reaper passes, rollback,
//! teardown, a deploy that never gets healthy, two deploys at once, and the reaper Lambda handler.

use std::collections::BTreeSet;
use std::time::Duration;

use flotilla_aws::lambda::{ReaperConfig, handle};
use flotilla_core::names;
use flotilla_core::reaper::ReapAction;
use flotilla_engine::EngineError;
use flotilla_engine::events::Silent;
use flotilla_engine::workflows::TeardownTarget;

use crate::support::{Inventory, World, eager_policy, next_id};

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_creates_resources_with_the_right_names_tags_conditions_and_priorities() {
    if flotilla_testkit::slow::skip("moto") {
        return;
    }
    let w = World::new("shop").await;
    let engine = w.engine("alice");
    let id = next_id();
    let outcome = w.deploy(&engine, &id).await.expect("deploy");
    assert_eq!(outcome.deployment_id, id);
    assert!(outcome.draining.is_empty());

    let inv = w.inventory().await;
    let tg = names::target_group_name(&w.name, &id);
    let svc = names::service_name(&w.name, &id);
    assert_eq!(inv.target_groups, set(&[&tg]));
    assert_eq!(inv.default, format!("forward {tg}*100"));
    let header = format!("header X-Flotilla-Deployment={id}");
    let query = format!("query flotilla_deployment={id}");
    assert_eq!(
        inv.rules.keys().cloned().collect::<BTreeSet<_>>(),
        set(&[&header, &query])
    );
    let priorities: BTreeSet<u32> = inv.rules.values().map(|(p, _)| *p).collect();
    assert_eq!(priorities, [1000, 1001].into_iter().collect(), "{inv:?}");
    for (_, action) in inv.rules.values() {
        assert_eq!(action, &format!("forward {tg}*1"));
    }
    let tags = &inv.services[&svc];
    assert_eq!(
        tags.get("deployment_name").map(String::as_str),
        Some("shop")
    );
    assert_eq!(tags.get("deployment_id"), Some(&id.to_string()));
    assert_eq!(tags.get("state").map(String::as_str), Some("active"));
    assert_eq!(
        inv.parameters
            .get(&names::state_parameter(&w.name, &id))
            .map(String::as_str),
        Some("active")
    );
    assert_eq!(inv.task_definitions, 1);

    // The details an operator would check in the console.
    let c = &w.clients;
    let tgd = c
        .elb
        .describe_target_groups()
        .names(&tg)
        .send()
        .await
        .expect("tg");
    let tgd = &tgd.target_groups()[0];
    assert_eq!(tgd.health_check_path(), Some("/healthz"));
    assert_eq!(tgd.port(), Some(8000));
    assert_eq!(
        tgd.target_type(),
        Some(&aws_sdk_elasticloadbalancingv2::types::TargetTypeEnum::Ip)
    );
    let attrs = c
        .elb
        .describe_target_group_attributes()
        .target_group_arn(tgd.target_group_arn().expect("arn"))
        .send()
        .await
        .expect("attrs");
    let attr = |k: &str| {
        attrs
            .attributes()
            .iter()
            .find(|a| a.key() == Some(k))
            .and_then(|a| a.value())
            .map(str::to_owned)
    };
    assert_eq!(attr("stickiness.type").as_deref(), Some("lb_cookie"));
    assert_eq!(attr("stickiness.enabled").as_deref(), Some("true"));
    assert_eq!(
        attr("deregistration_delay.timeout_seconds").as_deref(),
        Some("15")
    );
    let s = c
        .ecs
        .describe_services()
        .cluster(&w.cluster)
        .services(&svc)
        .send()
        .await
        .expect("service");
    let s = &s.services()[0];
    assert_eq!(
        s.load_balancers()[0].target_group_arn(),
        tgd.target_group_arn()
    );
    assert_eq!(s.load_balancers()[0].container_port(), Some(8000));
    let net = s
        .network_configuration()
        .and_then(|n| n.awsvpc_configuration())
        .expect("awsvpc");
    assert_eq!(
        Some(net.subnets().to_vec()),
        w.settings.baseline_overrides.subnets
    );
    let td = c
        .ecs
        .describe_task_definition()
        .task_definition(s.task_definition().expect("td"))
        .send()
        .await
        .expect("task definition");
    let td = td.task_definition().expect("td");
    assert_eq!(td.family(), Some("flotilla-shop"));
    assert_eq!(
        td.network_mode(),
        Some(&aws_sdk_ecs::types::NetworkMode::Awsvpc)
    );
    let container = td
        .container_definitions()
        .iter()
        .find(|c| c.name() == Some(flotilla_aws::compute::CONTAINER_NAME))
        .expect("the app container");
    assert_eq!(
        container.entry_point().join(" ") + " " + &container.command().join(" "),
        "/flotilla/agent --listen 0.0.0.0:8000 --app-port 3000 -- /app/server"
    );
    let env: std::collections::BTreeMap<_, _> = container
        .environment()
        .iter()
        .map(|kv| (kv.name().unwrap_or(""), kv.value().unwrap_or("")))
        .collect();
    assert_eq!(env["FLOTILLA_DEPLOYMENT_NAME"], "shop");
    assert_eq!(env["FLOTILLA_DEPLOYMENT_ID"], id.as_str());
    assert_eq!(env["FLOTILLA_DRAIN_POLL_SECONDS"], "5");
    assert_eq!(env["FLOTILLA_DRAIN_GRACE_SECONDS"], "30");
    // The agent inside the task takes its remaining settings from the environment.
    assert_eq!(env["FLOTILLA_APP_AFFINITY_HEADER"], "X-Flotilla-Deployment");
    assert_eq!(env["FLOTILLA_APP_AFFINITY_QUERY"], "flotilla_deployment");
    assert!(env["FLOTILLA_APP_HEALTH_PATH"].starts_with('/'));
    assert_eq!(env["FLOTILLA_APP_INJECT_CLIENT"], "false");
    // No autoscaling, so no scale-in to protect tasks from.
    assert_eq!(env["FLOTILLA_SCALE_IN_PROTECTION"], "false");
    assert!(env.contains_key("FLOTILLA_APP_STOP_TIMEOUT_SECONDS"));
    // The agent's keep-alive outlasts the load balancer's idle timeout (120 s by default).
    assert_eq!(env["FLOTILLA_AGENT_KEEPALIVE_SECONDS"], "130");
    assert!(container.stop_timeout().is_some_and(|t| t <= 120));
    let logs = container.log_configuration().expect("logs");
    assert_eq!(
        logs.options().expect("options")["awslogs-group"],
        "/flotilla/shop"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_deploy_drains_the_first_and_the_reaper_removes_it_completely() {
    if flotilla_testkit::slow::skip("moto") {
        return;
    }
    let w = World::new("shop").await;
    let engine = w.engine("alice");
    let v1 = next_id();
    w.deploy(&engine, &v1).await.expect("deploy v1");
    let v2 = next_id();
    let out = w.deploy(&engine, &v2).await.expect("deploy v2");
    assert_eq!(out.draining, vec![v1.clone()]);

    let inv = w.inventory().await;
    let svc1 = names::service_name(&w.name, &v1);
    assert_eq!(
        inv.services[&svc1].get("state").map(String::as_str),
        Some("draining")
    );
    assert_eq!(
        inv.parameters[&names::state_parameter(&w.name, &v1)],
        "draining"
    );
    let tg2 = names::target_group_name(&w.name, &v2);
    assert_eq!(inv.default, format!("forward {tg2}*100"));
    assert_eq!(inv.rules.len(), 4, "both versions keep their affinity");
    let priorities: BTreeSet<u32> = inv.rules.values().map(|(p, _)| *p).collect();
    assert_eq!(priorities.len(), 4, "no priority is shared: {inv:?}");

    // Sessions remain: the reaper leaves v1 alone.
    w.ecs().settle().await;
    let reaper =
        flotilla_engine::Engine::new(w.ports(), w.engine_settings("reaper", eager_policy(2)));
    let report = reaper.reap(false, &Silent).await.expect("pass");
    assert!(report.actions.iter().all(|a| !a.is_visible()), "{report:?}");
    assert_eq!(w.inventory().await.services.len(), 2);

    // Every task of v1 reports it may stop: two passes in a row retire it (410 + scale 0).
    assert_eq!(w.report_readiness(&v1, "draining").await, 2);
    let report = reaper.reap(false, &Silent).await.expect("pass 1");
    assert!(
        matches!(
            report.actions.as_slice(),
            [ReapAction::RecordReadyPasses { passes: 1, .. }]
        ),
        "{report:?}"
    );
    let report = reaper.reap(false, &Silent).await.expect("pass 2");
    assert!(
        matches!(report.actions.as_slice(), [ReapAction::Retire { .. }]),
        "{report:?}"
    );
    let inv = w.inventory().await;
    for (cond, (_, action)) in &inv.rules {
        if cond.ends_with(v1.as_str()) {
            assert_eq!(action, "fixed 410", "{cond}");
        }
    }
    let retired = w.fixed_response("410").await.expect("a 410 rule");
    assert_eq!(retired.content_type(), Some("application/json"));
    assert!(
        retired
            .message_body()
            .unwrap_or("")
            .contains("version_retired")
    );

    // The next pass, with nothing running, deletes everything of v1.
    w.ecs().settle().await;
    let report = reaper.reap(false, &Silent).await.expect("pass 3");
    assert!(
        matches!(
            report.actions.as_slice(),
            [ReapAction::DeleteResources { .. }]
        ),
        "{report:?}"
    );
    let inv = w.inventory().await;
    assert_eq!(inv.ids(), set(&[v2.as_str()]), "{inv:#?}");
    assert_eq!(inv.task_definitions, 1);
    assert_eq!(inv.rules.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_and_teardown_leave_exactly_what_they_should() {
    if flotilla_testkit::slow::skip("moto") {
        return;
    }
    let w = World::new("shop").await;
    let engine = w.engine("alice");
    let v1 = next_id();
    w.deploy(&engine, &v1).await.expect("deploy v1");
    let v2 = next_id();
    w.deploy(&engine, &v2).await.expect("deploy v2");
    w.ecs().settle().await;

    let back = engine.rollback(None, &Silent).await.expect("rollback");
    assert_eq!(back.active, v1);
    assert_eq!(back.draining, Some(v2.clone()));
    let inv = w.inventory().await;
    let tg1 = names::target_group_name(&w.name, &v1);
    assert_eq!(inv.default, format!("forward {tg1}*100"));
    assert_eq!(
        inv.parameters[&names::state_parameter(&w.name, &v2)],
        "draining"
    );
    assert_eq!(
        inv.parameters[&names::state_parameter(&w.name, &v1)],
        "active"
    );

    let removed = engine
        .teardown(TeardownTarget::One(v2.clone()), false, &Silent)
        .await
        .expect("teardown v2");
    assert_eq!(removed.removed, vec![v2.clone()]);
    let inv = w.inventory().await;
    assert_eq!(inv.ids(), set(&[v1.as_str()]), "{inv:#?}");
    assert_eq!(inv.rules.len(), 2);
    assert_eq!(inv.task_definitions, 1);

    engine
        .teardown(TeardownTarget::All, false, &Silent)
        .await
        .expect("teardown all");
    let inv = w.inventory().await;
    assert_eq!(
        inv,
        Inventory {
            default: "fixed 503".to_owned(),
            ..Default::default()
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_that_never_gets_healthy_removes_what_it_made_and_leaves_traffic() {
    if flotilla_testkit::slow::skip("moto") {
        return;
    }
    let w = World::new("shop").await;
    let engine = w.engine("alice");
    let v1 = next_id();
    w.deploy(&engine, &v1).await.expect("deploy v1");
    let before = w.inventory().await;

    let mut settings = w.engine_settings("alice", eager_policy(2));
    settings.health_timeout = Duration::from_secs(2);
    let impatient = flotilla_engine::Engine::new(w.ports(), settings);
    let v2 = next_id();
    // No ECS stand-in: no task ever runs, no target ever registers.
    let err = impatient
        .deploy(World::request(&v2), &Silent)
        .await
        .expect_err("never healthy");
    match &err {
        EngineError::NotHealthy { id, healthy, .. } => {
            assert_eq!(id, &v2);
            assert_eq!(*healthy, 0);
        }
        other => panic!("expected NotHealthy, got {other}"),
    }
    let after = w.inventory().await;
    assert_eq!(after.default, before.default, "traffic stays where it was");
    assert_eq!(after.ids(), set(&[v1.as_str()]), "{after:#?}");
    assert_eq!(after.task_definitions, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_deploys_started_together_exactly_one_proceeds() {
    if flotilla_testkit::slow::skip("moto") {
        return;
    }
    let w = World::new("shop").await;
    let (a, b) = (w.engine("alice@ci-1"), w.engine("bob@ci-2"));
    let (ida, idb) = (next_id(), next_id());
    let (ra, rb) = tokio::join!(w.deploy(&a, &ida), w.deploy(&b, &idb));
    let (ok, held) = match (&ra, &rb) {
        (Ok(o), Err(e)) => (o, e),
        (Err(e), Ok(o)) => (o, e),
        other => panic!("exactly one must proceed: {other:?}"),
    };
    match held {
        EngineError::LockHeld { lock, .. } => {
            assert!(lock.owner == "alice@ci-1" || lock.owner == "bob@ci-2");
            assert_ne!(Some(&ok.deployment_id), None);
        }
        other => panic!("the other must be told who holds the lock: {other}"),
    }
    assert!(held.to_string().contains("--break-lock"), "{held}");
    let inv = w.inventory().await;
    assert_eq!(inv.ids(), set(&[ok.deployment_id.as_str()]), "{inv:#?}");
    assert!(
        w.clients
            .ssm
            .get_parameter()
            .name(names::lock_parameter(&w.name))
            .send()
            .await
            .is_err(),
        "the winner released the lock"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reaper_lambda_handler_runs_one_pass() {
    if flotilla_testkit::slow::skip("moto") {
        return;
    }
    let w = World::new("shop").await;
    let engine = w.engine("alice");
    let v1 = next_id();
    w.deploy(&engine, &v1).await.expect("deploy v1");
    let v2 = next_id();
    w.deploy(&engine, &v2).await.expect("deploy v2");
    w.ecs().settle().await;
    w.report_readiness(&v1, "draining").await;

    let b = &w.settings.baseline_overrides;
    let env = [
        ("FLOTILLA_DEPLOYMENT_NAME", "shop".to_owned()),
        ("FLOTILLA_CLUSTER", b.cluster.clone().expect("cluster")),
        (
            "FLOTILLA_LISTENER_ARN",
            b.listener_arn.clone().expect("listener"),
        ),
        ("FLOTILLA_REAPER_INTERVAL_SECONDS", "60".to_owned()),
        ("FLOTILLA_REAPER_MIN_AGE_SECONDS", "0".to_owned()),
        ("FLOTILLA_REAPER_MAX_AGE_SECONDS", "172800".to_owned()),
        ("FLOTILLA_REAPER_CONSECUTIVE_PASSES", "1".to_owned()),
        (
            "FLOTILLA_REAPER_DEPLOYING_TIMEOUT_SECONDS",
            "1800".to_owned(),
        ),
    ];
    let config =
        ReaperConfig::from_vars(|k| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone()))
            .expect("config");
    let dry = handle(
        &w.clients,
        &config,
        "req-1",
        &serde_json::json!({"dry_run": true}),
    )
    .await
    .expect("dry run");
    assert_eq!(dry["actions"][0]["action"], "retire", "{dry}");
    assert_eq!(
        w.inventory().await.services.len(),
        2,
        "a dry run changes nothing"
    );
    let report = handle(&w.clients, &config, "req-2", &serde_json::json!({}))
        .await
        .expect("pass");
    assert_eq!(report["actions"][0]["action"], "retire", "{report}");
    assert_eq!(report["actions"][0]["id"], v1.as_str(), "{report}");
    let inv = w.inventory().await;
    let svc1 = names::service_name(&w.name, &v1);
    assert!(
        inv.rules
            .iter()
            .any(|(c, (_, a))| c.ends_with(v1.as_str()) && a == "fixed 410")
    );
    assert!(
        inv.services.contains_key(&svc1),
        "deleted only on the next pass"
    );
}

const PULL_ERROR: &str = "CannotPullContainerError: pull image manifest has been retried 5 time(s): \
                          failed to resolve ref registry.example/app:v2: not found";

/// Starts a task in `service`'s group and stops it as ECS does when its image cannot be pulled,
/// once the service exists (within 20 s). Returns whether it did.
async fn fail_a_task_of(w: &World, service: String) -> tokio::task::JoinHandle<bool> {
    let ecs = w.clients.ecs.clone();
    let cluster = w.cluster.clone();
    tokio::spawn(async move {
        for _ in 0..200 {
            let described = ecs
                .describe_services()
                .cluster(&cluster)
                .services(&service)
                .send()
                .await
                .expect("describe services");
            if described
                .services()
                .iter()
                .any(|s| s.status() == Some("ACTIVE"))
            {
                let td = ecs
                    .register_task_definition()
                    .family("failing")
                    .container_definitions(
                        aws_sdk_ecs::types::ContainerDefinition::builder()
                            .name("app")
                            .image("registry.example/app:v2")
                            .memory(512)
                            .cpu(256)
                            .build(),
                    )
                    .send()
                    .await
                    .expect("task definition");
                let arn = td
                    .task_definition()
                    .and_then(|t| t.task_definition_arn())
                    .expect("arn")
                    .to_owned();
                let run = ecs
                    .run_task()
                    .cluster(&cluster)
                    .task_definition(arn)
                    .group(format!("service:{service}"))
                    .launch_type(aws_sdk_ecs::types::LaunchType::Fargate)
                    .send()
                    .await
                    .expect("run task");
                let task = run.tasks()[0].task_arn().expect("task arn").to_owned();
                ecs.stop_task()
                    .cluster(&cluster)
                    .task(task)
                    .reason(PULL_ERROR)
                    .send()
                    .await
                    .expect("stop task");
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn why_tasks_stopped_shows_in_a_failed_deploy_in_logs_and_in_status() {
    if flotilla_testkit::slow::skip("moto") {
        return;
    }
    let w = World::new("shop").await;
    let v1 = next_id();
    let failer = fail_a_task_of(&w, names::service_name(&w.name, &v1)).await;
    let mut settings = w.engine_settings("alice", eager_policy(2));
    settings.health_timeout = Duration::from_secs(4);
    let impatient = flotilla_engine::Engine::new(w.ports(), settings);
    let err = impatient
        .deploy(World::request(&v1), &Silent)
        .await
        .expect_err("never healthy");
    assert!(failer.await.expect("joined"), "the service never appeared");
    let EngineError::NotHealthy { logs, .. } = &err else {
        panic!("expected NotHealthy, got {err}");
    };
    assert!(
        logs.first()
            .is_some_and(|l| l.starts_with("[stopped] task ") && l.contains(PULL_ERROR)),
        "the reason comes first: {logs:#?}"
    );
    // `flotilla logs` of the removed version still says why (ECS keeps stopped tasks a while).
    let logs = w.ports().compute.recent_logs(&v1, 20).await.expect("logs");
    assert!(logs.iter().any(|l| l.contains(PULL_ERROR)), "{logs:#?}");

    // A version short of healthy targets shows its stopped tasks in status.
    let v2 = next_id();
    let failer = fail_a_task_of(&w, names::service_name(&w.name, &v2)).await;
    let engine = w.engine("bob");
    let deploying = tokio::spawn({
        let engine = flotilla_engine::Engine::new(w.ports(), {
            let mut s = w.engine_settings("bob", eager_policy(2));
            s.health_timeout = Duration::from_secs(6);
            s
        });
        async move { engine.deploy(World::request(&v2), &Silent).await }
    });
    assert!(failer.await.expect("joined"), "the service never appeared");
    let v2 = {
        // The deploy is waiting for health now: status shows why its task stopped.
        let status = engine.status().await.expect("status");
        let v = status
            .versions
            .iter()
            .find(|v| v.compute.is_some())
            .expect("the deploying version has compute");
        let stopped = &v.compute.as_ref().expect("compute").stopped;
        assert!(
            stopped
                .iter()
                .any(|l| l.contains(PULL_ERROR) && l.contains("stopped")),
            "{stopped:#?}"
        );
        v.record.version.id.clone()
    };
    let err = deploying.await.expect("joined").expect_err("never healthy");
    assert!(
        matches!(&err, EngineError::NotHealthy { id, .. } if *id == v2),
        "{err}"
    );
}

/// Keeps every `CreateService` request the ECS client sends (moto does not echo the health-check
/// grace period or ECS exec back, so the request is where they show).
#[derive(Clone, Debug, Default)]
struct CreateServiceSpy(
    std::sync::Arc<
        std::sync::Mutex<Vec<aws_sdk_ecs::operation::create_service::CreateServiceInput>>,
    >,
);

impl aws_sdk_ecs::config::Intercept for CreateServiceSpy {
    fn name(&self) -> &'static str {
        "create-service-spy"
    }

    fn read_before_serialization(
        &self,
        context: &aws_sdk_ecs::config::interceptors::BeforeSerializationInterceptorContextRef<'_>,
        _: &aws_sdk_ecs::config::RuntimeComponents,
        _: &mut aws_sdk_ecs::config::ConfigBag,
    ) -> Result<(), aws_sdk_ecs::error::BoxError> {
        if let Some(input) = context
            .input()
            .downcast_ref::<aws_sdk_ecs::operation::create_service::CreateServiceInput>(
        ) {
            self.0.lock().expect("not poisoned").push(input.clone());
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_wait_out_a_slow_first_start_and_have_no_ecs_exec() {
    if flotilla_testkit::slow::skip("moto") {
        return;
    }
    let mut w = World::new("shop").await;
    let spy = CreateServiceSpy::default();
    let ecs = aws_sdk_ecs::Client::from_conf(
        w.clients
            .ecs
            .config()
            .to_builder()
            .interceptor(spy.clone())
            .build(),
    );
    let clients = flotilla_aws::Clients {
        ecs,
        ..w.clients.clone()
    };
    let deploy = |w: &World, clients: &flotilla_aws::Clients| {
        let ports =
            flotilla_aws::connect_with(&w.settings, clients.clone(), flotilla_aws::Needs::Deploy)
                .expect("ports");
        flotilla_engine::Engine::new(ports, w.engine_settings("alice", eager_policy(2)))
    };
    // By default ECS leaves a new task's failing health checks alone for 300 s, as long as an
    // AWS deploy waits for health (an image pull through NAT comes first).
    w.deploy(&deploy(&w, &clients), &next_id())
        .await
        .expect("deploy");
    // Set from the config ([aws] health_check_grace_seconds or app.health_timeout_seconds).
    w.settings.task.health_check_grace_seconds = 600;
    w.deploy(&deploy(&w, &clients), &next_id())
        .await
        .expect("deploy");
    let sent = spy.0.lock().expect("not poisoned").clone();
    let graces: Vec<Option<i32>> = sent
        .iter()
        .map(|i| i.health_check_grace_period_seconds())
        .collect();
    assert_eq!(graces, [Some(300), Some(600)]);
    for input in &sent {
        assert_eq!(
            input.enable_execute_command(),
            Some(false),
            "ECS exec is off"
        );
    }
}

/// `[aws] max_count` (issue 14, item 2): each version's service gets its own scalable target
/// and target-tracking policies; a draining version's scale-out is suspended (and resumed by a
/// rollback); the reaper and a teardown remove targets and policies with the version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_version_scales_on_its_own_and_a_draining_one_never_scales_out() {
    if flotilla_testkit::slow::skip("moto") {
        return;
    }
    let mut w = World::new("shop").await;
    w.settings.task.autoscaling = Some(flotilla_aws::Autoscaling {
        min: 2,
        max: 6,
        cpu_percent: Some(70),
        memory_percent: Some(80),
        requests_per_target: Some(500),
    });
    let engine = w.engine("alice");
    let resource = |id: &flotilla_core::DeploymentId| {
        format!("service/{}/{}", w.cluster, names::service_name(&w.name, id))
    };
    let policies_of = |id: &flotilla_core::DeploymentId| {
        let service = names::service_name(&w.name, id);
        set(&[
            &format!("{service}-cpu"),
            &format!("{service}-memory"),
            &format!("{service}-requests"),
        ])
    };

    let v1 = next_id();
    w.deploy(&engine, &v1).await.expect("deploy v1");
    let inv = w.inventory().await;
    assert_eq!(
        inv.scalable_targets[&resource(&v1)],
        (2, 6, false),
        "{inv:#?}"
    );
    assert_eq!(inv.scaling_policies, policies_of(&v1));
    // Its agents hold task scale-in protection while their sessions live.
    let service = w
        .clients
        .ecs
        .describe_services()
        .cluster(&w.cluster)
        .services(names::service_name(&w.name, &v1))
        .send()
        .await
        .expect("describe service");
    let td = w
        .clients
        .ecs
        .describe_task_definition()
        .task_definition(service.services()[0].task_definition().expect("td"))
        .send()
        .await
        .expect("task definition");
    let protected = td
        .task_definition()
        .expect("td")
        .container_definitions()
        .iter()
        .find(|c| c.name() == Some(flotilla_aws::compute::CONTAINER_NAME))
        .expect("the app container")
        .environment()
        .iter()
        .any(|kv| kv.name() == Some("FLOTILLA_SCALE_IN_PROTECTION") && kv.value() == Some("true"));
    assert!(protected, "{td:#?}");

    // A second deploy: v1 drains and may no longer scale out; v2 scales freely.
    let v2 = next_id();
    w.deploy(&engine, &v2).await.expect("deploy v2");
    let inv = w.inventory().await;
    assert_eq!(
        inv.scalable_targets[&resource(&v1)],
        (2, 6, true),
        "{inv:#?}"
    );
    assert_eq!(
        inv.scalable_targets[&resource(&v2)],
        (2, 6, false),
        "{inv:#?}"
    );
    let both: BTreeSet<String> = policies_of(&v1).union(&policies_of(&v2)).cloned().collect();
    assert_eq!(inv.scaling_policies, both);

    // A rollback makes v1 active again: its scale-out resumes, v2's is suspended.
    w.ecs().settle().await;
    let back = engine.rollback(None, &Silent).await.expect("rollback");
    assert_eq!(back.active, v1);
    let inv = w.inventory().await;
    assert!(
        !inv.scalable_targets[&resource(&v1)].2,
        "v1 scales out again: {inv:#?}"
    );
    assert!(
        inv.scalable_targets[&resource(&v2)].2,
        "v2 drains: {inv:#?}"
    );

    // The reaper retires v2 (scaled to zero: its target goes first, or autoscaling would bring
    // it back to two tasks) and then deletes the rest of it.
    let reaper =
        flotilla_engine::Engine::new(w.ports(), w.engine_settings("reaper", eager_policy(1)));
    assert_eq!(w.report_readiness(&v2, "draining").await, 2);
    let report = reaper.reap(false, &Silent).await.expect("retire pass");
    assert!(
        report
            .actions
            .iter()
            .any(|a| matches!(a, ReapAction::Retire { .. })),
        "{report:?}"
    );
    let inv = w.inventory().await;
    assert!(
        !inv.scalable_targets.contains_key(&resource(&v2)),
        "{inv:#?}"
    );
    assert_eq!(inv.scaling_policies, policies_of(&v1), "{inv:#?}");
    w.ecs().settle().await;
    reaper.reap(false, &Silent).await.expect("delete pass");
    assert_eq!(w.inventory().await.ids(), set(&[v1.as_str()]));

    // A teardown leaves no target and no policy behind.
    engine
        .teardown(TeardownTarget::All, false, &Silent)
        .await
        .expect("teardown all");
    let inv = w.inventory().await;
    assert!(inv.scalable_targets.is_empty(), "{inv:#?}");
    assert!(inv.scaling_policies.is_empty(), "{inv:#?}");
}

#[tokio::test]
async fn spot_capacity_reaches_each_versions_service_as_its_capacity_provider_strategy() {
    if flotilla_testkit::slow::skip("moto") {
        return;
    }
    let mut w = World::new("shop").await;
    let engine = w.engine("alice");
    // Regular Fargate: the launch type, no strategy.
    w.moto.start_recording();
    let v1 = next_id();
    w.deploy(&engine, &v1).await.expect("deploy v1");
    // 75 % on Spot beyond one regular task.
    w.settings.task.capacity = flotilla_aws::Capacity {
        spot_percent: 75,
        on_demand_base: 1,
    };
    let engine = w.engine("alice");
    let v2 = next_id();
    w.deploy(&engine, &v2).await.expect("deploy v2");

    // moto keeps no strategy on the service it describes, so read what the SDK sent.
    let sent = w
        .moto
        .recorded_json("AmazonEC2ContainerServiceV20141113.CreateService");
    let of = |id: &flotilla_core::DeploymentId| {
        let service = names::service_name(&w.name, id);
        sent.iter()
            .find(|body| body["serviceName"] == service.as_str())
            .unwrap_or_else(|| panic!("no CreateService for {service} in {sent:#?}"))
            .clone()
    };
    let first = of(&v1);
    assert_eq!(first["launchType"], "FARGATE", "{first:#}");
    assert!(first.get("capacityProviderStrategy").is_none(), "{first:#}");
    let second = of(&v2);
    assert!(second.get("launchType").is_none(), "{second:#}");
    assert_eq!(
        second["capacityProviderStrategy"],
        serde_json::json!([
            { "capacityProvider": "FARGATE", "base": 1, "weight": 1 },
            { "capacityProvider": "FARGATE_SPOT", "weight": 3 },
        ]),
        "{second:#}"
    );
}
