//! The request path: a client request refused or taken apart for the origin, the origin's
//! answer streamed through untouched or, when marked for ESI, composed (a cached parsed layout
//! skips the origin) and sent once its first part is ready.
//! Never handles admin routes; the ESI language itself is the composer's.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};

use crate::compose::{
    ComposeError, Composed, Head, LayoutRecord, OnParsed, Page, PageHints, Trace,
};
use crate::config::{EsiSettings, ServerSettings};
use crate::esi;
use crate::telemetry::{server_timing, Metrics};

use super::body::{full, Body, BoxError};
use super::conn::{timed_body, EarlyHints};
use super::error::Error;
use super::hints::{add_to_head, early_hints_response, page_key, Remember};
use super::state::Runtime;
use super::AppState;
use crate::fetch::{
    body_error, decode_stream, CacheStatus, ClientHeaders, ErrorKind, FetchError, OriginBody,
    OriginRequest,
};
use crate::headers::link::HintSet;
use crate::headers::{
    client_response_headers, composed_headers, make_private, origin_headers, site_name, Forwarding,
    SERVER_TIMING, X_FORWARDED_HOST,
};

/// Refuses what a reverse proxy must not do: tunnels, TRACE, upgrades, forward-proxy requests.
fn refuse(req: &Request<Incoming>, server: &ServerSettings) -> Result<(), Error> {
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
        // An absolute-form request is served only for a configured site name that `Host`
        // repeats: without site names the proxy cannot tell this site from another, and a
        // `Host` of the client's choosing to match proves nothing.
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok());
        let this_site = site_name(authority.as_str(), &server.site_names).is_some()
            && host.is_some_and(|h| h.eq_ignore_ascii_case(authority.as_str()));
        if !this_site {
            return Err(Error::Refused(
                "absolute-form requests for other hosts are refused: this is not a forward proxy",
                StatusCode::BAD_REQUEST,
            ));
        }
    }
    Ok(())
}

/// What the origin and fragments are told about the request from `remote`: whether the peer
/// is a trusted proxy, and the host. The host is the one a trusted proxy forwards in
/// `X-Forwarded-Host`, else `Host`; with `server.site_names` set it must name one of them
/// (421 otherwise) and the entry is told; without, only a trusted proxy's is passed on.
fn forwarding(
    req: &Request<Incoming>,
    remote: SocketAddr,
    server: &ServerSettings,
) -> Result<Forwarding, Error> {
    let ip = remote.ip().to_canonical();
    let trusted_peer = server.trusted_proxies.iter().any(|r| r.contains(&ip));
    let forwarded_host = trusted_peer
        .then(|| req.headers().get(X_FORWARDED_HOST))
        .flatten();
    if server.site_names.is_empty() {
        return Ok(Forwarding {
            host: forwarded_host.cloned(),
            trusted_peer,
        });
    }
    let name = if forwarded_host.is_some() {
        X_FORWARDED_HOST
    } else {
        header::HOST
    };
    let mut hosts = req.headers().get_all(name).iter();
    let name = match (hosts.next(), hosts.next()) {
        (Some(host), None) => host
            .to_str()
            .ok()
            .and_then(|host| site_name(host, &server.site_names)),
        _ => None,
    };
    let Some(name) = name else {
        return Err(Error::Refused(
            "this host is not served here",
            StatusCode::MISDIRECTED_REQUEST,
        ));
    };
    // Validation let through only what parses as an authority, which is a valid value.
    let host = HeaderValue::from_str(name).map_err(|_| {
        Error::Refused(
            "this host is not served here",
            StatusCode::MISDIRECTED_REQUEST,
        )
    })?;
    Ok(Forwarding {
        host: Some(host),
        trusted_peer,
    })
}

/// The URL a request target names on the origin: the one parsed target the origin is asked
/// for, the cache keys and the base of relative includes. Only a plain origin-form path is
/// accepted: `//host/x` and `/\host/x` are scheme-relative references to another host when
/// joined (WHATWG URLs read `\` as `/`), and anything else that would leave the origin's
/// scheme, host and port is refused too.
fn page_url(origin: &url::Url, path_and_query: &str) -> Result<url::Url, Error> {
    let refused = |why| Err(Error::Refused(why, StatusCode::BAD_REQUEST));
    let path = path_and_query.split('?').next().unwrap_or_default();
    if !path.starts_with('/') || path.starts_with("//") || path.contains('\\') {
        return refused("the request target must be a path on this site");
    }
    let Ok(url) = origin.join(path_and_query) else {
        return refused("request target is not a valid URL");
    };
    let same_origin = url.scheme() == origin.scheme()
        && url.host() == origin.host()
        && url.port_or_known_default() == origin.port_or_known_default();
    if !same_origin {
        return refused("the request target must be a path on this site");
    }
    Ok(url)
}

