//! The router: decides, for every request, which instance of which version serves it, with the
//! core's [`route`] and a per-version instance choice; everything else (forwarding, WebSocket
//! pass-through, session accounting, stamping) is `flotilla-proxy`'s.
//!
//! Per request: the affinity header, then the affinity query parameter, pick the version
//! (`route`); no version answers `503`. A retired version's affinity (or a tombstone of one whose
//! resources are gone) gets the *stale answer* ([`StaleSignals`]): the JSON body the browser
//! client recognises with the configured status (410 or 409) and optional extra header; a
//! WebSocket upgrade is instead accepted and closed at once with code 4410 (a refused upgrade
//! shows scripts only 1006), or, when its URL carries the configured reroute marker, sent to the
//! current version so the framework that asked for it notices the new version and reloads.
//!
//! Within a version, the instance is chosen so that a tab's session returns to the instance that
//! holds it, without the client IP:
//! - a request carrying a tab key (header `X-Flotilla-Tab` or query parameter `flotilla_tab`, any
//!   opaque per-tab value an app or client keeps in `sessionStorage`) goes to the instance picked by
//!   rendezvous hashing of that key over the version's healthy instances, so the same tab always
//!   lands on the same instance while it is healthy, and losing an instance moves only its tabs;
//! - otherwise, a request carrying the version's *instance cookie* (`flotilla_instance_<id>`,
//!   naming one of its healthy instances) goes to that instance: this keeps a page that runs
//!   without the browser client on one instance, as the ALB's `lb_cookie` stickiness does on AWS
//!   (the tabs of one browser share it per version, which is harmless). The cookie never chooses
//!   the version; a cookie naming an instance that is not healthy is ignored and replaced;
//! - otherwise, a session-opening request (a WebSocket upgrade, or an `Accept: text/event-stream`
//!   request) goes to the healthy instance with the fewest live sessions, and any other request is
//!   spread round-robin over the healthy instances; when the version runs more than one instance,
//!   the answer sets the instance cookie (`HttpOnly; SameSite=Lax; Path=/`, `Secure` over TLS).
//!
//! The routing state is an immutable snapshot behind an `ArcSwap`: the hot path is one atomic load,
//! a map lookup and a reference-count increment; the daemon publishes a new snapshot whenever the
//! routing table or an instance's health or address changes.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use flotilla_core::routing::{RouteDecision, RouteRequest, RoutingTable, route};
use flotilla_core::stale::{
    QueryPair, STALE_CLOSE_CODE, STALE_CLOSE_REASON, StaleError, StaleSignals,
};
use flotilla_core::{DeploymentId, InstanceId};
use flotilla_proxy::{Decision, RequestHead, Route, Sessions, SocketClose, Target, json_response};
use http::header::{ACCEPT, COOKIE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER, SET_COOKIE};
use http::{Response, StatusCode};

use crate::supervisor::InstanceView;

/// The header carrying an optional per-tab stickiness key.
pub const TAB_HEADER: &str = "x-flotilla-tab";
/// The query parameter carrying an optional per-tab stickiness key (WebSocket and EventSource URLs).
pub const TAB_QUERY: &str = "flotilla_tab";

/// The prefix of a version's instance cookie; the version's id follows it.
pub const INSTANCE_COOKIE_PREFIX: &str = "flotilla_instance_";

/// The key of one instance's session counters.
pub type InstanceKey = (DeploymentId, InstanceId);

struct Instance {
    id: InstanceId,
    /// A stable hash of the instance id, mixed with tab keys for rendezvous hashing.
    seed: u64,
    target: Arc<Target>,
    /// The `Set-Cookie` values naming this instance, without and with `Secure`, built once.
    set_cookie: [HeaderValue; 2],
}

/// One version's instances as the router sees them.
struct VersionInstances {
    /// The healthy ones: those taking new sessions first, in instance order, then those
    /// autoscaling winds down.
    healthy: Vec<Instance>,
    /// How many of `healthy` (from the front) take new sessions and fresh requests.
    open: usize,
    /// How many it runs, healthy or not: with more than one, answers set the instance cookie.
    total: usize,
    /// `flotilla_instance_<id>`.
    cookie: String,
}

