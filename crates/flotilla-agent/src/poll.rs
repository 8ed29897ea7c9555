//! The drain poll loop: read the version's state, count sessions, decide readiness with
//! `flotilla_core::drain::DrainTracker`, write it when it changes, print one EMF line, sleep.
//!
//! Pace: every `poll` seconds with ±20 % jitter, so tasks started together do not read in step.
//! After a throttled or transient failure the wait doubles per consecutive failure (capped at
//! [`MAX_BACKOFF`]): SSM's default `GetParameter` budget is 40 per second per account and
//! region, shared by every task, so a fleet must slow down together when it is told to.

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flotilla_core::Timestamp;
use flotilla_core::drain::{DrainTracker, Readiness, Sessions};
use flotilla_core::lifecycle::VersionState;
use serde_json::json;
use tokio::sync::watch;

use crate::health;
use crate::http::HttpClient;
use crate::identity::Identity;
use crate::protection::{self, ScaleInProtection};
use crate::source::{DrainError, DrainErrorKind, DrainSource};
use crate::source_health::{self, PERSISTENT_AFTER, SourceChange};
use crate::state::{LiveState, takes_new_sessions};

/// The longest wait between polls while backing off (unless `poll` itself is longer).
pub const MAX_BACKOFF: Duration = Duration::from_secs(120);

/// The EMF namespace of the readiness metric.
pub const EMF_NAMESPACE: &str = "App/Drain";

/// The EMF metric name.
pub const EMF_METRIC: &str = "ShutdownReady";

/// The wait before the next poll after `failures` consecutive throttled or transient failures
/// (0 after a success), scaled by `jitter` (clamped to `0.8..=1.2`).
pub fn next_delay(poll: Duration, failures: u32, jitter: f64) -> Duration {
    let jitter = jitter.clamp(0.8, 1.2);
    let base = if failures == 0 {
        poll
    } else {
        let factor = 1u32 << failures.min(16);
        poll.saturating_mul(factor).min(MAX_BACKOFF.max(poll))
    };
    base.mul_f64(jitter)
}

/// One CloudWatch Embedded Metric Format line: `ShutdownReady` (0 or 1) in `App/Drain` with
/// dimensions `deployment_name`, `deployment_id`, `task_id`.
pub fn emf_line(who: &Identity, ready: bool, at: Timestamp) -> String {
    json!({
        "_aws": {
            "Timestamp": at.as_millis(),
            "CloudWatchMetrics": [{
                "Namespace": EMF_NAMESPACE,
                "Dimensions": [["deployment_name", "deployment_id", "task_id"]],
                "Metrics": [{"Name": EMF_METRIC, "Unit": "Count"}],
            }],
        },
        "deployment_name": who.name.as_str(),
        "deployment_id": who.id.as_str(),
        "task_id": who.instance.as_str(),
        EMF_METRIC: u8::from(ready),
    })
    .to_string()
}

/// The state to act on after a read: what was read, except that a version seen leaving
/// (draining, retired, failed) whose state then disappears stays as it was. Its parameters are
/// removed only once it is gone, so a missing state must never let it take new sessions again;
/// only an explicit state (a rollback writes `active`) does.
pub fn carry_state(
    before: Option<VersionState>,
    read: Option<VersionState>,
) -> Option<VersionState> {
    match (before, read) {
        (Some(previous), None) if !takes_new_sessions(Some(previous)) => Some(previous),
        (_, read) => read,
    }
}

/// The wall clock as a core timestamp.
pub(crate) fn now() -> Timestamp {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    Timestamp::from_millis(millis)
}

/// What the poll loop needs besides the shared state.
pub(crate) struct PollConfig {
    pub(crate) poll: Duration,
    pub(crate) grace: Duration,
    pub(crate) emf: bool,
    pub(crate) client: HttpClient,
    pub(crate) app: SocketAddr,
    pub(crate) health_path: String,
    pub(crate) probe_timeout: Duration,
    /// The ECS agent endpoint to hold task scale-in protection through; `None`: none.
    pub(crate) protection: Option<String>,
}

/// What a [`Poller`] needs: the pace, the grace period and where the app answers its health.
#[derive(Clone, Debug)]
pub struct PollerSettings {
    /// Time between polls (±20 % jitter, backing off on throttling), as `FLOTILLA_DRAIN_POLL_SECONDS`.
    pub poll: Duration,
    /// The grace period of readiness, as `FLOTILLA_DRAIN_GRACE_SECONDS`.
    pub grace: Duration,
    /// The app's address (its health is probed each poll, for the sessions it reports).
    pub app: SocketAddr,
    /// The app's health path.
    pub health_path: String,
}

