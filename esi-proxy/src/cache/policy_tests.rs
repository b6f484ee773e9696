//! Unit tests of the TTL decision: each source in precedence order, what is never stored,
//! credentials, Surrogate-Control forms, stale windows, key headers and Vary.

use super::*;
use crate::cache::testing::{
    headers, policy, policy_of, url, Pairs, AUTH_ONLY, BOTH, COOKIE_ONLY, NONE,
};
use crate::config::CacheConfig;

fn store(ttl: u64, swr: u64, sie: u64, source: TtlSource) -> Decision {
    Decision::Store {
        ttl: Duration::from_secs(ttl),
        stale_while_revalidate: Duration::from_secs(swr),
        stale_if_error: Duration::from_secs(sie),
        source,
    }
}

fn rule_source(index: usize) -> TtlSource {
    let pattern = ["/rule/*", "a.test:80/host/*", "/auth/*"][index];
    TtlSource::Rule(index, pattern.to_owned())
}

/// (what, URL, status, response headers, credentials, want); policy without windows.
type Case = (
    &'static str,
    &'static str,
    u16,
    &'static [(&'static str, &'static str)],
    Credentials,
    Decision,
);

#[test]
fn ttl_sources_in_precedence_order() {
    use TtlSource::*;
    let all: &[(&str, &str)] = &[
        ("surrogate-control", "max-age=20"),
        ("cache-control", "s-maxage=30, max-age=40"),
    ];
    let cases: Vec<Case> = vec![
        (
            "rule beats every header",
            "http://b.test/rule/x",
            200,
            all,
            NONE,
            store(11, 5, 0, rule_source(0)),
        ),
        (
            "host rule",
            "http://a.test/host/x",
            200,
            all,
            NONE,
            store(13, 0, 0, rule_source(1)),
        ),
        (
            "host rule, other port",
            "http://a.test:81/host/x",
            200,
            &[],
            NONE,
            store(7, 0, 0, Default),
        ),
        (
            "surrogate-control beats s-maxage",
            "http://b.test/f",
            200,
            all,
            NONE,
            store(20, 0, 0, SurrogateControl),
        ),
        (
            "s-maxage beats max-age",
            "http://b.test/f",
            200,
            &[("cache-control", "max-age=40, s-maxage=30")],
            NONE,
            store(30, 0, 0, SMaxAge),
        ),
        (
            "max-age beats default",
            "http://b.test/f",
            200,
            &[("cache-control", "max-age=40")],
            NONE,
            store(40, 0, 0, MaxAge),
        ),
        (
            "default",
            "http://b.test/f",
            200,
            &[],
            NONE,
            store(7, 0, 0, Default),
        ),
        (
            "age subtracted",
            "http://b.test/f",
            200,
            &[("cache-control", "max-age=40"), ("age", "15")],
            NONE,
            store(25, 0, 0, MaxAge),
        ),
        (
            "age past max-age",
            "http://b.test/f",
            200,
            &[("cache-control", "max-age=40"), ("age", "50")],
            NONE,
            Decision::Pass("ttl"),
        ),
        (
            "age not subtracted from a rule",
            "http://b.test/rule/x",
            200,
            &[("age", "50")],
            NONE,
            store(11, 5, 0, rule_source(0)),
        ),
        (
            "max-age=0",
            "http://b.test/f",
            200,
            &[("cache-control", "max-age=0")],
            NONE,
            Decision::Pass("ttl"),
        ),
        (
            "max-age not a number",
            "http://b.test/f",
            200,
            &[("cache-control", "max-age=soon")],
            NONE,
            Decision::Pass("ttl"),
        ),
        (
            "quoted max-age",
            "http://b.test/f",
            200,
            &[("cache-control", "max-age=\"40\"")],
            NONE,
            store(40, 0, 0, MaxAge),
        ),
        (
            "repeated max-age takes the smaller",
            "http://b.test/f",
            200,
            &[
                ("cache-control", "max-age=40"),
                ("cache-control", "max-age=9"),
            ],
            NONE,
            store(9, 0, 0, MaxAge),
        ),
        (
            "huge max-age capped",
            "http://b.test/f",
            200,
            &[("cache-control", "max-age=99999999999999999999999")],
            NONE,
            store(MAX_AGE_S, 0, 0, MaxAge),
        ),
        (
            "no-cache without a rule",
            "http://b.test/f",
            200,
            &[("cache-control", "no-cache, max-age=40")],
            NONE,
            Decision::Pass("no-cache"),
        ),
        (
            "no-cache with a rule",
            "http://b.test/rule/x",
            200,
            &[("cache-control", "no-cache")],
            NONE,
            store(11, 5, 0, rule_source(0)),
        ),
    ];
    check(&policy(false), &cases);
}

