//! The drain board: one small S3 object per deployment name holding every version's lifecycle
//! state, so that a thousand agents can learn that their version drains without a thousand
//! `GetParameter` calls every few seconds (see `docs/drain-signal.md` for the arithmetic).
//!
//! SSM stays the source of truth: the state store writes `/apps/<name>/<id>/state` first, then
//! [`publish`] copies that parameter's value into the board. The board is a fan-out cache that
//! agents read with conditional GETs (`If-None-Match` → `304 Not Modified`, no body), see
//! [`BoardDrainSource`].
//!
//! Ordering. Two writers (a CLI and the reaper Lambda, or two CLIs) may publish at once. A
//! publish reads the board (its ETag), *then* reads the state parameter, then writes the board
//! with `If-Match: <that ETag>` (`If-None-Match: *` when there is none yet), and starts again on
//! `412`/`409`. A write that succeeds therefore carries an SSM value read after every earlier
//! successful write of the board, so the board ends with the last value written to SSM: a change
//! is never lost, nor replaced by an older one. Each write also increments `generation`; an agent
//! ignores a board older than the last one it saw.
//!
//! Crash between the SSM write and the publish: every later `put` of that version's record
//! publishes again when the board's entry differs from the record (one plain GET per record
//! write), and every listing of the records ([`repair`]: each command, each reaper pass) publishes
//! whatever differs, so the board catches up even for a version nobody writes again.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;
use aws_sdk_s3::primitives::ByteStream;
use aws_smithy_runtime_api::client::result::SdkError;
use flotilla_agent::{DrainError, DrainErrorKind, DrainSource, Identity};
use flotilla_core::drain::Readiness;
use flotilla_core::lifecycle::VersionState;
use flotilla_core::{DeploymentId, DeploymentName, names};
use flotilla_engine::ports::{ErrorKind, PortError};
use serde::{Deserialize, Serialize};

use crate::agent_ssm::{SsmDrainSource, drain_kind, explain};
use crate::error::port_error;

/// The environment variable naming the bucket of the board in a task (and in the reaper).
pub const BUCKET_ENV: &str = flotilla_baseline::contract::env::DRAIN_BUCKET;

/// How many times a publish starts again after losing a race with another writer.
const PUBLISH_ROUNDS: usize = 8;

/// The board's key in its bucket: `drain/<name>.json` (the baseline's IAM policies name it).
pub fn board_key(name: &DeploymentName) -> String {
    flotilla_baseline::names::drain_board_key(name)
}

/// The board's content.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Board {
    /// Incremented by every write; agents ignore a board older than one they saw.
    pub generation: u64,
    /// Each version's state, as its SSM `state` parameter held it when published.
    pub versions: BTreeMap<DeploymentId, VersionState>,
}

impl Board {
    /// The board with `id`'s entry set to `state` (removed for `None`) and the next generation,
    /// or `None` when the entry already says so (nothing to write).
    pub fn with(&self, id: &DeploymentId, state: Option<VersionState>) -> Option<Board> {
        if self.versions.get(id).copied() == state {
            return None;
        }
        let mut next = self.clone();
        match state {
            Some(s) => next.versions.insert(id.clone(), s),
            None => next.versions.remove(id),
        };
        next.generation = self.generation.saturating_add(1);
        Some(next)
    }

    /// Parses a board as stored.
    pub fn parse(bytes: &[u8]) -> Result<Board, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("not a drain board ({e})"))
    }

    /// The board as stored.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a board always serialises")
    }
}

/// The HTTP status of a failed call, if a response came back.
fn status_of<E>(err: &SdkError<E, aws_smithy_runtime_api::http::Response>) -> Option<u16> {
    err.raw_response().map(|r| r.status().as_u16())
}

/// Whether a GET failed because the key does not exist (and not the bucket: a wrong bucket
/// must fail, not quietly send every task to SSM).
fn no_such_key(
    err: &SdkError<
        aws_sdk_s3::operation::get_object::GetObjectError,
        aws_smithy_runtime_api::http::Response,
    >,
) -> bool {
    status_of(err) == Some(404) && crate::error::code_of(err) == Some("NoSuchKey")
}

