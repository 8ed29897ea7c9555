//! A small HTTP server that stands in for the flotilla router in browser tests: it serves the
//! client script and a page that includes it, echoes the affinity and tab key each request
//! carried, speaks
//! WebSocket and server-sent events, answers 410 with the retired-version JSON for retired ids,
//! and records every request so tests can check what the browser really sent.

use std::collections::{BTreeMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Message, Role};

/// The client, exactly as the proxy serves it.
const CLIENT_JS: &str = include_str!("../../../../client/flotilla-client.js");

/// The default affinity header and query parameter.
pub const HEADER: &str = "X-Flotilla-Deployment";
pub const QUERY: &str = "flotilla_deployment";

/// The default tab key header and query parameter.
pub const TAB_HEADER: &str = "X-Flotilla-Tab";
pub const TAB_QUERY: &str = "flotilla_tab";

/// The alternative names a page can configure through `data-header` / `data-query`.
pub const CUSTOM_HEADER: &str = "X-Custom-Affinity";
pub const CUSTOM_QUERY: &str = "custom_affinity";

/// The alternative tab key names a page can configure through `data-tab-header` /
/// `data-tab-query`.
pub const CUSTOM_TAB_HEADER: &str = "X-Custom-Tab";
pub const CUSTOM_TAB_QUERY: &str = "custom_tab";

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    /// The raw query string, if any.
    pub query: Option<String>,
    /// The affinity header's value.
    pub header: Option<String>,
    /// The affinity query parameter's value.
    pub affinity_query: Option<String>,
    /// The tab key header's value.
    pub tab_header: Option<String>,
    /// The tab key query parameter's value.
    pub tab_query: Option<String>,
    pub cookie: Option<String>,
    /// `Access-Control-Request-Headers` (set on CORS preflights).
    pub preflight_headers: Option<String>,
}

#[derive(Default)]
struct State {
    seen: Mutex<Vec<Seen>>,
    retired: Mutex<HashSet<String>>,
    current: Mutex<String>,
}

/// A running test server on 127.0.0.1. Stops accepting when dropped.
pub struct TestServer {
    addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestServer {
    /// Starts a server whose fresh requests (no affinity) go to version `current`.
    pub async fn start(current: &str) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("local address");
        let state = Arc::new(State::default());
        *lock(&state.current) = current.to_string();
        let accept_state = Arc::clone(&state);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = Arc::clone(&accept_state);
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(Arc::clone(&state), req));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        TestServer { addr, state, task }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The same server under another host name, which makes it another origin.
    pub fn localhost_origin(&self) -> String {
        format!("http://localhost:{}", self.addr.port())
    }

    /// `origin` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.origin())
    }

    /// Makes requests naming `id` answer 410, as a router does for a retired version.
    pub fn retire(&self, id: &str) {
        lock(&self.state.retired).insert(id.to_string());
    }

    /// Sends fresh requests (and so every navigation) to `id` from now on.
    pub fn set_current(&self, id: &str) {
        *lock(&self.state.current) = id.to_string();
    }

    /// Every request seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        lock(&self.state.seen).clone()
    }

    /// Requests seen for `path`.
    pub fn seen_at(&self, path: &str) -> Vec<Seen> {
        self.seen().into_iter().filter(|s| s.path == path).collect()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn query_params(query: Option<&str>) -> BTreeMap<String, String> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_string(), v.to_string())
        })
        .collect()
}

fn header_str(req: &Request<Incoming>, name: &str) -> Option<String> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

type Reply = Response<Full<Bytes>>;

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Reply {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(content_type).expect("ascii"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Any origin may read these answers, so cross-origin tests see exactly what arrived here.
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("*"),
    );
    response
}

fn stamp(response: &mut Reply, id: &str) {
    if let Ok(value) = HeaderValue::from_str(id) {
        response.headers_mut().insert(HEADER, value);
    }
}

