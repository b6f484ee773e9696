//! Unit tests of variables: parsing, policies, rendering into pages and URLs.

use super::*;
use proptest::prelude::*;

fn var(s: &str) -> VarRef {
    parse_var_ref(s.as_bytes())
        .expect("test reference is well-formed")
        .0
}

fn r(name: VarName, key: Option<&str>, default: Option<&str>) -> VarRef {
    VarRef {
        name,
        key: key.map(Box::from),
        default: default.map(Box::from),
    }
}

#[test]
fn parse_var_ref_forms() {
    use VarName::*;
    let cases: &[(&str, VarRef, usize)] = &[
        ("$(HTTP_HOST)", r(Host, None, None), 12),
        ("$(HTTP_HOST)tail", r(Host, None, None), 12),
        ("$(HTTP_REFERER)", r(Referer, None, None), 15),
        ("$(HTTP_USER_AGENT{os})", r(UserAgent, Some("os"), None), 22),
        (
            "$(HTTP_ACCEPT_LANGUAGE{en-US})",
            r(AcceptLanguage, Some("en-US"), None),
            30,
        ),
        ("$(HTTP_COOKIE{id})", r(Cookie, Some("id"), None), 18),
        ("$(HTTP_COOKIE{'a b'})", r(Cookie, Some("a b"), None), 21),
        ("$(HTTP_COOKIE{'}'})", r(Cookie, Some("}"), None), 19),
        ("$(QUERY_STRING)", r(QueryString, None, None), 15),
        (
            "$(QUERY_STRING{id}|'x')",
            r(QueryString, Some("id"), Some("x")),
            23,
        ),
        (
            "$(QUERY_STRING{id}|x y)",
            r(QueryString, Some("id"), Some("x y")),
            23,
        ),
        (
            "$(QUERY_STRING|'a)b')",
            r(QueryString, None, Some("a)b")),
            21,
        ),
        (
            "$(QUERY_STRING|'it$(x')",
            r(QueryString, None, Some("it$(x")),
            23,
        ),
        ("$(HTTP_HOST|)", r(Host, None, Some("")), 13),
        ("$(HTTP_HOST|'')", r(Host, None, Some("")), 15),
        ("$(HTTP_HOST{k}|d)", r(Host, Some("k"), Some("d")), 17),
        ("$(FOO_1)", r(Unknown("FOO_1".into()), None, None), 8),
        ("$(_X)", r(Unknown("_X".into()), None, None), 5),
        (
            "$(HTTP_COOKIE{naïve}|café)",
            r(Cookie, Some("naïve"), Some("café")),
            28,
        ),
    ];
    for (input, want, len) in cases {
        let got = parse_var_ref(input.as_bytes());
        assert_eq!(got, Some((want.clone(), *len)), "input: {input}");
    }
}

#[test]
fn parse_var_ref_malformed() {
    let cases = [
        "",
        "$",
        "$(",
        "$()",
        "(HTTP_HOST)",
        "$ (HTTP_HOST)",
        "$(1host)",
        "$(1A)",
        "$(HTTP_HOST",
        "$(HTTP_HOST }",
        "$(HTTP_HOST{})",
        "$(HTTP_HOST{''})",
        "$(HTTP_HOST{a b})",
        "$(HTTP_HOST{a)",
        "$(HTTP_HOST{'a})",
        "$(HTTP_HOST{'a'x})",
        "$(HTTP_HOST{a}x)",
        "$(HTTP_HOST |x)",
        "$(HTTP_HOST| a(b)",
        "$(HTTP_HOST|a$b)",
        "$(HTTP_HOST|it's)",
        "$(HTTP_HOST|'x'y)",
        "$(HTTP_HOST|'unterminated)",
        "$(HTTP_HOST|no close",
    ];
    for input in cases {
        assert_eq!(parse_var_ref(input.as_bytes()), None, "input: {input:?}");
    }
    assert_eq!(parse_var_ref(b"$(HTTP_HOST|\xff)"), None, "invalid UTF-8");
}

#[test]
fn parse_var_ref_length_bound() {
    let fits = format!("$(HTTP_HOST|'{}')", "a".repeat(MAX_REF_BYTES - 15));
    assert_eq!(fits.len(), MAX_REF_BYTES);
    assert!(parse_var_ref(fits.as_bytes()).is_some());
    let long = format!("$(HTTP_HOST|'{}')", "a".repeat(MAX_REF_BYTES));
    assert_eq!(parse_var_ref(long.as_bytes()), None);
    assert_eq!(VarString::parse(&long).as_constant(), Some(long.as_str()));
}

