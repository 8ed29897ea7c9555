//! The app's secrets on AWS: references to SSM parameters and Secrets Manager secrets that ECS
//! resolves into environment variables when a task starts (the task definition's
//! `secrets[].valueFrom`), and the IAM resources the execution role needs for exactly those.
//!
//! References, as written in `[secrets]`:
//!
//! | reference | meaning |
//! | --- | --- |
//! | `ssm:/shop/database-url` (or `ssm:shop-db`) | an SSM parameter of this region and account, by name |
//! | `arn:aws:ssm:<region>:<account>:parameter/shop/db` | an SSM parameter by ARN |
//! | `arn:aws:secretsmanager:<region>:<account>:secret:<name>` | a Secrets Manager secret's value |
//! | the same ARN + `:<json-key>:<version-stage>:<version-id>` | one field of a JSON secret (ECS syntax; empty parts mean the defaults) |
//!
//! Pure: no SDK calls.

use std::fmt;

/// A parsed reference to one secret value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretRef {
    /// An SSM parameter of the deployment's region and account, by name (with or without a
    /// leading `/`).
    SsmName(String),
    /// An SSM parameter by full ARN.
    SsmArn(String),
    /// A Secrets Manager secret.
    SecretsManager {
        /// The secret's ARN (seven `:`-separated fields).
        arn: String,
        /// `:json-key:version-stage:version-id` as written after the ARN, or empty.
        selector: String,
    },
}

/// The two services a secret can come from, each with the action its reader needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SecretService {
    /// SSM Parameter Store (`ssm:GetParameters`).
    Ssm,
    /// Secrets Manager (`secretsmanager:GetSecretValue`).
    SecretsManager,
}

impl SecretService {
    /// The IAM action ECS uses to read a secret of this service at task start.
    pub fn read_action(self) -> &'static str {
        match self {
            SecretService::Ssm => "ssm:GetParameters",
            SecretService::SecretsManager => "secretsmanager:GetSecretValue",
        }
    }
}

const EXAMPLE: &str = "write \"ssm:/my-app/database-url\", an SSM parameter ARN, or a Secrets \
                       Manager secret ARN (arn:aws:secretsmanager:<region>:<account>:secret:<name>)";

fn valid_parameter_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 2048
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '/'))
        && !name.contains("//")
}

impl SecretRef {
    /// Parses a reference, saying what is wrong and what to write instead.
    pub fn parse(text: &str) -> Result<SecretRef, String> {
        let text = text.trim();
        if let Some(name) = text.strip_prefix("ssm:") {
            if !valid_parameter_name(name) {
                return Err(format!(
                    "`{text}` is not an SSM parameter name (letters, digits and _ . - /, e.g. \
                     ssm:/my-app/database-url)"
                ));
            }
            return Ok(SecretRef::SsmName(name.to_owned()));
        }
        if let Some(rest) = text.strip_prefix("secretsmanager:") {
            return Err(format!(
                "`{text}`: name a Secrets Manager secret by its full ARN \
                 (arn:aws:secretsmanager:<region>:<account>:secret:{rest}-XXXXXX), which \
                 `aws secretsmanager describe-secret --secret-id {rest}` prints"
            ));
        }
        let fields: Vec<&str> = text.split(':').collect();
        if fields.len() < 6 || fields[0] != "arn" || fields[1].is_empty() {
            return Err(format!("`{text}` is not a secret reference; {EXAMPLE}"));
        }
        let (service, region, account) = (fields[2], fields[3], fields[4]);
        if region.is_empty() || account.len() != 12 || !account.chars().all(|c| c.is_ascii_digit())
        {
            return Err(format!(
                "`{text}`: an ARN needs its region and 12-digit account; {EXAMPLE}"
            ));
        }
        match service {
            "ssm" => {
                let resource = fields[5..].join(":");
                match resource.strip_prefix("parameter/") {
                    Some(name) if valid_parameter_name(name) => {
                        Ok(SecretRef::SsmArn(text.to_owned()))
                    }
                    _ => Err(format!(
                        "`{text}` is not an SSM parameter ARN (…:parameter/<name>)"
                    )),
                }
            }
            "secretsmanager" => {
                if fields.len() < 7 || fields[5] != "secret" || fields[6].is_empty() {
                    return Err(format!(
                        "`{text}` is not a Secrets Manager secret ARN (…:secret:<name>)"
                    ));
                }
                if fields.len() > 10 {
                    return Err(format!(
                        "`{text}`: after the secret's ARN ECS takes at most \
                         :<json-key>:<version-stage>:<version-id>"
                    ));
                }
                Ok(SecretRef::SecretsManager {
                    arn: fields[..7].join(":"),
                    selector: fields[7..].iter().map(|f| format!(":{f}")).collect(),
                })
            }
            other => Err(format!(
                "`{text}` is an ARN of `{other}`; secrets come from `ssm` or `secretsmanager`"
            )),
        }
    }

