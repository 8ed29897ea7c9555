//! The accept loop, connection limits, connection tracking and graceful shutdown.
//!
//! [`serve`] takes its listener and its shutdown signal as arguments (the mini-redis shape), so
//! tests bind `127.0.0.1:0` and drive the real server. Shutdown happens in three phases,
//! broadcast to every connection and tunnel task over one `watch` channel:
//! `Running` → `Draining` (stop accepting; idle keep-alive connections close at once, busy ones
//! after their current response) → `Cut` (at the deadline, whatever is still open is dropped and
//! counted in the [`ShutdownReport`]).
//!
//! [`serve_handing_over`] is the same server for a daemon handing its listeners to a successor
//! (see the host's `handover`): its shutdown future says how to drain ([`DrainPlan`]). During the
//! plan's *linger* the server has stopped accepting but does not close idle keep-alive
//! connections yet: every response it sends carries `Connection: close`, so a client that keeps
//! sending requests is told to reconnect (reaching the successor) after an answered request
//! instead of finding its idle connection closed under a request in flight, the race that
//! closing idle connections at once has (Envoy drains listeners the same way). Then it drains as
//! above, up to the plan's deadline.
//!
//! With [`ProxyConfig::tls`], each connection's task does its TLS handshake (bounded by
//! [`ProxyConfig::tls_handshake_timeout`]) before serving HTTP/2 or HTTP/1.1, as ALPN chose, so
//! a slow handshake never holds up the accept loop, and a connection handed over from elsewhere
//! enters through the same per-connection function as an accepted one. On HTTP/2, graceful
//! shutdown sends `GOAWAY`: streams in progress finish, new ones go elsewhere.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::header::HeaderValue;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, watch};

use crate::config::{DEFAULT_DEPLOYMENT_HEADER, ProxyConfig};
use crate::error::overloaded_response;
use crate::headers::Forwarded;
use crate::proxy;
use crate::route::Route;
use crate::tls::ALPN_ACME_TLS;
use crate::upstream::Pool;

/// How long a connection refused over the limit may take to send its request before it is closed
/// without its `503`.
const REFUSAL_WAIT: Duration = Duration::from_secs(1);

/// How long cut tasks get to finish after the deadline before [`serve`] returns anyway.
const CUT_GRACE: Duration = Duration::from_secs(1);

/// What graceful shutdown did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Client connections open when shutdown began (upgraded connections counted once, under
    /// `upgrades_at_shutdown`).
    pub connections_at_shutdown: usize,
    /// Upgraded (WebSocket) connections open when shutdown began.
    pub upgrades_at_shutdown: usize,
    /// Client connections still busy at the deadline, and so closed mid-request.
    pub cut_connections: usize,
    /// Upgraded connections still open at the deadline, and so closed.
    pub cut_upgrades: usize,
    /// Time from the shutdown signal to the end of draining.
    pub elapsed: Duration,
}

impl ShutdownReport {
    /// Everything the deadline cut: busy connections plus open upgraded connections.
    pub fn cut(&self) -> usize {
        self.cut_connections + self.cut_upgrades
    }

    /// Whether every connection finished before the deadline.
    pub fn is_clean(&self) -> bool {
        self.cut() == 0
    }
}

/// Shutdown phase broadcast to every task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Serving normally.
    Running,
    /// No longer accepting; finish what is in progress.
    Draining,
    /// The deadline passed: drop everything now.
    Cut,
}

/// What a [`LiveGuard`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Live {
    /// A client HTTP connection (until it closes or is upgraded).
    Connection,
    /// An upgraded connection's tunnel.
    Upgrade,
}

/// Counts live connection and tunnel tasks so shutdown can wait for them.
#[derive(Debug)]
pub(crate) struct Tracker {
    connections: AtomicUsize,
    upgrades: AtomicUsize,
    changed: Notify,
    phase: watch::Sender<Phase>,
    /// Set while a handover lingers: every response asks its client to close the connection.
    closing: std::sync::atomic::AtomicBool,
}

