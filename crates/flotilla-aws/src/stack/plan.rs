//! What `baseline up` is to make ([`Desired`]) and what it is about to do ([`Plan`]): a
//! creation, or an update through a change set worked out (and discarded) here.

use std::time::{Duration, Instant};

use aws_sdk_cloudformation::types::{Capability, ChangeSetType, Parameter};
use flotilla_baseline::contract::{self, ReaperCode};
use flotilla_baseline::{BaselineOptions, TlsMode};
use flotilla_engine::ports::ErrorKind;
use serde::Serialize;

use super::*;
use crate::error::port_error;

/// What the template and the reaper's code are to become.
#[derive(Clone, Debug)]
pub struct Desired {
    /// The template, compact JSON.
    pub body: String,
    /// The template as JSON (for the creation plan).
    template: serde_json::Value,
    /// Whether the stack requests an ACM certificate (its validation records are read).
    pub requests_certificate: bool,
    /// The reaper's code.
    pub artefact: ReaperArtefact,
}

impl Desired {
    /// The template for `options` with the reaper built from `artefact` (whose architecture
    /// replaces the one in `options`).
    pub fn new(options: &BaselineOptions, artefact: ReaperArtefact) -> Result<Desired, StackError> {
        let mut options = options.clone();
        options.reaper.architecture = artefact.architecture;
        let template = flotilla_baseline::build(&options)?;
        Ok(Desired {
            body: template.to_compact_string(),
            template: template.to_json(),
            requests_certificate: matches!(options.tls, TlsMode::Acm { .. }),
            artefact,
        })
    }

    pub(super) fn code(&self) -> ReaperCode {
        ReaperCode {
            bucket: None,
            key: self.artefact.key(),
        }
    }
}

/// What `baseline up` is about to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Plan {
    /// Create the stack: these resources, the reaper's after its code is uploaded.
    Create {
        /// The resources.
        changes: Vec<ResourceChange>,
    },
    /// Execute a change set on the existing stack.
    Update {
        /// The stack.
        stack_id: String,
        /// The change set to execute.
        change_set_id: String,
        /// Its resource changes (CloudFormation may list none when only parameters or outputs
        /// change).
        changes: Vec<ResourceChange>,
        /// Whether the reaper's code changes (a new flotilla binary).
        new_reaper_code: bool,
    },
    /// The stack already matches: nothing to do.
    NoChange {
        /// The stack.
        stack_id: String,
    },
}

impl Plan {
    /// The resource changes, if any.
    pub fn changes(&self) -> &[ResourceChange] {
        match self {
            Plan::Create { changes } | Plan::Update { changes, .. } => changes,
            Plan::NoChange { .. } => &[],
        }
    }

    /// Whether applying it deletes or replaces something that exists.
    pub fn destroys(&self) -> bool {
        self.changes().iter().any(ResourceChange::destroys)
    }
}

impl BaselineStack {
    /// Works out what `baseline up` would do, without changing anything but a change set.
    ///
    /// Waits for an operation already running on the stack to finish first, and refuses stacks
    /// in failed states with what to do about them.
    pub async fn plan(
        &self,
        desired: &Desired,
        progress: &dyn StackProgress,
    ) -> Result<Plan, StackError> {
        let stack = match self.describe().await? {
            Some(s) if s.phase() == Phase::Busy => {
                progress.notice(StackNotice::Step(format!(
                    "stack {} is {}; waiting for that to finish first",
                    self.stack_name, s.status
                )));
                self.wait_settled(&s.stack_id, progress).await?
            }
            other => other,
        };
        let Some(stack) = stack else {
            return Ok(Plan::Create {
                changes: status::creation_changes(&desired.template),
            });
        };
        match stack.phase() {
            Phase::Stable => {}
            Phase::Missing => {
                return Ok(Plan::Create {
                    changes: status::creation_changes(&desired.template),
                });
            }
            phase => return Err(self.refuse_state(&stack, phase, "up").await?),
        }
        let new_reaper_code = stack
            .parameters
            .get(contract::PARAM_REAPER_CODE_KEY)
            .map(String::as_str)
            != Some(desired.artefact.key().as_str());
        let name = format!("flotilla-{}", unix_seconds());
        let created = self
            .clients
            .cfn
            .create_change_set()
            // By name: the stack is live, so the name is unambiguous (and some emulators take
            // no ARN here).
            .stack_name(&self.stack_name)
            .change_set_name(&name)
            .change_set_type(ChangeSetType::Update)
            .description("flotilla baseline up")
            .template_body(&desired.body)
            .set_parameters(Some(parameters(Some(&desired.code()))))
            .set_capabilities(Some(capabilities()))
            .set_tags(Some(self.tags()))
            .send()
            .await;
        let change_set_id = match created {
            Ok(out) => out.id().unwrap_or(&name).to_owned(),
            Err(e) if says(&e, "no updates are to be performed") => {
                return Ok(Plan::NoChange {
                    stack_id: stack.stack_id,
                });
            }
            Err(e) => return Err(port_error("create change set", &self.stack_name, e).into()),
        };
        // CloudFormation works the change set out asynchronously.
        let started = Instant::now();
        loop {
            let out = self
                .clients
                .cfn
                .describe_change_set()
                .change_set_name(&change_set_id)
                .stack_name(&stack.stack_id)
                .send()
                .await
                .map_err(|e| port_error("describe change set", &change_set_id, e))?;
            let status = out.status().map(|s| s.as_str()).unwrap_or_default();
            let reason = out.status_reason().unwrap_or_default().to_owned();
            match status {
                "CREATE_COMPLETE" => break,
                "FAILED" if status::means_no_change(&reason) => {
                    self.delete_change_set(&change_set_id, &stack.stack_id)
                        .await?;
                    return Ok(Plan::NoChange {
                        stack_id: stack.stack_id,
                    });
                }
                "FAILED" => {
                    self.delete_change_set(&change_set_id, &stack.stack_id)
                        .await?;
                    return Err(StackError::Refused {
                        message: format!(
                            "CloudFormation cannot work out the update of stack {}: {reason}",
                            self.stack_name
                        ),
                        hint: "this usually means a setting the stack cannot take; fix it in \
                               flotilla.toml and run `flotilla baseline up` again"
                            .to_owned(),
                    });
                }
                _ => {}
            }
            if started.elapsed() > self.wait.timeout {
                return Err(StackError::TimedOut {
                    stack: self.stack_name.clone(),
                    status: format!("working out change set {name} ({status})"),
                    waited: started.elapsed(),
                });
            }
            tokio::time::sleep(self.wait.poll.min(Duration::from_secs(2))).await;
        }
        let changes = self
            .change_set_changes(&change_set_id, &stack.stack_id)
            .await?;
        Ok(Plan::Update {
            stack_id: stack.stack_id,
            change_set_id,
            changes,
            new_reaper_code,
        })
    }

