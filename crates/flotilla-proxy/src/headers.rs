//! Pure header rewriting: hop-by-hop removal (RFC 9110 §7.6.1) with the end-to-end headers a
//! `Connection` header may never remove, the forwarding headers (`X-Forwarded-*`, `X-Real-IP`,
//! `Forwarded`) under the policy written down in `docs/router.md`, upgrade detection, and the
//! content-type and content-coding tests the proxy needs.
//!
//! Nothing here allocates in the common case: the peer address and protocol values are
//! precomputed per connection and cloned (a reference-count increment).

use std::net::IpAddr;

use bytes::{BufMut, BytesMut};
use http::HeaderMap;
use http::header::{
    ACCEPT, ACCEPT_ENCODING, AUTHORIZATION, CONNECTION, CONTENT_ENCODING, CONTENT_LENGTH,
    CONTENT_TYPE, COOKIE, FORWARDED, HOST, HeaderName, HeaderValue, SET_COOKIE, TE, TRAILER,
    TRANSFER_ENCODING, UPGRADE,
};

/// `X-Forwarded-For`.
pub(crate) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
pub(crate) static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`.
pub(crate) static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// `X-Real-IP`.
pub(crate) static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Headers that only describe one hop and are never forwarded (RFC 9110 §7.6.1), besides those
/// the `Connection` header names.
fn fixed_hop_by_hop() -> [&'static HeaderName; 7] {
    [
        &CONNECTION,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &TE,
        &TRAILER,
        &TRANSFER_ENCODING,
        &UPGRADE,
    ]
}

/// End-to-end headers that a `Connection` header may not remove, whatever it names: the request's
/// identity and credentials, its framing, and the headers the proxy itself vouches for. Without
/// this, a client could make the proxy strip `Authorization` (or a trusted proxy's
/// `X-Forwarded-For`) just by listing it in `Connection`. The configured deployment header is
/// protected too (see [`strip_hop_by_hop`]).
fn protected() -> [&'static HeaderName; 12] {
    [
        &HOST,
        &AUTHORIZATION,
        &COOKIE,
        &SET_COOKIE,
        &CONTENT_LENGTH,
        &CONTENT_TYPE,
        &CONTENT_ENCODING,
        &X_FORWARDED_FOR,
        &X_FORWARDED_PROTO,
        &X_FORWARDED_HOST,
        &X_REAL_IP,
        &FORWARDED,
    ]
}

/// Whether `token` (from a `Connection` header) names a header it may not remove.
fn is_protected(token: &str, also: &HeaderName) -> bool {
    token.eq_ignore_ascii_case(also.as_str())
        || protected()
            .iter()
            .any(|name| token.eq_ignore_ascii_case(name.as_str()))
}

/// Iterates the comma-separated tokens of every value of `name`, trimmed, skipping empties and
/// values that are not visible ASCII.
fn tokens<'a>(headers: &'a HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|token| !token.is_empty())
}

/// The `Upgrade` header value if the request asks for a protocol upgrade (its `Connection`
/// header lists `upgrade` and an `Upgrade` header is present).
pub(crate) fn upgrade_protocol(headers: &HeaderMap) -> Option<&HeaderValue> {
    let wants = tokens(headers, &CONNECTION).any(|token| token.eq_ignore_ascii_case("upgrade"));
    if wants { headers.get(UPGRADE) } else { None }
}

/// Removes hop-by-hop headers: `Connection`, every header it names except the protected ones
/// (see `protected`, plus `also`: the deployment header), and the fixed list (`Keep-Alive`,
/// `Proxy-Connection`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`).
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, also: &HeaderName) {
    // Vec::new does not allocate; only unusual Connection tokens (custom header names) push.
    let mut named: Vec<HeaderName> = Vec::new();
    for token in tokens(headers, &CONNECTION) {
        let known = ["close", "keep-alive", "upgrade"]
            .iter()
            .any(|k| token.eq_ignore_ascii_case(k));
        if !known
            && !is_protected(token, also)
            && let Ok(name) = HeaderName::from_bytes(token.as_bytes())
        {
            named.push(name);
        }
    }
    for name in named {
        headers.remove(name);
    }
    for name in fixed_hop_by_hop() {
        headers.remove(name);
    }
}

/// Restores the two headers a real upgrade needs after [`strip_hop_by_hop`].
pub(crate) fn set_upgrade(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(UPGRADE, protocol);
}

