//! The only place that knows which provider crates exist: it turns the resolved [`Config`] into an
//! [`Engine`] over the configured provider's ports, and hosts the provider-specific commands.
//!
//! # Contract for provider engineers
//!
//! Wiring a provider means editing only the `host`/`aws` arms below (search for `WIRE:`), plus
//! adding the crate to `crates/flotilla-cli/Cargo.toml`. Nothing else in the CLI changes.
//!
//! - [`open`] must return an [`Opened`] for the configured provider:
//!   - `workflows`: where the workflows run, the one seam between the commands and a provider
//!     (`flotilla_engine::workflows::Workflows`). Either `Arc::new(Engine::new(ports,
//!     engine_settings(config)))`, the engine in this process over your crate's ports (AWS), or
//!     your crate's client of a process that runs the engine itself (host:
//!     `flotilla_host::connect_reporting(&HostSettings { .. }, engine_settings(config))`, whose
//!     daemon runs each workflow it is sent). Fill your settings struct from [`Config`]
//!     (`config.host`, `config.aws`, `config.app`, `config.drain`, `config.reaper`; `config.root`
//!     is the app directory a deploy builds from; `config.host.state_dir` is already absolute).
//!     You may adjust the returned `Settings` (e.g. a provider-specific `health_poll` or
//!     `budget`) before building the engine.
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
//! - A problem the user fixes by changing configuration or running another command first (a
//!   missing baseline, a missing key) is best returned as a `crate::exit::UsageError` (exit 2,
//!   its `hint` printed last); anything else without a typed cause exits 1.
//! - State today: every entry point is wired (the baseline ones in `crate::baseline`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use async_trait::async_trait;
use flotilla_core::reaper::ReapPolicy;
use flotilla_core::routing::RuleBudget;
use flotilla_core::{DeploymentId, InstanceId};
use flotilla_engine::workflows::{Outcome, Ran, Workflow, Workflows, never};
use flotilla_engine::{Progress, Settings};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::config::{Config, ProviderKind};

/// What a provider gives the CLI once opened.
pub struct Opened {
    /// Where the workflows run: an [`Engine`] in this process (AWS), or the host daemon. The
    /// commands know no more of a provider than this seam.
    pub workflows: Arc<dyn Workflows>,
    /// Where users' requests arrive (`http://127.0.0.1:8080`), for `verify`; `None` if unknown.
    pub base_url: Option<String>,
    /// Where `logs` reads from; `None` falls back to `Compute::recent_logs`.
    pub logs: Option<Box<dyn LogSource>>,
}

impl Opened {
    /// Runs `workflow` to its end.
    pub async fn run(&self, workflow: Workflow, progress: &dyn Progress) -> Result<Outcome> {
        match self.workflows.run(workflow, progress, never()).await? {
            Ran::Finished(outcome) => Ok(outcome),
            Ran::Interrupted => anyhow::bail!("internal error: a workflow nobody interrupted was"),
        }
    }

    /// Runs `workflow` until it ends or Ctrl-C; `None` after Ctrl-C (the workflow stopped
    /// between two steps and its deploy lock was released).
    pub async fn run_until_ctrl_c(
        &self,
        workflow: Workflow,
        progress: &dyn Progress,
    ) -> Result<Option<Outcome>> {
        let ctrl_c = Box::pin(async {
            let _ = tokio::signal::ctrl_c().await;
        });
        Ok(
            match self.workflows.run(workflow, progress, ctrl_c).await? {
                Ran::Finished(outcome) => Some(outcome),
                Ran::Interrupted => None,
            },
        )
    }
}

/// The error of a workflow that reported another outcome than its own (a daemon bug).
pub fn unexpected(outcome: &Outcome) -> anyhow::Error {
    anyhow::anyhow!("internal error: the workflow reported {outcome:?}")
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
        local_holders: Some(flotilla_engine::workflows::LocalHolders {
            host: flotilla_process::procfs::hostname(),
            // Whether process `pid` of this host runs (a zombie, dead but not yet reaped, does not).
            alive: flotilla_process::procfs::alive,
        }),
    }
}

/// Who this process is, for the deploy lock: `user@host (pid N)`.
pub fn lock_owner() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".to_owned());
    flotilla_core::lock::owner(
        &user,
        &flotilla_process::procfs::hostname(),
        std::process::id(),
    )
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

/// Where users reach a host app: its first host name behind the front door (not a wildcard),
/// else its router's `listen` address.
pub fn host_public_url(host: &crate::config::HostConfig) -> String {
    host.hosts
        .iter()
        .flatten()
        .find(|h| !h.starts_with("*."))
        .map(|h| format!("http://{h}"))
        .unwrap_or_else(|| host_base_url(host.listen))
}

/// Opens the configured provider for `command` (the command's name, for messages); what it
/// says on the way (a daemon it started) follows `out`.
pub async fn open(config: &Config, command: &str, out: crate::output::Output) -> Result<Opened> {
    let settings = engine_settings(config);
    match config.provider {
        ProviderKind::Host => open_host(config, settings, out).await,
        ProviderKind::Aws => open_aws(config, settings, command).await,
    }
}

