//! Where fragments come from: the [`Fetcher`] contract the composer and the cache depend on
//! ([`FragmentRequest`], [`Fragment`], [`FetchError`], [`Access`]), and its HTTP implementation
//! ([`HttpClient`]) with its keep-alive pools (HTTP/1.1, and HTTP/2 streams for hosts that
//! speak it), allowlist guard, body decoding and circuit breakers per fragment host
//! ([`Breakers`]). It never parses ESI.

mod breaker;
mod client;
mod collect;
mod decode;
mod guard;
mod h1;
mod h2;
mod pool;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, StatusCode};
use url::Url;

pub use crate::config::{parse_base_url, BaseUrl, Scheme};
use crate::esi::Template;
pub use breaker::{BreakerState, Breakers, Clock, Ticket};
pub(crate) use client::body_error;
pub use client::HttpClient;
pub(crate) use decode::decode_stream;
pub use guard::{Lookup, SystemLookup};

/// Access an allowlisted URL has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// Whether the host receives the client's `Cookie` and `Authorization`, and whether ESI
    /// it serves may read them through variables.
    pub trusted: bool,
    /// Whether ESI the host serves is processed: a trusted host's always is, an untrusted
    /// host's only when its entry opts in (`esi = true`); otherwise its body is placed as it is.
    pub esi: bool,
    /// Whether the host is reached over HTTP/2 with prior knowledge (`http2 = true`,
    /// `fetch.origin_http2`): decided with whether it may be reached, so a fetch asks nothing
    /// again.
    pub http2: bool,
}

/// Why a fetch failed. `url` is the URL asked for, with any user info removed. Cloned when
/// one shared fetch fails for every request that waited on it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    /// The URL is not allowed: scheme, user info, host not in the allowlist, or a host that
    /// resolves only to addresses it may not reach.
    #[error("{url}: refused: {reason}")]
    Refused {
        /// The URL.
        url: String,
        /// Which rule refused it.
        reason: String,
    },
    /// No complete response within the deadline.
    #[error("{url}: no response within {after:?}")]
    Timeout {
        /// The URL.
        url: String,
        /// The deadline that passed.
        after: Duration,
    },
    /// Name resolution or the TCP/TLS connection failed (refused, unreachable, connect timeout).
    #[error("{url}: connect failed: {message}")]
    Connect {
        /// The URL.
        url: String,
        /// What the network said.
        message: String,
    },
    /// A fragment answered with a status outside 200..=299 (redirects are not followed).
    #[error("{url}: status {status}")]
    Status {
        /// The URL.
        url: String,
        /// The status received.
        status: StatusCode,
    },
    /// The body, after decoding, is over the limit (or its Content-Length says it will be).
    #[error("{url}: body over {limit} bytes")]
    TooLarge {
        /// The URL.
        url: String,
        /// The limit in bytes.
        limit: usize,
    },
    /// The body ended early: connection reset or closed before Content-Length bytes.
    #[error("{url}: body cut short: {message}")]
    Truncated {
        /// The URL.
        url: String,
        /// What the network said.
        message: String,
    },
    /// The response breaks HTTP/1.1: an invalid status line or header, a head over the size
    /// bound, malformed chunked framing.
    #[error("{url}: malformed response: {message}")]
    Malformed {
        /// The URL.
        url: String,
        /// What was wrong.
        message: String,
    },
    /// The body cannot be decoded: a `Content-Encoding` the proxy does not undo, or bytes that
    /// are not valid in the one named (trailing garbage after a gzip member included).
    #[error("{url}: undecodable body: {message}")]
    Decode {
        /// The URL.
        url: String,
        /// What was wrong.
        message: String,
    },
    /// Anything else: a request that cannot be made, a client that cannot be built, a
    /// connection failing in a way none of the above names.
    #[error("{url}: {message}")]
    Transport {
        /// The URL (or the configured value that could not be used).
        url: String,
        /// What went wrong.
        message: String,
    },
    /// Not tried: the host's circuit breaker is open (or half-open with its probe out) after
    /// consecutive failures. No connection was made.
    #[error("{url}: breaker open for {host}, not fetched")]
    BreakerOpen {
        /// The URL.
        url: String,
        /// The host, `host:port`.
        host: String,
        /// How long until a probe may go through; `None` while the probe is out.
        retry_in: Option<Duration>,
    },
}