#[test]
fn never_stored() {
    let cases: Vec<Case> = vec![
        (
            "no-store",
            "http://b.test/rule/x",
            200,
            &[("cache-control", "max-age=40, no-store")],
            NONE,
            Decision::Pass("no-store"),
        ),
        (
            "surrogate no-store",
            "http://b.test/rule/x",
            200,
            &[("surrogate-control", "no-store")],
            NONE,
            Decision::Pass("no-store"),
        ),
        (
            "private",
            "http://b.test/rule/x",
            200,
            &[("cache-control", "private, max-age=40")],
            NONE,
            Decision::Pass("private"),
        ),
        (
            "private with fields",
            "http://b.test/f",
            200,
            &[("cache-control", "private=\"x-a, x-b\", max-age=40")],
            NONE,
            Decision::Pass("private"),
        ),
        (
            "private beats public",
            "http://b.test/f",
            200,
            &[("cache-control", "public, private, max-age=40")],
            NONE,
            Decision::Pass("private"),
        ),
        (
            "Vary: *",
            "http://b.test/rule/x",
            200,
            &[("vary", "accept-language, *")],
            NONE,
            Decision::Pass("vary"),
        ),
        (
            "Vary not a name",
            "http://b.test/f",
            200,
            &[("vary", "a b"), ("cache-control", "max-age=40")],
            NONE,
            Decision::Pass("vary"),
        ),
        (
            "Set-Cookie",
            "http://b.test/rule/x",
            200,
            &[("set-cookie", "a=1")],
            NONE,
            Decision::Pass("set-cookie"),
        ),
        (
            "404",
            "http://b.test/rule/x",
            404,
            &[],
            NONE,
            Decision::Pass("status"),
        ),
        (
            "206",
            "http://b.test/f",
            206,
            &[("cache-control", "max-age=40")],
            NONE,
            Decision::Pass("status"),
        ),
        (
            "203",
            "http://b.test/f",
            203,
            &[("cache-control", "max-age=40")],
            NONE,
            Decision::Pass("status"),
        ),
    ];
    check(&policy(false), &cases);
}

#[test]
fn credentials() {
    use TtlSource::*;
    let cases: Vec<Case> = vec![
        (
            "cookie, max-age",
            "http://b.test/f",
            200,
            &[("cache-control", "max-age=40")],
            COOKIE_ONLY,
            Decision::Pass("credentials"),
        ),
        (
            "authorization, default",
            "http://b.test/f",
            200,
            &[],
            AUTH_ONLY,
            Decision::Pass("credentials"),
        ),
        (
            "cookie, public",
            "http://b.test/f",
            200,
            &[("cache-control", "public, max-age=40")],
            COOKIE_ONLY,
            store(40, 0, 0, MaxAge),
        ),
        (
            "both, s-maxage",
            "http://b.test/f",
            200,
            &[("cache-control", "s-maxage=30")],
            BOTH,
            store(30, 0, 0, SMaxAge),
        ),
        (
            "cookie, surrogate max-age alone",
            "http://b.test/f",
            200,
            &[("surrogate-control", "max-age=20")],
            COOKIE_ONLY,
            Decision::Pass("credentials"),
        ),
        (
            "cookie, rule keys cookie",
            "http://a.test/host/x",
            200,
            &[("cache-control", "max-age=40")],
            COOKIE_ONLY,
            store(13, 0, 0, rule_source(1)),
        ),
        (
            "authorization, rule keys cookie only",
            "http://a.test/host/x",
            200,
            &[],
            AUTH_ONLY,
            Decision::Pass("credentials"),
        ),
        (
            "both, rule keys cookie only",
            "http://a.test/host/x",
            200,
            &[],
            BOTH,
            Decision::Pass("credentials"),
        ),
        (
            "both, rule keys both",
            "http://b.test/auth/x",
            200,
            &[],
            BOTH,
            store(17, 0, 0, rule_source(2)),
        ),
        (
            "cookie, rule without keys",
            "http://b.test/rule/x",
            200,
            &[],
            COOKIE_ONLY,
            Decision::Pass("credentials"),
        ),
        (
            "public does not beat no-store",
            "http://b.test/f",
            200,
            &[("cache-control", "public, no-store")],
            COOKIE_ONLY,
            Decision::Pass("no-store"),
        ),
    ];
    check(&policy(false), &cases);

    // The bool form assumes both credentials.
    let p = policy(false);
    let empty = HeaderMap::new();
    let ok = StatusCode::OK;
    let keyed_cookie = url("http://a.test/host/x");
    let keyed_both = url("http://b.test/auth/x");
    assert_eq!(
        p.decide(&keyed_cookie, ok, &empty, true),
        Decision::Pass("credentials")
    );
    assert_eq!(
        p.decide(&keyed_cookie, ok, &empty, false),
        store(13, 0, 0, rule_source(1))
    );
    assert_eq!(
        p.decide(&keyed_both, ok, &empty, true),
        store(17, 0, 0, rule_source(2))
    );

    // A config-wide key header counts as keying.
    let config = CacheConfig {
        default_ttl_s: 7,
        key_headers: vec!["Cookie".into()],
        ..CacheConfig::default()
    };
    let p = policy_of(config);
    assert_eq!(
        p.decide_for(&url("http://b.test/f"), ok, &empty, COOKIE_ONLY),
        store(7, 0, 0, Default)
    );
}

