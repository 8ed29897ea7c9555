//! Compute on ECS Fargate: one task definition revision (family `flotilla-<name>`) and one
//! service per version, in the private subnets, registered into the version's target group.
//!
//! Observation is batched: one `DescribeServices` (tags included) per ten services, one
//! `DescribeTargetHealth` per version that should run, and one cluster-wide `ListTasks` +
//! `DescribeTasks` per hundred tasks for the task ids, never a call per task. Why tasks stopped
//! (pull errors, exec format errors and exit codes show only there) costs one `ListTasks` of
//! stopped tasks plus `DescribeTasks`, asked by `status` and `recent_logs` only.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_ecs::types::{
    AssignPublicIp, AwsVpcConfiguration, Compatibility, ContainerCondition, ContainerDefinition,
    ContainerDependency, CpuArchitecture, DesiredStatus, KeyValuePair, LaunchType, LoadBalancer,
    LogConfiguration, LogDriver, MountPoint, NetworkConfiguration, NetworkMode, OsFamily,
    PortMapping, PropagateTags, RuntimePlatform, Secret, Service, ServiceField, SortOrder, Tag,
    Task, TaskDefinitionField, TaskDefinitionStatus, TransportProtocol, Volume,
};
use aws_sdk_elasticloadbalancingv2::types::TargetHealthStateEnum;
use aws_smithy_types::date_time::Format;
use flotilla_core::{DeploymentId, InstanceId, Timestamp};
use flotilla_engine::ports::{
    Clock, Compute, ComputeStatus, ErrorKind, Measured, PortError, SecretSource, VersionSpec,
};

use crate::agent_reports;
use crate::clock::SystemClock;
use crate::ctx::{Ctx, TAG_ID, TAG_NAME, TAG_STATE, arn_tail};
use crate::error::{code_of, port_error};
use crate::images::{EcrImages, TaskImages};
use crate::secrets::SecretRef;
use crate::settings::{AGENT_DIR, AGENT_PATH};

/// The ARN partition of `region`.
pub fn partition_of(region: &str) -> &'static str {
    if region.starts_with("cn-") {
        "aws-cn"
    } else if region.starts_with("us-gov-") {
        "aws-us-gov"
    } else {
        "aws"
    }
}

/// The app container's name in every task definition.
pub const CONTAINER_NAME: &str = "app";

/// The init container that copies the static agent into [`AGENT_VOLUME`].
pub const AGENT_CONTAINER_NAME: &str = "flotilla-agent";

/// The task volume holding the agent, mounted at [`AGENT_DIR`].
pub const AGENT_VOLUME: &str = "flotilla-agent";

/// The task volume mounted at `/tmp` when the root filesystem is read-only.
pub const TMP_VOLUME: &str = "tmp";

/// `DescribeServices` takes at most ten services.
const DESCRIBE_SERVICES_BATCH: usize = 10;

/// `DescribeTasks` takes at most a hundred tasks.
const DESCRIBE_TASKS_BATCH: usize = 100;

/// Service events included in `recent_logs`.
const SERVICE_EVENTS: usize = 5;

/// Stopped tasks described per version (newest first).
const STOPPED_TASKS: usize = 5;

/// Pages of stopped tasks read at most (ECS keeps a stopped task for about an hour).
const STOPPED_PAGES: usize = 5;

/// Pages of a version's log read for the tail `logs` and a failed deploy show.
const LOG_PAGES: usize = 5;

/// Pages of the agents' drain-source reports read per version by `status`.
const AGENT_REPORT_PAGES: usize = 5;

/// The [`Compute`] port over ECS.
pub struct EcsCompute {
    ctx: Arc<Ctx>,
}

fn ecs_tag(key: &str, value: &str) -> Tag {
    Tag::builder().key(key).value(value).build()
}

fn exists(service: &Service) -> bool {
    matches!(service.status(), Some("ACTIVE") | Some("DRAINING"))
}

/// One line saying why a task stopped: when, ECS's `stoppedReason` and `stopCode`, and each
/// container's exit code and reason (where a pull error or a missing binary shows).
pub fn describe_stopped(task: &Task) -> String {
    let id = task.task_arn().map(arn_tail).unwrap_or("?");
    let short: String = id.chars().take(8).collect();
    let mut line = format!("task {short} stopped");
    if let Some(at) = task.stopped_at().and_then(|t| t.fmt(Format::DateTime).ok()) {
        line.push_str(&format!(" at {at}"));
    }
    match (task.stopped_reason(), task.stop_code()) {
        (Some(reason), Some(code)) => line.push_str(&format!(": {reason} ({})", code.as_str())),
        (Some(reason), None) => line.push_str(&format!(": {reason}")),
        (None, Some(code)) => line.push_str(&format!(" ({})", code.as_str())),
        (None, None) => {}
    }
    for c in task.containers() {
        let name = c.name().unwrap_or("container");
        match (c.exit_code(), c.reason()) {
            (Some(code), Some(reason)) => {
                line.push_str(&format!("; {name} exited with code {code}: {reason}"))
            }
            (Some(code), None) => line.push_str(&format!("; {name} exited with code {code}")),
            (None, Some(reason)) => line.push_str(&format!("; {name}: {reason}")),
            (None, None) => {}
        }
    }
    line
}

