//! A small HTTP/1.1 client for the agent's own calls: probing the app's health path, reading ECS
//! task metadata, and the HTTP drain source. Every call has a deadline and a bounded body.

use std::time::Duration;

use bytes::Bytes;
use flotilla_proxy::http::{Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// The largest response body the agent reads from any of its own calls.
pub const MAX_BODY: usize = 64 * 1024;

/// A response the agent read whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// The status.
    pub status: StatusCode,
    /// The `Content-Type`, if any.
    pub content_type: Option<String>,
    /// The body (at most [`MAX_BODY`] bytes).
    pub body: Bytes,
}

/// Why a call failed, in words for the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// The URL is not a plain `http://` URL.
    #[error("`{0}` is not an http:// URL")]
    BadUrl(String),
    /// No response within the deadline.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// Connecting or talking failed.
    #[error("{0}")]
    Io(String),
    /// The body was larger than [`MAX_BODY`] or broke off.
    #[error("reading the body failed: {0}")]
    Body(String),
}

/// A pooled client for plain HTTP, cheap to clone.
#[derive(Clone, Debug)]
pub struct HttpClient {
    inner: Client<HttpConnector, Full<Bytes>>,
}

impl Default for HttpClient {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpClient {
    /// A new client with a connection pool.
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        let inner = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(4)
            .build(connector);
        HttpClient { inner }
    }

    /// `GET url`, the whole exchange bounded by `timeout`.
    pub async fn get(&self, url: &str, timeout: Duration) -> Result<Fetched, FetchError> {
        self.send(Method::GET, url, None, timeout).await
    }

    /// `PUT url` with a `text/plain` body, bounded by `timeout`.
    pub async fn put(
        &self,
        url: &str,
        body: &str,
        timeout: Duration,
    ) -> Result<Fetched, FetchError> {
        let body = (body.to_owned(), "text/plain; charset=utf-8");
        self.send(Method::PUT, url, Some(body), timeout).await
    }

    /// `PUT url` with a JSON body, bounded by `timeout`.
    pub async fn put_json(
        &self,
        url: &str,
        json: &str,
        timeout: Duration,
    ) -> Result<Fetched, FetchError> {
        let body = (json.to_owned(), "application/json");
        self.send(Method::PUT, url, Some(body), timeout).await
    }

    async fn send(
        &self,
        method: Method,
        url: &str,
        body: Option<(String, &'static str)>,
        timeout: Duration,
    ) -> Result<Fetched, FetchError> {
        let uri: Uri = url
            .parse()
            .map_err(|_| FetchError::BadUrl(url.to_owned()))?;
        if uri.scheme_str() != Some("http") || uri.authority().is_none() {
            return Err(FetchError::BadUrl(url.to_owned()));
        }
        let mut builder = Request::builder().method(method).uri(uri);
        if let Some((_, content_type)) = &body {
            builder = builder.header(header::CONTENT_TYPE, *content_type);
        }
        let request = builder
            .body(Full::new(Bytes::from(
                body.map(|(text, _)| text).unwrap_or_default(),
            )))
            .map_err(|e| FetchError::BadUrl(format!("{url}: {e}")))?;
        let exchange = async {
            let response = self
                .inner
                .request(request)
                .await
                .map_err(|e| FetchError::Io(error_chain(&e)))?;
            let status = response.status();
            let content_type = response
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = Limited::new(response.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| FetchError::Body(e.to_string()))?
                .to_bytes();
            Ok(Fetched {
                status,
                content_type,
                body,
            })
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| FetchError::Timeout(timeout))?
    }
}

/// An error and its sources on one line.
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut line = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        line.push_str(": ");
        line.push_str(&cause.to_string());
        source = cause.source();
    }
    line
}
