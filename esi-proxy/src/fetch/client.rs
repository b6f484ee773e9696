//! The HTTP client behind the [`Fetcher`] seam: fragment requests (header policy, deadlines,
//! bodies collected and decoded under their cap) and the origin request the server passes
//! through: over [`h1`] on pooled streams for `http` (hyper's pooled connections for an origin
//! request with a body), as [`h2`] streams for `http` hosts configured for HTTP/2, reqwest for
//! `https`.

use std::collections::{HashMap, HashSet};
use std::error::Error as StdError;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use http::header::{
    Entry, HeaderName, HeaderValue, ACCEPT, ACCEPT_ENCODING, AUTHORIZATION, CONTENT_ENCODING,
    COOKIE, HOST,
};
use http::{HeaderMap, Method, Response, Uri};
use http_body::Body as _;
use http_body_util::BodyExt;
use url::{Host, Position, Url};

use super::breaker::Breakers;
use super::collect::BodySink;
use super::guard::{classify, Allowlist, Blocked, GuardedResolver, Lookup};
use super::h1::{self, StreamPool};
use super::h2;
use super::pool::{plain_pool, CheckinOnEnd, OriginPool, SendError};
use super::{
    Access, Allowed, BoxError, FetchError, Fetcher, Fragment, FragmentRequest, OriginBody,
    OriginRequest,
};
use crate::config::{BaseUrl, Scheme, Settings};
use crate::headers::{never_to_fragments, CAPABILITY, SURROGATE_CAPABILITY, X_FORWARDED};

/// The HTTP client: keep-alive pools for fragments (decoding bodies; `http` and `https` pooled
/// apart), one for the origin (passing bodies through as sent). Cloning is cheap and shares the
/// pools.
#[derive(Debug, Clone)]
pub struct HttpClient {
    shared: Arc<Shared>,
}

/// What an [`HttpClient`] and the futures it returns share.
#[derive(Debug)]
struct Shared {
    /// Tells this client's header blocks from another's in a page's [`ClientHeaders`].
    id: u64,
    origin: BaseUrl,
    /// The origin (trusted) and every `fetch.hosts` entry.
    allow: Allowlist,
    /// Client headers forwarded to every allowed host; `Cookie`/`Authorization` are added for
    /// trusted ones.
    forward: HashSet<HeaderName>,
    max_fragment_bytes: usize,
    layout_timeout: Duration,
    /// `http` fragments: TCP streams that [`h1`] speaks on from the fetching task, with none
    /// of reqwest's per-request layers (redirects, retries, decompression, its timeouts) nor
    /// hyper's task and channel per connection, which cost more than a loopback request.
    plain: StreamPool,
    /// `http` fragment hosts spoken to over HTTP/2 (connected through `plain`'s connector).
    h2: h2::H2Pool,
    /// `https` fragments, through reqwest for its TLS.
    tls: reqwest::Client,
    /// An `http` origin, for requests with a body: hyper's connections, which stream it.
    origin_plain: OriginPool,
    /// An `http` origin, for `GET` and `HEAD` without a body: spoken by [`h1`], the response
    /// body read as the server polls it.
    origin_streams: StreamPool,
    /// An `https` origin, through reqwest.
    origin_client: reqwest::Client,
    /// The circuit breakers of fragment hosts, kept across reloads by whoever owns them.
    breakers: Arc<Breakers>,
}

/// A body being collected: one chunk is kept as is, more are copied into one buffer.
#[derive(Default)]
pub(super) enum Collected {
    #[default]
    Empty,
    One(Bytes),
    Many(BytesMut),
}

/// A response's `Content-Encoding`, as the fragment decoder sees it.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Coding {
    /// None, or `identity`: the body is as it is.
    Identity,
    /// A coding (trimmed, lowercase; a list kept whole), decodable or not.
    Named(String),
}