#[test]
fn var_string_parse_and_display() {
    // (input, segments as "L:text" / "V:source", display)
    let cases: &[(&str, &[&str], &str)] = &[
        ("", &[], ""),
        ("/plain", &["L:/plain"], "/plain"),
        (
            "/p?id=$(QUERY_STRING{id}|'x')",
            &["L:/p?id=", "V:$(QUERY_STRING{id}|'x')"],
            "/p?id=$(QUERY_STRING{id}|'x')",
        ),
        (
            "/p?id=$(QUERY_STRING{id}|x)",
            &["L:/p?id=", "V:$(QUERY_STRING{id}|'x')"],
            "/p?id=$(QUERY_STRING{id}|'x')",
        ),
        (
            "$(HTTP_HOST)$(HTTP_REFERER)",
            &["V:$(HTTP_HOST)", "V:$(HTTP_REFERER)"],
            "$(HTTP_HOST)$(HTTP_REFERER)",
        ),
        ("cost: $5 $(", &["L:cost: $5 $("], "cost: $5 $("),
        ("$(lower) x", &["L:$(lower) x"], "$(lower) x"),
        (
            "$($(HTTP_HOST))",
            &["L:$(", "V:$(HTTP_HOST)", "L:)"],
            "$($(HTTP_HOST))",
        ),
        (
            "a$(HTTP_HOST{k)$(HTTP_HOST)b",
            &["L:a$(HTTP_HOST{k)", "V:$(HTTP_HOST)", "L:b"],
            "a$(HTTP_HOST{k)$(HTTP_HOST)b",
        ),
        (
            "$(HTTP_COOKIE{'a b'}|x y)",
            &["V:$(HTTP_COOKIE{'a b'}|'x y')"],
            "$(HTTP_COOKIE{'a b'}|'x y')",
        ),
        (
            "$(HTTP_COOKIE{a}|it's)",
            &["L:$(HTTP_COOKIE{a}|it's)"],
            "$(HTTP_COOKIE{a}|it's)",
        ),
        (
            "é$(HTTP_HOST)é",
            &["L:é", "V:$(HTTP_HOST)", "L:é"],
            "é$(HTTP_HOST)é",
        ),
    ];
    for (input, want, display) in cases {
        let vs = VarString::parse(input);
        let got: Vec<String> = vs
            .segments
            .iter()
            .map(|s| match s {
                Segment::Literal(t) => format!("L:{t}"),
                Segment::Var(v) => format!("V:{v}"),
            })
            .collect();
        assert_eq!(got, *want, "input: {input}");
        assert_eq!(vs.to_string(), *display, "input: {input}");
        assert_eq!(VarString::parse(&vs.to_string()), vs, "round trip: {input}");
        let has_var = want.iter().any(|s| s.starts_with("V:"));
        assert_eq!(vs.as_constant().is_none(), has_var, "input: {input}");
        assert_eq!(
            vs.vars().count(),
            want.iter().filter(|s| s.starts_with("V:")).count()
        );
    }
    assert_eq!(VarString::parse("").as_constant(), Some(""));
    assert_eq!(VarString::parse("/a$b").as_constant(), Some("/a$b"));
}

