//! Validation: values that parse but cannot work, every problem collected with its file, line
//! and field (`Problems`), in the order of the file; while checking, it builds the typed
//! [`Settings`], so the two never disagree. Reads the schema; never changes it.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderName;

use super::error_pages;
use super::settings::{
    BreakerSettings, CacheRuleSettings, CacheSettings, CookieNames, EsiSettings, FetchSettings,
    HeaderNames, HintSettings, HostSettings, LogFormat, OnError, ServerSettings, Settings,
    SharedSettings,
};
use super::source::KeyMap;
use super::{BreakerConfig, Config, ConfigError, ErrorPages, HostBreakerConfig, Invalid};

/// Collects problems found by [`Config::validate_source`].
struct Problems<'a> {
    path: &'a str,
    keys: KeyMap,
    found: Vec<Invalid>,
}

// === impl Config ===

impl Config {
    /// Checks values that parse but cannot work, reporting every problem.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] listing each problem.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_source("<config>", None)
    }

    /// [`Config::validate`], with lines looked up in the file's text when there is one.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] listing each problem, in the order of the file.
    pub fn validate_source(&self, path: &str, text: Option<&str>) -> Result<(), ConfigError> {
        settings(self, path, text).map(drop)
    }

    // Each section checks its fields in a fixed order (problems on one line, or not in the
    // file, are reported in the order found) and returns its typed view: `None` when a value
    // it cannot do without did not pass; list entries that did not pass are left out.

    fn validate_server(&self, p: &mut Problems<'_>) -> Option<ServerSettings> {
        let s = &self.server;
        let listen = s
            .listen
            .parse::<SocketAddr>()
            .map_err(|_| format!("{:?} is not an address like 127.0.0.1:8080", s.listen));
        let listen = p.check("server.listen", listen);
        let admin_listen = if s.admin_listen.is_empty() {
            Some(None)
        } else {
            let parsed =
                s.admin_listen.parse::<SocketAddr>().map(Some).map_err(|_| {
                    format!("{:?} is not an address like 127.0.0.1:9090", s.admin_listen)
                });
            p.check("server.admin_listen", parsed)
        };
        let origin = p.check("server.origin", super::parse_base_url(&s.origin));
        if !s.admin_token.bytes().all(|b| b.is_ascii_graphic()) {
            // It is compared with what follows `Bearer ` in a header: a space, newline or
            // non-ASCII character (usually a copy-paste accident) makes it impossible to send.
            let message = "must be printable ASCII with no spaces or newlines".to_owned();
            p.push("server.admin_token", message);
        }
        let log_format = p.check(
            "server.log_format",
            choose(&s.log_format, LogFormat::CHOICES),
        );
        let mut site_names = Vec::new();
        for (i, name) in s.site_names.iter().enumerate() {
            if let Some(name) = p.check(&format!("server.site_names[{i}]"), site_name(name)) {
                site_names.push(name);
            }
        }
        let mut trusted_proxies = Vec::new();
        for (i, range) in s.trusted_proxies.iter().enumerate() {
            let field = format!("server.trusted_proxies[{i}]");
            if let Some(range) = p.check(&field, ip_range(range)) {
                trusted_proxies.push(range);
            }
        }
        Some(ServerSettings {
            listen: listen?,
            origin: origin?,
            max_header_bytes: s.max_header_bytes,
            shutdown_grace: Duration::from_millis(s.shutdown_grace_ms),
            admin_token: Some(s.admin_token.clone()).filter(|t| !t.is_empty()),
            log_format: log_format?,
            config_poll: Some(Duration::from_millis(s.config_poll_ms)).filter(|d| !d.is_zero()),
            admin_from_loopback: s.admin_from_loopback,
            admin_listen: admin_listen?,
            access_log: s.access_log,
            site_names,
            trusted_proxies,
            max_connections: s.max_connections,
            header_read_timeout: Duration::from_millis(s.header_read_timeout_ms),
            keep_alive_timeout: Some(Duration::from_millis(s.keep_alive_timeout_ms))
                .filter(|d| !d.is_zero()),
            send_timeout: Duration::from_millis(s.send_timeout_ms),
            request_body_timeout: Duration::from_millis(s.request_body_timeout_ms),
        })
    }

    fn validate_esi(&self, p: &mut Problems<'_>) -> Option<EsiSettings> {
        let e = &self.esi;
        let globs = [
            ("process_paths", &e.process_paths),
            ("shareable_paths", &e.shareable_paths),
            ("head_window_paths", &e.head_window_paths),
        ];
        for (list, (i, glob)) in globs
            .iter()
            .flat_map(|(list, globs)| globs.iter().enumerate().map(move |g| (list, g)))
        {
            if !glob.starts_with('/') {
                let field = format!("esi.{list}[{i}]");
                let message = format!("{glob:?} does not start with '/': request paths always do");
                p.push(&field, message);
            }
        }
        let on_error = p.check("esi.on_error", choose(&e.on_error, OnError::CHOICES));
        for (i, name) in e.cookie_names.iter().enumerate() {
            if !is_token(name) {
                let field = format!("esi.cookie_names[{i}]");
                let message = format!(
                    "{name:?} is not a cookie name (letters, digits and !#$%&'*+-.^_`|~ only)"
                );
                p.push(&field, message);
            }
        }
        let mut named = Vec::new();
        for (i, name) in e.header_names.iter().enumerate() {
            if name == "*" {
                continue;
            }
            let field = format!("esi.header_names[{i}]");
            match HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()) {
                Err(_) => p.push(&field, format!("{name:?} is not a header name")),
                Ok(h) if h == http::header::COOKIE => p.push(
                    &field,
                    format!("{name:?} is read through $(HTTP_COOKIE), under esi.cookie_names"),
                ),
                Ok(h) => named.push(h.as_str().to_owned()),
            }
        }
        let headers = if e.header_names.iter().any(|n| n == "*") {
            HeaderNames::All
        } else {
            HeaderNames::Only(named)
        };
        let mut primary_error_pages = ErrorPages::default();
        for (key, file) in &e.primary_error_pages {
            let field = format!("esi.primary_error_pages.{key}");
            // The key is checked before the file is read: a wrong key is the problem to report.
            let added = ErrorPages::default()
                .insert(key, Bytes::new())
                .and_then(|()| error_pages::read_page(file))
                .and_then(|page| primary_error_pages.insert(key, page));
            p.check(&field, added);
        }
        Some(EsiSettings {
            process_paths: e.process_paths.clone(),
            shareable_paths: e.shareable_paths.clone(),
            max_depth: e.max_depth,
            max_includes: e.max_includes,
            max_nesting: e.max_nesting,
            on_error: on_error?,
            cookies: CookieNames::from_list(&e.cookie_names),
            expose_cookie_header: e.expose_cookie_header,
            headers,
            raw_vars: e.raw_vars,
            max_expr_evaluations: e.max_expr_evaluations,
            max_expr_value_bytes: e.max_expr_value_bytes,
            max_expr_list_items: e.max_expr_list_items,
            max_pattern_bytes: e.max_pattern_bytes,
            max_foreach_iterations: e.max_foreach_iterations,
            max_function_depth: e.max_function_depth,
            head_window_paths: e.head_window_paths.clone(),
            head_window_bytes: e.head_window_bytes,
            max_head_hold: Duration::from_millis(e.max_head_hold_ms),
            primary_error_pages,
        })
    }

    fn validate_cache(&self, p: &mut Problems<'_>) -> CacheSettings {
        let c = &self.cache;
        let key_headers = header_names(p, "cache.key_headers", &c.key_headers, |_| None);
        let rule_keys: Vec<Vec<HeaderName>> = c
            .rules
            .iter()
            .enumerate()
            .map(|(i, rule)| {
                let field = format!("cache.rules[{i}].key_headers");
                header_names(p, &field, &rule.key_headers, |_| None)
            })
            .collect();
        for (i, rule) in c.rules.iter().enumerate() {
            if rule.pattern.is_empty() {
                p.push(
                    &format!("cache.rules[{i}].match"),
                    "must not be empty".into(),
                );
            }
        }
        if c.enabled && c.fragment_capacity_bytes == 0 {
            p.push(
                "cache.fragment_capacity_bytes",
                "must be greater than 0 while the cache is enabled".into(),
            );
        }
        let rules = c
            .rules
            .iter()
            .zip(rule_keys)
            .map(|(rule, key_headers)| CacheRuleSettings {
                pattern: rule.pattern.clone(),
                ttl: Duration::from_secs(rule.ttl_s),
                stale_while_revalidate: rule.stale_while_revalidate_s.map(Duration::from_secs),
                stale_if_error: rule.stale_if_error_s.map(Duration::from_secs),
                key_headers,
            })
            .collect();
        CacheSettings {
            enabled: c.enabled,
            fragment_capacity_bytes: c.fragment_capacity_bytes,
            layout_capacity_bytes: c.layout_capacity_bytes,
            default_ttl: Duration::from_secs(c.default_ttl_s),
            stale_while_revalidate: Duration::from_secs(c.stale_while_revalidate_s),
            stale_if_error: Duration::from_secs(c.stale_if_error_s),
            hit_for_pass: Duration::from_secs(c.hit_for_pass_s),
            max_surrogate_key_bytes: c.max_surrogate_key_bytes,
            max_surrogate_keys: c.max_surrogate_keys,
            max_surrogate_index_entries: c.max_surrogate_index_entries,
            soft_purge_grace: Duration::from_secs(c.soft_purge_grace_s),
            key_headers,
            rules,
            shared: self.validate_shared(p),
        }
    }

    fn validate_shared(&self, p: &mut Problems<'_>) -> Option<SharedSettings> {
        let c = &self.cache.shared;
        if c.url.is_empty() {
            return None;
        }
        let url = p.check("cache.shared.url", redis_url(&c.url));
        // Each number's own range is checked with every numeric field's (`ranges`); a refused
        // config's settings never run.
        Some(SharedSettings {
            url: url?,
            key_prefix: c.key_prefix.clone(),
            timeout: Duration::from_millis(c.timeout_ms.max(1)),
            connect_timeout: Duration::from_millis(c.connect_timeout_ms.max(1)),
            pool_size: c.pool_size.max(1),
            lease: Duration::from_millis(c.lease_ms.max(1)),
            breaker_failures: u32::try_from(c.breaker_failures.max(1)).unwrap_or(u32::MAX),
            breaker_open: Duration::from_millis(c.breaker_open_ms),
            compress_min_bytes: c.compress_min_bytes,
        })
    }

    fn validate_fetch(&self, p: &mut Problems<'_>) -> FetchSettings {
        let f = &self.fetch;
        if f.fragment_timeout_ms > f.page_timeout_ms && f.page_timeout_ms > 0 {
            // Blame whichever of the two the file sets (the fragment one when it sets both).
            let (frag, page) = (f.fragment_timeout_ms, f.page_timeout_ms);
            if p.keys.line("fetch.page_timeout_ms") > 0
                && p.keys.line("fetch.fragment_timeout_ms") == 0
            {
                let message = format!(
                    "{page} ms is shorter than fetch.fragment_timeout_ms ({frag} ms): the page \
                     deadline would always cut a slow fragment off first"
                );
                p.push("fetch.page_timeout_ms", message);
            } else {
                let message = format!(
                    "{frag} ms is longer than fetch.page_timeout_ms ({page} ms): the page \
                     deadline would always cut a slow fragment off first"
                );
                p.push("fetch.fragment_timeout_ms", message);
            }
        }
        let forward_headers =
            header_names(p, "fetch.forward_headers", &f.forward_headers, |name| {
                crate::headers::never_to_fragments(name.as_str())
                    .then_some("is never forwarded to fragments")
            });
        for (i, file) in f.ca_certs.iter().enumerate() {
            // Read again (and parsed) when the HTTP client is built; here so check-config and a
            // reload name the line.
            if let Err(e) = std::fs::metadata(file) {
                p.push(&format!("fetch.ca_certs[{i}]"), format!("{file:?}: {e}"));
            }
        }
        let global = breaker(
            p,
            "fetch.breaker",
            &f.breaker,
            &HostBreakerConfig::default(),
        );
        // Compared as the allowlist compares them: scheme, lowercase host, port or its default.
        let origin = super::parse_base_url(&self.server.origin).ok();
        let mut hosts: Vec<(HostSettings, usize)> = Vec::new();
        for (i, host) in f.hosts.iter().enumerate() {
            let field = format!("fetch.hosts[{i}].url");
            let base = match super::parse_base_url(&host.url) {
                Ok(base) => base,
                Err(e) => {
                    p.push(&field, e.to_string());
                    continue;
                }
            };
            if origin.as_ref() == Some(&base) {
                let message = format!(
                    "{:?} is the origin (server.origin), which is always allowed and trusted; \
                     remove this entry",
                    host.url
                );
                p.push(&field, message);
            } else if let Some((_, first)) = hosts.iter().find(|(h, _)| h.url == base) {
                let message = format!("{:?} is already listed as fetch.hosts[{first}]", host.url);
                p.push(&field, message);
            } else {
                if host.http2 && base.scheme == super::Scheme::Https {
                    let message = "HTTP/2 is spoken with prior knowledge to http:// hosts only; \
                                   an https:// host is spoken to over HTTP/1.1"
                        .to_owned();
                    p.push(&format!("fetch.hosts[{i}].http2"), message);
                }
                let field = format!("fetch.hosts[{i}].breaker");
                let own = host.breaker.as_ref();
                let entry = HostSettings {
                    url: base,
                    trusted: host.trusted,
                    esi: host.esi,
                    private_network: host.private_network,
                    http2: host.http2,
                    breaker: own.map_or(global, |own| breaker(p, &field, &f.breaker, own)),
                };
                hosts.push((entry, i));
            }
        }
        if f.origin_http2
            && origin
                .as_ref()
                .is_some_and(|o| o.scheme == super::Scheme::Https)
        {
            let message = "HTTP/2 is spoken with prior knowledge to an http:// origin only; \
                           an https:// origin is spoken to over HTTP/1.1"
                .to_owned();
            p.push("fetch.origin_http2", message);
        }
        FetchSettings {
            connect_timeout: Duration::from_millis(f.connect_timeout_ms),
            fragment_timeout: Duration::from_millis(f.fragment_timeout_ms),
            layout_timeout: Duration::from_millis(f.layout_timeout_ms),
            page_timeout: Duration::from_millis(f.page_timeout_ms),
            max_fragment_bytes: f.max_fragment_bytes,
            max_layout_bytes: f.max_layout_bytes,
            max_page_bytes: f.max_page_bytes,
            max_concurrent_per_page: f.max_concurrent_per_page,
            max_concurrent: f.max_concurrent,
            pool_idle_per_host: f.pool_idle_per_host,
            pool_idle_timeout: Duration::from_millis(f.pool_idle_timeout_ms),
            origin_http2: f.origin_http2,
            forward_headers,
            hosts: hosts.into_iter().map(|(host, _)| host).collect(),
            ca_certs: f.ca_certs.iter().map(std::path::PathBuf::from).collect(),
            breaker: global,
        }
    }
}

