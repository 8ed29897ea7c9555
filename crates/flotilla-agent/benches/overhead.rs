//! What the agent adds: per-request latency through it versus straight to the app, and the
//! agent process's memory, on 127.0.0.1.
//!
//! Run: `cargo bench -p flotilla-agent --bench overhead` (release build of the standalone
//! `flotilla-agent` binary). Bounded: a fixed number of requests, everything on loopback.
//!
//! The "app" is a minimal keep-alive HTTP/1.1 responder inside this process (so its own cost is
//! tiny and the difference is the agent's); the agent is a real separate process whose child
//! command is an idle `sleep`. Requests alternate between direct and via-agent in rounds so both
//! see the same machine load. RSS is read from `/proc/<pid>/status`.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flotilla_agent::http::HttpClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const WARMUP: usize = 500;
const ROUNDS: usize = 20;
const PER_ROUND: usize = 500;
const IDLE_CONNECTIONS: usize = 200;

/// Kills the agent (SIGTERM, then SIGKILL) when dropped.
struct AgentProcess(Child);

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A keep-alive responder: every request gets a small fixed JSON answer.
async fn app(listener: TcpListener) {
    const REPLY: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n{\"status\":\"ok\"}";
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            let mut filled = 0;
            loop {
                match stream.read(&mut buf[filled..]).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => filled += n,
                }
                // Requests here have no body: answer each complete head.
                while let Some(end) = buf[..filled].windows(4).position(|w| w == b"\r\n\r\n") {
                    if stream.write_all(REPLY).await.is_err() {
                        return;
                    }
                    buf.copy_within(end + 4..filled, 0);
                    filled -= end + 4;
                }
                if filled == buf.len() {
                    return;
                }
            }
        });
    }
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

async fn time_requests(client: &HttpClient, url: &str, n: usize, out: &mut Vec<Duration>) {
    for _ in 0..n {
        let start = Instant::now();
        let reply = client
            .get(url, Duration::from_secs(5))
            .await
            .expect("request");
        assert!(reply.status.is_success(), "{url}: {}", reply.status);
        out.push(start.elapsed());
    }
}

fn report(name: &str, samples: &mut [Duration]) -> (Duration, Duration) {
    samples.sort_unstable();
    let p50 = percentile(samples, 0.50);
    let p99 = percentile(samples, 0.99);
    let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
    println!(
        "{name:<10} n={:<6} p50={:>7.1}µs p99={:>7.1}µs mean={:>7.1}µs",
        samples.len(),
        p50.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6,
        mean.as_secs_f64() * 1e6
    );
    (p50, p99)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let app_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind app");
    let app_addr = app_listener.local_addr().expect("addr");
    tokio::spawn(app(app_listener));
    let listen: SocketAddr =
        flotilla_testkit::net::free_loopback_addr().expect("a free loopback port");

    let child = Command::new(env!("CARGO_BIN_EXE_flotilla-agent"))
        .env("FLOTILLA_DEPLOYMENT_NAME", "bench")
        .env("FLOTILLA_DEPLOYMENT_ID", "20261125-190633-k3x9")
        .env("FLOTILLA_INSTANCE", "bench-1")
        .env("FLOTILLA_AGENT_EMF", "false")
        .env("FLOTILLA_LOG", "warn")
        .env_remove("ECS_CONTAINER_METADATA_URI_V4")
        .env_remove("FLOTILLA_DRAIN_STATE_FILE")
        .env_remove("FLOTILLA_DRAIN_STATE_URL")
        .args([
            "--listen",
            &listen.to_string(),
            "--app-port",
            &app_addr.port().to_string(),
            "--",
            "sleep",
            "3600",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("start flotilla-agent (cargo bench builds it)");
    let agent = AgentProcess(child);
    let pid = agent.0.id();

    let client = HttpClient::new();
    let direct = format!("http://{app_addr}/");
    let via = format!("http://{listen}/");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = client
            .get(&format!("http://{listen}/healthz"), Duration::from_secs(1))
            .await
            && r.status.is_success()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the agent did not become healthy"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rss_idle = rss_kib(pid, "VmRSS:");

    let mut scratch = Vec::new();
    time_requests(&client, &direct, WARMUP, &mut scratch).await;
    time_requests(&client, &via, WARMUP, &mut scratch).await;
    let mut direct_samples = Vec::with_capacity(ROUNDS * PER_ROUND);
    let mut via_samples = Vec::with_capacity(ROUNDS * PER_ROUND);
    for _ in 0..ROUNDS {
        time_requests(&client, &direct, PER_ROUND, &mut direct_samples).await;
        time_requests(&client, &via, PER_ROUND, &mut via_samples).await;
    }
    let rss_after_load = rss_kib(pid, "VmRSS:");

    // Idle keep-alive connections held open through the agent (each also holds one upstream).
    let mut held = Vec::with_capacity(IDLE_CONNECTIONS);
    for _ in 0..IDLE_CONNECTIONS {
        let mut stream = tokio::net::TcpStream::connect(listen)
            .await
            .expect("connect");
        stream
            .write_all(format!("GET / HTTP/1.1\r\nHost: {listen}\r\n\r\n").as_bytes())
            .await
            .expect("send");
        let mut buf = [0u8; 512];
        let _ = stream.read(&mut buf).await.expect("reply");
        held.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_connections = rss_kib(pid, "VmRSS:");
    let peak = rss_kib(pid, "VmHWM:");
    drop(held);

    println!(
        "flotilla-agent overhead on 127.0.0.1 (sequential keep-alive GETs, {ROUNDS}x{PER_ROUND} each way)"
    );
    let (d50, d99) = report("direct", &mut direct_samples);
    let (v50, v99) = report("via agent", &mut via_samples);
    println!(
        "added     p50={:>7.1}µs p99={:>7.1}µs",
        (v50.as_secs_f64() - d50.as_secs_f64()) * 1e6,
        (v99.as_secs_f64() - d99.as_secs_f64()) * 1e6
    );
    println!(
        "agent RSS: idle {rss_idle} KiB, after {} requests {rss_after_load} KiB, with \
         {IDLE_CONNECTIONS} open connections {rss_connections} KiB, peak {peak} KiB",
        ROUNDS * PER_ROUND + WARMUP
    );
}
