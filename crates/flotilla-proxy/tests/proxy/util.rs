//! Test harness: a real hyper upstream with scripted endpoints, a running proxy, and clients.
//!
//! Everything binds `127.0.0.1:0`; every task is aborted when its handle drops, so a failing
//! test leaves nothing running.

use std::convert::Infallible;
use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use flotilla_proxy::http::{self, HeaderValue, Request, Response, StatusCode, header};
use flotilla_proxy::{
    Decision, InstanceStats, ProxyConfig, RequestHead, ShutdownReport, SocketClose, Target,
    json_response, serve,
};
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

/// Upper bound for any single wait in a test; far above what a healthy run needs.
pub const LIMIT: Duration = Duration::from_secs(5);

/// Awaits `fut`, failing the test if it takes longer than [`LIMIT`].
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(LIMIT, fut).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {LIMIT:?} waiting for {what}"),
    }
}

/// Polls `check` every few milliseconds until it holds, failing after [`LIMIT`].
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    within(what, async {
        while !check() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

/// Aborts a spawned task when dropped.
pub struct AbortOnDrop<T>(pub JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The page the upstream serves as HTML.
pub const PAGE: &str =
    "<!DOCTYPE html>\n<html><head><title>t</title></head><body>hello</body></html>";

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).expect("write to vec");
    e.finish().expect("finish to vec")
}

/// A body fed from a channel, for streaming in tests.
pub struct ChannelBody(pub mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
    }
}

