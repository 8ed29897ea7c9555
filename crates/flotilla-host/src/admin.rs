//! The read-only status page on `[host] admin_listen`: `GET /` is an auto-refreshing HTML table of
//! versions (id, state, weight, instances healthy/total, live sessions, age) and their instances;
//! `GET /status.json` is the same as JSON (the engine's status report plus per-instance detail);
//! `GET /metrics` is the Prometheus text format (see `crate::metrics`).
//!
//! With a token (`[host] admin_token_file`, required when the page listens on anything but
//! loopback, see [`AdminToken::for_settings`]) every request must carry `Authorization: Bearer
//! <token>`, compared in constant time, or is answered `401`; `/metrics` included.

use std::convert::Infallible;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use flotilla_engine::Engine;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::daemon::Host;
use crate::error::HostError;
use crate::settings::HostSettings;

/// Shortest token accepted: guessing must stay out of reach.
const MIN_TOKEN_LEN: usize = 16;

/// The status page's bearer token.
#[derive(Clone)]
pub struct AdminToken(String);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

impl AdminToken {
    /// A token from its text (surrounding whitespace, such as a file's final newline, dropped);
    /// `None` if what is left is shorter than 16 characters or holds whitespace or control
    /// characters (it could not travel in an `Authorization` header).
    pub fn new(text: &str) -> Option<AdminToken> {
        let token = text.trim();
        let usable = token.len() >= MIN_TOKEN_LEN && token.bytes().all(|b| b.is_ascii_graphic());
        usable.then(|| AdminToken(token.to_owned()))
    }

    /// The token the status page of `settings` requires: read from `admin_token_file` when set;
    /// none on a loopback `admin_listen` without that key; an error naming the key otherwise
    /// (the page would be open to every machine that reaches the port).
    pub fn for_settings(settings: &HostSettings) -> Result<Option<AdminToken>, HostError> {
        let admin = settings.admin_listen;
        let Some(path) = &settings.admin_token_file else {
            if admin.ip().is_loopback() {
                return Ok(None);
            }
            return Err(HostError::AdminToken(format!(
                "`[host] admin_listen` {admin} is not a loopback address, so the status page \
                 needs a token: set `admin_token_file` in [host] to a file holding one (at least \
                 {MIN_TOKEN_LEN} characters, e.g. `head -c 32 /dev/urandom | base64 > \
                 admin.token && chmod 600 admin.token`, kept outside the app directory); requests \
                 then carry `Authorization: Bearer <token>`. Or listen on 127.0.0.1:{port}",
                port = admin.port()
            )));
        };
        let path = if path.is_relative() {
            settings.app_dir.join(path)
        } else {
            path.clone()
        };
        Self::read(&path).map(Some)
    }

    fn read(path: &Path) -> Result<AdminToken, HostError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            HostError::AdminToken(format!(
                "cannot read `[host] admin_token_file` {}: {e}; create it with a token of at \
                 least {MIN_TOKEN_LEN} characters (e.g. `head -c 32 /dev/urandom | base64`)",
                path.display()
            ))
        })?;
        let token = AdminToken::new(&text).ok_or_else(|| {
            HostError::AdminToken(format!(
                "`[host] admin_token_file` {} must hold one token of at least {MIN_TOKEN_LEN} \
                 printable characters without spaces (e.g. `head -c 32 /dev/urandom | base64`)",
                path.display()
            ))
        })?;
        {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(meta) = std::fs::metadata(path)
                && meta.permissions().mode() & 0o077 != 0
            {
                tracing::warn!(
                    file = %path.display(),
                    "the status page's token file is readable by other users; chmod 600 it"
                );
            }
        }
        Ok(token)
    }

    /// Whether `headers` carry `Authorization: Bearer <this token>`. The comparison takes the
    /// same time wherever the first difference is.
    pub fn admits(&self, headers: &http::HeaderMap) -> bool {
        let Some(given) = headers
            .get(http::header::AUTHORIZATION)
            .map(http::HeaderValue::as_bytes)
        else {
            return false;
        };
        let Some((scheme, credentials)) = given.split_at_checked(7) else {
            return false;
        };
        scheme.eq_ignore_ascii_case(b"bearer ")
            & constant_time_eq(credentials.trim_ascii(), self.0.as_bytes())
    }
}

