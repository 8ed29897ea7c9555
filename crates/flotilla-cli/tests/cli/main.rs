//! Integration tests of the `flotilla` binary: each runs the real binary in a temporary
//! directory, with a clean environment, and checks what a user would see and the exit code.

mod agent;
mod baseline;
mod baseline_moto;

use std::path::Path;
use std::process::{Command, Stdio};

/// What one run of the binary did.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `flotilla args` in `dir` with only `env` in its environment and stdin closed.
fn flotilla(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let output = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(args)
        .current_dir(dir)
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("the flotilla binary runs");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temporary directory")
}

/// A directory with a valid `flotilla.toml` written by `flotilla init`.
fn initialised() -> tempfile::TempDir {
    let dir = tempdir();
    let run = flotilla(dir.path(), &["init", "--name", "shop"], &[]);
    assert_eq!(run.code, 0, "{run:?}");
    dir
}

#[test]
fn help_lists_every_command_and_the_exit_codes() {
    let dir = tempdir();
    let run = flotilla(dir.path(), &["--help"], &[]);
    assert_eq!(run.code, 0, "{run:?}");
    for command in [
        "init", "deploy", "status", "drain", "rollback", "reap", "teardown", "verify", "logs",
        "config", "host", "agent", "baseline", "aws",
    ] {
        assert!(
            run.stdout
                .lines()
                .any(|l| l.trim_start().starts_with(command)),
            "`{command}` missing from --help:\n{}",
            run.stdout
        );
    }
    assert!(run.stdout.contains("Exit codes:"), "{run:?}");
    assert!(
        run.stdout.contains("5  the new version never got healthy"),
        "{run:?}"
    );
    assert!(run.stdout.contains("130  interrupted"), "{run:?}");
    assert!(run.stdout.contains("FLOTILLA_<SECTION>_<KEY>"), "{run:?}");
}

#[test]
fn every_command_has_help_with_examples() {
    let dir = tempdir();
    for command in [
        &["init"][..],
        &["deploy"],
        &["status"],
        &["drain"],
        &["rollback"],
        &["reap"],
        &["teardown"],
        &["verify"],
        &["logs"],
        &["config", "check"],
        &["host", "serve"],
        &["agent"],
        &["completions"],
        &["man"],
    ] {
        let mut args = command.to_vec();
        args.push("--help");
        let run = flotilla(dir.path(), &args, &[]);
        assert_eq!(run.code, 0, "{command:?}: {run:?}");
        assert!(
            run.stdout.contains("Example"),
            "{command:?} help has no examples:\n{}",
            run.stdout
        );
    }
    let deploy = flotilla(dir.path(), &["deploy", "--help"], &[]);
    for flag in ["--id", "--image", "--break-lock", "--json"] {
        assert!(deploy.stdout.contains(flag), "deploy --help lacks {flag}");
    }
}

#[test]
fn completions_and_manual_pages_come_from_the_command_definition() {
    let dir = tempdir();
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let run = flotilla(dir.path(), &["completions", shell], &[]);
        assert_eq!(run.code, 0, "{shell}: {run:?}");
        for word in ["flotilla", "deploy", "rollback", "break-lock"] {
            assert!(run.stdout.contains(word), "{shell} completion lacks {word}");
        }
    }
    let unknown = flotilla(dir.path(), &["completions", "tcsh"], &[]);
    assert_eq!(unknown.code, 2, "{unknown:?}");

    let pages = dir.path().join("man/man1");
    let run = flotilla(dir.path(), &["man", "man/man1"], &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let deploy = std::fs::read_to_string(pages.join("flotilla-deploy.1")).expect("deploy page");
    assert!(
        deploy.starts_with(".ie") || deploy.contains(".TH"),
        "not roff:\n{deploy}"
    );
    assert!(
        deploy.contains("break\\-lock"),
        "deploy page lacks --break-lock:\n{deploy}"
    );
    for page in [
        "flotilla.1",
        "flotilla-baseline-up.1",
        "flotilla-host-serve.1",
    ] {
        assert!(pages.join(page).exists(), "{page} missing");
    }
    let none_for_help = std::fs::read_dir(&pages)
        .expect("pages")
        .filter_map(Result::ok)
        .all(|e| !e.file_name().to_string_lossy().contains("-help"));
    assert!(
        none_for_help,
        "a page for the help pseudo-command was written"
    );

    std::fs::write(dir.path().join("file"), "").expect("a file");
    let blocked = flotilla(dir.path(), &["man", "file/man1"], &[]);
    assert_eq!(blocked.code, 2, "{blocked:?}");
    assert!(
        blocked.stderr.contains("cannot write the manual pages"),
        "{blocked:?}"
    );
}

