//! What each command does: load the config, open the provider, run a workflow, render the result.
//! Decisions belong to the engine and the core; this module wires and reports.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use flotilla_core::{DeploymentId, DeploymentName};
use flotilla_engine::ports::{ErrorKind, ImageRequest, PortError};
use flotilla_engine::workflows::{DeployRequest, Outcome, TeardownTarget, Workflow};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::app_env;
use crate::cli::{
    AwsCommand, BaselineCommand, Cli, Command, ConfigCommand, DeployArgs, Global, HostCommand,
    LogsArgs, StatusArgs, TeardownArgs, VerifyArgs,
};
use crate::config::template::{self, InitValues};
use crate::config::{self, Config, ConfigError, Inputs, Overrides, ProviderKind, Val};
use crate::exit::{Exit, Interrupted, Reported, UsageError};
use crate::output::{self, Output, ProgressPrinter};
use crate::providers::{self, AgentRequest, BaselineRequest, LogQuery};
use crate::verify;

/// Prints what `host install` or `host uninstall` did.
fn print_service(out: Output, done: &providers::ServiceOutcome, verb: &str) -> Result<()> {
    if out.json {
        return out.json(done);
    }
    out.result(&format!("{verb} {} ({})", done.unit, done.path.display()));
    if done.ran.is_empty() {
        if !done.commands.is_empty() {
            out.note(&format!(
                "{}; run:\n  {}",
                done.why_not_run
                    .as_deref()
                    .unwrap_or("systemctl was not run"),
                done.commands.join("\n  ")
            ));
        }
    } else {
        for command in &done.ran {
            out.note(&format!("ran `{command}`"));
        }
    }
    let front_door = done.unit == providers::FRONT_DOOR_UNIT;
    if verb == "removed" && front_door {
        out.note(
            "the apps' daemons keep running and serving the connections they hold; they register \
             again when a front door runs",
        );
    } else if verb == "removed" {
        out.note(
            "the app's instances keep running: the next flotilla command starts a daemon that \
             adopts them; `flotilla host stop` stops them",
        );
    } else if done.scope == providers::ServiceScope::User {
        out.note(
            "a user unit starts at boot only with lingering on: `loginctl enable-linger $USER`",
        );
    }
    Ok(())
}

/// Runs the parsed command line; returns the exit code of a command that did its job.
pub async fn run(cli: Cli, out: Output) -> Result<u8> {
    let uses_baseline = matches!(
        cli.command,
        Command::Deploy(_)
            | Command::Status(_)
            | Command::Drain(_)
            | Command::Rollback(_)
            | Command::Promote(_)
            | Command::Reap(_)
            | Command::Teardown(_)
            | Command::Verify(_)
            | Command::Logs(_)
    );
    match dispatch(&cli, out).await {
        Err(err) if uses_baseline => Err(check_cached_baseline(&cli.global, err, out).await),
        other => other,
    }
}

/// A command that failed because AWS says something does not exist may have trusted baseline
/// outputs cached for a stack that has changed or gone: the cache is checked against the stack
/// (refreshed or removed), and what was found leads the report, with a hint that is true now.
async fn check_cached_baseline(global: &Global, err: anyhow::Error, out: Output) -> anyhow::Error {
    let not_found = err.chain().any(|cause| {
        let port = cause.downcast_ref::<PortError>().or_else(|| match cause
            .downcast_ref::<flotilla_engine::EngineError>(
        ) {
            Some(flotilla_engine::EngineError::Port { source, .. }) => Some(source),
            _ => None,
        });
        port.is_some_and(|p| p.kind == ErrorKind::NotFound)
    });
    if provider_in_use() != Some(ProviderKind::Aws) || !not_found {
        return err;
    }
    let Ok(config) = load(global, out) else {
        return err;
    };
    match providers::recheck_aws_cache(&config).await {
        Some(reported) => err.context(reported),
        None => err,
    }
}

