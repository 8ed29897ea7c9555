//! `flotilla logs --follow` on AWS: the versions' container output in the baseline's log group,
//! followed with CloudWatch Logs Live Tail (`StartLiveTail`), or by polling `FilterLogEvents`
//! about once a second where Live Tail is not available (an emulator or a region without it, a
//! log group class it does not serve, a policy without `logs:StartLiveTail`).
//!
//! Both paths feed one [`Cursor`], so a line is printed once however it arrives: a Live Tail
//! session carries only what is written after it starts, so each new session is preceded by one
//! `FilterLogEvents` catch-up from the cursor; an emulator's session that replays the whole group
//! is deduplicated the same way.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_cloudwatchlogs::types::StartLiveTailResponseStream;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextMut;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use flotilla_core::DeploymentId;
use flotilla_engine::ports::{ErrorKind, PortError};
use tokio::sync::mpsc;

use crate::error::port_error;

/// How far behind the newest event seen the cursor still accepts events: CloudWatch orders
/// events by the timestamps their writers gave them, and a line can arrive a little after a later
/// one from another task.
const WINDOW_MS: i64 = 10_000;

/// At most this many `FilterLogEvents` pages per read (history, catch-up or poll).
const PAGES: usize = 20;

/// Live Tail sessions that fail in a row (not "unavailable") before `follow` gives up.
const SESSION_FAILURES: u32 = 5;

/// One event of the log group, from either path.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TailEvent {
    /// Its log stream (`<id>/<container>/<task id>`).
    pub stream: String,
    /// Its timestamp (milliseconds since the epoch).
    pub at: i64,
    /// The line.
    pub message: String,
}

/// Which events are new: events older than a floor that trails the newest event seen by
/// [`WINDOW_MS`] are dropped; above it, each distinct event is counted, so a read that returns
/// events already printed (a catch-up, a replaying session) prints only those beyond what earlier
/// reads returned. Identical lines in one stream at one millisecond are told apart by their
/// number within a read.
#[derive(Clone, Debug, Default)]
pub struct Cursor {
    floor: i64,
    seen: HashMap<TailEvent, usize>,
}

/// The events one read (one poll, or one Live Tail session) has returned so far.
#[derive(Clone, Debug, Default)]
pub struct Read {
    counts: HashMap<TailEvent, usize>,
}

impl Cursor {
    /// A cursor that accepts events from `floor` (milliseconds) on.
    pub fn new(floor: i64) -> Cursor {
        Cursor {
            floor,
            seen: HashMap::new(),
        }
    }

    /// The oldest timestamp still accepted: where the next poll starts.
    pub fn floor(&self) -> i64 {
        self.floor
    }

    /// Moves the floor up to `floor` if it is lower (never down).
    pub fn raise(&mut self, floor: i64) {
        if floor > self.floor {
            self.floor = floor;
            self.seen.retain(|e, _| e.at >= floor);
        }
    }

    /// The events of `events` (more of read `read`) not returned before, in their order.
    pub fn admit(
        &mut self,
        read: &mut Read,
        events: impl IntoIterator<Item = TailEvent>,
    ) -> Vec<TailEvent> {
        let mut new = Vec::new();
        for event in events {
            if event.at < self.floor {
                continue;
            }
            let in_read = read.counts.entry(event.clone()).or_insert(0);
            *in_read += 1;
            let seen = self.seen.entry(event.clone()).or_insert(0);
            if *in_read > *seen {
                *seen = *in_read;
                new.push(event);
            }
        }
        if let Some(newest) = new.iter().map(|e| e.at).max() {
            self.raise(newest.saturating_sub(WINDOW_MS));
            let floor = self.floor;
            read.counts.retain(|e, _| e.at >= floor);
        }
        new
    }
}

/// Whether a `StartLiveTail` failure means Live Tail cannot be used here (so polling takes
/// over), from the error code and HTTP status: an operation the endpoint does not know, a log
/// group Live Tail does not serve, or a policy without `logs:StartLiveTail`.
pub fn live_tail_unavailable(code: Option<&str>, status: Option<u16>) -> bool {
    matches!(
        code,
        Some(
            "UnknownOperationException"
                | "UnknownOperation"
                | "InvalidAction"
                | "UnsupportedOperation"
                | "UnsupportedOperationException"
                | "NotImplemented"
                | "InvalidOperationException"
                | "AccessDeniedException"
                | "AccessDenied"
        )
    ) || matches!(status, Some(404 | 405 | 501))
}