/// The `Content-Encoding` of `headers`: several values or a list are kept as one name, which
/// no decoder knows, so a body encoded twice fails rather than reaching a page half decoded.
pub(super) fn content_coding(headers: &HeaderMap) -> Coding {
    let values: Vec<String> = headers
        .get_all(CONTENT_ENCODING)
        .iter()
        .map(|v| {
            String::from_utf8_lossy(v.as_bytes())
                .trim()
                .to_ascii_lowercase()
        })
        .filter(|v| !v.is_empty() && v != "identity")
        .collect();
    if values.is_empty() {
        Coding::Identity
    } else {
        Coding::Named(values.join(", "))
    }
}

/// `url` for errors and logs: user info (a password, perhaps) removed.
pub(super) fn redact(url: &Url) -> String {
    if url.username().is_empty() && url.password().is_none() {
        return url.as_str().to_owned();
    }
    let mut clean = url.clone();
    // Fails only for URLs that cannot have user info, which then have none to remove.
    let _ = clean.set_username("");
    let _ = clean.set_password(None);
    clean.to_string()
}

/// The messages of `e` and its sources, joined; a reqwest error's own top message is left out,
/// since it only repeats the URL.
pub(super) fn describe(e: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let skip = usize::from(e.is::<reqwest::Error>() && e.source().is_some());
    for err in chain(e).skip(skip) {
        let text = err.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ")
}

/// `e` and its sources.
pub(super) fn chain<'a>(
    e: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(e), |err| (*err).source())
}

