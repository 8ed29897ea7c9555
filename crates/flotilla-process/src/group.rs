//! A child in its own process group, and stopping the group: the signal to the whole group, a
//! grace period for the leader (and, if asked, the rest of the group) to exit, then SIGKILL.

use std::process::ExitStatus;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use crate::procfs;

/// How often the group is looked at while waiting for members that are not our children.
const GROUP_POLL: Duration = Duration::from_millis(50);

/// How long, after SIGKILL, to watch members that are not our children go.
const KILLED_WITHIN: Duration = Duration::from_secs(2);

/// Starts `command` as the leader of a new process group (its process group id is its pid).
pub fn spawn_in_own_group(command: &mut Command) -> std::io::Result<Child> {
    command.process_group(0).spawn()
}

/// Sends `signal` to every process of group `pgid`. An error is ESRCH when the group is already
/// gone, which a caller stopping it usually wanted. A `pgid` of 0 signals nothing (for `killpg`
/// it would mean the caller's own group).
pub fn signal_group(pgid: u32, signal: Signal) -> nix::Result<()> {
    match i32::try_from(pgid) {
        Ok(0) | Err(_) => Err(nix::errno::Errno::ESRCH),
        Ok(pgid) => killpg(Pid::from_raw(pgid), signal),
    }
}

/// What happens to the rest of the group when its leader exits within the grace period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Leftovers {
    /// SIGKILL at once: what the app left behind goes with it (the agent, whose container ends).
    Kill,
    /// Give them the rest of the grace period, then SIGKILL (the host supervisor, before a
    /// restart or after a stop, where a slow-to-exit helper deserves its SIGTERM's time).
    Await,
}

/// How a group stopped.
#[derive(Debug)]
pub struct Stopped {
    /// The leader's exit status (or why it could not be waited for), when the leader was given
    /// as our child; `None` for a group that is not (one adopted from another process).
    pub leader: Option<std::io::Result<ExitStatus>>,
    /// Whether the grace period ran out and SIGKILL was sent.
    pub killed: bool,
}

