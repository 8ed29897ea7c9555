//! `flotilla baseline up|show|template|down`, the baseline half of `teardown --all --baseline`,
//! and `flotilla aws deployer-policy`: the template's options (`config::baseline`) turned into
//! calls of the stack's lifecycle (`flotilla_aws::stack`, whose `commands` decide between the
//! calls), confirmation asked on the terminal, and its progress, plans and outputs rendered.

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use flotilla_aws::stack::{
    BaselineStack, CacheCheck, Consent, Phase, Plan, Shown, StackError, StackNotice, StackProgress,
    UpReport, deployer_policy_options, refuse_down_while_running,
};
use flotilla_baseline::BaselineOptions;
use flotilla_baseline::outputs::ValidationRecord;
use flotilla_engine::workflows::TeardownTarget;

use crate::config::{Config, ProviderKind};
use crate::exit::{Exit, Interrupted, Reported, UsageError};
use crate::output::{Output, ProgressPrinter, table};
use crate::providers::{self, BaselineRequest};

fn options_or_usage(config: &Config) -> Result<BaselineOptions> {
    crate::config::baseline::options(config).map_err(|problems| {
        let lines: Vec<String> = problems
            .iter()
            .map(|(field, message)| format!("  `{field}`: {message}"))
            .collect();
        UsageError {
            message: format!(
                "the baseline settings have {} problem(s):\n{}",
                problems.len(),
                lines.join("\n")
            ),
            hint: "fix them in flotilla.toml, then run `flotilla config check`".to_owned(),
        }
        .into()
    })
}

fn require_aws(config: &Config, command: &str) -> Result<()> {
    if config.provider == ProviderKind::Aws {
        return Ok(());
    }
    Err(UsageError {
        message: format!(
            "`flotilla {command}` manages the AWS baseline, but provider = \"{}\"",
            config.provider
        ),
        hint: "set provider = \"aws\" in flotilla.toml, or pass --provider aws".to_owned(),
    }
    .into())
}

async fn stack_for(config: &Config, timeout: Option<Duration>) -> BaselineStack {
    BaselineStack::for_settings(providers::aws_settings(config), timeout).await
}

/// `flotilla baseline ...`.
pub async fn run(config: &Config, request: &BaselineRequest, out: Output) -> Result<()> {
    match request {
        BaselineRequest::Template => {
            let options = options_or_usage(config)?;
            let template = flotilla_baseline::build(&options).map_err(StackError::from)?;
            out.result(&template.to_pretty_string());
            Ok(())
        }
        BaselineRequest::Up {
            json,
            yes,
            reaper_binary,
            continue_rollback,
            skip,
            timeout,
        } => {
            require_aws(config, "baseline up")?;
            let options = options_or_usage(config)?;
            let running = std::env::current_exe().context("cannot find this flotilla binary")?;
            let (reaper, desired) =
                flotilla_aws::stack::desired_for_up(&options, reaper_binary.as_deref(), &running)?;
            out.note(&reaper);
            let stack = stack_for(config, Some(*timeout)).await;
            let printer = NoticePrinter;
            if *continue_rollback {
                stack.continue_rollback(skip, &printer).await?;
            }
            let plan = stack.plan(&desired, &printer).await?;
            show_plan(&stack, &plan, out);
            match plan.consent(*yes, std::io::stdin().is_terminal()) {
                Consent::Given => {}
                Consent::Ask => {
                    let prompt = match &plan {
                        Plan::Create { .. } => {
                            format!("Create stack {}? [y/N] ", stack.stack_name())
                        }
                        _ => format!("Apply these changes to {}? [y/N] ", stack.stack_name()),
                    };
                    if !confirm(&prompt, &["y", "yes"])? {
                        stack.discard(&plan).await?;
                        return Err(UsageError {
                            message: "not confirmed; the stack was not changed".to_owned(),
                            hint: "run it again and confirm, or pass --yes".to_owned(),
                        }
                        .into());
                    }
                }
                Consent::Refused => {
                    stack.discard(&plan).await?;
                    return Err(UsageError {
                        message: "the update replaces or removes resources (above) and stdin is \
                                  not a terminal to confirm on"
                            .to_owned(),
                        hint: "read the plan, then pass --yes to apply it".to_owned(),
                    }
                    .into());
                }
            }
            let report = tokio::select! {
                report = stack.apply(&plan, &desired, &printer) => report?,
                _ = tokio::signal::ctrl_c() => {
                    return Err(Interrupted {
                        doing: format!(
                            "waiting for stack {} (CloudFormation carries on)",
                            stack.stack_name()
                        ),
                        resume: "flotilla baseline up".to_owned(),
                    }
                    .into());
                }
            };
            if *json {
                out.json(&serde_json::json!({ "plan": plan, "result": report }))?;
            } else {
                out.result(&up_text(&stack, &report, &config.root));
            }
            Ok(())
        }
        BaselineRequest::Show { json, offline } => {
            require_aws(config, "baseline show")?;
            show(config, *json, *offline, out).await
        }
        BaselineRequest::Down {
            json,
            force,
            yes,
            retain,
            timeout,
        } => {
            require_aws(config, "baseline down")?;
            down(config, *json, *force, *yes, retain, *timeout, out).await
        }
    }
}

