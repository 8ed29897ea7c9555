//! Everything the CLI shows people: tables, progress lines rendered from engine events, JSON
//! documents, and errors with their causes and a last line saying what to do next.
//!
//! Results go to stdout (a table, a bare id, or one JSON document with `--json`); progress,
//! warnings and errors go to stderr (progress as one JSON event per line with `--json`), so that
//! `flotilla deploy --json | jq` and `ID=$(flotilla deploy)` work.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use flotilla_core::reaper::{CleanupReason, ReapAction, RetireReason, WaitReason, Waiting};
use flotilla_core::routing::Affinity;
use flotilla_core::{DeploymentId, Timestamp, VersionState};
use flotilla_engine::workflows::StatusReport;
use flotilla_engine::{EngineError, Event, Progress};
use serde::Serialize;

use crate::config::ConfigError;
use crate::exit::Exit;

/// How the running command prints.
#[derive(Clone, Copy, Debug)]
pub struct Output {
    /// `--json` was given.
    pub json: bool,
    /// `-v` count.
    pub verbose: u8,
}

impl Output {
    /// Prints one JSON document on stdout.
    pub fn json<T: Serialize + ?Sized>(&self, value: &T) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(value)?;
        stdout_line(&text);
        Ok(())
    }

    /// Prints a result line (or block) on stdout.
    pub fn result(&self, text: &str) {
        stdout_line(text);
    }

    /// Prints a progress or information line on stderr (with `--json`, as a `note` event line
    /// like the engine's events, so that stderr is all JSON lines).
    pub fn note(&self, text: &str) {
        eprintln!("{}", self.stderr_line("note", text));
    }

    /// Prints a line on stderr only with `-v`.
    pub fn verbose(&self, text: &str) {
        if self.verbose > 0 {
            eprintln!("{text}");
        }
    }

    /// Prints a warning on stderr (with `--json`, as a `warning` event line).
    pub fn warn(&self, text: &str) {
        eprintln!("{}", self.stderr_line("warning", text));
    }

    /// What `note` and `warn` print: the text, or one JSON object `{"event": kind, "message":
    /// text}` with `--json`.
    fn stderr_line(&self, kind: &str, text: &str) -> String {
        if self.json {
            serde_json::json!({ "event": kind, "message": text }).to_string()
        } else if kind == "warning" {
            format!("warning: {text}")
        } else {
            text.to_owned()
        }
    }
}

/// Writes `text` and a newline to stdout. A closed pipe (`flotilla status | head -1`) is not an
/// error worth reporting, nor a reason to panic as `println!` would.
pub fn stdout_line(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{}", text.trim_end_matches('\n'));
    let _ = stdout.flush();
}

/// Lays out rows under headers in left-aligned columns separated by two spaces.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, cell) in cells.enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            let width = widths.get(i).copied().unwrap_or(0);
            text.push_str(cell);
            text.extend(std::iter::repeat_n(
                ' ',
                width.saturating_sub(cell.chars().count()),
            ));
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut headers.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

