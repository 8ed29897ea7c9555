//! The agent's live state, shared by the router, the poll loop and the stop sequence: what the
//! drain source last said, whether the agent is stopping, and the session counts.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use flotilla_core::lifecycle::VersionState;
use flotilla_proxy::InstanceStats;
use serde::Serialize;

use crate::identity::Identity;
use crate::source_health::SourceHealth;

/// Whether a version in `state` takes new sessions. `None` (no state recorded) does: a version
/// is only ever drained explicitly.
pub fn takes_new_sessions(state: Option<VersionState>) -> bool {
    !matches!(
        state,
        Some(VersionState::Draining | VersionState::Retired | VersionState::Failed)
    )
}

/// Live sessions of this instance at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SessionCounts {
    /// Open upgraded connections (WebSockets) through the agent.
    pub websockets: u64,
    /// Streaming `text/event-stream` responses through the agent.
    pub event_streams: u64,
    /// The `sessions` number the app last reported in its health document (0 if it reports none).
    pub app_reported: u64,
    /// Plain HTTP requests being served (not sessions; the stop sequence waits for them too).
    pub in_flight: u64,
}

impl SessionCounts {
    /// Live sessions: WebSockets, event streams and the app's own count. The app's number is
    /// added, not compared, so an app that also counts its WebSockets only makes the agent more
    /// careful: readiness only asks whether this is zero.
    pub fn sessions(&self) -> u64 {
        self.websockets + self.event_streams + self.app_reported
    }

    /// Whether nothing at all is live (no sessions and no request in flight).
    pub fn is_idle(&self) -> bool {
        self.sessions() == 0 && self.in_flight == 0
    }
}

/// State shared by every part of a running agent.
#[derive(Debug)]
pub(crate) struct LiveState {
    pub(crate) identity: Identity,
    pub(crate) stats: Arc<InstanceStats>,
    version: Mutex<Option<VersionState>>,
    draining: AtomicBool,
    stopping: AtomicBool,
    ready: AtomicBool,
    app_sessions: AtomicU64,
    /// The drain source as described for logs (`SSM /apps/...`).
    pub(crate) source_name: String,
    source_health: Mutex<SourceHealth>,
}

impl LiveState {
    pub(crate) fn new(identity: Identity, stats: Arc<InstanceStats>, source_name: String) -> Self {
        LiveState {
            source_name,
            source_health: Mutex::new(SourceHealth::default()),
            identity,
            stats,
            version: Mutex::new(None),
            draining: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            ready: AtomicBool::new(false),
            app_sessions: AtomicU64::new(0),
        }
    }

    /// Records what the drain source said.
    pub(crate) fn set_version_state(&self, state: Option<VersionState>) {
        *self
            .version
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = state;
        self.draining
            .store(!takes_new_sessions(state), Ordering::SeqCst);
    }

    /// The version's state as last read.
    pub(crate) fn version_state(&self) -> Option<VersionState> {
        *self
            .version
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether the version is draining (as last read).
    pub(crate) fn version_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Starts the stop sequence: from now on no new sessions.
    pub(crate) fn set_stopping(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// Whether SIGTERM (or SIGINT) arrived.
    pub(crate) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Whether requests without this version's affinity are refused.
    pub(crate) fn refusing(&self) -> bool {
        self.version_draining() || self.stopping()
    }

    pub(crate) fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// Whether the last poll found this instance ready to stop.
    pub(crate) fn ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// Changes the drain source's record (the poll loop does, once per poll).
    pub(crate) fn update_source_health<T>(&self, change: impl FnOnce(&mut SourceHealth) -> T) -> T {
        change(
            &mut self
                .source_health
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }

    /// The drain source's record as of the last poll.
    pub(crate) fn source_health(&self) -> SourceHealth {
        self.source_health
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    pub(crate) fn set_app_sessions(&self, sessions: u64) {
        self.app_sessions.store(sessions, Ordering::SeqCst);
    }

    /// The sessions live now.
    pub(crate) fn counts(&self) -> SessionCounts {
        let snapshot = self.stats.snapshot();
        SessionCounts {
            websockets: snapshot.websockets,
            event_streams: snapshot.event_streams,
            app_reported: self.app_sessions.load(Ordering::SeqCst),
            in_flight: snapshot.in_flight,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_states_take_new_sessions() {
        let check = |state: Option<VersionState>, takes: bool| {
            assert_eq!(takes_new_sessions(state), takes, "{state:?}");
        };
        check(None, true);
        check(Some(VersionState::Deploying), true);
        check(Some(VersionState::Active), true);
        check(Some(VersionState::Draining), false);
        check(Some(VersionState::Retired), false);
        check(Some(VersionState::Failed), false);
    }

    #[test]
    fn session_totals() {
        let counts = SessionCounts {
            websockets: 1,
            event_streams: 2,
            app_reported: 3,
            in_flight: 4,
        };
        assert_eq!(counts.sessions(), 6);
        assert!(!counts.is_idle());
        let only_requests = SessionCounts {
            in_flight: 1,
            ..Default::default()
        };
        assert_eq!(only_requests.sessions(), 0);
        assert!(!only_requests.is_idle());
        assert!(SessionCounts::default().is_idle());
    }
}
