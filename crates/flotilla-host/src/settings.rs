//! The host provider's settings: a plain struct the CLI fills from `flotilla.toml`.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use flotilla_core::DeploymentName;
use flotilla_core::names::{DEFAULT_AFFINITY_HEADER, DEFAULT_AFFINITY_QUERY};
use flotilla_core::reaper::ReapPolicy;
use flotilla_core::stale::StaleSignals;
use serde::{Deserialize, Serialize};

/// Everything the host provider needs for one deployment name.
///
/// Paths may be relative; [`HostSettings::resolved`] makes them absolute against the app directory.
/// The defaults of [`HostSettings::new`] are the documented `flotilla.toml` defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostSettings {
    /// The deployment name (`name` in `flotilla.toml`).
    pub name: DeploymentName,
    /// The app's root directory: releases are snapshots of it.
    pub app_dir: PathBuf,
    /// Where the daemon keeps its state, socket, logs and releases (`[host] state_dir`).
    pub state_dir: PathBuf,
    /// Where the router listens (`[host] listen`).
    pub listen: SocketAddr,
    /// Where the read-only status page listens (`[host] admin_listen`).
    pub admin_listen: SocketAddr,
    /// The file holding the status page's bearer token (`[host] admin_token_file`); required when
    /// `admin_listen` is not a loopback address.
    #[serde(default)]
    pub admin_token_file: Option<PathBuf>,
    /// The shell command starting one instance, run with `sh -c` in the release directory.
    pub command: String,
    /// An optional build command run with `sh -c` inside a fresh release directory.
    pub build: Option<String>,
    /// Instances per version (each version's start under autoscaling).
    pub instances: u32,
    /// Autoscaling of each version's instances by its sessions and request rate (`[host]
    /// max_instances` and its siblings); `None`: `instances` each.
    #[serde(default)]
    pub autoscale: Option<flotilla_core::autoscale::ScalePolicy>,
    /// Releases kept on disk for versions that no longer run.
    pub keep_releases: u32,
    /// The HTTP path probed for health (`[app] health_path`).
    pub health_path: String,
    /// The request header carrying a tab's version.
    pub affinity_header: String,
    /// The query parameter carrying a tab's version.
    pub affinity_query: String,
    /// Whether the router injects the browser client into HTML responses.
    pub inject_client: bool,
    /// How the router answers requests pinned to a retired version (`[app] stale_status`,
    /// `stale_header`, `stale_socket_reroute_query`).
    #[serde(default)]
    pub stale: StaleSignals,
    /// How long a deploy waits for health (used by the daemon's own engine for the reaper).
    pub health_timeout: Duration,
    /// How often instance readiness is observed (`[drain] poll_seconds`).
    pub drain_poll: Duration,
    /// How long a draining instance must have had no session, counted from the last one, before
    /// it may report ready (`[drain] grace_seconds`).
    pub drain_grace: Duration,
    /// How long a stopping instance gets between SIGTERM and SIGKILL.
    pub stop_timeout: Duration,
    /// The reaper's policy.
    pub reaper_policy: ReapPolicy,
    /// How often the daemon's reaper runs (`[reaper] interval_seconds`).
    pub reaper_interval: Duration,
    /// How often the daemon's canary driver looks at a running canary (a step is judged at the
    /// first look after its pause has passed).
    #[serde(default = "default_canary_interval")]
    pub canary_interval: Duration,
    /// The most client connections the router keeps open at once, across its workers. `None`
    /// (the default) derives it from the descriptor limit; a value above what that limit allows
    /// is lowered, and the daemon's log says so (see [`crate::fdlimit::connection_budget`]).
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// How long a new router connection may stay silent before its first byte, before it is
    /// closed. Default 20 s.
    #[serde(default = "default_first_byte_timeout")]
    pub first_byte_timeout: Duration,
    /// The front door this app serves behind (`[host] hosts`, `[host] front_door_socket`): the
    /// router then binds no port of its own and serves the connections the front door hands it.
    #[serde(default)]
    pub front_door: Option<FrontDoorMember>,
    /// The router's access log (`[host] access_log`); `None` (the default) writes none.
    #[serde(default)]
    pub access_log: Option<crate::access_log::AccessLogSettings>,
    /// How long a daemon that handed over to a new one (`flotilla host upgrade`) keeps serving
    /// the connections it holds, WebSockets and event streams included, before it cuts what is
    /// still open and exits (`[host] upgrade_deadline_seconds`). Default 600 s.
    #[serde(default = "default_upgrade_deadline")]
    pub upgrade_deadline: Duration,
    /// HTTPS on the router (`[host] https_listen` and the `tls_*`/`acme_*` keys). `None` (the
    /// default): plain HTTP only.
    #[serde(default)]
    pub https: Option<HttpsSettings>,
    /// The program and arguments that start the daemon in the background (`flotilla host serve`).
    /// `None` means the current executable with `host serve`, run in the app directory.
    pub serve_command: Option<Vec<OsString>>,
}