#[test]
fn surrogate_control_forms() {
    use TtlSource::*;
    const MAX_AGE_40: (&str, &str) = ("cache-control", "max-age=40");
    let cases: Vec<Case> = vec![
        (
            "N+M gives N",
            "http://b.test/f",
            200,
            &[("surrogate-control", "max-age=20+600")],
            NONE,
            store(20, 0, 0, SurrogateControl),
        ),
        (
            "with content",
            "http://b.test/f",
            200,
            &[("surrogate-control", "content=\"ESI/1.0\", max-age=20")],
            NONE,
            store(20, 0, 0, SurrogateControl),
        ),
        (
            "content only",
            "http://b.test/f",
            200,
            &[("surrogate-control", "content=\"ESI/1.0\""), MAX_AGE_40],
            NONE,
            store(40, 0, 0, MaxAge),
        ),
        (
            "targeted beats untargeted",
            "http://b.test/f",
            200,
            &[("surrogate-control", "max-age=50, max-age=20;esi-proxy")],
            NONE,
            store(20, 0, 0, SurrogateControl),
        ),
        (
            "targeted, any case",
            "http://b.test/f",
            200,
            &[("surrogate-control", "max-age=20;ESI-Proxy")],
            NONE,
            store(20, 0, 0, SurrogateControl),
        ),
        (
            "targeted elsewhere",
            "http://b.test/f",
            200,
            &[("surrogate-control", "max-age=20;other"), MAX_AGE_40],
            NONE,
            store(40, 0, 0, MaxAge),
        ),
        (
            "no-store elsewhere",
            "http://b.test/f",
            200,
            &[("surrogate-control", "no-store;other")],
            NONE,
            store(7, 0, 0, Default),
        ),
        (
            "no-store for us",
            "http://b.test/f",
            200,
            &[("surrogate-control", "no-store;esi-proxy"), MAX_AGE_40],
            NONE,
            Decision::Pass("no-store"),
        ),
        (
            "quoted",
            "http://b.test/f",
            200,
            &[("surrogate-control", "max-age=\"20\"")],
            NONE,
            store(20, 0, 0, SurrogateControl),
        ),
        (
            "second header",
            "http://b.test/f",
            200,
            &[
                ("surrogate-control", "content=\"ESI/1.0\""),
                ("surrogate-control", "max-age=20"),
            ],
            NONE,
            store(20, 0, 0, SurrogateControl),
        ),
        (
            "zero",
            "http://b.test/f",
            200,
            &[("surrogate-control", "max-age=0"), MAX_AGE_40],
            NONE,
            Decision::Pass("ttl"),
        ),
    ];
    check(&policy(false), &cases);
}

