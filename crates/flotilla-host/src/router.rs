//! The router: decides, for every request, which instance of which version serves it, with the
//! core's [`route`] and a per-version instance choice; everything else (forwarding, WebSocket
//! pass-through, session accounting, stamping) is `flotilla-proxy`'s.
//!
//! Per request: the affinity header, then the affinity query parameter, pick the version
//! (`route`); a retired version's affinity (or a tombstone of one whose resources are gone)
//! answers `410` with the JSON body the browser client recognises; no version answers `503`.
//!
//! Within a version, the instance is chosen so that a tab's session returns to the instance that
//! holds it, without cookies and without the client IP:
//! - a request carrying a tab key (header `X-Flotilla-Tab` or query parameter `flotilla_tab`, any
//!   opaque per-tab value an app or client keeps in `sessionStorage`) goes to the instance picked by
//!   rendezvous hashing of that key over the version's healthy instances, so the same tab always
//!   lands on the same instance while it is healthy, and losing an instance moves only its tabs;
//! - a session-opening request without one (a WebSocket upgrade, or an `Accept: text/event-stream`
//!   request) goes to the healthy instance with the fewest live sessions;
//! - any other request is spread round-robin over the healthy instances.
//!
//! The routing state is an immutable snapshot behind an `ArcSwap`: the hot path is one atomic load,
//! a map lookup and a reference-count increment; the daemon publishes a new snapshot whenever the
//! routing table or an instance's health or address changes.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use flotilla_core::routing::{RETIRED_MESSAGE, RouteDecision, RouteRequest, RoutingTable, route};
use flotilla_core::{DeploymentId, InstanceId};
use flotilla_proxy::{Decision, RequestHead, Route, Sessions, Target, json_response};
use http::StatusCode;
use http::header::{ACCEPT, HeaderName, HeaderValue, RETRY_AFTER};

use crate::supervisor::InstanceView;

/// The header carrying an optional per-tab stickiness key.
pub const TAB_HEADER: &str = "x-flotilla-tab";
/// The query parameter carrying an optional per-tab stickiness key (WebSocket and EventSource URLs).
pub const TAB_QUERY: &str = "flotilla_tab";

/// The key of one instance's session counters.
pub type InstanceKey = (DeploymentId, InstanceId);

struct Instance {
    /// A stable hash of the instance id, mixed with tab keys for rendezvous hashing.
    seed: u64,
    target: Arc<Target>,
}

#[derive(Default)]
struct Snapshot {
    /// The routing table with every tombstone added as a retired affinity.
    table: RoutingTable,
    /// Each version's healthy instances, in instance order.
    healthy: HashMap<DeploymentId, Vec<Instance>>,
}

/// Targets are built once per instance address and reused across snapshots.
#[derive(Default)]
struct TargetCache {
    targets: HashMap<InstanceKey, Arc<Target>>,
}

/// The host router: a [`Route`] over the current routing snapshot.
pub struct Router {
    current: ArcSwap<Snapshot>,
    affinity_header: HeaderName,
    affinity_query: String,
    tab_header: HeaderName,
    stats: Sessions<InstanceKey>,
    counter: AtomicU64,
    publish: Mutex<TargetCache>,
}

impl Router {
    /// A router with no versions, reading affinity from `affinity_header` and `affinity_query`.
    pub fn new(
        affinity_header: &str,
        affinity_query: &str,
    ) -> Result<Self, flotilla_proxy::ProxyError> {
        Ok(Router {
            current: ArcSwap::from_pointee(Snapshot::default()),
            affinity_header: flotilla_proxy::ProxyConfig::header_name(affinity_header)?,
            affinity_query: affinity_query.to_owned(),
            tab_header: HeaderName::from_static(TAB_HEADER),
            stats: Sessions::new(),
            counter: AtomicU64::new(0),
            publish: Mutex::new(TargetCache::default()),
        })
    }

