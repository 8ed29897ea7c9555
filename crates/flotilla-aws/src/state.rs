//! The state store on SSM Parameter Store.
//!
//! Layout per version, all under `/apps/<name>/<id>/`:
//! - `state`: the plain lifecycle state (`active`, `draining`, ...), which the agent in each task
//!   polls; mirrored to the ECS service's `state` tag when the service exists;
//! - `record`: the whole `VersionRecord` as JSON (timestamps, image, instances, ready passes);
//! - `tasks/<task_id>`: what each task's agent reports (`healthy` or `draining`).
//!
//! When the baseline has a drain board (`crate::drain_board`, one S3 object per deployment name
//! that agents poll instead of `state`), every record written or deleted is then published to
//! it: after the SSM writes, so the board never runs ahead of the truth.
//!
//! The deploy lock is `/apps/<name>/lock`, a JSON `LockInfo` written with `Overwrite=false`, so
//! exactly one writer creates it. Reads are batched: one `GetParametersByPath` page returns ten
//! parameters, and there is never a call per task.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_ssm::types::{Parameter, ParameterType};
use flotilla_core::drain::Readiness;
use flotilla_core::lifecycle::VersionState;
use flotilla_core::{DeploymentId, InstanceId, Timestamp, names};
use flotilla_engine::ports::{
    ErrorKind, LockInfo, LockOutcome, PortError, StateStore, VersionRecord,
};

use crate::ctx::{Ctx, TAG_STATE};
use crate::error::{code_of, port_error};

/// How many times a lock request re-reads a lock that changed under it before giving up.
const LOCK_ROUNDS: usize = 5;

/// SSM's batch limit for `DeleteParameters`.
const DELETE_BATCH: usize = 10;

/// Records, readiness and the deploy lock in SSM Parameter Store.
pub struct SsmStateStore {
    ctx: Arc<Ctx>,
    /// The state last read or written per version, so an unchanged state is not rewritten (nor
    /// its tag). Refreshed by every `list` and `get`; ports live for one command.
    known_states: Mutex<HashMap<DeploymentId, VersionState>>,
}

impl SsmStateStore {
    pub(crate) fn new(ctx: Arc<Ctx>) -> Self {
        SsmStateStore {
            ctx,
            known_states: Mutex::new(HashMap::new()),
        }
    }

    fn record_parameter(&self, id: &DeploymentId) -> String {
        format!(
            "{}record",
            names::version_parameter_prefix(&self.ctx.name, id)
        )
    }

    fn lock_parameter(&self) -> String {
        names::lock_parameter(&self.ctx.name)
    }

    fn remember(&self, id: &DeploymentId, state: Option<VersionState>) {
        if let Ok(mut m) = self.known_states.lock() {
            match state {
                Some(s) => m.insert(id.clone(), s),
                None => m.remove(id),
            };
        }
    }

    fn known(&self, id: &DeploymentId) -> Option<VersionState> {
        self.known_states.lock().ok()?.get(id).copied()
    }

