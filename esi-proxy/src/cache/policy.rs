//! The pure TTL decision: [`CachePolicy`] compiled from `[cache]`, the `Cache-Control`,
//! `Surrogate-Control`, `Vary` and `Age` directives as a shared cache reads them, and which
//! credentials a request carried. No I/O and no storage: the stores ask it, never the reverse.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderName, AGE, AUTHORIZATION, CACHE_CONTROL, COOKIE, SET_COOKIE, VARY};
use http::{HeaderMap, StatusCode};
use url::Url;

use crate::config::{glob_match, CacheRuleSettings, CacheSettings};
use crate::headers::{
    split_unquoted, surrogate_keys, SurrogateKeys, DEVICE, SURROGATE_CONTROL, X_FORWARDED_HOST,
    X_FORWARDED_PROTO,
};

/// Longest TTL or stale window kept, whatever a header or rule says (one year), so expiry
/// instants never overflow.
const MAX_AGE_S: u64 = 365 * 24 * 60 * 60;
/// [`MAX_AGE_S`] as a duration.
const MAX_AGE: Duration = Duration::from_secs(MAX_AGE_S);
/// Most header names a response may `Vary` on before it is not stored: every name multiplies
/// the variants a URL may have.
const MAX_VARY_NAMES: usize = 16;

/// What the origin and fragments are told about the request's host and scheme: a response
/// may be built from them whether or not it says `Vary`, so each is part of every key, and one
/// built for another host or scheme is never served for this one. (The proxy sends a closed
/// set of values, so this splits entries per site, not per client.)
const TOLD_UPSTREAM: [HeaderName; 2] = [X_FORWARDED_HOST, X_FORWARDED_PROTO];

/// TTL rules and windows from config; rebuilt on every config reload.
#[derive(Debug, Clone)]
pub struct CachePolicy {
    /// `cache.rules`, each with its key headers sorted and unique.
    rules: Vec<CacheRuleSettings>,
    /// `cache.key_headers`, sorted and unique.
    key_headers: Vec<HeaderName>,
    /// Per rule, then for a URL no rule matches: the names every key of its URLs varies on
    /// (see [`CachePolicy::key_names`]), worked out once per config.
    key_names: Vec<Arc<[HeaderName]>>,
    default_ttl: Duration,
    stale_while_revalidate: Duration,
    stale_if_error: Duration,
    hit_for_pass: Duration,
    /// `cache.max_surrogate_key_bytes` and `cache.max_surrogate_keys`.
    max_key_bytes: usize,
    max_keys: usize,
}

/// How a response's TTL was decided, for logs and the debug page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TtlSource {
    /// `[[cache.rules]]` entry: its index and pattern.
    Rule(usize, String),
    /// The include tag's `ttl` attribute.
    Include,
    /// `Surrogate-Control: max-age=N` (untargeted or targeted at `esi-proxy`).
    SurrogateControl,
    /// `Cache-Control: s-maxage=N`.
    SMaxAge,
    /// `Cache-Control: max-age=N`.
    MaxAge,
    /// `cache.default_ttl_s`.
    Default,
}

/// The caching decision for one response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The response may be stored.
    Store {
        /// How long it is fresh (already less the response's `Age`).
        ttl: Duration,
        /// How long after `ttl` it may be served while one background fetch refreshes it.
        stale_while_revalidate: Duration,
        /// How long after `ttl` it may be served when a fresh fetch fails.
        stale_if_error: Duration,
        /// Where `ttl` came from.
        source: TtlSource,
    },
    /// The response is not stored; the reason is a short stable word for logs: `status`,
    /// `no-store`, `private`, `vary`, `set-cookie`, `credentials`, `no-cache` or `ttl`.
    Pass(&'static str),
}

/// Which credentials a request carried to a host that receives them (a trusted one).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Credentials {
    /// A `Cookie` header went upstream.
    pub cookie: bool,
    /// An `Authorization` header went upstream.
    pub authorization: bool,
}

/// `Cache-Control` directives that matter to a shared cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct CacheControl {
    no_store: bool,
    no_cache: bool,
    private: bool,
    public: bool,
    must_revalidate: bool,
    max_age: Option<u64>,
    s_maxage: Option<u64>,
    stale_while_revalidate: Option<u64>,
    stale_if_error: Option<u64>,
}

/// `Surrogate-Control` directives (Edge Architecture 1.0) aimed at this proxy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct SurrogateControl {
    no_store: bool,
    max_age: Option<u64>,
}

// === impl CachePolicy ===

