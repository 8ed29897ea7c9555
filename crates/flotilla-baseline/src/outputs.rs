//! The stack's outputs: their names (which the AWS provider reads, so they are a contract), and
//! [`BaselineOutputs`], the typed form cached in `.flotilla/<name>/baseline.json`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use flotilla_core::DeploymentName;
use serde::{Deserialize, Serialize};

/// `https` or `http-only`: whether the load balancer terminates TLS.
pub const MODE: &str = "Mode";
/// Where users reach the application: `https://<domain>`, or `http://<load balancer DNS>`.
pub const URL: &str = "Url";
/// The domain the certificate is for (absent in HTTP-only mode and for certificates without one).
pub const DOMAIN: &str = "Domain";
/// The deployment name the stack serves.
pub const DEPLOYMENT_NAME: &str = "DeploymentName";
/// The listener that carries routing: per-version rules and the default forward go here
/// (the HTTPS listener, or the HTTP listener in HTTP-only mode).
pub const LISTENER_ARN: &str = "ListenerArn";
/// The port-80 listener (redirects to HTTPS, or is the routing listener in HTTP-only mode).
pub const HTTP_LISTENER_ARN: &str = "HttpListenerArn";
/// The load balancer's ARN.
pub const LOAD_BALANCER_ARN: &str = "LoadBalancerArn";
/// The load balancer's DNS name (point the domain's CNAME or alias here).
pub const LOAD_BALANCER_DNS: &str = "LoadBalancerDns";
/// The load balancer's `app/<name>/<id>`, the `LoadBalancer` dimension of its metrics.
pub const LOAD_BALANCER_FULL_NAME: &str = "LoadBalancerFullName";
/// The VPC id.
pub const VPC_ID: &str = "VpcId";
/// The two private subnets, comma-separated: where tasks run.
pub const PRIVATE_SUBNET_IDS: &str = "PrivateSubnetIds";
/// The two public subnets, comma-separated: where the load balancer and NAT live.
pub const PUBLIC_SUBNET_IDS: &str = "PublicSubnetIds";
/// The security group tasks use: admits the agent port from the load balancer only.
pub const SERVICE_SECURITY_GROUP_ID: &str = "ServiceSecurityGroupId";
/// The load balancer's security group: admits 80 and 443 from the internet.
pub const ALB_SECURITY_GROUP_ID: &str = "AlbSecurityGroupId";
/// The ECS cluster's name.
pub const CLUSTER_NAME: &str = "ClusterName";
/// The ECS cluster's ARN.
pub const CLUSTER_ARN: &str = "ClusterArn";
/// The application log group (awslogs driver target).
pub const LOG_GROUP_NAME: &str = "LogGroupName";
/// The ECR repository's URI (`<account>.dkr.ecr.<region>.amazonaws.com/flotilla/<name>`).
pub const REPOSITORY_URI: &str = "RepositoryUri";
/// The ECR repository's name.
pub const REPOSITORY_NAME: &str = "RepositoryName";
/// The task execution role (image pull, log writing).
pub const EXECUTION_ROLE_ARN: &str = "ExecutionRoleArn";
/// The task role (the agent's SSM reads and readiness writes).
pub const TASK_ROLE_ARN: &str = "TaskRoleArn";
/// The reaper Lambda's name; absent until the stack has been given the reaper's code.
pub const REAPER_FUNCTION_NAME: &str = "ReaperFunctionName";
/// The artefact bucket the reaper's code zip is uploaded to.
pub const ARTEFACT_BUCKET: &str = "ArtefactBucket";
/// The bucket holding the drain board (the artefact bucket), output only by templates whose task
/// role may read the board: a baseline made before it keeps its tasks polling SSM.
pub const DRAIN_BUCKET: &str = "DrainBucket";
/// The certificate the HTTPS listener uses (absent in HTTP-only mode).
pub const CERTIFICATE_ARN: &str = "CertificateArn";
/// The CloudWatch dashboard's name.
pub const DASHBOARD_NAME: &str = "DashboardName";
/// The SNS topic alarms notify (absent when notifications are off).
pub const ALARM_TOPIC_ARN: &str = "AlarmTopicArn";
/// The port the load balancer reaches tasks on: the in-container agent's port (the tasks'
/// security group admits it, from the load balancer only). Deploys must use the same port.
pub const CONTAINER_PORT: &str = "ContainerPort";

