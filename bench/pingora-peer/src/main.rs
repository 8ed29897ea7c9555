//! The Pingora peer of the router benchmark: routes by the affinity header exactly as the nginx
//! configuration of bench/router-vs-nginx.sh does (the pinned version's pool when
//! `X-Flotilla-Deployment` names it, the fresh version's otherwise), round-robin within a pool,
//! keep-alive to the upstreams, and stamps the serving version on the response.
//!
//! Usage: pingora-peer LISTEN THREADS FRESH_ID FRESH_ADDRS PINNED_ID PINNED_ADDRS
//! (ADDRS comma-separated host:port lists).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session, http_proxy_service};
use pingora::server::configuration::ServerConf;

struct Pool {
    id: String,
    addrs: Vec<SocketAddr>,
    next: AtomicUsize,
}

impl Pool {
    fn pick(&self) -> SocketAddr {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        self.addrs[n % self.addrs.len()]
    }
}

struct Router {
    fresh: Pool,
    pinned: Pool,
}

#[async_trait]
impl ProxyHttp for Router {
    /// The version chosen for the request, to stamp its response.
    type CTX = bool;

    fn new_ctx(&self) -> bool {
        false
    }

    async fn upstream_peer(&self, session: &mut Session, pinned: &mut bool) -> Result<Box<HttpPeer>> {
        *pinned = session
            .req_header()
            .headers
            .get("x-flotilla-deployment")
            .is_some_and(|v| v.as_bytes() == self.pinned.id.as_bytes());
        let pool = if *pinned { &self.pinned } else { &self.fresh };
        Ok(Box::new(HttpPeer::new(pool.pick(), false, String::new())))
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        response: &mut ResponseHeader,
        pinned: &mut bool,
    ) -> Result<()> {
        let id = if *pinned { &self.pinned.id } else { &self.fresh.id };
        response.insert_header("x-flotilla-deployment", id.as_str())?;
        Ok(())
    }
}

fn pool(id: String, addrs: &str) -> Pool {
    Pool {
        id,
        addrs: addrs
            .split(',')
            .map(|a| a.parse().expect("an upstream address host:port"))
            .collect(),
        next: AtomicUsize::new(0),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, threads, fresh_id, fresh_addrs, pinned_id, pinned_addrs] = args.as_slice() else {
        eprintln!("usage: pingora-peer LISTEN THREADS FRESH_ID FRESH_ADDRS PINNED_ID PINNED_ADDRS");
        std::process::exit(2);
    };
    let conf = ServerConf {
        threads: threads.parse().expect("threads"),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let router = Router {
        fresh: pool(fresh_id.clone(), fresh_addrs),
        pinned: pool(pinned_id.clone(), pinned_addrs),
    };
    let mut proxy = http_proxy_service(&server.configuration, router);
    proxy.add_tcp(listen);
    server.add_service(proxy);
    server.run_forever();
}
