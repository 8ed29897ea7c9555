//! The IAM policy a deploying user or CI role needs (`flotilla aws deployer-policy`).
//!
//! It covers what `deploy`, `status`, `verify`, `rollback`, `drain`, `reap`, `logs` and `teardown`
//! of one deployment name do, on resources named after that name only: the baseline's names are
//! deterministic ([`crate::names`]), so the policy can be written before the stack exists.
//!
//! It deliberately does not cover `flotilla baseline up|down`: creating the baseline creates a
//! VPC, IAM roles and a load balancer, which needs administrator-level rights; run those as an
//! administrator (see `docs/aws.md`).

use flotilla_core::DeploymentName;
use serde_json::{Value, json};

use crate::names;
use crate::policy::{PolicyDocument, Statement};

/// The largest managed IAM policy AWS accepts, in characters (whitespace excluded).
pub const MANAGED_POLICY_MAX_CHARS: usize = 6_144;

/// Where the policy applies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeployerPolicyOptions {
    /// The deployment name.
    pub name: DeploymentName,
    /// The region, or `None` for any (`*`).
    pub region: Option<String>,
    /// The 12-digit account id, or `None` for any (`*`).
    pub account_id: Option<String>,
    /// The partition: `aws`, `aws-cn` or `aws-us-gov`.
    pub partition: String,
}

impl DeployerPolicyOptions {
    /// Options for `name` in any region and account of the `aws` partition.
    pub fn new(name: DeploymentName) -> Self {
        DeployerPolicyOptions {
            name,
            region: None,
            account_id: None,
            partition: "aws".to_owned(),
        }
    }

    fn arn(&self, service: &str, resource: &str) -> Value {
        let region = self.region.as_deref().unwrap_or("*");
        let account = self.account_id.as_deref().unwrap_or("*");
        json!(format!(
            "arn:{}:{service}:{region}:{account}:{resource}",
            self.partition
        ))
    }

    /// ARNs of services without a region (IAM) or without region and account (S3).
    fn global_arn(&self, service: &str, account: bool, resource: &str) -> Value {
        let account = if account {
            self.account_id.as_deref().unwrap_or("*")
        } else {
            ""
        };
        json!(format!(
            "arn:{}:{service}::{account}:{resource}",
            self.partition
        ))
    }
}