/// The board in `bucket` at `key` and its ETag, or `None` if there is none yet.
pub async fn read_board(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
) -> Result<Option<(String, Board)>, PortError> {
    const OP: &str = "read drain board";
    let resource = format!("s3://{bucket}/{key}");
    let out = match s3.get_object().bucket(bucket).key(key).send().await {
        Ok(out) => out,
        Err(err) if no_such_key(&err) => return Ok(None),
        Err(err) => return Err(port_error(OP, &resource, err)),
    };
    let etag = out.e_tag().unwrap_or_default().to_owned();
    let bytes = out
        .body
        .collect()
        .await
        .map_err(|e| PortError::new(ErrorKind::Transient, OP, &resource, e.to_string()))?
        .into_bytes();
    let board =
        Board::parse(&bytes).map_err(|m| PortError::new(ErrorKind::Invalid, OP, &resource, m))?;
    Ok(Some((etag, board)))
}

/// A version's state as its SSM parameter holds it now (`None` if there is none).
async fn ssm_state(
    ssm: &aws_sdk_ssm::Client,
    name: &DeploymentName,
    id: &DeploymentId,
) -> Result<Option<VersionState>, PortError> {
    let parameter = names::state_parameter(name, id);
    match ssm.get_parameter().name(&parameter).send().await {
        Ok(out) => match out.parameter().and_then(|p| p.value()) {
            Some(v) => v.trim().parse::<VersionState>().map(Some).map_err(|e| {
                PortError::new(ErrorKind::Invalid, "read state", &parameter, e.to_string())
            }),
            None => Ok(None),
        },
        Err(err) => {
            let err = port_error("read state", &parameter, err);
            if err.kind == ErrorKind::NotFound {
                Ok(None)
            } else {
                Err(err)
            }
        }
    }
}

/// Copies `id`'s SSM state into the board (see the module's note on ordering). `expected` is the
/// state the caller has just recorded: when the board already says it, nothing more is read or
/// written. Returns whether the board was written.
pub async fn publish(
    s3: &aws_sdk_s3::Client,
    ssm: &aws_sdk_ssm::Client,
    bucket: &str,
    name: &DeploymentName,
    id: &DeploymentId,
    expected: Option<VersionState>,
) -> Result<bool, PortError> {
    const OP: &str = "write drain board";
    let key = board_key(name);
    let resource = format!("s3://{bucket}/{key}");
    for _ in 0..PUBLISH_ROUNDS {
        let current = read_board(s3, bucket, &key).await?;
        let (etag, board) = match &current {
            Some((etag, board)) => (Some(etag.as_str()), board.clone()),
            None => (None, Board::default()),
        };
        if board.versions.get(id).copied() == expected {
            return Ok(false);
        }
        // Read after the board: see the module's note on ordering.
        let truth = ssm_state(ssm, name, id).await?;
        let Some(next) = board.with(id, truth) else {
            return Ok(false);
        };
        let mut put = s3
            .put_object()
            .bucket(bucket)
            .key(&key)
            .content_type("application/json")
            // Agents must never be served a cached copy by anything in between.
            .cache_control("no-cache")
            .body(ByteStream::from(next.to_bytes()));
        put = match etag {
            Some(etag) => put.if_match(etag),
            None => put.if_none_match("*"),
        };
        match put.send().await {
            Ok(_) => {
                tracing::debug!(%id, generation = next.generation, "drain board written");
                return Ok(true);
            }
            // 412: another writer got in first; 409: a concurrent conditional write is under
            // way. Read again and retry.
            Err(err) if matches!(status_of(&err), Some(412 | 409)) => {
                tracing::debug!(%id, "drain board changed under us; publishing again");
            }
            Err(err) => return Err(port_error(OP, &resource, err)),
        }
    }
    Err(PortError::new(
        ErrorKind::Conflict,
        OP,
        resource,
        "the board kept changing under this write; run the command again",
    ))
}

