//! Shared set-up for the moto tests: a baseline made by hand in moto (VPC, subnets, security
//! group, ALB and listener, cluster, log group, repository), ports and engines over it, an ECS
//! stand-in that does what moto does not (run tasks, register their targets), an inventory of
//! everything flotilla could leave behind, and a fault-injecting wrapper around real ports.

pub mod faults;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aws_sdk_ecs::types::{ContainerDefinition, DesiredStatus, LaunchType};
use aws_sdk_elasticloadbalancingv2::types::{
    Action, ActionTypeEnum, FixedResponseActionConfig, ProtocolEnum, TargetDescription,
};
use flotilla_aws::{AwsSettings, BaselineOutputs, CallCounter, Clients, Needs};
use flotilla_core::reaper::ReapPolicy;
use flotilla_core::routing::RuleBudget;
use flotilla_core::{DeploymentId, DeploymentName, Timestamp};
use flotilla_engine::events::Silent;
use flotilla_engine::ports::ImageRequest;
use flotilla_engine::workflows::{DeployOutcome, DeployRequest};
use flotilla_engine::{Engine, EngineError, Ports, Settings};

pub use flotilla_testkit::moto::{Moto, xml_value};

pub const REGION: &str = "us-east-1";

/// The agent image the task definitions name.
pub const AGENT_IMAGE: &str = "123456789012.dkr.ecr.us-east-1.amazonaws.com/flotilla/agent:test";
pub const IMAGE: &str = "public.ecr.aws/docker/library/nginx:latest";

/// Ids made from the wall clock plus a per-process counter, so ids never repeat.
pub fn next_id() -> DeploymentId {
    static N: AtomicU64 = AtomicU64::new(1);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    DeploymentId::generate(
        Timestamp::from_secs(now),
        N.fetch_add(1, Ordering::Relaxed) * 7919,
    )
}

/// A reaper policy that acts at once (the wall clock cannot be advanced).
pub fn eager_policy(passes: u32) -> ReapPolicy {
    ReapPolicy {
        min_age: Duration::ZERO,
        max_age: Duration::from_secs(48 * 3600),
        consecutive_ready_passes: passes,
        deploying_timeout: Duration::from_secs(1800),
    }
}

/// One moto server with a hand-made baseline for deployment `name`.
pub struct World {
    pub moto: Moto,
    pub name: DeploymentName,
    pub clients: Clients,
    pub counter: CallCounter,
    pub counted: Clients,
    pub settings: AwsSettings,
    pub listener_arn: String,
    pub cluster: String,
    /// The bucket of the drain board.
    pub board_bucket: String,
    sim_task: String,
}

impl World {
    pub async fn new(name: &str) -> World {
        let moto = Moto::start();
        Self::on(moto, name).await
    }