/// The path and query of `url`, as the origin is asked for it.
fn origin_target(url: &url::Url) -> String {
    url[url::Position::BeforePath..url::Position::AfterQuery].to_owned()
}

/// A request on its way to the origin, taken apart from the client's.
pub(super) struct Outgoing {
    pub(super) method: Method,
    pub(super) path_and_query: String,
    /// The client's headers as the origin gets them (hop-by-hop gone, X-Forwarded-* ours).
    pub(super) headers: HeaderMap,
    pub(super) vars: esi::Request,
    pub(super) body: OriginBody,
}

impl Outgoing {
    /// The origin's view of `req` from `remote`.
    ///
    /// # Errors
    /// 421 when `server.site_names` is set and the request's `Host` is none of them.
    pub(super) fn new(
        req: Request<Incoming>,
        remote: SocketAddr,
        server: &ServerSettings,
        metrics: &Arc<Metrics>,
    ) -> Result<Self, Error> {
        let forwarding = forwarding(&req, remote, server)?;
        let path_and_query = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let headers = origin_headers(&req, remote, &forwarding);
        // `$(HTTP_<NAME>)` reads the headers the origin is sent: hop-by-hop ones and the
        // admin token are gone, the proxy's X-Forwarded-* are in.
        let vars = esi_vars(&req, remote).with_headers(Arc::new(headers.clone()));
        let method = req.method().clone();
        let body = timed_body(req.into_body(), server.request_body_timeout, metrics);
        Ok(Self {
            method,
            path_and_query,
            headers,
            vars,
            body,
        })
    }
}

/// Proxies one request to the origin and composes the response if it is marked for ESI;
/// `early` is the connection's slot for a `103 Early Hints` response.
pub(super) async fn serve(
    state: &Arc<AppState>,
    req: Request<Incoming>,
    remote: SocketAddr,
    started: Instant,
    early: &EarlyHints,
) -> (&'static str, Result<Response<Body>, Error>) {
    let rt = state.runtime();
    if let Err(e) = refuse(&req, &rt.settings.server) {
        return ("proxy", Err(e));
    }
    // RFC 8297: a 1xx goes to HTTP/1.1 clients only (HTTP/1.0 ones may not read it as such);
    // and only a GET's page is composed with hints.
    let early =
        (req.version() == http::Version::HTTP_11 && req.method() == Method::GET).then_some(early);
    let mut req = req;
    super::admin::consume_admin_token(&rt, req.headers_mut());
    let out = match Outgoing::new(req, remote, &rt.settings.server, &state.metrics) {
        Ok(out) => out,
        Err(e) => return ("proxy", Err(e)),
    };
    forward(state, out, started, None, early).await
}