async fn dispatch(cli: &Cli, out: Output) -> Result<u8> {
    let global = &cli.global;
    match &cli.command {
        Command::Init(args) => init(global, args.force, out),
        Command::Config(ConfigCommand::Check(_)) => config_check(global, out),
        Command::Deploy(args) => deploy(global, args, out).await,
        Command::Status(args) => status(global, args, out).await,
        Command::Drain(args) => {
            let (config, opened) = open(global, "drain", out).await?;
            let printer = ProgressPrinter::for_output(out);
            let id = args.id.clone();
            opened
                .run(Workflow::Drain { id }, &printer)
                .await
                .with_context(|| format!("could not drain {} of `{}`", args.id, config.name))?;
            printer.finish();
            if out.json {
                out.json(&serde_json::json!({ "draining": args.id }))?;
            } else {
                out.result(&format!(
                    "{} is draining: it takes no new sessions, and the reaper retires it once its \
                     sessions have ended",
                    args.id
                ));
            }
            Ok(0)
        }
        Command::Rollback(args) => {
            let (config, opened) = open(global, "rollback", out).await?;
            let printer = ProgressPrinter::for_output(out);
            let id = args.id.clone();
            let outcome = match opened
                .run(Workflow::Rollback { id }, &printer)
                .await
                .with_context(|| format!("could not roll back `{}`", config.name))?
            {
                Outcome::RolledBack(outcome) => outcome,
                other => return Err(providers::unexpected(&other)),
            };
            printer.finish();
            if out.json {
                out.json(&outcome)?;
            } else {
                let mut text = format!("fresh traffic now goes to {}", outcome.active);
                if let Some(draining) = &outcome.draining {
                    text.push_str(&format!("; {draining} is draining"));
                }
                out.result(&text);
            }
            Ok(0)
        }
        Command::Promote(_) => {
            let (config, opened) = open(global, "promote", out).await?;
            let printer = ProgressPrinter::for_output(out);
            let tick = match opened
                .run(Workflow::Promote, &printer)
                .await
                .with_context(|| format!("could not promote the canary of `{}`", config.name))?
            {
                Outcome::Promoted(tick) => tick,
                other => return Err(providers::unexpected(&other)),
            };
            printer.finish();
            if out.json {
                out.json(&tick)?;
            } else if let flotilla_engine::workflows::CanaryTick::Ended { id, .. } = &tick {
                out.result(&format!("promoted {id}: all fresh sessions go to it"));
            }
            Ok(0)
        }
        Command::Reap(args) => {
            let (config, opened) = open(global, "reap", out).await?;
            let printer = ProgressPrinter::for_output(out);
            let dry_run = args.dry_run;
            let report = match opened
                .run(Workflow::Reap { dry_run }, &printer)
                .await
                .with_context(|| format!("reaper pass over `{}` failed", config.name))?
            {
                Outcome::Reaped(report) => report,
                other => return Err(providers::unexpected(&other)),
            };
            printer.finish();
            if out.json {
                out.json(&report)?;
            } else {
                out.result(&output::reap_text(&report, args.dry_run));
            }
            if !report.failed.is_empty() {
                return Err(Reported {
                    exit: Exit::Provider,
                    message: format!("{} reaper action(s) failed", report.failed.len()),
                    hint: Some(
                        "run `flotilla reap` again; each action is safe to repeat".to_owned(),
                    ),
                }
                .into());
            }
            Ok(0)
        }
        Command::Teardown(args) => teardown(global, args, out).await,
        Command::Verify(args) => verify(global, args, out).await,
        Command::Logs(args) => logs(global, args, out).await,
        Command::Host(HostCommand::Serve) => {
            let config = load(global, out)?;
            providers::host_serve(&config).await?;
            Ok(0)
        }
        Command::Host(HostCommand::Stop) => {
            let config = load(global, out)?;
            providers::host_stop(&config).await?;
            Ok(0)
        }
        Command::Host(HostCommand::FrontDoor(args)) if args.install || args.uninstall => {
            let request = providers::ServiceRequest {
                user: args.user_unit,
                systemctl: !args.no_enable,
                run_as: args.run_as.clone(),
            };
            let done = providers::front_door_service(args, &request)?;
            print_service(
                out,
                &done,
                if args.install { "installed" } else { "removed" },
            )?;
            Ok(0)
        }
        Command::Host(HostCommand::FrontDoor(args)) => {
            providers::host_front_door(args).await?;
            Ok(0)
        }
        Command::Host(HostCommand::Install(args)) => {
            let config = load(global, out)?;
            let request = providers::ServiceRequest {
                user: args.user,
                systemctl: !args.no_enable,
                run_as: args.run_as.clone(),
            };
            let done = providers::host_install(&config, &request)?;
            print_service(out, &done, "installed")?;
            Ok(0)
        }
        Command::Host(HostCommand::Upgrade(args)) => {
            let config = load(global, out)?;
            let binary = match &args.binary {
                Some(path) => std::fs::canonicalize(path).map_err(|e| crate::exit::UsageError {
                    message: format!("--binary {}: {e}", path.display()),
                    hint: "name the flotilla executable the new daemon should run".to_owned(),
                })?,
                None => std::env::current_exe()?,
            };
            let report = providers::host_upgrade(&config, binary).await?;
            if out.json {
                out.json(&report)?;
            } else {
                out.result(&format!(
                    "handed over from daemon pid {} to pid {} ({}) in {} ms",
                    report.old_pid,
                    report.new_pid,
                    report.binary.display(),
                    report.ready_ms
                ));
                out.note(&format!(
                    "the old daemon serves the {} connection(s) it holds ({} session(s)) until \
                     they end or at most {}s, then exits; the log is {}",
                    report.draining_connections,
                    report.draining_sessions,
                    report.deadline_seconds,
                    report.log.display()
                ));
            }
            Ok(0)
        }
        Command::Host(HostCommand::Uninstall(args)) => {
            let config = load(global, out)?;
            let request = providers::ServiceRequest {
                user: args.user,
                systemctl: !args.no_disable,
                run_as: None,
            };
            let done = providers::host_uninstall(&config, &request)?;
            print_service(out, &done, "removed")?;
            Ok(0)
        }
        Command::Agent(args) => {
            let config = load_optional(global, out)?;
            let request = AgentRequest {
                listen: args.listen,
                app_port: args.app_port,
                command: args.command.clone(),
            };
            providers::agent(config.as_ref(), &request).await
        }
        Command::Completions(args) => {
            // Generated into memory, then written: a closed pipe (`| head`) ends it quietly.
            let mut script = Vec::new();
            clap_complete::generate(
                args.shell,
                &mut crate::cli::command(),
                "flotilla",
                &mut script,
            );
            match std::io::stdout().write_all(&script) {
                Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => {
                    Err(anyhow::Error::new(err).context("writing the completion script"))
                }
                _ => Ok(0),
            }
        }
        Command::Man(args) => {
            write_manual(&args.dir, out)?;
            Ok(0)
        }
        Command::Baseline(command) => {
            let config = load(global, out)?;
            let minutes = |m: u64| Duration::from_secs(m.saturating_mul(60));
            let request = match command {
                BaselineCommand::Up(a) => BaselineRequest::Up {
                    json: a.json.json,
                    yes: a.yes,
                    reaper_binary: a.reaper_binary.clone(),
                    continue_rollback: a.continue_rollback,
                    skip: a.skip.clone(),
                    timeout: minutes(a.timeout_minutes),
                },
                BaselineCommand::Show(a) => BaselineRequest::Show {
                    json: a.json.json,
                    offline: a.offline,
                },
                BaselineCommand::Template => BaselineRequest::Template,
                BaselineCommand::Down(a) => BaselineRequest::Down {
                    json: a.json.json,
                    force: a.force,
                    yes: a.yes,
                    retain: a.retain.clone(),
                    timeout: minutes(a.timeout_minutes),
                },
            };
            providers::baseline(&config, &request, out).await?;
            Ok(0)
        }
        Command::Aws(AwsCommand::DeployerPolicy(args)) => {
            let config = load_optional(global, out)?;
            let policy =
                providers::aws_deployer_policy(config.as_ref(), args.account_id.as_deref()).await?;
            out.json(&policy)?;
            Ok(0)
        }
    }
}

