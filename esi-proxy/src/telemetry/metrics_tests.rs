//! Tests of the metrics registry and its Prometheus rendering: exact output, label bounds and
//! escaping, concurrent updates; every rendering is also run through the format checker.

use std::collections::HashSet;

use super::exposition_check::parse_exposition;
use super::metrics::{
    Metrics, FRAGMENT_BYTES, FRAGMENT_FAILURES, FRAGMENT_FETCHES, MAX_HOST_LABELS, MAX_KIND_LABELS,
    PAGES_IN_FLIGHT, REQUESTS, REQUEST_DURATION,
};
use super::prometheus::Float;

/// Everything recorded once, rendered: counters, cumulative buckets, `_sum`/`_count`, label
/// escaping, custom families sorted among the built-in ones.
const FULL: &str = r#"# HELP esi_proxy_cache_hits_total Fragment cache hits.
# TYPE esi_proxy_cache_hits_total counter
esi_proxy_cache_hits_total{cache="fragment"} 2
esi_proxy_cache_hits_total{cache="template"} 1
# HELP esi_proxy_cache_purges_total Purge requests applied, by kind (url, prefix, key) and mode (hard, soft).
# TYPE esi_proxy_cache_purges_total counter
esi_proxy_cache_purges_total{kind="key",mode="hard"} 2
esi_proxy_cache_purges_total{kind="url",mode="soft"} 1
# HELP esi_proxy_config_generation Config reloads applied.
# TYPE esi_proxy_config_generation gauge
esi_proxy_config_generation 4
# HELP esi_proxy_esi_problems_total ESI markup problems met in lenient mode.
# TYPE esi_proxy_esi_problems_total counter
esi_proxy_esi_problems_total 3
# HELP esi_proxy_fallbacks_total Fallbacks used in place of a fragment, by kind.
# TYPE esi_proxy_fallbacks_total counter
esi_proxy_fallbacks_total{kind="alt"} 2
esi_proxy_fallbacks_total{kind="except"} 1
# HELP esi_proxy_fragment_bytes_total Fragment body bytes received, by fragment host.
# TYPE esi_proxy_fragment_bytes_total counter
esi_proxy_fragment_bytes_total{host="a.test:80"} 100
esi_proxy_fragment_bytes_total{host="b\"q\\\n:1"} 7
# HELP esi_proxy_fragment_duration_seconds Time to fetch one fragment, in seconds, by fragment host.
# TYPE esi_proxy_fragment_duration_seconds histogram
esi_proxy_fragment_duration_seconds_bucket{host="a.test:80",le="0.005"} 1
esi_proxy_fragment_duration_seconds_bucket{host="a.test:80",le="0.01"} 1
esi_proxy_fragment_duration_seconds_bucket{host="a.test:80",le="0.025"} 1
esi_proxy_fragment_duration_seconds_bucket{host="a.test:80",le="0.05"} 1
esi_proxy_fragment_duration_seconds_bucket{host="a.test:80",le="0.1"} 1
esi_proxy_fragment_duration_seconds_bucket{host="a.test:80",le="0.25"} 1
esi_proxy_fragment_duration_seconds_bucket{host="a.test:80",le="0.5"} 1
esi_proxy_fragment_duration_seconds_bucket{host="a.test:80",le="1"} 1
esi_proxy_fragment_duration_seconds_bucket{host="a.test:80",le="2.5"} 2
esi_proxy_fragment_duration_seconds_bucket{host="a.test:80",le="5"} 2
esi_proxy_fragment_duration_seconds_bucket{host="a.test:80",le="10"} 2
esi_proxy_fragment_duration_seconds_bucket{host="a.test:80",le="+Inf"} 2
esi_proxy_fragment_duration_seconds_sum{host="a.test:80"} 2.00390625
esi_proxy_fragment_duration_seconds_count{host="a.test:80"} 2
esi_proxy_fragment_duration_seconds_bucket{host="b\"q\\\n:1",le="0.005"} 0
esi_proxy_fragment_duration_seconds_bucket{host="b\"q\\\n:1",le="0.01"} 1
esi_proxy_fragment_duration_seconds_bucket{host="b\"q\\\n:1",le="0.025"} 1
esi_proxy_fragment_duration_seconds_bucket{host="b\"q\\\n:1",le="0.05"} 1
esi_proxy_fragment_duration_seconds_bucket{host="b\"q\\\n:1",le="0.1"} 1
esi_proxy_fragment_duration_seconds_bucket{host="b\"q\\\n:1",le="0.25"} 1
esi_proxy_fragment_duration_seconds_bucket{host="b\"q\\\n:1",le="0.5"} 1
esi_proxy_fragment_duration_seconds_bucket{host="b\"q\\\n:1",le="1"} 1
esi_proxy_fragment_duration_seconds_bucket{host="b\"q\\\n:1",le="2.5"} 1
esi_proxy_fragment_duration_seconds_bucket{host="b\"q\\\n:1",le="5"} 1
esi_proxy_fragment_duration_seconds_bucket{host="b\"q\\\n:1",le="10"} 1
esi_proxy_fragment_duration_seconds_bucket{host="b\"q\\\n:1",le="+Inf"} 1
esi_proxy_fragment_duration_seconds_sum{host="b\"q\\\n:1"} 0.0078125
esi_proxy_fragment_duration_seconds_count{host="b\"q\\\n:1"} 1
# HELP esi_proxy_fragment_failures_total Fragment fetches that failed, by failure kind.
# TYPE esi_proxy_fragment_failures_total counter
esi_proxy_fragment_failures_total{kind="timeout"} 1
# HELP esi_proxy_fragment_fetches_total Fragment fetches finished, by fragment host and outcome.
# TYPE esi_proxy_fragment_fetches_total counter
esi_proxy_fragment_fetches_total{host="a.test:80",outcome="ok"} 1
esi_proxy_fragment_fetches_total{host="a.test:80",outcome="timeout"} 1
esi_proxy_fragment_fetches_total{host="b\"q\\\n:1",outcome="ok"} 1
# HELP esi_proxy_layout_failures_total Layouts that failed, by failure kind.
# TYPE esi_proxy_layout_failures_total counter
# HELP esi_proxy_pages_in_flight Pages being composed right now.
# TYPE esi_proxy_pages_in_flight gauge
esi_proxy_pages_in_flight 1
# HELP esi_proxy_request_duration_seconds Time to serve a client request, in seconds, by route.
# TYPE esi_proxy_request_duration_seconds histogram
esi_proxy_request_duration_seconds_bucket{route="esi",le="0.005"} 0
esi_proxy_request_duration_seconds_bucket{route="esi",le="0.01"} 0
esi_proxy_request_duration_seconds_bucket{route="esi",le="0.025"} 0
esi_proxy_request_duration_seconds_bucket{route="esi",le="0.05"} 0
esi_proxy_request_duration_seconds_bucket{route="esi",le="0.1"} 1
esi_proxy_request_duration_seconds_bucket{route="esi",le="0.25"} 2
esi_proxy_request_duration_seconds_bucket{route="esi",le="0.5"} 2
esi_proxy_request_duration_seconds_bucket{route="esi",le="1"} 2
esi_proxy_request_duration_seconds_bucket{route="esi",le="2.5"} 2
esi_proxy_request_duration_seconds_bucket{route="esi",le="5"} 2
esi_proxy_request_duration_seconds_bucket{route="esi",le="10"} 2
esi_proxy_request_duration_seconds_bucket{route="esi",le="+Inf"} 2
esi_proxy_request_duration_seconds_sum{route="esi"} 0.3125
esi_proxy_request_duration_seconds_count{route="esi"} 2
esi_proxy_request_duration_seconds_bucket{route="proxy",le="0.005"} 0
esi_proxy_request_duration_seconds_bucket{route="proxy",le="0.01"} 0
esi_proxy_request_duration_seconds_bucket{route="proxy",le="0.025"} 0
esi_proxy_request_duration_seconds_bucket{route="proxy",le="0.05"} 0
esi_proxy_request_duration_seconds_bucket{route="proxy",le="0.1"} 0
esi_proxy_request_duration_seconds_bucket{route="proxy",le="0.25"} 0
esi_proxy_request_duration_seconds_bucket{route="proxy",le="0.5"} 0
esi_proxy_request_duration_seconds_bucket{route="proxy",le="1"} 0
esi_proxy_request_duration_seconds_bucket{route="proxy",le="2.5"} 0
esi_proxy_request_duration_seconds_bucket{route="proxy",le="5"} 0
esi_proxy_request_duration_seconds_bucket{route="proxy",le="10"} 0
esi_proxy_request_duration_seconds_bucket{route="proxy",le="+Inf"} 1
esi_proxy_request_duration_seconds_sum{route="proxy"} 12
esi_proxy_request_duration_seconds_count{route="proxy"} 1
# HELP esi_proxy_requests_total Client requests finished, by route (esi, proxy, admin) and HTTP status sent.
# TYPE esi_proxy_requests_total counter
esi_proxy_requests_total{route="esi",status="200"} 2
esi_proxy_requests_total{route="proxy",status="404"} 1
# HELP esi_proxy_response_bytes_total Body bytes sent to clients, by route.
# TYPE esi_proxy_response_bytes_total counter
esi_proxy_response_bytes_total{route="esi"} 1234
esi_proxy_response_bytes_total{route="proxy"} 10
"#;

