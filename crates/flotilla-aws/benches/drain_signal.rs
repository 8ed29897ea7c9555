//! The drain signal at scale: N simulated tasks, each the agent's real poll loop
//! (`flotilla_agent::poll::Poller`, its own timing and jitter) over the real drain source, in one
//! process against moto, for a bounded window. Counts the AWS calls per second by API with the
//! SDK interceptor, marks the version draining halfway through (through the state store, as the
//! CLI does) and measures when the last task saw it. Two patterns side by side:
//!
//! - `board`: the drain board (`flotilla_aws::drain_board`, one S3 object, conditional GETs);
//! - `ssm`: today's pattern before it, one `GetParameter` per task per poll.
//!
//! Run: `bench/drain-signal.sh` (see bench/README.md), or
//! `cargo test -p flotilla-aws --bench drain_signal` (the dev profile: the work is waiting on
//! moto, and a release build of the SDK would take long) with `FLOTILLA_BENCH_TASKS` (default
//! `10,100,1000`), `FLOTILLA_BENCH_SECONDS` (the measured window, default 40),
//! `FLOTILLA_BENCH_POLL_SECONDS` (default 5, the agent's default) and `FLOTILLA_BENCH_PATTERNS`
//! (default `board,ssm`).

#![allow(
    dead_code,
    reason = "the shared test support has helpers this benchmark does not use"
)]

#[path = "../tests/moto/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_agent::poll::{Poller, PollerSettings};
use flotilla_agent::{DrainSource, Identity};
use flotilla_aws::agent_ssm::SsmDrainSource;
use flotilla_aws::drain_board::BoardDrainSource;
use flotilla_aws::{CallCounter, Clients};
use flotilla_core::lifecycle::{Version, VersionState};
use flotilla_core::{DeploymentId, InstanceId};
use flotilla_engine::ports::VersionRecord;
use support::{Moto, World, next_id};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Default quotas, per account and region (docs/drain-signal.md says where they come from).
const SSM_GET_TPS: f64 = 40.0;
/// S3 GET/HEAD requests per second per partitioned prefix.
const S3_GET_PER_PREFIX: f64 = 5_500.0;

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// A stand-in app answering its health path with `200 {}` (the poll loop probes it each poll).
async fn health_app() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                let _ = conn.read(&mut buf).await;
                let _ = conn
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}",
                    )
                    .await;
            });
        }
    });
    addr
}

fn record(id: &DeploymentId, state: VersionState) -> VersionRecord {
    let mut version = Version::new(id.clone(), id.created_at());
    version.state = state;
    VersionRecord {
        version,
        image: None,
        instances: 1,
        ready_passes: 0,
        canary: None,
    }
}

struct Outcome {
    calls: BTreeMap<String, u64>,
    window: Duration,
    latency_max: Option<Duration>,
    latency_median: Option<Duration>,
    saw: usize,
    failing: usize,
    degraded: usize,
    mark: Duration,
}

