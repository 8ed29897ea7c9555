//! Where the agent learns whether its version is draining, and where it reports its readiness:
//! the [`DrainSource`] trait and its provider-neutral implementations.
//!
//! - SSM Parameter Store on AWS: `flotilla_aws::agent_ssm::SsmDrainSource` (in the AWS crate,
//!   the only one that knows AWS), or at scale `flotilla_aws::drain_board::BoardDrainSource`:
//!   one S3 object with every version's state, read with conditional GETs.
//! - [`FileSource`]: the state in a file, readiness written to files; for the host provider or
//!   local runs (`FLOTILLA_DRAIN_STATE_FILE`, `FLOTILLA_READINESS_FILE`).
//! - [`HttpSource`]: the state from a URL, readiness `PUT` to a URL (`FLOTILLA_DRAIN_STATE_URL`,
//!   `FLOTILLA_READINESS_URL`).
//! - [`StaticSource`]: a fixed state and no reporting, when nothing is configured (a plain local
//!   run is always `active`).
//!
//! Sources only carry values: the agent's poll loop decides when to call them (every poll with
//! jitter, backing off on [`DrainErrorKind::Throttled`]) and writes readiness only when it changes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use flotilla_core::drain::Readiness;
use flotilla_core::lifecycle::VersionState;

use crate::http::HttpClient;
use crate::identity::Identity;

/// The placeholder replaced by the instance id in readiness paths and URLs.
pub const INSTANCE_PLACEHOLDER: &str = "{instance}";

/// How a drain-source call failed, which decides how the poll loop waits before the next one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DrainErrorKind {
    /// The provider asked us to slow down (SSM `ThrottlingException`, HTTP 429): back off
    /// exponentially.
    Throttled,
    /// A blip (timeout, 5xx, connection refused): back off exponentially too.
    Transient,
    /// Misconfiguration (access denied, bad URL, a value that is not a state): logged, retried at
    /// the normal pace, since it needs a human.
    Permanent,
}

/// A failed drain-source call.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{operation} {resource}: {message}")]
pub struct DrainError {
    /// The class of failure.
    pub kind: DrainErrorKind,
    /// What was being done, e.g. `read drain state`.
    pub operation: &'static str,
    /// What it was done to (a parameter name, a path, a URL).
    pub resource: String,
    /// Why it failed.
    pub message: String,
}

impl DrainError {
    /// A drain error of `kind`.
    pub fn new(
        kind: DrainErrorKind,
        operation: &'static str,
        resource: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        DrainError {
            kind,
            operation,
            resource: resource.into(),
            message: message.into(),
        }
    }
}

/// Reads a version's lifecycle state and records one instance's readiness.
///
/// Implementations make one call per method call (no retries of their own beyond their client's)
/// and classify failures; the agent's poll loop owns the pace, the jitter and the back-off.
#[async_trait]
pub trait DrainSource: Send + Sync + 'static {
    /// A short description for logs, e.g. `SSM /apps/shop/<id>/state`.
    fn describe(&self, who: &Identity) -> String;

    /// The version's current state, or `None` if it has none (not written yet, or already
    /// removed); `None` is treated as "not draining".
    async fn read_state(&self, who: &Identity) -> Result<Option<VersionState>, DrainError>;

    /// Records this instance's readiness (`healthy` or `draining` on the wire). Called only when
    /// the value changes (and again after a failed attempt).
    async fn write_readiness(&self, who: &Identity, readiness: Readiness)
    -> Result<(), DrainError>;

    /// A failure the source is working around, as of its last call: its reads still succeed, but
    /// not the way they should (the drain board unreadable, so the state came from SSM, one call
    /// per task). `None` when it works as designed. The health document shows it as
    /// `drain_source.degraded` and the log says when it starts and ends.
    fn degraded(&self) -> Option<String> {
        None
    }
}

#[async_trait]
impl<S: DrainSource + ?Sized> DrainSource for Arc<S> {
    fn describe(&self, who: &Identity) -> String {
        (**self).describe(who)
    }
    async fn read_state(&self, who: &Identity) -> Result<Option<VersionState>, DrainError> {
        (**self).read_state(who).await
    }
    async fn write_readiness(
        &self,
        who: &Identity,
        readiness: Readiness,
    ) -> Result<(), DrainError> {
        (**self).write_readiness(who, readiness).await
    }
    fn degraded(&self) -> Option<String> {
        (**self).degraded()
    }
}

