//! ECS task scale-in protection while the task holds sessions.
//!
//! Under autoscaling, ECS picks which tasks a scale-in stops; a task whose tabs still talk to it
//! should not be one of them. With [`AgentSettings::scale_in_protection`](crate::AgentSettings)
//! set (flotilla sets `FLOTILLA_SCALE_IN_PROTECTION=true` in the task when `[aws] max_count` is),
//! each poll the agent decides ([`ScaleInProtection::decide`], pure) and tells the ECS agent
//! endpoint of its task (`PUT $ECS_AGENT_URI/task-protection/v1/state`):
//! - protected while any session is live, and for the drain grace after the last one ended (a
//!   tab that reconnects within it finds the task still there);
//! - renewed well before it expires ([`PROTECTION_MINUTES`], renewed with [`RENEW_BEFORE`] left),
//!   so a stuck agent cannot keep a task forever;
//! - released once the grace has passed with no session, and at once when the version is
//!   retired or failed (the reaper's scale to zero must not wait for the protection to lapse).
//!
//! A Spot interruption ignores protection; the stop sequence handles it (see [`crate::run`]).

use std::time::Duration;

use flotilla_core::Timestamp;
use serde_json::json;

use crate::http::HttpClient;

/// How long one protection lasts before ECS drops it by itself.
pub const PROTECTION_MINUTES: u32 = 60;

/// A protection with less than this left is renewed.
pub const RENEW_BEFORE: Duration = Duration::from_secs(15 * 60);

/// The path of the ECS agent's task protection endpoint under `ECS_AGENT_URI`.
pub const PROTECTION_PATH: &str = "/task-protection/v1/state";

/// What to tell the ECS agent this poll.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtectionAction {
    /// Protect the task for this many minutes from now.
    Enable {
        /// Minutes.
        minutes: u32,
    },
    /// Drop the protection.
    Disable,
}

/// What the agent knows of its task's protection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScaleInProtection {
    /// When the protection it set lapses; `None` when it holds none.
    held_until: Option<Timestamp>,
    /// When a session was last seen live.
    last_session: Option<Timestamp>,
}

impl ScaleInProtection {
    /// What to do at `now` with `live` sessions, given the drain `grace`; `retiring` when the
    /// version is retired or failed. `None`: nothing to change.
    pub fn decide(
        &mut self,
        now: Timestamp,
        live: u64,
        retiring: bool,
        grace: Duration,
    ) -> Option<ProtectionAction> {
        if live > 0 {
            self.last_session = Some(now);
        }
        let recent = self.last_session.is_some_and(|at| now.since(at) <= grace);
        let wanted = !retiring && recent;
        match (wanted, self.held_until) {
            (true, None) => Some(ProtectionAction::Enable {
                minutes: PROTECTION_MINUTES,
            }),
            (true, Some(until)) if until.since(now) < RENEW_BEFORE => {
                Some(ProtectionAction::Enable {
                    minutes: PROTECTION_MINUTES,
                })
            }
            (false, Some(_)) => Some(ProtectionAction::Disable),
            _ => None,
        }
    }

    /// Records that `action` took effect at `now`.
    pub fn applied(&mut self, action: ProtectionAction, now: Timestamp) {
        self.held_until = match action {
            ProtectionAction::Enable { minutes } => {
                Some(now.plus(Duration::from_secs(u64::from(minutes) * 60)))
            }
            ProtectionAction::Disable => None,
        };
    }

    /// Whether the agent holds a protection.
    pub fn is_held(&self) -> bool {
        self.held_until.is_some()
    }
}

