//! The router's access log (`[host] access_log`): one JSON line per response, off by default,
//! written by its own thread and rotated by size.
//!
//! The request path only formats the line and offers it to a bounded queue; when the writer
//! falls behind (a slow disk), lines are dropped and counted rather than slowing requests down,
//! and the log says how many, at most once every few seconds.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use flotilla_core::time::Timestamp;
use flotilla_proxy::{AccessEntry, AccessLog, WarnLimiter};
use serde::{Deserialize, Serialize};

/// Lines waiting for the writer before new ones are dropped.
const QUEUE: usize = 16 * 1024;

/// Where and how much the access log keeps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessLogSettings {
    /// The file lines are appended to; rotated ones get `.1`, `.2`, ... (`.1` the newest).
    pub path: PathBuf,
    /// The size at which the file is rotated.
    pub max_bytes: u64,
    /// Rotated files kept besides the current one.
    pub keep: u32,
}

/// An [`AccessLog`] writing JSON lines through a background thread.
pub struct JsonLines {
    app: String,
    queue: SyncSender<String>,
    dropped: AtomicU64,
    warn: Mutex<WarnLimiter>,
}

impl JsonLines {
    /// Opens (appending, owner-only) the log for `app` and starts its writer thread, which ends
    /// once every clone of the returned log is dropped, after writing what is queued.
    pub fn start(app: &str, settings: &AccessLogSettings) -> std::io::Result<JsonLines> {
        if let Some(dir) = settings.path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)?;
        }
        let file = crate::private::private_append(&settings.path)?;
        let size = file.metadata()?.len();
        let (queue, lines) = std::sync::mpsc::sync_channel(QUEUE);
        let settings = settings.clone();
        std::thread::Builder::new()
            .name("flotilla-access-log".to_owned())
            .spawn(move || write_lines(lines, file, size, &settings))?;
        Ok(JsonLines {
            app: app.to_owned(),
            queue,
            dropped: AtomicU64::new(0),
            warn: Mutex::new(WarnLimiter::new(Duration::from_secs(5))),
        })
    }
}

impl AccessLog for JsonLines {
    fn record(&self, entry: &AccessEntry<'_>) {
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let line = format_line(&self.app, unix_ms, entry);
        if let Err(TrySendError::Full(_)) = self.queue.try_send(line) {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            let allowed = self
                .warn
                .lock()
                .map(|mut w| w.hit(Instant::now()).is_some())
                .unwrap_or(false);
            if allowed {
                tracing::warn!(
                    dropped,
                    "the access log cannot keep up with requests; dropping lines (`dropped`: \
                     since the daemon started)"
                );
            }
        }
    }
}