/// Nothing recorded yet: every built-in family is announced, unlabelled ones read 0.
const EMPTY: &str = "\
# HELP esi_proxy_cache_purges_total Purge requests applied, by kind (url, prefix, key) and mode (hard, soft).
# TYPE esi_proxy_cache_purges_total counter
# HELP esi_proxy_esi_problems_total ESI markup problems met in lenient mode.
# TYPE esi_proxy_esi_problems_total counter
esi_proxy_esi_problems_total 0
# HELP esi_proxy_fallbacks_total Fallbacks used in place of a fragment, by kind.
# TYPE esi_proxy_fallbacks_total counter
# HELP esi_proxy_fragment_bytes_total Fragment body bytes received, by fragment host.
# TYPE esi_proxy_fragment_bytes_total counter
# HELP esi_proxy_fragment_duration_seconds Time to fetch one fragment, in seconds, by fragment host.
# TYPE esi_proxy_fragment_duration_seconds histogram
# HELP esi_proxy_fragment_failures_total Fragment fetches that failed, by failure kind.
# TYPE esi_proxy_fragment_failures_total counter
# HELP esi_proxy_fragment_fetches_total Fragment fetches finished, by fragment host and outcome.
# TYPE esi_proxy_fragment_fetches_total counter
# HELP esi_proxy_layout_failures_total Layouts that failed, by failure kind.
# TYPE esi_proxy_layout_failures_total counter
# HELP esi_proxy_pages_in_flight Pages being composed right now.
# TYPE esi_proxy_pages_in_flight gauge
esi_proxy_pages_in_flight 0
# HELP esi_proxy_request_duration_seconds Time to serve a client request, in seconds, by route.
# TYPE esi_proxy_request_duration_seconds histogram
# HELP esi_proxy_requests_total Client requests finished, by route (esi, proxy, admin) and HTTP status sent.
# TYPE esi_proxy_requests_total counter
# HELP esi_proxy_response_bytes_total Body bytes sent to clients, by route.
# TYPE esi_proxy_response_bytes_total counter
";

