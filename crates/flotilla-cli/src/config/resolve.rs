//! Merging the layers and validating the result into a [`Config`], collecting every problem.

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use flotilla_core::DeploymentName;
use flotilla_core::stale::{QueryPair, StaleHeader, StaleSignals};

use super::layers::{self, FileReader, Setting, Settings, Val};
use super::schema;
use super::{
    AppConfig, AppEnvConfig, AwsConfig, CanaryConfig, Config, ConfigError, DrainConfig, Framework,
    HostConfig, HttpsConfig, Location, Nat, Origin, Overrides, Problem, ProviderKind, ReaperConfig,
    Sourced, TlsCertificates,
};

/// The config file being resolved.
pub struct FileInput<'a> {
    /// Its real path.
    pub path: &'a Path,
    /// How it is shown in messages.
    pub shown: &'a str,
    /// Its text.
    pub text: &'a str,
}

/// Layers defaults, `file`, the environment and `overrides`, then validates.
pub fn resolve(
    file: Option<FileInput<'_>>,
    root: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    overrides: &Overrides,
) -> Result<Config, ConfigError> {
    let mut settings = layers::defaults();
    let mut problems = Vec::new();
    let mut sections = std::collections::BTreeMap::new();
    let whole = match &file {
        Some(f) => Location::WholeFile {
            path: f.shown.to_owned(),
        },
        None => Location::Config,
    };
    if let Some(f) = &file {
        let reader = FileReader::new(f.shown, f.text).read();
        if reader.syntax_errors {
            // What the parser recovered may be partial; checking it would report keys as missing
            // that are only unreadable. Syntax first, then everything else.
            return Err(ConfigError::Invalid {
                file: Some(f.shown.to_owned()),
                problems: reader.problems,
            });
        }
        problems.extend(reader.problems);
        settings.extend(reader.settings);
        sections = reader.sections;
    }
    let (env_settings, env_problems) = layers::read_env(env);
    settings.extend(env_settings);
    problems.extend(env_problems);
    settings.extend(layers::read_app_env(&overrides.environment));
    for (section, flag, given) in [
        ("env", "--env", &overrides.env),
        ("secrets", "--secret", &overrides.secrets),
    ] {
        let (flag_settings, flag_problems) = layers::read_app_flags(section, flag, given);
        settings.extend(flag_settings);
        problems.extend(flag_problems);
    }
    if let Some(name) = &overrides.name {
        settings.insert(
            "name".to_owned(),
            Setting {
                val: Val::Str(name.clone()),
                origin: Origin::Flag {
                    flag: "--name".to_owned(),
                },
            },
        );
    }
    if let Some(provider) = overrides.provider {
        settings.insert(
            "provider".to_owned(),
            Setting {
                val: Val::Str(provider.as_str().to_owned()),
                origin: Origin::Flag {
                    flag: "--provider".to_owned(),
                },
            },
        );
    }

    // A few defaults depend on the provider; it is known once every layer is in.
    let aws = matches!(
        settings.get("provider").map(|s| &s.val),
        Some(Val::Str(p)) if p == ProviderKind::Aws.as_str()
    );
    if aws {
        layers::aws_defaults(&mut settings);
    }
    // The preset is a layer of its own under the file; which one is known once every layer is in.
    // An unknown framework applies none and is reported by the resolver.
    let framework = match settings.get("app.framework").map(|s| &s.val) {
        Some(Val::Str(name)) => Framework::parse(name),
        _ => None,
    };
    if let Some(framework) = framework {
        layers::apply_preset(&mut settings, framework);
    }

    let mut r = Resolver {
        settings: &settings,
        problems,
        whole,
        sections: &sections,
    };
    let config = r.build(file.as_ref().map(|f| f.path.to_path_buf()), root);
    if r.problems.is_empty() && config.provider == ProviderKind::Aws {
        r.baseline_checks(&config);
    }
    let mut problems = r.problems;
    if problems.is_empty() {
        return Ok(config);
    }
    problems.sort_by_key(|p| p.location.sort_key());
    problems.dedup();
    Err(ConfigError::Invalid {
        file: file.map(|f| f.shown.to_owned()),
        problems,
    })
}

struct Resolver<'a> {
    settings: &'a Settings,
    problems: Vec<Problem>,
    /// Where to report a problem about something missing.
    whole: Location,
    sections: &'a std::collections::BTreeMap<String, Location>,
}

