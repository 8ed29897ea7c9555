//! The reaper as an AWS Lambda custom runtime: the same `Engine::reap` pass as `flotilla reap`,
//! run once per scheduled invocation, after one `Engine::canary_tick` (on AWS nothing else
//! outlives the CLI, so a canary's steps advance at the reaper's schedule).
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
//! | `FLOTILLA_REPOSITORY` | the ECR repository URI; retired versions' images are deleted from it | none |
//! | `FLOTILLA_DRAIN_BUCKET` | the drain board's bucket; each state recorded is published to it | none |
//! | `FLOTILLA_REAPER_INTERVAL_SECONDS` | the schedule's rate | required |
//! | `FLOTILLA_REAPER_MIN_AGE_SECONDS` | never touch a younger version | required |
//! | `FLOTILLA_REAPER_MAX_AGE_SECONDS` | retire after draining this long | required |
//! | `FLOTILLA_REAPER_CONSECUTIVE_PASSES` | all-ready passes before retiring | required |
//! | `FLOTILLA_REAPER_DEPLOYING_TIMEOUT_SECONDS` | clean up a deploy stuck this long | required |
//! | `FLOTILLA_REAPER_TIMEOUT_SECONDS` | the function's timeout, and its lock's lifetime | interval - 10 s, 30 s to 300 s |
//! | `FLOTILLA_AFFINITY_HEADER` / `FLOTILLA_AFFINITY_QUERY` | the affinity keys | the defaults |
//! | `FLOTILLA_RULE_PRIORITY_BASE` | lowest rule priority flotilla uses | 1000 |
//!
//! The region and credentials come from the Lambda environment (`AWS_REGION`, the role).
//! An invocation payload of `{"dry_run": true}` plans without acting.

use std::time::Duration;

use flotilla_baseline::ReaperSettings;
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
    /// How long the reaper's lock lives: the function's timeout, so the lock of an invocation
    /// killed by the timeout lapses as it dies instead of blocking deploys for longer.
    pub lock_ttl: Duration,
}

