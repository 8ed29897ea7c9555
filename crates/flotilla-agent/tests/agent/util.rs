//! Test harness: the Python test app behind a real agent on loopback ports, a raw HTTP client,
//! WebSockets, and bounded waits.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use flotilla_agent::{
    AgentError, AgentOutcome, AgentSettings, DrainSource, FileSource, StopSignal,
};
use flotilla_core::{DeploymentId, DeploymentName, InstanceId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::MaybeTlsStream;
use tokio_tungstenite::WebSocketStream;

/// Upper bound for any single wait in a test; far above what a healthy run needs.
pub const LIMIT: Duration = Duration::from_secs(15);

/// The version id every test agent runs as.
pub const ID: &str = "20261125-190633-k3x9";

/// Awaits `fut`, failing the test if it takes longer than [`LIMIT`].
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(LIMIT, fut).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {LIMIT:?} waiting for {what}"),
    }
}

/// Polls `check` until it returns `Some`, failing after [`LIMIT`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    within(what, async {
        loop {
            if let Some(value) = check().await {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// The test app's path.
pub fn app_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/agent/apps/app.py")
}

pub use flotilla_testkit::net::free_port;

/// Settings for the test app on a free port, with short timings.
pub fn settings(app_env: &[(&str, &str)]) -> AgentSettings {
    let mut command = vec!["env".to_owned()];
    command.extend(app_env.iter().map(|(k, v)| format!("{k}={v}")));
    command.extend([
        "python3".to_owned(),
        "-u".to_owned(),
        app_script().display().to_string(),
    ]);
    let mut s = AgentSettings::new(
        DeploymentName::new("shop").expect("valid"),
        DeploymentId::new(ID).expect("valid"),
        command,
    );
    s.listen = "127.0.0.1:0".parse().expect("literal");
    s.app_port = free_port();
    s.instance = Some(InstanceId::new("task-1").expect("valid"));
    s.drain_poll = Duration::from_millis(100);
    s.drain_grace = Duration::from_millis(300);
    s.session_wait = Duration::from_secs(2);
    s.app_stop_grace = Duration::from_secs(3);
    s.emf = false;
    s
}

/// A running agent in this process, stopped through its signal channel.
pub struct Agent {
    pub addr: SocketAddr,
    pub signals: mpsc::Sender<StopSignal>,
    pub task: Option<JoinHandle<Result<AgentOutcome, AgentError>>>,
    pub dir: tempfile::TempDir,
}

impl Agent {
    /// Starts `settings` with `source`, waiting until the app is healthy behind it.
    pub async fn start(settings: AgentSettings, source: Arc<dyn DrainSource>) -> Agent {
        Self::start_in(settings, source, tempfile::tempdir().expect("tempdir")).await
    }

    /// [`Agent::start`] with a temporary directory the caller already used.
    pub async fn start_in(
        mut settings: AgentSettings,
        source: Arc<dyn DrainSource>,
        dir: tempfile::TempDir,
    ) -> Agent {
        let listener = TcpListener::bind(settings.listen).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        settings.listen = addr;
        let (signals, rx) = mpsc::channel(4);
        let task = tokio::spawn(flotilla_agent::run(settings, source, listener, rx));
        let agent = Agent {
            addr,
            signals,
            task: Some(task),
            dir,
        };
        eventually("the app to become healthy behind the agent", || async {
            let r = get(agent.addr, "/healthz", &[]).await.ok()?;
            (r.status == 200).then_some(())
        })
        .await;
        agent
    }

    /// Starts the test app with a [`FileSource`] in a temporary directory: `state` and
    /// `ready-{instance}`.
    pub async fn with_files(settings: AgentSettings) -> Agent {
        let dir = tempfile::tempdir().expect("tempdir");
        let source = Arc::new(FileSource {
            state: dir.path().join("state"),
            readiness: Some(format!("{}/ready-{{instance}}", dir.path().display())),
        });
        Self::start_in(settings, source, dir).await
    }

    /// Writes the version state the file source reads.
    pub fn set_state(&self, state: &str) {
        std::fs::write(self.dir.path().join("state"), state).expect("write state");
    }

    /// The readiness the agent last wrote, if any.
    pub fn readiness(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.path().join("ready-task-1")).ok()
    }

    /// Sends a stop signal.
    pub async fn signal(&self, signal: StopSignal) {
        self.signals.send(signal).await.expect("agent listening");
    }

    /// Waits for the agent to finish.
    pub async fn outcome(&mut self) -> AgentOutcome {
        let task = self.task.take().expect("outcome taken once");
        within("the agent to exit", task)
            .await
            .expect("agent task")
            .expect("agent ran")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            // Dropping the future drops the app handle, which kills the app (kill_on_drop).
            task.abort();
        }
    }
}

/// A response read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// One request on a fresh connection (`Connection: close`), read to the end.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<Reply> {
    let mut stream = TcpStream::connect(addr).await?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n"
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let body = if headers_chunked(&text) {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok(Reply {
        status,
        headers,
        body,
    })
}

fn headers_chunked(text: &str) -> bool {
    text.split("\r\n\r\n").next().is_some_and(|h| {
        h.to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
    })
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// `GET path`.
pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> std::io::Result<Reply> {
    request(addr, "GET", path, headers).await
}

/// `POST path` to the app directly (test controls).
pub async fn control(app_port: u16, path: &str) {
    let addr = SocketAddr::from(([127, 0, 0, 1], app_port));
    let reply = request(addr, "POST", path, &[]).await.expect("control");
    assert_eq!(reply.status, 200, "{path}: {}", reply.body);
}

/// The agent's health document, once `check` accepts it.
pub async fn health_until(
    addr: SocketAddr,
    what: &str,
    check: impl Fn(u16, &serde_json::Value) -> bool,
) -> serde_json::Value {
    eventually(what, || async {
        let r = get(addr, "/healthz", &[]).await.ok()?;
        let doc = serde_json::from_str(&r.body).ok()?;
        check(r.status, &doc).then_some(doc)
    })
    .await
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens a WebSocket to `path` through the agent.
pub async fn websocket(
    addr: SocketAddr,
    path: &str,
) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}{path}")).await?;
    Ok(ws)
}

/// Sends `text` and expects it echoed.
pub async fn echo(ws: &mut Ws, text: &str) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    within("a WebSocket echo", async {
        ws.send(Message::text(text)).await.expect("send");
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(got))) => {
                    assert_eq!(got.as_str(), text);
                    return;
                }
                Some(Ok(_)) => continue,
                other => panic!("no echo: {other:?}"),
            }
        }
    })
    .await;
}
