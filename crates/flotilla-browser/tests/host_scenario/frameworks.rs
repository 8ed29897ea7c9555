//! Real frameworks under the host provider with their `[app] framework` preset, two instances per
//! version, several deploys, and no flotilla code in the apps (`examples/streamlit-counter`,
//! `examples/pulse-counter`, run from the virtualenvs `scripts/frameworks.sh` makes):
//!
//! - `streamlit_tabs_keep_their_count_and_version_across_deploys_and_a_retired_tab_reloads`:
//!   Streamlit 1.67 in headless Chromium with only `framework = "streamlit"` (its health path,
//!   and the injected client, since Streamlit carries no version of its own): a tab's count lives
//!   in one v1 process; after each deploy a new tab gets the new version, the old tab's
//!   reconnected socket finds its session again (same version, same process, same count), each
//!   version shows its own `[env]` label and none of the deployer's environment, the secret from
//!   `[host] secrets_file` reaches the app and no log; when v1 is torn down, its tab reloads onto
//!   the current version by itself.
//! - `pulse_requests_and_sockets_follow_pulse_s_own_affinity_names`: pulse-framework's server
//!   (Python 3.12) with only `framework = "pulse"`: a deploy turns healthy on `/_pulse/health`
//!   (with flotilla's default health path it never does); prerenders and Socket.IO connections
//!   carrying `x-pulse-deployment` or `pulse_deployment` reach their version across three deploys
//!   while fresh ones reach the newest; each version sees its own environment. Pulse's React
//!   client (`pulse-ui-client`) is not on the npm registry, so the test speaks to the server as
//!   that client does rather than through a browser.

use std::path::{Path, PathBuf};
use std::time::Duration;

use flotilla_browser::{Tab, artifact_path};
use flotilla_testkit::procs::environ;
use serde_json::{Value, json};

use super::host::HostEnv;
use super::{WAIT, bounded, launch, state_of};

/// A framework's virtualenv (made by `scripts/frameworks.sh`), which must exist.
fn venv_bin(venv: &str, program: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../.venv")
        .join(venv)
        .join("bin")
        .join(program);
    assert!(
        path.is_file(),
        "{} does not exist: run scripts/frameworks.sh (scripts/test.sh runs it) to install the \
         frameworks these tests deploy",
        path.display()
    );
    // Not canonicalised: a venv's python is a symlink that only works under the venv's name.
    path
}

/// An example's file.
fn example(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// A secrets file outside the app directory, holding a token no log may show.
struct Secret {
    _dir: tempfile::TempDir,
    path: PathBuf,
    value: String,
}

fn secret() -> Secret {
    let dir = tempfile::tempdir().expect("secrets directory");
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let value = format!("tok-{}-{nanos}-never-logged", std::process::id());
    let path = dir.path().join("counter.env");
    std::fs::write(&path, format!("COUNTER_TOKEN={value}\n")).expect("write the secrets file");
    Secret {
        _dir: dir,
        path,
        value,
    }
}

/// Sets `[env] COUNTER_LABEL` for the next deploy (the file's last section is `[env]`).
fn set_label(env: &HostEnv, label: &str) {
    let path = env.app().join("flotilla.toml");
    let text = std::fs::read_to_string(&path).expect("read flotilla.toml");
    let head = text
        .split("COUNTER_LABEL")
        .next()
        .expect("split yields at least one part");
    std::fs::write(&path, format!("{head}COUNTER_LABEL = {label:?}\n")).expect("write");
}

/// Every process of version `id` has `COUNTER_LABEL = label`, the secret, and nothing of the
/// deployer's own environment (this test runs under cargo, which sets `CARGO_MANIFEST_DIR`).
fn assert_own_environment(env: &HostEnv, id: &str, label: &str, secret: &Secret) {
    let pids = env.processes_of(id);
    assert!(!pids.is_empty(), "no process runs {id}");
    for pid in pids {
        let vars = environ(pid);
        assert_eq!(
            vars.get("COUNTER_LABEL").map(String::as_str),
            Some(label),
            "{id} pid {pid}"
        );
        assert_eq!(
            vars.get("COUNTER_TOKEN"),
            Some(&secret.value),
            "{id} pid {pid}"
        );
        assert!(
            !vars.contains_key("CARGO_MANIFEST_DIR"),
            "{id} pid {pid} inherited the deployer's environment"
        );
    }
}

/// No log under the app's state directory, and no `flotilla logs` output, shows the secret.
fn assert_secret_in_no_log(env: &HostEnv, ids: &[&str], secret: &Secret) {
    let mut checked = 0;
    let mut stack = vec![env.app().join(".flotilla")];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "log") {
                let text =
                    String::from_utf8_lossy(&std::fs::read(&path).unwrap_or_default()).into_owned();
                assert!(
                    !text.contains(&secret.value),
                    "{} shows the secret",
                    path.display()
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 2, "found only {checked} log files to check");
    for id in ids {
        let out = env.flotilla(&["logs", id]);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !text.contains(&secret.value),
            "flotilla logs {id} shows the secret"
        );
    }
}