async fn open_host(
    config: &Config,
    engine_settings: Settings,
    out: crate::output::Output,
) -> Result<Opened> {
    let settings = host_settings(config)?;
    let connection = flotilla_host::connect_reporting(&settings, engine_settings)
        .await
        .map_err(|e| match e {
            // Its own error, for its own exit code and hint (`classify_error`).
            e @ flotilla_host::HostError::ProtocolMismatch { .. } => anyhow::Error::new(e),
            e => anyhow::Error::new(e.into_port("connect to", "the flotilla host daemon")),
        })?;
    if let Some(started) = &connection.started {
        out.note(&format!(
            "started the flotilla host daemon (pid {}) in the background; its log is {}",
            started.pid,
            started.log.display()
        ));
    }
    for warning in &connection.warnings {
        out.warn(warning);
    }
    if let Some(previous) = &connection.daemon.previous {
        out.note(&format!(
            "a previous daemon (pid {}) handed over to this one (pid {}) and is still draining: \
             it serves {} session(s) on {} connection(s) it held, counted in the sessions below",
            previous.pid,
            connection.daemon.pid,
            previous.live_sessions(),
            previous.connections
        ));
    }
    let logs_dir = settings
        .resolved()
        .map(|s| s.logs_dir())
        .unwrap_or_else(|_| settings.logs_dir());
    let workflows = connection.workflows;
    Ok(Opened {
        workflows: workflows.clone(),
        base_url: Some(host_public_url(&config.host)),
        logs: Some(Box::new(HostLogs {
            logs_dir,
            workflows,
        })),
    })
}

/// HTTPS on the host router, from the resolved `[host] https_listen` and its certificates.
fn https_settings(https: &crate::config::HttpsConfig) -> flotilla_host::settings::HttpsSettings {
    use crate::config::TlsCertificates;
    use flotilla_host::settings::{AcmeChallenge, AcmeSettings, CertificateSource};
    let certificates = match &https.certificates {
        TlsCertificates::Files { certificate, key } => CertificateSource::Files {
            certificate: certificate.clone(),
            key: key.clone(),
        },
        TlsCertificates::Acme {
            hosts,
            email,
            directory,
            challenge,
            ca_file,
        } => {
            let mut acme = AcmeSettings::new(hosts.clone());
            acme.email = email.clone();
            acme.directory = directory.clone();
            acme.challenge = if challenge == "tls-alpn-01" {
                AcmeChallenge::TlsAlpn01
            } else {
                AcmeChallenge::Http01
            };
            acme.ca_file = ca_file.clone();
            CertificateSource::Acme(acme)
        }
    };
    flotilla_host::settings::HttpsSettings {
        listen: https.listen,
        certificates,
    }
}

/// The host provider's settings, from the resolved config.
fn host_settings(config: &Config) -> Result<flotilla_host::HostSettings> {
    let command = config.host.command.clone().ok_or_else(|| {
        anyhow::anyhow!(
            "missing `command` in [host]: provider = \"host\" needs the command that starts one \
             instance of your app (it must listen on $PORT)"
        )
    })?;
    let mut s = flotilla_host::HostSettings::new(config.name.clone(), config.root.clone(), command);
    s.state_dir = config.host.state_dir.clone();
    s.listen = config.host.listen;
    s.admin_listen = config.host.admin_listen;
    s.admin_token_file = config.host.admin_token_file.clone();
    s.build = config.host.build.clone();
    s.instances = config.host.instances;
    s.autoscale = config.host.autoscale;
    s.keep_releases = config.host.keep_releases;
    s.upgrade_deadline = config.host.upgrade_deadline;
    s.https = config.host.https.as_ref().map(https_settings);
    s.health_path = config.app.health_path.clone();
    s.affinity_header = config.app.affinity_header.clone();
    s.affinity_query = config.app.affinity_query.clone();
    s.inject_client = config.app.inject_client;
    s.stale = config.app.stale.clone();
    s.health_timeout = config.app.health_timeout;
    s.stop_timeout = config.app.stop_timeout;
    s.drain_poll = config.drain.poll;
    s.drain_grace = config.drain.grace;
    s.reaper_policy = engine_settings(config).policy;
    s.reaper_interval = config.reaper.interval;
    s.front_door =
        config
            .host
            .hosts
            .clone()
            .map(|hosts| flotilla_host::settings::FrontDoorMember {
                socket: config
                    .host
                    .front_door_socket
                    .clone()
                    .unwrap_or_else(flotilla_host::front_door::server::default_socket),
                hosts,
            });
    s.access_log =
        config
            .host
            .access_log
            .clone()
            .map(|path| flotilla_host::access_log::AccessLogSettings {
                path,
                max_bytes: u64::from(config.host.access_log_max_mb) * 1024 * 1024,
                keep: config.host.access_log_keep,
            });
    // The background daemon reads the same config: same file, same name, same provider.
    let exe = std::env::current_exe()?;
    let mut argv: Vec<std::ffi::OsString> = vec![exe.into_os_string()];
    if let Some(file) = &config.file {
        argv.push("--config".into());
        argv.push(file.clone().into_os_string());
    }
    argv.extend([
        "--name".into(),
        config.name.to_string().into(),
        "--provider".into(),
        "host".into(),
    ]);
    argv.extend(["host".into(), "serve".into()]);
    s.serve_command = Some(argv);
    Ok(s)
}

/// Instance logs read straight from the files the host supervisor writes.
struct HostLogs {
    logs_dir: std::path::PathBuf,
    workflows: Arc<dyn Workflows>,
}