impl EcsCompute {
    pub(crate) fn new(ctx: Arc<Ctx>) -> Self {
        EcsCompute { ctx }
    }

    fn cluster(&self) -> &str {
        &self.ctx.baseline.cluster
    }

    /// Services by name (including INACTIVE ones: they still name their task definition).
    async fn describe(&self, names: &[String]) -> Result<HashMap<String, Service>, PortError> {
        let mut out = HashMap::new();
        for batch in names.chunks(DESCRIBE_SERVICES_BATCH) {
            let resp = self
                .ctx
                .clients
                .ecs
                .describe_services()
                .cluster(self.cluster())
                .set_services(Some(batch.to_vec()))
                .include(ServiceField::Tags)
                .send()
                .await
                .map_err(|e| port_error("describe services", &batch.join(","), e))?;
            for s in resp.services() {
                if let Some(name) = s.service_name() {
                    out.insert(name.to_owned(), s.clone());
                }
            }
        }
        Ok(out)
    }

    async fn describe_one(&self, id: &DeploymentId) -> Result<Option<Service>, PortError> {
        let name = self.ctx.service_name(id);
        Ok(self
            .describe(std::slice::from_ref(&name))
            .await?
            .remove(&name))
    }

    /// The container that puts the static agent into the shared volume and exits: the app
    /// container starts once it has succeeded.
    fn agent_init_container(
        &self,
        images: &TaskImages,
        logs: &LogConfiguration,
    ) -> ContainerDefinition {
        ContainerDefinition::builder()
            .name(AGENT_CONTAINER_NAME)
            .image(&images.agent_image)
            .essential(false)
            .set_command(Some(vec!["install".to_owned(), AGENT_PATH.to_owned()]))
            .mount_points(
                MountPoint::builder()
                    .source_volume(AGENT_VOLUME)
                    .container_path(AGENT_DIR)
                    .read_only(false)
                    .build(),
            )
            .readonly_root_filesystem(true)
            .log_configuration(logs.clone())
            .build()
    }

    fn logs(&self, spec: &VersionSpec) -> Result<LogConfiguration, PortError> {
        let mut logs = LogConfiguration::builder().log_driver(LogDriver::Awslogs);
        if let Some(group) = &self.ctx.baseline.log_group {
            logs = logs
                .options("awslogs-group", group)
                .options("awslogs-region", &self.ctx.region)
                // Streams are `<id>/<container>/<task id>`: one prefix per version.
                .options("awslogs-stream-prefix", spec.id.as_str());
        }
        logs.build().map_err(|e| {
            PortError::new(
                ErrorKind::Invalid,
                "define task",
                spec.id.as_str(),
                e.to_string(),
            )
        })
    }

    fn container(
        &self,
        spec: &VersionSpec,
        images: &TaskImages,
        logs: &LogConfiguration,
    ) -> Result<ContainerDefinition, PortError> {
        let t = &self.ctx.task;
        let env = |k: &str, v: String| KeyValuePair::builder().name(k).value(v).build();
        let mut app_env = Vec::new();
        for (name, value) in &spec.env.vars {
            app_env.push(env(name, value.clone()));
        }
        let mut secrets = Vec::new();
        for (name, source) in &spec.env.secrets {
            secrets.push(self.secret(spec, name, source)?);
        }
        let mut mounts = vec![
            MountPoint::builder()
                .source_volume(AGENT_VOLUME)
                .container_path(AGENT_DIR)
                .read_only(true)
                .build(),
        ];
        if t.read_only_root {
            mounts.push(
                MountPoint::builder()
                    .source_volume(TMP_VOLUME)
                    .container_path("/tmp")
                    .read_only(false)
                    .build(),
            );
        }
        // With the baseline's drain board, the agent polls it (one object, conditional GETs)
        // instead of its own SSM parameter: see `drain_board`.
        if let Some(bucket) = &self.ctx.baseline.drain_bucket {
            app_env.push(env(crate::drain_board::BUCKET_ENV, bucket.clone()));
        }
        Ok(ContainerDefinition::builder()
            .name(CONTAINER_NAME)
            .set_environment(Some(app_env))
            .set_secrets(Some(secrets))
            .image(&spec.image.0)
            .essential(true)
            .depends_on(
                ContainerDependency::builder()
                    .container_name(AGENT_CONTAINER_NAME)
                    .condition(ContainerCondition::Success)
                    .build()
                    .map_err(|e| {
                        PortError::new(
                            ErrorKind::Invalid,
                            "define task",
                            spec.id.as_str(),
                            e.to_string(),
                        )
                    })?,
            )
            .set_mount_points(Some(mounts))
            .readonly_root_filesystem(t.read_only_root)
            .set_user(t.user.clone())
            // The agent wraps whatever the image would run (or [aws] command).
            .set_entry_point(Some(t.agent_entry_point()))
            .set_command(Some(images.app_command.clone()))
            .cpu(t.cpu as i32)
            .memory(t.memory as i32)
            .port_mappings(
                PortMapping::builder()
                    .container_port(i32::from(t.container_port))
                    .protocol(TransportProtocol::Tcp)
                    .build(),
            )
            .environment(env("FLOTILLA_DEPLOYMENT_NAME", spec.name.to_string()))
            .environment(env("FLOTILLA_DEPLOYMENT_ID", spec.id.to_string()))
            .environment(env(
                "FLOTILLA_DRAIN_POLL_SECONDS",
                t.drain_poll_seconds.to_string(),
            ))
            .environment(env(
                "FLOTILLA_DRAIN_GRACE_SECONDS",
                t.drain_grace_seconds.to_string(),
            ))
            .environment(env("FLOTILLA_APP_PORT", t.app_port.to_string()))
            // Under autoscaling, the agent keeps a task with sessions out of scale-in.
            .environment(env(
                "FLOTILLA_SCALE_IN_PROTECTION",
                t.autoscaling.is_some().to_string(),
            ))
            // The agent reads the rest of its settings from these, so non-default values in
            // flotilla.toml reach it inside the task.
            .environment(env(
                "FLOTILLA_APP_HEALTH_PATH",
                self.ctx.routing.health_path.clone(),
            ))
            .environment(env(
                "FLOTILLA_APP_AFFINITY_HEADER",
                self.ctx.routing.affinity_header.clone(),
            ))
            .environment(env(
                "FLOTILLA_APP_AFFINITY_QUERY",
                self.ctx.routing.affinity_query.clone(),
            ))
            .environment(env(
                "FLOTILLA_APP_INJECT_CLIENT",
                t.inject_client.to_string(),
            ))
            .environment(env(
                "FLOTILLA_APP_STOP_TIMEOUT_SECONDS",
                t.stop_timeout_seconds.to_string(),
            ))
            .environment(env(
                "FLOTILLA_AGENT_KEEPALIVE_SECONDS",
                t.agent_keepalive_seconds().to_string(),
            ))
            .environment(env("PORT", t.app_port.to_string()))
            .environment(env("AWS_REGION", self.ctx.region.clone()))
            .log_configuration(logs.clone())
            .stop_timeout(t.stop_timeout_seconds as i32)
            .build())
    }

