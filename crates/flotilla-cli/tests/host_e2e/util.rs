//! Test support for the host end-to-end tests: testkit's host app directory (its own
//! `flotilla.toml` and free ports, the real `flotilla` binary, a guard that stops every process
//! the test started when it is dropped) with the example app as its instances, and a tiny HTTP
//! client.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use flotilla_testkit::host::HostApp;

/// The `flotilla` binary under test.
pub fn flotilla_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_flotilla"))
}

/// The example app, built next to the `flotilla` binary (once per test run; cargo makes this a
/// no-op when it is up to date).
pub fn hello_bin() -> PathBuf {
    static HELLO: OnceLock<PathBuf> = OnceLock::new();
    HELLO
        .get_or_init(|| {
            let dir = flotilla_bin()
                .parent()
                .expect("the binary has a directory")
                .to_path_buf();
            let mut cmd = Command::new(env!("CARGO"));
            cmd.args(["build", "--quiet", "-p", "flotilla-example-hello"])
                .current_dir(env!("CARGO_MANIFEST_DIR"));
            if dir.file_name().is_some_and(|n| n == "release") {
                cmd.arg("--release");
            }
            let status = cmd.status().expect("run cargo build for the example app");
            assert!(status.success(), "building flotilla-example-hello failed");
            let path = dir.join("flotilla-example-hello");
            assert!(path.exists(), "{} was not built", path.display());
            path
        })
        .clone()
}

pub use flotilla_testkit::net::free_port;

pub use flotilla_testkit::host::Timing;

/// One app directory with its own daemon whose instances run the example app (the shared
/// [`HostApp`], which stops everything when dropped), plus what these tests ask of it.
pub struct HostEnv {
    host: HostApp,
    timing: Timing,
}

impl std::ops::Deref for HostEnv {
    type Target = HostApp;

    fn deref(&self) -> &HostApp {
        &self.host
    }
}

impl HostEnv {
    /// A fresh app directory whose instances run the example app.
    pub fn new(timing: Timing) -> HostEnv {
        let hello = hello_bin();
        // The default `.tmp` prefix keeps the socket paths under the directory short.
        let env = HostEnv {
            host: HostApp::new(flotilla_bin(), ".tmp", Duration::from_secs(120), 3),
            timing,
        };
        env.write("README", "test app\n");
        env.configure(&format!("cp {} ./hello", hello.display()), "exec ./hello");
        env
    }

    /// Rewrites `flotilla.toml` for the example app with `extra` appended to `[host]`.
    pub fn configure_host_keys(&self, extra: &str) {
        let build = format!("cp {} ./hello", hello_bin().display());
        self.configure_with(&build, "exec ./hello", extra);
    }

    /// Rewrites `flotilla.toml` with this build and start command.
    pub fn configure(&self, build: &str, command: &str) {
        self.configure_with(build, command, "");
    }

    /// Rewrites `flotilla.toml` with this build and start command, and `extra` appended to
    /// `[host]`.
    pub fn configure_with(&self, build: &str, command: &str, extra: &str) {
        self.write_config("e2e", None, build, command, extra);
    }

    /// Rewrites `flotilla.toml` for an app named `name` serving `hosts` behind the front door on
    /// `socket` (no `listen`), with `extra` appended to `[host]`.
    pub fn configure_behind_front_door(
        &self,
        name: &str,
        socket: &Path,
        hosts: &[&str],
        extra: &str,
    ) {
        let place = format!("hosts = {hosts:?}\nfront_door_socket = {socket:?}\n");
        let build = format!("cp {} ./hello", hello_bin().display());
        self.write_config(name, Some(&place), &build, "exec ./hello", extra);
    }

    /// The shared `flotilla.toml` template with this test's timing, two instances, the build
    /// and start commands, and `extra` in `[host]`.
    fn write_config(
        &self,
        name: &str,
        place: Option<&str>,
        build: &str,
        command: &str,
        extra: &str,
    ) {
        let host_lines =
            format!("instances = 2\nbuild = {build:?}\ncommand = {command:?}\n{extra}");
        self.host
            .write_config(name, self.timing, "", place, &host_lines);
    }

    /// The status page's JSON.
    pub fn admin_status(&self) -> serde_json::Value {
        let r = get(self.admin, "/status.json", &[]).expect("status page answers");
        assert_eq!(r.status, 200, "{}", r.body);
        serde_json::from_str(&r.body).expect("status.json is JSON")
    }

    /// The pids of `id`'s running instances, from the status page.
    pub fn instance_pids(&self, id: &str) -> Vec<u32> {
        self.admin_status()["instances"]
            .as_array()
            .expect("instances")
            .iter()
            .filter(|i| i["deployment_id"] == id)
            .filter_map(|i| i["pid"].as_u64())
            .map(|p| p as u32)
            .collect()
    }

    /// GET through the router.
    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        get(self.listen, path, headers).expect("the router answers")
    }
}

pub use flotilla_testkit::procs::kill;

pub use flotilla_testkit::procs::alive;

pub use flotilla_testkit::wait::eventually;

/// One HTTP answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

/// A one-shot `GET` (`Connection: close`).
pub fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> std::io::Result<Reply> {
    get_host(addr, "e2e", path, headers)
}

/// A one-shot `GET` (`Connection: close`) with this `Host`.
pub fn get_host(
    addr: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<Reply> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut conn = KeepAlive {
        reader: BufReader::new(stream),
        host: host.to_owned(),
    };
    conn.send(path, headers, true)
}

/// An HTTP/1.1 keep-alive connection for load tests.
pub struct KeepAlive {
    reader: BufReader<TcpStream>,
    host: String,
}

impl KeepAlive {
    /// Connects to `addr`, naming `host` in each request's `Host`.
    pub fn connect_host(addr: SocketAddr, host: &str) -> std::io::Result<KeepAlive> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.set_nodelay(true)?;
        Ok(KeepAlive {
            reader: BufReader::new(stream),
            host: host.to_owned(),
        })
    }

    /// Sends one GET and reads the whole answer.
    pub fn send(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
        close: bool,
    ) -> std::io::Result<Reply> {
        let mut request = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n", self.host);
        for (k, v) in headers {
            request.push_str(&format!("{k}: {v}\r\n"));
        }
        if close {
            request.push_str("Connection: close\r\n");
        }
        request.push_str("\r\n");
        self.reader.get_mut().write_all(request.as_bytes())?;
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed before an answer",
            ));
        }
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            self.reader.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_owned(), v.trim().to_owned()));
            }
        }
        let find = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        let mut body = Vec::new();
        if let Some(len) = find("content-length").and_then(|v| v.parse::<usize>().ok()) {
            body.resize(len, 0);
            self.reader.read_exact(&mut body)?;
        } else if find("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            loop {
                let mut size = String::new();
                self.reader.read_line(&mut size)?;
                let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
                    .map_err(|e| std::io::Error::other(format!("bad chunk size {size:?}: {e}")))?;
                let mut chunk = vec![0; n + 2];
                self.reader.read_exact(&mut chunk)?;
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        } else {
            self.reader.read_to_end(&mut body)?;
        }
        Ok(Reply {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}
