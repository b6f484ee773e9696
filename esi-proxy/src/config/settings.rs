//! The validated, typed view of a [`Config`]: `Duration`s instead of `*_ms`/`*_s` integers, enums
//! instead of strings with a closed set of values, parsed header names, addresses and base URLs.
//! Only validation builds it (`validate.rs`), so holding one means every check passed.
//! Reads no file and touches no network.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use http::HeaderName;

use super::{validate, Config, ConfigError};
use super::{BaseUrl, ErrorPages};

/// A [`Config`] that passed validation, in the types the running code uses. Built by
/// [`Config::settings`] or [`Config::settings_source`]; each field says which config field it
/// comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// From `[server]`.
    pub server: ServerSettings,
    /// From `[esi]`.
    pub esi: EsiSettings,
    /// From `[fetch]`.
    pub fetch: FetchSettings,
    /// From `[cache]`.
    pub cache: CacheSettings,
    /// From `[hints]`.
    pub hints: HintSettings,
}

/// `[hints]`, validated (each number within its range).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HintSettings {
    /// `hints.enabled`.
    pub enabled: bool,
    /// `hints.early_hints`; only while `enabled`.
    pub early_hints: bool,
    /// `hints.max_links`, at least 1.
    pub max_links: usize,
    /// `hints.max_bytes`, at least 64.
    pub max_bytes: usize,
    /// `hints.max_pages`; 0 remembers nothing.
    pub max_pages: u64,
}

/// `[server]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSettings {
    /// `server.listen`.
    pub listen: SocketAddr,
    /// `server.origin`: scheme, lowercase host and port (explicit or the scheme's default).
    pub origin: BaseUrl,
    /// `server.max_header_bytes`, at least 8192.
    pub max_header_bytes: usize,
    /// `server.shutdown_grace_ms`.
    pub shutdown_grace: Duration,
    /// `server.admin_token`; `None` when empty (admin endpoints then answer to loopback
    /// clients when `admin_from_loopback`, else to nobody). Printable ASCII with no spaces.
    pub admin_token: Option<String>,
    /// `server.log_format`.
    pub log_format: LogFormat,
    /// `server.config_poll_ms`; `None` when 0 (reload on SIGHUP only).
    pub config_poll: Option<Duration>,
    /// `server.admin_from_loopback`.
    pub admin_from_loopback: bool,
    /// `server.admin_listen`; `None` when empty (admin endpoints on `listen`).
    pub admin_listen: Option<SocketAddr>,
    /// `server.access_log`.
    pub access_log: bool,
    /// `server.site_names`, lowercase, each a host with an optional port; empty: any host.
    pub site_names: Vec<String>,
    /// `server.trusted_proxies`; an address is a range of one.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// `server.max_connections`, at least 1.
    pub max_connections: usize,
    /// `server.header_read_timeout_ms`, above 0.
    pub header_read_timeout: Duration,
    /// `server.keep_alive_timeout_ms`; `None` when 0 (no keep-alive).
    pub keep_alive_timeout: Option<Duration>,
    /// `server.send_timeout_ms`, above 0.
    pub send_timeout: Duration,
    /// `server.request_body_timeout_ms`, above 0.
    pub request_body_timeout: Duration,
}

