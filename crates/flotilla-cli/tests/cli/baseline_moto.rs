//! `flotilla baseline up|show|down` through the real binary against moto in server mode (started
//! on a free loopback port, killed by PID when the test ends): what a user sees and the exit
//! codes, from a first creation to a deletion refused while a version is recorded.
//!
//! moto's CloudFormation deletes no route table, so deleting the VPC fails; before
//! `baseline down` the test deletes them itself, as CloudFormation does on AWS (see
//! `crates/flotilla-aws/tests/moto/baseline.rs` for moto's gaps).

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use flotilla_testkit::moto::Moto;

use super::{Run, flotilla};

/// The raw calls these tests make to moto, past the binary: what they set up or check.
trait Calls {
    fn cloudformation(&self, form: &str) -> (u16, String);
    fn ssm(&self, action: &str, body: &str) -> (u16, String);
    fn delete_route_tables(&self, vpc: &str);
}

impl Calls for Moto {
    fn cloudformation(&self, form: &str) -> (u16, String) {
        self.query("cloudformation", "2010-05-15", form)
    }

    fn ssm(&self, action: &str, body: &str) -> (u16, String) {
        self.call(
            "ssm",
            &[
                ("Content-Type", "application/x-amz-json-1.1"),
                ("X-Amz-Target", &format!("AmazonSSM.{action}")),
            ],
            body,
        )
    }

    /// Deletes the route tables of `vpc` that can be deleted: what CloudFormation deletes on AWS
    /// and moto's does not, so that deleting the VPC succeeds.
    fn delete_route_tables(&self, vpc: &str) {
        let (_, tables) = self.query(
            "ec2",
            "2016-11-15",
            &format!("Action=DescribeRouteTables&Filter.1.Name=vpc-id&Filter.1.Value.1={vpc}"),
        );
        let mut ids: Vec<&str> = tables
            .split("<routeTableId>")
            .skip(1)
            .filter_map(|s| s.split("</routeTableId>").next())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        for id in ids {
            // The main table refuses; it goes with the VPC.
            let _ = self.query(
                "ec2",
                "2016-11-15",
                &format!("Action=DeleteRouteTable&RouteTableId={id}"),
            );
        }
    }
}

fn env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ]
}

/// `flotilla.toml` for the AWS app `shop` in `dir`, with moto as its endpoint.
fn write_aws_config(dir: &Path, moto: &Moto) {
    std::fs::write(
        dir.join("flotilla.toml"),
        format!(
            "name = \"shop\"\nprovider = \"aws\"\n[aws]\nregion = \"us-east-1\"\n\
             endpoint_url = \"{}\"\n",
            moto.url()
        ),
    )
    .expect("write config");
}

fn run(dir: &Path, args: &[&str]) -> Run {
    flotilla(dir, args, &env())
}

