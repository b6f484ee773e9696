//! Caching of fragments and parsed layouts: moka caches bounded in bytes, TTLs from config rules
//! and response headers, Vary-aware keys, single-flight fetches, hit-for-pass,
//! stale-while-revalidate / stale-if-error, and purge. A [`CachingFetcher`] wraps the HTTP
//! [`Fetcher`], so the composer sees one source of fragments; this module never serves HTTP.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared, WeakShared};
use http::header::{HeaderName, AGE, AUTHORIZATION, CACHE_CONTROL, COOKIE, SET_COOKIE, VARY};
use http::{HeaderMap, StatusCode};
use moka::future::Cache;
use moka::notification::RemovalCause;
use moka::Expiry;
use url::Url;

use crate::config::{glob_match, CacheConfig};
use crate::esi::Template;
use crate::fetch::{
    split_unquoted, Access, CacheInfo, FetchError, Fetcher, Fragment, FragmentRequest,
};
use crate::telemetry::Metrics;

/// Longest TTL or stale window kept, whatever a header or rule says (one year), so expiry
/// instants never overflow.
const MAX_AGE_S: u64 = 365 * 24 * 60 * 60;
/// Most header names a response may `Vary` on before it is not stored: every name multiplies
/// the variants a URL may have.
const MAX_VARY_NAMES: usize = 16;
/// Bytes charged per entry on top of its body, headers and key: the `Arc`, the entry struct
/// and moka's own bookkeeping.
const ENTRY_OVERHEAD: usize = 160;
/// Bytes charged per kept header on top of its name and value.
const HEADER_OVERHEAD: usize = 32;
/// Bytes charged per vary spec or hit-for-pass marker on top of its key.
const SIDE_OVERHEAD: usize = 64;
/// The side caches (vary specs, hit-for-pass markers) get this fraction of the main capacity
/// each, and at least [`MIN_SIDE_BYTES`].
const SIDE_SHARE: u64 = 8;
/// Smallest byte bound of a side cache.
const MIN_SIDE_BYTES: u64 = 64 * 1024;
/// How often one request looks the cache up again: a Vary mismatch with the response it
/// waited for, or a retry after a failed shared fetch. Past it, the request fetches alone.
const MAX_ROUNDS: usize = 3;
/// The device token `Surrogate-Control` directives may target: the one the proxy announces in
/// [`crate::fetch::SURROGATE_CAPABILITY`].
const DEVICE: &str = "esi-proxy";
/// Hop-by-hop headers, never kept in an entry.
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

const HITS: &str = "esi_proxy_cache_hits_total";
const MISSES: &str = "esi_proxy_cache_misses_total";
const STALE_SERVED: &str = "esi_proxy_cache_stale_served_total";
const COALESCED: &str = "esi_proxy_cache_coalesced_total";
const PASSES: &str = "esi_proxy_cache_passes_total";
const EVICTIONS: &str = "esi_proxy_cache_evictions_total";
const FRAGMENT_ENTRIES: &str = "esi_proxy_fragment_cache_entries";
const FRAGMENT_BYTES: &str = "esi_proxy_fragment_cache_bytes";
const LAYOUT_ENTRIES: &str = "esi_proxy_layout_cache_entries";
const LAYOUT_BYTES: &str = "esi_proxy_layout_cache_bytes";

/// Storage for fragment responses, shared across config reloads.
///
/// Entries are bounded in bytes (body, kept headers and key) and expire `ttl` plus the longer
/// stale window after they were stored. Beside them it keeps, bounded too, a per-URL vary spec
/// (the header names the last stored response varied on) and hit-for-pass markers, plus the
/// fetches in flight (one per key, for as long as someone waits on it).
pub struct FragmentCache {
    entries: Cache<CacheKey, Arc<Entry>>,
    vary: VaryBook,
    passes: Cache<CacheKey, PassMarker>,
    flights: Mutex<HashMap<CacheKey, FlightSlot>>,
    next_flight: AtomicU64,
    metrics: Arc<Metrics>,
}

/// TTL rules and windows from config; rebuilt on every config reload.
#[derive(Debug, Clone)]
pub struct CachePolicy {
    rules: Vec<Rule>,
    key_headers: Vec<HeaderName>,
    default_ttl_s: u64,
    stale_while_revalidate_s: u64,
    stale_if_error_s: u64,
    hit_for_pass: Duration,
}

/// How a response's TTL was decided, for logs and the debug page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TtlSource {
    /// `[[cache.rules]]` entry: its index and pattern.
    Rule(usize, String),
    /// `Surrogate-Control: max-age=N` (untargeted or targeted at `esi-proxy`).
    SurrogateControl,
    /// `Cache-Control: s-maxage=N`.
    SMaxAge,
    /// `Cache-Control: max-age=N`.
    MaxAge,
    /// `cache.default_ttl_s`.
    Default,
}

/// The caching decision for one response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The response may be stored.
    Store {
        /// How long it is fresh (already less the response's `Age`).
        ttl: Duration,
        /// How long after `ttl` it may be served while one background fetch refreshes it.
        stale_while_revalidate: Duration,
        /// How long after `ttl` it may be served when a fresh fetch fails.
        stale_if_error: Duration,
        /// Where `ttl` came from.
        source: TtlSource,
    },
    /// The response is not stored; the reason is a short stable word for logs: `status`,
    /// `no-store`, `private`, `vary`, `set-cookie`, `credentials`, `no-cache` or `ttl`.
    Pass(&'static str),
}

/// Which credentials a request carried to a host that receives them (a trusted one).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Credentials {
    /// A `Cookie` header went upstream.
    pub cookie: bool,
    /// An `Authorization` header went upstream.
    pub authorization: bool,
}

/// A Fetcher that serves from and fills a FragmentCache.
///
/// A lookup is fresh (served), within `stale-while-revalidate` (served, and one background
/// fetch refreshes it), or a miss: concurrent misses for one key share one upstream fetch.
/// When a fetch fails, a copy within `stale-if-error` is served instead; when it fails with no
/// such copy, every request that waited on it tries once more (shared again), then gives up.
#[derive(Clone)]
pub struct CachingFetcher {
    inner: Arc<dyn Fetcher>,
    cache: Arc<FragmentCache>,
    policy: Arc<CachePolicy>,
}

/// Parsed layouts (Arc<esi::Template>) with their status and headers, for a fully warm page with
/// no upstream request and no parse.
///
/// Keys, TTLs and the credential rule are those of [`CachePolicy`], as for fragments. Layouts
/// are served fresh only: there is no stale serving and no single-flight here (a layout that
/// expired is fetched and parsed again by the server, which owns the origin request). The API
/// is synchronous for the server's convenience; a lookup that would have to wait for moka's
/// housekeeping counts as a miss rather than blocking.
pub struct LayoutCache {
    entries: Cache<CacheKey, LayoutSlot>,
    vary: VaryBook,
    metrics: Arc<Metrics>,
}

/// A parsed layout as the layout cache keeps it.
#[derive(Debug)]
pub struct CachedLayout {
    /// The origin's status (200: nothing else is stored).
    pub status: StatusCode,
    /// Response headers as the client gets them: the origin's, less `Surrogate-Control`,
    /// `Content-Length` and hop-by-hop headers.
    pub headers: HeaderMap,
    /// The parsed layout.
    pub template: Arc<Template>,
    /// Where the TTL came from.
    pub source: TtlSource,
    /// When it was stored.
    pub stored_at: Instant,
    /// How long after `stored_at` it is served.
    pub ttl: Duration,
}

/// What the fragment cache holds for one key, for the debug page and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryInfo {
    /// The fragment URL.
    pub url: String,
    /// Bytes of body.
    pub body_bytes: usize,
    /// What the entry weighs against the capacity.
    pub weight: u32,
    /// Where the TTL came from.
    pub source: TtlSource,
    /// Fresh lifetime.
    pub ttl: Duration,
    /// Stale-while-revalidate window after `ttl`.
    pub stale_while_revalidate: Duration,
    /// Stale-if-error window after `ttl`.
    pub stale_if_error: Duration,
    /// Time since it was stored.
    pub age: Duration,
}

/// A compiled `[[cache.rules]]` entry.
#[derive(Debug, Clone)]
struct Rule {
    pattern: String,
    ttl_s: u64,
    stale_while_revalidate_s: Option<u64>,
    stale_if_error_s: Option<u64>,
    key_headers: Vec<HeaderName>,
}

/// The key of an entry: the URL (without `#fragment`) and the request's values of the header
/// names it varies on, with which credentials went upstream.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CacheKey {
    url: Arc<str>,
    /// See [`CacheKey::new`] for the encoding.
    variant: Arc<[u8]>,
}

/// One stored fragment response.
#[derive(Debug)]
struct Entry {
    key: CacheKey,
    /// The header names `key` was computed from (sorted), so a request that waited on this
    /// response can tell whether it is its variant.
    names: Arc<[HeaderName]>,
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    stored_at: Instant,
    ttl: Duration,
    stale_while_revalidate: Duration,
    stale_if_error: Duration,
    source: TtlSource,
    weight: u32,
    /// The body parsed as ESI, filled by the first hit that needs it and shared by the rest.
    parsed: Arc<OnceLock<Arc<Template>>>,
}

/// A layout cache value: the layout and what it weighs.
#[derive(Debug, Clone)]
struct LayoutSlot {
    layout: Arc<CachedLayout>,
    weight: u32,
}

/// The header names the last stored response for a URL varied on.
#[derive(Debug, Clone)]
struct VarySpec {
    names: Arc<[HeaderName]>,
    lifetime: Duration,
}

/// Per-URL vary specs, bounded in bytes.
struct VaryBook {
    specs: Cache<Arc<str>, VarySpec>,
}

/// A key whose last response could not be stored, for this long.
#[derive(Debug, Clone, Copy)]
struct PassMarker(Duration);

/// What one lookup found.
enum Lookup {
    /// Within its TTL.
    Fresh(Arc<Entry>),
    /// Past its TTL, within stale-while-revalidate.
    Revalidate(Arc<Entry>),
    /// Nothing servable now; maybe a copy to fall back on if the fetch fails.
    Miss(Option<Arc<Entry>>),
}

/// What a shared fetch produced.
#[derive(Clone)]
enum Outcome {
    /// Stored: anyone whose key matches the entry's may use it.
    Stored(Arc<Entry>),
    /// Not storable: for the request that started the fetch only.
    Passed(Arc<Fragment>),
}

/// The output of a shared fetch; errors are shared, each waiter gets a copy.
type FlightResult = Result<Outcome, Arc<FetchError>>;