/// One access log line (without its newline): the app, the time, the client, the request, the
/// status, the version that served it and the time to the response head.
pub fn format_line(app: &str, unix_ms: u64, entry: &AccessEntry<'_>) -> String {
    serde_json::json!({
        "time": Timestamp::from_millis(unix_ms).to_string(),
        "unix_ms": unix_ms,
        "app": app,
        "client": entry.peer.ip().to_string(),
        "method": entry.method.as_str(),
        "host": entry.host,
        "path": entry.path,
        "protocol": format!("{:?}", entry.http_version),
        "status": entry.status,
        "version": entry.deployment,
        "head_ms": (entry.head_time.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0,
        "upgrade": entry.upgrade,
    })
    .to_string()
}

/// The renames that rotate `path` keeping `keep` old files, in the order to do them: the oldest
/// first, so nothing is overwritten that is still wanted (`path.keep` is overwritten, which drops
/// the oldest).
pub fn rotation(path: &Path, keep: u32) -> Vec<(PathBuf, PathBuf)> {
    let numbered = |n: u32| {
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    };
    let mut renames: Vec<(PathBuf, PathBuf)> = (1..keep)
        .rev()
        .map(|n| (numbered(n), numbered(n + 1)))
        .collect();
    if keep > 0 {
        renames.push((path.to_owned(), numbered(1)));
    }
    renames
}

fn write_lines(lines: Receiver<String>, file: File, mut size: u64, settings: &AccessLogSettings) {
    let mut out = BufWriter::with_capacity(64 * 1024, file);
    let mut failing = WarnLimiter::new(Duration::from_secs(30));
    loop {
        let line = match lines.recv_timeout(Duration::from_secs(1)) {
            Ok(line) => line,
            Err(RecvTimeoutError::Timeout) => {
                let _ = out.flush();
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        if let Err(err) = writeln!(out, "{line}") {
            if failing.hit(Instant::now()).is_some() {
                tracing::warn!(error = %err, path = %settings.path.display(), "cannot write the access log");
            }
            continue;
        }
        size += line.len() as u64 + 1;
        if size >= settings.max_bytes {
            match rotate(out, settings) {
                Ok(file) => {
                    out = BufWriter::with_capacity(64 * 1024, file);
                    size = 0;
                }
                Err(err) => {
                    tracing::error!(error = %err, path = %settings.path.display(), "cannot rotate the access log; it is no longer written");
                    return;
                }
            }
        }
    }
    let _ = out.flush();
}

/// Flushes and closes the current file, renames the old ones along, and opens a fresh one.
fn rotate(mut out: BufWriter<File>, settings: &AccessLogSettings) -> std::io::Result<File> {
    out.flush()?;
    drop(out);
    for (from, to) in rotation(&settings.path, settings.keep) {
        match std::fs::rename(&from, &to) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    if settings.keep == 0 {
        std::fs::remove_file(&settings.path)?;
    }
    crate::private::private_append(&settings.path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Method, Version};

    fn entry<'a>(method: &'a Method) -> AccessEntry<'a> {
        AccessEntry {
            peer: "203.0.113.9:52000".parse().expect("addr"),
            method,
            host: Some("shop.example"),
            path: "/cart",
            http_version: Version::HTTP_11,
            status: 200,
            deployment: Some("20261207-120000-abcd"),
            head_time: Duration::from_micros(1_534),
            upgrade: false,
        }
    }

    #[test]
    fn a_line_is_one_json_object_with_every_field() {
        let get = Method::GET;
        let line = format_line("shop", 1_765_112_400_123, &entry(&get));
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).expect("JSON");
        assert_eq!(v["app"], "shop");
        assert_eq!(v["unix_ms"], 1_765_112_400_123u64);
        assert_eq!(v["client"], "203.0.113.9");
        assert_eq!(v["method"], "GET");
        assert_eq!(v["host"], "shop.example");
        assert_eq!(v["path"], "/cart");
        assert_eq!(v["protocol"], "HTTP/1.1");
        assert_eq!(v["status"], 200);
        assert_eq!(v["version"], "20261207-120000-abcd");
        assert_eq!(v["head_ms"], 1.534);
        assert_eq!(v["upgrade"], false);
        assert!(v["time"].as_str().expect("time").starts_with("2025-12-07T"));
    }

    #[test]
    fn rotation_shifts_the_old_files_oldest_first() {
        let p = Path::new("/var/log/a.jsonl");
        let names = |renames: Vec<(PathBuf, PathBuf)>| {
            renames
                .into_iter()
                .map(|(a, b)| format!("{} -> {}", a.display(), b.display()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(rotation(p, 3)),
            vec![
                "/var/log/a.jsonl.2 -> /var/log/a.jsonl.3",
                "/var/log/a.jsonl.1 -> /var/log/a.jsonl.2",
                "/var/log/a.jsonl -> /var/log/a.jsonl.1",
            ]
        );
        assert_eq!(
            names(rotation(p, 1)),
            vec!["/var/log/a.jsonl -> /var/log/a.jsonl.1"]
        );
        assert!(rotation(p, 0).is_empty());
    }

    #[test]
    fn the_writer_rotates_by_size_and_keeps_what_it_is_told() {
        let dir = tempfile::tempdir().expect("tempdir");
        let settings = AccessLogSettings {
            path: dir.path().join("logs/access.jsonl"),
            max_bytes: 2_000,
            keep: 2,
        };
        let log = JsonLines::start("shop", &settings).expect("start");
        let get = Method::GET;
        for _ in 0..40 {
            log.record(&entry(&get));
        }
        drop(log);
        // The writer ends once the log is dropped, on its own thread: wait until its files stop
        // changing (a read between a rotation's rename and the new file would see one missing).
        let read_all = || -> Option<Vec<(String, String)>> {
            let mut files = Vec::new();
            for entry in std::fs::read_dir(dir.path().join("logs")).ok()? {
                let name = entry.ok()?.file_name().to_string_lossy().into_owned();
                let text = std::fs::read_to_string(dir.path().join("logs").join(&name)).ok()?;
                files.push((name, text));
            }
            files.sort();
            Some(files)
        };
        let files = flotilla_testkit::wait::eventually(Duration::from_secs(5), || {
            let before = read_all()?;
            std::thread::sleep(Duration::from_millis(50));
            (before.len() == 3 && read_all()? == before).then_some(before)
        })
        .expect("rotated files");
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["access.jsonl", "access.jsonl.1", "access.jsonl.2"]);
        let mut lines = 0;
        for (name, text) in &files {
            for line in text.lines() {
                serde_json::from_str::<serde_json::Value>(line).expect("each line is JSON");
                lines += 1;
            }
            assert!(text.len() <= 2_000 + 300, "{name} is {} bytes", text.len());
        }
        // The oldest lines rotated out; those kept are whole.
        assert!(lines > 0 && lines < 40, "{lines}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&settings.path)
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
