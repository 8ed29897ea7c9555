//! A plain web app that knows nothing of flotilla: an HTML page with a WebSocket counter, no
//! `<script src="/_flotilla/client.js">`, no `FLOTILLA_*` variables, no flotilla headers.
//!
//! It is how the no-code integration is shown: deployed with `[app] inject_client = true`, the
//! router inserts the browser client into its page, and each tab keeps talking to the version
//! that served it, with no change to this code.
//!
//! - `GET /`: the page (it opens `/ws` and fetches `/whoami`).
//! - `GET /whoami?tab=KEY`: `{"label":..,"pid":..,"tab":..,"count":..}`.
//! - `GET /ws?tab=KEY`: a WebSocket greeting with the same JSON and answering `increment`.
//! - `GET /healthz`: `ok`.
//! - `GET /csp`: a small page under a nonce-based Content-Security-Policy, `script-src
//!   'nonce-N'` with a fresh random N per response, sent in the header (`?via=meta`: in a
//!   `<meta http-equiv>` instead; `?via=none`: `script-src 'none'` in the header). Its one
//!   nonced script sets `window.cspPage`; a second, unnonced one would set `window.cspUnnonced`
//!   if the browser did not enforce the policy.
//!
//! Which release it is shows only as its label (`SESSIONS_LABEL` or `label.txt`) and its pid.
//! Listens on `127.0.0.1:$PORT` (default 3000).

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use sessions::{
    Body, Counters, Socket, escape_html, full, html, json, not_found, query_param, tab_key,
};
use tokio_tungstenite::tungstenite::Message;

const PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>plain app</title>
<style>
  body { font: 16px/1.4 system-ui, sans-serif; margin: 20px; }
  td { font-family: ui-monospace, monospace; padding-left: 12px; }
</style>
</head>
<body>
<h1>A plain app, release <span id="label">{{LABEL}}</span></h1>
<table>
  <tr><th>page from pid</th><td id="page-pid">{{PID}}</td></tr>
  <tr><th>socket</th><td id="socket">connecting</td></tr>
  <tr><th>socket release</th><td id="socket-label"></td></tr>
  <tr><th>fetch release</th><td id="fetch-label"></td></tr>
  <tr><th>count</th><td id="count"></td></tr>
</table>
<button id="increment">Increment</button>
<script>
(function () {
  var tab = sessionStorage.getItem("plain:tab");
  if (!tab) { tab = String(Date.now()) + String(Math.random()).slice(2); sessionStorage.setItem("plain:tab", tab); }
  var state = { tab: tab, socket: "connecting", opens: 0, socketLabel: null, socketPid: null, count: null };
  var ws = null;
  function show() {
    document.getElementById("socket").textContent = state.socket;
    document.getElementById("socket-label").textContent = state.socketLabel;
    document.getElementById("count").textContent = state.count;
  }
  function connect() {
    var socket = new WebSocket("ws://" + location.host + "/ws?tab=" + encodeURIComponent(tab));
    ws = socket;
    socket.onopen = function () { if (ws === socket) { state.socket = "open"; state.opens += 1; show(); } };
    socket.onmessage = function (e) {
      if (ws !== socket) { return; }
      var m = JSON.parse(e.data);
      state.socketLabel = m.label; state.socketPid = m.pid; state.count = m.count; show();
    };
    socket.onclose = function (e) { if (ws === socket) { ws = null; state.socket = "closed " + e.code; show(); } };
  }
  function reconnect() { if (ws) { var old = ws; ws = null; old.close(); } connect(); }
  function increment() { if (ws && ws.readyState === 1) { ws.send("increment"); return true; } return false; }
  function whoami() {
    return fetch("/whoami?tab=" + encodeURIComponent(tab)).then(function (r) {
      return r.json().then(function (body) {
        if (r.ok) { document.getElementById("fetch-label").textContent = body.label; }
        return { status: r.status, body: body };
      });
    });
  }
  document.getElementById("increment").onclick = increment;
  window.plain = { state: state, reconnect: reconnect, increment: increment, whoami: whoami };
  connect();
  whoami();
})();
</script>
</body>
</html>
"#;

