//! Sessions asked to move (`ProxyConfig::session_move`): WebSockets get a going-away close frame
//! at a frame boundary, event streams end between two events, and both stop counting.

use flotilla_proxy::{GOING_AWAY, ProxyConfig, SessionMove};
use futures_util::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::util::{Proxy, connect, eventually, get, start_upstream, within};

async fn moving_proxy() -> (Proxy, SessionMove, crate::util::AbortOnDrop<()>) {
    let (upstream, up) = start_upstream().await;
    let moving = SessionMove::new();
    let config = ProxyConfig {
        session_move: Some(moving.clone()),
        ..ProxyConfig::default()
    };
    (Proxy::start(upstream, config).await, moving, up)
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open(proxy: &Proxy, path: &str) -> Ws {
    let url = format!("ws://{}{path}", proxy.addr);
    let (ws, _) = within("the handshake", tokio_tungstenite::connect_async(url))
        .await
        .expect("handshake through the proxy");
    ws
}

/// The next message, which must be a close frame asking to reconnect.
async fn expect_going_away(ws: &mut Ws) {
    let next = within("the close frame", ws.next()).await;
    match next {
        Some(Ok(Message::Close(Some(frame)))) => {
            assert_eq!(frame.code, CloseCode::Away);
            assert_eq!(u16::from(frame.code), GOING_AWAY);
        }
        other => panic!("expected a going-away close frame, got {other:?}"),
    }
}

#[tokio::test]
async fn an_idle_websocket_asked_to_move_gets_going_away_and_stops_counting() {
    let (proxy, moving, _up) = moving_proxy().await;
    let mut ws = open(&proxy, "/ws").await;
    ws.send(Message::text("ping")).await.expect("send");
    let echoed = within("the echo", ws.next()).await;
    assert!(matches!(echoed, Some(Ok(Message::Text(_)))), "{echoed:?}");
    assert_eq!(proxy.stats.snapshot().websockets, 1);

    moving.ask();
    expect_going_away(&mut ws).await;
    eventually("the session to end", || {
        proxy.stats.snapshot().websockets == 0
    })
    .await;
}

#[tokio::test]
async fn a_websocket_asked_mid_frame_gets_the_whole_frame_then_going_away() {
    let (proxy, moving, _up) = moving_proxy().await;
    let mut ws = open(&proxy, "/ws-split").await;
    // The upstream has sent half a frame; wait until the proxy has passed it on.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    moving.ask();
    // Any bytes from the client make the upstream finish the frame and send one more.
    ws.send(Message::text("go")).await.expect("send");
    let first = within("the split message", ws.next()).await;
    assert!(
        matches!(&first, Some(Ok(Message::Text(t))) if t.as_str() == "hello world"),
        "the frame in progress arrives whole: {first:?}"
    );
    // The frame after it never arrives: the close frame comes first.
    expect_going_away(&mut ws).await;
}

#[tokio::test]
async fn a_websocket_opened_after_the_ask_is_told_at_once() {
    let (proxy, moving, _up) = moving_proxy().await;
    moving.ask();
    let mut ws = open(&proxy, "/ws").await;
    expect_going_away(&mut ws).await;
}

#[tokio::test]
async fn an_event_stream_asked_to_move_ends_after_the_event_in_progress() {
    let (proxy, moving, _up) = moving_proxy().await;
    let mut client = connect(proxy.addr).await;
    let response = within("the stream head", client.send_request(get("/sse-split")))
        .await
        .expect("response");
    let mut body = response.into_body();
    let mut seen = Vec::new();
    while !seen.ends_with(b"data: b") {
        let frame = within("the first bytes", body.frame())
            .await
            .expect("a frame")
            .expect("no error");
        seen.extend_from_slice(&frame.into_data().expect("data"));
    }
    assert_eq!(proxy.stats.snapshot().event_streams, 1);
    moving.ask();
    while let Some(frame) = within("the rest of the stream", body.frame()).await {
        seen.extend_from_slice(&frame.expect("no error").into_data().expect("data"));
    }
    assert_eq!(
        String::from_utf8_lossy(&seen),
        "data: a\n\ndata: b\n\n",
        "event b is finished, event c is not sent, and the stream ends cleanly"
    );
    eventually("the event stream to stop counting", || {
        proxy.stats.snapshot().event_streams == 0
    })
    .await;
}

#[tokio::test]
async fn without_a_move_sessions_are_not_touched() {
    let (upstream, _up) = start_upstream().await;
    let proxy = Proxy::start(upstream, ProxyConfig::default()).await;
    let mut ws = open(&proxy, "/ws").await;
    let mut client = connect(proxy.addr).await;
    let response = within("the stream head", client.send_request(get("/sse")))
        .await
        .expect("response");
    let mut body = response.into_body();
    for _ in 0..3 {
        let frame = within("an event", body.frame()).await;
        assert!(matches!(frame, Some(Ok(_))), "the stream goes on");
    }
    ws.send(Message::text("still here")).await.expect("send");
    let echoed = within("the echo", ws.next()).await;
    assert!(matches!(echoed, Some(Ok(Message::Text(_)))), "{echoed:?}");
}
