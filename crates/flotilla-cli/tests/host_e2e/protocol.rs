//! The daemon's socket protocol seen from outside: a client or a daemon of another protocol is
//! refused with what to do, a workflow's progress arrives while it runs and before its outcome,
//! a cancelled workflow stops and frees its lock, and a workflow's error keeps its kind (and so
//! the CLI's exit code).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use flotilla_core::reaper::ReapPolicy;
use flotilla_core::{DeploymentId, DeploymentName, Timestamp};
use flotilla_engine::ports::ImageRequest;
use flotilla_engine::workflows::{DeployRequest, Settings, Workflow};
use serde_json::{Value, json};

use crate::util::{self, HostEnv, Timing};

const TIMING: Timing = Timing {
    poll: 1,
    grace: 30,
    interval: 30,
    health_timeout: 30,
};

fn socket(env: &HostEnv) -> PathBuf {
    env.app().join(".flotilla/host/daemon.sock")
}

/// One connection to the daemon's socket, speaking raw lines.
struct Raw {
    write: UnixStream,
    read: BufReader<UnixStream>,
}

impl Raw {
    fn connect(socket: &Path) -> Raw {
        let write = UnixStream::connect(socket).expect("connect to the daemon's socket");
        write
            .set_read_timeout(Some(Duration::from_secs(60)))
            .expect("read timeout");
        let read = BufReader::new(write.try_clone().expect("clone the stream"));
        Raw { write, read }
    }

    fn send(&mut self, line: &Value) {
        let mut text = line.to_string();
        text.push('\n');
        self.write.write_all(text.as_bytes()).expect("send a line");
    }

    fn receive(&mut self) -> Value {
        let mut line = String::new();
        let n = self.read.read_line(&mut line).expect("read a line");
        assert!(n > 0, "the daemon closed the connection");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
    }

    /// Lines until the first that is not a progress event, each with when it arrived.
    fn until_answer(&mut self, started: Instant) -> Vec<(Duration, Value)> {
        let mut lines = Vec::new();
        loop {
            let line = self.receive();
            let event = line.get("event").is_some();
            lines.push((started.elapsed(), line));
            if !event {
                return lines;
            }
        }
    }
}

/// A `run` request for a deploy of `id` of the example app, built as a command of this
/// flotilla would.
fn run_deploy(env: &HostEnv, id: &DeploymentId, build: &str) -> Value {
    let workflow = Workflow::Deploy {
        request: DeployRequest {
            id: id.clone(),
            image: ImageRequest::Build(env.app().to_path_buf()),
            instances: 1,
            min_healthy: 1,
            break_lock: false,
            env: Default::default(),
        },
        canary: None,
    };
    let settings = Settings {
        name: DeploymentName::new("e2e").expect("valid"),
        policy: ReapPolicy {
            min_age: Duration::from_secs(1),
            max_age: Duration::from_secs(3600),
            consecutive_ready_passes: 1,
            deploying_timeout: Duration::from_secs(600),
        },
        budget: Default::default(),
        health_timeout: Duration::from_secs(30),
        health_poll: Duration::from_millis(200),
        lock_ttl: Duration::from_secs(600),
        lock_owner: format!("tester@e2e (pid {})", std::process::id()),
        local_holders: None,
    };
    json!({
        "op": "run",
        "workflow": workflow,
        "settings": settings,
        "app": { "command": "exec ./hello", "health_path": "/healthz", "build": build },
    })
}

fn new_id(n: u64) -> DeploymentId {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970");
    DeploymentId::generate(
        Timestamp::from_millis(u64::try_from(now.as_millis()).expect("fits")),
        n,
    )
}

#[test]
fn a_daemon_refuses_a_client_of_another_protocol_and_says_what_to_do() {
    let env = HostEnv::new(TIMING);
    let out = env.flotilla(&["status"]);
    assert!(out.status.success(), "{out:?}");
    let pid = env.daemon_pid().expect("status started the daemon");

    // A newer flotilla says its protocol in its hello, and hears the daemon's.
    let mut newer = Raw::connect(&socket(&env));
    newer.send(&json!({"op": "hello", "name": "e2e", "protocol": 99}));
    assert_eq!(
        newer.receive(),
        json!({"mismatch": {"protocol": 2, "pid": pid}})
    );

    // A flotilla of protocol 1 sent no protocol, then one request per port call.
    let mut older = Raw::connect(&socket(&env));
    older.send(&json!({"op": "hello", "name": "e2e"}));
    let info = older.receive();
    assert_eq!(info["ok"]["protocol"], 2, "{info}");
    older.send(&json!({"op": "compute_list"}));
    let refused = older.receive();
    let message = refused["err"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!("(pid {pid}) speaks protocol 2"))
            && message.contains("`compute_list`")
            && message.contains("run `flotilla host upgrade` with that flotilla"),
        "{refused}"
    );

    // A workflow's error crosses the socket with its kind: an unknown version is refused (6).
    let out = env.flotilla(&["drain", "20200101-000000-aaaa"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "{stderr}");
    assert!(
        stderr.contains("no version 20200101-000000-aaaa of `e2e`"),
        "{stderr}"
    );
}

