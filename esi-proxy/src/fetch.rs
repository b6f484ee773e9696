//! The HTTP client to the origin and to fragment services: keep-alive pools (hyper's HTTP/1.1
//! for `http`, reqwest for `https`), timeouts, the host allowlist and its connect-time guard
//! against private addresses (SSRF), the request header policy, body decoding and size limits
//! and `Surrogate-Capability`. It never parses ESI.

use std::collections::{HashMap, HashSet};
use std::error::Error as StdError;
use std::fmt;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use http::header::{
    Entry, HeaderName, HeaderValue, ACCEPT, ACCEPT_ENCODING, AUTHORIZATION, CONTENT_ENCODING,
    CONTENT_LENGTH, COOKIE, HOST,
};
use http::{HeaderMap, Method, StatusCode, Uri};
use http_body::Body as _;
use http_body_util::{BodyExt as _, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use url::{Host, Position, Url};

use crate::config::Config;
use crate::esi::Template;

/// Client request headers never sent to fragments, whatever `fetch.forward_headers` says
/// (lowercase): credentials (which go to trusted hosts only, by their own rule), conditional and
/// range headers (a fragment is always fetched whole), hop-by-hop headers, and headers that
/// describe the client's own request or that the fetcher sets itself.
pub const NEVER_FORWARDED: &[&str] = &[
    "cookie",
    "authorization",
    "proxy-authorization",
    "range",
    "if-match",
    "if-none-match",
    "if-modified-since",
    "if-unmodified-since",
    "if-range",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "content-type",
    "expect",
    "accept-encoding",
    "surrogate-capability",
];

/// The `Surrogate-Capability` value sent on every request to the origin and to fragments.
pub const SURROGATE_CAPABILITY: &str = "esi-proxy=\"ESI/1.0\"";

/// The `X-Forwarded-*` headers the server sets; they always go to fragments.
const X_FORWARDED: [&str; 3] = ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"];

/// `Surrogate-Capability`, which `http` has no constant for.
fn surrogate_capability_name() -> HeaderName {
    HeaderName::from_static("surrogate-capability")
}

/// Why an address is not a public one; `None` from [`classify`] means public.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Special {
    /// 127/8, ::1.
    Loopback,
    /// 10/8, 172.16/12, 192.168/16, deprecated site-local fec0::/10.
    Private,
    /// 169.254/16, fe80::/10.
    LinkLocal,
    /// fc00::/7.
    UniqueLocal,
    /// 100.64/10, carrier-grade NAT.
    Shared,
    /// 0/8, ::.
    Unspecified,
    /// 224/4, ff00::/8.
    Multicast,
    /// 255.255.255.255.
    Broadcast,
    /// 240/4.
    Reserved,
    /// Cloud instance metadata services: never reachable through a name.
    Metadata,
}

/// The scheme of a [`BaseUrl`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// `http`, default port 80.
    Http,
    /// `https`, default port 443.
    Https,
}

/// `scheme://host:port` of the origin or of an allowlisted fragment host: what the allowlist
/// compares URLs by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BaseUrl {
    /// `http` or `https`.
    pub scheme: Scheme,
    /// Lowercase domain (as `url` normalises it), IPv4 address, or IPv6 address without brackets.
    pub host: String,
    /// The port, explicit or the scheme's default.
    pub port: u16,
}

/// Access an allowlisted URL has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// Whether the host receives the client's `Cookie` and `Authorization`.
    pub trusted: bool,
}

/// Why a fetch failed. `url` is the URL asked for, with any user info removed.
#[derive(Debug, thiserror::Error)]
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
    /// Anything else: a malformed response, an undecodable body, a client that cannot be built.
    #[error("{url}: {message}")]
    Transport {
        /// The URL (or the configured value that could not be used).
        url: String,
        /// What went wrong.
        message: String,
    },
}

/// A fragment to fetch.
#[derive(Debug, Clone)]
pub struct FragmentRequest {
    /// Absolute URL, already resolved against the document that includes it.
    pub url: Url,
    /// The browser's request headers as the server received them, plus the `X-Forwarded-For`,
    /// `-Proto` and `-Host` the server set. Only the policy's subset is forwarded.
    pub client_headers: Arc<HeaderMap>,
    /// Deadline for the whole fetch: connect, headers and body.
    pub timeout: Duration,
}

/// A fetched fragment: status 2xx only (anything else is [`FetchError::Status`]), body complete
/// and decoded (`Content-Encoding` undone).
#[derive(Debug, Clone)]
pub struct Fragment {
    /// The 2xx status.
    pub status: StatusCode,
    /// The response headers. When the body was decoded, `Content-Encoding` and
    /// `Content-Length` are gone.
    pub headers: HeaderMap,
    /// The decoded body.
    pub body: Bytes,
    /// How a cache served it; `None` when it came straight from HTTP.
    pub cache: Option<CacheInfo>,
    /// For a fragment served from a cache entry: a slot for its parsed template, shared by
    /// every hit of that entry, so an ESI fragment is parsed once per cache lifetime.
    pub parsed: Option<Arc<OnceLock<Arc<Template>>>>,
}

/// What a cache did for one fragment, for logs and the page-build waterfall.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheInfo {
    /// "hit", "miss", "stale-while-revalidate", "stale-if-error" or "pass".
    pub status: &'static str,
    /// The entry's TTL, when one was stored or served.
    pub ttl: Option<Duration>,
    /// What decided the TTL (a rule, Surrogate-Control, s-maxage, max-age, the default).
    pub source: Option<String>,
}

/// Where fragments come from: HTTP here, a cache wrapping this later, in-memory in benches.
pub trait Fetcher: Send + Sync + 'static {
    /// Fetches one fragment. The future owns everything it needs, so it can outlive `&self`.
    ///
    /// # Errors
    /// The future yields a [`FetchError`] for a refused URL, a missed deadline, a failed
    /// connection, a non-2xx status, an oversized or cut body, or another transport failure.
    fn fetch(&self, req: FragmentRequest) -> BoxFuture<'static, Result<Fragment, FetchError>>;

    /// Allowlist check without fetching, so a caller can fail fast. The default, for fetchers
    /// that never touch the network, allows everything untrusted.
    ///
    /// # Errors
    /// [`FetchError::Refused`] when the URL may not be fetched.
    fn check(&self, url: &Url) -> Result<Access, FetchError> {
        let _ = url;
        Ok(Access { trusted: false })
    }
}

/// Name resolution, injectable so tests can map names to loopback addresses.
pub trait Lookup: Send + Sync + 'static {
    /// Resolves `host` to socket addresses. The HTTP client calls this with port 0 (its
    /// resolver is not told the port) and connects to the URL's port.
    fn lookup(&self, host: &str, port: u16)
        -> BoxFuture<'static, std::io::Result<Vec<SocketAddr>>>;
}

/// The system resolver, through `tokio::net::lookup_host`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemLookup;

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
    origin: BaseUrl,
    /// The origin (trusted) and every `fetch.hosts` entry.
    allow: Allowlist,
    /// Client headers forwarded to every allowed host; `Cookie`/`Authorization` are added for
    /// trusted ones.
    forward: HashSet<HeaderName>,
    max_fragment_bytes: usize,
    layout_timeout: Duration,
    /// `http` fragments: hyper connections from a pool of our own, with none of reqwest's
    /// per-request layers (redirects, retries, decompression, its timeouts) that a fragment
    /// never uses and that cost more CPU than the request itself on a loopback page.
    plain: Arc<PlainPool<Empty<Bytes>>>,
    /// `https` fragments, through reqwest for its TLS.
    tls: reqwest::Client,
    /// An `http` origin, the same way; its responses are handed out as reqwest's.
    origin_plain: Arc<PlainPool<reqwest::Body>>,
    /// An `https` origin, through reqwest.
    origin_client: reqwest::Client,
}

/// Idle keep-alive HTTP/1.1 connections to `http` hosts, by authority (`host[:port]`
/// as the URL spells it, the default port left out, so also the `Host` header), each driven by
/// a task of its own. A connection is checked out for one request and back in once its
/// response body has been read. Stands in for hyper-util's pooled client, whose per-request
/// bookkeeping (a task per request to return the connection, connection-info extensions, URI
/// rewriting) costs more than a loopback request.
struct PlainPool<B> {
    connector: PlainConnector,
    idle: Mutex<HashMap<String, Vec<IdleConnection<B>>>>,
    /// Most idle connections kept per authority (`fetch.pool_idle_per_host`).
    max_idle_per_host: usize,
    /// Whether the task closing connections idle past [`POOL_IDLE_TIMEOUT`] runs.
    purging: AtomicBool,
}

/// A connection waiting in a [`PlainPool`], for requests with bodies of type `B`.
struct IdleConnection<B> {
    sender: SendRequest<B>,
    since: Instant,
}