/// An app's place behind the shared front door.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrontDoorMember {
    /// The front door's registration socket.
    pub socket: PathBuf,
    /// The host names the app serves (`*.example.com` matches one more label).
    pub hosts: Vec<String>,
}

/// HTTPS on the router: where it listens and where its certificates come from. When set, the
/// plain listener (`listen`) answers `308` to `https://` for every host name that has a
/// certificate, except ACME HTTP-01 challenges (`/.well-known/acme-challenge/`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HttpsSettings {
    /// Where TLS is terminated (`[host] https_listen`).
    pub listen: SocketAddr,
    /// Where the certificates come from.
    pub certificates: CertificateSource,
}

/// Where the router's certificates come from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum CertificateSource {
    /// One certificate chain and its key, in PEM files (`[host] tls_certificate_file`,
    /// `tls_key_file`), served for every host name; read at start.
    Files {
        /// The certificate chain, leaf first.
        certificate: PathBuf,
        /// The private key (PKCS#8, PKCS#1 or SEC1).
        key: PathBuf,
    },
    /// Obtained and renewed over ACME.
    Acme(AcmeSettings),
}

/// Certificates over ACME (`[host] acme_*`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AcmeSettings {
    /// The host names one certificate covers (`acme_hosts`).
    pub hosts: Vec<String>,
    /// A contact address for the CA (`acme_email`), sent as `mailto:`.
    pub email: Option<String>,
    /// The CA's directory URL (`acme_directory`; default Let's Encrypt production).
    pub directory: String,
    /// How the CA checks that we control the names (`acme_challenge`).
    pub challenge: AcmeChallenge,
    /// A PEM root the ACME client trusts for the CA's own HTTPS (`acme_ca_file`), for a test CA
    /// such as pebble. `None`: the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Renew when this fraction of the certificate's lifetime remains (default a third).
    pub renew_when_remaining: f64,
    /// The first wait after a failed attempt; doubled after each failure, up to `retry_max`.
    pub retry_min: Duration,
    /// The longest wait between failed attempts.
    pub retry_max: Duration,
}

/// Let's Encrypt's production directory, the default of `acme_directory`.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

impl AcmeSettings {
    /// ACME for `hosts` with the documented defaults: Let's Encrypt, HTTP-01, renewal when a
    /// third of the lifetime remains, retries from 10 s to an hour.
    pub fn new(hosts: Vec<String>) -> Self {
        AcmeSettings {
            hosts,
            email: None,
            directory: LETS_ENCRYPT.to_owned(),
            challenge: AcmeChallenge::Http01,
            ca_file: None,
            renew_when_remaining: 1.0 / 3.0,
            retry_min: Duration::from_secs(10),
            retry_max: Duration::from_secs(3600),
        }
    }
}

/// The ACME challenge the router answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AcmeChallenge {
    /// `http-01`: a token under `/.well-known/acme-challenge/` on the plain listener (which the CA
    /// reaches on port 80).
    Http01,
    /// `tls-alpn-01`: a challenge certificate on the HTTPS listener (which the CA reaches on port
    /// 443) for a handshake offering ALPN `acme-tls/1`.
    TlsAlpn01,
}

impl AcmeChallenge {
    /// The name used in `flotilla.toml` (`http-01`, `tls-alpn-01`).
    pub fn as_str(self) -> &'static str {
        match self {
            AcmeChallenge::Http01 => "http-01",
            AcmeChallenge::TlsAlpn01 => "tls-alpn-01",
        }
    }
}

impl HostSettings {
    /// Where the router's ACME account, keys and certificates live: `<state_dir>/acme`.
    pub fn acme_dir(&self) -> PathBuf {
        self.state_dir.join("acme")
    }
}