    pub(super) async fn change_set_changes(
        &self,
        change_set_id: &str,
        stack_id: &str,
    ) -> Result<Vec<ResourceChange>, StackError> {
        let mut changes = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let out = self
                .clients
                .cfn
                .describe_change_set()
                .change_set_name(change_set_id)
                .stack_name(stack_id)
                .set_next_token(token.clone())
                .send()
                .await
                .map_err(|e| port_error("describe change set", change_set_id, e))?;
            for c in out.changes() {
                let Some(r) = c.resource_change() else {
                    continue;
                };
                changes.push(ResourceChange {
                    action: r
                        .action()
                        .map(|a| a.as_str().to_owned())
                        .unwrap_or_default(),
                    logical_id: r.logical_resource_id().unwrap_or_default().to_owned(),
                    resource_type: r.resource_type().unwrap_or_default().to_owned(),
                    replacement: r.replacement().map(|x| x.as_str().to_owned()),
                    scope: r.scope().iter().map(|s| s.as_str().to_owned()).collect(),
                    with_reaper_code: false,
                });
            }
            token = out.next_token().map(str::to_owned);
            if token.is_none() {
                return Ok(changes);
            }
        }
    }

    pub(super) async fn delete_change_set(
        &self,
        id: &str,
        stack_id: &str,
    ) -> Result<(), StackError> {
        match self
            .clients
            .cfn
            .delete_change_set()
            .change_set_name(id)
            .stack_name(stack_id)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                let err = port_error("delete change set", id, e);
                if err.kind == ErrorKind::NotFound {
                    Ok(())
                } else {
                    Err(err.into())
                }
            }
        }
    }

    /// Drops a plan that will not be applied (deletes its change set).
    pub async fn discard(&self, plan: &Plan) -> Result<(), StackError> {
        if let Plan::Update {
            stack_id,
            change_set_id,
            ..
        } = plan
        {
            self.delete_change_set(change_set_id, stack_id).await?;
        }
        Ok(())
    }
}

pub(super) fn parameters(code: Option<&ReaperCode>) -> Vec<Parameter> {
    contract::stack_parameters(code)
        .into_iter()
        .map(|(k, v)| {
            Parameter::builder()
                .parameter_key(k)
                .parameter_value(v)
                .build()
        })
        .collect()
}

pub(super) fn capabilities() -> Vec<Capability> {
    contract::REQUIRED_CAPABILITIES
        .iter()
        .map(|c| Capability::from(*c))
        .collect()
}

pub(super) fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_and_capabilities_follow_the_contract() {
        let none = parameters(None);
        assert_eq!(none.len(), 2);
        assert!(none.iter().all(|p| p.parameter_value() == Some("")));
        let code = ReaperCode {
            bucket: None,
            key: "reaper/abc/bootstrap.zip".into(),
        };
        let some = parameters(Some(&code));
        assert!(some.iter().any(
            |p| p.parameter_key() == Some(contract::PARAM_REAPER_CODE_KEY)
                && p.parameter_value() == Some("reaper/abc/bootstrap.zip")
        ));
        assert_eq!(
            capabilities()
                .iter()
                .map(|c| c.as_str())
                .collect::<Vec<_>>(),
            ["CAPABILITY_IAM"]
        );
    }
}
