//! The metrics registry in the Prometheus text exposition format (version 0.0.4): `# HELP` and
//! `# TYPE` for every family, families sorted by name and series by labels, values escaped.
//! Takes snapshots under the registry's locks and formats outside them; records nothing.

use std::fmt::{self, Display, Write as _};
use std::sync::atomic::Ordering::Relaxed;

use super::metrics::{
    load, read, snapshot, CustomKind, Histogram, HistogramSnapshot, Metrics, DURATION_BUCKETS,
    ESI_PROBLEMS, FALLBACKS, FRAGMENT_BYTES, FRAGMENT_DURATION, FRAGMENT_FAILURES,
    FRAGMENT_FETCHES, LAYOUT_FAILURES, PAGES_IN_FLIGHT, PURGES, REQUESTS, REQUEST_DURATION,
    RESPONSE_BYTES,
};

// === impl Metrics ===

impl Metrics {
    /// Everything in the Prometheus text exposition format, version 0.0.4: each family has its
    /// `# HELP` and `# TYPE` lines (even before its first sample), families are sorted by
    /// name and series by labels, so the output is deterministic. Serve it as
    /// `text/plain; version=0.0.4; charset=utf-8`.
    pub fn render(&self) -> String {
        let mut blocks: Vec<(&'static str, String)> = Vec::with_capacity(16);
        // Writing to a `String` cannot fail, so the `fmt::Result`s below are always `Ok`.
        let _ = self.render_builtin(&mut blocks);
        let _ = self.render_custom(&mut blocks);
        blocks.sort_by(|a, b| a.0.cmp(b.0));
        let mut out = String::with_capacity(blocks.iter().map(|(_, text)| text.len()).sum());
        for (_, text) in blocks {
            out.push_str(&text);
        }
        out
    }

    fn render_builtin(&self, blocks: &mut Vec<(&'static str, String)>) -> fmt::Result {
        let mut text = header(
            REQUESTS,
            "Client requests finished, by route (esi, proxy, admin) and HTTP status sent.",
            "counter",
        );
        for ((route, status), n) in snapshot(&self.requests, load) {
            let status = status.to_string();
            sample(
                &mut text,
                REQUESTS,
                &[("route", route), ("status", status.as_str())],
                n,
            )?;
        }
        blocks.push((REQUESTS, text));

        let mut text = header(
            REQUEST_DURATION,
            "Time to serve a client request, in seconds, by route.",
            "histogram",
        );
        for (route, h) in snapshot(&self.request_durations, Histogram::snapshot) {
            histogram_samples(&mut text, REQUEST_DURATION, ("route", route), &h)?;
        }
        blocks.push((REQUEST_DURATION, text));

        let hosts = snapshot(&self.fragments, |series| {
            (
                snapshot(&series.fetches, load),
                series.duration.snapshot(),
                load(&series.bytes),
            )
        });
        let mut fetches = header(
            FRAGMENT_FETCHES,
            "Fragment fetches finished, by fragment host and outcome.",
            "counter",
        );
        let mut durations = header(
            FRAGMENT_DURATION,
            "Time to fetch one fragment, in seconds, by fragment host.",
            "histogram",
        );
        let mut bytes = header(
            FRAGMENT_BYTES,
            "Fragment body bytes received, by fragment host.",
            "counter",
        );
        for (host, (outcomes, h, n)) in &hosts {
            for (outcome, count) in outcomes {
                let labels = [("host", host.as_str()), ("outcome", outcome.as_str())];
                sample(&mut fetches, FRAGMENT_FETCHES, &labels, count)?;
            }
            histogram_samples(
                &mut durations,
                FRAGMENT_DURATION,
                ("host", host.as_str()),
                h,
            )?;
            sample(&mut bytes, FRAGMENT_BYTES, &[("host", host.as_str())], n)?;
        }
        blocks.push((FRAGMENT_FETCHES, fetches));
        blocks.push((FRAGMENT_DURATION, durations));
        blocks.push((FRAGMENT_BYTES, bytes));

        blocks.push(counter_family(
            FRAGMENT_FAILURES,
            "Fragment fetches that failed, by failure kind.",
            "kind",
            snapshot(&self.failures, load),
        )?);
        blocks.push(counter_family(
            FALLBACKS,
            "Fallbacks used in place of a fragment, by kind.",
            "kind",
            snapshot(&self.fallbacks, load),
        )?);
        blocks.push(counter_family(
            LAYOUT_FAILURES,
            "Layouts that failed, by failure kind.",
            "kind",
            snapshot(&self.layout_failures, load),
        )?);
        let mut text = header(
            PURGES,
            "Purge requests applied, by kind (url, prefix, key) and mode (hard, soft).",
            "counter",
        );
        for ((kind, mode), n) in snapshot(&self.purges, load) {
            sample(&mut text, PURGES, &[("kind", kind), ("mode", mode)], n)?;
        }
        blocks.push((PURGES, text));
        blocks.push(counter_family(
            RESPONSE_BYTES,
            "Body bytes sent to clients, by route.",
            "route",
            snapshot(&self.response_bytes, load),
        )?);

        let mut text = header(PAGES_IN_FLIGHT, "Pages being composed right now.", "gauge");
        sample(
            &mut text,
            PAGES_IN_FLIGHT,
            &[],
            self.in_flight.load(Relaxed),
        )?;
        blocks.push((PAGES_IN_FLIGHT, text));

        let mut text = header(
            ESI_PROBLEMS,
            "ESI markup problems met in lenient mode.",
            "counter",
        );
        sample(&mut text, ESI_PROBLEMS, &[], load(&self.esi_problems))?;
        blocks.push((ESI_PROBLEMS, text));
        Ok(())
    }

    fn render_custom(&self, blocks: &mut Vec<(&'static str, String)>) -> fmt::Result {
        for (name, custom) in read(&self.custom).iter() {
            match &custom.kind {
                CustomKind::Counter(series) => {
                    let mut text = header(name, custom.help, "counter");
                    for (label, n) in snapshot(series, |n| load(n)) {
                        match &label {
                            Some((k, v)) => sample(&mut text, name, &[(*k, v.as_str())], n)?,
                            None => sample(&mut text, name, &[], n)?,
                        }
                    }
                    blocks.push((*name, text));
                }
                CustomKind::Gauge(bits) => {
                    let mut text = header(name, custom.help, "gauge");
                    let value = Float(f64::from_bits(bits.load(Relaxed)));
                    sample(&mut text, name, &[], value)?;
                    blocks.push((*name, text));
                }
                CustomKind::LabelledGauge(series) => {
                    let mut text = header(name, custom.help, "gauge");
                    let rows = snapshot(series, |bits| Float(f64::from_bits(bits.load(Relaxed))));
                    for ((k, v), value) in rows {
                        sample(&mut text, name, &[(k, v.as_str())], value)?;
                    }
                    blocks.push((*name, text));
                }
                CustomKind::Rejected => {}
            }
        }
        Ok(())
    }
}

/// The `# HELP` and `# TYPE` lines of a family.
fn header(name: &str, help: &str, kind: &str) -> String {
    let mut out = String::with_capacity(128);
    out.push_str("# HELP ");
    out.push_str(name);
    out.push(' ');
    for c in help.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push_str("\n# TYPE ");
    out.push_str(name);
    out.push(' ');
    out.push_str(kind);
    out.push('\n');
    out
}

/// A counter family with one label: its header, then one sample per `(label value, count)`.
fn counter_family<V: AsRef<str>>(
    name: &'static str,
    help: &str,
    label: &str,
    rows: Vec<(V, u64)>,
) -> Result<(&'static str, String), fmt::Error> {
    let mut text = header(name, help, "counter");
    for (value, n) in rows {
        sample(&mut text, name, &[(label, value.as_ref())], n)?;
    }
    Ok((name, text))
}

/// One sample line: `name{label="value",...} value`.
fn sample(
    out: &mut String,
    name: &str,
    labels: &[(&str, &str)],
    value: impl Display,
) -> fmt::Result {
    out.push_str(name);
    push_labels(out, labels);
    writeln!(out, " {value}")
}

fn push_labels(out: &mut String, labels: &[(&str, &str)]) {
    if labels.is_empty() {
        return;
    }
    out.push('{');
    for (i, (name, value)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(name);
        out.push_str("=\"");
        for c in value.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push('}');
}

/// The `_bucket` (cumulative, `le` ascending, then `+Inf`), `_sum` and `_count` lines of one
/// histogram series.
fn histogram_samples(
    out: &mut String,
    name: &str,
    label: (&str, &str),
    h: &HistogramSnapshot,
) -> fmt::Result {
    let bucket = format!("{name}_bucket");
    let mut cumulative = 0u64;
    let bounds = DURATION_BUCKETS.iter().map(|b| b.to_string());
    for (le, n) in bounds.chain(Some("+Inf".to_owned())).zip(h.buckets) {
        cumulative = cumulative.saturating_add(n);
        sample(out, &bucket, &[label, ("le", le.as_str())], cumulative)?;
    }
    sample(out, &format!("{name}_sum"), &[label], Float(h.sum))?;
    sample(out, &format!("{name}_count"), &[label], cumulative)
}

/// An `f64` written the way Prometheus parses it: `NaN`, `+Inf`, `-Inf`, or a plain decimal.
pub(super) struct Float(pub(super) f64);

// === impl Float ===

impl Display for Float {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            v if v.is_nan() => f.write_str("NaN"),
            v if v == f64::INFINITY => f.write_str("+Inf"),
            v if v == f64::NEG_INFINITY => f.write_str("-Inf"),
            v => write!(f, "{v}"),
        }
    }
}
