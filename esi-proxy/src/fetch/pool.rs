//! A keep-alive pool of HTTP/1.1 connections to `http` hosts (hyper's for the origin, bare TCP
//! streams for fragments), and the connector that dials them through the guarded resolver
//! within the connect timeout.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use http::Uri;
use hyper::client::conn::http1::SendRequest;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;

use super::guard::GuardedResolver;
use super::OriginBody;
use crate::config::FetchSettings;

/// Idle keep-alive HTTP/1.1 connections to `http` hosts, by authority (`host[:port]`
/// as the URL spells it, the default port left out, so also the `Host` header). A connection
/// is checked out for one request and back in once its response body has been read. Stands in
/// for hyper-util's pooled client, whose per-request bookkeeping (a task per request to return
/// the connection, connection-info extensions, URI rewriting) costs more than a loopback
/// request. `C` is a hyper connection (driven by a task of its own) or a bare [`TcpStream`]
/// that `super::h1` speaks on.
pub(super) struct PlainPool<C> {
    connector: PlainConnector,
    idle: Mutex<HashMap<String, Vec<IdleConnection<C>>>>,
    /// Most idle connections kept per authority (`fetch.pool_idle_per_host`).
    max_idle_per_host: usize,
    /// How long a connection may wait idle (`fetch.pool_idle_timeout_ms`).
    idle_timeout: Duration,
    /// Whether the task closing connections idle past `idle_timeout` runs.
    purging: AtomicBool,
    /// Told when the pool is dropped (a reload replaced it), so that task ends at once.
    dropped: Arc<tokio::sync::Notify>,
}

/// A connection waiting in a [`PlainPool`].
pub(super) struct IdleConnection<C> {
    conn: C,
    since: Instant,
}

/// A connection a [`PlainPool`] can hold.
pub(super) trait Pooled: Send + 'static {
    /// Whether the connection can take a request now: not closed by its peer, not busy.
    fn usable(&self) -> bool;
}

/// An origin response body that puts its connection back in the pool once it has been read
/// to the end (dropped earlier, the connection closes).
pub(super) struct CheckinOnEnd {
    pub(super) body: hyper::body::Incoming,
    pub(super) connection: Option<(OriginPool, String, SendRequest<OriginBody>)>,
}

/// The pool of the `http` origin's hyper connections.
pub(super) type OriginPool = Arc<PlainPool<SendRequest<OriginBody>>>;

/// Largest response head (status line and headers) read from a fragment host or the origin;
/// a larger one fails the fetch as malformed. hyper's own bound is some 400 KB, which lets a
/// host make the proxy hold that much per fetch before a byte of body.
pub(super) const MAX_RESPONSE_HEAD_BYTES: usize = 64 * 1024;

/// How long a connection whose response has been read may wait for its request body to finish
/// going out before it is given up on (dropped, so it closes once the body ends or fails)
/// rather than checked back in: a client trickling a body the origin did not wait for must
/// not park it for good.
pub(super) const CHECKIN_WAIT: Duration = Duration::from_secs(10);

/// Connects to `http` fragment hosts through the [`GuardedResolver`], resolution and TCP within
/// `fetch.connect_timeout` together (as reqwest counts its connect timeout).
#[derive(Clone)]
pub(super) struct PlainConnector {
    http: HttpConnector<ResolveName>,
    timeout: Duration,
}

/// The [`GuardedResolver`] as the `Service<Name>` hyper's connector resolves with.
#[derive(Clone)]
pub(super) struct ResolveName(pub(super) Arc<GuardedResolver>);

/// Why a [`PlainPool`] could not send a request.
pub(super) enum SendError {
    /// No connection: resolution (or its guard), TCP connect, connect timeout.
    Connect(Box<dyn StdError + Send + Sync>),
    /// The connection failed before a response head arrived.
    Request(hyper::Error),
}

/// The connect timeout of a [`PlainConnector`] passed; reported as a connect failure.
#[derive(Debug, thiserror::Error)]
#[error("connect timed out after {0:?}")]
pub(super) struct ConnectTimeout(Duration);

// === impl PlainConnector ===

