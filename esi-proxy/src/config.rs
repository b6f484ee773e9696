//! Configuration: the serde TOML schema with every field defaulted, loading with errors that name
//! the file, line and field, and validation that reports every problem at once.
//! Touches no network.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use toml::Spanned;

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
    /// Token for the admin endpoints that change or reveal state (`Authorization: Bearer ...`).
    /// Empty: those endpoints answer only to loopback clients. Default: "".
    pub admin_token: String,
    /// Log format: "text" or "json". Default: "text".
    pub log_format: String,
    /// How often the config file is checked for changes, which are then reloaded; 0 reloads
    /// on SIGHUP only. Default: 1000.
    pub config_poll_ms: u64,
    /// Whether loopback clients may open `/_esi/debug/` without the admin token (others always
    /// need it). Default: true.
    pub debug_from_loopback: bool,
    /// Whether every request is logged at `info` when its response ends (method, path,
    /// status, route, bytes, milliseconds). Default: true.
    pub access_log: bool,
}

/// `[esi]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EsiConfig {
    /// Path globs (`*` matches any run of characters) whose HTML responses are processed even
    /// without `Surrogate-Control: content="ESI/1.0"`. Default: [] (only marked responses).
    pub process_paths: Vec<String>,
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
    /// Write variables into pages and URLs without HTML-escaping or percent-encoding.
    /// Default: false.
    pub raw_vars: bool,
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
    /// Client request headers forwarded to fragments (lowercase names). `Cookie` and
    /// `Authorization` are never listed here: they go to trusted hosts only.
    /// Default: ["accept-language", "user-agent"].
    pub forward_headers: Vec<String>,
    /// Fragment hosts other than the origin that includes may name. Default: [].
    pub hosts: Vec<HostConfig>,
    /// PEM files of CA certificates trusted for `https` origins and fragment hosts, besides
    /// the built-in roots (an internal CA). Default: [].
    pub ca_certs: Vec<String>,
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
    /// Whether this host may resolve to loopback, private or link-local addresses (a host
    /// written as such an IP address is allowed to by being listed). Default: false.
    #[serde(default)]
    pub private_network: bool,
}

/// `[cache]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Whether fragments and layouts are cached (`serve --no-cache` turns it off). Default: true.
    pub enabled: bool,
    /// Bytes of fragment responses kept: bodies, kept headers and keys. Default: 268435456.
    pub fragment_capacity_bytes: u64,
    /// Bytes of parsed layouts kept. Default: 67108864.
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
    /// Request headers (lowercase) that are part of every cache key. Default: [].
    pub key_headers: Vec<String>,
    /// TTL rules, first match wins; a rule beats the response's own headers. Default: [].
    pub rules: Vec<CacheRule>,
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

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not fit the schema.
    #[error("{path}:{line}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Line of the problem, from 1 (0 when unknown).
        line: usize,
        /// What is wrong, on one line. When the problem is in a value or key, it starts with the
        /// dotted field, e.g. `fetch.fragment_timeout_ms: invalid type: ...`.
        message: String,
    },
    /// Values that parse but are not acceptable: every problem, each on its own line, in the
    /// order of the file.
    #[error("{}", .problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid {
        /// Each problem found.
        problems: Vec<Invalid>,
    },
}

/// One unacceptable value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}:{line}: {field}: {message}")]
pub struct Invalid {
    /// The file, or where the values came from when there is none (`<config>` from
    /// [`Config::validate`]).
    pub path: String,
    /// Line of the field, or 0 when it is not in the file.
    pub line: usize,
    /// Dotted field name, with an index for list entries: `fetch.fragment_timeout_ms`,
    /// `fetch.hosts[2].url`, `esi.cookie_names[0]`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// Deeper composition than this is an include loop, not a page design.
const MAX_ESI_DEPTH: usize = 20;

/// Where every key of a TOML text is, by dotted path with list indices (`fetch.hosts[2].url`),
/// so errors can name both a line and a field. Built by the `toml` parser itself, so `[table]`,
/// `[[array]]`, dotted keys and inline tables are all understood.
#[derive(Debug, Default)]
struct KeyMap {
    /// Each key and each list entry in tree order: (path, byte offset, line from 1).
    entries: Vec<(String, usize, usize)>,
}

/// A TOML tree with the byte offset of every key and list entry.
enum Node {
    Table(Vec<(Spanned<String>, Node)>),
    Array(Vec<Spanned<Node>>),
    Leaf,
}

/// Builds a [`Node`] from whatever the TOML deserializer hands it.
struct NodeVisitor;

/// Collects problems found by [`Config::validate_source`].
struct Problems<'a> {
    path: &'a str,
    keys: KeyMap,
    found: Vec<Invalid>,
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
            debug_from_loopback: true,
            access_log: true,
        }
    }
}

