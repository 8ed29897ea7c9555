//! Helpers shared by the end-to-end tests of several crates (the host tests in `flotilla-cli`
//! and the browser scenarios in `flotilla-browser`): finding the processes a test started, so it
//! can check them and stop exactly those, by PID.
//!
//! Modules:
//! - [`procs`]: live processes by working directory and by environment, read from `/proc`.
#![forbid(unsafe_code)]

pub mod procs;
