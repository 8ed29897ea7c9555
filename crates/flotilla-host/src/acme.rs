//! Certificates over ACME (RFC 8555) for `[host] acme_hosts`: obtained at start when none is
//! stored, renewed in the background when a third of the lifetime remains (configurable), and
//! put into the router's [`CertStore`] live.
//!
//! State, owner-only, under `<state_dir>/acme/`: `account.json` (the account's key and URL, with
//! the directory it belongs to), `certificate.pem` and `key.pem` (the certificate covering every
//! configured name, and its key). A stored certificate is loaded at start if it covers the
//! configured names and has not expired.
//!
//! Until a certificate exists, HTTPS handshakes for the names fail and the plain listener keeps
//! serving them (it redirects only names that have a certificate), so a CA that cannot be
//! reached at first start never stops plain HTTP. Failures are logged with what to check and
//! retried with a doubling backoff (`retry_min` to `retry_max`).
//!
//! The decisions are pure ([`renew_at`], [`retry_delay`]); [`Acme::run`] does the I/O.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use flotilla_proxy::rustls::pki_types::PrivateKeyDer;
use flotilla_proxy::rustls::pki_types::pem::PemObject;
use flotilla_proxy::rustls::sign::CertifiedKey;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::settings::{AcmeChallenge, AcmeSettings};
use crate::tls::{CertInfo, CertStore, HttpChallenges, cert_info, certificates_from_pem};

/// When a certificate valid from `not_before` to `not_after` is due for renewal: when
/// `remaining` (a fraction of its lifetime, e.g. a third) is left.
pub fn renew_at(not_before: SystemTime, not_after: SystemTime, remaining: f64) -> SystemTime {
    let lifetime = not_after
        .duration_since(not_before)
        .unwrap_or(Duration::ZERO);
    let left = lifetime.mul_f64(remaining.clamp(0.0, 1.0));
    not_after.checked_sub(left).unwrap_or(not_before)
}

/// The wait after `failures` failed attempts in a row (1 for the first): `min` doubled each
/// time, at most `max`.
pub fn retry_delay(failures: u32, min: Duration, max: Duration) -> Duration {
    let doublings = failures.saturating_sub(1).min(30);
    min.saturating_mul(1 << doublings).min(max)
}

/// Whether a stored certificate can be served for `hosts` at `now`: it names every host and has
/// not expired.
pub fn usable(info: &CertInfo, hosts: &[String], now: SystemTime) -> bool {
    now < info.not_after
        && hosts
            .iter()
            .all(|h| info.names.iter().any(|n| n.eq_ignore_ascii_case(h)))
}

/// A failed attempt to obtain a certificate, with what to check.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    /// The ACME server refused or could not be reached.
    #[error("ACME ({step}) with {directory}: {source}")]
    Protocol {
        /// What was being done.
        step: &'static str,
        /// The directory URL.
        directory: String,
        /// The client's error.
        #[source]
        source: instant_acme::Error,
    },
    /// The order did not validate.
    #[error("ACME order for {names:?} ended {status}: the CA could not validate the names")]
    Invalid {
        /// The names.
        names: Vec<String>,
        /// The order's status.
        status: String,
    },
    /// The CA offered no challenge of the configured type.
    #[error(
        "the CA offers no {challenge} challenge for {name}; set `[host] acme_challenge` to another"
    )]
    NoChallenge {
        /// The name.
        name: String,
        /// The configured challenge.
        challenge: &'static str,
    },
    /// A file of the state directory could not be written or read.
    #[error("{operation} {}: {source}", .path.display())]
    Io {
        /// What was being done.
        operation: &'static str,
        /// The path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The issued certificate, or a challenge certificate, is unusable.
    #[error("{0}")]
    Certificate(String),
}

impl AcmeError {
    /// What the operator should check, for the log line.
    pub fn hint(&self) -> &'static str {
        match self {
            AcmeError::Protocol { .. } | AcmeError::Invalid { .. } => {
                "check that every name in `acme_hosts` resolves to this machine and that the CA \
                 reaches it on port 80 (http-01: `[host] listen`) or 443 (tls-alpn-01: \
                 `[host] https_listen`), and that `acme_directory` is right"
            }
            AcmeError::NoChallenge { .. } => "choose the other `acme_challenge`",
            AcmeError::Io { .. } => "check the permissions of the state directory",
            AcmeError::Certificate(_) => "report this: the CA issued something rustls refuses",
        }
    }
}

/// The account file: credentials with the directory they belong to.
#[derive(Serialize, Deserialize)]
struct StoredAccount {
    directory: String,
    credentials: AccountCredentials,
}

/// The ACME side of the router: settings, where state lives, and what the router answers.
pub struct Acme {
    settings: AcmeSettings,
    dir: PathBuf,
    certs: Arc<CertStore>,
    http: Arc<HttpChallenges>,
}

