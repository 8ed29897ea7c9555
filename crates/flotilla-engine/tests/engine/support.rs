//! Shared set-up: a simulated world, engines over it with test settings, and convergence checks.

use std::cell::Cell;
use std::time::Duration;

use flotilla_core::reaper::ReapPolicy;
use flotilla_core::routing::RuleBudget;
use flotilla_core::{DeploymentId, DeploymentName, Timestamp, VersionState};
use flotilla_engine::events::Silent;
use flotilla_engine::ports::ImageRequest;
use flotilla_engine::sim::{Sim, WorldView};
use flotilla_engine::workflows::{DeployOutcome, DeployRequest};
use flotilla_engine::{Engine, EngineError, Settings};

/// When every world's clock starts: 2025-11-24T16:00:00Z.
pub const START: u64 = 1_764_000_000;
pub const LOCK_TTL: Duration = Duration::from_secs(600);
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(120);
pub const MIN: Duration = Duration::from_secs(60);

pub fn policy() -> ReapPolicy {
    ReapPolicy {
        min_age: Duration::from_secs(60),
        max_age: Duration::from_secs(48 * 3600),
        consecutive_ready_passes: 2,
        deploying_timeout: Duration::from_secs(30 * 60),
    }
}

/// A simulated world for the deployment `shop` and a source of fresh ids.
pub struct World {
    pub sim: Sim,
    entropy: Cell<u64>,
}

impl World {
    pub fn new() -> Self {
        World {
            sim: Sim::new(name(), Timestamp::from_secs(START)),
            entropy: Cell::new(0),
        }
    }

    pub fn settings(&self, owner: &str) -> Settings {
        Settings {
            name: name(),
            policy: policy(),
            budget: RuleBudget::default(),
            health_timeout: HEALTH_TIMEOUT,
            health_poll: Duration::from_secs(5),
            lock_ttl: LOCK_TTL,
            lock_owner: owner.to_owned(),
            local_holders: None,
        }
    }

    /// An engine over this world whose lock owner is `owner` (one per simulated process).
    pub fn engine(&self, owner: &str) -> Engine {
        Engine::new(self.sim.ports(), self.settings(owner))
    }

    /// A new id made at the current virtual time, as the CLI would make it.
    pub fn next_id(&self) -> DeploymentId {
        self.entropy.set(self.entropy.get() + 1);
        DeploymentId::generate(self.sim.now(), self.entropy.get())
    }

    pub fn view(&self) -> WorldView {
        self.sim.view()
    }

    pub fn state(&self, id: &DeploymentId) -> Option<VersionState> {
        self.view().records.get(id).map(|r| r.version.state)
    }

    /// Deploys `id` with two instances, one of which must get healthy.
    pub async fn deploy(
        &self,
        engine: &Engine,
        id: &DeploymentId,
    ) -> Result<DeployOutcome, EngineError> {
        engine.deploy(request(id, false), &Silent).await
    }

    /// Deploys a fresh id, which must succeed; returns the id.
    pub async fn deployed(&self, engine: &Engine) -> DeploymentId {
        let id = self.next_id();
        self.deploy(engine, &id)
            .await
            .expect("a healthy deploy succeeds");
        id
    }

    /// Runs reaper passes with the clock advanced past the lock TTL, the deploying timeout and the
    /// maximum age, then a few more: whatever a crash left behind must be gone by then.
    pub async fn settle(&self) {
        let reaper = self.engine("reaper-daemon");
        let p = policy();
        let steps = [
            LOCK_TTL + Duration::from_secs(1),
            p.deploying_timeout + Duration::from_secs(1),
            p.max_age + Duration::from_secs(1),
            MIN,
            MIN,
            MIN,
            MIN,
        ];
        for step in steps {
            self.sim.advance(step);
            let report = reaper
                .reap(false, &Silent)
                .await
                .expect("a reaper pass runs");
            assert!(
                report.skipped_locked.is_none(),
                "every lock has lapsed: {report:?}"
            );
            assert!(
                report.failed.is_empty() && report.orphans_failed.is_empty(),
                "nothing fails without faults: {report:?}"
            );
        }
    }
}

pub fn name() -> DeploymentName {
    DeploymentName::new("shop").expect("valid name")
}

pub fn request(id: &DeploymentId, break_lock: bool) -> DeployRequest {
    DeployRequest {
        id: id.clone(),
        image: ImageRequest::Prebuilt(format!("registry.example/shop:{id}")),
        instances: 2,
        min_healthy: 1,
        break_lock,
        env: Default::default(),
    }
}

/// Asserts the world is in a clean end state: no orphans, nothing unfinished, no lock, at most one
/// active version which is the only one fresh traffic reaches and which serves, and every
/// resource belonging to a recorded version. Returns the active version.
pub fn assert_converged(view: &WorldView, context: &str) -> Option<DeploymentId> {
    assert_eq!(view.orphans(), vec![], "orphans {context}: {view:#?}");
    assert_eq!(
        view.unfinished(),
        vec![],
        "unfinished records {context}: {view:#?}"
    );
    assert_eq!(view.lock, None, "lock left held {context}");
    let active = view.in_state(VersionState::Active);
    assert!(
        active.len() <= 1,
        "two active versions {context}: {view:#?}"
    );
    assert_eq!(
        view.default_ids(),
        active,
        "the default follows the active version {context}"
    );
    let active = active.into_iter().next();
    if let Some(id) = &active {
        assert_eq!(view.fresh_target().as_ref(), Some(id), "{context}");
        assert!(
            view.serves(id),
            "the active version serves {context}: {view:#?}"
        );
    } else {
        assert_eq!(view.fresh_target(), None, "{context}");
    }
    for id in view.records.keys() {
        assert!(
            view.compute.contains_key(id),
            "{id} lost its compute {context}"
        );
        assert!(
            view.routing.affinity(id).is_some(),
            "{id} lost its routing {context}"
        );
        assert!(
            view.images.contains_key(id),
            "{id} lost its image {context}"
        );
    }
    active
}