/// Per-connection values for the forwarding headers, computed once when a connection is
/// accepted.
#[derive(Debug, Clone)]
pub(crate) struct Forwarded {
    /// The peer IP, rendered.
    pub(crate) peer: HeaderValue,
    /// The scheme the client used to reach the proxy.
    pub(crate) proto: HeaderValue,
    /// Whether the peer is a trusted proxy whose forwarding headers are kept and extended.
    pub(crate) trust: bool,
}

impl Forwarded {
    /// Values for a connection from `peer`, reached over `proto`.
    pub(crate) fn new(peer: IpAddr, proto: HeaderValue, trust: bool) -> Self {
        // A dual-stack listener sees IPv4 clients as `::ffff:a.b.c.d`; report them as IPv4.
        let peer = HeaderValue::try_from(peer.to_canonical().to_string())
            .expect("a rendered IP address is always a valid header value");
        Forwarded { peer, proto, trust }
    }

    /// Sets the forwarding headers (the table in `docs/router.md`).
    ///
    /// Untrusted peer (the proxy is the edge): `X-Forwarded-For` and `X-Real-IP` become the peer,
    /// `X-Forwarded-Proto` the configured scheme, `X-Forwarded-Host` the `Host`; whatever the
    /// client sent in them is dropped. Trusted peer: the peer is appended to `X-Forwarded-For`
    /// (several incoming values are joined first), `X-Forwarded-Proto` and `-Host` are kept when
    /// present, and `X-Real-IP` is the last address the trusted proxy put in `X-Forwarded-For`
    /// (the client it saw), else the peer. `Forwarded`, which this proxy does not write, is
    /// removed either way, so an app never reads a value nobody vouched for.
    pub(crate) fn apply(&self, headers: &mut HeaderMap) {
        headers.remove(&FORWARDED);
        if !self.trust {
            // `insert` replaces every value: no allocation, the peer value is shared.
            headers.insert(X_FORWARDED_FOR.clone(), self.peer.clone());
            headers.insert(X_REAL_IP.clone(), self.peer.clone());
            headers.insert(X_FORWARDED_PROTO.clone(), self.proto.clone());
            match headers.get(HOST).cloned() {
                Some(host) => {
                    headers.insert(X_FORWARDED_HOST.clone(), host);
                }
                None => {
                    headers.remove(&X_FORWARDED_HOST);
                }
            }
            return;
        }
        let real_ip = last_forwarded_for(headers).unwrap_or_else(|| self.peer.clone());
        headers.insert(X_REAL_IP.clone(), real_ip);
        let mut previous = headers.get_all(&X_FORWARDED_FOR).iter().peekable();
        if previous.peek().is_none() {
            headers.insert(X_FORWARDED_FOR.clone(), self.peer.clone());
        } else {
            let mut joined = BytesMut::with_capacity(64);
            for value in previous {
                joined.put_slice(value.as_bytes());
                joined.put_slice(b", ");
            }
            joined.put_slice(self.peer.as_bytes());
            // Every piece was a valid header value or the rendered IP, and ", " is valid too.
            if let Ok(value) = HeaderValue::from_maybe_shared(joined.freeze()) {
                headers.insert(X_FORWARDED_FOR.clone(), value);
            }
        }
        if !headers.contains_key(&X_FORWARDED_PROTO) {
            headers.insert(X_FORWARDED_PROTO.clone(), self.proto.clone());
        }
        if !headers.contains_key(&X_FORWARDED_HOST) {
            match headers.get(HOST).cloned() {
                Some(host) => {
                    headers.insert(X_FORWARDED_HOST.clone(), host);
                }
                None => {
                    headers.remove(&X_FORWARDED_HOST);
                }
            }
        }
    }
}

/// The last entry of the last `X-Forwarded-For` value, if it is an IP address: the client as the
/// nearest (trusted) proxy saw it.
fn last_forwarded_for(headers: &HeaderMap) -> Option<HeaderValue> {
    let last = headers.get_all(&X_FORWARDED_FOR).iter().next_back()?;
    let entry = last.to_str().ok()?.rsplit(',').next()?.trim();
    let ip: IpAddr = entry.parse().ok()?;
    HeaderValue::try_from(ip.to_canonical().to_string()).ok()
}