/// Records into a fresh registry for one case.
type Record = fn(&Metrics);

fn record_everything(m: &Metrics) {
    m.record_request("proxy", 404, 12.0);
    m.record_request("esi", 200, 0.0625);
    m.record_request("esi", 200, 0.25);
    m.record_fragment("a.test:80", "ok", 0.003_906_25, 100);
    // A host's series found once and recorded on is the one found by its name.
    let a = m.fragment_host("a.test:80");
    m.record_fragment_at(&a, "timeout", 2.0, 0);
    m.record_fragment("b\"q\\\n:1", "ok", 0.007_812_5, 7);
    m.record_fallback("alt");
    m.record_fallback("except");
    m.record_fallback("alt");
    m.add_bytes_out("esi", 1000);
    m.add_bytes_out("proxy", 10);
    m.add_bytes_out("esi", 234);
    m.pages_in_flight(2);
    m.pages_in_flight(-1);
    m.add_esi_problems(3);
    m.record_purge("key", "hard");
    m.record_purge("url", "soft");
    m.record_purge("key", "hard");
    let hits = "esi_proxy_cache_hits_total";
    m.inc_counter(hits, "Fragment cache hits.", Some(("cache", "template")), 1);
    m.inc_counter(
        hits,
        "Later help is ignored.",
        Some(("cache", "fragment")),
        2,
    );
    m.set_gauge(
        "esi_proxy_config_generation",
        "Config reloads applied.",
        3.0,
    );
    m.set_gauge(
        "esi_proxy_config_generation",
        "Config reloads applied.",
        4.0,
    );
}