/// Maps an error from sending a request (before the response head); `connect` and `timeout` are
/// what the client says of it.
pub(super) fn send_error(
    url: &str,
    e: &(dyn StdError + 'static),
    connect: bool,
    timeout: bool,
    after: Duration,
) -> FetchError {
    let url = url.to_owned();
    if let Some(blocked) = chain(e).find_map(|err| err.downcast_ref::<Blocked>()) {
        tracing::debug!(host = %blocked.host, "fetch refused at resolution");
        return FetchError::Refused {
            url,
            reason: "resolves only to private/loopback addresses".into(),
        };
    }
    let message = describe(e);
    if malformed(e) {
        return FetchError::Malformed { url, message };
    }
    // A connect timeout is a connect failure: the overall deadline is ours, not the client's.
    if connect {
        FetchError::Connect { url, message }
    } else if timeout {
        FetchError::Timeout { url, after }
    } else {
        FetchError::Transport { url, message }
    }
}

/// Maps an error from reading the response body: a cut connection, a body the client could
/// not decode (reqwest decodes `https` bodies itself), or framing that breaks HTTP/1.1.
/// reqwest reports every body error alike, so the source chain tells them apart; hyper's body
/// errors carry the same I/O errors.
pub(crate) fn body_error(url: &str, e: &(dyn StdError + 'static)) -> FetchError {
    use std::io::ErrorKind;
    let url = url.to_owned();
    let message = describe(e);
    let io_kind = |kinds: &[ErrorKind]| {
        chain(e).any(|err| {
            err.downcast_ref::<std::io::Error>()
                .is_some_and(|io| kinds.contains(&io.kind()))
        })
    };
    let reqwest = |test: fn(&reqwest::Error) -> bool| {
        chain(e).any(|err| err.downcast_ref::<reqwest::Error>().is_some_and(test))
    };
    if io_kind(&[
        ErrorKind::UnexpectedEof,
        ErrorKind::ConnectionReset,
        ErrorKind::ConnectionAborted,
        ErrorKind::BrokenPipe,
    ]) {
        FetchError::Truncated { url, message }
    } else if reqwest(reqwest::Error::is_decode) {
        FetchError::Decode { url, message }
    } else if malformed(e) || io_kind(&[ErrorKind::InvalidData, ErrorKind::InvalidInput]) {
        FetchError::Malformed { url, message }
    } else if reqwest(reqwest::Error::is_body) {
        FetchError::Truncated { url, message }
    } else {
        FetchError::Transport { url, message }
    }
}

/// Whether `e` is hyper failing to parse a response: an invalid status line or header, or a
/// head over the size bound.
fn malformed(e: &(dyn StdError + 'static)) -> bool {
    chain(e).any(|err| {
        err.downcast_ref::<hyper::Error>()
            .is_some_and(|h| h.is_parse() || h.is_parse_too_large())
    })
}

// === impl Collected ===

impl Collected {
    /// Appends a chunk; `capacity` is the expected total (Content-Length, bounded by the limit).
    fn push(&mut self, chunk: Bytes, capacity: usize) {
        *self = match std::mem::take(self) {
            Collected::Empty => Collected::One(chunk),
            Collected::One(first) => {
                let mut buf = BytesMut::with_capacity(capacity.max(first.len() + chunk.len()));
                buf.extend_from_slice(&first);
                buf.extend_from_slice(&chunk);
                Collected::Many(buf)
            }
            Collected::Many(mut buf) => {
                buf.extend_from_slice(&chunk);
                Collected::Many(buf)
            }
        };
    }

    fn into_bytes(self) -> Bytes {
        match self {
            Collected::Empty => Bytes::new(),
            Collected::One(bytes) => bytes,
            Collected::Many(buf) => buf.freeze(),
        }
    }
}

// === impl HttpClient ===

impl HttpClient {
    /// Builds both clients from `server.origin` and `[fetch]`. Resolution goes through
    /// `lookup`, guarded so no connection is made to an address the host may not reach.
    ///
    /// # Errors
    /// [`FetchError::Transport`] naming the file when a `fetch.ca_certs` entry cannot be read or
    /// holds no PEM certificate, or naming the origin when a client cannot be built.
    pub fn new(settings: &Settings, lookup: Arc<dyn Lookup>) -> Result<HttpClient, FetchError> {
        let breakers = Breakers::new(settings, Arc::default());
        Self::with_breakers(settings, lookup, Arc::new(breakers))
    }

    /// [`HttpClient::new`] with fragment hosts' circuit breakers that outlive this client (the
    /// server keeps them across reloads).
    ///
    /// # Errors
    /// As [`HttpClient::new`].
    pub fn with_breakers(
        settings: &Settings,
        lookup: Arc<dyn Lookup>,
        breakers: Arc<Breakers>,
    ) -> Result<HttpClient, FetchError> {
        let fetch = &settings.fetch;
        let invalid = |value: &str, message: String| FetchError::Transport {
            url: value.to_owned(),
            message,
        };
        let origin = settings.server.origin.clone();

        let mut allow = HashMap::new();
        let mut private_ok = HashSet::new();
        for entry in &fetch.hosts {
            if entry.private_network {
                private_ok.insert(entry.url.host.clone());
            }
            // Validation lists no host twice and none is the origin.
            allow.insert(
                entry.url.clone(),
                Access {
                    trusted: entry.trusted,
                    esi: entry.trusted || entry.esi,
                    http2: entry.http2,
                },
            );
        }
        private_ok.insert(origin.host.clone());
        let own = Access {
            trusted: true,
            esi: true,
            http2: fetch.origin_http2,
        };
        allow.insert(origin.clone(), own);
        let allow = Allowlist::new(allow);

        // Validation refuses the names never forwarded; checked again because a `Settings`
        // can be built by hand, and a credential must never leak to an untrusted host.
        let forward = fetch
            .forward_headers
            .iter()
            .filter(|name| !never_to_fragments(name.as_str()))
            .cloned()
            .chain(X_FORWARDED)
            .collect();

        let resolver = Arc::new(GuardedResolver { lookup, private_ok });
        let connect_timeout = fetch.connect_timeout;
        let plain = plain_pool(&resolver, fetch);
        let origin_plain = plain_pool(&resolver, fetch);
        let origin_streams = plain_pool(&resolver, fetch);
        let mut roots = Vec::new();
        for file in &fetch.ca_certs {
            let invalid = |message: String| invalid(&file.display().to_string(), message);
            let pem = std::fs::read(file).map_err(|e| invalid(format!("reading: {e}")))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| invalid(format!("not PEM certificates: {e}")))?;
            if certs.is_empty() {
                return Err(invalid("holds no PEM certificate".into()));
            }
            roots.extend(certs);
        }
        let builder = || {
            roots.iter().cloned().fold(
                reqwest::Client::builder()
                    .dns_resolver(Arc::clone(&resolver))
                    .no_proxy()
                    .redirect(reqwest::redirect::Policy::none())
                    .connect_timeout(connect_timeout)
                    .pool_max_idle_per_host(fetch.pool_idle_per_host)
                    .pool_idle_timeout(fetch.pool_idle_timeout)
                    .tcp_nodelay(true),
                reqwest::ClientBuilder::add_root_certificate,
            )
        };
        let build_error = |e: reqwest::Error| {
            invalid(
                &settings.server.origin.to_string(),
                format!("building the HTTP client: {e}"),
            )
        };
        let tls = builder().build().map_err(build_error)?;
        // Pass-through: bodies reach the browser exactly as the origin encoded them.
        let origin_client = builder()
            .no_gzip()
            .no_brotli()
            .build()
            .map_err(build_error)?;

        static CLIENTS: AtomicU64 = AtomicU64::new(0);
        Ok(HttpClient {
            shared: Arc::new(Shared {
                id: CLIENTS.fetch_add(1, Ordering::Relaxed),
                origin,
                allow,
                forward,
                max_fragment_bytes: fetch.max_fragment_bytes,
                layout_timeout: fetch.layout_timeout,
                plain,
                h2: h2::H2Pool::new(fetch),
                tls,
                origin_plain,
                origin_streams,
                origin_client,
                breakers,
            }),
        })
    }

    /// The origin every non-fragment request goes to.
    pub fn origin(&self) -> &BaseUrl {
        &self.shared.origin
    }

    /// [`Fetcher::send_origin`] over this client's pools.
    async fn origin_request(&self, req: OriginRequest) -> Result<Response<OriginBody>, FetchError> {
        let OriginRequest {
            method,
            path_and_query,
            mut headers,
            body,
        } = req;
        let origin = &self.shared.origin;
        let text = format!("{origin}{path_and_query}");
        let refuse = |reason: &str| FetchError::Refused {
            url: text.clone(),
            reason: reason.to_owned(),
        };
        if !path_and_query.starts_with('/') {
            return Err(refuse("path must start with \"/\""));
        }
        let url = Url::parse(&text).map_err(|e| refuse(&format!("not a valid URL: {e}")))?;
        // Prefixing the authority means the path cannot name another host; this holds it.
        if !origin.matches(&url) {
            return Err(refuse("not on the origin"));
        }
        headers.insert(SURROGATE_CAPABILITY, HeaderValue::from_static(CAPABILITY));
        let after = self.shared.layout_timeout;
        if origin.scheme == Scheme::Http {
            let sending = self
                .shared
                .send_origin_plain(&url, &text, method, headers, body, after);
            return match tokio::time::timeout(after, sending).await {
                Ok(result) => result,
                Err(_) => Err(FetchError::Timeout { url: text, after }),
            };
        }
        let request = self
            .shared
            .origin_client
            .request(method, url)
            .headers(headers)
            .body(reqwest::Body::wrap(body));
        match tokio::time::timeout(after, request.send()).await {
            Ok(Ok(response)) => {
                Ok(Response::from(response)
                    .map(|body| BodyExt::boxed(body.map_err(BoxError::from))))
            }
            Ok(Err(e)) => Err(send_error(&text, &e, e.is_connect(), e.is_timeout(), after)),
            Err(_) => Err(FetchError::Timeout { url: text, after }),
        }
    }
}

impl Fetcher for HttpClient {
    fn send_origin(
        &self,
        req: OriginRequest,
    ) -> BoxFuture<'static, Result<Response<OriginBody>, FetchError>> {
        let client = self.clone();
        Box::pin(async move { client.origin_request(req).await })
    }

    fn fetch(&self, req: FragmentRequest) -> BoxFuture<'static, Result<Fragment, FetchError>> {
        // Up to the request, nothing waits: done here, so the future holds only what the
        // exchange needs while it waits (a parked include's memory is mostly its future).
        let shared = Arc::clone(&self.shared);
        // An open breaker fails the fetch here, before anything is sent.
        let ticket = match shared.breakers.admit(&req.url, req.timeout) {
            Ok(ticket) => ticket,
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        // Allowed by this client's check: the allowlist is not asked again.
        let access = req.url.access();
        let text = redact(&req.url);
        let after = req.timeout;
        let keep = req.keep_status;
        let tls = req.url.scheme() == "https";
        let outgoing = if access.http2 && !tls && req.options.headers.is_empty() {
            let headers = req.client_headers.map(shared.id, access.trusted, || {
                let headers = shared.fragment_headers(&req.client_headers, access.trusted);
                Arc::new(with_defaults(headers))
            });
            Outgoing::H2 {
                host: None,
                headers,
            }
        } else if access.http2 && !tls {
            let mut headers = shared.fragment_headers(&req.client_headers, access.trusted);
            req.options.apply_headers(&mut headers, access.trusted);
            Outgoing::H2 {
                host: headers.remove(HOST),
                headers: Arc::new(with_defaults(headers)),
            }
        } else if !tls && req.options.headers.is_empty() {
            // The same for every fragment of the page at this trust level: made once.
            let fields = req.client_headers.block(shared.id, access.trusted, || {
                let headers = shared.fragment_headers(&req.client_headers, access.trusted);
                Bytes::from(plain_fields(headers))
            });
            Outgoing::Plain { host: None, fields }
        } else {
            let mut headers = shared.fragment_headers(&req.client_headers, access.trusted);
            req.options.apply_headers(&mut headers, access.trusted);
            if tls {
                Outgoing::Tls(headers)
            } else {
                Outgoing::Plain {
                    host: headers.remove(HOST),
                    fields: Bytes::from(plain_fields(headers)),
                }
            }
        };
        let body = req.options.body;
        let url = Arc::clone(req.url.shared_url());
        // One box per kind of exchange, sized for that kind alone: a fetch waiting for its
        // answer holds only its own client's state.
        match outgoing {
            Outgoing::Plain { host, fields } => Box::pin(async move {
                let exchange = shared.receive_plain(&url, &text, host, &fields, body, keep);
                let result = tokio::time::timeout(after, exchange).await;
                ticket.settle(
                    result.unwrap_or_else(|_| Err(FetchError::Timeout { url: text, after })),
                )
            }),
            Outgoing::H2 { host, headers } => Box::pin(async move {
                let exchange = shared.receive_h2(&url, &text, host, headers, body, keep);
                let result = tokio::time::timeout(after, exchange).await;
                ticket.settle(
                    result.unwrap_or_else(|_| Err(FetchError::Timeout { url: text, after })),
                )
            }),
            Outgoing::Tls(headers) => Box::pin(async move {
                let url = Url::clone(&url);
                let exchange = shared.receive_tls(url, &text, headers, body, after, keep);
                let result = tokio::time::timeout(after, exchange).await;
                ticket.settle(
                    result.unwrap_or_else(|_| Err(FetchError::Timeout { url: text, after })),
                )
            }),
        }
    }

    /// The URL must be http(s) without user info, and its `scheme://host:port` the origin
    /// (trusted) or a `fetch.hosts` entry (trusted as configured). An IP host that is not
    /// public (loopback, private, link-local, metadata, ...) is allowed only when listed exactly.
    fn check(&self, url: &Arc<Url>) -> Result<Allowed, FetchError> {
        let access = self.shared.check(url)?;
        Ok(Allowed::new(Arc::clone(url), access))
    }
}

/// The request target of `url` (path and query). A parsed URL percent-encodes spaces and
/// controls; checked again, as they would split the request line.
fn request_target<'u>(url: &'u Url, text: &str) -> Result<&'u str, FetchError> {
    let target = &url[Position::BeforePath..Position::AfterQuery];
    if target.bytes().any(|b| b <= b' ' || b == 0x7f) || !target.starts_with('/') {
        return Err(FetchError::Transport {
            url: text.to_owned(),
            message: format!("not a valid request target: {target:?}"),
        });
    }
    Ok(target)
}

