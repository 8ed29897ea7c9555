//! The upstream connection pool: HTTP/1.1 connections to upstream addresses on
//! `hyper::client::conn::http1`, with idle ones kept per address for reuse.
//!
//! Each server (each router worker thread in the host) has its own pool, so its lock is never
//! contended across threads: a checkout is one uncontended lock, a hash lookup and a `pop` from
//! the address's idle list (newest first, so warm connections stay warm and old ones age out).
//! A leased connection goes back only when its response body has ended cleanly and the response
//! left the connection keep-alive ([`Lease::release`]); one whose body failed, was dropped early or
//! whose connection was upgraded is dropped, which closes it. Each connection has one task that
//! drives it (reading responses while the caller streams the body); nothing else is spawned per
//! request. Idle connections older than the idle timeout, or closed by their upstream, are
//! dropped on checkout, on release and by a sweep every few seconds.
//!
//! A request sent on a reused connection that the upstream had closed meanwhile (the race every
//! keep-alive client has) is sent again on a new connection when hyper hands it back unsent.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{Builder, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::body::Body;

/// Why a request got no response from its upstream.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    /// Opening the connection failed.
    #[error("connecting to {addr} failed: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// Opening the connection took longer than the connect timeout.
    #[error("connecting to {addr} timed out after {timeout:?}")]
    ConnectTimeout { addr: SocketAddr, timeout: Duration },
    /// The HTTP exchange failed (including a client request body that failed while being sent).
    #[error("{0}")]
    Http(#[from] hyper::Error),
}

/// An idle connection and when it became idle.
struct Idle {
    sender: SendRequest<Body>,
    since: Instant,
}

/// Upstream connections of one server, idle ones per address.
pub(crate) struct Pool {
    idle: Mutex<HashMap<SocketAddr, Vec<Idle>>>,
    http: Builder,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
}

/// A connection leased for one request. Give it back with [`Lease::release`] once the response
/// body has ended cleanly; dropping it closes the connection.
pub(crate) struct Lease {
    pool: Weak<Pool>,
    addr: SocketAddr,
    sender: SendRequest<Body>,
    reusable: bool,
}

impl Lease {
    /// Marks the connection as not to be reused (its response asked to close it).
    pub(crate) fn reusable(mut self, reusable: bool) -> Self {
        self.reusable = reusable;
        self
    }

    /// Returns the connection to its pool for the next request to the same address (unless
    /// it is not reusable: then it closes).
    pub(crate) fn release(self) {
        if self.reusable
            && let Some(pool) = self.pool.upgrade()
        {
            pool.put(self.addr, self.sender);
        }
    }
}

impl Pool {
    pub(crate) fn new(connect_timeout: Duration, idle_timeout: Duration, max_idle: usize) -> Self {
        Pool {
            idle: Mutex::new(HashMap::new()),
            http: Builder::new(),
            connect_timeout,
            idle_timeout,
            max_idle,
        }
    }

    /// Sends `req` to `addr` on an idle connection, or a new one, and waits for the response
    /// head. The lease is the connection, to release when the response body has ended.
    pub(crate) async fn send(
        self: &Arc<Self>,
        addr: SocketAddr,
        mut req: Request<Body>,
    ) -> Result<(Response<Incoming>, Lease), SendError> {
        while let Some(mut sender) = self.checkout(addr) {
            // Waits only if the connection has not yet noticed its last response ended.
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(response) => return Ok((response, self.lease(addr, sender))),
                Err(mut err) => match err.take_message() {
                    // Never sent (the upstream closed the idle connection first): try another.
                    Some(unsent) => req = unsent,
                    None => return Err(err.into_error().into()),
                },
            }
        }
        let mut sender = self.connect(addr).await?;
        let response = sender.send_request(req).await?;
        Ok((response, self.lease(addr, sender)))
    }

    fn lease(self: &Arc<Self>, addr: SocketAddr, sender: SendRequest<Body>) -> Lease {
        Lease {
            pool: Arc::downgrade(self),
            addr,
            sender,
            reusable: true,
        }
    }

    /// The newest usable idle connection to `addr`, dropping closed and expired ones on the way.
    fn checkout(&self, addr: SocketAddr) -> Option<SendRequest<Body>> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let list = idle.get_mut(&addr)?;
        while let Some(entry) = list.pop() {
            if !entry.sender.is_closed() && entry.since.elapsed() < self.idle_timeout {
                return Some(entry.sender);
            }
        }
        None
    }

    fn put(&self, addr: SocketAddr, sender: SendRequest<Body>) {
        if sender.is_closed() || self.max_idle == 0 {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let list = idle.entry(addr).or_default();
        if list.len() >= self.max_idle {
            // The oldest goes: it is the likeliest to be closed by its upstream soon.
            list.remove(0);
        }
        list.push(Idle {
            sender,
            since: Instant::now(),
        });
    }

    /// Drops idle connections that expired or that their upstream closed, and addresses left
    /// with none.
    fn sweep(&self) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        idle.retain(|_, list| {
            list.retain(|e| !e.sender.is_closed() && e.since.elapsed() < self.idle_timeout);
            !list.is_empty()
        });
    }

    /// Sweeps the pool every so often until it is dropped (run as a task beside the server).
    pub(crate) async fn sweep_while_alive(pool: Weak<Pool>) {
        let period = pool.upgrade().map_or(Duration::from_secs(5), |p| {
            (p.idle_timeout / 2).clamp(Duration::from_millis(100), Duration::from_secs(5))
        });
        loop {
            tokio::time::sleep(period).await;
            match pool.upgrade() {
                Some(pool) => pool.sweep(),
                None => return,
            }
        }
    }

    /// Opens a new connection to `addr` and starts the task that drives it.
    async fn connect(&self, addr: SocketAddr) -> Result<SendRequest<Body>, SendError> {
        let stream =
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(source)) => return Err(SendError::Connect { addr, source }),
                Err(_) => {
                    return Err(SendError::ConnectTimeout {
                        addr,
                        timeout: self.connect_timeout,
                    });
                }
            };
        let _ = stream.set_nodelay(true);
        let (sender, conn) = self.http.handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            if let Err(err) = conn.with_upgrades().await {
                tracing::debug!(upstream = %addr, error = %err, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }

    #[cfg(test)]
    fn idle_count(&self, addr: SocketAddr) -> usize {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&addr)
            .map_or(0, Vec::len)
    }
}

