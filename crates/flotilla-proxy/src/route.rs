//! The routing seam: the caller decides, per request head, where a request goes.
//!
//! The proxy calls [`Route::route`] once per request with a borrowed [`RequestHead`]. The common
//! answer, [`Decision::Forward`], carries an `Arc<Target>` the caller built once per instance, so
//! routing a request costs one reference-count increment and no allocation. A caller that must
//! wait for something (a lookup over a socket, a starting instance) returns
//! [`Decision::Defer`] with a boxed future, paying for the box only then.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use http::header::HeaderValue;
use http::{HeaderMap, Method, Response, Uri};

use crate::body::Body;
use crate::error::ProxyError;
use crate::stats::InstanceStats;

/// The parts of an incoming request a router may look at.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    /// The request method.
    pub method: &'a Method,
    /// The request target as the client sent it (usually origin-form: path and query).
    pub uri: &'a Uri,
    /// The request headers as the client sent them (before any proxy rewriting).
    pub headers: &'a HeaderMap,
    /// The address of the TCP peer (the browser, or the load balancer in front of the proxy).
    pub peer: SocketAddr,
    /// Whether clients reach this proxy over TLS ([`crate::ProxyConfig::forwarded_proto`] is
    /// `https`: TLS is terminated in front of it). See also [`RequestHead::secure`].
    pub tls: bool,
}

impl<'a> RequestHead<'a> {
    /// The value of header `name` if present and visible ASCII (the first one if repeated).
    pub fn header_str(&self, name: &str) -> Option<&'a str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    /// The raw value of the first query parameter called `name`, without percent-decoding
    /// (deployment ids and similar tokens never need it). `None` if absent.
    pub fn query_param(&self, name: &str) -> Option<&'a str> {
        query_param(self.uri.query()?, name)
    }

    /// Whether this request asks for a protocol upgrade (a WebSocket handshake).
    pub fn is_upgrade(&self) -> bool {
        crate::headers::upgrade_protocol(self.headers).is_some()
    }

    /// Whether the browser reached us over TLS: the proxy's listener is behind TLS
    /// ([`RequestHead::tls`]), or the request says so in `X-Forwarded-Proto` (a TLS-terminating
    /// proxy in front). A client can lie about the latter; only use this for what a lie cannot
    /// turn into harm, such as a cookie's `Secure` attribute.
    pub fn secure(&self) -> bool {
        self.tls
            || self
                .header_str("x-forwarded-proto")
                .and_then(|v| v.split(',').next())
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"))
    }
}

/// Finds the raw value of the first `name=value` pair in a query string.
pub(crate) fn query_param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then_some(value)
    })
}

/// Where the proxy sends a request: one upstream instance.
///
/// Build one per instance when it starts, keep it in an `Arc`, and return clones from
/// [`Route::route`]. Everything the hot path needs (the upstream address, the deployment header
/// value, the counters) is computed here once.
pub struct Target {
    addr: SocketAddr,
    deployment: Option<HeaderValue>,
    server_timing: Option<HeaderValue>,
    stats: Arc<InstanceStats>,
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Target")
            .field("addr", &self.addr)
            .field("deployment", &self.deployment)
            .finish_non_exhaustive()
    }
}

impl Target {
    /// A target forwarding to `addr` (plain HTTP/1.1), counting against `stats`, with no
    /// deployment stamp.
    pub fn new(addr: SocketAddr, stats: Arc<InstanceStats>) -> Self {
        Target {
            addr,
            deployment: None,
            server_timing: None,
            stats,
        }
    }

    /// Stamps every response forwarded through this target with the deployment header set to
    /// `deployment_id` (see [`crate::ProxyConfig::deployment_header`]).
    ///
    /// Fails with [`ProxyError::InvalidDeploymentId`] if the id cannot be a header value (control
    /// characters or non-visible bytes).
    pub fn with_deployment(mut self, deployment_id: &str) -> Result<Self, ProxyError> {
        let value =
            HeaderValue::from_str(deployment_id).map_err(|_| ProxyError::InvalidDeploymentId {
                id: deployment_id.to_owned(),
            })?;
        // The client can also read the id of the page's own HTML response from
        // `Server-Timing` (Navigation Timing); a quoted-string needs `"` and `\` escaped.
        let escaped = deployment_id.replace('\\', "\\\\").replace('"', "\\\"");
        self.server_timing =
            HeaderValue::try_from(format!("flotilla-deployment;desc=\"{escaped}\"")).ok();
        self.deployment = Some(value);
        Ok(self)
    }

    /// The upstream socket address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The deployment id this target stamps on responses, if any.
    pub fn deployment(&self) -> Option<&str> {
        self.deployment.as_ref().and_then(|v| v.to_str().ok())
    }

    /// The counters this target updates.
    pub fn stats(&self) -> &Arc<InstanceStats> {
        &self.stats
    }

    pub(crate) fn deployment_value(&self) -> Option<&HeaderValue> {
        self.deployment.as_ref()
    }

    /// `flotilla-deployment;desc="<id>"`, appended as `Server-Timing` to HTML responses.
    pub(crate) fn server_timing_value(&self) -> Option<&HeaderValue> {
        self.server_timing.as_ref()
    }
}