/// An origin response body that puts its connection back in the pool once it has been read
/// to the end (dropped earlier, the connection closes).
struct CheckinOnEnd {
    body: hyper::body::Incoming,
    connection: Option<(
        Arc<PlainPool<reqwest::Body>>,
        String,
        SendRequest<reqwest::Body>,
    )>,
}

/// How long a connection may stay idle in a [`PlainPool`], as reqwest keeps them.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Connects to `http` fragment hosts through the [`GuardedResolver`], resolution and TCP within
/// `fetch.connect_timeout_ms` together (as reqwest counts its connect timeout).
#[derive(Clone)]
struct PlainConnector {
    http: HttpConnector<ResolveName>,
    timeout: Duration,
}

/// The [`GuardedResolver`] as the `Service<Name>` hyper's connector resolves with.
#[derive(Clone)]
struct ResolveName(Arc<GuardedResolver>);

/// Why a [`PlainPool`] could not send a request.
enum SendError {
    /// No connection: resolution (or its guard), TCP connect, connect timeout.
    Connect(Box<dyn StdError + Send + Sync>),
    /// The connection failed before a response head arrived.
    Request(hyper::Error),
}

/// The connect timeout of a [`PlainConnector`] passed; reported as a connect failure.
#[derive(Debug, thiserror::Error)]
#[error("connect timed out after {0:?}")]
struct ConnectTimeout(Duration);

/// A fragment body in a `Content-Encoding` the client undoes: exactly `gzip` or `br`, the
/// encodings it asks for (what reqwest decoded).
enum Decoder {
    Gzip(Box<GzipDecoder>),
    Brotli(Box<brotli::DecompressorWriter<CappedSink>>),
}

/// A streaming gzip decoder (RFC 1952, any number of members one after another) that tells a
/// stream cut short from a corrupt one, which flate2's own decoders report alike.
struct GzipDecoder {
    state: GzipState,
    /// The bytes of the member header read so far.
    header: Vec<u8>,
    inflate: flate2::Decompress,
    crc: flate2::Crc,
    /// The bytes of the member trailer (CRC-32, ISIZE) read so far.
    trailer: Vec<u8>,
}

/// Where a [`GzipDecoder`] is in the current member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GzipState {
    Header,
    Deflate,
    Trailer,
}

/// Decoded bytes, refusing to grow past the limit so a compression bomb stops there. The
/// caller moves `buf` out after each write; `written` counts every byte taken.
struct CappedSink {
    buf: Vec<u8>,
    written: usize,
    limit: usize,
    over: bool,
}

/// Why an encoded body could not be decoded.
#[derive(Debug, PartialEq, Eq)]
enum DecodeError {
    /// The decoded body is over the limit.
    TooLarge,
    /// The encoded stream ended before it was complete.
    Cut(String),
    /// The bytes are not valid in the encoding.
    Corrupt(String),
}

/// The DNS resolver every client uses: the injected [`Lookup`], minus every address the host
/// may not reach, so no connection is ever attempted to one.
struct GuardedResolver {
    lookup: Arc<dyn Lookup>,
    /// Lowercase names that may resolve to loopback/private/link-local addresses: the origin's
    /// host and entries with `private_network = true`. reqwest's resolver sees only the name,
    /// not the port, so this is per name.
    private_ok: HashSet<String>,
}

/// A name resolved only to addresses the guard dropped; found in reqwest's error source chain
/// and reported as [`FetchError::Refused`].
#[derive(Debug, thiserror::Error)]
#[error("{host} resolves only to private/loopback addresses")]
struct Blocked {
    host: String,
}

/// The allowed `scheme://host:port`s, keyed so that checking a URL allocates nothing (it runs
/// twice per fragment): by address for IP hosts, by lowercase name for the others.
#[derive(Debug, Default)]
struct Allowlist {
    by_ip: HashMap<(Scheme, IpAddr, u16), Access>,
    by_name: HashMap<String, Vec<(Scheme, u16, Access)>>,
}

/// A body being collected: one chunk is kept as is, more are copied into one buffer.
#[derive(Default)]
enum Collected {
    #[default]
    Empty,
    One(Bytes),
    Many(BytesMut),
}

/// Parses `scheme://host[:port][/]` (http or https; no user info, path, query or fragment).
///
/// # Errors
/// A message naming the value and what is wrong with it, for config validation.
pub fn parse_base_url(s: &str) -> Result<BaseUrl, String> {
    let (scheme, rest) = s
        .split_once("://")
        .ok_or_else(|| format!("{s:?} is not a URL like http://host:port"))?;
    let scheme = if scheme.eq_ignore_ascii_case("http") {
        Scheme::Http
    } else if scheme.eq_ignore_ascii_case("https") {
        Scheme::Https
    } else {
        return Err(format!("{s:?}: scheme must be http or https"));
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    // Checked on the raw text, since `url` would quietly normalise some of these away.
    if authority.contains('@') {
        return Err(format!("{s:?}: user info is not allowed"));
    }
    if authority.contains('?') {
        return Err(format!("{s:?}: a query is not allowed"));
    }
    if authority.contains('#') {
        return Err(format!("{s:?}: a fragment is not allowed"));
    }
    if authority.contains(['/', '\\']) {
        return Err(format!("{s:?}: a path is not allowed (only \"/\")"));
    }
    if authority.is_empty() || authority.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return Err(format!("{s:?}: no valid host"));
    }
    let url = Url::parse(s).map_err(|e| format!("{s:?}: {e}"))?;
    let base = BaseUrl::of(&url).ok_or_else(|| format!("{s:?}: no valid host"))?;
    debug_assert_eq!(base.scheme, scheme);
    Ok(base)
}

// === impl Scheme ===

impl Scheme {
    /// `"http"` or `"https"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    /// 80 or 443.
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl BaseUrl ===

impl BaseUrl {
    /// `scheme://host:port/` as a URL, to resolve paths against.
    ///
    /// # Panics
    /// Only if the fields were set by hand to a host that is not one; values from
    /// [`parse_base_url`] always form a URL.
    pub fn to_url(&self) -> Url {
        Url::parse(&format!("{self}/")).expect("a BaseUrl from parse_base_url is a valid URL")
    }

    /// Whether `url` has this scheme, host and port (explicit or default).
    pub fn matches(&self, url: &Url) -> bool {
        BaseUrl::of(url).is_some_and(|base| base == *self)
    }

    /// The base of an http(s) URL with a host; `None` for other schemes or no host.
    fn of(url: &Url) -> Option<BaseUrl> {
        let scheme = match url.scheme() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            _ => return None,
        };
        let host = match url.host()? {
            Host::Domain(name) if !name.is_empty() => name.to_ascii_lowercase(),
            Host::Domain(_) => return None,
            Host::Ipv4(ip) => ip.to_string(),
            Host::Ipv6(ip) => ip.to_string(),
        };
        let port = url.port().unwrap_or_else(|| scheme.default_port());
        Some(BaseUrl { scheme, host, port })
    }

    /// The host as an IP address, when it is one.
    fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

impl fmt::Display for BaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "{}://[{}]:{}", self.scheme, self.host, self.port)
        } else {
            write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
        }
    }
}

// === impl Special ===

impl fmt::Display for Special {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Special::Loopback => "loopback",
            Special::Private => "private",
            Special::LinkLocal => "link-local",
            Special::UniqueLocal => "unique-local",
            Special::Shared => "shared (CGNAT)",
            Special::Unspecified => "unspecified",
            Special::Multicast => "multicast",
            Special::Broadcast => "broadcast",
            Special::Reserved => "reserved",
            Special::Metadata => "cloud metadata",
        })
    }
}

/// What kind of non-public address `ip` is, or `None` for a public one. IPv4 addresses embedded
/// in IPv6 (mapped, compatible, NAT64) are classified as the IPv4 address they reach.
fn classify(ip: IpAddr) -> Option<Special> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<Special> {
    // 169.254.169.254: AWS, GCP, Azure, OpenStack; 169.254.170.2: ECS task credentials;
    // 100.100.100.200: Alibaba Cloud.
    const METADATA: [Ipv4Addr; 3] = [
        Ipv4Addr::new(169, 254, 169, 254),
        Ipv4Addr::new(169, 254, 170, 2),
        Ipv4Addr::new(100, 100, 100, 200),
    ];
    let [a, b, ..] = ip.octets();
    Some(match (a, b) {
        _ if METADATA.contains(&ip) => Special::Metadata,
        (0, _) => Special::Unspecified,
        (127, _) => Special::Loopback,
        (10, _) | (192, 168) => Special::Private,
        (172, b) if b & 0xf0 == 16 => Special::Private,
        (169, 254) => Special::LinkLocal,
        (100, b) if b & 0xc0 == 64 => Special::Shared,
        (224..=239, _) => Special::Multicast,
        _ if ip == Ipv4Addr::BROADCAST => Special::Broadcast,
        (240..=255, _) => Special::Reserved,
        _ => return None,
    })
}

