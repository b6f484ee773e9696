//! HTTP/2 with prior knowledge (h2c) toward `http` fragment hosts configured to speak it
//! (`http2 = true` on a `fetch.hosts` entry, `fetch.origin_http2` for the origin): a host's
//! fragment requests share its connections as streams, so the requests of a page, and of
//! every page in flight, leave in few writes and their answers come in few reads, where
//! HTTP/1.1 takes a connection, a write and a read each.
//!
//! A host gets one connection, and another each time all it has carry as many streams as the
//! host allows; a connection with no stream for `fetch.pool_idle_timeout_ms` is closed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::SendRequest;
use h2::Reason;
use http::header::CONTENT_LENGTH;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri};

use super::client::send_error;
use super::collect::BodySink;
use super::h1::StreamPool;
use super::pool::MAX_RESPONSE_HEAD_BYTES;
use super::FetchError;
use crate::config::FetchSettings;

/// Streams one connection carries at most, whatever more the host allows: past it a new
/// connection spreads the load over the host's accept loop and the proxy's cores.
const MAX_STREAMS_PER_CONNECTION: usize = 256;

/// Connections one host gets at most: past it, a request waits on the least busy one for a
/// stream to end (HTTP/2 queues it), so a host that allows few streams (or none, for a while)
/// cannot make the proxy open connection after connection.
const MAX_CONNECTIONS_PER_HOST: usize = 64;

/// Streams a new connection may carry before the host's SETTINGS say how many it takes.
const INITIAL_STREAMS: usize = 100;

/// Receive window of each stream: bodies up to it arrive without waiting for a window update.
/// `fetch.max_fragment_bytes`, within these bounds, so a host cannot have much more than a
/// fragment may hold buffered per stream ahead of the size check.
const STREAM_WINDOW: (usize, usize) = (64 * 1024, 1024 * 1024);

/// What `open` is set to on a connection its driver is closing: no stream is leased on it.
const CLOSING: usize = usize::MAX / 2;

/// Receive window of each connection, shared by its streams.
const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;

/// How often a connection's driver looks whether it has been idle too long, at most: half the
/// idle timeout when that is shorter.
const IDLE_CHECK: Duration = Duration::from_secs(15);

/// The shortest pause between those looks, however short the idle timeout.
const MIN_IDLE_CHECK: Duration = Duration::from_millis(10);

/// The h2c connections of every host, by authority (`host[:port]` as the URL spells it).
#[derive(Debug)]
pub(super) struct H2Pool {
    hosts: Mutex<HashMap<String, Arc<Host>>>,
    /// `fetch.connect_timeout`, for TCP and for the HTTP/2 handshake after it.
    connect_timeout: Duration,
    /// Receive window of each stream (see [`STREAM_WINDOW`]).
    stream_window: u32,
    /// `fetch.pool_idle_timeout_ms`: how long a connection may carry no stream.
    idle_timeout: Duration,
}

/// One host's connections.
#[derive(Debug)]
struct Host {
    /// Its `:authority`, unless a request names another `Host`.
    authority: Authority,
    conns: Mutex<Vec<Arc<Conn>>>,
    /// Held while a connection is made, so a burst of requests makes one, not one each.
    connecting: tokio::sync::Mutex<()>,
    /// When this entry was made: every connection is younger.
    created: Instant,
}

/// One connection: the handle streams are opened with, and what the pool knows of it.
#[derive(Debug)]
struct Conn {
    send: SendRequest<Bytes>,
    /// Streams leased on it and not yet dropped.
    open: AtomicUsize,
    /// Set by its driver when the connection has ended.
    closed: AtomicBool,
    /// Whether a stream has been leased on it.
    used: AtomicBool,
    /// When a stream was last leased, in ms since `born`.
    last_used: AtomicU64,
    born: Instant,
}

/// A stream's claim on its connection, given back when dropped.
struct Lease {
    conn: Arc<Conn>,
    /// Whether the connection had carried streams before this one.
    reused: bool,
}

