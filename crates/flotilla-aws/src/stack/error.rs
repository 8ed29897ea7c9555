//! Why a baseline operation failed, how a command line treats it ([`StackErrorClass`]), and
//! what to do next ([`StackError::hint`]).

use std::path::PathBuf;
use std::time::Duration;

use flotilla_baseline::{OptionsError, OutputsError};
use flotilla_engine::ports::{ErrorKind, PortError};

use super::*;
use crate::error::AwsError;

/// Why a baseline operation failed, with what to do next ([`StackError::hint`]).
#[derive(Debug, thiserror::Error)]
pub enum StackError {
    /// An AWS call failed.
    #[error(transparent)]
    Aws(#[from] PortError),
    /// The provider could not be set up over the new outputs.
    #[error(transparent)]
    Provider(#[from] AwsError),
    /// The options make no valid template.
    #[error(transparent)]
    Options(#[from] OptionsError),
    /// The stack's outputs do not make a baseline.
    #[error("stack {stack}: {source}")]
    Outputs {
        /// The stack.
        stack: String,
        /// What is wrong.
        source: OutputsError,
    },
    /// The reaper's binary cannot be used.
    #[error("the reaper binary {} {problem}", path.display())]
    Artefact {
        /// The binary.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The stack's state does not allow the operation.
    #[error("{message}")]
    Refused {
        /// What is wrong.
        message: String,
        /// What to do.
        hint: String,
    },
    /// A stack operation ended in failure.
    #[error("stack {stack} is {status}{}", failures_text(.failures))]
    Failed {
        /// The stack.
        stack: String,
        /// Its final status.
        status: String,
        /// The resources that failed, with CloudFormation's reasons.
        failures: Vec<FailedResource>,
        /// What to do.
        hint: String,
    },
    /// A stack operation took longer than the wait allows.
    #[error("stack {stack} is still {status} after {} minutes", waited.as_secs() / 60)]
    TimedOut {
        /// The stack.
        stack: String,
        /// Its status when flotilla stopped waiting.
        status: String,
        /// How long flotilla waited.
        waited: Duration,
    },
    /// The cached outputs cannot be written or removed.
    #[error("cannot {action} {}: {source}", path.display())]
    Cache {
        /// `write` or `remove`.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// How a [`StackError`] should be treated by a command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StackErrorClass {
    /// Fix the configuration or the command line.
    Usage,
    /// The current state does not allow it.
    Refused,
    /// An AWS call failed, or waiting timed out: running the command again resumes.
    Provider,
    /// A stack operation failed.
    Failed,
}

impl StackError {
    /// What kind of failure this is.
    pub fn class(&self) -> StackErrorClass {
        match self {
            StackError::Options(_) | StackError::Artefact { .. } => StackErrorClass::Usage,
            StackError::Refused { .. } => StackErrorClass::Refused,
            StackError::Aws(_) | StackError::Provider(_) | StackError::TimedOut { .. } => {
                StackErrorClass::Provider
            }
            StackError::Failed { .. } | StackError::Outputs { .. } | StackError::Cache { .. } => {
                StackErrorClass::Failed
            }
        }
    }

    /// What to do next, in one sentence or two.
    pub fn hint(&self) -> String {
        match self {
            StackError::Aws(e) => match e.kind {
                ErrorKind::AccessDenied => "creating or deleting the baseline needs administrator \
                     rights (a VPC, IAM roles, a load balancer); run it with an administrator \
                     profile (`--profile`, or [aws] profile)"
                    .to_owned(),
                ErrorKind::Unavailable => {
                    "AWS could not be reached: check the network, the region \
                     and AWS_ENDPOINT_URL, then run the same command again"
                        .to_owned()
                }
                _ => "run the same command again; it picks up where the stack is".to_owned(),
            },
            StackError::Provider(_) => {
                "fix what is named above, then run `flotilla baseline up` again".to_owned()
            }
            StackError::Options(_) => {
                "fix the keys named above in flotilla.toml, then run `flotilla config check`"
                    .to_owned()
            }
            StackError::Outputs { .. } => {
                "run `flotilla baseline up` to bring the stack up to date".to_owned()
            }
            StackError::Artefact { .. } => "the reaper Lambda runs a Linux executable (x86_64 \
                 or arm64): build the static one with `scripts/build-static.sh` (then `baseline \
                 up` finds it), or pass one with `flotilla baseline up --reaper-binary PATH`"
                .to_owned(),
            StackError::Refused { hint, .. } | StackError::Failed { hint, .. } => hint.clone(),
            StackError::TimedOut { .. } => "CloudFormation carries on without flotilla: follow \
                 it with `flotilla baseline show`, and run the same command again once it has \
                 finished (a certificate waits for its DNS validation records)"
                .to_owned(),
            StackError::Cache { .. } => {
                "check the directory's permissions, then run the same command again".to_owned()
            }
        }
    }
}

pub(super) fn failures_text(failures: &[FailedResource]) -> String {
    let mut out = String::new();
    for f in failures {
        out.push_str(&format!(
            "\n  {} ({}) {}: {}",
            f.logical_id, f.resource_type, f.status, f.reason
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_classes_and_hints() {
        let refused = StackError::Refused {
            message: "m".into(),
            hint: "h".into(),
        };
        assert_eq!(refused.class(), StackErrorClass::Refused);
        assert_eq!(refused.hint(), "h");
        let denied = StackError::Aws(PortError::new(
            ErrorKind::AccessDenied,
            "create stack",
            "flotilla-x",
            "AccessDenied",
        ));
        assert_eq!(denied.class(), StackErrorClass::Provider);
        assert!(denied.hint().contains("administrator"), "{}", denied.hint());
        let failed = StackError::Failed {
            stack: "flotilla-x".into(),
            status: "DELETE_FAILED".into(),
            failures: vec![FailedResource {
                logical_id: "Vpc".into(),
                resource_type: "AWS::EC2::VPC".into(),
                status: "DELETE_FAILED".into(),
                reason: "has dependencies".into(),
            }],
            hint: "h".into(),
        };
        assert_eq!(
            failed.to_string(),
            "stack flotilla-x is DELETE_FAILED\n  Vpc (AWS::EC2::VPC) DELETE_FAILED: has dependencies"
        );
        let timed_out = StackError::TimedOut {
            stack: "flotilla-x".into(),
            status: "CREATE_IN_PROGRESS".into(),
            waited: Duration::from_secs(3600),
        };
        assert_eq!(timed_out.class(), StackErrorClass::Provider);
        assert!(timed_out.hint().contains("baseline show"));
    }
}
