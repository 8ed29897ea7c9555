//! The baseline template itself: [`build`] turns [`BaselineOptions`] into a [`Template`].
//!
//! Each submodule adds one part of the stack; the logical ids they share live in [`ids`].
//! - `network`: VPC, subnets over two zones, internet and NAT gateways, routes.
//! - `load_balancer`: security groups, the ALB, its listeners and the certificate.
//! - `compute`: the ECS cluster, ECR repository, log group, task roles and artefact bucket.
//! - `reaper`: the reaper Lambda, its role, log group and schedule.
//! - `observability`: the dashboard, the alarms and their notification topic.
//! - `waf`: the optional web ACL (rate limit, AWS managed rules) on the load balancer.

mod compute;
mod load_balancer;
mod network;
mod observability;
mod reaper;
pub mod waf;

use serde_json::json;

use crate::cfn::{Parameter, Template, get_att, join, reference, sub};
use crate::contract;
use crate::names;
use crate::options::{BaselineOptions, OptionsError, TlsMode};
use crate::outputs::{self, Mode};

/// The logical ids of the template's resources and conditions.
pub mod ids {
    /// The VPC.
    pub const VPC: &str = "Vpc";
    /// The internet gateway.
    pub const INTERNET_GATEWAY: &str = "InternetGateway";
    /// Its attachment to the VPC.
    pub const GATEWAY_ATTACHMENT: &str = "InternetGatewayAttachment";
    /// Public subnets, one per zone.
    pub const PUBLIC_SUBNETS: [&str; 2] = ["PublicSubnetA", "PublicSubnetB"];
    /// Private subnets, one per zone.
    pub const PRIVATE_SUBNETS: [&str; 2] = ["PrivateSubnetA", "PrivateSubnetB"];
    /// The public route table.
    pub const PUBLIC_ROUTE_TABLE: &str = "PublicRouteTable";
    /// The public default route (to the internet gateway).
    pub const PUBLIC_DEFAULT_ROUTE: &str = "PublicDefaultRoute";
    /// Public subnet to route table associations.
    pub const PUBLIC_ASSOCIATIONS: [&str; 2] = [
        "PublicSubnetARouteTableAssociation",
        "PublicSubnetBRouteTableAssociation",
    ];
    /// Private route tables, one per zone.
    pub const PRIVATE_ROUTE_TABLES: [&str; 2] = ["PrivateRouteTableA", "PrivateRouteTableB"];
    /// Private default routes (to a NAT gateway), one per zone.
    pub const PRIVATE_DEFAULT_ROUTES: [&str; 2] = ["PrivateDefaultRouteA", "PrivateDefaultRouteB"];
    /// Private subnet to route table associations.
    pub const PRIVATE_ASSOCIATIONS: [&str; 2] = [
        "PrivateSubnetARouteTableAssociation",
        "PrivateSubnetBRouteTableAssociation",
    ];
    /// NAT gateway addresses (the second only with one gateway per zone).
    pub const NAT_EIPS: [&str; 2] = ["NatEipA", "NatEipB"];
    /// NAT gateways (the second only with one gateway per zone).
    pub const NAT_GATEWAYS: [&str; 2] = ["NatGatewayA", "NatGatewayB"];
    /// The load balancer's security group.
    pub const ALB_SECURITY_GROUP: &str = "AlbSecurityGroup";
    /// The tasks' security group.
    pub const SERVICE_SECURITY_GROUP: &str = "ServiceSecurityGroup";
    /// The rule admitting the agent port into the tasks' group from the load balancer's.
    pub const SERVICE_INGRESS_FROM_ALB: &str = "ServiceIngressFromAlb";
    /// The load balancer.
    pub const LOAD_BALANCER: &str = "LoadBalancer";
    /// The HTTPS listener (TLS modes).
    pub const HTTPS_LISTENER: &str = "HttpsListener";
    /// The HTTP listener.
    pub const HTTP_LISTENER: &str = "HttpListener";
    /// The requested ACM certificate.
    pub const CERTIFICATE: &str = crate::contract::CERTIFICATE_LOGICAL_ID;
    /// The ECS cluster.
    pub const CLUSTER: &str = "Cluster";
    /// The ECR repository.
    pub const REPOSITORY: &str = crate::contract::REPOSITORY_LOGICAL_ID;
    /// The application log group.
    pub const LOG_GROUP: &str = "LogGroup";
    /// The task execution role.
    pub const EXECUTION_ROLE: &str = "ExecutionRole";
    /// The task role.
    pub const TASK_ROLE: &str = "TaskRole";
    /// The artefact bucket.
    pub const ARTEFACT_BUCKET: &str = crate::contract::ARTEFACT_BUCKET_LOGICAL_ID;
    /// The artefact bucket's policy (TLS only).
    pub const ARTEFACT_BUCKET_POLICY: &str = "ArtefactBucketPolicy";
    /// The reaper's role.
    pub const REAPER_ROLE: &str = "ReaperRole";
    /// The reaper's log group.
    pub const REAPER_LOG_GROUP: &str = "ReaperLogGroup";
    /// The reaper function.
    pub const REAPER_FUNCTION: &str = crate::contract::REAPER_FUNCTION_LOGICAL_ID;
    /// The reaper's schedule.
    pub const REAPER_SCHEDULE: &str = "ReaperSchedule";
    /// The permission letting the schedule invoke the reaper.
    pub const REAPER_INVOKE_PERMISSION: &str = "ReaperInvokePermission";
    /// The dashboard.
    pub const DASHBOARD: &str = "Dashboard";
    /// The alarm notification topic (email notifications).
    pub const ALARM_TOPIC: &str = "AlarmTopic";
    /// The email subscription to it.
    pub const ALARM_EMAIL_SUBSCRIPTION: &str = "AlarmEmailSubscription";
    /// The 5xx-rate alarm.
    pub const FIVE_XX_ALARM: &str = "FiveXxRateAlarm";
    /// The unhealthy-targets alarm.
    pub const UNHEALTHY_ALARM: &str = "UnhealthyTargetsAlarm";
    /// The no-running-tasks alarm.
    pub const NO_TASKS_ALARM: &str = "NoRunningTasksAlarm";
    /// The reaper-errors alarm.
    pub const REAPER_ERRORS_ALARM: &str = "ReaperErrorsAlarm";
    /// The web ACL (only with a WAF).
    pub const WEB_ACL: &str = "WebAcl";
    /// Its association with the load balancer.
    pub const WEB_ACL_ASSOCIATION: &str = "WebAclAssociation";

