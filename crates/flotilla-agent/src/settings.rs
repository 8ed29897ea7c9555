//! The agent's resolved settings, and how they are read from `FLOTILLA_*` environment variables.
//!
//! Precedence, lowest first: built-in defaults < environment < flags ([`AgentFlags`]). The CLI
//! may also overwrite fields from `flotilla.toml` before applying flags; inside a container the
//! environment is usually all there is (the AWS task definition sets it).
//!
//! Every problem is reported at once, in [`SettingsError::problems`].

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use flotilla_core::names::{DEFAULT_AFFINITY_HEADER, DEFAULT_AFFINITY_QUERY};
use flotilla_core::{DeploymentId, DeploymentName, InstanceId};

/// The default port the app is told to listen on (`[app] port`'s default).
pub const DEFAULT_APP_PORT: u16 = 8000;

/// The default health path (`[app] health_path`'s default).
pub const DEFAULT_HEALTH_PATH: &str = "/healthz";

/// The default stop budget (`[app] stop_timeout_seconds`, ECS's default `stopTimeout`).
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// The longest the app gets between SIGTERM and SIGKILL, out of the stop budget.
pub const MAX_APP_STOP_GRACE: Duration = Duration::from_secs(10);

/// The default keep-alive idle timeout of client connections: above the baseline ALB's 120 s idle
/// timeout, so the agent never closes a connection the load balancer is about to reuse (which the
/// load balancer would answer with a 502).
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(130);

/// What the proxy's own shutdown gets, after the session wait, to finish and cut.
pub const PROXY_CUT_DEADLINE: Duration = Duration::from_secs(1);

/// The environment variables the agent reads, with what each sets.
pub const ENV_VARS: &[(&str, &str)] = &[
    (
        "FLOTILLA_DEPLOYMENT_NAME",
        "deployment name (required; FLOTILLA_NAME also works)",
    ),
    ("FLOTILLA_DEPLOYMENT_ID", "deployment id (required)"),
    (
        "FLOTILLA_INSTANCE",
        "this instance's id (default: ECS task id, else the host name)",
    ),
    (
        "FLOTILLA_AGENT_LISTEN",
        "where the agent listens (default 0.0.0.0:8000, or :8001 when the app uses 8000)",
    ),
    (
        "FLOTILLA_APP_PORT",
        "the port given to the app in PORT (default 8000)",
    ),
    ("FLOTILLA_APP_HEALTH_PATH", "health path (default /healthz)"),
    (
        "FLOTILLA_APP_AFFINITY_HEADER",
        "affinity header (default X-Flotilla-Deployment)",
    ),
    (
        "FLOTILLA_APP_AFFINITY_QUERY",
        "affinity query parameter (default flotilla_deployment)",
    ),
    (
        "FLOTILLA_APP_INJECT_CLIENT",
        "true to inject the browser client into HTML",
    ),
    (
        "FLOTILLA_APP_STOP_TIMEOUT_SECONDS",
        "SIGTERM-to-exit budget (default 30)",
    ),
    (
        "FLOTILLA_DRAIN_POLL_SECONDS",
        "drain state poll interval (default 5)",
    ),
    (
        "FLOTILLA_DRAIN_GRACE_SECONDS",
        "how long a draining instance must have had no session before it reports ready (default 30)",
    ),
    (
        "FLOTILLA_AGENT_KEEPALIVE_SECONDS",
        "idle keep-alive timeout; keep it above the load balancer's idle timeout (default 130)",
    ),
    (
        "FLOTILLA_AGENT_EMF",
        "false to stop printing the ShutdownReady EMF line per poll (default true)",
    ),
    (
        "FLOTILLA_SCALE_IN_PROTECTION",
        "true to hold ECS task scale-in protection while sessions live (needs ECS_AGENT_URI, \
         which ECS sets; default false)",
    ),
];

