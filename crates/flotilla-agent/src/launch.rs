//! What every agent executable shares: logging to stderr, the command line, and `install`.
//!
//! Three executables run the agent: `flotilla agent` (the CLI), `flotilla-agent` (this crate's
//! standalone binary, without SSM) and `flotilla-aws-agent` (flotilla-aws's static binary with
//! SSM, the one delivered into tasks). They differ only in where the drain state comes from, so
//! each is [`main`] with its own choice of source.
//!
//! The command line:
//!
//! ```text
//! AGENT [--listen ADDR] [--app-port PORT] -- COMMAND...   run COMMAND behind the agent
//! AGENT install PATH                                     copy this executable to PATH (0755)
//! AGENT --version                                        print the version
//! ```
//!
//! `install` exists for images without a shell or `cp`: an init container built `FROM scratch`
//! with only the agent in it runs `<agent> install /flotilla/agent` to put the agent in a volume
//! shared with the app's container.

use std::future::Future;
use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::settings::{AgentFlags, AgentSettings};
use crate::source::DrainSource;

/// Exit code for bad arguments or settings.
pub const EXIT_USAGE: u8 = 2;

/// Exit code when the agent cannot start (or `install` fails).
pub const EXIT_FAILURE: u8 = 1;

/// The usage line of an agent executable called `program`.
pub fn usage(program: &str) -> String {
    format!(
        "usage: {program} [--listen ADDR] [--app-port PORT] -- COMMAND...\n       \
         {program} install PATH\n       {program} --version"
    )
}

/// Sends the agent's log to stderr (the container's log): `info` and above unless `FLOTILLA_LOG`
/// says otherwise (an `EnvFilter`, e.g. `debug` or `flotilla_agent=debug`), without colour
/// unless stderr is a terminal. Does nothing if a subscriber is already installed.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FLOTILLA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter)
        .try_init();
}

/// What the command line asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Invocation {
    /// Run the app behind the agent.
    Run(AgentFlags),
    /// Copy this executable to the path.
    Install(PathBuf),
    /// Print the version.
    Version,
}

/// Parses the arguments after the program name.
pub fn parse_args(args: &[String]) -> Result<Invocation, String> {
    match args.first().map(String::as_str) {
        Some("install") => {
            return match args {
                [_, path] => Ok(Invocation::Install(PathBuf::from(path))),
                _ => Err("install takes exactly one PATH (where to copy the agent)".to_owned()),
            };
        }
        Some("--version" | "-V") if args.len() == 1 => return Ok(Invocation::Version),
        _ => {}
    }
    let mut flags = AgentFlags::default();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--" => {
                flags.command = rest.cloned().collect();
                if flags.command.is_empty() {
                    break;
                }
                return Ok(Invocation::Run(flags));
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

/// Why `install` failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot install the agent to {}: {problem}", path.display())]
pub struct InstallError {
    /// Where it was to go.
    pub path: PathBuf,
    /// What went wrong, with what to do.
    pub problem: String,
}

/// Copies the executable at `from` to `to` with mode 0755, through a temporary file beside `to`
/// renamed over it (a reader never sees half a binary, and a running copy at `to` is replaced,
/// not overwritten). Returns the number of bytes copied.
pub fn install(from: &Path, to: &Path) -> Result<u64, InstallError> {
    use std::os::unix::fs::PermissionsExt as _;
    let fail = |problem: String| InstallError {
        path: to.to_owned(),
        problem,
    };
    let dir = match to.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        return Err(fail(format!(
            "{} is not a directory; mount the shared volume there first",
            dir.display()
        )));
    }
    if to.is_dir() {
        return Err(fail(
            "it is a directory; give the file's path, e.g. /flotilla/agent".to_owned(),
        ));
    }
    let mut tmp = to.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let copied = std::fs::copy(from, &tmp).map_err(|e| {
        fail(format!(
            "copying {} failed: {e}; is the volume writable?",
            from.display()
        ))
    })?;
    let done = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
        .and_then(|()| std::fs::rename(&tmp, to));
    if let Err(e) = done {
        let _ = std::fs::remove_file(&tmp);
        return Err(fail(e.to_string()));
    }
    Ok(copied)
}