fn classify_v6(ip: Ipv6Addr) -> Option<Special> {
    const METADATA: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254);
    let s = ip.segments();
    if ip == METADATA {
        return Some(Special::Metadata);
    }
    if ip.is_unspecified() {
        return Some(Special::Unspecified);
    }
    if ip.is_loopback() {
        return Some(Special::Loopback);
    }
    // ::ffff:a.b.c.d (mapped), ::a.b.c.d (deprecated compatible), 64:ff9b::a.b.c.d (NAT64).
    let mapped_or_compatible = s[..5] == [0; 5] && (s[5] == 0xffff || s[5] == 0);
    if mapped_or_compatible || s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return classify_v4(Ipv4Addr::from((u32::from(s[6]) << 16) | u32::from(s[7])));
    }
    Some(match s[0] {
        0xfe80..=0xfebf => Special::LinkLocal,
        0xfec0..=0xfeff => Special::Private,
        0xfc00..=0xfdff => Special::UniqueLocal,
        0xff00..=0xffff => Special::Multicast,
        _ => return None,
    })
}

/// Whether a resolved address may be connected to: metadata never, other non-public addresses
/// only for names allowed private networks.
fn address_allowed(ip: IpAddr, private_ok: bool) -> bool {
    match classify(ip) {
        None => true,
        Some(Special::Metadata) => false,
        Some(_) => private_ok,
    }
}

/// The addresses of `addrs` that may be connected to, with port 0 so the connector uses the
/// URL's port (or the scheme's default) rather than one the resolver made up.
fn guard(addrs: Vec<SocketAddr>, private_ok: bool) -> Vec<SocketAddr> {
    addrs
        .into_iter()
        .filter(|addr| address_allowed(addr.ip(), private_ok))
        .map(|mut addr| {
            addr.set_port(0);
            addr
        })
        .collect()
}

// === impl FetchError ===

impl FetchError {
    /// A stable name for metrics and logs: `refused`, `timeout`, `connect`, `status`,
    /// `too_large`, `truncated` or `transport`.
    pub fn kind(&self) -> &'static str {
        match self {
            FetchError::Refused { .. } => "refused",
            FetchError::Timeout { .. } => "timeout",
            FetchError::Connect { .. } => "connect",
            FetchError::Status { .. } => "status",
            FetchError::TooLarge { .. } => "too_large",
            FetchError::Truncated { .. } => "truncated",
            FetchError::Transport { .. } => "transport",
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
            | FetchError::Transport { url, .. } => url,
        }
    }
}

/// `url` for errors and logs: user info (a password, perhaps) removed.
fn redact(url: &Url) -> String {
    if url.username().is_empty() && url.password().is_none() {
        return url.to_string();
    }
    let mut clean = url.clone();
    // Fails only for URLs that cannot have user info, which then have none to remove.
    let _ = clean.set_username("");
    let _ = clean.set_password(None);
    clean.to_string()
}

/// The messages of `e` and its sources, joined; a reqwest error's own top message is left out,
/// since it only repeats the URL.
fn describe(e: &(dyn StdError + 'static)) -> String {
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
fn chain<'a>(
    e: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(e), |err| (*err).source())
}

/// Maps an error from sending a request (before the response head); `connect` and `timeout` are
/// what the client says of it.
fn send_error(
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
    // A connect timeout is a connect failure: the overall deadline is ours, not the client's.
    if connect {
        FetchError::Connect { url, message }
    } else if timeout {
        FetchError::Timeout { url, after }
    } else {
        FetchError::Transport { url, message }
    }
}