    /// One of the app's secrets as the task definition names it: ECS reads the value with the
    /// execution role when the task starts, so the value never passes through flotilla.
    fn secret(
        &self,
        spec: &VersionSpec,
        name: &str,
        source: &SecretSource,
    ) -> Result<Secret, PortError> {
        let invalid = |message: String| {
            PortError::new(ErrorKind::Invalid, "define task", spec.id.as_str(), message)
        };
        let SecretSource::Reference(text) = source else {
            return Err(invalid(format!(
                "secret {name} carries a value; on AWS a secret is a reference to SSM or \
                 Secrets Manager ([secrets] in flotilla.toml)"
            )));
        };
        let reference =
            SecretRef::parse(text).map_err(|m| invalid(format!("secret {name}: {m}")))?;
        let account = self.ctx.baseline.account_id().ok_or_else(|| {
            invalid(
                "the account id is unknown (no listener ARN in the baseline outputs); run \
                 `flotilla baseline up` or set [aws] listener_arn"
                    .to_owned(),
            )
        })?;
        let region = &self.ctx.region;
        Secret::builder()
            .name(name)
            .value_from(reference.value_from(partition_of(region), region, account))
            .build()
            .map_err(|e| invalid(e.to_string()))
    }

    /// The newest ACTIVE revision of the family if it belongs to `id` (a re-run after a crash
    /// between registering it and creating the service), so no duplicate revision is made.
    async fn reusable_revision(&self, id: &DeploymentId) -> Result<Option<String>, PortError> {
        let family = flotilla_core::names::task_family(&self.ctx.name);
        let listed = self
            .ctx
            .clients
            .ecs
            .list_task_definitions()
            .family_prefix(&family)
            .status(TaskDefinitionStatus::Active)
            .sort(SortOrder::Desc)
            .max_results(1)
            .send()
            .await
            .map_err(|e| port_error("list task definitions", &family, e))?;
        let Some(newest) = listed.task_definition_arns().first() else {
            return Ok(None);
        };
        Ok(self
            .revision_of(newest)
            .await?
            .filter(|owner| owner == id)
            .map(|_| newest.clone()))
    }

    /// The deployment id a task definition revision is tagged with.
    async fn revision_of(&self, arn: &str) -> Result<Option<DeploymentId>, PortError> {
        let out = self
            .ctx
            .clients
            .ecs
            .describe_task_definition()
            .task_definition(arn)
            .include(TaskDefinitionField::Tags)
            .send()
            .await
            .map_err(|e| port_error("describe task definition", arn, e))?;
        let family_ok = out
            .task_definition()
            .and_then(|t| t.family())
            .is_some_and(|f| f == flotilla_core::names::task_family(&self.ctx.name));
        Ok(out
            .tags()
            .iter()
            .find(|t| t.key() == Some(TAG_ID))
            .and_then(|t| DeploymentId::new(t.value()?).ok())
            .filter(|_| family_ok))
    }