impl Tracker {
    fn new() -> Self {
        Tracker {
            connections: AtomicUsize::new(0),
            upgrades: AtomicUsize::new(0),
            changed: Notify::new(),
            phase: watch::Sender::new(Phase::Running),
            closing: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Whether responses now ask their clients to close the connection.
    fn closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    fn counter(&self, kind: Live) -> &AtomicUsize {
        match kind {
            Live::Connection => &self.connections,
            Live::Upgrade => &self.upgrades,
        }
    }

    /// Counts one live task of `kind` until the guard drops.
    pub(crate) fn enter(self: &Arc<Self>, kind: Live) -> LiveGuard {
        self.counter(kind).fetch_add(1, Ordering::SeqCst);
        LiveGuard {
            tracker: self.clone(),
            kind,
        }
    }

    /// A receiver of shutdown phase changes.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Phase> {
        self.phase.subscribe()
    }

    fn counts(&self) -> (usize, usize) {
        (
            self.connections.load(Ordering::SeqCst),
            self.upgrades.load(Ordering::SeqCst),
        )
    }

    /// Waits until nothing is live or `deadline` passes; true if nothing is live.
    async fn wait_idle(&self, deadline: tokio::time::Instant) -> bool {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            // Register before checking, so a guard dropping in between still wakes us.
            notified.as_mut().enable();
            if self.counts() == (0, 0) {
                return true;
            }
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep_until(deadline) => return self.counts() == (0, 0),
            }
        }
    }
}

/// Keeps one task counted in the [`Tracker`].
#[derive(Debug)]
pub(crate) struct LiveGuard {
    tracker: Arc<Tracker>,
    kind: Live,
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.tracker
            .counter(self.kind)
            .fetch_sub(1, Ordering::SeqCst);
        self.tracker.changed.notify_waiters();
    }
}

/// State shared by every connection of one server.
pub(crate) struct Shared<R> {
    pub(crate) route: R,
    pub(crate) config: ProxyConfig,
    /// This server's upstream connections (one pool per worker thread in the host router).
    pub(crate) upstream: Arc<Pool>,
    pub(crate) tracker: Arc<Tracker>,
    /// `data-header` for injected script tags, when the header name is not the client's default.
    pub(crate) client_header_attr: Option<String>,
    http: http1::Builder,
    /// HTTP/2 and HTTP/1.1 (by the connection's preface), for TLS connections.
    auto: auto::Builder<TokioExecutor>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    proto: HeaderValue,
}

impl<R: Route> Shared<R> {
    fn new(mut config: ProxyConfig, route: R) -> Self {
        if config.tls.is_some() {
            config.forwarded_proto = http::uri::Scheme::HTTPS;
        }
        let upstream = Arc::new(Pool::new(
            config.connect_timeout,
            config.upstream_idle_timeout,
            config.upstream_max_idle_per_host,
        ));

        let mut http = http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(config.header_read_timeout)
            .keep_alive(true);
        let mut auto = auto::Builder::new(TokioExecutor::new());
        auto.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(config.header_read_timeout)
            .keep_alive(true);
        // Pings find dead peers on idle HTTP/2 connections (no request head to time out on).
        auto.http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(20));
        let tls = config.tls.clone().map(tokio_rustls::TlsAcceptor::from);

        let proto = HeaderValue::from_str(config.forwarded_proto.as_str())
            .unwrap_or_else(|_| HeaderValue::from_static("http"));
        let client_header_attr = (config.deployment_header.as_str() != DEFAULT_DEPLOYMENT_HEADER)
            .then(|| config.deployment_header.as_str().to_owned());
        Shared {
            route,
            upstream,
            tracker: Arc::new(Tracker::new()),
            client_header_attr,
            http,
            auto,
            tls,
            proto,
            config,
        }
    }
}

/// Per-connection context, shared by the connection task, its request futures and any tunnel
/// it upgrades into. The connection-limit permit lives here, so it is released only when all of
/// them are done.
pub(crate) struct ConnCtx<R> {
    pub(crate) shared: Arc<Shared<R>>,
    pub(crate) peer: SocketAddr,
    /// The address the client connected to, for a request without `Host`.
    pub(crate) local: SocketAddr,
    pub(crate) forwarded: Forwarded,
    _permit: OwnedSemaphorePermit,
}

/// Where a server's connections come from: a listener it accepts on, or connections another
/// process accepted and passed over (the host's front door, [`HandedOver`]).
pub trait Incoming: Send {
    /// The next connection: the stream, the client's address, and the address the client
    /// connected to.
    fn next(
        &mut self,
    ) -> impl Future<Output = std::io::Result<(TcpStream, SocketAddr, SocketAddr)>> + Send;
}

