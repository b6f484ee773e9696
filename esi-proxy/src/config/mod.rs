//! Configuration: the serde TOML schema with every field's documented default, and
//! `Config::load`/`Config::parse`. Spans for file:line:field errors live in `source`, the error
//! types in `error`, the checks in `validate`, which builds the typed view of `settings`, the
//! range of every numeric field in `ranges`, the primary's error pages in `error_pages`, and
//! the `*` matcher in `glob`. Touches no network.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

pub mod base_url;
mod error;
mod error_pages;
mod glob;
mod ranges;
mod settings;
mod source;
mod validate;

pub use base_url::{parse_base_url, BaseUrl, Scheme};
pub use error::{ConfigError, Invalid};
pub use error_pages::{ErrorPages, MAX_ERROR_PAGE_BYTES};
pub use glob::glob_match;
pub use ranges::{range_of, Range, RANGES};
pub use settings::{
    BreakerSettings, CacheRuleSettings, CacheSettings, CookieNames, EsiSettings, FetchSettings,
    HeaderNames, HintSettings, HostSettings, LogFormat, OnError, ServerSettings, Settings,
    SharedSettings,
};

/// The whole configuration. `config/esi-proxy.toml` documents `Config::default()`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Listening, origin and admin settings.
    pub server: ServerConfig,
    /// How ESI is processed.
    pub esi: EsiConfig,
    /// Fetching layouts and fragments: timeouts, limits, hosts and headers.
    pub fetch: FetchConfig,
    /// Caching of fragments and layouts: capacity, TTL rules, stale serving.
    pub cache: CacheConfig,
    /// Preload hints: `Link` headers in the page head and `103 Early Hints`.
    pub hints: HintsConfig,
}

/// `[server]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on. Default: "127.0.0.1:8080".
    pub listen: String,
    /// The gateway that serves layouts and everything not ESI: `http://host:port`.
    /// Default: "http://127.0.0.1:8081".
    pub origin: String,
    /// Largest request head (request line and headers) accepted; larger gets 431. Default: 16384.
    pub max_header_bytes: usize,
    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish. Default: 10000.
    pub shutdown_grace_ms: u64,
    /// Token for the admin endpoints that change or reveal state (`Authorization: Bearer ...`),
    /// consumed by the proxy: never forwarded. Empty: nobody has it (see
    /// `admin_from_loopback`). Default: "".
    pub admin_token: String,
    /// Log format: "text" or "json". Default: "text".
    pub log_format: String,
    /// How often the config file is checked for changes, which are then reloaded; 0 reloads
    /// on SIGHUP only. Default: 1000.
    pub config_poll_ms: u64,
    /// Whether loopback clients are admins without the token (metrics, purge, debug, health
    /// details); an opt-in for a proxy whose loopback is not shared. Default: false.
    pub admin_from_loopback: bool,
    /// Address of a separate listener for the admin endpoints under `/_esi/`, which the public
    /// listener then no longer serves (404). Empty: they are served on `listen`. Fixed at
    /// start. Default: "".
    pub admin_listen: String,
    /// Whether every request is logged at `info` when its response ends (method, path,
    /// status, route, bytes, milliseconds). Default: true.
    pub access_log: bool,
    /// The host names this site answers to, as clients send them in `Host` (`name` or
    /// `name:port`, compared without case). A request for any other host gets 421 before
    /// anything is fetched. Set: the origin and fragments are told the host in
    /// `X-Forwarded-Host`, and cache keys hold it. Empty: any host is served and no
    /// `X-Forwarded-Host` is sent. Default: [].
    pub site_names: Vec<String>,
    /// Peers whose forwarding headers are believed: CIDR ranges (`10.0.0.0/8`) or addresses.
    /// From them the incoming `X-Forwarded-For` is kept with the peer appended, and
    /// `X-Forwarded-Proto`, `X-Forwarded-Host` and `Forwarded` are kept; from anyone else they
    /// are replaced (`Forwarded` dropped). Default: [].
    pub trusted_proxies: Vec<String>,
    /// Most client connections open at once on each listener. At the bound, the proxy stops
    /// accepting: further connections wait in the kernel's listen backlog until one closes.
    /// Fixed at start. Default: 10000.
    pub max_connections: usize,
    /// Deadline for a request head (request line and headers) to arrive whole, counted from the
    /// connection's start or from the first byte after a keep-alive wait; the connection is
    /// closed when it passes. Default: 30000.
    pub header_read_timeout_ms: u64,
    /// How long a kept-alive connection may wait for the first byte of its next request before
    /// it is closed; 0 closes every connection after one response. Default: 30000.
    pub keep_alive_timeout_ms: u64,
    /// How long one write to a client may stay blocked (the client reads nothing) before the
    /// connection is dropped and its response freed. Default: 30000.
    pub send_timeout_ms: u64,
    /// Deadline for a request body to arrive whole, counted from the end of its head; when it
    /// passes, the body is cut off, the origin request aborted and the connection closed.
    /// Default: 60000.
    pub request_body_timeout_ms: u64,
}

