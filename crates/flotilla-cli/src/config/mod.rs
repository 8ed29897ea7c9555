//! `flotilla.toml`: finding it, reading it with the place of every value, layering it with the
//! defaults, the environment and the flags, and validating the result into a [`Config`].
//!
//! Precedence, lowest first: built-in defaults < the `[app] framework` preset (see [`presets`])
//! < `flotilla.toml` < `FLOTILLA_<SECTION>_<KEY>`
//! environment variables (`FLOTILLA_NAME`, `FLOTILLA_APP_PORT`, ...; an empty variable counts as
//! unset; arrays are comma-separated) < command-line flags (`--name`, `--provider`).
//!
//! The file is found like cargo finds `Cargo.toml`: `--config PATH` (or `FLOTILLA_CONFIG`) if
//! given, else `flotilla.toml` in the current directory or the nearest parent that has one. Its
//! directory is the app's root: relative paths in it, and the directory a deploy builds from,
//! are taken from there. Without a file, the environment and flags alone may configure flotilla
//! if they give at least a name.
//!
//! Every problem is reported at once, each with its place (`flotilla.toml:7:1`, an environment
//! variable or a flag); unknown keys come with the closest valid key.

#[cfg(feature = "aws")]
pub mod baseline;
pub mod layers;
pub mod presets;
mod resolve;
pub mod schema;
pub mod template;
#[cfg(test)]
mod tests;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use flotilla_core::DeploymentName;
use serde::Serialize;

pub use layers::Val;
pub use presets::Framework;
pub use resolve::check_env_name;

/// The file name searched for.
pub const FILE_NAME: &str = "flotilla.toml";

/// Which provider runs versions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// flotilla's own router and supervisor on this machine.
    Host,
    /// ECS Fargate behind an Application Load Balancer.
    Aws,
}

impl ProviderKind {
    /// The config spelling: `host` or `aws`.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Host => "host",
            ProviderKind::Aws => "aws",
        }
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// NAT gateways of the AWS baseline network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Nat {
    /// One NAT gateway shared by both zones.
    Single,
    /// One NAT gateway per availability zone.
    PerAz,
}

/// Where a value came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum Origin {
    /// flotilla's built-in default.
    Default,
    /// The `[app] framework` preset.
    Preset {
        /// The framework, as spelled in the config: `pulse`.
        framework: String,
    },
    /// A line of the config file.
    File {
        /// The file as shown to the user.
        path: String,
        /// The line, from 1.
        line: usize,
        /// The column, from 1, in characters.
        column: usize,
    },
    /// An environment variable.
    Env {
        /// Its name.
        var: String,
    },
    /// A command-line flag.
    Flag {
        /// The flag, e.g. `--name`.
        flag: String,
    },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => f.write_str("default"),
            Origin::Preset { framework } => write!(f, "preset {framework}"),
            Origin::File { path, line, column } => write!(f, "{path}:{line}:{column}"),
            Origin::Env { var } => write!(f, "environment variable {var}"),
            Origin::Flag { flag } => write!(f, "flag {flag}"),
        }
    }
}

/// Where a problem is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "in", rename_all = "snake_case")]
pub enum Location {
    /// A place in the config file.
    File {
        /// The file as shown to the user.
        path: String,
        /// The line, from 1.
        line: usize,
        /// The column, from 1.
        column: usize,
    },
    /// The config file as a whole (something is missing from it).
    WholeFile {
        /// The file as shown to the user.
        path: String,
    },
    /// An environment variable.
    Env {
        /// Its name.
        var: String,
    },
    /// A command-line flag.
    Flag {
        /// The flag.
        flag: String,
    },
    /// The configuration as a whole, when there is no file.
    Config,
}

impl Location {
    /// Where a value with `origin` is, or `fallback` for a default.
    pub fn of(origin: &Origin, fallback: &Location) -> Location {
        match origin {
            // A preset's values are flotilla's own; a problem with one is about the whole.
            Origin::Default | Origin::Preset { .. } => fallback.clone(),
            Origin::File { path, line, column } => Location::File {
                path: path.clone(),
                line: *line,
                column: *column,
            },
            Origin::Env { var } => Location::Env { var: var.clone() },
            Origin::Flag { flag } => Location::Flag { flag: flag.clone() },
        }
    }

