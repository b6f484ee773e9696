//! The preload hints of one page ([`PageHints`]): what its head carries (the layout's, the
//! remembered ones, the fragments' answered before the head leaves) and what this composition
//! leaves to be remembered. Counts what it drops; sends nothing itself.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use http::header::{self, HeaderMap};

use crate::headers::link::{parse_hints, HintSet, Refused};
use crate::telemetry::Metrics;

/// Hints left out, by `reason`: `count` or `bytes` (a bound), `invalid` (not valid RFC 8288,
/// a URI reference with characters it may not hold, an oversized value).
pub const HINTS_DROPPED: &str = "esi_proxy_hints_dropped_total";
const HINTS_DROPPED_HELP: &str =
    "Preload hints left out of a page head, by reason (count, bytes, invalid).";

/// The preload hints of one page, shared by the server (which seals the head) and the
/// page's include tasks (which add each fragment's).
pub struct PageHints {
    state: Mutex<State>,
    metrics: Arc<Metrics>,
}

struct State {
    /// What the head carries; its first `from_layout` entries are the layout's own, which
    /// leave in the layout's `Link` headers as the origin wrote them.
    head: HintSet,
    from_layout: usize,
    /// Once the head has left, fragments' hints only go to `remember`.
    sealed: bool,
    /// What this composition leaves for the page's next 103; `None` when the request carried
    /// credentials, so that nothing a visitor's own responses said reaches another visitor.
    remember: Option<HintSet>,
}

/// Whether hints of a response with these headers may be remembered for other visitors: not
/// when it says it is for one (`private`, `no-store`) or sets a cookie.
fn shareable(headers: &HeaderMap) -> bool {
    if headers.contains_key(header::SET_COOKIE) {
        return false;
    }
    !headers.get_all(header::CACHE_CONTROL).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            crate::headers::split_unquoted(v, ',').iter().any(|d| {
                let name = d.split('=').next().unwrap_or("").trim();
                name.eq_ignore_ascii_case("private") || name.eq_ignore_ascii_case("no-store")
            })
        })
    })
}

// === impl PageHints ===

impl PageHints {
    /// An empty set for one page under the count and byte bounds; `rememberable` when the
    /// request carried no `Cookie` and no `Authorization`.
    pub fn new(
        max_links: usize,
        max_bytes: usize,
        rememberable: bool,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                head: HintSet::new(max_links, max_bytes),
                from_layout: 0,
                sealed: false,
                remember: rememberable.then(|| HintSet::new(max_links, max_bytes)),
            }),
            metrics,
        })
    }

    /// Adds the hints of the layout's `headers`, first.
    pub fn add_layout(&self, headers: &HeaderMap) {
        let hints = self.parse(headers);
        let shareable = shareable(headers);
        let mut state = self.lock();
        for hint in &hints {
            if self.add_head(&mut state, hint) {
                state.from_layout += 1;
            }
            if shareable {
                add_quietly(&mut state.remember, hint);
            }
        }
    }

    /// Adds hints remembered from the page's last composition, to the head only.
    pub fn add_remembered(&self, hints: &[String]) {
        let mut state = self.lock();
        for hint in hints {
            self.add_head(&mut state, hint);
        }
    }

    /// Adds the hints of a fragment's response `headers`: to the head while it has not left,
    /// and to what is remembered when the response is for anyone. Returns the fragment's
    /// hints, for the page-build waterfall.
    pub fn add_fragment(&self, headers: &HeaderMap) -> Vec<String> {
        if !headers.contains_key(header::LINK) {
            return Vec::new();
        }
        let hints = self.parse(headers);
        let shareable = shareable(headers);
        let mut state = self.lock();
        for hint in &hints {
            if !state.sealed {
                self.add_head(&mut state, hint);
            }
            if shareable {
                add_quietly(&mut state.remember, hint);
            }
        }
        hints
    }

    /// The head is leaving: returns the hints to add to it (the layout's own excluded); later
    /// fragments' hints no longer join it.
    pub fn seal(&self) -> Vec<String> {
        let mut state = self.lock();
        state.sealed = true;
        state.head.values()[state.from_layout..].to_vec()
    }

    /// What this composition leaves to be remembered; `None` when nothing may be.
    pub fn remembered(&self) -> Option<Vec<String>> {
        self.lock().remember.as_ref().map(|s| s.values().to_vec())
    }

    fn parse(&self, headers: &HeaderMap) -> Vec<String> {
        let parsed = parse_hints(headers);
        if parsed.invalid > 0 {
            self.dropped("invalid", parsed.invalid as u64);
            tracing::debug!(
                invalid = parsed.invalid,
                "Link values refused as preload hints"
            );
        }
        parsed.hints
    }

    /// Adds to the head, counting a hint a bound left out; whether it was added.
    fn add_head(&self, state: &mut State, hint: &str) -> bool {
        match state.head.add(hint) {
            Ok(()) => true,
            Err(Refused::Duplicate) => false,
            Err(Refused::Count) => {
                self.dropped("count", 1);
                false
            }
            Err(Refused::Bytes) => {
                self.dropped("bytes", 1);
                false
            }
        }
    }

    fn dropped(&self, reason: &'static str, n: u64) {
        self.metrics.inc_counter(
            HINTS_DROPPED,
            HINTS_DROPPED_HELP,
            Some(("reason", reason)),
            n,
        );
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl std::fmt::Debug for PageHints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageHints")
            .field("head", &self.lock().head.values())
            .finish_non_exhaustive()
    }
}

