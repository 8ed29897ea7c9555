//! Settings of one proxy server, with defaults suitable for the host router and the agent.

use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderName;
use http::uri::Scheme;

use crate::access::AccessLog;
use crate::error::ProxyError;
use crate::limit::ConnectionLimit;
use crate::moving::SessionMove;

/// The default name of the header stamped on every proxied response.
pub const DEFAULT_DEPLOYMENT_HEADER: &str = "x-flotilla-deployment";

/// How one proxy server behaves. Build it with struct-update syntax over
/// [`ProxyConfig::default`]:
///
/// ```
/// # use std::time::Duration;
/// let config = flotilla_proxy::ProxyConfig {
///     inject_client: true,
///     shutdown_deadline: Duration::from_secs(10),
///     ..Default::default()
/// };
/// # let _ = config;
/// ```
#[derive(Clone)]
pub struct ProxyConfig {
    /// Most client connections open at once (including upgraded WebSockets, which keep their
    /// connection). A connection accepted beyond this gets one `503` (JSON, `Retry-After: 1`) and
    /// is closed. The limit is shared by every clone of this config, so servers started with
    /// clones (one per worker thread) are capped together. Default 10 000.
    pub connection_limit: ConnectionLimit,
    /// Time a new connection has to send its first byte before it is closed, so that connections
    /// opened and left silent do not hold a slot of the connection limit (and two file
    /// descriptors' worth of it) for the whole `header_read_timeout`. Default 20 s.
    pub first_byte_timeout: Duration,
    /// Time a client has to send a complete request head, counted from when the proxy starts
    /// waiting for one. Because hyper starts that wait as soon as the previous response is done,
    /// this is also the idle timeout of keep-alive client connections. Default 60 s.
    pub header_read_timeout: Duration,
    /// Time allowed to open a TCP connection to an upstream before answering `502`. Default 5 s.
    pub connect_timeout: Duration,
    /// Time allowed for an upstream to send its response head after the request was sent, before
    /// answering `504`. `None` (the default) waits as long as the client does, for long polls.
    pub response_header_timeout: Option<Duration>,
    /// How long an idle pooled upstream connection is kept for reuse. Default 90 s.
    pub upstream_idle_timeout: Duration,
    /// Most idle pooled connections kept per upstream address. Default 256.
    pub upstream_max_idle_per_host: usize,
    /// Close an upgraded (WebSocket) connection after this long without a byte in either
    /// direction. `None` (the default) relies on the application's own pings and on TCP
    /// keepalive to notice dead peers.
    pub upgrade_idle_timeout: Option<Duration>,
    /// TCP keepalive probe idle time on client connections, so that a vanished client (no FIN,
    /// no RST) is eventually noticed and its sessions end. `None` disables. Default 60 s.
    pub tcp_keepalive: Option<Duration>,
    /// How long graceful shutdown waits for in-flight requests and open upgraded connections
    /// before cutting them. Default 30 s.
    pub shutdown_deadline: Duration,
    /// Name of the header stamped on every proxied response with the target's deployment id.
    /// Default `X-Flotilla-Deployment`.
    pub deployment_header: HeaderName,
    /// Insert `<script src="/_flotilla/client.js"></script>` early in `<head>` of HTML documents
    /// (responses with `Content-Type: text/html` to requests whose `Accept` lists `text/html`,
    /// which page navigations always do). Such requests are sent upstream without
    /// `If-None-Match`/`If-Modified-Since` and with `Accept-Encoding` narrowed to gzip/deflate/
    /// identity; the rewritten page is sent chunked, re-compressed in its original coding, and
    /// without `ETag`/`Last-Modified` (it names the deployment that served it, so it must not be
    /// revalidated into use after a deploy). Default off.
    pub inject_client: bool,
    /// The affinity query parameter name, declared to injected clients as `data-query` when set.
    /// `None` (the default) leaves the client on its default, `flotilla_deployment`. The proxy
    /// itself never reads the parameter: routing it is the [`crate::Route`]'s business.
    pub client_query_param: Option<String>,
    /// Answer `GET`/`HEAD /_flotilla/client.js` with the bundled browser client instead of
    /// routing it. Default on.
    pub serve_client: bool,
    /// The scheme clients use to reach this proxy, sent as `X-Forwarded-Proto`
    /// (`Scheme::HTTPS` when TLS is terminated in front of the proxy). Default `http`.
    pub forwarded_proto: Scheme,
    /// Whether the peer is a trusted proxy (a load balancer in front, as for the agent behind an
    /// ALB) whose forwarding headers are kept. Off (the default), this proxy is the edge: it
    /// overwrites `X-Forwarded-For`, `-Proto`, `-Host` and `X-Real-IP` with what it saw itself.
    /// On, it appends the peer to `X-Forwarded-For`, keeps `X-Forwarded-Proto` and `-Host` when
    /// present, and sets `X-Real-IP` to the last `X-Forwarded-For` entry the trusted proxy sent.
    /// A client's `Forwarded` header is removed either way. See `docs/router.md`.
    pub trust_forwarded: bool,
    /// Terminate TLS on this server's connections with this rustls configuration (build it with
    /// [`crate::tls::server_config`], which offers HTTP/2 and HTTP/1.1 over ALPN). Each
    /// connection then does its handshake in its own task, is served as HTTP/2 or HTTP/1.1 as
    /// negotiated, and its requests carry `X-Forwarded-Proto: https` (whatever
    /// [`forwarded_proto`](Self::forwarded_proto) says). `None` (the default): plain HTTP/1.1.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// How long a TLS client has, from its first byte, to complete its handshake before the
    /// connection is closed. Default 10 s.
    pub tls_handshake_timeout: Duration,
    /// Where each response is recorded for an access log. `None` (the default) records nothing.
    pub access_log: Option<Arc<dyn AccessLog>>,
    /// A switch that, once asked, tells live WebSockets and event streams to reconnect
    /// elsewhere (see [`SessionMove`]). `None` (the default): sessions run until they end or
    /// the shutdown deadline cuts them.
    pub session_move: Option<SessionMove>,
}

