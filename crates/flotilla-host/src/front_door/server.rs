//! The front door process (`flotilla host front-door`): owns the public ports, reads each new
//! connection's host name without consuming a byte, and hands the connection itself to the daemon
//! of the app registered for that host. From then on that daemon serves it exactly as if it had
//! accepted it: TLS with its own certificate, HTTP/2, WebSockets, its versions' routing. The
//! front door is not on the data path, so it costs one peek and one descriptor pass per
//! connection, not a second proxy hop per request.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_seqpacket::{UnixSeqpacket, UnixSeqpacketListener};

use super::registry::{Lookup, MemberId, Registry};
use super::sniff::{MAX_SNIFF_BYTES, Sniff, http_host, tls_server_name};
use super::wire::{self, Door, PROTOCOL, Register, Reply};
use crate::HostError;

/// How the front door runs.
#[derive(Clone, Debug)]
pub struct FrontDoorSettings {
    /// The plain HTTP door, if any.
    pub http: Option<SocketAddr>,
    /// The TLS door, if any.
    pub https: Option<SocketAddr>,
    /// The registration socket apps' daemons connect to.
    pub socket: PathBuf,
    /// How long a connection for an app whose daemon is away (restarting) waits for it to come
    /// back before it is answered 503.
    pub hold: Duration,
    /// How long a new connection may take to show its host name.
    pub sniff_timeout: Duration,
    /// A group whose members may register apps (the socket's directory and the socket are then
    /// group-accessible); `None`: only the front door's own user (and root).
    pub socket_group: Option<String>,
}

impl FrontDoorSettings {
    /// The documented defaults: ports 80 and 443 on every address, the default socket.
    pub fn new() -> Self {
        FrontDoorSettings {
            http: Some(SocketAddr::from(([0, 0, 0, 0], 80))),
            https: Some(SocketAddr::from(([0, 0, 0, 0], 443))),
            socket: default_socket(),
            hold: Duration::from_secs(10),
            sniff_timeout: Duration::from_secs(10),
            socket_group: None,
        }
    }
}

impl Default for FrontDoorSettings {
    fn default() -> Self {
        Self::new()
    }
}

/// Where the front door's registration socket is by default: `/run/flotilla/front-door.sock` for
/// root, else `$XDG_RUNTIME_DIR/flotilla/front-door.sock`, else
/// `/tmp/flotilla-<uid>/front-door.sock`.
pub fn default_socket() -> PathBuf {
    let uid = nix::unistd::getuid();
    if uid.is_root() {
        return PathBuf::from("/run/flotilla/front-door.sock");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir).join("flotilla/front-door.sock"),
        _ => PathBuf::from(format!("/tmp/flotilla-{uid}/front-door.sock")),
    }
}

/// A connection waiting to be handed to a member.
struct Handoff {
    stream: TcpStream,
    door: Door,
    peer: SocketAddr,
    local: SocketAddr,
    host: String,
    _in_flight: InFlight,
}

/// Counts a connection from its accept until it was handed over or answered, so that a front
/// door handing over to a new one knows when it holds none.
struct InFlight(Arc<std::sync::atomic::AtomicUsize>);

