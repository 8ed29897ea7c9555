//! The SSM drain source against moto: the agent reads `/apps/<name>/<id>/state` and writes
//! `/apps/<name>/<id>/tasks/<task>` only when its readiness changes. And the drain board: the
//! same behaviour when the state comes from one S3 object, and a broken board in the health
//! document.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_ssm::types::ParameterType;
use flotilla_agent::StopSignal;
use flotilla_aws::agent_ssm::SsmDrainSource;
use flotilla_aws::{AwsSettings, CallCounter, Clients};
use flotilla_core::DeploymentName;
use flotilla_testkit::moto::Moto;

use crate::util::{self, Agent, ID, get, health_until, websocket};

const STATE: &str = "/apps/shop/20261125-190633-k3x9/state";
const TASK: &str = "/apps/shop/20261125-190633-k3x9/tasks/task-1";

fn count(counter: &CallCounter, operation: &str) -> u64 {
    counter
        .snapshot()
        .iter()
        .filter(|(key, _)| key.ends_with(&format!(".{operation}")))
        .map(|(_, n)| n)
        .sum()
}

async fn task_parameter(ssm: &aws_sdk_ssm::Client) -> Option<String> {
    ssm.get_parameter()
        .name(TASK)
        .send()
        .await
        .ok()
        .and_then(|out| out.parameter().and_then(|p| p.value()).map(str::to_owned))
}

async fn put_state(ssm: &aws_sdk_ssm::Client, state: &str) {
    ssm.put_parameter()
        .name(STATE)
        .value(state)
        .r#type(ParameterType::String)
        .overwrite(true)
        .send()
        .await
        .expect("put state");
}

#[tokio::test]
async fn the_ssm_source_drives_draining_and_readiness_against_moto() {
    if flotilla_testkit::slow::skip("moto") {
        return;
    }
    let moto = tokio::task::spawn_blocking(Moto::start)
        .await
        .expect("moto");
    let mut aws = AwsSettings::new(DeploymentName::new("shop").expect("valid"));
    aws.region = Some("us-east-1".to_owned());
    aws.endpoint_url = Some(moto.url());
    aws.max_attempts = 2;
    let config = flotilla_aws::sdk_config_with(&aws, |l| {
        l.credentials_provider(aws_sdk_ssm::config::Credentials::new(
            "testing", "testing", None, None, "moto",
        ))
    })
    .await;
    let ssm = Clients::new(&config).ssm;
    let counter = CallCounter::new();
    let source = Arc::new(SsmDrainSource::new(Clients::counted(&config, &counter).ssm));

    // No state parameter yet: the agent serves, and says it does not know the state.
    let mut agent = Agent::start(util::settings(&[]), source).await;
    health_until(agent.addr, "a first poll", |_, _| {
        count(&counter, "GetParameter") > 0
    })
    .await;
    let doc = get(agent.addr, "/healthz", &[])
        .await
        .expect("health")
        .json();
    assert_eq!(doc["state"], "unknown");
    assert_eq!(doc["draining"], false);

    put_state(&ssm, "active").await;
    health_until(agent.addr, "active", |_, d| d["state"] == "active").await;
    let mut ws = websocket(agent.addr, &format!("/ws?flotilla_deployment={ID}"))
        .await
        .expect("ws");
    util::echo(&mut ws, "hello").await;

    put_state(&ssm, "draining").await;
    health_until(agent.addr, "draining", |_, d| d["draining"] == true).await;
    let fresh = get(agent.addr, "/", &[]).await.expect("fresh");
    assert_eq!(fresh.status, 503);
    // Past the grace period with a session open: nothing written.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(task_parameter(&ssm).await, None);
    assert_eq!(count(&counter, "PutParameter"), 0);

    ws.close(None).await.expect("close");
    util::eventually("readiness draining in SSM", || async {
        (task_parameter(&ssm).await.as_deref() == Some("draining")).then_some(())
    })
    .await;
    // Many polls later, still one write.
    let reads = count(&counter, "GetParameter");
    util::eventually("more polls", || async {
        (count(&counter, "GetParameter") >= reads + 5).then_some(())
    })
    .await;
    assert_eq!(count(&counter, "PutParameter"), 1);

    // A tab comes back: healthy again, one more write.
    let _back = websocket(agent.addr, &format!("/ws?flotilla_deployment={ID}"))
        .await
        .expect("reconnect with affinity");
    util::eventually("readiness healthy in SSM", || async {
        (task_parameter(&ssm).await.as_deref() == Some("healthy")).then_some(())
    })
    .await;
    assert_eq!(count(&counter, "PutParameter"), 2);

    agent.signal(StopSignal::Terminate).await;
    let outcome = agent.outcome().await;
    assert_eq!(outcome.exit_code, 143);
    drop(moto);
}

