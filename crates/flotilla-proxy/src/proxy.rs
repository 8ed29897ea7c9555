//! The per-request path: route, rewrite the head, forward, stamp, account, and hand upgraded
//! connections to a tunnel task.
//!
//! Order of work for one request (each step only when it applies):
//! 1. the built-in client script (`/_flotilla/client.js`) is answered before routing;
//! 2. the [`Route`] decides: answer directly, or forward to a [`Target`];
//! 3. the request is counted against the target (a guard undoes it when the response ends);
//! 4. hop-by-hop headers go, `X-Forwarded-*` are set, an upgrade is re-armed, and for HTML
//!    injection `Accept-Encoding` is narrowed to codings the injector can rewrite;
//! 5. the server's upstream pool (`upstream`) sends it on an idle or new connection (with the
//!    optional response-head timeout); the connection goes back when the response body ends;
//! 6. a `101` becomes a tunnel task counted as a WebSocket session; any other response loses its
//!    hop-by-hop headers, gains the deployment stamp, is counted as a session if it is an event
//!    stream, and has the client script spliced in if it is an HTML document.

use std::convert::Infallible;
use std::error::Error as StdError;
use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{
    ACCEPT_RANGES, CONNECTION, CONTENT_LENGTH, ETAG, EXPECT, HOST, HeaderMap, HeaderName,
    HeaderValue, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED, UPGRADE,
};
use http::uri::{PathAndQuery, Scheme};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::{Body as _, Incoming};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::body::{Body, BodyError};
use crate::client_js::{self, CLIENT_PATH};
use crate::error::{GatewayError, json_response};
use crate::headers;
use crate::inject;
use crate::moving::{FrameCursor, SessionMove, going_away_frame};
use crate::route::{Decision, RequestHead, Route, Target};
use crate::server::{ConnCtx, Live, Phase};
use crate::stats::{RequestGuard, SessionGuard, SessionKind};

/// How many times a [`Decision::Defer`] may resolve to another `Defer` before the proxy gives up.
const MAX_DEFERRALS: usize = 8;

static CONTENT_MD5: HeaderName = HeaderName::from_static("content-md5");
static CONTENT_DIGEST: HeaderName = HeaderName::from_static("content-digest");
static SERVER_TIMING: HeaderName = HeaderName::from_static("server-timing");

/// Serves one request on a client connection, recording it in the access log when there is one.
pub(crate) async fn handle<R: Route>(
    conn: Arc<ConnCtx<R>>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let Some(log) = conn.shared.config.access_log.clone() else {
        return serve_request(conn, req).await;
    };
    let started = Instant::now();
    let peer = conn.peer;
    let method = req.method().clone();
    let version = req.version();
    let path = req.uri().path().to_owned();
    let host = req
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.as_str().to_owned()));
    let deployment_header = conn.shared.config.deployment_header.clone();
    let response = serve_request(conn, req).await?;
    log.record(&crate::access::AccessEntry {
        peer,
        method: &method,
        host: host.as_deref(),
        path: &path,
        http_version: version,
        status: response.status().as_u16(),
        deployment: response
            .headers()
            .get(&deployment_header)
            .and_then(|v| v.to_str().ok()),
        head_time: started.elapsed(),
        upgrade: response.status() == StatusCode::SWITCHING_PROTOCOLS,
    });
    Ok(response)
}

/// Serves one request on a client connection.
async fn serve_request<R: Route>(
    conn: Arc<ConnCtx<R>>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let shared = &conn.shared;
    let mut req = req;
    if !req.headers().contains_key(HOST)
        && let Some(refused) = fill_missing_host(&mut req, conn.local)
    {
        return Ok(refused);
    }
    if shared.config.serve_client && req.uri().path() == CLIENT_PATH {
        return Ok(client_js::respond(req.method(), req.headers()));
    }
    let mut decision = shared.route.route(&RequestHead {
        method: req.method(),
        uri: req.uri(),
        headers: req.headers(),
        peer: conn.peer,
        tls: shared.config.forwarded_proto == Scheme::HTTPS,
    });
    let mut deferrals = 0;
    let (target, extra) = loop {
        match decision {
            Decision::Forward(target) => break (target, None),
            Decision::ForwardWith(target, headers) => break (target, Some(headers)),
            Decision::Respond(response) => return Ok(response),
            Decision::CloseSocket(close) => return Ok(crate::ws::close(conn, req, *close)),
            Decision::Defer(later) => {
                deferrals += 1;
                if deferrals > MAX_DEFERRALS {
                    tracing::error!(
                        path = req.uri().path(),
                        "router deferred more than {MAX_DEFERRALS} times; answering 500"
                    );
                    return Ok(json_response(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        Bytes::from_static(
                            br#"{"error":"routing_failed","message":"The request could not be routed."}"#,
                        ),
                    ));
                }
                decision = later.await;
            }
        }
    };
    let mut response = forward(&conn, req, target).await;
    if let Some(extra) = extra {
        let headers = response.headers_mut();
        for (name, value) in &extra {
            headers.append(name, value.clone());
        }
    }
    Ok(response)
}

