//! Runs cfn-lint and checkov on the generated templates, offline, from the virtualenvs that
//! `scripts/cfn-tools.sh` creates. A missing virtualenv fails the test with the command to run.
//!
//! Besides "no errors, no failed checks", it proves the suppressions are honest: with every
//! `checkov: skip` removed, checkov must fail exactly the checks that were skipped (no skip is
//! unneeded, none hides a second failure), and each skip carries a written reason. A deliberately
//! broken template shows cfn-lint really validates what it is given.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use super::{template, variants};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("the crate lives in <root>/crates/<name>")
        .to_path_buf()
}

/// The path of `tool` in its project-local virtualenv, or a failure saying how to create it.
fn tool(venv: &str, tool: &str) -> PathBuf {
    let path = workspace_root()
        .join(".venv")
        .join(venv)
        .join("bin")
        .join(tool);
    assert!(
        path.is_file(),
        "{tool} is not installed at {}.\nCreate the linters' virtualenvs first:\n\n    \
         scripts/cfn-tools.sh\n\n(it makes .venv/cfn-lint and .venv/checkov from PyPI; both then run offline)",
        path.display()
    );
    path
}

fn run(command: &mut Command) -> Output {
    let shown = format!("{command:?}");
    command
        .output()
        .unwrap_or_else(|e| panic!("could not run {shown}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Writes each variant's template into `dir`, returning the paths.
fn write_templates(dir: &Path, strip_skips: bool) -> Vec<PathBuf> {
    variants()
        .iter()
        .map(|(label, options)| {
            let mut json = template(options).to_json();
            let suffix = if strip_skips {
                for resource in json["Resources"]
                    .as_object_mut()
                    .expect("resources are an object")
                    .values_mut()
                {
                    resource
                        .as_object_mut()
                        .expect("a resource is an object")
                        .remove("Metadata");
                }
                "-unsuppressed"
            } else {
                ""
            };
            let path = dir.join(format!("{label}{suffix}.json"));
            let body = serde_json::to_string_pretty(&json).expect("serialises");
            std::fs::write(&path, body).expect("write template");
            path
        })
        .collect()
}

#[test]
fn cfn_lint_finds_nothing_in_any_variant() {
    let cfn_lint = tool("cfn-lint", "cfn-lint");
    let dir = tempfile::tempdir().expect("tempdir");
    let files = write_templates(dir.path(), false);
    let out = run(Command::new(&cfn_lint)
        .args(["--format", "parseable", "--"])
        .args(&files));
    // cfn-lint's exit code is a bit mask: 2 errors, 4 warnings, 8 informational. Take none.
    assert!(
        out.status.success(),
        "cfn-lint reported problems (exit {:?}):\n{}{}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    );
}

#[test]
fn cfn_lint_rejects_a_broken_template() {
    let cfn_lint = tool("cfn-lint", "cfn-lint");
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, options) = &variants()[0];
    let mut json = template(options).to_json();
    json["Resources"]["HttpsListener"]["Properties"]["Port"] = Value::from(70_000);
    json["Resources"]["Vpc"]["Properties"]["NoSuchProperty"] = Value::from(true);
    let path = dir.path().join("broken.json");
    std::fs::write(&path, json.to_string()).expect("write template");
    let out = run(Command::new(&cfn_lint)
        .args(["--format", "parseable", "--"])
        .arg(&path));
    let code = out.status.code().unwrap_or(0);
    let report = text(&out.stdout);
    assert!(
        code & 2 != 0,
        "cfn-lint did not report errors (exit {code}):\n{report}"
    );
    assert!(report.contains("NoSuchProperty"), "{report}");
    assert!(report.contains("65535"), "{report}");
}

/// One checkov finding: (template file stem, check id, resource).
type Finding = (String, String, String);

/// Runs checkov on `files` and returns (failed, skipped) findings, each skip with its comment.
fn checkov(files: &[PathBuf]) -> (BTreeSet<Finding>, Vec<(Finding, String)>) {
    let checkov = tool("checkov", "checkov");
    let mut command = Command::new(&checkov);
    command.args([
        "--framework",
        "cloudformation",
        "--skip-download",
        "--output",
        "json",
    ]);
    for f in files {
        command.arg("--file").arg(f);
    }
    let out = run(&mut command);
    let stdout = text(&out.stdout);
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "checkov did not print a JSON report ({e}); exit {:?}\nstdout:\n{stdout}\nstderr:\n{}",
            out.status.code(),
            text(&out.stderr)
        )
    });
    // One framework gives one report object; be lenient about a list of them.
    let reports: Vec<&Value> = match &report {
        Value::Array(items) => items.iter().collect(),
        single => vec![single],
    };
    let mut failed = BTreeSet::new();
    let mut skipped = Vec::new();
    for r in reports {
        let parsing_errors = r["summary"]["parsing_errors"].as_u64().unwrap_or(0);
        assert_eq!(
            parsing_errors, 0,
            "checkov could not parse a template:\n{r:#}"
        );
        let finding = |c: &Value| -> Finding {
            let file = c["file_path"].as_str().unwrap_or_default();
            let stem = Path::new(file)
                .file_stem()
                .map(|s| s.to_string_lossy().replace("-unsuppressed", ""))
                .unwrap_or_default();
            (
                stem,
                c["check_id"].as_str().unwrap_or_default().to_owned(),
                c["resource"].as_str().unwrap_or_default().to_owned(),
            )
        };
        for c in r["results"]["failed_checks"]
            .as_array()
            .into_iter()
            .flatten()
        {
            failed.insert(finding(c));
        }
        for c in r["results"]["skipped_checks"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let comment = c["check_result"]["suppress_comment"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            skipped.push((finding(c), comment));
        }
    }
    (failed, skipped)
}

/// Every `checkov: skip` entry the templates declare, as findings.
fn declared_skips() -> BTreeSet<Finding> {
    let mut out = BTreeSet::new();
    for (label, options) in variants() {
        let json = template(&options).to_json();
        for (id, resource) in json["Resources"].as_object().expect("resources").iter() {
            let kind = resource["Type"].as_str().unwrap_or_default();
            for skip in resource["Metadata"]["checkov"]["skip"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let check = skip["id"].as_str().unwrap_or_default().to_owned();
                out.insert((label.to_owned(), check, format!("{kind}.{id}")));
            }
        }
    }
    out
}

#[test]
fn checkov_fails_nothing_and_every_suppression_is_needed_and_explained() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = write_templates(dir.path(), false);
    let (failed, skipped) = checkov(&files);
    assert!(
        failed.is_empty(),
        "checkov failed these checks (fix the template, or suppress with a reason in \
         the resource's `checkov: skip` metadata):\n{failed:#?}"
    );
    for ((file, id, resource), comment) in &skipped {
        assert!(
            comment.len() > 40 && comment.ends_with('.'),
            "{file}: {id} on {resource} is suppressed without a written reason: {comment:?}"
        );
    }
    let skipped: BTreeSet<Finding> = skipped.into_iter().map(|(f, _)| f).collect();
    let declared = declared_skips();
    assert_eq!(
        declared, skipped,
        "the template's `checkov: skip` entries (left) and what checkov reports as skipped \
         (right) differ: a skip names a check checkov does not run on that resource"
    );

    let bare = write_templates(dir.path(), true);
    let (unsuppressed, _) = checkov(&bare);
    let unneeded: Vec<&Finding> = skipped.difference(&unsuppressed).collect();
    let hidden: Vec<&Finding> = unsuppressed.difference(&skipped).collect();
    assert!(
        unneeded.is_empty() && hidden.is_empty(),
        "suppressions and failures disagree.\nsuppressed but passing anyway (remove the skip): \
         {unneeded:#?}\nfailing without suppressions but not reported as skipped: {hidden:#?}"
    );
}

