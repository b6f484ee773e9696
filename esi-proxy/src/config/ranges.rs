//! The documented range of every numeric config field, in one table ([`RANGES`]), and the check
//! that holds each number of a config to its field's range. Values outside it never reach
//! `Settings`, so nothing built from them (semaphores, deadlines, buffers) can panic.
//! Knows fields by their dotted names only; never reads what they mean.

use serde_json::Value;

use super::source::key_name;
use super::Config;

/// The values a numeric config field accepts, both ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// Dotted field name; list entries are written `[]`: `cache.rules[].ttl_s`.
    pub field: &'static str,
    /// Smallest value accepted.
    pub min: u64,
    /// Largest value accepted.
    pub max: u64,
    /// Why the maximum is what it is, said after the value when it is over; "" when the
    /// maximum only keeps arithmetic on the value sound.
    pub why: &'static str,
}

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;
const TIB: u64 = 1024 * GIB;
/// One hour in milliseconds: the longest deadline or grace period.
const HOUR_MS: u64 = 60 * 60 * 1000;
/// The shortest deadline a client is held to, in milliseconds.
const CLIENT_MIN_MS: u64 = 100;
/// One day in milliseconds.
const DAY_MS: u64 = 24 * HOUR_MS;
/// One year in seconds: the longest TTL or stale window (the cache policy caps headers there).
const YEAR_S: u64 = 365 * 24 * 60 * 60;

/// Every numeric field of the schema and its range, in the order of the file. A new numeric
/// field gets one line here (and its range in `config/esi-proxy.toml`); a test fails until it
/// has both. A table keyed by names (a per-host override) writes its key as `*`:
/// `fetch.breaker.hosts.*.max_failures`.
pub const RANGES: &[Range] = &[
    range("server.max_header_bytes", 8 * KIB, MIB),
    range("server.shutdown_grace_ms", 0, HOUR_MS),
    range("server.config_poll_ms", 0, DAY_MS),
    range("server.max_connections", 1, MIB),
    // A client across a real network cannot meet a deadline under 100 ms.
    range("server.header_read_timeout_ms", CLIENT_MIN_MS, HOUR_MS),
    range("server.keep_alive_timeout_ms", 0, HOUR_MS),
    range("server.send_timeout_ms", CLIENT_MIN_MS, HOUR_MS),
    range("server.request_body_timeout_ms", CLIENT_MIN_MS, HOUR_MS),
    Range {
        why: "includes nested that deep are a loop",
        ..range("esi.max_depth", 0, 20)
    },
    range("esi.max_includes", 1, 65_536),
    Range {
        why: "ESI elements nested that deep are not a page design",
        ..range("esi.max_nesting", 1, 256)
    },
    range("esi.max_expr_evaluations", 1, 10_000_000),
    range("esi.max_expr_value_bytes", 16, 16 * MIB),
    range("esi.max_expr_list_items", 1, 1_000_000),
    range("esi.max_pattern_bytes", KIB, 16 * MIB),
    range("esi.max_foreach_iterations", 1, 100_000),
    range("esi.max_function_depth", 1, 64),
    range("esi.head_window_bytes", 0, 16 * MIB),
    Range {
        why: "the head window holds a page's first byte; a minute is past any page's patience",
        ..range("esi.max_head_hold_ms", 0, 60_000)
    },
    range("fetch.connect_timeout_ms", 1, HOUR_MS),
    range("fetch.fragment_timeout_ms", 1, HOUR_MS),
    range("fetch.layout_timeout_ms", 1, HOUR_MS),
    range("fetch.page_timeout_ms", 1, HOUR_MS),
    range("fetch.max_fragment_bytes", 1, GIB),
    range("fetch.max_layout_bytes", 1, GIB),
    range("fetch.max_page_bytes", 1, GIB),
    range("fetch.max_concurrent_per_page", 1, 65_536),
    range("fetch.max_concurrent", 1, MIB),
    range("fetch.pool_idle_per_host", 0, 65_536),
    range("fetch.pool_idle_timeout_ms", 1, HOUR_MS),
    range("fetch.breaker.failures", 1, 65_536),
    range("fetch.breaker.open_ms", 1, DAY_MS),
    range("fetch.breaker.max_open_ms", 1, DAY_MS),
    range("fetch.hosts[].breaker.failures", 1, 65_536),
    range("fetch.hosts[].breaker.open_ms", 1, DAY_MS),
    range("fetch.hosts[].breaker.max_open_ms", 1, DAY_MS),
    range("cache.fragment_capacity_bytes", 0, TIB),
    range("cache.layout_capacity_bytes", 0, TIB),
    range("cache.default_ttl_s", 0, YEAR_S),
    range("cache.stale_while_revalidate_s", 0, YEAR_S),
    range("cache.stale_if_error_s", 0, YEAR_S),
    range("cache.hit_for_pass_s", 0, YEAR_S),
    Range {
        why: "a key is a short tag (a product or a price list), not a document",
        ..range("cache.max_surrogate_key_bytes", 1, 4 * KIB)
    },
    range("cache.max_surrogate_keys", 1, 4096),
    range("cache.max_surrogate_index_entries", 1, 1_000_000_000),
    range("cache.soft_purge_grace_s", 0, YEAR_S),
    range("cache.rules[].ttl_s", 0, YEAR_S),
    range("cache.rules[].stale_while_revalidate_s", 0, YEAR_S),
    range("cache.rules[].stale_if_error_s", 0, YEAR_S),
    range("cache.shared.timeout_ms", 1, HOUR_MS),
    range("cache.shared.connect_timeout_ms", 1, HOUR_MS),
    range("cache.shared.pool_size", 1, 1024),
    range("cache.shared.lease_ms", 1, HOUR_MS),
    range("cache.shared.breaker_failures", 1, 65_536),
    range("cache.shared.breaker_open_ms", 0, DAY_MS),
    range("cache.shared.compress_min_bytes", 0, GIB),
    Range {
        why: "a page head holds no more preload hints than a browser acts on",
        ..range("hints.max_links", 1, 256)
    },
    Range {
        why: "a response head that large is refused by common servers and browsers",
        ..range("hints.max_bytes", 64, 64 * KIB)
    },
    range("hints.max_pages", 0, 10_000_000),
];

