//! The header rules of the proxy path: hop-by-hop headers dropped, what the origin is sent
//! (X-Forwarded-* set by the proxy, Accept-Encoding narrowed to what a layout can be decoded
//! from), and what the client gets back (Surrogate-Control removed; a composed page's length,
//! encoding and validators dropped). Pure functions over header maps: no I/O, no ESI.

use std::net::{IpAddr, SocketAddr};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Request;
use hyper::body::Incoming;

/// Headers that describe one hop, never forwarded (RFC 9110 section 7.6.1).
const HOP_BY_HOP: [&str; 9] = [
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

pub(super) const SURROGATE_CONTROL: HeaderName = HeaderName::from_static("surrogate-control");
pub(super) const SURROGATE_CAPABILITY: HeaderName = HeaderName::from_static("surrogate-capability");
pub(super) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(super) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(super) const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub(super) const FORWARDED: HeaderName = HeaderName::from_static("forwarded");
pub(super) const SERVER_TIMING: HeaderName = HeaderName::from_static("server-timing");

/// Removes hop-by-hop headers and every header the `Connection` header names.
pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap) {
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
/// use to impersonate the proxy, plus X-Forwarded-* set by us.
pub(super) fn origin_headers(req: &Request<Incoming>, remote: SocketAddr) -> HeaderMap {
    let mut headers = req.headers().clone();
    strip_hop_by_hop(&mut headers);
    let host = headers.remove(header::HOST);
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
    if let Ok(v) = HeaderValue::from_str(&ip.to_string()) {
        headers.insert(X_FORWARDED_FOR, v);
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    if let Some(host) = host {
        headers.insert(X_FORWARDED_HOST, host);
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

/// The response headers passed on to the client: the origin's, less hop-by-hop and
/// Surrogate-Control.
pub(super) fn client_response_headers(upstream: &HeaderMap) -> HeaderMap {
    let mut headers = upstream.clone();
    strip_hop_by_hop(&mut headers);
    headers.remove(SURROGATE_CONTROL);
    headers
}

/// The headers of a composed page: the layout's, less what no longer describes the body
/// (length, encoding, validators, ranges) and Surrogate-Control.
pub(super) fn composed_headers(layout: &HeaderMap) -> HeaderMap {
    let mut headers = client_response_headers(layout);
    for name in [
        header::CONTENT_LENGTH,
        header::CONTENT_ENCODING,
        header::ETAG,
        header::ACCEPT_RANGES,
        header::LAST_MODIFIED,
    ] {
        headers.remove(name);
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

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