impl Resolver<'_> {
    fn problem_at(&mut self, setting: &Setting, message: String) {
        let location = Location::of(&setting.origin, &self.whole);
        self.problems.push(Problem { location, message });
    }

    fn setting(&self, path: &str) -> Option<&Setting> {
        self.settings.get(path)
    }

    /// An integer within `range`; 0 (and a problem) otherwise.
    fn int(&mut self, path: &str, range: RangeInclusive<i64>, hint: &str) -> i64 {
        let settings = self.settings;
        let Some(setting) = settings.get(path) else {
            return 0;
        };
        let Val::Int(n) = setting.val else {
            self.problem_at(setting, format!("`{path}` must be an integer"));
            return 0;
        };
        if range.contains(&n) {
            return n;
        }
        let message = if *range.end() == i64::MAX {
            format!("`{path}` must be {} or more, not {n}{hint}", range.start())
        } else {
            format!(
                "`{path}` must be between {} and {}, not {n}{hint}",
                range.start(),
                range.end()
            )
        };
        self.problem_at(setting, message);
        0
    }

    fn u32(&mut self, path: &str, range: RangeInclusive<i64>) -> u32 {
        u32::try_from(self.int(path, range, "")).unwrap_or(0)
    }

    fn seconds(&mut self, path: &str, range: RangeInclusive<i64>) -> Duration {
        Duration::from_secs(u64::try_from(self.int(path, range, "")).unwrap_or(0))
    }

    fn opt_str(&mut self, path: &str) -> Option<String> {
        let settings = self.settings;
        let setting = settings.get(path)?;
        match &setting.val {
            Val::Str(s) => Some(s.clone()),
            _ => {
                self.problem_at(setting, format!("`{path}` must be a string"));
                None
            }
        }
    }

    /// A string checked by `check`, which returns what is wrong with it.
    fn checked(
        &mut self,
        path: &str,
        check: impl FnOnce(&str) -> Result<(), String>,
    ) -> Option<String> {
        let value = self.opt_str(path)?;
        let settings = self.settings;
        if let Err(message) = check(&value) {
            if let Some(setting) = settings.get(path) {
                self.problem_at(setting, message);
            }
            return None;
        }
        Some(value)
    }

    fn parsed<T>(
        &mut self,
        path: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let value = self.opt_str(path)?;
        let settings = self.settings;
        match parse(&value) {
            Ok(parsed) => Some(parsed),
            Err(message) => {
                if let Some(setting) = settings.get(path) {
                    self.problem_at(setting, message);
                }
                None
            }
        }
    }

    fn opt_list(&mut self, path: &str, prefix: &str, what: &str) -> Option<Vec<String>> {
        let settings = self.settings;
        let setting = settings.get(path)?;
        let Val::List(items) = &setting.val else {
            self.problem_at(setting, format!("`{path}` must be an array of strings"));
            return None;
        };
        if items.is_empty() {
            self.problem_at(
                setting,
                format!("`{path}` is empty; list at least one {what}, or leave the key out"),
            );
            return None;
        }
        if let Some(bad) = items.iter().find(|item| !item.starts_with(prefix)) {
            self.problem_at(
                setting,
                format!(
                    "`{path}` lists {bad:?}, which is not {what} id (they start with {prefix:?})"
                ),
            );
            return None;
        }
        Some(items.clone())
    }

    /// `host.hosts`: host names for the front door, each checked and normalized.
    fn front_door_hosts(&mut self) -> Option<Vec<String>> {
        let settings = self.settings;
        let setting = settings.get("host.hosts")?;
        let Val::List(items) = &setting.val else {
            self.problem_at(
                setting,
                "`host.hosts` must be an array of strings".to_owned(),
            );
            return None;
        };
        if items.is_empty() {
            self.problem_at(
                setting,
                "`host.hosts` is empty; list the host names this app answers for, or leave the \
                 key out to serve on `listen`"
                    .to_owned(),
            );
            return None;
        }
        let mut hosts = Vec::new();
        for item in items {
            match crate::providers::check_front_door_host(item) {
                Ok(host) => hosts.push(host),
                Err(message) => {
                    self.problem_at(setting, format!("`host.hosts` lists {item:?}: {message}"));
                    return None;
                }
            }
        }
        Some(hosts)
    }

    fn bool(&mut self, path: &str) -> bool {
        let settings = self.settings;
        match settings.get(path) {
            Some(Setting {
                val: Val::Bool(b), ..
            }) => *b,
            Some(setting) => {
                self.problem_at(setting, format!("`{path}` must be true or false"));
                false
            }
            None => false,
        }
    }

    /// What the baseline template needs of the configuration (checked by `flotilla_baseline`
    /// itself), reported at the key each problem is about. Runs once everything else is valid.
    #[cfg(feature = "aws")]
    fn baseline_checks(&mut self, config: &Config) {
        let Err(problems) = super::baseline::options(config) else {
            return;
        };
        for (path, message) in problems {
            let message = format!("`{path}`: {message}");
            match self.setting(path).cloned() {
                Some(setting) => self.problem_at(&setting, message),
                None => self.missing(path, message),
            }
        }
    }

    /// Without the AWS provider built in, an AWS configuration cannot be used at all: one problem
    /// at the `provider` key says so.
    #[cfg(not(feature = "aws"))]
    fn baseline_checks(&mut self, _: &Config) {
        let message =
            "`provider` is \"aws\", but this flotilla was built without the AWS provider \
                       (the `aws` cargo feature): install a build that has it (`cargo install \
                       --path crates/flotilla-cli`) or use `provider = \"host\"`"
                .to_owned();
        match self.setting("provider").cloned() {
            Some(setting) => self.problem_at(&setting, message),
            None => self.missing("provider", message),
        }
    }

    fn missing(&mut self, path: &str, message: String) {
        let location = path
            .split_once('.')
            .and_then(|(section, _)| self.sections.get(section).cloned())
            .unwrap_or_else(|| self.whole.clone());
        self.problems.push(Problem { location, message });
    }

    fn build(&mut self, file: Option<PathBuf>, root: &Path) -> Config {
        let name = self.name();
        let provider = self.provider();
        let app = self.app(provider);
        let drain = DrainConfig {
            poll: self.seconds("drain.poll_seconds", 1..=3600),
            grace: self.seconds("drain.grace_seconds", 0..=86_400),
        };
        let reaper = self.reaper(provider, &app);
        let canary = self.canary();
        let host = self.host(provider, root);
        let aws = self.aws();
        let env = self.app_env(provider);
        self.cross_checks(provider, &app, &host, &aws);
        let sources = schema::KEYS
            .iter()
            .map(|key| {
                let path = key.path();
                let setting = self.setting(&path);
                Sourced {
                    value: setting.map(|s| s.val.clone()),
                    origin: setting.map_or(Origin::Default, |s| s.origin.clone()),
                    key: path,
                }
            })
            .chain(
                self.settings
                    .iter()
                    .filter(|(path, _)| path.starts_with("env.") || path.starts_with("secrets."))
                    .map(|(path, setting)| Sourced {
                        key: path.clone(),
                        value: Some(setting.val.clone()),
                        origin: setting.origin.clone(),
                    }),
            )
            .collect();
        Config {
            file,
            root: root.to_path_buf(),
            name,
            provider,
            app,
            drain,
            reaper,
            canary,
            host,
            aws,
            env,
            sources,
        }
    }

    fn name(&mut self) -> DeploymentName {
        let placeholder = || DeploymentName::new("app").expect("`app` is a valid name");
        if self.setting("name").is_none() {
            self.missing(
                "name",
                "missing `name`: every configuration needs a deployment name, e.g. \
                 name = \"my-app\" at the top of the file (or set FLOTILLA_NAME, or pass --name)"
                    .to_owned(),
            );
            return placeholder();
        }
        self.parsed("name", |s| {
            DeploymentName::new(s).map_err(|e| format!("invalid `name`: {e}"))
        })
        .unwrap_or_else(placeholder)
    }

    fn provider(&mut self) -> ProviderKind {
        self.parsed("provider", |s| match s {
            "host" => Ok(ProviderKind::Host),
            "aws" => Ok(ProviderKind::Aws),
            other => {
                let hint = schema::closest(other, ["host", "aws"])
                    .map(|best| format!("; did you mean \"{best}\"?"))
                    .unwrap_or_default();
                Err(format!(
                    "`provider` must be \"host\" or \"aws\", not {other:?}{hint}"
                ))
            }
        })
        .unwrap_or(ProviderKind::Host)
    }

    fn app(&mut self, provider: ProviderKind) -> AppConfig {
        let framework = self
            .parsed("app.framework", |s| {
                Framework::parse(s).ok_or_else(|| {
                    let names = Framework::ALL.map(Framework::as_str);
                    let hint = schema::closest(s, names)
                        .map(|best| format!("; did you mean \"{best}\"?"))
                        .unwrap_or_default();
                    format!(
                        "`app.framework` must be \"none\", \"pulse\" or \"streamlit\", not {s:?}{hint}"
                    )
                })
            })
            .unwrap_or(Framework::None);
        let port = u16::try_from(self.int("app.port", 1..=65_535, "")).unwrap_or(0);
        let health_path = self
            .checked("app.health_path", |s| {
                if !s.starts_with('/') || s.chars().any(|c| c.is_whitespace() || c == '#') {
                    Err(format!(
                        "`app.health_path` must be a URL path starting with /, such as \"/healthz\", not {s:?}"
                    ))
                } else {
                    Ok(())
                }
            })
            .unwrap_or_default();
        let affinity_header = self
            .checked("app.affinity_header", affinity_header_problem)
            .unwrap_or_default();
        let affinity_query = self
            .checked("app.affinity_query", |s| {
                let safe = |c: char| c.is_ascii_alphanumeric() || "-._~".contains(c);
                if s.is_empty() || s.len() > 128 || !s.chars().all(safe) {
                    Err(format!(
                        "`app.affinity_query` must be a query parameter name of letters, digits \
                         and -._~, not {s:?}"
                    ))
                } else {
                    Ok(())
                }
            })
            .unwrap_or_default();
        let inject_client = self.bool("app.inject_client");
        let stale = self.stale();
        let min_healthy = self.u32("app.min_healthy", 1..=1000);
        let health_timeout = self.seconds("app.health_timeout_seconds", 1..=86_400);
        let stop_max = match provider {
            ProviderKind::Aws => 120,
            ProviderKind::Host => 3600,
        };
        let stop_hint = match provider {
            ProviderKind::Aws => " (Fargate allows at most 120)",
            ProviderKind::Host => "",
        };
        let stop_timeout = Duration::from_secs(
            u64::try_from(self.int("app.stop_timeout_seconds", 0..=stop_max, stop_hint))
                .unwrap_or(0),
        );
        AppConfig {
            framework,
            port,
            health_path,
            affinity_header,
            affinity_query,
            inject_client,
            stale,
            min_healthy,
            health_timeout,
            stop_timeout,
        }
    }

    /// `[app] stale_status`, `stale_header` and `stale_socket_reroute_query`.
    fn stale(&mut self) -> StaleSignals {
        let defaults = StaleSignals::default();
        let status = match self.setting("app.stale_status").cloned() {
            Some(
                setting @ Setting {
                    val: Val::Int(n), ..
                },
            ) => match u16::try_from(n).map(StaleSignals::check_status) {
                Ok(Ok(status)) => status,
                _ => {
                    self.problem_at(
                        &setting,
                        format!(
                            "`app.stale_status` must be 409 or 410, not {n} (410 Gone is the \
                                 default; 409 Conflict is what some frameworks expect)"
                        ),
                    );
                    defaults.status
                }
            },
            // Not an integer: `int` says so.
            Some(_) => {
                let _ = self.int("app.stale_status", 409..=410, "");
                defaults.status
            }
            None => defaults.status,
        };
        let header = self.parsed("app.stale_header", |s| {
            StaleHeader::parse(s).map_err(|e| format!("`app.stale_header`: {e}"))
        });
        let socket_reroute = self.parsed("app.stale_socket_reroute_query", |s| {
            QueryPair::parse(s).map_err(|e| format!("`app.stale_socket_reroute_query`: {e}"))
        });
        StaleSignals {
            status,
            header,
            socket_reroute,
        }
    }

    fn canary(&mut self) -> CanaryConfig {
        use flotilla_core::canary::{CanaryPlan, Thresholds};
        let settings = self.settings;
        let steps = match settings.get("canary.steps") {
            None => vec![5, 25, 50],
            Some(setting) => match &setting.val {
                Val::Ints(items) => {
                    let steps: Vec<u8> = items
                        .iter()
                        .map(|n| u8::try_from(*n).unwrap_or(u8::MAX))
                        .collect();
                    steps
                }
                _ => {
                    self.problem_at(
                        setting,
                        "`canary.steps` must be an array of integers".into(),
                    );
                    vec![5, 25, 50]
                }
            },
        };
        let percent = |r: &mut Self, path: &str, range: RangeInclusive<i64>| {
            r.int(path, range, "") as f64 / 100.0
        };
        let plan = CanaryPlan {
            steps,
            pause: self.seconds("canary.pause_seconds", 1..=86_400),
            thresholds: Thresholds {
                max_error_ratio: percent(self, "canary.max_error_percent", 0..=100),
                max_error_ratio_increase: percent(
                    self,
                    "canary.max_error_increase_percent",
                    0..=100,
                ),
                max_p99_ratio: percent(self, "canary.max_p99_percent", 100..=10_000),
                min_requests: u64::from(self.u32("canary.min_requests", 1..=1_000_000_000)),
            },
            max_extensions: self.u32("canary.max_extensions", 0..=1000),
        };
        if let Err(e) = plan.validate()
            && let Some(setting) = settings.get("canary.steps")
        {
            self.problem_at(setting, format!("`canary.steps`: {e}"));
        }
        CanaryConfig { plan }
    }

    fn reaper(&mut self, provider: ProviderKind, app: &AppConfig) -> ReaperConfig {
        let interval_min = match provider {
            ProviderKind::Aws => 60,
            ProviderKind::Host => 1,
        };
        let interval_hint = match provider {
            ProviderKind::Aws => " (an EventBridge schedule runs at most once a minute)",
            ProviderKind::Host => "",
        };
        let interval = Duration::from_secs(
            u64::try_from(self.int(
                "reaper.interval_seconds",
                interval_min..=86_400,
                interval_hint,
            ))
            .unwrap_or(0),
        );
        let consecutive_passes = self.u32("reaper.consecutive_passes", 1..=100);
        let min_age = self.seconds("reaper.min_age_seconds", 0..=i64::MAX);
        let max_age = self.seconds("reaper.max_age_seconds", 1..=i64::MAX);
        let max_setting = self.setting("reaper.max_age_seconds").cloned();
        let min_origin = self
            .setting("reaper.min_age_seconds")
            .map_or(Origin::Default, |s| s.origin.clone());
        if let Some(max_setting) = max_setting.filter(|_| max_age < min_age) {
            self.problem_at(
                &max_setting,
                format!(
                    "`reaper.max_age_seconds` ({}) must be at least `reaper.min_age_seconds` ({}, {})",
                    max_age.as_secs(),
                    min_age.as_secs(),
                    min_origin
                ),
            );
        }
        let deploying_timeout = self.seconds("reaper.deploying_timeout_seconds", 1..=i64::MAX);
        let too_short = deploying_timeout < app.health_timeout;
        let deploying_setting = self.setting("reaper.deploying_timeout_seconds").cloned();
        if let Some(setting) = deploying_setting.filter(|_| too_short) {
            let other = self
                .setting("app.health_timeout_seconds")
                .map_or(Origin::Default, |s| s.origin.clone());
            self.problem_at(
                &setting,
                format!(
                    "`reaper.deploying_timeout_seconds` ({}) must be at least \
                     `app.health_timeout_seconds` ({}, {other}), or the reaper could remove a \
                     version whose deploy is still waiting for it to get healthy",
                    deploying_timeout.as_secs(),
                    app.health_timeout.as_secs()
                ),
            );
        }
        ReaperConfig {
            interval,
            consecutive_passes,
            min_age,
            max_age,
            deploying_timeout,
        }
    }

    fn host(&mut self, provider: ProviderKind, root: &Path) -> HostConfig {
        let fallback: SocketAddr = ([127, 0, 0, 1], 0).into();
        let listen = |key: &str| {
            let key = key.to_owned();
            move |s: &str| {
                s.parse::<SocketAddr>().map_err(|_| {
                    format!(
                        "`{key}` must be an address and port such as \"127.0.0.1:8080\" or \
                         \"0.0.0.0:80\", not {s:?}"
                    )
                })
            }
        };
        let router = self.parsed("host.listen", listen("host.listen"));
        let admin = self.parsed("host.admin_listen", listen("host.admin_listen"));
        let admin_setting = self.setting("host.admin_listen").cloned();
        if let Some(setting) = admin_setting.filter(|_| router.is_some() && router == admin) {
            self.problem_at(
                &setting,
                format!(
                    "`host.admin_listen` ({}) is the same address as `host.listen`; \
                     the status page needs its own port",
                    admin.unwrap_or(fallback)
                ),
            );
        }
        let admin_token_file = self
            .checked("host.admin_token_file", |s| {
                if s.trim().is_empty() {
                    Err(
                        "`host.admin_token_file` is empty; name a file or leave the key out"
                            .to_owned(),
                    )
                } else {
                    Ok(())
                }
            })
            .map(|s| normalise(&root.join(s)));
        let exposed = admin.filter(|a| !a.ip().is_loopback());
        if let (ProviderKind::Host, Some(addr), None) = (provider, exposed, &admin_token_file)
            && let Some(setting) = self.setting("host.admin_listen").cloned()
        {
            self.problem_at(
                &setting,
                format!(
                    "`host.admin_listen` {addr} is not a loopback address, so the status page \
                     needs a token: set `admin_token_file` in [host] to a file holding one (at \
                     least 16 characters, e.g. `head -c 32 /dev/urandom | base64 > admin.token \
                     && chmod 600 admin.token`, kept outside the app directory), or listen on \
                     127.0.0.1:{port}",
                    port = addr.port()
                ),
            );
        }
        let command = self.checked("host.command", |s| {
            if s.trim().is_empty() {
                Err("`host.command` is empty; give the command that starts your app".to_owned())
            } else {
                Ok(())
            }
        });
        if provider == ProviderKind::Host && self.setting("host.command").is_none() {
            self.missing(
                "host.command",
                "missing `command` in [host]: provider = \"host\" needs the command that starts \
                 one instance of your app (it must listen on $PORT), e.g. command = \"./start.sh\""
                    .to_owned(),
            );
        }
        let build = self.checked("host.build", |s| {
            if s.trim().is_empty() {
                Err("`host.build` is empty; give a build command or leave the key out".to_owned())
            } else {
                Ok(())
            }
        });
        let instances = self.u32("host.instances", 1..=64);
        let autoscale = self.host_autoscale(instances);
        let state_dir = self
            .checked("host.state_dir", |s| {
                if s.trim().is_empty() {
                    return Err("`host.state_dir` is empty".to_owned());
                }
                let dir = normalise(&root.join(s));
                if dir.parent().is_none() {
                    Err(format!(
                        "`host.state_dir` {s:?} is the filesystem root; keep the state in a \
                         directory of its own, e.g. \".flotilla/host\""
                    ))
                } else if root.starts_with(&dir) {
                    Err(format!(
                        "`host.state_dir` {s:?} is {}, which contains the app directory {}; \
                         a release snapshot skips the state directory, so it would come out \
                         empty: use a directory inside the app directory (e.g. \".flotilla/host\") \
                         or beside it",
                        dir.display(),
                        root.display()
                    ))
                } else {
                    Ok(())
                }
            })
            .map(|s| root.join(s))
            .unwrap_or_default();
        let keep_releases = self.u32("host.keep_releases", 0..=100);
        let upgrade_deadline = self.seconds("host.upgrade_deadline_seconds", 0..=604_800);
        let secrets_file = self
            .checked("host.secrets_file", |s| {
                if s.trim().is_empty() {
                    Err("`host.secrets_file` is empty; name a file or leave the key out".to_owned())
                } else {
                    Ok(())
                }
            })
            .map(|s| normalise(&root.join(s)));
        if let Some(path) = &secrets_file {
            let inside = path.starts_with(root) && !path.starts_with(root.join(".flotilla"));
            if inside && let Some(setting) = self.setting("host.secrets_file") {
                let setting = setting.clone();
                self.problem_at(
                    &setting,
                    format!(
                        "`host.secrets_file` {} is inside the app directory, so every release \
                         snapshot would copy it; move it outside, or under .flotilla/",
                        path.display()
                    ),
                );
            }
        }
        let hosts = self.front_door_hosts();
        let front_door_socket = self
            .checked("host.front_door_socket", |s| {
                if s.trim().is_empty() {
                    Err(
                        "`host.front_door_socket` is empty; name the socket or leave the key out"
                            .to_owned(),
                    )
                } else {
                    Ok(())
                }
            })
            .map(|s| normalise(&root.join(s)));
        let given = |setting: Option<&Setting>| {
            setting
                .filter(|s| !matches!(s.origin, Origin::Default))
                .cloned()
        };
        if hosts.is_some()
            && let Some(setting) = given(self.setting("host.listen"))
        {
            self.problem_at(
                &setting,
                "`host.listen` has no effect when `host.hosts` is set: the front door owns the \
                 public ports and hands this app its connections; remove `listen`, or remove \
                 `hosts` to serve on `listen` alone"
                    .to_owned(),
            );
        }
        // Behind the front door several apps share the machine: the status page takes a free
        // loopback port unless one is given, so that two apps never collide on the default.
        let admin = match (&hosts, given(self.setting("host.admin_listen"))) {
            (Some(_), None) => Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            _ => admin,
        };
        let access_log = self
            .checked("host.access_log", |s| {
                if s.trim().is_empty() {
                    Err("`host.access_log` is empty; name a file or leave the key out".to_owned())
                } else {
                    Ok(())
                }
            })
            .map(|s| normalise(&root.join(s)));
        let access_log_max_mb = self.u32("host.access_log_max_mb", 1..=100_000);
        let access_log_keep = self.u32("host.access_log_keep", 0..=1000);
        let https = self.https(router, admin, root);
        HostConfig {
            https,
            access_log,
            access_log_max_mb,
            access_log_keep,
            hosts,
            front_door_socket,
            listen: router.unwrap_or(fallback),
            admin_listen: admin.unwrap_or(fallback),
            admin_token_file,
            command,
            build,
            instances,
            autoscale,
            state_dir,
            keep_releases,
            upgrade_deadline,
            secrets_file,
        }
    }

    /// Reports each of `paths` that is set although the key that turns its feature on is not,
    /// with `problem(path)`.
    fn set_without_switch(&mut self, paths: &[&str], problem: impl Fn(&str) -> String) {
        for path in paths {
            if let Some(setting) = self.setting(path).cloned() {
                self.problem_at(&setting, problem(path));
            }
        }
    }

    /// `[host] max_instances` and its siblings: autoscaling of each version's instances, or
    /// `None` without `max_instances` (a sibling set without it is a mistake worth naming).
    fn host_autoscale(&mut self, instances: u32) -> Option<flotilla_core::autoscale::ScalePolicy> {
        let Some(max_setting) = self.setting("host.max_instances").cloned() else {
            self.set_without_switch(&["host.min_instances", "host.requests_per_instance"], |path| {
                format!(
                    "`{path}` applies only under autoscaling: set `host.max_instances` (the most \
                     processes a version may run) to turn it on, or remove `{path}`"
                )
            });
            return None;
        };
        let max = self.u32("host.max_instances", 1..=64);
        let min = if self.setting("host.min_instances").is_some() {
            self.u32("host.min_instances", 1..=64)
        } else {
            instances
        };
        let sessions_per_instance = self.u32("host.sessions_per_instance", 1..=1_000_000);
        let requests = self
            .setting("host.requests_per_instance")
            .is_some()
            .then(|| self.u32("host.requests_per_instance", 1..=1_000_000));
        let scale_in_after = self.seconds("host.scale_in_after_seconds", 0..=86_400);
        if max == 0
            || min == 0
            || instances == 0
            || sessions_per_instance == 0
            || requests == Some(0)
        {
            return None; // already reported
        }
        if !(min <= instances && instances <= max) {
            self.problem_at(
                &max_setting,
                format!(
                    "autoscaling needs host.min_instances ({min}) <= host.instances ({instances}) \
                     <= host.max_instances ({max}): a version starts with `instances` processes"
                ),
            );
            return None;
        }
        Some(flotilla_core::autoscale::ScalePolicy {
            min,
            max,
            sessions_per_instance,
            requests_per_second_per_instance: requests,
            scale_in_after,
        })
    }

    /// `[host] https_listen` with its certificates: files, or ACME; every inconsistency reported
    /// at the key it is about, with what to do.
    fn https(
        &mut self,
        router: Option<SocketAddr>,
        admin: Option<SocketAddr>,
        root: &Path,
    ) -> Option<HttpsConfig> {
        let listen = self.parsed("host.https_listen", |s| {
            s.parse::<SocketAddr>().map_err(|_| {
                format!(
                    "`host.https_listen` must be an address and port such as \"0.0.0.0:443\", \
                     not {s:?}"
                )
            })
        });
        let path = |r: &mut Self, key: &str| {
            r.checked(key, |s| {
                if s.trim().is_empty() {
                    Err(format!(
                        "`{key}` is empty; name a file or leave the key out"
                    ))
                } else {
                    Ok(())
                }
            })
            .map(|s| normalise(&root.join(s)))
        };
        let certificate = path(self, "host.tls_certificate_file");
        let key = path(self, "host.tls_key_file");
        let ca_file = path(self, "host.acme_ca_file");
        let hosts = self.acme_hosts();
        let email = self.checked("host.acme_email", |s| {
            if s.contains('@') && !s.contains(char::is_whitespace) {
                Ok(())
            } else {
                Err(format!(
                    "`host.acme_email` {s:?} is not an email address; give one such as \
                     \"ops@example.com\" or leave the key out"
                ))
            }
        });
        let directory = self
            .checked("host.acme_directory", |s| {
                if s.starts_with("https://") {
                    Ok(())
                } else {
                    Err(format!(
                        "`host.acme_directory` {s:?} is not an https:// URL; ACME servers are \
                         reached over HTTPS (Let's Encrypt: \"{LETS_ENCRYPT}\")"
                    ))
                }
            })
            .unwrap_or_default();
        let challenge = self
            .checked("host.acme_challenge", |s| match s {
                "http-01" | "tls-alpn-01" => Ok(()),
                other => Err(format!(
                    "`host.acme_challenge` must be \"http-01\" or \"tls-alpn-01\", not {other:?}"
                )),
            })
            .unwrap_or_default();

        let problem = |r: &mut Self, key: &str, message: String| match r.setting(key).cloned() {
            Some(setting) => r.problem_at(&setting, message),
            None => r.missing(key, message),
        };
        match (&certificate, &key) {
            (Some(_), None) => problem(
                self,
                "host.tls_certificate_file",
                "`host.tls_certificate_file` is set without `tls_key_file`: name the file \
                 holding its private key"
                    .to_owned(),
            ),
            (None, Some(_)) => problem(
                self,
                "host.tls_key_file",
                "`host.tls_key_file` is set without `tls_certificate_file`: name the file \
                 holding its certificate chain"
                    .to_owned(),
            ),
            _ => {}
        }
        let files = certificate.is_some() || key.is_some();
        if files && hosts.is_some() {
            problem(
                self,
                "host.acme_hosts",
                "`host.acme_hosts` and `tls_certificate_file` are both set: certificates come \
                 either from files or from ACME; remove one"
                    .to_owned(),
            );
        }
        if self.setting("host.https_listen").is_none() {
            for key in [
                "host.tls_certificate_file",
                "host.tls_key_file",
                "host.acme_hosts",
            ] {
                if self.setting(key).is_some() {
                    problem(
                        self,
                        key,
                        format!(
                            "`{key}` is set but `https_listen` is not: set `https_listen` in \
                             [host] (e.g. \"0.0.0.0:443\") to serve HTTPS, or remove `{key}`"
                        ),
                    );
                }
            }
            return None;
        }
        if !files && self.setting("host.acme_hosts").is_none() {
            problem(
                self,
                "host.https_listen",
                "`host.https_listen` is set but there is no certificate: set \
                 `tls_certificate_file` and `tls_key_file` in [host], or `acme_hosts` to obtain \
                 one over ACME"
                    .to_owned(),
            );
        }
        if let Some(addr) = listen {
            for (other, name) in [(router, "listen"), (admin, "admin_listen")] {
                if other == Some(addr) {
                    problem(
                        self,
                        "host.https_listen",
                        format!(
                            "`host.https_listen` ({addr}) is the same address as `host.{name}`; \
                             HTTPS needs its own port"
                        ),
                    );
                }
            }
        }
        let certificates = match (certificate, key, hosts) {
            (Some(certificate), Some(key), None) => TlsCertificates::Files { certificate, key },
            (None, None, Some(hosts)) => TlsCertificates::Acme {
                hosts,
                email,
                directory,
                challenge,
                ca_file,
            },
            _ => return None,
        };
        Some(HttpsConfig {
            listen: listen?,
            certificates,
        })
    }

    /// `host.acme_hosts`: DNS names (lowercased), no wildcards, ports or schemes.
    fn acme_hosts(&mut self) -> Option<Vec<String>> {
        let settings = self.settings;
        let setting = settings.get("host.acme_hosts")?;
        let Val::List(items) = &setting.val else {
            self.problem_at(
                setting,
                "`host.acme_hosts` must be an array of strings".to_owned(),
            );
            return None;
        };
        if items.is_empty() {
            self.problem_at(
                setting,
                "`host.acme_hosts` is empty; list the host names to obtain a certificate for, \
                 or leave the key out"
                    .to_owned(),
            );
            return None;
        }
        let bad: Vec<&String> = items.iter().filter(|h| !is_dns_name(h)).collect();
        if !bad.is_empty() {
            self.problem_at(
                setting,
                format!(
                    "`host.acme_hosts` lists {bad:?}, which {}: give names such as \
                     \"shop.example.com\" (no scheme, port, path or wildcard: http-01 and \
                     tls-alpn-01 cannot validate wildcards)",
                    if bad.len() == 1 {
                        "is not a host name"
                    } else {
                        "are not host names"
                    }
                ),
            );
            return None;
        }
        Some(items.iter().map(|h| h.to_ascii_lowercase()).collect())
    }

    /// `[env]` and `[secrets]` from every layer: names checked, secrets' references checked for
    /// the provider that will resolve them.
    fn app_env(&mut self, provider: ProviderKind) -> AppEnvConfig {
        let settings = self.settings;
        let mut out = AppEnvConfig::default();
        for (path, setting) in settings.iter() {
            let (section, name) = match path.split_once('.') {
                Some((section @ ("env" | "secrets"), name)) => (section, name),
                _ => continue,
            };
            let Val::Str(value) = &setting.val else {
                continue;
            };
            if let Err(message) = check_env_name(name) {
                self.problem_at(setting, format!("`{section}.{name}`: {message}"));
                continue;
            }
            if section == "env" {
                out.vars.insert(name.to_owned(), value.clone());
                continue;
            }
            if out.vars.contains_key(name) {
                self.problem_at(
                    setting,
                    format!("`{name}` is in both [env] and [secrets]; keep it in one of them"),
                );
                continue;
            }
            match provider {
                ProviderKind::Host => self.problem_at(
                    setting,
                    format!(
                        "`secrets.{name}`: [secrets] names AWS references; on the host provider \
                         put `{name}=...` in the file named by [host] secrets_file"
                    ),
                ),
                ProviderKind::Aws => match crate::providers::check_aws_secret_reference(value) {
                    Ok(()) => {
                        out.secrets.insert(name.to_owned(), value.clone());
                    }
                    Err(message) => {
                        self.problem_at(setting, format!("`secrets.{name}`: {message}"))
                    }
                },
            }
        }
        out
    }

    fn aws(&mut self) -> AwsConfig {
        let region = self.checked("aws.region", |s| {
            let ok = !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && s.ends_with(|c: char| c.is_ascii_digit());
            if ok {
                Ok(())
            } else {
                Err(format!(
                    "`aws.region` must be a region code such as \"eu-west-1\", not {s:?}"
                ))
            }
        });
        let profile = self.checked("aws.profile", non_empty("aws.profile"));
        let endpoint_url = self.checked("aws.endpoint_url", |s| {
            if s.starts_with("http://") || s.starts_with("https://") {
                Ok(())
            } else {
                Err(format!(
                    "`aws.endpoint_url` must be an http:// or https:// URL, not {s:?}"
                ))
            }
        });
        let cpu = self.u32("aws.cpu", 1..=16_384);
        let memory = self.u32("aws.memory", 1..=122_880);
        self.fargate_size(cpu, memory);
        let desired_count = self.u32("aws.desired_count", 1..=1000);
        let autoscaling = self.autoscaling(desired_count);
        let (spot_percent, on_demand_base) = self.capacity();
        let domain = self.checked("aws.domain", |s| {
            let ok = !s.is_empty()
                && !s.contains("://")
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
            if ok {
                Ok(())
            } else {
                Err(format!(
                    "`aws.domain` must be a host name such as \"app.example.com\" (no scheme, no \
                     path), not {s:?}"
                ))
            }
        });
        let arn = |key: &'static str| {
            move |s: &str| {
                if s.starts_with("arn:") {
                    Ok(())
                } else {
                    Err(format!("`{key}` must be an ARN (arn:...), not {s:?}"))
                }
            }
        };
        let certificate_arn = self.checked("aws.certificate_arn", arn("aws.certificate_arn"));
        let nat = self
            .parsed("aws.nat", |s| match s {
                "single" => Ok(Nat::Single),
                "per-az" => Ok(Nat::PerAz),
                other => Err(format!(
                    "`aws.nat` must be \"single\" or \"per-az\", not {other:?}"
                )),
            })
            .unwrap_or(Nat::Single);
        let command = self.checked("aws.command", non_empty("aws.command"));
        let architecture = self
            .parsed("aws.architecture", |s| {
                flotilla_baseline::Architecture::parse(s).ok_or_else(|| {
                    format!("`aws.architecture` must be \"x86_64\" or \"arm64\", not {s:?}")
                })
            })
            .unwrap_or_default();
        let read_only_root = self.bool("aws.read_only_root");
        let user = self.checked("aws.user", non_empty("aws.user"));
        let enable_execute_command = self.bool("aws.enable_execute_command");
        let agent_image = self.checked("aws.agent_image", non_empty("aws.agent_image"));
        let hosted_zone_id = self.checked("aws.hosted_zone_id", non_empty("aws.hosted_zone_id"));
        let vpc_cidr = self
            .checked("aws.vpc_cidr", non_empty("aws.vpc_cidr"))
            .unwrap_or_default();
        let idle_timeout_seconds = self.u32("aws.idle_timeout_seconds", 1..=4000);
        let log_retention_days = self.u32("aws.log_retention_days", 1..=3653);
        let keep_images = self.u32("aws.keep_images", 1..=1000);
        let alarm_email = self.checked("aws.alarm_email", non_empty("aws.alarm_email"));
        let alarm_topic_arn = self.checked("aws.alarm_topic_arn", arn("aws.alarm_topic_arn"));
        let alarm_5xx_percent = self.u32("aws.alarm_5xx_percent", 1..=100);
        let access_logs_bucket = self.checked(
            "aws.access_logs_bucket",
            non_empty("aws.access_logs_bucket"),
        );
        let access_logs_prefix = self.opt_str("aws.access_logs_prefix");
        let waf = self.bool("aws.waf");
        let waf_rate_limit = self.u32("aws.waf_rate_limit", 10..=2_000_000_000);
        let health_check_grace_seconds = self
            .setting("aws.health_check_grace_seconds")
            .is_some()
            .then(|| self.u32("aws.health_check_grace_seconds", 0..=86_400));
        let listener_arn = self.checked("aws.listener_arn", arn("aws.listener_arn"));
        let subnets = self.opt_list("aws.subnets", "subnet-", "a subnet");
        let security_groups = self.opt_list("aws.security_groups", "sg-", "a security group");
        let cluster = self.checked("aws.cluster", non_empty("aws.cluster"));
        let log_group = self.checked("aws.log_group", non_empty("aws.log_group"));
        let repository = self.checked("aws.repository", non_empty("aws.repository"));
        let execution_role_arn =
            self.checked("aws.execution_role_arn", arn("aws.execution_role_arn"));
        let task_role_arn = self.checked("aws.task_role_arn", arn("aws.task_role_arn"));
        AwsConfig {
            region,
            profile,
            endpoint_url,
            cpu,
            memory,
            desired_count,
            autoscaling,
            spot_percent,
            on_demand_base,
            domain,
            certificate_arn,
            nat,
            command,
            hosted_zone_id,
            vpc_cidr,
            idle_timeout_seconds,
            log_retention_days,
            keep_images,
            alarm_email,
            alarm_topic_arn,
            alarm_5xx_percent,
            access_logs_bucket,
            access_logs_prefix,
            waf,
            waf_rate_limit,
            health_check_grace_seconds,
            architecture,
            read_only_root,
            user,
            enable_execute_command,
            agent_image,
            listener_arn,
            subnets,
            security_groups,
            cluster,
            log_group,
            repository,
            execution_role_arn,
            task_role_arn,
        }
    }

    /// Fargate allows only certain CPU and memory pairs.
    /// `[aws] max_count` and its siblings: autoscaling of each version, or `None` without
    /// `max_count` (a `min_count` or request target without it is a mistake worth naming).
    fn autoscaling(&mut self, desired: u32) -> Option<super::Autoscaling> {
        let Some(max_setting) = self.setting("aws.max_count").cloned() else {
            self.set_without_switch(&["aws.min_count", "aws.scale_requests_per_target"], |path| {
                format!(
                    "`{path}` applies only under autoscaling: set `aws.max_count` (the most tasks \
                     a version may run) to turn it on, or remove `{path}`"
                )
            });
            return None;
        };
        let max = self.u32("aws.max_count", 1..=1000);
        let min = if self.setting("aws.min_count").is_some() {
            self.u32("aws.min_count", 1..=1000)
        } else {
            desired
        };
        let cpu = self.u32("aws.scale_cpu_percent", 0..=100);
        let memory = self.u32("aws.scale_memory_percent", 0..=100);
        let requests = self
            .setting("aws.scale_requests_per_target")
            .is_some()
            .then(|| self.u32("aws.scale_requests_per_target", 1..=1_000_000));
        if max == 0 || min == 0 || desired == 0 || requests == Some(0) {
            return None; // already reported
        }
        if !(min <= desired && desired <= max) {
            self.problem_at(
                &max_setting,
                format!(
                    "autoscaling needs aws.min_count ({min}) <= aws.desired_count ({desired}) <= \
                     aws.max_count ({max}): a version starts with desired_count tasks"
                ),
            );
            return None;
        }
        if cpu == 0 && memory == 0 && requests.is_none() {
            self.problem_at(
                &max_setting,
                "autoscaling needs something to track: `aws.scale_cpu_percent` and \
                 `aws.scale_memory_percent` are both 0 and `aws.scale_requests_per_target` is \
                 unset"
                    .to_owned(),
            );
            return None;
        }
        Some(super::Autoscaling {
            min,
            max,
            cpu_percent: (cpu > 0).then_some(cpu),
            memory_percent: (memory > 0).then_some(memory),
            requests_per_target: requests,
        })
    }

    /// `[aws] spot_percent` and `on_demand_base` (which means nothing without a Spot share).
    fn capacity(&mut self) -> (u32, u32) {
        let spot = self.u32("aws.spot_percent", 0..=100);
        let Some(base_setting) = self.setting("aws.on_demand_base").cloned() else {
            return (spot, 0);
        };
        let base = self.u32("aws.on_demand_base", 0..=1000);
        if spot == 0 && base > 0 {
            self.problem_at(
                &base_setting,
                "`aws.on_demand_base` applies only with Fargate Spot: set `aws.spot_percent` \
                 (the share of tasks on Spot) or remove `aws.on_demand_base`"
                    .to_owned(),
            );
        }
        (spot, base)
    }

    fn fargate_size(&mut self, cpu: u32, memory: u32) {
        let Some(cpu_setting) = self.setting("aws.cpu").cloned() else {
            return;
        };
        if cpu == 0 || memory == 0 {
            return;
        }
        let Some(allowed) = fargate_memory(cpu) else {
            self.problem_at(
                &cpu_setting,
                format!(
                    "`aws.cpu` must be one of 256, 512, 1024, 2048, 4096, 8192 or 16384 (Fargate \
                     sizes), not {cpu}"
                ),
            );
            return;
        };
        let memory_setting = self.setting("aws.memory").cloned();
        if let Some(memory_setting) = memory_setting.filter(|_| !allowed.contains(&memory)) {
            let shown: Vec<String> = if allowed.len() > 6 {
                vec![format!(
                    "{} to {} in steps of {}",
                    allowed[0],
                    allowed[allowed.len() - 1],
                    allowed[1] - allowed[0]
                )]
            } else {
                allowed.iter().map(u32::to_string).collect()
            };
            self.problem_at(
                &memory_setting,
                format!(
                    "`aws.memory` {memory} is not a size Fargate allows with cpu = {cpu}; \
                     use {}",
                    shown.join(", ")
                ),
            );
        }
    }

    fn cross_checks(
        &mut self,
        provider: ProviderKind,
        app: &AppConfig,
        host: &HostConfig,
        aws: &AwsConfig,
    ) {
        let (count, count_key) = match provider {
            ProviderKind::Host => (host.instances, "host.instances"),
            ProviderKind::Aws => (aws.desired_count, "aws.desired_count"),
        };
        let setting = self.setting("app.min_healthy").cloned();
        if let Some(setting) = setting.filter(|_| count > 0 && app.min_healthy > count) {
            let other = self
                .setting(count_key)
                .map_or(Origin::Default, |s| s.origin.clone());
            self.problem_at(
                &setting,
                format!(
                    "`app.min_healthy` ({}) is more than `{count_key}` ({count}, {other}): a deploy \
                     could never get healthy; lower min_healthy or run more instances",
                    app.min_healthy
                ),
            );
        }
    }
}

