//! Tests of the configuration: every problem reported with its place, suggestions for unknown
//! keys, precedence of the layers, and the `init` template.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use super::template::{self, InitValues};
use super::*;

/// A minimal valid file for the host provider; three lines long.
const BASE: &str = "name = \"shop\"\n[host]\ncommand = \"./run\"\n";

fn resolve(text: &str, env: &[(&str, &str)], flags: &Overrides) -> Result<Config, Vec<String>> {
    let env: BTreeMap<String, String> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let get = move |key: &str| env.get(key).cloned();
    resolve_text(FILE_NAME, text, Path::new("/srv/shop"), &get, flags).map_err(|err| match err {
        ConfigError::Invalid { problems, .. } => problems.iter().map(ToString::to_string).collect(),
        other => vec![format!("unexpected error: {other}")],
    })
}

/// Resolves `text` with `env` and `flags` and asserts the problems reported, exactly and in
/// order; an empty `want` means the configuration must be valid.
fn check(text: &str, env: &[(&str, &str)], flags: &Overrides, want: &[&str]) {
    let got = match resolve(text, env, flags) {
        Ok(_) => vec![],
        Err(problems) => problems,
    };
    assert_eq!(got, want, "\n--- file ---\n{text}");
}

fn ok(text: &str, env: &[(&str, &str)], flags: &Overrides) -> Config {
    match resolve(text, env, flags) {
        Ok(config) => config,
        Err(problems) => panic!("expected a valid config, got:\n{}", problems.join("\n")),
    }
}

fn origin_of(config: &Config, key: &str) -> String {
    config
        .sources
        .iter()
        .find(|s| s.key == key)
        .map(|s| s.origin.to_string())
        .unwrap_or_else(|| panic!("no source for {key}"))
}

#[test]
fn unknown_keys_suggest_the_closest_valid_key() {
    let none = Overrides::default();
    let cases: &[(&str, &str)] = &[
        (
            "[app]\nhelth_path = \"/h\"\n",
            "flotilla.toml:5:1: unknown key `helth_path` in [app]; did you mean `health_path`?",
        ),
        (
            "[app]\nprot = 1\n",
            "flotilla.toml:5:1: unknown key `prot` in [app]; did you mean `port`?",
        ),
        (
            "[drain]\ngrace = 3\n",
            "flotilla.toml:5:1: unknown key `grace` in [drain]; did you mean `grace_seconds`?",
        ),
        (
            "[reaper]\nlisten = \"x\"\n",
            "flotilla.toml:5:1: unknown key `listen` in [reaper]; `listen` belongs in [host]",
        ),
        (
            "[app]\nname = \"x\"\n",
            "flotilla.toml:5:1: unknown key `name` in [app]; `name` is a top-level key: move it \
             above the first [section]",
        ),
        (
            "[aws]\ncolour = 1\n",
            "flotilla.toml:5:1: unknown key `colour` in [aws]; keys of [aws] are `region`, \
             `profile`, `endpoint_url`, `cpu`, `memory`, `desired_count`, `max_count`, `min_count`, \
             `scale_cpu_percent`, `scale_memory_percent`, `scale_requests_per_target`, `spot_percent`, `on_demand_base`, `domain`, \
             `certificate_arn`, `nat`, `command`, `architecture`, `read_only_root`, `user`, \
             `enable_execute_command`, `agent_image`, `hosted_zone_id`, `vpc_cidr`, \
             `idle_timeout_seconds`, `log_retention_days`, `keep_images`, `alarm_email`, \
             `alarm_topic_arn`, `alarm_5xx_percent`, `access_logs_bucket`, `access_logs_prefix`, \
             `waf`, `waf_rate_limit`, `health_check_grace_seconds`, `listener_arn`, `subnets`, `security_groups`, `cluster`, `log_group`, `repository`, \
             `execution_role_arn`, `task_role_arn`",
        ),
        (
            "[hots]\n",
            "flotilla.toml:4:2: unknown key `hots`; did you mean [host]?",
        ),
        (
            "[reapr]\n",
            "flotilla.toml:4:2: unknown key `reapr`; did you mean [reaper]?",
        ),
    ];
    for (snippet, want) in cases {
        check(&format!("{BASE}{snippet}"), &[], &none, &[want]);
    }
    check(
        "provder = \"host\"\nname = \"shop\"\n[host]\ncommand = \"x\"\n",
        &[],
        &none,
        &["flotilla.toml:1:1: unknown key `provder`; did you mean `provider`?"],
    );
    check(
        "name = \"shop\"\nport = 80\n[host]\ncommand = \"x\"\n",
        &[],
        &none,
        &["flotilla.toml:2:1: unknown key `port`; `port` belongs in [app]"],
    );
}

#[test]
fn a_file_with_three_mistakes_reports_all_three_with_lines() {
    let text = "\
name = \"shop\"

[app]
port = 8000
helth_path = \"/healthz\"
min_healthy = 0

[host]
command = \"./run\"
listen = \"localhost\"
";
    check(
        text,
        &[],
        &Overrides::default(),
        &[
            "flotilla.toml:5:1: unknown key `helth_path` in [app]; did you mean `health_path`?",
            "flotilla.toml:6:15: `app.min_healthy` must be between 1 and 1000, not 0",
            "flotilla.toml:10:10: `host.listen` must be an address and port such as \
             \"127.0.0.1:8080\" or \"0.0.0.0:80\", not \"localhost\"",
        ],
    );
}

