//! The CLI's glue over the real engine, driven by the engine's simulated provider: settings made
//! from a resolved config, status and verify rendering of real reports, and the exit code each
//! real workflow failure maps to.

use std::path::Path;
use std::time::Duration;

use flotilla_core::{DeploymentId, Timestamp, VersionState};
use flotilla_engine::ports::{ErrorKind, ImageRequest};
use flotilla_engine::sim::{Behavior, Sim};
use flotilla_engine::workflows::DeployRequest;
use flotilla_engine::{Engine, EngineError};

use crate::config::{self, Overrides, ProviderKind};
use crate::exit::{self, Exit};
use crate::output::{self, ProgressPrinter};
use crate::providers;
use crate::verify::{self, Expect, Via};

const CONFIG: &str = "\
name = \"shop\"
[app]
min_healthy = 2
health_timeout_seconds = 60
[host]
command = \"./run\"
instances = 2
";

fn setup() -> (config::Config, Sim, Engine) {
    let config = config::resolve_text(
        config::FILE_NAME,
        CONFIG,
        Path::new("/srv/shop"),
        &|_| None,
        &Overrides::default(),
    )
    .expect("valid config");
    let sim = Sim::new(config.name.clone(), Timestamp::from_secs(1_764_000_000));
    let engine = Engine::new(sim.ports(), providers::engine_settings(&config));
    (config, sim, engine)
}

fn request(config: &config::Config, id: &DeploymentId) -> DeployRequest {
    DeployRequest {
        id: id.clone(),
        image: ImageRequest::Build(config.root.clone()),
        instances: config.instances(),
        min_healthy: config.app.min_healthy,
        break_lock: false,
        env: Default::default(),
    }
}

fn classify(err: EngineError) -> Exit {
    exit::classify_for(&anyhow::Error::new(err).context("command failed"), None).0
}

#[tokio::test]
async fn two_deploys_render_as_status_and_plan_verify_checks() {
    let (config, sim, engine) = setup();
    let printer = ProgressPrinter::new(0);
    let v1 = DeploymentId::generate(sim.now(), 1);
    engine
        .deploy(request(&config, &v1), &printer)
        .await
        .expect("first deploy");
    sim.advance(Duration::from_secs(5));
    let v2 = DeploymentId::generate(sim.now(), 2);
    let outcome = engine
        .deploy(request(&config, &v2), &printer)
        .await
        .expect("second deploy");
    assert_eq!(outcome.draining, vec![v1.clone()]);

    let report = engine.status().await.expect("status");
    let text = output::status_text(&report, "host", sim.now());
    let line = |id: &DeploymentId| {
        text.lines()
            .find(|l| l.starts_with(id.as_str()))
            .unwrap_or_else(|| panic!("{id} missing from\n{text}"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    assert_eq!(line(&v2)[1..5], ["active", "100%", "2/2", "2/2"], "{text}");
    assert_eq!(line(&v1)[1..3], ["draining", "-"], "{text}");

    let checks = verify::plan(&report);
    assert_eq!(checks[0].via, Via::Fresh);
    assert_eq!(checks[0].expect, Expect::Served(vec![v2.clone()]));
    assert!(
        checks.iter().any(|c| c.via == Via::Query
            && c.id.as_ref() == Some(&v1)
            && c.expect == Expect::Served(vec![v1.clone()])),
        "{checks:?}"
    );
}

#[tokio::test]
async fn a_deploy_that_never_gets_healthy_exits_5_and_carries_the_logs() {
    let (config, sim, engine) = setup();
    sim.set_default_behavior(Behavior::NeverHealthy {
        start: Duration::from_secs(1),
    });
    let id = DeploymentId::generate(sim.now(), 3);
    sim.add_logs(&id, &["listening on 0.0.0.0:3000", "GET /healthz 500"]);
    let err = engine
        .deploy(request(&config, &id), &ProgressPrinter::new(0))
        .await
        .expect_err("never healthy");
    let EngineError::NotHealthy { logs, .. } = &err else {
        panic!("unexpected {err}");
    };
    assert!(
        !logs.is_empty(),
        "the failing instance's logs come with the error"
    );
    assert_eq!(classify(err), Exit::NotHealthy);
    assert!(sim.view().in_state(VersionState::Deploying).is_empty());
}

#[tokio::test]
async fn a_held_lock_exits_4_and_an_unknown_version_exits_6() {
    let (config, sim, engine) = setup();
    let ports = sim.ports();
    ports
        .state
        .acquire_lock(
            "ci@runner (pid 7)",
            sim.now(),
            Duration::from_secs(600),
            false,
        )
        .await
        .expect("lock");
    let id = DeploymentId::generate(sim.now(), 4);
    let err = engine
        .deploy(request(&config, &id), &ProgressPrinter::new(0))
        .await
        .expect_err("lock held");
    assert!(err.to_string().contains("ci@runner (pid 7)"), "{err}");
    assert_eq!(classify(err), Exit::Locked);

    ports
        .state
        .release_lock("ci@runner (pid 7)")
        .await
        .expect("unlock");
    let err = engine
        .drain(id, &ProgressPrinter::new(0))
        .await
        .expect_err("no such version");
    assert_eq!(classify(err), Exit::Refused);
}

/// A deploy on AWS that could not reach its provider once ended with a hint to run
/// `flotilla host serve`.
#[tokio::test]
async fn an_unreachable_provider_gets_the_hint_of_the_provider_in_use() {
    let (config, sim, engine) = setup();
    sim.fail_call(1, ErrorKind::Unavailable);
    let id = DeploymentId::generate(sim.now(), 5);
    let err = anyhow::Error::new(
        engine
            .deploy(request(&config, &id), &ProgressPrinter::new(0))
            .await
            .expect_err("unreachable"),
    )
    .context("deploy failed");
    let (code, aws) = exit::classify_for(&err, Some(ProviderKind::Aws));
    assert_eq!(code, Exit::Provider);
    let aws = aws.expect("a hint");
    assert!(!aws.contains("host"), "{aws}");
    assert!(aws.contains("AWS cannot be reached"), "{aws}");
    let host = exit::classify_for(&err, Some(ProviderKind::Host))
        .1
        .expect("a hint");
    assert!(host.contains("flotilla host serve"), "{host}");
}
