//! Serves the bundled browser client at [`CLIENT_PATH`].
//!
//! The script is compiled into the binary, so the router and the agent always serve the client
//! that matches them. It is revalidated on every use (`Cache-Control: no-cache`) against a strong
//! `ETag` derived from its content, so browsers pick up a new client as soon as flotilla is
//! upgraded while a repeat load costs one `304`.

use std::sync::OnceLock;

use bytes::Bytes;
use http::header::{
    ALLOW, CACHE_CONTROL, CONTENT_TYPE, ETAG, HeaderMap, HeaderValue, IF_NONE_MATCH,
    X_CONTENT_TYPE_OPTIONS,
};
use http::{Method, Response, StatusCode};

use crate::body::Body;

/// The path at which the proxy serves the browser client.
pub const CLIENT_PATH: &str = "/_flotilla/client.js";

/// The browser client's source, as served.
pub const CLIENT_JS: &str = include_str!("../../../client/flotilla-client.js");

/// A strong validator for [`CLIENT_JS`]: a 64-bit FNV-1a hash of its bytes, quoted.
fn etag() -> &'static HeaderValue {
    static ETAG_VALUE: OnceLock<HeaderValue> = OnceLock::new();
    ETAG_VALUE.get_or_init(|| {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in CLIENT_JS.bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        HeaderValue::try_from(format!("\"{hash:016x}\""))
            .expect("a quoted hex string is a valid header value")
    })
}

/// Whether `If-None-Match` matches our validator (`*` or any listed tag, weak or strong).
fn not_modified(headers: &HeaderMap) -> bool {
    let ours = etag().as_bytes();
    headers
        .get_all(IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || tag.trim_start_matches("W/").as_bytes() == ours)
}

/// The response to a request for [`CLIENT_PATH`].
pub(crate) fn respond(method: &Method, headers: &HeaderMap) -> Response<Body> {
    let mut response = Response::new(Body::empty());
    if method != Method::GET && method != Method::HEAD {
        *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let out = response.headers_mut();
    out.insert(ETAG, etag().clone());
    out.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if not_modified(headers) {
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        return response;
    }
    let out = response.headers_mut();
    out.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/javascript; charset=utf-8"),
    );
    out.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // hyper omits the body of a HEAD response but keeps its Content-Length.
    *response.body_mut() = Body::full(Bytes::from_static(CLIENT_JS.as_bytes()));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditional_requests_table() {
        fn check(method: Method, if_none_match: Option<String>, expected: StatusCode) {
            let mut headers = HeaderMap::new();
            if let Some(tag) = &if_none_match {
                headers.insert(IF_NONE_MATCH, HeaderValue::from_str(tag).expect("ascii"));
            }
            let response = respond(&method, &headers);
            assert_eq!(response.status(), expected, "{method} {if_none_match:?}");
        }
        let ours = etag().to_str().expect("ascii").to_owned();
        check(Method::GET, None, StatusCode::OK);
        check(Method::HEAD, None, StatusCode::OK);
        check(Method::GET, Some(ours.clone()), StatusCode::NOT_MODIFIED);
        check(
            Method::GET,
            Some(format!("\"other\", W/{ours}")),
            StatusCode::NOT_MODIFIED,
        );
        check(Method::GET, Some("*".into()), StatusCode::NOT_MODIFIED);
        check(Method::GET, Some("\"other\"".into()), StatusCode::OK);
        check(Method::POST, None, StatusCode::METHOD_NOT_ALLOWED);
    }
}
