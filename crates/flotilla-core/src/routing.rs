//! The routing model: a weighted default for fresh requests, per-version affinity by header or
//! query parameter, and 410 Gone for retired versions. [`route`] is the one decision every router
//! (the host router, the ALB rules flotilla writes) must agree with.
//!
//! The listener-rule budget lives here too, because it limits how many versions may be live.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::DeploymentId;
use crate::lifecycle::{Version, VersionState};

/// The most target groups a weighted forward action may name (an ALB limit, not adjustable).
pub const MAX_DEFAULT_TARGETS: usize = 5;

/// The largest weight an ALB accepts for one target group of a weighted forward.
pub const MAX_WEIGHT: u16 = 999;

/// Listener rules per ALB, not counting default actions.
pub const ALB_RULE_LIMIT: u32 = 100;

/// Listener rules one version uses.
///
/// Two, because an ALB ANDs conditions of different types within a rule, and affinity must match
/// the header OR the query parameter: one rule matches the header, one the query string.
pub const RULES_PER_VERSION: u32 = 2;

/// The message a retired version's affinity answers with, with status 410.
pub const RETIRED_MESSAGE: &str = "410 Gone: this version is no longer available";

/// One target of the default forward and its share of fresh traffic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeightedTarget {
    /// The version receiving the share.
    pub id: DeploymentId,
    /// Its weight, 0 to [`MAX_WEIGHT`].
    pub weight: u16,
}

/// What a version's affinity does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Affinity {
    /// Requests carrying the id are forwarded to the version.
    Serving,
    /// Requests carrying the id are answered 410 Gone.
    Retired,
}

/// A routing table that breaks a rule of the model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum RoutingError {
    /// The default forward named no target, or more than an ALB allows.
    #[error("the default forward must name 1 to {MAX_DEFAULT_TARGETS} versions, not {0}")]
    DefaultTargetCount(usize),
    /// Every weight was zero, or one was over the limit.
    #[error("default weights must be 0 to {MAX_WEIGHT} with at least one above 0")]
    BadWeights,
    /// A version appeared twice in the default forward.
    #[error("version {0} appears twice in the default forward")]
    DuplicateTarget(DeploymentId),
    /// The default named a version whose affinity is not installed and serving.
    #[error("version {0} cannot take fresh traffic: its affinity is not installed and serving")]
    NotServing(DeploymentId),
    /// Removing or retiring a version that fresh traffic still goes to.
    #[error("version {0} still receives fresh traffic; switch the default away from it first")]
    InDefault(DeploymentId),
}

/// The routing state of one deployment name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutingTable {
    default: Vec<WeightedTarget>,
    affinity: BTreeMap<DeploymentId, Affinity>,
}

impl RoutingTable {
    /// A table with no versions: every request gets [`RouteDecision::NoVersion`].
    pub fn new() -> Self {
        Self::default()
    }

    /// The default forward's targets (empty until a first version is switched to).
    pub fn default_targets(&self) -> &[WeightedTarget] {
        &self.default
    }

    /// Every version with affinity, and what it does.
    pub fn affinities(&self) -> &BTreeMap<DeploymentId, Affinity> {
        &self.affinity
    }

    /// What `id`'s affinity does, if it has one.
    pub fn affinity(&self, id: &DeploymentId) -> Option<Affinity> {
        self.affinity.get(id).copied()
    }

    /// Whether `id` is among the default forward's targets.
    pub fn in_default(&self, id: &DeploymentId) -> bool {
        self.default.iter().any(|t| &t.id == id)
    }

    /// Installs (or re-installs) `id`'s affinity as serving.
    pub fn install_affinity(&mut self, id: DeploymentId) {
        self.affinity.insert(id, Affinity::Serving);
    }

    /// Makes `id`'s affinity answer 410. Refused while fresh traffic still goes to it.
    pub fn mark_retired(&mut self, id: DeploymentId) -> Result<(), RoutingError> {
        if self.in_default(&id) {
            return Err(RoutingError::InDefault(id));
        }
        self.affinity.insert(id, Affinity::Retired);
        Ok(())
    }

    /// Removes `id`'s affinity entirely. Refused while fresh traffic still goes to it.
    pub fn remove_affinity(&mut self, id: &DeploymentId) -> Result<(), RoutingError> {
        if self.in_default(id) {
            return Err(RoutingError::InDefault(id.clone()));
        }
        self.affinity.remove(id);
        Ok(())
    }

