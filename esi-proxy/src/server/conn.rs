//! The bounds on one client connection: how long a request head, a keep-alive wait, a blocked
//! write and a request body may take ([`ClientIo`], [`Cycle`], [`timed_body`]), and the
//! counter of the ones that ran out; and the one place a `103 Early Hints` response is
//! written ([`EarlyHints`]), between hyper's responses. Knows no routes and no ESI.

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
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

use super::body::BoxError;
use crate::fetch::OriginBody;
use crate::telemetry::Metrics;

/// Client connections closed because a bound on them ran out, by `kind`: `header`, `idle`,
/// `send`, `request_body`.
pub(super) const CLIENT_TIMEOUTS: &str = "esi_proxy_client_timeouts_total";
const CLIENT_TIMEOUTS_HELP: &str =
    "Client connections closed because a deadline on them passed, by kind.";

/// `103 Early Hints` responses written, by `outcome`: `sent`, or `withdrawn` when hyper had
/// bytes to write before it could go (the final head was ready, so the 103 had nothing left
/// to win).
pub(super) const EARLY_HINTS: &str = "esi_proxy_early_hints_total";
const EARLY_HINTS_HELP: &str = "103 Early Hints responses, by outcome (sent, withdrawn).";

/// A `103 Early Hints` response a connection's service queued for the request it is
/// answering, shared with its [`ClientIo`], which alone writes it.
///
/// Why this is sound with hyper 1.x, which cannot send a 1xx itself: hyper's HTTP/1 server
/// reads a request only once the previous response is wholly encoded, encodes a response's head
/// only once the service's future has returned it, and calls the socket's `poll_flush` only
/// when its own write buffer is empty (pipeline flushing is off). The service's future runs on
/// the connection's task, so a 103 queued by it is next seen either by a `poll_flush`, when
/// every byte hyper produced (whole earlier responses, nothing of this one) is on the socket,
/// where it is written; or by a `poll_write`, carrying bytes hyper had buffered (an earlier
/// response's tail or this response's head), where it is withdrawn unwritten. Once its first
/// byte is out, it is finished before any byte of hyper's.
#[derive(Debug, Default)]
pub(super) struct EarlyHints {
    slot: Mutex<Option<Early>>,
}

#[derive(Debug)]
struct Early {
    bytes: Bytes,
    written: usize,
}

/// Where one connection is in its request cycle: shared by its [`ClientIo`], which sees bytes
/// arrive, its service, which marks where requests start and responses end, and the task that
/// closes the connection when the head or keep-alive deadline passes ([`Cycle::expired`]).
pub(super) struct Cycle {
    waiting: Mutex<Waiting>,
    /// Told whenever `waiting` moves to another deadline.
    changed: Notify,
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
    /// Nothing: a request is being answered; its body has a deadline of its own, and a
    /// blocked write the send timeout.
    Busy,
}

/// A client socket that tells its [`Cycle`] when bytes arrive, and whose writes fail once one
/// has been blocked for the send timeout. The error ends the connection, which drops its
/// response with everything the response held.
pub(super) struct ClientIo<T> {
    io: T,
    cycle: Arc<Cycle>,
    send_timeout: Duration,
    metrics: Arc<Metrics>,
    write_timer: Pin<Box<Sleep>>,
    /// Whether the last write was blocked (`write_timer` then runs).
    write_blocked: bool,
    early: Arc<EarlyHints>,
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
            changed: Notify::new(),
            header_read,
            keep_alive,
        })
    }

    /// A request head has arrived whole.
    pub(super) fn request_started(&self) {
        self.set(Waiting::Busy);
    }

    /// The response has ended: the next request's first byte is due within the keep-alive
    /// timeout.
    pub(super) fn response_ended(&self) {
        self.set(Waiting::Idle(Instant::now() + self.keep_alive));
    }

    /// Bytes arrived: after a keep-alive wait they start the next head, due within the header
    /// timeout.
    fn bytes_read(&self) {
        let mut waiting = self.lock();
        if let Waiting::Idle(_) = *waiting {
            *waiting = Waiting::Head(Instant::now() + self.header_read);
            drop(waiting);
            self.changed.notify_waiters();
        }
    }

    /// Completes when the deadline in force passes while still in force, with the kind of wait
    /// it bounded (`header` or `idle`), counted; the caller then closes the connection. A
    /// connection busy with a request waits here for its response to end.
    pub(super) async fn expired(&self, metrics: &Metrics) {
        loop {
            // Registered before the state is read, so no change between the two is missed.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let now = *self.lock();
            let (deadline, kind) = match now {
                Waiting::Head(at) => (at, "header"),
                Waiting::Idle(at) => (at, "idle"),
                Waiting::Busy => {
                    changed.await;
                    continue;
                }
            };
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => {
                    if *self.lock() == now {
                        count(metrics, kind);
                        tracing::debug!(kind, "client connection timed out");
                        return;
                    }
                }
                () = &mut changed => {}
            }
        }
    }

    fn set(&self, waiting: Waiting) {
        *self.lock() = waiting;
        self.changed.notify_waiters();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

// === impl EarlyHints ===

impl EarlyHints {
    /// Queues `response` (a whole `103` head) for the request being answered, replacing one
    /// not yet started. Only the service's future may call this, before it returns.
    pub(super) fn queue(&self, response: Bytes) {
        let mut slot = self.lock();
        if slot.as_ref().is_some_and(|e| e.written > 0) {
            return;
        }
        *slot = Some(Early {
            bytes: response,
            written: 0,
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Early>> {
        self.slot.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

// === impl ClientIo ===

impl<T> ClientIo<T> {
    /// Wraps a client socket; `cycle` and `early` are shared with the connection's service.
    pub(super) fn new(
        io: T,
        cycle: Arc<Cycle>,
        early: Arc<EarlyHints>,
        send_timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            io,
            cycle,
            send_timeout,
            metrics,
            write_timer: Box::pin(tokio::time::sleep_until(Instant::now())),
            write_blocked: false,
            early,
        }
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
            count(&self.metrics, "send");
            tracing::debug!("client read nothing within the send timeout: dropped");
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "client send timeout",
            )));
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
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.cycle.bytes_read();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> ClientIo<T> {
    /// Writes the queued 103 out, when there is one; `started_only` leaves one not yet begun
    /// alone and withdraws it (hyper has bytes of its own to write first).
    fn write_early(&mut self, cx: &mut Context<'_>, started_only: bool) -> Poll<io::Result<()>> {
        let early = Arc::clone(&self.early);
        let mut slot = early.lock();
        if started_only && slot.as_ref().is_some_and(|e| e.written == 0) {
            *slot = None;
            self.early_done("withdrawn");
            return Poll::Ready(Ok(()));
        }
        while let Some(e) = slot.as_mut() {
            let polled = Pin::new(&mut self.io).poll_write(cx, &e.bytes[e.written..]);
            match self.on_write(polled, cx) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => {
                    e.written += n;
                    if e.written == e.bytes.len() {
                        *slot = None;
                        self.early_done("sent");
                    }
                }
                Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }

    fn early_done(&self, outcome: &'static str) {
        tracing::debug!(outcome, "103 Early Hints");
        self.metrics
            .inc_counter(EARLY_HINTS, EARLY_HINTS_HELP, Some(("outcome", outcome)), 1);
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ClientIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.write_early(cx, true))?;
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        self.on_write(polled, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.write_early(cx, true))?;
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.on_write(polled, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // hyper's buffer is empty here (see `EarlyHints`): the one moment a 103 may go.
        std::task::ready!(self.write_early(cx, false))?;
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
