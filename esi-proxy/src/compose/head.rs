//! The page's head, decided while the page streams: what the layout's response functions
//! (`$add_header`, `$set_response_code`, `$set_redirect`) and the primary fragment ask of it,
//! collected until the head is decided and resolved once, before the page's first byte.
//! Knows no sockets: the server applies the [`Head`] it is handed.

use std::sync::atomic::Ordering;
use std::sync::PoisonError;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;

use crate::config::ErrorPages;
use crate::esi::Effect;
use crate::headers::{layout_may_add, redirect_location};

use super::{DocContext, Failure, PageState};

/// The `Content-Type` of a configured error page (`esi.primary_error_pages`).
pub const ERROR_PAGE_TYPE: &str = "text/html; charset=utf-8";

/// Most response-function effects one page keeps; the rest are refused (counted, logged).
pub(super) const MAX_EFFECTS: usize = 64;

/// What the page's head becomes, decided before its first byte. Empty when nothing asked.
#[derive(Debug, Clone, Default)]
pub struct Head {
    /// The page's status, when it is not the layout's.
    pub status: Option<StatusCode>,
    /// Headers replacing the layout's of the same name (`Location`, a replacement body's
    /// `Content-Type`).
    pub set: HeaderMap,
    /// Headers added to the layout's (`$add_header`, the primary's trusted `Set-Cookie`).
    pub add: HeaderMap,
    /// Why the page may not be stored by shared caches (it sets a visitor's cookie).
    pub private: Option<String>,
    /// How long the first byte waited for the head, in milliseconds from when the page had
    /// bytes ready; 0 when nothing held it.
    pub held_ms: f64,
}

/// What the primary fragment's fetch came to, sent to the driver as soon as it is known.
#[derive(Debug)]
pub(super) enum PrimaryAnswer {
    /// The fragment answered (any status): its status, headers and body (composed when it is
    /// a 2xx ESI fragment).
    Answered {
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
        /// Whether its host is trusted (only then does its `Set-Cookie` reach the visitor).
        trusted: bool,
        url: String,
    },
    /// It gave no answer and its `alt` took its place: the page keeps the layout's head.
    Alt,
    /// It gave no answer and nothing took its place: the page fails before its first byte.
    Failed(Failure),
}

/// The response functions the layout called while its head was open.
#[derive(Debug, Default)]
pub(super) struct Effects {
    /// Set once the head has been decided: later calls are late.
    decided: bool,
    kept: Vec<Effect>,
}

/// A decided head and, when the composed page is not sent, the body sent instead.
pub(super) struct Resolved {
    pub(super) head: Head,
    pub(super) replace: Option<Bytes>,
    /// Notes for the trace: what was applied or refused, in order.
    pub(super) notes: Vec<String>,
    /// The primary's outcome label, when there was a primary.
    pub(super) primary: Option<&'static str>,
}

/// Why a primary's answer cannot become the page's: a redirect without a usable `Location`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("primary fragment {url} answered {status} without a usable Location")]
pub struct BadRedirect {
    /// The primary's URL.
    pub url: String,
    /// Its status.
    pub status: u16,
}

// === impl PageState ===

impl PageState {
    /// Takes the response functions an evaluation of `doc` called: kept while the layout's head
    /// is open; a fragment's are ignored (its document does not own the page's head), and a
    /// call after the head was decided is late. Both are counted and logged.
    pub(super) fn take_effects(&self, doc: &DocContext, effects: Vec<Effect>) {
        if effects.is_empty() {
            return;
        }
        if doc.depth > 0 {
            for effect in &effects {
                self.late_effect(effect, "fragment");
            }
            return;
        }
        let mut state = self.effects.lock().unwrap_or_else(PoisonError::into_inner);
        for effect in effects {
            if state.decided {
                self.late_effect(&effect, "late");
            } else if state.kept.len() >= MAX_EFFECTS {
                self.late_effect(&effect, "limit");
            } else {
                state.kept.push(effect);
            }
        }
    }

    /// Closes the head to response functions and hands over the ones kept.
    pub(super) fn close_head(&self) -> Vec<Effect> {
        let mut state = self.effects.lock().unwrap_or_else(PoisonError::into_inner);
        state.decided = true;
        std::mem::take(&mut state.kept)
    }