fn default_canary_interval() -> Duration {
    Duration::from_secs(1)
}

fn default_first_byte_timeout() -> Duration {
    Duration::from_secs(20)
}

fn default_upgrade_deadline() -> Duration {
    Duration::from_secs(600)
}

impl HostSettings {
    /// Settings with every documented default, for `name` with its app in `app_dir`.
    pub fn new(
        name: DeploymentName,
        app_dir: impl Into<PathBuf>,
        command: impl Into<String>,
    ) -> Self {
        HostSettings {
            name,
            app_dir: app_dir.into(),
            state_dir: PathBuf::from(".flotilla/host"),
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            admin_token_file: None,
            command: command.into(),
            build: None,
            instances: 2,
            autoscale: None,
            keep_releases: 2,
            health_path: "/healthz".to_owned(),
            affinity_header: DEFAULT_AFFINITY_HEADER.to_owned(),
            affinity_query: DEFAULT_AFFINITY_QUERY.to_owned(),
            inject_client: false,
            stale: StaleSignals::default(),
            health_timeout: Duration::from_secs(120),
            drain_poll: Duration::from_secs(5),
            drain_grace: Duration::from_secs(30),
            stop_timeout: Duration::from_secs(30),
            reaper_policy: ReapPolicy {
                min_age: Duration::from_secs(60),
                max_age: Duration::from_secs(172_800),
                consecutive_ready_passes: 2,
                deploying_timeout: Duration::from_secs(1800),
            },
            reaper_interval: Duration::from_secs(60),
            canary_interval: default_canary_interval(),
            max_connections: None,
            first_byte_timeout: default_first_byte_timeout(),
            front_door: None,
            access_log: None,
            upgrade_deadline: default_upgrade_deadline(),
            https: None,
            serve_command: None,
        }
    }

    /// A copy whose `app_dir` and `state_dir` are absolute (relative ones are taken against the
    /// current directory and the app directory respectively).
    pub fn resolved(&self) -> std::io::Result<HostSettings> {
        let mut s = self.clone();
        if s.app_dir.is_relative() {
            s.app_dir = std::env::current_dir()?.join(&s.app_dir);
        }
        s.app_dir = normalize(&s.app_dir);
        if s.state_dir.is_relative() {
            s.state_dir = s.app_dir.join(&s.state_dir);
        }
        s.state_dir = normalize(&s.state_dir);
        Ok(s)
    }

    /// The daemon's Unix socket: `<state_dir>/daemon.sock`.
    pub fn socket_path(&self) -> PathBuf {
        self.state_dir.join("daemon.sock")
    }

    /// The daemon's log when started in the background: `<state_dir>/daemon.log`.
    pub fn daemon_log_path(&self) -> PathBuf {
        self.state_dir.join("daemon.log")
    }

    /// The SQLite database: `<state_dir>/state.db`.
    pub fn database_path(&self) -> PathBuf {
        self.state_dir.join("state.db")
    }

    /// Where releases live: `<state_dir>/releases`.
    pub fn releases_dir(&self) -> PathBuf {
        self.state_dir.join("releases")
    }

    /// Where instance logs live: `<state_dir>/logs`.
    pub fn logs_dir(&self) -> PathBuf {
        self.state_dir.join("logs")
    }

    /// The lock file held by the running daemon: `<state_dir>/daemon.lock`.
    pub fn daemon_lock_path(&self) -> PathBuf {
        self.state_dir.join("daemon.lock")
    }
}

/// Removes `.` components and folds `..` lexically, so paths print cleanly.
fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_state_dir_against_app_dir() {
        let name = DeploymentName::new("web").expect("valid");
        let mut s = HostSettings::new(name, "/srv/app/./sub/..", "true");
        s.state_dir = PathBuf::from(".flotilla/host");
        let r = s.resolved().expect("cwd");
        assert_eq!(r.app_dir, PathBuf::from("/srv/app"));
        assert_eq!(r.state_dir, PathBuf::from("/srv/app/.flotilla/host"));
        assert_eq!(
            r.socket_path(),
            PathBuf::from("/srv/app/.flotilla/host/daemon.sock")
        );
        s.state_dir = PathBuf::from("/var/lib/flotilla");
        assert_eq!(
            s.resolved().expect("cwd").state_dir,
            PathBuf::from("/var/lib/flotilla")
        );
    }
}