    /// Every parameter under `path`, following pages.
    async fn parameters_under(&self, path: &str) -> Result<Vec<Parameter>, PortError> {
        let mut out = Vec::new();
        let mut pages = self
            .ctx
            .clients
            .ssm
            .get_parameters_by_path()
            .path(path)
            .recursive(true)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| port_error("read parameters", path, e))?;
            out.extend(page.parameters().iter().cloned());
        }
        Ok(out)
    }

    fn parse_record(&self, name: &str, value: &str) -> Result<VersionRecord, PortError> {
        serde_json::from_str(value).map_err(|e| {
            PortError::new(
                ErrorKind::Invalid,
                "read version record",
                name,
                format!(
                    "the parameter does not hold a version record ({e}); delete it with \
                     `aws ssm delete-parameter --name {name}` if it is not flotilla's"
                ),
            )
        })
    }

    async fn put_parameter(&self, name: &str, value: &str) -> Result<(), PortError> {
        self.ctx
            .clients
            .ssm
            .put_parameter()
            .name(name)
            .value(value)
            .r#type(ParameterType::String)
            .overwrite(true)
            .send()
            .await
            .map_err(|e| port_error("write parameter", name, e))?;
        Ok(())
    }

    /// Publishes `id`'s state to the drain board, if the baseline has one.
    async fn publish(
        &self,
        id: &DeploymentId,
        state: Option<VersionState>,
    ) -> Result<(), PortError> {
        let Some(bucket) = &self.ctx.baseline.drain_bucket else {
            return Ok(());
        };
        crate::drain_board::publish(
            &self.ctx.clients.s3,
            &self.ctx.clients.ssm,
            bucket,
            &self.ctx.name,
            id,
            state,
        )
        .await
        .map(|_| ())
    }

    /// Read-repair of the drain board after a listing: a publish that a crash cut short reaches
    /// the agents at the next command or reaper pass. Best effort: a listing must not fail for
    /// it (a read-only caller may not write the board), so a failure is only logged.
    async fn repair_board(&self, records: &[VersionRecord]) {
        let Some(bucket) = &self.ctx.baseline.drain_bucket else {
            return;
        };
        let recorded = records
            .iter()
            .map(|r| (r.version.id.clone(), r.version.state))
            .collect();
        match crate::drain_board::repair(
            &self.ctx.clients.s3,
            &self.ctx.clients.ssm,
            bucket,
            &self.ctx.name,
            &recorded,
        )
        .await
        {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                versions = n,
                "the drain board lagged SSM (an interrupted publish?); brought it up to date"
            ),
            Err(err) => tracing::warn!(
                error = %err,
                "could not check the drain board against the records; agents may see a state \
                 late until a command or reaper pass can"
            ),
        }
    }

    /// Mirrors `state` to the service's tag; a service that does not exist yet is fine.
    async fn tag_service(&self, id: &DeploymentId, state: VersionState) -> Result<(), PortError> {
        let Some(arn) = self.ctx.service_arn(id) else {
            tracing::warn!(%id, "account unknown; service state tag not written");
            return Ok(());
        };
        let tag = aws_sdk_ecs::types::Tag::builder()
            .key(TAG_STATE)
            .value(state.as_str())
            .build();
        match self
            .ctx
            .clients
            .ecs
            .tag_resource()
            .resource_arn(&arn)
            .tags(tag)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                let code = code_of(&e).map(str::to_owned);
                let err = port_error("tag service", &arn, e);
                // ECS answers a missing service with ServiceNotFoundException, or (for some
                // ARNs) InvalidParameterException "... could not be found".
                let text = err.message.to_ascii_lowercase();
                let missing = err.kind == ErrorKind::NotFound
                    || (code.as_deref() == Some("InvalidParameterException")
                        && (text.contains("not found")
                            || text.contains("not be found")
                            || text.contains("does not exist")));
                if missing { Ok(()) } else { Err(err) }
            }
        }
    }

    /// The lock parameter's value and version, if it exists.
    async fn read_lock(&self) -> Result<Option<(String, i64)>, PortError> {
        let name = self.lock_parameter();
        match self
            .ctx
            .clients
            .ssm
            .get_parameter()
            .name(&name)
            .send()
            .await
        {
            Ok(out) => Ok(out
                .parameter()
                .and_then(|p| Some((p.value()?.to_owned(), p.version())))),
            Err(e) => {
                let err = port_error("read lock", &name, e);
                if err.kind == ErrorKind::NotFound {
                    Ok(None)
                } else {
                    Err(err)
                }
            }
        }
    }

    async fn delete_lock(&self) -> Result<(), PortError> {
        let name = self.lock_parameter();
        match self
            .ctx
            .clients
            .ssm
            .delete_parameter()
            .name(&name)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                let err = port_error("delete lock", &name, e);
                if err.kind == ErrorKind::NotFound {
                    Ok(())
                } else {
                    Err(err)
                }
            }
        }
    }

    fn parse_lock(&self, value: &str) -> Result<LockInfo, PortError> {
        serde_json::from_str(value).map_err(|e| {
            PortError::new(
                ErrorKind::Invalid,
                "read lock",
                self.lock_parameter(),
                format!("the lock holds an unreadable value ({e}); run again with --break-lock"),
            )
        })
    }

    fn readiness_of(
        &self,
        params: &[Parameter],
        wanted: &BTreeSet<&DeploymentId>,
    ) -> BTreeMap<DeploymentId, BTreeMap<InstanceId, Readiness>> {
        let prefix = names::deployment_parameter_prefix(&self.ctx.name);
        let mut out: BTreeMap<DeploymentId, BTreeMap<InstanceId, Readiness>> = BTreeMap::new();
        for p in params {
            let (Some(name), Some(value)) = (p.name(), p.value()) else {
                continue;
            };
            let Some(rest) = name.strip_prefix(&prefix) else {
                continue;
            };
            let mut parts = rest.splitn(3, '/');
            let (Some(id), Some("tasks"), Some(task)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let (Ok(id), Ok(task)) = (DeploymentId::new(id), InstanceId::new(task)) else {
                continue;
            };
            if !wanted.contains(&id) {
                continue;
            }
            match value.parse::<Readiness>() {
                Ok(r) => {
                    out.entry(id).or_default().insert(task, r);
                }
                Err(e) => tracing::warn!(parameter = name, "ignoring readiness: {e}"),
            }
        }
        out
    }
}

