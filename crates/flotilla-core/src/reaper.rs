//! The reaper as a pure plan: given every version of a deployment name, what they run and what
//! their instances report, decide what to retire, scale down and delete.
//!
//! Retirement takes two passes: a pass that retires a version makes its affinity answer 410 and
//! scales it to zero; a later pass deletes its resources once nothing of it runs.
//!
//! Besides its actions, a pass explains every draining version it leaves draining: what it waits
//! for ([`Waiting`]), so that "nothing to reap" is never the whole answer.
//!
//! Architecture invariant: the plan never touches a version that is active, that fresh traffic
//! still goes to, that is deploying within its timeout, or that is younger than `min_age`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::drain::Readiness;
use crate::ids::DeploymentId;
use crate::lifecycle::{Version, VersionState};
use crate::routing::Affinity;
use crate::time::Timestamp;

/// When the reaper may act.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReapPolicy {
    /// A version younger than this (since its deploy began) is never touched.
    pub min_age: Duration,
    /// A version that has been draining this long is retired even if sessions remain.
    pub max_age: Duration,
    /// Passes in a row in which every instance must report ready before the version is retired.
    pub consecutive_ready_passes: u32,
    /// A version still deploying after this long (since its deploy began) is cleaned up.
    pub deploying_timeout: Duration,
}

impl Default for ReapPolicy {
    fn default() -> Self {
        ReapPolicy {
            min_age: Duration::from_secs(60),
            max_age: Duration::from_secs(48 * 3600),
            consecutive_ready_passes: 2,
            deploying_timeout: Duration::from_secs(30 * 60),
        }
    }
}

/// Desired and running instance counts of a version's compute.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComputeCounts {
    /// Instances asked for.
    pub desired: u32,
    /// Instances running now.
    pub running: u32,
}

/// What the reaper knows about one version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionView {
    /// The recorded version.
    pub version: Version,
    /// Its compute, or `None` when none exists.
    pub compute: Option<ComputeCounts>,
    /// One entry per running instance: what it reported, or `None` if it has not reported.
    pub instances: Vec<Option<Readiness>>,
    /// Consecutive earlier passes in which every instance reported ready.
    ///
    /// The count belongs to the current drain: providers reset it to 0 when a version enters
    /// draining, so that a count left from before a rollback does not shorten the next drain.
    /// (The plan cannot reset it itself: it never touches an active version.)
    pub ready_passes: u32,
    /// What its affinity does, or `None` when it has no affinity rules.
    pub affinity: Option<Affinity>,
    /// Whether the default forward still sends fresh traffic to it.
    pub in_default: bool,
}

/// Why a draining version is retired.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetireReason {
    /// Every instance reported ready for the required number of passes.
    SessionsEnded,
    /// It drained for longer than `max_age`.
    MaxAge,
}

/// Why a version's resources are removed without it ever serving.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CleanupReason {
    /// Its deploy gave up and left it failed.
    Failed,
    /// It was still deploying past `deploying_timeout`: its deploy died.
    DeployTimedOut,
}

/// One step the reaper should take. Every action is idempotent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum ReapAction {
    /// Store the new count of consecutive all-ready passes (0 resets it).
    RecordReadyPasses {
        /// The version.
        id: DeploymentId,
        /// The new count.
        passes: u32,
    },
    /// Record the version retired, make its affinity answer 410, and scale it to zero.
    Retire {
        /// The version.
        id: DeploymentId,
        /// Why.
        reason: RetireReason,
    },
    /// Finish an interrupted retirement: make the affinity answer 410.
    RetireRouting {
        /// The version.
        id: DeploymentId,
    },
    /// Finish an interrupted retirement: scale to zero.
    ScaleToZero {
        /// The version.
        id: DeploymentId,
    },
    /// Nothing of a retired version runs: delete its rules, target group, compute and state.
    DeleteResources {
        /// The version.
        id: DeploymentId,
    },
    /// Remove everything of a version that never served.
    CleanUpFailed {
        /// The version.
        id: DeploymentId,
        /// Why.
        reason: CleanupReason,
    },
}

