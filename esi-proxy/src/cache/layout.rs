//! The layout cache: parsed layouts ([`Template`]) with their status and headers, served fresh
//! only, through a synchronous API for the server. Keys, TTLs and purges are the store's and the
//! policy's, as for fragments; the origin request and the parse stay with the server.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::FutureExt;
use http::header::HeaderName;
use http::{HeaderMap, StatusCode};
use moka::future::Cache;
use moka::notification::RemovalCause;
use url::Url;

use super::policy::{merge_names, vary_names, CachePolicy, Credentials, Decision, TtlSource};
use super::store::{
    cache_url, count_eviction, invalidate, kept_headers, normalise, poll_once, run_soon,
    side_capacity, weigh, ByLifetime, CacheKey, Lifetime, VaryBook, VarySpec,
};
use super::{HITS, LAYOUT_BYTES, LAYOUT_ENTRIES, MISSES};
use crate::esi::Template;
use crate::telemetry::Metrics;

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

/// A layout cache value: the layout and what it weighs.
#[derive(Debug, Clone)]
struct LayoutSlot {
    layout: Arc<CachedLayout>,
    weight: u32,
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

impl Lifetime for LayoutSlot {
    fn lifetime(&self) -> Duration {
        self.layout.ttl
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
