//! Runs an ECS task definition in the private Docker ([`crate::docker::Docker`]) the way ECS on
//! Fargate runs it, because moto only stores task definitions and never runs them.
//!
//! The input is the JSON `aws ecs describe-task-definition` prints (or just its `taskDefinition`
//! object), parsed into typed structs; fields the executor does not model are ignored. What is
//! modelled, as Fargate (platform 1.4, `awsvpc`) does it:
//!
//! - containers start in `dependsOn` order: `START` waits for the dependency to have started,
//!   `COMPLETE` for it to exit, `SUCCESS` for it to exit 0, `HEALTHY` for its health check to pass;
//!   a dependency that cannot be met fails the task (no later container starts);
//! - `entryPoint` replaces the image's ENTRYPOINT (and so drops its CMD, as the Docker API does),
//!   `command` replaces its CMD;
//! - `environment`, then `secrets` (each `valueFrom` resolved by the caller's resolver, which is how
//!   tests resolve SSM and Secrets Manager references against moto), then the caller's extra
//!   variables (such as `AWS_ENDPOINT_URL`);
//! - task `volumes` are task-scoped Docker volumes (empty, filled from the image at the mount path
//!   by the first container that mounts them, like Fargate's bind mounts); `mountPoints`,
//!   `volumesFrom`, `readOnly`;
//! - `user`, `readonlyRootFilesystem`, `workingDirectory`, `stopTimeout`,
//!   `linuxParameters.initProcessEnabled`, `healthCheck` (`CMD-SHELL`), `runtimePlatform`;
//! - every container shares the task's network namespace (`awsvpc`): here, the host's
//!   (`--network host`), so containers reach each other and the test on 127.0.0.1;
//! - images are pulled before they run (Fargate always pulls), so an image must be in a registry
//!   the daemon can reach, such as [`crate::docker::Registry`];
//! - [`RunningTask::stop`] is StopTask: every running container gets `docker stop -t
//!   <stopTimeout>` (SIGTERM, then SIGKILL after the timeout, 30 s by default), dependents first;
//!   [`RunningTask::wait_stopped`] is what follows an essential container's exit.
//!
//! Not modelled: CPU and memory limits, log drivers (read logs with [`RunningTask::logs`]),
//! `environmentFiles`, EFS volumes (refused), the task metadata endpoint and task role
//! credentials (pass credentials for moto in [`RunOptions::extra_env`]).

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::docker::{Docker, DockerError};

/// A task definition, as `describe-task-definition` returns it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskDefinition {
    /// The family (used in container names, for people reading `docker ps`).
    #[serde(default)]
    pub family: String,
    /// The containers.
    pub container_definitions: Vec<ContainerDefinition>,
    /// The task's volumes.
    #[serde(default)]
    pub volumes: Vec<Volume>,
    /// The CPU architecture and OS the task asks for.
    pub runtime_platform: Option<RuntimePlatform>,
    /// `awsvpc` on Fargate (the only mode this executor runs).
    pub network_mode: Option<String>,
}

/// One container of a task definition.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerDefinition {
    /// The container's name, unique in the task.
    pub name: String,
    /// The image reference.
    pub image: String,
    /// Whether the task stops when this container stops (ECS's default is true).
    pub essential: Option<bool>,
    /// Replaces the image's ENTRYPOINT.
    pub entry_point: Option<Vec<String>>,
    /// Replaces the image's CMD.
    pub command: Option<Vec<String>>,
    /// Plain environment variables.
    #[serde(default)]
    pub environment: Vec<KeyValuePair>,
    /// Variables whose values come from SSM or Secrets Manager.
    #[serde(default)]
    pub secrets: Vec<Secret>,
    /// Containers that must reach a condition before this one starts.
    #[serde(default)]
    pub depends_on: Vec<ContainerDependency>,
    /// Task volumes mounted into this container.
    #[serde(default)]
    pub mount_points: Vec<MountPoint>,
    /// Containers whose volumes this one mounts too.
    #[serde(default)]
    pub volumes_from: Vec<VolumeFrom>,
    /// `user`, `user:group`, `uid` or `uid:gid`.
    pub user: Option<String>,
    /// Mount the root filesystem read-only.
    pub readonly_root_filesystem: Option<bool>,
    /// Seconds between SIGTERM and SIGKILL when the task stops (Fargate's default is 30).
    pub stop_timeout: Option<u64>,
    /// Seconds to wait for this container's dependencies.
    pub start_timeout: Option<u64>,
    /// The working directory.
    pub working_directory: Option<String>,
    /// Ports; under `awsvpc` the host port, when given, equals the container port.
    #[serde(default)]
    pub port_mappings: Vec<PortMapping>,
    /// The container health check.
    pub health_check: Option<HealthCheck>,
    /// Linux-specific settings.
    pub linux_parameters: Option<LinuxParameters>,
}

