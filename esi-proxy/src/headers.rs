//! Every HTTP header rule in one place: the hop-by-hop and never-forwarded names,
//! `Surrogate-Capability` and `Surrogate-Control` (the ESI marker), `X-Forwarded-*`, and what
//! the origin is sent and the client gets back; preload hints in `Link` headers are [`link`]'s.
//! Pure functions over header maps: no I/O, no ESI.

pub mod link;

use std::net::{IpAddr, SocketAddr};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, StatusCode};

/// Headers that describe one hop, never forwarded nor cached (RFC 9110 section 7.6.1, and the
/// proxy authentication pair of RFC 9110 section 11.7).
pub const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
];

/// Client request headers never sent to fragments besides [`HOP_BY_HOP`], whatever
/// `fetch.forward_headers` says (lowercase): credentials (which go to trusted hosts only, by
/// their own rule), conditional and range headers (a fragment is always fetched whole), and
/// headers that describe the client's own request or that the fetcher sets itself.
pub const NOT_TO_FRAGMENTS: [&str; 13] = [
    "cookie",
    "authorization",
    "range",
    "if-match",
    "if-none-match",
    "if-modified-since",
    "if-unmodified-since",
    "if-range",
    "host",
    "content-length",
    "content-type",
    "expect",
    "accept-encoding",
];

/// `Surrogate-Control`: the origin's instructions to the proxy, never passed to the client.
pub const SURROGATE_CONTROL: HeaderName = HeaderName::from_static("surrogate-control");
/// `Surrogate-Capability`: what the proxy can do, on every request to origin and fragments.
pub const SURROGATE_CAPABILITY: HeaderName = HeaderName::from_static("surrogate-capability");
/// The device token the proxy announces and that `Surrogate-Control` directives may target.
pub const DEVICE: &str = "esi-proxy";
/// The `Surrogate-Capability` value sent: [`DEVICE`] processes ESI 1.0.
pub const CAPABILITY: &str = "esi-proxy=\"ESI/1.0\"";
/// `X-Forwarded-For`, set by the proxy from the peer address (appended to a trusted proxy's).
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`, set by the proxy (`http`), or a trusted proxy's.
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`, set by the proxy to the site name the request was for, and only then
/// (see [`Forwarding::host`]). Part of every cache key.
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// The `X-Forwarded-*` headers the proxy sets; they always go to fragments.
pub const X_FORWARDED: [HeaderName; 3] = [X_FORWARDED_FOR, X_FORWARDED_PROTO, X_FORWARDED_HOST];
/// `Forwarded` (RFC 7239): passed on from trusted proxies only.
pub const FORWARDED: HeaderName = HeaderName::from_static("forwarded");
/// `Server-Timing`, added to composed pages.
pub const SERVER_TIMING: HeaderName = HeaderName::from_static("server-timing");
/// `Surrogate-Key`: the tags a fragment or layout response carries for purges by key (as
/// Fastly reads it); kept by the proxy, never passed to the client.
pub const SURROGATE_KEY: HeaderName = HeaderName::from_static("surrogate-key");
/// `xkey`: Varnish's name for the same tags, read and removed alike.
pub const XKEY: HeaderName = HeaderName::from_static("xkey");

/// The surrogate keys of one response, within the bounds, and how many each bound dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SurrogateKeys {
    /// The keys kept, each once, in the order they first appear.
    pub keys: Vec<String>,
    /// Keys longer than the byte bound.
    pub too_long: usize,
    /// Keys past the count bound.
    pub too_many: usize,
    /// Keys holding a byte outside visible ASCII.
    pub invalid: usize,
}

/// What the proxy tells the origin and fragments about a request, besides the client's own
/// headers: decided by the server from its settings, applied by [`origin_headers`].
#[derive(Debug, Clone, Default)]
pub struct Forwarding {
    /// The `X-Forwarded-Host` sent: the configured site name the request was for, never a
    /// value the client chose freely (whatever is sent is part of the cache keys, so a closed
    /// set keeps one client from poisoning a page for everyone); `None` sends none.
    pub host: Option<HeaderValue>,
    /// Whether the peer is a trusted proxy (`server.trusted_proxies`): its `X-Forwarded-For`
    /// is kept with the peer appended, its `X-Forwarded-Proto` and `Forwarded` are kept.
    /// Anyone else's are replaced by what the proxy sees, or dropped.
    pub trusted_peer: bool,
}

