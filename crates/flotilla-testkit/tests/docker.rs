//! The container harness against the real thing: a private dockerd and registry from Debian's
//! packages (installed by scripts/docker.sh), base images built without Docker Hub, and ECS task
//! definitions executed in that Docker.

use std::time::{Duration, Instant};

use flotilla_testkit::docker::{BUSYBOX, ContextFile, DebianSuite, Docker, Registry};
use flotilla_testkit::ecs_exec::{
    DependencyCondition, ExecError, RunOptions, TaskDefinition, run_task,
};
use flotilla_testkit::elf::{ElfInfo, Machine};

fn docker() -> &'static Docker {
    Docker::shared().expect("private dockerd starts (run scripts/docker.sh as root first)")
}

fn registry() -> &'static Registry {
    Registry::shared().expect("private registry starts")
}

/// Runs `args` in a fresh container of `image` on the host network and returns its stdout.
fn run_in(image: &str, args: &[&str]) -> String {
    let mut all = vec!["run", "--rm", "--network", "host", image];
    all.extend_from_slice(args);
    docker().run(all).expect("container runs")
}

/// The busybox userland pushed to the private registry as `name_tag`, with `extra` Dockerfile
/// lines and context files: the images the task definitions below pull.
fn pushed(name_tag: &str, extra: &str, files: &[ContextFile]) -> String {
    let base = docker().busybox_image().expect("busybox image builds");
    docker()
        .build_and_push(
            registry(),
            name_tag,
            &format!("FROM {base}\n{extra}"),
            files,
        )
        .expect("image builds and pushes")
}

#[test]
fn a_static_scratch_image_runs_on_the_host_network_and_round_trips_through_the_registry() {
    if flotilla_testkit::slow::skip("a private Docker Engine") {
        return;
    }
    let elf = ElfInfo::read(std::path::Path::new(BUSYBOX)).expect("busybox headers");
    assert!(elf.is_static, "{BUSYBOX} must be busybox-static's");
    assert_eq!(elf.machine, Machine::X86_64);

    let image = docker().busybox_image().expect("busybox image builds");
    // No libc, no /lib: the image is FROM scratch plus one static binary.
    assert_eq!(
        run_in(&image, &["/bin/sh", "-c", "ls /lib /usr 2>&1 | wc -l"]).trim(),
        "2"
    );
    // A world-writable, sticky /tmp, and the non-root user the task tests run as.
    assert_eq!(
        run_in(&image, &["/bin/sh", "-c", "stat -c %a /tmp; id app"]).trim(),
        "1777\nuid=1000(app) gid=1000(app) groups=1000(app)"
    );

    // --network host: the container reaches the registry the test started on 127.0.0.1.
    let answer = run_in(
        &image,
        &[
            "wget",
            "-q",
            "-O",
            "-",
            &format!("http://{}/v2/", registry().host()),
        ],
    );
    assert_eq!(answer.trim(), "{}");

    let reference = pushed(
        "roundtrip:v1",
        "CMD [\"/bin/echo\", \"pulled back\"]\n",
        &[],
    );
    assert_eq!(reference, format!("{}/roundtrip:v1", registry().host()));
    assert_eq!(registry().tags("roundtrip").expect("tags"), ["v1"]);
    docker()
        .run(["rmi", &reference])
        .expect("local copy removed");
    assert!(!docker().has_image(&reference));
    docker()
        .run(["pull", &reference])
        .expect("pulled from the registry");
    assert_eq!(run_in(&reference, &[]).trim(), "pulled back");
}

#[test]
fn debian_base_images_have_no_ca_bundle_and_their_own_glibc() {
    if flotilla_testkit::slow::skip("a private Docker Engine") {
        return;
    }
    for suite in [DebianSuite::Bookworm, DebianSuite::Bullseye] {
        let started = Instant::now();
        let image = docker().debian_image(suite).expect("debian image imports");
        eprintln!("{} image ready in {:?}", suite.name(), started.elapsed());
        let out = run_in(
            &image,
            &[
                "sh",
                "-c",
                "ls -A /etc/ssl/certs 2>/dev/null | wc -l; \
                 if dpkg -s ca-certificates >/dev/null 2>&1; then echo installed; else echo not-installed; fi; \
                 getconf GNU_LIBC_VERSION; . /etc/os-release; echo $VERSION_CODENAME",
            ],
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            "0",
            "{}: /etc/ssl/certs must be empty: {out}",
            suite.name()
        );
        assert_eq!(lines[1], "not-installed", "{}: {out}", suite.name());
        assert_eq!(
            lines[2],
            format!("glibc {}", suite.glibc()),
            "{}",
            suite.name()
        );
        assert_eq!(lines[3], suite.name());
    }
}