    /// A world on an existing server (after a reset).
    pub async fn on(moto: Moto, name: &str) -> World {
        let name = DeploymentName::new(name).expect("valid name");
        let mut settings = AwsSettings::new(name.clone());
        settings.region = Some(REGION.to_owned());
        settings.endpoint_url = Some(moto.url());
        settings.max_attempts = 2;
        settings.read_baseline_file = false;
        settings.task.app_port = 3000;
        settings.task.app_command = vec!["/app/server".to_owned()];
        // A prebuilt agent image: these tests run no container (the Docker tests do).
        settings.task.agent_image = Some(AGENT_IMAGE.to_owned());
        settings.routing.health_interval_seconds = 5;
        settings.routing.health_timeout_seconds = 2;
        let config = flotilla_aws::sdk_config_with(&settings, |l| {
            l.credentials_provider(aws_sdk_ssm::config::Credentials::new(
                "testing", "testing", None, None, "moto",
            ))
        })
        .await;
        let clients = Clients::new(&config);
        let counter = CallCounter::new();
        let counted = Clients::counted(&config, &counter);

        // The network, by EC2 Query calls (no EC2 SDK crate to compile for three actions).
        let vpc = xml_value(
            &moto.ec2(&[("Action", "CreateVpc"), ("CidrBlock", "10.0.0.0/16")]),
            "vpcId",
        );
        let subnets: Vec<String> = ["a", "b"]
            .iter()
            .enumerate()
            .map(|(i, az)| {
                xml_value(
                    &moto.ec2(&[
                        ("Action", "CreateSubnet"),
                        ("VpcId", &vpc),
                        ("CidrBlock", &format!("10.0.{i}.0/24")),
                        ("AvailabilityZone", &format!("{REGION}{az}")),
                    ]),
                    "subnetId",
                )
            })
            .collect();
        let sg = xml_value(
            &moto.ec2(&[
                ("Action", "CreateSecurityGroup"),
                ("GroupName", &format!("{name}-svc")),
                ("GroupDescription", "tasks"),
                ("VpcId", &vpc),
            ]),
            "groupId",
        );
        let lb = clients
            .elb
            .create_load_balancer()
            .name(format!("{name}-alb"))
            .set_subnets(Some(subnets.clone()))
            .security_groups(&sg)
            .send()
            .await
            .expect("create load balancer");
        let lb_arn = lb.load_balancers()[0]
            .load_balancer_arn()
            .expect("arn")
            .to_owned();
        let listener = clients
            .elb
            .create_listener()
            .load_balancer_arn(&lb_arn)
            .protocol(ProtocolEnum::Http)
            .port(80)
            .default_actions(
                Action::builder()
                    .r#type(ActionTypeEnum::FixedResponse)
                    .fixed_response_config(
                        FixedResponseActionConfig::builder()
                            .status_code("503")
                            .content_type("text/plain")
                            .message_body("no version deployed yet")
                            .build(),
                    )
                    .build(),
            )
            .send()
            .await
            .expect("create listener");
        let listener_arn = listener.listeners()[0]
            .listener_arn()
            .expect("arn")
            .to_owned();
        let cluster = format!("flotilla-{name}");
        clients
            .ecs
            .create_cluster()
            .cluster_name(&cluster)
            .send()
            .await
            .expect("create cluster");
        let log_group = format!("/flotilla/{name}");
        clients
            .logs
            .create_log_group()
            .log_group_name(&log_group)
            .send()
            .await
            .expect("create log group");
        let repo = clients
            .ecr
            .create_repository()
            .repository_name(format!("flotilla-{name}"))
            .send()
            .await
            .expect("create repository");
        let repository = repo
            .repository()
            .and_then(|r| r.repository_uri())
            .expect("uri")
            .to_owned();
        // The stand-in's own task definition: moto cannot run awsvpc tasks.
        let sim_task = clients
            .ecs
            .register_task_definition()
            .family("ecs-stand-in")
            .container_definitions(
                ContainerDefinition::builder()
                    .name("app")
                    .image("x")
                    .memory(512)
                    .cpu(256)
                    .build(),
            )
            .send()
            .await
            .expect("register stand-in task definition")
            .task_definition()
            .and_then(|t| t.task_definition_arn())
            .expect("arn")
            .to_owned();
        // The artefact bucket, which holds the drain board every state write is published to.
        let board_bucket = format!("flotilla-{name}-board");
        clients
            .s3
            .create_bucket()
            .bucket(&board_bucket)
            .send()
            .await
            .expect("create bucket");
        settings.baseline_overrides = BaselineOutputs {
            listener_arn: Some(listener_arn.clone()),
            subnets: Some(subnets),
            security_groups: Some(vec![sg]),
            cluster: Some(cluster.clone()),
            log_group: Some(log_group),
            repository: Some(repository),
            execution_role_arn: Some("arn:aws:iam::123456789012:role/flotilla-exec".to_owned()),
            task_role_arn: Some("arn:aws:iam::123456789012:role/flotilla-task".to_owned()),
            vpc_id: None,
            secret_grants: None,
            drain_bucket: Some(board_bucket.clone()),
        };
        World {
            moto,
            name,
            clients,
            counter,
            counted,
            settings,
            listener_arn,
            cluster,
            board_bucket,
            sim_task,
        }
    }

    /// Gives the server back (to reset and reuse it).
    pub fn into_moto(self) -> Moto {
        self.moto
    }

    /// Ports over uncounted clients.
    pub fn ports(&self) -> Ports {
        flotilla_aws::connect_with(&self.settings, self.clients.clone(), Needs::Deploy)
            .expect("ports")
    }

    /// Ports whose AWS calls `self.counter` counts.
    pub fn counted_ports(&self) -> Ports {
        flotilla_aws::connect_with(&self.settings, self.counted.clone(), Needs::Deploy)
            .expect("ports")
    }

    pub fn engine_settings(&self, owner: &str, policy: ReapPolicy) -> Settings {
        Settings {
            name: self.name.clone(),
            policy,
            budget: RuleBudget::default(),
            health_timeout: Duration::from_secs(30),
            health_poll: Duration::from_millis(200),
            lock_ttl: Duration::from_secs(600),
            lock_owner: owner.to_owned(),
            local_holders: None,
        }
    }