/// A fetch some requests are waiting on.
type Flight = Shared<BoxFuture<'static, FlightResult>>;

/// A fetch in flight as the map knows it: weak, so it stops when nobody waits on it.
struct FlightSlot {
    id: u64,
    weak: WeakShared<BoxFuture<'static, FlightResult>>,
}

/// Removes its flight from the map when the flight ends or is dropped.
struct FlightGuard {
    cache: Arc<FragmentCache>,
    key: CacheKey,
    id: u64,
}

/// `Cache-Control` directives that matter to a shared cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct CacheControl {
    no_store: bool,
    no_cache: bool,
    private: bool,
    public: bool,
    must_revalidate: bool,
    max_age: Option<u64>,
    s_maxage: Option<u64>,
    stale_while_revalidate: Option<u64>,
    stale_if_error: Option<u64>,
}

/// `Surrogate-Control` directives (Edge Architecture 1.0) aimed at this proxy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct SurrogateControl {
    no_store: bool,
    max_age: Option<u64>,
}

/// Values that say how long they may be kept.
trait Lifetime {
    fn lifetime(&self) -> Duration;
}

/// Per-entry expiry from [`Lifetime`], counted from each insert.
struct ByLifetime;

// === impl FragmentCache ===

impl FragmentCache {
    /// An empty cache keeping at most `capacity_bytes` of entries (body, kept headers and
    /// key); vary specs and hit-for-pass markers get an eighth of that each (at least 64 KiB).
    pub fn new(capacity_bytes: u64, metrics: Arc<Metrics>) -> Arc<Self> {
        let evicted = Arc::clone(&metrics);
        let entries = Cache::builder()
            .name("esi-proxy fragments")
            .max_capacity(capacity_bytes)
            .weigher(|_key: &CacheKey, entry: &Arc<Entry>| entry.weight)
            .expire_after(ByLifetime)
            .eviction_listener(move |_key, _value, cause| {
                if cause == RemovalCause::Size {
                    count_eviction(&evicted, "fragment");
                }
            })
            .support_invalidation_closures()
            .build();
        let passes = Cache::builder()
            .name("esi-proxy hit-for-pass")
            .max_capacity(side_capacity(capacity_bytes))
            .weigher(|key: &CacheKey, _marker: &PassMarker| key.weight(SIDE_OVERHEAD))
            .expire_after(ByLifetime)
            .support_invalidation_closures()
            .build();
        Arc::new(Self {
            entries,
            vary: VaryBook::new("esi-proxy fragment vary", side_capacity(capacity_bytes)),
            passes,
            flights: Mutex::new(HashMap::new()),
            next_flight: AtomicU64::new(0),
            metrics,
        })
    }

    /// Drops every entry whose URL equals `url` (all Vary variants).
    ///
    /// `url` is compared in the form `url::Url` prints it (`http://host:8080/path?query`,
    /// default port and `#fragment` left out); text that parses as a URL is put in that form
    /// first. The URL's vary spec and hit-for-pass markers go too. A fetch already in flight
    /// may still store its response.
    pub fn purge_url(&self, url: &str) {
        let url: Arc<str> = normalise(url).into();
        let (a, b) = (Arc::clone(&url), Arc::clone(&url));
        invalidate(&self.entries, move |key, _| key.url == a);
        invalidate(&self.passes, move |key, _| key.url == b);
        self.vary.purge(move |u| *u == *url);
    }

    /// Drops every entry whose URL starts with `prefix` (compared as given, in the form of
    /// [`FragmentCache::purge_url`]), with those URLs' vary specs and hit-for-pass markers.
    pub fn purge_prefix(&self, prefix: &str) {
        let prefix: Arc<str> = prefix.into();
        let (a, b) = (Arc::clone(&prefix), Arc::clone(&prefix));
        invalidate(&self.entries, move |key, _| key.url.starts_with(&*a));
        invalidate(&self.passes, move |key, _| key.url.starts_with(&*b));
        self.vary.purge(move |u| u.starts_with(&*prefix));
    }

    /// Entries held (approximate until moka's pending work runs; see
    /// [`FragmentCache::run_pending_tasks`]).
    pub fn entry_count(&self) -> u64 {
        self.entries.entry_count()
    }

    /// Bytes held by entries, as the weigher counts them (approximate until moka's pending
    /// work runs).
    pub fn weighted_size(&self) -> u64 {
        self.entries.weighted_size()
    }

    /// Runs moka's pending work now: evictions, expirations, purges and the size counters.
    /// It also runs by itself as the cache is used.
    pub async fn run_pending_tasks(&self) {
        self.entries.run_pending_tasks().await;
        self.passes.run_pending_tasks().await;
        self.vary.specs.run_pending_tasks().await;
    }

    /// Sets the cache gauges (entries, bytes) in metrics; called before /_esi/metrics renders.
    pub fn publish_metrics(&self) {
        self.metrics.set_gauge(
            FRAGMENT_ENTRIES,
            "Fragment responses held by the cache.",
            self.entry_count() as f64,
        );
        self.metrics.set_gauge(
            FRAGMENT_BYTES,
            "Bytes of fragment responses held by the cache (bodies, kept headers and keys).",
            self.weighted_size() as f64,
        );
    }

    /// What is stored for `url` (in the form of [`FragmentCache::purge_url`]), one item per
    /// variant. Walks the whole cache: for the debug page and tests, not for serving.
    pub fn entries_for_url(&self, url: &str) -> Vec<EntryInfo> {
        let url = normalise(url);
        let now = Instant::now();
        self.entries
            .iter()
            .filter(|(key, _)| *key.url == *url)
            .map(|(_, entry)| EntryInfo {
                url: entry.key.url.to_string(),
                body_bytes: entry.body.len(),
                weight: entry.weight,
                source: entry.source.clone(),
                ttl: entry.ttl,
                stale_while_revalidate: entry.stale_while_revalidate,
                stale_if_error: entry.stale_if_error,
                age: now.saturating_duration_since(entry.stored_at),
            })
            .collect()
    }

    /// The key of a request under the URL's current vary spec and the policy's key headers.
    async fn key_for(
        &self,
        policy: &CachePolicy,
        url: &Url,
        text: &Arc<str>,
        headers: &HeaderMap,
        credentials: Credentials,
    ) -> CacheKey {
        let vary = self.vary.names(text).await;
        let names = merge_names(&vary, &policy.key_headers(url));
        CacheKey::new(text, &names, headers, credentials)
    }

    /// The entry for `key`, classified by age.
    async fn lookup(&self, key: &CacheKey) -> Lookup {
        let Some(entry) = self.entries.get(key).await else {
            return Lookup::Miss(None);
        };
        let age = entry.stored_at.elapsed();
        if age < entry.ttl {
            Lookup::Fresh(entry)
        } else if age < entry.ttl.saturating_add(entry.stale_while_revalidate) {
            Lookup::Revalidate(entry)
        } else {
            Lookup::Miss(Some(entry))
        }
    }

    /// Whether a hit-for-pass marker stands for `key`.
    async fn is_pass(&self, key: &CacheKey) -> bool {
        self.passes.get(key).await.is_some()
    }

    fn flights(&self) -> MutexGuard<'_, HashMap<CacheKey, FlightSlot>> {
        self.flights.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn count(&self, name: &'static str, help: &'static str, label: Option<(&'static str, &str)>) {
        self.metrics.inc_counter(name, help, label, 1);
    }

    fn count_hit(&self) {
        self.count(
            HITS,
            "Cache lookups answered with a fresh entry.",
            Some(("cache", "fragment")),
        );
    }

    fn count_miss(&self) {
        self.count(
            MISSES,
            "Cache lookups that found nothing servable.",
            Some(("cache", "fragment")),
        );
    }

    fn count_stale(&self, reason: &'static str) {
        self.count(
            STALE_SERVED,
            "Expired fragment entries served: while_revalidate or if_error.",
            Some(("reason", reason)),
        );
    }

    fn count_coalesced(&self) {
        self.count(
            COALESCED,
            "Fragment requests that waited on a fetch another request started.",
            None,
        );
    }

    fn count_pass(&self) {
        self.count(
            PASSES,
            "Fragment responses fetched without the cache: not storable, or hit-for-pass.",
            None,
        );
    }
}

impl fmt::Debug for FragmentCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FragmentCache")
            .field("entries", &self.entry_count())
            .field("bytes", &self.weighted_size())
            .finish_non_exhaustive()
    }
}

// === impl CachePolicy ===

impl CachePolicy {
    /// The policy of a (validated) `[cache]` section. Header names that do not parse are
    /// skipped (validation reports them).
    pub fn from_config(config: &CacheConfig) -> Self {
        Self {
            rules: config
                .rules
                .iter()
                .map(|rule| Rule {
                    pattern: rule.pattern.clone(),
                    ttl_s: rule.ttl_s,
                    stale_while_revalidate_s: rule.stale_while_revalidate_s,
                    stale_if_error_s: rule.stale_if_error_s,
                    key_headers: header_names(&rule.key_headers),
                })
                .collect(),
            key_headers: header_names(&config.key_headers),
            default_ttl_s: config.default_ttl_s,
            stale_while_revalidate_s: config.stale_while_revalidate_s,
            stale_if_error_s: config.stale_if_error_s,
            hit_for_pass: Duration::from_secs(config.hit_for_pass_s.min(MAX_AGE_S)),
        }
    }

    /// Decides whether and how long a response may be stored. `request_carried_credentials`:
    /// the upstream request had Cookie or Authorization.
    ///
    /// Not knowing which, this assumes both: a rule must key both `cookie` and
    /// `authorization` to make such a response storable without `public` or `s-maxage`. The
    /// caches themselves use [`CachePolicy::decide_for`], which knows.
    pub fn decide(
        &self,
        url: &Url,
        status: StatusCode,
        headers: &HeaderMap,
        request_carried_credentials: bool,
    ) -> Decision {
        let credentials = Credentials {
            cookie: request_carried_credentials,
            authorization: request_carried_credentials,
        };
        self.decide_for(url, status, headers, credentials)
    }

