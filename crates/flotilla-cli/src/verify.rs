//! `flotilla verify`: checks routing from the outside, for any provider. From the engine's status it
//! plans which version each request must reach, sends the requests over plain HTTP, and compares
//! the version named in each response's deployment header (or the 410 of a retired version).

use std::time::Duration;

use bytes::Bytes;
use flotilla_core::DeploymentId;
use flotilla_core::VersionState;
use flotilla_core::routing::Affinity;
use flotilla_core::stale::STALE_STATUSES;
use flotilla_engine::ports::{ErrorKind, PortError};
use flotilla_engine::workflows::StatusReport;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;

/// How long one request may take, connection included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How a request carries affinity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// No affinity: a fresh tab.
    Fresh,
    /// The affinity header.
    Header,
    /// The affinity query parameter.
    Query,
}

/// What a response must show.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "expect", content = "ids", rename_all = "snake_case")]
pub enum Expect {
    /// Served by one of these versions (the default's targets, or the pinned one).
    Served(Vec<DeploymentId>),
    /// The stale answer, `410 Gone` or `409 Conflict` (`[app] stale_status`): the version is
    /// retired. Either status is accepted, since AWS rules retired before a change of
    /// `stale_status` keep the status they were written with.
    Gone,
    /// `503`: nothing is deployed.
    NoVersion,
}

/// One request to send and what must come back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    /// How it carries affinity.
    pub via: Via,
    /// The version named in the request, if any.
    pub id: Option<DeploymentId>,
    /// What must come back.
    pub expect: Expect,
}

/// The checks that the routing in `report` calls for: one fresh request, and for each version
/// that serves or is retired, one request by header and one by query parameter. Versions still
/// deploying are skipped: their affinity may be installed before they are healthy.
pub fn plan(report: &StatusReport) -> Vec<Check> {
    let targets: Vec<DeploymentId> = report
        .routing
        .default_targets()
        .iter()
        .filter(|t| t.weight > 0)
        .map(|t| t.id.clone())
        .collect();
    let fresh = if targets.is_empty() {
        Expect::NoVersion
    } else {
        Expect::Served(targets)
    };
    let mut checks = vec![Check {
        via: Via::Fresh,
        id: None,
        expect: fresh,
    }];
    for v in &report.versions {
        let id = &v.record.version.id;
        let expect = match (v.record.version.state, v.affinity) {
            (VersionState::Active | VersionState::Draining, Some(Affinity::Serving)) => {
                Expect::Served(vec![id.clone()])
            }
            (_, Some(Affinity::Retired)) => Expect::Gone,
            _ => continue,
        };
        for via in [Via::Header, Via::Query] {
            checks.push(Check {
                via,
                id: Some(id.clone()),
                expect: expect.clone(),
            });
        }
    }
    checks
}

/// The names the app's affinity travels under.
#[derive(Clone, Debug)]
pub struct AffinityNames {
    /// The request and response header, e.g. `X-Flotilla-Deployment`.
    pub header: String,
    /// The query parameter, e.g. `flotilla_deployment`.
    pub query: String,
}

/// What one check saw.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Outcome {
    /// The check.
    #[serde(flatten)]
    pub check: Check,
    /// The request, as `GET /path` plus the affinity it carried.
    pub request: String,
    /// The response status, if a response came.
    pub status: Option<u16>,
    /// The version the response named in the deployment header.
    pub served_by: Option<String>,
    /// Whether it matched.
    pub ok: bool,
    /// What went wrong, if anything.
    pub problem: Option<String>,
}

