//! A `flotilla host front-door` process on loopback for end-to-end tests (the CLI's and the
//! browser's): started with its own socket and log in a temporary directory, stopped by pid
//! when dropped, with the front doors it handed over to.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::procs::{alive, kill};
use crate::wait::eventually;

/// A running front door.
pub struct FrontDoor {
    child: Child,
    successors: Vec<u32>,
    /// Its plain-HTTP address.
    pub http: SocketAddr,
    /// The socket apps register on (`[host] front_door_socket`).
    pub socket: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl FrontDoor {
    /// Starts `flotilla` (the binary at `bin`) as a front door on a free loopback HTTP port,
    /// also taking TLS on `https` if given (its apps terminate it), holding connections for a
    /// restarting app up to 15 s; waits until it listens.
    pub fn start(bin: &Path, https: Option<SocketAddr>) -> FrontDoor {
        let dir = tempfile::tempdir().expect("tempdir");
        let http = SocketAddr::from(([127, 0, 0, 1], crate::net::free_port()));
        let socket = dir.path().join("front-door.sock");
        let log = dir.path().join("front-door.log");
        let tls: Vec<String> = match https {
            Some(addr) => vec!["--https".into(), addr.to_string()],
            None => vec!["--no-https".into()],
        };
        let child = Command::new(bin)
            .args(["host", "front-door", "--hold", "15"])
            .args(&tls)
            .env("FLOTILLA_LOG", "debug")
            .arg("--http")
            .arg(http.to_string())
            .arg("--socket")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start the front door");
        let door = FrontDoor {
            child,
            successors: Vec::new(),
            http,
            socket,
            log,
            _dir: dir,
        };
        eventually(Duration::from_secs(10), || {
            std::net::TcpStream::connect(http).ok()
        })
        .unwrap_or_else(|| panic!("the front door never listened:\n{}", door.log_text()));
        door
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The pid of the front door serving now.
    pub fn pid(&self) -> u32 {
        self.successors.last().copied().unwrap_or(self.child.id())
    }

    /// SIGUSR2 to the serving front door; waits until it handed over and exited, and returns the
    /// new one's pid.
    pub fn upgrade(&mut self) -> u32 {
        let old = self.pid();
        kill(old, "-USR2");
        let exited = eventually(Duration::from_secs(30), || (!alive(old)).then_some(()));
        if old == self.child.id() {
            let _ = self.child.wait();
        }
        assert!(
            exited.is_some(),
            "the old front door did not exit:\n{}",
            self.log_text()
        );
        let new = self
            .log_text()
            .lines()
            .rev()
            .filter(|l| l.contains("handed over to the new front door"))
            .find_map(|l| {
                l.split("pid=")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no handover in the log:\n{}", self.log_text()));
        self.successors.push(new);
        new
    }
}

impl Drop for FrontDoor {
    fn drop(&mut self) {
        kill(self.child.id(), "-9");
        let _ = self.child.wait();
        for pid in &self.successors {
            kill(*pid, "-9");
        }
    }
}