// ---- Streamlit -----------------------------------------------------------------------------------

/// What the Streamlit page shows, and the tab's version as the injected client holds it.
async fn streamlit_page(tab: &Tab) -> Value {
    tab.eval(
        "const text = document.body ? document.body.innerText : '';
         const field = (name) => {
           const m = text.match(new RegExp(name + ': (\\\\S+)'));
           return m ? m[1] : null;
         };
         return { count: field('count'), label: field('label'), process: field('process'),
                  token: field('token'),
                  client: window.flotilla ? window.flotilla.deploymentId() : null,
                  stored: sessionStorage.getItem('flotilla:deployment'),
                  sockets: (window.__sockets || []).map((s) => s.url) };",
    )
    .await
    .expect("read the Streamlit page")
}

/// Waits until the page shows `label` and `count`; returns what it shows.
async fn streamlit_shows(tab: &Tab, what: &str, label: &str, count: u64) -> Value {
    let shown = tab
        .wait_for(
            what,
            &format!(
                "const text = document.body ? document.body.innerText : '';
                 const field = (name) => {{
                   const m = text.match(new RegExp(name + ': (\\\\S+)'));
                   return m ? m[1] : null;
                 }};
                 return field('label') === '{label}' && field('count') === '{count}';"
            ),
            WAIT * 2,
        )
        .await;
    if let Err(e) = shown {
        panic!("{e}: {}", streamlit_page(tab).await);
    }
    streamlit_page(tab).await
}

/// Clicks Increment and waits for the count to be `want`. The first click also starts keeping
/// the page's WebSockets in `window.__sockets` (the one open now, found by watching `send`, and
/// every later one, by wrapping the constructor the injected client installed), so the test can
/// drop them and see the page reconnect.
async fn streamlit_increment(tab: &Tab, label: &str, want: u64) -> Value {
    let clicked = tab
        .eval(
            "if (!window.__sockets) {
               const sockets = [];
               window.__sockets = sockets;
               const proto = window.WebSocket.prototype;
               const send = proto.send;
               proto.send = function (data) {
                 if (!sockets.includes(this)) { sockets.push(this); }
                 return send.call(this, data);
               };
               const Current = window.WebSocket;
               window.WebSocket = class WebSocket extends Current {
                 constructor(...args) { super(...args); sockets.push(this); }
               };
             }
             const button = [...document.querySelectorAll('button')]
               .find((b) => b.innerText.trim() === 'Increment');
             if (!button) { return false; }
             button.click();
             return true;",
        )
        .await
        .expect("click Increment");
    assert_eq!(clicked, json!(true), "the page has an Increment button");
    streamlit_shows(tab, &format!("the count to reach {want}"), label, want).await
}