/// A task like the ones flotilla registers: a non-essential init container copies a file into a
/// task volume and exits 0; the app waits for its SUCCESS, reads the file, sees its variables and
/// a secret, runs as a non-root user on a read-only root with a writable /tmp volume, and handles
/// SIGTERM; a sidecar that ignores SIGTERM is killed at its stopTimeout.
#[test]
fn a_task_definition_runs_like_fargate_and_stops_with_sigterm() {
    if flotilla_testkit::slow::skip("a private Docker Engine") {
        return;
    }
    let init = pushed(
        "init:v1",
        "COPY payload.txt /opt/payload.txt\n",
        &[ContextFile::bytes(
            "payload.txt",
            "from the init container\n",
        )],
    );
    // /data belongs to the app's user, so only the read-only root keeps it from writing there.
    let app = pushed("app:v1", "RUN mkdir /data && chown 1000:1000 /data\n", &[]);
    let app_script = r#"
        echo "user=$(id -u):$(id -g)"
        echo "greeting=$GREETING secret=$DB_PASSWORD endpoint=$AWS_ENDPOINT_URL"
        echo "file=$(cat /shared/payload.txt)"
        if touch /data/x 2>/dev/null; then echo root=writable; else echo root=read-only; fi
        if echo x > /shared/x 2>/dev/null; then echo shared=writable; else echo shared=read-only; fi
        echo x > /tmp/x && echo tmp=writable
        trap 'echo got SIGTERM; exit 42' TERM
        echo ready
        while :; do sleep 0.1; done
    "#;
    let json = serde_json::json!({
      "taskDefinition": {
        "family": "web",
        "networkMode": "awsvpc",
        "runtimePlatform": {"cpuArchitecture": "X86_64", "operatingSystemFamily": "LINUX"},
        "volumes": [{"name": "shared", "host": {}}, {"name": "tmp", "host": {}}],
        "containerDefinitions": [
          {"name": "init", "image": init, "essential": false,
           "entryPoint": ["/bin/sh", "-c", "cp /opt/payload.txt /shared/ && chmod 1777 /shared"],
           "mountPoints": [{"sourceVolume": "shared", "containerPath": "/shared", "readOnly": false}]},
          {"name": "app", "image": app, "essential": true,
           "entryPoint": ["/bin/sh", "-c"], "command": [app_script],
           "user": "1000:1000", "readonlyRootFilesystem": true, "stopTimeout": 10,
           "environment": [{"name": "GREETING", "value": "hello"}],
           "secrets": [{"name": "DB_PASSWORD",
                        "valueFrom": "arn:aws:ssm:us-east-1:123456789012:parameter/web/db"}],
           "dependsOn": [{"containerName": "init", "condition": "SUCCESS"}],
           "mountPoints": [{"sourceVolume": "shared", "containerPath": "/shared", "readOnly": true},
                           {"sourceVolume": "tmp", "containerPath": "/tmp"}],
           "portMappings": [{"containerPort": 8080, "hostPort": 8080, "protocol": "tcp"}]},
          {"name": "sidecar", "image": app, "essential": true,
           "entryPoint": ["/bin/sleep", "1000"], "stopTimeout": 1,
           "dependsOn": [{"containerName": "app", "condition": "START"}]}
        ]
      }
    })
    .to_string();
    let task = TaskDefinition::from_json(&json).expect("parses");
    let mut asked = Vec::new();
    let options = RunOptions {
        extra_env: vec![("AWS_ENDPOINT_URL".into(), "http://127.0.0.1:5000".into())],
        ..RunOptions::default()
    };
    let running = run_task(docker(), &task, &options, |secret| {
        asked.push(secret.value_from.clone());
        match secret.value_from.as_str() {
            "arn:aws:ssm:us-east-1:123456789012:parameter/web/db" => Ok("s3cret".into()),
            other => Err(format!("no such parameter {other}")),
        }
    })
    .expect("task starts");
    assert_eq!(
        asked,
        ["arn:aws:ssm:us-east-1:123456789012:parameter/web/db"]
    );

    let init_state = running.state("init").expect("init state");
    assert!(init_state.exited(), "init finished before the app started");
    assert_eq!(init_state.exit_code, 0);

    flotilla_testkit::docker::wait_for("app ready", Duration::from_secs(30), || {
        Ok(running
            .logs("app")
            .map_err(|e| flotilla_testkit::docker::DockerError::Failed(e.to_string()))?
            .stdout
            .contains("ready")
            .then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}; app log: {:?}", running.logs("app")));
    let log = running.logs("app").expect("app log").stdout;
    for line in [
        "user=1000:1000",
        "greeting=hello secret=s3cret endpoint=http://127.0.0.1:5000",
        "file=from the init container",
        "root=read-only",
        "shared=read-only",
        "tmp=writable",
    ] {
        assert!(
            log.lines().any(|l| l == line),
            "{line:?} missing from the app log:\n{log}"
        );
    }

    let stopping = Instant::now();
    let exits = running.stop().expect("task stops");
    let took = stopping.elapsed();
    assert_eq!(
        exits,
        [
            ("init".to_owned(), 0),
            ("app".to_owned(), 42),
            ("sidecar".to_owned(), 137)
        ],
        "the app exits through its SIGTERM trap; the sidecar ignores SIGTERM (PID 1) and is \
         killed after its 1 s stopTimeout"
    );
    assert!(
        running
            .logs("app")
            .expect("app log")
            .stdout
            .contains("got SIGTERM")
    );
    assert!(
        took >= Duration::from_secs(1),
        "sidecar waited its stopTimeout: {took:?}"
    );
    assert!(
        took < Duration::from_secs(10),
        "app stopped on SIGTERM, not at its timeout: {took:?}"
    );

    let label = running.label().to_owned();
    drop(running);
    let filter = format!("label=flotilla.task={label}");
    assert_eq!(
        docker()
            .run(["ps", "-aq", "--filter", &filter])
            .expect("ps"),
        ""
    );
    assert_eq!(
        docker()
            .run(["volume", "ls", "-q", "--filter", &filter])
            .expect("volume ls"),
        ""
    );
}

#[test]
fn entry_point_and_command_replace_the_images_own_like_ecs() {
    if flotilla_testkit::slow::skip("a private Docker Engine") {
        return;
    }
    let image = pushed(
        "entrypoint:v1",
        "ENTRYPOINT [\"/bin/echo\", \"image-entrypoint\"]\nCMD [\"image-cmd\"]\n",
        &[],
    );
    let json = serde_json::json!({
      "family": "argv",
      "containerDefinitions": [
        {"name": "neither", "image": image, "essential": false},
        {"name": "command", "image": image, "essential": false, "command": ["task-cmd"]},
        {"name": "entrypoint", "image": image, "essential": false,
         "entryPoint": ["/bin/echo", "task-entrypoint"]},
        {"name": "both", "image": image, "essential": false,
         "entryPoint": ["/bin/echo", "task-entrypoint"], "command": ["task-cmd"]},
        {"name": "workdir", "image": image, "essential": true,
         "entryPoint": ["/bin/pwd"], "workingDirectory": "/tmp"}
      ]
    })
    .to_string();
    let task = TaskDefinition::from_json(&json).expect("parses");
    let running = run_task(docker(), &task, &RunOptions::default(), |_| {
        Err("no secrets".into())
    })
    .expect("runs");
    for (name, want) in [
        ("neither", "image-entrypoint image-cmd"),
        ("command", "image-entrypoint task-cmd"),
        // A task entryPoint drops the image's CMD, as the Docker API does for ECS.
        ("entrypoint", "task-entrypoint"),
        ("both", "task-entrypoint task-cmd"),
        ("workdir", "/tmp"),
    ] {
        assert_eq!(
            running
                .wait_exit(name, Duration::from_secs(30))
                .expect("exits"),
            0
        );
        assert_eq!(
            running.logs(name).expect("log").stdout.trim(),
            want,
            "container {name}"
        );
    }
}

#[test]
fn a_failing_init_container_keeps_the_app_from_starting() {
    if flotilla_testkit::slow::skip("a private Docker Engine") {
        return;
    }
    let image = pushed("failing:v1", "", &[]);
    let json = serde_json::json!({
      "family": "fails",
      "containerDefinitions": [
        {"name": "init", "image": image, "essential": false,
         "entryPoint": ["/bin/sh", "-c", "echo cannot copy the agent >&2; exit 3"]},
        {"name": "app", "image": image,
         "entryPoint": ["/bin/sleep", "1000"],
         "dependsOn": [{"containerName": "init", "condition": "SUCCESS"}]}
      ]
    })
    .to_string();
    let task = TaskDefinition::from_json(&json).expect("parses");
    let err = run_task(docker(), &task, &RunOptions::default(), |_| {
        Err("none".into())
    })
    .expect_err("the app must not start");
    match &err {
        ExecError::Dependency {
            container,
            dependency,
            condition,
            outcome,
            logs,
        } => {
            assert_eq!((container.as_str(), dependency.as_str()), ("app", "init"));
            assert_eq!(*condition, DependencyCondition::Success);
            assert_eq!(outcome, "exited with code 3");
            assert!(logs.contains("cannot copy the agent"), "{logs}");
        }
        other => panic!("expected a dependency failure, got {other}"),
    }
    // Nothing of the failed task is left running.
    assert_eq!(
        docker()
            .run(["ps", "-aq", "--filter", "name=fails-"])
            .expect("ps"),
        ""
    );
}

#[test]
fn a_healthy_dependency_waits_for_the_health_check() {
    if flotilla_testkit::slow::skip("a private Docker Engine") {
        return;
    }
    let image = pushed("health:v1", "", &[]);
    let json = serde_json::json!({
      "family": "health",
      "containerDefinitions": [
        {"name": "db", "image": image, "essential": true,
         "entryPoint": ["/bin/sh", "-c", "sleep 2; touch /tmp/ready; exec sleep 1000"],
         "healthCheck": {"command": ["CMD-SHELL", "test -f /tmp/ready"],
                         "interval": 1, "timeout": 1, "retries": 10}},
        {"name": "app", "image": image, "essential": true,
         "entryPoint": ["/bin/sh", "-c", "echo started; exec sleep 1000"], "stopTimeout": 1,
         "dependsOn": [{"containerName": "db", "condition": "HEALTHY"}]}
      ]
    })
    .to_string();
    let task = TaskDefinition::from_json(&json).expect("parses");
    let started = Instant::now();
    let running = run_task(docker(), &task, &RunOptions::default(), |_| {
        Err("none".into())
    })
    .expect("task starts");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "the app waited for db's health check: {:?}",
        started.elapsed()
    );
    assert_eq!(running.state("db").expect("db").health, "healthy");
    assert_eq!(running.state("app").expect("app").status, "running");
}

#[test]
fn dropping_the_daemon_stops_it_its_containers_and_removes_its_directory() {
    if flotilla_testkit::slow::skip("a private Docker Engine") {
        return;
    }
    let docker = Docker::start().expect("dockerd starts");
    let image = docker.busybox_image().expect("busybox image");
    let id = docker
        .run([
            "run",
            "--detach",
            "--network",
            "host",
            &image,
            "sleep",
            "1000",
        ])
        .expect("container starts");
    let container_pid: u32 = docker
        .run(["inspect", "--format", "{{.State.Pid}}", id.trim()])
        .expect("inspect")
        .trim()
        .parse()
        .expect("a pid");
    let daemon_pid = docker.pid();
    let dir = docker.dir().to_owned();
    assert!(flotilla_testkit::procs::alive(container_pid));
    drop(docker);
    assert!(
        !flotilla_testkit::procs::alive(daemon_pid),
        "dockerd {daemon_pid} still runs"
    );
    assert!(
        !flotilla_testkit::procs::alive(container_pid),
        "container process {container_pid} still runs"
    );
    assert!(!dir.exists(), "{} was not removed", dir.display());
}

#[test]
fn an_essential_container_exiting_stops_the_task() {
    if flotilla_testkit::slow::skip("a private Docker Engine") {
        return;
    }
    let image = pushed("exits:v1", "", &[]);
    let json = serde_json::json!({
      "family": "exits",
      "containerDefinitions": [
        {"name": "app", "image": image,
         "entryPoint": ["/bin/sh", "-c", "sleep 1; echo crashing; exit 5"]},
        {"name": "agent", "image": image, "entryPoint": ["/bin/sleep", "1000"], "stopTimeout": 1}
      ]
    })
    .to_string();
    let task = TaskDefinition::from_json(&json).expect("parses");
    let running = run_task(docker(), &task, &RunOptions::default(), |_| {
        Err("none".into())
    })
    .expect("starts");
    let (first, exits) = running
        .wait_stopped(Duration::from_secs(30))
        .expect("the task stops");
    assert_eq!(first, "app");
    assert_eq!(exits, [("app".to_owned(), 5), ("agent".to_owned(), 137)]);
    assert_eq!(running.logs("app").expect("log").stdout, "crashing\n");
}

#[test]
fn an_arm64_task_does_not_run_an_x86_64_image() {
    if flotilla_testkit::slow::skip("a private Docker Engine") {
        return;
    }
    let image = pushed("amd64-only:v1", "", &[]);
    let json = serde_json::json!({
      "family": "graviton",
      "runtimePlatform": {"cpuArchitecture": "ARM64", "operatingSystemFamily": "LINUX"},
      "containerDefinitions": [{"name": "app", "image": image, "entryPoint": ["/bin/true"]}]
    })
    .to_string();
    let task = TaskDefinition::from_json(&json).expect("parses");
    let err = run_task(docker(), &task, &RunOptions::default(), |_| {
        Err("none".into())
    })
    .expect_err("an amd64 image must not start as arm64")
    .to_string();
    assert!(
        err.contains("does not match the specified platform: wanted linux/arm64"),
        "{err}"
    );
}
