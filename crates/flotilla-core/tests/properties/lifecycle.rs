//! Lifecycle and routing properties: random histories of deploys, activations, failures,
//! rollbacks, retirements and deletions, with the routing table the states call for checked after
//! every step.

use std::collections::BTreeSet;

use flotilla_core::lifecycle::TransitionError;
use flotilla_core::routing::{
    Affinity, RouteDecision, RouteRequest, RoutingTable, RuleBudget, route, validate_default,
};
use flotilla_core::{DeploymentId, Timestamp, Version, VersionState};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

/// One step of a history. Indexes pick among the versions that fit, modulo their number.
#[derive(Clone, Debug)]
enum Op {
    /// Start a deploy whose id has this suffix entropy.
    Deploy(u64),
    /// Make the newest deploying version active; the active one drains.
    Activate,
    /// A deploying version gives up.
    Fail(usize),
    /// Make a draining version active again; the active one drains.
    Rollback(usize),
    /// Retire a draining version.
    Retire(usize),
    /// Delete a retired or failed version's record.
    Delete(usize),
    /// Try an arbitrary transition on a copy: it must succeed exactly when it is allowed.
    Attempt(usize, VersionState),
    /// Let time pass.
    Wait(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u64..50).prop_map(Op::Deploy),
        3 => Just(Op::Activate),
        1 => any::<usize>().prop_map(Op::Fail),
        2 => any::<usize>().prop_map(Op::Rollback),
        2 => any::<usize>().prop_map(Op::Retire),
        2 => any::<usize>().prop_map(Op::Delete),
        3 => (any::<usize>(), prop::sample::select(VersionState::ALL.to_vec()))
            .prop_map(|(i, s)| Op::Attempt(i, s)),
        2 => (0u64..5000).prop_map(Op::Wait),
    ]
}

/// Requests' random parts, used in turn at every step.
#[derive(Clone, Debug)]
struct Noise {
    rolls: Vec<u32>,
    /// Bit i set: upper-case character i of an id.
    case_masks: Vec<u32>,
    /// Header or query values that are not ids: printable ASCII, any Unicode, near-misses.
    garbage: Vec<String>,
    /// Ids, most of which this deployment never had.
    strangers: Vec<DeploymentId>,
}

fn noise() -> impl Strategy<Value = Noise> {
    let garbage = prop_oneof![
        "[ -~]{0,24}",
        "\\PC{0,12}",
        "[0-9]{8}-[0-9]{6}-[a-z0-9]{3,5}",
        "[0-9A-Z-]{20}",
    ];
    let stranger = (0u64..7_258_118_400, any::<u64>())
        .prop_map(|(s, e)| DeploymentId::generate(Timestamp::from_secs(s), e));
    (
        prop::collection::vec(any::<u32>(), 1..8),
        prop::collection::vec(any::<u32>(), 1..8),
        prop::collection::vec(garbage, 1..8),
        prop::collection::vec(stranger, 1..6),
    )
        .prop_map(|(rolls, case_masks, garbage, strangers)| Noise {
            rolls,
            case_masks,
            garbage,
            strangers,
        })
}

fn req<'a>(header: Option<&'a str>, query: Option<&'a str>, roll: u32) -> RouteRequest<'a> {
    RouteRequest {
        header,
        query,
        roll,
    }
}