    /// Replaces the default forward. Every target must have serving affinity.
    pub fn set_default(&mut self, targets: Vec<WeightedTarget>) -> Result<(), RoutingError> {
        validate_default(&targets, |id| self.affinity(id) == Some(Affinity::Serving))?;
        self.default = targets;
        Ok(())
    }

    /// Empties the default forward, so fresh requests get [`RouteDecision::NoVersion`].
    pub fn clear_default(&mut self) {
        self.default.clear();
    }

    /// The table the lifecycle states call for: affinity for every version that runs or is
    /// retired, and the default on the active version.
    pub fn desired(versions: &[Version]) -> RoutingTable {
        let mut table = RoutingTable::new();
        for v in versions {
            match v.state {
                VersionState::Deploying | VersionState::Active | VersionState::Draining => {
                    table.affinity.insert(v.id.clone(), Affinity::Serving);
                }
                VersionState::Retired => {
                    table.affinity.insert(v.id.clone(), Affinity::Retired);
                }
                VersionState::Failed => {}
            }
        }
        if let Some(active) = versions.iter().find(|v| v.state == VersionState::Active) {
            table.default = vec![WeightedTarget {
                id: active.id.clone(),
                weight: 100,
            }];
        }
        table
    }
}

/// Checks a default forward against the ALB's rules; `serving` says whether a version may take
/// fresh traffic.
pub fn validate_default(
    targets: &[WeightedTarget],
    serving: impl Fn(&DeploymentId) -> bool,
) -> Result<(), RoutingError> {
    if targets.is_empty() || targets.len() > MAX_DEFAULT_TARGETS {
        return Err(RoutingError::DefaultTargetCount(targets.len()));
    }
    if targets.iter().all(|t| t.weight == 0) || targets.iter().any(|t| t.weight > MAX_WEIGHT) {
        return Err(RoutingError::BadWeights);
    }
    for (i, t) in targets.iter().enumerate() {
        if targets[..i].iter().any(|earlier| earlier.id == t.id) {
            return Err(RoutingError::DuplicateTarget(t.id.clone()));
        }
        if !serving(&t.id) {
            return Err(RoutingError::NotServing(t.id.clone()));
        }
    }
    Ok(())
}

/// The affinity-relevant parts of one request.
#[derive(Clone, Copy, Debug, Default)]
pub struct RouteRequest<'a> {
    /// The affinity header's value, if present.
    pub header: Option<&'a str>,
    /// The affinity query parameter's value, if present.
    pub query: Option<&'a str>,
    /// A uniformly random number, used only to pick among weighted default targets.
    pub roll: u32,
}

/// Where one request goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteDecision<'t> {
    /// The request named a live version: it goes there and nowhere else.
    Pinned(&'t DeploymentId),
    /// The request named no live or retired version: the weighted default picked this one.
    Fresh(&'t DeploymentId),
    /// The request named a retired version: answer 410, naming the current version if any.
    Gone {
        /// The retired version the request named.
        retired: &'t DeploymentId,
        /// The version fresh requests go to now.
        current: Option<&'t DeploymentId>,
    },
    /// Nothing is deployed yet: answer 503.
    NoVersion,
}

/// Decides where a request goes.
///
/// The header is consulted first, then the query parameter. A value naming an id this table never
/// had is treated as no affinity. Values compare case-insensitively, as ALB conditions do.
pub fn route<'t>(table: &'t RoutingTable, request: &RouteRequest<'_>) -> RouteDecision<'t> {
    for value in [request.header, request.query].into_iter().flatten() {
        let value = value.trim();
        let key: Cow<'_, str> = if value.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(value.to_ascii_lowercase())
        } else {
            Cow::Borrowed(value)
        };
        if let Some((id, affinity)) = table.affinity.get_key_value(key.as_ref()) {
            return match affinity {
                Affinity::Serving => RouteDecision::Pinned(id),
                Affinity::Retired => RouteDecision::Gone {
                    retired: id,
                    current: pick(&table.default, request.roll),
                },
            };
        }
    }
    match pick(&table.default, request.roll) {
        Some(id) => RouteDecision::Fresh(id),
        None => RouteDecision::NoVersion,
    }
}

/// Picks a weighted target: target i is chosen for a `roll` share equal to its weight's share.
fn pick(targets: &[WeightedTarget], roll: u32) -> Option<&DeploymentId> {
    let total: u64 = targets.iter().map(|t| u64::from(t.weight)).sum();
    if total == 0 {
        return None;
    }
    let point = (u64::from(roll) * total) >> 32;
    let mut acc = 0;
    for t in targets {
        acc += u64::from(t.weight);
        if point < acc {
            return Some(&t.id);
        }
    }
    targets.last().map(|t| &t.id)
}

