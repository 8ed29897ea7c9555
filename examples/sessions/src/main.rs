//! flotilla's session example: a page with a per-tab WebSocket counter that shows which version
//! serves it, to watch a tab stay on its version through a deploy.
//!
//! - `GET /`: the page. It loads `/_flotilla/client.js` (declaring the deployment id on the tag),
//!   keeps a per-tab key in `sessionStorage` and sends it as the router's stickiness key
//!   (`X-Flotilla-Tab` on fetches, `flotilla_tab` on the WebSocket URL), so a tab's requests
//!   return to the instance holding its counter.
//! - `GET /ws?flotilla_tab=KEY`: a WebSocket. It greets with the tab's state, and answers the text
//!   message `increment` (adds one to the tab's counter) or `state` with the new state:
//!   `{"type":"state","reason":..,"deployment_id":..,"instance":..,"label":..,"tab":..,"count":..}`.
//! - `GET /api/state`: the same state as JSON, for the tab named by `X-Flotilla-Tab` (or the
//!   `flotilla_tab` query parameter).
//! - `GET /api/work`: `{"ok":true,..}`, or a `500` when `SESSIONS_FAIL=1` (a version that is
//!   healthy and keeps its tabs' sessions but fails some of its users' requests: what a canary's
//!   judgement must catch).
//! - `GET /healthz`: `{"status":"ok",..}`.
//!
//! The counters live in this process's memory only. Listens on `127.0.0.1:$PORT` (default 3000)
//! and names itself from `FLOTILLA_DEPLOYMENT_ID`, `FLOTILLA_DEPLOYMENT_NAME` and
//! `FLOTILLA_INSTANCE`, which flotilla sets; the optional release label comes from
//! `SESSIONS_LABEL` or `label.txt`. Exits on SIGTERM or Ctrl-C.

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use sessions::{Body, Counters, Socket, escape_html, html, json, not_found, query_param, tab_key};
use tokio_tungstenite::tungstenite::Message;

/// The router's stickiness header (`flotilla-host`'s `X-Flotilla-Tab`).
const TAB_HEADER: &str = "x-flotilla-tab";
/// The router's stickiness query parameter, for WebSocket URLs.
const TAB_QUERY: &str = "flotilla_tab";

/// The page; `{{...}}` placeholders are filled per process.
const PAGE: &str = include_str!("page.html");

/// Who this process is, and its counters.
struct App {
    deployment_id: String,
    deployment_name: String,
    instance: String,
    label: String,
    counters: Counters,
    /// Numbers anonymous sockets (no tab key), whose counters live as long as the socket.
    anonymous: std::sync::atomic::AtomicU64,
    /// `SESSIONS_FAIL=1`: `/api/work` answers 500.
    failing: bool,
}

impl App {
    fn from_env() -> App {
        let var = |k: &str, default: &str| std::env::var(k).unwrap_or_else(|_| default.to_owned());
        App {
            deployment_id: var("FLOTILLA_DEPLOYMENT_ID", "local"),
            deployment_name: var("FLOTILLA_DEPLOYMENT_NAME", "sessions"),
            instance: var("FLOTILLA_INSTANCE", "i0"),
            label: sessions::release_label(),
            counters: Counters::default(),
            anonymous: std::sync::atomic::AtomicU64::new(0),
            failing: std::env::var("SESSIONS_FAIL").is_ok_and(|v| v == "1"),
        }
    }

    fn state(&self, reason: &str, tab: &str) -> serde_json::Value {
        serde_json::json!({
            "type": "state",
            "reason": reason,
            "deployment_id": self.deployment_id,
            "deployment_name": self.deployment_name,
            "instance": self.instance,
            "label": self.label,
            "pid": std::process::id(),
            "tab": tab,
            "count": self.counters.get(tab),
            "sockets": self.counters.sockets(),
        })
    }