impl InFlight {
    fn new(count: &Arc<std::sync::atomic::AtomicUsize>) -> Self {
        count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        InFlight(count.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The host names a front door taking over should hold connections for (JSON: host → app),
/// set by the front door handing over.
pub const FRONT_DOOR_HOSTS_VAR: &str = "FLOTILLA_FRONT_DOOR_HOSTS";

/// The doors a member takes connections from, and its queue of connections to hand over.
type MemberQueue = (Vec<Door>, mpsc::Sender<Handoff>);

/// The registry and the queues of its members, shared by every task of the front door.
struct Shared {
    registry: Mutex<Registry>,
    queues: Mutex<HashMap<MemberId, MemberQueue>>,
    /// Bumped on every registration, for connections holding for an app that is away.
    registered: watch::Sender<u64>,
    settings: FrontDoorSettings,
    /// Connections accepted and not yet handed over or answered.
    in_flight: Arc<std::sync::atomic::AtomicUsize>,
    /// Set when this front door has handed over: every member is let go (its daemon registers
    /// with the new front door).
    closing: watch::Sender<bool>,
}

/// Runs the front door until `shutdown` completes, or until it has handed its ports over to a
/// new front door (SIGUSR2, `systemctl reload`: see [`hand_over`]).
pub async fn run(
    settings: FrontDoorSettings,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), HostError> {
    // The executable to start on SIGUSR2: the path this one was started from (after a package
    // upgrade, that path holds the new flotilla).
    let exe = std::env::current_exe().ok();
    let mut inherited = crate::handover::Inherited::from_env().map_err(HostError::io(
        "take the inherited sockets",
        crate::handover::LISTEN_FDS_VAR,
    ))?;
    let taking_over = inherited.is_some();
    let mut doors = Vec::new();
    for (door, addr) in [(Door::Http, settings.http), (Door::Https, settings.https)] {
        let Some(addr) = addr else { continue };
        let listener = match inherited.as_mut().and_then(|i| i.take(door.as_str()).pop()) {
            Some(listener) => listener,
            None => std::net::TcpListener::bind(addr)
                .map_err(|source| HostError::bind(addr, door_what(door), source))?,
        };
        listener
            .set_nonblocking(true)
            .map_err(|source| HostError::bind(addr, door_what(door), source))?;
        doors.push((door, listener));
    }
    if doors.is_empty() {
        return Err(HostError::Protocol(
            "the front door needs at least one of --http and --https".to_owned(),
        ));
    }
    let registrations = bind_socket(
        &settings.socket,
        settings.socket_group.as_deref(),
        taking_over,
    )?;
    let mut registry = Registry::default();
    if let Some(known) = std::env::var(FRONT_DOOR_HOSTS_VAR).ok().and_then(|text| {
        serde_json::from_str::<std::collections::BTreeMap<String, String>>(&text).ok()
    }) {
        for (host, app) in known {
            registry.remember(&host, &app);
        }
    }
    tracing::info!(
        http = ?settings.http, https = ?settings.https, socket = %settings.socket.display(),
        taking_over, "flotilla front door serving"
    );
    let (registered, _) = watch::channel(0);
    let shared = Arc::new(Shared {
        registry: Mutex::new(registry),
        queues: Mutex::new(HashMap::new()),
        registered,
        settings: settings.clone(),
        in_flight: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        closing: watch::Sender::new(false),
    });
    let mut accepting = tokio::task::JoinSet::new();
    for (door, listener) in &doors {
        let copy = listener
            .try_clone()
            .and_then(TcpListener::from_std)
            .map_err(HostError::io("listen on", door_what(*door)))?;
        accepting.spawn(accept_loop(shared.clone(), *door, copy));
    }
    let mut registering = tokio::task::JoinSet::new();
    registering.spawn(registration_loop(shared.clone(), registrations));
    let ready = if taking_over {
        format!("MAINPID={}\nREADY=1", std::process::id())
    } else {
        "READY=1".to_owned()
    };
    if let Err(error) = crate::handover::sd_notify(&ready) {
        tracing::warn!(%error, "could not notify systemd that the front door is ready");
    }
    let mut usr2 =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined2()).ok();
    tokio::pin!(shutdown);
    loop {
        let upgrade = async {
            match usr2.as_mut() {
                Some(signal) => signal.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = &mut shutdown => break,
            Some(()) = upgrade => {
                match hand_over(&shared, &doors, exe.as_deref()).await {
                    Ok(pid) => {
                        // The new front door accepts on the same sockets: stop accepting, hand
                        // over what is in flight, then let the apps go, which register with it.
                        accepting.abort_all();
                        let until = tokio::time::Instant::now() + Duration::from_secs(15);
                        while shared.in_flight.load(std::sync::atomic::Ordering::SeqCst) > 0
                            && tokio::time::Instant::now() < until
                        {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        shared.closing.send_replace(true);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        registering.abort_all();
                        tracing::info!(pid, "handed over to the new front door; exiting");
                        return Ok(());
                    }
                    Err(error) => {
                        tracing::error!(%error, "the front door upgrade failed; this one serves on");
                    }
                }
            }
        }
    }
    accepting.abort_all();
    registering.abort_all();
    let _ = std::fs::remove_file(&settings.socket);
    tracing::info!("flotilla front door stopped");
    Ok(())
}

/// Starts a new front door from `exe` with this one's arguments and listening sockets (the same
/// kernel sockets, named in [`crate::handover::LISTEN_FDS_VAR`] as `http`/`https`) and the host
/// names it knows (so it holds their connections until their apps register with it), and waits
/// until it has bound the registration socket. Returns its pid.
async fn hand_over(
    shared: &Shared,
    doors: &[(Door, std::net::TcpListener)],
    exe: Option<&Path>,
) -> Result<u32, String> {
    use crate::handover::{FIRST_FD, LISTEN_FDS_VAR, UPGRADE_FROM_VAR, render_listen_fds};
    let exe = exe.ok_or("this front door does not know its own executable")?;
    let socket = &shared.settings.socket;
    let before = inode(socket);
    let mut mappings = Vec::new();
    for ((_, listener), child_fd) in doors.iter().zip(FIRST_FD..) {
        let copy = listener
            .try_clone()
            .map_err(|e| format!("cannot copy a listening socket: {e}"))?;
        mappings.push(command_fds::FdMapping {
            parent_fd: std::os::fd::OwnedFd::from(copy),
            child_fd,
        });
    }
    let known = serde_json::to_string(shared.registry.lock().expect("registry").known_hosts())
        .map_err(|e| e.to_string())?;
    let mut command = std::process::Command::new(exe);
    command
        .args(std::env::args_os().skip(1))
        .env(
            LISTEN_FDS_VAR,
            render_listen_fds(doors.iter().map(|(d, _)| d.as_str())),
        )
        .env("LISTEN_FDS", doors.len().to_string())
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDNAMES")
        .env(UPGRADE_FROM_VAR, std::process::id().to_string())
        .env(FRONT_DOOR_HOSTS_VAR, known)
        .stdin(std::process::Stdio::null());
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    command_fds::CommandFdExt::fd_mappings(&mut command, mappings)
        .map_err(|e| format!("cannot pass the listening sockets: {e}"))?;
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
    let pid = child.id();
    tracing::info!(pid, exe = %exe.display(), "started the new front door; handing over");
    let until = tokio::time::Instant::now() + crate::handover::READY_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("the new front door (pid {pid}) exited: {status}"));
        }
        if inode(socket) != before && seqpacket_answers(socket) {
            // It outlives this process, which is about to exit; its new parent reaps it.
            drop(child);
            return Ok(pid);
        }
        if tokio::time::Instant::now() >= until {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "the new front door (pid {pid}) did not bind {} within {:?}",
                socket.display(),
                crate::handover::READY_TIMEOUT
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The inode `path` names now, if any.
fn inode(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| m.ino())
}

fn door_what(door: Door) -> &'static str {
    match door {
        Door::Http => "front door (http)",
        Door::Https => "front door (https)",
    }
}

/// Binds the registration socket, replacing a stale one a crashed front door left: owner-only,
/// or, with `group`, reachable by that group's members (directory 0750, socket 0660, both owned
/// by the group) and no one else.
fn bind_socket(
    path: &Path,
    group: Option<&str>,
    taking_over: bool,
) -> Result<UnixSeqpacketListener, HostError> {
    let gid = match group {
        None => None,
        Some(name) => Some(
            nix::unistd::Group::from_name(name)
                .ok()
                .flatten()
                .ok_or_else(|| {
                    HostError::Protocol(format!(
                        "no group {name:?} on this machine; create it (groupadd {name}) and add \
                         the users that run the apps' daemons to it"
                    ))
                })?
                .gid,
        ),
    };
    if let Some(dir) = path.parent() {
        crate::private::private_dir(dir).map_err(HostError::io("create", dir))?;
        if let Some(gid) = gid {
            share_with_group(dir, gid, 0o750)?;
        }
    }
    if path.exists() {
        // A socket someone still answers on belongs to a running front door.
        if !taking_over
            && (std::os::unix::net::UnixStream::connect(path).is_ok() || seqpacket_answers(path))
        {
            return Err(HostError::Protocol(format!(
                "another front door is already serving on {}; stop it first, or give this one \
                 another --socket",
                path.display()
            )));
        }
        std::fs::remove_file(path).map_err(HostError::io("remove stale socket", path))?;
    }
    let listener = UnixSeqpacketListener::bind(path).map_err(HostError::io("listen on", path))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(HostError::io("restrict permissions of", path))?;
    if let Some(gid) = gid {
        share_with_group(path, gid, 0o660)?;
    }
    Ok(listener)
}

/// Gives `path` to group `gid` with `mode`.
fn share_with_group(path: &Path, gid: nix::unistd::Gid, mode: u32) -> Result<(), HostError> {
    use std::os::unix::fs::PermissionsExt;
    nix::unistd::chown(path, None, Some(gid))
        .map_err(|e| HostError::io("give to the socket group", path)(e.into()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(HostError::io("set permissions of", path))
}

/// Whether a seqpacket listener answers on `path` (a blocking connect, which succeeds or fails at
/// once for a Unix socket).
fn seqpacket_answers(path: &Path) -> bool {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, connect, socket};
    let Ok(fd) = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    ) else {
        return false;
    };
    let Ok(addr) = UnixAddr::new(path) else {
        return false;
    };
    use std::os::fd::AsRawFd;
    connect(fd.as_raw_fd(), &addr).is_ok()
}

async fn accept_loop(shared: Arc<Shared>, door: Door, listener: TcpListener) {
    let local_default = listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let mut warn = flotilla_proxy::WarnLimiter::new(Duration::from_secs(5));
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let local = stream.local_addr().unwrap_or(local_default);
                let in_flight = InFlight::new(&shared.in_flight);
                tokio::spawn(dispatch(
                    shared.clone(),
                    door,
                    stream,
                    peer,
                    local,
                    in_flight,
                ));
            }
            Err(err) => {
                if let Some(suppressed) = warn.hit(std::time::Instant::now()) {
                    tracing::warn!(error = %err, suppressed, door = door.as_str(), "accepting a connection failed; retrying");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Reads a connection's host name and hands it over, or answers it when no app can take it.
async fn dispatch(
    shared: Arc<Shared>,
    door: Door,
    stream: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    in_flight: InFlight,
) {
    let host = match tokio::time::timeout(shared.settings.sniff_timeout, sniff(&stream, door)).await
    {
        Ok(Ok(Sniff::Host(host))) => host,
        Ok(Ok(Sniff::NoHost)) => return refuse(stream, door, None, Refuse::NoHost).await,
        Ok(Ok(Sniff::Invalid(reason))) => {
            tracing::debug!(%peer, door = door.as_str(), reason, "closing a connection the front door cannot read");
            return refuse(stream, door, None, Refuse::Invalid).await;
        }
        Ok(Ok(Sniff::NeedMore)) | Err(_) => {
            tracing::debug!(%peer, door = door.as_str(), "closing a connection that did not name its host in time");
            return;
        }
        Ok(Err(err)) => {
            tracing::debug!(%peer, error = %err, "a connection failed before naming its host");
            return;
        }
    };
    let handoff = Handoff {
        stream,
        door,
        peer,
        local,
        host,
        _in_flight: in_flight,
    };
    deliver(&shared, handoff).await;
}

/// Hands `handoff` to the member serving its host, waiting up to `hold` for an app that is away.
async fn deliver(shared: &Arc<Shared>, mut handoff: Handoff) {
    let deadline = tokio::time::Instant::now() + shared.settings.hold;
    let mut registered = shared.registered.subscribe();
    loop {
        let lookup = shared
            .registry
            .lock()
            .expect("registry")
            .lookup(&handoff.host);
        match lookup {
            Lookup::Serve(id) => {
                let queue = shared.queues.lock().expect("queues").get(&id).cloned();
                let Some((doors, queue)) = queue else {
                    // The member left between the lookup and now; look again.
                    tokio::task::yield_now().await;
                    continue;
                };
                if !doors.contains(&handoff.door) {
                    let host = handoff.host.clone();
                    return refuse(handoff.stream, handoff.door, Some(&host), Refuse::NoTls).await;
                }
                match queue.send(handoff).await {
                    Ok(()) => return,
                    // Its sender task ended (the member left): try again with what is left.
                    Err(mpsc::error::SendError(back)) => handoff = back,
                }
            }
            Lookup::Down { app } => {
                if tokio::time::timeout_at(deadline, registered.changed())
                    .await
                    .is_err()
                {
                    tracing::warn!(
                        host = %handoff.host, app, hold = ?shared.settings.hold,
                        "no daemon of the app serving this host came back in time; answering 503"
                    );
                    let host = handoff.host.clone();
                    return refuse(handoff.stream, handoff.door, Some(&host), Refuse::Away(app))
                        .await;
                }
            }
            Lookup::Unknown => {
                let host = handoff.host.clone();
                return refuse(handoff.stream, handoff.door, Some(&host), Refuse::Unknown).await;
            }
        }
    }
}

/// Peeks at the connection until its first bytes name a host or prove they never will.
async fn sniff(stream: &TcpStream, door: Door) -> std::io::Result<Sniff> {
    let mut buf = vec![0u8; MAX_SNIFF_BYTES];
    let mut wait = Duration::from_millis(2);
    let mut seen = 0;
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Ok(Sniff::NeedMore); // closed before naming a host
        }
        let verdict = match door {
            Door::Http => http_host(&buf[..n]),
            Door::Https => tls_server_name(&buf[..n]),
        };
        if verdict != Sniff::NeedMore || n == buf.len() {
            return Ok(if verdict == Sniff::NeedMore {
                Sniff::Invalid("more bytes than the front door reads without a host name")
            } else {
                verdict
            });
        }
        // A peek returns at once while any byte is unread, so wait for more to arrive rather
        // than spin; a client sends its first flight in one go almost always.
        if n == seen {
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_millis(100));
        }
        seen = n;
    }
}

/// Why the front door answers a connection itself.
enum Refuse {
    /// The request names no host.
    NoHost,
    /// The bytes are not what the door speaks.
    Invalid,
    /// No app serves the host.
    Unknown,
    /// The app serving it is away (its daemon restarting or stopped).
    Away(String),
    /// The app serving it takes no TLS connections.
    NoTls,
}

/// Answers a connection the front door keeps: a plain-text HTTP response on the HTTP door, a TLS
/// `unrecognized_name` alert on the TLS door (the front door has no certificate of its own).
async fn refuse(mut stream: TcpStream, door: Door, host: Option<&str>, why: Refuse) {
    match door {
        Door::Http => {
            let (status, retry, body) = match &why {
                Refuse::NoHost => (
                    "400 Bad Request",
                    false,
                    "flotilla front door: the request has no Host header, so no app can be chosen.\n"
                        .to_owned(),
                ),
                Refuse::Invalid => (
                    "400 Bad Request",
                    false,
                    "flotilla front door: this is not an HTTP/1.x request.\n".to_owned(),
                ),
                Refuse::Unknown | Refuse::NoTls => (
                    "404 Not Found",
                    false,
                    format!(
                        "flotilla front door: no app on this server answers for host {}.\n",
                        host.unwrap_or("?")
                    ),
                ),
                Refuse::Away(app) => (
                    "503 Service Unavailable",
                    true,
                    format!(
                        "flotilla front door: app {app}, which answers for host {}, is not \
                         running right now (its daemon is restarting or stopped). Try again \
                         shortly.\n",
                        host.unwrap_or("?")
                    ),
                ),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain; charset=utf-8\r\n\
                 content-length: {}\r\nconnection: close\r\n{}\r\n{body}",
                body.len(),
                if retry { "retry-after: 2\r\n" } else { "" },
            );
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            })
            .await;
        }
        Door::Https => {
            if let (Refuse::Unknown | Refuse::NoTls, Some(host)) = (&why, host) {
                tracing::debug!(host, "no app answers for this TLS server name");
            }
            // A fatal alert: unrecognized_name (112), or internal_error (80) for an app away.
            let code = if matches!(why, Refuse::Away(_)) {
                80
            } else {
                112
            };
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                let _ = stream.write_all(&[21, 3, 3, 0, 2, 2, code]).await;
                let _ = stream.shutdown().await;
            })
            .await;
        }
    }
}

