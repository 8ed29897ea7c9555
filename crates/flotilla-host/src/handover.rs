//! Handing a running daemon over to a new one (`flotilla host upgrade`, SIGUSR2) without closing
//! a listening socket or cutting a session.
//!
//! The protocol, between the old daemon A and the new one B (`docs/host.md` says it for users):
//!
//! 1. A starts B from the chosen binary with A's own arguments and working directory. A's
//!    listening sockets become B's descriptors 3, 4, ... (the same kernel sockets, accept queues
//!    included), named in [`LISTEN_FDS_VAR`] (`router:3,router:4,admin:5`: one entry per socket,
//!    keyed by the kind of listener, so a new kind only adds a name); `LISTEN_FDS` holds their
//!    count and [`UPGRADE_FROM_VAR`] A's pid.
//! 2. A stops every writer of the state directory: it stops accepting on its RPC socket (the
//!    socket stays open, so clients queue instead of failing), waits for the requests in flight,
//!    the reaper pass and the drain observation in progress, and stops supervising its instances
//!    (they keep running). Its router keeps accepting and routing with the last table it had.
//!    Then A unlocks `daemon.lock`.
//! 3. B, which waited for that lock, takes it, adopts the instances like any restarted daemon,
//!    waits (briefly) for their first health checks, starts routing on the inherited sockets,
//!    and only then binds the RPC socket and tells systemd `MAINPID=` and `READY=1`. So there is
//!    always exactly one writer and always at least one process accepting on every socket.
//! 4. A sees B answer on the RPC socket with B's pid: B is ready. A stops accepting, lingers a
//!    moment asking each client on its open keep-alive connections to reconnect (which reaches
//!    B), and serves the connections it holds, WebSockets and event streams included, until they
//!    end or `[host] upgrade_deadline_seconds` passes. Meanwhile it writes the sessions it holds
//!    to [`previous_daemon_path`] every second, which B adds to its own when it decides whether a
//!    draining version may be retired. Then A exits, leaving the instances to B.
//!
//! If B exits, or is not ready within [`READY_TIMEOUT`], A kills it if needed, takes the lock
//! back, adopts its instances again and resumes as before; the client is told why, with B's log.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use flotilla_core::{DeploymentId, InstanceId};
use serde::{Deserialize, Serialize};

/// Names the inherited listening sockets: `router:3,router:4,admin:5`.
pub const LISTEN_FDS_VAR: &str = "FLOTILLA_LISTEN_FDS";
/// The pid of the daemon handing over, set in the new daemon's environment.
pub const UPGRADE_FROM_VAR: &str = "FLOTILLA_UPGRADE_FROM";
/// The first descriptor an inherited socket gets (after stdin, stdout and stderr).
pub const FIRST_FD: i32 = 3;
/// How long the new daemon has to become ready (take the lock, adopt, route, answer).
pub const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// How long the new daemon waits for the old one to unlock the state directory.
pub const LOCK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
/// How long the old daemon keeps serving its open keep-alive connections, each response asking
/// the client to reconnect, before it closes the idle ones.
pub const LINGER: std::time::Duration = std::time::Duration::from_secs(2);

/// The kind of listener of the router's sockets in [`LISTEN_FDS_VAR`].
pub const ROUTER: &str = "router";
/// The kind of listener of the status page's socket in [`LISTEN_FDS_VAR`].
pub const ADMIN: &str = "admin";
/// The kind of listener of the HTTPS router's sockets in [`LISTEN_FDS_VAR`].
pub const HTTPS: &str = "https";