    fn sort_key(&self) -> (u8, String, usize, usize) {
        match self {
            Location::WholeFile { path } => (0, path.clone(), 0, 0),
            Location::File { path, line, column } => (0, path.clone(), *line, *column),
            Location::Env { var } => (1, var.clone(), 0, 0),
            Location::Flag { flag } => (2, flag.clone(), 0, 0),
            Location::Config => (3, String::new(), 0, 0),
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::File { path, line, column } => write!(f, "{path}:{line}:{column}"),
            Location::WholeFile { path } => f.write_str(path),
            Location::Env { var } => write!(f, "environment variable {var}"),
            Location::Flag { flag } => write!(f, "flag {flag}"),
            Location::Config => f.write_str("configuration"),
        }
    }
}

/// One thing wrong with the configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// Where it is.
    pub location: Location,
    /// What is wrong, and what would be right.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

/// Why no [`Config`] could be made.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// No file was found and the environment and flags do not name a deployment.
    #[error(
        "no {FILE_NAME} in {} or any parent directory",
        .searched_from.display()
    )]
    NotFound {
        /// Where the search began.
        searched_from: PathBuf,
    },
    /// The file exists (or was named) but cannot be read.
    #[error("cannot read {}: {source}", .path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The configuration has problems; every one is listed.
    #[error("{}", summary(.file.as_deref(), .problems))]
    Invalid {
        /// The file, as shown to the user, if there was one.
        file: Option<String>,
        /// Every problem, in file order, then environment, then flags.
        problems: Vec<Problem>,
    },
}

fn summary(file: Option<&str>, problems: &[Problem]) -> String {
    let what = file.unwrap_or("the configuration");
    let mut out = match problems.len() {
        1 => format!("{what} has a problem:"),
        n => format!("{what} has {n} problems:"),
    };
    for problem in problems {
        out.push_str("\n  ");
        out.push_str(&problem.to_string());
    }
    out
}

/// Values given on the command line, the highest layer.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `--name`.
    pub name: Option<String>,
    /// `--provider`.
    pub provider: Option<ProviderKind>,
    /// The process's environment variables, for `FLOTILLA_ENV_<NAME>` and
    /// `FLOTILLA_SECRET_<NAME>` (other variables are read by name through [`Inputs::env`]).
    pub environment: Vec<(String, String)>,
    /// `--env NAME=VALUE` flags.
    pub env: Vec<String>,
    /// `--secret NAME=REFERENCE` flags.
    pub secrets: Vec<String>,
}

/// `[app]`: the app and how flotilla talks to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AppConfig {
    /// The framework whose preset filled in the keys below that no layer set.
    pub framework: Framework,
    /// The port the app listens on in its container.
    pub port: u16,
    /// The health check path, starting with `/`.
    pub health_path: String,
    /// The affinity header name.
    pub affinity_header: String,
    /// The affinity query parameter name.
    pub affinity_query: String,
    /// Whether to insert the browser script into HTML responses.
    pub inject_client: bool,
    /// How requests pinned to a retired version are answered (`stale_status`, `stale_header`,
    /// `stale_socket_reroute_query`).
    pub stale: flotilla_core::stale::StaleSignals,
    /// Healthy instances needed before fresh traffic switches.
    pub min_healthy: u32,
    /// How long a deploy waits for health.
    pub health_timeout: Duration,
    /// How long an instance has to exit after SIGTERM.
    pub stop_timeout: Duration,
}

/// `[drain]`: how instances of a draining version decide they are done.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DrainConfig {
    /// How often an instance polls its version's state.
    pub poll: Duration,
    /// How long a draining instance must have had no session (counted from the last one) before
    /// it reports ready.
    pub grace: Duration,
}

/// `[reaper]`: when versions are retired and removed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReaperConfig {
    /// Time between reaper passes.
    pub interval: Duration,
    /// Consecutive all-ready passes before a draining version is retired.
    pub consecutive_passes: u32,
    /// Versions younger than this are never touched.
    pub min_age: Duration,
    /// Draining versions older than this are retired regardless of sessions.
    pub max_age: Duration,
    /// Versions deploying for longer than this are cleaned up.
    pub deploying_timeout: Duration,
}

