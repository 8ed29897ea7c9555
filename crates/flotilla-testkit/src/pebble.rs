//! Let's Encrypt's ACME test server on loopback: Debian's `pebble` (installed by
//! `scripts/pebble.sh`) with `pebble-challtestsrv` as its DNS server, answering 127.0.0.1 for
//! every name, so pebble validates HTTP-01 and TLS-ALPN-01 challenges against the router on
//! this machine.
//!
//! Each process runs under the same watchdog as the private Docker daemon (stopped by PID when
//! the value is dropped or the test process ends, its directory deleted). Pebble's own HTTPS
//! certificate (for its directory and management interface) is generated here with rcgen; the
//! ACME client trusts it through [`Pebble::ca_file`]. The root that signs the certificates pebble
//! issues changes at every start: [`Pebble::issuing_root`] fetches it from the management
//! interface (`/roots/0`) for the client under test (curl) to trust.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::docker::{DockerError, Result, Supervised, private_dir, tail, wait_for};
use crate::net::free_port;

/// Where Debian installs pebble.
pub const PEBBLE: &str = "/usr/bin/pebble";
/// Where Debian installs its challenge test server.
pub const CHALLTESTSRV: &str = "/usr/bin/pebble-challtestsrv";

/// What a test chooses about pebble.
#[derive(Clone, Copy, Debug)]
pub struct PebbleOptions {
    /// The port pebble connects to for HTTP-01 validations (the router's plain listener).
    pub http_port: u16,
    /// The port pebble connects to for TLS-ALPN-01 validations (the router's HTTPS listener).
    pub tls_port: u16,
    /// The lifetime of the certificates pebble issues (`certificateValidityPeriod`); `None`:
    /// pebble's default (five years).
    pub validity: Option<Duration>,
}

/// A running pebble and its DNS server.
#[derive(Debug)]
pub struct Pebble {
    dir: PathBuf,
    acme_port: u16,
    management_port: u16,
    _pebble: Supervised,
    _dns: Supervised,
}

impl Pebble {
    /// Starts `pebble-challtestsrv` (DNS only, every name 127.0.0.1) and `pebble` on free
    /// loopback ports, and waits until pebble's directory answers.
    pub fn start(options: PebbleOptions) -> Result<Pebble> {
        for binary in [PEBBLE, CHALLTESTSRV] {
            if !Path::new(binary).is_file() {
                return Err(DockerError::Failed(format!(
                    "{binary} is not installed; run scripts/pebble.sh"
                )));
            }
        }
        let dns_dir = private_dir("flotilla-challtestsrv")?;
        let dns_port = free_port();
        let mut dns_cmd = Command::new(CHALLTESTSRV);
        dns_cmd.args([
            "-defaultIPv4",
            "127.0.0.1",
            "-defaultIPv6",
            "",
            "-dns01",
            &format!("127.0.0.1:{dns_port}"),
            "-http01",
            "",
            "-https01",
            "",
            "-tlsalpn01",
            "",
            "-management",
            &format!("127.0.0.1:{}", free_port()),
        ]);
        let mut dns = Supervised::spawn(dns_cmd, &dns_dir, "challtestsrv.log", Vec::new())?;
        let dns_log = dns_dir.join("challtestsrv.log");
        wait_for("pebble-challtestsrv", Duration::from_secs(20), || {
            if dns.exited().is_some() {
                return Err(DockerError::Failed(format!(
                    "pebble-challtestsrv exited:\n{}",
                    tail(&dns_log, 20)
                )));
            }
            Ok(std::fs::read_to_string(&dns_log)
                .unwrap_or_default()
                .contains("Starting challenge servers")
                .then_some(()))
        })
        .or_else(|e| match e {
            // Older and newer versions word the start differently: a bound DNS port will do.
            DockerError::Timeout(_) => Ok(()),
            other => Err(other),
        })?;

        let dir = private_dir("flotilla-pebble")?;
        let tls = rcgen::generate_simple_self_signed(vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
        ])
        .map_err(|e| DockerError::Failed(format!("pebble's certificate: {e}")))?;
        let cert_path = dir.join("cert.pem");
        let key_path = dir.join("key.pem");
        std::fs::write(&cert_path, tls.cert.pem()).map_err(DockerError::io("write cert.pem"))?;
        std::fs::write(&key_path, tls.signing_key.serialize_pem())
            .map_err(DockerError::io("write key.pem"))?;
        let acme_port = free_port();
        let management_port = free_port();
        let mut pebble_config = serde_json::json!({
            "listenAddress": format!("127.0.0.1:{acme_port}"),
            "managementListenAddress": format!("127.0.0.1:{management_port}"),
            "certificate": cert_path,
            "privateKey": key_path,
            "httpPort": options.http_port,
            "tlsPort": options.tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        });
        if let Some(validity) = options.validity {
            pebble_config["certificateValidityPeriod"] = validity.as_secs().into();
        }
        let config = serde_json::json!({ "pebble": pebble_config });
        let config_path = dir.join("pebble-config.json");
        std::fs::write(&config_path, config.to_string())
            .map_err(DockerError::io("write pebble-config.json"))?;
        let mut cmd = Command::new(PEBBLE);
        cmd.arg("-config")
            .arg(&config_path)
            .arg("-dnsserver")
            .arg(format!("127.0.0.1:{dns_port}"))
            // No random sleeps before validations, no nonces rejected at random: the tests
            // check issuance, not the client's patience.
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0");
        let mut pebble = Supervised::spawn(cmd, &dir, "pebble.log", Vec::new())?;
        let log = dir.join("pebble.log");
        wait_for("pebble", Duration::from_secs(30), || {
            if pebble.exited().is_some() {
                return Err(DockerError::Failed(format!(
                    "pebble exited:\n{}",
                    tail(&log, 20)
                )));
            }
            Ok(fetch(&cert_path, acme_port, "/dir").ok().map(|_| ()))
        })
        .map_err(|e| DockerError::Failed(format!("{e}; pebble's log:\n{}", tail(&log, 20))))?;
        Ok(Pebble {
            dir,
            acme_port,
            management_port,
            _pebble: pebble,
            _dns: dns,
        })
    }

    /// The ACME directory URL (`acme_directory`).
    pub fn directory(&self) -> String {
        format!("https://localhost:{}/dir", self.acme_port)
    }

    /// The PEM root pebble's own HTTPS is signed with (`acme_ca_file`).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }

    /// The PEM root of the certificates pebble issues (regenerated at every start), from its
    /// management interface.
    pub fn issuing_root(&self) -> Result<String> {
        fetch(&self.ca_file(), self.management_port, "/roots/0")
    }
}

/// GETs `path` from pebble on `port` with curl, trusting pebble's own certificate `ca`.
fn fetch(ca: &Path, port: u16, path: &str) -> Result<String> {
    let out = Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "5", "--cacert"])
        .arg(ca)
        .arg(format!("https://localhost:{port}{path}"))
        .output()
        .map_err(DockerError::io("run curl"))?;
    if !out.status.success() {
        return Err(DockerError::Failed(format!(
            "curl {path}: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
