//! The HTTP server: hyper on a listener, every request proxied to the origin, responses marked
//! for ESI composed and all others streamed through untouched; admin endpoints under `/_esi/`;
//! graceful shutdown. Knows no ESI details: composition is the composer's.

use std::convert::Infallible;
use std::future::Future;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Body as _, Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tracing::Instrument;

use crate::cache::{CachePolicy, CachingFetcher, FragmentCache, LayoutCache};
use crate::compose::{ComposeConfig, Composer, LayoutRecord, OnParsed, Page, Trace};
use crate::config::Config;
use crate::debug::PageReport;
use crate::error::Error;
use crate::esi;
use crate::fetch::{BaseUrl, Fetcher, HttpClient, Lookup};
use crate::telemetry::{server_timing, Metrics};

/// A response body: bytes streamed, errors abort the connection.
pub type Body = BoxBody<Bytes, BoxError>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What every request handler shares: the runtime built from the config in force (swapped
/// whole on reload), the caches (kept across reloads), metrics and reload status.
pub struct AppState {
    runtime: RwLock<Arc<Runtime>>,
    lookup: Arc<dyn Lookup>,
    metrics: Arc<Metrics>,
    fragment_cache: Arc<FragmentCache>,
    layout_cache: Arc<LayoutCache>,
    reload: Mutex<ReloadStatus>,
    started: Instant,
}

/// Everything built from one config. A request takes one `Arc<Runtime>` and keeps it to its
/// end, so a reload never changes the rules under a page being composed.
struct Runtime {
    config: Config,
    client: Arc<HttpClient>,
    composer: Arc<Composer>,
    policy: Arc<CachePolicy>,
    origin: BaseUrl,
    /// `origin` as a URL, made once: every request's page URL is joined onto it.
    origin_url: url::Url,
}

/// The outcome of config reloads so far, for `/_esi/health` and the metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadStatus {
    /// How many configs were applied since start (0: the one it started with).
    pub generation: u64,
    /// The last failed reload's error, naming file, line and field; cleared by a success.
    pub last_error: Option<String>,
}

/// Why the server could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The config cannot be used.
    #[error("config: {0}")]
    Config(String),
    /// Accepting connections failed.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
}

/// Headers that describe one hop, never forwarded (RFC 9110 section 7.6.1).
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
];

const SURROGATE_CONTROL: HeaderName = HeaderName::from_static("surrogate-control");
const SURROGATE_CAPABILITY: HeaderName = HeaderName::from_static("surrogate-capability");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");
const SERVER_TIMING: HeaderName = HeaderName::from_static("server-timing");

// === impl AppState ===

