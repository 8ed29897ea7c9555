//! Directories and files only their owner can read: the state directory holds each version's
//! environment (secrets included) and the logs hold whatever the app prints. Modes are set
//! explicitly, so they hold whatever the umask, and on directories and files an older flotilla
//! created with wider modes.

use std::fs::File;
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Creates `dir` (and any missing parents, also 0700) and makes it 0700.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Opens `path` for appending, creating it, and makes it 0600.
pub fn private_append(path: &Path) -> io::Result<File> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(file)
}

/// Creates (or truncates) `path` for writing and makes it 0600.
pub fn private_create(path: &Path) -> io::Result<File> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).expect("stat").permissions().mode() & 0o777
    }

    #[test]
    fn modes_are_owner_only_under_umask_022_and_fix_wider_existing_ones() {
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
        let tmp = tempfile::tempdir().expect("tempdir");

        let state = tmp.path().join(".flotilla/host");
        private_dir(&state).expect("create");
        assert_eq!(mode(&state), 0o700);
        assert_eq!(mode(&tmp.path().join(".flotilla")), 0o700);

        // A directory and a log an older flotilla created 0755 / 0644.
        let logs = state.join("logs");
        std::fs::create_dir(&logs).expect("mkdir");
        std::fs::set_permissions(&logs, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let log = logs.join("i1.log");
        std::fs::write(&log, "old\n").expect("write");
        std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        private_dir(&logs).expect("existing");
        let _ = private_append(&log).expect("append");
        assert_eq!((mode(&logs), mode(&log)), (0o700, 0o600));
        assert_eq!(std::fs::read_to_string(&log).expect("read"), "old\n");

        let fresh = logs.join("build.log");
        let _ = private_create(&fresh).expect("create");
        let _ = private_append(&logs.join("new.log")).expect("append");
        assert_eq!(mode(&fresh), 0o600);
        assert_eq!(mode(&logs.join("new.log")), 0o600);
        nix::sys::stat::umask(old);
    }
}