/// The deployer policy as a document.
pub fn deployer_policy_document(o: &DeployerPolicyOptions) -> PolicyDocument {
    let name = &o.name;
    let cluster = names::cluster_name(name);
    let lb = names::load_balancer_name(name);
    let params = names::parameter_arn_path(name);
    PolicyDocument::new(vec![
        // Describe, list and registry-login calls accept no resource narrower than `*`;
        // RegisterTaskDefinition and DeregisterTaskDefinition do not either. (Sids are short: the
        // policy must fit in a managed policy's 6,144 characters.)
        Statement::allow(
            "UnscopedReads",
            &[
                "ecr:GetAuthorizationToken",
                "ecs:RegisterTaskDefinition",
                "ecs:DeregisterTaskDefinition",
                "ecs:DescribeTaskDefinition",
                "ecs:ListTaskDefinitions",
                "elasticloadbalancing:DescribeLoadBalancers",
                "elasticloadbalancing:DescribeListeners",
                "elasticloadbalancing:DescribeRules",
                "elasticloadbalancing:DescribeTargetGroups",
                "elasticloadbalancing:DescribeTargetGroupAttributes",
                "elasticloadbalancing:DescribeTargetHealth",
                "elasticloadbalancing:DescribeTags",
                "logs:DescribeLogGroups",
                "application-autoscaling:DescribeScalableTargets",
                "application-autoscaling:DescribeScalingPolicies",
                "cloudwatch:DescribeAlarms",
                // A canary's judgement: its target group's metrics (no resource-level grant).
                "cloudwatch:GetMetricData",
            ],
            vec![json!("*")],
        ),
        // `[aws] max_count`: each version's scalable target and target-tracking policies.
        // Scalable-target ARNs end in an id AWS assigns, so the grant cannot name this
        // deployment's; the alarms the policies make are named after the service.
        Statement::allow(
            "VersionAutoscaling",
            &[
                "application-autoscaling:RegisterScalableTarget",
                "application-autoscaling:DeregisterScalableTarget",
                "application-autoscaling:PutScalingPolicy",
                "application-autoscaling:DeleteScalingPolicy",
            ],
            vec![o.arn("application-autoscaling", "scalable-target/*")],
        ),
        Statement::allow(
            "VersionAutoscalingAlarms",
            &["cloudwatch:PutMetricAlarm", "cloudwatch:DeleteAlarms"],
            vec![o.arn(
                "cloudwatch",
                &format!("alarm:TargetTracking-service/{cluster}/*"),
            )],
        ),
        Statement::allow(
            "AutoscalingRole",
            &["iam:CreateServiceLinkedRole"],
            vec![o.global_arn(
                "iam",
                true,
                "role/aws-service-role/ecs.application-autoscaling.amazonaws.com/\
                 AWSServiceRoleForApplicationAutoScaling_ECSService",
            )],
        )
        .when(json!({
            "StringEquals": { "iam:AWSServiceName": "ecs.application-autoscaling.amazonaws.com" }
        })),
        Statement::allow(
            "ListInCluster",
            &["ecs:ListServices", "ecs:ListTasks"],
            vec![json!("*")],
        )
        .when(json!({
            "ArnEquals": { "ecs:cluster": o.arn("ecs", &format!("cluster/{cluster}")) }
        })),
        Statement::allow(
            "VersionServices",
            &[
                "ecs:CreateService",
                "ecs:UpdateService",
                "ecs:DeleteService",
                "ecs:DescribeServices",
                "ecs:DescribeTasks",
                "ecs:DescribeClusters",
                "ecs:TagResource",
                "ecs:UntagResource",
                "ecs:ListTagsForResource",
                "ecs:DeleteTaskDefinitions",
            ],
            vec![
                o.arn("ecs", &format!("cluster/{cluster}")),
                o.arn("ecs", &format!("service/{cluster}/*")),
                o.arn("ecs", &format!("task/{cluster}/*")),
                o.arn(
                    "ecs",
                    &format!("task-definition/{}:*", names::task_family(name)),
                ),
            ],
        ),
        Statement::allow(
            "ListenerRulesAndDefault",
            &[
                "elasticloadbalancing:CreateRule",
                "elasticloadbalancing:ModifyRule",
                "elasticloadbalancing:DeleteRule",
                "elasticloadbalancing:SetRulePriorities",
                "elasticloadbalancing:ModifyListener",
                "elasticloadbalancing:AddTags",
                "elasticloadbalancing:RemoveTags",
            ],
            vec![
                o.arn("elasticloadbalancing", &format!("listener/app/{lb}/*")),
                o.arn("elasticloadbalancing", &format!("listener-rule/app/{lb}/*")),
            ],
        ),
        Statement::allow(
            "VersionTargetGroups",
            &[
                "elasticloadbalancing:CreateTargetGroup",
                "elasticloadbalancing:ModifyTargetGroup",
                "elasticloadbalancing:ModifyTargetGroupAttributes",
                "elasticloadbalancing:DeleteTargetGroup",
                "elasticloadbalancing:RegisterTargets",
                "elasticloadbalancing:DeregisterTargets",
                "elasticloadbalancing:AddTags",
                "elasticloadbalancing:RemoveTags",
            ],
            vec![o.arn(
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
                "ssm:AddTagsToResource",
            ],
            vec![
                o.arn("ssm", &format!("parameter/{params}")),
                o.arn("ssm", &format!("parameter/{params}/*")),
            ],
        ),
        Statement::allow(
            "PushImages",
            &[
                "ecr:BatchCheckLayerAvailability",
                "ecr:InitiateLayerUpload",
                "ecr:UploadLayerPart",
                "ecr:CompleteLayerUpload",
                "ecr:PutImage",
                "ecr:BatchGetImage",
                "ecr:GetDownloadUrlForLayer",
                "ecr:DescribeImages",
                "ecr:DescribeRepositories",
                "ecr:BatchDeleteImage",
            ],
            vec![o.arn(
                "ecr",
                &format!("repository/{}", names::repository_name(name)),
            )],
        ),
        Statement::allow(
            "PassTaskRoles",
            &["iam:PassRole"],
            vec![o.global_arn(
                "iam",
                true,
                &format!("role{}*", names::task_role_path(name)),
            )],
        )
        .when(json!({ "StringEquals": { "iam:PassedToService": "ecs-tasks.amazonaws.com" } })),
        Statement::allow(
            "ReadBaselineStack",
            &[
                "cloudformation:DescribeStacks",
                "cloudformation:DescribeStackEvents",
                "cloudformation:DescribeStackResource",
                "cloudformation:DescribeStackResources",
                "cloudformation:ListStackResources",
                "cloudformation:GetTemplate",
            ],
            vec![o.arn(
                "cloudformation",
                &format!("stack/{}/*", names::stack_name(name)),
            )],
        ),
        Statement::allow(
            "ReadLogs",
            &[
                "logs:DescribeLogStreams",
                "logs:GetLogEvents",
                "logs:FilterLogEvents",
                "logs:StartLiveTail",
            ],
            vec![
                o.arn(
                    "logs",
                    &format!("log-group:{}:*", names::log_group_name(name)),
                ),
                o.arn(
                    "logs",
                    &format!("log-group:{}:*", names::reaper_log_group_name(name)),
                ),
            ],
        ),
        Statement::allow(
            "UploadReaperCode",
            &["s3:PutObject", "s3:GetObject", "s3:GetObjectVersion"],
            vec![o.global_arn(
                "s3",
                false,
                &format!("{}/reaper/*", names::artefact_bucket_pattern(name)),
            )],
        ),
        // The drain board the CLI publishes each recorded state to (read, then written with
        // If-Match); listing makes a missing board a 404 rather than a 403.
        Statement::allow(
            "PublishDrainBoard",
            &["s3:GetObject", "s3:PutObject"],
            vec![o.global_arn(
                "s3",
                false,
                &format!(
                    "{}/{}",
                    names::artefact_bucket_pattern(name),
                    names::drain_board_key(name)
                ),
            )],
        ),
        Statement::allow(
            "FindDrainBoard",
            &["s3:ListBucket"],
            vec![o.global_arn("s3", false, &names::artefact_bucket_pattern(name))],
        ),
        Statement::allow(
            "UpdateReaper",
            &[
                "lambda:GetFunction",
                "lambda:GetFunctionConfiguration",
                "lambda:UpdateFunctionCode",
                "lambda:InvokeFunction",
            ],
            vec![o.arn(
                "lambda",
                &format!("function:{}", names::reaper_function_name(name)),
            )],
        ),
    ])
}

/// The deployer policy as IAM JSON, ready for `aws iam create-policy --policy-document`.
pub fn deployer_policy(o: &DeployerPolicyOptions) -> Value {
    deployer_policy_document(o).to_json()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> DeployerPolicyOptions {
        DeployerPolicyOptions {
            name: DeploymentName::new("prod").expect("valid"),
            region: Some("eu-west-1".into()),
            account_id: Some("123456789012".into()),
            partition: "aws".into(),
        }
    }

    #[test]
    fn fits_in_a_managed_policy_even_for_the_longest_name() {
        let mut o = options();
        o.name = DeploymentName::new(&format!("a{}", "b".repeat(31))).expect("valid");
        let text = serde_json::to_string(&deployer_policy(&o)).expect("serialises");
        assert!(
            text.len() < MANAGED_POLICY_MAX_CHARS,
            "{} characters",
            text.len()
        );
    }

    #[test]
    fn scoped_to_this_deployment() {
        let text = serde_json::to_string(&deployer_policy(&options())).expect("serialises");
        for needle in [
            "arn:aws:ecs:eu-west-1:123456789012:service/flotilla-prod/*",
            "arn:aws:elasticloadbalancing:eu-west-1:123456789012:listener-rule/app/flotilla-prod/*",
            "arn:aws:ssm:eu-west-1:123456789012:parameter/apps/prod/*",
            "arn:aws:ecr:eu-west-1:123456789012:repository/flotilla/prod",
            "arn:aws:iam::123456789012:role/flotilla/prod/ecs/*",
            "arn:aws:s3:::flotilla-prod-????????/reaper/*",
            "arn:aws:s3:::flotilla-prod-????????/drain/prod.json",
            "arn:aws:cloudformation:eu-west-1:123456789012:stack/flotilla-prod/*",
            "arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/prod-????????-??????-????/*",
        ] {
            assert!(text.contains(needle), "missing {needle}");
        }
        // No statement may grant a mutating action on every resource except the few that
        // have no resource-level permissions.
        let doc = deployer_policy_document(&options());
        for s in &doc.statements {
            if s.resources == [json!("*")] && s.condition.is_none() {
                for a in &s.actions {
                    let read = a.contains(":Describe")
                        || a.contains(":List")
                        || a.contains(":Get")
                        || *a == "ecs:RegisterTaskDefinition"
                        || *a == "ecs:DeregisterTaskDefinition";
                    assert!(read, "{a} granted on *");
                }
            }
        }
    }

    #[test]
    fn defaults_to_any_region_and_account() {
        let o = DeployerPolicyOptions::new(DeploymentName::new("prod").expect("valid"));
        let text = serde_json::to_string(&deployer_policy(&o)).expect("serialises");
        assert!(
            text.contains("arn:aws:ssm:*:*:parameter/apps/prod/*"),
            "{text}"
        );
        assert!(
            text.contains("arn:aws:iam::*:role/flotilla/prod/ecs/*"),
            "{text}"
        );
    }
}