/// Maps an error from reading the response body. reqwest reports every body error as a decode
/// error, so the source chain tells a cut connection from a corrupt encoding; hyper's body
/// errors carry the same I/O errors.
fn body_error(url: &str, e: &(dyn StdError + 'static)) -> FetchError {
    use std::io::ErrorKind;
    let url = url.to_owned();
    let message = describe(e);
    let cut = chain(e).any(|err| {
        err.downcast_ref::<reqwest::Error>()
            .is_some_and(reqwest::Error::is_body)
            || err.downcast_ref::<std::io::Error>().is_some_and(|io| {
                matches!(
                    io.kind(),
                    ErrorKind::UnexpectedEof
                        | ErrorKind::ConnectionReset
                        | ErrorKind::ConnectionAborted
                        | ErrorKind::BrokenPipe
                )
            })
    });
    if cut {
        FetchError::Truncated { url, message }
    } else {
        FetchError::Transport {
            url,
            message: format!("undecodable body: {message}"),
        }
    }
}

// === impl Fragment ===

impl Fragment {
    /// Whether the fragment is itself ESI: a `Surrogate-Control` header has a `content`
    /// directive listing `ESI/1.0` (case-insensitive, targeted or not).
    pub fn is_esi(&self) -> bool {
        self.headers
            .get_all(HeaderName::from_static("surrogate-control"))
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(surrogate_control_has_esi)
    }
}

/// Whether one `Surrogate-Control` value has `content="ESI/1.0"` among its directives, e.g.
/// `max-age=60, content="ESI/1.0 ESI-Inline/1.0";esi-proxy`.
fn surrogate_control_has_esi(value: &str) -> bool {
    split_unquoted(value, ',').into_iter().any(|directive| {
        let Some((name, rest)) = directive.split_once('=') else {
            return false;
        };
        if !name.trim().eq_ignore_ascii_case("content") {
            return false;
        }
        // Drop a `;target` suffix, then the quotes; the value lists capabilities.
        let capabilities = split_unquoted(rest, ';')
            .into_iter()
            .next()
            .unwrap_or_default();
        capabilities
            .trim()
            .trim_matches('"')
            .split_ascii_whitespace()
            .any(|c| c.eq_ignore_ascii_case("ESI/1.0"))
    })
}

/// `s` split at `sep` outside double quotes (header directives such as Surrogate-Control's).
pub(crate) fn split_unquoted(s: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut quoted = false;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                parts.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

// === impl Allowlist ===

impl Allowlist {
    fn new(entries: HashMap<BaseUrl, Access>) -> Self {
        let mut list = Allowlist::default();
        for (base, access) in entries {
            match base.ip() {
                Some(ip) => {
                    list.by_ip.insert((base.scheme, ip, base.port), access);
                }
                None => list.by_name.entry(base.host).or_default().push((
                    base.scheme,
                    base.port,
                    access,
                )),
            }
        }
        list
    }

    /// The entry for a name host; `url` keeps http(s) names lowercase already, so a copy is
    /// only made for one that is not.
    fn name(&self, scheme: Scheme, name: &str, port: u16) -> Option<Access> {
        let find = |name: &str| {
            self.by_name.get(name).and_then(|entries| {
                entries
                    .iter()
                    .find(|(s, p, _)| *s == scheme && *p == port)
                    .map(|(_, _, access)| *access)
            })
        };
        if name.bytes().any(|b| b.is_ascii_uppercase()) {
            find(&name.to_ascii_lowercase())
        } else {
            find(name)
        }
    }
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

// === impl SystemLookup ===

impl Lookup for SystemLookup {
    fn lookup(
        &self,
        host: &str,
        port: u16,
    ) -> BoxFuture<'static, std::io::Result<Vec<SocketAddr>>> {
        let host = host.to_owned();
        Box::pin(async move {
            Ok(tokio::net::lookup_host((host.as_str(), port))
                .await?
                .collect())
        })
    }
}

// === impl GuardedResolver ===

impl GuardedResolver {
    /// The addresses `name` may be connected to (port 0); [`Blocked`] when the guard dropped
    /// them all.
    fn resolve_guarded(
        &self,
        name: &str,
    ) -> BoxFuture<'static, Result<Vec<SocketAddr>, Box<dyn StdError + Send + Sync>>> {
        let host = name.to_ascii_lowercase();
        let private_ok = self.private_ok.contains(&host);
        let lookup = self.lookup.lookup(&host, 0);
        Box::pin(async move {
            let addrs = lookup.await?;
            if addrs.is_empty() {
                let e = std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("{host}: no addresses"),
                );
                return Err(e.into());
            }
            let found = addrs.len();
            let kept = guard(addrs, private_ok);
            if kept.len() < found {
                tracing::debug!(%host, dropped = found - kept.len(), "dropped non-public addresses");
            }
            if kept.is_empty() {
                return Err(Box::new(Blocked { host }) as Box<dyn StdError + Send + Sync>);
            }
            Ok(kept)
        })
    }
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let resolving = self.resolve_guarded(name.as_str());
        Box::pin(async move {
            let kept = resolving.await?;
            Ok(Box::new(kept.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

// === impl ResolveName ===

impl tower_service::Service<Name> for ResolveName {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = Box<dyn StdError + Send + Sync>;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let resolving = self.0.resolve_guarded(name.as_str());
        Box::pin(async move { resolving.await.map(Vec::into_iter) })
    }
}

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

// === impl HttpClient ===

impl HttpClient {
    /// Builds both clients from `config.server.origin` and `config.fetch`. Resolution goes
    /// through `lookup`, guarded so no connection is made to an address the host may not reach.
    ///
    /// # Errors
    /// [`FetchError::Transport`] naming the value when the origin or a host entry is not a
    /// valid base URL (config validation reports these first), or when a client cannot be built.
    pub fn new(config: &Config, lookup: Arc<dyn Lookup>) -> Result<HttpClient, FetchError> {
        let fetch = &config.fetch;
        let invalid = |value: &str, message: String| FetchError::Transport {
            url: value.to_owned(),
            message,
        };
        let origin =
            parse_base_url(&config.server.origin).map_err(|m| invalid(&config.server.origin, m))?;

        let mut allow = HashMap::new();
        let mut private_ok = HashSet::new();
        for entry in &fetch.hosts {
            let base = parse_base_url(&entry.url).map_err(|m| invalid(&entry.url, m))?;
            if entry.private_network {
                private_ok.insert(base.host.clone());
            }
            // A host listed twice is trusted if any of its entries says so.
            allow
                .entry(base)
                .and_modify(|a: &mut Access| a.trusted |= entry.trusted)
                .or_insert(Access {
                    trusted: entry.trusted,
                });
        }
        private_ok.insert(origin.host.clone());
        allow.insert(origin.clone(), Access { trusted: true });
        let allow = Allowlist::new(allow);

        let forward = fetch
            .forward_headers
            .iter()
            .map(|name| name.to_ascii_lowercase())
            .filter(|name| !NEVER_FORWARDED.contains(&name.as_str()))
            .chain(X_FORWARDED.iter().map(|name| (*name).to_owned()))
            .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
            .collect();

        let resolver = Arc::new(GuardedResolver { lookup, private_ok });
        let connect_timeout = Duration::from_millis(fetch.connect_timeout_ms);
        let plain = plain_pool(&resolver, connect_timeout, fetch.pool_idle_per_host);
        let origin_plain = plain_pool(&resolver, connect_timeout, fetch.pool_idle_per_host);
        let mut roots = Vec::new();
        for file in &fetch.ca_certs {
            let pem = std::fs::read(file).map_err(|e| invalid(file, format!("reading: {e}")))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| invalid(file, format!("not PEM certificates: {e}")))?;
            if certs.is_empty() {
                return Err(invalid(file, "holds no PEM certificate".into()));
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
                    .tcp_nodelay(true),
                reqwest::ClientBuilder::add_root_certificate,
            )
        };
        let build_error = |e: reqwest::Error| {
            invalid(
                &config.server.origin,
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

        Ok(HttpClient {
            shared: Arc::new(Shared {
                origin,
                allow,
                forward,
                max_fragment_bytes: fetch.max_fragment_bytes,
                layout_timeout: Duration::from_millis(fetch.layout_timeout_ms),
                plain,
                tls,
                origin_plain,
                origin_client,
            }),
        })
    }

    /// The origin every non-fragment request goes to.
    pub fn origin(&self) -> &BaseUrl {
        &self.shared.origin
    }

    /// Sends a request to the origin and returns the response once its head arrives: the body
    /// is streamed by the caller, not decompressed, and redirects are not followed. `headers`
    /// are sent as given, plus `Surrogate-Capability`.
    ///
    /// # Errors
    /// [`FetchError::Refused`] when `path_and_query` does not start with `/`,
    /// [`FetchError::Timeout`] when no head arrives within `fetch.layout_timeout_ms`,
    /// [`FetchError::Connect`] when the origin cannot be reached, [`FetchError::Transport`]
    /// for anything else.
    pub async fn send_origin(
        &self,
        method: Method,
        path_and_query: &str,
        mut headers: HeaderMap,
        body: reqwest::Body,
    ) -> Result<reqwest::Response, FetchError> {
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
        headers.insert(
            surrogate_capability_name(),
            HeaderValue::from_static(SURROGATE_CAPABILITY),
        );
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
            .body(body);
        match tokio::time::timeout(after, request.send()).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => Err(send_error(&text, &e, e.is_connect(), e.is_timeout(), after)),
            Err(_) => Err(FetchError::Timeout { url: text, after }),
        }
    }
}

impl Fetcher for HttpClient {
    fn fetch(&self, req: FragmentRequest) -> BoxFuture<'static, Result<Fragment, FetchError>> {
        let shared = Arc::clone(&self.shared);
        Box::pin(async move {
            let access = shared.check(&req.url)?;
            let text = redact(&req.url);
            let headers = shared.fragment_headers(&req.client_headers, access.trusted);
            let after = req.timeout;
            match tokio::time::timeout(after, shared.receive(req.url, &text, headers, after)).await
            {
                Ok(result) => result,
                Err(_) => Err(FetchError::Timeout { url: text, after }),
            }
        })
    }

    /// The URL must be http(s) without user info, and its `scheme://host:port` the origin
    /// (trusted) or a `fetch.hosts` entry (trusted as configured). An IP host that is not
    /// public (loopback, private, link-local, metadata, ...) is allowed only when listed exactly.
    fn check(&self, url: &Url) -> Result<Access, FetchError> {
        self.shared.check(url)
    }
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
        out.insert(
            surrogate_capability_name(),
            HeaderValue::from_static(SURROGATE_CAPABILITY),
        );
        out
    }

    /// [`HttpClient::send_origin`] for an `http` origin: the request as reqwest would make it,
    /// on a connection from the origin's [`PlainPool`], the response as a reqwest one whose
    /// body returns the connection when read to the end. The caller applies the deadline.
    async fn send_origin_plain(
        &self,
        url: &Url,
        text: &str,
        method: Method,
        mut headers: HeaderMap,
        body: reqwest::Body,
        after: Duration,
    ) -> Result<reqwest::Response, FetchError> {
        // `url` is normalised (dot segments, percent-encoding) as reqwest would send it.
        let authority = &url[Position::BeforeHost..Position::AfterPort];
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
        let response = response.map(|body| {
            if body.is_end_stream() {
                pool.checkin(authority, connection);
                reqwest::Body::wrap(body)
            } else {
                reqwest::Body::wrap(CheckinOnEnd {
                    body,
                    connection: Some((Arc::clone(pool), authority.to_owned(), connection)),
                })
            }
        });
        Ok(reqwest::Response::from(response))
    }

    /// Sends a checked fragment request and collects its body; the caller applies the deadline.
    async fn receive(
        &self,
        url: Url,
        text: &str,
        headers: HeaderMap,
        after: Duration,
    ) -> Result<Fragment, FetchError> {
        if url.scheme() == "https" {
            self.receive_tls(url, text, headers, after).await
        } else {
            self.receive_plain(&url, text, headers, after).await
        }
    }

    /// [`Shared::receive`] for `http`: hyper connections from the [`PlainPool`], the request
    /// and the decoding as reqwest makes and does them.
    async fn receive_plain(
        &self,
        url: &Url,
        text: &str,
        mut headers: HeaderMap,
        after: Duration,
    ) -> Result<Fragment, FetchError> {
        let limit = self.max_fragment_bytes;
        let too_large = || FetchError::TooLarge {
            url: text.to_owned(),
            limit,
        };
        let invalid = |message: String| FetchError::Transport {
            url: text.to_owned(),
            message,
        };
        // `url` leaves out the scheme's default port, as `Host` does.
        let authority = &url[Position::BeforeHost..Position::AfterPort];
        let target: Uri = url[Position::BeforePath..Position::AfterQuery]
            .parse()
            .map_err(|e| invalid(format!("not a valid request URI: {e}")))?;
        // What reqwest adds unless the request has them: its default `Accept`, the encodings it
        // decodes (the client's `Accept-Encoding` is never forwarded), and `Host`.
        if let Entry::Vacant(entry) = headers.entry(ACCEPT) {
            entry.insert(HeaderValue::from_static("*/*"));
        }
        if let Entry::Vacant(entry) = headers.entry(ACCEPT_ENCODING) {
            entry.insert(HeaderValue::from_static("gzip,br"));
        }
        if let Entry::Vacant(entry) = headers.entry(HOST) {
            let host = HeaderValue::from_str(authority)
                .map_err(|e| invalid(format!("not a valid Host: {e}")))?;
            entry.insert(host);
        }
        let mut request = http::Request::new(Empty::new());
        *request.uri_mut() = target;
        *request.headers_mut() = headers;
        let (response, connection) =
            self.plain
                .send(authority, request)
                .await
                .map_err(|e| match e {
                    SendError::Connect(e) => send_error(text, &*e, true, false, after),
                    SendError::Request(e) => send_error(text, &e, false, false, after),
                })?;
        let (parts, mut body) = response.into_parts();
        let status = parts.status;
        if !status.is_success() {
            return Err(FetchError::Status {
                url: text.to_owned(),
                status,
            });
        }
        let mut headers = parts.headers;
        let decoder = match headers.get(CONTENT_ENCODING).map(HeaderValue::as_bytes) {
            Some(b"gzip") => Some(Decoder::Gzip(Box::default())),
            Some(b"br") => Some(Decoder::Brotli(Box::new(brotli::DecompressorWriter::new(
                CappedSink::new(limit),
                8 * 1024,
            )))),
            _ => None,
        };
        let Some(mut decoder) = decoder else {
            let declared = body.size_hint().exact();
            if declared.is_some_and(|len| len > limit as u64) {
                return Err(too_large());
            }
            let capacity =
                declared.map_or(0, |len| usize::try_from(len).unwrap_or(limit).min(limit));
            let mut collected = Collected::Empty;
            let mut total = 0usize;
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| body_error(text, &e))?;
                let Ok(chunk) = frame.into_data() else {
                    continue;
                };
                total = total.saturating_add(chunk.len());
                if total > limit {
                    return Err(too_large());
                }
                if !chunk.is_empty() {
                    collected.push(chunk, capacity);
                }
            }
            self.plain.checkin(authority, connection);
            return Ok(Fragment {
                cache: None,
                parsed: None,
                status,
                headers,
                body: collected.into_bytes(),
            });
        };
        // Decoded, the declared length no longer describes the body.
        headers.remove(CONTENT_ENCODING);
        headers.remove(CONTENT_LENGTH);
        let mut decoded = Vec::new();
        let mut encoded_bytes = 0usize;
        let decode_error = |e: DecodeError| match e {
            DecodeError::TooLarge => too_large(),
            DecodeError::Cut(message) => FetchError::Truncated {
                url: text.to_owned(),
                message,
            },
            DecodeError::Corrupt(message) => FetchError::Transport {
                url: text.to_owned(),
                message: format!("undecodable body: {message}"),
            },
        };
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| body_error(text, &e))?;
            let Ok(chunk) = frame.into_data() else {
                continue;
            };
            encoded_bytes = encoded_bytes.saturating_add(chunk.len());
            decoder
                .push(&chunk, &mut decoded, limit)
                .map_err(decode_error)?;
        }
        self.plain.checkin(authority, connection);
        // An empty body stays empty whatever its encoding claims (as reqwest has it).
        if encoded_bytes > 0 {
            decoder.finish(&mut decoded).map_err(decode_error)?;
        }
        Ok(Fragment {
            cache: None,
            parsed: None,
            status,
            headers,
            body: Bytes::from(decoded),
        })
    }

    /// [`Shared::receive`] for `https`, through reqwest.
    async fn receive_tls(
        &self,
        url: Url,
        text: &str,
        headers: HeaderMap,
        after: Duration,
    ) -> Result<Fragment, FetchError> {
        let limit = self.max_fragment_bytes;
        let too_large = || FetchError::TooLarge {
            url: text.to_owned(),
            limit,
        };
        let mut response = self
            .tls
            .get(url)
            .headers(headers)
            .send()
            .await
            .map_err(|e| send_error(text, &e, e.is_connect(), e.is_timeout(), after))?;
        let status = response.status();
        if !status.is_success() {
            return Err(FetchError::Status {
                url: text.to_owned(),
                status,
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
            parsed: None,
            status,
            headers,
            body: body.into_bytes(),
        })
    }
}

