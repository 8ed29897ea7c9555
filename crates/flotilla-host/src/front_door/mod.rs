//! Several apps behind one pair of public ports: the front door.
//!
//! One front door process (`flotilla host front-door`) owns ports 80 and 443. Each app's daemon
//! (one per `flotilla.toml`, with its own deploys, versions, drains and reaper) whose
//! `[host] hosts` names host names registers them over the front door's Unix socket. For every
//! new connection the front door reads the host name without consuming a byte (the TLS server
//! name, or the HTTP `Host` header) and passes the connection's socket itself to that app's
//! daemon (`SCM_RIGHTS`), which then serves it as if it had accepted it: its own certificate, its
//! own router. Nothing is proxied twice.
//!
//! - [`sniff`]: the pure reading of a host name from a connection's first bytes.
//! - [`registry`]: the pure table of which app serves which host.
//! - [`wire`]: the registration socket's messages, and passing a connection with one.
//! - [`server`]: the front door process.
//! - [`member`]: an app daemon's registration and the connections it receives.

pub mod member;
pub mod registry;
pub mod server;
pub mod sniff;
pub mod wire;