#[test]
fn baseline_up_show_and_down_through_the_binary() {
    if flotilla_testkit::slow::skip("moto") {
        return;
    }
    let moto = Moto::start();
    let dir = super::tempdir();
    write_aws_config(dir.path(), &moto);

    // Nothing yet: `show` says how to make it.
    let show = run(dir.path(), &["baseline", "show"]);
    assert_eq!(show.code, 2, "{show:?}");
    assert!(show.stderr.contains("no stack flotilla-shop"), "{show:?}");
    assert!(show.stderr.contains("flotilla baseline up"), "{show:?}");

    // A first `up` off a terminal creates without asking (nothing exists to destroy).
    let up = run(
        dir.path(),
        &["baseline", "up", "--reaper-binary", "/bin/true"],
    );
    assert_eq!(up.code, 0, "{up:?}");
    assert!(
        up.stderr
            .contains("stack flotilla-shop does not exist; creating it makes"),
        "{up:?}"
    );
    assert!(up.stderr.contains("ReaperFunction"), "{up:?}");
    assert!(
        up.stderr.contains("-> uploading the reaper's code"),
        "{up:?}"
    );
    assert!(
        up.stderr.contains("CREATE_COMPLETE"),
        "events shown: {up:?}"
    );
    assert!(
        up.stdout.contains(
            "stack flotilla-shop created; outputs cached in .flotilla/shop/baseline.json"
        ),
        "{up:?}"
    );
    assert!(up.stdout.contains("mode: http-only"), "{up:?}");
    let cache = dir.path().join(".flotilla/shop/baseline.json");
    let cached: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cache).expect("cached")).expect("json");
    assert_eq!(cached["reaper_function_name"], "flotilla-shop-reaper");
    // The cache is this machine's: `.flotilla/` keeps itself out of the app's repository.
    assert_eq!(
        std::fs::read_to_string(dir.path().join(".flotilla/.gitignore")).expect("a .gitignore"),
        "*\n"
    );

    // Again: nothing to change.
    let again = run(
        dir.path(),
        &["baseline", "up", "--reaper-binary", "/bin/true", "--json"],
    );
    assert_eq!(again.code, 0, "{again:?}");
    assert!(
        again
            .stderr
            .contains("nothing to change: stack flotilla-shop already matches flotilla.toml"),
        "{again:?}"
    );
    let doc: serde_json::Value = serde_json::from_str(&again.stdout).expect("one JSON document");
    assert_eq!(doc["plan"]["kind"], "no_change");
    assert_eq!(doc["result"]["changed"], false);

    // `show`, from AWS and offline.
    let show = run(dir.path(), &["baseline", "show"]);
    assert_eq!(show.code, 0, "{show:?}");
    assert!(
        show.stdout.contains("stack flotilla-shop: UPDATE_COMPLETE"),
        "{show:?}"
    );
    assert!(show.stdout.contains("flotilla-shop-reaper"), "{show:?}");
    let offline = run(dir.path(), &["baseline", "show", "--offline", "--json"]);
    assert_eq!(offline.code, 0, "{offline:?}");
    let doc: serde_json::Value = serde_json::from_str(&offline.stdout).expect("json");
    assert_eq!(doc["stack"], serde_json::Value::Null);
    assert_eq!(doc["outputs"], cached);

    // Where `.flotilla/` is not kept (a CI job), commands read the outputs from the stack.
    std::fs::remove_file(&cache).expect("remove the cache");
    let status = run(dir.path(), &["status"]);
    assert_eq!(status.code, 0, "{status:?}");
    assert!(
        status.stderr.contains(
            "read the baseline's outputs from stack flotilla-shop into .flotilla/shop/baseline.json"
        ),
        "{status:?}"
    );
    let reread: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cache).expect("cached again"))
            .expect("json");
    assert_eq!(reread, cached);

    // A recorded version makes `down` refuse (exit 6), naming it.
    let id = "20261125-190633-k3x9";
    let put = moto.ssm(
        "PutParameter",
        &format!(r#"{{"Name":"/apps/shop/{id}/state","Value":"active","Type":"String"}}"#),
    );
    assert_eq!(put.0, 200, "{put:?}");
    let refused = run(dir.path(), &["baseline", "down", "--yes"]);
    assert_eq!(refused.code, 6, "{refused:?}");
    assert!(refused.stderr.contains(id), "{refused:?}");
    assert!(
        refused.stderr.contains("flotilla teardown --all"),
        "{refused:?}"
    );
    assert!(cache.exists());
    let deleted = moto.ssm(
        "DeleteParameter",
        &format!(r#"{{"Name":"/apps/shop/{id}/state"}}"#),
    );
    assert_eq!(deleted.0, 200, "{deleted:?}");

    // What CloudFormation deletes on AWS and moto's does not: the stack's route tables.
    moto.delete_route_tables(cached["vpc_id"].as_str().expect("vpc id"));

    let down = run(dir.path(), &["baseline", "down", "--yes"]);
    assert_eq!(down.code, 0, "{down:?}");
    assert!(
        down.stdout
            .contains("stack flotilla-shop deleted; removed .flotilla/shop/baseline.json"),
        "{down:?}"
    );
    assert!(
        down.stderr.contains("-> emptying the artefact bucket"),
        "{down:?}"
    );
    assert!(!cache.exists());
    let again = run(dir.path(), &["baseline", "down", "--yes"]);
    assert_eq!(again.code, 0, "{again:?}");
    assert!(
        again.stdout.contains("there is no stack flotilla-shop"),
        "{again:?}"
    );
}

/// The body of `GET path` on moto as bytes (an S3 object), signed for S3 as moto routes it.
fn s3_get(moto: &Moto, path: &str) -> (u16, Vec<u8>) {
    let response = flotilla_testkit::http::exchange(
        ("127.0.0.1", moto.port),
        &format!("127.0.0.1:{}", moto.port),
        "GET",
        path,
        &[(
            "Authorization",
            "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/s3/aws4_request, \
             SignedHeaders=host, Signature=0",
        )],
        b"",
        Duration::from_secs(30),
    )
    .expect("GET from moto's S3");
    assert_ne!(
        response
            .header("transfer-encoding")
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("chunked"),
        "{:?}",
        response.headers
    );
    (response.status, response.body)
}

/// A static ELF executable for this machine's architecture (no program headers, so no dynamic
/// loader), padded with `payload`: what `baseline up` must recognise as a static reaper.
fn static_elf(payload: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; 64];
    b[..4].copy_from_slice(b"\x7fELF");
    b[4] = 2;
    b[5] = 1;
    b[6] = 1;
    b[16] = 2;
    let machine: u16 = if cfg!(target_arch = "aarch64") {
        0xb7
    } else {
        0x3e
    };
    b[18..20].copy_from_slice(&machine.to_le_bytes());
    b.extend_from_slice(payload);
    b
}