/// A request to send on a stream.
pub(super) struct Outgoing<'a> {
    pub(super) method: Method,
    /// `host[:port]` to connect to, as the URL spells it.
    pub(super) authority: &'a str,
    /// Path and query.
    pub(super) target: &'a str,
    /// Sent as `:authority` instead of `authority` (an include's `Host`).
    pub(super) host: Option<HeaderValue>,
    /// Cloned into each request sent (HTTP/2 takes its headers by value).
    pub(super) headers: Arc<HeaderMap>,
    pub(super) body: Option<Bytes>,
}

/// What a fragment's response came to.
pub(super) struct Received {
    pub(super) status: StatusCode,
    pub(super) headers: HeaderMap,
    pub(super) body: Bytes,
}

/// How sending failed: before the host saw the request (it may go on another connection),
/// or after.
enum Failed {
    /// Not processed; `dead`: because the connection is gone (not only the stream refused).
    Unsent {
        error: FetchError,
        dead: bool,
    },
    Fetch(FetchError),
}

// === impl H2Pool ===

impl H2Pool {
    /// A pool whose connections connect within `fetch.connect_timeout`, whose streams take
    /// bodies of `fetch.max_fragment_bytes` and that closes a connection idle for
    /// `fetch.pool_idle_timeout`.
    pub(super) fn new(fetch: &FetchSettings) -> Self {
        let window = fetch
            .max_fragment_bytes
            .clamp(STREAM_WINDOW.0, STREAM_WINDOW.1);
        Self {
            hosts: Mutex::default(),
            connect_timeout: fetch.connect_timeout,
            stream_window: u32::try_from(window).unwrap_or(u32::MAX),
            idle_timeout: fetch.pool_idle_timeout,
        }
    }

    /// Sends `out` on a stream to its host and reads the response; a non-2xx status is
    /// returned as it is unless `keep_status`. A request the host did not process (the
    /// connection was gone, the stream refused or left out of a graceful GOAWAY; a GET on a
    /// reused connection that ended before any answer) goes once more, on a connection made
    /// since. The caller applies the deadline.
    pub(super) async fn fetch(
        &self,
        tcp: &StreamPool,
        mut out: Outgoing<'_>,
        limit: usize,
        keep_status: bool,
        url: &str,
    ) -> Result<Received, FetchError> {
        let host = self.host(out.authority, url)?;
        let authority = match out.host.take() {
            Some(host) => Authority::from_maybe_shared(Bytes::copy_from_slice(host.as_bytes()))
                .map_err(|_| invalid_host(url))?,
            None => host.authority.clone(),
        };
        let path = PathAndQuery::from_maybe_shared(Bytes::copy_from_slice(out.target.as_bytes()))
            .map_err(|_| invalid_host(url))?;
        let mut failed_at: Option<Instant> = None;
        loop {
            // Sent again, a request goes on a connection made since it failed: others the host
            // cut at the same time (a GOAWAY to every connection, a restart) may not be known
            // to be gone yet.
            let since = failed_at.unwrap_or(host.created);
            let lease = match host.lease_open(since) {
                Some(lease) => lease,
                // Boxed: only a fetch that waits for a connection holds the room that takes.
                None => Box::pin(host.lease_new(self, tcp, out.authority, url, since)).await?,
            };
            let request = Head {
                out: &out,
                authority: &authority,
                path: &path,
            };
            match exchange(&lease, request, limit, keep_status, url).await {
                Ok(received) => return Ok(received),
                Err(Failed::Unsent { error, dead }) if failed_at.is_none() => {
                    tracing::debug!(%error, "HTTP/2 request not processed; sending it again");
                    if dead {
                        lease.conn.closed.store(true, Ordering::Relaxed);
                    }
                    failed_at = Some(Instant::now());
                }
                Err(Failed::Unsent { error, .. } | Failed::Fetch(error)) => return Err(error),
            }
        }
    }

    /// The connections of `authority`, an entry made the first time.
    fn host(&self, authority: &str, url: &str) -> Result<Arc<Host>, FetchError> {
        let mut hosts = self.hosts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(host) = hosts.get(authority) {
            return Ok(Arc::clone(host));
        }
        let host = Arc::new(Host {
            authority: Authority::from_maybe_shared(Bytes::copy_from_slice(authority.as_bytes()))
                .map_err(|_| invalid_host(url))?,
            conns: Mutex::default(),
            connecting: tokio::sync::Mutex::default(),
            created: Instant::now(),
        });
        hosts.insert(authority.to_owned(), Arc::clone(&host));
        Ok(host)
    }
}

