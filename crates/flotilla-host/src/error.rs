//! What the host provider can fail with, each variant naming the file, socket or address involved.

use std::net::SocketAddr;
use std::path::PathBuf;

use flotilla_engine::ports::{ErrorKind, PortError};

/// A host provider failure.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// A file or directory operation failed.
    #[error("{operation} {}: {source}", .path.display())]
    Io {
        /// What was being done, e.g. `create directory`.
        operation: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A SQLite operation failed.
    #[error("state database {}: {operation}: {source}", .path.display())]
    Sqlite {
        /// What was being done.
        operation: String,
        /// The database file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: rusqlite::Error,
    },
    /// Stored state could not be decoded (written by an incompatible flotilla, or edited by hand).
    #[error("state database {}: {what} is unreadable: {message}; move the state directory aside to start afresh", .path.display())]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// Which entry.
        what: String,
        /// The decoding error.
        message: String,
    },
    /// A listener could not be bound.
    #[error(
        "cannot listen on {addr} ({what}): {source}; choose another address in flotilla.toml or stop whatever uses it"
    )]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Which listener (router, admin page).
        what: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Another process (another app's flotilla daemon included) already listens on the port.
    /// flotilla never shares a port with it, even where the kernel would allow it.
    #[error(
        "cannot listen on {addr} ({what}): {holder}; flotilla does not share a port with another \
         process: choose another `[host] listen` / `https_listen` / `admin_listen` in flotilla.toml or stop it"
    )]
    PortTaken {
        /// The address.
        addr: SocketAddr,
        /// Which listener (router, admin page).
        what: &'static str,
        /// What listens there, as far as this user can see.
        holder: String,
    },
    /// The status page would be reachable from other machines without a token, or its token
    /// file is unusable. The message names the key and what to do.
    #[error("{0}")]
    AdminToken(String),
    /// A certificate or key of `[host] tls_certificate_file` / `tls_key_file` is unusable.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// Another daemon already serves this state directory.
    #[error("a flotilla host daemon already runs for {}; stop it with `flotilla host stop`", .state_dir.display())]
    AlreadyRunning {
        /// The state directory.
        state_dir: PathBuf,
    },
    /// The daemon serves another deployment name than the one asked for.
    #[error("the daemon for {} serves deployment `{serving}`, not `{asked}`; use a separate state_dir per deployment name", .state_dir.display())]
    NameMismatch {
        /// The state directory.
        state_dir: PathBuf,
        /// The name the daemon serves.
        serving: String,
        /// The name asked for.
        asked: String,
    },
    /// The daemon could not be reached or started.
    #[error("the flotilla host daemon at {} is not available: {message}; see its log at {}", .socket.display(), .log.display())]
    Unavailable {
        /// The daemon's socket.
        socket: PathBuf,
        /// Its log file.
        log: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The running daemon speaks another protocol than this flotilla (one of them was upgraded
    /// while the other ran). The CLI's hint says how to hand the daemon over to this flotilla.
    #[error(
        "the running flotilla host daemon (pid {pid}) speaks protocol {daemon} and this flotilla speaks protocol {client}"
    )]
    ProtocolMismatch {
        /// The daemon's protocol.
        daemon: u32,
        /// This flotilla's protocol.
        client: u32,
        /// The daemon's process id.
        pid: u32,
    },
    /// The daemon answered something that is not the protocol.
    #[error(
        "the flotilla host daemon answered unexpectedly: {0}; restart it with `flotilla host stop` and run the command again"
    )]
    Protocol(String),
}

impl HostError {
    /// Wraps an I/O error with the operation and path.
    pub fn io(
        operation: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> HostError {
        let path = path.into();
        move |source| HostError::Io {
            operation,
            path,
            source,
        }
    }

    /// The error for a failed bind of `what` on `addr`: a port someone else listens on names them.
    pub fn bind(addr: SocketAddr, what: &'static str, source: std::io::Error) -> HostError {
        if source.kind() == std::io::ErrorKind::AddrInUse {
            HostError::PortTaken {
                addr,
                what,
                holder: crate::port_holder::describe(addr.port()),
            }
        } else {
            HostError::Bind { addr, what, source }
        }
    }

    /// This error as a port error of `operation` on `resource`.
    pub fn into_port(self, operation: &str, resource: &str) -> PortError {
        let kind = match &self {
            HostError::Unavailable { .. } => ErrorKind::Unavailable,
            HostError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                ErrorKind::NotFound
            }
            HostError::Io { .. } | HostError::Sqlite { .. } => ErrorKind::Transient,
            HostError::AlreadyRunning { .. } | HostError::NameMismatch { .. } => {
                ErrorKind::Conflict
            }
            HostError::Bind { .. }
            | HostError::PortTaken { .. }
            | HostError::AdminToken(_)
            | HostError::Tls(_)
            | HostError::Corrupt { .. }
            | HostError::ProtocolMismatch { .. }
            | HostError::Protocol(_) => ErrorKind::Invalid,
        };
        PortError::new(kind, operation, resource, self.to_string())
    }
}
