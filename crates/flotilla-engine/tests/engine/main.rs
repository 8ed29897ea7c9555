//! The engine's integration tests: every workflow driven over the simulated provider, and the
//! fault-at-every-call convergence test, and canary deploys (`canary`).

mod canary;
mod faults;
mod support;
mod workflows;