    /// Publishes a new snapshot: `table` plus `tombstones` (ids whose affinity was removed but must
    /// keep answering 410), over the instances the supervisor runs now.
    pub fn publish(
        &self,
        table: &RoutingTable,
        tombstones: &[DeploymentId],
        instances: &[InstanceView],
    ) {
        // One publisher at a time, so an older snapshot never overwrites a newer one.
        let mut cache = self.publish.lock().unwrap_or_else(|p| p.into_inner());
        let mut effective = table.clone();
        for id in tombstones {
            if effective.affinity(id).is_none() {
                // A tombstoned id is never in the default (its affinity was absent), so this holds.
                let _ = effective.mark_retired(id.clone());
            }
        }
        let mut healthy: HashMap<DeploymentId, Vec<Instance>> = HashMap::new();
        let mut live = HashMap::new();
        for view in instances {
            let key = (view.id.clone(), view.state.instance.clone());
            let addr = view.state.addr();
            let target = match cache.targets.get(&key) {
                Some(t) if t.addr() == addr => t.clone(),
                _ => {
                    let stats = self.stats.instance(key.clone());
                    let target = Target::new(addr, stats)
                        .with_deployment(view.id.as_str())
                        .expect("deployment ids are valid header values");
                    Arc::new(target)
                }
            };
            live.insert(key.clone(), target.clone());
            if view.state.running() && view.state.healthy() {
                healthy.entry(view.id.clone()).or_default().push(Instance {
                    seed: stable_hash(view.state.instance.as_str()),
                    target,
                });
            }
        }
        cache.targets = live;
        // Forget the counters of instances that no longer exist once nothing uses them.
        self.stats
            .retain(|key, stats| cache.targets.contains_key(key) || !stats.is_idle());
        self.current.store(Arc::new(Snapshot {
            table: effective,
            healthy,
        }));
    }

    /// Live sessions (open WebSockets and event streams) the router counts for one instance.
    pub fn sessions(&self, id: &DeploymentId, instance: &InstanceId) -> u64 {
        self.stats
            .snapshot_of(&(id.clone(), instance.clone()))
            .map_or(0, |s| s.sessions)
    }

    /// Every instance's counters.
    pub fn stats(&self) -> &Sessions<InstanceKey> {
        &self.stats
    }

    /// Healthy instances per version in the current snapshot.
    pub fn healthy_counts(&self) -> BTreeMap<DeploymentId, usize> {
        self.current
            .load()
            .healthy
            .iter()
            .map(|(id, v)| (id.clone(), v.len()))
            .collect()
    }

    fn next(&self) -> u64 {
        self.counter.fetch_add(1, Ordering::Relaxed)
    }

    fn pick(&self, head: &RequestHead<'_>, instances: &[Instance]) -> Arc<Target> {
        let tab = head
            .headers
            .get(&self.tab_header)
            .and_then(|v| v.to_str().ok())
            .or_else(|| head.query_param(TAB_QUERY))
            .filter(|t| !t.is_empty());
        if instances.len() == 1 {
            return instances[0].target.clone();
        }
        if let Some(tab) = tab {
            let key = stable_hash(tab);
            let best = instances
                .iter()
                .max_by_key(|i| mix(key ^ i.seed))
                .expect("callers pass at least one instance");
            return best.target.clone();
        }
        let opens_session = head.is_upgrade()
            || head
                .headers
                .get(ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|a| a.contains("text/event-stream"));
        let start = self.next() as usize;
        if opens_session {
            let n = instances.len();
            let best = (0..n)
                .map(|k| &instances[(start + k) % n])
                .min_by_key(|i| i.target.stats().sessions())
                .expect("callers pass at least one instance");
            return best.target.clone();
        }
        instances[start % instances.len()].target.clone()
    }
}

impl Route for Router {
    fn route(&self, head: &RequestHead<'_>) -> Decision {
        let snapshot = self.current.load();
        let header = head
            .headers
            .get(&self.affinity_header)
            .and_then(|v| v.to_str().ok());
        let query = head.query_param(&self.affinity_query);
        let roll = if snapshot.table.default_targets().len() > 1 {
            (mix(self.next()) >> 32) as u32
        } else {
            0
        };
        match route(
            &snapshot.table,
            &RouteRequest {
                header,
                query,
                roll,
            },
        ) {
            RouteDecision::Pinned(id) | RouteDecision::Fresh(id) => {
                match snapshot.healthy.get(id) {
                    Some(instances) if !instances.is_empty() => {
                        Decision::Forward(self.pick(head, instances))
                    }
                    _ => Decision::Respond(unavailable(id)),
                }
            }
            RouteDecision::Gone { retired, current } => Decision::Respond(gone(retired, current)),
            RouteDecision::NoVersion => Decision::Respond(no_version()),
        }
    }
}

/// The `410` body for a retired version, exactly as the browser client expects it.
pub fn gone_body(retired: &DeploymentId, current: Option<&DeploymentId>) -> String {
    serde_json::json!({
        "error": "version_retired",
        "retired": retired.as_str(),
        "current": current.map(DeploymentId::as_str),
        "message": RETIRED_MESSAGE,
    })
    .to_string()
}