#[derive(Default)]
struct Snapshot {
    /// The routing table with every tombstone added as a retired affinity.
    table: RoutingTable,
    /// Each version's instances.
    versions: HashMap<DeploymentId, VersionInstances>,
}

/// The stale answer, prepared once.
struct Stale {
    status: StatusCode,
    header: Option<(HeaderName, HeaderValue)>,
    socket_reroute: Option<QueryPair>,
    message: &'static str,
}

impl Stale {
    fn new(signals: &StaleSignals) -> Result<Self, StaleError> {
        let status = StaleSignals::check_status(signals.status)
            .ok()
            .and_then(|s| StatusCode::from_u16(s).ok())
            .ok_or(StaleError::Status(signals.status))?;
        let header = match &signals.header {
            Some(h) => {
                let bad = || StaleError::Header(h.to_string());
                let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| bad())?;
                let value = HeaderValue::from_str(&h.value).map_err(|_| bad())?;
                Some((name, value))
            }
            None => None,
        };
        Ok(Stale {
            status,
            header,
            socket_reroute: signals.socket_reroute.clone(),
            message: signals.message(),
        })
    }
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
    stale: Stale,
    stats: Sessions<InstanceKey>,
    counter: AtomicU64,
    publish: Mutex<TargetCache>,
}

impl Router {
    /// A router with no versions, reading affinity from `affinity_header` and `affinity_query`,
    /// with the default stale answer (see [`Router::with_stale`]).
    pub fn new(
        affinity_header: &str,
        affinity_query: &str,
    ) -> Result<Self, flotilla_proxy::ProxyError> {
        Ok(Router {
            current: ArcSwap::from_pointee(Snapshot::default()),
            affinity_header: flotilla_proxy::ProxyConfig::header_name(affinity_header)?,
            affinity_query: affinity_query.to_owned(),
            tab_header: HeaderName::from_static(TAB_HEADER),
            stale: Stale::new(&StaleSignals::default())
                .expect("the default stale signals are valid"),
            stats: Sessions::new(),
            counter: AtomicU64::new(0),
            publish: Mutex::new(TargetCache::default()),
        })
    }

