//! The reaper in the stack: its role (scoped to this deployment's services, rules, target groups,
//! task definitions and parameters), its log group, the Lambda running flotilla's `bootstrap`
//! binary on the `provided.al2023` runtime, and the EventBridge schedule that runs a pass.
//!
//! The Lambda and its schedule exist only once the `ReaperCodeKey` parameter is set: the code zip
//! lives in the stack's own artefact bucket, which must exist before anything can be uploaded.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::compute::drain_board_arn;
use super::{arn, ids};
use crate::cfn::{Resource, Template, get_att, if_, reference};
use crate::contract::{self, env, policy_env};
use crate::names;
use crate::options::BaselineOptions;
use crate::policy::{PolicyDocument, Statement, service_trust};

/// The reaper's memory, in MiB (a pass is a few dozen API calls).
const MEMORY_MIB: u32 = 256;

/// The Lambda timeout for a schedule of `interval_secs` ([`contract::reaper_timeout`], which the
/// reaper's lock lifetime follows too).
pub(crate) fn timeout_seconds(interval_secs: u64) -> u64 {
    contract::reaper_timeout(std::time::Duration::from_secs(interval_secs)).as_secs()
}

/// The EventBridge schedule expression for an interval in whole minutes.
pub(crate) fn schedule_expression(interval_secs: u64) -> String {
    match interval_secs / 60 {
        1 => "rate(1 minute)".to_owned(),
        n => format!("rate({n} minutes)"),
    }
}

