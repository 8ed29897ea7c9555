//! Live, lock-free accounting of requests and long-lived sessions per upstream instance.
//!
//! The proxy bumps the counters of an [`InstanceStats`] with relaxed atomics on the hot path; the
//! host reaper and the agent's readiness read them at any time. Every increment is paired with a
//! decrement performed by a guard's `Drop`, so the numbers return to zero however a request or a
//! session ends (completion, error, client disconnect, shutdown cut).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// Upper bounds, in microseconds, of the buckets of [`StatsSnapshot::latency_buckets`] (the
/// last bucket has no bound). The same as Prometheus's default histogram buckets, 5 ms to 10 s.
pub const LATENCY_BOUNDS_US: [u64; 11] = [
    5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000,
    10_000_000,
];

/// Buckets of the latency histogram: one per bound and one above the last.
pub const LATENCY_BUCKETS: usize = LATENCY_BOUNDS_US.len() + 1;

/// The bucket a latency of `micros` falls into.
fn latency_bucket(micros: u64) -> usize {
    LATENCY_BOUNDS_US
        .iter()
        .position(|bound| micros <= *bound)
        .unwrap_or(LATENCY_BOUNDS_US.len())
}

/// Counters for one upstream instance (one process of one version).
///
/// Create one per instance, keep it in an `Arc`, and hand clones to every [`crate::Target`] that
/// forwards to that instance. All methods take `&self` and are safe to call concurrently.
#[derive(Debug)]
pub struct InstanceStats {
    created: Instant,
    in_flight: AtomicU64,
    sessions: AtomicU64,
    websockets: AtomicU64,
    event_streams: AtomicU64,
    requests_total: AtomicU64,
    sessions_total: AtomicU64,
    upstream_errors_total: AtomicU64,
    csp_blocked_total: AtomicU64,
    /// Responses by status class: 1xx to 5xx.
    responses_by_class: [AtomicU64; 5],
    /// Time from routing a request to its response head, as a histogram.
    latency_buckets: [AtomicU64; LATENCY_BUCKETS],
    latency_sum_us: AtomicU64,
    /// Milliseconds since `created` of the last request start or request/session end.
    last_activity_ms: AtomicU64,
}

/// A consistent-enough copy of an [`InstanceStats`] at one moment.
///
/// Each field is read with its own atomic load, so under concurrent traffic the fields may come
/// from slightly different instants; each field on its own is exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatsSnapshot {
    /// HTTP requests currently being served, from the moment they were routed to the end (or
    /// drop) of their response body. A streaming `text/event-stream` response counts here for as
    /// long as it streams. An upgraded WebSocket stops counting here once the `101` is sent.
    pub in_flight: u64,
    /// Live long-lived sessions: `websockets + event_streams`.
    pub sessions: u64,
    /// Open upgraded connections (WebSockets and any other `Upgrade` protocol).
    pub websockets: u64,
    /// Streaming `text/event-stream` responses still being delivered.
    pub event_streams: u64,
    /// Requests routed to this instance since it was created.
    pub requests_total: u64,
    /// Sessions (upgrades and event streams) started since the instance was created.
    pub sessions_total: u64,
    /// Requests that failed because the upstream could not be reached or did not answer in time.
    pub upstream_errors_total: u64,
    /// HTML pages served without the injected browser client because their
    /// Content-Security-Policy would block it (no nonce to reuse, no `'self'`).
    pub csp_blocked_total: u64,
    /// Responses by status class: index 0 counts 1xx, 4 counts 5xx (the router's own 502 and
    /// 504 for an unreachable instance included).
    pub responses_by_class: [u64; 5],
    /// Responses by time to their head (see [`LATENCY_BOUNDS_US`]); not cumulative.
    pub latency_buckets: [u64; LATENCY_BUCKETS],
    /// The sum of those times, in microseconds.
    pub latency_sum_us: u64,
}

impl StatsSnapshot {
    /// Whether nothing is in flight and no session is open: the instance could stop now without
    /// cutting anyone.
    pub fn is_idle(&self) -> bool {
        self.in_flight == 0 && self.sessions == 0
    }

    /// Adds another snapshot field by field (used for per-version totals).
    pub fn add(&mut self, other: &StatsSnapshot) {
        self.in_flight += other.in_flight;
        self.sessions += other.sessions;
        self.websockets += other.websockets;
        self.event_streams += other.event_streams;
        self.requests_total += other.requests_total;
        self.sessions_total += other.sessions_total;
        self.upstream_errors_total += other.upstream_errors_total;
        self.csp_blocked_total += other.csp_blocked_total;
        for (sum, add) in self
            .responses_by_class
            .iter_mut()
            .zip(other.responses_by_class)
        {
            *sum += add;
        }
        for (sum, add) in self.latency_buckets.iter_mut().zip(other.latency_buckets) {
            *sum += add;
        }
        self.latency_sum_us += other.latency_sum_us;
    }
}