impl ReapAction {
    /// The version the action is about.
    pub fn id(&self) -> &DeploymentId {
        match self {
            ReapAction::RecordReadyPasses { id, .. }
            | ReapAction::Retire { id, .. }
            | ReapAction::RetireRouting { id }
            | ReapAction::ScaleToZero { id }
            | ReapAction::DeleteResources { id }
            | ReapAction::CleanUpFailed { id, .. } => id,
        }
    }

    /// The action's kind in snake case (`retire`, `delete_resources`, ...), as metrics and logs
    /// name it.
    pub fn name(&self) -> &'static str {
        match self {
            ReapAction::RecordReadyPasses { .. } => "record_ready_passes",
            ReapAction::Retire { .. } => "retire",
            ReapAction::RetireRouting { .. } => "retire_routing",
            ReapAction::ScaleToZero { .. } => "scale_to_zero",
            ReapAction::DeleteResources { .. } => "delete_resources",
            ReapAction::CleanUpFailed { .. } => "clean_up_failed",
        }
    }

    /// Whether the action changes anything a user can see (everything but bookkeeping).
    pub fn is_visible(&self) -> bool {
        !matches!(self, ReapAction::RecordReadyPasses { .. })
    }
}

/// What keeps a draining version from being retired in this pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum WaitReason {
    /// Fresh traffic still goes to it (the default forward names it).
    InDefault,
    /// It is younger than the policy's `min_age`; it may be retired from `until` on.
    TooYoung {
        /// When it reaches `min_age`.
        until: Timestamp,
    },
    /// Not every running instance has reported that its sessions have ended.
    InstancesNotReady {
        /// Instances that reported ready to stop.
        ready: u32,
        /// Instances: the running count, or the number of reports if more have reported.
        instances: u32,
    },
    /// Every instance is ready, but not yet for the required number of passes in a row.
    ReadyPasses {
        /// Passes in a row counted so far, this one included.
        passes: u32,
        /// Passes in a row needed.
        needed: u32,
    },
}

/// One draining version the pass leaves draining, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiting {
    /// The version.
    pub id: DeploymentId,
    /// What it waits for.
    #[serde(flatten)]
    pub reason: WaitReason,
    /// When `max_age` retires it whatever its sessions do (unless fresh traffic still reaches it).
    pub retire_by: Timestamp,
}

/// One reaper pass: the actions to take and the draining versions left waiting.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReapPlan {
    /// The actions, in order.
    pub actions: Vec<ReapAction>,
    /// Every draining version not retired by `actions`, with what it waits for.
    pub waiting: Vec<Waiting>,
}

/// Plans one reaper pass over every version of one deployment name.
pub fn plan_reap(fleet: &[VersionView], now: Timestamp, policy: &ReapPolicy) -> Vec<ReapAction> {
    plan_pass(fleet, now, policy).actions
}

/// Plans one reaper pass and explains every draining version it leaves draining.
pub fn plan_pass(fleet: &[VersionView], now: Timestamp, policy: &ReapPolicy) -> ReapPlan {
    let mut actions = Vec::new();
    let mut waiting = Vec::new();
    for view in fleet {
        let v = &view.version;
        if view.in_default || v.age(now) < policy.min_age {
            if v.state == VersionState::Draining {
                let reason = if view.in_default {
                    WaitReason::InDefault
                } else {
                    WaitReason::TooYoung {
                        until: v.created_at.plus(policy.min_age),
                    }
                };
                waiting.push(Waiting {
                    id: v.id.clone(),
                    reason,
                    retire_by: retire_by(view, policy),
                });
            }
            continue;
        }
        let id = || v.id.clone();
        match v.state {
            VersionState::Active => {}
            VersionState::Deploying => {
                if v.age(now) >= policy.deploying_timeout {
                    actions.push(ReapAction::CleanUpFailed {
                        id: id(),
                        reason: CleanupReason::DeployTimedOut,
                    });
                }
            }
            VersionState::Failed => {
                actions.push(ReapAction::CleanUpFailed {
                    id: id(),
                    reason: CleanupReason::Failed,
                });
            }
            VersionState::Draining => {
                if let Some(reason) = plan_draining(view, now, policy, &mut actions) {
                    waiting.push(Waiting {
                        id: id(),
                        reason,
                        retire_by: retire_by(view, policy),
                    });
                }
            }
            VersionState::Retired => {
                let counts = view.compute.unwrap_or(ComputeCounts {
                    desired: 0,
                    running: 0,
                });
                if counts.desired == 0 && counts.running == 0 {
                    actions.push(ReapAction::DeleteResources { id: id() });
                    continue;
                }
                if view.affinity == Some(Affinity::Serving) {
                    actions.push(ReapAction::RetireRouting { id: id() });
                }
                if counts.desired > 0 {
                    actions.push(ReapAction::ScaleToZero { id: id() });
                }
            }
        }
    }
    ReapPlan { actions, waiting }
}