impl Acme {
    /// ACME for `settings`, keeping state in `dir`, serving through `certs` and `http`.
    pub fn new(
        settings: AcmeSettings,
        dir: PathBuf,
        certs: Arc<CertStore>,
        http: Arc<HttpChallenges>,
    ) -> Self {
        Acme {
            settings,
            dir,
            certs,
            http,
        }
    }

    fn certificate_path(&self) -> PathBuf {
        self.dir.join("certificate.pem")
    }

    fn key_path(&self) -> PathBuf {
        self.dir.join("key.pem")
    }

    fn account_path(&self) -> PathBuf {
        self.dir.join("account.json")
    }

    /// Loads the stored certificate into the store if it is usable; its validity if so.
    pub fn load_stored(&self) -> Option<CertInfo> {
        let chain = std::fs::read(self.certificate_path()).ok()?;
        let key = std::fs::read(self.key_path()).ok()?;
        match self.install(&chain, &key) {
            Ok(info) if usable(&info, &self.settings.hosts, SystemTime::now()) => Some(info),
            Ok(_) => {
                tracing::info!(
                    hosts = ?self.settings.hosts,
                    "the stored ACME certificate has expired or does not cover `acme_hosts`; \
                     ordering a new one"
                );
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "the stored ACME certificate is unusable; ordering a new one");
                None
            }
        }
    }

    /// Parses a PEM chain and key and serves them for the configured names.
    fn install(&self, chain_pem: &[u8], key_pem: &[u8]) -> Result<CertInfo, AcmeError> {
        let chain = certificates_from_pem(chain_pem).map_err(AcmeError::Certificate)?;
        let info = cert_info(&chain[0])
            .ok_or_else(|| AcmeError::Certificate("the certificate does not parse".to_owned()))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| AcmeError::Certificate(format!("the key does not parse: {e}")))?;
        let certified = crate::tls::certified_key(chain, key).map_err(AcmeError::Certificate)?;
        if usable(&info, &self.settings.hosts, SystemTime::now()) {
            self.certs.set(&self.settings.hosts, Arc::new(certified));
        }
        Ok(info)
    }

    /// Keeps a certificate for the configured names until `stop` says so: orders one when none
    /// is usable, renews it when due, retries failures with backoff.
    pub async fn run(self, mut current: Option<CertInfo>, mut stop: watch::Receiver<bool>) {
        let mut failures = 0u32;
        loop {
            let now = SystemTime::now();
            let due = current.as_ref().map(|info| {
                renew_at(
                    info.not_before,
                    info.not_after,
                    self.settings.renew_when_remaining,
                )
            });
            let wait = match due {
                Some(at) if at > now && failures == 0 => at.duration_since(now).unwrap_or_default(),
                _ if failures > 0 => {
                    retry_delay(failures, self.settings.retry_min, self.settings.retry_max)
                }
                _ => Duration::ZERO,
            };
            if !wait.is_zero() {
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    _ = crate::supervisor::stop_requested(&mut stop) => return,
                }
            }
            if let Some(at) = due
                && failures == 0
                && SystemTime::now() < at
            {
                continue;
            }
            let attempt = tokio::select! {
                result = self.obtain() => result,
                _ = crate::supervisor::stop_requested(&mut stop) => return,
            };
            match attempt {
                Ok(info) => {
                    failures = 0;
                    tracing::info!(
                        hosts = ?self.settings.hosts,
                        not_after = %humantime(info.not_after),
                        "ACME certificate obtained and serving"
                    );
                    current = Some(info);
                }
                Err(error) => {
                    failures += 1;
                    let retry =
                        retry_delay(failures, self.settings.retry_min, self.settings.retry_max);
                    let serving = current
                        .as_ref()
                        .is_some_and(|info| SystemTime::now() < info.not_after);
                    tracing::error!(
                        %error,
                        hint = error.hint(),
                        failures,
                        retry_in = ?retry,
                        serving_previous = serving,
                        "could not obtain an ACME certificate for {:?}; HTTPS {} meanwhile",
                        self.settings.hosts,
                        if serving { "keeps the current certificate" } else { "fails its handshakes (plain HTTP keeps serving)" }
                    );
                }
            }
        }
    }

    /// One order: account, challenges, finalisation, certificate saved and served.
    async fn obtain(&self) -> Result<CertInfo, AcmeError> {
        let directory = self.settings.directory.clone();
        let protocol = |step: &'static str| {
            let directory = directory.clone();
            move |source| AcmeError::Protocol {
                step,
                directory,
                source,
            }
        };
        let account = self.account().await?;
        let identifiers: Vec<Identifier> = self
            .settings
            .hosts
            .iter()
            .map(|h| Identifier::Dns(h.clone()))
            .collect();
        let mut order = account
            .new_order(&NewOrder::new(&identifiers))
            .await
            .map_err(protocol("new order"))?;
        let challenge_type = match self.settings.challenge {
            AcmeChallenge::Http01 => ChallengeType::Http01,
            AcmeChallenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
        };
        let mut tokens = Vec::new();
        let mut names = Vec::new();
        let result = async {
            let mut authorizations = order.authorizations();
            while let Some(authz) = authorizations.next().await {
                let mut authz = authz.map_err(protocol("authorization"))?;
                if authz.status == AuthorizationStatus::Valid {
                    continue;
                }
                let identifier = authz.identifier().to_string();
                let mut challenge = authz.challenge(challenge_type.clone()).ok_or_else(|| {
                    AcmeError::NoChallenge {
                        name: identifier,
                        challenge: self.settings.challenge.as_str(),
                    }
                })?;
                let key_authorization = challenge.key_authorization();
                let name = challenge.identifier().to_string();
                match self.settings.challenge {
                    AcmeChallenge::Http01 => {
                        self.http
                            .insert(&challenge.token, key_authorization.as_str());
                        tokens.push(challenge.token.clone());
                    }
                    AcmeChallenge::TlsAlpn01 => {
                        let key = alpn_challenge_key(&name, key_authorization.digest().as_ref())?;
                        self.certs.set_challenge(&name, Arc::new(key));
                        names.push(name.clone());
                    }
                }
                tracing::info!(
                    name,
                    challenge = self.settings.challenge.as_str(),
                    "ACME challenge ready"
                );
                challenge.set_ready().await.map_err(protocol("challenge"))?;
            }
            let retries = RetryPolicy::new().timeout(Duration::from_secs(90));
            let status = order
                .poll_ready(&retries)
                .await
                .map_err(protocol("validation"))?;
            if status != OrderStatus::Ready {
                return Err(AcmeError::Invalid {
                    names: self.settings.hosts.clone(),
                    status: format!("{status:?}"),
                });
            }
            let key_pem = order.finalize().await.map_err(protocol("finalize"))?;
            let chain_pem = order
                .poll_certificate(&retries)
                .await
                .map_err(protocol("certificate"))?;
            Ok((chain_pem, key_pem))
        }
        .await;
        for token in &tokens {
            self.http.remove(token);
        }
        for name in &names {
            self.certs.clear_challenge(name);
        }
        let (chain_pem, key_pem) = result?;
        let info = self.install(chain_pem.as_bytes(), key_pem.as_bytes())?;
        write_private(&self.key_path(), key_pem.as_bytes())?;
        write_private(&self.certificate_path(), chain_pem.as_bytes())?;
        Ok(info)
    }

    /// The stored account for the configured directory, or a new one (saved).
    async fn account(&self) -> Result<Account, AcmeError> {
        let directory = &self.settings.directory;
        let protocol = |step: &'static str| {
            move |source| AcmeError::Protocol {
                step,
                directory: directory.clone(),
                source,
            }
        };
        // instant-acme's HTTP client takes rustls's process-wide provider, and a build that also
        // links aws-lc-rs (the AWS SDK) has none by default: name ring, as the router does. An
        // error means one is installed already, which will do.
        let _ = flotilla_proxy::rustls::crypto::ring::default_provider().install_default();
        let builder = match &self.settings.ca_file {
            Some(ca) => Account::builder_with_root(ca),
            None => Account::builder(),
        }
        .map_err(protocol("HTTP client"))?;
        let path = self.account_path();
        if let Ok(text) = std::fs::read(&path)
            && let Ok(stored) = serde_json::from_slice::<StoredAccount>(&text)
            && stored.directory == *directory
        {
            return builder
                .from_credentials(stored.credentials)
                .await
                .map_err(protocol("account"));
        }
        let contact = self.settings.email.as_ref().map(|e| format!("mailto:{e}"));
        let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
        let (account, credentials) = builder
            .create(
                &NewAccount {
                    contact: &contacts,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                directory.clone(),
                None,
            )
            .await
            .map_err(protocol("new account"))?;
        let stored = StoredAccount {
            directory: directory.clone(),
            credentials,
        };
        let text = serde_json::to_vec_pretty(&stored)
            .map_err(|e| AcmeError::Certificate(format!("account credentials: {e}")))?;
        write_private(&path, &text)?;
        Ok(account)
    }
}