impl AppState {
    /// Builds the shared state from a validated config, resolving names with `lookup`.
    /// The caches are sized here; their capacity changes only with a restart.
    ///
    /// # Errors
    /// The origin URL or a host entry cannot be used by the HTTP client.
    pub fn new(
        config: Config,
        lookup: Arc<dyn Lookup>,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, ServerError> {
        let fragment_cache = FragmentCache::new(
            config.cache.fragment_capacity_bytes.max(1),
            Arc::clone(&metrics),
        );
        let layout_cache = LayoutCache::new(
            config.cache.layout_capacity_bytes.max(1),
            Arc::clone(&metrics),
        );
        let runtime = build_runtime(config, &lookup, &metrics, &fragment_cache)?;
        Ok(Arc::new(Self {
            runtime: RwLock::new(Arc::new(runtime)),
            lookup,
            metrics,
            fragment_cache,
            layout_cache,
            reload: Mutex::new(ReloadStatus::default()),
            started: Instant::now(),
        }))
    }

    /// The metrics this server records.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The fragment cache (shared across reloads).
    pub fn fragment_cache(&self) -> &Arc<FragmentCache> {
        &self.fragment_cache
    }

    fn runtime(&self) -> Arc<Runtime> {
        Arc::clone(
            &self
                .runtime
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Applies a validated config to every request that starts from now on; requests in
    /// flight finish under the config they started with. The listen address and cache
    /// capacities are fixed at start.
    ///
    /// # Errors
    /// The HTTP client cannot be built from it.
    pub fn apply(&self, config: Config) -> Result<(), ServerError> {
        let runtime = build_runtime(config, &self.lookup, &self.metrics, &self.fragment_cache)?;
        *self
            .runtime
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(runtime);
        Ok(())
    }

    /// Loads `path`, lets `adjust` apply command-line overrides, validates and applies it. A
    /// broken file is refused and the config in force stays; either way the outcome is kept
    /// for `/_esi/health` and counted in the metrics.
    ///
    /// # Errors
    /// The file's problems, naming file, line and field.
    pub fn reload_file(
        &self,
        path: &Path,
        adjust: &(dyn Fn(&mut Config) + Send + Sync),
    ) -> Result<u64, String> {
        let result = Config::load(path)
            .map_err(|e| e.to_string())
            .and_then(|mut config| {
                adjust(&mut config);
                config
                    .validate_source(&path.display().to_string(), None)
                    .map_err(|e| e.to_string())?;
                self.apply(config).map_err(|e| e.to_string())
            });
        let mut status = self
            .reload
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match result {
            Ok(()) => {
                status.generation += 1;
                status.last_error = None;
                self.metrics.inc_counter(
                    "esi_proxy_config_reloads_total",
                    "Config reloads, by result.",
                    Some(("result", "ok")),
                    1,
                );
                self.metrics.set_gauge(
                    "esi_proxy_config_reload_failed",
                    "1 while the last config reload failed.",
                    0.0,
                );
                tracing::info!(path = %path.display(), generation = status.generation, "config reloaded");
                Ok(status.generation)
            }
            Err(e) => {
                status.last_error = Some(e.clone());
                self.metrics.inc_counter(
                    "esi_proxy_config_reloads_total",
                    "Config reloads, by result.",
                    Some(("result", "error")),
                    1,
                );
                self.metrics.set_gauge(
                    "esi_proxy_config_reload_failed",
                    "1 while the last config reload failed.",
                    1.0,
                );
                tracing::error!(path = %path.display(), error = %e, "config reload refused; the previous config stays in force");
                Err(e)
            }
        }
    }

    /// The outcome of reloads so far.
    pub fn reload_status(&self) -> ReloadStatus {
        self.reload
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

fn build_runtime(
    config: Config,
    lookup: &Arc<dyn Lookup>,
    metrics: &Arc<Metrics>,
    fragment_cache: &Arc<FragmentCache>,
) -> Result<Runtime, ServerError> {
    let client = Arc::new(
        HttpClient::new(&config, Arc::clone(lookup))
            .map_err(|e| ServerError::Config(e.to_string()))?,
    );
    let policy = Arc::new(CachePolicy::from_config(&config.cache));
    let fetcher: Arc<dyn Fetcher> = if config.cache.enabled {
        Arc::new(CachingFetcher::new(
            Arc::clone(&client) as Arc<dyn Fetcher>,
            Arc::clone(fragment_cache),
            Arc::clone(&policy),
        ))
    } else {
        Arc::clone(&client) as Arc<dyn Fetcher>
    };
    let composer = Composer::new(
        fetcher,
        ComposeConfig::from_config(&config),
        config.fetch.max_concurrent,
        Arc::clone(metrics),
    );
    let origin = client.origin().clone();
    let origin_url = origin.to_url();
    Ok(Runtime {
        config,
        client,
        composer,
        policy,
        origin,
        origin_url,
    })
}

/// Reloads the config on SIGHUP and whenever the file changes (checked every `poll`; zero:
/// on SIGHUP only), until the returned task is aborted. `adjust` re-applies command-line overrides to each new file.
pub fn watch_config(
    state: Arc<AppState>,
    path: PathBuf,
    adjust: Arc<dyn Fn(&mut Config) + Send + Sync>,
    poll: Duration,
) -> tokio::task::JoinHandle<()> {
    // The SIGHUP handler is installed before this returns: a signal that arrives before the
    // task first runs must not take the default action, which ends the process.
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    tokio::spawn(async move {
        let stamp = |p: &Path| {
            std::fs::metadata(p)
                .ok()
                .map(|m| (m.modified().ok(), m.len()))
        };
        let mut last = stamp(&path);
        // A zero interval means: reload on SIGHUP only.
        let mut tick = tokio::time::interval(if poll.is_zero() {
            Duration::from_secs(3600)
        } else {
            poll
        });
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            #[cfg(unix)]
            let hangup = async {
                match hup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let hangup = std::future::pending::<Option<()>>();
            let forced = tokio::select! {
                _ = hangup => true,
                _ = tick.tick() => false,
            };
            if !forced && poll.is_zero() {
                continue;
            }
            let now = stamp(&path);
            if forced || now != last {
                last = now;
                let _ = state.reload_file(&path, adjust.as_ref());
            }
        }
    })
}

/// Serves HTTP/1.1 on `listener` until `shutdown` completes; then stops accepting and lets
/// in-flight requests finish for up to `server.shutdown_grace_ms`.
///
/// # Errors
/// The listener fails in a way that is not a single bad connection.
pub async fn run(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let grace = Duration::from_millis(state.runtime().config.server.shutdown_grace_ms);
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
        let max_buf = state.runtime().config.server.max_header_bytes.max(8192);
        let state = Arc::clone(&state);
        let service = service_fn(move |req| {
            let state = Arc::clone(&state);
            async move { Ok::<_, Infallible>(handle(state, req, remote).await) }
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
        let (route, result) = if req.uri().path().starts_with("/_esi/") {
            ("admin", admin(&state, req, remote).await)
        } else {
            proxy(&state, req, remote, started).await
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
            .config
            .server
            .access_log
            .then_some((method, path));
        metered(response, route, started, Arc::clone(&state.metrics), access)
    }
    .instrument(span)
    .await
}

fn error_response(e: &Error) -> Response<Body> {
    let mut response = Response::new(full(e.public_message()));
    *response.status_mut() = e.status();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed()
}

/// Refuses what a reverse proxy must not do: tunnels, TRACE, upgrades, forward-proxy requests.
fn refuse(req: &Request<Incoming>) -> Result<(), Error> {
    if req.method() == Method::CONNECT {
        return Err(Error::Refused(
            "CONNECT is not supported: this is not a forward proxy",
            StatusCode::METHOD_NOT_ALLOWED,
        ));
    }
    if req.method() == Method::TRACE {
        return Err(Error::Refused(
            "TRACE is not supported",
            StatusCode::METHOD_NOT_ALLOWED,
        ));
    }
    if req.headers().contains_key(header::UPGRADE) {
        return Err(Error::Refused(
            "protocol upgrades are not supported",
            StatusCode::NOT_IMPLEMENTED,
        ));
    }
    if let Some(authority) = req.uri().authority() {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        if !authority.as_str().eq_ignore_ascii_case(host) {
            return Err(Error::Refused(
                "absolute-form requests for other hosts are refused: this is not a forward proxy",
                StatusCode::BAD_REQUEST,
            ));
        }
    }
    Ok(())
}

/// Removes hop-by-hop headers and every header the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    for name in &named {
        headers.remove(name);
    }
}

/// The headers sent to the origin: the client's, less hop-by-hop and anything a client could
/// use to impersonate the proxy, plus X-Forwarded-* set by us.
fn origin_headers(req: &Request<Incoming>, remote: SocketAddr) -> HeaderMap {
    let mut headers = req.headers().clone();
    strip_hop_by_hop(&mut headers);
    let host = headers.remove(header::HOST);
    for name in [
        X_FORWARDED_FOR,
        X_FORWARDED_PROTO,
        X_FORWARDED_HOST,
        FORWARDED,
        SURROGATE_CAPABILITY,
    ] {
        headers.remove(name);
    }
    // The origin may only pick an encoding the proxy can decode to compose the page.
    if let Some(accepted) = decodable_encodings(&headers) {
        headers.insert(header::ACCEPT_ENCODING, accepted);
    }
    let ip = match remote.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        ip => ip,
    };
    if let Ok(v) = HeaderValue::from_str(&ip.to_string()) {
        headers.insert(X_FORWARDED_FOR, v);
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    if let Some(host) = host {
        headers.insert(X_FORWARDED_HOST, host);
    }
    headers
}

/// The client's `Accept-Encoding` narrowed to what a layout may be decoded from (gzip,
/// deflate, br, identity), so an origin never answers an ESI page in, say, zstd. `None` when
/// the client sent none.
fn decodable_encodings(headers: &HeaderMap) -> Option<HeaderValue> {
    let values: Vec<&str> = headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if values.is_empty() {
        return None;
    }
    let mut kept: Vec<String> = Vec::new();
    for item in values.iter().flat_map(|v| v.split(',')) {
        let item = item.trim();
        let coding = item
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match coding.as_str() {
            "gzip" | "x-gzip" | "deflate" | "br" | "identity" => kept.push(item.to_owned()),
            "*" => kept.extend(["gzip", "deflate", "br"].map(String::from)),
            _ => {}
        }
    }
    let joined = if kept.is_empty() {
        "identity".to_owned()
    } else {
        kept.join(", ")
    };
    HeaderValue::from_str(&joined).ok()
}

/// A request on its way to the origin, taken apart from the client's.
struct Outgoing {
    method: Method,
    path_and_query: String,
    /// The client's headers as the origin gets them (hop-by-hop gone, X-Forwarded-* ours).
    headers: HeaderMap,
    vars: esi::Request,
    body: reqwest::Body,
}

impl Outgoing {
    fn new(req: Request<Incoming>, remote: SocketAddr) -> Self {
        let path_and_query = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let headers = origin_headers(&req, remote);
        let vars = esi_vars(&req);
        let method = req.method().clone();
        let body = req.into_body();
        let body = if body.is_end_stream() {
            reqwest::Body::from(Bytes::new())
        } else {
            reqwest::Body::wrap_stream(body.into_data_stream())
        };
        Self {
            method,
            path_and_query,
            headers,
            vars,
            body,
        }
    }
}

/// Proxies one request to the origin and composes the response if it is marked for ESI.
async fn proxy(
    state: &Arc<AppState>,
    req: Request<Incoming>,
    remote: SocketAddr,
    started: Instant,
) -> (&'static str, Result<Response<Body>, Error>) {
    if let Err(e) = refuse(&req) {
        return ("proxy", Err(e));
    }
    forward(state, Outgoing::new(req, remote), started, None).await
}

/// Sends a request to the origin (a GET whose parsed layout is cached touches no upstream
/// for the layout) and composes or passes the response; `trace` records the page's build.
async fn forward(
    state: &Arc<AppState>,
    out: Outgoing,
    started: Instant,
    trace: Option<Arc<Trace>>,
) -> (&'static str, Result<Response<Body>, Error>) {
    let rt = state.runtime();
    let Outgoing {
        method,
        path_and_query,
        headers,
        vars,
        body,
    } = out;
    let Ok(page_url) = rt.origin_url.join(&path_and_query) else {
        return (
            "proxy",
            Err(Error::Refused(
                "request target is not a valid URL",
                StatusCode::BAD_REQUEST,
            )),
        );
    };
    let caching = rt.config.cache.enabled && method == Method::GET;
    if caching {
        if let Some(hit) = state.layout_cache.get(&rt.policy, &page_url, &headers) {
            if let Some(t) = &trace {
                t.set_layout(LayoutRecord {
                    url: page_url.to_string(),
                    status: hit.status.as_u16(),
                    headers_ms: started.elapsed().as_secs_f64() * 1000.0,
                    cache: Some("hit".into()),
                    ttl_s: Some(hit.ttl.as_secs_f64()),
                    ttl_source: Some(hit.source.to_string()),
                });
            }
            let page = Page {
                url: page_url,
                vars,
                client_headers: Arc::new(headers),
                started,
                trace,
            };
            let rx = rt.composer.compose_parsed(page, Arc::clone(&hit.template));
            let timing = server_timing(&[("layout", 0.0, Some("cache hit"))]);
            let headers = composed_headers(&hit.headers);
            return ("esi", respond(state, rx, hit.status, headers, timing).await);
        }
    }
    let client_headers = Arc::new(headers.clone());
    let upstream = match rt
        .client
        .send_origin(method.clone(), &path_and_query, headers, body)
        .await
    {
        Ok(r) => r,
        Err(e) => return ("proxy", Err(Error::Origin(e))),
    };
    let layout_ms = started.elapsed().as_secs_f64() * 1000.0;
    if let Some(t) = &trace {
        t.set_layout(LayoutRecord {
            url: page_url.to_string(),
            status: upstream.status().as_u16(),
            headers_ms: layout_ms,
            cache: caching.then(|| "miss".into()),
            ttl_s: None,
            ttl_source: None,
        });
    }
    if !wants_esi(&rt.config, &path_and_query, &upstream) {
        return ("proxy", Ok(pass_through(upstream, &method)));
    }
    if method == Method::HEAD {
        // The head of what a GET would get: the composed page's headers, no body.
        let mut response = Response::new(full(Bytes::new()));
        *response.status_mut() = upstream.status();
        *response.headers_mut() = composed_headers(upstream.headers());
        return ("esi", Ok(response));
    }
    let page = Page {
        url: page_url,
        vars,
        client_headers,
        started,
        trace,
    };
    (
        "esi",
        compose(state, &rt, upstream, page, layout_ms, caching).await,
    )
}

/// Whether a response is composed: marked `Surrogate-Control: content="ESI/1.0"` or on a
/// configured path; HTML only; not for 1xx, 204 or 304.
fn wants_esi(config: &Config, path_and_query: &str, resp: &reqwest::Response) -> bool {
    let status = resp.status();
    if status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return false;
    }
    let html = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            let ct = ct.trim_start().to_ascii_lowercase();
            ct.starts_with("text/html") || ct.starts_with("application/xhtml+xml")
        });
    if !html {
        return false;
    }
    let marked = resp.headers().get_all(SURROGATE_CONTROL).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.to_ascii_lowercase()
                .replace(' ', "")
                .contains("content=\"esi/1.0\"")
        })
    });
    let path = path_and_query.split('?').next().unwrap_or("/");
    marked
        || config
            .esi
            .process_paths
            .iter()
            .any(|glob| crate::config::glob_match(glob, path))
}

