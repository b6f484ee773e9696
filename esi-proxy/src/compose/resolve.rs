//! An include's variables, read where its tag stands: `src` and `alt` (with the document's
//! assigned variables, percent-encoded, `<esi:param>`s appended), the `entity` body and the
//! header edits, and which of those edits the target host may receive. Runs before the fetch
//! is spawned, so later assignments never change an include already started. No I/O.

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};

use crate::esi::include_attrs::{
    Method, CREDENTIAL_HEADERS, FORBIDDEN_HEADERS, MAX_ENTITY_BYTES, MAX_HEADER_EDIT_BYTES,
};
use crate::esi::vars::{percent_encode, render_form_by, render_text_by, render_url_with};
use crate::esi::{Context, HeaderOp, Include, Scope, VarError, VarRef};
use crate::fetch::{Access, HeaderEdit, RequestOptions};

use super::{DocContext, PageState};

/// An include's URLs and request options with every variable substituted.
#[derive(Debug, Clone)]
pub(super) struct Resolved {
    /// `src`, or why it cannot be fetched.
    pub src: Result<String, VarError>,
    /// `alt`, when the tag has one.
    pub alt: Option<Result<String, VarError>>,
    /// The body of a `POST`, or why there is none to send (over [`MAX_ENTITY_BYTES`]).
    pub body: Result<Option<Bytes>, String>,
    /// The header edits, values substituted; checked against the target host by
    /// [`Resolved::options_for`].
    edits: Vec<(HeaderOp, Box<str>, String)>,
    no_store: bool,
    ttl: Option<std::time::Duration>,
}

/// Why a header edit was left out of a fragment request: the label of
/// `esi_proxy_include_headers_dropped_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Dropped {
    /// A credential toward a host, or from a document, not trusted with it.
    Credential,
    /// A name the proxy alone sets (the parser already refuses these; kept for templates
    /// built in code).
    Forbidden,
    /// The value is not a valid header value once substituted (a control character ...).
    Invalid,
    /// The include's edits added more than [`MAX_HEADER_EDIT_BYTES`]: all of them dropped.
    TooLarge,
}

// === impl Resolved ===

impl Resolved {
    /// The request options for a fetch of this include from a host with `access`, from a
    /// document whose trust is `doc_trusted`, and the edits left out with why.
    pub(super) fn options_for(
        &self,
        access: Access,
        doc_trusted: bool,
    ) -> (RequestOptions, Vec<(Dropped, String)>) {
        let mut dropped = Vec::new();
        let mut headers = Vec::new();
        let total: usize = self.edits.iter().map(|(_, n, v)| n.len() + v.len()).sum();
        if total > MAX_HEADER_EDIT_BYTES {
            dropped.extend(
                self.edits
                    .iter()
                    .map(|(_, name, _)| (Dropped::TooLarge, name.to_string())),
            );
        } else {
            for (op, name, value) in &self.edits {
                match admit(*op, name, value, access.trusted && doc_trusted) {
                    Ok(edit) => headers.push(edit),
                    Err(reason) => dropped.push((reason, name.to_string())),
                }
            }
        }
        let options = RequestOptions {
            body: self.body.clone().ok().flatten(),
            headers,
            no_store: self.no_store,
            ttl: self.ttl,
        };
        (options, dropped)
    }
}

/// One edit as the request will carry it, or why it may not.
fn admit(op: HeaderOp, name: &str, value: &str, trusted: bool) -> Result<HeaderEdit, Dropped> {
    if FORBIDDEN_HEADERS.contains(&name) {
        return Err(Dropped::Forbidden);
    }
    if op != HeaderOp::Remove && CREDENTIAL_HEADERS.contains(&name) && !trusted {
        return Err(Dropped::Credential);
    }
    let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| Dropped::Invalid)?;
    if op == HeaderOp::Remove {
        return Ok(HeaderEdit::Remove(name));
    }
    let value = HeaderValue::from_str(value).map_err(|_| Dropped::Invalid)?;
    Ok(match op {
        HeaderOp::Set => HeaderEdit::Set(name, value),
        _ => HeaderEdit::Append(name, value),
    })
}

// === impl Dropped ===

impl Dropped {
    /// The metrics label.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Dropped::Credential => "credential",
            Dropped::Forbidden => "forbidden",
            Dropped::Invalid => "invalid",
            Dropped::TooLarge => "too_large",
        }
    }
}

// === impl PageState ===

