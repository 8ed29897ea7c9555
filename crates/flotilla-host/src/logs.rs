//! Reading instance logs for `flotilla logs [ID] [--follow]`: the files the supervisor writes under
//! `<state_dir>/logs/<id>/<instance>.log`, read directly (no daemon needed), each line paired with
//! its instance. The caller prints; this module only reads.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use flotilla_core::DeploymentId;

use crate::error::HostError;
use crate::release::tail_lines;

/// The newest version that has logs, if any (ids sort by creation time).
pub fn latest_with_logs(logs_dir: &Path) -> Option<DeploymentId> {
    let rd = std::fs::read_dir(logs_dir).ok()?;
    rd.flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter_map(|n| DeploymentId::new(&n).ok())
        .max()
}

/// Follows the log files of one version: first the last lines, then whatever is appended.
pub struct LogReader {
    dir: PathBuf,
    offsets: BTreeMap<String, u64>,
}

impl LogReader {
    /// A reader of `id`'s logs under `logs_dir`. Fails if the version has no logs.
    pub fn open(logs_dir: &Path, id: &DeploymentId) -> Result<LogReader, HostError> {
        let dir = logs_dir.join(id.as_str());
        if !dir.is_dir() {
            return Err(HostError::Io {
                operation: "read logs in",
                path: dir,
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "this version has no logs (was it deployed on this host?)",
                ),
            });
        }
        Ok(LogReader {
            dir,
            offsets: BTreeMap::new(),
        })
    }

    fn files(&self) -> Vec<(String, PathBuf)> {
        let mut files: Vec<(String, PathBuf)> = std::fs::read_dir(&self.dir)
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| {
                        let path = e.path();
                        let instance = path.file_stem()?.to_str()?.to_owned();
                        (path.extension()? == "log").then_some((instance, path))
                    })
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files
    }

    /// The last `lines` lines of each instance's log, as `(instance, line)`, and remembers where
    /// each file ends for [`LogReader::poll`].
    pub fn tail(&mut self, lines: usize) -> Result<Vec<(String, String)>, HostError> {
        let mut out = Vec::new();
        for (instance, path) in self.files() {
            let bytes = std::fs::read(&path).map_err(HostError::io("read log", &path))?;
            self.offsets.insert(instance.clone(), bytes.len() as u64);
            let text = String::from_utf8_lossy(&bytes);
            out.extend(
                tail_lines(&text, lines)
                    .into_iter()
                    .map(|l| (instance.clone(), l)),
            );
        }
        Ok(out)
    }

    /// Complete lines appended since the last call (new instances' logs from their start).
    pub fn poll(&mut self) -> Result<Vec<(String, String)>, HostError> {
        let mut out = Vec::new();
        for (instance, path) in self.files() {
            let offset = self.offsets.get(&instance).copied().unwrap_or(0);
            let mut file = std::fs::File::open(&path).map_err(HostError::io("open log", &path))?;
            let len = file
                .metadata()
                .map_err(HostError::io("read log", &path))?
                .len();
            let start = if len < offset { 0 } else { offset };
            file.seek(SeekFrom::Start(start))
                .map_err(HostError::io("read log", &path))?;
            let mut buf = Vec::new();
            file.read_to_end(&mut buf)
                .map_err(HostError::io("read log", &path))?;
            // Only whole lines; a partial last line waits for its newline.
            let complete = buf.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            self.offsets
                .insert(instance.clone(), start + complete as u64);
            let text = String::from_utf8_lossy(&buf[..complete]);
            out.extend(text.lines().map(|l| (instance.clone(), l.to_owned())));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_core::Timestamp;
    use std::io::Write;

    #[test]
    fn tails_then_follows_appended_lines() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let id = DeploymentId::generate(Timestamp::from_secs(1_764_000_000), 1);
        let dir = tmp.path().join(id.as_str());
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("i1.log"), "a\nb\nc\n").expect("write");
        assert_eq!(latest_with_logs(tmp.path()), Some(id.clone()));
        let mut r = LogReader::open(tmp.path(), &id).expect("open");
        let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
                .collect()
        };
        assert_eq!(r.tail(2).expect("tail"), pairs(&[("i1", "b"), ("i1", "c")]));
        assert!(r.poll().expect("poll").is_empty());
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.join("i1.log"))
            .expect("open");
        write!(f, "d\npartial").expect("write");
        std::fs::write(dir.join("i2.log"), "x\n").expect("write");
        assert_eq!(r.poll().expect("poll"), pairs(&[("i1", "d"), ("i2", "x")]));
        writeln!(f, " line").expect("write");
        assert_eq!(r.poll().expect("poll"), pairs(&[("i1", "partial line")]));
        let missing = DeploymentId::generate(Timestamp::from_secs(1_764_000_000), 2);
        assert!(LogReader::open(tmp.path(), &missing).is_err());
    }
}