/// A fragment request's headers, but `Host`, as its scheme's client takes them.
enum Outgoing {
    /// `https`, through reqwest.
    Tls(HeaderMap),
    /// `http` to a host spoken to over [`h2`]: the header map (the page's, shared, when the
    /// include edits none), and a `Host` other than the URL's authority (sent as `:authority`).
    H2 {
        host: Option<HeaderValue>,
        headers: Arc<HeaderMap>,
    },
    /// `http`, through [`h1`]: the header lines, and a `Host` other than the URL's authority.
    Plain {
        host: Option<HeaderValue>,
        fields: Bytes,
    },
}

/// The header lines of an `http` fragment request: `headers` with what reqwest adds unless a
/// request has them, its default `Accept` and the encodings it decodes (the client's
/// `Accept-Encoding` is never forwarded). `Host` is written apart.
fn plain_fields(headers: HeaderMap) -> Vec<u8> {
    h1::encode_fields(&with_defaults(headers))
}

/// `headers` with what reqwest adds unless a request has them: its default `Accept` and the
/// encodings it decodes (the client's `Accept-Encoding` is never forwarded).
fn with_defaults(mut headers: HeaderMap) -> HeaderMap {
    if let Entry::Vacant(entry) = headers.entry(ACCEPT) {
        entry.insert(HeaderValue::from_static("*/*"));
    }
    if let Entry::Vacant(entry) = headers.entry(ACCEPT_ENCODING) {
        entry.insert(HeaderValue::from_static("gzip,br"));
    }
    headers
}