/// Which kind of long-lived session a [`SessionGuard`] holds open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SessionKind {
    /// An upgraded connection (WebSocket).
    Upgrade,
    /// A `text/event-stream` response.
    EventStream,
}

impl Default for InstanceStats {
    fn default() -> Self {
        Self::new()
    }
}

impl InstanceStats {
    /// New counters, all zero, with the activity clock starting now.
    pub fn new() -> Self {
        InstanceStats {
            created: Instant::now(),
            in_flight: AtomicU64::new(0),
            sessions: AtomicU64::new(0),
            websockets: AtomicU64::new(0),
            event_streams: AtomicU64::new(0),
            requests_total: AtomicU64::new(0),
            sessions_total: AtomicU64::new(0),
            upstream_errors_total: AtomicU64::new(0),
            csp_blocked_total: AtomicU64::new(0),
            responses_by_class: Default::default(),
            latency_buckets: Default::default(),
            latency_sum_us: AtomicU64::new(0),
            last_activity_ms: AtomicU64::new(0),
        }
    }

    /// Live long-lived sessions (open WebSockets plus streaming event-stream responses).
    pub fn sessions(&self) -> u64 {
        self.sessions.load(Ordering::Relaxed)
    }

    /// HTTP requests currently being served (see [`StatsSnapshot::in_flight`]).
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Whether nothing is in flight and no session is open.
    pub fn is_idle(&self) -> bool {
        self.in_flight() == 0 && self.sessions() == 0
    }

    /// Copies every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            in_flight: self.in_flight.load(Ordering::Relaxed),
            sessions: self.sessions.load(Ordering::Relaxed),
            websockets: self.websockets.load(Ordering::Relaxed),
            event_streams: self.event_streams.load(Ordering::Relaxed),
            requests_total: self.requests_total.load(Ordering::Relaxed),
            sessions_total: self.sessions_total.load(Ordering::Relaxed),
            upstream_errors_total: self.upstream_errors_total.load(Ordering::Relaxed),
            csp_blocked_total: self.csp_blocked_total.load(Ordering::Relaxed),
            responses_by_class: std::array::from_fn(|i| {
                self.responses_by_class[i].load(Ordering::Relaxed)
            }),
            latency_buckets: std::array::from_fn(|i| {
                self.latency_buckets[i].load(Ordering::Relaxed)
            }),
            latency_sum_us: self.latency_sum_us.load(Ordering::Relaxed),
        }
    }

    /// Counts a response head with `status`, `elapsed` after its request was routed.
    pub(crate) fn record_response(&self, status: u16, elapsed: Duration) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.responses_by_class[class].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.latency_buckets[latency_bucket(micros)].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us.fetch_add(micros, Ordering::Relaxed);
    }

    /// When a request last started or a request or session last ended on this instance (the
    /// creation time if nothing happened yet). Millisecond resolution.
    ///
    /// Callers computing a drain grace period use `now - last_activity()` while
    /// [`is_idle`](Self::is_idle) holds.
    pub fn last_activity(&self) -> Instant {
        self.created + Duration::from_millis(self.last_activity_ms.load(Ordering::Relaxed))
    }

    fn touch(&self) {
        let ms = u64::try_from(self.created.elapsed().as_millis()).unwrap_or(u64::MAX);
        // fetch_max keeps the value monotonic when two threads race.
        self.last_activity_ms.fetch_max(ms, Ordering::Relaxed);
    }

    pub(crate) fn record_upstream_error(&self) {
        self.upstream_errors_total.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_csp_blocked(&self) {
        self.csp_blocked_total.fetch_add(1, Ordering::Relaxed);
    }

    fn counter(&self, kind: SessionKind) -> &AtomicU64 {
        match kind {
            SessionKind::Upgrade => &self.websockets,
            SessionKind::EventStream => &self.event_streams,
        }
    }
}

/// Holds one in-flight request open on an instance; dropping it ends the request.
#[derive(Debug)]
pub(crate) struct RequestGuard {
    stats: Arc<InstanceStats>,
    session: Option<SessionGuard>,
    started: Instant,
}

