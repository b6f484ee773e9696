//! The process-wide metrics registry: counters, gauges and duration histograms updated from many
//! tasks at once, every label set bounded so hostile input cannot grow memory.
//! Rendering it is `prometheus`'s; no I/O here.

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Upper bounds, in seconds, of the duration histograms' buckets; `+Inf` follows them.
pub(super) const DURATION_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Distinct fragment hosts (and custom label values) kept; later ones are counted under
/// [`OVERFLOW_LABEL`].
pub(super) const MAX_HOST_LABELS: usize = 1000;
/// Distinct outcome / failure kind label values kept per family; later ones become
/// [`OVERFLOW_LABEL`].
pub(super) const MAX_KIND_LABELS: usize = 64;
/// Longest label value kept, in bytes; longer values are cut at a char boundary.
const MAX_LABEL_BYTES: usize = 256;
/// The label value that absorbs everything past a family's bound.
const OVERFLOW_LABEL: &str = "other";

pub(super) const REQUESTS: &str = "esi_proxy_requests_total";
pub(super) const REQUEST_DURATION: &str = "esi_proxy_request_duration_seconds";
pub(super) const FRAGMENT_FETCHES: &str = "esi_proxy_fragment_fetches_total";
pub(super) const FRAGMENT_DURATION: &str = "esi_proxy_fragment_duration_seconds";
pub(super) const FRAGMENT_FAILURES: &str = "esi_proxy_fragment_failures_total";
pub(super) const FALLBACKS: &str = "esi_proxy_fallbacks_total";
pub(super) const LAYOUT_FAILURES: &str = "esi_proxy_layout_failures_total";
pub(super) const FRAGMENT_BYTES: &str = "esi_proxy_fragment_bytes_total";
pub(super) const RESPONSE_BYTES: &str = "esi_proxy_response_bytes_total";
pub(super) const PAGES_IN_FLIGHT: &str = "esi_proxy_pages_in_flight";
pub(super) const ESI_PROBLEMS: &str = "esi_proxy_esi_problems_total";
pub(super) const PURGES: &str = "esi_proxy_cache_purges_total";
/// Every built-in family; a custom metric may not start with one of these (that also keeps
/// custom names off the histograms' `_bucket`/`_sum`/`_count` series).
const BUILTIN_NAMES: [&str; 12] = [
    REQUESTS,
    REQUEST_DURATION,
    FRAGMENT_FETCHES,
    FRAGMENT_DURATION,
    FRAGMENT_FAILURES,
    FALLBACKS,
    LAYOUT_FAILURES,
    FRAGMENT_BYTES,
    RESPONSE_BYTES,
    PAGES_IN_FLIGHT,
    ESI_PROBLEMS,
    PURGES,
];