async fn run_one(w: &World, pattern: &str, n: usize, window: Duration, poll: Duration) -> Outcome {
    let config = flotilla_aws::sdk_config_with(&w.settings, |l| {
        l.credentials_provider(aws_sdk_ssm::config::Credentials::new(
            "testing", "testing", None, None, "moto",
        ))
    })
    .await;
    let counter = CallCounter::new();
    let clients = Clients::counted(&config, &counter);
    let app = health_app().await;
    let id = next_id();
    let state = w.ports().state;
    state
        .put(&record(&id, VersionState::Active))
        .await
        .expect("record the version");

    // Tasks start spread over one poll interval, as a fleet's do; each is its own poll loop
    // with its own source (the board source keeps its own ETag), sharing one HTTP client.
    let mut pollers = Vec::with_capacity(n);
    let spread = poll.as_secs_f64() / n as f64;
    let started = Instant::now();
    for i in 0..n {
        let who = Identity {
            name: w.name.clone(),
            id: id.clone(),
            instance: InstanceId::new(&format!("{i:032x}")).expect("valid"),
        };
        let source: Arc<dyn DrainSource> = match pattern {
            "board" => Arc::new(BoardDrainSource::new(
                clients.s3.clone(),
                clients.ssm.clone(),
                w.board_bucket.clone(),
            )),
            _ => Arc::new(SsmDrainSource::new(clients.ssm.clone())),
        };
        pollers.push(Poller::spawn(
            who,
            source,
            PollerSettings {
                poll,
                grace: Duration::from_secs(2),
                app,
                health_path: "/healthz".to_owned(),
            },
        ));
        let due = Duration::from_secs_f64(spread * (i + 1) as f64);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
    }
    // One more interval so every task has polled at least once, then measure.
    tokio::time::sleep(poll).await;
    counter.reset();
    let measured = Instant::now();
    tokio::time::sleep(window / 2).await;

    // Mark the version draining as the CLI does (record, state, board) and watch every task.
    let marked = Instant::now();
    state
        .put(&record(&id, VersionState::Draining))
        .await
        .expect("mark draining");
    let mark = marked.elapsed();
    let mut seen: Vec<Option<Duration>> = vec![None; n];
    let end = measured + window;
    while Instant::now() < end {
        for (i, p) in pollers.iter().enumerate() {
            if seen[i].is_none() && p.version_state() == Some(VersionState::Draining) {
                seen[i] = Some(marked.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let window = measured.elapsed();
    let calls = counter.snapshot();
    let failing = pollers
        .iter()
        .filter(|p| p.source_health().consecutive_failures > 0)
        .count();
    // Board tasks that could not read the board at their last poll and read SSM instead.
    let degraded = pollers
        .iter()
        .filter(|p| p.source_health().degraded.is_some())
        .count();
    for p in pollers {
        p.stop().await;
    }
    let mut saw: Vec<Duration> = seen.iter().flatten().copied().collect();
    saw.sort();
    Outcome {
        calls,
        window,
        latency_max: (saw.len() == n).then(|| saw.last().copied()).flatten(),
        latency_median: saw.get(saw.len() / 2).copied(),
        saw: saw.len(),
        failing,
        degraded,
        mark,
    }
}

fn print(pattern: &str, n: usize, poll: Duration, o: &Outcome) {
    let secs = o.window.as_secs_f64();
    println!(
        "\n{pattern} x {n} tasks, {secs:.1} s window (marking draining took {} ms)",
        o.mark.as_millis()
    );
    for (op, count) in &o.calls {
        let rate = *count as f64 / secs;
        let quota = match op.as_str() {
            "SSM.GetParameter" => format!(
                "  {:>5.0} % of SSM's default {SSM_GET_TPS} TPS (shared by the account and region)",
                100.0 * rate / SSM_GET_TPS
            ),
            "S3.GetObject" => format!(
                "  {:>5.1} % of S3's {S3_GET_PER_PREFIX} GET/s per prefix",
                100.0 * rate / S3_GET_PER_PREFIX
            ),
            _ => String::new(),
        };
        println!("  {rate:>8.1}/s  {count:>6}  {op}{quota}");
    }
    // Each task reads once per poll: what the fleet asks for, against what the emulator served.
    let offered = n as f64 / poll.as_secs_f64();
    let reads: u64 = o
        .calls
        .iter()
        .filter(|(op, _)| matches!(op.as_str(), "S3.GetObject" | "SSM.GetParameter"))
        .map(|(_, c)| c)
        .sum();
    let served = reads as f64 / secs;
    println!(
        "  reads: {offered:.1}/s offered by {n} tasks at one per poll, {served:.1}/s served ({:.0} %)",
        100.0 * served / offered
    );
    if served < 0.9 * offered {
        println!(
            "  (the emulator fell behind: each read waited in its queue, and the latency below \
             includes that wait)"
        );
    }
    let ms = |d: Option<Duration>| d.map_or("-".to_owned(), |d| format!("{} ms", d.as_millis()));
    println!(
        "  drain latency: last task {} (median {}), {}/{n} saw it; {} task(s) with a failing source \
         and {} on the SSM fallback at the end",
        ms(o.latency_max),
        ms(o.latency_median),
        o.saw,
        o.failing,
        o.degraded
    );
}

fn main() {
    let sizes: Vec<usize> = std::env::var("FLOTILLA_BENCH_TASKS")
        .unwrap_or_else(|_| "10,100,1000".to_owned())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let window = Duration::from_secs(env_or("FLOTILLA_BENCH_SECONDS", 40));
    let poll = Duration::from_secs(env_or("FLOTILLA_BENCH_POLL_SECONDS", 5));
    let patterns: Vec<String> = std::env::var("FLOTILLA_BENCH_PATTERNS")
        .unwrap_or_else(|_| "board,ssm".to_owned())
        .split(',')
        .map(|s| s.trim().to_owned())
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let w = World::on(Moto::start(), "bench").await;
        println!(
            "drain signal: poll {} s ±20 %, window {} s, draining marked halfway",
            poll.as_secs(),
            window.as_secs()
        );
        for &n in &sizes {
            for pattern in &patterns {
                let outcome = run_one(&w, pattern, n, window, poll).await;
                print(pattern, n, poll, &outcome);
            }
        }
    });
}