    /// The same router answering requests pinned to a retired version with `signals`.
    pub fn with_stale(mut self, signals: &StaleSignals) -> Result<Self, StaleError> {
        self.stale = Stale::new(signals)?;
        Ok(self)
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
        let mut versions: HashMap<DeploymentId, VersionInstances> = HashMap::new();
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
            let version = versions
                .entry(view.id.clone())
                .or_insert_with(|| VersionInstances {
                    healthy: Vec::new(),
                    open: 0,
                    total: 0,
                    cookie: format!("{INSTANCE_COOKIE_PREFIX}{}", view.id),
                });
            version.total += 1;
            if view.state.running() && view.state.healthy() {
                let instance = view.state.instance.as_str();
                let at = if view.winding_down {
                    version.healthy.len()
                } else {
                    version.open += 1;
                    version.open - 1
                };
                version.healthy.insert(
                    at,
                    Instance {
                        id: view.state.instance.clone(),
                        seed: stable_hash(instance),
                        target,
                        set_cookie: [
                            set_cookie(&version.cookie, instance, false, false),
                            set_cookie(&version.cookie, instance, true, false),
                        ],
                    },
                );
            }
        }
        cache.targets = live;
        // Forget the counters of instances that no longer exist once nothing uses them.
        self.stats
            .retain(|key, stats| cache.targets.contains_key(key) || !stats.is_idle());
        self.current.store(Arc::new(Snapshot {
            table: effective,
            versions,
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
            .versions
            .iter()
            .filter(|(_, v)| !v.healthy.is_empty())
            .map(|(id, v)| (id.clone(), v.healthy.len()))
            .collect()
    }

    fn next(&self) -> u64 {
        self.counter.fetch_add(1, Ordering::Relaxed)
    }

    /// The instance of `version` serving `head`, and the instance cookie to set if the answer
    /// needs one.
    fn pick(
        &self,
        head: &RequestHead<'_>,
        snapshot: &Snapshot,
        version: &VersionInstances,
    ) -> Decision {
        let instances = &version.healthy;
        let tab = head
            .headers
            .get(&self.tab_header)
            .and_then(|v| v.to_str().ok())
            .or_else(|| head.query_param(TAB_QUERY))
            .filter(|t| !t.is_empty());
        if let Some(tab) = tab {
            if instances.len() == 1 {
                return Decision::Forward(instances[0].target.clone());
            }
            let key = stable_hash(tab);
            let best = instances
                .iter()
                .max_by_key(|i| mix(key ^ i.seed))
                .expect("callers pass at least one instance");
            return Decision::Forward(best.target.clone());
        }
        let sticky = version.total > 1;
        if sticky
            && let Some(named) = cookie_value(head.headers, &version.cookie)
            && let Some(instance) = instances.iter().find(|i| i.id.as_str() == named)
        {
            return Decision::Forward(instance.target.clone());
        }
        // Fresh picks avoid instances being wound down, while another can take them.
        let instances = match version.open {
            0 => instances,
            open => &instances[..open],
        };
        let chosen = if instances.len() == 1 {
            &instances[0]
        } else {
            let opens_session = head.is_upgrade()
                || head
                    .headers
                    .get(ACCEPT)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|a| a.contains("text/event-stream"));
            let start = self.next() as usize;
            let n = instances.len();
            if opens_session {
                (0..n)
                    .map(|k| &instances[(start + k) % n])
                    .min_by_key(|i| i.target.stats().sessions())
                    .expect("callers pass at least one instance")
            } else {
                &instances[start % n]
            }
        };
        if !sticky {
            return Decision::Forward(chosen.target.clone());
        }
        let mut headers = HeaderMap::new();
        let secure = head.secure();
        headers.append(SET_COOKIE, chosen.set_cookie[usize::from(secure)].clone());
        // Cookies of versions that no longer run go with it, so they do not pile up.
        for name in cookie_names(head.headers) {
            let Some(id) = name.strip_prefix(INSTANCE_COOKIE_PREFIX) else {
                continue;
            };
            let gone =
                DeploymentId::new(id).map_or(true, |id| !snapshot.versions.contains_key(&id));
            if gone {
                headers.append(SET_COOKIE, set_cookie(name, "", secure, true));
            }
        }
        Decision::ForwardWith(chosen.target.clone(), headers)
    }

    /// The stale answer to `head`, pinned to `retired`, while `current` takes fresh requests.
    fn stale(
        &self,
        head: &RequestHead<'_>,
        snapshot: &Snapshot,
        retired: &DeploymentId,
        current: Option<&DeploymentId>,
    ) -> Decision {
        let answer = || {
            let mut response = json_response(
                self.stale.status,
                stale_body(retired, current, self.stale.message),
            );
            if let Some((name, value)) = &self.stale.header {
                response.headers_mut().insert(name.clone(), value.clone());
            }
            response
        };
        if !head.is_upgrade() {
            return Decision::Respond(answer());
        }
        let reroute = self
            .stale
            .socket_reroute
            .as_ref()
            .is_some_and(|marker| head.uri.query().is_some_and(|q| marker.matches(q)));
        if reroute
            && let Some(version) = current
                .and_then(|id| snapshot.versions.get(id))
                .filter(|v| !v.healthy.is_empty())
        {
            return self.pick(head, snapshot, version);
        }
        let mut headers = HeaderMap::new();
        if let Some((name, value)) = &self.stale.header {
            headers.insert(name.clone(), value.clone());
        }
        Decision::CloseSocket(Box::new(SocketClose {
            code: STALE_CLOSE_CODE,
            reason: STALE_CLOSE_REASON.to_owned(),
            headers,
            otherwise: answer(),
        }))
    }
}

/// The value of the first cookie called `name` in the request's `Cookie` headers.
fn cookie_value<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    cookies(headers).find_map(|(n, v)| (n == name).then_some(v))
}