/// The value of [`LISTEN_FDS_VAR`] for sockets of the given kinds, in order, numbered from
/// [`FIRST_FD`].
pub fn render_listen_fds<'a>(kinds: impl IntoIterator<Item = &'a str>) -> String {
    kinds
        .into_iter()
        .zip(FIRST_FD..)
        .map(|(kind, fd)| format!("{kind}:{fd}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Reads [`LISTEN_FDS_VAR`]: each socket's kind and descriptor, in order.
pub fn parse_listen_fds(text: &str) -> Result<Vec<(String, i32)>, String> {
    let mut out = Vec::new();
    for entry in text.split(',').filter(|e| !e.trim().is_empty()) {
        let (kind, fd) = entry
            .split_once(':')
            .ok_or_else(|| format!("`{entry}` is not KIND:FD"))?;
        let fd: i32 = fd
            .trim()
            .parse()
            .map_err(|_| format!("`{entry}`: `{fd}` is not a descriptor number"))?;
        if fd < FIRST_FD {
            return Err(format!(
                "`{entry}`: descriptor {fd} is not an inherited one"
            ));
        }
        if kind.is_empty() {
            return Err(format!("`{entry}` has no kind"));
        }
        if out.iter().any(|(_, f)| *f == fd) {
            return Err(format!("descriptor {fd} is named twice"));
        }
        out.push((kind.trim().to_owned(), fd));
    }
    Ok(out)
}

/// The listening sockets a new daemon inherited, by kind.
#[derive(Debug, Default)]
pub struct Inherited {
    by_kind: BTreeMap<String, Vec<std::net::TcpListener>>,
}

impl Inherited {
    /// The inherited sockets named in the environment, if this daemon was started by a handover.
    /// Each is checked to be a listening TCP socket and made close-on-exec again, so the
    /// processes this daemon starts do not inherit it.
    pub fn from_env() -> std::io::Result<Option<Inherited>> {
        let Ok(text) = std::env::var(LISTEN_FDS_VAR) else {
            return Ok(None);
        };
        let named = parse_listen_fds(&text).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{LISTEN_FDS_VAR}: {e}"),
            )
        })?;
        let mut fds = listenfd::ListenFd::from_env();
        let mut by_kind: BTreeMap<String, Vec<std::net::TcpListener>> = BTreeMap::new();
        for (kind, fd) in named {
            let index = usize::try_from(fd - FIRST_FD).expect("checked to be at least FIRST_FD");
            let listener = fds.take_tcp_listener(index)?.ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("{LISTEN_FDS_VAR} names descriptor {fd} ({kind}), which is not open"),
                )
            })?;
            by_kind.entry(kind).or_default().push(listener);
        }
        Ok(Some(Inherited { by_kind }))
    }

    /// Takes the sockets of one kind (none if there are none).
    pub fn take(&mut self, kind: &str) -> Vec<std::net::TcpListener> {
        self.by_kind.remove(kind).unwrap_or_default()
    }

    /// The kinds not taken, which this daemon does not know (a newer daemon's listener).
    pub fn left(&self) -> Vec<&str> {
        self.by_kind.keys().map(String::as_str).collect()
    }
}

/// Where a daemon that handed over writes the sessions it still serves.
pub fn previous_daemon_path(state_dir: &Path) -> PathBuf {
    state_dir.join("previous-daemon.json")
}

/// What a daemon that handed over still serves, written every second to
/// [`previous_daemon_path`] until it exits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviousDaemon {
    /// Its pid.
    pub pid: u32,
    /// Its start time (clock ticks since boot, `/proc/<pid>/stat`), so that a pid reused by
    /// another process is not taken for it.
    pub start_time: u64,
    /// When it cuts what is still open (seconds since the epoch).
    pub deadline_unix: u64,
    /// Client connections it still serves (upgraded ones included).
    pub connections: u64,
    /// Its open sessions (WebSockets, event streams) and running totals, per instance.
    pub sessions: Vec<HeldSessions>,
}

/// One instance's sessions held by a previous daemon.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldSessions {
    /// The version.
    pub id: DeploymentId,
    /// The instance.
    pub instance: InstanceId,
    /// Sessions open now.
    pub live: u64,
    /// Sessions it started since it began counting.
    pub started: u64,
}

impl PreviousDaemon {
    /// The sessions it holds on one instance.
    pub fn held(&self, id: &DeploymentId, instance: &InstanceId) -> Option<&HeldSessions> {
        self.sessions
            .iter()
            .find(|s| &s.id == id && &s.instance == instance)
    }

    /// Its open sessions, all instances together.
    pub fn live_sessions(&self) -> u64 {
        self.sessions.iter().map(|s| s.live).sum()
    }

    /// Whether the record describes a process that still runs, given that pid's start time now
    /// (`None`: no such process, or a zombie).
    pub fn is_alive(&self, start_time_now: Option<u64>) -> bool {
        start_time_now == Some(self.start_time)
    }
}

/// Reads the previous daemon's record; `None` when there is none, it is unreadable, or its
/// daemon has exited (then the file is removed).
pub fn read_previous(state_dir: &Path) -> Option<PreviousDaemon> {
    let path = previous_daemon_path(state_dir);
    let text = std::fs::read_to_string(&path).ok()?;
    let record: PreviousDaemon = serde_json::from_str(&text).ok()?;
    let now = crate::procfs::stat(record.pid)
        .filter(|s| !s.zombie())
        .map(|s| s.start_time);
    if record.is_alive(now) {
        Some(record)
    } else {
        let _ = std::fs::remove_file(&path);
        None
    }
}

/// Writes the record atomically (a temporary file renamed over it), owner-only.
pub fn write_previous(state_dir: &Path, record: &PreviousDaemon) -> std::io::Result<()> {
    use std::io::Write;
    let path = previous_daemon_path(state_dir);
    let tmp = path.with_extension("json.tmp");
    {
        let mut file = crate::private::private_create(&tmp)?;
        file.write_all(
            serde_json::to_string(record)
                .expect("the record serialises")
                .as_bytes(),
        )?;
    }
    std::fs::rename(&tmp, &path)
}