/// Stops group `pgid`: `signal` to the group, then up to `grace` for the leader (`leader`, when it
/// is our child) to exit and, with [`Leftovers::Await`], for the group to empty (zombies count as
/// gone: members that are not our children are not ours to reap); then SIGKILL to the group.
/// With [`Leftovers::Kill`], the group gets SIGKILL as soon as the leader has exited.
pub async fn stop_group(
    pgid: u32,
    leader: Option<&mut Child>,
    signal: Signal,
    grace: Duration,
    leftovers: Leftovers,
) -> Stopped {
    let kill = || {
        let _ = signal_group(pgid, Signal::SIGKILL);
    };
    let _ = signal_group(pgid, signal);
    let deadline = tokio::time::Instant::now() + grace;
    let mut stopped = Stopped {
        leader: None,
        killed: false,
    };
    if let Some(child) = leader {
        match tokio::time::timeout_at(deadline, child.wait()).await {
            Ok(waited) => stopped.leader = Some(waited),
            Err(_) => {
                kill();
                stopped.leader = Some(child.wait().await);
                stopped.killed = true;
                return stopped;
            }
        }
    }
    if leftovers == Leftovers::Kill {
        kill();
        return stopped;
    }
    // The leader is gone; wait for the rest of its group.
    while pgid != 0 && procfs::group_alive(pgid) {
        if tokio::time::Instant::now() >= deadline {
            kill();
            // Not our children (an adopted group): see them go before saying they are stopped.
            let killed_by = tokio::time::Instant::now() + KILLED_WITHIN;
            while procfs::group_alive(pgid) && tokio::time::Instant::now() < killed_by {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            stopped.killed = true;
            return stopped;
        }
        tokio::time::sleep(GROUP_POLL).await;
    }
    stopped
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut command = Command::new("sh");
        command.arg("-c").arg(script).kill_on_drop(true);
        command
    }

    /// The pid of the one process a script wrote to `file`.
    async fn pid_in(file: &std::path::Path) -> u32 {
        for _ in 0..200 {
            if let Ok(text) = std::fs::read_to_string(file)
                && let Ok(pid) = text.trim().parse()
            {
                return pid;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no pid in {}", file.display());
    }

    #[tokio::test]
    async fn a_spawned_child_leads_its_own_group() {
        let mut child = spawn_in_own_group(&mut sh("sleep 30")).expect("spawn");
        let pid = child.id().expect("running");
        let stat = procfs::stat(pid).expect("stat");
        assert_eq!(stat.pgrp, pid);
        assert_ne!(
            stat.pgrp,
            procfs::stat(std::process::id()).expect("own").pgrp
        );
        let stopped = stop_group(
            pid,
            Some(&mut child),
            Signal::SIGTERM,
            Duration::from_secs(5),
            Leftovers::Kill,
        )
        .await;
        assert!(!stopped.killed, "sleep ends on SIGTERM");
        assert!(!procfs::group_alive(pid));
    }

    #[tokio::test]
    async fn a_leader_that_ignores_the_signal_is_killed_after_the_grace_period() {
        let mut child = spawn_in_own_group(&mut sh("trap '' TERM; while :; do sleep 0.05; done"))
            .expect("spawn");
        let pid = child.id().expect("running");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = std::time::Instant::now();
        let stopped = stop_group(
            pid,
            Some(&mut child),
            Signal::SIGTERM,
            Duration::from_millis(300),
            Leftovers::Await,
        )
        .await;
        assert!(stopped.killed);
        assert!(started.elapsed() >= Duration::from_millis(300));
        use std::os::unix::process::ExitStatusExt as _;
        let status = stopped.leader.expect("given").expect("waited");
        assert_eq!(status.signal(), Some(9));
        assert!(!procfs::group_alive(pid));
    }

    #[tokio::test]
    async fn what_the_leader_left_behind_is_killed_at_once_or_given_the_grace_period() {
        let dir = tempfile_dir();
        for leftovers in [Leftovers::Kill, Leftovers::Await] {
            let file = dir.join(format!("{leftovers:?}"));
            // The leader exits on SIGTERM; its background child ignores SIGTERM.
            let script = format!(
                "sh -c 'trap \"\" TERM; echo $$ > {}; while :; do sleep 0.05; done' & \
                 trap 'exit 0' TERM; while :; do sleep 0.05; done",
                file.display()
            );
            let mut child = spawn_in_own_group(&mut sh(&script)).expect("spawn");
            let pid = child.id().expect("running");
            let helper = pid_in(&file).await;
            assert_eq!(procfs::stat(helper).map(|s| s.pgrp), Some(pid));
            let started = std::time::Instant::now();
            let stopped = stop_group(
                pid,
                Some(&mut child),
                Signal::SIGTERM,
                Duration::from_millis(400),
                leftovers,
            )
            .await;
            let status = stopped.leader.expect("given").expect("waited");
            assert_eq!(status.code(), Some(0), "{leftovers:?}");
            match leftovers {
                Leftovers::Kill => {
                    assert!(!stopped.killed);
                    assert!(started.elapsed() < Duration::from_millis(400));
                }
                Leftovers::Await => {
                    assert!(stopped.killed, "the helper ignored SIGTERM");
                    assert!(started.elapsed() >= Duration::from_millis(400));
                }
            }
            // SIGKILL reached the helper: it is gone (or a zombie of init's).
            for _ in 0..200 {
                if !procfs::alive(helper) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert!(!procfs::alive(helper), "{leftovers:?}: the helper survived");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_group_that_is_not_our_child_is_stopped_through_proc() {
        // Started by a shell that exits at once: the sleeper is not this process's child.
        let dir = tempfile_dir();
        let file = dir.join("pid");
        let mut starter = sh(&format!(
            "setsid sh -c 'echo $$ > {}; exec sleep 30' >/dev/null 2>&1 &",
            file.display()
        ));
        starter.status().await.expect("starter");
        let pid = pid_in(&file).await;
        assert_eq!(procfs::stat(pid).map(|s| s.pgrp), Some(pid));
        let stopped = stop_group(
            pid,
            None,
            Signal::SIGTERM,
            Duration::from_secs(5),
            Leftovers::Await,
        )
        .await;
        assert!(!stopped.killed);
        assert!(stopped.leader.is_none());
        assert!(!procfs::group_alive(pid));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn group_zero_is_never_signalled() {
        // killpg(0) would signal this test's own group.
        assert_eq!(
            signal_group(0, Signal::SIGTERM),
            Err(nix::errno::Errno::ESRCH)
        );
    }

    /// A fresh directory for a test's pid files.
    fn tempfile_dir() -> std::path::PathBuf {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "flotilla-process-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }
}