#[tokio::test]
async fn the_board_source_drives_draining_and_readiness_and_a_broken_board_shows_in_health() {
    use flotilla_aws::drain_board::{BoardDrainSource, board_key, publish};
    use flotilla_core::DeploymentId;
    use flotilla_core::lifecycle::VersionState;

    if flotilla_testkit::slow::skip("moto") {
        return;
    }
    let moto = tokio::task::spawn_blocking(Moto::start)
        .await
        .expect("moto");
    let name = DeploymentName::new("shop").expect("valid");
    let id = DeploymentId::new(ID).expect("valid");
    let mut aws = AwsSettings::new(name.clone());
    aws.region = Some("us-east-1".to_owned());
    aws.endpoint_url = Some(moto.url());
    aws.max_attempts = 2;
    let config = flotilla_aws::sdk_config_with(&aws, |l| {
        l.credentials_provider(aws_sdk_ssm::config::Credentials::new(
            "testing", "testing", None, None, "moto",
        ))
    })
    .await;
    let clients = Clients::new(&config);
    let bucket = "flotilla-shop-board";
    clients
        .s3
        .create_bucket()
        .bucket(bucket)
        .send()
        .await
        .expect("bucket");
    // What the state store does: SSM first, then the board.
    let record = |state: &'static str| {
        let clients = clients.clone();
        let (name, id) = (name.clone(), id.clone());
        async move {
            put_state(&clients.ssm, state).await;
            let state: VersionState = state.parse().expect("state");
            publish(&clients.s3, &clients.ssm, bucket, &name, &id, Some(state))
                .await
                .expect("publish");
        }
    };
    record("active").await;

    let counter = CallCounter::new();
    let counted = Clients::counted(&config, &counter);
    let source = Arc::new(BoardDrainSource::new(
        counted.s3.clone(),
        counted.ssm.clone(),
        bucket.to_owned(),
    ));
    let mut agent = Agent::start(util::settings(&[]), source).await;
    let doc = health_until(agent.addr, "active", |_, d| d["state"] == "active").await;
    assert!(
        doc["drain_source"]["source"]
            .as_str()
            .is_some_and(|s| s.contains(&board_key(&name))),
        "{doc}"
    );
    let mut ws = websocket(agent.addr, &format!("/ws?flotilla_deployment={ID}"))
        .await
        .expect("ws");
    util::echo(&mut ws, "hello").await;

    record("draining").await;
    health_until(agent.addr, "draining", |_, d| d["draining"] == true).await;
    let fresh = get(agent.addr, "/", &[]).await.expect("fresh");
    assert_eq!(fresh.status, 503);
    ws.close(None).await.expect("close");
    util::eventually("readiness draining in SSM", || async {
        (task_parameter(&clients.ssm).await.as_deref() == Some("draining")).then_some(())
    })
    .await;
    // Every read came from the board (mostly 304s); SSM only took the readiness write.
    assert!(
        count(&counter, "GetObject") >= 3,
        "{:?}",
        counter.snapshot()
    );
    assert_eq!(
        count(&counter, "GetParameter"),
        0,
        "{:?}",
        counter.snapshot()
    );
    assert_eq!(count(&counter, "PutParameter"), 1);

    // A board that is not one (a human's mistake): the agent falls back to SSM, so it keeps
    // learning its state (SSM says draining), and shows what it works around.
    clients
        .s3
        .put_object()
        .bucket(bucket)
        .key(board_key(&name))
        .body(aws_sdk_s3::primitives::ByteStream::from_static(b"<html>"))
        .send()
        .await
        .expect("junk");
    counter.reset();
    let doc = health_until(agent.addr, "the board's failure worked around", |_, d| {
        d["drain_source"]["degraded"].is_string()
    })
    .await;
    let degraded = doc["drain_source"]["degraded"].as_str().unwrap_or_default();
    assert!(
        degraded.contains("not a drain board") && degraded.contains("from SSM instead"),
        "{doc}"
    );
    assert_eq!(doc["drain_source"]["ok"], true, "{doc}");
    assert_eq!(doc["draining"], true, "{doc}");
    assert_eq!(doc["state"], "draining", "{doc}");
    assert!(
        count(&counter, "GetParameter") >= 1,
        "the state came from SSM: {:?}",
        counter.snapshot()
    );

    // Once the board is one again the agent reads it alone, and says so.
    clients
        .s3
        .put_object()
        .bucket(bucket)
        .key(board_key(&name))
        .body(aws_sdk_s3::primitives::ByteStream::from(
            format!(r#"{{"generation":100,"versions":{{"{ID}":"draining"}}}}"#).into_bytes(),
        ))
        .send()
        .await
        .expect("a board again");
    let doc = health_until(agent.addr, "the board read again", |_, d| {
        d["drain_source"]["degraded"].is_null()
    })
    .await;
    assert_eq!(doc["drain_source"]["ok"], true, "{doc}");
    assert_eq!(doc["state"], "draining", "{doc}");
    counter.reset();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        count(&counter, "GetObject") >= 1,
        "{:?}",
        counter.snapshot()
    );
    assert_eq!(
        count(&counter, "GetParameter"),
        0,
        "the board alone: {:?}",
        counter.snapshot()
    );

    agent.signal(StopSignal::Terminate).await;
    let outcome = agent.outcome().await;
    assert_eq!(outcome.exit_code, 143);
    drop(moto);
}