/// A boxed future resolving to a [`Decision`], for routers that must wait.
pub type DecisionFuture = Pin<Box<dyn Future<Output = Decision> + Send + 'static>>;

/// What to do with one request.
pub enum Decision {
    /// Forward the request to this upstream instance.
    Forward(Arc<Target>),
    /// Forward the request to this upstream instance and add these headers to the response the
    /// client gets (a WebSocket's `101` and a gateway error included), such as a `Set-Cookie`.
    /// They are appended after the upstream's own headers.
    ForwardWith(Arc<Target>, HeaderMap),
    /// Accept a WebSocket handshake and close the connection at once with a close frame, so a
    /// page's script sees [`SocketClose::code`] and [`SocketClose::reason`] (a refused upgrade
    /// shows scripts only close code 1006). A request that is not a WebSocket handshake gets
    /// [`SocketClose::otherwise`].
    CloseSocket(Box<SocketClose>),
    /// Answer the client with this response without contacting any upstream (a `410` for a
    /// retired version, a `503` while draining, a health document...). The proxy does not stamp
    /// it; set whatever headers you need.
    Respond(Response<Body>),
    /// Decide later: the proxy awaits the future (which may itself resolve to `Defer`, up to a
    /// small bound) and acts on its result.
    Defer(DecisionFuture),
}

impl fmt::Debug for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Forward(target) => f.debug_tuple("Forward").field(target).finish(),
            Decision::ForwardWith(target, headers) => f
                .debug_tuple("ForwardWith")
                .field(target)
                .field(headers)
                .finish(),
            Decision::CloseSocket(close) => f
                .debug_tuple("CloseSocket")
                .field(&close.code)
                .field(&close.reason)
                .finish(),
            Decision::Respond(response) => {
                f.debug_tuple("Respond").field(&response.status()).finish()
            }
            Decision::Defer(_) => f.write_str("Defer(..)"),
        }
    }
}

/// A WebSocket handshake to accept and close at once (see [`Decision::CloseSocket`]).
pub struct SocketClose {
    /// The close code: 1000, or one of the 3000–4999 codes registered for libraries and left to
    /// applications (RFC 6455 §7.4.2).
    pub code: u16,
    /// The close reason, at most 123 bytes of UTF-8 (longer is cut at a character boundary).
    pub reason: String,
    /// Extra headers on the `101` answer.
    pub headers: HeaderMap,
    /// The answer to a request that is not a WebSocket handshake (an HTTP request, another
    /// upgrade protocol, or a handshake missing its key or version).
    pub otherwise: Response<Body>,
}

/// The caller's routing policy.
///
/// Implemented for any `Fn(&RequestHead<'_>) -> Decision + Send + Sync + 'static`, so a closure
/// works for simple cases and tests. The function runs on the proxy's hot path for every request:
/// keep it synchronous and allocation-free for the common case, and use [`Decision::Defer`] only
/// when you truly need to wait.
pub trait Route: Send + Sync + 'static {
    /// Decides what to do with the request whose head is `head`.
    fn route(&self, head: &RequestHead<'_>) -> Decision;
}

impl<F> Route for F
where
    F: Fn(&RequestHead<'_>) -> Decision + Send + Sync + 'static,
{
    fn route(&self, head: &RequestHead<'_>) -> Decision {
        self(head)
    }
}

impl<R: Route + ?Sized> Route for Arc<R> {
    fn route(&self, head: &RequestHead<'_>) -> Decision {
        (**self).route(head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_param_table() {
        fn check(query: &str, name: &str, expected: Option<&str>) {
            assert_eq!(
                query_param(query, name),
                expected,
                "query {query:?} name {name:?}"
            );
        }
        check("flotilla_deployment=v1", "flotilla_deployment", Some("v1"));
        check(
            "a=1&flotilla_deployment=v2&b",
            "flotilla_deployment",
            Some("v2"),
        );
        check("flotilla_deployment", "flotilla_deployment", Some(""));
        check("x_flotilla_deployment=v1", "flotilla_deployment", None);
        check(
            "a=1&flotilla_deployment=v1&flotilla_deployment=v2",
            "flotilla_deployment",
            Some("v1"),
        );
        check("", "flotilla_deployment", None);
    }

    #[test]
    fn target_rejects_unrepresentable_ids() {
        let stats = Arc::new(InstanceStats::new());
        let addr: SocketAddr = "127.0.0.1:9".parse().expect("literal address");
        let err = Target::new(addr, stats.clone())
            .with_deployment("bad\nid")
            .expect_err("newline is not a header value");
        assert!(err.to_string().contains("bad\\nid"), "{err}");
        let ok = Target::new(addr, stats)
            .with_deployment("web-20260101-000000")
            .expect("plain id is fine");
        assert_eq!(ok.deployment(), Some("web-20260101-000000"));
        assert_eq!(
            ok.server_timing_value().map(|v| v.as_bytes()),
            Some(&br#"flotilla-deployment;desc="web-20260101-000000""#[..])
        );
    }
}
