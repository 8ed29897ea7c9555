//! The `flotilla-aws-agent` executable as a task runs it: its log on stderr (startup, drain
//! transitions, readiness, the SIGTERM sequence), `install` (what an init container without `cp`
//! runs), SSM against moto, and a persistent SSM failure (a TLS handshake that fails in an image
//! without a CA bundle) shown in the health document.
//!
//! They run the debug build of `flotilla-aws-agent`, or the executable named by
//! `FLOTILLA_TEST_AGENT_BIN` (e.g. `target/static/flotilla-aws-agent-x86_64` after
//! `scripts/build-static.sh x86_64`, to run the same checks on the static musl build).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flotilla_testkit::moto::Moto;

/// The agent executable under test.
fn agent() -> PathBuf {
    std::env::var_os("FLOTILLA_TEST_AGENT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_flotilla-aws-agent")))
}
const ID: &str = "20261125-190633-k3x9";
const LIMIT: Duration = Duration::from_secs(30);

/// The agent's tests' Python app (standard library only).
fn app_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../flotilla-agent/tests/agent/apps/app.py")
}

use flotilla_testkit::net::free_port;

/// A running agent: its stderr collected as it comes, SIGTERM then SIGKILL by PID when dropped.
struct Running {
    child: Child,
    listen: String,
    log: Arc<Mutex<String>>,
}

impl Running {
    /// Starts the agent with `env` (on top of a clean AWS and FLOTILLA environment) in front of
    /// the test app.
    fn start(env: &[(&str, &str)]) -> Running {
        let listen = format!("127.0.0.1:{}", free_port());
        let mut cmd = Command::new(agent());
        for key in [
            "ECS_CONTAINER_METADATA_URI_V4",
            "FLOTILLA_DRAIN_STATE_URL",
            "FLOTILLA_DRAIN_STATE_FILE",
            "FLOTILLA_READINESS_URL",
            "FLOTILLA_DRAIN_SOURCE",
            "FLOTILLA_LOG",
            "AWS_ENDPOINT_URL",
            "AWS_PROFILE",
        ] {
            cmd.env_remove(key);
        }
        cmd.env("FLOTILLA_DEPLOYMENT_NAME", "shop")
            .env("FLOTILLA_DEPLOYMENT_ID", ID)
            .env("FLOTILLA_INSTANCE", "task-1")
            .env("FLOTILLA_DRAIN_POLL_SECONDS", "1")
            .env("FLOTILLA_DRAIN_GRACE_SECONDS", "0")
            .env("FLOTILLA_APP_STOP_TIMEOUT_SECONDS", "5")
            .envs(env.iter().copied())
            .args([
                "--listen",
                &listen,
                "--app-port",
                &free_port().to_string(),
                "--",
                "python3",
                "-u",
            ])
            .arg(app_script())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start flotilla-aws-agent");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut text = sink.lock().unwrap_or_else(|e| e.into_inner());
                text.push_str(&line);
                text.push('\n');
            }
        });
        Running { child, listen, log }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Polls the health document until `want` holds, failing after [`LIMIT`] with the last
    /// document and the log.
    fn health_until(
        &self,
        what: &str,
        want: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + LIMIT;
        let mut last = serde_json::Value::Null;
        while Instant::now() < deadline {
            if let Some(doc) = get_json(&self.listen, "/healthz") {
                if want(&doc) {
                    return doc;
                }
                last = doc;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "{what}: not seen in {LIMIT:?}; last health {last:#}\nlog:\n{}",
            self.log()
        );
    }

    fn log_until(&self, needle: &str) {
        let deadline = Instant::now() + LIMIT;
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the log never said {needle:?}:\n{}", self.log());
    }

    /// SIGTERM by PID, then the exit status.
    fn terminate(&mut self) -> std::process::ExitStatus {
        signal(self.child.id(), "TERM");
        let deadline = Instant::now() + LIMIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                // Let the reader thread take the last lines.
                std::thread::sleep(Duration::from_millis(200));
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the agent did not exit:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        flotilla_testkit::procs::terminate(&mut self.child, Duration::from_secs(10));
    }
}