/// `[fetch.breaker]` (`own` empty) or a host's `breaker` over it, checked under `field`. A
/// host is blamed only for the values it sets, so a bad global value is reported once.
fn breaker(
    p: &mut Problems<'_>,
    field: &str,
    global: &BreakerConfig,
    own: &HostBreakerConfig,
) -> BreakerSettings {
    let is_global = own == &HostBreakerConfig::default();
    // At most 65536 once `ranges` passed it; a refused config's settings never run.
    let failures = u32::try_from(own.failures.unwrap_or(global.failures)).unwrap_or(u32::MAX);
    let open_ms = own.open_ms.unwrap_or(global.open_ms);
    let max_open_ms = own.max_open_ms.unwrap_or(global.max_open_ms);
    // Each value's own range is checked with every numeric field's (`ranges`).
    let either = own.open_ms.is_some() || own.max_open_ms.is_some();
    if (is_global || either) && max_open_ms < open_ms {
        p.push(
            &format!("{field}.max_open_ms"),
            format!("{max_open_ms} ms is shorter than open_ms ({open_ms} ms)"),
        );
    }
    BreakerSettings {
        enabled: own.enabled.unwrap_or(global.enabled),
        failures,
        open: Duration::from_millis(open_ms),
        max_open: Duration::from_millis(max_open_ms),
    }
}