/// The entry of `site_names` (lowercase) that `host`, a `Host` header or request-target
/// authority, names: compared without case, a port only matching the same port.
pub fn site_name<'a>(host: &str, site_names: &'a [String]) -> Option<&'a str> {
    site_names
        .iter()
        .find(|name| name.eq_ignore_ascii_case(host))
        .map(String::as_str)
}

/// Whether a client request header (lowercase) may never reach a fragment host.
pub fn never_to_fragments(name: &str) -> bool {
    HOP_BY_HOP.contains(&name)
        || NOT_TO_FRAGMENTS.contains(&name)
        || name == SURROGATE_CAPABILITY.as_str()
}

/// Whether a response is marked as ESI: one of its `Surrogate-Control` values has a `content`
/// directive listing `ESI/1.0` (see [`surrogate_control_has_esi`]). The one test for layouts
/// and fragments alike.
pub fn is_esi(headers: &HeaderMap) -> bool {
    headers
        .get_all(SURROGATE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(surrogate_control_has_esi)
}

/// Whether one `Surrogate-Control` value has `content="ESI/1.0"` among its directives, e.g.
/// `max-age=60, content="ESI/1.0 ESI-Inline/1.0";esi-proxy`.
pub fn surrogate_control_has_esi(value: &str) -> bool {
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

/// The surrogate keys of a response: every `Surrogate-Key` and `xkey` value, split at spaces,
/// tabs and commas (so values repeated and joined by a comma read the same), each key once.
/// A key is visible ASCII (`!` to `~`) of at most `max_key_bytes`; at most `max_keys` are
/// kept. What a bound drops is counted in the result, never an error.
pub fn surrogate_keys(headers: &HeaderMap, max_key_bytes: usize, max_keys: usize) -> SurrogateKeys {
    let mut found = SurrogateKeys::default();
    let values = headers
        .get_all(SURROGATE_KEY)
        .iter()
        .chain(headers.get_all(XKEY).iter());
    for value in values {
        let words = value
            .as_bytes()
            .split(|b| matches!(b, b' ' | b'\t' | b','))
            .filter(|w| !w.is_empty());
        for word in words {
            if !word.iter().all(|b| (0x21..=0x7e).contains(b)) {
                found.invalid += 1;
                continue;
            }
            if word.len() > max_key_bytes {
                found.too_long += 1;
                continue;
            }
            // Checked above: every byte is ASCII.
            let key = String::from_utf8_lossy(word);
            if found.keys.iter().any(|k| *k == key) {
                continue;
            }
            if found.keys.len() >= max_keys {
                found.too_many += 1;
                continue;
            }
            found.keys.push(key.into_owned());
        }
    }
    found
}

/// Removes the surrogate-key headers ([`SURROGATE_KEY`], [`XKEY`]): they are for the proxy.
pub fn strip_surrogate_keys(headers: &mut HeaderMap) {
    headers.remove(SURROGATE_KEY);
    headers.remove(XKEY);
}

/// `s` split at `sep` outside double quotes (header directives such as Surrogate-Control's).
pub fn split_unquoted(s: &str, sep: char) -> Vec<&str> {
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

/// Removes hop-by-hop headers and every header the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    for name in &named {
        headers.remove(name);
    }
}

/// The headers sent to the origin: the client's, less hop-by-hop and anything a client could
/// use to impersonate the proxy, plus X-Forwarded-* set by us as `forwarding` says.
pub fn origin_headers<B>(
    req: &Request<B>,
    remote: SocketAddr,
    forwarding: &Forwarding,
) -> HeaderMap {
    let mut headers = req.headers().clone();
    strip_hop_by_hop(&mut headers);
    headers.remove(header::HOST);
    let values = |name| -> Vec<HeaderValue> {
        match forwarding.trusted_peer {
            true => headers.get_all(name).iter().cloned().collect(),
            false => Vec::new(),
        }
    };
    let (chain, proto, forwarded) = (
        values(X_FORWARDED_FOR),
        values(X_FORWARDED_PROTO),
        values(FORWARDED),
    );
    for name in [
        X_FORWARDED_FOR,
        X_FORWARDED_PROTO,
        X_FORWARDED_HOST,
        FORWARDED,
        SURROGATE_CAPABILITY,
    ] {
        headers.remove(name);
    }
    // The origin may only pick an encoding the proxy can decode to compose the page.
    if let Some(accepted) = decodable_encodings(&headers) {
        headers.insert(header::ACCEPT_ENCODING, accepted);
    }
    let ip = match remote.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        ip => ip,
    };
    // A trusted proxy's chain, then the peer: one value, as most readers take the first line.
    let mut hops: Vec<&str> = chain.iter().filter_map(|v| v.to_str().ok()).collect();
    let peer = ip.to_string();
    hops.push(&peer);
    if let Ok(v) = HeaderValue::from_str(&hops.join(", ")) {
        headers.insert(X_FORWARDED_FOR, v);
    }
    match proto.into_iter().next() {
        Some(proto) => headers.insert(X_FORWARDED_PROTO, proto),
        None => headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http")),
    };
    for value in forwarded {
        headers.append(FORWARDED, value);
    }
    if let Some(host) = &forwarding.host {
        headers.insert(X_FORWARDED_HOST, host.clone());
    }
    headers
}