/// Sends `state` to systemd's notification socket (`$NOTIFY_SOCKET`, a path or an abstract
/// `@name`), as `sd_notify` does. `Ok(false)` when there is no such socket (not run by systemd
/// with `Type=notify`).
pub fn sd_notify(state: &str) -> std::io::Result<bool> {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    sd_notify_to(&target, state)?;
    Ok(true)
}

/// Sends `state` to the notification socket `target` (a path, or `@name` in the abstract
/// namespace).
pub fn sd_notify_to(target: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    let socket = std::os::unix::net::UnixDatagram::unbound()?;
    let bytes = target.as_encoded_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        socket.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        socket.send_to(state.as_bytes(), Path::new(target))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_fds_name_each_socket_by_kind_from_descriptor_3() {
        let text = render_listen_fds([ROUTER, ROUTER, ADMIN]);
        assert_eq!(text, "router:3,router:4,admin:5");
        assert_eq!(
            parse_listen_fds(&text).expect("valid"),
            vec![
                ("router".to_owned(), 3),
                ("router".to_owned(), 4),
                ("admin".to_owned(), 5)
            ]
        );
        // A kind this daemon does not know yet (a newer one's listener) parses all the same.
        assert_eq!(
            parse_listen_fds("router:3,https:4").expect("valid")[1],
            ("https".to_owned(), 4)
        );
    }

    #[test]
    fn malformed_listen_fds_are_refused_with_the_entry() {
        for (text, says) in [
            ("router", "`router` is not KIND:FD"),
            ("router:x", "`x` is not a descriptor number"),
            ("router:1", "descriptor 1 is not an inherited one"),
            (":3", "has no kind"),
            ("router:3,admin:3", "descriptor 3 is named twice"),
        ] {
            let err = parse_listen_fds(text).expect_err(text);
            assert!(err.contains(says), "{text}: {err}");
        }
        assert_eq!(parse_listen_fds("").expect("empty"), vec![]);
    }

    #[test]
    fn a_previous_daemon_counts_only_while_its_pid_has_the_same_start_time() {
        let record = PreviousDaemon {
            pid: 42,
            start_time: 1000,
            deadline_unix: 0,
            connections: 1,
            sessions: vec![],
        };
        assert!(record.is_alive(Some(1000)));
        assert!(!record.is_alive(Some(1001)), "the pid was reused");
        assert!(!record.is_alive(None), "it exited");
    }

    #[test]
    fn the_record_of_a_running_previous_daemon_is_read_back_and_an_exited_ones_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let me = crate::procfs::stat(std::process::id()).expect("own stat");
        let id = DeploymentId::generate(flotilla_core::Timestamp::from_secs(1_764_000_000), 1);
        let instance = InstanceId::new("i1").expect("instance");
        let record = PreviousDaemon {
            pid: std::process::id(),
            start_time: me.start_time,
            deadline_unix: 1,
            connections: 3,
            sessions: vec![HeldSessions {
                id: id.clone(),
                instance: instance.clone(),
                live: 2,
                started: 5,
            }],
        };
        write_previous(dir.path(), &record).expect("write");
        let read = read_previous(dir.path()).expect("this process runs");
        assert_eq!(read, record);
        assert_eq!(read.held(&id, &instance).map(|h| h.live), Some(2));
        assert_eq!(read.live_sessions(), 2);

        let gone = PreviousDaemon {
            start_time: me.start_time + 1,
            ..record
        };
        write_previous(dir.path(), &gone).expect("write");
        assert_eq!(read_previous(dir.path()), None);
        assert!(!previous_daemon_path(dir.path()).exists(), "removed");
    }

    /// The readiness message reaches a real datagram socket bound where `NOTIFY_SOCKET` would
    /// say, as a path and in the abstract namespace.
    #[test]
    fn sd_notify_sends_one_datagram_to_the_notify_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let socket = std::os::unix::net::UnixDatagram::bind(&path).expect("bind");
        socket
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .expect("timeout");
        let message = format!("MAINPID={}\nREADY=1", std::process::id());
        sd_notify_to(path.as_os_str(), &message).expect("send");
        let mut buf = [0u8; 256];
        let n = socket.recv(&mut buf).expect("a datagram");
        assert_eq!(std::str::from_utf8(&buf[..n]).expect("utf-8"), message);

        use std::os::linux::net::SocketAddrExt;
        let name = format!("flotilla-test-notify-{}", std::process::id());
        let addr =
            std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).expect("name");
        let socket = std::os::unix::net::UnixDatagram::bind_addr(&addr).expect("bind");
        sd_notify_to(std::ffi::OsStr::new(&format!("@{name}")), "READY=1").expect("send");
        let n = socket.recv(&mut buf).expect("a datagram");
        assert_eq!(&buf[..n], b"READY=1");
    }
}
