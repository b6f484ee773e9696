//! Caching of fragments and parsed layouts: the re-exports and metric names. `policy` decides
//! TTLs, `store` is the one byte-bounded, Vary-aware store, `tags` its surrogate-key index,
//! `varying` which URLs' responses may vary, `entry` a stored fragment, `fragment` the caching
//! Fetcher (single-flight, stale serving), `layout` the layout cache, `shared` the L2 tier on
//! Redis. Never serves HTTP.

mod entry;
mod fragment;
mod layout;
mod policy;
mod shared;
mod store;
mod tags;
#[cfg(test)]
mod testing;
mod varying;

pub use entry::EntryInfo;
pub use fragment::{CachingFetcher, FragmentCache};
pub use layout::{CachedLayout, LayoutCache};
pub use policy::{CachePolicy, Credentials, Decision, TtlSource};
pub use shared::{BreakerState, SharedError, SharedHealth, SharedPurge, SharedTier, StatsView};
pub(crate) use store::run_soon;
pub use tags::{PurgeMode, PurgeTarget};

// Metric names: dashboards and alerts read them, so they stay as they are.
const HITS: &str = "esi_proxy_cache_hits_total";
const MISSES: &str = "esi_proxy_cache_misses_total";
const HITS_HELP: &str = "Cache lookups answered with a fresh entry.";
const MISSES_HELP: &str = "Cache lookups that found nothing servable.";
const STALE_SERVED: &str = "esi_proxy_cache_stale_served_total";
const COALESCED: &str = "esi_proxy_cache_coalesced_total";
const PASSES: &str = "esi_proxy_cache_passes_total";
const EVICTIONS: &str = "esi_proxy_cache_evictions_total";
const FRAGMENT_ENTRIES: &str = "esi_proxy_fragment_cache_entries";
const FRAGMENT_BYTES: &str = "esi_proxy_fragment_cache_bytes";
const LAYOUT_ENTRIES: &str = "esi_proxy_layout_cache_entries";
const LAYOUT_BYTES: &str = "esi_proxy_layout_cache_bytes";
const TAG_INDEX: &str = "esi_proxy_surrogate_index_entries";
const KEYS_DROPPED: &str = "esi_proxy_surrogate_keys_dropped_total";