/// The client's `Accept-Encoding` narrowed to what a layout may be decoded from (gzip,
/// deflate, br, identity), so an origin never answers an ESI page in, say, zstd. `None` when
/// the client sent none.
fn decodable_encodings(headers: &HeaderMap) -> Option<HeaderValue> {
    let values: Vec<&str> = headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if values.is_empty() {
        return None;
    }
    let mut kept: Vec<String> = Vec::new();
    for item in values.iter().flat_map(|v| v.split(',')) {
        let item = item.trim();
        let coding = item
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match coding.as_str() {
            "gzip" | "x-gzip" | "deflate" | "br" | "identity" => kept.push(item.to_owned()),
            "*" => kept.extend(["gzip", "deflate", "br"].map(String::from)),
            _ => {}
        }
    }
    let joined = if kept.is_empty() {
        "identity".to_owned()
    } else {
        kept.join(", ")
    };
    HeaderValue::from_str(&joined).ok()
}

/// The response headers passed on to the client with a body streamed as the origin sent it:
/// the origin's, less hop-by-hop and Surrogate-Control, with a `Content-Length` only where it
/// still frames the body ([`body_length`]).
pub fn client_response_headers(status: StatusCode, upstream: &HeaderMap) -> HeaderMap {
    let mut headers = forwarded_response_headers(upstream);
    headers.remove(header::CONTENT_LENGTH);
    if let Some(length) = body_length(status, upstream) {
        headers.insert(header::CONTENT_LENGTH, length);
    }
    headers
}

/// The origin's response headers less hop-by-hop, Surrogate-Control and the surrogate keys.
fn forwarded_response_headers(upstream: &HeaderMap) -> HeaderMap {
    let mut headers = upstream.clone();
    strip_hop_by_hop(&mut headers);
    headers.remove(SURROGATE_CONTROL);
    strip_surrogate_keys(&mut headers);
    headers
}

