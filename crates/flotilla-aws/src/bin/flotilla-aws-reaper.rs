//! `flotilla-aws-reaper`: the reaper Lambda's `bootstrap`, and nothing else.
//!
//! Started by Lambda's custom runtime (`AWS_LAMBDA_RUNTIME_API` set), it runs one reaper pass per
//! invocation (see `flotilla_aws::lambda`). Built static for musl by `scripts/build-static.sh`, it
//! runs on `provided.al2023` whatever glibc that has, and is a fraction of the `flotilla` CLI's
//! size; `flotilla baseline up` uploads it when it finds it.
//!
//! Exit codes: 0 when the runtime loop ends; 1 when it cannot start (the message says why);
//! 2 when run outside Lambda.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|a| a == "--version" || a == "-V") {
        println!("flotilla-aws-reaper {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    if !flotilla_aws::lambda::is_lambda() {
        eprintln!(
            "error: flotilla-aws-reaper is the reaper Lambda's bootstrap and runs only under \
             the Lambda runtime (AWS_LAMBDA_RUNTIME_API is not set); run a pass here with \
             `flotilla reap`"
        );
        return ExitCode::from(2);
    }
    match flotilla_aws::lambda::run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(1)
        }
    }
}
