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

pub mod artefact;
pub mod elf;
pub mod status;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aws_config::SdkConfig;
use aws_sdk_cloudformation::types::{Capability, ChangeSetType, Parameter, Tag};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use flotilla_baseline::contract::{self, ReaperCode};
use flotilla_baseline::outputs::{self, ValidationRecord};
use flotilla_baseline::{BaselineOptions, OptionsError, OutputsError, TlsMode};
use flotilla_core::routing::WeightedTarget;
use flotilla_core::{DeploymentId, VersionState, names};
use flotilla_engine::ports::{ErrorKind, PortError};
use serde::Serialize;

pub use artefact::ReaperArtefact;
pub use status::{FailedResource, Phase, ResourceChange};

use crate::error::{AwsError, port_error};
use crate::sdk::{Clients, sdk_config};
use crate::settings::{AwsSettings, Needs};

/// Events read per `DescribeStackEvents` walk at most (pages of 100), so a stack with a long
/// history is never read to its beginning.
const EVENT_PAGES: usize = 5;

/// The clients the baseline's lifecycle uses, besides the provider's own.
#[derive(Clone, Debug)]
pub struct StackClients {
    /// CloudFormation.
    pub cfn: aws_sdk_cloudformation::Client,
    /// S3: the reaper's code zip, emptying the artefact bucket.
    pub s3: aws_sdk_s3::Client,
    /// ACM: the certificate's DNS validation records.
    pub acm: aws_sdk_acm::Client,
    /// STS: the caller's account, for the deployer policy.
    pub sts: aws_sdk_sts::Client,
    /// The provider's clients (ECS, ELBv2, SSM: running versions, the listener's default).
    pub provider: Clients,
}

impl StackClients {
    /// Clients for `config`. `path_style` addresses S3 buckets in the path rather than the host
    /// name, which endpoints such as emulators on `127.0.0.1` need.
    pub fn new(config: &SdkConfig, path_style: bool) -> Self {
        let s3 = aws_sdk_s3::config::Builder::from(config)
            .force_path_style(path_style)
            .build();
        StackClients {
            cfn: aws_sdk_cloudformation::Client::new(config),
            s3: aws_sdk_s3::Client::from_conf(s3),
            acm: aws_sdk_acm::Client::new(config),
            sts: aws_sdk_sts::Client::new(config),
            provider: Clients::new(config),
        }
    }

    /// Clients for `settings`: path-style S3 when an endpoint override is set (in the settings
    /// or by `AWS_ENDPOINT_URL`).
    pub async fn for_settings(settings: &AwsSettings) -> Self {
        let config = sdk_config(settings).await;
        let path_style = settings.endpoint_url.is_some()
            || std::env::var_os("AWS_ENDPOINT_URL").is_some()
            || std::env::var_os("AWS_ENDPOINT_URL_S3").is_some();
        Self::new(&config, path_style)
    }
}

/// How long and how often to wait on CloudFormation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WaitSettings {
    /// Time between polls of the stack and its events.
    pub poll: Duration,
    /// How long to wait for one stack operation before giving up (CloudFormation carries on).
    pub timeout: Duration,
    /// How often to say "still waiting" when no event arrives.
    pub heartbeat: Duration,
}

impl Default for WaitSettings {
    fn default() -> Self {
        WaitSettings {
            poll: Duration::from_secs(5),
            timeout: Duration::from_secs(60 * 60),
            heartbeat: Duration::from_secs(60),
        }
    }
}

/// One stack event, as progress shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EventLine {
    /// When it happened (RFC 3339).
    pub time: String,
    /// The logical id (the stack's own name for stack-level events).
    pub logical_id: String,
    /// The resource type.
    pub resource_type: String,
    /// The status, e.g. `CREATE_IN_PROGRESS`.
    pub status: String,
    /// CloudFormation's reason, when it gives one.
    pub reason: Option<String>,
}

/// What the lifecycle reports while it works.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StackNotice {
    /// A step begins, in words.
    Step(String),
    /// A new stack event.
    Event(EventLine),
    /// The DNS records ACM needs to validate the certificate (create them to let the stack
    /// finish).
    ValidationRecords(Vec<ValidationRecord>),
    /// Nothing new for a while; the stack is still in `status`.
    StillWaiting {
        /// The stack's status.
        status: String,
        /// Time waited so far.
        waited: Duration,
    },
}

/// Where notices go (the CLI prints them).
pub trait StackProgress: Send + Sync {
    /// One notice.
    fn notice(&self, notice: StackNotice);
}

/// Discards every notice.
pub struct Quiet;

impl StackProgress for Quiet {
    fn notice(&self, _notice: StackNotice) {}
}

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

