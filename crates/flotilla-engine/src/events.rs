//! Progress events: what a workflow tells its caller while it runs. The engine never prints; the
//! CLI renders these for people, or as JSON lines for scripts.

use std::time::Duration;

use flotilla_core::DeploymentId;
use flotilla_core::reaper::ReapAction;
use serde::{Deserialize, Serialize};

/// One thing a workflow did or is waiting for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A step is starting.
    Step {
        /// The version it concerns.
        id: DeploymentId,
        /// What is being done, in words ("creating instances").
        what: String,
    },
    /// Still waiting for a version to get healthy.
    WaitingHealthy {
        /// The version.
        id: DeploymentId,
        /// Healthy instances so far.
        healthy: u32,
        /// Healthy instances needed.
        needed: u32,
        /// Instances running.
        running: u32,
        /// Time waited so far.
        elapsed: Duration,
        /// The deadline.
        timeout: Duration,
    },
    /// A build command the provider runs for a version (the host's `[host] build`) started.
    BuildStarted {
        /// The version.
        id: DeploymentId,
        /// The shell command.
        command: String,
        /// The file that keeps its whole output.
        log: String,
    },
    /// One line the build printed (stdout and stderr together, in the order they came).
    BuildOutput {
        /// The version.
        id: DeploymentId,
        /// The line, without its newline.
        line: String,
    },
    /// The build command succeeded.
    BuildFinished {
        /// The version.
        id: DeploymentId,
        /// How long it ran.
        elapsed: Duration,
        /// The file that keeps its whole output.
        log: String,
    },
    /// A reaper action was taken (or, in a dry run, would be).
    Reaped {
        /// The action.
        action: ReapAction,
        /// Whether it was only planned.
        dry_run: bool,
    },
    /// Something worth telling that needs no action.
    Note {
        /// The message.
        message: String,
    },
}

/// Receives progress events.
pub trait Progress: Send + Sync {
    /// Called for each event, in order.
    fn event(&self, event: Event);
}

/// A build's output as it arrives, shared by every provider that runs one: each line becomes a
/// [`Event::BuildOutput`] (cut to [`BuildLines::MAX_EVENT_LINE`] characters; the provider's log
/// keeps the whole line), and the last [`BuildLines::TAIL`] lines are kept for the error of a
/// failed build.
pub struct BuildLines<'a> {
    id: DeploymentId,
    progress: &'a dyn Progress,
    tail: std::collections::VecDeque<String>,
}

impl<'a> BuildLines<'a> {
    /// Lines of output a failed build's error shows.
    pub const TAIL: usize = 30;
    /// Characters of one line passed on as an event.
    pub const MAX_EVENT_LINE: usize = 2000;

    /// Output of `id`'s build, reported to `progress`.
    pub fn new(id: DeploymentId, progress: &'a dyn Progress) -> Self {
        BuildLines {
            id,
            progress,
            tail: std::collections::VecDeque::with_capacity(Self::TAIL),
        }
    }

    /// One line (without its newline).
    pub fn line(&mut self, line: &str) {
        let shown = match line.char_indices().nth(Self::MAX_EVENT_LINE) {
            Some((cut, _)) => format!("{}…", &line[..cut]),
            None => line.to_owned(),
        };
        if self.tail.len() == Self::TAIL {
            self.tail.pop_front();
        }
        self.tail.push_back(shown.clone());
        self.progress.event(Event::BuildOutput {
            id: self.id.clone(),
            line: shown,
        });
    }

    /// The last lines, indented for an error message (`  | line`), or a note that there was none.
    pub fn tail_text(&self) -> String {
        if self.tail.is_empty() {
            return "  (it printed nothing)".to_owned();
        }
        self.tail
            .iter()
            .map(|l| format!("  | {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A [`Progress`] that drops every event.
pub struct Silent;

impl Progress for Silent {
    fn event(&self, _event: Event) {}
}

/// A [`Progress`] that keeps every event, for tests.
#[derive(Default)]
pub struct Recorder(pub std::sync::Mutex<Vec<Event>>);

impl Progress for Recorder {
    fn event(&self, event: Event) {
        if let Ok(mut events) = self.0.lock() {
            events.push(event);
        }
    }
}

#[cfg(test)]
mod build_lines_tests {
    use super::*;

    #[test]
    fn lines_become_events_cut_to_length_and_the_tail_keeps_the_last_ones() {
        let recorder = Recorder::default();
        let id = DeploymentId::new("20261207-120000-aaaa").expect("valid id");
        let mut lines = BuildLines::new(id, &recorder);
        assert_eq!(lines.tail_text(), "  (it printed nothing)");
        for n in 0..40 {
            lines.line(&format!("line {n}"));
        }
        let long = "x".repeat(BuildLines::MAX_EVENT_LINE + 5);
        lines.line(&long);
        let tail = lines.tail_text();
        assert_eq!(tail.lines().count(), BuildLines::TAIL);
        assert!(tail.starts_with("  | line 11\n"), "{tail}");
        let events = recorder.0.lock().expect("events");
        assert_eq!(events.len(), 41);
        let Some(Event::BuildOutput { line, .. }) = events.last() else {
            panic!("{events:?}");
        };
        assert_eq!(line.chars().count(), BuildLines::MAX_EVENT_LINE + 1);
        assert!(line.ends_with('…'));
    }
}