/// `[esi]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EsiConfig {
    /// Path globs (`*` matches any run of characters) whose HTML responses are processed even
    /// without `Surrogate-Control: content="ESI/1.0"`. Default: [] (only marked responses).
    pub process_paths: Vec<String>,
    /// Path globs (as `process_paths`) whose composed pages keep the layout's `Cache-Control`
    /// (shared caches may store them) when the request carries no `Cookie` or `Authorization`.
    /// Every other composed page leaves as `Cache-Control: private`. Default: [].
    pub shareable_paths: Vec<String>,
    /// How deep fragments that are themselves ESI are composed, at most 20. Default: 5.
    pub max_depth: usize,
    /// Most includes composed for one page, nested ones included. Default: 256.
    pub max_includes: usize,
    /// Deepest nesting of ESI elements in one document. Default: 32.
    pub max_nesting: usize,
    /// What a failed include with no `alt`, `onerror` or `esi:try` yields: "empty" (an empty
    /// slot, logged and counted) or "fail" (502 before the headers are sent, else the
    /// connection is aborted). Default: "empty".
    pub on_error: String,
    /// Cookie names `$(HTTP_COOKIE{name})` may read; `["*"]` means all. Default: ["*"].
    pub cookie_names: Vec<String>,
    /// Whether `$(HTTP_COOKIE)` may read the whole Cookie header. Default: false.
    pub expose_cookie_header: bool,
    /// Request headers `$(HTTP_<NAME>)` may read (`$(HTTP_X_DEVICE)` reads `X-Device`);
    /// `["*"]` means every header but `Authorization` and `Proxy-Authorization`, which are
    /// read only when listed by name. `Cookie` is `$(HTTP_COOKIE)`'s, under `cookie_names`.
    /// Default: ["*"].
    pub header_names: Vec<String>,
    /// Write variables into pages and URLs without HTML-escaping or percent-encoding.
    /// Default: false.
    pub raw_vars: bool,
    /// Expression nodes evaluated per page (tests, assignments, function calls), 1 to
    /// 10000000. Default: 100000.
    pub max_expr_evaluations: u64,
    /// Longest string an expression may build, in bytes, 16 to 16777216. Default: 65536.
    pub max_expr_value_bytes: usize,
    /// Most items in a list or dictionary an expression builds, and variables a document
    /// assigns, 1 to 1000000. Default: 1000.
    pub max_expr_list_items: usize,
    /// Largest compiled regular expression built while a page is composed, in bytes, 1024 to
    /// 16777216. Default: 65536.
    pub max_pattern_bytes: usize,
    /// Most iterations of one `esi:foreach`, 1 to 100000. Default: 1000.
    pub max_foreach_iterations: usize,
    /// Deepest nesting of calls of document-defined functions, 1 to 64. Default: 10.
    pub max_function_depth: usize,
    /// Path globs (as `process_paths`) whose streamed layouts open the head window: the head is
    /// held for a `primary` include or a response function still to come, within
    /// `head_window_bytes` and `max_head_hold_ms`. Elsewhere a streamed layout's head is decided
    /// when the first part of the page is ready. Default: [] (no window).
    pub head_window_paths: Vec<String>,
    /// The head window's byte bound (on `head_window_paths`): while the layout's own output
    /// (literal text and `esi:vars`) is under this many bytes and the layout is not complete,
    /// the head is held; 0 to 16777216. Default: 65536.
    pub head_window_bytes: usize,
    /// The longest the head window holds the first byte, in milliseconds from the request;
    /// a primary include holds it up to its own deadline. 0 to 60000. Default: 500.
    pub max_head_hold_ms: u64,
    /// Pages sent instead of a primary fragment's body when it answers 4xx/5xx or fails
    /// (the page is then a 502/504): keys are a status (`"404"`) or a class (`"4xx"`, `"5xx"`),
    /// values HTML files (UTF-8, at most 1 MiB), read at start and at every reload. Default: {}.
    pub primary_error_pages: BTreeMap<String, String>,
}