fn inputs_env(key: &str) -> Option<String> {
    std::env::var(key).ok()
}

/// Loads and validates the configuration.
/// The provider of the configuration this run loaded, once it has loaded one.
static PROVIDER_IN_USE: std::sync::OnceLock<ProviderKind> = std::sync::OnceLock::new();

/// The provider of the configuration this run loaded, so that a failure's hint names it; `None`
/// when the command failed before reading its configuration.
pub fn provider_in_use() -> Option<ProviderKind> {
    PROVIDER_IN_USE.get().copied()
}

fn load(global: &Global, out: Output) -> Result<Config> {
    load_with(global, &[], &[], out)
}

/// Loads and validates the configuration with `--env` and `--secret` flags on top.
fn load_with(global: &Global, env: &[String], secrets: &[String], out: Output) -> Result<Config> {
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let overrides = Overrides {
        name: global.name.clone(),
        provider: global.provider,
        environment: std::env::vars().collect(),
        env: env.to_vec(),
        secrets: secrets.to_vec(),
    };
    let config = config::load(&Inputs {
        explicit: global.config.as_deref(),
        cwd: &cwd,
        env: &inputs_env,
        overrides: &overrides,
    })?;
    // A run loads one configuration; a second load of it names the same provider.
    let _ = PROVIDER_IN_USE.set(config.provider);
    match &config.file {
        Some(file) => out.verbose(&format!("using {}", file.display())),
        None => out.verbose("no flotilla.toml: configured by the environment and flags alone"),
    }
    if out.verbose > 0 {
        for warning in config::layers::unknown_env_warnings(std::env::vars().map(|(k, _)| k)) {
            out.warn(&warning);
        }
    }
    Ok(config)
}

