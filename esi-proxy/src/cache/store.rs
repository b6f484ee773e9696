//! What the caches store and how: keys ([`CacheKey`]) with their Vary specs, fragment entries,
//! the byte weigher, per-entry expiry, URL normalisation and purges. Never decides a TTL (the
//! policy does) and never fetches.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt};
use http::header::HeaderName;
use http::{HeaderMap, StatusCode};
use moka::future::Cache;
use moka::Expiry;
use url::Url;

use super::policy::{Credentials, TtlSource};
use super::EVICTIONS;
use crate::esi::Template;
use crate::fetch::{CacheInfo, Fragment};
use crate::telemetry::Metrics;

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

/// The key of an entry: the URL (without `#fragment`) and the request's values of the header
/// names it varies on, with which credentials went upstream.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct CacheKey {
    pub(super) url: Arc<str>,
    /// See [`CacheKey::new`] for the encoding.
    pub(super) variant: Arc<[u8]>,
}

/// One stored fragment response.
#[derive(Debug)]
pub(super) struct Entry {
    pub(super) key: CacheKey,
    /// The header names `key` was computed from (sorted), so a request that waited on this
    /// response can tell whether it is its variant.
    pub(super) names: Arc<[HeaderName]>,
    pub(super) status: StatusCode,
    pub(super) headers: HeaderMap,
    pub(super) body: Bytes,
    pub(super) stored_at: Instant,
    pub(super) ttl: Duration,
    pub(super) stale_while_revalidate: Duration,
    pub(super) stale_if_error: Duration,
    pub(super) source: TtlSource,
    pub(super) weight: u32,
    /// The body parsed as ESI, filled by the first hit that needs it and shared by the rest.
    pub(super) parsed: Arc<OnceLock<Arc<Template>>>,
}

/// The header names the last stored response for a URL varied on.
#[derive(Debug, Clone)]
pub(super) struct VarySpec {
    pub(super) names: Arc<[HeaderName]>,
    pub(super) lifetime: Duration,
}

/// Per-URL vary specs, bounded in bytes.
pub(super) struct VaryBook {
    pub(super) specs: Cache<Arc<str>, VarySpec>,
}

/// Values that say how long they may be kept.
pub(super) trait Lifetime {
    fn lifetime(&self) -> Duration;
}

/// Per-entry expiry from [`Lifetime`], counted from each insert.
pub(super) struct ByLifetime;

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
    pub(super) fn weight(&self, overhead: usize) -> u32 {
        clamp_weight(self.url.len() + self.variant.len() + overhead)
    }
}

// === impl Entry ===

impl Entry {
    /// An entry for `fragment` under `key`; `times` are the TTL, stale-while-revalidate and
    /// stale-if-error windows.
    pub(super) fn new(
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
    pub(super) fn fragment(&self, status: &'static str) -> Fragment {
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

    pub(super) fn within_stale_if_error(&self) -> bool {
        self.stored_at.elapsed() < self.ttl.saturating_add(self.stale_if_error)
    }
}

impl Lifetime for Arc<Entry> {
    fn lifetime(&self) -> Duration {
        self.ttl
            .saturating_add(self.stale_while_revalidate.max(self.stale_if_error))
    }
}

impl Lifetime for VarySpec {
    fn lifetime(&self) -> Duration {
        self.lifetime
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
    pub(super) fn new(name: &str, capacity_bytes: u64) -> Self {
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
    pub(super) async fn names(&self, url: &Arc<str>) -> Arc<[HeaderName]> {
        self.specs
            .get(url)
            .await
            .map_or_else(|| Arc::from([]), |spec| spec.names)
    }

    /// [`VaryBook::names`] without waiting: unknown when moka would have to wait.
    pub(super) fn names_now(&self, url: &Arc<str>) -> Arc<[HeaderName]> {
        poll_once(&mut self.specs.get(url).boxed())
            .flatten()
            .map_or_else(|| Arc::from([]), |spec| spec.names)
    }

    pub(super) async fn learn(&self, url: Arc<str>, names: Arc<[HeaderName]>, lifetime: Duration) {
        self.specs.insert(url, VarySpec { names, lifetime }).await;
    }

    pub(super) fn purge(&self, matches: impl Fn(&str) -> bool + Send + Sync + 'static) {
        invalidate(&self.specs, move |url, _| matches(url));
    }
}

// === helpers ===

/// Counts one size eviction from the `cache` kind.
pub(super) fn count_eviction(metrics: &Metrics, cache: &'static str) {
    metrics.inc_counter(
        EVICTIONS,
        "Cache entries evicted to stay within the byte bound.",
        Some(("cache", cache)),
        1,
    );
}

/// The byte bound of a side cache for a main cache of `capacity_bytes`.
pub(super) fn side_capacity(capacity_bytes: u64) -> u64 {
    (capacity_bytes / SIDE_SHARE).max(MIN_SIDE_BYTES)
}

/// `url` as keys hold it: without `#fragment` (never sent upstream).
pub(super) fn cache_url(url: &Url) -> String {
    match url.as_str().split_once('#') {
        Some((before, _)) => before.to_owned(),
        None => url.as_str().to_owned(),
    }
}

/// `text` in the form keys hold URLs in, when it parses as one; else as given.
pub(super) fn normalise(text: &str) -> String {
    Url::parse(text).map_or_else(|_| text.to_owned(), |url| cache_url(&url))
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
pub(super) fn poll_once<F: Future + Unpin>(fut: &mut F) -> Option<F::Output> {
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
pub(super) fn run_soon(mut fut: BoxFuture<'static, ()>) -> bool {
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
    for name in HOP_BY_HOP {
        kept.remove(name);
    }
    kept
}

/// What an entry weighs: body, kept headers, key and a fixed overhead.
pub(super) fn weigh(key: &CacheKey, headers: &HeaderMap, body_bytes: usize) -> u32 {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::testing::{headers, Pairs, AUTH_ONLY, COOKIE_ONLY, NONE};

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
}