/// `[fetch]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FetchConfig {
    /// Deadline to connect to the origin or a fragment host. Default: 1000.
    pub connect_timeout_ms: u64,
    /// Deadline for a whole fragment (headers and body) unless the tag sets `maxwait`; at most
    /// `page_timeout_ms`. Default: 2000.
    pub fragment_timeout_ms: u64,
    /// Deadline for the layout's response headers from the origin. Default: 10000.
    pub layout_timeout_ms: u64,
    /// Deadline for a whole composed page; what is not done by then takes its fallback.
    /// Default: 10000.
    pub page_timeout_ms: u64,
    /// Largest fragment body after decoding. Default: 1048576.
    pub max_fragment_bytes: usize,
    /// Largest layout body after decoding. Default: 8388608.
    pub max_layout_bytes: usize,
    /// Largest composed page sent to a client. Default: 33554432.
    pub max_page_bytes: usize,
    /// Most fragment fetches in flight for one page. Default: 256.
    pub max_concurrent_per_page: usize,
    /// Most fragment fetches in flight in the whole process. Default: 4096.
    pub max_concurrent: usize,
    /// Idle keep-alive connections kept per host. Default: 256.
    pub pool_idle_per_host: usize,
    /// Milliseconds a kept-alive connection (or an HTTP/2 connection carrying no stream) may
    /// wait idle before it is closed. Default: 90000.
    pub pool_idle_timeout_ms: u64,
    /// Whether fragment requests to an `http` origin go over HTTP/2 with prior knowledge
    /// (h2c), sharing connections as streams; layouts and pass-through stay HTTP/1.1.
    /// Default: false.
    pub origin_http2: bool,
    /// Client request headers forwarded to fragments (lowercase names). `Cookie` and
    /// `Authorization` are never listed here: they go to trusted hosts only.
    /// Default: ["accept-language", "user-agent"].
    pub forward_headers: Vec<String>,
    /// Fragment hosts other than the origin that includes may name. Default: [].
    pub hosts: Vec<HostConfig>,
    /// PEM files of CA certificates trusted for `https` origins and fragment hosts, besides
    /// the built-in roots (an internal CA). Default: [].
    pub ca_certs: Vec<String>,
    /// Circuit breakers per fragment host (`host:port`), for every host without its own.
    pub breaker: BreakerConfig,
}

/// `[fetch.breaker]`: when a fragment host's breaker opens, and for how long.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Whether fragment hosts get circuit breakers at all. Default: true.
    pub enabled: bool,
    /// Consecutive failures (connect errors, timeouts, cut or malformed responses, 5xx) that
    /// open a host's breaker; at least 1. Default: 5.
    pub failures: u64,
    /// How long a breaker stays open before one probe request may go through, in
    /// milliseconds; doubled each time a probe fails. Default: 10000.
    pub open_ms: u64,
    /// The longest a breaker stays open, however often its probes failed; at least `open_ms`.
    /// Default: 300000.
    pub max_open_ms: u64,
}

/// `breaker` of a `[[fetch.hosts]]` entry: the host's own values, each one unset taken from
/// `[fetch.breaker]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostBreakerConfig {
    /// As `fetch.breaker.enabled`. Default: unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// As `fetch.breaker.failures`. Default: unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failures: Option<u64>,
    /// As `fetch.breaker.open_ms`. Default: unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_ms: Option<u64>,
    /// As `fetch.breaker.max_open_ms`. Default: unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_open_ms: Option<u64>,
}

