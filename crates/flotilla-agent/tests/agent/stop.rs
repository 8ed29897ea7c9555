//! The stop sequence, driven through the agent's signal channel.

use std::sync::Arc;
use std::time::Duration;

use flotilla_agent::{StaticSource, StopSignal};
use futures_util::StreamExt;

use crate::util::{self, Agent, ID, get, health_until, websocket};

#[tokio::test]
async fn sigterm_waits_for_live_sessions_then_asks_them_to_move_and_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let signal_file = dir.path().join("signal");
    let mut settings = util::settings(&[
        ("APP_EXIT_CODE", "7"),
        ("APP_SIGNAL_FILE", &signal_file.display().to_string()),
    ]);
    settings.session_wait = Duration::from_millis(1500);
    let mut agent = Agent::start_in(settings, Arc::new(StaticSource::active()), dir).await;
    let mut ws = websocket(agent.addr, &format!("/ws?flotilla_deployment={ID}"))
        .await
        .expect("ws");
    util::echo(&mut ws, "before").await;

    agent.signal(StopSignal::Terminate).await;
    let doc = health_until(agent.addr, "stopping", |_, d| d["stopping"] == true).await;
    assert_eq!(doc["draining"], true);
    // No new sessions...
    let fresh = get(agent.addr, "/", &[]).await.expect("fresh");
    assert_eq!(fresh.status, 503);
    assert_eq!(fresh.json()["error"], "stopping");
    assert_eq!(fresh.header("retry-after"), Some("1"));
    // ...but the live session and its tab's requests go on, and the app has not been signalled.
    let pinned = get(agent.addr, "/", &[("X-Flotilla-Deployment", ID)])
        .await
        .expect("pinned");
    assert_eq!(pinned.status, 200);
    util::echo(&mut ws, "during").await;
    assert!(
        !signal_file.exists(),
        "the app must not get SIGTERM while sessions drain"
    );

    let outcome = agent.outcome().await;
    assert_eq!(outcome.exit_code, 7, "{outcome:?}");
    let stop = outcome.stop.expect("a stop report");
    assert_eq!(stop.signal, StopSignal::Terminate);
    // Half the wait before its end, the session was asked to move; this client never answered
    // the close, so it was still open at the deadline.
    let asked = stop
        .asked_to_move
        .expect("the open session was asked to move");
    assert_eq!(asked.websockets, 1, "{stop:?}");
    assert!(stop.timed_out, "{stop:?}");
    assert_eq!(stop.left.websockets, 1, "{stop:?}");
    assert!(stop.waited >= Duration::from_millis(1400), "{stop:?}");
    assert!(!stop.app_killed);
    assert_eq!(
        std::fs::read_to_string(&signal_file).expect("signalled"),
        "SIGTERM"
    );
    // What the client finds waiting: a close frame asking it to reconnect elsewhere.
    let next = util::within("the WebSocket's close frame", ws.next()).await;
    match next {
        Some(Ok(tokio_tungstenite::tungstenite::Message::Close(Some(frame)))) => {
            assert_eq!(
                u16::from(frame.code),
                flotilla_proxy::GOING_AWAY,
                "{frame:?}"
            );
        }
        other => panic!("expected a going-away close frame, got {other:?}"),
    }
}

#[tokio::test]
async fn sessions_asked_to_move_that_go_leave_nothing_to_cut() {
    let mut settings = util::settings(&[]);
    settings.session_wait = Duration::from_secs(4);
    let mut agent = Agent::start(settings, Arc::new(StaticSource::active())).await;
    let mut ws = websocket(agent.addr, &format!("/ws?flotilla_deployment={ID}"))
        .await
        .expect("ws");
    util::echo(&mut ws, "before").await;
    // The tab's client reads on, as a browser does, and answers the close frame.
    let client = tokio::spawn(async move {
        let mut close = None;
        while let Some(message) = ws.next().await {
            if let Ok(tokio_tungstenite::tungstenite::Message::Close(frame)) = message {
                close = frame;
            }
        }
        close
    });

    agent.signal(StopSignal::Terminate).await;
    let outcome = agent.outcome().await;
    let stop = outcome.stop.expect("a stop report");
    let asked = stop
        .asked_to_move
        .expect("the open session was asked to move");
    assert_eq!(asked.websockets, 1, "{stop:?}");
    assert!(!stop.timed_out, "the session went when asked: {stop:?}");
    assert!(stop.left.is_idle(), "{stop:?}");
    assert!(stop.proxy.is_clean(), "nothing was cut: {stop:?}");
    // Asked MOVE_LEAD (capped at half the wait) before its end, not at once, not at the end.
    assert!(stop.waited >= Duration::from_millis(1900), "{stop:?}");
    assert!(stop.waited < Duration::from_secs(4), "{stop:?}");
    let close = util::within("the client to finish", client)
        .await
        .expect("client task")
        .expect("a close frame with a code");
    assert_eq!(u16::from(close.code), flotilla_proxy::GOING_AWAY);
}

