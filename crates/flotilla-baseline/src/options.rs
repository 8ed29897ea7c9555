//! What a baseline is built from: [`BaselineOptions`], its parts, and their validation, which
//! reports every problem at once with what to do about each.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use flotilla_core::DeploymentName;
use flotilla_core::names::{DEFAULT_AFFINITY_HEADER, DEFAULT_AFFINITY_QUERY};
use flotilla_core::reaper::ReapPolicy;
use serde::{Deserialize, Serialize};

/// The default of `[app] port`, the port the app listens on behind the agent.
pub const DEFAULT_APP_PORT: u16 = 8000;

/// Log retention periods CloudWatch Logs accepts, in days.
pub const LOG_RETENTION_DAYS: &[u32] = &[
    1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922,
    3288, 3653,
];

/// How the load balancer speaks TLS.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "mode")]
pub enum TlsMode {
    /// The stack requests an ACM certificate for `domain`, validated through DNS.
    ///
    /// With `hosted_zone_id` (a Route 53 zone of the same account) CloudFormation writes the
    /// validation records itself; without it, someone must create the CNAME records that ACM asks
    /// for before stack creation can finish (see [`crate::contract::CERTIFICATE_LOGICAL_ID`]).
    Acm {
        /// The name the certificate is for, e.g. `app.example.com` or `*.example.com`.
        domain: String,
        /// Further names on the same certificate.
        #[serde(default)]
        alternative_names: Vec<String>,
        /// A Route 53 hosted zone id for automatic validation, e.g. `Z0123456789ABCDEFGHIJ`.
        #[serde(default)]
        hosted_zone_id: Option<String>,
    },
    /// A certificate the user brings (already issued, in the stack's region).
    Certificate {
        /// Its ARN, `arn:aws:acm:<region>:<account>:certificate/<id>`.
        certificate_arn: String,
        /// The domain it serves, used for the stack's `Url` output when given.
        #[serde(default)]
        domain: Option<String>,
    },
    /// No domain and no TLS: the load balancer answers plain HTTP on port 80 only.
    HttpOnly,
}

impl TlsMode {
    /// Whether the load balancer has an HTTPS listener.
    pub fn has_tls(&self) -> bool {
        !matches!(self, TlsMode::HttpOnly)
    }

    /// The domain users reach the application at, if one is known.
    pub fn domain(&self) -> Option<&str> {
        match self {
            TlsMode::Acm { domain, .. } => Some(domain),
            TlsMode::Certificate { domain, .. } => domain.as_deref(),
            TlsMode::HttpOnly => None,
        }
    }
}

/// How many NAT gateways give the private subnets their way out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NatMode {
    /// One NAT gateway for both zones: cheaper; tasks lose egress if its zone fails.
    #[default]
    Single,
    /// One NAT gateway per zone: each zone keeps its egress when the other fails.
    PerAz,
}

impl NatMode {
    /// The spelling used in `flotilla.toml` (`single` or `per-az`).
    pub fn as_str(self) -> &'static str {
        match self {
            NatMode::Single => "single",
            NatMode::PerAz => "per-az",
        }
    }
}

impl fmt::Display for NatMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A NAT mode spelling that is neither `single` nor `per-az`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("nat = {0:?} is not a NAT mode; use \"single\" (one gateway) or \"per-az\" (one per zone)")]
pub struct UnknownNatMode(pub String);

impl FromStr for NatMode {
    type Err = UnknownNatMode;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "single" => Ok(NatMode::Single),
            "per-az" => Ok(NatMode::PerAz),
            other => Err(UnknownNatMode(other.to_owned())),
        }
    }
}

/// The CPU architecture the reaper's `bootstrap` binary is built for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Architecture {
    /// `x86_64`.
    #[default]
    X86_64,
    /// `arm64` (Graviton).
    Arm64,
}