#[async_trait]
impl LogSource for HostLogs {
    async fn stream(&self, query: &LogQuery, out: mpsc::Sender<LogLine>) -> Result<()> {
        let ids = match &query.id {
            Some(id) => vec![id.clone()],
            // Every version that has instances.
            None => match self
                .workflows
                .run(Workflow::Status, &flotilla_engine::events::Silent, never())
                .await?
            {
                Ran::Finished(Outcome::Status(report)) => report
                    .versions
                    .into_iter()
                    .filter(|v| v.compute.is_some())
                    .map(|v| v.record.version.id)
                    .collect(),
                Ran::Finished(other) => return Err(unexpected(&other)),
                Ran::Interrupted => return Ok(()),
            },
        };
        let mut readers = Vec::new();
        for id in ids {
            match flotilla_host::logs::LogReader::open(&self.logs_dir, &id) {
                Ok(reader) => readers.push((id, reader)),
                Err(e) if query.id.is_some() => return Err(e.into()),
                Err(_) => {}
            }
        }
        let send = |id: &DeploymentId, lines: Vec<(String, String)>| {
            let out = out.clone();
            let id = id.clone();
            async move {
                for (instance, line) in lines {
                    let instance = InstanceId::new(&instance).ok();
                    if out
                        .send(LogLine {
                            id: id.clone(),
                            instance,
                            line,
                        })
                        .await
                        .is_err()
                    {
                        return false;
                    }
                }
                true
            }
        };
        for (id, reader) in &mut readers {
            if !send(id, reader.tail(query.lines)?).await {
                return Ok(());
            }
        }
        if !query.follow {
            return Ok(());
        }
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            for (id, reader) in &mut readers {
                if !send(id, reader.poll()?).await {
                    return Ok(());
                }
            }
            if out.is_closed() {
                return Ok(());
            }
        }
    }
}

#[cfg(feature = "aws")]
async fn open_aws(config: &Config, settings: Settings, command: &str) -> Result<Opened> {
    // A deploy needs every baseline output; the other commands only the cluster and listener.
    let needs = if command == "deploy" {
        flotilla_aws::Needs::Deploy
    } else {
        flotilla_aws::Needs::Operate
    };
    let aws = aws_settings(config);
    // Where `.flotilla/` is not kept (a CI job), the outputs come from the stack itself.
    if !aws.baseline_path().exists() && aws.baseline_overrides.listener_arn.is_none() {
        crate::baseline::cache_from_stack(config).await;
    }
    let sdk = flotilla_aws::sdk_config(&aws).await;
    let ports = flotilla_aws::connect_with(&aws, flotilla_aws::Clients::new(&sdk), needs)?;
    Ok(Opened {
        workflows: Arc::new(flotilla_engine::Engine::new(ports, settings)),
        base_url: aws_base_url(&aws.baseline_path()),
        logs: None,
    })
}

/// After an AWS command failed on something that was not found: the cached baseline outputs
/// checked against the stack (refreshed or removed), as a report to put before the error.
#[cfg(feature = "aws")]
pub async fn recheck_aws_cache(config: &Config) -> Option<crate::exit::Reported> {
    crate::baseline::recheck_cache(config).await
}

/// Before `teardown --all --baseline`: what makes the stack unusable (gone, or deleted part-way),
/// in which case the versions are skipped and only the stack is finished.
#[cfg(feature = "aws")]
pub async fn aws_stack_unusable_for_teardown(config: &Config) -> Result<Option<String>> {
    crate::baseline::stack_unusable_for_teardown(config).await
}

/// `flotilla logs --follow` on AWS: the last `lines` lines of each of `history`, then every new
/// line of `only` (or of every version) until `out` is closed; how it follows goes to `notice`.
#[cfg(feature = "aws")]
pub async fn aws_follow_logs(
    config: &Config,
    only: Option<DeploymentId>,
    history: Vec<DeploymentId>,
    lines: usize,
    out: mpsc::Sender<LogLine>,
    notice: impl Fn(&str),
) -> Result<()> {
    use flotilla_aws::logtail::{TailScope, Tailed};
    let aws = aws_settings(config);
    let sdk = flotilla_aws::sdk_config(&aws).await;
    let Some(tail) = flotilla_aws::log_tail(&aws, &flotilla_aws::Clients::new(&sdk))? else {
        return Err(crate::exit::UsageError {
            message: "no log group is configured to follow".to_owned(),
            hint: "run `flotilla baseline up`, or set [aws] log_group".to_owned(),
        }
        .into());
    };
    let scope = TailScope {
        only,
        history,
        lines,
        interval: Duration::from_secs(1),
    };
    let (tx, mut rx) = mpsc::channel(1024);
    let follow = async move {
        let result = tail.follow(&scope, &tx).await;
        drop(tx);
        result
    };
    let forward = async {
        while let Some(tailed) = rx.recv().await {
            match tailed {
                Tailed::Line { id, task, message } => {
                    let line = LogLine {
                        id,
                        instance: None,
                        line: format!("[{task}] {message}"),
                    };
                    if out.send(line).await.is_err() {
                        break;
                    }
                }
                Tailed::Notice(text) => notice(&text),
            }
        }
    };
    let (result, ()) = tokio::join!(follow, forward);
    Ok(result?)
}

