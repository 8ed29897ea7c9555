//! A moto server of our own: installed into `.venv/moto` by `scripts/moto.sh` if missing, started
//! on a free loopback port, killed (by PID) when dropped.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

static INSTALL: Mutex<Option<PathBuf>> = Mutex::new(None);

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

/// The path of `moto_server`, installing it once per test process.
fn moto_server() -> PathBuf {
    let mut guard = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(path) = guard.as_ref() {
        return path.clone();
    }
    let root = workspace_root();
    let out = Command::new("bash")
        .arg(root.join("scripts/moto.sh"))
        .arg("--path")
        .stderr(Stdio::inherit())
        .output()
        .expect("run scripts/moto.sh");
    assert!(
        out.status.success(),
        "scripts/moto.sh failed; run it by hand to see why"
    );
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().to_owned());
    assert!(path.exists(), "moto_server not at {}", path.display());
    *guard = Some(path.clone());
    path
}

/// A running moto server.
pub struct Moto {
    child: Child,
    pub port: u16,
}

impl Moto {
    pub fn start() -> Moto {
        Self::start_with(false)
    }

    /// moto over TLS with a self-signed certificate made at start (`moto_server --ssl`): an
    /// endpoint no trusted root vouches for. Its plain-HTTP helpers do not work; use
    /// [`Moto::https_url`].
    pub fn start_tls() -> Moto {
        Self::start_with(true)
    }

    fn start_with(tls: bool) -> Moto {
        let server = moto_server();
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").expect("free port");
            l.local_addr().expect("addr").port()
        };
        let mut cmd = Command::new(server);
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
        if tls {
            cmd.arg("--ssl");
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        let moto = Moto { child, port };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let up = if tls {
                TcpStream::connect(("127.0.0.1", port)).is_ok()
            } else {
                matches!(moto.http("GET", "/moto-api/", &[], ""), Ok((200, _)))
            };
            if up {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not answer in 60s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        moto
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The endpoint of a server started with [`Moto::start_tls`].
    pub fn https_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// Clears every resource.
    pub fn reset(&self) {
        let (status, body) = self
            .http("POST", "/moto-api/reset", &[], "")
            .expect("reset moto");
        assert_eq!(status, 200, "reset: {body}");
    }

    /// One plain HTTP/1.1 request; returns the status and the body.
    pub fn http(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> std::io::Result<(u16, String)> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.port,
            body.len()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(body);
        s.write_all(req.as_bytes())?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Ok((status, body))
    }

    /// An EC2 Query API call (the tests need only three EC2 actions; moto does not check
    /// signatures, and the credential scope routes the request to EC2).
    pub fn ec2(&self, params: &[(&str, &str)]) -> String {
        let (status, body) = self.ec2_call(params);
        assert_eq!(status, 200, "ec2 {params:?}: {body}");
        body
    }

    /// An EC2 Query API call whose failure the caller handles: the status and the body.
    pub fn ec2_call(&self, params: &[(&str, &str)]) -> (u16, String) {
        let mut form = String::from("Version=2016-11-15");
        for (k, v) in params {
            form.push('&');
            form.push_str(&encode(k));
            form.push('=');
            form.push_str(&encode(v));
        }
        let auth = "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/ec2/aws4_request, \
                    SignedHeaders=host, Signature=0";
        let (status, body) = self
            .http(
                "POST",
                "/",
                &[
                    ("Content-Type", "application/x-www-form-urlencoded"),
                    ("Authorization", auth),
                ],
                &form,
            )
            .expect("ec2 call");
        (status, body)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The text of the first `<tag>...</tag>` in `xml`.
pub fn xml_value(xml: &str, tag: &str) -> String {
    let open = format!("<{tag}>");
    let start = xml
        .find(&open)
        .unwrap_or_else(|| panic!("no <{tag}> in {xml}"))
        + open.len();
    let end = xml[start..].find("</").expect("closing tag") + start;
    xml[start..end].to_owned()
}
