//! Canary: a new version given a growing share of fresh sessions, judged against the current
//! version over the same windows, then promoted or rolled back.
//!
//! `deploy_canary` brings the new version up exactly as a deploy does, but switches only the
//! plan's first share of fresh sessions to it and records the canary on its record
//! ([`CanaryRecord`]); the current version (the *baseline*) stays active. From then on
//! [`Engine::canary_tick`], run on a timer by whatever outlives the CLI (the host daemon, the AWS
//! reaper Lambda), measures both versions over each window through
//! [`crate::ports::Compute::window`] (counter deltas on the host, CloudWatch on AWS), judges it with
//! `flotilla_core::canary`, and steps, extends, promotes or rolls back. Every decision is recorded
//! before it is carried out, and every tick first brings the routing in line with the record, so
//! a tick that died half-way is finished by the next one.
//!
//! Pinned sessions never move: only the default forward's weights change. A promotion drains the
//! baseline; a rollback drains the canary; both are retired by the reaper as any draining version.

use std::collections::BTreeMap;

use flotilla_core::canary::{self, CanaryPlan, Counters, Next, Outcome, WindowStats};
use flotilla_core::routing::{RoutingTable, WeightedTarget};
use flotilla_core::{DeploymentId, Timestamp, VersionState};
use serde::{Deserialize, Serialize};

use crate::error::EngineError;
use crate::events::Progress;
use crate::ports::{CanaryMarks, CanaryRecord, Judgement, LockOutcome, VersionRecord};

use super::Engine;
use super::common::{note, refused, step};
use super::deploy::{DeployOutcome, DeployRequest};
use super::rollback::RollbackOutcome;

/// What one [`Engine::canary_tick`] did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "tick", rename_all = "snake_case")]
pub enum CanaryTick {
    /// No canary is running.
    Idle,
    /// Someone else holds the deploy lock; the next tick tries again.
    Locked,
    /// The first window began (both versions' counters were read).
    Started {
        /// The canary.
        id: DeploymentId,
    },
    /// The step's pause runs until `until`.
    Waiting {
        /// The canary.
        id: DeploymentId,
        /// When the window is judged.
        until: Timestamp,
    },
    /// The canary passed and now gets `percent` of fresh sessions.
    Stepped {
        /// The canary.
        id: DeploymentId,
        /// Its new share.
        percent: u8,
    },
    /// Too little traffic reached it; the step runs another pause.
    Extended {
        /// The canary.
        id: DeploymentId,
    },
    /// It ended this way (decided now, or earlier and finished now).
    Ended {
        /// The canary.
        id: DeploymentId,
        /// How.
        outcome: Outcome,
    },
}

/// The weights of a running canary's default forward.
fn forward(baseline: &DeploymentId, id: &DeploymentId, percent: u8) -> Vec<WeightedTarget> {
    let (old, new) = canary::weights(percent);
    vec![
        WeightedTarget {
            id: baseline.clone(),
            weight: old,
        },
        WeightedTarget {
            id: id.clone(),
            weight: new,
        },
    ]
}

/// The canary a tick, `promote` or `rollback` acts on: one whose outcome is decided but not
/// carried out, or a running one that takes fresh traffic (a canary whose deploy has not switched
/// any traffic yet belongs to that deploy).
pub(super) fn live_canary(records: &[VersionRecord], table: &RoutingTable) -> Option<usize> {
    records.iter().position(|r| {
        r.canary
            .as_ref()
            .is_some_and(|c| !c.settled && (c.outcome.is_some() || table.in_default(&r.version.id)))
    })
}

impl Engine {
    /// Deploys `request` as a canary of the current version under `plan`: like
    /// [`Engine::deploy`], but fresh sessions are only split (the plan's first step), the current
    /// version stays active, and the canary is recorded for [`Engine::canary_tick`] to drive.
    /// Refused without a current version to judge against, or while another canary runs.
    pub async fn deploy_canary(
        &self,
        request: DeployRequest,
        plan: CanaryPlan,
        progress: &dyn Progress,
    ) -> Result<DeployOutcome, EngineError> {
        if let Err(e) = plan.validate() {
            return refused(e.to_string(), "fix the [canary] section of flotilla.toml");
        }
        self.deploy_with(request, Some(plan), progress).await
    }