/// The response headers passed on to the client: the origin's, less hop-by-hop and
/// Surrogate-Control.
fn client_response_headers(upstream: &HeaderMap) -> HeaderMap {
    let mut headers = upstream.clone();
    strip_hop_by_hop(&mut headers);
    headers.remove(SURROGATE_CONTROL);
    headers
}

/// The headers of a composed page: the layout's, less what no longer describes the body
/// (length, encoding, validators, ranges) and Surrogate-Control.
fn composed_headers(layout: &HeaderMap) -> HeaderMap {
    let mut headers = client_response_headers(layout);
    for name in [
        header::CONTENT_LENGTH,
        header::CONTENT_ENCODING,
        header::ETAG,
        header::ACCEPT_RANGES,
        header::LAST_MODIFIED,
    ] {
        headers.remove(name);
    }
    headers
}

/// Streams a response through untouched and unbuffered.
fn pass_through(upstream: reqwest::Response, method: &Method) -> Response<Body> {
    let mut builder = Response::builder().status(upstream.status());
    if let Some(h) = builder.headers_mut() {
        *h = client_response_headers(upstream.headers());
    }
    let body = if method == Method::HEAD {
        full(Bytes::new())
    } else {
        let stream = upstream
            .bytes_stream()
            .map_ok(Frame::data)
            .map_err(|e| -> BoxError { Box::new(e) });
        BodyExt::boxed(StreamBody::new(stream))
    };
    builder
        .body(body)
        .unwrap_or_else(|_| Response::new(full(Bytes::new())))
}