#[test]
fn stale_windows() {
    use TtlSource::*;
    let both: &[(&str, &str)] = &[(
        "cache-control",
        "max-age=10, stale-while-revalidate=30, stale-if-error=60",
    )];
    // (what, URL, response headers, want) with config windows 2 s and 3 s.
    let cases: &[(&str, &str, Pairs, Decision)] = &[
        (
            "response windows",
            "http://b.test/f",
            both,
            store(10, 30, 60, MaxAge),
        ),
        (
            "config windows",
            "http://b.test/f",
            &[("cache-control", "max-age=10")],
            store(10, 2, 3, MaxAge),
        ),
        (
            "one from each",
            "http://b.test/f",
            &[("cache-control", "max-age=10, stale-if-error=60")],
            store(10, 2, 60, MaxAge),
        ),
        (
            "rule beats response",
            "http://b.test/rule/x",
            both,
            store(11, 5, 60, rule_source(0)),
        ),
        (
            "must-revalidate",
            "http://b.test/f",
            &[(
                "cache-control",
                "max-age=10, must-revalidate, stale-if-error=60",
            )],
            store(10, 0, 0, MaxAge),
        ),
        (
            "proxy-revalidate, rule window kept",
            "http://b.test/rule/x",
            &[("cache-control", "proxy-revalidate")],
            store(11, 5, 0, rule_source(0)),
        ),
        (
            "window not a number",
            "http://b.test/f",
            &[("cache-control", "max-age=10, stale-if-error=x")],
            store(10, 2, 0, MaxAge),
        ),
        (
            "with surrogate-control",
            "http://b.test/f",
            &[
                ("surrogate-control", "max-age=20"),
                ("cache-control", "stale-while-revalidate=30"),
            ],
            store(20, 30, 3, SurrogateControl),
        ),
    ];
    let p = policy(true);
    for (what, text, pairs, want) in cases {
        let got = p.decide_for(&url(text), StatusCode::OK, &headers(pairs), NONE);
        assert_eq!(got, *want, "{what}");
    }
}

fn check(policy: &CachePolicy, cases: &[Case]) {
    for (what, text, status, pairs, credentials, want) in cases {
        let status = StatusCode::from_u16(*status).expect("test statuses are valid");
        let got = policy.decide_for(&url(text), status, &headers(pairs), *credentials);
        assert_eq!(got, *want, "{what}");
    }
}

#[test]
fn key_names_per_url() {
    // The key headers of the config and of the first rule that matches, and the headers the
    // proxy tells upstream, sorted; built once per policy, the same for every URL of a rule.
    let told = ["x-forwarded-host", "x-forwarded-proto"];
    let cases: &[(&str, &[&str])] = &[
        ("http://b.test/f", &["x-device"]),
        ("http://a.test/host/x", &["cookie", "x-device"]),
        (
            "http://b.test/auth/y",
            &["authorization", "cookie", "x-device"],
        ),
    ];
    let p = policy(false);
    for (text, want) in cases {
        let names = p.key_names(&url(text));
        let got: Vec<&str> = names.iter().map(HeaderName::as_str).collect();
        let mut want: Vec<&str> = want.iter().chain(&told).copied().collect();
        want.sort_unstable();
        assert_eq!(got, want, "{text}");
        let again = p.key_names(&url(&format!("{text}?q=1")));
        assert!(Arc::ptr_eq(names, again), "{text}: one list per rule");
    }
}

#[test]
fn vary_names_parsed() {
    let cases: &[(Pairs, Option<&[&str]>)] = &[
        (&[], Some(&[])),
        (&[("vary", "Accept-Language")], Some(&["accept-language"])),
        (
            &[("vary", "Accept-Encoding, accept-language")],
            Some(&["accept-language"]),
        ),
        (
            &[("vary", "User-Agent, accept-language, user-agent")],
            Some(&["accept-language", "user-agent"]),
        ),
        (&[("vary", "x-b"), ("vary", "x-a")], Some(&["x-a", "x-b"])),
        (&[("vary", " , ")], Some(&[])),
        (&[("vary", "*")], None),
        (&[("vary", "x-a, *")], None),
        (&[("vary", "a b")], None),
        (&[("vary", "a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,p,q")], None),
        (
            &[("vary", "a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,p")],
            Some(&[
                "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n", "o", "p",
            ]),
        ),
    ];
    for (pairs, want) in cases {
        let got = vary_names(&headers(pairs));
        let got: Option<Vec<&str>> = got
            .as_ref()
            .map(|names| names.iter().map(HeaderName::as_str).collect());
        assert_eq!(got.as_deref(), *want, "{pairs:?}");
    }
}
