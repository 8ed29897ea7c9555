//! The cost of one routing decision of the host router, per request shape, without any network:
//! `Router::route` over two versions of two instances each, timed over many calls.
//!
//! Usage: `cargo run --release -p flotilla-host --example route_cost [CALLS]` (default 2 000 000
//! per shape). Prints nanoseconds per decision for: a request pinned by header with a tab key, a
//! fresh request without tab key or cookie (the answer sets the instance cookie), the same with a
//! valid instance cookie, and a WebSocket upgrade carrying the cookie among other cookies.

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::Instant;

use flotilla_core::routing::{RoutingTable, WeightedTarget};
use flotilla_core::{DeploymentId, InstanceId, Timestamp};
use flotilla_host::router::Router;
use flotilla_host::supervisor::{InstanceState, InstanceView};
use flotilla_proxy::http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use flotilla_proxy::{Decision, RequestHead, Route};

/// One request shape: its name, its path and its headers.
struct Shape {
    name: &'static str,
    path: &'static str,
    headers: Vec<(&'static str, String)>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let calls: u64 = match std::env::args().nth(1) {
        Some(n) => n.parse()?,
        None => 2_000_000,
    };
    let v1 = DeploymentId::generate(Timestamp::from_secs(1_764_000_001), 1);
    let v2 = DeploymentId::generate(Timestamp::from_secs(1_764_000_002), 2);
    let router = Router::new("X-Flotilla-Deployment", "flotilla_deployment")?;
    let mut table = RoutingTable::new();
    table.install_affinity(v1.clone());
    table.install_affinity(v2.clone());
    table.set_default(vec![WeightedTarget {
        id: v2.clone(),
        weight: 100,
    }])?;
    let mut views = Vec::new();
    for (n, id) in [&v1, &v2].into_iter().enumerate() {
        for i in 1..=2u16 {
            let port = 10_000 + (n as u16) * 10 + i;
            views.push(InstanceView {
                id: id.clone(),
                state: InstanceState::external(
                    InstanceId::new(&format!("i{i}"))?,
                    SocketAddr::from(([127, 0, 0, 1], port)),
                ),
                winding_down: false,
            });
        }
    }
    router.publish(&table, &[], &views);

    let cookie = format!("flotilla_instance_{v2}=i1");
    let many = format!("theme=dark; session=abc123; {cookie}; other=1");
    let shapes = [
        Shape {
            name: "pinned, tab key",
            path: "/api/state",
            headers: vec![
                ("x-flotilla-deployment", v1.to_string()),
                (
                    "x-flotilla-tab",
                    "0b6c2f4e-8d1a-4c3b-9f7e-2a5d6c8b1e0f".into(),
                ),
            ],
        },
        Shape {
            name: "fresh, no cookie (sets it)",
            path: "/",
            headers: vec![],
        },
        Shape {
            name: "fresh, instance cookie",
            path: "/",
            headers: vec![("cookie", cookie.clone())],
        },
        Shape {
            name: "upgrade, cookie among others",
            path: "/ws",
            headers: vec![
                ("connection", "Upgrade".into()),
                ("upgrade", "websocket".into()),
                ("cookie", many.clone()),
            ],
        },
    ];
    println!("{:<30} {:>12}", "request", "ns/decision");
    for Shape {
        name,
        path,
        headers,
    } in shapes
    {
        let uri: Uri = path.parse()?;
        let mut map = HeaderMap::new();
        for (k, v) in &headers {
            map.insert(
                HeaderName::from_bytes(k.as_bytes())?,
                HeaderValue::from_str(v)?,
            );
        }
        let head = RequestHead {
            method: &Method::GET,
            uri: &uri,
            headers: &map,
            peer: SocketAddr::from(([127, 0, 0, 1], 5555)),
            tls: false,
        };
        // Warm up, then time.
        for _ in 0..calls / 10 {
            black_box(router.route(black_box(&head)));
        }
        let start = Instant::now();
        let mut forwarded = 0u64;
        for _ in 0..calls {
            if let Decision::Forward(_) | Decision::ForwardWith(..) = router.route(black_box(&head))
            {
                forwarded += 1;
            }
        }
        let ns = start.elapsed().as_nanos() as f64 / calls as f64;
        assert_eq!(forwarded, calls, "{name}: every request is forwarded");
        println!("{name:<30} {ns:>12.1}");
    }
    Ok(())
}
