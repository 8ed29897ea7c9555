//! Accepting a WebSocket handshake only to close it at once with a code a page's script can see.
//!
//! A browser hides the status of a refused upgrade from scripts: they see close code 1006 and
//! nothing else, exactly as for a network failure. To tell a page something (its version is
//! retired), the proxy completes the handshake itself (RFC 6455 §4.2.2), sends one close frame
//! with the caller's code and reason, waits briefly for the client's answering close frame, and
//! closes the connection. No upstream is involved and no session is counted.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use http::header::{
    CONNECTION, HeaderMap, HeaderValue, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY,
    SEC_WEBSOCKET_PROTOCOL, SEC_WEBSOCKET_VERSION, UPGRADE,
};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::body::Body;
use crate::headers;
use crate::route::{Route, SocketClose};
use crate::server::{ConnCtx, Live};

/// The GUID every `Sec-WebSocket-Accept` is derived with (RFC 6455 §1.3).
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// How long the client has to answer the close frame before the connection is dropped.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// The most a close frame's reason may hold: a control frame carries at most 125 bytes, two of
/// which are the code.
const MAX_REASON: usize = 123;

/// Answers `req` with `close`: a `101` and then a close frame if it is a WebSocket handshake,
/// `close.otherwise` if not.
pub(crate) fn close<R: Route>(
    conn: Arc<ConnCtx<R>>,
    mut req: Request<Incoming>,
    close: SocketClose,
) -> Response<Body> {
    let Some(accept) = handshake_accept(req.method(), req.headers()) else {
        return close.otherwise;
    };
    let protocol = first_protocol(req.headers());
    let upgrade = hyper::upgrade::on(&mut req);
    let frame = close_frame(close.code, &close.reason);
    let live = conn.shared.tracker.enter(Live::Upgrade);
    tokio::spawn(async move {
        // The connection context holds the connection-limit permit: keep it until the end.
        let _conn = conn;
        let _live = live;
        let upgraded = match upgrade.await {
            Ok(upgraded) => upgraded,
            Err(err) => {
                tracing::debug!(error = %err, "closing WebSocket: the upgrade did not complete");
                return;
            }
        };
        let mut io = TokioIo::new(upgraded);
        if io.write_all(&frame).await.is_err() || io.flush().await.is_err() {
            return;
        }
        // The client answers with its own close frame and then waits for us to close the TCP
        // connection. Whatever it sends before that is discarded; a read that starts with a
        // close frame's first byte (any flags, opcode 8) is taken as its answer.
        let mut buf = [0u8; 256];
        let _ = tokio::time::timeout(CLOSE_WAIT, async {
            while let Ok(n) = io.read(&mut buf).await {
                if n == 0 || buf[0] & 0x0f == 0x08 {
                    break;
                }
            }
        })
        .await;
        let _ = io.shutdown().await;
    });
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(SEC_WEBSOCKET_ACCEPT, accept);
    if let Some(protocol) = protocol {
        h.insert(SEC_WEBSOCKET_PROTOCOL, protocol);
    }
    for (name, value) in &close.headers {
        h.append(name, value.clone());
    }
    response
}

/// The `Sec-WebSocket-Accept` value if `headers` are a WebSocket handshake this proxy can
/// complete: `GET`, `Upgrade: websocket` with `Connection: upgrade`, version 13 and a key.
fn handshake_accept(method: &Method, headers: &HeaderMap) -> Option<HeaderValue> {
    if method != Method::GET {
        return None;
    }
    let protocol = headers::upgrade_protocol(headers)?;
    if !protocol.as_bytes().eq_ignore_ascii_case(b"websocket") {
        return None;
    }
    if headers.get(SEC_WEBSOCKET_VERSION)?.as_bytes() != b"13" {
        return None;
    }
    let key = headers.get(SEC_WEBSOCKET_KEY)?;
    Some(accept_key(key.as_bytes()))
}

/// `base64(SHA-1(key + GUID))` (RFC 6455 §4.2.2).
fn accept_key(key: &[u8]) -> HeaderValue {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(GUID.as_bytes());
    let encoded = base64::engine::general_purpose::STANDARD.encode(sha.finalize());
    HeaderValue::from_str(&encoded).expect("base64 is always a valid header value")
}

/// The first subprotocol the client offered: a browser fails a handshake whose answer selects
/// none of the protocols it asked for, and the protocol does not matter for a close frame.
fn first_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    let offered = headers.get(SEC_WEBSOCKET_PROTOCOL)?.to_str().ok()?;
    let first = offered.split(',').map(str::trim).find(|p| !p.is_empty())?;
    HeaderValue::from_str(first).ok()
}

/// An unmasked close frame (server to client) with `code` and `reason`, the reason cut to
/// [`MAX_REASON`] bytes at a character boundary.
fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(MAX_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let reason = &reason.as_bytes()[..end];
    let mut frame = Vec::with_capacity(4 + reason.len());
    frame.push(0x88); // FIN, opcode 8 (close)
    frame.push(u8::try_from(2 + reason.len()).expect("at most 125"));
    frame.extend_from_slice(&code.to_be_bytes());
    frame.extend_from_slice(reason);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_the_rfc_example() {
        // RFC 6455 §1.3.
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn close_frames() {
        assert_eq!(
            close_frame(4410, "version_retired"),
            [&[0x88, 17, 0x11, 0x3a][..], b"version_retired"].concat()
        );
        let long = "é".repeat(100);
        let frame = close_frame(4000, &long);
        assert_eq!(frame.len(), 4 + 122, "cut at a character boundary");
        assert_eq!(usize::from(frame[1]), frame.len() - 2);
    }

    #[test]
    fn handshake_table() {
        fn check(method: Method, pairs: &[(&str, &str)], ok: bool) {
            let mut headers = HeaderMap::new();
            for (k, v) in pairs {
                headers.append(
                    http::header::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                    HeaderValue::from_str(v).expect("value"),
                );
            }
            assert_eq!(
                handshake_accept(&method, &headers).is_some(),
                ok,
                "{pairs:?}"
            );
        }
        let good = [
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "WebSocket"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ];
        check(Method::GET, &good, true);
        check(Method::POST, &good, false);
        check(Method::GET, &good[1..], false);
        check(Method::GET, &good[..3], false);
        let mut h2c = good;
        h2c[1] = ("upgrade", "h2c");
        check(Method::GET, &h2c, false);
        let mut v8 = good;
        v8[2] = ("sec-websocket-version", "8");
        check(Method::GET, &v8, false);
    }

    #[test]
    fn first_protocol_is_echoed() {
        let mut headers = HeaderMap::new();
        assert_eq!(first_protocol(&headers), None);
        headers.insert(
            SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(" chat , superchat"),
        );
        assert_eq!(first_protocol(&headers).expect("one"), "chat");
    }
}
