//! A moto server of a test's own (the AWS emulator, in server mode): installed into `.venv/moto`
//! by `scripts/moto.sh` if missing, started on a free loopback port, killed (by PID) when dropped,
//! and raw calls to it for what the tests set up or check without an SDK client (EC2 Query calls,
//! CloudFormation and SSM requests, moto's own reset).
//!
//! Plain HTTP over a `TcpStream`: no AWS SDK here, so that a test binary that only needs the
//! server (the CLI's `baseline` tests) compiles none of it.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

/// The path of `moto_server`, once per test process.
static INSTALL: Mutex<Option<PathBuf>> = Mutex::new(None);

/// How long a fresh `moto_server` may take to answer.
const START_LIMIT: Duration = Duration::from_secs(60);

/// The path of `moto_server`, installing it (`scripts/moto.sh`) once per test process.
fn moto_server() -> PathBuf {
    let mut guard = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(path) = guard.as_ref() {
        return path.clone();
    }
    let out = Command::new("bash")
        .arg(crate::repo_root().join("scripts/moto.sh"))
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

/// A running moto server, killed by PID when dropped.
pub struct Moto {
    child: Child,
    /// Its loopback port.
    pub port: u16,
    /// Where it writes the requests it records once [`Moto::start_recording`] is called.
    recording: PathBuf,
}

impl Moto {
    /// Starts a server over plain HTTP and waits (up to a minute) until it answers.
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
        let port = crate::net::free_port();
        let recording = std::env::temp_dir().join(format!(
            "flotilla-moto-recording-{}-{port}.jsonl",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&recording);
        let mut cmd = Command::new(server);
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("MOTO_RECORDER_FILEPATH", &recording);
        if tls {
            cmd.arg("--ssl");
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        let moto = Moto {
            child,
            port,
            recording,
        };
        let up = crate::wait::eventually_every(START_LIMIT, Duration::from_millis(100), || {
            let up = if tls {
                TcpStream::connect(("127.0.0.1", port)).is_ok()
            } else {
                matches!(moto.http("GET", "/moto-api/", &[], ""), Ok((200, _)))
            };
            up.then_some(())
        });
        assert!(up.is_some(), "moto_server did not answer in 60s");
        moto
    }

    /// The plain-HTTP endpoint.
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
        let host = format!("127.0.0.1:{}", self.port);
        let response = crate::http::exchange(
            ("127.0.0.1", self.port),
            &host,
            method,
            path,
            headers,
            body.as_bytes(),
            Duration::from_secs(30),
        )?;
        Ok((response.status, response.text()))
    }

    /// Makes the server record every request from now on (moto's recorder), for a test that
    /// checks what a client sent where moto keeps no trace of it.
    pub fn start_recording(&self) {
        let (status, body) = self
            .http("POST", "/moto-api/recorder/start-recording", &[], "")
            .expect("start moto's recorder");
        assert_eq!(status, 200, "start recording: {body}");
    }

    /// The JSON bodies of the recorded requests whose `X-Amz-Target` header is `target` (e.g.
    /// `AmazonEC2ContainerServiceV20141113.CreateService`), oldest first.
    pub fn recorded_json(&self, target: &str) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(&self.recording).unwrap_or_default();
        text.lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|entry| {
                entry["headers"].as_object().is_some_and(|headers| {
                    headers.iter().any(|(name, value)| {
                        name.eq_ignore_ascii_case("x-amz-target") && value == target
                    })
                })
            })
            .filter_map(|entry| {
                let body = entry["body"].as_str()?;
                let bytes = if entry["body_encoded"] == true {
                    base64::Engine::decode(&base64::engine::general_purpose::STANDARD, body).ok()?
                } else {
                    body.as_bytes().to_vec()
                };
                serde_json::from_slice(&bytes).ok()
            })
            .collect()
    }

    /// A call moto routes to `service` by the credential scope (it checks no signature).
    pub fn call(&self, service: &str, headers: &[(&str, &str)], body: &str) -> (u16, String) {
        let auth = format!(
            "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/{service}/aws4_request, \
             SignedHeaders=host, Signature=0"
        );
        let mut all = headers.to_vec();
        all.push(("Authorization", &auth));
        self.http("POST", "/", &all, body).expect("moto call")
    }

    /// A Query API call to `service` (EC2, CloudFormation): `form` is the form-encoded rest of
    /// the request after `Version=<version>`.
    pub fn query(&self, service: &str, version: &str, form: &str) -> (u16, String) {
        self.call(
            service,
            &[("Content-Type", "application/x-www-form-urlencoded")],
            &format!("Version={version}&{form}"),
        )
    }

    /// An EC2 Query API call (the tests need only a few EC2 actions; no EC2 SDK crate to compile
    /// for them).
    pub fn ec2(&self, params: &[(&str, &str)]) -> String {
        let (status, body) = self.ec2_call(params);
        assert_eq!(status, 200, "ec2 {params:?}: {body}");
        body
    }

    /// An EC2 Query API call whose failure the caller handles: the status and the body.
    pub fn ec2_call(&self, params: &[(&str, &str)]) -> (u16, String) {
        let form: Vec<String> = params
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect();
        self.query("ec2", "2016-11-15", &form.join("&"))
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.recording);
    }
}

/// `s` percent-encoded for a form body.
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

#[cfg(test)]
mod tests {
    #[test]
    fn form_values_are_percent_encoded() {
        assert_eq!(super::encode("10.0.0.0/16"), "10.0.0.0%2F16");
        assert_eq!(super::encode("a b&c=d"), "a%20b%26c%3Dd");
    }

    #[test]
    fn xml_value_is_the_first_element_text() {
        let xml = "<r><vpcId>vpc-1</vpcId><vpcId>vpc-2</vpcId></r>";
        assert_eq!(super::xml_value(xml, "vpcId"), "vpc-1");
    }
}