    async fn register(&self, spec: &VersionSpec) -> Result<String, PortError> {
        let b = &self.ctx.baseline;
        let family = flotilla_core::names::task_family(&self.ctx.name);
        let images = EcrImages::new(self.ctx.clone())
            .task_images(&spec.id, &spec.image.0)
            .await?;
        let logs = self.logs(spec)?;
        let mut volumes = vec![Volume::builder().name(AGENT_VOLUME).build()];
        if self.ctx.task.read_only_root {
            volumes.push(Volume::builder().name(TMP_VOLUME).build());
        }
        let platform = RuntimePlatform::builder()
            .cpu_architecture(CpuArchitecture::from(self.ctx.task.architecture.as_ecs()))
            .operating_system_family(OsFamily::Linux)
            .build();
        let out = self
            .ctx
            .clients
            .ecs
            .register_task_definition()
            .family(&family)
            .network_mode(NetworkMode::Awsvpc)
            .requires_compatibilities(Compatibility::Fargate)
            .cpu(self.ctx.task.cpu.to_string())
            .memory(self.ctx.task.memory.to_string())
            .set_execution_role_arn(b.execution_role_arn.clone())
            .set_task_role_arn(b.task_role_arn.clone())
            .container_definitions(self.agent_init_container(&images, &logs))
            .container_definitions(self.container(spec, &images, &logs)?)
            .set_volumes(Some(volumes))
            .runtime_platform(platform)
            .tags(ecs_tag(TAG_NAME, self.ctx.name.as_str()))
            .tags(ecs_tag(TAG_ID, spec.id.as_str()))
            .send()
            .await
            .map_err(|e| port_error("register task definition", &family, e))?;
        out.task_definition()
            .and_then(|t| t.task_definition_arn())
            .map(str::to_owned)
            .ok_or_else(|| {
                PortError::new(
                    ErrorKind::Transient,
                    "register task definition",
                    &family,
                    "no ARN returned; run the command again",
                )
            })
    }