    pub fn engine(&self, owner: &str) -> Engine {
        Engine::new(self.ports(), self.engine_settings(owner, eager_policy(2)))
    }

    pub fn request(id: &DeploymentId) -> DeployRequest {
        DeployRequest {
            id: id.clone(),
            image: ImageRequest::Prebuilt(IMAGE.to_owned()),
            instances: 2,
            min_healthy: 1,
            break_lock: false,
            env: Default::default(),
        }
    }

    /// Deploys `id` while the ECS stand-in runs its tasks.
    pub async fn deploy(
        &self,
        engine: &Engine,
        id: &DeploymentId,
    ) -> Result<DeployOutcome, EngineError> {
        self.deploy_request(engine, Self::request(id)).await
    }

    /// Deploys `request` while the ECS stand-in runs its tasks.
    pub async fn deploy_request(
        &self,
        engine: &Engine,
        request: DeployRequest,
    ) -> Result<DeployOutcome, EngineError> {
        let ecs = self.ecs();
        let stop = tokio::sync::watch::channel(false);
        let mut rx = stop.1.clone();
        let settler = tokio::spawn(async move {
            loop {
                ecs.settle().await;
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(150)) => {}
                    _ = rx.changed() => break,
                }
            }
        });
        let out = engine.deploy(request, &Silent).await;
        let _ = stop.0.send(true);
        let _ = settler.await;
        out
    }

    /// The task definition ARN the service of `id` runs.
    pub async fn task_definition_arn(&self, id: &DeploymentId) -> String {
        let service = flotilla_core::names::service_name(&self.name, id);
        let described = self
            .clients
            .ecs
            .describe_services()
            .cluster(&self.cluster)
            .services(&service)
            .send()
            .await
            .expect("describe service");
        described.services()[0]
            .task_definition()
            .expect("the service names its task definition")
            .to_owned()
    }

    /// The task definition the service of `id` runs.
    pub async fn task_definition(&self, id: &DeploymentId) -> aws_sdk_ecs::types::TaskDefinition {
        let arn = self.task_definition_arn(id).await;
        self.clients
            .ecs
            .describe_task_definition()
            .task_definition(arn)
            .send()
            .await
            .expect("describe task definition")
            .task_definition()
            .expect("a task definition")
            .clone()
    }

    /// The ECS stand-in.
    pub fn ecs(&self) -> EcsStandIn {
        EcsStandIn {
            clients: self.clients.clone(),
            cluster: self.cluster.clone(),
            sim_task: self.sim_task.clone(),
        }
    }

    /// Writes what an agent would: `/apps/<name>/<id>/tasks/<task>` = `value` for every task of
    /// `id`'s service.
    pub async fn report_readiness(&self, id: &DeploymentId, value: &str) -> usize {
        let service = flotilla_core::names::service_name(&self.name, id);
        let tasks = self.ecs().tasks().await;
        let mine: Vec<&String> = tasks
            .iter()
            .filter(|(_, s)| **s == service)
            .map(|(t, _)| t)
            .collect();
        for task in &mine {
            let task_id = task.rsplit('/').next().expect("task id");
            self.clients
                .ssm
                .put_parameter()
                .name(format!("/apps/{}/{id}/tasks/{task_id}", self.name))
                .value(value)
                .r#type(aws_sdk_ssm::types::ParameterType::String)
                .overwrite(true)
                .send()
                .await
                .expect("write readiness");
        }
        mine.len()
    }

    /// Everything flotilla could have made, as it is now.
    pub async fn inventory(&self) -> Inventory {
        let c = &self.clients;
        let mut inv = Inventory::default();
        let tgs = c
            .elb
            .describe_target_groups()
            .send()
            .await
            .expect("target groups");
        for tg in tgs.target_groups() {
            inv.target_groups
                .insert(tg.target_group_name().expect("name").to_owned());
        }
        let rules = c
            .elb
            .describe_rules()
            .listener_arn(&self.listener_arn)
            .send()
            .await
            .expect("rules");
        for r in rules.rules() {
            let action = r.actions().first().expect("an action");
            if r.is_default() == Some(true) {
                inv.default = describe_action(action);
                continue;
            }
            let cond = &r.conditions()[0];
            let value = match cond.field() {
                Some("http-header") => format!(
                    "header {}={}",
                    cond.http_header_config()
                        .and_then(|h| h.http_header_name())
                        .unwrap_or("?"),
                    cond.http_header_config().expect("config").values()[0]
                ),
                Some("query-string") => {
                    let kv = &cond.query_string_config().expect("config").values()[0];
                    format!(
                        "query {}={}",
                        kv.key().unwrap_or("?"),
                        kv.value().unwrap_or("?")
                    )
                }
                other => format!("{other:?}"),
            };
            inv.rules.insert(
                value,
                (
                    r.priority().expect("priority").parse().expect("number"),
                    describe_action(action),
                ),
            );
        }
        let arns = c
            .ecs
            .list_services()
            .cluster(&self.cluster)
            .send()
            .await
            .expect("services");
        if !arns.service_arns().is_empty() {
            for chunk in arns.service_arns().chunks(10) {
                let d = c
                    .ecs
                    .describe_services()
                    .cluster(&self.cluster)
                    .set_services(Some(chunk.to_vec()))
                    .include(aws_sdk_ecs::types::ServiceField::Tags)
                    .send()
                    .await
                    .expect("describe services");
                for s in d.services() {
                    if s.status() == Some("INACTIVE") {
                        continue;
                    }
                    let tags: BTreeMap<String, String> = s
                        .tags()
                        .iter()
                        .map(|t| {
                            (
                                t.key().unwrap_or("").to_owned(),
                                t.value().unwrap_or("").to_owned(),
                            )
                        })
                        .collect();
                    inv.services
                        .insert(s.service_name().expect("name").to_owned(), tags);
                }
            }
        }
        let params = c
            .ssm
            .get_parameters_by_path()
            .path(format!("/apps/{}/", self.name))
            .recursive(true)
            .into_paginator()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .expect("parameters");
        for page in params {
            for p in page.parameters() {
                inv.parameters.insert(
                    p.name().expect("name").to_owned(),
                    p.value().unwrap_or("").to_owned(),
                );
            }
        }
        // A deregistered (INACTIVE) revision still exists until it is deleted, so both count.
        for status in [
            aws_sdk_ecs::types::TaskDefinitionStatus::Active,
            aws_sdk_ecs::types::TaskDefinitionStatus::Inactive,
        ] {
            let tds = c
                .ecs
                .list_task_definitions()
                .family_prefix(flotilla_core::names::task_family(&self.name))
                .status(status)
                .send()
                .await
                .expect("task definitions");
            inv.task_definitions += tds.task_definition_arns().len();
        }
        use aws_sdk_applicationautoscaling::types::ServiceNamespace;
        let targets = c
            .scaling
            .describe_scalable_targets()
            .service_namespace(ServiceNamespace::Ecs)
            .send()
            .await
            .expect("scalable targets");
        for t in targets.scalable_targets() {
            inv.scalable_targets.insert(
                t.resource_id().to_owned(),
                (
                    t.min_capacity(),
                    t.max_capacity(),
                    t.suspended_state()
                        .and_then(|s| s.dynamic_scaling_out_suspended())
                        .unwrap_or(false),
                ),
            );
        }
        let policies = c
            .scaling
            .describe_scaling_policies()
            .service_namespace(ServiceNamespace::Ecs)
            .send()
            .await
            .expect("scaling policies");
        for p in policies.scaling_policies() {
            inv.scaling_policies.insert(p.policy_name().to_owned());
        }
        inv
    }
}