/// Brings the board in line with `recorded` (every version's state as just listed from SSM):
/// publishes each version whose entry differs, and each entry with no record (a delete whose
/// publish never ran). One GET when they agree. Returns how many versions were published.
///
/// This is what makes a publish that a crash cut short, of a version nobody writes again, reach
/// the agents: every listing of the records (each command, each reaper pass) repairs the board.
pub async fn repair(
    s3: &aws_sdk_s3::Client,
    ssm: &aws_sdk_ssm::Client,
    bucket: &str,
    name: &DeploymentName,
    recorded: &BTreeMap<DeploymentId, VersionState>,
) -> Result<usize, PortError> {
    let board = read_board(s3, bucket, &board_key(name))
        .await?
        .map(|(_, b)| b)
        .unwrap_or_default();
    let mut stale: Vec<(&DeploymentId, Option<VersionState>)> = recorded
        .iter()
        .filter(|(id, state)| board.versions.get(*id) != Some(*state))
        .map(|(id, state)| (id, Some(*state)))
        .collect();
    stale.extend(
        board
            .versions
            .keys()
            .filter(|id| !recorded.contains_key(*id))
            .map(|id| (id, None)),
    );
    let mut written = 0;
    for (id, state) in stale {
        if publish(s3, ssm, bucket, name, id, state).await? {
            written += 1;
        }
    }
    Ok(written)
}

/// The agent's drain source over the board: a conditional GET per poll (`304` when nothing
/// changed, the common case), falling back to the version's SSM parameter when the board has no
/// entry for it (no board yet, or a version recorded by a flotilla that did not publish one),
/// and when the board cannot be read at all (no route to S3, access denied, a wrong bucket, an
/// object that is not a board): SSM is the truth the board copies, so a task still learns that
/// its version drains and still reports readiness. That fallback is a call to SSM per task and
/// poll, today's pattern that SSM's quota cannot hold at scale, so it is reported:
/// [`DrainSource::degraded`] names the board's failure while it lasts (the health document's
/// `drain_source.degraded`, a warning in the log). When SSM fails too, the poll fails with both
/// errors. Readiness is written to SSM, as [`SsmDrainSource`] does.
#[derive(Debug)]
pub struct BoardDrainSource {
    s3: aws_sdk_s3::Client,
    ssm: SsmDrainSource,
    bucket: String,
    cache: Mutex<Option<(String, Board)>>,
    /// The board's failure at the last poll, while the state comes from SSM instead.
    failing: Mutex<Option<DrainError>>,
}

impl BoardDrainSource {
    /// A source reading `bucket`'s board with `s3`, falling back to and reporting through `ssm`.
    pub fn new(s3: aws_sdk_s3::Client, ssm: aws_sdk_ssm::Client, bucket: String) -> Self {
        BoardDrainSource {
            s3,
            ssm: SsmDrainSource::new(ssm),
            bucket,
            cache: Mutex::new(None),
            failing: Mutex::new(None),
        }
    }

    fn set_failing(&self, err: Option<DrainError>) {
        *self
            .failing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = err;
    }

    fn cached(&self) -> Option<(String, Board)> {
        self.cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn forget(&self) {
        *self
            .cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
    }

    /// Keeps `fresh` unless it is older than the cached board (a stale replica or cache
    /// answering after a newer board was seen); returns the board to act on.
    fn remember(&self, etag: String, fresh: Board) -> Board {
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match &*cache {
            Some((_, seen)) if seen.generation > fresh.generation => seen.clone(),
            _ => {
                *cache = Some((etag, fresh.clone()));
                fresh
            }
        }
    }

    /// The board of `name` now: the cached one on `304`, `None` when there is none.
    async fn board(&self, name: &DeploymentName) -> Result<Option<Board>, DrainError> {
        const OP: &str = "read drain board";
        let key = board_key(name);
        let resource = format!("s3://{}/{key}", self.bucket);
        let cached = self.cached();
        let mut get = self.s3.get_object().bucket(&self.bucket).key(&key);
        if let Some((etag, _)) = &cached {
            get = get.if_none_match(etag);
        }
        let out = match get.send().await {
            Ok(out) => out,
            Err(err) => {
                return match status_of(&err) {
                    Some(304) => Ok(cached.map(|(_, board)| board)),
                    _ if no_such_key(&err) => {
                        // Gone (deleted by hand): the next board starts its generations
                        // again, and must not be taken for an older one.
                        self.forget();
                        Ok(None)
                    }
                    _ => {
                        let err = port_error(OP, &resource, err);
                        Err(DrainError::new(
                            drain_kind(err.kind),
                            OP,
                            resource,
                            explain(err.message),
                        ))
                    }
                };
            }
        };
        let etag = out.e_tag().unwrap_or_default().to_owned();
        let bytes = out
            .body
            .collect()
            .await
            .map_err(|e| DrainError::new(DrainErrorKind::Transient, OP, &resource, e.to_string()))?
            .into_bytes();
        let board = Board::parse(&bytes)
            .map_err(|m| DrainError::new(DrainErrorKind::Permanent, OP, &resource, m))?;
        Ok(Some(self.remember(etag, board)))
    }
}

#[async_trait]
impl DrainSource for BoardDrainSource {
    fn describe(&self, who: &Identity) -> String {
        format!(
            "S3 s3://{}/{} (SSM {} when absent)",
            self.bucket,
            board_key(&who.name),
            names::state_parameter(&who.name, &who.id)
        )
    }