/// What `follow` sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tailed {
    /// A line of a version's container output; `task` is the start of the task id.
    Line {
        /// The version.
        id: DeploymentId,
        /// The first 8 characters of the task id.
        task: String,
        /// The line, without its trailing newline.
        message: String,
    },
    /// How the logs are followed, or why that changed.
    Notice(String),
}

/// What `follow` follows.
#[derive(Clone, Debug)]
pub struct TailScope {
    /// One version's streams, or every stream of the group (versions deployed meanwhile too).
    pub only: Option<DeploymentId>,
    /// The versions whose last lines come first.
    pub history: Vec<DeploymentId>,
    /// How many of each version's last lines come first.
    pub lines: usize,
    /// How often to poll, and the pause between Live Tail sessions.
    pub interval: Duration,
}

/// Follows the container output of one deployment's versions in its log group.
pub struct LogTail {
    logs: aws_sdk_cloudwatchlogs::Client,
    group: String,
}

enum SessionEnd {
    /// The session ended (on AWS after three hours; an emulator's at once).
    Ended,
    /// Live Tail cannot be used here.
    Unavailable(String),
    /// The session failed; another may work.
    Failed(PortError),
}

impl LogTail {
    /// Follows `group` with `logs`. With a custom `endpoint_url` (an emulator), Live Tail goes
    /// to that endpoint as every other call does: the SDK would otherwise prefix its host with
    /// `streaming-`, as AWS's own endpoints are named, and `streaming-127.0.0.1` resolves to
    /// nothing.
    pub fn new(
        logs: aws_sdk_cloudwatchlogs::Client,
        group: impl Into<String>,
        endpoint_url: Option<&str>,
    ) -> LogTail {
        let logs = match endpoint_url {
            Some(_) => aws_sdk_cloudwatchlogs::Client::from_conf(
                logs.config()
                    .to_builder()
                    .interceptor(KeepEndpointHost)
                    .build(),
            ),
            None => logs,
        };
        LogTail {
            logs,
            group: group.into(),
        }
    }

    /// Sends each version's last `scope.lines` lines, then every new line until `out` is closed.
    /// Fails when the log group cannot be read, or Live Tail and the catch-up both keep failing.
    pub async fn follow(
        &self,
        scope: &TailScope,
        out: &mpsc::Sender<Tailed>,
    ) -> Result<(), PortError> {
        let mut cursor = Cursor::new(0);
        let mut history = Vec::new();
        for id in &scope.history {
            let since = i64::try_from(id.created_at().as_millis()).unwrap_or(0);
            let events = self.read_events(Some(id), since).await?;
            let skip = events.len().saturating_sub(scope.lines);
            for e in &events[skip..] {
                if !send_line(out, e.clone()).await {
                    return Ok(());
                }
            }
            history.extend(events);
        }
        // Everything read so far is printed or skipped on purpose: one read, so that no
        // version's events fall below the floor another's raised.
        history.sort_by_key(|e| e.at);
        cursor.admit(&mut Read::default(), history);
        // Only what is written from now on is followed (less the window for late arrivals).
        cursor.raise(now_millis().saturating_sub(WINDOW_MS));
        let arn = self.group_arn().await?;
        let prefixes = scope.only.as_ref().map(|id| vec![format!("{id}/")]);
        let mut live = true;
        let mut announced = false;
        let mut failures = 0;
        while !out.is_closed() {
            // What was written since the last read (between sessions, or since the last poll).
            let events = self
                .read_events(scope.only.as_ref(), cursor.floor())
                .await?;
            for e in cursor.admit(&mut Read::default(), events) {
                if !send_line(out, e).await {
                    return Ok(());
                }
            }
            if live {
                match self
                    .session(&arn, prefixes.clone(), &mut cursor, out, &mut announced)
                    .await
                {
                    SessionEnd::Ended => failures = 0,
                    SessionEnd::Unavailable(why) => {
                        live = false;
                        let _ = out
                            .send(Tailed::Notice(format!(
                                "CloudWatch Logs Live Tail is not available here ({why}); \
                                 polling FilterLogEvents every {} ms instead",
                                scope.interval.as_millis()
                            )))
                            .await;
                    }
                    SessionEnd::Failed(err) => {
                        failures += 1;
                        if failures >= SESSION_FAILURES {
                            return Err(err);
                        }
                        let _ = out
                            .send(Tailed::Notice(format!(
                                "a Live Tail session failed ({err}); the lines meanwhile are read \
                                 with FilterLogEvents, and a new session starts"
                            )))
                            .await;
                    }
                }
            }
            tokio::time::sleep(scope.interval).await;
        }
        Ok(())
    }