#[test]
fn invalid_values_are_reported_at_their_line() {
    let none = Overrides::default();
    // Each snippet goes after BASE, so its first line is line 4 of the file.
    let cases: &[(&str, &str)] = &[
        (
            "[app]\nport = \"8000\"",
            "flotilla.toml:5:8: `app.port` must be an integer, not a string (write 8000 without quotes)",
        ),
        (
            "[app]\nport = 70000",
            "flotilla.toml:5:8: `app.port` must be between 1 and 65535, not 70000",
        ),
        (
            "[app]\nport = 80.5",
            "flotilla.toml:5:8: `app.port` must be an integer, not a float (use a whole number)",
        ),
        (
            "[app]\nhealth_path = \"healthz\"",
            "flotilla.toml:5:15: `app.health_path` must be a URL path starting with /, such as \
             \"/healthz\", not \"healthz\"",
        ),
        (
            "[app]\naffinity_header = \"X Flotilla\"",
            "flotilla.toml:5:19: `app.affinity_header` must be an HTTP header name of 1 to 40 \
             letters, digits and hyphens, such as \"X-Flotilla-Deployment\", not \"X Flotilla\": \
             ' ' is not allowed in a header name the load balancer keeps",
        ),
        (
            "[app]\naffinity_header = \"X_Flotilla_Deployment\"",
            "flotilla.toml:5:19: `app.affinity_header` must be an HTTP header name of 1 to 40 \
             letters, digits and hyphens, such as \"X-Flotilla-Deployment\", not \
             \"X_Flotilla_Deployment\": the load balancer drops headers whose name contains `_`, \
             so affinity would silently never match; use `-` instead",
        ),
        (
            "[app]\naffinity_header = \"X.Version\"",
            "flotilla.toml:5:19: `app.affinity_header` must be an HTTP header name of 1 to 40 \
             letters, digits and hyphens, such as \"X-Flotilla-Deployment\", not \"X.Version\": \
             '.' is not allowed in a header name the load balancer keeps",
        ),
        (
            "[app]\ninject_client = \"true\"",
            "flotilla.toml:5:17: `app.inject_client` must be true or false, not a string \
             (write true without quotes)",
        ),
        (
            "[app]\nstale_status = 404",
            "flotilla.toml:5:16: `app.stale_status` must be 409 or 410, not 404 (410 Gone is the \
             default; 409 Conflict is what some frameworks expect)",
        ),
        (
            "[app]\nstale_header = \"x-pulse-stale-affinity\"",
            "flotilla.toml:5:16: `app.stale_header`: the stale header must be `name: value`, a \
             header name of letters, digits and !#$%&'*+-.^_`|~ then a value of visible ASCII \
             characters and spaces, not \"x-pulse-stale-affinity\"",
        ),
        (
            "[app]\nstale_socket_reroute_query = \"reload on stale\"",
            "flotilla.toml:5:30: `app.stale_socket_reroute_query`: the stale socket query must be \
             `name=value` (or `name` alone), of letters, digits and -._~, not \"reload on stale\"",
        ),
        (
            "[app]\nmin_healthy = 3",
            "flotilla.toml:5:15: `app.min_healthy` (3) is more than `host.instances` (2, default): \
             a deploy could never get healthy; lower min_healthy or run more instances",
        ),
        (
            "[drain]\ngrace_seconds = -5",
            "flotilla.toml:5:17: `drain.grace_seconds` must be between 0 and 86400, not -5",
        ),
        (
            "[drain]\npoll_seconds = 0",
            "flotilla.toml:5:16: `drain.poll_seconds` must be between 1 and 3600, not 0",
        ),
        (
            "[reaper]\nmax_age_seconds = 30",
            "flotilla.toml:5:19: `reaper.max_age_seconds` (30) must be at least \
             `reaper.min_age_seconds` (60, default)",
        ),
        (
            "[reaper]\ndeploying_timeout_seconds = 60",
            "flotilla.toml:5:29: `reaper.deploying_timeout_seconds` (60) must be at least \
             `app.health_timeout_seconds` (120, default), or the reaper could remove a version \
             whose deploy is still waiting for it to get healthy",
        ),
        (
            "[reaper]\nconsecutive_passes = 0",
            "flotilla.toml:5:22: `reaper.consecutive_passes` must be between 1 and 100, not 0",
        ),
        (
            "listen = \"0.0.0.0:80\"\ninstances = 0",
            "flotilla.toml:5:13: `host.instances` must be between 1 and 64, not 0",
        ),
        (
            "admin_listen = \"127.0.0.1:8080\"",
            "flotilla.toml:4:16: `host.admin_listen` (127.0.0.1:8080) is the same address as \
             `host.listen`; the status page needs its own port",
        ),
        (
            "[aws]\ncpu = 300",
            "flotilla.toml:5:7: `aws.cpu` must be one of 256, 512, 1024, 2048, 4096, 8192 or 16384 \
             (Fargate sizes), not 300",
        ),
        (
            "[aws]\ncpu = 1024\nmemory = 512",
            "flotilla.toml:6:10: `aws.memory` 512 is not a size Fargate allows with cpu = 1024; \
             use 2048 to 8192 in steps of 1024",
        ),
        (
            "[aws]\nnat = \"double\"",
            "flotilla.toml:5:7: `aws.nat` must be \"single\" or \"per-az\", not \"double\"",
        ),
        (
            "[aws]\nsubnets = \"subnet-1\"",
            "flotilla.toml:5:11: `aws.subnets` must be an array of strings, not a string \
             (write [\"subnet-1\"])",
        ),
        (
            "[aws]\nsubnets = [\"subnet-1\", 2]",
            "flotilla.toml:5:24: `aws.subnets` must be an array of strings, but this item is an integer",
        ),
        (
            "[aws]\nsecurity_groups = [\"subnet-1\"]",
            "flotilla.toml:5:19: `aws.security_groups` lists \"subnet-1\", which is not a security \
             group id (they start with \"sg-\")",
        ),
        (
            "[aws]\ncertificate_arn = \"abc\"",
            "flotilla.toml:5:19: `aws.certificate_arn` must be an ARN (arn:...), not \"abc\"",
        ),
        (
            "[aws]\ndomain = \"https://shop.example.com\"",
            "flotilla.toml:5:10: `aws.domain` must be a host name such as \"app.example.com\" (no \
             scheme, no path), not \"https://shop.example.com\"",
        ),
        (
            "[aws]\nregion = \"Europe\"",
            "flotilla.toml:5:10: `aws.region` must be a region code such as \"eu-west-1\", not \"Europe\"",
        ),
        (
            "[aws]\nendpoint_url = \"localhost:5000\"",
            "flotilla.toml:5:16: `aws.endpoint_url` must be an http:// or https:// URL, not \
             \"localhost:5000\"",
        ),
    ];
    for (snippet, want) in cases {
        check(&format!("{BASE}{snippet}\n"), &[], &none, &[want]);
    }
}

