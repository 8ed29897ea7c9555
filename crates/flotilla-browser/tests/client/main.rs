//! Real-browser tests of `client/flotilla-client.js`: headless Chromium (Debian's package,
//! installed by `scripts/install-browser.sh`) loads pages from a test server that plays the
//! router, and the tests check what the browser actually sent and what the page saw.

mod server;

use std::future::Future;
use std::time::Duration;

use flotilla_browser::{Browser, Tab, artifact_path, is_alive};
use serde_json::{Value, json};
use server::{CUSTOM_HEADER, CUSTOM_TAB_HEADER, TestServer};

/// No test may run longer than this, browser start-up included.
const TEST_LIMIT: Duration = Duration::from_secs(180);

/// Longest wait for something the page does by itself (a reload, an event, a socket message).
const WAIT: Duration = Duration::from_secs(15);

/// The sessionStorage key the client keeps the id under.
const STORAGE_KEY: &str = "flotilla:deployment";

/// The sessionStorage key the client keeps the tab key under.
const TAB_STORAGE_KEY: &str = "flotilla:tab";

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

/// What the page's client currently holds: its id, where the id came from, and sessionStorage.
async fn affinity(tab: &Tab) -> Value {
    tab.eval(
        "return { id: window.flotilla.deploymentId(), source: window.flotilla.source(),
                  stored: sessionStorage.getItem('flotilla:deployment') };",
    )
    .await
    .expect("read the client's state")
}

/// Whether `key` looks like what the client makes: a version 4 UUID in lower case.
fn is_uuid_v4(key: &str) -> bool {
    let bytes = key.as_bytes();
    key.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            14 => *b == b'4',
            19 => matches!(b, b'8' | b'9' | b'a' | b'b'),
            _ => b.is_ascii_digit() || (b'a'..=b'f').contains(b),
        })
}

/// The page's tab key, checked to be the one in sessionStorage and shaped as the client makes it.
async fn tab_key(tab: &Tab) -> String {
    let state = tab
        .eval_with(
            "return { key: window.flotilla.tabKey(), stored: sessionStorage.getItem(arguments[0]) };",
            vec![json!(TAB_STORAGE_KEY)],
        )
        .await
        .expect("read the tab key");
    let key = state["key"]
        .as_str()
        .expect("the client has a tab key")
        .to_owned();
    assert_eq!(
        state["stored"],
        json!(key),
        "the key is kept in sessionStorage: {state}"
    );
    assert!(is_uuid_v4(&key), "a random UUID: {key}");
    key
}

/// Fetches `path` in the page and returns the echo server's JSON.
async fn fetch_echo(tab: &Tab, path: &str) -> Value {
    tab.eval_async_with(
        "const r = await fetch(arguments[0]); return await r.json();",
        vec![json!(path)],
    )
    .await
    .expect("fetch the echo endpoint")
}

/// Records `flotilla:stale` events in `window.__events` (and the last detail in sessionStorage,
/// which survives a reload); cancels them when `cancel` is true.
async fn listen_for_stale(tab: &Tab, cancel: bool) {
    tab.eval_with(
        "window.__events = [];
         window.__before = true;
         window.addEventListener('flotilla:stale', (event) => {
           if (arguments[0]) { event.preventDefault(); }
           window.__events.push({ detail: event.detail, cancelable: event.cancelable,
                                  prevented: event.defaultPrevented });
           sessionStorage.setItem('test:stale', JSON.stringify(event.detail));
         });
         return true;",
        vec![json!(cancel)],
    )
    .await
    .expect("install the stale listener");
}