/// A pool for `http` fragments or an `http` origin, its connections set up as reqwest sets up
/// its own: the guarded resolver, TCP_NODELAY, TCP keepalive.
fn plain_pool<B>(
    resolver: &Arc<GuardedResolver>,
    connect_timeout: Duration,
    max_idle_per_host: usize,
) -> Arc<PlainPool<B>> {
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
        max_idle_per_host,
        purging: AtomicBool::new(false),
    })
}

// === impl PlainPool ===

impl<B> fmt::Debug for PlainPool<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlainPool")
            .field("max_idle_per_host", &self.max_idle_per_host)
            .finish_non_exhaustive()
    }
}

impl<B> PlainPool<B>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    /// Sends `request` (origin-form URI, `Host` set) to `authority` on an idle connection, or
    /// on a new one. A request an idle connection turned out to be closed for is sent again on
    /// another, as it never reached the server. Returns the connection with the response, to
    /// be checked back in once the body is read.
    async fn send(
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

    /// An idle connection to `authority` ready for a request, the most recently used first.
    fn checkout(&self, authority: &str) -> Option<SendRequest<B>> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let waiting = idle.get_mut(authority)?;
        // Closed or expired ones are dropped on the way, which closes them.
        while let Some(conn) = waiting.pop() {
            if conn.sender.is_ready() && conn.since.elapsed() < POOL_IDLE_TIMEOUT {
                return Some(conn.sender);
            }
        }
        None
    }

    /// Puts a connection whose response has been read whole back for the next request. One
    /// the server is closing, or that would be over the per-host bound, is dropped.
    fn checkin(self: &Arc<Self>, authority: &str, sender: SendRequest<B>) {
        if sender.is_closed() || self.max_idle_per_host == 0 {
            return;
        }
        if !sender.is_ready() {
            // Its task has not yet seen the end of the response: return it once it has.
            let pool = Arc::clone(self);
            let authority = authority.to_owned();
            let mut sender = sender;
            tokio::spawn(async move {
                if sender.ready().await.is_ok() {
                    pool.checkin(&authority, sender);
                }
            });
            return;
        }
        self.start_purging();
        let conn = IdleConnection {
            sender,
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

    /// Opens a connection to `authority` and starts the task that drives it.
    async fn connect(&self, authority: &str) -> Result<SendRequest<B>, SendError> {
        let dst: Uri = format!("http://{authority}/")
            .parse()
            .map_err(|e: http::uri::InvalidUri| SendError::Connect(e.into()))?;
        let mut connector = self.connector.clone();
        futures::future::poll_fn(|cx| tower_service::Service::poll_ready(&mut connector, cx))
            .await
            .map_err(SendError::Connect)?;
        let io = tower_service::Service::call(&mut connector, dst)
            .await
            .map_err(SendError::Connect)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| SendError::Connect(e.into()))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "pooled connection ended");
            }
        });
        Ok(sender)
    }

    /// Starts, once, the task that closes connections idle longer than [`POOL_IDLE_TIMEOUT`];
    /// it ends with the pool.
    fn start_purging(self: &Arc<Self>) {
        if self.purging.swap(true, Ordering::Relaxed) {
            return;
        }
        let pool = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(POOL_IDLE_TIMEOUT).await;
                let Some(pool) = pool.upgrade() else {
                    return;
                };
                let mut idle = pool.idle.lock().unwrap_or_else(PoisonError::into_inner);
                idle.retain(|_, waiting| {
                    waiting.retain(|conn| {
                        !conn.sender.is_closed() && conn.since.elapsed() < POOL_IDLE_TIMEOUT
                    });
                    !waiting.is_empty()
                });
            }
        });
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
        match &frame {
            None => {
                if let Some((pool, authority, connection)) = this.connection.take() {
                    pool.checkin(&authority, connection);
                }
            }
            Some(Err(_)) => this.connection = None,
            Some(Ok(_)) => {}
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

// === impl Decoder ===

impl Decoder {
    /// Decodes `input` onto `out`, which may not grow past `limit`.
    fn push(&mut self, input: &[u8], out: &mut Vec<u8>, limit: usize) -> Result<(), DecodeError> {
        match self {
            Decoder::Gzip(gzip) => gzip.push(input, out, limit),
            Decoder::Brotli(brotli) => {
                // Bytes after the end of the stream are ignored.
                let written = brotli.write(input);
                let sink = brotli.get_mut();
                if sink.over {
                    return Err(DecodeError::TooLarge);
                }
                written.map_err(|e| DecodeError::Corrupt(format!("invalid brotli data: {e}")))?;
                out.append(&mut sink.buf);
                Ok(())
            }
        }
    }

    /// Checks that the stream ended where the body did.
    fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), DecodeError> {
        match self {
            Decoder::Gzip(gzip) => gzip.finish(),
            Decoder::Brotli(brotli) => {
                let closed = brotli.close();
                let sink = brotli.get_mut();
                if sink.over {
                    return Err(DecodeError::TooLarge);
                }
                closed.map_err(|_| DecodeError::Cut("brotli stream ended early".into()))?;
                out.append(&mut sink.buf);
                Ok(())
            }
        }
    }
}

// === impl GzipDecoder ===

impl Default for GzipDecoder {
    fn default() -> Self {
        Self {
            state: GzipState::Header,
            header: Vec::new(),
            inflate: flate2::Decompress::new(false),
            crc: flate2::Crc::new(),
            trailer: Vec::with_capacity(8),
        }
    }
}

impl GzipDecoder {
    /// Longest member header kept while it is incomplete (a name or comment with no end).
    const MAX_HEADER_BYTES: usize = 64 * 1024;