#[test]
fn names_providers_and_sections_are_validated() {
    let none = Overrides::default();
    check(
        "name = \"My Shop\"\n[host]\ncommand = \"x\"\n",
        &[],
        &none,
        &[
            "flotilla.toml:1:8: invalid `name`: deployment name `My Shop` contains 'M' at \
           position 0; use lowercase letters, digits and hyphens",
        ],
    );
    check(
        "[host]\ncommand = \"x\"\n",
        &[],
        &none,
        &[
            "flotilla.toml: missing `name`: every configuration needs a deployment name, e.g. \
           name = \"my-app\" at the top of the file (or set FLOTILLA_NAME, or pass --name)",
        ],
    );
    check(
        "name = \"shop\"\nprovider = \"gcp\"\n[host]\ncommand = \"x\"\n",
        &[],
        &none,
        &["flotilla.toml:2:12: `provider` must be \"host\" or \"aws\", not \"gcp\""],
    );
    check(
        "name = \"shop\"\nprovider = \"hots\"\n[host]\ncommand = \"x\"\n",
        &[],
        &none,
        &[
            "flotilla.toml:2:12: `provider` must be \"host\" or \"aws\", not \"hots\"; did you \
           mean \"host\"?",
        ],
    );
    check(
        "name = \"shop\"\n[host]\ninstances = 1\n",
        &[],
        &none,
        &[
            "flotilla.toml:2:2: missing `command` in [host]: provider = \"host\" needs the command \
           that starts one instance of your app (it must listen on $PORT), e.g. command = \
           \"./start.sh\"",
        ],
    );
    check(
        "name = \"shop\"\napp = 3\n[host]\ncommand = \"x\"\n",
        &[],
        &none,
        &["flotilla.toml:2:1: `app` must be a table ([app] with keys under it), not an integer"],
    );
    // The AWS provider does not need a host command, and checks min_healthy against its own count.
    ok("name = \"shop\"\nprovider = \"aws\"\n", &[], &none);
    // Autoscaling: off without max_count; on with it, with the defaults' CPU and memory targets.
    let aws = |extra: &str| format!("name = \"shop\"\nprovider = \"aws\"\n[aws]\n{extra}");
    assert_eq!(ok(&aws(""), &[], &none).aws.autoscaling, None);
    assert_eq!(
        ok(&aws("max_count = 8\n"), &[], &none).aws.autoscaling,
        Some(super::Autoscaling {
            min: 2,
            max: 8,
            cpu_percent: Some(70),
            memory_percent: Some(80),
            requests_per_target: None,
        })
    );
    assert_eq!(
        ok(
            &aws("max_count = 8\nmin_count = 1\nscale_cpu_percent = 0\nscale_requests_per_target = 900\n"),
            &[("FLOTILLA_AWS_MAX_COUNT", "20")],
            &none
        )
        .aws
        .autoscaling,
        Some(super::Autoscaling {
            min: 1,
            max: 20,
            cpu_percent: None,
            memory_percent: Some(80),
            requests_per_target: Some(900),
        })
    );
    check(
        &aws("min_count = 1\n"),
        &[],
        &none,
        &[
            "flotilla.toml:4:13: `aws.min_count` applies only under autoscaling: set \
           `aws.max_count` (the most tasks a version may run) to turn it on, or remove \
           `aws.min_count`",
        ],
    );
    check(
        &aws("max_count = 1\n"),
        &[],
        &none,
        &[
            "flotilla.toml:4:13: autoscaling needs aws.min_count (2) <= aws.desired_count (2) <= \
           aws.max_count (1): a version starts with desired_count tasks",
        ],
    );
    check(
        &aws("max_count = 4\nscale_cpu_percent = 0\nscale_memory_percent = 0\n"),
        &[],
        &none,
        &[
            "flotilla.toml:4:13: autoscaling needs something to track: `aws.scale_cpu_percent` \
           and `aws.scale_memory_percent` are both 0 and `aws.scale_requests_per_target` is \
           unset",
        ],
    );
    // Host autoscaling: off without max_instances, a range around `instances` with it.
    let host = |extra: &str| format!("name = \"shop\"\n[host]\ncommand = \"x\"\n{extra}");
    assert_eq!(ok(&host(""), &[], &none).host.autoscale, None);
    assert_eq!(
        ok(
            &host("instances = 2\nmax_instances = 5\nrequests_per_instance = 300\n"),
            &[("FLOTILLA_HOST_SCALE_IN_AFTER_SECONDS", "60")],
            &none
        )
        .host
        .autoscale,
        Some(flotilla_core::autoscale::ScalePolicy {
            min: 2,
            max: 5,
            sessions_per_instance: 100,
            requests_per_second_per_instance: Some(300),
            scale_in_after: std::time::Duration::from_secs(60),
        })
    );
    check(
        &host("min_instances = 1\n"),
        &[],
        &none,
        &[
            "flotilla.toml:4:17: `host.min_instances` applies only under autoscaling: set \
           `host.max_instances` (the most processes a version may run) to turn it on, or remove \
           `host.min_instances`",
        ],
    );
    check(
        &host("instances = 4\nmax_instances = 3\n"),
        &[],
        &none,
        &[
            "flotilla.toml:5:17: autoscaling needs host.min_instances (4) <= host.instances (4) \
           <= host.max_instances (3): a version starts with `instances` processes",
        ],
    );
    // Fargate Spot: a share in percent, and a base on regular Fargate only beside it.
    let spot = ok(&aws("spot_percent = 75\non_demand_base = 1\n"), &[], &none).aws;
    assert_eq!((spot.spot_percent, spot.on_demand_base), (75, 1));
    let regular = ok(&aws(""), &[("FLOTILLA_AWS_SPOT_PERCENT", "100")], &none).aws;
    assert_eq!((regular.spot_percent, regular.on_demand_base), (100, 0));
    check(
        &aws("on_demand_base = 2\n"),
        &[],
        &none,
        &[
            "flotilla.toml:4:18: `aws.on_demand_base` applies only with Fargate Spot: set \
           `aws.spot_percent` (the share of tasks on Spot) or remove `aws.on_demand_base`",
        ],
    );
    check(
        &aws("spot_percent = 150\n"),
        &[],
        &none,
        &["flotilla.toml:4:16: `aws.spot_percent` must be between 0 and 100, not 150"],
    );
    check(
        "name = \"shop\"\nprovider = \"aws\"\n[app]\nmin_healthy = 3\n[aws]\ndesired_count = 2\n",
        &[],
        &none,
        &[
            "flotilla.toml:4:15: `app.min_healthy` (3) is more than `aws.desired_count` (2, \
           flotilla.toml:6:17): a deploy could never get healthy; lower min_healthy or run more \
           instances",
        ],
    );
    check(
        "name = \"shop\"\nprovider = \"aws\"\n[app]\nstop_timeout_seconds = 300\n",
        &[],
        &none,
        &[
            "flotilla.toml:4:24: `app.stop_timeout_seconds` must be between 0 and 120, not 300 \
           (Fargate allows at most 120)",
        ],
    );
}

#[test]
fn syntax_errors_are_reported_with_their_line() {
    let got = resolve(
        "name = \"shop\"\n[host]\ncommand = \"unterminated\n",
        &[],
        &Overrides::default(),
    )
    .expect_err("syntax error");
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].starts_with("flotilla.toml:3:"), "{got:?}");
    assert!(got[0].contains("TOML syntax"), "{got:?}");
}

#[test]
fn other_toml_spellings_of_the_same_keys_work() {
    let config = ok(
        "name = \"shop\"\napp.port = 9000\nhost = { command = \"./run\", instances = 3 }\n",
        &[],
        &Overrides::default(),
    );
    assert_eq!(config.app.port, 9000);
    assert_eq!(config.host.instances, 3);
    assert_eq!(origin_of(&config, "app.port"), "flotilla.toml:2:12");
}