/// `[esi]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EsiSettings {
    /// `esi.process_paths`: globs for [`glob_match`](super::glob_match), each starting with `/`.
    pub process_paths: Vec<String>,
    /// `esi.shareable_paths`: globs as `process_paths`; composed pages on them keep the layout's
    /// `Cache-Control` for requests with no `Cookie` or `Authorization`.
    pub shareable_paths: Vec<String>,
    /// `esi.max_depth`, at most 20.
    pub max_depth: usize,
    /// `esi.max_includes`, at least 1.
    pub max_includes: usize,
    /// `esi.max_nesting`, at least 1.
    pub max_nesting: usize,
    /// `esi.on_error`.
    pub on_error: OnError,
    /// `esi.cookie_names`.
    pub cookies: CookieNames,
    /// `esi.expose_cookie_header`.
    pub expose_cookie_header: bool,
    /// `esi.header_names`.
    pub headers: HeaderNames,
    /// `esi.raw_vars`.
    pub raw_vars: bool,
    /// `esi.max_expr_evaluations`, 1 to 10000000.
    pub max_expr_evaluations: u64,
    /// `esi.max_expr_value_bytes`, 16 to 16 MiB.
    pub max_expr_value_bytes: usize,
    /// `esi.max_expr_list_items`, 1 to 1000000.
    pub max_expr_list_items: usize,
    /// `esi.max_pattern_bytes`, 1 KiB to 16 MiB.
    pub max_pattern_bytes: usize,
    /// `esi.max_foreach_iterations`, 1 to 100000.
    pub max_foreach_iterations: usize,
    /// `esi.max_function_depth`, 1 to 64.
    pub max_function_depth: usize,
    /// `esi.head_window_paths`: globs as `process_paths`.
    pub head_window_paths: Vec<String>,
    /// `esi.head_window_bytes`, 0 to 16 MiB.
    pub head_window_bytes: usize,
    /// `esi.max_head_hold_ms`, up to a minute.
    pub max_head_hold: Duration,
    /// `esi.primary_error_pages`, read from their files.
    pub primary_error_pages: ErrorPages,
}

/// `[fetch]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchSettings {
    /// `fetch.connect_timeout_ms`, not zero.
    pub connect_timeout: Duration,
    /// `fetch.fragment_timeout_ms`, not zero and at most `page_timeout`.
    pub fragment_timeout: Duration,
    /// `fetch.layout_timeout_ms`, not zero.
    pub layout_timeout: Duration,
    /// `fetch.page_timeout_ms`, not zero.
    pub page_timeout: Duration,
    /// `fetch.max_fragment_bytes`, at least 1.
    pub max_fragment_bytes: usize,
    /// `fetch.max_layout_bytes`, at least 1.
    pub max_layout_bytes: usize,
    /// `fetch.max_page_bytes`, at least 1.
    pub max_page_bytes: usize,
    /// `fetch.max_concurrent_per_page`, at least 1.
    pub max_concurrent_per_page: usize,
    /// `fetch.max_concurrent`, at least 1.
    pub max_concurrent: usize,
    /// `fetch.pool_idle_per_host`.
    pub pool_idle_per_host: usize,
    /// `fetch.pool_idle_timeout_ms`, not zero.
    pub pool_idle_timeout: Duration,
    /// `fetch.origin_http2`; only with an `http` origin.
    pub origin_http2: bool,
    /// `fetch.forward_headers`, lowercase, in the file's order; none of them is one the proxy
    /// never forwards (`Cookie`, `Authorization`, hop-by-hop ...).
    pub forward_headers: Vec<HeaderName>,
    /// `fetch.hosts`: none is the origin, none is listed twice.
    pub hosts: Vec<HostSettings>,
    /// `fetch.ca_certs`: files that existed when the config was validated (their PEM is read
    /// and parsed when the HTTP client is built).
    pub ca_certs: Vec<std::path::PathBuf>,
    /// `fetch.breaker`: the circuit breaker of the origin and of every host without its own.
    pub breaker: BreakerSettings,
}

/// A host's circuit breaker, validated: `[fetch.breaker]`, or a `[[fetch.hosts]]` entry's
/// `breaker` over it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSettings {
    /// `enabled`.
    pub enabled: bool,
    /// `failures`, at least 1.
    pub failures: u32,
    /// `open_ms`, not zero.
    pub open: Duration,
    /// `max_open_ms`, at least `open`.
    pub max_open: Duration,
}

/// One `[[fetch.hosts]]` entry, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSettings {
    /// `url`: scheme, lowercase host and port (explicit or the scheme's default).
    pub url: BaseUrl,
    /// `trusted`.
    pub trusted: bool,
    /// `esi`: whether the host's ESI is processed when it is not trusted.
    pub esi: bool,
    /// `private_network`.
    pub private_network: bool,
    /// `http2`; only on an `http` host.
    pub http2: bool,
    /// `breaker` over `fetch.breaker`: this host's circuit breaker.
    pub breaker: BreakerSettings,
}