/// The self-signed certificate of a TLS-ALPN-01 validation of `name` (RFC 8737): the name as its
/// only SAN and the key authorization's digest in a critical acmeIdentifier extension.
fn alpn_challenge_key(name: &str, digest: &[u8]) -> Result<CertifiedKey, AcmeError> {
    let bad = |e: rcgen::Error| AcmeError::Certificate(format!("challenge certificate: {e}"));
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).map_err(bad)?;
    params
        .custom_extensions
        .push(rcgen::CustomExtension::new_acme_identifier(digest));
    let key = rcgen::KeyPair::generate().map_err(bad)?;
    let cert = params.self_signed(&key).map_err(bad)?;
    crate::tls::certified_key_unchecked(
        vec![cert.der().clone()],
        PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
    .map_err(AcmeError::Certificate)
}

/// Writes `bytes` to `path`, owner-only, replacing it whole (a temporary file renamed over it,
/// so a crash never leaves half a key).
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), AcmeError> {
    use std::io::Write;
    let io = |operation| {
        move |source| AcmeError::Io {
            operation,
            path: path.to_owned(),
            source,
        }
    };
    if let Some(dir) = path.parent() {
        crate::private::private_dir(dir).map_err(io("create directory for"))?;
    }
    let tmp = path.with_extension("tmp");
    let mut file = crate::private::private_create(&tmp).map_err(io("create"))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(io("write"))?;
    std::fs::rename(&tmp, path).map_err(io("replace"))
}

