//! The one table of every `flotilla.toml` key: its section, type, default and documentation.
//!
//! Everything that needs to know the keys reads them from [`KEYS`]: the parser (unknown keys and
//! their closest valid neighbour), the environment layer (`FLOTILLA_<SECTION>_<KEY>`), the
//! resolver (defaults), `config check` (the listing) and `init` (the commented template).

/// The TOML type a key takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ty {
    /// A string.
    Str,
    /// An integer.
    Int,
    /// `true` or `false`.
    Bool,
    /// An array of strings (comma-separated in an environment variable).
    StrList,
    /// An array of integers (comma-separated in an environment variable).
    IntList,
}

impl Ty {
    /// The type in words, for error messages: "an integer".
    pub fn describe(self) -> &'static str {
        match self {
            Ty::Str => "a string",
            Ty::Int => "an integer",
            Ty::Bool => "true or false",
            Ty::StrList => "an array of strings",
            Ty::IntList => "an array of integers",
        }
    }
}

/// A key's value when the file, the environment and the flags say nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DefaultValue {
    /// Must be given (possibly only for one provider; the resolver says when).
    Required,
    /// May be left out; absent means "not set".
    Unset,
    /// An integer.
    Int(i64),
    /// A string.
    Str(&'static str),
    /// A boolean.
    Bool(bool),
}

/// One key of `flotilla.toml`.
#[derive(Clone, Copy, Debug)]
pub struct Key {
    /// The section (`app`, `drain`, ...), or `""` for a top-level key.
    pub section: &'static str,
    /// The key within its section.
    pub name: &'static str,
    /// Its TOML type.
    pub ty: Ty,
    /// Its default.
    pub default: DefaultValue,
    /// What it means, in one or two sentences (written into the `init` template as comments).
    pub doc: &'static str,
    /// A TOML value to show in the template for keys without a default.
    pub example: Option<&'static str>,
}

impl Key {
    /// The dotted path, `app.port`, or `name` for a top-level key.
    pub fn path(&self) -> String {
        if self.section.is_empty() {
            self.name.to_owned()
        } else {
            format!("{}.{}", self.section, self.name)
        }
    }

    /// The environment variable that overrides this key: `FLOTILLA_<SECTION>_<KEY>` in upper case,
    /// or `FLOTILLA_<KEY>` for a top-level key.
    pub fn env_var(&self) -> String {
        if self.section.is_empty() {
            format!("FLOTILLA_{}", self.name.to_ascii_uppercase())
        } else {
            format!(
                "FLOTILLA_{}_{}",
                self.section.to_ascii_uppercase(),
                self.name.to_ascii_uppercase()
            )
        }
    }
}

/// Sections in the order the template writes them, each with a one-line description.
pub const SECTIONS: &[(&str, &str)] = &[
    (
        "app",
        "Your app: how flotilla talks to it and decides that it is healthy.",
    ),
    (
        "drain",
        "Draining: how an old version's instances decide that their sessions have ended.",
    ),
    (
        "reaper",
        "The reaper: when draining versions are retired and their resources removed.",
    ),
    (
        "canary",
        "Canary deploys (`flotilla deploy --canary`): the new version's share of fresh sessions \
         step by step, and the limits it is judged by against the current version.",
    ),
    (
        "host",
        "The host provider: flotilla's own router and process supervisor on this machine.",
    ),
    (
        "aws",
        "The AWS provider: ECS Fargate behind an Application Load Balancer.",
    ),
];

const fn key(
    section: &'static str,
    name: &'static str,
    ty: Ty,
    default: DefaultValue,
    doc: &'static str,
) -> Key {
    Key {
        section,
        name,
        ty,
        default,
        doc,
        example: None,
    }
}

const fn key_ex(
    section: &'static str,
    name: &'static str,
    ty: Ty,
    default: DefaultValue,
    doc: &'static str,
    example: &'static str,
) -> Key {
    Key {
        section,
        name,
        ty,
        default,
        doc,
        example: Some(example),
    }
}

use self::DefaultValue::{Bool, Int, Required, Str, Unset};

