//! The stack as CloudFormation describes it.

use std::collections::BTreeMap;

use serde::Serialize;

use super::*;

/// The stack as CloudFormation describes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StackInfo {
    /// Its id (an ARN; stays valid after deletion).
    pub stack_id: String,
    /// Its name.
    pub name: String,
    /// Its status.
    pub status: String,
    /// Why it is in that status, when CloudFormation says.
    pub status_reason: Option<String>,
    /// Its parameters.
    pub parameters: BTreeMap<String, String>,
    /// Its outputs.
    pub outputs: BTreeMap<String, String>,
    /// When it last changed (RFC 3339).
    pub last_changed: Option<String>,
}

impl StackInfo {
    pub(super) fn from_sdk(s: &aws_sdk_cloudformation::types::Stack) -> StackInfo {
        let time = s
            .last_updated_time()
            .or(s.creation_time())
            .and_then(|t| t.fmt(aws_smithy_types::date_time::Format::DateTime).ok());
        StackInfo {
            stack_id: s.stack_id().unwrap_or_default().to_owned(),
            name: s.stack_name().unwrap_or_default().to_owned(),
            status: s
                .stack_status()
                .map(|s| s.as_str().to_owned())
                .unwrap_or_default(),
            status_reason: s.stack_status_reason().map(str::to_owned),
            parameters: s
                .parameters()
                .iter()
                .filter_map(|p| {
                    Some((
                        p.parameter_key()?.to_owned(),
                        p.parameter_value().unwrap_or_default().to_owned(),
                    ))
                })
                .collect(),
            outputs: s
                .outputs()
                .iter()
                .filter_map(|o| {
                    Some((
                        o.output_key()?.to_owned(),
                        o.output_value().unwrap_or_default().to_owned(),
                    ))
                })
                .collect(),
            last_changed: time,
        }
    }

    /// Its phase.
    pub fn phase(&self) -> Phase {
        status::phase(&self.status)
    }
}
