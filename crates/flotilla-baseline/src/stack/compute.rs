//! What versions run on: the ECS cluster, the image repository, the log group, the two roles every
//! task uses, and the artefact bucket that holds the reaper's code.

use serde_json::json;

use super::{arn, ids};
use crate::cfn::{Resource, Template, get_att, json_text, reference, select, sub};
use crate::names;
use crate::options::BaselineOptions;
use crate::policy::{Effect, PolicyDocument, Statement, guarded_service_trust, service_trust};

pub(super) fn add(t: &mut Template, options: &BaselineOptions) {
    let name = &options.name;

    t.add(
        ids::CLUSTER,
        Resource::new(
            "AWS::ECS::Cluster",
            json!({
                "ClusterName": names::cluster_name(name),
                "ClusterSettings": [{ "Name": "containerInsights", "Value": "enabled" }],
                // Both Fargate providers, so `[aws] spot_percent` can place tasks on Spot.
                "CapacityProviders": ["FARGATE", "FARGATE_SPOT"],
            }),
        ),
    );

    let lifecycle = json!({
        "rules": [
            {
                "rulePriority": 1,
                "description": "Expire untagged images (failed or replaced pushes) after a day",
                "selection": {
                    "tagStatus": "untagged",
                    "countType": "sinceImagePushed",
                    "countUnit": "days",
                    "countNumber": 1,
                },
                "action": { "type": "expire" },
            },
            {
                "rulePriority": 2,
                "description": format!("Keep the newest {} images", options.keep_images),
                "selection": {
                    "tagStatus": "any",
                    "countType": "imageCountMoreThan",
                    "countNumber": options.keep_images,
                },
                "action": { "type": "expire" },
            },
        ],
    });
    t.add(
        ids::REPOSITORY,
        Resource::new(
            "AWS::ECR::Repository",
            json!({
                "RepositoryName": names::repository_name(name),
                "ImageScanningConfiguration": { "ScanOnPush": true },
                // Every image is tagged with its unique deployment id; a tag never moves.
                "ImageTagMutability": "IMMUTABLE",
                "EncryptionConfiguration": { "EncryptionType": "KMS" },
                "LifecyclePolicy": { "LifecyclePolicyText": json_text(&lifecycle) },
                // Deleting the baseline deletes its images too: nothing is left behind.
                "EmptyOnDelete": true,
            }),
        ),
    );

    t.add(
        ids::LOG_GROUP,
        Resource::new(
            "AWS::Logs::LogGroup",
            json!({
                "LogGroupName": names::log_group_name(name),
                "RetentionInDays": options.log_retention_days,
            }),
        )
        .skip_checkov(
            "CKV_AWS_158",
            "CloudWatch Logs encrypts every log group at rest already; a customer-managed KMS key \
             would add a monthly cost and a key policy to maintain without protecting more.",
        ),
    );

    let log_group_arn = arn(
        "logs",
        &format!("log-group:{}:*", names::log_group_name(name)),
    );
    let execution_policy = PolicyDocument::new(vec![
        // GetAuthorizationToken has no resource to scope to.
        Statement::allow(
            "RegistryLogin",
            &["ecr:GetAuthorizationToken"],
            vec![json!("*")],
        ),
        Statement::allow(
            "PullImages",
            &[
                "ecr:BatchCheckLayerAvailability",
                "ecr:GetDownloadUrlForLayer",
                "ecr:BatchGetImage",
            ],
            vec![get_att(ids::REPOSITORY, "Arn")],
        ),
        Statement::allow(
            "WriteLogs",
            &["logs:CreateLogStream", "logs:PutLogEvents"],
            vec![log_group_arn],
        ),
    ]);
    let execution_policy = with_secret_grants(execution_policy, &options.secrets);
    t.add(
        ids::EXECUTION_ROLE,
        Resource::new(
            "AWS::IAM::Role",
            json!({
                "Description": format!("flotilla {name}: ECS pulls the image and ships logs"),
                "Path": names::task_role_path(name),
                "AssumeRolePolicyDocument": service_trust("ecs-tasks.amazonaws.com"),
                "Policies": [{
                    "PolicyName": "pull-and-log",
                    "PolicyDocument": execution_policy.to_json(),
                }],
            }),
        ),
    );

    let params = names::parameter_arn_path(name);
    let task_policy = PolicyDocument::new(vec![
        Statement::allow(
            "ReadDeploymentState",
            &["ssm:GetParameter", "ssm:GetParameters"],
            vec![arn("ssm", &format!("parameter/{params}/*"))],
        ),
        Statement::allow(
            "ReportTaskReadiness",
            &["ssm:PutParameter"],
            vec![arn("ssm", &format!("parameter/{params}/*/tasks/*"))],
        ),
        // The drain board (one object with every version's state) is what agents poll; their
        // SSM parameter is the fallback. Listing the bucket (the reaper's code and the boards)
        // makes a missing board a 404 rather than a 403 that would look like a broken role.
        Statement::allow(
            "ReadDrainBoard",
            &["s3:GetObject"],
            vec![drain_board_arn(name)],
        ),
        Statement::allow(
            "FindDrainBoard",
            &["s3:ListBucket"],
            vec![get_att(ids::ARTEFACT_BUCKET, "Arn")],
        ),
        // Under autoscaling, an agent holds its task's scale-in protection while sessions live
        // (through the ECS agent endpoint, which calls this with the task role).
        Statement::allow(
            "ProtectTaskWithSessions",
            &["ecs:UpdateTaskProtection"],
            vec![arn("ecs", &format!("task/{}/*", names::cluster_name(name)))],
        ),
    ]);
    t.add(
        ids::TASK_ROLE,
        Resource::new(
            "AWS::IAM::Role",
            json!({
                "Description": format!("flotilla {name}: the agent reads its version's state and reports readiness"),
                "Path": names::task_role_path(name),
                "AssumeRolePolicyDocument": guarded_service_trust("ecs-tasks.amazonaws.com"),
                "Policies": [{
                    "PolicyName": "deployment-state",
                    "PolicyDocument": task_policy.to_json(),
                }],
            }),
        ),
    );

    // The stack id ends in a UUID; its first eight hex digits make the bucket name unique.
    let stack_uuid = select(2, json!({ "Fn::Split": ["/", reference("AWS::StackId")] }));
    let suffix = select(0, json!({ "Fn::Split": ["-", stack_uuid] }));
    t.add(
        ids::ARTEFACT_BUCKET,
        Resource::new(
            "AWS::S3::Bucket",
            json!({
                "BucketName": { "Fn::Join": ["", [names::artefact_bucket_prefix(name), suffix]] },
                "BucketEncryption": {
                    "ServerSideEncryptionConfiguration": [{
                        "ServerSideEncryptionByDefault": { "SSEAlgorithm": "AES256" },
                    }],
                },
                "PublicAccessBlockConfiguration": {
                    "BlockPublicAcls": true,
                    "BlockPublicPolicy": true,
                    "IgnorePublicAcls": true,
                    "RestrictPublicBuckets": true,
                },
                "VersioningConfiguration": { "Status": "Enabled" },
                "OwnershipControls": { "Rules": [{ "ObjectOwnership": "BucketOwnerEnforced" }] },
                "LifecycleConfiguration": {
                    "Rules": [{
                        "Id": "expire-old-artefacts",
                        "Status": "Enabled",
                        "NoncurrentVersionExpiration": { "NoncurrentDays": 30 },
                        "AbortIncompleteMultipartUpload": { "DaysAfterInitiation": 1 },
                    }],
                },
            }),
        )
        .skip_checkov(
            "CKV_AWS_18",
            "The bucket holds only the reaper's code zip, written by flotilla; access logging \
             would need a second bucket and record nothing of interest.",
        ),
    );
    let tls_only = Statement {
        sid: "DenyInsecureTransport",
        effect: Effect::Deny,
        actions: vec!["s3:*"],
        resources: vec![
            get_att(ids::ARTEFACT_BUCKET, "Arn"),
            sub(format!("${{{}.Arn}}/*", ids::ARTEFACT_BUCKET)),
        ],
        principal: Some(json!("*")),
        condition: Some(json!({ "Bool": { "aws:SecureTransport": "false" } })),
    };
    t.add(
        ids::ARTEFACT_BUCKET_POLICY,
        Resource::new(
            "AWS::S3::BucketPolicy",
            json!({
                "Bucket": reference(ids::ARTEFACT_BUCKET),
                "PolicyDocument": PolicyDocument::new(vec![tls_only]).to_json(),
            }),
        ),
    );
}

