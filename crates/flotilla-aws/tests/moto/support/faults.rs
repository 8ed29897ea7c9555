//! A fault-injecting decorator for any provider's ports: the k-th port call (clock excluded)
//! either fails without effect, or takes effect and then the process "dies" (every later call
//! fails, as if nothing after it ever ran).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use flotilla_core::drain::Readiness;
use flotilla_core::routing::{RoutingTable, WeightedTarget};
use flotilla_core::{DeploymentId, InstanceId, Timestamp};
use flotilla_engine::ports::{
    Compute, ComputeStatus, ErrorKind, ImageRef, ImageRequest, ImageSource, LockOutcome, PortError,
    Routing, StateStore, VersionRecord, VersionSpec,
};
use flotilla_engine::{Ports, Progress};

/// How the armed call misbehaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The k-th call fails with this kind and has no effect.
    Fail(ErrorKind),
    /// The k-th call takes effect, then the process dies.
    Crash,
}

#[derive(Default)]
struct State {
    calls: u64,
    hit: Option<String>,
    dead: bool,
}

/// When to misbehave, and what happened.
pub struct Plan {
    at: Option<(u64, Mode)>,
    state: Mutex<State>,
}

impl Plan {
    pub fn new(k: u64, mode: Mode) -> Arc<Plan> {
        Arc::new(Plan {
            at: Some((k, mode)),
            state: Mutex::default(),
        })
    }

    pub fn calls(&self) -> u64 {
        self.state.lock().expect("plan").calls
    }

    pub fn hit(&self) -> Option<String> {
        self.state.lock().expect("plan").hit.clone()
    }

    fn dead(op: &str) -> PortError {
        PortError::new(
            ErrorKind::Unavailable,
            op,
            "-",
            "injected: the process died",
        )
    }

