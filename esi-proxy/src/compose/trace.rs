//! The build record of one traced page, for the `/_esi/debug` waterfall: the layout fetch and one
//! row per fragment fetch, written by the composer as fetches start and end.
//! Records only: reading them into a report is the waterfall's.

use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::esi;
use crate::fetch::CacheStatus;

use super::{DocContext, Failure, Fallback, PageState};

/// The build record of one page, for `/_esi/debug`: the layout and one row per fetch.
#[derive(Debug, Default)]
pub struct Trace {
    records: Mutex<Vec<FetchRecord>>,
    layout: Mutex<Option<LayoutRecord>>,
    layout_done_ms: Mutex<Option<f64>>,
    /// Why the page left as `Cache-Control: private`, decided before its head was sent.
    private: Mutex<Option<String>>,
    /// The parts that used the visitor's credentials, in the order they did, each once.
    credentials: Mutex<Vec<String>>,
    /// How the page's head was decided.
    head: Mutex<HeadRecord>,
}

/// How a traced page's head was decided, times in milliseconds from the page's start.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct HeadRecord {
    /// When the head was decided (`None`: the page failed first).
    pub decided_ms: Option<f64>,
    /// How long the first byte waited for the decision once the page had bytes ready.
    pub held_ms: f64,
    /// The status the head took from a response function or the primary, if any.
    pub status: Option<u16>,
    /// The trace row of the primary fragment's fetch.
    pub primary: Option<usize>,
    /// What the primary came to: ok, redirect, client_error, server_error, alt, failed.
    pub primary_outcome: Option<String>,
    /// Response functions applied or refused, late calls, ignored primaries, in order.
    pub notes: Vec<String>,
}

/// Most notes one head record keeps.
const MAX_HEAD_NOTES: usize = 100;

/// The layout fetch of a traced page, times in milliseconds from the page's start.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct LayoutRecord {
    /// The layout's URL at the origin.
    pub url: String,
    /// The origin's status (or the cached one).
    pub status: u16,
    /// When the response head arrived (or the cache answered).
    pub headers_ms: f64,
    /// Hit or miss when the layout cache was consulted.
    pub cache: Option<CacheStatus>,
    /// The cached layout's TTL in seconds.
    pub ttl_s: Option<f64>,
    /// What set that TTL.
    pub ttl_source: Option<String>,
}

/// One fragment fetch of a page, times in milliseconds from the page's start.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct FetchRecord {
    /// Index in the trace.
    pub id: usize,
    /// The fetch whose ESI body included this one; `None` for includes in the layout.
    pub parent: Option<usize>,
    /// Nesting depth (0: in the layout).
    pub depth: usize,
    /// The URL fetched (after variables and resolution), or the `src` when it did not resolve.
    pub url: String,
    /// Line of the include tag in its document.
    pub line: u32,
    /// Whether this fetch was the include's `alt`.
    pub alt: bool,
    /// When the fetch started.
    pub start_ms: f64,
    /// When it ended (body received, and composed if it was ESI).
    pub end_ms: f64,
    /// HTTP status, when a response came.
    pub status: Option<u16>,
    /// Body bytes received.
    pub bytes: usize,
    /// What the cache did.
    pub cache: Option<CacheStatus>,
    /// The cached entry's TTL in seconds.
    pub ttl_s: Option<f64>,
    /// What set the TTL (a rule, Surrogate-Control, s-maxage, max-age, the default).
    pub ttl_source: Option<String>,
    /// The surrogate keys the cached response was tagged with.
    pub keys: Vec<String>,
    /// "ok" or the failure kind.
    pub outcome: String,
    /// The failure, when there was one.
    pub error: Option<String>,
    /// The fallback that replaced this fetch's content: "alt", "continue", "except", "empty",
    /// "abort".
    pub fallback: Option<String>,
    /// Whether the body was ESI and composed in turn.
    pub esi: bool,
    /// Whether this was the page's primary fragment (its answer decided the page's head).
    pub primary: bool,
    /// The preload hints its response sent (`Link` values as the page head would carry them).
    pub hints: Vec<String>,
}

// === impl Trace ===

