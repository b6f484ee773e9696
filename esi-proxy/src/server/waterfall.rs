//! The page-build waterfall behind `/_esi/debug/<path>`: a report built from a composed page's
//! [`Trace`] (layout, every fragment fetch with its timing, status, cache and fallback, the
//! critical path, the distance from the slowest fragment), as JSON or an HTML page.
//! Knows no sockets: the server composes the page and hands the trace over.

use askama::Template;
use serde::Serialize;

use crate::compose::{FetchRecord, HeadRecord, LayoutRecord, Trace};
use crate::fetch::CacheStatus;

/// Everything the waterfall shows about one composed page.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PageReport {
    /// The page path asked for (with its query).
    pub path: String,
    /// The status the client would get.
    pub status: u16,
    /// Whether the response was composed (an ESI page) rather than passed through.
    pub composed: bool,
    /// Why the page failed or was cut off, if it was.
    pub error: Option<String>,
    /// Why the page left as `Cache-Control: private`: the first part that used the visitor's
    /// credentials ("fragment <url> fetched with credentials", "variable HTTP_COOKIE"), else
    /// the rule ("request carries Cookie", "default"); `null` when it was shareable.
    pub private_reason: Option<String>,
    /// Every part that used the visitor's credentials, in order.
    pub credentials: Vec<String>,
    /// The layout fetch.
    pub layout: Option<LayoutRecord>,
    /// When the layout body had fully arrived and was parsed.
    pub layout_done_ms: Option<f64>,
    /// How the head was decided: how long the first byte waited for it, the primary's
    /// outcome, response functions applied, refused or late.
    pub head: HeadRecord,
    /// When the first body bytes were ready for the client.
    pub first_byte_ms: Option<f64>,
    /// When the whole page was ready.
    pub total_ms: f64,
    /// Bytes of the composed page.
    pub bytes: usize,
    /// Every fragment fetch, in the order they started.
    pub fragments: Vec<FetchRow>,
    /// The slowest single fetch's duration.
    pub slowest_fragment_ms: f64,
    /// Layout head time plus the slowest fetch: what a fully concurrent composer cannot beat.
    pub floor_ms: f64,
    /// `total_ms / floor_ms`: how far the page was from its slowest fragment.
    pub vs_floor: f64,
}

/// One fetch in the report: the record plus what the waterfall draws from it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FetchRow {
    /// The fetch as composed.
    #[serde(flatten)]
    pub record: FetchRecord,
    /// `end_ms - start_ms`.
    pub duration_ms: f64,
    /// Whether the fetch is on the critical path (the chain that finished last).
    pub critical: bool,
}

// === impl PageReport ===

impl PageReport {
    /// Builds the report of a page whose body finished at `total_ms`.
    pub fn new(path: String, status: u16, composed: bool, trace: &Trace) -> Self {
        let records = trace.records();
        let critical = critical_path(&records);
        let fragments: Vec<FetchRow> = records
            .into_iter()
            .map(|record| FetchRow {
                duration_ms: (record.end_ms - record.start_ms).max(0.0),
                critical: critical.contains(&record.id),
                record,
            })
            .collect();
        let slowest_fragment_ms = fragments.iter().map(|f| f.duration_ms).fold(0.0, f64::max);
        let layout = trace.layout();
        let floor_ms = layout.as_ref().map_or(0.0, |l| l.headers_ms) + slowest_fragment_ms;
        PageReport {
            path,
            status,
            composed,
            private_reason: trace.private_reason(),
            credentials: trace.credentials(),
            layout,
            layout_done_ms: trace.layout_done_ms(),
            head: trace.head(),
            fragments,
            slowest_fragment_ms,
            floor_ms,
            ..PageReport::default()
        }
    }

    /// Records how the body went: first bytes, end, size, and the error that cut it off.
    pub fn finish(
        &mut self,
        first_byte_ms: Option<f64>,
        total_ms: f64,
        bytes: usize,
        error: Option<String>,
    ) {
        self.first_byte_ms = first_byte_ms;
        self.total_ms = total_ms;
        self.bytes = bytes;
        self.error = error;
        self.vs_floor = if self.floor_ms > 0.0 {
            total_ms / self.floor_ms
        } else {
            0.0
        };
    }