/// A short human age: `42s`, `7m`, `3h05m`, `2d04h`.
pub fn age(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// A canary's lines in `status`: where it stands, then the last judged window's figures.
pub fn canary_text(id: &DeploymentId, c: &flotilla_engine::ports::CanaryRecord) -> String {
    use flotilla_core::canary::{Outcome, Verdict, WindowStats};
    let mut out = match &c.outcome {
        None => {
            let due = c.state.since.plus(c.plan.pause);
            let window = if c.marks.is_some() {
                format!("judged at {due}")
            } else {
                "its first window starts at the next canary tick (the host daemon's, or on AWS the reaper Lambda's)".to_owned()
            };
            format!(
                "canary {id}: step {} of {}, {}% of fresh sessions ({} keeps {}%); {window}\n",
                c.state.step + 1,
                c.plan.steps.len(),
                c.percent,
                c.baseline,
                100 - u16::from(c.percent),
            )
        }
        Some(Outcome::Promoted { by_hand }) => format!(
            "canary {id}: promoted{}; {} drains\n",
            if *by_hand { " by hand" } else { "" },
            c.baseline
        ),
        Some(Outcome::RolledBack { failures, by_hand }) => {
            let why = if *by_hand {
                " by hand".to_owned()
            } else {
                let reasons: Vec<String> = failures.iter().map(failure_text).collect();
                format!(": {}", reasons.join("; "))
            };
            format!(
                "canary {id}: rolled back{why}; fresh sessions go to {}, {id} drains\n",
                c.baseline
            )
        }
    };
    if let Some(j) = &c.last {
        let figures = |w: &WindowStats| {
            let p99 = w
                .p99
                .map_or_else(|| "-".to_owned(), |d| format!("{} ms", d.as_millis()));
            format!(
                "{} requests, {:.1}% 5xx, p99 {p99}",
                w.requests,
                w.error_ratio() * 100.0
            )
        };
        let verdict = match &j.verdict {
            Verdict::Pass => "pass".to_owned(),
            Verdict::Fail { failures } => {
                let reasons: Vec<String> = failures.iter().map(failure_text).collect();
                format!("fail ({})", reasons.join("; "))
            }
            Verdict::Inconclusive { requests, needed } => {
                format!("not enough traffic ({requests} of {needed} requests)")
            }
        };
        out.push_str(&format!(
            "  last window (step {}, ended {}): canary {}; current {}: {verdict}\n",
            j.step + 1,
            j.at,
            figures(&j.canary),
            figures(&j.baseline)
        ));
    }
    out
}

fn failure_text(f: &flotilla_core::canary::Failure) -> String {
    use flotilla_core::canary::Failure;
    match f {
        Failure::ErrorRatio { canary, limit } => format!(
            "5xx {:.1}% over the limit of {:.1}%",
            canary * 100.0,
            limit * 100.0
        ),
        Failure::ErrorRatioIncrease {
            canary,
            baseline,
            limit,
        } => format!(
            "5xx {:.1}% against {:.1}% on the current version (at most {:.1} points more)",
            canary * 100.0,
            baseline * 100.0,
            limit * 100.0
        ),
        Failure::Latency {
            canary_ms,
            baseline_ms,
            limit,
        } => format!(
            "p99 {canary_ms:.0} ms against {baseline_ms:.0} ms on the current version (at most {:.0}%)",
            limit * 100.0
        ),
        Failure::NotEnoughTraffic { requests, needed } => {
            format!("only {requests} of the {needed} requests needed reached it")
        }
    }
}

/// The `status` table and the lines under it.
pub fn status_text(report: &StatusReport, provider: &str, now: Timestamp) -> String {
    let total_weight: u32 = report
        .routing
        .default_targets()
        .iter()
        .map(|t| u32::from(t.weight))
        .sum();
    let any_readiness = report.versions.iter().any(|v| !v.readiness.is_empty());
    let mut headers = vec![
        "ID", "STATE", "WEIGHT", "RUNNING", "HEALTHY", "SESSIONS", "AGE",
    ];
    if any_readiness {
        headers.push("READY");
    }
    let rows: Vec<Vec<String>> = report
        .versions
        .iter()
        .map(|v| {
            let version = &v.record.version;
            let weight = if v.weight > 0 && total_weight > 0 {
                format!("{}%", u32::from(v.weight) * 100 / total_weight)
            } else {
                "-".to_owned()
            };
            let mut state = version.state.to_string();
            if version.state == VersionState::Retired && v.affinity == Some(Affinity::Serving) {
                state.push_str(" (routing still serving)");
            }
            // Both against the instances asked for: a version scaling down to zero shows
            // `RUNNING 2/0` until its instances stop.
            let (running, healthy) = match &v.compute {
                Some(c) => (
                    format!("{}/{}", c.running, c.desired),
                    format!("{}/{}", c.healthy, c.desired),
                ),
                None => ("-".to_owned(), "-".to_owned()),
            };
            let sessions = v
                .compute
                .as_ref()
                .and_then(|c| c.sessions)
                .map_or_else(|| "-".to_owned(), |s| s.to_string());
            let mut row = vec![
                version.id.to_string(),
                state,
                weight,
                running,
                healthy,
                sessions,
                age(version.age(now)),
            ];
            if any_readiness {
                let ready = v
                    .readiness
                    .values()
                    .filter(|r| **r == flotilla_core::drain::Readiness::ShutdownReady)
                    .count();
                if v.readiness.is_empty() {
                    row.push("-".to_owned());
                } else {
                    row.push(format!("{ready}/{}", v.readiness.len()));
                }
            }
            row
        })
        .collect();
    let mut out = format!("{} on the {provider} provider\n\n", report.name);
    if rows.is_empty() {
        out.push_str("no versions yet; run `flotilla deploy`\n");
    } else {
        out.push_str(&table(&headers, &rows));
    }
    out.push('\n');
    out.push_str(&format!(
        "listener rules: {} of {} in use\n",
        report.rules_used, report.rules_limit
    ));
    if let Some(lock) = &report.lock {
        let state = if lock.expires_at <= now {
            "expired"
        } else {
            "held"
        };
        out.push_str(&format!(
            "deploy lock: {state} by {} since {} (expires {})\n",
            lock.owner, lock.acquired_at, lock.expires_at
        ));
    }
    for v in &report.versions {
        if let Some(canary) = &v.record.canary
            && v.record.version.state.runs()
        {
            out.push_str(&canary_text(&v.record.version.id, canary));
        }
    }
    for v in &report.versions {
        let Some(c) = v.compute.as_ref().filter(|c| !c.stopped.is_empty()) else {
            continue;
        };
        out.push_str(&format!(
            "{} has {} of {} instances healthy; recently stopped:\n",
            v.record.version.id, c.healthy, c.desired
        ));
        for line in &c.stopped {
            out.push_str(&format!("  {line}\n"));
        }
    }
    for v in &report.versions {
        let Some(c) = v.compute.as_ref().filter(|c| !c.problems.is_empty()) else {
            continue;
        };
        out.push_str(&format!(
            "{}: {} of {} running instance(s) report a problem:\n",
            v.record.version.id,
            c.problems.len(),
            c.running
        ));
        for line in &c.problems {
            out.push_str(&format!("  {line}\n"));
        }
    }
    for v in &report.versions {
        let Some(c) = v.compute.as_ref().filter(|c| c.client_blocked_by_csp > 0) else {
            continue;
        };
        out.push_str(&format!(
            "{}: {} HTML page(s) went out without the browser client: their \
             Content-Security-Policy would block its script, so those tabs are not pinned to the \
             version; add 'self' or a 'nonce-...' source to script-src (the router reuses the \
             page's nonce)\n",
            v.record.version.id, c.client_blocked_by_csp
        ));
    }
    if !report.orphans.is_empty() {
        let ids: Vec<String> = report.orphans.iter().map(ToString::to_string).collect();
        out.push_str(&format!(
            "orphaned resources (no record): {}; `flotilla reap` removes them\n",
            ids.join(", ")
        ));
    }
    out
}

/// A reaper pass in words: what it did (or would do), what failed, and one line per draining
/// version it left draining, saying what that version waits for.
pub fn reap_text(report: &flotilla_engine::workflows::ReapReport, dry_run: bool) -> String {
    let mut lines = Vec::new();
    if let Some(lock) = &report.skipped_locked {
        lines.push(format!(
            "skipped: {} holds the lock (since {}); the next pass will run",
            lock.owner, lock.acquired_at
        ));
    }
    let visible: Vec<String> = report
        .actions
        .iter()
        .filter(|a| a.is_visible())
        .map(|a| describe_action(a, dry_run))
        .collect();
    if visible.is_empty() && report.skipped_locked.is_none() {
        lines.push("nothing to reap".to_owned());
    }
    lines.extend(visible);
    lines.extend(report.waiting.iter().map(describe_wait));
    for (action, error) in &report.failed {
        lines.push(format!(
            "FAILED: {}: {error}",
            describe_action(action, false)
        ));
    }
    lines.join("\n")
}

/// What a draining version waits for, in words.
pub fn describe_wait(wait: &Waiting) -> String {
    let id = &wait.id;
    let what = match wait.reason {
        WaitReason::InDefault => {
            return format!("{id} draining: fresh traffic still goes to it, so it stays");
        }
        WaitReason::TooYoung { until } => format!("younger than the minimum age until {until}"),
        WaitReason::InstancesNotReady { ready, instances } => {
            format!("sessions remain, {ready}/{instances} instance(s) ready to stop")
        }
        WaitReason::ReadyPasses { passes, needed } => {
            format!("all instances ready to stop, pass {passes} of {needed} in a row")
        }
    };
    format!(
        "{id} draining: {what} (retired by {} at the latest)",
        wait.retire_by
    )
}

/// A reaper action in words.
pub fn describe_action(action: &ReapAction, dry_run: bool) -> String {
    let would = if dry_run { "would " } else { "" };
    match action {
        ReapAction::RecordReadyPasses { id, passes } => {
            format!("{would}record {id}: {passes} ready pass(es) in a row")
        }
        ReapAction::Retire { id, reason } => {
            let why = match reason {
                RetireReason::SessionsEnded => "its sessions have ended",
                RetireReason::MaxAge => "it reached the maximum drain age",
            };
            format!("{would}retire {id} ({why}): affinity answers 410, scaled to zero")
        }
        ReapAction::RetireRouting { id } => format!("{would}make {id}'s affinity answer 410"),
        ReapAction::ScaleToZero { id } => format!("{would}scale {id} to zero"),
        ReapAction::DeleteResources { id } => {
            format!("{would}delete everything of {id} (nothing of it runs)")
        }
        ReapAction::CleanUpFailed { id, reason } => {
            let why = match reason {
                CleanupReason::Failed => "its deploy failed",
                CleanupReason::DeployTimedOut => "its deploy died while deploying",
            };
            format!("{would}clean up {id} ({why})")
        }
    }
}

/// Renders engine events as progress lines on stderr.
///
/// On a terminal, waiting for health is one line updated in place; elsewhere (CI logs) a line is
/// printed when the counts change, and at most every ten seconds otherwise. A build's output is
/// shown line by line, indented under the step, then how long it took and where its log is.
/// With `--json`, every event is one JSON object per line instead (stdout keeps the result).
pub struct ProgressPrinter {
    tty: bool,
    verbose: u8,
    json: bool,
    state: Mutex<WaitState>,
}

#[derive(Default)]
struct WaitState {
    /// A health line is showing on the terminal without a newline after it.
    open_line: bool,
    /// The last counts printed, and when.
    last: Option<((u32, u32), Instant)>,
}

impl ProgressPrinter {
    /// A printer for stderr.
    pub fn new(verbose: u8) -> Self {
        ProgressPrinter {
            tty: std::io::stderr().is_terminal(),
            verbose,
            json: false,
            state: Mutex::new(WaitState::default()),
        }
    }

    /// A printer for stderr that follows the command's output flags: JSON lines with `--json`.
    pub fn for_output(out: Output) -> Self {
        ProgressPrinter {
            json: out.json,
            ..Self::new(out.verbose)
        }
    }

    /// Ends an in-place line, so that whatever is printed next starts on its own line.
    pub fn finish(&self) {
        if let Ok(mut state) = self.state.lock()
            && state.open_line
        {
            eprintln!();
            state.open_line = false;
        }
    }

    fn line(&self, text: &str) {
        self.finish();
        eprintln!("{text}");
    }
}

impl Progress for ProgressPrinter {
    fn event(&self, event: Event) {
        if self.json {
            if let Ok(json) = serde_json::to_string(&event) {
                self.line(&json);
            }
            return;
        }
        if self.verbose >= 2
            && let Ok(json) = serde_json::to_string(&event)
        {
            self.line(&format!("event: {json}"));
        }
        match event {
            // The engine words steps about "it"; the id says which version "it" is.
            Event::Step { id, what } => self.line(&format!("  {id}: {what}")),
            Event::WaitingHealthy {
                healthy,
                needed,
                running,
                elapsed,
                timeout,
                ..
            } => {
                let text = format!(
                    "  waiting for health: {healthy}/{needed} healthy, {running} running ({}s of {}s)",
                    elapsed.as_secs(),
                    timeout.as_secs()
                );
                let Ok(mut state) = self.state.lock() else {
                    return;
                };
                if self.tty {
                    eprint!("\r\x1b[2K{text}");
                    let _ = std::io::stderr().flush();
                    state.open_line = true;
                } else {
                    let counts = (healthy, running);
                    let due = match state.last {
                        None => true,
                        Some((last, at)) => {
                            last != counts || at.elapsed() >= Duration::from_secs(10)
                        }
                    };
                    if due {
                        eprintln!("{text}");
                        state.last = Some((counts, Instant::now()));
                    }
                }
            }
            Event::Reaped { action, dry_run } => {
                if action.is_visible() || self.verbose > 0 {
                    self.line(&format!("  {}", describe_action(&action, dry_run)));
                }
            }
            Event::Note { message } => self.line(&format!("  note: {message}")),
            Event::BuildStarted { id, command, log } => self.line(&format!(
                "  {id}: running the build command `{command}` (its output is also in {log})"
            )),
            Event::BuildOutput { line, .. } => self.line(&format!("    | {line}")),
            Event::BuildFinished { id, elapsed, log } => self.line(&format!(
                "  {id}: built in {:.1}s (log: {log})",
                elapsed.as_secs_f64()
            )),
        }
    }
}

/// The JSON document printed for a failed command with `--json`.
#[derive(Serialize)]
struct JsonError<'a> {
    ok: bool,
    exit_code: u8,
    kind: &'a str,
    error: String,
    causes: Vec<String>,
    hint: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    problems: Option<&'a [crate::config::Problem]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    logs: Option<&'a [String]>,
}