/// A [`Range`] with no reason for its maximum.
const fn range(field: &'static str, min: u64, max: u64) -> Range {
    Range {
        field,
        min,
        max,
        why: "",
    }
}

/// The range of `field` (dotted, list indices written `[]`), when it is numeric.
pub fn range_of(field: &str) -> Option<&'static Range> {
    RANGES.iter().find(|r| r.field == field)
}

/// Calls `problem(field, message)` for every number of `config` outside its field's range,
/// the field with its list indices (`cache.rules[2].ttl_s`).
pub(super) fn check(config: &Config, mut problem: impl FnMut(&str, String)) {
    let tree = serde_json::to_value(config).expect("the schema serializes: it has string keys");
    walk(&tree, &mut String::new(), &mut Vec::new(), &mut problem);
}

/// Visits the numbers under `value`; `field` is its path as problems name it (list indices,
/// keys quoted as TOML needs), `generic` its keys, a list's written `key[]`.
fn walk(
    value: &Value,
    field: &mut String,
    generic: &mut Vec<String>,
    problem: &mut impl FnMut(&str, String),
) {
    let field_len = field.len();
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                if !field.is_empty() {
                    field.push('.');
                }
                field.push_str(&key_name(key));
                generic.push(key.clone());
                walk(value, field, generic, problem);
                generic.pop();
                field.truncate(field_len);
            }
        }
        Value::Array(items) => {
            let Some(last) = generic.last_mut() else {
                return;
            };
            last.push_str("[]");
            for (i, item) in items.iter().enumerate() {
                field.push_str(&format!("[{i}]"));
                walk(item, field, generic, problem);
                field.truncate(field_len);
            }
            if let Some(last) = generic.last_mut() {
                last.truncate(last.len() - 2);
            }
        }
        Value::Number(n) => {
            let Some(range) = find(RANGES, generic) else {
                // Only a field missing from `RANGES` gets here; a test keeps that from happening.
                return;
            };
            // Unsigned fields cannot hold a negative number; a signed one could.
            let n = n
                .as_u64()
                .map(i128::from)
                .or_else(|| n.as_i64().map(i128::from));
            if let Some(message) = n.and_then(|n| range.refuse(n)) {
                problem(field, message);
            }
        }
        _ => {}
    }
}

/// The range in `table` of the field whose keys are `keys`; a `*` in a range's name matches
/// any one key (a host name, dots and all).
fn find<'a>(table: &'a [Range], keys: &[String]) -> Option<&'a Range> {
    table.iter().find(|range| {
        let mut names = range.field.split('.');
        keys.iter().all(|key| {
            names.next().is_some_and(|name| {
                name == key || name == "*" || (name == "*[]" && key.ends_with("[]"))
            })
        }) && names.next().is_none()
    })
}

// === impl Range ===

