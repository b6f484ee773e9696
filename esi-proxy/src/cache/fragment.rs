//! The fragment cache and the caching [`Fetcher`]: lookups by age, single-flight (one upstream
//! fetch per key, shared by every waiter), hit-for-pass, stale-while-revalidate and
//! stale-if-error. Stores through `store`, decides through `policy`; never serves HTTP.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared, WeakShared};
use http::HeaderName;
use moka::future::Cache;
use url::Url;

use super::entry::{Entry, EntryInfo};
use super::policy::{CachePolicy, Credentials, Decision};
use super::shared::{Found, Kind as SharedKind, Lease, SharedEntry, SharedTier};
use super::store::{
    cache_url, invalidate, read_tags, side_capacity, ByLifetime, CacheKey, Kind, Lifetime, Store,
    Urls, Variant, SIDE_OVERHEAD,
};
use super::tags::{PurgeMode, PurgeTarget};
use super::{COALESCED, FRAGMENT_BYTES, FRAGMENT_ENTRIES, PASSES, STALE_SERVED};
use crate::esi::{ParseOptions, Template};
use crate::fetch::{
    deadline_after, Allowed, CacheInfo, CacheStatus, ErrorKind, FetchError, Fetcher, Fragment,
    FragmentRequest, OriginBody, OriginRequest,
};
use crate::telemetry::Metrics;

/// First pause of a node waiting for another node's fetch; it doubles up to [`MAX_POLL`].
const FIRST_POLL: Duration = Duration::from_millis(2);
/// Longest pause between two looks at a key another node is fetching.
const MAX_POLL: Duration = Duration::from_millis(25);

/// How often one request looks the cache up again: a Vary mismatch with the response it
/// waited for, or a retry after a failed shared fetch. Past it, the request fetches alone.
const MAX_ROUNDS: usize = 3;

/// The fragment store's names in moka and in metrics.
static FRAGMENTS: Kind = Kind {
    label: "fragment",
    entries_name: "esi-proxy fragments",
    vary_name: "esi-proxy fragment vary",
    entries_gauge: (FRAGMENT_ENTRIES, "Fragment responses held by the cache."),
    bytes_gauge: (
        FRAGMENT_BYTES,
        "Bytes of fragment responses held by the cache (bodies, kept headers and keys).",
    ),
};

/// Storage for fragment responses, shared across config reloads.
///
/// Entries are bounded in bytes (body, kept headers and key) and expire `ttl` plus the longer
/// stale window after they were stored. Beside them it keeps, bounded too, a per-URL vary spec
/// (the header names the last stored response varied on) and hit-for-pass markers, plus the
/// fetches in flight (one per key, for as long as someone waits on it). An entry and a marker
/// do not stand together for one key: storing either drops the other.
pub struct FragmentCache {
    store: Store<Arc<Entry>>,
    passes: Cache<CacheKey, PassMarker>,
    flights: Mutex<HashMap<CacheKey, FlightSlot>>,
    next_flight: AtomicU64,
}

/// A Fetcher that serves from and fills a FragmentCache.
///
/// A lookup is fresh (served), within `stale-while-revalidate` (served, and one background
/// fetch refreshes it), or a miss: concurrent misses for one key share one upstream fetch.
/// When a fetch fails, a copy within `stale-if-error` is served instead; when it fails with no
/// such copy, every request that waited on it tries once more (shared again), then gives up.
///
/// Cloned per fetch (its futures are `'static`): one `Arc`, so a fetch touches one shared
/// counter rather than one per part.
#[derive(Clone)]
pub struct CachingFetcher(Arc<Parts>);

