//! The read-only status page on `[host] admin_listen`: `GET /` is an auto-refreshing HTML table of
//! versions (id, state, weight, instances healthy/total, live sessions, age) and their instances;
//! `GET /status.json` is the same as JSON (the engine's status report plus per-instance detail);
//! `GET /metrics` is the Prometheus text format (see `crate::metrics`).

use std::convert::Infallible;
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
            if r.healthy { "yes" } else if r.running { "no" } else { "stopped" },
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

/// Serves the status page on `listener` until `stop` turns true.
pub async fn serve(
    listener: TcpListener,
    host: Arc<Host>,
    engine: Arc<Engine>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let (host, engine) = (host.clone(), engine.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(req, host.clone(), engine.clone()));
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