#[test]
fn render_exact() {
    let cases: &[(&str, Record, &str)] = &[
        ("nothing recorded", |_| {}, EMPTY),
        ("one of everything", record_everything, FULL),
    ];
    for (what, record, want) in cases {
        let m = Metrics::new();
        record(&m);
        let got = m.render();
        assert_eq!(got, *want, "case: {what}");
        if let Err(e) = parse_exposition(&got) {
            panic!("case {what}: {e}");
        }
    }
}

/// The sample lines (no comments) of one family, histogram series included.
fn samples_of(text: &str, family: &str) -> String {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| {
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            let stem = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            name == family || stem == family
        })
        .map(|line| format!("{line}\n"))
        .collect()
}

#[test]
fn render_families() {
    let cases: &[(&str, Record, &str, &str)] = &[
        (
            "failures count every outcome but ok",
            |m| {
                for outcome in ["ok", "timeout", "status", "timeout", "ok"] {
                    m.record_fragment("h:1", outcome, 0.1, 1);
                }
            },
            FRAGMENT_FAILURES,
            "esi_proxy_fragment_failures_total{kind=\"status\"} 1\n\
             esi_proxy_fragment_failures_total{kind=\"timeout\"} 2\n",
        ),
        (
            "label values are escaped",
            |m| m.record_fragment("x\"y\\z\nw", "ok", 0.0, 5),
            FRAGMENT_BYTES,
            "esi_proxy_fragment_bytes_total{host=\"x\\\"y\\\\z\\nw\"} 5\n",
        ),
        (
            "requests sort by route, then status as a number",
            |m| {
                for (route, status) in [("proxy", 404), ("esi", 502), ("esi", 200), ("esi", 99)] {
                    m.record_request(route, status, 0.1);
                }
            },
            REQUESTS,
            "esi_proxy_requests_total{route=\"esi\",status=\"99\"} 1\n\
             esi_proxy_requests_total{route=\"esi\",status=\"200\"} 1\n\
             esi_proxy_requests_total{route=\"esi\",status=\"502\"} 1\n\
             esi_proxy_requests_total{route=\"proxy\",status=\"404\"} 1\n",
        ),
        (
            "le is inclusive; bad durations count as zero",
            |m| {
                for seconds in [10.0, 10.5, 0.005, f64::NAN, -1.0, f64::INFINITY] {
                    m.record_request("admin", 200, seconds);
                }
            },
            REQUEST_DURATION,
            "esi_proxy_request_duration_seconds_bucket{route=\"admin\",le=\"0.005\"} 4\n\
             esi_proxy_request_duration_seconds_bucket{route=\"admin\",le=\"0.01\"} 4\n\
             esi_proxy_request_duration_seconds_bucket{route=\"admin\",le=\"0.025\"} 4\n\
             esi_proxy_request_duration_seconds_bucket{route=\"admin\",le=\"0.05\"} 4\n\
             esi_proxy_request_duration_seconds_bucket{route=\"admin\",le=\"0.1\"} 4\n\
             esi_proxy_request_duration_seconds_bucket{route=\"admin\",le=\"0.25\"} 4\n\
             esi_proxy_request_duration_seconds_bucket{route=\"admin\",le=\"0.5\"} 4\n\
             esi_proxy_request_duration_seconds_bucket{route=\"admin\",le=\"1\"} 4\n\
             esi_proxy_request_duration_seconds_bucket{route=\"admin\",le=\"2.5\"} 4\n\
             esi_proxy_request_duration_seconds_bucket{route=\"admin\",le=\"5\"} 4\n\
             esi_proxy_request_duration_seconds_bucket{route=\"admin\",le=\"10\"} 5\n\
             esi_proxy_request_duration_seconds_bucket{route=\"admin\",le=\"+Inf\"} 6\n\
             esi_proxy_request_duration_seconds_sum{route=\"admin\"} 20.505\n\
             esi_proxy_request_duration_seconds_count{route=\"admin\"} 6\n",
        ),
        (
            "pages in flight go up and down",
            |m| {
                for delta in [1, 1, -1, 5, -5] {
                    m.pages_in_flight(delta);
                }
            },
            PAGES_IN_FLIGHT,
            "esi_proxy_pages_in_flight 1\n",
        ),
        (
            "unlabelled custom counter",
            |m| {
                m.inc_counter("esi_proxy_reloads_total", "Reloads.", None, 1);
                m.inc_counter("esi_proxy_reloads_total", "Reloads.", None, 2);
            },
            "esi_proxy_reloads_total",
            "esi_proxy_reloads_total 3\n",
        ),
        (
            "a name keeps its first type",
            |m| {
                m.set_gauge("esi_proxy_cache_entries", "Entries.", 7.5);
                m.inc_counter("esi_proxy_cache_entries", "Entries.", None, 1);
            },
            "esi_proxy_cache_entries",
            "esi_proxy_cache_entries 7.5\n",
        ),
        (
            "a bad label name drops the update",
            |m| {
                m.inc_counter("esi_proxy_hits_total", "Hits.", None, 1);
                m.inc_counter("esi_proxy_hits_total", "Hits.", Some(("bad-name", "x")), 1);
                m.inc_counter(
                    "esi_proxy_hits_total",
                    "Hits.",
                    Some(("__reserved", "x")),
                    1,
                );
                m.inc_counter("esi_proxy_hits_total", "Hits.", Some(("kind", "a\"b")), 4);
            },
            "esi_proxy_hits_total",
            "esi_proxy_hits_total 1\nesi_proxy_hits_total{kind=\"a\\\"b\"} 4\n",
        ),
        (
            "gauges write NaN and infinities as Prometheus does",
            |m| {
                m.set_gauge("g_nan", "NaN.", f64::NAN);
                m.set_gauge("g_inf", "Inf.", f64::INFINITY);
                m.set_gauge("g_neg", "Neg.", f64::NEG_INFINITY);
                m.set_gauge("g_small", "Small.", -0.25);
            },
            "g_nan",
            "g_nan NaN\n",
        ),
        (
            "a labelled gauge keeps one value per label, sorted, and its kind",
            |m| {
                let (name, help) = ("esi_proxy_breaker_state", "State.");
                m.set_labelled_gauge(name, help, ("host", "b.test:80"), 1.0);
                m.set_labelled_gauge(name, help, ("host", "a.test:80"), 2.0);
                m.set_labelled_gauge(name, help, ("host", "b.test:80"), 0.0);
                m.set_labelled_gauge(name, help, ("bad-name", "x"), 5.0);
                m.set_gauge(name, help, 9.0);
                m.inc_counter(name, help, None, 1);
            },
            "esi_proxy_breaker_state",
            "esi_proxy_breaker_state{host=\"a.test:80\"} 2\n\
             esi_proxy_breaker_state{host=\"b.test:80\"} 0\n",
        ),
    ];
    for (what, record, family, want) in cases {
        let m = Metrics::new();
        record(&m);
        let text = m.render();
        assert_eq!(samples_of(&text, family), *want, "case: {what}");
        if let Err(e) = parse_exposition(&text) {
            panic!("case {what}: {e}");
        }
    }
}