/// Gives a request without `Host` the one it implies, or refuses it: an HTTP/1.1 request must
/// carry `Host` (RFC 9112 §3.2) and gets a `400`; an absolute-form request target names its host;
/// an HTTP/1.0 request, which may omit it, gets the address the client connected to, so the app
/// and `X-Forwarded-Host` see the address the client used rather than the upstream's.
fn fill_missing_host<B>(req: &mut Request<B>, local: SocketAddr) -> Option<Response<Body>> {
    let implied = match req.uri().authority() {
        Some(authority) => HeaderValue::from_str(authority.as_str()).ok(),
        None if req.version() <= Version::HTTP_10 => HeaderValue::try_from(local.to_string()).ok(),
        None => None,
    };
    match implied {
        Some(host) => {
            req.headers_mut().insert(HOST, host);
            None
        }
        None => {
            tracing::debug!("refused an HTTP/1.1 request without Host");
            Some(bad_request(
                br#"{"error":"bad_request","message":"The request has no Host header."}"#,
            ))
        }
    }
}

/// A `400` with a JSON body, closing the connection (the client's input cannot be trusted to be
/// framed correctly after a failure).
fn bad_request(body: &'static [u8]) -> Response<Body> {
    let mut response = json_response(StatusCode::BAD_REQUEST, Bytes::from_static(body));
    response
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Whether an error from sending a request upstream was caused by the client's request body (it
/// ended early or was malformed, such as a bad chunk size): the client's fault, not the
/// upstream's. Returns the innermost cause, for a short log line.
fn client_body_failure<'e>(
    err: &'e (dyn StdError + 'static),
) -> Option<&'e (dyn StdError + 'static)> {
    let mut source: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(cause) = source {
        if let Some(BodyError::Peer(inner)) = cause.downcast_ref::<BodyError>() {
            let mut innermost: &(dyn StdError + 'static) = inner;
            while let Some(deeper) = innermost.source() {
                innermost = deeper;
            }
            return Some(innermost);
        }
        source = cause.source();
    }
    None
}

/// Forwards a routed request to `target` and shapes the response.
async fn forward<R: Route>(
    conn: &Arc<ConnCtx<R>>,
    mut req: Request<Incoming>,
    target: Arc<Target>,
) -> Response<Body> {
    let shared = &conn.shared;
    let config = &shared.config;
    let mut guard = RequestGuard::start(target.stats().clone());

    let upgrade = headers::upgrade_protocol(req.headers()).cloned();
    let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
    let is_head = req.method() == Method::HEAD;
    let inject = config.inject_client && headers::accepts_html(req.headers());
    let page_host = inject
        .then(|| inject::page_host(req.headers(), req.uri()))
        .flatten();

    let (mut parts, body) = req.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers, &config.deployment_header);
    // hyper already answered any `Expect: 100-continue` to the client as soon as the body was
    // read; the upstream must not wait for a second one.
    parts.headers.remove(EXPECT);
    if let Some(protocol) = &upgrade {
        headers::set_upgrade(&mut parts.headers, protocol.clone());
    }
    conn.forwarded.apply(&mut parts.headers);
    if inject {
        headers::restrict_accept_encoding(&mut parts.headers);
        // An injected page names the deployment that served it, so a copy cached from another
        // deployment must never be revalidated into use (a 304 from the new version would bring
        // the old version's page back and pin a fresh tab to the old version). Injected pages
        // carry no validators (see `mark_rewritten`) and their requests no conditionals.
        parts.headers.remove(IF_NONE_MATCH);
        parts.headers.remove(IF_MODIFIED_SINCE);
    }
    parts.uri = upstream_uri(parts.uri);
    parts.version = Version::HTTP_11;
    let upstream_request = Request::from_parts(parts, Body::incoming(body));

    let sent = shared.upstream.send(target.addr(), upstream_request);
    let result = match config.response_header_timeout {
        Some(limit) => match tokio::time::timeout(limit, sent).await {
            Ok(result) => result.map_err(Failure::of),
            Err(_) => Err(Failure::Upstream(
                GatewayError::Timeout,
                format!("no response head within {limit:?}"),
            )),
        },
        None => sent.await.map_err(Failure::of),
    };
    let (mut response, lease) = match result {
        Ok(sent) => sent,
        Err(Failure::Client(cause)) => {
            tracing::info!(peer = %conn.peer, %cause, "bad request body from client; answering 400");
            return bad_request(
                br#"{"error":"bad_request","message":"The request body is malformed or ended early."}"#,
            );
        }
        Err(Failure::Upstream(kind, detail)) => {
            target.stats().record_upstream_error();
            guard.record_response(kind.status());
            tracing::warn!(
                upstream = %target.addr(),
                deployment = target.deployment().unwrap_or("-"),
                error = %detail,
                "{kind}; answering {}",
                kind.status().as_u16()
            );
            return kind.response();
        }
    };

    guard.record_response(response.status());
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            target.stats().record_upstream_error();
            tracing::warn!(upstream = %target.addr(), "upstream switched protocols unasked; answering 502");
            return GatewayError::Unreachable.response();
        };
        // The connection becomes the tunnel: it never goes back to the pool.
        drop(lease);
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        let (mut parts, _empty) = response.into_parts();
        let protocol = parts.headers.get(UPGRADE).cloned().or(upgrade);
        headers::strip_hop_by_hop(&mut parts.headers, &config.deployment_header);
        if let Some(protocol) = protocol {
            headers::set_upgrade(&mut parts.headers, protocol);
        }
        stamp(
            &shared.config.deployment_header,
            &target,
            &mut parts.headers,
        );
        // Count the session before the client can see the 101, so a caller reading the counters
        // after a completed handshake always sees it.
        let session = SessionGuard::start(guard.stats().clone(), SessionKind::Upgrade);
        let live = shared.tracker.enter(Live::Upgrade);
        let phase = shared.tracker.subscribe();
        let idle = config.upgrade_idle_timeout;
        // Only a WebSocket can be asked to move: its frames say where a close frame may go.
        let moved = config
            .session_move
            .as_ref()
            .filter(|_| is_websocket(&parts.headers))
            .map(SessionMove::subscribe);
        let conn = conn.clone();
        tokio::spawn(async move {
            // The connection context holds the connection-limit permit: keep it while the
            // upgraded connection lives.
            let _conn = conn;
            let _live = live;
            let _session = session;
            tunnel(client_upgrade, upstream_upgrade, idle, phase, moved).await;
        });
        return Response::from_parts(parts, Body::empty());
    }

    let lease = lease.reusable(crate::upstream::keeps_alive(&response));
    let (mut parts, body) = response.into_parts();
    // A body that is already over (no content) may never be polled: the connection is free now.
    let lease = if body.is_end_stream() {
        lease.release();
        None
    } else {
        Some(lease)
    };
    headers::strip_hop_by_hop(&mut parts.headers, &config.deployment_header);
    stamp(
        &shared.config.deployment_header,
        &target,
        &mut parts.headers,
    );

    let status = parts.status;
    let has_body = !is_head
        && !status.is_informational()
        && status != StatusCode::NO_CONTENT
        && status != StatusCode::NOT_MODIFIED;
    let event_stream =
        has_body && status == StatusCode::OK && headers::is_event_stream(&parts.headers);
    if event_stream {
        guard.mark_event_stream();
    }

    let html = headers::is_html(&parts.headers);
    if html && let Some(value) = target.server_timing_value() {
        parts.headers.append(SERVER_TIMING.clone(), value.clone());
    }
    let body = if inject
        && html
        && status != StatusCode::PARTIAL_CONTENT
        && status != StatusCode::NOT_MODIFIED
    {
        let attrs = (
            shared.client_header_attr.as_deref(),
            config.client_query_param.as_deref(),
        );
        let host = page_host.as_deref();
        match headers::supported_coding(&parts.headers).map(|coding| {
            // No tag when the page's Content-Security-Policy would block any (see `csp`).
            let tag = inject::client_tag(&parts.headers, host, &target, attrs, has_body);
            (coding, tag)
        }) {
            Some((_, None)) => Body::incoming(body),
            Some((coding, Some(tag))) => {
                mark_rewritten(&mut parts.headers);
                if has_body {
                    Body::inject(body, coding, tag)
                } else {
                    // HEAD (or a bodiless status): describe the rewritten representation a GET
                    // would get, which has no fixed length.
                    Body::incoming(body)
                }
            }
            None => {
                tracing::debug!(
                    upstream = %target.addr(),
                    "HTML response in an unsupported content coding; passing it through without the client script"
                );
                Body::incoming(body)
            }
        }
    } else if event_stream && let Some(moving) = &config.session_move {
        Body::event_stream(body, moving.subscribe())
    } else {
        Body::incoming(body)
    };
    let body = body.with_guard(guard);
    let body = match lease {
        Some(lease) => body.with_lease(lease),
        None => body,
    };
    Response::from_parts(parts, body)
}

