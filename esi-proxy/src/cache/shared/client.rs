//! Calls to Redis for the shared tier: a few multiplexed connections that reconnect by
//! themselves, each call under the configured deadline and the breaker, counted (calls,
//! latency, errors by kind). Knows commands and replies, not what the tier stores.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Cmd, FromRedisValue, Pipeline};

use super::breaker::Breaker;
use super::stats::Stats;
use super::SharedError;
use crate::config::SharedSettings;

/// Longest wait between two reconnect attempts: a Redis that comes back is used again within
/// about this long.
const MAX_RECONNECT_DELAY: Duration = Duration::from_millis(250);

/// The connections and the rules every call follows.
pub(super) struct Redis {
    pub(super) client: Client,
    connections: Vec<ConnectionManager>,
    next: AtomicUsize,
    pub(super) timeout: Duration,
    pub(super) connect_timeout: Duration,
    pub(super) breaker: Breaker,
    stats: Arc<Stats>,
}

/// Whether a call may be skipped while the breaker is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// A call on a request's path: skipped while the breaker is open, under `timeout`.
    Serving,
    /// An admin call (purge): made whatever the breaker says, under the longer of `timeout`
    /// and [`ADMIN_TIMEOUT`].
    Admin,
}

/// Shortest deadline of an admin call: a purge walks the keyspace in steps.
const ADMIN_TIMEOUT: Duration = Duration::from_millis(200);

// === impl Redis ===

impl Redis {
    /// Connections to `settings.url`, made lazily: nothing is dialled until the first call.
    ///
    /// # Errors
    /// [`SharedError::Url`] when the client does not take the URL.
    pub(super) fn new(settings: &SharedSettings, stats: Arc<Stats>) -> Result<Self, SharedError> {
        let client = Client::open(settings.url.as_str()).map_err(|e| SharedError::Url {
            url: settings.url.clone(),
            reason: e.to_string(),
        })?;
        // Each call's deadline is ours (`timeout`); the client's own (500 ms) would cut a
        // patient one short.
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(None)
            .set_connection_timeout(Some(settings.connect_timeout))
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(MAX_RECONNECT_DELAY);
        let connections = (0..settings.pool_size.max(1))
            .map(|_| client.get_connection_manager_lazy(config.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| SharedError::Url {
                url: settings.url.clone(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            client,
            connections,
            next: AtomicUsize::new(0),
            timeout: settings.timeout,
            connect_timeout: settings.connect_timeout,
            breaker: Breaker::new(settings.breaker_failures, settings.breaker_open),
            stats,
        })
    }

    /// Runs `cmd` under the mode's rules.
    ///
    /// # Errors
    /// [`SharedError::Skipped`] while the breaker is open; else what the call met.
    pub(super) async fn query<T: FromRedisValue>(
        &self,
        mode: Mode,
        cmd: &Cmd,
    ) -> Result<T, SharedError> {
        let mut conn = self.admit(mode)?;
        self.timed(mode, cmd.query_async(&mut conn)).await
    }

    /// Runs the commands of `pipe` in one round trip, under the mode's rules.
    ///
    /// # Errors
    /// As [`Redis::query`].
    pub(super) async fn pipeline<T: FromRedisValue>(
        &self,
        mode: Mode,
        pipe: &Pipeline,
    ) -> Result<T, SharedError> {
        let mut conn = self.admit(mode)?;
        self.timed(mode, pipe.query_async(&mut conn)).await
    }

    /// A connection, unless the breaker skips the call.
    fn admit(&self, mode: Mode) -> Result<ConnectionManager, SharedError> {
        if mode == Mode::Serving && !self.breaker.admit() {
            self.stats.skipped();
            return Err(SharedError::Skipped);
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.connections.len();
        Ok(self.connections[i].clone())
    }

    /// Awaits `call` within the mode's deadline, counting it and telling the breaker.
    async fn timed<T>(
        &self,
        mode: Mode,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, SharedError> {
        let deadline = match mode {
            Mode::Serving => self.timeout,
            Mode::Admin => self.timeout.max(ADMIN_TIMEOUT),
        };
        let started = Instant::now();
        let result = match tokio::time::timeout(deadline, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(SharedError::from_redis(&e)),
            Err(_) => Err(SharedError::Timeout(deadline)),
        };
        self.stats.call(started.elapsed());
        match &result {
            Ok(_) => self.breaker.success(),
            Err(error) => {
                self.stats.error(error.kind());
                if self.breaker.failure() {
                    tracing::warn!(%error, "shared cache tier skipped: too many failed calls");
                }
            }
        }
        result
    }
}