#[test]
fn defaults_match_the_brief() {
    let config = ok(BASE, &[], &Overrides::default());
    assert_eq!(config.provider, ProviderKind::Host);
    assert_eq!(config.app.health_path, "/healthz");
    assert_eq!(config.app.affinity_header, "X-Flotilla-Deployment");
    assert_eq!(config.app.affinity_query, "flotilla_deployment");
    assert!(!config.app.inject_client);
    assert_eq!(
        config.app.stale,
        flotilla_core::stale::StaleSignals::default()
    );
    assert_eq!(config.app.stale.status, 410);
    assert_eq!(config.app.min_healthy, 1);
    assert_eq!(config.app.health_timeout, Duration::from_secs(120));
    assert_eq!(config.app.stop_timeout, Duration::from_secs(30));
    assert_eq!(config.drain.poll, Duration::from_secs(5));
    assert_eq!(config.drain.grace, Duration::from_secs(30));
    assert_eq!(config.reaper.interval, Duration::from_secs(60));
    assert_eq!(config.reaper.consecutive_passes, 2);
    assert_eq!(config.reaper.min_age, Duration::from_secs(60));
    assert_eq!(config.reaper.max_age, Duration::from_secs(172_800));
    assert_eq!(config.reaper.deploying_timeout, Duration::from_secs(1800));
    assert_eq!(config.host.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(config.host.admin_listen.to_string(), "127.0.0.1:8081");
    assert_eq!(config.host.instances, 2);
    assert_eq!(config.host.state_dir, Path::new("/srv/shop/.flotilla/host"));
    assert_eq!(config.host.keep_releases, 2);
    assert_eq!(config.aws.cpu, 256);
    assert_eq!(config.aws.memory, 512);
    assert_eq!(config.aws.desired_count, 2);
    assert_eq!(config.aws.nat, Nat::Single);
    assert_eq!(config.instances(), 2);
    assert_eq!(origin_of(&config, "app.port"), "default");
    assert_eq!(origin_of(&config, "name"), "flotilla.toml:1:8");
}

#[test]
fn environment_overrides_the_file_and_flags_override_both() {
    let text = "name = \"shop\"\n[app]\nport = 8000\n[host]\ncommand = \"./run\"\n";
    let env = [
        ("FLOTILLA_NAME", "shop-env"),
        ("FLOTILLA_APP_PORT", "9000"),
        ("FLOTILLA_DRAIN_GRACE_SECONDS", "7"),
        ("FLOTILLA_HOST_LISTEN", "0.0.0.0:80"),
        ("FLOTILLA_APP_INJECT_CLIENT", "yes"),
        ("FLOTILLA_AWS_SUBNETS", "subnet-a, subnet-b"),
        // An empty variable counts as unset.
        ("FLOTILLA_HOST_INSTANCES", ""),
    ];
    let config = ok(text, &env, &Overrides::default());
    assert_eq!(config.name.as_str(), "shop-env");
    assert_eq!(config.app.port, 9000);
    assert_eq!(config.drain.grace, Duration::from_secs(7));
    assert_eq!(config.host.listen.to_string(), "0.0.0.0:80");
    assert!(config.app.inject_client);
    assert_eq!(
        config.aws.subnets,
        Some(vec!["subnet-a".to_owned(), "subnet-b".to_owned()])
    );
    assert_eq!(config.host.instances, 2);
    assert_eq!(
        origin_of(&config, "name"),
        "environment variable FLOTILLA_NAME"
    );
    assert_eq!(
        origin_of(&config, "app.port"),
        "environment variable FLOTILLA_APP_PORT"
    );
    assert_eq!(origin_of(&config, "host.instances"), "default");

    let flags = Overrides {
        name: Some("shop-flag".to_owned()),
        provider: Some(ProviderKind::Aws),
        ..Default::default()
    };
    let config = ok(text, &env, &flags);
    assert_eq!(config.name.as_str(), "shop-flag");
    assert_eq!(config.provider, ProviderKind::Aws);
    assert_eq!(origin_of(&config, "name"), "flag --name");
    assert_eq!(origin_of(&config, "provider"), "flag --provider");
    // The environment still wins over the file where no flag exists.
    assert_eq!(config.app.port, 9000);
}

#[test]
fn bad_environment_values_name_the_variable() {
    check(
        BASE,
        &[
            ("FLOTILLA_APP_PORT", "eighty"),
            ("FLOTILLA_APP_INJECT_CLIENT", "maybe"),
            ("FLOTILLA_REAPER_MIN_AGE_SECONDS", "-1"),
            ("FLOTILLA_NAME", "Bad Name"),
        ],
        &Overrides::default(),
        &[
            "environment variable FLOTILLA_APP_INJECT_CLIENT: `app.inject_client` must be true or \
             false (or 1/0, yes/no), not \"maybe\"",
            "environment variable FLOTILLA_APP_PORT: `app.port` must be an integer, not \"eighty\"",
            "environment variable FLOTILLA_NAME: invalid `name`: deployment name `Bad Name` \
             contains 'B' at position 0; use lowercase letters, digits and hyphens",
            "environment variable FLOTILLA_REAPER_MIN_AGE_SECONDS: `reaper.min_age_seconds` must \
             be 0 or more, not -1",
        ],
    );
    // A bad flag is reported as the flag.
    check(
        BASE,
        &[],
        &Overrides {
            name: Some("-x".to_owned()),
            ..Default::default()
        },
        &["flag --name: invalid `name`: deployment name `-x` must start with a lowercase letter"],
    );
}

#[test]
fn without_a_file_the_environment_must_name_the_deployment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let overrides = Overrides::default();
    let no_env = |_: &str| None;
    let err = load(&Inputs {
        explicit: None,
        cwd: dir.path(),
        env: &no_env,
        overrides: &overrides,
    })
    .expect_err("no file, no name");
    assert!(matches!(err, ConfigError::NotFound { .. }), "{err}");

    let env = |key: &str| match key {
        "FLOTILLA_NAME" => Some("shop".to_owned()),
        "FLOTILLA_PROVIDER" => Some("aws".to_owned()),
        _ => None,
    };
    let config = load(&Inputs {
        explicit: None,
        cwd: dir.path(),
        env: &env,
        overrides: &overrides,
    })
    .expect("configured by the environment");
    assert_eq!(config.name.as_str(), "shop");
    assert_eq!(config.provider, ProviderKind::Aws);
    assert_eq!(config.file, None);

    // The host provider still needs its command, reported against the configuration.
    let env = |key: &str| (key == "FLOTILLA_NAME").then(|| "shop".to_owned());
    let err = load(&Inputs {
        explicit: None,
        cwd: dir.path(),
        env: &env,
        overrides: &overrides,
    })
    .expect_err("host needs a command");
    assert!(
        err.to_string()
            .contains("configuration: missing `command` in [host]"),
        "{err}"
    );
}

#[test]
fn the_file_is_found_in_the_nearest_parent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nested = dir.path().join("a/b/c");
    std::fs::create_dir_all(&nested).expect("mkdir");
    assert_eq!(find_file(&nested), None);
    std::fs::write(dir.path().join("a").join(FILE_NAME), BASE).expect("write");
    assert_eq!(
        find_file(&nested),
        Some(dir.path().join("a").join(FILE_NAME))
    );
    std::fs::write(nested.join(FILE_NAME), BASE).expect("write");
    assert_eq!(find_file(&nested), Some(nested.join(FILE_NAME)));

    let no_env = |_: &str| None;
    let config = load(&Inputs {
        explicit: None,
        cwd: &dir.path().join("a/b"),
        env: &no_env,
        overrides: &Overrides::default(),
    })
    .expect("found in a parent");
    assert_eq!(config.root, dir.path().join("a"));
    assert_eq!(config.host.state_dir, dir.path().join("a/.flotilla/host"));

    let missing = load(&Inputs {
        explicit: Some(Path::new("nope.toml")),
        cwd: dir.path(),
        env: &no_env,
        overrides: &Overrides::default(),
    })
    .expect_err("explicit path missing");
    assert!(
        matches!(missing, ConfigError::Unreadable { .. }),
        "{missing}"
    );
}