/// The app secrets the execution role may read: their IAM resources, comma-separated, or `none`.
pub const SECRET_GRANTS: &str = "SecretGrants";

/// Every output name the template may emit.
pub const ALL: &[&str] = &[
    MODE,
    URL,
    DOMAIN,
    DEPLOYMENT_NAME,
    LISTENER_ARN,
    HTTP_LISTENER_ARN,
    LOAD_BALANCER_ARN,
    LOAD_BALANCER_DNS,
    LOAD_BALANCER_FULL_NAME,
    VPC_ID,
    PRIVATE_SUBNET_IDS,
    PUBLIC_SUBNET_IDS,
    SERVICE_SECURITY_GROUP_ID,
    ALB_SECURITY_GROUP_ID,
    CLUSTER_NAME,
    CLUSTER_ARN,
    LOG_GROUP_NAME,
    REPOSITORY_URI,
    REPOSITORY_NAME,
    EXECUTION_ROLE_ARN,
    TASK_ROLE_ARN,
    REAPER_FUNCTION_NAME,
    ARTEFACT_BUCKET,
    DRAIN_BUCKET,
    CERTIFICATE_ARN,
    DASHBOARD_NAME,
    ALARM_TOPIC_ARN,
    CONTAINER_PORT,
    SECRET_GRANTS,
];

/// Whether the load balancer terminates TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// HTTPS on 443 with a certificate; port 80 redirects.
    Https,
    /// Plain HTTP on port 80 only: no TLS, traffic is readable on the way.
    HttpOnly,
}

impl Mode {
    /// The value of the `Mode` output.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Https => "https",
            Mode::HttpOnly => "http-only",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One DNS record ACM asks for to validate a certificate.
///
/// Plain CloudFormation does not output these: the AWS provider reads them with ACM's
/// `DescribeCertificate` (`DomainValidationOptions[].ResourceRecord`) while the stack waits on the
/// certificate, prints them, and stores them here.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidationRecord {
    /// The domain being validated.
    pub domain: String,
    /// The record's name, e.g. `_3639ac514e785e898d2646601fa951d5.app.example.com.`.
    pub name: String,
    /// The record type (`CNAME`).
    #[serde(rename = "type")]
    pub record_type: String,
    /// The record's value, e.g. `_98d2646601fa951d5.acm-validations.aws.`.
    pub value: String,
}

/// The baseline's outputs, typed. This is the format of `.flotilla/<name>/baseline.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaselineOutputs {
    /// The deployment name.
    pub deployment_name: String,
    /// TLS or not.
    pub mode: Mode,
    /// Where users reach the application.
    pub url: String,
    /// The domain, when one is configured.
    #[serde(default)]
    pub domain: Option<String>,
    /// The routing listener (rules and the default forward go here).
    pub listener_arn: String,
    /// The port-80 listener.
    pub http_listener_arn: String,
    /// The load balancer.
    pub load_balancer_arn: String,
    /// The load balancer's DNS name.
    pub load_balancer_dns: String,
    /// The load balancer's metric dimension, `app/<name>/<id>`.
    pub load_balancer_full_name: String,
    /// The VPC.
    pub vpc_id: String,
    /// The private subnets (tasks).
    pub private_subnet_ids: Vec<String>,
    /// The public subnets (load balancer, NAT).
    pub public_subnet_ids: Vec<String>,
    /// The tasks' security group.
    pub service_security_group_id: String,
    /// The load balancer's security group.
    pub alb_security_group_id: String,
    /// The ECS cluster's name.
    pub cluster_name: String,
    /// The ECS cluster's ARN.
    pub cluster_arn: String,
    /// The application log group.
    pub log_group_name: String,
    /// The ECR repository's URI.
    pub repository_uri: String,
    /// The ECR repository's name.
    pub repository_name: String,
    /// The task execution role.
    pub execution_role_arn: String,
    /// The task role.
    pub task_role_arn: String,
    /// The reaper Lambda, once it exists.
    #[serde(default)]
    pub reaper_function_name: Option<String>,
    /// The artefact bucket.
    pub artefact_bucket: String,
    /// The drain board's bucket, when the stack's task role may read the board.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_bucket: Option<String>,
    /// The certificate, in HTTPS mode.
    #[serde(default)]
    pub certificate_arn: Option<String>,
    /// The DNS records that validate the certificate (filled from ACM, not from the stack).
    #[serde(default)]
    pub certificate_validation_records: Vec<ValidationRecord>,
    /// The dashboard's name.
    pub dashboard_name: String,
    /// The alarm topic, when notifications are on.
    #[serde(default)]
    pub alarm_topic_arn: Option<String>,
    /// The port the load balancer reaches tasks on (the agent's port).
    pub container_port: u16,
    /// The IAM resources of the app secrets the execution role may read; `None` from a stack
    /// made before flotilla granted secrets.
    #[serde(default)]
    pub secret_grants: Option<Vec<String>>,
}