    /// Before a call: `Err` to fail it now, `Ok(crash_after)`.
    fn before(&self, op: &str) -> Result<bool, PortError> {
        let mut s = self.state.lock().expect("plan");
        if s.dead {
            return Err(Self::dead(op));
        }
        s.calls += 1;
        match self.at {
            Some((k, Mode::Fail(kind))) if k == s.calls => {
                s.hit = Some(format!("fail {op} (call {k})"));
                Err(PortError::new(kind, op, "-", "injected fault"))
            }
            Some((k, Mode::Crash)) if k == s.calls => {
                s.hit = Some(format!("crash after {op} (call {k})"));
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn after<T>(&self, op: &str, crash: bool, r: Result<T, PortError>) -> Result<T, PortError> {
        if crash {
            self.state.lock().expect("plan").dead = true;
            return Err(Self::dead(op));
        }
        r
    }
}

struct Faulty {
    inner: Ports,
    plan: Arc<Plan>,
}

macro_rules! call {
    ($self:ident, $op:expr, $e:expr) => {{
        let crash = $self.plan.before($op)?;
        let r = $e.await;
        $self.plan.after($op, crash, r)
    }};
}

#[async_trait]
impl Compute for Faulty {
    async fn create(&self, spec: &VersionSpec) -> Result<(), PortError> {
        call!(self, "compute.create", self.inner.compute.create(spec))
    }
    async fn scale(&self, id: &DeploymentId, desired: u32) -> Result<(), PortError> {
        call!(self, "compute.scale", self.inner.compute.scale(id, desired))
    }
    async fn delete(&self, id: &DeploymentId) -> Result<(), PortError> {
        call!(self, "compute.delete", self.inner.compute.delete(id))
    }
    async fn observe(
        &self,
        ids: &[DeploymentId],
    ) -> Result<BTreeMap<DeploymentId, ComputeStatus>, PortError> {
        call!(self, "compute.observe", self.inner.compute.observe(ids))
    }
    async fn list(&self) -> Result<Vec<DeploymentId>, PortError> {
        call!(self, "compute.list", self.inner.compute.list())
    }
    async fn recent_logs(&self, id: &DeploymentId, lines: usize) -> Result<Vec<String>, PortError> {
        call!(
            self,
            "compute.recent_logs",
            self.inner.compute.recent_logs(id, lines)
        )
    }
    async fn stopped(
        &self,
        ids: &[DeploymentId],
    ) -> Result<BTreeMap<DeploymentId, Vec<String>>, PortError> {
        call!(self, "compute.stopped", self.inner.compute.stopped(ids))
    }
}

#[async_trait]
impl Routing for Faulty {
    async fn install_affinity(&self, id: &DeploymentId) -> Result<(), PortError> {
        call!(
            self,
            "routing.install_affinity",
            self.inner.routing.install_affinity(id)
        )
    }
    async fn retire_affinity(&self, id: &DeploymentId) -> Result<(), PortError> {
        call!(
            self,
            "routing.retire_affinity",
            self.inner.routing.retire_affinity(id)
        )
    }
    async fn remove_affinity(&self, id: &DeploymentId) -> Result<(), PortError> {
        call!(
            self,
            "routing.remove_affinity",
            self.inner.routing.remove_affinity(id)
        )
    }
    async fn set_default(&self, targets: &[WeightedTarget]) -> Result<(), PortError> {
        call!(
            self,
            "routing.set_default",
            self.inner.routing.set_default(targets)
        )
    }
    async fn snapshot(&self) -> Result<RoutingTable, PortError> {
        call!(self, "routing.snapshot", self.inner.routing.snapshot())
    }
}

#[async_trait]
impl StateStore for Faulty {
    async fn list(&self) -> Result<Vec<VersionRecord>, PortError> {
        call!(self, "state.list", self.inner.state.list())
    }
    async fn get(&self, id: &DeploymentId) -> Result<Option<VersionRecord>, PortError> {
        call!(self, "state.get", self.inner.state.get(id))
    }
    async fn put(&self, record: &VersionRecord) -> Result<(), PortError> {
        call!(self, "state.put", self.inner.state.put(record))
    }
    async fn delete(&self, id: &DeploymentId) -> Result<(), PortError> {
        call!(self, "state.delete", self.inner.state.delete(id))
    }
    async fn readiness(
        &self,
        ids: &[DeploymentId],
    ) -> Result<BTreeMap<DeploymentId, BTreeMap<InstanceId, Readiness>>, PortError> {
        call!(self, "state.readiness", self.inner.state.readiness(ids))
    }
    async fn acquire_lock(
        &self,
        owner: &str,
        now: Timestamp,
        ttl: Duration,
        force: bool,
    ) -> Result<LockOutcome, PortError> {
        call!(
            self,
            "state.acquire_lock",
            self.inner.state.acquire_lock(owner, now, ttl, force)
        )
    }
    async fn release_lock(&self, owner: &str) -> Result<(), PortError> {
        call!(
            self,
            "state.release_lock",
            self.inner.state.release_lock(owner)
        )
    }
    async fn lock_info(&self) -> Result<Option<flotilla_engine::ports::LockInfo>, PortError> {
        call!(self, "state.lock_info", self.inner.state.lock_info())
    }
}

#[async_trait]
impl ImageSource for Faulty {
    async fn prepare(
        &self,
        id: &DeploymentId,
        request: &ImageRequest,
        progress: &dyn Progress,
    ) -> Result<ImageRef, PortError> {
        call!(
            self,
            "images.prepare",
            self.inner.images.prepare(id, request, progress)
        )
    }
    async fn discard(&self, id: &DeploymentId) -> Result<(), PortError> {
        call!(self, "images.discard", self.inner.images.discard(id))
    }
}

/// `ports` with every call but the clock's going through `plan`.
pub fn wrap(ports: Ports, plan: Arc<Plan>) -> Ports {
    let clock = ports.clock.clone();
    let f = Arc::new(Faulty { inner: ports, plan });
    Ports {
        compute: f.clone(),
        routing: f.clone(),
        state: f.clone(),
        images: f,
        clock,
    }
}