/// Equality of two byte strings in time that depends only on their lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// One instance as the status page shows it.
#[derive(Clone, Debug, Serialize)]
pub struct InstanceRow {
    /// The version.
    pub deployment_id: String,
    /// The instance.
    pub instance: String,
    /// Its loopback address.
    pub addr: String,
    /// Its process id while running.
    pub pid: Option<u32>,
    /// Whether it runs.
    pub running: bool,
    /// Whether it passes health checks.
    pub healthy: bool,
    /// Whether autoscaling winds it down: no new sessions, stopped once its sessions end.
    pub winding_down: bool,
    /// Live sessions the router counts.
    pub sessions: u64,
    /// Sessions the app reports in its health JSON.
    pub app_sessions: Option<u64>,
    /// Requests routed to it.
    pub requests_total: u64,
    /// Restarts after exits.
    pub restarts: u32,
    /// The last problem seen.
    pub problem: Option<String>,
}

fn instance_rows(host: &Host) -> Vec<InstanceRow> {
    host.supervisor()
        .instances()
        .into_iter()
        .map(|v| {
            let key = (v.id.clone(), v.state.instance.clone());
            let stats = host.router().stats().snapshot_of(&key).unwrap_or_default();
            InstanceRow {
                deployment_id: v.id.to_string(),
                instance: v.state.instance.to_string(),
                addr: v.state.addr().to_string(),
                pid: v.state.pid(),
                running: v.state.running(),
                healthy: v.state.healthy(),
                winding_down: v.winding_down,
                sessions: stats.sessions,
                app_sessions: v.state.app_sessions(),
                requests_total: stats.requests_total,
                restarts: v.state.restarts(),
                problem: v.state.problem(),
            }
        })
        .collect()
}

async fn status_json(host: &Host, engine: &Engine) -> Result<serde_json::Value, String> {
    let report = engine.status().await.map_err(|e| e.to_string())?;
    Ok(serde_json::json!({
        "daemon": host.daemon_info(),
        "status": report,
        "instances": instance_rows(host),
    }))
}

/// `/metrics`: the status report with the router's counters summed per version.
async fn metrics_text(host: &Host, engine: &Engine) -> Result<String, String> {
    let report = engine.status().await.map_err(|e| e.to_string())?;
    let mut traffic = std::collections::BTreeMap::new();
    for ((id, _instance), stats) in host.router().stats().snapshot() {
        traffic
            .entry(id)
            .or_insert_with(flotilla_proxy::StatsSnapshot::default)
            .add(&stats);
    }
    Ok(crate::metrics::render(
        &report,
        &traffic,
        &host.reaper_meter().totals(),
    ))
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn age(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

async fn status_html(host: &Host, engine: &Engine) -> String {
    let mut out = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"2\">\
         <title>flotilla status</title><style>body{font-family:system-ui,sans-serif;margin:2em}\
         table{border-collapse:collapse;margin-bottom:2em}td,th{border:1px solid #ccc;padding:4px 10px;text-align:left}\
         th{background:#f3f3f3}.active{color:#060;font-weight:bold}.draining{color:#a60}.retired,.failed{color:#a00}</style></head><body>",
    );
    match engine.status().await {
        Ok(report) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            out.push_str(&format!(
                "<h1>flotilla: {}</h1><p>rules {}/{}{}</p>",
                escape(report.name.as_str()),
                report.rules_used,
                report.rules_limit,
                report
                    .lock
                    .as_ref()
                    .map(|l| format!(" · lock held by {}", escape(&l.owner)))
                    .unwrap_or_default()
            ));
            out.push_str("<table><tr><th>id</th><th>state</th><th>weight</th><th>instances healthy/total</th><th>live sessions</th><th>age</th></tr>");
            for v in report.versions.iter().rev() {
                let state = v.record.version.state.as_str();
                let (healthy, total, sessions) = v
                    .compute
                    .as_ref()
                    .map_or((0, 0, None), |c| (c.healthy, c.desired, c.sessions));
                out.push_str(&format!(
                    "<tr><td>{}</td><td class=\"{state}\">{state}</td><td>{}</td><td>{healthy}/{total}</td><td>{}</td><td>{}</td></tr>",
                    escape(v.record.version.id.as_str()),
                    v.weight,
                    sessions.map_or("-".to_owned(), |s| s.to_string()),
                    age(now.saturating_sub(v.record.version.created_at.as_secs())),
                ));
            }
            out.push_str("</table>");
            if !report.orphans.is_empty() {
                out.push_str(&format!(
                    "<p>orphans: {}</p>",
                    escape(&format!("{:?}", report.orphans))
                ));
            }
        }
        Err(e) => out.push_str(&format!(
            "<h1>flotilla</h1><p>status unavailable: {}</p>",
            escape(&e.to_string())
        )),
    }
    out.push_str("<h2>instances</h2><table><tr><th>version</th><th>instance</th><th>address</th><th>pid</th><th>healthy</th><th>sessions</th><th>requests</th><th>restarts</th><th>last problem</th></tr>");
    for r in instance_rows(host) {
        out.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&r.deployment_id),
            escape(&r.instance),
            escape(&r.addr),
            r.pid.map_or("-".to_owned(), |p| p.to_string()),
            match (r.healthy, r.running, r.winding_down) {
                (true, _, true) => "yes, winding down",
                (true, _, false) => "yes",
                (false, true, _) => "no",
                (false, false, _) => "stopped",
            },
            r.sessions + r.app_sessions.unwrap_or(0),
            r.requests_total,
            r.restarts,
            escape(r.problem.as_deref().unwrap_or("")),
        ));
    }
    out.push_str(
        "</table><p>Also as <a href=\"/status.json\">JSON</a> and \
         <a href=\"/metrics\">Prometheus metrics</a>.</p></body></html>",
    );
    out
}