    fn page(&self) -> String {
        PAGE.replace("{{ID}}", &escape_html(&self.deployment_id))
            .replace("{{NAME}}", &escape_html(&self.deployment_name))
            .replace("{{INSTANCE}}", &escape_html(&self.instance))
            .replace("{{LABEL}}", &escape_html(&self.label))
            .replace("{{HUE}}", &hue(&self.deployment_id).to_string())
    }
}

/// A colour per version (hue in degrees), so two tabs on different versions look different.
fn hue(id: &str) -> u32 {
    let mut h: u32 = 2_166_136_261;
    for b in id.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(16_777_619);
    }
    h % 360
}

async fn handle(req: Request<Incoming>, app: Arc<App>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/healthz") => json(
            StatusCode::OK,
            &serde_json::json!({
                "status": "ok",
                "deployment_id": app.deployment_id,
                "instance": app.instance,
            }),
        ),
        (&Method::GET | &Method::HEAD, "/") => html(app.page()),
        (&Method::GET, "/api/work") => {
            let status = if app.failing {
                StatusCode::INTERNAL_SERVER_ERROR
            } else {
                StatusCode::OK
            };
            json(
                status,
                &serde_json::json!({"ok": !app.failing, "deployment_id": app.deployment_id}),
            )
        }
        (&Method::GET, "/api/state") => {
            let header = req
                .headers()
                .get(TAB_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            match tab_key(header.or_else(|| query_param(&req, TAB_QUERY)).as_deref()) {
                Some(tab) => json(StatusCode::OK, &app.state("fetch", &tab)),
                None => json(
                    StatusCode::BAD_REQUEST,
                    &serde_json::json!({
                        "error": "missing_tab",
                        "message": "send the tab's key in X-Flotilla-Tab or ?flotilla_tab=",
                    }),
                ),
            }
        }
        (&Method::GET, "/ws") => {
            let tab = tab_key(query_param(&req, TAB_QUERY).as_deref()).unwrap_or_else(|| {
                let n = app
                    .anonymous
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                format!("anonymous-{n}")
            });
            sessions::websocket(req, move |socket| session(socket, app, tab))
        }
        _ => not_found(),
    }
}

