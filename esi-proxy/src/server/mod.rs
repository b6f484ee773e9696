//! The HTTP server: hyper on a listener, each request routed to the proxy path (`proxy`) or the
//! admin endpoints under `/_esi/` (`admin`), every response metered; graceful shutdown.
//! Knows no ESI details: composition is the composer's.

mod admin;
mod body;
mod conn;
pub mod error;
mod hints;
mod proxy;
mod reload;
mod state;
pub mod waterfall;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;

pub use body::Body;
pub use error::ServerError;
pub use reload::{watch_config, ReloadStatus};
pub use state::AppState;
#[cfg(feature = "test-hooks")]
pub use state::FetcherLayer;

use crate::telemetry;
use body::metered;
use conn::{ClientIo, Cycle, EarlyHints};
use error::error_response;

/// Client connections open now, on every listener.
const CONNECTIONS_OPEN: &str = "esi_proxy_connections_open";
/// Connections accepted while their listener was at `server.max_connections`, which waited for
/// a slot.
const CONNECTIONS_WAITED: &str = "esi_proxy_connections_waited_total";

/// Connections the kernel queues for a listener while the accept loop is behind or at
/// `server.max_connections` (capped by `net.core.somaxconn`); std's and tokio's 128 turn a
/// burst into SYN retries a second apart.
const LISTEN_BACKLOG: u32 = 4096;

/// A listener on `addr` with a backlog of [`LISTEN_BACKLOG`].
///
/// # Errors
/// The address cannot be bound (in use, not local, not permitted).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As std and tokio do: a restarted proxy may bind while old connections linger.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Serves HTTP/1.1 on `listener` until `shutdown` completes; then stops accepting and lets
/// in-flight requests finish for up to `server.shutdown_grace`.
///
/// # Errors
/// The listener fails in a way that is not a single bad connection.
pub async fn run(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    serve_on(listener, state, shutdown, Role::Public).await
}

/// Serves only the admin endpoints under `/_esi/` on `listener` (`server.admin_listen`); any
/// other path is 404. Shuts down as [`run`] does.
///
/// # Errors
/// As [`run`].
pub async fn run_admin(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    serve_on(listener, state, shutdown, Role::Admin).await
}

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Browser traffic, and the admin endpoints unless `server.admin_listen` is set.
    Public,
    /// The admin endpoints only.
    Admin,
}

async fn serve_on(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()>,
    role: Role,
) -> Result<(), ServerError> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let grace = state.runtime().settings.server.shutdown_grace;
    // Fixed at start: a reload does not resize a listener's slots.
    let slots = Arc::new(Semaphore::new(
        state.runtime().settings.server.max_connections,
    ));
    tokio::pin!(shutdown);
    loop {
        let (stream, remote) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // At the bound, this connection waits for a slot and the loop accepts no other: the
        // rest queue in the kernel's backlog, costing the process nothing.
        let slot = match Arc::clone(&slots).try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                state.metrics.inc_counter(
                    CONNECTIONS_WAITED,
                    "Connections accepted at server.max_connections, which waited for a slot.",
                    None,
                    1,
                );
                tracing::debug!(%remote, "at max_connections: waiting for a connection to close");
                tokio::select! {
                    () = &mut shutdown => break,
                    slot = Arc::clone(&slots).acquire_owned() => slot.expect("the semaphore is never closed"),
                }
            }
        };
        let open = Open::new(&state, slot);
        let _ = stream.set_nodelay(true);
        let rt = state.runtime();
        let server = &rt.settings.server;
        let keep_alive = server.keep_alive_timeout;
        let cycle = Cycle::new(server.header_read_timeout, keep_alive.unwrap_or_default());
        let early = Arc::new(EarlyHints::default());
        let io = ClientIo::new(
            stream,
            Arc::clone(&cycle),
            Arc::clone(&early),
            server.send_timeout,
            Arc::clone(&state.metrics),
        );
        let metrics = Arc::clone(&state.metrics);
        let state = Arc::clone(&state);
        let served = Arc::clone(&cycle);
        let service = service_fn(move |req| {
            let (state, cycle) = (Arc::clone(&state), Arc::clone(&served));
            let early = Arc::clone(&early);
            cycle.request_started();
            async move { Ok::<_, Infallible>(handle(state, req, remote, role, cycle, early).await) }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        // The head and keep-alive deadlines are `Cycle`'s: hyper's header timer would also run
        // through every keep-alive wait.
        builder
            .timer(TokioTimer::new())
            // Validation holds it at 8192 or more.
            .max_buf_size(server.max_header_bytes)
            .header_read_timeout(None)
            .keep_alive(keep_alive.is_some());
        let conn = builder.serve_connection(TokioIo::new(io), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _open = open;
            tokio::select! {
                ended = conn => if let Err(e) = ended {
                    tracing::debug!(error = %e, %remote, "connection ended with an error");
                },
                // Dropping the connection closes it.
                () = cycle.expired(&metrics) => {}
            }
        });
    }
    drop(listener);
    tracing::info!(
        grace_ms = grace.as_millis() as u64,
        "shutting down: draining in-flight requests"
    );
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections drained"),
        () = tokio::time::sleep(grace) => tracing::warn!("shutdown grace period over; closing remaining connections"),
    }
    Ok(())
}