impl std::fmt::Debug for ProxyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyConfig")
            .field("connection_limit", &self.connection_limit)
            .field("first_byte_timeout", &self.first_byte_timeout)
            .field("header_read_timeout", &self.header_read_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("response_header_timeout", &self.response_header_timeout)
            .field("upstream_idle_timeout", &self.upstream_idle_timeout)
            .field(
                "upstream_max_idle_per_host",
                &self.upstream_max_idle_per_host,
            )
            .field("upgrade_idle_timeout", &self.upgrade_idle_timeout)
            .field("tcp_keepalive", &self.tcp_keepalive)
            .field("shutdown_deadline", &self.shutdown_deadline)
            .field("deployment_header", &self.deployment_header)
            .field("inject_client", &self.inject_client)
            .field("client_query_param", &self.client_query_param)
            .field("serve_client", &self.serve_client)
            .field("forwarded_proto", &self.forwarded_proto)
            .field("trust_forwarded", &self.trust_forwarded)
            .field("access_log", &self.access_log.is_some())
            .field("tls", &self.tls.is_some())
            .field("tls_handshake_timeout", &self.tls_handshake_timeout)
            .field("session_move", &self.session_move.is_some())
            .finish()
    }
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            connection_limit: ConnectionLimit::default(),
            first_byte_timeout: Duration::from_secs(20),
            header_read_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(5),
            response_header_timeout: None,
            upstream_idle_timeout: Duration::from_secs(90),
            upstream_max_idle_per_host: 256,
            upgrade_idle_timeout: None,
            tcp_keepalive: Some(Duration::from_secs(60)),
            shutdown_deadline: Duration::from_secs(30),
            deployment_header: HeaderName::from_static(DEFAULT_DEPLOYMENT_HEADER),
            inject_client: false,
            client_query_param: None,
            serve_client: true,
            forwarded_proto: Scheme::HTTP,
            trust_forwarded: false,
            access_log: None,
            tls: None,
            tls_handshake_timeout: Duration::from_secs(10),
            session_move: None,
        }
    }
}

impl ProxyConfig {
    /// Parses a deployment header name given as text (from a config file), for
    /// [`deployment_header`](Self::deployment_header).
    pub fn header_name(name: &str) -> Result<HeaderName, ProxyError> {
        HeaderName::from_bytes(name.as_bytes()).map_err(|_| ProxyError::InvalidHeaderName {
            name: name.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_name_table() {
        fn check(name: &str, ok: bool) {
            assert_eq!(ProxyConfig::header_name(name).is_ok(), ok, "{name:?}");
        }
        check("X-Flotilla-Deployment", true);
        check("x-app-version", true);
        check("bad header", false);
        check("", false);
    }
}