/// The static agent for `arch` that `scripts/build-static.sh` made: beside the running binary
/// (a release archive ships them together), or in `target/static/` when it runs from
/// `target/<profile>/`.
#[cfg(feature = "aws")]
pub(crate) fn find_static_agent(
    running: &std::path::Path,
    arch: flotilla_baseline::Architecture,
) -> Option<std::path::PathBuf> {
    let name = format!("flotilla-aws-agent-{}", arch.as_lambda());
    flotilla_aws::stack::artefact::static_candidates_named(running, &name)
        .into_iter()
        .find(|p| p.is_file())
}

/// The baseline's grants to its execution role for the app's `[secrets]`.
#[cfg(feature = "aws")]
pub(crate) fn baseline_secret_grants(config: &Config) -> flotilla_baseline::SecretGrants {
    flotilla_aws::secrets::baseline_grants(config.env.secrets.values())
}

/// The AWS provider's settings from the resolved config.
#[cfg(feature = "aws")]
pub(crate) fn aws_settings(config: &Config) -> flotilla_aws::AwsSettings {
    let a = &config.aws;
    let mut s = flotilla_aws::AwsSettings::new(config.name.clone());
    s.declared_secrets = config.env.secrets.values().cloned().collect();
    s.region = a.region.clone();
    s.profile = a.profile.clone();
    s.endpoint_url = a.endpoint_url.clone();
    s.baseline_file = Some(
        config
            .root
            .join(".flotilla")
            .join(config.name.as_str())
            .join("baseline.json"),
    );
    s.baseline_overrides = flotilla_aws::BaselineOutputs {
        listener_arn: a.listener_arn.clone(),
        subnets: a.subnets.clone(),
        security_groups: a.security_groups.clone(),
        cluster: a.cluster.clone(),
        log_group: a.log_group.clone(),
        repository: a.repository.clone(),
        execution_role_arn: a.execution_role_arn.clone(),
        task_role_arn: a.task_role_arn.clone(),
        vpc_id: None,
        secret_grants: None,
        // Only from the baseline's outputs: the board is for the baseline's task role.
        drain_bucket: None,
    };
    s.task.cpu = a.cpu;
    s.task.memory = a.memory;
    s.task.app_port = config.app.port;
    s.task.container_port =
        flotilla_aws::settings::TaskSettings::default_container_port(config.app.port);
    // The app's own start command inside the image ([aws] command), run by the agent through a
    // shell. Not [host] command: that one starts the app on this machine.
    s.task.app_command = config
        .aws
        .command
        .as_ref()
        .map(|c| vec!["/bin/sh".to_owned(), "-c".to_owned(), c.clone()])
        .unwrap_or_default();
    s.task.architecture = a.architecture;
    s.task.read_only_root = a.read_only_root;
    s.task.user = a.user.clone();
    s.task.enable_execute_command = a.enable_execute_command;
    s.task.agent_image = a.agent_image.clone();
    if s.task.agent_image.is_none() {
        s.task.agent_binary = std::env::current_exe()
            .ok()
            .and_then(|exe| find_static_agent(&exe, a.architecture));
    }
    s.task.inject_client = config.app.inject_client;
    s.task.lb_idle_timeout_seconds = a.idle_timeout_seconds;
    s.task.autoscaling = a.autoscaling.as_ref().map(|x| flotilla_aws::Autoscaling {
        min: x.min,
        max: x.max,
        cpu_percent: x.cpu_percent,
        memory_percent: x.memory_percent,
        requests_per_target: x.requests_per_target,
    });
    s.task.capacity = flotilla_aws::Capacity {
        spot_percent: a.spot_percent,
        on_demand_base: a.on_demand_base,
    };
    s.task.health_check_grace_seconds = config.health_check_grace_seconds();
    s.task.drain_poll_seconds = config.drain.poll.as_secs();
    s.task.drain_grace_seconds = config.drain.grace.as_secs();
    s.task.stop_timeout_seconds =
        u32::try_from(config.app.stop_timeout.as_secs()).unwrap_or(u32::MAX);
    s.routing.health_path = config.app.health_path.clone();
    s.routing.affinity_header = config.app.affinity_header.clone();
    s.routing.affinity_query = config.app.affinity_query.clone();
    s.routing.stale_status = config.app.stale.status;
    s
}

/// `url` from the baseline's cached outputs, if the file exists.
#[cfg(feature = "aws")]
fn aws_base_url(path: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let doc: serde_json::Value = serde_json::from_str(&text).ok()?;
    doc.get("url")?.as_str().map(str::to_owned)
}

/// `flotilla host serve`: runs the host daemon in the foreground. SIGTERM (a service manager's
/// stop or restart, an upgrade) makes it exit and leave the app's instances running for the next
/// daemon to adopt; Ctrl-C (SIGINT, someone at the terminal) and `flotilla host stop` stop them.
pub async fn host_serve(config: &Config) -> Result<()> {
    let settings = host_settings(config)?;
    // The daemon logs to stderr (the background daemon's stderr is its log file).
    init_daemon_log();
    use flotilla_host::OnExit;
    let shutdown = async {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return OnExit::StopInstances;
                }
            };
        tokio::select! {
            _ = term.recv() => OnExit::LeaveRunning,
            _ = tokio::signal::ctrl_c() => OnExit::StopInstances,
        }
    };
    flotilla_host::serve_until(&settings, shutdown).await?;
    Ok(())
}

