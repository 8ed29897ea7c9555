//! flotilla's quickstart app: a small HTTP server that says which deployment served each request.
//!
//! - `GET /`: JSON with the deployment id, name and instance from the environment flotilla sets
//!   (an HTML page that loads the flotilla browser client when the request accepts `text/html`).
//! - `GET /healthz`: `{"status":"ok"}`; `503` when `HELLO_UNHEALTHY=1` (for failure drills).
//! - With `HELLO_FAIL=1`, every other request is answered `500` with the same JSON (a healthy
//!   version that fails its users: what a canary's judgement must catch).
//! - `GET /ws`: a WebSocket that greets with `{"deployment_id":..}` and answers every text message
//!   with `{"deployment_id":..,"echo":..}`.
//! - `GET /events`: a server-sent event stream, one `{"deployment_id":..,"tick":n}` every
//!   `interval_ms` (query parameter, default 500).
//!
//! Listens on `127.0.0.1:$PORT` (default 3000) and exits on SIGTERM or Ctrl-C.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{CONNECTION, CONTENT_TYPE, HeaderValue, UPGRADE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

type Body = BoxBody<Bytes, Infallible>;

/// Who this process is, from the environment flotilla sets.
struct Identity {
    deployment_id: String,
    deployment_name: String,
    instance: String,
    unhealthy: bool,
    failing: bool,
}

impl Identity {
    fn from_env() -> Self {
        let var = |k: &str, default: &str| std::env::var(k).unwrap_or_else(|_| default.to_owned());
        Identity {
            deployment_id: var("FLOTILLA_DEPLOYMENT_ID", "local"),
            deployment_name: var("FLOTILLA_DEPLOYMENT_NAME", "hello"),
            instance: var("FLOTILLA_INSTANCE", "i0"),
            unhealthy: std::env::var("HELLO_UNHEALTHY").is_ok_and(|v| v == "1"),
            failing: std::env::var("HELLO_FAIL").is_ok_and(|v| v == "1"),
        }
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "app": "hello",
            "deployment_id": self.deployment_id,
            "deployment_name": self.deployment_name,
            "instance": self.instance,
            "pid": std::process::id(),
        })
    }
}

fn full(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn query_param<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.uri().query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

async fn handle(req: Request<Incoming>, me: Arc<Identity>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    Ok(match (req.method(), path.as_str()) {
        (&Method::GET, "/healthz") => {
            if me.unhealthy {
                full(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "application/json",
                    r#"{"status":"unhealthy"}"#,
                )
            } else {
                full(StatusCode::OK, "application/json", r#"{"status":"ok"}"#)
            }
        }
        (_, path) if me.failing && path != "/healthz" => full(
            StatusCode::INTERNAL_SERVER_ERROR,
            "application/json",
            me.json().to_string(),
        ),
        (&Method::GET, "/") => {
            let wants_html = req
                .headers()
                .get(hyper::header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|a| a.contains("text/html"));
            if wants_html {
                full(StatusCode::OK, "text/html; charset=utf-8", page(&me))
            } else {
                full(StatusCode::OK, "application/json", me.json().to_string())
            }
        }
        (&Method::GET, "/ws") => websocket(req, me),
        (&Method::GET, "/events") => {
            let interval = query_param(&req, "interval_ms")
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(500)
                .max(10);
            events(me, Duration::from_millis(interval))
        }
        _ => full(
            StatusCode::NOT_FOUND,
            "application/json",
            r#"{"error":"not_found"}"#,
        ),
    })
}

fn page(me: &Identity) -> String {
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>hello from {id}</title>\
         <meta name=\"flotilla-deployment\" content=\"{id}\">\
         <script src=\"/_flotilla/client.js\"></script></head>\
         <body><h1>hello</h1><p>served by deployment <code>{id}</code>, instance {inst}</p></body></html>",
        id = me.deployment_id,
        inst = me.instance
    )
}

fn websocket(mut req: Request<Incoming>, me: Arc<Identity>) -> Response<Body> {
    let upgrade = req
        .headers()
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return full(
            StatusCode::BAD_REQUEST,
            "application/json",
            r#"{"error":"expected a WebSocket handshake"}"#,
        );
    };
    if !upgrade.eq_ignore_ascii_case("websocket") {
        return full(
            StatusCode::BAD_REQUEST,
            "application/json",
            r#"{"error":"expected a WebSocket handshake"}"#,
        );
    }
    let accept = derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        let hello = serde_json::json!({"deployment_id": me.deployment_id, "instance": me.instance});
        if ws.send(Message::text(hello.to_string())).await.is_err() {
            return;
        }
        while let Some(Ok(msg)) = ws.next().await {
            match msg {
                Message::Text(text) => {
                    let reply = serde_json::json!({"deployment_id": me.deployment_id, "instance": me.instance, "echo": text.as_str()});
                    if ws.send(Message::text(reply.to_string())).await.is_err() {
                        break;
                    }
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
    });
    let mut r = Response::new(Full::new(Bytes::new()).boxed());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(
        "sec-websocket-accept",
        HeaderValue::from_str(&accept).expect("the accept key is base64"),
    );
    r
}

fn events(me: Arc<Identity>, interval: Duration) -> Response<Body> {
    let ticks = futures_util::stream::unfold(0u64, move |n| {
        let me = me.clone();
        async move {
            if n > 0 {
                tokio::time::sleep(interval).await;
            }
            let data = serde_json::json!({"deployment_id": me.deployment_id, "instance": me.instance, "tick": n});
            let frame = Frame::data(Bytes::from(format!("data: {data}\n\n")));
            Some((Ok::<_, Infallible>(frame), n + 1))
        }
    });
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(ticks)));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    r.headers_mut()
        .insert("cache-control", HeaderValue::from_static("no-cache"));
    r
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let port: u16 = match std::env::var("PORT") {
        Ok(p) => p
            .parse()
            .map_err(|_| std::io::Error::other(format!("PORT={p} is not a port number")))?,
        Err(_) => 3000,
    };
    let me = Arc::new(Identity::from_env());
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let listener = TcpListener::bind(addr).await?;
    eprintln!(
        "hello: deployment {} instance {} listening on http://{addr}",
        me.deployment_id, me.instance
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        eprintln!("hello: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let me = me.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(req, me.clone()));
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades();
                    let _ = conn.await;
                });
            }
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    eprintln!("hello: stopping");
    Ok(())
}