async fn show(config: &Config, json: bool, offline: bool, out: Output) -> Result<()> {
    let stack = stack_for(config, None).await;
    let Shown {
        live,
        cached,
        cache_stale: stale,
    } = stack.show(offline).await?;
    if cached.is_none() && (offline || live.is_none()) {
        return Err(UsageError {
            message: format!(
                "no baseline for `{}`: {}",
                config.name,
                if offline {
                    format!(
                        "nothing cached in {}",
                        crate::config::display_path(&stack.cache_path(), &config.root)
                    )
                } else {
                    format!("no stack {} and nothing cached", stack.stack_name())
                }
            ),
            hint: "`flotilla baseline up` creates it".to_owned(),
        }
        .into());
    }
    if json {
        out.json(&serde_json::json!({
            "stack": live,
            "outputs": cached,
            "cache_stale": stale,
        }))?;
        return Ok(());
    }
    let mut text = String::new();
    match &live {
        Some(s) => {
            text.push_str(&format!("stack {}: {}", s.name, s.status));
            if let Some(when) = &s.last_changed {
                text.push_str(&format!(" (last changed {when})"));
            }
            if let Some(reason) = &s.status_reason {
                text.push_str(&format!("\n  {reason}"));
            }
            text.push('\n');
        }
        None if offline => text.push_str(&format!(
            "stack {}: not asked (--offline); cached outputs:\n",
            stack.stack_name()
        )),
        None => text.push_str(&format!(
            "stack {}: does not exist (the cached outputs below are stale)\n",
            stack.stack_name()
        )),
    }
    if let Some(o) = &cached {
        let mut rows = vec![
            row("mode", o.mode.as_str()),
            row("url", &o.url),
            row("load balancer DNS", &o.load_balancer_dns),
            row("listener", &o.listener_arn),
            row("cluster", &o.cluster_name),
            row("repository", &o.repository_uri),
            row("log group", &o.log_group_name),
            row(
                "reaper",
                o.reaper_function_name.as_deref().unwrap_or("(not yet)"),
            ),
            row("dashboard", &o.dashboard_name),
            row("artefact bucket", &o.artefact_bucket),
            row("container port", &o.container_port.to_string()),
        ];
        if let Some(c) = &o.certificate_arn {
            rows.push(row("certificate", c));
        }
        if let Some(t) = &o.alarm_topic_arn {
            rows.push(row("alarm topic", t));
        }
        text.push_str(&table(&["OUTPUT", "VALUE"], &rows));
        if !o.certificate_validation_records.is_empty() {
            text.push_str(&records_text(&o.certificate_validation_records));
        }
    }
    out.result(&text);
    if stale && live.is_some() {
        out.warn(&format!(
            "the cached outputs differ from stack {}'s; run `flotilla baseline up` to refresh them",
            stack.stack_name()
        ));
    }
    Ok(())
}