/// Every key flotilla reads, in template order.
pub const KEYS: &[Key] = &[
    key_ex(
        "",
        "name",
        Ty::Str,
        Required,
        "The deployment name: a stable slug for this environment, e.g. \"shop\" or \"shop-staging\". \
         Lowercase letters, digits and single hyphens, starting with a letter, at most 32 characters.",
        "\"my-app\"",
    ),
    key(
        "",
        "provider",
        Ty::Str,
        Str("host"),
        "Where versions run: \"host\" (this machine, no cloud account needed) or \"aws\" \
         (ECS Fargate behind an Application Load Balancer).",
    ),
    // [app]
    key(
        "app",
        "framework",
        Ty::Str,
        Str("none"),
        "Your web framework, for its preset: \"pulse\" or \"streamlit\" set the affinity names, \
         the health path and the stale signals that framework understands (see \
         docs/frameworks.md); \"none\" sets nothing. A key written below still wins over the preset.",
    ),
    key(
        "app",
        "port",
        Ty::Int,
        Int(8000),
        "The port your app listens on inside its container (AWS). On the host provider each \
         instance is given its own port in the PORT environment variable instead.",
    ),
    key(
        "app",
        "health_path",
        Ty::Str,
        Str("/healthz"),
        "The path that answers 200 when an instance is ready for traffic.",
    ),
    key(
        "app",
        "affinity_header",
        Ty::Str,
        Str("X-Flotilla-Deployment"),
        "The request header that pins a tab to its version; responses carry it too, naming the \
         version that served them.",
    ),
    key(
        "app",
        "affinity_query",
        Ty::Str,
        Str("flotilla_deployment"),
        "The query parameter that pins WebSocket and EventSource URLs (browsers cannot set \
         headers on those).",
    ),
    key(
        "app",
        "inject_client",
        Ty::Bool,
        Bool(false),
        "Insert the flotilla browser script into HTML responses, so an app that knows nothing of \
         flotilla still gets per-tab affinity.",
    ),
    key(
        "app",
        "stale_status",
        Ty::Int,
        Int(410),
        "The status answered to a request pinned to a retired version: 410 (Gone) or 409 \
         (Conflict). Its body is always the JSON the browser client recognises. A WebSocket \
         upgrade is instead accepted and closed with code 4410, which scripts can see.",
    ),
    key_ex(
        "app",
        "stale_header",
        Ty::Str,
        Unset,
        "An extra `name: value` header on those answers, for a framework that reloads on it \
         (host provider only: an ALB fixed response cannot carry headers).",
        "\"x-pulse-stale-affinity: 1\"",
    ),
    key_ex(
        "app",
        "stale_socket_reroute_query",
        Ty::Str,
        Unset,
        "A query parameter `name=value` marking WebSocket URLs that should go to the current \
         version instead of being closed when their version is retired, for a framework that \
         reloads itself when its socket lands on a new version (host provider only).",
        "\"pulse_reload_on_stale_affinity=1\"",
    ),
    key(
        "app",
        "min_healthy",
        Ty::Int,
        Int(1),
        "Healthy instances a new version needs before fresh traffic switches to it. At most the \
         instance count ([host] instances or [aws] desired_count).",
    ),
    key(
        "app",
        "health_timeout_seconds",
        Ty::Int,
        Int(120),
        "How long a deploy waits for min_healthy healthy instances before it gives up, removes the \
         new version and leaves traffic where it was. Default 120 on the host provider, 300 on \
         AWS (a Fargate task pulls its image through NAT before it starts).",
    ),
    key(
        "app",
        "stop_timeout_seconds",
        Ty::Int,
        Int(30),
        "How long an instance has to exit after SIGTERM before it is killed (AWS allows at most 120).",
    ),
    // [drain]
    key(
        "drain",
        "poll_seconds",
        Ty::Int,
        Int(5),
        "How often a draining instance checks its version's state and reports its readiness.",
    ),
    key(
        "drain",
        "grace_seconds",
        Ty::Int,
        Int(30),
        "How long a draining instance keeps running after its last session ended, so that a tab \
         that is only reconnecting finds its version again; it starts over when a session returns.",
    ),
    // [reaper]
    key(
        "reaper",
        "interval_seconds",
        Ty::Int,
        Int(60),
        "How often the reaper runs (the host daemon's loop; the AWS schedule, at least 60).",
    ),
    key(
        "reaper",
        "consecutive_passes",
        Ty::Int,
        Int(2),
        "Passes in a row in which every instance of a draining version must report ready before \
         it is retired.",
    ),
    key(
        "reaper",
        "min_age_seconds",
        Ty::Int,
        Int(60),
        "A version younger than this is never touched by the reaper.",
    ),
    key(
        "reaper",
        "max_age_seconds",
        Ty::Int,
        Int(172_800),
        "A version draining for longer than this is retired even if sessions remain (default 48 hours).",
    ),
    key(
        "reaper",
        "deploying_timeout_seconds",
        Ty::Int,
        Int(1800),
        "A version still deploying after this long was left behind by a deploy that died; the \
         reaper cleans it up.",
    ),
    // [canary]
    key_ex(
        "canary",
        "steps",
        Ty::IntList,
        Unset,
        "The canary's share of fresh sessions at each step, in percent, increasing, each 1 to 99 \
         (default [5, 25, 50]); after the last step passes it gets all of them (promotion).",
        "[5, 25, 50]",
    ),
    key(
        "canary",
        "pause_seconds",
        Ty::Int,
        Int(60),
        "How long each step runs before the canary is judged against the current version over \
         that window.",
    ),
    key(
        "canary",
        "max_error_percent",
        Ty::Int,
        Int(5),
        "The highest share of 5xx answers the canary may give in a window, in percent.",
    ),
    key(
        "canary",
        "max_error_increase_percent",
        Ty::Int,
        Int(1),
        "How many points the canary's 5xx share may exceed the current version's in the same window.",
    ),
    key(
        "canary",
        "max_p99_percent",
        Ty::Int,
        Int(150),
        "The canary's p99 time to the response head may be at most this percentage of the \
         current version's (150: half again as slow).",
    ),
    key(
        "canary",
        "min_requests",
        Ty::Int,
        Int(50),
        "The fewest requests the canary must answer in a window to be judged; a step with fewer \
         runs another pause.",
    ),
    key(
        "canary",
        "max_extensions",
        Ty::Int,
        Int(2),
        "How many extra pauses a step with too few requests gets before the canary is rolled \
         back (a version nobody could judge does not take all the traffic).",
    ),
    // [host]
    key(
        "host",
        "listen",
        Ty::Str,
        Str("127.0.0.1:8080"),
        "Where the router accepts your users' requests (address:port). The daemon refuses to \
         start on a port another process already listens on (another app's daemon included) \
         and names that process.",
    ),
    key(
        "host",
        "admin_listen",
        Ty::Str,
        Str("127.0.0.1:8081"),
        "Where the read-only status page listens. On a loopback address it is open to local \
         users; on any other address it requires `admin_token_file`.",
    ),
    key_ex(
        "host",
        "admin_token_file",
        Ty::Str,
        Unset,
        "A file holding the status page's token (at least 16 characters, e.g. from `head -c 32 \
         /dev/urandom | base64`; keep it 0600, outside this directory). Requests must then send \
         `Authorization: Bearer <token>`. Required when admin_listen is not a loopback address.",
        "\"/etc/flotilla/admin.token\"",
    ),
    key_ex(
        "host",
        "command",
        Ty::Str,
        Required,
        "The command that starts one instance of your app, run by `sh -c` inside the release \
         directory. It must listen on $PORT. Required when provider = \"host\".",
        "\"./start.sh\"",
    ),
    key_ex(
        "host",
        "build",
        Ty::Str,
        Unset,
        "A command run once inside each new release directory before its instances start, \
         e.g. \"cargo build --release\" or \"npm ci\". `deploy` shows its output as it runs; it \
         is also kept in .flotilla/host/logs/build-<id>.log.",
        "\"npm ci\"",
    ),
    key(
        "host",
        "instances",
        Ty::Int,
        Int(2),
        "Processes each version runs (each version's start under autoscaling).",
    ),
    key_ex(
        "host",
        "max_instances",
        Ty::Int,
        Unset,
        "Most processes a version may run. Setting it turns on autoscaling of each version by \
         its live sessions and request rate; a draining version never grows, and an instance \
         holding sessions is never stopped (it takes no new ones and stops once they end). \
         Unset: each version runs `instances`.",
        "6",
    ),
    key_ex(
        "host",
        "min_instances",
        Ty::Int,
        Unset,
        "Fewest processes autoscaling leaves the active version with. Unset: `instances`.",
        "1",
    ),
    key(
        "host",
        "sessions_per_instance",
        Ty::Int,
        Int(100),
        "Live sessions (WebSockets, event streams) autoscaling puts on one instance.",
    ),
    key_ex(
        "host",
        "requests_per_instance",
        Ty::Int,
        Unset,
        "Requests per second autoscaling puts on one instance. Unset: the rate does not count.",
        "200",
    ),
    key(
        "host",
        "scale_in_after_seconds",
        Ty::Int,
        Int(300),
        "How long the load must stay low before autoscaling winds instances down.",
    ),
    key(
        "host",
        "state_dir",
        Ty::Str,
        Str(".flotilla/host"),
        "Where the host provider keeps its database, releases and logs (relative to this file). \
         Not the filesystem root nor a directory that contains this one: a release snapshot \
         never copies the state directory.",
    ),
    key_ex(
        "host",
        "secrets_file",
        Ty::Str,
        Unset,
        "A file of NAME=VALUE lines (as in a .env file) whose variables every new version gets \
         as secrets. Read at each deploy and recorded with the version (readable only by you); \
         never copied into a release, never shown or logged. Keep it outside this directory or \
         under .flotilla/.",
        "\"/etc/flotilla/my-app.env\"",
    ),
    key(
        "host",
        "keep_releases",
        Ty::Int,
        Int(2),
        "Release snapshots of retired versions kept on disk for inspection.",
    ),
    key_ex(
        "host",
        "hosts",
        Ty::StrList,
        Unset,
        "The host names this app answers for behind the shared front door (`flotilla host \
         front-door`), which owns ports 80 and 443 for every app on the machine and hands each \
         connection to the app its host name belongs to. `*.example.com` matches one more label. \
         When set, the router binds no port of its own (leave `listen` out), and `admin_listen` \
         defaults to a free loopback port, logged by the daemon.",
        "[\"shop.example.com\", \"www.shop.example.com\"]",
    ),
    key_ex(
        "host",
        "access_log",
        Ty::Str,
        Unset,
        "Write the router's access log here: one JSON line per response (time, client address, \
         method, host, path without the query, status, the version that served it, time to the \
         response head, whether a WebSocket began). Off when unset. Rotated by size: the file \
         gets .1, .2, ... (relative to this file's directory; owner-only).",
        "\".flotilla/host/logs/access.jsonl\"",
    ),
    key(
        "host",
        "access_log_max_mb",
        Ty::Int,
        Int(100),
        "The access log's size, in MiB, at which it is rotated.",
    ),
    key(
        "host",
        "access_log_keep",
        Ty::Int,
        Int(5),
        "Rotated access log files kept besides the current one.",
    ),
    key_ex(
        "host",
        "front_door_socket",
        Ty::Str,
        Unset,
        "The front door's registration socket, when `hosts` is set. Default: \
         /run/flotilla/front-door.sock for root, else $XDG_RUNTIME_DIR/flotilla/front-door.sock, \
         else /tmp/flotilla-<uid>/front-door.sock (the same default as `flotilla host front-door`).",
        "\"/run/flotilla/front-door.sock\"",
    ),
    key(
        "host",
        "upgrade_deadline_seconds",
        Ty::Int,
        Int(600),
        "After `flotilla host upgrade` (or `systemctl reload`) hands the daemon over to a new \
         one, how long the old daemon keeps serving the connections it holds (WebSockets and \
         event streams included) before it closes what is still open and exits.",
    ),
    key_ex(
        "host",
        "https_listen",
        Ty::Str,
        Unset,
        "Where the router terminates TLS (address:port), serving HTTP/2 and HTTP/1.1. Needs \
         certificates: `tls_certificate_file` and `tls_key_file`, or `acme_hosts`. Then `listen` \
         answers 308 to https:// for every host name that has a certificate (ACME HTTP-01 \
         challenges excepted).",
        "\"0.0.0.0:443\"",
    ),
    key_ex(
        "host",
        "tls_certificate_file",
        Ty::Str,
        Unset,
        "A PEM file with the certificate chain (leaf first) served for every host name on \
         `https_listen`. Read when the daemon starts. Needs `tls_key_file`.",
        "\"/etc/flotilla/shop.crt\"",
    ),
    key_ex(
        "host",
        "tls_key_file",
        Ty::Str,
        Unset,
        "The PEM private key of `tls_certificate_file` (PKCS#8, PKCS#1 or SEC1; keep it 0600).",
        "\"/etc/flotilla/shop.key\"",
    ),
    key_ex(
        "host",
        "acme_hosts",
        Ty::StrList,
        Unset,
        "Host names to obtain one certificate for over ACME (instead of the tls_* files); kept \
         in the state directory and renewed in the background when a third of its lifetime \
         remains. Each name must resolve to this machine and reach it on port 80 (http-01) or \
         443 (tls-alpn-01).",
        "[\"shop.example.com\", \"www.shop.example.com\"]",
    ),
    key_ex(
        "host",
        "acme_email",
        Ty::Str,
        Unset,
        "A contact address given to the ACME CA (expiry warnings go there).",
        "\"ops@example.com\"",
    ),
    key(
        "host",
        "acme_directory",
        Ty::Str,
        Str("https://acme-v02.api.letsencrypt.org/directory"),
        "The ACME CA's directory URL (default Let's Encrypt production; its staging is \
         https://acme-staging-v02.api.letsencrypt.org/directory).",
    ),
    key(
        "host",
        "acme_challenge",
        Ty::Str,
        Str("http-01"),
        "How the CA checks the names: \"http-01\" (a token served on `listen`, which must be \
         port 80 to the CA) or \"tls-alpn-01\" (a certificate on `https_listen`, port 443).",
    ),
    key_ex(
        "host",
        "acme_ca_file",
        Ty::Str,
        Unset,
        "A PEM root to trust for the ACME CA's own HTTPS, for a private or test CA (pebble). \
         Unset: the system's roots.",
        "\"/etc/flotilla/acme-ca.pem\"",
    ),
    // [aws]
    key_ex(
        "aws",
        "region",
        Ty::Str,
        Unset,
        "The AWS region. Unset: the standard chain (AWS_REGION, the profile).",
        "\"eu-west-1\"",
    ),
    key_ex(
        "aws",
        "profile",
        Ty::Str,
        Unset,
        "The named profile from ~/.aws/config. Unset: the standard credential chain.",
        "\"deploy\"",
    ),
    key_ex(
        "aws",
        "endpoint_url",
        Ty::Str,
        Unset,
        "Send every AWS call to this endpoint instead (an emulator such as moto in tests).",
        "\"http://127.0.0.1:5000\"",
    ),
    key(
        "aws",
        "cpu",
        Ty::Int,
        Int(256),
        "Fargate CPU units per task: 256, 512, 1024, 2048, 4096, 8192 or 16384.",
    ),
    key(
        "aws",
        "memory",
        Ty::Int,
        Int(512),
        "Fargate memory per task in MiB; must be a size Fargate allows for the cpu value.",
    ),
    key(
        "aws",
        "desired_count",
        Ty::Int,
        Int(2),
        "Tasks each version runs (its start, and its minimum under autoscaling unless min_count \
         says otherwise).",
    ),
    key_ex(
        "aws",
        "max_count",
        Ty::Int,
        Unset,
        "Most tasks a version may run. Setting it turns on autoscaling of each version's service \
         on its own (target tracking on CPU, memory and, if set, requests per task); a draining \
         version never scales out. Unset: each version runs desired_count tasks.",
        "10",
    ),
    key_ex(
        "aws",
        "min_count",
        Ty::Int,
        Unset,
        "Fewest tasks autoscaling leaves a version with (at least 1). Unset: desired_count.",
        "2",
    ),
    key(
        "aws",
        "scale_cpu_percent",
        Ty::Int,
        Int(70),
        "Average CPU use autoscaling holds each version at, in percent; 0: no CPU policy.",
    ),
    key(
        "aws",
        "scale_memory_percent",
        Ty::Int,
        Int(80),
        "Average memory use autoscaling holds each version at, in percent; 0: no memory policy.",
    ),
    key_ex(
        "aws",
        "scale_requests_per_target",
        Ty::Int,
        Unset,
        "Requests per task per minute autoscaling holds each version at (the load balancer's \
         count). Unset: no request policy.",
        "1000",
    ),
    key(
        "aws",
        "spot_percent",
        Ty::Int,
        Int(0),
        "Share of each version's tasks (beyond on_demand_base) run on Fargate Spot, in percent: 0 \
         regular Fargate only, 100 all Spot. A Spot interruption is a SIGTERM with two minutes' \
         notice; the agent asks the task's open sessions to reconnect to another task of the \
         same version before it stops.",
    ),
    key_ex(
        "aws",
        "on_demand_base",
        Ty::Int,
        Unset,
        "Tasks of each version that always run on regular Fargate before spot_percent applies. \
         Unset: 0.",
        "1",
    ),
    key_ex(
        "aws",
        "domain",
        Ty::Str,
        Unset,
        "The domain users reach the app on. Unset: HTTP only, on the load balancer's own name.",
        "\"app.example.com\"",
    ),
    key_ex(
        "aws",
        "certificate_arn",
        Ty::Str,
        Unset,
        "An ACM certificate to use for the domain. Unset: the baseline requests one, validated by DNS.",
        "\"arn:aws:acm:eu-west-1:123456789012:certificate/...\"",
    ),
    key(
        "aws",
        "nat",
        Ty::Str,
        Str("single"),
        "NAT gateways of the baseline network: \"single\" (cheaper) or \"per-az\" (survives the \
         loss of a zone).",
    ),
    key_ex(
        "aws",
        "command",
        Ty::Str,
        Unset,
        "Your app's start command inside the image, run by the agent with `/bin/sh -c` (the \
         agent tells it its port in $PORT). Unset: the agent runs the image's own ENTRYPOINT and \
         CMD, read from the image.",
        "\"/app/server\"",
    ),
    key(
        "aws",
        "architecture",
        Ty::Str,
        Str("x86_64"),
        "The CPU tasks run on: \"x86_64\", or \"arm64\" (Graviton, cheaper). Images are built \
         for it (docker build --platform) and a prebuilt image of another architecture is refused.",
    ),
    key(
        "aws",
        "read_only_root",
        Ty::Bool,
        Bool(true),
        "Run the app container with a read-only root filesystem and a writable /tmp. Set false \
         for an app that writes elsewhere in its image.",
    ),
    key_ex(
        "aws",
        "user",
        Ty::Str,
        Unset,
        "The user the app container runs as (a name, uid or uid:gid); unset: the image's USER.",
        "\"1000:1000\"",
    ),
    key(
        "aws",
        "enable_execute_command",
        Ty::Bool,
        Bool(false),
        "Allow ECS Exec (`aws ecs execute-command`, a shell inside running tasks). Off by default.",
    ),
    key_ex(
        "aws",
        "agent_image",
        Ty::Str,
        Unset,
        "A prebuilt agent image (FROM scratch with the static flotilla-aws-agent at \
         /flotilla-aws-agent). Unset: flotilla builds it from the static agent beside itself \
         (scripts/build-static.sh) and pushes it to the baseline repository.",
        "\"123456789012.dkr.ecr.eu-west-1.amazonaws.com/flotilla/shop:flotilla-agent-0.1.0\"",
    ),
    key_ex(
        "aws",
        "hosted_zone_id",
        Ty::Str,
        Unset,
        "A Route 53 hosted zone of this account for the domain: CloudFormation then writes the \
         certificate's DNS validation records itself. Unset: `baseline up` prints them for you.",
        "\"Z0123456789ABCDEFGHIJ\"",
    ),
    key(
        "aws",
        "vpc_cidr",
        Ty::Str,
        Str("10.0.0.0/16"),
        "The baseline VPC's IPv4 range (prefix 16 to 24), split into four equal subnets.",
    ),
    key(
        "aws",
        "idle_timeout_seconds",
        Ty::Int,
        Int(120),
        "The load balancer's idle timeout, 1 to 4000 seconds; raise it for quiet WebSockets.",
    ),
    key(
        "aws",
        "log_retention_days",
        Ty::Int,
        Int(30),
        "Days the app's and the reaper's logs are kept: 1, 3, 5, 7, 14, 30, 60, 90, 120, 150, \
         180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288 or 3653.",
    ),
    key(
        "aws",
        "keep_images",
        Ty::Int,
        Int(30),
        "Tagged images the ECR repository keeps (older ones expire; untagged ones after a day).",
    ),
    key_ex(
        "aws",
        "alarm_email",
        Ty::Str,
        Unset,
        "Mail alarms to this address (the stack makes an SNS topic; AWS mails a confirmation \
         link first). Unset: alarms show on the dashboard only.",
        "\"ops@example.com\"",
    ),
    key_ex(
        "aws",
        "alarm_topic_arn",
        Ty::Str,
        Unset,
        "Send alarms to this existing SNS topic instead of alarm_email.",
        "\"arn:aws:sns:eu-west-1:123456789012:ops\"",
    ),
    key(
        "aws",
        "alarm_5xx_percent",
        Ty::Int,
        Int(5),
        "The share of requests answered 5xx, in percent, that raises the 5xx alarm.",
    ),
    key_ex(
        "aws",
        "access_logs_bucket",
        Ty::Str,
        Unset,
        "An S3 bucket of yours (its policy must let the load balancer write) for the ALB's \
         access logs. Unset: no access logs.",
        "\"my-alb-logs\"",
    ),
    key_ex(
        "aws",
        "access_logs_prefix",
        Ty::Str,
        Unset,
        "A key prefix for the access logs in that bucket (no leading or trailing /).",
        "\"shop\"",
    ),
    key(
        "aws",
        "waf",
        Ty::Bool,
        Bool(false),
        "Put an AWS WAF web ACL in front of the load balancer: a per-IP rate limit \
         (waf_rate_limit) and AWS's managed common and known-bad-inputs rules. AWS bills the web \
         ACL, its rules and the requests it inspects.",
    ),
    key(
        "aws",
        "waf_rate_limit",
        Ty::Int,
        Int(2000),
        "With waf = true: requests one IP address may make in any 5 minutes before the WAF blocks \
         it for a while (10 to 2000000000).",
    ),
    key_ex(
        "aws",
        "health_check_grace_seconds",
        Ty::Int,
        Unset,
        "Seconds ECS ignores failing load balancer health checks of a new task before it replaces \
         the task. Unset: app.health_timeout_seconds, so a slow first start is not killed while \
         the deploy still waits for it.",
        "300",
    ),
    key_ex(
        "aws",
        "listener_arn",
        Ty::Str,
        Unset,
        "Baseline override: the ALB listener to add rules to, instead of the baseline stack's.",
        "\"arn:aws:elasticloadbalancing:...\"",
    ),
    key_ex(
        "aws",
        "subnets",
        Ty::StrList,
        Unset,
        "Baseline override: the private subnets tasks run in.",
        "[\"subnet-0123\", \"subnet-4567\"]",
    ),
    key_ex(
        "aws",
        "security_groups",
        Ty::StrList,
        Unset,
        "Baseline override: the security groups of the tasks.",
        "[\"sg-0123\"]",
    ),
    key_ex(
        "aws",
        "cluster",
        Ty::Str,
        Unset,
        "Baseline override: the ECS cluster.",
        "\"flotilla-my-app\"",
    ),
    key_ex(
        "aws",
        "log_group",
        Ty::Str,
        Unset,
        "Baseline override: the CloudWatch log group of the tasks.",
        "\"/flotilla/my-app\"",
    ),
    key_ex(
        "aws",
        "repository",
        Ty::Str,
        Unset,
        "Baseline override: the ECR repository images are pushed to.",
        "\"123456789012.dkr.ecr.eu-west-1.amazonaws.com/my-app\"",
    ),
    key_ex(
        "aws",
        "execution_role_arn",
        Ty::Str,
        Unset,
        "Baseline override: the task execution role (pulls images, writes logs).",
        "\"arn:aws:iam::123456789012:role/...\"",
    ),
    key_ex(
        "aws",
        "task_role_arn",
        Ty::Str,
        Unset,
        "Baseline override: the task role (the agent reads and writes its SSM parameters).",
        "\"arn:aws:iam::123456789012:role/...\"",
    ),
];