/// Loads the configuration if there is any (the agent and AWS helpers work without one).
fn load_optional(global: &Global, out: Output) -> Result<Option<Config>> {
    match load(global, out) {
        Ok(config) => Ok(Some(config)),
        Err(err) if matches!(err.downcast_ref(), Some(ConfigError::NotFound { .. })) => Ok(None),
        Err(err) => Err(err),
    }
}

async fn open(global: &Global, command: &str, out: Output) -> Result<(Config, providers::Opened)> {
    let config = load(global, out)?;
    let opened = providers::open(&config, command, out).await?;
    Ok((config, opened))
}

fn init(global: &Global, force: bool, out: Output) -> Result<u8> {
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let path = match &global.config {
        Some(path) => cwd.join(path),
        None => cwd.join(config::FILE_NAME),
    };
    let shown = config::display_path(&path, &cwd);
    if path.exists() && !force {
        return Err(UsageError {
            message: format!("{shown} already exists"),
            hint: "edit it and run `flotilla config check`, or run `flotilla init --force` to \
                   overwrite it"
                .to_owned(),
        }
        .into());
    }
    let dir = path.parent().unwrap_or(&cwd).to_path_buf();
    let name = match &global.name {
        Some(name) => DeploymentName::new(name)
            .map_err(|e| UsageError {
                message: format!("--name: {e}"),
                hint: "pick a name of lowercase letters, digits and hyphens, e.g. --name my-app"
                    .to_owned(),
            })?
            .to_string(),
        None => template::sanitise_name(
            &dir.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        ),
    };
    let provider = global.provider.unwrap_or(ProviderKind::Host);
    let (command, build, detected) = template::detect_commands(&dir);
    let text = template::render(&InitValues {
        name: name.clone(),
        provider,
        command: command.clone(),
        build,
        detected,
    });
    // The template must pass the same checks as any hand-written file (without the environment,
    // which may legitimately override it later).
    config::resolve_text(&shown, &text, &dir, &|_| None, &Overrides::default())
        .context("internal error: the generated flotilla.toml does not validate")?;
    std::fs::write(&path, &text).with_context(|| format!("cannot write {}", path.display()))?;
    out.result(&format!(
        "wrote {shown} for `{name}` (provider = \"{provider}\")"
    ));
    if provider == ProviderKind::Host {
        out.note(&format!(
            "[host] command = {command:?}: check that it starts your app listening on $PORT \
             and answering /healthz; then run `flotilla deploy`"
        ));
    } else {
        out.note("next: `flotilla baseline up` creates the AWS baseline; then `flotilla deploy`");
    }
    Ok(0)
}

#[derive(Serialize)]
struct ConfigReport<'a> {
    ok: bool,
    file: Option<&'a Path>,
    root: &'a Path,
    config: &'a Config,
    sources: &'a [config::Sourced],
    warnings: Vec<String>,
}

fn config_check(global: &Global, out: Output) -> Result<u8> {
    let config = load(global, out)?;
    let mut warnings = config::layers::unknown_env_warnings(std::env::vars().map(|(k, _)| k));
    warnings.extend(config.exposure_warnings());
    if out.json {
        out.json(&ConfigReport {
            ok: true,
            file: config.file.as_deref(),
            root: &config.root,
            config: &config,
            sources: &config.sources,
            warnings,
        })?;
        return Ok(0);
    }
    for warning in &warnings {
        out.warn(warning);
    }
    let other = match config.provider {
        ProviderKind::Host => "aws.",
        ProviderKind::Aws => "host.",
    };
    let mut rows: Vec<Vec<String>> = config
        .sources
        .iter()
        .filter(|s| !s.key.starts_with(other))
        .map(|s| {
            let value = match &s.value {
                None => "(unset)".to_owned(),
                Some(Val::Str(v)) => format!("{v:?}"),
                Some(v) => v.to_string(),
            };
            vec![s.key.clone(), value, s.origin.to_string()]
        })
        .collect();
    if config.provider == ProviderKind::Host
        && let Some(path) = &config.host.secrets_file
    {
        // Names only: a secret's value is never shown.
        match app_env::secret_names(path) {
            Ok(names) => rows.extend(names.into_iter().map(|name| {
                vec![
                    format!("secrets.{name}"),
                    "(hidden)".to_owned(),
                    path.display().to_string(),
                ]
            })),
            Err(err) => out.warn(&format!("{err} (a deploy would stop here)")),
        }
    }
    let file = match &config.file {
        Some(file) => file.display().to_string(),
        None => "the environment and flags (no flotilla.toml)".to_owned(),
    };
    let mut text = format!(
        "configuration from {file} is valid: `{}` on the {} provider\n\n",
        config.name, config.provider
    );
    text.push_str(&output::table(&["KEY", "VALUE", "FROM"], &rows));
    text.push_str(&format!(
        "\n[{}] is not shown: it does not apply to provider = \"{}\" (--json shows every key).",
        other.trim_end_matches('.'),
        config.provider
    ));
    out.result(&text);
    Ok(0)
}