/// Parses a state as stored: the plain word (`active`, `draining`, ...), surrounding whitespace
/// ignored, or a JSON object with a `state` field (what an HTTP endpoint may prefer to serve).
pub fn parse_state(text: &str) -> Result<VersionState, String> {
    let text = text.trim();
    let word = if text.starts_with('{') {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("unreadable JSON ({e})"))?;
        value
            .get("state")
            .and_then(|s| s.as_str())
            .ok_or_else(|| "JSON without a string `state` field".to_owned())?
            .to_owned()
    } else {
        text.to_owned()
    };
    word.parse::<VersionState>().map_err(|e| e.to_string())
}

/// A fixed state, reporting nowhere: for local runs with no drain source configured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StaticSource(pub VersionState);

impl StaticSource {
    /// Always `active`.
    pub fn active() -> Self {
        StaticSource(VersionState::Active)
    }
}

#[async_trait]
impl DrainSource for StaticSource {
    fn describe(&self, _who: &Identity) -> String {
        format!("a fixed state ({}; no drain source configured)", self.0)
    }
    async fn read_state(&self, _who: &Identity) -> Result<Option<VersionState>, DrainError> {
        Ok(Some(self.0))
    }
    async fn write_readiness(
        &self,
        _who: &Identity,
        readiness: Readiness,
    ) -> Result<(), DrainError> {
        tracing::debug!(%readiness, "no drain source configured; readiness not recorded");
        Ok(())
    }
}

/// The state read from a file (the word, or `{"state": ...}`); readiness written to a file whose
/// path may contain `{instance}`. A missing state file means "no state".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileSource {
    /// The file holding the version's state.
    pub state: PathBuf,
    /// Where readiness is written (`{instance}` replaced); `None` writes nothing.
    pub readiness: Option<String>,
}

#[async_trait]
impl DrainSource for FileSource {
    fn describe(&self, _who: &Identity) -> String {
        format!("file {}", self.state.display())
    }

    async fn read_state(&self, _who: &Identity) -> Result<Option<VersionState>, DrainError> {
        let resource = self.state.display().to_string();
        match tokio::fs::read_to_string(&self.state).await {
            Ok(text) => parse_state(&text).map(Some).map_err(|message| {
                DrainError::new(
                    DrainErrorKind::Permanent,
                    "read drain state",
                    resource,
                    message,
                )
            }),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(DrainError::new(
                DrainErrorKind::Transient,
                "read drain state",
                resource,
                err.to_string(),
            )),
        }
    }

    async fn write_readiness(
        &self,
        who: &Identity,
        readiness: Readiness,
    ) -> Result<(), DrainError> {
        let Some(template) = &self.readiness else {
            return Ok(());
        };
        let path = PathBuf::from(template.replace(INSTANCE_PLACEHOLDER, who.instance.as_str()));
        write_atomically(&path, readiness.as_str())
            .await
            .map_err(|e| {
                DrainError::new(
                    DrainErrorKind::Transient,
                    "write readiness",
                    path.display().to_string(),
                    e.to_string(),
                )
            })
    }
}

/// Writes `text` to a temporary file beside `path` and renames it over `path`, so a reader never
/// sees half a value.
async fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    tokio::fs::write(&tmp, text).await?;
    tokio::fs::rename(&tmp, path).await
}

/// The state from `GET state_url` (200: the word or `{"state": ...}`; 404: no state);
/// readiness `PUT` as plain text to `readiness_url` (`{instance}` replaced).
#[derive(Clone, Debug)]
pub struct HttpSource {
    /// The URL answering the version's state.
    pub state_url: String,
    /// Where readiness is `PUT`; `None` writes nothing.
    pub readiness_url: Option<String>,
    /// Deadline of each call.
    pub timeout: Duration,
    client: HttpClient,
}

impl HttpSource {
    /// A source reading `state_url` and writing to `readiness_url`.
    pub fn new(state_url: String, readiness_url: Option<String>) -> Self {
        HttpSource {
            state_url,
            readiness_url,
            timeout: Duration::from_secs(3),
            client: HttpClient::new(),
        }
    }
}

