//! Carrying a [`Plan`] out: creating or updating the stack, the reaper's two-step code
//! upload, the certificate's validation records, the cached outputs, the listener's default
//! put back, and continuing a failed rollback.

use std::path::PathBuf;

use flotilla_baseline::contract;
use flotilla_baseline::outputs::ValidationRecord;
use flotilla_core::routing::WeightedTarget;
use flotilla_core::{DeploymentId, VersionState};
use flotilla_engine::ports::ErrorKind;
use serde::Serialize;

use super::*;
use crate::error::port_error;
use crate::settings::Needs;

/// What `baseline up` did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UpReport {
    /// The stack was created by this run.
    pub created: bool,
    /// The stack changed in this run (false: nothing to change).
    pub changed: bool,
    /// The stack's status at the end.
    pub status: String,
    /// The outputs, as cached.
    pub outputs: flotilla_baseline::BaselineOutputs,
    /// Where they were cached.
    pub cache: PathBuf,
    /// The reaper's code key now in the stack.
    pub reaper_code_key: Option<String>,
    /// The active version whose default forward was put back on the listener after the update
    /// had reset it to the template's 503.
    pub default_restored: Option<DeploymentId>,
}

impl BaselineStack {
    /// Carries `plan` out: waits with progress, uploads the reaper's code, caches the outputs, and
    /// puts the active version's default forward back if the update reset it.
    pub async fn apply(
        &self,
        plan: &Plan,
        desired: &Desired,
        progress: &dyn StackProgress,
    ) -> Result<UpReport, StackError> {
        match plan {
            Plan::NoChange { stack_id } => {
                let stack = self.must_describe(stack_id).await?;
                let outputs = self.finish(&stack, desired).await?;
                Ok(UpReport {
                    created: false,
                    changed: false,
                    status: stack.status,
                    reaper_code_key: stack
                        .parameters
                        .get(contract::PARAM_REAPER_CODE_KEY)
                        .cloned(),
                    outputs,
                    cache: self.cache_path(),
                    default_restored: None,
                })
            }
            Plan::Create { .. } => {
                progress.notice(StackNotice::Step(format!(
                    "creating stack {} (without the reaper: its code goes into the stack's own \
                     bucket first)",
                    self.stack_name
                )));
                let out = self
                    .clients
                    .cfn
                    .create_stack()
                    .stack_name(&self.stack_name)
                    .template_body(&desired.body)
                    .set_parameters(Some(parameters(None)))
                    .set_capabilities(Some(capabilities()))
                    .set_tags(Some(self.tags()))
                    .send()
                    .await
                    .map_err(|e| port_error("create stack", &self.stack_name, e))?;
                let stack_id = out.stack_id().unwrap_or(&self.stack_name).to_owned();
                let stack = self
                    .wait_for(&stack_id, None, desired.requests_certificate, progress)
                    .await?;
                self.expect(&stack, "CREATE_COMPLETE", "up").await?;
                let stack = self.install_reaper(&stack, desired, progress).await?;
                let outputs = self.finish(&stack, desired).await?;
                let default_restored = self.restore_default(&outputs, progress).await?;
                Ok(UpReport {
                    created: true,
                    changed: true,
                    status: stack.status,
                    reaper_code_key: Some(desired.artefact.key()),
                    outputs,
                    cache: self.cache_path(),
                    default_restored,
                })
            }
            Plan::Update {
                stack_id,
                change_set_id,
                new_reaper_code,
                ..
            } => {
                let stack = self.must_describe(stack_id).await?;
                if *new_reaper_code {
                    let bucket = self.artefact_bucket(&stack).await?;
                    self.upload(&bucket, &desired.artefact, progress).await?;
                }
                let marker = self.newest_event(stack_id).await?;
                progress.notice(StackNotice::Step(format!(
                    "updating stack {}",
                    self.stack_name
                )));
                self.clients
                    .cfn
                    .execute_change_set()
                    .change_set_name(change_set_id)
                    .stack_name(stack_id)
                    .send()
                    .await
                    .map_err(|e| port_error("execute change set", change_set_id, e))?;
                let stack = self
                    .wait_for(stack_id, marker, desired.requests_certificate, progress)
                    .await?;
                self.expect(&stack, "UPDATE_COMPLETE", "up").await?;
                let outputs = self.finish(&stack, desired).await?;
                let default_restored = self.restore_default(&outputs, progress).await?;
                Ok(UpReport {
                    created: false,
                    changed: true,
                    status: stack.status.clone(),
                    reaper_code_key: stack
                        .parameters
                        .get(contract::PARAM_REAPER_CODE_KEY)
                        .cloned(),
                    outputs,
                    cache: self.cache_path(),
                    default_restored,
                })
            }
        }
    }