impl Architecture {
    /// The name Lambda uses.
    pub fn as_lambda(self) -> &'static str {
        match self {
            Architecture::X86_64 => "x86_64",
            Architecture::Arm64 => "arm64",
        }
    }

    /// The name ECS uses in a task definition's `runtimePlatform.cpuArchitecture`.
    pub fn as_ecs(self) -> &'static str {
        match self {
            Architecture::X86_64 => "X86_64",
            Architecture::Arm64 => "ARM64",
        }
    }

    /// The architecture as an image's config names it (`docker image inspect`'s `Architecture`).
    pub fn as_image(self) -> &'static str {
        match self {
            Architecture::X86_64 => "amd64",
            Architecture::Arm64 => "arm64",
        }
    }

    /// The platform for `docker build --platform` and `docker pull --platform`.
    pub fn as_platform(self) -> &'static str {
        match self {
            Architecture::X86_64 => "linux/amd64",
            Architecture::Arm64 => "linux/arm64",
        }
    }

    /// Parses `x86_64` (also `amd64`) or `arm64` (also `aarch64`).
    pub fn parse(text: &str) -> Option<Architecture> {
        match text {
            "x86_64" | "amd64" => Some(Architecture::X86_64),
            "arm64" | "aarch64" => Some(Architecture::Arm64),
            _ => None,
        }
    }
}

/// The web ACL in front of the load balancer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WafOptions {
    /// Requests one client IP address may make in any five minutes before it is blocked for a
    /// while (AWS WAF's rate-based rule: 10 to 2,000,000,000).
    pub rate_limit: u32,
}

impl Default for WafOptions {
    fn default() -> Self {
        WafOptions { rate_limit: 2000 }
    }
}

/// Where the load balancer writes its access logs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessLogs {
    /// An existing bucket whose policy lets Elastic Load Balancing write to it.
    pub bucket: String,
    /// A key prefix inside it (no leading or trailing `/`); empty for none.
    #[serde(default)]
    pub prefix: String,
}

/// Who hears about alarms.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "target")]
pub enum Notifications {
    /// Nobody: alarms show on the dashboard only.
    #[default]
    None,
    /// The stack creates an SNS topic and subscribes this address (AWS mails a confirmation link).
    Email(String),
    /// An existing SNS topic, by ARN.
    Topic(String),
}

/// The reaper's schedule and policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReaperOptions {
    /// How often a pass runs: whole minutes, at least one (EventBridge's finest schedule).
    pub interval: Duration,
    /// When the reaper may act (the core's policy).
    pub policy: ReapPolicy,
    /// The architecture of the `bootstrap` binary flotilla uploads.
    pub architecture: Architecture,
}

impl Default for ReaperOptions {
    fn default() -> Self {
        ReaperOptions {
            interval: Duration::from_secs(60),
            policy: ReapPolicy::default(),
            architecture: Architecture::default(),
        }
    }
}

/// Alarm settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlarmOptions {
    /// Who is told when an alarm changes state.
    pub notifications: Notifications,
    /// The share of requests, in percent, answered 5xx by the load balancer that raises the alarm.
    pub five_xx_rate_percent: u32,
}

impl Default for AlarmOptions {
    fn default() -> Self {
        AlarmOptions {
            notifications: Notifications::None,
            five_xx_rate_percent: 5,
        }
    }
}

/// Everything the baseline template is built from. [`BaselineOptions::new`] gives the defaults.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaselineOptions {
    /// The deployment name (the environment slug) the baseline serves.
    pub name: DeploymentName,
    /// Certificate and listener mode.
    pub tls: TlsMode,
    /// One NAT gateway or one per zone.
    pub nat: NatMode,
    /// The VPC's IPv4 range, `a.b.c.d/p` with `p` from 16 to 24; split into four equal subnets.
    pub vpc_cidr: String,
    /// The load balancer's idle timeout, 1 to 4000 seconds (long-lived WebSockets want more than
    /// the AWS default of 60).
    pub idle_timeout_seconds: u32,
    /// Access logs, or `None` for none.
    pub access_logs: Option<AccessLogs>,
    /// The port the load balancer sends traffic to in each task: the in-container agent's listen
    /// port (the agent forwards to the app on `[app] port`). The tasks' security group admits
    /// this port, from the load balancer only. See [`crate::contract::default_container_port`].
    pub container_port: u16,
    /// The request header carrying a tab's version (`[app] affinity_header`).
    pub affinity_header: String,
    /// The query parameter carrying a tab's version (`[app] affinity_query`).
    pub affinity_query: String,
    /// The status a retired version's rules answer with (`[app] stale_status`, 409 or 410), set
    /// on the reaper, which retires versions.
    #[serde(default = "default_stale_status")]
    pub stale_status: u16,
    /// How long application and reaper logs are kept; one of [`LOG_RETENTION_DAYS`].
    pub log_retention_days: u32,
    /// How many tagged images the ECR lifecycle policy keeps (untagged ones go after a day).
    pub keep_images: u32,
    /// The reaper's schedule and policy.
    pub reaper: ReaperOptions,
    /// Alarms and who hears about them.
    pub alarms: AlarmOptions,
    /// A web application firewall in front of the load balancer, or `None` for none.
    pub waf: Option<WafOptions>,
    /// The app's secrets the execution role may read when a task starts: exactly these.
    #[serde(default)]
    pub secrets: SecretGrants,
}

