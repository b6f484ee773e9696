//! The HTTP server: hyper on a listener, each request routed to the proxy path (`proxy`) or the
//! admin endpoints under `/_esi/` (`admin`), every response metered; graceful shutdown.
//! Knows no ESI details: composition is the composer's.

mod admin;
mod body;
pub mod error;
mod proxy;
mod reload;
mod state;
pub mod waterfall;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tracing::Instrument;

pub use body::Body;
pub use error::ServerError;
pub use reload::{watch_config, ReloadStatus};
pub use state::AppState;

use body::metered;
use error::error_response;

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
        let _ = stream.set_nodelay(true);
        // Validation holds it at 8192 or more.
        let max_buf = state.runtime().settings.server.max_header_bytes;
        let state = Arc::clone(&state);
        let service = service_fn(move |req| {
            let state = Arc::clone(&state);
            async move { Ok::<_, Infallible>(handle(state, req, remote, role).await) }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .max_buf_size(max_buf)
            .header_read_timeout(Duration::from_secs(30));
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, %remote, "connection ended with an error");
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

/// Handles one request; never fails: errors become their status with a short body.
async fn handle(
    state: Arc<AppState>,
    req: Request<Incoming>,
    remote: SocketAddr,
    role: Role,
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
        let (route, result) = if req.uri().path().starts_with("/_esi/") {
            if admin_here {
                ("admin", admin::serve(&state, req, remote).await)
            } else {
                ("admin", Err(error::Error::NotFound))
            }
        } else if role == Role::Admin {
            ("admin", Err(error::Error::NotFound))
        } else {
            proxy::serve(&state, req, remote, started).await
        };
        let response = result.unwrap_or_else(|e| {
            if e.status().is_server_error() {
                tracing::warn!(error = %e, "request failed");
            } else {
                tracing::info!(error = %e, "request refused");
            }
            error_response(&e)
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
        metered(response, route, started, Arc::clone(&state.metrics), access)
    }
    .instrument(span)
    .await
}