/// Why forwarding a request got no response.
enum Failure {
    /// The client's request body failed (with its innermost cause, for the log).
    Client(String),
    /// The upstream failed (with the whole error chain, for the log).
    Upstream(GatewayError, String),
}

impl Failure {
    fn of(err: crate::upstream::SendError) -> Self {
        match client_body_failure(&err) {
            Some(cause) => Failure::Client(cause.to_string()),
            None => Failure::Upstream(GatewayError::Unreachable, error_chain(&err)),
        }
    }
}

/// Adjusts headers of a response whose body the injector rewrites: the length changes (the body
/// is sent chunked), byte ranges and digests no longer apply, and validators go, because the
/// page now depends on which deployment served it (see the conditional headers dropped in
/// `forward`).
fn mark_rewritten(headers: &mut HeaderMap) {
    for name in [
        &CONTENT_LENGTH,
        &ACCEPT_RANGES,
        &CONTENT_MD5,
        &CONTENT_DIGEST,
        &ETAG,
        &LAST_MODIFIED,
    ] {
        headers.remove(name);
    }
}

/// Sets the deployment header on a proxied response (replacing any value the app set).
fn stamp(name: &HeaderName, target: &Target, headers: &mut HeaderMap) {
    if let Some(value) = target.deployment_value() {
        headers.insert(name.clone(), value.clone());
    }
}