/// The scripted upstream application.
async fn upstream_handler(mut req: Request<Incoming>) -> Result<Response<UpBody>, Infallible> {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let response = match path.as_str() {
        // Streams the request body straight back.
        "/echo" => Response::new(UpBody::Incoming(req.into_body())),
        // Reads the whole request body before answering with its length, as most apps do.
        "/consume" => match req.into_body().collect().await {
            Ok(body) => Response::new(UpBody::full(format!("{} bytes", body.to_bytes().len()))),
            Err(_) => status(StatusCode::BAD_REQUEST),
        },
        // Lists the request head as it arrived, one header per line.
        "/headers" => {
            let mut text = format!("{} {}\n", req.method(), req.uri());
            for (name, value) in req.headers() {
                text.push_str(&format!("{}: {}\n", name, value.to_str().unwrap_or("?")));
            }
            Response::new(UpBody::full(text))
        }
        // Sets hop-by-hop headers on its response.
        "/hop" => Response::builder()
            .header(header::CONNECTION, "x-upstream-secret")
            .header("x-upstream-secret", "1")
            .header("keep-alive", "timeout=5")
            .header("x-flotilla-deployment", "forged")
            .header("x-kept", "yes")
            .body(UpBody::full("ok"))
            .expect("valid response"),
        // Server-sent events: one event now, then one every 20 ms unless `silent`.
        "/sse" => {
            let (tx, rx) = mpsc::channel(4);
            tokio::spawn(async move {
                let _ = tx.send(Bytes::from_static(b"data: first\n\n")).await;
                if query.contains("silent") {
                    tx.closed().await;
                    return;
                }
                loop {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    if tx
                        .send(Bytes::from_static(b"data: tick\n\n"))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
            Response::builder()
                .header(header::CONTENT_TYPE, "text/event-stream")
                .body(UpBody::Channel(ChannelBody(rx)))
                .expect("valid response")
        }
        // A WebSocket echo server.
        "/ws" => {
            let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
                return Ok(status(StatusCode::BAD_REQUEST));
            };
            let on_upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let Ok(upgraded) = on_upgrade.await else {
                    return;
                };
                let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    None,
                )
                .await;
                // Other messages are skipped; on a close frame, tungstenite answers it while
                // being polled for the next message, then the stream ends.
                while let Some(Ok(message)) = ws.next().await {
                    let echoes = matches!(message, Message::Text(_) | Message::Binary(_));
                    if echoes && ws.send(message).await.is_err() {
                        return;
                    }
                }
            });
            switching_protocols(&key)
        }
        // A WebSocket whose server writes raw frames: the text frame `hello world` split after
        // `hello `; the rest, then a frame `after`, once any bytes come from the client.
        "/ws-split" => {
            let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
                return Ok(status(StatusCode::BAD_REQUEST));
            };
            let on_upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let Ok(upgraded) = on_upgrade.await else {
                    return;
                };
                let mut io = TokioIo::new(upgraded);
                let mut first = vec![0x81, 11];
                first.extend_from_slice(b"hello ");
                if io.write_all(&first).await.is_err() {
                    return;
                }
                let mut buf = [0u8; 64];
                if !matches!(io.read(&mut buf).await, Ok(n) if n > 0) {
                    return;
                }
                let mut rest = b"world".to_vec();
                rest.extend_from_slice(&[0x81, 5]);
                rest.extend_from_slice(b"after");
                let _ = io.write_all(&rest).await;
                // Hold the connection open until the proxy or the client ends it.
                while matches!(io.read(&mut buf).await, Ok(n) if n > 0) {}
            });
            switching_protocols(&key)
        }
        // Server-sent events split mid-event: `data: a` whole and `data: b` begun, then after
        // 300 ms the end of `b` and a whole `data: c`, then silence.
        "/sse-split" => {
            let (tx, rx) = mpsc::channel(4);
            tokio::spawn(async move {
                let _ = tx.send(Bytes::from_static(b"data: a\n\ndata: b")).await;
                tokio::time::sleep(Duration::from_millis(300)).await;
                let _ = tx.send(Bytes::from_static(b"\n\ndata: c\n\n")).await;
                tx.closed().await;
            });
            Response::builder()
                .header(header::CONTENT_TYPE, "text/event-stream")
                .body(UpBody::Channel(ChannelBody(rx)))
                .expect("valid response")
        }
        // HTML in various shapes. The request's Accept-Encoding is echoed back.
        "/html" => {
            let seen = req
                .headers()
                .get(header::ACCEPT_ENCODING)
                .cloned()
                .unwrap_or(HeaderValue::from_static("-"));
            let mut builder = Response::builder()
                .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
                .header(header::ETAG, "\"v1\"")
                .header("x-seen-accept-encoding", seen)
                .header(
                    "x-seen-if-none-match",
                    req.headers()
                        .get(header::IF_NONE_MATCH)
                        .cloned()
                        .unwrap_or(HeaderValue::from_static("-")),
                )
                .header(header::LAST_MODIFIED, "Wed, 21 Oct 2015 07:28:00 GMT");
            // The page's policies are whatever the test asks for in `x-test-csp` and
            // `x-test-csp-report-only`.
            for (asked, sent) in [
                ("x-test-csp", "content-security-policy"),
                (
                    "x-test-csp-report-only",
                    "content-security-policy-report-only",
                ),
            ] {
                for value in req.headers().get_all(asked) {
                    builder = builder.header(sent, value.clone());
                }
            }
            let body = match query.as_str() {
                "gzip" => {
                    let data = gzip(PAGE.as_bytes());
                    builder = builder
                        .header(header::CONTENT_ENCODING, "gzip")
                        .header(header::CONTENT_LENGTH, data.len());
                    UpBody::full(data)
                }
                "br" => {
                    builder = builder
                        .header(header::CONTENT_ENCODING, "br")
                        .header(header::CONTENT_LENGTH, 4);
                    UpBody::full(&b"\x0b\x02\x80x"[..])
                }
                "chunked" => {
                    // Split mid-tag so the injector must hold bytes back.
                    let (tx, rx) = mpsc::channel(8);
                    tokio::spawn(async move {
                        for piece in PAGE.as_bytes().chunks(9) {
                            if tx.send(Bytes::copy_from_slice(piece)).await.is_err() {
                                return;
                            }
                            tokio::time::sleep(Duration::from_millis(2)).await;
                        }
                    });
                    UpBody::Channel(ChannelBody(rx))
                }
                "304" => {
                    builder = builder.status(StatusCode::NOT_MODIFIED);
                    UpBody::full("")
                }
                _ => {
                    builder = builder.header(header::CONTENT_LENGTH, PAGE.len());
                    UpBody::full(PAGE)
                }
            };
            builder.body(body).expect("valid response")
        }
        // JSON with a length, to show non-HTML passes untouched.
        "/json" => Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CONTENT_LENGTH, 11)
            .body(UpBody::full("{\"ok\":true}"))
            .expect("valid response"),
        // Answers after `ms` milliseconds (query `ms=N`).
        "/slow" => {
            let ms = query
                .strip_prefix("ms=")
                .and_then(|v| v.parse().ok())
                .unwrap_or(200);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Response::new(UpBody::full("slow done"))
        }
        _ => Response::new(UpBody::full(format!("hello from {path}"))),
    };
    Ok(response)
}

