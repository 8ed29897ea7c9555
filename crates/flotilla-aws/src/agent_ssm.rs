//! The agent's drain source on AWS: the version's state from SSM `/apps/<name>/<id>/state`, and
//! the task's readiness to `/apps/<name>/<id>/tasks/<task_id>`.
//!
//! One `GetParameter` per poll and one `PutParameter` per readiness change; the agent's poll loop
//! (`flotilla_agent::poll`) owns the pace: every `poll_seconds` with jitter, doubling the wait
//! after each throttled or transient failure. That matters here: an account's default
//! `GetParameter` budget is 40 per second per region, shared by every task, so about 200 tasks
//! polling every 5 s use it all. The SDK client makes at most two attempts per call, so a
//! throttled fleet slows down across polls instead of retrying in a burst.
//!
//! The task role needs `ssm:GetParameter` and `ssm:PutParameter` on
//! `arn:aws:ssm:<region>:<account>:parameter/apps/<name>/*`.
//!
//! At scale a task reads the drain board instead ([`crate::drain_board`]: one S3 object per
//! deployment name, conditional GETs) and this source only as its fallback and for readiness:
//! [`drain_source_from_env`] chooses, from `FLOTILLA_DRAIN_BUCKET` in the task definition.

use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_sdk_ssm::types::ParameterType;
use flotilla_agent::{DrainError, DrainErrorKind, DrainSource, Identity};
use flotilla_core::drain::Readiness;
use flotilla_core::lifecycle::VersionState;
use flotilla_core::names;
use flotilla_engine::ports::ErrorKind;

use crate::error::port_error;

/// Attempts per SSM call made by the agent's client (one retry).
pub const AGENT_MAX_ATTEMPTS: u32 = 2;

/// Reads drain state from, and writes readiness to, SSM Parameter Store.
#[derive(Clone, Debug)]
pub struct SsmDrainSource {
    client: aws_sdk_ssm::Client,
}

impl SsmDrainSource {
    /// A source over `client` (built with whatever endpoint and credentials the caller chose).
    pub fn new(client: aws_sdk_ssm::Client) -> Self {
        SsmDrainSource { client }
    }

    /// A source configured the way a task sees AWS: the standard credential chain (the task
    /// role), `AWS_REGION` from the task definition, `AWS_ENDPOINT_URL` when set, TLS trusting
    /// the image's roots and built-in ones ([`crate::tls`]: an image without a CA bundle still
    /// reaches SSM), and [`AGENT_MAX_ATTEMPTS`] attempts per call.
    pub async fn from_env() -> Self {
        Self::new(aws_sdk_ssm::Client::new(&agent_config().await))
    }
}

/// The drain source of an agent in a task: the drain board when the task definition names its
/// bucket (`FLOTILLA_DRAIN_BUCKET`, set when the baseline has one), else SSM alone. Both built
/// the way a task sees AWS (see [`SsmDrainSource::from_env`]).
pub async fn drain_source_from_env() -> std::sync::Arc<dyn DrainSource> {
    let config = agent_config().await;
    let ssm = aws_sdk_ssm::Client::new(&config);
    match std::env::var(crate::drain_board::BUCKET_ENV) {
        Ok(bucket) if !bucket.trim().is_empty() => {
            let s3 = aws_sdk_s3::config::Builder::from(&config)
                .force_path_style(config.endpoint_url().is_some())
                .build();
            std::sync::Arc::new(crate::drain_board::BoardDrainSource::new(
                aws_sdk_s3::Client::from_conf(s3),
                ssm,
                bucket.trim().to_owned(),
            ))
        }
        _ => std::sync::Arc::new(SsmDrainSource::new(ssm)),
    }
}

/// The SDK configuration of an agent in a task.
async fn agent_config() -> aws_config::SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .http_client(crate::tls::default_http_client())
        .retry_config(RetryConfig::standard().with_max_attempts(AGENT_MAX_ATTEMPTS))
        .load()
        .await
}