    /// The report as JSON, for tools.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

/// The waterfall page: the report with every number already formatted for display.
#[derive(Template)]
#[template(path = "debug.html")]
struct Waterfall<'a> {
    path: &'a str,
    status: u16,
    composed: bool,
    error: Option<&'a str>,
    private_reason: Option<&'a str>,
    /// The head's decision in one line: the wait, the primary's outcome, the notes.
    head: String,
    json_href: String,
    total: String,
    first_byte: String,
    layout_head: String,
    layout_cache: Option<&'a str>,
    slowest: String,
    vs_floor: String,
    bytes: usize,
    rows: Vec<Row>,
}

/// One bar of the waterfall.
struct Row {
    depth: usize,
    indent_px: usize,
    label: String,
    url: String,
    status: String,
    bytes: String,
    cache: String,
    cache_class: &'static str,
    ttl: String,
    /// The surrogate keys, space-separated.
    keys: String,
    fallback: String,
    /// The preload hints the fetch's response sent.
    hints: Vec<String>,
    error: String,
    span: String,
    outcome: String,
    left_pct: String,
    width_pct: String,
    bar_class: &'static str,
    critical: bool,
}

/// The head's decision for the waterfall page: empty when nothing held or changed it.
fn head_text(head: &HeadRecord) -> String {
    let mut parts = Vec::new();
    if head.held_ms > 0.0 {
        parts.push(format!("first byte held {} for the head", ms(head.held_ms)));
    }
    if let Some(outcome) = &head.primary_outcome {
        parts.push(format!("primary: {outcome}"));
    }
    if let Some(status) = head.status {
        parts.push(format!("status {status} from the head"));
    }
    parts.extend(head.notes.iter().cloned());
    parts.join(" · ")
}

fn ms(v: f64) -> String {
    format!("{v:.1} ms")
}

/// The style of a cache column: a hit, or anything else.
fn cache_class(cache: Option<CacheStatus>) -> &'static str {
    if cache == Some(CacheStatus::Hit) {
        "hit"
    } else {
        "miss"
    }
}

/// A cache outcome as the report shows it; empty when no cache was consulted.
fn cache_text(cache: Option<CacheStatus>) -> String {
    cache.map_or("", CacheStatus::as_str).to_owned()
}

/// A cached entry's TTL and what set it, e.g. `60s (s-maxage)`; empty when not cached.
fn ttl_text(ttl_s: Option<f64>, source: Option<&str>) -> String {
    ttl_s.map_or(String::new(), |t| {
        format!("{t:.0}s ({})", source.unwrap_or(""))
    })
}