#[test]
fn split_vars_segments() {
    let cases: &[(&str, Option<&[&str]>)] = &[
        ("", None),
        ("no variables here", None),
        ("price $5, $( and $(lower)", None),
        ("$(HTTP_HOST)", Some(&["V:HTTP_HOST"])),
        (
            "Hi $(HTTP_COOKIE{name}|'you')!",
            Some(&["L:Hi ", "V:HTTP_COOKIE", "L:!"]),
        ),
        (
            "$(X$(HTTP_HOST)$(QUERY_STRING)",
            Some(&["L:$(X", "V:HTTP_HOST", "V:QUERY_STRING"]),
        ),
    ];
    for (input, want) in cases {
        let got = split_vars(&Bytes::copy_from_slice(input.as_bytes())).map(|segs| {
            segs.iter()
                .map(|s| match s {
                    Segment::Literal(b) => format!("L:{}", String::from_utf8_lossy(b)),
                    Segment::Var(v) => format!("V:{}", v.name.as_str()),
                })
                .collect::<Vec<_>>()
        });
        let want = want.map(|w| w.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(got, want, "input: {input}");
    }
}

#[test]
fn split_vars_is_zero_copy() {
    let text = Bytes::from_static(b"<p>Hello $(HTTP_COOKIE{name}), from $(HTTP_HOST).</p>");
    let range = text.as_ptr_range();
    let segments = split_vars(&text).expect("text holds variables");
    let mut literals = 0;
    for seg in &segments {
        if let Segment::Literal(b) = seg {
            let r = b.as_ptr_range();
            assert!(
                range.start <= r.start && r.end <= range.end,
                "literal copied: {b:?}"
            );
            literals += 1;
        }
    }
    assert_eq!(literals, 3);
}

#[test]
fn request_values() {
    let req = Request::new()
        .with_host("example.com")
        .with_referer("https://ref.example/")
        .with_query("a=1&b=x+y%21&c&a=2&e=%E2%82%AC&bad=%ff%zz&k%5B%5D=arr&empty=")
        .with_cookie("id=42;  group = Advanced ; empty=")
        .with_cookie("id=shadowed; last=1")
        .with_user_agent("curl/8.4.0")
        .with_accept_language("en-US, fr;q=0.5");
    let policy = VarPolicy::default();
    let cases: &[(&str, &str)] = &[
        ("$(HTTP_HOST)", "example.com"),
        ("$(HTTP_HOST{ignored})", "example.com"),
        ("$(HTTP_REFERER)", "https://ref.example/"),
        ("$(HTTP_COOKIE{id})", "42"),
        ("$(HTTP_COOKIE{group})", "Advanced"),
        ("$(HTTP_COOKIE{last})", "1"),
        ("$(HTTP_COOKIE{ID})", ""),
        ("$(HTTP_COOKIE{missing}|'dflt')", "dflt"),
        ("$(HTTP_COOKIE{empty}|dflt)", "dflt"),
        ("$(HTTP_COOKIE)", ""),
        ("$(HTTP_COOKIE|hidden)", "hidden"),
        (
            "$(QUERY_STRING)",
            "a=1&b=x+y%21&c&a=2&e=%E2%82%AC&bad=%ff%zz&k%5B%5D=arr&empty=",
        ),
        ("$(QUERY_STRING{a})", "1"),
        ("$(QUERY_STRING{A})", ""),
        ("$(QUERY_STRING{b})", "x+y%21"),
        ("$(QUERY_STRING{c})", ""),
        ("$(QUERY_STRING{c}|'none')", "none"),
        ("$(QUERY_STRING{e})", "%E2%82%AC"),
        ("$(QUERY_STRING{bad})", "%ff%zz"),
        ("$(QUERY_STRING{k[]})", "arr"),
        ("$(QUERY_STRING{empty}|d)", "d"),
        ("$(QUERY_STRING{nope})", ""),
        ("$(HTTP_ACCEPT_LANGUAGE)", "en-US, fr;q=0.5"),
        ("$(HTTP_ACCEPT_LANGUAGE{en})", "true"),
        ("$(HTTP_ACCEPT_LANGUAGE{de}|'x')", "false"),
        ("$(HTTP_USER_AGENT)", "curl/8.4.0"),
        ("$(HTTP_USER_AGENT{browser})", "OTHER"),
        ("$(HTTP_USER_AGENT{nope}|d)", "d"),
        ("$(UNKNOWN_VAR)", ""),
        ("$(UNKNOWN_VAR|'d')", "d"),
    ];
    for (src, want) in cases {
        assert_eq!(req.value(&var(src), &policy), *want, "var: {src}");
    }
}

#[test]
fn missing_headers_give_defaults() {
    let req = Request::new();
    let policy = VarPolicy {
        whole_cookie_header: true,
        ..VarPolicy::default()
    };
    let cases: &[(&str, &str)] = &[
        ("$(HTTP_HOST)", ""),
        ("$(HTTP_HOST|h)", "h"),
        ("$(HTTP_COOKIE|c)", "c"),
        ("$(HTTP_COOKIE{a}|c)", "c"),
        ("$(QUERY_STRING|q)", "q"),
        ("$(QUERY_STRING{a}|q)", "q"),
        ("$(HTTP_REFERER|r)", "r"),
        ("$(HTTP_USER_AGENT|u)", "u"),
        ("$(HTTP_USER_AGENT{browser}|u)", "OTHER"),
        ("$(HTTP_USER_AGENT{os}|u)", "OTHER"),
        ("$(HTTP_USER_AGENT{version}|u)", "u"),
        ("$(HTTP_ACCEPT_LANGUAGE|l)", "l"),
        ("$(HTTP_ACCEPT_LANGUAGE{en}|l)", "false"),
    ];
    for (src, want) in cases {
        assert_eq!(req.value(&var(src), &policy), *want, "var: {src}");
    }
}

#[test]
fn cookie_policy() {
    let req = Request::new().with_cookie("session=s3cr3t; group=gold; theme=dark");
    let only = CookieAccess::Only(vec!["group".into(), "theme".into()]);
    // (policy cookies, whole header, var, want)
    let cases: &[(&CookieAccess, bool, &str, &str)] = &[
        (
            &CookieAccess::All,
            false,
            "$(HTTP_COOKIE{session})",
            "s3cr3t",
        ),
        (&CookieAccess::All, false, "$(HTTP_COOKIE)", ""),
        (&CookieAccess::All, false, "$(HTTP_COOKIE|none)", "none"),
        (
            &CookieAccess::All,
            true,
            "$(HTTP_COOKIE)",
            "session=s3cr3t; group=gold; theme=dark",
        ),
        (&only, false, "$(HTTP_COOKIE{group})", "gold"),
        (&only, false, "$(HTTP_COOKIE{theme})", "dark"),
        (&only, false, "$(HTTP_COOKIE{session})", ""),
        (&only, false, "$(HTTP_COOKIE{session}|'no')", "no"),
        (&only, false, "$(HTTP_COOKIE{GROUP})", ""),
        (
            &CookieAccess::Only(vec![]),
            false,
            "$(HTTP_COOKIE{group})",
            "",
        ),
    ];
    for (cookies, whole, src, want) in cases {
        let policy = VarPolicy {
            cookies: (*cookies).clone(),
            whole_cookie_header: *whole,
            raw_output: false,
            headers: HeaderAccess::All,
        };
        assert_eq!(
            req.value(&var(src), &policy),
            *want,
            "var: {src}, {policy:?}"
        );
    }
}

/// What an untrusted document reads: no cookie by any route, whatever the page's policy
/// allows; other variables and escaping as they were.
#[test]
fn policy_without_credentials() {
    let req = Request::new()
        .with_cookie("session=s3cr3t; group=gold")
        .with_host("shop.example")
        .with_query("q=a b");
    let open = VarPolicy {
        cookies: CookieAccess::All,
        whole_cookie_header: true,
        raw_output: true,
        headers: HeaderAccess::All,
    };
    let closed = open.without_credentials(&[]);
    assert!(closed.raw_output, "escaping is kept");
    let cases: &[(&str, &str, &str)] = &[
        ("$(HTTP_COOKIE{session})", "s3cr3t", ""),
        ("$(HTTP_COOKIE{group}|'none')", "gold", "none"),
        ("$(HTTP_COOKIE)", "session=s3cr3t; group=gold", ""),
        ("$(HTTP_HOST)", "shop.example", "shop.example"),
        ("$(QUERY_STRING{q})", "a b", "a b"),
    ];
    for (src, with, without) in cases {
        assert_eq!(req.value(&var(src), &open), *with, "var: {src}");
        assert_eq!(req.value(&var(src), &closed), *without, "var: {src}");
    }
}

#[test]
fn user_agents() {
    // (User-Agent, browser, os, version)
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "Mozilla/4.0 (compatible; MSIE 6.0; Windows NT 5.1; SV1)",
            "MSIE",
            "WIN",
            "6.0",
        ),
        (
            "Mozilla/4.0 (compatible; MSIE 8.0; Windows NT 6.1; Trident/4.0)",
            "MSIE",
            "WIN",
            "8.0",
        ),
        (
            "Mozilla/5.0 (Windows NT 10.0; WOW64; Trident/7.0; rv:11.0) like Gecko",
            "MSIE",
            "WIN",
            "11.0",
        ),
        (
            "Mozilla/4.0 (compatible; MSIE 5.23; Mac_PowerPC)",
            "MSIE",
            "MAC",
            "5.23",
        ),
        (
            "Mozilla/5.0 (X11; Linux x86_64; rv:109.0) Gecko/20100101 Firefox/115.0",
            "MOZILLA",
            "UNIX",
            "5.0",
        ),
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) \
             Chrome/120.0.0.0 Safari/537.36",
            "MOZILLA",
            "WIN",
            "5.0",
        ),
        (
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like \
             Gecko) Version/17.1 Safari/605.1.15",
            "MOZILLA",
            "MAC",
            "5.0",
        ),
        (
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 \
             (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1",
            "MOZILLA",
            "MAC",
            "5.0",
        ),
        (
            "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) \
             Chrome/120.0.0.0 Mobile Safari/537.36",
            "MOZILLA",
            "UNIX",
            "5.0",
        ),
        (
            "Mozilla/5.0 (X11; FreeBSD amd64; rv:120.0) Gecko/20100101 Firefox/120.0",
            "MOZILLA",
            "UNIX",
            "5.0",
        ),
        (
            "Opera/9.80 (Windows NT 6.1; U; en) Presto/2.10.289 Version/12.00",
            "OTHER",
            "WIN",
            "9.80",
        ),
        ("curl/8.4.0", "OTHER", "OTHER", "8.4.0"),
        (
            "Googlebot/2.1 (+http://www.google.com/bot.html)",
            "OTHER",
            "OTHER",
            "2.1",
        ),
        (
            "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
            "MOZILLA",
            "OTHER",
            "5.0",
        ),
        ("", "OTHER", "OTHER", ""),
        ("just words", "OTHER", "OTHER", ""),
    ];
    let policy = VarPolicy::default();
    let (b, o, v) = (
        var("$(HTTP_USER_AGENT{browser})"),
        var("$(HTTP_USER_AGENT{os})"),
        var("$(HTTP_USER_AGENT{version})"),
    );
    for (ua, browser, os, version) in cases {
        let req = Request::new().with_user_agent(*ua);
        let got = (
            req.value(&b, &policy),
            req.value(&o, &policy),
            req.value(&v, &policy),
        );
        assert_eq!(
            got,
            ((*browser).into(), (*os).into(), (*version).into()),
            "UA: {ua}"
        );
    }
}

