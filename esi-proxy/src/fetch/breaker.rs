//! Circuit breakers per fragment host (`host:port`): consecutive failures open a host's
//! breaker, its fetches then fail at once without connecting, and after the open time one
//! probe decides whether it closes. The state machine, its clock and its metrics; it never
//! sends a request itself.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

use url::Url;

use super::{FetchError, Fragment};
use crate::config::{BreakerSettings, Settings};
use crate::telemetry::Metrics;

const STATE: &str = "esi_proxy_breaker_state";
const STATE_HELP: &str = "Circuit breaker of a fragment host: 0 closed, 1 open, 2 half-open.";
const OPENS: &str = "esi_proxy_breaker_opens_total";
const OPENS_HELP: &str = "Times a fragment host's circuit breaker opened (or reopened).";

/// The time source: `Instant::now` in service, a hand-moved clock in tests.
pub type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

/// The circuit breakers of every fragment host the config allows (the origin and each
/// `[[fetch.hosts]]` entry), shared by the HTTP clients of successive configs so a reload keeps
/// the state of the hosts it still lists. Hosts outside the config get no breaker, so the
/// number of breakers (and metric series) is bounded by the config.
pub struct Breakers {
    /// Each configured host's policy and state, by `host:port`.
    hosts: RwLock<HashMap<String, Arc<Host>>>,
    clock: Clock,
    metrics: Arc<Metrics>,
}

/// One host's breaker.
struct Host {
    key: String,
    inner: Mutex<HostState>,
}

/// A host's policy and where its breaker stands.
struct HostState {
    policy: BreakerSettings,
    state: State,
}

/// Where a breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Fetches go through; `failures` in a row so far.
    Closed { failures: u32 },
    /// Fetches fail at once until `until`; `open_for` is how long this opening lasts.
    Open { until: Instant, open_for: Duration },
    /// `open_for` has passed: one probe may go through (`probing` while it is out).
    HalfOpen { open_for: Duration, probing: bool },
}

/// What a breaker reports of itself, for health and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BreakerState {
    /// Fetches go through.
    Closed,
    /// Fetches fail at once.
    Open,
    /// One probe is allowed (or out); other fetches fail at once.
    HalfOpen,
}

/// Leave to fetch from a host: report the outcome with [`Ticket::settle`].
///
/// A ticket dropped unsettled belongs to a fetch its caller gave up on. Given up on near its
/// deadline (past [`ABANDONED_AS_TIMEOUT`] of it) it counts as a timeout: the single-flight
/// wait of the cache runs on the same deadline as the fetch and may fire a moment before the
/// fetch's own. Given up on earlier (the page's client left), it says nothing of the host; a
/// probe then frees its slot, so the next fetch probes.
#[must_use = "a ticket is settled with the fetch's outcome"]
pub struct Ticket {
    /// `None` for a host with no breaker.
    tracked: Option<Tracked>,
}

/// A [`Ticket`] for a host with a breaker.
struct Tracked {
    host: Arc<Host>,
    /// Whether this fetch is the half-open probe.
    probe: bool,
    clock: Clock,
    metrics: Arc<Metrics>,
    /// From when an unsettled drop counts as a timeout.
    late: Instant,
}

/// The share of its deadline after which a fetch given up on counts as timed out.
pub const ABANDONED_AS_TIMEOUT: f64 = 0.9;

// === impl Breakers ===

impl Breakers {
    /// Breakers for the hosts of `settings`, on the system clock, counting into `metrics`.
    pub fn new(settings: &Settings, metrics: Arc<Metrics>) -> Self {
        Self::with_clock(settings, metrics, Arc::new(Instant::now))
    }

    /// [`Breakers::new`] on the given clock.
    pub fn with_clock(settings: &Settings, metrics: Arc<Metrics>, clock: Clock) -> Self {
        let breakers = Self {
            hosts: RwLock::default(),
            clock,
            metrics,
        };
        breakers.configure(settings);
        breakers
    }

