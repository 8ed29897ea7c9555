//! The command line: every command, flag and help text of `flotilla`, declared with clap.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use flotilla_core::DeploymentId;

use crate::config::ProviderKind;

const ABOUT: &str =
    "Deploy web apps so that several versions run side by side and nobody notices a deploy";

const LONG_ABOUT: &str = "\
Deploy web apps so that several versions run side by side and nobody notices a deploy.

Fresh browser tabs land on the newest version; a tab that started on an older version keeps \
talking to it (the version travels in the X-Flotilla-Deployment header and the \
flotilla_deployment query parameter, kept per tab). Old versions drain: they take no new \
sessions, and are retired and removed once their last session has ended. A deploy switches \
traffic only once the new version is healthy.

Versions run on this machine (provider = \"host\") or on ECS Fargate behind an Application \
Load Balancer (provider = \"aws\"), with the same behaviour.

Start with:
  flotilla init            # write a commented flotilla.toml
  flotilla config check    # see what flotilla will use
  flotilla deploy          # deploy the app in this directory
  flotilla status          # list versions";

/// The text after `flotilla -h`; `--help` adds the exit codes.
pub const AFTER_HELP: &str = "\
Configuration:
  flotilla.toml is looked for in the current directory, then in each parent directory (like \
Cargo.toml); --config PATH or FLOTILLA_CONFIG names it instead. Precedence, lowest first: \
built-in defaults < the [app] framework preset (pulse, streamlit) < flotilla.toml < FLOTILLA_<SECTION>_<KEY> environment variables (e.g. \
FLOTILLA_NAME, FLOTILLA_APP_PORT, FLOTILLA_HOST_LISTEN) < flags (--name, --provider). \
`flotilla config check` shows every value and where it came from.

Examples:
  flotilla init && flotilla deploy
  flotilla status --watch
  flotilla rollback
  FLOTILLA_PROVIDER=aws flotilla deploy --image 1234.dkr.ecr.eu-west-1.amazonaws.com/shop:v7";

/// The `flotilla` command line.
#[derive(Debug, Parser)]
#[command(
    name = "flotilla",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_help = AFTER_HELP,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    /// Options every command accepts.
    #[command(flatten)]
    pub global: Global,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// The help heading of the options every command accepts.
const GLOBAL: &str = "Global options";

/// Options every command accepts.
#[derive(Debug, Args)]
pub struct Global {
    /// The config file [default: flotilla.toml in the current directory or the nearest parent
    /// that has one]
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        env = "FLOTILLA_CONFIG",
        hide_env_values = true,
        help_heading = GLOBAL
    )]
    pub config: Option<PathBuf>,

    /// The deployment name, overriding `name` in flotilla.toml and FLOTILLA_NAME
    #[arg(long, global = true, value_name = "NAME", help_heading = GLOBAL)]
    pub name: Option<String>,

    /// The provider, overriding `provider` in flotilla.toml and FLOTILLA_PROVIDER
    #[arg(
        long,
        global = true,
        value_enum,
        value_name = "PROVIDER",
        help_heading = GLOBAL
    )]
    pub provider: Option<ProviderKind>,

    /// Say more: which config file is used, every progress event (repeat for more)
    #[arg(short, long, global = true, action = clap::ArgAction::Count, help_heading = GLOBAL)]
    pub verbose: u8,
}

/// `--json`, for commands that report.
#[derive(Debug, Args, Clone, Copy, Default)]
pub struct JsonFlag {
    /// Print one JSON document on stdout instead of text; progress goes to stderr as one JSON
    /// event per line
    #[arg(long)]
    pub json: bool,
}

