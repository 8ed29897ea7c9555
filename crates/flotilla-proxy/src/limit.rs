//! The connection limit shared by every server given the same [`ConnectionLimit`], and the rate
//! limiter that keeps overload warnings to a line every few seconds.
//!
//! A host router runs one server per worker thread. Giving each its own limit would let the
//! workers together open more connections than the process has file descriptors; one
//! [`ConnectionLimit`], cloned into each worker's [`crate::ProxyConfig`], caps them together.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

/// Connections accepted beyond the limit that may be waiting for their `503` at once, by default;
/// past this, extra connections are closed without a response.
pub const DEFAULT_OVERFLOW: usize = 128;

/// How often, at most, one kind of overload warning is logged.
const WARN_EVERY: Duration = Duration::from_secs(5);

/// The most client connections open at once, shared by every clone (and so by every server whose
/// config holds a clone).
///
/// Each open connection holds one permit from the accept until the connection (and any
/// WebSocket it upgraded into) is gone. A connection accepted with no permit left gets one `503`
/// (`Retry-After: 1`) and is closed; at most `overflow` such refusals are pending at once, and
/// beyond that an extra connection is closed at once.
#[derive(Clone)]
pub struct ConnectionLimit {
    inner: Arc<Inner>,
}

struct Inner {
    max: usize,
    overflow: usize,
    permits: Arc<Semaphore>,
    refusals: Arc<Semaphore>,
    accept_errors: Mutex<WarnLimiter>,
    over_limit: Mutex<WarnLimiter>,
}

impl std::fmt::Debug for ConnectionLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionLimit")
            .field("max", &self.inner.max)
            .field("overflow", &self.inner.overflow)
            .field("open", &self.open())
            .finish()
    }
}

impl ConnectionLimit {
    /// A limit of `max` connections (at least 1), with [`DEFAULT_OVERFLOW`] pending refusals.
    pub fn new(max: usize) -> Self {
        Self::with_overflow(max, DEFAULT_OVERFLOW)
    }

    /// A limit of `max` connections (at least 1) and at most `overflow` refusals (`503`s being
    /// written) at once. Each refusal holds a file descriptor while it lasts.
    pub fn with_overflow(max: usize, overflow: usize) -> Self {
        let max = max.max(1);
        ConnectionLimit {
            inner: Arc::new(Inner {
                max,
                overflow,
                permits: Arc::new(Semaphore::new(max)),
                refusals: Arc::new(Semaphore::new(overflow)),
                accept_errors: Mutex::new(WarnLimiter::new(WARN_EVERY)),
                over_limit: Mutex::new(WarnLimiter::new(WARN_EVERY)),
            }),
        }
    }

    /// The most connections open at once.
    pub fn max(&self) -> usize {
        self.inner.max
    }

    /// The most refusals pending at once.
    pub fn overflow(&self) -> usize {
        self.inner.overflow
    }

    /// Connections open now (holding a permit).
    pub fn open(&self) -> usize {
        self.inner.max - self.inner.permits.available_permits()
    }

    pub(crate) fn permits(&self) -> &Arc<Semaphore> {
        &self.inner.permits
    }

    pub(crate) fn refusals(&self) -> &Arc<Semaphore> {
        &self.inner.refusals
    }

    /// Whether to log an accept error now; `Some(n)` with the number of errors not logged since
    /// the last line.
    pub(crate) fn log_accept_error(&self) -> Option<u64> {
        lock(&self.inner.accept_errors).hit(Instant::now())
    }

    /// Whether to log a refusal over the limit now; `Some(n)` as for accept errors.
    pub(crate) fn log_over_limit(&self) -> Option<u64> {
        lock(&self.inner.over_limit).hit(Instant::now())
    }
}

impl Default for ConnectionLimit {
    /// 10 000 connections, for a server on its own. A host router derives its limit from the
    /// file-descriptor limit instead.
    fn default() -> Self {
        ConnectionLimit::new(10_000)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Lets one event through per `every`, counting those held back in between, so a flood of the
/// same warning becomes one line every few seconds that says how many it stands for.
#[derive(Debug, Clone)]
pub struct WarnLimiter {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl WarnLimiter {
    /// A limiter letting one event through per `every`.
    pub fn new(every: Duration) -> Self {
        WarnLimiter {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// Records one event at `now`: `Some(suppressed)` if it should be logged (with how many were
    /// held back since the last logged one), `None` if it is held back.
    pub fn hit(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < self.every => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warn_limiter_lets_one_line_through_per_interval_and_counts_the_rest() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut limiter = WarnLimiter::new(Duration::from_secs(5));
        // (time in ms, expected answer)
        let table = [
            (0, Some(0)),
            (100, None),
            (200, None),
            (4_999, None),
            (5_000, Some(3)),
            (5_001, None),
            (20_000, Some(1)),
            (20_001, None),
            (26_000, Some(1)),
            (40_000, Some(0)),
        ];
        for (ms, expected) in table {
            assert_eq!(limiter.hit(at(ms)), expected, "at {ms} ms");
        }
    }

    #[test]
    fn a_limit_counts_open_connections_across_clones() {
        let limit = ConnectionLimit::with_overflow(2, 1);
        let other = limit.clone();
        let a = limit.permits().clone().try_acquire_owned().expect("first");
        let b = other.permits().clone().try_acquire_owned().expect("second");
        assert_eq!(limit.open(), 2);
        assert!(other.permits().clone().try_acquire_owned().is_err());
        drop(a);
        assert_eq!(other.open(), 1);
        drop(b);
        assert_eq!(ConnectionLimit::new(0).max(), 1, "a limit is at least 1");
    }
}