fn row(key: &str, value: &str) -> Vec<String> {
    vec![key.to_owned(), value.to_owned()]
}

#[allow(clippy::too_many_arguments)]
async fn down(
    config: &Config,
    json: bool,
    force: bool,
    yes: bool,
    retain: &[String],
    timeout: Duration,
    out: Output,
) -> Result<()> {
    let interactive = std::io::stdin().is_terminal();
    if !yes && !interactive {
        return Err(UsageError {
            message: "baseline down deletes the network, load balancer, cluster, image \
                      repository and logs for good, and stdin is not a terminal to confirm on"
                .to_owned(),
            hint: "pass --yes to confirm non-interactively".to_owned(),
        }
        .into());
    }
    let stack = stack_for(config, Some(timeout)).await;
    let running = stack.running_versions().await?;
    if !force && let Some(refusal) = refuse_down_while_running(config.name.as_str(), &running) {
        return Err(refusal.into());
    }
    if !yes {
        let prompt = format!(
            "Delete stack {} of `{}`: network, load balancer, cluster, image repository with its \
             images, and logs{}? Type the deployment name to confirm: ",
            stack.stack_name(),
            config.name,
            if running.is_empty() {
                String::new()
            } else {
                format!(", after removing {} running version(s)", running.len())
            }
        );
        if !confirm(&prompt, &[config.name.as_str()])? {
            return Err(UsageError {
                message: "not confirmed; nothing was deleted".to_owned(),
                hint: "run it again and confirm, or pass --yes".to_owned(),
            }
            .into());
        }
    }
    if !running.is_empty() {
        let opened = providers::open(config, "teardown", out).await?;
        let printer = ProgressPrinter::for_output(out);
        let teardown = flotilla_engine::workflows::Workflow::Teardown {
            target: TeardownTarget::All,
            break_lock: false,
        };
        let report = match opened
            .run(teardown, &printer)
            .await
            .with_context(|| format!("removing the versions of `{}` failed", config.name))?
        {
            flotilla_engine::workflows::Outcome::TornDown(report) => report,
            other => return Err(providers::unexpected(&other)),
        };
        printer.finish();
        let ids: Vec<String> = report.removed.iter().map(ToString::to_string).collect();
        out.note(&format!("removed {}", ids.join(", ")));
    }
    let report = tokio::select! {
        report = stack.down(retain, &NoticePrinter) => report?,
        _ = tokio::signal::ctrl_c() => {
            return Err(Interrupted {
                doing: format!(
                    "waiting for stack {} to be deleted (CloudFormation carries on)",
                    stack.stack_name()
                ),
                resume: "flotilla baseline down --yes".to_owned(),
            }
            .into());
        }
    };
    if json {
        out.json(&report)?;
    } else if report.deleted {
        let mut text = format!("stack {} deleted", stack.stack_name());
        if let Some(path) = &report.cache_removed {
            text.push_str(&format!(
                "; removed {}",
                crate::config::display_path(path, &config.root)
            ));
        }
        out.result(&text);
    } else {
        out.result(&format!(
            "there is no stack {}; nothing to delete",
            stack.stack_name()
        ));
    }
    Ok(())
}

/// Caches the stack's outputs when there is a complete stack and nothing cached yet; says so on
/// stderr. Best effort: without a stack (or the right to read it) the provider reports what is
/// missing as before.
pub async fn cache_from_stack(config: &Config) {
    let stack = stack_for(config, None).await;
    if let Ok(Some(_)) = stack.refresh_cache().await {
        eprintln!(
            "read the baseline's outputs from stack {} into {}",
            stack.stack_name(),
            crate::config::display_path(&stack.cache_path(), &config.root)
        );
    }
}