impl Incoming for TcpListener {
    async fn next(&mut self) -> std::io::Result<(TcpStream, SocketAddr, SocketAddr)> {
        let (stream, peer) = self.accept().await?;
        // The address clients reach; for a wildcard listener each connection asks its own socket.
        let listen = self
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let local = if listen.ip().is_unspecified() {
            stream.local_addr().unwrap_or(listen)
        } else {
            listen
        };
        Ok((stream, peer, local))
    }
}

/// A connection accepted elsewhere: the stream (blocking or not), the client's address and the
/// address the client connected to.
pub type HandedConnection = (std::net::TcpStream, SocketAddr, SocketAddr);

/// Connections accepted by another process and passed to this one, arriving on a channel. When
/// the channel closes, no more arrive and the server runs on until its shutdown.
#[derive(Debug)]
pub struct HandedOver(pub tokio::sync::mpsc::UnboundedReceiver<HandedConnection>);

impl Incoming for HandedOver {
    async fn next(&mut self) -> std::io::Result<(TcpStream, SocketAddr, SocketAddr)> {
        let Some((stream, peer, local)) = self.0.recv().await else {
            return std::future::pending().await;
        };
        stream.set_nonblocking(true)?;
        Ok((TcpStream::from_std(stream)?, peer, local))
    }
}

/// Runs a proxy server on `listener` until `shutdown` completes, then drains.
///
/// Every request goes through `route`. When `shutdown` resolves, the listener is closed, idle
/// keep-alive connections are closed, busy ones finish their current response, and upgraded
/// connections keep running, all up to [`ProxyConfig::shutdown_deadline`]; whatever is still
/// open then is cut. The report says how much was cut, so the caller can say so.
///
/// Accept errors (such as running out of file descriptors) are retried with a backoff of up to
/// one second and logged at most once every few seconds, with a count of those not logged; they
/// never end the server.
pub async fn serve<R, S, I>(
    listener: I,
    config: ProxyConfig,
    route: R,
    shutdown: S,
) -> ShutdownReport
where
    R: Route,
    S: Future<Output = ()>,
    I: Incoming,
{
    let plan = DrainPlan {
        linger: Duration::ZERO,
        deadline: config.shutdown_deadline,
    };
    serve_handing_over(listener, config, route, async move {
        shutdown.await;
        plan
    })
    .await
}

/// How a server drains once its shutdown future completes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainPlan {
    /// How long open connections keep being served as usual, each response asking its client to
    /// close the connection, before idle ones are closed. Zero: close idle ones at once.
    pub linger: Duration,
    /// How long, after the linger, busy connections and upgraded ones may take to end before
    /// they are cut.
    pub deadline: Duration,
}