#[test]
fn accept_language() {
    // (header, key, listed)
    let cases: &[(&str, &str, bool)] = &[
        ("en-US,en;q=0.9,fr;q=0.8", "en", true),
        ("en-US,en;q=0.9,fr;q=0.8", "fr", true),
        ("en-US,en;q=0.9,fr;q=0.8", "de", false),
        ("en-US", "en", true),
        ("en-US", "en-us", true),
        ("en-US", "EN-US", true),
        ("en", "en-us", false),
        ("eng", "en", false),
        ("da, en-gb;q=0.8, en;q=0.7", "en-GB", true),
        ("fr;q=0, en", "fr", false),
        ("fr; q=0.0, en", "fr", false),
        ("fr;Q=0.000", "fr", false),
        ("fr;q=0.001", "fr", true),
        ("fr;q=junk", "fr", true),
        ("*", "en", false),
        ("*;q=0.5", "en", false),
        ("", "en", false),
        (" , ;, en ", "en", true),
    ];
    let policy = VarPolicy::default();
    for (header, key, listed) in cases {
        let req = Request::new().with_accept_language(*header);
        let v = VarRef {
            name: VarName::AcceptLanguage,
            key: Some((*key).into()),
            default: Some("ignored".into()),
        };
        let want = if *listed { "true" } else { "false" };
        assert_eq!(req.value(&v, &policy), want, "header {header:?}, key {key}");
    }
    let req = Request::new()
        .with_accept_language("de")
        .with_accept_language("en;q=0.5");
    assert_eq!(
        req.value(&var("$(HTTP_ACCEPT_LANGUAGE{en})"), &policy),
        "true"
    );
    assert_eq!(
        req.value(&var("$(HTTP_ACCEPT_LANGUAGE)"), &policy),
        "de, en;q=0.5"
    );
}