#[test]
fn float_values() {
    for (value, want) in [
        (f64::NAN, "NaN"),
        (f64::INFINITY, "+Inf"),
        (f64::NEG_INFINITY, "-Inf"),
        (-0.25, "-0.25"),
        (4.0, "4"),
        (0.005, "0.005"),
        (1e-7, "0.0000001"),
    ] {
        assert_eq!(Float(value).to_string(), want, "value: {value}");
    }
}

#[test]
fn rejected_custom_names_render_nothing() {
    for name in [
        "",
        "bad name",
        "9starts_with_digit",
        "dash-ed",
        "esi_proxy_requests_total",
        "esi_proxy_request_duration_seconds_bucket",
        "esi_proxy_pages_in_flight",
        "esi_proxy_cache_purges_total",
    ] {
        let m = Metrics::new();
        m.inc_counter(name, "Rejected.", None, 1);
        m.set_gauge(name, "Rejected.", 1.0);
        assert_eq!(m.render(), EMPTY, "name: {name:?}");
    }
}

#[test]
fn concurrent_updates_sum() {
    const THREADS: u64 = 8;
    const EACH: u64 = 2000;
    let m = Metrics::new();
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let m = &m;
            s.spawn(move || {
                for i in 0..EACH {
                    m.pages_in_flight(1);
                    let host = format!("h{}:80", (t + i) % 5);
                    let outcome = if i % 4 == 0 { "timeout" } else { "ok" };
                    m.record_fragment(&host, outcome, 0.5, 3);
                    m.record_request("esi", 200, 0.25);
                    m.add_bytes_out("esi", 2);
                    m.record_fallback("alt");
                    m.add_esi_problems(1);
                    let label = if i % 2 == 0 { "even" } else { "odd" };
                    m.inc_counter("esi_proxy_t_total", "T.", Some(("k", label)), 1);
                    m.pages_in_flight(-1);
                }
            });
        }
    });
    let samples = parse_exposition(&m.render()).unwrap_or_else(|e| panic!("{e}"));
    let sum = |name: &str| -> f64 {
        samples
            .iter()
            .filter(|s| s.name == name)
            .map(|s| s.value)
            .sum()
    };
    let total = (THREADS * EACH) as f64;
    let cases = [
        ("esi_proxy_requests_total", total),
        ("esi_proxy_request_duration_seconds_count", total),
        ("esi_proxy_request_duration_seconds_sum", total * 0.25),
        ("esi_proxy_fragment_fetches_total", total),
        ("esi_proxy_fragment_failures_total", total / 4.0),
        ("esi_proxy_fragment_duration_seconds_count", total),
        ("esi_proxy_fragment_duration_seconds_sum", total * 0.5),
        ("esi_proxy_fragment_bytes_total", total * 3.0),
        ("esi_proxy_response_bytes_total", total * 2.0),
        ("esi_proxy_fallbacks_total", total),
        ("esi_proxy_esi_problems_total", total),
        ("esi_proxy_t_total", total),
        ("esi_proxy_pages_in_flight", 0.0),
    ];
    for (name, want) in cases {
        assert_eq!(sum(name), want, "metric: {name}");
    }
}

