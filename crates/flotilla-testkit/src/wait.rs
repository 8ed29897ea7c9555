//! Waiting for something a test started to happen, bounded in time.

use std::time::{Duration, Instant};

/// How often [`eventually`] and [`until`] look again.
const POLL: Duration = Duration::from_millis(50);

/// Calls `check` until it returns `Some` (then that value) or `within` has passed (then `None`).
/// `check` runs at least once, and once more after the deadline.
pub fn eventually<T>(within: Duration, check: impl FnMut() -> Option<T>) -> Option<T> {
    eventually_every(within, POLL, check)
}

/// Like [`eventually`], looking again every `poll` (for a check that is costly to make, such as a
/// request to a server that is still starting).
pub fn eventually_every<T>(
    within: Duration,
    poll: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(poll);
    }
}

/// Like [`eventually`], but panics naming `what` when `within` passes.
pub fn until<T>(what: &str, within: Duration, check: impl FnMut() -> Option<T>) -> T {
    eventually(within, check)
        .unwrap_or_else(|| panic!("timed out after {within:?} waiting for {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_the_first_value_and_gives_up_at_the_deadline() {
        let mut calls = 0;
        let got = eventually(Duration::from_secs(5), || {
            calls += 1;
            (calls == 3).then_some(calls)
        });
        assert_eq!(got, Some(3));
        let started = Instant::now();
        assert_eq!(eventually(Duration::from_millis(120), || None::<()>), None);
        assert!(started.elapsed() >= Duration::from_millis(120));
    }

    #[test]
    #[should_panic(expected = "waiting for the moon")]
    fn until_names_what_it_waited_for() {
        until("the moon", Duration::from_millis(10), || None::<()>);
    }
}
