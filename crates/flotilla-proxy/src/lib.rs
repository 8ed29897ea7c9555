//! flotilla's reverse-proxy library, shared by the host router and the in-container agent.
//!
//! One call, [`serve`], runs an HTTP/1.1 reverse proxy (HTTP/2 and HTTP/1.1 when it terminates
//! TLS, [`ProxyConfig::tls`]) on a listener the caller bound, routing
//! every request through the caller's [`Route`], until the caller's shutdown future completes; it
//! then drains with a deadline and returns a [`ShutdownReport`]. Along the way it streams bodies
//! both ways, passes WebSocket upgrades through, sets `X-Forwarded-*`, strips hop-by-hop headers,
//! stamps the deployment header, counts requests and long-lived sessions per instance in
//! [`InstanceStats`], serves the browser client at [`CLIENT_PATH`], and optionally injects the
//! client's `<script>` tag into HTML pages.
//!
//! ```no_run
//! use std::sync::Arc;
//! use flotilla_proxy::{Decision, InstanceStats, ProxyConfig, RequestHead, Target, serve};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let stats = Arc::new(InstanceStats::new());
//! let target = Arc::new(
//!     Target::new("127.0.0.1:3000".parse()?, stats.clone()).with_deployment("web-1")?,
//! );
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! let route = move |_head: &RequestHead<'_>| Decision::Forward(target.clone());
//! let report = serve(listener, ProxyConfig::default(), route, async {
//!     let _ = tokio::signal::ctrl_c().await;
//! })
//! .await;
//! if !report.is_clean() {
//!     eprintln!("shutdown cut {} connections", report.cut());
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Modules:
//! - `route`: the routing seam: [`Route`], [`RequestHead`], [`Decision`] and [`Target`].
//! - `stats`: lock-free per-instance counters ([`InstanceStats`]) and a keyed registry of them
//!   ([`Sessions`]).
//! - `server`: [`serve`]: the accept loop, the connection limit, connection tracking and graceful
//!   shutdown ([`ShutdownReport`]).
//! - `limit`: [`ConnectionLimit`], one connection cap shared by several servers, and the rate
//!   limiter of overload warnings.
//! - `proxy`: the per-request path: header rewriting, forwarding, stamping, session accounting,
//!   upgrade tunnels.
//! - `upstream`: the upstream connection pool (HTTP/1.1 on `hyper::client::conn`, idle
//!   connections per address, one pool per server so its lock is never contended).
//! - `ws`: accepting a WebSocket handshake only to close it with a code scripts can see.
//! - `headers`: pure header rules: hop-by-hop (RFC 9110 §7.6.1), `X-Forwarded-*`, content types
//!   and codings.
//! - `inject`: streaming insertion of the client `<script>` tag into HTML, through gzip/deflate.
//! - `csp`: what a page's Content-Security-Policy means for that tag (the nonce to reuse, or
//!   blocked), pure.
//! - `body`: [`Body`], the one body type the proxy sends and receives.
//! - `client_js`: serving the bundled browser client ([`CLIENT_PATH`], [`CLIENT_JS`]).
//! - `tls`: [`tls::server_config`], the rustls configuration of a TLS-terminating server (HTTP/2
//!   and HTTP/1.1 over ALPN, and the ACME TLS-ALPN-01 protocol).
//! - `config`: [`ProxyConfig`].
//! - `error`: [`ProxyError`] and the JSON error responses ([`json_response`]).

#![forbid(unsafe_code)]

mod access;
mod body;
mod client_js;
mod config;
mod csp;
mod error;
mod headers;
mod inject;
mod limit;
mod moving;
mod proxy;
mod route;
mod server;
mod stats;
pub mod tls;
mod upstream;
mod ws;

pub use access::{AccessEntry, AccessLog};
pub use body::{Body, BodyError};
pub use client_js::{CLIENT_JS, CLIENT_PATH};
pub use config::{DEFAULT_DEPLOYMENT_HEADER, ProxyConfig};
pub use error::{ProxyError, json_response};
pub use limit::{ConnectionLimit, DEFAULT_OVERFLOW, WarnLimiter};
pub use moving::{GOING_AWAY, SessionMove};
pub use route::{Decision, DecisionFuture, RequestHead, Route, SocketClose, Target};
pub use server::{
    DrainPlan, HandedConnection, HandedOver, Incoming, ShutdownReport, serve, serve_handing_over,
};
pub use stats::{InstanceStats, LATENCY_BOUNDS_US, LATENCY_BUCKETS, Sessions, StatsSnapshot};

/// Re-exported so callers build [`Decision::Respond`] responses and header names with the same
/// `http` crate version the proxy uses.
pub use http;
/// Re-exported so callers build [`ProxyConfig::tls`] and certificate resolvers with the same
/// rustls version the proxy uses.
pub use rustls;