/// `[cache]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSettings {
    /// `cache.enabled`.
    pub enabled: bool,
    /// `cache.fragment_capacity_bytes`; at least 1 while the cache is enabled.
    pub fragment_capacity_bytes: u64,
    /// `cache.layout_capacity_bytes`.
    pub layout_capacity_bytes: u64,
    /// `cache.default_ttl_s`; zero stores nothing.
    pub default_ttl: Duration,
    /// `cache.stale_while_revalidate_s`.
    pub stale_while_revalidate: Duration,
    /// `cache.stale_if_error_s`.
    pub stale_if_error: Duration,
    /// `cache.hit_for_pass_s`.
    pub hit_for_pass: Duration,
    /// `cache.max_surrogate_key_bytes`.
    pub max_surrogate_key_bytes: usize,
    /// `cache.max_surrogate_keys`.
    pub max_surrogate_keys: usize,
    /// `cache.max_surrogate_index_entries`.
    pub max_surrogate_index_entries: usize,
    /// `cache.soft_purge_grace_s`.
    pub soft_purge_grace: Duration,
    /// `cache.key_headers`, lowercase, in the file's order.
    pub key_headers: Vec<HeaderName>,
    /// `cache.rules`, first match wins.
    pub rules: Vec<CacheRuleSettings>,
    /// `[cache.shared]`; `None` when `cache.shared.url` is empty.
    pub shared: Option<SharedSettings>,
}

/// `[cache.shared]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedSettings {
    /// `cache.shared.url`: a `redis`, `rediss`, `redis+unix` or `unix` URL.
    pub url: String,
    /// `cache.shared.key_prefix`.
    pub key_prefix: String,
    /// `cache.shared.timeout_ms`, at least 1.
    pub timeout: Duration,
    /// `cache.shared.connect_timeout_ms`, at least 1.
    pub connect_timeout: Duration,
    /// `cache.shared.pool_size`, at least 1.
    pub pool_size: usize,
    /// `cache.shared.lease_ms`, at least 1.
    pub lease: Duration,
    /// `cache.shared.breaker_failures`, at least 1.
    pub breaker_failures: u32,
    /// `cache.shared.breaker_open_ms`.
    pub breaker_open: Duration,
    /// `cache.shared.compress_min_bytes`.
    pub compress_min_bytes: usize,
}

/// One `[[cache.rules]]` entry, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheRuleSettings {
    /// `match`: a glob for [`glob_match`](super::glob_match), not empty.
    pub pattern: String,
    /// `ttl_s`; zero stores nothing.
    pub ttl: Duration,
    /// `stale_while_revalidate_s`; `None` leaves the response's (or the default) in force.
    pub stale_while_revalidate: Option<Duration>,
    /// `stale_if_error_s`; `None` leaves the response's (or the default) in force.
    pub stale_if_error: Option<Duration>,
    /// `key_headers`, lowercase, in the file's order.
    pub key_headers: Vec<HeaderName>,
}

/// `server.log_format`: how log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// `"text"`: human-readable lines.
    Text,
    /// `"json"`: one JSON object per line.
    Json,
}

/// `esi.on_error`: what a failed include with no `alt`, `onerror` or `esi:try` yields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// `"empty"`: an empty slot, logged and counted.
    Empty,
    /// `"fail"`: 502 before the headers are sent, else the connection is aborted.
    Fail,
}

/// `esi.cookie_names`: which cookies `$(HTTP_COOKIE{name})` may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CookieNames {
    /// The list holds `"*"`: every cookie.
    All,
    /// Only these names, compared exactly (an empty list: none).
    Only(Vec<String>),
}