/// After a command failed because AWS says something the cached outputs name does not exist:
/// checks the cache against the stack (refreshing or removing it) and returns what was found,
/// with a next step that is true now. `None` when nothing is cached, the cache matches a
/// complete stack (the failure has another cause), or the stack cannot be read.
pub async fn recheck_cache(config: &Config) -> Option<Reported> {
    let stack = stack_for(config, None).await;
    if !stack.cache_path().exists() {
        return None;
    }
    let cache = crate::config::display_path(&stack.cache_path(), &config.root);
    let name = stack.stack_name().to_owned();
    let checked = stack.check_cache().await.ok()?;
    let (message, hint) = match checked {
        CacheCheck::Matches => return None,
        CacheCheck::Refreshed => (
            format!(
                "the baseline's outputs cached in {cache} did not match stack {name}; they were \
                 refreshed from it"
            ),
            "run the same command again: it now uses the stack's resources".to_owned(),
        ),
        CacheCheck::Unusable { status, phase, .. } => {
            let what = match &status {
                None => format!("stack {name} no longer exists"),
                Some(status) => format!("stack {name} is {status}"),
            };
            let hint = match phase {
                Phase::Missing => "run `flotilla baseline up` to create the baseline again, \
                     then run the same command again"
                    .to_owned(),
                Phase::DeleteFailed => "finish deleting it with `flotilla baseline down --yes` \
                     (see its --retain for what cannot be deleted); `flotilla teardown --all \
                     --baseline --yes` does the same. To keep using AWS afterwards, run \
                     `flotilla baseline up`"
                    .to_owned(),
                _ => flotilla_aws::stack::status::guidance(phase, "up", &[]),
            };
            (
                format!(
                    "{what}, so the resources its outputs cached in {cache} named are gone; \
                     removed {cache}"
                ),
                hint,
            )
        }
        CacheCheck::Unsettled { status } => (
            format!("stack {name} is {status}; the outputs cached in {cache} may be out of date"),
            "wait for it to finish (`flotilla baseline show` says when), then run the same \
             command again"
                .to_owned(),
        ),
    };
    Some(Reported {
        exit: Exit::Refused,
        message,
        hint: Some(hint),
    })
}

/// Before `teardown --all --baseline` removes versions: when the stack is gone or holds no
/// working baseline (a deletion stopped part-way), no version can run on it and its cached
/// outputs name resources that are gone, so the cache is removed and the caller goes straight to
/// the stack. Returns what to say then; `None` when the versions are to be removed first.
pub async fn stack_unusable_for_teardown(config: &Config) -> Result<Option<String>> {
    let stack = stack_for(config, None).await;
    let name = stack.stack_name().to_owned();
    match stack.check_cache().await? {
        CacheCheck::Unusable {
            status, removed, ..
        } => {
            let mut text = match status {
                None => format!("there is no stack {name}"),
                Some(status) => format!("stack {name} is {status}; no version can run on it"),
            };
            if let Some(path) = removed {
                text.push_str(&format!(
                    "; removed its cached outputs {}",
                    crate::config::display_path(&path, &config.root)
                ));
            }
            Ok(Some(text))
        }
        CacheCheck::Matches | CacheCheck::Refreshed | CacheCheck::Unsettled { .. } => Ok(None),
    }
}

/// `flotilla teardown --all --baseline`, after the versions are gone: the stack, without a
/// second confirmation.
pub async fn teardown(config: &Config, out: Output) -> Result<()> {
    let stack = stack_for(config, None).await;
    let report = stack.down(&[], &NoticePrinter).await?;
    if report.deleted {
        out.note(&format!("stack {} deleted", stack.stack_name()));
    } else {
        out.note(&format!("there was no stack {}", stack.stack_name()));
    }
    Ok(())
}