/// Composes an ESI response from a streamed layout, caching the parsed layout when its
/// headers allow.
async fn compose(
    state: &Arc<AppState>,
    rt: &Runtime,
    upstream: reqwest::Response,
    page: Page,
    layout_ms: f64,
    caching: bool,
) -> Result<Response<Body>, Error> {
    let status = upstream.status();
    let original = upstream.headers().clone();
    let encoding = original
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok().map(|s| s.trim().to_ascii_lowercase()))
        .unwrap_or_default();
    let cap = rt.config.fetch.max_layout_bytes;
    let raw = upstream
        .bytes_stream()
        .map_err(|e| format!("reading the layout: {e}"));
    let layout: Pin<Box<dyn Stream<Item = Result<Bytes, String>> + Send>> = match encoding.as_str()
    {
        "" | "identity" => Box::pin(capped(raw, cap)),
        "gzip" | "x-gzip" | "deflate" | "br" => Box::pin(decoded(raw, &encoding, cap)),
        other => return Err(Error::UnsupportedEncoding(other.to_owned())),
    };
    let on_parsed: Option<OnParsed> = caching.then(|| {
        let (cache, policy) = (Arc::clone(&state.layout_cache), Arc::clone(&rt.policy));
        let (url, request_headers, response_headers) = (
            page.url.clone(),
            Arc::clone(&page.client_headers),
            original.clone(),
        );
        Box::new(move |template: esi::Template, size: usize| {
            cache.insert(
                &policy,
                &url,
                &request_headers,
                status,
                &response_headers,
                Arc::new(template),
                size,
            );
        }) as OnParsed
    });
    let rx = rt.composer.compose(page, layout, on_parsed);
    let timing = server_timing(&[("layout", layout_ms, None)]);
    respond(state, rx, status, composed_headers(&original), timing).await
}

