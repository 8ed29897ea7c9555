//! The AWS provider against moto in server mode: each test starts its own moto on a free loopback
//! port (installed into `.venv/moto` by `scripts/moto.sh` if missing), builds a baseline by hand,
//! and drives the real ports and the real engine over the real SDK.

mod agent_bin;
mod app_env;
mod baseline;
mod canary;
mod drain_board;
mod faults;
mod ports;
mod support;
mod task_in_docker;
mod workflows;
