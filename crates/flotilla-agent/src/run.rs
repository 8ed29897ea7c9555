//! The agent's life: find who it is, start the app, proxy to it and poll the drain state until a
//! stop signal (or the app's own exit), then stop in order.
//!
//! The stop sequence on SIGTERM (or SIGINT; a Spot interruption, a scale-in and a replaced task
//! all start it):
//! 1. refuse new sessions at once (requests without this version's affinity get `503`), keep
//!    serving the sessions and requests that carry it;
//! 2. wait for live sessions and in-flight requests to end, up to `session_wait` (a second signal
//!    ends the wait early). [`MOVE_LEAD`] before the wait's end, ask the sessions still open to
//!    reconnect: each WebSocket gets a going-away close frame (1001) at a frame boundary and each
//!    event stream ends between two events, so the tab's client reconnects, with its version,
//!    and the load balancer sends it to another task of the same version. Asking late lets the
//!    sessions that end by themselves end undisturbed, and gives a replacement task (ECS starts
//!    one at once) time to become healthy before the tabs arrive;
//! 3. stop the proxy, which cuts whatever is still open within [`PROXY_CUT_DEADLINE`], and say
//!    what was asked to move and what was cut;
//! 4. pass the same signal to the app's process group, wait up to `app_stop_grace`, then SIGKILL;
//! 5. return the app's exit status (`128 + signal` if a signal ended it) for the agent to exit
//!    with.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_core::names::DEFAULT_AFFINITY_QUERY;
use flotilla_proxy::http::HeaderValue;
use flotilla_proxy::{InstanceStats, ProxyConfig, SessionMove, ShutdownReport, Target};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, oneshot, watch};

use crate::child::{self, App, SpawnError, StopSignal};
use crate::gate::Gate;
use crate::health;
use crate::http::HttpClient;
use crate::identity::{Identity, IdentityError, discover_instance};
use crate::poll::{self, PollConfig};
use crate::settings::{AgentSettings, PROXY_CUT_DEADLINE, SettingsError};
use crate::source::DrainSource;
use crate::state::{LiveState, SessionCounts};

/// How often the stop sequence checks whether sessions have ended.
const STOP_CHECK: Duration = Duration::from_millis(100);

/// How often the stop sequence re-reads the app's own session count.
const STOP_PROBE: Duration = Duration::from_secs(1);

/// How long before the end of the session wait the sessions still open are asked to reconnect
/// elsewhere: time for each client to answer the close and go (at most half the wait).
pub const MOVE_LEAD: Duration = Duration::from_secs(5);

/// Why the agent could not run.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The settings are unusable.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// The instance id could not be learned.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The listen address could not be bound.
    #[error(
        "cannot listen on {addr}: {source}; choose a free address with --listen (or \
         FLOTILLA_AGENT_LISTEN)"
    )]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The app could not be started.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    /// Signal handlers could not be installed.
    #[error("cannot install the SIGTERM/SIGINT handlers: {0}")]
    Signals(#[source] std::io::Error),
    /// Waiting for the app failed.
    #[error("lost track of the app process: {0}")]
    Wait(#[source] std::io::Error),
}

/// What the stop sequence did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StopReport {
    /// The signal that started it (also the one passed to the app).
    pub signal: StopSignal,
    /// From the signal to the end of the session wait.
    pub waited: Duration,
    /// Whether the wait ended at its deadline (or at a second signal) with something still live.
    pub timed_out: bool,
    /// What was live when the sessions still open were asked to reconnect elsewhere (`None`
    /// when everything ended before that point).
    pub asked_to_move: Option<SessionCounts>,
    /// What was still live when the wait ended (all zero when everything ended in time).
    pub left: SessionCounts,
    /// What the proxy's shutdown cut.
    pub proxy: ShutdownReport,
    /// Whether the app ignored its signal for `app_stop_grace` and was killed.
    pub app_killed: bool,
}

/// How the agent ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentOutcome {
    /// The code to exit with: the app's exit code, or `128 + signal`.
    pub exit_code: u8,
    /// The app's exit status in words.
    pub app_status: String,
    /// Who the agent was.
    pub identity: Identity,
    /// The stop sequence, when a signal started it (`None` when the app exited on its own).
    pub stop: Option<StopReport>,
}