impl tower_service::Service<Uri> for PlainConnector {
    type Response = TokioIo<tokio::net::TcpStream>;
    type Error = Box<dyn StdError + Send + Sync>;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        tower_service::Service::poll_ready(&mut self.http, cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let connecting = tower_service::Service::call(&mut self.http, dst);
        let after = self.timeout;
        Box::pin(async move {
            match tokio::time::timeout(after, connecting).await {
                Ok(connected) => connected.map_err(Into::into),
                Err(_) => Err(Box::new(ConnectTimeout(after)) as Box<dyn StdError + Send + Sync>),
            }
        })
    }
}

/// A pool for `http` fragments or an `http` origin, its connections set up as reqwest sets up
/// its own: the guarded resolver, TCP_NODELAY, TCP keepalive; connected within
/// `fetch.connect_timeout`, kept `fetch.pool_idle_per_host` per host for at most
/// `fetch.pool_idle_timeout`.
pub(super) fn plain_pool<C>(
    resolver: &Arc<GuardedResolver>,
    fetch: &FetchSettings,
) -> Arc<PlainPool<C>> {
    let connect_timeout = fetch.connect_timeout;
    let mut http = HttpConnector::new_with_resolver(ResolveName(Arc::clone(resolver)));
    http.set_connect_timeout(Some(connect_timeout));
    http.set_nodelay(true);
    http.set_keepalive(Some(Duration::from_secs(15)));
    http.set_keepalive_interval(Some(Duration::from_secs(15)));
    http.set_keepalive_retries(Some(3));
    Arc::new(PlainPool {
        connector: PlainConnector {
            http,
            timeout: connect_timeout,
        },
        idle: Mutex::new(HashMap::new()),
        max_idle_per_host: fetch.pool_idle_per_host,
        idle_timeout: fetch.pool_idle_timeout,
        purging: AtomicBool::new(false),
        dropped: Arc::new(tokio::sync::Notify::new()),
    })
}

// === impl PlainPool ===

impl<C> fmt::Debug for PlainPool<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlainPool")
            .field("max_idle_per_host", &self.max_idle_per_host)
            .finish_non_exhaustive()
    }
}

impl<C: Pooled> PlainPool<C> {
    /// An idle connection to `authority` ready for a request, the most recently used first.
    pub(super) fn checkout(&self, authority: &str) -> Option<C> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let waiting = idle.get_mut(authority)?;
        // Closed or expired ones are dropped on the way, which closes them.
        while let Some(idle) = waiting.pop() {
            if idle.conn.usable() && idle.since.elapsed() < self.idle_timeout {
                return Some(idle.conn);
            }
        }
        None
    }

    /// Keeps a connection whose response has been read whole for the next request to
    /// `authority`; one over the per-host bound is dropped, which closes it.
    pub(super) fn put(self: &Arc<Self>, authority: &str, conn: C) {
        if self.max_idle_per_host == 0 {
            return;
        }
        self.start_purging();
        let conn = IdleConnection {
            conn,
            since: Instant::now(),
        };
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        match idle.get_mut(authority) {
            Some(waiting) if waiting.len() >= self.max_idle_per_host => {}
            Some(waiting) => waiting.push(conn),
            None => {
                idle.insert(authority.to_owned(), vec![conn]);
            }
        }
    }

    /// Opens a TCP connection to `authority` through the guarded resolver, within the connect
    /// timeout.
    pub(super) async fn connect_tcp(
        &self,
        authority: &str,
    ) -> Result<tokio::net::TcpStream, Box<dyn StdError + Send + Sync>> {
        let dst: Uri = format!("http://{authority}/").parse()?;
        let mut connector = self.connector.clone();
        futures::future::poll_fn(|cx| tower_service::Service::poll_ready(&mut connector, cx))
            .await?;
        let io = tower_service::Service::call(&mut connector, dst).await?;
        Ok(io.into_inner())
    }

    /// Starts, once, the task that closes connections idle longer than the idle timeout; it
    /// ends when the pool is dropped.
    fn start_purging(self: &Arc<Self>) {
        if self.purging.swap(true, Ordering::Relaxed) {
            return;
        }
        let pool = Arc::downgrade(self);
        let dropped = Arc::clone(&self.dropped);
        let timeout = self.idle_timeout;
        // A checkout never takes an expired connection; the sweep only closes them, so it
        // need not wake more than once a second, however short the timeout.
        let every = timeout.max(Duration::from_secs(1));
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(every) => {}
                    // A permit stored before this waits is taken at once.
                    () = dropped.notified() => return,
                }
                let Some(pool) = pool.upgrade() else {
                    return;
                };
                let mut idle = pool.idle.lock().unwrap_or_else(PoisonError::into_inner);
                idle.retain(|_, waiting| {
                    waiting.retain(|idle| idle.conn.usable() && idle.since.elapsed() < timeout);
                    !waiting.is_empty()
                });
            }
        });
    }
}