/// The origin-form request target sent upstream: the request's path and query (taken from an
/// origin-form or absolute-form request target alike). The `Host` header names the site.
fn upstream_uri(original: Uri) -> Uri {
    // `OPTIONS *` and other targets without a leading slash cannot follow an authority; send
    // them as `/`.
    let path = original
        .into_parts()
        .path_and_query
        .filter(|p| p.as_str().starts_with('/'))
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    Uri::from(path)
}

/// An error and its sources on one line, for the log.
fn error_chain(err: &dyn StdError) -> String {
    let mut line = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let _ = write!(line, ": {cause}");
        source = cause.source();
    }
    line
}

/// Copies bytes both ways between an upgraded client connection and its upstream until both
/// sides are done, the idle timeout passes, or shutdown cuts it.
///
/// With `moved` (a WebSocket on a server with a [`SessionMove`]), the tunnel sends the client a
/// going-away close frame at the first frame boundary after the switch flips, and ends.
async fn tunnel(
    client: OnUpgrade,
    upstream: OnUpgrade,
    idle: Option<Duration>,
    mut phase: tokio::sync::watch::Receiver<Phase>,
    moved: Option<tokio::sync::watch::Receiver<bool>>,
) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(both) => both,
        Err(err) => {
            tracing::debug!(error = %error_chain(&err), "upgrade did not complete");
            return;
        }
    };
    let activity = Arc::new(Activity::new());
    let client = Tracked::new(TokioIo::new(client), activity.clone());
    let upstream = Tracked::new(TokioIo::new(upstream), activity.clone());
    let idle_watch = watch_idle(&activity, idle);
    tokio::select! {
        () = copy_both_ways(client, upstream, moved) => {}
        () = idle_watch => {
            tracing::debug!("closing upgraded connection idle for {idle:?}");
        }
        _ = phase.wait_for(|p| *p == Phase::Cut) => {
            tracing::debug!("shutdown deadline cut an upgraded connection");
        }
    }
}