/// Runs the agent on `listener` until a stop signal arrives on `signals` (or the app exits), as
/// described in the module docs. `source` is where the drain state comes from.
///
/// Tests send [`StopSignal`]s through the channel; [`run_with_signals`] feeds it from real
/// SIGTERM/SIGINT.
pub async fn run(
    settings: AgentSettings,
    source: Arc<dyn DrainSource>,
    listener: TcpListener,
    mut signals: mpsc::Receiver<StopSignal>,
) -> Result<AgentOutcome, AgentError> {
    let problems = settings.problems();
    if !problems.is_empty() {
        return Err(SettingsError { problems }.into());
    }
    let client = HttpClient::new();
    let (instance, found) = discover_instance(
        settings.instance.clone(),
        |k| std::env::var(k).ok(),
        &client,
    )
    .await?;
    let identity = Identity {
        name: settings.deployment_name.clone(),
        id: settings.deployment_id.clone(),
        instance,
    };
    let app_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, settings.app_port));
    let mut app = App::spawn(&settings.command, settings.app_port)?;
    tracing::info!(
        deployment = %identity.name,
        version = %identity.id,
        instance = %identity.instance,
        instance_from = ?found,
        listen = %listener.local_addr().map_or_else(|_| settings.listen.to_string(), |a| a.to_string()),
        app = %app_addr,
        app_pid = app.pid().unwrap_or(0),
        drain_source = %source.describe(&identity),
        "agent started"
    );

    let header =
        ProxyConfig::header_name(&settings.affinity_header).map_err(|e| SettingsError {
            problems: vec![e.to_string()],
        })?;
    let stats = Arc::new(InstanceStats::new());
    let target = Target::new(app_addr, stats.clone())
        .with_deployment(identity.id.as_str())
        .map_err(|e| SettingsError {
            problems: vec![e.to_string()],
        })?;
    let state = Arc::new(LiveState::new(
        identity.clone(),
        stats,
        source.describe(&identity),
    ));
    let gate = Gate {
        state: state.clone(),
        target: Arc::new(target),
        client: client.clone(),
        app: app_addr,
        health_path: Arc::from(settings.health_path.as_str()),
        probe_timeout: settings.probe_timeout,
        header_value: HeaderValue::from_str(identity.id.as_str())
            .expect("a validated deployment id is a valid header value"),
        header: header.clone(),
        query: settings.affinity_query.clone(),
    };
    let session_move = SessionMove::new();
    let config = ProxyConfig {
        session_move: Some(session_move.clone()),
        deployment_header: header,
        inject_client: settings.inject_client,
        client_query_param: (settings.affinity_query != DEFAULT_AFFINITY_QUERY)
            .then(|| settings.affinity_query.clone()),
        // A load balancer terminates TLS in front of the agent.
        trust_forwarded: true,
        shutdown_deadline: PROXY_CUT_DEADLINE,
        header_read_timeout: settings.keepalive,
        ..ProxyConfig::default()
    };
    let (proxy_stop, proxy_stopped) = oneshot::channel::<()>();
    let proxy = tokio::spawn(flotilla_proxy::serve(listener, config, gate, async move {
        let _ = proxy_stopped.await;
    }));
    let (poll_stop, poll_stopped) = watch::channel(false);
    let poller = tokio::spawn(poll::run(
        state.clone(),
        source,
        PollConfig {
            poll: settings.drain_poll,
            grace: settings.drain_grace,
            emf: settings.emf,
            client: client.clone(),
            app: app_addr,
            health_path: settings.health_path.clone(),
            probe_timeout: settings.probe_timeout,
            protection: settings.scale_in_protection.clone(),
        },
        poll_stopped,
    ));

    let signal = tokio::select! {
        status = app.wait() => {
            let status = status.map_err(AgentError::Wait)?;
            tracing::warn!(
                status = %child::describe_status(status),
                "the app exited on its own; stopping the agent"
            );
            let _ = poll_stop.send(true);
            let _ = proxy_stop.send(());
            let report = proxy.await.ok();
            log_proxy_cut(report.as_ref());
            poller.abort();
            return Ok(AgentOutcome {
                exit_code: child::exit_code(status),
                app_status: child::describe_status(status),
                identity,
                stop: None,
            });
        }
        signal = next_signal(&mut signals) => signal,
    };

    // 1. No new sessions from now on.
    state.set_stopping();
    let _ = poll_stop.send(true);
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + settings.session_wait;
    let move_at = deadline - MOVE_LEAD.min(settings.session_wait / 2);
    let mut asked_to_move = None;
    tracing::info!(
        signal = signal.name(),
        live = ?state.counts(),
        "stop signal received: refusing new sessions; waiting up to {:?} for live sessions to end",
        settings.session_wait
    );

    // 2. Wait for live sessions, refreshing the app's own count now and then.
    let mut exited = None;
    let mut last_probe: Option<tokio::time::Instant> = None;
    let left = loop {
        let now = tokio::time::Instant::now();
        if last_probe.is_none_or(|at| now.duration_since(at) >= STOP_PROBE) && now < deadline {
            last_probe = Some(now);
            let timeout = settings.probe_timeout.min(deadline - now);
            health::probe_and_record(&state, &client, app_addr, &settings.health_path, timeout)
                .await;
        }
        let counts = state.counts();
        if counts.is_idle() || tokio::time::Instant::now() >= deadline {
            break counts;
        }
        if asked_to_move.is_none() && tokio::time::Instant::now() >= move_at {
            tracing::info!(
                websockets = counts.websockets,
                event_streams = counts.event_streams,
                "stop: asking {} WebSocket(s) and {} event stream(s) to reconnect to another \
                 instance of this version",
                counts.websockets,
                counts.event_streams
            );
            session_move.ask();
            asked_to_move = Some(counts);
        }
        let next_check = if asked_to_move.is_none() {
            move_at
        } else {
            deadline
        };
        tokio::select! {
            () = tokio::time::sleep(STOP_CHECK.min(next_check.saturating_duration_since(tokio::time::Instant::now()))) => {}
            again = next_signal(&mut signals) => {
                tracing::warn!(signal = again.name(), "second stop signal: ending the wait for sessions now");
                break state.counts();
            }
            status = app.wait() => {
                let status = status.map_err(AgentError::Wait)?;
                tracing::warn!(status = %child::describe_status(status), "the app exited while sessions were draining");
                exited = Some(status);
                break state.counts();
            }
        }
    };
    let waited = started.elapsed();
    let timed_out = !left.is_idle();
    if timed_out {
        tracing::warn!(
            websockets = left.websockets,
            event_streams = left.event_streams,
            app_reported_sessions = left.app_reported,
            requests_in_flight = left.in_flight,
            "stop: waited {waited:?}; cutting {} live session(s) ({} WebSocket(s), {} event \
             stream(s), {} reported by the app) and {} request(s) in flight",
            left.sessions(),
            left.websockets,
            left.event_streams,
            left.app_reported,
            left.in_flight,
        );
    } else {
        tracing::info!("stop: every session ended after {waited:?}; nothing cut");
    }

    // 3. Stop the proxy; it cuts what is left.
    let _ = proxy_stop.send(());
    let report = proxy.await.unwrap_or(ShutdownReport {
        connections_at_shutdown: 0,
        upgrades_at_shutdown: 0,
        cut_connections: 0,
        cut_upgrades: 0,
        elapsed: Duration::ZERO,
    });
    log_proxy_cut(Some(&report));
    poller.abort();

    // 4. Then the app.
    let (status, app_killed) = match exited {
        Some(status) => (status, false),
        None => app
            .stop(signal.signal(), settings.app_stop_grace)
            .await
            .map_err(AgentError::Wait)?,
    };
    if app_killed {
        tracing::warn!(
            "the app did not exit within {:?} of {}; killed it",
            settings.app_stop_grace,
            signal.name()
        );
    }
    let exit_code = child::exit_code(status);
    let moved = asked_to_move.unwrap_or_default();
    tracing::info!(
        status = %child::describe_status(status),
        exit_code,
        asked_to_move_websockets = moved.websockets,
        asked_to_move_event_streams = moved.event_streams,
        left_sessions = left.sessions(),
        cut_upgrades = report.cut_upgrades,
        cut_connections = report.cut_connections,
        "the app stopped; the agent exits"
    );
    Ok(AgentOutcome {
        exit_code,
        app_status: child::describe_status(status),
        identity,
        stop: Some(StopReport {
            signal,
            waited,
            timed_out,
            asked_to_move,
            left,
            proxy: report,
            app_killed,
        }),
    })
}