/// Every command.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a commented flotilla.toml for the app in this directory
    #[command(
        long_about = "Write a commented flotilla.toml for the app in this directory.\n\n\
            Every key is written with its documentation; keys with defaults show them, optional \
            keys are commented out. The deployment name is taken from --name, or else from the \
            directory's name (lowercased, other characters turned into hyphens). The start \
            command is guessed from the files present (Cargo.toml, package.json); check it.",
        after_help = "Examples:\n  flotilla init\n  flotilla init --name shop-staging\n  \
            flotilla init --provider aws --force"
    )]
    Init(InitArgs),

    /// Deploy a new version; switch fresh traffic to it once it is healthy
    #[command(
        long_about = "Deploy a new version; switch fresh traffic to it once it is healthy.\n\n\
            Steps: take the deploy lock, prepare the image (host: snapshot this directory and \
            run [host] build, showing its output as it runs, how long it took and its log file \
            under .flotilla/host/logs; AWS: docker build and push, unless --image is given), \
            install the new version's affinity, start its instances, wait until [app] \
            min_healthy of them pass the health check, switch fresh traffic to it, and mark older \
            versions draining. Tabs already open stay on the version they started on.\n\n\
            If the build fails, the deploy stops with its exit status, last lines and log file, \
            nothing of the new version is kept and traffic stays where it was (exit code 1). If \
            it never gets healthy within [app] health_timeout_seconds, everything it created is \
            removed and traffic stays where it was (exit code 5). If it is interrupted, run the \
            same command with the same --id to resume.",
        after_help = "Examples:\n  flotilla deploy\n  flotilla deploy --json\n  \
            flotilla deploy --image 1234.dkr.ecr.eu-west-1.amazonaws.com/shop:v7\n  \
            flotilla deploy --id 20261125-190633-k3x9    # resume an interrupted deploy"
    )]
    Deploy(DeployArgs),

    /// List versions: state, share of fresh traffic, instances, sessions, age
    #[command(
        long_about = "List every version: its state (deploying, active, draining, retired, \
            failed), its share of fresh traffic, healthy/total instances, live sessions and age; \
            then the listener rules used and who holds the deploy lock, if anyone.",
        after_help = "Examples:\n  flotilla status\n  flotilla status --watch\n  \
            flotilla status --json | jq '.versions[].record.version.state'"
    )]
    Status(StatusArgs),

    /// Mark a version draining: it takes no new sessions and is retired when they end
    #[command(
        long_about = "Mark a version draining by hand: it takes no new sessions, keeps serving \
            the ones it has, and is retired by the reaper once they have ended (or after [reaper] \
            max_age_seconds). The active version cannot be drained; deploy or roll back first.",
        after_help = "Example:\n  flotilla drain 20261125-190633-k3x9"
    )]
    Drain(DrainArgs),

    /// Point fresh traffic back at a previous version that still runs
    #[command(
        long_about = "Point fresh traffic back at a previous version that still runs, and mark \
            the current one draining. Instant: nothing is built or started. Without ID, the \
            newest draining version is chosen. During a canary, it ends the canary: fresh \
            sessions go back to the current version and the canary drains.",
        after_help = "Examples:\n  flotilla rollback\n  flotilla rollback 20261124-101500-a1b2"
    )]
    Rollback(RollbackArgs),

    /// Promote the running canary now: all fresh sessions to it
    #[command(
        long_about = "Promote the running canary (`flotilla deploy --canary`) without waiting \
            for its remaining steps: all fresh sessions go to it, and the version it was judged \
            against drains. Tabs already on either version stay on it. To end a canary the other \
            way, `flotilla rollback`.",
        after_help = "Example:\n  flotilla promote"
    )]
    Promote(PromoteArgs),

    /// Run one reaper pass: retire drained versions, remove retired ones
    #[command(
        long_about = "Run one reaper pass now (the host daemon and the AWS schedule also run it \
            every [reaper] interval_seconds). A draining version whose instances all reported \
            ready for [reaper] consecutive_passes passes, or that is older than max_age_seconds, \
            is retired: its affinity answers 410 Gone (or [app] stale_status) and it is scaled to zero. A retired version \
            with nothing running is removed completely. Active versions, and versions younger \
            than min_age_seconds, are never touched.",
        after_help = "Examples:\n  flotilla reap --dry-run\n  flotilla reap --json"
    )]
    Reap(ReapArgs),

    /// Remove one version, or everything, leaving nothing behind
    #[command(
        long_about = "Remove one version, or every version with --all, leaving nothing behind \
            (instances, routing, target groups, services, state). The active version can be \
            removed alone only when it is the last one; roll back first otherwise. Asks for \
            confirmation when stdin is a terminal; otherwise --yes is required.",
        after_help = "Examples:\n  flotilla teardown 20261124-101500-a1b2\n  \
            flotilla teardown --all --yes\n  \
            flotilla teardown --all --baseline --yes    # AWS: the baseline stack too"
    )]
    Teardown(TeardownArgs),

    /// Check that requests reach the right versions
    #[command(
        long_about = "Check routing from the outside: a request without affinity must be answered \
            by the active version (named in the X-Flotilla-Deployment response header, or \
            [app] affinity_header); for every live version, a request carrying its id in the \
            header and one carrying it in the query parameter must be answered by that version; \
            a retired version's id must get the stale answer (410 Gone, or 409 with [app] \
            stale_status). Exits 7 on any mismatch.",
        after_help = "Examples:\n  flotilla verify\n  flotilla verify --json\n  \
            flotilla verify --url http://shop.internal:8080 --path /healthz"
    )]
    Verify(VerifyArgs),

    /// Show a version's logs
    #[command(
        long_about = "Show the last lines of a version's logs (every instance), or of every \
            running version without ID; --follow keeps printing new lines until Ctrl-C.",
        after_help = "Examples:\n  flotilla logs\n  flotilla logs 20261125-190633-k3x9 -n 200\n  \
            flotilla logs --follow"
    )]
    Logs(LogsArgs),

    /// Inspect the configuration
    #[command(subcommand)]
    Config(ConfigCommand),

    /// Run or stop the host provider's daemon (router, supervisor, reaper)
    #[command(subcommand)]
    Host(HostCommand),

    /// Run an app behind the in-container agent (drain, sessions, readiness)
    #[command(
        long_about = "Run an app behind the flotilla agent, inside a container. The agent starts \
            COMMAND as a child (forwarding signals), proxies requests to it, counts live sessions, \
            stamps responses with the deployment header, answers the health path with its drain \
            state, refuses new sessions while draining, and reports readiness so the reaper knows \
            when the version may stop.",
        after_help = "Examples:\n  flotilla agent -- ./server\n  \
            flotilla agent --listen 0.0.0.0:8000 --app-port 8001 -- python3 app.py"
    )]
    Agent(AgentArgs),

    /// Manage the AWS baseline stack (network, load balancer, cluster, reaper)
    #[command(subcommand)]
    Baseline(BaselineCommand),

    /// AWS helpers
    #[command(subcommand)]
    Aws(AwsCommand),

    /// Print a shell completion script
    #[command(
        long_about = "Print the completion script for SHELL on stdout. Install it where your \
            shell looks for completions.",
        after_help = "Examples:\n  \
            flotilla completions bash > ~/.local/share/bash-completion/completions/flotilla\n  \
            flotilla completions zsh > \"${fpath[1]}/_flotilla\"\n  \
            flotilla completions fish > ~/.config/fish/completions/flotilla.fish"
    )]
    Completions(CompletionsArgs),

    /// Write the manual pages (man 1)
    #[command(
        long_about = "Write one manual page per command (flotilla.1, flotilla-deploy.1, \
            flotilla-baseline-up.1, ...) into DIR, from the same text as --help.",
        after_help = "Examples:\n  flotilla man ~/.local/share/man/man1 && man flotilla-deploy\n  \
            sudo flotilla man /usr/local/share/man/man1"
    )]
    Man(ManArgs),
}

