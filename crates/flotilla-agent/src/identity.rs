//! Who this agent is: deployment name, version id and instance id, and how the instance id is
//! found (ECS task metadata, else an explicit or local fallback).
//!
//! On ECS the instance id must be the task id: the reaper lists the version's tasks and looks
//! for `/apps/<name>/<id>/tasks/<task_id>`. The task id is the last path segment of `TaskARN` in
//! `GET ${ECS_CONTAINER_METADATA_URI_V4}/task`. Off ECS, `FLOTILLA_INSTANCE` (set by the host
//! supervisor) wins, then the host name, then a generated id.

use std::time::Duration;

use flotilla_core::{DeploymentId, DeploymentName, InstanceId};
use serde::Deserialize;

use crate::http::HttpClient;

/// The environment variable ECS sets to its task metadata endpoint (version 4).
pub const ECS_METADATA_ENV: &str = "ECS_CONTAINER_METADATA_URI_V4";

/// How often the metadata endpoint is tried before the agent gives up.
const METADATA_ATTEMPTS: u32 = 5;

/// One running agent: which version of which deployment, and which instance of it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Identity {
    /// The deployment name.
    pub name: DeploymentName,
    /// The version.
    pub id: DeploymentId,
    /// This instance (the ECS task id on AWS).
    pub instance: InstanceId,
}

/// Where the instance id came from, for the start-up log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstanceSource {
    /// Given explicitly (`FLOTILLA_INSTANCE` or the settings).
    Explicit,
    /// The ECS task metadata endpoint.
    EcsMetadata,
    /// The machine's host name.
    Hostname,
    /// Generated from the process id and randomness.
    Generated,
}

/// The instance id could not be found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The task metadata could not be read or understood.
    #[error(
        "cannot learn the ECS task id from {url}: {message}; the reaper needs it to see this \
         task's readiness (set FLOTILLA_INSTANCE to override)"
    )]
    Metadata {
        /// The URL read.
        url: String,
        /// What went wrong.
        message: String,
    },
}

#[derive(Deserialize)]
struct TaskMetadata {
    #[serde(rename = "TaskARN")]
    task_arn: String,
}

/// The task id in an ECS task metadata document: the last path segment of its `TaskARN`
/// (`arn:aws:ecs:<region>:<account>:task/<cluster>/<task id>`, or the older form without the
/// cluster).
pub fn task_id_from_metadata(json: &str) -> Result<InstanceId, String> {
    let meta: TaskMetadata =
        serde_json::from_str(json).map_err(|e| format!("not task metadata JSON ({e})"))?;
    let arn = meta.task_arn;
    let (_, resource) = arn
        .split_once(":task/")
        .ok_or_else(|| format!("TaskARN `{arn}` is not a task ARN"))?;
    let task = resource.rsplit('/').next().unwrap_or(resource);
    InstanceId::new(task).map_err(|e| format!("TaskARN `{arn}`: {e}"))
}

/// An instance id made from a host name: characters an instance id cannot hold become `-`, and
/// the result is cut to the limit. `None` if nothing usable is left.
pub fn instance_from_hostname(hostname: &str) -> Option<InstanceId> {
    let cleaned: String = hostname
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(flotilla_core::ids::MAX_INSTANCE_LEN)
        .collect();
    let trimmed = cleaned.trim_matches('-');
    if trimmed.is_empty() {
        return None;
    }
    InstanceId::new(trimmed).ok()
}

/// A generated instance id, `local-<pid>-<4 hex>`.
pub fn generated_instance(pid: u32, entropy: u16) -> InstanceId {
    InstanceId::new(&format!("local-{pid}-{entropy:04x}")).expect("always a valid instance id")
}

