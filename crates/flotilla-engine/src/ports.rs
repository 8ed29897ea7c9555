//! The provider ports: what the workflows need from a place that runs versions.
//!
//! A provider (host, AWS, the simulator) implements every trait here. Every mutating call is
//! idempotent: repeating it after a crash, or after it already took effect, succeeds and changes
//! nothing more. Workflows rely on that to converge when run again.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use flotilla_core::canary::{CanaryPlan, CanaryState, Counters, Outcome, Verdict, WindowStats};
use flotilla_core::drain::Readiness;
use flotilla_core::routing::{RoutingTable, WeightedTarget};
use flotilla_core::{DeploymentId, DeploymentName, InstanceId, Timestamp, Version};
use serde::{Deserialize, Serialize};

use crate::events::Progress;

/// The broad class of a port failure, which decides what a caller may do about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// A network blip or a 5xx: the same call may succeed if repeated.
    Transient,
    /// The provider asked us to slow down.
    Throttled,
    /// The resource does not exist.
    NotFound,
    /// The resource exists in a state that conflicts with the call (in use, being deleted).
    Conflict,
    /// Credentials lack a permission.
    AccessDenied,
    /// The request itself is wrong (bad parameter, limit exceeded).
    Invalid,
    /// The provider cannot be reached at all (daemon down, endpoint unreachable).
    Unavailable,
}

impl ErrorKind {
    /// Whether repeating the same call later may succeed.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorKind::Transient | ErrorKind::Throttled | ErrorKind::Unavailable
        )
    }
}

/// A failed port call: what was being done, to what, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("{operation} {resource}: {message}")]
pub struct PortError {
    /// The class of failure.
    pub kind: ErrorKind,
    /// What was being done, e.g. `create target group`.
    pub operation: String,
    /// What it was done to, e.g. `prod-20261125-190633-k3x9`.
    pub resource: String,
    /// The provider's explanation.
    pub message: String,
}

impl PortError {
    /// A port error of `kind`.
    pub fn new(
        kind: ErrorKind,
        operation: impl Into<String>,
        resource: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        PortError {
            kind,
            operation: operation.into(),
            resource: resource.into(),
            message: message.into(),
        }
    }
}

/// A reference to a runnable build of a version: an image URI on AWS, a release directory on the host.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ImageRef(pub String);

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a version's code comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageRequest {
    /// An image (or release) that already exists, used as it is.
    Prebuilt(String),
    /// Build from this directory (the app's root).
    Build(PathBuf),
}

/// Where the value of one of the app's secrets comes from.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecretSource {
    /// The value itself, read by the deploying command (the host provider, from its secrets
    /// file). Never shown: `Debug` prints `<redacted>`.
    Value(String),
    /// A reference the runtime resolves when an instance starts (on AWS, an SSM parameter or a
    /// Secrets Manager secret ARN for the task definition's `valueFrom`).
    Reference(String),
}

impl fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Value(_) => f.write_str("Value(<redacted>)"),
            SecretSource::Reference(r) => f.debug_tuple("Reference").field(r).finish(),
        }
    }
}

/// The app's own environment for one version: what its deploy declared. It is part of what a
/// version is: a restart or a rollback brings back exactly these values.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppEnv {
    /// Plain variables by name.
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
    /// Secrets by name.
    #[serde(default)]
    pub secrets: BTreeMap<String, SecretSource>,
}

impl AppEnv {
    /// Whether it declares nothing.
    pub fn is_empty(&self) -> bool {
        self.vars.is_empty() && self.secrets.is_empty()
    }

    /// Every variable whose value is known here, secrets with values included, for a process
    /// the provider starts itself. References are left out: only their runtime resolves them.
    pub fn values(&self) -> impl Iterator<Item = (&str, &str)> {
        let secrets = self.secrets.iter().filter_map(|(k, v)| match v {
            SecretSource::Value(value) => Some((k.as_str(), value.as_str())),
            SecretSource::Reference(_) => None,
        });
        self.vars
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .chain(secrets)
    }
}

/// Everything needed to create one version's instances.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionSpec {
    /// The deployment name.
    pub name: DeploymentName,
    /// The version.
    pub id: DeploymentId,
    /// The build to run.
    pub image: ImageRef,
    /// How many instances to run.
    pub instances: u32,
    /// The app's environment (absent in records written before it existed).
    #[serde(default, skip_serializing_if = "AppEnv::is_empty")]
    pub env: AppEnv,
}

