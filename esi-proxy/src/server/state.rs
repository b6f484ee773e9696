//! The state every request handler shares: the runtime built from the config in force (its
//! validated [`Settings`], HTTP client, composer, cache policy, origin), swapped whole on
//! reload, and the caches and metrics that outlive reloads. Handles no request itself.

use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use crate::cache::{CachePolicy, CachingFetcher, FragmentCache, LayoutCache, SharedTier};
use crate::compose::{ComposeConfig, Composer};
use crate::config::{Config, Settings};
use crate::fetch::{BaseUrl, Breakers, Fetcher, HttpClient, Lookup};
use crate::telemetry::Metrics;

use super::error::ServerError;
use super::hints::HintMemory;
use super::reload::ReloadStatus;

/// What every request handler shares: the runtime built from the config in force (swapped
/// whole on reload), the caches (kept across reloads), metrics and reload status.
pub struct AppState {
    runtime: RwLock<Arc<Runtime>>,
    lookup: Arc<dyn Lookup>,
    /// What every runtime's fetcher is wrapped in; only tests set one (`test-hooks`).
    layer: Option<FetcherLayer>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) fragment_cache: Arc<FragmentCache>,
    pub(super) layout_cache: Arc<LayoutCache>,
    /// Fragment hosts' circuit breakers: a reload keeps the state of the hosts it still lists.
    pub(super) breakers: Arc<Breakers>,
    /// The shared tier below both caches (`[cache.shared]`), fixed at start like them.
    pub(super) shared: Option<Arc<SharedTier>>,
    /// Each page's last hints, for its 103 (`hints.max_pages`, fixed at start).
    pub(super) hint_memory: Arc<HintMemory>,
    pub(super) reload: Mutex<ReloadStatus>,
    pub(super) started: Instant,
    /// Client connections open on every listener (`esi_proxy_connections_open`).
    pub(super) connections: Mutex<i64>,
}

/// Everything built from one config. A request takes one `Arc<Runtime>` and keeps it to its
/// end, so a reload never changes the rules under a page being composed.
pub(super) struct Runtime {
    /// The config in force, validated: the only view of it the server reads.
    pub(super) settings: Arc<Settings>,
    /// Layouts and fragments: the HTTP client, behind the cache when caching is on.
    pub(super) fetcher: Arc<dyn Fetcher>,
    pub(super) composer: Arc<Composer>,
    pub(super) policy: Arc<CachePolicy>,
    pub(super) origin: BaseUrl,
    /// `origin` as a URL, made once: every request's page URL is joined onto it.
    pub(super) origin_url: url::Url,
}

/// Wraps the fetcher a runtime builds (behind the cache when caching is on) in another.
pub type FetcherLayer = Arc<dyn Fn(Arc<dyn Fetcher>) -> Arc<dyn Fetcher> + Send + Sync>;

// === impl AppState ===

