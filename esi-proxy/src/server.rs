//! The HTTP server: hyper on a listener, every request proxied to the origin, responses marked
//! for ESI composed and all others streamed through untouched; admin endpoints under `/_esi/`;
//! graceful shutdown. Knows no ESI details: composition is the composer's.

use std::convert::Infallible;
use std::future::Future;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
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

use crate::compose::{ComposeConfig, Composer, Page};
use crate::config::Config;
use crate::error::Error;
use crate::esi;
use crate::fetch::{BaseUrl, HttpClient, Lookup};
use crate::telemetry::{server_timing, Metrics};

/// A response body: bytes streamed, errors abort the connection.
pub type Body = BoxBody<Bytes, BoxError>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What every request handler shares: config, HTTP client, composer, metrics.
pub struct AppState {
    config: Config,
    client: Arc<HttpClient>,
    composer: Arc<Composer>,
    metrics: Arc<Metrics>,
    origin: BaseUrl,
    started: Instant,
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
    ///
    /// # Errors
    /// The origin URL or a host entry cannot be used by the HTTP client.
    pub fn new(
        config: Config,
        lookup: Arc<dyn Lookup>,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, ServerError> {
        let client = Arc::new(
            HttpClient::new(&config, lookup).map_err(|e| ServerError::Config(e.to_string()))?,
        );
        let composer = Composer::new(
            Arc::clone(&client) as Arc<dyn crate::fetch::Fetcher>,
            ComposeConfig::from_config(&config),
            config.fetch.max_concurrent,
            Arc::clone(&metrics),
        );
        let origin = client.origin().clone();
        Ok(Arc::new(Self {
            config,
            client,
            composer,
            metrics,
            origin,
            started: Instant::now(),
        }))
    }

    /// The metrics this server records.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }
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
    let grace = Duration::from_millis(state.config.server.shutdown_grace_ms);
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
        let max_buf = state.config.server.max_header_bytes.max(8192);
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
    async move {
        let (route, result) = if req.uri().path().starts_with("/_esi/") {
            ("admin", admin(&state, &req, remote))
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
        metered(response, route, started, Arc::clone(&state.metrics))
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
    let method = req.method().clone();
    let path_and_query = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let headers = origin_headers(&req, remote);
    let vars = esi_vars(&req);
    let body = req.into_body();
    let body = if body.is_end_stream() {
        reqwest::Body::from(Bytes::new())
    } else {
        reqwest::Body::wrap_stream(body.into_data_stream())
    };
    let client_headers = Arc::new(headers.clone());
    let upstream = match state
        .client
        .send_origin(method.clone(), &path_and_query, headers, body)
        .await
    {
        Ok(r) => r,
        Err(e) => return ("proxy", Err(Error::Origin(e))),
    };
    let layout_ms = started.elapsed().as_secs_f64() * 1000.0;
    if !wants_esi(&state.config, &method, &path_and_query, &upstream) {
        return ("proxy", Ok(pass_through(upstream, &method)));
    }
    let page_url = match state.origin.to_url().join(&path_and_query) {
        Ok(u) => u,
        Err(_) => {
            return (
                "esi",
                Err(Error::Refused(
                    "request target is not a valid URL",
                    StatusCode::BAD_REQUEST,
                )),
            )
        }
    };
    let page = Page {
        url: page_url,
        vars,
        client_headers,
        started,
    };
    ("esi", compose(state, upstream, page, layout_ms).await)
}

/// Whether a response is composed: marked `Surrogate-Control: content="ESI/1.0"` or on a
/// configured path; HTML only; not for HEAD, 1xx, 204 or 304.
fn wants_esi(
    config: &Config,
    method: &Method,
    path_and_query: &str,
    resp: &reqwest::Response,
) -> bool {
    let status = resp.status();
    if method == Method::HEAD
        || status.is_informational()
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
fn client_response_headers(upstream: &reqwest::Response) -> HeaderMap {
    let mut headers = upstream.headers().clone();
    strip_hop_by_hop(&mut headers);
    headers.remove(SURROGATE_CONTROL);
    headers
}

/// Streams a response through untouched and unbuffered.
fn pass_through(upstream: reqwest::Response, method: &Method) -> Response<Body> {
    let mut builder = Response::builder().status(upstream.status());
    if let Some(h) = builder.headers_mut() {
        *h = client_response_headers(&upstream);
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

/// Composes an ESI response. The head is sent once the first part of the page is ready, so a
/// failure before then is still a clean 502/504.
async fn compose(
    state: &Arc<AppState>,
    upstream: reqwest::Response,
    page: Page,
    layout_ms: f64,
) -> Result<Response<Body>, Error> {
    let status = upstream.status();
    let mut headers = client_response_headers(&upstream);
    let encoding = headers
        .remove(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok().map(|s| s.trim().to_ascii_lowercase()))
        .unwrap_or_default();
    for name in [
        header::CONTENT_LENGTH,
        header::ETAG,
        header::ACCEPT_RANGES,
        header::LAST_MODIFIED,
    ] {
        headers.remove(name);
    }
    let cap = state.config.fetch.max_layout_bytes;
    let raw = upstream
        .bytes_stream()
        .map_err(|e| format!("reading the layout: {e}"));
    let layout: Pin<Box<dyn Stream<Item = Result<Bytes, String>> + Send>> = match encoding.as_str()
    {
        "" | "identity" => Box::pin(capped(raw, cap)),
        "gzip" | "x-gzip" | "deflate" | "br" => Box::pin(decoded(raw, &encoding, cap)),
        other => return Err(Error::UnsupportedEncoding(other.to_owned())),
    };
    state.metrics.pages_in_flight(1);
    let in_flight = InFlight(Arc::clone(&state.metrics));
    let mut rx = state.composer.compose(page, layout);
    let first = match rx.recv().await {
        Some(Ok(bytes)) => Some(bytes),
        Some(Err(e)) => return Err(Error::Compose(e)),
        None => None,
    };
    let timing = server_timing(&[("layout", layout_ms, None)]);
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

    fn finish(&mut self) -> std::io::Result<Bytes> {
        match self {
            Decoder::Gzip(d) => d.try_finish(),
            Decoder::Deflate(d) => d.try_finish(),
            Decoder::Brotli(d) => d.flush(),
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

fn admin(
    state: &Arc<AppState>,
    req: &Request<Incoming>,
    remote: SocketAddr,
) -> Result<Response<Body>, Error> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Err(Error::Refused(
            "admin endpoints here answer GET only",
            StatusCode::METHOD_NOT_ALLOWED,
        ));
    }
    match req.uri().path() {
        "/_esi/health" => {
            let body = format!(
                "{{\"status\":\"ok\",\"uptime_seconds\":{},\"origin\":\"{}\"}}\n",
                state.started.elapsed().as_secs(),
                state.origin
            );
            Ok(with_type(full(body), "application/json"))
        }
        "/_esi/metrics" => {
            authorize(state, req, remote)?;
            Ok(with_type(
                full(state.metrics.render()),
                "text/plain; version=0.0.4; charset=utf-8",
            ))
        }
        _ => Err(Error::NotFound),
    }
}

/// Admin endpoints that reveal or change state need `Authorization: Bearer <admin_token>`;
/// with no token configured they answer loopback clients only.
fn authorize(state: &AppState, req: &Request<Incoming>, remote: SocketAddr) -> Result<(), Error> {
    let token = &state.config.server.admin_token;
    if token.is_empty() {
        return if remote.ip().is_loopback() {
            Ok(())
        } else {
            Err(Error::Unauthorized)
        };
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if constant_time_eq(given.as_bytes(), token.as_bytes()) {
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