/// One `[[fetch.hosts]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// `scheme://host:port` (the port may be left out for the scheme's default). Required.
    pub url: String,
    /// Whether this host receives the client's `Cookie` and `Authorization`. Default: false.
    #[serde(default)]
    pub trusted: bool,
    /// Whether ESI in this host's responses is processed although the host is not `trusted`
    /// (a trusted host's always is). Its variables then see no cookies and its includes are
    /// fetched without credentials. Default: false: an untrusted host's ESI is placed as
    /// literal bytes, like a fragment that is not ESI.
    #[serde(default)]
    pub esi: bool,
    /// Whether this host may resolve to loopback, private or link-local addresses (a host
    /// written as such an IP address is allowed to by being listed). Default: false.
    #[serde(default)]
    pub private_network: bool,
    /// Whether this `http` host is spoken to over HTTP/2 with prior knowledge (h2c): its
    /// fragment requests share connections as streams instead of taking one each. Default:
    /// false (HTTP/1.1).
    #[serde(default)]
    pub http2: bool,
    /// This host's circuit breaker, where it differs from `[fetch.breaker]`. Default: unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breaker: Option<HostBreakerConfig>,
}

/// `[cache]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Whether fragments and layouts are cached (`serve --no-cache` turns it off). Default: true.
    pub enabled: bool,
    /// Bytes of fragment responses kept: bodies, kept headers and keys (an ESI fragment also
    /// counts 768 bytes and its URL's length per include tag, for its parsed form). Default:
    /// 268435456.
    pub fragment_capacity_bytes: u64,
    /// Bytes of parsed layouts kept: bodies, kept headers, keys and per include 768 bytes and
    /// the layout URL's length. Default: 67108864.
    pub layout_capacity_bytes: u64,
    /// TTL in seconds when neither a rule nor the response's headers give one; 0 stores
    /// nothing. Default: 0.
    pub default_ttl_s: u64,
    /// Seconds an expired entry may still be served while one background fetch refreshes it,
    /// when the response gives no `stale-while-revalidate`. Default: 0.
    pub stale_while_revalidate_s: u64,
    /// Seconds an expired entry may still be served when a fresh fetch fails, when the
    /// response gives no `stale-if-error`. Default: 0.
    pub stale_if_error_s: u64,
    /// Seconds a URL whose response could not be stored is fetched without waiting on other
    /// requests for it (no coalescing). Default: 30.
    pub hit_for_pass_s: u64,
    /// Longest surrogate key kept from a `Surrogate-Key` or `xkey` header, in bytes; longer
    /// keys are dropped and counted. Default: 256.
    pub max_surrogate_key_bytes: usize,
    /// Most surrogate keys kept per response; the rest are dropped and counted. Default: 64.
    pub max_surrogate_keys: usize,
    /// Most (key, entry) pairs the surrogate-key index of each cache (fragments, layouts)
    /// holds; a tagged response the full index cannot take is not stored. Applies on restart.
    /// Default: 1000000.
    pub max_surrogate_index_entries: usize,
    /// Seconds a soft-purged entry is served stale while one fetch refreshes it, when its own
    /// stale-while-revalidate window is shorter. Default: 10.
    pub soft_purge_grace_s: u64,
    /// Request headers (lowercase) that are part of every cache key. Default: [].
    pub key_headers: Vec<String>,
    /// TTL rules, first match wins; a rule beats the response's own headers. Default: [].
    pub rules: Vec<CacheRule>,
    /// The shared tier on Redis below the in-process caches (`serve --redis URL`).
    pub shared: SharedCacheConfig,
}