    /// One step of the running canary, if any: finish a decided outcome, start the first window,
    /// or judge the window whose pause has passed and act on the verdict. Takes the deploy lock
    /// only when a canary exists, and skips the tick (`Locked`) when someone else holds it.
    pub async fn canary_tick(&self, progress: &dyn Progress) -> Result<CanaryTick, EngineError> {
        let records = self.records().await?;
        if !records
            .iter()
            .any(|r| r.canary.as_ref().is_some_and(|c| !c.settled))
        {
            return Ok(CanaryTick::Idle);
        }
        if let LockOutcome::Held(_) = self.acquire(self.now(), false).await? {
            return Ok(CanaryTick::Locked);
        }
        let result = self.canary_tick_locked(progress).await;
        self.unlock(progress).await;
        result
    }

    /// Promotes the running canary by hand: all fresh sessions to it, the baseline drains.
    pub async fn promote(&self, progress: &dyn Progress) -> Result<CanaryTick, EngineError> {
        self.lock(false, progress).await?;
        let result = self
            .decide_by_hand(Outcome::Promoted { by_hand: true }, progress)
            .await;
        self.unlock(progress).await;
        result
    }

    /// Rolls the running canary back by hand (what `rollback` does during a canary): fresh
    /// sessions back to the baseline, the canary drains. `Ok(None)` when no canary runs.
    pub(super) async fn abort_canary(
        &self,
        target: Option<&DeploymentId>,
        progress: &dyn Progress,
    ) -> Result<Option<RollbackOutcome>, EngineError> {
        let records = self.records().await?;
        let table = self.routing().await?;
        let Some(pos) = live_canary(&records, &table) else {
            return Ok(None);
        };
        let id = records[pos].version.id.clone();
        let baseline = records[pos]
            .canary
            .as_ref()
            .map(|c| c.baseline.clone())
            .expect("live_canary finds records with a canary");
        if let Some(target) = target.filter(|t| **t != baseline) {
            return refused(
                format!(
                    "a canary of {id} against {baseline} is running; rolling back to {target} would skip it"
                ),
                format!(
                    "run `flotilla rollback` without a version to end the canary (fresh sessions go back to {baseline}), then roll back further"
                ),
            );
        }
        let outcome = Outcome::RolledBack {
            failures: Vec::new(),
            by_hand: true,
        };
        self.decide_by_hand(outcome, progress).await?;
        Ok(Some(RollbackOutcome {
            active: baseline,
            draining: Some(id),
        }))
    }

    async fn decide_by_hand(
        &self,
        outcome: Outcome,
        progress: &dyn Progress,
    ) -> Result<CanaryTick, EngineError> {
        let mut records = self.records().await?;
        let table = self.routing().await?;
        let Some(pos) = live_canary(&records, &table) else {
            return refused(
                format!("no canary of `{}` is running", self.settings.name),
                "start one with `flotilla deploy --canary`",
            );
        };
        let mut record = records[pos].clone();
        let canary = record.canary.as_mut().expect("live_canary checked it");
        if canary.outcome.is_none() {
            canary.outcome = Some(outcome);
            self.put(&record, progress, "recording how the canary ends")
                .await?;
            records[pos] = record;
        }
        self.settle(&mut records, pos, progress).await
    }