/// The deployer policy as the only resource of a template, so both linters can read it.
fn deployer_policy_template(policy: Value) -> Value {
    serde_json::json!({
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": "flotilla deployer policy, wrapped for linting",
        "Resources": {
            "DeployerPolicy": {
                "Type": "AWS::IAM::ManagedPolicy",
                "Properties": { "PolicyDocument": policy },
            },
        },
    })
}

#[test]
fn the_deployer_policy_names_only_real_actions_and_passes_checkov() {
    use flotilla_baseline::{DeployerPolicyOptions, deployer_policy};
    use flotilla_core::DeploymentName;

    let cfn_lint = tool("cfn-lint", "cfn-lint");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut options = DeployerPolicyOptions::new(DeploymentName::new("prod").expect("valid"));
    options.region = Some("eu-west-1".into());
    options.account_id = Some("123456789012".into());
    let path = dir.path().join("deployer.json");
    let body = deployer_policy_template(deployer_policy(&options));
    std::fs::write(&path, body.to_string()).expect("write template");
    // cfn-lint checks every IAM action name against the service reference (W3037).
    let out = run(Command::new(&cfn_lint)
        .args(["--format", "parseable", "--"])
        .arg(&path));
    assert!(
        out.status.success(),
        "cfn-lint found problems in the deployer policy:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let (failed, skipped) = checkov(std::slice::from_ref(&path));
    assert!(
        failed.is_empty(),
        "checkov failed the deployer policy: {failed:#?}"
    );
    assert!(skipped.is_empty(), "{skipped:#?}");

    // And the check is real: a misspelt action is caught.
    let mut broken = deployer_policy(&options);
    broken["Statement"][0]["Action"][0] = Value::from("ecs:CreateServise");
    std::fs::write(&path, deployer_policy_template(broken).to_string()).expect("write template");
    let out = run(Command::new(&cfn_lint)
        .args(["--format", "parseable", "--"])
        .arg(&path));
    assert!(!out.status.success(), "cfn-lint accepted a misspelt action");
    assert!(text(&out.stdout).contains("W3037"), "{}", text(&out.stdout));
}