/// `completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `man`.
#[derive(Debug, Args)]
pub struct ManArgs {
    /// The directory to write the pages into (created if missing)
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
}

/// `init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Overwrite an existing flotilla.toml
    #[arg(long)]
    pub force: bool,
}

/// `deploy`.
#[derive(Debug, Args)]
pub struct DeployArgs {
    /// Use this deployment id instead of a new one; an interrupted deploy of the same id resumes
    #[arg(long, value_name = "ID")]
    pub id: Option<DeploymentId>,

    /// Deploy this prebuilt image (AWS: an image URI) instead of building from this directory
    #[arg(long, value_name = "URI")]
    pub image: Option<String>,

    /// Take the deploy lock even if another process holds it (only when that process is gone)
    #[arg(long)]
    pub break_lock: bool,

    /// Give the app NAME=VALUE in this version's environment, over [env] and FLOTILLA_ENV_NAME
    /// (repeatable)
    #[arg(long, value_name = "NAME=VALUE")]
    pub env: Vec<String>,

    /// AWS: give the app secret NAME read from REFERENCE (ssm:/path, or an SSM or Secrets
    /// Manager ARN), over [secrets] and FLOTILLA_SECRET_NAME (repeatable)
    #[arg(long, value_name = "NAME=REFERENCE")]
    pub secret: Vec<String>,

    /// Deploy as a canary: give the new version a share of fresh sessions step by step
    /// ([canary] in flotilla.toml), judge it against the current version, then promote it or
    /// roll it back (the host daemon drives it after this command returns)
    #[arg(long)]
    pub canary: bool,

