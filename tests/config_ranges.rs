//! Every numeric config field at its extremes (0, 1, below its minimum, its minimum and maximum,
//! one past the maximum, i64::MAX, and -1), generated from `config::RANGES`: `esi-proxy
//! check-config` on the real binary names exactly the fields out of range, each at its line; a
//! running server refuses the same files on reload while it keeps serving, health and the
//! metrics say so, and a later good file is taken. A reload that panics is refused alike.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use esi_proxy::config::{Config, Range, RANGES};
use esi_proxy::server;

use crate::support::process::run;
use crate::support::{esi, get, html, proxy, serve, Proxy, Server, MUST};

/// The key a table keyed by names (`*` in a range's field) gets in the generated files.
const NAME_KEY: &str = "a-test";

/// Keys a list entry needs besides its numbers, by list: a new list with numbers adds a line.
const REQUIRED: &[(&str, &str)] = &[
    ("cache.rules", "match = \"/r\""),
    ("fetch.hosts", "url = \"http://hosts.test\""),
];

/// Keys every generated file sets, by section: the base the numbers are varied on. The cache is
/// off so that a capacity of 0 is valid alone (it must be above 0 only while it is on).
const BASE: &[(&str, &str)] = &[
    (
        "server",
        "listen = \"127.0.0.1:0\"\nadmin_from_loopback = true",
    ),
    ("cache", "enabled = false"),
];

/// Which value each field gets in one generated file.
#[derive(Debug, Clone, Copy)]
enum Extreme {
    Zero,
    One,
    /// One below the minimum (the minimum itself when that is 0: -1 is a type error, below).
    BelowMin,
    Min,
    Max,
    OverMax,
    I64Max,
}

const EXTREMES: [Extreme; 7] = [
    Extreme::Zero,
    Extreme::One,
    Extreme::BelowMin,
    Extreme::Min,
    Extreme::Max,
    Extreme::OverMax,
    Extreme::I64Max,
];

/// A generated config: its text and the line and indexed name of every numeric field in it.
struct Generated {
    text: String,
    /// `(field as problems name it, line, value)`.
    fields: Vec<(String, usize, i128)>,
}

impl Extreme {
    fn value(self, range: &Range) -> i128 {
        let (min, max) = (i128::from(range.min), i128::from(range.max));
        match self {
            Extreme::Zero => 0,
            Extreme::One => 1,
            Extreme::BelowMin => (min - 1).max(0),
            Extreme::Min => min,
            Extreme::Max => max,
            Extreme::OverMax => max + 1,
            Extreme::I64Max => i128::from(i64::MAX),
        }
    }
}

/// The section (`cache` or, for a list entry, `cache.rules[]`) and key of a dotted field.
fn split_field(field: &str) -> (&str, &str) {
    field.rsplit_once('.').expect("fields are section.key")
}

/// `field` as the generated files hold it and problems name it: the first entry of a list,
/// [`NAME_KEY`] for a name.
fn in_file(field: &str) -> String {
    field.replace("[]", "[0]").replace('*', NAME_KEY)
}

