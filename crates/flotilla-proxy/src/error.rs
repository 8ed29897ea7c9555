//! Errors of the library API, and the JSON error responses the proxy sends to clients.
//!
//! An upstream failure has two messages: a short, stable one for the client (no addresses, no OS
//! error text) and a detailed one for the log. [`GatewayError`] keeps them apart.

use std::fmt;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use http::{Response, StatusCode};

use crate::body::Body;

/// Errors from building proxy values.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// A deployment id contains bytes that cannot appear in an HTTP header value.
    #[error(
        "deployment id {id:?} cannot be sent as an HTTP header value; use visible ASCII characters only"
    )]
    InvalidDeploymentId {
        /// The rejected id.
        id: String,
    },
    /// The configured deployment header name is not a valid HTTP header name.
    #[error(
        "{name:?} is not a valid HTTP header name; use letters, digits and '-' (e.g. X-Flotilla-Deployment)"
    )]
    InvalidHeaderName {
        /// The rejected name.
        name: String,
    },
}

/// Why the proxy could not get a response from the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GatewayError {
    /// Connecting or talking to the upstream failed.
    Unreachable,
    /// The upstream did not send a response head within the configured time.
    Timeout,
}

impl GatewayError {
    pub(crate) fn status(self) -> StatusCode {
        match self {
            GatewayError::Unreachable => StatusCode::BAD_GATEWAY,
            GatewayError::Timeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The stable JSON body the client sees: no addresses, no OS error text.
    fn client_body(self) -> &'static str {
        match self {
            GatewayError::Unreachable => {
                r#"{"error":"bad_gateway","message":"The application instance for this request could not be reached. Try again shortly."}"#
            }
            GatewayError::Timeout => {
                r#"{"error":"gateway_timeout","message":"The application instance for this request did not answer in time. Try again shortly."}"#
            }
        }
    }

    /// The response sent to the client.
    pub(crate) fn response(self) -> Response<Body> {
        let mut response = json_response(
            self.status(),
            Bytes::from_static(self.client_body().as_bytes()),
        );
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
        response
    }
}

impl fmt::Display for GatewayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GatewayError::Unreachable => f.write_str("upstream unreachable"),
            GatewayError::Timeout => f.write_str("upstream response timed out"),
        }
    }
}

/// A response with status `status`, a JSON body, `Content-Type: application/json` and
/// `Cache-Control: no-store`. A convenience for routers answering [`crate::Decision::Respond`].
pub fn json_response(status: StatusCode, json: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(Body::full(json));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The `503` sent on a connection accepted beyond [`crate::ProxyConfig::connection_limit`].
pub(crate) fn overloaded_response() -> Response<Body> {
    let mut response = json_response(
        StatusCode::SERVICE_UNAVAILABLE,
        Bytes::from_static(
            br#"{"error":"overloaded","message":"The server has too many open connections. Try again shortly."}"#,
        ),
    );
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    response
}