impl ContainerDefinition {
    /// Whether the container is essential (absent means true in ECS).
    pub fn is_essential(&self) -> bool {
        self.essential.unwrap_or(true)
    }
}

/// A `name`/`value` pair of `environment`.
#[derive(Debug, Clone, Deserialize)]
pub struct KeyValuePair {
    /// The variable's name.
    pub name: String,
    /// Its value (ECS allows it to be absent: an empty value).
    #[serde(default)]
    pub value: String,
}

/// One entry of `secrets`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Secret {
    /// The environment variable it becomes.
    pub name: String,
    /// An SSM parameter or Secrets Manager secret (name or ARN, optionally with a JSON key).
    pub value_from: String,
}

/// One entry of `dependsOn`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerDependency {
    /// The container depended on.
    pub container_name: String,
    /// What it must reach.
    pub condition: DependencyCondition,
}

/// The conditions of `dependsOn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum DependencyCondition {
    /// The dependency has started.
    Start,
    /// The dependency has exited, with any code.
    Complete,
    /// The dependency has exited with code 0.
    Success,
    /// The dependency's health check passes.
    Healthy,
}

/// One entry of `mountPoints`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MountPoint {
    /// A task volume's name.
    pub source_volume: String,
    /// Where it appears in the container.
    pub container_path: String,
    /// Mounted read-only.
    pub read_only: Option<bool>,
}

/// One entry of `volumesFrom`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeFrom {
    /// The container whose mounts are shared.
    pub source_container: String,
    /// Mounted read-only.
    pub read_only: Option<bool>,
}

/// One entry of `portMappings`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    /// The port the container listens on.
    pub container_port: Option<u16>,
    /// Must equal `containerPort` under `awsvpc`.
    pub host_port: Option<u16>,
}

/// A container health check.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    /// `["CMD-SHELL", "<command>"]` (or `["CMD", ...]`, which the executor refuses: the docker
    /// CLI can only express the shell form).
    pub command: Vec<String>,
    /// Seconds between checks (ECS default 30).
    pub interval: Option<u64>,
    /// Seconds before a check fails (ECS default 5).
    pub timeout: Option<u64>,
    /// Failures before unhealthy (ECS default 3).
    pub retries: Option<u64>,
    /// Seconds of grace after start.
    pub start_period: Option<u64>,
}

/// Linux-specific container settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LinuxParameters {
    /// Run an init process as PID 1 that forwards signals and reaps zombies.
    pub init_process_enabled: Option<bool>,
}

/// One of the task's `volumes`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Volume {
    /// The name mount points refer to.
    pub name: String,
    /// A host path (not available on Fargate).
    pub host: Option<HostVolume>,
    /// An EFS file system (not run by this executor).
    pub efs_volume_configuration: Option<serde_json::Value>,
}

/// `host` of a volume.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostVolume {
    /// The host path, which Fargate does not support.
    pub source_path: Option<String>,
}

/// `runtimePlatform`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimePlatform {
    /// `X86_64` or `ARM64`.
    pub cpu_architecture: Option<String>,
    /// `LINUX` for these tasks.
    pub operating_system_family: Option<String>,
}

impl RuntimePlatform {
    /// The Docker platform (`linux/amd64`, `linux/arm64`) it names.
    pub fn docker_platform(&self) -> Result<Option<String>, ExecError> {
        let os = match self.operating_system_family.as_deref() {
            None | Some("LINUX") => "linux",
            Some(other) => {
                return Err(ExecError::Unsupported(format!(
                    "runtimePlatform.operatingSystemFamily {other}: only LINUX tasks run here"
                )));
            }
        };
        Ok(match self.cpu_architecture.as_deref() {
            None => None,
            Some("X86_64") => Some(format!("{os}/amd64")),
            Some("ARM64") => Some(format!("{os}/arm64")),
            Some(other) => {
                return Err(ExecError::Invalid(vec![format!(
                    "runtimePlatform.cpuArchitecture {other:?} is neither X86_64 nor ARM64"
                )]));
            }
        })
    }
}

