//! TLS termination: HTTP/2 and HTTP/1.1 by ALPN, the router's answers and stamping over HTTP/2,
//! graceful shutdown of an HTTP/2 connection (`GOAWAY` after the stream in progress), and the
//! handshake timeout.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use flotilla_proxy::ProxyConfig;
use flotilla_proxy::http::{Request, StatusCode, Version};
use flotilla_proxy::rustls;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::util::{Proxy, start_upstream, within};

const NAME: &str = "tls.example.com";

/// Serves one certificate whatever the name.
#[derive(Debug)]
struct One(Arc<CertifiedKey>);

impl ResolvesServerCert for One {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// A self-signed certificate for [`NAME`]: the proxy's TLS configuration and a client trusting it.
fn tls_pair(alpn: &[&[u8]]) -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
    let cert = rcgen::generate_simple_self_signed(vec![NAME.to_owned()]).expect("certificate");
    let provider = rustls::crypto::ring::default_provider();
    let key = provider
        .key_provider
        .load_private_key(PrivateKeyDer::Pkcs8(
            cert.signing_key.serialize_der().into(),
        ))
        .expect("key");
    let certified = Arc::new(CertifiedKey::new(vec![cert.cert.der().clone()], key));
    let server = flotilla_proxy::tls::server_config(Arc::new(One(certified))).expect("server");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).expect("root");
    let mut client = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    (Arc::new(server), Arc::new(client))
}

async fn tls_connect(
    proxy: &Proxy,
    client: Arc<rustls::ClientConfig>,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(proxy.addr)
        .await
        .expect("connect");
    tokio_rustls::TlsConnector::from(client)
        .connect(ServerName::try_from(NAME).expect("name"), tcp)
        .await
        .expect("handshake")
}

fn get(path: &str) -> Request<Empty<Bytes>> {
    Request::builder()
        .uri(format!("https://{NAME}{path}"))
        .body(Empty::new())
        .expect("request")
}

#[tokio::test]
async fn http2_over_tls_is_routed_and_stamped_and_drains_its_stream_in_progress_on_shutdown() {
    let (upstream, _up) = start_upstream().await;
    let (server, client) = tls_pair(&[b"h2", b"http/1.1"]);
    let mut proxy = Proxy::start(
        upstream,
        ProxyConfig {
            tls: Some(server),
            shutdown_deadline: Duration::from_secs(5),
            ..ProxyConfig::default()
        },
    )
    .await;
    let tls = tls_connect(&proxy, client).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("HTTP/2 handshake");
    let conn = tokio::spawn(conn);

    let response = send.send_request(get("/json")).await.expect("response");
    assert_eq!(response.version(), Version::HTTP_2);
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response
            .headers()
            .get("x-flotilla-deployment")
            .map(|v| v.as_bytes()),
        Some(&b"web-1"[..]),
        "stamped over HTTP/2"
    );
    // The route saw `Host` (from `:authority`), and the upstream got one: the request was
    // routed, not refused for a missing Host.
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    assert_eq!(&body[..], b"{\"ok\":true}");
    let gone = send.send_request(get("/gone")).await.expect("response");
    assert_eq!(
        gone.status(),
        StatusCode::GONE,
        "the router's own answer over HTTP/2"
    );

    // A slow stream in progress finishes through shutdown; the connection then ends.
    let slow = tokio::spawn({
        let mut send = send.clone();
        async move {
            let response = send.send_request(get("/slow?ms=400")).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((status, body))
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let report = proxy.shutdown().await;
    let (status, body) = within("the slow stream", slow)
        .await
        .expect("task")
        .expect("the stream in progress completes");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], b"slow done");
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.connections_at_shutdown, 1);
    within("the client connection to end after GOAWAY", conn)
        .await
        .expect("task")
        .expect("a clean end");
}

#[tokio::test]
async fn http1_is_served_over_tls_when_the_client_offers_no_h2() {
    let (upstream, _up) = start_upstream().await;
    let (server, client) = tls_pair(&[b"http/1.1"]);
    let proxy = Proxy::start(
        upstream,
        ProxyConfig {
            tls: Some(server),
            ..ProxyConfig::default()
        },
    )
    .await;
    let mut tls = tls_connect(&proxy, client).await;
    tls.write_all(
        format!("GET /json HTTP/1.1\r\nHost: {NAME}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .expect("send");
    let mut text = String::new();
    let _ = tls.read_to_string(&mut text).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("x-flotilla-deployment: web-1"),
        "{text}"
    );
}

#[tokio::test]
async fn a_client_that_never_finishes_its_handshake_is_closed_at_the_timeout() {
    let (upstream, _up) = start_upstream().await;
    let (server, _) = tls_pair(&[]);
    let proxy = Proxy::start(
        upstream,
        ProxyConfig {
            tls: Some(server),
            tls_handshake_timeout: Duration::from_millis(300),
            ..ProxyConfig::default()
        },
    )
    .await;
    let mut tcp = tokio::net::TcpStream::connect(proxy.addr)
        .await
        .expect("connect");
    // The first byte of a TLS record, then nothing.
    tcp.write_all(&[0x16]).await.expect("send");
    let mut buf = [0u8; 16];
    let read = within("the proxy to close the connection", tcp.read(&mut buf)).await;
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
}
