//! What the agents of a version say about themselves in their tasks' logs, read back for
//! `flotilla status`. Pure: the caller fetches the log events.
//!
//! An agent whose drain source keeps failing (no route to SSM, a task role without
//! `ssm:GetParameter`, a TLS failure) cannot write that anywhere in SSM, but its log still reaches
//! CloudWatch through the container's log driver. It logs a line carrying
//! `flotilla_drain_source=failing` when the failure becomes persistent and repeats it every
//! [`REPEAT_EVERY`] failed polls, and `flotilla_drain_source=recovered` when the source works
//! again; a running task whose latest such line says `failing` has the problem now.

use std::collections::BTreeMap;
use std::time::Duration;

use flotilla_agent::poll::MAX_BACKOFF;
use flotilla_agent::source_health::{LOG_FAILING, LOG_FIELD, LOG_RECOVERED, REPEAT_EVERY};
use flotilla_core::{InstanceId, Timestamp};

/// One log event of a version's log streams (what `logs` shows, and where agents report).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEvent {
    /// The stream, `<deployment id>/<container>/<task id>` with the awslogs driver.
    pub stream: String,
    /// When it was logged.
    pub at: Timestamp,
    /// The line.
    pub message: String,
}

/// The CloudWatch Logs filter pattern that finds both kinds of line (one term).
pub fn filter_pattern() -> &'static str {
    LOG_FIELD
}

/// How far back to read: a failure that still lasts has been repeated within this window, since
/// an agent polls at most every `max(poll, MAX_BACKOFF)` (with up to 20 % jitter) while failing.
pub fn lookback(poll: Duration) -> Duration {
    let slowest = poll.max(MAX_BACKOFF).mul_f64(1.2);
    slowest.saturating_mul(REPEAT_EVERY + 1)
}

/// One line per running task whose agent's latest report says its drain source is failing,
/// ordered by task id. Tasks not in `running` (stopped ones) and streams of other containers are
/// ignored.
pub fn drain_source_problems(events: &[LogEvent], running: &[InstanceId]) -> Vec<String> {
    let failing = format!("{LOG_FIELD}={LOG_FAILING}");
    let recovered = format!("{LOG_FIELD}={LOG_RECOVERED}");
    let mut latest: BTreeMap<&str, &LogEvent> = BTreeMap::new();
    for event in events {
        let Some(task) = event.stream.rsplit('/').next() else {
            continue;
        };
        if !running.iter().any(|i| i.as_str() == task) {
            continue;
        }
        if !event.message.contains(&failing) && !event.message.contains(&recovered) {
            continue;
        }
        let newer = latest.get(task).is_none_or(|seen| seen.at <= event.at);
        if newer {
            latest.insert(task, event);
        }
    }
    latest
        .into_iter()
        .filter(|(_, event)| event.message.contains(&failing))
        .map(|(task, event)| {
            let short: String = task.chars().take(8).collect();
            let error = event
                .message
                .rsplit_once(" error=")
                .map_or("(no error in the log line)", |(_, e)| e.trim_end());
            format!(
                "task {short}: the agent's drain source keeps failing (said at {}): {error}; \
                 this task cannot learn that its version drains nor report readiness, so the \
                 reaper retires its version only at the maximum drain age",
                event.at
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TASK_A: &str = "158d1c8083dd49d6b527399fd6414f5c";
    const TASK_B: &str = "2c0ffee083dd49d6b527399fd6414f5c";

    fn event(task: &str, secs: u64, message: &str) -> LogEvent {
        LogEvent {
            stream: format!("20261125-190633-k3x9/flotilla-app/{task}"),
            at: Timestamp::from_secs(secs),
            message: message.to_owned(),
        }
    }

    fn failing(error: &str) -> String {
        format!(
            "2026-11-25T19:07:00.000Z ERROR flotilla_agent::poll: the drain source keeps failing \
             flotilla_drain_source=failing source=ssm consecutive_failures=3 error={error}"
        )
    }

    fn recovered() -> String {
        "2026-11-25T19:09:00.000Z  INFO flotilla_agent::poll: the drain source works again \
         flotilla_drain_source=recovered source=ssm"
            .to_owned()
    }

    fn running(tasks: &[&str]) -> Vec<InstanceId> {
        tasks
            .iter()
            .map(|t| InstanceId::new(t).expect("valid"))
            .collect()
    }

    #[test]
    fn the_latest_report_of_each_running_task_decides() {
        let events = vec![
            event(
                TASK_A,
                100,
                &failing("read drain state: connection refused"),
            ),
            event(TASK_B, 100, &failing("read drain state: access denied")),
            event(TASK_B, 160, &recovered()),
            event(TASK_A, 220, &failing("read drain state: timed out")),
        ];
        let problems = drain_source_problems(&events, &running(&[TASK_A, TASK_B]));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("task 158d1c80: "),
            "{}",
            problems[0]
        );
        assert!(
            problems[0].contains("read drain state: timed out; "),
            "{}",
            problems[0]
        );
    }

    #[test]
    fn stopped_tasks_and_unrelated_lines_are_ignored() {
        let events = vec![
            event(TASK_A, 100, &failing("x")),
            event(TASK_B, 100, "error=something the app logged"),
        ];
        assert!(drain_source_problems(&events, &running(&[TASK_B])).is_empty());
        assert!(drain_source_problems(&events, &[]).is_empty());
    }

    #[test]
    fn out_of_order_events_still_pick_the_newest() {
        let events = vec![
            event(TASK_A, 300, &recovered()),
            event(TASK_A, 100, &failing("x")),
        ];
        assert!(drain_source_problems(&events, &running(&[TASK_A])).is_empty());
    }

    #[test]
    fn the_window_covers_the_slowest_repeat() {
        // Failing polls back off to MAX_BACKOFF (120 s), with up to 20 % jitter, and the line
        // repeats every REPEAT_EVERY (20) of them: 48 minutes, so at least that far back.
        assert!(lookback(Duration::from_secs(5)) >= Duration::from_secs(20 * 144));
        assert!(lookback(Duration::from_secs(600)) >= Duration::from_secs(20 * 720));
    }
}
