//! The versions of a deployment name that still have an ECS service or an SSM state, which
//! `baseline down` refuses to cut off.
//!
//! This is not `EcsCompute::list` plus `SsmStateStore::list` (`compute.rs`, `state.rs`), on
//! purpose; their semantics differ from what `down` must refuse on:
//! - the compute port lists only services named `<name>-<DeploymentId>`; here every service of
//!   the cluster tagged with the deployment name counts, whatever its name, and its desired and
//!   running counts are shown;
//! - the state port reads each version's `record` parameter, fails on one that does not parse,
//!   and repairs the drain board (an S3 write); here a version's `state` parameter is enough,
//!   read without writing anything, so a half-deleted version still blocks `down`;
//! - both ports need the provider opened over the cached outputs; this works without a cache,
//!   on the cluster named by the overrides, the cache or the default name.

use std::collections::BTreeMap;

use flotilla_core::DeploymentId;
use flotilla_engine::ports::ErrorKind;
use serde::Serialize;

use super::*;
use crate::error::port_error;

/// A version that still has something in AWS.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RunningVersion {
    /// The version (or the service name when it is not a flotilla id).
    pub id: String,
    /// Its ECS service, with desired and running counts.
    pub service: Option<String>,
    /// Its state in SSM.
    pub state: Option<String>,
}

impl BaselineStack {
    /// The versions of this deployment name that still have a service or a record, which
    /// `baseline down` refuses to cut off.
    pub async fn running_versions(&self) -> Result<Vec<RunningVersion>, StackError> {
        let name = &self.settings.name;
        let cluster = self
            .settings
            .baseline_overrides
            .cluster
            .clone()
            .or_else(|| self.cached().ok().flatten().map(|c| c.cluster_name))
            .unwrap_or_else(|| flotilla_baseline::names::cluster_name(name));
        let mut found: BTreeMap<String, RunningVersion> = BTreeMap::new();
        let ecs = &self.clients.provider.ecs;
        let mut arns = Vec::new();
        let mut token: Option<String> = None;
        loop {
            match ecs
                .list_services()
                .cluster(&cluster)
                .set_next_token(token.clone())
                .send()
                .await
            {
                Ok(out) => {
                    arns.extend(out.service_arns().iter().cloned());
                    token = out.next_token().map(str::to_owned);
                }
                Err(e) => {
                    let err = port_error("list services", &cluster, e);
                    if err.kind == ErrorKind::NotFound {
                        break;
                    }
                    return Err(err.into());
                }
            }
            if token.is_none() {
                break;
            }
        }
        for chunk in arns.chunks(10) {
            let out = ecs
                .describe_services()
                .cluster(&cluster)
                .set_services(Some(chunk.to_vec()))
                .include(aws_sdk_ecs::types::ServiceField::Tags)
                .send()
                .await
                .map_err(|e| port_error("describe services", &cluster, e))?;
            for s in out.services() {
                if s.status() == Some("INACTIVE") {
                    continue;
                }
                let tag = |key: &str| {
                    s.tags()
                        .iter()
                        .find(|t| t.key() == Some(key))
                        .and_then(|t| t.value())
                };
                if tag(crate::ctx::TAG_NAME) != Some(name.as_str()) {
                    continue;
                }
                let service = s.service_name().unwrap_or_default();
                let id = tag(crate::ctx::TAG_ID).unwrap_or(service).to_owned();
                let entry = found.entry(id.clone()).or_insert(RunningVersion {
                    id,
                    service: None,
                    state: None,
                });
                entry.service = Some(format!(
                    "{service} ({} desired, {} running)",
                    s.desired_count(),
                    s.running_count()
                ));
            }
        }
        let prefix = format!("/apps/{name}/");
        let mut token: Option<String> = None;
        loop {
            let out = self
                .clients
                .provider
                .ssm
                .get_parameters_by_path()
                .path(&prefix)
                .recursive(true)
                .set_next_token(token.clone())
                .send()
                .await
                .map_err(|e| port_error("list parameters", &prefix, e))?;
            for p in out.parameters() {
                let Some(rest) = p.name().and_then(|n| n.strip_prefix(&prefix)) else {
                    continue;
                };
                let Some(id) = rest.strip_suffix("/state") else {
                    continue;
                };
                if DeploymentId::new(id).is_err() {
                    continue;
                }
                let entry = found.entry(id.to_owned()).or_insert(RunningVersion {
                    id: id.to_owned(),
                    service: None,
                    state: None,
                });
                entry.state = p.value().map(str::to_owned);
            }
            token = out.next_token().map(str::to_owned);
            if token.is_none() {
                break;
            }
        }
        Ok(found.into_values().collect())
    }
}
