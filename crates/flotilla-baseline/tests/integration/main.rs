//! Integration tests of the baseline template: its structure through the public API
//! (`template`), invariants over every name (`properties`), and the real linters, cfn-lint and checkov, run on it from the project's
//! virtualenvs (`lint`).

mod lint;
mod properties;
mod template;

use flotilla_baseline::{
    AccessLogs, BaselineOptions, NatMode, Notifications, SecretGrants, Template, TlsMode,
    WafOptions, build,
};
use flotilla_core::DeploymentName;

/// The variants every check runs on: HTTPS with a requested certificate, HTTP-only, and one NAT
/// gateway per zone with a certificate the user brings (and the optional web ACL).
pub fn variants() -> Vec<(&'static str, BaselineOptions)> {
    let name = DeploymentName::new("prod").expect("valid name");

    let mut https = BaselineOptions::new(
        name.clone(),
        TlsMode::Acm {
            domain: "app.example.com".into(),
            alternative_names: vec!["www.example.com".into()],
            hosted_zone_id: Some("Z0123456789ABCDEFGHIJ".into()),
        },
    );
    https.alarms.notifications = Notifications::Email("ops@example.com".into());

    let http_only = BaselineOptions::new(name.clone(), TlsMode::HttpOnly);

    let mut per_az = BaselineOptions::new(
        name,
        TlsMode::Certificate {
            certificate_arn: "arn:aws:acm:eu-west-1:123456789012:certificate/0a1b2c3d-4e5f".into(),
            domain: Some("shop.example.org".into()),
        },
    );
    per_az.nat = NatMode::PerAz;
    per_az.access_logs = Some(AccessLogs {
        bucket: "example-alb-logs".into(),
        prefix: "flotilla/prod".into(),
    });
    per_az.alarms.notifications =
        Notifications::Topic("arn:aws:sns:eu-west-1:123456789012:ops-alerts".into());
    // The app reads two secrets: one by parameter name, one Secrets Manager ARN.
    per_az.secrets = SecretGrants {
        ssm_parameters: vec![
            "arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}:parameter/prod/db-url"
                .into(),
        ],
        secrets_manager: vec![
            "arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod-auth-AbC123".into(),
        ],
    };
    // The linters see the web ACL here.
    per_az.waf = Some(WafOptions { rate_limit: 1500 });

    vec![
        ("https", https),
        ("http-only", http_only),
        ("per-az", per_az),
    ]
}

/// Builds `options`, which the tests only ever give valid values.
pub fn template(options: &BaselineOptions) -> Template {
    build(options).expect("valid options")
}
