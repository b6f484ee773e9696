//! The layout cache: parsed layouts ([`Template`]) with their status and headers, served fresh
//! only, through a synchronous API for the server. Keys, TTLs and purges are the store's and the
//! policy's, as for fragments; the origin request and the parse stay with the server.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::FutureExt;
use http::{HeaderMap, StatusCode};
use moka::future::Cache;
use url::Url;

use bytes::Bytes;

use super::entry::Entry;
use super::policy::{CachePolicy, Credentials, Decision, TtlSource};
use super::shared::{Found, Kind as SharedKind, SharedEntry, SharedTier};
use super::store::{
    cache_url, kept_headers, read_tags, run_soon, side_capacity, weigh, ByLifetime, Kind, Lifetime,
    Softened, Store, Stored, Urls, Variant, SIDE_OVERHEAD,
};
use super::tags::{PurgeMode, PurgeTarget};
use super::{LAYOUT_BYTES, LAYOUT_ENTRIES};
use crate::esi::Template;
use crate::fetch::Fragment;
use crate::telemetry::Metrics;

/// The layout store's names in moka and in metrics.
static LAYOUTS: Kind = Kind {
    label: "layout",
    entries_name: "esi-proxy layouts",
    vary_name: "esi-proxy layout vary",
    entries_gauge: (LAYOUT_ENTRIES, "Parsed layouts held by the cache."),
    bytes_gauge: (
        LAYOUT_BYTES,
        "Bytes of layouts held by the cache (decoded bodies, kept headers and keys).",
    ),
};

/// Parsed layouts (Arc<esi::Template>) with their status and headers, for a fully warm page with
/// no upstream request and no parse.
///
/// Keys, TTLs and the credential rule are those of [`CachePolicy`], as for fragments. Layouts
/// are served fresh only: there is no stale serving and no single-flight here (a layout that
/// expired is fetched and parsed again by the server, which owns the origin request). The API
/// is synchronous for the server's convenience; a lookup that would have to wait for moka's
/// housekeeping counts as a miss rather than blocking.
pub struct LayoutCache {
    store: Store<LayoutSlot>,
    /// URLs whose last layout could not be stored: the shared tier is not asked for them
    /// (for the policy's hit-for-pass time), so an uncacheable page costs no Redis call.
    unshared: Cache<Arc<str>, NotShared>,
}

/// A URL the shared tier is not asked about, for this long.
#[derive(Debug, Clone, Copy)]
struct NotShared(Duration);

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
    /// Its surrogate keys (the origin's `Surrogate-Key` and `xkey`, which `headers` no longer
    /// hold).
    pub keys: Arc<[Arc<str>]>,
}

/// A layout cache value: the layout and what it weighs.
#[derive(Debug, Clone)]
struct LayoutSlot {
    layout: Arc<CachedLayout>,
    weight: u32,
}

// === impl LayoutCache ===