    /// Condition: the reaper's code key parameter is set.
    pub const HAS_REAPER_CODE: &str = "HasReaperCode";
    /// Condition: the reaper's code lives in the stack's own artefact bucket.
    pub const USE_ARTEFACT_BUCKET: &str = "UseArtefactBucket";
}

/// Builds the baseline template for `options`, or reports every problem with them.
pub fn build(options: &BaselineOptions) -> Result<Template, OptionsError> {
    let vpc = options.validate()?;
    let mode = if options.tls.has_tls() {
        Mode::Https
    } else {
        Mode::HttpOnly
    };
    let name = &options.name;
    let mut t = Template {
        description: match mode {
            Mode::Https => format!(
                "flotilla baseline for `{name}`: VPC, HTTPS load balancer, ECS cluster, ECR, \
                 roles, reaper, dashboard and alarms."
            ),
            Mode::HttpOnly => format!(
                "flotilla baseline for `{name}` in HTTP-ONLY mode (NO TLS: traffic is unencrypted; \
                 configure a domain for HTTPS): VPC, load balancer, ECS cluster, ECR, roles, \
                 reaper, dashboard and alarms."
            ),
        },
        ..Template::default()
    };
    t.metadata.insert(
        "flotilla".to_owned(),
        json!({
            "deploymentName": name.as_str(),
            "mode": mode.as_str(),
            "tls": match mode {
                Mode::Https => "HTTPS on 443 with ELBSecurityPolicy-TLS13-1-2-2021-06; port 80 redirects",
                Mode::HttpOnly => "none: plain HTTP on port 80 only, readable by anyone on the path",
            },
            "nat": options.nat.as_str(),
        }),
    );
    t.parameters.insert(
        contract::PARAM_REAPER_CODE_BUCKET,
        Parameter {
            description: "Bucket holding the reaper's code zip; empty means the stack's artefact bucket.",
            default: "",
        },
    );
    t.parameters.insert(
        contract::PARAM_REAPER_CODE_KEY,
        Parameter {
            description: "Key of the reaper's code zip (reaper/<sha256>/bootstrap.zip); empty creates no reaper yet.",
            default: "",
        },
    );
    t.conditions.insert(
        ids::HAS_REAPER_CODE,
        json!({"Fn::Not": [{"Fn::Equals": [reference(contract::PARAM_REAPER_CODE_KEY), ""]}]}),
    );
    t.conditions.insert(
        ids::USE_ARTEFACT_BUCKET,
        json!({"Fn::Equals": [reference(contract::PARAM_REAPER_CODE_BUCKET), ""]}),
    );

    network::add(&mut t, options, vpc);
    load_balancer::add(&mut t, options);
    compute::add(&mut t, options);
    reaper::add(&mut t, options);
    observability::add(&mut t, options);
    waf::add(&mut t, options);
    add_outputs(&mut t, options, mode);
    Ok(t)
}