/// A config file with `origin`, the base keys, and each field of `values` set to its value,
/// sections in the order of [`RANGES`]; list fields go in one entry of their list.
fn generate(origin: &str, values: &[(&Range, i128)], comment: usize) -> Generated {
    let mut text = format!("# {}\n", "x".repeat(comment));
    let mut fields = Vec::new();
    let mut sections: Vec<&str> = Vec::new();
    let named: Vec<String> = RANGES
        .iter()
        .map(|r| r.field.replace('*', NAME_KEY))
        .collect();
    for field in &named {
        let (section, _) = split_field(field);
        if !sections.contains(&section) {
            sections.push(section);
        }
    }
    for section in sections {
        let in_section = |r: &Range| split_field(&r.field.replace('*', NAME_KEY)).0 == section;
        if section.contains("[]") && !values.iter().any(|(r, _)| in_section(r)) {
            // A list entry holds required keys of its own: only written when a value needs it.
            continue;
        }
        match section.strip_suffix("[]") {
            Some(list) => {
                text.push_str(&format!("\n[[{list}]]\n"));
                let required = REQUIRED.iter().find(|(l, _)| *l == list);
                let (_, keys) = required.unwrap_or_else(|| panic!("no REQUIRED keys for {list}"));
                text.push_str(&format!("{keys}\n"));
            }
            None if section.contains("[].") => {
                // A table inside a list's entry (`fetch.hosts[].breaker`): one entry holding it.
                let (list, table) = section.split_once("[].").expect("checked");
                text.push_str(&format!("\n[[{list}]]\n"));
                let required = REQUIRED.iter().find(|(l, _)| *l == list);
                let (_, keys) = required.unwrap_or_else(|| panic!("no REQUIRED keys for {list}"));
                text.push_str(&format!("{keys}\n[{list}.{table}]\n"));
            }
            None => {
                text.push_str(&format!("\n[{section}]\n"));
                if section == "server" {
                    text.push_str(&format!("origin = \"{origin}\"\n"));
                }
                for (_, keys) in BASE.iter().filter(|(s, _)| *s == section) {
                    text.push_str(&format!("{keys}\n"));
                }
            }
        }
        for (range, value) in values {
            let named = range.field.replace('*', NAME_KEY);
            let (s, key) = split_field(&named);
            if s == section {
                text.push_str(&format!("{key} = {value}\n"));
                let line = text.lines().count();
                fields.push((in_file(range.field), line, *value));
            }
        }
    }
    Generated { text, fields }
}

/// Every field at `extreme`.
fn at_extreme(origin: &str, extreme: Extreme, comment: usize) -> Generated {
    let values: Vec<(&Range, i128)> = RANGES.iter().map(|r| (r, extreme.value(r))).collect();
    generate(origin, &values, comment)
}

/// The `(line, field)` of every generated field whose value is outside its range, and the
/// message each should start with.
fn out_of_range(generated: &Generated) -> Vec<(usize, String, String)> {
    generated
        .fields
        .iter()
        .filter_map(|(field, line, value)| {
            let range = RANGES
                .iter()
                .find(|r| in_file(r.field) == *field)
                .expect("generated from RANGES");
            let message = if *value > i128::from(range.max) {
                format!("{value} is over the limit of {}", range.max)
            } else if *value < i128::from(range.min) {
                if *value == 0 && range.min == 1 {
                    "must be greater than 0".to_owned()
                } else {
                    format!("{value} is below the minimum of {}", range.min)
                }
            } else {
                return None;
            };
            Some((*line, field.clone(), message))
        })
        .collect()
}

