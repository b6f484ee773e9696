//! Helpers the cache's unit tests share: request and response headers from pairs, URLs, the
//! credential sets, and one policy with a rule of each kind. Test builds only.

use http::{HeaderMap, HeaderName, HeaderValue};
use url::Url;

use super::{CachePolicy, Credentials};
use crate::config::{CacheConfig, CacheRule, Config};

pub(super) const NONE: Credentials = Credentials {
    cookie: false,
    authorization: false,
};
pub(super) const COOKIE_ONLY: Credentials = Credentials {
    cookie: true,
    authorization: false,
};
pub(super) const AUTH_ONLY: Credentials = Credentials {
    cookie: false,
    authorization: true,
};
pub(super) const BOTH: Credentials = Credentials {
    cookie: true,
    authorization: true,
};

pub(super) fn rule(pattern: &str, ttl_s: u64, swr: Option<u64>, keys: &[&str]) -> CacheRule {
    CacheRule {
        pattern: pattern.to_owned(),
        ttl_s,
        stale_while_revalidate_s: swr,
        stale_if_error_s: None,
        key_headers: keys.iter().map(|k| (*k).to_owned()).collect(),
    }
}

/// Rules: 0 `/rule/*` (11 s, swr 5), 1 `a.test:80/host/*` (13 s, keyed by cookie),
/// 2 `/auth/*` (17 s, keyed by cookie and authorization); default TTL 7 s; key header
/// `X-Device`. With `windows`, config stale windows of 2 s and 3 s.
pub(super) fn policy(windows: bool) -> CachePolicy {
    let config = CacheConfig {
        default_ttl_s: 7,
        stale_while_revalidate_s: if windows { 2 } else { 0 },
        stale_if_error_s: if windows { 3 } else { 0 },
        key_headers: vec!["X-Device".into()],
        rules: vec![
            rule("/rule/*", 11, Some(5), &[]),
            rule("a.test:80/host/*", 13, None, &["Cookie"]),
            rule("/auth/*", 17, None, &["cookie", "Authorization"]),
        ],
        ..CacheConfig::default()
    };
    policy_of(config)
}

/// The policy of `cache`, validated as a whole config would be.
pub(super) fn policy_of(cache: CacheConfig) -> CachePolicy {
    let config = Config {
        cache,
        ..Config::default()
    };
    CachePolicy::from_config(&config.settings().expect("valid test config").cache)
}

pub(super) fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).expect("test names are valid"),
            HeaderValue::from_str(value).expect("test values are valid"),
        );
    }
    map
}

pub(super) fn url(text: &str) -> Url {
    Url::parse(text).expect("test URLs parse")
}

/// Header name and value pairs.
pub(super) type Pairs = &'static [(&'static str, &'static str)];
