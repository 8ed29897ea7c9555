//! Shared plumbing of the session example's two servers: per-tab counters kept in this process's
//! memory, small HTTP response helpers, the WebSocket handshake, and the serve loop.
//!
//! Both binaries use it:
//! - `flotilla-example-sessions` (`src/main.rs`): written for flotilla; its page loads
//!   `/_flotilla/client.js`, declares the deployment id and sends a per-tab stickiness key.
//! - `flotilla-example-plain` (`src/bin/plain.rs`): knows nothing of flotilla; it gets per-tab
//!   affinity only through `[app] inject_client = true`.
//!
//! The counters are deliberately in memory: a tab's count survives a WebSocket reconnect only
//! when the reconnect reaches the very process that holds it, which is what the browser tests
//! check.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::header::{CACHE_CONTROL, CONNECTION, CONTENT_TYPE, HeaderValue, UPGRADE};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

/// The response body type of both servers.
pub type Body = BoxBody<Bytes, Infallible>;

/// A WebSocket accepted by [`websocket`].
pub type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// The longest tab key kept; longer keys are cut (they are opaque, this only bounds memory).
pub const MAX_TAB_KEY: usize = 64;

/// Per-tab counters and the number of open WebSockets, in this process's memory only.
#[derive(Debug, Default)]
pub struct Counters {
    counts: Mutex<HashMap<String, u64>>,
    sockets: AtomicU64,
}

impl Counters {
    /// A tab's count (0 for a tab this process has never seen).
    pub fn get(&self, tab: &str) -> u64 {
        self.lock().get(tab).copied().unwrap_or(0)
    }

    /// Adds one to a tab's count and returns the new value.
    pub fn increment(&self, tab: &str) -> u64 {
        let mut counts = self.lock();
        let count = counts.entry(tab.to_owned()).or_insert(0);
        *count += 1;
        *count
    }

    /// WebSockets open right now.
    pub fn sockets(&self) -> u64 {
        self.sockets.load(Ordering::Relaxed)
    }

    /// Counts one open WebSocket until the returned guard is dropped.
    pub fn open_socket(&self) -> SocketGuard<'_> {
        self.sockets.fetch_add(1, Ordering::Relaxed);
        SocketGuard(self)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        // A panic while holding the lock cannot leave a count half-written.
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Keeps one WebSocket counted in [`Counters::sockets`] while it lives.
#[derive(Debug)]
pub struct SocketGuard<'a>(&'a Counters);

impl Drop for SocketGuard<'_> {
    fn drop(&mut self) {
        self.0.sockets.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A tab key as the servers keep it: trimmed, at most [`MAX_TAB_KEY`] characters, or `None` when
/// empty.
pub fn tab_key(raw: Option<&str>) -> Option<String> {
    let raw = raw?.trim();
    (!raw.is_empty()).then(|| raw.chars().take(MAX_TAB_KEY).collect())
}

/// The value of query parameter `name` (percent-decoded), if the request has it.
pub fn query_param<T>(req: &Request<T>, name: &str) -> Option<String> {
    req.uri().query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode(v))
    })
}

/// Decodes `%XX` escapes and `+` (as a space); malformed escapes are kept as written.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A complete response with a fixed body, never cached (every answer names the process that
/// gave it).
pub fn full(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// A JSON response.
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    full(status, "application/json", value.to_string())
}

/// An HTML response.
pub fn html(body: String) -> Response<Body> {
    full(StatusCode::OK, "text/html; charset=utf-8", body)
}

/// `404` with a JSON body.
pub fn not_found() -> Response<Body> {
    json(
        StatusCode::NOT_FOUND,
        &serde_json::json!({"error": "not_found"}),
    )
}