/// What a version's compute looks like now.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComputeStatus {
    /// Instances asked for.
    pub desired: u32,
    /// Instances running.
    pub running: u32,
    /// Instances passing health checks (healthy targets on AWS).
    pub healthy: u32,
    /// The ids of the running instances.
    pub instances: Vec<InstanceId>,
    /// Live sessions across the instances, where the provider can count them (the host router can;
    /// on AWS each agent reports only its readiness).
    pub sessions: Option<u64>,
    /// Why instances of this version stopped recently, newest first, one line each (on AWS the
    /// stopped tasks' `stoppedReason`, `stopCode` and each container's exit code and reason).
    /// `observe` leaves it empty; `Engine::status` fills it from [`Compute::stopped`] for a version
    /// with fewer healthy instances than asked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stopped: Vec<String>,
    /// What running instances report is wrong with them, one line each (on AWS an agent whose
    /// drain source keeps failing). `observe` leaves it empty; `Engine::status` fills it from
    /// [`Compute::problems`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    /// HTML pages of this version sent without the injected browser client because their
    /// Content-Security-Policy would block it (no nonce to reuse, no `'self'`), where the provider
    /// counts them (the host router does): tabs that loaded them are not pinned to the version.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub client_blocked_by_csp: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Creates, scales, observes and deletes the instances of versions.
