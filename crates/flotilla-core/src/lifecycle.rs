//! The lifecycle of one version: `deploying → active → draining → retired`, plus `failed`.
//!
//! ```text
//! deploying ──► active ──► draining ──► retired
//!     │            ▲           │
//!     ▼            └───────────┘ (rollback)
//!   failed
//! ```
//!
//! A version is removed from the store (not transitioned) once its resources are deleted.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ids::DeploymentId;
use crate::time::Timestamp;

/// Where a version is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VersionState {
    /// Being created: not yet healthy, takes no fresh traffic.
    Deploying,
    /// Healthy and the target of fresh traffic. At most one per deployment name.
    Active,
    /// Takes no new sessions; existing ones continue until they end.
    Draining,
    /// Its affinity answers 410 Gone; its instances are stopping or stopped.
    Retired,
    /// Its deploy gave up (never healthy, or interrupted); its resources are being removed.
    Failed,
}

impl VersionState {
    /// Every state, in lifecycle order.
    pub const ALL: [VersionState; 5] = [
        VersionState::Deploying,
        VersionState::Active,
        VersionState::Draining,
        VersionState::Retired,
        VersionState::Failed,
    ];

    /// The lowercase wire form: `deploying`, `active`, `draining`, `retired`, `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            VersionState::Deploying => "deploying",
            VersionState::Active => "active",
            VersionState::Draining => "draining",
            VersionState::Retired => "retired",
            VersionState::Failed => "failed",
        }
    }

    /// Whether moving from `self` to `next` is allowed. Staying in the same state always is.
    pub fn can_become(self, next: VersionState) -> bool {
        use VersionState::*;
        self == next
            || matches!(
                (self, next),
                (Deploying, Active)
                    | (Deploying, Failed)
                    | (Active, Draining)
                    | (Draining, Active)
                    | (Draining, Retired)
            )
    }

    /// Whether a version in this state still has instances that should be running.
    pub fn runs(self) -> bool {
        matches!(
            self,
            VersionState::Deploying | VersionState::Active | VersionState::Draining
        )
    }
}

impl fmt::Display for VersionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A state name that is not one of the five.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown version state `{0}`; expected deploying, active, draining, retired or failed")]
pub struct UnknownState(pub String);

impl FromStr for VersionState {
    type Err = UnknownState;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        VersionState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| UnknownState(s.to_owned()))
    }
}

/// A transition the lifecycle does not allow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("version {id} is {from}; it cannot become {to}")]
pub struct TransitionError {
    /// The version.
    pub id: DeploymentId,
    /// Its current state.
    pub from: VersionState,
    /// The state asked for.
    pub to: VersionState,
}

/// One version of a deployment and when it entered its current state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// The deploy's id.
    pub id: DeploymentId,
    /// Its state.
    pub state: VersionState,
    /// When the deploy began.
    pub created_at: Timestamp,
    /// When it entered `state`.
    pub state_changed_at: Timestamp,
}

impl Version {
    /// A version that starts deploying at `now`.
    pub fn new(id: DeploymentId, now: Timestamp) -> Self {
        Version {
            id,
            state: VersionState::Deploying,
            created_at: now,
            state_changed_at: now,
        }
    }

    /// Moves to `to` at `now`. Staying in the same state is a no-op that keeps the old timestamp,
    /// so that repeating a step after a crash does not reset drain or age clocks.
    pub fn transition(&mut self, to: VersionState, now: Timestamp) -> Result<(), TransitionError> {
        if !self.state.can_become(to) {
            return Err(TransitionError {
                id: self.id.clone(),
                from: self.state,
                to,
            });
        }
        if self.state != to {
            self.state = to;
            self.state_changed_at = now;
        }
        Ok(())
    }

    /// How long the version has existed at `now`.
    pub fn age(&self, now: Timestamp) -> std::time::Duration {
        now.since(self.created_at)
    }

    /// How long the version has been in its current state at `now`.
    pub fn time_in_state(&self, now: Timestamp) -> std::time::Duration {
        now.since(self.state_changed_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use VersionState::*;

    #[test]
    fn allowed_transitions_table() {
        let allowed = [
            (Deploying, Active),
            (Deploying, Failed),
            (Active, Draining),
            (Draining, Active),
            (Draining, Retired),
        ];
        for from in VersionState::ALL {
            for to in VersionState::ALL {
                let want = from == to || allowed.contains(&(from, to));
                assert_eq!(from.can_become(to), want, "{from} -> {to}");
            }
        }
    }

    #[test]
    fn transition_records_time_and_rejects_invalid() {
        let id = DeploymentId::new("20261125-190633-k3x9").expect("valid");
        let mut v = Version::new(id, Timestamp::from_secs(100));
        v.transition(Active, Timestamp::from_secs(110))
            .expect("allowed");
        assert_eq!(v.state_changed_at, Timestamp::from_secs(110));
        v.transition(Active, Timestamp::from_secs(120))
            .expect("same state is a no-op");
        assert_eq!(v.state_changed_at, Timestamp::from_secs(110));
        let err = v
            .transition(Retired, Timestamp::from_secs(130))
            .expect_err("must drain first");
        assert_eq!(
            err.to_string(),
            "version 20261125-190633-k3x9 is active; it cannot become retired"
        );
        assert_eq!(v.state, Active);
        assert_eq!(v.created_at, Timestamp::from_secs(100));
    }

    #[test]
    fn states_round_trip_through_strings() {
        for state in VersionState::ALL {
            assert_eq!(state.as_str().parse::<VersionState>(), Ok(state));
        }
        assert!("Active".parse::<VersionState>().is_err());
    }
}
