//! The HTTPS client every SDK client of flotilla uses: rustls (with aws-lc, as the SDK's own
//! default), trusting the system's root certificates when there are any **and** a built-in copy
//! of the Mozilla root program (`webpki-root-certs`).
//!
//! Why built in: the agent runs inside the user's image, and many images have no CA bundle
//! (`debian:bookworm-slim` without `ca-certificates`, distroless, `FROM scratch`). With the SDK's
//! default client such an image fails every TLS handshake to SSM. With the built-in roots the
//! agent reaches AWS from any image; with the system's roots kept too, a corporate proxy's CA
//! installed in the image (or named by `SSL_CERT_FILE` / `SSL_CERT_DIR`) still works.
//!
//! The system's certificates are read once per process (`rustls-native-certs`: `SSL_CERT_FILE`
//! and `SSL_CERT_DIR` when set, else the usual bundle paths), each checked by rustls, and handed
//! to the SDK together with the built-in ones as PEM; the SDK's own loading of native roots is
//! off, so an image without a bundle is not an error.

use std::sync::OnceLock;

use aws_smithy_http_client::tls::rustls_provider::CryptoMode;
use aws_smithy_http_client::tls::{Provider, TlsContext, TrustStore};
use aws_smithy_http_client::{Builder, ConnectorBuilder};
use aws_smithy_runtime_api::client::http::SharedHttpClient;
use base64::Engine as _;
use rustls_pki_types::CertificateDer;

/// The root certificates the client trusts.
#[derive(Clone, Debug)]
pub struct Roots {
    /// Usable certificates found on the system.
    pub system: usize,
    /// Certificates found on the system that rustls cannot use (skipped).
    pub system_skipped: usize,
    /// Built-in certificates (the Mozilla root program, as shipped by `webpki-root-certs`).
    pub built_in: usize,
    /// Every trusted certificate, DER.
    pub certificates: Vec<CertificateDer<'static>>,
}

impl Roots {
    /// The trusted roots: `system` (checked one by one; unusable ones skipped) followed by the
    /// built-in ones.
    pub fn from_system(system: Vec<CertificateDer<'static>>) -> Roots {
        let mut store = rustls::RootCertStore::empty();
        let mut certificates = Vec::with_capacity(system.len() + built_in().len());
        let mut skipped = 0;
        for cert in system {
            match store.add(cert.clone()) {
                Ok(()) => certificates.push(cert),
                Err(_) => skipped += 1,
            }
        }
        let usable_system = certificates.len();
        certificates.extend(built_in().iter().cloned());
        Roots {
            system: usable_system,
            system_skipped: skipped,
            built_in: built_in().len(),
            certificates,
        }
    }

    /// The roots of this process: the system's (read once) and the built-in ones.
    pub fn of_this_process() -> &'static Roots {
        static ROOTS: OnceLock<Roots> = OnceLock::new();
        ROOTS.get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            if !found.errors.is_empty() {
                tracing::debug!(errors = ?found.errors, "some system root certificates could not be read");
            }
            let roots = Roots::from_system(found.certs);
            tracing::info!(
                system = roots.system,
                system_skipped = roots.system_skipped,
                built_in = roots.built_in,
                "TLS: trusting {} root certificate(s) from the system and {} built in",
                roots.system,
                roots.built_in
            );
            roots
        })
    }

    /// The certificates as one PEM document.
    pub fn pem(&self) -> Vec<u8> {
        let mut out = String::new();
        for cert in &self.certificates {
            out.push_str("-----BEGIN CERTIFICATE-----\n");
            let b64 = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
            for line in b64.as_bytes().chunks(64) {
                out.push_str(&String::from_utf8_lossy(line));
                out.push('\n');
            }
            out.push_str("-----END CERTIFICATE-----\n");
        }
        out.into_bytes()
    }

    /// The SDK's trust store for these roots (the SDK's own native loading off: they are in it).
    pub fn trust_store(&self) -> TrustStore {
        TrustStore::empty()
            .with_native_roots(false)
            .with_pem_certificate(self.pem())
    }
}