    async fn canary_tick_locked(&self, progress: &dyn Progress) -> Result<CanaryTick, EngineError> {
        let mut records = self.records().await?;
        let table = self.routing().await?;
        let Some(pos) = live_canary(&records, &table) else {
            return Ok(CanaryTick::Idle);
        };
        let id = records[pos].version.id.clone();
        let mut canary = *records[pos].canary.clone().expect("live_canary checked it");
        if canary.outcome.is_some() {
            return self.settle(&mut records, pos, progress).await;
        }
        if records[pos].version.state == VersionState::Deploying {
            // Its deploy died after switching the first share to it.
            note(
                progress,
                format!("finishing the interrupted canary deploy of {id}"),
            );
            self.record_state(&mut records[pos], VersionState::Active, progress)
                .await?;
        }
        // A tick that died between recording a step and setting its weights is finished here.
        let want = forward(&canary.baseline, &id, canary.percent);
        if table.default_targets() != want.as_slice() {
            self.set_forward(&id, &want, progress).await?;
        }
        let now = self.now();
        let Some(marks) = canary.marks.clone() else {
            canary.marks = Some(self.marks(&id, &canary.baseline, now).await?);
            canary.state.since = now;
            self.put_canary(&mut records[pos], canary, progress).await?;
            return Ok(CanaryTick::Started { id });
        };
        let due = canary.state.since.plus(canary.plan.pause);
        if now < due {
            return Ok(CanaryTick::Waiting { id, until: due });
        }
        let from = marks.at.unwrap_or(canary.state.since);
        let (canary_window, baseline_window, current) = self
            .measure(&id, &canary.baseline, &marks, from, now)
            .await?;
        let verdict = canary::judge(&canary_window, &baseline_window, &canary.plan.thresholds);
        let next = canary::next(&canary.plan, &canary.state, now, Some(&verdict));
        canary.last = Some(Judgement {
            at: now,
            step: canary.state.step,
            canary: canary_window,
            baseline: baseline_window,
            verdict,
        });
        match next {
            Next::Wait { until } => Ok(CanaryTick::Waiting { id, until }),
            Next::Step { percent, state } => {
                canary.percent = percent;
                canary.state = state;
                canary.marks = Some(current);
                let want = forward(&canary.baseline, &id, percent);
                self.put_canary(&mut records[pos], canary, progress).await?;
                self.set_forward(&id, &want, progress).await?;
                Ok(CanaryTick::Stepped { id, percent })
            }
            Next::Extend { state } => {
                // The window goes on: the marks stay, so the extension adds to what was counted.
                canary.state = state;
                self.put_canary(&mut records[pos], canary, progress).await?;
                note(
                    progress,
                    format!(
                        "too few requests reached the canary {id}: its step runs another pause"
                    ),
                );
                Ok(CanaryTick::Extended { id })
            }
            Next::Promote => {
                canary.outcome = Some(Outcome::Promoted { by_hand: false });
                self.put_canary(&mut records[pos], canary, progress).await?;
                self.settle(&mut records, pos, progress).await
            }
            Next::RollBack { failures } => {
                canary.outcome = Some(Outcome::RolledBack {
                    failures,
                    by_hand: false,
                });
                self.put_canary(&mut records[pos], canary, progress).await?;
                self.settle(&mut records, pos, progress).await
            }
        }
    }