#[tokio::test]
async fn sigterm_with_nothing_live_stops_at_once_with_the_apps_signal_status() {
    let mut settings = util::settings(&[]);
    settings.session_wait = Duration::from_secs(10);
    let mut agent = Agent::start(settings, Arc::new(StaticSource::active())).await;
    let _ = get(agent.addr, "/", &[])
        .await
        .expect("a finished request is not a session");
    agent.signal(StopSignal::Terminate).await;
    let outcome = agent.outcome().await;
    // Python dies of SIGTERM: 128 + 15.
    assert_eq!(outcome.exit_code, 143, "{outcome:?}");
    let stop = outcome.stop.expect("stop report");
    assert!(!stop.timed_out, "{stop:?}");
    assert!(stop.proxy.is_clean(), "{stop:?}");
    assert!(stop.waited < Duration::from_secs(5), "{stop:?}");
}

#[tokio::test]
async fn sigint_is_passed_on_as_sigint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let signal_file = dir.path().join("signal");
    let settings = util::settings(&[("APP_SIGNAL_FILE", &signal_file.display().to_string())]);
    let mut agent = Agent::start_in(settings, Arc::new(StaticSource::active()), dir).await;
    agent.signal(StopSignal::Interrupt).await;
    let outcome = agent.outcome().await;
    assert_eq!(outcome.exit_code, 130, "{outcome:?}");
    assert_eq!(
        std::fs::read_to_string(&signal_file).expect("signalled"),
        "SIGINT"
    );
}

#[tokio::test]
async fn an_app_ignoring_sigterm_is_killed_after_its_grace() {
    let mut settings = util::settings(&[("APP_IGNORE_TERM", "1")]);
    settings.app_stop_grace = Duration::from_millis(500);
    let mut agent = Agent::start(settings, Arc::new(StaticSource::active())).await;
    agent.signal(StopSignal::Terminate).await;
    let outcome = agent.outcome().await;
    assert_eq!(outcome.exit_code, 137, "{outcome:?}");
    assert!(outcome.stop.expect("stop report").app_killed);
}

#[tokio::test]
async fn a_second_signal_ends_the_wait_for_sessions() {
    let mut settings = util::settings(&[]);
    settings.session_wait = Duration::from_secs(30);
    let mut agent = Agent::start(settings, Arc::new(StaticSource::active())).await;
    let _ws = websocket(agent.addr, "/ws").await.expect("ws");
    health_until(agent.addr, "one session", |_, d| d["sessions"] == 1).await;
    agent.signal(StopSignal::Terminate).await;
    health_until(agent.addr, "stopping", |_, d| d["stopping"] == true).await;
    agent.signal(StopSignal::Terminate).await;
    let stop = agent.outcome().await.stop.expect("stop report");
    assert!(stop.waited < Duration::from_secs(5), "{stop:?}");
    assert!(stop.timed_out);
    assert_eq!(stop.proxy.cut_upgrades, 1);
}

#[tokio::test]
async fn an_app_that_exits_on_its_own_ends_the_agent_with_its_code() {
    let mut settings = util::settings(&[]);
    settings.command = vec!["sh".into(), "-c".into(), "sleep 0.2; exit 3".into()];
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let (_signals, rx) = tokio::sync::mpsc::channel(1);
    let outcome = util::within(
        "the agent to follow its app",
        flotilla_agent::run(settings, Arc::new(StaticSource::active()), listener, rx),
    )
    .await
    .expect("ran");
    assert_eq!(outcome.exit_code, 3);
    assert!(outcome.stop.is_none());
    assert_eq!(outcome.app_status, "exit code 3");
}