/// `flotilla host front-door`: runs the shared front door in the foreground until Ctrl-C or
/// SIGTERM.
pub async fn host_front_door(args: &crate::cli::FrontDoorArgs) -> Result<()> {
    init_daemon_log();
    let mut settings = flotilla_host::front_door::server::FrontDoorSettings::new();
    settings.http = (!args.no_http).then_some(args.http);
    settings.https = (!args.no_https).then_some(args.https);
    if let Some(socket) = &args.socket {
        settings.socket = socket.clone();
    }
    settings.hold = Duration::from_secs(args.hold);
    settings.socket_group = args.socket_group.clone();
    let shutdown = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    };
    flotilla_host::front_door::server::run(settings, shutdown).await?;
    Ok(())
}

/// Logging for a foreground server: `FLOTILLA_LOG` (default `info`) to stderr, no colours.
fn init_daemon_log() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FLOTILLA_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}

/// `flotilla host stop`: stops a running host daemon (its versions keep their state and come
/// back when it starts again).
pub async fn host_stop(config: &Config) -> Result<()> {
    let settings = host_settings(config)?;
    let wait = config.app.stop_timeout + Duration::from_secs(30);
    let out = crate::output::Output {
        json: false,
        verbose: 0,
    };
    if flotilla_host::stop_daemon(&settings, wait).await? {
        out.note("the flotilla host daemon stopped; its versions start again with it");
    } else {
        out.note("no flotilla host daemon was running");
    }
    Ok(())
}

/// What `flotilla host upgrade` reports.
pub type UpgradeReport = flotilla_host::UpgradeReport;

/// `flotilla host upgrade`: hands the running daemon over to a new one started from `binary`.
pub async fn host_upgrade(config: &Config, binary: std::path::PathBuf) -> Result<UpgradeReport> {
    use flotilla_engine::ports::ErrorKind;
    let settings = host_settings(config)?;
    match flotilla_host::upgrade_daemon(&settings, Some(binary)).await {
        Ok(Ok(report)) => Ok(report),
        Ok(Err(e)) if e.kind == ErrorKind::Conflict => Err(crate::exit::Reported {
            exit: crate::exit::Exit::Refused,
            message: format!("upgrade refused: {}", e.message),
            hint: Some("run `flotilla status` to see what the daemons serve".to_owned()),
        }
        .into()),
        Ok(Err(e)) => Err(crate::exit::Reported {
            exit: crate::exit::Exit::Provider,
            message: format!("upgrade failed: {}", e.message),
            hint: Some(
                "read the log named above for why the new daemon did not start, fix it, and \
                 run `flotilla host upgrade` again"
                    .to_owned(),
            ),
        }
        .into()),
        Err(flotilla_host::HostError::Unavailable { socket, .. }) => Err(crate::exit::Reported {
            exit: crate::exit::Exit::Provider,
            message: format!(
                "no flotilla host daemon answers on {}: nothing to upgrade",
                socket.display()
            ),
            hint: Some(
                "any command (e.g. `flotilla status`) starts one with this executable".to_owned(),
            ),
        }
        .into()),
        Err(e) => Err(anyhow::Error::new(
            e.into_port("upgrade", "the flotilla host daemon"),
        )),
    }
}

/// What `flotilla host install` / `uninstall` were asked to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceRequest {
    /// A user unit instead of a system unit.
    pub user: bool,
    /// Run `systemctl` (enable and start, or disable and stop) when systemd runs.
    pub systemctl: bool,
    /// The user a system unit runs as.
    pub run_as: Option<String>,
}

/// What `host install` / `uninstall` did, as printed (`--json` prints it whole).
pub type ServiceOutcome = flotilla_host::service::Outcome;

/// Which systemd manager a unit is for.
pub type ServiceScope = flotilla_host::service::Scope;

fn service_scope_and_dir(
    request: &ServiceRequest,
) -> Result<(flotilla_host::service::Scope, std::path::PathBuf)> {
    use flotilla_host::service::{Scope, unit_dir};
    let scope = if request.user {
        Scope::User
    } else {
        Scope::System
    };
    let xdg = std::env::var_os("XDG_CONFIG_HOME").map(std::path::PathBuf::from);
    let home = std::env::var_os("HOME").map(std::path::PathBuf::from);
    let dir = unit_dir(scope, xdg.as_deref(), home.as_deref()).ok_or_else(|| {
        crate::exit::UsageError {
            message: "neither XDG_CONFIG_HOME nor HOME is set: no place for a user unit".to_owned(),
            hint: "set HOME, or install a system unit (without --user, as root)".to_owned(),
        }
    })?;
    Ok((scope, dir))
}

/// A unit file that cannot be written for lack of permission is a usage problem: say how to
/// get one that can.
fn service_error(e: flotilla_host::service::ServiceError, user: bool) -> anyhow::Error {
    use flotilla_host::service::ServiceError;
    match e {
        ServiceError::File { ref source, .. }
            if source.kind() == std::io::ErrorKind::PermissionDenied && !user =>
        {
            crate::exit::UsageError {
                message: e.to_string(),
                hint: "a system unit needs root: run `sudo flotilla host install` (or \
                       uninstall), or use --user for a unit of your own"
                    .to_owned(),
            }
            .into()
        }
        ServiceError::NotOurs { .. } => crate::exit::UsageError {
            message: e.to_string(),
            hint: "another app with the same deployment name has that unit: give this app \
                   another `name` in flotilla.toml, or uninstall the other app's service first"
                .to_owned(),
        }
        .into(),
        other => other.into(),
    }
}