    async fn deregister(&self, arn: &str) -> Result<(), PortError> {
        match self
            .ctx
            .clients
            .ecs
            .deregister_task_definition()
            .task_definition(arn)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                let err = port_error("deregister task definition", arn, e);
                // Already deregistered, or already deleted by an earlier removal that stopped
                // before the service's record was gone (the service still names the revision).
                let message = err.message.to_ascii_lowercase();
                let gone = err.kind == ErrorKind::NotFound
                    || message.contains("inactive")
                    || message.contains("does not exist")
                    || message.contains("delete_in_progress")
                    || message.contains("unable to describe task definition");
                if gone { Ok(()) } else { Err(err) }
            }
        }
    }

    /// Deletes deregistered (INACTIVE) revisions for good, so that a removed version leaves no
    /// task definition behind. A revision already deleted is not a failure.
    async fn delete_revisions(&self, arns: &[String]) -> Result<(), PortError> {
        // DeleteTaskDefinitions takes at most ten revisions per call.
        for batch in arns.chunks(10) {
            let out = self
                .ctx
                .clients
                .ecs
                .delete_task_definitions()
                .set_task_definitions(Some(batch.to_vec()))
                .send()
                .await
                .map_err(|e| port_error("delete task definitions", &batch.join(", "), e))?;
            for failure in out.failures() {
                let reason = failure.reason().unwrap_or("no reason given");
                let lower = reason.to_ascii_lowercase();
                if lower.contains("does not exist") || lower.contains("delete_in_progress") {
                    continue;
                }
                return Err(PortError::new(
                    ErrorKind::Conflict,
                    "delete task definition",
                    failure.arn().unwrap_or("?"),
                    reason,
                ));
            }
        }
        Ok(())
    }

    /// Every revision of the family tagged with `id` that still exists, ACTIVE or deregistered
    /// (used when the service is gone and cannot say which revision it ran; a removal stopped
    /// between deregistering and deleting leaves an INACTIVE one).
    async fn revisions_of(&self, id: &DeploymentId) -> Result<Vec<String>, PortError> {
        let family = flotilla_core::names::task_family(&self.ctx.name);
        let mut arns = Vec::new();
        for status in [TaskDefinitionStatus::Active, TaskDefinitionStatus::Inactive] {
            let mut pages = self
                .ctx
                .clients
                .ecs
                .list_task_definitions()
                .family_prefix(&family)
                .status(status)
                .into_paginator()
                .send();
            while let Some(page) = pages.next().await {
                let page = page.map_err(|e| port_error("list task definitions", &family, e))?;
                arns.extend(page.task_definition_arns().iter().cloned());
            }
        }
        let mut mine = Vec::new();
        for arn in arns {
            if self.revision_of(&arn).await?.as_ref() == Some(id) {
                mine.push(arn);
            }
        }
        Ok(mine)
    }

    /// Running task ids per service name, from one cluster-wide listing.
    async fn running_tasks(&self) -> Result<HashMap<String, Vec<InstanceId>>, PortError> {
        let arns = self
            .task_arns(DesiredStatus::Running, None, usize::MAX, "list tasks")
            .await?;
        let mut by_service: HashMap<String, Vec<InstanceId>> = HashMap::new();
        for task in self.describe_tasks(&arns, "describe tasks").await? {
            let (Some(group), Some(arn)) = (task.group(), task.task_arn()) else {
                continue;
            };
            let Some(service) = group.strip_prefix("service:") else {
                continue;
            };
            if let Ok(id) = InstanceId::new(arn_tail(arn)) {
                by_service.entry(service.to_owned()).or_default().push(id);
            }
        }
        Ok(by_service)
    }

    /// The tasks of `arns`, one `DescribeTasks` per hundred.
    async fn describe_tasks(&self, arns: &[String], what: &str) -> Result<Vec<Task>, PortError> {
        let mut tasks = Vec::new();
        for batch in arns.chunks(DESCRIBE_TASKS_BATCH) {
            let out = self
                .ctx
                .clients
                .ecs
                .describe_tasks()
                .cluster(self.cluster())
                .set_tasks(Some(batch.to_vec()))
                .send()
                .await
                .map_err(|e| port_error(what, self.cluster(), e))?;
            tasks.extend(out.tasks().iter().cloned());
        }
        Ok(tasks)
    }

    /// Why each of `services`' recently stopped tasks stopped, newest first, at most
    /// [`STOPPED_TASKS`] per service: one `ListTasks` (by service when there is one) and one
    /// `DescribeTasks` per hundred stopped tasks.
    async fn stopped_tasks(
        &self,
        services: &[String],
    ) -> Result<HashMap<String, Vec<String>>, PortError> {
        let mut out: HashMap<String, Vec<String>> = HashMap::new();
        if services.is_empty() {
            return Ok(out);
        }
        // By service when there is one; a deleted service (a deploy that just gave up) is not
        // found by name any more, but its stopped tasks are still in the cluster for a while.
        let arns = match services {
            [only] => match self.stopped_task_arns(Some(only)).await {
                Err(e) if e.kind == ErrorKind::NotFound => self.stopped_task_arns(None).await?,
                other => other?,
            },
            _ => self.stopped_task_arns(None).await?,
        };
        let mut tasks: Vec<(String, Task)> = Vec::new();
        for task in self.describe_tasks(&arns, "describe stopped tasks").await? {
            let Some(service) = task.group().and_then(|g| g.strip_prefix("service:")) else {
                continue;
            };
            if services.iter().any(|s| s == service) {
                tasks.push((service.to_owned(), task.clone()));
            }
        }
        let when = |t: &Task| t.stopped_at().or(t.created_at()).map(|d| d.as_nanos());
        tasks.sort_by_key(|(_, t)| std::cmp::Reverse(when(t)));
        for (service, task) in tasks {
            let lines = out.entry(service).or_default();
            if lines.len() < STOPPED_TASKS {
                lines.push(describe_stopped(&task));
            }
        }
        Ok(out)
    }

    /// The ARNs of stopped tasks, of one service or the whole cluster, at most
    /// [`STOPPED_PAGES`] pages.
    async fn stopped_task_arns(&self, service: Option<&str>) -> Result<Vec<String>, PortError> {
        self.task_arns(
            DesiredStatus::Stopped,
            service,
            STOPPED_PAGES,
            "list stopped tasks",
        )
        .await
    }

    /// The ARNs of the cluster's tasks in `status`, of one service or all, at most `max_pages`
    /// pages of `ListTasks`.
    async fn task_arns(
        &self,
        status: DesiredStatus,
        service: Option<&str>,
        max_pages: usize,
        what: &str,
    ) -> Result<Vec<String>, PortError> {
        let mut arns = Vec::new();
        let mut pages = self
            .ctx
            .clients
            .ecs
            .list_tasks()
            .cluster(self.cluster())
            .desired_status(status)
            .set_service_name(service.map(str::to_owned))
            .into_paginator()
            .send();
        for _ in 0..max_pages {
            let Some(page) = pages.next().await else {
                break;
            };
            let page = page.map_err(|e| port_error(what, self.cluster(), e))?;
            arns.extend(page.task_arns().iter().cloned());
        }
        Ok(arns)
    }

    /// The events of `id`'s log streams in `group` since `earliest` (milliseconds), oldest first,
    /// those matching `pattern` (a CloudWatch filter pattern) when one is given: at most `pages`
    /// pages. `None` when the log group does not exist.
    async fn log_events(
        &self,
        group: &str,
        id: &DeploymentId,
        earliest: u64,
        pattern: Option<&str>,
        pages: usize,
    ) -> Result<Option<Vec<agent_reports::LogEvent>>, PortError> {
        let mut events = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..pages {
            let resp = self
                .ctx
                .clients
                .logs
                .filter_log_events()
                .log_group_name(group)
                .log_stream_name_prefix(format!("{id}/"))
                .set_filter_pattern(pattern.map(str::to_owned))
                .start_time(i64::try_from(earliest).unwrap_or(i64::MAX))
                .set_next_token(token.take())
                .send()
                .await;
            let resp = match resp {
                Ok(r) => r,
                Err(e) => {
                    let err = port_error("read logs", group, e);
                    if err.kind == ErrorKind::NotFound {
                        return Ok(None);
                    }
                    return Err(err);
                }
            };
            events.extend(resp.events().iter().map(|e| agent_reports::LogEvent {
                stream: e.log_stream_name().unwrap_or("").to_owned(),
                at: Timestamp::from_millis(e.timestamp().map_or(0, |t| t.max(0) as u64)),
                message: e.message().unwrap_or("").to_owned(),
            }));
            match resp.next_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_owned()),
                _ => break,
            }
        }
        Ok(Some(events))
    }

    /// Healthy targets in the target group, or `None` when it no longer exists (deleted by hand, or
    /// by a removal that stopped half way): that version has no healthy targets, and every reaper
    /// pass and `status` must go on rather than fail on it until someone notices.
    /// The service's desired count, as it is (no change to its scaling).
    async fn set_desired_count(&self, id: &DeploymentId, desired: u32) -> Result<(), PortError> {
        let name = self.ctx.service_name(id);
        self.ctx
            .clients
            .ecs
            .update_service()
            .cluster(self.cluster())
            .service(&name)
            .desired_count(desired as i32)
            .send()
            .await
            .map_err(|e| port_error("scale service", &name, e))?;
        Ok(())
    }

    async fn healthy_targets(&self, tg_arn: &str) -> Result<Option<u32>, PortError> {
        let out = match self
            .ctx
            .clients
            .elb
            .describe_target_health()
            .target_group_arn(tg_arn)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) => {
                let err = port_error("describe target health", tg_arn, e);
                return if err.kind == ErrorKind::NotFound {
                    Ok(None)
                } else {
                    Err(err)
                };
            }
        };
        Ok(Some(
            out.target_health_descriptions()
                .iter()
                .filter(|d| {
                    d.target_health().and_then(|h| h.state())
                        == Some(&TargetHealthStateEnum::Healthy)
                })
                .count() as u32,
        ))
    }
}

