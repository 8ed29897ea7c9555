//! Serving: health, the deployment stamp, draining refusals, session counting and readiness.

use std::sync::Arc;

use flotilla_agent::StaticSource;

use crate::util::{self, Agent, ID, get, health_until, websocket};

#[tokio::test]
async fn health_reports_drain_state_and_follows_the_apps_health() {
    let settings = util::settings(&[]);
    let app_port = settings.app_port;
    let agent = Agent::with_files(settings).await;

    let doc = health_until(agent.addr, "healthy, no state yet", |status, _| {
        status == 200
    })
    .await;
    assert_eq!(doc["deployment_id"], ID);
    assert_eq!(doc["state"], "unknown");
    assert_eq!(doc["draining"], false);
    assert_eq!(doc["sessions"], 0);

    agent.set_state("active");
    health_until(agent.addr, "state active", |_, doc| {
        doc["state"] == "active"
    })
    .await;

    // The app reports sessions of its own in its health JSON: they count.
    util::control(app_port, "/_test/sessions?n=3").await;
    health_until(agent.addr, "app-reported sessions", |_, doc| {
        doc["sessions"] == 3
    })
    .await;
    util::control(app_port, "/_test/sessions?n=0").await;

    // The app's health fails: so does the agent's, with the drain state still in the body.
    util::control(app_port, "/_test/health?ok=0").await;
    let reply = get(agent.addr, "/healthz", &[]).await.expect("health");
    assert_eq!(reply.status, 503, "{}", reply.body);
    let doc = reply.json();
    assert_eq!(doc["error"], "app_unhealthy");
    assert_eq!(doc["deployment_id"], ID);
    util::control(app_port, "/_test/health?ok=1").await;
    health_until(agent.addr, "healthy again", |status, _| status == 200).await;
}

#[tokio::test]
async fn responses_are_stamped_and_the_client_script_is_served() {
    let agent = Agent::start(util::settings(&[]), Arc::new(StaticSource::active())).await;
    let reply = get(agent.addr, "/hello", &[]).await.expect("proxied");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-flotilla-deployment"), Some(ID));
    assert_eq!(reply.json()["path"], "/hello");
    let script = get(agent.addr, "/_flotilla/client.js", &[])
        .await
        .expect("client");
    assert_eq!(script.status, 200);
    assert!(
        script.body.contains("flotilla"),
        "{}",
        &script.body[..80.min(script.body.len())]
    );
}

#[tokio::test]
async fn draining_refuses_new_sessions_but_serves_its_own_tabs() {
    let agent = Agent::with_files(util::settings(&[])).await;
    // A tab that started before the drain keeps its WebSocket.
    let mut early = websocket(agent.addr, &format!("/ws?flotilla_deployment={ID}"))
        .await
        .expect("ws");
    agent.set_state("draining");
    let doc = health_until(agent.addr, "draining", |_, doc| doc["draining"] == true).await;
    assert_eq!(doc["state"], "draining");

    // A fresh request: 503, Retry-After, JSON, and no deployment header to pin a tab to us.
    let fresh = get(agent.addr, "/page", &[]).await.expect("fresh");
    assert_eq!(fresh.status, 503, "{}", fresh.body);
    assert_eq!(fresh.header("retry-after"), Some("1"));
    assert_eq!(fresh.header("x-flotilla-deployment"), None);
    assert_eq!(fresh.json()["error"], "draining");
    // Another version's affinity is not ours either.
    let other = get(
        agent.addr,
        "/page",
        &[("X-Flotilla-Deployment", "20261125-200000-zzzz")],
    )
    .await
    .expect("other");
    assert_eq!(other.status, 503);

    // Requests carrying this version's affinity are served: header (fetch) or query (WebSocket).
    let pinned = get(agent.addr, "/page", &[("X-Flotilla-Deployment", ID)])
        .await
        .expect("pinned");
    assert_eq!(pinned.status, 200, "{}", pinned.body);
    assert_eq!(pinned.json()["affinity"], ID);
    let by_query = get(agent.addr, &format!("/page?flotilla_deployment={ID}"), &[])
        .await
        .expect("q");
    assert_eq!(by_query.status, 200);
    util::echo(&mut early, "still here").await;
    let mut reconnect = websocket(agent.addr, &format!("/ws?flotilla_deployment={ID}"))
        .await
        .expect("a reconnect with affinity is served");
    util::echo(&mut reconnect, "again").await;
    let refused = websocket(agent.addr, "/ws").await;
    assert!(
        refused.is_err(),
        "a new WebSocket without affinity must be refused"
    );

    // The health path always answers, 200 while the app is healthy.
    let health = get(agent.addr, "/healthz", &[]).await.expect("health");
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["sessions"], 2);
}