/// Everything the agent needs to run, resolved and checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentSettings {
    /// Where the agent accepts traffic (the container port on Fargate).
    pub listen: SocketAddr,
    /// The port the app is told to listen on (`PORT`); the agent forwards to `127.0.0.1:<port>`.
    pub app_port: u16,
    /// The app's command and arguments (run directly, not through a shell).
    pub command: Vec<String>,
    /// The deployment name.
    pub deployment_name: DeploymentName,
    /// This version's id, stamped on every response and matched as affinity.
    pub deployment_id: DeploymentId,
    /// This instance's id; `None` discovers it (ECS task metadata, else the host name).
    pub instance: Option<InstanceId>,
    /// The path the load balancer checks, answered by the agent after probing the app's own.
    pub health_path: String,
    /// The affinity request header (also the response header naming the version).
    pub affinity_header: String,
    /// The affinity query parameter (WebSocket and EventSource URLs).
    pub affinity_query: String,
    /// Insert the browser client's `<script>` tag into HTML pages.
    pub inject_client: bool,
    /// How often the version's drain state is read (jittered by ±20 %).
    pub drain_poll: Duration,
    /// How long a draining instance must have had no session (counted from the last one seen)
    /// before it reports ready.
    pub drain_grace: Duration,
    /// On SIGTERM, how long live sessions may continue before they are cut.
    pub session_wait: Duration,
    /// After the app is signalled, how long it may take to exit before SIGKILL.
    pub app_stop_grace: Duration,
    /// How long a probe of the app's health path may take.
    pub probe_timeout: Duration,
    /// How long an idle keep-alive client connection stays open (also the time a client has to
    /// send a request head). Must exceed the load balancer's idle timeout.
    pub keepalive: Duration,
    /// Print a CloudWatch EMF `ShutdownReady` line on stdout per poll.
    pub emf: bool,
    /// The ECS agent endpoint (`ECS_AGENT_URI`) to hold task scale-in protection through while
    /// sessions live (see [`crate::protection`]); `None`: no protection.
    pub scale_in_protection: Option<String>,
}

/// The command-line flags of `flotilla agent`; they win over the environment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentFlags {
    /// `--listen ADDR`.
    pub listen: Option<SocketAddr>,
    /// `--app-port PORT`.
    pub app_port: Option<u16>,
    /// `-- COMMAND...`.
    pub command: Vec<String>,
}

/// The settings could not be resolved; every problem found is listed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid agent settings: {}", problems.join("; "))]
pub struct SettingsError {
    /// Each problem, naming the variable or flag and what to do.
    pub problems: Vec<String>,
}

impl AgentSettings {
    /// Settings with every default, for `name`/`id` running `command`.
    pub fn new(name: DeploymentName, id: DeploymentId, command: Vec<String>) -> Self {
        let (session_wait, app_stop_grace) = split_stop_timeout(DEFAULT_STOP_TIMEOUT);
        AgentSettings {
            listen: default_listen(DEFAULT_APP_PORT),
            app_port: DEFAULT_APP_PORT,
            command,
            deployment_name: name,
            deployment_id: id,
            instance: None,
            health_path: DEFAULT_HEALTH_PATH.to_owned(),
            affinity_header: DEFAULT_AFFINITY_HEADER.to_owned(),
            affinity_query: DEFAULT_AFFINITY_QUERY.to_owned(),
            inject_client: false,
            drain_poll: Duration::from_secs(5),
            drain_grace: Duration::from_secs(30),
            session_wait,
            app_stop_grace,
            probe_timeout: Duration::from_secs(2),
            keepalive: DEFAULT_KEEPALIVE,
            emf: true,
            scale_in_protection: None,
        }
    }