    /// With --canary: the steps in percent, over [canary] steps (e.g. 5,25,50)
    #[arg(
        long,
        value_name = "PERCENTS",
        value_delimiter = ',',
        requires = "canary"
    )]
    pub canary_steps: Vec<u8>,

    /// With --canary: seconds each step runs before it is judged, over [canary] pause_seconds
    #[arg(long, value_name = "SECONDS", requires = "canary")]
    pub canary_pause: Option<u64>,

    /// `--json`.
    #[command(flatten)]
    pub json: JsonFlag,
}

/// `promote`.
#[derive(Debug, Args)]
pub struct PromoteArgs {
    /// `--json`.
    #[command(flatten)]
    pub json: JsonFlag,
}

/// `status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Refresh until Ctrl-C (with --json: one JSON document per line)
    #[arg(long)]
    pub watch: bool,

    /// Seconds between refreshes with --watch
    #[arg(long, value_name = "SECONDS", default_value_t = 2, requires = "watch")]
    pub interval: u64,

    /// `--json`.
    #[command(flatten)]
    pub json: JsonFlag,
}

/// `drain`.
#[derive(Debug, Args)]
pub struct DrainArgs {
    /// The version to drain (see `flotilla status`)
    pub id: DeploymentId,

    /// `--json`.
    #[command(flatten)]
    pub json: JsonFlag,
}

/// `rollback`.
#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The version to roll back to [default: the newest draining version that still runs]
    pub id: Option<DeploymentId>,

    /// `--json`.
    #[command(flatten)]
    pub json: JsonFlag,
}

/// `reap`.
#[derive(Debug, Args)]
pub struct ReapArgs {
    /// Print what the pass would do without doing it
    #[arg(long)]
    pub dry_run: bool,

    /// `--json`.
    #[command(flatten)]
    pub json: JsonFlag,
}

/// `teardown`.
#[derive(Debug, Args)]
pub struct TeardownArgs {
    /// The version to remove
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub id: Option<DeploymentId>,

    /// Remove every version; fresh requests then get "no version deployed yet"
    #[arg(long)]
    pub all: bool,

    /// With --all on AWS: also delete the baseline stack (network, load balancer, cluster)
    #[arg(long, requires = "all")]
    pub baseline: bool,

    /// Do not ask for confirmation (required when stdin is not a terminal)
    #[arg(long, short = 'y')]
    pub yes: bool,

    /// Take the deploy lock even if another process holds it
    #[arg(long)]
    pub break_lock: bool,

    /// `--json`.
    #[command(flatten)]
    pub json: JsonFlag,
}

/// `verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Send requests here instead of the provider's address (host: http://<[host] listen>)
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,

    /// The path to request
    #[arg(long, value_name = "PATH", default_value = "/")]
    pub path: String,

    /// `--json`.
    #[command(flatten)]
    pub json: JsonFlag,
}

/// `logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The version [default: every running version]
    pub id: Option<DeploymentId>,

    /// Keep printing new lines until Ctrl-C
    #[arg(long, short = 'f')]
    pub follow: bool,

    /// How many recent lines to show first
    #[arg(long, short = 'n', value_name = "N", default_value_t = 100)]
    pub lines: usize,
}

/// `config ...`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the configuration and show every value with where it came from
    #[command(
        long_about = "Validate the configuration: read flotilla.toml, the FLOTILLA_* environment \
            and the flags, and print every resolved value with where it came from (default, a \
            line of the file, an environment variable or a flag). If anything is wrong, every \
            problem is listed with its line, and the exit code is 2.",
        after_help = "Examples:\n  flotilla config check\n  \
            FLOTILLA_APP_PORT=9000 flotilla config check --json"
    )]
    Check(JsonFlag),
}