fn assert_no_cookies(server: &TestServer) {
    for seen in server.seen() {
        assert_eq!(seen.cookie, None, "a request carried a cookie: {seen:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tabs_keep_their_own_versions_and_a_reload_reaches_the_newest() {
    if flotilla_testkit::slow::skip("Chromium") {
        return;
    }
    bounded(async {
        let server = TestServer::start("v1").await;
        let browser = launch().await;

        let a = browser.first_tab();
        a.goto(&server.url("/page")).await.expect("open tab A");
        assert_eq!(
            affinity(&a).await,
            json!({"id": "v1", "source": "script", "stored": "v1"})
        );

        // A deploy: fresh navigations now reach v2, tab A stays on v1.
        server.set_current("v2");
        let b = browser.new_tab().await.expect("open tab B");
        b.goto(&server.url("/page")).await.expect("load tab B");
        assert_eq!(
            affinity(&b).await,
            json!({"id": "v2", "source": "script", "stored": "v2"})
        );

        let key_a = tab_key(&a).await;
        let key_b = tab_key(&b).await;
        assert_ne!(key_a, key_b, "every tab makes its own key");
        let echo_a = fetch_echo(&a, "/echo").await;
        let echo_b = fetch_echo(&b, "/echo").await;
        assert_eq!(
            (&echo_a["header"], &echo_a["tab"]),
            (&json!("v1"), &json!(key_a))
        );
        assert_eq!(
            (&echo_b["header"], &echo_b["tab"]),
            (&json!("v2"), &json!(key_b))
        );
        // Going back and forth between the tabs, each keeps its own sessionStorage.
        assert_eq!(
            a.session_storage(STORAGE_KEY)
                .await
                .expect("A's storage")
                .as_deref(),
            Some("v1")
        );
        assert_eq!(
            b.session_storage(STORAGE_KEY)
                .await
                .expect("B's storage")
                .as_deref(),
            Some("v2")
        );
        assert_eq!(fetch_echo(&a, "/echo").await["header"], "v1");

        let shot = artifact_path("client-two-tabs.png").expect("artefact path");
        browser
            .screenshot_tabs(&[&a, &b], &shot)
            .await
            .expect("screenshot both tabs");
        let png = std::fs::read(&shot).expect("read the screenshot back");
        assert!(
            png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
            "{}",
            shot.display()
        );

        // A reload of tab A is a navigation: it reaches v2, and the tab follows it.
        a.reload().await.expect("reload tab A");
        assert_eq!(
            affinity(&a).await,
            json!({"id": "v2", "source": "script", "stored": "v2"})
        );
        let echo_a = fetch_echo(&a, "/echo").await;
        assert_eq!(
            (&echo_a["header"], &echo_a["tab"]),
            (&json!("v2"), &json!(key_a))
        );
        assert_eq!(tab_key(&a).await, key_a, "a reload keeps the tab's key");

        // Never a cookie: not in the page, not in the browser's jar, not on the wire.
        for tab in [&a, &b] {
            assert_eq!(
                tab.eval("return document.cookie;").await.expect("cookie"),
                json!("")
            );
            assert_eq!(
                tab.cookie_names().await.expect("cookie jar"),
                Vec::<String>::new()
            );
        }
        assert_no_cookies(&server);
        // Navigations cannot carry headers; neither the affinity nor the tab key may leak into
        // them otherwise.
        for seen in server.seen_at("/page") {
            assert_eq!(
                (
                    seen.header,
                    seen.affinity_query,
                    seen.tab_header,
                    seen.tab_query
                ),
                (None, None, None, None),
                "navigation {:?}",
                seen.query
            );
        }
        browser.close().await.expect("close the browser");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_origin_fetch_and_xhr_carry_the_header_without_changing_the_request() {
    if flotilla_testkit::slow::skip("Chromium") {
        return;
    }
    bounded(async {
        let server = TestServer::start("v1").await;
        let browser = launch().await;
        let tab = browser.first_tab();
        tab.goto(&server.url("/page")).await.expect("open the page");

        let results = tab
            .eval_async(
                r#"
                const echo = async (input, init) => (await fetch(input, init)).json();
                const xhr = (method, url, setup) => new Promise((resolve, reject) => {
                  const x = new XMLHttpRequest();
                  x.open(method, url);
                  x.responseType = "json";
                  if (setup) { setup(x); }
                  x.onload = () => resolve(x.response);
                  x.onerror = () => reject(new Error("xhr failed"));
                  x.send(method === "POST" ? "xhr-body" : null);
                });
                return {
                  string: await echo("/echo"),
                  relative: await echo("echo"),
                  absolute: await echo(location.origin + "/echo"),
                  url_object: await echo(new URL("/echo", location.href)),
                  request: await echo(new Request("/echo", { method: "POST", body: "payload" })),
                  request_headers: await echo(new Request("/echo", { headers: { "X-App": "req" } })),
                  request_and_init: await echo(new Request("/echo", { headers: { "X-App": "a" } }),
                                               { headers: { "X-App": "b" } }),
                  headers_instance: await echo("/echo", { headers: new Headers({ "X-App": "h" }) }),
                  header_pairs: await echo("/echo", { headers: [["X-App", "pairs"]] }),
                  post_init: await echo("/echo", { method: "POST", body: "init-body" }),
                  explicit: await echo("/echo", { headers: { "x-flotilla-deployment": "mine" } }),
                  explicit_request: await echo(new Request("/echo",
                                               { headers: { "X-Flotilla-Deployment": "mine2" } })),
                  explicit_tab: await echo("/echo", { headers: { "x-flotilla-tab": "app-tab" } }),
                  explicit_tab_request: await echo(new Request("/echo",
                                                   { headers: { "X-Flotilla-Tab": "app-tab2" } })),
                  explicit_tab_headers: await echo("/echo",
                                                   { headers: new Headers({ "X-Flotilla-Tab": "h" }) }),
                  xhr_get: await xhr("GET", "/echo"),
                  xhr_post: await xhr("POST", "/echo", (x) => x.setRequestHeader("X-App", "x")),
                  xhr_explicit: await xhr("GET", "/echo",
                                          (x) => x.setRequestHeader("x-flotilla-deployment", "own")),
                  xhr_explicit_tab: await xhr("GET", "/echo",
                                              (x) => x.setRequestHeader("X-FLOTILLA-TAB", "own-tab")),
                };
                "#,
            )
            .await
            .expect("run the requests");

        let check = |name: &str, field: &str, expected: Value| {
            assert_eq!(results[name][field], expected, "{name}.{field} in {:#}", results[name]);
        };
        let key = tab_key(&tab).await;
        for name in [
            "string", "relative", "absolute", "url_object", "request", "request_headers",
            "request_and_init", "headers_instance", "header_pairs", "post_init", "xhr_get",
            "xhr_post",
        ] {
            check(name, "header", json!("v1"));
            check(name, "tab", json!(key));
            check(name, "tab_query", Value::Null);
        }
        // What the app sets itself wins, and setting one does not stop the other being added.
        check("explicit", "tab", json!(key));
        check("explicit_request", "tab", json!(key));
        check("xhr_explicit", "tab", json!(key));
        for (name, own) in [
            ("explicit_tab", "app-tab"),
            ("explicit_tab_request", "app-tab2"),
            ("explicit_tab_headers", "h"),
            ("xhr_explicit_tab", "own-tab"),
        ] {
            check(name, "tab", json!(own));
            check(name, "header", json!("v1"));
        }
        check("request", "method", json!("POST"));
        check("request", "body", json!("payload"));
        check("request_headers", "app", json!("req"));
        check("request_and_init", "app", json!("b"));
        check("headers_instance", "app", json!("h"));
        check("header_pairs", "app", json!("pairs"));
        check("post_init", "body", json!("init-body"));
        check("explicit", "header", json!("mine"));
        check("explicit_request", "header", json!("mine2"));
        check("xhr_post", "method", json!("POST"));
        check("xhr_post", "body", json!("xhr-body"));
        check("xhr_post", "app", json!("x"));
        check("xhr_explicit", "header", json!("own"));

        // A page can rename the header and the query parameter on the script tag.
        tab.goto(&server.url("/page?d=v7&names=custom")).await.expect("open the custom page");
        let custom = tab
            .eval_async(
                "const echo = await (await fetch('/echo')).json();
                 const ws = new WebSocket('/ws');
                 const hello = await new Promise((resolve, reject) => {
                   ws.onmessage = (m) => resolve(JSON.parse(m.data));
                   ws.onerror = () => reject(new Error('socket failed'));
                 });
                 ws.close();
                 return { echo, hello, header: flotilla.header, query: flotilla.query,
                          tab_header: flotilla.tabHeader, tab_query: flotilla.tabQuery };",
            )
            .await
            .expect("use the custom names");
        assert_eq!(custom["header"], CUSTOM_HEADER);
        assert_eq!(custom["echo"]["custom_header"], "v7", "{custom:#}");
        assert_eq!(custom["echo"]["header"], Value::Null, "{custom:#}");
        assert_eq!(custom["echo"]["custom_tab"], json!(key), "{custom:#}");
        assert_eq!(custom["echo"]["tab"], Value::Null, "{custom:#}");
        assert_eq!(
            custom["hello"]["raw"],
            json!(format!("custom_affinity=v7&custom_tab={key}")),
            "{custom:#}"
        );
        assert_eq!(custom["tab_header"], CUSTOM_TAB_HEADER, "{custom:#}");
        assert_eq!(tab_key(&tab).await, key, "a new page of the tab keeps its key");
        assert_no_cookies(&server);
        browser.close().await.expect("close the browser");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_origin_websocket_and_eventsource_urls_get_the_query_parameter() {
    if flotilla_testkit::slow::skip("Chromium") {
        return;
    }
    bounded(async {
        let server = TestServer::start("v1").await;
        let other = TestServer::start("elsewhere").await;
        let browser = launch().await;
        let tab = browser.first_tab();
        tab.goto(&server.url("/page")).await.expect("open the page");

        let results = tab
            .eval_async_with(
                r#"
                const other = arguments[0];
                const hello = (ws) => new Promise((resolve, reject) => {
                  ws.onmessage = (m) => { resolve(JSON.parse(m.data)); ws.close(); };
                  ws.onerror = () => reject(new Error("socket to " + ws.url + " failed"));
                });
                const event = (es) => new Promise((resolve, reject) => {
                  es.onmessage = (m) => { resolve(JSON.parse(m.data)); es.close(); };
                  es.onerror = () => { es.close(); reject(new Error("stream " + es.url + " failed")); };
                });
                const host = location.host;
                class Mine extends WebSocket { hi() { return "hi"; } }
                // Listen at once: the server greets as soon as the socket opens.
                const mine = hello(new Mine("/ws"));
                return {
                  relative: await hello(new WebSocket("/ws")),
                  absolute: await hello(new WebSocket("ws://" + host + "/ws?x=1%202&y")),
                  with_protocols: await hello(new WebSocket("ws://" + host + "/ws", [])),
                  explicit: await hello(new WebSocket("/ws?flotilla_deployment=mine")),
                  explicit_tab: await hello(new WebSocket("/ws?flotilla_tab=own")),
                  explicit_both: await hello(
                    new WebSocket("/ws?flotilla_tab=own&flotilla_deployment=mine")),
                  explicit_empty_tab: await hello(new WebSocket("/ws?flotilla_tab=")),
                  cross_socket: await hello(new WebSocket(other.replace("http:", "ws:") + "/ws")),
                  stream: await event(new EventSource("/sse")),
                  stream_absolute: await event(new EventSource(location.origin + "/sse?a=b")),
                  stream_explicit_tab: await event(new EventSource("/sse?flotilla_tab=own")),
                  cross_stream: await event(new EventSource(other + "/sse")),
                  subclass: new Mine("/ws").hi(),
                  subclass_hello: await mine,
                  is_socket: new WebSocket("/ws") instanceof WebSocket,
                  constants: [WebSocket.CONNECTING, WebSocket.OPEN, WebSocket.CLOSING,
                              WebSocket.CLOSED, EventSource.CLOSED],
                  socket_name: WebSocket.name,
                  with_affinity: flotilla.withAffinity("/img.png?s=1"),
                  with_affinity_cross: flotilla.withAffinity(other + "/img.png"),
                };
                "#,
                vec![json!(other.origin())],
            )
            .await
            .expect("open the sockets and streams");

        let key = tab_key(&tab).await;
        let raw = |name: &str| results[name]["raw"].clone();
        let both = format!("flotilla_deployment=v1&flotilla_tab={key}");
        assert_eq!(raw("relative"), json!(both), "{results:#}");
        assert_eq!(raw("absolute"), json!(format!("x=1%202&y&{both}")), "{results:#}");
        assert_eq!(raw("with_protocols"), json!(both), "{results:#}");
        assert_eq!(
            raw("explicit"),
            json!(format!("flotilla_deployment=mine&flotilla_tab={key}")),
            "{results:#}"
        );
        assert_eq!(raw("explicit_tab"), "flotilla_tab=own&flotilla_deployment=v1", "{results:#}");
        assert_eq!(raw("explicit_both"), "flotilla_tab=own&flotilla_deployment=mine", "{results:#}");
        // Even an empty parameter is the app's choice (it asks the router for no stickiness).
        assert_eq!(raw("explicit_empty_tab"), "flotilla_tab=&flotilla_deployment=v1", "{results:#}");
        assert_eq!(raw("cross_socket"), Value::Null, "{results:#}");
        assert_eq!(raw("stream"), json!(both), "{results:#}");
        assert_eq!(raw("stream_absolute"), json!(format!("a=b&{both}")), "{results:#}");
        assert_eq!(
            raw("stream_explicit_tab"),
            "flotilla_tab=own&flotilla_deployment=v1",
            "{results:#}"
        );
        assert_eq!(raw("cross_stream"), Value::Null, "{results:#}");
        assert_eq!(results["subclass"], "hi");
        assert_eq!(raw("subclass_hello"), json!(both));
        assert_eq!(results["is_socket"], true);
        assert_eq!(results["constants"], json!([0, 1, 2, 3, 2]));
        assert_eq!(results["socket_name"], "WebSocket");
        let with_affinity = results["with_affinity"].as_str().expect("a URL");
        assert!(with_affinity.ends_with(&format!("/img.png?s=1&{both}")), "{with_affinity}");
        assert_eq!(results["with_affinity_cross"], json!(format!("{}/img.png", other.origin())));
        for seen in other.seen() {
            assert_eq!(
                (&seen.header, &seen.affinity_query, &seen.tab_header, &seen.tab_query),
                (&None, &None, &None, &None),
                "cross-origin {seen:?}"
            );
        }
        // Every same-origin socket and stream carried this tab's key (or the app's own).
        for seen in server.seen().iter().filter(|s| s.path == "/ws" || s.path == "/sse") {
            let tab = seen.tab_query.as_deref();
            assert!(
                tab == Some(key.as_str()) || tab == Some("own") || tab == Some(""),
                "{seen:?}"
            );
        }
        browser.close().await.expect("close the browser");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_origin_requests_are_left_untouched() {
    if flotilla_testkit::slow::skip("Chromium") {
        return;
    }
    bounded(async {
        let server = TestServer::start("v1").await;
        let other = TestServer::start("elsewhere").await;
        let browser = launch().await;
        let tab = browser.first_tab();
        tab.goto(&server.url("/page")).await.expect("open the page");

        let results = tab
            .eval_async_with(
                r#"
                const [other, sameServerOtherHost] = arguments;
                const echo = async (input, init) => (await fetch(input, init)).json();
                const xhr = (url) => new Promise((resolve, reject) => {
                  const x = new XMLHttpRequest();
                  x.open("GET", url);
                  x.onload = () => resolve(JSON.parse(x.responseText));
                  x.onerror = () => reject(new Error("xhr failed"));
                  x.send();
                });
                return {
                  fetch: await echo(other + "/echo"),
                  request: await echo(new Request(other + "/echo")),
                  xhr: await xhr(other + "/echo"),
                  other_host: await echo(sameServerOtherHost + "/echo"),
                  same: await echo("/echo"),
                };
                "#,
                vec![json!(other.origin()), json!(server.localhost_origin())],
            )
            .await
            .expect("run the cross-origin requests");
        for name in ["fetch", "request", "xhr", "other_host"] {
            assert_eq!(results[name]["header"], Value::Null, "{name}: {results:#}");
            assert_eq!(results[name]["tab"], Value::Null, "{name}: {results:#}");
        }
        assert_eq!(results["same"]["header"], "v1", "{results:#}");
        assert_eq!(
            results["same"]["tab"],
            json!(tab_key(&tab).await),
            "{results:#}"
        );
        // A custom header on a cross-origin request would have forced a CORS preflight.
        let seen = other.seen();
        assert_eq!(seen.len(), 3, "{seen:?}");
        for s in &seen {
            assert_eq!(s.method, "GET", "{s:?}");
            assert_eq!(
                (
                    s.header.as_deref(),
                    s.tab_header.as_deref(),
                    s.preflight_headers.as_deref()
                ),
                (None, None, None),
                "{s:?}"
            );
        }
        // The localhost request reached the same server as another origin: no header, no preflight.
        let echoes = server.seen_at("/echo");
        assert_eq!(
            echoes
                .iter()
                .filter(|s| s.header.is_none() && s.tab_header.is_none())
                .count(),
            1,
            "{echoes:?}"
        );
        assert!(
            server.seen().iter().all(|s| s.method != "OPTIONS"),
            "{:?}",
            server.seen()
        );
        browser.close().await.expect("close the browser");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retired_version_fires_stale_once_and_the_default_reloads_onto_the_newest() {
    if flotilla_testkit::slow::skip("Chromium") {
        return;
    }
    bounded(async {
        let server = TestServer::start("v1").await;
        let browser = launch().await;
        let tab = browser.first_tab();
        tab.goto(&server.url("/page")).await.expect("open the page");
        let key = tab_key(&tab).await;
        listen_for_stale(&tab, false).await;

        // An application's own 410 is not a retirement, even with the deployment header on it.
        let own = tab
            .eval_async(
                "const r = await fetch('/app-gone');
                 await r.text();
                 await new Promise((resolve) => setTimeout(resolve, 300));
                 return { status: r.status, stamped: r.headers.get('X-Flotilla-Deployment'),
                          events: window.__events.length };",
            )
            .await
            .expect("fetch the app's 410");
        assert_eq!(own, json!({"status": 410, "stamped": "v1", "events": 0}));

        server.set_current("v2");
        server.retire("v1");
        // Not awaited in the page: the reload may begin before a script could report back.
        tab.eval("fetch('/echo'); return true;")
            .await
            .expect("fetch from the retired version");
        tab.wait_for(
            "the page to reload",
            "return window.__before === undefined && document.readyState === 'complete';",
            WAIT,
        )
        .await
        .expect("the default action reloads");

        let detail: Value = serde_json::from_str(
            tab.session_storage("test:stale")
                .await
                .expect("storage")
                .as_deref()
                .unwrap_or("null"),
        )
        .expect("the recorded detail is JSON");
        assert_eq!(detail["retired"], "v1", "{detail:#}");
        assert_eq!(detail["current"], "v2", "{detail:#}");
        assert!(
            detail["url"].as_str().is_some_and(|u| u.ends_with("/echo")),
            "{detail:#}"
        );
        assert!(
            detail["message"].as_str().is_some_and(|m| m.contains("v1")),
            "{detail:#}"
        );
        assert_eq!(server.seen_at("/page").len(), 2, "exactly one reload");
        assert_eq!(
            affinity(&tab).await,
            json!({"id": "v2", "source": "script", "stored": "v2"})
        );
        let echo = fetch_echo(&tab, "/echo").await;
        assert_eq!((&echo["header"], &echo["tab"]), (&json!("v2"), &json!(key)));
        assert_eq!(
            tab_key(&tab).await,
            key,
            "the stale reload keeps the tab's key"
        );
        assert_no_cookies(&server);
        browser.close().await.expect("close the browser");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_that_comes_back_retired_after_the_reload_is_not_reloaded_again() {
    if flotilla_testkit::slow::skip("Chromium") {
        return;
    }
    bounded(async {
        let server = TestServer::start("v2").await;
        server.retire("v1");
        let browser = launch().await;
        let tab = browser.first_tab();
        // The page always declares v1, as a copy of the old HTML cached on the way would.
        tab.goto(&server.url("/page?d=v1"))
            .await
            .expect("open the page");
        listen_for_stale(&tab, false).await;
        tab.eval("fetch('/echo'); return true;")
            .await
            .expect("fetch from the retired version");
        tab.wait_for(
            "the page to reload",
            "return window.__before === undefined && document.readyState === 'complete';",
            WAIT,
        )
        .await
        .expect("the first signal reloads");

        listen_for_stale(&tab, false).await;
        tab.eval("fetch('/echo'); return true;")
            .await
            .expect("fetch from the retired version");
        tab.wait_for(
            "the second page's stale event",
            "return window.__events.length > 0;",
            WAIT,
        )
        .await
        .expect("the event still fires");
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert_eq!(
            tab.eval("return window.__before;")
                .await
                .expect("read the page"),
            json!(true),
            "no second reload"
        );
        assert_eq!(server.seen_at("/page").len(), 2, "one reload, not a loop");
        let guard = tab
            .session_storage("flotilla:stale-reload")
            .await
            .expect("storage");
        assert!(guard.is_some_and(|g| g.contains(r#""retired":"v1""#)));
        browser.close().await.expect("close the browser");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prevent_default_on_stale_keeps_the_page_and_the_event_fires_once() {
    if flotilla_testkit::slow::skip("Chromium") {
        return;
    }
    bounded(async {
        let server = TestServer::start("v1").await;
        let browser = launch().await;
        let tab = browser.first_tab();
        tab.goto(&server.url("/page")).await.expect("open the page");
        listen_for_stale(&tab, true).await;
        server.retire("v1");

        let statuses = tab
            .eval_async(
                "const statuses = [];
                 for (let i = 0; i < 3; i++) { statuses.push((await fetch('/echo')).status); }
                 const x = new XMLHttpRequest();
                 x.open('GET', '/echo');
                 await new Promise((resolve) => { x.onloadend = resolve; x.send(); });
                 statuses.push(x.status);
                 return statuses;",
            )
            .await
            .expect("request the retired version");
        assert_eq!(statuses, json!([410, 410, 410, 410]));
        tab.wait_for(
            "the stale event",
            "return window.__events.length > 0;",
            WAIT,
        )
        .await
        .expect("flotilla:stale fires");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let state = tab
            .eval(
                "return { events: window.__events, before: window.__before,
                          id: flotilla.deploymentId() };",
            )
            .await
            .expect("read the page");
        assert_eq!(
            state["events"].as_array().map(Vec::len),
            Some(1),
            "{state:#}"
        );
        let event = &state["events"][0];
        assert_eq!(
            (&event["cancelable"], &event["prevented"]),
            (&json!(true), &json!(true))
        );
        assert_eq!(event["detail"]["retired"], "v1");
        assert_eq!(state["before"], true, "the page must not reload");
        assert_eq!(state["id"], "v1", "a cancelled event keeps the id");
        assert_eq!(
            server.seen_at("/page").len(),
            1,
            "no reload reached the server"
        );

        // On a fresh page, an XHR with a JSON response type is recognised as well.
        tab.goto(&server.url("/page?d=v1"))
            .await
            .expect("open another page");
        listen_for_stale(&tab, true).await;
        tab.eval_async(
            "const x = new XMLHttpRequest();
             x.open('GET', '/echo');
             x.responseType = 'json';
             await new Promise((resolve) => { x.onloadend = resolve; x.send(); });
             return x.status;",
        )
        .await
        .expect("XHR the retired version");
        let events = tab
            .wait_for(
                "the stale event from XHR",
                "return window.__events.length > 0 && window.__events;",
                WAIT,
            )
            .await
            .expect("flotilla:stale fires for XHR");
        assert_eq!(events[0]["detail"]["retired"], "v1", "{events:#}");
        browser.close().await.expect("close the browser");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_refused_by_a_retired_version_is_detected_by_a_probe() {
    if flotilla_testkit::slow::skip("Chromium") {
        return;
    }
    bounded(async {
        let server = TestServer::start("v1").await;
        let browser = launch().await;
        let tab = browser.first_tab();
        tab.goto(&server.url("/page")).await.expect("open the page");
        listen_for_stale(&tab, true).await;
        let key = tab_key(&tab).await;
        let opened = tab
            .eval_async(
                "const ws = new WebSocket('/ws');
                 return await new Promise((resolve) => {
                   ws.onmessage = () => { ws.close(); resolve(true); };
                   ws.onerror = () => resolve(false);
                 });",
            )
            .await
            .expect("open a socket");
        assert_eq!(opened, true);

        server.retire("v1");
        let failed = tab
            .eval_async(
                "const ws = new WebSocket('/ws');
                 return await new Promise((resolve) => {
                   ws.onopen = () => resolve('opened');
                   ws.onclose = (e) => resolve(e.code);
                 });",
            )
            .await
            .expect("try a socket to the retired version");
        assert_eq!(failed, 1006, "a refused upgrade closes abnormally");
        let events = tab
            .wait_for(
                "the stale event",
                "return window.__events.length > 0 && window.__events;",
                WAIT,
            )
            .await
            .expect("the probe finds the version retired");
        assert_eq!(events[0]["detail"]["retired"], "v1", "{events:#}");
        let probes: Vec<_> = server
            .seen_at("/page")
            .into_iter()
            .filter(|s| s.header.is_some())
            .collect();
        // Normally exactly one; a second only if the first socket's close had looked abnormal.
        assert!(
            (1..=2).contains(&probes.len()),
            "a probe of the page, with the affinity: {probes:?}"
        );
        assert!(
            probes.iter().all(|p| p.method == "GET"
                && p.header.as_deref() == Some("v1")
                && p.tab_header.as_deref() == Some(key.as_str())),
            "{probes:?}"
        );

        // The same for an EventSource whose version is gone, on a fresh page still naming v1.
        tab.goto(&server.url("/page?d=v1"))
            .await
            .expect("open another page");
        listen_for_stale(&tab, true).await;
        tab.eval(
            "window.__es = new EventSource('/sse');
             return true;",
        )
        .await
        .expect("open an event stream");
        let events = tab
            .wait_for(
                "the stale event",
                "return window.__events.length > 0 && window.__events;",
                WAIT,
            )
            .await
            .expect("the probe finds the version retired");
        assert_eq!(events[0]["detail"]["retired"], "v1", "{events:#}");
        assert_eq!(
            tab.eval("return window.__es.readyState;")
                .await
                .expect("state"),
            json!(2)
        );
        browser.close().await.expect("close the browser");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_that_declares_nothing_learns_its_version_from_the_first_response() {
    if flotilla_testkit::slow::skip("Chromium") {
        return;
    }
    bounded(async {
        let server = TestServer::start("v1").await;
        let browser = launch().await;
        let tab = browser.first_tab();
        tab.goto(&server.url("/page?d=v5")).await.expect("open a declaring page");
        assert_eq!(affinity(&tab).await["stored"], "v5");

        // The next page of the tab declares nothing: v5 belonged to the previous page.
        tab.goto(&server.url("/page?via=none")).await.expect("open a silent page");
        assert_eq!(affinity(&tab).await, json!({"id": null, "source": null, "stored": null}));
        let first = fetch_echo(&tab, "/echo").await;
        assert_eq!(first["header"], Value::Null, "no id to send yet");
        assert_eq!(first["tab"], json!(tab_key(&tab).await), "the tab key goes out regardless");
        assert_eq!(affinity(&tab).await, json!({"id": "v1", "source": "response", "stored": "v1"}));
        assert_eq!(fetch_echo(&tab, "/echo").await["header"], "v1");
        // A later response naming another version does not move the tab.
        let other = fetch_echo(&tab, "/echo?stamp=v9").await;
        assert_eq!(other["header"], "v1");
        assert_eq!(affinity(&tab).await["id"], "v1");

        let check = |path: &'static str, expected: Value| {
            let tab = tab.clone();
            let url = server.url(path);
            async move {
                tab.goto(&url).await.expect("open the page");
                assert_eq!(affinity(&tab).await, expected, "{path}");
            }
        };
        check("/page?via=meta&d=v6", json!({"id": "v6", "source": "meta", "stored": "v6"})).await;
        check(
            "/page?via=timing&d=v8",
            json!({"id": "v8", "source": "server-timing", "stored": "v8"}),
        )
        .await;
        check(
            "/page?via=url&flotilla_deployment=v3",
            json!({"id": "v3", "source": "url", "stored": "v3"}),
        )
        .await;
        // Included twice: installed once, and the second tag's declaration is adopted.
        check("/page?twice=1&d=v4", json!({"id": "v4", "source": "script", "stored": "v4"})).await;
        let once = tab
            .eval(
                "const native = (f) => Function.prototype.toString.call(f).includes('[native code]');
                 return [native(Object.getPrototypeOf(window.WebSocket)),
                         native(Object.getPrototypeOf(window.EventSource))];",
            )
            .await
            .expect("inspect the wrappers");
        assert_eq!(once, json!([true, true]), "each constructor is wrapped exactly once");
        assert_eq!(fetch_echo(&tab, "/echo").await["header"], "v4");
        browser.close().await.expect("close the browser");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_tab_makes_one_key_and_keeps_it_for_its_life_in_session_storage() {
    if flotilla_testkit::slow::skip("Chromium") {
        return;
    }
    bounded(async {
        let server = TestServer::start("v1").await;
        let browser = launch().await;
        let a = browser.first_tab();
        a.goto(&server.url("/page")).await.expect("open tab A");
        let key = tab_key(&a).await;

        // Every request of the page, of every kind, carries the same key.
        let carried = a
            .eval_async(
                r#"
                const ws = new WebSocket("/ws");
                const hello = await new Promise((resolve, reject) => {
                  ws.onmessage = (m) => { resolve(JSON.parse(m.data)); ws.close(); };
                  ws.onerror = () => reject(new Error("socket failed"));
                });
                const es = new EventSource("/sse");
                const event = await new Promise((resolve, reject) => {
                  es.onmessage = (m) => { resolve(JSON.parse(m.data)); es.close(); };
                  es.onerror = () => { es.close(); reject(new Error("stream failed")); };
                });
                const tabs = [];
                for (let i = 0; i < 5; i++) {
                  tabs.push((await (await fetch("/echo?i=" + i)).json()).tab);
                }
                const x = new XMLHttpRequest();
                x.open("GET", "/echo");
                x.responseType = "json";
                await new Promise((resolve) => { x.onloadend = resolve; x.send(); });
                tabs.push(x.response.tab);
                return { tabs, socket: hello.tab, stream: event.tab, again: flotilla.tabKey() };
                "#,
            )
            .await
            .expect("make requests of every kind");
        assert_eq!(
            carried,
            json!({"tabs": [&key, &key, &key, &key, &key, &key], "socket": &key,
                   "stream": &key, "again": &key}),
            "one key for every request of the page"
        );

        // Later pages of the tab keep it, whichever version they are on or whether they declare
        // one; a page that does not know its version yet still sends the key.
        for path in ["/page?d=v5", "/page?via=meta&d=v6", "/page?via=none"] {
            a.goto(&server.url(path)).await.expect("open another page");
            assert_eq!(tab_key(&a).await, key, "{path}");
        }
        let silent = a
            .eval_async(
                "const ws = new WebSocket('/ws');
                 return await new Promise((resolve, reject) => {
                   ws.onmessage = (m) => { resolve(JSON.parse(m.data)); ws.close(); };
                   ws.onerror = () => reject(new Error('socket failed'));
                 });",
            )
            .await
            .expect("a socket from a page that does not know its version");
        assert_eq!(
            silent["raw"],
            json!(format!("flotilla_tab={key}")),
            "{silent}"
        );
        a.reload().await.expect("reload tab A");
        assert_eq!(tab_key(&a).await, key, "a reload keeps the key");

        // Another tab has its own key, and each tab goes on sending its own.
        let b = browser.new_tab().await.expect("open tab B");
        b.goto(&server.url("/page")).await.expect("load tab B");
        let key_b = tab_key(&b).await;
        assert_ne!(key_b, key);
        assert_eq!(fetch_echo(&b, "/echo").await["tab"], json!(key_b));
        assert_eq!(fetch_echo(&a, "/echo").await["tab"], json!(key));

        // A stored value that cannot be a key is replaced (and the replacement kept).
        b.goto(&server.url("/page?pre=badkey"))
            .await
            .expect("a page storing a bad key");
        let replaced = tab_key(&b).await;
        assert_ne!(replaced, key_b);
        assert_eq!(fetch_echo(&b, "/echo").await["tab"], json!(replaced));

        // Without crypto.randomUUID (an insecure context), crypto.getRandomValues makes the key.
        let c = browser.new_tab().await.expect("open tab C");
        c.goto(&server.url("/page?pre=nouuid"))
            .await
            .expect("a page without randomUUID");
        assert_eq!(
            c.eval("return typeof crypto.randomUUID;")
                .await
                .expect("inspect crypto"),
            json!("undefined")
        );
        let key_c = tab_key(&c).await;
        assert!(![&key, &key_b, &replaced].contains(&&key_c), "{key_c}");
        assert_eq!(fetch_echo(&c, "/echo").await["tab"], json!(key_c));

        // Without sessionStorage the key lives as long as the page, and is still sent.
        let d = browser.new_tab().await.expect("open tab D");
        d.goto(&server.url("/page?pre=nostorage"))
            .await
            .expect("a page without storage");
        let unstored = d
            .eval_async(
                "let threw = false;
                 try { sessionStorage.getItem('x'); } catch (e) { threw = true; }
                 const key = flotilla.tabKey();
                 const echo = await (await fetch('/echo')).json();
                 return { threw, key, tab: echo.tab, header: echo.header,
                          again: flotilla.tabKey() };",
            )
            .await
            .expect("requests without storage");
        let unstored_key = unstored["key"].as_str().unwrap_or("");
        assert!(is_uuid_v4(unstored_key), "{unstored}");
        assert_eq!(
            (
                &unstored["threw"],
                &unstored["tab"],
                &unstored["again"],
                &unstored["header"]
            ),
            (
                &json!(true),
                &json!(unstored_key),
                &json!(unstored_key),
                &json!("v1")
            ),
            "{unstored}"
        );

        // Never a cookie: not in the page, not in the browser's jar, not on the wire.
        for tab in [&a, &b, &c, &d] {
            assert_eq!(
                tab.eval("return document.cookie;").await.expect("cookie"),
                json!("")
            );
            assert_eq!(
                tab.cookie_names().await.expect("cookie jar"),
                Vec::<String>::new()
            );
        }
        assert_no_cookies(&server);
        browser.close().await.expect("close the browser");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_browser_kills_chromedriver_and_chromium() {
    if flotilla_testkit::slow::skip("Chromium") {
        return;
    }
    bounded(async {
        let server = TestServer::start("v1").await;
        let browser = launch().await;
        let tab = browser.new_tab().await.expect("open a tab");
        tab.goto(&server.url("/page")).await.expect("open the page");
        let pids = browser.process_ids();
        assert!(
            pids.len() >= 3,
            "chromedriver, Chromium and its helpers: {pids:?}"
        );
        assert!(pids.iter().all(|p| is_alive(*p)));
        // No close(): the guard alone must clean up, as when a test panics.
        drop(browser);
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let alive: Vec<u32> = pids.iter().copied().filter(|p| is_alive(*p)).collect();
            if alive.is_empty() {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "still running: {alive:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            tab.eval("return 1;").await.is_err(),
            "the tab is gone with its browser"
        );
    })
    .await;
}