/// How long the other direction of a tunnel may go on after one side has closed its half.
///
/// WebSockets have no use for half-closed connections: once one side has sent its FIN, the
/// other only has a close frame or so left to deliver. Without this bound a peer that never
/// closes its half would keep the session (and the instance) alive indefinitely.
const HALF_CLOSE_LINGER: Duration = Duration::from_secs(1);

/// The buffer of each direction of a tunnel. An idle WebSocket holds two, so they are the
/// largest part of its memory: `tokio::io::copy`'s 8 KiB each made an idle session cost about
/// 21 KiB of the proxy's RSS (nginx: about 17). WebSocket messages are mostly far smaller; a
/// larger one just takes a few more reads.
const TUNNEL_BUFFER: usize = 4096;

/// Copies bytes both ways; when one direction ends (EOF or error), its write side is shut
/// down and the other direction gets [`HALF_CLOSE_LINGER`] to finish. With `moved`, the
/// direction from `b` to `a` ends with a going-away close frame once the switch flips (see
/// [`copy_frames_until_moved`]).
async fn copy_both_ways<A, B>(a: A, b: B, moved: Option<tokio::sync::watch::Receiver<bool>>)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (a_read, mut a_write) = tokio::io::split(a);
    let (b_read, mut b_write) = tokio::io::split(b);
    let mut a_read = tokio::io::BufReader::with_capacity(TUNNEL_BUFFER, a_read);
    let mut b_read = tokio::io::BufReader::with_capacity(TUNNEL_BUFFER, b_read);
    let a_to_b = async {
        let copied = copy_flushing(&mut a_read, &mut b_write).await;
        let _ = b_write.shutdown().await;
        copied
    };
    let b_to_a = async {
        let copied = match moved {
            None => copy_flushing(&mut b_read, &mut a_write).await,
            Some(moved) => copy_frames_until_moved(&mut b_read, &mut a_write, moved).await,
        };
        let _ = a_write.shutdown().await;
        copied
    };
    tokio::pin!(a_to_b, b_to_a);
    let (first, rest) = tokio::select! {
        done = &mut a_to_b => (done, tokio::time::timeout(HALF_CLOSE_LINGER, b_to_a).await),
        done = &mut b_to_a => (done, tokio::time::timeout(HALF_CLOSE_LINGER, a_to_b).await),
    };
    if let Err(err) = first {
        tracing::debug!(error = %err, "upgraded connection ended with an error");
    }
    if rest.is_err() {
        tracing::debug!("closed an upgraded connection left half-open for {HALF_CLOSE_LINGER:?}");
    }
}

/// Copies `reader` to `writer` until the reader ends, through the reader's buffer, flushing the
/// writer whenever the reader has nothing more for now (a TLS writer may hold written bytes back
/// until flushed), as `tokio::io::copy` does and `tokio::io::copy_buf` does not.
async fn copy_flushing<R, W>(reader: &mut R, writer: &mut W) -> io::Result<u64>
where
    R: tokio::io::AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut copied = 0u64;
    let mut unflushed = false;
    std::future::poll_fn(|cx| {
        loop {
            let buf = match Pin::new(&mut *reader).poll_fill_buf(cx) {
                Poll::Ready(read) => read?,
                Poll::Pending => {
                    if unflushed {
                        std::task::ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                        unflushed = false;
                    }
                    return Poll::Pending;
                }
            };
            if buf.is_empty() {
                std::task::ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                return Poll::Ready(Ok(copied));
            }
            let written = std::task::ready!(Pin::new(&mut *writer).poll_write(cx, buf))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            Pin::new(&mut *reader).consume(written);
            copied += written as u64;
            unflushed = true;
        }
    })
    .await
}