    /// Whether this is the page's first warning about its head: each page logs one, so a
    /// layout that repeats a late call cannot flood the log.
    pub(super) fn first_head_warning(&self) -> bool {
        !self.head_warned.swap(true, Ordering::Relaxed)
    }

    /// Counts, logs and traces a response function that cannot change the head: `why` is
    /// `late` (the head had left), `fragment` (called by a fragment) or `limit`.
    fn late_effect(&self, effect: &Effect, why: &'static str) {
        self.composer.metrics.inc_counter(
            "esi_proxy_esi_late_effects_total",
            "Response functions ($add_header, $set_response_code, $set_redirect) that could not \
             change the page's head: late (the head had left), fragment (not the layout's), limit.",
            Some(("reason", why)),
            1,
        );
        let name = effect_name(effect);
        if self.first_head_warning() {
            tracing::warn!(
                url = %self.page.url,
                function = name,
                reason = why,
                "response function ignored; the page goes on (further ones on this page are \
                 counted, not logged)"
            );
        }
        self.trace_head_note(format!("{name} ignored: {why}"));
    }
}

/// The function's name as written, for logs and the waterfall.
fn effect_name(effect: &Effect) -> &'static str {
    match effect {
        Effect::AddHeader(..) => "$add_header",
        Effect::SetStatus(..) => "$set_response_code",
        Effect::Redirect(..) => "$set_redirect",
    }
}

/// Resolves the head from the layout's response functions, in the order called, then the
/// primary's answer, which wins over them for the status and the body: a 4xx/5xx answer sends
/// its configured error page from `pages`, else its own body.
///
/// # Errors
/// The primary failed with nothing in its place, or answered a redirect without a usable
/// `Location`: the page fails before its first byte.
pub(super) fn resolve(
    effects: Vec<Effect>,
    primary: Option<PrimaryAnswer>,
    pages: &ErrorPages,
) -> Result<Resolved, PrimaryError> {
    let mut out = Resolved {
        head: Head::default(),
        replace: None,
        notes: Vec::new(),
        primary: None,
    };
    for effect in effects {
        apply_effect(effect, &mut out);
    }
    match primary {
        None => {}
        Some(PrimaryAnswer::Alt) => out.primary = Some("alt"),
        Some(PrimaryAnswer::Failed(failure)) => return Err(PrimaryError::Failed(failure)),
        Some(PrimaryAnswer::Answered {
            status,
            headers,
            body,
            trusted,
            url,
        }) => {
            let answer = Answer {
                status,
                headers: &headers,
                body,
                trusted,
                url,
            };
            apply_primary(answer, pages, &mut out)?;
        }
    }
    Ok(out)
}

/// Why the page fails because of its primary fragment.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PrimaryError {
    /// No answer, and no `alt` answered in its place.
    #[error("primary fragment failed: {0}")]
    Failed(Failure),
    /// A redirect the page cannot send.
    #[error("{0}")]
    BadRedirect(BadRedirect),
}

fn apply_effect(effect: Effect, out: &mut Resolved) {
    let name = effect_name(&effect);
    match effect {
        Effect::AddHeader(name_text, value) => {
            let parsed = HeaderName::from_bytes(name_text.as_bytes())
                .ok()
                .filter(layout_may_add)
                .zip(HeaderValue::from_str(&value).ok());
            match parsed {
                Some((n, v)) => {
                    out.head.add.append(n, v);
                    out.notes.push(format!("{name}({name_text})"));
                }
                None => out.notes.push(format!(
                    "{name}({name_text}) refused: not a header the layout may set"
                )),
            }
        }
        Effect::SetStatus(code, body) => {
            // 1xx is no final status, and 204, 205 and 304 carry no body to compose.
            let status = StatusCode::from_u16(code)
                .ok()
                .filter(|s| !s.is_informational() && ![204, 205, 304].contains(&s.as_u16()));
            match status {
                Some(status) => {
                    out.head.status = Some(status);
                    out.head.set.remove(header::LOCATION);
                    out.replace = body.map(Bytes::from);
                    out.notes.push(format!("{name}({code})"));
                }
                None => out
                    .notes
                    .push(format!("{name}({code}) refused: not a usable status")),
            }
        }
        Effect::Redirect(url, code) => match redirect_location(url.as_bytes()) {
            Some(location) => {
                out.head.status = StatusCode::from_u16(code).ok();
                out.head.set.insert(header::LOCATION, location);
                out.replace = Some(Bytes::new());
                out.notes.push(format!("{name}({url}, {code})"));
            }
            None => out.notes.push(format!(
                "{name}({url}) refused: not a path or an http(s) URL"
            )),
        },
    }
}

