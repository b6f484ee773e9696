//! Which URLs may have a vary spec that names headers ([`Varying`]): a counting filter over
//! their hashes, so that a URL whose responses do not vary (most fragments) is keyed without
//! a lookup in the vary book. It may answer "maybe" for a URL that has none (another URL
//! shares its slot, or an insert never finished), which costs that lookup; it never answers
//! "no" for a URL that has one.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU32, Ordering};

/// Slots of the filter: 16 KiB of counters, so that a few hundred URLs that vary leave most
/// of the others clear.
const SLOTS: usize = 4096;

/// Counts per slot the vary specs naming headers that the book holds for the URLs hashed to
/// it: one up before such a spec is stored, one down when the book lets one go (replaced,
/// expired, evicted or purged).
#[derive(Debug)]
pub(super) struct Varying {
    counts: Box<[AtomicU32]>,
    hasher: std::hash::RandomState,
}

impl Varying {
    pub(super) fn new() -> Self {
        Self {
            counts: (0..SLOTS).map(|_| AtomicU32::new(0)).collect(),
            hasher: std::hash::RandomState::new(),
        }
    }

    /// Counts a spec naming headers for `url`, before it is stored.
    pub(super) fn add(&self, url: &str) {
        self.slot(url).fetch_add(1, Ordering::AcqRel);
    }

    /// Counts out a spec naming headers for `url` that the book let go.
    pub(super) fn remove(&self, url: &str) {
        // Never below zero: a count that did not come in is not taken out of another URL's.
        let _ = self
            .slot(url)
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// Whether `url` may have a spec naming headers; `false` means it has none.
    pub(super) fn may_vary(&self, url: &str) -> bool {
        self.slot(url).load(Ordering::Acquire) > 0
    }

    fn slot(&self, url: &str) -> &AtomicU32 {
        let hash = self.hasher.hash_one(url);
        // Within SLOTS, a power of two.
        &self.counts[(hash as usize) & (SLOTS - 1)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_may_vary_while_it_has_a_spec_naming_headers() {
        let v = Varying::new();
        let url = "http://a.test/f";
        assert!(!v.may_vary(url), "nothing stored yet");
        v.add(url);
        v.add(url);
        assert!(v.may_vary(url));
        v.remove(url);
        assert!(v.may_vary(url), "one spec still held");
        v.remove(url);
        assert!(!v.may_vary(url), "every spec let go");
        v.remove(url);
        v.add(url);
        assert!(
            v.may_vary(url),
            "a removal never counted in does not cancel an add"
        );
    }

    #[test]
    fn other_urls_stay_clear() {
        let v = Varying::new();
        v.add("http://a.test/varies");
        let clear = (0..100)
            .filter(|i| !v.may_vary(&format!("http://a.test/f{i}")))
            .count();
        // One slot of 4096 is taken: at most a few of 100 others share it.
        assert!(clear >= 95, "{clear} of 100 clear");
    }
}
