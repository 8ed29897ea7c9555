//! The health path: the agent probes the app's own health path and answers the load balancer
//! with its drain state.
//!
//! `200` with `{"deployment_id","state","draining","sessions",...}` while the app answers 2xx,
//! draining or not (the load balancer must not replace a draining task: the reaper retires it);
//! `503` with the same document and an `error` when the app answers otherwise or not at all.
//! `drain_source` says whether the drain source works (see [`crate::source_health`]): a persistent
//! failure (`persistent_failure: true`, with the error) does not turn the answer into a `503`,
//! since replacing the task would not fix it and would cut its sessions; it is there for
//! `flotilla status` and for whoever reads the document.
//! An app may put a `sessions` number in its own health JSON; the agent adds it to the sessions
//! it counts itself.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use flotilla_proxy::http::{HeaderName, HeaderValue, Response, StatusCode};
use flotilla_proxy::{Body, json_response};
use serde_json::json;

use crate::http::HttpClient;
use crate::source_health::SourceHealth;
use crate::state::{LiveState, SessionCounts};

/// What a probe of the app's health path found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AppHealth {
    /// The app answered 2xx; `sessions` is the number it reported, if any.
    Healthy {
        /// The HTTP status.
        status: u16,
        /// The app's own `sessions` count.
        sessions: Option<u64>,
    },
    /// The app answered with a non-2xx status.
    Unhealthy {
        /// The HTTP status.
        status: u16,
    },
    /// The app did not answer (not started, crashed, too slow).
    Unreachable {
        /// Why, in words.
        error: String,
    },
}

impl AppHealth {
    /// Whether the app is healthy.
    pub fn is_healthy(&self) -> bool {
        matches!(self, AppHealth::Healthy { .. })
    }
}

/// The `sessions` number in an app's health document: a non-negative integer field of a JSON
/// object. Anything else (no JSON, no field, a negative or fractional number) is `None`.
pub fn app_reported_sessions(body: &[u8]) -> Option<u64> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    value.get("sessions")?.as_u64()
}

/// Probes `GET http://<app><path>` within `timeout`.
pub(crate) async fn probe(
    client: &HttpClient,
    app: SocketAddr,
    path: &str,
    timeout: Duration,
) -> AppHealth {
    let url = format!("http://{app}{path}");
    match client.get(&url, timeout).await {
        Ok(fetched) if fetched.status.is_success() => AppHealth::Healthy {
            status: fetched.status.as_u16(),
            sessions: app_reported_sessions(&fetched.body),
        },
        Ok(fetched) => AppHealth::Unhealthy {
            status: fetched.status.as_u16(),
        },
        Err(err) => AppHealth::Unreachable {
            error: err.to_string(),
        },
    }
}

/// Probes the app and records its reported sessions in `state` (kept as they were when the app
/// does not answer).
pub(crate) async fn probe_and_record(
    state: &LiveState,
    client: &HttpClient,
    app: SocketAddr,
    path: &str,
    timeout: Duration,
) -> AppHealth {
    let health = probe(client, app, path, timeout).await;
    if let AppHealth::Healthy { sessions, .. } = &health {
        state.set_app_sessions(sessions.unwrap_or(0));
    }
    health
}

/// The facts the health document is made of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthFacts<'a> {
    /// This version's id.
    pub deployment_id: &'a str,
    /// This instance's id.
    pub instance: &'a str,
    /// The version's state as last read (`None` before the first read, or when it has none).
    pub state: Option<&'a str>,
    /// Whether new sessions are refused (draining or stopping).
    pub draining: bool,
    /// Whether the agent is stopping (SIGTERM).
    pub stopping: bool,
    /// Whether the last poll found this instance ready to stop.
    pub ready: bool,
    /// The live sessions.
    pub counts: SessionCounts,
    /// What the probe of the app found.
    pub app: &'a AppHealth,
    /// The drain source, as described for logs.
    pub source_name: &'a str,
    /// The drain source's recent record.
    pub source: &'a SourceHealth,
}