    /// Reads the settings from `FLOTILLA_*` variables through `lookup` (pass
    /// `|k| std::env::var(k).ok()`), then applies `flags`. See [`ENV_VARS`].
    pub fn from_env(
        lookup: impl Fn(&str) -> Option<String>,
        flags: AgentFlags,
    ) -> Result<Self, SettingsError> {
        let mut problems = Vec::new();
        let get = |key: &str| lookup(key).filter(|v| !v.trim().is_empty());

        let name = match get("FLOTILLA_DEPLOYMENT_NAME").or_else(|| get("FLOTILLA_NAME")) {
            Some(v) => DeploymentName::new(v.trim())
                .map_err(|e| problems.push(format!("FLOTILLA_DEPLOYMENT_NAME: {e}")))
                .ok(),
            None => {
                problems.push(
                    "FLOTILLA_DEPLOYMENT_NAME is not set; the agent runs one version of a \
                     deployment (set it, e.g. FLOTILLA_DEPLOYMENT_NAME=shop, to run it by hand)"
                        .to_owned(),
                );
                None
            }
        };
        let id = match get("FLOTILLA_DEPLOYMENT_ID") {
            Some(v) => DeploymentId::new(v.trim())
                .map_err(|e| problems.push(format!("FLOTILLA_DEPLOYMENT_ID: {e}")))
                .ok(),
            None => {
                problems.push(
                    "FLOTILLA_DEPLOYMENT_ID is not set; flotilla sets it for every version (set \
                     it, e.g. FLOTILLA_DEPLOYMENT_ID=20260101-000000-dev1, to run it by hand)"
                        .to_owned(),
                );
                None
            }
        };
        let instance = get("FLOTILLA_INSTANCE").and_then(|v| {
            InstanceId::new(v.trim())
                .map_err(|e| problems.push(format!("FLOTILLA_INSTANCE: {e}")))
                .ok()
        });

        let app_port = match flags.app_port {
            Some(port) => Some(port),
            None => match get("FLOTILLA_APP_PORT") {
                Some(v) => parse_port("FLOTILLA_APP_PORT", &v, &mut problems),
                None => Some(DEFAULT_APP_PORT),
            },
        };
        let listen = match flags.listen {
            Some(addr) => Some(addr),
            None => match get("FLOTILLA_AGENT_LISTEN") {
                Some(v) => v
                    .trim()
                    .parse::<SocketAddr>()
                    .map_err(|_| {
                        problems.push(format!(
                            "FLOTILLA_AGENT_LISTEN `{v}` is not an address; write IP:PORT, e.g. \
                             0.0.0.0:8000"
                        ))
                    })
                    .ok(),
                None => app_port.map(default_listen),
            },
        };

        let health_path =
            get("FLOTILLA_APP_HEALTH_PATH").unwrap_or_else(|| DEFAULT_HEALTH_PATH.to_owned());
        let affinity_header = get("FLOTILLA_APP_AFFINITY_HEADER")
            .unwrap_or_else(|| DEFAULT_AFFINITY_HEADER.to_owned());
        let affinity_query =
            get("FLOTILLA_APP_AFFINITY_QUERY").unwrap_or_else(|| DEFAULT_AFFINITY_QUERY.to_owned());
        let inject_client = parse_bool(
            "FLOTILLA_APP_INJECT_CLIENT",
            get("FLOTILLA_APP_INJECT_CLIENT"),
            false,
            &mut problems,
        );
        let emf = parse_bool(
            "FLOTILLA_AGENT_EMF",
            get("FLOTILLA_AGENT_EMF"),
            true,
            &mut problems,
        );
        let protect = parse_bool(
            "FLOTILLA_SCALE_IN_PROTECTION",
            get("FLOTILLA_SCALE_IN_PROTECTION"),
            false,
            &mut problems,
        );
        let scale_in_protection = match (protect, get("ECS_AGENT_URI")) {
            (false, _) => None,
            (true, Some(uri)) if uri.starts_with("http://") => Some(uri),
            (true, Some(uri)) => {
                problems.push(format!(
                    "ECS_AGENT_URI `{uri}` is not an http:// URL; it is set by ECS, so unset \
                     FLOTILLA_SCALE_IN_PROTECTION outside ECS"
                ));
                None
            }
            (true, None) => {
                problems.push(
                    "FLOTILLA_SCALE_IN_PROTECTION is true but ECS_AGENT_URI is not set: task \
                     scale-in protection works only in an ECS task (ECS sets it); unset \
                     FLOTILLA_SCALE_IN_PROTECTION elsewhere"
                        .to_owned(),
                );
                None
            }
        };
        let poll = parse_seconds(
            "FLOTILLA_DRAIN_POLL_SECONDS",
            get("FLOTILLA_DRAIN_POLL_SECONDS"),
            5,
            1..=3600,
            &mut problems,
        );
        let grace = parse_seconds(
            "FLOTILLA_DRAIN_GRACE_SECONDS",
            get("FLOTILLA_DRAIN_GRACE_SECONDS"),
            30,
            0..=86_400,
            &mut problems,
        );
        let stop = parse_seconds(
            "FLOTILLA_APP_STOP_TIMEOUT_SECONDS",
            get("FLOTILLA_APP_STOP_TIMEOUT_SECONDS"),
            DEFAULT_STOP_TIMEOUT.as_secs(),
            1..=3600,
            &mut problems,
        );

        let keepalive = parse_seconds(
            "FLOTILLA_AGENT_KEEPALIVE_SECONDS",
            get("FLOTILLA_AGENT_KEEPALIVE_SECONDS"),
            DEFAULT_KEEPALIVE.as_secs(),
            1..=4100,
            &mut problems,
        );

        let (Some(name), Some(id), Some(app_port), Some(listen)) = (name, id, app_port, listen)
        else {
            return Err(SettingsError { problems });
        };
        let mut settings = AgentSettings::new(name, id, flags.command);
        settings.listen = listen;
        settings.app_port = app_port;
        settings.instance = instance;
        settings.health_path = health_path;
        settings.affinity_header = affinity_header;
        settings.affinity_query = affinity_query;
        settings.inject_client = inject_client;
        settings.emf = emf;
        settings.scale_in_protection = scale_in_protection;
        settings.drain_poll = poll;
        settings.drain_grace = grace;
        settings.keepalive = keepalive;
        settings.set_stop_timeout(stop);
        problems.extend(settings.problems());
        if problems.is_empty() {
            Ok(settings)
        } else {
            Err(SettingsError { problems })
        }
    }

