//! HTML script injection: plain, gzip and chunked pages, lengths, HEAD, 304, pages under a
//! Content-Security-Policy, and what is left alone.

use std::io::Read;

use flotilla_proxy::ProxyConfig;

use crate::util::{PAGE, Proxy, RawResponse, raw, start_upstream};

const TAG: &str = r#"<script src="/_flotilla/client.js" data-deployment="web-1"></script>"#;

fn expected_page() -> String {
    PAGE.replacen("<head>", &format!("<head>{TAG}"), 1)
}

async fn injecting_proxy() -> (Proxy, crate::util::AbortOnDrop<()>) {
    let (upstream, guard) = start_upstream().await;
    let config = ProxyConfig {
        inject_client: true,
        ..Default::default()
    };
    (Proxy::start(upstream, config).await, guard)
}

async fn page(proxy: &Proxy, method: &str, query: &str, extra: &str) -> RawResponse {
    raw(
        proxy.addr,
        &format!(
            "{method} /html{query} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\
             Accept: text/html,application/xhtml+xml,*/*;q=0.8\r\n{extra}\r\n"
        ),
    )
    .await
}

/// The body is sent chunked (no stale length) and carries no validators.
fn assert_rewritten_framing(response: &RawResponse) {
    assert_eq!(response.header("content-length"), None, "{response:?}");
    assert_eq!(response.header("transfer-encoding"), Some("chunked"));
    assert_eq!(response.header("etag"), None);
    assert_eq!(response.header("last-modified"), None);
    assert_eq!(
        response.header("server-timing"),
        Some("flotilla-deployment;desc=\"web-1\"")
    );
}

#[tokio::test]
async fn plain_html_gets_the_script_right_after_head() {
    let (proxy, _up) = injecting_proxy().await;
    let response = page(
        &proxy,
        "GET",
        "",
        "Accept-Encoding: gzip, deflate, br, zstd\r\n",
    )
    .await;
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), expected_page());
    assert_rewritten_framing(&response);
    // The upstream was asked only for codings the injector can rewrite.
    assert_eq!(
        response.header("x-seen-accept-encoding"),
        Some("gzip, deflate")
    );
    assert_eq!(response.header("x-flotilla-deployment"), Some("web-1"));
}

#[tokio::test]
async fn gzip_html_is_decoded_injected_and_encoded_again() {
    let (proxy, _up) = injecting_proxy().await;
    let response = page(&proxy, "GET", "?gzip", "Accept-Encoding: gzip\r\n").await;
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-encoding"), Some("gzip"));
    assert_rewritten_framing(&response);
    let mut html = String::new();
    flate2::read::GzDecoder::new(&response.body[..])
        .read_to_string(&mut html)
        .expect("the proxy sends valid gzip");
    assert_eq!(html, expected_page());
}

#[tokio::test]
async fn chunked_html_split_mid_tag_is_injected() {
    let (proxy, _up) = injecting_proxy().await;
    let response = page(&proxy, "GET", "?chunked", "").await;
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), expected_page());
    assert_eq!(response.header("content-length"), None);
    assert_eq!(response.header("transfer-encoding"), Some("chunked"));
}

#[tokio::test]
async fn head_and_not_modified_have_no_body_and_no_stale_length() {
    let (proxy, _up) = injecting_proxy().await;
    let head = page(&proxy, "HEAD", "", "").await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(head.header("content-length"), None, "{head:?}");
    assert_eq!(head.header("etag"), None);

    // An upstream that answers 304 anyway: passed through, still without a body.
    let not_modified = page(&proxy, "GET", "?304", "If-None-Match: \"v1\"\r\n").await;
    assert_eq!(not_modified.status, 304);
    assert!(not_modified.body.is_empty());
}

#[tokio::test]
async fn cached_pages_are_never_revalidated_into_use_after_a_deploy() {
    let (proxy, _up) = injecting_proxy().await;
    // A browser holding a page cached before injection (or from another proxy) revalidates it.
    let response = page(
        &proxy,
        "GET",
        "",
        "If-None-Match: \"v1\"\r\nIf-Modified-Since: Wed, 21 Oct 2015 07:28:00 GMT\r\n",
    )
    .await;
    assert_eq!(response.header("x-seen-if-none-match"), Some("-"));
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), expected_page());
}