    /// Decides whether and how long a response may be stored, given which credentials the
    /// upstream request carried.
    ///
    /// Only 200 is stored. `no-store` (in `Cache-Control` or `Surrogate-Control`), `private`,
    /// `Vary: *` (or an unreadable `Vary`, or one over 16 names) and `Set-Cookie` are never
    /// stored, whatever the rules say. A response to a request with credentials is stored only
    /// when it says `public` or `s-maxage`, or when the key holds every credential the
    /// request carried (config or rule `key_headers`), making it one entry per user.
    ///
    /// The TTL comes from, first match wins: the first rule matching the URL,
    /// `Surrogate-Control: max-age=N[+M]` (N; targeted at `esi-proxy` beats untargeted),
    /// `Cache-Control: s-maxage`, `max-age` (these three less the response's `Age`), then
    /// `cache.default_ttl_s`. Without a rule, `no-cache` is not stored. A TTL of 0 is not
    /// stored. `Expires` is not read.
    ///
    /// The stale windows: the rule's, else the response's `stale-while-revalidate=N` /
    /// `stale-if-error=N` (RFC 5861), else the config's; `must-revalidate` or
    /// `proxy-revalidate` zero the latter two. Ages over a year count as a year.
    pub fn decide_for(
        &self,
        url: &Url,
        status: StatusCode,
        headers: &HeaderMap,
        credentials: Credentials,
    ) -> Decision {
        if status != StatusCode::OK {
            return Decision::Pass("status");
        }
        let cc = CacheControl::parse(headers);
        let sc = SurrogateControl::parse(headers);
        if cc.no_store || sc.no_store {
            return Decision::Pass("no-store");
        }
        if cc.private {
            return Decision::Pass("private");
        }
        if vary_names(headers).is_none() {
            return Decision::Pass("vary");
        }
        if headers.contains_key(SET_COOKIE) {
            return Decision::Pass("set-cookie");
        }
        let rule = self.rule_for(url);
        if credentials.any() && !cc.public && cc.s_maxage.is_none() {
            let keys = self.key_headers_of(rule.map(|(_, r)| r));
            let keyed = |carried: bool, name: &HeaderName| !carried || keys.contains(name);
            if !keyed(credentials.cookie, &COOKIE)
                || !keyed(credentials.authorization, &AUTHORIZATION)
            {
                return Decision::Pass("credentials");
            }
        }
        let age = age_of(headers);
        let (ttl_s, source) = match rule {
            Some((index, rule)) => (rule.ttl_s, TtlSource::Rule(index, rule.pattern.clone())),
            None if cc.no_cache => return Decision::Pass("no-cache"),
            None => match (sc.max_age, cc.s_maxage, cc.max_age) {
                (Some(n), _, _) => (n.saturating_sub(age), TtlSource::SurrogateControl),
                (None, Some(n), _) => (n.saturating_sub(age), TtlSource::SMaxAge),
                (None, None, Some(n)) => (n.saturating_sub(age), TtlSource::MaxAge),
                (None, None, None) => (self.default_ttl_s, TtlSource::Default),
            },
        };
        if ttl_s == 0 {
            return Decision::Pass("ttl");
        }
        let revalidate = cc.must_revalidate;
        let window = |from_rule: Option<u64>, from_response: Option<u64>, default: u64| {
            let seconds = from_rule.unwrap_or_else(|| {
                if revalidate {
                    0
                } else {
                    from_response.unwrap_or(default)
                }
            });
            seconds_capped(seconds)
        };
        let rule = rule.map(|(_, r)| r);
        Decision::Store {
            ttl: seconds_capped(ttl_s),
            stale_while_revalidate: window(
                rule.and_then(|r| r.stale_while_revalidate_s),
                cc.stale_while_revalidate,
                self.stale_while_revalidate_s,
            ),
            stale_if_error: window(
                rule.and_then(|r| r.stale_if_error_s),
                cc.stale_if_error,
                self.stale_if_error_s,
            ),
            source,
        }
    }

    /// Request header names that are part of the key for this URL (config key_headers +
    /// matching rule's key_headers), lowercase.
    pub fn key_headers(&self, url: &Url) -> Vec<HeaderName> {
        self.key_headers_of(self.rule_for(url).map(|(_, rule)| rule))
    }

    /// How long a key whose response could not be stored skips the cache.
    pub fn hit_for_pass(&self) -> Duration {
        self.hit_for_pass
    }

    /// The first rule matching `url`: its glob over `host:port/path`, or over the path alone
    /// when it starts with `/`.
    fn rule_for(&self, url: &Url) -> Option<(usize, &Rule)> {
        let path = url.path();
        let full = format!(
            "{}:{}{}",
            url.host_str().unwrap_or(""),
            url.port_or_known_default().unwrap_or(0),
            path
        );
        self.rules.iter().enumerate().find(|(_, rule)| {
            let text = if rule.pattern.starts_with('/') {
                path
            } else {
                full.as_str()
            };
            glob_match(&rule.pattern, text)
        })
    }

    fn key_headers_of(&self, rule: Option<&Rule>) -> Vec<HeaderName> {
        let from_rule = rule.map_or(&[][..], |r| r.key_headers.as_slice());
        merge_names(&self.key_headers, from_rule).to_vec()
    }
}

// === impl TtlSource ===

impl fmt::Display for TtlSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TtlSource::Rule(index, pattern) => write!(f, "rule[{index}] {pattern:?}"),
            TtlSource::SurrogateControl => f.write_str("surrogate-control"),
            TtlSource::SMaxAge => f.write_str("s-maxage"),
            TtlSource::MaxAge => f.write_str("max-age"),
            TtlSource::Default => f.write_str("default"),
        }
    }
}

// === impl Credentials ===

impl Credentials {
    /// The credentials in `headers` that go upstream: none unless the host is `trusted`.
    pub fn of(headers: &HeaderMap, trusted: bool) -> Self {
        Self {
            cookie: trusted && headers.contains_key(COOKIE),
            authorization: trusted && headers.contains_key(AUTHORIZATION),
        }
    }

    /// Whether any went upstream.
    pub fn any(self) -> bool {
        self.cookie || self.authorization
    }

    fn bits(self) -> u8 {
        u8::from(self.cookie) | (u8::from(self.authorization) << 1)
    }
}

// === impl CachingFetcher ===

impl CachingFetcher {
    /// A fetcher answering from `cache` under `policy`, fetching misses from `inner`.
    pub fn new(
        inner: Arc<dyn Fetcher>,
        cache: Arc<FragmentCache>,
        policy: Arc<CachePolicy>,
    ) -> Self {
        Self {
            inner,
            cache,
            policy,
        }
    }

    async fn fetch_cached(self, req: FragmentRequest) -> Result<Fragment, FetchError> {
        let access: Access = self.inner.check(&req.url)?;
        let credentials = Credentials::of(&req.client_headers, access.trusted);
        let text: Arc<str> = cache_url(&req.url).into();
        let deadline = tokio::time::Instant::now() + req.timeout;
        let mut retried = false;
        let mut counted = false;
        for _ in 0..MAX_ROUNDS {
            let key = self
                .cache
                .key_for(
                    &self.policy,
                    &req.url,
                    &text,
                    &req.client_headers,
                    credentials,
                )
                .await;
            if self.cache.is_pass(&key).await {
                self.cache.count_pass();
                return self.inner.fetch(req).await.map(passed);
            }
            let fallback = match self.cache.lookup(&key).await {
                Lookup::Fresh(entry) => {
                    self.cache.count_hit();
                    return Ok(entry.fragment("hit"));
                }
                Lookup::Revalidate(entry) => {
                    self.cache.count_stale("while_revalidate");
                    self.refresh(&key, &req, credentials);
                    return Ok(entry.fragment("stale-while-revalidate"));
                }
                Lookup::Miss(stale) => stale,
            };
            if !counted {
                self.cache.count_miss();
                counted = true;
            }
            let (flight, leader) = self.join_or_start(&key, &req, credentials);
            if !leader {
                self.cache.count_coalesced();
            }
            let error = match tokio::time::timeout_at(deadline, flight).await {
                Ok(Ok(Outcome::Stored(entry))) => {
                    let mine = CacheKey::new(&text, &entry.names, &req.client_headers, credentials);
                    if mine == entry.key {
                        return Ok(entry.fragment("miss"));
                    }
                    // The response varies on a header this request differs in.
                    continue;
                }
                Ok(Ok(Outcome::Passed(fragment))) if leader => {
                    return Ok(passed(Arc::unwrap_or_clone(fragment)));
                }
                Ok(Ok(Outcome::Passed(_))) => {
                    // Maybe meant for another user: fetch alone, as hit-for-pass does.
                    self.cache.count_pass();
                    return self.fetch_alone(req, fallback).await;
                }
                Ok(Err(error)) => clone_error(&error),
                Err(_) => FetchError::Timeout {
                    url: req.url.to_string(),
                    after: req.timeout,
                },
            };
            if let Some(stale) = fallback.filter(|entry| entry.within_stale_if_error()) {
                tracing::debug!(url = %text, error = %error, "serving stale fragment after error");
                self.cache.count_stale("if_error");
                return Ok(stale.fragment("stale-if-error"));
            }
            // One retry, and only while this request's own deadline leaves time for it.
            if retried || tokio::time::Instant::now() >= deadline {
                return Err(error);
            }
            retried = true;
        }
        self.fetch_alone(req, None).await
    }

    /// Fetches without the cache; a failure falls back to `stale` when it is in its
    /// stale-if-error window.
    async fn fetch_alone(
        &self,
        req: FragmentRequest,
        stale: Option<Arc<Entry>>,
    ) -> Result<Fragment, FetchError> {
        match self.inner.fetch(req).await {
            Ok(fragment) => Ok(passed(fragment)),
            Err(error) => match stale.filter(|entry| entry.within_stale_if_error()) {
                Some(entry) => {
                    self.cache.count_stale("if_error");
                    Ok(entry.fragment("stale-if-error"))
                }
                None => Err(error),
            },
        }
    }

    /// The fetch in flight for `key`, or a new one with this request's headers; `true` when
    /// this request started it.
    fn join_or_start(
        &self,
        key: &CacheKey,
        req: &FragmentRequest,
        credentials: Credentials,
    ) -> (Flight, bool) {
        let mut flights = self.cache.flights();
        if let Some(flight) = flights.get(key).and_then(|slot| slot.weak.upgrade()) {
            return (flight, false);
        }
        let id = self.cache.next_flight.fetch_add(1, Ordering::Relaxed);
        let guard = FlightGuard {
            cache: Arc::clone(&self.cache),
            key: key.clone(),
            id,
        };
        let this = self.clone();
        let (key_owned, req_owned) = (key.clone(), req.clone());
        let flight = async move {
            // A fetch that ended between this request's lookup and its taking the map's lock
            // has stored its response (it stores before leaving the map): use that.
            if let Lookup::Fresh(entry) = this.cache.lookup(&key_owned).await {
                drop(guard);
                return Ok(Outcome::Stored(entry));
            }
            let result = this.inner.fetch(req_owned.clone()).await;
            let outcome = match result {
                Ok(fragment) => Ok(this
                    .settle(&key_owned, &req_owned, credentials, fragment)
                    .await),
                Err(error) => Err(Arc::new(error)),
            };
            // Before the waiters wake: a retry must start a new fetch, not find this one.
            drop(guard);
            outcome
        }
        .boxed()
        .shared();
        if let Some(weak) = flight.downgrade() {
            flights.insert(key.clone(), FlightSlot { id, weak });
        }
        (flight, true)
    }

