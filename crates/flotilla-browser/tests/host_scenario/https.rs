//! The host router on HTTPS in a real browser (issue 12, item 1): headless Chromium loads the
//! session example over TLS from the router's own certificate (trusted by its key's hash, the
//! name mapped to loopback), gets the page and its fetches over HTTP/2 (ALPN), opens its
//! WebSocket over TLS, and keeps its version through a deploy while a fresh tab gets the new one.
//!
//! - `a_tab_on_https_gets_http2_and_keeps_its_version_through_a_deploy`

use std::path::Path;

use base64::Engine as _;
use flotilla_browser::{Browser, BrowserConfig, Tab};
use rcgen::PublicKeyData as _;
use serde_json::Value;
use sha2::Digest as _;

use super::host::HostEnv;
use super::{bounded, fetch_state, page, sessions_app, socket_ready, str_of};

/// The name the certificate is for; Chromium resolves it to loopback.
const NAME: &str = "app.flotilla.test";

/// A self-signed certificate for [`NAME`], written to `dir`; its key's SHA-256 SPKI hash in
/// base64, which Chromium is told to trust.
fn certificate(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, String) {
    let certified = rcgen::generate_simple_self_signed(vec![NAME.to_owned()]).expect("cert");
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, certified.cert.pem()).expect("write cert");
    std::fs::write(&key, certified.signing_key.serialize_pem()).expect("write key");
    let spki = sha2::Sha256::digest(certified.signing_key.subject_public_key_info());
    let pin = base64::engine::general_purpose::STANDARD.encode(spki);
    (cert, key, pin)
}

/// The protocol the page itself and its last `/api/state` fetch came over (`h2`, `http/1.1`).
async fn protocols(tab: &Tab) -> Value {
    tab.eval(
        "const nav = performance.getEntriesByType('navigation')[0];
         const api = performance.getEntriesByType('resource')
             .filter(e => e.name.includes('/api/state')).pop();
         return { page: nav ? nav.nextHopProtocol : null,
                  api: api ? api.nextHopProtocol : null,
                  secure: window.isSecureContext };",
    )
    .await
    .expect("read the navigation timing")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tab_on_https_gets_http2_and_keeps_its_version_through_a_deploy() {
    if flotilla_testkit::slow::skip("Chromium") {
        return;
    }
    bounded(async {
        let keys = tempfile::tempdir().expect("tempdir");
        let (cert, key, pin) = certificate(keys.path());
        let https_port = flotilla_testkit::net::free_port();
        let app = sessions_app();
        let env = HostEnv::with_config(
            "https",
            "health_path = \"/healthz\"\ninject_client = false\n",
            super::host::GRACE_SECONDS,
            &format!(
                "instances = {}\nbuild = {:?}\ncommand = {:?}\n\
                 https_listen = \"127.0.0.1:{https_port}\"\n\
                 tls_certificate_file = {:?}\ntls_key_file = {:?}\n",
                app.instances,
                app.build,
                app.command,
                cert.display().to_string(),
                key.display().to_string(),
            ),
            "",
        );
        env.write("label.txt", "first release\n");
        let v1 = env.deploy();

        let browser = Browser::launch_with(BrowserConfig {
            extra_args: vec![
                format!("--host-resolver-rules=MAP {NAME} 127.0.0.1"),
                format!("--ignore-certificate-errors-spki-list={pin}"),
            ],
            ..BrowserConfig::default()
        })
        .await
        .unwrap_or_else(|e| {
            panic!("cannot start the browser (run scripts/install-browser.sh): {e}")
        });
        let url = format!("https://{NAME}:{https_port}/");

        // Tab A: the page over HTTP/2, its WebSocket over TLS, its fetch over HTTP/2, all v1.
        let a = browser.first_tab();
        a.goto(&url).await.expect("open tab A over HTTPS");
        let a1 = socket_ready(&a, "tab A's socket over TLS", 1, 0).await;
        assert_eq!(str_of(&a1["page"]), v1, "tab A's page is v1: {a1}");
        assert_eq!(str_of(&a1["socketId"]), v1, "tab A's socket is on v1: {a1}");
        let fetched = fetch_state(&a).await;
        assert_eq!(fetched["status"], 200, "{fetched}");
        assert_eq!(str_of(&fetched["header"]), v1, "{fetched}");
        let on = protocols(&a).await;
        assert_eq!(
            on["page"], "h2",
            "Chromium negotiated HTTP/2 for the page: {on}"
        );
        assert_eq!(on["api"], "h2", "and for the fetch: {on}");
        assert_eq!(on["secure"], true, "a secure context: {on}");

        // A deploy: a fresh tab gets v2 over HTTP/2; tab A's fetch still reaches v1.
        env.write("label.txt", "second release\n");
        let v2 = env.deploy();
        assert_ne!(v1, v2);
        let b = browser.new_tab().await.expect("open tab B");
        b.goto(&url).await.expect("load tab B over HTTPS");
        let b1 = socket_ready(&b, "tab B's socket over TLS", 1, 0).await;
        assert_eq!(str_of(&b1["page"]), v2, "a fresh tab gets v2: {b1}");
        assert_eq!(str_of(&b1["socketId"]), v2, "{b1}");
        assert_eq!(protocols(&b).await["page"], "h2");

        let again = fetch_state(&a).await;
        assert_eq!(
            str_of(&again["header"]),
            v1,
            "tab A stays on v1 over HTTP/2: {again}"
        );
        let a2 = page(&a).await;
        assert_eq!(
            str_of(&a2["socketId"]),
            v1,
            "tab A's socket is still v1's: {a2}"
        );
        assert_eq!(a2["socket"], "open", "tab A's socket was never cut: {a2}");
        browser.close().await.expect("close the browser");
    })
    .await;
}
