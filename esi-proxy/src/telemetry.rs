//! Telemetry: the global tracing subscriber, the process-wide metrics registry rendered in the
//! Prometheus text exposition format (version 0.0.4), and the `Server-Timing` header value.
//! Callers record plain numbers and labels; this module touches no network and no ESI, and every
//! label set it keeps is bounded so hostile input cannot grow memory.

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap};
use std::env::VarError;
use std::fmt::{self, Display, Write as _};
use std::hash::Hash;
use std::io::IsTerminal as _;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use http::HeaderValue;
use tracing_subscriber::filter::{EnvFilter, ParseError};

/// Upper bounds, in seconds, of the duration histograms' buckets; `+Inf` follows them.
const DURATION_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Distinct fragment hosts (and custom label values) kept; later ones are counted under
/// [`OVERFLOW_LABEL`].
const MAX_HOST_LABELS: usize = 1000;
/// Distinct outcome / failure kind label values kept per family; later ones become
/// [`OVERFLOW_LABEL`].
const MAX_KIND_LABELS: usize = 64;
/// Longest label value kept, in bytes; longer values are cut at a char boundary.
const MAX_LABEL_BYTES: usize = 256;
/// The label value that absorbs everything past a family's bound.
const OVERFLOW_LABEL: &str = "other";

const REQUESTS: &str = "esi_proxy_requests_total";
const REQUEST_DURATION: &str = "esi_proxy_request_duration_seconds";
const FRAGMENT_FETCHES: &str = "esi_proxy_fragment_fetches_total";
const FRAGMENT_DURATION: &str = "esi_proxy_fragment_duration_seconds";
const FRAGMENT_FAILURES: &str = "esi_proxy_fragment_failures_total";
const FALLBACKS: &str = "esi_proxy_fallbacks_total";
const FRAGMENT_BYTES: &str = "esi_proxy_fragment_bytes_total";
const RESPONSE_BYTES: &str = "esi_proxy_response_bytes_total";
const PAGES_IN_FLIGHT: &str = "esi_proxy_pages_in_flight";
const ESI_PROBLEMS: &str = "esi_proxy_esi_problems_total";
/// Every built-in family; a custom metric may not start with one of these (that also keeps
/// custom names off the histograms' `_bucket`/`_sum`/`_count` series).
const BUILTIN_NAMES: [&str; 10] = [
    REQUESTS,
    REQUEST_DURATION,
    FRAGMENT_FETCHES,
    FRAGMENT_DURATION,
    FRAGMENT_FAILURES,
    FALLBACKS,
    FRAGMENT_BYTES,
    RESPONSE_BYTES,
    PAGES_IN_FLIGHT,
    ESI_PROBLEMS,
];

/// Longest operation name in a `Server-Timing` entry, in chars.
const MAX_TIMING_NAME_CHARS: usize = 64;
/// Longest `desc` in a `Server-Timing` entry, in chars.
const MAX_TIMING_DESC_CHARS: usize = 256;
/// Longest `Server-Timing` value, in bytes; entries past it are dropped whole.
const MAX_TIMING_BYTES: usize = 4096;
/// Largest `dur` written, in milliseconds (about 30 years), so the number stays short.
const MAX_TIMING_MS: f64 = 1e12;

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// A log filter is not valid `tracing` filter directives.
    #[error("bad log filter in {origin} ({directives:?}): {source}")]
    BadFilter {
        /// Where the directives came from: `RUST_LOG` or `default filter`.
        origin: &'static str,
        /// The directives as given.
        directives: String,
        /// What the parser objected to.
        #[source]
        source: ParseError,
    },
    /// `RUST_LOG` is set but is not valid Unicode.
    #[error("RUST_LOG is not valid Unicode")]
    FilterNotUnicode,
}