#[test]
fn label_sets_are_bounded() {
    let m = Metrics::new();
    for i in 0..MAX_HOST_LABELS + 500 {
        let host = format!("host{i}.test:80");
        // Half of them through a series handed out: past the bound, it is the overflow's.
        if i % 2 == 0 {
            m.record_fragment(&host, "ok", 0.1, 1);
        } else {
            m.record_fragment_at(&m.fragment_host(&host), "ok", 0.1, 1);
        }
    }
    for i in 0..MAX_KIND_LABELS + 10 {
        m.record_fragment("host0.test:80", &format!("kind{i}"), 0.1, 0);
    }
    for i in 0..MAX_HOST_LABELS + 5 {
        m.inc_counter("esi_proxy_x_total", "X.", Some(("v", &i.to_string())), 1);
    }
    let samples = parse_exposition(&m.render()).unwrap_or_else(|e| panic!("{e}"));
    let series = |name: &str, label: &str, value: &str| -> Vec<f64> {
        samples
            .iter()
            .filter(|s| s.name == name && s.label(label) == Some(value))
            .map(|s| s.value)
            .collect()
    };
    let count = |name: &str| samples.iter().filter(|s| s.name == name).count();
    let cases: [(&str, usize, &str, &str, Vec<f64>); 4] = [
        (
            FRAGMENT_BYTES,
            MAX_HOST_LABELS + 1,
            "host",
            "other",
            vec![500.0],
        ),
        (
            "esi_proxy_fragment_duration_seconds_count",
            MAX_HOST_LABELS + 1,
            "host",
            "other",
            vec![500.0],
        ),
        (
            FRAGMENT_FAILURES,
            MAX_KIND_LABELS + 1,
            "kind",
            "other",
            vec![10.0],
        ),
        (
            "esi_proxy_x_total",
            MAX_HOST_LABELS + 1,
            "v",
            "other",
            vec![5.0],
        ),
    ];
    for (name, want_series, label, overflow, want) in cases {
        assert_eq!(count(name), want_series, "series of {name}");
        assert_eq!(series(name, label, overflow), want, "overflow of {name}");
    }
    // One host keeps at most MAX_KIND_LABELS outcomes plus "other".
    let outcomes = samples
        .iter()
        .filter(|s| s.name == FRAGMENT_FETCHES && s.label("host") == Some("host0.test:80"))
        .count();
    assert_eq!(outcomes, MAX_KIND_LABELS + 1);
}

