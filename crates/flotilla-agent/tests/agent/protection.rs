//! Task scale-in protection through a stand-in for the ECS agent endpoint of a task (what
//! `ECS_AGENT_URI` names inside ECS; nothing else here runs it): held while a session lives and
//! for the grace after, released once the grace passes and at once when the version retires.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_agent::FileSource;
use flotilla_core::lifecycle::VersionState;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::util::{self, Agent, ID, websocket};

/// The ECS agent's task protection endpoint, recording each PUT's JSON body.
struct EcsAgentEndpoint {
    uri: String,
    puts: Arc<Mutex<Vec<Value>>>,
    _task: tokio::task::JoinHandle<()>,
}

impl EcsAgentEndpoint {
    async fn start() -> EcsAgentEndpoint {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let uri = format!("http://{}/v3/task-1", listener.local_addr().expect("addr"));
        let puts = Arc::new(Mutex::new(Vec::new()));
        let seen = puts.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    while let Some((head, body)) = read_request(&mut stream).await {
                        let answer = if head.starts_with("PUT /v3/task-1/task-protection/v1/state ")
                        {
                            let request: Value = serde_json::from_slice(&body).unwrap_or_default();
                            let enabled = request["ProtectionEnabled"] == true;
                            seen.lock().expect("puts").push(request);
                            serde_json::json!({ "protection": {
                                "ProtectionEnabled": enabled,
                                "TaskArn": "arn:aws:ecs:eu-west-1:123456789012:task/c/task-1",
                            }})
                        } else {
                            serde_json::json!({ "error": { "Code": "NotFound", "Message": head } })
                        };
                        let text = answer.to_string();
                        let response = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                             content-length: {}\r\n\r\n{text}",
                            text.len()
                        );
                        if stream.write_all(response.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        EcsAgentEndpoint {
            uri,
            puts,
            _task: task,
        }
    }

    fn puts(&self) -> Vec<Value> {
        self.puts.lock().expect("puts").clone()
    }
}

/// One HTTP/1.1 request: its head's first line and its body (by `content-length`).
async fn read_request(stream: &mut tokio::net::TcpStream) -> Option<(String, Vec<u8>)> {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let end = loop {
        if let Some(at) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = stream.read(&mut buf).await.ok().filter(|n| *n > 0)?;
        data.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&data[..end]).into_owned();
    let length = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())
                .flatten()
        })
        .unwrap_or(0);
    while data.len() < end + length {
        let n = stream.read(&mut buf).await.ok().filter(|n| *n > 0)?;
        data.extend_from_slice(&buf[..n]);
    }
    let first = head.lines().next().unwrap_or_default().to_owned();
    Some((first, data[end..end + length].to_vec()))
}

#[tokio::test]
async fn a_task_is_protected_from_scale_in_while_its_sessions_live() {
    let endpoint = EcsAgentEndpoint::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    std::fs::write(&state, "active").expect("state");
    let mut settings = util::settings(&[]);
    settings.drain_grace = Duration::from_millis(500);
    settings.scale_in_protection = Some(endpoint.uri.clone());
    let source = Arc::new(FileSource {
        state: state.clone(),
        readiness: None,
    });
    let agent = Agent::start_in(settings, source, dir).await;
    // Polls go by with nothing live: nothing is asked of ECS.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(endpoint.puts().is_empty(), "{:?}", endpoint.puts());

    // A tab opens its socket: protected, for an hour at most.
    let ws = websocket(agent.addr, &format!("/ws?flotilla_deployment={ID}"))
        .await
        .expect("ws");
    let puts = util::eventually("protection", || async {
        let puts = endpoint.puts();
        (!puts.is_empty()).then_some(puts)
    })
    .await;
    assert_eq!(
        puts[0],
        serde_json::json!({ "ProtectionEnabled": true, "ExpiresInMinutes": 60 })
    );

    // The tab goes: released once the grace has passed, not before.
    drop(ws);
    let released = util::eventually("release", || async {
        let puts = endpoint.puts();
        (puts.len() >= 2).then_some(puts)
    })
    .await;
    assert_eq!(released.len(), 2, "{released:?}");
    assert_eq!(
        released[1],
        serde_json::json!({ "ProtectionEnabled": false })
    );

    // Another tab, then the version is retired under it: released at once, and not taken again.
    let _ws = websocket(agent.addr, &format!("/ws?flotilla_deployment={ID}"))
        .await
        .expect("ws");
    util::eventually("protection again", || async {
        (endpoint.puts().len() >= 3).then_some(())
    })
    .await;
    std::fs::write(&state, VersionState::Retired.as_str()).expect("state");
    let after = util::eventually("release on retirement", || async {
        let puts = endpoint.puts();
        (puts.len() >= 4).then_some(puts)
    })
    .await;
    assert_eq!(after[3], serde_json::json!({ "ProtectionEnabled": false }));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(endpoint.puts().len(), 4, "{:?}", endpoint.puts());
}