/// Random bits for a deployment id's suffix, without a dependency: std's hasher keys are seeded
/// from the operating system's randomness per process.
fn entropy() -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.write_u32(std::process::id());
    hasher.finish()
}

#[derive(Serialize)]
struct DeployJson<'a> {
    #[serde(flatten)]
    outcome: &'a flotilla_engine::workflows::DeployOutcome,
    name: &'a DeploymentName,
    provider: ProviderKind,
}

/// What to tell the user about a canary's pace on a provider whose driver runs on a schedule:
/// on AWS the reaper Lambda ticks every `interval`, so a step is judged at the first run after
/// its pause, and a pause shorter than the schedule (or than CloudWatch's minute) is rounded up.
fn canary_schedule_note(
    provider: ProviderKind,
    pause: std::time::Duration,
    interval: std::time::Duration,
) -> Option<String> {
    if provider != ProviderKind::Aws {
        return None;
    }
    let floor = interval.max(std::time::Duration::from_secs(60));
    if pause >= floor {
        return Some(format!(
            "the reaper Lambda (every {}s) judges each step at its first run after the {}s pause",
            interval.as_secs(),
            pause.as_secs()
        ));
    }
    Some(format!(
        "a canary step's pause of {}s is shorter than the reaper Lambda's schedule (every {}s, \
         `reaper.interval_seconds`) that drives canaries on AWS, or CloudWatch's one-minute \
         periods: each step runs at least {}s",
        pause.as_secs(),
        interval.as_secs(),
        floor.as_secs()
    ))
}

async fn deploy(global: &Global, args: &DeployArgs, out: Output) -> Result<u8> {
    let config = load_with(global, &args.env, &args.secret, out)?;
    for warning in config.exposure_warnings() {
        out.warn(&warning);
    }
    // Read before anything is created: a missing secrets file stops the deploy here.
    let env = app_env::for_deploy(&config)?;
    let opened = providers::open(&config, "deploy", out).await?;
    let now = opened.workflows.now();
    let id = args
        .id
        .clone()
        .unwrap_or_else(|| DeploymentId::generate(now, entropy()));
    let image = match &args.image {
        Some(uri) => ImageRequest::Prebuilt(uri.clone()),
        None => ImageRequest::Build(config.root.clone()),
    };
    out.note(&format!(
        "deploying `{}` version {id} on the {} provider",
        config.name, config.provider
    ));
    let request = DeployRequest {
        id: id.clone(),
        image,
        instances: config.instances(),
        min_healthy: config.app.min_healthy,
        break_lock: args.break_lock,
        env,
    };
    let canary = args.canary.then(|| {
        let mut plan = config.canary.plan.clone();
        if !args.canary_steps.is_empty() {
            plan.steps = args.canary_steps.clone();
        }
        if let Some(pause) = args.canary_pause {
            plan.pause = std::time::Duration::from_secs(pause);
        }
        plan
    });
    let first_share = canary.as_ref().and_then(|p| p.steps.first().copied());
    if let Some(note) = canary
        .as_ref()
        .and_then(|plan| canary_schedule_note(config.provider, plan.pause, config.reaper.interval))
    {
        out.note(&note);
    }
    let printer = ProgressPrinter::for_output(out);
    let deploying = Workflow::Deploy { request, canary };
    let ran = opened.run_until_ctrl_c(deploying, &printer).await;
    printer.finish();
    let outcome = match ran.with_context(|| crate::exit::DeployFailed { id: id.clone() })? {
        Some(Outcome::Deployed(outcome)) => outcome,
        Some(other) => return Err(providers::unexpected(&other)),
        None => {
            return Err(Interrupted {
                doing: format!("deploying {id}"),
                resume: format!("flotilla deploy --id {id}"),
            }
            .into());
        }
    };
    if out.json {
        out.json(&DeployJson {
            outcome: &outcome,
            name: &config.name,
            provider: config.provider,
        })?;
    } else {
        let mut summary = match first_share {
            Some(percent) => format!(
                "deployed {id} as a canary: {percent}% of fresh sessions go to it; {} judges it \
                 step by step (`flotilla status`), `flotilla promote` or `flotilla rollback` \
                 end it by hand",
                match config.provider {
                    ProviderKind::Host => "the daemon",
                    ProviderKind::Aws => "the reaper Lambda",
                }
            ),
            None => format!("deployed {id}: fresh traffic goes to it now"),
        };
        if !outcome.draining.is_empty() {
            let ids: Vec<String> = outcome.draining.iter().map(ToString::to_string).collect();
            summary.push_str(&format!("; draining: {}", ids.join(", ")));
        }
        if outcome.resumed {
            summary.push_str(" (resumed an interrupted deploy)");
        }
        out.note(&summary);
        // The bare id on stdout, so that `ID=$(flotilla deploy)` works.
        out.result(id.as_str());
    }
    Ok(0)
}