#[test]
fn hostile_labels_round_trip() {
    let long = "é".repeat(200);
    let cases: &[(&str, &str)] = &[
        ("", ""),
        ("a\"b", "a\"b"),
        ("back\\slash", "back\\slash"),
        ("new\nline", "new\nline"),
        ("tab\tthere", "tab\tthere"),
        ("{}=,", "{}=,"),
        ("uni✓code", "uni✓code"),
        ("\\n", "\\n"),
        (&long, &long[..256]),
    ];
    let m = Metrics::new();
    for (host, _) in cases {
        m.record_fragment(host, "ok", 0.0, 1);
    }
    let samples = parse_exposition(&m.render()).unwrap_or_else(|e| panic!("{e}"));
    let hosts: HashSet<&str> = samples
        .iter()
        .filter(|s| s.name == FRAGMENT_BYTES)
        .filter_map(|s| s.label("host"))
        .collect();
    for (host, want) in cases {
        assert!(
            hosts.contains(want),
            "host {host:?} should render as {want:?}"
        );
    }
    assert_eq!(hosts.len(), cases.len());
}

#[test]
fn resolved_counters_share_the_series_inc_counter_updates() {
    let m = Metrics::new();
    let name = "esi_proxy_cache_hits_total";
    let hits = m.counter(name, "Hits.", Some(("cache", "fragment")));
    hits.add(2);
    m.inc_counter(name, "Hits.", Some(("cache", "fragment")), 3);
    hits.clone().add(1);
    m.counter(name, "Hits.", Some(("cache", "layout"))).add(7);
    assert_eq!(
        samples_of(&m.render(), name),
        "esi_proxy_cache_hits_total{cache=\"fragment\"} 6\n\
         esi_proxy_cache_hits_total{cache=\"layout\"} 7\n"
    );
    // A rejected name or label gives a handle that counts into nothing rendered.
    m.counter("bad name", "Rejected.", None).add(1);
    m.counter("esi_proxy_ok_total", "Bad label.", Some(("bad-label", "x")))
        .add(1);
    m.set_gauge("esi_proxy_gauge", "A gauge.", 1.0);
    m.counter("esi_proxy_gauge", "Not a counter.", None).add(5);
    let text = m.render();
    assert!(
        !text.contains("bad name") && !text.contains("esi_proxy_ok_total{"),
        "{text}"
    );
    assert_eq!(samples_of(&text, "esi_proxy_gauge"), "esi_proxy_gauge 1\n");
}
