//! One `SdkConfig` from [`AwsSettings`], the service clients built from it once, and an
//! interceptor that counts API calls per operation (used by the API-call benchmark and tests).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, ConfigLoader, Region, SdkConfig};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeSerializationInterceptorContextRef;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;

use crate::settings::AwsSettings;

/// Builds the SDK configuration: the standard credential chain, the profile, the region, the
/// endpoint override (else `AWS_ENDPOINT_URL`), standard retries with `max_attempts`, and the
/// HTTPS client of [`crate::tls`] (system and built-in roots).
pub async fn sdk_config(settings: &AwsSettings) -> SdkConfig {
    sdk_config_with(settings, |loader| loader).await
}

/// [`sdk_config`] with a last adjustment of the loader (tests give static credentials here).
pub async fn sdk_config_with(
    settings: &AwsSettings,
    adjust: impl FnOnce(ConfigLoader) -> ConfigLoader,
) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(crate::tls::default_http_client())
        .retry_config(RetryConfig::standard().with_max_attempts(settings.max_attempts.max(1)));
    if let Some(profile) = &settings.profile {
        loader = loader.profile_name(profile);
    }
    if let Some(region) = &settings.region {
        loader = loader.region(Region::new(region.clone()));
    }
    if let Some(url) = &settings.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    adjust(loader).load().await
}

/// The service clients the provider uses, built once and shared (cheap to clone).
#[derive(Clone, Debug)]
pub struct Clients {
    /// ECS: task definitions, services, tasks.
    pub ecs: aws_sdk_ecs::Client,
    /// ELBv2: target groups, listener rules, the default action.
    pub elb: aws_sdk_elasticloadbalancingv2::Client,
    /// SSM Parameter Store: records, drain state, readiness, the lock.
    pub ssm: aws_sdk_ssm::Client,
    /// ECR: registry login and image tags.
    pub ecr: aws_sdk_ecr::Client,
    /// CloudWatch: the target groups' metrics a canary is judged by.
    pub cloudwatch: aws_sdk_cloudwatch::Client,
    /// CloudWatch Logs: recent container logs.
    pub logs: aws_sdk_cloudwatchlogs::Client,
    /// S3: the drain board (`drain_board`). Path-style addressing when an endpoint is set
    /// (emulators on `127.0.0.1` need it).
    pub s3: aws_sdk_s3::Client,
    /// Application Auto Scaling: each version's scalable target and target-tracking policies.
    pub scaling: aws_sdk_applicationautoscaling::Client,
    /// The region the clients talk to.
    pub region: Option<String>,
}

impl Clients {
    /// Clients for `config`.
    pub fn new(config: &SdkConfig) -> Self {
        Self::build(config, None)
    }

    /// Clients for `config` whose every call is counted by `counter`.
    pub fn counted(config: &SdkConfig, counter: &CallCounter) -> Self {
        Self::build(config, Some(counter))
    }

    fn build(config: &SdkConfig, counter: Option<&CallCounter>) -> Self {
        macro_rules! client {
            ($krate:ident) => {{
                let mut builder = $krate::config::Builder::from(config);
                if let Some(counter) = counter {
                    builder = builder.interceptor(counter.clone());
                }
                $krate::Client::from_conf(builder.build())
            }};
        }
        Clients {
            ecs: client!(aws_sdk_ecs),
            elb: client!(aws_sdk_elasticloadbalancingv2),
            ssm: client!(aws_sdk_ssm),
            ecr: client!(aws_sdk_ecr),
            cloudwatch: client!(aws_sdk_cloudwatch),
            logs: client!(aws_sdk_cloudwatchlogs),
            s3: {
                let mut builder = aws_sdk_s3::config::Builder::from(config)
                    .force_path_style(config.endpoint_url().is_some());
                if let Some(counter) = counter {
                    builder = builder.interceptor(counter.clone());
                }
                aws_sdk_s3::Client::from_conf(builder.build())
            },
            scaling: client!(aws_sdk_applicationautoscaling),
            region: config.region().map(|r| r.to_string()),
        }
    }
}

/// Counts API calls (operations, not retry attempts) per `Service.Operation`.
#[derive(Clone, Debug, Default)]
pub struct CallCounter {
    counts: Arc<Mutex<BTreeMap<String, u64>>>,
}

impl CallCounter {
    /// A counter at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// The counts so far, by `Service.Operation`.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.counts.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// The total so far.
    pub fn total(&self) -> u64 {
        self.snapshot().values().sum()
    }

    /// Sets every count back to zero.
    pub fn reset(&self) {
        if let Ok(mut c) = self.counts.lock() {
            c.clear();
        }
    }
}

impl Intercept for CallCounter {
    fn name(&self) -> &'static str {
        "flotilla-call-counter"
    }

    // Once per operation (not per retry attempt), after the operation's configuration, which
    // holds its name, has been applied.
    fn read_before_serialization(
        &self,
        _context: &BeforeSerializationInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let key = match cfg.load::<Metadata>() {
            Some(m) => format!("{}.{}", m.service(), m.name()),
            None => "unknown".to_owned(),
        };
        if let Ok(mut c) = self.counts.lock() {
            *c.entry(key).or_insert(0) += 1;
        }
        Ok(())
    }
}
