//! The SDK clients the baseline's lifecycle uses, how long it waits on CloudFormation, and the
//! caller's account from STS.

use std::time::Duration;

use aws_config::SdkConfig;
use flotilla_engine::ports::{ErrorKind, PortError};

use super::*;
use crate::error::port_error;
use crate::sdk::{Clients, sdk_config};
use crate::settings::AwsSettings;

/// The clients the baseline's lifecycle uses, besides the provider's own.
#[derive(Clone, Debug)]
pub struct StackClients {
    /// CloudFormation.
    pub cfn: aws_sdk_cloudformation::Client,
    /// S3: the reaper's code zip, emptying the artefact bucket.
    pub s3: aws_sdk_s3::Client,
    /// ACM: the certificate's DNS validation records.
    pub acm: aws_sdk_acm::Client,
    /// STS: the caller's account, for the deployer policy.
    pub sts: aws_sdk_sts::Client,
    /// The provider's clients (ECS, ELBv2, SSM: running versions, the listener's default).
    pub provider: Clients,
}

impl StackClients {
    /// Clients for `config`. `path_style` addresses S3 buckets in the path rather than the host
    /// name, which endpoints such as emulators on `127.0.0.1` need.
    pub fn new(config: &SdkConfig, path_style: bool) -> Self {
        let s3 = aws_sdk_s3::config::Builder::from(config)
            .force_path_style(path_style)
            .build();
        StackClients {
            cfn: aws_sdk_cloudformation::Client::new(config),
            s3: aws_sdk_s3::Client::from_conf(s3),
            acm: aws_sdk_acm::Client::new(config),
            sts: aws_sdk_sts::Client::new(config),
            provider: Clients::new(config),
        }
    }

    /// Clients for `settings`: path-style S3 when an endpoint override is set (in the settings
    /// or by `AWS_ENDPOINT_URL`).
    pub async fn for_settings(settings: &AwsSettings) -> Self {
        let config = sdk_config(settings).await;
        let path_style = settings.endpoint_url.is_some()
            || std::env::var_os("AWS_ENDPOINT_URL").is_some()
            || std::env::var_os("AWS_ENDPOINT_URL_S3").is_some();
        Self::new(&config, path_style)
    }
}

/// How long and how often to wait on CloudFormation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WaitSettings {
    /// Time between polls of the stack and its events.
    pub poll: Duration,
    /// How long to wait for one stack operation before giving up (CloudFormation carries on).
    pub timeout: Duration,
    /// How often to say "still waiting" when no event arrives.
    pub heartbeat: Duration,
}

impl Default for WaitSettings {
    fn default() -> Self {
        WaitSettings {
            poll: Duration::from_secs(5),
            timeout: Duration::from_secs(60 * 60),
            heartbeat: Duration::from_secs(60),
        }
    }
}

/// The caller's account id and partition (`aws`, `aws-cn`, `aws-us-gov`), from STS.
pub async fn caller_account(sts: &aws_sdk_sts::Client) -> Result<(String, String), StackError> {
    let out = sts
        .get_caller_identity()
        .send()
        .await
        .map_err(|e| port_error("get caller identity", "sts", e))?;
    let account = out.account().unwrap_or_default().to_owned();
    let partition = out
        .arn()
        .and_then(|arn| arn.split(':').nth(1))
        .filter(|p| !p.is_empty())
        .unwrap_or("aws")
        .to_owned();
    if account.is_empty() {
        return Err(PortError::new(
            ErrorKind::Invalid,
            "get caller identity",
            "sts",
            "STS named no account",
        )
        .into());
    }
    Ok((account, partition))
}
