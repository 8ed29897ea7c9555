//! `flotilla baseline template` and `flotilla aws deployer-policy` as a user runs them: what
//! flotilla.toml says reaches the template and the policy, and nothing needs AWS.

use flotilla_baseline::{
    AccessLogs, AlarmOptions, Architecture, BaselineOptions, DeployerPolicyOptions, NatMode,
    Notifications, TlsMode,
};
use flotilla_core::DeploymentName;

use super::{flotilla, tempdir};

/// An AWS configuration that sets every baseline key away from its default.
const CONFIG: &str = r#"name = "shop"
provider = "aws"

[app]
port = 3000
affinity_header = "X-Version"

[reaper]
interval_seconds = 120
consecutive_passes = 3

[aws]
region = "eu-west-1"
command = "/app/server"
domain = "shop.example.com"
hosted_zone_id = "Z0123456789ABCDEFGHIJ"
nat = "per-az"
vpc_cidr = "10.8.0.0/20"
idle_timeout_seconds = 900
log_retention_days = 14
keep_images = 12
alarm_email = "ops@example.com"
alarm_5xx_percent = 2
access_logs_bucket = "my-alb-logs"
access_logs_prefix = "shop"
"#;

fn shop() -> DeploymentName {
    DeploymentName::new("shop").expect("valid")
}

#[test]
fn baseline_template_is_the_template_of_the_config() {
    let dir = tempdir();
    std::fs::write(dir.path().join("flotilla.toml"), CONFIG).expect("write config");
    let run = flotilla(dir.path(), &["baseline", "template"], &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let printed: serde_json::Value = serde_json::from_str(&run.stdout).expect("valid JSON");

    // The same options, written out by hand from the file above.
    let mut o = BaselineOptions::new(
        shop(),
        TlsMode::Acm {
            domain: "shop.example.com".into(),
            alternative_names: vec![],
            hosted_zone_id: Some("Z0123456789ABCDEFGHIJ".into()),
        },
    );
    o.nat = NatMode::PerAz;
    o.vpc_cidr = "10.8.0.0/20".into();
    o.idle_timeout_seconds = 900;
    o.log_retention_days = 14;
    o.keep_images = 12;
    o.access_logs = Some(AccessLogs {
        bucket: "my-alb-logs".into(),
        prefix: "shop".into(),
    });
    o.container_port = 8000;
    o.affinity_header = "X-Version".into();
    o.reaper.interval = std::time::Duration::from_secs(120);
    o.reaper.policy.consecutive_ready_passes = 3;
    o.reaper.architecture = match std::env::consts::ARCH {
        "aarch64" => Architecture::Arm64,
        _ => Architecture::X86_64,
    };
    o.alarms = AlarmOptions {
        notifications: Notifications::Email("ops@example.com".into()),
        five_xx_rate_percent: 2,
    };
    let expected = flotilla_baseline::build(&o)
        .expect("valid options")
        .to_json();
    assert_eq!(printed, expected, "the template differs from the config's");

    // Spot checks a reader of the template would make.
    let resources = &printed["Resources"];
    assert_eq!(resources["Vpc"]["Properties"]["CidrBlock"], "10.8.0.0/20");
    assert!(resources.get("NatGatewayB").is_some(), "one NAT per zone");
    assert_eq!(
        resources["Certificate"]["Properties"]["DomainName"],
        "shop.example.com"
    );
    assert_eq!(resources["LogGroup"]["Properties"]["RetentionInDays"], 14);
    let idle = resources["LoadBalancer"]["Properties"]["LoadBalancerAttributes"]
        .as_array()
        .expect("attributes")
        .iter()
        .find(|a| a["Key"] == "idle_timeout.timeout_seconds")
        .map(|a| a["Value"].clone());
    assert_eq!(idle, Some(serde_json::json!("900")));
}

#[test]
fn baseline_problems_are_reported_at_their_lines() {
    let dir = tempdir();
    let text = "name = \"shop\"\nprovider = \"aws\"\n[aws]\nvpc_cidr = \"10.0.0.0/8\"\n";
    std::fs::write(dir.path().join("flotilla.toml"), text).expect("write config");
    for args in [&["baseline", "template"][..], &["config", "check"]] {
        let run = flotilla(dir.path(), args, &[]);
        assert_eq!(run.code, 2, "{args:?}: {run:?}");
        assert!(
            run.stderr
                .contains("flotilla.toml:4:12: `aws.vpc_cidr`: \"10.0.0.0/8\" has prefix length 8"),
            "{args:?}: {run:?}"
        );
    }
}

#[test]
fn baseline_commands_need_the_aws_provider_and_a_confirmation() {
    let dir = tempdir();
    std::fs::write(
        dir.path().join("flotilla.toml"),
        "name = \"shop\"\n[host]\ncommand = \"./run\"\n",
    )
    .expect("write config");
    let run = flotilla(dir.path(), &["baseline", "up"], &[]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr
            .contains("manages the AWS baseline, but provider = \"host\""),
        "{run:?}"
    );
    assert!(run.stderr.contains("--provider aws"), "{run:?}");

    // Deleting needs --yes off a terminal, before anything is asked of AWS.
    let run = flotilla(
        dir.path(),
        &["baseline", "down", "--provider", "aws"],
        &[("AWS_EC2_METADATA_DISABLED", "true")],
    );
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("pass --yes"), "{run:?}");

    // A reaper binary Lambda could not run is refused before any AWS call.
    let script = dir.path().join("reaper.sh");
    std::fs::write(&script, "#!/bin/sh\n").expect("write");
    let run = flotilla(
        dir.path(),
        &[
            "baseline",
            "up",
            "--provider",
            "aws",
            "--reaper-binary",
            script.to_str().expect("utf-8 path"),
        ],
        &[("AWS_EC2_METADATA_DISABLED", "true")],
    );
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains("reaper.sh is not a Linux executable"),
        "{run:?}"
    );
    assert!(run.stderr.contains("--reaper-binary"), "{run:?}");
}