/// A fresh directory for one test's files.
fn test_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("esi-proxy-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Writes `text` to `path` atomically, as deployment tools do: a reload never reads half a file.
fn write_config(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write config");
    std::fs::rename(&tmp, path).expect("rename config");
}

/// README: "`esi-proxy check-config FILE` ... prints every problem with its line"; the ranges
/// of docs/resilience-config.md. Regression: a concurrency limit over a semaphore's capacity
/// passed check-config and panicked at load.
#[tokio::test]
async fn check_config_names_every_field_out_of_range_with_its_line() {
    let dir = test_dir("ranges-check");
    for (i, extreme) in EXTREMES.into_iter().enumerate() {
        let generated = at_extreme("http://127.0.0.1:9", extreme, i);
        let path = dir.join(format!("{extreme:?}.toml"));
        std::fs::write(&path, &generated.text).expect("write");
        let file = path.display().to_string();
        let out = run(&["check-config", &file]).await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let want = out_of_range(&generated);
        if want.is_empty() {
            assert_eq!(
                stdout,
                format!("{file}: ok\n"),
                "{extreme:?}:\n{}",
                generated.text
            );
            assert!(out.status.success(), "{extreme:?}: {out:?}");
            continue;
        }
        assert_eq!(out.status.code(), Some(1), "{extreme:?}: {out:?}");
        let got: Vec<&str> = stdout.lines().collect();
        assert_eq!(
            got.len(),
            want.len(),
            "{extreme:?}: {got:#?}\nwant {want:#?}"
        );
        for (line, field, message) in &want {
            let prefix = format!("{file}:{line}: {field}: {message}");
            assert!(
                got.iter().any(|g| g.starts_with(&prefix)),
                "{extreme:?}: no {prefix:?} in {got:#?}"
            );
        }
    }
    // -1 is not a number these fields can hold: a type error, named by line and field, one
    // file per field as the first type error ends the parse.
    for (i, range) in RANGES.iter().enumerate() {
        let generated = generate("http://127.0.0.1:9", &[(range, -1)], i);
        let path = dir.join(format!("negative-{i}.toml"));
        std::fs::write(&path, &generated.text).expect("write");
        let file = path.display().to_string();
        let out = run(&["check-config", &file]).await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let (field, line, _) = &generated.fields[0];
        let want = format!("{file}:{line}: {field}: invalid value: integer `-1`");
        assert!(
            stdout.starts_with(&want),
            "{stdout:?} does not start {want:?}"
        );
        assert_eq!(out.status.code(), Some(1), "{out:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// An origin whose `/page` is ESI including `/frag`.
async fn origin() -> Server {
    serve(|req| async move {
        match req.uri().path() {
            "/frag" => html("F"),
            _ => esi("page<esi:include src=\"/frag\"/>"),
        }
    })
    .await
}

/// Polls `series` of the proxy's metrics until it is `want`.
async fn metric_until(proxy: &Proxy, series: &str, want: f64) {
    tokio::time::timeout(MUST, async {
        while proxy.metric(series) != Some(want) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{series} never reached {want}: {:?}", proxy.metric(series)));
}

/// The admin view of health (the test's loopback client is an admin).
async fn health(proxy: &Proxy) -> String {
    let (status, _, body) = get(&proxy.url("/_esi/health?detail")).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// A live server fed every extreme and every -1 by file change: each refused file is refused
/// (health names its file, line and field) while the config in force keeps composing pages;
/// the valid extremes are applied; a normal file afterwards restores everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_reload_refuses_every_out_of_range_value_and_keeps_serving() {
    let origin = origin().await;
    let dir = test_dir("ranges-reload");
    let path = dir.join("esi-proxy.toml");
    let normal = |comment: usize| {
        format!(
            "# {}\n[server]\norigin = \"{}\"\nlisten = \"127.0.0.1:0\"\nadmin_from_loopback = true\n",
            "n".repeat(comment),
            origin.base()
        )
    };
    write_config(&path, &normal(0));
    let proxy = proxy(&origin.base(), Config::load(&path).expect("valid")).await;
    let watcher = server::watch_config(
        Arc::clone(&proxy.state),
        path.clone(),
        Arc::new(|_: &mut Config| {}),
        Some(Duration::from_millis(20)),
    );
    let composed = || async { get(&proxy.url("/page")).await };
    assert_eq!(composed().await.2, "pageF");

    // Every file has a comment of its own length, so each one is a change the poll sees.
    let mut step = 1;
    let (mut refused, mut applied) = (0.0, 0.0);
    let mut files: Vec<(String, Vec<(usize, String)>)> = Vec::new();
    for extreme in EXTREMES {
        let generated = at_extreme(&origin.base(), extreme, 0);
        let want = out_of_range(&generated);
        if !want.is_empty() {
            let named = want
                .into_iter()
                .map(|(line, field, _)| (line, field))
                .collect();
            files.push((generated.text, named));
        }
    }
    for range in RANGES {
        let generated = generate(&origin.base(), &[(range, -1)], 0);
        let (field, line, _) = generated.fields[0].clone();
        files.push((generated.text, vec![(line, field)]));
    }
    for (text, named) in &files {
        // The comment line grows, pushing every line down by nothing: it stays line 1.
        write_config(
            &path,
            &text.replacen("# ", &format!("# {}", "r".repeat(step)), 1),
        );
        step += 1;
        refused += 1.0;
        metric_until(
            &proxy,
            "esi_proxy_config_reloads_total{result=\"error\"}",
            refused,
        )
        .await;
        let body = health(&proxy).await;
        assert!(body.contains("\"last_reload\":\"failed\""), "{body}");
        for (line, field) in named {
            let want = format!("esi-proxy.toml:{line}: {field}: ");
            assert!(
                body.contains(&want),
                "health does not name {want:?}: {body}"
            );
        }
        let (status, _, body) = composed().await;
        assert_eq!(
            (status.as_u16(), body.as_str()),
            (200, "pageF"),
            "the config in force still composes"
        );
    }
    assert_eq!(proxy.metric("esi_proxy_config_reload_failed"), Some(1.0));

    // The extremes that are valid are applied: each field at its maximum, then its minimum.
    for extreme in [Extreme::Max, Extreme::Min] {
        let generated = at_extreme(&origin.base(), extreme, step);
        assert!(out_of_range(&generated).is_empty(), "{extreme:?} is valid");
        write_config(&path, &generated.text);
        step += 1;
        applied += 1.0;
        metric_until(
            &proxy,
            "esi_proxy_config_reloads_total{result=\"ok\"}",
            applied,
        )
        .await;
        let body = health(&proxy).await;
        assert!(
            body.contains(&format!("\"generation\":{applied}"))
                && body.contains("\"last_reload\":\"ok\",\"error\":null"),
            "{extreme:?}: {body}"
        );
    }
    write_config(&path, &normal(step));
    applied += 1.0;
    metric_until(
        &proxy,
        "esi_proxy_config_reloads_total{result=\"ok\"}",
        applied,
    )
    .await;
    assert_eq!(
        composed().await.2,
        "pageF",
        "a normal file restores the page"
    );
    assert_eq!(proxy.metric("esi_proxy_config_reload_failed"), Some(0.0));
    assert!(!watcher.is_finished(), "the watcher is still running");
    watcher.abort();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Regression: a panic while loading or applying a config, inside the watcher task, ended the
/// task: reloads silently stopped while health said ok. Now it is a refused reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_panics_is_refused_and_the_watcher_lives_on() {
    let origin = origin().await;
    let dir = test_dir("ranges-panic");
    let path = dir.join("esi-proxy.toml");
    let text = |includes: usize| {
        format!(
            "[server]\norigin = \"{}\"\nlisten = \"127.0.0.1:0\"\nadmin_from_loopback = true\n\
             [esi]\nmax_includes = {includes}\n",
            origin.base()
        )
    };
    write_config(&path, &text(7));
    let proxy = proxy(&origin.base(), Config::load(&path).expect("valid")).await;
    // The command-line overrides run inside the load: one that panics on 13 stands for any
    // panic while loading or applying. Each file differs in length from the last: the poll
    // compares length and mtime, and an mtime may not move between two writes this close.
    let watcher = server::watch_config(
        Arc::clone(&proxy.state),
        path.clone(),
        Arc::new(|config: &mut Config| {
            assert_ne!(config.esi.max_includes, 13, "unlucky number");
        }),
        Some(Duration::from_millis(20)),
    );
    write_config(&path, &text(13));
    metric_until(
        &proxy,
        "esi_proxy_config_reloads_total{result=\"error\"}",
        1.0,
    )
    .await;
    let body = health(&proxy).await;
    assert!(
        body.contains("\"last_reload\":\"failed\"")
            && body.contains("loading the config panicked")
            && body.contains("unlucky number"),
        "{body}"
    );
    assert_eq!(proxy.metric("esi_proxy_config_reload_failed"), Some(1.0));
    assert_eq!(get(&proxy.url("/page")).await.2, "pageF");

    write_config(&path, &text(1400));
    metric_until(&proxy, "esi_proxy_config_reloads_total{result=\"ok\"}", 1.0).await;
    let body = health(&proxy).await;
    assert!(
        body.contains("\"generation\":1") && body.contains("\"error\":null"),
        "{body}"
    );
    assert!(!watcher.is_finished());
    watcher.abort();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The extremes cover both ends of every range, so a change to a range changes what the tests
/// above expect (guards against a table of ranges no file ever reaches).
#[test]
fn extremes_reach_both_sides_of_every_range() {
    for range in RANGES {
        let values: BTreeSet<i128> = EXTREMES.iter().map(|e| e.value(range)).collect();
        let (min, max) = (i128::from(range.min), i128::from(range.max));
        assert!(
            values.contains(&min) && values.contains(&max),
            "{}",
            range.field
        );
        assert!(values.iter().any(|v| *v > max), "{}", range.field);
    }
}
