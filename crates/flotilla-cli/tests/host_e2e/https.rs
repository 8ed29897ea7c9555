//! HTTPS on the host router with real parts: certificates from files, and from Debian's pebble
//! (Let's Encrypt's ACME test server) over HTTP-01 and TLS-ALPN-01, with renewal; checked with
//! the system's curl (HTTP/2 and HTTP/1.1) and a WebSocket client over rustls.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio_tungstenite::tungstenite::Message;

use crate::util::{HostEnv, Timing, eventually, free_port, get};

const TIMING: Timing = Timing {
    poll: 1,
    grace: 2,
    interval: 5,
    health_timeout: 30,
};

/// What curl saw.
pub(crate) struct Curled {
    status: u16,
    http_version: String,
    headers: String,
    body: String,
}

/// `curl` to `https://{name}:{port}{path}`, resolving `name` to 127.0.0.1 and trusting `ca`.
pub(crate) fn curl(
    name: &str,
    port: u16,
    path: &str,
    ca: &Path,
    http2: bool,
) -> Result<Curled, String> {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "--max-time",
        "10",
        "-D",
        "-",
        "-w",
        "\n%{http_code} %{http_version}",
    ])
    .arg(if http2 { "--http2" } else { "--http1.1" })
    .arg("--cacert")
    .arg(ca)
    .arg("--resolve")
    .arg(format!("{name}:{port}:127.0.0.1"))
    .arg(format!("https://{name}:{port}{path}"));
    let out = cmd.output().map_err(|e| format!("run curl: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (rest, last) = text.rsplit_once('\n').ok_or("no curl trailer")?;
    let (code, version) = last.split_once(' ').ok_or("bad curl trailer")?;
    let (headers, body) = rest.split_once("\r\n\r\n").unwrap_or((rest, ""));
    Ok(Curled {
        status: code.parse().map_err(|_| format!("bad status {code:?}"))?,
        http_version: version.to_owned(),
        headers: headers.to_ascii_lowercase(),
        body: body.to_owned(),
    })
}

/// Checks a name over HTTP/2 and HTTP/1.1: the app answers, the router stamped the version, and
/// the app was told the request came over HTTPS for that host.
pub(crate) fn check_both_protocols(name: &str, port: u16, ca: &Path, version: &str) {
    for (http2, expected) in [(true, "2"), (false, "1.1")] {
        let got = curl(name, port, "/", ca, http2).expect("curl over TLS");
        assert_eq!(got.status, 200, "{}", got.body);
        assert_eq!(got.http_version, expected, "ALPN picks HTTP/{expected}");
        assert!(
            got.headers.contains(&format!(
                "x-flotilla-deployment: {}",
                version.to_ascii_lowercase()
            )),
            "stamped over HTTP/{expected}: {}",
            got.headers
        );
        let json: serde_json::Value = serde_json::from_str(&got.body).expect("JSON");
        assert_eq!(json["deployment_id"], version);
    }
}

/// A TLS connection to the router trusting `ca` (ALPN http/1.1, as a browser's WebSocket).
async fn tls_connect(
    port: u16,
    name: &str,
    ca: &Path,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("read root") {
        roots.add(cert.expect("root parses")).expect("add root");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(name.to_owned()).expect("name"), tcp)
        .await
        .expect("TLS handshake")
}

/// The serial-bearing leaf certificate a fresh handshake gets.
async fn served_leaf(port: u16, name: &str, ca: &Path) -> Vec<u8> {
    let tls = tls_connect(port, name, ca).await;
    tls.get_ref().1.peer_certificates().expect("certificates")[0].to_vec()
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// A WebSocket through the router over TLS; returns it after its greeting.
async fn wss(port: u16, name: &str, ca: &Path) -> Ws {
    let tls = tls_connect(port, name, ca).await;
    let (mut ws, response) =
        tokio_tungstenite::client_async(format!("wss://{name}:{port}/ws"), tls)
            .await
            .expect("WebSocket handshake over TLS");
    assert_eq!(response.status(), 101);
    let greeting = ws.next().await.expect("greeting").expect("frame");
    assert!(greeting.to_text().expect("text").contains("deployment_id"));
    ws
}

/// Sends a text and expects the app's echo.
async fn echo(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).await.expect("send");
    let reply = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("an echo within 5 s")
        .expect("frame")
        .expect("no error");
    assert!(reply.to_text().expect("text").contains(text), "{reply:?}");
}

/// The plain listener's answer to `GET path` for `host`.
fn plain(listen: SocketAddr, host: &str, path: &str) -> crate::util::Reply {
    crate::util::get_host(listen, host, path, &[]).expect("the plain listener answers")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

#[test]
fn https_from_certificate_files_serves_http2_http1_websockets_and_plain_http_redirects() {
    let env = HostEnv::new(TIMING);
    let name = "files.example.com";
    let certified = rcgen::generate_simple_self_signed(vec![name.to_owned()]).expect("cert");
    let keys = tempfile::tempdir().expect("tempdir");
    let cert_path = keys.path().join("cert.pem");
    let key_path = keys.path().join("key.pem");
    std::fs::write(&cert_path, certified.cert.pem()).expect("write cert");
    std::fs::write(&key_path, certified.signing_key.serialize_pem()).expect("write key");
    let https_port = free_port();
    env.configure_host_keys(&format!(
        "https_listen = \"127.0.0.1:{https_port}\"\ntls_certificate_file = {:?}\ntls_key_file = {:?}\n",
        cert_path.display().to_string(),
        key_path.display().to_string(),
    ));
    let v1 = env.deploy();

    check_both_protocols(name, https_port, &cert_path, &v1);

    // Plain HTTP redirects, keeping the path and query.
    let redirect = plain(
        env.listen,
        &format!("{name}:{}", env.listen.port()),
        "/a?b=1",
    );
    assert_eq!(redirect.status, 308, "{redirect:?}");
    assert_eq!(
        redirect.header("location"),
        Some(format!("https://{name}:{https_port}/a?b=1").as_str())
    );
    // An ACME HTTP-01 path is never redirected (no challenge in progress: 404).
    let challenge = plain(env.listen, name, "/.well-known/acme-challenge/nothing");
    assert_eq!(challenge.status, 404, "{challenge:?}");
    // The status page is not affected.
    assert_eq!(
        get(env.admin, "/status.json", &[]).expect("status").status,
        200
    );

    // An event stream over HTTP/2 is a session of its instance while its stream is open.
    let sessions = || -> u64 {
        env.admin_status()["instances"]
            .as_array()
            .expect("instances")
            .iter()
            .filter_map(|i| i["sessions"].as_u64())
            .sum()
    };
    assert_eq!(sessions(), 0);
    let mut stream = Command::new("curl")
        .args(["-sSN", "--http2", "--max-time", "30", "--cacert"])
        .arg(&cert_path)
        .arg("--resolve")
        .arg(format!("{name}:{https_port}:127.0.0.1"))
        .arg(format!(
            "https://{name}:{https_port}/events?interval_ms=200"
        ))
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("curl event stream");
    let counted = eventually(Duration::from_secs(10), || (sessions() == 1).then_some(()));
    let _ = stream.kill();
    let _ = stream.wait();
    assert!(
        counted.is_some(),
        "an HTTP/2 event stream counts as one session"
    );
    assert!(
        eventually(Duration::from_secs(10), || (sessions() == 0).then_some(())).is_some(),
        "the session ends with its HTTP/2 stream"
    );

    // A WebSocket through TLS, upgraded over HTTP/1.1.
    let rt = runtime();
    rt.block_on(async {
        let mut ws = wss(https_port, name, &cert_path).await;
        echo(&mut ws, "over tls").await;
        ws.close(None).await.expect("close");
    });
}

/// pebble and a daemon whose `[host]` obtains a certificate for `name` from it.
fn acme_env(
    name: &str,
    challenge: &str,
    validity: Option<Duration>,
) -> (
    HostEnv,
    flotilla_testkit::pebble::Pebble,
    u16,
    std::path::PathBuf,
) {
    let env = HostEnv::new(TIMING);
    let https_port = free_port();
    let pebble = flotilla_testkit::pebble::Pebble::start(flotilla_testkit::pebble::PebbleOptions {
        http_port: env.listen.port(),
        tls_port: https_port,
        validity,
    })
    .expect("pebble starts (scripts/pebble.sh installs it)");
    env.configure_host_keys(&format!(
        "https_listen = \"127.0.0.1:{https_port}\"\nacme_hosts = [{name:?}]\n\
         acme_email = \"ops@example.com\"\nacme_directory = {:?}\nacme_challenge = {challenge:?}\n\
         acme_ca_file = {:?}\n",
        pebble.directory(),
        pebble.ca_file().display().to_string(),
    ));
    // Beside pebble's files, outside the app directory (a release would copy it).
    let root = pebble.ca_file().with_file_name("issuing-root.pem");
    std::fs::write(&root, pebble.issuing_root().expect("pebble's issuing root"))
        .expect("write root");
    (env, pebble, https_port, root)
}

/// Waits until curl trusting pebble's root gets an answer over HTTPS.
fn wait_for_certificate(name: &str, port: u16, root: &Path, env: &HostEnv) {
    let got = eventually(Duration::from_secs(60), || {
        curl(name, port, "/healthz", root, false).ok()
    });
    if got.is_none() {
        let log = std::fs::read_to_string(env.app().join(".flotilla/host/daemon.log"))
            .unwrap_or_default();
        panic!("no certificate from pebble within 60 s; daemon log:\n{log}");
    }
}

#[test]
fn acme_http01_certificate_from_pebble_is_served_stored_and_renewed_live() {
    use std::os::unix::fs::PermissionsExt;
    let name = "shop.example.com";
    // Short-lived certificates: renewed when a third of their 30 s remains.
    let (env, _pebble, https_port, root) = acme_env(name, "http-01", Some(Duration::from_secs(30)));
    let v1 = env.deploy();
    wait_for_certificate(name, https_port, &root, &env);
    check_both_protocols(name, https_port, &root, &v1);

    // Kept in the state directory, owner-only.
    for file in ["certificate.pem", "key.pem", "account.json"] {
        let path = env.app().join(".flotilla/host/acme").join(file);
        let mode = std::fs::metadata(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file} is owner-only");
    }

    // Now that the name has a certificate, plain HTTP redirects to it.
    let redirect = plain(env.listen, name, "/x");
    assert_eq!(redirect.status, 308, "{redirect:?}");
    assert_eq!(
        redirect.header("location"),
        Some(format!("https://{name}:{https_port}/x").as_str())
    );

    // A WebSocket opened on the first certificate outlives its renewal.
    let rt = runtime();
    rt.block_on(async {
        let first = served_leaf(https_port, name, &root).await;
        let mut ws = wss(https_port, name, &root).await;
        echo(&mut ws, "before renewal").await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if served_leaf(https_port, name, &root).await != first {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the certificate was not renewed within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        echo(&mut ws, "after renewal").await;
        ws.close(None).await.expect("close");
    });
    // The daemon never restarted for it: new connections still work on both protocols.
    check_both_protocols(name, https_port, &root, &v1);
}

#[test]
fn acme_tls_alpn01_certificate_from_pebble_is_served_over_http2() {
    let name = "alpn.example.com";
    let (env, _pebble, https_port, root) = acme_env(name, "tls-alpn-01", None);
    let v1 = env.deploy();
    wait_for_certificate(name, https_port, &root, &env);
    check_both_protocols(name, https_port, &root, &v1);
}
