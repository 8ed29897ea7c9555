//! Integration tests of the agent: a real Python app behind a real agent on loopback ports.
//!
//! - `serving`: health, the deployment stamp, draining refusals, session counting, readiness.
//! - `stop`: the SIGTERM sequence in process (sessions waited for, cut and reported; exit codes).
//! - `binary`: the standalone binary with real signals and its EMF lines on stdout.
//! - `polling`: the poll loop's back-off on throttling and its write-on-change, with a fake source.
//! - `protection`: task scale-in protection through a stand-in ECS agent endpoint.
//! - `ssm`: the SSM drain source and the drain board (S3) against moto.

mod binary;
mod polling;
mod protection;
mod serving;
mod ssm;
mod stop;
mod util;