// === impl Shared ===

impl Shared {
    /// The allowlist; see [`Fetcher::check`].
    fn check(&self, url: &Url) -> Result<Access, FetchError> {
        let refuse = |reason: String| FetchError::Refused {
            url: redact(url),
            reason,
        };
        if !matches!(url.scheme(), "http" | "https") {
            return Err(refuse(format!(
                "scheme {:?} is not http or https",
                url.scheme()
            )));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(refuse("user info in the URL".into()));
        }
        let scheme = if url.scheme() == "https" {
            Scheme::Https
        } else {
            Scheme::Http
        };
        let port = url.port().unwrap_or_else(|| scheme.default_port());
        let ip = match url.host() {
            Some(Host::Ipv4(ip)) => IpAddr::V4(ip),
            Some(Host::Ipv6(ip)) => IpAddr::V6(ip),
            Some(Host::Domain(name)) if !name.is_empty() => {
                return self
                    .allow
                    .name(scheme, name, port)
                    .ok_or_else(|| refuse("host not in allowlist".into()));
            }
            _ => return Err(refuse("no host".into())),
        };
        if let Some(access) = self.allow.by_ip.get(&(scheme, ip, port)) {
            return Ok(*access);
        }
        match classify(ip) {
            Some(special) => Err(refuse(format!("{ip} is a {special} address"))),
            None => Err(refuse("host not in allowlist".into())),
        }
    }