    /// The second step of a creation: the code zip into the stack's bucket, then the stack
    /// updated with its key (which adds the reaper Lambda and its schedule).
    pub(super) async fn install_reaper(
        &self,
        stack: &StackInfo,
        desired: &Desired,
        progress: &dyn StackProgress,
    ) -> Result<StackInfo, StackError> {
        let bucket = self.artefact_bucket(stack).await?;
        self.upload(&bucket, &desired.artefact, progress).await?;
        let marker = self.newest_event(&stack.stack_id).await?;
        progress.notice(StackNotice::Step(format!(
            "adding the reaper to stack {}",
            self.stack_name
        )));
        let updated = self
            .clients
            .cfn
            .update_stack()
            .stack_name(&stack.stack_id)
            .use_previous_template(true)
            .set_parameters(Some(parameters(Some(&desired.code()))))
            .set_capabilities(Some(capabilities()))
            .set_tags(Some(self.tags()))
            .send()
            .await;
        match updated {
            Ok(_) => {}
            // The key was already in (a creation resumed after this step).
            Err(e) if says(&e, "no updates are to be performed") => {
                return self.must_describe(&stack.stack_id).await;
            }
            Err(e) => return Err(port_error("update stack", &self.stack_name, e).into()),
        }
        let stack = self
            .wait_for(&stack.stack_id, marker, false, progress)
            .await?;
        self.expect(&stack, "UPDATE_COMPLETE", "up").await?;
        Ok(stack)
    }

    /// Resumes a rollback that failed (`UPDATE_ROLLBACK_FAILED`), skipping `skip` (logical ids
    /// that cannot be restored), and waits until the stack is updatable again.
    pub async fn continue_rollback(
        &self,
        skip: &[String],
        progress: &dyn StackProgress,
    ) -> Result<StackInfo, StackError> {
        let Some(stack) = self.describe().await? else {
            return Err(StackError::Refused {
                message: format!("there is no stack {} to roll back", self.stack_name),
                hint: "run `flotilla baseline up` without --continue-rollback".to_owned(),
            });
        };
        if stack.phase() != Phase::UpdateRollbackFailed {
            return Err(StackError::Refused {
                message: format!(
                    "stack {} is {}, not UPDATE_ROLLBACK_FAILED; there is no rollback to continue",
                    self.stack_name, stack.status
                ),
                hint: "run `flotilla baseline up` without --continue-rollback".to_owned(),
            });
        }
        let marker = self.newest_event(&stack.stack_id).await?;
        progress.notice(StackNotice::Step(format!(
            "continuing the rollback of stack {}{}",
            self.stack_name,
            if skip.is_empty() {
                String::new()
            } else {
                format!(", skipping {}", skip.join(", "))
            }
        )));
        self.clients
            .cfn
            .continue_update_rollback()
            .stack_name(&stack.stack_id)
            .set_resources_to_skip((!skip.is_empty()).then(|| skip.to_vec()))
            .send()
            .await
            .map_err(|e| port_error("continue update rollback", &self.stack_name, e))?;
        let stack = self
            .wait_for(&stack.stack_id, marker, false, progress)
            .await?;
        self.expect(&stack, "UPDATE_ROLLBACK_COMPLETE", "up")
            .await?;
        Ok(stack)
    }

    /// Reads the outputs, adds the certificate's validation records, and caches them.
    pub(super) async fn finish(
        &self,
        stack: &StackInfo,
        desired: &Desired,
    ) -> Result<flotilla_baseline::BaselineOutputs, StackError> {
        let mut outputs = flotilla_baseline::BaselineOutputs::from_stack_outputs(
            stack.outputs.clone(),
        )
        .map_err(|source| StackError::Outputs {
            stack: self.stack_name.clone(),
            source,
        })?;
        if desired.requests_certificate
            && let Some(arn) = outputs.certificate_arn.clone()
        {
            outputs.certificate_validation_records =
                self.validation_records(&arn).await?.unwrap_or_default();
        }
        self.write_cache(&outputs)?;
        Ok(outputs)
    }