/// `flotilla host install`: writes this app's systemd unit and, when asked and systemd runs,
/// enables and starts it.
pub fn host_install(config: &Config, request: &ServiceRequest) -> Result<ServiceOutcome> {
    host_settings(config)?;
    let Some(file) = &config.file else {
        return Err(crate::exit::UsageError {
            message: "`flotilla host install` needs a flotilla.toml: the service reads it"
                .to_owned(),
            hint: "run `flotilla init` in the app directory (or pass --config FILE), then install"
                .to_owned(),
        }
        .into());
    };
    let config_file = std::fs::canonicalize(file)?;
    let working_dir = std::fs::canonicalize(&config.root)?;
    let (scope, dir) = service_scope_and_dir(request)?;
    let user = request
        .run_as
        .clone()
        .or_else(|| flotilla_host::service::owner(&working_dir));
    let spec = flotilla_host::service::UnitSpec {
        name: config.name.clone(),
        exe: std::env::current_exe()?,
        config: config_file,
        working_dir,
        user,
        path_env: std::env::var("PATH").ok(),
        stop_timeout_secs: config.app.stop_timeout.as_secs() + 30,
        scope,
    };
    flotilla_host::service::install(&spec, &dir, request.systemctl)
        .map_err(|e| service_error(e, request.user))
}

/// The front door's systemd unit name.
pub const FRONT_DOOR_UNIT: &str = flotilla_host::service::FRONT_DOOR_UNIT;

/// `flotilla host front-door --install` / `--uninstall`: the front door's systemd unit.
pub fn front_door_service(
    args: &crate::cli::FrontDoorArgs,
    request: &ServiceRequest,
) -> Result<ServiceOutcome> {
    let (scope, dir) = service_scope_and_dir(request)?;
    let outcome = if args.install {
        let spec = flotilla_host::service::FrontDoorUnitSpec {
            exe: std::env::current_exe()?,
            args: args.run_args(),
            user: request.run_as.clone(),
            scope,
        };
        flotilla_host::service::install_front_door(&spec, &dir, request.systemctl)
    } else {
        flotilla_host::service::uninstall_front_door(scope, &dir, request.systemctl)
    };
    outcome.map_err(|e| service_error(e, request.user))
}

/// `flotilla host uninstall`: disables and stops this app's systemd unit and removes it.
pub fn host_uninstall(config: &Config, request: &ServiceRequest) -> Result<ServiceOutcome> {
    let (scope, dir) = service_scope_and_dir(request)?;
    flotilla_host::service::uninstall(&config.name, scope, &dir, request.systemctl)
        .map_err(|e| service_error(e, request.user))
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
    // In a container stderr is the task's log: everything the agent decides goes there.
    flotilla_agent::launch::init_logging();
    let env = |key: &str| std::env::var(key).ok();
    // A config file, when present, already holds the FLOTILLA_APP_* and FLOTILLA_DRAIN_* values of
    // the environment; its app port is passed as if it were the flag so that the agent's own
    // listen default is derived from the port the app really uses.
    let flags = flotilla_agent::AgentFlags {
        listen: request.listen,
        app_port: request.app_port.or(config.map(|c| c.app.port)),
        command: request.command.clone(),
    };
    let mut settings = flotilla_agent::AgentSettings::from_env(env, flags)?;
    if let Some(config) = config {
        settings.health_path = config.app.health_path.clone();
        settings.affinity_header = config.app.affinity_header.clone();
        settings.affinity_query = config.app.affinity_query.clone();
        settings.inject_client = config.app.inject_client;
        settings.set_stop_timeout(config.app.stop_timeout);
        settings.drain_poll = config.drain.poll;
        settings.drain_grace = config.drain.grace;
    }
    let source: std::sync::Arc<dyn flotilla_agent::DrainSource> =
        match flotilla_agent::local_source_from_env(env)? {
            Some(local) => local,
            #[cfg(feature = "aws")]
            None if flotilla_agent::on_ecs(env) => {
                flotilla_aws::agent_ssm::drain_source_from_env().await
            }
            #[cfg(not(feature = "aws"))]
            None if flotilla_agent::on_ecs(env) => return Err(without_aws::error()),
            None => std::sync::Arc::new(flotilla_agent::StaticSource::active()),
        };
    tracing::info!(
        program = "flotilla agent",
        version = env!("CARGO_PKG_VERSION"),
        "starting the flotilla agent"
    );
    let outcome = flotilla_agent::run_with_signals(settings, source).await?;
    Ok(outcome.exit_code)
}

