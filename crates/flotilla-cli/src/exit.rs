//! Exit codes: the one table of what each code means, and the mapping from errors to codes and to
//! the "what to do next" line printed after an error.

use std::process::ExitCode;

use flotilla_engine::EngineError;
use flotilla_engine::ports::{ErrorKind, PortError};

use crate::config::{ConfigError, ProviderKind};

/// A documented exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Success.
    Ok,
    /// A failure not covered by another code.
    Failure,
    /// Bad usage or configuration: fix the command line or `flotilla.toml`.
    Usage,
    /// The provider could not be reached or a provider call failed; running the same command
    /// again resumes where it stopped.
    Provider,
    /// Another operation holds the deploy lock.
    Locked,
    /// The new version never got healthy; it was removed and traffic stayed where it was.
    NotHealthy,
    /// Refused by the current state (unknown id, id in use, active version, rule budget full...).
    Refused,
    /// `verify` found a request answered by the wrong version.
    VerifyMismatch,
    /// Interrupted by Ctrl-C; running the same command again resumes.
    Interrupted,
}

/// Every exit code: (code, name, meaning).
pub const TABLE: &[(Exit, &str, &str)] = &[
    (Exit::Ok, "ok", "success"),
    (
        Exit::Failure,
        "failure",
        "a failure not covered below (the message says what)",
    ),
    (
        Exit::Usage,
        "usage",
        "bad command line or configuration, or another command to run first; fix it \
         (`flotilla config check` lists every problem; a host daemon of another protocol: \
         `flotilla host upgrade`)",
    ),
    (
        Exit::Provider,
        "provider",
        "the provider is unreachable or one of its calls failed; run the same command again to \
         resume (a deploy: `flotilla deploy --id ID`, as its hint says)",
    ),
    (
        Exit::Locked,
        "locked",
        "another deploy or reaper pass holds the lock; wait, or use --break-lock if its holder is gone",
    ),
    (
        Exit::NotHealthy,
        "not-healthy",
        "the new version never got healthy; it was removed and traffic stayed where it was",
    ),
    (
        Exit::Refused,
        "refused",
        "the current state does not allow it (unknown or reused id, active version, rule budget full)",
    ),
    (
        Exit::VerifyMismatch,
        "verify-mismatch",
        "`flotilla verify` saw a request answered by the wrong version",
    ),
    (
        Exit::Interrupted,
        "interrupted",
        "interrupted (Ctrl-C); run the same command again to resume",
    ),
];

impl Exit {
    /// The numeric code.
    pub fn code(self) -> u8 {
        match self {
            Exit::Ok => 0,
            Exit::Failure => 1,
            Exit::Usage => 2,
            Exit::Provider => 3,
            Exit::Locked => 4,
            Exit::NotHealthy => 5,
            Exit::Refused => 6,
            Exit::VerifyMismatch => 7,
            Exit::Interrupted => 130,
        }
    }

    /// The short name used in JSON output.
    pub fn name(self) -> &'static str {
        TABLE
            .iter()
            .find(|(exit, _, _)| *exit == self)
            .map_or("failure", |(_, name, _)| name)
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> ExitCode {
        ExitCode::from(exit.code())
    }
}

/// The exit-code section of `flotilla --help`.
pub fn help_section() -> String {
    let mut out = String::from("Exit codes:\n");
    for (exit, _, meaning) in TABLE {
        out.push_str(&format!("  {:>3}  {meaning}\n", exit.code()));
    }
    out
}

/// An error raised by a command that has already said everything about it (verify's table, for
/// example) and only needs the process to exit with `exit`.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Reported {
    /// The code to exit with.
    pub exit: Exit,
    /// A one-line summary.
    pub message: String,
    /// What to do next.
    pub hint: Option<String>,
}

/// A usage error found by a command (rather than by clap), e.g. a missing `--yes`.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct UsageError {
    /// What is wrong.
    pub message: String,
    /// What to do instead.
    pub hint: String,
}

