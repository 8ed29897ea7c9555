//! The connection limit and graceful shutdown.

use std::time::Duration;

use flotilla_proxy::ProxyConfig;
use flotilla_proxy::http::StatusCode;
use futures_util::StreamExt;
use http_body_util::BodyExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use crate::util::{Proxy, collect, connect, eventually, get, raw, start_upstream, within};

const CLOSE_REQUEST: &str = "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";

#[tokio::test]
async fn over_the_connection_limit_clients_get_503_until_a_slot_frees() {
    let (upstream, _up) = start_upstream().await;
    let config = ProxyConfig {
        max_connections: 1,
        ..Default::default()
    };
    let proxy = Proxy::start(upstream, config).await;
    let mut holder = connect(proxy.addr).await;
    let response = within("a response", holder.send_request(get("/")))
        .await
        .expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    collect(response.into_body()).await;

    // The one slot is held by an idle keep-alive connection.
    let refused = raw(proxy.addr, CLOSE_REQUEST).await;
    assert_eq!(refused.status, 503);
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert!(refused.text().contains("overloaded"), "{}", refused.text());
    assert_eq!(
        proxy.stats.snapshot().requests_total,
        1,
        "refusals never reach the upstream"
    );

    drop(holder);
    within("the slot to free", async {
        loop {
            if raw(proxy.addr, CLOSE_REQUEST).await.status == 200 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn shutdown_closes_idle_connections_at_once_and_stops_accepting() {
    let (upstream, _up) = start_upstream().await;
    let mut proxy = Proxy::start(upstream, ProxyConfig::default()).await;
    let mut idle = connect(proxy.addr).await;
    let response = within("a response", idle.send_request(get("/")))
        .await
        .expect("response");
    collect(response.into_body()).await;

    let report = proxy.shutdown().await;
    assert_eq!(report.connections_at_shutdown, 1);
    assert!(report.is_clean(), "{report:?}");
    assert!(report.elapsed < Duration::from_secs(5), "{report:?}");
    assert!(
        idle.send_request(get("/")).await.is_err(),
        "the idle connection was closed"
    );
    assert!(
        TcpStream::connect(proxy.addr).await.is_err(),
        "the listener is closed"
    );
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish_within_the_deadline() {
    let (upstream, _up) = start_upstream().await;
    let config = ProxyConfig {
        shutdown_deadline: Duration::from_secs(5),
        ..Default::default()
    };
    let mut proxy = Proxy::start(upstream, config).await;
    let mut client = connect(proxy.addr).await;
    let pending = tokio::spawn(async move {
        let response = client
            .send_request(get("/slow?ms=300"))
            .await
            .expect("response");
        let status = response.status();
        (status, collect(response.into_body()).await)
    });
    let stats = proxy.stats.clone();
    eventually("the request to be in flight", || stats.in_flight() == 1).await;
    let report = proxy.shutdown().await;
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.connections_at_shutdown, 1);
    let (status, body) = within("the slow response", pending)
        .await
        .expect("client task");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "slow done");
}

#[tokio::test]
async fn shutdown_deadline_cuts_open_websockets_and_reports_them() {
    let (upstream, _up) = start_upstream().await;
    let config = ProxyConfig {
        shutdown_deadline: Duration::from_millis(200),
        ..Default::default()
    };
    let mut proxy = Proxy::start(upstream, config).await;
    let url = format!("ws://{}/ws", proxy.addr);
    let (mut ws, _) = within("handshake", tokio_tungstenite::connect_async(url))
        .await
        .expect("handshake");
    assert_eq!(proxy.stats.sessions(), 1);

    let report = proxy.shutdown().await;
    assert_eq!(report.upgrades_at_shutdown, 1, "{report:?}");
    assert_eq!(report.cut_upgrades, 1, "{report:?}");
    assert_eq!(report.cut_connections, 0, "{report:?}");
    assert_eq!(report.cut(), 1);
    assert!(report.elapsed >= Duration::from_millis(200), "{report:?}");
    let end = within("the cut to reach the client", ws.next()).await;
    assert!(!matches!(end, Some(Ok(Message::Text(_)))), "{end:?}");
    assert_eq!(proxy.stats.sessions(), 0);
}

#[tokio::test]
async fn shutdown_deadline_cuts_streaming_responses_and_reports_them() {
    let (upstream, _up) = start_upstream().await;
    let config = ProxyConfig {
        shutdown_deadline: Duration::from_millis(200),
        ..Default::default()
    };
    let mut proxy = Proxy::start(upstream, config).await;
    let mut client = connect(proxy.addr).await;
    let response = within("the stream head", client.send_request(get("/sse")))
        .await
        .expect("response");
    let mut body = response.into_body();
    within("the first event", body.frame())
        .await
        .expect("a frame")
        .expect("no error");
    assert_eq!(proxy.stats.sessions(), 1);

    let report = proxy.shutdown().await;
    assert_eq!(report.cut_connections, 1, "{report:?}");
    assert_eq!(report.cut_upgrades, 0, "{report:?}");
    // The client sees its stream end early.
    within("the stream to end", async {
        while let Some(Ok(_)) = body.frame().await {}
    })
    .await;
    assert!(proxy.stats.is_idle(), "{:?}", proxy.stats.snapshot());
}