    fn push(
        &mut self,
        mut input: &[u8],
        out: &mut Vec<u8>,
        limit: usize,
    ) -> Result<(), DecodeError> {
        while !input.is_empty() {
            match self.state {
                GzipState::Header => {
                    let before = self.header.len();
                    self.header.extend_from_slice(input);
                    let Some(len) = gzip_header_len(&self.header)? else {
                        if self.header.len() > Self::MAX_HEADER_BYTES {
                            return Err(DecodeError::Corrupt("gzip header too long".into()));
                        }
                        return Ok(());
                    };
                    input = input.get(len.saturating_sub(before)..).unwrap_or_default();
                    self.header.clear();
                    self.inflate.reset(false);
                    self.crc.reset();
                    self.state = GzipState::Deflate;
                }
                GzipState::Deflate => {
                    let (used, done) = self.inflate(input, out, limit)?;
                    input = input.get(used..).unwrap_or_default();
                    if done {
                        self.state = GzipState::Trailer;
                    } else if used == 0 {
                        // No progress on the input left: it is all held by the inflater.
                        return Ok(());
                    }
                }
                GzipState::Trailer => {
                    let take = (8 - self.trailer.len()).min(input.len());
                    let (part, rest) = input.split_at(take);
                    self.trailer.extend_from_slice(part);
                    input = rest;
                    if self.trailer.len() == 8 {
                        let word = |at: usize| {
                            self.trailer
                                .get(at..at + 4)
                                .and_then(|b| b.try_into().ok())
                                .map_or(0, u32::from_le_bytes)
                        };
                        if word(0) != self.crc.sum() {
                            return Err(DecodeError::Corrupt("gzip CRC mismatch".into()));
                        }
                        if word(4) != self.crc.amount() {
                            return Err(DecodeError::Corrupt("gzip length mismatch".into()));
                        }
                        self.trailer.clear();
                        self.state = GzipState::Header;
                    }
                }
            }
        }
        Ok(())
    }

    /// Inflates from `input` until it is used up or the member's deflate stream ends: the bytes
    /// used and whether it ended.
    fn inflate(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        limit: usize,
    ) -> Result<(usize, bool), DecodeError> {
        let mut used = 0usize;
        loop {
            if out.capacity() - out.len() < 4096 {
                out.reserve(16 * 1024);
            }
            let (in_before, out_before) = (self.inflate.total_in(), out.len());
            let status = self
                .inflate
                .decompress_vec(
                    input.get(used..).unwrap_or_default(),
                    out,
                    flate2::FlushDecompress::None,
                )
                .map_err(|e| DecodeError::Corrupt(format!("invalid deflate data: {e}")))?;
            let consumed =
                usize::try_from(self.inflate.total_in() - in_before).unwrap_or(usize::MAX);
            used = used.saturating_add(consumed).min(input.len());
            let produced = out.get(out_before..).unwrap_or_default();
            self.crc.update(produced);
            let produced = produced.len();
            if out.len() > limit {
                return Err(DecodeError::TooLarge);
            }
            if status == flate2::Status::StreamEnd {
                return Ok((used, true));
            }
            let output_full = out.len() == out.capacity();
            if (consumed == 0 && produced == 0) || (used == input.len() && !output_full) {
                return Ok((used, false));
            }
        }
    }

    fn finish(&self) -> Result<(), DecodeError> {
        if self.state == GzipState::Header && self.header.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Cut("gzip stream ended early".into()))
        }
    }
}

/// The length of the gzip member header at the start of `buf`, `None` while it is incomplete.
fn gzip_header_len(buf: &[u8]) -> Result<Option<usize>, DecodeError> {
    const FHCRC: u8 = 0x02;
    const FEXTRA: u8 = 0x04;
    const FNAME: u8 = 0x08;
    const FCOMMENT: u8 = 0x10;
    let corrupt = |what: &str| Err(DecodeError::Corrupt(format!("invalid gzip header: {what}")));
    let byte = |at: usize| buf.get(at).copied();
    if byte(0).is_some_and(|b| b != 0x1f) || byte(1).is_some_and(|b| b != 0x8b) {
        return corrupt("not gzip");
    }
    if byte(2).is_some_and(|b| b != 8) {
        return corrupt("not deflate");
    }
    let Some(flags) = byte(3) else {
        return Ok(None);
    };
    if flags & 0xe0 != 0 {
        return corrupt("reserved flags");
    }
    let mut end = 10;
    if flags & FEXTRA != 0 {
        let (Some(lo), Some(hi)) = (byte(end), byte(end + 1)) else {
            return Ok(None);
        };
        end += 2 + usize::from(u16::from_le_bytes([lo, hi]));
    }
    for flag in [FNAME, FCOMMENT] {
        if flags & flag != 0 {
            let Some(zero) = buf.get(end..).and_then(|rest| memchr::memchr(0, rest)) else {
                return Ok(None);
            };
            end += zero + 1;
        }
    }
    if flags & FHCRC != 0 {
        end += 2;
    }
    Ok((buf.len() >= end).then_some(end))
}

// === impl CappedSink ===

impl CappedSink {
    fn new(limit: usize) -> Self {
        Self {
            buf: Vec::new(),
            written: 0,
            limit,
            over: false,
        }
    }
}

impl std::io::Write for CappedSink {
    /// Takes all of `data`, or fails if that would make the total over the limit.
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.written.saturating_add(data.len()) > self.limit {
            self.over = true;
            return Err(std::io::Error::other("decoded body over the limit"));
        }
        self.written += data.len();
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HostConfig;

    fn base(scheme: Scheme, host: &str, port: u16) -> BaseUrl {
        BaseUrl {
            scheme,
            host: host.to_owned(),
            port,
        }
    }

    #[test]
    fn parse_base_url_accepts() {
        let cases: &[(&str, BaseUrl, &str)] = &[
            (
                "http://example.com",
                base(Scheme::Http, "example.com", 80),
                "http://example.com:80",
            ),
            (
                "http://example.com/",
                base(Scheme::Http, "example.com", 80),
                "http://example.com:80",
            ),
            (
                "https://Example.COM",
                base(Scheme::Https, "example.com", 443),
                "https://example.com:443",
            ),
            (
                "HTTP://a.test:8080/",
                base(Scheme::Http, "a.test", 8080),
                "http://a.test:8080",
            ),
            (
                "https://a.test:80",
                base(Scheme::Https, "a.test", 80),
                "https://a.test:80",
            ),
            (
                "http://127.0.0.1:8081",
                base(Scheme::Http, "127.0.0.1", 8081),
                "http://127.0.0.1:8081",
            ),
            (
                "http://[::1]:9000/",
                base(Scheme::Http, "::1", 9000),
                "http://[::1]:9000",
            ),
            (
                "http://[FE80::1]",
                base(Scheme::Http, "fe80::1", 80),
                "http://[fe80::1]:80",
            ),
            // `url` normalises IPv4 written other ways, so the allowlist sees the real address.
            (
                "http://0x7f.1:81",
                base(Scheme::Http, "127.0.0.1", 81),
                "http://127.0.0.1:81",
            ),
        ];
        for (input, want, shown) in cases {
            let got = parse_base_url(input);
            assert_eq!(got.as_ref(), Ok(want), "input: {input}");
            let got = got.expect("checked above");
            assert_eq!(got.to_string(), *shown, "input: {input}");
            let url = Url::parse(&format!("{shown}/")).expect("test URLs parse");
            assert_eq!(got.to_url(), url, "input: {input}");
            assert!(got.matches(&got.to_url()), "input: {input}");
        }
    }

    #[test]
    fn parse_base_url_refuses() {
        let cases: &[(&str, &str)] = &[
            ("example.com", "not a URL"),
            ("", "not a URL"),
            ("ftp://example.com", "scheme must be http or https"),
            ("file:///etc/passwd", "scheme must be http or https"),
            ("http://user@example.com", "user info"),
            ("http://user:pw@example.com/", "user info"),
            ("http://example.com/path", "path"),
            ("http://example.com//", "path"),
            ("http://example.com\\", "path"),
            ("http://example.com/?q=1", "query"),
            ("http://example.com?q=1", "query"),
            ("http://example.com#top", "fragment"),
            ("http://", "no valid host"),
            ("http:///", "no valid host"),
            ("http://exa mple.com", "no valid host"),
            ("http://example.com:99999", "invalid port"),
            ("http://[::1", "invalid IPv6"),
        ];
        for (input, want) in cases {
            match parse_base_url(input) {
                Ok(got) => panic!("input: {input}: accepted as {got}"),
                Err(message) => {
                    assert!(
                        message.contains(want),
                        "input: {input}: {message:?} should mention {want:?}"
                    );
                    assert!(
                        message.contains(&format!("{input:?}")),
                        "input: {input}: {message:?} should name the value"
                    );
                }
            }
        }
    }