    /// The headers of a fragment request: the forwarded subset of the client's, credentials for
    /// trusted hosts, and `Surrogate-Capability`.
    fn fragment_headers(&self, client: &HeaderMap, trusted: bool) -> HeaderMap {
        // Room for what is usually forwarded plus what the request adds (`Accept`,
        // `Accept-Encoding`, `Host`), so the map does not grow on the way.
        let mut out = HeaderMap::with_capacity(12);
        for (name, value) in client {
            let credential = *name == COOKIE || *name == AUTHORIZATION;
            if self.forward.contains(name) || (trusted && credential) {
                out.append(name.clone(), value.clone());
            }
        }
        out.insert(SURROGATE_CAPABILITY, HeaderValue::from_static(CAPABILITY));
        out
    }

    /// [`Fetcher::send_origin`] for an `http` origin: the request as reqwest would make it, on
    /// a connection from the origin's [`PlainPool`], the response's body returning the
    /// connection when read to the end. The caller applies the deadline.
    async fn send_origin_plain(
        &self,
        url: &Url,
        text: &str,
        method: Method,
        mut headers: HeaderMap,
        body: OriginBody,
        after: Duration,
    ) -> Result<Response<OriginBody>, FetchError> {
        // `url` is normalised (dot segments, percent-encoding) as reqwest would send it.
        let authority = &url[Position::BeforeHost..Position::AfterPort];
        if (method == Method::GET || method == Method::HEAD) && body.is_end_stream() {
            return self
                .send_origin_stream(url, text, method, headers, authority)
                .await;
        }
        let target: Uri = url[Position::BeforePath..Position::AfterQuery]
            .parse()
            .map_err(|e| FetchError::Transport {
                url: text.to_owned(),
                message: format!("not a valid request URI: {e}"),
            })?;
        // reqwest's default `Accept`, and `Host`, unless the request has them.
        if let Entry::Vacant(entry) = headers.entry(ACCEPT) {
            entry.insert(HeaderValue::from_static("*/*"));
        }
        if let Entry::Vacant(entry) = headers.entry(HOST) {
            let host = HeaderValue::from_str(authority).map_err(|e| FetchError::Transport {
                url: text.to_owned(),
                message: format!("not a valid Host: {e}"),
            })?;
            entry.insert(host);
        }
        let mut request = http::Request::new(body);
        *request.method_mut() = method;
        *request.uri_mut() = target;
        *request.headers_mut() = headers;
        let pool = &self.origin_plain;
        let (response, connection) = pool.send(authority, request).await.map_err(|e| match e {
            SendError::Connect(e) => send_error(text, &*e, true, false, after),
            SendError::Request(e) => send_error(text, &e, false, false, after),
        })?;
        Ok(response.map(|body| {
            if body.is_end_stream() {
                pool.checkin(authority, connection);
                BodyExt::boxed(body.map_err(BoxError::from))
            } else {
                let body = CheckinOnEnd {
                    body,
                    connection: Some((Arc::clone(pool), authority.to_owned(), connection)),
                };
                BodyExt::boxed(body.map_err(BoxError::from))
            }
        }))
    }

