//! One stored fragment response ([`Entry`]): what it keeps (status, headers less hop-by-hop,
//! the body shared as `Bytes`, the parsed-template slot), its TTL and stale windows, what it
//! weighs, and how it is served back. The debug view of it is [`EntryInfo`]. No lookups here.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::HeaderName;
use http::{HeaderMap, StatusCode};

use super::policy::TtlSource;
use super::store::{include_tags, kept_headers, weigh, CacheKey, Lifetime, Softened, Stored};
use crate::esi::Template;
use crate::fetch::{CacheInfo, CacheStatus, Fragment};

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
    /// Its surrogate keys.
    pub keys: Vec<String>,
}

/// One stored fragment response.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub(super) key: CacheKey,
    /// The header names `key` was computed from (sorted), so a request that waited on this
    /// response can tell whether it is its variant.
    pub(super) names: Arc<[HeaderName]>,
    pub(super) status: StatusCode,
    pub(super) headers: Arc<HeaderMap>,
    pub(super) body: Bytes,
    pub(super) stored_at: Instant,
    pub(super) ttl: Duration,
    pub(super) stale_while_revalidate: Duration,
    pub(super) stale_if_error: Duration,
    pub(super) source: TtlSource,
    pub(super) weight: u32,
    /// Its surrogate keys (the response's `Surrogate-Key` and `xkey`, which `headers` no
    /// longer hold).
    pub(super) tags: Arc<[Arc<str>]>,
    /// Whether the response is marked as ESI.
    esi: bool,
    /// The body parsed as ESI, filled by the first hit that serves it and shared by the rest.
    parsed: OnceLock<Arc<Template>>,
}

// === impl Entry ===

impl Entry {
    /// An entry for `fragment` under `key`, tagged with `tags`; `times` are the TTL,
    /// stale-while-revalidate and stale-if-error windows.
    pub(super) fn new(
        key: CacheKey,
        names: Arc<[HeaderName]>,
        fragment: Fragment,
        times: [Duration; 3],
        source: TtlSource,
        tags: Arc<[Arc<str>]>,
    ) -> Arc<Self> {
        Self::aged(key, names, fragment, times, source, tags, Duration::ZERO)
    }

    /// [`Entry::new`] for a response stored `age` ago (by another node, in the shared tier).
    pub(super) fn aged(
        key: CacheKey,
        names: Arc<[HeaderName]>,
        fragment: Fragment,
        times: [Duration; 3],
        source: TtlSource,
        tags: Arc<[Arc<str>]>,
        age: Duration,
    ) -> Arc<Self> {
        let now = Instant::now();
        let [ttl, stale_while_revalidate, stale_if_error] = times;
        let esi = fragment.is_esi();
        let mut headers = kept_headers(&fragment.headers);
        crate::headers::strip_surrogate_keys(&mut headers);
        // An ESI fragment is kept parsed once asked for: its includes count as they will take.
        let includes = if esi { include_tags(&fragment.body) } else { 0 };
        let weight = weigh(&key, &headers, fragment.body.len(), includes);
        Arc::new(Self {
            key,
            names,
            status: fragment.status,
            headers: Arc::new(headers),
            body: fragment.body,
            stored_at: now.checked_sub(age).unwrap_or(now),
            ttl,
            stale_while_revalidate,
            stale_if_error,
            source,
            weight,
            tags,
            esi,
            parsed: OnceLock::new(),
        })
    }

    /// This entry stale from now (its TTL cut to its age), its stale-while-revalidate window
    /// at least `grace`, counted from now; `None` when it is stale already.
    pub(super) fn softened(&self, grace: Duration) -> Option<Arc<Self>> {
        let age = self.stored_at.elapsed();
        (age < self.ttl).then(|| {
            Arc::new(Self {
                ttl: age,
                stale_while_revalidate: self.stale_while_revalidate.max(grace),
                ..self.clone()
            })
        })
    }

    /// The stored response as served with `status`; the body is shared, not copied, and an ESI
    /// body comes parsed (by `parse`, the first time it is served).
    pub(super) fn fragment(
        &self,
        status: CacheStatus,
        parse: impl FnOnce(Bytes) -> Template,
    ) -> Fragment {
        Fragment {
            status: self.status,
            headers: Arc::clone(&self.headers),
            body: self.body.clone(),
            cache: Some(CacheInfo {
                status,
                ttl: Some(self.ttl),
                source: Some(self.source.to_string()),
                keys: Arc::clone(&self.tags),
            }),
            template: self.esi.then(|| {
                let template = self
                    .parsed
                    .get_or_init(|| Arc::new(parse(self.body.clone())));
                Arc::clone(template)
            }),
        }
    }