// === impl Host ===

impl Host {
    /// A stream on a connection made after `since`, made when [`Host::lease_open`] found
    /// none: one request makes it while the others wait for it.
    async fn lease_new(
        &self,
        pool: &H2Pool,
        tcp: &StreamPool,
        authority: &str,
        url: &str,
        since: Instant,
    ) -> Result<Lease, FetchError> {
        let _connecting = self.connecting.lock().await;
        if let Some(lease) = self.lease_open(since) {
            return Ok(lease);
        }
        // Boxed: the handshake's state is large, and every fetch on the host would carry its
        // room while it waits for its answer, though few of them connect.
        let conn = Box::pin(connect(pool, tcp, authority, url)).await?;
        let lease = Lease::on(&conn, CLOSING).ok_or_else(|| FetchError::Connect {
            url: url.to_owned(),
            message: "HTTP/2 connection closed as it opened".into(),
        })?;
        self.conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(conn);
        Ok(lease)
    }

    /// A stream on the first open connection made after `since` with room for one, or on
    /// the least busy one when the host has all the connections it may; ended connections
    /// are dropped on the way.
    fn lease_open(&self, since: Instant) -> Option<Lease> {
        let mut conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
        conns.retain(|conn| !conn.closed.load(Ordering::Relaxed));
        if let Some(lease) = conns
            .iter()
            .filter(|conn| conn.born >= since)
            .find_map(|conn| Lease::on(conn, conn.capacity()))
        {
            return Some(lease);
        }
        if conns.len() < MAX_CONNECTIONS_PER_HOST {
            return None;
        }
        let open = |conn: &&Arc<Conn>| conn.open.load(Ordering::Relaxed);
        conns
            .iter()
            .min_by_key(open)
            .and_then(|conn| Lease::on(conn, CLOSING))
    }
}

// === impl Conn ===

impl Conn {
    /// Streams it may carry: what the host allows, up to [`MAX_STREAMS_PER_CONNECTION`].
    fn capacity(&self) -> usize {
        self.send
            .current_max_send_streams()
            .min(MAX_STREAMS_PER_CONNECTION)
    }

    /// Marks the connection used now (a stream starting or ending).
    fn touch(&self) {
        let now = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_used.store(now, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_used.load(Ordering::Relaxed));
        self.born.elapsed().saturating_sub(last)
    }
}

// === impl Lease ===