/// The listener-rule budget of one ALB.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleBudget {
    /// Rules available to this deployment name.
    pub limit: u32,
}

impl Default for RuleBudget {
    fn default() -> Self {
        RuleBudget {
            limit: ALB_RULE_LIMIT,
        }
    }
}

/// A deploy refused because the versions already recorded use the whole rule budget.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub struct BudgetError {
    /// Rules in use.
    pub used: u32,
    /// The budget.
    pub limit: u32,
    /// Versions holding rules, by state.
    pub by_state: BTreeMap<VersionState, u32>,
}

impl fmt::Display for BudgetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let live: u32 = self.by_state.values().sum();
        let states: Vec<String> = self
            .by_state
            .iter()
            .map(|(s, n)| format!("{n} {s}"))
            .collect();
        write!(
            f,
            "a new version needs {RULES_PER_VERSION} listener rules, but {} of {} are in use by {live} versions ({}); \
             run `flotilla reap` to remove versions whose sessions have ended, or `flotilla teardown ID` \
             to remove a draining version now",
            self.used,
            self.limit,
            states.join(", ")
        )
    }
}

impl RuleBudget {
    /// How many versions can hold rules at once.
    pub fn max_versions(&self) -> u32 {
        self.limit / RULES_PER_VERSION
    }

    /// Rules on the listener as `table` has it: each version with affinity holds its rules.
    /// What `status` reports; a version recorded before its rules were made (a deploy that failed
    /// building or pushing its image) holds none yet.
    pub fn on_listener(table: &RoutingTable) -> u32 {
        u32::try_from(table.affinities().len())
            .unwrap_or(u32::MAX)
            .saturating_mul(RULES_PER_VERSION)
    }

    /// Rules held by the recorded versions: every recorded version may hold its rules until it is
    /// deleted, whatever its state. What a new version is checked against.
    pub fn used(&self, versions: &[Version]) -> u32 {
        u32::try_from(versions.len())
            .unwrap_or(u32::MAX)
            .saturating_mul(RULES_PER_VERSION)
    }

