//! The bounds on one client connection: how long a request head, a keep-alive wait, a blocked
//! write and a request body may take ([`ClientIo`], [`Cycle`], [`timed_body`]), and the
//! counter of the ones that ran out. Knows no routes and no ESI.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::body::BoxError;
use crate::fetch::OriginBody;
use crate::telemetry::Metrics;

/// Client connections closed because a bound on them ran out, by `kind`: `header`, `idle`,
/// `send`, `request_body`.
pub(super) const CLIENT_TIMEOUTS: &str = "esi_proxy_client_timeouts_total";
const CLIENT_TIMEOUTS_HELP: &str =
    "Client connections closed because a deadline on them passed, by kind.";

/// Where one connection is in its request cycle: shared by its [`ClientIo`], which enforces
/// the read deadline, and its service, which marks where requests start and responses end.
pub(super) struct Cycle {
    waiting: Mutex<Waiting>,
    header_read: Duration,
    keep_alive: Duration,
}

/// What a connection is waiting for, with the deadline that bounds the wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waiting {
    /// The rest of a request head (from the connection's start or the next request's first
    /// byte).
    Head(Instant),
    /// The first byte of the next request, a response having ended (keep-alive).
    Idle(Instant),
    /// Nothing: a request is being answered; its body has a deadline of its own.
    Busy,
}

/// A client socket whose reads fail once the head or keep-alive deadline of its [`Cycle`]
/// passes, and whose writes fail once one has been blocked for the send timeout. Either error
/// ends the connection, which drops its response with everything the response held.
pub(super) struct ClientIo<T> {
    io: T,
    cycle: Arc<Cycle>,
    send_timeout: Duration,
    metrics: Arc<Metrics>,
    read_timer: Pin<Box<Sleep>>,
    /// The deadline `read_timer` is set to, if it is armed.
    read_armed: Option<Instant>,
    write_timer: Pin<Box<Sleep>>,
    /// Whether the last write was blocked (`write_timer` then runs).
    write_blocked: bool,
}

/// A request body that fails once `deadline` passes before its end.
struct TimedBody {
    body: Incoming,
    timer: Pin<Box<Sleep>>,
    after: Duration,
    metrics: Arc<Metrics>,
}

/// A request body did not arrive whole within `server.request_body_timeout_ms`.
#[derive(Debug, thiserror::Error)]
#[error("request body not complete within {0:?}")]
struct BodyTimeout(Duration);

/// The client's request body, failing (which aborts the origin request it feeds and closes the
/// connection) when it has not ended within `after`.
pub(super) fn timed_body(body: Incoming, after: Duration, metrics: &Arc<Metrics>) -> OriginBody {
    if http_body::Body::is_end_stream(&body) {
        // No body (a GET): nothing to time.
        return body.map_err(BoxError::from).boxed();
    }
    TimedBody {
        body,
        timer: Box::pin(tokio::time::sleep(after)),
        after,
        metrics: Arc::clone(metrics),
    }
    .boxed()
}

fn count(metrics: &Metrics, kind: &'static str) {
    metrics.inc_counter(
        CLIENT_TIMEOUTS,
        CLIENT_TIMEOUTS_HELP,
        Some(("kind", kind)),
        1,
    );
}

// === impl Cycle ===

impl Cycle {
    /// A new connection's cycle: its first head is due within `header_read`.
    pub(super) fn new(header_read: Duration, keep_alive: Duration) -> Arc<Self> {
        Arc::new(Self {
            waiting: Mutex::new(Waiting::Head(Instant::now() + header_read)),
            header_read,
            keep_alive,
        })
    }

    /// A request head has arrived whole.
    pub(super) fn request_started(&self) {
        *self.lock() = Waiting::Busy;
    }

    /// The response has ended: the next request's first byte is due within the keep-alive
    /// timeout.
    pub(super) fn response_ended(&self) {
        *self.lock() = Waiting::Idle(Instant::now() + self.keep_alive);
    }

    /// Bytes arrived: after a keep-alive wait they start the next head, due within the header
    /// timeout. Returns the deadline then in force and what it bounds.
    fn bytes_read(&self, now: Instant) -> Option<(Instant, &'static str)> {
        let mut waiting = self.lock();
        if let Waiting::Idle(_) = *waiting {
            *waiting = Waiting::Head(now + self.header_read);
        }
        waiting.deadline()
    }

    fn deadline(&self) -> Option<(Instant, &'static str)> {
        self.lock().deadline()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

// === impl Waiting ===

impl Waiting {
    fn deadline(self) -> Option<(Instant, &'static str)> {
        match self {
            Waiting::Head(at) => Some((at, "header")),
            Waiting::Idle(at) => Some((at, "idle")),
            Waiting::Busy => None,
        }
    }
}

// === impl ClientIo ===

impl<T> ClientIo<T> {
    /// Wraps a client socket; `cycle` is shared with the connection's service.
    pub(super) fn new(
        io: T,
        cycle: Arc<Cycle>,
        send_timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        let now = Instant::now();
        Self {
            io,
            cycle,
            send_timeout,
            metrics,
            read_timer: Box::pin(tokio::time::sleep_until(now)),
            read_armed: None,
            write_timer: Box::pin(tokio::time::sleep_until(now)),
            write_blocked: false,
        }
    }

    fn timed_out<R>(&self, kind: &'static str) -> Poll<io::Result<R>> {
        count(&self.metrics, kind);
        tracing::debug!(kind, "client connection timed out");
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("client {kind} timeout"),
        )))
    }

    /// Passes a write's result on, failing it once writes have been blocked for the send
    /// timeout.
    fn on_write<R>(
        &mut self,
        polled: Poll<io::Result<R>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<R>> {
        if polled.is_ready() {
            self.write_blocked = false;
            return polled;
        }
        if !self.write_blocked {
            self.write_blocked = true;
            let deadline = Instant::now() + self.send_timeout;
            self.write_timer.as_mut().reset(deadline);
        }
        if self.write_timer.as_mut().poll(cx).is_ready() {
            return self.timed_out("send");
        }
        Poll::Pending
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ClientIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        match polled {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                let now = Instant::now();
                match this.cycle.bytes_read(now) {
                    Some((deadline, kind)) if now >= deadline => this.timed_out(kind),
                    _ => polled,
                }
            }
            Poll::Pending => {
                let Some((deadline, kind)) = this.cycle.deadline() else {
                    return Poll::Pending;
                };
                if this.read_armed != Some(deadline) {
                    this.read_armed = Some(deadline);
                    this.read_timer.as_mut().reset(deadline);
                }
                if this.read_timer.as_mut().poll(cx).is_ready() {
                    return this.timed_out(kind);
                }
                Poll::Pending
            }
            _ => polled,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ClientIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        self.on_write(polled, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.on_write(polled, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_flush(cx);
        self.on_write(polled, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_shutdown(cx);
        self.on_write(polled, cx)
    }
}

// === impl TimedBody ===

impl http_body::Body for TimedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(BoxError::from)));
        }
        if this.timer.as_mut().poll(cx).is_ready() {
            count(&this.metrics, "request_body");
            return Poll::Ready(Some(Err(Box::new(BodyTimeout(this.after)))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
