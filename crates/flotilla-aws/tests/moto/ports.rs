//! The ports one by one: the deploy lock, batched readiness, records, routing idempotence and
//! priorities, image sources, and error classification of real SDK failures.

use std::time::Duration;

use flotilla_core::drain::Readiness;
use flotilla_core::routing::{Affinity, WeightedTarget};
use flotilla_core::{Timestamp, Version, VersionState, names};
use flotilla_engine::events::Silent;
use flotilla_engine::ports::{ErrorKind, ImageRequest, LockOutcome, VersionRecord};

use crate::support::{World, next_id};

const TTL: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lock_is_taken_once_renewed_by_its_owner_and_taken_over_when_expired() {
    if flotilla_testkit::slow::skip("moto") {
        return;
    }
    let w = World::new("shop").await;
    let (a, b) = (w.ports(), w.ports());
    let t0 = Timestamp::from_secs(1_800_000_000);
    assert_eq!(
        a.state
            .acquire_lock("alice", t0, TTL, false)
            .await
            .expect("take"),
        LockOutcome::Acquired
    );
    match b
        .state
        .acquire_lock("bob", t0, TTL, false)
        .await
        .expect("ask")
    {
        LockOutcome::Held(info) => {
            assert_eq!(info.owner, "alice");
            assert_eq!(info.acquired_at, t0);
            assert_eq!(info.expires_at, t0.plus(TTL));
        }
        other => panic!("bob must be refused: {other:?}"),
    }
    // Alice renews: same acquisition time, later expiry.
    let t1 = t0.plus(Duration::from_secs(30));
    assert_eq!(
        a.state
            .acquire_lock("alice", t1, TTL, false)
            .await
            .expect("renew"),
        LockOutcome::Acquired
    );
    let info = b.state.lock_info().await.expect("info").expect("held");
    assert_eq!((info.acquired_at, info.expires_at), (t0, t1.plus(TTL)));
    // Bob releasing does nothing; after expiry Bob takes it over.
    b.state.release_lock("bob").await.expect("not his");
    assert_eq!(
        b.state.lock_info().await.expect("info").map(|i| i.owner),
        Some("alice".into())
    );
    let late = t1.plus(TTL).plus(Duration::from_secs(1));
    assert_eq!(
        b.state
            .acquire_lock("bob", late, TTL, false)
            .await
            .expect("take over"),
        LockOutcome::Acquired
    );
    assert_eq!(
        b.state.lock_info().await.expect("info").map(|i| i.owner),
        Some("bob".into())
    );
    // Force breaks a live lock.
    assert_eq!(
        a.state
            .acquire_lock("alice", late, TTL, true)
            .await
            .expect("force"),
        LockOutcome::Acquired
    );
    a.state.release_lock("alice").await.expect("release");
    assert_eq!(a.state.lock_info().await.expect("info"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_many_racing_lock_requests_exactly_one_wins() {
    if flotilla_testkit::slow::skip("moto") {
        return;
    }
    let w = World::new("shop").await;
    let now = Timestamp::from_secs(1_800_000_000);
    let mut tasks = Vec::new();
    for i in 0..6 {
        let ports = w.ports();
        tasks.push(tokio::spawn(async move {
            ports
                .state
                .acquire_lock(&format!("p{i}"), now, TTL, false)
                .await
                .expect("answer")
        }));
    }
    let mut won = 0;
    for t in tasks {
        if t.await.expect("join") == LockOutcome::Acquired {
            won += 1;
        }
    }
    assert_eq!(won, 1);
}

fn record(id: &flotilla_core::DeploymentId, state: VersionState) -> VersionRecord {
    let mut version = Version::new(id.clone(), id.created_at());
    version.state = state;
    VersionRecord {
        version,
        image: None,
        instances: 2,
        ready_passes: 0,
        canary: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_and_readiness_are_read_in_batches() {
    if flotilla_testkit::slow::skip("moto") {
        return;
    }
    let w = World::new("shop").await;
    let ids: Vec<_> = (0..4).map(|_| next_id()).collect();
    let ports = w.ports();
    for id in &ids {
        ports
            .state
            .put(&record(id, VersionState::Draining))
            .await
            .expect("put");
        for t in 0..3 {
            w.clients
                .ssm
                .put_parameter()
                .name(format!("/apps/shop/{id}/tasks/task{t}"))
                .value(if t == 0 { "healthy" } else { "draining" })
                .r#type(aws_sdk_ssm::types::ParameterType::String)
                .send()
                .await
                .expect("readiness");
        }
    }
    let counted = w.counted_ports();
    w.counter.reset();
    let listed = counted.state.list().await.expect("list");
    assert_eq!(listed.len(), 4);
    let readiness = counted.state.readiness(&ids).await.expect("readiness");
    assert_eq!(readiness.len(), 4);
    for r in readiness.values() {
        assert_eq!(r.len(), 3);
        assert_eq!(
            r.values()
                .filter(|v| **v == Readiness::ShutdownReady)
                .count(),
            2
        );
    }
    let calls = w.counter.snapshot();
    // 4 versions x (record + state + 3 tasks) = 20 parameters: two pages of ten per read (moto
    // adds an empty third page), never a call per version or per task; and the listing's one
    // look at the drain board, which agrees.
    let pages = calls.get("SSM.GetParametersByPath").copied().unwrap_or(0);
    assert!((4..=6).contains(&pages), "{calls:?}");
    assert_eq!(calls.get("S3.GetObject"), Some(&1), "{calls:?}");
    assert_eq!(w.counter.total(), pages + 1, "{calls:?}");

    // An unchanged state is not written again, nor its tag, nor the board (one look at it).
    w.counter.reset();
    let mut r = listed[0].clone();
    r.ready_passes = 1;
    counted.state.put(&r).await.expect("put");
    let calls = w.counter.snapshot();
    assert_eq!(calls.get("SSM.PutParameter"), Some(&1), "{calls:?}");
    assert_eq!(calls.get("S3.GetObject"), Some(&1), "{calls:?}");
    assert_eq!(w.counter.total(), 2, "{calls:?}");

    counted.state.delete(&ids[0]).await.expect("delete");
    assert_eq!(counted.state.get(&ids[0]).await.expect("get"), None);
    let left = w.inventory().await;
    assert!(
        !left.parameters.keys().any(|p| p.contains(ids[0].as_str())),
        "{left:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_is_idempotent_and_maps_back_to_a_routing_table() {
    if flotilla_testkit::slow::skip("moto") {
        return;
    }
    let w = World::new("shop").await;
    let ports = w.ports();
    let (v1, v2) = (next_id(), next_id());
    ports
        .routing
        .install_affinity(&v1)
        .await
        .expect("install v1");
    ports
        .routing
        .install_affinity(&v1)
        .await
        .expect("again: no change");
    ports
        .routing
        .install_affinity(&v2)
        .await
        .expect("install v2");
    let inv = w.inventory().await;
    assert_eq!(inv.rules.len(), 4, "{inv:#?}");
    assert_eq!(inv.target_groups.len(), 2);
    ports
        .routing
        .set_default(&[WeightedTarget {
            id: v2.clone(),
            weight: 100,
        }])
        .await
        .expect("default");
    ports.routing.retire_affinity(&v1).await.expect("retire");
    ports.routing.retire_affinity(&v1).await.expect("again");
    let err = ports
        .routing
        .retire_affinity(&v2)
        .await
        .expect_err("v2 takes fresh traffic");
    assert_eq!(err.kind, ErrorKind::Conflict);
    let table = ports.routing.snapshot().await.expect("snapshot");
    assert_eq!(table.affinity(&v1), Some(Affinity::Retired));
    assert_eq!(table.affinity(&v2), Some(Affinity::Serving));
    assert_eq!(
        table.default_targets(),
        &[WeightedTarget {
            id: v2.clone(),
            weight: 100
        }]
    );

    // A priority taken by someone else's rule is skipped.
    let v3 = next_id();
    ports.routing.remove_affinity(&v1).await.expect("remove v1");
    ports.routing.remove_affinity(&v1).await.expect("again");
    ports
        .routing
        .install_affinity(&v3)
        .await
        .expect("install v3 into the gap");
    let inv = w.inventory().await;
    let mut priorities: Vec<u32> = inv.rules.values().map(|(p, _)| *p).collect();
    priorities.sort();
    assert_eq!(priorities, vec![1000, 1001, 1002, 1003], "{inv:#?}");
    assert!(
        !inv.target_groups
            .contains(&names::target_group_name(&w.name, &v1))
    );

    ports.routing.set_default(&[]).await.expect("no version");
    assert_eq!(w.inventory().await.default, "fixed 503");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_prebuilt_as_is_and_clear_errors_without_docker() {
    if flotilla_testkit::slow::skip("moto") {
        return;
    }
    let mut w = World::new("shop").await;
    let id = next_id();
    let ports = w.ports();
    let img = ports
        .images
        .prepare(
            &id,
            &ImageRequest::Prebuilt("example.com/app:v1".into()),
            &Silent,
        )
        .await
        .expect("prebuilt");
    assert_eq!(img.0, "example.com/app:v1");
    let dir = std::env::temp_dir();

    w.settings.docker = "/nonexistent/flotilla-test-docker".to_owned();
    let err = w
        .ports()
        .images
        .prepare(&id, &ImageRequest::Build(dir.clone()), &Silent)
        .await
        .expect_err("no docker");
    assert_eq!(err.kind, ErrorKind::Unavailable);
    assert!(err.message.contains("was not found"), "{err}");
    assert!(err.message.contains("--image"), "{err}");

    // A docker CLI with no engine behind it (`false` stands in: every command fails).
    w.settings.docker = "false".to_owned();
    let err = w
        .ports()
        .images
        .prepare(&id, &ImageRequest::Build(dir), &Silent)
        .await
        .expect_err("no engine");
    assert_eq!(err.kind, ErrorKind::Unavailable);
    assert!(err.message.contains("no Docker engine answers"), "{err}");
    ports.images.discard(&id).await.expect("nothing to discard");
}

/// A docker CLI stand-in in `dir`: the shell `script`, executable.
fn docker_stand_in(dir: &std::path::Path, script: &str) -> std::path::PathBuf {
    let docker = dir.join("docker");
    std::fs::write(&docker, script).expect("write the stand-in");
    std::fs::set_permissions(&docker, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    docker
}

/// An app directory in `dir` with a one-line Dockerfile.
fn app_with_dockerfile(dir: &std::path::Path) -> std::path::PathBuf {
    let app = dir.join("app");
    std::fs::create_dir(&app).expect("mkdir");
    std::fs::write(app.join("Dockerfile"), "FROM scratch\n").expect("Dockerfile");
    app
}

/// Issue 11 item 14: a deploy whose push failed left the image it had just built tagged
/// `<repository>:<id>` on the machine, naming an image the repository does not have; and a
/// deploy stopped before its rules were made (its record kept, to resume) made `status` count
/// listener rules that were not on the listener. A docker CLI stand-in (a shell script that
/// records its arguments, answers `version` unless told there is no engine, builds and logs in,
/// and refuses the push as a registry does) drives the real deploy against moto's ECR (the
/// repository check, the login token) and listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_push_removes_the_local_tag_and_status_counts_only_real_rules() {
    if flotilla_testkit::slow::skip("moto") {
        return;
    }
    let mut w = World::new("shop").await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let calls = tmp.path().join("calls");
    let no_engine = tmp.path().join("no-engine");
    let docker = docker_stand_in(
        tmp.path(),
        &format!(
            "#!/bin/sh\necho \"$*\" >> '{calls}'\ncase \"$1\" in\n  version) [ -e '{no_engine}' ] \
             && {{ echo 'Cannot connect to the Docker daemon' >&2; exit 1; }}; echo 20.10.24 ;;\n  \
             login) cat > /dev/null ;;\n  push) echo 'denied: requested access to the resource \
             is denied' >&2; exit 1 ;;\nesac\nexit 0\n",
            calls = calls.display(),
            no_engine = no_engine.display()
        ),
    );
    let app = app_with_dockerfile(tmp.path());
    w.settings.docker = docker.display().to_string();
    let engine = w.engine("alice");
    let build = |id: &flotilla_core::DeploymentId| flotilla_engine::workflows::DeployRequest {
        image: ImageRequest::Build(app.clone()),
        ..World::request(id)
    };

    let id = next_id();
    let err = w
        .deploy_request(&engine, build(&id))
        .await
        .expect_err("the push is refused");
    let chain: Vec<String> =
        std::iter::successors(Some(&err as &(dyn std::error::Error + 'static)), |e| {
            e.source()
        })
        .map(ToString::to_string)
        .collect();
    assert!(chain.iter().any(|e| e.contains("denied")), "{chain:?}");
    let repository = w
        .settings
        .baseline_overrides
        .repository
        .clone()
        .expect("repository");
    let image = format!("{repository}:{id}");
    let log = std::fs::read_to_string(&calls).expect("calls recorded");
    let steps: Vec<&str> = log
        .lines()
        .map(|l| l.split_whitespace().next().unwrap_or(""))
        .filter(|s| *s != "version")
        .collect();
    assert_eq!(steps, ["build", "login", "push", "image"], "{log}");
    assert!(
        log.lines().any(|l| l == format!("image rm {image}")),
        "the tag is removed: {log}"
    );

    // A deploy that stops before its image is built keeps its record (to resume) and has no
    // rules yet: `status` says what the listener holds.
    std::fs::write(&no_engine, "").expect("no engine");
    let kept = next_id();
    w.deploy_request(&engine, build(&kept))
        .await
        .expect_err("no Docker engine");
    let status = engine.status().await.expect("status");
    let recorded: Vec<_> = status
        .versions
        .iter()
        .map(|v| v.record.version.id.clone())
        .collect();
    assert_eq!(recorded, [kept], "{status:#?}");
    assert_eq!(w.inventory().await.rules.len(), 0);
    assert_eq!(status.rules_used, 0, "{status:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_sdk_failures_are_classified() {
    if flotilla_testkit::slow::skip("moto") {
        return;
    }
    let w = World::new("shop").await;
    let ports = w.ports();
    let id = next_id();
    // Scaling a service that does not exist: ECS says ServiceNotFoundException.
    let err = ports.compute.scale(&id, 1).await.expect_err("no service");
    assert_eq!(err.kind, ErrorKind::NotFound, "{err}");
    assert!(
        ports
            .state
            .get(&id)
            .await
            .expect("absent is fine")
            .is_none()
    );
    assert!(
        ports
            .compute
            .observe(std::slice::from_ref(&id))
            .await
            .expect("observe")
            .is_empty()
    );
    ports
        .compute
        .delete(&id)
        .await
        .expect("deleting nothing succeeds");
    ports
        .state
        .delete(&id)
        .await
        .expect("deleting nothing succeeds");

    // Nothing listens on the endpoint: Unavailable, with a hint.
    let mut settings = w.settings.clone();
    settings.endpoint_url = Some("http://127.0.0.1:9".to_owned());
    let config = flotilla_aws::sdk_config_with(&settings, |l| {
        l.credentials_provider(aws_sdk_ssm::config::Credentials::new(
            "t", "t", None, None, "t",
        ))
    })
    .await;
    let dead = flotilla_aws::connect_with(
        &settings,
        flotilla_aws::Clients::new(&config),
        flotilla_aws::Needs::Deploy,
    )
    .expect("ports");
    let err = dead.state.list().await.expect_err("nothing listens");
    assert_eq!(err.kind, ErrorKind::Unavailable, "{err}");
    assert!(err.message.contains("AWS_ENDPOINT_URL"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_refuses_an_incomplete_baseline_before_any_call() {
    if flotilla_testkit::slow::skip("moto") {
        return;
    }
    let w = World::new("shop").await;
    let mut settings = w.settings.clone();
    settings.baseline_overrides.subnets = None;
    settings.baseline_overrides.task_role_arn = None;
    let err = flotilla_aws::connect_with(&settings, w.clients.clone(), flotilla_aws::Needs::Deploy)
        .err()
        .expect("incomplete");
    let text = err.to_string();
    assert!(
        text.contains("subnets") && text.contains("task_role_arn"),
        "{text}"
    );
    flotilla_aws::connect_with(&settings, w.clients.clone(), flotilla_aws::Needs::Operate)
        .expect("enough to operate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_target_group_counts_as_no_healthy_targets_in_observe_status_and_reap() {
    if flotilla_testkit::slow::skip("moto") {
        return;
    }
    let w = World::new("shop").await;
    let engine = w.engine("alice");
    let (v1, v2) = (next_id(), next_id());
    w.deploy(&engine, &v1).await.expect("deploy v1");
    w.deploy(&engine, &v2).await.expect("deploy v2");
    w.ecs().settle().await;
    // Someone deletes v1's rules and target group by hand; its service stays and still names it.
    w.ports()
        .routing
        .remove_affinity(&v1)
        .await
        .expect("remove v1's rules and target group");
    assert!(
        !w.inventory()
            .await
            .target_groups
            .contains(&names::target_group_name(&w.name, &v1))
    );

    let observed = w
        .ports()
        .compute
        .observe(&[v1.clone(), v2.clone()])
        .await
        .expect("observe goes on without the target group");
    assert_eq!(observed[&v1].healthy, 0, "{observed:?}");
    assert!(observed[&v1].desired > 0, "{observed:?}");
    assert!(observed[&v2].healthy > 0, "{observed:?}");
    let status = engine.status().await.expect("status goes on");
    let v1_status = status
        .versions
        .iter()
        .find(|v| v.record.version.id == v1)
        .expect("v1 listed");
    assert_eq!(v1_status.compute.as_ref().map(|c| c.healthy), Some(0));
    w.ecs()
        .while_settling(engine.reap(false, &flotilla_engine::events::Silent))
        .await
        .expect("a reaper pass goes on");
}

/// Adds a rule of someone else's (a path pattern) that forwards to `id`'s target group.
async fn foreign_rule_to(w: &World, id: &flotilla_core::DeploymentId, priority: i32) -> String {
    use aws_sdk_elasticloadbalancingv2::types::{
        Action, ActionTypeEnum, PathPatternConditionConfig, RuleCondition,
    };
    let tg = w
        .clients
        .elb
        .describe_target_groups()
        .names(names::target_group_name(&w.name, id))
        .send()
        .await
        .expect("target group")
        .target_groups()[0]
        .target_group_arn()
        .expect("arn")
        .to_owned();
    w.clients
        .elb
        .create_rule()
        .listener_arn(&w.listener_arn)
        .priority(priority)
        .conditions(
            RuleCondition::builder()
                .field("path-pattern")
                .path_pattern_config(
                    PathPatternConditionConfig::builder()
                        .values("/elsewhere/*")
                        .build(),
                )
                .build(),
        )
        .actions(
            Action::builder()
                .r#type(ActionTypeEnum::Forward)
                .target_group_arn(tg)
                .build(),
        )
        .send()
        .await
        .expect("foreign rule")
        .rules()[0]
        .rule_arn()
        .expect("rule arn")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_affinity_waits_out_a_target_group_still_in_use() {
    if flotilla_testkit::slow::skip("moto") {
        return;
    }
    let mut w = World::new("shop").await;
    w.settings.routing.target_group_in_use_wait = Duration::from_secs(20);
    let ports = w.ports();
    let v1 = next_id();
    ports.routing.install_affinity(&v1).await.expect("install");
    let foreign = foreign_rule_to(&w, &v1, 10).await;
    // The other rule goes two seconds in: the removal waits for it, then deletes the group.
    let elb = w.clients.elb.clone();
    let remover = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        elb.delete_rule().rule_arn(foreign).send().await
    });
    let started = std::time::Instant::now();
    ports
        .routing
        .remove_affinity(&v1)
        .await
        .expect("removed once the target group is free");
    assert!(started.elapsed() >= Duration::from_secs(2));
    remover.await.expect("joined").expect("deleted the rule");
    let inv = w.inventory().await;
    assert!(
        !inv.target_groups
            .contains(&names::target_group_name(&w.name, &v1)),
        "{inv:#?}"
    );
    assert!(inv.rules.is_empty(), "{inv:#?}");

    // A group that stays in use is reported once the wait is over, saying what to do.
    w.settings.routing.target_group_in_use_wait = Duration::from_secs(2);
    let ports = w.ports();
    let v2 = next_id();
    ports.routing.install_affinity(&v2).await.expect("install");
    foreign_rule_to(&w, &v2, 11).await;
    let started = std::time::Instant::now();
    let err = ports
        .routing
        .remove_affinity(&v2)
        .await
        .expect_err("still in use");
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert_eq!(err.kind, ErrorKind::Conflict, "{err}");
    assert!(err.message.contains("still used by"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retired_rules_answer_the_configured_stale_status() {
    if flotilla_testkit::slow::skip("moto") {
        return;
    }
    let mut w = World::new("shop").await;
    w.settings.routing.stale_status = 409;
    let ports = w.ports();
    let (v1, v2) = (next_id(), next_id());
    for id in [&v1, &v2] {
        ports.routing.install_affinity(id).await.expect("install");
    }
    ports
        .routing
        .set_default(&[WeightedTarget {
            id: v2.clone(),
            weight: 100,
        }])
        .await
        .expect("default");
    ports.routing.retire_affinity(&v1).await.expect("retire");
    let inv = w.inventory().await;
    for (cond, (_, action)) in &inv.rules {
        if cond.ends_with(v1.as_str()) {
            assert_eq!(action, "fixed 409", "{cond}");
        }
    }
    let body = w
        .fixed_response("409")
        .await
        .and_then(|f| f.message_body().map(str::to_owned))
        .expect("a 409 rule with a body");
    assert!(body.contains("\"version_retired\""), "{body}");
    assert!(body.contains("409 Conflict"), "{body}");
    // Read back as retired, by this configuration and by one that has gone back to 410.
    let table = ports.routing.snapshot().await.expect("snapshot");
    assert_eq!(table.affinity(&v1), Some(Affinity::Retired));
    w.settings.routing.stale_status = 410;
    let table = w.ports().routing.snapshot().await.expect("snapshot");
    assert_eq!(table.affinity(&v1), Some(Affinity::Retired));
    w.ports()
        .routing
        .retire_affinity(&v1)
        .await
        .expect("already retired: no change");
    let inv = w.inventory().await;
    assert_eq!(
        inv.rules
            .iter()
            .filter(|(cond, (_, action))| cond.ends_with(v1.as_str()) && action == "fixed 409")
            .count(),
        2,
        "{inv:#?}"
    );
}

/// Issue 10: `docker build`'s output shows while it runs, as the host's build does: each line
/// (stdout and stderr) is a `build_output` event between `build_started` and `build_finished`,
/// the whole output is kept in `.flotilla/<name>/logs/build-<id>.log`, and a failed build names
/// its exit status, its last lines and that log. A docker CLI stand-in prints the build's lines
/// (and fails it when told to); the repository check and login go to moto's ECR.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_builds_output_is_shown_as_it_runs_and_kept_in_its_log() {
    if flotilla_testkit::slow::skip("moto") {
        return;
    }
    use flotilla_engine::Event;
    use flotilla_engine::events::Recorder;
    let mut w = World::new("shop").await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let fail = tmp.path().join("fail");
    let docker = docker_stand_in(
        tmp.path(),
        &format!(
            "#!/bin/sh\ncase \"$1\" in\n  version) echo 20.10.24 ;;\n  login) cat > /dev/null ;;\n  \
             build) echo '#1 [internal] load build definition' >&2; echo 'step one'; \
             echo '#2 RUN make' >&2; [ -e '{fail}' ] && {{ echo 'make: *** [all] Error 2' >&2; \
             exit 3; }}; echo 'built' ;;\nesac\nexit 0\n",
            fail = fail.display()
        ),
    );
    let app = app_with_dockerfile(tmp.path());
    w.settings.docker = docker.display().to_string();
    let ports = w.ports();

    let id = next_id();
    let recorder = Recorder::default();
    // The stand-in builds no real image, so what follows the push (inspecting the image for the
    // task definition) may fail; the build and the push must not.
    if let Err(err) = ports
        .images
        .prepare(&id, &ImageRequest::Build(app.clone()), &recorder)
        .await
    {
        assert!(
            !["build image", "push image"].contains(&err.operation.as_str()),
            "{err}"
        );
    }
    let events = recorder.0.lock().expect("events").clone();
    let log = app.join(format!(".flotilla/shop/logs/build-{id}.log"));
    assert!(
        matches!(events.first(), Some(Event::BuildStarted { command, log: l, .. })
            if command.contains("build") && *l == log.display().to_string()),
        "{events:#?}"
    );
    let lines: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            Event::BuildOutput { line, .. } => Some(line.as_str()),
            _ => None,
        })
        .collect();
    for wanted in [
        "#1 [internal] load build definition",
        "step one",
        "#2 RUN make",
        "built",
    ] {
        assert!(lines.contains(&wanted), "{wanted:?} shown: {lines:?}");
    }
    assert!(
        matches!(events.last(), Some(Event::BuildFinished { .. })),
        "{events:#?}"
    );
    let kept = std::fs::read_to_string(&log).expect("the build log");
    assert!(
        kept.contains("step one") && kept.contains("#2 RUN make"),
        "{kept}"
    );
    assert_eq!(
        std::fs::read_to_string(app.join(".flotilla/.gitignore")).expect(".gitignore"),
        "*\n"
    );

    std::fs::write(&fail, "").expect("fail the next build");
    let failed = next_id();
    let recorder = Recorder::default();
    let err = ports
        .images
        .prepare(&failed, &ImageRequest::Build(app.clone()), &recorder)
        .await
        .expect_err("the build fails");
    let message = err.to_string();
    assert!(message.contains("exit status: 3"), "{message}");
    assert!(message.contains("  | make: *** [all] Error 2"), "{message}");
    assert!(
        message.contains(&format!("build-{failed}.log")),
        "names its log: {message}"
    );
    let events = recorder.0.lock().expect("events").clone();
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::BuildFinished { .. })),
        "{events:#?}"
    );
    assert!(events.iter().any(
        |e| matches!(e, Event::BuildOutput { line, .. } if line == "make: *** [all] Error 2")
    ));
}
