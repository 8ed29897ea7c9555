//! The AWS provider's settings: SDK options, the baseline's outputs (from
//! `.flotilla/<name>/baseline.json` or config overrides), the task and the routing parameters.
//!
//! The CLI fills [`AwsSettings`] from `flotilla.toml`; this crate validates it and reports every
//! problem at once.

use std::path::{Path, PathBuf};

use flotilla_baseline::Architecture;
use flotilla_core::DeploymentName;
use flotilla_core::names::{DEFAULT_AFFINITY_HEADER, DEFAULT_AFFINITY_QUERY};
use serde::{Deserialize, Deserializer, Serialize};

use crate::error::AwsError;

/// Where the agent's init container puts the agent, in a volume the app container mounts.
pub const AGENT_DIR: &str = "/flotilla";

/// The agent executable inside [`AGENT_DIR`].
pub const AGENT_PATH: &str = "/flotilla/agent";

/// Fargate's ceiling for a container's stop timeout, in seconds.
pub const MAX_STOP_TIMEOUT_SECONDS: u32 = 120;

/// How much longer than the load balancer's idle timeout the agent keeps an idle connection.
pub const KEEPALIVE_MARGIN_SECONDS: u64 = 10;

/// Everything the AWS provider needs for one deployment name.
#[derive(Clone, Debug)]
pub struct AwsSettings {
    /// The deployment name.
    pub name: DeploymentName,
    /// The region; `None` uses the standard chain (`AWS_REGION`, the profile).
    pub region: Option<String>,
    /// The named profile; `None` uses the standard chain (`AWS_PROFILE`, `default`).
    pub profile: Option<String>,
    /// An endpoint override for every service (moto in tests); `None` honours `AWS_ENDPOINT_URL`.
    pub endpoint_url: Option<String>,
    /// Attempts per call under the SDK's standard retry mode (throttling and transient errors).
    pub max_attempts: u32,
    /// Where the baseline's outputs are cached; `None` means `.flotilla/<name>/baseline.json`.
    pub baseline_file: Option<PathBuf>,
    /// Whether to read the cache file at all (the reaper Lambda takes everything from its
    /// environment).
    pub read_baseline_file: bool,
    /// Outputs given in the config; each one present wins over the file.
    pub baseline_overrides: BaselineOutputs,
    /// The ECS task of every version.
    pub task: TaskSettings,
    /// Target groups and listener rules.
    pub routing: RoutingSettings,
    /// The docker executable used to build images.
    pub docker: String,
    /// The app's `[secrets]` references, checked against the baseline's grants before a deploy
    /// creates anything.
    pub declared_secrets: Vec<String>,
}

impl AwsSettings {
    /// Settings with every default for `name`.
    pub fn new(name: DeploymentName) -> Self {
        AwsSettings {
            name,
            region: None,
            profile: None,
            endpoint_url: None,
            max_attempts: 5,
            baseline_file: None,
            read_baseline_file: true,
            baseline_overrides: BaselineOutputs::default(),
            task: TaskSettings::default(),
            routing: RoutingSettings::default(),
            docker: "docker".to_owned(),
            declared_secrets: Vec::new(),
        }
    }

    /// The baseline cache file this configuration reads.
    pub fn baseline_path(&self) -> PathBuf {
        self.baseline_file
            .clone()
            .unwrap_or_else(|| default_baseline_path(&self.name))
    }

