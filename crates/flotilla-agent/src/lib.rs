//! flotilla-agent: the sidecar that wraps an app in its container and does what the host router
//! does on the host: counts live sessions, knows whether its version is draining, refuses new
//! sessions while it drains, reports readiness for the reaper, and keeps health honest.
//!
//! `flotilla agent [--listen ADDR] [--app-port PORT] -- COMMAND...` (wired in flotilla-cli) is:
//!
//! ```no_run
//! use std::sync::Arc;
//! use flotilla_agent::{AgentFlags, AgentSettings, DrainSource, StaticSource};
//!
//! # async fn cli() -> Result<u8, Box<dyn std::error::Error>> {
//! let env = |k: &str| std::env::var(k).ok();
//! let flags = AgentFlags { listen: None, app_port: None, command: vec!["./server".into()] };
//! let settings = AgentSettings::from_env(env, flags)?;
//! // The drain source: a local one if configured, SSM on ECS, else always `active`.
//! let source: Arc<dyn DrainSource> = match flotilla_agent::local_source_from_env(env)? {
//!     Some(local) => local,
//!     // On ECS: flotilla_aws::agent_ssm::drain_source_from_env().await (the drain board or SSM)
//!     None => Arc::new(StaticSource::active()),
//! };
//! let outcome = flotilla_agent::run_with_signals(settings, source).await?;
//! Ok(outcome.exit_code) // exit the process with it
//! # }
//! ```
//!
//! What a running agent does:
//! - starts COMMAND with `PORT=<app port>` in its own process group, and proxies
//!   `--listen` (default `0.0.0.0:8000`, or `:8001` when the app uses 8000: the container port)
//!   to `127.0.0.1:<app port>` through flotilla-proxy, stamping `X-Flotilla-Deployment: <id>` on
//!   responses, serving `/_flotilla/client.js`, and injecting it into HTML when configured;
//! - answers the health path itself (see [`health`]): `200` with the drain state while the app's
//!   own health path answers 2xx (draining too), `503` otherwise;
//! - while the version drains (or the agent stops), answers requests without this version's
//!   affinity with `503` + `Retry-After` (see `gate`);
//! - polls its [`DrainSource`] every `poll` ±20 %, backing off on throttling, writes readiness
//!   (from `flotilla_core::drain::DrainTracker`) only when it changes, and prints one CloudWatch
//!   EMF `ShutdownReady` line per poll on stdout (see [`poll`]);
//! - on SIGTERM/SIGINT, runs the stop sequence (see [`run`](mod@run)) and exits with the app's
//!   status.
//!
//! When the agent is PID 1 of a container it does not reap orphaned grandchildren of the app;
//! apps that fork daemons should run with an init (`initProcessEnabled` on ECS).
//!
//! Modules:
//! - [`settings`]: [`AgentSettings`] and how they are read from `FLOTILLA_*` variables.
//! - [`identity`]: deployment, version and instance ids; the ECS task id from task metadata.
//! - [`source`]: the [`DrainSource`] trait and the file, HTTP and static sources.
//! - [`source_health`]: whether the drain source works; persistent failures.
//! - [`poll`]: the poll loop, its back-off and the EMF line; [`poll::Poller`] runs it alone.
//! - [`health`]: probing the app and the health document.
//! - `gate`: the routing policy (health, draining refusals, forwarding).
//! - `state`: the live state shared by the parts, and [`SessionCounts`].
//! - [`launch`]: what every agent executable shares: logging, arguments, `install`.
//! - [`child`]: the app process, signals and exit codes.
//! - [`http`]: a small HTTP client for probes, metadata and the HTTP source.
//! - [`run`](mod@run): the life of the agent and the stop sequence.
#![forbid(unsafe_code)]

pub mod child;
mod gate;
pub mod health;
pub mod http;
pub mod identity;
pub mod launch;
pub mod poll;
pub mod protection;
pub mod run;
pub mod settings;
pub mod source;
pub mod source_health;
mod state;

pub use child::{StopSignal, exit_code};
pub use gate::{RETRY_AFTER_SECONDS, has_affinity, refusal};
pub use identity::{Identity, task_id_from_metadata};
pub use run::{AgentError, AgentOutcome, StopReport, run, run_with_signals};
pub use settings::{AgentFlags, AgentSettings, SettingsError};
pub use source::{
    DrainError, DrainErrorKind, DrainSource, FileSource, HttpSource, StaticSource,
    local_source_from_env,
};
pub use state::{SessionCounts, takes_new_sessions};

/// Whether the agent runs in an ECS task (the task metadata endpoint is set): the CLI then uses
/// the SSM drain source unless a local one is configured.
pub fn on_ecs(lookup: impl Fn(&str) -> Option<String>) -> bool {
    lookup(identity::ECS_METADATA_ENV).is_some_and(|v| !v.is_empty())
}