fn http_failure(
    operation: &'static str,
    url: &str,
    status: flotilla_proxy::http::StatusCode,
) -> DrainError {
    let kind = if status.as_u16() == 429 {
        DrainErrorKind::Throttled
    } else if status.is_server_error() || status.as_u16() == 408 {
        DrainErrorKind::Transient
    } else {
        DrainErrorKind::Permanent
    };
    DrainError::new(kind, operation, url, format!("answered {status}"))
}

#[async_trait]
impl DrainSource for HttpSource {
    fn describe(&self, _who: &Identity) -> String {
        format!("URL {}", self.state_url)
    }

    async fn read_state(&self, _who: &Identity) -> Result<Option<VersionState>, DrainError> {
        const OP: &str = "read drain state";
        let fetched = self
            .client
            .get(&self.state_url, self.timeout)
            .await
            .map_err(|e| {
                let kind = match e {
                    crate::http::FetchError::BadUrl(_) => DrainErrorKind::Permanent,
                    _ => DrainErrorKind::Transient,
                };
                DrainError::new(kind, OP, &self.state_url, e.to_string())
            })?;
        if fetched.status.as_u16() == 404 {
            return Ok(None);
        }
        if !fetched.status.is_success() {
            return Err(http_failure(OP, &self.state_url, fetched.status));
        }
        parse_state(&String::from_utf8_lossy(&fetched.body))
            .map(Some)
            .map_err(|m| DrainError::new(DrainErrorKind::Permanent, OP, &self.state_url, m))
    }

    async fn write_readiness(
        &self,
        who: &Identity,
        readiness: Readiness,
    ) -> Result<(), DrainError> {
        const OP: &str = "write readiness";
        let Some(template) = &self.readiness_url else {
            return Ok(());
        };
        let url = template.replace(INSTANCE_PLACEHOLDER, who.instance.as_str());
        let fetched = self
            .client
            .put(&url, readiness.as_str(), self.timeout)
            .await
            .map_err(|e| DrainError::new(DrainErrorKind::Transient, OP, &url, e.to_string()))?;
        if fetched.status.is_success() {
            Ok(())
        } else {
            Err(http_failure(OP, &url, fetched.status))
        }
    }
}