/// Sends a request to the origin (a GET whose parsed layout is cached touches no upstream
/// for the layout) and composes or passes the response; `trace` records the page's build;
/// `early`, when given, takes the page's remembered hints as a 103 before the layout is asked
/// for.
pub(super) async fn forward(
    state: &Arc<AppState>,
    out: Outgoing,
    started: Instant,
    trace: Option<Arc<Trace>>,
    early: Option<&EarlyHints>,
) -> (&'static str, Result<Response<Body>, Error>) {
    let rt = state.runtime();
    let Outgoing {
        method,
        path_and_query,
        headers,
        vars,
        body,
    } = out;
    let page_url = match page_url(&rt.origin_url, &path_and_query) {
        Ok(url) => url,
        Err(e) => return ("proxy", Err(e)),
    };
    // The origin is asked for what the page URL names, so the two never disagree.
    let path_and_query = origin_target(&page_url);
    let caching = rt.settings.cache.enabled && method == Method::GET;
    let hints = start_hints(state, &rt, &method, &page_url, &headers, early).await;
    if caching {
        let mut hit = state.layout_cache.get(&rt.policy, &page_url, &headers);
        if let (None, Some(tier)) = (&hit, &state.shared) {
            let parse = &rt.composer.config().parse;
            hit = state
                .layout_cache
                .get_shared(tier, &rt.policy, &page_url, &headers, |body| {
                    esi::parse(body, parse).unwrap_or_default()
                })
                .await;
        }
        if let Some(hit) = hit {
            if let Some(t) = &trace {
                t.set_layout(LayoutRecord {
                    url: page_url.to_string(),
                    status: hit.status.as_u16(),
                    headers_ms: started.elapsed().as_secs_f64() * 1000.0,
                    cache: Some(CacheStatus::Hit),
                    ttl_s: Some(hit.ttl.as_secs_f64()),
                    ttl_source: Some(hit.source.to_string()),
                });
            }
            let page_head = page_headers(
                &rt.settings.esi,
                page_url.path(),
                &headers,
                &hit.headers,
                trace.as_deref(),
            );
            let hints = hints.map(|h| h.with_layout(&hit.headers));
            let page = Page {
                url: page_url,
                vars,
                client_headers: Arc::new(headers.into()),
                started,
                trace,
                hints: hints.as_ref().map(|h| Arc::clone(&h.page)),
            };
            let trace = page.trace.clone();
            let composed = rt
                .composer
                .compose_parsed_page(page, Arc::clone(&hit.template));
            let timing = server_timing(&[("layout", 0.0, Some("cache hit"))]);
            let headers = page_head;
            let sent = respond(state, composed, hit.status, headers, timing, trace, hints).await;
            return ("esi", sent);
        }
    }
    let mut client_headers: Arc<ClientHeaders> = Arc::new(headers.clone().into());
    let ranged = headers.contains_key(header::RANGE);
    let request = OriginRequest {
        method: method.clone(),
        path_and_query: path_and_query.clone(),
        headers,
        body,
    };
    let mut upstream = match rt.fetcher.send_origin(request).await {
        Ok(r) => r,
        Err(e) => return ("proxy", Err(origin_failed(state, e))),
    };
    if ranged && refetch_whole(&rt.settings.esi, &method, &path_and_query, &upstream) {
        // A part of a layout cannot be composed, and no part of the composed page can be cut
        // from the origin's ranges: the layout is fetched again whole and the page sent whole.
        drop(upstream);
        let mut whole = HeaderMap::clone(&client_headers);
        for name in [header::RANGE, header::IF_RANGE] {
            whole.remove(name);
        }
        client_headers = Arc::new(whole.clone().into());
        let request = OriginRequest {
            method: method.clone(),
            path_and_query: path_and_query.clone(),
            headers: whole,
            body: OriginBody::default(),
        };
        upstream = match rt.fetcher.send_origin(request).await {
            Ok(r) => r,
            Err(e) => return ("proxy", Err(origin_failed(state, e))),
        };
    }
    let layout_ms = started.elapsed().as_secs_f64() * 1000.0;
    if let Some(t) = &trace {
        t.set_layout(LayoutRecord {
            url: page_url.to_string(),
            status: upstream.status().as_u16(),
            headers_ms: layout_ms,
            cache: caching.then_some(CacheStatus::Miss),
            ttl_s: None,
            ttl_source: None,
        });
    }
    if !wants_esi(&rt.settings.esi, &path_and_query, &upstream) {
        return ("proxy", Ok(pass_through(upstream, &method)));
    }
    if method == Method::HEAD {
        // The head of what a GET would get: the composed page's headers, no body.
        let mut response = Response::new(full(Bytes::new()));
        *response.status_mut() = upstream.status();
        *response.headers_mut() = page_headers(
            &rt.settings.esi,
            page_url.path(),
            &client_headers,
            upstream.headers(),
            trace.as_deref(),
        );
        return ("esi", Ok(response));
    }
    let hints = hints.map(|h| h.with_layout(upstream.headers()));
    let page = Page {
        url: page_url,
        vars,
        client_headers,
        started,
        trace,
        hints: hints.as_ref().map(|h| Arc::clone(&h.page)),
    };
    (
        "esi",
        compose(state, &rt, upstream, page, layout_ms, caching, hints).await,
    )
}