impl Lease {
    /// A stream on `conn` if it carries fewer than `capacity` (and its driver is not closing
    /// it, which sets [`CLOSING`]).
    fn on(conn: &Arc<Conn>, capacity: usize) -> Option<Lease> {
        let capacity = capacity.min(CLOSING);
        conn.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < capacity).then_some(open + 1)
            })
            .ok()?;
        let reused = conn.used.swap(true, Ordering::Relaxed);
        conn.touch();
        Some(Lease {
            conn: Arc::clone(conn),
            reused,
        })
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.conn.touch();
        self.conn.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Opens an h2c connection to `authority` (TCP through the pool's guarded connector, then
/// the preface) and starts its driver.
async fn connect(
    pool: &H2Pool,
    tcp: &StreamPool,
    authority: &str,
    url: &str,
) -> Result<Arc<Conn>, FetchError> {
    let stream = tcp
        .connect_tcp(authority)
        .await
        .map_err(|e| send_error(url, &*e, true, false, Duration::ZERO))?;
    let handshake_error = |message: String| FetchError::Connect {
        url: url.to_owned(),
        message: format!("HTTP/2 handshake: {message}"),
    };
    let handshake = async {
        let (send, mut connection) = h2::client::Builder::new()
            .enable_push(false)
            // Until the host's SETTINGS say otherwise (they are waited for below), the least
            // RFC 9113 advises a server to allow.
            .initial_max_send_streams(INITIAL_STREAMS)
            .initial_window_size(pool.stream_window)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_header_list_size(u32::try_from(MAX_RESPONSE_HEAD_BYTES).unwrap_or(u32::MAX))
            .handshake::<_, Bytes>(stream)
            .await?;
        let ping = connection.ping_pong();
        let conn = Arc::new(Conn {
            send,
            open: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            used: AtomicBool::new(false),
            last_used: AtomicU64::new(0),
            born: Instant::now(),
        });
        // One that has carried no stream yet is given its handshake's time on top, so a
        // timeout shorter than the round trip cannot close it before its first request.
        let idle = Idle {
            after: pool.idle_timeout,
            first: pool.idle_timeout.saturating_add(pool.connect_timeout),
        };
        tokio::spawn(drive(connection, Arc::downgrade(&conn), idle));
        // A host sends its SETTINGS before anything else, so once it has answered a PING its
        // stream limit is known: a burst of requests on a new connection is not sent past it
        // (and refused) on the guess above.
        if let Some(mut ping) = ping {
            ping.ping(h2::Ping::opaque()).await?;
        }
        Ok::<_, h2::Error>(conn)
    };
    // Dropped on time out, the connection's handles go, and its driver closes it.
    match tokio::time::timeout(pool.connect_timeout, handshake).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(handshake_error(e.to_string())),
        Err(_) => Err(handshake_error(format!(
            "no answer within {:?}",
            pool.connect_timeout
        ))),
    }
}

/// When a connection's driver closes it for carrying no stream.
#[derive(Clone, Copy)]
struct Idle {
    /// Once it has carried one: `fetch.pool_idle_timeout`.
    after: Duration,
    /// Before its first: the idle timeout plus the connect timeout.
    first: Duration,
}

/// Drives a connection until it ends, or until it has carried no stream for as long as `idle`
/// allows (or the pool that held it is gone and its streams are done).
async fn drive(
    connection: h2::client::Connection<tokio::net::TcpStream, Bytes>,
    conn: Weak<Conn>,
    idle: Idle,
) {
    let mut connection = std::pin::pin!(connection);
    let every = IDLE_CHECK.min(idle.after / 2).max(MIN_IDLE_CHECK);
    let mut check = tokio::time::interval(every);
    check.tick().await;
    loop {
        tokio::select! {
            ended = &mut connection => {
                if let Err(e) = ended {
                    tracing::debug!(error = %e, "h2 connection ended");
                }
                break;
            }
            _ = check.tick() => {
                let Some(conn) = conn.upgrade() else {
                    // Only streams still reading hold it: the connection ends once they do.
                    continue;
                };
                let allowed = if conn.used.load(Ordering::Relaxed) {
                    idle.after
                } else {
                    idle.first
                };
                // Taken from 0 to CLOSING at once, so no stream is leased on it meanwhile.
                let closing = conn.idle_for() >= allowed
                    && conn
                        .open
                        .compare_exchange(0, CLOSING, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok();
                if closing {
                    conn.closed.store(true, Ordering::Relaxed);
                    break;
                }
            }
        }
    }
    if let Some(conn) = conn.upgrade() {
        conn.closed.store(true, Ordering::Relaxed);
    }
}

fn invalid_host(url: &str) -> FetchError {
    FetchError::Transport {
        url: url.to_owned(),
        message: "the Host to send is not a valid HTTP/2 authority".into(),
    }
}

/// What a request is made of, built into one only when its stream is ready: a request
/// waiting for room on its connection holds these references, not the request.
struct Head<'a> {
    out: &'a Outgoing<'a>,
    authority: &'a Authority,
    path: &'a PathAndQuery,
}

impl Head<'_> {
    fn request(&self, url: &str) -> Result<Request<()>, Failed> {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(self.path.clone());
        let uri = Uri::from_parts(parts).map_err(|_| Failed::Fetch(invalid_host(url)))?;
        let mut request = Request::new(());
        *request.method_mut() = self.out.method.clone();
        *request.uri_mut() = uri;
        *request.headers_mut() = HeaderMap::clone(&self.out.headers);
        Ok(request)
    }
}

