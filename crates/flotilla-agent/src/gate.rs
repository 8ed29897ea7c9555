//! The agent's routing policy in front of its one app: answer the health path, refuse new
//! sessions while draining or stopping, forward everything else.
//!
//! Order, per request (the client script at `/_flotilla/client.js` is answered by the proxy
//! before this runs):
//! 1. the health path is always answered by the agent (probing the app), whatever the state;
//! 2. while the version drains or the agent stops, a request without this version's affinity
//!    (header or query parameter equal to its id) gets `503` with `Retry-After` and a JSON body,
//!    and no deployment header, so a fresh tab does not pin itself to a leaving version;
//! 3. everything else is forwarded to the app.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use flotilla_proxy::http::header::RETRY_AFTER;
use flotilla_proxy::http::{HeaderName, HeaderValue, Response, StatusCode};
use flotilla_proxy::{Body, Decision, RequestHead, Route, Target, json_response};
use serde_json::json;

use crate::health;
use crate::http::HttpClient;
use crate::state::LiveState;

/// Seconds a refused client is told to wait before retrying (through the load balancer, which
/// sends a fresh request to the active version).
pub const RETRY_AFTER_SECONDS: u64 = 1;

/// The agent's [`Route`].
pub(crate) struct Gate {
    pub(crate) state: Arc<LiveState>,
    pub(crate) target: Arc<Target>,
    pub(crate) client: HttpClient,
    pub(crate) app: SocketAddr,
    pub(crate) health_path: Arc<str>,
    pub(crate) probe_timeout: Duration,
    pub(crate) header: HeaderName,
    pub(crate) header_value: HeaderValue,
    pub(crate) query: String,
}

/// Whether a request carries affinity to version `id`: header `header` or query parameter
/// `query` equal to it (ASCII case-insensitively, as the ALB compares headers).
pub fn has_affinity(head: &RequestHead<'_>, header: &HeaderName, query: &str, id: &str) -> bool {
    let by_header = head
        .headers
        .get_all(header)
        .iter()
        .any(|v| v.to_str().is_ok_and(|v| v.trim().eq_ignore_ascii_case(id)));
    by_header
        || head
            .query_param(query)
            .is_some_and(|v| v.eq_ignore_ascii_case(id))
}

/// The `503` sent to a request without affinity while draining or stopping.
pub fn refusal(id: &str, stopping: bool) -> Response<Body> {
    let (error, why) = if stopping {
        ("stopping", "is stopping")
    } else {
        ("draining", "is draining")
    };
    let body = json!({
        "error": error,
        "message": format!(
            "This instance of version {id} {why} and takes no new sessions. Retry: the request \
             will reach the current version."
        ),
        "deployment_id": id,
        "retry_after": RETRY_AFTER_SECONDS,
    });
    let mut response = json_response(
        StatusCode::SERVICE_UNAVAILABLE,
        Bytes::from(body.to_string()),
    );
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
    response
}

impl Route for Gate {
    fn route(&self, head: &RequestHead<'_>) -> Decision {
        if head.uri.path() == &*self.health_path {
            let state = self.state.clone();
            let client = self.client.clone();
            let app = self.app;
            let path = self.health_path.clone();
            let timeout = self.probe_timeout;
            let header = self.header.clone();
            let value = self.header_value.clone();
            return Decision::Defer(Box::pin(async move {
                Decision::Respond(
                    health::respond(
                        &state,
                        &client,
                        app,
                        &path,
                        timeout,
                        Some((&header, &value)),
                    )
                    .await,
                )
            }));
        }
        if self.state.refusing() {
            let id = self.state.identity.id.as_str();
            if !has_affinity(head, &self.header, &self.query, id) {
                return Decision::Respond(refusal(id, self.state.stopping()));
            }
        }
        Decision::Forward(self.target.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_proxy::http::{HeaderMap, Method, Uri};

    #[test]
    fn affinity_table() {
        let header = HeaderName::from_static("x-flotilla-deployment");
        let id = "20261125-190633-k3x9";
        let check = |uri: &str, headers: &[(&str, &str)], expected: bool| {
            let uri: Uri = uri.parse().expect("uri");
            let mut map = HeaderMap::new();
            for (k, v) in headers {
                map.append(
                    HeaderName::from_bytes(k.as_bytes()).expect("name"),
                    HeaderValue::from_str(v).expect("value"),
                );
            }
            let head = RequestHead {
                method: &Method::GET,
                uri: &uri,
                headers: &map,
                peer: "127.0.0.1:1".parse().expect("addr"),
                tls: false,
            };
            assert_eq!(
                has_affinity(&head, &header, "flotilla_deployment", id),
                expected,
                "{uri} {headers:?}"
            );
        };
        check("/", &[], false);
        check("/", &[("X-Flotilla-Deployment", id)], true);
        check(
            "/",
            &[("x-flotilla-deployment", "20261125-190633-K3X9")],
            true,
        );
        check(
            "/",
            &[("X-Flotilla-Deployment", "20261125-190633-zzzz")],
            false,
        );
        check("/ws?flotilla_deployment=20261125-190633-k3x9", &[], true);
        check(
            "/ws?a=1&flotilla_deployment=20261125-190633-k3x9",
            &[],
            true,
        );
        check("/ws?flotilla_deployment=20261125-190633-zzzz", &[], false);
        check("/ws?x_flotilla_deployment=20261125-190633-k3x9", &[], false);
        check(
            "/",
            &[
                ("X-Flotilla-Deployment", "other"),
                ("X-Flotilla-Deployment", id),
            ],
            true,
        );
    }

    #[test]
    fn refusal_says_retry_and_names_no_deployment_header() {
        let response = refusal("20261125-190633-k3x9", false);
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            response.headers().get(RETRY_AFTER).map(|v| v.as_bytes()),
            Some(&b"1"[..])
        );
        assert!(response.headers().get("x-flotilla-deployment").is_none());
        assert_eq!(
            response.headers().get("content-type").map(|v| v.as_bytes()),
            Some(&b"application/json"[..])
        );
    }
}