/// Whether a response is composed: marked `Surrogate-Control: content="ESI/1.0"` or on a
/// configured path; HTML only; not for 1xx, 204 or 304.
fn wants_esi(esi: &EsiSettings, path_and_query: &str, resp: &Response<OriginBody>) -> bool {
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
    let marked = crate::headers::is_esi(resp.headers());
    let path = path_and_query.split('?').next().unwrap_or("/");
    marked
        || esi
            .process_paths
            .iter()
            .any(|glob| crate::config::glob_match(glob, path))
}

/// Whether the origin's answer to a range request must be fetched again without the range: a
/// part (206) or a refusal of the range (416) of a page that is composed. Only GET and HEAD,
/// the methods a range applies to (RFC 9110 section 14.2), whose request has no body to resend.
fn refetch_whole(
    esi: &EsiSettings,
    method: &Method,
    path_and_query: &str,
    resp: &Response<OriginBody>,
) -> bool {
    (method == Method::GET || method == Method::HEAD)
        && matches!(
            resp.status(),
            StatusCode::PARTIAL_CONTENT | StatusCode::RANGE_NOT_SATISFIABLE
        )
        && wants_esi(esi, path_and_query, resp)
}

/// The head of a composed page: the layout's headers as [`composed_headers`] leaves them, made
/// private ([`make_private`]) unless [`private_reason`] finds none; the reason goes on the trace.
fn page_headers(
    esi: &EsiSettings,
    path: &str,
    client: &HeaderMap,
    layout: &HeaderMap,
    trace: Option<&Trace>,
) -> HeaderMap {
    let mut headers = composed_headers(layout);
    let reason = private_reason(esi, path, client);
    if reason.is_some() {
        make_private(&mut headers);
    }
    if let Some(trace) = trace {
        trace.set_private(reason.map(str::to_owned));
    }
    headers
}

/// Why a composed page may not be stored by shared caches; `None` when it keeps the layout's
/// `Cache-Control`. The head leaves before the page is composed, so this is decided from what
/// is known up front: a request with `Cookie` or `Authorization` may have its credentials sent
/// to trusted fragment hosts or read by variables, so its page is private; an anonymous
/// request's page is shareable only on an `esi.shareable_paths` path; anything else is private
/// by default.
fn private_reason(esi: &EsiSettings, path: &str, client: &HeaderMap) -> Option<&'static str> {
    if client.contains_key(header::COOKIE) {
        return Some("request carries Cookie");
    }
    if client.contains_key(header::AUTHORIZATION) {
        return Some("request carries Authorization");
    }
    let shareable = esi
        .shareable_paths
        .iter()
        .any(|glob| crate::config::glob_match(glob, path));
    (!shareable).then_some("default")
}

/// Streams a response through untouched and unbuffered.
fn pass_through(upstream: Response<OriginBody>, method: &Method) -> Response<Body> {
    let (mut parts, body) = upstream.into_parts();
    parts.headers = client_response_headers(parts.status, &parts.headers);
    let body = if method == Method::HEAD {
        full(Bytes::new())
    } else {
        body
    };
    Response::from_parts(parts, body)
}

/// Composes an ESI response from a streamed layout, caching the parsed layout when its
/// headers allow.
async fn compose(
    state: &Arc<AppState>,
    rt: &Runtime,
    upstream: Response<OriginBody>,
    page: Page,
    layout_ms: f64,
    caching: bool,
    hints: Option<Hints>,
) -> Result<Response<Body>, Error> {
    let status = upstream.status();
    let original = upstream.headers().clone();
    let encoding = original
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok().map(|s| s.trim().to_ascii_lowercase()))
        .unwrap_or_default();
    let cap = rt.settings.fetch.max_layout_bytes;
    let url = page.url.to_string();
    let raw = upstream.into_body().into_data_stream().map_err({
        let url = url.clone();
        move |e| body_error(&url, &*e)
    });
    let Some(layout) = decode_stream(raw, &encoding, cap, &url) else {
        state
            .metrics
            .record_layout_failure(ErrorKind::Decode.as_str());
        return Err(Error::UnsupportedEncoding(encoding));
    };
    // Counted where it fails, whether or not the page's head has left by then.
    let metrics = Arc::clone(&state.metrics);
    let layout = layout.map_err(move |e| {
        metrics.record_layout_failure(e.kind().as_str());
        format!("reading the layout: {e}")
    });
    // The decoded layout, copied as it streams, for the shared tier: only when it may be stored.
    let shared = state.shared.clone().filter(|_| {
        caching
            && state.layout_cache.storable(
                &rt.policy,
                &page.url,
                &page.client_headers,
                status,
                &original,
            )
    });
    let copy = shared
        .as_ref()
        .map(|_| Arc::new(Mutex::new(BytesMut::new())));
    let tee = copy.clone();
    let layout = layout.inspect(move |chunk| {
        if let (Some(copy), Ok(bytes)) = (&tee, chunk) {
            copy.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend_from_slice(bytes);
        }
    });
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
            if let (Some(tier), Some(copy)) = (shared, copy) {
                let body =
                    std::mem::take(&mut *copy.lock().unwrap_or_else(PoisonError::into_inner));
                cache.share(
                    &tier,
                    &policy,
                    &url,
                    &request_headers,
                    status,
                    &response_headers,
                    body.freeze(),
                );
            }
        }) as OnParsed
    });
    let head = page_headers(
        &rt.settings.esi,
        page.url.path(),
        &page.client_headers,
        &original,
        page.trace.as_deref(),
    );
    let trace = page.trace.clone();
    let composed = rt.composer.compose_page(page, layout, on_parsed);
    let timing = server_timing(&[("layout", layout_ms, None)]);
    respond(state, composed, status, head, timing, trace, hints).await
}