#[test]
fn init_writes_a_config_that_config_check_accepts() {
    let parent = tempdir();
    let dir = parent.path().join("My Shop_2");
    std::fs::create_dir(&dir).expect("mkdir");
    let run = flotilla(&dir, &["init"], &[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.contains("wrote flotilla.toml for `my-shop-2`"),
        "{run:?}"
    );
    let text = std::fs::read_to_string(dir.join("flotilla.toml")).expect("written");
    assert!(text.contains("name = \"my-shop-2\""), "{text}");
    assert!(text.contains("provider = \"host\""), "{text}");
    assert!(text.contains("# "), "the file is commented");

    let check = flotilla(&dir, &["config", "check"], &[]);
    assert_eq!(check.code, 0, "{check:?}");
    assert!(
        check
            .stdout
            .contains("is valid: `my-shop-2` on the host provider"),
        "{check:?}"
    );
    assert!(check.stdout.contains("host.listen"), "{check:?}");

    let json = flotilla(&dir, &["config", "check", "--json"], &[]);
    assert_eq!(json.code, 0, "{json:?}");
    let doc: serde_json::Value = serde_json::from_str(&json.stdout).expect("one JSON document");
    assert_eq!(doc["ok"], true);
    assert_eq!(doc["config"]["name"], "my-shop-2");
    assert_eq!(
        doc["config"]["app"]["affinity_header"],
        "X-Flotilla-Deployment"
    );
}

#[test]
fn init_in_a_subdirectory_is_found_from_below() {
    let dir = initialised();
    let nested = dir.path().join("src/deep");
    std::fs::create_dir_all(&nested).expect("mkdir");
    let run = flotilla(&nested, &["config", "check"], &[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("`shop`"), "{run:?}");
}

#[test]
fn init_refuses_to_overwrite_without_force() {
    let dir = initialised();
    std::fs::write(dir.path().join("flotilla.toml"), "name = \"mine\"\n").expect("write");
    let run = flotilla(dir.path(), &["init"], &[]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains("flotilla.toml already exists"),
        "{run:?}"
    );
    assert!(run.stderr.contains("--force"), "{run:?}");
    let kept = std::fs::read_to_string(dir.path().join("flotilla.toml")).expect("read");
    assert_eq!(kept, "name = \"mine\"\n");

    let forced = flotilla(dir.path(), &["init", "--force", "--provider", "aws"], &[]);
    assert_eq!(forced.code, 0, "{forced:?}");
    let check = flotilla(dir.path(), &["config", "check"], &[]);
    assert_eq!(check.code, 0, "{check:?}");
    assert!(check.stdout.contains("on the aws provider"), "{check:?}");
}

const BROKEN: &str = "\
name = \"shop\"

[app]
helth_path = \"/healthz\"
port = \"8000\"

[host]
command = \"./run\"
instances = 0
";

#[test]
fn a_broken_config_exits_2_listing_every_problem_with_its_line() {
    let dir = tempdir();
    std::fs::write(dir.path().join("flotilla.toml"), BROKEN).expect("write");
    let run = flotilla(dir.path(), &["config", "check"], &[]);
    assert_eq!(run.code, 2, "{run:?}");
    let want = [
        "error: flotilla.toml has 3 problems:",
        "flotilla.toml:4:1: unknown key `helth_path` in [app]; did you mean `health_path`?",
        "flotilla.toml:5:8: `app.port` must be an integer, not a string (write 8000 without quotes)",
        "flotilla.toml:9:13: `host.instances` must be between 1 and 64, not 0",
        "hint: fix the problems above, then run `flotilla config check`",
    ];
    for line in want {
        assert!(run.stderr.contains(line), "missing {line:?} in {run:?}");
    }
    assert!(
        run.stderr
            .trim_end()
            .lines()
            .last()
            .is_some_and(|l| l.starts_with("hint:")),
        "the last line says what to do: {run:?}"
    );

    // Every command that reads the config refuses it the same way.
    let status = flotilla(dir.path(), &["status"], &[]);
    assert_eq!(status.code, 2, "{status:?}");
    assert!(status.stderr.contains("flotilla.toml:9:13"), "{status:?}");

    let json = flotilla(dir.path(), &["config", "check", "--json"], &[]);
    assert_eq!(json.code, 2, "{json:?}");
    let doc: serde_json::Value = serde_json::from_str(&json.stdout).expect("one JSON document");
    assert_eq!(doc["ok"], false);
    assert_eq!(doc["exit_code"], 2);
    let lines: Vec<u64> = doc["problems"]
        .as_array()
        .expect("problems")
        .iter()
        .map(|p| p["location"]["line"].as_u64().expect("line"))
        .collect();
    assert_eq!(lines, vec![4, 5, 9]);
}

#[test]
fn environment_and_flags_override_the_file() {
    let dir = initialised();
    let run = flotilla(
        dir.path(),
        &["config", "check", "--json", "--name", "shop-flag"],
        &[("FLOTILLA_APP_PORT", "9000"), ("FLOTILLA_NAME", "shop-env")],
    );
    assert_eq!(run.code, 0, "{run:?}");
    let doc: serde_json::Value = serde_json::from_str(&run.stdout).expect("one JSON document");
    assert_eq!(doc["config"]["app"]["port"], 9000);
    assert_eq!(doc["config"]["name"], "shop-flag");
    let source = |key: &str| {
        doc["sources"]
            .as_array()
            .expect("sources")
            .iter()
            .find(|s| s["key"] == key)
            .map(|s| s["origin"]["source"].clone())
            .expect("key listed")
    };
    assert_eq!(source("app.port"), "env");
    assert_eq!(source("name"), "flag");
    assert_eq!(source("drain.grace_seconds"), "file");

    let bad = flotilla(
        dir.path(),
        &["config", "check"],
        &[("FLOTILLA_APP_PORT", "eighty")],
    );
    assert_eq!(bad.code, 2, "{bad:?}");
    assert!(
        bad.stderr
            .contains("environment variable FLOTILLA_APP_PORT: `app.port` must be an integer"),
        "{bad:?}"
    );
}

#[test]
fn config_check_shows_a_presets_values_with_their_origin() {
    let dir = tempdir();
    std::fs::write(
        dir.path().join("flotilla.toml"),
        "name = \"shop\"\n[app]\nframework = \"pulse\"\nhealth_path = \"/ready\"\n\
         [host]\ncommand = \"./run\"\n",
    )
    .expect("write flotilla.toml");
    let run = flotilla(
        dir.path(),
        &["config", "check"],
        &[("FLOTILLA_APP_AFFINITY_HEADER", "X-Tab-Version")],
    );
    assert_eq!(run.code, 0, "{run:?}");
    let row = |key: &str| {
        run.stdout
            .lines()
            .find(|line| line.split_whitespace().next() == Some(key))
            .map(|line| {
                line.split_whitespace()
                    .skip(1)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_else(|| panic!("{key} not listed: {run:?}"))
    };
    assert_eq!(row("app.framework"), "\"pulse\" flotilla.toml:3:13");
    assert_eq!(
        row("app.affinity_query"),
        "\"pulse_deployment\" preset pulse"
    );
    assert_eq!(row("app.health_path"), "\"/ready\" flotilla.toml:4:15");
    assert_eq!(
        row("app.affinity_header"),
        "\"X-Tab-Version\" environment variable FLOTILLA_APP_AFFINITY_HEADER"
    );
}

#[test]
fn aws_without_a_baseline_names_what_is_missing() {
    // The AWS provider is built in: without a baseline it says what is missing and how to get
    // it, before any AWS call (the metadata service is off so nothing leaves the machine).
    let dir = initialised();
    let env = [
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ];
    let run = flotilla(dir.path(), &["status", "--provider", "aws"], &env);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains("the AWS baseline is incomplete: missing listener_arn, cluster"),
        "{run:?}"
    );
    assert!(run.stderr.contains("flotilla baseline up"), "{run:?}");
}

#[test]
fn without_a_config_commands_say_how_to_make_one() {
    let dir = tempdir();
    let run = flotilla(dir.path(), &["status"], &[]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("error: no flotilla.toml in"), "{run:?}");
    assert!(run.stderr.contains("hint: run `flotilla init`"), "{run:?}");
}

#[test]
fn usage_errors_exit_2() {
    let dir = initialised();
    let bad_id = flotilla(dir.path(), &["drain", "not-an-id"], &[]);
    assert_eq!(bad_id.code, 2, "{bad_id:?}");
    assert!(
        bad_id.stderr.contains("deployment id `not-an-id`"),
        "{bad_id:?}"
    );

    let no_target = flotilla(dir.path(), &["teardown"], &[]);
    assert_eq!(no_target.code, 2, "{no_target:?}");

    // Without a terminal to confirm on, teardown needs --yes before it touches anything.
    let unconfirmed = flotilla(dir.path(), &["teardown", "--all"], &[]);
    assert_eq!(unconfirmed.code, 2, "{unconfirmed:?}");
    assert!(unconfirmed.stderr.contains("pass --yes"), "{unconfirmed:?}");
}

#[test]
fn the_guides_dockerfiles_have_no_comments_after_an_instruction() {
    // Docker takes `#` as a comment only at the start of a line: after an instruction it becomes
    // part of the instruction (`COPY a b # note` copies files named `#` and `note`).
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs");
    let mut checked = 0;
    for guide in ["aws.md"] {
        let text = std::fs::read_to_string(docs.join(guide)).expect("guide");
        let mut in_dockerfile = false;
        for (n, line) in text.lines().enumerate() {
            let trimmed = line.trim_start();
            if trimmed.starts_with("```") {
                in_dockerfile = trimmed
                    .trim_start_matches('`')
                    .eq_ignore_ascii_case("dockerfile");
                continue;
            }
            if in_dockerfile && !trimmed.starts_with('#') {
                checked += 1;
                assert!(
                    !line.contains(" #"),
                    "docs/{guide}:{}: a comment after an instruction breaks the build: {line}",
                    n + 1
                );
            }
        }
    }
    assert!(checked > 0, "the guide has a Dockerfile example");
}