fn mixed_case(s: &str, mask: u32) -> String {
    s.chars()
        .enumerate()
        .map(|(i, c)| {
            if mask & (1 << (i % 32)) != 0 {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect()
}

/// The documented lifecycle, written independently of `VersionState::can_become`:
/// `deploying → active → draining → retired`, `deploying → failed`, `draining → active`
/// (rollback), and staying put.
fn documented(from: VersionState, to: VersionState) -> bool {
    use VersionState::*;
    from == to
        || [
            (Deploying, Active),
            (Deploying, Failed),
            (Active, Draining),
            (Draining, Active),
            (Draining, Retired),
        ]
        .contains(&(from, to))
}

/// The fleet of one deployment name, every id it ever had, and its clock.
struct Model {
    versions: Vec<Version>,
    seen: BTreeSet<DeploymentId>,
    now: Timestamp,
    budget: RuleBudget,
}

impl Model {
    fn indexes(&self, state: VersionState) -> Vec<usize> {
        (0..self.versions.len())
            .filter(|&i| self.versions[i].state == state)
            .collect()
    }

    fn active(&self) -> Option<usize> {
        self.indexes(VersionState::Active).first().copied()
    }

    /// A transition a workflow makes: it must be allowed, succeed, and stamp the time only when
    /// the state changes.
    fn transition(&mut self, index: usize, to: VersionState) -> Result<(), TestCaseError> {
        let now = self.now;
        let v = &mut self.versions[index];
        let before = v.clone();
        prop_assert!(
            documented(before.state, to) && before.state.can_become(to),
            "the model used {} -> {to}",
            before.state
        );
        let result = v.transition(to, now);
        prop_assert!(result.is_ok(), "{result:?}");
        prop_assert_eq!(v.state, to);
        prop_assert_eq!(v.created_at, before.created_at);
        let want_changed_at = if before.state == to {
            before.state_changed_at
        } else {
            now
        };
        prop_assert_eq!(v.state_changed_at, want_changed_at);
        Ok(())
    }

    /// Moves the active version (if any) to draining and `index` to active.
    fn switch_to(&mut self, index: usize) -> Result<(), TestCaseError> {
        if let Some(active) = self.active() {
            self.transition(active, VersionState::Draining)?;
        }
        self.transition(index, VersionState::Active)
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        let pick = |candidates: Vec<usize>, i: usize| {
            (!candidates.is_empty()).then(|| candidates[i % candidates.len()])
        };
        match *op {
            Op::Deploy(entropy) => {
                let id = DeploymentId::generate(self.now, entropy);
                if self.seen.contains(&id) {
                    // Reusing an id is refused by the engine before the core sees it.
                    return Ok(());
                }
                let fits = (self.versions.len() as u32 + 1) * 2 <= self.budget.limit;
                let check = self.budget.check_new_version(&self.versions);
                prop_assert_eq!(check.is_ok(), fits, "budget {:?}", check);
                if fits {
                    self.seen.insert(id.clone());
                    self.versions.push(Version::new(id, self.now));
                }
            }
            Op::Activate => {
                let newest = self
                    .indexes(VersionState::Deploying)
                    .into_iter()
                    .max_by(|&a, &b| self.versions[a].id.cmp(&self.versions[b].id));
                if let Some(index) = newest {
                    self.switch_to(index)?;
                }
            }
            Op::Fail(i) => {
                if let Some(index) = pick(self.indexes(VersionState::Deploying), i) {
                    self.transition(index, VersionState::Failed)?;
                }
            }
            Op::Rollback(i) => {
                if let Some(index) = pick(self.indexes(VersionState::Draining), i) {
                    self.switch_to(index)?;
                }
            }
            Op::Retire(i) => {
                if let Some(index) = pick(self.indexes(VersionState::Draining), i) {
                    self.transition(index, VersionState::Retired)?;
                }
            }
            Op::Delete(i) => {
                let mut gone = self.indexes(VersionState::Retired);
                gone.extend(self.indexes(VersionState::Failed));
                if let Some(index) = pick(gone, i) {
                    self.versions.remove(index);
                }
            }
            Op::Attempt(i, to) => {
                if self.versions.is_empty() {
                    return Ok(());
                }
                let before = self.versions[i % self.versions.len()].clone();
                prop_assert_eq!(
                    before.state.can_become(to),
                    documented(before.state, to),
                    "{} -> {}",
                    before.state,
                    to
                );
                let mut v = before.clone();
                let later = self.now.plus(std::time::Duration::from_secs(1));
                match v.transition(to, later) {
                    Ok(()) => {
                        prop_assert!(
                            before.state.can_become(to),
                            "{} -> {to} allowed",
                            before.state
                        );
                        prop_assert_eq!(v.state, to);
                        prop_assert_eq!(v.created_at, before.created_at);
                        // Repeating a step must not reset the drain or age clocks.
                        let stamped = if before.state == to {
                            before.state_changed_at
                        } else {
                            later
                        };
                        prop_assert_eq!(v.state_changed_at, stamped);
                    }
                    Err(err) => {
                        prop_assert!(
                            !before.state.can_become(to),
                            "{} -> {to} refused",
                            before.state
                        );
                        prop_assert_eq!(
                            &err,
                            &TransitionError {
                                id: before.id.clone(),
                                from: before.state,
                                to
                            }
                        );
                        prop_assert_eq!(&v, &before, "a refused transition changed the version");
                        let text = err.to_string();
                        prop_assert!(
                            text.contains(before.id.as_str())
                                && text.contains(before.state.as_str())
                                && text.contains(to.as_str()),
                            "{}",
                            text
                        );
                    }
                }
            }
            Op::Wait(s) => self.now = self.now.plus(std::time::Duration::from_secs(s)),
        }
        Ok(())
    }

    /// Every invariant of the fleet and of routing by the table its states call for.
    fn check(&self, noise: &Noise, step: usize) -> Result<(), TestCaseError> {
        let actives = self.indexes(VersionState::Active);
        prop_assert!(actives.len() <= 1, "{} active versions", actives.len());
        let active = actives.first().map(|&i| &self.versions[i].id);

        let table = RoutingTable::desired(&self.versions);
        if active.is_some() {
            let serving = |id: &DeploymentId| table.affinity(id) == Some(Affinity::Serving);
            prop_assert_eq!(validate_default(table.default_targets(), serving), Ok(()));
        } else {
            prop_assert!(table.default_targets().is_empty());
        }

        let at = |v: &[u32], k: usize| v[(step + k) % v.len()];
        let roll = |k: usize| at(&noise.rolls, k);
        let known = |value: &str| {
            let key = value.trim().to_ascii_lowercase();
            self.seen.iter().any(|id| id.as_str() == key)
        };
        // Values that name no id this deployment ever had.
        let mut unknown: Vec<String> = noise
            .garbage
            .iter()
            .cloned()
            .chain(noise.strangers.iter().map(DeploymentId::to_string))
            .filter(|g| !known(g))
            .collect();
        unknown.push(String::new());
        let fresh_ok = |decision: RouteDecision<'_>| match (decision, active) {
            (RouteDecision::Fresh(to), Some(active)) => to == active,
            (RouteDecision::NoVersion, None) => true,
            _ => false,
        };

        // Fresh requests, and requests naming ids this deployment never had, reach the active
        // version or nothing, whatever the roll.
        for k in 0..noise.rolls.len() {
            let d = route(&table, &req(None, None, roll(k)));
            prop_assert!(
                fresh_ok(d),
                "fresh request went to {:?}, active {:?}",
                d,
                active
            );
        }
        for (k, value) in unknown.iter().enumerate() {
            let plain = route(&table, &req(None, None, roll(k)));
            for (header, query) in [
                (Some(value.as_str()), None),
                (None, Some(value.as_str())),
                (Some(value.as_str()), Some(value.as_str())),
            ] {
                let d = route(&table, &req(header, query, roll(k)));
                prop_assert!(
                    fresh_ok(d),
                    "{:?} went to {:?}, active {:?}",
                    value,
                    d,
                    active
                );
                prop_assert_eq!(d, plain, "an unknown id is not treated as no affinity");
            }
        }

        for (n, v) in self.versions.iter().enumerate() {
            let id = v.id.as_str();
            let mixed = mixed_case(id, at(&noise.case_masks, n));
            let other = &unknown[(step + n) % unknown.len()];
            let padded = format!(" {id}\t");
            let carrying: [(Option<&str>, Option<&str>); 7] = [
                (Some(id), None),
                (None, Some(id)),
                (Some(&mixed), None),
                (None, Some(&mixed)),
                (Some(&mixed), Some(id)),
                (Some(other), Some(&mixed)),
                (Some(&padded), Some(other)),
            ];
            for (k, (header, query)) in carrying.into_iter().enumerate() {
                let d = route(&table, &req(header, query, roll(n + k)));
                match v.state {
                    VersionState::Deploying | VersionState::Active | VersionState::Draining => {
                        prop_assert_eq!(
                            d,
                            RouteDecision::Pinned(&v.id),
                            "a request carrying live {} ({}) went elsewhere: {:?} {:?}",
                            id,
                            v.state,
                            header,
                            query
                        );
                    }
                    VersionState::Retired => {
                        prop_assert_eq!(
                            d,
                            RouteDecision::Gone {
                                retired: &v.id,
                                current: active
                            }
                        );
                    }
                    VersionState::Failed => {
                        prop_assert!(fresh_ok(d), "failed {} routed to {:?}", id, d);
                    }
                }
            }
        }

        // Ids of deleted versions route as if never seen.
        for id in &self.seen {
            if self.versions.iter().all(|v| &v.id != id) {
                let d = route(&table, &req(Some(id.as_str()), None, roll(0)));
                prop_assert!(fresh_ok(d), "deleted {} routed to {:?}", id, d);
            }
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// After every step of a random history: at most one version is active, every transition
    /// taken was allowed (and refused ones changed nothing), a request carrying a live version's
    /// id is pinned to it, fresh and unknown-id requests reach only the active version, and
    /// retired ids answer Gone naming the active version.
    #[test]
    fn histories_keep_lifecycle_and_routing_invariants(
        ops in prop::collection::vec(op(), 1..60),
        noise in noise(),
        limit in 4u32..30,
    ) {
        let mut model = Model {
            versions: Vec::new(),
            seen: BTreeSet::new(),
            now: Timestamp::from_secs(1_764_100_000),
            budget: RuleBudget { limit },
        };
        model.check(&noise, 0)?;
        for (step, op) in ops.iter().enumerate() {
            model.apply(op)?;
            model.check(&noise, step + 1)?;
        }
    }
}