#[async_trait]
pub trait Compute: Send + Sync {
    /// Creates the version's instances as `spec` says. Succeeds without change if they exist.
    async fn create(&self, spec: &VersionSpec) -> Result<(), PortError>;
    /// Sets how many instances of `id` should run.
    async fn scale(&self, id: &DeploymentId, desired: u32) -> Result<(), PortError>;
    /// Stops and deletes everything of `id`'s compute. Succeeds if nothing exists.
    async fn delete(&self, id: &DeploymentId) -> Result<(), PortError>;
    /// The compute of each of `ids` that has any; an id missing from the map has none.
    /// Providers batch this (one DescribeServices per 10 services on AWS).
    async fn observe(
        &self,
        ids: &[DeploymentId],
    ) -> Result<BTreeMap<DeploymentId, ComputeStatus>, PortError>;
    /// Every version of this deployment name that has compute, recorded or not (to find orphans).
    async fn list(&self) -> Result<Vec<DeploymentId>, PortError>;
    /// The last `lines` log lines of `id`'s instances, most useful first (a failing one's).
    async fn recent_logs(&self, id: &DeploymentId, lines: usize) -> Result<Vec<String>, PortError>;
    /// Why recently stopped instances of each of `ids` stopped, newest first, one line each
    /// (versions without any may be left out). Only `status` asks, so deploys and reaper passes
    /// pay nothing for it. Providers that cannot tell return nothing.
    async fn stopped(
        &self,
        ids: &[DeploymentId],
    ) -> Result<BTreeMap<DeploymentId, Vec<String>>, PortError> {
        let _ = ids;
        Ok(BTreeMap::new())
    }
    /// What running instances of each of `ids` report is wrong with them, one line each, for
    /// versions that have any (on AWS: an agent whose drain source keeps failing, so it can
    /// neither learn that its version drains nor report readiness). `running` holds each
    /// version's running instances. Only `status` asks. Providers whose instances report nothing
    /// of the kind return nothing.
    async fn problems(
        &self,
        running: &BTreeMap<DeploymentId, Vec<InstanceId>>,
    ) -> Result<BTreeMap<DeploymentId, Vec<String>>, PortError> {
        let _ = running;
        Ok(BTreeMap::new())
    }
    /// The cumulative traffic counters of each of `ids` (responses, 5xx, latency histogram), for
    /// judging a canary: the engine reads them at the start and the end of a window and judges
    /// the difference. A version that served nothing yet may be left out. Providers that cannot
    /// measure traffic refuse, and a canary cannot run on them.
    async fn counters(
        &self,
        ids: &[DeploymentId],
    ) -> Result<BTreeMap<DeploymentId, Counters>, PortError> {
        Err(PortError::new(
            ErrorKind::Invalid,
            "measure traffic",
            ids.iter()
                .map(|i| i.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            "this provider cannot measure the traffic of a version, so it cannot judge a canary",
        ))
    }
    /// The marks a canary's window starts from, for each of `ids`: what [`Compute::window`]
    /// needs at its end to measure the window. By default, [`Compute::counters`] (the window is
    /// then the difference of two readings). A provider that measures windows itself (AWS, from
    /// CloudWatch) needs only the window's start time and returns nothing, calling nothing.
    async fn window_marks(
        &self,
        ids: &[DeploymentId],
    ) -> Result<BTreeMap<DeploymentId, Counters>, PortError> {
        self.counters(ids).await
    }
    /// What each of `ids` did in the window that began at `from` with `marks` (from
    /// [`Compute::window_marks`]) and ends at `to`, and the marks the next window starts from.
    /// By default, the difference of `marks` and a reading of [`Compute::counters`] now
    /// (`flotilla_core::canary::window`), whose reading is the next window's marks. A version
    /// that served nothing in the window may be left out (it counts as no requests).
    async fn window(
        &self,
        ids: &[DeploymentId],
        marks: &BTreeMap<DeploymentId, Counters>,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Measured, PortError> {
        let _ = (from, to);
        let now = self.counters(ids).await?;
        let none = Counters::default();
        let stats = ids
            .iter()
            .map(|id| {
                let before = marks.get(id).unwrap_or(&none);
                let after = now.get(id).unwrap_or(&none);
                (id.clone(), flotilla_core::canary::window(before, after))
            })
            .collect();
        Ok(Measured { stats, marks: now })
    }
}

/// What [`Compute::window`] measured: each version's figures over the window, and the marks the
/// next window starts from (empty for a provider that measures windows by time alone).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Measured {
    /// Each version's figures; a version left out served nothing.
    pub stats: BTreeMap<DeploymentId, WindowStats>,
    /// The marks at the window's end.
    pub marks: BTreeMap<DeploymentId, Counters>,
}

/// Installs and removes the routing of versions: affinity rules and the default forward.
#[async_trait]
pub trait Routing: Send + Sync {
    /// Makes requests carrying `id`'s affinity (header or query parameter) reach `id`.
    /// On AWS this creates the target group and both listener rules. Idempotent.
    async fn install_affinity(&self, id: &DeploymentId) -> Result<(), PortError>;
    /// Makes `id`'s affinity answer 410 Gone. Idempotent.
    async fn retire_affinity(&self, id: &DeploymentId) -> Result<(), PortError>;
    /// Removes `id`'s affinity (and its target group on AWS). Succeeds if none exists.
    async fn remove_affinity(&self, id: &DeploymentId) -> Result<(), PortError>;
    /// Replaces the default forward for fresh requests; empty means "no version deployed yet" (503).
    async fn set_default(&self, targets: &[WeightedTarget]) -> Result<(), PortError>;
    /// The routing as it is now.
    async fn snapshot(&self) -> Result<RoutingTable, PortError>;
}

/// A recorded version and the bookkeeping the workflows keep beside it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRecord {
    /// The version and its lifecycle state.
    pub version: Version,
    /// The build it runs, once known.
    pub image: Option<ImageRef>,
    /// Instances it should run while serving.
    pub instances: u32,
    /// Consecutive reaper passes in which every instance reported ready.
    pub ready_passes: u32,
    /// The canary this version is (or was) judged in, if it was deployed as one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<Box<CanaryRecord>>,
}

/// A canary deploy as recorded on the new version's record, so that the daemon (or whatever runs
/// [`crate::Engine::canary_tick`]) can resume it after a crash.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CanaryRecord {
    /// The steps, pause and thresholds.
    pub plan: CanaryPlan,
    /// The version it is judged against (fresh sessions not sent to the canary go there).
    pub baseline: DeploymentId,
    /// The step it is at and since when.
    pub state: CanaryState,
    /// Its share of fresh sessions now, in percent.
    pub percent: u8,
    /// Both versions' counters when the window being judged began; `None` until the first
    /// reading (the window starts then).
    #[serde(default)]
    pub marks: Option<CanaryMarks>,
    /// The last judgement, for `status`.
    #[serde(default)]
    pub last: Option<Judgement>,
    /// How it ended, once decided.
    #[serde(default)]
    pub outcome: Option<Outcome>,
    /// Whether what `outcome` calls for (routing and records) is done.
    #[serde(default)]
    pub settled: bool,
}

// Thresholds and figures are finite numbers (plans are validated, ratios come from counts), so
// equality is an equivalence here.
impl Eq for CanaryRecord {}

impl CanaryRecord {
    /// Whether the canary is still running: not decided yet.
    pub fn running(&self) -> bool {
        self.outcome.is_none()
    }
}