/// What is wrong with an affinity header name, if anything. Only letters, digits and hyphens
/// are safe: an ALB set to drop invalid header fields (the baseline's is) removes every header
/// whose name has anything else, `_` included, before its rules see it, so affinity would
/// silently never match; and its header conditions take at most 40 characters.
fn affinity_header_problem(s: &str) -> Result<(), String> {
    let what = "`app.affinity_header` must be an HTTP header name of 1 to 40 letters, digits and \
                hyphens, such as \"X-Flotilla-Deployment\"";
    if s.is_empty() || s.len() > 40 {
        return Err(format!("{what}, not {s:?} ({} characters)", s.len()));
    }
    if let Some(bad) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
    {
        let why = if bad == '_' {
            "the load balancer drops headers whose name contains `_`, so affinity would \
             silently never match; use `-` instead"
                .to_owned()
        } else {
            format!("{bad:?} is not allowed in a header name the load balancer keeps")
        };
        return Err(format!("{what}, not {s:?}: {why}"));
    }
    Ok(())
}

fn non_empty(key: &'static str) -> impl Fn(&str) -> Result<(), String> {
    move |s: &str| {
        if s.trim().is_empty() {
            Err(format!(
                "`{key}` is empty; give a value or leave the key out"
            ))
        } else {
            Ok(())
        }
    }
}

