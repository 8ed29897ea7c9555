//! A canary in real Chromium: tabs opened during a canary land on either version (the fresh
//! split), and no tab moves when the canary is rolled back (by the daemon's judgement of a
//! version answering 500, or by hand) or promoted by hand; their fetches and their reconnected
//! WebSockets keep reaching the version that first served them, with its in-memory count, while
//! fresh tabs follow the outcome. A rolled-back canary's tab is told it is stale only once that
//! version is retired, and then lands on the current version.

use std::collections::BTreeMap;

use flotilla_browser::{Browser, Tab, artifact_path};
use serde_json::Value;

use crate::host::{self, HostEnv};
use crate::{
    STORAGE_KEY, WAIT, bounded, fetch_state, increment, launch, page, raw_get, sessions_app,
    socket_ready, str_of,
};

/// `flotilla deploy --json ARGS`; the new id.
fn deploy(env: &HostEnv, args: &[&str]) -> String {
    let mut all = vec!["deploy", "--json"];
    all.extend_from_slice(args);
    let out = env.flotilla(&all);
    assert!(
        out.status.success(),
        "deploy {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("deploy --json prints JSON");
    v["deployment_id"]
        .as_str()
        .expect("deployment_id")
        .to_owned()
}

/// Opens fresh tabs until one of them has landed on each of `want`; returns them by version.
async fn tabs_on(browser: &Browser, env: &HostEnv, want: &[&str]) -> BTreeMap<String, Tab> {
    let mut found = BTreeMap::new();
    for n in 0..16 {
        let tab = browser.new_tab().await.expect("open a tab");
        tab.goto(&env.url("/")).await.expect("load the page");
        let state = socket_ready(&tab, &format!("fresh tab {n}"), 1, 0).await;
        let version = str_of(&state["page"]).to_owned();
        assert_eq!(str_of(&state["socketId"]), version, "{state}");
        if want.contains(&version.as_str()) && !found.contains_key(&version) {
            increment(&tab, 1).await;
            found.insert(version, tab);
        }
        if found.len() == want.len() {
            return found;
        }
    }
    panic!(
        "16 fresh tabs did not land on each of {want:?}: {:?}",
        found.keys()
    );
}

/// The tab's fetch and a forced reconnect of its socket reach `version`, with the count it made.
async fn still_on(tab: &Tab, version: &str, what: &str) {
    let fetched = fetch_state(tab).await;
    assert_eq!(
        (
            str_of(&fetched["header"]),
            str_of(&fetched["body"]["deployment_id"]),
            fetched["body"]["count"].as_u64(),
        ),
        (version, version, Some(1)),
        "{what}: {fetched}"
    );
    let before = page(tab).await;
    let opens = before["opens"].as_u64().unwrap_or(0);
    let messages = before["messages"].as_u64().unwrap_or(0);
    tab.eval("window.sessions.reconnect(); return true;")
        .await
        .expect("reconnect the tab's socket");
    let after = socket_ready(tab, what, opens + 1, messages).await;
    assert_eq!(
        (str_of(&after["socketId"]), str_of(&after["stored"])),
        (version, version),
        "{what}: {after}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tabs_keep_their_version_through_a_canary_rolled_back_then_one_promoted() {
    if flotilla_testkit::slow::skip("Chromium") {
        return;
    }
    bounded(async {
        let app = sessions_app();
        let app_lines = "health_path = \"/healthz\"\ninject_client = false\n";
        let host_lines = format!(
            "instances = 1\nbuild = {:?}\ncommand = {:?}\n",
            app.build, app.command
        );
        // Half of the fresh sessions to each canary, and a pause the test never reaches: it
        // ends each canary by hand.
        let tail = "[canary]\nsteps = [50]\npause_seconds = 3600\n";
        let env = HostEnv::with_config("canary", app_lines, host::GRACE_SECONDS, &host_lines, tail);
        let v1 = deploy(&env, &[]);
        let v2 = deploy(&env, &["--canary"]);
        let browser = launch().await;

        let first = tabs_on(&browser, &env, &[&v1, &v2]).await;
        let out = env.flotilla(&["rollback"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        still_on(&first[&v1], &v1, "the v1 tab after the rollback").await;
        still_on(
            &first[&v2],
            &v2,
            "the rolled-back canary's tab, which holds a session",
        )
        .await;
        let fresh = browser.new_tab().await.expect("open a tab");
        fresh.goto(&env.url("/")).await.expect("load");
        let state = socket_ready(&fresh, "a fresh tab after the rollback", 1, 0).await;
        assert_eq!(str_of(&state["page"]), v1, "{state}");

        let v3 = deploy(&env, &["--canary"]);
        let second = tabs_on(&browser, &env, &[&v1, &v3]).await;
        let out = env.flotilla(&["promote"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        still_on(&second[&v1], &v1, "a v1 tab after the promotion").await;
        still_on(&second[&v3], &v3, "the promoted canary's tab").await;
        still_on(&first[&v2], &v2, "the rolled-back canary's tab, still").await;
        let fresh = browser.new_tab().await.expect("open a tab");
        fresh.goto(&env.url("/")).await.expect("load");
        let state = socket_ready(&fresh, "a fresh tab after the promotion", 1, 0).await;
        assert_eq!(str_of(&state["page"]), v3, "{state}");

        let shot = artifact_path("host-canary-tabs.png").expect("artefact path");
        browser
            .screenshot_tabs(&[&first[&v1], &first[&v2], &second[&v3], &fresh], &shot)
            .await
            .expect("screenshot the tabs");
        browser.close().await.expect("close the browser");
        tokio::task::block_in_place(|| drop(env));
    })
    .await;
}

/// The canary record of `id` in `status --json`.
fn canary_of(env: &HostEnv, id: &str) -> Value {
    host::version_in(&env.status(), id)
        .map(|v| v["record"]["canary"].clone())
        .unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_answering_500_is_rolled_back_by_the_daemon_and_only_its_tab_is_told_stale() {
    if flotilla_testkit::slow::skip("Chromium") {
        return;
    }
    bounded(async {
        let app = sessions_app();
        let app_lines = "health_path = \"/healthz\"\ninject_client = false\n";
        let host_lines = format!(
            "instances = 1\nbuild = {:?}\ncommand = {:?}\n",
            app.build, app.command
        );
        // Judged every 3 s; the p99 limit is wide (the machine's noise is not under test).
        let tail = "[canary]\nsteps = [50]\npause_seconds = 3\nmin_requests = 20\n\
                    max_extensions = 10\nmax_p99_percent = 2000\n";
        let env = HostEnv::with_config("canary", app_lines, host::GRACE_SECONDS, &host_lines, tail);
        let v1 = deploy(&env, &[]);
        let v2 = deploy(&env, &["--canary", "--env", "SESSIONS_FAIL=1"]);
        let browser = launch().await;
        let tabs = tabs_on(&browser, &env, &[&v1, &v2]).await;

        // Fresh requests of the app's API (bounded: at most a minute, 20 a second) until the
        // daemon has judged the canary.
        let addr = env.listen;
        let load = tokio::spawn(async move {
            let mut answers: BTreeMap<u16, u64> = BTreeMap::new();
            let started = std::time::Instant::now();
            while started.elapsed() < std::time::Duration::from_secs(60) {
                let (status, _) = raw_get(addr, "/api/work", &[]).await;
                *answers.entry(status).or_insert(0) += 1;
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            answers
        });
        let (ended, status) = tokio::task::block_in_place(|| {
            env.status_until(std::time::Duration::from_secs(60), |status| {
                host::version_in(status, &v2)
                    .is_some_and(|v| v["record"]["canary"]["settled"] == true)
            })
        });
        load.abort();
        assert!(ended, "the daemon judged the canary: {status}");
        let canary = canary_of(&env, &v2);
        assert_eq!(canary["outcome"]["outcome"], "rolled_back", "{canary}");
        assert_eq!(canary["outcome"]["by_hand"], false, "{canary}");

        // Neither tab moved: the rolled-back canary drains, and its tab's session keeps it.
        still_on(&tabs[&v1], &v1, "the v1 tab after the automatic rollback").await;
        still_on(
            &tabs[&v2],
            &v2,
            "the canary's tab after the automatic rollback",
        )
        .await;

        // The canary's tab ends its session; once the reaper retires v2, its next request gets
        // the stale answer, the client fires `flotilla:stale`, and the tab lands on v1.
        let b = &tabs[&v2];
        b.eval(
            "window.sessions.disconnect();
             window.addEventListener('flotilla:stale', (event) => {
               sessionStorage.setItem('test:stale', JSON.stringify({ detail: event.detail }));
             });
             return true;",
        )
        .await
        .expect("end the canary tab's session");
        let (retired, status) = tokio::task::block_in_place(|| {
            env.status_until(std::time::Duration::from_secs(30), |status| {
                host::version_in(status, &v2).is_none_or(|v| host::state_of(&v) == "retired")
            })
        });
        assert!(
            retired,
            "v2 is retired once its tab's session ended: {status}"
        );
        b.eval("window.sessions.refresh(); return true;")
            .await
            .expect("the canary tab fetches");
        let landed = b
            .wait_for(
                "the canary's tab to reload onto v1",
                &format!(
                    "const s = window.sessions && window.sessions.state;
                     return !!s && s.pageId === '{v1}' && s.socket === 'open';"
                ),
                WAIT,
            )
            .await;
        if let Err(e) = landed {
            panic!("{e}: {}", page(b).await);
        }
        let stale: Value = serde_json::from_str(
            &b.session_storage("test:stale")
                .await
                .expect("the tab's storage")
                .expect("flotilla:stale fired in the canary's tab"),
        )
        .expect("the recorded event is JSON");
        assert_eq!(
            (
                str_of(&stale["detail"]["retired"]),
                str_of(&stale["detail"]["current"])
            ),
            (v2.as_str(), v1.as_str()),
            "{stale}"
        );
        assert_eq!(
            b.session_storage(STORAGE_KEY)
                .await
                .expect("storage")
                .as_deref(),
            Some(v1.as_str())
        );
        // The v1 tab never noticed anything.
        still_on(&tabs[&v1], &v1, "the v1 tab at the end").await;
        let v1_page = page(&tabs[&v1]).await;
        assert!(
            v1_page["stale"].is_null() || v1_page["stale"] == false,
            "{v1_page}"
        );

        let shot = artifact_path("host-canary-rolled-back.png").expect("artefact path");
        browser
            .screenshot_tabs(&[&tabs[&v1], b], &shot)
            .await
            .expect("screenshot the tabs");
        browser.close().await.expect("close the browser");
        tokio::task::block_in_place(|| drop(env));
    })
    .await;
}