/// How the agent's poll loop should treat a failure of this kind.
pub fn drain_kind(kind: ErrorKind) -> DrainErrorKind {
    match kind {
        ErrorKind::Throttled => DrainErrorKind::Throttled,
        ErrorKind::Transient | ErrorKind::Unavailable => DrainErrorKind::Transient,
        ErrorKind::NotFound
        | ErrorKind::Conflict
        | ErrorKind::AccessDenied
        | ErrorKind::Invalid => DrainErrorKind::Permanent,
    }
}

/// `message` with what to do when it is a certificate the agent does not trust: the SDK's text
/// says only `invalid peer certificate: UnknownIssuer`.
pub fn explain(message: String) -> String {
    if message.contains("invalid peer certificate") {
        format!(
            "{message}; the endpoint's TLS certificate is not signed by a root the agent trusts \
             (the image's CA bundle, SSL_CERT_FILE / SSL_CERT_DIR, and the built-in Mozilla \
             roots): a proxy that intercepts TLS needs its CA in SSL_CERT_FILE"
        )
    } else {
        message
    }
}

#[async_trait]
impl DrainSource for SsmDrainSource {
    fn describe(&self, who: &Identity) -> String {
        format!("SSM {}", names::state_parameter(&who.name, &who.id))
    }

    async fn read_state(&self, who: &Identity) -> Result<Option<VersionState>, DrainError> {
        const OP: &str = "read drain state";
        let name = names::state_parameter(&who.name, &who.id);
        let out = match self.client.get_parameter().name(&name).send().await {
            Ok(out) => out,
            Err(err) => {
                let err = port_error(OP, &name, err);
                if err.kind == ErrorKind::NotFound {
                    return Ok(None);
                }
                return Err(DrainError::new(
                    drain_kind(err.kind),
                    OP,
                    name,
                    explain(err.message),
                ));
            }
        };
        let Some(value) = out.parameter().and_then(|p| p.value()) else {
            return Ok(None);
        };
        value.trim().parse::<VersionState>().map(Some).map_err(|e| {
            DrainError::new(DrainErrorKind::Permanent, OP, name.clone(), e.to_string())
        })
    }

    async fn write_readiness(
        &self,
        who: &Identity,
        readiness: Readiness,
    ) -> Result<(), DrainError> {
        const OP: &str = "write readiness";
        let name = names::task_parameter(&who.name, &who.id, &who.instance);
        self.client
            .put_parameter()
            .name(&name)
            .value(readiness.as_str())
            .r#type(ParameterType::String)
            .overwrite(true)
            .send()
            .await
            .map_err(|err| {
                let err = port_error(OP, &name, err);
                DrainError::new(drain_kind(err.kind), OP, name.clone(), explain(err.message))
            })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_untrusted_certificate_says_what_to_do() {
        let said = explain("dispatch failure: invalid peer certificate: UnknownIssuer".into());
        assert!(said.contains("SSL_CERT_FILE"), "{said}");
        assert_eq!(
            explain("AccessDeniedException".into()),
            "AccessDeniedException"
        );
    }

    #[test]
    fn throttling_backs_off_and_misconfiguration_does_not() {
        let table = [
            (ErrorKind::Throttled, DrainErrorKind::Throttled),
            (ErrorKind::Transient, DrainErrorKind::Transient),
            (ErrorKind::Unavailable, DrainErrorKind::Transient),
            (ErrorKind::AccessDenied, DrainErrorKind::Permanent),
            (ErrorKind::Invalid, DrainErrorKind::Permanent),
            (ErrorKind::NotFound, DrainErrorKind::Permanent),
            (ErrorKind::Conflict, DrainErrorKind::Permanent),
        ];
        for (kind, want) in table {
            assert_eq!(drain_kind(kind), want, "{kind:?}");
        }
        // SSM's throttling code reaches the poll loop as Throttled.
        let code = crate::classify(crate::Failure::Service {
            code: Some("ThrottlingException"),
            status: Some(400),
        });
        assert_eq!(drain_kind(code), DrainErrorKind::Throttled);
    }
}