    /// Starts one background fetch for a stale entry, unless one is in flight.
    fn refresh(&self, key: &CacheKey, req: &FragmentRequest, credentials: Credentials) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        // Joining a fetch in flight (a refresh or a miss) and dropping it leaves it running.
        let (flight, started) = self.join_or_start(key, req, credentials);
        if started {
            let url = req.url.to_string();
            runtime.spawn(async move {
                if let Err(error) = flight.await {
                    tracing::debug!(%url, %error, "background refresh failed");
                }
            });
        }
    }

    /// Stores a fetched fragment if the policy allows, else records hit-for-pass.
    async fn settle(
        &self,
        flight_key: &CacheKey,
        req: &FragmentRequest,
        credentials: Credentials,
        fragment: Fragment,
    ) -> Outcome {
        let cache = &self.cache;
        let decision =
            self.policy
                .decide_for(&req.url, fragment.status, &fragment.headers, credentials);
        match decision {
            Decision::Store {
                ttl,
                stale_while_revalidate,
                stale_if_error,
                source,
            } => {
                let vary: Arc<[HeaderName]> =
                    vary_names(&fragment.headers).unwrap_or_default().into();
                let names = merge_names(&vary, &self.policy.key_headers(&req.url));
                let key = CacheKey::new(&flight_key.url, &names, &req.client_headers, credentials);
                let entry = Entry::new(
                    key,
                    names,
                    fragment,
                    [ttl, stale_while_revalidate, stale_if_error],
                    source,
                );
                tracing::debug!(
                    url = %entry.key.url,
                    ttl_source = %entry.source,
                    ttl_s = entry.ttl.as_secs(),
                    bytes = entry.weight,
                    "fragment stored"
                );
                let lifetime = entry.lifetime();
                cache
                    .entries
                    .insert(entry.key.clone(), Arc::clone(&entry))
                    .await;
                cache
                    .vary
                    .learn(Arc::clone(&flight_key.url), vary, lifetime)
                    .await;
                Outcome::Stored(entry)
            }
            Decision::Pass(reason) => {
                tracing::debug!(url = %flight_key.url, reason, "fragment not stored");
                cache.count_pass();
                let hit_for_pass = self.policy.hit_for_pass();
                if !hit_for_pass.is_zero() {
                    cache
                        .passes
                        .insert(flight_key.clone(), PassMarker(hit_for_pass))
                        .await;
                }
                // The newest response says not to keep this; an older copy must not answer.
                cache.entries.invalidate(flight_key).await;
                Outcome::Passed(Arc::new(fragment))
            }
        }
    }
}

impl fmt::Debug for CachingFetcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachingFetcher")
            .field("cache", &self.cache)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl Fetcher for CachingFetcher {
    fn fetch(&self, req: FragmentRequest) -> BoxFuture<'static, Result<Fragment, FetchError>> {
        Box::pin(self.clone().fetch_cached(req))
    }

    fn check(&self, url: &Url) -> Result<Access, FetchError> {
        self.inner.check(url)
    }
}

// === impl LayoutCache ===

impl LayoutCache {
    /// An empty layout cache keeping at most `capacity_bytes` (decoded layout bytes, kept
    /// headers and keys).
    pub fn new(capacity_bytes: u64, metrics: Arc<Metrics>) -> Arc<Self> {
        let evicted = Arc::clone(&metrics);
        let entries = Cache::builder()
            .name("esi-proxy layouts")
            .max_capacity(capacity_bytes)
            .weigher(|_key: &CacheKey, slot: &LayoutSlot| slot.weight)
            .expire_after(ByLifetime)
            .eviction_listener(move |_key, _value, cause| {
                if cause == RemovalCause::Size {
                    count_eviction(&evicted, "layout");
                }
            })
            .support_invalidation_closures()
            .build();
        Arc::new(Self {
            entries,
            vary: VaryBook::new("esi-proxy layout vary", side_capacity(capacity_bytes)),
            metrics,
        })
    }

    /// A fresh cached layout for this URL and these request headers (client's, as sent to
    /// origin). The origin is trusted, so `Cookie` and `Authorization` there count as
    /// credentials.
    pub fn get(
        &self,
        policy: &CachePolicy,
        url: &Url,
        request_headers: &HeaderMap,
    ) -> Option<Arc<CachedLayout>> {
        let text: Arc<str> = cache_url(url).into();
        let credentials = Credentials::of(request_headers, true);
        let vary = self.vary.names_now(&text);
        let names = merge_names(&vary, &policy.key_headers(url));
        let key = CacheKey::new(&text, &names, request_headers, credentials);
        let found = poll_once(&mut self.entries.get(&key).boxed()).flatten();
        let fresh = found
            .map(|slot| slot.layout)
            .filter(|layout| layout.stored_at.elapsed() < layout.ttl);
        let outcome = if fresh.is_some() { HITS } else { MISSES };
        let help = if fresh.is_some() {
            "Cache lookups answered with a fresh entry."
        } else {
            "Cache lookups that found nothing servable."
        };
        self.metrics
            .inc_counter(outcome, help, Some(("cache", "layout")), 1);
        fresh
    }

    /// Stores a layout if `policy.decide` allows; `body_bytes` is the decoded layout size (for
    /// the weigher). Returns whether stored.
    ///
    /// `response_headers` are the origin's (`Surrogate-Control` included: it may give the
    /// TTL); the stored copy leaves out `Surrogate-Control`, `Content-Length` and hop-by-hop
    /// headers. Credentials are read from `request_headers` as in [`LayoutCache::get`].
    #[allow(clippy::too_many_arguments)] // The API the server codes against: one call, no builder.
    pub fn insert(
        &self,
        policy: &CachePolicy,
        url: &Url,
        request_headers: &HeaderMap,
        status: StatusCode,
        response_headers: &HeaderMap,
        template: Arc<Template>,
        body_bytes: usize,
    ) -> bool {
        let text: Arc<str> = cache_url(url).into();
        let credentials = Credentials::of(request_headers, true);
        let (ttl, source) = match policy.decide_for(url, status, response_headers, credentials) {
            Decision::Store { ttl, source, .. } => (ttl, source),
            Decision::Pass(reason) => {
                tracing::debug!(url = %text, reason, "layout not stored");
                return false;
            }
        };
        let vary: Arc<[HeaderName]> = vary_names(response_headers).unwrap_or_default().into();
        let names = merge_names(&vary, &policy.key_headers(url));
        let key = CacheKey::new(&text, &names, request_headers, credentials);
        let mut headers = kept_headers(response_headers);
        headers.remove("surrogate-control");
        headers.remove(http::header::CONTENT_LENGTH);
        let weight = weigh(&key, &headers, body_bytes);
        tracing::debug!(
            url = %text,
            ttl_source = %source,
            ttl_s = ttl.as_secs(),
            bytes = weight,
            "layout stored"
        );
        let layout = Arc::new(CachedLayout {
            status,
            headers,
            template,
            source,
            stored_at: Instant::now(),
            ttl,
        });
        let entries = self.entries.clone();
        let specs = self.vary.specs.clone();
        let spec = VarySpec {
            names: vary,
            lifetime: ttl,
        };
        run_soon(
            async move {
                entries.insert(key, LayoutSlot { layout, weight }).await;
                specs.insert(text, spec).await;
            }
            .boxed(),
        )
    }

    /// Drops every layout whose URL equals `url` (all variants), as
    /// [`FragmentCache::purge_url`] does for fragments.
    pub fn purge_url(&self, url: &str) {
        let url: Arc<str> = normalise(url).into();
        let a = Arc::clone(&url);
        invalidate(&self.entries, move |key, _| key.url == a);
        self.vary.purge(move |u| *u == *url);
    }

    /// Drops every layout whose URL starts with `prefix`.
    pub fn purge_prefix(&self, prefix: &str) {
        let prefix: Arc<str> = prefix.into();
        let a = Arc::clone(&prefix);
        invalidate(&self.entries, move |key, _| key.url.starts_with(&*a));
        self.vary.purge(move |u| u.starts_with(&*prefix));
    }

    /// Layouts held (approximate until moka's pending work runs).
    pub fn entry_count(&self) -> u64 {
        self.entries.entry_count()
    }

    /// Bytes held, as the weigher counts them (approximate until moka's pending work runs).
    pub fn weighted_size(&self) -> u64 {
        self.entries.weighted_size()
    }

    /// Runs moka's pending work now (evictions, expirations, purges, size counters).
    pub async fn run_pending_tasks(&self) {
        self.entries.run_pending_tasks().await;
        self.vary.specs.run_pending_tasks().await;
    }

    /// Sets the layout cache gauges (entries, bytes) in metrics.
    pub fn publish_metrics(&self) {
        self.metrics.set_gauge(
            LAYOUT_ENTRIES,
            "Parsed layouts held by the cache.",
            self.entry_count() as f64,
        );
        self.metrics.set_gauge(
            LAYOUT_BYTES,
            "Bytes of layouts held by the cache (decoded bodies, kept headers and keys).",
            self.weighted_size() as f64,
        );
    }
}

impl fmt::Debug for LayoutCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LayoutCache")
            .field("entries", &self.entry_count())
            .field("bytes", &self.weighted_size())
            .finish_non_exhaustive()
    }
}

// === impl CacheKey ===

impl CacheKey {
    /// The key of `url` for a request with `headers` and `credentials`, varying on `names`
    /// (sorted, unique). The variant is the credential bits, then per name: the name, `0x00`,
    /// each value followed by `0x01`, and `0x02`. Header values never hold bytes below 0x09,
    /// so an absent header, an empty value and any list of values all differ.
    fn new(
        url: &Arc<str>,
        names: &[HeaderName],
        headers: &HeaderMap,
        credentials: Credentials,
    ) -> Self {
        let mut variant = vec![credentials.bits()];
        for name in names {
            variant.extend_from_slice(name.as_str().as_bytes());
            variant.push(0);
            for value in headers.get_all(name) {
                variant.extend_from_slice(value.as_bytes());
                variant.push(1);
            }
            variant.push(2);
        }
        Self {
            url: Arc::clone(url),
            variant: variant.into(),
        }
    }