fn describe_action(a: &Action) -> String {
    match a.r#type() {
        Some(ActionTypeEnum::Forward) => {
            let tgs: Vec<String> = match a.forward_config() {
                Some(f) if !f.target_groups().is_empty() => f
                    .target_groups()
                    .iter()
                    .map(|t| {
                        format!(
                            "{}*{}",
                            tg_name(t.target_group_arn().unwrap_or("")),
                            t.weight().unwrap_or(1)
                        )
                    })
                    .collect(),
                _ => vec![tg_name(a.target_group_arn().unwrap_or("")).to_owned()],
            };
            format!("forward {}", tgs.join(","))
        }
        Some(ActionTypeEnum::FixedResponse) => {
            let f = a.fixed_response_config().expect("config");
            format!("fixed {}", f.status_code().unwrap_or("?"))
        }
        other => format!("{other:?}"),
    }
}

fn tg_name(arn: &str) -> &str {
    arn.split(":targetgroup/")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap_or(arn)
}

/// What exists in moto that flotilla makes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Inventory {
    pub target_groups: BTreeSet<String>,
    /// Condition → (priority, action).
    pub rules: BTreeMap<String, (u32, String)>,
    pub default: String,
    /// Service name → tags (INACTIVE services left out).
    pub services: BTreeMap<String, BTreeMap<String, String>>,
    /// Name → value.
    pub parameters: BTreeMap<String, String>,
    pub task_definitions: usize,
    /// Application Auto Scaling targets of ECS services: resource id → (min, max, scale-out
    /// suspended).
    pub scalable_targets: BTreeMap<String, (i32, i32, bool)>,
    /// Scaling policy names of ECS services.
    pub scaling_policies: BTreeSet<String>,
}

