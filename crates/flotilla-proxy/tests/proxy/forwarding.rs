//! Forwarding: streaming bodies, header rewriting, stamping, routing answers, upstream failures.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use flotilla_proxy::http::{Request, StatusCode, header};
use flotilla_proxy::{CLIENT_JS, ProxyConfig};
use http_body_util::BodyExt;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::util::{
    ChannelBody, Proxy, collect, connect, eventually, get, raw, start_upstream, within,
};

#[tokio::test]
async fn streams_request_and_response_bodies_without_buffering() {
    let (upstream, _up) = start_upstream().await;
    let proxy = Proxy::start(upstream, ProxyConfig::default()).await;
    let mut client = connect::<ChannelBody>(proxy.addr).await;
    let (tx, rx) = mpsc::channel(1);
    let request = Request::post("/echo")
        .header(header::HOST, "app.example")
        .body(ChannelBody(rx))
        .expect("valid request");
    // The upstream echoes the request body as it arrives. Each chunk must come back before the
    // next is sent: neither direction waits for the whole body.
    tx.send(Bytes::from_static(b"first chunk"))
        .await
        .expect("send");
    let response = within("the response head", client.send_request(request))
        .await
        .expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response
            .headers()
            .get("x-flotilla-deployment")
            .map(|v| v.as_bytes()),
        Some(&b"web-1"[..])
    );
    let mut body = response.into_body();
    for chunk in ["first chunk", "second", "third and last"] {
        if chunk != "first chunk" {
            tx.send(Bytes::from(chunk)).await.expect("send");
        }
        let frame = within("an echoed chunk", body.frame())
            .await
            .expect("a frame")
            .expect("no error");
        let data = frame.into_data().expect("a data frame");
        assert_eq!(&data[..], chunk.as_bytes());
        assert_eq!(
            proxy.stats.in_flight(),
            1,
            "the request is in flight while streaming"
        );
    }
    drop(tx);
    assert!(within("the end of the body", body.frame()).await.is_none());
    eventually("in-flight back to 0", || proxy.stats.in_flight() == 0).await;
}

#[tokio::test]
async fn forwarded_headers_are_set_and_hop_by_hop_headers_are_dropped() {
    let (upstream, _up) = start_upstream().await;
    let proxy = Proxy::start(upstream, ProxyConfig::default()).await;
    let response = raw(
        proxy.addr,
        "GET /headers?q=1 HTTP/1.1\r\n\
         Host: app.example\r\n\
         Connection: close, X-Secret\r\n\
         X-Secret: do-not-forward\r\n\
         Keep-Alive: timeout=5\r\n\
         Proxy-Connection: keep-alive\r\n\
         TE: trailers\r\n\
         Trailer: x-sum\r\n\
         Upgrade: websocket\r\n\
         X-Forwarded-For: 203.0.113.9\r\n\
         X-Forwarded-Proto: https\r\n\
         X-Forwarded-Host: spoofed.example\r\n\
         X-Real-IP: 203.0.113.10\r\n\
         Forwarded: for=203.0.113.11;proto=https\r\n\
         X-App: kept\r\n\r\n",
    )
    .await;
    assert_eq!(response.status, 200);
    let seen = response.text().to_ascii_lowercase();
    assert!(seen.starts_with("get /headers?q=1\n"), "{seen}");
    // The proxy is the edge: what the client claimed about itself is replaced by what the proxy
    // saw (see docs/router.md).
    for present in [
        "host: app.example\n",
        "x-forwarded-for: 127.0.0.1\n",
        "x-real-ip: 127.0.0.1\n",
        "x-forwarded-proto: http\n",
        "x-forwarded-host: app.example\n",
        "x-app: kept\n",
    ] {
        assert!(seen.contains(present), "missing {present:?} in\n{seen}");
    }
    for absent in [
        "x-secret",
        "keep-alive",
        "proxy-connection",
        "\nte:",
        "trailer",
        "upgrade",
        "spoofed",
        "https",
        "203.0.113",
        "\nforwarded:",
    ] {
        assert!(!seen.contains(absent), "{absent:?} was forwarded:\n{seen}");
    }
}