/// `flotilla aws deployer-policy`.
pub async fn deployer_policy(
    config: Option<&Config>,
    account_id: Option<&str>,
) -> Result<serde_json::Value> {
    let Some(config) = config else {
        return Err(UsageError {
            message: "the deployer policy is scoped to one deployment name, and there is no \
                      flotilla.toml here"
                .to_owned(),
            hint: "run it in your app's directory, or pass --name NAME".to_owned(),
        }
        .into());
    };
    let region = config
        .aws
        .region
        .clone()
        .or_else(|| std::env::var("AWS_REGION").ok())
        .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
        .filter(|r| !r.is_empty());
    if let Some(id) = account_id
        && (id.len() != 12 || !id.chars().all(|c| c.is_ascii_digit()))
    {
        return Err(UsageError {
            message: format!("--account-id {id:?} is not a 12-digit AWS account id"),
            hint: "`aws sts get-caller-identity --query Account` prints yours".to_owned(),
        }
        .into());
    }
    let options =
        deployer_policy_options(providers::aws_settings(config), region, account_id).await?;
    Ok(flotilla_baseline::deployer_policy(&options))
}

/// Asks on the terminal; `Ok(false)` if the answer is not one of `expected`.
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

/// Prints the plan on stderr (stdout keeps the result).
fn show_plan(stack: &BaselineStack, plan: &Plan, out: Output) {
    out.note(&plan_text(stack.stack_name(), plan));
}

fn plan_text(stack_name: &str, plan: &Plan) -> String {
    let rows = |changes: &[flotilla_aws::stack::ResourceChange]| -> Vec<Vec<String>> {
        changes
            .iter()
            .map(|c| {
                let mut action = c.action.clone();
                if c.with_reaper_code {
                    action.push_str(" (2nd step)");
                }
                vec![
                    action,
                    c.logical_id.clone(),
                    c.resource_type.clone(),
                    match (c.replacement.as_deref(), c.destroys()) {
                        (Some("True"), _) => "REPLACED".to_owned(),
                        (Some("Conditional"), _) => "may be replaced".to_owned(),
                        (_, true) => "REMOVED".to_owned(),
                        _ => String::new(),
                    },
                ]
            })
            .collect()
    };
    let headers = ["ACTION", "RESOURCE", "TYPE", ""];
    match plan {
        Plan::NoChange { .. } => {
            format!("nothing to change: stack {stack_name} already matches flotilla.toml")
        }
        Plan::Create { changes } => {
            let later = changes.iter().filter(|c| c.with_reaper_code).count();
            format!(
                "stack {stack_name} does not exist; creating it makes {} resources ({later} of \
                 them, the reaper's, in a second step once its code is uploaded):\n{}",
                changes.len(),
                table(&headers, &rows(changes)).trim_end()
            )
        }
        Plan::Update {
            changes,
            new_reaper_code,
            ..
        } => {
            let mut text = format!("changes to stack {stack_name}:\n");
            if changes.is_empty() {
                text.push_str(
                    "  CloudFormation lists no resource changes (only parameters or outputs \
                     change)\n",
                );
            } else {
                text.push_str(&table(&headers, &rows(changes)));
            }
            if *new_reaper_code {
                text.push_str("  the reaper's code changes (this is a different flotilla build)\n");
            }
            if plan.destroys() {
                text.push_str(
                    "  warning: resources marked REPLACED or REMOVED are deleted; a replaced \
                     VPC, subnet or load balancer cuts off every running version\n",
                );
            }
            text.trim_end().to_owned()
        }
    }
}