/// The media type of a `Content-Type` header value, without parameters, trimmed.
fn media_type(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(CONTENT_TYPE)?.to_str().ok()?;
    Some(value.split(';').next().unwrap_or(value).trim())
}

/// Whether the response is a server-sent event stream.
pub(crate) fn is_event_stream(headers: &HeaderMap) -> bool {
    media_type(headers).is_some_and(|m| m.eq_ignore_ascii_case("text/event-stream"))
}

/// Whether the response is an HTML document.
pub(crate) fn is_html(headers: &HeaderMap) -> bool {
    media_type(headers).is_some_and(|m| m.eq_ignore_ascii_case("text/html"))
}

/// Whether the request is likely to receive HTML (its `Accept` lists `text/html`): a page
/// navigation or an explicit HTML fetch.
pub(crate) fn accepts_html(headers: &HeaderMap) -> bool {
    tokens(headers, &ACCEPT).any(|token| {
        let media = token.split(';').next().unwrap_or(token).trim();
        media.eq_ignore_ascii_case("text/html")
    })
}

/// A response body coding the injector can undo and redo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Coding {
    /// No content coding.
    Identity,
    /// `gzip` (or the legacy `x-gzip`).
    Gzip,
    /// `deflate` (zlib-wrapped, or raw deflate from misbehaving servers).
    Deflate,
}

/// The response's content coding if the injector supports it; `None` for anything else (`br`,
/// `zstd`, stacked codings), in which case the body passes through untouched.
pub(crate) fn supported_coding(headers: &HeaderMap) -> Option<Coding> {
    let mut coding = Coding::Identity;
    for token in tokens(headers, &CONTENT_ENCODING) {
        let this = if token.eq_ignore_ascii_case("identity") {
            continue;
        } else if token.eq_ignore_ascii_case("gzip") || token.eq_ignore_ascii_case("x-gzip") {
            Coding::Gzip
        } else if token.eq_ignore_ascii_case("deflate") {
            Coding::Deflate
        } else {
            return None;
        };
        if coding != Coding::Identity {
            // Two stacked codings: not worth supporting.
            return None;
        }
        coding = this;
    }
    Some(coding)
}

