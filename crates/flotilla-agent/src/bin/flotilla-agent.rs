//! `flotilla-agent [--listen ADDR] [--app-port PORT] -- COMMAND...` (or `install PATH`): the agent
//! as a standalone process, configured from `FLOTILLA_*` variables, with the file/HTTP/static
//! drain sources only (flotilla-aws's `flotilla-aws-agent` and `flotilla agent` add SSM). The
//! integration tests drive it with real signals. See `flotilla_agent::launch`.
//!
//! Exit codes: the app's (or `128 + signal`); 2 for bad arguments or settings; 1 when the agent
//! cannot start.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = flotilla_agent::launch::main("flotilla-agent", &args, || async { None }).await;
    ExitCode::from(code)
}