fn signal(pid: u32, name: &str) {
    assert!(
        flotilla_testkit::procs::kill(pid, &format!("-{name}")),
        "kill -{name} {pid}"
    );
}

/// `GET path` on `addr`; the JSON body, whatever the status.
fn get_json(addr: &str, path: &str) -> Option<serde_json::Value> {
    let response =
        flotilla_testkit::http::exchange(addr, addr, "GET", path, &[], b"", Duration::from_secs(5))
            .ok()?;
    serde_json::from_slice(&response.body).ok()
}

fn ssm_put(moto: &Moto, name: &str, value: &str) {
    let body = format!(r#"{{"Name":"{name}","Value":"{value}","Type":"String","Overwrite":true}}"#);
    let (status, out) = moto
        .http("POST", "/", &ssm_headers("PutParameter").as_refs(), &body)
        .expect("ssm");
    assert_eq!(status, 200, "PutParameter: {out}");
}

fn ssm_get(moto: &Moto, name: &str) -> Option<String> {
    let body = format!(r#"{{"Name":"{name}"}}"#);
    let (status, out) = moto
        .http("POST", "/", &ssm_headers("GetParameter").as_refs(), &body)
        .expect("ssm");
    if status != 200 {
        return None;
    }
    let doc: serde_json::Value = serde_json::from_str(&out).ok()?;
    doc["Parameter"]["Value"].as_str().map(str::to_owned)
}

fn ssm_headers(action: &str) -> Vec<(&'static str, String)> {
    vec![
        ("Content-Type", "application/x-amz-json-1.1".to_owned()),
        ("X-Amz-Target", format!("AmazonSSM.{action}")),
        (
            "Authorization",
            "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/ssm/aws4_request, \
             SignedHeaders=host, Signature=0"
                .to_owned(),
        ),
    ]
}

trait HeadersExt {
    fn as_refs(&self) -> Vec<(&str, &str)>;
}

impl HeadersExt for Vec<(&'static str, String)> {
    fn as_refs(&self) -> Vec<(&str, &str)> {
        self.iter().map(|(k, v)| (*k, v.as_str())).collect()
    }
}

fn aws_env(endpoint: &str) -> Vec<(&'static str, String)> {
    vec![
        ("FLOTILLA_DRAIN_SOURCE", "ssm".to_owned()),
        ("AWS_ENDPOINT_URL", endpoint.to_owned()),
        ("AWS_REGION", "us-east-1".to_owned()),
        ("AWS_ACCESS_KEY_ID", "testing".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "testing".to_owned()),
        ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
    ]
}

#[test]
fn the_agent_logs_startup_drain_transitions_and_the_stop_sequence_to_stderr() {
    if flotilla_testkit::slow::skip("moto") {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state");
    std::fs::write(&state, "active").expect("state");
    let state_path = state.display().to_string();
    let mut agent = Running::start(&[("FLOTILLA_DRAIN_STATE_FILE", &state_path)]);
    agent.health_until("healthy and active", |d| d["state"] == "active");
    std::fs::write(&state, "draining").expect("state");
    agent.health_until("draining", |d| d["state"] == "draining");
    agent.log_until("reported readiness");
    let status = agent.terminate();
    // The app died of the SIGTERM passed on to it: the agent exits with 128 + 15.
    assert_eq!(status.code(), Some(143), "{status:?}");
    let log = agent.log();
    for line in [
        "starting the flotilla agent",
        "agent started",
        "version state changed from=\"active\" to=\"draining\"",
        "reported readiness readiness=draining",
        "stop signal received",
        "the app stopped; the agent exits",
    ] {
        assert!(log.contains(line), "the log lacks {line:?}:\n{log}");
    }
    // The container log is read as text: no colour codes.
    assert!(!log.contains('\u{1b}'), "ANSI escapes in the log:\n{log}");
}

#[test]
fn install_copies_the_agent_with_mode_0755_and_the_copy_runs() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("temp dir");
    let to = dir.path().join("agent");
    let out = Command::new(agent())
        .args(["install", &to.display().to_string()])
        .output()
        .expect("run install");
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("to {}", to.display())),
        "{out:?}"
    );
    assert_eq!(
        std::fs::read(&to).expect("copied"),
        std::fs::read(agent()).expect("original"),
        "a byte-for-byte copy"
    );
    let mode = std::fs::metadata(&to).expect("stat").permissions().mode();
    assert_eq!(mode & 0o777, 0o755);
    let version = Command::new(&to)
        .arg("--version")
        .output()
        .expect("run the copy");
    assert!(version.status.success(), "{version:?}");
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("flotilla-aws-agent {}", env!("CARGO_PKG_VERSION"))
    );

    // A missing volume is named, with exit code 1.
    let missing = dir.path().join("no-volume/agent");
    let out = Command::new(agent())
        .args(["install", &missing.display().to_string()])
        .output()
        .expect("run install");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a directory"),
        "{out:?}"
    );
}