#[async_trait]
impl Compute for EcsCompute {
    async fn create(&self, spec: &VersionSpec) -> Result<(), PortError> {
        let name = self.ctx.service_name(&spec.id);
        if let Some(service) = self.describe_one(&spec.id).await? {
            match service.status() {
                Some("ACTIVE") => {
                    // An earlier attempt may have stopped between the service and its scaling.
                    if let Some(scaling) = &self.ctx.task.autoscaling
                        && let Some(tg) = self.ctx.find_tg(&spec.id).await?
                    {
                        crate::scaling::enable(&self.ctx, scaling, &spec.id, &tg).await?;
                    }
                    return Ok(());
                }
                Some("DRAINING") => {
                    return Err(PortError::new(
                        ErrorKind::Conflict,
                        "create service",
                        &name,
                        "a service of this name is still being deleted; wait a minute and run again",
                    ));
                }
                _ => {}
            }
        }
        let b = &self.ctx.baseline;
        if b.subnets.is_empty() || b.security_groups.is_empty() {
            return Err(PortError::new(
                ErrorKind::Invalid,
                "create service",
                &name,
                "the baseline's private subnets and service security group are not configured; \
                 run `flotilla baseline up` or set [aws] subnets and security_groups",
            ));
        }
        let tg = self.ctx.find_tg(&spec.id).await?.ok_or_else(|| {
            PortError::new(
                ErrorKind::NotFound,
                "create service",
                &name,
                "the version's target group does not exist; its affinity must be installed first",
            )
        })?;
        let task_definition = match self.reusable_revision(&spec.id).await? {
            Some(arn) => arn,
            None => self.register(spec).await?,
        };
        let strategy = capacity_strategy(self.ctx.task.capacity, &name)?;
        let created = self
            .ctx
            .clients
            .ecs
            .create_service()
            .cluster(self.cluster())
            .service_name(&name)
            .task_definition(&task_definition)
            .desired_count(spec.instances as i32)
            .set_launch_type(strategy.is_empty().then_some(LaunchType::Fargate))
            .set_capacity_provider_strategy((!strategy.is_empty()).then_some(strategy))
            .network_configuration(
                NetworkConfiguration::builder()
                    .awsvpc_configuration(
                        AwsVpcConfiguration::builder()
                            .set_subnets(Some(b.subnets.clone()))
                            .set_security_groups(Some(b.security_groups.clone()))
                            .assign_public_ip(AssignPublicIp::Disabled)
                            .build()
                            .map_err(|e| {
                                PortError::new(
                                    ErrorKind::Invalid,
                                    "create service",
                                    &name,
                                    e.to_string(),
                                )
                            })?,
                    )
                    .build(),
            )
            .load_balancers(
                LoadBalancer::builder()
                    .target_group_arn(&tg)
                    .container_name(CONTAINER_NAME)
                    .container_port(i32::from(self.ctx.task.container_port))
                    .build(),
            )
            .health_check_grace_period_seconds(self.ctx.task.health_check_grace_seconds as i32)
            // No shell into running tasks unless someone decides so on purpose.
            .enable_execute_command(self.ctx.task.enable_execute_command)
            .enable_ecs_managed_tags(true)
            .propagate_tags(PropagateTags::Service)
            .tags(ecs_tag(TAG_NAME, self.ctx.name.as_str()))
            .tags(ecs_tag(TAG_ID, spec.id.as_str()))
            .tags(ecs_tag(TAG_STATE, "deploying"))
            .send()
            .await;
        let created = match created {
            Ok(_) => Ok(()),
            // Someone created it between our look and our create: it exists, which is the goal.
            Err(e)
                if code_of(&e) == Some("InvalidParameterException")
                    && format!("{e:?}").contains("idempotent") =>
            {
                Ok(())
            }
            Err(e) => Err(port_error("create service", &name, e)),
        };
        created?;
        if let Some(scaling) = &self.ctx.task.autoscaling {
            crate::scaling::enable(&self.ctx, scaling, &spec.id, &tg).await?;
        }
        Ok(())
    }

    async fn scale(&self, id: &DeploymentId, desired: u32) -> Result<(), PortError> {
        if desired == 0 {
            // Autoscaling would bring the version back to its minimum.
            crate::scaling::disable(&self.ctx, id).await?;
        }
        self.set_desired_count(id, desired).await
    }