/// The secrets the tasks' execution role is allowed to read, as IAM resources. A resource may use
/// `${AWS::Partition}`, `${AWS::Region}` and `${AWS::AccountId}` (it is written with `Fn::Sub`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretGrants {
    /// SSM parameter ARNs (`ssm:GetParameters`).
    pub ssm_parameters: Vec<String>,
    /// Secrets Manager secret ARNs (`secretsmanager:GetSecretValue`).
    pub secrets_manager: Vec<String>,
}

impl SecretGrants {
    /// Whether no secret is granted.
    pub fn is_empty(&self) -> bool {
        self.ssm_parameters.is_empty() && self.secrets_manager.is_empty()
    }
}

impl BaselineOptions {
    /// The defaults for `name` in TLS mode `tls`: a single NAT gateway, `10.0.0.0/16`, a 120 s
    /// idle timeout, no access logs, container port 8001 (the agent's port for the default app
    /// port 8000), the core's affinity keys, 30 days of logs, 30 kept images, a reaper every minute
    /// with the core's default policy, and alarms without notifications.
    pub fn new(name: DeploymentName, tls: TlsMode) -> Self {
        BaselineOptions {
            name,
            tls,
            nat: NatMode::Single,
            vpc_cidr: "10.0.0.0/16".to_owned(),
            idle_timeout_seconds: 120,
            access_logs: None,
            container_port: crate::contract::default_container_port(DEFAULT_APP_PORT),
            affinity_header: DEFAULT_AFFINITY_HEADER.to_owned(),
            affinity_query: DEFAULT_AFFINITY_QUERY.to_owned(),
            stale_status: flotilla_core::stale::DEFAULT_STALE_STATUS,
            log_retention_days: 30,
            keep_images: 30,
            reaper: ReaperOptions::default(),
            alarms: AlarmOptions::default(),
            secrets: SecretGrants::default(),
            waf: None,
        }
    }

    /// Checks every option and returns all problems found, or the parsed VPC range.
    pub fn validate(&self) -> Result<VpcRange, OptionsError> {
        let mut problems = Vec::new();
        let mut problem = |field: &'static str, message: String| {
            problems.push(OptionProblem { field, message });
        };