fn respond(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_str(content_type).expect("static content types are valid"),
    );
    r.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    r
}

async fn handle(
    req: Request<Incoming>,
    host: Arc<Host>,
    engine: Arc<Engine>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(respond(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "read-only\n".to_owned(),
        ));
    }
    Ok(match req.uri().path() {
        "/" => respond(
            StatusCode::OK,
            "text/html; charset=utf-8",
            status_html(&host, &engine).await,
        ),
        "/status.json" => match status_json(&host, &engine).await {
            Ok(v) => respond(StatusCode::OK, "application/json", v.to_string()),
            Err(e) => respond(
                StatusCode::SERVICE_UNAVAILABLE,
                "application/json",
                serde_json::json!({"error": "status_unavailable", "message": e}).to_string(),
            ),
        },
        "/metrics" => match metrics_text(&host, &engine).await {
            Ok(text) => respond(StatusCode::OK, "text/plain; version=0.0.4", text),
            Err(e) => respond(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("status unavailable: {e}\n"),
            ),
        },
        _ => respond(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /, /status.json or /metrics\n".to_owned(),
        ),
    })
}

/// Serves the status page on `listener` until `stop` turns true; with a `token`, only to requests
/// that carry it.
pub async fn serve(
    listener: TcpListener,
    host: Arc<Host>,
    engine: Arc<Engine>,
    token: Option<AdminToken>,
    stop: watch::Receiver<bool>,
) {
    let pages = move |req| handle(req, host.clone(), engine.clone());
    serve_pages(listener, token, stop, pages).await;
}

/// The accept loop and the token check in front of `pages`.
async fn serve_pages<P, F>(
    listener: TcpListener,
    token: Option<AdminToken>,
    mut stop: watch::Receiver<bool>,
    pages: P,
) where
    P: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send + 'static,
{
    let token = token.map(Arc::new);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let (pages, token) = (pages.clone(), token.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let admitted = token.as_ref().is_none_or(|t| t.admits(req.headers()));
                        let page = admitted.then(|| pages(req));
                        async move {
                            match page {
                                Some(page) => page.await,
                                None => Ok(unauthorized()),
                            }
                        }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .timer(hyper_util::rt::TokioTimer::new())
                        .header_read_timeout(Duration::from_secs(10))
                        .serve_connection(TokioIo::new(stream), service);
                    let _ = conn.await;
                });
            }
            _ = crate::supervisor::stop_requested(&mut stop) => break,
        }
    }
}