/// Sends a composed page. The head goes out once the first part of the page is ready, so a
/// failure before then is still a clean 502/504; after it, a failure aborts the connection.
async fn respond(
    state: &Arc<AppState>,
    mut rx: tokio::sync::mpsc::Receiver<Result<Bytes, crate::compose::ComposeError>>,
    status: StatusCode,
    mut headers: HeaderMap,
    timing: HeaderValue,
) -> Result<Response<Body>, Error> {
    state.metrics.pages_in_flight(1);
    let in_flight = InFlight(Arc::clone(&state.metrics));
    let first = match rx.recv().await {
        Some(Ok(bytes)) => Some(bytes),
        Some(Err(e)) => return Err(Error::Compose(e)),
        None => None,
    };
    headers.append(SERVER_TIMING, timing);
    let rest = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let stream = futures::stream::iter(first.map(Ok))
        .chain(rest)
        .map(move |item| {
            let _keep = &in_flight;
            item.map(Frame::data).map_err(|e| -> BoxError {
                tracing::warn!(error = %e, "page aborted after its head was sent");
                Box::new(e)
            })
        });
    let mut response = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    Ok(response)
}

/// Keeps the pages-in-flight gauge honest however a page ends.
struct InFlight(Arc<Metrics>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.pages_in_flight(-1);
    }
}

