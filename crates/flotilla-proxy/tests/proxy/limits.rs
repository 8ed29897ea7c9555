//! The connection limit and graceful shutdown.

use std::time::Duration;

use flotilla_proxy::http::StatusCode;
use flotilla_proxy::{ConnectionLimit, ProxyConfig};
use futures_util::StreamExt;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use crate::util::{Proxy, collect, connect, eventually, get, raw, start_upstream, within};

const CLOSE_REQUEST: &str = "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";

#[tokio::test]
async fn over_the_connection_limit_clients_get_503_until_a_slot_frees() {
    let (upstream, _up) = start_upstream().await;
    let config = ProxyConfig {
        connection_limit: ConnectionLimit::new(1),
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

#[tokio::test]
async fn one_limit_caps_every_server_sharing_it_and_the_503_fires_promptly() {
    const CAP: usize = 4;
    const EXTRA: usize = 6;
    let (upstream, _up) = start_upstream().await;
    // Two servers (as two router workers) with clones of one config share one limit.
    let config = ProxyConfig {
        connection_limit: ConnectionLimit::new(CAP),
        ..Default::default()
    };
    let proxies = [
        Proxy::start(upstream, config.clone()).await,
        Proxy::start(upstream, config.clone()).await,
    ];
    let mut holders = Vec::new();
    for n in 0..CAP {
        let mut holder = connect(proxies[n % 2].addr).await;
        let response = within("a response", holder.send_request(get("/")))
            .await
            .expect("response");
        assert_eq!(response.status(), StatusCode::OK);
        collect(response.into_body()).await;
        holders.push(holder);
    }
    assert_eq!(config.connection_limit.open(), CAP);

    for n in 0..EXTRA {
        let started = std::time::Instant::now();
        let refused = raw(proxies[n % 2].addr, CLOSE_REQUEST).await;
        assert_eq!(refused.status, 503, "extra connection {n}");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "the 503 took {:?}",
            started.elapsed()
        );
    }
    let served: u64 = proxies
        .iter()
        .map(|p| p.stats.snapshot().requests_total)
        .sum();
    assert_eq!(served, CAP as u64, "refusals never reach the upstream");

    drop(holders);
    for proxy in &proxies {
        within("a slot to free", async {
            loop {
                if raw(proxy.addr, CLOSE_REQUEST).await.status == 200 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
    }
    eventually("every slot to free", || config.connection_limit.open() == 0).await;
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_after_the_first_byte_timeout() {
    let (upstream, _up) = start_upstream().await;
    let config = ProxyConfig {
        connection_limit: ConnectionLimit::new(1),
        first_byte_timeout: Duration::from_millis(200),
        ..Default::default()
    };
    let proxy = Proxy::start(upstream, config.clone()).await;
    let started = std::time::Instant::now();
    let mut silent = within("connect", TcpStream::connect(proxy.addr))
        .await
        .expect("connect");
    eventually("the silent connection to hold the slot", || {
        config.connection_limit.open() == 1
    })
    .await;
    // While it holds the only slot, others are refused.
    assert_eq!(raw(proxy.addr, CLOSE_REQUEST).await.status, 503);
    let mut buf = [0u8; 64];
    let read = within(
        "the proxy to close the silent connection",
        silent.read(&mut buf),
    )
    .await;
    let elapsed = started.elapsed();
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "the silent connection got {read:?} instead of being closed"
    );
    assert!(
        elapsed >= Duration::from_millis(180) && elapsed < Duration::from_secs(2),
        "closed after {elapsed:?}"
    );
    eventually("the slot to free", || config.connection_limit.open() == 0).await;
    assert_eq!(raw(proxy.addr, CLOSE_REQUEST).await.status, 200);

    // A client that sends its first byte in time is served, however slowly it sends the rest.
    let mut slow = TcpStream::connect(proxy.addr).await.expect("connect");
    tokio::time::sleep(Duration::from_millis(100)).await;
    slow.write_all(b"GET / HTTP/1.1\r\n").await.expect("write");
    tokio::time::sleep(Duration::from_millis(300)).await;
    slow.write_all(b"Host: a\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut bytes = Vec::new();
    within("the slow client's response", slow.read_to_end(&mut bytes))
        .await
        .expect("read");
    assert!(
        bytes.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&bytes)
    );
}

/// A daemon handing over to a successor stops accepting at once, but for the plan's linger its
/// keep-alive connections are still answered, each response asking the client to reconnect
/// (`Connection: close`), so a client that keeps sending never finds its idle connection closed
/// under a request; a WebSocket goes on past the linger until it ends, and nothing is cut.
#[tokio::test]
async fn a_handover_lingers_asking_keep_alive_clients_to_reconnect_and_keeps_websockets() {
    let (upstream, _up) = start_upstream().await;
    let plan = flotilla_proxy::DrainPlan {
        linger: Duration::from_millis(800),
        deadline: Duration::from_secs(5),
    };
    let mut proxy = Proxy::start_handing_over(upstream, ProxyConfig::default(), plan).await;
    let mut client = connect(proxy.addr).await;
    let response = within("a response", client.send_request(get("/")))
        .await
        .expect("response");
    assert_eq!(response.headers().get("connection"), None);
    collect(response.into_body()).await;
    let url = format!("ws://{}/ws", proxy.addr);
    let (mut ws, _) = within("handshake", tokio_tungstenite::connect_async(url))
        .await
        .expect("handshake");

    proxy.begin_shutdown();
    within("the listener to close", async {
        while TcpStream::connect(proxy.addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let response = within(
        "a response during the linger",
        client.send_request(get("/")),
    )
    .await
    .expect("the kept-alive connection is still answered");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers().get("connection").map(|v| v.as_bytes()),
        Some(&b"close"[..]),
        "the client is asked to reconnect"
    );
    collect(response.into_body()).await;

    // Past the linger the WebSocket still works, until the client closes it.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    within("an echo after the linger", async {
        futures_util::SinkExt::send(&mut ws, Message::text("still here"))
            .await
            .expect("send");
        match ws.next().await {
            Some(Ok(Message::Text(text))) => assert!(text.contains("still here"), "{text}"),
            other => panic!("no echo: {other:?}"),
        }
    })
    .await;
    let _ = ws.close(None).await;
    let report = proxy.shutdown().await;
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.upgrades_at_shutdown, 1, "{report:?}");
}