#[test]
fn the_init_template_documents_every_key_and_validates() {
    for provider in [ProviderKind::Host, ProviderKind::Aws] {
        for (command, build) in [
            ("./start.sh".to_owned(), None),
            ("npm start".to_owned(), Some("npm ci".to_owned())),
            ("sh -c \"exec ./app --port $PORT\"".to_owned(), None),
        ] {
            let text = template::render(&InitValues {
                name: "my-shop".to_owned(),
                provider,
                command: command.clone(),
                build: build.clone(),
                detected: "Guessed for a test.",
            });
            let config = ok(&text, &[], &Overrides::default());
            assert_eq!(config.name.as_str(), "my-shop");
            assert_eq!(config.provider, provider);
            if provider == ProviderKind::Host {
                assert_eq!(config.host.command.as_deref(), Some(command.as_str()));
                assert_eq!(config.host.build, build);
            }
            for key in schema::KEYS {
                let written = format!("\n{} = ", key.name);
                let commented = format!("\n# {} = ", key.name);
                assert!(
                    text.contains(&written) || text.contains(&commented),
                    "{} missing from the template",
                    key.path()
                );
                let first_doc_words: String = key
                    .doc
                    .split_whitespace()
                    .take(4)
                    .collect::<Vec<_>>()
                    .join(" ");
                assert!(
                    text.replace("\n# ", " ").contains(&first_doc_words),
                    "{} is not documented",
                    key.path()
                );
            }
            // Every value written out equals the default the resolver would use anyway, except
            // the ones init chose.
            let mut defaults = layers::defaults();
            if provider == ProviderKind::Aws {
                layers::aws_defaults(&mut defaults);
            }
            for source in &config.sources {
                if !matches!(
                    source.key.as_str(),
                    "name" | "provider" | "host.command" | "host.build"
                ) && source.value.is_some()
                {
                    let default = defaults.get(&source.key).map(|s| s.val.clone());
                    assert_eq!(source.value, default, "{}", source.key);
                }
            }
        }
    }
}

#[test]
fn app_environment_layers_file_then_environment_then_flags() {
    let text = "name = \"shop\"\n[host]\ncommand = \"./run\"\n\n[env]\nLOG_LEVEL = \"info\"\nWORKERS = 4\nDEBUG = false\n";
    let flags = Overrides {
        environment: vec![
            ("FLOTILLA_ENV_LOG_LEVEL".to_owned(), "debug".to_owned()),
            ("FLOTILLA_ENV_REGION_NAME".to_owned(), "north".to_owned()),
            ("FLOTILLA_ENV_EMPTY".to_owned(), String::new()),
            ("UNRELATED".to_owned(), "x".to_owned()),
        ],
        env: vec!["REGION_NAME=south".to_owned()],
        ..Default::default()
    };
    let config = ok(text, &[], &flags);
    let vars: Vec<(&str, &str)> = config
        .env
        .vars
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        vars,
        vec![
            ("DEBUG", "false"),
            ("LOG_LEVEL", "debug"),
            ("REGION_NAME", "south"),
            ("WORKERS", "4"),
        ]
    );
    assert_eq!(origin_of(&config, "env.WORKERS"), "flotilla.toml:7:11");
    assert_eq!(
        origin_of(&config, "env.LOG_LEVEL"),
        "environment variable FLOTILLA_ENV_LOG_LEVEL"
    );
    assert_eq!(
        origin_of(&config, "env.REGION_NAME"),
        "flag --env REGION_NAME"
    );
}

#[test]
fn app_environment_names_and_secret_references_are_checked() {
    let host = "name = \"shop\"\n[host]\ncommand = \"./run\"\n[env]\n\"1BAD\" = \"x\"\nPORT = \"1\"\nFLOTILLA_X = \"y\"\nLIST = [\"a\"]\n[secrets]\nTOKEN = \"ssm:/shop/token\"\n";
    check(
        host,
        &[],
        &Overrides::default(),
        &[
            "flotilla.toml:5:10: `env.1BAD`: `1BAD` is not a variable name: use letters, digits \
             and `_`, not starting with a digit",
            "flotilla.toml:6:8: `env.PORT`: `PORT` is reserved: flotilla tells each instance its \
             port in PORT",
            "flotilla.toml:7:14: `env.FLOTILLA_X`: `FLOTILLA_X` is reserved: flotilla sets \
             FLOTILLA_* variables itself",
            "flotilla.toml:8:8: `env.LIST` must be a string (or a number or boolean), not an array",
            "flotilla.toml:10:9: `secrets.TOKEN`: [secrets] names AWS references; on the host \
             provider put `TOKEN=...` in the file named by [host] secrets_file",
        ],
    );
    let aws = "name = \"shop\"\nprovider = \"aws\"\n[aws]\ncommand = \"./run\"\n[env]\nA = \"1\"\n[secrets]\nA = \"ssm:/a\"\nDB = \"hunter2\"\nOK = \"ssm:/shop/db\"\n";
    let problems = resolve(aws, &[], &Overrides::default()).expect_err("bad secrets");
    assert!(
        problems
            .iter()
            .any(|p| p.contains("`A` is in both [env] and [secrets]")),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p
            .starts_with("flotilla.toml:9:6: `secrets.DB`: `hunter2` is not a secret reference")),
        "{problems:?}"
    );
}

#[test]
fn a_secrets_file_inside_the_app_directory_is_refused() {
    let text = |path: &str| {
        format!("name = \"shop\"\n[host]\ncommand = \"./run\"\nsecrets_file = \"{path}\"\n")
    };
    check(
        &text("secrets.env"),
        &[],
        &Overrides::default(),
        &[
            "flotilla.toml:4:16: `host.secrets_file` /srv/shop/secrets.env is inside the app \
           directory, so every release snapshot would copy it; move it outside, or under \
           .flotilla/",
        ],
    );
    let config = ok(&text("../shop-secrets.env"), &[], &Overrides::default());
    assert_eq!(
        config.host.secrets_file.as_deref(),
        Some(Path::new("/srv/shop-secrets.env"))
    );
    ok(&text(".flotilla/secrets.env"), &[], &Overrides::default());
}

#[test]
fn aws_waits_longer_for_health_and_ecs_grace_follows_the_wait() {
    let none = Overrides::default();
    let aws = "name = \"shop\"\nprovider = \"aws\"\n";
    // Fargate pulls the image through NAT first: 300 s on AWS, 120 s on the host.
    let config = ok(aws, &[], &none);
    assert_eq!(config.app.health_timeout, Duration::from_secs(300));
    assert_eq!(origin_of(&config, "app.health_timeout_seconds"), "default");
    assert_eq!(config.health_check_grace_seconds(), 300);
    assert_eq!(
        ok(BASE, &[], &none).app.health_timeout,
        Duration::from_secs(120)
    );
    // The provider chosen by a flag picks the defaults too.
    let flagged = ok(
        "name = \"shop\"\n",
        &[],
        &Overrides {
            provider: Some(ProviderKind::Aws),
            ..Default::default()
        },
    );
    assert_eq!(flagged.app.health_timeout, Duration::from_secs(300));
    // A health timeout set anywhere wins, and the grace period follows it.
    let config = ok(
        &format!("{aws}[app]\nhealth_timeout_seconds = 600\n"),
        &[],
        &none,
    );
    assert_eq!(config.app.health_timeout, Duration::from_secs(600));
    assert_eq!(config.health_check_grace_seconds(), 600);
    let config = ok(aws, &[("FLOTILLA_APP_HEALTH_TIMEOUT_SECONDS", "90")], &none);
    assert_eq!(config.health_check_grace_seconds(), 90);
    // The grace period alone.
    let config = ok(
        &format!("{aws}[aws]\nhealth_check_grace_seconds = 45\n"),
        &[],
        &none,
    );
    assert_eq!(config.health_check_grace_seconds(), 45);
    assert_eq!(config.app.health_timeout, Duration::from_secs(300));
    check(
        &format!("{aws}[aws]\nhealth_check_grace_seconds = -1\n"),
        &[],
        &none,
        &[
            "flotilla.toml:4:30: `aws.health_check_grace_seconds` must be between 0 and 86400, not -1",
        ],
    );
    // `init` writes the provider's own default.
    let rendered = |provider| {
        template::render(&InitValues {
            name: "shop".into(),
            provider,
            command: "./run".into(),
            build: None,
            detected: "",
        })
    };
    assert!(rendered(ProviderKind::Aws).contains("\nhealth_timeout_seconds = 300\n"));
    assert!(rendered(ProviderKind::Host).contains("\nhealth_timeout_seconds = 120\n"));
}