    /// Carries out a recorded outcome: the routing, the versions' states, then `settled`. Every
    /// part is idempotent, so a tick that died half-way is finished by the next one.
    async fn settle(
        &self,
        records: &mut [VersionRecord],
        pos: usize,
        progress: &dyn Progress,
    ) -> Result<CanaryTick, EngineError> {
        let id = records[pos].version.id.clone();
        let canary = *records[pos]
            .canary
            .clone()
            .expect("settle is given a canary");
        let outcome = canary.outcome.clone().expect("settle is given an outcome");
        let (winner, loser) = match outcome {
            Outcome::Promoted { .. } => (id.clone(), canary.baseline.clone()),
            Outcome::RolledBack { .. } => (canary.baseline.clone(), id.clone()),
        };
        let table = self.routing().await?;
        let alone = [WeightedTarget {
            id: winner.clone(),
            weight: 100,
        }];
        if table.default_targets() != alone.as_slice() {
            self.set_forward(&winner, &alone, progress).await?;
        }
        for record in records.iter_mut() {
            let rid = record.version.id.clone();
            if rid == winner && record.version.state == VersionState::Deploying {
                self.record_state(record, VersionState::Active, progress)
                    .await?;
            }
            if rid == loser {
                if record.version.state == VersionState::Deploying {
                    self.record_state(record, VersionState::Active, progress)
                        .await?;
                }
                if record.version.state == VersionState::Active {
                    self.record_state(record, VersionState::Draining, progress)
                        .await?;
                }
            }
        }
        let mut done = canary;
        done.settled = true;
        self.put_canary(&mut records[pos], done, progress).await?;
        let message = match &outcome {
            Outcome::Promoted { .. } => {
                format!("canary {id} promoted: all fresh sessions go to it; {loser} drains")
            }
            Outcome::RolledBack { .. } => {
                format!("canary {id} rolled back: fresh sessions go to {winner}; {id} drains")
            }
        };
        note(progress, message);
        Ok(CanaryTick::Ended { id, outcome })
    }

    async fn set_forward(
        &self,
        id: &DeploymentId,
        targets: &[WeightedTarget],
        progress: &dyn Progress,
    ) -> Result<(), EngineError> {
        let shares: Vec<String> = targets
            .iter()
            .map(|t| format!("{} {}%", t.id, t.weight))
            .collect();
        let what = format!("splitting fresh sessions: {}", shares.join(", "));
        let on_err = step(progress, id, &what);
        self.ports
            .routing
            .set_default(targets)
            .await
            .map_err(on_err)
    }

    async fn put_canary(
        &self,
        record: &mut VersionRecord,
        canary: CanaryRecord,
        progress: &dyn Progress,
    ) -> Result<(), EngineError> {
        let updated = VersionRecord {
            canary: Some(Box::new(canary)),
            ..record.clone()
        };
        self.put(&updated, progress, "recording the canary").await?;
        *record = updated;
        Ok(())
    }

    /// The marks a window starting `now` begins from.
    async fn marks(
        &self,
        id: &DeploymentId,
        baseline: &DeploymentId,
        now: Timestamp,
    ) -> Result<CanaryMarks, EngineError> {
        let counters = self
            .ports
            .compute
            .window_marks(&[id.clone(), baseline.clone()])
            .await
            .map_err(EngineError::port(format!(
                "measuring the traffic of {id} and {baseline}"
            )))?;
        Ok(marks_of(counters, id, baseline, now))
    }

    /// Both versions' figures over the window from `marks` (begun at `from`) to `now`, and the
    /// marks the next window begins from.
    async fn measure(
        &self,
        id: &DeploymentId,
        baseline: &DeploymentId,
        marks: &CanaryMarks,
        from: Timestamp,
        now: Timestamp,
    ) -> Result<(WindowStats, WindowStats, CanaryMarks), EngineError> {
        let start = BTreeMap::from([
            (id.clone(), marks.canary.clone()),
            (baseline.clone(), marks.baseline.clone()),
        ]);
        let mut measured = self
            .ports
            .compute
            .window(&[id.clone(), baseline.clone()], &start, from, now)
            .await
            .map_err(EngineError::port(format!(
                "measuring the traffic of {id} and {baseline}"
            )))?;
        let mut stats = |k: &DeploymentId| measured.stats.remove(k).unwrap_or_default();
        let (canary_window, baseline_window) = (stats(id), stats(baseline));
        Ok((
            canary_window,
            baseline_window,
            marks_of(measured.marks, id, baseline, now),
        ))
    }
}

fn marks_of(
    mut counters: BTreeMap<DeploymentId, Counters>,
    id: &DeploymentId,
    baseline: &DeploymentId,
    at: Timestamp,
) -> CanaryMarks {
    let mut take = |k: &DeploymentId| counters.remove(k).unwrap_or_default();
    CanaryMarks {
        canary: take(id),
        baseline: take(baseline),
        at: Some(at),
    }
}
