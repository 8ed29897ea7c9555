//! The AWS baseline's template options from the resolved configuration (`[aws]`, `[app]`,
//! `[reaper]`, `[secrets]`), every problem reported at the key it is about: what `flotilla
//! baseline up|template` builds from and what `flotilla config check` checks.

use flotilla_baseline::{
    AccessLogs, AlarmOptions, Architecture, BaselineOptions, NatMode, Notifications, ReaperOptions,
    SecretGrants, TlsMode, contract,
};
use flotilla_core::reaper::ReapPolicy;

use super::{Config, Nat};

/// The baseline options `config` describes, or every problem found, each with the flotilla.toml
/// key it is about (`aws.vpc_cidr`, `reaper.interval_seconds`, ...).
pub fn options(config: &Config) -> Result<BaselineOptions, Vec<(&'static str, String)>> {
    let aws = &config.aws;
    let mut problems: Vec<(&'static str, String)> = Vec::new();
    let tls = match (&aws.domain, &aws.certificate_arn) {
        (_, Some(arn)) => {
            if aws.hosted_zone_id.is_some() {
                problems.push((
                    "aws.hosted_zone_id",
                    "validates a certificate the baseline requests, but `aws.certificate_arn` \
                     brings one; remove one of the two"
                        .to_owned(),
                ));
            }
            TlsMode::Certificate {
                certificate_arn: arn.clone(),
                domain: aws.domain.clone(),
            }
        }
        (Some(domain), None) => TlsMode::Acm {
            domain: domain.clone(),
            alternative_names: Vec::new(),
            hosted_zone_id: aws.hosted_zone_id.clone(),
        },
        (None, None) => {
            if aws.hosted_zone_id.is_some() {
                problems.push((
                    "aws.hosted_zone_id",
                    "needs `aws.domain`: without a domain the baseline is HTTP-only and requests \
                     no certificate"
                        .to_owned(),
                ));
            }
            TlsMode::HttpOnly
        }
    };
    let notifications = match (&aws.alarm_email, &aws.alarm_topic_arn) {
        (Some(_), Some(_)) => {
            problems.push((
                "aws.alarm_topic_arn",
                "and `aws.alarm_email` are both set; alarms go to one of them, so remove one"
                    .to_owned(),
            ));
            Notifications::None
        }
        (Some(email), None) => Notifications::Email(email.clone()),
        (None, Some(topic)) => Notifications::Topic(topic.clone()),
        (None, None) => Notifications::None,
    };
    let access_logs = match (&aws.access_logs_bucket, &aws.access_logs_prefix) {
        (Some(bucket), prefix) => Some(AccessLogs {
            bucket: bucket.clone(),
            prefix: prefix.clone().unwrap_or_default(),
        }),
        (None, Some(_)) => {
            problems.push((
                "aws.access_logs_prefix",
                "is set without `aws.access_logs_bucket`; name the bucket too, or remove it"
                    .to_owned(),
            ));
            None
        }
        (None, None) => None,
    };
    let mut o = BaselineOptions::new(config.name.clone(), tls);
    o.nat = match aws.nat {
        Nat::Single => NatMode::Single,
        Nat::PerAz => NatMode::PerAz,
    };
    o.vpc_cidr = aws.vpc_cidr.clone();
    o.idle_timeout_seconds = aws.idle_timeout_seconds;
    o.access_logs = access_logs;
    o.container_port = contract::default_container_port(config.app.port);
    o.affinity_header = config.app.affinity_header.clone();
    o.affinity_query = config.app.affinity_query.clone();
    o.stale_status = config.app.stale.status;
    o.log_retention_days = aws.log_retention_days;
    o.keep_images = aws.keep_images;
    o.waf = aws.waf.then_some(flotilla_baseline::WafOptions {
        rate_limit: aws.waf_rate_limit,
    });
    o.reaper = ReaperOptions {
        interval: config.reaper.interval,
        policy: ReapPolicy {
            min_age: config.reaper.min_age,
            max_age: config.reaper.max_age,
            consecutive_ready_passes: config.reaper.consecutive_passes,
            deploying_timeout: config.reaper.deploying_timeout,
        },
        architecture: this_architecture(),
    };
    o.alarms = AlarmOptions {
        notifications,
        five_xx_rate_percent: aws.alarm_5xx_percent,
    };
    o.secrets = secret_grants(config);
    if let Err(e) = o.validate() {
        for p in e.problems {
            // The agent's port follows from the app's; it has no key of its own.
            let field = if p.field == "aws.container_port" {
                "app.port"
            } else {
                p.field
            };
            problems.push((field, p.message));
        }
    }
    if problems.is_empty() {
        Ok(o)
    } else {
        Err(problems)
    }
}

/// The execution role's reads of the app's `[secrets]`, written for the stack's own partition,
/// region and account (references the resolver has already checked).
pub fn secret_grants(config: &Config) -> SecretGrants {
    crate::providers::baseline_secret_grants(config)
}

/// The reaper's architecture when it runs this binary.
fn this_architecture() -> Architecture {
    match std::env::consts::ARCH {
        "aarch64" => Architecture::Arm64,
        _ => Architecture::X86_64,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;
    use std::time::Duration;

    use super::*;
    use crate::config::{Overrides, resolve_text};

    fn config(text: &str) -> Result<Config, Vec<String>> {
        let env: BTreeMap<String, String> = BTreeMap::new();
        let get = move |key: &str| env.get(key).cloned();
        resolve_text(
            "flotilla.toml",
            text,
            Path::new("/srv/shop"),
            &get,
            &Overrides::default(),
        )
        .map_err(|e| match e {
            crate::config::ConfigError::Invalid { problems, .. } => {
                problems.iter().map(ToString::to_string).collect()
            }
            other => vec![other.to_string()],
        })
    }

    const AWS: &str = "name = \"shop\"\nprovider = \"aws\"\n";

    #[test]
    fn every_baseline_key_reaches_the_options() {
        let c = config(&format!(
            "{AWS}[app]\nport = 3000\naffinity_header = \"X-Version\"\n\
             [reaper]\ninterval_seconds = 120\nconsecutive_passes = 3\n\
             [aws]\ndomain = \"shop.example.com\"\nhosted_zone_id = \"Z0123456789ABCDEFGHIJ\"\n\
             nat = \"per-az\"\nvpc_cidr = \"10.8.0.0/20\"\nidle_timeout_seconds = 900\n\
             log_retention_days = 14\nkeep_images = 12\nalarm_email = \"ops@example.com\"\n\
             alarm_5xx_percent = 2\naccess_logs_bucket = \"my-logs\"\naccess_logs_prefix = \"shop\"\n\
             command = \"/app/server\"\nwaf = true\nwaf_rate_limit = 500\n"
        ))
        .expect("valid");
        let o = options(&c).expect("valid options");
        assert_eq!(
            o.tls,
            TlsMode::Acm {
                domain: "shop.example.com".into(),
                alternative_names: vec![],
                hosted_zone_id: Some("Z0123456789ABCDEFGHIJ".into()),
            }
        );
        assert_eq!(o.nat, NatMode::PerAz);
        assert_eq!(o.vpc_cidr, "10.8.0.0/20");
        assert_eq!(o.idle_timeout_seconds, 900);
        assert_eq!(o.log_retention_days, 14);
        assert_eq!(o.keep_images, 12);
        assert_eq!(
            o.alarms,
            AlarmOptions {
                notifications: Notifications::Email("ops@example.com".into()),
                five_xx_rate_percent: 2,
            }
        );
        assert_eq!(
            o.access_logs,
            Some(AccessLogs {
                bucket: "my-logs".into(),
                prefix: "shop".into()
            })
        );
        assert_eq!(
            o.container_port, 8000,
            "the agent's port for an app on 3000"
        );
        assert_eq!(o.affinity_header, "X-Version");
        assert_eq!(o.reaper.interval, Duration::from_secs(120));
        assert_eq!(o.reaper.policy.consecutive_ready_passes, 3);
        assert_eq!(c.aws.command.as_deref(), Some("/app/server"));
        assert_eq!(
            o.waf,
            Some(flotilla_baseline::WafOptions { rate_limit: 500 })
        );
    }

    #[test]
    fn defaults_make_an_http_only_baseline() {
        let c = config(AWS).expect("valid");
        let o = options(&c).expect("valid options");
        assert_eq!(o.tls, TlsMode::HttpOnly);
        let defaults = BaselineOptions::new(c.name.clone(), TlsMode::HttpOnly);
        assert_eq!(o.vpc_cidr, defaults.vpc_cidr);
        assert_eq!(o.idle_timeout_seconds, defaults.idle_timeout_seconds);
        assert_eq!(o.log_retention_days, defaults.log_retention_days);
        assert_eq!(o.keep_images, defaults.keep_images);
        assert_eq!(o.alarms, defaults.alarms);
        assert_eq!(o.container_port, defaults.container_port);
        assert_eq!(o.waf, None, "no WAF unless asked for");
        let with_cert = config(&format!(
            "{AWS}[aws]\ncertificate_arn = \"arn:aws:acm:eu-west-1:123456789012:certificate/abc\"\n"
        ))
        .expect("valid");
        assert!(matches!(
            options(&with_cert).expect("valid").tls,
            TlsMode::Certificate { domain: None, .. }
        ));
    }

    #[test]
    fn baseline_problems_are_reported_at_their_keys() {
        let cases: &[(&str, &str)] = &[
            (
                "[aws]\nvpc_cidr = \"10.0.0.0/8\"",
                "flotilla.toml:4:12: `aws.vpc_cidr`: \"10.0.0.0/8\" has prefix length 8",
            ),
            (
                "[aws]\nlog_retention_days = 10",
                "flotilla.toml:4:22: `aws.log_retention_days`: 10 is not a retention",
            ),
            (
                "[aws]\nhosted_zone_id = \"Z0123456789ABCDEFGHIJ\"",
                "flotilla.toml:4:18: `aws.hosted_zone_id`: needs `aws.domain`",
            ),
            (
                "[aws]\nalarm_email = \"ops@example.com\"\nalarm_topic_arn = \"arn:aws:sns:eu-west-1:1:t\"",
                "flotilla.toml:5:19: `aws.alarm_topic_arn`: and `aws.alarm_email` are both set",
            ),
            (
                "[aws]\nalarm_email = \"not an address\"",
                "flotilla.toml:4:15: `aws.alarm_email`: \"not an address\" is not an email address",
            ),
            (
                "[aws]\naccess_logs_prefix = \"shop\"",
                "flotilla.toml:4:22: `aws.access_logs_prefix`: is set without `aws.access_logs_bucket`",
            ),
            (
                "[aws]\nidle_timeout_seconds = 5000",
                "flotilla.toml:4:24: `aws.idle_timeout_seconds` must be between 1 and 4000, not 5000",
            ),
        ];
        for (snippet, want) in cases {
            let problems = config(&format!("{AWS}{snippet}\n")).expect_err(snippet);
            assert_eq!(problems.len(), 1, "{snippet}: {problems:?}");
            assert!(
                problems[0].starts_with(want),
                "{snippet}:\n got {}\nwant {want}",
                problems[0]
            );
        }
        // Only the AWS provider uses the baseline: the host provider does not check it.
        let host = config(
            "name = \"shop\"\n[host]\ncommand = \"./run\"\n[aws]\nlog_retention_days = 10\n",
        );
        assert!(host.is_ok(), "{host:?}");
    }
}