    /// One Live Tail session, its events admitted through `cursor` and sent, until it ends.
    async fn session(
        &self,
        arn: &str,
        prefixes: Option<Vec<String>>,
        cursor: &mut Cursor,
        out: &mpsc::Sender<Tailed>,
        announced: &mut bool,
    ) -> SessionEnd {
        let started = self
            .logs
            .start_live_tail()
            .log_group_identifiers(arn)
            .set_log_stream_name_prefixes(prefixes)
            .send()
            .await;
        let mut stream = match started {
            Ok(s) => s,
            Err(e) => {
                let status = e.raw_response().map(|r| r.status().as_u16());
                let code = e.code().map(str::to_owned);
                if live_tail_unavailable(code.as_deref(), status) {
                    let why = code
                        .or_else(|| status.map(|s| format!("HTTP {s}")))
                        .unwrap_or_else(|| "refused".to_owned());
                    return SessionEnd::Unavailable(why);
                }
                return SessionEnd::Failed(port_error("start live tail", &self.group, e));
            }
        };
        if !*announced {
            *announced = true;
            let _ = out
                .send(Tailed::Notice(
                    "following with CloudWatch Logs Live Tail".to_owned(),
                ))
                .await;
        }
        let mut read = Read::default();
        loop {
            match stream.response_stream.recv().await {
                Ok(Some(StartLiveTailResponseStream::SessionUpdate(update))) => {
                    let events = update.session_results().iter().map(|e| TailEvent {
                        stream: e.log_stream_name().unwrap_or("").to_owned(),
                        at: e.timestamp().unwrap_or(0),
                        message: e.message().unwrap_or("").to_owned(),
                    });
                    for e in cursor.admit(&mut read, events) {
                        if !send_line(out, e).await {
                            return SessionEnd::Ended;
                        }
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => return SessionEnd::Ended,
                Err(e) => {
                    // A session times out after three hours; a new one carries on.
                    if e.code() == Some("SessionTimeoutException") {
                        return SessionEnd::Ended;
                    }
                    return SessionEnd::Failed(PortError::new(
                        ErrorKind::Transient,
                        "live tail",
                        &self.group,
                        e.to_string(),
                    ));
                }
            }
        }
    }

    /// The events of `only`'s streams (or the whole group's) since `since`, oldest first: at
    /// most [`PAGES`] pages.
    async fn read_events(
        &self,
        only: Option<&DeploymentId>,
        since: i64,
    ) -> Result<Vec<TailEvent>, PortError> {
        let mut events = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..PAGES {
            let resp = self
                .logs
                .filter_log_events()
                .log_group_name(&self.group)
                .set_log_stream_name_prefix(only.map(|id| format!("{id}/")))
                .start_time(since.max(0))
                .set_next_token(token.take())
                .send()
                .await
                .map_err(|e| port_error("read logs", &self.group, e))?;
            events.extend(resp.events().iter().map(|e| TailEvent {
                stream: e.log_stream_name().unwrap_or("").to_owned(),
                at: e.timestamp().unwrap_or(0),
                message: e.message().unwrap_or("").to_owned(),
            }));
            match resp.next_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_owned()),
                _ => break,
            }
        }
        events.sort_by_key(|e| e.at);
        Ok(events)
    }

    /// The log group's ARN, which Live Tail takes (not its name).
    async fn group_arn(&self) -> Result<String, PortError> {
        let out = self
            .logs
            .describe_log_groups()
            .log_group_name_prefix(&self.group)
            .send()
            .await
            .map_err(|e| port_error("describe log group", &self.group, e))?;
        out.log_groups()
            .iter()
            .find(|g| g.log_group_name() == Some(self.group.as_str()))
            .and_then(|g| {
                g.log_group_arn()
                    .map(str::to_owned)
                    .or_else(|| g.arn().map(|a| a.trim_end_matches(":*").to_owned()))
            })
            .ok_or_else(|| {
                PortError::new(
                    ErrorKind::NotFound,
                    "describe log group",
                    &self.group,
                    "the log group does not exist",
                )
            })
    }
}

