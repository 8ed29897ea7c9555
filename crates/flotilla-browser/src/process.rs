//! chromedriver as a child process on a free loopback port, and the guard that kills it and
//! every process it started (Chromium and its helpers) when dropped, by PID and nothing else.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flotilla_process::procfs;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::error::BrowserError;

/// How many ports to try when chromedriver loses the race for a port it was given.
const START_ATTEMPTS: u32 = 3;

/// How often readiness is polled while chromedriver starts.
const POLL: Duration = Duration::from_millis(50);

/// A running chromedriver. Dropping it kills chromedriver and every process it started.
#[derive(Debug)]
pub(crate) struct DriverProcess {
    child: Child,
    port: u16,
    log: PathBuf,
    /// A string that appears in the command line of every Chromium process of this browser and of
    /// no other: the unique profile directory. Catches helpers that were re-parented away.
    marker: String,
}

impl DriverProcess {
    /// Starts chromedriver and waits until it answers `/status` with `ready: true`.
    ///
    /// `workdir` receives its log; `marker` must be unique to this browser (the profile path).
    pub(crate) fn start(
        chromedriver: &Path,
        workdir: &Path,
        marker: String,
        timeout: Duration,
    ) -> Result<DriverProcess, BrowserError> {
        let mut last = None;
        for attempt in 0..START_ATTEMPTS {
            let log = workdir.join(format!("chromedriver-{attempt}.log"));
            match Self::start_once(chromedriver, &log, marker.clone(), timeout) {
                Ok(driver) => return Ok(driver),
                // Only an early exit can be a lost port race; a slow start will not improve.
                Err(e @ BrowserError::DriverStart { .. }) if !is_timeout(&e) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| BrowserError::DriverStart {
            reason: "no attempt was made".into(),
            log_tail: String::new(),
        }))
    }

    fn start_once(
        chromedriver: &Path,
        log: &Path,
        marker: String,
        timeout: Duration,
    ) -> Result<DriverProcess, BrowserError> {
        let port = free_port()?;
        let output = File::create(log).map_err(|source| BrowserError::Io {
            action: "create chromedriver log",
            path: log.to_path_buf(),
            source,
        })?;
        let stderr = output.try_clone().map_err(|source| BrowserError::Io {
            action: "share chromedriver log",
            path: log.to_path_buf(),
            source,
        })?;
        let child = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            // chromedriver otherwise accepts only loopback clients too, but say so explicitly.
            .arg("--allowed-ips=127.0.0.1")
            .stdin(Stdio::null())
            .stdout(output)
            .stderr(stderr)
            .spawn()
            .map_err(|e| BrowserError::DriverStart {
                reason: format!("cannot run {}: {e}", chromedriver.display()),
                log_tail: String::new(),
            })?;
        let mut driver = DriverProcess {
            child,
            port,
            log: log.to_path_buf(),
            marker,
        };
        driver.wait_ready(timeout)?;
        Ok(driver)
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<(), BrowserError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(BrowserError::DriverStart {
                    reason: format!("chromedriver exited with {status} before it was ready"),
                    log_tail: self.log_tail(),
                });
            }
            if status_ready(self.port) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(BrowserError::DriverStart {
                    reason: format!("{TIMEOUT_REASON} ({timeout:?})"),
                    log_tail: self.log_tail(),
                });
            }
            std::thread::sleep(POLL);
        }
    }

    /// The WebDriver endpoint, `http://127.0.0.1:PORT`.
    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// chromedriver's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last lines of chromedriver's output, for error messages.
    pub(crate) fn log_tail(&self) -> String {
        let mut text = String::new();
        if File::open(&self.log)
            .and_then(|mut f| f.read_to_string(&mut text))
            .is_err()
        {
            return format!("(log {} unreadable)", self.log.display());
        }
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Every live process this driver is responsible for, chromedriver first.
    pub(crate) fn process_ids(&self) -> Vec<u32> {
        let mut pids = vec![self.pid()];
        pids.extend(doomed(&process_table(), self.pid(), &self.marker));
        pids
    }
}