/// Validates `config`, building its typed view; problems name `path` and, when `text` is the
/// file's, the line of each field.
pub(super) fn settings(
    config: &Config,
    path: &str,
    text: Option<&str>,
) -> Result<Settings, ConfigError> {
    let mut p = Problems {
        path,
        keys: text.map(KeyMap::new).unwrap_or_default(),
        found: Vec::new(),
    };
    // Numbers first: the sections may then build durations and limits from any value.
    super::ranges::check(config, |field, message| p.push(field, message));
    let server = config.validate_server(&mut p);
    let esi = config.validate_esi(&mut p);
    let fetch = config.validate_fetch(&mut p);
    let cache = config.validate_cache(&mut p);
    let h = &config.hints;
    // Every field is a switch or a number its range already held.
    let hints = HintSettings {
        enabled: h.enabled,
        early_hints: h.enabled && h.early_hints,
        max_links: h.max_links,
        max_bytes: h.max_bytes,
        max_pages: h.max_pages,
    };
    if let (true, Some(server), Some(esi)) = (p.found.is_empty(), server, esi) {
        return Ok(Settings {
            server,
            esi,
            fetch,
            cache,
            hints,
        });
    }
    // A section is `None` only after it recorded why.
    debug_assert!(!p.found.is_empty(), "a section failed without a problem");
    // Stable: problems on one line, or not in the file, keep the order they were found in.
    p.found.sort_by_key(|i| i.line);
    Err(ConfigError::Invalid { problems: p.found })
}

