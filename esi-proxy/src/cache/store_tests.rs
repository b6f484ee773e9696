//! Tests of the store: keys vary on the named headers only, the weigher, and URL
//! normalisation for keys and purges.

use super::*;
use crate::cache::testing::{headers, Pairs, AUTH_ONLY, COOKIE_ONLY, NONE};

#[test]
fn keys_vary_on_named_headers_only() {
    let url: Arc<str> = "http://a.test/f".into();
    let lang = [HeaderName::from_static("accept-language")];
    // (what, names, first request, second request, credentials of each, same key)
    type KeyCase<'a> = (
        &'a str,
        &'a [HeaderName],
        &'a [(&'a str, &'a str)],
        &'a [(&'a str, &'a str)],
        (Credentials, Credentials),
        bool,
    );
    let cases: &[KeyCase<'_>] = &[
        (
            "same value",
            &lang,
            &[("accept-language", "de")],
            &[("accept-language", "de")],
            (NONE, NONE),
            true,
        ),
        (
            "other value",
            &lang,
            &[("accept-language", "de")],
            &[("accept-language", "en")],
            (NONE, NONE),
            false,
        ),
        (
            "absent vs empty",
            &lang,
            &[],
            &[("accept-language", "")],
            (NONE, NONE),
            false,
        ),
        (
            "two values vs one joined",
            &lang,
            &[("accept-language", "de"), ("accept-language", "en")],
            &[("accept-language", "de, en")],
            (NONE, NONE),
            false,
        ),
        (
            "unnamed header differs",
            &lang,
            &[("accept-language", "de"), ("user-agent", "a")],
            &[("accept-language", "de"), ("user-agent", "b")],
            (NONE, NONE),
            true,
        ),
        (
            "no names",
            &[],
            &[("accept-language", "de")],
            &[("accept-language", "en")],
            (NONE, NONE),
            true,
        ),
        (
            "credentials vs none",
            &[],
            &[],
            &[],
            (COOKIE_ONLY, NONE),
            false,
        ),
        (
            "cookie vs authorization",
            &[],
            &[],
            &[],
            (COOKIE_ONLY, AUTH_ONLY),
            false,
        ),
        (
            "same credentials, other cookie, cookie not named",
            &[],
            &[("cookie", "a=1")],
            &[("cookie", "a=2")],
            (COOKIE_ONLY, COOKIE_ONLY),
            true,
        ),
        (
            "cookie named",
            &[HeaderName::from_static("cookie")],
            &[("cookie", "a=1")],
            &[("cookie", "a=2")],
            (COOKIE_ONLY, COOKIE_ONLY),
            false,
        ),
    ];
    for (what, names, first, second, (c1, c2), same) in cases {
        let a = CacheKey::new(&url, names, &headers(first), *c1);
        let b = CacheKey::new(&url, names, &headers(second), *c2);
        assert_eq!(a == b, *same, "{what}");
    }
    // Names differ, values alike: different keys.
    let h = headers(&[("accept-language", "de")]);
    let with = CacheKey::new(&url, &lang, &h, NONE);
    let without = CacheKey::new(&url, &[], &h, NONE);
    assert_ne!(with, without);
}

#[test]
fn weigher_counts_body_headers_and_key() {
    let url: Arc<str> = "http://a.test/f".into();
    let key = CacheKey::new(&url, &[], &HeaderMap::new(), NONE);
    // (what, kept headers, body bytes, want)
    let cases: &[(&str, Pairs, usize, u32)] = &[
        ("empty", &[], 0, 15 + 1 + 160),
        ("body", &[], 1000, 1000 + 15 + 1 + 160),
        (
            "header",
            &[("content-type", "text/html")],
            1000,
            1000 + (12 + 9 + 32) + 15 + 1 + 160,
        ),
        ("huge", &[], usize::MAX, u32::MAX),
    ];
    for (what, pairs, body, want) in cases {
        assert_eq!(weigh(&key, &headers(pairs), *body, 0), *want, "{what}");
    }
    // A parsed ESI document's includes count for what they hold, with the document's URL.
    assert_eq!(
        weigh(&key, &headers(&[]), 1000, 3),
        1000 + 3 * (768 + 15) + 15 + 1 + 160
    );
    assert_eq!(weigh(&key, &headers(&[]), 0, usize::MAX), u32::MAX);
}

#[test]
fn include_tags_are_counted_in_an_unparsed_body() {
    let body =
        b"a<esi:include src=\"/1\"/><esi:eval src=\"/2\"/><!--esi <esi:include src=\"/3\"/>-->";
    assert_eq!(include_tags(body), 3);
    assert_eq!(include_tags(b"<esi:vars>$(HTTP_HOST)</esi:vars>"), 0);
}

#[test]
fn urls_normalised_for_keys_and_purges() {
    let cases: &[(&str, &str)] = &[
        ("http://a.test:80/f?x=1#top", "http://a.test/f?x=1"),
        ("HTTP://A.test/f", "http://a.test/f"),
        ("not a url", "not a url"),
    ];
    for (text, want) in cases {
        assert_eq!(normalise(text), *want, "{text}");
    }
}