fn add_outputs(t: &mut Template, options: &BaselineOptions, mode: Mode) {
    let name = &options.name;
    let routing_listener = match mode {
        Mode::Https => ids::HTTPS_LISTENER,
        Mode::HttpOnly => ids::HTTP_LISTENER,
    };
    t.output(
        outputs::DEPLOYMENT_NAME,
        "The deployment name this baseline serves.",
        json!(name.as_str()),
    );
    t.output(
        outputs::MODE,
        match mode {
            Mode::Https => "https: the load balancer terminates TLS on 443; port 80 redirects to it.",
            Mode::HttpOnly => {
                "http-only: NO TLS. The load balancer serves plain HTTP on port 80; configure a domain to get HTTPS."
            }
        },
        json!(mode.as_str()),
    );
    let url = match (mode, options.tls.domain()) {
        // A wildcard certificate names no single host, so the URL falls back to the load balancer.
        (Mode::Https, Some(domain)) if !domain.starts_with("*.") => {
            json!(format!("https://{domain}"))
        }
        (Mode::Https, _) => sub(format!("https://${{{}.DNSName}}", ids::LOAD_BALANCER)),
        (Mode::HttpOnly, _) => sub(format!("http://${{{}.DNSName}}", ids::LOAD_BALANCER)),
    };
    t.output(outputs::URL, "Where users reach the application.", url);
    if let Some(domain) = options.tls.domain() {
        t.output(
            outputs::DOMAIN,
            "The domain; point its DNS (CNAME or alias) at LoadBalancerDns.",
            json!(domain),
        );
    }
    t.output(
        outputs::LISTENER_ARN,
        "The routing listener: per-version rules and the default forward live here.",
        reference(routing_listener),
    );
    t.output(
        outputs::HTTP_LISTENER_ARN,
        match mode {
            Mode::Https => "The port-80 listener (redirects to HTTPS).",
            Mode::HttpOnly => "The port-80 listener (the routing listener in HTTP-only mode).",
        },
        reference(ids::HTTP_LISTENER),
    );
    t.output(
        outputs::LOAD_BALANCER_ARN,
        "The load balancer.",
        reference(ids::LOAD_BALANCER),
    );
    t.output(
        outputs::LOAD_BALANCER_DNS,
        "The load balancer's DNS name.",
        get_att(ids::LOAD_BALANCER, "DNSName"),
    );
    t.output(
        outputs::LOAD_BALANCER_FULL_NAME,
        "The load balancer's metric dimension (app/<name>/<id>).",
        get_att(ids::LOAD_BALANCER, "LoadBalancerFullName"),
    );
    t.output(outputs::VPC_ID, "The VPC.", reference(ids::VPC));
    t.output(
        outputs::PRIVATE_SUBNET_IDS,
        "The private subnets where tasks run, comma-separated.",
        join(
            ",",
            ids::PRIVATE_SUBNETS.iter().map(|s| reference(s)).collect(),
        ),
    );
    t.output(
        outputs::PUBLIC_SUBNET_IDS,
        "The public subnets of the load balancer and NAT, comma-separated.",
        join(
            ",",
            ids::PUBLIC_SUBNETS.iter().map(|s| reference(s)).collect(),
        ),
    );
    t.output(
        outputs::SERVICE_SECURITY_GROUP_ID,
        "The tasks' security group (admits the agent port from the load balancer only).",
        reference(ids::SERVICE_SECURITY_GROUP),
    );
    t.output(
        outputs::ALB_SECURITY_GROUP_ID,
        "The load balancer's security group.",
        reference(ids::ALB_SECURITY_GROUP),
    );
    t.output(
        outputs::CLUSTER_NAME,
        "The ECS cluster's name.",
        reference(ids::CLUSTER),
    );
    t.output(
        outputs::CLUSTER_ARN,
        "The ECS cluster's ARN.",
        get_att(ids::CLUSTER, "Arn"),
    );
    t.output(
        outputs::LOG_GROUP_NAME,
        "The application log group.",
        reference(ids::LOG_GROUP),
    );
    t.output(
        outputs::REPOSITORY_URI,
        "The ECR repository's URI.",
        get_att(ids::REPOSITORY, "RepositoryUri"),
    );
    t.output(
        outputs::REPOSITORY_NAME,
        "The ECR repository's name.",
        reference(ids::REPOSITORY),
    );
    t.output(
        outputs::EXECUTION_ROLE_ARN,
        "The task execution role (image pull, logs).",
        get_att(ids::EXECUTION_ROLE, "Arn"),
    );
    t.output(
        outputs::TASK_ROLE_ARN,
        "The task role (the agent's SSM access).",
        get_att(ids::TASK_ROLE, "Arn"),
    );
    t.output_when(
        outputs::REAPER_FUNCTION_NAME,
        ids::HAS_REAPER_CODE,
        "The reaper Lambda.",
        reference(ids::REAPER_FUNCTION),
    );
    t.output(
        outputs::ARTEFACT_BUCKET,
        "The bucket flotilla uploads the reaper's code to.",
        reference(ids::ARTEFACT_BUCKET),
    );
    t.output(
        outputs::DRAIN_BUCKET,
        "The bucket of the drain board (drain/<name>.json), which the task role may read.",
        reference(ids::ARTEFACT_BUCKET),
    );
    match &options.tls {
        TlsMode::Acm { .. } => t.output(
            outputs::CERTIFICATE_ARN,
            "The ACM certificate (validation records: flotilla baseline show).",
            reference(ids::CERTIFICATE),
        ),
        TlsMode::Certificate {
            certificate_arn, ..
        } => t.output(
            outputs::CERTIFICATE_ARN,
            "The certificate brought by the user.",
            json!(certificate_arn),
        ),
        TlsMode::HttpOnly => {}
    }
    t.output(
        outputs::DASHBOARD_NAME,
        "The CloudWatch dashboard.",
        json!(names::dashboard_name(name)),
    );
    if let Some(topic) = observability::topic_arn(options) {
        t.output(
            outputs::ALARM_TOPIC_ARN,
            "The SNS topic alarms notify.",
            topic,
        );
    }
    let grants: Vec<serde_json::Value> = options
        .secrets
        .ssm_parameters
        .iter()
        .chain(&options.secrets.secrets_manager)
        .map(|a| compute::sub_if_needed(a))
        .collect();
    t.output(
        outputs::SECRET_GRANTS,
        "The app secrets the execution role may read (deploys check their [secrets] against it).",
        if grants.is_empty() {
            json!("none")
        } else {
            json!({ "Fn::Join": [",", grants] })
        },
    );
    t.output(
        outputs::CONTAINER_PORT,
        "The port the load balancer reaches tasks on (the flotilla agent's port); deploys must use it.",
        json!(options.container_port.to_string()),
    );
}

/// The ARN of `resource` in `service`, in the stack's partition, region and account, as a
/// `Fn::Sub` (so `resource` may itself use `${...}` variables).
pub(crate) fn arn(service: &str, resource: &str) -> serde_json::Value {
    sub(format!(
        "arn:${{AWS::Partition}}:{service}:${{AWS::Region}}:${{AWS::AccountId}}:{resource}"
    ))
}