/// `esi.header_names`: which request headers `$(HTTP_<NAME>)` may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderNames {
    /// The list holds `"*"`: every header but the credentials, which must be listed by name.
    All,
    /// Only these names, lowercase (an empty list: none).
    Only(Vec<String>),
}

// === impl Config ===

impl Config {
    /// Validates and returns the typed view. Problems are reported as by [`Config::validate`].
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] listing each problem.
    pub fn settings(&self) -> Result<Settings, ConfigError> {
        self.settings_source("<config>", None)
    }

    /// [`Config::settings`], with lines looked up in the file's text when there is one.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] listing each problem, in the order of the file.
    pub fn settings_source(&self, path: &str, text: Option<&str>) -> Result<Settings, ConfigError> {
        validate::settings(self, path, text)
    }
}

// === impl LogFormat ===

impl LogFormat {
    /// Every format, by its name in the file.
    pub const CHOICES: &'static [(&'static str, LogFormat)] =
        &[("text", LogFormat::Text), ("json", LogFormat::Json)];

    /// The name in the file.
    pub fn name(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

// === impl OnError ===

impl OnError {
    /// Every policy, by its name in the file.
    pub const CHOICES: &'static [(&'static str, OnError)] =
        &[("empty", OnError::Empty), ("fail", OnError::Fail)];

    /// The name in the file.
    pub fn name(self) -> &'static str {
        match self {
            OnError::Empty => "empty",
            OnError::Fail => "fail",
        }
    }
}

impl fmt::Display for OnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

// === impl CookieNames ===