#[test]
fn baseline_up_from_a_build_directory_uploads_the_static_reaper_beside_it() {
    if flotilla_testkit::slow::skip("moto") {
        return;
    }
    let moto = Moto::start();
    let dir = super::tempdir();
    write_aws_config(dir.path(), &moto);
    // A build tree like cargo's: target/release/flotilla, and the static build's output in
    // target/static/ (scripts/build-static.sh). The binary is linked there (same file system as
    // the build) so that it really runs from that directory.
    let target = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp target");
    let release = target.path().join("release");
    std::fs::create_dir_all(&release).expect("mkdir");
    let exe = release.join("flotilla");
    if std::fs::hard_link(env!("CARGO_BIN_EXE_flotilla"), &exe).is_err() {
        std::fs::copy(env!("CARGO_BIN_EXE_flotilla"), &exe).expect("copy flotilla");
    }
    let arch = if cfg!(target_arch = "aarch64") {
        "arm64"
    } else {
        "x86_64"
    };
    std::fs::create_dir_all(target.path().join("static")).expect("mkdir");
    let reaper = target
        .path()
        .join("static")
        .join(format!("flotilla-aws-reaper-{arch}"));
    let reaper_bytes = static_elf(&[7u8; 4096]);
    std::fs::write(&reaper, &reaper_bytes).expect("write reaper");

    let out = Command::new(&exe)
        .args(["baseline", "up"])
        .current_dir(dir.path())
        .env_clear()
        .envs(env())
        .stdin(Stdio::null())
        .output()
        .expect("run flotilla");
    let up = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert_eq!(up.code, 0, "{up:?}");
    let said = format!(
        "reaper: the static reaper built by scripts/build-static.sh; {} ({arch}, static), 0.0 MB \
         unzipped",
        reaper.display()
    );
    assert!(up.stderr.contains(&said), "{up:?}");
    assert!(
        up.stderr.contains("-> uploading the reaper's code"),
        "{up:?}"
    );

    // What was uploaded is that reaper, as `bootstrap`.
    let cache = dir.path().join(".flotilla/shop/baseline.json");
    let cached: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cache).expect("cached")).expect("json");
    let bucket = cached["artefact_bucket"].as_str().expect("artefact bucket");
    let (status, listing) = s3_get(&moto, &format!("/{bucket}?list-type=2"));
    assert_eq!(status, 200);
    let listing = String::from_utf8_lossy(&listing);
    let key = listing
        .split("<Key>")
        .nth(1)
        .and_then(|s| s.split("</Key>").next())
        .unwrap_or_else(|| panic!("no object in {bucket}: {listing}"));
    assert!(
        key.starts_with("reaper/") && key.ends_with("/bootstrap.zip"),
        "{key}"
    );
    let (status, zip) = s3_get(&moto, &format!("/{bucket}/{key}"));
    assert_eq!(status, 200);
    let zip_path = dir.path().join("uploaded.zip");
    std::fs::write(&zip_path, &zip).expect("write zip");
    let unzipped = Command::new("python3")
        .args([
            "-c",
            "import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); \
             i = z.getinfo('bootstrap'); print(oct(i.external_attr >> 16 & 0o777)); \
             sys.stdout.flush(); sys.stdout.buffer.write(z.read('bootstrap'))",
        ])
        .arg(&zip_path)
        .output()
        .expect("python3 unzips");
    assert!(unzipped.status.success(), "{unzipped:?}");
    let (mode, body) = unzipped.stdout.split_at(
        unzipped
            .stdout
            .iter()
            .position(|&b| b == b'\n')
            .expect("mode line")
            + 1,
    );
    assert_eq!(mode, b"0o755\n");
    assert_eq!(
        body,
        reaper_bytes.as_slice(),
        "the uploaded bootstrap is the static reaper"
    );
}