/// `401` for a request without the token.
fn unauthorized() -> Response<Full<Bytes>> {
    let mut r = respond(
        StatusCode::UNAUTHORIZED,
        "text/plain",
        "the status page needs `Authorization: Bearer <token>` (the token in [host] \
         admin_token_file)\n"
            .to_owned(),
    );
    r.headers_mut().insert(
        http::header::WWW_AUTHENTICATE,
        http::HeaderValue::from_static("Bearer realm=\"flotilla\""),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const TOKEN: &str = "s3cret-t0ken-of-32-characters-xx";

    /// Status line of a GET / with `extra` header lines, against `addr`.
    async fn get(addr: std::net::SocketAddr, extra: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connect to the status page");
        let request = format!("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n{extra}\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .expect("send the request");
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .await
            .expect("read the response");
        response
    }

    /// Serves a page saying "the page" behind `token`; the address and the stop switch.
    async fn start(token: Option<AdminToken>) -> (std::net::SocketAddr, watch::Sender<bool>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local address");
        let (stop_tx, stop_rx) = watch::channel(false);
        let pages = |_req: Request<Incoming>| async {
            Ok(respond(
                StatusCode::OK,
                "text/plain",
                "the page\n".to_owned(),
            ))
        };
        tokio::spawn(serve_pages(listener, token, stop_rx, pages));
        (addr, stop_tx)
    }

    #[tokio::test]
    async fn without_a_token_the_page_is_open() {
        let (addr, _stop) = start(None).await;
        let response = get(addr, "").await;
        assert!(
            response.starts_with("HTTP/1.1 200") && response.ends_with("the page\n"),
            "{response}"
        );
    }

    #[tokio::test]
    async fn with_a_token_only_requests_carrying_it_see_the_page() {
        let (addr, _stop) = start(AdminToken::new(TOKEN)).await;
        for (extra, status) in [
            ("", "401"),
            (
                "Authorization: Bearer wrong-token-of-32-characters-xxx\r\n",
                "401",
            ),
            (&format!("Authorization: Bearer {TOKEN}x\r\n"), "401"),
            (&format!("Authorization: Basic {TOKEN}\r\n"), "401"),
            (&format!("Authorization: Bearer {TOKEN}\r\n"), "200"),
            (&format!("authorization: bearer  {TOKEN}\r\n"), "200"),
        ] {
            let response = get(addr, extra).await;
            assert!(
                response.starts_with(&format!("HTTP/1.1 {status}")),
                "{extra:?}: {response}"
            );
            if status == "401" {
                let lower = response.to_ascii_lowercase();
                assert!(
                    lower.contains("www-authenticate: bearer") && !response.contains("the page"),
                    "{response}"
                );
            }
        }
    }

    #[test]
    fn tokens_too_short_or_with_spaces_are_refused() {
        assert!(AdminToken::new("short").is_none());
        assert!(AdminToken::new("sixteen chars ok").is_none());
        assert!(AdminToken::new(&format!("  {TOKEN}\n")).is_some());
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }

    #[test]
    fn a_non_loopback_page_without_a_token_file_is_refused_naming_the_key() {
        let app = tempfile::tempdir().expect("temporary directory");
        let mut settings = HostSettings::new(
            flotilla_core::DeploymentName::new("web").expect("valid name"),
            app.path(),
            "true",
        );
        assert!(matches!(AdminToken::for_settings(&settings), Ok(None)));
        settings.admin_listen = "0.0.0.0:9000".parse().expect("address");
        let refused = AdminToken::for_settings(&settings).expect_err("refused");
        assert!(
            refused.to_string().starts_with(
                "`[host] admin_listen` 0.0.0.0:9000 is not a loopback address, so the status page \
                 needs a token: set `admin_token_file` in [host]"
            ),
            "{refused}"
        );
        settings.admin_token_file = Some("admin.token".into());
        let missing = AdminToken::for_settings(&settings).expect_err("no such file");
        assert!(
            missing
                .to_string()
                .starts_with("cannot read `[host] admin_token_file`"),
            "{missing}"
        );
        std::fs::write(app.path().join("admin.token"), "short\n").expect("write");
        let weak = AdminToken::for_settings(&settings).expect_err("too short");
        assert!(weak.to_string().contains("at least 16"), "{weak}");
        std::fs::write(app.path().join("admin.token"), format!("{TOKEN}\n")).expect("write");
        let token = AdminToken::for_settings(&settings)
            .expect("readable")
            .expect("a token");
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_str(&format!("Bearer {TOKEN}")).expect("valid"),
        );
        assert!(token.admits(&headers));
    }
}
