//! The one body type the proxy sends and receives: an enum over the few shapes it needs, so no
//! body is ever boxed on the hot path.
//!
//! A proxied response body also carries the request's accounting guard, so the instance's
//! in-flight (and event-stream session) count drops exactly when the body ends or is dropped,
//! which is what happens when the client disconnects mid-stream.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::HeaderMap;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use tokio::sync::watch;

use crate::headers::Coding;
use crate::inject::HtmlRewriter;
use crate::moving::EventBoundary;
use crate::stats::RequestGuard;
use crate::upstream::Lease;

/// A request or response body handled by the proxy.
///
/// Build one with [`Body::empty`] or [`Body::full`] for [`crate::Decision::Respond`] responses;
/// the proxy builds the streaming kinds itself.
pub struct Body {
    kind: Kind,
    /// Ends the request's accounting when the body ends or is dropped.
    guard: Option<RequestGuard>,
    /// The upstream connection the body arrives on: back to its pool when the body ends
    /// cleanly, closed if it fails or is dropped first.
    lease: Option<Lease>,
}

enum Kind {
    Empty,
    Full(Option<Bytes>),
    Incoming(Incoming),
    Inject(Box<InjectState>),
    /// An event stream that ends between two events once its server asks sessions to move.
    EventStream(Box<EventStreamState>),
}

struct EventStreamState {
    inner: Incoming,
    /// Resolves when the server asks sessions to move; `None` once it has (or cannot).
    asked: Option<Pin<Box<dyn Future<Output = bool> + Send + Sync>>>,
    moving: bool,
    boundary: EventBoundary,
    /// Set when the stream ended early, between two events, with the upstream still sending.
    ended_early: bool,
    upstream_done: bool,
}

struct InjectState {
    inner: Incoming,
    rewriter: HtmlRewriter,
    out: VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
    upstream_done: bool,
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Empty => "empty",
            Kind::Full(_) => "full",
            Kind::Incoming(_) => "streaming",
            Kind::Inject(_) => "streaming with script injection",
            Kind::EventStream(_) => "event stream",
        };
        f.debug_struct("Body").field("kind", &kind).finish()
    }
}

/// An error while streaming a body: the peer failed mid-body, or a compressed HTML body could
/// not be decoded for script injection.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Reading the body from the peer failed.
    #[error("reading the body from the peer failed: {0}")]
    Peer(#[from] hyper::Error),
    /// The HTML body could not be decompressed or recompressed to insert the client script.
    #[error("rewriting a compressed HTML body failed: {0}")]
    Rewrite(#[from] std::io::Error),
}

impl Body {
    /// A body with no bytes.
    pub fn empty() -> Self {
        Body {
            kind: Kind::Empty,
            guard: None,
            lease: None,
        }
    }

    /// A body of exactly these bytes.
    pub fn full(data: impl Into<Bytes>) -> Self {
        let data = data.into();
        Body {
            kind: if data.is_empty() {
                Kind::Empty
            } else {
                Kind::Full(Some(data))
            },
            guard: None,
            lease: None,
        }
    }

    /// Streams a body received by hyper through unchanged.
    pub(crate) fn incoming(inner: Incoming) -> Self {
        Body {
            kind: Kind::Incoming(inner),
            guard: None,
            lease: None,
        }
    }

    /// Streams an HTML body through the script injector.
    pub(crate) fn inject(inner: Incoming, coding: Coding, tag: Bytes) -> Self {
        Body {
            kind: Kind::Inject(Box::new(InjectState {
                inner,
                rewriter: HtmlRewriter::new(coding, tag),
                out: VecDeque::new(),
                trailers: None,
                upstream_done: false,
            })),
            guard: None,
            lease: None,
        }
    }

    /// Streams an event stream through, ending it between two events once `moved` flips.
    pub(crate) fn event_stream(inner: Incoming, mut moved: watch::Receiver<bool>) -> Self {
        let asked = async move { moved.wait_for(|asked| *asked).await.is_ok() };
        Body {
            kind: Kind::EventStream(Box::new(EventStreamState {
                inner,
                asked: Some(Box::pin(asked)),
                moving: false,
                boundary: EventBoundary::default(),
                ended_early: false,
                upstream_done: false,
            })),
            guard: None,
            lease: None,
        }
    }

    /// Attaches the accounting guard that ends with this body.
    pub(crate) fn with_guard(mut self, guard: RequestGuard) -> Self {
        self.guard = Some(guard);
        self
    }

    /// Attaches the upstream connection this body is read from, released when it ends cleanly.
    pub(crate) fn with_lease(mut self, lease: Lease) -> Self {
        self.lease = Some(lease);
        self
    }
}

impl InjectState {
    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        loop {
            if let Some(data) = self.out.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            if self.upstream_done {
                return Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
            match ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => self.rewriter.push(data, &mut self.out)?,
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            self.trailers = Some(trailers);
                        }
                    }
                },
                Some(Err(err)) => return Poll::Ready(Some(Err(err.into()))),
                None => {
                    self.upstream_done = true;
                    self.rewriter.finish(&mut self.out)?;
                }
            }
        }
    }
}