impl RequestGuard {
    /// Counts a new request as started.
    pub(crate) fn start(stats: Arc<InstanceStats>) -> Self {
        stats.in_flight.fetch_add(1, Ordering::Relaxed);
        stats.requests_total.fetch_add(1, Ordering::Relaxed);
        stats.touch();
        RequestGuard {
            stats,
            session: None,
            started: Instant::now(),
        }
    }

    /// Counts the request's response head (status class and time since the request started).
    pub(crate) fn record_response(&self, status: http::StatusCode) {
        self.stats
            .record_response(status.as_u16(), self.started.elapsed());
    }

    /// Marks this request as a long-lived event stream for as long as the guard lives.
    pub(crate) fn mark_event_stream(&mut self) {
        if self.session.is_none() {
            self.session = Some(SessionGuard::start(
                self.stats.clone(),
                SessionKind::EventStream,
            ));
        }
    }

    /// The counters this guard updates.
    pub(crate) fn stats(&self) -> &Arc<InstanceStats> {
        &self.stats
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        // End the session first so that a reader never sees sessions > 0 with in_flight == 0 for
        // an event stream.
        self.session = None;
        self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.stats.touch();
    }
}

/// Holds one long-lived session open on an instance; dropping it ends the session.
#[derive(Debug)]
pub(crate) struct SessionGuard {
    stats: Arc<InstanceStats>,
    kind: SessionKind,
}

impl SessionGuard {
    /// Counts a new session as started.
    pub(crate) fn start(stats: Arc<InstanceStats>, kind: SessionKind) -> Self {
        stats.counter(kind).fetch_add(1, Ordering::Relaxed);
        stats.sessions.fetch_add(1, Ordering::Relaxed);
        stats.sessions_total.fetch_add(1, Ordering::Relaxed);
        stats.touch();
        SessionGuard { stats, kind }
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.stats.sessions.fetch_sub(1, Ordering::Relaxed);
        self.stats
            .counter(self.kind)
            .fetch_sub(1, Ordering::Relaxed);
        self.stats.touch();
    }
}

/// A registry of [`InstanceStats`] keyed by the caller's instance key (for example a
/// `(deployment id, instance index)` pair on the host, or `()` in the agent).
///
/// Lookups take a read lock; the proxy itself never touches the registry on the hot path (it only
/// sees the `Arc<InstanceStats>` inside a [`crate::Target`]), so the lock is only contended by
/// callers registering instances and reading numbers.
#[derive(Debug)]
pub struct Sessions<K> {
    map: RwLock<HashMap<K, Arc<InstanceStats>>>,
}

impl<K> Default for Sessions<K> {
    fn default() -> Self {
        Sessions {
            map: RwLock::new(HashMap::new()),
        }
    }
}

impl<K: Eq + Hash + Clone> Sessions<K> {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The counters for `key`, created (all zero) if the key is new.
    pub fn instance(&self, key: K) -> Arc<InstanceStats> {
        if let Some(found) = self.read().get(&key) {
            return found.clone();
        }
        self.write().entry(key).or_default().clone()
    }

    /// The counters for `key`, if registered.
    pub fn get(&self, key: &K) -> Option<Arc<InstanceStats>> {
        self.read().get(key).cloned()
    }

    /// A snapshot of `key`'s counters, if registered.
    pub fn snapshot_of(&self, key: &K) -> Option<StatsSnapshot> {
        self.read().get(key).map(|stats| stats.snapshot())
    }

    /// Forgets `key` and returns its counters. Requests and sessions still holding the counters
    /// keep updating them; the caller decides whether to remove only idle instances.
    pub fn remove(&self, key: &K) -> Option<Arc<InstanceStats>> {
        self.write().remove(key)
    }

    /// Forgets every key for which `keep` returns false.
    pub fn retain(&self, mut keep: impl FnMut(&K, &InstanceStats) -> bool) {
        self.write().retain(|key, stats| keep(key, stats));
    }

    /// A snapshot of every registered instance, in no particular order.
    pub fn snapshot(&self) -> Vec<(K, StatsSnapshot)> {
        self.read()
            .iter()
            .map(|(key, stats)| (key.clone(), stats.snapshot()))
            .collect()
    }

