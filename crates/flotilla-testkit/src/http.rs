//! One plain HTTP/1.1 exchange over a fresh loopback connection (`Connection: close`), read to the
//! end: what a test needs to poke a server it started without an HTTP client crate.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// An answer: the status (0 when the status line is unreadable), the header lines, the raw body.
#[derive(Clone, Debug, Default)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Each header as sent, name lowercased, both sides trimmed.
    pub headers: Vec<(String, String)>,
    /// The body's bytes (chunked framing, if any, left as it came).
    pub body: Vec<u8>,
}

impl Response {
    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The first header called `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `method path` to `addr` with `Host: <host>`, a `Content-Length`, `headers` and `body`,
/// waits up to `timeout` for each read, and reads the answer until the server closes.
pub fn exchange(
    addr: impl ToSocketAddrs,
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(timeout))?;
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    stream.write_all(&bytes)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    Ok(parse(&raw))
}

/// An answer as read off the wire; without a blank line, all of it is the head.
fn parse(raw: &[u8]) -> Response {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n");
    let (head, body) = match split {
        Some(i) => (&raw[..i], raw[i + 4..].to_vec()),
        None => (raw, Vec::new()),
    };
    let head = String::from_utf8_lossy(head);
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Response {
        status,
        headers,
        body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exchange_with_a_server_that_answers_and_closes() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            let mut seen = Vec::new();
            let mut buf = [0u8; 1024];
            while !seen.ends_with(b"ping") {
                let n = s.read(&mut buf).expect("read");
                assert_ne!(n, 0, "the request ends with its body");
                seen.extend_from_slice(&buf[..n]);
            }
            s.write_all(b"HTTP/1.1 201 Created\r\nX-Thing:  a b \r\n\r\npong\r\n\r\nmore")
                .expect("write");
            String::from_utf8(seen).expect("text")
        });
        let got = exchange(
            addr,
            "example",
            "POST",
            "/p",
            &[("X-A", "1")],
            b"ping",
            Duration::from_secs(5),
        )
        .expect("exchange");
        let request = server.join().expect("server");
        assert!(
            request.starts_with("POST /p HTTP/1.1\r\nHost: example\r\n"),
            "{request}"
        );
        assert!(
            request.contains("Content-Length: 4\r\nX-A: 1\r\n\r\nping"),
            "{request}"
        );
        assert_eq!(got.status, 201);
        assert_eq!(got.header("x-thing"), Some("a b"));
        assert_eq!(got.text(), "pong\r\n\r\nmore");
    }

    #[test]
    fn an_unreadable_answer_has_status_zero() {
        assert_eq!(parse(b"garbage").status, 0);
        assert!(parse(b"").body.is_empty());
    }
}