impl LayoutCache {
    /// An empty layout cache keeping at most `capacity_bytes` (decoded layout bytes, kept
    /// headers and keys), its surrogate-key index at most `max_tag_pairs` pairs.
    pub fn new(capacity_bytes: u64, max_tag_pairs: usize, metrics: Arc<Metrics>) -> Arc<Self> {
        let unshared = Cache::builder()
            .name("esi-proxy layouts not shared")
            .max_capacity(side_capacity(capacity_bytes))
            .weigher(|url: &Arc<str>, _: &NotShared| {
                u32::try_from(url.len() + SIDE_OVERHEAD).unwrap_or(u32::MAX)
            })
            .expire_after(ByLifetime)
            .build();
        Arc::new(Self {
            store: Store::new(&LAYOUTS, capacity_bytes, max_tag_pairs, metrics),
            unshared,
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
        let key = self
            .store
            .key_now(policy, url, &text, request_headers, credentials);
        let fresh = self
            .store
            .get_now(&key)
            .map(|slot| slot.layout)
            .filter(|layout| layout.stored_at.elapsed() < layout.ttl);
        if fresh.is_some() {
            self.store.count_hit();
        } else {
            self.store.count_miss();
        }
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
        let Some(admitted) = admit(policy, url, request_headers, status, response_headers) else {
            return false;
        };
        let Admitted {
            variant: Variant { key, vary, .. },
            headers,
            ttl,
            source,
        } = admitted;
        let keys = read_tags(policy, response_headers, self.store.metrics());
        let weight = weigh(&key, &headers, body_bytes, template.includes().len());
        tracing::debug!(
            url = %key.url,
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
            keys,
        });
        let slot = LayoutSlot { layout, weight };
        run_soon(self.store.insert(key, vary, slot).boxed())
    }

    /// Whether [`LayoutCache::insert`] would store a layout with this status and these headers.
    /// When it would not, the shared tier is not asked for `url` for the policy's hit-for-pass
    /// time (see [`LayoutCache::get_shared`]).
    pub fn storable(
        &self,
        policy: &CachePolicy,
        url: &Url,
        request_headers: &HeaderMap,
        status: StatusCode,
        response_headers: &HeaderMap,
    ) -> bool {
        let storable = admit(policy, url, request_headers, status, response_headers).is_some();
        let hit_for_pass = policy.hit_for_pass();
        if !storable && !hit_for_pass.is_zero() {
            let (unshared, text) = (self.unshared.clone(), Arc::<str>::from(cache_url(url)));
            run_soon(async move { unshared.insert(text, NotShared(hit_for_pass)).await }.boxed());
        }
        storable
    }

    /// Stores a layout's decoded `body` in the shared tier for every node, as
    /// [`LayoutCache::insert`] stores its parse here (same policy, key and TTL); the write runs
    /// in the background. Returns whether the policy allows it.
    #[allow(clippy::too_many_arguments)] // As `insert`, plus the tier.
    pub fn share(
        &self,
        tier: &Arc<SharedTier>,
        policy: &CachePolicy,
        url: &Url,
        request_headers: &HeaderMap,
        status: StatusCode,
        response_headers: &HeaderMap,
        body: Bytes,
    ) -> bool {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        let Some(admitted) = admit(policy, url, request_headers, status, response_headers) else {
            return false;
        };
        let Admitted {
            variant: Variant { key, vary, names },
            headers,
            ttl,
            source,
        } = admitted;
        let fragment = Fragment {
            status,
            headers: Arc::new(headers),
            body,
            cache: None,
            template: None,
        };
        // Counted once, when stored here.
        let tags = policy
            .surrogate_keys(response_headers)
            .keys
            .into_iter()
            .map(Arc::from)
            .collect();
        let entry = Entry::new(
            key,
            names,
            fragment,
            [ttl, Duration::ZERO, Duration::ZERO],
            source,
            tags,
        );
        let tier = Arc::clone(tier);
        runtime.spawn(async move { tier.store(SharedKind::Layout, &entry, &vary).await });
        true
    }

    /// A fresh layout another node stored in the shared tier for this URL and these request
    /// headers, parsed here by `parse` (parsed templates stay per node) and kept here for the
    /// rest of its TTL; `None` when the tier has none or does not answer in time, and without
    /// asking it when this URL's last layout could not be stored.
    pub async fn get_shared(
        &self,
        tier: &SharedTier,
        policy: &CachePolicy,
        url: &Url,
        request_headers: &HeaderMap,
        parse: impl FnOnce(Bytes) -> Template,
    ) -> Option<Arc<CachedLayout>> {
        let text: Arc<str> = cache_url(url).into();
        if self.unshared.get(&text).await.is_some() {
            return None;
        }
        let credentials = Credentials::of(request_headers, true);
        let key = self
            .store
            .key_now(policy, url, &text, request_headers, credentials);
        let found = tier
            .lookup(
                SharedKind::Layout,
                policy,
                url,
                &key,
                request_headers,
                credentials,
            )
            .await;
        let Found::Answer {
            entry: Some(SharedEntry { entry, vary }),
            ..
        } = found
        else {
            return None;
        };
        if entry.stored_at.elapsed() >= entry.ttl {
            return None;
        }
        let weight = entry.weight;
        let layout = Arc::new(CachedLayout {
            status: entry.status,
            headers: HeaderMap::clone(&entry.headers),
            template: Arc::new(parse(entry.body.clone())),
            source: entry.source.clone(),
            stored_at: entry.stored_at,
            ttl: entry.ttl,
            keys: Arc::clone(&entry.tags),
        });
        let slot = LayoutSlot {
            layout: Arc::clone(&layout),
            weight,
        };
        self.store.insert(entry.key.clone(), vary, slot).await;
        Some(layout)
    }

    /// Drops every layout whose URL equals `url` (all variants), as
    /// [`super::FragmentCache::purge_url`] does for fragments.
    pub fn purge_url(&self, url: &str) {
        self.store.purge(&Urls::equal(url));
    }

    /// Drops every layout whose URL starts with `prefix`.
    pub fn purge_prefix(&self, prefix: &str) {
        self.store.purge(&Urls::prefix(prefix));
    }

    /// Drops the layouts `target` names, as [`super::FragmentCache::purge`] does; layouts are
    /// never served stale, so a soft purge drops them too. Returns how many there were.
    pub async fn purge(&self, target: &PurgeTarget, mode: PurgeMode) -> u64 {
        match target {
            PurgeTarget::Url(url) => self.store.purge_urls(&Urls::equal(url), mode).await,
            PurgeTarget::Prefix(prefix) => self.store.purge_urls(&Urls::prefix(prefix), mode).await,
            PurgeTarget::Keys(tags) => self.store.purge_tags(tags, mode).await,
        }
    }

    /// (surrogate key, layout) pairs in the key index.
    pub fn surrogate_index_len(&self) -> usize {
        self.store.tag_pairs()
    }

    /// Runs moka's pending work now: expirations, purges and the size counters.
    pub async fn run_pending_tasks(&self) {
        self.store.run_pending_tasks().await;
    }

    /// Sets the layout cache gauges (entries, bytes) in metrics.
    pub fn publish_metrics(&self) {
        self.store.publish_metrics();
    }
}

impl fmt::Debug for LayoutCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.store.describe("LayoutCache", f)
    }
}