impl Default for EsiConfig {
    fn default() -> Self {
        Self {
            process_paths: Vec::new(),
            max_depth: 5,
            max_includes: 256,
            max_nesting: 32,
            on_error: "empty".into(),
            cookie_names: vec!["*".into()],
            expose_cookie_header: false,
            raw_vars: false,
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
            key_headers: Vec::new(),
            rules: Vec::new(),
        }
    }
}

/// Whether `text` matches `glob`, where `*` matches any run of characters and everything else
/// matches itself.
pub fn glob_match(glob: &str, text: &str) -> bool {
    let mut parts = glob.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    for (i, part) in parts.iter().enumerate() {
        if i + 1 == parts.len() {
            return rest.ends_with(part);
        }
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.is_empty()
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
            forward_headers: vec!["accept-language".into(), "user-agent".into()],
            hosts: Vec::new(),
            ca_certs: Vec::new(),
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
        toml::from_str(text).map_err(|e| {
            let at = e.span().map(|span| span.start);
            let message = toml_message(e.message(), at.and_then(|at| text.get(at..)));
            let Some(at) = at else {
                return ConfigError::Parse {
                    path: path.to_owned(),
                    line: 0,
                    message,
                };
            };
            // The text is valid TOML unless this is a syntax error; then there is no field.
            let message = match KeyMap::new(text).field_at(text, at) {
                Some(field) => format!("{field}: {message}"),
                None => message,
            };
            ConfigError::Parse {
                path: path.to_owned(),
                line: line_of(text, at),
                message,
            }
        })
    }

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
        let mut p = Problems {
            path,
            keys: text.map(KeyMap::new).unwrap_or_default(),
            found: Vec::new(),
        };
        self.validate_server(&mut p);
        self.validate_esi(&mut p);
        self.validate_fetch(&mut p);
        self.validate_cache(&mut p);
        if p.found.is_empty() {
            return Ok(());
        }
        // Stable: problems on one line, or not in the file, keep the order they were found in.
        p.found.sort_by_key(|i| i.line);
        Err(ConfigError::Invalid { problems: p.found })
    }

    fn validate_server(&self, p: &mut Problems<'_>) {
        let s = &self.server;
        if s.listen.parse::<std::net::SocketAddr>().is_err() {
            let message = format!("{:?} is not an address like 127.0.0.1:8080", s.listen);
            p.push("server.listen", message);
        }
        if let Err(e) = crate::fetch::parse_base_url(&s.origin) {
            p.push("server.origin", e.to_string());
        }
        if s.max_header_bytes < 8192 {
            let message = format!("{} is below the minimum of 8192", s.max_header_bytes);
            p.push("server.max_header_bytes", message);
        }
        if !s.admin_token.bytes().all(|b| b.is_ascii_graphic()) {
            // It is compared with what follows `Bearer ` in a header: a space, newline or
            // non-ASCII character (usually a copy-paste accident) makes it impossible to send.
            let message = "must be printable ASCII with no spaces or newlines".to_owned();
            p.push("server.admin_token", message);
        }
        if !matches!(s.log_format.as_str(), "text" | "json") {
            let message = format!("{:?}: expected \"text\" or \"json\"", s.log_format);
            p.push("server.log_format", message);
        }
    }

    fn validate_esi(&self, p: &mut Problems<'_>) {
        let e = &self.esi;
        for (i, glob) in e.process_paths.iter().enumerate() {
            if !glob.starts_with('/') {
                let field = format!("esi.process_paths[{i}]");
                let message = format!("{glob:?} does not start with '/': request paths always do");
                p.push(&field, message);
            }
        }
        if e.max_depth > MAX_ESI_DEPTH {
            let message = format!(
                "{} is over the limit of {MAX_ESI_DEPTH}: includes nested that deep are a loop",
                e.max_depth
            );
            p.push("esi.max_depth", message);
        }
        for (field, value) in [
            ("esi.max_includes", e.max_includes),
            ("esi.max_nesting", e.max_nesting),
        ] {
            if value == 0 {
                p.push(field, "must be greater than 0".into());
            }
        }
        if !matches!(e.on_error.as_str(), "empty" | "fail") {
            let message = format!("{:?}: expected \"empty\" or \"fail\"", e.on_error);
            p.push("esi.on_error", message);
        }
        for (i, name) in e.cookie_names.iter().enumerate() {
            if !is_token(name) {
                let field = format!("esi.cookie_names[{i}]");
                let message = format!(
                    "{name:?} is not a cookie name (letters, digits and !#$%&'*+-.^_`|~ only)"
                );
                p.push(&field, message);
            }
        }
    }

    fn validate_cache(&self, p: &mut Problems<'_>) {
        let c = &self.cache;
        let header_lists = std::iter::once(("cache.key_headers".to_owned(), &c.key_headers)).chain(
            c.rules
                .iter()
                .enumerate()
                .map(|(i, r)| (format!("cache.rules[{i}].key_headers"), &r.key_headers)),
        );
        for (field, names) in header_lists {
            for (i, name) in names.iter().enumerate() {
                if http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()).is_err() {
                    p.push(
                        &format!("{field}[{i}]"),
                        format!("{name:?} is not a header name"),
                    );
                }
            }
        }
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
    }

    fn validate_fetch(&self, p: &mut Problems<'_>) {
        let f = &self.fetch;
        for (field, value) in [
            ("fetch.connect_timeout_ms", f.connect_timeout_ms),
            ("fetch.fragment_timeout_ms", f.fragment_timeout_ms),
            ("fetch.layout_timeout_ms", f.layout_timeout_ms),
            ("fetch.page_timeout_ms", f.page_timeout_ms),
        ] {
            if value == 0 {
                p.push(field, "must be greater than 0".into());
            }
        }
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
        for (field, value) in [
            ("fetch.max_fragment_bytes", f.max_fragment_bytes),
            ("fetch.max_layout_bytes", f.max_layout_bytes),
            ("fetch.max_page_bytes", f.max_page_bytes),
            ("fetch.max_concurrent_per_page", f.max_concurrent_per_page),
            ("fetch.max_concurrent", f.max_concurrent),
        ] {
            if value == 0 {
                p.push(field, "must be greater than 0".into());
            }
        }
        for (i, name) in f.forward_headers.iter().enumerate() {
            let field = format!("fetch.forward_headers[{i}]");
            let lower = name.to_ascii_lowercase();
            if http::HeaderName::from_bytes(lower.as_bytes()).is_err() {
                p.push(&field, format!("{name:?} is not a header name"));
            } else if crate::fetch::NEVER_FORWARDED.contains(&lower.as_str()) {
                let message = format!("{name:?} is never forwarded to fragments");
                p.push(&field, message);
            }
        }
        for (i, file) in f.ca_certs.iter().enumerate() {
            // Read again (and parsed) when the HTTP client is built; here so check-config and a
            // reload name the line.
            if let Err(e) = std::fs::metadata(file) {
                p.push(&format!("fetch.ca_certs[{i}]"), format!("{file:?}: {e}"));
            }
        }
        // Compared as the allowlist compares them: scheme, lowercase host, port or its default.
        let origin = crate::fetch::parse_base_url(&self.server.origin).ok();
        let mut seen: Vec<(crate::fetch::BaseUrl, usize)> = Vec::new();
        for (i, host) in f.hosts.iter().enumerate() {
            let field = format!("fetch.hosts[{i}].url");
            let base = match crate::fetch::parse_base_url(&host.url) {
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
            } else if let Some((_, first)) = seen.iter().find(|(b, _)| *b == base) {
                let message = format!("{:?} is already listed as fetch.hosts[{first}]", host.url);
                p.push(&field, message);
            } else {
                seen.push((base, i));
            }
        }
    }
}