/// Process-wide metrics, rendered by [`Metrics::render`] in the Prometheus text format.
///
/// Cheap to update from many tasks at once: values are atomics; label sets live in maps behind
/// an `RwLock` (read-mostly once warm, so updaters do not serialise), held only for a lookup or
/// an insert and never across an `.await`. Every label set is bounded: 1000 fragment hosts, 64
/// outcomes or kinds, 256 bytes per label value; the excess is counted under `"other"`.
#[derive(Debug, Default)]
pub struct Metrics {
    /// `esi_proxy_requests_total{route,status}`.
    pub(super) requests: RwLock<HashMap<(&'static str, u16), AtomicU64>>,
    /// `esi_proxy_request_duration_seconds{route}`.
    pub(super) request_durations: RwLock<HashMap<&'static str, Histogram>>,
    /// Everything labelled by fragment host, so one bound covers all host families.
    pub(super) fragments: RwLock<HashMap<String, Arc<HostSeries>>>,
    /// `esi_proxy_fragment_failures_total{kind}`.
    pub(super) failures: RwLock<HashMap<String, AtomicU64>>,
    /// `esi_proxy_fallbacks_total{kind}`.
    pub(super) fallbacks: RwLock<HashMap<&'static str, AtomicU64>>,
    /// `esi_proxy_layout_failures_total{kind}`.
    pub(super) layout_failures: RwLock<HashMap<&'static str, AtomicU64>>,
    /// `esi_proxy_response_bytes_total{route}`.
    pub(super) response_bytes: RwLock<HashMap<&'static str, AtomicU64>>,
    /// `esi_proxy_pages_in_flight`.
    pub(super) in_flight: AtomicI64,
    /// `esi_proxy_esi_problems_total`.
    pub(super) esi_problems: AtomicU64,
    /// `esi_proxy_cache_purges_total{kind,mode}`.
    pub(super) purges: RwLock<HashMap<(&'static str, &'static str), AtomicU64>>,
    /// Counters and gauges added by [`Metrics::inc_counter`] and [`Metrics::set_gauge`].
    pub(super) custom: RwLock<BTreeMap<&'static str, Custom>>,
}

/// A duration histogram over [`DURATION_BUCKETS`].
#[derive(Debug, Default)]
pub(super) struct Histogram {
    /// Per-bucket (not cumulative) counts; the last slot counts values above the top bound.
    /// `_count` is derived from these at render time, so `+Inf` always equals `_count`.
    buckets: [AtomicU64; DURATION_BUCKETS.len() + 1],
    /// Sum of the observed values, as `f64` bits.
    sum_bits: AtomicU64,
}

/// A point-in-time copy of a [`Histogram`], taken under the lock and formatted outside it.
#[derive(Debug, Clone, Copy)]
pub(super) struct HistogramSnapshot {
    pub(super) buckets: [u64; DURATION_BUCKETS.len() + 1],
    pub(super) sum: f64,
}

/// One series of a run-time counter, resolved by [`Metrics::counter`].
#[derive(Debug, Clone, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    /// Adds `by`.
    pub fn add(&self, by: u64) {
        self.0.fetch_add(by, Relaxed);
    }
}

/// The series of one fragment host, looked up once and kept: an include of a cached layout
/// records its fetches on it without finding its host's series again.
#[derive(Debug, Clone)]
pub struct FragmentHost(Arc<HostSeries>);

/// The series of one fragment host.
#[derive(Debug, Default)]
pub(super) struct HostSeries {
    /// `esi_proxy_fragment_fetches_total{host,outcome}`, by outcome.
    pub(super) fetches: RwLock<HashMap<String, AtomicU64>>,
    /// `esi_proxy_fragment_duration_seconds{host}`.
    pub(super) duration: Histogram,
    /// `esi_proxy_fragment_bytes_total{host}`.
    pub(super) bytes: AtomicU64,
}

/// A metric family created at run time.
#[derive(Debug)]
pub(super) struct Custom {
    pub(super) help: &'static str,
    pub(super) kind: CustomKind,
    /// Set once a misuse (wrong type, bad label name) has been logged, so it is logged once.
    warned: AtomicBool,
}