impl AppState {
    /// Validates `config` and builds the shared state from it, resolving names with `lookup`.
    /// The caches are sized here; their capacity changes only with a restart.
    ///
    /// # Errors
    /// [`ServerError::Config`] when the config does not validate (every problem listed), or
    /// when the HTTP client cannot be built from it (a CA file that is not PEM).
    pub fn new(
        config: Config,
        lookup: Arc<dyn Lookup>,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, ServerError> {
        Self::build(config, lookup, metrics, None)
    }

    /// [`AppState::new`], with every fetcher the server builds (at start and on reload)
    /// wrapped by `layer`: how tests put a fetcher of their own (one that fails or panics on
    /// cue) between the composer and the network.
    ///
    /// # Errors
    /// As [`AppState::new`].
    #[cfg(feature = "test-hooks")]
    pub fn with_fetcher_layer(
        config: Config,
        lookup: Arc<dyn Lookup>,
        metrics: Arc<Metrics>,
        layer: FetcherLayer,
    ) -> Result<Arc<Self>, ServerError> {
        Self::build(config, lookup, metrics, Some(layer))
    }

    fn build(
        config: Config,
        lookup: Arc<dyn Lookup>,
        metrics: Arc<Metrics>,
        layer: Option<FetcherLayer>,
    ) -> Result<Arc<Self>, ServerError> {
        let settings = validated(&config)?;
        let fragment_cache = FragmentCache::new(
            settings.cache.fragment_capacity_bytes.max(1),
            Arc::clone(&metrics),
        );
        let layout_cache = LayoutCache::new(
            settings.cache.layout_capacity_bytes.max(1),
            Arc::clone(&metrics),
        );
        let shared = match (&settings.cache.shared, settings.cache.enabled) {
            (Some(shared), true) => {
                let tier = SharedTier::new(shared, Arc::clone(&metrics))
                    .map_err(|e| ServerError::Config(e.to_string()))?;
                tier.listen(&fragment_cache, &layout_cache);
                Some(tier)
            }
            _ => None,
        };
        let breakers = Arc::new(Breakers::new(&settings, Arc::clone(&metrics)));
        let hint_memory = HintMemory::new(settings.hints.max_pages);
        let runtime = build_runtime(
            settings,
            &lookup,
            &metrics,
            &fragment_cache,
            &breakers,
            &shared,
            layer.as_ref(),
        )?;
        Ok(Arc::new(Self {
            runtime: RwLock::new(Arc::new(runtime)),
            lookup,
            layer,
            metrics,
            fragment_cache,
            layout_cache,
            breakers,
            shared,
            hint_memory,
            reload: Mutex::new(ReloadStatus::default()),
            started: Instant::now(),
            connections: Mutex::new(0),
        }))
    }

    /// The metrics this server records.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The shared tier, when `[cache.shared]` configures one.
    pub fn shared(&self) -> Option<&Arc<SharedTier>> {
        self.shared.as_ref()
    }

    /// The fragment cache (shared across reloads).
    pub fn fragment_cache(&self) -> &Arc<FragmentCache> {
        &self.fragment_cache
    }

    /// The fragment hosts' circuit breakers (shared across reloads).
    pub fn breakers(&self) -> &Arc<Breakers> {
        &self.breakers
    }

    pub(super) fn runtime(&self) -> Arc<Runtime> {
        Arc::clone(
            &self
                .runtime
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Validates `config` and applies it to every request that starts from now on; requests in
    /// flight finish under the config they started with. The listen address and cache
    /// capacities are fixed at start.
    ///
    /// # Errors
    /// As [`AppState::new`]; the config in force then stays.
    pub fn apply(&self, config: Config) -> Result<(), ServerError> {
        self.apply_settings(validated(&config)?)
    }

    /// [`AppState::apply`] for a config already validated.
    pub(super) fn apply_settings(&self, settings: Settings) -> Result<(), ServerError> {
        let runtime = build_runtime(
            settings,
            &self.lookup,
            &self.metrics,
            &self.fragment_cache,
            &self.breakers,
            &self.shared,
            self.layer.as_ref(),
        )?;
        // Only once the new config is sure to apply: a refused one leaves the breakers as
        // they were.
        self.breakers.configure(&runtime.settings);
        *self
            .runtime
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(runtime);
        Ok(())
    }
}

/// The typed view of `config`, or every problem with it.
fn validated(config: &Config) -> Result<Settings, ServerError> {
    config
        .settings()
        .map_err(|e| ServerError::Config(e.to_string()))
}

fn build_runtime(
    settings: Settings,
    lookup: &Arc<dyn Lookup>,
    metrics: &Arc<Metrics>,
    fragment_cache: &Arc<FragmentCache>,
    breakers: &Arc<Breakers>,
    shared: &Option<Arc<SharedTier>>,
    layer: Option<&FetcherLayer>,
) -> Result<Runtime, ServerError> {
    let client = Arc::new(
        HttpClient::with_breakers(&settings, Arc::clone(lookup), Arc::clone(breakers))
            .map_err(|e| ServerError::Config(e.to_string()))?,
    );
    let policy = Arc::new(CachePolicy::from_config(&settings.cache));
    let compose = ComposeConfig::from_config(&settings);
    let fetcher: Arc<dyn Fetcher> = if settings.cache.enabled {
        Arc::new(
            CachingFetcher::new(
                Arc::clone(&client) as Arc<dyn Fetcher>,
                Arc::clone(fragment_cache),
                Arc::clone(&policy),
                compose.parse.clone(),
            )
            .with_shared(shared.clone()),
        )
    } else {
        Arc::clone(&client) as Arc<dyn Fetcher>
    };
    let fetcher = match layer {
        Some(layer) => layer(fetcher),
        None => fetcher,
    };
    let composer = Composer::new(
        Arc::clone(&fetcher),
        compose,
        settings.fetch.max_concurrent,
        Arc::clone(metrics),
    );
    let origin = client.origin().clone();
    let origin_url = origin.to_url();
    Ok(Runtime {
        settings: Arc::new(settings),
        fetcher,
        composer,
        policy,
        origin,
        origin_url,
    })
}