/// The agent's poll loop on its own, without an app process or a proxy in front: what the
/// drain-signal benchmark runs a thousand of, each with its own timing, to count what a fleet
/// asks of its drain source. The loop is the one a running agent uses ([`run`]).
pub struct Poller {
    state: Arc<LiveState>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Poller {
    /// Starts polling `source` as `identity`.
    pub fn spawn(
        identity: Identity,
        source: Arc<dyn DrainSource>,
        settings: PollerSettings,
    ) -> Poller {
        let state = Arc::new(LiveState::new(
            identity.clone(),
            Arc::new(flotilla_proxy::InstanceStats::new()),
            source.describe(&identity),
        ));
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(
            state.clone(),
            source,
            PollConfig {
                poll: settings.poll,
                grace: settings.grace,
                emf: false,
                client: HttpClient::new(),
                app: settings.app,
                health_path: settings.health_path,
                probe_timeout: Duration::from_secs(2),
                protection: None,
            },
            stopped,
        ));
        Poller { state, stop, task }
    }

    /// The version's state as last read (`None` before the first read, or when it has none).
    pub fn version_state(&self) -> Option<VersionState> {
        self.state.version_state()
    }

    /// Whether the last poll found this instance ready to stop.
    pub fn ready(&self) -> bool {
        self.state.ready()
    }

    /// The drain source's recent record, as the health document shows it.
    pub fn source_health(&self) -> source_health::SourceHealth {
        self.state.source_health()
    }