/// Fails the stream once more than `cap` bytes went through.
fn capped(
    stream: impl Stream<Item = Result<Bytes, String>> + Send,
    cap: usize,
) -> impl Stream<Item = Result<Bytes, String>> + Send {
    let mut seen = 0usize;
    stream.map(move |item| {
        let bytes = item?;
        seen += bytes.len();
        if seen > cap {
            return Err(format!("layout over {cap} bytes"));
        }
        Ok(bytes)
    })
}

/// A writer that refuses to grow past its limit, so a compression bomb stops at the cap.
struct CapWriter {
    buf: Vec<u8>,
    written: usize,
    cap: usize,
}

impl std::io::Write for CapWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.written + data.len() > self.cap {
            return Err(std::io::Error::other(format!(
                "decoded layout over {} bytes",
                self.cap
            )));
        }
        self.written += data.len();
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

enum Decoder {
    Gzip(flate2::write::MultiGzDecoder<CapWriter>),
    Deflate(flate2::write::ZlibDecoder<CapWriter>),
    Brotli(Box<brotli::DecompressorWriter<CapWriter>>),
}

impl Decoder {
    fn new(encoding: &str, cap: usize) -> Self {
        let sink = CapWriter {
            buf: Vec::new(),
            written: 0,
            cap,
        };
        match encoding {
            "deflate" => Decoder::Deflate(flate2::write::ZlibDecoder::new(sink)),
            "br" => Decoder::Brotli(Box::new(brotli::DecompressorWriter::new(sink, 4096))),
            _ => Decoder::Gzip(flate2::write::MultiGzDecoder::new(sink)),
        }
    }

    fn write(&mut self, data: &[u8]) -> std::io::Result<Bytes> {
        match self {
            Decoder::Gzip(d) => d.write_all(data),
            Decoder::Deflate(d) => d.write_all(data),
            Decoder::Brotli(d) => d.write_all(data),
        }?;
        Ok(self.take())
    }

    /// The last decoded bytes; an error when the compressed stream ended early.
    fn finish(&mut self) -> std::io::Result<Bytes> {
        match self {
            Decoder::Gzip(d) => d.try_finish(),
            Decoder::Deflate(d) => d.try_finish(),
            // `flush` would hand out what a cut stream decoded so far as if it were whole;
            // `close` fails unless the stream reached its end.
            Decoder::Brotli(d) => d.close(),
        }?;
        Ok(self.take())
    }

    fn take(&mut self) -> Bytes {
        let sink = match self {
            Decoder::Gzip(d) => d.get_mut(),
            Decoder::Deflate(d) => d.get_mut(),
            Decoder::Brotli(d) => d.get_mut(),
        };
        Bytes::from(std::mem::take(&mut sink.buf))
    }
}

/// Decodes a gzip, deflate or brotli body as it streams, at most `cap` decoded bytes.
fn decoded(
    stream: impl Stream<Item = Result<Bytes, String>> + Send + Unpin + 'static,
    encoding: &str,
    cap: usize,
) -> impl Stream<Item = Result<Bytes, String>> + Send {
    let decoder = Decoder::new(encoding, cap);
    futures::stream::unfold(Some((stream, decoder)), |state| async move {
        let (mut stream, mut decoder) = state?;
        loop {
            match stream.next().await {
                Some(Ok(chunk)) => match decoder.write(&chunk) {
                    Ok(out) if out.is_empty() => continue,
                    Ok(out) => return Some((Ok(out), Some((stream, decoder)))),
                    Err(e) => return Some((Err(e.to_string()), None)),
                },
                Some(Err(e)) => return Some((Err(e), None)),
                None => {
                    return match decoder.finish() {
                        Ok(out) if out.is_empty() => None,
                        Ok(out) => Some((Ok(out), None)),
                        Err(e) => Some((Err(format!("decoding the layout: {e}")), None)),
                    }
                }
            }
        }
    })
}

/// The values ESI variables read, from the client's request.
fn esi_vars(req: &Request<Incoming>) -> esi::Request {
    let h = req.headers();
    let get = |name: HeaderName| {
        h.get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
    };
    let mut vars = esi::Request::new();
    if let Some(host) = get(header::HOST).first() {
        vars = vars.with_host(*host);
    }
    if let Some(query) = req.uri().query() {
        vars = vars.with_query(query);
    }
    for cookie in get(header::COOKIE) {
        vars = vars.with_cookie(cookie);
    }
    if let Some(referer) = get(header::REFERER).first() {
        vars = vars.with_referer(*referer);
    }
    if let Some(ua) = get(header::USER_AGENT).first() {
        vars = vars.with_user_agent(*ua);
    }
    for lang in get(header::ACCEPT_LANGUAGE) {
        vars = vars.with_accept_language(lang);
    }
    vars
}