/// Narrows `Accept-Encoding` to the codings the injector can rewrite (`gzip`, `x-gzip`,
/// `deflate`, `identity`), so that an upstream never answers an HTML request with `br` or
/// `zstd`, which would have to pass through without the script. Leaves the header alone when it
/// already lists only those (the common case: no allocation). Sets `identity` if nothing is left.
pub(crate) fn restrict_accept_encoding(headers: &mut HeaderMap) {
    fn supported(token: &str) -> bool {
        let coding = token.split(';').next().unwrap_or(token).trim();
        ["gzip", "x-gzip", "deflate", "identity"]
            .iter()
            .any(|c| coding.eq_ignore_ascii_case(c))
    }
    if !headers.contains_key(ACCEPT_ENCODING) || tokens(headers, &ACCEPT_ENCODING).all(supported) {
        return;
    }
    let kept: Vec<&str> = tokens(headers, &ACCEPT_ENCODING)
        .filter(|t| supported(t))
        .collect();
    let value = if kept.is_empty() {
        HeaderValue::from_static("identity")
    } else {
        HeaderValue::try_from(kept.join(", "))
            .unwrap_or_else(|_| HeaderValue::from_static("identity"))
    };
    headers.insert(ACCEPT_ENCODING, value);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).expect("test header name"),
                HeaderValue::from_str(value).expect("test header value"),
            );
        }
        headers
    }

    fn names(headers: &HeaderMap) -> Vec<String> {
        let mut names: Vec<String> = headers.keys().map(|k| k.as_str().to_owned()).collect();
        names.sort();
        names
    }

    #[test]
    fn hop_by_hop_table() {
        fn check(input: &[(&str, &str)], expected: &[&str]) {
            let mut headers = map(input);
            strip_hop_by_hop(
                &mut headers,
                &HeaderName::from_static("x-flotilla-deployment"),
            );
            assert_eq!(names(&headers), expected, "input {input:?}");
        }
        check(&[("host", "a"), ("accept", "*/*")], &["accept", "host"]);
        check(
            &[
                ("connection", "keep-alive, X-Secret"),
                ("x-secret", "1"),
                ("keep-alive", "timeout=5"),
                ("x-kept", "1"),
            ],
            &["x-kept"],
        );
        check(
            &[
                ("connection", "close"),
                ("connection", "x-a"),
                ("x-a", "1"),
                ("x-b", "1"),
            ],
            &["x-b"],
        );
        check(
            &[
                ("te", "trailers"),
                ("trailer", "x-sum"),
                ("transfer-encoding", "chunked"),
                ("proxy-connection", "keep-alive"),
                ("upgrade", "websocket"),
                ("content-length", "3"),
            ],
            &["content-length"],
        );
        // A malformed token naming no valid header is ignored rather than failing the request.
        check(&[("connection", "bad header, ,"), ("x-a", "1")], &["x-a"]);
        // `Connection` may not remove end-to-end headers that carry identity, credentials,
        // framing, forwarding or affinity, in any case; the others it names still go.
        let protected = [
            "host",
            "authorization",
            "cookie",
            "set-cookie",
            "content-length",
            "content-type",
            "content-encoding",
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
            "x-real-ip",
            "forwarded",
            "x-flotilla-deployment",
        ];
        for name in protected {
            let upper = name.to_ascii_uppercase();
            check(
                &[
                    ("connection", &format!("close, {upper}, x-gone")),
                    (name, "1"),
                    ("x-gone", "1"),
                ],
                &[name],
            );
        }
        // Transfer-Encoding stays hop-by-hop: hyper frames the upstream request itself.
        check(
            &[
                ("connection", "transfer-encoding"),
                ("transfer-encoding", "chunked"),
            ],
            &[],
        );
    }

    #[test]
    fn upgrade_detection_table() {
        fn check(input: &[(&str, &str)], expected: Option<&str>) {
            let headers = map(input);
            let got = upgrade_protocol(&headers).and_then(|v| v.to_str().ok());
            assert_eq!(got, expected, "input {input:?}");
        }
        check(
            &[("connection", "Upgrade"), ("upgrade", "websocket")],
            Some("websocket"),
        );
        check(
            &[
                ("connection", "keep-alive, upgrade"),
                ("upgrade", "websocket"),
            ],
            Some("websocket"),
        );
        check(&[("upgrade", "websocket")], None);
        check(&[("connection", "upgrade")], None);
        check(&[("connection", "keep-alive"), ("upgrade", "h2c")], None);
    }

    /// One row of the forwarding policy: the incoming headers, whether the peer (10.1.2.3) is
    /// trusted, and every forwarding header afterwards (`None`: absent).
    fn check_forwarded(input: &[(&str, &str)], trust: bool, expected: [Option<&str>; 5]) {
        let mut headers = map(input);
        let fwd = Forwarded::new(
            "10.1.2.3".parse().expect("literal ip"),
            HeaderValue::from_static("http"),
            trust,
        );
        fwd.apply(&mut headers);
        let names = [
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
            "x-real-ip",
            "forwarded",
        ];
        for (name, want) in names.into_iter().zip(expected) {
            let got: Vec<&str> = headers
                .get_all(name)
                .iter()
                .map(|v| v.to_str().expect("ascii"))
                .collect();
            let want: Vec<&str> = want.into_iter().collect();
            assert_eq!(
                got, want,
                "header {name} for input {input:?}, trust {trust}"
            );
        }
    }

    #[test]
    fn forwarded_table() {
        let spoofed = [
            ("host", "app.example"),
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2, 3.3.3.3"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
            ("x-real-ip", "6.6.6.6"),
            ("forwarded", "for=6.6.6.6;proto=https"),
        ];
        // The edge (untrusted peer): everything from what the proxy saw itself.
        check_forwarded(
            &[("host", "app.example")],
            false,
            [
                Some("10.1.2.3"),
                Some("http"),
                Some("app.example"),
                Some("10.1.2.3"),
                None,
            ],
        );
        check_forwarded(
            &spoofed,
            false,
            [
                Some("10.1.2.3"),
                Some("http"),
                Some("app.example"),
                Some("10.1.2.3"),
                None,
            ],
        );
        // Behind a trusted proxy: its values kept and extended; X-Real-IP is the client it saw.
        check_forwarded(
            &spoofed,
            true,
            [
                Some("1.1.1.1, 2.2.2.2, 3.3.3.3, 10.1.2.3"),
                Some("https"),
                Some("evil.example"),
                Some("3.3.3.3"),
                None,
            ],
        );
        check_forwarded(
            &[("host", "internal:8080")],
            true,
            [
                Some("10.1.2.3"),
                Some("http"),
                Some("internal:8080"),
                Some("10.1.2.3"),
                None,
            ],
        );
        // A last X-Forwarded-For entry that is not an address: X-Real-IP falls back to the peer.
        check_forwarded(
            &[("host", "a"), ("x-forwarded-for", "1.1.1.1, unknown")],
            true,
            [
                Some("1.1.1.1, unknown, 10.1.2.3"),
                Some("http"),
                Some("a"),
                Some("10.1.2.3"),
                None,
            ],
        );
    }

    #[test]
    fn forwarded_for_reports_mapped_ipv4_as_ipv4() {
        let mut headers = HeaderMap::new();
        Forwarded::new(
            "::ffff:192.0.2.7".parse().expect("literal ip"),
            HeaderValue::from_static("http"),
            false,
        )
        .apply(&mut headers);
        assert_eq!(
            headers.get(&X_FORWARDED_FOR).map(|v| v.as_bytes()),
            Some(&b"192.0.2.7"[..])
        );
    }

    #[test]
    fn forwarded_host_removed_without_host() {
        let mut headers = map(&[("x-forwarded-host", "evil.example")]);
        Forwarded::new(
            "::1".parse().expect("literal ip"),
            HeaderValue::from_static("http"),
            false,
        )
        .apply(&mut headers);
        assert!(!headers.contains_key(&X_FORWARDED_HOST));
        assert_eq!(
            headers.get(&X_FORWARDED_FOR).map(|v| v.as_bytes()),
            Some(&b"::1"[..])
        );
    }

    #[test]
    fn content_type_table() {
        fn check(ct: &str, html: bool, sse: bool) {
            let headers = map(&[("content-type", ct)]);
            assert_eq!(is_html(&headers), html, "{ct}");
            assert_eq!(is_event_stream(&headers), sse, "{ct}");
        }
        check("text/html", true, false);
        check("text/HTML; charset=utf-8", true, false);
        check("text/html-sandboxed", false, false);
        check("application/xhtml+xml", false, false);
        check("text/event-stream", false, true);
        check("Text/Event-Stream; charset=utf-8", false, true);
        check("application/json", false, false);
        assert!(!is_html(&HeaderMap::new()));
    }

    #[test]
    fn accepts_html_table() {
        fn check(accept: Option<&str>, expected: bool) {
            let headers = accept.map(|a| map(&[("accept", a)])).unwrap_or_default();
            assert_eq!(accepts_html(&headers), expected, "{accept:?}");
        }
        check(Some("text/html,application/xhtml+xml,*/*;q=0.8"), true);
        check(Some("application/json"), false);
        check(Some("text/html;q=0.9"), true);
        check(Some("*/*"), false);
        check(None, false);
    }

    #[test]
    fn coding_table() {
        fn check(encodings: &[&str], expected: Option<Coding>) {
            let pairs: Vec<(&str, &str)> =
                encodings.iter().map(|e| ("content-encoding", *e)).collect();
            assert_eq!(supported_coding(&map(&pairs)), expected, "{encodings:?}");
        }
        check(&[], Some(Coding::Identity));
        check(&["identity"], Some(Coding::Identity));
        check(&["gzip"], Some(Coding::Gzip));
        check(&["X-Gzip"], Some(Coding::Gzip));
        check(&["deflate"], Some(Coding::Deflate));
        check(&["br"], None);
        check(&["gzip, br"], None);
        check(&["gzip", "gzip"], None);
    }

    #[test]
    fn accept_encoding_table() {
        fn check(input: Option<&str>, expected: Option<&str>) {
            let mut headers = input
                .map(|v| map(&[("accept-encoding", v)]))
                .unwrap_or_default();
            restrict_accept_encoding(&mut headers);
            let got = headers.get(ACCEPT_ENCODING).and_then(|v| v.to_str().ok());
            assert_eq!(got, expected, "{input:?}");
        }
        check(None, None);
        check(Some("gzip, deflate"), Some("gzip, deflate"));
        check(Some("gzip, deflate, br, zstd"), Some("gzip, deflate"));
        check(Some("br;q=1.0, gzip;q=0.8, *;q=0.1"), Some("gzip;q=0.8"));
        check(Some("br"), Some("identity"));
    }
}
