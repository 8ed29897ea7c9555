//! `flotilla-aws-agent`: the agent delivered into ECS tasks, with the SSM drain source.
//!
//! ```text
//! flotilla-aws-agent [--listen ADDR] [--app-port PORT] -- COMMAND...
//! flotilla-aws-agent install PATH      copy this executable to PATH with mode 0755
//! flotilla-aws-agent --version
//! ```
//!
//! The same agent as `flotilla agent` (see `flotilla_agent::launch`), without the rest of the
//! CLI: built static for musl (`scripts/build-static.sh`) it runs in any Linux image, with or
//! without a libc or a CA bundle (TLS trusts built-in roots, see `flotilla_aws::tls`). Its drain
//! source is the drain board (S3, when `FLOTILLA_DRAIN_BUCKET` names it) with SSM as its
//! fallback, or SSM alone, when it runs in an ECS task, unless `FLOTILLA_DRAIN_STATE_FILE` or `_URL` names
//! a local one, and always `active` otherwise (`FLOTILLA_DRAIN_SOURCE=ssm` forces SSM outside
//! ECS). Everything it decides goes to stderr, the container's log (`FLOTILLA_LOG` sets the
//! level).
//!
//! Exit codes: the app's (or `128 + signal`); 2 for bad arguments or settings; 1 when the agent
//! cannot start or `install` fails.

use std::process::ExitCode;

use flotilla_aws::agent_ssm::drain_source_from_env;

fn main() -> ExitCode {
    // The agent needs little: a small runtime keeps its footprint small beside the app.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::from(flotilla_agent::launch::EXIT_FAILURE);
        }
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = runtime.block_on(flotilla_agent::launch::main(
        "flotilla-aws-agent",
        &args,
        || async {
            let env = |k: &str| std::env::var(k).ok();
            let forced = env("FLOTILLA_DRAIN_SOURCE").is_some_and(|v| v == "ssm");
            if forced || flotilla_agent::on_ecs(env) {
                Some(drain_source_from_env().await)
            } else {
                None
            }
        },
    ));
    ExitCode::from(code)
}