// === admin endpoints ===

async fn admin(
    state: &Arc<AppState>,
    req: Request<Incoming>,
    remote: SocketAddr,
) -> Result<Response<Body>, Error> {
    let rt = state.runtime();
    match (req.method().clone(), req.uri().path()) {
        (Method::GET | Method::HEAD, "/_esi/health") => {
            let reload = state.reload_status();
            let error = reload
                .last_error
                .as_deref()
                .map_or("null".to_owned(), json_string);
            let body = format!(
                "{{\"status\":\"ok\",\"uptime_seconds\":{},\"origin\":{},\"config\":{{\"generation\":{},\"last_reload\":\"{}\",\"error\":{}}}}}\n",
                state.started.elapsed().as_secs(),
                json_string(&rt.origin.to_string()),
                reload.generation,
                if reload.last_error.is_some() { "failed" } else { "ok" },
                error,
            );
            Ok(with_type(full(body), "application/json"))
        }
        (Method::GET | Method::HEAD, "/_esi/metrics") => {
            authorize(&rt, &req, remote)?;
            state.fragment_cache.publish_metrics();
            state.layout_cache.publish_metrics();
            Ok(with_type(
                full(state.metrics.render()),
                "text/plain; version=0.0.4; charset=utf-8",
            ))
        }
        (Method::GET, path) if path.starts_with("/_esi/debug/") => {
            debug_page(state, req, remote).await
        }
        (Method::POST, "/_esi/purge") => {
            authorize(&rt, &req, remote)?;
            purge(state, &rt, &req)
        }
        (_, "/_esi/health" | "/_esi/metrics" | "/_esi/purge") => Err(Error::Refused(
            "method not allowed on this endpoint",
            StatusCode::METHOD_NOT_ALLOWED,
        )),
        _ => Err(Error::NotFound),
    }
}

/// `POST /_esi/purge?url=U` drops every cached variant of `U`; `?prefix=P` drops every entry
/// whose URL starts with `P`. A relative `U`/`P` is taken on the origin. Both caches.
fn purge(state: &AppState, rt: &Runtime, req: &Request<Incoming>) -> Result<Response<Body>, Error> {
    let query = req.uri().query().unwrap_or("");
    let mut target = None;
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        match key.as_ref() {
            "url" | "prefix" if target.is_none() => {
                target = Some((key.into_owned(), value.into_owned()))
            }
            _ => {
                return Err(Error::Refused(
                    "purge takes exactly one of url= or prefix=",
                    StatusCode::BAD_REQUEST,
                ))
            }
        }
    }
    let Some((kind, value)) = target else {
        return Err(Error::Refused(
            "purge takes exactly one of url= or prefix=",
            StatusCode::BAD_REQUEST,
        ));
    };
    let absolute = if value.starts_with('/') {
        rt.origin_url
            .join(&value)
            .map(|u| u.to_string())
            .map_err(|_| {
                Error::Refused("purge target is not a valid URL", StatusCode::BAD_REQUEST)
            })?
    } else {
        url::Url::parse(&value)
            .map(|u| {
                if kind == "prefix" {
                    value.clone()
                } else {
                    u.to_string()
                }
            })
            .map_err(|_| {
                Error::Refused("purge target is not a valid URL", StatusCode::BAD_REQUEST)
            })?
    };
    if kind == "url" {
        state.fragment_cache.purge_url(&absolute);
        state.layout_cache.purge_url(&absolute);
    } else {
        state.fragment_cache.purge_prefix(&absolute);
        state.layout_cache.purge_prefix(&absolute);
    }
    state.metrics.inc_counter(
        "esi_proxy_cache_purges_total",
        "Purge requests, by kind.",
        Some(("kind", &kind)),
        1,
    );
    tracing::info!(%kind, target = %absolute, "cache purged");
    let body = format!(
        "{{\"purged\":{},\"{kind}\":{}}}\n",
        "true",
        json_string(&absolute)
    );
    Ok(with_type(full(body), "application/json"))
}