/// The stack's status as moto's DescribeStacks gives it, or `None` when there is none.
fn stack_status(moto: &Moto, name: &str) -> Option<String> {
    let (code, body) = moto.cloudformation(&format!("Action=DescribeStacks&StackName={name}"));
    if code != 200 {
        return None;
    }
    body.split("<StackStatus>")
        .nth(1)
        .and_then(|s| s.split("</StackStatus>").next())
        .map(str::to_owned)
}

/// Issue 11 item 10: a stack deletion that failed (moto's, started behind the cache's back,
/// stops at the VPC with DependencyViolation and leaves no stack) left cached outputs naming a
/// listener that is gone; every command then failed with `ListenerNotFound`, the rerun of
/// `teardown --all --baseline` too, and only `baseline down`, which no hint named, cleared it.
/// Now a command that meets a missing resource checks the cache against the stack, refreshes or
/// removes it, and each hint, followed literally, converges.
#[test]
fn a_stack_deleted_behind_the_cache_is_not_trusted_and_every_hint_converges() {
    if flotilla_testkit::slow::skip("moto") {
        return;
    }
    let moto = Moto::start();
    let dir = super::tempdir();
    write_aws_config(dir.path(), &moto);
    let up = run(
        dir.path(),
        &["baseline", "up", "--reaper-binary", "/bin/true"],
    );
    assert_eq!(up.code, 0, "{up:?}");
    let cache = dir.path().join(".flotilla/shop/baseline.json");
    let status = run(dir.path(), &["status"]);
    assert_eq!(status.code, 0, "{status:?}");

    // A cache that differs from the stack (a listener that is not the stack's) is refreshed,
    // and "run the same command again" is then true.
    let text = std::fs::read_to_string(&cache).expect("cached");
    let mut doc: serde_json::Value = serde_json::from_str(&text).expect("json");
    let listener = doc["listener_arn"].as_str().expect("listener").to_owned();
    let (head, _) = listener
        .rsplit_once('/')
        .expect("an ARN with a listener id");
    doc["listener_arn"] = serde_json::Value::String(format!("{head}/0000000000000000"));
    std::fs::write(&cache, doc.to_string()).expect("write cache");
    let status = run(dir.path(), &["status"]);
    assert_eq!(status.code, 6, "{status:?}");
    assert!(
        status.stderr.contains(
            "the baseline's outputs cached in .flotilla/shop/baseline.json did not match stack \
             flotilla-shop; they were refreshed from it"
        ),
        "{status:?}"
    );
    assert!(
        status.stderr.contains("run the same command again"),
        "{status:?}"
    );
    let status = run(dir.path(), &["status"]);
    assert_eq!(status.code, 0, "{status:?}");

    // The stack deleted behind the cache's back; moto stops at the VPC and keeps no stack.
    let (code, body) = moto.cloudformation("Action=DeleteStack&StackName=flotilla-shop");
    assert!(
        code == 200 || body.contains("DependencyViolation"),
        "{body}"
    );
    assert_eq!(
        stack_status(&moto, "flotilla-shop"),
        None,
        "moto's deletion"
    );
    assert!(
        cache.exists(),
        "nothing flotilla ran has touched the cache yet"
    );

    // `status` no longer fails on the listener again and again: it says the stack is gone,
    // removes the cache, and names what brings the baseline back.
    let status = run(dir.path(), &["status"]);
    assert_eq!(status.code, 6, "{status:?}");
    assert!(
        status.stderr.contains(
            "stack flotilla-shop no longer exists, so the resources its outputs cached in \
             .flotilla/shop/baseline.json named are gone; removed .flotilla/shop/baseline.json"
        ),
        "{status:?}"
    );
    assert!(
        status.stderr.contains(
            "run `flotilla baseline up` to create the baseline again, then run the same command \
             again"
        ),
        "{status:?}"
    );
    assert!(!cache.exists());

    // The rerun of `teardown --all --baseline` that looped: nothing is left, which is not an
    // error, and again the same.
    for _ in 0..2 {
        let teardown = run(dir.path(), &["teardown", "--all", "--baseline", "--yes"]);
        assert_eq!(teardown.code, 0, "{teardown:?}");
        assert!(
            teardown.stderr.contains("there is no stack flotilla-shop"),
            "{teardown:?}"
        );
    }

    // The hint `status` gave, followed: the baseline again, then `status` again.
    let up = run(
        dir.path(),
        &["baseline", "up", "--reaper-binary", "/bin/true"],
    );
    assert_eq!(up.code, 0, "{up:?}");
    let status = run(dir.path(), &["status"]);
    assert_eq!(status.code, 0, "{status:?}");
}