#[async_trait]
impl StateStore for SsmStateStore {
    async fn list(&self) -> Result<Vec<VersionRecord>, PortError> {
        let prefix = names::deployment_parameter_prefix(&self.ctx.name);
        let params = self.parameters_under(&prefix).await?;
        let mut records = Vec::new();
        for p in &params {
            let (Some(name), Some(value)) = (p.name(), p.value()) else {
                continue;
            };
            let Some(rest) = name.strip_prefix(&prefix) else {
                continue;
            };
            let Some((id, "record")) = rest.split_once('/') else {
                continue;
            };
            if DeploymentId::new(id).is_err() {
                continue;
            }
            let record = self.parse_record(name, value)?;
            self.remember(&record.version.id, Some(record.version.state));
            records.push(record);
        }
        self.repair_board(&records).await;
        records.sort_by(|a, b| {
            (a.version.created_at, &a.version.id).cmp(&(b.version.created_at, &b.version.id))
        });
        Ok(records)
    }

    async fn get(&self, id: &DeploymentId) -> Result<Option<VersionRecord>, PortError> {
        let name = self.record_parameter(id);
        match self
            .ctx
            .clients
            .ssm
            .get_parameter()
            .name(&name)
            .send()
            .await
        {
            Ok(out) => match out.parameter().and_then(|p| p.value()) {
                Some(value) => {
                    let record = self.parse_record(&name, value)?;
                    self.remember(id, Some(record.version.state));
                    Ok(Some(record))
                }
                None => Ok(None),
            },
            Err(e) => {
                let err = port_error("read version record", &name, e);
                if err.kind == ErrorKind::NotFound {
                    self.remember(id, None);
                    Ok(None)
                } else {
                    Err(err)
                }
            }
        }
    }

    async fn put(&self, record: &VersionRecord) -> Result<(), PortError> {
        let id = &record.version.id;
        let state = record.version.state;
        let json = serde_json::to_string(record).map_err(|e| {
            PortError::new(
                ErrorKind::Invalid,
                "encode version record",
                id.as_str(),
                e.to_string(),
            )
        })?;
        // Checked before anything is written: a record SSM refuses would leave the state and the
        // tag mirroring a record that does not exist.
        if let Err(why) = record_fits(&json) {
            return Err(PortError::new(
                ErrorKind::Invalid,
                "write version record",
                id.as_str(),
                why,
            ));
        }
        // The record first: it is the source of truth; `state` and the tag mirror it.
        self.put_parameter(&self.record_parameter(id), &json)
            .await?;
        if self.known(id) != Some(state) {
            self.put_parameter(&names::state_parameter(&self.ctx.name, id), state.as_str())
                .await?;
            // A deploying version has no service yet (the record comes first, and the service
            // is created with `state=deploying`); every later state is mirrored.
            if state != VersionState::Deploying {
                self.tag_service(id, state).await?;
                crate::scaling::follow_state(&self.ctx, id, state).await?;
            }
        }
        self.remember(id, Some(state));
        // Every put, not only a changed state: a run interrupted between the SSM write and the
        // publish is healed by the next write of the record (one GET when the board agrees).
        self.publish(id, Some(state)).await
    }