/// `text` when it is a URL the Redis client connects to.
fn redis_url(text: &str) -> Result<String, String> {
    let url = url::Url::parse(text).map_err(|e| format!("not a URL: {e}"))?;
    match url.scheme() {
        "redis" | "rediss" | "valkey" | "valkeys" if url.host_str().is_some() => Ok(text.into()),
        "redis+unix" | "valkey+unix" | "unix" => Ok(text.into()),
        "redis" | "rediss" | "valkey" | "valkeys" => Err("names no host".into()),
        other => Err(format!(
            "scheme {other:?}: expected redis, rediss or redis+unix"
        )),
    }
}

/// The header names of the list at `field`, lowercase and in order; each name that does not
/// parse, or that `refuse` has a reason against, is a problem at `field[i]` and left out.
fn header_names(
    p: &mut Problems<'_>,
    field: &str,
    names: &[String],
    refuse: impl Fn(&HeaderName) -> Option<&'static str>,
) -> Vec<HeaderName> {
    let mut parsed = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        let at = format!("{field}[{i}]");
        match HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()) {
            Err(_) => p.push(&at, format!("{name:?} is not a header name")),
            Ok(header) => match refuse(&header) {
                Some(reason) => p.push(&at, format!("{name:?} {reason}")),
                None => parsed.push(header),
            },
        }
    }
    parsed
}