    /// Every problem with the task and routing settings for what `needs` does, or none.
    pub fn problems(&self, needs: Needs) -> Vec<String> {
        let mut out = Vec::new();
        let t = &self.task;
        if t.stop_timeout_seconds > MAX_STOP_TIMEOUT_SECONDS {
            out.push(format!(
                "stop_timeout_seconds is {}; Fargate allows at most {MAX_STOP_TIMEOUT_SECONDS}",
                t.stop_timeout_seconds
            ));
        }
        if t.container_port == t.app_port {
            out.push(format!(
                "the agent and the app both use port {}; set [app] port to another port",
                t.app_port
            ));
        }
        if needs == Needs::Deploy && t.agent_image.is_none() && t.agent_binary.is_none() {
            out.push(format!(
                "no static agent for {}: build it with `scripts/build-static.sh {}` (flotilla \
                 looks beside itself and in target/static/), or set [aws] agent_image",
                t.architecture.as_lambda(),
                t.architecture.as_lambda()
            ));
        }
        if self.max_attempts == 0 {
            out.push("max_attempts must be at least 1".to_owned());
        }
        let r = &self.routing;
        if !(5..=300).contains(&r.health_interval_seconds) {
            out.push(format!(
                "health check interval {}s is outside the ALB's 5-300s",
                r.health_interval_seconds
            ));
        }
        if r.health_timeout_seconds == 0 || r.health_timeout_seconds >= r.health_interval_seconds {
            out.push(format!(
                "health check timeout {}s must be at least 1s and shorter than the interval {}s",
                r.health_timeout_seconds, r.health_interval_seconds
            ));
        }
        for (what, n) in [
            ("healthy_threshold", r.healthy_threshold),
            ("unhealthy_threshold", r.unhealthy_threshold),
        ] {
            if !(2..=10).contains(&n) {
                out.push(format!("{what} {n} is outside the ALB's 2-10"));
            }
        }
        if r.deregistration_delay_seconds > 3600 {
            out.push(format!(
                "deregistration delay {}s is over the ALB's 3600s",
                r.deregistration_delay_seconds
            ));
        }
        if r.affinity_header.is_empty() || r.affinity_header.len() > 40 {
            out.push(format!(
                "affinity header `{}` must be 1 to 40 characters (an ALB limit)",
                r.affinity_header
            ));
        }
        if !r
            .affinity_header
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            out.push(format!(
                "affinity header `{}` may hold only letters, digits and hyphens: the load balancer \
                 drops headers with other characters in their name (`_` included), so affinity \
                 would never match",
                r.affinity_header
            ));
        }
        if r.affinity_query.is_empty() || r.affinity_query.len() > 128 {
            out.push(format!(
                "affinity query parameter `{}` must be 1 to 128 characters",
                r.affinity_query
            ));
        }
        if flotilla_core::stale::StaleSignals::check_status(r.stale_status).is_err() {
            out.push(format!(
                "stale status {} must be 409 or 410",
                r.stale_status
            ));
        }
        if !r.health_path.starts_with('/') {
            out.push(format!(
                "health path `{}` must start with `/`",
                r.health_path
            ));
        }
        if r.priority_base == 0 || r.priority_base > 49_000 {
            out.push(format!(
                "rule priority base {} must be 1 to 49000",
                r.priority_base
            ));
        }
        out
    }
}

/// The default baseline cache file of a deployment name: `.flotilla/<name>/baseline.json`.
pub fn default_baseline_path(name: &DeploymentName) -> PathBuf {
    Path::new(".flotilla")
        .join(name.as_str())
        .join("baseline.json")
}

/// How each version's ECS task is defined.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskSettings {
    /// Fargate CPU units (256 = 0.25 vCPU).
    pub cpu: u32,
    /// Fargate memory in MiB.
    pub memory: u32,
    /// The port the app listens on inside the container (the agent proxies to it).
    pub app_port: u16,
    /// The port the agent listens on: the container port the target group sends traffic to.
    pub container_port: u16,
    /// How the app is started inside the image (after the agent's `--`); empty means the image's
    /// own ENTRYPOINT and CMD, read from the image's config.
    pub app_command: Vec<String>,
    /// The CPU architecture tasks run on (Fargate: x86_64, or arm64 on Graviton).
    pub architecture: Architecture,
    /// The agent's image (FROM scratch with the static agent), if given; otherwise flotilla
    /// builds it from [`TaskSettings::agent_binary`] and pushes it to the baseline repository.
    pub agent_image: Option<String>,
    /// The static agent executable of [`TaskSettings::architecture`] to build the agent image
    /// from, when no agent image is given.
    pub agent_binary: Option<PathBuf>,
    /// Whether the app container's root filesystem is read-only (with a writable `/tmp`).
    pub read_only_root: bool,
    /// The user (`name`, `uid` or `uid:gid`) the app container runs as; `None`: the image's.
    pub user: Option<String>,
    /// Whether ECS Exec (a shell into running tasks) is allowed.
    pub enable_execute_command: bool,
    /// How often the agent polls its version's state.
    pub drain_poll_seconds: u64,
    /// How long a draining agent waits before it may report ready.
    pub drain_grace_seconds: u64,
    /// Seconds between SIGTERM and SIGKILL (Fargate: at most 120).
    pub stop_timeout_seconds: u32,
    /// Seconds ECS ignores failing load balancer health checks of a new task.
    pub health_check_grace_seconds: u32,
    /// Whether the agent adds the browser client's script tag to HTML pages (`[app] inject_client`).
    pub inject_client: bool,
    /// The load balancer's idle timeout (`[aws] idle_timeout_seconds`): the agent keeps idle
    /// client connections open longer than this (see [`TaskSettings::agent_keepalive_seconds`]).
    pub lb_idle_timeout_seconds: u32,
    /// Target-tracking autoscaling of each version's service; `None`: a fixed `desired_count`.
    pub autoscaling: Option<crate::scaling::Autoscaling>,
    /// Where each version's tasks run: regular Fargate, Fargate Spot, or a mix.
    pub capacity: Capacity,
}

/// Where each version's tasks run (`[aws] spot_percent` and `on_demand_base`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capacity {
    /// The share of tasks beyond `on_demand_base` that run on Fargate Spot, in percent; 0:
    /// regular Fargate only.
    pub spot_percent: u32,
    /// Tasks that always run on regular Fargate before the Spot share applies.
    pub on_demand_base: u32,
}

