//! Process groups, written once for the two places that run an app: the host supervisor
//! (`flotilla-host`) and the agent in a container (`flotilla-agent`). A child is started as the
//! leader of its own process group, so a shell wrapper's children get its signals too; it is
//! stopped by signalling the group, waiting with a deadline, then SIGKILL.
//!
//! Modules:
//! - [`group`]: spawning a command in its own process group, signalling a group, and the stop
//!   sequence (a signal, a grace period, SIGKILL).
//! - [`procfs`]: a process's state, group and start time from `/proc/<pid>/stat`, and whether a
//!   group still has live members.
//!
//! Linux only (`/proc`). No flotilla crate below it: the agent and the host both depend on it,
//! neither on the other.
#![forbid(unsafe_code)]

pub mod group;
pub mod procfs;

pub use nix::sys::signal::Signal;