    async fn read_state(&self, who: &Identity) -> Result<Option<VersionState>, DrainError> {
        let board = match self.board(&who.name).await {
            Ok(board) => {
                self.set_failing(None);
                board
            }
            Err(board_err) => {
                self.set_failing(Some(board_err.clone()));
                return self
                    .ssm
                    .read_state(who)
                    .await
                    .map_err(|ssm_err| both_failed(&board_err, ssm_err));
            }
        };
        match board.and_then(|b| b.versions.get(&who.id).copied()) {
            Some(state) => Ok(Some(state)),
            None => self.ssm.read_state(who).await,
        }
    }

    async fn write_readiness(
        &self,
        who: &Identity,
        readiness: Readiness,
    ) -> Result<(), DrainError> {
        self.ssm.write_readiness(who, readiness).await
    }

    fn degraded(&self) -> Option<String> {
        self.failing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .as_ref()
            .map(|err| format!("{err}; reading the state from SSM instead, one call per task"))
    }
}

/// The error of a poll in which neither the board nor SSM could be read: SSM's (its kind decides
/// the back-off, since SSM is what the poll fell back to), naming the board's failure too.
fn both_failed(board: &DrainError, ssm: DrainError) -> DrainError {
    DrainError {
        message: format!("{} (the drain board failed first: {board})", ssm.message),
        ..ssm
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_board_changes_only_when_an_entry_does_and_counts_its_writes() {
        let a = DeploymentId::new("20261125-190633-k3x9").expect("valid");
        let b = DeploymentId::new("20261126-080000-abcd").expect("valid");
        let empty = Board::default();
        let one = empty
            .with(&a, Some(VersionState::Active))
            .expect("a new entry");
        assert_eq!(one.generation, 1);
        assert_eq!(one.with(&a, Some(VersionState::Active)), None, "unchanged");
        assert_eq!(empty.with(&a, None), None, "nothing to remove");
        let two = one.with(&b, Some(VersionState::Deploying)).expect("b");
        let drained = two
            .with(&a, Some(VersionState::Draining))
            .expect("a drains");
        assert_eq!(drained.generation, 3);
        assert_eq!(drained.versions[&b], VersionState::Deploying, "b untouched");
        let gone = drained.with(&a, None).expect("a removed");
        assert_eq!(gone.versions.len(), 1);
        assert_eq!(gone.generation, 4);
        // As stored: the states by their wire names.
        let text = String::from_utf8(drained.to_bytes()).expect("utf-8");
        assert_eq!(
            text,
            r#"{"generation":3,"versions":{"20261125-190633-k3x9":"draining","20261126-080000-abcd":"deploying"}}"#
        );
        assert_eq!(Board::parse(text.as_bytes()), Ok(drained));
        assert!(Board::parse(b"<html>").is_err());
    }

    #[test]
    fn when_board_and_ssm_both_fail_the_error_names_both_and_backs_off_as_ssm_says() {
        let board = DrainError::new(
            DrainErrorKind::Permanent,
            "read drain board",
            "s3://b/drain/shop.json",
            "AccessDenied",
        );
        let ssm = DrainError::new(
            DrainErrorKind::Throttled,
            "read drain state",
            "/apps/shop/20261125-190633-k3x9/state",
            "ThrottlingException",
        );
        let both = both_failed(&board, ssm);
        assert_eq!(both.kind, DrainErrorKind::Throttled);
        assert_eq!(
            both.to_string(),
            "read drain state /apps/shop/20261125-190633-k3x9/state: ThrottlingException (the \
             drain board failed first: read drain board s3://b/drain/shop.json: AccessDenied)"
        );
    }
}