    /// What the key weighs, plus `overhead`.
    fn weight(&self, overhead: usize) -> u32 {
        clamp_weight(self.url.len() + self.variant.len() + overhead)
    }
}

// === impl Entry ===

impl Entry {
    /// An entry for `fragment` under `key`; `times` are the TTL, stale-while-revalidate and
    /// stale-if-error windows.
    fn new(
        key: CacheKey,
        names: Arc<[HeaderName]>,
        fragment: Fragment,
        times: [Duration; 3],
        source: TtlSource,
    ) -> Arc<Self> {
        let [ttl, stale_while_revalidate, stale_if_error] = times;
        let headers = kept_headers(&fragment.headers);
        let weight = weigh(&key, &headers, fragment.body.len());
        Arc::new(Self {
            key,
            names,
            status: fragment.status,
            headers,
            body: fragment.body,
            stored_at: Instant::now(),
            ttl,
            stale_while_revalidate,
            stale_if_error,
            source,
            weight,
            parsed: Arc::new(OnceLock::new()),
        })
    }

    /// The stored response as served with `status` ("hit", "miss" ...); the body and the
    /// parsed-template slot are shared, not copied.
    fn fragment(&self, status: &'static str) -> Fragment {
        Fragment {
            status: self.status,
            headers: self.headers.clone(),
            body: self.body.clone(),
            cache: Some(CacheInfo {
                status,
                ttl: Some(self.ttl),
                source: Some(self.source.to_string()),
            }),
            parsed: Some(Arc::clone(&self.parsed)),
        }
    }

    fn within_stale_if_error(&self) -> bool {
        self.stored_at.elapsed() < self.ttl.saturating_add(self.stale_if_error)
    }
}

impl Lifetime for Arc<Entry> {
    fn lifetime(&self) -> Duration {
        self.ttl
            .saturating_add(self.stale_while_revalidate.max(self.stale_if_error))
    }
}

impl Lifetime for LayoutSlot {
    fn lifetime(&self) -> Duration {
        self.layout.ttl
    }
}

impl Lifetime for VarySpec {
    fn lifetime(&self) -> Duration {
        self.lifetime
    }
}

impl Lifetime for PassMarker {
    fn lifetime(&self) -> Duration {
        self.0
    }
}

// === impl ByLifetime ===

impl<K, V: Lifetime> Expiry<K, V> for ByLifetime {
    fn expire_after_create(&self, _key: &K, value: &V, _created_at: Instant) -> Option<Duration> {
        Some(value.lifetime())
    }

    fn expire_after_update(
        &self,
        _key: &K,
        value: &V,
        _updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.lifetime())
    }
}

// === impl VaryBook ===

impl VaryBook {
    fn new(name: &str, capacity_bytes: u64) -> Self {
        let specs = Cache::builder()
            .name(name)
            .max_capacity(capacity_bytes)
            .weigher(|url: &Arc<str>, spec: &VarySpec| {
                let names: usize = spec.names.iter().map(|n| n.as_str().len()).sum();
                clamp_weight(url.len() + names + SIDE_OVERHEAD)
            })
            .expire_after(ByLifetime)
            .support_invalidation_closures()
            .build();
        Self { specs }
    }

    /// The names the URL's last stored response varied on (none when unknown).
    async fn names(&self, url: &Arc<str>) -> Arc<[HeaderName]> {
        self.specs
            .get(url)
            .await
            .map_or_else(|| Arc::from([]), |spec| spec.names)
    }

    /// [`VaryBook::names`] without waiting: unknown when moka would have to wait.
    fn names_now(&self, url: &Arc<str>) -> Arc<[HeaderName]> {
        poll_once(&mut self.specs.get(url).boxed())
            .flatten()
            .map_or_else(|| Arc::from([]), |spec| spec.names)
    }

    async fn learn(&self, url: Arc<str>, names: Arc<[HeaderName]>, lifetime: Duration) {
        self.specs.insert(url, VarySpec { names, lifetime }).await;
    }

    fn purge(&self, matches: impl Fn(&str) -> bool + Send + Sync + 'static) {
        invalidate(&self.specs, move |url, _| matches(url));
    }
}

// === impl FlightGuard ===

impl Drop for FlightGuard {
    fn drop(&mut self) {
        let mut flights = self.cache.flights();
        if flights
            .get(&self.key)
            .is_some_and(|slot| slot.id == self.id)
        {
            flights.remove(&self.key);
        }
    }
}

// === impl CacheControl ===

impl CacheControl {
    /// The directives of every `Cache-Control` value. A repeated age takes the smaller value;
    /// an age that is not a number counts as 0 (RFC 9111: treat as stale).
    fn parse(headers: &HeaderMap) -> Self {
        let mut cc = Self::default();
        for value in headers.get_all(CACHE_CONTROL) {
            let text = String::from_utf8_lossy(value.as_bytes());
            for directive in split_unquoted(&text, ',') {
                let (name, arg) = directive_parts(directive);
                let slot = match name.to_ascii_lowercase().as_str() {
                    "no-store" => {
                        cc.no_store = true;
                        continue;
                    }
                    "no-cache" => {
                        cc.no_cache = true;
                        continue;
                    }
                    "private" => {
                        cc.private = true;
                        continue;
                    }
                    "public" => {
                        cc.public = true;
                        continue;
                    }
                    "must-revalidate" | "proxy-revalidate" => {
                        cc.must_revalidate = true;
                        continue;
                    }
                    "max-age" => &mut cc.max_age,
                    "s-maxage" => &mut cc.s_maxage,
                    "stale-while-revalidate" => &mut cc.stale_while_revalidate,
                    "stale-if-error" => &mut cc.stale_if_error,
                    _ => continue,
                };
                let seconds = delta_seconds(arg);
                *slot = Some(slot.map_or(seconds, |old| old.min(seconds)));
            }
        }
        cc
    }
}

// === impl SurrogateControl ===

impl SurrogateControl {
    /// The directives of every `Surrogate-Control` value that are untargeted or targeted at
    /// `esi-proxy` (`max-age=60;esi-proxy`); a targeted `max-age` beats an untargeted one.
    /// `max-age=N+M` gives N.
    fn parse(headers: &HeaderMap) -> Self {
        let mut sc = Self::default();
        let (mut targeted, mut untargeted) = (None::<u64>, None::<u64>);
        for value in headers.get_all("surrogate-control") {
            let text = String::from_utf8_lossy(value.as_bytes());
            for directive in split_unquoted(&text, ',') {
                let mut parts = split_unquoted(directive, ';').into_iter();
                let body = parts.next().unwrap_or_default();
                let target = parts.next().map(str::trim);
                if target.is_some_and(|t| !t.eq_ignore_ascii_case(DEVICE)) {
                    continue;
                }
                let (name, arg) = directive_parts(body);
                if name.eq_ignore_ascii_case("no-store") {
                    sc.no_store = true;
                } else if name.eq_ignore_ascii_case("max-age") {
                    let first = arg.map(|a| a.split('+').next().unwrap_or_default());
                    let seconds = delta_seconds(first);
                    let slot = if target.is_some() {
                        &mut targeted
                    } else {
                        &mut untargeted
                    };
                    *slot = Some(slot.map_or(seconds, |old| old.min(seconds)));
                }
            }
        }
        sc.max_age = targeted.or(untargeted);
        sc
    }
}

// === helpers ===

/// Counts one size eviction from the `cache` kind.
/// Marks a response that went past the cache unstored.
fn passed(mut fragment: Fragment) -> Fragment {
    fragment.cache = Some(CacheInfo {
        status: "pass",
        ttl: None,
        source: None,
    });
    fragment
}

fn count_eviction(metrics: &Metrics, cache: &'static str) {
    metrics.inc_counter(
        EVICTIONS,
        "Cache entries evicted to stay within the byte bound.",
        Some(("cache", cache)),
        1,
    );
}

/// The byte bound of a side cache for a main cache of `capacity_bytes`.
fn side_capacity(capacity_bytes: u64) -> u64 {
    (capacity_bytes / SIDE_SHARE).max(MIN_SIDE_BYTES)
}

/// `url` as keys hold it: without `#fragment` (never sent upstream).
fn cache_url(url: &Url) -> String {
    match url.as_str().split_once('#') {
        Some((before, _)) => before.to_owned(),
        None => url.as_str().to_owned(),
    }
}

/// `text` in the form keys hold URLs in, when it parses as one; else as given.
fn normalise(text: &str) -> String {
    Url::parse(text).map_or_else(|_| text.to_owned(), |url| cache_url(&url))
}

/// Registers an invalidation predicate; every cache here supports them.
fn invalidate<K, V>(cache: &Cache<K, V>, predicate: impl Fn(&K, &V) -> bool + Send + Sync + 'static)
where
    K: std::hash::Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    if let Err(error) = cache.invalidate_entries_if(predicate) {
        tracing::warn!(%error, "cache purge not applied");
    }
}

/// Polls `fut` once with a waker that does nothing: its output, or `None` if it would wait.
fn poll_once<F: Future + Unpin>(fut: &mut F) -> Option<F::Output> {
    let waker = futures::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    match Pin::new(fut).poll(&mut cx) {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    }
}

/// Runs `fut` now if it does not wait, else on the tokio runtime; `false` when it would wait
/// and there is no runtime to finish it (it is then dropped; moka's operations are
/// cancellation-safe).
fn run_soon(mut fut: BoxFuture<'static, ()>) -> bool {
    if poll_once(&mut fut).is_some() {
        return true;
    }
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn(fut);
            true
        }
        Err(_) => false,
    }
}

/// Sorted, unique union of two lists of names.
fn merge_names(a: &[HeaderName], b: &[HeaderName]) -> Arc<[HeaderName]> {
    let mut names: Vec<HeaderName> = a.iter().chain(b).cloned().collect();
    names.sort_by(|x, y| x.as_str().cmp(y.as_str()));
    names.dedup();
    names.into()
}

/// Header names from config (any case); ones that do not parse are skipped.
fn header_names(names: &[String]) -> Vec<HeaderName> {
    let parsed: Vec<HeaderName> = names
        .iter()
        .filter_map(|n| HeaderName::from_bytes(n.trim().to_ascii_lowercase().as_bytes()).ok())
        .collect();
    merge_names(&parsed, &[]).to_vec()
}

