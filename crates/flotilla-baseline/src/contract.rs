//! What the AWS provider and the reaper must agree on with the template besides its outputs: the
//! stack parameters, the capabilities, the logical ids it looks up, the fixed responses, and the
//! reaper Lambda's environment ([`ReaperSettings`], written by the template and read by the Lambda).

use std::collections::BTreeMap;
use std::time::Duration;

use flotilla_core::DeploymentName;
use flotilla_core::names::{DEFAULT_AFFINITY_HEADER, DEFAULT_AFFINITY_QUERY};
use flotilla_core::reaper::ReapPolicy;
use flotilla_core::stale::{DEFAULT_STALE_STATUS, StaleSignals};

/// The stack parameter naming the bucket that holds the reaper's code zip; empty (the default)
/// means the stack's own artefact bucket.
pub const PARAM_REAPER_CODE_BUCKET: &str = "ReaperCodeBucket";

/// The stack parameter naming the reaper's code zip key; empty (the default) means "no reaper
/// yet": the stack is created without the Lambda and its schedule, flotilla uploads the zip to the
/// artefact bucket, then updates the stack with the key.
pub const PARAM_REAPER_CODE_KEY: &str = "ReaperCodeKey";

/// The capabilities `CreateStack`/`UpdateStack` must acknowledge: the stack creates IAM roles (with
/// generated names, so `CAPABILITY_NAMED_IAM` is not needed).
pub const REQUIRED_CAPABILITIES: &[&str] = &["CAPABILITY_IAM"];

/// The logical id of the ACM certificate (TLS mode with a requested certificate).
///
/// While the stack waits for DNS validation, `DescribeStackResource` on this id gives the
/// certificate's ARN, and ACM's `DescribeCertificate` gives the CNAME records to create.
pub const CERTIFICATE_LOGICAL_ID: &str = "Certificate";

/// The logical id of the artefact bucket (empty it before deleting the stack: S3 refuses to
/// delete a bucket that still holds object versions).
pub const ARTEFACT_BUCKET_LOGICAL_ID: &str = "ArtefactBucket";

/// The logical id of the ECR repository (the stack empties it on delete).
pub const REPOSITORY_LOGICAL_ID: &str = "Repository";

/// The logical id of the reaper Lambda function.
pub const REAPER_FUNCTION_LOGICAL_ID: &str = "ReaperFunction";

/// The status code the listener's default action answers until a version is deployed.
pub const NO_VERSION_STATUS: u16 = 503;

/// The body the listener's default action answers until a version is deployed.
pub const NO_VERSION_MESSAGE: &str = "no version deployed yet";

/// The port the in-container agent listens on (and the load balancer sends traffic to) for an app
/// listening on `app_port`: 8000, or 8001 when the app itself uses 8000.
pub fn default_container_port(app_port: u16) -> u16 {
    if app_port == 8000 { 8001 } else { 8000 }
}

/// The key of the tag flotilla puts on the stack (and CloudFormation copies to its resources).
pub const DEPLOYMENT_NAME_TAG: &str = "flotilla:deployment-name";

/// The reaper's code, as handed to the stack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReaperCode {
    /// The bucket, or `None` for the stack's artefact bucket.
    pub bucket: Option<String>,
    /// The zip's key, from [`reaper_code_key`].
    pub key: String,
}

/// The key flotilla uploads the reaper zip under: `reaper/<sha256>/bootstrap.zip`.
///
/// A key per content means a new build changes the stack parameter, so CloudFormation updates
/// the function's code; the same build changes nothing.
pub fn reaper_code_key(sha256_hex: &str) -> String {
    format!("reaper/{sha256_hex}/bootstrap.zip")
}

/// The stack parameters for `CreateStack`/`UpdateStack`, as `(ParameterKey, ParameterValue)`.
/// `None` creates or keeps the stack without a reaper.
pub fn stack_parameters(code: Option<&ReaperCode>) -> Vec<(&'static str, String)> {
    let (bucket, key) = match code {
        Some(c) => (c.bucket.clone().unwrap_or_default(), c.key.clone()),
        None => (String::new(), String::new()),
    };
    vec![
        (PARAM_REAPER_CODE_BUCKET, bucket),
        (PARAM_REAPER_CODE_KEY, key),
    ]
}

/// The tags to put on the stack: `flotilla:deployment-name = <name>`.
pub fn stack_tags(name: &DeploymentName) -> Vec<(&'static str, String)> {
    vec![(DEPLOYMENT_NAME_TAG, name.as_str().to_owned())]
}

