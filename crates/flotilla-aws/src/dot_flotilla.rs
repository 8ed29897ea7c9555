//! The `.flotilla/` directory in the app directory: this machine's files (the cached baseline
//! outputs, build logs), kept out of the app's repository.

use std::path::Path;

/// Writes `.gitignore` with `*` into the nearest directory named `.flotilla` that holds `dir`,
/// unless one is there: the cached outputs are this machine's view of the stack and are not
/// committed with the app (a CI job reads them from the stack). A user's own file is left alone.
pub(crate) fn ignore(dir: &Path) -> std::io::Result<()> {
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
        Ok(mut file) => std::io::Write::write_all(&mut file, b"*\n"),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}