/// The value named `name` in `choices`; else the problem, listing the names:
/// `"xml": expected "text" or "json"`.
fn choose<T: Copy>(name: &str, choices: &[(&str, T)]) -> Result<T, String> {
    if let Some(&(_, value)) = choices.iter().find(|(n, _)| *n == name) {
        return Ok(value);
    }
    let names: Vec<String> = choices.iter().map(|(n, _)| format!("{n:?}")).collect();
    let expected = match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => names.concat(),
    };
    Err(format!("{name:?}: expected {expected}"))
}

/// An RFC 6265 cookie-name: an RFC 2616 token, i.e. visible ASCII except separators.
fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
}

/// A `server.site_names` entry, lowercase: a host name or IP address as `Host` carries it
/// (`www.example.com`, `www.example.com:8080`, `[::1]:8080`), nothing else.
fn site_name(name: &str) -> Result<String, String> {
    let invalid = || format!("{name:?} is not a host name with an optional port");
    let authority: http::uri::Authority = name.parse().map_err(|_| invalid())?;
    if authority.as_str().contains('@') || authority.host().is_empty() {
        return Err(invalid());
    }
    Ok(name.to_ascii_lowercase())
}

/// A `server.trusted_proxies` entry: a CIDR range, or one address as a range of one.
fn ip_range(text: &str) -> Result<ipnet::IpNet, String> {
    text.parse::<ipnet::IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map(|range| range.trunc())
        .map_err(|_| format!("{text:?} is not a CIDR range like 10.0.0.0/8 or an IP address"))
}