#[test]
fn a_flotilla_meeting_a_daemon_of_protocol_1_exits_2_and_says_to_upgrade() {
    let env = HostEnv::new(TIMING);
    let state = env.app().join(".flotilla/host");
    std::fs::create_dir_all(&state).expect("state directory");
    // A daemon of protocol 1 answers the hello with its identity, which names no protocol.
    let listener = UnixListener::bind(socket(&env)).expect("bind the socket");
    let info = json!({"ok": {
        "name": "e2e",
        "pid": std::process::id(),
        "listen": env.listen.to_string(),
        "admin_listen": env.admin.to_string(),
        "state_dir": state,
    }});
    let old_daemon = std::thread::spawn(move || {
        let (stream, _) = listener.accept().expect("the command connects");
        let mut read = BufReader::new(stream.try_clone().expect("clone"));
        let mut hello = String::new();
        read.read_line(&mut hello).expect("the hello");
        let mut answer = info.to_string();
        answer.push('\n');
        (&stream).write_all(answer.as_bytes()).expect("answer");
        // Anything after the hello would be a request of the new protocol.
        let mut next = String::new();
        let _ = read.read_line(&mut next);
        (hello, next)
    });

    let out = env.flotilla(&["status"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "the running flotilla host daemon (pid {}) speaks protocol 1 and this flotilla \
             speaks protocol 2",
            std::process::id()
        )),
        "{stderr}"
    );
    assert!(stderr.contains("run `flotilla host upgrade`"), "{stderr}");
    let (hello, next) = old_daemon.join().expect("the old daemon");
    assert!(hello.contains(r#""protocol":2"#), "{hello}");
    assert_eq!(next, "", "nothing is sent to a daemon of another protocol");
    assert!(env.daemon_pid().is_none(), "no daemon was started");
    std::fs::remove_file(socket(&env)).expect("remove the old daemon's socket");
}

#[test]
fn a_workflow_streams_its_progress_before_its_outcome_and_a_cancel_stops_it_and_frees_its_lock() {
    let env = HostEnv::new(TIMING);
    let out = env.flotilla(&["status"]);
    assert!(out.status.success(), "{out:?}");
    let hello = util::hello_bin();

    // A deploy whose build takes two seconds: its output arrives while it runs.
    let v1 = new_id(1);
    let build = format!(
        "echo first; sleep 2; echo second; cp {} ./hello",
        hello.display()
    );
    let mut raw = Raw::connect(&socket(&env));
    let started = Instant::now();
    raw.send(&run_deploy(&env, &v1, &build));
    let lines = raw.until_answer(started);
    let (done, answer) = lines.last().expect("an answer");
    assert_eq!(answer["ok"]["outcome"], "deployed", "{lines:#?}");
    assert_eq!(answer["ok"]["report"]["deployment_id"], v1.as_str());
    let first = lines
        .iter()
        .find(|(_, l)| l["event"]["line"] == "first")
        .map(|(t, _)| *t)
        .unwrap_or_else(|| panic!("the build's first line: {lines:#?}"));
    assert!(
        *done - first >= Duration::from_millis(1500),
        "the first line came as it was printed, not with the outcome: {lines:#?}"
    );
    assert!(lines.len() > 3, "the deploy's own events too: {lines:#?}");

    // Cancelled during its build: the deploy stops before its next step and frees its lock.
    let v2 = new_id(2);
    let build = format!("sleep 2; cp {} ./hello", hello.display());
    let mut raw = Raw::connect(&socket(&env));
    let started = Instant::now();
    raw.send(&run_deploy(&env, &v2, &build));
    let first = raw.receive();
    assert!(first.get("event").is_some(), "{first}");
    raw.send(&json!({"op": "cancel"}));
    let lines = raw.until_answer(started);
    let (_, answer) = lines.last().expect("an answer");
    assert!(answer.get("failed").is_some(), "{lines:#?}");
    drop(raw);
    let out = env.flotilla(&["status", "--json"]);
    let status: Value = serde_json::from_slice(&out.stdout).expect("status --json");
    assert_eq!(
        status["lock"],
        Value::Null,
        "the lock was released: {status}"
    );
    let active: Vec<&str> = status["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .filter(|v| v["record"]["version"]["state"] == "active")
        .filter_map(|v| v["record"]["version"]["id"].as_str())
        .collect();
    assert_eq!(active, [v1.as_str()], "traffic stayed on v1: {status}");

    // Running the same deploy again resumes it.
    let out = env.flotilla(&["deploy", "--id", v2.as_str()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn ctrl_c_during_a_deploy_exits_130_and_the_same_deploy_resumes_without_breaking_a_lock() {
    let env = HostEnv::new(TIMING);
    let hello = util::hello_bin();
    env.configure(
        &format!("sleep 2 && cp {} ./hello", hello.display()),
        "exec ./hello",
    );
    let id = new_id(3);
    let cli = std::process::Command::new(util::flotilla_bin())
        .args(["deploy", "--id", id.as_str()])
        .current_dir(env.app())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start flotilla deploy");
    let log = env
        .app()
        .join(format!(".flotilla/host/logs/build-{id}.log"));
    let building = util::eventually(Duration::from_secs(30), || log.exists().then_some(()));
    assert!(building.is_some(), "the deploy reached its build");
    util::kill(cli.id(), "-INT");
    let out = cli.wait_with_output().expect("wait for flotilla deploy");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains(&format!("flotilla deploy --id {id}")),
        "{stderr}"
    );

    // The daemon stopped the deploy after its build and released its lock.
    let out = env.flotilla(&["status", "--json"]);
    let status: Value = serde_json::from_slice(&out.stdout).expect("status --json");
    assert_eq!(status["lock"], Value::Null, "{status}");
    env.configure(&format!("cp {} ./hello", hello.display()), "exec ./hello");
    let out = env.flotilla(&["deploy", "--id", id.as_str()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("broke the deploy lock"), "{stderr}");
    assert!(stderr.contains("resumed an interrupted deploy"), "{stderr}");
}
