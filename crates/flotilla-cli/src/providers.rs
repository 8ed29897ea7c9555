//! The only place that knows which provider crates exist: it turns the resolved [`Config`] into an
//! [`Engine`] over the configured provider's ports, and hosts the provider-specific commands.
//!
//! # Contract for provider engineers
//!
//! Wiring a provider means editing only the `host`/`aws` arms below (search for `WIRE:`), plus
//! adding the crate to `crates/flotilla-cli/Cargo.toml`. Nothing else in the CLI changes.
//!
//! - [`open`] must return an [`Opened`] for the configured provider:
//!   - `engine`: `Engine::new(ports, engine_settings(config))`, where `ports: flotilla_engine::Ports`
//!     comes from your crate's constructor, e.g. `flotilla_host::connect(&HostSettings { .. })`.
//!     Fill your settings struct from [`Config`] (`config.host`, `config.aws`, `config.app`,
//!     `config.drain`, `config.reaper`; `config.root` is the app directory a deploy builds from;
//!     `config.host.state_dir` is already absolute). You may adjust the returned `Settings`
//!     (e.g. a provider-specific `health_poll` or `budget`) before building the engine.
//!   - `base_url`: where users' requests arrive, for `flotilla verify` (host: [`host_base_url`]
//!     of `config.host.listen`; AWS: `http://<ALB DNS name>`), or `None` if unknown.
//!   - `logs`: a [`LogSource`] if the provider can stream logs (and follow them); `None` makes
//!     `flotilla logs` fall back to `Compute::recent_logs` (no `--follow`).
//! - Map your crate's connection errors into `anyhow::Error`s whose chain contains a
//!   `flotilla_engine::ports::PortError` (kind `Unavailable` when the daemon or endpoint cannot be
//!   reached): the CLI maps that to exit code 3 with a "run it again" hint.
//! - The other functions ([`host_serve`], [`host_stop`], [`agent`], [`baseline`],
//!   [`teardown_baseline`], [`aws_deployer_policy`], [`run_lambda`]) are the entry points of the
//!   provider-specific commands; replace their bodies. Return `Ok` only when the command did its
//!   job; print through `crate::output` (only the CLI prints to stdout).
//! - When an arm is wired, update the integration test `provider_needing_command_names_the_missing_provider`
//!   in `tests/cli/main.rs` (it pins today's "not built in" behaviour, exit code 8).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use anyhow::Result;
use async_trait::async_trait;
use flotilla_core::reaper::ReapPolicy;
use flotilla_core::routing::RuleBudget;
use flotilla_core::{DeploymentId, InstanceId};
use flotilla_engine::{Engine, Settings};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::config::{Config, ProviderKind};

/// What a provider gives the CLI once opened.
pub struct Opened {
    /// The workflows over the provider's ports.
    pub engine: Engine,
    /// Where users' requests arrive (`http://127.0.0.1:8080`), for `verify`; `None` if unknown.
    pub base_url: Option<String>,
    /// Where `logs` reads from; `None` falls back to `Compute::recent_logs`.
    pub logs: Option<Box<dyn LogSource>>,
}

/// What `flotilla logs` asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogQuery {
    /// One version, or every version that runs when `None`.
    pub id: Option<DeploymentId>,
    /// How many recent lines to send first (per instance).
    pub lines: usize,
    /// Keep sending new lines as they are written, until the receiver is dropped.
    pub follow: bool,
}

/// One log line of one instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LogLine {
    /// The version.
    pub id: DeploymentId,
    /// The instance, if known.
    pub instance: Option<InstanceId>,
    /// The line, without its newline.
    pub line: String,
}

/// A provider's logs.
#[async_trait]
pub trait LogSource: Send + Sync {
    /// Sends the last `query.lines` lines of the versions `query` names to `out`; then, if
    /// `query.follow`, new lines as they come. Returns when done, or when `out` is closed.
    async fn stream(&self, query: &LogQuery, out: mpsc::Sender<LogLine>) -> Result<()>;
}

/// A part of flotilla that this binary was built without.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Component {
    /// A provider.
    Provider(ProviderKind),
    /// The in-container agent (`flotilla agent`).
    Agent,
    /// The AWS baseline stack (`flotilla baseline`, `teardown --baseline`).
    Baseline,
}

/// A command needs a part of flotilla that is not built into this binary.
#[derive(Debug, thiserror::Error)]
#[error("the {} is not built into this flotilla yet, so `flotilla {command}` cannot run", component_name(.component))]
pub struct NotBuiltIn {
    /// What is missing.
    pub component: Component,
    /// The command that needed it.
    pub command: String,
}