async fn handle(state: Arc<State>, mut req: Request<Incoming>) -> Result<Reply, Infallible> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let params = query_params(query.as_deref());
    let header_value = header_str(&req, HEADER);
    let seen = Seen {
        method: req.method().to_string(),
        path: path.clone(),
        query: query.clone(),
        header: header_value.clone(),
        affinity_query: params.get(QUERY).cloned(),
        tab_header: header_str(&req, TAB_HEADER),
        tab_query: params.get(TAB_QUERY).cloned(),
        cookie: header_str(&req, "cookie"),
        preflight_headers: header_str(&req, "access-control-request-headers"),
    };
    lock(&state.seen).push(seen);
    let current = lock(&state.current).clone();

    if req.method() == Method::OPTIONS {
        let mut response = reply(StatusCode::NO_CONTENT, "text/plain", "");
        let requested = header_str(&req, "access-control-request-headers").unwrap_or_default();
        if let Ok(v) = HeaderValue::from_str(&requested) {
            response
                .headers_mut()
                .insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v);
        }
        response.headers_mut().insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST"),
        );
        return Ok(response);
    }

    // Like the router: a request naming a retired version gets the retirement answer, whatever
    // its path. Like an ALB fixed response, it carries no deployment header.
    if path != "/_flotilla/client.js" {
        let named = [
            header_value.as_deref(),
            params.get(QUERY).map(String::as_str),
        ];
        let retired = lock(&state.retired).clone();
        if let Some(id) = named.into_iter().flatten().find(|id| retired.contains(*id)) {
            let body = json!({
                "error": "version_retired",
                "retired": id,
                "current": current,
                "message": format!("version {id} is no longer available; reload to get {current}"),
            });
            return Ok(reply(
                StatusCode::GONE,
                "application/json",
                body.to_string(),
            ));
        }
    }

    let response = match path.as_str() {
        "/_flotilla/client.js" => reply(StatusCode::OK, "text/javascript", CLIENT_JS),
        "/page" => page(&params, &current),
        "/echo" => {
            let stamp_as = params.get("stamp").cloned();
            let mut echo = json!({
                "method": req.method().as_str(),
                "header": header_value,
                "custom_header": header_str(&req, CUSTOM_HEADER),
                "query": params.get(QUERY),
                "custom_query": params.get(CUSTOM_QUERY),
                "tab": header_str(&req, TAB_HEADER),
                "custom_tab": header_str(&req, CUSTOM_TAB_HEADER),
                "tab_query": params.get(TAB_QUERY),
                "cookie": header_str(&req, "cookie"),
                "app": header_str(&req, "x-app"),
            });
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            echo["body"] = json!(String::from_utf8_lossy(&body));
            let mut response = reply(StatusCode::OK, "application/json", echo.to_string());
            let served_by = stamp_as.or(header_value).unwrap_or(current);
            stamp(&mut response, &served_by);
            response
        }
        // An application's own 410 (a deleted resource), stamped as the agent stamps every answer.
        "/app-gone" => {
            let mut response = reply(
                StatusCode::GONE,
                "application/json",
                r#"{"error":"not_found"}"#,
            );
            stamp(&mut response, header_value.as_deref().unwrap_or(&current));
            response
        }
        "/sse" => {
            let event = json!({ "query": params.get(QUERY), "tab": params.get(TAB_QUERY),
                                "raw": query });
            // A long retry keeps EventSource from reconnecting while the test looks.
            reply(
                StatusCode::OK,
                "text/event-stream",
                format!("retry: 600000\ndata: {event}\n\n"),
            )
        }
        "/ws" => websocket(
            &mut req,
            json!({ "query": params.get(QUERY), "tab": params.get(TAB_QUERY), "raw": query }),
        ),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found"),
    };
    Ok(response)
}

