//! The shared tier: an L2 on Redis (or a server speaking its protocol) below the in-process
//! caches, so several nodes behind one load balancer share what any of them fetched. `keys`
//! names things, `codec` is the value format, `client` makes calls under a deadline and the
//! `breaker`, `stats` counts, `purge` purges and announces, `listen` applies other nodes'
//! purges. Never serves HTTP.

mod breaker;
mod client;
mod codec;
mod keys;
mod listen;
mod purge;
mod stats;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::HeaderName;
use http::{HeaderMap, StatusCode};
use serde::Serialize;
use url::Url;

use super::entry::Entry;
use super::policy::{CachePolicy, Credentials};
use super::store::{key_names, CacheKey};
use super::{FragmentCache, LayoutCache};
use crate::config::SharedSettings;
use crate::fetch::Fragment;
use crate::telemetry::Metrics;

pub use breaker::BreakerState;
use client::{Mode, Redis};
use codec::Value;
use keys::Keys;
pub(super) use keys::Kind;
use stats::Stats;
pub use stats::StatsView;

/// Takes the value of `KEYS[1]` when there is one, else the lease `KEYS[2]` (token `ARGV[1]`,
/// for `ARGV[2]` ms) when nobody holds it, in one atomic step: a node never leads the fetch of
/// a key another node has just stored.
const LEASE_SCRIPT: &str = "local v = redis.call('GET', KEYS[1]) \
    if v then return {1, v} end \
    if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {2, ''} end \
    return {3, ''}";

/// Drops the lease `KEYS[1]` if it still holds this node's token `ARGV[1]`.
const RELEASE_SCRIPT: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
    return redis.call('DEL', KEYS[1]) end return 0";

/// Most SCAN steps one purge takes (each looks at about 1000 keys).
const MAX_PURGE_STEPS: usize = 100_000;

/// The shared tier of one server: its Redis connections, key names, counters, and the task
/// that applies other nodes' purges to the in-process caches (stopped when this is dropped).
pub struct SharedTier {
    redis: Redis,
    keys: Keys,
    stats: Arc<Stats>,
    compress_min_bytes: usize,
    lease_for: Duration,
    /// Tells this node's leases from other nodes'.
    node: u64,
    next_lease: AtomicU64,
    /// The last purge generation this node heard of; `None` before the first subscription.
    heard: Mutex<Option<u64>>,
    /// Whether the purge channel is subscribed now.
    listening: AtomicBool,
    listener: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// Why a call to the shared tier did not answer; the request goes on without the tier.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SharedError {
    /// The client does not take the configured URL.
    #[error("{url}: not a URL the Redis client takes: {reason}")]
    Url {
        /// The URL.
        url: String,
        /// The client's words.
        reason: String,
    },
    /// Not tried: the breaker is open.
    #[error("skipped: too many failed calls in a row")]
    Skipped,
    /// No answer within the deadline.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// Not connected, or the connection broke.
    #[error("connection: {0}")]
    Connection(String),
    /// Redis answered with an error.
    #[error("Redis answered: {0}")]
    Response(String),
}

/// What the shared tier answered for a lookup.
pub(super) enum Found {
    /// It answered: the key the value lives under there (its URL's vary spec as the tier
    /// knows it), and the value, if any.
    Answer {
        key: CacheKey,
        entry: Option<SharedEntry>,
    },
    /// It did not answer in time, or is skipped.
    Unavailable,
}

/// What asking for the lease of a cold key gave.
pub(super) enum Lease {
    /// Another node stored the value meanwhile.
    Filled(SharedEntry),
    /// This node fetches for the cluster; it releases the lease with this token.
    Leader(u64),
    /// Another node is fetching it.
    Follower,
    /// The tier did not answer: fetch as if there were none.
    Unavailable,
}

/// A fragment entry read from the shared tier, with the names its response varied on.
pub(super) struct SharedEntry {
    pub(super) entry: Arc<Entry>,
    pub(super) vary: Arc<[HeaderName]>,
}