/// Why a task definition could not be run.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The JSON is not a task definition.
    #[error("not a task definition (describe-task-definition JSON expected): {0}")]
    Parse(#[source] serde_json::Error),
    /// ECS would refuse the task definition; every problem is listed.
    #[error("ECS would refuse this task definition:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
    /// The definition uses something this executor does not run.
    #[error("the executor cannot run this: {0}")]
    Unsupported(String),
    /// The caller's resolver could not resolve a secret.
    #[error(
        "container {container}: secret {name} (valueFrom {value_from}) did not resolve: {message}"
    )]
    Secret {
        /// The container.
        container: String,
        /// The variable name.
        name: String,
        /// The reference.
        value_from: String,
        /// The resolver's message.
        message: String,
    },
    /// A container's dependency was not met, so the task stopped as ECS would stop it.
    #[error(
        "container {container} depends on {dependency} being {condition:?}, but {dependency} {outcome}; its log:\n{logs}"
    )]
    Dependency {
        /// The container that could not start.
        container: String,
        /// The container it waited for.
        dependency: String,
        /// The condition it needed.
        condition: DependencyCondition,
        /// What happened instead.
        outcome: String,
        /// The dependency's log (stdout then stderr).
        logs: String,
    },
    /// A container is not part of the task.
    #[error("the task has no container named {0}")]
    NoSuchContainer(String),
    /// Docker failed.
    #[error(transparent)]
    Docker(#[from] DockerError),
}

impl TaskDefinition {
    /// Parses `describe-task-definition` output, or the bare `taskDefinition` object.
    pub fn from_json(json: &str) -> Result<TaskDefinition, ExecError> {
        let value: serde_json::Value = serde_json::from_str(json).map_err(ExecError::Parse)?;
        let inner = match value.get("taskDefinition") {
            Some(td) => td.clone(),
            None => value,
        };
        serde_json::from_value(inner).map_err(ExecError::Parse)
    }

    fn container(&self, name: &str) -> Option<&ContainerDefinition> {
        self.container_definitions.iter().find(|c| c.name == name)
    }

    /// Checks what RegisterTaskDefinition and Fargate would refuse, listing every problem.
    pub fn validate(&self) -> Result<(), ExecError> {
        let mut problems = Vec::new();
        let mut names = BTreeSet::new();
        for c in &self.container_definitions {
            if !names.insert(c.name.as_str()) {
                problems.push(format!("container name {} is used twice", c.name));
            }
        }
        if self.container_definitions.is_empty() {
            problems.push("containerDefinitions is empty".into());
        }
        if !self.container_definitions.iter().any(|c| c.is_essential()) {
            problems.push("no container is essential; at least one must be".into());
        }
        if let Some(mode) = self.network_mode.as_deref().filter(|m| *m != "awsvpc") {
            problems.push(format!("networkMode {mode}: Fargate supports only awsvpc"));
        }
        let volumes: BTreeSet<&str> = self.volumes.iter().map(|v| v.name.as_str()).collect();
        for v in &self.volumes {
            if v.host.as_ref().is_some_and(|h| h.source_path.is_some()) {
                problems.push(format!(
                    "volume {}: host.sourcePath is not supported on Fargate",
                    v.name
                ));
            }
        }
        for c in &self.container_definitions {
            for d in &c.depends_on {
                match self.container(&d.container_name) {
                    None => problems.push(format!(
                        "container {} depends on {}, which is not in the task",
                        c.name, d.container_name
                    )),
                    Some(dep) => {
                        if matches!(
                            d.condition,
                            DependencyCondition::Complete | DependencyCondition::Success
                        ) && dep.is_essential()
                        {
                            problems.push(format!(
                                "container {} waits for {} to {:?}, but {} is essential \
                                 (COMPLETE and SUCCESS need a non-essential container)",
                                c.name, dep.name, d.condition, dep.name
                            ));
                        }
                        if d.condition == DependencyCondition::Healthy && dep.health_check.is_none()
                        {
                            problems.push(format!(
                                "container {} waits for {} to be HEALTHY, but {} has no healthCheck",
                                c.name, dep.name, dep.name
                            ));
                        }
                    }
                }
            }
            for m in &c.mount_points {
                if !volumes.contains(m.source_volume.as_str()) {
                    problems.push(format!(
                        "container {} mounts volume {}, which is not in the task's volumes",
                        c.name, m.source_volume
                    ));
                }
                if !m.container_path.starts_with('/') {
                    problems.push(format!(
                        "container {} mounts {} at {:?}, which is not an absolute path",
                        c.name, m.source_volume, m.container_path
                    ));
                }
            }
            for v in &c.volumes_from {
                if self.container(&v.source_container).is_none() {
                    problems.push(format!(
                        "container {} takes volumes from {}, which is not in the task",
                        c.name, v.source_container
                    ));
                }
            }
            for p in &c.port_mappings {
                if let (Some(cp), Some(hp)) = (p.container_port, p.host_port)
                    && cp != hp
                {
                    problems.push(format!(
                        "container {}: hostPort {hp} differs from containerPort {cp} \
                             (awsvpc needs them equal)",
                        c.name
                    ));
                }
            }
        }
        if problems.is_empty() && self.start_order().is_none() {
            problems.push("dependsOn has a cycle".into());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ExecError::Invalid(problems))
        }
    }

    /// The containers in an order where every dependency comes first (definition order among
    /// independent ones); `None` when `dependsOn` has a cycle.
    fn start_order(&self) -> Option<Vec<&ContainerDefinition>> {
        let mut order: Vec<&ContainerDefinition> = Vec::new();
        let mut placed = BTreeSet::new();
        while order.len() < self.container_definitions.len() {
            let next = self.container_definitions.iter().find(|c| {
                !placed.contains(c.name.as_str())
                    && c.depends_on
                        .iter()
                        .all(|d| placed.contains(d.container_name.as_str()))
            })?;
            placed.insert(next.name.as_str());
            order.push(next);
        }
        Some(order)
    }
}