/// `GET /_esi/debug/<path>[?query][&format=json]` composes `<path>` as the client would get
/// it (with the client's cookies), records every fetch, and answers with the page-build
/// waterfall: HTML by default, JSON with `format=json`.
async fn debug_page(
    state: &Arc<AppState>,
    req: Request<Incoming>,
    remote: SocketAddr,
) -> Result<Response<Body>, Error> {
    let rt = state.runtime();
    let loopback_ok = rt.config.server.debug_from_loopback && remote.ip().is_loopback();
    if !loopback_ok {
        authorize_token(&rt, &req)?;
    }
    let path = req.uri().path()["/_esi/debug".len()..].to_owned();
    let mut json = false;
    // The serializer is not Sync: keep it out of the awaits below.
    let query = {
        let mut kept = url::form_urlencoded::Serializer::new(String::new());
        for (key, value) in url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
        {
            if key == "format" {
                json = value == "json";
            } else {
                kept.append_pair(&key, &value);
            }
        }
        kept.finish()
    };
    let target = if query.is_empty() {
        path
    } else {
        format!("{path}?{query}")
    };
    let mut out = Outgoing::new(req, remote);
    out.method = Method::GET;
    out.path_and_query.clone_from(&target);
    out.body = reqwest::Body::from(Bytes::new());
    let trace = Arc::new(Trace::default());
    let started = Instant::now();
    let (route, result) = forward(state, out, started, Some(Arc::clone(&trace))).await;
    let ms = || started.elapsed().as_secs_f64() * 1000.0;
    let (status, body, mut error) = match result {
        Ok(response) => (response.status(), Some(response.into_body()), None),
        Err(e) => (e.status(), None, Some(e.to_string())),
    };
    let (mut first, mut bytes) = (None, 0usize);
    if let Some(mut body) = body {
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => {
                    if let Some(data) = frame.data_ref() {
                        first.get_or_insert_with(ms);
                        bytes += data.len();
                    }
                }
                Err(e) => {
                    error = Some(e.to_string());
                    break;
                }
            }
        }
    }
    let mut report = PageReport::new(target, status.as_u16(), route == "esi", &trace);
    report.finish(first, ms(), bytes, error);
    if json {
        Ok(with_type(full(report.to_json()), "application/json"))
    } else {
        Ok(with_type(
            full(report.to_html()),
            "text/html; charset=utf-8",
        ))
    }
}

/// A JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Admin endpoints that reveal or change state need `Authorization: Bearer <admin_token>`;
/// with no token configured they answer loopback clients only.
fn authorize(rt: &Runtime, req: &Request<Incoming>, remote: SocketAddr) -> Result<(), Error> {
    if rt.config.server.admin_token.is_empty() {
        return if remote.ip().is_loopback() {
            Ok(())
        } else {
            Err(Error::Unauthorized)
        };
    }
    authorize_token(rt, req)
}

/// Requires `Authorization: Bearer <admin_token>`; with no token configured, nobody has it.
fn authorize_token(rt: &Runtime, req: &Request<Incoming>) -> Result<(), Error> {
    let token = &rt.config.server.admin_token;
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !token.is_empty() && constant_time_eq(given.as_bytes(), token.as_bytes()) {
        Ok(())
    } else {
        Err(Error::Unauthorized)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn with_type(body: Body, content_type: &'static str) -> Response<Body> {
    let mut response = Response::new(body);
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

// === metered bodies ===

/// Wraps a response body so bytes sent and the request's duration are recorded when it ends.
fn metered(
    response: Response<Body>,
    route: &'static str,
    started: Instant,
    metrics: Arc<Metrics>,
    access: Option<(Method, String)>,
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
}

impl http_body::Body for Metered {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.bytes += data.len() as u64;
            }
        }
        polled
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_encoding_is_narrowed_to_what_a_layout_can_be_decoded_from() {
        let cases = [
            ("gzip, deflate, br, zstd", Some("gzip, deflate, br")),
            ("zstd", Some("identity")),
            (
                "br;q=1.0, zstd;q=0.9, gzip;q=0.5",
                Some("br;q=1.0, gzip;q=0.5"),
            ),
            ("*", Some("gzip, deflate, br")),
            ("identity", Some("identity")),
        ];
        for (given, want) in cases {
            let mut h = HeaderMap::new();
            h.insert(header::ACCEPT_ENCODING, HeaderValue::from_static(given));
            let got = decodable_encodings(&h);
            assert_eq!(
                got.as_ref().map(|v| v.to_str().unwrap_or("?")),
                want,
                "{given}"
            );
        }
        assert_eq!(decodable_encodings(&HeaderMap::new()), None);
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["x-kept"]);
    }

    #[test]
    fn decoder_stops_a_bomb_at_the_cap() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&vec![0u8; 8 * 1024 * 1024])
            .expect("in memory");
        let bomb = gz.finish().expect("in memory");
        let mut d = Decoder::new("gzip", 64 * 1024);
        let mut total = 0;
        let mut failed = false;
        for chunk in bomb.chunks(1024) {
            match d.write(chunk) {
                Ok(b) => total += b.len(),
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        assert!(failed, "decoded {total} bytes without hitting the cap");
        assert!(total <= 64 * 1024);
    }
}
