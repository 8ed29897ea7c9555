//! flotilla-host: the host provider. One daemon per state directory runs each version as
//! processes, routes every request itself, keeps state in SQLite and runs the reaper on a timer;
//! the CLI reaches it through [`connect`], which returns the workflows the daemon runs for it,
//! each one request over a Unix socket.
//!
//! Modules:
//! - [`settings`]: the plain struct the CLI fills from `flotilla.toml`.
//! - [`error`]: the crate's error type, [`HostError`].
//! - [`state`]: the SQLite state (records, readiness, lock, routing, tombstones, specs, processes).
//! - [`release`]: release snapshots of the app directory and the build command.
//! - [`health`]: HTTP health checks.
//! - [`supervisor`]: process groups, restarts with backoff, logs, SIGTERM then SIGKILL, and
//!   adopting the processes a previous daemon left running.
//! - [`procfs`]: a process's state, group and start time from `/proc/<pid>/stat` (re-exported
//!   from `flotilla-process`, which also spawns and stops the instances' process groups).
//! - [`router`]: per-request routing with the core's `route()` and per-tab instance stickiness.
//! - [`rpc`]: the versioned socket protocol and its client, the host side of the engine's
//!   `Workflows` seam ([`connect`]).
//! - [`daemon`]: the daemon ([`serve`]): the ports for real (`LocalPorts`), the workflows
//!   commands send, drain observation, the reaper loop.
//! - [`handover`]: handing the listening sockets and the state directory to a new daemon
//!   (`flotilla host upgrade`, SIGUSR2) without cutting a session; systemd notification.
//! - [`service`]: the systemd unit of `flotilla host install`, and `systemctl`.
//! - [`front_door`]: several apps behind one pair of public ports, chosen by host name.
//! - [`fdlimit`]: the raised descriptor limit and the router's connection cap derived from it.
//! - [`access_log`]: the router's JSON-lines access log, rotated by size.
//! - [`admin`]: the read-only status page.
//! - [`logs`]: reading and following instance logs for `flotilla logs`.
//! - [`tls`]: HTTPS on the router: the live-swappable certificate store, PEM files, and the plain
//!   listener's redirect and ACME HTTP-01 answers.
//! - [`acme`]: certificates over ACME (HTTP-01, TLS-ALPN-01), kept in the state directory and
//!   renewed in the background.
#![forbid(unsafe_code)]

pub mod access_log;
pub mod acme;
pub mod admin;
pub mod autoscale;
pub mod daemon;
pub mod error;
pub mod fdlimit;
pub mod front_door;
pub mod handover;
pub mod health;
pub mod logs;
pub mod metrics;
pub mod port_holder;
pub mod private;
pub use flotilla_process::procfs;
pub mod release;
pub mod router;
pub mod rpc;
pub mod service;
pub mod settings;
pub mod state;
pub mod supervisor;
pub mod tls;

pub use daemon::{OnExit, serve, serve_until};
pub use error::HostError;
pub use rpc::{
    Connection, StartedDaemon, UpgradeReport, connect, connect_reporting, stop_daemon,
    upgrade_daemon,
};
pub use settings::HostSettings;