/// Sends a composed page. The head goes out once the first part of the page is ready and the
/// composer has decided the head ([`Head`]: a primary fragment's answer, the layout's response
/// functions), so a failure before then is still a clean 502/504; after it, a failure aborts
/// the connection. The head carries the page's hints known by then; a page that ends whole
/// leaves its hints to be remembered.
async fn respond(
    state: &Arc<AppState>,
    composed: Composed,
    status: StatusCode,
    mut headers: HeaderMap,
    timing: HeaderValue,
    trace: Option<Arc<Trace>>,
    hints: Option<Hints>,
) -> Result<Response<Body>, Error> {
    let Composed {
        head: decided,
        body: mut rx,
    } = composed;
    state.metrics.pages_in_flight(1);
    let in_flight = InFlight(Arc::clone(&state.metrics));
    let first = match rx.recv().await {
        Some(Ok(bytes)) => Some(bytes),
        Some(Err(e)) => {
            count_layout_timeout(&state.metrics, &e);
            return Err(Error::Compose(e));
        }
        None => None,
    };
    // Sent before the body's first item, so it is here (or the page failed first).
    let decided = decided.await.unwrap_or_default();
    let status = apply_head(decided, status, &mut headers, trace.as_deref());
    let metrics = Arc::clone(&state.metrics);
    headers.append(SERVER_TIMING, timing);
    let mut remember = None;
    if let Some(hints) = hints {
        add_to_head(&mut headers, &hints.page.seal(), &metrics);
        remember = hints.remember;
    }
    let rest = futures::stream::poll_fn(move |cx| {
        let polled = rx.poll_recv(cx);
        match &polled {
            std::task::Poll::Ready(Some(Err(_))) => remember = None,
            std::task::Poll::Ready(None) => {
                if let Some(remember) = remember.take() {
                    remember.page_ended();
                }
            }
            _ => {}
        }
        polled
    });
    let stream = futures::stream::iter(first.map(Ok))
        .chain(rest)
        .map(move |item| {
            let _keep = &in_flight;
            item.map(Frame::data).map_err(|e| -> BoxError {
                tracing::warn!(error = %e, "page aborted after its head was sent");
                count_layout_timeout(&metrics, &e);
                Box::new(e)
            })
        });
    let mut response = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    Ok(response)
}

/// Applies the composer's head decision to the layout's status and headers: the decided
/// status, `set` headers replacing the layout's, `add` headers appended. A page that sets a
/// visitor's cookie is made private, whatever the layout allowed.
fn apply_head(
    head: Head,
    status: StatusCode,
    headers: &mut HeaderMap,
    trace: Option<&Trace>,
) -> StatusCode {
    let mut last = None;
    for (name, value) in head.set {
        // `HeaderMap`'s iterator names a header once, then `None` for its further values.
        let name = match name {
            Some(n) => {
                headers.remove(&n);
                last = Some(n.clone());
                n
            }
            None => match &last {
                Some(n) => n.clone(),
                None => continue,
            },
        };
        headers.append(name, value);
    }
    for (name, value) in &head.add {
        headers.append(name.clone(), value.clone());
    }
    if let Some(reason) = head.private {
        make_private(headers);
        if let Some(trace) = trace {
            trace.set_private(Some(reason));
        }
    }
    head.status.unwrap_or(status)
}