/// The local drain source configured in the environment, if any:
/// `FLOTILLA_DRAIN_STATE_FILE` (with optional `FLOTILLA_READINESS_FILE`) or
/// `FLOTILLA_DRAIN_STATE_URL` (with optional `FLOTILLA_READINESS_URL`). `Ok(None)` when neither
/// is set: the caller then uses SSM on ECS, or [`StaticSource::active`].
pub fn local_source_from_env(
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Option<Arc<dyn DrainSource>>, crate::settings::SettingsError> {
    let get = |k: &str| lookup(k).filter(|v| !v.trim().is_empty());
    let file = get("FLOTILLA_DRAIN_STATE_FILE");
    let url = get("FLOTILLA_DRAIN_STATE_URL");
    let mut problems = Vec::new();
    let source: Option<Arc<dyn DrainSource>> = match (file, url) {
        (Some(_), Some(_)) => {
            problems.push(
                "both FLOTILLA_DRAIN_STATE_FILE and FLOTILLA_DRAIN_STATE_URL are set; keep one"
                    .to_owned(),
            );
            None
        }
        (Some(file), None) => {
            if get("FLOTILLA_READINESS_URL").is_some() {
                problems.push(
                    "FLOTILLA_READINESS_URL goes with FLOTILLA_DRAIN_STATE_URL; with a state \
                     file use FLOTILLA_READINESS_FILE"
                        .to_owned(),
                );
            }
            Some(Arc::new(FileSource {
                state: PathBuf::from(file),
                readiness: get("FLOTILLA_READINESS_FILE"),
            }))
        }
        (None, Some(url)) => {
            if get("FLOTILLA_READINESS_FILE").is_some() {
                problems.push(
                    "FLOTILLA_READINESS_FILE goes with FLOTILLA_DRAIN_STATE_FILE; with a state \
                     URL use FLOTILLA_READINESS_URL"
                        .to_owned(),
                );
            }
            for (key, value) in [
                ("FLOTILLA_DRAIN_STATE_URL", Some(url.clone())),
                ("FLOTILLA_READINESS_URL", get("FLOTILLA_READINESS_URL")),
            ] {
                if let Some(value) = value
                    && !value.starts_with("http://")
                {
                    problems.push(format!(
                        "{key} `{value}` must be a plain http:// URL (the agent speaks to \
                             a local endpoint)"
                    ));
                }
            }
            Some(Arc::new(HttpSource::new(
                url,
                get("FLOTILLA_READINESS_URL"),
            )))
        }
        (None, None) => None,
    };
    if problems.is_empty() {
        Ok(source)
    } else {
        Err(crate::settings::SettingsError { problems })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_core::{DeploymentId, DeploymentName, InstanceId};

    fn who() -> Identity {
        Identity {
            name: DeploymentName::new("shop").expect("valid"),
            id: DeploymentId::new("20261125-190633-k3x9").expect("valid"),
            instance: InstanceId::new("i1").expect("valid"),
        }
    }

    #[test]
    fn parse_state_table() {
        let check = |text: &str, expected: Result<VersionState, &str>| match (
            parse_state(text),
            expected,
        ) {
            (Ok(got), Ok(want)) => assert_eq!(got, want, "{text:?}"),
            (Err(e), Err(want)) => assert!(e.contains(want), "{text:?}: {e}"),
            (got, _) => panic!("{text:?}: unexpected {got:?}"),
        };
        check("draining\n", Ok(VersionState::Draining));
        check("  active ", Ok(VersionState::Active));
        check(r#"{"state":"retired","x":1}"#, Ok(VersionState::Retired));
        check("Draining", Err("unknown version state"));
        check(r#"{"status":"ok"}"#, Err("`state` field"));
        check("{oops", Err("unreadable JSON"));
    }

    #[tokio::test]
    async fn file_source_reads_state_and_writes_readiness() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state");
        let source = FileSource {
            state: state.clone(),
            readiness: Some(format!("{}/ready-{{instance}}", dir.path().display())),
        };
        assert_eq!(source.read_state(&who()).await, Ok(None));
        std::fs::write(&state, "draining\n").expect("write");
        assert_eq!(
            source.read_state(&who()).await,
            Ok(Some(VersionState::Draining))
        );
        std::fs::write(&state, "sideways").expect("write");
        let err = source.read_state(&who()).await.expect_err("bad value");
        assert_eq!(err.kind, DrainErrorKind::Permanent);
        source
            .write_readiness(&who(), Readiness::ShutdownReady)
            .await
            .expect("write");
        let written = std::fs::read_to_string(dir.path().join("ready-i1")).expect("read back");
        assert_eq!(written, "draining");
    }

    #[test]
    fn local_source_from_env_table() {
        let check = |pairs: &[(&str, &str)], some: bool, problem: Option<&str>| {
            let lookup = |k: &str| {
                pairs
                    .iter()
                    .find(|(key, _)| *key == k)
                    .map(|(_, v)| (*v).to_owned())
            };
            match (local_source_from_env(lookup), problem) {
                (Ok(source), None) => assert_eq!(source.is_some(), some, "{pairs:?}"),
                (Err(e), Some(want)) => {
                    assert!(e.to_string().contains(want), "{e}")
                }
                (Ok(_), Some(want)) => panic!("{pairs:?}: expected a problem with {want}"),
                (Err(e), None) => panic!("{pairs:?}: unexpected {e}"),
            }
        };
        check(&[], false, None);
        check(&[("FLOTILLA_DRAIN_STATE_FILE", "/tmp/s")], true, None);
        check(
            &[("FLOTILLA_DRAIN_STATE_URL", "http://127.0.0.1:1/s")],
            true,
            None,
        );
        check(
            &[
                ("FLOTILLA_DRAIN_STATE_FILE", "/tmp/s"),
                ("FLOTILLA_DRAIN_STATE_URL", "http://x/"),
            ],
            false,
            Some("keep one"),
        );
        check(
            &[("FLOTILLA_DRAIN_STATE_URL", "https://x/")],
            false,
            Some("plain http://"),
        );
        check(
            &[
                ("FLOTILLA_DRAIN_STATE_FILE", "/tmp/s"),
                ("FLOTILLA_READINESS_URL", "http://x/"),
            ],
            false,
            Some("FLOTILLA_READINESS_FILE"),
        );
    }
}
