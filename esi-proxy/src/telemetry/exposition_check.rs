//! Test-only: a checker for the Prometheus text exposition format (0.0.4), so every rendering the
//! tests make is proven parseable, not only equal to a stored string.
//! Parses text; knows nothing of the registry.

use std::collections::{HashMap, HashSet};

use super::metrics::{is_label_name, is_metric_name};

#[test]
fn checker_rejects_malformed_text() {
    let ok = "# TYPE a counter\na{x=\"1\"} 1\n";
    let h = "# TYPE h histogram\n";
    let cases: &[(&str, &str)] = &[
        ("no final newline", "# TYPE a counter\na 1"),
        ("sample before its TYPE", "a 1\n# TYPE a counter\n"),
        (
            "raw quote in label value",
            "# TYPE a counter\na{x=\"a\"b\"} 1\n",
        ),
        ("unknown escape", "# TYPE a counter\na{x=\"\\t\"} 1\n"),
        ("bad value", "# TYPE a counter\na 1,5\n"),
        ("duplicate series", "# TYPE a counter\na 1\na 2\n"),
        (
            "split family",
            "# TYPE a counter\n# TYPE b counter\nb 1\na 1\n",
        ),
        ("bad metric name", "# TYPE 1a counter\n"),
        (
            "missing space before value",
            "# TYPE a counter\na{x=\"1\"}1\n",
        ),
        (
            "buckets not cumulative",
            &format!("{h}h_bucket{{le=\"1\"}} 2\nh_bucket{{le=\"+Inf\"}} 1\nh_sum 1\nh_count 1\n"),
        ),
        (
            "+Inf is not _count",
            &format!("{h}h_bucket{{le=\"+Inf\"}} 2\nh_sum 1\nh_count 1\n"),
        ),
        (
            "no _sum",
            &format!("{h}h_bucket{{le=\"+Inf\"}} 1\nh_count 1\n"),
        ),
    ];
    assert!(parse_exposition(ok).is_ok());
    for (what, text) in cases {
        assert!(
            parse_exposition(text).is_err(),
            "case {what} should fail: {text:?}"
        );
    }
}

pub(super) type Labels = Vec<(String, String)>;

#[derive(Debug)]
pub(super) struct Sample {
    pub(super) name: String,
    pub(super) labels: Labels,
    pub(super) value: f64,
}