/// A time for the log, as seconds since the epoch (the log's own timestamps are UTC).
fn humantime(t: SystemTime) -> String {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or_else(
        |_| "?".to_owned(),
        |d| format!("{}s since the epoch", d.as_secs()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn renewal_is_due_when_the_configured_fraction_of_the_lifetime_remains() {
        fn check(lifetime_days: u32, remaining: f64, due_after_days: f64) {
            let start = SystemTime::UNIX_EPOCH + 1000 * DAY;
            let end = start + DAY * lifetime_days;
            let at = renew_at(start, end, remaining);
            let after = at.duration_since(start).expect("after start").as_secs_f64() / 86_400.0;
            assert!(
                (after - due_after_days).abs() < 0.001,
                "{lifetime_days} days, {remaining}: due after {after} days, expected {due_after_days}"
            );
        }
        // Let's Encrypt's 90 days: renewed 30 days before expiry.
        check(90, 1.0 / 3.0, 60.0);
        check(6, 1.0 / 3.0, 4.0);
        check(90, 0.0, 90.0);
        check(90, 1.0, 0.0);
        // Out-of-range fractions are clamped, never past either end.
        check(90, 2.0, 0.0);
        check(90, -1.0, 90.0);
        // A certificate whose end precedes its start is due at once.
        let start = SystemTime::UNIX_EPOCH + DAY;
        assert_eq!(renew_at(start, start - DAY / 2, 1.0 / 3.0), start - DAY / 2);
    }

    #[test]
    fn retries_double_from_the_minimum_up_to_the_maximum() {
        let min = Duration::from_secs(10);
        let max = Duration::from_secs(3600);
        let waits: Vec<u64> = (1..=11)
            .map(|n| retry_delay(n, min, max).as_secs())
            .collect();
        assert_eq!(
            waits,
            [10, 20, 40, 80, 160, 320, 640, 1280, 2560, 3600, 3600]
        );
        assert_eq!(retry_delay(u32::MAX, min, max), max);
    }

    #[test]
    fn a_stored_certificate_is_used_only_if_it_covers_every_name_and_has_not_expired() {
        let now = SystemTime::UNIX_EPOCH + 1000 * DAY;
        let info = CertInfo {
            not_before: now - DAY,
            not_after: now + DAY,
            names: vec!["a.example".to_owned(), "b.example".to_owned()],
        };
        let hosts = |h: &[&str]| h.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert!(usable(&info, &hosts(&["a.example"]), now));
        assert!(usable(&info, &hosts(&["A.example", "b.example"]), now));
        assert!(!usable(&info, &hosts(&["a.example", "c.example"]), now));
        assert!(!usable(&info, &hosts(&["a.example"]), now + 2 * DAY));
    }

    #[test]
    fn the_alpn_challenge_certificate_names_the_host_and_carries_the_digest() {
        let digest = [7u8; 32];
        let key = alpn_challenge_key("shop.example", &digest).expect("challenge certificate");
        let (_, cert) = x509_parser::parse_x509_certificate(key.cert[0].as_ref()).expect("parses");
        let acme_identifier =
            x509_parser::oid_registry::Oid::from(&[1, 3, 6, 1, 5, 5, 7, 1, 31]).expect("oid");
        let ext = cert
            .extensions()
            .iter()
            .find(|e| e.oid == acme_identifier)
            .expect("acmeIdentifier extension");
        assert!(ext.critical, "RFC 8737 §3: the extension is critical");
        // An OCTET STRING of 32 bytes: tag, length, digest.
        assert_eq!(&ext.value[2..], &digest);
        let info = cert_info(&key.cert[0]).expect("info");
        assert_eq!(info.names, ["shop.example"]);
    }
}
