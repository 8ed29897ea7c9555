//! The standalone binary: configured from the environment, stopped by a real SIGTERM, printing
//! its EMF lines on stdout.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::util::{self, ID, get, health_until};

/// Stops the agent process when dropped: SIGTERM (so it stops its app), then SIGKILL.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        flotilla_testkit::procs::terminate(&mut self.0, Duration::from_secs(10));
    }
}

fn agent_command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flotilla-agent"));
    cmd.env_remove("ECS_CONTAINER_METADATA_URI_V4")
        .env_remove("FLOTILLA_DRAIN_STATE_URL")
        .env_remove("FLOTILLA_READINESS_URL")
        .env_remove("FLOTILLA_LOG")
        .stdin(Stdio::null());
    cmd
}

#[tokio::test]
async fn the_binary_prints_emf_reports_readiness_and_exits_with_the_apps_code_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let listen = format!("127.0.0.1:{}", util::free_port());
    let mut cmd = agent_command();
    cmd.env("FLOTILLA_DEPLOYMENT_NAME", "shop")
        .env("FLOTILLA_DEPLOYMENT_ID", ID)
        .env("FLOTILLA_INSTANCE", "task-bin")
        .env("FLOTILLA_DRAIN_POLL_SECONDS", "1")
        .env("FLOTILLA_DRAIN_GRACE_SECONDS", "0")
        .env("FLOTILLA_APP_STOP_TIMEOUT_SECONDS", "6")
        .env("FLOTILLA_DRAIN_STATE_FILE", &state)
        .env(
            "FLOTILLA_READINESS_FILE",
            dir.path().join("ready-{instance}"),
        )
        .env("APP_EXIT_CODE", "5")
        .args([
            "--listen",
            &listen,
            "--app-port",
            &util::free_port().to_string(),
            "--",
        ])
        .args(["python3", "-u"])
        .arg(util::app_script())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("start flotilla-agent");
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let mut running = Running(child);
    let (lines_tx, lines) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    let log = std::thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            text.push_str(&line);
            text.push('\n');
        }
        text
    });
    let addr = listen.parse().expect("addr");

    std::fs::write(&state, "active").expect("state");
    health_until(addr, "healthy and active", |s, d| {
        s == 200 && d["state"] == "active"
    })
    .await;
    let next_emf = |ready: u64| {
        let deadline = Instant::now() + util::LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no EMF line with ShutdownReady={ready}"));
            let Ok(doc) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            assert_eq!(
                doc["_aws"]["CloudWatchMetrics"][0]["Namespace"],
                "App/Drain"
            );
            assert_eq!(doc["deployment_name"], "shop");
            assert_eq!(doc["deployment_id"], ID);
            assert_eq!(doc["task_id"], "task-bin");
            if doc["ShutdownReady"] == ready {
                return doc;
            }
        }
    };
    next_emf(0);
    std::fs::write(&state, "draining").expect("state");
    next_emf(1);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("ready-task-bin")).expect("readiness written"),
        "draining"
    );
    let fresh = get(addr, "/", &[]).await.expect("fresh");
    assert_eq!(fresh.status, 503);

    kill(Pid::from_raw(running.0.id() as i32), Signal::SIGTERM).expect("SIGTERM");
    let status = util::within("the agent to exit", async {
        loop {
            if let Some(status) = running.0.try_wait().expect("wait") {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(status.code(), Some(5), "{status:?}");
    let log = log.join().expect("stderr reader");
    assert!(log.contains("nothing cut"), "{log}");
}

#[test]
fn the_binary_names_every_missing_setting_and_exits_2() {
    let out = agent_command()
        .env_remove("FLOTILLA_DEPLOYMENT_NAME")
        .env_remove("FLOTILLA_NAME")
        .env_remove("FLOTILLA_DEPLOYMENT_ID")
        .args(["--", "true"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("FLOTILLA_DEPLOYMENT_NAME") && err.contains("FLOTILLA_DEPLOYMENT_ID"),
        "{err}"
    );
}