/// A URL that a [`Fetcher::check`] accepted, and the access it was given. Only a check makes
/// one, so the allowlist is decided once per include: a fetch of it looks no further. Derefs
/// to the URL, which it shares with the caller that checked it (no copy per include).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowed {
    url: Arc<Url>,
    access: Access,
}

/// The browser's request headers of one page (with the proxy's `X-Forwarded-*`), shared by
/// the page's fragment requests; derefs to the map. It also keeps, once worked out, the headers
/// a fragment request of the page sends for each trust level (as an HTTP/1.1 block, and as a
/// map for HTTP/2), so a page's fragment requests do not each rebuild the same headers. What one page's visitor sent stays
/// in that page's value: nothing here is shared between pages.
#[derive(Debug, Default)]
pub struct ClientHeaders {
    map: HeaderMap,
    /// For an untrusted and a trusted host: the block, and the client (its
    /// [`HttpClient`] instance) whose forwarding policy made it.
    blocks: [std::sync::OnceLock<(u64, Bytes)>; 2],
    /// The same as maps, for hosts spoken to over HTTP/2.
    maps: [std::sync::OnceLock<(u64, Arc<HeaderMap>)>; 2],
}

impl ClientHeaders {
    /// The header block for hosts of this trust level, made by `make` the first time client
    /// `client` asks; a block another client made (another policy, after a reload) is not
    /// used.
    pub(crate) fn block(&self, client: u64, trusted: bool, make: impl FnOnce() -> Bytes) -> Bytes {
        made_once(&self.blocks[usize::from(trusted)], client, make)
    }

    /// [`ClientHeaders::block`] as a header map, for HTTP/2.
    pub(crate) fn map(
        &self,
        client: u64,
        trusted: bool,
        make: impl FnOnce() -> Arc<HeaderMap>,
    ) -> Arc<HeaderMap> {
        made_once(&self.maps[usize::from(trusted)], client, make)
    }
}

/// What `slot` keeps if `client` made it, else what `make` makes (kept when the slot is empty).
fn made_once<T: Clone>(
    slot: &std::sync::OnceLock<(u64, T)>,
    client: u64,
    make: impl FnOnce() -> T,
) -> T {
    match slot.get() {
        Some((made_by, kept)) if *made_by == client => kept.clone(),
        Some(_) => make(),
        None => slot.get_or_init(|| (client, make())).1.clone(),
    }
}

impl From<HeaderMap> for ClientHeaders {
    fn from(map: HeaderMap) -> Self {
        Self {
            map,
            blocks: Default::default(),
            maps: Default::default(),
        }
    }
}

impl std::ops::Deref for ClientHeaders {
    type Target = HeaderMap;

    fn deref(&self) -> &HeaderMap {
        &self.map
    }
}

/// A fragment to fetch.
#[derive(Debug, Clone)]
pub struct FragmentRequest {
    /// Absolute URL, resolved against the document that includes it, and allowed.
    pub url: Allowed,
    /// The browser's request headers as the server received them, plus the `X-Forwarded-For`,
    /// `-Proto` and `-Host` the server set. Only the policy's subset is forwarded.
    pub client_headers: Arc<ClientHeaders>,
    /// Deadline for the whole fetch: connect, headers and body.
    pub timeout: Duration,
    /// Whether a status outside 2xx comes back as a [`Fragment`] (with its headers and body)
    /// rather than [`FetchError::Status`]: a page's primary fragment, whose answer is the
    /// page's. Such a fragment is never stored or shared with another request.
    pub keep_status: bool,
    /// What the include's tag asks beyond a plain GET: method and body, header edits, and
    /// how the cache treats it. The default is a plain GET under the cache's policy.
    pub options: RequestOptions,
}