/// The preload hints of one page request: what composition collects, and where they are
/// remembered when the page ends whole.
struct Hints {
    page: Arc<PageHints>,
    remember: Option<Remember>,
    /// Remembered from the page's last composition; they join the head after the layout's.
    remembered: Option<Arc<[String]>>,
}

/// Starts a GET page's hints when `[hints]` is on: looks up what its last composition left
/// and, when `early` is given and 103s are on, queues them as a `103 Early Hints` response
/// (under the current bounds) before the layout is asked for.
async fn start_hints(
    state: &Arc<AppState>,
    rt: &Runtime,
    method: &Method,
    page_url: &url::Url,
    origin_headers: &HeaderMap,
    early: Option<&EarlyHints>,
) -> Option<Hints> {
    let cfg = &rt.settings.hints;
    if !cfg.enabled || method != Method::GET {
        return None;
    }
    let key = page_key(page_url, origin_headers);
    let remembered = state.hint_memory.get(&key).await;
    if let (Some(early), Some(hints), true) = (early, &remembered, cfg.early_hints) {
        let mut capped = HintSet::new(cfg.max_links, cfg.max_bytes);
        for hint in hints.iter() {
            let _ = capped.add(hint);
        }
        if !capped.is_empty() {
            early.queue(early_hints_response(capped.values()));
        }
    }
    // Nothing a request with credentials fetched is remembered for other visitors.
    let rememberable = ![header::COOKIE, header::AUTHORIZATION]
        .iter()
        .any(|name| origin_headers.contains_key(name));
    let page = PageHints::new(
        cfg.max_links,
        cfg.max_bytes,
        rememberable,
        Arc::clone(&state.metrics),
    );
    let remember = state.hint_memory.remember(key, &page);
    Some(Hints {
        page,
        remember,
        remembered,
    })
}

// === impl Hints ===

impl Hints {
    /// Seeds the page's head with the layout's hints, then the remembered ones.
    fn with_layout(self, layout: &HeaderMap) -> Self {
        self.page.add_layout(layout);
        if let Some(remembered) = &self.remembered {
            self.page.add_remembered(remembered);
        }
        self
    }
}

/// The origin could not be asked for the page, or did not answer with a head: counted as a
/// layout failure of the fetch's kind.
fn origin_failed(state: &AppState, e: FetchError) -> Error {
    state.metrics.record_layout_failure(e.kind().as_str());
    Error::Origin(e)
}

/// Counts a layout that missed the page deadline; the layout's other failures are counted
/// where its body is read.
fn count_layout_timeout(metrics: &Metrics, e: &ComposeError) {
    if matches!(e, ComposeError::LayoutTimeout(_)) {
        metrics.record_layout_failure(ErrorKind::Timeout.as_str());
    }
}

/// Keeps the pages-in-flight gauge honest however a page ends.
struct InFlight(Arc<Metrics>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.pages_in_flight(-1);
    }
}

/// The values ESI variables read, from the client's request and its peer's address.
fn esi_vars(req: &Request<Incoming>, remote: SocketAddr) -> esi::Request {
    let h = req.headers();
    let get = |name: HeaderName| {
        h.get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
    };
    let mut vars = esi::Request::new()
        .with_method(req.method().as_str())
        .with_path(req.uri().path())
        .with_remote_addr(remote.ip().to_canonical().to_string());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_paths_on_the_origin_are_page_urls() {
        let origin = url::Url::parse("http://gw:8081/").expect("origin");
        let cases = [
            ("/", Some("/")),
            ("/a/b?q=1", Some("/a/b?q=1")),
            ("/a/../b", Some("/b")),
            ("/a?next=//x\\y", Some("/a?next=//x\\y")),
            ("//other/page", None),
            ("/\\other/page", None),
            ("/a\\b", None),
            ("*", None),
            ("", None),
        ];
        for (target, want) in cases {
            let got = page_url(&origin, target)
                .ok()
                .map(|url| origin_target(&url));
            assert_eq!(got.as_deref(), want, "{target:?}");
        }
    }
}