/// The result of a purge in the shared tier.
#[derive(Debug, Clone, Serialize)]
pub struct SharedPurge {
    /// Keys removed from Redis.
    pub removed: u64,
    /// The purge generation after this purge, announced with it.
    pub generation: u64,
}

/// The shared tier as `/_esi/health?detail` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct SharedHealth {
    /// `up` (calls go through), `probing` (one call decides) or `down` (calls skipped).
    pub state: &'static str,
    /// Whether other nodes' purges reach this node now (the purge channel is subscribed).
    pub purge_channel: &'static str,
    /// The last purge generation this node heard of.
    pub generation: Option<u64>,
    /// Counters since start.
    pub stats: StatsView,
}

// === impl SharedTier ===

impl SharedTier {
    /// The tier described by `settings`; nothing is dialled until the first call, so a Redis
    /// that is down at start only means an empty tier.
    ///
    /// # Errors
    /// [`SharedError::Url`] when the client does not take the URL.
    pub fn new(settings: &SharedSettings, metrics: Arc<Metrics>) -> Result<Arc<Self>, SharedError> {
        let stats = Arc::new(Stats::new(metrics));
        let redis = Redis::new(settings, Arc::clone(&stats))?;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        Ok(Arc::new(Self {
            redis,
            keys: Keys::new(&settings.key_prefix),
            stats,
            compress_min_bytes: settings.compress_min_bytes,
            lease_for: settings.lease,
            node: (u64::from(std::process::id()) << 32) | u64::from(nanos),
            next_lease: AtomicU64::new(0),
            heard: Mutex::new(None),
            listening: AtomicBool::new(false),
            listener: Mutex::new(None),
        }))
    }