/// A `flotilla baseline` subcommand.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BaselineRequest {
    /// Create or update the stack.
    Up {
        /// Print a JSON document instead of text.
        json: bool,
        /// Apply without asking.
        yes: bool,
        /// The binary the reaper Lambda runs; `None` for this one.
        reaper_binary: Option<std::path::PathBuf>,
        /// Resume a failed rollback first.
        continue_rollback: bool,
        /// Resources the resumed rollback skips.
        skip: Vec<String>,
        /// How long to wait for CloudFormation.
        timeout: Duration,
    },
    /// Show the stack's state and outputs.
    Show {
        /// Print JSON.
        json: bool,
        /// Only the cached outputs.
        offline: bool,
    },
    /// Print the CloudFormation template.
    Template,
    /// Delete the stack.
    Down {
        /// Print JSON.
        json: bool,
        /// Remove running versions first.
        force: bool,
        /// Do not ask.
        yes: bool,
        /// Resources of a `DELETE_FAILED` stack to leave.
        retain: Vec<String>,
        /// How long to wait for CloudFormation.
        timeout: Duration,
    },
}

/// `flotilla baseline ...`: the stack's lifecycle lives in `crate::baseline` over
/// `flotilla_aws::stack`.
#[cfg(feature = "aws")]
pub async fn baseline(
    config: &Config,
    request: &BaselineRequest,
    out: crate::output::Output,
) -> Result<()> {
    crate::baseline::run(config, request, out).await
}

/// `flotilla teardown --all --baseline`: after every version is gone, delete the baseline stack.
#[cfg(feature = "aws")]
pub async fn teardown_baseline(config: &Config, out: crate::output::Output) -> Result<()> {
    crate::baseline::teardown(config, out).await
}

/// `flotilla aws deployer-policy`: the IAM policy a deploying user or CI role needs, as JSON.
#[cfg(feature = "aws")]
pub async fn aws_deployer_policy(
    config: Option<&Config>,
    account_id: Option<&str>,
) -> Result<serde_json::Value> {
    crate::baseline::deployer_policy(config, account_id).await
}

