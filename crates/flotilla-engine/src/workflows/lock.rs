//! The deploy lock: taken, kept and released around every workflow that changes something.

use flotilla_core::Timestamp;

use crate::error::EngineError;
use crate::events::Progress;
use crate::ports::{LockInfo, LockOutcome};

use super::Engine;
use super::common::note;

impl Engine {
    /// Takes the deploy lock; returns when it was taken. A lock whose holder ran on this host and
    /// no longer runs (a CLI killed with `kill -9`) is broken, with a note saying whose it was.
    pub(super) async fn lock(
        &self,
        force: bool,
        progress: &dyn Progress,
    ) -> Result<Timestamp, EngineError> {
        let now = self.now();
        match self.acquire(now, force).await? {
            LockOutcome::Acquired => Ok(now),
            LockOutcome::Held(lock) if self.holder_is_gone(&lock) => {
                match self.acquire(now, true).await? {
                    LockOutcome::Acquired => {
                        note(
                            progress,
                            format!(
                                "broke the deploy lock of {}: that process no longer runs",
                                lock.owner
                            ),
                        );
                        Ok(now)
                    }
                    LockOutcome::Held(lock) => Err(EngineError::LockHeld {
                        name: self.settings.name.clone(),
                        lock,
                    }),
                }
            }
            LockOutcome::Held(lock) => Err(EngineError::LockHeld {
                name: self.settings.name.clone(),
                lock,
            }),
        }
    }

    fn holder_is_gone(&self, lock: &LockInfo) -> bool {
        self.settings.local_holders.as_ref().is_some_and(|local| {
            flotilla_core::lock::holder_is_gone(&lock.owner, &local.host, local.alive)
        })
    }

    pub(super) async fn acquire(
        &self,
        now: Timestamp,
        force: bool,
    ) -> Result<LockOutcome, EngineError> {
        self.ports
            .state
            .acquire_lock(
                &self.settings.lock_owner,
                now,
                self.settings.lock_ttl,
                force,
            )
            .await
            .map_err(EngineError::port(format!(
                "taking the deploy lock of `{}`",
                self.settings.name
            )))
    }

    /// Renews the lock once a third of its lifetime has passed since `lease`, so a long deploy
    /// does not lose it; fails if someone else took it over meanwhile.
    pub(super) async fn keep_lock(&self, lease: &mut Timestamp) -> Result<(), EngineError> {
        let now = self.now();
        if now.since(*lease) < self.settings.lock_ttl / 3 {
            return Ok(());
        }
        match self.acquire(now, false).await? {
            LockOutcome::Acquired => {
                *lease = now;
                Ok(())
            }
            LockOutcome::Held(lock) => Err(EngineError::LockHeld {
                name: self.settings.name.clone(),
                lock,
            }),
        }
    }

    /// Releases the lock. A failure only delays the next operation until the lock lapses, so it is
    /// reported, not returned.
    pub(super) async fn unlock(&self, progress: &dyn Progress) {
        if let Err(e) = self
            .ports
            .state
            .release_lock(&self.settings.lock_owner)
            .await
        {
            note(
                progress,
                format!(
                    "could not release the deploy lock ({e}); it lapses by itself within {}s",
                    self.settings.lock_ttl.as_secs()
                ),
            );
        }
    }
}