    /// Starts applying other nodes' purges to `fragments` and `layouts` (on this runtime),
    /// reconnecting as needed. Once per tier; later calls do nothing.
    pub fn listen(self: &Arc<Self>, fragments: &Arc<FragmentCache>, layouts: &Arc<LayoutCache>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("no runtime: other nodes' purges will not reach this one");
            return;
        };
        let mut listener = self.listener.lock().unwrap_or_else(PoisonError::into_inner);
        if listener.is_none() {
            *listener = Some(runtime.spawn(listen::run(
                Arc::downgrade(self),
                Arc::downgrade(fragments),
                Arc::downgrade(layouts),
            )));
        }
    }

    /// Where the tier stands, for `/_esi/health?detail`.
    pub fn health(&self) -> SharedHealth {
        SharedHealth {
            state: state_word(self.redis.breaker.state()),
            purge_channel: if self.listening.load(Ordering::Relaxed) {
                "subscribed"
            } else {
                "disconnected"
            },
            generation: *self.heard.lock().unwrap_or_else(PoisonError::into_inner),
            stats: self.stats.view(),
        }
    }

    /// Sets the state gauge in metrics; called before /_esi/metrics renders.
    pub fn publish_metrics(&self) {
        let value = match self.redis.breaker.state() {
            BreakerState::Closed => 2.0,
            BreakerState::HalfOpen => 1.0,
            BreakerState::Open => 0.0,
        };
        self.stats.gauge(
            stats::STATE,
            "The shared cache tier: 2 up, 1 probing, 0 down (calls skipped).",
            value,
        );
    }

    /// Looks `key` (a key of this node's, from its own view of the URL's vary spec) up. One
    /// round trip reads the value and the vary spec the tier holds; a second is made only when
    /// that spec gives another key.
    pub(super) async fn lookup(
        &self,
        kind: Kind,
        policy: &CachePolicy,
        url: &Url,
        key: &CacheKey,
        headers: &HeaderMap,
        credentials: Credentials,
    ) -> Found {
        let mut pipe = redis::pipe();
        pipe.get(self.keys.vary(kind, &key.url))
            .get(self.keys.value(kind, key));
        let (vary, mut record): (Option<String>, Option<Vec<u8>>) =
            match self.redis.pipeline(Mode::Serving, &pipe).await {
                Ok(reply) => reply,
                Err(_) => return Found::Unavailable,
            };
        let mut key = key.clone();
        if let Some(vary) = vary {
            let names = parse_names(&vary);
            let theirs = CacheKey::new(
                &key.url,
                &key_names(policy, url, &names),
                headers,
                credentials,
            );
            if theirs != key {
                key = theirs;
                record = match self
                    .redis
                    .query(
                        Mode::Serving,
                        redis::cmd("GET").arg(self.keys.value(kind, &key)),
                    )
                    .await
                {
                    Ok(record) => record,
                    Err(_) => return Found::Unavailable,
                };
            }
        }
        let entry = record.and_then(|record| self.restore(&key, &record));
        if entry.is_some() {
            self.stats.hit(kind);
        } else {
            self.stats.miss(kind);
        }
        Found::Answer { key, entry }
    }

    /// Asks for the lease of cold `key`, unless another node stored it meanwhile.
    pub(super) async fn lease(&self, kind: Kind, key: &CacheKey) -> Lease {
        let token = self.node ^ self.next_lease.fetch_add(1, Ordering::Relaxed);
        let cmd = redis::cmd("EVAL")
            .arg(LEASE_SCRIPT)
            .arg(2)
            .arg(self.keys.value(kind, key))
            .arg(self.keys.lease(kind, key))
            .arg(token)
            .arg(millis(self.lease_for))
            .clone();
        match self
            .redis
            .query::<(i64, Vec<u8>)>(Mode::Serving, &cmd)
            .await
        {
            Ok((1, record)) => match self.restore(key, &record) {
                Some(entry) => Lease::Filled(entry),
                // Unreadable: fetch without the lease; this node's value replaces it.
                None => Lease::Unavailable,
            },
            Ok((2, _)) => {
                self.stats.lease("leader");
                Lease::Leader(token)
            }
            Ok(_) => {
                self.stats.lease("follower");
                Lease::Follower
            }
            Err(_) => Lease::Unavailable,
        }
    }

    /// What a follower sees of `key`: its value (if stored now) and whether a lease on it
    /// still stands; `None` when the tier did not answer.
    pub(super) async fn poll(
        &self,
        kind: Kind,
        key: &CacheKey,
    ) -> Option<(Option<SharedEntry>, bool)> {
        let mut pipe = redis::pipe();
        pipe.get(self.keys.value(kind, key))
            .exists(self.keys.lease(kind, key));
        let (record, leased): (Option<Vec<u8>>, bool) =
            self.redis.pipeline(Mode::Serving, &pipe).await.ok()?;
        let entry = record.and_then(|record| self.restore(key, &record));
        if entry.is_some() {
            self.stats.hit(kind);
        }
        Some((entry, leased))
    }

    /// Gives up this node's lease of `key`, so followers stop waiting at once.
    pub(super) async fn release(&self, kind: Kind, key: &CacheKey, token: u64) {
        let cmd = redis::cmd("EVAL")
            .arg(RELEASE_SCRIPT)
            .arg(1)
            .arg(self.keys.lease(kind, key))
            .arg(token)
            .clone();
        let _: Result<i64, _> = self.redis.query(Mode::Serving, &cmd).await;
    }

    /// Stores `entry` (whose response varied on `vary`) for every node, for what is left of
    /// its lifetime (TTL plus the longer stale window).
    pub(super) async fn store(&self, kind: Kind, entry: &Entry, vary: &[HeaderName]) {
        let age = entry.stored_at.elapsed();
        let lifetime = entry
            .ttl
            .saturating_add(entry.stale_while_revalidate.max(entry.stale_if_error))
            .saturating_sub(age);
        if lifetime.is_zero() {
            return;
        }
        let value = Value {
            stored_at_ms: millis(unix_now().saturating_sub(age)),
            times: [
                entry.ttl,
                entry.stale_while_revalidate,
                entry.stale_if_error,
            ],
            status: entry.status.as_u16(),
            source: entry.source.clone(),
            names: entry.names.to_vec(),
            vary: vary.to_vec(),
            tags: entry.tags.iter().map(|t| t.to_string()).collect(),
            headers: HeaderMap::clone(&entry.headers),
            body: entry.body.clone(),
        };
        let record = value.encode(self.compress_min_bytes);
        let ms = millis(lifetime).max(1);
        let names: Vec<&str> = vary.iter().map(HeaderName::as_str).collect();
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(self.keys.value(kind, &entry.key))
            .arg(record)
            .arg("PX")
            .arg(ms)
            .ignore()
            .cmd("SET")
            .arg(self.keys.vary(kind, &entry.key.url))
            .arg(names.join(","))
            .arg("PX")
            .arg(ms)
            .ignore();
        for tag in entry.tags.iter() {
            pipe.cmd("EVAL")
                .arg(purge::TAG_SCRIPT)
                .arg(1)
                .arg(self.keys.tag(tag))
                .arg(self.keys.value(kind, &entry.key))
                .arg(ms)
                .ignore();
        }
        if self
            .redis
            .pipeline::<()>(Mode::Serving, &pipe)
            .await
            .is_ok()
        {
            self.stats.write(kind);
        }
    }

    /// Drops the stored value of `key`: its newest response may not be kept.
    pub(super) async fn remove(&self, kind: Kind, key: &CacheKey) {
        let cmd = redis::cmd("DEL").arg(self.keys.value(kind, key)).clone();
        let _: Result<i64, _> = self.redis.query(Mode::Serving, &cmd).await;
    }

    /// The entry of a record stored under `key`; an unreadable record counts as an error and
    /// reads as nothing.
    fn restore(&self, key: &CacheKey, record: &[u8]) -> Option<SharedEntry> {
        let value = match Value::decode(record) {
            Ok(value) => value,
            Err(error) => {
                tracing::debug!(url = %key.url, %error, "shared cache record not read");
                self.stats.error("decode");
                return None;
            }
        };
        let age = unix_now().saturating_sub(Duration::from_millis(value.stored_at_ms));
        let fragment = Fragment {
            status: StatusCode::from_u16(value.status).ok()?,
            headers: Arc::new(value.headers),
            body: value.body,
            cache: None,
            template: None,
        };
        let entry = Entry::aged(
            key.clone(),
            value.names.into(),
            fragment,
            value.times,
            value.source,
            value.tags.into_iter().map(Arc::from).collect(),
            age,
        );
        Some(SharedEntry {
            entry,
            vary: value.vary.into(),
        })
    }
}