impl ReaperConfig {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Self, AwsError> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// Reads the configuration through `var`: the variables the baseline stack sets (parsed by
    /// `flotilla_baseline::ReaperSettings`, the one definition of that contract) and the optional
    /// ones above.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, AwsError> {
        let base =
            ReaperSettings::from_env(&var).map_err(|e| AwsError::LambdaEnv(e.to_string()))?;
        let mut settings = AwsSettings::new(base.deployment_name.clone());
        settings.read_baseline_file = false;
        settings.baseline_overrides = BaselineOutputs {
            listener_arn: Some(base.listener_arn.clone()),
            cluster: Some(base.cluster.clone()),
            log_group: base.log_group.clone(),
            // With the repository known, removing a retired version also deletes its image.
            repository: base.repository.clone(),
            // With the board's bucket known, each state recorded is published to it.
            drain_bucket: base.drain_bucket.clone(),
            ..Default::default()
        };
        if let Some(h) = var("FLOTILLA_AFFINITY_HEADER") {
            settings.routing.affinity_header = h;
        }
        if let Some(q) = var("FLOTILLA_AFFINITY_QUERY") {
            settings.routing.affinity_query = q;
        }
        settings.routing.stale_status = base.stale_status;
        if let Some(v) = var("FLOTILLA_RULE_PRIORITY_BASE") {
            settings.routing.priority_base = v.trim().parse().map_err(|_| {
                AwsError::LambdaEnv(format!(
                    "environment variable FLOTILLA_RULE_PRIORITY_BASE={v:?} is not a whole number"
                ))
            })?;
        }
        Ok(ReaperConfig {
            settings,
            policy: base.policy,
            lock_ttl: base.timeout,
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
            lock_ttl: self.lock_ttl,
            lock_owner: format!("reaper lambda (request {request_id})"),
            local_holders: None,
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

/// One invocation: a canary tick, then a reaper pass, with fresh ports over the shared clients.
/// Each takes the deploy lock for itself and releases it, as the host daemon's loops do. Returns
/// the pass's report as JSON (what the Lambda console shows) with the tick under `canary`. A
/// failed tick does not stop the pass, but fails the invocation after it (so the reaper's error
/// alarm sees it); a dry run does not tick.
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
    let tick = if dry_run {
        None
    } else {
        Some(engine.canary_tick(&LogProgress).await)
    };
    let report = engine.reap(dry_run, &LogProgress).await?;
    let mut out = serde_json::to_value(&report)?;
    match tick {
        Some(Ok(tick)) => {
            if let Value::Object(map) = &mut out {
                map.insert("canary".to_owned(), serde_json::to_value(&tick)?);
            }
            Ok(out)
        }
        Some(Err(e)) => Err(e.into()),
        None => Ok(out),
    }
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

    const FULL: &[(&str, &str)] = &[
        ("FLOTILLA_DEPLOYMENT_NAME", "prod"),
        ("FLOTILLA_CLUSTER", "flotilla-prod"),
        (
            "FLOTILLA_LISTENER_ARN",
            "arn:aws:elasticloadbalancing:us-east-1:1:listener/app/x/1/2",
        ),
        ("FLOTILLA_REAPER_INTERVAL_SECONDS", "60"),
        ("FLOTILLA_REAPER_MIN_AGE_SECONDS", "120"),
        ("FLOTILLA_REAPER_MAX_AGE_SECONDS", "172800"),
        ("FLOTILLA_REAPER_CONSECUTIVE_PASSES", "3"),
        ("FLOTILLA_REAPER_DEPLOYING_TIMEOUT_SECONDS", "1800"),
    ];

    #[test]
    fn reads_the_environment_the_baseline_sets() {
        let c = ReaperConfig::from_vars(vars(FULL)).expect("complete");
        assert_eq!(c.settings.name.as_str(), "prod");
        assert_eq!(c.policy.min_age, Duration::from_secs(120));
        assert_eq!(c.policy.consecutive_ready_passes, 3);
        assert_eq!(c.policy.max_age, Duration::from_secs(172_800));
        // A pass killed by the 50 s timeout of a one-minute schedule holds the lock no longer.
        assert_eq!(c.lock_ttl, Duration::from_secs(50));
        assert_eq!(c.engine_settings("r").lock_ttl, Duration::from_secs(50));
        assert!(!c.settings.read_baseline_file);
        assert_eq!(
            c.settings.baseline_overrides.cluster.as_deref(),
            Some("flotilla-prod")
        );
        assert_eq!(c.settings.baseline_overrides.repository, None);
        assert_eq!(c.settings.baseline_overrides.drain_bucket, None);
        let mut with_extras = FULL.to_vec();
        with_extras.push((
            "FLOTILLA_REPOSITORY",
            "123456789012.dkr.ecr.us-east-1.amazonaws.com/flotilla/prod",
        ));
        with_extras.push(("FLOTILLA_AFFINITY_HEADER", "X-Version"));
        with_extras.push(("FLOTILLA_RULE_PRIORITY_BASE", "500"));
        with_extras.push(("FLOTILLA_REAPER_TIMEOUT_SECONDS", "40"));
        with_extras.push(("FLOTILLA_DRAIN_BUCKET", "flotilla-prod-1a2b3c4d"));
        let c = ReaperConfig::from_vars(vars(&with_extras)).expect("complete");
        // The reaper publishes each state it records to the board the tasks read.
        assert_eq!(
            c.settings.baseline_overrides.drain_bucket.as_deref(),
            Some("flotilla-prod-1a2b3c4d")
        );
        assert_eq!(c.lock_ttl, Duration::from_secs(40));
        assert_eq!(c.settings.routing.affinity_header, "X-Version");
        assert_eq!(c.settings.routing.priority_base, 500);
        assert_eq!(
            c.settings.baseline_overrides.repository.as_deref(),
            Some("123456789012.dkr.ecr.us-east-1.amazonaws.com/flotilla/prod")
        );
    }

    #[test]
    fn names_the_variable_that_is_wrong() {
        let missing: Vec<(&str, &str)> = FULL
            .iter()
            .copied()
            .filter(|(k, _)| *k != "FLOTILLA_CLUSTER")
            .collect();
        let err = ReaperConfig::from_vars(vars(&missing))
            .expect_err("incomplete")
            .to_string();
        assert!(err.contains("FLOTILLA_CLUSTER"), "{err}");
        let mut bad = FULL.to_vec();
        bad.push(("FLOTILLA_RULE_PRIORITY_BASE", "high"));
        let err = ReaperConfig::from_vars(vars(&bad))
            .expect_err("bad base")
            .to_string();
        assert!(err.contains("FLOTILLA_RULE_PRIORITY_BASE"), "{err}");
    }
}