/// `[cache.shared]`: the shared L2 tier on Redis (or a server speaking its protocol).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SharedCacheConfig {
    /// `redis://[user:password@]host:port[/db]`, `rediss://` for TLS, or
    /// `redis+unix:///path`; empty: no shared tier. Default: "".
    pub url: String,
    /// Prefix of every key and channel this tier uses, so several sites can share one
    /// server. Default: "esi:".
    pub key_prefix: String,
    /// Deadline of each Redis call; past it the call counts as failed and the request goes
    /// on without the shared tier. Default: 5.
    pub timeout_ms: u64,
    /// Deadline of connecting (and reconnecting) to Redis. Default: 1000.
    pub connect_timeout_ms: u64,
    /// Multiplexed connections calls are spread over. Default: 2.
    pub pool_size: usize,
    /// How long the node that fetches a cold fragment for the cluster holds its lease; a node
    /// that dies mid-fetch releases the key after it. Default: 3000.
    pub lease_ms: u64,
    /// Consecutive failed calls after which the tier is skipped. Default: 5.
    pub breaker_failures: u64,
    /// How long the tier is skipped before one probe call tries it again. Default: 1000.
    pub breaker_open_ms: u64,
    /// Bodies of at least this many bytes are stored deflated, when that makes them
    /// smaller. Default: 1024.
    pub compress_min_bytes: usize,
}

/// `[hints]`: preload hints from the layout and the fragments, sent in the page head and as a
/// `103 Early Hints` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HintsConfig {
    /// Whether `Link: rel=preload|preconnect|modulepreload` headers of the layout and the
    /// fragments are collected and added to the composed page's head. Default: true.
    pub enabled: bool,
    /// Whether an HTTP/1.1 GET for a page composed before gets a `103 Early Hints` response
    /// with that composition's hints while the layout is fetched. Default: true.
    pub early_hints: bool,
    /// Most hints one page head (and one 103) carries. Default: 16.
    pub max_links: usize,
    /// Most bytes of hint values one page head (and one 103) carries. Default: 4096.
    pub max_bytes: usize,
    /// Pages whose last composition's hints are remembered for their 103; 0 remembers none
    /// (and sends no 103). Default: 10000.
    pub max_pages: u64,
}

/// One `[[cache.rules]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheRule {
    /// Glob over `host:port/path` (or over the path alone when it starts with `/`); `*`
    /// matches any run of characters. Required.
    #[serde(rename = "match")]
    pub pattern: String,
    /// TTL in seconds for what the rule matches. Required.
    pub ttl_s: u64,
    /// Stale-while-revalidate window in seconds, overriding the response's. Default: unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_while_revalidate_s: Option<u64>,
    /// Stale-if-error window in seconds, overriding the response's. Default: unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_if_error_s: Option<u64>,
    /// Request headers this rule adds to the key; `cookie` or `authorization` here make
    /// personalised responses cacheable, one entry per user. Default: [].
    #[serde(default)]
    pub key_headers: Vec<String>,
}

// === impl defaults ===

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            origin: "http://127.0.0.1:8081".into(),
            max_header_bytes: 16 * 1024,
            shutdown_grace_ms: 10_000,
            admin_token: String::new(),
            log_format: "text".into(),
            config_poll_ms: 1000,
            admin_from_loopback: false,
            admin_listen: String::new(),
            access_log: true,
            site_names: Vec::new(),
            trusted_proxies: Vec::new(),
            max_connections: 10_000,
            header_read_timeout_ms: 30_000,
            keep_alive_timeout_ms: 30_000,
            send_timeout_ms: 30_000,
            request_body_timeout_ms: 60_000,
        }
    }
}

impl Default for EsiConfig {
    fn default() -> Self {
        Self {
            process_paths: Vec::new(),
            shareable_paths: Vec::new(),
            max_depth: 5,
            max_includes: 256,
            max_nesting: 32,
            on_error: "empty".into(),
            cookie_names: vec!["*".into()],
            expose_cookie_header: false,
            header_names: vec!["*".into()],
            raw_vars: false,
            max_expr_evaluations: 100_000,
            max_expr_value_bytes: 64 * 1024,
            max_expr_list_items: 1000,
            max_pattern_bytes: 64 * 1024,
            max_foreach_iterations: 1000,
            max_function_depth: 10,
            head_window_paths: Vec::new(),
            head_window_bytes: 64 * 1024,
            max_head_hold_ms: 500,
            primary_error_pages: BTreeMap::new(),
        }
    }
}