/// `[canary]`: how `flotilla deploy --canary` steps and judges.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CanaryConfig {
    /// The plan every canary deploy starts from (flags may override its steps and pause).
    pub plan: flotilla_core::canary::CanaryPlan,
}

// The thresholds are finite numbers made from integers.
impl Eq for CanaryConfig {}

/// `[host]`: the host provider.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HostConfig {
    /// The router's listen address.
    pub listen: SocketAddr,
    /// The status page's listen address.
    pub admin_listen: SocketAddr,
    /// The file holding the status page's token, absolute; required off loopback.
    pub admin_token_file: Option<PathBuf>,
    /// The command starting one instance (run with `sh -c`). Always `Some` when the provider is
    /// `host`: the resolver requires it then.
    pub command: Option<String>,
    /// A build command run in each new release directory.
    pub build: Option<String>,
    /// Instances per version.
    pub instances: u32,
    /// Autoscaling of each version (`max_instances` set); `None`: `instances` each.
    pub autoscale: Option<flotilla_core::autoscale::ScalePolicy>,
    /// The state directory, absolute (relative values are taken from the config's directory).
    pub state_dir: PathBuf,
    /// Release snapshots of retired versions to keep.
    pub keep_releases: u32,
    /// How long a daemon that handed over keeps serving what it holds.
    pub upgrade_deadline: std::time::Duration,
    /// The file of secrets every new version gets, absolute.
    pub secrets_file: Option<PathBuf>,
    /// The host names served behind the shared front door (normalized); `None` when the router
    /// listens on `listen` itself.
    pub hosts: Option<Vec<String>>,
    /// The front door's registration socket, absolute; `None` for the default.
    pub front_door_socket: Option<PathBuf>,
    /// The router's access log, absolute; `None` writes none.
    pub access_log: Option<PathBuf>,
    /// The access log's rotation size, in MiB.
    pub access_log_max_mb: u32,
    /// Rotated access log files kept.
    pub access_log_keep: u32,
    /// HTTPS on the router (`https_listen` and its certificates).
    pub https: Option<HttpsConfig>,
}

/// `[host] https_listen` and where its certificates come from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HttpsConfig {
    /// Where TLS is terminated.
    pub listen: SocketAddr,
    /// The certificates.
    pub certificates: TlsCertificates,
}

/// Where the router's certificates come from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum TlsCertificates {
    /// `tls_certificate_file` and `tls_key_file`, absolute.
    Files {
        /// The certificate chain.
        certificate: PathBuf,
        /// Its key.
        key: PathBuf,
    },
    /// `acme_*`.
    Acme {
        /// The names, lowercase.
        hosts: Vec<String>,
        /// The contact address.
        email: Option<String>,
        /// The directory URL.
        directory: String,
        /// `http-01` or `tls-alpn-01`.
        challenge: String,
        /// An extra root for the CA's HTTPS, absolute.
        ca_file: Option<PathBuf>,
    },
}

/// `[env]` and `[secrets]`: the app's own environment, merged from every layer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AppEnvConfig {
    /// Plain variables.
    pub vars: std::collections::BTreeMap<String, String>,
    /// Secrets by name: references (AWS) that the runtime resolves; never values.
    pub secrets: std::collections::BTreeMap<String, String>,
}

/// Target-tracking autoscaling of each version's service (`[aws] max_count` and its siblings).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Autoscaling {
    /// Fewest tasks.
    pub min: u32,
    /// Most tasks.
    pub max: u32,
    /// CPU percent to hold; `None`: no CPU policy.
    pub cpu_percent: Option<u32>,
    /// Memory percent to hold; `None`: no memory policy.
    pub memory_percent: Option<u32>,
    /// Requests per task per minute to hold; `None`: no request policy.
    pub requests_per_target: Option<u32>,
}