#[test]
fn stale_signals_are_read_from_the_file_and_the_environment() {
    let text = "name = \"shop\"\n[app]\nstale_status = 409\nstale_header = \"X-Pulse-Stale-Affinity: 1\"\n\
                stale_socket_reroute_query = \"pulse_reload_on_stale_affinity=1\"\n[host]\ncommand = \"./run\"\n";
    let config = ok(text, &[], &Overrides::default());
    assert_eq!(config.app.stale.status, 409);
    assert_eq!(
        config
            .app
            .stale
            .header
            .as_ref()
            .map(ToString::to_string)
            .as_deref(),
        Some("x-pulse-stale-affinity: 1")
    );
    assert_eq!(
        config
            .app
            .stale
            .socket_reroute
            .as_ref()
            .map(ToString::to_string)
            .as_deref(),
        Some("pulse_reload_on_stale_affinity=1")
    );
    assert_eq!(origin_of(&config, "app.stale_status"), "flotilla.toml:3:16");
    let env = [("FLOTILLA_APP_STALE_STATUS", "410")];
    let config = ok(text, &env, &Overrides::default());
    assert_eq!(config.app.stale.status, 410);
}

#[test]
fn a_framework_preset_fills_in_its_keys_with_their_origin() {
    let none = Overrides::default();
    let config = ok(&format!("{BASE}[app]\nframework = \"pulse\"\n"), &[], &none);
    assert_eq!(config.app.framework, Framework::Pulse);
    assert_eq!(config.app.affinity_header, "x-pulse-deployment");
    assert_eq!(config.app.affinity_query, "pulse_deployment");
    assert_eq!(config.app.health_path, "/_pulse/health");
    assert_eq!(origin_of(&config, "app.framework"), "flotilla.toml:5:13");
    assert_eq!(origin_of(&config, "app.affinity_query"), "preset pulse");
    assert_eq!(origin_of(&config, "app.health_path"), "preset pulse");
    assert!(config.app.inject_client);
    // Keys the preset does not set keep flotilla's defaults.
    assert_eq!(config.app.port, 8000);
    assert_eq!(origin_of(&config, "app.port"), "default");

    let config = ok(
        &format!("{BASE}[app]\nframework = \"streamlit\"\n"),
        &[],
        &none,
    );
    assert_eq!(config.app.health_path, "/_stcore/health");
    assert!(config.app.inject_client);
    assert_eq!(origin_of(&config, "app.inject_client"), "preset streamlit");
    assert_eq!(config.app.affinity_query, "flotilla_deployment");
    assert_eq!(origin_of(&config, "app.affinity_query"), "default");

    let config = ok(BASE, &[], &none);
    assert_eq!(config.app.framework, Framework::None);
    assert_eq!(config.app.health_path, "/healthz");
    assert_eq!(origin_of(&config, "app.health_path"), "default");
}

#[test]
fn every_preset_key_is_overridden_by_the_file_the_environment_and_flags() {
    let none = Overrides::default();
    // The file wins over the preset key by key, whichever line comes first.
    let text = format!("{BASE}[app]\nhealth_path = \"/ready\"\nframework = \"pulse\"\n");
    let config = ok(&text, &[], &none);
    assert_eq!(config.app.health_path, "/ready");
    assert_eq!(origin_of(&config, "app.health_path"), "flotilla.toml:5:15");
    assert_eq!(config.app.affinity_query, "pulse_deployment");
    // The environment wins over both, and may choose the preset itself.
    let config = ok(
        &text,
        &[
            ("FLOTILLA_APP_AFFINITY_QUERY", "tab_version"),
            ("FLOTILLA_APP_HEALTH_PATH", "/live"),
        ],
        &none,
    );
    assert_eq!(config.app.affinity_query, "tab_version");
    assert_eq!(config.app.health_path, "/live");
    assert_eq!(
        origin_of(&config, "app.affinity_query"),
        "environment variable FLOTILLA_APP_AFFINITY_QUERY"
    );
    assert_eq!(config.app.affinity_header, "x-pulse-deployment");
    let config = ok(BASE, &[("FLOTILLA_APP_FRAMEWORK", "streamlit")], &none);
    assert_eq!(config.app.health_path, "/_stcore/health");
    assert_eq!(origin_of(&config, "app.health_path"), "preset streamlit");
    // The environment's framework replaces the file's, and with it the whole preset.
    let config = ok(&text, &[("FLOTILLA_APP_FRAMEWORK", "none")], &none);
    assert_eq!(config.app.affinity_query, "flotilla_deployment");
    assert_eq!(config.app.health_path, "/ready");
    // Flags (here the provider) still apply on top; the preset holds on either provider.
    let flags = Overrides {
        name: Some("other".to_owned()),
        ..Overrides::default()
    };
    let config = ok(&text, &[], &flags);
    assert_eq!(config.name.as_str(), "other");
    assert_eq!(config.app.affinity_header, "x-pulse-deployment");
}

#[test]
fn an_unknown_framework_is_reported_with_the_closest_one() {
    let none = Overrides::default();
    check(
        &format!("{BASE}[app]\nframework = \"pulze\"\n"),
        &[],
        &none,
        &[
            "flotilla.toml:5:13: `app.framework` must be \"none\", \"pulse\" or \"streamlit\", \
           not \"pulze\"; did you mean \"pulse\"?",
        ],
    );
    check(
        BASE,
        &[("FLOTILLA_APP_FRAMEWORK", "django")],
        &none,
        &[
            "environment variable FLOTILLA_APP_FRAMEWORK: `app.framework` must be \"none\", \
           \"pulse\" or \"streamlit\", not \"django\"",
        ],
    );
}

/// An `init` template writes keys with defaults out; had it written the keys a preset sets, they
/// would silently override the preset of a framework chosen afterwards.
#[test]
fn choosing_a_framework_in_an_init_template_takes_effect() {
    let text = template::render(&InitValues {
        name: "my-shop".to_owned(),
        provider: ProviderKind::Host,
        command: "./start.sh".to_owned(),
        build: None,
        detected: "Guessed for a test.",
    });
    let chosen = text.replace("framework = \"none\"", "framework = \"streamlit\"");
    assert_ne!(chosen, text, "the template writes `framework = \"none\"`");
    let config = ok(&chosen, &[], &Overrides::default());
    assert_eq!(config.app.health_path, "/_stcore/health");
    assert!(config.app.inject_client);
    assert_eq!(origin_of(&config, "app.health_path"), "preset streamlit");
    assert!(text.contains("\n# health_path = \"/healthz\"\n"), "{text}");
}

