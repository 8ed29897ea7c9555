//! The task definition a deploy registers, executed for real: the deploy builds the app image and
//! the agent image with a private Docker Engine and pushes them to a private registry named as the
//! baseline's repository; the task definition registered in moto then runs in that Docker as ECS
//! would (init container, shared volume, entryPoint and command, environment, secrets resolved from
//! moto's SSM, read-only root with `/tmp`), with the agent talking to moto's SSM.
//!
//! The app image is a Debian base without CA certificates, with its own ENTRYPOINT and CMD and no
//! trace of flotilla in it. Needs root (dockerd), Debian's docker.io, docker-registry and
//! busybox-static (`scripts/docker.sh`), and the static agent (`scripts/build-static.sh x86_64`,
//! run here if the agent is missing).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use aws_sdk_ssm::types::ParameterType;
use flotilla_engine::Engine;
use flotilla_engine::ports::{AppEnv, ImageRequest, SecretSource};
use flotilla_engine::workflows::DeployRequest;
use flotilla_testkit::docker::{DebianSuite, Docker, Registry};
use flotilla_testkit::ecs_exec::{RunOptions, TaskDefinition, run_task};

use crate::support::{World, next_id};

/// The static x86_64 agent: the test build `scripts/test.sh` makes (or a release one).
fn static_agent() -> PathBuf {
    crate::support::static_binary("flotilla-aws-agent")
}

use flotilla_testkit::net::free_port;

/// `curl`'s status code and body for a GET on loopback.
fn get(url: &str) -> Option<(u16, String)> {
    let out = Command::new("curl")
        .args(["-s", "-m", "3", "-w", "\n%{http_code}", url])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n')?;
    Some((code.trim().parse().ok()?, body.to_owned()))
}

use flotilla_testkit::wait::until as wait_until;