/// `[aws]`: the AWS provider and its baseline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AwsConfig {
    /// The region, if set here rather than by the SDK's chain.
    pub region: Option<String>,
    /// The named profile.
    pub profile: Option<String>,
    /// An endpoint to send every AWS call to (moto in tests).
    pub endpoint_url: Option<String>,
    /// Fargate CPU units.
    pub cpu: u32,
    /// Fargate memory in MiB.
    pub memory: u32,
    /// Tasks per version.
    pub desired_count: u32,
    /// Autoscaling of each version (`max_count` set); `None`: `desired_count` tasks each.
    pub autoscaling: Option<Autoscaling>,
    /// The share of tasks beyond `on_demand_base` on Fargate Spot, in percent.
    pub spot_percent: u32,
    /// Tasks of each version always on regular Fargate.
    pub on_demand_base: u32,
    /// The public domain.
    pub domain: Option<String>,
    /// A certificate to use instead of requesting one.
    pub certificate_arn: Option<String>,
    /// NAT gateway layout.
    pub nat: Nat,
    /// The app's start command inside the image (run by the agent with `sh -c`).
    pub command: Option<String>,
    /// A Route 53 zone that validates the requested certificate automatically.
    pub hosted_zone_id: Option<String>,
    /// The baseline VPC's range.
    pub vpc_cidr: String,
    /// The load balancer's idle timeout in seconds.
    pub idle_timeout_seconds: u32,
    /// Log retention in days.
    pub log_retention_days: u32,
    /// Tagged images the repository keeps.
    pub keep_images: u32,
    /// Where alarms are mailed.
    pub alarm_email: Option<String>,
    /// The SNS topic alarms notify.
    pub alarm_topic_arn: Option<String>,
    /// The 5xx share (percent) that raises the alarm.
    pub alarm_5xx_percent: u32,
    /// The ALB access logs' bucket.
    pub access_logs_bucket: Option<String>,
    /// The ALB access logs' key prefix.
    pub access_logs_prefix: Option<String>,
    /// Whether the baseline puts a WAF web ACL in front of the load balancer.
    pub waf: bool,
    /// The WAF's per-IP limit of requests in five minutes.
    pub waf_rate_limit: u32,
    /// Seconds ECS ignores failing health checks of a new task; `None` means the deploy's health
    /// timeout (see [`Config::health_check_grace_seconds`]).
    pub health_check_grace_seconds: Option<u32>,
    /// The tasks' CPU architecture.
    pub architecture: flotilla_baseline::Architecture,
    /// Whether the app container's root filesystem is read-only.
    pub read_only_root: bool,
    /// The app container's user.
    pub user: Option<String>,
    /// Whether ECS Exec is allowed.
    pub enable_execute_command: bool,
    /// A prebuilt agent image.
    pub agent_image: Option<String>,
    /// Baseline override: listener.
    pub listener_arn: Option<String>,
    /// Baseline override: private subnets.
    pub subnets: Option<Vec<String>>,
    /// Baseline override: task security groups.
    pub security_groups: Option<Vec<String>>,
    /// Baseline override: ECS cluster.
    pub cluster: Option<String>,
    /// Baseline override: log group.
    pub log_group: Option<String>,
    /// Baseline override: ECR repository.
    pub repository: Option<String>,
    /// Baseline override: execution role.
    pub execution_role_arn: Option<String>,
    /// Baseline override: task role.
    pub task_role_arn: Option<String>,
}

/// One resolved key for `config check`: its value and where it came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Sourced {
    /// The dotted key.
    pub key: String,
    /// The value, or `None` when unset.
    pub value: Option<Val>,
    /// Where it came from.
    pub origin: Origin,
}

/// The resolved, validated configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Config {
    /// The config file used, if any.
    pub file: Option<PathBuf>,
    /// The app's root: the config file's directory (or the current directory without one).
    pub root: PathBuf,
    /// The deployment name.
    pub name: DeploymentName,
    /// The provider.
    pub provider: ProviderKind,
    /// `[app]`.
    pub app: AppConfig,
    /// `[drain]`.
    pub drain: DrainConfig,
    /// `[reaper]`.
    pub reaper: ReaperConfig,
    /// `[canary]`.
    pub canary: CanaryConfig,
    /// `[host]`.
    pub host: HostConfig,
    /// `[aws]`.
    pub aws: AwsConfig,
    /// `[env]` and `[secrets]`.
    pub env: AppEnvConfig,
    /// Every key with its value and origin, in schema order.
    #[serde(skip)]
    pub sources: Vec<Sourced>,
}