#[test]
fn a_state_dir_that_is_the_root_or_contains_the_app_directory_is_refused_with_its_line() {
    let none = Overrides::default();
    check(
        &format!("{BASE}state_dir = \"/\"\n"),
        &[],
        &none,
        &[
            "flotilla.toml:4:13: `host.state_dir` \"/\" is the filesystem root; keep the state in \
           a directory of its own, e.g. \".flotilla/host\"",
        ],
    );
    for (value, dir) in [
        ("..", "/srv"),
        ("../..", "/"),
        (".", "/srv/shop"),
        ("/srv", "/srv"),
    ] {
        let got =
            resolve(&format!("{BASE}state_dir = \"{value}\"\n"), &[], &none).expect_err("refused");
        let want = if dir == "/" {
            format!("flotilla.toml:4:13: `host.state_dir` \"{value}\" is the filesystem root")
        } else {
            format!(
                "flotilla.toml:4:13: `host.state_dir` \"{value}\" is {dir}, which contains the app \
                 directory /srv/shop; a release snapshot skips the state directory"
            )
        };
        assert!(
            got.len() == 1 && got[0].starts_with(&want),
            "{value}: {got:?}"
        );
    }
    // Beside the app directory, or anywhere else, is fine.
    for value in ["../shop-state", "/var/lib/flotilla/shop", ".flotilla/other"] {
        ok(&format!("{BASE}state_dir = \"{value}\"\n"), &[], &none);
    }
}

#[test]
fn a_status_page_reachable_from_other_machines_needs_a_token_and_is_warned_about() {
    let none = Overrides::default();
    let local = ok(BASE, &[], &none);
    assert!(local.exposure_warnings().is_empty());
    assert_eq!(local.host.admin_token_file, None);
    for addr in ["0.0.0.0:9000", "192.0.2.7:9000", "[::]:9000"] {
        // Without a token: refused, at the key's line, naming the key to set.
        let refused = resolve(&format!("{BASE}admin_listen = \"{addr}\"\n"), &[], &none)
            .expect_err("no token");
        assert!(
            refused.len() == 1
                && refused[0].starts_with(&format!(
                    "flotilla.toml:4:16: `host.admin_listen` {addr} is not a loopback address, so \
                     the status page needs a token: set `admin_token_file` in [host]"
                ))
                && refused[0].ends_with("or listen on 127.0.0.1:9000"),
            "{addr}: {refused:?}"
        );
        // With one: accepted (relative to the config's directory), still warned about.
        let exposed = ok(
            &format!(
                "{BASE}admin_listen = \"{addr}\"\nadmin_token_file = \"../shop-admin.token\"\n"
            ),
            &[],
            &none,
        );
        assert_eq!(
            exposed.host.admin_token_file.as_deref(),
            Some(Path::new("/srv/shop-admin.token"))
        );
        let warnings = exposed.exposure_warnings();
        assert_eq!(warnings.len(), 1, "{addr}: {warnings:?}");
        assert!(
            warnings[0].starts_with(&format!(
                "`host.admin_listen` {addr} is not a loopback address: the status page is served \
                 over plain HTTP, so its token crosses the network in clear"
            )),
            "{}",
            warnings[0]
        );
    }
    // The environment counts as much as the file.
    let from_env = resolve(
        BASE,
        &[("FLOTILLA_HOST_ADMIN_LISTEN", "0.0.0.0:9000")],
        &none,
    )
    .expect_err("no token");
    assert!(
        from_env.len() == 1 && from_env[0].contains("set `admin_token_file` in [host]"),
        "{from_env:?}"
    );
    ok(
        BASE,
        &[
            ("FLOTILLA_HOST_ADMIN_LISTEN", "0.0.0.0:9000"),
            (
                "FLOTILLA_HOST_ADMIN_TOKEN_FILE",
                "/etc/flotilla/admin.token",
            ),
        ],
        &none,
    );
    check(
        &format!("{BASE}admin_token_file = \" \"\n"),
        &[],
        &none,
        &["flotilla.toml:4:20: `host.admin_token_file` is empty; name a file or leave the key out"],
    );
    let v6_loopback = ok(
        &format!("{BASE}admin_listen = \"[::1]:9000\"\n"),
        &[],
        &none,
    );
    assert!(v6_loopback.exposure_warnings().is_empty());
    // A token on loopback is allowed (and enforced by the daemon).
    ok(
        &format!("{BASE}admin_token_file = \"/etc/flotilla/admin.token\"\n"),
        &[],
        &none,
    );
}

/// Without the `aws` feature (`.ci/run` runs this with `--no-default-features`), an AWS
/// configuration is refused once, at `provider`, with what to do.
#[cfg(not(feature = "aws"))]
#[test]
fn without_the_aws_feature_an_aws_configuration_is_refused_at_provider() {
    let text = "name = \"shop\"\nprovider = \"aws\"\n[secrets]\nTOKEN = \"anything\"\n";
    check(
        text,
        &[],
        &Overrides::default(),
        &[
            "flotilla.toml:2:12: `provider` is \"aws\", but this flotilla was built without the AWS \
             provider (the `aws` cargo feature): install a build that has it (`cargo install \
             --path crates/flotilla-cli`) or use `provider = \"host\"`",
        ],
    );
}

#[test]
fn hosts_put_the_app_behind_the_front_door_with_its_own_status_port() {
    let none = Overrides::default();
    let config = ok(
        &format!("{BASE}hosts = [\"Shop.Example.com\", \"*.shop.example.com\"]\n"),
        &[],
        &none,
    );
    assert_eq!(
        config.host.hosts,
        Some(vec![
            "shop.example.com".to_owned(),
            "*.shop.example.com".to_owned()
        ])
    );
    assert_eq!(
        config.host.admin_listen,
        "127.0.0.1:0".parse().expect("addr"),
        "two apps behind one front door never collide on the default status port"
    );
    assert_eq!(config.host.front_door_socket, None);
    let without = ok(BASE, &[], &none);
    assert_eq!(without.host.hosts, None);
    assert_eq!(
        without.host.admin_listen,
        "127.0.0.1:8081".parse().expect("addr")
    );
}

#[test]
fn hosts_are_checked_and_listen_beside_them_is_refused() {
    let none = Overrides::default();
    check(
        &format!("{BASE}hosts = [\"shop.example.com\", \"https://x/\"]\n"),
        &[],
        &none,
        &[
            "flotilla.toml:4:9: `host.hosts` lists \"https://x/\": not a host name (use names like \
           \"shop.example.com\" or \"*.example.com\", without a scheme or path)",
        ],
    );
    check(
        &format!("{BASE}hosts = []\n"),
        &[],
        &none,
        &[
            "flotilla.toml:4:9: `host.hosts` is empty; list the host names this app answers for, \
           or leave the key out to serve on `listen`",
        ],
    );
    check(
        &format!("{BASE}hosts = [\"a.example\"]\nlisten = \"0.0.0.0:80\"\n"),
        &[],
        &none,
        &[
            "flotilla.toml:5:10: `host.listen` has no effect when `host.hosts` is set: the front \
           door owns the public ports and hands this app its connections; remove `listen`, or \
           remove `hosts` to serve on `listen` alone",
        ],
    );
}

