//! Every HTTP header rule in one place: the never-forwarded and hop-by-hop names,
//! `Surrogate-Capability`, `Surrogate-Control` parsing and `X-Forwarded-*`. Pure: no I/O.

use http::header::HeaderName;

/// Client request headers never sent to fragments, whatever `fetch.forward_headers` says
/// (lowercase): credentials (which go to trusted hosts only, by their own rule), conditional and
/// range headers (a fragment is always fetched whole), hop-by-hop headers, and headers that
/// describe the client's own request or that the fetcher sets itself.
pub const NEVER_FORWARDED: &[&str] = &[
    "cookie",
    "authorization",
    "proxy-authorization",
    "range",
    "if-match",
    "if-none-match",
    "if-modified-since",
    "if-unmodified-since",
    "if-range",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "content-type",
    "expect",
    "accept-encoding",
    "surrogate-capability",
];

/// The `Surrogate-Capability` value sent on every request to the origin and to fragments.
pub const SURROGATE_CAPABILITY: &str = "esi-proxy=\"ESI/1.0\"";

/// The `X-Forwarded-*` headers the server sets; they always go to fragments.
pub(crate) const X_FORWARDED: [&str; 3] =
    ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"];

/// `Surrogate-Capability`, which `http` has no constant for.
pub(crate) fn surrogate_capability_name() -> HeaderName {
    HeaderName::from_static("surrogate-capability")
}

/// Whether one `Surrogate-Control` value has `content="ESI/1.0"` among its directives, e.g.
/// `max-age=60, content="ESI/1.0 ESI-Inline/1.0";esi-proxy`.
pub(crate) fn surrogate_control_has_esi(value: &str) -> bool {
    split_unquoted(value, ',').into_iter().any(|directive| {
        let Some((name, rest)) = directive.split_once('=') else {
            return false;
        };
        if !name.trim().eq_ignore_ascii_case("content") {
            return false;
        }
        // Drop a `;target` suffix, then the quotes; the value lists capabilities.
        let capabilities = split_unquoted(rest, ';')
            .into_iter()
            .next()
            .unwrap_or_default();
        capabilities
            .trim()
            .trim_matches('"')
            .split_ascii_whitespace()
            .any(|c| c.eq_ignore_ascii_case("ESI/1.0"))
    })
}

/// `s` split at `sep` outside double quotes (header directives such as Surrogate-Control's).
pub(crate) fn split_unquoted(s: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut quoted = false;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                parts.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}