        match &self.tls {
            TlsMode::Acm {
                domain,
                alternative_names,
                hosted_zone_id,
            } => {
                if let Err(why) = check_domain(domain) {
                    problem("aws.domain", why);
                }
                for alt in alternative_names {
                    if let Err(why) = check_domain(alt) {
                        problem("aws.alternative_names", why);
                    }
                }
                if let Some(zone) = hosted_zone_id
                    && !(zone.starts_with('Z')
                        && (2..=32).contains(&zone.len())
                        && zone
                            .chars()
                            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit()))
                {
                    problem(
                        "aws.hosted_zone_id",
                        format!(
                            "{zone:?} is not a Route 53 hosted zone id; copy it from \
                             `aws route53 list-hosted-zones` (it looks like Z0123456789ABCDEFGHIJ)"
                        ),
                    );
                }
            }
            TlsMode::Certificate {
                certificate_arn,
                domain,
            } => {
                if !is_arn_of(certificate_arn, "acm", "certificate/") {
                    problem(
                        "aws.certificate_arn",
                        format!(
                            "{certificate_arn:?} is not an ACM certificate ARN; it looks like \
                             arn:aws:acm:<region>:<account>:certificate/<id> \
                             (`aws acm list-certificates` lists yours)"
                        ),
                    );
                }
                if let Some(d) = domain
                    && let Err(why) = check_domain(d)
                {
                    problem("aws.domain", why);
                }
            }
            TlsMode::HttpOnly => {}
        }

        let vpc = match VpcRange::parse(&self.vpc_cidr) {
            Ok(v) => Some(v),
            Err(why) => {
                problem("aws.vpc_cidr", why);
                None
            }
        };

        if !(1..=4000).contains(&self.idle_timeout_seconds) {
            problem(
                "aws.idle_timeout_seconds",
                format!(
                    "{} is outside 1..=4000, the range an ALB accepts; 120 suits most apps, \
                     more keeps quiet WebSockets open longer",
                    self.idle_timeout_seconds
                ),
            );
        }

        if let Some(logs) = &self.access_logs {
            if let Err(why) = check_bucket_name(&logs.bucket) {
                problem("aws.access_logs_bucket", why);
            }
            if logs.prefix.starts_with('/') || logs.prefix.ends_with('/') {
                problem(
                    "aws.access_logs_prefix",
                    format!("{:?} must not start or end with `/`", logs.prefix),
                );
            }
            if logs.prefix.contains("AWSLogs") {
                problem(
                    "aws.access_logs_prefix",
                    format!(
                        "{:?} must not contain `AWSLogs`; the ALB adds that part itself",
                        logs.prefix
                    ),
                );
            }
        }

        if let Some(waf) = &self.waf
            && !(10..=2_000_000_000).contains(&waf.rate_limit)
        {
            problem(
                "aws.waf_rate_limit",
                format!(
                    "{} is outside 10..=2000000000, the requests per IP address in five minutes \
                     an AWS WAF rate rule accepts",
                    waf.rate_limit
                ),
            );
        }

        if self.container_port == 0 {
            problem(
                "aws.container_port",
                "0 is not a port; the agent's port is 8000, or 8001 when the app itself uses 8000"
                    .to_owned(),
            );
        }

        let header_ok = (1..=40).contains(&self.affinity_header.len())
            && self
                .affinity_header
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !header_ok {
            problem(
                "app.affinity_header",
                format!(
                    "{:?} is not a header name an ALB rule can match (1-40 letters, digits and \
                     `-`; the load balancer drops headers with `_` or other characters in their \
                     name)",
                    self.affinity_header
                ),
            );
        }
        let query_ok = (1..=128).contains(&self.affinity_query.len())
            && self
                .affinity_query
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
        if !query_ok {
            problem(
                "app.affinity_query",
                format!(
                    "{:?} is not a query parameter name an ALB rule can match (1-128 letters, \
                     digits, `-`, `_`, `.`)",
                    self.affinity_query
                ),
            );
        }

        if !LOG_RETENTION_DAYS.contains(&self.log_retention_days) {
            problem(
                "aws.log_retention_days",
                format!(
                    "{} is not a retention CloudWatch Logs accepts; pick one of {:?}",
                    self.log_retention_days, LOG_RETENTION_DAYS
                ),
            );
        }

        if !(1..=1000).contains(&self.keep_images) {
            problem(
                "aws.keep_images",
                format!(
                    "{} is outside 1..=1000; keep at least as many images as versions you run",
                    self.keep_images
                ),
            );
        }

        let interval = self.reaper.interval;
        if interval < Duration::from_secs(60)
            || !interval.as_secs().is_multiple_of(60)
            || interval.subsec_nanos() != 0
        {
            problem(
                "reaper.interval_seconds",
                format!(
                    "{} s is not a whole number of minutes of at least one; EventBridge schedules \
                     run at most once a minute",
                    interval.as_secs_f64()
                ),
            );
        } else if interval > Duration::from_secs(24 * 3600) {
            problem(
                "reaper.interval_seconds",
                format!(
                    "{} minutes is more than a day; retired versions would linger that long",
                    interval.as_secs() / 60
                ),
            );
        }
        let policy = &self.reaper.policy;
        if policy.consecutive_ready_passes == 0 {
            problem(
                "reaper.consecutive_passes",
                "0 passes would retire a version the moment it drains; use 1 or more (2 is usual)"
                    .to_owned(),
            );
        }
        if policy.max_age < policy.min_age {
            problem(
                "reaper.max_age_seconds",
                format!(
                    "max age ({} s) is shorter than min age ({} s); raise max age",
                    policy.max_age.as_secs(),
                    policy.min_age.as_secs()
                ),
            );
        }
        if policy.deploying_timeout.is_zero() {
            problem(
                "reaper.deploying_timeout_seconds",
                "0 would clean up every deploy before it starts; give at least the time a deploy \
                 takes to get healthy (minutes)"
                    .to_owned(),
            );
        }

        if !(1..=100).contains(&self.alarms.five_xx_rate_percent) {
            problem(
                "aws.alarm_5xx_percent",
                format!(
                    "{} is not a percentage from 1 to 100",
                    self.alarms.five_xx_rate_percent
                ),
            );
        }
        match &self.alarms.notifications {
            Notifications::None => {}
            Notifications::Email(address) => {
                let ok = address.split_once('@').is_some_and(|(user, host)| {
                    !user.is_empty() && host.contains('.') && !host.starts_with('.')
                }) && !address.chars().any(char::is_whitespace);
                if !ok {
                    problem(
                        "aws.alarm_email",
                        format!("{address:?} is not an email address"),
                    );
                }
            }
            Notifications::Topic(arn) => {
                if !is_arn_of(arn, "sns", "") {
                    problem(
                        "aws.alarm_topic_arn",
                        format!(
                            "{arn:?} is not an SNS topic ARN; it looks like \
                             arn:aws:sns:<region>:<account>:<topic>"
                        ),
                    );
                }
            }
        }

        match vpc {
            Some(v) if problems.is_empty() => Ok(v),
            _ => Err(OptionsError { problems }),
        }
    }
}