#[derive(Serialize)]
struct StatusJson<'a> {
    provider: ProviderKind,
    now: flotilla_core::Timestamp,
    #[serde(flatten)]
    report: &'a flotilla_engine::workflows::StatusReport,
}

async fn status(global: &Global, args: &StatusArgs, out: Output) -> Result<u8> {
    let (config, opened) = open(global, "status", out).await?;
    let clear = args.watch && !out.json && std::io::stdout().is_terminal();
    loop {
        let report = status_report(&opened, &config).await?;
        let now = opened.workflows.now();
        if out.json {
            let doc = StatusJson {
                provider: config.provider,
                now,
                report: &report,
            };
            if args.watch {
                // One document per line, so a consumer can read them as they come.
                out.result(&serde_json::to_string(&doc)?);
            } else {
                out.json(&doc)?;
            }
        } else {
            let text = output::status_text(&report, config.provider.as_str(), now);
            if clear {
                // Clear the screen and go home, so the table redraws in place.
                out.result(&format!("\x1b[2J\x1b[H{text}"));
            } else {
                out.result(&text);
            }
        }
        if !args.watch {
            return Ok(0);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(args.interval.max(1))) => {}
            _ = tokio::signal::ctrl_c() => return Ok(0),
        }
    }
}

/// Asks on the terminal; `Ok(false)` if the answer is not the expected one.
fn confirm(prompt: &str, expected: &[&str]) -> Result<bool> {
    eprint!("{prompt}");
    std::io::stderr().flush().ok();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .context("cannot read the answer")?;
    let answer = answer.trim();
    Ok(expected.iter().any(|e| e.eq_ignore_ascii_case(answer)))
}

async fn teardown(global: &Global, args: &TeardownArgs, out: Output) -> Result<u8> {
    let interactive = std::io::stdin().is_terminal();
    if !args.yes && !interactive {
        return Err(UsageError {
            message: "teardown removes versions for good and stdin is not a terminal to confirm on"
                .to_owned(),
            hint: "pass --yes to confirm non-interactively".to_owned(),
        }
        .into());
    }
    if args.baseline {
        let config = load(global, out)?;
        if config.provider != ProviderKind::Aws {
            return Err(UsageError {
                message: format!(
                    "--baseline removes the AWS baseline stack, but provider = \"{}\"",
                    config.provider
                ),
                hint: "run `flotilla teardown --all` without --baseline".to_owned(),
            }
            .into());
        }
        // A stack that is gone or was deleted part-way runs no version, and its cached outputs
        // name resources that are gone: finish with the stack instead of failing on them.
        if args.id.is_none()
            && let Some(found) = providers::aws_stack_unusable_for_teardown(&config).await?
        {
            if !args.yes && !confirm_teardown(&config, args)? {
                return Err(not_confirmed());
            }
            out.note(&found);
            providers::teardown_baseline(&config, out).await?;
            if out.json {
                out.json(&serde_json::json!({ "removed": [], "baseline_removed": true }))?;
            } else {
                out.result("nothing to remove: no version can run without the baseline");
            }
            return Ok(0);
        }
    }
    let (config, opened) = open(global, "teardown", out).await?;
    if !args.yes && !confirm_teardown(&config, args)? {
        return Err(not_confirmed());
    }
    let target = match &args.id {
        Some(id) => TeardownTarget::One(id.clone()),
        None => TeardownTarget::All,
    };
    let printer = ProgressPrinter::for_output(out);
    let resume = match &args.id {
        Some(id) => format!("flotilla teardown {id} --yes"),
        None if args.baseline => "flotilla teardown --all --baseline --yes".to_owned(),
        None => "flotilla teardown --all --yes".to_owned(),
    };
    let break_lock = args.break_lock;
    let ran = opened
        .run_until_ctrl_c(Workflow::Teardown { target, break_lock }, &printer)
        .await;
    printer.finish();
    let report = match ran.with_context(|| format!("teardown of `{}` failed", config.name))? {
        Some(Outcome::TornDown(report)) => report,
        Some(other) => return Err(providers::unexpected(&other)),
        None => {
            return Err(Interrupted {
                doing: "tearing down".to_owned(),
                resume,
            }
            .into());
        }
    };
    if args.baseline {
        providers::teardown_baseline(&config, out).await?;
    }
    if out.json {
        out.json(&serde_json::json!({
            "removed": report.removed,
            "baseline_removed": args.baseline,
        }))?;
    } else if report.removed.is_empty() {
        out.result("nothing to remove");
    } else {
        let ids: Vec<String> = report.removed.iter().map(ToString::to_string).collect();
        out.result(&format!("removed {}", ids.join(", ")));
    }
    Ok(0)
}

