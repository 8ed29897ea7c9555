//! Autoscaling of each version's ECS service with Application Auto Scaling: one scalable target
//! per version (its service's desired count, between `[aws] min_count` and `max_count`) and
//! target-tracking policies on CPU, memory and, if asked, requests per target.
//!
//! A version that drains takes no new sessions, so more tasks would only cost: its target's
//! scale-out is suspended when its state leaves `active` (scale-in stays on; the agent protects
//! the tasks that still hold sessions) and resumed if it becomes active again (a rollback). A
//! version scaled to zero or deleted loses its target first, so autoscaling never brings a
//! reaped version back to its minimum.
//!
//! The decisions (policies, labels, suspension by state) are pure and tested here; the calls are
//! thin functions over the shared [`Ctx`].

use aws_sdk_applicationautoscaling::types::{
    MetricType, PolicyType, PredefinedMetricSpecification, ScalableDimension, ServiceNamespace,
    SuspendedState, TargetTrackingScalingPolicyConfiguration,
};
use flotilla_core::{DeploymentId, VersionState};
use flotilla_engine::ports::{ErrorKind, PortError};

use crate::ctx::Ctx;
use crate::error::port_error;

/// Target-tracking autoscaling of each version's service (`[aws] max_count` set).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Autoscaling {
    /// Fewest tasks (`[aws] min_count`; `desired_count` when unset).
    pub min: u32,
    /// Most tasks (`[aws] max_count`).
    pub max: u32,
    /// Average CPU utilisation to hold, in percent (`[aws] scale_cpu_percent`); `None`: no policy.
    pub cpu_percent: Option<u32>,
    /// Average memory utilisation to hold, in percent (`[aws] scale_memory_percent`).
    pub memory_percent: Option<u32>,
    /// Requests per task per minute to hold (`[aws] scale_requests_per_target`).
    pub requests_per_target: Option<u32>,
}

/// One target-tracking policy to put.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicySpec {
    /// Its name, unique per scalable target.
    pub name: String,
    /// The predefined metric it tracks.
    pub metric: MetricType,
    /// The metric's resource label (requests per target only).
    pub label: Option<String>,
    /// The value to hold.
    pub target: f64,
}

/// The scalable target's resource id: `service/<cluster>/<service>`.
pub fn resource_id(cluster: &str, service: &str) -> String {
    format!("service/{cluster}/{service}")
}

/// The `ALBRequestCountPerTarget` resource label, `app/<lb>/<id>/targetgroup/<tg>/<id>`, from
/// the listener's ARN and the target group's ARN; `None` if either is not shaped like one.
pub fn request_count_label(listener_arn: &str, target_group_arn: &str) -> Option<String> {
    let listener = listener_arn.split_once(":listener/")?.1;
    let mut parts = listener.split('/');
    let (kind, lb, lb_id) = (parts.next()?, parts.next()?, parts.next()?);
    if kind != "app" || lb.is_empty() || lb_id.is_empty() {
        return None;
    }
    let tg = target_group_arn.split_once(":targetgroup/")?.1;
    let (tg_name, tg_id) = tg.split_once('/')?;
    if tg_name.is_empty() || tg_id.is_empty() || tg_id.contains('/') {
        return None;
    }
    Some(format!("app/{lb}/{lb_id}/targetgroup/{tg_name}/{tg_id}"))
}

/// The policies of a version's service named `service`; requests per target only when its
/// label is known.
pub fn policies(scaling: &Autoscaling, service: &str, label: Option<&str>) -> Vec<PolicySpec> {
    let mut out = Vec::new();
    if let Some(cpu) = scaling.cpu_percent {
        out.push(PolicySpec {
            name: format!("{service}-cpu"),
            metric: MetricType::EcsServiceAverageCpuUtilization,
            label: None,
            target: f64::from(cpu),
        });
    }
    if let Some(memory) = scaling.memory_percent {
        out.push(PolicySpec {
            name: format!("{service}-memory"),
            metric: MetricType::EcsServiceAverageMemoryUtilization,
            label: None,
            target: f64::from(memory),
        });
    }
    if let (Some(requests), Some(label)) = (scaling.requests_per_target, label) {
        out.push(PolicySpec {
            name: format!("{service}-requests"),
            metric: MetricType::AlbRequestCountPerTarget,
            label: Some(label.to_owned()),
            target: f64::from(requests),
        });
    }
    out
}