impl CachePolicy {
    /// The policy of a validated `[cache]` section.
    pub fn from_config(cache: &CacheSettings) -> Self {
        let mut policy = Self {
            rules: cache
                .rules
                .iter()
                .map(|rule| CacheRuleSettings {
                    key_headers: merge_names(&rule.key_headers, &[]).to_vec(),
                    ..rule.clone()
                })
                .collect(),
            key_headers: merge_names(&cache.key_headers, &[]).to_vec(),
            key_names: Vec::new(),
            default_ttl: cache.default_ttl,
            stale_while_revalidate: cache.stale_while_revalidate,
            stale_if_error: cache.stale_if_error,
            hit_for_pass: cache.hit_for_pass.min(MAX_AGE),
            max_key_bytes: cache.max_surrogate_key_bytes,
            max_keys: cache.max_surrogate_keys,
        };
        let rules = policy.rules.iter().map(Some).chain([None]);
        let key_names = rules
            .map(|rule| {
                let from_rule = rule.map_or(&[][..], |r| r.key_headers.as_slice());
                let keyed = merge_names(&policy.key_headers, from_rule);
                merge_names(&keyed, &TOLD_UPSTREAM)
            })
            .collect();
        policy.key_names = key_names;
        policy
    }

    /// Decides whether and how long a response may be stored. `request_carried_credentials`:
    /// the upstream request had Cookie or Authorization.
    ///
    /// Not knowing which, this assumes both: a rule must key both `cookie` and
    /// `authorization` to make such a response storable without `public` or `s-maxage`. The
    /// caches themselves use [`CachePolicy::decide_for`], which knows.
    pub fn decide(
        &self,
        url: &Url,
        status: StatusCode,
        headers: &HeaderMap,
        request_carried_credentials: bool,
    ) -> Decision {
        let credentials = Credentials {
            cookie: request_carried_credentials,
            authorization: request_carried_credentials,
        };
        self.decide_for(url, status, headers, credentials)
    }

    /// Decides whether and how long a response may be stored, given which credentials the
    /// upstream request carried.
    ///
    /// Only 200 is stored. `no-store` (in `Cache-Control` or `Surrogate-Control`), `private`,
    /// `Vary: *` (or an unreadable `Vary`, or one over 16 names) and `Set-Cookie` are never
    /// stored, whatever the rules say. A response to a request with credentials is stored only
    /// when it says `public` or `s-maxage`, or when the key holds every credential the
    /// request carried (config or rule `key_headers`), making it one entry per user.
    ///
    /// The TTL comes from, first match wins: the first rule matching the URL,
    /// `Surrogate-Control: max-age=N[+M]` (N; targeted at `esi-proxy` beats untargeted),
    /// `Cache-Control: s-maxage`, `max-age` (these three less the response's `Age`), then
    /// `cache.default_ttl_s`. Without a rule, `no-cache` is not stored. A TTL of 0 is not
    /// stored. `Expires` is not read.
    ///
    /// The stale windows: the rule's, else the response's `stale-while-revalidate=N` /
    /// `stale-if-error=N` (RFC 5861), else the config's; `must-revalidate` or
    /// `proxy-revalidate` zero the latter two. Ages over a year count as a year.
    pub fn decide_for(
        &self,
        url: &Url,
        status: StatusCode,
        headers: &HeaderMap,
        credentials: Credentials,
    ) -> Decision {
        self.decide_with_ttl(url, status, headers, credentials, None)
    }

    /// [`CachePolicy::decide_for`] for an include whose tag set `ttl`: after a matching rule
    /// (the operator's word comes first) and before the response's headers, `no-cache`
    /// included; zero is not stored. Every refusal for safety (status, `no-store`, `private`,
    /// `Vary`, `Set-Cookie`, credentials) stands whatever the tag says.
    pub fn decide_with_ttl(
        &self,
        url: &Url,
        status: StatusCode,
        headers: &HeaderMap,
        credentials: Credentials,
        include_ttl: Option<Duration>,
    ) -> Decision {
        if status != StatusCode::OK {
            return Decision::Pass("status");
        }
        let cc = CacheControl::parse(headers);
        let sc = SurrogateControl::parse(headers);
        if cc.no_store || sc.no_store {
            return Decision::Pass("no-store");
        }
        if cc.private {
            return Decision::Pass("private");
        }
        if vary_names(headers).is_none() {
            return Decision::Pass("vary");
        }
        if headers.contains_key(SET_COOKIE) {
            return Decision::Pass("set-cookie");
        }
        let rule = self.rule_for(url);
        if credentials.any() && !cc.public && cc.s_maxage.is_none() {
            let keys = self.key_names_of(rule.map(|(index, _)| index));
            let keyed = |carried: bool, name: &HeaderName| !carried || keys.contains(name);
            if !keyed(credentials.cookie, &COOKIE)
                || !keyed(credentials.authorization, &AUTHORIZATION)
            {
                return Decision::Pass("credentials");
            }
        }
        let age = age_of(headers);
        let from_header = |n: u64| Duration::from_secs(n.saturating_sub(age));
        let (ttl, source) = match rule {
            Some((index, rule)) => (rule.ttl, TtlSource::Rule(index, rule.pattern.clone())),
            None if include_ttl.is_some() => (include_ttl.unwrap_or_default(), TtlSource::Include),
            None if cc.no_cache => return Decision::Pass("no-cache"),
            None => match (sc.max_age, cc.s_maxage, cc.max_age) {
                (Some(n), _, _) => (from_header(n), TtlSource::SurrogateControl),
                (None, Some(n), _) => (from_header(n), TtlSource::SMaxAge),
                (None, None, Some(n)) => (from_header(n), TtlSource::MaxAge),
                (None, None, None) => (self.default_ttl, TtlSource::Default),
            },
        };
        if ttl.is_zero() {
            return Decision::Pass("ttl");
        }
        let revalidate = cc.must_revalidate;
        let window =
            |from_rule: Option<Duration>, from_response: Option<u64>, default: Duration| {
                let window = from_rule.unwrap_or_else(|| {
                    if revalidate {
                        Duration::ZERO
                    } else {
                        from_response.map_or(default, Duration::from_secs)
                    }
                });
                window.min(MAX_AGE)
            };
        let rule = rule.map(|(_, r)| r);
        Decision::Store {
            ttl: ttl.min(MAX_AGE),
            stale_while_revalidate: window(
                rule.and_then(|r| r.stale_while_revalidate),
                cc.stale_while_revalidate,
                self.stale_while_revalidate,
            ),
            stale_if_error: window(
                rule.and_then(|r| r.stale_if_error),
                cc.stale_if_error,
                self.stale_if_error,
            ),
            source,
        }
    }