/// A VPC range, parsed: the network address and its prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VpcRange {
    /// The network address.
    pub address: [u8; 4],
    /// The prefix length, 16 to 24.
    pub prefix: u8,
}

impl VpcRange {
    /// Parses `a.b.c.d/p`.
    pub fn parse(s: &str) -> Result<VpcRange, String> {
        let bad =
            || format!("{s:?} is not an IPv4 range like 10.0.0.0/16 (prefix length from 16 to 24)");
        let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        let parts: Vec<&str> = addr.split('.').collect();
        if parts.len() != 4 {
            return Err(bad());
        }
        let mut address = [0u8; 4];
        for (slot, part) in address.iter_mut().zip(&parts) {
            *slot = part.parse().map_err(|_| bad())?;
        }
        if !(16..=24).contains(&prefix) {
            return Err(format!(
                "{s:?} has prefix length {prefix}; use 16 to 24 (a VPC has room for 4 subnets \
                 of a quarter each)"
            ));
        }
        let bits = u32::from_be_bytes(address);
        let host_mask = u32::MAX >> prefix;
        if bits & host_mask != 0 {
            let network = (bits & !host_mask).to_be_bytes();
            return Err(format!(
                "{s:?} has host bits set; the network address is {}.{}.{}.{}/{prefix}",
                network[0], network[1], network[2], network[3]
            ));
        }
        Ok(VpcRange { address, prefix })
    }

    /// The range in `a.b.c.d/p` form.
    pub fn cidr(self) -> String {
        let [a, b, c, d] = self.address;
        format!("{a}.{b}.{c}.{d}/{}", self.prefix)
    }

    /// The four equal quarters of the range, in address order (public A, public B, private A,
    /// private B in the template). Computed here rather than with `Fn::Cidr`, which some
    /// CloudFormation emulators do not evaluate.
    pub fn subnet_cidrs(self) -> [String; 4] {
        let base = u32::from_be_bytes(self.address);
        let prefix = self.prefix + 2;
        let size = 1u32 << (32 - u32::from(prefix));
        std::array::from_fn(|i| {
            let [a, b, c, d] = (base + size * i as u32).to_be_bytes();
            format!("{a}.{b}.{c}.{d}/{prefix}")
        })
    }
}