/// The `Content-Length` a response may be passed on with: one value, and only when it is the
/// body's framing. Never for 1xx and 204 (RFC 9110 section 8.6); never when the origin also
/// sent `Transfer-Encoding`, which then framed the body and whose received `Content-Length` a
/// proxy must remove (RFC 9112 section 6.3); never when the values disagree (repeated or in a
/// list), which no one can frame by. Otherwise the length itself, once: hyper framed the body
/// by it, and the client's response is framed by it again.
pub fn body_length(status: StatusCode, upstream: &HeaderMap) -> Option<HeaderValue> {
    if status.is_informational() || status == StatusCode::NO_CONTENT {
        return None;
    }
    if upstream.contains_key(header::TRANSFER_ENCODING) {
        return None;
    }
    let mut lengths = upstream
        .get_all(header::CONTENT_LENGTH)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("x").split(','))
        .map(|n| n.trim().parse::<u64>().ok());
    let first = lengths.next()??;
    lengths
        .all(|n| n == Some(first))
        .then(|| HeaderValue::from(first))
}

/// The headers of a composed page: the layout's, less what no longer describes the body
/// (length, encoding, validators, ranges) and Surrogate-Control. A composed page is always
/// whole: it has no `Content-Range` and offers no ranges.
pub fn composed_headers(layout: &HeaderMap) -> HeaderMap {
    let mut headers = forwarded_response_headers(layout);
    for name in [
        header::CONTENT_LENGTH,
        header::CONTENT_ENCODING,
        header::ETAG,
        header::ACCEPT_RANGES,
        header::CONTENT_RANGE,
        header::LAST_MODIFIED,
    ] {
        headers.remove(name);
    }
    headers
}

/// Headers a layout's `$add_header` may not set on its page (besides [`HOP_BY_HOP`]): what the
/// proxy owns (framing, encoding, `Server-Timing`, `Surrogate-*`), what says whether the page
/// may be stored or whose it is (`Cache-Control`, `Expires`, `Pragma`, `Vary`, `Set-Cookie`),
/// and `Location`, which only `$set_redirect` sets, checked (lowercase).
pub const NOT_FROM_LAYOUT_FUNCTIONS: [&str; 14] = [
    "content-length",
    "content-encoding",
    "content-range",
    "cache-control",
    "expires",
    "pragma",
    "vary",
    "set-cookie",
    "location",
    "server-timing",
    "surrogate-control",
    "surrogate-key",
    "age",
    "date",
];

/// Whether a layout's `$add_header` may set `name` on its page (see
/// [`NOT_FROM_LAYOUT_FUNCTIONS`]).
pub fn layout_may_add(name: &HeaderName) -> bool {
    let name = name.as_str();
    !HOP_BY_HOP.contains(&name) && !NOT_FROM_LAYOUT_FUNCTIONS.contains(&name)
}

/// The `Location` a page may redirect to: a path on this site (`/login`, `/p/2?x=1`) or an
/// absolute `http`/`https` URL, passed as written (a path is resolved by the browser against
/// the page's URL, never against a fragment service's). `None` for anything else: another
/// scheme, a reference relative to the current path, a value over 8 KiB, or text that is not a
/// valid header value (no CR, LF or other control characters can reach the head).
pub fn redirect_location(value: &[u8]) -> Option<HeaderValue> {
    const MAX_LOCATION_BYTES: usize = 8 * 1024;
    if value.is_empty() || value.len() > MAX_LOCATION_BYTES {
        return None;
    }
    let text = std::str::from_utf8(value).ok()?;
    if text.bytes().any(|b| b < 0x21 || b == 0x7f) {
        return None;
    }
    let usable = if text.starts_with('/') {
        // `//host/x` and `/\host/x` name another host; an absolute URL says so openly.
        !text.starts_with("//") && !text.contains('\\')
    } else {
        url::Url::parse(text).is_ok_and(|u| matches!(u.scheme(), "http" | "https"))
    };
    usable.then(|| HeaderValue::from_str(text).ok()).flatten()
}