/// [`serve`], with the drain chosen when shutdown comes: `shutdown` resolves to the
/// [`DrainPlan`] (a daemon handing over to a successor lingers, and waits much longer for its
/// WebSockets than a daemon that is stopping).
pub async fn serve_handing_over<R, S, I>(
    mut listener: I,
    config: ProxyConfig,
    route: R,
    shutdown: S,
) -> ShutdownReport
where
    R: Route,
    S: Future<Output = DrainPlan>,
    I: Incoming,
{
    let shared = Arc::new(Shared::new(config, route));
    tokio::spawn(Pool::sweep_while_alive(Arc::downgrade(&shared.upstream)));
    tokio::pin!(shutdown);
    let mut backoff = Duration::from_millis(5);
    let plan = loop {
        let accepted = tokio::select! {
            biased;
            plan = &mut shutdown => break plan,
            accepted = listener.next() => accepted,
        };
        match accepted {
            Ok((stream, peer, local)) => {
                backoff = Duration::from_millis(5);
                accept(&shared, stream, peer, local);
            }
            Err(err) => {
                if let Some(suppressed) = shared.config.connection_limit.log_accept_error() {
                    tracing::warn!(
                        error = %err,
                        suppressed,
                        open = shared.config.connection_limit.open(),
                        "accepting a connection failed; backing off (up to 1 s) and retrying \
                         (`suppressed`: failures since the last line)"
                    );
                }
                tokio::select! {
                    plan = &mut shutdown => break plan,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    };
    drop(listener);
    drain(&shared, plan).await
}

/// Stops everything in progress, gracefully up to the deadline, then by force.
async fn drain<R>(shared: &Shared<R>, plan: DrainPlan) -> ShutdownReport {
    let started = Instant::now();
    let tracker = &shared.tracker;
    let (connections_at_shutdown, upgrades_at_shutdown) = tracker.counts();
    if !plan.linger.is_zero() {
        tracker.closing.store(true, Ordering::SeqCst);
        // Nothing open: nothing to linger for. Upgraded connections do not end by being asked.
        let until = tokio::time::Instant::now() + plan.linger;
        loop {
            let (connections, _) = tracker.counts();
            if connections == 0 || tokio::time::Instant::now() >= until {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20).min(plan.linger)).await;
        }
    }
    tracker.phase.send_replace(Phase::Draining);
    let deadline = tokio::time::Instant::now() + plan.deadline;
    let mut report = ShutdownReport {
        connections_at_shutdown,
        upgrades_at_shutdown,
        cut_connections: 0,
        cut_upgrades: 0,
        elapsed: Duration::ZERO,
    };
    if !tracker.wait_idle(deadline).await {
        let (connections, upgrades) = tracker.counts();
        report.cut_connections = connections;
        report.cut_upgrades = upgrades;
        tracing::warn!(
            connections,
            upgrades,
            "shutdown deadline of {:?} passed; cutting what is still open",
            plan.deadline
        );
        tracker.phase.send_replace(Phase::Cut);
        if !tracker
            .wait_idle(tokio::time::Instant::now() + CUT_GRACE)
            .await
        {
            tracing::warn!("some connections did not stop within {CUT_GRACE:?} of being cut");
        }
    }
    report.elapsed = started.elapsed();
    report
}

/// Starts serving one accepted connection (or refusing it, over the limit).
fn accept<R: Route>(
    shared: &Arc<Shared<R>>,
    stream: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
) {
    let _ = stream.set_nodelay(true);
    if let Some(idle) = shared.config.tcp_keepalive {
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(idle)
            .with_interval(Duration::from_secs(10));
        if let Err(err) = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive) {
            tracing::debug!(error = %err, "could not enable TCP keepalive");
        }
    }
    let permit = match shared
        .config
        .connection_limit
        .permits()
        .clone()
        .try_acquire_owned()
    {
        Ok(permit) => permit,
        Err(_) => return refuse(shared, stream, peer),
    };
    let ctx = Arc::new(ConnCtx {
        shared: shared.clone(),
        peer,
        local,
        forwarded: Forwarded::new(
            peer.ip(),
            shared.proto.clone(),
            shared.config.trust_forwarded,
        ),
        _permit: permit,
    });
    let live = shared.tracker.enter(Live::Connection);
    let mut phase = shared.tracker.subscribe();
    let shared = shared.clone();
    tokio::spawn(async move {
        let _live = live;
        if !first_byte(&stream, shared.config.first_byte_timeout, &mut phase).await {
            return;
        }
        let service = service_fn(move |req| {
            let ctx = ctx.clone();
            async move {
                let mut response = proxy::handle(ctx.clone(), req).await?;
                // A lingering handover asks the client to reconnect (to the successor) after
                // this answer; an upgrade's `Connection: upgrade` stays as it is.
                if ctx.shared.tracker.closing()
                    && response.status() != http::StatusCode::SWITCHING_PROTOCOLS
                {
                    response
                        .headers_mut()
                        .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
                }
                Ok::<_, std::convert::Infallible>(response)
            }
        });
        let Some(acceptor) = shared.tls.clone() else {
            let conn = shared
                .http
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            run_connection(conn, phase, peer, |c| c.graceful_shutdown()).await;
            return;
        };
        let Some(stream) = handshake(
            &acceptor,
            stream,
            shared.config.tls_handshake_timeout,
            &mut phase,
            peer,
        )
        .await
        else {
            return;
        };
        let conn = shared
            .auto
            .serve_connection_with_upgrades(TokioIo::new(stream), service);
        run_connection(conn, phase, peer, |c| c.graceful_shutdown()).await;
    });
}

/// Completes the TLS handshake of a new connection, up to `timeout`; `None` if it failed, took
/// too long, shutdown began meanwhile, or it was an ACME TLS-ALPN-01 validation (which needs
/// nothing past the handshake).
async fn handshake(
    acceptor: &tokio_rustls::TlsAcceptor,
    stream: TcpStream,
    timeout: Duration,
    phase: &mut watch::Receiver<Phase>,
    peer: SocketAddr,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let stream = tokio::select! {
        done = tokio::time::timeout(timeout, acceptor.accept(stream)) => match done {
            Ok(Ok(stream)) => stream,
            Ok(Err(err)) => {
                // Scanners, clients that distrust the certificate, names without one: routine.
                tracing::debug!(%peer, error = %err, "TLS handshake failed");
                return None;
            }
            Err(_) => {
                tracing::debug!(%peer, "closing a connection whose TLS handshake took over {timeout:?}");
                return None;
            }
        },
        _ = phase.wait_for(|p| *p != Phase::Running) => return None,
    };
    if stream.get_ref().1.alpn_protocol() == Some(ALPN_ACME_TLS) {
        tracing::info!(%peer, "answered an ACME TLS-ALPN-01 validation");
        return None;
    }
    Some(stream)
}

/// Waits until a new connection has something to read (its first byte, or its end), up to
/// `timeout`; false if it stayed silent that long or shutdown began meanwhile, and so should be
/// closed. Peeking consumes nothing, so hyper still sees every byte. (`readable()` alone would
/// not do: it may report readiness with nothing to read.)
async fn first_byte(
    stream: &TcpStream,
    timeout: Duration,
    phase: &mut watch::Receiver<Phase>,
) -> bool {
    let mut byte = [0u8; 1];
    tokio::select! {
        ready = tokio::time::timeout(timeout, stream.peek(&mut byte)) => match ready {
            Ok(Ok(_)) => true,
            Ok(Err(err)) => {
                tracing::debug!(error = %err, "client connection failed before its first byte");
                false
            }
            Err(_) => {
                tracing::debug!("closing a connection that sent nothing for {timeout:?}");
                false
            }
        },
        _ = phase.wait_for(|p| *p != Phase::Running) => false,
    }
}

/// Drives a connection to completion, reacting to shutdown phases.
/// `graceful` is the connection's `graceful_shutdown`.
async fn run_connection<C, E>(
    conn: C,
    mut phase: watch::Receiver<Phase>,
    peer: SocketAddr,
    graceful: impl Fn(Pin<&mut C>),
) where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        if !draining && *phase.borrow_and_update() == Phase::Draining {
            draining = true;
            graceful(conn.as_mut());
        }
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(err) = result {
                    // Client-side problems (a reset, a malformed request, a header timeout) are
                    // routine for a public server: keep them out of the default log level.
                    tracing::debug!(%peer, error = %err, "client connection ended with an error");
                }
                return;
            }
            changed = phase.changed() => {
                if changed.is_err() || *phase.borrow() == Phase::Cut {
                    return;
                }
            }
        }
    }
}

