//! The one store both caches use: values under [`CacheKey`]s (URL and the request's values of
//! the names it varies on), the per-URL Vary specs, the byte weigher, per-value expiry, purges
//! by URL, prefix or surrogate key (hard or soft), the key index kept in step, and the gauges.
//! Generic over what it holds (fragment entries, layouts); never decides a TTL (the policy
//! does) and never fetches.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::{BoxFuture, FutureExt};
use http::header::HeaderName;
use http::HeaderMap;
use moka::future::Cache;
use moka::notification::RemovalCause;
use moka::ops::compute::{CompResult, Op};
use moka::Expiry;
use url::Url;

use super::policy::{merge_names, vary_names, CachePolicy, Credentials};
use super::tags::{PurgeMode, TagIndex};
use super::varying::Varying;
use super::{EVICTIONS, HITS, HITS_HELP, KEYS_DROPPED, MISSES, MISSES_HELP, TAG_INDEX};
use crate::telemetry::{Counter, Metrics};

/// Bytes a key's variant is built in before it grows: the credential bits and the forwarded
/// host and scheme with their values.
const VARIANT_ROOM: usize = 96;

/// Bytes charged per entry on top of its body, headers and key: the `Arc`, the entry struct
/// and moka's own bookkeeping.
const ENTRY_OVERHEAD: usize = 160;
/// Bytes charged per kept header on top of its name and value.
const HEADER_OVERHEAD: usize = 32;
/// Bytes charged per vary spec or hit-for-pass marker on top of its key.
pub(super) const SIDE_OVERHEAD: usize = 64;
/// The side caches (vary specs, hit-for-pass markers) get this fraction of the main capacity
/// each, and at least [`MIN_SIDE_BYTES`].
const SIDE_SHARE: u64 = 8;
/// Smallest byte bound of a side cache.
const MIN_SIDE_BYTES: u64 = 64 * 1024;

/// Values bounded in bytes under [`CacheKey`]s, each expiring by its own [`Lifetime`], with the
/// vary specs their keys are computed from. The fragment cache and the layout cache each own
/// one; what tells them apart is their [`Kind`].
pub(super) struct Store<V> {
    kind: &'static Kind,
    entries: Cache<CacheKey, V>,
    vary: VaryBook,
    /// Surrogate key → the keys of the entries it tags; entries leave it as they leave
    /// `entries` (expired, evicted, replaced, purged), through the eviction listener.
    tags: Arc<TagIndex>,
    metrics: Arc<Metrics>,
    /// Its hit and miss series, resolved once: counted on every lookup.
    hits: Counter,
    misses: Counter,
}

/// What tells one store from another: its names in moka and in metrics.
pub(super) struct Kind {
    /// The `cache` label of its hit, miss and eviction counters.
    pub(super) label: &'static str,
    /// moka's name of its entries.
    pub(super) entries_name: &'static str,
    /// moka's name of its vary specs.
    pub(super) vary_name: &'static str,
    /// The gauge of entries held: name and help.
    pub(super) entries_gauge: (&'static str, &'static str),
    /// The gauge of bytes held: name and help.
    pub(super) bytes_gauge: (&'static str, &'static str),
}

/// A value a [`Store`] holds: cheap to clone, it says what it weighs, how long it is kept, its
/// surrogate keys and what a soft purge makes of it.
pub(super) trait Stored: Lifetime + Clone + Send + Sync + 'static {
    /// What it weighs against the capacity (see [`weigh`]).
    fn weight(&self) -> u32;

    /// The surrogate keys it is tagged with.
    fn tags(&self) -> &[Arc<str>];

    /// What a soft purge with this grace makes of it.
    fn soften(&self, grace: Duration) -> Softened<Self>;
}

/// What a soft purge makes of one value.
pub(super) enum Softened<V> {
    /// This value, stale from now, takes its place.
    Replace(V),
    /// Already stale: left as it is.
    Keep,
    /// Never served stale: dropped.
    Remove,
}

/// Values that say how long they may be kept.
pub(super) trait Lifetime {
    fn lifetime(&self) -> Duration;
}

/// Per-entry expiry from [`Lifetime`], counted from each insert.
pub(super) struct ByLifetime;