    /// Sets the session wait and the app's stop grace from a whole stop budget (`[app]
    /// stop_timeout_seconds`), as [`split_stop_timeout`] does.
    pub fn set_stop_timeout(&mut self, total: Duration) {
        let (session_wait, app_stop_grace) = split_stop_timeout(total);
        self.session_wait = session_wait;
        self.app_stop_grace = app_stop_grace;
    }

    /// Everything wrong with these settings (empty when they are usable).
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.command.is_empty() {
            problems.push(
                "no app command; put it after `--`, e.g. `flotilla agent -- ./server`".to_owned(),
            );
        }
        if self.app_port == 0 {
            problems.push("the app port must be between 1 and 65535".to_owned());
        }
        if self.app_port == self.listen.port() {
            problems.push(format!(
                "the app and the agent cannot both use port {}; give the app another port with \
                 --app-port (or FLOTILLA_APP_PORT)",
                self.app_port
            ));
        }
        if !self.health_path.starts_with('/') || self.health_path.contains(['?', '#', ' ']) {
            problems.push(format!(
                "health path `{}` must be a plain path starting with `/`, e.g. /healthz",
                self.health_path
            ));
        }
        if flotilla_proxy::ProxyConfig::header_name(&self.affinity_header).is_err() {
            problems.push(format!(
                "affinity header `{}` is not a valid HTTP header name; use letters, digits and \
                 `-`, e.g. X-Flotilla-Deployment",
                self.affinity_header
            ));
        }
        let query_ok = !self.affinity_query.is_empty()
            && self
                .affinity_query
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !query_ok {
            problems.push(format!(
                "affinity query parameter `{}` must be letters, digits, `-`, `_` or `.`, e.g. \
                 flotilla_deployment",
                self.affinity_query
            ));
        }
        if self.drain_poll.is_zero() {
            problems.push("the drain poll interval must be more than zero".to_owned());
        }
        problems
    }
}

/// Splits a stop budget (ECS `stopTimeout`: SIGTERM to SIGKILL of the whole container) into the
/// time live sessions may continue and the time the app gets to exit after its own SIGTERM.
///
/// The app gets a third of the budget, at most [`MAX_APP_STOP_GRACE`]; the proxy's cut takes
/// [`PROXY_CUT_DEADLINE`]; sessions get the rest. 30 s: sessions 19 s, proxy 1 s, app 10 s.
pub fn split_stop_timeout(total: Duration) -> (Duration, Duration) {
    let app = (total / 3).min(MAX_APP_STOP_GRACE);
    let sessions = total.saturating_sub(app).saturating_sub(PROXY_CUT_DEADLINE);
    (sessions, app)
}

/// The default listen address for an app on `app_port`: all interfaces, port 8000 (8001 when the
/// app itself uses 8000), as in the AWS task definition.
pub fn default_listen(app_port: u16) -> SocketAddr {
    let port = if app_port == 8000 { 8001 } else { 8000 };
    SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)
}

fn parse_port(key: &str, value: &str, problems: &mut Vec<String>) -> Option<u16> {
    match value.trim().parse::<u16>() {
        Ok(port) if port > 0 => Some(port),
        _ => {
            problems.push(format!(
                "{key} `{value}` is not a port; use a number from 1 to 65535"
            ));
            None
        }
    }
}

fn parse_bool(key: &str, value: Option<String>, default: bool, problems: &mut Vec<String>) -> bool {
    let Some(value) = value else {
        return default;
    };
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => true,
        "0" | "false" | "no" | "off" => false,
        _ => {
            problems.push(format!(
                "{key} `{value}` is not a boolean; use true or false"
            ));
            default
        }
    }
}

