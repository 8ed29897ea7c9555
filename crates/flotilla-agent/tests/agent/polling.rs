//! The poll loop with a scripted drain source: back-off on throttling, writes only on change.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use flotilla_agent::{DrainError, DrainErrorKind, DrainSource, Identity};
use flotilla_core::drain::Readiness;
use flotilla_core::lifecycle::VersionState;

use crate::util::{self, Agent};

#[derive(Default)]
struct Script {
    throttle: bool,
    state: Option<VersionState>,
    reads: Vec<Instant>,
    writes: Vec<Readiness>,
}

#[derive(Default)]
struct Fake(Mutex<Script>);

impl Fake {
    fn with<T>(&self, f: impl FnOnce(&mut Script) -> T) -> T {
        f(&mut self.0.lock().expect("script"))
    }
}

#[async_trait]
impl DrainSource for Fake {
    fn describe(&self, _who: &Identity) -> String {
        "a scripted source".to_owned()
    }
    async fn read_state(&self, _who: &Identity) -> Result<Option<VersionState>, DrainError> {
        self.with(|s| {
            s.reads.push(Instant::now());
            if s.throttle {
                Err(DrainError::new(
                    DrainErrorKind::Throttled,
                    "read drain state",
                    "scripted",
                    "ThrottlingException: Rate exceeded",
                ))
            } else {
                Ok(s.state)
            }
        })
    }
    async fn write_readiness(&self, _who: &Identity, r: Readiness) -> Result<(), DrainError> {
        self.with(|s| s.writes.push(r));
        Ok(())
    }
}

async fn reads_at_least(fake: &Fake, n: usize) -> Vec<Instant> {
    util::eventually("enough polls", || async {
        let reads = fake.with(|s| s.reads.clone());
        (reads.len() >= n).then_some(reads)
    })
    .await
}

#[tokio::test]
async fn throttling_doubles_the_wait_and_a_success_restores_the_pace() {
    let fake = Arc::new(Fake::default());
    fake.with(|s| s.throttle = true);
    let mut settings = util::settings(&[]);
    settings.drain_poll = Duration::from_millis(60);
    let _agent = Agent::start(settings, fake.clone()).await;

    let reads = reads_at_least(&fake, 6).await;
    let gaps: Vec<Duration> = reads.windows(2).map(|w| w[1] - w[0]).collect();
    // Sleeps never end early, so each wait is at least its jittered minimum: 0.8 × 60 ms × 2^n
    // after the n-th throttled read in a row (without back-off every wait would be ~60 ms).
    for (n, gap) in gaps.iter().take(5).enumerate() {
        let floor = Duration::from_millis(60 * 8 / 10 * (2 << n));
        assert!(
            *gap >= floor,
            "wait {n} must be at least {floor:?}: {gaps:?}"
        );
    }
    fake.with(|s| {
        s.throttle = false;
        s.state = Some(VersionState::Active);
    });
    let seen = fake.with(|s| s.reads.len());
    let reads = reads_at_least(&fake, seen + 4).await;
    let last = reads[reads.len() - 1] - reads[reads.len() - 2];
    assert!(
        last < Duration::from_millis(300),
        "back to the normal pace: {last:?}"
    );
}

#[tokio::test]
async fn readiness_is_written_only_when_it_changes() {
    let fake = Arc::new(Fake::default());
    fake.with(|s| s.state = Some(VersionState::Draining));
    let mut settings = util::settings(&[]);
    settings.drain_poll = Duration::from_millis(40);
    settings.drain_grace = Duration::ZERO;
    let _agent = Agent::start(settings, fake.clone()).await;

    reads_at_least(&fake, 10).await;
    assert_eq!(
        fake.with(|s| s.writes.clone()),
        vec![Readiness::ShutdownReady]
    );

    // Rolled back to active: one write back to healthy, then nothing while it stays so.
    fake.with(|s| s.state = Some(VersionState::Active));
    let seen = fake.with(|s| s.reads.len());
    reads_at_least(&fake, seen + 10).await;
    assert_eq!(
        fake.with(|s| s.writes.clone()),
        vec![Readiness::ShutdownReady, Readiness::Healthy]
    );
}
