//! HTTPS on the router: the certificates it serves, swapped live; the plain listener's answers
//! when TLS is on (a `308` to `https://`, or an ACME HTTP-01 token); reading PEM files.
//!
//! [`CertStore`] is the rustls certificate resolver of every HTTPS worker. Each handshake asks it
//! once, so a renewed certificate put in with [`CertStore::set`] serves the next handshake while
//! connections already open keep the one they started with: renewal never restarts the router or
//! drops a connection.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::{ArcSwap, ArcSwapOption};
use bytes::Bytes;
use flotilla_proxy::http::{HeaderValue, Response, StatusCode, header};
use flotilla_proxy::rustls;
use flotilla_proxy::tls::ALPN_ACME_TLS;
use flotilla_proxy::{Body, Decision, RequestHead, Route};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::router::Router;

/// The path prefix of ACME HTTP-01 challenges (RFC 8555 §8.3).
pub const ACME_CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// A certificate problem, naming the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {} ({what}): {source}; check `[host] {key}` in flotilla.toml", .path.display())]
    Read {
        /// Which file.
        what: &'static str,
        /// The key naming it.
        key: &'static str,
        /// The path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A file holds no usable PEM certificate or key.
    #[error("{} ({what}): {message}; `[host] {key}` must name a PEM file", .path.display())]
    Pem {
        /// Which file.
        what: &'static str,
        /// The key naming it.
        key: &'static str,
        /// The path.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
    /// A certificate and key that rustls refuses (an unsupported key type, a mismatch).
    #[error("{what}: {message}")]
    Rejected {
        /// Which certificate.
        what: String,
        /// rustls's reason.
        message: String,
    },
}

/// The router's certificates: one per host name (ACME), a fallback for every other name (from
/// files), and the TLS-ALPN-01 challenge certificates of orders in progress.
#[derive(Debug, Default)]
pub struct CertStore {
    by_name: ArcSwap<HashMap<String, Arc<CertifiedKey>>>,
    fallback: ArcSwapOption<CertifiedKey>,
    challenges: Mutex<HashMap<String, Arc<CertifiedKey>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl CertStore {
    /// An empty store: every handshake fails until a certificate is put in.
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves `key` for every name without a certificate of its own (and clients without SNI).
    pub fn set_fallback(&self, key: Arc<CertifiedKey>) {
        self.fallback.store(Some(key));
    }

    /// Serves `key` for each of `names` from the next handshake on.
    pub fn set(&self, names: &[String], key: Arc<CertifiedKey>) {
        self.by_name.rcu(|current| {
            let mut next = HashMap::clone(current);
            for name in names {
                next.insert(name.to_ascii_lowercase(), key.clone());
            }
            next
        });
    }

    /// The certificate a handshake for `name` gets (not counting challenges).
    pub fn get(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        self.by_name
            .load()
            .get(&name.to_ascii_lowercase())
            .cloned()
            .or_else(|| self.fallback.load_full())
    }

    /// Whether a handshake for `name` would get a certificate.
    pub fn has(&self, name: &str) -> bool {
        self.fallback.load().is_some()
            || self.by_name.load().contains_key(&name.to_ascii_lowercase())
    }

    /// Answers TLS-ALPN-01 validations of `name` with `key` until [`Self::clear_challenge`].
    pub fn set_challenge(&self, name: &str, key: Arc<CertifiedKey>) {
        lock(&self.challenges).insert(name.to_ascii_lowercase(), key);
    }

    /// Stops answering TLS-ALPN-01 validations of `name`.
    pub fn clear_challenge(&self, name: &str) {
        lock(&self.challenges).remove(&name.to_ascii_lowercase());
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name().map(str::to_ascii_lowercase);
        let acme = hello
            .alpn()
            .is_some_and(|mut offered| offered.any(|p| p == ALPN_ACME_TLS));
        if acme {
            // A validation gets the challenge certificate or nothing, never the real one.
            return lock(&self.challenges).get(name.as_deref()?).cloned();
        }
        match name {
            Some(name) => self.get(&name),
            None => self.fallback.load_full(),
        }
    }
}

/// The key authorizations of ACME HTTP-01 challenges in progress, by token.
#[derive(Debug, Default)]
pub struct HttpChallenges {
    tokens: Mutex<HashMap<String, String>>,
}

impl HttpChallenges {
    /// Answers `GET /.well-known/acme-challenge/<token>` with `key_authorization`.
    pub fn insert(&self, token: &str, key_authorization: &str) {
        lock(&self.tokens).insert(token.to_owned(), key_authorization.to_owned());
    }

    /// Stops answering `token`.
    pub fn remove(&self, token: &str) {
        lock(&self.tokens).remove(token);
    }

    fn get(&self, token: &str) -> Option<String> {
        lock(&self.tokens).get(token).cloned()
    }
}

/// What the plain listener does with a request when HTTPS is on.
#[derive(Debug)]
pub struct Https {
    /// The certificates; a host name with one is redirected.
    pub certs: Arc<CertStore>,
    /// HTTP-01 tokens, answered before anything else.
    pub challenges: Arc<HttpChallenges>,
    /// The port of the HTTPS listener, for the redirect's URL.
    pub port: u16,
}

/// The route of the plain listener: ACME HTTP-01 tokens, then (with HTTPS on) a `308` to the
/// same URL over `https://` for a host name that has a certificate, else the app's router. A
/// name without a certificate yet (ACME has not obtained it) keeps being served over plain HTTP
/// rather than sent to a handshake that would fail.
pub struct PlainRoute {
    /// The app's router.
    pub router: Arc<Router>,
    /// HTTPS, when on.
    pub https: Option<Https>,
}

impl Route for PlainRoute {
    fn route(&self, head: &RequestHead<'_>) -> Decision {
        let Some(https) = &self.https else {
            return self.router.route(head);
        };
        if let Some(token) = head.uri.path().strip_prefix(ACME_CHALLENGE_PREFIX) {
            return Decision::Respond(match https.challenges.get(token) {
                Some(answer) => text(StatusCode::OK, answer),
                None => text(StatusCode::NOT_FOUND, "no such ACME challenge\n".to_owned()),
            });
        }
        let host = head.header_str("host").unwrap_or("");
        let name = host_name(host);
        if !name.is_empty() && https.certs.has(name) {
            let location = https_location(name, https.port, head.uri);
            let mut response = text(StatusCode::PERMANENT_REDIRECT, String::new());
            if let Ok(value) = HeaderValue::from_str(&location) {
                response.headers_mut().insert(header::LOCATION, value);
                return Decision::Respond(response);
            }
        }
        self.router.route(head)
    }
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut response = Response::new(Body::full(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The host name of a `Host` header value: without its port, without an IPv6 literal's brackets
/// kept apart from its port.
pub fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest
            .split(']')
            .next()
            .map_or(host, |inner| &host[..inner.len() + 2]);
    }
    host.rsplit_once(':').map_or(host, |(name, _)| name)
}

/// `https://name[:port]/path?query`, the port left out when it is 443.
pub fn https_location(name: &str, port: u16, uri: &flotilla_proxy::http::Uri) -> String {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    if port == 443 {
        format!("https://{name}{path}")
    } else {
        format!("https://{name}:{port}{path}")
    }
}

/// Reads a certificate chain and its key from PEM files (`[host] tls_certificate_file`,
/// `tls_key_file`).
pub fn load_files(certificate: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let read = |path: &Path, what, key| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            what,
            key,
            path: path.to_owned(),
            source,
        })
    };
    let chain_pem = read(certificate, "certificate", "tls_certificate_file")?;
    let key_pem = read(key, "private key", "tls_key_file")?;
    let chain = certificates_from_pem(&chain_pem).map_err(|message| TlsError::Pem {
        what: "certificate",
        key: "tls_certificate_file",
        path: certificate.to_owned(),
        message,
    })?;
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Pem {
        what: "private key",
        key: "tls_key_file",
        path: key.to_owned(),
        message: format!("no private key found ({e})"),
    })?;
    certified_key(chain, private).map_err(|message| TlsError::Rejected {
        what: format!(
            "the certificate {} with the key {}",
            certificate.display(),
            key.display()
        ),
        message,
    })
}