fn up_text(stack: &BaselineStack, report: &UpReport, root: &Path) -> String {
    let o = &report.outputs;
    let cache = crate::config::display_path(&report.cache, root);
    let mut text = if report.created {
        format!(
            "stack {} created; outputs cached in {cache}\n",
            stack.stack_name()
        )
    } else if report.changed {
        format!(
            "stack {} updated; outputs cached in {cache}\n",
            stack.stack_name()
        )
    } else {
        format!(
            "stack {} unchanged; outputs cached in {cache}\n",
            stack.stack_name()
        )
    };
    text.push_str(&format!("  url: {}\n", o.url));
    text.push_str(&format!("  load balancer: {}\n", o.load_balancer_dns));
    if o.mode == flotilla_baseline::Mode::HttpOnly {
        text.push_str(
            "  mode: http-only (no TLS: traffic is readable on the way; set [aws] domain for \
             HTTPS)\n",
        );
    } else if let Some(domain) = &o.domain {
        text.push_str(&format!(
            "  point {domain} at the load balancer (a CNAME, or a Route 53 alias)\n"
        ));
    }
    if let Some(id) = &report.default_restored {
        text.push_str(&format!(
            "  fresh traffic points at the active version {id} again\n"
        ));
    }
    if !o.certificate_validation_records.is_empty() {
        text.push_str(&records_text(&o.certificate_validation_records));
    }
    if report.created {
        text.push_str("next: `flotilla deploy`\n");
    }
    text
}

fn records_text(records: &[ValidationRecord]) -> String {
    let mut text = String::from(
        "certificate validation records (keep them: ACM renews the certificate with them):\n",
    );
    for r in records {
        text.push_str(&format!(
            "  {}  {}  {}    ({})\n",
            r.name, r.record_type, r.value, r.domain
        ));
    }
    text
}

/// Prints the stack's progress on stderr.
struct NoticePrinter;

impl StackProgress for NoticePrinter {
    fn notice(&self, notice: StackNotice) {
        eprintln!("{}", notice_text(&notice));
    }
}

fn notice_text(notice: &StackNotice) -> String {
    match notice {
        StackNotice::Step(step) => format!("-> {step}"),
        StackNotice::Event(e) => {
            // `2026-11-25T20:13:06.176Z` → `20:13:06`.
            let time = e.time.get(11..19).unwrap_or(&e.time);
            let mut line = format!(
                "   {time}  {:<32} {:<44} {}",
                e.logical_id, e.resource_type, e.status
            );
            if let Some(reason) = &e.reason {
                line.push_str(&format!("  ({reason})"));
            }
            line.trim_end().to_owned()
        }
        StackNotice::ValidationRecords(records) => {
            let mut text = String::from(
                "Create these DNS records so ACM can issue the certificate (the stack waits for it):\n",
            );
            for r in records {
                text.push_str(&format!(
                    "  {}  {}  {}    ({})\n",
                    r.name, r.record_type, r.value, r.domain
                ));
            }
            text.push_str("Waiting for validation...");
            text
        }
        StackNotice::StillWaiting { status, waited } => {
            format!("   still {status} after {}", crate::output::age(*waited))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_read_as_tables() {
        let add = |id: &str, later: bool| flotilla_aws::stack::ResourceChange {
            action: "Add".into(),
            logical_id: id.into(),
            resource_type: "AWS::EC2::VPC".into(),
            replacement: None,
            scope: vec![],
            with_reaper_code: later,
        };
        let create = Plan::Create {
            changes: vec![add("Vpc", false), add("ReaperFunction", true)],
        };
        let text = plan_text("flotilla-shop", &create);
        assert!(
            text.contains("creating it makes 2 resources (1 of them"),
            "{text}"
        );
        assert!(text.contains("Add (2nd step)  ReaperFunction"), "{text}");
        let mut replaced = add("Vpc", false);
        replaced.action = "Modify".into();
        replaced.replacement = Some("True".into());
        let update = Plan::Update {
            stack_id: "arn".into(),
            change_set_id: "cs".into(),
            changes: vec![replaced],
            new_reaper_code: true,
        };
        let text = plan_text("flotilla-shop", &update);
        assert!(text.contains("Modify  Vpc"), "{text}");
        assert!(text.contains("REPLACED"), "{text}");
        assert!(text.contains("reaper's code changes"), "{text}");
        assert!(text.contains("warning:"), "{text}");
        assert_eq!(
            plan_text(
                "flotilla-shop",
                &Plan::NoChange {
                    stack_id: "arn".into()
                }
            ),
            "nothing to change: stack flotilla-shop already matches flotilla.toml"
        );
    }
}