/// The whole life of an agent executable called `program` with `args` (after the program
/// name): parse, then install, print the version, or run the agent with the drain source
/// `choose_source` picks (it gets the environment lookup; `None` means "no source of its own":
/// the local sources from `FLOTILLA_DRAIN_STATE_*`, else always `active`). Returns the exit code:
/// the app's (or `128 + signal`), [`EXIT_USAGE`] for bad arguments or settings, [`EXIT_FAILURE`]
/// when the agent cannot start.
pub async fn main<F, Fut>(program: &str, args: &[String], choose_source: F) -> u8
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Option<Arc<dyn DrainSource>>>,
{
    let invocation = match parse_args(args) {
        Ok(invocation) => invocation,
        Err(problem) => {
            eprintln!("error: {problem}\n{}", usage(program));
            return EXIT_USAGE;
        }
    };
    let flags = match invocation {
        Invocation::Version => {
            println!("{program} {}", env!("CARGO_PKG_VERSION"));
            return 0;
        }
        Invocation::Install(to) => {
            let from = match std::env::current_exe() {
                Ok(path) => path,
                Err(e) => {
                    eprintln!("error: cannot find this executable to copy it: {e}");
                    return EXIT_FAILURE;
                }
            };
            return match install(&from, &to) {
                Ok(bytes) => {
                    eprintln!(
                        "installed {program} {} ({bytes} bytes) to {}",
                        env!("CARGO_PKG_VERSION"),
                        to.display()
                    );
                    0
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    EXIT_FAILURE
                }
            };
        }
        Invocation::Run(flags) => flags,
    };
    init_logging();
    let env = |k: &str| std::env::var(k).ok();
    let settings = match AgentSettings::from_env(env, flags) {
        Ok(settings) => settings,
        Err(err) => {
            tracing::error!("{err}");
            eprintln!("error: {err}");
            return EXIT_USAGE;
        }
    };
    let source = match crate::local_source_from_env(env) {
        Ok(Some(source)) => source,
        Ok(None) => match choose_source().await {
            Some(source) => source,
            None => Arc::new(crate::StaticSource::active()),
        },
        Err(err) => {
            tracing::error!("{err}");
            eprintln!("error: {err}");
            return EXIT_USAGE;
        }
    };
    tracing::info!(
        program,
        version = env!("CARGO_PKG_VERSION"),
        "starting the flotilla agent"
    );
    match crate::run_with_signals(settings, source).await {
        Ok(outcome) => outcome.exit_code,
        Err(err) => {
            tracing::error!("the agent cannot run: {err}");
            EXIT_FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn parse_args_table() {
        let run = parse_args(&args(&["--app-port", "9001", "--", "app", "-v"]));
        let Ok(Invocation::Run(flags)) = run else {
            panic!("{run:?}")
        };
        assert_eq!(flags.app_port, Some(9001));
        assert_eq!(flags.command, args(&["app", "-v"]));
        assert_eq!(
            parse_args(&args(&["install", "/flotilla/agent"])),
            Ok(Invocation::Install(PathBuf::from("/flotilla/agent")))
        );
        assert_eq!(parse_args(&args(&["--version"])), Ok(Invocation::Version));
        // An app called `install` still runs after `--`.
        assert!(matches!(
            parse_args(&args(&["--", "install", "x"])),
            Ok(Invocation::Run(_))
        ));
        let check_err = |list: &[&str], needle: &str| {
            let err = parse_args(&args(list)).expect_err("refused");
            assert!(err.contains(needle), "{list:?}: {err}");
        };
        check_err(&["install"], "exactly one PATH");
        check_err(&["install", "a", "b"], "exactly one PATH");
        check_err(&[], "after `--`");
        check_err(&["--"], "after `--`");
        check_err(&["--listen", "nope", "--", "x"], "not IP:PORT");
        check_err(&["--app-port"], "needs a port");
        check_err(&["serve"], "unexpected argument `serve`");
    }

    #[test]
    fn install_copies_with_mode_0755_and_replaces() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("temp dir");
        let from = dir.path().join("src-bin");
        std::fs::write(&from, b"\x7fELF binary bytes").expect("write");
        std::fs::set_permissions(&from, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let to = dir.path().join("agent");
        std::fs::write(&to, b"old").expect("old copy");
        let copied = install(&from, &to).expect("installs");
        assert_eq!(copied, 17);
        assert_eq!(std::fs::read(&to).expect("read"), b"\x7fELF binary bytes");
        let mode = std::fs::metadata(&to).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");

        let err = install(&from, &dir.path().join("missing/agent")).expect_err("no dir");
        assert!(err.to_string().contains("not a directory"), "{err}");
        let err = install(&from, dir.path()).expect_err("a directory");
        assert!(err.to_string().contains("is a directory"), "{err}");
    }
}