/// The health status and JSON document for `facts`.
pub fn health_document(facts: &HealthFacts<'_>) -> (StatusCode, serde_json::Value) {
    let app = match facts.app {
        AppHealth::Healthy { status, sessions } => {
            json!({"healthy": true, "status": status, "sessions": sessions})
        }
        AppHealth::Unhealthy { status } => json!({"healthy": false, "status": status}),
        AppHealth::Unreachable { error } => json!({"healthy": false, "error": error}),
    };
    let mut doc = json!({
        "deployment_id": facts.deployment_id,
        "state": facts.state.unwrap_or("unknown"),
        "draining": facts.draining,
        "sessions": facts.counts.sessions(),
        "instance": facts.instance,
        "stopping": facts.stopping,
        "ready_to_stop": facts.ready,
        "counts": facts.counts,
        "app": app,
        "drain_source": facts.source.to_json(facts.source_name),
    });
    let status = if facts.app.is_healthy() {
        StatusCode::OK
    } else {
        let message = match facts.app {
            AppHealth::Unhealthy { status } => {
                format!("the app's health check answered {status}")
            }
            AppHealth::Unreachable { error } => {
                format!("the app's health check got no answer: {error}")
            }
            AppHealth::Healthy { .. } => String::new(),
        };
        doc["error"] = json!("app_unhealthy");
        doc["message"] = json!(message);
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, doc)
}

/// Probes the app and answers the health request.
pub(crate) async fn respond(
    state: &LiveState,
    client: &HttpClient,
    app: SocketAddr,
    path: &str,
    timeout: Duration,
    stamp: Option<(&HeaderName, &HeaderValue)>,
) -> Response<Body> {
    let health = probe_and_record(state, client, app, path, timeout).await;
    let version = state.version_state();
    let source = state.source_health();
    let facts = HealthFacts {
        source_name: &state.source_name,
        source: &source,
        deployment_id: state.identity.id.as_str(),
        instance: state.identity.instance.as_str(),
        state: version.map(|s| s.as_str()),
        draining: state.refusing(),
        stopping: state.stopping(),
        ready: state.ready(),
        counts: state.counts(),
        app: &health,
    };
    let (status, doc) = health_document(&facts);
    let mut response = json_response(status, Bytes::from(doc.to_string()));
    if let Some((name, value)) = stamp {
        response.headers_mut().insert(name.clone(), value.clone());
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_reported_sessions_table() {
        let check = |body: &str, expected: Option<u64>| {
            assert_eq!(app_reported_sessions(body.as_bytes()), expected, "{body}");
        };
        check(r#"{"status":"ok","sessions":3}"#, Some(3));
        check(r#"{"sessions":0}"#, Some(0));
        check(r#"{"status":"ok"}"#, None);
        check(r#"{"sessions":-1}"#, None);
        check(r#"{"sessions":1.5}"#, None);
        check(r#"{"sessions":"3"}"#, None);
        check("ok", None);
        check("[1]", None);
    }

    #[test]
    fn health_document_shape() {
        let counts = SessionCounts {
            websockets: 2,
            event_streams: 1,
            app_reported: 4,
            in_flight: 9,
        };
        let healthy = AppHealth::Healthy {
            status: 200,
            sessions: Some(4),
        };
        let mut failing = SourceHealth::default();
        failing.failed(
            &crate::DrainError::new(
                crate::DrainErrorKind::Permanent,
                "read drain state",
                "/apps/shop/20261125-190633-k3x9/state",
                "AccessDeniedException",
            ),
            flotilla_core::Timestamp::from_millis(7),
        );
        let facts = HealthFacts {
            deployment_id: "20261125-190633-k3x9",
            instance: "i1",
            state: Some("draining"),
            draining: true,
            stopping: false,
            ready: false,
            counts,
            app: &healthy,
            source_name: "SSM /apps/shop/20261125-190633-k3x9/state",
            source: &failing,
        };
        let (status, doc) = health_document(&facts);
        // Draining stays 200: the load balancer must not replace a draining task.
        assert_eq!(status, StatusCode::OK);
        assert_eq!(doc["deployment_id"], "20261125-190633-k3x9");
        assert_eq!(doc["state"], "draining");
        assert_eq!(doc["draining"], true);
        assert_eq!(doc["sessions"], 7);
        assert!(doc.get("error").is_none());
        // A failing drain source shows, without turning the answer into a 503.
        assert_eq!(doc["drain_source"]["persistent_failure"], true);
        assert_eq!(doc["drain_source"]["failing_since_ms"], 7);
        assert!(
            doc["drain_source"]["error"]
                .as_str()
                .is_some_and(|e| e.contains("AccessDeniedException"))
        );

        let down = AppHealth::Unreachable {
            error: "connection refused".into(),
        };
        let (status, doc) = health_document(&HealthFacts {
            app: &down,
            state: None,
            ..facts.clone()
        });
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(doc["state"], "unknown");
        assert_eq!(doc["error"], "app_unhealthy");
        assert!(
            doc["message"]
                .as_str()
                .is_some_and(|m| m.contains("connection refused"))
        );
        let sick = AppHealth::Unhealthy { status: 500 };
        let (status, _) = health_document(&HealthFacts {
            app: &sick,
            ..facts
        });
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }
}