/// The `101` accepting a WebSocket handshake with `key`.
fn switching_protocols(key: &HeaderValue) -> Response<UpBody> {
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header("sec-websocket-accept", derive_accept_key(key.as_bytes()))
        .body(UpBody::full(""))
        .expect("valid response")
}

fn status(code: StatusCode) -> Response<UpBody> {
    let mut response = Response::new(UpBody::full(""));
    *response.status_mut() = code;
    response
}

/// The upstream's response body: fixed, streamed from a channel, or the request's own body.
pub enum UpBody {
    Full(Full<Bytes>),
    Channel(ChannelBody),
    Incoming(Incoming),
}

impl UpBody {
    fn full(data: impl Into<Bytes>) -> Self {
        UpBody::Full(Full::new(data.into()))
    }
}

impl hyper::body::Body for UpBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            UpBody::Full(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(|never| match never {}))),
            UpBody::Channel(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(|never| match never {}))),
            UpBody::Incoming(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            UpBody::Full(b) => b.size_hint(),
            UpBody::Channel(_) => hyper::body::SizeHint::default(),
            UpBody::Incoming(b) => b.size_hint(),
        }
    }
}

/// Starts the scripted upstream; it stops when the returned guard drops.
pub async fn start_upstream() -> (SocketAddr, AbortOnDrop<()>) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("upstream address");
    let task = tokio::spawn(async move {
        let mut connections = Vec::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            connections.push(AbortOnDrop(tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service_fn(upstream_handler))
                    .with_upgrades()
                    .await;
            })));
        }
    });
    (addr, AbortOnDrop(task))
}

/// A running proxy with one target, and what the tests need to observe it.
pub struct Proxy {
    pub addr: SocketAddr,
    pub stats: Arc<InstanceStats>,
    pub route_calls: Arc<AtomicUsize>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<ShutdownReport>>,
}

impl Proxy {
    /// Starts a proxy routing everything to `upstream` as deployment `web-1`, except `/gone`
    /// (answered 410 by the router), `/closed` (a WebSocket accepted and closed with 4410, or a
    /// 410), any path with `cookie` in its query (forwarded with a `Set-Cookie` and `x-secure`
    /// added) and `/defer/...` (routed through a deferred decision).
    pub async fn start(upstream: SocketAddr, config: ProxyConfig) -> Proxy {
        Proxy::start_with(upstream, config, None).await
    }

    /// Like [`Proxy::start`], draining by `plan` at shutdown (`serve_handing_over`).
    pub async fn start_handing_over(
        upstream: SocketAddr,
        config: ProxyConfig,
        plan: flotilla_proxy::DrainPlan,
    ) -> Proxy {
        Proxy::start_with(upstream, config, Some(plan)).await
    }