/// One entry of an ECS capacity provider strategy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CapacityShare {
    /// `FARGATE` or `FARGATE_SPOT`.
    pub provider: &'static str,
    /// Tasks placed on this provider first.
    pub base: u32,
    /// Its relative share of the tasks beyond every base.
    pub weight: u32,
}

impl Capacity {
    /// The capacity provider strategy of each version's service; empty for regular Fargate only,
    /// which is the launch type `FARGATE` instead. Weights are the two percentages reduced by
    /// their greatest common divisor (75 % Spot: FARGATE 1, FARGATE_SPOT 3); the base is on
    /// FARGATE, the only provider that may carry one in a strategy.
    pub fn strategy(&self) -> Vec<CapacityShare> {
        let spot = self.spot_percent.min(100);
        if spot == 0 {
            return Vec::new();
        }
        let regular = 100 - spot;
        let divisor = gcd(spot, regular);
        let mut shares = Vec::new();
        if regular > 0 || self.on_demand_base > 0 {
            shares.push(CapacityShare {
                provider: "FARGATE",
                base: self.on_demand_base,
                weight: regular / divisor,
            });
        }
        shares.push(CapacityShare {
            provider: "FARGATE_SPOT",
            base: 0,
            weight: spot / divisor,
        });
        shares
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

impl Default for TaskSettings {
    fn default() -> Self {
        TaskSettings {
            cpu: 256,
            memory: 512,
            app_port: 3000,
            container_port: 8000,
            app_command: Vec::new(),
            architecture: Architecture::X86_64,
            agent_image: None,
            agent_binary: None,
            read_only_root: true,
            user: None,
            enable_execute_command: false,
            drain_poll_seconds: 5,
            drain_grace_seconds: 30,
            stop_timeout_seconds: 30,
            // As long as a deploy waits for health by default: a Fargate task pulls its image
            // through NAT before the app starts, and ECS must not replace it meanwhile.
            health_check_grace_seconds: 300,
            inject_client: false,
            lb_idle_timeout_seconds: 120,
            autoscaling: None,
            capacity: Capacity::default(),
        }
    }
}

impl TaskSettings {
    /// The agent's listen port for an app on `app_port`: 8000, or 8001 when the app uses 8000.
    pub fn default_container_port(app_port: u16) -> u16 {
        if app_port == 8000 { 8001 } else { 8000 }
    }

    /// The agent's keep-alive for idle client connections (`FLOTILLA_AGENT_KEEPALIVE_SECONDS`):
    /// longer than the load balancer's idle timeout, so the agent never closes a connection the
    /// load balancer is about to reuse (the load balancer would answer that request with a 502).
    pub fn agent_keepalive_seconds(&self) -> u64 {
        u64::from(self.lb_idle_timeout_seconds) + KEEPALIVE_MARGIN_SECONDS
    }

    /// The app container's `entryPoint`: the agent, from the volume its init container filled,
    /// up to the `--` after which the container's `command` (the app) follows.
    pub fn agent_entry_point(&self) -> Vec<String> {
        vec![
            AGENT_PATH.to_owned(),
            "--listen".to_owned(),
            format!("0.0.0.0:{}", self.container_port),
            "--app-port".to_owned(),
            self.app_port.to_string(),
            "--".to_owned(),
        ]
    }
}

/// Target groups, health checks and listener rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoutingSettings {
    /// The request header carrying a tab's version.
    pub affinity_header: String,
    /// The query parameter carrying a tab's version.
    pub affinity_query: String,
    /// The path the ALB health-checks (answered by the agent).
    pub health_path: String,
    /// Seconds between health checks (ALB: 5-300).
    pub health_interval_seconds: u32,
    /// Seconds a health check may take (shorter than the interval).
    pub health_timeout_seconds: u32,
    /// Consecutive passes before a target is healthy (2-10).
    pub healthy_threshold: u32,
    /// Consecutive failures before a target is unhealthy (2-10).
    pub unhealthy_threshold: u32,
    /// Seconds the ALB keeps sending in-flight requests to a deregistering target.
    pub deregistration_delay_seconds: u32,
    /// Lifetime of the `lb_cookie` that keeps a browser on one task within a version.
    pub stickiness_seconds: u32,
    /// The status a retired version's rules answer with: 409 or 410 (`[app] stale_status`).
    pub stale_status: u16,
    /// The lowest listener-rule priority flotilla allocates.
    pub priority_base: u32,
    /// Listener rules allowed on the listener (the ALB's 100 unless lowered).
    pub rule_limit: u32,
    /// How long removing a version keeps trying to delete its target group while ELB answers
    /// `ResourceInUse` (it does for a while after the rules and the service that used it go).
    pub target_group_in_use_wait: std::time::Duration,
    /// The CloudWatch statistic of the target groups' `TargetResponseTime` a canary's judgement
    /// compares (`p99`). Tests against moto, which computes no percentile, use `Maximum`.
    pub latency_statistic: String,
}

impl Default for RoutingSettings {
    fn default() -> Self {
        RoutingSettings {
            affinity_header: DEFAULT_AFFINITY_HEADER.to_owned(),
            affinity_query: DEFAULT_AFFINITY_QUERY.to_owned(),
            health_path: "/healthz".to_owned(),
            health_interval_seconds: 10,
            health_timeout_seconds: 5,
            healthy_threshold: 2,
            unhealthy_threshold: 3,
            deregistration_delay_seconds: 15,
            stickiness_seconds: 86_400,
            stale_status: flotilla_core::stale::DEFAULT_STALE_STATUS,
            priority_base: 1000,
            rule_limit: flotilla_core::routing::ALB_RULE_LIMIT,
            target_group_in_use_wait: std::time::Duration::from_secs(60),
            latency_statistic: crate::metrics::DEFAULT_LATENCY_STATISTIC.to_owned(),
        }
    }
}

/// The baseline outputs the AWS provider uses, as given in config or read from
/// `.flotilla/<name>/baseline.json`.
///
/// The file is `flotilla_baseline::BaselineOutputs` serialised (`private_subnet_ids`,
/// `service_security_group_id`, `cluster_name`, `log_group_name`, `repository_uri`, ... are read
/// into the fields here); the config keys are the field names. Every field is optional here;
/// [`Baseline::resolve`] says which ones a command needs. Lists may be JSON arrays or
/// comma-separated strings (as CloudFormation outputs are).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaselineOutputs {
    /// The HTTPS (or HTTP-only) listener that holds the affinity rules and the default action.
    #[serde(default, alias = "ListenerArn", alias = "HttpsListenerArn")]
    pub listener_arn: Option<String>,
    /// The private subnets tasks run in.
    #[serde(
        default,
        alias = "private_subnet_ids",
        alias = "PrivateSubnets",
        alias = "PrivateSubnetIds",
        alias = "Subnets",
        deserialize_with = "list_or_csv"
    )]
    pub subnets: Option<Vec<String>>,
    /// The service security group (accepts the container port from the ALB only).
    #[serde(
        default,
        alias = "service_security_group_id",
        alias = "ServiceSecurityGroup",
        alias = "ServiceSecurityGroupId",
        alias = "SecurityGroups",
        deserialize_with = "list_or_csv"
    )]
    pub security_groups: Option<Vec<String>>,
    /// The ECS cluster (name or ARN).
    #[serde(default, alias = "cluster_name", alias = "ClusterName")]
    pub cluster: Option<String>,
    /// The CloudWatch log group of the containers.
    #[serde(default, alias = "log_group_name", alias = "LogGroupName")]
    pub log_group: Option<String>,
    /// The ECR repository URI (`<account>.dkr.ecr.<region>.amazonaws.com/<name>`).
    #[serde(default, alias = "repository_uri", alias = "RepositoryUri")]
    pub repository: Option<String>,
    /// The task execution role (image pull, logs).
    #[serde(default, alias = "ExecutionRoleArn", alias = "TaskExecutionRoleArn")]
    pub execution_role_arn: Option<String>,
    /// The task role (the agent reads and writes `/apps/<name>/*` in SSM).
    #[serde(default, alias = "TaskRoleArn")]
    pub task_role_arn: Option<String>,
    /// The VPC of the load balancer; looked up from the listener when absent.
    #[serde(default, alias = "VpcId")]
    pub vpc_id: Option<String>,
    /// The IAM resources of the app secrets the baseline's execution role may read; absent when
    /// the baseline does not say (an older stack, or an execution role managed elsewhere).
    #[serde(
        default,
        alias = "SecretGrants",
        deserialize_with = "list_or_csv",
        skip_serializing_if = "Option::is_none"
    )]
    pub secret_grants: Option<Vec<String>>,
    /// The bucket of the drain board (`drain_board`), output by a baseline whose task role may
    /// read it; absent on an older stack, whose tasks keep polling SSM.
    #[serde(
        default,
        alias = "DrainBucket",
        skip_serializing_if = "Option::is_none"
    )]
    pub drain_bucket: Option<String>,
}