/// Ctrl-C stopped a command.
#[derive(Debug, thiserror::Error)]
#[error("interrupted while {doing}")]
pub struct Interrupted {
    /// What was going on.
    pub doing: String,
    /// The command that resumes it.
    pub resume: String,
}

/// The context of a failed deploy: "run the same command again" would start a new version
/// (with a new id) rather than resume this one, so its hint names the command that resumes.
#[derive(Debug)]
pub struct DeployFailed {
    /// The version being deployed.
    pub id: flotilla_core::DeploymentId,
}

impl std::fmt::Display for DeployFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "deploy of {} failed", self.id)
    }
}

impl DeployFailed {
    /// `hint` with its "run the same command again" made true for a deploy.
    fn hint(&self, hint: String) -> String {
        const AGAIN: &str = "run the same command again";
        match hint.find(AGAIN) {
            Some(at) => format!(
                "{}run `flotilla deploy --id {id}` to resume this deploy where it stopped \
                 (a plain `flotilla deploy` starts a new version and first cleans up {id})",
                &hint[..at],
                id = self.id
            ),
            None => hint,
        }
    }
}

/// The exit code for `err` and the line telling the user what to do next; hints about the
/// provider (how to start it, which permissions it needs) name only the provider in use.
pub fn classify_for(err: &anyhow::Error, provider: Option<ProviderKind>) -> (Exit, Option<String>) {
    // A report added as context (what a command found after its failure) decides.
    if let Some(reported) = err.downcast_ref::<Reported>() {
        return (reported.exit, reported.hint.clone());
    }
    let (exit, hint) = err
        .chain()
        .find_map(|cause| classify_one(cause, provider))
        .unwrap_or((Exit::Failure, None));
    match err.downcast_ref::<DeployFailed>() {
        Some(deploy) => (exit, hint.map(|h| deploy.hint(h))),
        None => (exit, hint),
    }
}