/// Writes `.gitignore` with `*` into the nearest directory named `.flotilla` that holds `dir`,
/// unless one is there: the cached outputs are this machine's view of the stack and are not
/// committed with the app (a CI job reads them from the stack). A user's own file is left alone.
fn ignore_dot_flotilla(dir: &Path) -> std::io::Result<()> {
    let Some(top) = dir
        .ancestors()
        .find(|a| a.file_name() == Some(std::ffi::OsStr::new(".flotilla")))
    else {
        return Ok(());
    };
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(top.join(".gitignore"))
    {
        Ok(mut file) => std::io::Write::write_all(&mut file, b"*\n"),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

fn failures_text(failures: &[FailedResource]) -> String {
    let mut out = String::new();
    for f in failures {
        out.push_str(&format!(
            "\n  {} ({}) {}: {}",
            f.logical_id, f.resource_type, f.status, f.reason
        ));
    }
    out
}

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
    fn from_sdk(s: &aws_sdk_cloudformation::types::Stack) -> StackInfo {
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

    fn code(&self) -> ReaperCode {
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

/// The baseline stack of one deployment name.
pub struct BaselineStack {
    clients: StackClients,
    settings: AwsSettings,
    wait: WaitSettings,
    stack_name: String,
}

/// What [`BaselineStack::check_cache`] found, and what it did to the cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CacheCheck {
    /// The stack is complete and the cache, if any, already holds its outputs: whatever failed,
    /// the cache is not the cause.
    Matches,
    /// The stack is complete and the cache differed from its outputs: it now holds them.
    Refreshed,
    /// The stack is gone or holds no working baseline; its cache was removed.
    Unusable {
        /// The stack's status; `None` when there is no stack.
        status: Option<String>,
        /// Its phase ([`Phase::Missing`] when there is no stack).
        phase: Phase,
        /// The cache file removed, if there was one.
        removed: Option<PathBuf>,
    },
    /// An operation is running on the stack (or a failed update waits): the cache was left.
    Unsettled {
        /// The stack's status.
        status: String,
    },
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

    async fn describe_by(&self, name_or_id: &str) -> Result<Option<StackInfo>, StackError> {
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

    /// The cached outputs, if the file exists.
    pub fn cached(&self) -> Result<Option<flotilla_baseline::BaselineOutputs>, StackError> {
        let path = self.cache_path();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(StackError::Cache {
                    action: "read",
                    path,
                    source: e,
                });
            }
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| StackError::Cache {
                action: "parse",
                path,
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            })
    }

    /// Reads the outputs of a complete stack and caches them (what a CI job needs when
    /// `.flotilla/` is not checked in); `None` when there is no usable stack.
    pub async fn refresh_cache(
        &self,
    ) -> Result<Option<flotilla_baseline::BaselineOutputs>, StackError> {
        let Some(stack) = self.describe().await? else {
            return Ok(None);
        };
        if stack.phase() != Phase::Stable {
            return Ok(None);
        }
        let mut outputs = flotilla_baseline::BaselineOutputs::from_stack_outputs(
            stack.outputs.clone(),
        )
        .map_err(|source| StackError::Outputs {
            stack: self.stack_name.clone(),
            source,
        })?;
        // Records already cached here stay (they are not stack outputs).
        if let Ok(Some(old)) = self.cached() {
            outputs.certificate_validation_records = old.certificate_validation_records;
        }
        self.write_cache(&outputs)?;
        Ok(Some(outputs))
    }

    /// Checks the cached outputs against the stack, after something they name turned out not to
    /// exist: a complete stack's outputs replace a cache that differs; a stack that is gone or
    /// holds no working baseline (deleted, deleted part-way, never created) takes its cache with
    /// it; a stack in the middle of an operation leaves the cache alone.
    pub async fn check_cache(&self) -> Result<CacheCheck, StackError> {
        let stack = self.describe().await?;
        let phase = stack.as_ref().map_or(Phase::Missing, StackInfo::phase);
        let status = stack.as_ref().map(|s| s.status.clone());
        match status::cache_verdict(phase) {
            status::CacheVerdict::Keep => Ok(CacheCheck::Unsettled {
                status: status.unwrap_or_default(),
            }),
            status::CacheVerdict::Discard => Ok(CacheCheck::Unusable {
                status,
                phase,
                removed: self.remove_cache()?,
            }),
            status::CacheVerdict::Compare => {
                let Some(stack) = stack else {
                    return Ok(CacheCheck::Matches);
                };
                let mut fresh =
                    flotilla_baseline::BaselineOutputs::from_stack_outputs(stack.outputs.clone())
                        .map_err(|source| StackError::Outputs {
                        stack: self.stack_name.clone(),
                        source,
                    })?;
                // A cache that cannot be read differs, and is rewritten.
                let old = self.cached().ok().flatten();
                if let Some(old) = &old {
                    fresh.certificate_validation_records =
                        old.certificate_validation_records.clone();
                }
                if old.as_ref() == Some(&fresh) || !self.cache_path().exists() {
                    return Ok(CacheCheck::Matches);
                }
                self.write_cache(&fresh)?;
                Ok(CacheCheck::Refreshed)
            }
        }
    }

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

    async fn change_set_changes(
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

    async fn delete_change_set(&self, id: &str, stack_id: &str) -> Result<(), StackError> {
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
    async fn install_reaper(
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

    fn remove_cache(&self) -> Result<Option<PathBuf>, StackError> {
        let path = self.cache_path();
        match std::fs::remove_file(&path) {
            Ok(()) => {
                // The per-name directory goes too when nothing else is in it.
                if let Some(dir) = path.parent() {
                    let _ = std::fs::remove_dir(dir);
                }
                Ok(Some(path))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StackError::Cache {
                action: "remove",
                path,
                source: e,
            }),
        }
    }

    async fn must_describe(&self, stack_id: &str) -> Result<StackInfo, StackError> {
        self.describe_by(stack_id)
            .await?
            .ok_or_else(|| StackError::Refused {
                message: format!("stack {} disappeared", self.stack_name),
                hint: "run `flotilla baseline up` again".to_owned(),
            })
    }

    /// Fails unless `stack` ended in `want`, naming the resources that failed.
    async fn expect(&self, stack: &StackInfo, want: &str, command: &str) -> Result<(), StackError> {
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

    async fn refuse_state(
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
    async fn failed_events(&self, stack_id: &str) -> Result<Vec<FailedResource>, StackError> {
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
    async fn failed_resources(&self, stack_id: &str) -> Result<Vec<FailedResource>, StackError> {
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

    fn tags(&self) -> Vec<Tag> {
        contract::stack_tags(&self.settings.name)
            .into_iter()
            .map(|(k, v)| Tag::builder().key(k).value(v).build())
            .collect()
    }

    /// The artefact bucket: from the outputs, else the stack resource.
    async fn artefact_bucket(&self, stack: &StackInfo) -> Result<String, StackError> {
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

    async fn physical_id(
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

    /// Uploads the reaper's zip unless an object is already under its (content-addressed) key.
    async fn upload(
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

    /// Deletes every object version and delete marker in `bucket`; returns how many.
    async fn empty_bucket(
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

    /// Reads the outputs, adds the certificate's validation records, and caches them.
    async fn finish(
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

    fn write_cache(&self, outputs: &flotilla_baseline::BaselineOutputs) -> Result<(), StackError> {
        let path = self.cache_path();
        let io = |source| StackError::Cache {
            action: "write",
            path: path.clone(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
            ignore_dot_flotilla(dir).map_err(io)?;
        }
        let text = serde_json::to_string_pretty(outputs)
            .map_err(|e| io(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
        // Write then rename, so a reader never sees half a file.
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, format!("{text}\n")).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)
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

    /// The newest event's id, before an operation (its events are the ones after it).
    async fn newest_event(&self, stack_id: &str) -> Result<Option<String>, StackError> {
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
    async fn events_since(
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
    async fn wait_settled(
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
    async fn wait_for(
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

    /// After an update the routing listener's default may be the template's fixed 503 again
    /// (CloudFormation resets it when the listener resource changes). If a version is active,
    /// point fresh traffic back at it; returns that version.
    async fn restore_default(
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

/// The caller's account id and partition (`aws`, `aws-cn`, `aws-us-gov`), from STS.
pub async fn caller_account(sts: &aws_sdk_sts::Client) -> Result<(String, String), StackError> {
    let out = sts
        .get_caller_identity()
        .send()
        .await
        .map_err(|e| port_error("get caller identity", "sts", e))?;
    let account = out.account().unwrap_or_default().to_owned();
    let partition = out
        .arn()
        .and_then(|arn| arn.split(':').nth(1))
        .filter(|p| !p.is_empty())
        .unwrap_or("aws")
        .to_owned();
    if account.is_empty() {
        return Err(PortError::new(
            ErrorKind::Invalid,
            "get caller identity",
            "sts",
            "STS named no account",
        )
        .into());
    }
    Ok((account, partition))
}

fn parameters(code: Option<&ReaperCode>) -> Vec<Parameter> {
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

fn capabilities() -> Vec<Capability> {
    contract::REQUIRED_CAPABILITIES
        .iter()
        .map(|c| Capability::from(*c))
        .collect()
}

fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Whether a service error's message contains `needle` (case-insensitive). CloudFormation
/// answers both "stack does not exist" and "no updates" with a bare `ValidationError`.
fn says<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>, needle: &str) -> bool {
    match err {
        SdkError::ServiceError(s) => s
            .err()
            .message()
            .is_some_and(|m| m.to_ascii_lowercase().contains(needle)),
        _ => false,
    }
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
