//! Directories and files only their owner can read: the state directory holds each version's
//! environment (secrets included) and the logs hold whatever the app prints. Modes are set
//! explicitly, so they hold whatever the umask, and on directories and files an older flotilla
//! created with wider modes.

use std::fs::File;
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Creates `dir` (and any missing parents, also 0700) and makes it 0700. Inside a `.flotilla`
/// directory, also writes its `.gitignore` (see [`ignore_dot_flotilla`]).
pub fn private_dir(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    ignore_dot_flotilla(dir)
}

/// Writes `.gitignore` with `*` into the nearest directory named `.flotilla` that holds `dir`
/// (or is `dir`), unless one is there already: the state, logs and cached outputs kept there
/// are this machine's and must not be committed with the app. A `.gitignore` the user wrote is
/// left alone.
pub fn ignore_dot_flotilla(dir: &Path) -> io::Result<()> {
    let Some(top) = dir
        .ancestors()
        .find(|a| a.file_name() == Some(std::ffi::OsStr::new(".flotilla")))
    else {
        return Ok(());
    };
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(top.join(".gitignore"))
    {
        Ok(mut file) => io::Write::write_all(&mut file, b"*\n"),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
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

    #[test]
    fn the_dot_flotilla_directory_ignores_itself_and_a_users_gitignore_stays() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let state = tmp.path().join(".flotilla/host");
        private_dir(&state).expect("create");
        let ignore = tmp.path().join(".flotilla/.gitignore");
        assert_eq!(std::fs::read_to_string(&ignore).expect("written"), "*\n");
        assert!(!state.join(".gitignore").exists());

        std::fs::write(&ignore, "host/\n").expect("write");
        private_dir(&state.join("logs")).expect("create");
        assert_eq!(std::fs::read_to_string(&ignore).expect("read"), "host/\n");

        // A state directory outside any `.flotilla` gets nothing.
        let elsewhere = tmp.path().join("state");
        private_dir(&elsewhere).expect("create");
        assert!(!elsewhere.join(".gitignore").exists());
        assert!(!tmp.path().join(".gitignore").exists());
    }
}