/// One request and its response on a stream of `lease`'s connection.
async fn exchange(
    lease: &Lease,
    head: Head<'_>,
    limit: usize,
    keep_status: bool,
    url: &str,
) -> Result<Received, Failed> {
    let unsent = |e: h2::Error, dead: bool| Failed::Unsent {
        error: FetchError::Transport {
            url: url.to_owned(),
            message: format!("HTTP/2 connection: {e}"),
        },
        dead,
    };
    let idempotent = head.out.body.is_none();
    let mut send = lease
        .conn
        .send
        .clone()
        .ready()
        .await
        .map_err(|e| unsent(e, true))?;
    let request = head.request(url)?;
    let body = head.out.body.clone();
    let (response, mut stream) = match send.send_request(request, body.is_none()) {
        Ok(sent) => sent,
        // A request h2 refuses outright (a header HTTP/2 forbids: neither I/O, nor a frame
        // from or to the host) fails as is: another connection would refuse it too.
        Err(e) if !e.is_io() && !e.is_go_away() && !e.is_reset() && e.reason().is_none() => {
            return Err(Failed::Fetch(FetchError::Transport {
                url: url.to_owned(),
                message: format!("HTTP/2 request: {e}"),
            }))
        }
        Err(e) => return Err(unsent(e, true)),
    };
    drop(send);
    if let Some(body) = body {
        stream
            .send_data(body, true)
            .map_err(|e| Failed::Fetch(stream_error(url, &e, false)))?;
    }
    // The request is sent whole: what waits for the answer holds only the response's future.
    drop(stream);
    let reused = lease.reused;
    let response = response.await.map_err(|e| {
        // Not processed, whatever the method: a refused stream, or one the host's graceful
        // GOAWAY left out. A GET on a connection that had carried others and ended before
        // an answer, as HTTP/1.1 sends one again on a reused stream.
        let refused = e.reason() == Some(Reason::REFUSED_STREAM);
        let left_out = e.is_go_away() && e.is_remote() && e.reason() == Some(Reason::NO_ERROR);
        if refused || left_out || (idempotent && reused && e.is_io()) {
            unsent(e, !refused)
        } else {
            Failed::Fetch(stream_error(url, &e, false))
        }
    })?;
    let (head, recv) = response.into_parts();
    if !head.status.is_success() && !keep_status {
        return Err(Failed::Fetch(FetchError::Status {
            url: url.to_owned(),
            status: head.status,
        }));
    }
    // Boxed: only a stream whose answer came needs the room its body takes to read.
    Box::pin(read_body(head, recv, limit, url)).await
}

/// The body of an answer, read within `limit` (decoded when it is encoded); the stream's
/// window is given back as it is read.
async fn read_body(
    head: http::response::Parts,
    mut recv: h2::RecvStream,
    limit: usize,
    url: &str,
) -> Result<Received, Failed> {
    let mut headers = head.headers;
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut sink = BodySink::new(&mut headers, declared, limit, url).map_err(Failed::Fetch)?;
    while let Some(chunk) = recv.data().await {
        let chunk = chunk.map_err(|e| Failed::Fetch(stream_error(url, &e, true)))?;
        // The window is given back as the bytes are taken, whatever becomes of them.
        let _ = recv.flow_control().release_capacity(chunk.len());
        sink.push(&chunk).map_err(Failed::Fetch)?;
    }
    Ok(Received {
        status: head.status,
        headers,
        body: sink.finish().map_err(Failed::Fetch)?,
    })
}

/// A stream that failed once its request was sent: a response that breaks HTTP/2 is
/// malformed, a stream or connection cut in the body truncates it, anything else is a
/// transport failure.
fn stream_error(url: &str, e: &h2::Error, in_body: bool) -> FetchError {
    let url = url.to_owned();
    let message = format!("HTTP/2: {e}");
    if e.is_library() && e.reason() == Some(Reason::PROTOCOL_ERROR) {
        FetchError::Malformed { url, message }
    } else if in_body {
        FetchError::Truncated { url, message }
    } else {
        FetchError::Transport { url, message }
    }
}