impl CookieNames {
    /// From the list in the file: `"*"` anywhere in it means every cookie.
    pub fn from_list(names: &[String]) -> CookieNames {
        if names.iter().any(|n| n == "*") {
            CookieNames::All
        } else {
            CookieNames::Only(names.to_vec())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{parse_base_url, Scheme};

    fn settings_of(text: &str) -> Settings {
        Config::parse(text, Path::new("f.toml"))
            .expect(text)
            .settings_source("f.toml", Some(text))
            .unwrap_or_else(|e| panic!("{text:?}: {e}"))
    }

    fn names(names: &[&'static str]) -> Vec<HeaderName> {
        names.iter().map(|n| HeaderName::from_static(n)).collect()
    }

    /// Every field of the default config, written out: a field added to the schema must be
    /// added here too.
    #[test]
    fn defaults_convert() {
        let want = Settings {
            server: ServerSettings {
                listen: "127.0.0.1:8080".parse().expect("address"),
                origin: BaseUrl {
                    scheme: Scheme::Http,
                    host: "127.0.0.1".into(),
                    port: 8081,
                },
                max_header_bytes: 16384,
                shutdown_grace: Duration::from_secs(10),
                admin_token: None,
                log_format: LogFormat::Text,
                config_poll: Some(Duration::from_secs(1)),
                admin_from_loopback: false,
                admin_listen: None,
                access_log: true,
                site_names: Vec::new(),
                trusted_proxies: Vec::new(),
                max_connections: 10_000,
                header_read_timeout: Duration::from_secs(30),
                keep_alive_timeout: Some(Duration::from_secs(30)),
                send_timeout: Duration::from_secs(30),
                request_body_timeout: Duration::from_secs(60),
            },
            esi: EsiSettings {
                process_paths: Vec::new(),
                shareable_paths: Vec::new(),
                max_depth: 5,
                max_includes: 256,
                max_nesting: 32,
                on_error: OnError::Empty,
                cookies: CookieNames::All,
                expose_cookie_header: false,
                headers: HeaderNames::All,
                raw_vars: false,
                max_expr_evaluations: 100_000,
                max_expr_value_bytes: 64 * 1024,
                max_expr_list_items: 1000,
                max_pattern_bytes: 64 * 1024,
                max_foreach_iterations: 1000,
                max_function_depth: 10,
                head_window_paths: Vec::new(),
                head_window_bytes: 64 * 1024,
                max_head_hold: Duration::from_millis(500),
                primary_error_pages: ErrorPages::default(),
            },
            fetch: FetchSettings {
                connect_timeout: Duration::from_secs(1),
                fragment_timeout: Duration::from_secs(2),
                layout_timeout: Duration::from_secs(10),
                page_timeout: Duration::from_secs(10),
                max_fragment_bytes: 1 << 20,
                max_layout_bytes: 8 << 20,
                max_page_bytes: 32 << 20,
                max_concurrent_per_page: 256,
                max_concurrent: 4096,
                pool_idle_per_host: 256,
                pool_idle_timeout: Duration::from_secs(90),
                origin_http2: false,
                forward_headers: names(&["accept-language", "user-agent"]),
                hosts: Vec::new(),
                ca_certs: Vec::new(),
                breaker: BreakerSettings {
                    enabled: true,
                    failures: 5,
                    open: Duration::from_secs(10),
                    max_open: Duration::from_secs(300),
                },
            },
            cache: CacheSettings {
                enabled: true,
                fragment_capacity_bytes: 256 << 20,
                layout_capacity_bytes: 64 << 20,
                default_ttl: Duration::ZERO,
                stale_while_revalidate: Duration::ZERO,
                stale_if_error: Duration::ZERO,
                hit_for_pass: Duration::from_secs(30),
                max_surrogate_key_bytes: 256,
                max_surrogate_keys: 64,
                max_surrogate_index_entries: 1_000_000,
                soft_purge_grace: Duration::from_secs(10),
                key_headers: Vec::new(),
                rules: Vec::new(),
                shared: None,
            },
            hints: HintSettings {
                enabled: true,
                early_hints: true,
                max_links: 16,
                max_bytes: 4096,
                max_pages: 10_000,
            },
        };
        assert_eq!(Config::default().settings().expect("valid"), want);
        assert_eq!(settings_of(""), want, "an empty file");
    }

    /// `(toml, the duration read from the settings, wanted)`.
    type DurationCase = (
        &'static str,
        fn(&Settings) -> Option<Duration>,
        Option<Duration>,
    );

    const fn ms(n: u64) -> Option<Duration> {
        Some(Duration::from_millis(n))
    }

    const fn s(n: u64) -> Option<Duration> {
        Some(Duration::from_secs(n))
    }

    const RULE: &str = "[[cache.rules]]\nmatch = \"/a/*\"\nttl_s = 60\n";

    const DURATIONS: &[DurationCase] = &[
        (
            "server.shutdown_grace_ms = 250",
            |s| Some(s.server.shutdown_grace),
            ms(250),
        ),
        (
            "server.shutdown_grace_ms = 0",
            |s| Some(s.server.shutdown_grace),
            ms(0),
        ),
        (
            "server.config_poll_ms = 1500",
            |s| s.server.config_poll,
            ms(1500),
        ),
        ("server.config_poll_ms = 0", |s| s.server.config_poll, None),
        (
            "fetch.connect_timeout_ms = 5",
            |s| Some(s.fetch.connect_timeout),
            ms(5),
        ),
        (
            "fetch.pool_idle_timeout_ms = 2500",
            |s| Some(s.fetch.pool_idle_timeout),
            ms(2500),
        ),
        (
            "fetch.fragment_timeout_ms = 7",
            |s| Some(s.fetch.fragment_timeout),
            ms(7),
        ),
        (
            "fetch.layout_timeout_ms = 9",
            |s| Some(s.fetch.layout_timeout),
            ms(9),
        ),
        (
            "fetch.page_timeout_ms = 3000",
            |s| Some(s.fetch.page_timeout),
            ms(3000),
        ),
        (
            "cache.default_ttl_s = 60",
            |s| Some(s.cache.default_ttl),
            s(60),
        ),
        (
            "cache.stale_while_revalidate_s = 5",
            |s| Some(s.cache.stale_while_revalidate),
            s(5),
        ),
        (
            "cache.stale_if_error_s = 600",
            |s| Some(s.cache.stale_if_error),
            s(600),
        ),
        (
            "cache.hit_for_pass_s = 0",
            |s| Some(s.cache.hit_for_pass),
            s(0),
        ),
        (RULE, |s| Some(s.cache.rules[0].ttl), s(60)),
        (RULE, |s| s.cache.rules[0].stale_while_revalidate, None),
        (RULE, |s| s.cache.rules[0].stale_if_error, None),
        (
            "[[cache.rules]]\nmatch = \"*\"\nttl_s = 0\nstale_while_revalidate_s = 4\n",
            |s| s.cache.rules[0].stale_while_revalidate,
            s(4),
        ),
        (
            "[[cache.rules]]\nmatch = \"*\"\nttl_s = 0\nstale_if_error_s = 86400\n",
            |s| s.cache.rules[0].stale_if_error,
            s(86400),
        ),
    ];

    #[test]
    fn durations_keep_their_unit() {
        for (text, read, want) in DURATIONS {
            assert_eq!(read(&settings_of(text)), *want, "{text:?}");
        }
    }

    #[test]
    fn every_choice() {
        for (text, want) in [
            ("server.log_format = \"text\"", LogFormat::Text),
            ("server.log_format = \"json\"", LogFormat::Json),
        ] {
            assert_eq!(settings_of(text).server.log_format, want, "{text:?}");
        }
        for (text, want) in [
            ("esi.on_error = \"empty\"", OnError::Empty),
            ("esi.on_error = \"fail\"", OnError::Fail),
        ] {
            assert_eq!(settings_of(text).esi.on_error, want, "{text:?}");
        }
        let only = |names: &[&str]| CookieNames::Only(names.iter().map(|&n| n.into()).collect());
        for (text, want) in [
            ("esi.cookie_names = [\"*\"]", CookieNames::All),
            ("esi.cookie_names = [\"sid\", \"*\"]", CookieNames::All),
            (
                "esi.cookie_names = [\"sid\", \"lang\"]",
                only(&["sid", "lang"]),
            ),
            ("esi.cookie_names = []", only(&[])),
        ] {
            assert_eq!(settings_of(text).esi.cookies, want, "{text:?}");
        }
        let only = |names: &[&str]| HeaderNames::Only(names.iter().map(|&n| n.into()).collect());
        for (text, want) in [
            ("esi.header_names = [\"*\"]", HeaderNames::All),
            ("esi.header_names = [\"X-Device\", \"*\"]", HeaderNames::All),
            (
                "esi.header_names = [\"X-Device\", \"authorization\"]",
                only(&["x-device", "authorization"]),
            ),
            ("esi.header_names = []", only(&[])),
        ] {
            assert_eq!(settings_of(text).esi.headers, want, "{text:?}");
        }
        for (text, want) in [
            ("server.admin_token = \"\"", None),
            ("server.admin_token = \"s3cret\"", Some("s3cret".to_owned())),
        ] {
            assert_eq!(settings_of(text).server.admin_token, want, "{text:?}");
        }
    }

    #[test]
    fn choice_names_round_trip() {
        for &(name, value) in LogFormat::CHOICES {
            assert_eq!(value.name(), name);
            assert_eq!(value.to_string(), name);
        }
        for &(name, value) in OnError::CHOICES {
            assert_eq!(value.name(), name);
            assert_eq!(value.to_string(), name);
        }
    }

    #[test]
    fn addresses_urls_and_header_names_are_parsed() {
        let text = "[server]\nlisten = \"[::1]:9000\"\norigin = \"HTTPS://Gateway.Example\"\n\
                    [fetch]\nforward_headers = [\"Accept-Language\", \"X-Device\"]\n\
                    [[fetch.hosts]]\nurl = \"http://frag.example:8000/\"\ntrusted = true\n\
                    [fetch.breaker]\nfailures = 3\nopen_ms = 500\n\
                    [[fetch.hosts]]\nurl = \"http://10.0.0.7\"\nesi = true\nprivate_network = true\n\
                    breaker = { enabled = false, max_open_ms = 9000 }\n\
                    [cache]\nkey_headers = [\"X-Device\", \"accept-language\"]\n\
                    [[cache.rules]]\nmatch = \"/cart/*\"\nttl_s = 0\nkey_headers = [\"Cookie\"]\n";
        let got = settings_of(text);
        assert_eq!(got.server.listen, "[::1]:9000".parse().expect("address"));
        let base = |s: &str| parse_base_url(s).expect("base URL");
        assert_eq!(got.server.origin, base("https://gateway.example:443"));
        let breaker = BreakerSettings {
            enabled: true,
            failures: 3,
            open: Duration::from_millis(500),
            max_open: Duration::from_secs(300),
        };
        assert_eq!(got.fetch.breaker, breaker);
        assert_eq!(
            got.fetch.forward_headers,
            names(&["accept-language", "x-device"])
        );
        assert_eq!(
            got.fetch.hosts,
            [
                HostSettings {
                    url: base("http://frag.example:8000"),
                    trusted: true,
                    esi: false,
                    private_network: false,
                    http2: false,
                    breaker,
                },
                HostSettings {
                    url: base("http://10.0.0.7:80"),
                    trusted: false,
                    esi: true,
                    private_network: true,
                    http2: false,
                    breaker: BreakerSettings {
                        enabled: false,
                        max_open: Duration::from_secs(9),
                        ..breaker
                    },
                },
            ]
        );
        assert_eq!(
            got.cache.key_headers,
            names(&["x-device", "accept-language"])
        );
        assert_eq!(got.cache.rules[0].pattern, "/cart/*");
        assert_eq!(got.cache.rules[0].key_headers, names(&["cookie"]));
    }

    /// `(toml, wanted problems as "line: field: message")`: a value the typed view cannot hold
    /// is a validation problem with its line, never a panic or a silent drop.
    const REFUSED: &[(&str, &[&str])] = &[
        (
            "[cache]\nkey_headers = [\n  \"x-ok\",\n  \"bad name\",\n]\n",
            &["4: cache.key_headers[1]: \"bad name\" is not a header name"],
        ),
        (
            "[[cache.rules]]\nmatch = \"*\"\nttl_s = 1\nkey_headers = [\"a:b\"]\n",
            &["4: cache.rules[0].key_headers[0]: \"a:b\" is not a header name"],
        ),
        (
            "[fetch]\nforward_headers = [\n  \"bad\\nname\",\n  \"Authorization\",\n]\n",
            &[
                "3: fetch.forward_headers[0]: \"bad\\nname\" is not a header name",
                "4: fetch.forward_headers[1]: \"Authorization\" is never forwarded to fragments",
            ],
        ),
        (
            "[server]\nlog_format = \"JSON\"\n[esi]\non_error = \"continue\"\n",
            &[
                "2: server.log_format: \"JSON\": expected \"text\" or \"json\"",
                "4: esi.on_error: \"continue\": expected \"empty\" or \"fail\"",
            ],
        ),
        (
            "[server]\nlisten = \"*:80\"\norigin = \"ftp://x\"\n",
            &[
                "2: server.listen: \"*:80\" is not an address like 127.0.0.1:8080",
                "3: server.origin: \"ftp://x\": scheme must be http or https",
            ],
        ),
    ];

    #[test]
    fn refused_values_are_problems_with_their_line() {
        for (text, want) in REFUSED {
            let config = Config::parse(text, Path::new("f.toml")).expect(text);
            let err = config
                .settings_source("f.toml", Some(text))
                .expect_err(text);
            let want: Vec<String> = want.iter().map(|w| format!("f.toml:{w}")).collect();
            let got: Vec<String> = err.to_string().lines().map(str::to_owned).collect();
            assert_eq!(got, want, "{text:?}");
            let again = config
                .validate_source("f.toml", Some(text))
                .expect_err(text);
            assert_eq!(
                again.to_string(),
                err.to_string(),
                "validate agrees: {text:?}"
            );
        }
    }
}