impl Default for FetchConfig {
    fn default() -> Self {
        Self {
            connect_timeout_ms: 1000,
            fragment_timeout_ms: 2000,
            layout_timeout_ms: 10_000,
            page_timeout_ms: 10_000,
            max_fragment_bytes: 1024 * 1024,
            max_layout_bytes: 8 * 1024 * 1024,
            max_page_bytes: 32 * 1024 * 1024,
            max_concurrent_per_page: 256,
            max_concurrent: 4096,
            pool_idle_per_host: 256,
            pool_idle_timeout_ms: 90_000,
            origin_http2: false,
            forward_headers: vec!["accept-language".into(), "user-agent".into()],
            hosts: Vec::new(),
            ca_certs: Vec::new(),
            breaker: BreakerConfig::default(),
        }
    }
}

impl Default for HintsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            early_hints: true,
            max_links: 16,
            max_bytes: 4096,
            max_pages: 10_000,
        }
    }
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            failures: 5,
            open_ms: 10_000,
            max_open_ms: 300_000,
        }
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            fragment_capacity_bytes: 256 * 1024 * 1024,
            layout_capacity_bytes: 64 * 1024 * 1024,
            default_ttl_s: 0,
            stale_while_revalidate_s: 0,
            stale_if_error_s: 0,
            hit_for_pass_s: 30,
            max_surrogate_key_bytes: 256,
            max_surrogate_keys: 64,
            max_surrogate_index_entries: 1_000_000,
            soft_purge_grace_s: 10,
            key_headers: Vec::new(),
            rules: Vec::new(),
            shared: SharedCacheConfig::default(),
        }
    }
}

impl Default for SharedCacheConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            key_prefix: "esi:".into(),
            timeout_ms: 5,
            connect_timeout_ms: 1000,
            pool_size: 2,
            lease_ms: 3000,
            breaker_failures: 5,
            breaker_open_ms: 1000,
            compress_min_bytes: 1024,
        }
    }
}

// === impl Config ===

