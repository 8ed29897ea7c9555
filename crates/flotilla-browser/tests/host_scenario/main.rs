//! Real-browser scenarios on the host provider: the real `flotilla` binary deploys the session
//! example (`examples/sessions`) behind the real host daemon and router, and headless Chromium
//! (Debian's package, installed by `scripts/install-browser.sh`) plays the user's tabs.
//!
//! - `a_tab_keeps_its_version_and_instance_through_a_deploy_and_moves_on_when_it_reloads`: the
//!   scenario of issue 4, part 5, with the session counter (two instances per version, sticky by
//!   the page's per-tab key): deploy v1, tab A counts, deploy v2, tab B gets v2, tab A's fetch and
//!   reconnected WebSocket still reach v1 and the very instance holding its count, a reload of A
//!   reaches v2, v1 is reaped once A's session has ended, and a third tab still holding v1 gets
//!   `flotilla:stale` on its next request and lands on v2.
//! - `an_app_that_knows_nothing_of_flotilla_keeps_per_tab_affinity_with_injection`: the plain app
//!   (no script tag, no flotilla code, two instances per version) with `[app] inject_client =
//!   true`: the injected client's own per-tab key keeps tab A on one v1 process, so after a
//!   deploy its fetch and its reconnected WebSockets still reach that process and its in-memory
//!   count; tab B gets v2; a socket asking for no stickiness shows v1's other process serves too.
//! - `a_python_stdlib_app_under_the_agent_keeps_each_tab_s_event_stream_on_its_version`: the
//!   example's Python app, each instance wrapped by the agent (the standalone `flotilla-agent`
//!   binary), client injected: tab A's open and reopened event streams and its fetches stay on
//!   v1 after v2 is deployed, tab B and a reload of A get v2.
//! - `canary`: tabs opened during a canary land on either version, and none moves when the
//!   canary is rolled back or promoted by hand (see that module).
//! - `csp`: the injected client on pages under a nonce-based Content-Security-Policy (see that
//!   module).
//! - `https`: the session example over the router's TLS in Chromium: HTTP/2 by ALPN, the
//!   WebSocket over TLS, a tab's version kept through a deploy (see that module).
//! - `frameworks`: real Streamlit and Pulse apps with their `[app] framework` presets (see that
//!   module).
//!
//! The binaries must be built first (`cargo build -p flotilla-cli -p flotilla-agent -p
//! flotilla-example-sessions`; `scripts/test.sh` builds them), and `python3` must be on PATH.
//! Screenshots go to `test-artifacts/`.

mod canary;
mod csp;
mod frameworks;
mod host;
mod https;

use std::future::Future;
use std::time::{Duration, Instant};

use flotilla_browser::{Browser, Tab, artifact_path};
use host::{AppConfig, HostEnv, binary, state_of, version_in};
use serde_json::{Value, json};

/// No test may run longer than this, browser start-up and deploys included.
const TEST_LIMIT: Duration = Duration::from_secs(170);

/// Longest wait for something a page does by itself (a socket opening, a message, a reload).
const WAIT: Duration = Duration::from_secs(15);

/// The sessionStorage key the flotilla client keeps the tab's version under.
const STORAGE_KEY: &str = "flotilla:deployment";

/// The response header naming the serving version.
const HEADER: &str = "x-flotilla-deployment";

async fn bounded<T>(test: impl Future<Output = T>) -> T {
    tokio::time::timeout(TEST_LIMIT, test)
        .await
        .expect("the test exceeded its time limit")
}

async fn launch() -> Browser {
    match Browser::launch().await {
        Ok(browser) => browser,
        Err(e) => panic!("cannot start the browser (run scripts/install-browser.sh): {e}"),
    }
}

/// The session example's `flotilla.toml` essentials: two instances, the page loads the client
/// itself (no injection), each release runs its own copy of the binary.
fn sessions_app() -> AppConfig {
    let bin = binary("flotilla-example-sessions", "flotilla-example-sessions");
    AppConfig {
        inject_client: false,
        instances: 2,
        build: format!("cp {} ./sessions", bin.display()),
        command: "exec ./sessions".into(),
        app_extra: String::new(),
    }
}

/// What the session page shows and its client holds.
async fn page(tab: &Tab) -> Value {
    tab.eval(
        "const s = window.sessions && window.sessions.state;
         if (!s) { return null; }
         return { page: s.pageId, label: document.getElementById('page-label').textContent,
                  client: window.flotilla ? window.flotilla.deploymentId() : null,
                  source: window.flotilla ? window.flotilla.source() : null,
                  stored: sessionStorage.getItem('flotilla:deployment'),
                  socket: s.socket, socketId: s.socketId, fetchId: s.fetchId,
                  instance: s.instance, count: s.count, opens: s.opens, messages: s.messages,
                  tab: s.tab, stale: s.stale };",
    )
    .await
    .expect("read the session page's state")
}

/// Waits until the page's socket has opened at least `opens` times, is open, and has said
/// something since `messages` messages.
async fn socket_ready(tab: &Tab, what: &str, opens: u64, messages: u64) -> Value {
    tab.wait_for(
        what,
        &format!(
            "const s = window.sessions && window.sessions.state;
             return !!s && s.socket === 'open' && s.opens >= {opens} && s.messages > {messages}
                    && s.fetchId !== null;"
        ),
        WAIT,
    )
    .await
    .unwrap_or_else(|e| panic!("{what}: {e}"));
    page(tab).await
}