/// Tells the ECS agent at `agent_uri` to carry out `action`. The endpoint answers 200 with
/// `protection` on success, or with `failure` / `error` when ECS refused (e.g. the task role
/// lacks `ecs:UpdateTaskProtection`); both are errors here, with ECS's words.
pub async fn apply(
    client: &HttpClient,
    agent_uri: &str,
    action: ProtectionAction,
) -> Result<(), String> {
    let body = match action {
        ProtectionAction::Enable { minutes } => {
            json!({ "ProtectionEnabled": true, "ExpiresInMinutes": minutes })
        }
        ProtectionAction::Disable => json!({ "ProtectionEnabled": false }),
    };
    let url = format!("{}{PROTECTION_PATH}", agent_uri.trim_end_matches('/'));
    let fetched = client
        .put_json(&url, &body.to_string(), Duration::from_secs(5))
        .await
        .map_err(|e| format!("PUT {url}: {e}"))?;
    let answer: serde_json::Value = serde_json::from_slice(&fetched.body).unwrap_or_default();
    if fetched.status.is_success() && answer.get("protection").is_some() {
        return Ok(());
    }
    let reason = answer
        .get("failure")
        .or_else(|| answer.get("error"))
        .map_or_else(
            || String::from_utf8_lossy(&fetched.body).into_owned(),
            ToString::to_string,
        );
    Err(format!("PUT {url} answered {}: {reason}", fetched.status))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(30);

    fn at(seconds: u64) -> Timestamp {
        Timestamp::from_millis(1_000_000 + seconds * 1000)
    }

    /// Runs `decide` and applies what it says, returning it.
    fn step(
        p: &mut ScaleInProtection,
        t: u64,
        live: u64,
        retiring: bool,
    ) -> Option<ProtectionAction> {
        let action = p.decide(at(t), live, retiring, GRACE);
        if let Some(action) = action {
            p.applied(action, at(t));
        }
        action
    }

    #[test]
    fn protected_while_sessions_live_and_for_the_grace_after() {
        let mut p = ScaleInProtection::default();
        assert_eq!(
            step(&mut p, 0, 0, false),
            None,
            "nothing live: nothing to hold"
        );
        assert_eq!(
            step(&mut p, 5, 2, false),
            Some(ProtectionAction::Enable { minutes: 60 })
        );
        assert_eq!(step(&mut p, 10, 1, false), None, "already held");
        assert_eq!(step(&mut p, 15, 0, false), None, "within the grace");
        assert_eq!(
            step(&mut p, 40, 0, false),
            None,
            "30 s after the last session"
        );
        assert_eq!(step(&mut p, 41, 0, false), Some(ProtectionAction::Disable));
        assert!(!p.is_held());
        assert_eq!(step(&mut p, 50, 0, false), None);
    }

    #[test]
    fn a_long_session_renews_the_protection_before_it_lapses() {
        let mut p = ScaleInProtection::default();
        assert!(step(&mut p, 0, 1, false).is_some());
        // 60 minutes held; renewed once fewer than 15 remain.
        assert_eq!(step(&mut p, 45 * 60, 1, false), None);
        assert_eq!(
            step(&mut p, 45 * 60 + 1, 1, false),
            Some(ProtectionAction::Enable { minutes: 60 })
        );
        assert_eq!(step(&mut p, 46 * 60, 1, false), None);
    }

    #[test]
    fn a_retired_version_releases_at_once_even_with_sessions() {
        let mut p = ScaleInProtection::default();
        assert!(step(&mut p, 0, 3, false).is_some());
        assert_eq!(step(&mut p, 5, 3, true), Some(ProtectionAction::Disable));
        assert_eq!(step(&mut p, 10, 3, true), None, "and never takes it again");
    }

    #[test]
    fn a_failed_release_is_tried_again() {
        let mut p = ScaleInProtection::default();
        assert!(step(&mut p, 0, 1, false).is_some());
        // The release is decided but the PUT fails: not applied.
        assert_eq!(
            p.decide(at(100), 0, false, GRACE),
            Some(ProtectionAction::Disable)
        );
        assert_eq!(
            p.decide(at(105), 0, false, GRACE),
            Some(ProtectionAction::Disable)
        );
    }
}