/// Defaults that differ on the AWS provider, by dotted path: they replace the key's own default
/// (the host provider's) when `provider = "aws"`.
pub const AWS_DEFAULTS: &[(&str, DefaultValue)] = &[("app.health_timeout_seconds", Int(300))];

/// The default of `key` on `provider`.
pub fn default_on(key: &Key, provider: super::ProviderKind) -> DefaultValue {
    if provider == super::ProviderKind::Aws
        && let Some((_, value)) = AWS_DEFAULTS.iter().find(|(path, _)| *path == key.path())
    {
        return *value;
    }
    key.default
}

/// The key at `section`.`name`, if it exists.
pub fn find(section: &str, name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.section == section && k.name == name)
}

/// The key at a dotted path such as `app.port`.
#[cfg(test)]
pub fn find_path(path: &str) -> Option<&'static Key> {
    match path.split_once('.') {
        Some((section, name)) => find(section, name),
        None => find("", path),
    }
}

/// Sections whose keys are the app's own variable names rather than flotilla's keys.
pub const FREE_SECTIONS: &[(&str, &str)] = &[
    (
        "env",
        "The app's environment: plain variables every instance of a new version gets (both \
         providers). FLOTILLA_ENV_<NAME> variables and `flotilla deploy --env NAME=VALUE` \
         override them. A changed value takes effect on the next deploy; a rollback brings back \
         the values its version was deployed with.",
    ),
    (
        "secrets",
        "Secrets (AWS): each variable's name and where ECS reads its value when a task starts: \
         an SSM parameter (\"ssm:/my-app/database-url\", or its ARN) or a Secrets Manager \
         secret (its ARN, optionally ending :json-key:: to take one JSON field). The execution \
         role is allowed exactly these; `flotilla baseline up` applies a change. Values are \
         never shown. On the host provider, put secrets in [host] secrets_file instead.",
    ),
];