/// Binds `settings.listen`, turns SIGTERM and SIGINT into [`StopSignal`]s, and runs the agent:
/// the entry point for `flotilla agent`. Handlers are installed before the app starts, so an
/// early SIGTERM is never lost (nor kills the agent by default).
pub async fn run_with_signals(
    settings: AgentSettings,
    source: Arc<dyn DrainSource>,
) -> Result<AgentOutcome, AgentError> {
    let mut term = signal(SignalKind::terminate()).map_err(AgentError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(AgentError::Signals)?;
    let listener = TcpListener::bind(settings.listen)
        .await
        .map_err(|source| AgentError::Bind {
            addr: settings.listen,
            source,
        })?;
    let (tx, rx) = mpsc::channel(4);
    let forward = tokio::spawn(async move {
        loop {
            let signal = tokio::select! {
                _ = term.recv() => StopSignal::Terminate,
                _ = int.recv() => StopSignal::Interrupt,
            };
            if tx.send(signal).await.is_err() {
                return;
            }
        }
    });
    let result = run(settings, source, listener, rx).await;
    forward.abort();
    result
}

/// The next stop signal; never resolves once the sender is gone.
async fn next_signal(signals: &mut mpsc::Receiver<StopSignal>) -> StopSignal {
    match signals.recv().await {
        Some(signal) => signal,
        None => std::future::pending().await,
    }
}

fn log_proxy_cut(report: Option<&ShutdownReport>) {
    if let Some(report) = report
        && !report.is_clean()
    {
        tracing::warn!(
            cut_upgrades = report.cut_upgrades,
            cut_connections = report.cut_connections,
            "stop: cut {} upgraded connection(s) and {} busy connection(s)",
            report.cut_upgrades,
            report.cut_connections
        );
    }
}