/// The test page. Query parameters choose how it declares its version:
/// - `d`: the id (default: the current version, as a router serves a navigation);
/// - `via`: `script` (default, `data-deployment`), `meta`, `timing` (Server-Timing), `none`;
///   with `url` the id is not declared at all and only the page's own URL names it;
/// - `twice=1`: include the client twice, the first time without a declaration;
/// - `pre`: a script run before the client: `nouuid` removes `crypto.randomUUID` (as in an
///   insecure context), `badkey` stores an implausible tab key, `nostorage` makes every
///   sessionStorage access throw (as storage disabled by privacy settings does);
/// - `names=custom`: configure the custom header and query names (the id's and the tab key's).
fn page(params: &BTreeMap<String, String>, current: &str) -> Reply {
    let id = params.get("d").map_or(current, String::as_str).to_string();
    let via = params.get("via").map_or("script", String::as_str);
    let names = if params.get("names").map(String::as_str) == Some("custom") {
        format!(
            r#" data-header="{CUSTOM_HEADER}" data-query="{CUSTOM_QUERY}" data-tab-header="{CUSTOM_TAB_HEADER}" data-tab-query="{CUSTOM_TAB_QUERY}""#
        )
    } else {
        String::new()
    };
    let declared = if via == "script" {
        format!(r#" data-deployment="{id}""#)
    } else {
        String::new()
    };
    let meta = if via == "meta" {
        format!(r#"<meta name="flotilla-deployment" content="{id}">"#)
    } else {
        String::new()
    };
    let first = if params.get("twice").map(String::as_str) == Some("1") {
        r#"<script src="/_flotilla/client.js"></script>"#
    } else {
        ""
    };
    let pre = match params.get("pre").map(String::as_str) {
        Some("nouuid") => "<script>delete Crypto.prototype.randomUUID;</script>",
        Some("badkey") => {
            r#"<script>sessionStorage.setItem("flotilla:tab", "not a key!");</script>"#
        }
        Some("nostorage") => {
            r#"<script>Object.defineProperty(window, "sessionStorage", { configurable: true,
  get() { throw new DOMException("storage is disabled", "SecurityError"); } });</script>"#
        }
        _ => "",
    };
    let html = format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8">{pre}{meta}{first}
<script src="/_flotilla/client.js"{declared}{names}></script>
<title>flotilla test page</title>
<style>body {{ font: 28px sans-serif; margin: 40px; }} #v {{ color: #0a5; font-weight: bold; }}</style>
</head><body>
<h1>flotilla client test</h1>
<p>page served as <span id="v">{id}</span></p>
<p>tab affinity: <span id="tab"></span></p>
<script>document.getElementById("tab").textContent = String(window.flotilla.deploymentId());</script>
</body></html>"#
    );
    let mut response = reply(StatusCode::OK, "text/html; charset=utf-8", html);
    if via == "timing" {
        let timing = format!(r#"flotilla-deployment;desc="{id}""#);
        if let Ok(v) = HeaderValue::from_str(&timing) {
            response.headers_mut().insert("server-timing", v);
        }
    }
    response
}

/// Accepts a WebSocket upgrade; the socket first sends `hello`, then echoes text messages.
fn websocket(req: &mut Request<Incoming>, hello: Value) -> Reply {
    let Some(key) = req
        .headers()
        .get("sec-websocket-key")
        .map(|k| derive_accept_key(k.as_bytes()))
    else {
        return reply(
            StatusCode::BAD_REQUEST,
            "text/plain",
            "expected a WebSocket upgrade",
        );
    };
    let upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else {
            return;
        };
        let mut socket =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        if socket.send(Message::text(hello.to_string())).await.is_err() {
            return;
        }
        while let Some(Ok(message)) = socket.next().await {
            // Reading on after a Close lets tungstenite send the closing handshake's reply.
            if message.is_text() && socket.send(message).await.is_err() {
                return;
            }
        }
    });
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&key).expect("base64"),
    );
    response
}