/// Why a stack's outputs do not make a [`BaselineOutputs`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OutputsError {
    /// Required outputs are missing: the stack is not (or not yet) a flotilla baseline.
    #[error(
        "the stack lacks output(s) {}; it was not made by this flotilla version, or it is not \
         finished. Run `flotilla baseline up` to create or update it",
        .0.join(", ")
    )]
    Missing(Vec<String>),
    /// An output holds a value of the wrong shape.
    #[error(
        "stack output {name} = {value:?} {problem}; run `flotilla baseline up` to repair the stack"
    )]
    Invalid {
        /// The output's name.
        name: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        problem: &'static str,
    },
}

impl BaselineOutputs {
    /// Builds the typed outputs from a stack's `(OutputKey, OutputValue)` pairs, reporting every
    /// missing required output at once. Outputs flotilla does not know are ignored.
    pub fn from_stack_outputs<I, K, V>(pairs: I) -> Result<Self, OutputsError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let map: BTreeMap<String, String> = pairs
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        let mut missing = Vec::new();
        let mut req = |name: &'static str| -> String {
            match map.get(name) {
                Some(v) => v.clone(),
                None => {
                    missing.push(name.to_owned());
                    String::new()
                }
            }
        };
        let deployment_name = req(DEPLOYMENT_NAME);
        let mode = req(MODE);
        let url = req(URL);
        let listener_arn = req(LISTENER_ARN);
        let http_listener_arn = req(HTTP_LISTENER_ARN);
        let load_balancer_arn = req(LOAD_BALANCER_ARN);
        let load_balancer_dns = req(LOAD_BALANCER_DNS);
        let load_balancer_full_name = req(LOAD_BALANCER_FULL_NAME);
        let vpc_id = req(VPC_ID);
        let private_subnet_ids = req(PRIVATE_SUBNET_IDS);
        let public_subnet_ids = req(PUBLIC_SUBNET_IDS);
        let service_security_group_id = req(SERVICE_SECURITY_GROUP_ID);
        let alb_security_group_id = req(ALB_SECURITY_GROUP_ID);
        let cluster_name = req(CLUSTER_NAME);
        let cluster_arn = req(CLUSTER_ARN);
        let log_group_name = req(LOG_GROUP_NAME);
        let repository_uri = req(REPOSITORY_URI);
        let repository_name = req(REPOSITORY_NAME);
        let execution_role_arn = req(EXECUTION_ROLE_ARN);
        let task_role_arn = req(TASK_ROLE_ARN);
        let artefact_bucket = req(ARTEFACT_BUCKET);
        let dashboard_name = req(DASHBOARD_NAME);
        let container_port = req(CONTAINER_PORT);
        if !missing.is_empty() {
            return Err(OutputsError::Missing(missing));
        }
        let opt = |name: &str| map.get(name).filter(|v| !v.is_empty()).cloned();
        // An output CloudFormation (or an emulator) left unresolved reads as template text such
        // as `{'Fn::GetAtt': [...]}`; caching it would fail every later command far from here.
        for (name, value) in [
            (LISTENER_ARN, &listener_arn),
            (HTTP_LISTENER_ARN, &http_listener_arn),
            (LOAD_BALANCER_ARN, &load_balancer_arn),
            (CLUSTER_ARN, &cluster_arn),
            (EXECUTION_ROLE_ARN, &execution_role_arn),
            (TASK_ROLE_ARN, &task_role_arn),
        ] {
            let template_text = value
                .chars()
                .any(|c| c.is_whitespace() || "{}[]'\"".contains(c));
            if template_text || !value.starts_with("arn:") {
                return Err(OutputsError::Invalid {
                    name,
                    value: value.clone(),
                    problem: "is not an ARN (an unresolved template value?)",
                });
            }
        }

        let mode = match mode.as_str() {
            "https" => Mode::Https,
            "http-only" => Mode::HttpOnly,
            _ => {
                return Err(OutputsError::Invalid {
                    name: MODE,
                    value: mode,
                    problem: "is neither `https` nor `http-only`",
                });
            }
        };
        let container_port = match container_port.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => {
                return Err(OutputsError::Invalid {
                    name: CONTAINER_PORT,
                    value: container_port,
                    problem: "is not a port number",
                });
            }
        };
        let subnets = |name: &'static str, value: String| -> Result<Vec<String>, OutputsError> {
            let ids: Vec<String> = value
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            if ids.is_empty() {
                return Err(OutputsError::Invalid {
                    name,
                    value,
                    problem: "names no subnet",
                });
            }
            Ok(ids)
        };
        let certificate_arn = opt(CERTIFICATE_ARN);
        if mode == Mode::Https && certificate_arn.is_none() {
            return Err(OutputsError::Missing(vec![CERTIFICATE_ARN.to_owned()]));
        }
        Ok(BaselineOutputs {
            deployment_name,
            mode,
            url,
            domain: opt(DOMAIN),
            listener_arn,
            http_listener_arn,
            load_balancer_arn,
            load_balancer_dns,
            load_balancer_full_name,
            vpc_id,
            private_subnet_ids: subnets(PRIVATE_SUBNET_IDS, private_subnet_ids)?,
            public_subnet_ids: subnets(PUBLIC_SUBNET_IDS, public_subnet_ids)?,
            service_security_group_id,
            alb_security_group_id,
            cluster_name,
            cluster_arn,
            log_group_name,
            repository_uri,
            repository_name,
            execution_role_arn,
            task_role_arn,
            reaper_function_name: opt(REAPER_FUNCTION_NAME),
            artefact_bucket,
            drain_bucket: opt(DRAIN_BUCKET),
            certificate_arn,
            certificate_validation_records: Vec::new(),
            dashboard_name,
            alarm_topic_arn: opt(ALARM_TOPIC_ARN),
            container_port,
            secret_grants: opt(SECRET_GRANTS).map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|g| !g.is_empty() && *g != "none")
                    .map(str::to_owned)
                    .collect()
            }),
        })
    }

    /// The outputs back as `(OutputKey, OutputValue)` pairs, as the stack reports them.
    ///
    /// The inverse of [`BaselineOutputs::from_stack_outputs`] (validation records are not stack
    /// outputs and are left out); handy for tests and for accepting the outputs from config.
    pub fn to_stack_outputs(&self) -> BTreeMap<&'static str, String> {
        let mut out = BTreeMap::new();
        out.insert(DEPLOYMENT_NAME, self.deployment_name.clone());
        out.insert(MODE, self.mode.as_str().to_owned());
        out.insert(URL, self.url.clone());
        if let Some(d) = &self.domain {
            out.insert(DOMAIN, d.clone());
        }
        out.insert(LISTENER_ARN, self.listener_arn.clone());
        out.insert(HTTP_LISTENER_ARN, self.http_listener_arn.clone());
        out.insert(LOAD_BALANCER_ARN, self.load_balancer_arn.clone());
        out.insert(LOAD_BALANCER_DNS, self.load_balancer_dns.clone());
        out.insert(
            LOAD_BALANCER_FULL_NAME,
            self.load_balancer_full_name.clone(),
        );
        out.insert(VPC_ID, self.vpc_id.clone());
        out.insert(PRIVATE_SUBNET_IDS, self.private_subnet_ids.join(","));
        out.insert(PUBLIC_SUBNET_IDS, self.public_subnet_ids.join(","));
        out.insert(
            SERVICE_SECURITY_GROUP_ID,
            self.service_security_group_id.clone(),
        );
        out.insert(ALB_SECURITY_GROUP_ID, self.alb_security_group_id.clone());
        out.insert(CLUSTER_NAME, self.cluster_name.clone());
        out.insert(CLUSTER_ARN, self.cluster_arn.clone());
        out.insert(LOG_GROUP_NAME, self.log_group_name.clone());
        out.insert(REPOSITORY_URI, self.repository_uri.clone());
        out.insert(REPOSITORY_NAME, self.repository_name.clone());
        out.insert(EXECUTION_ROLE_ARN, self.execution_role_arn.clone());
        out.insert(TASK_ROLE_ARN, self.task_role_arn.clone());
        if let Some(f) = &self.reaper_function_name {
            out.insert(REAPER_FUNCTION_NAME, f.clone());
        }
        out.insert(ARTEFACT_BUCKET, self.artefact_bucket.clone());
        if let Some(b) = &self.drain_bucket {
            out.insert(DRAIN_BUCKET, b.clone());
        }
        if let Some(c) = &self.certificate_arn {
            out.insert(CERTIFICATE_ARN, c.clone());
        }
        out.insert(DASHBOARD_NAME, self.dashboard_name.clone());
        if let Some(t) = &self.alarm_topic_arn {
            out.insert(ALARM_TOPIC_ARN, t.clone());
        }
        out.insert(CONTAINER_PORT, self.container_port.to_string());
        if let Some(grants) = &self.secret_grants {
            let joined = if grants.is_empty() {
                "none".to_owned()
            } else {
                grants.join(",")
            };
            out.insert(SECRET_GRANTS, joined);
        }
        out
    }
}

