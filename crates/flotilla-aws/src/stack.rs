//! The baseline stack's lifecycle on CloudFormation: plan (a change set, or the template's
//! resources for a first creation), create or update with progress from the stack's events, the
//! reaper's two-step code upload, the cached outputs, and deletion with what to do about stacks
//! stuck in failed states.
//!
//! `flotilla baseline up` is [`BaselineStack::plan`] then [`BaselineStack::apply`]; the CLI shows
//! the plan and asks in between. A new stack is made with `CreateStack` (not a change set: stacks
//! made by change sets report no outputs in some emulators, and the first creation has no
//! previous state to compare with anyway), without the reaper; then the reaper's code zip is
//! uploaded to the stack's artefact bucket and the stack updated with its key. An existing stack
//! is updated through a change set whose changes are shown first; when CloudFormation finds
//! nothing to change, nothing is done.
//!
//! This module prints nothing: it reports through [`StackProgress`] and returns reports.
//!
//! It is the public face of `stack/`, one module per concern, each adding its methods to
//! [`BaselineStack`]: `clients` (SDK clients, wait settings, the caller's account), `progress`
//! (notices), `error` ([`StackError`] and its class and hint), `info` ([`StackInfo`]), `plan`
//! ([`Desired`], [`Plan`], change sets), `apply` (create or update, the reaper's upload, the
//! listener's default restored, a failed rollback continued), `events` (waiting on
//! CloudFormation, failed resources), `cache` (the cached outputs), `down` (deletion), `running`
//! (the versions `down` refuses to cut off), and `commands` (what the CLI's baseline commands
//! decide between these calls); `artefact`, `elf` and `status` are public for their pure parts.

pub mod artefact;
pub mod elf;
pub mod status;

mod apply;
mod cache;
mod clients;
mod commands;
mod down;
mod error;
mod events;
mod info;
mod plan;
mod progress;
mod running;

use std::path::PathBuf;

use aws_sdk_cloudformation::types::Tag;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use flotilla_baseline::{contract, outputs};
use flotilla_core::names;
use flotilla_engine::ports::{ErrorKind, PortError};

pub use apply::UpReport;
pub use artefact::ReaperArtefact;
pub use cache::CacheCheck;
pub use clients::{StackClients, WaitSettings, caller_account};
pub use commands::{
    Consent, Shown, deployer_policy_options, desired_for_up, refuse_down_while_running,
};
pub use down::DownReport;
pub use error::{StackError, StackErrorClass};
pub use info::StackInfo;
pub use plan::{Desired, Plan};
pub use progress::{EventLine, Quiet, StackNotice, StackProgress};
pub use running::RunningVersion;
pub use status::{FailedResource, Phase, ResourceChange};

use crate::error::port_error;
use crate::settings::AwsSettings;
use error::failures_text;
use plan::{capabilities, parameters};

/// The baseline stack of one deployment name.
pub struct BaselineStack {
    clients: StackClients,
    settings: AwsSettings,
    wait: WaitSettings,
    stack_name: String,
}

impl BaselineStack {
    /// The stack of `settings.name` (`flotilla-<name>`), its outputs cached at
    /// `settings.baseline_path()`.
    pub fn new(clients: StackClients, settings: AwsSettings, wait: WaitSettings) -> Self {
        let stack_name = names::stack_name(&settings.name);
        BaselineStack {
            clients,
            settings,
            wait,
            stack_name,
        }
    }

    /// The stack's name.
    pub fn stack_name(&self) -> &str {
        &self.stack_name
    }

    /// The cache file.
    pub fn cache_path(&self) -> PathBuf {
        self.settings.baseline_path()
    }

    /// The stack as it is now, or `None` when there is none.
    pub async fn describe(&self) -> Result<Option<StackInfo>, StackError> {
        let stack = self.describe_by(&self.stack_name).await?;
        Ok(stack.filter(|s| s.phase() != Phase::Missing))
    }

    pub(super) async fn describe_by(
        &self,
        name_or_id: &str,
    ) -> Result<Option<StackInfo>, StackError> {
        match self
            .clients
            .cfn
            .describe_stacks()
            .stack_name(name_or_id)
            .send()
            .await
        {
            Ok(out) => Ok(out.stacks().first().map(StackInfo::from_sdk)),
            Err(e) if says(&e, "does not exist") => Ok(None),
            Err(e) => Err(port_error("describe stack", &self.stack_name, e).into()),
        }
    }

    pub(super) async fn must_describe(&self, stack_id: &str) -> Result<StackInfo, StackError> {
        self.describe_by(stack_id)
            .await?
            .ok_or_else(|| StackError::Refused {
                message: format!("stack {} disappeared", self.stack_name),
                hint: "run `flotilla baseline up` again".to_owned(),
            })
    }

    pub(super) fn tags(&self) -> Vec<Tag> {
        contract::stack_tags(&self.settings.name)
            .into_iter()
            .map(|(k, v)| Tag::builder().key(k).value(v).build())
            .collect()
    }

    /// The artefact bucket: from the outputs, else the stack resource.
    pub(super) async fn artefact_bucket(&self, stack: &StackInfo) -> Result<String, StackError> {
        if let Some(b) = stack
            .outputs
            .get(outputs::ARTEFACT_BUCKET)
            .filter(|b| !b.is_empty())
        {
            return Ok(b.clone());
        }
        self.physical_id(&stack.stack_id, contract::ARTEFACT_BUCKET_LOGICAL_ID)
            .await?
            .ok_or_else(|| {
                PortError::new(
                    ErrorKind::NotFound,
                    "find artefact bucket",
                    &self.stack_name,
                    "the stack has no artefact bucket",
                )
                .into()
            })
    }

    pub(super) async fn physical_id(
        &self,
        stack_id: &str,
        logical_id: &str,
    ) -> Result<Option<String>, StackError> {
        match self
            .clients
            .cfn
            .describe_stack_resource()
            .stack_name(stack_id)
            .logical_resource_id(logical_id)
            .send()
            .await
        {
            Ok(out) => Ok(out
                .stack_resource_detail()
                .and_then(|d| d.physical_resource_id())
                .filter(|id| !id.is_empty())
                .map(str::to_owned)),
            Err(e) if says(&e, "does not exist") => Ok(None),
            Err(e) => Err(port_error("describe stack resource", logical_id, e).into()),
        }
    }
}

/// Whether a service error's message contains `needle` (case-insensitive). CloudFormation
/// answers both "stack does not exist" and "no updates" with a bare `ValidationError`.
pub(super) fn says<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>, needle: &str) -> bool {
    match err {
        SdkError::ServiceError(s) => s
            .err()
            .message()
            .is_some_and(|m| m.to_ascii_lowercase().contains(needle)),
        _ => false,
    }
}