/// What a [`Custom`] family holds.
#[derive(Debug)]
pub(super) enum CustomKind {
    /// Series keyed by their one optional label.
    Counter(RwLock<HashMap<CustomLabel, Arc<AtomicU64>>>),
    /// The value as `f64` bits.
    Gauge(AtomicU64),
    /// Values as `f64` bits, keyed by their one label.
    LabelledGauge(RwLock<HashMap<(&'static str, String), AtomicU64>>),
    /// The name is not a valid metric name or is taken by a built-in family; kept so the
    /// warning is logged once and later updates are dropped quietly.
    Rejected,
}

/// The one optional label of a custom counter series: name and (bounded) value.
type CustomLabel = Option<(&'static str, String)>;

// === impl Metrics ===

impl Metrics {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// A client request finished: `route` is `"esi"` (composed), `"proxy"` (passed through) or
    /// `"admin"`; `status` is the HTTP status sent; `seconds` is how long it took (a negative
    /// or non-finite time counts as 0).
    pub fn record_request(&self, route: &'static str, status: u16, seconds: f64) {
        with_series(
            &self.requests,
            &(route, status),
            usize::MAX,
            &(route, status),
            |n| {
                n.fetch_add(1, Relaxed);
            },
        );
        with_series(&self.request_durations, &route, usize::MAX, &route, |h| {
            h.observe(seconds);
        });
    }

    /// One fragment fetch finished, labelled by fragment host (`"host:port"`): `outcome` is
    /// `"ok"` or a failure kind (`"timeout"`, `"status"`, `"refused"`, `"connect"`,
    /// `"too_large"`, `"truncated"`, `"malformed"`, `"decode"`, `"transport"`, `"loop"`,
    /// `"limit"` ...); `bytes` were received. Every outcome other than `"ok"` also counts as a
    /// failure of that kind.
    pub fn record_fragment(&self, host: &str, outcome: &str, seconds: f64, bytes: usize) {
        self.record_fragment_at(&self.fragment_host(host), outcome, seconds, bytes);
    }

    /// The series of fragment host `host` (`"host:port"`), to record on with
    /// [`Metrics::record_fragment_at`]: the same series [`Metrics::record_fragment`] finds.
    pub fn fragment_host(&self, host: &str) -> FragmentHost {
        let host = truncate_label(host);
        with_series(
            &self.fragments,
            host,
            MAX_HOST_LABELS,
            OVERFLOW_LABEL,
            |series| FragmentHost(Arc::clone(series)),
        )
    }

    /// [`Metrics::record_fragment`] on a host's series found before.
    pub fn record_fragment_at(
        &self,
        host: &FragmentHost,
        outcome: &str,
        seconds: f64,
        bytes: usize,
    ) {
        let series = &host.0;
        let outcome = truncate_label(outcome);
        with_series(
            &series.fetches,
            outcome,
            MAX_KIND_LABELS,
            OVERFLOW_LABEL,
            |n| {
                n.fetch_add(1, Relaxed);
            },
        );
        series.duration.observe(seconds);
        series.bytes.fetch_add(saturating_u64(bytes), Relaxed);
        if outcome != "ok" {
            with_series(
                &self.failures,
                outcome,
                MAX_KIND_LABELS,
                OVERFLOW_LABEL,
                |n| {
                    n.fetch_add(1, Relaxed);
                },
            );
        }
    }

    /// A fallback was used in place of a fragment: `"alt"`, `"continue"`, `"except"`,
    /// `"empty"` (policy), `"abort"` (policy fail), `"stale"` ...
    pub fn record_fallback(&self, kind: &'static str) {
        with_series(&self.fallbacks, &kind, usize::MAX, &kind, |n| {
            n.fetch_add(1, Relaxed);
        });
    }

    /// A page's layout failed (before or after the page's head was sent), by the kind its fetch
    /// failed with: `"timeout"`, `"connect"`, `"truncated"`, `"malformed"`, `"decode"`,
    /// `"too_large"` ...
    pub fn record_layout_failure(&self, kind: &'static str) {
        with_series(&self.layout_failures, &kind, usize::MAX, &kind, |n| {
            n.fetch_add(1, Relaxed);
        });
    }

    /// `n` bytes of composed or proxied body were sent to clients on `route`.
    pub fn add_bytes_out(&self, route: &'static str, n: u64) {
        with_series(&self.response_bytes, &route, usize::MAX, &route, |total| {
            total.fetch_add(n, Relaxed);
        });
    }

    /// Pages being composed right now: `+1` when one starts, `-1` when it ends.
    pub fn pages_in_flight(&self, delta: i64) {
        self.in_flight.fetch_add(delta, Relaxed);
    }

    /// A purge request was applied: `kind` is `"url"`, `"prefix"` or `"key"`, `mode` is
    /// `"hard"` or `"soft"`.
    pub fn record_purge(&self, kind: &'static str, mode: &'static str) {
        let key = (kind, mode);
        with_series(&self.purges, &key, usize::MAX, &key, |n| {
            n.fetch_add(1, Relaxed);
        });
    }

    /// `n` ESI markup problems were met in lenient mode.
    pub fn add_esi_problems(&self, n: u64) {
        self.esi_problems.fetch_add(n, Relaxed);
    }

    /// Adds `by` to a counter created at run time (cache hits, reloads ...), with one optional
    /// `(label name, value)`. The series is created on first use and `help` is taken from the
    /// first use of `name`. Label values are bounded like host labels (1000, then `"other"`).
    ///
    /// A `name` that is not a valid metric name, or that starts with a built-in family's name,
    /// is rejected, as are a bad label name and a name already used as a gauge: the update is
    /// dropped and a warning is logged once per name.
    pub fn inc_counter(
        &self,
        name: &'static str,
        help: &'static str,
        label: Option<(&'static str, &str)>,
        by: u64,
    ) {
        self.counter(name, help, label).add(by);
    }

    /// The series of a counter created at run time (as [`Metrics::inc_counter`] names,
    /// checks and bounds it), resolved once: a hot path counts on the handle with one atomic
    /// add, no lookup and no allocation. A rejected name gives a handle that counts into
    /// nothing exported, as `inc_counter` drops such updates.
    pub fn counter(
        &self,
        name: &'static str,
        help: &'static str,
        label: Option<(&'static str, &str)>,
    ) -> Counter {
        let mut found = None;
        let resolve = |custom: &Custom| match &custom.kind {
            CustomKind::Counter(series) => match label {
                Some((label_name, _)) if !is_label_name(label_name) => {
                    custom.warn_once(name, "label name is not a valid Prometheus label name");
                }
                _ => {
                    let key = label.map(|(k, v)| (k, truncate_label(v).to_owned()));
                    let overflow = label.map(|(k, _)| (k, OVERFLOW_LABEL.to_owned()));
                    found = Some(with_series(
                        series,
                        &key,
                        MAX_HOST_LABELS,
                        &overflow,
                        Arc::clone,
                    ));
                }
            },
            CustomKind::Gauge(_) | CustomKind::LabelledGauge(_) => {
                custom.warn_once(name, "already registered as a gauge");
            }
            CustomKind::Rejected => {}
        };
        self.with_custom(
            name,
            help,
            || CustomKind::Counter(RwLock::default()),
            resolve,
        );
        Counter(found.unwrap_or_default())
    }

    /// Sets a gauge created at run time to `value`; `help` is taken from the first use of
    /// `name`. Names are checked as in [`Metrics::inc_counter`].
    pub fn set_gauge(&self, name: &'static str, help: &'static str, value: f64) {
        let set = |custom: &Custom| match &custom.kind {
            CustomKind::Gauge(bits) => bits.store(value.to_bits(), Relaxed),
            CustomKind::Counter(_) => custom.warn_once(name, "already registered as a counter"),
            CustomKind::LabelledGauge(_) => custom.warn_once(name, "registered with a label"),
            CustomKind::Rejected => {}
        };
        self.with_custom(name, help, || CustomKind::Gauge(AtomicU64::default()), set);
    }

    /// Sets one series, by its `(label name, value)`, of a gauge created at run time (circuit
    /// breaker states ...). Names and label values are checked and bounded as in
    /// [`Metrics::inc_counter`].
    pub fn set_labelled_gauge(
        &self,
        name: &'static str,
        help: &'static str,
        label: (&'static str, &str),
        value: f64,
    ) {
        let set = |custom: &Custom| match &custom.kind {
            CustomKind::LabelledGauge(_) if !is_label_name(label.0) => {
                custom.warn_once(name, "label name is not a valid Prometheus label name");
            }
            CustomKind::LabelledGauge(series) => {
                let key = (label.0, truncate_label(label.1).to_owned());
                let overflow = (label.0, OVERFLOW_LABEL.to_owned());
                with_series(series, &key, MAX_HOST_LABELS, &overflow, |bits| {
                    bits.store(value.to_bits(), Relaxed);
                });
            }
            CustomKind::Gauge(_) => custom.warn_once(name, "registered without a label"),
            CustomKind::Counter(_) => custom.warn_once(name, "already registered as a counter"),
            CustomKind::Rejected => {}
        };
        let kind = || CustomKind::LabelledGauge(RwLock::default());
        self.with_custom(name, help, kind, set);
    }

    /// Runs `f` on the custom family `name`, creating it with `kind` on first use (or as
    /// [`CustomKind::Rejected`] when the name may not be used).
    fn with_custom(
        &self,
        name: &'static str,
        help: &'static str,
        kind: impl FnOnce() -> CustomKind,
        f: impl FnOnce(&Custom),
    ) {
        if let Some(custom) = read(&self.custom).get(name) {
            return f(custom);
        }
        let mut families = write(&self.custom);
        let custom = families.entry(name).or_insert_with(|| {
            let problem = if !is_metric_name(name) {
                Some("not a valid Prometheus metric name")
            } else if BUILTIN_NAMES.iter().any(|b| name.starts_with(b)) {
                Some("clashes with a built-in esi_proxy metric")
            } else {
                None
            };
            match problem {
                Some(problem) => {
                    tracing::warn!(metric = name, "custom metric dropped: {problem}");
                    Custom {
                        help,
                        kind: CustomKind::Rejected,
                        warned: AtomicBool::new(true),
                    }
                }
                None => Custom {
                    help,
                    kind: kind(),
                    warned: AtomicBool::new(false),
                },
            }
        });
        f(custom);
    }
}

// === impl Custom ===

impl Custom {
    fn warn_once(&self, name: &str, problem: &str) {
        if !self.warned.swap(true, Relaxed) {
            tracing::warn!(metric = name, "custom metric update dropped: {problem}");
        }
    }
}

// === impl Histogram ===

impl Histogram {
    /// Counts one value; a negative or non-finite value counts as 0 so `_sum` stays finite.
    fn observe(&self, seconds: f64) {
        let seconds = if seconds.is_finite() && seconds > 0.0 {
            seconds
        } else {
            0.0
        };
        let index = DURATION_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(DURATION_BUCKETS.len());
        if let Some(bucket) = self.buckets.get(index) {
            bucket.fetch_add(1, Relaxed);
        }
        // The closure always returns `Some`, so this cannot fail.
        let _ = self.sum_bits.fetch_update(Relaxed, Relaxed, |bits| {
            Some((f64::from_bits(bits) + seconds).to_bits())
        });
    }

    pub(super) fn snapshot(&self) -> HistogramSnapshot {
        let mut buckets = [0; DURATION_BUCKETS.len() + 1];
        for (copy, bucket) in buckets.iter_mut().zip(&self.buckets) {
            *copy = bucket.load(Relaxed);
        }
        HistogramSnapshot {
            buckets,
            sum: f64::from_bits(self.sum_bits.load(Relaxed)),
        }
    }
}

// === helpers ===

/// A read guard that survives poisoning: the maps hold atomics, so they are consistent even if
/// a holder panicked.
pub(super) fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

/// A write guard that survives poisoning, as [`read`].
fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

/// Runs `f` on the series for `key`, creating it on first use. Once `cap` series exist, a new
/// key goes to `overflow` instead, so at most `cap + 1` series are ever kept.
fn with_series<K, Q, V, R>(
    map: &RwLock<HashMap<K, V>>,
    key: &Q,
    cap: usize,
    overflow: &Q,
    f: impl FnOnce(&V) -> R,
) -> R
where
    K: Borrow<Q> + Eq + Hash,
    Q: ToOwned<Owned = K> + Eq + Hash + ?Sized,
    V: Default,
{
    if let Some(series) = read(map).get(key) {
        return f(series);
    }
    let mut series = write(map);
    let key = if series.len() < cap || series.contains_key(key) {
        key
    } else {
        overflow
    };
    f(series.entry(key.to_owned()).or_default())
}

/// A sorted copy of a family's series, taken under the read lock and formatted outside it.
pub(super) fn snapshot<K, V, S>(map: &RwLock<HashMap<K, V>>, f: impl Fn(&V) -> S) -> Vec<(K, S)>
where
    K: Clone + Ord,
{
    let mut rows: Vec<(K, S)> = read(map).iter().map(|(k, v)| (k.clone(), f(v))).collect();
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    rows
}

pub(super) fn load(n: &AtomicU64) -> u64 {
    n.load(Relaxed)
}

fn saturating_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// `value` cut to at most [`MAX_LABEL_BYTES`], at a char boundary.
fn truncate_label(value: &str) -> &str {
    if value.len() <= MAX_LABEL_BYTES {
        return value;
    }
    let mut end = MAX_LABEL_BYTES;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    value.get(..end).unwrap_or_default()
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`
pub(super) fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`, not starting with the reserved `__`.
pub(super) fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with("__")
}