/// The names of the request's cookies.
fn cookie_names(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    cookies(headers).map(|(n, _)| n)
}

/// Every `name=value` pair of the request's `Cookie` headers (RFC 6265 §5.4: `; `-separated).
fn cookies(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            Some((name.trim(), value.trim().trim_matches('"')))
        })
}

/// A `Set-Cookie` value for the instance cookie `name` (or one removing it).
fn set_cookie(name: &str, value: &str, secure: bool, remove: bool) -> HeaderValue {
    let mut text = format!("{name}={value}; Path=/; HttpOnly; SameSite=Lax");
    if secure {
        text.push_str("; Secure");
    }
    if remove {
        let _ = write!(text, "; Max-Age=0");
    }
    HeaderValue::from_str(&text).expect(
        "names are this router's prefix and a deployment id, or a name read from a valid Cookie \
         header value; values are instance ids: all visible ASCII",
    )
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
                match snapshot.versions.get(id) {
                    Some(version) if !version.healthy.is_empty() => {
                        self.pick(head, &snapshot, version)
                    }
                    _ => Decision::Respond(unavailable(id)),
                }
            }
            RouteDecision::Gone { retired, current } => {
                self.stale(head, &snapshot, retired, current)
            }
            RouteDecision::NoVersion => Decision::Respond(no_version()),
        }
    }
}

/// The stale answer's body for a retired version, exactly as the browser client expects it.
pub fn stale_body(retired: &DeploymentId, current: Option<&DeploymentId>, message: &str) -> String {
    serde_json::json!({
        "error": STALE_CLOSE_REASON,
        "retired": retired.as_str(),
        "current": current.map(DeploymentId::as_str),
        "message": message,
    })
    .to_string()
}