/// Sends every check to `base` (an `http://host:port` URL) at `path`.
///
/// Fails only if nothing answers at `base` at all (as a `PortError` of kind `Unavailable`);
/// otherwise each check's outcome says whether it passed.
pub async fn run(
    base: &str,
    path: &str,
    names: &AffinityNames,
    checks: Vec<Check>,
) -> Result<Vec<Outcome>, PortError> {
    let unreachable = |message: String| {
        PortError::new(ErrorKind::Unavailable, "send a request to", base, message)
    };
    if !base.starts_with("http://") {
        return Err(PortError::new(
            ErrorKind::Invalid,
            "send a request to",
            base,
            "verify speaks plain HTTP only; pass an http:// URL with --url",
        ));
    }
    let base = base.trim_end_matches('/');
    let path = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    };
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let mut outcomes = Vec::with_capacity(checks.len());
    for check in checks {
        let mut uri = format!("{base}{path}");
        let mut request = format!("GET {path}");
        let mut builder = hyper::Request::get(&uri);
        if let Some(id) = &check.id {
            match check.via {
                Via::Header => {
                    builder = builder.header(names.header.as_str(), id.as_str());
                    request = format!("GET {path} with {}: {id}", names.header);
                }
                Via::Query => {
                    let sep = if path.contains('?') { '&' } else { '?' };
                    uri = format!("{uri}{sep}{}={id}", names.query);
                    request = format!("GET {path}{sep}{}={id}", names.query);
                    builder = hyper::Request::get(&uri);
                }
                Via::Fresh => {}
            }
        }
        let req = builder
            .body(Empty::new())
            .map_err(|e| unreachable(format!("bad request URL {uri}: {e}")))?;
        let response = tokio::time::timeout(REQUEST_TIMEOUT, client.request(req)).await;
        let (status, served_by, problem) = match response {
            Err(_) => (
                None,
                None,
                Some(format!("no answer within {}s", REQUEST_TIMEOUT.as_secs())),
            ),
            Ok(Err(e)) => {
                if check.via == Via::Fresh {
                    return Err(unreachable(connect_error(&e)));
                }
                (None, None, Some(connect_error(&e)))
            }
            Ok(Ok(resp)) => {
                let status = resp.status().as_u16();
                let served_by = resp
                    .headers()
                    .get(names.header.as_str())
                    .and_then(|v| v.to_str().ok())
                    .map(|v| v.trim().to_owned());
                // Read the body so the connection can be reused; its content does not matter.
                let _ = tokio::time::timeout(REQUEST_TIMEOUT, resp.into_body().collect()).await;
                (Some(status), served_by, None)
            }
        };
        let problem = problem.or_else(|| judge(&check.expect, status, served_by.as_deref(), names));
        outcomes.push(Outcome {
            ok: problem.is_none(),
            check,
            request,
            status,
            served_by,
            problem,
        });
    }
    Ok(outcomes)
}