#[test]
fn render_url_encoding() {
    let req = Request::new()
        .with_host("example.com")
        .with_query("id=a b&x=1+2%20&q=/?#")
        .with_cookie("name=J. Doe/<x>; emoji=é");
    let policy = VarPolicy::default();
    let cases: &[(&str, &str)] = &[
        ("/static.html", "/static.html"),
        ("", ""),
        ("/f?h=$(HTTP_HOST)", "/f?h=example.com"),
        ("/f?$(QUERY_STRING)", "/f?id=a%20b&x=1+2%20&q=%2F%3F%23"),
        ("/f?id=$(QUERY_STRING{id})", "/f?id=a%20b"),
        ("/f?x=$(QUERY_STRING{x})", "/f?x=1+2%20"),
        ("/f/$(HTTP_COOKIE{name})", "/f/J.%20Doe%2F%3Cx%3E"),
        ("/f/$(HTTP_COOKIE{emoji})", "/f/%C3%A9"),
        ("/f/$(HTTP_COOKIE{none}|'a&b')", "/f/a%26b"),
        ("/f/$(HTTP_COOKIE{none}|-._~)", "/f/-._~"),
        ("/é/$(UNKNOWN)", "/é/"),
    ];
    for (src, want) in cases {
        let got = render_url(&VarString::parse(src), &req, &policy);
        assert_eq!(got.as_deref(), Ok(*want), "src: {src}");
    }
}