impl Inventory {
    /// The versions anything here belongs to.
    pub fn ids(&self) -> BTreeSet<String> {
        let mut ids = BTreeSet::new();
        let tail = |s: &str| s.get(s.len().saturating_sub(20)..).unwrap_or("").to_owned();
        ids.extend(self.target_groups.iter().map(|t| tail(t)));
        ids.extend(self.rules.keys().map(|k| tail(k)));
        ids.extend(self.services.keys().map(|k| tail(k)));
        ids.extend(self.scalable_targets.keys().map(|k| tail(k)));
        for p in self.parameters.keys() {
            if let Some(id) = p.split('/').nth(3).filter(|s| s.len() == 20) {
                ids.insert(id.to_owned());
            }
        }
        ids
    }
}

/// Plays ECS's part that moto leaves out: runs a service's tasks (as tasks of a stand-in task
/// definition in the service's group), keeps running = desired, and registers one healthy
/// target per task in the service's target group.
#[derive(Clone)]
pub struct EcsStandIn {
    clients: Clients,
    cluster: String,
    sim_task: String,
}

impl EcsStandIn {
    /// A stand-in for `cluster`, one made elsewhere (by a baseline stack, say): registers the
    /// stand-in's own task definition.
    pub async fn for_cluster(clients: Clients, cluster: &str) -> EcsStandIn {
        let sim_task = clients
            .ecs
            .register_task_definition()
            .family("ecs-stand-in")
            .container_definitions(
                ContainerDefinition::builder()
                    .name("app")
                    .image("x")
                    .memory(512)
                    .cpu(256)
                    .build(),
            )
            .send()
            .await
            .expect("register stand-in task definition")
            .task_definition()
            .and_then(|t| t.task_definition_arn())
            .expect("arn")
            .to_owned();
        EcsStandIn {
            clients,
            cluster: cluster.to_owned(),
            sim_task,
        }
    }