/// Whether a version in `state` may scale out: only while it is the one taking fresh sessions
/// (or about to be).
pub fn scale_out_allowed(state: VersionState) -> bool {
    matches!(state, VersionState::Deploying | VersionState::Active)
}

/// Whether an error says the scalable target does not exist: AWS answers
/// `ObjectNotFoundException`; some emulators a `ValidationException` "No scalable target found".
fn is_missing_target(e: &PortError) -> bool {
    e.kind == ErrorKind::NotFound || e.message.contains("No scalable target found")
}

fn not_found_is_fine(result: Result<(), PortError>) -> Result<(), PortError> {
    match result {
        Err(e) if is_missing_target(&e) => Ok(()),
        other => other,
    }
}

/// Registers `id`'s scalable target and puts its policies. Idempotent (both calls replace).
pub(crate) async fn enable(
    ctx: &Ctx,
    scaling: &Autoscaling,
    id: &DeploymentId,
    target_group_arn: &str,
) -> Result<(), PortError> {
    let service = ctx.service_name(id);
    let resource = resource_id(&ctx.baseline.cluster, &service);
    ctx.clients
        .scaling
        .register_scalable_target()
        .service_namespace(ServiceNamespace::Ecs)
        .scalable_dimension(ScalableDimension::EcsServiceDesiredCount)
        .resource_id(&resource)
        .min_capacity(scaling.min as i32)
        .max_capacity(scaling.max as i32)
        .send()
        .await
        .map_err(|e| port_error("register scalable target", &resource, e))?;
    let label = request_count_label(&ctx.baseline.listener_arn, target_group_arn);
    if scaling.requests_per_target.is_some() && label.is_none() {
        tracing::warn!(
            listener = %ctx.baseline.listener_arn,
            target_group = %target_group_arn,
            "no requests-per-target policy: the listener or target group ARN has an unknown shape"
        );
    }
    for policy in policies(scaling, &service, label.as_deref()) {
        let mut metric =
            PredefinedMetricSpecification::builder().predefined_metric_type(policy.metric.clone());
        if let Some(label) = &policy.label {
            metric = metric.resource_label(label);
        }
        let metric = metric.build().map_err(|e| {
            PortError::new(
                ErrorKind::Invalid,
                "put scaling policy",
                &policy.name,
                e.to_string(),
            )
        })?;
        let configuration = TargetTrackingScalingPolicyConfiguration::builder()
            .target_value(policy.target)
            .predefined_metric_specification(metric)
            .build()
            .map_err(|e| {
                PortError::new(
                    ErrorKind::Invalid,
                    "put scaling policy",
                    &policy.name,
                    e.to_string(),
                )
            })?;
        ctx.clients
            .scaling
            .put_scaling_policy()
            .policy_name(&policy.name)
            .service_namespace(ServiceNamespace::Ecs)
            .scalable_dimension(ScalableDimension::EcsServiceDesiredCount)
            .resource_id(&resource)
            .policy_type(PolicyType::TargetTrackingScaling)
            .target_tracking_scaling_policy_configuration(configuration)
            .send()
            .await
            .map_err(|e| port_error("put scaling policy", &policy.name, e))?;
    }
    Ok(())
}

/// Suspends or resumes scale-out of `id`'s scalable target as `state` asks; a version without
/// one (no autoscaling, or not created yet) is left alone. One describe per state change.
pub(crate) async fn follow_state(
    ctx: &Ctx,
    id: &DeploymentId,
    state: VersionState,
) -> Result<(), PortError> {
    let resource = resource_id(&ctx.baseline.cluster, &ctx.service_name(id));
    let found = ctx
        .clients
        .scaling
        .describe_scalable_targets()
        .service_namespace(ServiceNamespace::Ecs)
        .scalable_dimension(ScalableDimension::EcsServiceDesiredCount)
        .resource_ids(&resource)
        .send()
        .await
        .map_err(|e| port_error("describe scalable target", &resource, e))?;
    let Some(target) = found.scalable_targets().first() else {
        return Ok(());
    };
    let suspend = !scale_out_allowed(state);
    let now = target
        .suspended_state()
        .and_then(|s| s.dynamic_scaling_out_suspended())
        .unwrap_or(false);
    if now == suspend {
        return Ok(());
    }
    ctx.clients
        .scaling
        .register_scalable_target()
        .service_namespace(ServiceNamespace::Ecs)
        .scalable_dimension(ScalableDimension::EcsServiceDesiredCount)
        .resource_id(&resource)
        .suspended_state(
            SuspendedState::builder()
                .dynamic_scaling_out_suspended(suspend)
                .build(),
        )
        .send()
        .await
        .map_err(|e| port_error("suspend scale-out of", &resource, e))?;
    tracing::info!(%id, state = state.as_str(), scale_out_suspended = suspend, "scaling follows the version's state");
    Ok(())
}

