//! An app daemon's side of the front door: register the app's host names and take the
//! connections the front door hands over, for the router to serve as its own.
//!
//! The daemon stays registered for as long as it serves. When the front door is not running yet,
//! or restarts, the daemon connects again (every second at most); a refused registration (a host
//! another app holds) is logged with the front door's reason and retried every 10 s, so that the
//! app comes online as soon as the other one lets go.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_seqpacket::UnixSeqpacket;

use super::wire::{self, Door, PROTOCOL, Register, Reply};

/// A daemon's registration with the front door.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Membership {
    /// The front door's registration socket.
    pub socket: PathBuf,
    /// The app's name.
    pub app: String,
    /// The host names it serves.
    pub hosts: Vec<String>,
    /// The doors it takes connections from.
    pub doors: Vec<Door>,
}

/// A connection the front door handed over.
#[derive(Debug)]
pub struct Handed {
    /// The door it came through.
    pub door: Door,
    /// The connection, in blocking mode as received; the router makes it non-blocking.
    pub stream: std::net::TcpStream,
    /// The client's address.
    pub peer: SocketAddr,
    /// The address the client connected to.
    pub local: SocketAddr,
}

/// Where the daemon's registration stands, for `status` and the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MembershipState {
    /// Not connected yet, or connecting again after the front door went away.
    Connecting,
    /// Registered; connections arrive.
    Registered {
        /// The front door's number for this registration.
        member: u64,
    },
    /// The front door refused the registration, for this reason.
    Refused(String),
}

/// Keeps the daemon registered until `stop` turns true, sending each handed-over connection
/// to `deliver` (which picks the router worker). `state` follows the registration.
pub async fn run(
    membership: Membership,
    deliver: mpsc::UnboundedSender<Handed>,
    state: watch::Sender<MembershipState>,
    mut stop: watch::Receiver<bool>,
) {
    let mut logged_absent = false;
    loop {
        if *stop.borrow() {
            return;
        }
        let outcome = tokio::select! {
            outcome = session(&membership, &deliver, &state) => outcome,
            _ = stop.wait_for(|s| *s) => return,
        };
        let retry = match outcome {
            Session::Absent(err) => {
                if !logged_absent {
                    tracing::warn!(
                        socket = %membership.socket.display(), error = %err,
                        "the front door is not running; connecting again every second \
                         (start it with `flotilla host front-door`)"
                    );
                    logged_absent = true;
                }
                Duration::from_secs(1)
            }
            Session::Refused(message) => {
                tracing::error!(socket = %membership.socket.display(), %message, "the front door refused this app's registration; trying again every 10 s");
                state.send_replace(MembershipState::Refused(message));
                Duration::from_secs(10)
            }
            Session::Ended(reason) => {
                tracing::warn!(%reason, "the front door connection ended; registering again");
                logged_absent = false;
                state.send_replace(MembershipState::Connecting);
                Duration::from_millis(100)
            }
        };
        tokio::select! {
            () = tokio::time::sleep(retry) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Registers once and leaves again, to learn before the daemon starts serving whether the front
/// door refuses this app (a host name another app holds): `Err` with the front door's reason
/// then. A front door that is not running is no error: the daemon registers when it comes.
pub async fn check(membership: &Membership) -> Result<(), String> {
    let probe = async {
        let socket = UnixSeqpacket::connect(&membership.socket).await.ok()?;
        register(&socket, membership, true).await.err()
    };
    match tokio::time::timeout(Duration::from_secs(5), probe).await {
        Ok(Some(Session::Refused(message))) => Err(message),
        _ => Ok(()),
    }
}

/// Sends the registration and reads the answer: the member number, or how it ended.
async fn register(
    socket: &UnixSeqpacket,
    membership: &Membership,
    check_only: bool,
) -> Result<u64, Session> {
    let register = Register {
        protocol: PROTOCOL,
        app: membership.app.clone(),
        hosts: membership.hosts.clone(),
        doors: membership.doors.clone(),
        pid: std::process::id(),
        check_only,
    };
    if let Err(err) = wire::send(socket, &register, None).await {
        return Err(Session::Absent(err));
    }
    match wire::recv::<Reply>(socket).await {
        Ok(Some((Reply::Registered { member }, _))) => Ok(member),
        Ok(Some((Reply::Refused { message }, _))) => Err(Session::Refused(message)),
        Ok(Some((other, _))) => Err(Session::Ended(format!(
            "unexpected first message {other:?}"
        ))),
        Ok(None) => Err(Session::Ended("closed before answering".to_owned())),
        Err(err) => Err(Session::Ended(err.to_string())),
    }
}

/// How one registration ended.
enum Session {
    /// No front door answered.
    Absent(std::io::Error),
    /// It refused the registration.
    Refused(String),
    /// It went away after registering.
    Ended(String),
}

async fn session(
    membership: &Membership,
    deliver: &mpsc::UnboundedSender<Handed>,
    state: &watch::Sender<MembershipState>,
) -> Session {
    let socket = match UnixSeqpacket::connect(&membership.socket).await {
        Ok(socket) => socket,
        Err(err) => return Session::Absent(err),
    };
    match register(&socket, membership, false).await {
        Ok(member) => {
            tracing::info!(member, hosts = ?membership.hosts, "registered with the front door");
            state.send_replace(MembershipState::Registered { member });
        }
        Err(ended) => return ended,
    }
    loop {
        match wire::recv::<Reply>(&socket).await {
            Ok(Some((
                Reply::Connection {
                    seq,
                    door,
                    peer,
                    local,
                },
                Some(fd),
            ))) => {
                let stream = std::net::TcpStream::from(fd);
                // The front door keeps its copy until this receipt: it must come after the
                // socket is ours, and a lost receipt only makes the front door hold on longer.
                if let Err(err) = wire::send(&socket, &wire::Taken { taken: seq }, None).await {
                    return Session::Ended(format!("cannot confirm a connection: {err}"));
                }
                if deliver
                    .send(Handed {
                        door,
                        stream,
                        peer,
                        local,
                    })
                    .is_err()
                {
                    return Session::Ended("the router stopped".to_owned());
                }
            }
            Ok(Some((other, _))) => {
                tracing::warn!(message = ?other, "ignoring a front door message without a connection");
            }
            Ok(None) => return Session::Ended("the front door closed the connection".to_owned()),
            Err(err) => return Session::Ended(err.to_string()),
        }
    }
}