    /// Stops the loop and waits for it.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Polls until `stop` turns true.
pub(crate) async fn run(
    state: Arc<LiveState>,
    source: Arc<dyn DrainSource>,
    config: PollConfig,
    mut stop: watch::Receiver<bool>,
) {
    let who = state.identity.clone();
    let mut tracker = DrainTracker::new();
    // No parameter counts as `healthy` to the reaper, so only a change from that is written.
    let mut reported = Readiness::Healthy;
    let mut failures: u32 = 0;
    let mut last_error: Option<String> = None;
    let mut protection = ScaleInProtection::default();
    let mut protection_error: Option<String> = None;
    loop {
        if *stop.borrow() {
            return;
        }
        let mut throttled = false;
        // The first failure of this poll, if any: the poll counts as failed for the health
        // document.
        let mut failed: Option<DrainError> = None;
        match source.read_state(&who).await {
            Ok(read) => {
                let before = state.version_state();
                let version = carry_state(before, read);
                if version != read {
                    tracing::debug!(
                        "the version's state is gone; it was leaving, so it stays leaving"
                    );
                }
                if before != version {
                    tracing::info!(
                        from = before.map_or("unknown", |s| s.as_str()),
                        to = version.map_or("unknown", |s| s.as_str()),
                        "version state changed"
                    );
                }
                state.set_version_state(version);
                failures = 0;
                last_error = None;
            }
            Err(err) => {
                throttled = matches!(
                    err.kind,
                    DrainErrorKind::Throttled | DrainErrorKind::Transient
                );
                log_error(&mut last_error, &err.to_string());
                failed = Some(err);
            }
        }
        health::probe_and_record(
            &state,
            &config.client,
            config.app,
            &config.health_path,
            config.probe_timeout,
        )
        .await;
        let at = now();
        let counts = state.counts();
        let status = tracker.observe(
            state.version_draining(),
            Sessions {
                live: counts.sessions(),
                // Catches a tab that reconnected and left again between two polls.
                started: state.stats.snapshot().sessions_total,
            },
            at,
            config.grace,
        );
        state.set_ready(status.ready);
        let readiness = status.readiness();
        if readiness != reported {
            match source.write_readiness(&who, readiness).await {
                Ok(()) => {
                    tracing::info!(
                        %readiness,
                        sessions = counts.sessions(),
                        "reported readiness"
                    );
                    reported = readiness;
                }
                Err(err) => {
                    throttled |= matches!(
                        err.kind,
                        DrainErrorKind::Throttled | DrainErrorKind::Transient
                    );
                    log_error(&mut last_error, &err.to_string());
                    failed.get_or_insert(err);
                }
            }
        }
        if let Some(agent_uri) = &config.protection {
            let retiring = matches!(
                state.version_state(),
                Some(VersionState::Retired | VersionState::Failed)
            );
            if let Some(action) = protection.decide(at, counts.sessions(), retiring, config.grace) {
                match protection::apply(&config.client, agent_uri, action).await {
                    Ok(()) => {
                        protection.applied(action, at);
                        protection_error = None;
                        tracing::info!(
                            ?action,
                            sessions = counts.sessions(),
                            "task scale-in protection set"
                        );
                    }
                    Err(err) if protection_error.as_deref() == Some(err.as_str()) => {
                        tracing::debug!(error = %err, "task scale-in protection still failing");
                    }
                    Err(err) => {
                        tracing::warn!(
                            error = %err,
                            "could not set task scale-in protection; trying again next poll \
                             (the task role needs ecs:UpdateTaskProtection)"
                        );
                        protection_error = Some(err);
                    }
                }
            }
        }
        if throttled {
            failures = failures.saturating_add(1);
        }
        record_source_health(&state, failed.as_ref(), at);
        record_degraded(&state, source.degraded());
        if config.emf {
            let line = emf_line(&who, status.ready, at);
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
        let delay = next_delay(config.poll, failures, 0.8 + fastrand::f64() * 0.4);
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
    }
}

/// Records the poll's outcome in the drain source's health and logs what changed: a failure that
/// becomes persistent at `error` (and again every `REPEAT_EVERY` failed polls while it lasts), a
/// recovery at `info`.
fn record_source_health(state: &LiveState, failed: Option<&DrainError>, at: Timestamp) {
    let change = state.update_source_health(|health| match failed {
        Some(err) => health.failed(err, at),
        None => health.succeeded(at),
    });
    let health = state.source_health();
    match change {
        SourceChange::Persistent | SourceChange::StillFailing => {
            let error = health
                .last_error
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default();
            // `error` stays the last field: `flotilla status` reads everything after `error=`.
            tracing::error!(
                flotilla_drain_source = %source_health::LOG_FAILING,
                source = %state.source_name,
                consecutive_failures = health.consecutive_failures,
                error = %error,
                "the drain source keeps failing ({} poll(s) in a row, persistent after {} or at \
                 once when it needs a human): this instance cannot learn that its version drains \
                 nor report readiness, so the reaper retires the version only at its maximum \
                 drain age; the health document shows it under `drain_source`",
                health.consecutive_failures,
                PERSISTENT_AFTER,
            );
        }
        SourceChange::Recovered { failures } => {
            tracing::info!(
                flotilla_drain_source = %source_health::LOG_RECOVERED,
                source = %state.source_name,
                "the drain source works again after {failures} failed poll(s)"
            );
        }
        SourceChange::Failing | SourceChange::None => {}
    }
}

/// Records what the source is working around and logs when that starts (`warn`), changes and
/// ends (`info`).
fn record_degraded(state: &LiveState, degraded: Option<String>) {
    let changed = state.update_source_health(|health| health.set_degraded(degraded.clone()));
    if !changed {
        return;
    }
    match degraded {
        Some(what) => tracing::warn!(
            source = %state.source_name,
            degraded = %what,
            "the drain source is working around a failure; the health document shows it under \
             `drain_source.degraded`"
        ),
        None => tracing::info!(
            source = %state.source_name,
            "the drain source works as designed again"
        ),
    }
}

/// Logs a drain-source failure at `warn` when it is new, at `debug` when it repeats.
fn log_error(last: &mut Option<String>, message: &str) {
    if last.as_deref() == Some(message) {
        tracing::debug!(error = message, "drain source still failing");
    } else {
        tracing::warn!(
            error = message,
            "drain source call failed; keeping the last known state"
        );
        *last = Some(message.to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_core::{DeploymentId, DeploymentName, InstanceId};

    #[test]
    fn next_delay_table() {
        let poll = Duration::from_secs(5);
        let check = |failures: u32, jitter: f64, expected_ms: u64| {
            assert_eq!(
                next_delay(poll, failures, jitter).as_millis() as u64,
                expected_ms,
                "failures={failures} jitter={jitter}"
            );
        };
        check(0, 1.0, 5_000);
        check(0, 0.8, 4_000);
        check(0, 1.2, 6_000);
        check(0, 5.0, 6_000); // jitter is clamped
        check(1, 1.0, 10_000);
        check(2, 1.0, 20_000);
        check(4, 1.0, 80_000);
        check(5, 1.0, 120_000); // capped
        check(40, 1.0, 120_000); // no overflow
        check(5, 0.8, 96_000);
        // A poll longer than the cap is never shortened by backing off.
        assert_eq!(
            next_delay(Duration::from_secs(300), 3, 1.0),
            Duration::from_secs(300)
        );
    }

    #[test]
    fn carry_state_table() {
        use VersionState::*;
        let check = |before, read, expected| {
            assert_eq!(
                carry_state(before, read),
                expected,
                "{before:?} then {read:?}"
            );
        };
        check(None, None, None);
        check(None, Some(Active), Some(Active));
        check(Some(Active), None, None);
        check(Some(Deploying), None, None);
        check(Some(Draining), None, Some(Draining));
        check(Some(Retired), None, Some(Retired));
        check(Some(Failed), None, Some(Failed));
        check(Some(Draining), Some(Active), Some(Active));
    }

    /// The lines `flotilla status` looks for in a task's log: the marker field, and the error as
    /// the last field, exactly as the agent's logging (`launch::init_logging`'s format) prints.
    #[test]
    fn a_persistent_failure_and_its_recovery_are_logged_with_the_marker_status_reads() {
        use std::sync::Mutex;
        #[derive(Clone, Default)]
        struct Captured(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Captured {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().expect("lock").extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let who = Identity {
            name: DeploymentName::new("shop").expect("valid"),
            id: DeploymentId::new("20261125-190633-k3x9").expect("valid"),
            instance: InstanceId::new("158d1c8083dd49d6b527399fd6414f5c").expect("valid"),
        };
        let state = LiveState::new(
            who,
            Arc::new(flotilla_proxy::InstanceStats::new()),
            "ssm".to_owned(),
        );
        let err = DrainError::new(
            crate::source::DrainErrorKind::Transient,
            "read drain state",
            "/apps/shop/20261125-190633-k3x9/state",
            "dispatch failure: connection refused",
        );
        tracing::subscriber::with_default(subscriber, || {
            for i in 0..PERSISTENT_AFTER {
                record_source_health(&state, Some(&err), Timestamp::from_secs(100 + u64::from(i)));
            }
            record_source_health(&state, None, Timestamp::from_secs(200));
        });
        let text = String::from_utf8(captured.0.lock().expect("lock").clone()).expect("utf-8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        let failing = format!(
            "{}={}",
            source_health::LOG_FIELD,
            source_health::LOG_FAILING
        );
        assert!(lines[0].contains(&failing), "{}", lines[0]);
        assert!(lines[0].ends_with(&format!(" error={err}")), "{}", lines[0]);
        let recovered = format!(
            "{}={}",
            source_health::LOG_FIELD,
            source_health::LOG_RECOVERED
        );
        assert!(lines[1].contains(&recovered), "{}", lines[1]);
    }

    #[test]
    fn emf_line_shape() {
        let who = Identity {
            name: DeploymentName::new("shop").expect("valid"),
            id: DeploymentId::new("20261125-190633-k3x9").expect("valid"),
            instance: InstanceId::new("158d1c8083dd49d6b527399fd6414f5c").expect("valid"),
        };
        let line = emf_line(&who, true, Timestamp::from_millis(1_764_097_593_000));
        assert!(!line.contains('\n'), "one line");
        let doc: serde_json::Value = serde_json::from_str(&line).expect("JSON");
        let expected = json!({
            "_aws": {
                "Timestamp": 1_764_097_593_000u64,
                "CloudWatchMetrics": [{
                    "Namespace": "App/Drain",
                    "Dimensions": [["deployment_name", "deployment_id", "task_id"]],
                    "Metrics": [{"Name": "ShutdownReady", "Unit": "Count"}],
                }],
            },
            "deployment_name": "shop",
            "deployment_id": "20261125-190633-k3x9",
            "task_id": "158d1c8083dd49d6b527399fd6414f5c",
            "ShutdownReady": 1,
        });
        assert_eq!(doc, expected);
        let not_ready: serde_json::Value =
            serde_json::from_str(&emf_line(&who, false, Timestamp::EPOCH)).expect("JSON");
        assert_eq!(not_ready["ShutdownReady"], 0);
    }
}