/// `host ...`.
#[derive(Debug, Subcommand)]
pub enum HostCommand {
    /// Run the host daemon in the foreground (other commands start it in the background)
    #[command(
        long_about = "Run the host provider's daemon in the foreground: the router on [host] \
            listen (and HTTPS on [host] https_listen, HTTP/2 and HTTP/1.1, with certificates from \
            tls_certificate_file/tls_key_file or obtained and renewed over ACME for acme_hosts), \
            the status page on [host] admin_listen, the process supervisor and the reaper \
            loop. Other commands start it in the background when it is not running. Ctrl-C \
            stops it and the app's instances; SIGTERM (a service manager's stop or restart) ends \
            the daemon only and leaves the instances running, for the next daemon to adopt \
            without restarting them. Versions come back when it starts again.",
        after_help = "Example:\n  flotilla host serve"
    )]
    Serve,
    /// Stop the host daemon and the app's instances (versions come back when it starts again)
    Stop,
    /// Run the front door: one pair of public ports for every app on this machine, by host name
    #[command(
        long_about = "Run the shared front door in the foreground. It owns the public ports (80 \
            and 443 by default) for every app on this machine. Each app whose flotilla.toml \
            has `[host] hosts` registers those host names with it over a Unix socket; for each \
            new connection the front door reads the host name (the TLS server name, or the HTTP \
            Host header) without consuming anything, and hands the connection itself to that \
            app's daemon, which serves it as its own: its certificate, its versions. Nothing is \
            proxied twice. A host no app registered gets a 404 on HTTP (on TLS, an \
            `unrecognized_name` alert); while an app's daemon restarts, its connections wait up \
            to --hold seconds for it. Needs no flotilla.toml. Ctrl-C or SIGTERM stops it; the \
            apps' daemons register again when it comes back.",
        after_help = "Examples:\n  sudo flotilla host front-door\n  \
            flotilla host front-door --http 127.0.0.1:8080 --no-https --socket /tmp/fd.sock\n  \
            sudo flotilla host front-door --socket-group flotilla --install\n  \
            sudo flotilla host front-door --uninstall"
    )]
    FrontDoor(FrontDoorArgs),
    /// Run this app's host daemon as a systemd service
    #[command(
        long_about = "Write a systemd unit, flotilla-<name>.service, that runs `flotilla host \
            serve` for this app's flotilla.toml with this flotilla executable, and (when systemd \
            runs) enable and start it with systemctl. Without --user it is a system unit in \
            /etc/systemd/system (needs root), run as the owner of the app directory unless \
            --run-as says otherwise; with --user it goes to ~/.config/systemd/user. A crashed \
            daemon is restarted within a second and adopts the app's running processes; a \
            `systemctl restart` does not restart the app either. With --no-enable, or without a \
            running systemd, the unit is written and the systemctl commands are printed.",
        after_help = "Examples:\n  sudo flotilla host install\n  flotilla host install --user\n  \
            flotilla host install --no-enable --json\n  sudo flotilla host install --run-as www-data"
    )]
    Install(HostInstallArgs),
    /// Hand the running host daemon over to a new one without cutting a session
    #[command(
        long_about = "Start a new host daemon from a flotilla executable (this one unless \
            --binary says otherwise) and hand it the running daemon's listening sockets, state \
            directory and app instances: the app is not restarted, no connection is refused, and \
            the old daemon keeps serving the connections it holds (WebSockets and event streams \
            included) until they end or [host] upgrade_deadline_seconds passes, then exits. \
            Their sessions keep their versions from being retired meanwhile. Use it after \
            installing a new flotilla. `systemctl reload flotilla-<name>` (SIGUSR2 to the \
            daemon) does the same with the executable the daemon was started from.\n\n\
            Exit codes: 0 the new daemon routes; 3 no daemon runs, or the new daemon failed to \
            start or to become ready within 30 s (the old one serves on as before; the message \
            names the log); 6 refused: an upgrade is in progress, or the previous daemon still \
            drains.",
        after_help = "Examples:\n  flotilla host upgrade\n  \
            flotilla host upgrade --binary /usr/local/bin/flotilla --json"
    )]
    Upgrade(HostUpgradeArgs),
    /// Stop, disable and remove this app's systemd service
    #[command(
        long_about = "Disable and stop flotilla-<name>.service with systemctl (when systemd runs) and \
            remove its unit file. Stopping the service sends the daemon SIGTERM: the app's \
            instances keep running, and the next flotilla command starts a daemon in the \
            background that adopts them; `flotilla host stop` stops them.",
        after_help = "Examples:\n  sudo flotilla host uninstall\n  flotilla host uninstall --user --json"
    )]
    Uninstall(HostUninstallArgs),
}