/// A primary's answer, as [`PrimaryAnswer::Answered`] holds it.
struct Answer<'a> {
    status: StatusCode,
    headers: &'a HeaderMap,
    body: Bytes,
    trusted: bool,
    url: String,
}

fn apply_primary(
    answer: Answer<'_>,
    pages: &ErrorPages,
    out: &mut Resolved,
) -> Result<(), PrimaryError> {
    let Answer {
        status,
        headers,
        body,
        trusted,
        url,
    } = answer;
    let cookies = headers.get_all(header::SET_COOKIE).iter();
    if trusted {
        for cookie in cookies {
            out.head.add.append(header::SET_COOKIE, cookie.clone());
        }
        if out.head.add.contains_key(header::SET_COOKIE) {
            out.head.private = Some(format!("primary fragment {url} sets a cookie"));
        }
    } else if cookies.count() > 0 {
        out.notes.push(format!(
            "primary Set-Cookie dropped: {url} is not a trusted host"
        ));
    }
    if status.is_success() {
        out.primary = Some("ok");
        return Ok(());
    }
    out.head.status = Some(status);
    out.head.set.remove(header::LOCATION);
    if status.is_redirection() {
        let location = headers
            .get(header::LOCATION)
            .and_then(|l| redirect_location(l.as_bytes()));
        let Some(location) = location else {
            return Err(PrimaryError::BadRedirect(BadRedirect {
                url,
                status: status.as_u16(),
            }));
        };
        out.head.set.insert(header::LOCATION, location);
        out.primary = Some("redirect");
    } else if status.is_client_error() {
        out.primary = Some("client_error");
    } else {
        out.primary = Some("server_error");
    }
    out.notes
        .push(format!("primary {url} answered {}", status.as_u16()));
    let error_page = (!status.is_redirection())
        .then(|| pages.for_status(status))
        .flatten();
    if let Some(page) = error_page {
        out.head.set.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(ERROR_PAGE_TYPE),
        );
        out.notes.push("configured error page sent".into());
        out.replace = Some(page.clone());
    } else {
        if let Some(ct) = headers.get(header::CONTENT_TYPE) {
            out.head.set.insert(header::CONTENT_TYPE, ct.clone());
        }
        out.replace = Some(body);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`resolve`] with no error pages configured.
    fn plain(
        effects: Vec<Effect>,
        primary: Option<PrimaryAnswer>,
    ) -> Result<Resolved, PrimaryError> {
        resolve(effects, primary, &ErrorPages::default())
    }

    fn answered(status: u16, headers: &[(&str, &str)], trusted: bool) -> PrimaryAnswer {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        PrimaryAnswer::Answered {
            status: StatusCode::from_u16(status).expect("status"),
            headers: map,
            body: Bytes::from_static(b"primary body"),
            trusted,
            url: "http://f.test/p".into(),
        }
    }

    #[test]
    fn layout_functions_in_order_last_status_wins() {
        let effects = vec![
            Effect::AddHeader("X-Tier".into(), "gold".into()),
            Effect::AddHeader("Content-Length".into(), "1".into()),
            Effect::AddHeader("Set-Cookie".into(), "a=1".into()),
            Effect::AddHeader("Connection".into(), "close".into()),
            Effect::Redirect("/login".into(), 302),
            Effect::SetStatus(404, None),
            Effect::SetStatus(204, None),
        ];
        let r = plain(effects, None).expect("no primary");
        assert_eq!(r.head.status, Some(StatusCode::NOT_FOUND));
        assert_eq!(r.head.add.len(), 1, "{:?}", r.head.add);
        assert_eq!(r.head.add["x-tier"], "gold");
        assert!(
            r.head.set.get(header::LOCATION).is_none(),
            "a later status clears it"
        );
        assert!(
            r.replace.is_none(),
            "404 without a body keeps the composed page"
        );
        let refused = r.notes.iter().filter(|n| n.contains("refused")).count();
        assert_eq!(refused, 4, "{:?}", r.notes);
    }

    #[test]
    fn redirects_need_a_usable_location() {
        let r = plain(
            vec![Effect::Redirect("javascript:alert(1)".into(), 302)],
            None,
        )
        .expect("refused, not failed");
        assert_eq!(r.head.status, None);
        let r = plain(vec![Effect::Redirect("/p/2".into(), 301)], None).expect("ok");
        assert_eq!(r.head.status, Some(StatusCode::MOVED_PERMANENTLY));
        assert_eq!(r.head.set[header::LOCATION], "/p/2");
        assert_eq!(r.replace.as_deref(), Some(&b""[..]));
        let bad = plain(
            Vec::new(),
            Some(answered(302, &[("location", "//evil.test/")], true)),
        );
        assert!(matches!(bad, Err(PrimaryError::BadRedirect(_))));
        let none = plain(Vec::new(), Some(answered(301, &[], true)));
        assert!(matches!(none, Err(PrimaryError::BadRedirect(_))));
    }

    #[test]
    fn primary_answers() {
        let cookie = [("set-cookie", "sid=1; HttpOnly")];
        let r = plain(Vec::new(), Some(answered(200, &cookie, true))).expect("ok");
        assert_eq!(r.primary, Some("ok"));
        assert_eq!(r.head.status, None);
        assert_eq!(r.head.add[header::SET_COOKIE], "sid=1; HttpOnly");
        assert!(r.head.private.is_some());
        assert!(r.replace.is_none());
        let r = plain(Vec::new(), Some(answered(200, &cookie, false))).expect("ok");
        assert!(
            r.head.add.is_empty(),
            "an untrusted host's cookie is dropped"
        );
        assert!(r.head.private.is_none());
        let effects = vec![Effect::SetStatus(410, Some("gone".into()))];
        let r = plain(
            effects,
            Some(answered(404, &[("content-type", "text/plain")], true)),
        )
        .expect("ok");
        assert_eq!(r.primary, Some("client_error"));
        assert_eq!(
            r.head.status,
            Some(StatusCode::NOT_FOUND),
            "the primary wins"
        );
        assert_eq!(r.head.set[header::CONTENT_TYPE], "text/plain");
        assert_eq!(r.replace.as_deref(), Some(&b"primary body"[..]));
        let r = plain(Vec::new(), Some(answered(503, &[], true))).expect("ok");
        assert_eq!(r.primary, Some("server_error"));
        let loc = [("location", "https://shop.test/p/9")];
        let r = plain(Vec::new(), Some(answered(301, &loc, true))).expect("ok");
        assert_eq!(r.primary, Some("redirect"));
        assert_eq!(r.head.set[header::LOCATION], "https://shop.test/p/9");
    }

    #[test]
    fn error_pages_replace_error_bodies_only() {
        let mut pages = ErrorPages::default();
        pages
            .insert("404", Bytes::from_static(b"<h1>no such product</h1>"))
            .expect("404");
        pages
            .insert("5xx", Bytes::from_static(b"<h1>down</h1>"))
            .expect("5xx");
        let text = [("content-type", "text/plain")];
        let r = resolve(Vec::new(), Some(answered(404, &text, true)), &pages).expect("ok");
        assert_eq!(r.head.status, Some(StatusCode::NOT_FOUND));
        assert_eq!(r.replace.as_deref(), Some(&b"<h1>no such product</h1>"[..]));
        assert_eq!(r.head.set[header::CONTENT_TYPE], ERROR_PAGE_TYPE);
        let r = resolve(Vec::new(), Some(answered(503, &[], true)), &pages).expect("ok");
        assert_eq!(r.replace.as_deref(), Some(&b"<h1>down</h1>"[..]));
        let r = resolve(Vec::new(), Some(answered(410, &text, true)), &pages).expect("ok");
        assert_eq!(
            r.replace.as_deref(),
            Some(&b"primary body"[..]),
            "no 410 or 4xx page"
        );
        assert_eq!(r.head.set[header::CONTENT_TYPE], "text/plain");
        let loc = [("location", "/p/2")];
        let r = resolve(Vec::new(), Some(answered(302, &loc, true)), &pages).expect("ok");
        assert_eq!(
            r.replace.as_deref(),
            Some(&b"primary body"[..]),
            "redirects keep theirs"
        );
        let r = resolve(Vec::new(), Some(answered(200, &[], true)), &pages).expect("ok");
        assert!(r.replace.is_none(), "a 2xx primary keeps the composed page");
    }
}
