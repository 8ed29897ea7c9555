//! The switch that skips the slow tests locally: set `FLOTILLA_SKIP_SLOW_TESTS=1` and every test
//! that starts a slow harness (moto, a private Docker Engine, the Lambda emulator, Chromium)
//! returns at once, saying so, as rust-analyzer's `skip_slow_tests()` does. CI never sets it, and a
//! test run with it set under CI (`CI` in the environment) fails instead of skipping.
//!
//! A slow test opens with `if flotilla_testkit::slow::skip("moto") { return; }`.

use std::io::Write as _;

/// The environment variable that turns the slow tests off.
pub const SKIP_VAR: &str = "FLOTILLA_SKIP_SLOW_TESTS";

/// Whether `value` (of [`SKIP_VAR`]) asks for skipping: set, and neither empty nor `0`.
fn asks_to_skip(value: Option<&str>) -> bool {
    value.is_some_and(|v| !v.is_empty() && v != "0")
}

/// Whether the calling test should return at once because [`SKIP_VAR`] is set; `harness` names
/// what makes it slow. A skipped test prints its name and why to the test process's stderr
/// directly (past libtest's capture, so the skip shows in the run's output). Panics when CI (the
/// `CI` variable) asks for a skip: CI must run every test.
pub fn skip(harness: &str) -> bool {
    let value = std::env::var(SKIP_VAR).ok();
    if !asks_to_skip(value.as_deref()) {
        return false;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{SKIP_VAR} is set under CI, which must run every test; unset it"
    );
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("a test");
    // One write, so that lines of tests running in parallel do not interleave.
    let line =
        format!("skipped {test}: it needs {harness}, and {SKIP_VAR} is set (unset it to run it)\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
    true
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_a_set_non_zero_value_skips() {
        for (value, skips) in [
            (None, false),
            (Some(""), false),
            (Some("0"), false),
            (Some("1"), true),
            (Some("yes"), true),
        ] {
            assert_eq!(super::asks_to_skip(value), skips, "{value:?}");
        }
    }
}