/// toml's message for a value at `value` (the text from there on), on one line and in TOML's
/// words rather than serde's and Rust's.
fn toml_message(raw: &str, value: Option<&str>) -> String {
    // Sometimes two lines: "invalid table header\nexpected `.`, `]`".
    let mut message = raw.trim().replace('\n', ": ");
    // A date-time reaches serde as a map: tell it from a real table by how it is written.
    let datetime = value.is_some_and(|v| v.starts_with(|c: char| c.is_ascii_digit()));
    let map = if datetime { "date-time" } else { "table" };
    for (serde, toml) in [
        ("expected u64", "expected a non-negative integer"),
        ("expected usize", "expected a non-negative integer"),
        ("expected a sequence", "expected an array"),
        ("invalid type: sequence", "invalid type: array"),
        ("invalid type: map", &format!("invalid type: {map}")),
        ("floating point", "float"),
    ] {
        message = message.replace(serde, toml);
    }
    // "expected struct EsiConfig": the name of a Rust type means nothing in the file.
    if let Some(i) = message.find("expected struct ") {
        message.truncate(i);
        message.push_str("expected a table");
    }
    message
}

/// An RFC 6265 cookie-name: an RFC 2616 token, i.e. visible ASCII except separators.
fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
}

/// Line (from 1) of byte offset `at` in `text`.
fn line_of(text: &str, at: usize) -> usize {
    let at = at.min(text.len());
    text.as_bytes()[..at]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
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
}

