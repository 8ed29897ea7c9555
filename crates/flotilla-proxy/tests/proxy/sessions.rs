//! Session accounting: WebSockets and event streams count while open and return to zero however
//! they end.

use flotilla_proxy::ProxyConfig;
use futures_util::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use tokio_tungstenite::tungstenite::Message;

use crate::util::{Proxy, connect, eventually, get, start_upstream, within};

async fn open_ws(
    proxy: &Proxy,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let url = format!("ws://{}/ws?flotilla_deployment=web-1", proxy.addr);
    let (ws, response) = within(
        "the WebSocket handshake",
        tokio_tungstenite::connect_async(url),
    )
    .await
    .expect("handshake through the proxy");
    assert_eq!(response.status().as_u16(), 101);
    assert_eq!(
        response
            .headers()
            .get("x-flotilla-deployment")
            .map(|v| v.as_bytes()),
        Some(&b"web-1"[..])
    );
    ws
}

async fn echo(
    ws: &mut (
             impl SinkExt<Message>
             + StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>
             + Unpin
         ),
    text: &str,
) {
    if ws.send(Message::text(text)).await.is_err() {
        panic!("send failed");
    }
    let reply = within("the echo", ws.next())
        .await
        .expect("a message")
        .expect("no error");
    assert_eq!(reply, Message::text(text));
}

#[tokio::test]
async fn websocket_echo_counts_one_session_then_zero_after_close() {
    let (upstream, _up) = start_upstream().await;
    let proxy = Proxy::start(upstream, ProxyConfig::default()).await;
    let mut ws = open_ws(&proxy).await;
    let snap = proxy.stats.snapshot();
    assert_eq!(
        (snap.sessions, snap.websockets, snap.event_streams),
        (1, 1, 0)
    );
    assert_eq!(
        snap.in_flight, 0,
        "an upgraded connection is a session, not a request"
    );
    echo(&mut ws, "hello").await;
    echo(&mut ws, "again").await;
    // Close the way a browser does: send a close frame, read until the server's reply and
    // its end of the connection, but keep our socket open; the proxy must end the session
    // itself once the upstream has closed.
    within("close", ws.close(None))
        .await
        .expect("close handshake");
    within("the close reply", async {
        while let Some(Ok(message)) = ws.next().await {
            assert!(matches!(message, Message::Close(_)), "{message:?}");
        }
    })
    .await;
    eventually("sessions back to 0 after close", || {
        proxy.stats.sessions() == 0
    })
    .await;
    let snap = proxy.stats.snapshot();
    assert_eq!(snap.websockets, 0);
    assert_eq!(snap.sessions_total, 1);
}

#[tokio::test]
async fn websocket_client_vanishing_without_close_ends_the_session() {
    let (upstream, _up) = start_upstream().await;
    let proxy = Proxy::start(upstream, ProxyConfig::default()).await;
    let mut ws = open_ws(&proxy).await;
    echo(&mut ws, "hello").await;
    assert_eq!(proxy.stats.sessions(), 1);
    // Dropping the stream closes the TCP connection without a WebSocket close frame.
    drop(ws);
    eventually("sessions back to 0 after disconnect", || {
        proxy.stats.sessions() == 0
    })
    .await;
}

#[tokio::test]
async fn many_concurrent_websockets_are_counted_exactly() {
    let (upstream, _up) = start_upstream().await;
    let proxy = Proxy::start(upstream, ProxyConfig::default()).await;
    let mut sockets = Vec::new();
    for _ in 0..12 {
        sockets.push(open_ws(&proxy).await);
    }
    assert_eq!(proxy.stats.sessions(), 12);
    for (i, ws) in sockets.iter_mut().enumerate() {
        echo(ws, &format!("m{i}")).await;
    }
    // Half close politely, half vanish.
    for (i, mut ws) in sockets.into_iter().enumerate() {
        if i % 2 == 0 {
            within("close", ws.close(None))
                .await
                .expect("close handshake");
        }
    }
    eventually("all sessions ended", || proxy.stats.sessions() == 0).await;
    assert_eq!(proxy.stats.snapshot().sessions_total, 12);
}

#[tokio::test]
async fn idle_websocket_is_closed_after_the_upgrade_idle_timeout() {
    let (upstream, _up) = start_upstream().await;
    let config = ProxyConfig {
        upgrade_idle_timeout: Some(std::time::Duration::from_millis(100)),
        ..Default::default()
    };
    let proxy = Proxy::start(upstream, config).await;
    let mut ws = open_ws(&proxy).await;
    echo(&mut ws, "still alive").await;
    eventually("the idle tunnel closes", || proxy.stats.sessions() == 0).await;
    // The client sees the connection end.
    let end = within("the end of the stream", ws.next()).await;
    assert!(!matches!(end, Some(Ok(Message::Text(_)))), "{end:?}");
}