#[test]
fn the_agent_drains_from_ssm_on_moto_and_writes_readiness() {
    if flotilla_testkit::slow::skip("moto") {
        return;
    }
    let moto = Moto::start();
    let env = aws_env(&moto.url());
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let state = format!("/apps/shop/{ID}/state");
    ssm_put(&moto, &state, "active");
    let agent = Running::start(&env);
    let doc = agent.health_until("active from SSM", |d| d["state"] == "active");
    assert_eq!(doc["drain_source"]["ok"], true, "{doc:#}");
    ssm_put(&moto, &state, "draining");
    agent.health_until("draining from SSM", |d| d["state"] == "draining");
    agent.log_until("reported readiness");
    assert_eq!(
        ssm_get(&moto, &format!("/apps/shop/{ID}/tasks/task-1")).as_deref(),
        Some("draining")
    );
    assert!(
        agent.log().contains(&format!("SSM {state}")),
        "{}",
        agent.log()
    );
}

/// A plain S3 request to moto (it does not check signatures; the credential scope routes it).
fn s3_put(moto: &Moto, path: &str, body: &str) {
    let auth = "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/s3/aws4_request, \
                SignedHeaders=host, Signature=0";
    let (status, out) = moto
        .http("PUT", path, &[("Authorization", auth)], body)
        .expect("s3");
    assert_eq!(status, 200, "PUT {path}: {out}");
}

