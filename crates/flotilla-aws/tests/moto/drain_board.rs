//! The drain board against moto: that moto answers the conditional requests the board relies on
//! (so the tests below prove something), that every recorded state reaches the board with racing
//! writers losing nothing, that an interrupted publish heals, and that the agent's board source
//! reads with conditional GETs and falls back to SSM.

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_ssm::types::ParameterType;
use aws_smithy_runtime_api::client::result::SdkError;
use flotilla_agent::{DrainSource, Identity};
use flotilla_aws::drain_board::{BUCKET_ENV, Board, BoardDrainSource, board_key, read_board};
use flotilla_core::lifecycle::VersionState;
use flotilla_core::{InstanceId, names};
use flotilla_engine::ports::VersionRecord;

use crate::support::{World, next_id};

/// The HTTP status a call got (200 for any success).
fn status<E: std::fmt::Debug, R>(
    result: Result<R, SdkError<E, aws_smithy_runtime_api::http::Response>>,
) -> u16 {
    match result {
        Ok(_) => 200,
        Err(err) => err
            .raw_response()
            .map(|r| r.status().as_u16())
            .unwrap_or_else(|| panic!("no response: {err:?}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_answers_the_conditional_gets_and_puts_the_board_relies_on() {
    if flotilla_testkit::slow::skip("moto") {
        return;
    }
    let w = World::new("cond").await;
    let s3 = &w.clients.s3;
    let (bucket, key) = (&w.board_bucket, "drain/probe.json");
    let put = |body: &'static str| {
        s3.put_object()
            .bucket(bucket)
            .key(key)
            .body(ByteStream::from_static(body.as_bytes()))
    };
    // Creating only if absent: the first wins, the second is refused.
    assert_eq!(status(put("one").if_none_match("*").send().await), 200);
    assert_eq!(status(put("two").if_none_match("*").send().await), 412);
    let first = s3
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .expect("get");
    let etag = first.e_tag().expect("an ETag").to_owned();
    // An unchanged object: 304 and no body.
    let again = s3
        .get_object()
        .bucket(bucket)
        .key(key)
        .if_none_match(&etag)
        .send()
        .await;
    assert_eq!(status(again), 304);
    // Replacing only what was read: a stale ETag is refused, the current one accepted.
    assert_eq!(status(put("three").if_match(&etag).send().await), 200);
    assert_eq!(status(put("four").if_match(&etag).send().await), 412);
    let changed = s3
        .get_object()
        .bucket(bucket)
        .key(key)
        .if_none_match(&etag)
        .send()
        .await
        .expect("a changed object is served in full");
    assert_ne!(changed.e_tag(), Some(etag.as_str()));
    let body = changed.body.collect().await.expect("body").into_bytes();
    assert_eq!(&body[..], b"three");
    // A missing key is a 404 (the roles may list the bucket for this).
    let missing = s3
        .get_object()
        .bucket(bucket)
        .key("drain/none.json")
        .send()
        .await;
    assert_eq!(status(missing), 404);
}

async fn board(w: &World) -> Board {
    read_board(&w.clients.s3, &w.board_bucket, &board_key(&w.name))
        .await
        .expect("read board")
        .map(|(_, b)| b)
        .unwrap_or_default()
}

fn record(id: &flotilla_core::DeploymentId, state: VersionState) -> VersionRecord {
    let mut version = flotilla_core::lifecycle::Version::new(id.clone(), id.created_at());
    version.state = state;
    VersionRecord {
        version,
        image: None,
        instances: 2,
        ready_passes: 0,
        canary: None,
    }
}

async fn ssm_state(w: &World, id: &flotilla_core::DeploymentId) -> Option<VersionState> {
    w.clients
        .ssm
        .get_parameter()
        .name(names::state_parameter(&w.name, id))
        .send()
        .await
        .ok()
        .and_then(|o| o.parameter().and_then(|p| p.value()).map(str::to_owned))
        .map(|v| v.parse().expect("a state"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_writers_lose_no_state_and_the_board_ends_where_ssm_does() {
    if flotilla_testkit::slow::skip("moto") {
        return;
    }
    let w = World::new("race").await;
    // Eight versions written at once, each by its own store (as separate CLIs would be).
    let ids: Vec<_> = (0..8).map(|_| next_id()).collect();
    let mut writers = Vec::new();
    for id in &ids {
        let ports = w.ports();
        let r = record(id, VersionState::Active);
        writers.push(tokio::spawn(async move { ports.state.put(&r).await }));
    }
    for writer in writers {
        writer.await.expect("join").expect("put");
    }
    let b = board(&w).await;
    assert_eq!(b.versions.len(), 8, "{b:?}");
    assert!(b.versions.values().all(|s| *s == VersionState::Active));
    assert_eq!(b.generation, 8, "one write per change");

    // Many writers of one version's state at once, in no particular order: whichever SSM
    // write lands last, the board ends saying the same.
    let id = ids[0].clone();
    for round in 0..3 {
        let mut writers = Vec::new();
        for (i, state) in [
            VersionState::Draining,
            VersionState::Active,
            VersionState::Retired,
            VersionState::Draining,
            VersionState::Failed,
            VersionState::Active,
        ]
        .into_iter()
        .enumerate()
        {
            let ports = w.ports();
            let r = record(&id, state);
            writers.push(tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_millis(
                    ((i * 7 + round) % 5) as u64,
                ))
                .await;
                ports.state.put(&r).await
            }));
        }
        for writer in writers {
            writer.await.expect("join").expect("put");
        }
        let truth = ssm_state(&w, &id).await;
        assert_eq!(
            board(&w).await.versions.get(&id).copied(),
            truth,
            "round {round}"
        );
    }

    // A deleted version leaves the board.
    w.ports().state.delete(&ids[1]).await.expect("delete");
    let b = board(&w).await;
    assert!(!b.versions.contains_key(&ids[1]), "{b:?}");
    assert_eq!(b.versions.len(), 7);
}

/// Writes a parameter behind the state store's back.
async fn put_parameter(w: &World, name: String, value: String) {
    w.clients
        .ssm
        .put_parameter()
        .name(name)
        .value(value)
        .r#type(ParameterType::String)
        .overwrite(true)
        .send()
        .await
        .expect("put parameter");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_cut_short_by_a_crash_is_repaired_by_the_next_listing_or_write() {
    if flotilla_testkit::slow::skip("moto") {
        return;
    }
    let w = World::new("heal").await;
    let (id, gone) = (next_id(), next_id());
    let ports = w.ports();
    for v in [&id, &gone] {
        ports
            .state
            .put(&record(v, VersionState::Active))
            .await
            .expect("put");
    }
    // A run that wrote `draining` (record and state) and died before publishing, and a delete
    // that removed a version's parameters and died before publishing.
    let draining = record(&id, VersionState::Draining);
    put_parameter(
        &w,
        format!("{}record", names::version_parameter_prefix(&w.name, &id)),
        serde_json::to_string(&draining).expect("json"),
    )
    .await;
    put_parameter(&w, names::state_parameter(&w.name, &id), "draining".into()).await;
    w.clients
        .ssm
        .delete_parameters()
        .names(format!(
            "{}record",
            names::version_parameter_prefix(&w.name, &gone)
        ))
        .names(names::state_parameter(&w.name, &gone))
        .send()
        .await
        .expect("delete parameters");
    let b = board(&w).await;
    assert_eq!(
        b.versions.get(&id),
        Some(&VersionState::Active),
        "not published"
    );
    assert!(b.versions.contains_key(&gone));

    // Nobody writes that version again (a deploy only drains active versions): the next
    // listing, which every command and every reaper pass makes, repairs the board.
    let listing = w.counted_ports();
    w.counter.reset();
    let listed = listing.state.list().await.expect("list");
    assert_eq!(listed.len(), 1);
    let b = board(&w).await;
    assert_eq!(b.versions.get(&id), Some(&VersionState::Draining));
    assert!(!b.versions.contains_key(&gone), "{b:?}");
    // In step, a listing costs one GET of the board beyond its SSM pages.
    w.counter.reset();
    listing.state.list().await.expect("list");
    let calls = w.counter.snapshot();
    assert_eq!(calls.get("S3.GetObject"), Some(&1), "{calls:?}");
    assert_eq!(calls.get("S3.PutObject"), None, "{calls:?}");

    // The same through a write: the state store skips an unchanged `state` parameter, but a
    // record write still publishes when the board disagrees.
    put_parameter(&w, names::state_parameter(&w.name, &id), "active".into()).await;
    let rollback = record(&id, VersionState::Active);
    put_parameter(
        &w,
        format!("{}record", names::version_parameter_prefix(&w.name, &id)),
        serde_json::to_string(&rollback).expect("json"),
    )
    .await;
    let writer = w.counted_ports();
    let _ = writer.state.get(&id).await.expect("get"); // caches `active`
    w.counter.reset();
    writer.state.put(&rollback).await.expect("put");
    assert_eq!(
        board(&w).await.versions.get(&id),
        Some(&VersionState::Active)
    );
    let calls = w.counter.snapshot();
    assert_eq!(
        calls.get("SSM.PutParameter"),
        Some(&1),
        "only the record: {calls:?}"
    );
    assert_eq!(calls.get("S3.PutObject"), Some(&1), "{calls:?}");
    // Once in step, a record write costs one GET of the board and nothing more.
    w.counter.reset();
    writer.state.put(&rollback).await.expect("put");
    let calls = w.counter.snapshot();
    assert_eq!(
        calls.keys().cloned().collect::<Vec<_>>(),
        ["S3.GetObject", "SSM.PutParameter"],
        "{calls:?}"
    );
}

fn identity(w: &World, id: &flotilla_core::DeploymentId) -> Identity {
    Identity {
        name: w.name.clone(),
        id: id.clone(),
        instance: InstanceId::new("0123456789abcdef0123456789abcdef").expect("valid"),
    }
}

fn count(w: &World, op: &str) -> u64 {
    w.counter.snapshot().get(op).copied().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_reads_the_board_with_conditional_gets_and_falls_back_to_ssm() {
    if flotilla_testkit::slow::skip("moto") {
        return;
    }
    let w = World::new("agent").await;
    let id = next_id();
    let who = identity(&w, &id);
    let source = BoardDrainSource::new(
        w.counted.s3.clone(),
        w.counted.ssm.clone(),
        w.board_bucket.clone(),
    );
    assert!(source.describe(&who).contains(&w.board_bucket));

    // No board yet: the version's SSM parameter answers (none either).
    w.counter.reset();
    assert_eq!(source.read_state(&who).await.expect("read"), None);
    assert_eq!(
        (count(&w, "S3.GetObject"), count(&w, "SSM.GetParameter")),
        (1, 1)
    );

    // Recorded and published: read from the board, SSM untouched.
    let ports = w.ports();
    ports
        .state
        .put(&record(&id, VersionState::Active))
        .await
        .expect("put");
    w.counter.reset();
    assert_eq!(
        source.read_state(&who).await.expect("read"),
        Some(VersionState::Active)
    );
    // Unchanged: a 304 each time, still the same answer, still no SSM call.
    for _ in 0..3 {
        assert_eq!(
            source.read_state(&who).await.expect("read"),
            Some(VersionState::Active)
        );
    }
    assert_eq!(
        (count(&w, "S3.GetObject"), count(&w, "SSM.GetParameter")),
        (4, 0)
    );

    // Drained: the next read sees it.
    ports
        .state
        .put(&record(&id, VersionState::Draining))
        .await
        .expect("put");
    assert_eq!(
        source.read_state(&who).await.expect("read"),
        Some(VersionState::Draining)
    );

    // A board older than one already seen (a stale copy served late) is not acted on.
    let key = board_key(&w.name);
    let (_, current) = read_board(&w.clients.s3, &w.board_bucket, &key)
        .await
        .expect("read")
        .expect("a board");
    let mut stale = current.clone();
    stale.generation -= 1;
    stale.versions.insert(id.clone(), VersionState::Active);
    w.clients
        .s3
        .put_object()
        .bucket(&w.board_bucket)
        .key(&key)
        .body(ByteStream::from(stale.to_bytes()))
        .send()
        .await
        .expect("put stale board");
    assert_eq!(
        source.read_state(&who).await.expect("read"),
        Some(VersionState::Draining)
    );

    // A board deleted by hand and written again starts its generations over: once the agent has
    // seen it gone, the new one counts, whatever its generation.
    w.clients
        .s3
        .delete_object()
        .bucket(&w.board_bucket)
        .key(&key)
        .send()
        .await
        .expect("delete board");
    assert_eq!(
        source.read_state(&who).await.expect("read"),
        Some(VersionState::Draining),
        "no board: the SSM parameter"
    );
    ports
        .state
        .put(&record(&id, VersionState::Active))
        .await
        .expect("put");
    let (_, fresh) = read_board(&w.clients.s3, &w.board_bucket, &key)
        .await
        .expect("read")
        .expect("a board");
    assert!(fresh.generation < current.generation, "{fresh:?}");
    assert_eq!(
        source.read_state(&who).await.expect("read"),
        Some(VersionState::Active)
    );

    // A version the board does not list (recorded by a flotilla that did not publish): SSM.
    let other = next_id();
    let other_who = identity(&w, &other);
    w.clients
        .ssm
        .put_parameter()
        .name(names::state_parameter(&w.name, &other))
        .value("draining")
        .r#type(ParameterType::String)
        .overwrite(true)
        .send()
        .await
        .expect("put state");
    w.counter.reset();
    assert_eq!(
        source.read_state(&other_who).await.expect("read"),
        Some(VersionState::Draining)
    );
    assert_eq!(count(&w, "SSM.GetParameter"), 1);

    // A board that is not one (a human's mistake): the state comes from SSM, which the board
    // only copies, and the source says what it is working around (the health document shows it).
    assert_eq!(source.degraded(), None);
    w.clients
        .s3
        .put_object()
        .bucket(&w.board_bucket)
        .key(&key)
        .body(ByteStream::from_static(b"<html>"))
        .send()
        .await
        .expect("put junk");
    w.counter.reset();
    assert_eq!(
        source.read_state(&who).await.expect("SSM instead"),
        Some(VersionState::Active)
    );
    assert_eq!(count(&w, "SSM.GetParameter"), 1);
    let degraded = source.degraded().expect("the board's failure reported");
    assert!(
        degraded.contains("not a drain board") && degraded.contains(&key),
        "{degraded}"
    );

    // A bucket that does not exist is not taken for "no board": a failure, worked around the
    // same way.
    let wrong = BoardDrainSource::new(
        w.clients.s3.clone(),
        w.clients.ssm.clone(),
        "no-such-bucket".to_owned(),
    );
    assert_eq!(
        wrong.read_state(&who).await.expect("SSM instead"),
        Some(VersionState::Active)
    );
    assert!(
        wrong
            .degraded()
            .is_some_and(|d| d.contains("no-such-bucket")),
        "{:?}",
        wrong.degraded()
    );

    // A board again: read alone, nothing worked around.
    w.clients
        .s3
        .put_object()
        .bucket(&w.board_bucket)
        .key(&key)
        .body(ByteStream::from(fresh.to_bytes()))
        .send()
        .await
        .expect("put a board");
    assert_eq!(
        source.read_state(&who).await.expect("read"),
        Some(VersionState::Active)
    );
    assert_eq!(source.degraded(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_publishes_its_states_and_tells_its_tasks_where_the_board_is() {
    if flotilla_testkit::slow::skip("moto") {
        return;
    }
    let w = World::new("shop").await;
    let engine = w.engine("alice");
    let first = next_id();
    w.deploy(&engine, &first).await.expect("deploy");
    let second = next_id();
    w.deploy(&engine, &second).await.expect("deploy");
    let b = board(&w).await;
    assert_eq!(b.versions.get(&first), Some(&VersionState::Draining));
    assert_eq!(b.versions.get(&second), Some(&VersionState::Active));
    let definition = w.task_definition(&second).await;
    let app = definition
        .container_definitions()
        .iter()
        .find(|c| c.environment().iter().any(|e| e.name() == Some(BUCKET_ENV)))
        .expect("a container told the board's bucket");
    let bucket = app
        .environment()
        .iter()
        .find(|e| e.name() == Some(BUCKET_ENV))
        .and_then(|e| e.value());
    assert_eq!(bucket, Some(w.board_bucket.as_str()));
}