    /// The service the value comes from.
    pub fn service(&self) -> SecretService {
        match self {
            SecretRef::SsmName(_) | SecretRef::SsmArn(_) => SecretService::Ssm,
            SecretRef::SecretsManager { .. } => SecretService::SecretsManager,
        }
    }

    /// The SSM parameter's or the secret's full ARN, without a JSON selector.
    pub fn arn(&self, partition: &str, region: &str, account: &str) -> String {
        match self {
            SecretRef::SsmName(name) => format!(
                "arn:{partition}:ssm:{region}:{account}:parameter/{}",
                name.trim_start_matches('/')
            ),
            SecretRef::SsmArn(arn) => arn.clone(),
            SecretRef::SecretsManager { arn, .. } => arn.clone(),
        }
    }

    /// What the task definition's `valueFrom` says: the full ARN (plus the JSON selector).
    pub fn value_from(&self, partition: &str, region: &str, account: &str) -> String {
        let arn = self.arn(partition, region, account);
        match self {
            SecretRef::SecretsManager { selector, .. } => format!("{arn}{selector}"),
            _ => arn,
        }
    }

    /// The IAM resource that allows reading exactly this secret. A Secrets Manager ARN written
    /// without the six characters AWS appends to a secret's name matches them with `-??????`.
    pub fn iam_resource(&self, partition: &str, region: &str, account: &str) -> String {
        let arn = self.arn(partition, region, account);
        match self {
            SecretRef::SecretsManager { .. } if !has_random_suffix(&arn) => format!("{arn}-??????"),
            _ => arn,
        }
    }
}

/// Whether a secret ARN ends with the `-XXXXXX` AWS appends to every secret's name.
fn has_random_suffix(arn: &str) -> bool {
    let name = arn.rsplit(':').next().unwrap_or("");
    match name.rsplit_once('-') {
        Some((base, tail)) => {
            !base.is_empty() && tail.len() == 6 && tail.chars().all(|c| c.is_ascii_alphanumeric())
        }
        None => false,
    }
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretRef::SsmName(name) => write!(f, "ssm:{name}"),
            SecretRef::SsmArn(arn) => f.write_str(arn),
            SecretRef::SecretsManager { arn, selector } => write!(f, "{arn}{selector}"),
        }
    }
}

/// The IAM statements' resources for a set of references: per service, the sorted, distinct
/// resources the execution role must be allowed to read.
pub fn iam_resources<'a>(
    refs: impl IntoIterator<Item = &'a SecretRef>,
    partition: &str,
    region: &str,
    account: &str,
) -> Vec<(SecretService, Vec<String>)> {
    let mut by_service: std::collections::BTreeMap<
        SecretService,
        std::collections::BTreeSet<String>,
    > = Default::default();
    for r in refs {
        by_service
            .entry(r.service())
            .or_default()
            .insert(r.iam_resource(partition, region, account));
    }
    by_service
        .into_iter()
        .map(|(service, set)| (service, set.into_iter().collect()))
        .collect()
}

/// The baseline's grants to its execution role for the references among `declared` that parse
/// (the resolver has reported the others), written for the stack's own partition, region and
/// account as CloudFormation substitutions.
pub fn baseline_grants<'a>(
    declared: impl IntoIterator<Item = &'a String>,
) -> flotilla_baseline::SecretGrants {
    let refs: Vec<SecretRef> = declared
        .into_iter()
        .filter_map(|text| SecretRef::parse(text).ok())
        .collect();
    let mut grants = flotilla_baseline::SecretGrants::default();
    for (service, resources) in iam_resources(
        &refs,
        "${AWS::Partition}",
        "${AWS::Region}",
        "${AWS::AccountId}",
    ) {
        match service {
            SecretService::Ssm => grants.ssm_parameters = resources,
            SecretService::SecretsManager => grants.secrets_manager = resources,
        }
    }
    grants
}