/// Adds to a remembered set; its bounds are the head's, already counted there.
fn add_quietly(set: &mut Option<HintSet>, hint: &str) {
    if let Some(set) = set {
        let _ = set.add(hint);
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(
                http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_str(value).expect("value"),
            );
        }
        h
    }

    #[test]
    fn the_head_takes_what_came_before_it_left_and_memory_what_anyone_may_see() {
        let metrics = Arc::new(Metrics::new());
        let hints = PageHints::new(3, 4096, true, Arc::clone(&metrics));
        hints.add_layout(&headers(&[("link", "</l.css>; rel=preload; as=style")]));
        hints.add_remembered(&["</r.js>; rel=modulepreload".into()]);
        let got = hints.add_fragment(&headers(&[(
            "link",
            "</f.css>; rel=preload; as=style, </l.css>; rel=preload; as=style",
        )]));
        assert_eq!(got.len(), 2, "the waterfall shows all the fragment sent");
        // A private fragment's hints join this visitor's head, never the memory.
        hints.add_fragment(&headers(&[
            ("link", "</p.css>; rel=preload; as=style"),
            ("cache-control", "private, max-age=60"),
        ]));
        assert_eq!(
            hints.seal(),
            [
                "</r.js>; rel=modulepreload",
                "</f.css>; rel=preload; as=style"
            ],
            "the layout's own stay in its headers; the count bound left p.css out"
        );
        hints.add_fragment(&headers(&[("link", "</late.css>; rel=preload; as=style")]));
        assert_eq!(
            hints.remembered().expect("rememberable"),
            [
                "</l.css>; rel=preload; as=style",
                "</f.css>; rel=preload; as=style",
                "</late.css>; rel=preload; as=style"
            ]
        );
        let text = metrics.render();
        assert!(
            text.contains("esi_proxy_hints_dropped_total{reason=\"count\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn a_request_with_credentials_leaves_nothing_to_remember() {
        let hints = PageHints::new(16, 4096, false, Arc::new(Metrics::new()));
        hints.add_fragment(&headers(&[("link", "</f.css>; rel=preload")]));
        assert_eq!(hints.seal(), ["</f.css>; rel=preload"]);
        assert_eq!(hints.remembered(), None);
    }
}