fn no_version() -> Response<flotilla_proxy::Body> {
    let mut r = json_response(
        StatusCode::SERVICE_UNAVAILABLE,
        r#"{"error":"no_version","message":"503 Service Unavailable: no version is deployed yet"}"#,
    );
    r.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

fn unavailable(id: &DeploymentId) -> Response<flotilla_proxy::Body> {
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
    use flotilla_core::routing::{RETIRED_MESSAGE, WeightedTarget};
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
            winding_down: false,
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
            tls: false,
        };
        r.route(&head)
    }

    /// The target of a forwarding decision, and the `Set-Cookie` values it adds.
    fn forwarded(d: Decision) -> Option<(Arc<Target>, Vec<String>)> {
        match d {
            Decision::Forward(t) => Some((t, Vec::new())),
            Decision::ForwardWith(t, headers) => Some((
                t,
                headers
                    .get_all(SET_COOKIE)
                    .iter()
                    .map(|v| v.to_str().expect("ascii").to_owned())
                    .collect(),
            )),
            _ => None,
        }
    }

    fn check(r: &Router, uri: &str, headers: &[(&str, &str)], want: Want) {
        let d = decide(r, uri, headers);
        let d = match forwarded(d) {
            Some((t, _)) => Decision::Forward(t),
            None => decide(r, uri, headers),
        };
        match (d, want) {
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
            if let Some((t, _)) = forwarded(decide(&r, "/", &[])) {
                *ports.entry(t.addr().port()).or_insert(0) += 1;
            }
        }
        assert_eq!(ports.values().copied().collect::<Vec<_>>(), vec![50, 50]);
    }

    fn cookie_name(n: u64) -> String {
        format!("flotilla_instance_{}", id(n))
    }

    #[test]
    fn a_request_without_a_tab_key_gets_the_instance_cookie_of_its_instance() {
        let (r, _) = router();
        let (target, cookies) = forwarded(decide(&r, "/", &[])).expect("forwarded");
        let instance = if target.addr().port() == 2001 {
            "i1"
        } else {
            "i2"
        };
        assert_eq!(
            cookies,
            vec![format!(
                "{}={instance}; Path=/; HttpOnly; SameSite=Lax",
                cookie_name(2)
            )]
        );
        // Over TLS (a proxy in front says so) the cookie is Secure.
        let (_, cookies) =
            forwarded(decide(&r, "/", &[("x-forwarded-proto", "https")])).expect("forwarded");
        assert!(cookies[0].ends_with("; Secure"), "{cookies:?}");
        // A tab key wins and sets nothing.
        let (_, cookies) =
            forwarded(decide(&r, "/", &[("x-flotilla-tab", "tab-1")])).expect("forwarded");
        assert!(cookies.is_empty(), "{cookies:?}");
    }

    #[test]
    fn the_instance_cookie_keeps_requests_and_sockets_on_its_instance() {
        let (r, _) = router();
        let v1 = id(1).to_string();
        for (instance, port) in [("i1", 1001), ("i2", 1002)] {
            let cookie = format!("other=1; {}={instance}", cookie_name(1));
            for n in 0..20 {
                // WebSocket upgrades (least sessions otherwise) and plain requests (round robin
                // otherwise) alike.
                let upgrade = [
                    ("cookie", cookie.as_str()),
                    ("connection", "upgrade"),
                    ("upgrade", "websocket"),
                ];
                let plain = [("cookie", cookie.as_str())];
                let headers: &[(&str, &str)] = if n % 2 == 0 { &upgrade } else { &plain };
                let (t, cookies) = forwarded(decide(
                    &r,
                    &format!("/ws?flotilla_deployment={v1}"),
                    headers,
                ))
                .expect("forwarded");
                assert_eq!(t.addr().port(), port);
                assert!(cookies.is_empty(), "a valid cookie is not set again");
            }
        }
    }

    #[test]
    fn an_instance_wound_down_takes_no_fresh_picks_but_keeps_its_tabs() {
        let (r, mut views) = router();
        let mut t = RoutingTable::new();
        t.install_affinity(id(1));
        t.set_default(vec![WeightedTarget {
            id: id(1),
            weight: 100,
        }])
        .expect("valid");
        views[0].winding_down = true; // v1's i1
        r.publish(&t, &[], &views);
        let v1 = id(1).to_string();
        for n in 0..20 {
            // Fresh requests, session openings and pinned requests without a cookie: all i2,
            // although i1 has as few sessions.
            let upgrade = [("connection", "upgrade"), ("upgrade", "websocket")];
            let headers: &[(&str, &str)] = if n % 2 == 0 { &upgrade } else { &[] };
            let (target, _) = forwarded(decide(
                &r,
                &format!("/ws?flotilla_deployment={v1}"),
                headers,
            ))
            .expect("forwarded");
            assert_eq!(target.addr().port(), 1002);
            check(&r, "/", &[], Want::Port(1002));
        }
        // A tab that lives on i1 still reaches it, by its cookie or its tab key.
        let cookie = format!("{}=i1", cookie_name(1));
        check(
            &r,
            "/",
            &[("x-flotilla-deployment", &v1), ("cookie", &cookie)],
            Want::Port(1001),
        );
        let on_i1 = (0..100)
            .map(|n| format!("tab-{n}"))
            .find(|tab| {
                let mut both = views.clone();
                both[0].winding_down = false;
                let probe = Router::new("X-Flotilla-Deployment", "flotilla_deployment")
                    .expect("valid names");
                probe.publish(&t, &[], &both);
                forwarded(decide(&probe, "/", &[("x-flotilla-tab", tab)]))
                    .is_some_and(|(target, _)| target.addr().port() == 1001)
            })
            .expect("some tab key hashes to i1");
        check(&r, "/", &[("x-flotilla-tab", &on_i1)], Want::Port(1001));
        // With every instance wound down, they still serve.
        views[1].winding_down = true;
        r.publish(&t, &[], &views);
        check(&r, "/", &[], Want::AnyOf(&[1001, 1002]));
    }

    #[test]
    fn the_instance_cookie_never_chooses_the_version() {
        let (r, _) = router();
        // A cookie of v1 on a fresh request (which goes to v2) is someone else's business.
        let cookie = format!("{}=i1", cookie_name(1));
        for _ in 0..10 {
            check(&r, "/", &[("cookie", &cookie)], Want::AnyOf(&[2001, 2002]));
        }
        // A retired version's request stays retired whatever cookie it carries.
        let v0 = id(0).to_string();
        let cookie = format!("{}=i1", cookie_name(0));
        check(
            &r,
            "/",
            &[("x-flotilla-deployment", &v0), ("cookie", &cookie)],
            Want::Status(410),
        );
    }

    #[test]
    fn a_stale_instance_cookie_is_ignored_and_replaced() {
        let (r, views) = router();
        let v1 = id(1).to_string();
        // An instance that does not exist.
        let cookie = format!("{}=i9; {}=i1", cookie_name(1), cookie_name(7));
        let (t, cookies) = forwarded(decide(
            &r,
            "/",
            &[("x-flotilla-deployment", &v1), ("cookie", &cookie)],
        ))
        .expect("forwarded");
        let instance = if t.addr().port() == 1001 { "i1" } else { "i2" };
        assert_eq!(
            cookies,
            vec![
                format!(
                    "{}={instance}; Path=/; HttpOnly; SameSite=Lax",
                    cookie_name(1)
                ),
                // A cookie of a version that no longer runs is removed.
                format!(
                    "{}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0",
                    cookie_name(7)
                ),
            ]
        );
        // An instance that went unhealthy: its browsers move to the other one, and are told.
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
        let cookie = format!("{}=i1", cookie_name(1));
        let (t, cookies) = forwarded(decide(
            &r,
            "/",
            &[("x-flotilla-deployment", &v1), ("cookie", &cookie)],
        ))
        .expect("forwarded");
        assert_eq!(t.addr().port(), 1002);
        assert_eq!(
            cookies,
            vec![format!(
                "{}=i2; Path=/; HttpOnly; SameSite=Lax",
                cookie_name(1)
            )]
        );
    }

    #[test]
    fn a_version_with_one_instance_sets_no_cookie() {
        let r = Router::new("X-Flotilla-Deployment", "flotilla_deployment").expect("valid");
        let mut t = RoutingTable::new();
        t.install_affinity(id(2));
        t.set_default(vec![WeightedTarget {
            id: id(2),
            weight: 100,
        }])
        .expect("valid");
        r.publish(&t, &[], &[view(2, "i1", 2001)]);
        let (t, cookies) = forwarded(decide(&r, "/", &[])).expect("forwarded");
        assert_eq!(t.addr().port(), 2001);
        assert!(cookies.is_empty(), "{cookies:?}");
    }

    const UPGRADE: [(&str, &str); 2] = [("connection", "Upgrade"), ("upgrade", "websocket")];

    #[test]
    fn a_stale_socket_is_closed_with_4410_and_a_stale_request_answered_410() {
        let (r, _) = router();
        let v0 = id(0).to_string();
        match decide(&r, &format!("/ws?flotilla_deployment={v0}"), &UPGRADE) {
            Decision::CloseSocket(close) => {
                assert_eq!(close.code, 4410);
                assert_eq!(close.reason, "version_retired");
                assert_eq!(close.otherwise.status().as_u16(), 410);
            }
            d => panic!("{d:?}"),
        }
        match decide(&r, &format!("/api?flotilla_deployment={v0}"), &[]) {
            Decision::Respond(resp) => {
                assert_eq!(resp.status().as_u16(), 410);
                assert!(resp.headers().get("x-pulse-stale-affinity").is_none());
            }
            d => panic!("{d:?}"),
        }
        // The reroute marker means nothing unless configured.
        check(
            &r,
            &format!("/ws?flotilla_deployment={v0}&pulse_reload_on_stale_affinity=1"),
            &[],
            Want::Status(410),
        );
    }

    #[test]
    fn configured_stale_signals_shape_the_answer_and_reroute_marked_sockets() {
        let (plain, views) = router();
        drop(plain);
        let signals = StaleSignals {
            status: 409,
            header: Some(
                flotilla_core::stale::StaleHeader::parse("x-pulse-stale-affinity: 1")
                    .expect("valid"),
            ),
            socket_reroute: Some(
                QueryPair::parse("pulse_reload_on_stale_affinity=1").expect("valid"),
            ),
        };
        let r = Router::new("X-Flotilla-Deployment", "pulse_deployment")
            .expect("valid")
            .with_stale(&signals)
            .expect("valid signals");
        let mut t = RoutingTable::new();
        t.install_affinity(id(1));
        t.install_affinity(id(2));
        t.mark_retired(id(0)).expect("not default");
        t.set_default(vec![WeightedTarget {
            id: id(2),
            weight: 100,
        }])
        .expect("valid");
        r.publish(&t, &[], &views);
        let v0 = id(0).to_string();
        match decide(&r, "/", &[("x-flotilla-deployment", &v0)]) {
            Decision::Respond(resp) => {
                assert_eq!(resp.status().as_u16(), 409);
                assert_eq!(
                    resp.headers()
                        .get("x-pulse-stale-affinity")
                        .map(|v| v.as_bytes()),
                    Some(&b"1"[..])
                );
            }
            d => panic!("{d:?}"),
        }
        // A marked socket goes to the current version (with its instance cookie)...
        let (t, cookies) = forwarded(decide(
            &r,
            &format!("/ws?pulse_deployment={v0}&pulse_reload_on_stale_affinity=1"),
            &UPGRADE,
        ))
        .expect("rerouted");
        assert!([2001, 2002].contains(&t.addr().port()), "{}", t.addr());
        assert_eq!(cookies.len(), 1, "{cookies:?}");
        // ...an unmarked one (or one marked otherwise) is closed, with the header on its 101.
        for query in ["", "&pulse_reload_on_stale_affinity=0"] {
            match decide(&r, &format!("/ws?pulse_deployment={v0}{query}"), &UPGRADE) {
                Decision::CloseSocket(close) => {
                    assert_eq!(close.code, 4410);
                    assert_eq!(
                        close
                            .headers
                            .get("x-pulse-stale-affinity")
                            .map(|v| v.as_bytes()),
                        Some(&b"1"[..])
                    );
                    assert_eq!(close.otherwise.status().as_u16(), 409);
                }
                d => panic!("{query}: {d:?}"),
            }
        }
        // A marked plain request is not a socket: it gets the stale answer.
        check(
            &r,
            &format!("/x?pulse_deployment={v0}&pulse_reload_on_stale_affinity=1"),
            &[],
            Want::Status(409),
        );
        // Nothing to reroute to: closed.
        for v in views.iter().filter(|v| v.id == id(2)) {
            v.state.set_healthy(false);
        }
        let mut t2 = RoutingTable::new();
        t2.install_affinity(id(1));
        t2.install_affinity(id(2));
        t2.mark_retired(id(0)).expect("not default");
        t2.set_default(vec![WeightedTarget {
            id: id(2),
            weight: 100,
        }])
        .expect("valid");
        r.publish(&t2, &[], &views);
        assert!(matches!(
            decide(
                &r,
                &format!("/ws?pulse_deployment={v0}&pulse_reload_on_stale_affinity=1"),
                &UPGRADE,
            ),
            Decision::CloseSocket(_)
        ));
    }

    #[test]
    fn invalid_stale_signals_are_refused() {
        let r = || Router::new("X-Flotilla-Deployment", "flotilla_deployment").expect("valid");
        let bad_status = StaleSignals {
            status: 404,
            ..StaleSignals::default()
        };
        assert!(matches!(
            r().with_stale(&bad_status),
            Err(StaleError::Status(404))
        ));
    }

    #[test]
    fn gone_body_is_what_the_browser_client_expects() {
        let body: serde_json::Value =
            serde_json::from_str(&stale_body(&id(0), Some(&id(2)), RETIRED_MESSAGE)).expect("json");
        assert_eq!(
            body,
            serde_json::json!({
                "error": "version_retired",
                "retired": id(0).as_str(),
                "current": id(2).as_str(),
                "message": "410 Gone: this version is no longer available",
            })
        );
        let body: serde_json::Value =
            serde_json::from_str(&stale_body(&id(0), None, RETIRED_MESSAGE)).expect("json");
        assert_eq!(body["current"], serde_json::Value::Null);
    }
}