    /// Applies a new config: hosts it no longer lists (or whose breaker it disables) lose their
    /// breaker; hosts it still lists keep their state under their new policy, which applies
    /// from the next fetch (an open breaker keeps its time).
    pub fn configure(&self, settings: &Settings) {
        let fetch = &settings.fetch;
        let policies = std::iter::once((&settings.server.origin, fetch.breaker))
            .chain(fetch.hosts.iter().map(|h| (&h.url, h.breaker)))
            .filter(|(_, policy)| policy.enabled)
            .map(|(url, policy)| (authority(&url.host, url.port), policy));
        let mut hosts = write(&self.hosts);
        let mut kept = HashMap::with_capacity(hosts.len());
        for (key, policy) in policies {
            let host = match hosts.remove(&key) {
                Some(host) => {
                    lock(&host.inner).policy = policy;
                    host
                }
                None => Arc::new(Host {
                    key: key.clone(),
                    inner: Mutex::new(HostState {
                        policy,
                        state: State::Closed { failures: 0 },
                    }),
                }),
            };
            kept.insert(key, host);
        }
        // What is left is gone from the config: its gauge says closed, as it no longer opens.
        for key in hosts.keys() {
            self.metrics
                .set_labelled_gauge(STATE, STATE_HELP, ("host", key), 0.0);
        }
        *hosts = kept;
    }

    /// Leave to fetch `url` within `timeout`, or [`FetchError::BreakerOpen`] when its host's
    /// breaker is open, or half-open with its probe out. Past the open time, the first caller
    /// becomes the probe.
    ///
    /// # Errors
    /// [`FetchError::BreakerOpen`]: the fetch must not be tried.
    pub fn admit(&self, url: &Url, timeout: Duration) -> Result<Ticket, FetchError> {
        let key = url_authority(url);
        let Some(host) = read(&self.hosts).get(&key).cloned() else {
            return Ok(Ticket::untracked());
        };
        let now = (self.clock)();
        let mut inner = lock(&host.inner);
        let probe = match inner.state {
            State::Closed { .. } => false,
            State::Open { until, open_for } if now >= until => {
                inner.state = State::HalfOpen {
                    open_for,
                    probing: true,
                };
                true
            }
            State::HalfOpen {
                open_for,
                probing: false,
            } => {
                inner.state = State::HalfOpen {
                    open_for,
                    probing: true,
                };
                true
            }
            State::Open { until, .. } => {
                return Err(refusal(
                    url,
                    &key,
                    Some(until.saturating_duration_since(now)),
                ));
            }
            State::HalfOpen { probing: true, .. } => return Err(refusal(url, &key, None)),
        };
        drop(inner);
        if probe {
            tracing::info!(host = %key, "circuit breaker half-open: probing");
        }
        Ok(Ticket {
            tracked: Some(Tracked {
                host,
                probe,
                clock: Arc::clone(&self.clock),
                metrics: Arc::clone(&self.metrics),
                late: now + timeout.mul_f64(ABANDONED_AS_TIMEOUT),
            }),
        })
    }

    /// Every host with a breaker and where it stands, sorted by host.
    pub fn states(&self) -> Vec<(String, BreakerState)> {
        let mut out: Vec<(String, BreakerState)> = read(&self.hosts)
            .values()
            .map(|host| (host.key.clone(), lock(&host.inner).state.report()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Sets the state gauge of every host; called before `/_esi/metrics` renders.
    pub fn publish_metrics(&self) {
        for (key, state) in self.states() {
            self.metrics
                .set_labelled_gauge(STATE, STATE_HELP, ("host", &key), state.gauge());
        }
    }
}

impl std::fmt::Debug for Breakers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breakers")
            .field("hosts", &self.states())
            .finish_non_exhaustive()
    }
}

// === impl Ticket ===

impl Ticket {
    /// Leave for a host with no breaker: settling it records nothing.
    pub fn untracked() -> Self {
        Self { tracked: None }
    }

