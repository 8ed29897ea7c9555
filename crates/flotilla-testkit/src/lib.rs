//! Helpers shared by the end-to-end tests of several crates (the host tests in `flotilla-cli`,
//! the browser scenarios in `flotilla-browser`, the container tests of the AWS provider): finding
//! the processes a test started, and a private container runtime to run images and task
//! definitions in.
//!
//! Modules:
//! - [`procs`]: live processes by working directory and by environment, read from `/proc`.
//! - [`docker`]: a private `dockerd` and image registry on their own socket and port, Debian and
//!   `FROM scratch` base images built without Docker Hub, and building and pushing test images.
//! - [`ecs_exec`]: runs an ECS task definition (as `describe-task-definition` returns it) in that
//!   Docker the way Fargate would: dependency order, volumes, entryPoint and command, environment
//!   and secrets, user, read-only root, stop timeout.
//! - [`lambda`]: a Lambda Runtime API emulator (cargo-lambda's) to run a custom runtime's
//!   `bootstrap` against, and invoking it.
//! - [`elf`]: an executable's CPU architecture and whether it is static, from its ELF headers.
//! - [`host`]: an app directory with its own host daemon, driven by the real `flotilla` binary,
//!   and everything it started stopped by PID when the test ends.
//! - [`http`]: one plain HTTP/1.1 exchange with a server a test started.
//! - [`moto`]: a moto server (the AWS emulator) of a test's own, and raw calls to it.
//! - [`pebble`]: Let's Encrypt's ACME test server (and its DNS server) on loopback ports.
//! - [`net`]: free loopback ports; [`wait`]: bounded polling until something happens.
//! - [`slow`]: the switch (`FLOTILLA_SKIP_SLOW_TESTS`) that skips the slow tests locally.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

pub mod docker;
pub mod ecs_exec;
pub mod elf;
pub mod front_door;
pub mod host;
pub mod http;
pub mod lambda;
pub mod moto;
pub mod net;
pub mod pebble;
pub mod procs;
pub mod slow;
pub mod wait;

/// The repository's root (the testkit crate is `crates/flotilla-testkit`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}