// === impl KeyMap ===

impl KeyMap {
    /// The keys of `text`; empty when it is not TOML.
    fn new(text: &str) -> KeyMap {
        let mut map = KeyMap::default();
        if let Ok(root) = toml::from_str::<Node>(text) {
            map.add(text, &root, "");
        }
        map
    }

    fn add(&mut self, text: &str, node: &Node, prefix: &str) {
        match node {
            Node::Table(entries) => {
                for (key, value) in entries {
                    let path = if prefix.is_empty() {
                        key_name(key.get_ref())
                    } else {
                        format!("{prefix}.{}", key_name(key.get_ref()))
                    };
                    self.push(text, path.clone(), key.span().start);
                    self.add(text, value, &path);
                }
            }
            Node::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let path = format!("{prefix}[{i}]");
                    self.push(text, path.clone(), item.span().start);
                    self.add(text, item.get_ref(), &path);
                }
            }
            Node::Leaf => {}
        }
    }

    fn push(&mut self, text: &str, path: String, at: usize) {
        self.entries.push((path, at, line_of(text, at)));
    }

    /// Line (from 1) of a dotted field such as `fetch.hosts[2].url`: of its key, or of the list
    /// entry for a path ending in an index. 0 when the text does not set it.
    fn line(&self, field: &str) -> usize {
        self.entries
            .iter()
            .find(|(path, _, _)| path == field)
            .map_or(0, |&(_, _, line)| line)
    }

    /// The dotted field that byte offset `at` of `text` belongs to: the nearest key or list
    /// entry before it on its line, or, for a table header, the last key of the header.
    fn field_at(&self, text: &str, at: usize) -> Option<&str> {
        let line = line_of(text, at);
        let on_line = || self.entries.iter().filter(move |(_, _, l)| *l == line);
        on_line()
            .filter(|(_, start, _)| *start <= at)
            .max_by_key(|(_, start, _)| *start)
            .or_else(|| on_line().max_by_key(|(_, start, _)| *start))
            .map(|(path, _, _)| path.as_str())
    }
}

/// A key as written in a dotted path: bare when TOML allows it, else quoted.
fn key_name(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare {
        key.to_owned()
    } else {
        format!("{key:?}")
    }
}