/// The reaper Lambda's environment variable names.
pub mod env {
    /// The deployment name whose versions the reaper looks after.
    pub const DEPLOYMENT_NAME: &str = "FLOTILLA_DEPLOYMENT_NAME";
    /// The ECS cluster's name.
    pub const CLUSTER: &str = "FLOTILLA_CLUSTER";
    /// The routing listener's ARN (where the versions' affinity rules live).
    pub const LISTENER_ARN: &str = "FLOTILLA_LISTENER_ARN";
    /// Seconds between passes (the schedule's rate).
    pub const INTERVAL_SECONDS: &str = "FLOTILLA_REAPER_INTERVAL_SECONDS";
    /// Passes in a row in which every task must report ready.
    pub const CONSECUTIVE_PASSES: &str = "FLOTILLA_REAPER_CONSECUTIVE_PASSES";
    /// Seconds a version must exist before it may be touched.
    pub const MIN_AGE_SECONDS: &str = "FLOTILLA_REAPER_MIN_AGE_SECONDS";
    /// Seconds of draining after which a version is retired regardless of sessions.
    pub const MAX_AGE_SECONDS: &str = "FLOTILLA_REAPER_MAX_AGE_SECONDS";
    /// Seconds after which a version still deploying is cleaned up.
    pub const DEPLOYING_TIMEOUT_SECONDS: &str = "FLOTILLA_REAPER_DEPLOYING_TIMEOUT_SECONDS";
    /// The function's timeout in seconds (the template's `Timeout`): how long the reaper's lock
    /// lives, so a pass killed by the timeout never blocks deploys for longer than it could run
    /// (optional; derived from the interval otherwise).
    pub const TIMEOUT_SECONDS: &str = "FLOTILLA_REAPER_TIMEOUT_SECONDS";
    /// The application log group (optional).
    pub const LOG_GROUP: &str = "FLOTILLA_LOG_GROUP";
    /// The ECR repository's URI (`<account>.dkr.ecr.<region>.amazonaws.com/flotilla/<name>`), so
    /// the reaper can delete a retired version's image (optional).
    pub const REPOSITORY: &str = "FLOTILLA_REPOSITORY";
    /// The bucket of the drain board (the artefact bucket), which the reaper updates after each
    /// state it records (optional; without it only SSM is written). Tasks get it too.
    pub const DRAIN_BUCKET: &str = "FLOTILLA_DRAIN_BUCKET";
    /// The affinity header the versions' rules match (optional; the core's default otherwise).
    pub const AFFINITY_HEADER: &str = "FLOTILLA_AFFINITY_HEADER";
    /// The affinity query parameter the versions' rules match (optional; the core's default
    /// otherwise).
    pub const AFFINITY_QUERY: &str = "FLOTILLA_AFFINITY_QUERY";
    /// The status a retired version's rules answer with, 409 or 410 (optional; 410 otherwise).
    pub const STALE_STATUS: &str = "FLOTILLA_STALE_STATUS";

    /// Every name above.
    pub const ALL: &[&str] = &[
        DEPLOYMENT_NAME,
        CLUSTER,
        LISTENER_ARN,
        INTERVAL_SECONDS,
        CONSECUTIVE_PASSES,
        MIN_AGE_SECONDS,
        MAX_AGE_SECONDS,
        DEPLOYING_TIMEOUT_SECONDS,
        TIMEOUT_SECONDS,
        LOG_GROUP,
        REPOSITORY,
        DRAIN_BUCKET,
        AFFINITY_HEADER,
        AFFINITY_QUERY,
        STALE_STATUS,
    ];
}

/// What the reaper Lambda is told through its environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReaperSettings {
    /// The deployment name.
    pub deployment_name: DeploymentName,
    /// The ECS cluster's name.
    pub cluster: String,
    /// The routing listener's ARN.
    pub listener_arn: String,
    /// Time between passes.
    pub interval: Duration,
    /// The function's timeout: a pass never runs longer, so its lock lives this long.
    pub timeout: Duration,
    /// The reap policy.
    pub policy: ReapPolicy,
    /// The application log group, when given.
    pub log_group: Option<String>,
    /// The ECR repository's URI, when given (the reaper then deletes retired versions' images).
    pub repository: Option<String>,
    /// The drain board's bucket, when given (the reaper then publishes each state it records).
    pub drain_bucket: Option<String>,
    /// The affinity header the rules match.
    pub affinity_header: String,
    /// The affinity query parameter the rules match.
    pub affinity_query: String,
    /// The status a retired version's rules answer with (`[app] stale_status`).
    pub stale_status: u16,
}

/// Why the reaper's environment is unusable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    /// A variable is not set.
    #[error(
        "environment variable {0} is not set; the baseline stack sets it on the reaper Lambda \
         (run `flotilla baseline up`), or set it yourself to run the reaper elsewhere"
    )]
    Missing(&'static str),
    /// A variable holds something unusable.
    #[error("environment variable {name}={value:?} {problem}")]
    Invalid {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
        /// What is wrong.
        problem: String,
    },
}

