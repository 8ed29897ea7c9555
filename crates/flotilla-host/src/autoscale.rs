//! The daemon's autoscaler: each tick, every active or draining version's load (live sessions per
//! instance as the router counts them, plus what the app reports; requests per second from the
//! router's counters) goes through `flotilla_core::autoscale::decide`, and the step is applied to
//! the supervisor only if the version still runs what the tick saw (see
//! [`Supervisor::autoscale`]), so a concurrent scale (the reaper's, a teardown) always wins.

use std::collections::HashMap;
use std::time::Instant;

use flotilla_core::autoscale::{ScaleMemory, ScalePolicy, VersionLoad, decide};
use flotilla_core::lifecycle::VersionState;
use flotilla_core::{DeploymentId, InstanceId, Timestamp};

use crate::router::Router;
use crate::supervisor::Supervisor;

/// What the autoscaler remembers between ticks.
pub struct Autoscaler {
    policy: ScalePolicy,
    memory: HashMap<DeploymentId, ScaleMemory>,
    /// Each version's request total at the last tick, and when.
    last_requests: HashMap<DeploymentId, (u64, Instant)>,
}

impl Autoscaler {
    /// An autoscaler applying `policy` to every version.
    pub fn new(policy: ScalePolicy) -> Self {
        Autoscaler {
            policy,
            memory: HashMap::new(),
            last_requests: HashMap::new(),
        }
    }

    /// One tick over `versions` (each with its state) at `now`. `routed` is an instance's live
    /// sessions through the router (the daemon's count, which includes those a previous daemon
    /// still holds after a handover); the app's own count is added to it.
    pub fn tick(
        &mut self,
        versions: &[(DeploymentId, VersionState)],
        supervisor: &Supervisor,
        router: &Router,
        routed: &dyn Fn(&DeploymentId, &InstanceId) -> u64,
        now: Timestamp,
    ) {
        let stats: HashMap<_, _> = router.stats().snapshot().into_iter().collect();
        let apps: HashMap<_, _> = supervisor
            .instances()
            .into_iter()
            .map(|v| ((v.id, v.state.instance.clone()), v.state.app_sessions()))
            .collect();
        let mut seen = Vec::new();
        for (id, state) in versions {
            let Some((desired, slots)) = supervisor.slots(id) else {
                continue;
            };
            seen.push(id.clone());
            // Slots that exist beyond the count (stopping) are not the autoscaler's to count.
            let sessions: Vec<u64> = slots
                .iter()
                .take(desired as usize)
                .map(|instance| {
                    let key = (id.clone(), instance.clone());
                    routed(id, instance) + apps.get(&key).copied().flatten().unwrap_or(0)
                })
                .collect();
            if sessions.len() != desired as usize {
                // Still starting instances: decide once they all exist.
                continue;
            }
            let requests: u64 = stats
                .iter()
                .filter(|((v, _), _)| v == id)
                .map(|(_, s)| s.requests_total)
                .sum();
            let at = Instant::now();
            let requests_per_second = match self.last_requests.insert(id.clone(), (requests, at)) {
                Some((before, then)) if requests >= before => {
                    let seconds = at.duration_since(then).as_secs_f64();
                    if seconds > 0.0 {
                        (requests - before) as f64 / seconds
                    } else {
                        0.0
                    }
                }
                _ => 0.0,
            };
            let load = VersionLoad {
                state: *state,
                sessions,
                requests_per_second,
            };
            let memory = self.memory.entry(id.clone()).or_default();
            let Some(step) = decide(&self.policy, &load, memory, now) else {
                continue;
            };
            match supervisor.autoscale(id, desired, step) {
                Ok(true) if step.desired != desired => tracing::info!(
                    %id,
                    from = desired,
                    to = step.desired,
                    sessions = load.sessions.iter().sum::<u64>(),
                    requests_per_second = format!("{requests_per_second:.1}"),
                    wound_down_above = ?step.wind_down_above,
                    "autoscaled"
                ),
                Ok(_) => {}
                Err(error) => tracing::warn!(%id, %error, "autoscaling could not record its step"),
            }
        }
        self.memory.retain(|id, _| seen.contains(id));
        self.last_requests.retain(|id, _| seen.contains(id));
    }
}