/// What an include's tag asks of its fragment request beyond a plain GET.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestOptions {
    /// `POST` with this body; `None`: `GET`.
    pub body: Option<Bytes>,
    /// Edits of the request's headers, applied in order after the forwarding policy. The
    /// composer admits only names a template may touch and credentials only toward trusted
    /// hosts; the client drops any edit naming a header it never lets a template set.
    pub headers: Vec<HeaderEdit>,
    /// Neither read from nor written to the cache.
    pub no_store: bool,
    /// The cache TTL in place of the response's headers (zero: not stored); never makes
    /// storable what the policy refuses for safety.
    pub ttl: Option<Duration>,
}

/// One edit of a fragment request's headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderEdit {
    /// Replaces every value of the header.
    Set(HeaderName, HeaderValue),
    /// Adds a value after the header's others.
    Append(HeaderName, HeaderValue),
    /// Removes the header.
    Remove(HeaderName),
}

/// A fetched fragment: status 2xx only (anything else is [`FetchError::Status`], unless the
/// request keeps it), body complete and decoded (`Content-Encoding` undone).
#[derive(Debug, Clone)]
pub struct Fragment {
    /// The status: 2xx, or any when the request set [`FragmentRequest::keep_status`].
    pub status: StatusCode,
    /// The response headers. When the body was decoded, `Content-Encoding` and
    /// `Content-Length` are gone. Shared: a cached fragment hands out its entry's.
    pub headers: Arc<HeaderMap>,
    /// The decoded body.
    pub body: Bytes,
    /// How a cache served it; `None` when it came straight from HTTP.
    pub cache: Option<CacheInfo>,
    /// The body already parsed as ESI, when the source keeps parsed templates (a cache entry
    /// of an ESI fragment, parsed once per entry); `None` leaves the parse to the caller.
    pub template: Option<Arc<Template>>,
}

/// The kind of a [`FetchError`]: the label metrics and logs use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// [`FetchError::Refused`].
    Refused,
    /// [`FetchError::Timeout`].
    Timeout,
    /// [`FetchError::Connect`].
    Connect,
    /// [`FetchError::Status`].
    Status,
    /// [`FetchError::TooLarge`].
    TooLarge,
    /// [`FetchError::Truncated`].
    Truncated,
    /// [`FetchError::Malformed`].
    Malformed,
    /// [`FetchError::Decode`].
    Decode,
    /// [`FetchError::Transport`].
    Transport,
    /// [`FetchError::BreakerOpen`].
    BreakerOpen,
}

/// What a cache did for one fragment; serialised as its [`CacheStatus::as_str`] name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CacheStatus {
    /// Served from a fresh entry.
    Hit,
    /// Fetched (alone, or joined with a concurrent fetch) and stored.
    Miss,
    /// Served expired within `stale-while-revalidate`, one refresh started behind it.
    StaleWhileRevalidate,
    /// Served expired within `stale-if-error`, because the fetch failed.
    StaleIfError,
    /// Not cacheable: fetched for this request alone (hit-for-pass).
    Pass,
}

/// What a cache did for one fragment, for logs and the page-build waterfall.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheInfo {
    /// Hit, miss, stale or pass.
    pub status: CacheStatus,
    /// The entry's TTL, when one was stored or served.
    pub ttl: Option<Duration>,
    /// What decided the TTL (a rule, Surrogate-Control, s-maxage, max-age, the default).
    pub source: Option<String>,
    /// The surrogate keys the response was tagged with (`Surrogate-Key`, `xkey`).
    pub keys: Arc<[Arc<str>]>,
}

/// An error of a streamed body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A body streamed to or from the origin: the client's request body on its way, the origin's
/// response body (undecoded) on its way back.
pub type OriginBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// A request to the origin, as the server takes it apart from the client's.
#[derive(Debug)]
pub struct OriginRequest {
    /// The client's method.
    pub method: Method,
    /// Path and query, starting with `/`; always resolved on the origin.
    pub path_and_query: String,
    /// The headers to send (the server's policy applied); `Surrogate-Capability` is added.
    pub headers: HeaderMap,
    /// The client's body, streamed.
    pub body: OriginBody,
}

