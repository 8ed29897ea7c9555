//! The template's key properties, read back from its JSON: what a user or the AWS provider would
//! notice if it changed (TLS policy, header hygiene, the 503 default, who may reach the tasks,
//! what the task role may touch in SSM, the output names, NAT layout, the reaper's environment).

use std::collections::{BTreeMap, BTreeSet};

use expect_test::expect;
use flotilla_baseline::contract::{self, ReaperSettings};
use flotilla_baseline::outputs::{self, BaselineOutputs};
use flotilla_baseline::{BaselineOptions, NatMode, TlsMode, cfn};
use flotilla_core::DeploymentName;
use serde_json::{Value, json};

use super::{template, variants};

fn json_of(options: &BaselineOptions) -> Value {
    template(options).to_json()
}

fn variant(label: &str) -> BaselineOptions {
    variants()
        .into_iter()
        .find(|(l, _)| *l == label)
        .map(|(_, o)| o)
        .expect("known variant")
}

fn props<'a>(t: &'a Value, id: &str) -> &'a Value {
    let r = &t["Resources"][id];
    assert!(!r.is_null(), "no resource {id}");
    &r["Properties"]
}

fn resources_of_type<'a>(t: &'a Value, kind: &str) -> Vec<&'a str> {
    t["Resources"]
        .as_object()
        .expect("resources")
        .iter()
        .filter(|(_, r)| r["Type"] == kind)
        .map(|(id, _)| id.as_str())
        .collect()
}

fn lb_attribute(t: &Value, key: &str) -> Option<String> {
    props(t, "LoadBalancer")["LoadBalancerAttributes"]
        .as_array()
        .expect("attributes")
        .iter()
        .find(|a| a["Key"] == key)
        .and_then(|a| a["Value"].as_str())
        .map(str::to_owned)
}

fn no_version_action() -> Value {
    json!([{
        "Type": "fixed-response",
        "FixedResponseConfig": {
            "StatusCode": "503",
            "ContentType": "text/plain",
            "MessageBody": "no version deployed yet",
        },
    }])
}

#[test]
fn https_listener_uses_the_tls13_policy_and_the_certificate() {
    let t = json_of(&variant("https"));
    let https = props(&t, "HttpsListener");
    assert_eq!(https["SslPolicy"], "ELBSecurityPolicy-TLS13-1-2-2021-06");
    assert_eq!(https["Port"], 443);
    assert_eq!(
        https["Certificates"],
        json!([{ "CertificateArn": { "Ref": "Certificate" } }])
    );
    let cert = props(&t, "Certificate");
    assert_eq!(cert["ValidationMethod"], "DNS");
    assert_eq!(cert["DomainName"], "app.example.com");
    assert_eq!(
        cert["DomainValidationOptions"][1]["HostedZoneId"],
        "Z0123456789ABCDEFGHIJ"
    );

    let brought = json_of(&variant("per-az"));
    assert_eq!(
        props(&brought, "HttpsListener")["Certificates"][0]["CertificateArn"],
        "arn:aws:acm:eu-west-1:123456789012:certificate/0a1b2c3d-4e5f"
    );
    assert!(resources_of_type(&brought, "AWS::CertificateManager::Certificate").is_empty());
}

#[test]
fn load_balancer_drops_invalid_headers_and_takes_the_idle_timeout() {
    for (label, mut options) in variants() {
        options.idle_timeout_seconds = 900;
        let t = json_of(&options);
        assert_eq!(
            lb_attribute(&t, "routing.http.drop_invalid_header_fields.enabled").as_deref(),
            Some("true"),
            "{label}"
        );
        assert_eq!(
            lb_attribute(&t, "idle_timeout.timeout_seconds").as_deref(),
            Some("900")
        );
        assert_eq!(props(&t, "LoadBalancer")["Scheme"], "internet-facing");
    }
    let logged = json_of(&variant("per-az"));
    assert_eq!(
        lb_attribute(&logged, "access_logs.s3.bucket").as_deref(),
        Some("example-alb-logs")
    );
    assert_eq!(
        lb_attribute(&json_of(&variant("https")), "access_logs.s3.enabled"),
        None
    );
}