/// What stops a deploy of `declared` references: each secret the baseline's execution role may
/// not read (when the baseline says what it may), and each reference that does not parse. Empty
/// when the deploy may go ahead.
pub fn ungranted(declared: &[String], baseline: &crate::Baseline, region: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let account = baseline.account_id().unwrap_or("");
    let partition = crate::compute::partition_of(region);
    for text in declared {
        let reference = match SecretRef::parse(text) {
            Ok(r) => r,
            Err(message) => {
                problems.push(format!("secret {message}"));
                continue;
            }
        };
        let Some(grants) = &baseline.secret_grants else {
            continue;
        };
        let resource = reference.iam_resource(partition, region, account);
        if !grants.contains(&resource) {
            problems.push(format!(
                "the baseline's execution role may not read secret {reference} ({resource}); \
                 run `flotilla baseline up` so that it may, then deploy again"
            ));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: (&str, &str, &str) = ("aws", "eu-west-1", "123456789012");

    fn value_from(text: &str) -> String {
        SecretRef::parse(text)
            .expect("valid")
            .value_from(P.0, P.1, P.2)
    }

    #[test]
    fn ssm_names_become_arns_of_the_deployments_region_and_account() {
        assert_eq!(
            value_from("ssm:/shop/database-url"),
            "arn:aws:ssm:eu-west-1:123456789012:parameter/shop/database-url"
        );
        assert_eq!(
            value_from("ssm:shop-db"),
            "arn:aws:ssm:eu-west-1:123456789012:parameter/shop-db"
        );
        let arn = "arn:aws:ssm:us-east-1:210987654321:parameter/other/key";
        assert_eq!(value_from(arn), arn);
    }

    #[test]
    fn secrets_manager_arns_keep_their_json_selector_in_value_from_only() {
        let arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:shop-auth-AbC123";
        let with_key = format!("{arn}:password::");
        let r = SecretRef::parse(&with_key).expect("valid");
        assert_eq!(r.value_from(P.0, P.1, P.2), with_key);
        assert_eq!(r.iam_resource(P.0, P.1, P.2), arn);
        assert_eq!(r.service(), SecretService::SecretsManager);
        // Written without AWS's random suffix: the policy matches it.
        let bare = SecretRef::parse("arn:aws:secretsmanager:eu-west-1:123456789012:secret:shop")
            .expect("valid");
        assert_eq!(
            bare.iam_resource(P.0, P.1, P.2),
            "arn:aws:secretsmanager:eu-west-1:123456789012:secret:shop-??????"
        );
    }

    #[test]
    fn bad_references_say_what_to_write() {
        for (text, expect) in [
            ("", "not a secret reference"),
            ("hunter2", "not a secret reference"),
            ("ssm:", "not an SSM parameter name"),
            ("ssm:/a b", "not an SSM parameter name"),
            ("secretsmanager:shop", "describe-secret --secret-id shop"),
            ("arn:aws:s3:::bucket/key", "region and 12-digit account"),
            ("arn:aws:kms:eu-west-1:123456789012:key/x", "`kms`"),
            (
                "arn:aws:ssm:eu-west-1:123456789012:document/x",
                "parameter ARN",
            ),
            (
                "arn:aws:secretsmanager:eu-west-1:123456789012:secret",
                "secret ARN",
            ),
            (
                "arn:aws:secretsmanager:eu-west-1:123456789012:secret:s:a:b:c:d",
                "at most",
            ),
        ] {
            let err = SecretRef::parse(text).expect_err(text);
            assert!(err.contains(expect), "{text}: {err}");
        }
    }

    #[test]
    fn iam_resources_are_grouped_and_distinct() {
        let refs: Vec<SecretRef> = [
            "ssm:/b",
            "ssm:/a",
            "ssm:a",
            "arn:aws:secretsmanager:eu-west-1:123456789012:secret:x-AbC123:k::",
        ]
        .iter()
        .map(|t| SecretRef::parse(t).expect("valid"))
        .collect();
        let got = iam_resources(&refs, P.0, P.1, P.2);
        assert_eq!(
            got,
            vec![
                (
                    SecretService::Ssm,
                    vec![
                        "arn:aws:ssm:eu-west-1:123456789012:parameter/a".to_owned(),
                        "arn:aws:ssm:eu-west-1:123456789012:parameter/b".to_owned(),
                    ]
                ),
                (
                    SecretService::SecretsManager,
                    vec![
                        "arn:aws:secretsmanager:eu-west-1:123456789012:secret:x-AbC123".to_owned()
                    ]
                ),
            ]
        );
    }
}