/// The exit code and hint of an error a provider crate defines, if `cause` is one (the rest of
/// `crate::exit` knows only the engine's and the CLI's own errors).
pub(crate) fn classify_error(
    cause: &(dyn std::error::Error + 'static),
) -> Option<(crate::exit::Exit, Option<String>)> {
    use crate::exit::Exit;
    use flotilla_host::error::HostError;
    if let Some(HostError::AlreadyRunning { .. }) = cause.downcast_ref::<HostError>() {
        // A service unit's RestartPreventExitStatus names this code: retrying cannot help.
        debug_assert_eq!(
            Exit::Refused.code(),
            flotilla_host::service::ALREADY_RUNNING_EXIT
        );
        return Some((
            Exit::Refused,
            Some(
                "another daemon already serves this app's state directory: use it, or stop it \
                 with `flotilla host stop` first"
                    .to_owned(),
            ),
        ));
    }
    if let Some(HostError::PortTaken { .. } | HostError::Bind { .. }) =
        cause.downcast_ref::<HostError>()
    {
        return Some((
            Exit::Usage,
            Some(
                "choose a free address for `[host] listen` / `https_listen` / `admin_listen` in flotilla.toml, or \
                 stop the process named above"
                    .to_owned(),
            ),
        ));
    }
    if let Some(HostError::ProtocolMismatch { .. }) = cause.downcast_ref::<HostError>() {
        return Some((
            Exit::Usage,
            Some(
                "run `flotilla host upgrade` to hand the daemon over to this flotilla without \
                 cutting a session (or `flotilla host stop`; its versions start again with the \
                 next command), then run the command again"
                    .to_owned(),
            ),
        ));
    }
    if let Some(HostError::AdminToken(_)) = cause.downcast_ref::<HostError>() {
        return Some((
            Exit::Usage,
            Some(
                "fix `[host] admin_token_file` (or keep `admin_listen` on 127.0.0.1) in \
                 flotilla.toml, then run the command again"
                    .to_owned(),
            ),
        ));
    }
    #[cfg(feature = "aws")]
    if let Some(stack) = cause.downcast_ref::<flotilla_aws::stack::StackError>() {
        use flotilla_aws::stack::StackErrorClass;
        let exit = match stack.class() {
            StackErrorClass::Usage => Exit::Usage,
            StackErrorClass::Refused => Exit::Refused,
            StackErrorClass::Provider => Exit::Provider,
            StackErrorClass::Failed => Exit::Failure,
        };
        return Some((exit, Some(stack.hint())));
    }
    None
}

/// Whether `value` is a secret reference the AWS provider can read (`ssm:/path`, or an SSM or
/// Secrets Manager ARN); the error says what is wrong with it. Without the AWS provider built in
/// every value passes here (the configuration is refused at `provider` instead).
pub(crate) fn check_aws_secret_reference(value: &str) -> std::result::Result<(), String> {
    #[cfg(feature = "aws")]
    return flotilla_aws::secrets::SecretRef::parse(value).map(|_| ());
    #[cfg(not(feature = "aws"))]
    {
        let _ = value;
        Ok(())
    }
}

/// A `[host] hosts` entry as the front door compares it (lower case, no port or trailing dot), or
/// what is wrong with it.
pub(crate) fn check_front_door_host(value: &str) -> std::result::Result<String, String> {
    flotilla_host::front_door::sniff::normalize_host(value).ok_or_else(|| {
        "not a host name (use names like \"shop.example.com\" or \"*.example.com\", without a \
         scheme or path)"
            .to_owned()
    })
}

/// The environment variable whose presence means the binary runs as an AWS Lambda custom runtime.
pub const LAMBDA_RUNTIME_VAR: &str = "AWS_LAMBDA_RUNTIME_API";

/// Runs the reaper as an AWS Lambda custom runtime (called by `main` instead of parsing the
/// command line when [`LAMBDA_RUNTIME_VAR`] is set).
#[cfg(feature = "aws")]
pub async fn run_lambda() -> Result<()> {
    Ok(flotilla_aws::lambda::run().await?)
}

#[cfg(not(feature = "aws"))]
use without_aws::open_aws;
#[cfg(not(feature = "aws"))]
pub use without_aws::{
    aws_deployer_policy, aws_follow_logs, aws_stack_unusable_for_teardown, baseline,
    recheck_aws_cache, run_lambda, teardown_baseline,
};

/// The AWS entry points of a binary built without the `aws` feature: each refuses with the same
/// usage error, which says how to get a build that has them.
#[cfg(not(feature = "aws"))]
mod without_aws {
    use super::{BaselineRequest, Config, Opened, Result, Settings};

    /// The error every AWS entry point of this build returns.
    pub(super) fn error() -> anyhow::Error {
        anyhow::Error::new(crate::exit::UsageError {
            message: "this flotilla was built without the AWS provider (the `aws` cargo feature)"
                .to_owned(),
            hint: "install a build that has it (`cargo install --path crates/flotilla-cli`, whose \
                   default features include `aws`), or use `provider = \"host\"`"
                .to_owned(),
        })
    }

    pub(super) async fn open_aws(_: &Config, _: Settings, _: &str) -> Result<Opened> {
        Err(error())
    }

    /// `flotilla baseline ...` without the AWS provider.
    pub async fn baseline(_: &Config, _: &BaselineRequest, _: crate::output::Output) -> Result<()> {
        Err(error())
    }

    /// `flotilla teardown --all --baseline` without the AWS provider.
    pub async fn teardown_baseline(_: &Config, _: crate::output::Output) -> Result<()> {
        Err(error())
    }

    /// `flotilla aws deployer-policy` without the AWS provider.
    pub async fn aws_deployer_policy(
        _: Option<&Config>,
        _: Option<&str>,
    ) -> Result<serde_json::Value> {
        Err(error())
    }

    /// The reaper's Lambda runtime without the AWS provider.
    pub async fn run_lambda() -> Result<()> {
        Err(error())
    }

    /// No cache of baseline outputs to check without the AWS provider.
    pub async fn recheck_aws_cache(_: &Config) -> Option<crate::exit::Reported> {
        None
    }

    /// `teardown --all --baseline` without the AWS provider.
    pub async fn aws_stack_unusable_for_teardown(_: &Config) -> Result<Option<String>> {
        Err(error())
    }

    /// `logs --follow` on AWS without the AWS provider.
    pub async fn aws_follow_logs(
        _: &Config,
        _: Option<flotilla_core::DeploymentId>,
        _: Vec<flotilla_core::DeploymentId>,
        _: usize,
        _: tokio::sync::mpsc::Sender<super::LogLine>,
        _: impl Fn(&str),
    ) -> Result<()> {
        Err(error())
    }
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

    /// Without the `aws` feature (`.ci/run` runs this with `--no-default-features`), every AWS
    /// entry point refuses with a usage error that says how to get a build that has it.
    #[cfg(not(feature = "aws"))]
    #[tokio::test]
    async fn without_the_aws_feature_every_aws_entry_point_says_how_to_get_one() {
        use crate::exit::{Exit, classify_for};
        // A host configuration: without the feature an AWS one does not even resolve.
        let config = crate::config::resolve_text(
            crate::config::FILE_NAME,
            "name = \"shop\"\n[host]\ncommand = \"./run\"\n",
            std::path::Path::new("/srv/shop"),
            &|_| None,
            &crate::config::Overrides::default(),
        )
        .expect("a valid host configuration");
        let out = crate::output::Output {
            json: false,
            verbose: 0,
        };
        let (lines, _) = mpsc::channel(1);
        let errors = [
            run_lambda().await.expect_err("no Lambda runtime"),
            aws_deployer_policy(None, None)
                .await
                .expect_err("no deployer policy"),
            baseline(&config, &BaselineRequest::Template, out)
                .await
                .expect_err("no baseline"),
            teardown_baseline(&config, out)
                .await
                .expect_err("no baseline teardown"),
            aws_stack_unusable_for_teardown(&config)
                .await
                .expect_err("no stack check"),
            aws_follow_logs(&config, None, vec![], 10, lines, |_| {})
                .await
                .expect_err("no log tail"),
            open_aws(&config, engine_settings(&config), "status")
                .await
                .err()
                .expect("no AWS ports"),
        ];
        for err in errors {
            let (exit, hint) = classify_for(&err, Some(ProviderKind::Aws));
            assert_eq!(exit, Exit::Usage);
            assert!(
                err.to_string().contains("built without the AWS provider"),
                "{err}"
            );
            let hint = hint.expect("a hint");
            assert!(
                hint.contains("cargo install --path crates/flotilla-cli"),
                "{hint}"
            );
        }
        assert_eq!(check_aws_secret_reference("not a reference"), Ok(()));
        assert!(recheck_aws_cache(&config).await.is_none());
    }
}