/// What the caller adds to a run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Variables added to every container after the definition's own (so these win), such as
    /// `AWS_ENDPOINT_URL` and credentials for moto.
    pub extra_env: Vec<(String, String)>,
    /// Pull every image before running it, as Fargate does. Off only for images the daemon has
    /// locally and no registry serves.
    pub pull: bool,
    /// How long a container waits for its dependencies when it sets no `startTimeout`.
    pub start_timeout: Duration,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            extra_env: Vec::new(),
            pull: true,
            start_timeout: Duration::from_secs(120),
        }
    }
}

/// Fargate's default `stopTimeout`.
const DEFAULT_STOP_TIMEOUT: u64 = 30;

/// The `docker run` arguments of one container (everything after `docker`).
///
/// `volumes` maps task volume names to Docker volume names; `started` maps container names to the
/// Docker ids of containers already started (for `volumesFrom`); `env` is the full environment.
fn run_args(
    docker_name: &str,
    task_label: &str,
    c: &ContainerDefinition,
    env: &[(String, String)],
    volumes: &HashMap<String, String>,
    started: &HashMap<String, String>,
    platform: Option<&str>,
) -> Result<Vec<String>, ExecError> {
    let mut args: Vec<String> = vec![
        "run".into(),
        "--detach".into(),
        "--name".into(),
        docker_name.into(),
        "--label".into(),
        format!("flotilla.task={task_label}"),
        "--network".into(),
        "host".into(),
    ];
    if let Some(p) = platform {
        args.extend(["--platform".into(), p.into()]);
    }
    // The docker CLI's --entrypoint takes one word; the rest of entryPoint goes before command in
    // the arguments. The process runs the same argv as with the API's Entrypoint and Cmd, and a
    // set --entrypoint drops the image's CMD just as a set Entrypoint does.
    let entry_point = c.entry_point.as_deref().filter(|e| !e.is_empty());
    if let Some(ep) = entry_point {
        args.extend(["--entrypoint".into(), ep[0].clone()]);
    }
    if let Some(u) = &c.user {
        args.extend(["--user".into(), u.clone()]);
    }
    if c.readonly_root_filesystem == Some(true) {
        args.push("--read-only".into());
    }
    if let Some(w) = &c.working_directory {
        args.extend(["--workdir".into(), w.clone()]);
    }
    args.extend([
        "--stop-timeout".into(),
        c.stop_timeout.unwrap_or(DEFAULT_STOP_TIMEOUT).to_string(),
    ]);
    if c.linux_parameters
        .as_ref()
        .and_then(|l| l.init_process_enabled)
        == Some(true)
    {
        args.push("--init".into());
    }
    for (k, v) in env {
        args.extend(["--env".into(), format!("{k}={v}")]);
    }
    for m in &c.mount_points {
        let volume = volumes.get(&m.source_volume).ok_or_else(|| {
            ExecError::Invalid(vec![format!(
                "container {} mounts unknown volume {}",
                c.name, m.source_volume
            )])
        })?;
        let ro = if m.read_only == Some(true) { ":ro" } else { "" };
        args.extend([
            "--volume".into(),
            format!("{volume}:{}{ro}", m.container_path),
        ]);
    }
    for v in &c.volumes_from {
        let id = started.get(&v.source_container).ok_or_else(|| {
            ExecError::Unsupported(format!(
                "container {} takes volumes from {}, which has not started before it \
                 (add a dependsOn so it does)",
                c.name, v.source_container
            ))
        })?;
        let ro = if v.read_only == Some(true) {
            ":ro"
        } else {
            ":rw"
        };
        args.extend(["--volumes-from".into(), format!("{id}{ro}")]);
    }
    if let Some(h) = &c.health_check {
        match h.command.split_first() {
            Some((kind, rest)) if kind == "CMD-SHELL" && !rest.is_empty() => {
                args.extend(["--health-cmd".into(), rest.join(" ")]);
            }
            Some((kind, _)) if kind == "NONE" => args.push("--no-healthcheck".into()),
            _ => {
                return Err(ExecError::Unsupported(format!(
                    "container {}: healthCheck.command {:?}; only [\"CMD-SHELL\", \"...\"] runs here",
                    c.name, h.command
                )));
            }
        }
        args.extend([
            format!("--health-interval={}s", h.interval.unwrap_or(30)),
            format!("--health-timeout={}s", h.timeout.unwrap_or(5)),
            format!("--health-retries={}", h.retries.unwrap_or(3)),
            format!("--health-start-period={}s", h.start_period.unwrap_or(0)),
        ]);
    }
    args.push(c.image.clone());
    if let Some(ep) = entry_point {
        args.extend(ep[1..].iter().cloned());
    }
    if let Some(cmd) = &c.command {
        args.extend(cmd.iter().cloned());
    }
    Ok(args)
}