/// When `max_age` retires a draining version.
fn retire_by(view: &VersionView, policy: &ReapPolicy) -> Timestamp {
    view.version.state_changed_at.plus(policy.max_age)
}

/// Plans a draining version old enough to act on; returns what it still waits for, or `None`
/// when it is retired in this pass.
fn plan_draining(
    view: &VersionView,
    now: Timestamp,
    policy: &ReapPolicy,
    actions: &mut Vec<ReapAction>,
) -> Option<WaitReason> {
    let v = &view.version;
    if v.time_in_state(now) >= policy.max_age {
        actions.push(ReapAction::Retire {
            id: v.id.clone(),
            reason: RetireReason::MaxAge,
        });
        return None;
    }
    let running = view.compute.map_or(0, |c| c.running);
    // Every running instance must have reported ready; one that has not reported is not ready.
    // With nothing running there are no sessions left to wait for.
    let all_ready = running == 0
        || (view.instances.len() >= running as usize
            && view
                .instances
                .iter()
                .all(|r| *r == Some(Readiness::ShutdownReady)));
    if all_ready {
        let passes = view.ready_passes.saturating_add(1);
        if passes >= policy.consecutive_ready_passes {
            actions.push(ReapAction::Retire {
                id: v.id.clone(),
                reason: RetireReason::SessionsEnded,
            });
            None
        } else {
            actions.push(ReapAction::RecordReadyPasses {
                id: v.id.clone(),
                passes,
            });
            Some(WaitReason::ReadyPasses {
                passes,
                needed: policy.consecutive_ready_passes,
            })
        }
    } else {
        if view.ready_passes != 0 {
            actions.push(ReapAction::RecordReadyPasses {
                id: v.id.clone(),
                passes: 0,
            });
        }
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        let ready = view
            .instances
            .iter()
            .filter(|r| **r == Some(Readiness::ShutdownReady))
            .count();
        Some(WaitReason::InstancesNotReady {
            ready: count(ready),
            instances: count(view.instances.len()).max(running),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_764_100_000;

    fn view(state: VersionState, age_secs: u64, in_state_secs: u64) -> VersionView {
        let id = DeploymentId::generate(Timestamp::from_secs(NOW - age_secs), age_secs);
        VersionView {
            version: Version {
                id,
                state,
                created_at: Timestamp::from_secs(NOW - age_secs),
                state_changed_at: Timestamp::from_secs(NOW - in_state_secs),
            },
            compute: Some(ComputeCounts {
                desired: 2,
                running: 2,
            }),
            instances: vec![Some(Readiness::Healthy), Some(Readiness::Healthy)],
            ready_passes: 0,
            affinity: Some(if state == VersionState::Retired {
                Affinity::Retired
            } else {
                Affinity::Serving
            }),
            in_default: state == VersionState::Active,
        }
    }

    fn plan(views: &[VersionView]) -> Vec<ReapAction> {
        let policy = ReapPolicy {
            min_age: Duration::from_secs(60),
            max_age: Duration::from_secs(3600),
            consecutive_ready_passes: 2,
            deploying_timeout: Duration::from_secs(900),
        };
        plan_reap(views, Timestamp::from_secs(NOW), &policy)
    }

    #[test]
    fn leaves_active_young_and_starting_versions_alone() {
        assert_eq!(plan(&[view(VersionState::Active, 10_000, 10_000)]), vec![]);
        assert_eq!(plan(&[view(VersionState::Deploying, 899, 899)]), vec![]);
        let mut young = view(VersionState::Draining, 59, 59);
        young.instances = vec![Some(Readiness::ShutdownReady); 2];
        young.ready_passes = 5;
        assert_eq!(plan(&[young]), vec![]);
        // A new version with nothing running yet is starting, not idle.
        let mut starting = view(VersionState::Deploying, 120, 120);
        starting.compute = Some(ComputeCounts {
            desired: 2,
            running: 0,
        });
        starting.instances = vec![];
        assert_eq!(plan(&[starting]), vec![]);
    }

    #[test]
    fn draining_version_needs_consecutive_ready_passes() {
        let mut v = view(VersionState::Draining, 600, 300);
        let id = v.version.id.clone();
        assert_eq!(plan(&[v.clone()]), vec![], "sessions remain");
        v.instances = vec![Some(Readiness::ShutdownReady), None];
        assert_eq!(plan(&[v.clone()]), vec![], "one instance has not reported");
        v.instances = vec![Some(Readiness::ShutdownReady); 2];
        assert_eq!(
            plan(&[v.clone()]),
            vec![ReapAction::RecordReadyPasses {
                id: id.clone(),
                passes: 1
            }]
        );
        v.ready_passes = 1;
        assert_eq!(
            plan(&[v.clone()]),
            vec![ReapAction::Retire {
                id: id.clone(),
                reason: RetireReason::SessionsEnded
            }]
        );
        v.instances = vec![Some(Readiness::ShutdownReady), Some(Readiness::Healthy)];
        assert_eq!(
            plan(&[v]),
            vec![ReapAction::RecordReadyPasses { id, passes: 0 }],
            "a session came back"
        );
    }

    #[test]
    fn a_returning_session_restarts_the_count_of_ready_passes() {
        // Three passes in a row are needed; a session returns after two of them.
        let policy = ReapPolicy {
            min_age: Duration::from_secs(60),
            max_age: Duration::from_secs(3600),
            consecutive_ready_passes: 3,
            deploying_timeout: Duration::from_secs(900),
        };
        let mut v = view(VersionState::Draining, 600, 300);
        let id = v.version.id.clone();
        let ready = vec![Some(Readiness::ShutdownReady); 2];
        let back = vec![Some(Readiness::ShutdownReady), Some(Readiness::Healthy)];
        let mut pass = |instances: &Vec<Option<Readiness>>| {
            v.instances = instances.clone();
            let plan = plan_reap(std::slice::from_ref(&v), Timestamp::from_secs(NOW), &policy);
            for action in &plan {
                if let ReapAction::RecordReadyPasses { passes, .. } = action {
                    v.ready_passes = *passes;
                }
            }
            plan
        };
        let record = |passes| {
            vec![ReapAction::RecordReadyPasses {
                id: id.clone(),
                passes,
            }]
        };
        assert_eq!(pass(&ready), record(1));
        assert_eq!(pass(&ready), record(2));
        assert_eq!(pass(&back), record(0), "the count starts over");
        assert_eq!(
            pass(&ready),
            record(1),
            "not retired on the strength of old passes"
        );
        assert_eq!(pass(&ready), record(2));
        assert_eq!(
            pass(&ready),
            vec![ReapAction::Retire {
                id: id.clone(),
                reason: RetireReason::SessionsEnded
            }]
        );
    }

    fn waits(views: &[VersionView]) -> Vec<(DeploymentId, WaitReason)> {
        let policy = ReapPolicy {
            min_age: Duration::from_secs(60),
            max_age: Duration::from_secs(3600),
            consecutive_ready_passes: 2,
            deploying_timeout: Duration::from_secs(900),
        };
        plan_pass(views, Timestamp::from_secs(NOW), &policy)
            .waiting
            .into_iter()
            .map(|w| (w.id, w.reason))
            .collect()
    }

    #[test]
    fn draining_versions_say_what_they_wait_for() {
        let young = view(VersionState::Draining, 30, 30);
        let young_id = young.version.id.clone();
        assert_eq!(
            waits(&[young]),
            vec![(
                young_id,
                WaitReason::TooYoung {
                    until: Timestamp::from_secs(NOW + 30)
                }
            )]
        );

        let mut v = view(VersionState::Draining, 600, 300);
        let id = v.version.id.clone();
        v.instances = vec![Some(Readiness::ShutdownReady), None];
        assert_eq!(
            waits(&[v.clone()]),
            vec![(
                id.clone(),
                WaitReason::InstancesNotReady {
                    ready: 1,
                    instances: 2
                }
            )],
            "one instance has not reported"
        );
        v.instances = vec![Some(Readiness::ShutdownReady); 2];
        assert_eq!(
            waits(&[v.clone()]),
            vec![(
                id.clone(),
                WaitReason::ReadyPasses {
                    passes: 1,
                    needed: 2
                }
            )],
            "pass 1 of 2"
        );
        v.ready_passes = 1;
        assert_eq!(waits(&[v.clone()]), vec![], "retired: nothing to wait for");

        v.in_default = true;
        assert_eq!(waits(&[v.clone()]), vec![(id, WaitReason::InDefault)]);

        let plan = plan_pass(
            &[view(VersionState::Draining, 600, 300)],
            Timestamp::from_secs(NOW),
            &ReapPolicy {
                max_age: Duration::from_secs(3600),
                ..ReapPolicy::default()
            },
        );
        assert_eq!(
            plan.waiting[0].retire_by,
            Timestamp::from_secs(NOW - 300 + 3600),
            "max age counts from the start of the drain"
        );

        // Versions in other states are not explained: they are not draining.
        assert_eq!(
            waits(&[
                view(VersionState::Active, 600, 600),
                view(VersionState::Deploying, 120, 120),
                view(VersionState::Retired, 600, 10),
            ]),
            vec![]
        );
    }

    #[test]
    fn max_age_forces_retirement() {
        let v = view(VersionState::Draining, 7200, 3600);
        let id = v.version.id.clone();
        assert_eq!(
            plan(&[v]),
            vec![ReapAction::Retire {
                id,
                reason: RetireReason::MaxAge
            }]
        );
    }

    #[test]
    fn retired_versions_scale_down_then_delete() {
        let mut v = view(VersionState::Retired, 7200, 10);
        let id = v.version.id.clone();
        v.affinity = Some(Affinity::Serving);
        assert_eq!(
            plan(&[v.clone()]),
            vec![
                ReapAction::RetireRouting { id: id.clone() },
                ReapAction::ScaleToZero { id: id.clone() }
            ]
        );
        v.affinity = Some(Affinity::Retired);
        v.compute = Some(ComputeCounts {
            desired: 0,
            running: 1,
        });
        assert_eq!(
            plan(&[v.clone()]),
            vec![],
            "wait for the last instance to stop"
        );
        v.compute = Some(ComputeCounts {
            desired: 0,
            running: 0,
        });
        assert_eq!(
            plan(&[v.clone()]),
            vec![ReapAction::DeleteResources { id: id.clone() }]
        );
        v.compute = None;
        assert_eq!(plan(&[v]), vec![ReapAction::DeleteResources { id }]);
    }

    #[test]
    fn failed_and_timed_out_deploys_are_cleaned_up() {
        let failed = view(VersionState::Failed, 120, 60);
        let stuck = view(VersionState::Deploying, 900, 900);
        assert_eq!(
            plan(&[failed.clone(), stuck.clone()]),
            vec![
                ReapAction::CleanUpFailed {
                    id: failed.version.id,
                    reason: CleanupReason::Failed
                },
                ReapAction::CleanUpFailed {
                    id: stuck.version.id,
                    reason: CleanupReason::DeployTimedOut
                },
            ]
        );
    }

    #[test]
    fn never_touches_what_fresh_traffic_reaches() {
        // A deploy that died right after switching the default leaves a `deploying` version serving.
        let mut v = view(VersionState::Deploying, 10_000, 10_000);
        v.in_default = true;
        assert_eq!(plan(&[v]), vec![]);
    }
}