fn component_name(component: &Component) -> String {
    match component {
        Component::Provider(kind) => format!("{kind} provider"),
        Component::Agent => "agent".to_owned(),
        Component::Baseline => "AWS baseline".to_owned(),
    }
}

impl NotBuiltIn {
    /// `command` needs the `kind` provider.
    pub fn provider(kind: ProviderKind, command: &str) -> Self {
        NotBuiltIn {
            component: Component::Provider(kind),
            command: command.to_owned(),
        }
    }

    /// What the user can do about it.
    pub fn hint(&self) -> String {
        match self.component {
            Component::Provider(ProviderKind::Host) => "this build has no host provider; \
                 use a flotilla built with crates/flotilla-host, or set provider = \"aws\" \
                 (or pass --provider aws) if you meant to deploy to AWS"
                .to_owned(),
            Component::Provider(ProviderKind::Aws) => "this build has no AWS provider; \
                 use a flotilla built with crates/flotilla-aws, or set provider = \"host\" \
                 (or pass --provider host) to run versions on this machine"
                .to_owned(),
            Component::Agent => {
                "this build has no agent; use a flotilla built with crates/flotilla-agent".to_owned()
            }
            Component::Baseline => {
                "this build has no AWS baseline; use a flotilla built with crates/flotilla-baseline \
                 and crates/flotilla-aws"
                    .to_owned()
            }
        }
    }
}

/// The engine settings every provider shares, from the resolved config.
pub fn engine_settings(config: &Config) -> Settings {
    Settings {
        name: config.name.clone(),
        policy: ReapPolicy {
            min_age: config.reaper.min_age,
            max_age: config.reaper.max_age,
            consecutive_ready_passes: config.reaper.consecutive_passes,
            deploying_timeout: config.reaper.deploying_timeout,
        },
        budget: RuleBudget::default(),
        health_timeout: config.app.health_timeout,
        health_poll: match config.provider {
            ProviderKind::Host => Duration::from_secs(1),
            ProviderKind::Aws => Duration::from_secs(5),
        },
        // A deploy may build an image before it waits for health; its lock must outlive both.
        // A crashed holder's lock still lapses on its own after this.
        lock_ttl: config.app.health_timeout + Duration::from_secs(30 * 60),
        lock_owner: lock_owner(),
    }
}

/// Who this process is, for the deploy lock: `user@host (pid N)`.
pub fn lock_owner() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".to_owned());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown-host".to_owned());
    format!("{user}@{host} (pid {})", std::process::id())
}

/// The URL users reach a host router listening on `listen` at: unspecified addresses
/// (`0.0.0.0`, `::`) are reached on loopback.
pub fn host_base_url(listen: SocketAddr) -> String {
    let ip = match listen.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}", SocketAddr::new(ip, listen.port()))
}

/// Opens the configured provider for `command` (the command's name, for messages).
pub async fn open(config: &Config, command: &str) -> Result<Opened> {
    let settings = engine_settings(config);
    match config.provider {
        ProviderKind::Host => open_host(config, settings, command).await,
        ProviderKind::Aws => open_aws(config, settings, command).await,
    }
}

async fn open_host(config: &Config, settings: Settings, command: &str) -> Result<Opened> {
    // WIRE: host provider.
    //   let ports = flotilla_host::connect(&host_settings(config)).await?;
    //   Ok(Opened {
    //       engine: Engine::new(ports, settings),
    //       base_url: Some(host_base_url(config.host.listen)),
    //       logs: Some(Box::new(..)),
    //   })
    let _ = (config, settings);
    Err(NotBuiltIn::provider(ProviderKind::Host, command).into())
}

async fn open_aws(config: &Config, settings: Settings, command: &str) -> Result<Opened> {
    // WIRE: AWS provider.
    //   let ports = flotilla_aws::connect(&aws_settings(config)).await?;
    //   Ok(Opened { engine: Engine::new(ports, settings), base_url, logs })
    let _ = (config, settings);
    Err(NotBuiltIn::provider(ProviderKind::Aws, command).into())
}

/// `flotilla host serve`: runs the host daemon in the foreground until SIGTERM or Ctrl-C.
pub async fn host_serve(config: &Config) -> Result<()> {
    // WIRE: host provider: flotilla_host::serve(&host_settings(config), shutdown).await
    let _ = config;
    Err(NotBuiltIn::provider(ProviderKind::Host, "host serve").into())
}