    /// The names every cache key of `url` varies on, whatever its response's `Vary`: its key
    /// headers and [`TOLD_UPSTREAM`], sorted and unique.
    pub(super) fn key_names(&self, url: &Url) -> &Arc<[HeaderName]> {
        self.key_names_of(self.rule_for(url).map(|(index, _)| index))
    }

    /// [`CachePolicy::key_names`] of the URLs rule `index` matches (`None`: no rule).
    fn key_names_of(&self, index: Option<usize>) -> &Arc<[HeaderName]> {
        &self.key_names[index.unwrap_or(self.rules.len())]
    }

    /// The surrogate keys of a response with `headers`, within the configured bounds, and
    /// how many each bound dropped.
    pub(super) fn surrogate_keys(&self, headers: &HeaderMap) -> SurrogateKeys {
        surrogate_keys(headers, self.max_key_bytes, self.max_keys)
    }

    /// How long a key whose response could not be stored skips the cache.
    pub(super) fn hit_for_pass(&self) -> Duration {
        self.hit_for_pass
    }

    /// The first rule matching `url`: its glob over `host:port/path`, or over the path alone
    /// when it starts with `/`.
    fn rule_for(&self, url: &Url) -> Option<(usize, &CacheRuleSettings)> {
        let path = url.path();
        // Written out only when a rule reads it: most configs match paths, or have no rules.
        let mut full = None;
        self.rules.iter().enumerate().find(|(_, rule)| {
            let text = if rule.pattern.starts_with('/') {
                path
            } else {
                full.get_or_insert_with(|| {
                    format!(
                        "{}:{}{}",
                        url.host_str().unwrap_or(""),
                        url.port_or_known_default().unwrap_or(0),
                        path
                    )
                })
                .as_str()
            };
            glob_match(&rule.pattern, text)
        })
    }
}

// === impl TtlSource ===

impl fmt::Display for TtlSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TtlSource::Rule(index, pattern) => write!(f, "rule[{index}] {pattern:?}"),
            TtlSource::Include => f.write_str("include ttl"),
            TtlSource::SurrogateControl => f.write_str("surrogate-control"),
            TtlSource::SMaxAge => f.write_str("s-maxage"),
            TtlSource::MaxAge => f.write_str("max-age"),
            TtlSource::Default => f.write_str("default"),
        }
    }
}

// === impl Credentials ===

impl Credentials {
    /// The credentials in `headers` that go upstream: none unless the host is `trusted`.
    pub(super) fn of(headers: &HeaderMap, trusted: bool) -> Self {
        Self {
            cookie: trusted && headers.contains_key(COOKIE),
            authorization: trusted && headers.contains_key(AUTHORIZATION),
        }
    }

    /// Whether any went upstream.
    fn any(self) -> bool {
        self.cookie || self.authorization
    }

    pub(super) fn bits(self) -> u8 {
        u8::from(self.cookie) | (u8::from(self.authorization) << 1)
    }
}

// === impl CacheControl ===