    /// Records the fetch's outcome on its host's breaker and hands it back. A failure is a
    /// failed connection, a timeout, a cut or malformed response, or a 5xx; any answer short of
    /// that (a 4xx, an oversize body) is a success; a refusal by our own rules is neither.
    pub fn settle(mut self, result: Result<Fragment, FetchError>) -> Result<Fragment, FetchError> {
        if let Some(tracked) = self.tracked.take() {
            let failed = match &result {
                // A kept status (a primary fragment's) counts as the error it would have been.
                Ok(f) => Some(f.status.is_server_error()),
                Err(e) => counts_against_host(e),
            };
            tracked.finish(failed);
        }
        result
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(tracked) = self.tracked.take() {
            let timed_out = (tracked.clock)() >= tracked.late;
            tracked.finish(timed_out.then_some(true));
        }
    }
}

// === impl Tracked ===

impl Tracked {
    /// Records a failure (`Some(true)`), a success (`Some(false)`) or nothing (`None`: a
    /// probe frees its slot).
    fn finish(self, failed: Option<bool>) {
        let Some(failed) = failed else {
            if self.probe {
                lock(&self.host.inner).release_probe();
            }
            return;
        };
        let now = (self.clock)();
        let opened = lock(&self.host.inner).record(failed, self.probe, now);
        let host = &self.host.key;
        if let Some(open_for) = opened {
            let open_ms = u64::try_from(open_for.as_millis()).unwrap_or(u64::MAX);
            tracing::warn!(%host, open_ms, "circuit breaker opened");
            self.metrics
                .inc_counter(OPENS, OPENS_HELP, Some(("host", host)), 1);
        } else if self.probe && !failed {
            tracing::info!(%host, "circuit breaker closed");
        }
    }
}

// === impl HostState ===

impl HostState {
    /// Applies one fetch's outcome; the open time when this opened the breaker. Only the probe
    /// decides an open breaker; fetches admitted before it opened no longer count.
    fn record(&mut self, failed: bool, probe: bool, now: Instant) -> Option<Duration> {
        let open = |open_for: Duration| State::Open {
            until: now + open_for,
            open_for,
        };
        match (self.state, probe) {
            (State::Closed { .. }, _) if !failed => {
                self.state = State::Closed { failures: 0 };
                None
            }
            (State::Closed { failures }, _) => {
                let failures = failures.saturating_add(1);
                if failures >= self.policy.failures {
                    self.state = open(self.policy.open);
                    Some(self.policy.open)
                } else {
                    self.state = State::Closed { failures };
                    None
                }
            }
            (State::HalfOpen { .. }, true) if !failed => {
                self.state = State::Closed { failures: 0 };
                None
            }
            (State::HalfOpen { open_for, .. }, true) => {
                let open_for = open_for.saturating_mul(2).min(self.policy.max_open);
                self.state = open(open_for);
                Some(open_for)
            }
            _ => None,
        }
    }

    fn release_probe(&mut self) {
        if let State::HalfOpen { open_for, .. } = self.state {
            self.state = State::HalfOpen {
                open_for,
                probing: false,
            };
        }
    }
}

// === impl State ===

impl State {
    fn report(self) -> BreakerState {
        match self {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }
}

// === impl BreakerState ===

impl BreakerState {
    /// The value of `esi_proxy_breaker_state`: 0 closed, 1 open, 2 half-open.
    pub fn gauge(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::Open => 1.0,
            BreakerState::HalfOpen => 2.0,
        }
    }
}

/// Whether an error says the host is unwell (`Some(true)`), answered (`Some(false)`), or
/// nothing about it (`None`: refused by our rules before any connection).
fn counts_against_host(e: &FetchError) -> Option<bool> {
    match e {
        FetchError::Timeout { .. }
        | FetchError::Connect { .. }
        | FetchError::Truncated { .. }
        | FetchError::Malformed { .. }
        | FetchError::Decode { .. }
        | FetchError::Transport { .. } => Some(true),
        FetchError::Status { status, .. } => Some(status.is_server_error()),
        FetchError::TooLarge { .. } => Some(false),
        FetchError::Refused { .. } | FetchError::BreakerOpen { .. } => None,
    }
}

fn refusal(url: &Url, host: &str, retry_in: Option<Duration>) -> FetchError {
    FetchError::BreakerOpen {
        url: super::client::redact(url),
        host: host.to_owned(),
        retry_in,
    }
}

/// `host:port` of a URL, the port explicit or the scheme's, as metrics label hosts.
fn url_authority(url: &Url) -> String {
    format!(
        "{}:{}",
        url.host_str().unwrap_or(""),
        url.port_or_known_default().unwrap_or(0)
    )
}

/// `host:port` of a configured host (an IPv6 address bracketed, as in a URL).
fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// A guard that survives poisoning: the state is a small value, whole after any panic.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
#[path = "breaker_tests.rs"]
mod tests;