    /// Uploads the reaper's zip unless an object is already under its (content-addressed) key.
    pub(super) async fn upload(
        &self,
        bucket: &str,
        artefact: &ReaperArtefact,
        progress: &dyn StackProgress,
    ) -> Result<(), StackError> {
        let key = artefact.key();
        let s3 = &self.clients.s3;
        match s3.head_object().bucket(bucket).key(&key).send().await {
            Ok(_) => {
                progress.notice(StackNotice::Step(format!(
                    "the reaper's code is already in s3://{bucket}/{key}"
                )));
                return Ok(());
            }
            Err(e) => {
                let err = port_error("look up reaper code", &key, e);
                if err.kind != ErrorKind::NotFound {
                    return Err(err.into());
                }
            }
        }
        progress.notice(StackNotice::Step(format!(
            "uploading the reaper's code ({:.1} MB zipped from {}) to s3://{bucket}/{key}",
            artefact.zip.len() as f64 / 1_048_576.0,
            artefact.source.display()
        )));
        s3.put_object()
            .bucket(bucket)
            .key(&key)
            .content_type("application/zip")
            .body(aws_sdk_s3::primitives::ByteStream::from(
                artefact.zip.clone(),
            ))
            .send()
            .await
            .map_err(|e| port_error("upload reaper code", &format!("s3://{bucket}/{key}"), e))?;
        Ok(())
    }

    /// The certificate's DNS validation records, once ACM has made all of them.
    pub async fn validation_records(
        &self,
        certificate_arn: &str,
    ) -> Result<Option<Vec<ValidationRecord>>, StackError> {
        let out = match self
            .clients
            .acm
            .describe_certificate()
            .certificate_arn(certificate_arn)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) => {
                let err = port_error("describe certificate", certificate_arn, e);
                if err.kind == ErrorKind::NotFound {
                    return Ok(None);
                }
                return Err(err.into());
            }
        };
        let Some(cert) = out.certificate() else {
            return Ok(None);
        };
        let mut records = Vec::new();
        for option in cert.domain_validation_options() {
            let Some(r) = option.resource_record() else {
                // ACM fills the records in a few seconds after the request.
                return Ok(None);
            };
            let record = ValidationRecord {
                domain: option.domain_name().to_owned(),
                name: r.name().to_owned(),
                record_type: r.r#type().as_str().to_owned(),
                value: r.value().to_owned(),
            };
            // Names on one certificate that share a record (a.example.com and *.a.example.com)
            // need it once.
            if !records
                .iter()
                .any(|x: &ValidationRecord| x.name == record.name)
            {
                records.push(record);
            }
        }
        Ok((!records.is_empty()).then_some(records))
    }

    /// After an update the routing listener's default may be the template's fixed 503 again
    /// (CloudFormation resets it when the listener resource changes). If a version is active,
    /// point fresh traffic back at it; returns that version.
    pub(super) async fn restore_default(
        &self,
        outputs: &flotilla_baseline::BaselineOutputs,
        progress: &dyn StackProgress,
    ) -> Result<Option<DeploymentId>, StackError> {
        let listener = &outputs.listener_arn;
        let out = self
            .clients
            .provider
            .elb
            .describe_listeners()
            .listener_arns(listener)
            .send()
            .await
            .map_err(|e| port_error("describe listener", listener, e))?;
        let forwards = out
            .listeners()
            .first()
            .map(|l| {
                l.default_actions().iter().any(|a| {
                    a.r#type()
                        == Some(&aws_sdk_elasticloadbalancingv2::types::ActionTypeEnum::Forward)
                })
            })
            .unwrap_or(false);
        if forwards {
            return Ok(None);
        }
        let ports = crate::connect_with(
            &self.settings,
            self.clients.provider.clone(),
            Needs::Operate,
        )?;
        let records = ports.state.list().await?;
        let Some(active) = records
            .into_iter()
            .find(|r| r.version.state == VersionState::Active)
            .map(|r| r.version.id)
        else {
            return Ok(None);
        };
        progress.notice(StackNotice::Step(format!(
            "the listener answers the template's 503 again; pointing fresh traffic back at the \
             active version {active}"
        )));
        ports
            .routing
            .set_default(&[WeightedTarget {
                id: active.clone(),
                weight: 100,
            }])
            .await?;
        Ok(Some(active))
    }
}