#[test]
fn deployer_policy_for_an_account_needs_no_aws_call() {
    let dir = tempdir();
    std::fs::write(dir.path().join("flotilla.toml"), CONFIG).expect("write config");
    let run = flotilla(
        dir.path(),
        &["aws", "deployer-policy", "--account-id", "123456789012"],
        &[],
    );
    assert_eq!(run.code, 0, "{run:?}");
    let printed: serde_json::Value = serde_json::from_str(&run.stdout).expect("valid JSON");
    let expected = flotilla_baseline::deployer_policy(&DeployerPolicyOptions {
        name: shop(),
        region: Some("eu-west-1".into()),
        account_id: Some("123456789012".into()),
        partition: "aws".into(),
    });
    assert_eq!(printed, expected);
    assert!(
        run.stdout
            .contains("arn:aws:ssm:eu-west-1:123456789012:parameter/apps/shop/*"),
        "{run:?}"
    );

    // Without a region anywhere, the policy holds for every region.
    let dir = tempdir();
    let run = flotilla(
        dir.path(),
        &[
            "aws",
            "deployer-policy",
            "--account-id",
            "123456789012",
            "--name",
            "shop",
            "--provider",
            "aws",
        ],
        &[],
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout
            .contains("arn:aws:ssm:*:123456789012:parameter/apps/shop/*"),
        "{run:?}"
    );

    let bad = flotilla(
        dir.path(),
        &[
            "aws",
            "deployer-policy",
            "--account-id",
            "12345",
            "--name",
            "shop",
            "--provider",
            "aws",
        ],
        &[],
    );
    assert_eq!(bad.code, 2, "{bad:?}");
    assert!(
        bad.stderr.contains("not a 12-digit AWS account id"),
        "{bad:?}"
    );

    let nameless = flotilla(dir.path(), &["aws", "deployer-policy"], &[]);
    assert_eq!(nameless.code, 2, "{nameless:?}");
    assert!(nameless.stderr.contains("--name"), "{nameless:?}");
}