/// Trust-boundaries issue: `/svc/users/$(HTTP_COOKIE{uid})/card` with `uid=..` rendered
/// `/svc/users/../card`, which resolves to `/svc/card`.
#[test]
fn render_url_dot_segments() {
    let req = Request::new()
        .with_cookie("up=..; here=.; enc=%2e%2E; dots=...; a=a/..; dot1=.")
        .with_query("p=..&q=%2e");
    let raw = VarPolicy {
        raw_output: true,
        ..VarPolicy::default()
    };
    let escaped = VarPolicy::default();
    // (src, policy, Ok(rendered) or Err(()))
    let cases: &[(&str, &VarPolicy, Result<&str, ()>)] = &[
        ("/svc/users/$(HTTP_COOKIE{up})/card", &escaped, Err(())),
        ("/svc/users/$(HTTP_COOKIE{up})", &escaped, Err(())),
        ("$(HTTP_COOKIE{up})/card", &escaped, Err(())),
        ("/svc/users/$(HTTP_COOKIE{here})/card", &escaped, Err(())),
        ("/svc/.$(HTTP_COOKIE{dot1})/card", &escaped, Err(())),
        (
            "/svc/$(HTTP_COOKIE{dot1})$(HTTP_COOKIE{dot1})/c",
            &escaped,
            Err(()),
        ),
        ("/svc/$(QUERY_STRING{p})/card", &escaped, Err(())),
        ("/svc/$(HTTP_COOKIE{none}|'..')/card", &escaped, Err(())),
        ("/svc/$(HTTP_COOKIE{up})/card", &raw, Err(())),
        ("/svc/$(HTTP_COOKIE{a})/card", &raw, Err(())),
        ("/svc/$(HTTP_COOKIE{enc})/card", &raw, Err(())),
        (
            "/svc/$(QUERY_STRING)/card",
            &escaped,
            Ok("/svc/p=..&q=%2e/card"),
        ),
        // `%` of a value is encoded, so `%2e` in a value stays a literal `%2e`.
        (
            "/svc/$(HTTP_COOKIE{enc})/card",
            &escaped,
            Ok("/svc/%252e%252E/card"),
        ),
        (
            "/svc/$(HTTP_COOKIE{dots})/card",
            &escaped,
            Ok("/svc/.../card"),
        ),
        (
            "/svc/x$(HTTP_COOKIE{up})/card",
            &escaped,
            Ok("/svc/x../card"),
        ),
        (
            "/svc/$(HTTP_COOKIE{a})/card",
            &escaped,
            Ok("/svc/a%2F../card"),
        ),
        (
            "/svc/card?u=$(HTTP_COOKIE{up})",
            &escaped,
            Ok("/svc/card?u=.."),
        ),
        ("/svc/card#$(HTTP_COOKIE{up})", &escaped, Ok("/svc/card#..")),
        // Dot segments the template writes itself are its own business.
        ("../card/$(HTTP_COOKIE{dots})", &escaped, Ok("../card/...")),
        (
            "/svc/./$(HTTP_COOKIE{none})/card",
            &escaped,
            Ok("/svc/.//card"),
        ),
    ];
    for (src, policy, want) in cases {
        let got = render_url(&VarString::parse(src), &req, policy);
        match want {
            Ok(want) => assert_eq!(got.as_deref(), Ok(*want), "src: {src}"),
            Err(()) => assert!(
                matches!(got, Err(VarError::DotSegment(_))),
                "src: {src}: {got:?}"
            ),
        }
    }
}

#[test]
fn render_url_refusal() {
    let req = Request::new()
        .with_cookie("sp=a b; nl=a\nb; cr=x\r\nHost: evil; ok=fine")
        .with_query("q=%0d%0a");
    let raw = VarPolicy {
        raw_output: true,
        ..VarPolicy::default()
    };
    let escaped = VarPolicy::default();
    // (src, policy, Ok(rendered) or Err(())
    let cases: &[(&str, &VarPolicy, Result<&str, ()>)] = &[
        ("/f/$(HTTP_COOKIE{sp})", &raw, Err(())),
        ("/f/$(HTTP_COOKIE{nl})", &raw, Err(())),
        ("/f/$(HTTP_COOKIE{cr})", &raw, Err(())),
        ("/f/$(HTTP_COOKIE{ok})", &raw, Ok("/f/fine")),
        // A query value is used as sent, still encoded: it cannot split the request.
        ("/f/$(QUERY_STRING{q})", &raw, Ok("/f/%0d%0a")),
        ("/f/$(HTTP_COOKIE{sp})", &escaped, Ok("/f/a%20b")),
        (
            "/f/$(HTTP_COOKIE{cr})",
            &escaped,
            Ok("/f/x%0D%0AHost%3A%20evil"),
        ),
        ("/f/$(QUERY_STRING{q})", &escaped, Ok("/f/%0d%0a")),
        ("/f/\tx", &escaped, Err(())),
        ("/f x", &escaped, Err(())),
        ("/f\u{7f}", &escaped, Err(())),
        ("/f\0", &escaped, Err(())),
        ("/f\u{1b}", &raw, Err(())),
    ];
    for (src, policy, want) in cases {
        let got = render_url(&VarString::parse(src), &req, policy);
        match want {
            Ok(w) => assert_eq!(got.as_deref(), Ok(*w), "src: {src:?}"),
            Err(()) => assert!(
                matches!(got, Err(VarError::UnsafeUrl(_))),
                "src: {src:?} gave {got:?}"
            ),
        }
    }
}