    #[test]
    fn base_url_matches() {
        let origin = base(Scheme::Http, "a.test", 80);
        let cases: &[(&str, bool)] = &[
            ("http://a.test/x?y", true),
            ("http://A.TEST:80/", true),
            ("http://a.test:8080/", false),
            ("https://a.test/", false),
            ("http://b.test/", false),
            ("http://a.test.evil/", false),
            ("ftp://a.test/", false),
        ];
        for (url, want) in cases {
            let url = Url::parse(url).expect("test URLs parse");
            assert_eq!(origin.matches(&url), *want, "url: {url}");
        }
    }

    #[test]
    fn ip_classes() {
        use Special::*;
        let cases: &[(&str, Option<Special>)] = &[
            ("8.8.8.8", None),
            ("1.1.1.1", None),
            ("0.0.0.0", Some(Unspecified)),
            ("0.1.2.3", Some(Unspecified)),
            ("127.0.0.1", Some(Loopback)),
            ("127.255.255.254", Some(Loopback)),
            ("10.0.0.1", Some(Private)),
            ("172.15.255.255", None),
            ("172.16.0.1", Some(Private)),
            ("172.31.255.255", Some(Private)),
            ("172.32.0.0", None),
            ("192.168.1.1", Some(Private)),
            ("192.169.0.1", None),
            ("169.254.0.1", Some(LinkLocal)),
            ("169.254.169.254", Some(Metadata)),
            ("169.254.170.2", Some(Metadata)),
            ("100.100.100.200", Some(Metadata)),
            ("100.63.255.255", None),
            ("100.64.0.1", Some(Shared)),
            ("100.127.255.255", Some(Shared)),
            ("100.128.0.0", None),
            ("224.0.0.1", Some(Multicast)),
            ("239.255.255.255", Some(Multicast)),
            ("240.0.0.1", Some(Reserved)),
            ("255.255.255.255", Some(Broadcast)),
            ("2606:4700::1111", None),
            ("::", Some(Unspecified)),
            ("::1", Some(Loopback)),
            ("fe80::1", Some(LinkLocal)),
            ("febf::1", Some(LinkLocal)),
            ("fec0::1", Some(Private)),
            ("fc00::1", Some(UniqueLocal)),
            ("fd12:3456::1", Some(UniqueLocal)),
            ("fd00:ec2::254", Some(Metadata)),
            ("ff02::1", Some(Multicast)),
            ("::ffff:127.0.0.1", Some(Loopback)),
            ("::ffff:10.1.2.3", Some(Private)),
            ("::ffff:169.254.169.254", Some(Metadata)),
            ("::ffff:8.8.8.8", None),
            ("::127.0.0.1", Some(Loopback)),
            ("64:ff9b::192.168.0.1", Some(Private)),
            ("64:ff9b::8.8.8.8", None),
        ];
        for (ip, want) in cases {
            let parsed: IpAddr = ip.parse().expect("test addresses parse");
            assert_eq!(classify(parsed), *want, "ip: {ip}");
        }
    }

    #[test]
    fn resolved_addresses_guarded() {
        // (address, allowed for an ordinary name, allowed for a private-network name)
        let cases: &[(&str, bool, bool)] = &[
            ("93.184.216.34:80", true, true),
            ("[2606:4700::1111]:443", true, true),
            ("127.0.0.1:8080", false, true),
            ("10.0.0.5:80", false, true),
            ("[::1]:80", false, true),
            ("[fd12::1]:80", false, true),
            ("[::ffff:127.0.0.1]:80", false, true),
            ("100.64.1.1:80", false, true),
            ("169.254.169.254:80", false, false),
            ("[fd00:ec2::254]:80", false, false),
            ("[::ffff:169.254.169.254]:80", false, false),
        ];
        for (addr, public, private) in cases {
            let addr: SocketAddr = addr.parse().expect("test addresses parse");
            for (private_ok, want) in [(false, *public), (true, *private)] {
                let kept = guard(vec![addr], private_ok);
                assert_eq!(
                    !kept.is_empty(),
                    want,
                    "addr: {addr}, private_ok: {private_ok}"
                );
                assert!(
                    kept.iter().all(|a| a.port() == 0),
                    "addr: {addr}: port reset"
                );
            }
        }
    }

    fn client(hosts: &[(&str, bool, bool)]) -> HttpClient {
        let mut config = Config::default();
        config.server.origin = "http://origin.test:8081".into();
        config.fetch.forward_headers = vec![
            "Accept-Language".into(),
            "user-agent".into(),
            "cookie".into(),
        ];
        config.fetch.hosts = hosts
            .iter()
            .map(|(url, trusted, private_network)| HostConfig {
                url: (*url).to_owned(),
                trusted: *trusted,
                private_network: *private_network,
            })
            .collect();
        HttpClient::new(&config, Arc::new(SystemLookup)).expect("test config is valid")
    }