const CSP_PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
{{META}}<meta charset="utf-8">
<title>plain app under a CSP</title>
</head>
<body>
<h1>A page under a Content-Security-Policy, release <span id="label">{{LABEL}}</span></h1>
<p>nonced script: <span id="nonced">did not run</span></p>
<script nonce="{{NONCE}}">
window.cspPage = { nonce: "{{NONCE}}" };
document.getElementById("nonced").textContent = "ran";
</script>
<script>window.cspUnnonced = true;</script>
</body>
</html>
"#;

/// A fresh nonce: 128 random bits (std's per-instance hash keys come from the OS), as hex.
fn nonce() -> String {
    use std::hash::{BuildHasher, Hasher};
    let half = || {
        std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish()
    };
    format!("{:016x}{:016x}", half(), half())
}

/// `GET /csp`: see the module's documentation.
fn csp_page(req: &Request<Incoming>, label: &str) -> Response<Body> {
    let nonce = nonce();
    let policy = format!("script-src 'nonce-{nonce}'");
    let via = query_param(req, "via");
    let meta = match via.as_deref() {
        Some("meta") => {
            format!("<meta http-equiv=\"Content-Security-Policy\" content=\"{policy}\">\n")
        }
        _ => String::new(),
    };
    let mut response = html(
        CSP_PAGE
            .replace("{{META}}", &meta)
            .replace("{{LABEL}}", &escape_html(label))
            .replace("{{NONCE}}", &nonce),
    );
    let header = match via.as_deref() {
        Some("meta") => None,
        Some("none") => Some("script-src 'none'".to_owned()),
        _ => Some(policy),
    };
    if let Some(header) = header {
        response.headers_mut().insert(
            "content-security-policy",
            hyper::header::HeaderValue::from_str(&header)
                .expect("a policy of ASCII is a valid value"),
        );
    }
    response
}

struct App {
    label: String,
    counters: Counters,
}

impl App {
    fn state(&self, tab: &str) -> serde_json::Value {
        serde_json::json!({
            "label": self.label,
            "pid": std::process::id(),
            "tab": tab,
            "count": self.counters.get(tab),
        })
    }
}

async fn handle(req: Request<Incoming>, app: Arc<App>) -> Response<Body> {
    let tab = tab_key(query_param(&req, "tab").as_deref()).unwrap_or_else(|| "-".to_owned());
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => full(StatusCode::OK, "text/plain", "ok\n"),
        (&Method::GET, "/") => html(
            PAGE.replace("{{LABEL}}", &escape_html(&app.label))
                .replace("{{PID}}", &std::process::id().to_string()),
        ),
        (&Method::GET, "/csp") => csp_page(&req, &app.label),
        (&Method::GET, "/whoami") => json(StatusCode::OK, &app.state(&tab)),
        (&Method::GET, "/ws") => sessions::websocket(req, move |socket| session(socket, app, tab)),
        _ => not_found(),
    }
}

async fn session(mut socket: Socket, app: Arc<App>, tab: String) {
    let _open = app.counters.open_socket();
    if socket
        .send(Message::text(app.state(&tab).to_string()))
        .await
        .is_err()
    {
        return;
    }
    while let Some(Ok(msg)) = socket.next().await {
        match msg {
            Message::Text(t) if t.as_str().trim() == "increment" => {
                app.counters.increment(&tab);
            }
            Message::Text(_) => {}
            Message::Close(_) => break,
            _ => continue,
        }
        if socket
            .send(Message::text(app.state(&tab).to_string()))
            .await
            .is_err()
        {
            break;
        }
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let port = sessions::port_from_env(3000)?;
    let app = Arc::new(App {
        label: sessions::release_label(),
        counters: Counters::default(),
    });
    sessions::serve_until_signal("plain", port, move |req| handle(req, app.clone())).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_has_no_flotilla_in_it() {
        let page = PAGE.to_lowercase();
        assert!(
            !page.contains("flotilla"),
            "the plain app must not know flotilla"
        );
        assert!(page.contains("new websocket("));
    }
}