/// One WebSocket: greet with the tab's state, then answer `increment` and `state`.
async fn session(mut socket: Socket, app: Arc<App>, tab: String) {
    let _open = app.counters.open_socket();
    let hello = app.state("hello", &tab).to_string();
    if socket.send(Message::text(hello)).await.is_err() {
        return;
    }
    while let Some(Ok(msg)) = socket.next().await {
        let reply = match msg {
            Message::Text(text) => match text.as_str().trim() {
                "increment" => {
                    app.counters.increment(&tab);
                    app.state("increment", &tab)
                }
                "state" => app.state("state", &tab),
                other => serde_json::json!({
                    "type": "error",
                    "message": format!("unknown command {other:?}; send increment or state"),
                }),
            },
            Message::Close(_) => break,
            _ => continue,
        };
        if socket.send(Message::text(reply.to_string())).await.is_err() {
            break;
        }
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let port = sessions::port_from_env(3000)?;
    let app = Arc::new(App::from_env());
    eprintln!(
        "sessions: deployment {} instance {} label {:?}",
        app.deployment_id, app.instance, app.label
    );
    sessions::serve_until_signal("sessions", port, move |req| handle(req, app.clone())).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_declares_its_version_and_loads_the_client() {
        let app = App {
            deployment_id: "20250101-000000-abcd".into(),
            deployment_name: "sessions".into(),
            instance: "i1".into(),
            label: "<one>".into(),
            counters: Counters::default(),
            anonymous: Default::default(),
            failing: false,
        };
        let page = app.page();
        assert!(page.contains(
            r#"<script src="/_flotilla/client.js" data-deployment="20250101-000000-abcd"></script>"#
        ));
        assert!(
            page.contains(r#"<meta name="flotilla-deployment" content="20250101-000000-abcd">"#)
        );
        assert!(page.contains("&lt;one&gt;"), "the label is escaped");
        assert!(!page.contains("{{"), "every placeholder is filled");
        let head = &page[..page.find("</head>").expect("a head")];
        assert!(
            head.contains("/_flotilla/client.js"),
            "the client loads in <head>"
        );
    }

    #[test]
    fn state_counts_per_tab() {
        let app = App::from_env();
        app.counters.increment("t1");
        let s = app.state("fetch", "t1");
        assert_eq!(
            (s["count"].as_u64(), s["tab"].as_str()),
            (Some(1), Some("t1"))
        );
        assert_eq!(app.state("fetch", "t2")["count"], 0);
    }

    /// One `GET` over a fresh connection: the status code and the body.
    async fn get(addr: std::net::SocketAddr, path: &str, headers: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: t\r\n{headers}Connection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("send");
        let mut text = String::new();
        stream.read_to_string(&mut text).await.expect("read");
        let status = text[9..12].parse().expect("a status code");
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned());
        (status, body.unwrap_or_default())
    }

    async fn next_state(
        ws: &mut tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
    ) -> serde_json::Value {
        let msg = ws.next().await.expect("a message").expect("a frame");
        serde_json::from_str(msg.to_text().expect("text")).expect("JSON")
    }

    #[tokio::test]
    async fn a_tab_s_count_survives_its_socket_and_is_its_own() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let app = Arc::new(App::from_env());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(sessions::serve(
            "test",
            listener,
            move |req| handle(req, app.clone()),
            async move {
                let _ = stopped.await;
            },
        ));
        let url = |tab: &str| format!("ws://{addr}/ws?flotilla_tab={tab}");
        let (mut ws, _) = tokio_tungstenite::connect_async(url("t1"))
            .await
            .expect("connect");
        assert_eq!(next_state(&mut ws).await["count"], 0);
        for want in 1..=2 {
            ws.send(Message::text("increment")).await.expect("send");
            let state = next_state(&mut ws).await;
            assert_eq!(
                (state["count"].as_u64(), state["reason"].as_str()),
                (Some(want), Some("increment"))
            );
        }
        ws.send(Message::text("nonsense")).await.expect("send");
        assert_eq!(next_state(&mut ws).await["type"], "error");
        ws.close(None).await.expect("close");
        drop(ws);

        let (mut again, _) = tokio_tungstenite::connect_async(url("t1"))
            .await
            .expect("reconnect");
        let hello = next_state(&mut again).await;
        assert_eq!(
            (hello["count"].as_u64(), hello["reason"].as_str()),
            (Some(2), Some("hello"))
        );
        let (mut other, _) = tokio_tungstenite::connect_async(url("t2"))
            .await
            .expect("connect");
        assert_eq!(
            next_state(&mut other).await["count"],
            0,
            "another tab has its own count"
        );

        let (status, body) = get(addr, "/api/state", "X-Flotilla-Tab: t1\r\n").await;
        let body: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!((status, body["count"].as_u64()), (200, Some(2)));
        assert_eq!(get(addr, "/api/state?flotilla_tab=t2", "").await.0, 200);
        assert_eq!(
            get(addr, "/api/state", "").await.0,
            400,
            "a fetch must name its tab"
        );
        assert_eq!(get(addr, "/healthz", "").await.0, 200);
        assert_eq!(get(addr, "/nope", "").await.0, 404);
        let (status, page) = get(addr, "/", "").await;
        assert_eq!(status, 200);
        assert!(page.contains("/_flotilla/client.js"));
        assert_eq!(
            get(addr, "/ws", "").await.0,
            400,
            "a plain GET of /ws is not a handshake"
        );

        let _ = stop.send(());
        server.await.expect("the server stops when told to");
    }

    #[test]
    fn hues_are_stable_and_in_range() {
        assert_eq!(hue("x"), hue("x"));
        for id in ["a", "20250101-000000-abcd", ""] {
            assert!(hue(id) < 360);
        }
    }
}