fn list_or_csv<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        List(Vec<String>),
        Csv(String),
    }
    Ok(match Option::<Raw>::deserialize(d)? {
        None => None,
        Some(Raw::List(v)) => Some(v),
        Some(Raw::Csv(s)) => Some(
            s.split(',')
                .map(str::trim)
                .filter(|x| !x.is_empty() && *x != "none")
                .map(str::to_owned)
                .collect(),
        ),
    })
}

impl BaselineOutputs {
    /// Reads a baseline cache file; `Ok(None)` when it does not exist.
    pub fn read(path: &Path) -> Result<Option<BaselineOutputs>, AwsError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(AwsError::BaselineFile {
                    path: path.to_owned(),
                    message: e.to_string(),
                });
            }
        };
        // The file may hold the outputs at the top level or under an `outputs` key.
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| AwsError::BaselineFile {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
        let outputs = match value.get("outputs").or_else(|| value.get("Outputs")) {
            Some(inner) if inner.is_object() => inner.clone(),
            _ => value,
        };
        serde_json::from_value(outputs)
            .map(Some)
            .map_err(|e| AwsError::BaselineFile {
                path: path.to_owned(),
                message: e.to_string(),
            })
    }

    /// `self` with every missing field taken from `fallback`.
    pub fn or(self, fallback: BaselineOutputs) -> BaselineOutputs {
        let own_role = self.execution_role_arn.is_some();
        let own_task_role = self.task_role_arn.is_some();
        BaselineOutputs {
            listener_arn: self.listener_arn.or(fallback.listener_arn),
            subnets: self.subnets.or(fallback.subnets),
            security_groups: self.security_groups.or(fallback.security_groups),
            cluster: self.cluster.or(fallback.cluster),
            log_group: self.log_group.or(fallback.log_group),
            repository: self.repository.or(fallback.repository),
            execution_role_arn: self.execution_role_arn.or(fallback.execution_role_arn),
            task_role_arn: self.task_role_arn.or(fallback.task_role_arn),
            vpc_id: self.vpc_id.or(fallback.vpc_id),
            // Grants describe the baseline's own role: overriding the role drops them.
            secret_grants: if own_role {
                self.secret_grants
            } else {
                self.secret_grants.or(fallback.secret_grants)
            },
            // Only the baseline's task role may read the board: overriding the role drops it
            // (its tasks then poll SSM), unless the bucket is given too.
            drain_bucket: if own_task_role {
                self.drain_bucket
            } else {
                self.drain_bucket.or(fallback.drain_bucket)
            },
        }
    }
}