/// Answers one request on a connection over the limit with a `503` and closes it.
fn refuse<R: Route>(shared: &Arc<Shared<R>>, stream: TcpStream, peer: SocketAddr) {
    let limit = &shared.config.connection_limit;
    let permit = limit.refusals().clone().try_acquire_owned();
    if let Some(suppressed) = limit.log_over_limit() {
        tracing::warn!(
            %peer,
            limit = limit.max(),
            suppressed,
            "over the connection limit; answering 503 (or closing at once past {} pending \
             refusals; `suppressed`: refusals since the last line)",
            limit.overflow()
        );
    }
    let Ok(permit) = permit else {
        return;
    };
    let live = shared.tracker.enter(Live::Connection);
    let phase = shared.tracker.subscribe();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        // A real client sends its request right after connecting; a silent one must not hold
        // one of the few refusal slots (and a descriptor) for long, or the next client over the
        // limit is closed without its 503.
        .header_read_timeout(shared.config.header_read_timeout.min(REFUSAL_WAIT))
        .keep_alive(false);
    tokio::spawn(async move {
        let _permit = permit;
        let _live = live;
        let service =
            service_fn(|_req| async { Ok::<_, std::convert::Infallible>(overloaded_response()) });
        let conn = http.serve_connection(TokioIo::new(stream), service);
        run_connection(conn, phase, peer, |c| c.graceful_shutdown()).await;
    });
}