async fn registration_loop(shared: Arc<Shared>, mut listener: UnixSeqpacketListener) {
    let mut next_id: MemberId = 1;
    let mut warn = flotilla_proxy::WarnLimiter::new(Duration::from_secs(5));
    loop {
        match listener.accept().await {
            Ok(socket) => {
                let id = next_id;
                next_id += 1;
                tokio::spawn(member(shared.clone(), id, socket));
            }
            Err(err) => {
                if let Some(suppressed) = warn.hit(std::time::Instant::now()) {
                    tracing::warn!(error = %err, suppressed, "accepting a registration failed; retrying");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Serves one registered daemon: registers it, sends it its connections, and unregisters it
/// when its socket closes.
async fn member(shared: Arc<Shared>, id: MemberId, socket: UnixSeqpacket) {
    let register = match tokio::time::timeout(
        Duration::from_secs(10),
        wire::recv::<Register>(&socket),
    )
    .await
    {
        Ok(Ok(Some((register, _)))) => register,
        Ok(Ok(None)) => return,
        Ok(Err(err)) => {
            let _ = wire::send(
                &socket,
                &Reply::Refused {
                    message: err.to_string(),
                },
                None,
            )
            .await;
            return;
        }
        Err(_) => return,
    };
    let hosts = match validate(&register) {
        Ok(hosts) => hosts,
        Err(message) => {
            tracing::warn!(app = %register.app, pid = register.pid, %message, "refused a registration");
            let _ = wire::send(&socket, &Reply::Refused { message }, None).await;
            return;
        }
    };
    if register.check_only {
        let checked = shared
            .registry
            .lock()
            .expect("registry")
            .check(&register.app, &hosts);
        let reply = match checked {
            Ok(()) => Reply::Registered { member: 0 },
            Err(refusal) => Reply::Refused {
                message: refusal.to_string(),
            },
        };
        let _ = wire::send(&socket, &reply, None).await;
        return;
    }
    let (tx, mut rx) = mpsc::channel::<Handoff>(256);
    let registered = {
        let mut registry = shared.registry.lock().expect("registry");
        let registered = registry.register(id, &register.app, &hosts);
        if registered.is_ok() {
            shared
                .queues
                .lock()
                .expect("queues")
                .insert(id, (register.doors.clone(), tx));
        }
        registered
    };
    if let Err(refusal) = registered {
        let message = refusal.to_string();
        tracing::warn!(app = %register.app, pid = register.pid, %message, "refused a registration");
        let _ = wire::send(&socket, &Reply::Refused { message }, None).await;
        return;
    }
    shared.registered.send_modify(|n| *n += 1);
    tracing::info!(member = id, app = %register.app, pid = register.pid, hosts = ?hosts, doors = ?register.doors, "app registered");
    if wire::send(&socket, &Reply::Registered { member: id }, None)
        .await
        .is_err()
    {
        leave(&shared, id, &register.app);
        return;
    }
    let mut closing = shared.closing.subscribe();
    // Connections sent and not yet confirmed, by number: kept (with this end's copy of the
    // socket) until the daemon says it holds them, so that a daemon dying with some still
    // queued loses none.
    let mut unconfirmed: std::collections::BTreeMap<u64, Handoff> = Default::default();
    let mut seq: u64 = 0;
    loop {
        tokio::select! {
            // This front door handed over: let the daemon go, to register with the new one.
            () = async { let _ = closing.wait_for(|c| *c).await; } => break,
            // After registering, the daemon sends only receipts; anything else ends it.
            received = wire::recv::<wire::Taken>(&socket) => match received {
                Ok(Some((wire::Taken { taken }, _))) => {
                    unconfirmed.remove(&taken);
                }
                _ => break,
            },
            handoff = rx.recv() => {
                let Some(handoff) = handoff else { break };
                seq += 1;
                let message = Reply::Connection { seq, door: handoff.door, peer: handoff.peer, local: handoff.local };
                use std::os::fd::AsFd;
                if let Err(err) = wire::send(&socket, &message, Some(handoff.stream.as_fd())).await {
                    tracing::warn!(member = id, app = %register.app, error = %err, "could not hand a connection to the app's daemon; it is treated as gone");
                    // Put the connection back through the front door, which now looks again.
                    leave(&shared, id, &register.app);
                    let shared = shared.clone();
                    tokio::spawn(async move { deliver(&shared, handoff).await });
                    break;
                }
                unconfirmed.insert(seq, handoff);
            }
        }
    }
    leave(&shared, id, &register.app);
    // Sent but never confirmed: the daemon went away first, and the socket it was sent may have
    // died with it; this end's copy is untouched, so hand it to whoever serves the host now.
    if !unconfirmed.is_empty() {
        tracing::info!(member = id, app = %register.app, connections = unconfirmed.len(), "handing again the connections the departed daemon never confirmed");
    }
    for (_, handoff) in unconfirmed {
        let shared = shared.clone();
        tokio::spawn(async move { deliver(&shared, handoff).await });
    }
    // Connections queued for this member after it left go back through the front door.
    rx.close();
    while let Some(handoff) = rx.recv().await {
        let shared = shared.clone();
        tokio::spawn(async move { deliver(&shared, handoff).await });
    }
}

fn leave(shared: &Shared, id: MemberId, app: &str) {
    let removed = shared.queues.lock().expect("queues").remove(&id).is_some();
    shared.registry.lock().expect("registry").unregister(id);
    if removed {
        tracing::info!(member = id, app, "app left");
    }
}

/// The registration's host names, normalized, or why it cannot be accepted.
fn validate(register: &Register) -> Result<Vec<String>, String> {
    if register.protocol != PROTOCOL {
        return Err(format!(
            "this front door speaks protocol {PROTOCOL} and the daemon speaks {}; run the same \
             flotilla version for both (upgrade the older one)",
            register.protocol
        ));
    }
    let mut hosts = Vec::new();
    for raw in &register.hosts {
        match super::sniff::normalize_host(raw) {
            Some(host) => hosts.push(host),
            None => {
                return Err(format!(
                    "{raw:?} in `[host] hosts` is not a host name (use names like \
                     \"shop.example.com\" or \"*.example.com\")"
                ));
            }
        }
    }
    hosts.sort();
    hosts.dedup();
    Ok(hosts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_socket_group_opens_the_socket_to_that_group_only() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("door/front-door.sock");
        let err =
            bind_socket(&socket, Some("no-such-group-flotilla"), false).expect_err("unknown group");
        assert!(
            err.to_string().contains("groupadd no-such-group-flotilla"),
            "{err}"
        );
        let gid = nix::unistd::getgid();
        let group = nix::unistd::Group::from_gid(gid)
            .expect("lookup")
            .expect("our primary group has a name")
            .name;
        let _listener = bind_socket(&socket, Some(&group), false).expect("bind");
        let dir_meta = std::fs::metadata(socket.parent().expect("dir")).expect("meta");
        let sock_meta = std::fs::metadata(&socket).expect("meta");
        assert_eq!(dir_meta.permissions().mode() & 0o777, 0o750);
        assert_eq!(sock_meta.permissions().mode() & 0o777, 0o660);
        assert_eq!(
            (dir_meta.gid(), sock_meta.gid()),
            (gid.as_raw(), gid.as_raw())
        );
    }

    #[test]
    fn a_registration_of_another_protocol_names_both_versions() {
        let register = Register {
            protocol: PROTOCOL + 1,
            app: "shop".into(),
            hosts: vec!["shop.example".into()],
            doors: vec![Door::Http],
            pid: 1,
            check_only: false,
        };
        let message = validate(&register).expect_err("refused");
        assert!(
            message.contains(&format!("protocol {PROTOCOL}")),
            "{message}"
        );
    }

    #[test]
    fn registered_hosts_are_normalized_and_bad_ones_named() {
        let mut register = Register {
            protocol: PROTOCOL,
            app: "shop".into(),
            hosts: vec!["Shop.Example.".into(), "shop.example".into()],
            doors: vec![Door::Http],
            pid: 1,
            check_only: false,
        };
        assert_eq!(validate(&register), Ok(vec!["shop.example".to_owned()]));
        register.hosts.push("not a host".into());
        assert!(
            validate(&register)
                .expect_err("bad")
                .contains("\"not a host\"")
        );
    }
}