impl Config {
    /// Reads, parses and validates a config file.
    ///
    /// # Errors
    /// The file cannot be read, is not TOML, has unknown fields or wrong types (naming file,
    /// line and field), or holds values that fail [`Config::validate`].
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config = Self::parse(&text, path)?;
        config.validate_source(&path.display().to_string(), Some(&text))?;
        Ok(config)
    }

    /// Parses TOML text; `path` is used in error messages only. Does not validate.
    ///
    /// # Errors
    /// Invalid TOML, an unknown field or a value of the wrong type: [`ConfigError::Parse`] with
    /// the line and, when the problem is in a key or value, the dotted field.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| source::parse_error(text, path, &e))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    const DOCUMENTED: &str = include_str!("../../../config/esi-proxy.toml");

    #[test]
    fn documented_file_is_the_default() {
        let config = Config::parse(DOCUMENTED, Path::new("config/esi-proxy.toml"))
            .expect("config/esi-proxy.toml parses");
        assert_eq!(config, Config::default());
        Config::default().validate().expect("the default is valid");
    }

    /// Every field of the schema is written out in the documented file; the `[[fetch.hosts]]`
    /// example, commented out because the default list is empty, counts once uncommented.
    #[test]
    fn documented_file_names_every_field() {
        let example = commented_example(DOCUMENTED, "[[fetch.hosts]]");
        assert!(!example.is_empty(), "no commented [[fetch.hosts]] example");
        let rule = commented_example(DOCUMENTED, "[[cache.rules]]");
        assert!(!rule.is_empty(), "no commented [[cache.rules]] example");
        let text = format!("{DOCUMENTED}\n{example}\n{rule}");
        let config = Config::parse(&text, Path::new("uncommented")).expect("example parses");
        assert_eq!(config.fetch.hosts.len(), 1, "the example has one host");
        let example_host = &config.fetch.hosts[0];
        assert!(
            !example_host.trusted && !example_host.esi && !example_host.private_network,
            "defaults in example"
        );
        config.validate().expect("the uncommented example is valid");

        let file: toml::Value = toml::from_str(&text).expect("TOML");
        let schema = toml::Value::try_from(&config).expect("the schema serializes");
        let (mut in_file, mut in_schema) = (BTreeSet::new(), BTreeSet::new());
        key_paths(&file, "", &mut in_file);
        key_paths(&schema, "", &mut in_schema);
        assert!(
            in_schema.contains("fetch.hosts[].private_network"),
            "{in_schema:?}"
        );
        let missing: Vec<_> = in_schema.difference(&in_file).collect();
        assert!(
            missing.is_empty(),
            "not in config/esi-proxy.toml: {missing:?}"
        );
    }

    /// Every `key = value` line of the documented file (and of its uncommented example) follows
    /// a comment that gives the default (or says the field is required).
    #[test]
    fn documented_file_explains_every_field() {
        let text = format!(
            "{DOCUMENTED}\n{}\n{}",
            commented_example(DOCUMENTED, "[[fetch.hosts]]"),
            commented_example(DOCUMENTED, "[[cache.rules]]")
        );
        let mut comment = String::new();
        for (i, line) in text.lines().enumerate() {
            if let Some(rest) = line.strip_prefix('#') {
                comment.push_str(rest);
            } else if line.contains(" = ") {
                assert!(
                    comment.contains("Default: ") || comment.contains("Required."),
                    "line {}: {line:?} has no comment giving its default",
                    i + 1
                );
                comment.clear();
            } else {
                comment.clear();
            }
        }
    }

    /// Every numeric field's comment in the documented file gives its range as [`RANGES`] has
    /// it, and so does the operator's table in `docs/resilience-config.md`.
    #[test]
    fn documented_file_gives_every_range() {
        const TABLE: &str = include_str!("../../../docs/resilience-config.md");
        let text = format!(
            "{DOCUMENTED}\n{}\n{}",
            commented_example(DOCUMENTED, "[[cache.rules]]"),
            commented_example(DOCUMENTED, "[fetch.hosts.breaker]")
        );
        let mut documented = BTreeSet::new();
        let (mut section, mut comment) = (String::new(), String::new());
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix('#') {
                comment.push_str(rest);
            } else if line.starts_with('[') {
                section = line.trim_matches(['[', ']']).to_owned();
            } else if let Some((key, _)) = line.split_once(" = ") {
                let field = match section.as_str() {
                    "cache.rules" => format!("cache.rules[].{key}"),
                    "fetch.hosts.breaker" => format!("fetch.hosts[].breaker.{key}"),
                    _ => format!("{section}.{key}"),
                };
                if let Some(range) = range_of(&field) {
                    let want = format!("Range: {} to {}", range.min, range.max);
                    assert!(
                        comment.contains(&want),
                        "{field}: no {want:?} in {comment:?}"
                    );
                    documented.insert(range.field);
                }
                comment.clear();
            } else {
                comment.clear();
            }
        }
        for range in RANGES {
            assert!(
                documented.contains(range.field),
                "{}: not documented",
                range.field
            );
            let row = format!("| `{}` | {} | {} |", range.field, range.min, range.max);
            assert!(
                TABLE.contains(&row),
                "docs/resilience-config.md has no row {row:?}"
            );
        }
    }

    /// The `# [[fetch.hosts]]` block and the `# ` lines after it, uncommented.
    fn commented_example(text: &str, header: &str) -> String {
        let mut out = String::new();
        let marker = format!("# {header}");
        let mut lines = text.lines().skip_while(|l| l.trim() != marker);
        for line in lines.by_ref() {
            match line.strip_prefix("# ") {
                Some(rest) => {
                    out.push_str(rest);
                    out.push('\n');
                }
                None => break,
            }
        }
        out
    }

    fn key_paths(value: &toml::Value, prefix: &str, out: &mut BTreeSet<String>) {
        match value {
            toml::Value::Table(table) => {
                for (key, value) in table {
                    let path = if prefix.is_empty() {
                        key.clone()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    out.insert(path.clone());
                    key_paths(value, &path, out);
                }
            }
            toml::Value::Array(items) => {
                for item in items {
                    key_paths(item, &format!("{prefix}[]"), out);
                }
            }
            _ => {}
        }
    }
}
