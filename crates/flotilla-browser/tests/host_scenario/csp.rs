//! The injected client on pages under a Content-Security-Policy (issue 11, item 5), with the
//! plain example's `/csp` page (a fresh `script-src 'nonce-N'` per response) behind the real
//! router in headless Chromium:
//!
//! - `the_injected_client_runs_under_a_nonce_policy_and_a_blocking_policy_is_reported`: with
//!   the policy in the header, the router copies the page's nonce onto the injected tag, so the
//!   client runs and the tab keeps its version in sessionStorage, on every load with a new nonce
//!   (the page's own unnonced script stays blocked: the policy really is enforced). With the policy
//!   in a `<meta>` instead, the tag goes in before the `<meta>`, which governs only what follows
//!   it, so the client runs without a nonce. A page whose policy blocks every tag (`script-src
//!   'none'`) gets none; the daemon log warns once, and `status` counts the pages.

use serde_json::{Value, json};

use super::host::{AppConfig, HostEnv, binary, version_in};
use super::{STORAGE_KEY, WAIT, bounded, launch};
use flotilla_browser::Tab;

/// What the CSP page and the client in it show.
async fn csp_state(tab: &Tab) -> Value {
    tab.eval(
        "const tag = document.querySelector('script[src*=\"/_flotilla/client.js\"]');
         return { page: window.cspPage || null,
                  nonced: document.getElementById('nonced').textContent,
                  unnonced: window.cspUnnonced === true,
                  tag: !!tag,
                  tagNonce: tag ? (tag.nonce || tag.getAttribute('nonce')) : null,
                  tagInHead: !!tag && tag.parentElement === document.head,
                  client: window.flotilla ? window.flotilla.deploymentId() : null,
                  stored: sessionStorage.getItem('flotilla:deployment') };",
    )
    .await
    .expect("read the CSP page's state")
}

/// Loads `path` in `tab` and waits until the page's own nonced script has run (the page is in).
async fn open(tab: &Tab, env: &HostEnv, path: &str) -> Value {
    tab.goto(&env.url(path)).await.expect("open the CSP page");
    tab.wait_for(
        &format!("{path} to load"),
        "return document.readyState === 'complete' && !!document.getElementById('nonced');",
        WAIT,
    )
    .await
    .unwrap_or_else(|e| panic!("{path}: {e}"));
    csp_state(tab).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_injected_client_runs_under_a_nonce_policy_and_a_blocking_policy_is_reported() {
    if flotilla_testkit::slow::skip("Chromium") {
        return;
    }
    bounded(async {
        let bin = binary("flotilla-example-plain", "flotilla-example-sessions");
        let env = HostEnv::new(
            "csp",
            &AppConfig {
                inject_client: true,
                instances: 1,
                build: format!("cp {} ./plain", bin.display()),
                command: "exec ./plain".into(),
                app_extra: String::new(),
            },
        );
        let v1 = env.deploy();
        let browser = launch().await;
        assert_eq!(STORAGE_KEY, "flotilla:deployment");

        // The policy in the header: the tag carries the page's nonce and the client runs.
        let a = browser.first_tab();
        let mut nonces = Vec::new();
        for load in 0..2 {
            let state = open(&a, &env, "/csp").await;
            let page_nonce = state["page"]["nonce"].as_str().unwrap_or("").to_owned();
            assert!(
                state["nonced"] == json!("ran") && page_nonce.len() == 32,
                "load {load}: the page's own nonced script ran: {state}"
            );
            assert_eq!(
                state["unnonced"],
                json!(false),
                "load {load}: Chromium enforces the policy (the unnonced script is blocked): {state}"
            );
            assert_eq!(
                (
                    &state["tag"],
                    &state["tagInHead"],
                    state["client"].as_str(),
                    state["stored"].as_str(),
                ),
                (&json!(true), &json!(true), Some(v1.as_str()), Some(v1.as_str())),
                "load {load}: the injected client ran under `script-src 'nonce-...'` and keeps the \
                 tab's version: {state}\n{}",
                env.daemon_log_tail()
            );
            // The nonce attribute is hidden from the DOM once the script ran (the `nonce` IDL
            // attribute keeps it): it must be the page's.
            assert_eq!(
                state["tagNonce"].as_str(),
                Some(page_nonce.as_str()),
                "load {load}: {state}"
            );
            nonces.push(page_nonce);
        }
        assert_ne!(nonces[0], nonces[1], "each response has its own nonce");

        // The policy in a <meta>: the tag precedes it, so the client runs without a nonce.
        let b = browser.new_tab().await.expect("open tab B");
        let state = open(&b, &env, "/csp?via=meta").await;
        assert_eq!(
            (
                &state["nonced"],
                &state["unnonced"],
                state["client"].as_str(),
                state["stored"].as_str(),
            ),
            (&json!("ran"), &json!(false), Some(v1.as_str()), Some(v1.as_str())),
            "a <meta> policy governs only what follows it: {state}"
        );

        // A policy that blocks every tag: none is inserted, the log says so once, status counts.
        let c = browser.new_tab().await.expect("open tab C");
        for load in 0..2 {
            c.goto(&env.url("/csp?via=none")).await.expect("open the blocked page");
            let state = c
                .wait_for(
                    "the blocked page to load",
                    "return document.readyState === 'complete' && !!document.getElementById('nonced') \
                     && { tag: !!document.querySelector('script[src*=\"/_flotilla/client.js\"]'), \
                          client: !!window.flotilla, nonced: document.getElementById('nonced').textContent };",
                    WAIT,
                )
                .await
                .unwrap_or_else(|e| panic!("load {load} of the blocked page: {e}"));
            assert_eq!(
                state,
                json!({"tag": false, "client": false, "nonced": "did not run"}),
                "load {load}: no useless tag under `script-src 'none'`"
            );
        }
        let version = version_in(&env.status(), &v1).expect("v1 in status");
        assert_eq!(
            version["compute"]["client_blocked_by_csp"],
            json!(2),
            "status --json counts the two blocked pages (and none of the nonce pages): {version}"
        );
        let text = env.flotilla(&["status"]);
        let text = String::from_utf8_lossy(&text.stdout);
        assert!(
            text.contains(&format!(
                "{v1}: 2 HTML page(s) went out without the browser client: their \
                 Content-Security-Policy would block its script"
            )),
            "{text}"
        );
        let log = std::fs::read_to_string(env.app().join(".flotilla/host/daemon.log"))
            .expect("read the daemon log");
        let warnings = log
            .lines()
            .filter(|l| l.contains("Content-Security-Policy blocks the injected browser client"))
            .collect::<Vec<_>>();
        assert!(
            warnings.len() == 1 && warnings[0].contains(&v1) && warnings[0].contains("'none'"),
            "one warning for v1, naming the policy: {warnings:#?}"
        );
    })
    .await;
}