    /// [`Shared::send_origin_plain`] for a request without a body (`GET`, `HEAD`): spoken by
    /// [`h1`] on one of the origin's streams, the response body read as it is polled.
    async fn send_origin_stream(
        &self,
        url: &Url,
        text: &str,
        method: Method,
        mut headers: HeaderMap,
        authority: &str,
    ) -> Result<Response<OriginBody>, FetchError> {
        let target = request_target(url, text)?;
        if let Entry::Vacant(entry) = headers.entry(ACCEPT) {
            entry.insert(HeaderValue::from_static("*/*"));
        }
        let host = headers.remove(HOST);
        let host = host
            .as_ref()
            .map_or(authority.as_bytes(), HeaderValue::as_bytes);
        let fields = h1::encode_fields(&headers);
        let request = h1::encode(&method, target, host, &fields, b"");
        let pool = &self.origin_streams;
        let head_request = method == Method::HEAD;
        let response = h1::send(pool, authority, &request, true, head_request, text).await?;
        Ok(response
            .into_streaming(pool, authority)
            .map(|body| BodyExt::boxed(body.map_err(BoxError::from))))
    }

    /// A checked fragment request to an `http` host, sent and its body collected, spoken by
    /// [`h1`] on a stream from the fragment pool,
    /// the request and the decoding as reqwest makes and does them. `host` overrides the
    /// URL's authority as `Host`.
    async fn receive_plain(
        &self,
        url: &Url,
        text: &str,
        host: Option<HeaderValue>,
        fields: &[u8],
        body: Option<Bytes>,
        keep_status: bool,
    ) -> Result<Fragment, FetchError> {
        // `url` leaves out the scheme's default port, as `Host` does.
        let authority = &url[Position::BeforeHost..Position::AfterPort];
        let target = request_target(url, text)?;
        let method = if body.is_some() {
            Method::POST
        } else {
            Method::GET
        };
        let host = host
            .as_ref()
            .map_or(authority.as_bytes(), HeaderValue::as_bytes);
        let request = h1::encode(
            &method,
            target,
            host,
            fields,
            body.as_deref().unwrap_or_default(),
        );
        let pool = &self.plain;
        let response = h1::send(pool, authority, &request, body.is_none(), false, text).await?;
        drop(request);
        let status = response.status;
        if !status.is_success() && !keep_status {
            return Err(FetchError::Status {
                url: text.to_owned(),
                status,
            });
        }
        // Boxed: only a fetch whose answer came needs the room its body takes to read.
        Box::pin(self.read_fragment(response, authority, text)).await
    }