/// Where layouts and fragments come from: HTTP here, a cache wrapping it, in-memory in benches.
/// The one seam between composition and the network.
pub trait Fetcher: Send + Sync + 'static {
    /// Fetches one fragment. The future owns everything it needs, so it can outlive `&self`.
    ///
    /// # Errors
    /// The future yields a [`FetchError`] for a refused URL, a missed deadline, a failed
    /// connection, a non-2xx status, an oversized or cut body, or another transport failure.
    fn fetch(&self, req: FragmentRequest) -> BoxFuture<'static, Result<Fragment, FetchError>>;

    /// The allowlist's decision on `url`, made before anything is fetched: what a
    /// [`FragmentRequest`] needs. The default, for fetchers that never touch the network,
    /// allows everything untrusted, its ESI processed (the documents are the program's own).
    ///
    /// # Errors
    /// [`FetchError::Refused`] when the URL may not be fetched.
    fn check(&self, url: &Arc<Url>) -> Result<Allowed, FetchError> {
        let access = Access {
            trusted: false,
            esi: true,
            http2: false,
        };
        Ok(Allowed::new(Arc::clone(url), access))
    }

    /// Sends a request to the origin; the response comes back once its head arrives, its body
    /// streamed undecoded, redirects not followed. The default, for fetchers with no origin
    /// (in-memory ones), refuses.
    ///
    /// # Errors
    /// The future yields [`FetchError::Refused`] for a target not on the origin,
    /// [`FetchError::Timeout`] when no head arrives within the layout deadline,
    /// [`FetchError::Connect`] when the origin cannot be reached, [`FetchError::Transport`]
    /// for anything else.
    fn send_origin(
        &self,
        req: OriginRequest,
    ) -> BoxFuture<'static, Result<http::Response<OriginBody>, FetchError>> {
        let url = req.path_and_query;
        Box::pin(async move {
            Err(FetchError::Refused {
                url,
                reason: "this fetcher has no origin".into(),
            })
        })
    }
}

/// The longest deadline honoured: one year, which no fetch or page outlives.
const MAX_DEADLINE: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// The instant `after` from `start`, `after` clamped to a year: a duration built in code (a
/// [`FragmentRequest::timeout`] or a deadline of `Duration::MAX`) must not overflow the
/// `Instant` addition, which panics.
pub fn deadline_after(start: tokio::time::Instant, after: Duration) -> tokio::time::Instant {
    let after = after.min(MAX_DEADLINE);
    start.checked_add(after).unwrap_or(start)
}

// === impl FetchError ===

impl FetchError {
    /// The error's kind.
    pub fn kind(&self) -> ErrorKind {
        match self {
            FetchError::Refused { .. } => ErrorKind::Refused,
            FetchError::Timeout { .. } => ErrorKind::Timeout,
            FetchError::Connect { .. } => ErrorKind::Connect,
            FetchError::Status { .. } => ErrorKind::Status,
            FetchError::TooLarge { .. } => ErrorKind::TooLarge,
            FetchError::Truncated { .. } => ErrorKind::Truncated,
            FetchError::Malformed { .. } => ErrorKind::Malformed,
            FetchError::Decode { .. } => ErrorKind::Decode,
            FetchError::Transport { .. } => ErrorKind::Transport,
            FetchError::BreakerOpen { .. } => ErrorKind::BreakerOpen,
        }
    }

    /// Whether the deadline passed.
    pub fn is_timeout(&self) -> bool {
        matches!(self, FetchError::Timeout { .. })
    }