/// Whether `name` is one of the [`FREE_SECTIONS`].
pub fn is_free_section(name: &str) -> bool {
    FREE_SECTIONS.iter().any(|(s, _)| *s == name)
}

/// Whether `name` is a section.
pub fn is_section(name: &str) -> bool {
    SECTIONS.iter().any(|(s, _)| *s == name)
}

/// The closest of `candidates` to `word`, if it is close enough to be a likely typo.
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let word_lower = word.to_ascii_lowercase();
    let candidates: Vec<&str> = candidates.into_iter().collect();
    let (best, distance) = candidates
        .iter()
        .map(|c| (*c, edit_distance(&word_lower, c)))
        .min_by_key(|(_, d)| *d)?;
    // One edit in four characters, and at least two, reads as a typo; more is another word.
    let allowed = (word.chars().count() / 4).max(2);
    if distance <= allowed {
        return Some(best);
    }
    // A shortened key (`grace` for `grace_seconds`): the one candidate starting with it.
    if word_lower.chars().count() >= 3 {
        let mut prefixed = candidates.iter().filter(|c| c.starts_with(&word_lower));
        if let (Some(only), None) = (prefixed.next(), prefixed.next()) {
            return Some(only);
        }
    }
    None
}

/// The Levenshtein distance between two strings, counted in characters.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    let mut current = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        current[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = previous[j] + usize::from(ca != *cb);
            current[j + 1] = substitute.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn edit_distances() {
        let check =
            |a: &str, b: &str, want: usize| assert_eq!(edit_distance(a, b), want, "{a} {b}");
        check("", "", 0);
        check("helth_path", "health_path", 1);
        check("port", "prot", 2);
        check("listen", "listen", 0);
        check("abc", "", 3);
        check("kitten", "sitting", 3);
    }

    #[test]
    fn closest_suggests_typos_only() {
        let names = ["health_path", "port", "min_healthy", "affinity_header"];
        let check = |word: &str, want: Option<&str>| {
            assert_eq!(closest(word, names.iter().copied()), want, "{word}");
        };
        check("helth_path", Some("health_path"));
        check("prot", Some("port"));
        check("min_heathy", Some("min_healthy"));
        check("Port", Some("port"));
        check("affinity_headr", Some("affinity_header"));
        check("colour", None);
        check("affinity", Some("affinity_header"));
        let two = ["affinity_header", "affinity_query"];
        assert_eq!(closest("affinity", two.iter().copied()), None);
        check("min", Some("min_healthy"));
        check("x", None);
    }

    #[test]
    fn every_key_is_in_a_known_section_and_unique() {
        let mut paths = BTreeSet::new();
        let mut vars = BTreeSet::new();
        for key in KEYS {
            assert!(
                key.section.is_empty() || is_section(key.section),
                "{}",
                key.path()
            );
            assert!(paths.insert(key.path()), "duplicate {}", key.path());
            assert!(vars.insert(key.env_var()), "duplicate {}", key.env_var());
            let needs_example = matches!(key.default, DefaultValue::Required | DefaultValue::Unset);
            assert_eq!(needs_example, key.example.is_some(), "{}", key.path());
            // A section named like a top-level key (or the reverse) would make the file ambiguous.
            assert!(
                !is_section(key.name) || !key.section.is_empty(),
                "{}",
                key.path()
            );
        }
    }

    #[test]
    fn env_var_names() {
        let var = |path: &str| find_path(path).map(Key::env_var);
        assert_eq!(var("name").as_deref(), Some("FLOTILLA_NAME"));
        assert_eq!(var("app.port").as_deref(), Some("FLOTILLA_APP_PORT"));
        assert_eq!(
            var("drain.grace_seconds").as_deref(),
            Some("FLOTILLA_DRAIN_GRACE_SECONDS")
        );
        assert_eq!(var("host.listen").as_deref(), Some("FLOTILLA_HOST_LISTEN"));
        assert_eq!(var("app.nope"), None);
    }
}