/// The key of an entry: the URL (without `#fragment`) and the request's values of the header
/// names it varies on, with which credentials went upstream.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct CacheKey {
    pub(super) url: Arc<str>,
    /// See [`CacheKey::new`] for the encoding.
    variant: Box<[u8]>,
}

/// How a response is keyed when it is stored.
pub(super) struct Variant {
    /// The key it is stored under.
    pub(super) key: CacheKey,
    /// The names its `Vary` lists: what the store learns for its URL.
    pub(super) vary: Arc<[HeaderName]>,
    /// Every name `key` was computed from (`vary` and the policy's key headers), sorted, so a
    /// request that waited on the response can tell whether it is its variant.
    pub(super) names: Arc<[HeaderName]>,
}

/// The URLs a purge or a listing is about.
#[derive(Debug, Clone)]
pub(super) enum Urls {
    /// One URL, every variant of it.
    Equal(Arc<str>),
    /// Every URL starting with this text.
    Prefix(Arc<str>),
}

/// The header names the last stored response for a URL varied on.
#[derive(Debug, Clone)]
struct VarySpec {
    names: Arc<[HeaderName]>,
    lifetime: Duration,
}

/// Per-URL vary specs, bounded in bytes, and which URLs may have one naming headers.
#[derive(Clone)]
struct VaryBook {
    specs: Cache<Arc<str>, VarySpec>,
    varying: Arc<Varying>,
}

// === impl Store ===

impl<V: Stored> Store<V> {
    /// An empty store keeping at most `capacity_bytes` of values; its vary specs get an eighth
    /// of that (at least 64 KiB). Size evictions are counted under the kind's label.
    /// Its surrogate-key index holds at most `max_tag_pairs` (key, entry) pairs.
    pub(super) fn new(
        kind: &'static Kind,
        capacity_bytes: u64,
        max_tag_pairs: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        let evicted = Arc::clone(&metrics);
        let tags = Arc::new(TagIndex::new(max_tag_pairs));
        let untag = Arc::clone(&tags);
        let entries = Cache::builder()
            .name(kind.entries_name)
            .max_capacity(capacity_bytes)
            .weigher(|_key: &CacheKey, value: &V| value.weight())
            .expire_after(ByLifetime)
            .eviction_listener(move |key: Arc<CacheKey>, value: V, cause| {
                if cause == RemovalCause::Size {
                    count_eviction(&evicted, kind.label);
                }
                // Every way out, a replacement too: the new value counted its own tags in.
                untag.remove(&key, value.tags());
            })
            .support_invalidation_closures()
            .build();
        let label = Some(("cache", kind.label));
        Self {
            kind,
            entries,
            vary: VaryBook::new(kind.vary_name, side_capacity(capacity_bytes)),
            tags,
            hits: metrics.counter(HITS, HITS_HELP, label),
            misses: metrics.counter(MISSES, MISSES_HELP, label),
            metrics,
        }
    }

    /// The key of a request under the URL's current vary spec and the policy's key names.
    pub(super) async fn key_for(
        &self,
        policy: &CachePolicy,
        url: &Url,
        text: &Arc<str>,
        headers: &HeaderMap,
        credentials: Credentials,
    ) -> CacheKey {
        let vary = self.vary.names(text).await;
        key_of(policy, url, text, vary.as_deref(), headers, credentials)
    }

    /// [`Store::key_for`] without waiting: the vary spec counts as unknown when moka would
    /// have to wait.
    pub(super) fn key_now(
        &self,
        policy: &CachePolicy,
        url: &Url,
        text: &Arc<str>,
        headers: &HeaderMap,
        credentials: Credentials,
    ) -> CacheKey {
        let vary = self.vary.names_now(text);
        key_of(policy, url, text, vary.as_deref(), headers, credentials)
    }

    /// The value under `key`, whatever its age.
    pub(super) async fn get(&self, key: &CacheKey) -> Option<V> {
        self.entries.get(key).await
    }

    /// [`Store::get`] without waiting: `None` when moka would have to wait.
    pub(super) fn get_now(&self, key: &CacheKey) -> Option<V> {
        poll_once(&mut self.entries.get(key).boxed()).flatten()
    }