/// The certificates of a PEM chain, leaf first; an error if there are none.
pub fn certificates_from_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not a PEM certificate chain ({e})"))?;
    if chain.is_empty() {
        return Err("no certificate in it".to_owned());
    }
    Ok(chain)
}

/// A chain and its key as rustls serves them (ring's signing key), checked to belong together.
pub fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<CertifiedKey, String> {
    let certified = certified_key_unchecked(chain, key)?;
    certified
        .keys_match()
        .map_err(|e| format!("the key does not belong to the certificate: {e}"))?;
    Ok(certified)
}

/// A chain and its key as rustls serves them, without checking that they belong together: for
/// an ACME TLS-ALPN-01 challenge certificate, made here with its key, whose critical
/// acmeIdentifier extension the check's certificate parser refuses.
pub fn certified_key_unchecked(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<CertifiedKey, String> {
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("unusable private key: {e}"))?;
    Ok(CertifiedKey::new(chain, signing))
}

/// When a certificate starts and stops being valid, and the DNS names it covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// `notBefore`.
    pub not_before: SystemTime,
    /// `notAfter`.
    pub not_after: SystemTime,
    /// The subject alternative names of type DNS, lowercase.
    pub names: Vec<String>,
}

/// Reads the validity and names of a DER certificate; `None` if it does not parse.
pub fn cert_info(der: &CertificateDer<'_>) -> Option<CertInfo> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let at = |t: i64| UNIX_EPOCH + Duration::from_secs(u64::try_from(t).unwrap_or(0));
    let validity = cert.validity();
    let names = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                x509_parser::extensions::GeneralName::DNSName(name) => {
                    Some(name.to_ascii_lowercase())
                }
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    Some(CertInfo {
        not_before: at(validity.not_before.timestamp()),
        not_after: at(validity.not_after.timestamp()),
        names,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_name_table() {
        fn check(host: &str, expected: &str) {
            assert_eq!(host_name(host), expected, "{host:?}");
        }
        check("shop.example", "shop.example");
        check("shop.example:8080", "shop.example");
        check("[::1]:8443", "[::1]");
        check("[::1]", "[::1]");
        check("", "");
    }

    #[test]
    fn https_location_keeps_path_and_query_and_drops_port_443() {
        let uri: flotilla_proxy::http::Uri = "/a/b?x=1".parse().expect("uri");
        assert_eq!(
            https_location("shop.example", 443, &uri),
            "https://shop.example/a/b?x=1"
        );
        assert_eq!(
            https_location("shop.example", 8443, &uri),
            "https://shop.example:8443/a/b?x=1"
        );
    }

    #[test]
    fn a_key_that_is_not_the_certificates_is_refused() {
        let one = rcgen::generate_simple_self_signed(vec!["a.example".to_owned()]).expect("cert");
        let two = rcgen::generate_simple_self_signed(vec!["b.example".to_owned()]).expect("cert");
        let chain = vec![one.cert.der().clone()];
        let wrong = PrivateKeyDer::Pkcs8(two.signing_key.serialize_der().into());
        let err = certified_key(chain.clone(), wrong).expect_err("mismatched key");
        assert!(err.contains("does not belong"), "{err}");
        let right = PrivateKeyDer::Pkcs8(one.signing_key.serialize_der().into());
        certified_key(chain, right).expect("matching key");
    }

    #[test]
    fn the_store_serves_by_name_then_fallback_and_challenges_only_to_acme_clients() {
        let store = CertStore::new();
        assert!(!store.has("a.example"));
        let key = |name: &str| {
            let c = rcgen::generate_simple_self_signed(vec![name.to_owned()]).expect("cert");
            Arc::new(
                certified_key(
                    vec![c.cert.der().clone()],
                    PrivateKeyDer::Pkcs8(c.signing_key.serialize_der().into()),
                )
                .expect("key"),
            )
        };
        let a = key("a.example");
        store.set(&["A.example".to_owned()], a.clone());
        assert!(store.has("a.example"));
        assert!(!store.has("b.example"));
        assert!(Arc::ptr_eq(&store.get("a.EXAMPLE").expect("a"), &a));
        let fallback = key("files.example");
        store.set_fallback(fallback.clone());
        assert!(Arc::ptr_eq(
            &store.get("b.example").expect("fallback"),
            &fallback
        ));
        store.set_challenge("a.example", key("a.example"));
        store.clear_challenge("a.example");
        assert!(lock(&store.challenges).is_empty());
    }
}
