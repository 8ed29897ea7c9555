//! The cached outputs (`.flotilla/<name>/baseline.json`): reading, writing, refreshing from the
//! stack, and checking them against it ([`CacheCheck`]).

use std::path::PathBuf;

use super::*;

/// What [`BaselineStack::check_cache`] found, and what it did to the cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CacheCheck {
    /// The stack is complete and the cache, if any, already holds its outputs: whatever failed,
    /// the cache is not the cause.
    Matches,
    /// The stack is complete and the cache differed from its outputs: it now holds them.
    Refreshed,
    /// The stack is gone or holds no working baseline; its cache was removed.
    Unusable {
        /// The stack's status; `None` when there is no stack.
        status: Option<String>,
        /// Its phase ([`Phase::Missing`] when there is no stack).
        phase: Phase,
        /// The cache file removed, if there was one.
        removed: Option<PathBuf>,
    },
    /// An operation is running on the stack (or a failed update waits): the cache was left.
    Unsettled {
        /// The stack's status.
        status: String,
    },
}

impl BaselineStack {
    /// The cached outputs, if the file exists.
    pub fn cached(&self) -> Result<Option<flotilla_baseline::BaselineOutputs>, StackError> {
        let path = self.cache_path();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(StackError::Cache {
                    action: "read",
                    path,
                    source: e,
                });
            }
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| StackError::Cache {
                action: "parse",
                path,
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            })
    }

    /// Reads the outputs of a complete stack and caches them (what a CI job needs when
    /// `.flotilla/` is not checked in); `None` when there is no usable stack.
    pub async fn refresh_cache(
        &self,
    ) -> Result<Option<flotilla_baseline::BaselineOutputs>, StackError> {
        let Some(stack) = self.describe().await? else {
            return Ok(None);
        };
        if stack.phase() != Phase::Stable {
            return Ok(None);
        }
        let mut outputs = flotilla_baseline::BaselineOutputs::from_stack_outputs(
            stack.outputs.clone(),
        )
        .map_err(|source| StackError::Outputs {
            stack: self.stack_name.clone(),
            source,
        })?;
        // Records already cached here stay (they are not stack outputs).
        if let Ok(Some(old)) = self.cached() {
            outputs.certificate_validation_records = old.certificate_validation_records;
        }
        self.write_cache(&outputs)?;
        Ok(Some(outputs))
    }

    /// Checks the cached outputs against the stack, after something they name turned out not to
    /// exist: a complete stack's outputs replace a cache that differs; a stack that is gone or
    /// holds no working baseline (deleted, deleted part-way, never created) takes its cache with
    /// it; a stack in the middle of an operation leaves the cache alone.
    pub async fn check_cache(&self) -> Result<CacheCheck, StackError> {
        let stack = self.describe().await?;
        let phase = stack.as_ref().map_or(Phase::Missing, StackInfo::phase);
        let status = stack.as_ref().map(|s| s.status.clone());
        match status::cache_verdict(phase) {
            status::CacheVerdict::Keep => Ok(CacheCheck::Unsettled {
                status: status.unwrap_or_default(),
            }),
            status::CacheVerdict::Discard => Ok(CacheCheck::Unusable {
                status,
                phase,
                removed: self.remove_cache()?,
            }),
            status::CacheVerdict::Compare => {
                let Some(stack) = stack else {
                    return Ok(CacheCheck::Matches);
                };
                let mut fresh =
                    flotilla_baseline::BaselineOutputs::from_stack_outputs(stack.outputs.clone())
                        .map_err(|source| StackError::Outputs {
                        stack: self.stack_name.clone(),
                        source,
                    })?;
                // A cache that cannot be read differs, and is rewritten.
                let old = self.cached().ok().flatten();
                if let Some(old) = &old {
                    fresh.certificate_validation_records =
                        old.certificate_validation_records.clone();
                }
                if old.as_ref() == Some(&fresh) || !self.cache_path().exists() {
                    return Ok(CacheCheck::Matches);
                }
                self.write_cache(&fresh)?;
                Ok(CacheCheck::Refreshed)
            }
        }
    }

    pub(super) fn remove_cache(&self) -> Result<Option<PathBuf>, StackError> {
        let path = self.cache_path();
        match std::fs::remove_file(&path) {
            Ok(()) => {
                // The per-name directory goes too when nothing else is in it.
                if let Some(dir) = path.parent() {
                    let _ = std::fs::remove_dir(dir);
                }
                Ok(Some(path))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StackError::Cache {
                action: "remove",
                path,
                source: e,
            }),
        }
    }

    pub(super) fn write_cache(
        &self,
        outputs: &flotilla_baseline::BaselineOutputs,
    ) -> Result<(), StackError> {
        let path = self.cache_path();
        let io = |source| StackError::Cache {
            action: "write",
            path: path.clone(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
            crate::dot_flotilla::ignore(dir).map_err(io)?;
        }
        let text = serde_json::to_string_pretty(outputs)
            .map_err(|e| io(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
        // Write then rename, so a reader never sees half a file.
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, format!("{text}\n")).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)
    }
}
