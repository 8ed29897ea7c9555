//! The front door's socket protocol: a Unix `SOCK_SEQPACKET` socket, one JSON message per packet.
//!
//! 1. An app's daemon connects and sends [`Register`].
//! 2. The front door answers [`Reply::Registered`] or [`Reply::Refused`] (and closes).
//! 3. For each connection it hands over, the front door sends [`Reply::Connection`] with the
//!    connection's socket attached (`SCM_RIGHTS`) and a number; the daemon answers [`Taken`] with
//!    that number once it holds the socket. Until then the front door keeps its own copy: if the
//!    daemon dies with the message still queued (the kernel then closes the socket it carried),
//!    the front door hands the connection, untouched, to whoever serves the host next.
//! 4. The daemon leaves by closing its end; the front door notices at once.
//!
//! Packets keep their boundaries and a socket travels with the packet it belongs to, so there is
//! no framing to get wrong.

use std::io::{IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};

use serde::{Deserialize, Serialize};
use tokio_seqpacket::UnixSeqpacket;
use tokio_seqpacket::ancillary::{
    AncillaryMessageReader, AncillaryMessageWriter, OwnedAncillaryMessage,
};

/// The protocol's version; a front door refuses a registration of another version, naming both.
pub const PROTOCOL: u32 = 1;

/// The largest packet either side sends.
const MAX_PACKET: usize = 64 * 1024;

/// Which public listener a connection arrived on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Door {
    /// Plain HTTP (port 80).
    Http,
    /// TLS (port 443); the daemon terminates it with the app's own certificate.
    Https,
}

impl Door {
    /// The name used in logs and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Door::Http => "http",
            Door::Https => "https",
        }
    }
}

/// A daemon's registration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Register {
    /// [`PROTOCOL`] as the daemon speaks it.
    pub protocol: u32,
    /// The app's deployment name (`name` in flotilla.toml).
    pub app: String,
    /// The host names it serves (`[host] hosts`).
    pub hosts: Vec<String>,
    /// Which doors it takes connections from: a daemon without TLS takes no `https` ones.
    pub doors: Vec<Door>,
    /// The daemon's process id, for the front door's log.
    pub pid: u32,
    /// Only ask whether this registration would be accepted: the front door answers and closes,
    /// registering nothing and handing over no connection.
    #[serde(default)]
    pub check_only: bool,
}

/// What the front door sends a daemon.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// The registration holds; `member` is its number in the front door's log.
    Registered {
        /// The member number.
        member: u64,
    },
    /// The registration was refused; the message says why and what to do.
    Refused {
        /// Why.
        message: String,
    },
    /// A connection, attached to this packet.
    Connection {
        /// Its number, for [`Taken`].
        seq: u64,
        /// The door it came through.
        door: Door,
        /// The client's address.
        peer: SocketAddr,
        /// The address the client connected to.
        local: SocketAddr,
    },
}

/// A daemon's receipt for a connection: it holds the socket now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Taken {
    /// The number of the [`Reply::Connection`].
    pub taken: u64,
}

/// Sends one message, with `fd` attached when given.
pub async fn send<T: Serialize>(
    socket: &UnixSeqpacket,
    message: &T,
    fd: Option<std::os::fd::BorrowedFd<'_>>,
) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(message).map_err(std::io::Error::other)?;
    if bytes.len() > MAX_PACKET {
        return Err(std::io::Error::other("front door message too large"));
    }
    match fd {
        None => {
            socket.send(&bytes).await?;
        }
        Some(fd) => {
            let mut space = [0u8; 64];
            let mut ancillary = AncillaryMessageWriter::new(&mut space);
            ancillary
                .add_fds(&[fd.as_fd()])
                .map_err(|_| std::io::Error::other("no room for a descriptor"))?;
            socket
                .send_vectored_with_ancillary(&[IoSlice::new(&bytes)], &mut ancillary)
                .await?;
        }
    }
    Ok(())
}

/// Receives one message and the descriptor attached to it, if any; `Ok(None)` when the other end
/// closed.
pub async fn recv<T: for<'de> Deserialize<'de>>(
    socket: &UnixSeqpacket,
) -> std::io::Result<Option<(T, Option<OwnedFd>)>> {
    let mut bytes = vec![0u8; MAX_PACKET];
    let mut space = [0u8; 64];
    let (read, ancillary) = socket
        .recv_vectored_with_ancillary(&mut [IoSliceMut::new(&mut bytes)], &mut space)
        .await?;
    let fd = take_fd(ancillary);
    if read == 0 {
        return Ok(None);
    }
    let message = serde_json::from_slice(&bytes[..read]).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a front door message that is not understood: {e}"),
        )
    })?;
    Ok(Some((message, fd)))
}

/// The first descriptor of a received packet; any others are closed.
fn take_fd(ancillary: AncillaryMessageReader<'_>) -> Option<OwnedFd> {
    let mut first = None;
    for message in ancillary.into_messages() {
        if let OwnedAncillaryMessage::FileDescriptors(fds) = message {
            for fd in fds {
                if first.is_none() {
                    first = Some(fd);
                }
            }
        }
    }
    first
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[tokio::test]
    async fn a_connection_travels_with_its_message() {
        let (front, member) = UnixSeqpacket::pair().expect("pair");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut client = std::net::TcpStream::connect(addr).expect("connect");
        let (accepted, peer) = listener.accept().expect("accept");
        let reply = Reply::Connection {
            seq: 1,
            door: Door::Http,
            peer,
            local: addr,
        };
        send(&front, &reply, Some(accepted.as_fd()))
            .await
            .expect("send");
        drop(accepted); // the front door's copy is closed; the member's keeps the connection

        let (got, fd) = recv::<Reply>(&member).await.expect("recv").expect("open");
        assert_eq!(got, reply);
        let mut handed = std::net::TcpStream::from(fd.expect("a descriptor"));
        client.write_all(b"ping").expect("write");
        let mut buf = [0u8; 4];
        handed.read_exact(&mut buf).expect("read");
        assert_eq!(&buf, b"ping");
    }

    #[tokio::test]
    async fn a_closed_socket_reads_as_none() {
        let (front, member) = UnixSeqpacket::pair().expect("pair");
        drop(front);
        assert!(recv::<Reply>(&member).await.expect("recv").is_none());
    }
}
