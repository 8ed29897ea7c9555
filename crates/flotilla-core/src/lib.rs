//! The pure core of flotilla: every decision about versions, routing, draining and reaping,
//! computed from plain data and a clock reading passed in.
//!
//! Architecture invariant: this crate does no I/O. It never reads the clock, the filesystem, the
//! network or the environment, and it depends on no async runtime. Providers carry its decisions
//! out; tests drive it with plain values.
//!
//! Modules:
//! - [`time`]: a UTC timestamp in milliseconds and its calendar formatting.
//! - [`ids`]: the validated deployment name (an environment slug) and per-deploy ids.
//! - [`names`]: every external name derived from a name and an id (services, target groups, SSM paths).
//! - [`lifecycle`]: the version states and the transitions allowed between them.
//! - [`routing`]: the routing table, the pure `route` decision and the listener-rule budget.
//! - [`drain`]: per-instance drain readiness.
//! - [`stale`]: how a request pinned to a retired version is answered (status, header, WebSocket
//!   close code, socket reroute).
//! - [`reaper`]: the reaper as a pure plan over a fleet of versions.
//! - [`canary`]: canary deploys: the plan, the judgement of a window, the next step.
#![forbid(unsafe_code)]

pub mod autoscale;
pub mod canary;
pub mod drain;
pub mod ids;
pub mod lifecycle;
pub mod lock;
pub mod names;
pub mod reaper;
pub mod routing;
pub mod stale;
pub mod time;

pub use ids::{DeploymentId, DeploymentName, InstanceId};
pub use lifecycle::{Version, VersionState};
pub use time::Timestamp;
