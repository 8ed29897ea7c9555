//! Tidy tests: the architecture invariants of ARCHITECTURE.md that the compiler does not check,
//! read from the sources and manifests themselves.

use std::path::{Path, PathBuf};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("crates/flotilla-cli is two levels below the workspace root")
        .to_path_buf()
}

fn rust_files(dir: &Path, into: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable source directory") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, into);
        } else if path.extension().is_some_and(|e| e == "rs") {
            into.push(path);
        }
    }
}

/// `(line number, line)` of the code lines of `text` (comment lines left out) that name `word`.
fn code_lines_naming<'a>(text: &'a str, word: &str) -> Vec<(usize, &'a str)> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim_start().starts_with("//"))
        .filter(|(_, line)| line.contains(word))
        .map(|(n, line)| (n + 1, line))
        .collect()
}

/// "`providers.rs` is the only place that knows which provider crates exist" (with `baseline.rs`,
/// the AWS baseline's commands, which only exist with the AWS provider).
#[test]
fn only_providers_and_the_baseline_commands_name_provider_crates() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let allowed = [src.join("providers.rs"), src.join("baseline.rs")];
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut offences = Vec::new();
    for file in files.iter().filter(|f| !allowed.contains(f)) {
        let text = std::fs::read_to_string(file).expect("readable source");
        for krate in ["flotilla_aws", "flotilla_host", "flotilla_agent"] {
            for (n, line) in code_lines_naming(&text, &format!("{krate}::")) {
                offences.push(format!("{}:{n}: {}", file.display(), line.trim()));
            }
        }
    }
    assert!(
        offences.is_empty(),
        "provider crates named outside providers.rs (route it through a function there):\n{}",
        offences.join("\n")
    );
}

/// "Only flotilla-aws talks to AWS": no other crate has the AWS SDK among its (non-dev)
/// dependencies.
#[test]
fn only_the_aws_crate_depends_on_the_aws_sdk() {
    let crates = workspace_root().join("crates");
    let mut offences = Vec::new();
    for entry in std::fs::read_dir(&crates).expect("crates/") {
        let dir = entry.expect("entry").path();
        let manifest = dir.join("Cargo.toml");
        if dir.ends_with("flotilla-aws") || !manifest.exists() {
            continue;
        }
        let text = std::fs::read_to_string(&manifest).expect("readable manifest");
        let mut section = String::new();
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with('[') {
                section = line.to_owned();
                continue;
            }
            let normal = section == "[dependencies]" || section.starts_with("[target.");
            let sdk = line.starts_with("aws-sdk-") || line.starts_with("aws-config");
            if normal && sdk && !section.contains("dev-dependencies") {
                offences.push(format!("{}: {line}", manifest.display()));
            }
        }
    }
    assert!(
        offences.is_empty(),
        "the AWS SDK is a dependency of a crate other than flotilla-aws:\n{}",
        offences.join("\n")
    );
}

/// "Process groups are signalled in one place": `flotilla-process` spawns a child as a group
/// leader and stops the group; the agent and the host supervisor go through it, so no other
/// crate's source calls `killpg` or `setpgid` itself.
#[test]
fn only_the_process_crate_signals_process_groups() {
    let crates = workspace_root().join("crates");
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&crates).expect("crates/") {
        let dir = entry.expect("entry").path();
        if dir.ends_with("flotilla-process") || !dir.join("src").is_dir() {
            continue;
        }
        rust_files(&dir.join("src"), &mut files);
    }
    assert!(
        files
            .iter()
            .any(|f| f.ends_with("flotilla-host/src/supervisor.rs")),
        "the scan reaches the supervisor"
    );
    let mut offences = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("readable source");
        for call in ["killpg", "setpgid"] {
            for (n, line) in code_lines_naming(&text, call) {
                offences.push(format!("{}:{n}: {}", file.display(), line.trim()));
            }
        }
    }
    assert!(
        offences.is_empty(),
        "process groups signalled outside flotilla-process (use flotilla_process::group):\n{}",
        offences.join("\n")
    );
}

#[test]
fn the_checks_see_what_they_look_for() {
    // A check that never matches cannot fail: make sure the patterns match real offences.
    let text = "use flotilla_aws::stack;\n// flotilla_aws::mentioned in a comment\n";
    assert_eq!(code_lines_naming(text, "flotilla_aws::").len(), 1);
    let providers =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/providers.rs"))
            .expect("providers.rs");
    assert!(!code_lines_naming(&providers, "flotilla_host::").is_empty());
    let group =
        std::fs::read_to_string(workspace_root().join("crates/flotilla-process/src/group.rs"))
            .expect("group.rs");
    assert!(!code_lines_naming(&group, "killpg").is_empty());
}