    async fn delete(&self, id: &DeploymentId) -> Result<(), PortError> {
        let prefix = names::version_parameter_prefix(&self.ctx.name, id);
        let mut all: BTreeSet<String> = self
            .parameters_under(&prefix)
            .await?
            .iter()
            .filter_map(|p| p.name().map(str::to_owned))
            .collect();
        all.insert(self.record_parameter(id));
        all.insert(names::state_parameter(&self.ctx.name, id));
        // The record goes in the last batch, so an interrupted delete still has a record leading
        // back here (with up to ten parameters, which is usual, it is all one call).
        let record = self.record_parameter(id);
        all.remove(&record);
        let mut all: Vec<String> = all.into_iter().collect();
        all.push(record);
        for batch in all.chunks(DELETE_BATCH) {
            self.ctx
                .clients
                .ssm
                .delete_parameters()
                .set_names(Some(batch.to_vec()))
                .send()
                .await
                .map_err(|e| port_error("delete parameters", &prefix, e))?;
        }
        self.remember(id, None);
        // After the parameters: the board's entry goes once SSM has none.
        self.publish(id, None).await
    }

    async fn readiness(
        &self,
        ids: &[DeploymentId],
    ) -> Result<BTreeMap<DeploymentId, BTreeMap<InstanceId, Readiness>>, PortError> {
        let wanted: BTreeSet<&DeploymentId> = ids.iter().collect();
        let params = match ids {
            [] => return Ok(BTreeMap::new()),
            // One version: read just its tasks.
            [id] => {
                self.parameters_under(&names::tasks_parameter_prefix(&self.ctx.name, id))
                    .await?
            }
            // Several: one pass over the deployment name's parameters beats a pass per version.
            _ => {
                self.parameters_under(&names::deployment_parameter_prefix(&self.ctx.name))
                    .await?
            }
        };
        Ok(self.readiness_of(&params, &wanted))
    }

    /// Takes the lock with `PutParameter(Overwrite=false)`, so of two racing writers exactly one
    /// succeeds. A held lock that has expired (or any lock, with `force`) is taken over by
    /// deleting it and creating ours: the lock is re-read just before the delete and left alone
    /// if it changed since we judged it.
    ///
    /// Residual race: SSM has no compare-and-delete, so if another process takes the expired lock
    /// over between our re-read and our delete (a window of one API call), we delete its fresh
    /// lock and both proceed. It needs two takers of the same expired lock within milliseconds.
    async fn acquire_lock(
        &self,
        owner: &str,
        now: Timestamp,
        ttl: Duration,
        force: bool,
    ) -> Result<LockOutcome, PortError> {
        let name = self.lock_parameter();
        let mine = LockInfo {
            owner: owner.to_owned(),
            acquired_at: now,
            expires_at: now.plus(ttl),
        };
        let encode = |info: &LockInfo| {
            serde_json::to_string(info).map_err(|e| {
                PortError::new(ErrorKind::Invalid, "encode lock", &name, e.to_string())
            })
        };
        let value = encode(&mine)?;
        for _ in 0..LOCK_ROUNDS {
            let created = self
                .ctx
                .clients
                .ssm
                .put_parameter()
                .name(&name)
                .value(&value)
                .r#type(ParameterType::String)
                .overwrite(false)
                .send()
                .await;
            match created {
                Ok(_) => return Ok(LockOutcome::Acquired),
                Err(e) if code_of(&e) == Some("ParameterAlreadyExists") => {}
                Err(e) => return Err(port_error("take lock", &name, e)),
            }
            let Some((current, version)) = self.read_lock().await? else {
                continue; // released in between: try to create it again
            };
            let held = self.parse_lock(&current);
            match &held {
                Ok(info) if info.owner == owner => {
                    // Ours already: renew, keeping when it was first taken.
                    let renewed = LockInfo {
                        acquired_at: info.acquired_at,
                        ..mine.clone()
                    };
                    self.put_parameter(&name, &encode(&renewed)?).await?;
                    return Ok(LockOutcome::Acquired);
                }
                Ok(info) if !force && now < info.expires_at => {
                    return Ok(LockOutcome::Held(info.clone()));
                }
                Err(e) if !force => return Err(e.clone()),
                _ => {}
            }
            // Expired, unreadable or forced: take it over if it is still what we judged.
            match self.read_lock().await? {
                Some((_, again)) if again == version => self.delete_lock().await?,
                _ => continue,
            }
        }
        match self.read_lock().await? {
            Some((current, _)) => Ok(LockOutcome::Held(self.parse_lock(&current)?)),
            None => Err(PortError::new(
                ErrorKind::Conflict,
                "take lock",
                &name,
                "the lock kept changing hands; run the command again",
            )),
        }
    }