/// Undoes the SDK's `streaming-` host prefix for Live Tail on a custom endpoint (see
/// [`LogTail::new`]); installed only when one is configured.
#[derive(Debug)]
struct KeepEndpointHost;

impl Intercept for KeepEndpointHost {
    fn name(&self) -> &'static str {
        "KeepEndpointHost"
    }

    fn modify_before_signing(
        &self,
        context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let request = context.request_mut();
        if let Some((scheme, rest)) = request.uri().split_once("://streaming-") {
            let uri = format!("{scheme}://{rest}");
            request.set_uri(uri)?;
        }
        Ok(())
    }
}

/// Sends `event` as a line of its version; `false` once the receiver is gone. Events of streams
/// that name no version (not written by flotilla's tasks) are skipped.
async fn send_line(out: &mpsc::Sender<Tailed>, event: TailEvent) -> bool {
    let mut parts = event.stream.split('/');
    let Some(id) = parts.next().and_then(|p| DeploymentId::new(p).ok()) else {
        return !out.is_closed();
    };
    let task: String = parts.next_back().unwrap_or("").chars().take(8).collect();
    out.send(Tailed::Line {
        id,
        task,
        message: event.message.trim_end().to_owned(),
    })
    .await
    .is_ok()
}

fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(stream: &str, at: i64, message: &str) -> TailEvent {
        TailEvent {
            stream: stream.to_owned(),
            at,
            message: message.to_owned(),
        }
    }

    fn messages(events: &[TailEvent]) -> Vec<&str> {
        events.iter().map(|e| e.message.as_str()).collect()
    }

    #[test]
    fn a_replayed_read_prints_only_what_is_new_and_repeated_lines_are_kept() {
        let mut c = Cursor::new(0);
        let first = vec![ev("a", 100, "one"), ev("a", 100, ""), ev("a", 100, "")];
        assert_eq!(
            messages(&c.admit(&mut Read::default(), first.clone())),
            ["one", "", ""]
        );
        // A session that replays everything, plus one more blank line at the same millisecond.
        let mut again = first;
        again.push(ev("a", 100, ""));
        again.push(ev("b", 200, "two"));
        assert_eq!(messages(&c.admit(&mut Read::default(), again)), ["", "two"]);
        // Within one read, updates that follow one another are not compared with each other.
        let mut read = Read::default();
        assert_eq!(
            messages(&c.admit(&mut read, vec![ev("b", 300, "x")])),
            ["x"]
        );
        assert_eq!(
            messages(&c.admit(&mut read, vec![ev("b", 300, "x")])),
            ["x"]
        );
    }

    #[test]
    fn the_floor_trails_the_newest_event_and_drops_what_is_older() {
        let mut c = Cursor::new(1_000);
        assert!(
            c.admit(&mut Read::default(), vec![ev("a", 999, "old")])
                .is_empty()
        );
        c.admit(&mut Read::default(), vec![ev("a", 50_000, "new")]);
        assert_eq!(c.floor(), 50_000 - WINDOW_MS);
        // Late by less than the window: still printed; by more: dropped.
        assert_eq!(
            messages(&c.admit(
                &mut Read::default(),
                vec![ev("b", 45_000, "late"), ev("b", 39_000, "too late")]
            )),
            ["late"]
        );
        c.raise(10);
        assert_eq!(c.floor(), 50_000 - WINDOW_MS, "the floor never goes down");
    }

    #[test]
    fn live_tail_is_unavailable_only_for_answers_that_say_so() {
        let table: &[(Option<&str>, Option<u16>, bool)] = &[
            (Some("UnknownOperationException"), Some(400), true),
            (Some("InvalidAction"), Some(400), true),
            (Some("AccessDeniedException"), Some(400), true),
            (Some("InvalidOperationException"), Some(400), true),
            (None, Some(404), true),
            (None, Some(501), true),
            (Some("ResourceNotFoundException"), Some(400), false),
            (Some("ThrottlingException"), Some(400), false),
            (Some("ServiceUnavailableException"), Some(503), false),
            (None, None, false),
        ];
        for (code, status, unavailable) in table {
            assert_eq!(
                live_tail_unavailable(*code, *status),
                *unavailable,
                "{code:?} {status:?}"
            );
        }
    }
}
