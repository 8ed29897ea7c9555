//! HTTP health checks of one instance: `GET <health_path>` on its loopback port.
//!
//! A check passes on any 2xx answer within the timeout. If the body is a JSON object with a
//! numeric `sessions` field, that number is the app's own count of live sessions, which the drain
//! logic adds to what the router counts.
//!
//! The request is HTTP/1.0 with `Connection: close`, so the answer is never chunked in practice
//! and reading to EOF gives the whole body; chunked bodies are decoded anyway.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The largest health answer read.
const MAX_ANSWER: usize = 64 * 1024;

/// The outcome of one health check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthReport {
    /// Whether the check passed.
    pub healthy: bool,
    /// The HTTP status, if an answer came.
    pub status: Option<u16>,
    /// The app's own session count, if it reported one.
    pub sessions: Option<u64>,
    /// Why it failed, in words.
    pub problem: Option<String>,
}

impl HealthReport {
    fn failed(problem: String) -> Self {
        HealthReport {
            healthy: false,
            status: None,
            sessions: None,
            problem: Some(problem),
        }
    }
}

/// Checks `addr` once, giving up after `timeout`.
pub async fn check(addr: SocketAddr, path: &str, timeout: Duration) -> HealthReport {
    match tokio::time::timeout(timeout, fetch(addr, path)).await {
        Ok(Ok(answer)) => parse_answer(&answer),
        Ok(Err(e)) => HealthReport::failed(format!("GET {path} on {addr}: {e}")),
        Err(_) => HealthReport::failed(format!(
            "GET {path} on {addr}: no answer within {}ms",
            timeout.as_millis()
        )),
    }
}

async fn fetch(addr: SocketAddr, path: &str) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let request = format!(
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: flotilla-health\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&chunk[..n]);
        if answer.len() > MAX_ANSWER {
            break;
        }
    }
    Ok(answer)
}

/// Parses a raw HTTP answer into a report.
pub fn parse_answer(answer: &[u8]) -> HealthReport {
    let Some(split) = find(answer, b"\r\n\r\n") else {
        return HealthReport::failed("the health answer has no complete header".to_owned());
    };
    let head = String::from_utf8_lossy(&answer[..split]);
    let mut body = answer[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse::<u16>().ok());
    let Some(status) = status else {
        return HealthReport::failed("the health answer has no HTTP status line".to_owned());
    };
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if chunked {
        body = dechunk(&body);
    }
    let sessions = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("sessions").and_then(serde_json::Value::as_u64));
    let healthy = (200..300).contains(&status);
    HealthReport {
        healthy,
        status: Some(status),
        sessions,
        problem: (!healthy).then(|| format!("health check answered {status}")),
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = find(body, b"\r\n") {
        let size_text = String::from_utf8_lossy(&body[..eol]);
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let Ok(size) = usize::from_str_radix(size_text, 16) else {
            break;
        };
        body = &body[eol + 2..];
        if size == 0 || body.len() < size {
            out.extend_from_slice(&body[..size.min(body.len())]);
            break;
        }
        out.extend_from_slice(&body[..size]);
        body = body.get(size + 2..).unwrap_or(&[]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_answers() {
        let check = |raw: &str, healthy: bool, status: Option<u16>, sessions: Option<u64>| {
            let r = parse_answer(raw.as_bytes());
            assert_eq!(
                (r.healthy, r.status, r.sessions),
                (healthy, status, sessions),
                "{raw:?}"
            );
        };
        check("HTTP/1.1 200 OK\r\n\r\nok", true, Some(200), None);
        check("HTTP/1.0 204 No Content\r\n\r\n", true, Some(204), None);
        check(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{\"sessions\":3}",
            true,
            Some(200),
            Some(3),
        );
        check(
            "HTTP/1.1 503 Unavailable\r\n\r\n{\"sessions\":1}",
            false,
            Some(503),
            Some(1),
        );
        check(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nd\r\n{\"sessions\":7\r\n1\r\n}\r\n0\r\n\r\n",
            true,
            Some(200),
            Some(7),
        );
        check(
            "HTTP/1.1 200 OK\r\n\r\n{\"sessions\":-1}",
            true,
            Some(200),
            None,
        );
        check("garbage", false, None, None);
        check("HTTP/1.1 abc\r\n\r\n", false, None, None);
    }

    #[tokio::test]
    async fn checks_a_real_socket_and_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).await.expect("read");
            assert!(String::from_utf8_lossy(&buf[..n]).starts_with("GET /healthz HTTP/1.0"));
            s.write_all(b"HTTP/1.1 200 OK\r\n\r\n{\"sessions\":2}")
                .await
                .expect("write");
            drop(s);
            // A second connection that never answers.
            let (_s2, _) = listener.accept().await.expect("accept");
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let r = check(addr, "/healthz", Duration::from_secs(2)).await;
        assert!(r.healthy && r.sessions == Some(2), "{r:?}");
        let r = check(addr, "/healthz", Duration::from_millis(200)).await;
        assert!(
            !r.healthy
                && r.problem
                    .as_deref()
                    .is_some_and(|p| p.contains("no answer")),
            "{r:?}"
        );
    }
}