/// A CloudWatch Logs call on moto (JSON protocol).
fn logs_call(moto: &Moto, action: &str, body: &str) -> (u16, String) {
    moto.call(
        "logs",
        &[
            ("Content-Type", "application/x-amz-json-1.1"),
            ("X-Amz-Target", &format!("Logs_20140328.{action}")),
        ],
        body,
    )
}

fn put_lines(moto: &Moto, stream: &str, lines: &[&str]) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis();
    let events: Vec<serde_json::Value> = lines
        .iter()
        .enumerate()
        .map(|(i, l)| serde_json::json!({ "timestamp": now + i as u128, "message": l }))
        .collect();
    let body = serde_json::json!({
        "logGroupName": "/flotilla/shop",
        "logStreamName": stream,
        "logEvents": events,
    });
    let (code, text) = logs_call(moto, "PutLogEvents", &body.to_string());
    assert_eq!(code, 200, "{text}");
}

/// Issue 11 item 12: `logs --follow` on AWS was refused (exit 2). Now it prints a version's last
/// lines, then lines written while it runs, each once, until Ctrl-C, which ends it with exit 0.
/// The binary runs as a child process against moto; lines are written to moto's log group while
/// it follows; it is stopped by SIGINT to its PID. Which path followed (Live Tail, or polling
/// where Live Tail is unavailable) is what its notice on stderr says.
#[test]
fn logs_follow_prints_new_lines_once_until_ctrl_c() {
    if flotilla_testkit::slow::skip("moto") {
        return;
    }
    let moto = Moto::start();
    let dir = super::tempdir();
    // Outputs given in flotilla.toml: following needs only the log group (the cluster and
    // listener are what every command's provider is opened with, and are not called here).
    std::fs::write(
        dir.path().join("flotilla.toml"),
        format!(
            "name = \"shop\"\nprovider = \"aws\"\n[aws]\nregion = \"us-east-1\"\n\
             endpoint_url = \"{}\"\nlistener_arn = \"arn:aws:elasticloadbalancing:us-east-1:\
             123456789012:listener/app/shop/0123456789abcdef/0123456789abcdef\"\n\
             cluster = \"flotilla-shop\"\nlog_group = \"/flotilla/shop\"\n",
            moto.url()
        ),
    )
    .expect("write config");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let id =
        flotilla_core::DeploymentId::generate(flotilla_core::Timestamp::from_secs(now - 60), 7);
    let stream = format!("{id}/app/0f1e2d3c4b5a69788796a5b4c3d2e1f0");
    let (code, text) = logs_call(
        &moto,
        "CreateLogGroup",
        r#"{"logGroupName":"/flotilla/shop"}"#,
    );
    assert_eq!(code, 200, "{text}");
    let (code, text) = logs_call(
        &moto,
        "CreateLogStream",
        &format!(r#"{{"logGroupName":"/flotilla/shop","logStreamName":"{stream}"}}"#),
    );
    assert_eq!(code, 200, "{text}");
    put_lines(&moto, &stream, &["old-1", "old-2", "old-3"]);

    let mut child = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(["logs", id.as_str(), "--follow", "--lines", "2"])
        .current_dir(dir.path())
        .env_clear()
        .envs(env())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start flotilla logs --follow");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen: Vec<String> = Vec::new();
    let wait_for = |want: &str, seen: &mut Vec<String>| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !seen.iter().any(|l| l.ends_with(want)) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => seen.push(line),
                Err(_) => panic!("no line ending in {want:?} within 30 s; got {seen:?}"),
            }
        }
    };
    wait_for("old-3", &mut seen);
    put_lines(&moto, &stream, &["new-1", "new-2"]);
    wait_for("new-2", &mut seen);
    // A few more rounds of following: nothing is printed twice.
    std::thread::sleep(Duration::from_secs(3));
    while let Ok(line) = rx.try_recv() {
        seen.push(line);
    }

    let killed = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "still running 15 s after Ctrl-C");
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = reader.join();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    assert_eq!(status.code(), Some(0), "{stderr}");
    let prefix = format!("{id} | [0f1e2d3c] ");
    let expected: Vec<String> = ["old-2", "old-3", "new-1", "new-2"]
        .iter()
        .map(|l| format!("{prefix}{l}"))
        .collect();
    assert_eq!(seen, expected, "{stderr}");
    assert!(
        stderr.contains("following with CloudWatch Logs Live Tail")
            || stderr.contains("polling FilterLogEvents"),
        "{stderr}"
    );
    eprintln!("how it followed: {stderr}");
}