/// `host front-door`.
#[derive(Debug, Args)]
pub struct FrontDoorArgs {
    /// Where plain HTTP is accepted
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:80")]
    pub http: SocketAddr,
    /// Where TLS is accepted (each app's daemon terminates it with its own certificate)
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:443")]
    pub https: SocketAddr,
    /// Accept no plain HTTP
    #[arg(long, conflicts_with = "no_https")]
    pub no_http: bool,
    /// Accept no TLS
    #[arg(long)]
    pub no_https: bool,
    /// The registration socket apps' daemons connect to [default: /run/flotilla/front-door.sock
    /// for root, else $XDG_RUNTIME_DIR/flotilla/front-door.sock]
    #[arg(long, value_name = "PATH")]
    pub socket: Option<std::path::PathBuf>,
    /// How long a connection for an app whose daemon is restarting waits for it, in seconds
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    pub hold: u64,
    /// Let members of this group register apps (the apps' daemons run as other users than the
    /// front door) [default: only the front door's own user]
    #[arg(long, value_name = "GROUP")]
    pub socket_group: Option<String>,
    /// Instead of running it, write, enable and start a systemd unit that runs the front door
    /// with these options (flotilla-front-door.service)
    #[arg(long, conflicts_with = "uninstall")]
    pub install: bool,
    /// Stop, disable and remove the front door's systemd unit
    #[arg(long)]
    pub uninstall: bool,
    /// With --install/--uninstall: a user unit (~/.config/systemd/user) instead of a system unit
    #[arg(long, name = "user-unit")]
    pub user_unit: bool,
    /// With --install/--uninstall: write or remove the unit but do not run systemctl
    #[arg(long)]
    pub no_enable: bool,
    /// With --install: the user a system unit runs the front door as (it gets only the
    /// capability to bind ports below 1024) [default: root]
    #[arg(long, value_name = "USER")]
    pub run_as: Option<String>,
    #[command(flatten)]
    pub json: JsonFlag,
}

impl FrontDoorArgs {
    /// The options a unit passes to `flotilla host front-door`: these, without the install ones.
    pub fn run_args(&self) -> Vec<String> {
        let mut args = vec![
            "--http".to_owned(),
            self.http.to_string(),
            "--https".to_owned(),
            self.https.to_string(),
            "--hold".to_owned(),
            self.hold.to_string(),
        ];
        if self.no_http {
            args.push("--no-http".to_owned());
        }
        if self.no_https {
            args.push("--no-https".to_owned());
        }
        if let Some(socket) = &self.socket {
            args.extend(["--socket".to_owned(), socket.display().to_string()]);
        }
        if let Some(group) = &self.socket_group {
            args.extend(["--socket-group".to_owned(), group.clone()]);
        }
        args
    }
}

/// `host install`.
#[derive(Debug, Args)]
pub struct HostInstallArgs {
    /// Install a user unit (~/.config/systemd/user) instead of a system unit
    #[arg(long)]
    pub user: bool,
    /// Write the unit but do not run systemctl; print the commands instead
    #[arg(long)]
    pub no_enable: bool,
    /// The user a system unit runs the daemon as [default: the owner of the app directory]
    #[arg(long, value_name = "USER", conflicts_with = "user")]
    pub run_as: Option<String>,
    #[command(flatten)]
    pub json: JsonFlag,
}

/// `host upgrade`.
#[derive(Debug, Args)]
pub struct HostUpgradeArgs {
    /// The flotilla executable the new daemon runs [default: this one]
    #[arg(long, value_name = "PATH")]
    pub binary: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub json: JsonFlag,
}

/// `host uninstall`.
#[derive(Debug, Args)]
pub struct HostUninstallArgs {
    /// Remove the user unit (~/.config/systemd/user) instead of the system unit
    #[arg(long)]
    pub user: bool,
    /// Remove the unit file but do not run systemctl; print the commands instead
    #[arg(long)]
    pub no_disable: bool,
    #[command(flatten)]
    pub json: JsonFlag,
}