impl Sample {
    pub(super) fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses `text` under the Prometheus text format rules and checks what a scraper relies
/// on: `# HELP`/`# TYPE` once per family and before its samples, each family's lines
/// together, no duplicate series, and histograms with ascending cumulative buckets ending
/// in `+Inf` that equals `_count`, plus a `_sum`.
pub(super) fn parse_exposition(text: &str) -> Result<Vec<Sample>, String> {
    if !text.is_empty() && !text.ends_with('\n') {
        return Err("output does not end with a newline".into());
    }
    let mut types: HashMap<String, String> = HashMap::new();
    let mut helps: HashSet<String> = HashSet::new();
    let mut with_samples: HashSet<String> = HashSet::new();
    let mut closed: HashSet<String> = HashSet::new();
    let mut current: Option<String> = None;
    let mut series: HashSet<String> = HashSet::new();
    let mut samples = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let at = |problem: &str| format!("line {}: {problem}: {line:?}", i + 1);
        let family = if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, _) = rest
                .split_once(' ')
                .ok_or_else(|| at("HELP without text"))?;
            if !helps.insert(name.to_owned()) {
                return Err(at("second HELP"));
            }
            name.to_owned()
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest
                .split_once(' ')
                .ok_or_else(|| at("TYPE without type"))?;
            if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                return Err(at("unknown type"));
            }
            if with_samples.contains(name) {
                return Err(at("TYPE after samples"));
            }
            if types.insert(name.to_owned(), kind.to_owned()).is_some() {
                return Err(at("second TYPE"));
            }
            name.to_owned()
        } else if line.starts_with('#') {
            continue;
        } else {
            let sample = parse_sample(line).map_err(|e| at(&e))?;
            let stem = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| sample.name.strip_suffix(s))
                .filter(|stem| types.get(*stem).map(String::as_str) == Some("histogram"));
            let family = stem.unwrap_or(&sample.name).to_owned();
            if !types.contains_key(&family) {
                return Err(at("sample before its TYPE"));
            }
            let key = format!("{}{:?}", sample.name, sample.labels);
            if !series.insert(key) {
                return Err(at("duplicate series"));
            }
            with_samples.insert(family.clone());
            samples.push(sample);
            family
        };
        if !is_metric_name(&family) {
            return Err(at("bad metric name"));
        }
        if current.as_deref() != Some(family.as_str()) {
            if closed.contains(&family) {
                return Err(at("family lines are not together"));
            }
            if let Some(done) = current.replace(family) {
                closed.insert(done);
            }
        }
    }
    check_histograms(&samples, &types)?;
    Ok(samples)
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let end = line.find(['{', ' ']).ok_or("no value")?;
    let (name, mut rest) = line.split_at(end);
    if !is_metric_name(name) {
        return Err("bad metric name".into());
    }
    let mut labels: Vec<(String, String)> = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = after;
        loop {
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let (label, after) = rest.split_once("=\"").ok_or("label without =\"")?;
            if !is_label_name(label) || labels.iter().any(|(k, _)| k == label) {
                return Err(format!("bad or repeated label name {label:?}"));
            }
            let mut value = String::new();
            let mut chars = after.char_indices();
            let close = loop {
                match chars.next().ok_or("unterminated label value")? {
                    (i, '"') => break i,
                    (_, '\\') => match chars.next().ok_or("dangling escape")?.1 {
                        '\\' => value.push('\\'),
                        '"' => value.push('"'),
                        'n' => value.push('\n'),
                        c => return Err(format!("bad escape \\{c}")),
                    },
                    (_, '\n') => return Err("raw newline in label value".into()),
                    (_, c) => value.push(c),
                }
            };
            labels.push((label.to_owned(), value));
            rest = after.get(close + 1..).ok_or("cut label")?;
            if let Some(after) = rest.strip_prefix(',') {
                rest = after;
            } else if !rest.starts_with('}') {
                return Err("labels not separated by ,".into());
            }
        }
    }
    let rest = rest.strip_prefix(' ').ok_or("no space before value")?;
    let mut fields = rest.split(' ');
    let value = parse_value(fields.next().unwrap_or_default())?;
    if let Some(timestamp) = fields.next() {
        timestamp.parse::<i64>().map_err(|_| "bad timestamp")?;
    }
    if fields.next().is_some() {
        return Err("trailing fields".into());
    }
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

fn parse_value(text: &str) -> Result<f64, String> {
    match text {
        "NaN" => Ok(f64::NAN),
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        _ if text
            .chars()
            .all(|c| c.is_ascii_digit() || "+-.eE".contains(c)) =>
        {
            text.parse().map_err(|_| format!("bad value {text:?}"))
        }
        _ => Err(format!("bad value {text:?}")),
    }
}

fn check_histograms(samples: &[Sample], types: &HashMap<String, String>) -> Result<(), String> {
    let histograms = types.iter().filter(|(_, kind)| *kind == "histogram");
    for (name, _) in histograms {
        let series_key = |s: &Sample| -> Labels {
            s.labels
                .iter()
                .filter(|(k, _)| k != "le")
                .cloned()
                .collect()
        };
        let bucket = format!("{name}_bucket");
        let mut buckets: Vec<(Labels, Vec<(f64, f64)>)> = Vec::new();
        for s in samples.iter().filter(|s| s.name == bucket) {
            let le = parse_value(s.label("le").ok_or("bucket without le")?)?;
            let key = series_key(s);
            match buckets.iter_mut().find(|(k, _)| *k == key) {
                Some((_, list)) => list.push((le, s.value)),
                None => buckets.push((key, vec![(le, s.value)])),
            }
        }
        for (key, list) in &buckets {
            let ascending = list.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1);
            if !ascending {
                return Err(format!("{name}{key:?}: buckets not cumulative ascending"));
            }
            let last = list.last().ok_or("no buckets")?;
            let find = |suffix: &str| {
                samples
                    .iter()
                    .find(|s| s.name == format!("{name}{suffix}") && s.labels == *key)
                    .map(|s| s.value)
            };
            if last.0 != f64::INFINITY || find("_count") != Some(last.1) {
                return Err(format!("{name}{key:?}: +Inf bucket is not _count"));
            }
            if find("_sum").is_none() {
                return Err(format!("{name}{key:?}: no _sum"));
            }
        }
    }
    Ok(())
}