#[test]
fn the_routing_listener_answers_503_until_a_version_exists() {
    let https = json_of(&variant("https"));
    assert_eq!(
        props(&https, "HttpsListener")["DefaultActions"],
        no_version_action()
    );
    let redirect = &props(&https, "HttpListener")["DefaultActions"][0];
    assert_eq!(redirect["Type"], "redirect");
    assert_eq!(redirect["RedirectConfig"]["Protocol"], "HTTPS");
    assert_eq!(redirect["RedirectConfig"]["StatusCode"], "HTTP_301");
    assert_eq!(
        https["Outputs"]["ListenerArn"]["Value"],
        json!({ "Ref": "HttpsListener" })
    );

    let http = json_of(&variant("http-only"));
    assert_eq!(
        props(&http, "HttpListener")["DefaultActions"],
        no_version_action()
    );
    assert!(http["Resources"]["HttpsListener"].is_null());
    assert_eq!(
        http["Outputs"]["ListenerArn"]["Value"],
        json!({ "Ref": "HttpListener" })
    );
}

#[test]
fn http_only_mode_says_clearly_that_it_has_no_tls() {
    let t = json_of(&variant("http-only"));
    assert!(
        t["Description"]
            .as_str()
            .expect("description")
            .contains("NO TLS")
    );
    assert_eq!(t["Outputs"]["Mode"]["Value"], "http-only");
    assert!(
        t["Outputs"]["Mode"]["Description"]
            .as_str()
            .expect("text")
            .contains("NO TLS")
    );
    assert_eq!(t["Metadata"]["flotilla"]["mode"], "http-only");
    assert!(t["Outputs"]["CertificateArn"].is_null());
    assert_eq!(
        t["Outputs"]["Url"]["Value"],
        json!({ "Fn::Sub": "http://${LoadBalancer.DNSName}" })
    );
    let https = json_of(&variant("https"));
    assert_eq!(https["Outputs"]["Mode"]["Value"], "https");
    assert_eq!(https["Outputs"]["Url"]["Value"], "https://app.example.com");
}

#[test]
fn only_the_load_balancer_reaches_the_tasks() {
    for (label, options) in variants() {
        let t = json_of(&options);
        let alb = props(&t, "AlbSecurityGroup");
        let ports: BTreeSet<i64> = alb["SecurityGroupIngress"]
            .as_array()
            .expect("ingress")
            .iter()
            .map(|r| {
                assert_eq!(r["CidrIp"], "0.0.0.0/0", "{label}");
                r["FromPort"].as_i64().expect("port")
            })
            .collect();
        let want: BTreeSet<i64> = if options.tls.has_tls() {
            [80, 443].into()
        } else {
            [80].into()
        };
        assert_eq!(ports, want, "{label}");
        assert_eq!(
            alb["SecurityGroupEgress"],
            json!([{
                "IpProtocol": "tcp",
                "FromPort": 8001,
                "ToPort": 8001,
                "DestinationSecurityGroupId": { "Ref": "ServiceSecurityGroup" },
                "Description": "To the tasks on the agent port",
            }]),
            "{label}"
        );

        let service = props(&t, "ServiceSecurityGroup");
        assert!(
            service["SecurityGroupIngress"].is_null(),
            "{label}: inline ingress on tasks"
        );
        let ingress_rules = resources_of_type(&t, "AWS::EC2::SecurityGroupIngress");
        assert_eq!(ingress_rules, ["ServiceIngressFromAlb"], "{label}");
        let rule = props(&t, "ServiceIngressFromAlb");
        assert_eq!(rule["GroupId"], json!({ "Ref": "ServiceSecurityGroup" }));
        assert_eq!(
            rule["SourceSecurityGroupId"],
            json!({ "Ref": "AlbSecurityGroup" })
        );
        assert_eq!(
            (rule["FromPort"].as_i64(), rule["ToPort"].as_i64()),
            (Some(8001), Some(8001))
        );
        assert!(rule["CidrIp"].is_null());
    }
}