async fn event_stream_session(path: &str) {
    let (upstream, _up) = start_upstream().await;
    let proxy = Proxy::start(upstream, ProxyConfig::default()).await;
    let mut client = connect(proxy.addr).await;
    let response = within("the stream head", client.send_request(get(path)))
        .await
        .expect("response");
    assert_eq!(
        response.headers().get("content-type").map(|v| v.as_bytes()),
        Some(&b"text/event-stream"[..])
    );
    assert_eq!(
        response
            .headers()
            .get("x-flotilla-deployment")
            .map(|v| v.as_bytes()),
        Some(&b"web-1"[..])
    );
    let mut body = response.into_body();
    let first = within("the first event", body.frame())
        .await
        .expect("a frame")
        .expect("no error")
        .into_data()
        .expect("data");
    assert_eq!(&first[..], b"data: first\n\n");
    let snap = proxy.stats.snapshot();
    assert_eq!(
        (snap.sessions, snap.event_streams, snap.in_flight),
        (1, 1, 1)
    );
    // The client goes away mid-stream.
    drop(body);
    drop(client);
    eventually("event-stream session back to 0", || proxy.stats.is_idle()).await;
    assert_eq!(proxy.stats.snapshot().sessions_total, 1);
}

#[tokio::test]
async fn event_stream_counts_as_a_session_until_the_client_leaves() {
    event_stream_session("/sse").await;
}

#[tokio::test]
async fn silent_event_stream_session_ends_when_the_client_leaves() {
    // No bytes flow after the first event, so only noticing the client's FIN can end it.
    event_stream_session("/sse?silent").await;
}

#[tokio::test]
async fn a_closed_socket_completes_the_handshake_then_closes_with_the_routers_code() {
    let (upstream, _up) = start_upstream().await;
    let proxy = Proxy::start(upstream, ProxyConfig::default()).await;
    let url = format!("ws://{}/closed?flotilla_deployment=web-0", proxy.addr);
    let (mut ws, response) = within(
        "the WebSocket handshake",
        tokio_tungstenite::connect_async(url),
    )
    .await
    .expect("the proxy completes the handshake itself");
    assert_eq!(response.status().as_u16(), 101);
    assert_eq!(
        response.headers().get("x-router").map(|v| v.as_bytes()),
        Some(&b"closed"[..])
    );
    let frame = within("the close frame", ws.next())
        .await
        .expect("a message")
        .expect("no error");
    let Message::Close(Some(close)) = frame else {
        panic!("expected a close frame, got {frame:?}");
    };
    assert_eq!(u16::from(close.code), 4410);
    assert_eq!(close.reason.as_str(), "version_retired");
    // The client's answering close ends the connection; nothing reached the upstream.
    let _ = within("the end of the connection", ws.next()).await;
    assert_eq!(proxy.stats.snapshot().requests_total, 0);
    assert_eq!(proxy.stats.sessions(), 0);
}

#[tokio::test]
async fn a_plain_request_to_a_closed_socket_gets_the_fallback_answer() {
    let (upstream, _up) = start_upstream().await;
    let proxy = Proxy::start(upstream, ProxyConfig::default()).await;
    let plain = crate::util::raw(
        proxy.addr,
        "GET /closed HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(plain.status, 410);
    assert!(plain.text().contains("version_retired"), "{}", plain.text());
    // An upgrade to something other than WebSocket is not a handshake the proxy can complete.
    let h2c = crate::util::raw(
        proxy.addr,
        "GET /closed HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, close\r\nUpgrade: h2c\r\n\r\n",
    )
    .await;
    assert_eq!(h2c.status, 410);
}

#[tokio::test]
async fn forwarded_responses_and_upgrades_carry_the_routers_extra_headers() {
    let (upstream, _up) = start_upstream().await;
    let proxy = Proxy::start(upstream, ProxyConfig::default()).await;
    let plain = crate::util::raw(
        proxy.addr,
        "GET /headers?cookie HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(plain.status, 200);
    assert_eq!(plain.header("set-cookie"), Some("which=one; Path=/"));
    assert_eq!(plain.header("x-secure"), Some("no"));
    assert_eq!(plain.header("x-flotilla-deployment"), Some("web-1"));
    let forwarded = crate::util::raw(
        proxy.addr,
        "GET /headers?cookie HTTP/1.1\r\nHost: a\r\nX-Forwarded-Proto: https\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(forwarded.header("x-secure"), Some("yes"));
    let url = format!("ws://{}/ws?cookie", proxy.addr);
    let (mut ws, response) = within(
        "the WebSocket handshake",
        tokio_tungstenite::connect_async(url),
    )
    .await
    .expect("handshake through the proxy");
    assert_eq!(
        response.headers().get("set-cookie").map(|v| v.as_bytes()),
        Some(&b"which=one; Path=/"[..])
    );
    echo(&mut ws, "still a tunnel").await;

    // With TLS in front of the proxy every request is secure.
    let tls = Proxy::start(
        upstream,
        ProxyConfig {
            forwarded_proto: flotilla_proxy::http::uri::Scheme::HTTPS,
            ..ProxyConfig::default()
        },
    )
    .await;
    let over_tls = crate::util::raw(
        tls.addr,
        "GET /headers?cookie HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(over_tls.header("x-secure"), Some("yes"));
}