/// `agent`.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Where the agent accepts traffic [default: 0.0.0.0:8000, or 0.0.0.0:8001 when the app uses 8000]
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,

    /// The port the app is told to listen on (in PORT) [default: [app] port, else 8000]
    #[arg(long, value_name = "PORT")]
    pub app_port: Option<u16>,

    /// The app's command and its arguments, after `--`
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// `baseline ...`.
#[derive(Debug, Subcommand)]
pub enum BaselineCommand {
    /// Create or update the baseline stack, showing what changes
    #[command(
        long_about = "Create or update the baseline stack `flotilla-<name>` from flotilla.toml: the \
            network, the load balancer, the certificate, the ECS cluster, the image repository, \
            the roles, the reaper Lambda, the dashboard and the alarms. Shows what will change \
            first (a CloudFormation change set) and asks on a terminal; does nothing when nothing \
            changed. Waits with the stack's events as progress, prints the DNS records a \
            requested certificate needs, and caches the outputs in .flotilla/<name>/baseline.json.\n\n\
            The reaper Lambda runs, in this order: --reaper-binary PATH; else the static \
            reaper `flotilla-aws-reaper-<arch>` that scripts/build-static.sh builds, found next \
            to this binary or in target/static/; else this flotilla binary, if it is a Linux \
            build Lambda can run (glibc 2.34 at most). The choice and its size are printed. \
            Needs administrator rights.",
        after_help = "Examples:\n  flotilla baseline up\n  flotilla baseline up --yes --json\n  \
            scripts/build-static.sh x86_64 && flotilla baseline up\n  \
            flotilla baseline up --reaper-binary target/static/flotilla-aws-reaper-arm64\n  \
            flotilla baseline up --continue-rollback --skip PrivateSubnetA"
    )]
    Up(BaselineUpArgs),
    /// Show the baseline stack's state and outputs
    #[command(
        after_help = "Examples:\n  flotilla baseline show\n  flotilla baseline show --offline --json"
    )]
    Show(BaselineShowArgs),
    /// Print the baseline CloudFormation template (no AWS call)
    #[command(
        after_help = "Example:\n  flotilla baseline template > baseline.json && scripts/lint-template.sh baseline.json"
    )]
    Template,
    /// Delete the baseline stack (refused while versions run, unless --force)
    #[command(
        long_about = "Delete the baseline stack: empties its artefact bucket, deletes the stack \
            (the image repository with its images and the log groups with their logs go too), \
            waits, and removes .flotilla/<name>/baseline.json. Refused while versions run; \
            --force removes them first, as `flotilla teardown --all` does. Asks for the \
            deployment name on a terminal; otherwise --yes is required.",
        after_help = "Examples:\n  flotilla baseline down\n  flotilla baseline down --force --yes\n  \
            flotilla baseline down --retain PrivateSubnetA    # a stack in DELETE_FAILED"
    )]
    Down(BaselineDownArgs),
}

/// `baseline up`.
#[derive(Debug, Args)]
pub struct BaselineUpArgs {
    /// Apply without asking (stdin that is not a terminal needs it only for changes that
    /// replace or remove resources)
    #[arg(long, short = 'y')]
    pub yes: bool,

    /// The Linux executable the reaper Lambda runs [default: the static reaper from
    /// scripts/build-static.sh beside this binary or in target/static/, else this flotilla]
    #[arg(long, value_name = "PATH")]
    pub reaper_binary: Option<PathBuf>,

    /// First resume a failed rollback (a stack in UPDATE_ROLLBACK_FAILED)
    #[arg(long)]
    pub continue_rollback: bool,

    /// With --continue-rollback: resources (logical ids) that cannot be restored
    #[arg(
        long,
        value_name = "LOGICAL_ID",
        requires = "continue_rollback",
        value_delimiter = ','
    )]
    pub skip: Vec<String>,

    /// Stop waiting after this many minutes (CloudFormation carries on)
    #[arg(long, value_name = "MINUTES", default_value_t = 60)]
    pub timeout_minutes: u64,

    #[command(flatten)]
    pub json: JsonFlag,
}

/// `baseline show`.
#[derive(Debug, Args)]
pub struct BaselineShowArgs {
    /// Only the cached outputs; do not ask AWS for the stack's status
    #[arg(long)]
    pub offline: bool,

    #[command(flatten)]
    pub json: JsonFlag,
}

/// `baseline down`.
#[derive(Debug, Args)]
pub struct BaselineDownArgs {
    /// Remove running versions first (as `flotilla teardown --all`), then the stack
    #[arg(long)]
    pub force: bool,

    /// Do not ask for confirmation (required when stdin is not a terminal)
    #[arg(long, short = 'y')]
    pub yes: bool,

    /// For a stack in DELETE_FAILED: leave these resources (logical ids) and delete the rest
    #[arg(long, value_name = "LOGICAL_ID", value_delimiter = ',')]
    pub retain: Vec<String>,

    /// Stop waiting after this many minutes (CloudFormation carries on)
    #[arg(long, value_name = "MINUTES", default_value_t = 60)]
    pub timeout_minutes: u64,