impl ReaperSettings {
    /// The settings as environment variables (all values are literal strings).
    pub fn to_env(&self) -> BTreeMap<&'static str, String> {
        let mut m = BTreeMap::new();
        m.insert(
            env::DEPLOYMENT_NAME,
            self.deployment_name.as_str().to_owned(),
        );
        m.insert(env::CLUSTER, self.cluster.clone());
        m.insert(env::LISTENER_ARN, self.listener_arn.clone());
        m.extend(policy_env(self.interval, &self.policy));
        m.insert(env::TIMEOUT_SECONDS, self.timeout.as_secs().to_string());
        if let Some(g) = &self.log_group {
            m.insert(env::LOG_GROUP, g.clone());
        }
        if let Some(r) = &self.repository {
            m.insert(env::REPOSITORY, r.clone());
        }
        if let Some(b) = &self.drain_bucket {
            m.insert(env::DRAIN_BUCKET, b.clone());
        }
        m.insert(env::AFFINITY_HEADER, self.affinity_header.clone());
        m.insert(env::AFFINITY_QUERY, self.affinity_query.clone());
        m.insert(env::STALE_STATUS, self.stale_status.to_string());
        m
    }

    /// Reads the settings through `lookup` (e.g. `|k| std::env::var(k).ok()` at the edge).
    /// The optional variables fall back to `None` and the core's default affinity keys.
    pub fn from_env(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, SettingsError> {
        let get = |name: &'static str| lookup(name).ok_or(SettingsError::Missing(name));
        let secs = |name: &'static str| -> Result<u64, SettingsError> {
            let value = get(name)?;
            value
                .trim()
                .parse::<u64>()
                .map_err(|_| SettingsError::Invalid {
                    name,
                    value,
                    problem: "is not a whole number of seconds".to_owned(),
                })
        };
        let deployment_name = {
            let value = get(env::DEPLOYMENT_NAME)?;
            DeploymentName::new(&value).map_err(|e| SettingsError::Invalid {
                name: env::DEPLOYMENT_NAME,
                value: value.clone(),
                problem: format!("is not a deployment name: {e}"),
            })?
        };
        let passes = {
            let value = get(env::CONSECUTIVE_PASSES)?;
            value
                .trim()
                .parse::<u32>()
                .map_err(|_| SettingsError::Invalid {
                    name: env::CONSECUTIVE_PASSES,
                    value,
                    problem: "is not a whole number".to_owned(),
                })?
        };
        let stale_status = match lookup(env::STALE_STATUS).filter(|v| !v.is_empty()) {
            None => DEFAULT_STALE_STATUS,
            Some(value) => value
                .trim()
                .parse::<u16>()
                .ok()
                .and_then(|s| StaleSignals::check_status(s).ok())
                .ok_or_else(|| SettingsError::Invalid {
                    name: env::STALE_STATUS,
                    value,
                    problem: "is not 409 or 410".to_owned(),
                })?,
        };
        let interval = Duration::from_secs(secs(env::INTERVAL_SECONDS)?);
        let timeout = match lookup(env::TIMEOUT_SECONDS).filter(|v| !v.is_empty()) {
            Some(_) => Duration::from_secs(secs(env::TIMEOUT_SECONDS)?),
            None => reaper_timeout(interval),
        };
        Ok(ReaperSettings {
            deployment_name,
            cluster: get(env::CLUSTER)?,
            listener_arn: get(env::LISTENER_ARN)?,
            interval,
            timeout,
            policy: ReapPolicy {
                min_age: Duration::from_secs(secs(env::MIN_AGE_SECONDS)?),
                max_age: Duration::from_secs(secs(env::MAX_AGE_SECONDS)?),
                consecutive_ready_passes: passes,
                deploying_timeout: Duration::from_secs(secs(env::DEPLOYING_TIMEOUT_SECONDS)?),
            },
            log_group: lookup(env::LOG_GROUP).filter(|v| !v.is_empty()),
            repository: lookup(env::REPOSITORY).filter(|v| !v.is_empty()),
            drain_bucket: lookup(env::DRAIN_BUCKET).filter(|v| !v.is_empty()),
            affinity_header: lookup(env::AFFINITY_HEADER)
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| DEFAULT_AFFINITY_HEADER.to_owned()),
            affinity_query: lookup(env::AFFINITY_QUERY)
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| DEFAULT_AFFINITY_QUERY.to_owned()),
            stale_status,
        })
    }
}

/// The reaper Lambda's timeout for a schedule of `interval`: ten seconds short of the interval
/// (so passes never overlap through the schedule), between 30 seconds and five minutes. The
/// template's `Timeout` and the reaper's lock lifetime both come from here.
pub fn reaper_timeout(interval: Duration) -> Duration {
    Duration::from_secs(interval.as_secs().saturating_sub(10).clamp(30, 300))
}