/// One problem with the options: which setting, and what is wrong with it and what to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OptionProblem {
    /// The setting, named as in `flotilla.toml` (`aws.domain`, `reaper.interval_seconds`, ...).
    pub field: &'static str,
    /// What is wrong and what to do.
    pub message: String,
}

/// Every problem found in a set of options.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct OptionsError {
    /// The problems, in the order the settings are checked.
    pub problems: Vec<OptionProblem>,
}

impl fmt::Display for OptionsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the baseline options have {} problem(s):",
            self.problems.len()
        )?;
        for p in &self.problems {
            write!(f, "\n  {}: {}", p.field, p.message)?;
        }
        Ok(())
    }
}

fn check_domain(domain: &str) -> Result<(), String> {
    let bare = domain.strip_prefix("*.").unwrap_or(domain);
    let labels_ok = bare.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    });
    if domain.len() > 253 || !bare.contains('.') || !labels_ok {
        return Err(format!(
            "{domain:?} is not a domain name; give a lowercase name such as app.example.com \
             (a leading `*.` is allowed)"
        ));
    }
    Ok(())
}

fn check_bucket_name(bucket: &str) -> Result<(), String> {
    let ok = (3..=63).contains(&bucket.len())
        && bucket
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && bucket.starts_with(|c: char| c.is_ascii_alphanumeric())
        && bucket.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{bucket:?} is not an S3 bucket name (3-63 lowercase letters, digits, `-` and `.`)"
        ))
    }
}

/// Whether `arn` looks like `arn:<partition>:<service>:<region>:<account>:<resource_prefix>...`.
fn is_arn_of(arn: &str, service: &str, resource_prefix: &str) -> bool {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    parts.len() == 6
        && parts[0] == "arn"
        && parts[1].starts_with("aws")
        && parts[2] == service
        && !parts[3].is_empty()
        && parts[4].len() == 12
        && parts[4].chars().all(|c| c.is_ascii_digit())
        && parts[5].starts_with(resource_prefix)
        && parts[5].len() > resource_prefix.len()
}