/// Removes `id`'s scaling policies and scalable target; none is fine. AWS deletes a target's
/// policies (and their alarms) with it, but deleting them first by name leaves nothing behind
/// on any implementation of the API.
pub(crate) async fn disable(ctx: &Ctx, id: &DeploymentId) -> Result<(), PortError> {
    let resource = resource_id(&ctx.baseline.cluster, &ctx.service_name(id));
    let policies = ctx
        .clients
        .scaling
        .describe_scaling_policies()
        .service_namespace(ServiceNamespace::Ecs)
        .scalable_dimension(ScalableDimension::EcsServiceDesiredCount)
        .resource_id(&resource)
        .send()
        .await
        .map_err(|e| port_error("describe scaling policies of", &resource, e))?;
    for policy in policies.scaling_policies() {
        not_found_is_fine(
            ctx.clients
                .scaling
                .delete_scaling_policy()
                .policy_name(policy.policy_name())
                .service_namespace(ServiceNamespace::Ecs)
                .scalable_dimension(ScalableDimension::EcsServiceDesiredCount)
                .resource_id(&resource)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| port_error("delete scaling policy", policy.policy_name(), e)),
        )?;
    }
    not_found_is_fine(
        ctx.clients
            .scaling
            .deregister_scalable_target()
            .service_namespace(ServiceNamespace::Ecs)
            .scalable_dimension(ScalableDimension::EcsServiceDesiredCount)
            .resource_id(&resource)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| port_error("deregister scalable target", &resource, e)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scaling() -> Autoscaling {
        Autoscaling {
            min: 2,
            max: 10,
            cpu_percent: Some(70),
            memory_percent: Some(80),
            requests_per_target: Some(1000),
        }
    }

    const LISTENER: &str = "arn:aws:elasticloadbalancing:eu-west-1:123456789012:listener/app/shop-alb/50dc6c495c0c9188/f2f7dc8efc522ab2";
    const TG: &str =
        "arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/shop-v1/73e2d6bc24d8a067";

    #[test]
    fn the_request_count_label_joins_the_load_balancer_and_the_target_group() {
        assert_eq!(
            request_count_label(LISTENER, TG).as_deref(),
            Some("app/shop-alb/50dc6c495c0c9188/targetgroup/shop-v1/73e2d6bc24d8a067")
        );
        assert_eq!(request_count_label("arn:x", TG), None);
        assert_eq!(request_count_label(LISTENER, "arn:x"), None);
        let network = LISTENER.replace("listener/app/", "listener/net/");
        assert_eq!(
            request_count_label(&network, TG),
            None,
            "only application load balancers"
        );
    }

    #[test]
    fn policies_are_one_per_metric_asked_for() {
        let all = policies(&scaling(), "shop-v1", Some("app/x/1/targetgroup/y/2"));
        let names: Vec<&str> = all.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["shop-v1-cpu", "shop-v1-memory", "shop-v1-requests"]);
        assert_eq!(all[0].metric, MetricType::EcsServiceAverageCpuUtilization);
        assert_eq!(all[0].target, 70.0);
        assert_eq!(all[1].target, 80.0);
        assert_eq!(all[2].label.as_deref(), Some("app/x/1/targetgroup/y/2"));
        // Without a label there is no requests policy; without a figure, no policy for it.
        assert_eq!(policies(&scaling(), "s", None).len(), 2);
        let cpu_only = Autoscaling {
            memory_percent: None,
            requests_per_target: None,
            ..scaling()
        };
        assert_eq!(policies(&cpu_only, "s", Some("l")).len(), 1);
    }

    #[test]
    fn only_a_deploying_or_active_version_scales_out() {
        for state in VersionState::ALL {
            let allowed = scale_out_allowed(state);
            assert_eq!(
                allowed,
                matches!(state, VersionState::Deploying | VersionState::Active),
                "{state:?}"
            );
        }
    }
}