impl CacheControl {
    /// The directives of every `Cache-Control` value. A repeated age takes the smaller value;
    /// an age that is not a number counts as 0 (RFC 9111: treat as stale).
    fn parse(headers: &HeaderMap) -> Self {
        let mut cc = Self::default();
        for value in headers.get_all(CACHE_CONTROL) {
            let text = String::from_utf8_lossy(value.as_bytes());
            for directive in split_unquoted(&text, ',') {
                let (name, arg) = directive_parts(directive);
                let slot = match name.to_ascii_lowercase().as_str() {
                    "no-store" => {
                        cc.no_store = true;
                        continue;
                    }
                    "no-cache" => {
                        cc.no_cache = true;
                        continue;
                    }
                    "private" => {
                        cc.private = true;
                        continue;
                    }
                    "public" => {
                        cc.public = true;
                        continue;
                    }
                    "must-revalidate" | "proxy-revalidate" => {
                        cc.must_revalidate = true;
                        continue;
                    }
                    "max-age" => &mut cc.max_age,
                    "s-maxage" => &mut cc.s_maxage,
                    "stale-while-revalidate" => &mut cc.stale_while_revalidate,
                    "stale-if-error" => &mut cc.stale_if_error,
                    _ => continue,
                };
                let seconds = delta_seconds(arg);
                *slot = Some(slot.map_or(seconds, |old| old.min(seconds)));
            }
        }
        cc
    }
}

// === impl SurrogateControl ===

impl SurrogateControl {
    /// The directives of every `Surrogate-Control` value that are untargeted or targeted at
    /// `esi-proxy` (`max-age=60;esi-proxy`); a targeted `max-age` beats an untargeted one.
    /// `max-age=N+M` gives N.
    fn parse(headers: &HeaderMap) -> Self {
        let mut sc = Self::default();
        let (mut targeted, mut untargeted) = (None::<u64>, None::<u64>);
        for value in headers.get_all(SURROGATE_CONTROL) {
            let text = String::from_utf8_lossy(value.as_bytes());
            for directive in split_unquoted(&text, ',') {
                let mut parts = split_unquoted(directive, ';').into_iter();
                let body = parts.next().unwrap_or_default();
                let target = parts.next().map(str::trim);
                if target.is_some_and(|t| !t.eq_ignore_ascii_case(DEVICE)) {
                    continue;
                }
                let (name, arg) = directive_parts(body);
                if name.eq_ignore_ascii_case("no-store") {
                    sc.no_store = true;
                } else if name.eq_ignore_ascii_case("max-age") {
                    let first = arg.map(|a| a.split('+').next().unwrap_or_default());
                    let seconds = delta_seconds(first);
                    let slot = if target.is_some() {
                        &mut targeted
                    } else {
                        &mut untargeted
                    };
                    *slot = Some(slot.map_or(seconds, |old| old.min(seconds)));
                }
            }
        }
        sc.max_age = targeted.or(untargeted);
        sc
    }
}

// === helpers ===

/// Sorted, unique union of two lists of names.
pub(super) fn merge_names(a: &[HeaderName], b: &[HeaderName]) -> Arc<[HeaderName]> {
    let mut names: Vec<HeaderName> = a.iter().chain(b).cloned().collect();
    names.sort_by(|x, y| x.as_str().cmp(y.as_str()));
    names.dedup();
    names.into()
}

/// The names a response varies on, sorted and unique, without `Accept-Encoding` (bodies are
/// stored decoded); `None` for `*`, a name that does not parse, or more than 16 names.
pub(super) fn vary_names(headers: &HeaderMap) -> Option<Vec<HeaderName>> {
    let mut names = Vec::new();
    for value in headers.get_all(VARY) {
        let text = value.to_str().ok()?;
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if item == "*" {
                return None;
            }
            let name = HeaderName::from_bytes(item.to_ascii_lowercase().as_bytes()).ok()?;
            if name != http::header::ACCEPT_ENCODING {
                names.push(name);
            }
        }
    }
    let names = merge_names(&names, &[]).to_vec();
    (names.len() <= MAX_VARY_NAMES).then_some(names)
}

/// The response's `Age` in seconds; 0 when absent or unreadable.
fn age_of(headers: &HeaderMap) -> u64 {
    headers
        .get(AGE)
        .and_then(|v| v.to_str().ok())
        .map_or(0, |v| delta_seconds(Some(v)))
}

/// A delta-seconds argument: digits, saturating; anything else is 0.
fn delta_seconds(arg: Option<&str>) -> u64 {
    let Some(digits) = arg.map(str::trim) else {
        return 0;
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return 0;
    }
    digits.parse().unwrap_or(u64::MAX)
}

/// A directive's name and unquoted argument: `max-age="5"` gives `("max-age", Some("5"))`.
fn directive_parts(directive: &str) -> (&str, Option<&str>) {
    match directive.split_once('=') {
        Some((name, arg)) => (name.trim(), Some(arg.trim().trim_matches('"'))),
        None => (directive.trim(), None),
    }
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