// === impl Node ===

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Node, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a TOML value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Node, E> {
        Ok(Node::Leaf)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Node, E> {
        Ok(Node::Leaf)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Node, E> {
        Ok(Node::Leaf)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Node, E> {
        Ok(Node::Leaf)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Node, E> {
        Ok(Node::Leaf)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        loop {
            let key = match map.next_key::<Spanned<String>>() {
                Ok(Some(key)) => key,
                Ok(None) => break,
                // A date-time reaches us as a one-entry map whose key has no span: a leaf.
                Err(_) if entries.is_empty() => return Ok(Node::Leaf),
                Err(e) => return Err(e),
            };
            entries.push((key, map.next_value()?));
        }
        Ok(Node::Table(entries))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    const DOCUMENTED: &str = include_str!("../../config/esi-proxy.toml");

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
            !example_host.trusted && !example_host.private_network,
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

    /// `(toml, wanted Parse display without the "f.toml:" prefix)`.
    const PARSE_ERRORS: &[(&str, &str)] = &[
        ("[esi\nmax_depth = 1\n", "1: invalid table header: expected `.`, `]`"),
        ("[fetch]\nx = \"unterminated\n", "2: invalid basic string"),
        (
            "[fetch]\n\nbogus = 1\n",
            "3: fetch.bogus: unknown field `bogus`, expected one of",
        ),
        ("[nope]\n", "1: nope: unknown field `nope`, expected one of"),
        (
            "# c\nfetch.page_timeout_ms = 1\nfetch.bogus = 1\n",
            "3: fetch.bogus: unknown field `bogus`, expected one of",
        ),
        (
            "esi = { max_depth = 1, bogus = 2 }\n",
            "1: esi.bogus: unknown field `bogus`, expected one of",
        ),
        (
            "[[fetch.hosts]]\nurl = \"http://a\"\n[[fetch.hosts]]\nurl = \"http://b\"\ntrusted = \"yes\"\n",
            "5: fetch.hosts[1].trusted: invalid type: string \"yes\", expected a boolean",
        ),
        (
            "[esi]\nmax_depth = 99999999999999999999\n",
            // TOML integers are i64: a syntax error, so no field.
            "2: number too large to fit in target type",
        ),
        (
            "[fetch]\nfragment_timeout_ms = \"fast\"\n",
            "2: fetch.fragment_timeout_ms: invalid type: string \"fast\", expected a non-negative integer",
        ),
        (
            "fetch.fragment_timeout_ms = -1\n",
            "1: fetch.fragment_timeout_ms: invalid value: integer `-1`, expected a non-negative integer",
        ),
        (
            "fetch = { page_timeout_ms = 1.5 }\n",
            "1: fetch.page_timeout_ms: invalid type: float `1.5`, expected a non-negative integer",
        ),
        (
            "[fetch]\nforward_headers = [\n  \"a\",\n  3,\n]\n",
            "4: fetch.forward_headers[1]: invalid type: integer `3`, expected a string",
        ),
        (
            "[esi]\ncookie_names = \"*\"\n",
            "2: esi.cookie_names: invalid type: string \"*\", expected an array",
        ),
        ("esi = 3\n", "1: esi: invalid type: integer `3`, expected a table"),
        (
            "[server]\nlisten = 1979-05-27T07:32:00Z\n",
            "2: server.listen: invalid type: date-time, expected a string",
        ),
        (
            "[[fetch.hosts]]\nurl = \"http://a\"\n[[fetch.hosts]]\ntrusted = true\n",
            "3: fetch.hosts[1]: missing field `url`",
        ),
        (
            "[[fetch.hosts]]\nurl = \"http://a\"\n\n[[fetch.hosts]]\nurl = \"http://b\"\nweight = 2\n",
            "6: fetch.hosts[1].weight: unknown field `weight`, expected one of",
        ),
        (
            "[server]\nlisten = \"x\"\n[fetch.hosts]\nurl = \"http://a\"\n",
            "3: fetch.hosts: invalid type: table, expected an array",
        ),
        (
            "[esi]\nmax_depth = 1\nmax_depth = 2\n",
            "3: duplicate key `max_depth` in table `esi`",
        ),
    ];

    #[test]
    fn parse_errors_name_line_and_field() {
        for (input, want) in PARSE_ERRORS {
            let err = Config::parse(input, Path::new("f.toml")).expect_err(input);
            let got = err.to_string();
            let want = format!("f.toml:{want}");
            assert!(
                got.starts_with(&want),
                "input: {input:?}\n got: {got}\nwant: {want}"
            );
            assert!(!got.contains('\n'), "one line: {got:?}");
        }
    }

    const FIELD_LINES: &[(&str, &str, usize)] = &[
        ("[fetch]\npage_timeout_ms = 1\n", "fetch.page_timeout_ms", 2),
        (
            "[fetch]\npage_timeout_ms = 1\n",
            "fetch.fragment_timeout_ms",
            0,
        ),
        (
            "[fetch]\npage_timeout_ms = 1\n",
            "server.page_timeout_ms",
            0,
        ),
        (
            "[esi]\nmax_depth = 1\n[fetch]\nmax_depth = 1\n",
            "fetch.max_depth",
            4,
        ),
        (
            "# max_depth = 3\n[esi]\n  max_depth=1 # x\n",
            "esi.max_depth",
            3,
        ),
        ("fetch.page_timeout_ms = 1\n", "fetch.page_timeout_ms", 1),
        (
            "[fetch]\n\"page_timeout_ms\" = 1\n",
            "fetch.page_timeout_ms",
            2,
        ),
        (
            "fetch = { hosts = [{ url = \"a\" }] }\n",
            "fetch.hosts[0].url",
            1,
        ),
        (
            "[esi.sub]\nk = 1\n[esi]\nmax_depth = 1\n",
            "esi.max_depth",
            4,
        ),
        ("[esi.sub]\nk = 1\n[esi]\nmax_depth = 1\n", "esi.sub.k", 2),
        (
            "[esi]\ncookie_names = [\n  \"a\",\n  \"b c\",\n]\n",
            "esi.cookie_names[1]",
            4,
        ),
        (HOSTS, "fetch.hosts[0].url", 2),
        (HOSTS, "fetch.hosts[1].url", 6),
        (HOSTS, "fetch.hosts[2].url", 10),
        (HOSTS, "fetch.hosts[2]", 8),
        (HOSTS, "fetch.hosts[3].url", 0),
        (HOSTS, "fetch.hosts[1].trusted", 5),
        (HOSTS, "fetch.hosts[0].trusted", 0),
        ("not = [toml\n", "not", 0),
    ];

    const HOSTS: &str = "[[fetch.hosts]]\nurl = \"http://a\"\n\n[[fetch.hosts]]\ntrusted = true\n\
                         url = \"http://b\"\n\n[[fetch.hosts]]\n\nurl = \"http://c\"\n";

    #[test]
    fn field_lines() {
        for (text, field, want) in FIELD_LINES {
            let got = KeyMap::new(text).line(field);
            assert_eq!(got, *want, "field {field} in {text:?}");
        }
    }

    /// `(toml, wanted problems as "line: field: message start")`.
    const INVALID: &[(&str, &[&str])] = &[
        ("", &[]),
        ("[server]\nlisten = \"localhost\"\n", &["2: server.listen: \"localhost\" is not"]),
        ("[server]\nmax_header_bytes = 100\n", &["2: server.max_header_bytes: 100 is below"]),
        ("[server]\nadmin_token = \"abc \"\n", &["2: server.admin_token: must be printable"]),
        ("[server]\nlog_format = \"xml\"\n", &["2: server.log_format: \"xml\": expected"]),
        ("[esi]\nmax_depth = 21\n", &["2: esi.max_depth: 21 is over the limit of 20"]),
        ("[esi]\nmax_depth = 20\n", &[]),
        ("[esi]\nmax_depth = 0\n", &[]),
        ("[esi]\nmax_includes = 0\n", &["2: esi.max_includes: must be greater than 0"]),
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
            private_network: false,
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