impl PageState {
    /// Substitutes the variables of `inc` as `doc` reads them where the tag stands: request
    /// variables as its trust allows, and `scope`'s assigned variables and captures.
    pub(super) fn resolve(&self, inc: &Include, doc: &DocContext, scope: &mut Scope) -> Resolved {
        let policy = self.vars(doc);
        let mut cx = Context::new(&self.page.vars, policy, &self.budget);
        // Lent, not copied: a page may hold many includes and many assigned variables.
        cx.scope = std::mem::take(scope);
        let value = |var: &VarRef| cx.var(var).text().into_owned();
        let opts = &inc.options;
        let url = |s: &crate::esi::VarString| {
            let mut url = render_url_with(s, policy.raw_output, &value)?;
            for param in &opts.params {
                url.push(if url.contains('?') { '&' } else { '?' });
                percent_encode(&param.name, false, &mut url);
                url.push('=');
                let text = render_text_by(&param.value, &value);
                percent_encode(&text, false, &mut url);
            }
            Ok(url)
        };
        let src = url(&inc.src);
        let alt = inc.alt.as_ref().map(url);
        let body = match (&opts.entity, opts.method) {
            (_, Method::Get) => Ok(None),
            (None, Method::Post) => Ok(Some(Bytes::new())),
            (Some(entity), Method::Post) => {
                let text = render_form_by(entity, policy.raw_output, &value);
                if text.len() > MAX_ENTITY_BYTES {
                    Err(format!(
                        "entity of {} bytes, over {MAX_ENTITY_BYTES}",
                        text.len()
                    ))
                } else {
                    Ok(Some(Bytes::from(text)))
                }
            }
        };
        let edits = opts
            .headers
            .iter()
            .map(|e| (e.op, e.name.clone(), render_text_by(&e.value, &value)))
            .collect();
        *scope = std::mem::take(&mut cx.scope);
        drop(cx);
        self.note_cookie_read();
        Resolved {
            src,
            alt,
            body,
            edits,
            no_store: opts.no_store,
            ttl: opts.ttl,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolved(edits: &[(HeaderOp, &str, &str)]) -> Resolved {
        Resolved {
            src: Ok("/f".into()),
            alt: None,
            body: Ok(None),
            edits: edits
                .iter()
                .map(|(op, n, v)| (*op, Box::from(*n), (*v).to_owned()))
                .collect(),
            no_store: false,
            ttl: None,
        }
    }

    const TRUSTED: Access = Access {
        trusted: true,
        esi: true,
        http2: false,
    };
    const UNTRUSTED: Access = Access {
        trusted: false,
        esi: false,
        http2: false,
    };

    #[test]
    fn edits_by_trust() {
        let r = resolved(&[
            (HeaderOp::Set, "x-device", "mobile"),
            (HeaderOp::Set, "cookie", "sid=1"),
            (HeaderOp::Append, "authorization", "Bearer t"),
            (HeaderOp::Remove, "cookie", ""),
            (HeaderOp::Set, "host", "evil"),
            (HeaderOp::Set, "x-bad", "a\r\nb"),
        ]);
        let labels = |d: &[(Dropped, String)]| {
            d.iter()
                .map(|(r, n)| format!("{}:{n}", r.as_str()))
                .collect::<Vec<_>>()
        };
        let (trusted, dropped) = r.options_for(TRUSTED, true);
        assert_eq!(trusted.headers.len(), 4, "{:?}", trusted.headers);
        assert_eq!(labels(&dropped), ["forbidden:host", "invalid:x-bad"]);
        for (access, doc) in [(UNTRUSTED, true), (TRUSTED, false)] {
            let (options, dropped) = r.options_for(access, doc);
            assert_eq!(options.headers.len(), 2, "{access:?} {doc}");
            assert_eq!(
                labels(&dropped),
                [
                    "credential:cookie",
                    "credential:authorization",
                    "forbidden:host",
                    "invalid:x-bad"
                ]
            );
        }
    }

    #[test]
    fn edits_over_the_byte_bound_are_all_dropped() {
        let big = "v".repeat(MAX_HEADER_EDIT_BYTES);
        let r = resolved(&[(HeaderOp::Set, "x-a", "1"), (HeaderOp::Set, "x-b", &big)]);
        let (options, dropped) = r.options_for(TRUSTED, true);
        assert!(options.headers.is_empty());
        assert_eq!(dropped.len(), 2);
        assert!(dropped.iter().all(|(r, _)| *r == Dropped::TooLarge));
    }
}