#[test]
fn the_task_role_reads_the_deployment_and_writes_only_task_readiness() {
    let t = json_of(&variant("https"));
    let role = props(&t, "TaskRole");
    assert_eq!(role["Path"], "/flotilla/prod/ecs/");
    let policy = serde_json::to_string_pretty(&role["Policies"]).expect("serialises");
    expect![[r#"
        [
          {
            "PolicyDocument": {
              "Statement": [
                {
                  "Action": [
                    "ssm:GetParameter",
                    "ssm:GetParameters"
                  ],
                  "Effect": "Allow",
                  "Resource": [
                    {
                      "Fn::Sub": "arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}:parameter/apps/prod/*"
                    }
                  ],
                  "Sid": "ReadDeploymentState"
                },
                {
                  "Action": [
                    "ssm:PutParameter"
                  ],
                  "Effect": "Allow",
                  "Resource": [
                    {
                      "Fn::Sub": "arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}:parameter/apps/prod/*/tasks/*"
                    }
                  ],
                  "Sid": "ReportTaskReadiness"
                },
                {
                  "Action": [
                    "s3:GetObject"
                  ],
                  "Effect": "Allow",
                  "Resource": [
                    {
                      "Fn::Sub": "${ArtefactBucket.Arn}/drain/prod.json"
                    }
                  ],
                  "Sid": "ReadDrainBoard"
                },
                {
                  "Action": [
                    "s3:ListBucket"
                  ],
                  "Effect": "Allow",
                  "Resource": [
                    {
                      "Fn::GetAtt": [
                        "ArtefactBucket",
                        "Arn"
                      ]
                    }
                  ],
                  "Sid": "FindDrainBoard"
                },
                {
                  "Action": [
                    "ecs:UpdateTaskProtection"
                  ],
                  "Effect": "Allow",
                  "Resource": [
                    {
                      "Fn::Sub": "arn:${AWS::Partition}:ecs:${AWS::Region}:${AWS::AccountId}:task/flotilla-prod/*"
                    }
                  ],
                  "Sid": "ProtectTaskWithSessions"
                }
              ],
              "Version": "2012-10-17"
            },
            "PolicyName": "deployment-state"
          }
        ]"#]]
    .assert_eq(&policy);
    assert_eq!(
        role["AssumeRolePolicyDocument"]["Statement"][0]["Principal"]["Service"],
        "ecs-tasks.amazonaws.com"
    );
}

/// `(action, resource as written)` pairs a role's policies allow.
fn allowed(t: &Value, role: &str) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for policy in props(t, role)["Policies"].as_array().expect("policies") {
        for s in policy["PolicyDocument"]["Statement"]
            .as_array()
            .expect("statements")
        {
            for a in s["Action"].as_array().expect("actions") {
                for r in s["Resource"].as_array().expect("resources") {
                    let r = r["Fn::Sub"]
                        .as_str()
                        .or(r.as_str())
                        .unwrap_or("")
                        .to_owned();
                    out.insert((a.as_str().expect("action").to_owned(), r));
                }
            }
        }
    }
    out
}

#[test]
fn the_reaper_role_may_recreate_a_missing_rule_when_it_retires_a_version() {
    // retire_affinity creates a missing rule as a 410 (CreateRule on the listener, with tags:
    // AddTags on the new rule), modifies the other, and removal deletes both and the target group.
    let t = json_of(&variant("https"));
    let allowed = allowed(&t, "ReaperRole");
    let lb = "${LoadBalancer.LoadBalancerFullName}";
    let elb = "arn:${AWS::Partition}:elasticloadbalancing:${AWS::Region}:${AWS::AccountId}";
    for (action, resource) in [
        ("CreateRule", format!("{elb}:listener/{lb}/*")),
        ("AddTags", format!("{elb}:listener-rule/{lb}/*")),
        ("ModifyRule", format!("{elb}:listener-rule/{lb}/*")),
        ("DeleteRule", format!("{elb}:listener-rule/{lb}/*")),
    ] {
        let action = format!("elasticloadbalancing:{action}");
        assert!(
            allowed.contains(&(action.clone(), resource.clone())),
            "the reaper may not {action} on {resource}: {allowed:#?}"
        );
    }
    // The deployer can do whatever the reaper does to the listener (a `flotilla reap` run by hand).
    let name = DeploymentName::new("prod").expect("valid");
    let text =
        flotilla_baseline::deployer_policy(&flotilla_baseline::DeployerPolicyOptions::new(name))
            .to_string();
    for action in [
        "CreateRule",
        "AddTags",
        "ModifyRule",
        "DeleteRule",
        "DeleteTargetGroup",
    ] {
        assert!(
            text.contains(&format!("elasticloadbalancing:{action}")),
            "deployer lacks {action}"
        );
    }
}

#[test]
fn no_role_grants_a_wildcard_action() {
    for (label, options) in variants() {
        let t = json_of(&options);
        for id in resources_of_type(&t, "AWS::IAM::Role") {
            for policy in props(&t, id)["Policies"].as_array().expect("policies") {
                for s in policy["PolicyDocument"]["Statement"]
                    .as_array()
                    .expect("statements")
                {
                    for a in s["Action"].as_array().expect("actions") {
                        let a = a.as_str().expect("action");
                        assert!(!a.contains('*'), "{label}: {id} allows {a}");
                    }
                }
            }
        }
    }
}

#[test]
fn outputs_are_the_documented_contract() {
    let names = |label: &str| -> Vec<String> {
        json_of(&variant(label))["Outputs"]
            .as_object()
            .expect("outputs")
            .keys()
            .cloned()
            .collect()
    };
    expect!["AlarmTopicArn AlbSecurityGroupId ArtefactBucket CertificateArn ClusterArn ClusterName ContainerPort DashboardName DeploymentName Domain DrainBucket ExecutionRoleArn HttpListenerArn ListenerArn LoadBalancerArn LoadBalancerDns LoadBalancerFullName LogGroupName Mode PrivateSubnetIds PublicSubnetIds ReaperFunctionName RepositoryName RepositoryUri SecretGrants ServiceSecurityGroupId TaskRoleArn Url VpcId"]
    .assert_eq(&names("https").join(" "));
    expect!["AlbSecurityGroupId ArtefactBucket ClusterArn ClusterName ContainerPort DashboardName DeploymentName DrainBucket ExecutionRoleArn HttpListenerArn ListenerArn LoadBalancerArn LoadBalancerDns LoadBalancerFullName LogGroupName Mode PrivateSubnetIds PublicSubnetIds ReaperFunctionName RepositoryName RepositoryUri SecretGrants ServiceSecurityGroupId TaskRoleArn Url VpcId"]
    .assert_eq(&names("http-only").join(" "));
    let all: BTreeSet<&str> = outputs::ALL.iter().copied().collect();
    for label in ["https", "http-only", "per-az"] {
        for n in names(label) {
            assert!(
                all.contains(n.as_str()),
                "{label}: output {n} is not in outputs::ALL"
            );
        }
    }
    let t = json_of(&variant("https"));
    assert_eq!(
        t["Outputs"]["ReaperFunctionName"]["Condition"],
        "HasReaperCode"
    );
    assert_eq!(
        t["Outputs"]["PrivateSubnetIds"]["Value"],
        json!({ "Fn::Join": [",", [{ "Ref": "PrivateSubnetA" }, { "Ref": "PrivateSubnetB" }]] })
    );
}

#[test]
fn outputs_as_the_stack_reports_them_parse_into_baseline_outputs() {
    // Resolve each output the way CloudFormation would, with made-up physical ids.
    for (label, options) in variants() {
        let t = json_of(&options);
        let pairs: BTreeMap<String, String> = t["Outputs"]
            .as_object()
            .expect("outputs")
            .iter()
            .map(|(k, o)| {
                let v = match &o["Value"] {
                    Value::String(s) => s.clone(),
                    Value::Object(m) if m.contains_key("Fn::Join") => "subnet-1,subnet-2".into(),
                    // A reference resolves to a physical id: an ARN for the `...Arn` outputs.
                    _ if k.ends_with("Arn") => {
                        format!(
                            "arn:aws:made-up:us-east-1:123456789012:{}",
                            k.to_lowercase()
                        )
                    }
                    _ => format!("{}-0123456789abcdef", k.to_lowercase()),
                };
                (k.clone(), v)
            })
            .collect();
        let parsed = BaselineOutputs::from_stack_outputs(pairs).expect(label);
        assert_eq!(parsed.deployment_name, "prod");
        assert_eq!(parsed.container_port, 8001);
        assert_eq!(parsed.private_subnet_ids, ["subnet-1", "subnet-2"]);
        assert_eq!(parsed.mode.as_str(), t["Outputs"]["Mode"]["Value"]);
        assert_eq!(
            parsed.certificate_arn.is_some(),
            options.tls.has_tls(),
            "{label}"
        );
    }
}

#[test]
fn nat_gateways_follow_the_nat_mode() {
    let single = json_of(&variant("https"));
    assert_eq!(
        resources_of_type(&single, "AWS::EC2::NatGateway"),
        ["NatGatewayA"]
    );
    for route in ["PrivateDefaultRouteA", "PrivateDefaultRouteB"] {
        assert_eq!(
            props(&single, route)["NatGatewayId"],
            json!({ "Ref": "NatGatewayA" })
        );
    }
    let per_az = json_of(&variant("per-az"));
    assert_eq!(variant("per-az").nat, NatMode::PerAz);
    assert_eq!(
        resources_of_type(&per_az, "AWS::EC2::NatGateway"),
        ["NatGatewayA", "NatGatewayB"]
    );
    assert_eq!(
        props(&per_az, "PrivateDefaultRouteA")["NatGatewayId"],
        json!({ "Ref": "NatGatewayA" })
    );
    assert_eq!(
        props(&per_az, "PrivateDefaultRouteB")["NatGatewayId"],
        json!({ "Ref": "NatGatewayB" })
    );
    assert_eq!(
        props(&per_az, "NatGatewayB")["SubnetId"],
        json!({ "Ref": "PublicSubnetB" })
    );
    // The two zones are distinct entries of the region's zone list.
    assert_eq!(
        props(&per_az, "PrivateSubnetB")["AvailabilityZone"],
        json!({ "Fn::Select": ["1", { "Fn::GetAZs": "" }] })
    );
}

#[test]
fn the_reaper_environment_is_what_the_reaper_reads() {
    let options = variant("per-az");
    let t = json_of(&options);
    let function = &t["Resources"]["ReaperFunction"];
    assert_eq!(function["Condition"], "HasReaperCode");
    let p = &function["Properties"];
    assert_eq!(p["Runtime"], "provided.al2023");
    assert_eq!(p["Handler"], "bootstrap");
    assert_eq!(
        p["Code"]["S3Key"],
        json!({ "Ref": contract::PARAM_REAPER_CODE_KEY })
    );
    let variables = p["Environment"]["Variables"]
        .as_object()
        .expect("variables");
    let resolved: BTreeMap<String, String> = variables
        .iter()
        .map(|(k, v)| {
            let v = match v {
                Value::String(s) => s.clone(),
                _ if *v == json!({ "Ref": "Cluster" }) => "flotilla-prod".into(),
                _ if *v == json!({ "Ref": "HttpsListener" }) => "arn:listener".into(),
                _ if *v == json!({ "Ref": "LogGroup" }) => "/flotilla/prod/app".into(),
                _ if *v == json!({ "Ref": "ArtefactBucket" }) => "flotilla-prod-1a2b3c4d".into(),
                _ if *v == json!({ "Fn::GetAtt": ["Repository", "RepositoryUri"] }) => {
                    "123456789012.dkr.ecr.eu-west-1.amazonaws.com/flotilla/prod".into()
                }
                other => panic!("unexpected value {other} for {k}"),
            };
            (k.clone(), v)
        })
        .collect();
    let settings = ReaperSettings::from_env(|k| resolved.get(k).cloned()).expect("complete");
    assert_eq!(settings.policy, options.reaper.policy);
    assert_eq!(settings.interval, options.reaper.interval);
    // The reaper's lock lives exactly as long as the function may run.
    assert_eq!(Some(settings.timeout.as_secs()), p["Timeout"].as_u64());
    assert_eq!(settings.cluster, "flotilla-prod");
    assert_eq!(settings.listener_arn, "arn:listener");
    assert_eq!(settings.log_group.as_deref(), Some("/flotilla/prod/app"));
    // The reaper publishes the states it records to the drain board the tasks read.
    assert_eq!(
        settings.drain_bucket.as_deref(),
        Some("flotilla-prod-1a2b3c4d")
    );
    assert_eq!(
        settings.repository.as_deref(),
        Some("123456789012.dkr.ecr.eu-west-1.amazonaws.com/flotilla/prod")
    );
    assert_eq!(settings.affinity_header, options.affinity_header);
    assert_eq!(settings.affinity_query, options.affinity_query);
    assert_eq!(
        t["Resources"]["ReaperSchedule"]["Properties"]["ScheduleExpression"],
        "rate(1 minute)"
    );
}

#[test]
fn every_reference_resolves_and_the_body_fits_the_api() {
    for (label, options) in variants() {
        let t = template(&options);
        assert_eq!(
            t.dangling_references(),
            Vec::<(String, String)>::new(),
            "{label}"
        );
        let size = t.to_compact_string().len();
        assert!(size < cfn::TEMPLATE_BODY_MAX_BYTES, "{label}: {size} bytes");
    }
}

#[test]
fn rendering_is_deterministic() {
    for (label, options) in variants() {
        assert_eq!(
            template(&options).to_pretty_string(),
            template(&options.clone()).to_pretty_string(),
            "{label}"
        );
    }
}

#[test]
fn resources_of_the_https_baseline() {
    let t = json_of(&variant("https"));
    let listing: Vec<String> = t["Resources"]
        .as_object()
        .expect("resources")
        .iter()
        .map(|(id, r)| format!("{id}: {}", r["Type"].as_str().expect("type")))
        .collect();
    expect![[r#"
        AlarmEmailSubscription: AWS::SNS::Subscription
        AlarmTopic: AWS::SNS::Topic
        AlbSecurityGroup: AWS::EC2::SecurityGroup
        ArtefactBucket: AWS::S3::Bucket
        ArtefactBucketPolicy: AWS::S3::BucketPolicy
        Certificate: AWS::CertificateManager::Certificate
        Cluster: AWS::ECS::Cluster
        Dashboard: AWS::CloudWatch::Dashboard
        ExecutionRole: AWS::IAM::Role
        FiveXxRateAlarm: AWS::CloudWatch::Alarm
        HttpListener: AWS::ElasticLoadBalancingV2::Listener
        HttpsListener: AWS::ElasticLoadBalancingV2::Listener
        InternetGateway: AWS::EC2::InternetGateway
        InternetGatewayAttachment: AWS::EC2::VPCGatewayAttachment
        LoadBalancer: AWS::ElasticLoadBalancingV2::LoadBalancer
        LogGroup: AWS::Logs::LogGroup
        NatEipA: AWS::EC2::EIP
        NatGatewayA: AWS::EC2::NatGateway
        NoRunningTasksAlarm: AWS::CloudWatch::Alarm
        PrivateDefaultRouteA: AWS::EC2::Route
        PrivateDefaultRouteB: AWS::EC2::Route
        PrivateRouteTableA: AWS::EC2::RouteTable
        PrivateRouteTableB: AWS::EC2::RouteTable
        PrivateSubnetA: AWS::EC2::Subnet
        PrivateSubnetARouteTableAssociation: AWS::EC2::SubnetRouteTableAssociation
        PrivateSubnetB: AWS::EC2::Subnet
        PrivateSubnetBRouteTableAssociation: AWS::EC2::SubnetRouteTableAssociation
        PublicDefaultRoute: AWS::EC2::Route
        PublicRouteTable: AWS::EC2::RouteTable
        PublicSubnetA: AWS::EC2::Subnet
        PublicSubnetARouteTableAssociation: AWS::EC2::SubnetRouteTableAssociation
        PublicSubnetB: AWS::EC2::Subnet
        PublicSubnetBRouteTableAssociation: AWS::EC2::SubnetRouteTableAssociation
        ReaperErrorsAlarm: AWS::CloudWatch::Alarm
        ReaperFunction: AWS::Lambda::Function
        ReaperInvokePermission: AWS::Lambda::Permission
        ReaperLogGroup: AWS::Logs::LogGroup
        ReaperRole: AWS::IAM::Role
        ReaperSchedule: AWS::Events::Rule
        Repository: AWS::ECR::Repository
        ServiceIngressFromAlb: AWS::EC2::SecurityGroupIngress
        ServiceSecurityGroup: AWS::EC2::SecurityGroup
        TaskRole: AWS::IAM::Role
        UnhealthyTargetsAlarm: AWS::CloudWatch::Alarm
        Vpc: AWS::EC2::VPC"#]]
    .assert_eq(&listing.join("\n"));
}

#[test]
fn cluster_repository_and_logs_are_configured_for_operations() {
    let mut options = variant("https");
    options.log_retention_days = 90;
    options.keep_images = 12;
    let t = json_of(&options);
    assert_eq!(
        props(&t, "Cluster")["ClusterSettings"],
        json!([{ "Name": "containerInsights", "Value": "enabled" }])
    );
    let repo = props(&t, "Repository");
    assert_eq!(repo["ImageScanningConfiguration"]["ScanOnPush"], true);
    assert_eq!(repo["RepositoryName"], "flotilla/prod");
    let lifecycle: Value = serde_json::from_str(
        repo["LifecyclePolicy"]["LifecyclePolicyText"]
            .as_str()
            .expect("text"),
    )
    .expect("lifecycle policy is JSON");
    assert_eq!(lifecycle["rules"][1]["selection"]["countNumber"], 12);
    assert_eq!(props(&t, "LogGroup")["RetentionInDays"], 90);
    assert_eq!(props(&t, "ReaperLogGroup")["RetentionInDays"], 90);
    let bucket = props(&t, "ArtefactBucket");
    assert_eq!(bucket["VersioningConfiguration"]["Status"], "Enabled");
    assert_eq!(
        bucket["PublicAccessBlockConfiguration"]["RestrictPublicBuckets"],
        true
    );
    assert_eq!(
        bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"]
            ["SSEAlgorithm"],
        "AES256"
    );
}

#[test]
fn the_dashboard_body_is_json_with_every_widget() {
    let t = json_of(&variant("https"));
    let body = props(&t, "Dashboard")["DashboardBody"]["Fn::Sub"]
        .as_str()
        .expect("a Fn::Sub string");
    let parsed: Value = serde_json::from_str(body).expect("dashboard body is JSON");
    let titles: Vec<&str> = parsed["widgets"]
        .as_array()
        .expect("widgets")
        .iter()
        .map(|w| w["properties"]["title"].as_str().expect("title"))
        .collect();
    expect![[r#"
        flotilla prod: alarms
        Requests per version
        5xx responses
        Target response time per version (p99, seconds)
        Healthy and unhealthy targets per version
        Running tasks per version
        CPU and memory per version (%)
        Drained tasks (App/Drain ShutdownReady per task, 1 = ready to retire)
        Reaper passes"#]]
    .assert_eq(&titles.join("\n"));
    assert!(body.contains("${LoadBalancer.LoadBalancerFullName}"));
    assert!(
        body.contains("MetricName=\\\"ShutdownReady\\\" deployment_name=\\\"prod\\\""),
        "{body}"
    );
}

#[test]
fn invalid_options_build_nothing() {
    let mut options = BaselineOptions::new(
        DeploymentName::new("prod").expect("valid"),
        TlsMode::Acm {
            domain: "nope".into(),
            alternative_names: vec![],
            hosted_zone_id: None,
        },
    );
    options.container_port = 0;
    let err = flotilla_baseline::build(&options).expect_err("invalid");
    let fields: Vec<&str> = err.problems.iter().map(|p| p.field).collect();
    assert_eq!(fields, ["aws.domain", "aws.container_port"]);
}

#[test]
fn the_execution_role_may_read_exactly_the_apps_secrets() {
    let statements = |t: &Value| -> Vec<Value> {
        props(t, "ExecutionRole")["Policies"][0]["PolicyDocument"]["Statement"]
            .as_array()
            .expect("statements")
            .clone()
    };
    let sids = |t: &Value| -> Vec<String> {
        statements(t)
            .iter()
            .map(|s| s["Sid"].as_str().unwrap_or("").to_owned())
            .collect()
    };
    // Without secrets: no statement about them, and the output says none.
    let plain = json_of(&variant("https"));
    assert!(
        !sids(&plain).iter().any(|s| s.contains("Secret")),
        "{:?}",
        sids(&plain)
    );
    assert_eq!(plain["Outputs"]["SecretGrants"]["Value"], json!("none"));

    let t = json_of(&variant("per-az"));
    let by_sid: BTreeMap<String, Value> = statements(&t)
        .into_iter()
        .map(|s| (s["Sid"].as_str().unwrap_or("").to_owned(), s))
        .collect();
    let ssm = &by_sid["ReadAppSecretsFromParameterStore"];
    assert_eq!(ssm["Action"], json!(["ssm:GetParameters"]));
    assert_eq!(
        ssm["Resource"],
        json!([{"Fn::Sub": "arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}:parameter/prod/db-url"}])
    );
    let sm = &by_sid["ReadAppSecretsFromSecretsManager"];
    assert_eq!(sm["Action"], json!(["secretsmanager:GetSecretValue"]));
    assert_eq!(
        sm["Resource"],
        json!(["arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod-auth-AbC123"])
    );
    // Deploys read the grants back from the stack's outputs.
    assert_eq!(
        t["Outputs"]["SecretGrants"]["Value"]["Fn::Join"][1]
            .as_array()
            .map(Vec::len),
        Some(2)
    );
}

#[test]
fn the_optional_web_acl_rate_limits_and_runs_the_managed_rules_on_the_load_balancer() {
    // Off by default.
    for label in ["https", "http-only"] {
        let t = json_of(&variant(label));
        assert!(
            resources_of_type(&t, "AWS::WAFv2::WebACL").is_empty(),
            "{label}"
        );
        assert!(
            resources_of_type(&t, "AWS::WAFv2::WebACLAssociation").is_empty(),
            "{label}"
        );
    }
    let t = json_of(&variant("per-az"));
    let acl = props(&t, "WebAcl");
    assert_eq!(acl["Scope"], "REGIONAL");
    assert_eq!(acl["DefaultAction"], json!({ "Allow": {} }));
    let rules = acl["Rules"].as_array().expect("rules");
    let rate = &rules[0]["Statement"]["RateBasedStatement"];
    assert_eq!(rate["Limit"], 1500);
    assert_eq!(rate["AggregateKeyType"], "IP");
    assert_eq!(rules[0]["Action"], json!({ "Block": {} }));
    let managed: Vec<&str> = rules[1..]
        .iter()
        .map(|r| {
            assert_eq!(
                r["Statement"]["ManagedRuleGroupStatement"]["VendorName"],
                "AWS"
            );
            r["Statement"]["ManagedRuleGroupStatement"]["Name"]
                .as_str()
                .expect("name")
        })
        .collect();
    assert_eq!(
        managed,
        [
            "AWSManagedRulesCommonRuleSet",
            "AWSManagedRulesKnownBadInputsRuleSet"
        ]
    );
    let priorities: BTreeSet<u64> = rules
        .iter()
        .map(|r| r["Priority"].as_u64().expect("priority"))
        .collect();
    assert_eq!(priorities.len(), rules.len(), "distinct priorities");
    let association = props(&t, "WebAclAssociation");
    assert_eq!(association["ResourceArn"], json!({ "Ref": "LoadBalancer" }));
    assert_eq!(
        association["WebACLArn"],
        json!({ "Fn::GetAtt": ["WebAcl", "Arn"] })
    );

    let mut bad = variant("per-az");
    bad.waf = Some(flotilla_baseline::WafOptions { rate_limit: 5 });
    let err = flotilla_baseline::build(&bad).expect_err("rate limit too low");
    assert!(err.to_string().contains("aws.waf_rate_limit"), "{err}");
}
