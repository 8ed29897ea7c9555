//! The access-log seam: one record per response head, for a caller that writes an access log.
//!
//! The proxy only hands over what it saw ([`AccessEntry`]); where and how lines are written
//! (format, buffering, rotation) is the caller's [`AccessLog`]. With no access log configured
//! the request path pays one branch.

use std::net::SocketAddr;
use std::time::Duration;

use http::{Method, Version};

/// What the proxy saw of one request and its response head.
#[derive(Debug, Clone, Copy)]
pub struct AccessEntry<'a> {
    /// The client's address (the TCP peer).
    pub peer: SocketAddr,
    /// The request method.
    pub method: &'a Method,
    /// The `Host` the request named, if any.
    pub host: Option<&'a str>,
    /// The request path, without the query (queries may carry tokens).
    pub path: &'a str,
    /// The HTTP version the client spoke.
    pub http_version: Version,
    /// The response status sent to the client (the router's own answers included).
    pub status: u16,
    /// The version that served it (the response's deployment stamp), if any.
    pub deployment: Option<&'a str>,
    /// Time from the request head to the response head.
    pub head_time: Duration,
    /// Whether the response switched protocols (a WebSocket began).
    pub upgrade: bool,
}

/// Where the proxy sends [`AccessEntry`]s. Called on the request path: it must not block.
pub trait AccessLog: Send + Sync + 'static {
    /// Records one response.
    fn record(&self, entry: &AccessEntry<'_>);
}
