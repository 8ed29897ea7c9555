//! Property tests for the core's invariants over random fleets and random histories.
//!
//! One test binary, one module per area:
//! - `autoscale`: random histories of load under host autoscaling: no session cut, the range
//!   kept, no growth while draining.
//! - `canary`: judgements over random windows, and step sequences over random verdict histories.
//! - `drain`: random histories of one instance's observations (sessions coming and going, blips
//!   between observations, rollbacks, restarts) against a reference for when it may stop.
//! - `reaper`: single reaper passes over random fleets, and whole histories of passes over a small
//!   world model until everything that should go is gone.
//! - `lifecycle`: random sequences of deploys, activations, rollbacks, retirements and deletions,
//!   with the routing table the states call for checked after every step.
//! - `names`: ids, deployment names and target group names against independent reference rules.
//!
//! Case counts are kept moderate so that `cargo test -p flotilla-core` stays quick in debug builds.

mod autoscale;
mod canary;
mod drain;
mod lifecycle;
mod names;
mod reaper;