fn connect_error(err: &hyper_util::client::legacy::Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// What is wrong with a response, or `None` if it is what `expect` asks for.
fn judge(
    expect: &Expect,
    status: Option<u16>,
    served_by: Option<&str>,
    names: &AffinityNames,
) -> Option<String> {
    let status = status?;
    match expect {
        Expect::Gone if STALE_STATUSES.contains(&status) => None,
        Expect::Gone => Some(format!(
            "expected the stale answer (410 Gone or 409 Conflict), got {status}"
        )),
        Expect::NoVersion if status == 503 => None,
        Expect::NoVersion => Some(format!("expected 503 (no version deployed), got {status}")),
        Expect::Served(ids) => {
            let Some(served) = served_by else {
                return Some(format!(
                    "the response ({status}) has no {} header",
                    names.header
                ));
            };
            if !ids
                .iter()
                .any(|id| id.as_str().eq_ignore_ascii_case(served))
            {
                let want: Vec<&str> = ids.iter().map(DeploymentId::as_str).collect();
                return Some(format!(
                    "served by {served}, expected {}",
                    want.join(" or ")
                ));
            }
            if status >= 500 {
                return Some(format!("{served} answered {status}"));
            }
            None
        }
    }
}

/// The human table of outcomes.
pub fn table(outcomes: &[Outcome]) -> String {
    let rows: Vec<Vec<String>> = outcomes
        .iter()
        .map(|o| {
            let expect = match &o.check.expect {
                Expect::Served(ids) => {
                    let ids: Vec<&str> = ids.iter().map(DeploymentId::as_str).collect();
                    ids.join(" or ")
                }
                Expect::Gone => "410/409 retired".to_owned(),
                Expect::NoVersion => "503".to_owned(),
            };
            let got = match (o.status, &o.served_by) {
                (Some(status), Some(by)) => format!("{status} {by}"),
                (Some(status), None) => status.to_string(),
                (None, _) => "-".to_owned(),
            };
            let result = match &o.problem {
                None => "ok".to_owned(),
                Some(problem) => format!("FAIL: {problem}"),
            };
            vec![o.request.clone(), expect, got, result]
        })
        .collect();
    crate::output::table(&["REQUEST", "EXPECT", "GOT", "RESULT"], &rows)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use flotilla_core::routing::{
        RouteDecision, RouteRequest, RoutingTable, WeightedTarget, route,
    };
    use flotilla_core::{DeploymentName, Version};
    use flotilla_engine::ports::VersionRecord;
    use flotilla_engine::workflows::VersionStatus;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    fn id(s: &str) -> DeploymentId {
        DeploymentId::new(s).expect("valid id")
    }

    fn names() -> AffinityNames {
        AffinityNames {
            header: "X-Flotilla-Deployment".to_owned(),
            query: "flotilla_deployment".to_owned(),
        }
    }

    const V1: &str = "20261124-101500-a1b2";
    const V2: &str = "20261125-190633-k3x9";
    const V0: &str = "20261120-080000-zz99";
    const V3: &str = "20261126-000000-new1";

    /// v0 retired, v1 draining, v2 active, v3 still deploying.
    fn report() -> StatusReport {
        let status = |s: &str, state: VersionState, affinity: Option<Affinity>, weight: u16| {
            let v = id(s);
            VersionStatus {
                record: VersionRecord {
                    version: Version {
                        id: v.clone(),
                        state,
                        created_at: v.created_at(),
                        state_changed_at: v.created_at(),
                    },
                    image: None,
                    instances: 1,
                    ready_passes: 0,
                    canary: None,
                },
                compute: None,
                weight,
                affinity,
                readiness: BTreeMap::new(),
            }
        };
        let mut routing = RoutingTable::new();
        for v in [V1, V2, V3] {
            routing.install_affinity(id(v));
        }
        routing.mark_retired(id(V0)).expect("not in default");
        routing
            .set_default(vec![WeightedTarget {
                id: id(V2),
                weight: 100,
            }])
            .expect("valid default");
        StatusReport {
            name: DeploymentName::new("shop").expect("valid"),
            versions: vec![
                status(V0, VersionState::Retired, Some(Affinity::Retired), 0),
                status(V1, VersionState::Draining, Some(Affinity::Serving), 0),
                status(V2, VersionState::Active, Some(Affinity::Serving), 100),
                status(V3, VersionState::Deploying, Some(Affinity::Serving), 0),
            ],
            routing,
            rules_used: 8,
            rules_limit: 100,
            lock: None,
            orphans: vec![],
        }
    }

    #[test]
    fn plan_covers_fresh_live_and_retired_but_not_deploying() {
        let checks = plan(&report());
        let summary: Vec<(Via, Option<&str>, Expect)> = checks
            .iter()
            .map(|c| {
                (
                    c.via,
                    c.id.as_ref().map(DeploymentId::as_str),
                    c.expect.clone(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                (Via::Fresh, None, Expect::Served(vec![id(V2)])),
                (Via::Header, Some(V0), Expect::Gone),
                (Via::Query, Some(V0), Expect::Gone),
                (Via::Header, Some(V1), Expect::Served(vec![id(V1)])),
                (Via::Query, Some(V1), Expect::Served(vec![id(V1)])),
                (Via::Header, Some(V2), Expect::Served(vec![id(V2)])),
                (Via::Query, Some(V2), Expect::Served(vec![id(V2)])),
            ]
        );
    }

    #[test]
    fn plan_without_versions_expects_503() {
        let mut empty = report();
        empty.versions.clear();
        empty.routing = RoutingTable::new();
        assert_eq!(
            plan(&empty),
            vec![Check {
                via: Via::Fresh,
                id: None,
                expect: Expect::NoVersion
            }]
        );
    }

    /// A tiny HTTP/1.1 server that routes with the core's `route()` over `table`, like a real
    /// router would, unless `wrong` is set, in which case it always claims to be version `wrong`.
    async fn router(table: RoutingTable, wrong: Option<&'static str>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let table = Arc::new(table);
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let table = Arc::clone(&table);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&buf).to_string();
                    let target = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
                    let header = head.lines().find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("x-flotilla-deployment")
                            .then(|| v.trim().to_owned())
                    });
                    let query = target
                        .split_once('?')
                        .and_then(|(_, q)| q.strip_prefix("flotilla_deployment="))
                        .map(str::to_owned);
                    let request = RouteRequest {
                        header: header.as_deref(),
                        query: query.as_deref(),
                        roll: 0,
                    };
                    let (status, served) = match (wrong, route(&table, &request)) {
                        (Some(w), _) => (200, Some(w.to_owned())),
                        (None, RouteDecision::Pinned(v) | RouteDecision::Fresh(v)) => {
                            (200, Some(v.to_string()))
                        }
                        (None, RouteDecision::Gone { .. }) => (410, None),
                        (None, RouteDecision::NoVersion) => (503, None),
                    };
                    let stamp = served
                        .map(|v| format!("X-Flotilla-Deployment: {v}\r\n"))
                        .unwrap_or_default();
                    let response = format!(
                        "HTTP/1.1 {status} X\r\n{stamp}Content-Length: 2\r\nConnection: close\r\n\r\nok"
                    );
                    let _ = socket.write_all(response.as_bytes()).await;
                });
            }
        });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn a_correct_router_passes_every_check() {
        let report = report();
        let base = router(report.routing.clone(), None).await;
        let outcomes = run(&base, "/", &names(), plan(&report))
            .await
            .expect("reachable");
        assert_eq!(outcomes.len(), 7);
        assert!(outcomes.iter().all(|o| o.ok), "{}", table(&outcomes));
        assert_eq!(outcomes[0].served_by.as_deref(), Some(V2));
        assert_eq!(outcomes[1].status, Some(410));
        assert_eq!(
            outcomes[4].request,
            format!("GET /?flotilla_deployment={V1}")
        );
    }

    #[tokio::test]
    async fn a_router_that_ignores_affinity_fails_the_pinned_checks() {
        let report = report();
        let base = router(report.routing.clone(), Some(V2)).await;
        let outcomes = run(&base, "/", &names(), plan(&report))
            .await
            .expect("reachable");
        let failed: Vec<&str> = outcomes
            .iter()
            .filter(|o| !o.ok)
            .map(|o| o.request.as_str())
            .collect();
        assert_eq!(failed.len(), 4, "{}", table(&outcomes));
        assert!(
            outcomes.iter().any(
                |o| o.problem.as_deref() == Some(&format!("served by {V2}, expected {V1}")[..])
            ),
            "{}",
            table(&outcomes)
        );
        assert!(outcomes.iter().any(|o| o.problem.as_deref()
            == Some("expected the stale answer (410 Gone or 409 Conflict), got 200")));
    }

    #[tokio::test]
    async fn nothing_listening_is_an_unavailable_provider() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let err = run(&format!("http://{addr}"), "/", &names(), plan(&report()))
            .await
            .expect_err("nothing listens");
        assert_eq!(err.kind, ErrorKind::Unavailable);
    }

    #[tokio::test]
    async fn https_is_refused_with_advice() {
        let err = run("https://example.invalid", "/", &names(), vec![])
            .await
            .expect_err("https");
        assert!(err.message.contains("--url"), "{err}");
    }
}
