//! The app as a child process: started in its own process group with `PORT` set, signalled as a
//! group (so a shell wrapper's children get the signal too; `flotilla-process` does both), and its
//! exit status mapped to the agent's exit code.

use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use flotilla_process::Signal;
use flotilla_process::group::{self, Leftovers};
use tokio::process::{Child, Command};

/// The app could not be started.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot start the app `{program}`: {source}; check that the command exists in the image and \
     is executable"
)]
pub struct SpawnError {
    /// The program that failed to start.
    pub program: String,
    /// The OS error.
    #[source]
    pub source: std::io::Error,
}

/// Which signal started the stop sequence; the app gets the same one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopSignal {
    /// SIGTERM (what ECS and the host supervisor send).
    Terminate,
    /// SIGINT (Ctrl-C in a terminal).
    Interrupt,
}

impl StopSignal {
    /// The signal's name, e.g. `SIGTERM`.
    pub fn name(self) -> &'static str {
        match self {
            StopSignal::Terminate => "SIGTERM",
            StopSignal::Interrupt => "SIGINT",
        }
    }

    pub(crate) fn signal(self) -> Signal {
        match self {
            StopSignal::Terminate => Signal::SIGTERM,
            StopSignal::Interrupt => Signal::SIGINT,
        }
    }
}

/// A running app.
pub(crate) struct App {
    child: Child,
    pid: Option<u32>,
}

impl App {
    /// Starts `command` with `PORT=<port>` in its environment, in a new process group, with the
    /// agent's stdout and stderr (so its logs reach the container log as they are).
    pub(crate) fn spawn(command: &[String], port: u16) -> Result<Self, SpawnError> {
        let (program, args) = command.split_first().ok_or_else(|| SpawnError {
            program: String::new(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty command"),
        })?;
        let child = group::spawn_in_own_group(
            Command::new(program)
                .args(args)
                .env("PORT", port.to_string())
                .stdin(Stdio::null())
                // The agent decides when the app stops; it must never outlive an agent that failed.
                .kill_on_drop(true),
        )
        .map_err(|source| SpawnError {
            program: program.clone(),
            source,
        })?;
        let pid = child.id();
        Ok(App { child, pid })
    }

    /// The app's process id (also its process group id).
    pub(crate) fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// Waits for the app to exit.
    pub(crate) async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        self.child.wait().await
    }

    /// Sends `signal` to the group and waits up to `grace` for the app to exit; then SIGKILLs the
    /// group and waits for it. Returns the status and whether it had to be killed.
    pub(crate) async fn stop(
        &mut self,
        signal: Signal,
        grace: Duration,
    ) -> std::io::Result<(ExitStatus, bool)> {
        // Anything the app left behind in its group goes with it, at once.
        let stopped = group::stop_group(
            self.pid.unwrap_or(0),
            Some(&mut self.child),
            signal,
            grace,
            Leftovers::Kill,
        )
        .await;
        let status = stopped
            .leader
            .expect("the leader was given, so it was waited for")?;
        Ok((status, stopped.killed))
    }
}

/// The agent's exit code for the app's exit status: its code, or `128 + signal` when a signal
/// ended it (the shell convention, so `143` means SIGTERM).
pub fn exit_code(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt as _;
    if let Some(code) = status.code() {
        return u8::try_from(code & 0xff).unwrap_or(1);
    }
    match status.signal() {
        Some(signal) => u8::try_from(128 + (signal & 0x7f)).unwrap_or(255),
        None => 1,
    }
}

/// The app's exit status in words, for the log.
pub fn describe_status(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    if let Some(code) = status.code() {
        return format!("exit code {code}");
    }
    match status.signal().and_then(|s| Signal::try_from(s).ok()) {
        Some(signal) => format!("signal {signal}"),
        None => "an unknown status".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt as _;

    #[test]
    fn exit_code_table() {
        // Raw wait statuses: exit code in the second byte; a terminating signal in the low 7 bits.
        let check = |raw: i32, expected: u8, words: &str| {
            let status = ExitStatus::from_raw(raw);
            assert_eq!(exit_code(status), expected, "raw {raw:#x}");
            assert_eq!(describe_status(status), words, "raw {raw:#x}");
        };
        check(0, 0, "exit code 0");
        check(7 << 8, 7, "exit code 7");
        check(255 << 8, 255, "exit code 255");
        check(15, 143, "signal SIGTERM");
        check(9, 137, "signal SIGKILL");
        check(2, 130, "signal SIGINT");
    }

    #[tokio::test]
    async fn group_stop_escalates_to_sigkill() {
        let command = vec![
            "sh".to_owned(),
            "-c".to_owned(),
            "trap '' TERM; echo port=$PORT >/dev/null; sleep 30 & wait".to_owned(),
        ];
        let mut app = App::spawn(&command, 4321).expect("sh starts");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (status, killed) = app
            .stop(Signal::SIGTERM, Duration::from_millis(300))
            .await
            .expect("wait");
        assert!(killed, "the app ignored SIGTERM, so it had to be killed");
        assert_eq!(exit_code(status), 137);
    }

    #[test]
    fn spawn_failure_names_the_program() {
        let err = App::spawn(&["/nonexistent/app".to_owned()], 1)
            .err()
            .expect("cannot start");
        assert!(err.to_string().contains("/nonexistent/app"), "{err}");
    }
}
