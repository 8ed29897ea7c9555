//! `flotilla-agent [--listen ADDR] [--app-port PORT] -- COMMAND...`: the agent as a standalone
//! process, configured from `FLOTILLA_*` variables, with the file/HTTP/static drain sources only
//! (`flotilla agent` in flotilla-cli adds SSM). The integration tests drive it with real signals.
//!
//! Exit codes: the app's (or `128 + signal`); 2 for bad arguments or settings; 1 when the agent
//! cannot start.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use flotilla_agent::{AgentFlags, AgentSettings, DrainSource, StaticSource};

const USAGE: &str = "usage: flotilla-agent [--listen ADDR] [--app-port PORT] -- COMMAND...";

fn parse_args(args: &[String]) -> Result<AgentFlags, String> {
    let mut flags = AgentFlags::default();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--" => {
                flags.command = rest.cloned().collect();
                return Ok(flags);
            }
            "--listen" => {
                let value = rest.next().ok_or("--listen needs an address")?;
                flags.listen = Some(
                    value
                        .parse::<SocketAddr>()
                        .map_err(|_| format!("--listen `{value}` is not IP:PORT"))?,
                );
            }
            "--app-port" => {
                let value = rest.next().ok_or("--app-port needs a port")?;
                flags.app_port = Some(
                    value
                        .parse::<u16>()
                        .map_err(|_| format!("--app-port `{value}` is not a port"))?,
                );
            }
            other => return Err(format!("unexpected argument `{other}`")),
        }
    }
    Err("no app command; put it after `--`".to_owned())
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FLOTILLA_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let env = |k: &str| std::env::var(k).ok();
    let flags = match parse_args(&args) {
        Ok(flags) => flags,
        Err(problem) => {
            eprintln!("error: {problem}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let settings = match AgentSettings::from_env(env, flags) {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };
    let source: Arc<dyn DrainSource> = match flotilla_agent::local_source_from_env(env) {
        Ok(Some(source)) => source,
        Ok(None) => Arc::new(StaticSource::active()),
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };
    match flotilla_agent::run_with_signals(settings, source).await {
        Ok(outcome) => ExitCode::from(outcome.exit_code),
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(1)
        }
    }
}
