//! The flotilla engine: the provider ports, the workflows written once against them, and an
//! in-memory simulated provider for tests.
//!
//! Modules:
//! - [`ports`]: the async traits a provider implements (compute, routing, state, images, clock).
//! - [`error`]: what a workflow can fail with, each variant saying what to do next.
//! - [`events`]: progress events a workflow reports while it runs (the CLI prints them).
//! - [`workflows`]: deploy, rollback, drain, reap, teardown and status, on an [`Engine`].
//! - [`sim`]: the simulated provider with a virtual clock and deterministic fault injection.
//!
//! Architecture invariant: the engine never prints, never reads the environment and never touches
//! a provider except through [`ports::Ports`]. Decisions come from `flotilla-core`.
#![forbid(unsafe_code)]

pub mod error;
pub mod events;
pub mod ports;
pub mod sim;
pub mod workflows;

pub use error::EngineError;
pub use events::{Event, Progress};
pub use ports::Ports;
pub use workflows::{Engine, Settings};