/// Finds this instance's id: `explicit`, else ECS task metadata (when `lookup` has
/// [`ECS_METADATA_ENV`]), else the host name, else a generated id.
///
/// On ECS a metadata failure is an error after a few attempts: guessing would make the task
/// invisible to the reaper.
pub async fn discover_instance(
    explicit: Option<InstanceId>,
    lookup: impl Fn(&str) -> Option<String>,
    client: &HttpClient,
) -> Result<(InstanceId, InstanceSource), IdentityError> {
    if let Some(instance) = explicit {
        return Ok((instance, InstanceSource::Explicit));
    }
    if let Some(base) = lookup(ECS_METADATA_ENV).filter(|v| !v.is_empty()) {
        let url = format!("{}/task", base.trim_end_matches('/'));
        let mut last = String::new();
        for attempt in 0..METADATA_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
            }
            match client.get(&url, Duration::from_secs(2)).await {
                Ok(fetched) if fetched.status.is_success() => {
                    let text = String::from_utf8_lossy(&fetched.body);
                    return task_id_from_metadata(&text)
                        .map(|id| (id, InstanceSource::EcsMetadata))
                        .map_err(|message| IdentityError::Metadata {
                            url: url.clone(),
                            message,
                        });
                }
                Ok(fetched) => last = format!("answered {}", fetched.status),
                Err(err) => last = err.to_string(),
            }
            tracing::debug!(%url, attempt, error = %last, "task metadata not available yet");
        }
        return Err(IdentityError::Metadata { url, message: last });
    }
    let hostname = lookup("HOSTNAME").or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|s| s.trim().to_owned())
    });
    if let Some(instance) = hostname.as_deref().and_then(instance_from_hostname) {
        return Ok((instance, InstanceSource::Hostname));
    }
    Ok((
        generated_instance(std::process::id(), fastrand::u16(..)),
        InstanceSource::Generated,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids_from_metadata_table() {
        let check = |json: &str, expected: Result<&str, &str>| {
            let got = task_id_from_metadata(json);
            match (got, expected) {
                (Ok(id), Ok(want)) => assert_eq!(id.as_str(), want, "{json}"),
                (Err(e), Err(want)) => assert!(e.contains(want), "{e} should mention {want}"),
                (got, _) => panic!("{json}: unexpected {got:?}"),
            }
        };
        check(
            r#"{"Cluster":"default","TaskARN":"arn:aws:ecs:us-west-2:111122223333:task/default/158d1c8083dd49d6b527399fd6414f5c","Family":"x"}"#,
            Ok("158d1c8083dd49d6b527399fd6414f5c"),
        );
        check(
            r#"{"TaskARN":"arn:aws:ecs:us-east-1:012345678910:task/9781c248-0edd-4cdb-9a93-f63cb662a5d3"}"#,
            Ok("9781c248-0edd-4cdb-9a93-f63cb662a5d3"),
        );
        check(r#"{"Cluster":"x"}"#, Err("not task metadata"));
        check("<html>", Err("not task metadata"));
        check(
            r#"{"TaskARN":"arn:aws:ecs:us-east-1:1:service/x/y"}"#,
            Err("not a task ARN"),
        );
        check(
            r#"{"TaskARN":"arn:aws:ecs:us-east-1:1:task/"}"#,
            Err("TaskARN"),
        );
    }

    #[test]
    fn hostname_fallback_table() {
        let check = |host: &str, expected: Option<&str>| {
            assert_eq!(
                instance_from_hostname(host)
                    .as_ref()
                    .map(InstanceId::as_str),
                expected,
                "{host:?}"
            );
        };
        check("web-1", Some("web-1"));
        check(
            "ip-10-0-1-23.ec2.internal\n",
            Some("ip-10-0-1-23.ec2.internal"),
        );
        check("my host!", Some("my-host"));
        check("", None);
        check("!!!", None);
        let long = "h".repeat(100);
        assert_eq!(
            instance_from_hostname(&long).map(|i| i.as_str().len()),
            Some(flotilla_core::ids::MAX_INSTANCE_LEN)
        );
        assert_eq!(generated_instance(42, 0xbeef).as_str(), "local-42-beef");
    }

    #[tokio::test]
    async fn explicit_instance_wins_and_no_metadata_falls_back() {
        let client = HttpClient::new();
        let explicit = InstanceId::new("i1").expect("valid");
        let (id, source) = discover_instance(Some(explicit.clone()), |_| None, &client)
            .await
            .expect("explicit");
        assert_eq!((id, source), (explicit, InstanceSource::Explicit));
        let (id, source) = discover_instance(
            None,
            |k| (k == "HOSTNAME").then(|| "box-7".to_owned()),
            &client,
        )
        .await
        .expect("hostname");
        assert_eq!((id.as_str(), source), ("box-7", InstanceSource::Hostname));
    }
}