impl Config {
    /// What this configuration exposes that the user may not mean to: today, a host status page
    /// reachable from other machines (its token, required there, travels over plain HTTP).
    pub fn exposure_warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let admin = self.host.admin_listen;
        if self.provider == ProviderKind::Host && !admin.ip().is_loopback() {
            out.push(format!(
                "`host.admin_listen` {admin} is not a loopback address: the status page is served \
                 over plain HTTP, so its token crosses the network in clear; use \
                 127.0.0.1:{port} and an SSH tunnel unless other machines must see it",
                port = admin.port()
            ));
        }
        out
    }

    /// Seconds ECS ignores failing load balancer health checks of a new task: `[aws]
    /// health_check_grace_seconds`, or else as long as a deploy waits for health, so ECS never
    /// replaces a slow first start (an image pull through NAT) while the deploy still waits.
    #[cfg_attr(not(feature = "aws"), allow(dead_code))]
    pub fn health_check_grace_seconds(&self) -> u32 {
        self.aws
            .health_check_grace_seconds
            .unwrap_or_else(|| u32::try_from(self.app.health_timeout.as_secs()).unwrap_or(u32::MAX))
    }

    /// Instances each version runs on the configured provider.
    pub fn instances(&self) -> u32 {
        match self.provider {
            ProviderKind::Host => self.host.instances,
            ProviderKind::Aws => self.aws.desired_count,
        }
    }
}

/// Everything [`load`] needs from the outside world, so tests can supply it.
pub struct Inputs<'a> {
    /// `--config` / `FLOTILLA_CONFIG`, if given.
    pub explicit: Option<&'a Path>,
    /// The current directory.
    pub cwd: &'a Path,
    /// Reads an environment variable.
    pub env: &'a dyn Fn(&str) -> Option<String>,
    /// The flags.
    pub overrides: &'a Overrides,
}

/// Finds `flotilla.toml` in `start` or the nearest parent that has one.
pub fn find_file(start: &Path) -> Option<PathBuf> {
    start
        .ancestors()
        .map(|dir| dir.join(FILE_NAME))
        .find(|candidate| candidate.is_file())
}

/// How a path is shown in messages: relative to `cwd` when inside it, else as it is.
pub fn display_path(path: &Path, cwd: &Path) -> String {
    path.strip_prefix(cwd)
        .map(Path::to_path_buf)
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}

/// Finds, reads and resolves the configuration.
pub fn load(inputs: &Inputs<'_>) -> Result<Config, ConfigError> {
    let path = match inputs.explicit {
        Some(explicit) => Some(inputs.cwd.join(explicit)),
        None => find_file(inputs.cwd),
    };
    let Some(path) = path else {
        // No file: the environment and the flags may still configure everything but need a name.
        let named = inputs.overrides.name.is_some()
            || (inputs.env)("FLOTILLA_NAME").is_some_and(|v| !v.is_empty());
        if !named {
            return Err(ConfigError::NotFound {
                searched_from: inputs.cwd.to_path_buf(),
            });
        }
        return resolve::resolve(None, inputs.cwd, inputs.env, inputs.overrides);
    };
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Unreadable {
        path: path.clone(),
        source,
    })?;
    let shown = display_path(&path, inputs.cwd);
    let root = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| inputs.cwd.to_path_buf());
    let file = resolve::FileInput {
        path: &path,
        shown: &shown,
        text: &text,
    };
    resolve::resolve(Some(file), &root, inputs.env, inputs.overrides)
}

/// Resolves configuration from text, for tests and `init`'s self-check.
pub fn resolve_text(
    shown: &str,
    text: &str,
    root: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    overrides: &Overrides,
) -> Result<Config, ConfigError> {
    let path = root.join(shown);
    let file = resolve::FileInput {
        path: &path,
        shown,
        text,
    };
    resolve::resolve(Some(file), root, env, overrides)
}