/// What a [`CachingFetcher`] holds.
struct Parts {
    inner: Arc<dyn Fetcher>,
    cache: Arc<FragmentCache>,
    policy: Arc<CachePolicy>,
    /// How a stored ESI fragment is parsed, once per entry.
    parse: Arc<ParseOptions>,
    /// The shared tier below `cache`, when configured.
    shared: Option<Arc<SharedTier>>,
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
    /// Found in the shared tier (and now in this cache too), to be served with this status:
    /// fresh ([`CacheStatus::Hit`]), within stale-while-revalidate, or within stale-if-error
    /// after the fetch failed.
    Shared(Arc<Entry>, CacheStatus),
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

// === impl FragmentCache ===

impl FragmentCache {
    /// An empty cache keeping at most `capacity_bytes` of entries (body, kept headers and
    /// key); vary specs and hit-for-pass markers get an eighth of that each (at least 64 KiB).
    /// Its surrogate-key index holds at most `max_tag_pairs` (key, entry) pairs.
    pub fn new(capacity_bytes: u64, max_tag_pairs: usize, metrics: Arc<Metrics>) -> Arc<Self> {
        let passes = Cache::builder()
            .name("esi-proxy hit-for-pass")
            .max_capacity(side_capacity(capacity_bytes))
            .weigher(|key: &CacheKey, _marker: &PassMarker| key.weight(SIDE_OVERHEAD))
            .expire_after(ByLifetime)
            .support_invalidation_closures()
            .build();
        Arc::new(Self {
            store: Store::new(&FRAGMENTS, capacity_bytes, max_tag_pairs, metrics),
            passes,
            flights: Mutex::new(HashMap::new()),
            next_flight: AtomicU64::new(0),
        })
    }

    /// Drops every entry whose URL equals `url` (all Vary variants).
    ///
    /// `url` is compared in the form `url::Url` prints it (`http://host:8080/path?query`,
    /// default port and `#fragment` left out); text that parses as a URL is put in that form
    /// first. The URL's vary spec and hit-for-pass markers go too. A fetch already in flight
    /// may still store its response.
    pub fn purge_url(&self, url: &str) {
        self.drop_urls(&Urls::equal(url));
    }

    /// Drops every entry whose URL starts with `prefix` (compared as given, in the form of
    /// [`FragmentCache::purge_url`]), with those URLs' vary specs and hit-for-pass markers.
    pub fn purge_prefix(&self, prefix: &str) {
        self.drop_urls(&Urls::prefix(prefix));
    }

    /// Drops or softens (see [`PurgeMode`]) the entries `target` names: by URL and prefix as
    /// [`FragmentCache::purge_url`] and [`FragmentCache::purge_prefix`] do, by surrogate key
    /// through the key index. Returns how many entries there were.
    pub async fn purge(&self, target: &PurgeTarget, mode: PurgeMode) -> u64 {
        let purged = match target {
            PurgeTarget::Keys(tags) => return self.store.purge_tags(tags, mode).await,
            PurgeTarget::Url(url) => (Urls::equal(url), mode),
            PurgeTarget::Prefix(prefix) => (Urls::prefix(prefix), mode),
        };
        let (urls, mode) = purged;
        let n = self.store.purge_urls(&urls, mode).await;
        if mode == PurgeMode::Hard {
            invalidate(&self.passes, move |key, _| urls.matches(&key.url));
        }
        n
    }

    /// (surrogate key, entry) pairs in the key index (approximate until moka's pending work
    /// runs: entries that expired leave it then).
    pub fn surrogate_index_len(&self) -> usize {
        self.store.tag_pairs()
    }

    /// Entries held (approximate until moka's pending work runs; see
    /// [`FragmentCache::run_pending_tasks`]).
    pub fn entry_count(&self) -> u64 {
        self.store.entry_count()
    }

    /// Bytes held by entries, as the weigher counts them (approximate until moka's pending
    /// work runs).
    pub fn weighted_size(&self) -> u64 {
        self.store.weighted_size()
    }

    /// Runs moka's pending work now: evictions, expirations, purges and the size counters.
    /// It also runs by itself as the cache is used.
    pub async fn run_pending_tasks(&self) {
        self.store.run_pending_tasks().await;
        self.passes.run_pending_tasks().await;
    }

    /// Sets the cache gauges (entries, bytes) in metrics; called before /_esi/metrics renders.
    pub fn publish_metrics(&self) {
        self.store.publish_metrics();
    }

    /// What is stored for `url` (in the form of [`FragmentCache::purge_url`]), one item per
    /// variant. Walks the whole cache: for the debug page and tests, not for serving.
    pub fn entries_for_url(&self, url: &str) -> Vec<EntryInfo> {
        let now = Instant::now();
        self.store
            .values(&Urls::equal(url))
            .iter()
            .map(|entry| entry.info(now))
            .collect()
    }

    /// Drops the entries, vary specs and hit-for-pass markers of `urls`.
    fn drop_urls(&self, urls: &Urls) {
        self.store.purge(urls);
        let urls = urls.clone();
        invalidate(&self.passes, move |key, _| urls.matches(&key.url));
    }