#[test]
fn https_takes_certificate_files_or_acme_hosts_and_says_what_is_missing() {
    use super::{HttpsConfig, TlsCertificates};
    let none = Overrides::default();
    let files = ok(
        &format!(
            "{BASE}https_listen = \"0.0.0.0:8443\"\ntls_certificate_file = \"tls/cert.pem\"\n\
             tls_key_file = \"/etc/flotilla/key.pem\"\n"
        ),
        &[],
        &none,
    );
    assert_eq!(
        files.host.https,
        Some(HttpsConfig {
            listen: "0.0.0.0:8443".parse().expect("addr"),
            certificates: TlsCertificates::Files {
                certificate: "/srv/shop/tls/cert.pem".into(),
                key: "/etc/flotilla/key.pem".into(),
            },
        })
    );
    let acme = ok(
        &format!(
            "{BASE}https_listen = \"0.0.0.0:443\"\nacme_hosts = [\"Shop.example.com\"]\n\
             acme_challenge = \"tls-alpn-01\"\n"
        ),
        &[],
        &none,
    );
    assert_eq!(
        acme.host.https.expect("https").certificates,
        TlsCertificates::Acme {
            hosts: vec!["shop.example.com".to_owned()],
            email: None,
            directory: "https://acme-v02.api.letsencrypt.org/directory".to_owned(),
            challenge: "tls-alpn-01".to_owned(),
            ca_file: None,
        }
    );
    // From the environment too.
    let from_env = ok(
        BASE,
        &[
            ("FLOTILLA_HOST_HTTPS_LISTEN", "127.0.0.1:8443"),
            ("FLOTILLA_HOST_ACME_HOSTS", "a.example.com,b.example.com"),
        ],
        &none,
    );
    assert!(from_env.host.https.is_some());
    assert_eq!(ok(BASE, &[], &none).host.https, None);

    check(
        &format!("{BASE}https_listen = \"0.0.0.0:443\"\n"),
        &[],
        &none,
        &[
            "flotilla.toml:4:16: `host.https_listen` is set but there is no certificate: set \
           `tls_certificate_file` and `tls_key_file` in [host], or `acme_hosts` to obtain one \
           over ACME",
        ],
    );
    check(
        &format!("{BASE}tls_certificate_file = \"cert.pem\"\n"),
        &[],
        &none,
        &[
            "flotilla.toml:4:24: `host.tls_certificate_file` is set without `tls_key_file`: name \
             the file holding its private key",
            "flotilla.toml:4:24: `host.tls_certificate_file` is set but `https_listen` is not: \
             set `https_listen` in [host] (e.g. \"0.0.0.0:443\") to serve HTTPS, or remove \
             `host.tls_certificate_file`",
        ],
    );
    check(
        &format!(
            "{BASE}https_listen = \"0.0.0.0:443\"\ntls_key_file = \"key.pem\"\n\
             acme_hosts = [\"shop.example.com\", \"*.example.com\", \"http://x.example.com\"]\n"
        ),
        &[],
        &none,
        &[
            "flotilla.toml:5:16: `host.tls_key_file` is set without `tls_certificate_file`: name \
             the file holding its certificate chain",
            "flotilla.toml:6:14: `host.acme_hosts` lists [\"*.example.com\", \
             \"http://x.example.com\"], which are not host names: give names such as \
             \"shop.example.com\" (no scheme, port, path or wildcard: http-01 and tls-alpn-01 \
             cannot validate wildcards)",
        ],
    );
    check(
        &format!(
            "{BASE}https_listen = \"127.0.0.1:8080\"\nacme_hosts = [\"shop.example.com\"]\n\
             acme_challenge = \"dns-01\"\nacme_directory = \"http://ca.example.com/dir\"\n\
             acme_email = \"ops\"\n"
        ),
        &[],
        &none,
        &[
            "flotilla.toml:4:16: `host.https_listen` (127.0.0.1:8080) is the same address as \
             `host.listen`; HTTPS needs its own port",
            "flotilla.toml:6:18: `host.acme_challenge` must be \"http-01\" or \"tls-alpn-01\", \
             not \"dns-01\"",
            "flotilla.toml:7:18: `host.acme_directory` \"http://ca.example.com/dir\" is not an \
             https:// URL; ACME servers are reached over HTTPS (Let's Encrypt: \
             \"https://acme-v02.api.letsencrypt.org/directory\")",
            "flotilla.toml:8:14: `host.acme_email` \"ops\" is not an email address; give one \
             such as \"ops@example.com\" or leave the key out",
        ],
    );
}

#[test]
fn the_canary_section_is_read_checked_and_named_in_its_problems() {
    let none = Overrides::default();
    let defaults = ok(BASE, &[], &none).canary.plan;
    assert_eq!(defaults.steps, vec![5, 25, 50]);
    assert_eq!(defaults.pause, Duration::from_secs(60));
    assert_eq!(defaults.thresholds.max_error_ratio, 0.05);
    assert_eq!(defaults.thresholds.max_error_ratio_increase, 0.01);
    assert_eq!(defaults.thresholds.max_p99_ratio, 1.5);
    assert_eq!(defaults.thresholds.min_requests, 50);
    assert_eq!(defaults.max_extensions, 2);

    let text = format!(
        "{BASE}[canary]\nsteps = [10, 50]\npause_seconds = 30\nmax_error_percent = 2\n\
         max_p99_percent = 200\n"
    );
    let plan = ok(&text, &[], &none).canary.plan;
    assert_eq!(
        (plan.steps, plan.pause),
        (vec![10, 50], Duration::from_secs(30))
    );
    assert_eq!(plan.thresholds.max_error_ratio, 0.02);
    assert_eq!(plan.thresholds.max_p99_ratio, 2.0);
    let config = ok(BASE, &[("FLOTILLA_CANARY_STEPS", "1, 2,3")], &none);
    assert_eq!(config.canary.plan.steps, vec![1, 2, 3]);
    assert_eq!(
        origin_of(&config, "canary.steps"),
        "environment variable FLOTILLA_CANARY_STEPS"
    );

    let cases: &[(&str, &str)] = &[
        (
            "[canary]\nsteps = [25, 5]",
            "flotilla.toml:5:9: `canary.steps`: canary steps must increase: 5% follows 25%",
        ),
        (
            "[canary]\nsteps = [5, 100]",
            "flotilla.toml:5:9: `canary.steps`: canary step 100% is not between 1 and 99 (100 is \
             the promotion that follows the last step)",
        ),
        (
            "[canary]\nsteps = []",
            "flotilla.toml:5:9: `canary.steps`: a canary needs at least one step (e.g. steps = \
             [5, 25, 50])",
        ),
        (
            "[canary]\nsteps = 5",
            "flotilla.toml:5:9: `canary.steps` must be an array of integers, not an integer \
             (write [5])",
        ),
        (
            "[canary]\nsteps = [5, \"25\"]",
            "flotilla.toml:5:13: `canary.steps` must be an array of integers, but this item is a \
             string",
        ),
        (
            "[canary]\npause_seconds = 0",
            "flotilla.toml:5:17: `canary.pause_seconds` must be between 1 and 86400, not 0",
        ),
        (
            "[canary]\nmax_p99_percent = 90",
            "flotilla.toml:5:19: `canary.max_p99_percent` must be between 100 and 10000, not 90",
        ),
    ];
    for (snippet, want) in cases {
        check(&format!("{BASE}{snippet}\n"), &[], &none, &[want]);
    }
    check(
        BASE,
        &[("FLOTILLA_CANARY_STEPS", "5,x")],
        &none,
        &[
            "environment variable FLOTILLA_CANARY_STEPS: `canary.steps` must be comma-separated \
           integers, not \"5,x\"",
        ],
    );
}