#[tokio::test]
async fn non_html_and_non_navigation_responses_pass_untouched() {
    let (proxy, _up) = injecting_proxy().await;
    let json = raw(
        proxy.addr,
        "GET /json HTTP/1.1\r\nHost: a\r\nConnection: close\r\nAccept: text/html\r\n\r\n",
    )
    .await;
    assert_eq!(json.header("content-length"), Some("11"));
    assert_eq!(json.text(), "{\"ok\":true}");

    // A fetch that does not ask for HTML (Accept: */*) gets the page as the app sent it.
    let fetched = raw(
        proxy.addr,
        "GET /html HTTP/1.1\r\nHost: a\r\nConnection: close\r\nAccept: */*\r\n\
         Accept-Encoding: br\r\n\r\n",
    )
    .await;
    assert_eq!(fetched.text(), PAGE);
    assert_eq!(
        fetched.header("content-length"),
        Some(PAGE.len().to_string().as_str())
    );
    assert_eq!(fetched.header("etag"), Some("\"v1\""));
    assert!(fetched.header("last-modified").is_some());
    assert_eq!(fetched.header("x-seen-accept-encoding"), Some("br"));
}

#[tokio::test]
async fn html_in_an_unsupported_coding_passes_untouched() {
    let (proxy, _up) = injecting_proxy().await;
    let response = page(&proxy, "GET", "?br", "").await;
    assert_eq!(response.header("content-encoding"), Some("br"));
    assert_eq!(response.header("content-length"), Some("4"));
    assert_eq!(response.body, b"\x0b\x02\x80x");
}

#[tokio::test]
async fn injection_is_off_by_default() {
    let (upstream, _up) = start_upstream().await;
    let proxy = Proxy::start(upstream, ProxyConfig::default()).await;
    let response = page(&proxy, "GET", "", "Accept-Encoding: br\r\n").await;
    assert_eq!(response.text(), PAGE);
    assert_eq!(
        response.header("content-length"),
        Some(PAGE.len().to_string().as_str())
    );
    assert_eq!(response.header("x-seen-accept-encoding"), Some("br"));
}

#[tokio::test]
async fn a_nonce_policy_gets_its_nonce_on_the_script_tag() {
    let (proxy, _up) = injecting_proxy().await;
    let response = page(
        &proxy,
        "GET",
        "?chunked",
        "x-test-csp: default-src 'self'; script-src 'nonce-R4nd0m+/==' 'strict-dynamic'\r\n\
         x-test-csp: img-src *\r\n",
    )
    .await;
    let tag = r#"<script src="/_flotilla/client.js" nonce="R4nd0m+/==" data-deployment="web-1"></script>"#;
    assert_eq!(
        response.text(),
        PAGE.replacen("<head>", &format!("<head>{tag}"), 1)
    );
    assert_eq!(proxy.stats.snapshot().csp_blocked_total, 0);
}

#[tokio::test]
async fn a_policy_that_would_block_the_script_gets_none_and_is_counted() {
    let (proxy, _up) = injecting_proxy().await;
    for _ in 0..2 {
        let response = page(&proxy, "GET", "", "x-test-csp: script-src 'none'\r\n").await;
        assert_eq!(response.status, 200);
        // Untouched: no useless tag, and the page keeps its length and validators.
        assert_eq!(response.text(), PAGE);
        assert_eq!(response.header("etag"), Some("\"v1\""));
    }
    let head = page(&proxy, "HEAD", "", "x-test-csp: script-src 'none'\r\n").await;
    assert_eq!(head.status, 200);
    // Two pages went out without the client; a HEAD is no page.
    assert_eq!(proxy.stats.snapshot().csp_blocked_total, 2);
}

#[tokio::test]
async fn a_report_only_policy_blocks_nothing() {
    let (proxy, _up) = injecting_proxy().await;
    let response = page(
        &proxy,
        "GET",
        "",
        "x-test-csp-report-only: script-src 'none'\r\n",
    )
    .await;
    assert_eq!(response.text(), expected_page());
    assert_eq!(proxy.stats.snapshot().csp_blocked_total, 0);
}