#[test]
fn render_html_escaping() {
    let req = Request::new().with_cookie(r#"n=<b>"Tom" & 'Jerry'</b>"#);
    let text = Bytes::from_static(b"<p a='1'>Hi $(HTTP_COOKIE{n}) & $(HTTP_HOST|'<guest>')</p>");
    let segments = split_vars(&text).expect("text holds variables");
    let raw = VarPolicy {
        raw_output: true,
        ..VarPolicy::default()
    };
    let cases: &[(&VarPolicy, &str)] = &[
        (
            &VarPolicy::default(),
            "<p a='1'>Hi &lt;b&gt;&quot;Tom&quot; &amp; &#39;Jerry&#39;&lt;/b&gt; & \
             &lt;guest&gt;</p>",
        ),
        (&raw, r#"<p a='1'>Hi <b>"Tom" & 'Jerry'</b> & <guest></p>"#),
    ];
    for (policy, want) in cases {
        let mut out = b"prefix:".to_vec();
        render_html(&segments, &req, policy, &mut out);
        assert_eq!(String::from_utf8_lossy(&out), format!("prefix:{want}"));
    }
}

#[test]
fn escape_html_table() {
    let cases = [
        ("", ""),
        ("plain", "plain"),
        ("a&b", "a&amp;b"),
        ("<>\"'&", "&lt;&gt;&quot;&#39;&amp;"),
        ("é<é", "é&lt;é"),
    ];
    for (input, want) in cases {
        let mut out = Vec::new();
        escape_html(input, &mut out);
        assert_eq!(String::from_utf8_lossy(&out), want, "input: {input}");
    }
}

proptest! {
    #[test]
    fn arbitrary_text_never_panics(s in any::<String>(), raw in proptest::collection::vec(any::<u8>(), 0..64)) {
        for text in [s.clone(), String::from_utf8_lossy(&raw).into_owned()] {
            let vs = VarString::parse(&text);
            prop_assert_eq!(VarString::parse(&vs.to_string()), vs.clone());
            let _ = split_vars(&Bytes::from(text.clone()));
            let _ = render_url(&vs, &Request::new().with_query(text.clone()), &VarPolicy::default());
        }
        let _ = split_vars(&Bytes::from(raw.clone()));
        let _ = parse_var_ref(&raw);
    }

    #[test]
    fn text_without_references_is_literal(s in "[^$]*") {
        prop_assert!(split_vars(&Bytes::from(s.clone())).is_none());
        let vs = VarString::parse(&s);
        prop_assert_eq!(vs.as_constant(), Some(s.as_str()));
    }

    #[test]
    fn reference_like_text_round_trips(s in "(\\$\\(|[A-Z_]{1,3}|[{}|')]|'[a-z ]*'|[a-z ]{1,3})*") {
        let vs = VarString::parse(&s);
        prop_assert_eq!(VarString::parse(&vs.to_string()), vs.clone());
        let joined = match split_vars(&Bytes::from(s.clone())) {
            None => { prop_assert!(vs.as_constant().is_some()); return Ok(()); }
            Some(segs) => segs,
        };
        prop_assert_eq!(joined.len(), vs.segments.len());
    }
}

/// Lower-case names are variables a document assigns: in text and attributes they count only
/// once assigned, so `$(document)` in a script stays literal.
#[test]
fn lower_case_names_count_only_once_assigned() {
    let text = Bytes::from_static(b"$(document).ready(); $(colors{0}) $(HTTP_HOST)");
    let none = split_vars(&text).expect("HTTP_HOST is a reference");
    let names: Vec<String> = none
        .iter()
        .filter_map(|s| match s {
            Segment::Var(v) => Some(v.name.as_str().to_owned()),
            Segment::Literal(_) => None,
        })
        .collect();
    assert_eq!(names, vec!["HTTP_HOST"]);
    let some = split_vars_in(&text, &|n| n == "colors").expect("references");
    let names: Vec<String> = some
        .iter()
        .filter_map(|s| match s {
            Segment::Var(v) => Some(v.to_string()),
            Segment::Literal(_) => None,
        })
        .collect();
    assert_eq!(names, vec!["$(colors{0})", "$(HTTP_HOST)"]);
    assert_eq!(VarString::parse("/a/$(x)").as_constant(), Some("/a/$(x)"));
    assert_eq!(
        VarString::parse_in("/a/$(x)", &|n| n == "x").as_constant(),
        None
    );
}

#[test]
fn request_method_path_and_remote_addr() {
    let req = Request::new()
        .with_method("POST")
        .with_path("/a b/c")
        .with_remote_addr("192.0.2.7");
    let policy = VarPolicy::default();
    let cases = [
        ("$(REQUEST_METHOD)", "POST"),
        ("$(REQUEST_PATH)", "/a b/c"),
        ("$(REMOTE_ADDR)", "192.0.2.7"),
        ("$(REQUEST_METHOD{x}|'d')", "POST"),
    ];
    for (src, want) in cases {
        assert_eq!(req.value(&var(src), &policy), want, "{src}");
        assert_eq!(var(src).to_string(), src, "round trip");
    }
    assert_eq!(
        Request::new().value(&var("$(REMOTE_ADDR|'none')"), &policy),
        "none"
    );
    assert_eq!(
        render_url(&VarString::parse("/f?p=$(REQUEST_PATH)"), &req, &policy).as_deref(),
        Ok("/f?p=%2Fa%20b%2Fc")
    );
}

fn headers(pairs: &[(&str, &str)]) -> Arc<http::HeaderMap> {
    let mut map = http::HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            http::HeaderName::from_bytes(name.as_bytes()).expect("test names are valid"),
            http::HeaderValue::from_str(value).expect("test values are valid"),
        );
    }
    Arc::new(map)
}