/// Asks on the terminal whether to go ahead with `teardown`.
fn confirm_teardown(config: &Config, args: &TeardownArgs) -> Result<bool> {
    match &args.id {
        Some(id) => confirm(
            &format!(
                "Remove version {id} of `{}` ({} provider) and everything it uses? [y/N] ",
                config.name, config.provider
            ),
            &["y", "yes"],
        ),
        None => {
            let what = if args.baseline {
                "every version AND the baseline stack"
            } else {
                "every version"
            };
            confirm(
                &format!(
                    "Remove {what} of `{}` ({} provider)? Fresh requests will get \"no version \
                     deployed\". Type the deployment name to confirm: ",
                    config.name, config.provider
                ),
                &[config.name.as_str()],
            )
        }
    }
}

fn not_confirmed() -> anyhow::Error {
    UsageError {
        message: "teardown not confirmed; nothing was removed".to_owned(),
        hint: "run it again and confirm, or pass --yes".to_owned(),
    }
    .into()
}

async fn verify(global: &Global, args: &VerifyArgs, out: Output) -> Result<u8> {
    let (config, opened) = open(global, "verify", out).await?;
    // The host router's address is in the config; other providers say where requests arrive.
    let derived = match config.provider {
        ProviderKind::Host => Some(providers::host_public_url(&config.host)),
        ProviderKind::Aws => None,
    };
    let base = match args
        .url
        .clone()
        .or_else(|| opened.base_url.clone())
        .or(derived)
    {
        Some(url) => url,
        None => {
            return Err(UsageError {
                message: format!(
                    "the {} provider did not say where requests arrive",
                    config.provider
                ),
                hint: "pass the public URL with --url http://HOST:PORT".to_owned(),
            }
            .into());
        }
    };
    let report = status_report(&opened, &config).await?;
    let names = verify::AffinityNames {
        header: config.app.affinity_header.clone(),
        query: config.app.affinity_query.clone(),
    };
    let checks = verify::plan(&report);
    out.verbose(&format!("sending {} requests to {base}", checks.len()));
    let outcomes = verify::run(&base, &args.path, &names, checks)
        .await
        .with_context(|| format!("nothing answers at {base}"))?;
    let failed = outcomes.iter().filter(|o| !o.ok).count();
    if out.json {
        out.json(&serde_json::json!({
            "ok": failed == 0,
            "base_url": base,
            "checks": outcomes,
        }))?;
    } else {
        out.result(&verify::table(&outcomes));
    }
    if failed > 0 {
        return Err(Reported {
            exit: Exit::VerifyMismatch,
            message: format!(
                "{failed} of {} requests reached the wrong version",
                outcomes.len()
            ),
            hint: Some(
                "run `flotilla status` to compare with the recorded routing; a deploy or reap in \
                 progress can cause this briefly, so run verify again after it finishes"
                    .to_owned(),
            ),
        }
        .into());
    }
    if !out.json {
        let note = match outcomes.len() {
            1 => "the request reached the right version".to_owned(),
            n => format!("all {n} requests reached the right version"),
        };
        out.note(&note);
    }
    Ok(0)
}