pub(super) fn add(t: &mut Template, options: &BaselineOptions) {
    let name = &options.name;
    let cluster = names::cluster_name(name);
    let function_name = names::reaper_function_name(name);
    let params = names::parameter_arn_path(name);
    let routing_listener = if options.tls.has_tls() {
        ids::HTTPS_LISTENER
    } else {
        ids::HTTP_LISTENER
    };

    let policy = PolicyDocument::new(vec![
        Statement::allow(
            "ListClusterServicesAndTasks",
            &["ecs:ListServices", "ecs:ListTasks"],
            vec![json!("*")],
        )
        .when(json!({ "ArnEquals": { "ecs:cluster": get_att(ids::CLUSTER, "Arn") } })),
        Statement::allow(
            "ManageVersionServices",
            &[
                "ecs:DescribeServices",
                "ecs:UpdateService",
                "ecs:DeleteService",
                "ecs:TagResource",
                "ecs:UntagResource",
            ],
            vec![arn("ecs", &format!("service/{cluster}/*"))],
        ),
        // A draining version's scale-out is suspended; a retired one loses its scalable target
        // and policies (and with them their alarms). Scalable-target ARNs end in an id AWS
        // assigns, so the grant cannot name this deployment's.
        Statement::allow(
            "DescribeVersionAutoscaling",
            &[
                "application-autoscaling:DescribeScalableTargets",
                "application-autoscaling:DescribeScalingPolicies",
                "cloudwatch:DescribeAlarms",
            ],
            vec![json!("*")],
        ),
        Statement::allow(
            "RetireVersionAutoscaling",
            &[
                "application-autoscaling:RegisterScalableTarget",
                "application-autoscaling:DeregisterScalableTarget",
                "application-autoscaling:DeleteScalingPolicy",
            ],
            vec![arn("application-autoscaling", "scalable-target/*")],
        ),
        Statement::allow(
            "DeleteVersionAutoscalingAlarms",
            &["cloudwatch:DeleteAlarms"],
            vec![arn(
                "cloudwatch",
                &format!("alarm:TargetTracking-service/{cluster}/*"),
            )],
        ),
        Statement::allow(
            "DescribeVersionTasks",
            &["ecs:DescribeTasks"],
            vec![arn("ecs", &format!("task/{cluster}/*"))],
        ),
        // These task-definition actions accept no resource narrower than `*`.
        Statement::allow(
            "RetireTaskDefinitions",
            &[
                "ecs:ListTaskDefinitions",
                "ecs:DescribeTaskDefinition",
                "ecs:DeregisterTaskDefinition",
            ],
            vec![json!("*")],
        ),
        // Deleting takes the revision's ARN: only the deployment's own family.
        Statement::allow(
            "DeleteTaskDefinitions",
            &["ecs:DeleteTaskDefinitions"],
            vec![arn(
                "ecs",
                &format!("task-definition/{}:*", names::task_family(name)),
            )],
        ),
        Statement::allow(
            "DiscardVersionImages",
            &["ecr:DescribeImages", "ecr:BatchDeleteImage"],
            vec![get_att(ids::REPOSITORY, "Arn")],
        ),
        // Describe calls on load balancers accept no resource narrower than `*`.
        Statement::allow(
            "DescribeRouting",
            &[
                "elasticloadbalancing:DescribeLoadBalancers",
                "elasticloadbalancing:DescribeListeners",
                "elasticloadbalancing:DescribeRules",
                "elasticloadbalancing:DescribeTargetGroups",
                "elasticloadbalancing:DescribeTargetHealth",
                "elasticloadbalancing:DescribeTags",
            ],
            vec![json!("*")],
        ),
        Statement::allow(
            "RetireVersionRules",
            &[
                "elasticloadbalancing:ModifyRule",
                "elasticloadbalancing:DeleteRule",
            ],
            vec![arn(
                "elasticloadbalancing",
                &format!(
                    "listener-rule/${{{}.LoadBalancerFullName}}/*",
                    ids::LOAD_BALANCER
                ),
            )],
        ),
        // A canary's steps, promotion and rollback, which the reaper drives on its schedule: the
        // listener's default action is the weighted forward between the two versions.
        Statement::allow(
            "SplitFreshSessions",
            &["elasticloadbalancing:ModifyListener"],
            vec![arn(
                "elasticloadbalancing",
                &format!(
                    "listener/${{{}.LoadBalancerFullName}}/*",
                    ids::LOAD_BALANCER
                ),
            )],
        ),
        // A canary is judged by its target group's metrics; `GetMetricData` accepts no resource
        // narrower than `*`.
        Statement::allow(
            "ReadTargetGroupMetrics",
            &["cloudwatch:GetMetricData"],
            vec![json!("*")],
        ),
        // Retiring a version whose rule went missing recreates that rule as a 410 (`CreateRule`
        // on the listener), tagged with the deployment name (`AddTags` on the new rule).
        Statement::allow(
            "RecreateRetiredRules",
            &["elasticloadbalancing:CreateRule"],
            vec![arn(
                "elasticloadbalancing",
                &format!(
                    "listener/${{{}.LoadBalancerFullName}}/*",
                    ids::LOAD_BALANCER
                ),
            )],
        ),
        Statement::allow(
            "TagRecreatedRules",
            &["elasticloadbalancing:AddTags"],
            vec![arn(
                "elasticloadbalancing",
                &format!(
                    "listener-rule/${{{}.LoadBalancerFullName}}/*",
                    ids::LOAD_BALANCER
                ),
            )],
        ),
        Statement::allow(
            "DeleteVersionTargetGroups",
            &["elasticloadbalancing:DeleteTargetGroup"],
            vec![arn(
                "elasticloadbalancing",
                &format!("targetgroup/{}/*", names::target_group_name_pattern(name)),
            )],
        ),
        Statement::allow(
            "DeploymentState",
            &[
                "ssm:GetParameter",
                "ssm:GetParameters",
                "ssm:GetParametersByPath",
                "ssm:PutParameter",
                "ssm:DeleteParameter",
                "ssm:DeleteParameters",
            ],
            vec![
                arn("ssm", &format!("parameter/{params}")),
                arn("ssm", &format!("parameter/{params}/*")),
            ],
        ),
        // The drain board: read, then written with If-Match; listing makes a missing board a
        // 404 rather than a 403.
        Statement::allow(
            "PublishDrainBoard",
            &["s3:GetObject", "s3:PutObject"],
            vec![drain_board_arn(name)],
        ),
        Statement::allow(
            "FindDrainBoard",
            &["s3:ListBucket"],
            vec![get_att(ids::ARTEFACT_BUCKET, "Arn")],
        ),
        Statement::allow(
            "WriteOwnLogs",
            &["logs:CreateLogStream", "logs:PutLogEvents"],
            vec![arn(
                "logs",
                &format!("log-group:{}:*", names::reaper_log_group_name(name)),
            )],
        ),
    ]);
    t.add(
        ids::REAPER_ROLE,
        Resource::new(
            "AWS::IAM::Role",
            json!({
                "Description": format!("flotilla {name}: the reaper retires drained versions"),
                "Path": names::reaper_role_path(name),
                "AssumeRolePolicyDocument": service_trust("lambda.amazonaws.com"),
                "Policies": [{ "PolicyName": "reap", "PolicyDocument": policy.to_json() }],
            }),
        ),
    );

    t.add(
        ids::REAPER_LOG_GROUP,
        Resource::new(
            "AWS::Logs::LogGroup",
            json!({
                "LogGroupName": names::reaper_log_group_name(name),
                "RetentionInDays": options.log_retention_days,
            }),
        )
        .skip_checkov(
            "CKV_AWS_158",
            "CloudWatch Logs encrypts every log group at rest already; the reaper logs resource \
             names and decisions, nothing secret.",
        ),
    );

    let mut variables: BTreeMap<&str, Value> =
        policy_env(options.reaper.interval, &options.reaper.policy)
            .into_iter()
            .map(|(k, v)| (k, json!(v)))
            .collect();
    variables.insert(env::DEPLOYMENT_NAME, json!(name.as_str()));
    variables.insert(env::CLUSTER, reference(ids::CLUSTER));
    variables.insert(env::LISTENER_ARN, reference(routing_listener));
    variables.insert(env::LOG_GROUP, reference(ids::LOG_GROUP));
    variables.insert(env::REPOSITORY, get_att(ids::REPOSITORY, "RepositoryUri"));
    variables.insert(env::DRAIN_BUCKET, reference(ids::ARTEFACT_BUCKET));
    variables.insert(env::AFFINITY_HEADER, json!(options.affinity_header));
    variables.insert(env::AFFINITY_QUERY, json!(options.affinity_query));
    variables.insert(env::STALE_STATUS, json!(options.stale_status.to_string()));

    let interval = options.reaper.interval.as_secs();
    t.add(
        ids::REAPER_FUNCTION,
        Resource::new(
            "AWS::Lambda::Function",
            json!({
                "FunctionName": function_name,
                "Description": format!("flotilla {name}: one reaper pass over the deployment's versions"),
                "Runtime": "provided.al2023",
                "Handler": "bootstrap",
                "Architectures": [options.reaper.architecture.as_lambda()],
                "MemorySize": MEMORY_MIB,
                "Timeout": timeout_seconds(interval),
                "Role": get_att(ids::REAPER_ROLE, "Arn"),
                "Code": {
                    "S3Bucket": if_(
                        ids::USE_ARTEFACT_BUCKET,
                        reference(ids::ARTEFACT_BUCKET),
                        reference(contract::PARAM_REAPER_CODE_BUCKET),
                    ),
                    "S3Key": reference(contract::PARAM_REAPER_CODE_KEY),
                },
                "Environment": { "Variables": variables },
            }),
        )
        .when(ids::HAS_REAPER_CODE)
        // The log group must exist first, or Lambda creates it without a retention.
        .depends_on(&[ids::REAPER_LOG_GROUP])
        .skip_checkov(
            "CKV_AWS_116",
            "A failed scheduled pass needs no dead-letter queue: the next pass starts from the \
             live state again, and failures raise the reaper-errors alarm.",
        )
        .skip_checkov(
            "CKV_AWS_117",
            "The reaper only calls AWS APIs; inside the VPC it would need ENIs and NAT for the \
             same calls, and slow down stack deletion while Lambda releases its ENIs.",
        )
        .skip_checkov(
            "CKV_AWS_115",
            "Passes are idempotent and the timeout keeps scheduled passes apart; reserving \
             concurrency fails in new accounts whose whole concurrency quota is 10.",
        )
        .skip_checkov(
            "CKV_AWS_173",
            "The environment holds only names, an ARN and durations, no secrets; the default \
             Lambda encryption at rest suffices.",
        ),
    );

    t.add(
        ids::REAPER_SCHEDULE,
        Resource::new(
            "AWS::Events::Rule",
            json!({
                "Name": names::reaper_schedule_name(name),
                "Description": format!("flotilla {name}: run a reaper pass"),
                "ScheduleExpression": schedule_expression(interval),
                "State": "ENABLED",
                "Targets": [{ "Id": "reaper", "Arn": get_att(ids::REAPER_FUNCTION, "Arn") }],
            }),
        )
        .when(ids::HAS_REAPER_CODE),
    );
    t.add(
        ids::REAPER_INVOKE_PERMISSION,
        Resource::new(
            "AWS::Lambda::Permission",
            json!({
                "Action": "lambda:InvokeFunction",
                "FunctionName": reference(ids::REAPER_FUNCTION),
                "Principal": "events.amazonaws.com",
                "SourceArn": get_att(ids::REAPER_SCHEDULE, "Arn"),
            }),
        )
        .when(ids::HAS_REAPER_CODE),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_and_timeout_follow_the_interval() {
        let check = |secs: u64, rate: &str, timeout: u64| {
            assert_eq!(schedule_expression(secs), rate);
            assert_eq!(timeout_seconds(secs), timeout);
        };
        check(60, "rate(1 minute)", 50);
        check(120, "rate(2 minutes)", 110);
        check(300, "rate(5 minutes)", 290);
        check(3600, "rate(60 minutes)", 300);
    }
}