    /// Stores `value` under `key`, indexed by its surrogate keys, then learns `vary` for its
    /// URL for as long as the value lives. A tagged value the full index cannot take is not
    /// stored (and an older one under `key` goes), so a purge by key never misses a copy;
    /// that is counted. The future owns what it needs, so a caller that cannot wait may hand
    /// it to [`run_soon`].
    pub(super) fn insert(
        &self,
        key: CacheKey,
        vary: Arc<[HeaderName]>,
        value: V,
    ) -> impl Future<Output = ()> + Send + 'static {
        let (entries, book) = (self.entries.clone(), self.vary.clone());
        let (tags, metrics, label) = (
            Arc::clone(&self.tags),
            Arc::clone(&self.metrics),
            self.kind.label,
        );
        let spec = VarySpec {
            names: vary,
            lifetime: value.lifetime(),
        };
        async move {
            if !tags.add(&key, value.tags()) {
                tracing::warn!(url = %key.url, cache = label, "surrogate-key index full: response not stored");
                count_keys_dropped(&metrics, "index_full", value.tags().len() as u64);
                entries.invalidate(&key).await;
                return;
            }
            let url = Arc::clone(&key.url);
            entries.insert(key, value).await;
            if !spec.names.is_empty() {
                book.varying.add(&url);
            }
            book.specs.insert(url, spec).await;
        }
    }

    /// Drops the value under `key`.
    pub(super) async fn remove(&self, key: &CacheKey) {
        self.entries.invalidate(key).await;
    }

    /// Drops every value whose URL `urls` matches (all variants), with those URLs' vary specs.
    /// A fetch already in flight may still store its response.
    pub(super) fn purge(&self, urls: &Urls) {
        let (a, b) = (urls.clone(), urls.clone());
        invalidate(&self.entries, move |key, _| a.matches(&key.url));
        invalidate(&self.vary.specs, move |url, _| b.matches(url));
    }

    /// Drops or softens (as `mode` says) every value whose URL `urls` matches; returns how
    /// many there were. Walks the store once. A hard purge drops the URLs' vary specs too.
    pub(super) async fn purge_urls(&self, urls: &Urls, mode: PurgeMode) -> u64 {
        let keys: Vec<CacheKey> = self
            .entries
            .iter()
            .filter(|(key, _)| urls.matches(&key.url))
            .map(|(key, _)| CacheKey::clone(&key))
            .collect();
        match mode {
            PurgeMode::Hard => {
                self.purge(urls);
                keys.len() as u64
            }
            PurgeMode::Soft { grace } => self.purge_keys(keys, grace).await,
        }
    }

    /// Drops or softens every value tagged with one of `tags`; returns how many there were.
    pub(super) async fn purge_tags(&self, tags: &[String], mode: PurgeMode) -> u64 {
        let keys = self.tags.keys_for(tags);
        match mode {
            PurgeMode::Hard => {
                let mut purged = 0;
                for key in keys {
                    if self.entries.remove(&key).await.is_some() {
                        purged += 1;
                    }
                }
                purged
            }
            PurgeMode::Soft { grace } => self.purge_keys(keys, grace).await,
        }
    }

    /// Softens the values under `keys`, each in one atomic step (a value stored meanwhile is
    /// the one softened); returns how many were there.
    async fn purge_keys(&self, keys: Vec<CacheKey>, grace: Duration) -> u64 {
        let mut found = 0;
        for key in keys {
            let tags = Arc::clone(&self.tags);
            let result = self
                .entries
                .entry(key.clone())
                .and_compute_with(|held| {
                    let op = match held.map(|e| e.into_value().soften(grace)) {
                        None => Op::Nop,
                        Some(Softened::Keep) => Op::Nop,
                        Some(Softened::Remove) => Op::Remove,
                        Some(Softened::Replace(value)) => {
                            // The same tags as the value it replaces: never refused.
                            tags.add(&key, value.tags());
                            Op::Put(value)
                        }
                    };
                    std::future::ready(op)
                })
                .await;
            if !matches!(result, CompResult::StillNone(_)) {
                found += 1;
            }
        }
        found
    }

    /// The metrics registry the store counts in.
    pub(super) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// (key, entry) pairs in the surrogate-key index.
    pub(super) fn tag_pairs(&self) -> usize {
        self.tags.len()
    }

    /// The values stored for `urls`, one per variant. Walks the whole store: for the debug
    /// page and tests, not for serving.
    pub(super) fn values(&self, urls: &Urls) -> Vec<V> {
        self.entries
            .iter()
            .filter(|(key, _)| urls.matches(&key.url))
            .map(|(_, value)| value)
            .collect()
    }

    /// Values held (approximate until moka's pending work runs).
    pub(super) fn entry_count(&self) -> u64 {
        self.entries.entry_count()
    }

    /// Bytes held, as the weigher counts them (approximate until moka's pending work runs).
    pub(super) fn weighted_size(&self) -> u64 {
        self.entries.weighted_size()
    }

    /// Runs moka's pending work now: evictions, expirations, purges and the size counters.
    pub(super) async fn run_pending_tasks(&self) {
        self.entries.run_pending_tasks().await;
        self.vary.specs.run_pending_tasks().await;
    }

    /// Sets the kind's gauges (entries, bytes, surrogate-key index pairs) in metrics.
    pub(super) fn publish_metrics(&self) {
        let (entries, entries_help) = self.kind.entries_gauge;
        let (bytes, bytes_help) = self.kind.bytes_gauge;
        self.metrics
            .set_gauge(entries, entries_help, self.entry_count() as f64);
        self.metrics
            .set_gauge(bytes, bytes_help, self.weighted_size() as f64);
        self.metrics.set_labelled_gauge(
            TAG_INDEX,
            "(surrogate key, entry) pairs in the key index, by cache.",
            ("cache", self.kind.label),
            self.tag_pairs() as f64,
        );
    }

    /// Counts one lookup answered with a fresh value.
    pub(super) fn add_esi_problems(&self, problems: usize) {
        self.metrics.add_esi_problems(problems as u64);
    }

    /// Counts one lookup answered with a fresh entry.
    pub(super) fn count_hit(&self) {
        self.hits.add(1);
    }

    /// Counts one lookup that found nothing servable.
    pub(super) fn count_miss(&self) {
        self.misses.add(1);
    }

    /// Adds one to the counter `name`.
    pub(super) fn count(
        &self,
        name: &'static str,
        help: &'static str,
        label: Option<(&'static str, &str)>,
    ) {
        self.metrics.inc_counter(name, help, label, 1);
    }

    /// The `Debug` form of the cache named `name` that owns this store.
    pub(super) fn describe(&self, name: &str, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct(name)
            .field("entries", &self.entry_count())
            .field("bytes", &self.weighted_size())
            .finish_non_exhaustive()
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

// === impl CacheKey ===

impl CacheKey {
    /// The key of `url` for a request with `headers` and `credentials`, varying on `names`
    /// (sorted, unique). The variant is the credential bits, then per name: the name, `0x00`,
    /// each value followed by `0x01`, and `0x02`. Header values never hold bytes below 0x09,
    /// so an absent header, an empty value and any list of values all differ.
    pub(super) fn new(
        url: &Arc<str>,
        names: &[HeaderName],
        headers: &HeaderMap,
        credentials: Credentials,
    ) -> Self {
        // Room for the usual key (the forwarded host and scheme) without growing on the way.
        let mut variant = Vec::with_capacity(VARIANT_ROOM);
        variant.push(credentials.bits());
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
            variant: variant.into_boxed_slice(),
        }
    }

    /// The variant's bytes (see [`CacheKey::new`]).
    pub(super) fn variant(&self) -> &[u8] {
        &self.variant
    }

    /// What the key weighs, plus `overhead`.
    pub(super) fn weight(&self, overhead: usize) -> u32 {
        clamp_weight(self.url.len() + self.variant.len() + overhead)
    }
}

// === impl Variant ===

impl Variant {
    /// How the response with `response_headers` to a request for `url` (`text` as keys hold
    /// it) with `request_headers` and `credentials` is stored. A `Vary` the policy refused
    /// (see [`CachePolicy::decide_for`]) counts as none.
    pub(super) fn of(
        policy: &CachePolicy,
        url: &Url,
        text: &Arc<str>,
        request_headers: &HeaderMap,
        credentials: Credentials,
        response_headers: &HeaderMap,
    ) -> Self {
        let vary: Arc<[HeaderName]> = vary_names(response_headers).unwrap_or_default().into();
        let names = key_names(policy, url, &vary);
        Self {
            key: CacheKey::new(text, &names, request_headers, credentials),
            vary,
            names,
        }
    }
}

// === impl Urls ===

impl Urls {
    /// `url` in the form `url::Url` prints it (`http://host:8080/path?query`, default port and
    /// `#fragment` left out) when it parses as a URL; else as given.
    pub(super) fn equal(url: &str) -> Self {
        Self::Equal(normalise(url).into())
    }

    /// Every URL starting with `prefix`, compared as given.
    pub(super) fn prefix(prefix: &str) -> Self {
        Self::Prefix(prefix.into())
    }

    /// Whether `url` (as keys hold it) is one of these.
    pub(super) fn matches(&self, url: &str) -> bool {
        match self {
            Self::Equal(wanted) => **wanted == *url,
            Self::Prefix(prefix) => url.starts_with(&**prefix),
        }
    }
}

// === impl VaryBook ===

impl VaryBook {
    fn new(name: &str, capacity_bytes: u64) -> Self {
        let varying = Arc::new(Varying::new());
        let counted = Arc::clone(&varying);
        let specs = Cache::builder()
            .name(name)
            .max_capacity(capacity_bytes)
            .weigher(|url: &Arc<str>, spec: &VarySpec| {
                let names: usize = spec.names.iter().map(|n| n.as_str().len()).sum();
                clamp_weight(url.len() + names + SIDE_OVERHEAD)
            })
            .expire_after(ByLifetime)
            // Every way out, a replacement too: the new spec counted itself in.
            .eviction_listener(move |url: Arc<Arc<str>>, spec: VarySpec, _cause| {
                if !spec.names.is_empty() {
                    counted.remove(&url);
                }
            })
            .support_invalidation_closures()
            .build();
        Self { specs, varying }
    }

    /// The names the URL's last stored response varied on; `None` when they are none or
    /// unknown. A URL no spec naming headers is held for is answered without a lookup.
    async fn names(&self, url: &Arc<str>) -> Option<Arc<[HeaderName]>> {
        if !self.varying.may_vary(url) {
            return None;
        }
        Some(self.specs.get(url).await?.names).filter(|names| !names.is_empty())
    }

    /// [`VaryBook::names`] without waiting: unknown when moka would have to wait.
    fn names_now(&self, url: &Arc<str>) -> Option<Arc<[HeaderName]>> {
        if !self.varying.may_vary(url) {
            return None;
        }
        let spec = poll_once(&mut self.specs.get(url).boxed()).flatten()?;
        Some(spec.names).filter(|names| !names.is_empty())
    }
}

impl Lifetime for VarySpec {
    fn lifetime(&self) -> Duration {
        self.lifetime
    }
}

// === helpers ===

/// The names a key varies on: those the URL's response varied on and the policy's for it
/// ([`CachePolicy::key_names`]), sorted and unique.
pub(super) fn key_names(policy: &CachePolicy, url: &Url, vary: &[HeaderName]) -> Arc<[HeaderName]> {
    let names = policy.key_names(url);
    if vary.is_empty() {
        Arc::clone(names)
    } else {
        merge_names(vary, names)
    }
}

/// The key of `url` (`text` as keys hold it) for a request with `headers` and `credentials`,
/// when its responses vary on `vary` (`None`: on nothing); built on the policy's names without
/// a copy when they do not.
fn key_of(
    policy: &CachePolicy,
    url: &Url,
    text: &Arc<str>,
    vary: Option<&[HeaderName]>,
    headers: &HeaderMap,
    credentials: Credentials,
) -> CacheKey {
    match vary {
        None => CacheKey::new(text, policy.key_names(url), headers, credentials),
        Some(vary) => CacheKey::new(text, &key_names(policy, url, vary), headers, credentials),
    }
}

/// Counts one size eviction from the `cache` kind.
fn count_eviction(metrics: &Metrics, cache: &'static str) {
    metrics.inc_counter(
        EVICTIONS,
        "Cache entries evicted to stay within the byte bound.",
        Some(("cache", cache)),
        1,
    );
}

/// The surrogate keys of a response with `headers` as the policy bounds them, counting what
/// the bounds dropped.
pub(super) fn read_tags(
    policy: &CachePolicy,
    headers: &HeaderMap,
    metrics: &Metrics,
) -> Arc<[Arc<str>]> {
    let found = policy.surrogate_keys(headers);
    for (reason, n) in [
        ("too_long", found.too_long),
        ("too_many", found.too_many),
        ("invalid", found.invalid),
    ] {
        count_keys_dropped(metrics, reason, n as u64);
    }
    found.keys.into_iter().map(Arc::from).collect()
}

/// Counts `n` surrogate keys dropped for `reason`: `too_long`, `too_many`, `invalid` (when
/// read) or `index_full` (a response not stored).
pub(super) fn count_keys_dropped(metrics: &Metrics, reason: &'static str, n: u64) {
    if n > 0 {
        metrics.inc_counter(
            KEYS_DROPPED,
            "Surrogate keys dropped by a bound: too_long, too_many, invalid, index_full.",
            Some(("reason", reason)),
            n,
        );
    }
}

/// The byte bound of a side cache for a main cache of `capacity_bytes`.
pub(super) fn side_capacity(capacity_bytes: u64) -> u64 {
    (capacity_bytes / SIDE_SHARE).max(MIN_SIDE_BYTES)
}

/// `url` as keys hold it: without `#fragment` (never sent upstream).
pub(super) fn cache_url(url: &Url) -> &str {
    // `Url` keeps its fragment last: everything before it is the URL keys hold.
    &url[..url::Position::AfterQuery]
}

/// `text` in the form keys hold URLs in, when it parses as one; else as given.
fn normalise(text: &str) -> String {
    Url::parse(text).map_or_else(|_| text.to_owned(), |url| cache_url(&url).to_owned())
}

/// Registers an invalidation predicate; every cache here supports them.
pub(super) fn invalidate<K, V>(
    cache: &Cache<K, V>,
    predicate: impl Fn(&K, &V) -> bool + Send + Sync + 'static,
) where
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
pub(crate) fn run_soon(mut fut: BoxFuture<'static, ()>) -> bool {
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

/// The headers an entry keeps: all but hop-by-hop ones.
pub(super) fn kept_headers(headers: &HeaderMap) -> HeaderMap {
    let mut kept = headers.clone();
    crate::headers::strip_hop_by_hop(&mut kept);
    kept
}

/// What a parsed ESI document held by a cache takes per include beyond its tag's bytes and
/// the document's URL, for as long as it is held: the include's node (about 350 bytes) and what
/// the composer keeps in it between requests (about 350: its `src` joined and checked). With
/// the URL (which a relative `src` keeps, to be joined against), it is counted in the entry's
/// weight, so that a layout made mostly of includes counts against the cache's bound for what
/// it really takes.
const BYTES_PER_INCLUDE: usize = 768;

/// The include and eval tags in an ESI body not yet parsed: an upper estimate of its includes
/// (a tag inside a comment counts too).
pub(super) fn include_tags(body: &[u8]) -> usize {
    memchr::memmem::find_iter(body, b"<esi:include").count()
        + memchr::memmem::find_iter(body, b"<esi:eval").count()
}

/// An entry's weight: its body, kept headers, key and a fixed overhead, and for a parsed ESI
/// document its `includes` (see [`BYTES_PER_INCLUDE`]), each with the document's URL.
pub(super) fn weigh(
    key: &CacheKey,
    headers: &HeaderMap,
    body_bytes: usize,
    includes: usize,
) -> u32 {
    let header_bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + HEADER_OVERHEAD)
        .sum();
    clamp_weight(
        body_bytes
            .saturating_add(header_bytes)
            .saturating_add(includes.saturating_mul(BYTES_PER_INCLUDE + key.url.len()))
            .saturating_add(key.url.len() + key.variant.len() + ENTRY_OVERHEAD),
    )
}

fn clamp_weight(bytes: usize) -> u32 {
    u32::try_from(bytes).unwrap_or(u32::MAX)
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
