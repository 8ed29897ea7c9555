//! A Lambda Runtime API emulator for running a custom runtime's `bootstrap` outside AWS:
//! cargo-lambda's `cargo lambda watch --only-lambda-apis` (installed into `.venv/cargo-lambda` by
//! `scripts/lambda-emulator.sh`) on a free loopback port, started and stopped the way the private
//! Docker daemon is (a watchdog stops it when the test process ends).
//!
//! The function under test is started by the test itself (in a container, say) with
//! `AWS_LAMBDA_RUNTIME_API` set to [`LambdaRuntime::runtime_api`]; it polls for invocations there,
//! and [`LambdaRuntime::invoke`] sends one and returns what the function answered, as the Lambda
//! service's `Invoke` API would.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::docker::{DockerError, Result, Supervised, private_dir, repo_root, tail, wait_for};

/// The function name the emulator serves when it starts no function itself.
const FUNCTION: &str = "_";

/// What an invocation returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invocation {
    /// The HTTP status of the `Invoke` call (200 when the function answered, even with an error).
    pub status: u16,
    /// The function's response, or its error document.
    pub body: String,
}

/// A running Runtime API emulator.
#[derive(Debug)]
pub struct LambdaRuntime {
    port: u16,
    dir: PathBuf,
    _process: Supervised,
}

/// Where `scripts/lambda-emulator.sh` installs cargo-lambda.
pub fn cargo_lambda() -> PathBuf {
    repo_root().join(".venv/cargo-lambda/bin/cargo-lambda")
}

impl LambdaRuntime {
    /// Starts the emulator; it is stopped when the value is dropped or the test process ends.
    pub fn start() -> Result<LambdaRuntime> {
        let binary = cargo_lambda();
        if !binary.is_file() {
            return Err(DockerError::Failed(format!(
                "{} is not installed; run scripts/lambda-emulator.sh",
                binary.display()
            )));
        }
        // A port picked by binding port 0 can be taken before the emulator binds it: retry.
        let mut last = None;
        for _ in 0..3 {
            match LambdaRuntime::start_once(&binary) {
                Ok(r) => return Ok(r),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("the loop ran at least once"))
    }

    fn start_once(binary: &Path) -> Result<LambdaRuntime> {
        let dir = private_dir("flotilla-lambda")?;
        // `cargo lambda watch` reads a package's metadata even when it starts no function: give
        // it an empty one.
        std::fs::create_dir_all(dir.join("pkg/src"))
            .map_err(DockerError::io("create the emulator's package"))?;
        std::fs::write(
            dir.join("pkg/Cargo.toml"),
            "[package]\nname = \"function-under-test\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\n[workspace]\n",
        )
        .map_err(DockerError::io("write the emulator's Cargo.toml"))?;
        std::fs::write(dir.join("pkg/src/main.rs"), "fn main() {}\n")
            .map_err(DockerError::io("write the emulator's main.rs"))?;
        let port = crate::net::free_loopback_addr()
            .map_err(DockerError::io("pick a free loopback port"))?
            .port();
        let mut cmd = Command::new(binary);
        cmd.current_dir(dir.join("pkg"))
            .args([
                "lambda",
                "watch",
                "--only-lambda-apis",
                "-A",
                "127.0.0.1",
                "-P",
            ])
            .arg(port.to_string());
        let mut process = Supervised::spawn(cmd, &dir, "emulator.log", Vec::new())?;
        let log = dir.join("emulator.log");
        let up = wait_for("the Lambda emulator", Duration::from_secs(30), || {
            if process.exited().is_some() {
                return Err(DockerError::Start {
                    what: format!("cargo lambda watch on 127.0.0.1:{port}"),
                    timeout: Duration::ZERO,
                    log: tail(&log, 20),
                });
            }
            Ok(std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("starting Runtime server")
                .then_some(()))
        });
        match up {
            Ok(()) => Ok(LambdaRuntime {
                port,
                dir,
                _process: process,
            }),
            Err(DockerError::Timeout(_)) => Err(DockerError::Start {
                what: format!("cargo lambda watch on 127.0.0.1:{port}"),
                timeout: Duration::from_secs(30),
                log: tail(&log, 20),
            }),
            Err(e) => Err(e),
        }
    }

    /// The value of `AWS_LAMBDA_RUNTIME_API` for the function (an address the function reaches
    /// over the host's loopback, so run its container on the host network).
    pub fn runtime_api(&self) -> String {
        format!("http://127.0.0.1:{}/.rt", self.port)
    }

    /// The environment the Lambda service gives a function besides its own variables.
    pub fn function_env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_LAMBDA_RUNTIME_API".to_owned(), self.runtime_api()),
            ("AWS_LAMBDA_FUNCTION_NAME".to_owned(), FUNCTION.to_owned()),
            ("AWS_LAMBDA_FUNCTION_VERSION".to_owned(), "1".to_owned()),
            (
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE".to_owned(),
                "256".to_owned(),
            ),
        ]
    }

    /// Invokes the function with `payload` (JSON) and waits up to `timeout` for its answer.
    pub fn invoke(&self, payload: &str, timeout: Duration) -> Result<Invocation> {
        let url = format!(
            "http://127.0.0.1:{}/2015-03-31/functions/{FUNCTION}/invocations",
            self.port
        );
        let mut cmd = Command::new("curl");
        cmd.args(["-s", "-X", "POST", "-w", "\n%{http_code}", "-m"])
            .arg(timeout.as_secs().max(1).to_string())
            .args(["-H", "Content-Type: application/json", "-d", payload])
            .arg(&url);
        let text = crate::docker::output(cmd)?;
        let (body, status) = text
            .rsplit_once('\n')
            .ok_or_else(|| DockerError::Failed(format!("no status from {url}: {text:?}")))?;
        let status = status
            .trim()
            .parse()
            .map_err(|_| DockerError::Failed(format!("bad status from {url}: {text:?}")))?;
        Ok(Invocation {
            status,
            body: body.to_owned(),
        })
    }

    /// The end of the emulator's own log, for a failing test's message.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.dir.join("emulator.log"), lines)
    }
}