/// The built-in roots.
pub fn built_in() -> &'static [CertificateDer<'static>] {
    webpki_root_certs::TLS_SERVER_ROOT_CERTS
}

/// The SDK's HTTPS client over `roots`: what `aws-config` builds by default (rustls with aws-lc,
/// the connector settings and sleep of each client, the proxy from `HTTPS_PROXY` and friends),
/// with the trust store replaced.
pub fn http_client(roots: &Roots) -> SharedHttpClient {
    let context = TlsContext::builder()
        .with_trust_store(roots.trust_store())
        .build()
        .expect("a TLS context with a trust store always builds");
    Builder::new().build_with_connector_fn(move |settings, components| {
        let mut connector = ConnectorBuilder::default()
            .tls_provider(Provider::Rustls(CryptoMode::AwsLc))
            .tls_context(context.clone());
        connector.set_connector_settings(settings.cloned());
        if let Some(components) = components {
            connector.set_sleep_impl(components.sleep_impl());
        }
        connector.set_proxy_config(Some(aws_smithy_http_client::proxy::ProxyConfig::from_env()));
        connector.build()
    })
}

/// [`http_client`] over the roots of this process.
pub fn default_http_client() -> SharedHttpClient {
    http_client(Roots::of_this_process())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The subject (DER) of a certificate, through rustls's own parsing of a trust anchor.
    fn subjects(roots: &Roots) -> Vec<Vec<u8>> {
        let mut store = rustls::RootCertStore::empty();
        for cert in &roots.certificates {
            store
                .add(cert.clone())
                .expect("every trusted root is usable");
        }
        store
            .roots
            .iter()
            .map(|anchor| anchor.subject.as_ref().to_vec())
            .collect()
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn with_no_system_bundle_the_built_in_roots_include_amazons() {
        // What an image without a CA bundle looks like to rustls-native-certs: empty paths.
        let dir = tempfile::tempdir().expect("temp dir");
        let empty_file = dir.path().join("empty.pem");
        std::fs::write(&empty_file, "").expect("write");
        let found = rustls_native_certs::load_certs_from_paths(Some(&empty_file), Some(dir.path()));
        assert!(found.certs.is_empty(), "the test's bundle is empty");
        let roots = Roots::from_system(found.certs);
        assert_eq!(roots.system, 0);
        assert!(roots.built_in > 100, "{} built-in roots", roots.built_in);
        assert_eq!(roots.certificates.len(), roots.built_in);
        // AWS endpoints chain to Amazon Root CA 1-4 (and Starfield Services G2 for older
        // clients): they must be among the anchors rustls builds from the PEM the SDK gets.
        let subjects = subjects(&roots);
        for name in [
            "Amazon Root CA 1",
            "Amazon Root CA 3",
            "Starfield Services Root",
        ] {
            assert!(
                subjects.iter().any(|s| contains(s, name.as_bytes())),
                "{name} is trusted"
            );
        }
        // The PEM handed to the SDK parses back to exactly these certificates.
        let back: Vec<CertificateDer<'static>> = {
            use rustls_pki_types::pem::PemObject as _;
            CertificateDer::pem_slice_iter(&roots.pem())
                .collect::<Result<_, _>>()
                .expect("valid PEM")
        };
        assert_eq!(back, roots.certificates);
    }

    #[test]
    fn system_roots_are_kept_and_unusable_ones_skipped() {
        let amazon = built_in()[0].clone();
        let garbage = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x01]);
        let roots = Roots::from_system(vec![amazon.clone(), garbage]);
        assert_eq!(roots.system, 1);
        assert_eq!(roots.system_skipped, 1);
        assert_eq!(roots.certificates[0], amazon);
        assert_eq!(roots.certificates.len(), 1 + roots.built_in);
    }
}