/// `flotilla host stop`: stops a running host daemon (its versions keep their state and come
/// back when it starts again).
pub async fn host_stop(config: &Config) -> Result<()> {
    // WIRE: host provider.
    let _ = config;
    Err(NotBuiltIn::provider(ProviderKind::Host, "host stop").into())
}

/// What `flotilla agent` was asked to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentRequest {
    /// Where the agent accepts traffic (`--listen`).
    pub listen: Option<SocketAddr>,
    /// The port the app is told to listen on (`--app-port`).
    pub app_port: Option<u16>,
    /// The app's command and arguments.
    pub command: Vec<String>,
}

/// `flotilla agent`: wraps the app in a container. Returns the app's exit status, which the
/// process exits with. `config` is `None` when no `flotilla.toml` is present (inside a container
/// the configuration usually comes from `FLOTILLA_*` variables alone).
pub async fn agent(config: Option<&Config>, request: &AgentRequest) -> Result<u8> {
    // WIRE: agent: flotilla_agent::run(..).await
    let _ = (config, request);
    Err(NotBuiltIn {
        component: Component::Agent,
        command: "agent".to_owned(),
    }
    .into())
}

/// A `flotilla baseline` subcommand.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BaselineRequest {
    /// Create or update the stack.
    Up {
        /// Print a JSON document instead of progress.
        json: bool,
    },
    /// Show the stack's state and outputs.
    Show {
        /// Print JSON.
        json: bool,
    },
    /// Print the CloudFormation template.
    Template,
    /// Delete the stack.
    Down {
        /// Delete even while versions run.
        force: bool,
    },
}

/// `flotilla baseline ...`.
pub async fn baseline(config: &Config, request: &BaselineRequest) -> Result<()> {
    // WIRE: baseline (issue 6).
    let _ = config;
    let command = match request {
        BaselineRequest::Up { .. } => "baseline up",
        BaselineRequest::Show { .. } => "baseline show",
        BaselineRequest::Template => "baseline template",
        BaselineRequest::Down { .. } => "baseline down",
    };
    Err(NotBuiltIn {
        component: Component::Baseline,
        command: command.to_owned(),
    }
    .into())
}

/// `flotilla teardown --all --baseline`: after every version is gone, delete the baseline stack.
pub async fn teardown_baseline(config: &Config) -> Result<()> {
    // WIRE: baseline (issue 6).
    let _ = config;
    Err(NotBuiltIn {
        component: Component::Baseline,
        command: "teardown --all --baseline".to_owned(),
    }
    .into())
}

/// `flotilla aws deployer-policy`: the IAM policy a deploying user or CI role needs, as JSON.
pub async fn aws_deployer_policy(config: Option<&Config>) -> Result<serde_json::Value> {
    // WIRE: baseline (issue 6): flotilla_baseline::deployer_policy(..)
    let _ = config;
    Err(NotBuiltIn::provider(ProviderKind::Aws, "aws deployer-policy").into())
}

/// The environment variable whose presence means the binary runs as an AWS Lambda custom runtime.
pub const LAMBDA_RUNTIME_VAR: &str = "AWS_LAMBDA_RUNTIME_API";

/// Runs the reaper as an AWS Lambda custom runtime (called by `main` instead of parsing the
/// command line when [`LAMBDA_RUNTIME_VAR`] is set).
pub async fn run_lambda() -> Result<()> {
    // WIRE: AWS provider (issue 5): lambda_runtime::run(..) over the same Engine::reap.
    Err(NotBuiltIn::provider(ProviderKind::Aws, "(lambda reaper)").into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_reach_unspecified_addresses_on_loopback() {
        let check = |listen: &str, want: &str| {
            let addr: SocketAddr = listen.parse().expect("valid");
            assert_eq!(host_base_url(addr), want);
        };
        check("127.0.0.1:8080", "http://127.0.0.1:8080");
        check("0.0.0.0:80", "http://127.0.0.1:80");
        check("[::]:8080", "http://[::1]:8080");
        check("192.168.1.5:9000", "http://192.168.1.5:9000");
    }

    #[test]
    fn missing_provider_message_names_it() {
        let err = NotBuiltIn::provider(ProviderKind::Host, "status");
        assert_eq!(
            err.to_string(),
            "the host provider is not built into this flotilla yet, so `flotilla status` cannot run"
        );
        assert!(err.hint().contains("crates/flotilla-host"));
    }
}