    async fn start_with(
        upstream: SocketAddr,
        config: ProxyConfig,
        plan: Option<flotilla_proxy::DrainPlan>,
    ) -> Proxy {
        let stats = Arc::new(InstanceStats::new());
        let target = Arc::new(
            Target::new(upstream, stats.clone())
                .with_deployment("web-1")
                .expect("valid deployment id"),
        );
        let route_calls = Arc::new(AtomicUsize::new(0));
        let calls = route_calls.clone();
        let route = move |head: &RequestHead<'_>| {
            calls.fetch_add(1, Ordering::SeqCst);
            let path = head.uri.path();
            if path == "/gone" {
                let mut response = json_response(
                    StatusCode::GONE,
                    r#"{"error":"version_retired","retired":"web-0","current":"web-1"}"#,
                );
                response
                    .headers_mut()
                    .insert("x-router", HeaderValue::from_static("yes"));
                return Decision::Respond(response);
            }
            if path == "/closed" {
                let mut headers = http::HeaderMap::new();
                headers.insert("x-router", HeaderValue::from_static("closed"));
                return Decision::CloseSocket(Box::new(SocketClose {
                    code: 4410,
                    reason: "version_retired".to_owned(),
                    headers,
                    otherwise: json_response(
                        StatusCode::GONE,
                        r#"{"error":"version_retired","retired":"web-0","current":"web-1"}"#,
                    ),
                }));
            }
            if head.uri.query().is_some_and(|q| q.contains("cookie")) {
                let mut headers = http::HeaderMap::new();
                headers.insert(
                    http::header::SET_COOKIE,
                    HeaderValue::from_static("which=one; Path=/"),
                );
                let secure = if head.secure() { "yes" } else { "no" };
                headers.insert("x-secure", HeaderValue::from_static(secure));
                return Decision::ForwardWith(target.clone(), headers);
            }
            if path.starts_with("/defer") {
                let target = target.clone();
                return Decision::Defer(Box::pin(async move {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    Decision::Defer(Box::pin(async move { Decision::Forward(target) }))
                }));
            }
            Decision::Forward(target.clone())
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (tx, rx) = oneshot::channel::<()>();
        let task = match plan {
            None => tokio::spawn(serve(listener, config, route, async {
                let _ = rx.await;
            })),
            Some(plan) => tokio::spawn(flotilla_proxy::serve_handing_over(
                listener,
                config,
                route,
                async move {
                    let _ = rx.await;
                    plan
                },
            )),
        };
        Proxy {
            addr,
            stats,
            route_calls,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// Signals shutdown without waiting.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Signals shutdown and waits for the report.
    pub async fn shutdown(&mut self) -> ShutdownReport {
        self.begin_shutdown();
        let task = self.task.take().expect("shutdown once");
        within("the proxy to shut down", task)
            .await
            .expect("serve task panicked")
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// A parsed HTTP/1.1 response read from a raw socket.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    /// Header names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    /// The body bytes, de-chunked if the response was chunked.
    pub body: Vec<u8>,
}

impl RawResponse {
    /// Every value of header `name`.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The single value of header `name`, if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.all(name).first().copied()
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends `request` (a complete HTTP/1.1 request; include `Connection: close`) on a fresh
/// connection and reads the whole response until the server closes.
pub async fn raw(addr: SocketAddr, request: &str) -> RawResponse {
    let mut stream = within("connect", TcpStream::connect(addr))
        .await
        .expect("connect to proxy");
    within("write", stream.write_all(request.as_bytes()))
        .await
        .expect("write request");
    let mut bytes = Vec::new();
    within("read", stream.read_to_end(&mut bytes))
        .await
        .expect("read response");
    parse_response(&bytes, request.starts_with("HEAD "))
}

/// Parses one HTTP/1.1 response.
pub fn parse_response(bytes: &[u8], head_only: bool) -> RawResponse {
    let split = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(bytes)));
    let head = String::from_utf8_lossy(&bytes[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let rest = &bytes[split + 4..];
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if head_only {
        Vec::new()
    } else if chunked {
        dechunk(rest)
    } else {
        rest.to_vec()
    };
    RawResponse {
        status,
        headers,
        body,
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size line");
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .expect("hex chunk size");
        data = &data[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// Opens a client connection to `addr` with hyper's low-level HTTP/1 client, for tests that
/// need one specific connection.
pub async fn connect<B>(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<B>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = within("connect", TcpStream::connect(addr))
        .await
        .expect("connect to proxy");
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP/1 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
}

/// A GET request for `path` with an empty body.
pub fn get(path: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .uri(path)
        .header(header::HOST, "app.example")
        .body(Full::new(Bytes::new()))
        .expect("valid request")
}

/// Reads a whole body.
pub async fn collect<B>(body: B) -> Bytes
where
    B: hyper::body::Body,
    B::Error: std::fmt::Debug,
{
    within("the body", body.collect())
        .await
        .expect("body read")
        .to_bytes()
}