/// The ARN of the drain board object in the artefact bucket.
pub(super) fn drain_board_arn(name: &flotilla_core::DeploymentName) -> serde_json::Value {
    sub(format!(
        "${{{}.Arn}}/{}",
        ids::ARTEFACT_BUCKET,
        names::drain_board_key(name)
    ))
}

/// The execution policy plus reads of exactly the app's secrets (ECS resolves the task
/// definition's `secrets` with the execution role when a task starts).
fn with_secret_grants(
    mut policy: PolicyDocument,
    grants: &crate::options::SecretGrants,
) -> PolicyDocument {
    let subs = |arns: &[String]| arns.iter().map(|a| sub_if_needed(a)).collect::<Vec<_>>();
    if !grants.ssm_parameters.is_empty() {
        policy.statements.push(Statement::allow(
            "ReadAppSecretsFromParameterStore",
            &["ssm:GetParameters"],
            subs(&grants.ssm_parameters),
        ));
    }
    if !grants.secrets_manager.is_empty() {
        policy.statements.push(Statement::allow(
            "ReadAppSecretsFromSecretsManager",
            &["secretsmanager:GetSecretValue"],
            subs(&grants.secrets_manager),
        ));
    }
    policy
}

/// `resource` as it is, or as a `Fn::Sub` when it uses `${...}` variables.
pub(super) fn sub_if_needed(resource: &str) -> serde_json::Value {
    if resource.contains("${") {
        sub(resource)
    } else {
        json!(resource)
    }
}