/// Copies a server's WebSocket frames from `reader` to `writer` like [`copy_flushing`], until
/// `moved` flips: then, at the next frame boundary, it writes a going-away close frame and ends.
/// Frames that are not WebSocket frames are copied to the end (or the shutdown deadline).
async fn copy_frames_until_moved<R, W>(
    reader: &mut tokio::io::BufReader<R>,
    writer: &mut W,
    mut moved: tokio::sync::watch::Receiver<bool>,
) -> io::Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    use tokio::io::AsyncBufReadExt;
    let mut cursor = FrameCursor::default();
    let mut copied = 0u64;
    let mut asked = *moved.borrow_and_update();
    // Whether the switch can still flip (its sender may be gone).
    let mut watching = !asked;
    loop {
        if asked && cursor.at_boundary() {
            writer.write_all(&going_away_frame()).await?;
            writer.flush().await?;
            tracing::debug!("asked a WebSocket client to reconnect elsewhere");
            return Ok(copied);
        }
        let written = {
            let buf = tokio::select! {
                biased;
                changed = moved.changed(), if watching => {
                    watching = changed.is_ok();
                    asked = watching && *moved.borrow_and_update();
                    watching &= !asked;
                    continue;
                }
                filled = reader.fill_buf() => filled?,
            };
            if buf.is_empty() {
                writer.flush().await?;
                return Ok(copied);
            }
            // Once asked, stop at the end of the frame in progress.
            let wanted = if asked {
                cursor.clone().pass_to_boundary(buf)
            } else {
                buf.len()
            };
            let written = writer.write(&buf[..wanted]).await?;
            if written == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            cursor.advance(&buf[..written]);
            written
        };
        reader.consume(written);
        copied += written as u64;
        if reader.buffer().is_empty() {
            writer.flush().await?;
        }
    }
}

/// Whether a `101` response's headers switch to WebSocket.
fn is_websocket(headers: &HeaderMap) -> bool {
    headers
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// Completes once no byte has moved for `idle`; never if `idle` is `None`.
async fn watch_idle(activity: &Activity, idle: Option<Duration>) {
    let Some(idle) = idle else {
        return std::future::pending().await;
    };
    loop {
        let quiet = activity.quiet_for();
        if quiet >= idle {
            return;
        }
        tokio::time::sleep(idle - quiet).await;
    }
}

/// When bytes last moved through a tunnel.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn quiet_for(&self) -> Duration {
        let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        last.elapsed()
    }
}

/// An IO wrapper that records activity on every successful read or write.
struct Tracked<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T> Tracked<T> {
    fn new(inner: T, activity: Arc<Activity>) -> Self {
        Tracked { inner, activity }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewritten_headers_lose_length_ranges_digests_and_validators() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("content-length", "10"),
            ("accept-ranges", "bytes"),
            ("content-digest", "sha-256=:x:"),
            ("etag", "\"abc\""),
            ("last-modified", "Wed, 21 Oct 2015 07:28:00 GMT"),
            ("content-type", "text/html"),
            ("cache-control", "max-age=60"),
        ] {
            headers.insert(name, http::HeaderValue::from_static(value));
        }
        mark_rewritten(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, vec!["cache-control", "content-type"]);
    }

    #[test]
    fn upstream_uri_table() {
        fn check(original: &str, expected: &str) {
            let uri: Uri = original.parse().expect("valid uri");
            assert_eq!(upstream_uri(uri).to_string(), expected, "{original}");
        }
        check("/a/b?c=d", "/a/b?c=d");
        check("http://example.com/x?y", "/x?y");
        check("*", "/");
    }

    /// A writer that holds bytes back until flushed (as a TLS stream may) still passes each
    /// message on while the reader waits for the next one.
    #[tokio::test]
    async fn tunnel_copies_flush_while_the_reader_waits() {
        use tokio::io::{AsyncReadExt, BufReader, BufWriter};
        let (mut source, from) = tokio::io::duplex(64);
        let (to, mut sink) = tokio::io::duplex(64);
        let mut reader = BufReader::with_capacity(TUNNEL_BUFFER, from);
        let mut writer = BufWriter::new(to);
        let copying = tokio::spawn(async move { copy_flushing(&mut reader, &mut writer).await });
        source.write_all(b"ping").await.expect("write");
        let mut got = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), sink.read_exact(&mut got))
            .await
            .expect("the message arrives without the source closing")
            .expect("read");
        assert_eq!(&got, b"ping");
        drop(source);
        let copied = tokio::time::timeout(Duration::from_secs(5), copying)
            .await
            .expect("ends with its source")
            .expect("task")
            .expect("copied");
        assert_eq!(copied, 4);
    }

    #[derive(Debug, thiserror::Error)]
    #[error("connecting to 127.0.0.1:1 failed")]
    struct Outer(#[source] io::Error);

    #[test]
    fn error_chain_joins_sources() {
        let outer = Outer(io::Error::new(io::ErrorKind::ConnectionRefused, "refused"));
        assert_eq!(
            error_chain(&outer),
            "connecting to 127.0.0.1:1 failed: refused"
        );
    }
}