/// The memory sizes (MiB) Fargate allows with `cpu` units, or `None` for an invalid cpu.
pub fn fargate_memory(cpu: u32) -> Option<Vec<u32>> {
    let steps = |from: u32, to: u32, step: u32| (from..=to).step_by(step as usize).collect();
    Some(match cpu {
        256 => vec![512, 1024, 2048],
        512 => steps(1024, 4096, 1024),
        1024 => steps(2048, 8192, 1024),
        2048 => steps(4096, 16_384, 1024),
        4096 => steps(8192, 30_720, 1024),
        8192 => steps(16_384, 61_440, 4096),
        16_384 => steps(32_768, 122_880, 8192),
        _ => return None,
    })
}

/// What is wrong with `name` as the name of an app's environment variable, if anything.
pub fn check_env_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let well_formed = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !well_formed {
        return Err(format!(
            "`{name}` is not a variable name: use letters, digits and `_`, not starting with a digit"
        ));
    }
    if name.starts_with("FLOTILLA_") {
        return Err(format!(
            "`{name}` is reserved: flotilla sets FLOTILLA_* variables itself"
        ));
    }
    if name == "PORT" {
        return Err("`PORT` is reserved: flotilla tells each instance its port in PORT".to_owned());
    }
    Ok(())
}

/// `path` with `.` and `..` components resolved without touching the filesystem.
fn normalise(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// Let's Encrypt's production directory (the default of `acme_directory`), for messages.
const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// Whether `name` is a DNS host name: dot-separated labels of letters, digits and hyphens (not
/// at either end), at least two labels, at most 253 characters.
fn is_dns_name(name: &str) -> bool {
    let labels: Vec<&str> = name.split('.').collect();
    name.len() <= 253
        && labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}