fn gone(
    retired: &DeploymentId,
    current: Option<&DeploymentId>,
) -> http::Response<flotilla_proxy::Body> {
    json_response(StatusCode::GONE, gone_body(retired, current))
}

fn no_version() -> http::Response<flotilla_proxy::Body> {
    let mut r = json_response(
        StatusCode::SERVICE_UNAVAILABLE,
        r#"{"error":"no_version","message":"503 Service Unavailable: no version is deployed yet"}"#,
    );
    r.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

fn unavailable(id: &DeploymentId) -> http::Response<flotilla_proxy::Body> {
    let body = serde_json::json!({
        "error": "version_unavailable",
        "deployment": id.as_str(),
        "message": format!("503 Service Unavailable: version {id} has no healthy instance right now"),
    });
    let mut r = json_response(StatusCode::SERVICE_UNAVAILABLE, body.to_string());
    r.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

/// FNV-1a: stable across processes and releases (std's hasher is randomly seeded per process).
fn stable_hash(s: &str) -> u64 {
    let mut h = FnvHasher(0xcbf2_9ce4_8422_2325);
    s.hash(&mut h);
    h.0
}

struct FnvHasher(u64);

impl Hasher for FnvHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// A 64-bit finaliser (splitmix64) spreading nearby inputs over the whole range.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervisor::InstanceState;
    use flotilla_core::Timestamp;
    use flotilla_core::routing::WeightedTarget;
    use http::{HeaderMap, Method, Uri};
    use std::net::SocketAddr;

    fn id(n: u64) -> DeploymentId {
        DeploymentId::generate(Timestamp::from_secs(1_764_000_000 + n), n)
    }

    fn view(n: u64, instance: &str, port: u16) -> InstanceView {
        InstanceView {
            id: id(n),
            state: InstanceState::external(
                InstanceId::new(instance).expect("valid"),
                SocketAddr::from(([127, 0, 0, 1], port)),
            ),
        }
    }

    /// v1 draining (two instances), v2 active (two instances), v0 retired, v9 tombstoned.
    fn router() -> (Router, Vec<InstanceView>) {
        let r = Router::new("X-Flotilla-Deployment", "flotilla_deployment").expect("valid names");
        let mut t = RoutingTable::new();
        t.install_affinity(id(1));
        t.install_affinity(id(2));
        t.mark_retired(id(0)).expect("not default");
        t.set_default(vec![WeightedTarget {
            id: id(2),
            weight: 100,
        }])
        .expect("valid");
        let views = vec![
            view(1, "i1", 1001),
            view(1, "i2", 1002),
            view(2, "i1", 2001),
            view(2, "i2", 2002),
        ];
        r.publish(&t, &[id(9)], &views);
        (r, views)
    }

    enum Want {
        Port(u16),
        AnyOf(&'static [u16]),
        Status(u16),
    }

    fn decide(r: &Router, uri: &str, headers: &[(&str, &str)]) -> Decision {
        let uri: Uri = uri.parse().expect("uri");
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.insert(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        let head = RequestHead {
            method: &Method::GET,
            uri: &uri,
            headers: &map,
            peer: SocketAddr::from(([127, 0, 0, 1], 5555)),
        };
        r.route(&head)
    }

    fn check(r: &Router, uri: &str, headers: &[(&str, &str)], want: Want) {
        match (decide(r, uri, headers), want) {
            (Decision::Forward(t), Want::Port(p)) => {
                assert_eq!(t.addr().port(), p, "{uri} {headers:?}")
            }
            (Decision::Forward(t), Want::AnyOf(ps)) => assert!(
                ps.contains(&t.addr().port()),
                "{uri} {headers:?}: {}",
                t.addr()
            ),
            (Decision::Respond(resp), Want::Status(s)) => {
                assert_eq!(resp.status().as_u16(), s, "{uri} {headers:?}")
            }
            (d, _) => panic!("{uri} {headers:?}: unexpected {d:?}"),
        }
    }

    #[test]
    fn routes_by_affinity_default_and_retirement() {
        let (r, _) = router();
        let v1 = id(1).to_string();
        let v0 = id(0).to_string();
        let v9 = id(9).to_string();
        check(&r, "/", &[], Want::AnyOf(&[2001, 2002]));
        check(
            &r,
            "/",
            &[("x-flotilla-deployment", &v1)],
            Want::AnyOf(&[1001, 1002]),
        );
        check(
            &r,
            &format!("/ws?flotilla_deployment={v1}"),
            &[],
            Want::AnyOf(&[1001, 1002]),
        );
        check(
            &r,
            "/",
            &[("x-flotilla-deployment", &v0)],
            Want::Status(410),
        );
        check(
            &r,
            &format!("/ws?flotilla_deployment={v9}"),
            &[],
            Want::Status(410),
        );
        check(
            &r,
            "/",
            &[("x-flotilla-deployment", "20200101-000000-zzzz")],
            Want::AnyOf(&[2001, 2002]),
        );
    }

    #[test]
    fn answers_503_without_versions_or_healthy_instances() {
        let r = Router::new("X-Flotilla-Deployment", "flotilla_deployment").expect("valid");
        check(&r, "/", &[], Want::Status(503));
        let (r, views) = router();
        for v in views.iter().filter(|v| v.id == id(1)) {
            v.state.set_healthy(false);
        }
        let mut t = RoutingTable::new();
        t.install_affinity(id(1));
        t.install_affinity(id(2));
        t.set_default(vec![WeightedTarget {
            id: id(2),
            weight: 100,
        }])
        .expect("valid");
        r.publish(&t, &[], &views);
        check(
            &r,
            "/",
            &[("x-flotilla-deployment", id(1).as_str())],
            Want::Status(503),
        );
        check(&r, "/", &[], Want::AnyOf(&[2001, 2002]));
    }

    #[test]
    fn a_tab_key_sticks_to_one_instance_and_moves_only_when_it_goes() {
        let (r, views) = router();
        let v1 = id(1).to_string();
        let mut seen = std::collections::BTreeSet::new();
        for tab in 0..64 {
            let tab = format!("tab-{tab}");
            let first = match decide(
                &r,
                &format!("/ws?flotilla_deployment={v1}&flotilla_tab={tab}"),
                &[],
            ) {
                Decision::Forward(t) => t.addr().port(),
                d => panic!("{d:?}"),
            };
            seen.insert(first);
            for _ in 0..5 {
                check(
                    &r,
                    "/api",
                    &[("x-flotilla-deployment", &v1), ("x-flotilla-tab", &tab)],
                    Want::Port(first),
                );
            }
        }
        assert_eq!(seen.len(), 2, "64 tabs spread over both instances");
        // Instance 1001 goes unhealthy: its tabs move, the others' stay.
        let before: Vec<u16> = (0..64)
            .map(|n| {
                match decide(
                    &r,
                    "/",
                    &[
                        ("x-flotilla-deployment", &v1),
                        ("x-flotilla-tab", &format!("tab-{n}")),
                    ],
                ) {
                    Decision::Forward(t) => t.addr().port(),
                    d => panic!("{d:?}"),
                }
            })
            .collect();
        views[0].state.set_healthy(false);
        let mut t = RoutingTable::new();
        t.install_affinity(id(1));
        t.install_affinity(id(2));
        t.set_default(vec![WeightedTarget {
            id: id(2),
            weight: 100,
        }])
        .expect("valid");
        r.publish(&t, &[], &views);
        for (n, port) in before.iter().enumerate() {
            let want = if *port == 1001 { 1002 } else { *port };
            check(
                &r,
                "/",
                &[
                    ("x-flotilla-deployment", &v1),
                    ("x-flotilla-tab", &format!("tab-{n}")),
                ],
                Want::Port(want),
            );
        }
    }

    #[test]
    fn requests_without_a_tab_key_spread_over_instances() {
        let (r, _) = router();
        let mut ports = std::collections::BTreeMap::new();
        for _ in 0..100 {
            if let Decision::Forward(t) = decide(&r, "/", &[]) {
                *ports.entry(t.addr().port()).or_insert(0) += 1;
            }
        }
        assert_eq!(ports.values().copied().collect::<Vec<_>>(), vec![50, 50]);
    }

    #[test]
    fn gone_body_is_what_the_browser_client_expects() {
        let body: serde_json::Value =
            serde_json::from_str(&gone_body(&id(0), Some(&id(2)))).expect("json");
        assert_eq!(
            body,
            serde_json::json!({
                "error": "version_retired",
                "retired": id(0).as_str(),
                "current": id(2).as_str(),
                "message": "410 Gone: this version is no longer available",
            })
        );
        let body: serde_json::Value = serde_json::from_str(&gone_body(&id(0), None)).expect("json");
        assert_eq!(body["current"], serde_json::Value::Null);
    }
}