impl<B> Pooled for SendRequest<B>
where
    B: Send + 'static,
{
    fn usable(&self) -> bool {
        self.is_ready()
    }
}

impl Pooled for tokio::net::TcpStream {
    /// An idle stream is usable while it has nothing to read: a peer that closed it (or sent
    /// bytes no request asked for) makes it readable. Tokio answers from the readiness it
    /// last saw, without a system call when nothing has arrived.
    fn usable(&self) -> bool {
        let mut probe = [0u8; 1];
        matches!(self.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }
}

impl<B> PlainPool<SendRequest<B>>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    /// Sends `request` (origin-form URI, `Host` set) to `authority` on an idle connection, or
    /// on a new one. A request an idle connection turned out to be closed for is sent again on
    /// another, as it never reached the server. Returns the connection with the response, to
    /// be checked back in once the body is read.
    pub(super) async fn send(
        self: &Arc<Self>,
        authority: &str,
        mut request: http::Request<B>,
    ) -> Result<(http::Response<hyper::body::Incoming>, SendRequest<B>), SendError> {
        loop {
            let (mut sender, reused) = match self.checkout(authority) {
                Some(sender) => (sender, true),
                None => (self.connect(authority).await?, false),
            };
            match sender.try_send_request(request).await {
                Ok(response) => return Ok((response, sender)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) if reused => request = unsent,
                    _ => return Err(SendError::Request(e.into_error())),
                },
            }
        }
    }

    /// Puts a connection whose response has been read whole back for the next request. One
    /// the server is closing, or that would be over the per-host bound, is dropped.
    pub(super) fn checkin(self: &Arc<Self>, authority: &str, sender: SendRequest<B>) {
        if sender.is_closed() || self.max_idle_per_host == 0 {
            return;
        }
        if !sender.is_ready() {
            // Its task has not yet seen the end of the response: return it once it has.
            let pool = Arc::clone(self);
            let authority = authority.to_owned();
            let mut sender = sender;
            tokio::spawn(async move {
                match tokio::time::timeout(CHECKIN_WAIT, sender.ready()).await {
                    Ok(Ok(())) => pool.checkin(&authority, sender),
                    Ok(Err(_)) => {}
                    Err(_) => {
                        tracing::debug!(%authority, "request body still going out: connection not reused")
                    }
                }
            });
            return;
        }
        self.put(authority, sender);
    }

    /// Opens a connection to `authority` and starts the task that drives it.
    pub(super) async fn connect(&self, authority: &str) -> Result<SendRequest<B>, SendError> {
        let io = self
            .connect_tcp(authority)
            .await
            .map_err(SendError::Connect)?;
        let (sender, connection) = hyper::client::conn::http1::Builder::new()
            .max_buf_size(MAX_RESPONSE_HEAD_BYTES)
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| SendError::Connect(e.into()))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "pooled connection ended");
            }
        });
        Ok(sender)
    }
}

impl<C> Drop for PlainPool<C> {
    fn drop(&mut self) {
        self.dropped.notify_one();
    }
}

// === impl CheckinOnEnd ===

impl http_body::Body for CheckinOnEnd {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.body).poll_frame(cx));
        // The last data frame may be the last poll: a reader that knows the length (hyper's
        // server, sending a body it framed with Content-Length) stops once `is_end_stream`.
        let ended = match &frame {
            None => true,
            Some(Err(_)) => {
                this.connection = None;
                false
            }
            Some(Ok(_)) => this.body.is_end_stream(),
        };
        if ended {
            if let Some((pool, authority, connection)) = this.connection.take() {
                pool.checkin(&authority, connection);
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