/// `$(HTTP_<NAME>)` reads any header the policy allows: `_` as `-`, any case, several values
/// joined; credentials only when listed by name; `Cookie` never (it is `HTTP_COOKIE`'s); the
/// ESI 1.0 names keep their meaning.
#[test]
fn any_header_by_name_under_the_policy() {
    let req = Request::new()
        .with_accept_language("de")
        .with_headers(headers(&[
            ("x-device", "mobile"),
            ("accept", "text/html"),
            ("accept", "application/json"),
            ("authorization", "Bearer s3cr3t"),
            ("cookie", "sid=1"),
            ("accept-language", "fr"),
        ]));
    let all = VarPolicy::default();
    let listed = VarPolicy {
        headers: HeaderAccess::Only(vec![
            "x-device".into(),
            "authorization".into(),
            "cookie".into(),
        ]),
        ..VarPolicy::default()
    };
    // (reference, with All, with the list)
    let cases: &[(&str, &str, &str)] = &[
        ("$(HTTP_X_DEVICE)", "mobile", "mobile"),
        ("$(HTTP_ACCEPT)", "text/html, application/json", ""),
        ("$(HTTP_ACCEPT|'*/*')", "text/html, application/json", "*/*"),
        ("$(HTTP_AUTHORIZATION)", "", "Bearer s3cr3t"),
        ("$(HTTP_PROXY_AUTHORIZATION)", "", ""),
        ("$(HTTP_MISSING|'none')", "none", "none"),
        // ESI 1.0's own variable, not the header map: `with_accept_language` answers.
        ("$(HTTP_ACCEPT_LANGUAGE)", "de", "de"),
    ];
    for (src, with_all, with_list) in cases {
        assert_eq!(req.value(&var(src), &all), *with_all, "{src} under All");
        assert_eq!(
            req.value(&var(src), &listed),
            *with_list,
            "{src} under the list"
        );
    }
    // `HTTP_COOKIE` stays the cookie variable; the header path never reads Cookie.
    assert!(!HeaderAccess::Only(vec!["cookie".into()]).allows("cookie"));
    assert!(!HeaderAccess::All.allows("authorization"));
    assert_eq!(header_name("HTTP_X_FORWARDED_FOR"), "x-forwarded-for");
}

/// Reading a credential header marks the page as holding the visitor's credentials, as a
/// cookie does; an ordinary header does not.
#[test]
fn reading_a_credential_header_is_noted() {
    let req = Request::new().with_headers(headers(&[
        ("x-device", "mobile"),
        ("authorization", "Bearer t"),
    ]));
    let listed = VarPolicy {
        headers: HeaderAccess::Only(vec!["x-device".into(), "authorization".into()]),
        ..VarPolicy::default()
    };
    assert_eq!(req.value(&var("$(HTTP_X_DEVICE)"), &listed), "mobile");
    assert!(!req.cookie_read());
    assert_eq!(
        req.value(&var("$(HTTP_AUTHORIZATION)"), &listed),
        "Bearer t"
    );
    assert!(req.cookie_read());
}

/// An untrusted document reads only the headers every fragment host is sent anyway, never a
/// credential, whatever the page's policy lists.
#[test]
fn untrusted_documents_read_only_shared_headers() {
    let req = Request::new().with_headers(headers(&[
        ("x-device", "mobile"),
        ("x-api-key", "k3y"),
        ("authorization", "Bearer t"),
    ]));
    let open = VarPolicy {
        headers: HeaderAccess::Only(vec![
            "x-device".into(),
            "x-api-key".into(),
            "authorization".into(),
        ]),
        ..VarPolicy::default()
    };
    let shared = ["x-device".to_owned(), "authorization".to_owned()];
    let closed = open.without_credentials(&shared);
    assert_eq!(req.value(&var("$(HTTP_X_DEVICE)"), &closed), "mobile");
    assert_eq!(req.value(&var("$(HTTP_X_API_KEY)"), &closed), "");
    assert_eq!(req.value(&var("$(HTTP_AUTHORIZATION)"), &closed), "");
    assert!(!req.cookie_read());
}