    /// Whether it may be served when a fresh fetch fails.
    pub(super) fn within_stale_if_error(&self) -> bool {
        self.stored_at.elapsed() < self.ttl.saturating_add(self.stale_if_error)
    }

    /// The debug view of it at `now`.
    pub(super) fn info(&self, now: Instant) -> EntryInfo {
        EntryInfo {
            url: self.key.url.to_string(),
            body_bytes: self.body.len(),
            weight: self.weight,
            source: self.source.clone(),
            ttl: self.ttl,
            stale_while_revalidate: self.stale_while_revalidate,
            stale_if_error: self.stale_if_error,
            age: now.saturating_duration_since(self.stored_at),
            keys: self.tags.iter().map(|t| t.to_string()).collect(),
        }
    }
}

impl Lifetime for Arc<Entry> {
    /// What is left of TTL plus the longer stale window: an entry stored by another node
    /// (or softened) came with an age.
    fn lifetime(&self) -> Duration {
        self.ttl
            .saturating_add(self.stale_while_revalidate.max(self.stale_if_error))
            .saturating_sub(self.stored_at.elapsed())
    }
}

impl Stored for Arc<Entry> {
    fn weight(&self) -> u32 {
        self.weight
    }

    fn tags(&self) -> &[Arc<str>] {
        &self.tags
    }

    fn soften(&self, grace: Duration) -> Softened<Self> {
        self.softened(grace)
            .map_or(Softened::Keep, Softened::Replace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::testing::{headers, NONE};

    /// An entry of `body` with `pairs` as headers, under a key with no variant; one second
    /// of TTL and of each stale window.
    fn entry(pairs: &[(&str, &str)], body: Bytes) -> Arc<Entry> {
        let url: Arc<str> = "http://a.test/f".into();
        let fragment = Fragment {
            cache: None,
            template: None,
            status: StatusCode::OK,
            headers: Arc::new(headers(pairs)),
            body,
        };
        Entry::new(
            CacheKey::new(&url, &[], &HeaderMap::new(), NONE),
            Arc::from([]),
            fragment,
            [Duration::from_secs(1); 3],
            TtlSource::Default,
            Arc::from([]),
        )
    }

    #[test]
    fn entry_drops_hop_by_hop_headers_before_it_is_weighed() {
        let pairs = [
            ("content-type", "text/html"),
            ("transfer-encoding", "chunked"),
            ("connection", "close"),
        ];
        let entry = entry(&pairs, Bytes::from(vec![b'x'; 1000]));
        assert_eq!(entry.weight, 1000 + (12 + 9 + 32) + 15 + 1 + 160);
        assert_eq!(entry.headers.len(), 1);
        let lifetime = entry.lifetime();
        assert!(
            lifetime <= Duration::from_secs(2) && lifetime > Duration::from_secs(1),
            "{lifetime:?}"
        );
    }

    #[test]
    fn a_softened_entry_is_stale_now_for_its_window_or_the_grace() {
        let entry = entry(&[("surrogate-key", "a b")], Bytes::from_static(b"x"));
        assert!(entry.headers.get("surrogate-key").is_none(), "not kept");
        let soft = entry.softened(Duration::from_secs(30)).expect("fresh");
        assert!(soft.stored_at.elapsed() >= soft.ttl, "stale now");
        assert_eq!(soft.stale_while_revalidate, Duration::from_secs(30));
        assert_eq!(soft.stale_if_error, Duration::from_secs(1));
        assert!(
            soft.lifetime() > Duration::from_secs(29),
            "kept for the grace"
        );
        let shorter = entry.softened(Duration::ZERO).expect("fresh");
        assert_eq!(shorter.stale_while_revalidate, Duration::from_secs(1));
        assert!(
            soft.softened(Duration::from_secs(30)).is_none(),
            "stale already"
        );
    }

    #[test]
    fn hit_shares_the_body() {
        let body = Bytes::from(vec![b'x'; 100]);
        let entry = entry(&[], body.clone());
        assert_eq!(
            entry
                .fragment(CacheStatus::Hit, |_| Template::default())
                .body
                .as_ptr(),
            body.as_ptr()
        );
    }
}