    async fn delete(&self, id: &DeploymentId) -> Result<(), PortError> {
        let name = self.ctx.service_name(id);
        let service = self.describe_one(id).await?;
        let revisions = match service.as_ref().and_then(|s| s.task_definition()) {
            Some(arn) => vec![arn.to_owned()],
            None => self.revisions_of(id).await?,
        };
        crate::scaling::disable(&self.ctx, id).await?;
        if let Some(s) = service.as_ref().filter(|s| exists(s)) {
            if s.desired_count() > 0 {
                // Its scaling is gone already (above).
                self.set_desired_count(id, 0).await.or_else(|e| {
                    if e.kind == ErrorKind::NotFound {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })?;
            }
            match self
                .ctx
                .clients
                .ecs
                .delete_service()
                .cluster(self.cluster())
                .service(&name)
                .force(true)
                .send()
                .await
            {
                Ok(_) => {}
                Err(e) => {
                    let err = port_error("delete service", &name, e);
                    if err.kind != ErrorKind::NotFound {
                        return Err(err);
                    }
                }
            }
        }
        for arn in &revisions {
            self.deregister(arn).await?;
        }
        self.delete_revisions(&revisions).await
    }

    async fn observe(
        &self,
        ids: &[DeploymentId],
    ) -> Result<BTreeMap<DeploymentId, ComputeStatus>, PortError> {
        let names: Vec<String> = ids.iter().map(|id| self.ctx.service_name(id)).collect();
        let services = self.describe(&names).await?;
        let mut out = BTreeMap::new();
        let mut any_running = false;
        for (id, name) in ids.iter().zip(&names) {
            let Some(s) = services.get(name).filter(|s| exists(s)) else {
                continue;
            };
            let desired = s.desired_count().max(0) as u32;
            let running = s.running_count().max(0) as u32;
            any_running |= running > 0;
            let healthy = match s
                .load_balancers()
                .first()
                .and_then(|lb| lb.target_group_arn())
            {
                Some(tg) if desired > 0 || running > 0 => match self.healthy_targets(tg).await? {
                    Some(healthy) => {
                        self.ctx.remember_tg(id, tg);
                        healthy
                    }
                    None => {
                        self.ctx.forget_tg(id);
                        0
                    }
                },
                _ => 0,
            };
            out.insert(
                id.clone(),
                ComputeStatus {
                    desired,
                    running,
                    healthy,
                    instances: Vec::new(),
                    sessions: None,
                    stopped: Vec::new(),
                    problems: Vec::new(),
                    client_blocked_by_csp: 0,
                },
            );
        }
        if any_running {
            let mut tasks = self.running_tasks().await?;
            for (id, status) in out.iter_mut() {
                if let Some(mut t) = tasks.remove(&self.ctx.service_name(id)) {
                    t.sort();
                    status.instances = t;
                }
            }
        }
        Ok(out)
    }

    async fn list(&self) -> Result<Vec<DeploymentId>, PortError> {
        let prefix = format!("{}-", self.ctx.name);
        let mut candidates = Vec::new();
        let mut pages = self
            .ctx
            .clients
            .ecs
            .list_services()
            .cluster(self.cluster())
            .max_results(100)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| port_error("list services", self.cluster(), e))?;
            for arn in page.service_arns() {
                let name = arn_tail(arn);
                let Some(rest) = name.strip_prefix(&prefix) else {
                    continue;
                };
                if DeploymentId::new(rest).is_ok() {
                    candidates.push(name.to_owned());
                }
            }
        }
        let services = self.describe(&candidates).await?;
        let mut ids: Vec<DeploymentId> = services
            .values()
            .filter(|s| exists(s))
            .filter(|s| {
                s.tags()
                    .iter()
                    .any(|t| t.key() == Some(TAG_NAME) && t.value() == Some(self.ctx.name.as_str()))
            })
            .filter_map(|s| {
                let id = s.service_name()?.strip_prefix(&prefix)?;
                DeploymentId::new(id).ok()
            })
            .collect();
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    async fn stopped(
        &self,
        ids: &[DeploymentId],
    ) -> Result<BTreeMap<DeploymentId, Vec<String>>, PortError> {
        let names: Vec<String> = ids.iter().map(|id| self.ctx.service_name(id)).collect();
        let mut by_service = self.stopped_tasks(&names).await?;
        Ok(ids
            .iter()
            .zip(&names)
            .filter_map(|(id, name)| Some((id.clone(), by_service.remove(name)?)))
            .collect())
    }

    /// A window is measured by time alone (CloudWatch's statistics over it): nothing to read at
    /// its start.
    async fn window_marks(
        &self,
        _ids: &[DeploymentId],
    ) -> Result<BTreeMap<DeploymentId, flotilla_core::canary::Counters>, PortError> {
        Ok(BTreeMap::new())
    }