/// Clicks Increment (sends `increment` over the socket) and waits for the count to be `want`.
async fn increment(tab: &Tab, want: u64) {
    let sent = tab
        .eval("return window.sessions.increment();")
        .await
        .expect("increment");
    assert_eq!(sent, json!(true), "the socket is open to send on");
    let reached = tab
        .wait_for(
            &format!("the counter to reach {want}"),
            &format!("return window.sessions.state.count === {want};"),
            WAIT,
        )
        .await;
    if let Err(e) = reached {
        panic!("{e}: {}", page(tab).await);
    }
}

/// The page's "Fetch state" (`GET /api/state` with the tab key; the client adds the affinity).
async fn fetch_state(tab: &Tab) -> Value {
    tab.eval_async("return await window.sessions.refresh();")
        .await
        .expect("fetch /api/state from the page")
}

/// Version affinity never uses cookies: the only ones are the router's per-version instance
/// cookies (set on answers to requests without a tab key, such as page loads).
async fn only_instance_cookies(tab: &Tab) {
    let names = tab.cookie_names().await.expect("cookies");
    assert!(
        names.iter().all(|n| n.starts_with("flotilla_instance_")),
        "only instance cookies: {names:?}"
    );
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tab_keeps_its_version_and_instance_through_a_deploy_and_moves_on_when_it_reloads() {
    if flotilla_testkit::slow::skip("Chromium") {
        return;
    }
    bounded(async {
        let env = HostEnv::new("sessions", &sessions_app());
        env.write("label.txt", "first release\n");
        let v1 = env.deploy();
        let browser = launch().await;

        // Tab A opens the page on v1, its WebSocket connects, it counts to 3.
        let a = browser.first_tab();
        a.goto(&env.url("/")).await.expect("open tab A");
        let a1 = socket_ready(&a, "tab A's socket on v1", 1, 0).await;
        assert_eq!(
            (
                str_of(&a1["page"]),
                str_of(&a1["client"]),
                str_of(&a1["stored"]),
                str_of(&a1["socketId"]),
                str_of(&a1["fetchId"]),
                str_of(&a1["label"]),
            ),
            (
                v1.as_str(),
                v1.as_str(),
                v1.as_str(),
                v1.as_str(),
                v1.as_str(),
                "first release"
            ),
            "tab A is on v1 everywhere: {a1}"
        );
        assert_eq!(
            a1["source"], "script",
            "the page declares its id on the tag"
        );
        let instance_a = str_of(&a1["instance"]).to_owned();
        let tab_key_a = str_of(&a1["tab"]).to_owned();
        for n in 1..=3 {
            increment(&a, n).await;
        }

        // Tab C opens on v1 too, then closes its socket for good: it holds v1 in sessionStorage
        // but no session, as an idle old tab would.
        let c = browser.new_tab().await.expect("open tab C");
        c.goto(&env.url("/")).await.expect("load tab C");
        let c1 = socket_ready(&c, "tab C's socket on v1", 1, 0).await;
        assert_eq!(str_of(&c1["page"]), v1, "{c1}");
        c.eval("window.sessions.disconnect(); return true;")
            .await
            .expect("disconnect tab C");
        assert_ne!(str_of(&c1["tab"]), tab_key_a, "each tab has its own key");

        // Deploy v2 (a different label.txt in its release); tab B opens on v2.
        env.write("label.txt", "second release\n");
        let v2 = env.deploy();
        assert_ne!(v1, v2);
        let b = browser.new_tab().await.expect("open tab B");
        b.goto(&env.url("/")).await.expect("load tab B");
        let b1 = socket_ready(&b, "tab B's socket on v2", 1, 0).await;
        assert_eq!(
            (
                str_of(&b1["page"]),
                str_of(&b1["client"]),
                str_of(&b1["stored"]),
                str_of(&b1["socketId"]),
                str_of(&b1["fetchId"]),
                str_of(&b1["label"]),
            ),
            (
                v2.as_str(),
                v2.as_str(),
                v2.as_str(),
                v2.as_str(),
                v2.as_str(),
                "second release"
            ),
            "a fresh tab lands on v2: {b1}"
        );
        assert_eq!(b1["count"], 0, "tab B's counter starts at zero");

        // Tab A: a fetch reaches v1 and the instance holding its count.
        let fetched = fetch_state(&a).await;
        assert_eq!(fetched["status"], 200, "{fetched}");
        assert_eq!(
            (
                str_of(&fetched["header"]),
                str_of(&fetched["body"]["deployment_id"]),
                str_of(&fetched["body"]["instance"]),
                fetched["body"]["count"].as_u64(),
                str_of(&fetched["body"]["label"]),
            ),
            (
                v1.as_str(),
                v1.as_str(),
                instance_a.as_str(),
                Some(3),
                "first release"
            ),
            "tab A's fetch after the deploy: {fetched}"
        );

        // The control: a socket pinned to v1 WITHOUT a tab key (an empty `flotilla_tab`, which
        // the flotilla client leaves as the page wrote it and the router reads as none), opened
        // while A's socket lives, goes to v1's other instance (the one with fewer sessions). So
        // both v1 instances serve, and what brings A's reconnects back to its instance is the
        // tab key. The page's own load (a navigation, so without a tab key) set v1's instance
        // cookie, which a socket without a tab key would follow: delete it first.
        a.delete_cookies().await.expect("delete tab A's cookies");
        let keyless = a
            .eval_async(
                "const ws = new WebSocket('ws://' + location.host + '/ws?flotilla_tab=');
                 const first = await new Promise((resolve, reject) => {
                   ws.onmessage = (e) => resolve(JSON.parse(e.data));
                   ws.onerror = () => reject(new Error('keyless socket failed'));
                 });
                 ws.close();
                 return first;",
            )
            .await
            .expect("a keyless socket from tab A");
        assert_eq!(str_of(&keyless["deployment_id"]), v1, "{keyless}");
        assert_ne!(
            str_of(&keyless["instance"]),
            instance_a,
            "without the tab key the router balances to the other v1 instance: {keyless}"
        );

        // Forced reconnects of tab A's socket: each reaches v1, the same instance, and the count.
        let mut seen = Vec::new();
        for round in 0..4u64 {
            let before = page(&a).await;
            let opens = before["opens"].as_u64().unwrap_or(0);
            let messages = before["messages"].as_u64().unwrap_or(0);
            a.eval("window.sessions.reconnect(); return true;")
                .await
                .expect("reconnect tab A's socket");
            let after = socket_ready(&a, "tab A's reconnected socket", opens + 1, messages).await;
            assert_eq!(
                (
                    str_of(&after["socketId"]),
                    str_of(&after["instance"]),
                    after["count"].as_u64(),
                ),
                (v1.as_str(), instance_a.as_str(), Some(3 + round)),
                "reconnect {round} of tab A: {after}"
            );
            seen.push(str_of(&after["instance"]).to_owned());
            increment(&a, 4 + round).await;
        }
        eprintln!(
            "tab A (key {tab_key_a}) stayed on v1 instance {instance_a} through 4 reconnects \
             ({seen:?}); a keyless socket went to {}",
            keyless["instance"]
        );
        // Tab B is still on v2 and has its own count.
        increment(&b, 1).await;
        let b2 = page(&b).await;
        assert_eq!(str_of(&b2["socketId"]), v2, "{b2}");

        let shot = artifact_path("host-sessions-two-tabs.png").expect("artefact path");
        browser
            .screenshot_tabs(&[&a, &b], &shot)
            .await
            .expect("screenshot tabs A and B");
        eprintln!("screenshot of tabs A (v1) and B (v2): {}", shot.display());

        // v1 drains while A's session lives, and is not retired even after grace + poll +
        // reaper interval: a version with a live session is never retired on a timer.
        let (draining, status) = env.status_until(WAIT, |s| {
            version_in(s, &v1).is_some_and(|v| state_of(&v) == "draining")
        });
        assert!(draining, "v1 drains after v2's deploy: {status}");
        let idle = Duration::from_secs(
            host::GRACE_SECONDS + host::POLL_SECONDS + host::REAPER_INTERVAL_SECONDS + 2,
        );
        tokio::time::sleep(idle).await;
        let v1_now = env
            .version(&v1)
            .unwrap_or_else(|| panic!("v1 was removed while tab A's socket was open"));
        assert_eq!(state_of(&v1_now), "draining", "{v1_now}");
        assert!(
            v1_now["compute"]["sessions"].as_u64() >= Some(1),
            "the router counts tab A's socket: {v1_now}"
        );
        increment(&a, 8).await;
        assert_eq!(str_of(&page(&a).await["socketId"]), v1);

        // A reload of tab A is a navigation: it reaches v2 (same tab key, v2's memory).
        a.reload().await.expect("reload tab A");
        let a2 = socket_ready(&a, "tab A's socket after the reload", 1, 0).await;
        assert_eq!(
            (
                str_of(&a2["page"]),
                str_of(&a2["client"]),
                str_of(&a2["stored"]),
                str_of(&a2["socketId"]),
                str_of(&a2["fetchId"]),
                str_of(&a2["tab"]),
            ),
            (
                v2.as_str(),
                v2.as_str(),
                v2.as_str(),
                v2.as_str(),
                v2.as_str(),
                tab_key_a.as_str()
            ),
            "tab A after the reload: {a2}"
        );
        assert_eq!(a2["count"], 0, "v2's memory never saw tab A's count");
        let session_ended = Instant::now();

        // v1 has no session left (A reloaded, C disconnected): it is retired and reaped.
        let (reaped, status) = env.status_until(Duration::from_secs(30), |s| {
            version_in(s, &v1).is_none_or(|v| state_of(&v) == "retired")
        });
        assert!(
            reaped,
            "v1 is retired once its last session ended: {status}\n{}",
            env.daemon_log_tail()
        );
        let retired_after = session_ended.elapsed();
        let gone = tokio::task::block_in_place(|| {
            let deadline = Instant::now() + WAIT;
            while Instant::now() < deadline {
                if env.processes_of(&v1).is_empty() {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            false
        });
        assert!(gone, "v1's processes stop: {:?}", env.processes_of(&v1));
        eprintln!(
            "v1 retired {retired_after:?} after tab A's session ended (grace {}s, poll {}s, \
             reaper every {}s)",
            host::GRACE_SECONDS,
            host::POLL_SECONDS,
            host::REAPER_INTERVAL_SECONDS
        );

        // Tab C still holds v1: its next request gets 410, the client fires flotilla:stale, and
        // the event's default action reloads the tab onto v2.
        assert_eq!(
            c.session_storage(STORAGE_KEY)
                .await
                .expect("C's storage")
                .as_deref(),
            Some(v1.as_str())
        );
        c.eval(
            "window.addEventListener('flotilla:stale', (event) => {
               sessionStorage.setItem('test:stale', JSON.stringify(
                 { detail: event.detail, cancelable: event.cancelable }));
             });
             window.sessions.refresh();
             return true;",
        )
        .await
        .expect("tab C fetches");
        let c2 = c
            .wait_for(
                "tab C to reload onto v2",
                &format!(
                    "const s = window.sessions && window.sessions.state;
                     return !!s && s.pageId === '{v2}' && s.socket === 'open';"
                ),
                WAIT,
            )
            .await;
        if let Err(e) = c2 {
            panic!("{e}: {}", page(&c).await);
        }
        let stale: Value = serde_json::from_str(
            &c.session_storage("test:stale")
                .await
                .expect("C's storage")
                .expect("flotilla:stale fired in tab C before its reload"),
        )
        .expect("the recorded event is JSON");
        assert_eq!(
            (
                str_of(&stale["detail"]["retired"]),
                str_of(&stale["detail"]["current"]),
                &stale["cancelable"],
            ),
            (v1.as_str(), v2.as_str(), &json!(true)),
            "{stale}"
        );
        let c3 = page(&c).await;
        assert_eq!(
            (str_of(&c3["client"]), str_of(&c3["stored"])),
            (v2.as_str(), v2.as_str()),
            "{c3}"
        );

        let shot = artifact_path("host-sessions-after-reap.png").expect("artefact path");
        browser
            .screenshot_tabs(&[&a, &b, &c], &shot)
            .await
            .expect("screenshot tabs A, B and C");
        for tab in [&a, &b, &c] {
            only_instance_cookies(tab).await;
        }
        browser.close().await.expect("close the browser");
        tokio::task::block_in_place(|| drop(env));
    })
    .await;
}

/// What the plain app's page shows, and what the injected client holds.
async fn plain(tab: &Tab) -> Value {
    tab.eval(
        "const s = window.plain && window.plain.state;
         if (!s) { return null; }
         const tag = document.querySelector('script[src*=\"/_flotilla/client.js\"]');
         return { label: document.getElementById('label').textContent,
                  tag: tag ? tag.getAttribute('data-deployment') : null,
                  tagInHead: !!tag && tag.parentElement === document.head,
                  client: window.flotilla ? window.flotilla.deploymentId() : null,
                  stored: sessionStorage.getItem('flotilla:deployment'),
                  socket: s.socket, opens: s.opens, socketLabel: s.socketLabel,
                  socketPid: s.socketPid, count: s.count,
                  key: window.flotilla ? window.flotilla.tabKey() : null,
                  keyStored: sessionStorage.getItem('flotilla:tab') };",
    )
    .await
    .expect("read the plain page's state")
}

/// `GET /whoami` from the page: the app's label and the version the router stamped.
async fn whoami(tab: &Tab) -> Value {
    tab.eval_async_with(
        "const r = await fetch('/whoami?tab=' + encodeURIComponent(window.plain.state.tab));
         return { status: r.status, header: r.headers.get(arguments[0]), body: await r.json() };",
        vec![json!(HEADER)],
    )
    .await
    .expect("fetch /whoami from the page")
}

async fn plain_ready(tab: &Tab, what: &str, opens: u64) -> Value {
    tab.wait_for(
        what,
        &format!(
            "const s = window.plain && window.plain.state;
             return !!s && s.socket === 'open' && s.opens >= {opens} && s.socketLabel !== null;"
        ),
        WAIT,
    )
    .await
    .unwrap_or_else(|e| panic!("{what}: {e}"));
    plain(tab).await
}

async fn plain_increment(tab: &Tab, want: u64) {
    let sent = tab
        .eval("return window.plain.increment();")
        .await
        .expect("increment");
    assert_eq!(sent, json!(true));
    let reached = tab
        .wait_for(
            &format!("the plain counter to reach {want}"),
            &format!("return window.plain.state.count === {want};"),
            WAIT,
        )
        .await;
    if let Err(e) = reached {
        panic!("{e}: {}", plain(tab).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_that_knows_nothing_of_flotilla_keeps_per_tab_affinity_with_injection() {
    if flotilla_testkit::slow::skip("Chromium") {
        return;
    }
    bounded(async {
        let bin = binary("flotilla-example-plain", "flotilla-example-sessions");
        // Two instances per version, each counting in its own memory: the app sends nothing of
        // flotilla's, so only the injected client's tab key keeps a tab on one of them.
        let env = HostEnv::new(
            "plain",
            &AppConfig {
                inject_client: true,
                instances: 2,
                build: format!("cp {} ./plain", bin.display()),
                command: "exec ./plain".into(),
                app_extra: String::new(),
            },
        );
        env.write("label.txt", "one\n");
        let v1 = env.deploy();
        both_instances_healthy(&env, &v1);
        let browser = launch().await;

        let a = browser.first_tab();
        a.goto(&env.url("/")).await.expect("open tab A");
        let a1 = plain_ready(&a, "tab A's socket on v1", 1).await;
        assert_eq!(
            (
                str_of(&a1["label"]),
                str_of(&a1["socketLabel"]),
                str_of(&a1["tag"]),
                &a1["tagInHead"],
                str_of(&a1["client"]),
                str_of(&a1["stored"]),
            ),
            (
                "one",
                "one",
                v1.as_str(),
                &json!(true),
                v1.as_str(),
                v1.as_str()
            ),
            "the router injected the client into v1's page: {a1}"
        );
        let key_a = str_of(&a1["key"]).to_owned();
        assert!(
            key_a.len() == 36 && a1["keyStored"] == json!(key_a),
            "the injected client made a tab key and keeps it in sessionStorage: {a1}"
        );
        plain_increment(&a, 1).await;
        plain_increment(&a, 2).await;
        let pid_a = a1["socketPid"].as_u64().expect("the socket names its pid");

        // The control: a socket pinned to v1 that asks for no stickiness (an empty flotilla_tab,
        // which the client leaves as written and the router reads as no key), opened while A's
        // socket lives, goes to v1's other process (the one with fewer sessions). So both v1
        // processes serve, and what keeps tab A on its process is the client's tab key. The page's
        // own load set v1's instance cookie, which a socket without a tab key would follow:
        // delete it first.
        a.delete_cookies().await.expect("delete tab A's cookies");
        let keyless = a
            .eval_async(
                "const ws = new WebSocket('ws://' + location.host + '/ws?tab=control&flotilla_tab=');
                 const first = await new Promise((resolve, reject) => {
                   ws.onmessage = (e) => resolve(JSON.parse(e.data));
                   ws.onerror = () => reject(new Error('keyless socket failed'));
                 });
                 ws.close();
                 return first;",
            )
            .await
            .expect("a keyless socket from tab A");
        assert_eq!(str_of(&keyless["label"]), "one", "{keyless}");
        let pid_other = keyless["pid"].as_u64();
        assert!(
            pid_other.is_some() && pid_other != Some(pid_a),
            "without a tab key the router balances to v1's other process (tab A is on \
             {pid_a}): {keyless}"
        );
        let v1_pids = env.processes_of(&v1);
        assert!(
            v1_pids.len() == 2 && v1_pids.iter().any(|p| u64::from(*p) == pid_a),
            "two v1 processes run, tab A's among them: {v1_pids:?}"
        );

        env.write("label.txt", "two\n");
        let v2 = env.deploy();
        assert_ne!(v1, v2);
        let b = browser.new_tab().await.expect("open tab B");
        b.goto(&env.url("/")).await.expect("load tab B");
        let b1 = plain_ready(&b, "tab B's socket on v2", 1).await;
        assert_eq!(
            (
                str_of(&b1["label"]),
                str_of(&b1["socketLabel"]),
                str_of(&b1["client"]),
            ),
            ("two", "two", v2.as_str()),
            "a fresh tab lands on v2: {b1}"
        );
        assert_ne!(str_of(&b1["key"]), key_a, "tab B has its own key: {b1}");
        let pid_b = b1["socketPid"].as_u64();
        assert!(
            pid_b.is_some_and(|p| p != pid_a && Some(p) != pid_other),
            "{b1}"
        );

        // Tab A's fetch reaches v1's process holding its count.
        let fetched = whoami(&a).await;
        assert_eq!(
            (
                fetched["status"].as_u64(),
                str_of(&fetched["header"]),
                str_of(&fetched["body"]["label"]),
                fetched["body"]["pid"].as_u64(),
                fetched["body"]["count"].as_u64(),
            ),
            (Some(200), v1.as_str(), "one", Some(pid_a), Some(2)),
            "tab A's fetch: {fetched}"
        );
        // Forced reconnects of tab A's socket: each reaches v1, the same process, and the count.
        for round in 0..4u64 {
            let opens = plain(&a).await["opens"].as_u64().unwrap_or(0);
            a.eval("window.plain.reconnect(); return true;")
                .await
                .expect("reconnect");
            let after = plain_ready(&a, "tab A's reconnected socket", opens + 1).await;
            assert_eq!(
                (
                    str_of(&after["socketLabel"]),
                    after["socketPid"].as_u64(),
                    after["count"].as_u64()
                ),
                ("one", Some(pid_a), Some(2 + round)),
                "reconnect {round} of tab A reaches v1's process holding its count: {after}"
            );
            plain_increment(&a, 3 + round).await;
        }
        eprintln!(
            "plain app, two instances per version: tab A (key {key_a}) stayed on v1 process \
             {pid_a} through 4 reconnects; a keyless socket went to {pid_other:?}; tab B is on \
             v2 process {pid_b:?}"
        );
        let fetched_b = whoami(&b).await;
        assert_eq!(
            (
                str_of(&fetched_b["header"]),
                str_of(&fetched_b["body"]["label"]),
                fetched_b["body"]["pid"].as_u64(),
            ),
            (v2.as_str(), "two", pid_b),
            "tab B's fetch reaches its socket's v2 process: {fetched_b}"
        );

        let shot = artifact_path("host-plain-injected-two-tabs.png").expect("artefact path");
        browser
            .screenshot_tabs(&[&a, &b], &shot)
            .await
            .expect("screenshot");

        // A reload of A reaches v2, with the same tab key.
        a.reload().await.expect("reload tab A");
        let a3 = plain_ready(&a, "tab A after its reload", 1).await;
        assert_eq!(
            (
                str_of(&a3["label"]),
                str_of(&a3["socketLabel"]),
                str_of(&a3["client"]),
                str_of(&a3["key"]),
            ),
            ("two", "two", v2.as_str(), key_a.as_str()),
            "{a3}"
        );
        for tab in [&a, &b] {
            only_instance_cookies(tab).await;
        }
        browser.close().await.expect("close the browser");
        tokio::task::block_in_place(|| drop(env));
    })
    .await;
}

/// Waits until `id` has both its instances healthy, so a balancing choice has two to pick from.
fn both_instances_healthy(env: &HostEnv, id: &str) {
    let (healthy, status) = tokio::task::block_in_place(|| {
        env.status_until(WAIT, |s| {
            version_in(s, id).is_some_and(|v| v["compute"]["healthy"].as_u64() == Some(2))
        })
    });
    assert!(healthy, "both instances of {id} get healthy: {status}");
}

/// The Python app's page state: the version it says served it, what the injected client holds,
/// and its event stream.
async fn python_page(tab: &Tab) -> Value {
    tab.eval(
        "if (!window.app) { return null; }
         return { page: document.getElementById('page-version').textContent,
                  client: window.flotilla ? window.flotilla.deploymentId() : null,
                  fetchVersion: window.app.fetchVersion, streamVersion: window.app.streamVersion,
                  streamPid: window.app.streamPid || null,
                  streamOpen: window.app.streamOpen, opens: window.app.opens,
                  ticks: window.app.ticks };",
    )
    .await
    .expect("read the Python page's state")
}

async fn python_ticking(tab: &Tab, what: &str, opens: u64, ticks: u64) -> Value {
    let reached = tab
        .wait_for(
            what,
            &format!(
                "return !!window.app && window.app.streamOpen && window.app.opens >= {opens}
                        && window.app.ticks >= {ticks} && window.app.fetchVersion !== null;"
            ),
            WAIT,
        )
        .await;
    if let Err(e) = reached {
        panic!("{what}: {e}: {}", python_page(tab).await);
    }
    python_page(tab).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_stdlib_app_under_the_agent_keeps_each_tab_s_event_stream_on_its_version() {
    if flotilla_testkit::slow::skip("Chromium") {
        return;
    }
    bounded(async {
        let python_dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/sessions/python");
        let python = std::process::Command::new("python3")
            .arg("--version")
            .output();
        assert!(
            python.is_ok_and(|o| o.status.success()),
            "python3 is needed to run examples/sessions/python/app.py (Debian: apt-get install \
             python3)"
        );
        // Each instance runs the app under the agent, which listens on the instance's PORT and
        // gives the app a free port of its own (every instance of every version needs one).
        let agent = binary("flotilla-agent", "flotilla-agent");
        let env = HostEnv::new(
            "python",
            &AppConfig {
                inject_client: true,
                instances: 2,
                build: format!(
                    "cp {dir}/app.py {dir}/free_port.py . && cp {agent} ./agent",
                    dir = python_dir.display(),
                    agent = agent.display()
                ),
                command: "FLOTILLA_APP_STOP_TIMEOUT_SECONDS=2 exec ./agent \
                          --listen 127.0.0.1:$PORT --app-port $(python3 free_port.py) \
                          -- python3 app.py"
                    .into(),
                app_extra: String::new(),
            },
        );
        let v1 = env.deploy();
        let browser = launch().await;

        let a = browser.first_tab();
        a.goto(&env.url("/")).await.expect("open tab A");
        let a1 = python_ticking(&a, "tab A's event stream on v1", 1, 2).await;
        assert_eq!(
            (
                str_of(&a1["page"]),
                str_of(&a1["client"]),
                str_of(&a1["fetchVersion"]),
                str_of(&a1["streamVersion"]),
            ),
            (v1.as_str(), v1.as_str(), v1.as_str(), v1.as_str()),
            "tab A is on v1: {a1}"
        );

        // The health path is answered by the agent (its JSON), after probing the app's own.
        let health = a
            .eval_async("const r = await fetch('/healthz'); return await r.json();")
            .await
            .expect("fetch /healthz from tab A");
        assert_eq!(
            (
                str_of(&health["deployment_id"]),
                &health["draining"],
                &health["app"]["healthy"],
            ),
            (v1.as_str(), &json!(false), &json!(true)),
            "the agent answers the health path: {health}"
        );

        let v2 = env.deploy();
        let b = browser.new_tab().await.expect("open tab B");
        b.goto(&env.url("/")).await.expect("load tab B");
        let b1 = python_ticking(&b, "tab B's event stream on v2", 1, 1).await;
        assert_eq!(
            (
                str_of(&b1["page"]),
                str_of(&b1["client"]),
                str_of(&b1["fetchVersion"]),
                str_of(&b1["streamVersion"]),
            ),
            (v2.as_str(), v2.as_str(), v2.as_str(), v2.as_str()),
            "a fresh tab lands on v2: {b1}"
        );

        // Tab A's open stream keeps ticking from v1; its fetches and a reopened stream reach v1.
        let before = python_page(&a).await["ticks"].as_u64().unwrap_or(0);
        let a2 = python_ticking(&a, "tab A's stream to keep ticking", 1, before + 2).await;
        assert_eq!(str_of(&a2["streamVersion"]), v1, "{a2}");
        let hello = a
            .eval_async("const r = await fetch('/api/hello'); return await r.json();")
            .await
            .expect("fetch /api/hello from tab A");
        assert_eq!(str_of(&hello["version"]), v1, "{hello}");
        a.eval("window.app.reopen(); return true;")
            .await
            .expect("reopen tab A's stream");
        let a3 = python_ticking(&a, "tab A's reopened stream", 2, 1).await;
        assert_eq!(str_of(&a3["streamVersion"]), v1, "{a3}");

        let shot = artifact_path("host-python-two-tabs.png").expect("artefact path");
        browser
            .screenshot_tabs(&[&a, &b], &shot)
            .await
            .expect("screenshot");

        a.reload().await.expect("reload tab A");
        let a4 = python_ticking(&a, "tab A after its reload", 1, 1).await;
        assert_eq!(
            (str_of(&a4["page"]), str_of(&a4["streamVersion"])),
            (v2.as_str(), v2.as_str()),
            "{a4}"
        );
        browser.close().await.expect("close the browser");
        tokio::task::block_in_place(|| drop(env));
    })
    .await;
}

/// The ways a tab pinned to a retired version meets it: its page's fetch, an XMLHttpRequest, an
/// EventSource, a WebSocket, and a page navigation.
const STALE_PATHS: [&str; 5] = ["fetch", "xhr", "eventsource", "websocket", "navigation"];

/// Arms a session page to take one stale path after a delay (`arguments`: the record's name, the
/// path, the delay in ms). Its `flotilla:stale` event is recorded in localStorage (shared by the
/// origin's tabs, so a foreground tab can watch background ones) under `test:stale:<name>`, with
/// the tab's visibility then and how many WebSockets the page had opened since it was armed; a
/// navigation records the same just before it navigates.
const ARM_STALE_PATH: &str = "
    const [name, path, delay] = arguments;
    let sockets = 0;
    const Socket = window.WebSocket;
    window.WebSocket = class extends Socket {
      constructor(...args) { sockets += 1; super(...args); }
    };
    const record = (extra) => localStorage.setItem('test:stale:' + name, JSON.stringify(
      Object.assign({ visibility: document.visibilityState, sockets: sockets, at: Date.now() },
                    extra)));
    window.addEventListener('flotilla:stale', (event) => record({ detail: event.detail }));
    const act = {
      fetch: () => window.sessions.refresh().catch(() => {}),
      xhr: () => { const x = new XMLHttpRequest(); x.open('GET', '/api/state'); x.send(); },
      eventsource: () => { new EventSource('/events'); },
      websocket: () => window.sessions.connect(),
      navigation: () => { record({ navigation: true }); location.assign('/?navigated=1'); },
    }[path];
    setTimeout(act, delay);
    return true;";

/// A raw `GET` through the router: the status line's code and the header lines.
async fn raw_get(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.expect("read");
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// Checks what a tab recorded when it met its stale signal, and that it now runs v2's page.
async fn check_stale_path(tab: &Tab, name: &str, path: &str, visibility: &str, v1: &str, v2: &str) {
    let landed = tab
        .wait_for(
            &format!("the {name} tab to land on v2"),
            &format!(
                // The socket's id arrives in its first message, a moment after it opens.
                "const s = window.sessions && window.sessions.state;
                 return !!s && s.pageId === '{v2}' && s.socket === 'open' && s.socketId === '{v2}';"
            ),
            WAIT,
        )
        .await;
    if let Err(e) = landed {
        panic!("{e}: {}", page(tab).await);
    }
    let now = page(tab).await;
    assert_eq!(
        (
            str_of(&now["client"]),
            str_of(&now["stored"]),
            str_of(&now["socketId"])
        ),
        (v2, v2, v2),
        "the {name} tab is on v2 everywhere: {now}"
    );
    let record = tab
        .eval_with(
            "return JSON.parse(localStorage.getItem('test:stale:' + arguments[0]));",
            vec![json!(name)],
        )
        .await
        .expect("read the record");
    assert_eq!(record["visibility"], visibility, "{name}: {record}");
    if path == "navigation" {
        assert_eq!(record["navigation"], true, "{name}: {record}");
        return;
    }
    assert_eq!(str_of(&record["detail"]["retired"]), v1, "{name}: {record}");
    // One try: the first stale answer is the signal (a WebSocket: the first socket, closed with
    // 4410 and its reason; the others: the 409 body's message, via the client's probe for an
    // EventSource).
    let (sockets, message) = match path {
        "websocket" => (1, "version_retired"),
        _ => (0, "409 Conflict: this version is no longer available"),
    };
    assert_eq!(
        (
            record["sockets"].as_u64(),
            str_of(&record["detail"]["message"])
        ),
        (Some(sockets), message),
        "{name}: {record}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stale_path_lands_a_tab_on_the_current_version_in_the_foreground_and_background() {
    if flotilla_testkit::slow::skip("Chromium") {
        return;
    }
    bounded(async {
        let mut app = sessions_app();
        app.instances = 1;
        app.app_extra = "stale_status = 409\nstale_header = \"x-test-stale: 1\"".into();
        let env = HostEnv::new("stale", &app);
        let v1 = env.deploy();
        let browser = launch().await;

        // Ten tabs on v1, one per path and mode; each closes its socket, so v1 can be retired.
        let mut tabs: Vec<(String, &str, Tab)> = Vec::new();
        for mode in ["background", "foreground"] {
            for path in STALE_PATHS {
                let tab = if tabs.is_empty() {
                    browser.first_tab()
                } else {
                    browser.new_tab().await.expect("open a tab")
                };
                tab.goto(&env.url("/")).await.expect("load the page");
                let name = format!("{mode}-{path}");
                let loaded = socket_ready(&tab, &format!("the {name} tab on v1"), 1, 0).await;
                assert_eq!(str_of(&loaded["page"]), v1, "{loaded}");
                tab.eval("window.sessions.disconnect(); return true;")
                    .await
                    .expect("disconnect");
                tabs.push((name, path, tab));
            }
        }

        let v2 = env.deploy();
        let (retired, status) = tokio::task::block_in_place(|| {
            env.status_until(Duration::from_secs(30), |s| {
                version_in(s, &v1).is_none_or(|v| state_of(&v) == "retired")
            })
        });
        assert!(
            retired,
            "v1 is retired: {status}\n{}",
            env.daemon_log_tail()
        );
        let (code, answer) = raw_get(env.listen, "/api/state", &[(HEADER, &v1)]).await;
        assert_eq!(code, 409, "{answer}");
        assert!(
            answer.to_ascii_lowercase().contains("x-test-stale: 1"),
            "the configured header: {answer}"
        );

        // Background: each tab takes its path 1.5 s after a fresh tab has come to the front; the
        // front tab watches their records, then waits for their reloads to start.
        for (name, path, tab) in tabs.iter().filter(|t| t.0.starts_with("background")) {
            tab.eval_with(ARM_STALE_PATH, vec![json!(name), json!(path), json!(1500)])
                .await
                .expect("arm a background tab");
        }
        let front = browser.new_tab().await.expect("open the front tab");
        front.goto(&env.url("/")).await.expect("load the front tab");
        let hidden = front
            .eval("return document.visibilityState;")
            .await
            .expect("front tab visibility");
        assert_eq!(hidden, "visible");
        let names: Vec<String> = STALE_PATHS
            .iter()
            .map(|p| format!("background-{p}"))
            .collect();
        let all_met = front
            .wait_for(
                "every background tab to meet its stale signal",
                "return ['fetch', 'xhr', 'eventsource', 'websocket', 'navigation'].every(
                          (p) => localStorage.getItem('test:stale:background-' + p) !== null);",
                WAIT,
            )
            .await;
        if let Err(e) = all_met {
            panic!("{e}: {names:?}");
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        let back_at = front
            .eval("return Date.now();")
            .await
            .expect("the front tab's clock")
            .as_f64()
            .expect("a number");
        for (name, path, tab) in tabs.iter().filter(|t| t.0.starts_with("background")) {
            check_stale_path(tab, name, path, "hidden", &v1, &v2).await;
            let started = tab
                .eval("return performance.timeOrigin;")
                .await
                .expect("timeOrigin")
                .as_f64()
                .expect("a number");
            assert!(
                started < back_at,
                "the {name} tab loaded v2's page while in the background ({started} < {back_at})"
            );
        }

        // Foreground: each tab takes its path while it is the one in front.
        for (name, path, tab) in tabs.iter().filter(|t| t.0.starts_with("foreground")) {
            tab.eval_with(ARM_STALE_PATH, vec![json!(name), json!(path), json!(0)])
                .await
                .expect("arm a foreground tab");
            check_stale_path(tab, name, path, "visible", &v1, &v2).await;
        }
        eprintln!(
            "every stale path (fetch, XHR, EventSource, WebSocket, navigation) landed its tab on \
             v2 within one try, in the background and in the foreground"
        );
        let shot = artifact_path("host-stale-paths.png").expect("artefact path");
        let all: Vec<&Tab> = tabs.iter().map(|t| &t.2).collect();
        browser
            .screenshot_tabs(&all[..4], &shot)
            .await
            .expect("screenshot");
        browser.close().await.expect("close the browser");
        tokio::task::block_in_place(|| drop(env));
    })
    .await;
}