/// Whether an upstream response leaves its connection open for another request: HTTP/1.1
/// without `Connection: close`, or HTTP/1.0 with `Connection: keep-alive`.
pub(crate) fn keeps_alive<B>(response: &Response<B>) -> bool {
    let mut close = false;
    let mut keep_alive = false;
    for value in response.headers().get_all(http::header::CONNECTION) {
        let Ok(value) = value.to_str() else { continue };
        for token in value.split(',') {
            let token = token.trim();
            close |= token.eq_ignore_ascii_case("close");
            keep_alive |= token.eq_ignore_ascii_case("keep-alive");
        }
    }
    if close {
        return false;
    }
    response.version() >= http::Version::HTTP_11 || keep_alive
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An upstream that answers each request on a connection with a small body, `per_conn`
    /// times, then closes; it counts the connections it accepted.
    async fn upstream(per_conn: usize) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut seen = Vec::new();
                    for n in 0..per_conn {
                        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                            match stream.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(k) => seen.extend_from_slice(&buf[..k]),
                            }
                        }
                        let end = seen.windows(4).position(|w| w == b"\r\n\r\n").expect("end") + 4;
                        seen.drain(..end);
                        let close = if n + 1 == per_conn {
                            "Connection: close\r\n"
                        } else {
                            ""
                        };
                        let reply =
                            format!("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n{close}\r\nok");
                        if stream.write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    fn get() -> Request<Body> {
        Request::builder()
            .uri("/")
            .header("host", "example")
            .body(Body::empty())
            .expect("request")
    }

    #[tokio::test]
    async fn released_connections_are_reused_and_unreleased_ones_are_not() {
        let (addr, accepted) = upstream(100).await;
        let pool = Arc::new(Pool::new(
            Duration::from_secs(1),
            Duration::from_secs(60),
            8,
        ));
        for _ in 0..3 {
            let (response, lease) = pool.send(addr, get()).await.expect("response");
            assert!(keeps_alive(&response));
            let body = response
                .into_body()
                .collect()
                .await
                .expect("body")
                .to_bytes();
            assert_eq!(&body[..], b"ok");
            lease.release();
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(pool.idle_count(addr), 1);
        // A lease dropped without release (a body that did not end cleanly) is not reused.
        let (_response, lease) = pool.send(addr, get()).await.expect("response");
        drop(lease);
        let _ = pool.send(addr, get()).await.expect("response");
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_is_replaced() {
        // One answer per connection, each with `Connection: close`.
        let (addr, accepted) = upstream(1).await;
        let pool = Arc::new(Pool::new(
            Duration::from_secs(1),
            Duration::from_secs(60),
            8,
        ));
        for _ in 0..3 {
            let (response, lease) = pool.send(addr, get()).await.expect("response");
            assert!(!keeps_alive(&response));
            let _ = response.into_body().collect().await.expect("body");
            // Released anyway: the pool must notice the connection closed and not use it.
            lease.release();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn expired_idle_connections_are_not_used() {
        let (addr, accepted) = upstream(100).await;
        let pool = Arc::new(Pool::new(
            Duration::from_secs(1),
            Duration::from_millis(50),
            8,
        ));
        let (response, lease) = pool.send(addr, get()).await.expect("response");
        let _ = response.into_body().collect().await.expect("body");
        lease.release();
        tokio::time::sleep(Duration::from_millis(80)).await;
        let _ = pool.send(addr, get()).await.expect("response");
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
        pool.sweep();
        assert_eq!(pool.idle_count(addr), 0);
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr")
        };
        let pool = Arc::new(Pool::new(
            Duration::from_secs(1),
            Duration::from_secs(60),
            8,
        ));
        let err = pool.send(addr, get()).await.err().expect("refused");
        assert!(matches!(err, SendError::Connect { .. }), "{err}");
    }

    #[test]
    fn keep_alive_table() {
        fn check(version: http::Version, connection: Option<&str>, expected: bool) {
            let mut b = Response::builder().version(version);
            if let Some(c) = connection {
                b = b.header("connection", c);
            }
            let r = b.body(()).expect("response");
            assert_eq!(keeps_alive(&r), expected, "{version:?} {connection:?}");
        }
        check(http::Version::HTTP_11, None, true);
        check(http::Version::HTTP_11, Some("close"), false);
        check(http::Version::HTTP_11, Some("Keep-Alive, Close"), false);
        check(http::Version::HTTP_10, None, false);
        check(http::Version::HTTP_10, Some("keep-alive"), true);
    }
}