#[tokio::test]
async fn websockets_and_event_streams_count_as_sessions() {
    let agent = Agent::start(util::settings(&[]), Arc::new(StaticSource::active())).await;
    let mut ws = websocket(agent.addr, "/ws").await.expect("ws");
    util::echo(&mut ws, "hi").await;
    let doc = health_until(agent.addr, "one session", |_, d| d["sessions"] == 1).await;
    assert_eq!(doc["counts"]["websockets"], 1);

    // An event stream counts for as long as it streams.
    let mut sse = tokio::net::TcpStream::connect(agent.addr)
        .await
        .expect("connect");
    tokio::io::AsyncWriteExt::write_all(
        &mut sse,
        format!("GET /sse HTTP/1.1\r\nHost: {}\r\n\r\n", agent.addr).as_bytes(),
    )
    .await
    .expect("send");
    let doc = health_until(agent.addr, "two sessions", |_, d| d["sessions"] == 2).await;
    assert_eq!(doc["counts"]["event_streams"], 1);
    drop(sse);
    ws.close(None).await.expect("close");
    health_until(agent.addr, "sessions back to zero", |_, d| {
        d["sessions"] == 0
    })
    .await;
}

#[tokio::test]
async fn readiness_is_written_after_grace_with_no_sessions_and_taken_back_when_one_returns() {
    let agent = Agent::with_files(util::settings(&[])).await;
    agent.set_state("active");
    let mut ws = websocket(agent.addr, &format!("/ws?flotilla_deployment={ID}"))
        .await
        .expect("ws");
    agent.set_state("draining");
    health_until(agent.addr, "draining", |_, doc| doc["draining"] == true).await;
    // Well past the 300 ms grace, the open session keeps it from being ready.
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    assert_eq!(
        agent.readiness(),
        None,
        "nothing written while a session is open"
    );
    assert_eq!(
        get(agent.addr, "/healthz", &[]).await.expect("h").json()["ready_to_stop"],
        false
    );

    ws.close(None).await.expect("close");
    util::eventually("readiness draining", || async {
        (agent.readiness().as_deref() == Some("draining")).then_some(())
    })
    .await;
    health_until(agent.addr, "ready_to_stop", |_, d| {
        d["ready_to_stop"] == true
    })
    .await;

    // A tab reconnects: not ready any more.
    let _back = websocket(agent.addr, &format!("/ws?flotilla_deployment={ID}"))
        .await
        .expect("reconnect");
    util::eventually("readiness healthy again", || async {
        (agent.readiness().as_deref() == Some("healthy")).then_some(())
    })
    .await;
}

/// The measured bug: a tab open long past the grace period lost its socket for a moment, and the
/// instance reported ready at once (the grace was counted from the drain's start), so its version
/// was retired under the reconnecting tab.
#[tokio::test]
async fn a_tab_that_reconnects_within_grace_long_into_a_drain_keeps_its_instance() {
    use std::time::{Duration, Instant};
    let grace = Duration::from_millis(1500);
    let mut settings = util::settings(&[]);
    settings.drain_grace = grace;
    let agent = Agent::with_files(settings).await;
    agent.set_state("active");
    let path = format!("/ws?flotilla_deployment={ID}");
    let mut ws = websocket(agent.addr, &path).await.expect("ws");
    agent.set_state("draining");
    health_until(agent.addr, "draining", |_, doc| doc["draining"] == true).await;
    // Well into the drain, past twice the grace period, with the tab still open.
    tokio::time::sleep(grace * 2).await;
    assert_eq!(
        agent.readiness(),
        None,
        "nothing written while the tab is open"
    );

    // The socket drops; for the grace period after that the instance is kept (polls every
    // 100 ms, so a premature report would show within this window).
    ws.close(None).await.expect("close");
    drop(ws);
    let dropped = Instant::now();
    health_until(agent.addr, "no session", |_, d| d["sessions"] == 0).await;
    while dropped.elapsed() < grace * 2 / 3 {
        assert_eq!(
            agent.readiness(),
            None,
            "ready {:?} after the last session ended, grace {grace:?}",
            dropped.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The tab reconnects within the grace period: same instance, and the window starts over.
    let mut back = websocket(agent.addr, &path).await.expect("reconnect");
    util::echo(&mut back, "still here").await;
    tokio::time::sleep(grace).await;
    assert_eq!(
        agent.readiness(),
        None,
        "nothing written while the tab is back"
    );
    back.close(None).await.expect("close");
    drop(back);
    let left = Instant::now();
    util::eventually("readiness draining", || async {
        (agent.readiness().as_deref() == Some("draining")).then_some(())
    })
    .await;
    assert!(
        left.elapsed() >= grace,
        "ready {:?} after the last session ended, before the grace period {grace:?}",
        left.elapsed()
    );
}

#[tokio::test]
async fn inject_client_puts_the_script_into_html_pages() {
    let mut settings = util::settings(&[]);
    settings.inject_client = true;
    let agent = Agent::start(settings, Arc::new(StaticSource::active())).await;
    let page = get(agent.addr, "/page.html", &[("Accept", "text/html")])
        .await
        .expect("page");
    assert_eq!(page.status, 200);
    assert_eq!(page.header("x-flotilla-deployment"), Some(ID));
    let head = page.body.split("</head>").next().unwrap_or_default();
    assert!(
        head.contains("/_flotilla/client.js") && head.contains(ID),
        "the script tag naming this version belongs in <head>: {}",
        page.body
    );
    assert!(
        page.body.ends_with("<body>hi</body></html>"),
        "{}",
        page.body
    );
}