fn classify_one(
    cause: &(dyn std::error::Error + 'static),
    provider: Option<ProviderKind>,
) -> Option<(Exit, Option<String>)> {
    if let Some(reported) = cause.downcast_ref::<Reported>() {
        return Some((reported.exit, reported.hint.clone()));
    }
    if let Some(usage) = cause.downcast_ref::<UsageError>() {
        return Some((Exit::Usage, Some(usage.hint.clone())));
    }
    if let Some(interrupted) = cause.downcast_ref::<Interrupted>() {
        return Some((
            Exit::Interrupted,
            Some(format!(
                "run `{}` to finish or undo what was started",
                interrupted.resume
            )),
        ));
    }
    if let Some(config) = cause.downcast_ref::<ConfigError>() {
        let hint = match config {
            ConfigError::NotFound { .. } => {
                "run `flotilla init` to write one here, or pass --config PATH".to_owned()
            }
            ConfigError::Unreadable { .. } => {
                "check the path and its permissions, or run `flotilla init` to write one".to_owned()
            }
            ConfigError::Invalid { .. } => {
                "fix the problems above, then run `flotilla config check`".to_owned()
            }
        };
        return Some((Exit::Usage, Some(hint)));
    }
    if let Some(app_env) = cause.downcast_ref::<crate::app_env::AppEnvError>() {
        let hint = match app_env {
            crate::app_env::AppEnvError::Unreadable { .. } => {
                "create the file or fix [host] secrets_file, then run `flotilla config check`"
            }
            crate::app_env::AppEnvError::BadLine { .. } => {
                "write that line as NAME=VALUE (quotes allowed), then deploy again"
            }
        };
        return Some((Exit::Usage, Some(hint.to_owned())));
    }
    if let Some(classified) = crate::providers::classify_error(cause) {
        return Some(classified);
    }
    if let Some(engine) = cause.downcast_ref::<EngineError>() {
        return Some(classify_engine(engine, provider));
    }
    if let Some(port) = cause.downcast_ref::<PortError>() {
        return Some((Exit::Provider, Some(port_hint(port, provider))));
    }
    None
}

fn classify_engine(err: &EngineError, provider: Option<ProviderKind>) -> (Exit, Option<String>) {
    match err {
        // The engine's messages already end with what to do; a hint would repeat them.
        EngineError::LockHeld { .. } => (Exit::Locked, None),
        EngineError::NotHealthy { id, .. } => (
            Exit::NotHealthy,
            Some(format!(
                "fix the app, then deploy again; the logs above are from version {id}'s failing instance"
            )),
        ),
        EngineError::IdInUse { .. }
        | EngineError::UnknownVersion { .. }
        | EngineError::Refused { .. }
        | EngineError::Budget(_) => (Exit::Refused, None),
        EngineError::Transition(_) | EngineError::Routing(_) => (
            Exit::Refused,
            Some("run `flotilla status` to see every version's state".to_owned()),
        ),
        EngineError::Port { source, .. } => (Exit::Provider, Some(port_hint(source, provider))),
        EngineError::ImageFailed { .. } => (
            Exit::Failure,
            Some(
                "fix the build (its output is above and in its log) or the image, then run \
                 `flotilla deploy` again"
                    .to_owned(),
            ),
        ),
    }
}

fn port_hint(err: &PortError, provider: Option<ProviderKind>) -> String {
    const AGAIN: &str = "then run the same command again: it resumes where it stopped";
    match err.kind {
        ErrorKind::AccessDenied => match provider {
            Some(ProviderKind::Aws) => format!(
                "the credentials lack a permission; `flotilla aws deployer-policy` prints the \
                 policy a deploying user needs, {AGAIN}"
            ),
            Some(ProviderKind::Host) => format!(
                "a file of the host provider is not accessible: run flotilla as the user who owns \
                 the state directory ([host] state_dir), {AGAIN}"
            ),
            None => format!("grant the permission named above, {AGAIN}"),
        },
        ErrorKind::Unavailable => match provider {
            Some(ProviderKind::Aws) => format!(
                "AWS cannot be reached: check the network, the region and [aws] endpoint_url if \
                 set, {AGAIN}"
            ),
            Some(ProviderKind::Host) => format!(
                "the host daemon cannot be reached: check that it runs (`flotilla host serve`), \
                 {AGAIN}"
            ),
            None => format!("the provider cannot be reached: check that it runs, {AGAIN}"),
        },
        ErrorKind::Invalid => "the provider rejected the request; check the configuration with \
             `flotilla config check`, then run the same command again"
            .to_owned(),
        ErrorKind::Transient | ErrorKind::Throttled | ErrorKind::NotFound | ErrorKind::Conflict => {
            "run the same command again: it resumes where it stopped".to_owned()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::time::Duration;

    use flotilla_core::{DeploymentId, DeploymentName, Timestamp, VersionState};
    use flotilla_engine::ports::LockInfo;

    use super::*;

    #[test]
    fn codes_are_distinct_and_all_documented() {
        let codes: BTreeSet<u8> = TABLE.iter().map(|(e, _, _)| e.code()).collect();
        assert_eq!(codes.len(), TABLE.len());
        let help = help_section();
        for (exit, _, meaning) in TABLE {
            assert!(help.contains(meaning), "{exit:?}");
        }
    }

    #[test]
    fn engine_errors_map_to_documented_codes() {
        let id = DeploymentId::new("20261125-190633-k3x9").expect("valid");
        let name = DeploymentName::new("shop").expect("valid");
        let check = |err: EngineError, want: Exit| {
            let err = anyhow::Error::new(err).context("deploy failed");
            assert_eq!(classify_for(&err, None).0, want, "{err:#}");
        };
        check(
            EngineError::LockHeld {
                name: name.clone(),
                lock: LockInfo {
                    owner: "alice@box (pid 1)".to_owned(),
                    acquired_at: Timestamp::from_secs(1),
                    expires_at: Timestamp::from_secs(2),
                },
            },
            Exit::Locked,
        );
        check(
            EngineError::NotHealthy {
                id: id.clone(),
                previous: None,
                healthy: 0,
                needed: 1,
                waited: Duration::from_secs(5),
                logs: vec![],
            },
            Exit::NotHealthy,
        );
        check(
            EngineError::ImageFailed {
                id: id.clone(),
                source: PortError::new(
                    ErrorKind::Invalid,
                    "prepare release",
                    id.as_str(),
                    "the build command `false` failed (exit status: 1)",
                ),
            },
            Exit::Failure,
        );
        check(
            EngineError::IdInUse {
                id: id.clone(),
                state: VersionState::Active,
            },
            Exit::Refused,
        );
        check(
            EngineError::UnknownVersion {
                name,
                id: id.clone(),
            },
            Exit::Refused,
        );
        check(
            EngineError::Refused {
                message: "no".to_owned(),
                hint: "yes".to_owned(),
            },
            Exit::Refused,
        );
        check(
            EngineError::Port {
                step: "create".to_owned(),
                source: PortError::new(ErrorKind::Unavailable, "connect", "daemon", "refused"),
            },
            Exit::Provider,
        );
        let other = anyhow::anyhow!("something else");
        assert_eq!(classify_for(&other, None), (Exit::Failure, None));
    }

    /// After a failed deploy or `verify` on AWS, the hint once said to run `flotilla host serve`.
    #[test]
    fn provider_hints_name_only_the_provider_in_use() {
        let hint = |kind: ErrorKind, provider: Option<ProviderKind>| {
            let err = EngineError::Port {
                step: "create".to_owned(),
                source: PortError::new(kind, "connect", "x", "refused"),
            };
            let err = anyhow::Error::new(err).context("deploy failed");
            classify_for(&err, provider).1.expect("a hint")
        };
        for kind in [ErrorKind::Unavailable, ErrorKind::AccessDenied] {
            let aws = hint(kind, Some(ProviderKind::Aws));
            assert!(!aws.contains("host"), "{kind:?}: {aws}");
            let host = hint(kind, Some(ProviderKind::Host));
            assert!(
                !host.contains("aws") && !host.contains("AWS"),
                "{kind:?}: {host}"
            );
            let unknown = hint(kind, None);
            assert!(
                !unknown.contains("host") && !unknown.contains("aws"),
                "{kind:?}: {unknown}"
            );
        }
        assert!(
            hint(ErrorKind::Unavailable, Some(ProviderKind::Host)).contains("flotilla host serve")
        );
        assert!(
            hint(ErrorKind::AccessDenied, Some(ProviderKind::Aws))
                .contains("flotilla aws deployer-policy")
        );
        assert!(hint(ErrorKind::Unavailable, Some(ProviderKind::Aws)).contains("endpoint_url"));
    }

    #[test]
    fn a_failed_deploy_names_the_command_that_resumes_it() {
        let id = DeploymentId::new("20261125-190633-k3x9").expect("valid");
        let port = |kind| EngineError::Port {
            step: format!("create compute for {id}"),
            source: PortError::new(kind, "create compute", id.as_str(), "daemon gone"),
        };
        for kind in [
            ErrorKind::Unavailable,
            ErrorKind::Transient,
            ErrorKind::Invalid,
        ] {
            let err = anyhow::Error::new(port(kind)).context(DeployFailed { id: id.clone() });
            let (exit, hint) = classify_for(&err, None);
            let hint = hint.expect("a hint");
            assert_eq!(exit, Exit::Provider);
            assert!(
                hint.contains(
                    "run `flotilla deploy --id 20261125-190633-k3x9` to resume this deploy"
                ) && hint.contains("a plain `flotilla deploy` starts a new version")
                    && !hint.contains("same command again"),
                "{kind:?}: {hint}"
            );
            assert_eq!(err.to_string(), "deploy of 20261125-190633-k3x9 failed");
        }
        // Other commands keep "run the same command again": for them it is true.
        let (_, hint) = classify_for(&anyhow::Error::new(port(ErrorKind::Transient)), None);
        assert_eq!(
            hint.as_deref(),
            Some("run the same command again: it resumes where it stopped")
        );
    }
}
