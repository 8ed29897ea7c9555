//! The `flotilla` command line: parses, wires the configured provider into the engine, and
//! reports. It decides nothing itself.
//!
//! Modules:
//! - `cli`: the clap definition of every command and flag, with its help text.
//! - `config`: `flotilla.toml` (raw layers with places, then validated), environment and flags.
//! - `providers`: the only place that knows which provider crates exist; builds the `Engine`.
//! - `baseline`: `baseline up|show|template|down` and `aws deployer-policy` over
//!   `flotilla_aws::stack`, with flotilla.toml turned into the baseline's options.
//! - `commands`: what each command does, from config to rendered result.
//! - `output`: tables, progress lines from engine events, JSON, and error reports.
//! - `verify`: the HTTP checks behind `flotilla verify`.
//! - `exit`: the documented exit codes and the mapping from errors to them.
#![forbid(unsafe_code)]

mod app_env;
#[cfg(feature = "aws")]
mod baseline;
mod cli;
mod commands;
mod config;
mod exit;
mod output;
mod providers;
#[cfg(test)]
mod sim_tests;
mod verify;

use std::process::ExitCode;

use clap::FromArgMatches;

use crate::exit::Exit;
use crate::output::Output;

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return Exit::Failure.into();
        }
    };

    // Inside AWS Lambda the binary is the reaper's custom runtime, not a command line.
    if std::env::var_os(providers::LAMBDA_RUNTIME_VAR).is_some() {
        return match runtime.block_on(providers::run_lambda()) {
            Ok(()) => Exit::Ok.into(),
            Err(err) => report(&err, false),
        };
    }

    let matches = cli::command().get_matches();
    let parsed = match cli::Cli::from_arg_matches(&matches) {
        Ok(parsed) => parsed,
        Err(err) => err.exit(),
    };
    let out = Output {
        json: parsed.json(),
        verbose: parsed.global.verbose,
    };
    match runtime.block_on(commands::run(parsed, out)) {
        Ok(code) => ExitCode::from(code),
        Err(err) => report(&err, out.json),
    }
}

fn report(err: &anyhow::Error, json: bool) -> ExitCode {
    let (exit, hint) = exit::classify_for(err, commands::provider_in_use());
    output::print_error(err, exit, hint.as_deref(), json);
    exit.into()
}
