//! Deleting the stack: emptying its artefact bucket, deleting with what to retain, and
//! removing the cached outputs.

use std::path::PathBuf;

use flotilla_engine::ports::{ErrorKind, PortError};
use serde::Serialize;

use super::*;
use crate::error::port_error;

/// What `baseline down` did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DownReport {
    /// A stack was deleted (false: there was none).
    pub deleted: bool,
    /// Object versions removed from the artefact bucket.
    pub objects_removed: usize,
    /// The cache file removed, if there was one.
    pub cache_removed: Option<PathBuf>,
}

impl BaselineStack {
    /// Deletes the stack: empties the artefact bucket, deletes (retaining `retain`, logical ids
    /// of a `DELETE_FAILED` stack), waits, and removes the cached outputs. Checking for running
    /// versions is the caller's ([`BaselineStack::running_versions`]).
    pub async fn down(
        &self,
        retain: &[String],
        progress: &dyn StackProgress,
    ) -> Result<DownReport, StackError> {
        let mut stack = self.describe().await?;
        if let Some(s) = &stack
            && s.phase() == Phase::Busy
        {
            progress.notice(StackNotice::Step(format!(
                "stack {} is {}; waiting for that to finish first",
                self.stack_name, s.status
            )));
            stack = self.wait_settled(&s.stack_id, progress).await?;
        }
        let Some(stack) = stack else {
            let cache_removed = self.remove_cache()?;
            return Ok(DownReport {
                deleted: false,
                objects_removed: 0,
                cache_removed,
            });
        };
        if !retain.is_empty() && stack.phase() != Phase::DeleteFailed {
            return Err(StackError::Refused {
                message: format!(
                    "--retain applies to a stack whose deletion failed, and stack {} is {}",
                    self.stack_name, stack.status
                ),
                hint: "run `flotilla baseline down` without --retain".to_owned(),
            });
        }
        let objects_removed = match self.artefact_bucket(&stack).await {
            Ok(bucket) => self.empty_bucket(&bucket, progress).await?,
            // No bucket (an unfinished creation): nothing to empty.
            Err(StackError::Aws(e)) if e.kind == ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        let marker = self.newest_event(&stack.stack_id).await?;
        progress.notice(StackNotice::Step(format!(
            "deleting stack {}",
            self.stack_name
        )));
        self.clients
            .cfn
            .delete_stack()
            .stack_name(&stack.stack_id)
            .set_retain_resources((!retain.is_empty()).then(|| retain.to_vec()))
            .send()
            .await
            .map_err(|e| port_error("delete stack", &self.stack_name, e))?;
        let last = self
            .wait_for(&stack.stack_id, marker, false, progress)
            .await?;
        if last.phase() != Phase::Missing {
            let failures = self.failed_resources(&last.stack_id).await?;
            return Err(StackError::Failed {
                stack: self.stack_name.clone(),
                status: last.status.clone(),
                hint: status::guidance(last.phase(), "down", &failures),
                failures,
            });
        }
        let cache_removed = self.remove_cache()?;
        Ok(DownReport {
            deleted: true,
            objects_removed,
            cache_removed,
        })
    }

    /// Deletes every object version and delete marker in `bucket`; returns how many.
    pub(super) async fn empty_bucket(
        &self,
        bucket: &str,
        progress: &dyn StackProgress,
    ) -> Result<usize, StackError> {
        let s3 = &self.clients.s3;
        let mut removed = 0;
        loop {
            let out = match s3.list_object_versions().bucket(bucket).send().await {
                Ok(out) => out,
                Err(e) => {
                    let err = port_error("list artefacts", bucket, e);
                    if err.kind == ErrorKind::NotFound {
                        return Ok(removed);
                    }
                    return Err(err.into());
                }
            };
            let mut ids = Vec::new();
            for v in out.versions() {
                if let Some(key) = v.key() {
                    ids.push((key.to_owned(), v.version_id().map(str::to_owned)));
                }
            }
            for m in out.delete_markers() {
                if let Some(key) = m.key() {
                    ids.push((key.to_owned(), m.version_id().map(str::to_owned)));
                }
            }
            if ids.is_empty() {
                return Ok(removed);
            }
            if removed == 0 {
                progress.notice(StackNotice::Step(format!(
                    "emptying the artefact bucket {bucket}"
                )));
            }
            // At most 1000 per call, and a listing page holds at most 1000.
            for chunk in ids.chunks(1000) {
                let objects = chunk
                    .iter()
                    .map(|(key, version)| {
                        aws_sdk_s3::types::ObjectIdentifier::builder()
                            .key(key)
                            .set_version_id(version.clone())
                            .build()
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| {
                        PortError::new(ErrorKind::Invalid, "empty bucket", bucket, e.to_string())
                    })?;
                let delete = aws_sdk_s3::types::Delete::builder()
                    .set_objects(Some(objects))
                    .quiet(true)
                    .build()
                    .map_err(|e| {
                        PortError::new(ErrorKind::Invalid, "empty bucket", bucket, e.to_string())
                    })?;
                let out = s3
                    .delete_objects()
                    .bucket(bucket)
                    .delete(delete)
                    .send()
                    .await
                    .map_err(|e| port_error("empty bucket", bucket, e))?;
                if let Some(e) = out.errors().first() {
                    return Err(PortError::new(
                        ErrorKind::Conflict,
                        "empty bucket",
                        bucket,
                        format!(
                            "{} of {}: {}",
                            e.code().unwrap_or("error"),
                            e.key().unwrap_or("?"),
                            e.message().unwrap_or("")
                        ),
                    )
                    .into());
                }
                removed += chunk.len();
            }
        }
    }
}
