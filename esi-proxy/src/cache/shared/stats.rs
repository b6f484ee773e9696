//! What the shared tier counts, kept twice: in atomics for `/_esi/health?detail` and in the
//! metrics registry as `esi_proxy_shared_cache_*`. Decides nothing.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::keys::Kind;
use crate::telemetry::Metrics;

// Metric names: dashboards and alerts read them, so they stay as they are.
/// 2 up (breaker closed), 1 probing, 0 down (breaker open); absent without a shared tier.
pub(super) const STATE: &str = "esi_proxy_shared_cache_state";
const HITS: &str = "esi_proxy_shared_cache_hits_total";
const MISSES: &str = "esi_proxy_shared_cache_misses_total";
const ERRORS: &str = "esi_proxy_shared_cache_errors_total";
const SKIPPED: &str = "esi_proxy_shared_cache_skipped_total";
const CALLS: &str = "esi_proxy_shared_cache_calls_total";
const CALL_MICROS: &str = "esi_proxy_shared_cache_call_microseconds_total";
const WRITES: &str = "esi_proxy_shared_cache_writes_total";
const LEASES: &str = "esi_proxy_shared_cache_leases_total";
const PURGES_PUBLISHED: &str = "esi_proxy_shared_cache_purges_published_total";
const PURGES_RECEIVED: &str = "esi_proxy_shared_cache_purges_received_total";
const FLUSHES: &str = "esi_proxy_shared_cache_local_flushes_total";

/// The shared tier's counters.
pub(super) struct Stats {
    metrics: Arc<Metrics>,
    hits: AtomicU64,
    misses: AtomicU64,
    errors: AtomicU64,
    skipped: AtomicU64,
    calls: AtomicU64,
    call_micros: AtomicU64,
    purges_published: AtomicU64,
    purges_received: AtomicU64,
}

/// The counters as `/_esi/health?detail` shows them.
#[derive(Debug, Clone, Serialize)]
pub struct StatsView {
    /// Lookups answered by the shared tier (fragments and layouts).
    pub hits: u64,
    /// Lookups it had nothing for.
    pub misses: u64,
    /// Calls that failed or timed out, and records that did not decode.
    pub errors: u64,
    /// Calls not made while the breaker was open.
    pub skipped: u64,
    /// Calls made.
    pub calls: u64,
    /// Mean call latency in microseconds.
    pub mean_call_us: u64,
    /// Purges this node announced.
    pub purges_published: u64,
    /// Purge announcements this node applied.
    pub purges_received: u64,
}

// === impl Stats ===

impl Stats {
    pub(super) fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            metrics,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            calls: AtomicU64::new(0),
            call_micros: AtomicU64::new(0),
            purges_published: AtomicU64::new(0),
            purges_received: AtomicU64::new(0),
        }
    }

    /// A lookup answered from the shared tier.
    pub(super) fn hit(&self, kind: Kind) {
        self.hits.fetch_add(1, Relaxed);
        let help = "Lookups the shared tier answered, after an in-process miss.";
        self.count(HITS, help, Some(("cache", kind.label())));
    }

    /// A lookup the shared tier had nothing servable for.
    pub(super) fn miss(&self, kind: Kind) {
        self.misses.fetch_add(1, Relaxed);
        let help = "Lookups the shared tier had nothing servable for.";
        self.count(MISSES, help, Some(("cache", kind.label())));
    }

    /// A failed call or an unreadable record, by kind: `timeout`, `connection`, `response` or
    /// `decode`.
    pub(super) fn error(&self, kind: &'static str) {
        self.errors.fetch_add(1, Relaxed);
        let help = "Shared tier calls that failed or timed out, and records that did not decode.";
        self.count(ERRORS, help, Some(("kind", kind)));
    }

    /// A call not made: the breaker is open.
    pub(super) fn skipped(&self) {
        self.skipped.fetch_add(1, Relaxed);
        self.count(
            SKIPPED,
            "Shared tier calls skipped while its breaker was open.",
            None,
        );
    }

    /// A call made, and how long it took.
    pub(super) fn call(&self, took: Duration) {
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.calls.fetch_add(1, Relaxed);
        self.call_micros.fetch_add(micros, Relaxed);
        self.count(CALLS, "Calls made to the shared tier's Redis.", None);
        self.metrics.inc_counter(
            CALL_MICROS,
            "Microseconds spent in calls to the shared tier's Redis (mean: divide by calls).",
            None,
            micros,
        );
    }

    /// A value written.
    pub(super) fn write(&self, kind: Kind) {
        let help = "Values written to the shared tier.";
        self.count(WRITES, help, Some(("cache", kind.label())));
    }

    /// A cluster lease asked for: `leader` (this node fetches) or `follower` (it waits).
    pub(super) fn lease(&self, outcome: &'static str) {
        let help = "Cluster leases for cold keys, by outcome: leader fetches, follower waits.";
        self.count(LEASES, help, Some(("outcome", outcome)));
    }

    /// A purge this node announced to the others.
    pub(super) fn purge_published(&self) {
        self.purges_published.fetch_add(1, Relaxed);
        self.count(
            PURGES_PUBLISHED,
            "Purges announced to the other nodes.",
            None,
        );
    }

    /// A purge announcement applied to the in-process caches.
    pub(super) fn purge_received(&self) {
        self.purges_received.fetch_add(1, Relaxed);
        self.count(PURGES_RECEIVED, "Purge announcements applied here.", None);
    }

    /// The in-process caches dropped whole: a purge generation this node did not hear about.
    pub(super) fn flush(&self) {
        let help = "In-process caches dropped whole after missing purge announcements.";
        self.count(FLUSHES, help, None);
    }

    /// The counters now.
    pub(super) fn view(&self) -> StatsView {
        let calls = self.calls.load(Relaxed);
        StatsView {
            hits: self.hits.load(Relaxed),
            misses: self.misses.load(Relaxed),
            errors: self.errors.load(Relaxed),
            skipped: self.skipped.load(Relaxed),
            calls,
            mean_call_us: self
                .call_micros
                .load(Relaxed)
                .checked_div(calls)
                .unwrap_or(0),
            purges_published: self.purges_published.load(Relaxed),
            purges_received: self.purges_received.load(Relaxed),
        }
    }

    /// Sets a gauge.
    pub(super) fn gauge(&self, name: &'static str, help: &'static str, value: f64) {
        self.metrics.set_gauge(name, help, value);
    }

    fn count(&self, name: &'static str, help: &'static str, label: Option<(&'static str, &str)>) {
        self.metrics.inc_counter(name, help, label, 1);
    }
}