/// Every output whose value cannot be what it names: an ARN that does not start with `arn:`, or
/// any value with characters no AWS id, name or ARN has (whitespace, quotes, braces), such as the
/// unresolved text `{'Fn::GetAtt': [...]}` of a template output copied by hand or by an old tool.
fn malformed(outputs: &BaselineOutputs) -> Vec<String> {
    let mut problems = Vec::new();
    let mut check = |key: &str, value: &str, arn: bool| {
        let odd = value.is_empty()
            || value
                .chars()
                .any(|c| c.is_whitespace() || "{}[]'\"`".contains(c));
        if odd || (arn && !value.starts_with("arn:")) {
            let what = if arn { "an ARN" } else { "an AWS id or name" };
            problems.push(format!("{key} is `{value}`, not {what}"));
        }
    };
    let arns = [
        ("listener_arn", &outputs.listener_arn),
        ("execution_role_arn", &outputs.execution_role_arn),
        ("task_role_arn", &outputs.task_role_arn),
    ];
    for (key, value) in arns {
        if let Some(value) = value {
            check(key, value, true);
        }
    }
    let ids = [
        ("cluster", &outputs.cluster),
        ("log_group", &outputs.log_group),
        ("repository", &outputs.repository),
        ("vpc_id", &outputs.vpc_id),
    ];
    for (key, value) in ids {
        if let Some(value) = value {
            check(key, value, false);
        }
    }
    let lists = [
        ("subnets", &outputs.subnets),
        ("security_groups", &outputs.security_groups),
    ];
    for (key, values) in lists {
        for value in values.iter().flatten() {
            check(key, value, false);
        }
    }
    problems
}

/// What a caller will do with the ports, which decides the baseline outputs it needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Needs {
    /// Everything, including creating versions (deploy).
    Deploy,
    /// Observe, retire and delete only (the reaper, status, teardown): the cluster and the listener.
    Operate,
}

/// The baseline outputs a command works with, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Baseline {
    /// The listener holding the rules and the default action.
    pub listener_arn: String,
    /// The ECS cluster.
    pub cluster: String,
    /// Private subnets (empty when not needed).
    pub subnets: Vec<String>,
    /// Service security groups (empty when not needed).
    pub security_groups: Vec<String>,
    /// The log group, if known.
    pub log_group: Option<String>,
    /// The ECR repository URI, if known (needed only to build images).
    pub repository: Option<String>,
    /// The execution role, if known.
    pub execution_role_arn: Option<String>,
    /// The task role, if known.
    pub task_role_arn: Option<String>,
    /// The VPC, if known.
    pub vpc_id: Option<String>,
    /// The app secrets the execution role may read, when the baseline says.
    pub secret_grants: Option<Vec<String>>,
    /// The bucket of the drain board, when the baseline has one: states are published there and
    /// tasks are told to read it.
    pub drain_bucket: Option<String>,
}