    /// The entry for `key`, classified by age.
    async fn lookup(&self, key: &CacheKey) -> Lookup {
        let Some(entry) = self.store.get(key).await else {
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

    /// Stores `entry`, fetched for the key `fetched`, and drops the hit-for-pass markers it
    /// overrides: the one under `fetched` and, when its `Vary` changed the key, the one under
    /// its own. The newest decision on a key wins, entry or marker, so a lookup that finds an
    /// entry need not look for a marker.
    async fn keep(&self, fetched: &CacheKey, entry: &Arc<Entry>, vary: Arc<[HeaderName]>) {
        self.store
            .insert(entry.key.clone(), vary, Arc::clone(entry))
            .await;
        self.passes.invalidate(fetched).await;
        if entry.key != *fetched {
            self.passes.invalidate(&entry.key).await;
        }
    }

    fn flights(&self) -> MutexGuard<'_, HashMap<CacheKey, FlightSlot>> {
        self.flights.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn count_stale(&self, reason: &'static str) {
        self.store.count(
            STALE_SERVED,
            "Expired fragment entries served: while_revalidate or if_error.",
            Some(("reason", reason)),
        );
    }

    fn count_coalesced(&self) {
        self.store.count(
            COALESCED,
            "Fragment requests that waited on a fetch another request started.",
            None,
        );
    }

    fn count_pass(&self) {
        self.store.count(
            PASSES,
            "Fragment responses fetched without the cache: not storable, or hit-for-pass.",
            None,
        );
    }
}

impl fmt::Debug for FragmentCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.store.describe("FragmentCache", f)
    }
}

// === impl CachingFetcher ===

impl CachingFetcher {
    /// A fetcher answering from `cache` under `policy`, fetching misses from `inner`.
    pub fn new(
        inner: Arc<dyn Fetcher>,
        cache: Arc<FragmentCache>,
        policy: Arc<CachePolicy>,
        parse: ParseOptions,
    ) -> Self {
        Self(Arc::new(Parts {
            inner,
            cache,
            policy,
            parse: Arc::new(parse),
            shared: None,
        }))
    }

    /// This fetcher with `shared` as the tier below its cache: a miss here asks it before the
    /// fragment service, and what is fetched is stored there for every node.
    #[must_use]
    pub fn with_shared(self, shared: Option<Arc<SharedTier>>) -> Self {
        let parts = &*self.0;
        Self(Arc::new(Parts {
            inner: Arc::clone(&parts.inner),
            cache: Arc::clone(&parts.cache),
            policy: Arc::clone(&parts.policy),
            parse: Arc::clone(&parts.parse),
            shared,
        }))
    }

    /// Parses a stored ESI body (lenient parsing never fails), counting its problems.
    fn parse(&self, body: Bytes) -> Template {
        let template = crate::esi::parse(body, &self.0.parse).unwrap_or_default();
        if template.problem_count > 0 {
            self.0.cache.store.add_esi_problems(template.problem_count);
        }
        template
    }