    #[test]
    fn allowlist() {
        let client = client(&[
            ("https://frag.test", false, false),
            ("http://trusted.test:9000", true, false),
            ("http://10.1.2.3:8000", false, false),
            ("http://[fd00:ec2::254]:80", false, false),
        ]);
        // (url, Ok(trusted) or Err(part of the reason))
        let cases: &[(&str, Result<bool, &str>)] = &[
            ("http://origin.test:8081/a", Ok(true)),
            ("http://ORIGIN.test:8081/a?b#c", Ok(true)),
            ("https://frag.test/x", Ok(false)),
            ("https://frag.test:443/x", Ok(false)),
            ("http://trusted.test:9000/", Ok(true)),
            ("http://10.1.2.3:8000/f", Ok(false)),
            ("http://[fd00:ec2::254]/latest", Ok(false)),
            ("http://origin.test:8082/a", Err("host not in allowlist")),
            ("https://origin.test:8081/a", Err("host not in allowlist")),
            ("http://frag.test/x", Err("host not in allowlist")),
            ("https://frag.test.evil.test/", Err("host not in allowlist")),
            ("http://trusted.test/", Err("host not in allowlist")),
            (
                "http://10.1.2.3:8001/f",
                Err("10.1.2.3 is a private address"),
            ),
            (
                "http://127.0.0.1:8081/",
                Err("127.0.0.1 is a loopback address"),
            ),
            (
                "http://2130706433:8081/",
                Err("127.0.0.1 is a loopback address"),
            ),
            (
                "http://169.254.169.254/latest/meta-data/",
                Err("169.254.169.254 is a cloud metadata address"),
            ),
            (
                "http://[::ffff:169.254.169.254]/",
                Err("cloud metadata address"),
            ),
            ("http://[::1]:8081/", Err("::1 is a loopback address")),
            ("http://100.64.0.1/", Err("shared (CGNAT) address")),
            ("http://8.8.8.8/", Err("host not in allowlist")),
            ("http://user@origin.test:8081/", Err("user info")),
            ("http://:pw@origin.test:8081/", Err("user info")),
            ("ftp://origin.test:8081/", Err("scheme \"ftp\"")),
            ("data:text/html,hi", Err("scheme \"data\"")),
        ];
        for (url, want) in cases {
            let parsed = Url::parse(url).expect("test URLs parse");
            match (client.check(&parsed), want) {
                (Ok(access), Ok(trusted)) => assert_eq!(access.trusted, *trusted, "url: {url}"),
                (Err(FetchError::Refused { url: shown, reason }), Err(part)) => {
                    assert!(
                        reason.contains(part),
                        "url: {url}: reason {reason:?} should contain {part:?}"
                    );
                    assert!(
                        !shown.contains("pw"),
                        "url: {url}: password shown in {shown:?}"
                    );
                }
                (got, _) => panic!("url: {url}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn header_policy() {
        let client = client(&[]);
        let mut from_client = HeaderMap::new();
        for (name, value) in [
            ("accept-language", "de"),
            ("accept-language", "en;q=0.5"),
            ("user-agent", "test"),
            ("cookie", "session=1"),
            ("authorization", "Bearer t"),
            ("proxy-authorization", "Basic x"),
            ("range", "bytes=0-1"),
            ("if-none-match", "\"e\""),
            ("if-modified-since", "Mon, 01 Jan 2024 00:00:00 GMT"),
            ("accept-encoding", "zstd"),
            ("connection", "close"),
            ("host", "proxy.test"),
            ("surrogate-capability", "evil=\"ESI/1.0\""),
            ("x-forwarded-for", "192.0.2.1"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "www.test"),
            ("x-custom", "no"),
        ] {
            from_client.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        let always: &[(&str, &[&str])] = &[
            ("accept-language", &["de", "en;q=0.5"]),
            ("user-agent", &["test"]),
            ("x-forwarded-for", &["192.0.2.1"]),
            ("x-forwarded-proto", &["https"]),
            ("x-forwarded-host", &["www.test"]),
            ("surrogate-capability", &[SURROGATE_CAPABILITY]),
            ("proxy-authorization", &[]),
            ("range", &[]),
            ("if-none-match", &[]),
            ("if-modified-since", &[]),
            ("accept-encoding", &[]),
            ("connection", &[]),
            ("host", &[]),
            ("x-custom", &[]),
        ];
        let credentials: &[(&str, &[&str])] =
            &[("cookie", &["session=1"]), ("authorization", &["Bearer t"])];
        for trusted in [false, true] {
            let sent = client.shared.fragment_headers(&from_client, trusted);
            let mut want: Vec<(&str, &[&str])> = always.to_vec();
            for (name, values) in credentials {
                want.push((name, if trusted { values } else { &[] }));
            }
            for (name, values) in want {
                let got: Vec<&str> = sent
                    .get_all(name)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .collect();
                assert_eq!(got, values, "header {name}, trusted: {trusted}");
            }
        }
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
                parsed: None,
                status: StatusCode::OK,
                headers,
                body: Bytes::new(),
            };
            assert_eq!(fragment.is_esi(), *want, "values: {values:?}");
        }
    }

    #[test]
    fn error_kinds() {
        let url = || "http://a.test/".to_owned();
        let cases: Vec<(FetchError, &str, bool)> = vec![
            (
                FetchError::Refused {
                    url: url(),
                    reason: "r".into(),
                },
                "refused",
                false,
            ),
            (
                FetchError::Timeout {
                    url: url(),
                    after: Duration::from_millis(5),
                },
                "timeout",
                true,
            ),
            (
                FetchError::Connect {
                    url: url(),
                    message: "m".into(),
                },
                "connect",
                false,
            ),
            (
                FetchError::Status {
                    url: url(),
                    status: StatusCode::NOT_FOUND,
                },
                "status",
                false,
            ),
            (
                FetchError::TooLarge {
                    url: url(),
                    limit: 1,
                },
                "too_large",
                false,
            ),
            (
                FetchError::Truncated {
                    url: url(),
                    message: "m".into(),
                },
                "truncated",
                false,
            ),
            (
                FetchError::Transport {
                    url: url(),
                    message: "m".into(),
                },
                "transport",
                false,
            ),
        ];
        for (error, kind, timeout) in cases {
            assert_eq!(error.kind(), kind, "{error}");
            assert_eq!(error.is_timeout(), timeout, "{error}");
            assert_eq!(error.url(), "http://a.test/", "{error}");
            assert!(error.to_string().starts_with("http://a.test/: "), "{error}");
        }
    }

    #[test]
    fn futures_are_send() {
        fn send<T: Send>(_: &T) {}
        let client = client(&[]);
        let origin =
            client.send_origin(Method::GET, "/", HeaderMap::new(), reqwest::Body::from(""));
        send(&origin);
        let url = Url::parse("http://origin.test:8081/f").expect("valid");
        let headers = Arc::new(HeaderMap::new());
        let req = FragmentRequest {
            url,
            client_headers: headers,
            timeout: Duration::from_secs(1),
        };
        send(&client.fetch(req));
    }

    #[test]
    fn body_collected_without_copy_when_one_chunk() {
        let one = Bytes::from_static(b"only chunk");
        let mut body = Collected::Empty;
        body.push(one.clone(), 100);
        let got = body.into_bytes();
        assert_eq!(
            got.as_ptr(),
            one.as_ptr(),
            "a single chunk is returned as is"
        );

        let mut body = Collected::Empty;
        for chunk in ["ab", "cd", "ef"] {
            body.push(Bytes::from_static(chunk.as_bytes()), 6);
        }
        assert_eq!(body.into_bytes(), Bytes::from_static(b"abcdef"));
        assert_eq!(Collected::Empty.into_bytes(), Bytes::new());
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(data).expect("writing to a Vec");
        encoder.finish().expect("writing to a Vec")
    }

    fn brotli(data: &[u8]) -> Vec<u8> {
        let mut encoder = brotli::CompressorWriter::new(Vec::new(), 4096, 5, 22);
        encoder.write_all(data).expect("writing to a Vec");
        encoder.into_inner()
    }

    /// Decodes `input` fed in pieces of `piece` bytes, as a body arriving in chunks would be.
    fn decode(
        mut decoder: Decoder,
        input: &[u8],
        piece: usize,
        limit: usize,
    ) -> Result<Vec<u8>, DecodeError> {
        let mut out = Vec::new();
        for chunk in input.chunks(piece) {
            decoder.push(chunk, &mut out, limit)?;
        }
        decoder.finish(&mut out)?;
        Ok(out)
    }

    /// (what, input, limit, the body or the kind of error)
    type DecodeCase<'a> = (&'a str, Vec<u8>, usize, Result<&'a [u8], &'a str>);

    /// What a decode came to: the body, or the kind of error.
    fn outcome(result: Result<Vec<u8>, DecodeError>) -> Result<Vec<u8>, &'static str> {
        result.map_err(|e| match e {
            DecodeError::TooLarge => "too large",
            DecodeError::Cut(_) => "cut",
            DecodeError::Corrupt(_) => "corrupt",
        })
    }

    #[test]
    fn gzip_decoding() {
        let text = b"<p>hello, compressed world</p>".repeat(200);
        let member = gzip(&text);
        let n = member.len();
        let with = |edit: &dyn Fn(&mut Vec<u8>)| {
            let mut bytes = member.clone();
            edit(&mut bytes);
            bytes
        };
        // Header with a name, a comment and an extra field; and with a header CRC.
        let mut named = flate2::GzBuilder::new()
            .filename("f.html")
            .comment("made by a test")
            .extra(vec![1, 2, 3, 4])
            .write(Vec::new(), flate2::Compression::fast());
        named.write_all(&text).expect("writing to a Vec");
        let named = named.finish().expect("writing to a Vec");
        let header_crc = with(&|b| {
            b[3] |= 0x02;
            b.splice(10..10, [0xab, 0xcd]);
        });
        let two = [member.clone(), member.clone()].concat();
        let twice = text.repeat(2);
        let limit = text.len();
        let cases: Vec<DecodeCase> = vec![
            ("one member", member.clone(), limit, Ok(&text)),
            ("named header", named, limit, Ok(&text)),
            ("header CRC", header_crc, limit, Ok(&text)),
            ("two members", two.clone(), 2 * limit, Ok(&twice)),
            ("empty member", gzip(b""), limit, Ok(b"")),
            ("no input", Vec::new(), limit, Ok(b"")),
            (
                "over the limit",
                member.clone(),
                limit - 1,
                Err("too large"),
            ),
            ("second member over", two, limit + 1, Err("too large")),
            ("cut in the header", member[..5].to_vec(), limit, Err("cut")),
            (
                "cut in the data",
                member[..n / 2].to_vec(),
                limit,
                Err("cut"),
            ),
            (
                "cut in the trailer",
                member[..n - 3].to_vec(),
                limit,
                Err("cut"),
            ),
            (
                "CRC mismatch",
                with(&|b| b[n - 8] ^= 1),
                limit,
                Err("corrupt"),
            ),
            (
                "length mismatch",
                with(&|b| b[n - 4] ^= 1),
                limit,
                Err("corrupt"),
            ),
            ("not gzip", b"<p>plain</p>".to_vec(), limit, Err("corrupt")),
            ("not deflate", with(&|b| b[2] = 7), limit, Err("corrupt")),
            (
                "reserved flag",
                with(&|b| b[3] |= 0x80),
                limit,
                Err("corrupt"),
            ),
            (
                "garbage after",
                [member.clone(), b"junk".to_vec()].concat(),
                limit,
                Err("corrupt"),
            ),
        ];
        for (what, input, limit, want) in cases {
            for piece in [usize::MAX, 1, 7, 4096] {
                let got = outcome(decode(
                    Decoder::Gzip(Box::default()),
                    &input,
                    piece.min(input.len().max(1)),
                    limit,
                ));
                assert_eq!(got, want.map(<[u8]>::to_vec), "{what}, pieces of {piece}");
            }
        }
    }

    #[test]
    fn brotli_decoding() {
        let text = b"<p>hello, compressed world</p>".repeat(200);
        let encoded = brotli(&text);
        let n = encoded.len();
        let limit = text.len();
        let cases: Vec<DecodeCase> = vec![
            ("whole", encoded.clone(), limit, Ok(&text)),
            (
                "over the limit",
                encoded.clone(),
                limit - 1,
                Err("too large"),
            ),
            ("cut", encoded[..n / 2].to_vec(), limit, Err("cut")),
            (
                "bytes after the end are ignored",
                [encoded.clone(), b"junk".to_vec()].concat(),
                limit,
                Ok(&text),
            ),
            ("not brotli", vec![0xff; 64], limit, Err("corrupt")),
        ];
        for (what, input, limit, want) in cases {
            for piece in [usize::MAX, 1, 7] {
                let decoder = Decoder::Brotli(Box::new(brotli::DecompressorWriter::new(
                    CappedSink::new(limit),
                    8 * 1024,
                )));
                let got = outcome(decode(decoder, &input, piece.min(input.len()), limit));
                assert_eq!(got, want.map(<[u8]>::to_vec), "{what}, pieces of {piece}");
            }
        }
    }
}