    /// Deletes the lock if `owner` holds it. If our lock expired and another process took it
    /// over between the read and the delete, its lock is deleted: holders release well before
    /// the expiry, which makes this a crash-only window.
    async fn release_lock(&self, owner: &str) -> Result<(), PortError> {
        let Some((current, _)) = self.read_lock().await? else {
            return Ok(());
        };
        match self.parse_lock(&current) {
            Ok(info) if info.owner == owner => self.delete_lock().await,
            _ => Ok(()),
        }
    }

    async fn lock_info(&self) -> Result<Option<LockInfo>, PortError> {
        match self.read_lock().await? {
            Some((current, _)) => self.parse_lock(&current).map(Some),
            None => Ok(None),
        }
    }
}

/// The largest value of a standard SSM parameter, in bytes.
pub const SSM_STANDARD_VALUE_LIMIT: usize = 4096;

/// Whether a record's JSON fits in a standard SSM parameter; if not, why, and what to do. A
/// canary's record is the largest (its plan, marks and last judgement ride along): under a
/// kilobyte with a handful of steps.
pub fn record_fits(json: &str) -> Result<(), String> {
    if json.len() <= SSM_STANDARD_VALUE_LIMIT {
        return Ok(());
    }
    Err(format!(
        "the version record is {} bytes, over the {SSM_STANDARD_VALUE_LIMIT} bytes of a standard \
         SSM parameter, so nothing was written; a canary's record grows with its plan: use fewer \
         `canary.steps`",
        json.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_core::canary::{
        CanaryPlan, CanaryState, Counters, Failure, Outcome, Thresholds, Verdict, WindowStats,
    };
    use flotilla_core::{Timestamp, Version};
    use flotilla_engine::ports::{CanaryMarks, CanaryRecord, ImageRef, Judgement};
    use std::time::Duration;

    #[test]
    fn the_largest_canary_record_fits_in_a_standard_parameter() {
        let at = Timestamp::from_secs(1_796_000_000);
        let id = DeploymentId::generate(at, u64::MAX);
        let baseline = DeploymentId::generate(at, 1);
        let figures = WindowStats {
            requests: u64::MAX,
            errors: u64::MAX,
            p99: Some(Duration::from_secs(3600)),
        };
        let failures = vec![
            Failure::ErrorRatio {
                canary: 0.123_456_789_012_345_67,
                limit: 0.05,
            },
            Failure::ErrorRatioIncrease {
                canary: 0.123_456_789_012_345_67,
                baseline: 0.012_345_678_901_234_567,
                limit: 0.01,
            },
            Failure::Latency {
                canary_ms: 123_456.789_012_345_67,
                baseline_ms: 1_234.567_890_123_456_7,
                limit: 1.5,
            },
        ];
        // Every step a plan may have, the longest figures and every failure at once.
        let canary = CanaryRecord {
            plan: CanaryPlan {
                steps: (1..=99).collect(),
                pause: Duration::from_secs(86_400),
                thresholds: Thresholds::default(),
                max_extensions: 1000,
            },
            baseline,
            state: CanaryState {
                step: 98,
                since: at,
                extensions: 1000,
            },
            percent: 99,
            marks: Some(CanaryMarks {
                canary: Counters::default(),
                baseline: Counters::default(),
                at: Some(at),
            }),
            last: Some(Judgement {
                at,
                step: 98,
                canary: figures,
                baseline: figures,
                verdict: Verdict::Fail {
                    failures: failures.clone(),
                },
            }),
            outcome: Some(Outcome::RolledBack {
                failures,
                by_hand: false,
            }),
            settled: true,
        };
        let record = VersionRecord {
            version: Version::new(id, at),
            image: Some(ImageRef(format!(
                "123456789012.dkr.ecr.eu-west-1.amazonaws.com/flotilla/prod@sha256:{}",
                "f".repeat(64)
            ))),
            instances: 1000,
            ready_passes: 1000,
            canary: Some(Box::new(canary)),
        };
        let json = serde_json::to_string(&record).expect("serialises");
        assert!(json.len() < SSM_STANDARD_VALUE_LIMIT / 2, "{}", json.len());
        assert_eq!(record_fits(&json), Ok(()));
        let err = record_fits(&"x".repeat(SSM_STANDARD_VALUE_LIMIT + 1)).expect_err("too long");
        assert!(err.contains("4097 bytes"), "{err}");
    }
}
