//! The reaper as an AWS Lambda custom runtime: the same `Engine::reap` pass as `flotilla reap`,
//! run once per scheduled invocation.
//!
//! The CLI's `main` calls [`is_lambda`] first and, when it is true, hands over to [`run`]. The
//! function's settings come from its environment (the baseline stack sets them):
//!
//! | variable | meaning | default |
//! | --- | --- | --- |
//! | `FLOTILLA_DEPLOYMENT_NAME` | the deployment name | required |
//! | `FLOTILLA_CLUSTER` | the ECS cluster (name or ARN) | required |
//! | `FLOTILLA_LISTENER_ARN` | the listener holding the affinity rules | required |
//! | `FLOTILLA_LOG_GROUP` | the containers' log group | none |
//! | `FLOTILLA_REAPER_MIN_AGE_SECONDS` | never touch a younger version | 60 |
//! | `FLOTILLA_REAPER_MAX_AGE_SECONDS` | retire after draining this long | 172800 |
//! | `FLOTILLA_REAPER_CONSECUTIVE_PASSES` | all-ready passes before retiring | 2 |
//! | `FLOTILLA_REAPER_DEPLOYING_TIMEOUT_SECONDS` | clean up a deploy stuck this long | 1800 |
//! | `FLOTILLA_AFFINITY_HEADER` / `FLOTILLA_AFFINITY_QUERY` | the affinity keys | the defaults |
//! | `FLOTILLA_RULE_PRIORITY_BASE` | lowest rule priority flotilla uses | 1000 |
//!
//! The region and credentials come from the Lambda environment (`AWS_REGION`, the role).
//! An invocation payload of `{"dry_run": true}` plans without acting.

use std::time::Duration;

use flotilla_core::DeploymentName;
use flotilla_core::reaper::ReapPolicy;
use flotilla_core::routing::RuleBudget;
use flotilla_engine::events::{Event, Progress};
use flotilla_engine::{Engine, Settings};
use lambda_runtime::{LambdaEvent, service_fn};
use serde_json::Value;

use crate::connect_with;
use crate::error::AwsError;
use crate::sdk::{Clients, sdk_config};
use crate::settings::{AwsSettings, BaselineOutputs, Needs};

/// How long the reaper's lock lives if an invocation dies holding it.
const REAPER_LOCK_TTL: Duration = Duration::from_secs(300);

/// Whether this process was started by the Lambda service.
pub fn is_lambda() -> bool {
    std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some()
}

/// The reaper's configuration, read from the function's environment.
#[derive(Clone, Debug)]
pub struct ReaperConfig {
    /// Provider settings (cluster and listener as baseline overrides; no cache file).
    pub settings: AwsSettings,
    /// When the reaper may act.
    pub policy: ReapPolicy,
}

impl ReaperConfig {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Self, AwsError> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// Reads the configuration through `var`, reporting every problem at once.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, AwsError> {
        let mut problems = Vec::new();
        let mut required = |key: &str| {
            let v = var(key).filter(|v| !v.trim().is_empty());
            if v.is_none() {
                problems.push(format!("{key} is not set"));
            }
            v
        };
        let name = required("FLOTILLA_DEPLOYMENT_NAME");
        let cluster = required("FLOTILLA_CLUSTER");
        let listener = required("FLOTILLA_LISTENER_ARN");
        let mut seconds = |key: &str, default: Duration| match var(key) {
            None => default,
            Some(v) => match v.trim().parse::<u64>() {
                Ok(n) => Duration::from_secs(n),
                Err(_) => {
                    problems.push(format!("{key}={v} is not a whole number of seconds"));
                    default
                }
            },
        };
        let defaults = ReapPolicy::default();
        let min_age = seconds("FLOTILLA_REAPER_MIN_AGE_SECONDS", defaults.min_age);
        let max_age = seconds("FLOTILLA_REAPER_MAX_AGE_SECONDS", defaults.max_age);
        let deploying_timeout = seconds(
            "FLOTILLA_REAPER_DEPLOYING_TIMEOUT_SECONDS",
            defaults.deploying_timeout,
        );
        let passes = match var("FLOTILLA_REAPER_CONSECUTIVE_PASSES") {
            None => defaults.consecutive_ready_passes,
            Some(v) => v.trim().parse::<u32>().unwrap_or_else(|_| {
                problems.push(format!(
                    "FLOTILLA_REAPER_CONSECUTIVE_PASSES={v} is not a whole number"
                ));
                defaults.consecutive_ready_passes
            }),
        };
        let priority_base = var("FLOTILLA_RULE_PRIORITY_BASE").map(|v| {
            v.trim().parse::<u32>().unwrap_or_else(|_| {
                problems.push(format!(
                    "FLOTILLA_RULE_PRIORITY_BASE={v} is not a whole number"
                ));
                0
            })
        });
        let name = name.and_then(|n| match DeploymentName::new(&n) {
            Ok(n) => Some(n),
            Err(e) => {
                problems.push(format!("FLOTILLA_DEPLOYMENT_NAME: {e}"));
                None
            }
        });
        let (Some(name), true) = (name, problems.is_empty()) else {
            return Err(AwsError::LambdaEnv(problems.join("; ")));
        };
        let mut settings = AwsSettings::new(name);
        settings.read_baseline_file = false;
        settings.baseline_overrides = BaselineOutputs {
            listener_arn: listener,
            cluster,
            log_group: var("FLOTILLA_LOG_GROUP"),
            ..Default::default()
        };
        if let Some(h) = var("FLOTILLA_AFFINITY_HEADER") {
            settings.routing.affinity_header = h;
        }
        if let Some(q) = var("FLOTILLA_AFFINITY_QUERY") {
            settings.routing.affinity_query = q;
        }
        if let Some(base) = priority_base {
            settings.routing.priority_base = base;
        }
        Ok(ReaperConfig {
            settings,
            policy: ReapPolicy {
                min_age,
                max_age,
                consecutive_ready_passes: passes,
                deploying_timeout,
            },
        })
    }

    fn engine_settings(&self, request_id: &str) -> Settings {
        Settings {
            name: self.settings.name.clone(),
            policy: self.policy,
            budget: RuleBudget {
                limit: self.settings.routing.rule_limit,
            },
            health_timeout: Duration::from_secs(120),
            health_poll: Duration::from_secs(5),
            lock_ttl: REAPER_LOCK_TTL,
            lock_owner: format!("reaper lambda (request {request_id})"),
        }
    }
}