/// A container's state as Docker reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerState {
    /// `created`, `running`, `exited`, ...
    pub status: String,
    /// The exit code (meaningful once exited).
    pub exit_code: i64,
    /// `starting`, `healthy`, `unhealthy`, or empty without a health check.
    pub health: String,
}

impl ContainerState {
    /// Whether the container has stopped.
    pub fn exited(&self) -> bool {
        matches!(self.status.as_str(), "exited" | "dead")
    }
}

/// A container's output.
#[derive(Debug, Clone, Default)]
pub struct Logs {
    /// What it wrote to stdout.
    pub stdout: String,
    /// What it wrote to stderr.
    pub stderr: String,
}

impl std::fmt::Display for Logs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", self.stdout, self.stderr)
    }
}

#[derive(Debug)]
struct Started {
    name: String,
    id: String,
    essential: bool,
    stop_timeout: u64,
}

/// A task running in the private Docker. Dropping it removes its containers and volumes.
#[derive(Debug)]
pub struct RunningTask<'d> {
    docker: &'d Docker,
    label: String,
    started: Vec<Started>,
    volumes: Vec<String>,
}

/// Runs `task` in `docker` as Fargate would (see the module documentation). `resolve` turns a
/// secret's `valueFrom` into its value. Returns once every container has started, with every
/// dependency condition met along the way.
pub fn run_task<'d>(
    docker: &'d Docker,
    task: &TaskDefinition,
    options: &RunOptions,
    mut resolve: impl FnMut(&Secret) -> Result<String, String>,
) -> Result<RunningTask<'d>, ExecError> {
    task.validate()?;
    if task
        .volumes
        .iter()
        .any(|v| v.efs_volume_configuration.is_some())
    {
        return Err(ExecError::Unsupported(
            "EFS volumes (efsVolumeConfiguration)".into(),
        ));
    }
    let platform = match &task.runtime_platform {
        Some(p) => p.docker_platform()?,
        None => None,
    };
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let family = if task.family.is_empty() {
        "task"
    } else {
        &task.family
    };
    let label = format!(
        "{family}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let mut running = RunningTask {
        docker,
        label: label.clone(),
        started: Vec::new(),
        volumes: Vec::new(),
    };

    let mut volumes = HashMap::new();
    for v in &task.volumes {
        let name = format!("{label}-{}", v.name);
        docker.run([
            "volume",
            "create",
            "--label",
            &format!("flotilla.task={label}"),
            &name,
        ])?;
        running.volumes.push(name.clone());
        volumes.insert(v.name.clone(), name);
    }

    if options.pull {
        let mut pulled = BTreeSet::new();
        for c in &task.container_definitions {
            if pulled.insert(c.image.as_str()) {
                let mut args = vec!["pull", "--quiet"];
                if let Some(p) = &platform {
                    args.extend(["--platform", p]);
                }
                args.push(&c.image);
                docker.run(args)?;
            }
        }
    }

    let order = task
        .start_order()
        .expect("validate() refused dependency cycles");
    let mut ids: HashMap<String, String> = HashMap::new();
    for c in order {
        let timeout = c
            .start_timeout
            .map(Duration::from_secs)
            .unwrap_or(options.start_timeout);
        for d in &c.depends_on {
            running.wait_dependency(c, d, timeout)?;
        }
        let mut env: Vec<(String, String)> = c
            .environment
            .iter()
            .map(|kv| (kv.name.clone(), kv.value.clone()))
            .collect();
        for s in &c.secrets {
            let value = resolve(s).map_err(|message| ExecError::Secret {
                container: c.name.clone(),
                name: s.name.clone(),
                value_from: s.value_from.clone(),
                message,
            })?;
            env.push((s.name.clone(), value));
        }
        env.extend(options.extra_env.iter().cloned());
        let docker_name = format!("{label}-{}", c.name);
        let args = run_args(
            &docker_name,
            &label,
            c,
            &env,
            &volumes,
            &ids,
            platform.as_deref(),
        )?;
        let id = docker.run(&args)?.trim().to_owned();
        ids.insert(c.name.clone(), id.clone());
        running.started.push(Started {
            name: c.name.clone(),
            id,
            essential: c.is_essential(),
            stop_timeout: c.stop_timeout.unwrap_or(DEFAULT_STOP_TIMEOUT),
        });
    }
    Ok(running)
}