/// The policy part of the environment (the template fills in the cluster and listener itself).
pub(crate) fn policy_env(
    interval: Duration,
    policy: &ReapPolicy,
) -> BTreeMap<&'static str, String> {
    let mut m = BTreeMap::new();
    m.insert(env::INTERVAL_SECONDS, interval.as_secs().to_string());
    m.insert(
        env::TIMEOUT_SECONDS,
        reaper_timeout(interval).as_secs().to_string(),
    );
    m.insert(
        env::CONSECUTIVE_PASSES,
        policy.consecutive_ready_passes.to_string(),
    );
    m.insert(env::MIN_AGE_SECONDS, policy.min_age.as_secs().to_string());
    m.insert(env::MAX_AGE_SECONDS, policy.max_age.as_secs().to_string());
    m.insert(
        env::DEPLOYING_TIMEOUT_SECONDS,
        policy.deploying_timeout.as_secs().to_string(),
    );
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ReaperSettings {
        ReaperSettings {
            deployment_name: DeploymentName::new("prod").expect("valid"),
            cluster: "flotilla-prod".into(),
            listener_arn: "arn:aws:elasticloadbalancing:us-east-1:1:listener/app/x/y/z".into(),
            interval: Duration::from_secs(120),
            timeout: Duration::from_secs(110),
            policy: ReapPolicy {
                min_age: Duration::from_secs(60),
                max_age: Duration::from_secs(7200),
                consecutive_ready_passes: 3,
                deploying_timeout: Duration::from_secs(900),
            },
            log_group: Some("/flotilla/prod/app".into()),
            repository: Some("123456789012.dkr.ecr.us-east-1.amazonaws.com/flotilla/prod".into()),
            drain_bucket: Some("flotilla-prod-1a2b3c4d".into()),
            affinity_header: "X-Flotilla-Deployment".into(),
            affinity_query: "flotilla_deployment".into(),
            stale_status: 409,
        }
    }

    #[test]
    fn settings_round_trip_through_the_environment() {
        let s = settings();
        let env = s.to_env();
        assert_eq!(
            env.keys().copied().collect::<Vec<_>>().len(),
            env::ALL.len()
        );
        let back = ReaperSettings::from_env(|k| env.get(k).cloned()).expect("complete");
        assert_eq!(back, s);
    }

    #[test]
    fn optional_variables_have_defaults() {
        let mut env = settings().to_env();
        for k in [
            env::TIMEOUT_SECONDS,
            env::LOG_GROUP,
            env::REPOSITORY,
            env::DRAIN_BUCKET,
            env::AFFINITY_HEADER,
            env::AFFINITY_QUERY,
            env::STALE_STATUS,
        ] {
            env.remove(k);
        }
        let s = ReaperSettings::from_env(|k| env.get(k).cloned()).expect("required ones present");
        assert_eq!(
            (s.log_group, s.repository, s.drain_bucket),
            (None, None, None)
        );
        assert_eq!(
            s.timeout,
            Duration::from_secs(110),
            "from the 120 s interval"
        );
        assert_eq!(s.affinity_header, DEFAULT_AFFINITY_HEADER);
        assert_eq!(s.affinity_query, DEFAULT_AFFINITY_QUERY);
        assert_eq!(s.stale_status, 410);
    }

    #[test]
    fn missing_and_bad_variables_are_named() {
        let env = settings().to_env();
        let without = |skip: &str| {
            ReaperSettings::from_env(|k| if k == skip { None } else { env.get(k).cloned() })
        };
        assert_eq!(
            without(env::CLUSTER),
            Err(SettingsError::Missing(env::CLUSTER))
        );
        let bad = ReaperSettings::from_env(|k| {
            if k == env::MAX_AGE_SECONDS {
                Some("2h".into())
            } else {
                env.get(k).cloned()
            }
        });
        match bad {
            Err(SettingsError::Invalid { name, .. }) => assert_eq!(name, env::MAX_AGE_SECONDS),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_agent_port_never_collides_with_the_app_port() {
        for app in [1, 80, 3000, 7999, 8000, 8001, 65535] {
            assert_ne!(default_container_port(app), app, "{app}");
        }
        assert_eq!(default_container_port(3000), 8000);
    }

    #[test]
    fn parameters_default_to_no_reaper() {
        assert_eq!(
            stack_parameters(None),
            vec![
                (PARAM_REAPER_CODE_BUCKET, String::new()),
                (PARAM_REAPER_CODE_KEY, String::new())
            ]
        );
        let code = ReaperCode {
            bucket: None,
            key: reaper_code_key("ab12"),
        };
        assert_eq!(
            stack_parameters(Some(&code)),
            vec![
                (PARAM_REAPER_CODE_BUCKET, String::new()),
                (
                    PARAM_REAPER_CODE_KEY,
                    "reaper/ab12/bootstrap.zip".to_owned()
                )
            ]
        );
    }
}
