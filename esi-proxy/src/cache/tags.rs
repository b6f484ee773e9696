//! Surrogate keys in the cache: what a purge is about ([`PurgeTarget`], [`PurgeMode`]) and the
//! bounded index from each key to the cache keys of the entries it tags, kept in step with the
//! store by its insert and eviction paths. No lookups of values, no HTTP.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use super::store::CacheKey;

/// What a purge drops or softens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PurgeTarget {
    /// Every variant of one URL (in the form of [`super::FragmentCache::purge_url`]).
    Url(String),
    /// Every URL starting with this text.
    Prefix(String),
    /// Every entry tagged with one of these surrogate keys.
    Keys(Vec<String>),
}

/// How a purge treats what it finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PurgeMode {
    /// Entries are dropped.
    Hard,
    /// Fresh entries become stale now and are kept for their stale windows, the
    /// stale-while-revalidate one at least `grace` long, so the next request is served stale
    /// while one fetch refreshes them. Entries with no stale serving (layouts) are dropped.
    Soft {
        /// The shortest stale-while-revalidate window a softened entry gets.
        grace: Duration,
    },
}

/// Surrogate key → the cache keys of the entries it tags, each pair counted (an entry replaced
/// by one with the same tags is indexed twice for a moment), bounded in distinct pairs.
#[derive(Debug)]
pub(super) struct TagIndex {
    inner: Mutex<Inner>,
    max_pairs: usize,
}

#[derive(Debug, Default)]
struct Inner {
    by_tag: HashMap<Arc<str>, HashMap<CacheKey, u32>>,
    /// Distinct (tag, cache key) pairs held.
    pairs: usize,
}

// === impl PurgeTarget ===

impl PurgeTarget {
    /// The `kind` label of the purge counter and the word of the purge answer.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Url(_) => "url",
            Self::Prefix(_) => "prefix",
            Self::Keys(_) => "key",
        }
    }
}

// === impl PurgeMode ===

impl PurgeMode {
    /// The `mode` label of the purge counter: `hard` or `soft`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Hard => "hard",
            Self::Soft { .. } => "soft",
        }
    }
}

// === impl TagIndex ===

impl TagIndex {
    /// An empty index holding at most `max_pairs` distinct (tag, cache key) pairs.
    pub(super) fn new(max_pairs: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            max_pairs: max_pairs.max(1),
        }
    }

    /// Indexes `key` under each of `tags`; `false`, with nothing added, when the new pairs
    /// would take the index past its bound. Pairs already held only count up.
    pub(super) fn add(&self, key: &CacheKey, tags: &[Arc<str>]) -> bool {
        if tags.is_empty() {
            return true;
        }
        let mut inner = self.lock();
        let new = tags
            .iter()
            .filter(|tag| {
                inner
                    .by_tag
                    .get(&***tag)
                    .is_none_or(|keys| !keys.contains_key(key))
            })
            .count();
        if inner.pairs + new > self.max_pairs {
            return false;
        }
        for tag in tags {
            let count = inner
                .by_tag
                .entry(Arc::clone(tag))
                .or_default()
                .entry(key.clone())
                .or_insert(0);
            *count += 1;
        }
        inner.pairs += new;
        true
    }

    /// Counts `key` down under each of `tags` (an entry left the store), forgetting pairs and
    /// tags that reach zero.
    pub(super) fn remove(&self, key: &CacheKey, tags: &[Arc<str>]) {
        if tags.is_empty() {
            return;
        }
        let mut inner = self.lock();
        let mut gone = 0;
        for tag in tags {
            let Some(keys) = inner.by_tag.get_mut(&**tag) else {
                continue;
            };
            if let Some(count) = keys.get_mut(key) {
                *count -= 1;
                if *count == 0 {
                    keys.remove(key);
                    gone += 1;
                }
            }
            if keys.is_empty() {
                inner.by_tag.remove(&**tag);
            }
        }
        inner.pairs -= gone;
    }

    /// The cache keys tagged with any of `tags`, each once.
    pub(super) fn keys_for(&self, tags: &[String]) -> Vec<CacheKey> {
        let inner = self.lock();
        let mut found: Vec<CacheKey> = Vec::new();
        for tag in tags {
            if let Some(keys) = inner.by_tag.get(tag.as_str()) {
                for key in keys.keys() {
                    if !found.contains(key) {
                        found.push(key.clone());
                    }
                }
            }
        }
        found
    }

    /// Distinct (tag, cache key) pairs held.
    pub(super) fn len(&self) -> usize {
        self.lock().pairs
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderMap;

    use super::*;
    use crate::cache::testing::NONE;

    fn key(url: &str) -> CacheKey {
        CacheKey::new(&Arc::from(url), &[], &HeaderMap::new(), NONE)
    }

    fn tags(names: &[&str]) -> Vec<Arc<str>> {
        names.iter().map(|n| Arc::from(*n)).collect()
    }

    #[test]
    fn pairs_are_counted_bounded_and_forgotten() {
        let index = TagIndex::new(4);
        let (a, b, c) = (key("http://t/a"), key("http://t/b"), key("http://t/c"));
        assert!(index.add(&a, &tags(&["p1", "prices"])));
        assert!(index.add(&b, &tags(&["p2", "prices"])));
        assert_eq!(index.len(), 4);
        assert!(!index.add(&c, &tags(&["p3"])), "full: refused whole");
        assert_eq!(index.keys_for(&["p3".into()]), Vec::<CacheKey>::new());
        // The same pairs again (a replacement) only count up.
        assert!(index.add(&a, &tags(&["p1", "prices"])));
        assert_eq!(index.len(), 4);
        index.remove(&a, &tags(&["p1", "prices"]));
        assert_eq!(
            index.keys_for(&["p1".into()]),
            vec![a.clone()],
            "still held once"
        );
        let mut both = index.keys_for(&["prices".into(), "p2".into()]);
        both.sort_by(|x, y| x.url.cmp(&y.url));
        assert_eq!(both, vec![a.clone(), b.clone()], "each key once");
        index.remove(&a, &tags(&["p1", "prices"]));
        index.remove(&b, &tags(&["p2", "prices"]));
        assert_eq!(index.len(), 0);
        assert!(index.lock().by_tag.is_empty(), "empty tags forgotten");
        // A removal of what was never added changes nothing.
        index.remove(&c, &tags(&["p3"]));
        assert_eq!(index.len(), 0);
        assert!(index.add(&c, &tags(&["p3"])));
    }
}