impl RunningTask<'_> {
    /// The label every container and volume of the task carries (`flotilla.task=<label>`), also
    /// the prefix of their Docker names.
    pub fn label(&self) -> &str {
        &self.label
    }

    fn started(&self, name: &str) -> Result<&Started, ExecError> {
        self.started
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| ExecError::NoSuchContainer(name.to_owned()))
    }

    /// The Docker id of container `name`.
    pub fn container_id(&self, name: &str) -> Result<&str, ExecError> {
        Ok(&self.started(name)?.id)
    }

    /// Container `name`'s state now.
    pub fn state(&self, name: &str) -> Result<ContainerState, ExecError> {
        let id = &self.started(name)?.id;
        Ok(inspect_state(self.docker, id)?)
    }

    /// Container `name`'s output so far.
    pub fn logs(&self, name: &str) -> Result<Logs, ExecError> {
        let id = &self.started(name)?.id;
        Ok(container_logs(self.docker, id)?)
    }

    /// Waits until container `name` exits and returns its exit code.
    pub fn wait_exit(&self, name: &str, timeout: Duration) -> Result<i64, ExecError> {
        let id = &self.started(name)?.id;
        let state = crate::docker::wait_for(&format!("container {name} exiting"), timeout, || {
            let s = inspect_state(self.docker, id)?;
            Ok(s.exited().then_some(s))
        })?;
        Ok(state.exit_code)
    }

    /// What ECS does when an essential container exits: waits (up to `timeout`) until one has,
    /// then stops the rest as [`RunningTask::stop`] does. Returns which essential container
    /// exited first and every container's exit code.
    pub fn wait_stopped(
        &self,
        timeout: Duration,
    ) -> Result<(String, Vec<(String, i64)>), ExecError> {
        let first = crate::docker::wait_for("an essential container exiting", timeout, || {
            for s in self.started.iter().filter(|s| s.essential) {
                if inspect_state(self.docker, &s.id)?.exited() {
                    return Ok(Some(s.name.clone()));
                }
            }
            Ok(None)
        })?;
        Ok((first, self.stop()?))
    }

    /// StopTask: `docker stop -t <stopTimeout>` on every container still running, in reverse start
    /// order (dependents before what they depend on), then every container's exit code, in start
    /// order.
    pub fn stop(&self) -> Result<Vec<(String, i64)>, ExecError> {
        for s in self.started.iter().rev() {
            if !inspect_state(self.docker, &s.id)?.exited() {
                self.docker
                    .run(["stop", "--time", &s.stop_timeout.to_string(), &s.id])?;
            }
        }
        self.started
            .iter()
            .map(|s| Ok((s.name.clone(), inspect_state(self.docker, &s.id)?.exit_code)))
            .collect()
    }

    fn wait_dependency(
        &self,
        c: &ContainerDefinition,
        d: &ContainerDependency,
        timeout: Duration,
    ) -> Result<(), ExecError> {
        let dep = self.started(&d.container_name)?;
        let failed = |outcome: String| {
            let logs = container_logs(self.docker, &dep.id)
                .map(|l| l.to_string())
                .unwrap_or_else(|e| format!("(no log: {e})"));
            ExecError::Dependency {
                container: c.name.clone(),
                dependency: dep.name.clone(),
                condition: d.condition,
                outcome,
                logs,
            }
        };
        let deadline = Instant::now() + timeout;
        loop {
            let s = inspect_state(self.docker, &dep.id)?;
            let met = match d.condition {
                DependencyCondition::Start => true,
                DependencyCondition::Complete => s.exited(),
                DependencyCondition::Success if s.exited() => {
                    if s.exit_code != 0 {
                        return Err(failed(format!("exited with code {}", s.exit_code)));
                    }
                    true
                }
                DependencyCondition::Success => false,
                DependencyCondition::Healthy => {
                    if s.health == "unhealthy" {
                        return Err(failed("became unhealthy".into()));
                    }
                    if s.exited() {
                        return Err(failed(format!(
                            "exited with code {} before it was healthy",
                            s.exit_code
                        )));
                    }
                    s.health == "healthy"
                }
            };
            if met {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(failed(format!(
                    "was still {} ({}) after {timeout:?}",
                    s.status,
                    if s.health.is_empty() {
                        "no health check"
                    } else {
                        &s.health
                    }
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for RunningTask<'_> {
    fn drop(&mut self) {
        let ids: Vec<&str> = self.started.iter().map(|s| s.id.as_str()).collect();
        if !ids.is_empty() {
            let _ = self
                .docker
                .run(["rm", "--force", "--volumes"].into_iter().chain(ids));
        }
        if !self.volumes.is_empty() {
            let _ = self.docker.run(
                ["volume", "rm", "--force"]
                    .into_iter()
                    .chain(self.volumes.iter().map(String::as_str)),
            );
        }
    }
}

fn inspect_state(docker: &Docker, id: &str) -> Result<ContainerState, DockerError> {
    let out = docker.run([
        "inspect",
        "--format",
        "{{.State.Status}} {{.State.ExitCode}} {{if .State.Health}}{{.State.Health.Status}}{{end}}",
        id,
    ])?;
    let mut parts = out.split_whitespace();
    let status = parts.next().unwrap_or_default().to_owned();
    let exit_code = parts.next().and_then(|c| c.parse().ok()).unwrap_or(-1);
    let health = parts.next().unwrap_or_default().to_owned();
    Ok(ContainerState {
        status,
        exit_code,
        health,
    })
}

fn container_logs(docker: &Docker, id: &str) -> Result<Logs, DockerError> {
    let mut cmd = docker.command();
    cmd.args(["logs", id]);
    let out = cmd.output().map_err(|source| DockerError::Io {
        what: format!("docker logs {id}"),
        source,
    })?;
    if !out.status.success() {
        return Err(DockerError::Command {
            command: format!("docker logs {id}"),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(Logs {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(json: &str) -> ContainerDefinition {
        serde_json::from_str(json).expect("container JSON")
    }

    /// The argv after the image: what the process runs besides the image's own parts.
    fn check(json: &str, entrypoint: Option<&str>, after_image: &[&str]) {
        let c = container(json);
        let args = run_args(
            "t-app",
            "t",
            &c,
            &[],
            &HashMap::new(),
            &HashMap::new(),
            None,
        )
        .expect("args");
        let ep = args
            .iter()
            .position(|a| a == "--entrypoint")
            .map(|i| args[i + 1].as_str());
        assert_eq!(ep, entrypoint, "{json}");
        let image = args.iter().position(|a| a == "img").expect("image");
        assert_eq!(&args[image + 1..], after_image, "{json}");
    }

    #[test]
    fn entry_point_and_command_map_to_docker_like_ecs() {
        check(r#"{"name":"app","image":"img"}"#, None, &[]);
        check(
            r#"{"name":"app","image":"img","command":["a","b"]}"#,
            None,
            &["a", "b"],
        );
        check(
            r#"{"name":"app","image":"img","entryPoint":["/agent","run","--"]}"#,
            Some("/agent"),
            &["run", "--"],
        );
        check(
            r#"{"name":"app","image":"img","entryPoint":["/agent","--"],"command":["x"]}"#,
            Some("/agent"),
            &["--", "x"],
        );
        check(
            r#"{"name":"app","image":"img","entryPoint":[],"command":["x"]}"#,
            None,
            &["x"],
        );
    }

    const DESCRIBED: &str = r#"{
      "taskDefinition": {
        "taskDefinitionArn": "arn:aws:ecs:us-east-1:123456789012:task-definition/web:3",
        "family": "web",
        "networkMode": "awsvpc",
        "requiresCompatibilities": ["FARGATE"],
        "cpu": "256", "memory": "512",
        "runtimePlatform": {"cpuArchitecture": "ARM64", "operatingSystemFamily": "LINUX"},
        "volumes": [{"name": "agent", "host": {}}],
        "containerDefinitions": [
          {"name": "init", "image": "i", "essential": false, "cpu": 0,
           "mountPoints": [{"sourceVolume": "agent", "containerPath": "/agent"}]},
          {"name": "app", "image": "a",
           "dependsOn": [{"containerName": "init", "condition": "SUCCESS"}],
           "secrets": [{"name": "DB", "valueFrom": "arn:aws:ssm:us-east-1:1:parameter/db"}],
           "logConfiguration": {"logDriver": "awslogs", "options": {}}}
        ]
      },
      "tags": []
    }"#;

    #[test]
    fn described_task_definitions_parse_with_unknown_fields() {
        let td = TaskDefinition::from_json(DESCRIBED).expect("parses");
        assert_eq!(td.family, "web");
        assert_eq!(td.container_definitions.len(), 2);
        assert!(!td.container_definitions[0].is_essential());
        assert!(td.container_definitions[1].is_essential());
        assert_eq!(
            td.container_definitions[1].depends_on[0].condition,
            DependencyCondition::Success
        );
        assert_eq!(
            td.runtime_platform
                .as_ref()
                .expect("platform")
                .docker_platform()
                .expect("known"),
            Some("linux/arm64".into())
        );
        td.validate().expect("valid");
    }

    #[test]
    fn every_problem_of_an_invalid_definition_is_reported() {
        let td = TaskDefinition::from_json(
            r#"{"containerDefinitions": [
                {"name": "a", "image": "x", "essential": false,
                 "dependsOn": [{"containerName": "b", "condition": "SUCCESS"},
                               {"containerName": "ghost", "condition": "START"}],
                 "mountPoints": [{"sourceVolume": "nope", "containerPath": "/v"}]},
                {"name": "b", "image": "x", "essential": false,
                 "portMappings": [{"containerPort": 80, "hostPort": 8080}]}
            ]}"#,
        )
        .expect("parses");
        let ExecError::Invalid(problems) = td.validate().expect_err("invalid") else {
            panic!("expected Invalid");
        };
        let all = problems.join("\n");
        for needle in [
            "no container is essential",
            "depends on ghost",
            "mounts volume nope",
            "hostPort 8080",
        ] {
            assert!(all.contains(needle), "{needle:?} missing from:\n{all}");
        }
    }

    #[test]
    fn a_dependency_cycle_is_refused() {
        let td = TaskDefinition::from_json(
            r#"{"containerDefinitions": [
                {"name": "a", "image": "x", "dependsOn": [{"containerName": "b", "condition": "START"}]},
                {"name": "b", "image": "x", "dependsOn": [{"containerName": "a", "condition": "START"}]}
            ]}"#,
        )
        .expect("parses");
        let err = td.validate().expect_err("cycle").to_string();
        assert!(err.contains("cycle"), "{err}");
    }

    #[test]
    fn dependencies_start_first() {
        let td = TaskDefinition::from_json(
            r#"{"containerDefinitions": [
                {"name": "app", "image": "x", "dependsOn": [{"containerName": "init", "condition": "SUCCESS"}]},
                {"name": "init", "image": "x", "essential": false}
            ]}"#,
        )
        .expect("parses");
        let order: Vec<&str> = td
            .start_order()
            .expect("no cycle")
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(order, ["init", "app"]);
    }
}