impl Drop for DriverProcess {
    fn drop(&mut self) {
        // Kill the browser's processes first, while they can still be found as chromedriver's
        // descendants, then chromedriver itself. SIGKILL: a test that is being torn down has no
        // use for a graceful exit, and nothing here may outlive it.
        for pid in doomed(&process_table(), self.pid(), &self.marker) {
            if let Ok(pid) = i32::try_from(pid) {
                // The process may already be gone; there is nothing useful to do about an error.
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Helpers that Chromium started and that were re-parented in the meantime.
        for pid in doomed(&process_table(), self.pid(), &self.marker) {
            if let Ok(pid) = i32::try_from(pid) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

const TIMEOUT_REASON: &str = "chromedriver did not report ready in time";

fn is_timeout(error: &BrowserError) -> bool {
    matches!(error, BrowserError::DriverStart { reason, .. } if reason.starts_with(TIMEOUT_REASON))
}

/// A port that was free a moment ago on 127.0.0.1.
fn free_port() -> Result<u16, BrowserError> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    TcpListener::bind(addr)
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| BrowserError::DriverStart {
            reason: format!("cannot find a free loopback port: {e}"),
            log_tail: String::new(),
        })
}

/// Whether chromedriver on `port` answers `GET /status` with `"ready": true`.
fn status_ready(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request =
        format!("GET /status HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let Some((_, body)) = response.split_once("\r\n\r\n") else {
        return false;
    };
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.pointer("/value/ready")
                .and_then(serde_json::Value::as_bool)
        })
        .unwrap_or(false)
}

/// One row of the process table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProcInfo {
    pub(crate) pid: u32,
    pub(crate) ppid: u32,
    /// The command line, arguments joined by spaces.
    pub(crate) cmdline: String,
    /// Zombies are dead already and cannot be killed; they are skipped.
    pub(crate) zombie: bool,
}

/// The live processes to kill for a driver: descendants of `root`, plus any process whose command
/// line contains `marker`. Never `root` itself (its `Child` handle kills and reaps it), never this
/// process, never a zombie.
pub(crate) fn doomed(table: &[ProcInfo], root: u32, marker: &str) -> Vec<u32> {
    let me = std::process::id();
    let mut found: Vec<u32> = Vec::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for p in table.iter().filter(|p| p.ppid == parent && p.pid != root) {
            if !found.contains(&p.pid) {
                found.push(p.pid);
                frontier.push(p.pid);
            }
        }
    }
    if !marker.is_empty() {
        for p in table.iter().filter(|p| p.cmdline.contains(marker)) {
            if !found.contains(&p.pid) {
                found.push(p.pid);
            }
        }
    }
    found.retain(|pid| {
        *pid != me && *pid != root && table.iter().any(|p| p.pid == *pid && !p.zombie)
    });
    found.sort_unstable();
    found
}

/// Reads the process table from `/proc`. Processes that vanish while being read are skipped.
pub(crate) fn process_table() -> Vec<ProcInfo> {
    procfs::pids()
        .into_iter()
        .filter_map(|pid| {
            let stat = procfs::stat(pid)?;
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            Some(ProcInfo {
                pid,
                ppid: stat.ppid,
                cmdline: cmdline.trim_end().to_string(),
                zombie: stat.zombie(),
            })
        })
        .collect()
}

/// Whether `pid` is still running (exists and is not a zombie).
pub fn is_alive(pid: u32) -> bool {
    procfs::alive(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pid: u32, ppid: u32, cmdline: &str) -> ProcInfo {
        ProcInfo {
            pid,
            ppid,
            cmdline: cmdline.into(),
            zombie: false,
        }
    }

    #[test]
    fn doomed_processes() {
        let me = std::process::id();
        let marker = "/tmp/flotilla-browser-x/profile";
        let table = vec![
            p(1, 0, "init"),
            p(100, 1, "chromedriver --port=1"),
            p(101, 100, &format!("chromium --user-data-dir={marker}")),
            p(102, 101, "chromium --type=zygote"),
            p(103, 102, "chromium --type=renderer"),
            // Re-parented to init, found by the marker.
            p(
                104,
                1,
                "chrome_crashpad_handler --database=/tmp/flotilla-browser-x/profile/Crashpad",
            ),
            // Another browser's processes: untouched.
            p(200, 1, "chromedriver --port=2"),
            p(
                201,
                200,
                "chromium --user-data-dir=/tmp/flotilla-browser-y/profile",
            ),
            // This very process, even if it looked like a descendant.
            p(me, 101, "test"),
            ProcInfo {
                pid: 105,
                ppid: 101,
                cmdline: "chromium".into(),
                zombie: true,
            },
        ];
        let check = |root: u32, marker: &str, expected: &[u32]| {
            assert_eq!(
                doomed(&table, root, marker),
                expected,
                "root {root} marker {marker:?}"
            );
        };
        check(100, marker, &[101, 102, 103, 104]);
        check(100, "", &[101, 102, 103]);
        check(200, "", &[201]);
        check(999, "", &[]);
        check(103, "", &[]);
    }

    #[test]
    fn this_process_is_alive_and_a_made_up_one_is_not() {
        assert!(is_alive(std::process::id()));
        assert!(!is_alive(u32::MAX));
    }
}