async fn logs(global: &Global, args: &LogsArgs, out: Output) -> Result<u8> {
    let (config, opened) = open(global, "logs", out).await?;
    let query = LogQuery {
        id: args.id.clone(),
        lines: args.lines,
        follow: args.follow,
    };
    if let Some(source) = &opened.logs {
        let (tx, mut rx) = mpsc::channel::<providers::LogLine>(1024);
        let printer = async {
            while let Some(line) = rx.recv().await {
                let instance = line
                    .instance
                    .as_ref()
                    .map(|i| format!("/{i}"))
                    .unwrap_or_default();
                out.result(&format!("{}{instance} | {}", line.id, line.line));
            }
        };
        tokio::select! {
            (result, ()) = async { tokio::join!(source.stream(&query, tx), printer) } => {
                result.with_context(|| format!("could not read the logs of `{}`", config.name))?;
            }
            _ = tokio::signal::ctrl_c() => {}
        }
        return Ok(0);
    }
    if args.follow && config.provider != ProviderKind::Aws {
        return Err(UsageError {
            message: format!("the {} provider cannot follow logs", config.provider),
            hint: "run without --follow to see the latest lines".to_owned(),
        }
        .into());
    }
    let ids = match &args.id {
        Some(id) => vec![id.clone()],
        None => status_report(&opened, &config)
            .await?
            .versions
            .into_iter()
            .filter(|v| v.record.version.state.runs())
            .map(|v| v.record.version.id)
            .collect(),
    };
    if args.follow {
        let (tx, mut rx) = mpsc::channel::<providers::LogLine>(1024);
        let printer = async {
            while let Some(line) = rx.recv().await {
                out.result(&format!("{} | {}", line.id, line.line));
            }
        };
        let follow =
            providers::aws_follow_logs(&config, args.id.clone(), ids, args.lines, tx, |notice| {
                out.note(notice)
            });
        // Ctrl-C ends following; that is how it is meant to end, so the exit code is 0.
        tokio::select! {
            (result, ()) = async { tokio::join!(follow, printer) } => {
                result.with_context(|| format!("could not follow the logs of `{}`", config.name))?;
            }
            _ = tokio::signal::ctrl_c() => {}
        }
        return Ok(0);
    }
    if ids.is_empty() {
        out.note("no version runs; nothing to show");
    }
    for id in ids {
        let lines = match opened
            .run(
                Workflow::RecentLogs {
                    id: id.clone(),
                    lines: args.lines,
                },
                &flotilla_engine::events::Silent,
            )
            .await
            .with_context(|| format!("could not read the logs of {id}"))?
        {
            Outcome::Logs(lines) => lines,
            other => return Err(providers::unexpected(&other)),
        };
        for line in lines {
            out.result(&format!("{id} | {line}"));
        }
    }
    Ok(0)
}

/// The status of `config`'s deployment name.
async fn status_report(
    opened: &providers::Opened,
    config: &Config,
) -> Result<flotilla_engine::workflows::StatusReport> {
    match opened
        .run(Workflow::Status, &flotilla_engine::events::Silent)
        .await
        .with_context(|| format!("could not read the status of `{}`", config.name))?
    {
        Outcome::Status(report) => Ok(*report),
        other => Err(providers::unexpected(&other)),
    }
}

/// `flotilla man DIR`: one page per command, from the same definition as `--help`.
fn write_manual(dir: &std::path::Path, out: Output) -> Result<()> {
    std::fs::create_dir_all(dir)
        .and_then(|()| clap_mangen::generate_to(crate::cli::command(), dir))
        .map_err(|err| {
            anyhow::Error::new(crate::exit::UsageError {
                message: format!(
                    "cannot write the manual pages into {}: {err}",
                    dir.display()
                ),
                hint: "name a directory you can write to".to_owned(),
            })
        })?;
    out.note(&format!(
        "wrote the manual pages into {}; read one with `man -l {}/flotilla.1`",
        dir.display(),
        dir.display()
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_canary_pause_shorter_than_the_reaper_schedule_is_said_to_be_rounded_up() {
        let s = Duration::from_secs;
        assert_eq!(
            canary_schedule_note(ProviderKind::Host, s(1), s(60)),
            None,
            "the host daemon ticks every second"
        );
        let note = canary_schedule_note(ProviderKind::Aws, s(30), s(120)).expect("a note");
        assert!(note.contains("each step runs at least 120s"), "{note}");
        // The schedule may be a minute while the pause is shorter: CloudWatch's minute rules.
        let note = canary_schedule_note(ProviderKind::Aws, s(20), s(60)).expect("a note");
        assert!(note.contains("at least 60s"), "{note}");
        let note = canary_schedule_note(ProviderKind::Aws, s(300), s(60)).expect("a note");
        assert!(note.contains("first run after the 300s pause"), "{note}");
    }
}