fn parse_seconds(
    key: &str,
    value: Option<String>,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
    problems: &mut Vec<String>,
) -> Duration {
    let Some(value) = value else {
        return Duration::from_secs(default);
    };
    match value.trim().parse::<u64>() {
        Ok(secs) if range.contains(&secs) => Duration::from_secs(secs),
        _ => {
            problems.push(format!(
                "{key} `{value}` must be a whole number of seconds from {} to {}",
                range.start(),
                range.end()
            ));
            Duration::from_secs(default)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn flags(command: &[&str]) -> AgentFlags {
        AgentFlags {
            command: command.iter().map(|s| (*s).to_owned()).collect(),
            ..Default::default()
        }
    }

    const BASE: &[(&str, &str)] = &[
        ("FLOTILLA_DEPLOYMENT_NAME", "shop"),
        ("FLOTILLA_DEPLOYMENT_ID", "20261125-190633-k3x9"),
    ];

    #[test]
    fn defaults_from_a_minimal_environment() {
        let s = AgentSettings::from_env(env(BASE), flags(&["./app"])).expect("valid");
        assert_eq!(s.listen, "0.0.0.0:8001".parse().expect("literal"));
        assert_eq!(s.app_port, 8000);
        assert_eq!(s.health_path, "/healthz");
        assert_eq!(s.affinity_header, "X-Flotilla-Deployment");
        assert_eq!(s.drain_poll, Duration::from_secs(5));
        assert_eq!(s.session_wait, Duration::from_secs(19));
        assert_eq!(s.app_stop_grace, Duration::from_secs(10));
        assert_eq!(s.keepalive, Duration::from_secs(130));
        assert!(s.emf && !s.inject_client && s.instance.is_none());
    }

    #[test]
    fn flags_win_over_the_environment() {
        let mut pairs = BASE.to_vec();
        pairs.extend([
            ("FLOTILLA_APP_PORT", "3000"),
            ("FLOTILLA_AGENT_LISTEN", "0.0.0.0:9000"),
        ]);
        let s = AgentSettings::from_env(
            env(&pairs),
            AgentFlags {
                listen: Some("127.0.0.1:7000".parse().expect("literal")),
                app_port: Some(7001),
                command: vec!["x".into()],
            },
        )
        .expect("valid");
        assert_eq!(s.listen.port(), 7000);
        assert_eq!(s.app_port, 7001);
        let s = AgentSettings::from_env(env(&pairs), flags(&["x"])).expect("valid");
        assert_eq!((s.listen.port(), s.app_port), (9000, 3000));
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let check = |pairs: &[(&str, &str)], command: &[&str], expected: &[&str]| {
            let err = AgentSettings::from_env(env(pairs), flags(command)).expect_err("invalid");
            for want in expected {
                assert!(
                    err.problems.iter().any(|p| p.contains(want)),
                    "expected a problem mentioning {want:?} in {:?}",
                    err.problems
                );
            }
            assert_eq!(err.problems.len(), expected.len(), "{:?}", err.problems);
        };
        check(
            &[],
            &["x"],
            &["FLOTILLA_DEPLOYMENT_NAME", "FLOTILLA_DEPLOYMENT_ID"],
        );
        let mut bad = BASE.to_vec();
        bad.extend([
            ("FLOTILLA_DRAIN_POLL_SECONDS", "0"),
            ("FLOTILLA_APP_INJECT_CLIENT", "maybe"),
            ("FLOTILLA_APP_HEALTH_PATH", "healthz"),
            ("FLOTILLA_APP_AFFINITY_HEADER", "bad header"),
        ]);
        check(
            &bad,
            &[],
            &[
                "FLOTILLA_DRAIN_POLL_SECONDS",
                "FLOTILLA_APP_INJECT_CLIENT",
                "health path",
                "affinity header",
                "no app command",
            ],
        );
        let mut clash = BASE.to_vec();
        clash.extend([
            ("FLOTILLA_APP_PORT", "9000"),
            ("FLOTILLA_AGENT_LISTEN", "0.0.0.0:9000"),
        ]);
        check(&clash, &["x"], &["cannot both use port 9000"]);
        let mut bad_id = BASE.to_vec();
        bad_id[1] = ("FLOTILLA_DEPLOYMENT_ID", "v1");
        check(&bad_id, &["x"], &["FLOTILLA_DEPLOYMENT_ID"]);
    }

    #[test]
    fn stop_budget_split_table() {
        let check = |total: u64, sessions_ms: u64, app_ms: u64| {
            let (sessions, app) = split_stop_timeout(Duration::from_secs(total));
            assert_eq!(
                (sessions.as_millis() as u64, app.as_millis() as u64),
                (sessions_ms, app_ms),
                "total {total}s"
            );
            assert!(sessions + app <= Duration::from_secs(total));
        };
        check(30, 19_000, 10_000);
        check(120, 109_000, 10_000);
        check(6, 3_000, 2_000);
        check(1, 0, 333);
    }
}