/// The names a response varies on, sorted and unique, without `Accept-Encoding` (bodies are
/// stored decoded); `None` for `*`, a name that does not parse, or more than 16 names.
fn vary_names(headers: &HeaderMap) -> Option<Vec<HeaderName>> {
    let mut names = Vec::new();
    for value in headers.get_all(VARY) {
        let text = value.to_str().ok()?;
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if item == "*" {
                return None;
            }
            let name = HeaderName::from_bytes(item.to_ascii_lowercase().as_bytes()).ok()?;
            if name != http::header::ACCEPT_ENCODING {
                names.push(name);
            }
        }
    }
    let names = merge_names(&names, &[]).to_vec();
    (names.len() <= MAX_VARY_NAMES).then_some(names)
}

/// The response's `Age` in seconds; 0 when absent or unreadable.
fn age_of(headers: &HeaderMap) -> u64 {
    headers
        .get(AGE)
        .and_then(|v| v.to_str().ok())
        .map_or(0, |v| delta_seconds(Some(v)))
}

/// A delta-seconds argument: digits, saturating; anything else is 0.
fn delta_seconds(arg: Option<&str>) -> u64 {
    let Some(digits) = arg.map(str::trim) else {
        return 0;
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return 0;
    }
    digits.parse().unwrap_or(u64::MAX)
}

/// Seconds as a duration, at most [`MAX_AGE_S`].
fn seconds_capped(seconds: u64) -> Duration {
    Duration::from_secs(seconds.min(MAX_AGE_S))
}

/// A directive's name and unquoted argument: `max-age="5"` gives `("max-age", Some("5"))`.
fn directive_parts(directive: &str) -> (&str, Option<&str>) {
    match directive.split_once('=') {
        Some((name, arg)) => (name.trim(), Some(arg.trim().trim_matches('"'))),
        None => (directive.trim(), None),
    }
}

/// The headers an entry keeps: all but hop-by-hop ones.
fn kept_headers(headers: &HeaderMap) -> HeaderMap {
    let mut kept = headers.clone();
    for name in HOP_BY_HOP {
        kept.remove(name);
    }
    kept
}

/// What an entry weighs: body, kept headers, key and a fixed overhead.
fn weigh(key: &CacheKey, headers: &HeaderMap, body_bytes: usize) -> u32 {
    let header_bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + HEADER_OVERHEAD)
        .sum();
    clamp_weight(
        body_bytes
            .saturating_add(header_bytes)
            .saturating_add(key.url.len() + key.variant.len() + ENTRY_OVERHEAD),
    )
}

fn clamp_weight(bytes: usize) -> u32 {
    u32::try_from(bytes).unwrap_or(u32::MAX)
}