impl EventStreamState {
    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if self.ended_early || self.upstream_done {
            return Poll::Ready(None);
        }
        if let Some(asked) = &mut self.asked
            && let Poll::Ready(asked) = asked.as_mut().poll(cx)
        {
            self.moving = asked;
            self.asked = None;
        }
        if self.moving && self.boundary.at_boundary() {
            tracing::debug!("asked an event stream's client to reconnect elsewhere");
            self.ended_early = true;
            return Poll::Ready(None);
        }
        match ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(mut data) => {
                    if self.moving
                        && let Some(end) = self.boundary.first_boundary(&data)
                    {
                        data.truncate(end);
                    }
                    self.boundary.advance(&data);
                    Poll::Ready(Some(Ok(Frame::data(data))))
                }
                Err(frame) => Poll::Ready(Some(Ok(frame))),
            },
            Some(Err(err)) => Poll::Ready(Some(Err(err.into()))),
            None => {
                self.upstream_done = true;
                Poll::Ready(None)
            }
        }
    }
}

impl Body {
    /// Whether everything has been read from the upstream connection.
    fn upstream_done(&self) -> bool {
        match &self.kind {
            Kind::Incoming(inner) => inner.is_end_stream(),
            Kind::Inject(state) => state.upstream_done,
            Kind::EventStream(state) => state.upstream_done || state.inner.is_end_stream(),
            Kind::Empty | Kind::Full(_) => true,
        }
    }

    /// Whether the body ended before its upstream's did, so its connection must not be reused.
    fn ended_early(&self) -> bool {
        matches!(&self.kind, Kind::EventStream(state) if state.ended_early)
    }
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let polled = match &mut this.kind {
            Kind::Empty => Poll::Ready(None),
            Kind::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Kind::Incoming(inner) => Pin::new(inner)
                .poll_frame(cx)
                .map(|frame| frame.map(|r| r.map_err(BodyError::from))),
            Kind::Inject(state) => state.poll_frame(cx),
            Kind::EventStream(state) => state.poll_frame(cx),
        };
        match polled {
            Poll::Ready(None) => {
                // The body is over: end the request's accounting now rather than whenever hyper
                // gets around to dropping it, and let the next request use the connection
                // (unless the body was ended before the upstream's, which closes it).
                this.guard = None;
                if let Some(lease) = this.lease.take()
                    && !this.ended_early()
                {
                    lease.release();
                }
            }
            Poll::Ready(Some(Err(_))) => {
                this.guard = None;
                this.lease = None;
            }
            Poll::Ready(Some(Ok(_))) if this.lease.is_some() && this.upstream_done() => {
                // hyper stops polling a body once it reports its end (a `Content-Length` body
                // after its last byte), so the connection goes back as soon as that is so.
                if let Some(lease) = this.lease.take() {
                    lease.release();
                }
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Empty => true,
            Kind::Full(data) => data.is_none(),
            Kind::Incoming(inner) => inner.is_end_stream(),
            Kind::Inject(state) => {
                state.upstream_done && state.out.is_empty() && state.trailers.is_none()
            }
            Kind::EventStream(state) => state.ended_early || state.upstream_done,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Kind::Incoming(inner) => inner.size_hint(),
            Kind::Inject(_) | Kind::EventStream(_) => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn full_and_empty_bodies_report_their_size() {
        let body = Body::full("hello");
        assert_eq!(body.size_hint().exact(), Some(5));
        assert!(!body.is_end_stream());
        let collected = body.collect().await.expect("infallible").to_bytes();
        assert_eq!(&collected[..], b"hello");
        let empty = Body::full("");
        assert!(empty.is_end_stream());
        assert_eq!(Body::empty().size_hint().exact(), Some(0));
    }
}