/// Process-wide metrics, rendered by [`Metrics::render`] in the Prometheus text format.
///
/// Cheap to update from many tasks at once: values are atomics; label sets live in maps behind
/// an `RwLock` (read-mostly once warm, so updaters do not serialise), held only for a lookup or
/// an insert and never across an `.await`. Every label set is bounded: 1000 fragment hosts, 64
/// outcomes or kinds, 256 bytes per label value; the excess is counted under `"other"`.
#[derive(Debug, Default)]
pub struct Metrics {
    /// `esi_proxy_requests_total{route,status}`.
    requests: RwLock<HashMap<(&'static str, u16), AtomicU64>>,
    /// `esi_proxy_request_duration_seconds{route}`.
    request_durations: RwLock<HashMap<&'static str, Histogram>>,
    /// Everything labelled by fragment host, so one bound covers all host families.
    fragments: RwLock<HashMap<String, HostSeries>>,
    /// `esi_proxy_fragment_failures_total{kind}`.
    failures: RwLock<HashMap<String, AtomicU64>>,
    /// `esi_proxy_fallbacks_total{kind}`.
    fallbacks: RwLock<HashMap<&'static str, AtomicU64>>,
    /// `esi_proxy_response_bytes_total{route}`.
    response_bytes: RwLock<HashMap<&'static str, AtomicU64>>,
    /// `esi_proxy_pages_in_flight`.
    in_flight: AtomicI64,
    /// `esi_proxy_esi_problems_total`.
    esi_problems: AtomicU64,
    /// Counters and gauges added by [`Metrics::inc_counter`] and [`Metrics::set_gauge`].
    custom: RwLock<BTreeMap<&'static str, Custom>>,
}

/// A duration histogram over [`DURATION_BUCKETS`].
#[derive(Debug, Default)]
struct Histogram {
    /// Per-bucket (not cumulative) counts; the last slot counts values above the top bound.
    /// `_count` is derived from these at render time, so `+Inf` always equals `_count`.
    buckets: [AtomicU64; DURATION_BUCKETS.len() + 1],
    /// Sum of the observed values, as `f64` bits.
    sum_bits: AtomicU64,
}

/// A point-in-time copy of a [`Histogram`], taken under the lock and formatted outside it.
#[derive(Debug, Clone, Copy)]
struct HistogramSnapshot {
    buckets: [u64; DURATION_BUCKETS.len() + 1],
    sum: f64,
}

/// The series of one fragment host.
#[derive(Debug, Default)]
struct HostSeries {
    /// `esi_proxy_fragment_fetches_total{host,outcome}`, by outcome.
    fetches: RwLock<HashMap<String, AtomicU64>>,
    /// `esi_proxy_fragment_duration_seconds{host}`.
    duration: Histogram,
    /// `esi_proxy_fragment_bytes_total{host}`.
    bytes: AtomicU64,
}

/// A metric family created at run time.
#[derive(Debug)]
struct Custom {
    help: &'static str,
    kind: CustomKind,
    /// Set once a misuse (wrong type, bad label name) has been logged, so it is logged once.
    warned: AtomicBool,
}

/// What a [`Custom`] family holds.
#[derive(Debug)]
enum CustomKind {
    /// Series keyed by their one optional label.
    Counter(RwLock<HashMap<CustomLabel, AtomicU64>>),
    /// The value as `f64` bits.
    Gauge(AtomicU64),
    /// The name is not a valid metric name or is taken by a built-in family; kept so the
    /// warning is logged once and later updates are dropped quietly.
    Rejected,
}

/// The one optional label of a custom counter series: name and (bounded) value.
type CustomLabel = Option<(&'static str, String)>;

/// An `f64` written the way Prometheus parses it: `NaN`, `+Inf`, `-Inf`, or a plain decimal.
struct Float(f64);

// === impl TelemetryError ===

impl TelemetryError {
    fn bad_filter(origin: &'static str, directives: &str, source: ParseError) -> Self {
        TelemetryError::BadFilter {
            origin,
            directives: directives.to_owned(),
            source,
        }
    }
}

// === tracing ===

/// Installs the global tracing subscriber, writing to stderr: human-readable text (coloured on a
/// terminal) or, with `json`, one JSON object per line. The filter comes from `RUST_LOG` when it
/// is set and not empty, else from `default_filter` (e.g. `"info"`,
/// `"esi_proxy=debug,hyper=warn"`).
///
/// Returns `Ok(true)` when this call installed the subscriber and `Ok(false)` when one was
/// already installed (a second call is a no-op).
///
/// # Errors
///
/// [`TelemetryError::BadFilter`] when `default_filter` or `RUST_LOG` does not parse (both are
/// always checked, so a bad default shows up even where `RUST_LOG` is set), and
/// [`TelemetryError::FilterNotUnicode`] when `RUST_LOG` is not Unicode.
pub fn init_tracing(json: bool, default_filter: &str) -> Result<bool, TelemetryError> {
    let env = match std::env::var("RUST_LOG") {
        Ok(value) => Some(value),
        Err(VarError::NotPresent) => None,
        Err(VarError::NotUnicode(_)) => return Err(TelemetryError::FilterNotUnicode),
    };
    let filter = build_filter(env.as_deref(), default_filter)?;
    if tracing::dispatcher::has_been_set() {
        return Ok(false);
    }
    // `set_global_default` fails only when another thread installed one first: also a no-op.
    let installed = if json {
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .finish();
        tracing::subscriber::set_global_default(subscriber).is_ok()
    } else {
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(std::io::stderr().is_terminal())
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .finish();
        tracing::subscriber::set_global_default(subscriber).is_ok()
    };
    Ok(installed)
}

/// The filter from `env` (the value of `RUST_LOG`) when set and not blank, else from
/// `default_filter`; `default_filter` is parsed either way.
fn build_filter(env: Option<&str>, default_filter: &str) -> Result<EnvFilter, TelemetryError> {
    let default = EnvFilter::try_new(default_filter)
        .map_err(|e| TelemetryError::bad_filter("default filter", default_filter, e))?;
    match env.map(str::trim).filter(|s| !s.is_empty()) {
        Some(directives) => EnvFilter::try_new(directives)
            .map_err(|e| TelemetryError::bad_filter("RUST_LOG", directives, e)),
        None => Ok(default),
    }
}

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
    /// `"too_large"`, `"truncated"`, `"transport"`, `"loop"`, `"limit"` ...); `bytes` were
    /// received. Every outcome other than `"ok"` also counts as a failure of that kind.
    pub fn record_fragment(&self, host: &str, outcome: &str, seconds: f64, bytes: usize) {
        let host = truncate_label(host);
        let outcome = truncate_label(outcome);
        with_series(
            &self.fragments,
            host,
            MAX_HOST_LABELS,
            OVERFLOW_LABEL,
            |series| {
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
            },
        );
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
        let add = |custom: &Custom| match &custom.kind {
            CustomKind::Counter(series) => match label {
                Some((label_name, _)) if !is_label_name(label_name) => {
                    custom.warn_once(name, "label name is not a valid Prometheus label name");
                }
                _ => {
                    let key = label.map(|(k, v)| (k, truncate_label(v).to_owned()));
                    let overflow = label.map(|(k, _)| (k, OVERFLOW_LABEL.to_owned()));
                    with_series(series, &key, MAX_HOST_LABELS, &overflow, |n| {
                        n.fetch_add(by, Relaxed);
                    });
                }
            },
            CustomKind::Gauge(_) => custom.warn_once(name, "already registered as a gauge"),
            CustomKind::Rejected => {}
        };
        self.with_custom(name, help, || CustomKind::Counter(RwLock::default()), add);
    }

    /// Sets a gauge created at run time to `value`; `help` is taken from the first use of
    /// `name`. Names are checked as in [`Metrics::inc_counter`].
    pub fn set_gauge(&self, name: &'static str, help: &'static str, value: f64) {
        let set = |custom: &Custom| match &custom.kind {
            CustomKind::Gauge(bits) => bits.store(value.to_bits(), Relaxed),
            CustomKind::Counter(_) => custom.warn_once(name, "already registered as a counter"),
            CustomKind::Rejected => {}
        };
        self.with_custom(name, help, || CustomKind::Gauge(AtomicU64::default()), set);
    }

    /// Everything in the Prometheus text exposition format, version 0.0.4: each family has its
    /// `# HELP` and `# TYPE` lines (even before its first sample), families are sorted by
    /// name and series by labels, so the output is deterministic. Serve it as
    /// `text/plain; version=0.0.4; charset=utf-8`.
    pub fn render(&self) -> String {
        let mut blocks: Vec<(&'static str, String)> = Vec::with_capacity(16);
        // Writing to a `String` cannot fail, so the `fmt::Result`s below are always `Ok`.
        let _ = self.render_builtin(&mut blocks);
        let _ = self.render_custom(&mut blocks);
        blocks.sort_by(|a, b| a.0.cmp(b.0));
        let mut out = String::with_capacity(blocks.iter().map(|(_, text)| text.len()).sum());
        for (_, text) in blocks {
            out.push_str(&text);
        }
        out
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

    fn render_builtin(&self, blocks: &mut Vec<(&'static str, String)>) -> fmt::Result {
        let mut text = header(
            REQUESTS,
            "Client requests finished, by route (esi, proxy, admin) and HTTP status sent.",
            "counter",
        );
        for ((route, status), n) in snapshot(&self.requests, load) {
            let status = status.to_string();
            sample(
                &mut text,
                REQUESTS,
                &[("route", route), ("status", status.as_str())],
                n,
            )?;
        }
        blocks.push((REQUESTS, text));

        let mut text = header(
            REQUEST_DURATION,
            "Time to serve a client request, in seconds, by route.",
            "histogram",
        );
        for (route, h) in snapshot(&self.request_durations, Histogram::snapshot) {
            histogram_samples(&mut text, REQUEST_DURATION, ("route", route), &h)?;
        }
        blocks.push((REQUEST_DURATION, text));

        let hosts = snapshot(&self.fragments, |series| {
            (
                snapshot(&series.fetches, load),
                series.duration.snapshot(),
                load(&series.bytes),
            )
        });
        let mut fetches = header(
            FRAGMENT_FETCHES,
            "Fragment fetches finished, by fragment host and outcome.",
            "counter",
        );
        let mut durations = header(
            FRAGMENT_DURATION,
            "Time to fetch one fragment, in seconds, by fragment host.",
            "histogram",
        );
        let mut bytes = header(
            FRAGMENT_BYTES,
            "Fragment body bytes received, by fragment host.",
            "counter",
        );
        for (host, (outcomes, h, n)) in &hosts {
            for (outcome, count) in outcomes {
                let labels = [("host", host.as_str()), ("outcome", outcome.as_str())];
                sample(&mut fetches, FRAGMENT_FETCHES, &labels, count)?;
            }
            histogram_samples(
                &mut durations,
                FRAGMENT_DURATION,
                ("host", host.as_str()),
                h,
            )?;
            sample(&mut bytes, FRAGMENT_BYTES, &[("host", host.as_str())], n)?;
        }
        blocks.push((FRAGMENT_FETCHES, fetches));
        blocks.push((FRAGMENT_DURATION, durations));
        blocks.push((FRAGMENT_BYTES, bytes));

        let mut text = header(
            FRAGMENT_FAILURES,
            "Fragment fetches that failed, by failure kind.",
            "counter",
        );
        for (kind, n) in snapshot(&self.failures, load) {
            sample(&mut text, FRAGMENT_FAILURES, &[("kind", kind.as_str())], n)?;
        }
        blocks.push((FRAGMENT_FAILURES, text));

        let mut text = header(
            FALLBACKS,
            "Fallbacks used in place of a fragment, by kind.",
            "counter",
        );
        for (kind, n) in snapshot(&self.fallbacks, load) {
            sample(&mut text, FALLBACKS, &[("kind", kind)], n)?;
        }
        blocks.push((FALLBACKS, text));

        let mut text = header(
            RESPONSE_BYTES,
            "Body bytes sent to clients, by route.",
            "counter",
        );
        for (route, n) in snapshot(&self.response_bytes, load) {
            sample(&mut text, RESPONSE_BYTES, &[("route", route)], n)?;
        }
        blocks.push((RESPONSE_BYTES, text));

        let mut text = header(PAGES_IN_FLIGHT, "Pages being composed right now.", "gauge");
        sample(
            &mut text,
            PAGES_IN_FLIGHT,
            &[],
            self.in_flight.load(Relaxed),
        )?;
        blocks.push((PAGES_IN_FLIGHT, text));

        let mut text = header(
            ESI_PROBLEMS,
            "ESI markup problems met in lenient mode.",
            "counter",
        );
        sample(&mut text, ESI_PROBLEMS, &[], load(&self.esi_problems))?;
        blocks.push((ESI_PROBLEMS, text));
        Ok(())
    }

    fn render_custom(&self, blocks: &mut Vec<(&'static str, String)>) -> fmt::Result {
        for (name, custom) in read(&self.custom).iter() {
            match &custom.kind {
                CustomKind::Counter(series) => {
                    let mut text = header(name, custom.help, "counter");
                    for (label, n) in snapshot(series, load) {
                        match &label {
                            Some((k, v)) => sample(&mut text, name, &[(*k, v.as_str())], n)?,
                            None => sample(&mut text, name, &[], n)?,
                        }
                    }
                    blocks.push((*name, text));
                }
                CustomKind::Gauge(bits) => {
                    let mut text = header(name, custom.help, "gauge");
                    let value = Float(f64::from_bits(bits.load(Relaxed)));
                    sample(&mut text, name, &[], value)?;
                    blocks.push((*name, text));
                }
                CustomKind::Rejected => {}
            }
        }
        Ok(())
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

    fn snapshot(&self) -> HistogramSnapshot {
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

// === Server-Timing ===

/// The `Server-Timing` header value for a composed page, one entry per `(name, milliseconds,
/// description)`, e.g. `layout;dur=12.3, compose;dur=45.6;desc="120 fragments"`.
///
/// Never fails: names are made into tokens (other characters become `_`, an empty name is `_`,
/// at most 64 chars); a negative time is written as 0 and a non-finite one is left out;
/// descriptions are quoted and escaped (control characters become spaces, non-ASCII `?`, at most
/// 256 chars); entries that would take the value past 4096 bytes are dropped whole.
pub fn server_timing(entries: &[(&str, f64, Option<&str>)]) -> HeaderValue {
    let mut out = String::new();
    let mut entry = String::new();
    for (name, ms, desc) in entries {
        entry.clear();
        if !out.is_empty() {
            entry.push_str(", ");
        }
        push_token(&mut entry, name);
        if ms.is_finite() {
            entry.push_str(";dur=");
            push_ms(&mut entry, *ms);
        }
        if let Some(desc) = desc {
            entry.push_str(";desc=\"");
            push_quoted(&mut entry, desc);
            entry.push('"');
        }
        if out.len() + entry.len() > MAX_TIMING_BYTES {
            break;
        }
        out.push_str(&entry);
    }
    // Only visible ASCII was written, so this cannot fail; an empty value is the safe fallback.
    HeaderValue::from_str(&out).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// `name` as an RFC 9110 token.
fn push_token(out: &mut String, name: &str) {
    if name.is_empty() {
        out.push('_');
    }
    for c in name.chars().take(MAX_TIMING_NAME_CHARS) {
        out.push(if is_tchar(c) { c } else { '_' });
    }
}

fn is_tchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

/// Milliseconds with up to three decimals and no trailing zeros: `12.3`, `7`, `0.042`.
fn push_ms(out: &mut String, ms: f64) {
    let ms = ms.clamp(0.0, MAX_TIMING_MS);
    let text = format!("{ms:.3}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    out.push_str(text);
}

/// The inside of an RFC 9110 quoted-string.
fn push_quoted(out: &mut String, desc: &str) {
    for c in desc.chars().take(MAX_TIMING_DESC_CHARS) {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '\t' | ' '..='~' => out.push(c),
            c if c.is_ascii() => out.push(' '),
            _ => out.push('?'),
        }
    }
}

// === helpers ===

/// A read guard that survives poisoning: the maps hold atomics, so they are consistent even if
/// a holder panicked.
fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
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
fn snapshot<K, V, S>(map: &RwLock<HashMap<K, V>>, f: impl Fn(&V) -> S) -> Vec<(K, S)>
where
    K: Clone + Ord,
{
    let mut rows: Vec<(K, S)> = read(map).iter().map(|(k, v)| (k.clone(), f(v))).collect();
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    rows
}

fn load(n: &AtomicU64) -> u64 {
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
fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`, not starting with the reserved `__`.
fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with("__")
}

/// The `# HELP` and `# TYPE` lines of a family.
fn header(name: &str, help: &str, kind: &str) -> String {
    let mut out = String::with_capacity(128);
    out.push_str("# HELP ");
    out.push_str(name);
    out.push(' ');
    for c in help.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push_str("\n# TYPE ");
    out.push_str(name);
    out.push(' ');
    out.push_str(kind);
    out.push('\n');
    out
}

/// One sample line: `name{label="value",...} value`.
fn sample(
    out: &mut String,
    name: &str,
    labels: &[(&str, &str)],
    value: impl Display,
) -> fmt::Result {
    out.push_str(name);
    push_labels(out, labels);
    writeln!(out, " {value}")
}

fn push_labels(out: &mut String, labels: &[(&str, &str)]) {
    if labels.is_empty() {
        return;
    }
    out.push('{');
    for (i, (name, value)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(name);
        out.push_str("=\"");
        for c in value.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push('}');
}

/// The `_bucket` (cumulative, `le` ascending, then `+Inf`), `_sum` and `_count` lines of one
/// histogram series.
fn histogram_samples(
    out: &mut String,
    name: &str,
    label: (&str, &str),
    h: &HistogramSnapshot,
) -> fmt::Result {
    let bucket = format!("{name}_bucket");
    let mut cumulative = 0u64;
    let bounds = DURATION_BUCKETS.iter().map(|b| b.to_string());
    for (le, n) in bounds.chain(Some("+Inf".to_owned())).zip(h.buckets) {
        cumulative = cumulative.saturating_add(n);
        sample(out, &bucket, &[label, ("le", le.as_str())], cumulative)?;
    }
    sample(out, &format!("{name}_sum"), &[label], Float(h.sum))?;
    sample(out, &format!("{name}_count"), &[label], cumulative)
}

// === impl Float ===

impl Display for Float {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            v if v.is_nan() => f.write_str("NaN"),
            v if v == f64::INFINITY => f.write_str("+Inf"),
            v if v == f64::NEG_INFINITY => f.write_str("-Inf"),
            v => write!(f, "{v}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::*;

    /// Everything recorded once, rendered: counters, cumulative buckets, `_sum`/`_count`, label
    /// escaping, custom families sorted among the built-in ones.
    const FULL: &str = r#"# HELP esi_proxy_cache_hits_total Fragment cache hits.
# TYPE esi_proxy_cache_hits_total counter
esi_proxy_cache_hits_total{cache="fragment"} 2
esi_proxy_cache_hits_total{cache="template"} 1
# HELP esi_proxy_config_generation Config reloads applied.
# TYPE esi_proxy_config_generation gauge
esi_proxy_config_generation 4
# HELP esi_proxy_esi_problems_total ESI markup problems met in lenient mode.
# TYPE esi_proxy_esi_problems_total counter
esi_proxy_esi_problems_total 3
# HELP esi_proxy_fallbacks_total Fallbacks used in place of a fragment, by kind.
# TYPE esi_proxy_fallbacks_total counter
esi_proxy_fallbacks_total{kind="alt"} 2
esi_proxy_fallbacks_total{kind="except"} 1
# HELP esi_proxy_fragment_bytes_total Fragment body bytes received, by fragment host.
# TYPE esi_proxy_fragment_bytes_total counter
esi_proxy_fragment_bytes_total{host="a.test:80"} 100
esi_proxy_fragment_bytes_total{host="b\"q\\\n:1"} 7
# HELP esi_proxy_fragment_duration_seconds Time to fetch one fragment, in seconds, by fragment host.
# TYPE esi_proxy_fragment_duration_seconds histogram
esi_proxy_fragment_duration_seconds_bucket{host="a.test:80",le="0.005"} 1
esi_proxy_fragment_duration_seconds_bucket{host="a.test:80",le="0.01"} 1
esi_proxy_fragment_duration_seconds_bucket{host="a.test:80",le="0.025"} 1
esi_proxy_fragment_duration_seconds_bucket{host="a.test:80",le="0.05"} 1
esi_proxy_fragment_duration_seconds_bucket{host="a.test:80",le="0.1"} 1
esi_proxy_fragment_duration_seconds_bucket{host="a.test:80",le="0.25"} 1
esi_proxy_fragment_duration_seconds_bucket{host="a.test:80",le="0.5"} 1
esi_proxy_fragment_duration_seconds_bucket{host="a.test:80",le="1"} 1
esi_proxy_fragment_duration_seconds_bucket{host="a.test:80",le="2.5"} 2
esi_proxy_fragment_duration_seconds_bucket{host="a.test:80",le="5"} 2
esi_proxy_fragment_duration_seconds_bucket{host="a.test:80",le="10"} 2
esi_proxy_fragment_duration_seconds_bucket{host="a.test:80",le="+Inf"} 2
esi_proxy_fragment_duration_seconds_sum{host="a.test:80"} 2.00390625
esi_proxy_fragment_duration_seconds_count{host="a.test:80"} 2
esi_proxy_fragment_duration_seconds_bucket{host="b\"q\\\n:1",le="0.005"} 0
esi_proxy_fragment_duration_seconds_bucket{host="b\"q\\\n:1",le="0.01"} 1
esi_proxy_fragment_duration_seconds_bucket{host="b\"q\\\n:1",le="0.025"} 1
esi_proxy_fragment_duration_seconds_bucket{host="b\"q\\\n:1",le="0.05"} 1
esi_proxy_fragment_duration_seconds_bucket{host="b\"q\\\n:1",le="0.1"} 1
esi_proxy_fragment_duration_seconds_bucket{host="b\"q\\\n:1",le="0.25"} 1
esi_proxy_fragment_duration_seconds_bucket{host="b\"q\\\n:1",le="0.5"} 1
esi_proxy_fragment_duration_seconds_bucket{host="b\"q\\\n:1",le="1"} 1
esi_proxy_fragment_duration_seconds_bucket{host="b\"q\\\n:1",le="2.5"} 1
esi_proxy_fragment_duration_seconds_bucket{host="b\"q\\\n:1",le="5"} 1
esi_proxy_fragment_duration_seconds_bucket{host="b\"q\\\n:1",le="10"} 1
esi_proxy_fragment_duration_seconds_bucket{host="b\"q\\\n:1",le="+Inf"} 1
esi_proxy_fragment_duration_seconds_sum{host="b\"q\\\n:1"} 0.0078125
esi_proxy_fragment_duration_seconds_count{host="b\"q\\\n:1"} 1
# HELP esi_proxy_fragment_failures_total Fragment fetches that failed, by failure kind.
# TYPE esi_proxy_fragment_failures_total counter
esi_proxy_fragment_failures_total{kind="timeout"} 1
# HELP esi_proxy_fragment_fetches_total Fragment fetches finished, by fragment host and outcome.
# TYPE esi_proxy_fragment_fetches_total counter
esi_proxy_fragment_fetches_total{host="a.test:80",outcome="ok"} 1
esi_proxy_fragment_fetches_total{host="a.test:80",outcome="timeout"} 1
esi_proxy_fragment_fetches_total{host="b\"q\\\n:1",outcome="ok"} 1
# HELP esi_proxy_pages_in_flight Pages being composed right now.
# TYPE esi_proxy_pages_in_flight gauge
esi_proxy_pages_in_flight 1
# HELP esi_proxy_request_duration_seconds Time to serve a client request, in seconds, by route.
# TYPE esi_proxy_request_duration_seconds histogram
esi_proxy_request_duration_seconds_bucket{route="esi",le="0.005"} 0
esi_proxy_request_duration_seconds_bucket{route="esi",le="0.01"} 0
esi_proxy_request_duration_seconds_bucket{route="esi",le="0.025"} 0
esi_proxy_request_duration_seconds_bucket{route="esi",le="0.05"} 0
esi_proxy_request_duration_seconds_bucket{route="esi",le="0.1"} 1
esi_proxy_request_duration_seconds_bucket{route="esi",le="0.25"} 2
esi_proxy_request_duration_seconds_bucket{route="esi",le="0.5"} 2
esi_proxy_request_duration_seconds_bucket{route="esi",le="1"} 2
esi_proxy_request_duration_seconds_bucket{route="esi",le="2.5"} 2
esi_proxy_request_duration_seconds_bucket{route="esi",le="5"} 2
esi_proxy_request_duration_seconds_bucket{route="esi",le="10"} 2
esi_proxy_request_duration_seconds_bucket{route="esi",le="+Inf"} 2
esi_proxy_request_duration_seconds_sum{route="esi"} 0.3125
esi_proxy_request_duration_seconds_count{route="esi"} 2
esi_proxy_request_duration_seconds_bucket{route="proxy",le="0.005"} 0
esi_proxy_request_duration_seconds_bucket{route="proxy",le="0.01"} 0
esi_proxy_request_duration_seconds_bucket{route="proxy",le="0.025"} 0
esi_proxy_request_duration_seconds_bucket{route="proxy",le="0.05"} 0
esi_proxy_request_duration_seconds_bucket{route="proxy",le="0.1"} 0
esi_proxy_request_duration_seconds_bucket{route="proxy",le="0.25"} 0
esi_proxy_request_duration_seconds_bucket{route="proxy",le="0.5"} 0
esi_proxy_request_duration_seconds_bucket{route="proxy",le="1"} 0
esi_proxy_request_duration_seconds_bucket{route="proxy",le="2.5"} 0
esi_proxy_request_duration_seconds_bucket{route="proxy",le="5"} 0
esi_proxy_request_duration_seconds_bucket{route="proxy",le="10"} 0
esi_proxy_request_duration_seconds_bucket{route="proxy",le="+Inf"} 1
esi_proxy_request_duration_seconds_sum{route="proxy"} 12
esi_proxy_request_duration_seconds_count{route="proxy"} 1
# HELP esi_proxy_requests_total Client requests finished, by route (esi, proxy, admin) and HTTP status sent.
# TYPE esi_proxy_requests_total counter
esi_proxy_requests_total{route="esi",status="200"} 2
esi_proxy_requests_total{route="proxy",status="404"} 1
# HELP esi_proxy_response_bytes_total Body bytes sent to clients, by route.
# TYPE esi_proxy_response_bytes_total counter
esi_proxy_response_bytes_total{route="esi"} 1234
esi_proxy_response_bytes_total{route="proxy"} 10
"#;

    /// Nothing recorded yet: every built-in family is announced, unlabelled ones read 0.
    const EMPTY: &str = "\
# HELP esi_proxy_esi_problems_total ESI markup problems met in lenient mode.
# TYPE esi_proxy_esi_problems_total counter
esi_proxy_esi_problems_total 0
# HELP esi_proxy_fallbacks_total Fallbacks used in place of a fragment, by kind.
# TYPE esi_proxy_fallbacks_total counter
# HELP esi_proxy_fragment_bytes_total Fragment body bytes received, by fragment host.
# TYPE esi_proxy_fragment_bytes_total counter
# HELP esi_proxy_fragment_duration_seconds Time to fetch one fragment, in seconds, by fragment host.
# TYPE esi_proxy_fragment_duration_seconds histogram
# HELP esi_proxy_fragment_failures_total Fragment fetches that failed, by failure kind.
# TYPE esi_proxy_fragment_failures_total counter
# HELP esi_proxy_fragment_fetches_total Fragment fetches finished, by fragment host and outcome.
# TYPE esi_proxy_fragment_fetches_total counter
# HELP esi_proxy_pages_in_flight Pages being composed right now.
# TYPE esi_proxy_pages_in_flight gauge
esi_proxy_pages_in_flight 0
# HELP esi_proxy_request_duration_seconds Time to serve a client request, in seconds, by route.
# TYPE esi_proxy_request_duration_seconds histogram
# HELP esi_proxy_requests_total Client requests finished, by route (esi, proxy, admin) and HTTP status sent.
# TYPE esi_proxy_requests_total counter
# HELP esi_proxy_response_bytes_total Body bytes sent to clients, by route.
# TYPE esi_proxy_response_bytes_total counter
";

    /// Records into a fresh registry for one case.
    type Record = fn(&Metrics);

    fn record_everything(m: &Metrics) {
        m.record_request("proxy", 404, 12.0);
        m.record_request("esi", 200, 0.0625);
        m.record_request("esi", 200, 0.25);
        m.record_fragment("a.test:80", "ok", 0.003_906_25, 100);
        m.record_fragment("a.test:80", "timeout", 2.0, 0);
        m.record_fragment("b\"q\\\n:1", "ok", 0.007_812_5, 7);
        m.record_fallback("alt");
        m.record_fallback("except");
        m.record_fallback("alt");
        m.add_bytes_out("esi", 1000);
        m.add_bytes_out("proxy", 10);
        m.add_bytes_out("esi", 234);
        m.pages_in_flight(2);
        m.pages_in_flight(-1);
        m.add_esi_problems(3);
        let hits = "esi_proxy_cache_hits_total";
        m.inc_counter(hits, "Fragment cache hits.", Some(("cache", "template")), 1);
        m.inc_counter(
            hits,
            "Later help is ignored.",
            Some(("cache", "fragment")),
            2,
        );
        m.set_gauge(
            "esi_proxy_config_generation",
            "Config reloads applied.",
            3.0,
        );
        m.set_gauge(
            "esi_proxy_config_generation",
            "Config reloads applied.",
            4.0,
        );
    }

    #[test]
    fn render_exact() {
        let cases: &[(&str, Record, &str)] = &[
            ("nothing recorded", |_| {}, EMPTY),
            ("one of everything", record_everything, FULL),
        ];
        for (what, record, want) in cases {
            let m = Metrics::new();
            record(&m);
            let got = m.render();
            assert_eq!(got, *want, "case: {what}");
            if let Err(e) = parse_exposition(&got) {
                panic!("case {what}: {e}");
            }
        }
    }

    /// The sample lines (no comments) of one family, histogram series included.
    fn samples_of(text: &str, family: &str) -> String {
        text.lines()
            .filter(|line| !line.starts_with('#'))
            .filter(|line| {
                let name = line.split(['{', ' ']).next().unwrap_or_default();
                let stem = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .unwrap_or(name);
                name == family || stem == family
            })
            .map(|line| format!("{line}\n"))
            .collect()
    }

    #[test]
    fn render_families() {
        let cases: &[(&str, Record, &str, &str)] = &[
            (
                "failures count every outcome but ok",
                |m| {
                    for outcome in ["ok", "timeout", "status", "timeout", "ok"] {
                        m.record_fragment("h:1", outcome, 0.1, 1);
                    }
                },
                FRAGMENT_FAILURES,
                "esi_proxy_fragment_failures_total{kind=\"status\"} 1\n\
                 esi_proxy_fragment_failures_total{kind=\"timeout\"} 2\n",
            ),
            (
                "label values are escaped",
                |m| m.record_fragment("x\"y\\z\nw", "ok", 0.0, 5),
                FRAGMENT_BYTES,
                "esi_proxy_fragment_bytes_total{host=\"x\\\"y\\\\z\\nw\"} 5\n",
            ),
            (
                "requests sort by route, then status as a number",
                |m| {
                    for (route, status) in [("proxy", 404), ("esi", 502), ("esi", 200), ("esi", 99)]
                    {
                        m.record_request(route, status, 0.1);
                    }
                },
                REQUESTS,
                "esi_proxy_requests_total{route=\"esi\",status=\"99\"} 1\n\
                 esi_proxy_requests_total{route=\"esi\",status=\"200\"} 1\n\
                 esi_proxy_requests_total{route=\"esi\",status=\"502\"} 1\n\
                 esi_proxy_requests_total{route=\"proxy\",status=\"404\"} 1\n",
            ),
            (
                "le is inclusive; bad durations count as zero",
                |m| {
                    for seconds in [10.0, 10.5, 0.005, f64::NAN, -1.0, f64::INFINITY] {
                        m.record_request("admin", 200, seconds);
                    }
                },
                REQUEST_DURATION,
                "esi_proxy_request_duration_seconds_bucket{route=\"admin\",le=\"0.005\"} 4\n\
                 esi_proxy_request_duration_seconds_bucket{route=\"admin\",le=\"0.01\"} 4\n\
                 esi_proxy_request_duration_seconds_bucket{route=\"admin\",le=\"0.025\"} 4\n\
                 esi_proxy_request_duration_seconds_bucket{route=\"admin\",le=\"0.05\"} 4\n\
                 esi_proxy_request_duration_seconds_bucket{route=\"admin\",le=\"0.1\"} 4\n\
                 esi_proxy_request_duration_seconds_bucket{route=\"admin\",le=\"0.25\"} 4\n\
                 esi_proxy_request_duration_seconds_bucket{route=\"admin\",le=\"0.5\"} 4\n\
                 esi_proxy_request_duration_seconds_bucket{route=\"admin\",le=\"1\"} 4\n\
                 esi_proxy_request_duration_seconds_bucket{route=\"admin\",le=\"2.5\"} 4\n\
                 esi_proxy_request_duration_seconds_bucket{route=\"admin\",le=\"5\"} 4\n\
                 esi_proxy_request_duration_seconds_bucket{route=\"admin\",le=\"10\"} 5\n\
                 esi_proxy_request_duration_seconds_bucket{route=\"admin\",le=\"+Inf\"} 6\n\
                 esi_proxy_request_duration_seconds_sum{route=\"admin\"} 20.505\n\
                 esi_proxy_request_duration_seconds_count{route=\"admin\"} 6\n",
            ),
            (
                "pages in flight go up and down",
                |m| {
                    for delta in [1, 1, -1, 5, -5] {
                        m.pages_in_flight(delta);
                    }
                },
                PAGES_IN_FLIGHT,
                "esi_proxy_pages_in_flight 1\n",
            ),
            (
                "unlabelled custom counter",
                |m| {
                    m.inc_counter("esi_proxy_reloads_total", "Reloads.", None, 1);
                    m.inc_counter("esi_proxy_reloads_total", "Reloads.", None, 2);
                },
                "esi_proxy_reloads_total",
                "esi_proxy_reloads_total 3\n",
            ),
            (
                "a name keeps its first type",
                |m| {
                    m.set_gauge("esi_proxy_cache_entries", "Entries.", 7.5);
                    m.inc_counter("esi_proxy_cache_entries", "Entries.", None, 1);
                },
                "esi_proxy_cache_entries",
                "esi_proxy_cache_entries 7.5\n",
            ),
            (
                "a bad label name drops the update",
                |m| {
                    m.inc_counter("esi_proxy_hits_total", "Hits.", None, 1);
                    m.inc_counter("esi_proxy_hits_total", "Hits.", Some(("bad-name", "x")), 1);
                    m.inc_counter(
                        "esi_proxy_hits_total",
                        "Hits.",
                        Some(("__reserved", "x")),
                        1,
                    );
                    m.inc_counter("esi_proxy_hits_total", "Hits.", Some(("kind", "a\"b")), 4);
                },
                "esi_proxy_hits_total",
                "esi_proxy_hits_total 1\nesi_proxy_hits_total{kind=\"a\\\"b\"} 4\n",
            ),
            (
                "gauges write NaN and infinities as Prometheus does",
                |m| {
                    m.set_gauge("g_nan", "NaN.", f64::NAN);
                    m.set_gauge("g_inf", "Inf.", f64::INFINITY);
                    m.set_gauge("g_neg", "Neg.", f64::NEG_INFINITY);
                    m.set_gauge("g_small", "Small.", -0.25);
                },
                "g_nan",
                "g_nan NaN\n",
            ),
        ];
        for (what, record, family, want) in cases {
            let m = Metrics::new();
            record(&m);
            let text = m.render();
            assert_eq!(samples_of(&text, family), *want, "case: {what}");
            if let Err(e) = parse_exposition(&text) {
                panic!("case {what}: {e}");
            }
        }
    }

    #[test]
    fn float_values() {
        for (value, want) in [
            (f64::NAN, "NaN"),
            (f64::INFINITY, "+Inf"),
            (f64::NEG_INFINITY, "-Inf"),
            (-0.25, "-0.25"),
            (4.0, "4"),
            (0.005, "0.005"),
            (1e-7, "0.0000001"),
        ] {
            assert_eq!(Float(value).to_string(), want, "value: {value}");
        }
    }

    #[test]
    fn rejected_custom_names_render_nothing() {
        for name in [
            "",
            "bad name",
            "9starts_with_digit",
            "dash-ed",
            "esi_proxy_requests_total",
            "esi_proxy_request_duration_seconds_bucket",
            "esi_proxy_pages_in_flight",
        ] {
            let m = Metrics::new();
            m.inc_counter(name, "Rejected.", None, 1);
            m.set_gauge(name, "Rejected.", 1.0);
            assert_eq!(m.render(), EMPTY, "name: {name:?}");
        }
    }

    #[test]
    fn concurrent_updates_sum() {
        const THREADS: u64 = 8;
        const EACH: u64 = 2000;
        let m = Metrics::new();
        std::thread::scope(|s| {
            for t in 0..THREADS {
                let m = &m;
                s.spawn(move || {
                    for i in 0..EACH {
                        m.pages_in_flight(1);
                        let host = format!("h{}:80", (t + i) % 5);
                        let outcome = if i % 4 == 0 { "timeout" } else { "ok" };
                        m.record_fragment(&host, outcome, 0.5, 3);
                        m.record_request("esi", 200, 0.25);
                        m.add_bytes_out("esi", 2);
                        m.record_fallback("alt");
                        m.add_esi_problems(1);
                        let label = if i % 2 == 0 { "even" } else { "odd" };
                        m.inc_counter("esi_proxy_t_total", "T.", Some(("k", label)), 1);
                        m.pages_in_flight(-1);
                    }
                });
            }
        });
        let samples = parse_exposition(&m.render()).unwrap_or_else(|e| panic!("{e}"));
        let sum = |name: &str| -> f64 {
            samples
                .iter()
                .filter(|s| s.name == name)
                .map(|s| s.value)
                .sum()
        };
        let total = (THREADS * EACH) as f64;
        let cases = [
            ("esi_proxy_requests_total", total),
            ("esi_proxy_request_duration_seconds_count", total),
            ("esi_proxy_request_duration_seconds_sum", total * 0.25),
            ("esi_proxy_fragment_fetches_total", total),
            ("esi_proxy_fragment_failures_total", total / 4.0),
            ("esi_proxy_fragment_duration_seconds_count", total),
            ("esi_proxy_fragment_duration_seconds_sum", total * 0.5),
            ("esi_proxy_fragment_bytes_total", total * 3.0),
            ("esi_proxy_response_bytes_total", total * 2.0),
            ("esi_proxy_fallbacks_total", total),
            ("esi_proxy_esi_problems_total", total),
            ("esi_proxy_t_total", total),
            ("esi_proxy_pages_in_flight", 0.0),
        ];
        for (name, want) in cases {
            assert_eq!(sum(name), want, "metric: {name}");
        }
    }

    #[test]
    fn label_sets_are_bounded() {
        let m = Metrics::new();
        for i in 0..MAX_HOST_LABELS + 500 {
            m.record_fragment(&format!("host{i}.test:80"), "ok", 0.1, 1);
        }
        for i in 0..MAX_KIND_LABELS + 10 {
            m.record_fragment("host0.test:80", &format!("kind{i}"), 0.1, 0);
        }
        for i in 0..MAX_HOST_LABELS + 5 {
            m.inc_counter("esi_proxy_x_total", "X.", Some(("v", &i.to_string())), 1);
        }
        let samples = parse_exposition(&m.render()).unwrap_or_else(|e| panic!("{e}"));
        let series = |name: &str, label: &str, value: &str| -> Vec<f64> {
            samples
                .iter()
                .filter(|s| s.name == name && s.label(label) == Some(value))
                .map(|s| s.value)
                .collect()
        };
        let count = |name: &str| samples.iter().filter(|s| s.name == name).count();
        let cases: [(&str, usize, &str, &str, Vec<f64>); 4] = [
            (
                FRAGMENT_BYTES,
                MAX_HOST_LABELS + 1,
                "host",
                "other",
                vec![500.0],
            ),
            (
                "esi_proxy_fragment_duration_seconds_count",
                MAX_HOST_LABELS + 1,
                "host",
                "other",
                vec![500.0],
            ),
            (
                FRAGMENT_FAILURES,
                MAX_KIND_LABELS + 1,
                "kind",
                "other",
                vec![10.0],
            ),
            (
                "esi_proxy_x_total",
                MAX_HOST_LABELS + 1,
                "v",
                "other",
                vec![5.0],
            ),
        ];
        for (name, want_series, label, overflow, want) in cases {
            assert_eq!(count(name), want_series, "series of {name}");
            assert_eq!(series(name, label, overflow), want, "overflow of {name}");
        }
        // One host keeps at most MAX_KIND_LABELS outcomes plus "other".
        let outcomes = samples
            .iter()
            .filter(|s| s.name == FRAGMENT_FETCHES && s.label("host") == Some("host0.test:80"))
            .count();
        assert_eq!(outcomes, MAX_KIND_LABELS + 1);
    }

    #[test]
    fn hostile_labels_round_trip() {
        let long = "é".repeat(200);
        let cases: &[(&str, &str)] = &[
            ("", ""),
            ("a\"b", "a\"b"),
            ("back\\slash", "back\\slash"),
            ("new\nline", "new\nline"),
            ("tab\tthere", "tab\tthere"),
            ("{}=,", "{}=,"),
            ("uni✓code", "uni✓code"),
            ("\\n", "\\n"),
            (&long, &long[..256]),
        ];
        let m = Metrics::new();
        for (host, _) in cases {
            m.record_fragment(host, "ok", 0.0, 1);
        }
        let samples = parse_exposition(&m.render()).unwrap_or_else(|e| panic!("{e}"));
        let hosts: HashSet<&str> = samples
            .iter()
            .filter(|s| s.name == FRAGMENT_BYTES)
            .filter_map(|s| s.label("host"))
            .collect();
        for (host, want) in cases {
            assert!(
                hosts.contains(want),
                "host {host:?} should render as {want:?}"
            );
        }
        assert_eq!(hosts.len(), cases.len());
    }

    #[test]
    fn server_timing_values() {
        let long_name = "n".repeat(100);
        let long_desc = "d".repeat(300);
        let want_long = format!("{};desc=\"{}\"", "n".repeat(64), "d".repeat(256));
        type Entry<'a> = (&'a str, f64, Option<&'a str>);
        let cases: &[(&[Entry], &str)] = &[
            (
                &[
                    ("layout", 12.3, None),
                    ("compose", 45.6, Some("120 fragments")),
                ],
                "layout;dur=12.3, compose;dur=45.6;desc=\"120 fragments\"",
            ),
            (&[], ""),
            (&[("my name", 1.0, None)], "my_name;dur=1"),
            (
                &[("a\"b", 0.5, Some("say \"hi\" \\ bye"))],
                "a_b;dur=0.5;desc=\"say \\\"hi\\\" \\\\ bye\"",
            ),
            (&[("", 0.0, None)], "_;dur=0"),
            (&[("x", -3.0, None)], "x;dur=0"),
            (&[("x", 0.0004, None)], "x;dur=0"),
            (&[("x", 100.0, None)], "x;dur=100"),
            (&[("x", 1.234_56, None)], "x;dur=1.235"),
            (&[("x", f64::NAN, None)], "x"),
            (
                &[("x", f64::INFINITY, Some("line\nbreak\ttab"))],
                "x;desc=\"line break\ttab\"",
            ),
            (
                &[("café", 2.0, Some("naïve\u{7f}"))],
                "caf_;dur=2;desc=\"na?ve \"",
            ),
            (&[(&long_name, f64::NAN, Some(&long_desc))], &want_long),
        ];
        for (entries, want) in cases {
            let got = server_timing(entries);
            assert_eq!(got.to_str().ok(), Some(*want), "entries: {entries:?}");
        }
    }

    #[test]
    fn server_timing_is_bounded() {
        let entries: Vec<Entry> = (0..1000)
            .map(|_| ("fragment", 12.5, Some("x".repeat(50))))
            .collect();
        type Entry = (&'static str, f64, Option<String>);
        let borrowed: Vec<(&str, f64, Option<&str>)> = entries
            .iter()
            .map(|(n, ms, d)| (*n, *ms, d.as_deref()))
            .collect();
        let value = server_timing(&borrowed);
        let text = value.to_str().unwrap_or_default();
        assert!(text.len() <= MAX_TIMING_BYTES, "{} bytes", text.len());
        assert!(text.ends_with('"'), "entries are dropped whole: {text}");
        assert!(text.starts_with("fragment;dur=12.5;desc=\""));
    }

    #[test]
    fn filters() {
        let cases: &[(Option<&str>, &str, Option<&str>)] = &[
            (None, "info", None),
            (None, "esi_proxy=debug,hyper=warn", None),
            (Some(""), "info", None),
            (Some("  "), "info", None),
            (Some("esi_proxy=trace"), "info", None),
            (None, "foo=notalevel", Some("default filter")),
            (Some("foo=notalevel"), "info", Some("RUST_LOG")),
            (Some("debug"), "foo=notalevel", Some("default filter")),
        ];
        for (env, default, want_err) in cases {
            let got = build_filter(*env, default);
            let origin = match &got {
                Err(TelemetryError::BadFilter { origin, .. }) => Some(*origin),
                Err(TelemetryError::FilterNotUnicode) => Some("not unicode"),
                Ok(_) => None,
            };
            assert_eq!(origin, *want_err, "env {env:?}, default {default:?}");
        }
    }

    #[test]
    fn init_tracing_twice() {
        // "off" keeps the other tests of this binary quiet once it is installed.
        let first = init_tracing(false, "off");
        assert!(first.is_ok(), "{first:?}");
        let second = init_tracing(true, "off");
        assert!(matches!(second, Ok(false)), "{second:?}");
        let bad = init_tracing(false, "foo=notalevel");
        assert!(
            matches!(bad, Err(TelemetryError::BadFilter { .. })),
            "{bad:?}"
        );
    }

    // === a checker for the text exposition format (0.0.4) ===

    #[test]
    fn checker_rejects_malformed_text() {
        let ok = "# TYPE a counter\na{x=\"1\"} 1\n";
        let h = "# TYPE h histogram\n";
        let cases: &[(&str, &str)] = &[
            ("no final newline", "# TYPE a counter\na 1"),
            ("sample before its TYPE", "a 1\n# TYPE a counter\n"),
            (
                "raw quote in label value",
                "# TYPE a counter\na{x=\"a\"b\"} 1\n",
            ),
            ("unknown escape", "# TYPE a counter\na{x=\"\\t\"} 1\n"),
            ("bad value", "# TYPE a counter\na 1,5\n"),
            ("duplicate series", "# TYPE a counter\na 1\na 2\n"),
            (
                "split family",
                "# TYPE a counter\n# TYPE b counter\nb 1\na 1\n",
            ),
            ("bad metric name", "# TYPE 1a counter\n"),
            (
                "missing space before value",
                "# TYPE a counter\na{x=\"1\"}1\n",
            ),
            (
                "buckets not cumulative",
                &format!(
                    "{h}h_bucket{{le=\"1\"}} 2\nh_bucket{{le=\"+Inf\"}} 1\nh_sum 1\nh_count 1\n"
                ),
            ),
            (
                "+Inf is not _count",
                &format!("{h}h_bucket{{le=\"+Inf\"}} 2\nh_sum 1\nh_count 1\n"),
            ),
            (
                "no _sum",
                &format!("{h}h_bucket{{le=\"+Inf\"}} 1\nh_count 1\n"),
            ),
        ];
        assert!(parse_exposition(ok).is_ok());
        for (what, text) in cases {
            assert!(
                parse_exposition(text).is_err(),
                "case {what} should fail: {text:?}"
            );
        }
    }

    type Labels = Vec<(String, String)>;

    #[derive(Debug)]
    struct Sample {
        name: String,
        labels: Labels,
        value: f64,
    }

    impl Sample {
        fn label(&self, name: &str) -> Option<&str> {
            self.labels
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        }
    }

    /// Parses `text` under the Prometheus text format rules and checks what a scraper relies
    /// on: `# HELP`/`# TYPE` once per family and before its samples, each family's lines
    /// together, no duplicate series, and histograms with ascending cumulative buckets ending
    /// in `+Inf` that equals `_count`, plus a `_sum`.
    fn parse_exposition(text: &str) -> Result<Vec<Sample>, String> {
        if !text.is_empty() && !text.ends_with('\n') {
            return Err("output does not end with a newline".into());
        }
        let mut types: HashMap<String, String> = HashMap::new();
        let mut helps: HashSet<String> = HashSet::new();
        let mut with_samples: HashSet<String> = HashSet::new();
        let mut closed: HashSet<String> = HashSet::new();
        let mut current: Option<String> = None;
        let mut series: HashSet<String> = HashSet::new();
        let mut samples = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let at = |problem: &str| format!("line {}: {problem}: {line:?}", i + 1);
            let family = if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, _) = rest
                    .split_once(' ')
                    .ok_or_else(|| at("HELP without text"))?;
                if !helps.insert(name.to_owned()) {
                    return Err(at("second HELP"));
                }
                name.to_owned()
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest
                    .split_once(' ')
                    .ok_or_else(|| at("TYPE without type"))?;
                if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                    return Err(at("unknown type"));
                }
                if with_samples.contains(name) {
                    return Err(at("TYPE after samples"));
                }
                if types.insert(name.to_owned(), kind.to_owned()).is_some() {
                    return Err(at("second TYPE"));
                }
                name.to_owned()
            } else if line.starts_with('#') {
                continue;
            } else {
                let sample = parse_sample(line).map_err(|e| at(&e))?;
                let stem = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| sample.name.strip_suffix(s))
                    .filter(|stem| types.get(*stem).map(String::as_str) == Some("histogram"));
                let family = stem.unwrap_or(&sample.name).to_owned();
                if !types.contains_key(&family) {
                    return Err(at("sample before its TYPE"));
                }
                let key = format!("{}{:?}", sample.name, sample.labels);
                if !series.insert(key) {
                    return Err(at("duplicate series"));
                }
                with_samples.insert(family.clone());
                samples.push(sample);
                family
            };
            if !is_metric_name(&family) {
                return Err(at("bad metric name"));
            }
            if current.as_deref() != Some(family.as_str()) {
                if closed.contains(&family) {
                    return Err(at("family lines are not together"));
                }
                if let Some(done) = current.replace(family) {
                    closed.insert(done);
                }
            }
        }
        check_histograms(&samples, &types)?;
        Ok(samples)
    }

    fn parse_sample(line: &str) -> Result<Sample, String> {
        let end = line.find(['{', ' ']).ok_or("no value")?;
        let (name, mut rest) = line.split_at(end);
        if !is_metric_name(name) {
            return Err("bad metric name".into());
        }
        let mut labels: Vec<(String, String)> = Vec::new();
        if let Some(after) = rest.strip_prefix('{') {
            rest = after;
            loop {
                if let Some(after) = rest.strip_prefix('}') {
                    rest = after;
                    break;
                }
                let (label, after) = rest.split_once("=\"").ok_or("label without =\"")?;
                if !is_label_name(label) || labels.iter().any(|(k, _)| k == label) {
                    return Err(format!("bad or repeated label name {label:?}"));
                }
                let mut value = String::new();
                let mut chars = after.char_indices();
                let close = loop {
                    match chars.next().ok_or("unterminated label value")? {
                        (i, '"') => break i,
                        (_, '\\') => match chars.next().ok_or("dangling escape")?.1 {
                            '\\' => value.push('\\'),
                            '"' => value.push('"'),
                            'n' => value.push('\n'),
                            c => return Err(format!("bad escape \\{c}")),
                        },
                        (_, '\n') => return Err("raw newline in label value".into()),
                        (_, c) => value.push(c),
                    }
                };
                labels.push((label.to_owned(), value));
                rest = after.get(close + 1..).ok_or("cut label")?;
                if let Some(after) = rest.strip_prefix(',') {
                    rest = after;
                } else if !rest.starts_with('}') {
                    return Err("labels not separated by ,".into());
                }
            }
        }
        let rest = rest.strip_prefix(' ').ok_or("no space before value")?;
        let mut fields = rest.split(' ');
        let value = parse_value(fields.next().unwrap_or_default())?;
        if let Some(timestamp) = fields.next() {
            timestamp.parse::<i64>().map_err(|_| "bad timestamp")?;
        }
        if fields.next().is_some() {
            return Err("trailing fields".into());
        }
        Ok(Sample {
            name: name.to_owned(),
            labels,
            value,
        })
    }

    fn parse_value(text: &str) -> Result<f64, String> {
        match text {
            "NaN" => Ok(f64::NAN),
            "+Inf" => Ok(f64::INFINITY),
            "-Inf" => Ok(f64::NEG_INFINITY),
            _ if text
                .chars()
                .all(|c| c.is_ascii_digit() || "+-.eE".contains(c)) =>
            {
                text.parse().map_err(|_| format!("bad value {text:?}"))
            }
            _ => Err(format!("bad value {text:?}")),
        }
    }

    fn check_histograms(samples: &[Sample], types: &HashMap<String, String>) -> Result<(), String> {
        let histograms = types.iter().filter(|(_, kind)| *kind == "histogram");
        for (name, _) in histograms {
            let series_key = |s: &Sample| -> Labels {
                s.labels
                    .iter()
                    .filter(|(k, _)| k != "le")
                    .cloned()
                    .collect()
            };
            let bucket = format!("{name}_bucket");
            let mut buckets: Vec<(Labels, Vec<(f64, f64)>)> = Vec::new();
            for s in samples.iter().filter(|s| s.name == bucket) {
                let le = parse_value(s.label("le").ok_or("bucket without le")?)?;
                let key = series_key(s);
                match buckets.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, list)) => list.push((le, s.value)),
                    None => buckets.push((key, vec![(le, s.value)])),
                }
            }
            for (key, list) in &buckets {
                let ascending = list.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1);
                if !ascending {
                    return Err(format!("{name}{key:?}: buckets not cumulative ascending"));
                }
                let last = list.last().ok_or("no buckets")?;
                let find = |suffix: &str| {
                    samples
                        .iter()
                        .find(|s| s.name == format!("{name}{suffix}") && s.labels == *key)
                        .map(|s| s.value)
                };
                if last.0 != f64::INFINITY || find("_count") != Some(last.1) {
                    return Err(format!("{name}{key:?}: +Inf bucket is not _count"));
                }
                if find("_sum").is_none() {
                    return Err(format!("{name}{key:?}: no _sum"));
                }
            }
        }
        Ok(())
    }
}