/// Writes progress events to the function's log.
struct LogProgress;

impl Progress for LogProgress {
    fn event(&self, event: Event) {
        match serde_json::to_string(&event) {
            Ok(line) => tracing::info!(target: "flotilla::reaper", "{line}"),
            Err(_) => tracing::info!(target: "flotilla::reaper", "{event:?}"),
        }
    }
}

/// One invocation: a reaper pass with fresh ports over the shared clients. Returns the pass's
/// report as JSON (what the Lambda console shows).
pub async fn handle(
    clients: &Clients,
    config: &ReaperConfig,
    request_id: &str,
    payload: &Value,
) -> Result<Value, lambda_runtime::Error> {
    let dry_run = payload
        .get("dry_run")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let ports = connect_with(&config.settings, clients.clone(), Needs::Operate)?;
    let engine = Engine::new(ports, config.engine_settings(request_id));
    let report = engine.reap(dry_run, &LogProgress).await?;
    Ok(serde_json::to_value(&report)?)
}

/// Runs the Lambda runtime loop until the service stops the process.
pub async fn run() -> Result<(), AwsError> {
    lambda_runtime::tracing::init_default_subscriber();
    let config = ReaperConfig::from_env()?;
    let clients = Clients::new(&sdk_config(&config.settings).await);
    let (clients, config) = (&clients, &config);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        handle(clients, config, &event.context.request_id, &event.payload).await
    }))
    .await
    .map_err(|e| AwsError::LambdaRuntime(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn reads_the_environment() {
        let c = ReaperConfig::from_vars(vars(&[
            ("FLOTILLA_DEPLOYMENT_NAME", "prod"),
            ("FLOTILLA_CLUSTER", "flotilla-prod"),
            (
                "FLOTILLA_LISTENER_ARN",
                "arn:aws:elasticloadbalancing:us-east-1:1:listener/app/x/1/2",
            ),
            ("FLOTILLA_REAPER_MIN_AGE_SECONDS", "120"),
            ("FLOTILLA_REAPER_CONSECUTIVE_PASSES", "3"),
        ]))
        .expect("complete");
        assert_eq!(c.settings.name.as_str(), "prod");
        assert_eq!(c.policy.min_age, Duration::from_secs(120));
        assert_eq!(c.policy.consecutive_ready_passes, 3);
        assert_eq!(c.policy.max_age, ReapPolicy::default().max_age);
        assert!(!c.settings.read_baseline_file);
        assert_eq!(
            c.settings.baseline_overrides.cluster.as_deref(),
            Some("flotilla-prod")
        );
    }

    #[test]
    fn reports_every_problem_at_once() {
        let err = ReaperConfig::from_vars(vars(&[
            ("FLOTILLA_DEPLOYMENT_NAME", "prod"),
            ("FLOTILLA_REAPER_MAX_AGE_SECONDS", "two days"),
        ]))
        .expect_err("incomplete")
        .to_string();
        for want in [
            "FLOTILLA_CLUSTER is not set",
            "FLOTILLA_LISTENER_ARN is not set",
            "FLOTILLA_REAPER_MAX_AGE_SECONDS=two days",
        ] {
            assert!(err.contains(want), "{err} lacks {want}");
        }
        let err = ReaperConfig::from_vars(vars(&[
            ("FLOTILLA_DEPLOYMENT_NAME", "Prod"),
            ("FLOTILLA_CLUSTER", "c"),
            ("FLOTILLA_LISTENER_ARN", "l"),
        ]))
        .expect_err("bad name")
        .to_string();
        assert!(err.contains("FLOTILLA_DEPLOYMENT_NAME"), "{err}");
    }
}