// === helpers ===

/// What the policy lets a layout be stored as.
struct Admitted {
    variant: Variant,
    /// The origin's headers as clients get them.
    headers: HeaderMap,
    ttl: Duration,
    source: TtlSource,
}

/// How a layout response is stored, if the policy allows: its key, the headers kept (less
/// `Surrogate-Control`, `Content-Length` and hop-by-hop headers), TTL and its source.
fn admit(
    policy: &CachePolicy,
    url: &Url,
    request_headers: &HeaderMap,
    status: StatusCode,
    response_headers: &HeaderMap,
) -> Option<Admitted> {
    let text: Arc<str> = cache_url(url).into();
    let credentials = Credentials::of(request_headers, true);
    let (ttl, source) = match policy.decide_for(url, status, response_headers, credentials) {
        Decision::Store { ttl, source, .. } => (ttl, source),
        Decision::Pass(reason) => {
            tracing::debug!(url = %text, reason, "layout not stored");
            return None;
        }
    };
    let variant = Variant::of(
        policy,
        url,
        &text,
        request_headers,
        credentials,
        response_headers,
    );
    let mut headers = kept_headers(response_headers);
    headers.remove(crate::headers::SURROGATE_CONTROL);
    crate::headers::strip_surrogate_keys(&mut headers);
    headers.remove(http::header::CONTENT_LENGTH);
    Some(Admitted {
        variant,
        headers,
        ttl,
        source,
    })
}

// === impl LayoutSlot ===

impl Lifetime for NotShared {
    fn lifetime(&self) -> Duration {
        self.0
    }
}

impl Lifetime for LayoutSlot {
    fn lifetime(&self) -> Duration {
        self.layout.ttl
    }
}

impl Stored for LayoutSlot {
    fn weight(&self) -> u32 {
        self.weight
    }

    fn tags(&self) -> &[Arc<str>] {
        &self.layout.keys
    }

    /// Layouts are served fresh only: softened is gone.
    fn soften(&self, _grace: Duration) -> Softened<Self> {
        Softened::Remove
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;
    use crate::cache::testing::{headers, policy, url};

    #[tokio::test]
    async fn layouts_stored_per_policy() {
        let metrics = Arc::new(Metrics::new());
        let cache = LayoutCache::new(1 << 20, 1000, Arc::clone(&metrics));
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

        cache.store.run_pending_tasks().await;
        cache.publish_metrics();
        let text = metrics.render();
        assert!(
            text.contains("esi_proxy_cache_hits_total{cache=\"layout\"} 3"),
            "{text}"
        );
        assert!(text.contains("esi_proxy_layout_cache_entries 0"), "{text}");
    }
}