    /// Runs `work` while the stand-in keeps the cluster's services reconciled.
    pub async fn while_settling<F: std::future::Future>(&self, work: F) -> F::Output {
        let ecs = self.clone();
        let (stop, mut rx) = tokio::sync::watch::channel(false);
        let settler = tokio::spawn(async move {
            loop {
                ecs.settle().await;
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(150)) => {}
                    _ = rx.changed() => break,
                }
            }
        });
        let out = work.await;
        let _ = stop.send(true);
        let _ = settler.await;
        out
    }

    /// Task ARN → service name, for running tasks.
    pub async fn tasks(&self) -> BTreeMap<String, String> {
        let c = &self.clients.ecs;
        let arns = c
            .list_tasks()
            .cluster(&self.cluster)
            .desired_status(DesiredStatus::Running)
            .send()
            .await
            .expect("list tasks");
        let mut out = BTreeMap::new();
        if arns.task_arns().is_empty() {
            return out;
        }
        let d = c
            .describe_tasks()
            .cluster(&self.cluster)
            .set_tasks(Some(arns.task_arns().to_vec()))
            .send()
            .await
            .expect("describe tasks");
        for t in d.tasks() {
            if let (Some(arn), Some(group)) = (t.task_arn(), t.group())
                && let Some(s) = group.strip_prefix("service:")
            {
                out.insert(arn.to_owned(), s.to_owned());
            }
        }
        out
    }

    /// One reconciliation step. Errors are ignored: the next step tries again.
    pub async fn settle(&self) {
        let _ = self.try_settle().await;
    }

    async fn try_settle(&self) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let c = &self.clients;
        let arns = c.ecs.list_services().cluster(&self.cluster).send().await?;
        let mut live: BTreeMap<String, (i32, i32, Option<String>)> = BTreeMap::new();
        for chunk in arns.service_arns().chunks(10) {
            let d = c
                .ecs
                .describe_services()
                .cluster(&self.cluster)
                .set_services(Some(chunk.to_vec()))
                .send()
                .await?;
            for s in d.services() {
                if s.status() != Some("ACTIVE") {
                    continue;
                }
                let tg = s
                    .load_balancers()
                    .first()
                    .and_then(|l| l.target_group_arn())
                    .map(str::to_owned);
                live.insert(
                    s.service_name().unwrap_or("").to_owned(),
                    (s.desired_count(), s.running_count(), tg),
                );
            }
        }
        let tasks = self.tasks().await;
        for (arn, service) in &tasks {
            if !live.contains_key(service) {
                c.ecs
                    .stop_task()
                    .cluster(&self.cluster)
                    .task(arn)
                    .send()
                    .await?;
            }
        }
        for (service, (desired, running, tg)) in &live {
            let mine: Vec<&String> = tasks
                .iter()
                .filter(|(_, s)| *s == service)
                .map(|(t, _)| t)
                .collect();
            let have = mine.len() as i32;
            if have < *desired {
                c.ecs
                    .run_task()
                    .cluster(&self.cluster)
                    .task_definition(&self.sim_task)
                    .count(desired - have)
                    .group(format!("service:{service}"))
                    .launch_type(LaunchType::Fargate)
                    .send()
                    .await?;
            }
            for extra in mine.iter().skip((*desired).max(0) as usize) {
                c.ecs
                    .stop_task()
                    .cluster(&self.cluster)
                    .task(*extra)
                    .send()
                    .await?;
            }
            if *desired > 0 && running != desired {
                // moto sets runningCount to desiredCount on update.
                c.ecs
                    .update_service()
                    .cluster(&self.cluster)
                    .service(service)
                    .desired_count(*desired)
                    .send()
                    .await?;
            }
            if let Some(tg) = tg {
                let health = c
                    .elb
                    .describe_target_health()
                    .target_group_arn(tg)
                    .send()
                    .await?;
                let registered = health.target_health_descriptions().len() as i32;
                let ip = |i: i32| format!("10.0.{}.{}", i / 200, 10 + i % 200);
                if registered < *desired {
                    for i in registered..*desired {
                        c.elb
                            .register_targets()
                            .target_group_arn(tg)
                            .targets(TargetDescription::builder().id(ip(i)).port(8000).build())
                            .send()
                            .await?;
                    }
                } else if registered > *desired {
                    for d in health.target_health_descriptions() {
                        if let Some(t) = d.target() {
                            c.elb
                                .deregister_targets()
                                .target_group_arn(tg)
                                .targets(t.clone())
                                .send()
                                .await?;
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// Wraps real ports for fault injection.
pub fn faulty(ports: Ports, plan: Arc<faults::Plan>) -> Ports {
    faults::wrap(ports, plan)
}

/// The static x86_64 executable `name` (`flotilla-aws-agent`, `flotilla-aws-reaper`): the test
/// build `scripts/test.sh` makes, or a release one, built here by the project's script when
/// neither is there yet.
pub fn static_binary(name: &str) -> std::path::PathBuf {
    let root = flotilla_testkit::repo_root()
        .canonicalize()
        .expect("workspace root");
    let candidates = [
        root.join(format!("target/static-test/{name}-x86_64")),
        root.join(format!("target/static/{name}-x86_64")),
    ];
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        return found.clone();
    }
    let status = std::process::Command::new("bash")
        .arg(root.join("scripts/build-static.sh"))
        .arg("x86_64")
        .env("FLOTILLA_STATIC_PROFILE", "static-test")
        .status()
        .expect("run scripts/build-static.sh");
    assert!(status.success(), "scripts/build-static.sh x86_64 failed");
    assert!(
        candidates[0].is_file(),
        "no static {name} at {}",
        candidates[0].display()
    );
    candidates[0].clone()
}

impl World {
    /// The first listener rule whose fixed response answers `status` (a retired version's).
    pub async fn fixed_response(
        &self,
        status: &str,
    ) -> Option<aws_sdk_elasticloadbalancingv2::types::FixedResponseActionConfig> {
        let rules = self
            .clients
            .elb
            .describe_rules()
            .listener_arn(&self.listener_arn)
            .send()
            .await
            .expect("rules");
        rules
            .rules()
            .iter()
            .filter_map(|r| r.actions().first()?.fixed_response_config())
            .find(|f| f.status_code() == Some(status))
            .cloned()
    }
}
