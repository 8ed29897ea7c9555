//! flotilla-host: the host provider. One daemon per state directory runs each version as
//! processes, routes every request itself, keeps state in SQLite and runs the reaper on a timer;
//! the CLI reaches it through [`connect`], which returns the engine's ports over a Unix socket.
//!
//! Modules:
//! - [`settings`]: [`HostSettings`], the plain struct the CLI fills from `flotilla.toml`.
//! - [`error`]: [`HostError`].
//! - [`state`]: the SQLite state (records, readiness, lock, routing, tombstones, specs, processes).
//! - [`release`]: release snapshots of the app directory and the build command.
//! - [`health`]: HTTP health checks.
//! - [`supervisor`]: process groups, restarts with backoff, logs, SIGTERM then SIGKILL.
#![forbid(unsafe_code)]

pub mod error;
pub mod health;
pub mod release;
pub mod settings;
pub mod state;
pub mod supervisor;

pub use error::HostError;
pub use settings::HostSettings;
