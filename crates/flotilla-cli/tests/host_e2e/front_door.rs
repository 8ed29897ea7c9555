//! Two apps behind one front door: each its own flotilla.toml, daemon, deploys and versions,
//! chosen by host name on one shared port.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{self, HostEnv, Timing, alive, eventually, flotilla_bin, free_port, kill};
use crate::{EventStream, HEADER, Load, runtime, served_by};

/// A `flotilla host front-door` process on loopback, stopped by pid when dropped (and the front
/// doors it handed over to).
struct FrontDoor {
    child: Child,
    successors: Vec<u32>,
    http: SocketAddr,
    socket: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl FrontDoor {
    fn start() -> FrontDoor {
        Self::start_with(None)
    }

    /// A front door that also takes TLS on `https` (its apps terminate it).
    fn start_with(https: Option<SocketAddr>) -> FrontDoor {
        let dir = tempfile::tempdir().expect("tempdir");
        let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let socket = dir.path().join("front-door.sock");
        let log = dir.path().join("front-door.log");
        let tls: Vec<String> = match https {
            Some(addr) => vec!["--https".into(), addr.to_string()],
            None => vec!["--no-https".into()],
        };
        let child = Command::new(flotilla_bin())
            .args(["host", "front-door", "--hold", "15"])
            .args(&tls)
            .env("FLOTILLA_LOG", "debug")
            .arg("--http")
            .arg(http.to_string())
            .arg("--socket")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start the front door");
        let door = FrontDoor {
            child,
            successors: Vec::new(),
            http,
            socket,
            log,
            _dir: dir,
        };
        eventually(Duration::from_secs(10), || {
            std::net::TcpStream::connect(http).ok()
        })
        .unwrap_or_else(|| panic!("the front door never listened:\n{}", door.log_text()));
        door
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn get(&self, host: &str, path: &str, headers: &[(&str, &str)]) -> util::Reply {
        util::get_host(self.http, host, path, headers).expect("the front door answers")
    }
}

impl FrontDoor {
    /// The pid of the front door serving now.
    fn pid(&self) -> u32 {
        self.successors.last().copied().unwrap_or(self.child.id())
    }

    /// SIGUSR2 to the serving front door; waits until it handed over and exited, and returns the
    /// new one's pid.
    fn upgrade(&mut self) -> u32 {
        let old = self.pid();
        kill(old, "-USR2");
        let exited = eventually(Duration::from_secs(30), || (!alive(old)).then_some(()));
        if old == self.child.id() {
            let _ = self.child.wait();
        }
        assert!(
            exited.is_some(),
            "the old front door did not exit:\n{}",
            self.log_text()
        );
        let new = self
            .log_text()
            .lines()
            .rev()
            .filter(|l| l.contains("handed over to the new front door"))
            .find_map(|l| {
                l.split("pid=")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no handover in the log:\n{}", self.log_text()));
        self.successors.push(new);
        new
    }
}

impl Drop for FrontDoor {
    fn drop(&mut self) {
        kill(self.child.id(), "-9");
        let _ = self.child.wait();
        for pid in &self.successors {
            kill(*pid, "-9");
        }
    }
}

fn app_behind(door_socket: &Path, name: &str, hosts: &[&str]) -> HostEnv {
    app_behind_with(door_socket, name, hosts, "")
}

fn app_behind_with(door_socket: &Path, name: &str, hosts: &[&str], extra: &str) -> HostEnv {
    let env = HostEnv::new(Timing {
        poll: 1,
        grace: 600,
        interval: 1,
        health_timeout: 30,
    });
    env.configure_behind_front_door(name, door_socket, hosts, extra);
    env
}

#[test]
fn two_apps_share_one_front_door_by_host_name_and_a_deploy_of_one_never_disturbs_the_other() {
    let door = FrontDoor::start();
    let shop = app_behind(&door.socket, "shop", &["shop.test"]);
    let blog = app_behind(&door.socket, "blog", &["blog.test", "*.blog.test"]);
    let shop_v1 = shop.deploy();
    let blog_v1 = blog.deploy();

    // Each host reaches its own app's version, through the same port.
    let reached = |host: &str| served_by(&door.get(host, "/", &[]));
    assert_eq!(reached("shop.test"), shop_v1);
    assert_eq!(
        reached("SHOP.test:80"),
        shop_v1,
        "names compare without case or port"
    );
    assert_eq!(reached("blog.test"), blog_v1);
    assert_eq!(
        reached("tenant.blog.test"),
        blog_v1,
        "a wildcard matches one label"
    );

    // An unknown host gets a clear 404, and a request without Host a 400.
    let unknown = door.get("nobody.test", "/", &[]);
    assert_eq!(unknown.status, 404, "{unknown:?}");
    assert!(
        unknown
            .body
            .contains("no app on this server answers for host nobody.test"),
        "{}",
        unknown.body
    );
    let mut raw = std::net::TcpStream::connect(door.http).expect("connect");
    use std::io::{Read, Write};
    raw.write_all(b"GET / HTTP/1.0\r\n\r\n").expect("send");
    let mut text = String::new();
    let _ = raw.read_to_string(&mut text);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");

    // Another app cannot take a host name a running app holds: its daemon refuses to start,
    // saying which app holds it.
    let thief = app_behind(&door.socket, "thief", &["shop.test"]);
    let out = thief.flotilla(&["deploy", "--json"]);
    assert!(
        !out.status.success(),
        "a deploy claiming a taken host must fail"
    );
    let log =
        std::fs::read_to_string(thief.app().join(".flotilla/host/daemon.log")).unwrap_or_default();
    let said = format!("{}{log}", String::from_utf8_lossy(&out.stderr));
    assert!(
        said.contains("host shop.test is served by app shop"),
        "{said}"
    );
    assert_eq!(
        reached("shop.test"),
        shop_v1,
        "the refused app changed nothing"
    );

    // Under steady load on the blog, with an event stream open to it, the shop deploys twice:
    // no blog request fails and the stream keeps ticking.
    let rt = runtime();
    let stream = rt.block_on(EventStream::open_host(
        door.http,
        "blog.test",
        "/events",
        &[],
    ));
    let load = Load::start_host(door.http, "blog.test", 2);
    let shop_v2 = shop.deploy();
    let shop_v3 = shop.deploy();
    std::thread::sleep(Duration::from_millis(500));
    let (seen, failures) = load.finish();
    assert!(
        failures.is_empty(),
        "blog requests failed during the shop's deploys: {failures:?}"
    );
    assert_eq!(
        seen.keys().cloned().collect::<Vec<_>>(),
        vec![blog_v1.clone()],
        "{seen:?}"
    );
    let ticks = stream.ticks();
    assert!(
        ticks.len() >= 2 && ticks.iter().all(|t| *t == blog_v1),
        "{ticks:?}"
    );
    stream.close();
    assert_eq!(reached("shop.test"), shop_v3);
    assert_eq!(
        served_by(&door.get("shop.test", "/", &[(HEADER, &shop_v2)])),
        shop_v2,
        "affinity works through the front door"
    );

    // The shop's daemon dies; a request for it waits at the front door and is served once a
    // new daemon (as systemd would start) has registered, without restarting the app.
    let daemon = shop.daemon_pid().expect("the shop's daemon runs");
    kill(daemon, "-9");
    assert!(eventually(Duration::from_secs(5), || (!alive(daemon)).then_some(())).is_some());
    let http = door.http;
    let held = std::thread::spawn(move || {
        let started = Instant::now();
        let reply = util::get_host(http, "shop.test", "/", &[]);
        (reply, started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(300));
    let restarted = Instant::now();
    let out = shop.flotilla(&["status"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (reply, waited) = held.join().expect("held request");
    let reply = reply.unwrap_or_else(|e| {
        panic!(
            "the held request failed: {e}\nfront door log:\n{}\nshop daemon log:\n{}",
            door.log_text(),
            std::fs::read_to_string(shop.app().join(".flotilla/host/daemon.log"))
                .unwrap_or_default()
        )
    });
    println!(
        "front door: a request held while the shop's daemon was down was served {} ms after \
         the restart began ({} ms in all)",
        restarted.elapsed().as_millis(),
        waited.as_millis()
    );
    assert_eq!(served_by(&reply), shop_v3);
    assert_eq!(reached("blog.test"), blog_v1);
    assert!(
        door.log_text().contains("app registered"),
        "{}",
        door.log_text()
    );
}

/// Upgrading one app's daemon behind the front door (`flotilla host upgrade`): its WebSockets
/// keep working through the old daemon, steady load through the front door fails no request, and
/// the other app never notices.
#[test]
fn an_upgrade_behind_the_front_door_fails_no_request_and_keeps_every_websocket() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let door = FrontDoor::start();
    let shop = app_behind(&door.socket, "shop", &["shop.test"]);
    let blog = app_behind(&door.socket, "blog", &["blog.test"]);
    let shop_v1 = shop.deploy();
    let blog_v1 = blog.deploy();
    let rt = runtime();
    let url = format!("ws://{}/ws", door.http);
    let mut sockets = Vec::new();
    for _ in 0..3 {
        let mut request =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                url.as_str(),
            )
            .expect("request");
        request
            .headers_mut()
            .insert("host", "shop.test".parse().expect("header"));
        let (mut ws, _) = rt
            .block_on(tokio_tungstenite::connect_async(request))
            .expect("a WebSocket through the front door");
        let hello = rt.block_on(ws.next()).expect("greeting").expect("frame");
        assert!(
            hello.to_text().expect("text").contains(&shop_v1),
            "{hello:?}"
        );
        sockets.push(ws);
    }
    let shop_load = Load::start_host(door.http, "shop.test", 3);
    let blog_load = Load::start_host(door.http, "blog.test", 1);
    std::thread::sleep(Duration::from_millis(300));
    let old = shop.daemon_pid().expect("the shop's daemon");
    let out = shop.flotilla(&["host", "upgrade", "--json"]);
    assert!(
        out.status.success(),
        "upgrade failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    std::thread::sleep(Duration::from_millis(800));
    let (shop_seen, shop_failures) = shop_load.finish();
    let (blog_seen, blog_failures) = blog_load.finish();
    assert!(
        shop_failures.is_empty(),
        "shop requests failed across its upgrade: {shop_failures:?}"
    );
    assert!(
        blog_failures.is_empty(),
        "blog requests failed: {blog_failures:?}"
    );
    assert_eq!(
        shop_seen.keys().cloned().collect::<Vec<_>>(),
        vec![shop_v1.clone()]
    );
    assert_eq!(
        blog_seen.keys().cloned().collect::<Vec<_>>(),
        vec![blog_v1.clone()]
    );
    let new = shop.daemon_pid().expect("the new daemon");
    assert_ne!(new, old, "a new daemon serves the shop");
    assert!(alive(old), "the old daemon still serves its WebSockets");
    for (n, ws) in sockets.iter_mut().enumerate() {
        rt.block_on(ws.send(Message::text(format!("after {n}"))))
            .expect("send");
        let reply = rt.block_on(ws.next()).expect("reply").expect("frame");
        assert!(
            reply
                .to_text()
                .expect("text")
                .contains(&format!("after {n}")),
            "{reply:?}"
        );
    }
    // New connections reach the new daemon, through the same front door.
    assert_eq!(served_by(&door.get("shop.test", "/", &[])), shop_v1);
    for ws in &mut sockets {
        let _ = rt.block_on(ws.close(None));
    }
    assert!(
        eventually(Duration::from_secs(20), || (!alive(old)).then_some(())).is_some(),
        "the old daemon exits once its WebSockets closed"
    );
}

/// `flotilla host front-door --install` writes a unit that runs the front door with the options
/// given (and systemd accepts it); `--uninstall` removes it. Needs no flotilla.toml.
#[test]
fn the_front_door_installs_as_a_systemd_unit_with_its_options() {
    let home = tempfile::tempdir().expect("tempdir");
    let run = |args: &[&str]| {
        let out = Command::new(flotilla_bin())
            .args(args)
            .current_dir(home.path())
            .env("HOME", home.path())
            .env("XDG_CONFIG_HOME", home.path().join("cfg"))
            .output()
            .expect("run flotilla");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    let out = run(&[
        "host",
        "front-door",
        "--install",
        "--user-unit",
        "--no-enable",
        "--json",
        "--http",
        "127.0.0.1:8088",
        "--no-https",
        "--socket-group",
        "apps",
    ]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let path = PathBuf::from(report["path"].as_str().expect("path"));
    assert_eq!(
        path,
        home.path()
            .join("cfg/systemd/user/flotilla-front-door.service")
    );
    let unit = std::fs::read_to_string(&path).expect("unit");
    assert!(
        unit.contains("host front-door --http 127.0.0.1:8088 --https 0.0.0.0:443 --hold 10 --no-https --socket-group apps\n"),
        "{unit}"
    );
    let verify = Command::new("systemd-analyze")
        .args(["verify", "--user"])
        .env("XDG_RUNTIME_DIR", home.path())
        .arg(&path)
        .output()
        .expect("systemd-analyze runs (scripts/systemd.sh installs it)");
    let stderr = String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success() && !stderr.contains("flotilla-front-door.service"),
        "{stderr}"
    );
    let out = run(&[
        "host",
        "front-door",
        "--uninstall",
        "--user-unit",
        "--no-enable",
    ]);
    assert!(!path.exists());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("register again"),
        "{out:?}"
    );
}

/// Upgrading the front door itself (SIGUSR2, as `systemctl reload` sends): the new front door
/// takes the same listening sockets, the apps register with it, and under steady load no request
/// fails, while a WebSocket (held by the app's daemon, not the front door) goes on.
#[test]
fn an_upgrade_of_the_front_door_itself_fails_no_request() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let mut door = FrontDoor::start();
    let shop = app_behind(&door.socket, "shop", &["shop.test"]);
    let shop_v1 = shop.deploy();
    let rt = runtime();
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!(
            "ws://{}/ws",
            door.http
        ))
        .expect("request");
    request
        .headers_mut()
        .insert("host", "shop.test".parse().expect("header"));
    let (mut ws, _) = rt
        .block_on(tokio_tungstenite::connect_async(request))
        .expect("a WebSocket through the front door");
    let _greeting = rt.block_on(ws.next());
    let load = Load::start_host(door.http, "shop.test", 3);
    std::thread::sleep(Duration::from_millis(300));
    let old = door.pid();
    let started = Instant::now();
    let new = door.upgrade();
    println!(
        "front door upgrade: the old one (pid {old}) handed over to pid {new} and exited {} ms \
         after SIGUSR2",
        started.elapsed().as_millis()
    );
    std::thread::sleep(Duration::from_millis(800));
    let (seen, failures) = load.finish();
    assert!(
        failures.is_empty(),
        "requests failed across the front door's upgrade: {failures:?}\n{}",
        door.log_text()
    );
    assert_eq!(
        seen.keys().cloned().collect::<Vec<_>>(),
        vec![shop_v1.clone()]
    );
    assert!(alive(new));
    rt.block_on(ws.send(Message::text("still here")))
        .expect("send");
    let reply = rt.block_on(ws.next()).expect("reply").expect("frame");
    assert!(
        reply.to_text().expect("text").contains("still here"),
        "{reply:?}"
    );
    assert_eq!(served_by(&door.get("shop.test", "/", &[])), shop_v1);
}

/// The picture: two apps behind one front door on HTTPS, each with its own certificate,
/// chosen by the TLS server name; HTTP/2 and HTTP/1.1; plain HTTP redirected to HTTPS; an unknown
/// name refused in the handshake.
#[test]
fn two_apps_behind_one_https_front_door_each_with_its_own_certificate() {
    let https = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let door = FrontDoor::start_with(Some(https));
    let keys = tempfile::tempdir().expect("tempdir");
    let app = |name: &str, host: &str| {
        let certified = rcgen::generate_simple_self_signed(vec![host.to_owned()]).expect("cert");
        let cert = keys.path().join(format!("{name}.pem"));
        let key = keys.path().join(format!("{name}.key"));
        std::fs::write(&cert, certified.cert.pem()).expect("write cert");
        std::fs::write(&key, certified.signing_key.serialize_pem()).expect("write key");
        let env = app_behind_with(
            &door.socket,
            name,
            &[host],
            &format!(
                "https_listen = \"{https}\"\ntls_certificate_file = {:?}\ntls_key_file = {:?}\n",
                cert.display().to_string(),
                key.display().to_string()
            ),
        );
        (env, cert)
    };
    let (shop, shop_cert) = app("shop", "shop.example.com");
    let (blog, blog_cert) = app("blog", "blog.example.com");
    let shop_v1 = shop.deploy();
    let blog_v1 = blog.deploy();

    // Each name reaches its app over HTTP/2 and HTTP/1.1, with that app's own certificate
    // (curl trusts only the certificate given, so the other app's would fail).
    crate::https::check_both_protocols("shop.example.com", https.port(), &shop_cert, &shop_v1);
    crate::https::check_both_protocols("blog.example.com", https.port(), &blog_cert, &blog_v1);
    assert!(
        crate::https::curl("blog.example.com", https.port(), "/", &shop_cert, true).is_err(),
        "the blog does not present the shop's certificate"
    );
    // A name no app registered is refused in the handshake.
    assert!(crate::https::curl("nobody.example.com", https.port(), "/", &shop_cert, true).is_err());
    // Plain HTTP through the front door is redirected to HTTPS on the front door's port.
    let redirect = door.get("shop.example.com", "/a?b=1", &[]);
    assert_eq!(redirect.status, 308, "{redirect:?}");
    assert_eq!(
        redirect.header("location"),
        Some(format!("https://shop.example.com:{}/a?b=1", https.port()).as_str())
    );
}

/// The check with real certificates: two apps behind one HTTPS front door, each getting
/// its own certificate from pebble through it — the shop over HTTP-01 (pebble's request reaches
/// the front door's plain port and is handed to the shop by `Host`), the blog over TLS-ALPN-01
/// (pebble's `acme-tls/1` handshake reaches the front door's TLS port and is handed to the blog
/// by its server name). Then both serve HTTP/2 and HTTP/1.1 with their own certificate.
#[test]
fn two_apps_behind_one_https_front_door_get_their_certificates_from_pebble_through_it() {
    let https = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let door = FrontDoor::start_with(Some(https));
    let pebble = flotilla_testkit::pebble::Pebble::start(flotilla_testkit::pebble::PebbleOptions {
        http_port: door.http.port(),
        tls_port: https.port(),
        validity: None,
    })
    .expect("pebble starts (scripts/pebble.sh installs it)");
    let root = pebble.ca_file().with_file_name("issuing-root.pem");
    std::fs::write(&root, pebble.issuing_root().expect("pebble's issuing root"))
        .expect("write root");
    let app = |name: &str, host: &str, challenge: &str| {
        app_behind_with(
            &door.socket,
            name,
            &[host],
            &format!(
                "https_listen = \"{https}\"\nacme_hosts = [{host:?}]\n\
                 acme_email = \"ops@example.com\"\nacme_directory = {:?}\n\
                 acme_challenge = {challenge:?}\nacme_ca_file = {:?}\n",
                pebble.directory(),
                pebble.ca_file().display().to_string(),
            ),
        )
    };
    let shop = app("shop", "shop.example.com", "http-01");
    let blog = app("blog", "blog.example.com", "tls-alpn-01");
    let shop_v1 = shop.deploy();
    let blog_v1 = blog.deploy();

    for (host, env) in [("shop.example.com", &shop), ("blog.example.com", &blog)] {
        let got = eventually(Duration::from_secs(60), || {
            crate::https::curl(host, https.port(), "/healthz", &root, false).ok()
        });
        assert!(
            got.is_some(),
            "no certificate for {host} from pebble within 60 s\nfront door:\n{}\ndaemon:\n{}",
            door.log_text(),
            std::fs::read_to_string(env.app().join(".flotilla/host/daemon.log"))
                .unwrap_or_default()
        );
    }
    crate::https::check_both_protocols("shop.example.com", https.port(), &root, &shop_v1);
    crate::https::check_both_protocols("blog.example.com", https.port(), &root, &blog_v1);
    // Each app keeps its own certificate and key, in its own state directory.
    for env in [&shop, &blog] {
        let acme = env.app().join(".flotilla/host/acme");
        assert!(acme.join("certificate.pem").is_file(), "{}", acme.display());
    }
    let certificate_of = |env: &HostEnv| {
        std::fs::read_to_string(env.app().join(".flotilla/host/acme/certificate.pem"))
            .expect("the app's certificate")
    };
    let (shop_cert, blog_cert) = (certificate_of(&shop), certificate_of(&blog));
    assert_ne!(shop_cert, blog_cert, "one certificate per app");
}
