//! The front door: security groups, the Application Load Balancer, its listeners, and the
//! certificate. Until a version is deployed the routing listener answers a fixed 503.

use serde_json::{Value, json};

use super::ids;
use crate::cfn::{Resource, Template, reference, tags};
use crate::contract::{NO_VERSION_MESSAGE, NO_VERSION_STATUS};
use crate::names;
use crate::options::{BaselineOptions, TlsMode};

/// The TLS policy of the HTTPS listener: TLS 1.3 and 1.2 with forward secrecy only.
/// CloudFormation's default is older and allows weaker ciphers, so it is always set.
pub const TLS_POLICY: &str = "ELBSecurityPolicy-TLS13-1-2-2021-06";

pub(super) fn add(t: &mut Template, options: &BaselineOptions) {
    let name = options.name.as_str();
    let https = options.tls.has_tls();
    let port = i64::from(options.container_port);

    let mut ingress = vec![json!({
        "IpProtocol": "tcp",
        "FromPort": 80,
        "ToPort": 80,
        "CidrIp": "0.0.0.0/0",
        "Description": if https {
            "HTTP from anywhere, redirected to HTTPS"
        } else {
            "HTTP from anywhere (HTTP-only mode: no TLS)"
        },
    })];
    if https {
        ingress.push(json!({
            "IpProtocol": "tcp",
            "FromPort": 443,
            "ToPort": 443,
            "CidrIp": "0.0.0.0/0",
            "Description": "HTTPS from anywhere",
        }));
    }
    t.add(
        ids::ALB_SECURITY_GROUP,
        Resource::new(
            "AWS::EC2::SecurityGroup",
            json!({
                "GroupDescription": format!("flotilla {name}: load balancer, public web ports"),
                "VpcId": reference(ids::VPC),
                "SecurityGroupIngress": ingress,
                // Stating the egress replaces the default allow-all: the load balancer only
                // talks to the tasks, on the port their agent listens on.
                "SecurityGroupEgress": [{
                    "IpProtocol": "tcp",
                    "FromPort": port,
                    "ToPort": port,
                    "DestinationSecurityGroupId": reference(ids::SERVICE_SECURITY_GROUP),
                    "Description": "To the tasks on the agent port",
                }],
                "Tags": tags(&[("Name", json!(format!("flotilla-{name}-alb")))]),
            }),
        )
        .skip_checkov(
            "CKV_AWS_260",
            "A public web application's load balancer must accept port 80 from the internet; \
             in HTTPS mode it only redirects to 443.",
        ),
    );
    t.add(
        ids::SERVICE_SECURITY_GROUP,
        Resource::new(
            "AWS::EC2::SecurityGroup",
            json!({
                "GroupDescription": format!("flotilla {name}: tasks, agent port from the load balancer only"),
                "VpcId": reference(ids::VPC),
                "SecurityGroupEgress": [{
                    "IpProtocol": "-1",
                    "CidrIp": "0.0.0.0/0",
                    "Description": "Out through the NAT gateway: AWS APIs, the registry and the app's own dependencies",
                }],
                "Tags": tags(&[("Name", json!(format!("flotilla-{name}-tasks")))]),
            }),
        ),
    );
    // A separate rule, so the two groups can name each other without a dependency cycle.
    t.add(
        ids::SERVICE_INGRESS_FROM_ALB,
        Resource::new(
            "AWS::EC2::SecurityGroupIngress",
            json!({
                "GroupId": reference(ids::SERVICE_SECURITY_GROUP),
                "IpProtocol": "tcp",
                "FromPort": port,
                "ToPort": port,
                "SourceSecurityGroupId": reference(ids::ALB_SECURITY_GROUP),
                "Description": "The agent port, from the load balancer only",
            }),
        ),
    );

    let mut attributes = vec![
        attribute(
            "idle_timeout.timeout_seconds",
            options.idle_timeout_seconds.to_string(),
        ),
        attribute("routing.http.drop_invalid_header_fields.enabled", "true"),
        attribute("deletion_protection.enabled", "false"),
    ];
    let mut load_balancer = Resource::new("AWS::ElasticLoadBalancingV2::LoadBalancer", Value::Null);
    match &options.access_logs {
        Some(logs) => {
            attributes.push(attribute("access_logs.s3.enabled", "true"));
            attributes.push(attribute("access_logs.s3.bucket", logs.bucket.clone()));
            attributes.push(attribute("access_logs.s3.prefix", logs.prefix.clone()));
        }
        None => {
            load_balancer = load_balancer.skip_checkov(
                "CKV_AWS_91",
                "Access logs are optional (aws.access_logs_bucket); they need a bucket whose \
                 policy admits the regional ELB log writer, which the user chooses.",
            );
        }
    }
    load_balancer.properties = json!({
        "Name": names::load_balancer_name(&options.name),
        "Type": "application",
        "Scheme": "internet-facing",
        "IpAddressType": "ipv4",
        "Subnets": ids::PUBLIC_SUBNETS.iter().map(|s| reference(s)).collect::<Vec<_>>(),
        "SecurityGroups": [reference(ids::ALB_SECURITY_GROUP)],
        "LoadBalancerAttributes": attributes,
    });
    // The internet gateway must be attached before an internet-facing load balancer is created.
    load_balancer = load_balancer.depends_on(&[ids::GATEWAY_ATTACHMENT]);
    t.add(ids::LOAD_BALANCER, load_balancer);

    let no_version = json!([{
        "Type": "fixed-response",
        "FixedResponseConfig": {
            "StatusCode": NO_VERSION_STATUS.to_string(),
            "ContentType": "text/plain",
            "MessageBody": NO_VERSION_MESSAGE,
        },
    }]);

    let certificate = match &options.tls {
        TlsMode::Acm {
            domain,
            alternative_names,
            hosted_zone_id,
        } => {
            let mut props = json!({
                "DomainName": domain,
                "ValidationMethod": "DNS",
                "Tags": tags(&[("Name", json!(format!("flotilla-{name}")))]),
            });
            if !alternative_names.is_empty() {
                props["SubjectAlternativeNames"] = json!(alternative_names);
            }
            if let Some(zone) = hosted_zone_id {
                let every: Vec<Value> = std::iter::once(domain)
                    .chain(alternative_names)
                    .map(|d| json!({ "DomainName": d, "HostedZoneId": zone }))
                    .collect();
                props["DomainValidationOptions"] = json!(every);
            }
            t.add(
                ids::CERTIFICATE,
                Resource::new("AWS::CertificateManager::Certificate", props),
            );
            Some(reference(ids::CERTIFICATE))
        }
        TlsMode::Certificate {
            certificate_arn, ..
        } => Some(json!(certificate_arn)),
        TlsMode::HttpOnly => None,
    };

    match certificate {
        Some(certificate) => {
            t.add(
                ids::HTTPS_LISTENER,
                Resource::new(
                    "AWS::ElasticLoadBalancingV2::Listener",
                    json!({
                        "LoadBalancerArn": reference(ids::LOAD_BALANCER),
                        "Port": 443,
                        "Protocol": "HTTPS",
                        "SslPolicy": TLS_POLICY,
                        "Certificates": [{ "CertificateArn": certificate }],
                        "DefaultActions": no_version,
                    }),
                ),
            );
            t.add(
                ids::HTTP_LISTENER,
                Resource::new(
                    "AWS::ElasticLoadBalancingV2::Listener",
                    json!({
                        "LoadBalancerArn": reference(ids::LOAD_BALANCER),
                        "Port": 80,
                        "Protocol": "HTTP",
                        "DefaultActions": [{
                            "Type": "redirect",
                            "RedirectConfig": {
                                "Protocol": "HTTPS",
                                "Port": "443",
                                "Host": "#{host}",
                                "Path": "/#{path}",
                                "Query": "#{query}",
                                "StatusCode": "HTTP_301",
                            },
                        }],
                    }),
                ),
            );
        }
        None => {
            t.add(
                ids::HTTP_LISTENER,
                Resource::new(
                    "AWS::ElasticLoadBalancingV2::Listener",
                    json!({
                        "LoadBalancerArn": reference(ids::LOAD_BALANCER),
                        "Port": 80,
                        "Protocol": "HTTP",
                        "DefaultActions": no_version,
                    }),
                )
                .skip_checkov(
                    "CKV_AWS_2",
                    "HTTP-only mode, chosen explicitly for a baseline without a domain: there is \
                     no certificate to serve HTTPS with. The stack's Mode output says so.",
                )
                .skip_checkov(
                    "CKV_AWS_103",
                    "HTTP-only mode has no TLS listener to set a TLS 1.2 policy on; see Mode.",
                ),
            );
        }
    }
}

fn attribute(key: &str, value: impl Into<String>) -> Value {
    json!({ "Key": key, "Value": value.into() })
}