    async fn window(
        &self,
        ids: &[DeploymentId],
        _marks: &BTreeMap<DeploymentId, flotilla_core::canary::Counters>,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Measured, PortError> {
        Ok(Measured {
            stats: crate::metrics::window(&self.ctx, ids, from, to).await?,
            marks: BTreeMap::new(),
        })
    }

    async fn problems(
        &self,
        running: &BTreeMap<DeploymentId, Vec<InstanceId>>,
    ) -> Result<BTreeMap<DeploymentId, Vec<String>>, PortError> {
        let Some(group) = self.ctx.baseline.log_group.as_deref() else {
            return Ok(BTreeMap::new());
        };
        let window = agent_reports::lookback(Duration::from_secs(self.ctx.task.drain_poll_seconds));
        let now = SystemClock.now();
        let mut out = BTreeMap::new();
        for (id, instances) in running {
            let earliest = id.created_at().as_millis().max(
                now.as_millis()
                    .saturating_sub(u64::try_from(window.as_millis()).unwrap_or(u64::MAX)),
            );
            // One filtered read; a missing log group reads as no reports.
            let events = self
                .log_events(
                    group,
                    id,
                    earliest,
                    Some(agent_reports::filter_pattern()),
                    AGENT_REPORT_PAGES,
                )
                .await?
                .unwrap_or_default();
            let lines = agent_reports::drain_source_problems(&events, instances);
            if !lines.is_empty() {
                out.insert(id.clone(), lines);
            }
        }
        Ok(out)
    }

    async fn recent_logs(&self, id: &DeploymentId, lines: usize) -> Result<Vec<String>, PortError> {
        let mut out = Vec::new();
        // Why tasks stopped comes first: an image that cannot be pulled, a binary that cannot run
        // or a crash shows there and nowhere in the container's own log.
        let name = self.ctx.service_name(id);
        match self.stopped_tasks(std::slice::from_ref(&name)).await {
            Ok(mut stopped) => {
                for line in stopped.remove(&name).unwrap_or_default() {
                    out.push(format!("[stopped] {line}"));
                }
            }
            Err(e) => out.push(format!("[stopped] stopped tasks could not be read: {e}")),
        }
        if let Some(s) = self.describe_one(id).await? {
            for e in s.events().iter().take(SERVICE_EVENTS).rev() {
                if let Some(m) = e.message() {
                    out.push(format!("[ecs] {m}"));
                }
            }
        }
        let Some(group) = self.ctx.baseline.log_group.as_deref() else {
            out.push("[logs] no log group configured; container logs are not available".to_owned());
            return Ok(out);
        };
        // A few pages are plenty for the tail of a failing deploy's logs.
        let Some(events) = self
            .log_events(group, id, id.created_at().as_millis(), None, LOG_PAGES)
            .await?
        else {
            out.push(format!("[logs] log group {group} does not exist"));
            return Ok(out);
        };
        let events: Vec<String> = events
            .iter()
            .map(|e| {
                let short: String = arn_tail(&e.stream).chars().take(8).collect();
                format!("[{short}] {}", e.message.trim_end())
            })
            .collect();
        if events.is_empty() {
            out.push(format!("[logs] no container output yet in {group}"));
        }
        let skip = events.len().saturating_sub(lines);
        out.extend(events.into_iter().skip(skip));
        Ok(out)
    }
}

/// The SDK's capacity provider strategy for `capacity`; empty for the launch type `FARGATE`.
fn capacity_strategy(
    capacity: crate::settings::Capacity,
    service: &str,
) -> Result<Vec<aws_sdk_ecs::types::CapacityProviderStrategyItem>, PortError> {
    capacity
        .strategy()
        .into_iter()
        .map(|share| {
            aws_sdk_ecs::types::CapacityProviderStrategyItem::builder()
                .capacity_provider(share.provider)
                .base(share.base as i32)
                .weight(share.weight as i32)
                .build()
                .map_err(|e| {
                    PortError::new(ErrorKind::Invalid, "create service", service, e.to_string())
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use aws_sdk_ecs::types::{Container, TaskStopCode};
    use aws_smithy_types::DateTime;

    use super::*;

    #[test]
    fn a_stopped_task_says_why_in_one_line() {
        let arn = "arn:aws:ecs:us-east-1:123456789012:task/flotilla-shop/0f1e2d3c4b5a69788796a5b4c3d2e1f0";
        let check = |task: Task, want: &str| assert_eq!(describe_stopped(&task), want);
        check(
            Task::builder()
                .task_arn(arn)
                .stopped_at(DateTime::from_secs(1_796_000_000))
                .stopped_reason("Essential container in task exited")
                .stop_code(TaskStopCode::EssentialContainerExited)
                .containers(
                    Container::builder()
                        .name("app")
                        .exit_code(127)
                        .reason("exec /usr/local/bin/flotilla: exec format error")
                        .build(),
                )
                .build(),
            "task 0f1e2d3c stopped at 2026-11-30T00:53:20Z: Essential container in task exited \
             (EssentialContainerExited); app exited with code 127: exec /usr/local/bin/flotilla: \
             exec format error",
        );
        check(
            Task::builder()
                .task_arn(arn)
                .stopped_reason(
                    "CannotPullContainerError: pull image manifest has been retried 5 time(s)",
                )
                .stop_code(TaskStopCode::TaskFailedToStart)
                .containers(Container::builder().name("app").build())
                .build(),
            "task 0f1e2d3c stopped: CannotPullContainerError: pull image manifest has been \
             retried 5 time(s) (TaskFailedToStart)",
        );
        check(
            Task::builder()
                .containers(Container::builder().name("app").exit_code(0).build())
                .build(),
            "task ? stopped; app exited with code 0",
        );
    }
}
