//! Live processes read from `/proc` (Linux): which ones run inside a directory, and which of those
//! name a deployment in their environment.

use std::path::Path;

/// Whether `pid` is a live process: it exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rfind(')')
                .is_some_and(|i| !s[i + 1..].trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Every live process whose working directory is `root` or inside it. `root` must be canonical
/// (the kernel reports canonical paths). Empty when `/proc` cannot be read.
pub fn processes_under(root: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(root))
                && alive(*pid)
        })
        .collect()
}

/// Those of `pids` whose environment holds `FLOTILLA_DEPLOYMENT_ID=<id>`: the instances of
/// version `id`.
pub fn running_version(pids: Vec<u32>, id: &str) -> Vec<u32> {
    let want = format!("FLOTILLA_DEPLOYMENT_ID={id}");
    pids.into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|e| e.split(|b| *b == 0).any(|v| v == want.as_bytes()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn finds_a_child_by_directory_and_environment_and_sees_it_end() {
        let dir = std::env::temp_dir().join(format!("flotilla-testkit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let root = dir.canonicalize().expect("canonical");
        let mut child = Command::new("sleep")
            .arg("30")
            .current_dir(&root)
            .env("FLOTILLA_DEPLOYMENT_ID", "20261125-190633-k3x9")
            .spawn()
            .expect("sleep runs");
        let pid = child.id();
        // Between fork and exec the child already has its working directory but still the
        // parent's environment; inside exec, the kernel names the new program before it records
        // where the new environment lies (/proc shows none meanwhile). On a loaded machine both
        // windows are long enough to observe: wait until /proc shows the child's own environment.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while running_version(vec![pid], "20261125-190633-k3x9").is_empty()
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let under = processes_under(&root);
        if under != vec![pid] {
            child.kill().ok();
            child.wait().ok();
        }
        assert_eq!(under, vec![pid]);
        assert_eq!(
            running_version(under.clone(), "20261125-190633-k3x9"),
            vec![pid]
        );
        assert!(running_version(under, "20261125-190633-zzzz").is_empty());
        child.kill().expect("kill");
        child.wait().expect("reaped");
        assert!(!alive(pid));
        assert!(processes_under(&root).is_empty());
        std::fs::remove_dir_all(&dir).ok();
    }
}