impl std::fmt::Debug for SharedTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedTier")
            .field("keys", &self.keys)
            .field("state", &self.redis.breaker.state())
            .finish_non_exhaustive()
    }
}

impl Drop for SharedTier {
    fn drop(&mut self) {
        if let Some(task) = self
            .listener
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            task.abort();
        }
    }
}

// === impl SharedError ===

impl SharedError {
    /// How a Redis error is counted.
    fn from_redis(error: &redis::RedisError) -> Self {
        if error.is_timeout() {
            Self::Timeout(Duration::ZERO)
        } else if error.is_io_error()
            || error.is_connection_dropped()
            || error.is_connection_refusal()
        {
            Self::Connection(error.to_string())
        } else {
            Self::Response(error.to_string())
        }
    }

    /// The `kind` label of the errors counter.
    fn kind(&self) -> &'static str {
        match self {
            Self::Url { .. } => "config",
            Self::Skipped => "skipped",
            Self::Timeout(_) => "timeout",
            Self::Connection(_) => "connection",
            Self::Response(_) => "response",
        }
    }
}

// === helpers ===

/// The names of a stored vary spec (comma-separated); unknown names are left out.
fn parse_names(text: &str) -> Vec<HeaderName> {
    text.split(',')
        .filter(|name| !name.is_empty())
        .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
        .collect()
}

fn state_word(state: BreakerState) -> &'static str {
    match state {
        BreakerState::Closed => "up",
        BreakerState::HalfOpen => "probing",
        BreakerState::Open => "down",
    }
}

fn millis(time: Duration) -> u64 {
    u64::try_from(time.as_millis()).unwrap_or(u64::MAX)
}

/// Time since the Unix epoch.
fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}