    async fn fetch_cached(self, req: FragmentRequest) -> Result<Fragment, FetchError> {
        if req.options.bypasses_cache() {
            // `no-store`, a POST, or headers the template changed: no entry answers it and it
            // stores none.
            self.0.cache.count_pass();
            return self.0.inner.fetch(req).await.map(passed);
        }
        let access = req.url.access();
        let credentials = Credentials::of(&req.client_headers, access.trusted);
        let text: Arc<str> = cache_url(&req.url).into();
        // Read from the clock on the first miss: a hit needs no deadline.
        let mut deadline = None;
        let mut retried = false;
        let mut counted = false;
        for _ in 0..MAX_ROUNDS {
            let key = self
                .0
                .cache
                .store
                .key_for(
                    &self.0.policy,
                    &req.url,
                    &text,
                    &req.client_headers,
                    credentials,
                )
                .await;
            // An entry first: a stored response clears the key's hit-for-pass marker and a
            // marker clears its entry, so a hit needs no second lookup.
            let fallback = match self.0.cache.lookup(&key).await {
                Lookup::Fresh(entry) => {
                    self.0.cache.store.count_hit();
                    return Ok(entry.fragment(CacheStatus::Hit, |body| self.parse(body)));
                }
                Lookup::Revalidate(entry) => {
                    self.0.cache.count_stale("while_revalidate");
                    self.refresh(&key, &req, credentials);
                    return Ok(
                        entry.fragment(CacheStatus::StaleWhileRevalidate, |body| self.parse(body))
                    );
                }
                Lookup::Miss(stale) => stale,
            };
            if self.0.cache.is_pass(&key).await {
                self.0.cache.count_pass();
                return self.0.inner.fetch(req).await.map(passed);
            }
            if !counted {
                self.0.cache.store.count_miss();
                counted = true;
            }
            let deadline = *deadline
                .get_or_insert_with(|| deadline_after(tokio::time::Instant::now(), req.timeout));
            let (flight, leader) = self.join_or_start(&key, &req, credentials, false);
            if !leader {
                self.0.cache.count_coalesced();
            }
            let error = match tokio::time::timeout_at(deadline, flight).await {
                Ok(Ok(Outcome::Stored(entry))) => {
                    let mine = CacheKey::new(&text, &entry.names, &req.client_headers, credentials);
                    if mine == entry.key {
                        return Ok(entry.fragment(CacheStatus::Miss, |body| self.parse(body)));
                    }
                    // The response varies on a header this request differs in.
                    continue;
                }
                Ok(Ok(Outcome::Shared(entry, status))) => {
                    let mine = CacheKey::new(&text, &entry.names, &req.client_headers, credentials);
                    if mine != entry.key {
                        continue;
                    }
                    match status {
                        CacheStatus::StaleWhileRevalidate => {
                            self.0.cache.count_stale("while_revalidate");
                            self.refresh(&entry.key, &req, credentials);
                        }
                        CacheStatus::StaleIfError => self.0.cache.count_stale("if_error"),
                        _ => {}
                    }
                    return Ok(entry.fragment(status, |body| self.parse(body)));
                }
                Ok(Ok(Outcome::Passed(fragment))) if leader => {
                    return Ok(passed(Arc::unwrap_or_clone(fragment)));
                }
                Ok(Ok(Outcome::Passed(_))) => {
                    // Maybe meant for another user: fetch alone, as hit-for-pass does.
                    self.0.cache.count_pass();
                    return self.fetch_alone(req, fallback).await;
                }
                // A status the leader's request did not keep: this request keeps it (a
                // primary fragment) and asks alone, for the answer with its headers and body.
                Ok(Err(error)) if req.keep_status && error.kind() == ErrorKind::Status => {
                    return self.fetch_alone(req, None).await;
                }
                Ok(Err(error)) => FetchError::clone(&error),
                Err(_) => FetchError::Timeout {
                    url: req.url.to_string(),
                    after: req.timeout,
                },
            };
            if let Some(stale) = fallback.filter(|entry| entry.within_stale_if_error()) {
                tracing::debug!(url = %text, error = %error, "serving stale fragment after error");
                self.0.cache.count_stale("if_error");
                return Ok(stale.fragment(CacheStatus::StaleIfError, |body| self.parse(body)));
            }
            // One retry, and only while this request's own deadline leaves time for it; none
            // past an open breaker, which would only refuse again.
            let breaker_open = error.kind() == ErrorKind::BreakerOpen;
            if retried || breaker_open || tokio::time::Instant::now() >= deadline {
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
        match self.0.inner.fetch(req).await {
            Ok(fragment) => Ok(passed(fragment)),
            Err(error) => match stale.filter(|entry| entry.within_stale_if_error()) {
                Some(entry) => {
                    self.0.cache.count_stale("if_error");
                    Ok(entry.fragment(CacheStatus::StaleIfError, |body| self.parse(body)))
                }
                None => Err(error),
            },
        }
    }

    /// The fetch in flight for `key`, or a new one with this request's headers; `true` when
    /// this request started it. A `revalidating` fetch serves no stale copy of the shared tier.
    fn join_or_start(
        &self,
        key: &CacheKey,
        req: &FragmentRequest,
        credentials: Credentials,
        revalidating: bool,
    ) -> (Flight, bool) {
        let mut flights = self.0.cache.flights();
        if let Some(flight) = flights.get(key).and_then(|slot| slot.weak.upgrade()) {
            return (flight, false);
        }
        let id = self.0.cache.next_flight.fetch_add(1, Ordering::Relaxed);
        let guard = FlightGuard {
            cache: Arc::clone(&self.0.cache),
            key: key.clone(),
            id,
        };
        let this = self.clone();
        let (key_owned, req_owned) = (key.clone(), req.clone());
        let flight = async move {
            // A fetch that ended between this request's lookup and its taking the map's lock
            // has stored its response (it stores before leaving the map): use that.
            if let Lookup::Fresh(entry) = this.0.cache.lookup(&key_owned).await {
                drop(guard);
                return Ok(Outcome::Stored(entry));
            }
            let outcome = match &this.0.shared {
                Some(shared) => {
                    this.fill_shared(shared, &key_owned, &req_owned, credentials, revalidating)
                        .await
                }
                None => {
                    this.fetch_and_settle(&key_owned, &req_owned, credentials)
                        .await
                }
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
        let (flight, started) = self.join_or_start(key, req, credentials, true);
        if started {
            let url = req.url.to_string();
            runtime.spawn(async move {
                if let Err(error) = flight.await {
                    tracing::debug!(%url, %error, "background refresh failed");
                }
            });
        }
    }

    /// Fetches `key` from the fragment service and settles the response.
    async fn fetch_and_settle(
        &self,
        key: &CacheKey,
        req: &FragmentRequest,
        credentials: Credentials,
    ) -> FlightResult {
        match self.0.inner.fetch(req.clone()).await {
            Ok(fragment) => Ok(self.settle(key, req, credentials, fragment).await),
            Err(error) => Err(Arc::new(error)),
        }
    }

    /// A miss here, filled through the shared tier: its copy when servable; else the
    /// cluster's lease on the key decides who fetches (this node, which stores the response
    /// there for every node, or another one, whose result this node waits for). A leader
    /// that never stores releases the key when its lease expires; a follower then tries for
    /// the lease once more, and past that fetches alone. When the tier does not answer, the
    /// fragment service is asked as if there were no tier.
    async fn fill_shared(
        &self,
        shared: &SharedTier,
        key: &CacheKey,
        req: &FragmentRequest,
        credentials: Credentials,
        revalidating: bool,
    ) -> FlightResult {
        let kind = SharedKind::Fragment;
        let mut stale: Option<Arc<Entry>> = None;
        let mut retried = false;
        loop {
            let found = shared
                .lookup(
                    kind,
                    &self.0.policy,
                    &req.url,
                    key,
                    &req.client_headers,
                    credentials,
                )
                .await;
            let theirs = match found {
                Found::Unavailable => return self.fetch_and_settle(key, req, credentials).await,
                Found::Answer { key, entry: None } => key,
                Found::Answer {
                    key,
                    entry: Some(found),
                } => {
                    if let Some(outcome) = self.servable(found, revalidating, &mut stale).await {
                        return Ok(outcome);
                    }
                    key
                }
            };
            let token = match shared.lease(kind, &theirs).await {
                Lease::Filled(found) => {
                    if let Some(outcome) = self.servable(found, revalidating, &mut stale).await {
                        return Ok(outcome);
                    }
                    // Stored by another node yet already stale: this node refreshes it.
                    None
                }
                Lease::Leader(token) => Some(token),
                Lease::Unavailable => None,
                Lease::Follower => match self.follow(shared, &theirs, req.timeout).await {
                    Some(found) => {
                        if let Some(outcome) = self.servable(found, false, &mut stale).await {
                            return Ok(outcome);
                        }
                        None
                    }
                    // The leader stored nothing: once more for the lease, then alone.
                    None if !retried => {
                        retried = true;
                        continue;
                    }
                    None => None,
                },
            };
            let outcome = self.fetch_and_settle(key, req, credentials).await;
            if let Some(token) = token {
                shared.release(kind, &theirs, token).await;
            }
            return match (outcome, stale) {
                (Err(_), Some(entry)) if entry.within_stale_if_error() => {
                    Ok(Outcome::Shared(entry, CacheStatus::StaleIfError))
                }
                (outcome, _) => outcome,
            };
        }
    }

    /// Waits for the node holding the lease of `key` to store it: its entry, or `None` when
    /// the lease ended (or the tier stopped answering) with nothing stored. Polls with a
    /// growing pause, within `timeout` (the request's own deadline stops it sooner).
    async fn follow(
        &self,
        shared: &SharedTier,
        key: &CacheKey,
        timeout: Duration,
    ) -> Option<SharedEntry> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut pause = FIRST_POLL;
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_POLL);
            match shared.poll(SharedKind::Fragment, key).await {
                Some((Some(found), _)) => return Some(found),
                Some((None, true)) => {}
                Some((None, false)) | None => return None,
            }
        }
        None
    }

    /// A shared copy as this cache serves it: fresh, or (unless `revalidating`) within
    /// stale-while-revalidate, it is stored here too and served; an older copy within
    /// stale-if-error is kept in `stale` for when the fetch fails.
    async fn servable(
        &self,
        found: SharedEntry,
        revalidating: bool,
        stale: &mut Option<Arc<Entry>>,
    ) -> Option<Outcome> {
        let SharedEntry { entry, vary } = found;
        let age = entry.stored_at.elapsed();
        let status = if age < entry.ttl {
            CacheStatus::Hit
        } else if !revalidating && age < entry.ttl.saturating_add(entry.stale_while_revalidate) {
            CacheStatus::StaleWhileRevalidate
        } else {
            if entry.within_stale_if_error() {
                *stale = Some(entry);
            }
            return None;
        };
        self.0.cache.keep(&entry.key, &entry, vary).await;
        Some(Outcome::Shared(entry, status))
    }

    /// Stores a fetched fragment if the policy allows, else records hit-for-pass.
    async fn settle(
        &self,
        flight_key: &CacheKey,
        req: &FragmentRequest,
        credentials: Credentials,
        fragment: Fragment,
    ) -> Outcome {
        let cache = &self.0.cache;
        let decision = self.0.policy.decide_with_ttl(
            &req.url,
            fragment.status,
            &fragment.headers,
            credentials,
            req.options.ttl,
        );
        match decision {
            Decision::Store {
                ttl,
                stale_while_revalidate,
                stale_if_error,
                source,
            } => {
                let Variant { key, vary, names } = Variant::of(
                    &self.0.policy,
                    &req.url,
                    &flight_key.url,
                    &req.client_headers,
                    credentials,
                    &fragment.headers,
                );
                let tags = read_tags(&self.0.policy, &fragment.headers, cache.store.metrics());
                let entry = Entry::new(
                    key,
                    names,
                    fragment,
                    [ttl, stale_while_revalidate, stale_if_error],
                    source,
                    tags,
                );
                tracing::debug!(
                    url = %entry.key.url,
                    ttl_source = %entry.source,
                    ttl_s = entry.ttl.as_secs(),
                    bytes = entry.weight,
                    "fragment stored"
                );
                if let Some(shared) = &self.0.shared {
                    shared.store(SharedKind::Fragment, &entry, &vary).await;
                }
                cache.keep(flight_key, &entry, vary).await;
                Outcome::Stored(entry)
            }
            Decision::Pass(reason) => {
                tracing::debug!(url = %flight_key.url, reason, "fragment not stored");
                cache.count_pass();
                // The newest response says not to keep this; an older copy must not answer.
                // Dropped before the marker is set: a flight cancelled in between leaves
                // neither, never an entry beside a marker (lookups read the entry first).
                cache.store.remove(flight_key).await;
                let hit_for_pass = self.0.policy.hit_for_pass();
                if !hit_for_pass.is_zero() {
                    cache
                        .passes
                        .insert(flight_key.clone(), PassMarker(hit_for_pass))
                        .await;
                }
                if let Some(shared) = &self.0.shared {
                    shared.remove(SharedKind::Fragment, flight_key).await;
                }
                Outcome::Passed(Arc::new(fragment))
            }
        }
    }
}

impl fmt::Debug for CachingFetcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachingFetcher")
            .field("cache", &self.0.cache)
            .field("policy", &self.0.policy)
            .finish_non_exhaustive()
    }
}

impl Fetcher for CachingFetcher {
    fn fetch(&self, req: FragmentRequest) -> BoxFuture<'static, Result<Fragment, FetchError>> {
        Box::pin(self.clone().fetch_cached(req))
    }

    fn check(&self, url: &Arc<Url>) -> Result<Allowed, FetchError> {
        self.0.inner.check(url)
    }

    /// Layouts pass through to the inner fetcher: the layout cache, which keeps parsed
    /// templates, sits in the server's request path instead.
    fn send_origin(
        &self,
        req: OriginRequest,
    ) -> BoxFuture<'static, Result<http::Response<OriginBody>, FetchError>> {
        self.0.inner.send_origin(req)
    }
}

// === impl PassMarker ===

impl Lifetime for PassMarker {
    fn lifetime(&self) -> Duration {
        self.0
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

// === helpers ===

/// Marks a response that went past the cache unstored.
fn passed(mut fragment: Fragment) -> Fragment {
    fragment.cache = Some(CacheInfo {
        status: CacheStatus::Pass,
        ttl: None,
        source: None,
        keys: Arc::from([]),
    });
    fragment
}