/// The stale status of options written before `stale_status` existed.
fn default_stale_status() -> u16 {
    flotilla_core::stale::DEFAULT_STALE_STATUS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name() -> DeploymentName {
        DeploymentName::new("prod").expect("valid")
    }

    fn fields(opts: &BaselineOptions) -> Vec<&'static str> {
        match opts.validate() {
            Ok(_) => Vec::new(),
            Err(e) => e.problems.iter().map(|p| p.field).collect(),
        }
    }

    #[test]
    fn defaults_are_valid_in_every_tls_mode() {
        for tls in [
            TlsMode::HttpOnly,
            TlsMode::Acm {
                domain: "app.example.com".into(),
                alternative_names: vec!["*.example.com".into()],
                hosted_zone_id: Some("Z0123456789ABCDEFGHIJ".into()),
            },
            TlsMode::Certificate {
                certificate_arn: "arn:aws:acm:us-east-1:123456789012:certificate/abc-123".into(),
                domain: None,
            },
        ] {
            let opts = BaselineOptions::new(name(), tls);
            let range = opts.validate().expect("defaults are valid");
            assert_eq!(range.cidr(), "10.0.0.0/16");
        }
    }

    #[test]
    fn an_affinity_header_the_alb_would_drop_is_refused() {
        for (header, ok) in [
            ("X-Flotilla-Deployment", true),
            ("X_Flotilla_Deployment", false),
            ("X.Version", false),
            ("", false),
        ] {
            let mut opts = BaselineOptions::new(name(), TlsMode::HttpOnly);
            opts.affinity_header = header.to_owned();
            let want: &[&str] = if ok { &[] } else { &["app.affinity_header"] };
            assert_eq!(fields(&opts), want, "{header:?}");
        }
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let mut opts = BaselineOptions::new(
            name(),
            TlsMode::Certificate {
                certificate_arn: "not-an-arn".into(),
                domain: Some("Not A Domain".into()),
            },
        );
        opts.vpc_cidr = "10.0.0.1/16".into();
        opts.idle_timeout_seconds = 0;
        opts.log_retention_days = 2;
        opts.reaper.interval = Duration::from_secs(90);
        opts.reaper.policy.consecutive_ready_passes = 0;
        opts.alarms.notifications = Notifications::Email("nobody".into());
        assert_eq!(
            fields(&opts),
            [
                "aws.certificate_arn",
                "aws.domain",
                "aws.vpc_cidr",
                "aws.idle_timeout_seconds",
                "aws.log_retention_days",
                "reaper.interval_seconds",
                "reaper.consecutive_passes",
                "aws.alarm_email",
            ]
        );
        let text = opts.validate().expect_err("invalid").to_string();
        assert!(
            text.starts_with("the baseline options have 8 problem(s):"),
            "{text}"
        );
        assert!(
            text.contains("the network address is 10.0.0.0/16"),
            "{text}"
        );
    }

    #[test]
    fn reaper_interval_limits() {
        let check = |secs: u64, ok: bool| {
            let mut opts = BaselineOptions::new(name(), TlsMode::HttpOnly);
            opts.reaper.interval = Duration::from_secs(secs);
            assert_eq!(opts.validate().is_ok(), ok, "{secs}");
        };
        check(0, false);
        check(59, false);
        check(60, true);
        check(61, false);
        check(300, true);
        check(24 * 3600, true);
        check(24 * 3600 + 60, false);
    }

    #[test]
    fn subnets_are_the_four_quarters() {
        let check = |s: &str, want: [&str; 4]| {
            let got = VpcRange::parse(s).expect("valid").subnet_cidrs();
            assert_eq!(got, want.map(str::to_owned), "{s}");
        };
        check(
            "10.0.0.0/16",
            [
                "10.0.0.0/18",
                "10.0.64.0/18",
                "10.0.128.0/18",
                "10.0.192.0/18",
            ],
        );
        check(
            "172.31.16.0/20",
            [
                "172.31.16.0/22",
                "172.31.20.0/22",
                "172.31.24.0/22",
                "172.31.28.0/22",
            ],
        );
        check(
            "192.168.1.0/24",
            [
                "192.168.1.0/26",
                "192.168.1.64/26",
                "192.168.1.128/26",
                "192.168.1.192/26",
            ],
        );
    }

    #[test]
    fn vpc_ranges() {
        let check = |s: &str, want: Option<u8>| {
            assert_eq!(VpcRange::parse(s).ok().map(|r| r.prefix), want, "{s}");
        };
        check("10.0.0.0/16", Some(16));
        check("172.31.0.0/20", Some(20));
        check("192.168.1.0/24", Some(24));
        check("10.0.0.0/15", None);
        check("10.0.0.0/25", None);
        check("10.0.0.0", None);
        check("10.0.0/16", None);
        check("300.0.0.0/16", None);
        check("10.0.1.0/16", None);
    }

    #[test]
    fn domains() {
        let check = |d: &str, ok: bool| assert_eq!(check_domain(d).is_ok(), ok, "{d}");
        check("example.com", true);
        check("*.example.com", true);
        check("a-b.c.example.com", true);
        check("localhost", false);
        check("Example.com", false);
        check("-a.example.com", false);
        check("a..example.com", false);
        check("*.*.example.com", false);
    }

    #[test]
    fn nat_mode_spellings() {
        assert_eq!("single".parse(), Ok(NatMode::Single));
        assert_eq!("per-az".parse(), Ok(NatMode::PerAz));
        let err = "perAz".parse::<NatMode>().expect_err("unknown");
        assert!(err.to_string().contains("use \"single\""), "{err}");
        assert_eq!(NatMode::PerAz.to_string(), "per-az");
    }

    #[test]
    fn arns() {
        assert!(is_arn_of(
            "arn:aws:sns:eu-west-1:123456789012:alerts",
            "sns",
            ""
        ));
        assert!(is_arn_of(
            "arn:aws-cn:acm:cn-north-1:123456789012:certificate/x",
            "acm",
            "certificate/"
        ));
        assert!(!is_arn_of("arn:aws:sns:eu-west-1:1234:alerts", "sns", ""));
        assert!(!is_arn_of(
            "arn:aws:sqs:eu-west-1:123456789012:q",
            "sns",
            ""
        ));
        assert!(!is_arn_of(
            "arn:aws:acm:eu-west-1:123456789012:certificate/",
            "acm",
            "certificate/"
        ));
    }
}