/// Where the outputs are cached, relative to the project directory: `.flotilla/<name>/baseline.json`.
pub fn cache_path(name: &DeploymentName) -> PathBuf {
    PathBuf::from(".flotilla")
        .join(name.as_str())
        .join("baseline.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> BTreeMap<&'static str, String> {
        let arn = "arn:aws:elasticloadbalancing:us-east-1:123456789012";
        let mut m = BTreeMap::new();
        m.insert(DEPLOYMENT_NAME, "prod".to_owned());
        m.insert(MODE, "https".to_owned());
        m.insert(URL, "https://app.example.com".to_owned());
        m.insert(DOMAIN, "app.example.com".to_owned());
        m.insert(
            LISTENER_ARN,
            format!("{arn}:listener/app/flotilla-prod/abc/443"),
        );
        m.insert(
            HTTP_LISTENER_ARN,
            format!("{arn}:listener/app/flotilla-prod/abc/80"),
        );
        m.insert(
            LOAD_BALANCER_ARN,
            format!("{arn}:loadbalancer/app/flotilla-prod/abc"),
        );
        m.insert(
            LOAD_BALANCER_DNS,
            "flotilla-prod-1.us-east-1.elb.amazonaws.com".to_owned(),
        );
        m.insert(LOAD_BALANCER_FULL_NAME, "app/flotilla-prod/abc".to_owned());
        m.insert(VPC_ID, "vpc-1".to_owned());
        m.insert(PRIVATE_SUBNET_IDS, "subnet-a,subnet-b".to_owned());
        m.insert(PUBLIC_SUBNET_IDS, "subnet-c,subnet-d".to_owned());
        m.insert(SERVICE_SECURITY_GROUP_ID, "sg-1".to_owned());
        m.insert(ALB_SECURITY_GROUP_ID, "sg-2".to_owned());
        m.insert(CLUSTER_NAME, "flotilla-prod".to_owned());
        m.insert(
            CLUSTER_ARN,
            "arn:aws:ecs:us-east-1:123456789012:cluster/flotilla-prod".to_owned(),
        );
        m.insert(LOG_GROUP_NAME, "/flotilla/prod/app".to_owned());
        m.insert(
            REPOSITORY_URI,
            "123456789012.dkr.ecr.us-east-1.amazonaws.com/flotilla/prod".to_owned(),
        );
        m.insert(REPOSITORY_NAME, "flotilla/prod".to_owned());
        m.insert(
            EXECUTION_ROLE_ARN,
            "arn:aws:iam::123456789012:role/flotilla/prod/ecs/x".to_owned(),
        );
        m.insert(
            TASK_ROLE_ARN,
            "arn:aws:iam::123456789012:role/flotilla/prod/ecs/y".to_owned(),
        );
        m.insert(REAPER_FUNCTION_NAME, "flotilla-prod-reaper".to_owned());
        m.insert(ARTEFACT_BUCKET, "flotilla-prod-0123abcd".to_owned());
        m.insert(DRAIN_BUCKET, "flotilla-prod-0123abcd".to_owned());
        m.insert(
            CERTIFICATE_ARN,
            "arn:aws:acm:us-east-1:123456789012:certificate/c".to_owned(),
        );
        m.insert(DASHBOARD_NAME, "flotilla-prod".to_owned());
        m.insert(CONTAINER_PORT, "8080".to_owned());
        m
    }

    #[test]
    fn parses_and_round_trips() {
        let mut pairs = sample();
        pairs.insert("SomethingNewer", "ignored".to_owned());
        let outputs = BaselineOutputs::from_stack_outputs(pairs.clone()).expect("complete");
        assert_eq!(outputs.private_subnet_ids, ["subnet-a", "subnet-b"]);
        assert_eq!(outputs.mode, Mode::Https);
        assert_eq!(outputs.container_port, 8080);
        assert_eq!(outputs.alarm_topic_arn, None);
        pairs.remove("SomethingNewer");
        assert_eq!(outputs.to_stack_outputs(), pairs);
        let json = serde_json::to_string(&outputs).expect("serialises");
        let back: BaselineOutputs = serde_json::from_str(&json).expect("parses");
        assert_eq!(back, outputs);
    }

    #[test]
    fn every_missing_output_is_named() {
        let mut pairs = sample();
        pairs.remove(LISTENER_ARN);
        pairs.remove(TASK_ROLE_ARN);
        let err = BaselineOutputs::from_stack_outputs(pairs).expect_err("incomplete");
        assert_eq!(
            err,
            OutputsError::Missing(vec![LISTENER_ARN.to_owned(), TASK_ROLE_ARN.to_owned()])
        );
        assert!(err.to_string().contains("flotilla baseline up"), "{err}");
    }

    #[test]
    fn bad_values_are_named() {
        let check = |key: &'static str, value: &str, want: &'static str| {
            let mut pairs = sample();
            pairs.insert(key, value.to_owned());
            match BaselineOutputs::from_stack_outputs(pairs) {
                Err(OutputsError::Invalid { name, .. }) => assert_eq!(name, want),
                other => panic!("{key}={value}: {other:?}"),
            }
        };
        check(MODE, "tls", MODE);
        check(CONTAINER_PORT, "eighty", CONTAINER_PORT);
        check(CONTAINER_PORT, "0", CONTAINER_PORT);
        check(PRIVATE_SUBNET_IDS, " , ", PRIVATE_SUBNET_IDS);
        // Unresolved template text is never cached as if it were the listener.
        check(
            LISTENER_ARN,
            "{'Fn::GetAtt': ['HttpsListener', 'ListenerArn']}",
            LISTENER_ARN,
        );
        check(TASK_ROLE_ARN, "flotilla-prod-task", TASK_ROLE_ARN);
    }

    #[test]
    fn https_needs_a_certificate_and_http_only_does_not() {
        let mut pairs = sample();
        pairs.remove(CERTIFICATE_ARN);
        assert_eq!(
            BaselineOutputs::from_stack_outputs(pairs.clone()),
            Err(OutputsError::Missing(vec![CERTIFICATE_ARN.to_owned()]))
        );
        pairs.insert(MODE, "http-only".to_owned());
        let outputs = BaselineOutputs::from_stack_outputs(pairs).expect("http-only");
        assert_eq!(outputs.mode, Mode::HttpOnly);
        assert_eq!(outputs.certificate_arn, None);
    }

    #[test]
    fn cache_path_is_per_name() {
        let name = DeploymentName::new("prod").expect("valid");
        assert_eq!(
            cache_path(&name),
            PathBuf::from(".flotilla/prod/baseline.json")
        );
    }
}
