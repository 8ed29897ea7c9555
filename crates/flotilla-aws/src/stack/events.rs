//! Waiting on CloudFormation: the stack's events after a marker, polling until no operation
//! runs, and the failed resources a failure or a refusal names.

use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

use flotilla_baseline::contract;

use super::*;
use crate::error::port_error;

/// Events read per `DescribeStackEvents` walk at most (pages of 100), so a stack with a long
/// history is never read to its beginning.
const EVENT_PAGES: usize = 5;

impl BaselineStack {
    /// Fails unless `stack` ended in `want`, naming the resources that failed.
    pub(super) async fn expect(
        &self,
        stack: &StackInfo,
        want: &str,
        command: &str,
    ) -> Result<(), StackError> {
        if stack.status == want {
            return Ok(());
        }
        let failures = self.failed_events(&stack.stack_id).await?;
        let hint = match stack.status.as_str() {
            "UPDATE_ROLLBACK_COMPLETE" => {
                "the update failed and CloudFormation put the stack back \
                 as it was; fix the cause named above, then run `flotilla baseline up` again"
                    .to_owned()
            }
            _ => status::guidance(stack.phase(), command, &failures),
        };
        Err(StackError::Failed {
            stack: self.stack_name.clone(),
            status: stack.status.clone(),
            failures,
            hint,
        })
    }

    pub(super) async fn refuse_state(
        &self,
        stack: &StackInfo,
        phase: Phase,
        command: &str,
    ) -> Result<StackError, StackError> {
        let failures = if phase == Phase::DeleteFailed {
            self.failed_resources(&stack.stack_id).await?
        } else {
            self.failed_events(&stack.stack_id).await?
        };
        let reason = stack
            .status_reason
            .as_deref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default();
        Ok(StackError::Refused {
            message: format!(
                "stack {} is {}{reason}{}",
                self.stack_name,
                stack.status,
                failures_text(&failures)
            ),
            hint: status::guidance(phase, command, &failures),
        })
    }

    /// The resources whose latest events failed, newest first (from the recent events).
    pub(super) async fn failed_events(
        &self,
        stack_id: &str,
    ) -> Result<Vec<FailedResource>, StackError> {
        let mut seen = HashSet::new();
        let events = self.events_since(stack_id, None, &mut seen).await?;
        let mut out: Vec<FailedResource> = Vec::new();
        for e in events.into_iter().rev() {
            if e.status.ends_with("_FAILED")
                && e.logical_id != self.stack_name
                && !out.iter().any(|f| f.logical_id == e.logical_id)
            {
                out.push(FailedResource {
                    logical_id: e.logical_id,
                    resource_type: e.resource_type,
                    status: e.status,
                    reason: e.reason.unwrap_or_default(),
                });
            }
        }
        Ok(out)
    }

    /// The stack's resources in a failed status (what a `DELETE_FAILED` stack still holds).
    pub(super) async fn failed_resources(
        &self,
        stack_id: &str,
    ) -> Result<Vec<FailedResource>, StackError> {
        let out = self
            .clients
            .cfn
            .describe_stack_resources()
            .stack_name(stack_id)
            .send()
            .await
            .map_err(|e| port_error("describe stack resources", &self.stack_name, e))?;
        Ok(out
            .stack_resources()
            .iter()
            .filter_map(|r| {
                let status = r.resource_status()?.as_str();
                status.ends_with("_FAILED").then(|| FailedResource {
                    logical_id: r.logical_resource_id().unwrap_or_default().to_owned(),
                    resource_type: r.resource_type().unwrap_or_default().to_owned(),
                    status: status.to_owned(),
                    reason: r.resource_status_reason().unwrap_or_default().to_owned(),
                })
            })
            .collect())
    }

    /// The newest event's id, before an operation (its events are the ones after it).
    pub(super) async fn newest_event(&self, stack_id: &str) -> Result<Option<String>, StackError> {
        let out = self
            .clients
            .cfn
            .describe_stack_events()
            .stack_name(stack_id)
            .send()
            .await
            .map_err(|e| port_error("describe stack events", &self.stack_name, e))?;
        Ok(out
            .stack_events()
            .first()
            .and_then(|e| e.event_id())
            .map(str::to_owned))
    }