    /// The URL the error is about.
    pub fn url(&self) -> &str {
        match self {
            FetchError::Refused { url, .. }
            | FetchError::Timeout { url, .. }
            | FetchError::Connect { url, .. }
            | FetchError::Status { url, .. }
            | FetchError::TooLarge { url, .. }
            | FetchError::Truncated { url, .. }
            | FetchError::Malformed { url, .. }
            | FetchError::Decode { url, .. }
            | FetchError::Transport { url, .. }
            | FetchError::BreakerOpen { url, .. } => url,
        }
    }
}

// === impl RequestOptions ===

impl RequestOptions {
    /// Whether the request goes past the cache: `no-store`, a body (a `POST`), or headers a
    /// template changed (the response may depend on them, and their values may be one
    /// visitor's, so no entry may answer another request).
    pub fn bypasses_cache(&self) -> bool {
        self.no_store || self.body.is_some() || !self.headers.is_empty()
    }

    /// Applies the header edits to `headers`; an edit naming a header that frames the
    /// request, names its hop or identifies the client is skipped, and so is one setting a
    /// credential (`Cookie`, `Authorization`) toward a host not `trusted` (the composer never
    /// makes either; checked again since options can be built in code).
    pub fn apply_headers(&self, headers: &mut HeaderMap, trusted: bool) {
        use crate::esi::include_attrs::{CREDENTIAL_HEADERS, FORBIDDEN_HEADERS};
        for edit in &self.headers {
            let name = match edit {
                HeaderEdit::Set(name, _)
                | HeaderEdit::Append(name, _)
                | HeaderEdit::Remove(name) => name,
            };
            let credential = !matches!(edit, HeaderEdit::Remove(_))
                && CREDENTIAL_HEADERS.contains(&name.as_str());
            if FORBIDDEN_HEADERS.contains(&name.as_str()) || (credential && !trusted) {
                continue;
            }
            match edit {
                HeaderEdit::Set(name, value) => {
                    headers.insert(name.clone(), value.clone());
                }
                HeaderEdit::Append(name, value) => {
                    headers.append(name.clone(), value.clone());
                }
                HeaderEdit::Remove(name) => {
                    headers.remove(name);
                }
            }
        }
    }
}

// === impl Allowed ===

impl Allowed {
    /// Only the fetchers of this module decide what is allowed.
    pub(in crate::fetch) fn new(url: Arc<Url>, access: Access) -> Self {
        Self { url, access }
    }

    /// The access the URL was given.
    pub fn access(&self) -> Access {
        self.access
    }

    /// The same URL with its trust withdrawn: fetched without the client's credentials, as
    /// an include of an untrusted document must be whatever host it names. Only ever lowers
    /// access; whether the host's ESI is processed stays as the allowlist decided.
    #[must_use]
    pub fn untrusted(mut self) -> Self {
        self.access.trusted = false;
        self
    }

    /// The URL, shared.
    pub fn shared_url(&self) -> &Arc<Url> {
        &self.url
    }
}

impl std::ops::Deref for Allowed {
    type Target = Url;

    fn deref(&self) -> &Url {
        &self.url
    }
}

// === impl ErrorKind ===

impl ErrorKind {
    /// The stable name metrics and logs use: `refused`, `timeout`, `connect`, `status`,
    /// `too_large`, `truncated`, `malformed`, `decode`, `transport` or `breaker_open`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Refused => "refused",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Connect => "connect",
            ErrorKind::Status => "status",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::Truncated => "truncated",
            ErrorKind::Malformed => "malformed",
            ErrorKind::Decode => "decode",
            ErrorKind::Transport => "transport",
            ErrorKind::BreakerOpen => "breaker_open",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl CacheStatus ===

impl CacheStatus {
    /// The name logs, the waterfall and its JSON use: `hit`, `miss`,
    /// `stale-while-revalidate`, `stale-if-error` or `pass`.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "hit",
            CacheStatus::Miss => "miss",
            CacheStatus::StaleWhileRevalidate => "stale-while-revalidate",
            CacheStatus::StaleIfError => "stale-if-error",
            CacheStatus::Pass => "pass",
        }
    }
}

