//! Response bodies: the boxed [`Body`] every handler returns, small whole bodies, and the
//! metered wrapper that records bytes sent, the request's duration and the access log line when
//! a body ends. Knows no routes beyond the label it is given.

use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Response};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Frame;

use super::conn::Cycle;
pub(super) use crate::fetch::BoxError;
use crate::telemetry::{self, Metrics};

/// A response body: bytes streamed, errors abort the connection.
pub type Body = BoxBody<Bytes, BoxError>;

pub(super) fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed()
}

pub(super) fn with_type(body: Body, content_type: &'static str) -> Response<Body> {
    let mut response = Response::new(body);
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Wraps a response body so bytes sent and the request's duration are recorded when it ends,
/// and the connection's keep-alive wait starts then; a panic while the body streams aborts it.
pub(super) fn metered(
    response: Response<Body>,
    route: &'static str,
    started: Instant,
    metrics: Arc<Metrics>,
    access: Option<(Method, String)>,
    cycle: Arc<Cycle>,
) -> Response<Body> {
    let status = response.status().as_u16();
    response.map(|body| {
        BodyExt::boxed(Metered {
            body,
            route,
            status,
            started,
            metrics,
            bytes: 0,
            access,
            cycle,
            failed: None,
        })
    })
}

struct Metered {
    body: Body,
    route: &'static str,
    status: u16,
    started: Instant,
    metrics: Arc<Metrics>,
    bytes: u64,
    /// Method and path for the access log line, when access logging is on.
    access: Option<(Method, String)>,
    /// The connection's request cycle, told when the response ends.
    cycle: Arc<Cycle>,
    /// An error that came right after bytes, handed on one poll later: hyper writes out what it
    /// holds when the body waits, so the bytes before a failure reach the client before the
    /// connection is cut (a source that fails at once after its last bytes would otherwise
    /// take them down with it, head and all).
    failed: Option<BoxError>,
}

impl http_body::Body for Metered {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(e) = self.failed.take() {
            return Poll::Ready(Some(Err(e)));
        }
        let body = &mut self.body;
        let polled =
            match std::panic::catch_unwind(AssertUnwindSafe(|| Pin::new(body).poll_frame(cx))) {
                Ok(polled) => polled,
                Err(panic) => {
                    // The head is out: the client must see a cut body, never a clean end.
                    telemetry::record_panic(&self.metrics, "body", panic.as_ref());
                    return Poll::Ready(Some(Err("the response body panicked".into())));
                }
            };
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes += data.len() as u64;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) if self.bytes > 0 => {
                self.failed = Some(e);
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        self.cycle.response_ended();
        if let Some((method, path)) = &self.access {
            tracing::info!(
                target: "esi_proxy::access",
                %method,
                path = %path,
                status = self.status,
                route = self.route,
                bytes = self.bytes,
                ms = self.started.elapsed().as_secs_f64() * 1000.0,
                "request"
            );
        }
        self.metrics.add_bytes_out(self.route, self.bytes);
        self.metrics.record_request(
            self.route,
            self.status,
            self.started.elapsed().as_secs_f64(),
        );
    }
}