/// Answers a WebSocket handshake with `101` and runs `session` on the upgraded connection; a
/// request that is not a handshake gets `400`.
pub fn websocket<F, Fut>(mut req: Request<Incoming>, session: F) -> Response<Body>
where
    F: FnOnce(Socket) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let is_upgrade = req
        .headers()
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let key = req.headers().get("sec-websocket-key").cloned();
    let (true, Some(key)) = (is_upgrade, key) else {
        return json(
            StatusCode::BAD_REQUEST,
            &serde_json::json!({"error": "expected a WebSocket handshake"}),
        );
    };
    let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) else {
        return json(
            StatusCode::BAD_REQUEST,
            &serde_json::json!({"error": "bad Sec-WebSocket-Key"}),
        );
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        if let Ok(upgraded) = on_upgrade.await {
            let socket =
                WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
            session(socket).await;
        }
    });
    let mut r = Response::new(Full::new(Bytes::new()).boxed());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert("sec-websocket-accept", accept);
    r
}

/// The port to listen on: `PORT`, or `default` when unset.
pub fn port_from_env(default: u16) -> std::io::Result<u16> {
    match std::env::var("PORT") {
        Ok(p) => p
            .trim()
            .parse()
            .map_err(|_| std::io::Error::other(format!("PORT={p} is not a port number"))),
        Err(_) => Ok(default),
    }
}

/// A short label for this release: `SESSIONS_LABEL`, else the first line of `label.txt` in the
/// working directory (a release is a snapshot of the app directory, so editing the file between
/// deploys makes the versions visibly different), else empty.
pub fn release_label() -> String {
    if let Ok(label) = std::env::var("SESSIONS_LABEL") {
        return label.trim().to_owned();
    }
    std::fs::read_to_string("label.txt")
        .ok()
        .and_then(|s| s.lines().next().map(|l| l.trim().to_owned()))
        .unwrap_or_default()
}

/// Escapes text for HTML element content and double-quoted attribute values.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Binds `127.0.0.1:port` and serves `handler` there until SIGTERM or Ctrl-C.
pub async fn serve_until_signal<H, Fut>(name: &str, port: u16, handler: H) -> std::io::Result<()>
where
    H: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    eprintln!("{name}: listening on http://{}", listener.local_addr()?);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let stop = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    serve(name, listener, handler, stop).await;
    eprintln!("{name}: stopping");
    Ok(())
}

/// Serves `handler` on `listener` (HTTP/1.1 with upgrades) until `shutdown` completes; then it
/// stops accepting (connections already open finish on their own tasks).
pub async fn serve<H, Fut>(
    name: &str,
    listener: TcpListener,
    handler: H,
    shutdown: impl Future<Output = ()>,
) where
    H: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        eprintln!("{name}: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let handler = handler.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let handler = handler.clone();
                        async move { Ok::<_, Infallible>(handler(req).await) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades();
                    let _ = conn.await;
                });
            }
            () = &mut shutdown => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        let cases = [
            ("abc", "abc"),
            ("a%20b", "a b"),
            ("a+b", "a b"),
            ("%E2%9C%93", "\u{2713}"),
            ("bad%zz", "bad%zz"),
            ("end%2", "end%2"),
            ("end%", "end%"),
            ("", ""),
        ];
        for (input, want) in cases {
            assert_eq!(percent_decode(input), want, "{input:?}");
        }
    }

    #[test]
    fn tab_keys() {
        let long = "x".repeat(100);
        let cases: [(Option<&str>, Option<String>); 5] = [
            (None, None),
            (Some(""), None),
            (Some("  "), None),
            (Some(" tab-1 "), Some("tab-1".into())),
            (Some(&long), Some("x".repeat(MAX_TAB_KEY))),
        ];
        for (input, want) in cases {
            assert_eq!(tab_key(input), want, "{input:?}");
        }
    }

    #[test]
    fn counters_are_per_tab_and_sockets_are_counted_while_open() {
        let c = Counters::default();
        assert_eq!(c.get("a"), 0);
        assert_eq!(c.increment("a"), 1);
        assert_eq!(c.increment("a"), 2);
        assert_eq!(c.increment("b"), 1);
        assert_eq!((c.get("a"), c.get("b")), (2, 1));
        let one = c.open_socket();
        let two = c.open_socket();
        assert_eq!(c.sockets(), 2);
        drop(one);
        assert_eq!(c.sockets(), 1);
        drop(two);
        assert_eq!(c.sockets(), 0);
    }

    #[test]
    fn html_escaping() {
        assert_eq!(
            escape_html(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }
}