/// Handles one request; never fails: errors become their status with a short body, and a panic
/// a 500 (logged and counted) for this request alone.
async fn handle(
    state: Arc<AppState>,
    req: Request<Incoming>,
    remote: SocketAddr,
    role: Role,
    cycle: Arc<Cycle>,
    early: Arc<EarlyHints>,
) -> Response<Body> {
    let started = Instant::now();
    let span = tracing::info_span!(
        "request",
        method = %req.method(),
        path = %req.uri().path(),
        client = %remote.ip(),
        status = tracing::field::Empty,
        route = tracing::field::Empty,
    );
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    async move {
        // With a separate admin listener, the public one serves no admin endpoint.
        let admin_here =
            role == Role::Admin || state.runtime().settings.server.admin_listen.is_none();
        let admin_path = req.uri().path().starts_with("/_esi/");
        let routed = async {
            if admin_path {
                if admin_here {
                    ("admin", admin::serve(&state, req, remote).await)
                } else {
                    ("admin", Err(error::Error::NotFound))
                }
            } else if role == Role::Admin {
                ("admin", Err(error::Error::NotFound))
            } else {
                proxy::serve(&state, req, remote, started, &early).await
            }
        };
        let (route, result) = match AssertUnwindSafe(routed).catch_unwind().await {
            Ok(routed) => routed,
            Err(panic) => {
                telemetry::record_panic(&state.metrics, "request", panic.as_ref());
                let route = if admin_path || role == Role::Admin {
                    "admin"
                } else {
                    "proxy"
                };
                (route, Err(error::Error::Panic))
            }
        };
        let response = result.unwrap_or_else(|e| {
            if e.status().is_server_error() {
                tracing::warn!(error = %e, "request failed");
            } else {
                tracing::info!(error = %e, "request refused");
            }
            error_response(&e, &state.runtime().settings.esi.primary_error_pages)
        });
        let span = tracing::Span::current();
        span.record("status", response.status().as_u16());
        span.record("route", route);
        // Streamed bodies are counted as they go; the request is recorded when the body ends.
        let access = state
            .runtime()
            .settings
            .server
            .access_log
            .then_some((method, path));
        metered(
            response,
            route,
            started,
            Arc::clone(&state.metrics),
            access,
            cycle,
        )
    }
    .instrument(span)
    .await
}

/// One open client connection: holds its listener's slot and keeps the open-connections gauge.
struct Open {
    state: Arc<AppState>,
    _slot: OwnedSemaphorePermit,
}

// === impl Open ===

impl Open {
    fn new(state: &Arc<AppState>, slot: OwnedSemaphorePermit) -> Self {
        count_open(state, 1);
        Self {
            state: Arc::clone(state),
            _slot: slot,
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        count_open(&self.state, -1);
    }
}

/// Adds `delta` to the open connections and sets the gauge, under one lock so the last value
/// set is the last count.
fn count_open(state: &AppState, delta: i64) {
    let mut open = state
        .connections
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    *open += delta;
    state.metrics.set_gauge(
        CONNECTIONS_OPEN,
        "Client connections open now, on every listener.",
        *open as f64,
    );
}