impl Range {
    /// Why `value` is outside the range, or `None` when it is inside.
    fn refuse(&self, value: i128) -> Option<String> {
        if value < i128::from(self.min) {
            return Some(if self.min == 1 && value == 0 {
                "must be greater than 0".to_owned()
            } else {
                format!("{value} is below the minimum of {}", self.min)
            });
        }
        if value > i128::from(self.max) {
            let mut message = format!("{value} is over the limit of {}", self.max);
            if !self.why.is_empty() {
                message.push_str(": ");
                message.push_str(self.why);
            }
            return Some(message);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::config::{CacheRule, HostBreakerConfig, HostConfig};

    /// A config with one entry in every list, each optional number set: every numeric field of
    /// the schema appears in it.
    fn every_field() -> Config {
        let mut config = Config::default();
        config.fetch.hosts.push(HostConfig {
            url: "http://a.test".into(),
            trusted: false,
            esi: false,
            private_network: false,
            http2: false,
            breaker: Some(HostBreakerConfig {
                enabled: Some(true),
                failures: Some(1),
                open_ms: Some(1),
                max_open_ms: Some(1),
            }),
        });
        config.cache.rules.push(CacheRule {
            pattern: "/r".into(),
            ttl_s: 1,
            stale_while_revalidate_s: Some(1),
            stale_if_error_s: Some(1),
            key_headers: Vec::new(),
        });
        config
    }

    /// Dotted names (indices as `[]`) of every number in `value`.
    fn numbers(value: &Value, path: &str, out: &mut BTreeSet<String>) {
        match value {
            Value::Object(map) => {
                for (key, value) in map {
                    let path = if path.is_empty() {
                        key.clone()
                    } else {
                        format!("{path}.{key}")
                    };
                    numbers(value, &path, out);
                }
            }
            Value::Array(items) => {
                for item in items {
                    numbers(item, &format!("{path}[]"), out);
                }
            }
            Value::Number(_) => {
                out.insert(path.to_owned());
            }
            _ => {}
        }
    }

    #[test]
    fn every_numeric_field_has_a_range_and_every_range_a_field() {
        let mut in_schema = BTreeSet::new();
        numbers(
            &serde_json::to_value(every_field()).expect("serializes"),
            "",
            &mut in_schema,
        );
        let in_table: BTreeSet<String> = RANGES.iter().map(|r| r.field.to_owned()).collect();
        assert_eq!(in_table.len(), RANGES.len(), "a field is listed twice");
        let missing: Vec<_> = in_schema.difference(&in_table).collect();
        assert!(
            missing.is_empty(),
            "numeric fields with no range: {missing:?}"
        );
        let stale: Vec<_> = in_table.difference(&in_schema).collect();
        assert!(stale.is_empty(), "ranges of no field: {stale:?}");
        for r in RANGES {
            assert!(r.min <= r.max, "{}: empty range", r.field);
            // Every maximum fits the field in TOML, which holds i64 at most.
            assert!(i64::try_from(r.max).is_ok(), "{}", r.field);
        }
        every_field()
            .validate()
            .expect("the every-field config is valid");
    }

    #[test]
    fn the_default_lies_in_every_range() {
        let mut found = Vec::new();
        check(&every_field(), |field, message| {
            found.push(format!("{field}: {message}"));
        });
        assert_eq!(found, Vec::<String>::new());
    }

    #[test]
    fn values_at_and_past_the_ends() {
        let r = range("x", 1, 10);
        for (value, want) in [
            (
                i128::from(i64::MIN),
                Some("-9223372036854775808 is below the minimum of 1"),
            ),
            (-1, Some("-1 is below the minimum of 1")),
            (0, Some("must be greater than 0")),
            (1, None),
            (10, None),
            (11, Some("11 is over the limit of 10")),
            (
                i128::from(u64::MAX),
                Some("18446744073709551615 is over the limit of 10"),
            ),
        ] {
            assert_eq!(r.refuse(value).as_deref(), want, "{value}");
        }
        let depth = range_of("esi.max_depth").expect("listed");
        assert_eq!(
            depth.refuse(21).as_deref(),
            Some("21 is over the limit of 20: includes nested that deep are a loop")
        );
        assert_eq!(
            range("y", 8192, 9000).refuse(0).as_deref(),
            Some("0 is below the minimum of 8192")
        );
    }

    #[test]
    fn a_star_matches_any_one_key() {
        let table = [
            range("fetch.breaker.hosts.*.max_failures", 1, 10),
            range("fetch.hosts[].weight", 0, 5),
        ];
        let keys = |path: &[&str]| path.iter().map(|k| (*k).to_owned()).collect::<Vec<_>>();
        let found = |path: &[&str]| find(&table, &keys(path)).map(|r| r.field);
        let host = [
            "fetch",
            "breaker",
            "hosts",
            "a.example:8080",
            "max_failures",
        ];
        assert_eq!(found(&host), Some(table[0].field));
        assert_eq!(found(&["fetch", "hosts[]", "weight"]), Some(table[1].field));
        assert_eq!(found(&["fetch", "breaker", "hosts", "max_failures"]), None);
        assert_eq!(found(&["fetch", "hosts[]", "weight", "x"]), None);
        assert_eq!(found(&["fetch", "hosts[]"]), None);
    }

    /// Numbers in lists carry their index, so the problem names the line of that entry.
    #[test]
    fn list_entries_are_named_with_their_index() {
        let mut config = every_field();
        config.cache.rules.push(CacheRule {
            pattern: "/s".into(),
            ttl_s: u64::MAX,
            stale_while_revalidate_s: None,
            stale_if_error_s: Some(YEAR_S + 1),
            key_headers: Vec::new(),
        });
        config.fetch.max_concurrent = usize::MAX;
        let mut found = Vec::new();
        check(&config, |field, message| {
            found.push(format!("{field}: {message}"));
        });
        found.sort();
        assert_eq!(
            found,
            [
                format!(
                    "cache.rules[1].stale_if_error_s: {} is over the limit of {YEAR_S}",
                    YEAR_S + 1
                ),
                format!(
                    "cache.rules[1].ttl_s: {} is over the limit of {YEAR_S}",
                    u64::MAX
                ),
                format!(
                    "fetch.max_concurrent: {} is over the limit of {MIB}",
                    usize::MAX
                ),
            ]
        );
    }
}
