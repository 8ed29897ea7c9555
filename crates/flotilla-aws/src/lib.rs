//! flotilla-aws: the AWS provider. The engine's ports over ECS Fargate, an ALB and SSM Parameter
//! Store, on the official AWS SDK for Rust, and the reaper as a Lambda custom runtime.
//!
//! Architecture invariant: this is the only crate that knows AWS.
//!
//! Modules:
//! - [`settings`]: [`AwsSettings`], the baseline's outputs and how they are read and checked.
//! - [`sdk`]: one `SdkConfig` from the settings, the clients built once, an API-call counter.
//! - [`error`]: [`AwsError`] for setting up, and [`classify`], the pure SDK-error classifier.
//! - [`compute`]: versions as ECS services and task definition revisions.
//! - [`routing`]: affinity as target groups and listener rules; the default forward.
//! - [`state`]: records, drain state, task readiness and the deploy lock in SSM.
//! - [`secrets`]: the app's secret references (SSM, Secrets Manager) and their IAM resources.
//! - [`images`]: prebuilt image URIs, or docker build and ECR push.
//! - [`clock`]: the system clock.
//! - [`metrics`]: a canary's window from the target groups' CloudWatch metrics.
//! - [`logtail`]: `logs --follow`: Live Tail, or polling where it is not available, through one
//!   cursor that prints each line once.
//! - [`lambda`]: the reaper entry point when the binary runs as a Lambda function.
//! - [`agent_ssm`]: the in-container agent's drain source over SSM, and which source an agent
//!   in a task uses.
//! - [`drain_board`]: every version's state in one S3 object per deployment name, published
//!   after each SSM state write and read by agents with conditional GETs.
//! - `stack` (feature `stack`, on by default): the baseline stack's lifecycle on CloudFormation
//!   (`flotilla baseline up|show|down`), the reaper's code (chosen, checked, zipped, uploaded),
//!   the cached outputs.
//! - [`tls`]: the HTTPS client of every SDK client: the system's roots and built-in ones.
//!
//! Binaries (built static by `scripts/build-static.sh`): `flotilla-aws-agent`, the agent with
//! the SSM drain source, delivered into tasks; `flotilla-aws-reaper`, the reaper Lambda's
//! `bootstrap`.
#![forbid(unsafe_code)]

pub mod agent_reports;
pub mod agent_ssm;
pub mod clock;
pub mod compute;
mod ctx;
mod dot_flotilla;
pub mod drain_board;
pub mod error;
pub mod images;
pub mod lambda;
pub mod logtail;
pub mod metrics;
pub mod routing;
pub mod scaling;
pub mod sdk;
pub mod secrets;
pub mod settings;
#[cfg(feature = "stack")]
pub mod stack;
pub mod state;
pub mod tls;

use std::sync::Arc;

use flotilla_engine::Ports;

pub use error::{AwsError, Failure, classify};
pub use scaling::Autoscaling;
pub use sdk::{CallCounter, Clients, sdk_config, sdk_config_with};
pub use settings::{AwsSettings, Baseline, BaselineOutputs, Capacity, CapacityShare, Needs};

/// Builds the ports of `settings.name` over AWS, for any command (deploy included).
///
/// Reads the baseline's outputs from the cache file and the config overrides and fails, naming
/// everything missing, before any AWS call is made.
pub async fn connect(settings: &AwsSettings) -> Result<Ports, AwsError> {
    let config = sdk_config(settings).await;
    connect_with(settings, Clients::new(&config), Needs::Deploy)
}

/// Builds the ports over `clients` (shared across invocations, or counted) for what `needs` does.
pub fn connect_with(
    settings: &AwsSettings,
    clients: Clients,
    needs: Needs,
) -> Result<Ports, AwsError> {
    let problems = settings.problems(needs);
    if !problems.is_empty() {
        return Err(AwsError::Settings { problems });
    }
    let region = clients
        .region
        .clone()
        .or_else(|| settings.region.clone())
        .ok_or(AwsError::NoRegion)?;
    let path = settings.baseline_path();
    let from_file = if settings.read_baseline_file {
        BaselineOutputs::read(&path)?.unwrap_or_default()
    } else {
        BaselineOutputs::default()
    };
    let outputs = settings.baseline_overrides.clone().or(from_file);
    let baseline = Baseline::resolve(outputs, needs, &path)?;
    if needs == Needs::Deploy {
        let problems = secrets::ungranted(&settings.declared_secrets, &baseline, &region);
        if !problems.is_empty() {
            return Err(AwsError::Settings { problems });
        }
    }
    let ctx = Arc::new(ctx::Ctx::new(
        settings.name.clone(),
        clients,
        baseline,
        settings.task.clone(),
        settings.routing.clone(),
        region,
        settings.docker.clone(),
    ));
    Ok(Ports {
        compute: Arc::new(compute::EcsCompute::new(ctx.clone())),
        routing: Arc::new(routing::AlbRouting::new(ctx.clone())),
        state: Arc::new(state::SsmStateStore::new(ctx.clone())),
        images: Arc::new(images::EcrImages::new(ctx)),
        clock: Arc::new(clock::SystemClock),
    })
}

/// A follower of the container output of `settings.name`'s versions in the baseline's log group;
/// `None` when no log group is configured.
pub fn log_tail(
    settings: &AwsSettings,
    clients: &Clients,
) -> Result<Option<logtail::LogTail>, AwsError> {
    let from_file = if settings.read_baseline_file {
        BaselineOutputs::read(&settings.baseline_path())?.unwrap_or_default()
    } else {
        BaselineOutputs::default()
    };
    let outputs = settings.baseline_overrides.clone().or(from_file);
    Ok(outputs.log_group.map(|group| {
        logtail::LogTail::new(
            clients.logs.clone(),
            group,
            settings.endpoint_url.as_deref(),
        )
    }))
}