/// Makes a composed page unstorable by shared caches: `Cache-Control: private`, keeping the
/// layout's directives that still hold for the visitor's own cache (`max-age`, `no-store`,
/// `no-cache`, ...) and dropping `public`, `s-maxage` and `proxy-revalidate`.
pub fn make_private(headers: &mut HeaderMap) {
    let mut directives = vec!["private".to_owned()];
    for value in headers.get_all(header::CACHE_CONTROL) {
        let Ok(value) = value.to_str() else { continue };
        for directive in split_unquoted(value, ',') {
            let directive = directive.trim();
            let name = directive.split('=').next().unwrap_or("").trim();
            let shared = ["public", "private", "s-maxage", "proxy-revalidate"]
                .iter()
                .any(|n| n.eq_ignore_ascii_case(name));
            if !directive.is_empty() && !shared {
                directives.push(directive.to_owned());
            }
        }
    }
    // Built from valid header text and `private`, so it is a valid value; `private` alone if not.
    let value = HeaderValue::from_str(&directives.join(", "))
        .unwrap_or(HeaderValue::from_static("private"));
    headers.insert(header::CACHE_CONTROL, value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_pages_keep_only_what_holds_for_the_visitor() {
        let cases: &[(&[&str], &str)] = &[
            (&[], "private"),
            (&["public, max-age=30"], "private, max-age=30"),
            (&["s-maxage=60, max-age=5", "Public"], "private, max-age=5"),
            (&["private=\"set-cookie\", no-cache"], "private, no-cache"),
            (&["no-store"], "private, no-store"),
        ];
        for (given, want) in cases {
            let mut h = HeaderMap::new();
            for v in *given {
                h.append(header::CACHE_CONTROL, HeaderValue::from_static(v));
            }
            make_private(&mut h);
            let got: Vec<_> = h.get_all(header::CACHE_CONTROL).iter().collect();
            assert_eq!(got, vec![*want], "{given:?}");
        }
    }

    #[test]
    fn the_capability_announces_the_device_that_directives_target() {
        assert_eq!(CAPABILITY.split('=').next(), Some(DEVICE));
        assert!(HeaderValue::from_str(CAPABILITY).is_ok());
    }

    #[test]
    fn never_to_fragments_covers_credentials_hop_by_hop_and_our_own_headers() {
        for name in [
            "cookie",
            "authorization",
            "proxy-authorization",
            "connection",
            "te",
        ]
        .into_iter()
        .chain(["range", "if-none-match", "host", "surrogate-capability"])
        {
            assert!(never_to_fragments(name), "{name}");
        }
        for name in ["accept-language", "user-agent", "x-forwarded-for"] {
            assert!(!never_to_fragments(name), "{name}");
        }
    }

    #[test]
    fn site_names_match_without_case_and_with_the_same_port_only() {
        let names = ["www.example".to_owned(), "b.example:8080".to_owned()];
        let cases = [
            ("www.example", Some("www.example")),
            ("WWW.Example", Some("www.example")),
            ("www.example:8080", None),
            ("b.example:8080", Some("b.example:8080")),
            ("b.example", None),
            ("evil.example", None),
            ("", None),
        ];
        for (host, want) in cases {
            assert_eq!(site_name(host, &names), want, "{host:?}");
        }
    }

    #[test]
    fn accept_encoding_is_narrowed_to_what_a_layout_can_be_decoded_from() {
        let cases = [
            ("gzip, deflate, br, zstd", Some("gzip, deflate, br")),
            ("zstd", Some("identity")),
            (
                "br;q=1.0, zstd;q=0.9, gzip;q=0.5",
                Some("br;q=1.0, gzip;q=0.5"),
            ),
            ("*", Some("gzip, deflate, br")),
            ("identity", Some("identity")),
        ];
        for (given, want) in cases {
            let mut h = HeaderMap::new();
            h.insert(header::ACCEPT_ENCODING, HeaderValue::from_static(given));
            let got = decodable_encodings(&h);
            assert_eq!(
                got.as_ref().map(|v| v.to_str().unwrap_or("?")),
                want,
                "{given}"
            );
        }
        assert_eq!(decodable_encodings(&HeaderMap::new()), None);
    }

    #[test]
    fn content_length_is_passed_on_only_where_it_frames_the_body() {
        /// Status, the origin's headers, the length passed on.
        type Case = (
            StatusCode,
            &'static [(&'static str, &'static str)],
            Option<u64>,
        );
        let ok = StatusCode::OK;
        let cases: &[Case] = &[
            (ok, &[("content-length", "5")], Some(5)),
            (ok, &[], None),
            (
                ok,
                &[("content-length", "5"), ("transfer-encoding", "chunked")],
                None,
            ),
            (
                ok,
                &[("content-length", "5"), ("content-length", "5")],
                Some(5),
            ),
            (ok, &[("content-length", "5, 5")], Some(5)),
            (
                ok,
                &[("content-length", "5"), ("content-length", "7")],
                None,
            ),
            (ok, &[("content-length", "5, 7")], None),
            (ok, &[("content-length", "five")], None),
            (StatusCode::NO_CONTENT, &[("content-length", "5")], None),
            (StatusCode::CONTINUE, &[("content-length", "5")], None),
            (
                StatusCode::NOT_MODIFIED,
                &[("content-length", "5")],
                Some(5),
            ),
        ];
        for (status, given, want) in cases {
            let mut h = HeaderMap::new();
            for (name, value) in *given {
                h.append(*name, HeaderValue::from_static(value));
            }
            let got = client_response_headers(*status, &h);
            let lengths: Vec<_> = got.get_all(header::CONTENT_LENGTH).iter().collect();
            let want: Vec<HeaderValue> = want.iter().map(|n| HeaderValue::from(*n)).collect();
            assert_eq!(
                lengths,
                want.iter().collect::<Vec<_>>(),
                "{status} {given:?}"
            );
            assert!(!got.contains_key(header::TRANSFER_ENCODING), "{given:?}");
        }
    }

    #[test]
    fn surrogate_keys_are_split_bounded_and_never_passed_on() {
        // (what, headers, max key bytes, max keys, want keys, (too long, too many, invalid))
        type Case<'a> = (
            &'a str,
            Vec<(&'a str, &'a str)>,
            usize,
            usize,
            &'a [&'a str],
            (usize, usize, usize),
        );
        let cases: Vec<Case<'_>> = vec![
            ("none", vec![], 8, 4, &[], (0, 0, 0)),
            (
                "spaces",
                vec![("surrogate-key", " a  b\tc ")],
                8,
                4,
                &["a", "b", "c"],
                (0, 0, 0),
            ),
            (
                "xkey and commas",
                vec![("xkey", "a,b"), ("xkey", "c")],
                8,
                4,
                &["a", "b", "c"],
                (0, 0, 0),
            ),
            (
                "both, once each",
                vec![("surrogate-key", "a b"), ("xkey", "b a d")],
                8,
                4,
                &["a", "b", "d"],
                (0, 0, 0),
            ),
            (
                "too long",
                vec![("surrogate-key", "kkkkkkkkk"), ("xkey", "ok")],
                8,
                4,
                &["ok"],
                (1, 0, 0),
            ),
            (
                "too many",
                vec![("surrogate-key", "a b c d e f")],
                8,
                4,
                &["a", "b", "c", "d"],
                (0, 2, 0),
            ),
            (
                "not visible ASCII",
                vec![("surrogate-key", "a caf\u{e9} b")],
                8,
                4,
                &["a", "b"],
                (0, 0, 1),
            ),
        ];
        for (what, pairs, max_bytes, max_keys, want, (long_n, many_n, bad_n)) in cases {
            let mut h = HeaderMap::new();
            for (name, value) in pairs {
                h.append(
                    HeaderName::from_static(name),
                    HeaderValue::from_bytes(value.as_bytes()).expect("header value"),
                );
            }
            let got = surrogate_keys(&h, max_bytes, max_keys);
            assert_eq!(got.keys, want, "{what}");
            assert_eq!(
                (got.too_long, got.too_many, got.invalid),
                (long_n, many_n, bad_n),
                "{what}"
            );
            let passed = client_response_headers(StatusCode::OK, &h);
            assert!(
                passed.get(SURROGATE_KEY).is_none() && passed.get(XKEY).is_none(),
                "{what}"
            );
            assert!(composed_headers(&h).get(XKEY).is_none(), "{what}");
        }
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["x-kept"]);
    }
}