#[test]
fn told_the_boards_bucket_the_agent_drains_from_the_board() {
    if flotilla_testkit::slow::skip("moto") {
        return;
    }
    let moto = Moto::start();
    let mut env = aws_env(&moto.url());
    env.push(("FLOTILLA_DRAIN_BUCKET", "flotilla-shop-board".to_owned()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    s3_put(&moto, "/flotilla-shop-board", "");
    let board = |state: &str, generation: u64| {
        format!(r#"{{"generation":{generation},"versions":{{"{ID}":"{state}"}}}}"#)
    };
    s3_put(
        &moto,
        "/flotilla-shop-board/drain/shop.json",
        &board("active", 1),
    );
    // SSM says otherwise: the board is what the agent reads.
    ssm_put(&moto, &format!("/apps/shop/{ID}/state"), "draining");
    let agent = Running::start(&env);
    let doc = agent.health_until("active from the board", |d| d["state"] == "active");
    assert_eq!(doc["drain_source"]["ok"], true, "{doc:#}");
    s3_put(
        &moto,
        "/flotilla-shop-board/drain/shop.json",
        &board("draining", 2),
    );
    agent.health_until("draining from the board", |d| d["state"] == "draining");
    // Readiness still goes to SSM.
    agent.log_until("reported readiness");
    assert_eq!(
        ssm_get(&moto, &format!("/apps/shop/{ID}/tasks/task-1")).as_deref(),
        Some("draining")
    );
    assert!(
        agent
            .log()
            .contains("S3 s3://flotilla-shop-board/drain/shop.json"),
        "{}",
        agent.log()
    );
}

/// A board the task cannot read (here its bucket does not exist; in a task: no route to S3, a
/// role without `s3:GetObject`) must not leave the task deaf: the agent reads SSM instead, drains
/// and reports readiness, and says what it is working around.
#[test]
fn an_unreadable_board_falls_back_to_ssm_and_says_so() {
    if flotilla_testkit::slow::skip("moto") {
        return;
    }
    let moto = Moto::start();
    let mut env = aws_env(&moto.url());
    env.push(("FLOTILLA_DRAIN_BUCKET", "no-such-board-bucket".to_owned()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    ssm_put(&moto, &format!("/apps/shop/{ID}/state"), "active");
    let agent = Running::start(&env);
    let doc = agent.health_until("active from SSM, the board degraded", |d| {
        d["state"] == "active" && d["drain_source"]["degraded"].is_string()
    });
    let degraded = doc["drain_source"]["degraded"].as_str().unwrap_or_default();
    assert!(
        degraded.contains("read drain board s3://no-such-board-bucket/drain/shop.json")
            && degraded.contains("NoSuchBucket")
            && degraded.contains("from SSM instead"),
        "{doc:#}"
    );
    // Working around it is not a failure of the drain signal.
    assert_eq!(doc["drain_source"]["ok"], true, "{doc:#}");
    agent.log_until("the drain source is working around a failure");

    ssm_put(&moto, &format!("/apps/shop/{ID}/state"), "draining");
    agent.health_until("draining from SSM", |d| d["state"] == "draining");
    agent.log_until("reported readiness");
    assert_eq!(
        ssm_get(&moto, &format!("/apps/shop/{ID}/tasks/task-1")).as_deref(),
        Some("draining")
    );
}

#[test]
fn a_tls_failure_without_a_ca_bundle_shows_as_persistent_in_the_health_document() {
    if flotilla_testkit::slow::skip("moto") {
        return;
    }
    // An image without a CA bundle: rustls-native-certs reads these and finds nothing.
    let dir = tempfile::tempdir().expect("temp dir");
    let empty_file = dir.path().join("empty.pem");
    std::fs::write(&empty_file, "").expect("write");
    let empty_dir = dir.path().join("certs");
    std::fs::create_dir(&empty_dir).expect("mkdir");
    // A TLS endpoint whose certificate no trusted root vouches for: moto with a self-signed one.
    let moto = Moto::start_tls();
    let mut env = aws_env(&moto.https_url());
    env.push(("SSL_CERT_FILE", empty_file.display().to_string()));
    env.push(("SSL_CERT_DIR", empty_dir.display().to_string()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let agent = Running::start(&env);

    // The agent starts and serves without a bundle, trusting its built-in roots.
    agent.log_until("TLS: trusting 0 root certificate(s) from the system and");
    let doc = agent.health_until("a persistent drain-source failure", |d| {
        d["drain_source"]["persistent_failure"] == true
    });
    let source = &doc["drain_source"];
    assert_eq!(source["ok"], false, "{doc:#}");
    assert!(
        source["consecutive_failures"]
            .as_u64()
            .is_some_and(|n| n >= 3),
        "{doc:#}"
    );
    assert!(source["failing_since_ms"].as_u64().is_some(), "{doc:#}");
    let error = source["error"].as_str().unwrap_or_default();
    assert!(error.contains(&format!("/apps/shop/{ID}/state")), "{doc:#}");
    assert!(
        error.contains("invalid peer certificate: UnknownIssuer"),
        "the error names the TLS failure: {doc:#}"
    );
    assert!(error.contains("SSL_CERT_FILE"), "and what to do: {doc:#}");
    // The app is fine, so the load balancer still sees a healthy task.
    assert_eq!(doc["app"]["healthy"], true, "{doc:#}");
    agent.log_until("the drain source keeps failing");
}