/// A copy of a shared fetch error for one waiter.
fn clone_error(error: &FetchError) -> FetchError {
    match error {
        FetchError::Refused { url, reason } => FetchError::Refused {
            url: url.clone(),
            reason: reason.clone(),
        },
        FetchError::Timeout { url, after } => FetchError::Timeout {
            url: url.clone(),
            after: *after,
        },
        FetchError::Connect { url, message } => FetchError::Connect {
            url: url.clone(),
            message: message.clone(),
        },
        FetchError::Status { url, status } => FetchError::Status {
            url: url.clone(),
            status: *status,
        },
        FetchError::TooLarge { url, limit } => FetchError::TooLarge {
            url: url.clone(),
            limit: *limit,
        },
        FetchError::Truncated { url, message } => FetchError::Truncated {
            url: url.clone(),
            message: message.clone(),
        },
        FetchError::Transport { url, message } => FetchError::Transport {
            url: url.clone(),
            message: message.clone(),
        },
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;
    use crate::config::CacheRule;

    const NONE: Credentials = Credentials {
        cookie: false,
        authorization: false,
    };
    const COOKIE_ONLY: Credentials = Credentials {
        cookie: true,
        authorization: false,
    };
    const AUTH_ONLY: Credentials = Credentials {
        cookie: false,
        authorization: true,
    };
    const BOTH: Credentials = Credentials {
        cookie: true,
        authorization: true,
    };

    fn rule(pattern: &str, ttl_s: u64, swr: Option<u64>, keys: &[&str]) -> CacheRule {
        CacheRule {
            pattern: pattern.to_owned(),
            ttl_s,
            stale_while_revalidate_s: swr,
            stale_if_error_s: None,
            key_headers: keys.iter().map(|k| (*k).to_owned()).collect(),
        }
    }

    /// Rules: 0 `/rule/*` (11 s, swr 5), 1 `a.test:80/host/*` (13 s, keyed by cookie),
    /// 2 `/auth/*` (17 s, keyed by cookie and authorization); default TTL 7 s; key header
    /// `X-Device`. With `windows`, config stale windows of 2 s and 3 s.
    fn policy(windows: bool) -> CachePolicy {
        let config = CacheConfig {
            default_ttl_s: 7,
            stale_while_revalidate_s: if windows { 2 } else { 0 },
            stale_if_error_s: if windows { 3 } else { 0 },
            key_headers: vec!["X-Device".into()],
            rules: vec![
                rule("/rule/*", 11, Some(5), &[]),
                rule("a.test:80/host/*", 13, None, &["Cookie"]),
                rule("/auth/*", 17, None, &["cookie", "Authorization"]),
            ],
            ..CacheConfig::default()
        };
        CachePolicy::from_config(&config)
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).expect("test names are valid"),
                HeaderValue::from_str(value).expect("test values are valid"),
            );
        }
        map
    }

    fn url(text: &str) -> Url {
        Url::parse(text).expect("test URLs parse")
    }

    fn store(ttl: u64, swr: u64, sie: u64, source: TtlSource) -> Decision {
        Decision::Store {
            ttl: Duration::from_secs(ttl),
            stale_while_revalidate: Duration::from_secs(swr),
            stale_if_error: Duration::from_secs(sie),
            source,
        }
    }

    fn rule_source(index: usize) -> TtlSource {
        let pattern = ["/rule/*", "a.test:80/host/*", "/auth/*"][index];
        TtlSource::Rule(index, pattern.to_owned())
    }

    /// Header name and value pairs.
    type Pairs = &'static [(&'static str, &'static str)];

    /// (what, URL, status, response headers, credentials, want); policy without windows.
    type Case = (
        &'static str,
        &'static str,
        u16,
        &'static [(&'static str, &'static str)],
        Credentials,
        Decision,
    );

    #[test]
    fn ttl_sources_in_precedence_order() {
        use TtlSource::*;
        let all: &[(&str, &str)] = &[
            ("surrogate-control", "max-age=20"),
            ("cache-control", "s-maxage=30, max-age=40"),
        ];
        let cases: Vec<Case> = vec![
            (
                "rule beats every header",
                "http://b.test/rule/x",
                200,
                all,
                NONE,
                store(11, 5, 0, rule_source(0)),
            ),
            (
                "host rule",
                "http://a.test/host/x",
                200,
                all,
                NONE,
                store(13, 0, 0, rule_source(1)),
            ),
            (
                "host rule, other port",
                "http://a.test:81/host/x",
                200,
                &[],
                NONE,
                store(7, 0, 0, Default),
            ),
            (
                "surrogate-control beats s-maxage",
                "http://b.test/f",
                200,
                all,
                NONE,
                store(20, 0, 0, SurrogateControl),
            ),
            (
                "s-maxage beats max-age",
                "http://b.test/f",
                200,
                &[("cache-control", "max-age=40, s-maxage=30")],
                NONE,
                store(30, 0, 0, SMaxAge),
            ),
            (
                "max-age beats default",
                "http://b.test/f",
                200,
                &[("cache-control", "max-age=40")],
                NONE,
                store(40, 0, 0, MaxAge),
            ),
            (
                "default",
                "http://b.test/f",
                200,
                &[],
                NONE,
                store(7, 0, 0, Default),
            ),
            (
                "age subtracted",
                "http://b.test/f",
                200,
                &[("cache-control", "max-age=40"), ("age", "15")],
                NONE,
                store(25, 0, 0, MaxAge),
            ),
            (
                "age past max-age",
                "http://b.test/f",
                200,
                &[("cache-control", "max-age=40"), ("age", "50")],
                NONE,
                Decision::Pass("ttl"),
            ),
            (
                "age not subtracted from a rule",
                "http://b.test/rule/x",
                200,
                &[("age", "50")],
                NONE,
                store(11, 5, 0, rule_source(0)),
            ),
            (
                "max-age=0",
                "http://b.test/f",
                200,
                &[("cache-control", "max-age=0")],
                NONE,
                Decision::Pass("ttl"),
            ),
            (
                "max-age not a number",
                "http://b.test/f",
                200,
                &[("cache-control", "max-age=soon")],
                NONE,
                Decision::Pass("ttl"),
            ),
            (
                "quoted max-age",
                "http://b.test/f",
                200,
                &[("cache-control", "max-age=\"40\"")],
                NONE,
                store(40, 0, 0, MaxAge),
            ),
            (
                "repeated max-age takes the smaller",
                "http://b.test/f",
                200,
                &[
                    ("cache-control", "max-age=40"),
                    ("cache-control", "max-age=9"),
                ],
                NONE,
                store(9, 0, 0, MaxAge),
            ),
            (
                "huge max-age capped",
                "http://b.test/f",
                200,
                &[("cache-control", "max-age=99999999999999999999999")],
                NONE,
                store(MAX_AGE_S, 0, 0, MaxAge),
            ),
            (
                "no-cache without a rule",
                "http://b.test/f",
                200,
                &[("cache-control", "no-cache, max-age=40")],
                NONE,
                Decision::Pass("no-cache"),
            ),
            (
                "no-cache with a rule",
                "http://b.test/rule/x",
                200,
                &[("cache-control", "no-cache")],
                NONE,
                store(11, 5, 0, rule_source(0)),
            ),
        ];
        check(&policy(false), &cases);
    }

    #[test]
    fn never_stored() {
        let cases: Vec<Case> = vec![
            (
                "no-store",
                "http://b.test/rule/x",
                200,
                &[("cache-control", "max-age=40, no-store")],
                NONE,
                Decision::Pass("no-store"),
            ),
            (
                "surrogate no-store",
                "http://b.test/rule/x",
                200,
                &[("surrogate-control", "no-store")],
                NONE,
                Decision::Pass("no-store"),
            ),
            (
                "private",
                "http://b.test/rule/x",
                200,
                &[("cache-control", "private, max-age=40")],
                NONE,
                Decision::Pass("private"),
            ),
            (
                "private with fields",
                "http://b.test/f",
                200,
                &[("cache-control", "private=\"x-a, x-b\", max-age=40")],
                NONE,
                Decision::Pass("private"),
            ),
            (
                "private beats public",
                "http://b.test/f",
                200,
                &[("cache-control", "public, private, max-age=40")],
                NONE,
                Decision::Pass("private"),
            ),
            (
                "Vary: *",
                "http://b.test/rule/x",
                200,
                &[("vary", "accept-language, *")],
                NONE,
                Decision::Pass("vary"),
            ),
            (
                "Vary not a name",
                "http://b.test/f",
                200,
                &[("vary", "a b"), ("cache-control", "max-age=40")],
                NONE,
                Decision::Pass("vary"),
            ),
            (
                "Set-Cookie",
                "http://b.test/rule/x",
                200,
                &[("set-cookie", "a=1")],
                NONE,
                Decision::Pass("set-cookie"),
            ),
            (
                "404",
                "http://b.test/rule/x",
                404,
                &[],
                NONE,
                Decision::Pass("status"),
            ),
            (
                "206",
                "http://b.test/f",
                206,
                &[("cache-control", "max-age=40")],
                NONE,
                Decision::Pass("status"),
            ),
            (
                "203",
                "http://b.test/f",
                203,
                &[("cache-control", "max-age=40")],
                NONE,
                Decision::Pass("status"),
            ),
        ];
        check(&policy(false), &cases);
    }

    #[test]
    fn credentials() {
        use TtlSource::*;
        let cases: Vec<Case> = vec![
            (
                "cookie, max-age",
                "http://b.test/f",
                200,
                &[("cache-control", "max-age=40")],
                COOKIE_ONLY,
                Decision::Pass("credentials"),
            ),
            (
                "authorization, default",
                "http://b.test/f",
                200,
                &[],
                AUTH_ONLY,
                Decision::Pass("credentials"),
            ),
            (
                "cookie, public",
                "http://b.test/f",
                200,
                &[("cache-control", "public, max-age=40")],
                COOKIE_ONLY,
                store(40, 0, 0, MaxAge),
            ),
            (
                "both, s-maxage",
                "http://b.test/f",
                200,
                &[("cache-control", "s-maxage=30")],
                BOTH,
                store(30, 0, 0, SMaxAge),
            ),
            (
                "cookie, surrogate max-age alone",
                "http://b.test/f",
                200,
                &[("surrogate-control", "max-age=20")],
                COOKIE_ONLY,
                Decision::Pass("credentials"),
            ),
            (
                "cookie, rule keys cookie",
                "http://a.test/host/x",
                200,
                &[("cache-control", "max-age=40")],
                COOKIE_ONLY,
                store(13, 0, 0, rule_source(1)),
            ),
            (
                "authorization, rule keys cookie only",
                "http://a.test/host/x",
                200,
                &[],
                AUTH_ONLY,
                Decision::Pass("credentials"),
            ),
            (
                "both, rule keys cookie only",
                "http://a.test/host/x",
                200,
                &[],
                BOTH,
                Decision::Pass("credentials"),
            ),
            (
                "both, rule keys both",
                "http://b.test/auth/x",
                200,
                &[],
                BOTH,
                store(17, 0, 0, rule_source(2)),
            ),
            (
                "cookie, rule without keys",
                "http://b.test/rule/x",
                200,
                &[],
                COOKIE_ONLY,
                Decision::Pass("credentials"),
            ),
            (
                "public does not beat no-store",
                "http://b.test/f",
                200,
                &[("cache-control", "public, no-store")],
                COOKIE_ONLY,
                Decision::Pass("no-store"),
            ),
        ];
        check(&policy(false), &cases);

        // The bool form assumes both credentials.
        let p = policy(false);
        let empty = HeaderMap::new();
        let ok = StatusCode::OK;
        let keyed_cookie = url("http://a.test/host/x");
        let keyed_both = url("http://b.test/auth/x");
        assert_eq!(
            p.decide(&keyed_cookie, ok, &empty, true),
            Decision::Pass("credentials")
        );
        assert_eq!(
            p.decide(&keyed_cookie, ok, &empty, false),
            store(13, 0, 0, rule_source(1))
        );
        assert_eq!(
            p.decide(&keyed_both, ok, &empty, true),
            store(17, 0, 0, rule_source(2))
        );

        // A config-wide key header counts as keying.
        let config = CacheConfig {
            default_ttl_s: 7,
            key_headers: vec!["Cookie".into()],
            ..CacheConfig::default()
        };
        let p = CachePolicy::from_config(&config);
        assert_eq!(
            p.decide_for(&url("http://b.test/f"), ok, &empty, COOKIE_ONLY),
            store(7, 0, 0, Default)
        );
    }

    #[test]
    fn surrogate_control_forms() {
        use TtlSource::*;
        const MAX_AGE_40: (&str, &str) = ("cache-control", "max-age=40");
        let cases: Vec<Case> = vec![
            (
                "N+M gives N",
                "http://b.test/f",
                200,
                &[("surrogate-control", "max-age=20+600")],
                NONE,
                store(20, 0, 0, SurrogateControl),
            ),
            (
                "with content",
                "http://b.test/f",
                200,
                &[("surrogate-control", "content=\"ESI/1.0\", max-age=20")],
                NONE,
                store(20, 0, 0, SurrogateControl),
            ),
            (
                "content only",
                "http://b.test/f",
                200,
                &[("surrogate-control", "content=\"ESI/1.0\""), MAX_AGE_40],
                NONE,
                store(40, 0, 0, MaxAge),
            ),
            (
                "targeted beats untargeted",
                "http://b.test/f",
                200,
                &[("surrogate-control", "max-age=50, max-age=20;esi-proxy")],
                NONE,
                store(20, 0, 0, SurrogateControl),
            ),
            (
                "targeted, any case",
                "http://b.test/f",
                200,
                &[("surrogate-control", "max-age=20;ESI-Proxy")],
                NONE,
                store(20, 0, 0, SurrogateControl),
            ),
            (
                "targeted elsewhere",
                "http://b.test/f",
                200,
                &[("surrogate-control", "max-age=20;other"), MAX_AGE_40],
                NONE,
                store(40, 0, 0, MaxAge),
            ),
            (
                "no-store elsewhere",
                "http://b.test/f",
                200,
                &[("surrogate-control", "no-store;other")],
                NONE,
                store(7, 0, 0, Default),
            ),
            (
                "no-store for us",
                "http://b.test/f",
                200,
                &[("surrogate-control", "no-store;esi-proxy"), MAX_AGE_40],
                NONE,
                Decision::Pass("no-store"),
            ),
            (
                "quoted",
                "http://b.test/f",
                200,
                &[("surrogate-control", "max-age=\"20\"")],
                NONE,
                store(20, 0, 0, SurrogateControl),
            ),
            (
                "second header",
                "http://b.test/f",
                200,
                &[
                    ("surrogate-control", "content=\"ESI/1.0\""),
                    ("surrogate-control", "max-age=20"),
                ],
                NONE,
                store(20, 0, 0, SurrogateControl),
            ),
            (
                "zero",
                "http://b.test/f",
                200,
                &[("surrogate-control", "max-age=0"), MAX_AGE_40],
                NONE,
                Decision::Pass("ttl"),
            ),
        ];
        check(&policy(false), &cases);
    }

    #[test]
    fn stale_windows() {
        use TtlSource::*;
        let both: &[(&str, &str)] = &[(
            "cache-control",
            "max-age=10, stale-while-revalidate=30, stale-if-error=60",
        )];
        // (what, URL, response headers, want) with config windows 2 s and 3 s.
        let cases: &[(&str, &str, Pairs, Decision)] = &[
            (
                "response windows",
                "http://b.test/f",
                both,
                store(10, 30, 60, MaxAge),
            ),
            (
                "config windows",
                "http://b.test/f",
                &[("cache-control", "max-age=10")],
                store(10, 2, 3, MaxAge),
            ),
            (
                "one from each",
                "http://b.test/f",
                &[("cache-control", "max-age=10, stale-if-error=60")],
                store(10, 2, 60, MaxAge),
            ),
            (
                "rule beats response",
                "http://b.test/rule/x",
                both,
                store(11, 5, 60, rule_source(0)),
            ),
            (
                "must-revalidate",
                "http://b.test/f",
                &[(
                    "cache-control",
                    "max-age=10, must-revalidate, stale-if-error=60",
                )],
                store(10, 0, 0, MaxAge),
            ),
            (
                "proxy-revalidate, rule window kept",
                "http://b.test/rule/x",
                &[("cache-control", "proxy-revalidate")],
                store(11, 5, 0, rule_source(0)),
            ),
            (
                "window not a number",
                "http://b.test/f",
                &[("cache-control", "max-age=10, stale-if-error=x")],
                store(10, 2, 0, MaxAge),
            ),
            (
                "with surrogate-control",
                "http://b.test/f",
                &[
                    ("surrogate-control", "max-age=20"),
                    ("cache-control", "stale-while-revalidate=30"),
                ],
                store(20, 30, 3, SurrogateControl),
            ),
        ];
        let p = policy(true);
        for (what, text, pairs, want) in cases {
            let got = p.decide_for(&url(text), StatusCode::OK, &headers(pairs), NONE);
            assert_eq!(got, *want, "{what}");
        }
    }

    fn check(policy: &CachePolicy, cases: &[Case]) {
        for (what, text, status, pairs, credentials, want) in cases {
            let status = StatusCode::from_u16(*status).expect("test statuses are valid");
            let got = policy.decide_for(&url(text), status, &headers(pairs), *credentials);
            assert_eq!(got, *want, "{what}");
        }
    }

    #[test]
    fn key_headers_per_url() {
        let cases: &[(&str, &[&str])] = &[
            ("http://b.test/f", &["x-device"]),
            ("http://a.test/host/x", &["cookie", "x-device"]),
            (
                "http://b.test/auth/y",
                &["authorization", "cookie", "x-device"],
            ),
        ];
        let p = policy(false);
        for (text, want) in cases {
            let names = p.key_headers(&url(text));
            let got: Vec<&str> = names.iter().map(HeaderName::as_str).collect();
            assert_eq!(got, *want, "{text}");
        }
    }

    #[test]
    fn vary_names_parsed() {
        let cases: &[(Pairs, Option<&[&str]>)] = &[
            (&[], Some(&[])),
            (&[("vary", "Accept-Language")], Some(&["accept-language"])),
            (
                &[("vary", "Accept-Encoding, accept-language")],
                Some(&["accept-language"]),
            ),
            (
                &[("vary", "User-Agent, accept-language, user-agent")],
                Some(&["accept-language", "user-agent"]),
            ),
            (&[("vary", "x-b"), ("vary", "x-a")], Some(&["x-a", "x-b"])),
            (&[("vary", " , ")], Some(&[])),
            (&[("vary", "*")], None),
            (&[("vary", "x-a, *")], None),
            (&[("vary", "a b")], None),
            (&[("vary", "a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,p,q")], None),
            (
                &[("vary", "a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,p")],
                Some(&[
                    "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n", "o", "p",
                ]),
            ),
        ];
        for (pairs, want) in cases {
            let got = vary_names(&headers(pairs));
            let got: Option<Vec<&str>> = got
                .as_ref()
                .map(|names| names.iter().map(HeaderName::as_str).collect());
            assert_eq!(got.as_deref(), *want, "{pairs:?}");
        }
    }

    #[test]
    fn keys_vary_on_named_headers_only() {
        let url: Arc<str> = "http://a.test/f".into();
        let lang = [HeaderName::from_static("accept-language")];
        // (what, names, first request, second request, credentials of each, same key)
        type KeyCase<'a> = (
            &'a str,
            &'a [HeaderName],
            &'a [(&'a str, &'a str)],
            &'a [(&'a str, &'a str)],
            (Credentials, Credentials),
            bool,
        );
        let cases: &[KeyCase<'_>] = &[
            (
                "same value",
                &lang,
                &[("accept-language", "de")],
                &[("accept-language", "de")],
                (NONE, NONE),
                true,
            ),
            (
                "other value",
                &lang,
                &[("accept-language", "de")],
                &[("accept-language", "en")],
                (NONE, NONE),
                false,
            ),
            (
                "absent vs empty",
                &lang,
                &[],
                &[("accept-language", "")],
                (NONE, NONE),
                false,
            ),
            (
                "two values vs one joined",
                &lang,
                &[("accept-language", "de"), ("accept-language", "en")],
                &[("accept-language", "de, en")],
                (NONE, NONE),
                false,
            ),
            (
                "unnamed header differs",
                &lang,
                &[("accept-language", "de"), ("user-agent", "a")],
                &[("accept-language", "de"), ("user-agent", "b")],
                (NONE, NONE),
                true,
            ),
            (
                "no names",
                &[],
                &[("accept-language", "de")],
                &[("accept-language", "en")],
                (NONE, NONE),
                true,
            ),
            (
                "credentials vs none",
                &[],
                &[],
                &[],
                (COOKIE_ONLY, NONE),
                false,
            ),
            (
                "cookie vs authorization",
                &[],
                &[],
                &[],
                (COOKIE_ONLY, AUTH_ONLY),
                false,
            ),
            (
                "same credentials, other cookie, cookie not named",
                &[],
                &[("cookie", "a=1")],
                &[("cookie", "a=2")],
                (COOKIE_ONLY, COOKIE_ONLY),
                true,
            ),
            (
                "cookie named",
                &[HeaderName::from_static("cookie")],
                &[("cookie", "a=1")],
                &[("cookie", "a=2")],
                (COOKIE_ONLY, COOKIE_ONLY),
                false,
            ),
        ];
        for (what, names, first, second, (c1, c2), same) in cases {
            let a = CacheKey::new(&url, names, &headers(first), *c1);
            let b = CacheKey::new(&url, names, &headers(second), *c2);
            assert_eq!(a == b, *same, "{what}");
        }
        // Names differ, values alike: different keys.
        let h = headers(&[("accept-language", "de")]);
        let with = CacheKey::new(&url, &lang, &h, NONE);
        let without = CacheKey::new(&url, &[], &h, NONE);
        assert_ne!(with, without);
    }

    #[test]
    fn weigher_counts_body_headers_and_key() {
        let url: Arc<str> = "http://a.test/f".into();
        let key = CacheKey::new(&url, &[], &HeaderMap::new(), NONE);
        // (what, kept headers, body bytes, want)
        let cases: &[(&str, Pairs, usize, u32)] = &[
            ("empty", &[], 0, 15 + 1 + 160),
            ("body", &[], 1000, 1000 + 15 + 1 + 160),
            (
                "header",
                &[("content-type", "text/html")],
                1000,
                1000 + (12 + 9 + 32) + 15 + 1 + 160,
            ),
            ("huge", &[], usize::MAX, u32::MAX),
        ];
        for (what, pairs, body, want) in cases {
            assert_eq!(weigh(&key, &headers(pairs), *body), *want, "{what}");
        }

        // An entry drops hop-by-hop headers before it is weighed.
        let fragment = Fragment {
            cache: None,
            parsed: None,
            status: StatusCode::OK,
            headers: headers(&[
                ("content-type", "text/html"),
                ("transfer-encoding", "chunked"),
                ("connection", "close"),
            ]),
            body: Bytes::from(vec![b'x'; 1000]),
        };
        let entry = Entry::new(
            key,
            Arc::from([]),
            fragment,
            [Duration::from_secs(1); 3],
            TtlSource::Default,
        );
        assert_eq!(entry.weight, 1000 + (12 + 9 + 32) + 15 + 1 + 160);
        assert_eq!(entry.headers.len(), 1);
        assert_eq!(entry.lifetime(), Duration::from_secs(2));
    }

    #[test]
    fn hit_shares_the_body() {
        let url: Arc<str> = "http://a.test/f".into();
        let key = CacheKey::new(&url, &[], &HeaderMap::new(), NONE);
        let body = Bytes::from(vec![b'x'; 100]);
        let fragment = Fragment {
            cache: None,
            parsed: None,
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: body.clone(),
        };
        let entry = Entry::new(
            key,
            Arc::from([]),
            fragment,
            [Duration::from_secs(1); 3],
            TtlSource::Default,
        );
        assert_eq!(entry.fragment("hit").body.as_ptr(), body.as_ptr());
    }

    #[test]
    fn device_token_is_the_announced_one() {
        let announced = crate::headers::CAPABILITY;
        assert!(announced.starts_with(&format!("{DEVICE}=")), "{announced}");
    }

    #[test]
    fn errors_copied_whole() {
        let url = || "http://a.test/".to_owned();
        let errors = vec![
            FetchError::Refused {
                url: url(),
                reason: "r".into(),
            },
            FetchError::Timeout {
                url: url(),
                after: Duration::from_millis(5),
            },
            FetchError::Connect {
                url: url(),
                message: "m".into(),
            },
            FetchError::Status {
                url: url(),
                status: StatusCode::BAD_GATEWAY,
            },
            FetchError::TooLarge {
                url: url(),
                limit: 1,
            },
            FetchError::Truncated {
                url: url(),
                message: "m".into(),
            },
            FetchError::Transport {
                url: url(),
                message: "m".into(),
            },
        ];
        for error in errors {
            let copy = clone_error(&error);
            assert_eq!(copy.kind(), error.kind());
            assert_eq!(copy.to_string(), error.to_string());
        }
    }

    #[test]
    fn urls_normalised_for_keys_and_purges() {
        let cases: &[(&str, &str)] = &[
            ("http://a.test:80/f?x=1#top", "http://a.test/f?x=1"),
            ("HTTP://A.test/f", "http://a.test/f"),
            ("not a url", "not a url"),
        ];
        for (text, want) in cases {
            assert_eq!(normalise(text), *want, "{text}");
        }
    }

    #[tokio::test]
    async fn layouts_stored_per_policy() {
        let metrics = Arc::new(Metrics::new());
        let cache = LayoutCache::new(1 << 20, Arc::clone(&metrics));
        let p = policy(false);
        let template = Arc::new(Template::default());
        let ok = StatusCode::OK;
        let page = url("http://b.test/page");
        let de = headers(&[("accept-language", "de")]);
        let en = headers(&[("accept-language", "en")]);
        let response = headers(&[
            ("cache-control", "max-age=60"),
            ("vary", "Accept-Language"),
            ("surrogate-control", "content=\"ESI/1.0\""),
            ("content-length", "123"),
            ("content-type", "text/html"),
        ]);
        assert!(cache.get(&p, &page, &de).is_none());
        assert!(cache.insert(&p, &page, &de, ok, &response, Arc::clone(&template), 100));
        let hit = cache.get(&p, &page, &de).expect("stored for de");
        assert_eq!(hit.source, TtlSource::MaxAge);
        assert_eq!(hit.ttl, Duration::from_secs(60));
        assert!(hit.headers.get("surrogate-control").is_none());
        assert!(hit.headers.get("content-length").is_none());
        assert_eq!(
            hit.headers.get("content-type").map(HeaderValue::as_bytes),
            Some(&b"text/html"[..])
        );
        assert!(
            cache.get(&p, &page, &en).is_none(),
            "varies on Accept-Language"
        );

        // Credentials: a cookie-bearing request's response is not stored without public.
        let user = headers(&[("cookie", "s=1")]);
        let other = url("http://b.test/other");
        let plain = headers(&[("cache-control", "max-age=60")]);
        assert!(!cache.insert(&p, &other, &user, ok, &plain, Arc::clone(&template), 100));
        let public = headers(&[("cache-control", "public, max-age=60")]);
        assert!(cache.insert(&p, &other, &user, ok, &public, Arc::clone(&template), 100));
        assert!(cache.get(&p, &other, &user).is_some());
        assert!(
            cache.get(&p, &other, &HeaderMap::new()).is_none(),
            "anonymous requests have their own entry"
        );

        // Never stored, whatever the TTL.
        let set_cookie = headers(&[("cache-control", "max-age=60"), ("set-cookie", "a=1")]);
        assert!(!cache.insert(&p, &page, &de, ok, &set_cookie, Arc::clone(&template), 100));
        assert!(!cache.insert(
            &p,
            &page,
            &de,
            StatusCode::NOT_FOUND,
            &response,
            Arc::clone(&template),
            100
        ));

        cache.purge_url("http://b.test:80/page");
        assert!(cache.get(&p, &page, &de).is_none(), "purged");
        assert!(cache.get(&p, &other, &user).is_some(), "other URL kept");
        cache.purge_prefix("http://b.test/");
        assert!(cache.get(&p, &other, &user).is_none(), "purged by prefix");

        cache.run_pending_tasks().await;
        cache.publish_metrics();
        let text = metrics.render();
        assert!(
            text.contains("esi_proxy_cache_hits_total{cache=\"layout\"} 3"),
            "{text}"
        );
        assert!(text.contains("esi_proxy_layout_cache_entries 0"), "{text}");
    }
}
