//! The one error type of this crate: every variant names what failed and, where it helps, what to
//! do about it.

use std::path::PathBuf;
use std::time::Duration;

/// Why driving the browser failed.
#[derive(Debug, thiserror::Error)]
pub enum BrowserError {
    /// Chromium or chromedriver is not installed where the configuration says.
    #[error("{what} not found at {path}; run scripts/install-browser.sh (as root) to install it")]
    MissingBinary {
        /// Which program is missing: "chromium" or "chromedriver".
        what: &'static str,
        /// Where it was looked for.
        path: PathBuf,
    },

    /// A temporary directory, log file or artefact could not be created, read or written.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done, such as "create profile directory".
        action: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// chromedriver could not be started, or exited before it was ready.
    #[error("chromedriver did not start: {reason}; its log ends with:\n{log_tail}")]
    DriverStart {
        /// What went wrong.
        reason: String,
        /// The last lines of chromedriver's log, for diagnosis.
        log_tail: String,
    },

    /// chromedriver started but could not open a browser session (usually Chromium failed to
    /// launch: a missing library, a flag it rejects, or a version mismatch with chromedriver).
    #[error(
        "chromedriver could not start Chromium: {source}; chromedriver's log ends with:\n{log_tail}"
    )]
    Session {
        /// The WebDriver error.
        #[source]
        source: fantoccini::error::NewSessionError,
        /// The last lines of chromedriver's log, for diagnosis.
        log_tail: String,
    },

    /// A WebDriver command failed.
    #[error("browser command `{command}` failed: {source}")]
    Command {
        /// The command, such as "execute script" or "switch to tab".
        command: &'static str,
        /// The WebDriver error.
        #[source]
        source: fantoccini::error::CmdError,
    },

    /// A script ran but threw, or its promise was rejected.
    #[error("script failed in the page: {message}")]
    Script {
        /// The JavaScript error as the page reported it (stack when available).
        message: String,
    },

    /// A condition did not become true in time.
    #[error("timed out after {waited:?} waiting for {what}; last observed: {last}")]
    Timeout {
        /// The condition waited for.
        what: String,
        /// How long it was waited for.
        waited: Duration,
        /// The last value or error observed, to show how far it got.
        last: String,
    },

    /// A screenshot was not a PNG this crate can read, or could not be encoded.
    #[error("screenshot image: {0}")]
    Image(String),
}

impl BrowserError {
    /// Wraps a WebDriver command error with the command's name.
    pub(crate) fn command(
        command: &'static str,
    ) -> impl FnOnce(fantoccini::error::CmdError) -> Self {
        move |source| BrowserError::Command { command, source }
    }
}