/// The task definition as `describe-task-definition` prints it, straight from moto's API.
fn task_definition_json(moto_url: &str, arn: &str) -> String {
    let out = Command::new("curl")
        .args([
            "-s",
            "-X",
            "POST",
            moto_url,
            "-H",
            "X-Amz-Target: AmazonEC2ContainerServiceV20141113.DescribeTaskDefinition",
            "-H",
            "Content-Type: application/x-amz-json-1.1",
            "-H",
            "Authorization: AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/ecs/aws4_request, SignedHeaders=host, Signature=x",
            "-d",
            &format!("{{\"taskDefinition\": \"{arn}\"}}"),
        ])
        .output()
        .expect("curl moto");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The base images an app may be built on.
enum Base {
    /// Debian minbase of this suite, without CA certificates.
    Debian(DebianSuite),
    /// Nothing: no libc, no shell but the app's own busybox.
    Scratch,
}

/// What a scenario checks once its task is up.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Check {
    /// The agent reaches moto's SSM: it drains when told and `docker stop` stops it.
    Drains,
    /// The agent's drain source is a closed port: the failure shows in its health document and,
    /// once its log reaches CloudWatch as the awslogs driver would ship it, in `status`.
    SourceUnreachable,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_on_debian_without_ca_certificates_runs_with_the_agent_wrapping_its_entrypoint() {
    if flotilla_testkit::slow::skip("moto and a private Docker Engine") {
        return;
    }
    run_scenario(Base::Debian(DebianSuite::Bookworm), "dock", Check::Drains).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_on_an_old_glibc_runs_with_the_static_agent() {
    if flotilla_testkit::slow::skip("moto and a private Docker Engine") {
        return;
    }
    run_scenario(
        Base::Debian(DebianSuite::Bullseye),
        "dockold",
        Check::Drains,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_from_scratch_runs_with_the_static_agent() {
    if flotilla_testkit::slow::skip("moto and a private Docker Engine") {
        return;
    }
    run_scenario(Base::Scratch, "dockscratch", Check::Drains).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_cannot_reach_its_drain_source_says_so_in_health_and_status() {
    if flotilla_testkit::slow::skip("moto and a private Docker Engine") {
        return;
    }
    run_scenario(Base::Scratch, "docknossm", Check::SourceUnreachable).await;
}

/// ECS stopping a task under an open tab (a Spot interruption, a scale-in): `docker stop` sends
/// the agent SIGTERM with the task's stop timeout. The tab's event stream is not cut at the
/// deadline: before it, the agent ends the stream between two events, so the browser's
/// `EventSource` reconnects (to another task of the version), and says so in its log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_task_asks_its_open_stream_to_reconnect_before_its_deadline() {
    if flotilla_testkit::slow::skip("moto and a private Docker Engine") {
        return;
    }
    let Fixture {
        _scratch,
        app,
        mut w,
        registry: _,
    } = prepare(Base::Scratch, "dockstop").await;
    // 12 s: the app gets 4, the proxy's cut 1, sessions 7, asked to move 3.5 s before the end.
    w.settings.task.stop_timeout_seconds = 12;
    let id = next_id();
    let engine = Engine::new(
        w.ports(),
        w.engine_settings("alice", crate::support::eager_policy(1)),
    );
    let request = DeployRequest {
        image: ImageRequest::Build(app.clone()),
        instances: 1,
        min_healthy: 1,
        ..World::request(&id)
    };
    w.deploy_request(&engine, request).await.expect("deploy");
    let (task, _) = start_task(&w, &id, w.moto.url()).await;
    let agent = format!("http://127.0.0.1:{}", w.settings.task.container_port);
    wait_until("the agent is healthy", Duration::from_secs(60), || {
        get(&format!("{agent}/healthz")).filter(|(code, _)| *code == 200)
    });
    let tab = Command::new("curl")
        .args(["-sN", "-m", "60", "-H"])
        .arg(format!("X-Flotilla-Deployment: {id}"))
        .arg(format!("{agent}/cgi-bin/events"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("curl");
    wait_until(
        "the stream counts as a session",
        Duration::from_secs(30),
        || {
            let (_, body) = get(&format!("{agent}/healthz"))?;
            let doc: serde_json::Value = serde_json::from_str(&body).ok()?;
            (doc["sessions"] == 1).then_some(())
        },
    );

    let stopping = std::time::Instant::now();
    let exits = tokio::task::block_in_place(|| task.stop()).expect("docker stop");
    let tab = tab.wait_with_output().expect("curl ends");
    let took = stopping.elapsed();
    let stream = String::from_utf8_lossy(&tab.stdout).into_owned();
    assert!(
        tab.status.success(),
        "the stream ended cleanly (curl {:?}), not cut: {stream:?}",
        tab.status
    );
    assert!(stream.starts_with("data: 0\n\n"), "{stream:?}");
    assert!(
        stream.ends_with("\n\n"),
        "it ends between two events: {stream:?}"
    );
    assert!(
        took < Duration::from_secs(12),
        "the container stopped within its stop timeout: {took:?} {exits:?}"
    );
    let logs = task.logs("app").expect("the agent's log").to_string();
    assert!(
        logs.contains("asking 0 WebSocket(s) and 1 event stream(s) to reconnect"),
        "{logs}"
    );
    assert!(logs.contains("asked_to_move_event_streams=1"), "{logs}");
}

/// Two deploys, each task definition executed in Docker: a session opened on the first version
/// (an old tab's event stream) keeps it from being retired while it lasts, however many reaper
/// passes run; once it ends and the grace period has passed, the agent reports ready and the next
/// pass retires the version, whose affinity rules then answer the stale status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_session_keeps_the_first_version_until_it_ends_then_the_reaper_retires_it() {
    if flotilla_testkit::slow::skip("moto and a private Docker Engine") {
        return;
    }
    let Fixture {
        _scratch,
        app,
        mut w,
        registry: _,
    } = prepare(Base::Scratch, "docktwo").await;
    w.settings.task.drain_poll_seconds = 1;
    w.settings.task.drain_grace_seconds = 1;
    let policy = crate::support::eager_policy(1);
    let request = |id: &flotilla_core::DeploymentId| DeployRequest {
        image: ImageRequest::Build(app.clone()),
        instances: 1,
        min_healthy: 1,
        ..World::request(id)
    };

    // Version 1, and a tab on it with an open event stream.
    let v1 = next_id();
    let engine = Engine::new(w.ports(), w.engine_settings("alice", policy));
    w.deploy_request(&engine, request(&v1))
        .await
        .expect("first deploy");
    let (task1, task1_id) = start_task(&w, &v1, w.moto.url()).await;
    let agent1 = format!("http://127.0.0.1:{}", w.settings.task.container_port);
    wait_until(
        "version 1's agent is healthy",
        Duration::from_secs(60),
        || get(&format!("{agent1}/healthz")).filter(|(code, _)| *code == 200),
    );
    let mut tab = Command::new("curl")
        .args(["-sN", "-m", "300", "-H"])
        .arg(format!("X-Flotilla-Deployment: {v1}"))
        .arg(format!("{agent1}/cgi-bin/events"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("curl");
    let sessions = |url: &str| -> Option<u64> {
        let (_, body) = get(&format!("{url}/healthz"))?;
        serde_json::from_str::<serde_json::Value>(&body).ok()?["sessions"].as_u64()
    };
    wait_until(
        "the tab's stream counts as a session",
        Duration::from_secs(30),
        || (sessions(&agent1) == Some(1)).then_some(()),
    );

    // Version 2 on its own port (each Fargate task has its own network; here they share one).
    w.settings.task.container_port = free_port();
    w.settings.task.app_port = free_port();
    let engine = Engine::new(w.ports(), w.engine_settings("alice", policy));
    let v2 = next_id();
    w.deploy_request(&engine, request(&v2))
        .await
        .expect("second deploy");
    let (task2, _) = start_task(&w, &v2, w.moto.url()).await;
    let agent2 = format!("http://127.0.0.1:{}", w.settings.task.container_port);
    wait_until(
        "version 2's agent is healthy",
        Duration::from_secs(60),
        || get(&format!("{agent2}/healthz")).filter(|(code, _)| *code == 200),
    );
    let health = |url: &str| -> serde_json::Value {
        get(&format!("{url}/healthz"))
            .and_then(|(_, body)| serde_json::from_str(&body).ok())
            .unwrap_or_default()
    };
    wait_until(
        "version 1's agent sees it drain",
        Duration::from_secs(30),
        || (health(&agent1)["draining"] == true).then_some(()),
    );
    // A fresh request to the draining version is refused; the tab's own requests are not.
    let fresh = get(&format!("{agent1}/cgi-bin/events")).expect("an answer");
    assert_eq!(fresh.0, 503, "{fresh:?}");

    // Passes while the stream is open (well past the grace period) leave version 1 alone.
    let state = |id: &flotilla_core::DeploymentId| {
        let ssm = w.clients.ssm.clone();
        let name = flotilla_core::names::state_parameter(&w.name, id);
        async move {
            ssm.get_parameter()
                .name(name)
                .send()
                .await
                .ok()
                .and_then(|o| o.parameter().and_then(|p| p.value()).map(str::to_owned))
        }
    };
    for _ in 0..3 {
        std::thread::sleep(Duration::from_secs(1));
        engine
            .reap(false, &flotilla_engine::events::Silent)
            .await
            .expect("reap pass");
        assert_eq!(state(&v1).await.as_deref(), Some("draining"));
    }
    assert_eq!(sessions(&agent1), Some(1), "the tab is still connected");

    // The tab closes: after the grace period the agent reports ready, and a pass retires v1.
    tab.kill().expect("close the tab");
    let _ = tab.wait();
    let instance = flotilla_core::InstanceId::new(&task1_id).expect("instance id");
    let readiness = flotilla_core::names::task_parameter(&w.name, &v1, &instance);
    let ssm = w.clients.ssm.clone();
    let handle = tokio::runtime::Handle::current();
    tokio::task::block_in_place(|| {
        wait_until(
            "version 1's agent reports ready",
            Duration::from_secs(30),
            || {
                handle
                    .block_on(ssm.get_parameter().name(&readiness).send())
                    .ok()
                    .and_then(|o| o.parameter().and_then(|p| p.value()).map(str::to_owned))
                    .filter(|v| v == "draining")
            },
        )
    });
    let report = engine
        .reap(false, &flotilla_engine::events::Silent)
        .await
        .expect("reap pass");
    assert!(
        format!("{report:?}").contains(v1.as_str()),
        "the pass retired version 1: {report:?}"
    );
    assert_eq!(state(&v1).await.as_deref(), Some("retired"));
    assert_eq!(state(&v2).await.as_deref(), Some("active"));
    let inventory = w.inventory().await;
    let v1_rules: Vec<&String> = inventory
        .rules
        .iter()
        .filter(|(cond, _)| cond.ends_with(v1.as_str()))
        .map(|(_, (_, action))| action)
        .collect();
    assert!(
        !v1_rules.is_empty() && v1_rules.iter().all(|a| *a == "fixed 410"),
        "version 1's affinity answers 410: {inventory:?}"
    );
    let _ = tokio::task::block_in_place(|| task1.stop());
    let _ = tokio::task::block_in_place(|| task2.stop());
}

/// Deploys an app built on `base` as deployment `name`, runs its task definition in Docker and
/// checks what `check` says.
async fn run_scenario(base: Base, name: &str, check: Check) {
    let Fixture {
        _scratch,
        app,
        mut w,
        registry,
    } = prepare(base, name).await;
    if check == Check::SourceUnreachable {
        // Three failed polls make the failure persistent; at one second apart (then backing
        // off) that is seconds, not the default's half a minute.
        w.settings.task.drain_poll_seconds = 1;
    }
    let engine = w.engine("alice");
    let id = next_id();
    let request = DeployRequest {
        image: ImageRequest::Build(app.clone()),
        env: AppEnv {
            vars: [("FEATURE".to_owned(), "one".to_owned())].into(),
            secrets: [(
                "DB_TOKEN".to_owned(),
                SecretSource::Reference(format!("ssm:/{name}/token")),
            )]
            .into(),
        },
        ..World::request(&id)
    };
    w.deploy_request(&engine, request).await.expect("deploy");
    let tags = registry.tags(name).expect("registry tags");
    assert!(tags.contains(&id.to_string()), "app image pushed: {tags:?}");
    assert!(
        tags.iter().any(|t| t.starts_with("flotilla-agent-")),
        "agent image pushed: {tags:?}"
    );

    // The agent's AWS endpoint: moto, or a port nothing listens on.
    let agent_endpoint = match check {
        Check::Drains => w.moto.url(),
        Check::SourceUnreachable => format!("http://127.0.0.1:{}", free_port()),
    };
    let (running, task_id) = start_task(&w, &id, agent_endpoint).await;

    let agent_url = format!("http://127.0.0.1:{}", w.settings.task.container_port);
    let health = wait_until("the agent answers health", Duration::from_secs(60), || {
        get(&format!("{agent_url}/healthz")).filter(|(code, _)| *code == 200)
    });
    let page = get(&format!("{agent_url}/")).expect("the app answers through the agent");
    assert_eq!(page.0, 200, "{page:?}");
    assert!(page.1.contains("hello"), "{page:?}");
    let logs = running.logs("app").expect("app logs");
    let text = logs.to_string();
    assert!(
        text.contains(&format!(
            "app saw feature=one token=s3cret-token args=serve port={}",
            w.settings.task.app_port
        )),
        "the app gets its variables, its secret and its own CMD: {text}"
    );
    assert!(
        text.contains("tmp is writable") && text.contains("root is read-only"),
        "{text}"
    );
    let _ = health;
    if check == Check::SourceUnreachable {
        let status = drain_source_failure_in_status(&w, &engine, &running, &id, &task_id).await;
        let _ = tokio::task::block_in_place(|| running.stop());
        let _ = status;
        return;
    }

    // The agent in the container reads the drain board in moto's S3 (the bucket the deploy put
    // in its task definition), and reads it as designed: no fallback to SSM.
    let doc: serde_json::Value = serde_json::from_str(&health.1).expect("health JSON");
    let board = format!("S3 s3://{}/", w.board_bucket);
    assert!(
        doc["drain_source"]["source"]
            .as_str()
            .is_some_and(|s| s.starts_with(&board)),
        "{doc}"
    );
    let doc = wait_until(
        "the agent has read the board",
        Duration::from_secs(30),
        || {
            let (_, body) = get(&format!("{agent_url}/healthz"))?;
            let doc: serde_json::Value = serde_json::from_str(&body).ok()?;
            (doc["state"] == "active").then_some(doc)
        },
    );
    assert_eq!(
        doc["drain_source"]["degraded"],
        serde_json::Value::Null,
        "{doc}"
    );

    // Draining as flotilla records it (SSM, then the drain board) reaches the agent, and it
    // reports readiness in SSM. (Writing only the SSM parameter is not enough: the agents read
    // the board, which the next listing of the records repairs, not at once.)
    let ports = w.ports();
    let mut record = ports
        .state
        .get(&id)
        .await
        .expect("read the record")
        .expect("the version's record");
    record.version.state = flotilla_core::lifecycle::VersionState::Draining;
    ports.state.put(&record).await.expect("mark draining");
    let instance = flotilla_core::InstanceId::new(&task_id).expect("a task id is an instance id");
    let readiness = flotilla_core::names::task_parameter(&w.name, &id, &instance);
    let ssm = w.clients.ssm.clone();
    let handle = tokio::runtime::Handle::current();
    let reported = tokio::task::block_in_place(|| {
        wait_until(
            "the agent reports readiness",
            Duration::from_secs(90),
            || {
                handle
                    .block_on(ssm.get_parameter().name(&readiness).send())
                    .ok()
                    .and_then(|o| o.parameter().and_then(|p| p.value()).map(str::to_owned))
            },
        )
    });
    assert!(!reported.is_empty(), "{reported}");

    // `docker stop` is the SIGTERM sequence: the agent stops the app and exits.
    let codes = tokio::task::block_in_place(|| running.stop()).expect("stop");
    let agent_log = running.logs("app").expect("logs").to_string();
    assert!(
        agent_log.contains("SIGTERM") || agent_log.contains("stopping"),
        "the agent logs its stop: {agent_log}"
    );
    assert!(
        codes.iter().any(|(name, _)| name == "app"),
        "the app container stopped: {codes:?}"
    );
}

/// The agent's health document says its drain source fails persistently; its container log,
/// shipped to the version's CloudWatch stream as the awslogs driver would, makes `status` name the
/// task and the error. Returns the status line.
async fn drain_source_failure_in_status(
    w: &World,
    engine: &flotilla_engine::workflows::Engine,
    running: &flotilla_testkit::ecs_exec::RunningTask<'_>,
    id: &flotilla_core::DeploymentId,
    task_id: &str,
) -> String {
    let agent_url = format!("http://127.0.0.1:{}", w.settings.task.container_port);
    let doc = wait_until(
        "the health document shows a persistent drain-source failure",
        Duration::from_secs(90),
        || {
            let (_, body) = get(&format!("{agent_url}/healthz"))?;
            let doc: serde_json::Value = serde_json::from_str(&body).ok()?;
            (doc["drain_source"]["persistent_failure"] == true).then_some(doc)
        },
    );
    assert!(
        doc["drain_source"]["error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{doc}"
    );
    // The awslogs driver: every line of the app container (the agent's log is its stderr) into
    // the stream `<prefix>/<container>/<task id>` of the baseline's log group.
    let log = running.logs("app").expect("app container log").to_string();
    assert!(log.contains("flotilla_drain_source=failing"), "{log}");
    let group = w
        .settings
        .baseline_overrides
        .log_group
        .clone()
        .expect("the test baseline has a log group");
    let stream = format!("{id}/{}/{task_id}", flotilla_aws::compute::CONTAINER_NAME);
    w.clients
        .logs
        .create_log_stream()
        .log_group_name(&group)
        .log_stream_name(&stream)
        .send()
        .await
        .expect("log stream in moto");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    let events: Vec<_> = log
        .lines()
        .map(|line| {
            aws_sdk_cloudwatchlogs::types::InputLogEvent::builder()
                .timestamp(now)
                .message(line)
                .build()
                .expect("log event")
        })
        .collect();
    w.clients
        .logs
        .put_log_events()
        .log_group_name(&group)
        .log_stream_name(&stream)
        .set_log_events(Some(events))
        .send()
        .await
        .expect("put the container's log");

    let status = engine.status().await.expect("status");
    let version = status
        .versions
        .iter()
        .find(|v| &v.record.version.id == id)
        .expect("the version in status");
    let problems = version
        .compute
        .as_ref()
        .map(|c| c.problems.clone())
        .unwrap_or_default();
    assert_eq!(problems.len(), 1, "{problems:?}");
    let short: String = task_id.chars().take(8).collect();
    assert!(
        problems[0].starts_with(&format!(
            "task {short}: the agent's drain source keeps failing"
        )),
        "{problems:?}"
    );
    // Both sources named: the board the agent reads first, and SSM it fell back to.
    assert!(problems[0].contains("read drain state"), "{problems:?}");
    assert!(
        problems[0].contains("read drain board s3://"),
        "{problems:?}"
    );
    problems[0].clone()
}

/// An app ready to deploy, and a world set up to build and push it with the private Docker.
struct Fixture {
    _scratch: tempfile::TempDir,
    app: PathBuf,
    w: World,
    registry: &'static Registry,
}

/// The app built on `base` (busybox's httpd behind a start script with its own ENTRYPOINT and
/// CMD, and a CGI event stream), deployment `name` in moto with an ECR repository named as the
/// private registry's, the static agent, and the secret `/<name>/token`.
async fn prepare(base: Base, name: &str) -> Fixture {
    let agent = static_agent();
    let docker = Docker::shared().expect("private dockerd");
    let registry = Registry::shared().expect("private registry");
    let base = match base {
        Base::Debian(suite) => docker
            .debian_image(suite)
            .expect("debian base image without CA certificates"),
        Base::Scratch => "scratch".to_owned(),
    };

    // `docker` as flotilla runs it: the private daemon, a private client config for the login.
    let scratch = tempfile::tempdir().expect("tempdir");
    let wrapper = scratch.path().join("docker");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexport DOCKER_HOST={}\nexport DOCKER_CONFIG={}\nexport DOCKER_BUILDKIT=0\nexec /usr/bin/docker \"$@\"\n",
            docker.host(),
            scratch.path().join("config").display()
        ),
    )
    .expect("write wrapper");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }

    // The app: busybox's httpd behind a start script, ENTRYPOINT and CMD of its own.
    let app = scratch.path().join("app");
    std::fs::create_dir_all(app.join("www")).expect("mkdir");
    std::fs::write(
        app.join("Dockerfile"),
        format!(
            "FROM {base}\nCOPY busybox /bin/busybox\nCOPY www /www\nCOPY start.sh /start.sh\n\
             ENTRYPOINT [\"/start.sh\"]\nCMD [\"serve\"]\n"
        ),
    )
    .expect("Dockerfile");
    std::fs::copy("/bin/busybox", app.join("busybox")).expect("copy busybox");
    std::fs::write(app.join("www/healthz"), "ok\n").expect("healthz");
    std::fs::write(app.join("www/index.html"), "<p>hello</p>\n").expect("index");
    // A long-lived session: an event stream that ticks every second for ten minutes.
    std::fs::create_dir_all(app.join("www/cgi-bin")).expect("mkdir cgi-bin");
    std::fs::write(
        app.join("www/cgi-bin/events"),
        "#!/bin/busybox sh\nprintf 'Content-Type: text/event-stream\\r\\n\\r\\n'\n\
         i=0\nwhile [ $i -lt 600 ]; do printf 'data: %s\\n\\n' $i; i=$((i+1)); \
         /bin/busybox sleep 1; done\n",
    )
    .expect("events");
    std::fs::write(
        app.join("start.sh"),
        "#!/bin/busybox sh\necho \"app saw feature=$FEATURE token=$DB_TOKEN args=$* port=$PORT\"\n\
         /bin/busybox touch /tmp/writable && echo 'tmp is writable'\n\
         /bin/busybox touch /not-writable 2>/dev/null || echo 'root is read-only'\n\
         exec /bin/busybox httpd -f -p 127.0.0.1:$PORT -h /www\n",
    )
    .expect("start.sh");
    {
        use std::os::unix::fs::PermissionsExt;
        for f in ["start.sh", "busybox", "www/cgi-bin/events"] {
            std::fs::set_permissions(app.join(f), std::fs::Permissions::from_mode(0o755))
                .expect("chmod");
        }
    }

    let mut w = World::new(name).await;
    let repository = registry.reference(name);
    w.clients
        .ecr
        .create_repository()
        .repository_name(name)
        .send()
        .await
        .expect("ECR repository in moto");
    w.settings.baseline_overrides.repository = Some(repository.clone());
    w.settings.docker = wrapper.display().to_string();
    w.settings.task.agent_image = None;
    w.settings.task.agent_binary = Some(agent);
    w.settings.task.app_command = Vec::new();
    w.settings.task.app_port = free_port();
    w.settings.task.container_port = free_port();
    w.clients
        .ssm
        .put_parameter()
        .name(format!("/{name}/token"))
        .value("s3cret-token")
        .r#type(ParameterType::SecureString)
        .send()
        .await
        .expect("secret in moto");

    Fixture {
        _scratch: scratch,
        app,
        w,
        registry,
    }
}

/// Runs the task definition of `id`'s service in Docker as ECS would, with the agent's AWS
/// endpoint at `agent_endpoint`. Returns the running task and the moto task id it stands for.
async fn start_task(
    w: &World,
    id: &flotilla_core::DeploymentId,
    agent_endpoint: String,
) -> (flotilla_testkit::ecs_exec::RunningTask<'static>, String) {
    let docker = Docker::shared().expect("private dockerd");
    let service = flotilla_core::names::service_name(&w.name, id);
    let td_arn = w.task_definition_arn(id).await;
    let task = TaskDefinition::from_json(&task_definition_json(&w.moto.url(), &td_arn))
        .expect("the registered task definition parses");
    let task_id = w
        .ecs()
        .tasks()
        .await
        .into_iter()
        .find(|(_, svc)| svc == &service)
        .map(|(arn, _)| arn.rsplit('/').next().unwrap_or("").to_owned())
        .expect("a task of the service");

    let ssm = w.clients.ssm.clone();
    let handle = tokio::runtime::Handle::current();
    let resolve = |secret: &flotilla_testkit::ecs_exec::Secret| -> Result<String, String> {
        let name = secret
            .value_from
            .split_once(":parameter")
            .map(|(_, n)| n.to_owned())
            .ok_or_else(|| format!("not an SSM ARN: {}", secret.value_from))?;
        let ssm = ssm.clone();
        std::thread::scope(|s| {
            s.spawn(|| {
                handle.block_on(async {
                    ssm.get_parameter()
                        .name(&name)
                        .with_decryption(true)
                        .send()
                        .await
                        .map_err(|e| format!("{e:?}"))
                        .and_then(|o| {
                            o.parameter()
                                .and_then(|p| p.value())
                                .map(str::to_owned)
                                .ok_or_else(|| "no value".to_owned())
                        })
                })
            })
            .join()
            .map_err(|_| "resolver panicked".to_owned())?
        })
    };
    let options = RunOptions {
        extra_env: vec![
            ("AWS_ENDPOINT_URL".to_owned(), agent_endpoint),
            ("AWS_ACCESS_KEY_ID".to_owned(), "testing".to_owned()),
            ("AWS_SECRET_ACCESS_KEY".to_owned(), "testing".to_owned()),
            ("FLOTILLA_DRAIN_SOURCE".to_owned(), "ssm".to_owned()),
            ("FLOTILLA_INSTANCE".to_owned(), task_id.clone()),
        ],
        ..RunOptions::default()
    };
    let running = tokio::task::block_in_place(|| run_task(docker, &task, &options, resolve))
        .expect("the task starts as ECS would start it");

    (running, task_id)
}
