//! `flotilla agent` inside a container writes everything it decides to stderr, the task's log:
//! its start, the drain transitions it reads, and why it stops.

use super::{flotilla, tempdir};

use flotilla_testkit::net::free_port;

#[test]
fn flotilla_agent_logs_its_start_drain_transitions_and_exit_to_stderr() {
    let dir = tempdir();
    let state = dir.path().join("state");
    std::fs::write(&state, "draining").expect("state");
    let path = std::env::var("PATH").unwrap_or_default();
    let state_path = state.display().to_string();
    let listen = format!("127.0.0.1:{}", free_port());
    let app_port = free_port().to_string();
    // An app that lives long enough for a few polls, then exits with 3 on its own.
    let run = flotilla(
        dir.path(),
        &[
            "agent",
            "--listen",
            &listen,
            "--app-port",
            &app_port,
            "--",
            "sh",
            "-c",
            "sleep 3; exit 3",
        ],
        &[
            ("PATH", &path),
            ("FLOTILLA_DEPLOYMENT_NAME", "shop"),
            ("FLOTILLA_DEPLOYMENT_ID", "20261125-190633-k3x9"),
            ("FLOTILLA_INSTANCE", "task-1"),
            ("FLOTILLA_DRAIN_POLL_SECONDS", "1"),
            ("FLOTILLA_DRAIN_STATE_FILE", &state_path),
        ],
    );
    assert_eq!(run.code, 3, "the app's exit code: {run:?}");
    for line in [
        "starting the flotilla agent",
        "program=\"flotilla agent\"",
        "agent started",
        "drain_source=file",
        "version state changed from=\"unknown\" to=\"draining\"",
        "the app exited on its own; stopping the agent",
    ] {
        assert!(run.stderr.contains(line), "stderr lacks {line:?}: {run:?}");
    }
    assert!(!run.stderr.contains('\u{1b}'), "no colour codes: {run:?}");
}