    /// The events after `marker` not in `seen`, oldest first; adds them to `seen`.
    pub(super) async fn events_since(
        &self,
        stack_id: &str,
        marker: Option<&str>,
        seen: &mut HashSet<String>,
    ) -> Result<Vec<EventLine>, StackError> {
        let mut fresh = Vec::new();
        let mut token: Option<String> = None;
        'pages: for _ in 0..EVENT_PAGES {
            let out = match self
                .clients
                .cfn
                .describe_stack_events()
                .stack_name(stack_id)
                .set_next_token(token.clone())
                .send()
                .await
            {
                Ok(out) => out,
                Err(e) if says(&e, "does not exist") => break,
                Err(e) => {
                    return Err(port_error("describe stack events", &self.stack_name, e).into());
                }
            };
            for e in out.stack_events() {
                let id = e.event_id().unwrap_or_default();
                if Some(id) == marker || seen.contains(id) {
                    break 'pages;
                }
                fresh.push((
                    id.to_owned(),
                    EventLine {
                        time: e
                            .timestamp()
                            .and_then(|t| t.fmt(aws_smithy_types::date_time::Format::DateTime).ok())
                            .unwrap_or_default(),
                        logical_id: e.logical_resource_id().unwrap_or_default().to_owned(),
                        resource_type: e.resource_type().unwrap_or_default().to_owned(),
                        status: e
                            .resource_status()
                            .map(|s| s.as_str().to_owned())
                            .unwrap_or_default(),
                        reason: e
                            .resource_status_reason()
                            .filter(|r| !r.is_empty())
                            .map(str::to_owned),
                    },
                ));
            }
            token = out.next_token().map(str::to_owned);
            if token.is_none() {
                break;
            }
        }
        fresh.reverse();
        Ok(fresh
            .into_iter()
            .map(|(id, line)| {
                seen.insert(id);
                line
            })
            .collect())
    }

    /// Waits for a running operation to finish, without reporting its events.
    pub(super) async fn wait_settled(
        &self,
        stack_id: &str,
        progress: &dyn StackProgress,
    ) -> Result<Option<StackInfo>, StackError> {
        let marker = self.newest_event(stack_id).await?;
        let last = self.wait_for(stack_id, marker, false, progress).await?;
        Ok(Some(last).filter(|s| s.phase() != Phase::Missing))
    }

    /// Polls the stack (by id, which outlives deletion) until no operation runs, reporting
    /// each new event after `marker` and, when `certificate` is set, the certificate's
    /// validation records once ACM has them. A stack that disappears counts as deleted.
    pub(super) async fn wait_for(
        &self,
        stack_id: &str,
        marker: Option<String>,
        certificate: bool,
        progress: &dyn StackProgress,
    ) -> Result<StackInfo, StackError> {
        let started = Instant::now();
        let mut last_news = Instant::now();
        let mut seen = HashSet::new();
        let mut records_shown = !certificate;
        loop {
            let stack = self.describe_by(stack_id).await?;
            let events = self
                .events_since(stack_id, marker.as_deref(), &mut seen)
                .await?;
            if !events.is_empty() {
                last_news = Instant::now();
            }
            for e in events {
                progress.notice(StackNotice::Event(e));
            }
            let Some(stack) = stack else {
                return Ok(StackInfo {
                    stack_id: stack_id.to_owned(),
                    name: self.stack_name.clone(),
                    status: "DELETE_COMPLETE".to_owned(),
                    status_reason: None,
                    parameters: BTreeMap::new(),
                    outputs: BTreeMap::new(),
                    last_changed: None,
                });
            };
            if stack.phase() != Phase::Busy {
                return Ok(stack);
            }
            if !records_shown
                && let Some(arn) = self
                    .physical_id(stack_id, contract::CERTIFICATE_LOGICAL_ID)
                    .await?
                && let Some(records) = self.validation_records(&arn).await?
            {
                progress.notice(StackNotice::ValidationRecords(records));
                records_shown = true;
            }
            if started.elapsed() > self.wait.timeout {
                return Err(StackError::TimedOut {
                    stack: self.stack_name.clone(),
                    status: stack.status,
                    waited: started.elapsed(),
                });
            }
            if last_news.elapsed() >= self.wait.heartbeat {
                progress.notice(StackNotice::StillWaiting {
                    status: stack.status.clone(),
                    waited: started.elapsed(),
                });
                last_news = Instant::now();
            }
            tokio::time::sleep(self.wait.poll).await;
        }
    }
}