/// Closes the page's open WebSockets, as a network blip would; Streamlit reconnects by itself.
/// Closes the page's open WebSockets, as a network blip would, and waits until Streamlit has
/// opened a new one by itself; returns how many it closed.
async fn drop_sockets(tab: &Tab) -> u64 {
    let closed = tab
        .eval(
            "const open = (window.__sockets || []).filter((s) => s.readyState === 1);
             open.forEach((s) => s.close());
             window.__dropped = window.__sockets.length;
             return open.length;",
        )
        .await
        .expect("close the page's sockets");
    let reopened = tab
        .wait_for(
            "Streamlit to reconnect",
            "const s = window.__sockets;
             return s.length > window.__dropped && s[s.length - 1].readyState === 1;",
            WAIT * 2,
        )
        .await;
    if let Err(e) = reopened {
        panic!("{e}: {}", streamlit_page(tab).await);
    }
    closed.as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamlit_tabs_keep_their_count_and_version_across_deploys_and_a_retired_tab_reloads() {
    if flotilla_testkit::slow::skip("Chromium") {
        return;
    }
    bounded(async {
        let streamlit = venv_bin("streamlit", "streamlit");
        let secret = secret();
        // Only the framework: the preset gives the health path and the injected client.
        let env = HostEnv::with_config(
            "streamlit-counter",
            "framework = \"streamlit\"\n",
            // Long enough that no version is retired while this test still uses it: the
            // reconnect below must not depend on when the grace period is counted from.
            60,
            &format!(
                "instances = 2\ncommand = {command:?}\nsecrets_file = {secrets:?}\n",
                command = format!(
                    "exec {} run app.py --server.port $PORT --server.address 127.0.0.1 \
                     --server.headless true --server.fileWatcherType none \
                     --browser.gatherUsageStats false",
                    streamlit.display()
                ),
                secrets = secret.path.display().to_string(),
            ),
            "[env]\nCOUNTER_LABEL = \"first\"\n",
        );
        env.write("app.py", &example("streamlit-counter/app.py"));
        let check = env.flotilla(&["config", "check"]);
        let listing = String::from_utf8_lossy(&check.stdout);
        assert!(
            listing
                .lines()
                .any(|l| l.starts_with("app.health_path") && l.ends_with("preset streamlit")),
            "{listing}"
        );
        let v1 = env.deploy();

        let browser = launch().await;
        let a = browser.first_tab();
        a.goto(&env.url("/")).await.expect("open tab A");
        let shown = streamlit_shows(&a, "tab A's first page", "first", 0).await;
        assert_eq!(shown["client"], json!(v1), "{shown}");
        assert_eq!(shown["token"], json!("set"), "{shown}");
        streamlit_increment(&a, "first", 1).await;
        streamlit_increment(&a, "first", 2).await;
        let before = streamlit_increment(&a, "first", 3).await;
        let a_process = before["process"].clone();
        let mut a_count = 3;
        let socket = before["sockets"][0].as_str().unwrap_or("").to_owned();
        assert!(
            socket.contains("/_stcore/stream") && socket.contains(&format!("={v1}")),
            "tab A's socket is pinned to {v1}: {before}"
        );

        let mut versions = vec![(v1.clone(), "first")];
        let mut fresh_tabs = Vec::new();
        for label in ["second", "third"] {
            set_label(&env, label);
            let id = env.deploy();
            versions.push((id.clone(), label));

            // A new tab gets the new version.
            let fresh = browser.new_tab().await.expect("open a new tab");
            fresh.goto(&env.url("/")).await.expect("open the new tab");
            let shown = streamlit_shows(&fresh, "a new tab's page", label, 0).await;
            assert_eq!(shown["client"], json!(id), "{shown}");
            streamlit_increment(&fresh, label, 1).await;

            // Tab A's socket drops and reconnects: same version, same process, and the count
            // goes on from where it was.
            assert!(drop_sockets(&a).await >= 1, "tab A had an open socket");
            a_count += 1;
            let after = streamlit_increment(&a, "first", a_count).await;
            assert_eq!(after["process"], a_process, "{after}");
            assert_eq!(after["client"], json!(v1), "{after}");
            fresh_tabs.push((fresh, id, label));
        }
        // Every newer tab still shows its own version and count.
        for (tab, id, label) in &fresh_tabs {
            let shown = streamlit_shows(tab, "a newer tab, later", label, 1).await;
            assert_eq!(&shown["client"], &json!(id), "{shown}");
        }
        let state = streamlit_page(&a).await;
        assert_eq!(
            state["count"],
            json!("5"),
            "two reconnects, one click each: {state}"
        );

        for (id, label) in &versions {
            assert_own_environment(&env, id, label, &secret);
        }
        let ids: Vec<&str> = versions.iter().map(|(id, _)| id.as_str()).collect();
        assert_secret_in_no_log(&env, &ids, &secret);

        // v1 goes away under tab A: the socket drops, Streamlit's reconnect attempts are
        // answered 410, and the page reloads onto the current version by itself.
        let out = env.flotilla(&["teardown", &v1, "--yes"]);
        assert!(
            out.status.success(),
            "teardown {v1}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let current = versions
            .last()
            .map(|(id, _)| id.clone())
            .unwrap_or_default();
        let shown = streamlit_shows(&a, "tab A on the current version", "third", 0).await;
        assert_eq!(shown["client"], json!(current), "{shown}");
        let shot = artifact_path("streamlit-counter.png").expect("artefact path");
        a.screenshot(&shot).await.expect("screenshot");
        browser.close().await.expect("close the browser");
        assert!(
            env.version(&v1).is_none_or(|v| state_of(&v) == "retired"),
            "{v1} is gone"
        );
    })
    .await;
}

// ---- Pulse -----------------------------------------------------------------------------------------

/// One HTTP/1.1 exchange over a fresh connection: the status, the headers (names lowercased) and
/// the body.
fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Vec<(String, String)>, String) {
    let response = flotilla_testkit::http::exchange(
        addr,
        &addr.to_string(),
        method,
        path,
        headers,
        body.as_bytes(),
        Duration::from_secs(20),
    )
    .expect("one exchange with the router");
    (response.status, response.headers.clone(), response.text())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Pulse's prerender of `/`, as its React Router loader asks for it; the label and process the
/// page would show, and the version the router says served it.
fn prerender(env: &HostEnv, query: &str, headers: &[(&str, &str)]) -> (String, String, String) {
    let body = json!({
        "paths": ["/"],
        "routeInfo": {"pathname": "/", "hash": "", "query": "", "queryParams": {},
                      "pathParams": {}, "catchall": []}
    })
    .to_string();
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    let (status, got, text) = http(
        env.listen,
        "POST",
        &format!("/_pulse/prerender{query}"),
        &all,
        &body,
    );
    assert_eq!(status, 200, "prerender answered {status}: {text}");
    let field = |name: &str| {
        text.split(&format!("{name}: "))
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or("")
            .to_owned()
    };
    let served = header(&got, "x-pulse-deployment").unwrap_or("").to_owned();
    (field("label"), field("process"), served)
}

/// Opens Pulse's Socket.IO WebSocket through the router with `query` and returns the version the
/// router says it reached, keeping the socket open (an open socket is a session).
async fn pulse_socket(
    env: &HostEnv,
    query: &str,
) -> (
    String,
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
) {
    use futures_util::StreamExt;
    let url = format!(
        "ws://{}/socket.io/?EIO=4&transport=websocket{query}",
        env.listen
    );
    let (mut socket, response) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap_or_else(|e| panic!("open {url}: {e}"));
    let served = response
        .headers()
        .get("x-pulse-deployment")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    // Engine.IO's open packet proves Pulse's Socket.IO server answered, not only the router.
    let first = tokio::time::timeout(WAIT, socket.next())
        .await
        .expect("Engine.IO's open packet in time")
        .expect("a first message")
        .expect("a readable first message");
    let text = first.into_text().map(|t| t.to_string()).unwrap_or_default();
    assert!(
        text.starts_with("0{"),
        "Engine.IO open packet, got {text:?}"
    );
    (served, socket)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulse_requests_and_sockets_follow_pulse_s_own_affinity_names() {
    if flotilla_testkit::slow::skip("Chromium") {
        return;
    }
    bounded(async {
        let python = venv_bin("pulse", "python");
        let secret = secret();
        // Pulse's single-server mode proxies pages to its React Router server; this test asks
        // only for Pulse's own routes, so that address is never dialled.
        let command = format!(
            "PULSE_REACT_SERVER_ADDRESS=http://127.0.0.1:9 PULSE_HOST=127.0.0.1 PULSE_PORT=$PORT \
             exec {} -m uvicorn app:app.asgi_factory --factory --host 127.0.0.1 --port $PORT",
            python.display()
        );
        let env = HostEnv::with_config(
            "pulse-counter",
            "framework = \"pulse\"\n",
            60,
            &format!(
                "instances = 2\ncommand = {command:?}\nsecrets_file = {secrets:?}\n",
                secrets = secret.path.display().to_string(),
            ),
            "[env]\nCOUNTER_LABEL = \"first\"\n",
        );
        env.write("app.py", &example("pulse-counter/app.py"));

        let v1 = env.deploy();
        let (label, _, served) = prerender(&env, "", &[]);
        assert_eq!((label.as_str(), served.as_str()), ("first", v1.as_str()));
        // flotilla's own health path is not Pulse's (Pulse hands it to its React server), so
        // without the preset no deploy would have turned healthy.
        let (status, _, _) = http(env.listen, "GET", "/healthz", &[], "");
        assert_ne!(status, 200, "GET /healthz on a Pulse app");
        let (status, _, _) = http(env.listen, "GET", "/_pulse/health", &[], "");
        assert_eq!(status, 200, "GET /_pulse/health on a Pulse app");

        let mut versions = vec![(v1.clone(), "first")];
        let mut sockets = Vec::new();
        let (served, socket) = pulse_socket(&env, "").await;
        assert_eq!(served, v1, "a fresh socket reaches the newest version");
        sockets.push(socket);
        for label in ["second", "third"] {
            set_label(&env, label);
            let id = env.deploy();
            versions.push((id.clone(), label));
            // Fresh requests and sockets reach the new version.
            let (fresh, _, served) = prerender(&env, "", &[]);
            assert_eq!((fresh.as_str(), served.as_str()), (label, id.as_str()));
            let (served, socket) = pulse_socket(&env, "").await;
            assert_eq!(served, id);
            sockets.push(socket);
            // Pulse's names reach every earlier version that still runs.
            for (old, old_label) in &versions {
                let (got, _, served) = prerender(&env, "", &[("x-pulse-deployment", old)]);
                assert_eq!((got.as_str(), served.as_str()), (*old_label, old.as_str()));
                let (got, _, served) = prerender(&env, &format!("?pulse_deployment={old}"), &[]);
                assert_eq!((got.as_str(), served.as_str()), (*old_label, old.as_str()));
                let (served, socket) =
                    pulse_socket(&env, &format!("&pulse_deployment={old}")).await;
                assert_eq!(&served, old, "a socket pinned to {old}");
                sockets.push(socket);
            }
        }
        for (id, label) in &versions {
            assert_own_environment(&env, id, label, &secret);
        }
        let ids: Vec<&str> = versions.iter().map(|(id, _)| id.as_str()).collect();
        assert_secret_in_no_log(&env, &ids, &secret);
        drop(sockets);
    })
    .await;
}
