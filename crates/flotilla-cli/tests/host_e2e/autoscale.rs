//! Host autoscaling (`[host] max_instances`): a version grows for its sessions at once, and
//! shrinks only by winding instances down (no new sessions on them) and stopping each once its
//! sessions have ended, so no WebSocket is cut.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::runtime;
use crate::util::{HostEnv, Timing, eventually};

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A fresh WebSocket and the instance that greeted it.
fn open(rt: &tokio::runtime::Runtime, env: &HostEnv) -> (Socket, String) {
    let url = format!("ws://{}/ws", env.listen);
    let (mut ws, _) = rt
        .block_on(tokio_tungstenite::connect_async(url))
        .expect("a WebSocket through the router");
    let greeting = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(5), ws.next()).await })
        .expect("a greeting within 5 s")
        .expect("a greeting")
        .expect("no error");
    let greeting: serde_json::Value =
        serde_json::from_str(greeting.to_text().expect("text")).expect("JSON");
    let instance = greeting["instance"].as_str().expect("instance").to_owned();
    (ws, instance)
}

fn close(rt: &tokio::runtime::Runtime, mut ws: Socket) {
    let _ = rt.block_on(ws.close(None));
}

/// The instance that answers an echo on `ws`, or why none did.
fn echo(rt: &tokio::runtime::Runtime, ws: &mut Socket) -> Result<String, String> {
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(5), async {
            ws.send(Message::text("still there?"))
                .await
                .map_err(|e| format!("send: {e}"))?;
            let reply = ws.next().await.ok_or("the socket closed")?;
            let reply = reply.map_err(|e| format!("receive: {e}"))?;
            let reply: serde_json::Value =
                serde_json::from_str(reply.to_text().map_err(|e| e.to_string())?)
                    .map_err(|e| e.to_string())?;
            Ok(reply["instance"].as_str().unwrap_or("?").to_owned())
        })
        .await
        .map_err(|_| "no echo within 5 s".to_owned())?
    })
}

#[test]
fn instances_follow_the_sessions_and_none_holding_a_session_is_stopped() {
    let env = HostEnv::new(Timing {
        poll: 1,
        grace: 1,
        interval: 3600,
        health_timeout: 30,
    });
    env.configure_host_keys(
        "min_instances = 1\nmax_instances = 3\nsessions_per_instance = 2\n\
         scale_in_after_seconds = 2\n",
    );
    let v1 = env.deploy();
    let rt = runtime();
    let count = || env.processes_of(&v1).len();
    assert_eq!(count(), 2, "a version starts with `instances`");

    // Six sessions want three instances: a third starts at once.
    let first: Vec<(Socket, String)> = (0..6).map(|_| open(&rt, &env)).collect();
    assert!(
        first.iter().all(|(_, i)| i == "i1" || i == "i2"),
        "{:?}",
        first.iter().map(|(_, i)| i).collect::<Vec<_>>()
    );
    eventually(Duration::from_secs(20), || (count() == 3).then_some(()))
        .expect("a third instance within 20 s");
    // It is healthy and takes the next session (it has the fewest).
    let (late, on) = eventually(Duration::from_secs(20), || {
        let (ws, instance) = open(&rt, &env);
        if instance == "i3" {
            Some((ws, instance))
        } else {
            close(&rt, ws);
            None
        }
    })
    .expect("a session on i3");
    assert_eq!(on, "i3");

    // The six end; one session is left, on i3, the highest instance. One instance is wanted:
    // i2 and i3 are wound down (no new sessions), and i3 stays while its session lives.
    for (ws, _) in first {
        close(&rt, ws);
    }
    let winding: Vec<String> = eventually(Duration::from_secs(20), || {
        let winding: Vec<String> = env.admin_status()["instances"]
            .as_array()
            .expect("instances")
            .iter()
            .filter(|i| i["deployment_id"] == v1.as_str() && i["winding_down"] == true)
            .filter_map(|i| i["instance"].as_str().map(str::to_owned))
            .collect();
        (!winding.is_empty()).then_some(winding)
    })
    .expect("instances wound down within 20 s");
    assert_eq!(winding, ["i2", "i3"], "the status page shows which");
    let probes: Vec<String> = (0..6)
        .map(|_| {
            let (ws, instance) = open(&rt, &env);
            close(&rt, ws);
            instance
        })
        .collect();
    assert!(
        probes.iter().all(|i| i == "i1"),
        "new sessions go only to i1 while i2 and i3 wind down: {probes:?}"
    );
    assert_eq!(count(), 3, "i3 holds a session, so nothing is stopped yet");
    let mut late = late;
    assert_eq!(
        echo(&rt, &mut late).as_deref(),
        Ok("i3"),
        "i3's session goes on"
    );

    // A session on i1 that stays, then i3's session ends: down to the one instance.
    let (mut kept, on) = open(&rt, &env);
    assert_eq!(on, "i1");
    close(&rt, late);
    eventually(Duration::from_secs(20), || (count() == 1).then_some(()))
        .expect("down to one instance within 20 s");
    assert_eq!(
        echo(&rt, &mut kept).as_deref(),
        Ok("i1"),
        "the session on the instance that stays was never touched"
    );
}
