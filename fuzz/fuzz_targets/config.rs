//! Fuzz target: TOML text through the config loader: parse, validate into `Settings`, and
//! build what a (re)load builds from them (composer, fetch permits, cache policy, deadlines);
//! nothing may panic: a value that cannot work must be refused by validation.
#![no_main]

use std::sync::Arc;
use std::time::Instant;

use esi_proxy::cache::CachePolicy;
use esi_proxy::compose::{ComposeConfig, Composer};
use esi_proxy::config::Config;
use esi_proxy::fetch::{FetchError, Fetcher, Fragment, FragmentRequest};
use esi_proxy::telemetry::Metrics;
use futures::future::BoxFuture;
use libfuzzer_sys::fuzz_target;

/// Fetches nothing: the composer is built, never run.
struct Nothing;

impl Fetcher for Nothing {
    fn fetch(&self, req: FragmentRequest) -> BoxFuture<'static, Result<Fragment, FetchError>> {
        let url = req.url.to_string();
        Box::pin(async move {
            Err(FetchError::Transport {
                url,
                message: "fuzz".into(),
            })
        })
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = std::path::Path::new("fuzz.toml");
    let Ok(config) = Config::parse(text, path) else {
        return;
    };
    let checked = config.validate_source("fuzz.toml", Some(text));
    let Ok(settings) = config.settings_source("fuzz.toml", Some(text)) else {
        assert!(checked.is_err(), "validate and settings disagree");
        return;
    };
    assert!(checked.is_ok(), "validate and settings disagree");
    let _ = CachePolicy::from_config(&settings.cache);
    let compose = ComposeConfig::from_config(&settings);
    // What the composer does per page with these values.
    let _ = tokio::sync::Semaphore::new(compose.max_concurrent_per_page);
    let _ = Instant::now() + compose.page_timeout + compose.fragment_timeout;
    let now = Instant::now();
    for d in [
        settings.server.shutdown_grace,
        settings.fetch.connect_timeout,
        settings.fetch.layout_timeout,
        settings.cache.default_ttl,
        settings.cache.stale_while_revalidate,
        settings.cache.stale_if_error,
        settings.cache.hit_for_pass,
    ] {
        let _ = now + d;
    }
    let _ = Composer::new(
        Arc::new(Nothing),
        compose,
        settings.fetch.max_concurrent,
        Arc::new(Metrics::new()),
    );
});