impl fmt::Display for CacheStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl Fragment ===

impl Fragment {
    /// Whether the fragment is itself ESI: a `Surrogate-Control` header has a `content`
    /// directive listing `ESI/1.0` (case-insensitive, targeted or not).
    pub fn is_esi(&self) -> bool {
        crate::headers::is_esi(&self.headers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn a_pages_header_block_is_made_once_per_trust_level_and_client() {
        let headers = ClientHeaders::from(HeaderMap::new());
        let made = std::cell::Cell::new(0);
        let make = |text: &'static str| {
            made.set(made.get() + 1);
            Bytes::from_static(text.as_bytes())
        };
        assert_eq!(headers.block(1, false, || make("plain")), "plain");
        assert_eq!(headers.block(1, true, || make("trusted")), "trusted");
        // Kept: the same client asks again for either level.
        assert_eq!(headers.block(1, false, || make("again")), "plain");
        assert_eq!(headers.block(1, true, || make("again")), "trusted");
        assert_eq!(made.get(), 2);
        // Another client's policy may differ: its block is its own, and not kept.
        assert_eq!(headers.block(2, true, || make("other")), "other");
        assert_eq!(headers.block(1, true, || make("again")), "trusted");
        assert_eq!(made.get(), 3);

        // The maps HTTP/2 hosts get are kept apart by trust level the same way.
        let map = |text: &'static str| {
            let mut map = HeaderMap::new();
            map.insert("x-made", HeaderValue::from_static(text));
            Arc::new(map)
        };
        assert_eq!(headers.map(1, true, || map("trusted"))["x-made"], "trusted");
        assert_eq!(headers.map(1, false, || map("plain"))["x-made"], "plain");
        assert_eq!(headers.map(1, true, || map("again"))["x-made"], "trusted");
        assert_eq!(headers.map(2, true, || map("other"))["x-made"], "other");
    }

    /// Regression: `Instant::now() + req.timeout` panicked on a timeout of `Duration::MAX`.
    #[test]
    fn huge_deadlines_are_clamped_not_overflowed() {
        let now = tokio::time::Instant::now();
        for after in [
            Duration::MAX,
            Duration::from_secs(u64::MAX),
            MAX_DEADLINE * 2,
        ] {
            assert_eq!(deadline_after(now, after), now + MAX_DEADLINE, "{after:?}");
        }
        let second = Duration::from_secs(1);
        assert_eq!(deadline_after(now, second), now + second);
        assert_eq!(deadline_after(now, Duration::ZERO), now);
    }

    #[test]
    fn esi_marking() {
        let cases: &[(&[&str], bool)] = &[
            (&[], false),
            (&["content=\"ESI/1.0\""], true),
            (&["content=\"esi/1.0\""], true),
            (&["max-age=60, content=\"ESI/1.0\""], true),
            (
                &["max-age=60,content=\"ESI/1.0 ESI-Inline/1.0\";esi-proxy"],
                true,
            ),
            (&["content=\"ESI-Inline/1.0 ESI/1.0\""], true),
            (&["no-store", "Content = \"ESI/1.0\""], true),
            (&["content=ESI/1.0"], true),
            (&["content=\"ESI/1.0\";other-surrogate"], true),
            (&["max-age=60"], false),
            (&["content=\"ESI-Inline/1.0\""], false),
            (&["content=\"ESI/1.01\""], false),
            (&["no-store-content=\"ESI/1.0\""], false),
            (&["x=\"a, content=ESI/1.0\""], false),
        ];
        for (values, want) in cases {
            let mut headers = HeaderMap::new();
            for value in *values {
                headers.append(
                    "surrogate-control",
                    HeaderValue::from_str(value).expect("test values are valid"),
                );
            }
            let fragment = Fragment {
                cache: None,
                template: None,
                status: StatusCode::OK,
                headers: Arc::new(headers),
                body: Bytes::new(),
            };
            assert_eq!(fragment.is_esi(), *want, "values: {values:?}");
        }
    }
}