impl Baseline {
    /// Checks `outputs` for what `needs` requires, naming every missing output at once.
    pub fn resolve(
        outputs: BaselineOutputs,
        needs: Needs,
        source: &Path,
    ) -> Result<Baseline, AwsError> {
        let mut missing = Vec::new();
        let nonempty = |v: &Option<Vec<String>>| v.as_ref().is_some_and(|v| !v.is_empty());
        if outputs.listener_arn.is_none() {
            missing.push("listener_arn");
        }
        if outputs.cluster.is_none() {
            missing.push("cluster");
        }
        if needs == Needs::Deploy {
            if !nonempty(&outputs.subnets) {
                missing.push("subnets");
            }
            if !nonempty(&outputs.security_groups) {
                missing.push("security_groups");
            }
            if outputs.log_group.is_none() {
                missing.push("log_group");
            }
            if outputs.execution_role_arn.is_none() {
                missing.push("execution_role_arn");
            }
            if outputs.task_role_arn.is_none() {
                missing.push("task_role_arn");
            }
        }
        if !missing.is_empty() {
            return Err(AwsError::MissingBaseline {
                missing,
                path: source.to_owned(),
            });
        }
        let problems = malformed(&outputs);
        if !problems.is_empty() {
            return Err(AwsError::MalformedBaseline {
                problems,
                path: source.to_owned(),
            });
        }
        Ok(Baseline {
            listener_arn: outputs.listener_arn.unwrap_or_default(),
            cluster: outputs.cluster.unwrap_or_default(),
            subnets: outputs.subnets.unwrap_or_default(),
            security_groups: outputs.security_groups.unwrap_or_default(),
            log_group: outputs.log_group,
            repository: outputs.repository,
            execution_role_arn: outputs.execution_role_arn,
            task_role_arn: outputs.task_role_arn,
            vpc_id: outputs.vpc_id,
            secret_grants: outputs.secret_grants,
            drain_bucket: outputs.drain_bucket.filter(|b| !b.trim().is_empty()),
        })
    }

    /// The cluster's name (the last segment of an ARN, or the name itself).
    pub fn cluster_name(&self) -> &str {
        self.cluster.rsplit('/').next().unwrap_or(&self.cluster)
    }