impl Trace {
    /// The rows recorded so far, in the order the fetches started.
    pub fn records(&self) -> Vec<FetchRecord> {
        lock(&self.records).clone()
    }

    /// Records the layout fetch.
    pub fn set_layout(&self, layout: LayoutRecord) {
        *lock(&self.layout) = Some(layout);
    }

    /// The layout fetch, once recorded.
    pub fn layout(&self) -> Option<LayoutRecord> {
        lock(&self.layout).clone()
    }

    /// Records why the page leaves as `Cache-Control: private` (`None`: it keeps the layout's).
    pub fn set_private(&self, reason: Option<String>) {
        *lock(&self.private) = reason;
    }

    /// Why the page left private: the first part that used the visitor's credentials, else the
    /// reason decided up front; `None` when the page was shareable.
    pub fn private_reason(&self) -> Option<String> {
        let decided = lock(&self.private).clone()?;
        Some(lock(&self.credentials).first().cloned().unwrap_or(decided))
    }

    /// The parts of the page that used the visitor's credentials, in order.
    pub fn credentials(&self) -> Vec<String> {
        lock(&self.credentials).clone()
    }

    /// When the whole layout body had arrived and was parsed.
    pub fn layout_done_ms(&self) -> Option<f64> {
        *lock(&self.layout_done_ms)
    }

    /// How the page's head was decided.
    pub fn head(&self) -> HeadRecord {
        lock(&self.head).clone()
    }

    /// Records when the whole layout body had arrived and was parsed.
    pub(super) fn set_layout_done_ms(&self, ms: f64) {
        *lock(&self.layout_done_ms) = Some(ms);
    }
}

// === impl PageState ===

impl PageState {
    /// Opens a trace row for a fetch, when the page is traced.
    pub(super) fn trace_start(
        &self,
        doc: &DocContext,
        src: &esi::VarString,
        line: u32,
        alt: bool,
    ) -> Option<usize> {
        let trace = self.page.trace.as_ref()?;
        let mut records = lock(&trace.records);
        let id = records.len();
        records.push(FetchRecord {
            id,
            parent: doc.record,
            depth: doc.depth,
            url: src.to_string(),
            line,
            alt,
            start_ms: self.elapsed_ms(),
            outcome: "ok".into(),
            ..FetchRecord::default()
        });
        Some(id)
    }

    pub(super) fn trace_update(&self, id: usize, update: impl FnOnce(&mut FetchRecord)) {
        if let Some(trace) = &self.page.trace {
            let mut records = lock(&trace.records);
            if let Some(r) = records.get_mut(id) {
                update(r);
            }
        }
    }

    /// Records that a part of the page used the visitor's credentials (once per `what`).
    pub(super) fn note_credentials(&self, what: impl FnOnce() -> String) {
        if let Some(trace) = &self.page.trace {
            let what = what();
            let mut uses = lock(&trace.credentials);
            if !uses.contains(&what) {
                uses.push(what);
            }
        }
    }

    /// Records a cookie variable read, once one has been.
    pub(super) fn note_cookie_read(&self) {
        if self.page.vars.cookie_read() {
            self.note_credentials(|| "variable HTTP_COOKIE".to_owned());
        }
    }

    /// Adds a note on how the head was decided (bounded).
    pub(super) fn trace_head_note(&self, note: String) {
        if let Some(trace) = &self.page.trace {
            let mut head = lock(&trace.head);
            if head.notes.len() < MAX_HEAD_NOTES {
                head.notes.push(note);
            }
        }
    }

    /// Updates the head's record, when the page is traced.
    pub(super) fn trace_head(&self, update: impl FnOnce(&mut HeadRecord)) {
        if let Some(trace) = &self.page.trace {
            update(&mut lock(&trace.head));
        }
    }

    /// Notes on the failed fetch's row which fallback took its place.
    pub(super) fn trace_fallback(&self, failure: Option<&Failure>, kind: Fallback) {
        if let Some(id) = failure.and_then(|f| f.record) {
            self.trace_update(id, |r| r.fallback = Some(kind.as_str().to_owned()));
        }
    }
}

/// A guard that survives poisoning: a trace is plain data, whole after any panic, and a debug
/// page should show what it has.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