    #[command(flatten)]
    pub json: JsonFlag,
}

/// `aws ...`.
#[derive(Debug, Subcommand)]
pub enum AwsCommand {
    /// Print the IAM policy a deploying user or CI role needs
    #[command(
        long_about = "Print the IAM policy that `deploy`, `status`, `verify`, `rollback`, `drain`, \
            `reap`, `logs` and `teardown` of this deployment name need, scoped to its resources. \
            The account comes from STS (the current credentials) unless --account-id is given; \
            the region from [aws] region or the environment (any region when unset). Creating \
            and deleting the baseline is not included: that needs an administrator.",
        after_help = "Examples:\n  flotilla aws deployer-policy > deployer-policy.json\n  \
            flotilla aws deployer-policy --account-id 123456789012"
    )]
    DeployerPolicy(DeployerPolicyArgs),
}

/// `aws deployer-policy`.
#[derive(Debug, Args)]
pub struct DeployerPolicyArgs {
    /// The 12-digit account id, instead of asking STS
    #[arg(long, value_name = "ID")]
    pub account_id: Option<String>,
}

/// The clap command with the exit-code table added to `--help`.
pub fn command() -> clap::Command {
    use clap::CommandFactory;
    Cli::command().after_long_help(format!("{AFTER_HELP}\n\n{}", crate::exit::help_section()))
}

impl Cli {
    /// Whether the command asked for JSON output.
    pub fn json(&self) -> bool {
        match &self.command {
            Command::Deploy(a) => a.json.json,
            Command::Status(a) => a.json.json,
            Command::Drain(a) => a.json.json,
            Command::Rollback(a) => a.json.json,
            Command::Promote(a) => a.json.json,
            Command::Reap(a) => a.json.json,
            Command::Teardown(a) => a.json.json,
            Command::Verify(a) => a.json.json,
            Command::Config(ConfigCommand::Check(j)) => j.json,
            Command::Host(HostCommand::Install(a)) => a.json.json,
            Command::Host(HostCommand::FrontDoor(a)) => a.json.json,
            Command::Host(HostCommand::Uninstall(a)) => a.json.json,
            Command::Host(HostCommand::Upgrade(a)) => a.json.json,
            Command::Baseline(BaselineCommand::Up(a)) => a.json.json,
            Command::Baseline(BaselineCommand::Show(a)) => a.json.json,
            Command::Baseline(BaselineCommand::Down(a)) => a.json.json,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn clap_definition_is_consistent() {
        command().debug_assert();
    }

    #[test]
    fn every_argument_has_help() {
        fn walk(cmd: &clap::Command, path: &str) {
            for arg in cmd.get_arguments() {
                if arg.get_id() == "help" || arg.get_id() == "version" {
                    continue;
                }
                assert!(
                    arg.get_help().is_some(),
                    "{path} {} has no help",
                    arg.get_id()
                );
            }
            for sub in cmd.get_subcommands() {
                assert!(
                    sub.get_about().is_some(),
                    "{path} {} has no about",
                    sub.get_name()
                );
                walk(sub, &format!("{path} {}", sub.get_name()));
            }
        }
        walk(&Cli::command(), "flotilla");
    }

    #[test]
    fn teardown_needs_an_id_or_all() {
        let parse = |args: &[&str]| Cli::try_parse_from(args).map(|_| ()).map_err(|e| e.kind());
        assert!(parse(&["flotilla", "teardown"]).is_err());
        assert!(parse(&["flotilla", "teardown", "--all"]).is_ok());
        assert!(parse(&["flotilla", "teardown", "20261125-190633-k3x9"]).is_ok());
        assert!(parse(&["flotilla", "teardown", "20261125-190633-k3x9", "--all"]).is_err());
        assert!(parse(&["flotilla", "teardown", "--baseline"]).is_err());
        assert!(parse(&["flotilla", "teardown", "not-an-id"]).is_err());
    }

    #[test]
    fn agent_takes_the_command_after_dashes() {
        let cli =
            Cli::try_parse_from(["flotilla", "agent", "--app-port", "9001", "--", "app", "-v"])
                .expect("valid");
        let Command::Agent(args) = cli.command else {
            panic!("not agent");
        };
        assert_eq!(args.command, vec!["app", "-v"]);
        assert_eq!(args.app_port, Some(9001));
        assert!(Cli::try_parse_from(["flotilla", "agent"]).is_err());
    }
}