#[tokio::test]
async fn trusted_forwarded_headers_are_kept() {
    let (upstream, _up) = start_upstream().await;
    let config = ProxyConfig {
        trust_forwarded: true,
        ..Default::default()
    };
    let proxy = Proxy::start(upstream, config).await;
    let response = raw(
        proxy.addr,
        "GET /headers HTTP/1.1\r\nHost: 10.0.0.5:8080\r\nConnection: close\r\n\
         X-Forwarded-For: 203.0.113.9\r\nX-Forwarded-Proto: https\r\n\
         X-Forwarded-Host: app.example\r\n\r\n",
    )
    .await;
    let seen = response.text();
    assert!(
        seen.contains("x-forwarded-for: 203.0.113.9, 127.0.0.1\n"),
        "{seen}"
    );
    assert!(seen.contains("x-real-ip: 203.0.113.9\n"), "{seen}");
    assert!(seen.contains("x-forwarded-proto: https\n"), "{seen}");
    assert!(seen.contains("x-forwarded-host: app.example\n"), "{seen}");
}

#[tokio::test]
async fn responses_lose_hop_by_hop_headers_and_carry_the_deployment_stamp() {
    let (upstream, _up) = start_upstream().await;
    let proxy = Proxy::start(upstream, ProxyConfig::default()).await;
    let response = raw(
        proxy.addr,
        "GET /hop HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(response.status, 200);
    assert_eq!(response.header("x-upstream-secret"), None);
    assert_eq!(response.header("keep-alive"), None);
    assert_eq!(response.header("x-kept"), Some("yes"));
    // The proxy's stamp replaces whatever the app claimed.
    assert_eq!(response.all("x-flotilla-deployment"), vec!["web-1"]);
    assert_eq!(response.text(), "ok");
}

#[tokio::test]
async fn deployment_header_name_is_configurable() {
    let (upstream, _up) = start_upstream().await;
    let config = ProxyConfig {
        deployment_header: ProxyConfig::header_name("X-App-Version").expect("valid name"),
        ..Default::default()
    };
    let proxy = Proxy::start(upstream, config).await;
    let response = raw(
        proxy.addr,
        "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(response.header("x-app-version"), Some("web-1"));
    assert_eq!(response.header("x-flotilla-deployment"), None);
}

#[tokio::test]
async fn router_answers_are_sent_as_is_and_deferred_decisions_are_followed() {
    let (upstream, _up) = start_upstream().await;
    let proxy = Proxy::start(upstream, ProxyConfig::default()).await;
    let gone = raw(
        proxy.addr,
        "GET /gone HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(gone.status, 410);
    assert_eq!(gone.header("content-type"), Some("application/json"));
    assert_eq!(gone.header("x-router"), Some("yes"));
    assert_eq!(gone.header("x-flotilla-deployment"), None);
    assert!(gone.text().contains("version_retired"), "{}", gone.text());
    assert_eq!(
        proxy.stats.snapshot().requests_total,
        0,
        "no upstream was involved"
    );

    let deferred = raw(
        proxy.addr,
        "GET /defer/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(deferred.status, 200);
    assert_eq!(deferred.text(), "hello from /defer/x");
    assert_eq!(deferred.header("x-flotilla-deployment"), Some("web-1"));
}

#[tokio::test]
async fn client_script_is_served_by_the_proxy_itself() {
    let (upstream, _up) = start_upstream().await;
    let proxy = Proxy::start(upstream, ProxyConfig::default()).await;
    let response = raw(
        proxy.addr,
        "GET /_flotilla/client.js HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(response.status, 200);
    assert_eq!(
        response.header("content-type"),
        Some("application/javascript; charset=utf-8")
    );
    assert_eq!(response.header("cache-control"), Some("no-cache"));
    assert_eq!(response.body, CLIENT_JS.as_bytes());
    let etag = response.header("etag").expect("an etag").to_owned();
    let again = raw(
        proxy.addr,
        &format!(
            "GET /_flotilla/client.js HTTP/1.1\r\nHost: a\r\nIf-None-Match: {etag}\r\nConnection: close\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());
    assert_eq!(proxy.route_calls.load(Ordering::SeqCst), 0, "never routed");
}

#[tokio::test]
async fn unreachable_upstream_is_a_502_with_a_json_body_for_clients() {
    // Bind and release a port so nothing listens there.
    let dead = {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        listener.local_addr().expect("address")
    };
    let proxy = Proxy::start(dead, ProxyConfig::default()).await;
    let response = raw(
        proxy.addr,
        "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(response.status, 502);
    assert_eq!(response.header("content-type"), Some("application/json"));
    let body = response.text();
    assert!(body.contains(r#""error":"bad_gateway""#), "{body}");
    assert!(
        !body.contains("127.0.0.1"),
        "the client message must not leak addresses: {body}"
    );
    let snap = proxy.stats.snapshot();
    assert_eq!(snap.upstream_errors_total, 1);
    assert_eq!(snap.in_flight, 0);
}

#[tokio::test]
async fn slow_upstream_head_is_a_504_when_a_timeout_is_set() {
    let (upstream, _up) = start_upstream().await;
    let config = ProxyConfig {
        response_header_timeout: Some(Duration::from_millis(50)),
        ..Default::default()
    };
    let proxy = Proxy::start(upstream, config).await;
    let response = raw(
        proxy.addr,
        "GET /slow?ms=2000 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(response.status, 504);
    assert!(
        response.text().contains("gateway_timeout"),
        "{}",
        response.text()
    );
    assert_eq!(proxy.stats.snapshot().upstream_errors_total, 1);
}

#[tokio::test]
async fn keep_alive_requests_are_counted_and_in_flight_returns_to_zero() {
    let (upstream, _up) = start_upstream().await;
    let proxy = Proxy::start(upstream, ProxyConfig::default()).await;
    let mut client = connect(proxy.addr).await;
    for i in 0..5 {
        let response = within("a response", client.send_request(get(&format!("/n{i}"))))
            .await
            .expect("response");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            collect(response.into_body()).await,
            format!("hello from /n{i}")
        );
    }
    let snap = proxy.stats.snapshot();
    assert_eq!(snap.requests_total, 5);
    assert_eq!(snap.sessions_total, 0);
    eventually("in-flight back to 0", || proxy.stats.in_flight() == 0).await;
}

#[tokio::test]
async fn concurrent_keep_alive_clients_are_counted_exactly() {
    let (upstream, _up) = start_upstream().await;
    let proxy = Proxy::start(upstream, ProxyConfig::default()).await;
    let clients: Vec<_> = (0..8)
        .map(|c| {
            let addr = proxy.addr;
            tokio::spawn(async move {
                let mut client = connect(addr).await;
                for i in 0..40 {
                    let path = format!("/c{c}/r{i}");
                    let response = client.send_request(get(&path)).await.expect("response");
                    assert_eq!(response.status(), StatusCode::OK);
                    assert_eq!(
                        collect(response.into_body()).await,
                        format!("hello from {path}")
                    );
                }
            })
        })
        .collect();
    for client in clients {
        within("a client to finish", client)
            .await
            .expect("client task");
    }
    let snap = proxy.stats.snapshot();
    assert_eq!(snap.requests_total, 320);
    assert_eq!(snap.upstream_errors_total, 0);
    eventually("in-flight back to 0", || proxy.stats.in_flight() == 0).await;
}

#[tokio::test]
async fn connection_header_cannot_strip_credentials_or_forwarding_headers() {
    let (upstream, _up) = start_upstream().await;
    let config = ProxyConfig {
        trust_forwarded: true,
        ..Default::default()
    };
    let proxy = Proxy::start(upstream, config).await;
    let response = raw(
        proxy.addr,
        "GET /headers HTTP/1.1\r\nHost: app.example\r\n\
         Connection: close, Authorization, cookie, X-Forwarded-For, x-flotilla-deployment, \
         Host, Content-Length, X-Custom\r\n\
         Authorization: Bearer t0ken\r\nCookie: s=1\r\nX-Forwarded-For: 203.0.113.9\r\n\
         X-Flotilla-Deployment: web-1\r\nX-Custom: hop\r\n\r\n",
    )
    .await;
    assert_eq!(response.status, 200);
    let seen = response.text().to_ascii_lowercase();
    for present in [
        "host: app.example\n",
        "authorization: bearer t0ken\n",
        "cookie: s=1\n",
        "x-forwarded-for: 203.0.113.9, 127.0.0.1\n",
        "x-flotilla-deployment: web-1\n",
    ] {
        assert!(seen.contains(present), "missing {present:?} in\n{seen}");
    }
    assert!(
        !seen.contains("x-custom"),
        "a custom header named in Connection still goes:\n{seen}"
    );
}

#[tokio::test]
async fn http_1_0_request_without_host_gets_the_address_the_client_used() {
    let (upstream, _up) = start_upstream().await;
    let proxy = Proxy::start(upstream, ProxyConfig::default()).await;
    let response = raw(proxy.addr, "GET /headers HTTP/1.0\r\n\r\n").await;
    assert_eq!(response.status, 200);
    let seen = response.text();
    let addr = proxy.addr.to_string();
    assert!(seen.contains(&format!("host: {addr}\n")), "{seen}");
    assert!(
        seen.contains(&format!("x-forwarded-host: {addr}\n")),
        "{seen}"
    );
    assert!(
        !seen.contains(&upstream.to_string()),
        "the upstream's address leaked: {seen}"
    );
}

#[tokio::test]
async fn http_1_1_request_without_host_is_a_400() {
    let (upstream, _up) = start_upstream().await;
    let proxy = Proxy::start(upstream, ProxyConfig::default()).await;
    let response = raw(
        proxy.addr,
        "GET /headers HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(response.status, 400);
    assert!(
        response.text().contains("bad_request"),
        "{}",
        response.text()
    );
    assert_eq!(proxy.route_calls.load(Ordering::SeqCst), 0, "never routed");
    // An absolute-form target names its host.
    let absolute = raw(
        proxy.addr,
        "GET http://app.example/headers HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(absolute.status, 200);
    assert!(
        absolute.text().contains("x-forwarded-host: app.example\n"),
        "{}",
        absolute.text()
    );
}

#[tokio::test]
async fn malformed_chunked_body_is_a_400_not_a_502() {
    let (upstream, _up) = start_upstream().await;
    let proxy = Proxy::start(upstream, ProxyConfig::default()).await;
    let started = std::time::Instant::now();
    let response = raw(
        proxy.addr,
        "POST /consume HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
         5\r\nhello\r\nzz\r\nbad\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(response.status, 400, "{}", response.text());
    assert!(
        response.text().contains("bad_request"),
        "{}",
        response.text()
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        proxy.stats.snapshot().upstream_errors_total,
        0,
        "the client's bad body is not the upstream's failure"
    );
    // A well-formed chunked body still goes through.
    let fine = raw(
        proxy.addr,
        "POST /consume HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\
         Connection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(fine.status, 200);
    assert_eq!(fine.text(), "5 bytes");
}

/// Requests one after another reuse one upstream connection, whatever shape their response
/// body has (a `Content-Length` body, which hyper stops reading at its last byte, a chunked
/// one, none at all), and a connection the upstream asked to close is not reused.
#[tokio::test]
async fn upstream_connections_are_reused_once_each_response_ends() {
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let upstream = listener.local_addr().expect("address");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let _up = crate::util::AbortOnDrop(tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                        let response = hyper::Response::builder();
                        let response = match req.uri().path() {
                            "/chunked" => response.body(
                                http_body_util::StreamBody::new(futures_util::stream::iter([
                                    Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(
                                        Bytes::from_static(b"chunk"),
                                    )),
                                ]))
                                .boxed(),
                            ),
                            "/close" => response.header(header::CONNECTION, "close").body(
                                http_body_util::Full::new(Bytes::from_static(b"bye")).boxed(),
                            ),
                            "/empty" => response
                                .status(StatusCode::NO_CONTENT)
                                .body(http_body_util::Empty::new().boxed()),
                            _ => response
                                .body(http_body_util::Full::new(Bytes::from_static(b"ok")).boxed()),
                        };
                        Ok::<_, std::convert::Infallible>(response.expect("response"))
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    }));
    let proxy = Proxy::start(upstream, ProxyConfig::default()).await;
    let mut client = connect::<http_body_util::Empty<Bytes>>(proxy.addr).await;
    for path in ["/", "/chunked", "/empty", "/", "/chunked", "/"] {
        let request = Request::get(path)
            .header(header::HOST, "app.example")
            .body(http_body_util::Empty::new())
            .expect("valid request");
        let response = within("a response", client.send_request(request))
            .await
            .expect("response");
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
        let _ = collect(response.into_body()).await;
        within("the client connection", client.ready())
            .await
            .expect("ready");
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one upstream connection for all"
    );
    for _ in 0..2 {
        let request = Request::get("/close")
            .header(header::HOST, "app.example")
            .body(http_body_util::Empty::new())
            .expect("valid request");
        let response = within("a response", client.send_request(request))
            .await
            .expect("response");
        assert_eq!(
            collect(response.into_body()).await,
            Bytes::from_static(b"bye")
        );
        within("the client connection", client.ready())
            .await
            .expect("ready");
    }
    // The first `/close` reused the pooled connection, the second needed a new one, and the
    // pool kept neither.
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}