    /// The sum of the snapshots of every key for which `select` returns true (for example all the
    /// instances of one version).
    pub fn total_where(&self, mut select: impl FnMut(&K) -> bool) -> StatsSnapshot {
        let mut total = StatsSnapshot::default();
        for (key, stats) in self.read().iter() {
            if select(key) {
                total.add(&stats.snapshot());
            }
        }
        total
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<K, Arc<InstanceStats>>> {
        // A panic while holding the lock cannot leave the map half-updated (every operation is a
        // single HashMap call), so a poisoned lock is still safe to use.
        self.map
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<K, Arc<InstanceStats>>> {
        self.map
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_counted_by_class_and_time_to_their_head() {
        let stats = InstanceStats::new();
        stats.record_response(200, Duration::from_millis(3));
        stats.record_response(204, Duration::from_millis(5));
        stats.record_response(404, Duration::from_millis(40));
        stats.record_response(502, Duration::from_secs(30));
        stats.record_response(101, Duration::from_micros(10));
        let snap = stats.snapshot();
        assert_eq!(snap.responses_by_class, [1, 2, 0, 1, 1]);
        // 10 µs, 3 ms and 5 ms (a bound belongs to its own bucket) in the first; 40 ms in the
        // 50 ms bucket; 30 s above the last bound.
        assert_eq!(snap.latency_buckets[0], 3);
        assert_eq!(snap.latency_buckets[3], 1);
        assert_eq!(snap.latency_buckets[LATENCY_BUCKETS - 1], 1);
        assert_eq!(snap.latency_buckets.iter().sum::<u64>(), 5);
        assert_eq!(
            snap.latency_sum_us,
            10 + 3_000 + 5_000 + 40_000 + 30_000_000
        );
        let mut total = snap;
        total.add(&snap);
        assert_eq!(total.responses_by_class, [2, 4, 0, 2, 2]);
        assert_eq!(total.latency_sum_us, 2 * snap.latency_sum_us);
    }

    #[test]
    fn guards_return_counters_to_zero() {
        let stats = Arc::new(InstanceStats::new());
        let mut request = RequestGuard::start(stats.clone());
        request.mark_event_stream();
        request.mark_event_stream();
        let upgrade = SessionGuard::start(stats.clone(), SessionKind::Upgrade);
        let snap = stats.snapshot();
        assert_eq!(snap.in_flight, 1);
        assert_eq!(snap.sessions, 2);
        assert_eq!(snap.event_streams, 1);
        assert_eq!(snap.websockets, 1);
        drop(request);
        drop(upgrade);
        let snap = stats.snapshot();
        assert!(snap.is_idle(), "{snap:?}");
        assert_eq!(snap.requests_total, 1);
        assert_eq!(snap.sessions_total, 2);
    }

    #[test]
    fn counters_are_exact_under_concurrency() {
        let stats = Arc::new(InstanceStats::new());
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let stats = stats.clone();
                std::thread::spawn(move || {
                    for i in 0..2_000 {
                        let mut guard = RequestGuard::start(stats.clone());
                        if i % 3 == 0 {
                            guard.mark_event_stream();
                        }
                        let _ws = (i % 5 == 0)
                            .then(|| SessionGuard::start(stats.clone(), SessionKind::Upgrade));
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("worker thread panicked");
        }
        let snap = stats.snapshot();
        assert!(snap.is_idle(), "{snap:?}");
        assert_eq!(snap.requests_total, 16_000);
        assert_eq!(snap.sessions_total, 8 * (667 + 400));
    }

    #[test]
    fn registry_sums_selected_instances() {
        let sessions: Sessions<(&str, u32)> = Sessions::new();
        let a0 = sessions.instance(("a", 0));
        let a1 = sessions.instance(("a", 1));
        let b0 = sessions.instance(("b", 0));
        assert!(Arc::ptr_eq(&a0, &sessions.instance(("a", 0))));
        let _s1 = SessionGuard::start(a0.clone(), SessionKind::Upgrade);
        let _s2 = SessionGuard::start(a1.clone(), SessionKind::EventStream);
        let _s3 = SessionGuard::start(b0.clone(), SessionKind::Upgrade);
        assert_eq!(sessions.total_where(|(v, _)| *v == "a").sessions, 2);
        assert_eq!(sessions.total_where(|_| true).sessions, 3);
        assert_eq!(sessions.snapshot().len(), 3);
        sessions.retain(|(v, _), _| *v != "b");
        assert!(sessions.get(&("b", 0)).is_none());
        assert_eq!(sessions.snapshot_of(&("a", 1)).map(|s| s.sessions), Some(1));
    }

    #[test]
    fn last_activity_moves_forward() {
        let stats = Arc::new(InstanceStats::new());
        let before = stats.last_activity();
        std::thread::sleep(Duration::from_millis(5));
        drop(RequestGuard::start(stats.clone()));
        assert!(stats.last_activity() > before);
    }
}