impl PageReport {
    /// The report as an HTML page: totals, then the layout and every fetch as bars on one time
    /// axis, nested fetches indented under their parent, the critical path highlighted.
    pub fn to_html(&self) -> String {
        let scale = self.total_ms.max(0.001);
        let pct = |v: f64| format!("{:.3}", (v / scale * 100.0).clamp(0.0, 100.0));
        let mut rows = Vec::with_capacity(self.fragments.len() + 1);
        if let Some(layout) = &self.layout {
            let end = self.layout_done_ms.unwrap_or(layout.headers_ms);
            rows.push(Row {
                depth: 0,
                indent_px: 8,
                label: format!("layout {}", self.path),
                url: layout.url.clone(),
                status: layout.status.to_string(),
                bytes: String::new(),
                cache: cache_text(layout.cache),
                cache_class: cache_class(layout.cache),
                ttl: ttl_text(layout.ttl_s, layout.ttl_source.as_deref()),
                keys: String::new(),
                fallback: String::new(),
                hints: Vec::new(),
                error: String::new(),
                span: format!("0.0–{end:.1}"),
                outcome: "ok".into(),
                left_pct: pct(0.0),
                width_pct: pct(end),
                bar_class: "layout",
                critical: false,
            });
        }
        for f in &self.fragments {
            let r = &f.record;
            let failed = r.outcome != "ok";
            let bar_class = match r.cache {
                _ if failed => "failed",
                Some(CacheStatus::Hit) => "hit",
                Some(CacheStatus::StaleWhileRevalidate | CacheStatus::StaleIfError) => "stale",
                _ => "ok",
            };
            rows.push(Row {
                depth: r.depth + 1,
                indent_px: 8 + 18 * (r.depth + 1),
                label: format!(
                    "{}{}{}",
                    if r.primary { "primary " } else { "" },
                    if r.alt { "alt " } else { "" },
                    r.url
                ),
                url: r.url.clone(),
                status: r.status.map_or_else(|| "–".to_owned(), |s| s.to_string()),
                bytes: r.bytes.to_string(),
                cache_class: cache_class(r.cache),
                cache: cache_text(r.cache),
                ttl: ttl_text(r.ttl_s, r.ttl_source.as_deref()),
                keys: r.keys.join(" "),
                fallback: r.fallback.clone().unwrap_or_default(),
                hints: r.hints.clone(),
                error: if failed {
                    format!("{}: {}", r.outcome, r.error.as_deref().unwrap_or(""))
                } else {
                    String::new()
                },
                span: format!("{:.1}–{:.1}", r.start_ms, r.end_ms),
                outcome: r.outcome.clone(),
                left_pct: pct(r.start_ms),
                width_pct: pct(f.duration_ms),
                bar_class,
                critical: f.critical,
            });
        }
        let page = Waterfall {
            path: &self.path,
            status: self.status,
            composed: self.composed,
            error: self.error.as_deref(),
            private_reason: self.private_reason.as_deref(),
            head: head_text(&self.head),
            json_href: format!(
                "/_esi/debug{}{}format=json",
                self.path,
                if self.path.contains('?') { "&" } else { "?" }
            ),
            total: ms(self.total_ms),
            first_byte: self.first_byte_ms.map_or_else(|| "–".to_owned(), ms),
            layout_head: self
                .layout
                .as_ref()
                .map_or_else(|| "–".to_owned(), |l| ms(l.headers_ms)),
            layout_cache: self
                .layout
                .as_ref()
                .and_then(|l| l.cache.map(CacheStatus::as_str)),
            slowest: ms(self.slowest_fragment_ms),
            vs_floor: if self.vs_floor > 0.0 {
                format!("{:.2}×", self.vs_floor)
            } else {
                "–".to_owned()
            },
            bytes: self.bytes,
            rows,
        };
        page.render()
            .unwrap_or_else(|e| format!("<!doctype html><p>waterfall could not render: {e}</p>"))
    }
}

/// The chain of fetches that finished last: the top-level fetch with the latest end, then
/// within it the nested fetch with the latest end, and so on.
fn critical_path(records: &[FetchRecord]) -> Vec<usize> {
    let mut path = Vec::new();
    let mut parent = None;
    loop {
        let last = records
            .iter()
            .filter(|r| r.parent == parent)
            .max_by(|a, b| a.end_ms.total_cmp(&b.end_ms));
        match last {
            Some(r) => {
                path.push(r.id);
                parent = Some(r.id);
            }
            None => return path,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: usize, parent: Option<usize>, start_ms: f64, end_ms: f64) -> FetchRecord {
        FetchRecord {
            id,
            parent,
            start_ms,
            end_ms,
            outcome: "ok".into(),
            ..FetchRecord::default()
        }
    }

    #[test]
    fn critical_path_follows_the_latest_chain() {
        let cases: Vec<(Vec<FetchRecord>, Vec<usize>)> = vec![
            (vec![], vec![]),
            (
                vec![rec(0, None, 0.0, 5.0), rec(1, None, 0.0, 9.0)],
                vec![1],
            ),
            (
                vec![
                    rec(0, None, 0.0, 30.0),
                    rec(1, None, 0.0, 9.0),
                    rec(2, Some(0), 5.0, 12.0),
                    rec(3, Some(0), 5.0, 29.0),
                ],
                vec![0, 3],
            ),
        ];
        for (records, want) in cases {
            assert_eq!(critical_path(&records), want, "{records:?}");
        }
    }

    #[test]
    fn report_totals_measure_the_distance_from_the_slowest_fragment() {
        let trace = Trace::default();
        trace.set_layout(LayoutRecord {
            url: "http://o/p".into(),
            status: 200,
            headers_ms: 2.0,
            ..LayoutRecord::default()
        });
        let mut report = PageReport::new("/p".into(), 200, true, &trace);
        report.finish(Some(2.5), 22.0, 100, None);
        assert_eq!(report.floor_ms, 2.0);
        assert_eq!(report.vs_floor, 11.0);
        let json = report.to_json();
        assert!(json.contains("\"vs_floor\": 11.0"), "{json}");
    }
}
