//! Where tests put what they want a human to look at afterwards: `test-artifacts/` at the root of
//! the repository (ignored by git), or `$FLOTILLA_TEST_ARTIFACTS` when set.

use std::path::{Path, PathBuf};

use crate::error::BrowserError;

/// The artefact directory, created if missing.
pub fn artifacts_dir() -> Result<PathBuf, BrowserError> {
    let dir = match std::env::var_os("FLOTILLA_TEST_ARTIFACTS").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => repository_root().join("test-artifacts"),
    };
    std::fs::create_dir_all(&dir).map_err(|source| BrowserError::Io {
        action: "create artefact directory",
        path: dir.clone(),
        source,
    })?;
    Ok(dir)
}

/// The path of artefact `name` in [`artifacts_dir`].
pub fn artifact_path(name: &str) -> Result<PathBuf, BrowserError> {
    Ok(artifacts_dir()?.join(name))
}

/// The repository root: this crate lives in `crates/flotilla-browser`.
fn repository_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .nth(2)
        .map_or_else(|| manifest.to_path_buf(), Path::to_path_buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_repository_root_holds_the_workspace_manifest_and_the_client() {
        let root = repository_root();
        assert!(root.join("Cargo.toml").is_file(), "{}", root.display());
        assert!(
            root.join("client/flotilla-client.js").is_file(),
            "{}",
            root.display()
        );
    }
}
