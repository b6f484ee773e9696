//! Caching of fragments and parsed layouts: moka caches bounded in bytes, TTLs from config rules
//! and response headers, Vary-aware keys, single-flight fetches, hit-for-pass,
//! stale-while-revalidate / stale-if-error, and purge. A [`CachingFetcher`] wraps the HTTP
//! [`crate::fetch::Fetcher`], so the composer sees one source of fragments; never serves HTTP.
//!
//! - `policy`: the pure TTL decision ([`CachePolicy`]) and the header directives it reads.
//! - `store`: the one store both caches use: keys, Vary, the weigher, expiry, purges, gauges.
//! - `entry`: one stored fragment response and its debug view ([`EntryInfo`]).
//! - `fragment`: [`FragmentCache`] and the caching fetcher (single-flight, hit-for-pass, stale).
//! - `layout`: [`LayoutCache`], parsed layouts served fresh only.

mod entry;
mod fragment;
mod layout;
mod policy;
mod store;
#[cfg(test)]
mod testing;

pub use entry::EntryInfo;
pub use fragment::{CachingFetcher, FragmentCache};
pub use layout::{CachedLayout, LayoutCache};
pub use policy::{CachePolicy, Credentials, Decision, TtlSource};

// Metric names: dashboards and alerts read them, so they stay as they are.
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
