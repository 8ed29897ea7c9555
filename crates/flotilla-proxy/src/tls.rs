//! TLS termination: the rustls server configuration a TLS [`crate::serve`] takes, and the ALPN
//! protocol names it negotiates.
//!
//! Certificates come from the caller's [`ResolvesServerCert`], asked once per handshake, so a
//! caller that swaps a certificate (a renewal) changes what the next handshake gets without
//! touching connections already open. The handshake itself runs in each connection's own task
//! (see `server::accept`), never in the accept loop.

use std::sync::Arc;

use rustls::ServerConfig;
use rustls::server::ResolvesServerCert;

/// ALPN for HTTP/2.
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN for HTTP/1.1.
pub const ALPN_HTTP11: &[u8] = b"http/1.1";
/// ALPN of the ACME TLS-ALPN-01 challenge (RFC 8737): such a connection only completes its
/// handshake, with the challenge certificate, and is closed; no HTTP is served on it.
pub const ALPN_ACME_TLS: &[u8] = b"acme-tls/1";

/// A rustls server configuration on the `ring` provider (TLS 1.3 and 1.2) offering, in order of
/// preference, HTTP/2, HTTP/1.1 and the ACME TLS-ALPN-01 protocol, with certificates from
/// `certificates`. A client that offers no ALPN gets HTTP/1.1.
pub fn server_config(
    certificates: Arc<dyn ResolvesServerCert>,
) -> Result<ServerConfig, rustls::Error> {
    // The provider is named rather than taken from the process default: a build that also links
    // aws-lc-rs (the AWS SDK) would otherwise have two and no default.
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(certificates);
    config.alpn_protocols = vec![
        ALPN_H2.to_vec(),
        ALPN_HTTP11.to_vec(),
        ALPN_ACME_TLS.to_vec(),
    ];
    Ok(config)
}