// === impl Problems ===

impl Problems<'_> {
    /// Records a problem with `field`, at the field's line (0 when the text does not set it).
    fn push(&mut self, field: &str, message: String) {
        self.found.push(Invalid {
            path: self.path.to_owned(),
            line: self.keys.line(field),
            field: field.to_owned(),
            message,
        });
    }

    /// The value, or `None` after recording the problem with `field`.
    fn check<T>(&mut self, field: &str, value: Result<T, String>) -> Option<T> {
        value.map_err(|message| self.push(field, message)).ok()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::is_token;
    use crate::config::{Config, ConfigError, HostConfig};

    /// `(toml, wanted problems as "line: field: message start")`.
    const INVALID: &[(&str, &[&str])] = &[
        ("", &[]),
        ("[server]\nlisten = \"localhost\"\n", &["2: server.listen: \"localhost\" is not"]),
        ("[server]\nmax_header_bytes = 100\n", &["2: server.max_header_bytes: 100 is below"]),
        ("[server]\nadmin_token = \"abc \"\n", &["2: server.admin_token: must be printable"]),
        ("[server]\nsite_names = [\"ok.example:8080\", \"a/b\", \"u@h\"]\n", &["2: server.site_names[1]: \"a/b\" is not", "2: server.site_names[2]: \"u@h\" is not"]),
        ("[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"::1\", \"10.0.0.0/33\"]\n", &["2: server.trusted_proxies[2]: \"10.0.0.0/33\" is not a CIDR"]),
        ("[server]\nlog_format = \"xml\"\n", &["2: server.log_format: \"xml\": expected"]),
        ("[server]\nmax_connections = 0\n", &["2: server.max_connections: must be greater than 0"]),
        ("[server]\nheader_read_timeout_ms = 0\nsend_timeout_ms = 0\nrequest_body_timeout_ms = 0\n", &["2: server.header_read_timeout_ms: 0 is below the minimum of 100", "3: server.send_timeout_ms: 0 is below the minimum of 100", "4: server.request_body_timeout_ms: 0 is below the minimum of 100"]),
        ("[server]\nkeep_alive_timeout_ms = 0\n", &[]),
        ("[esi]\nmax_depth = 21\n", &["2: esi.max_depth: 21 is over the limit of 20"]),
        ("[cache.shared]\nurl = \"redis://127.0.0.1:6379/0\"\n", &[]),
        ("[cache.shared]\nurl = \"rediss://u:p@r.example\"\n", &[]),
        ("[cache.shared]\nurl = \"redis+unix:///run/redis.sock\"\n", &[]),
        // Ranges hold whether or not the tier is on.
        ("[cache.shared]\ntimeout_ms = 0\n", &["2: cache.shared.timeout_ms: must be greater than 0"]),
        ("[cache.shared]\nurl = \"http://r.example\"\n", &["2: cache.shared.url: scheme \"http\": expected"]),
        ("[cache.shared]\nurl = \"r.example:6379\"\n", &["2: cache.shared.url: scheme \"r.example\""]),
        (
            "[cache.shared]\nurl = \"redis://r\"\ntimeout_ms = 0\npool_size = 0\n",
            &[
                "3: cache.shared.timeout_ms: must be greater than 0",
                "4: cache.shared.pool_size: must be greater than 0",
            ],
        ),
        ("[esi]\nmax_depth = 20\n", &[]),
        ("[esi]\nmax_depth = 0\n", &[]),
        ("[esi]\nmax_includes = 0\n", &["2: esi.max_includes: must be greater than 0"]),
        // Regression: over a semaphore's capacity, these passed and panicked at load or reload.
        ("[fetch]\nmax_concurrent = 9223372036854775807\n", &["2: fetch.max_concurrent: 9223372036854775807 is over the limit of 1048576"]),
        ("[fetch]\nmax_concurrent_per_page = 2305843009213693952\n", &["2: fetch.max_concurrent_per_page: 2305843009213693952 is over"]),
        ("[[cache.rules]]\nmatch = \"/a\"\nttl_s = 1\n[[cache.rules]]\nmatch = \"/b\"\nttl_s = 31536001\n", &["6: cache.rules[1].ttl_s: 31536001 is over the limit of 31536000"]),
        ("[esi]\non_error = \"ignore\"\n", &["2: esi.on_error: \"ignore\": expected"]),
        (
            "[esi]\nprocess_paths = [\"/a/*\", \"b/*\", \"*\"]\n",
            &[
                "2: esi.process_paths[1]: \"b/*\" does not start with '/'",
                "2: esi.process_paths[2]: \"*\" does not start with '/'",
            ],
        ),
        (
            "[esi]\ncookie_names = [\n  \"session_id\",\n  \"a b\",\n  \"\",\n  \"x=y\",\n]\n",
            &[
                "4: esi.cookie_names[1]: \"a b\" is not a cookie name",
                "5: esi.cookie_names[2]: \"\" is not a cookie name",
                "6: esi.cookie_names[3]: \"x=y\" is not a cookie name",
            ],
        ),
        ("[esi]\ncookie_names = [\"*\", \"__Host-x\", \"a.b~c\"]\n", &[]),
        (
            "[esi]\nheader_names = [\"*\", \"bad name\", \"Cookie\", \"Authorization\"]\n",
            &[
                "2: esi.header_names[1]: \"bad name\" is not a header name",
                "2: esi.header_names[2]: \"Cookie\" is read through $(HTTP_COOKIE), under esi.cookie_names",
            ],
        ),
        (
            "[fetch]\nfragment_timeout_ms = 3000\npage_timeout_ms = 2000\n",
            &["2: fetch.fragment_timeout_ms: 3000 ms is longer than fetch.page_timeout_ms (2000 ms)"],
        ),
        (
            "[fetch]\npage_timeout_ms = 1000\n",
            &["2: fetch.page_timeout_ms: 1000 ms is shorter than fetch.fragment_timeout_ms (2000 ms)"],
        ),
        ("[fetch]\nfragment_timeout_ms = 10000\n", &[]),
        (
            "[fetch]\npage_timeout_ms = 0\n",
            &["2: fetch.page_timeout_ms: must be greater than 0"],
        ),
        (
            "[fetch]\nforward_headers = [\"accept\", \"bad header\", \"Cookie\"]\n",
            &[
                "2: fetch.forward_headers[1]: \"bad header\" is not a header name",
                "2: fetch.forward_headers[2]: \"Cookie\" is never forwarded",
            ],
        ),
        (
            "[server]\norigin = \"http://gw:8081\"\n\
             [[fetch.hosts]]\nurl = \"http://a\"\n\
             [[fetch.hosts]]\nurl = \"HTTP://A:80\"\n\
             [[fetch.hosts]]\nurl = \"http://gw:8081\"\n\
             [[fetch.hosts]]\nurl = \"https://a\"\n",
            &[
                "6: fetch.hosts[1].url: \"HTTP://A:80\" is already listed as fetch.hosts[0]",
                "8: fetch.hosts[2].url: \"http://gw:8081\" is the origin (server.origin)",
            ],
        ),
        (
            "[fetch.breaker]\nfailures = 0\nopen_ms = 0\n",
            &[
                "2: fetch.breaker.failures: must be greater than 0",
                "3: fetch.breaker.open_ms: must be greater than 0",
            ],
        ),
        (
            "[fetch.breaker]\nopen_ms = 400000\n",
            &["0: fetch.breaker.max_open_ms: 300000 ms is shorter than open_ms (400000 ms)"],
        ),
        (
            "[fetch.breaker]\nfailures = 0\n\
             [[fetch.hosts]]\nurl = \"http://a\"\nbreaker = { failures = 2, open_ms = 5000 }\n\
             [[fetch.hosts]]\nurl = \"http://b\"\nbreaker = { max_open_ms = 10 }\n",
            &[
                "2: fetch.breaker.failures: must be greater than 0",
                "8: fetch.hosts[1].breaker.max_open_ms: 10 ms is shorter than open_ms (10000 ms)",
            ],
        ),
        (
            "[server]\nlisten = \"nope\"\n[esi]\nmax_depth = 99\n[fetch]\nmax_concurrent = 0\n",
            &[
                "2: server.listen: \"nope\" is not",
                "4: esi.max_depth: 99 is over",
                "6: fetch.max_concurrent: must be greater than 0",
            ],
        ),
    ];

    #[test]
    fn validation_lists_every_problem_in_file_order() {
        for (text, want) in INVALID {
            let config = Config::parse(text, Path::new("f.toml")).expect(text);
            let got: Vec<String> = match config.validate_source("f.toml", Some(text)) {
                Ok(()) => Vec::new(),
                Err(ConfigError::Invalid { problems }) => {
                    problems.iter().map(ToString::to_string).collect()
                }
                Err(e) => panic!("{text:?}: unexpected {e}"),
            };
            assert_eq!(got.len(), want.len(), "{text:?}: {got:#?}");
            for (got, want) in got.iter().zip(*want) {
                let want = format!("f.toml:{want}");
                assert!(
                    got.starts_with(&want),
                    "{text:?}\n got: {got}\nwant: {want}"
                );
            }
        }
    }

    #[test]
    fn validate_without_text_reports_line_zero() {
        let mut config = Config::default();
        config.esi.max_depth = 50;
        config.fetch.hosts.push(HostConfig {
            url: "http://127.0.0.1:8081".into(),
            trusted: false,
            esi: false,
            private_network: false,
            http2: false,
            breaker: None,
        });
        let err = config.validate().expect_err("invalid");
        let lines: Vec<String> = err.to_string().lines().map(str::to_owned).collect();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(
            lines[0].starts_with("<config>:0: esi.max_depth: 50 is over"),
            "{lines:?}"
        );
        assert!(
            lines[1].starts_with("<config>:0: fetch.hosts[0].url: "),
            "{lines:?}"
        );
    }

    #[test]
    fn cookie_name_tokens() {
        for (name, ok) in [
            ("session", true),
            ("*", true),
            ("a-b_c.d!#$%&'*+^`|~", true),
            ("", false),
            ("a b", false),
            ("a;b", false),
            ("a=b", false),
            ("\"a\"", false),
            ("a\tb", false),
            ("é", false),
        ] {
            assert_eq!(is_token(name), ok, "{name:?}");
        }
    }
}
