//! Tests of the store: keys vary on the named headers only and follow the URL's last vary
//! spec, the weigher, and URL normalisation for keys and purges.

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

/// A value of the tests' store: weighs one byte, lives a minute, untagged.
#[derive(Clone)]
struct Plain;

impl Lifetime for Plain {
    fn lifetime(&self) -> Duration {
        Duration::from_secs(60)
    }
}

impl Stored for Plain {
    fn weight(&self) -> u32 {
        1
    }

    fn tags(&self) -> &[Arc<str>] {
        &[]
    }

    fn soften(&self, _grace: Duration) -> Softened<Self> {
        Softened::Remove
    }
}

static TEST_KIND: Kind = Kind {
    label: "test",
    entries_name: "test entries",
    vary_name: "test vary",
    entries_gauge: ("test_entries", "Test entries."),
    bytes_gauge: ("test_bytes", "Test bytes."),
};

#[tokio::test]
async fn a_key_follows_the_vary_of_the_urls_last_stored_response() {
    let store: Store<Plain> = Store::new(&TEST_KIND, 1 << 20, 100, Arc::new(Metrics::new()));
    let policy = crate::cache::testing::policy(false);
    let url = crate::cache::testing::url("http://a.test/f");
    let text: Arc<str> = normalise(url.as_str()).into();
    let (de, en) = (
        headers(&[("accept-language", "de")]),
        headers(&[("accept-language", "en")]),
    );
    let lang: Arc<[HeaderName]> = Arc::from([HeaderName::from_static("accept-language")]);
    let plain = |h: &HeaderMap| CacheKey::new(&text, policy.key_names(&url), h, NONE);
    let varied = |h: &HeaderMap| CacheKey::new(&text, &key_names(&policy, &url, &lang), h, NONE);
    // The keys of a German and an English request, by both ways of asking.
    let keys = || async {
        let now = (
            store.key_now(&policy, &url, &text, &de, NONE),
            store.key_now(&policy, &url, &text, &en, NONE),
        );
        let waited = (
            store.key_for(&policy, &url, &text, &de, NONE).await,
            store.key_for(&policy, &url, &text, &en, NONE).await,
        );
        assert!(now == waited, "key_now and key_for agree");
        waited
    };

    assert_eq!(keys().await, (plain(&de), plain(&en)), "nothing stored");
    assert!(!store.vary.varying.may_vary(&text));

    store.insert(varied(&de), Arc::clone(&lang), Plain).await;
    assert_eq!(
        keys().await,
        (varied(&de), varied(&en)),
        "varies on the language"
    );
    assert_ne!(varied(&de), varied(&en));

    // The URL's next response says no Vary: its keys stop varying, and once moka has let the
    // old spec go the URL is known not to vary without a lookup.
    store.insert(plain(&de), Arc::from([]), Plain).await;
    store.run_pending_tasks().await;
    assert_eq!(keys().await, (plain(&de), plain(&en)), "no longer varies");
    assert!(
        !store.vary.varying.may_vary(&text),
        "the replaced spec is counted out"
    );

    // Varying again, then purged: back to the policy's names, counted out again.
    store.insert(varied(&en), Arc::clone(&lang), Plain).await;
    assert!(store.vary.varying.may_vary(&text));
    assert_eq!(keys().await, (varied(&de), varied(&en)), "varies again");
    store.purge(&Urls::equal(url.as_str()));
    store.run_pending_tasks().await;
    assert_eq!(keys().await, (plain(&de), plain(&en)), "purged");
    assert!(
        !store.vary.varying.may_vary(&text),
        "the purged spec is counted out"
    );
}