    /// Reads the body of a fragment's response (decoded when it is encoded) into the
    /// fragment, within the size limit; the stream goes back to the pool when it can be reused.
    async fn read_fragment(
        &self,
        mut response: h1::Response,
        authority: &str,
        text: &str,
    ) -> Result<Fragment, FetchError> {
        let status = response.status;
        let mut headers = std::mem::take(&mut response.headers);
        let declared = response.content_length();
        let mut sink = BodySink::new(&mut headers, declared, self.max_fragment_bytes, text)?;
        response
            .read_body(&self.plain, authority, text, &mut |data| sink.push(data))
            .await?;
        Ok(Fragment {
            cache: None,
            template: None,
            status,
            headers: Arc::new(headers),
            body: sink.finish()?,
        })
    }

    /// [`Shared::receive_plain`] for an `http` host spoken to over [`h2`].
    async fn receive_h2(
        &self,
        url: &Url,
        text: &str,
        host: Option<HeaderValue>,
        headers: Arc<HeaderMap>,
        body: Option<Bytes>,
        keep_status: bool,
    ) -> Result<Fragment, FetchError> {
        // A body's length is declared, as HTTP/1.1 declares it.
        let headers = match &body {
            Some(body) => {
                let mut with_length = HeaderMap::clone(&headers);
                with_length.insert(http::header::CONTENT_LENGTH, HeaderValue::from(body.len()));
                Arc::new(with_length)
            }
            None => headers,
        };
        let out = h2::Outgoing {
            method: if body.is_some() {
                Method::POST
            } else {
                Method::GET
            },
            authority: &url[Position::BeforeHost..Position::AfterPort],
            target: request_target(url, text)?,
            host,
            headers,
            body,
        };
        let limit = self.max_fragment_bytes;
        let received = self
            .h2
            .fetch(&self.plain, out, limit, keep_status, text)
            .await?;
        Ok(Fragment {
            cache: None,
            template: None,
            status: received.status,
            headers: Arc::new(received.headers),
            body: received.body,
        })
    }

    /// [`Shared::receive_plain`] for `https`, through reqwest.
    async fn receive_tls(
        &self,
        url: Url,
        text: &str,
        headers: HeaderMap,
        body: Option<Bytes>,
        after: Duration,
        keep_status: bool,
    ) -> Result<Fragment, FetchError> {
        let limit = self.max_fragment_bytes;
        let too_large = || FetchError::TooLarge {
            url: text.to_owned(),
            limit,
        };
        let request = match body {
            Some(body) => self.tls.post(url).body(body),
            None => self.tls.get(url),
        };
        let mut response = request
            .headers(headers)
            .send()
            .await
            .map_err(|e| send_error(text, &e, e.is_connect(), e.is_timeout(), after))?;
        let status = response.status();
        if !status.is_success() && !keep_status {
            return Err(FetchError::Status {
                url: text.to_owned(),
                status,
            });
        }
        // reqwest removes the encodings it undoes; one left is one the page cannot use.
        if let Coding::Named(coding) = content_coding(response.headers()) {
            return Err(FetchError::Decode {
                url: text.to_owned(),
                message: format!("unsupported content-encoding {coding:?}"),
            });
        }
        // Known only when the body is not encoded (decoding drops Content-Length).
        let declared = response.content_length();
        if declared.is_some_and(|len| len > limit as u64) {
            return Err(too_large());
        }
        let capacity = declared.map_or(0, |len| usize::try_from(len).unwrap_or(limit).min(limit));
        let headers = std::mem::take(response.headers_mut());
        let mut body = Collected::Empty;
        let mut total = 0usize;
        while let Some(chunk) = response.chunk().await.map_err(|e| body_error(text, &e))? {
            // Checked before keeping the chunk: decoded chunks are small, so memory stays near
            // the limit however much a compressed body would expand to.
            total = total.saturating_add(chunk.len());
            if total > limit {
                return Err(too_large());
            }
            if !chunk.is_empty() {
                body.push(chunk, capacity);
            }
        }
        Ok(Fragment {
            cache: None,
            template: None,
            status,
            headers: Arc::new(headers),
            body: body.into_bytes(),
        })
    }
}
#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
