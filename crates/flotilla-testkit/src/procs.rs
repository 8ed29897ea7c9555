//! Live processes read from `/proc` (Linux, through `flotilla-process`'s `procfs`): which ones run
//! inside a directory, which of those name a deployment in their environment, a process's
//! environment, and stopping a child a test started (SIGTERM, then SIGKILL after a deadline).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::Duration;

/// Whether `pid` is a live process: it exists and is not a zombie.
pub use flotilla_process::procfs::alive;

/// Every live process whose working directory is `root` or inside it. `root` must be canonical
/// (the kernel reports canonical paths). Empty when `/proc` cannot be read.
pub fn processes_under(root: &Path) -> Vec<u32> {
    flotilla_process::procfs::pids()
        .into_iter()
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(root))
                && alive(*pid)
        })
        .collect()
}

/// Those of `pids` whose environment holds `FLOTILLA_DEPLOYMENT_ID=<id>`: the instances of
/// version `id`.
pub fn running_version(pids: Vec<u32>, id: &str) -> Vec<u32> {
    let want = format!("FLOTILLA_DEPLOYMENT_ID={id}");
    pids.into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|e| e.split(|b| *b == 0).any(|v| v == want.as_bytes()))
        })
        .collect()
}

/// The environment of process `pid`, by name (empty when it cannot be read).
pub fn environ(pid: u32) -> BTreeMap<String, String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    raw.split(|b| *b == 0)
        .filter_map(|entry| {
            let entry = String::from_utf8_lossy(entry);
            let (k, v) = entry.split_once('=')?;
            Some((k.to_owned(), v.to_owned()))
        })
        .collect()
}

/// Stops `child`, a process the test started, if it still runs: SIGTERM (so it can stop what it
/// started in turn), up to `within` for it to exit, then SIGKILL. Its exit status, when it could be
/// waited for.
pub fn terminate(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    let exited = crate::wait::eventually(within, || child.try_wait().ok().flatten());
    if exited.is_some() {
        return exited;
    }
    let _ = child.kill();
    child.wait().ok()
}

/// Sends a signal with kill(1): `signal` as kill(1) takes it (`-9`, `-KILL`, `-TERM`, `-STOP`).
/// Whether kill(1) succeeded (it fails for a process that is gone).
pub fn kill(pid: u32, signal: &str) -> bool {
    Command::new("kill")
        .args([signal, &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// SIGKILLs whatever `find` returns (the processes a test left behind), up to `rounds` times,
/// 100 ms apart, until `find` returns nothing.
pub fn kill_survivors(rounds: u32, find: impl Fn() -> Vec<u32>) {
    for _ in 0..rounds {
        let left = find();
        if left.is_empty() {
            break;
        }
        for pid in left {
            kill(pid, "-KILL");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs `command` to its end within `limit`, collecting the output it pipes; past the limit,
/// SIGKILLs it and returns `None`.
pub fn output_within(command: &mut Command, limit: Duration) -> Option<Output> {
    let child = command.spawn().expect("the command starts");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => Some(out.expect("wait for the command")),
        Err(_) => {
            kill(pid, "-KILL");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_child_by_directory_and_environment_and_sees_it_end() {
        let dir = std::env::temp_dir().join(format!("flotilla-testkit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let root = dir.canonicalize().expect("canonical");
        let mut child = Command::new("sleep")
            .arg("30")
            .current_dir(&root)
            .env("FLOTILLA_DEPLOYMENT_ID", "20261125-190633-k3x9")
            .spawn()
            .expect("sleep runs");
        let pid = child.id();
        // Between fork and exec the child already has its working directory but still the
        // parent's environment; inside exec, the kernel names the new program before it records
        // where the new environment lies (/proc shows none meanwhile). On a loaded machine both
        // windows are long enough to observe: wait until /proc shows the child's own environment.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while running_version(vec![pid], "20261125-190633-k3x9").is_empty()
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let under = processes_under(&root);
        if under != vec![pid] {
            child.kill().ok();
            child.wait().ok();
        }
        assert_eq!(under, vec![pid]);
        assert_eq!(
            running_version(under.clone(), "20261125-190633-k3x9"),
            vec![pid]
        );
        assert!(running_version(under, "20261125-190633-zzzz").is_empty());
        child.kill().expect("kill");
        child.wait().expect("reaped");
        assert!(!alive(pid));
        assert!(processes_under(&root).is_empty());
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn environ_reads_a_childs_environment() {
        let mut child = Command::new("sleep")
            .arg("30")
            .env("FLOTILLA_TESTKIT_PROBE", "a=b")
            .spawn()
            .expect("sleep runs");
        // The new environment shows once exec has recorded it (see the test above).
        let seen = crate::wait::eventually(std::time::Duration::from_secs(5), || {
            environ(child.id()).get("FLOTILLA_TESTKIT_PROBE").cloned()
        });
        child.kill().ok();
        child.wait().ok();
        assert_eq!(seen.as_deref(), Some("a=b"));
    }

    #[test]
    fn terminate_sends_sigterm_then_sigkill_after_the_deadline() {
        use std::os::unix::process::ExitStatusExt as _;
        let mut polite = Command::new("sleep").arg("30").spawn().expect("sleep");
        let status = terminate(&mut polite, std::time::Duration::from_secs(5)).expect("waited");
        assert_eq!(status.signal(), Some(15));
        let mut stubborn = Command::new("sh")
            .args(["-c", "trap '' TERM; while :; do sleep 0.05; done"])
            .spawn()
            .expect("sh");
        std::thread::sleep(std::time::Duration::from_millis(100));
        let started = std::time::Instant::now();
        let status =
            terminate(&mut stubborn, std::time::Duration::from_millis(300)).expect("waited");
        assert_eq!(status.signal(), Some(9));
        assert!(started.elapsed() >= std::time::Duration::from_millis(300));
        assert_eq!(
            terminate(&mut stubborn, std::time::Duration::ZERO),
            Some(status)
        );
    }

    #[test]
    fn output_within_returns_the_output_or_kills_at_the_limit() {
        let out = output_within(
            Command::new("sh")
                .args(["-c", "echo hi"])
                .stdout(Stdio::piped()),
            std::time::Duration::from_secs(10),
        )
        .expect("in time");
        assert_eq!(out.stdout, b"hi\n");
        let started = std::time::Instant::now();
        let late = output_within(
            Command::new("sleep").arg("30"),
            std::time::Duration::from_millis(200),
        );
        assert!(late.is_none());
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
    }
}