/// Where the window being judged began: both versions' marks ([`Compute::window_marks`]; empty
/// counters on a provider that measures windows by time) and when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CanaryMarks {
    /// The canary's.
    #[serde(default, skip_serializing_if = "is_default")]
    pub canary: Counters,
    /// The baseline's.
    #[serde(default, skip_serializing_if = "is_default")]
    pub baseline: Counters,
    /// When the window began (absent in records written before windows were measured by time;
    /// the step's start stands in for it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<Timestamp>,
}

fn is_default(c: &Counters) -> bool {
    *c == Counters::default()
}

/// One judged window: what each version did, and the verdict.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Judgement {
    /// When the window ended.
    pub at: Timestamp,
    /// The step it judged (index into the plan's steps).
    pub step: usize,
    /// The canary's figures.
    pub canary: WindowStats,
    /// The baseline's figures over the same window.
    pub baseline: WindowStats,
    /// The verdict.
    pub verdict: Verdict,
}

/// Who holds a deploy lock and until when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockInfo {
    /// Who took it, e.g. `alice@build-7 (pid 4242)`.
    pub owner: String,
    /// When it was taken.
    pub acquired_at: Timestamp,
    /// When it lapses if not released.
    pub expires_at: Timestamp,
}

/// The answer to a lock request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LockOutcome {
    /// The caller holds the lock now.
    Acquired,
    /// Someone else holds it.
    Held(LockInfo),
}

/// Where versions' states, instance readiness and the deploy lock are kept
/// (SQLite on the host; SSM parameters and service tags on AWS).
#[async_trait]
pub trait StateStore: Send + Sync {
    /// Every recorded version of this deployment name, oldest first.
    async fn list(&self) -> Result<Vec<VersionRecord>, PortError>;
    /// One recorded version.
    async fn get(&self, id: &DeploymentId) -> Result<Option<VersionRecord>, PortError>;
    /// Creates or replaces a record.
    async fn put(&self, record: &VersionRecord) -> Result<(), PortError>;
    /// Deletes a record and every instance readiness of it. Succeeds if none exists.
    async fn delete(&self, id: &DeploymentId) -> Result<(), PortError>;
    /// What each instance of each of `ids` last reported. Providers batch this (GetParameters by 10).
    async fn readiness(
        &self,
        ids: &[DeploymentId],
    ) -> Result<BTreeMap<DeploymentId, BTreeMap<InstanceId, Readiness>>, PortError>;
    /// Takes the deploy lock for `owner` until `now + ttl`. An expired lock is taken over; `force`
    /// breaks a live one. Taking a lock one already holds renews it.
    async fn acquire_lock(
        &self,
        owner: &str,
        now: Timestamp,
        ttl: Duration,
        force: bool,
    ) -> Result<LockOutcome, PortError>;
    /// Releases the lock if `owner` holds it. Succeeds otherwise.
    async fn release_lock(&self, owner: &str) -> Result<(), PortError>;
    /// Who holds the lock, if anyone (expired locks included, for reporting).
    async fn lock_info(&self) -> Result<Option<LockInfo>, PortError>;
}

/// Turns an [`ImageRequest`] into a runnable build.
#[async_trait]
pub trait ImageSource: Send + Sync {
    /// Builds or resolves the image for `id`, telling `progress` what a build prints while it
    /// runs. Idempotent per id.
    async fn prepare(
        &self,
        id: &DeploymentId,
        request: &ImageRequest,
        progress: &dyn Progress,
    ) -> Result<ImageRef, PortError>;
    /// Removes what `prepare` made for `id`, if anything is worth removing. Succeeds if gone.
    async fn discard(&self, id: &DeploymentId) -> Result<(), PortError>;
}

/// Time as the workflows see it: real on providers, virtual in the simulator.
#[async_trait]
pub trait Clock: Send + Sync {
    /// The current time.
    fn now(&self) -> Timestamp;
    /// Waits for `duration`.
    async fn sleep(&self, duration: Duration);
}

/// The ports of one provider for one deployment name, bundled.
#[derive(Clone)]
pub struct Ports {
    /// Instances.
    pub compute: Arc<dyn Compute>,
    /// Affinity and the default forward.
    pub routing: Arc<dyn Routing>,
    /// Records, readiness and the lock.
    pub state: Arc<dyn StateStore>,
    /// Builds.
    pub images: Arc<dyn ImageSource>,
    /// Time.
    pub clock: Arc<dyn Clock>,
}