    /// Refuses a new version when its rules would not fit beside `versions`.
    pub fn check_new_version(&self, versions: &[Version]) -> Result<(), BudgetError> {
        let used = self.used(versions);
        if used.saturating_add(RULES_PER_VERSION) <= self.limit {
            return Ok(());
        }
        let mut by_state = BTreeMap::new();
        for v in versions {
            *by_state.entry(v.state).or_insert(0) += 1;
        }
        Err(BudgetError {
            used,
            limit: self.limit,
            by_state,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::Timestamp;

    fn id(n: u64) -> DeploymentId {
        DeploymentId::generate(Timestamp::from_secs(1_764_000_000 + n), n)
    }

    fn table_with(
        active: &DeploymentId,
        draining: &DeploymentId,
        retired: &DeploymentId,
    ) -> RoutingTable {
        let mut t = RoutingTable::new();
        t.install_affinity(active.clone());
        t.install_affinity(draining.clone());
        t.mark_retired(retired.clone()).expect("not in default");
        t.set_default(vec![WeightedTarget {
            id: active.clone(),
            weight: 100,
        }])
        .expect("valid");
        t
    }

    #[test]
    fn route_decisions() {
        let (a, d, r) = (id(3), id(2), id(1));
        let t = table_with(&a, &d, &r);
        let check = |header: Option<&str>, query: Option<&str>, want: RouteDecision<'_>| {
            assert_eq!(
                route(
                    &t,
                    &RouteRequest {
                        header,
                        query,
                        roll: 7
                    }
                ),
                want,
                "{header:?} {query:?}"
            );
        };
        check(None, None, RouteDecision::Fresh(&a));
        check(Some(d.as_str()), None, RouteDecision::Pinned(&d));
        check(None, Some(d.as_str()), RouteDecision::Pinned(&d));
        check(
            Some(&d.as_str().to_uppercase()),
            None,
            RouteDecision::Pinned(&d),
        );
        check(
            Some(r.as_str()),
            None,
            RouteDecision::Gone {
                retired: &r,
                current: Some(&a),
            },
        );
        // An id this deployment never had is no affinity at all.
        check(Some("20200101-000000-zzzz"), None, RouteDecision::Fresh(&a));
        check(Some("garbage"), Some(d.as_str()), RouteDecision::Pinned(&d));
        // The header wins over the query parameter.
        check(
            Some(a.as_str()),
            Some(d.as_str()),
            RouteDecision::Pinned(&a),
        );
        assert_eq!(
            route(&RoutingTable::new(), &RouteRequest::default()),
            RouteDecision::NoVersion
        );
    }

    #[test]
    fn weighted_default_splits_by_weight() {
        let (a, b) = (id(1), id(2));
        let mut t = RoutingTable::new();
        t.install_affinity(a.clone());
        t.install_affinity(b.clone());
        t.set_default(vec![
            WeightedTarget {
                id: a.clone(),
                weight: 1,
            },
            WeightedTarget {
                id: b.clone(),
                weight: 3,
            },
        ])
        .expect("valid");
        let mut to_a = 0u32;
        for i in 0..1000u32 {
            let roll = (u64::from(i) * (1u64 << 32) / 1000) as u32;
            if route(
                &t,
                &RouteRequest {
                    roll,
                    ..Default::default()
                },
            ) == RouteDecision::Fresh(&a)
            {
                to_a += 1;
            }
        }
        assert_eq!(to_a, 250);
    }

    #[test]
    fn default_validation() {
        let (a, b) = (id(1), id(2));
        let mut t = RoutingTable::new();
        let w = |id: &DeploymentId, weight| WeightedTarget {
            id: id.clone(),
            weight,
        };
        assert_eq!(
            t.set_default(vec![]),
            Err(RoutingError::DefaultTargetCount(0))
        );
        assert_eq!(
            t.set_default(vec![w(&a, 100)]),
            Err(RoutingError::NotServing(a.clone()))
        );
        t.install_affinity(a.clone());
        t.install_affinity(b.clone());
        assert_eq!(t.set_default(vec![w(&a, 0)]), Err(RoutingError::BadWeights));
        assert_eq!(
            t.set_default(vec![w(&a, 1000)]),
            Err(RoutingError::BadWeights)
        );
        assert_eq!(
            t.set_default(vec![w(&a, 1), w(&a, 1)]),
            Err(RoutingError::DuplicateTarget(a.clone()))
        );
        let six: Vec<_> = (0..6).map(|n| w(&id(n), 1)).collect();
        assert_eq!(t.set_default(six), Err(RoutingError::DefaultTargetCount(6)));
        t.set_default(vec![w(&a, 100)]).expect("valid");
        assert_eq!(
            t.mark_retired(a.clone()),
            Err(RoutingError::InDefault(a.clone()))
        );
        assert_eq!(
            t.remove_affinity(&a),
            Err(RoutingError::InDefault(a.clone()))
        );
        t.remove_affinity(&b).expect("not in default");
    }

    #[test]
    fn desired_table_follows_states() {
        let now = Timestamp::from_secs(1_764_000_100);
        let mk = |n, state| Version {
            id: id(n),
            state,
            created_at: now,
            state_changed_at: now,
        };
        let versions = vec![
            mk(1, VersionState::Retired),
            mk(2, VersionState::Draining),
            mk(3, VersionState::Active),
            mk(4, VersionState::Deploying),
            mk(5, VersionState::Failed),
        ];
        let t = RoutingTable::desired(&versions);
        assert_eq!(
            t.default_targets(),
            &[WeightedTarget {
                id: id(3),
                weight: 100
            }]
        );
        assert_eq!(t.affinity(&id(1)), Some(Affinity::Retired));
        assert_eq!(t.affinity(&id(2)), Some(Affinity::Serving));
        assert_eq!(t.affinity(&id(4)), Some(Affinity::Serving));
        assert_eq!(t.affinity(&id(5)), None);
    }

    #[test]
    fn budget_refuses_the_version_that_would_not_fit() {
        let now = Timestamp::from_secs(1_764_000_100);
        let budget = RuleBudget::default();
        assert_eq!(budget.max_versions(), 50);
        let mk = |n, state| Version {
            id: id(n),
            state,
            created_at: now,
            state_changed_at: now,
        };
        let mut versions: Vec<Version> = (0..49).map(|n| mk(n, VersionState::Draining)).collect();
        budget
            .check_new_version(&versions)
            .expect("the 50th version fits");
        versions.push(mk(49, VersionState::Active));
        let err = budget
            .check_new_version(&versions)
            .expect_err("the 51st does not");
        assert_eq!(err.used, 100);
        let text = err.to_string();
        assert!(
            text.contains("100 of 100 are in use by 50 versions (1 active, 49 draining)"),
            "{text}"
        );
        assert!(text.contains("flotilla reap"), "{text}");
    }
}
