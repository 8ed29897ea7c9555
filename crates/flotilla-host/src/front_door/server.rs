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
}

/// The doors a member takes connections from, and its queue of connections to hand over.
type MemberQueue = (Vec<Door>, mpsc::Sender<Handoff>);

/// The registry and the queues of its members, shared by every task of the front door.
struct Shared {
    registry: Mutex<Registry>,
    queues: Mutex<HashMap<MemberId, MemberQueue>>,
    /// Bumped on every registration, for connections holding for an app that is away.
    registered: watch::Sender<u64>,
    settings: FrontDoorSettings,
}

/// Runs the front door until `shutdown` completes.
pub async fn run(
    settings: FrontDoorSettings,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), HostError> {
    let mut doors = Vec::new();
    for (door, addr) in [(Door::Http, settings.http), (Door::Https, settings.https)] {
        if let Some(addr) = addr {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| HostError::bind(addr, door_what(door), source))?;
            doors.push((door, listener));
        }
    }
    if doors.is_empty() {
        return Err(HostError::Protocol(
            "the front door needs at least one of --http and --https".to_owned(),
        ));
    }
    let registrations = bind_socket(&settings.socket, settings.socket_group.as_deref())?;
    tracing::info!(
        http = ?settings.http, https = ?settings.https, socket = %settings.socket.display(),
        "flotilla front door serving"
    );
    let (registered, _) = watch::channel(0);
    let shared = Arc::new(Shared {
        registry: Mutex::new(Registry::default()),
        queues: Mutex::new(HashMap::new()),
        registered,
        settings: settings.clone(),
    });
    let mut tasks = tokio::task::JoinSet::new();
    for (door, listener) in doors {
        tasks.spawn(accept_loop(shared.clone(), door, listener));
    }
    tasks.spawn(registration_loop(shared.clone(), registrations));
    shutdown.await;
    tasks.abort_all();
    let _ = std::fs::remove_file(&settings.socket);
    tracing::info!("flotilla front door stopped");
    Ok(())
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
fn bind_socket(path: &Path, group: Option<&str>) -> Result<UnixSeqpacketListener, HostError> {
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
        if std::os::unix::net::UnixStream::connect(path).is_ok() || seqpacket_answers(path) {
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
                tokio::spawn(dispatch(shared.clone(), door, stream, peer, local));
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
    let mut probe = [0u8; 1];
    loop {
        tokio::select! {
            // The daemon sends nothing after registering: any readable event is its end closing.
            closed = socket.recv(&mut probe) => {
                if !matches!(closed, Ok(n) if n > 0) {
                    break;
                }
            }
            handoff = rx.recv() => {
                let Some(handoff) = handoff else { break };
                let message = Reply::Connection { door: handoff.door, peer: handoff.peer, local: handoff.local };
                use std::os::fd::AsFd;
                if let Err(err) = wire::send(&socket, &message, Some(handoff.stream.as_fd())).await {
                    tracing::warn!(member = id, app = %register.app, error = %err, "could not hand a connection to the app's daemon; it is treated as gone");
                    // Put the connection back through the front door, which now looks again.
                    leave(&shared, id, &register.app);
                    let shared = shared.clone();
                    tokio::spawn(async move { deliver(&shared, handoff).await });
                    break;
                }
            }
        }
    }
    leave(&shared, id, &register.app);
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
        let err = bind_socket(&socket, Some("no-such-group-flotilla")).expect_err("unknown group");
        assert!(
            err.to_string().contains("groupadd no-such-group-flotilla"),
            "{err}"
        );
        let gid = nix::unistd::getgid();
        let group = nix::unistd::Group::from_gid(gid)
            .expect("lookup")
            .expect("our primary group has a name")
            .name;
        let _listener = bind_socket(&socket, Some(&group)).expect("bind");
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