    /// The account id, read from the listener ARN (`arn:aws:elasticloadbalancing:<region>:<account>:...`).
    pub fn account_id(&self) -> Option<&str> {
        self.listener_arn
            .split(':')
            .nth(4)
            .filter(|s| !s.is_empty())
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn capacity_strategies_follow_the_spot_share_and_the_base() {
        let share = |provider, base, weight| CapacityShare {
            provider,
            base,
            weight,
        };
        let strategy = |spot_percent, on_demand_base| {
            Capacity {
                spot_percent,
                on_demand_base,
            }
            .strategy()
        };
        assert_eq!(strategy(0, 0), vec![], "regular Fargate: the launch type");
        assert_eq!(strategy(0, 3), vec![], "a base alone changes nothing");
        assert_eq!(strategy(100, 0), vec![share("FARGATE_SPOT", 0, 1)]);
        assert_eq!(
            strategy(100, 1),
            vec![share("FARGATE", 1, 0), share("FARGATE_SPOT", 0, 1)]
        );
        assert_eq!(
            strategy(75, 1),
            vec![share("FARGATE", 1, 1), share("FARGATE_SPOT", 0, 3)]
        );
        assert_eq!(
            strategy(50, 0),
            vec![share("FARGATE", 0, 1), share("FARGATE_SPOT", 0, 1)]
        );
        assert_eq!(
            strategy(33, 0),
            vec![share("FARGATE", 0, 67), share("FARGATE_SPOT", 0, 33)]
        );
    }

    use super::*;

    fn name() -> DeploymentName {
        DeploymentName::new("prod").expect("valid")
    }

    #[test]
    fn reads_snake_case_and_cloudformation_output_names() {
        let dir =
            std::env::temp_dir().join(format!("flotilla-aws-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let check = |file: &str, json: &str| {
            let path = dir.join(file);
            std::fs::write(&path, json).expect("write");
            BaselineOutputs::read(&path)
                .expect("parses")
                .expect("exists")
        };
        let snake = check(
            "a.json",
            r#"{"listener_arn":"arn:l","subnets":["s1","s2"],"security_groups":["g"],"cluster":"c"}"#,
        );
        assert_eq!(snake.listener_arn.as_deref(), Some("arn:l"));
        assert_eq!(snake.subnets, Some(vec!["s1".to_owned(), "s2".to_owned()]));
        let pascal = check(
            "b.json",
            r#"{"outputs":{"ListenerArn":"arn:l","PrivateSubnets":"s1, s2","ServiceSecurityGroup":"g","ClusterName":"c","Unknown":"x"}}"#,
        );
        assert_eq!(pascal.subnets, snake.subnets);
        assert_eq!(pascal.security_groups, Some(vec!["g".to_owned()]));
        assert_eq!(pascal.cluster.as_deref(), Some("c"));
        assert!(
            BaselineOutputs::read(&dir.join("missing.json"))
                .expect("absent is fine")
                .is_none()
        );
        std::fs::write(dir.join("bad.json"), "{").expect("write");
        let err = BaselineOutputs::read(&dir.join("bad.json")).expect_err("broken json");
        assert!(err.to_string().contains("bad.json"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn reads_the_baseline_crates_cache_file() {
        // The shape `flotilla baseline up` writes (flotilla_baseline::BaselineOutputs).
        let json = serde_json::json!({
            "deployment_name": "prod", "mode": "https", "url": "https://x", "domain": "x",
            "listener_arn": "arn:aws:elasticloadbalancing:us-east-1:1:listener/app/a/b/c",
            "http_listener_arn": "arn:http", "load_balancer_arn": "arn:lb",
            "load_balancer_dns": "d", "load_balancer_full_name": "app/a/b", "vpc_id": "vpc-1",
            "private_subnet_ids": ["s1", "s2"], "public_subnet_ids": ["p1", "p2"],
            "service_security_group_id": "sg-svc", "alb_security_group_id": "sg-alb",
            "cluster_name": "flotilla-prod", "cluster_arn": "arn:cluster",
            "log_group_name": "/flotilla/prod", "repository_uri": "1.dkr.ecr/flotilla-prod",
            "repository_name": "flotilla-prod", "execution_role_arn": "arn:exec",
            "task_role_arn": "arn:task", "artefact_bucket": "b", "drain_bucket": "b",
            "dashboard_name": "d",
            "app_port": 3000
        });
        let outputs: BaselineOutputs = serde_json::from_value(json).expect("parses");
        let b = Baseline::resolve(outputs, Needs::Deploy, Path::new("x")).expect("complete");
        assert_eq!(b.subnets, vec!["s1".to_owned(), "s2".to_owned()]);
        assert_eq!(b.security_groups, vec!["sg-svc".to_owned()]);
        assert_eq!(b.cluster, "flotilla-prod");
        assert_eq!(b.log_group.as_deref(), Some("/flotilla/prod"));
        assert_eq!(b.repository.as_deref(), Some("1.dkr.ecr/flotilla-prod"));
        assert_eq!(b.vpc_id.as_deref(), Some("vpc-1"));
        assert_eq!(b.task_role_arn.as_deref(), Some("arn:task"));
        // The artefact bucket holds the drain board the tasks are told to read.
        assert_eq!(b.drain_bucket.as_deref(), Some("b"));
    }

    #[test]
    fn a_baseline_made_before_the_drain_board_keeps_tasks_on_ssm() {
        // Its cache names the artefact bucket, but its task role may not read a board there.
        let json = serde_json::json!({
            "listener_arn": "arn:aws:elasticloadbalancing:us-east-1:1:listener/app/a/b/c",
            "cluster_name": "flotilla-prod", "artefact_bucket": "b"
        });
        let outputs: BaselineOutputs = serde_json::from_value(json).expect("parses");
        let b = Baseline::resolve(outputs, Needs::Operate, Path::new("x")).expect("enough");
        assert_eq!(b.drain_bucket, None);
    }

    #[test]
    fn a_task_role_of_your_own_keeps_tasks_off_the_drain_board() {
        let file = BaselineOutputs {
            task_role_arn: Some("arn:baseline-task".to_owned()),
            drain_bucket: Some("flotilla-prod-1a2b3c4d".to_owned()),
            ..Default::default()
        };
        let merged = BaselineOutputs::default().or(file.clone());
        assert_eq!(
            merged.drain_bucket.as_deref(),
            Some("flotilla-prod-1a2b3c4d")
        );
        // That role may not read the board: its tasks poll SSM.
        let own = BaselineOutputs {
            task_role_arn: Some("arn:mine".to_owned()),
            ..Default::default()
        };
        assert_eq!(own.or(file).drain_bucket, None);
    }

    #[test]
    fn resolve_names_every_missing_output() {
        let partial = BaselineOutputs {
            cluster: Some("c".to_owned()),
            ..Default::default()
        };
        let err = Baseline::resolve(partial.clone(), Needs::Deploy, Path::new("b.json"))
            .expect_err("incomplete");
        let text = err.to_string();
        for want in [
            "listener_arn",
            "subnets",
            "security_groups",
            "log_group",
            "execution_role_arn",
            "task_role_arn",
            "flotilla baseline up",
        ] {
            assert!(text.contains(want), "{text} lacks {want}");
        }
        let err = Baseline::resolve(partial, Needs::Operate, Path::new("b.json"))
            .expect_err("still needs the listener");
        assert!(!err.to_string().contains("subnets"), "{err}");
    }

    #[test]
    fn overrides_win_over_the_file() {
        let file = BaselineOutputs {
            cluster: Some("from-file".to_owned()),
            listener_arn: Some("arn:file".to_owned()),
            ..Default::default()
        };
        let cfg = BaselineOutputs {
            cluster: Some("from-config".to_owned()),
            ..Default::default()
        };
        let merged = cfg.or(file);
        assert_eq!(merged.cluster.as_deref(), Some("from-config"));
        assert_eq!(merged.listener_arn.as_deref(), Some("arn:file"));
    }

    #[test]
    fn settings_problems_are_all_reported() {
        let mut s = AwsSettings::new(name());
        s.task.stop_timeout_seconds = 300;
        s.task.container_port = s.task.app_port;
        s.routing.health_interval_seconds = 2;
        s.routing.affinity_header = "X_Version".to_owned();
        let problems = s.problems(Needs::Deploy);
        assert!(
            problems
                .iter()
                .any(|p| p.contains("`X_Version`") && p.contains("`_`")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p.contains("at most 120")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p.contains("both use port")),
            "{problems:?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.contains("no static agent for x86_64")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p.contains("5-300s")),
            "{problems:?}"
        );
        let mut ok = AwsSettings::new(name());
        ok.task.agent_image = Some("registry.example/flotilla-agent:1".to_owned());
        assert_eq!(ok.problems(Needs::Deploy), Vec::<String>::new());
        assert_eq!(
            AwsSettings::new(name()).problems(Needs::Operate),
            Vec::<String>::new()
        );
    }

    #[test]
    fn the_entry_point_is_the_agent_from_its_volume() {
        let t = TaskSettings {
            app_port: 3000,
            container_port: 8000,
            ..Default::default()
        };
        assert_eq!(
            t.agent_entry_point().join(" "),
            "/flotilla/agent --listen 0.0.0.0:8000 --app-port 3000 --"
        );
        assert_eq!(TaskSettings::default_container_port(8000), 8001);
        assert_eq!(TaskSettings::default_container_port(3000), 8000);
    }

    #[test]
    fn agent_keepalive_outlasts_the_load_balancer_idle_timeout() {
        let check = |idle: u32, want: u64| {
            let t = TaskSettings {
                lb_idle_timeout_seconds: idle,
                ..Default::default()
            };
            assert_eq!(t.agent_keepalive_seconds(), want, "idle {idle}");
        };
        check(120, 130);
        check(900, 910);
        check(4000, 4010);
    }

    #[test]
    fn account_and_cluster_from_arns() {
        let b = Baseline::resolve(
            BaselineOutputs {
                listener_arn: Some(
                    "arn:aws:elasticloadbalancing:us-east-1:123456789012:listener/app/lb/1/2"
                        .to_owned(),
                ),
                cluster: Some(
                    "arn:aws:ecs:us-east-1:123456789012:cluster/flotilla-prod".to_owned(),
                ),
                ..Default::default()
            },
            Needs::Operate,
            Path::new("x"),
        )
        .expect("enough to operate");
        assert_eq!(b.account_id(), Some("123456789012"));
        assert_eq!(b.cluster_name(), "flotilla-prod");
    }

    /// A cached output holding the unresolved template text `{'Fn::GetAtt': ...}` was once
    /// accepted and failed later, far from its cause.
    #[test]
    fn resolve_refuses_outputs_that_are_not_ids_or_arns() {
        let outputs = BaselineOutputs {
            listener_arn: Some("{'Fn::GetAtt': ['HttpsListener', 'ListenerArn']}".to_owned()),
            cluster: Some("flotilla-prod".to_owned()),
            subnets: Some(vec![
                "subnet-1".to_owned(),
                "{'Ref': 'Private2'}".to_owned(),
            ]),
            security_groups: Some(vec!["sg-1".to_owned()]),
            log_group: Some("/flotilla/prod".to_owned()),
            execution_role_arn: Some("role/exec".to_owned()),
            task_role_arn: Some("arn:aws:iam::1:role/task".to_owned()),
            ..Default::default()
        };
        let err =
            Baseline::resolve(outputs, Needs::Deploy, Path::new("b.json")).expect_err("malformed");
        let text = err.to_string();
        for want in [
            "listener_arn is `{'Fn::GetAtt'",
            "subnets is `{'Ref': 'Private2'}`",
            "execution_role_arn is `role/exec`, not an ARN",
            "b.json",
            "`flotilla baseline up`",
        ] {
            assert!(text.contains(want), "{text} lacks {want}");
        }
        for fine in ["task_role_arn", "cluster", "log_group", "sg-1"] {
            assert!(!text.contains(fine), "{text} names {fine}");
        }
    }
}