/// The causes after the first message of an error chain, leaving out each one whose text the
/// message above it already shows (an error that writes its source into its own message and also
/// returns it as `source()`), so the chain says everything once.
fn new_causes(chain: impl Iterator<Item = String>) -> Vec<String> {
    let mut chain = chain;
    let Some(mut above) = chain.next() else {
        return Vec::new();
    };
    let mut causes = Vec::new();
    for cause in chain {
        if !above.contains(&cause) {
            causes.push(cause.clone());
        }
        above = cause;
    }
    causes
}

/// Prints `err` on stderr as `error:` then each `caused by:`, any logs the error carries, and the
/// hint last; with `json`, also prints a JSON document describing it on stdout (unless the command
/// already printed its own document about the failure).
pub fn print_error(err: &anyhow::Error, exit: Exit, hint: Option<&str>, json: bool) {
    let mut chain = err.chain();
    let mut text = String::new();
    if let Some(first) = chain.next() {
        text.push_str(&format!("error: {first}\n"));
    }
    let causes = new_causes(err.chain().map(ToString::to_string));
    for cause in &causes {
        text.push_str(&format!("caused by: {cause}\n"));
    }
    let logs = err
        .chain()
        .find_map(|c| match c.downcast_ref::<EngineError>() {
            Some(EngineError::NotHealthy { logs, .. }) => Some(logs.as_slice()),
            _ => None,
        })
        .filter(|logs| !logs.is_empty());
    if let Some(logs) = logs {
        text.push_str("last log lines of a failing instance:\n");
        for line in logs {
            text.push_str(&format!("  | {line}\n"));
        }
    }
    if let Some(hint) = hint {
        text.push_str(&format!("hint: {hint}\n"));
    }
    eprint!("{text}");
    // A command that reports its own failure (verify's mismatches, reap's failed actions) has
    // already printed its JSON document; a second one would break `--json | jq`.
    let reported = err.downcast_ref::<crate::exit::Reported>().is_some();
    if json && !reported {
        let problems = err
            .chain()
            .find_map(|c| match c.downcast_ref::<ConfigError>() {
                Some(ConfigError::Invalid { problems, .. }) => Some(problems.as_slice()),
                _ => None,
            });
        let doc = JsonError {
            ok: false,
            exit_code: exit.code(),
            kind: exit.name(),
            error: err.to_string(),
            causes,
            hint,
            problems,
            logs,
        };
        if let Ok(text) = serde_json::to_string_pretty(&doc) {
            stdout_line(&text);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    #[test]
    fn notes_and_warnings_are_json_lines_with_json() {
        let text = super::Output {
            json: false,
            verbose: 0,
        };
        let json = super::Output {
            json: true,
            verbose: 0,
        };
        assert_eq!(text.stderr_line("note", "started"), "started");
        assert_eq!(text.stderr_line("warning", "odd"), "warning: odd");
        assert_eq!(
            json.stderr_line("warning", "a \"quoted\" word"),
            r#"{"event":"warning","message":"a \"quoted\" word"}"#
        );
    }

    #[test]
    fn a_cause_already_in_the_message_above_is_not_repeated() {
        let chain = |lines: &[&str]| super::new_causes(lines.iter().map(|s| (*s).to_owned()));
        assert_eq!(
            chain(&[
                "cannot bind the router to 127.0.0.1:80: permission denied",
                "permission denied",
            ]),
            Vec::<String>::new()
        );
        assert_eq!(
            chain(&[
                "deploy failed",
                "the daemon stopped: connection reset",
                "connection reset"
            ]),
            vec!["the daemon stopped: connection reset".to_owned()]
        );
        assert_eq!(
            chain(&["a", "b", "c"]),
            vec!["b".to_owned(), "c".to_owned()]
        );
        assert!(chain(&[]).is_empty());
    }

    use expect_test::expect;
    use flotilla_core::drain::Readiness;
    use flotilla_core::routing::{RoutingTable, WeightedTarget};
    use flotilla_core::{DeploymentId, DeploymentName, InstanceId, Version};
    use flotilla_engine::ports::{ComputeStatus, VersionRecord};
    use flotilla_engine::workflows::{ReapReport, VersionStatus};

    use super::*;

    fn id(s: &str) -> DeploymentId {
        DeploymentId::new(s).expect("valid id")
    }

    fn version(
        s: &str,
        state: VersionState,
        compute: Option<(u32, u32, Option<u64>)>,
    ) -> VersionStatus {
        let v = id(s);
        VersionStatus {
            record: VersionRecord {
                version: Version {
                    id: v.clone(),
                    state,
                    created_at: v.created_at(),
                    state_changed_at: v.created_at(),
                },
                image: None,
                instances: 2,
                ready_passes: 0,
                canary: None,
            },
            compute: compute.map(|(healthy, desired, sessions)| ComputeStatus {
                desired,
                running: desired,
                healthy,
                instances: vec![],
                sessions,
                stopped: vec![],
                problems: vec![],
                client_blocked_by_csp: 0,
            }),
            weight: 0,
            affinity: Some(Affinity::Serving),
            readiness: BTreeMap::new(),
        }
    }

    #[test]
    fn ages() {
        let check = |secs: u64, want: &str| assert_eq!(age(Duration::from_secs(secs)), want);
        check(0, "0s");
        check(59, "59s");
        check(60, "1m");
        check(3599, "59m");
        check(3600, "1h00m");
        check(3600 * 5 + 60 * 7, "5h07m");
        check(86_400 * 2 + 3600 * 4, "2d04h");
    }

    #[test]
    fn status_table_shows_every_column() {
        let mut active = version(
            "20261125-190633-k3x9",
            VersionState::Active,
            Some((2, 2, Some(3))),
        );
        active.weight = 100;
        let mut draining = version(
            "20261124-101500-a1b2",
            VersionState::Draining,
            Some((1, 2, Some(0))),
        );
        if let Some(c) = draining.compute.as_mut() {
            c.stopped = vec![
                "task 0f1e2d3c stopped at 2026-11-25T19:05:00Z: Essential container in task \
                 exited (EssentialContainerExited); app exited with code 127"
                    .to_owned(),
            ];
        }
        draining.readiness = BTreeMap::from([
            (
                InstanceId::new("i1").expect("valid"),
                Readiness::ShutdownReady,
            ),
            (InstanceId::new("i2").expect("valid"), Readiness::Healthy),
        ]);
        if let Some(c) = active.compute.as_mut() {
            c.problems = vec![
                "task 158d1c80: the agent's drain source keeps failing (said at \
                 2026-11-25T19:10:00Z): read drain state: connection refused"
                    .to_owned(),
            ];
        }
        if let Some(c) = draining.compute.as_mut() {
            c.client_blocked_by_csp = 7;
        }
        let mut retired = version("20261120-080000-zz99", VersionState::Retired, None);
        retired.affinity = Some(Affinity::Retired);
        let mut routing = RoutingTable::new();
        routing.install_affinity(id("20261125-190633-k3x9"));
        routing
            .set_default(vec![WeightedTarget {
                id: id("20261125-190633-k3x9"),
                weight: 100,
            }])
            .expect("valid default");
        let report = StatusReport {
            name: DeploymentName::new("shop").expect("valid"),
            versions: vec![retired, draining, active],
            routing,
            rules_used: 6,
            rules_limit: 100,
            lock: None,
            orphans: vec![id("20261101-000000-dead")],
        };
        let now = id("20261125-191133-0000").created_at();
        expect![[r#"
            shop on the host provider

            ID                    STATE     WEIGHT  RUNNING  HEALTHY  SESSIONS  AGE    READY
            20261120-080000-zz99  retired   -       -        -        -         5d11h  -
            20261124-101500-a1b2  draining  -       2/2      1/2      0         1d08h  1/2
            20261125-190633-k3x9  active    100%    2/2      2/2      3         5m     -

            listener rules: 6 of 100 in use
            20261124-101500-a1b2 has 1 of 2 instances healthy; recently stopped:
              task 0f1e2d3c stopped at 2026-11-25T19:05:00Z: Essential container in task exited (EssentialContainerExited); app exited with code 127
            20261125-190633-k3x9: 1 of 2 running instance(s) report a problem:
              task 158d1c80: the agent's drain source keeps failing (said at 2026-11-25T19:10:00Z): read drain state: connection refused
            20261124-101500-a1b2: 7 HTML page(s) went out without the browser client: their Content-Security-Policy would block its script, so those tabs are not pinned to the version; add 'self' or a 'nonce-...' source to script-src (the router reuses the page's nonce)
            orphaned resources (no record): 20261101-000000-dead; `flotilla reap` removes them
        "#]]
        .assert_eq(&status_text(&report, "host", now));
    }

    #[test]
    fn empty_status_says_what_to_do() {
        let report = StatusReport {
            name: DeploymentName::new("shop").expect("valid"),
            versions: vec![],
            routing: RoutingTable::new(),
            rules_used: 0,
            rules_limit: 100,
            lock: None,
            orphans: vec![],
        };
        let text = status_text(&report, "aws", Timestamp::from_secs(0));
        assert!(
            text.contains("no versions yet; run `flotilla deploy`"),
            "{text}"
        );
    }

    #[test]
    fn reaper_actions_in_words() {
        let v = id("20261124-101500-a1b2");
        let retire = ReapAction::Retire {
            id: v.clone(),
            reason: RetireReason::SessionsEnded,
        };
        assert_eq!(
            describe_action(&retire, false),
            "retire 20261124-101500-a1b2 (its sessions have ended): affinity answers 410, scaled to zero"
        );
        assert_eq!(
            describe_action(&ReapAction::DeleteResources { id: v }, true),
            "would delete everything of 20261124-101500-a1b2 (nothing of it runs)"
        );
    }

    #[test]
    fn reap_explains_every_draining_version() {
        let t = |s: &str| id(s).created_at();
        let retire_by = t("20261127-190000-0000");
        let report = ReapReport {
            actions: vec![
                ReapAction::RecordReadyPasses {
                    id: id("20261124-101500-a1b2"),
                    passes: 1,
                },
                ReapAction::DeleteResources {
                    id: id("20261120-080000-zz99"),
                },
            ],
            waiting: vec![
                Waiting {
                    id: id("20261124-101500-a1b2"),
                    reason: WaitReason::ReadyPasses {
                        passes: 1,
                        needed: 2,
                    },
                    retire_by,
                },
                Waiting {
                    id: id("20261125-180000-c3d4"),
                    reason: WaitReason::InstancesNotReady {
                        ready: 0,
                        instances: 2,
                    },
                    retire_by,
                },
                Waiting {
                    id: id("20261125-190600-e5f6"),
                    reason: WaitReason::TooYoung {
                        until: t("20261125-190700-0000"),
                    },
                    retire_by,
                },
                Waiting {
                    id: id("20261125-190633-k3x9"),
                    reason: WaitReason::InDefault,
                    retire_by,
                },
            ],
            ..ReapReport::default()
        };
        expect![[r#"
            would delete everything of 20261120-080000-zz99 (nothing of it runs)
            20261124-101500-a1b2 draining: all instances ready to stop, pass 1 of 2 in a row (retired by 2026-11-27T19:00:00Z at the latest)
            20261125-180000-c3d4 draining: sessions remain, 0/2 instance(s) ready to stop (retired by 2026-11-27T19:00:00Z at the latest)
            20261125-190600-e5f6 draining: younger than the minimum age until 2026-11-25T19:07:00Z (retired by 2026-11-27T19:00:00Z at the latest)
            20261125-190633-k3x9 draining: fresh traffic still goes to it, so it stays"#]].assert_eq(&reap_text(&report, true));
        let quiet = ReapReport {
            waiting: report.waiting[1..2].to_vec(),
            ..ReapReport::default()
        };
        expect![[r#"
            nothing to reap
            20261125-180000-c3d4 draining: sessions remain, 0/2 instance(s) ready to stop (retired by 2026-11-27T19:00:00Z at the latest)"#]].assert_eq(&reap_text(&quiet, false));
    }

    #[test]
    fn a_canary_shows_its_step_weights_and_last_window_then_how_it_ended() {
        use flotilla_core::canary::{
            CanaryPlan, CanaryState, Failure, Outcome, Thresholds, Verdict, WindowStats,
        };
        use flotilla_engine::ports::{CanaryRecord, Judgement};
        let id = DeploymentId::new("20261207-173412-a1b2").expect("id");
        let baseline = DeploymentId::new("20261207-172901-k3x9").expect("id");
        let at = flotilla_core::Timestamp::from_secs(1_796_664_000);
        let mut canary = CanaryRecord {
            plan: CanaryPlan {
                steps: vec![5, 25, 50],
                pause: Duration::from_secs(60),
                thresholds: Thresholds::default(),
                max_extensions: 2,
            },
            baseline: baseline.clone(),
            state: CanaryState {
                step: 1,
                since: at,
                extensions: 0,
            },
            percent: 25,
            marks: Some(flotilla_engine::ports::CanaryMarks {
                canary: Default::default(),
                baseline: Default::default(),
                at: Some(at),
            }),
            last: Some(Judgement {
                at,
                step: 0,
                canary: WindowStats {
                    requests: 212,
                    errors: 0,
                    p99: Some(Duration::from_millis(24)),
                },
                baseline: WindowStats {
                    requests: 4050,
                    errors: 4,
                    p99: Some(Duration::from_millis(22)),
                },
                verdict: Verdict::Pass,
            }),
            outcome: None,
            settled: false,
        };
        expect![[r#"
            canary 20261207-173412-a1b2: step 2 of 3, 25% of fresh sessions (20261207-172901-k3x9 keeps 75%); judged at 2026-12-07T17:21:00Z
              last window (step 1, ended 2026-12-07T17:20:00Z): canary 212 requests, 0.0% 5xx, p99 24 ms; current 4050 requests, 0.1% 5xx, p99 22 ms: pass
        "#]]
        .assert_eq(&canary_text(&id, &canary));
        canary.outcome = Some(Outcome::RolledBack {
            failures: vec![Failure::ErrorRatio {
                canary: 0.5,
                limit: 0.05,
            }],
            by_hand: false,
        });
        expect![[r#"
            canary 20261207-173412-a1b2: rolled back: 5xx 50.0% over the limit of 5.0%; fresh sessions go to 20261207-172901-k3x9, 20261207-173412-a1b2 drains
              last window (step 1, ended 2026-12-07T17:20:00Z): canary 212 requests, 0.0% 5xx, p99 24 ms; current 4050 requests, 0.1% 5xx, p99 22 ms: pass
        "#]]
        .assert_eq(&canary_text(&id, &canary));
    }
}
