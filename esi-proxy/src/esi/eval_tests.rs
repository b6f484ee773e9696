//! Unit tests of evaluation: literals, `has`/`matches` and their captures, the evaluation
//! budget, and the examples of other processors' documentation, in our own words.

use super::*;
use crate::esi::expr::parse_expr;
use proptest::prelude::*;

fn test_with(src: &str, req: &Request, budget: &Budget) -> (Result<bool, Bound>, Captures) {
    let expr = parse_expr(src, 32).unwrap_or_else(|e| panic!("{src:?} should parse: {e}"));
    let policy = VarPolicy::default();
    let mut cx = Context::new(req, &policy, budget);
    let got = expr.test(&mut cx);
    (got, std::mem::take(&mut cx.scope.matches))
}

fn holds(src: &str, req: &Request) -> bool {
    test_with(src, req, &Budget::default())
        .0
        .unwrap_or_else(|b| panic!("{src}: bound {b:?}"))
}

/// Tests written as the extension documents show them (Akamai's ESI developer guide and the
/// Fastly `esi` crate's README), each restated with a request that makes it meaningful.
#[test]
fn documented_examples() {
    let req = Request::new()
        .with_host("www.example.com")
        .with_query("lang=fr&page=3&name=Smith")
        .with_cookie("type=premium; visits=12")
        .with_user_agent("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X)")
        .with_referer("https://search.example/?q=shoes");
    let cases: &[(&str, bool)] = &[
        // Literals and comparisons.
        ("'premium' == $(HTTP_COOKIE{type})", true),
        (
            "$(QUERY_STRING{page}) >= 2 & $(QUERY_STRING{page}) < 10",
            true,
        ),
        ("\"double\" == 'double'", true),
        ("'''tri'ple''' == \"tri'ple\"", true),
        ("[1, 2, 3] has 2", true),
        ("['en', 'de'] has $(QUERY_STRING{lang})", false),
        ("{'fr': 'Bonjour', 'en': 'Hello'} has 'fr'", true),
        // has / has_i on strings.
        ("$(HTTP_USER_AGENT) has 'iPhone'", true),
        ("$(HTTP_USER_AGENT) has 'iphone'", false),
        ("$(HTTP_USER_AGENT) has_i 'IPHONE'", true),
        ("$(HTTP_REFERER) has 'search.example'", true),
        // matches / matches_i.
        ("$(HTTP_HOST) matches '''^www\\.(\\w+)\\.com$'''", true),
        ("$(HTTP_HOST) matches 'EXAMPLE'", false),
        ("$(HTTP_HOST) matches_i 'EXAMPLE'", true),
        ("$(QUERY_STRING{name}) matches '^[A-Z][a-z]+$'", true),
        (
            "$(HTTP_USER_AGENT) matches '''(iPhone|iPad|Android)'''",
            true,
        ),
        // A missing value: equal to '' and matching nothing non-empty.
        ("$(HTTP_COOKIE{missing}) == ''", true),
        ("$(HTTP_COOKIE{missing}) matches 'x'", false),
        // Functions inside tests.
        ("$lower($(QUERY_STRING{name})) == 'smith'", true),
        ("$len($(QUERY_STRING{name})) == 5", true),
        ("$int($(HTTP_COOKIE{visits})) > 10", true),
        (
            "$exists($(HTTP_COOKIE{type})) & !$is_empty($(HTTP_COOKIE{type}))",
            true,
        ),
        ("$string_split('a,b,c', ',') has 'b'", true),
        ("$url_encode('a b') == 'a%20b'", true),
    ];
    for (src, want) in cases {
        assert_eq!(holds(src, &req), *want, "src: {src}");
    }
}

#[test]
fn matches_sets_captures() {
    let req = Request::new().with_host("shop.example.com");
    let (got, caps) = test_with(
        "$(HTTP_HOST) matches '''^(?P<sub>\\w+)\\.(example)\\.com$''' & $(MATCHES{sub}) == 'shop' & $(MATCHES{2}) == 'example'",
        &req,
        &Budget::default(),
    );
    assert_eq!(got, Ok(true));
    assert_eq!(caps[0].1.as_deref(), Some("shop.example.com"));
    assert_eq!(caps[1], (Some("sub".into()), Some("shop".into())));
    // A failed match leaves the captures as they were; an absent one reads as missing.
    let (got, caps) = test_with(
        "$(HTTP_HOST) matches 'x(y)' | $(MATCHES{1}|'none') == 'none'",
        &req,
        &Budget::default(),
    );
    assert_eq!(got, Ok(true));
    assert!(caps.is_empty());
}

#[test]
fn a_pattern_from_a_variable_is_compiled_under_the_bound() {
    let big = format!("q=(a{{1000}}){{1000}}&ok={}", "%5Ba-c%5D%2B");
    let req = Request::new().with_query(big).with_host("abc");
    let budget = Budget::default();
    let (got, _) = test_with(
        "'aaa' matches $url_decode($(QUERY_STRING{q}))",
        &req,
        &budget,
    );
    assert_eq!(got, Err(Bound::PatternBytes));
    assert_eq!(budget.hits()[3], (Bound::PatternBytes, 1));
    let (got, _) = test_with(
        "$(HTTP_HOST) matches $url_decode($(QUERY_STRING{ok}))",
        &req,
        &Budget::default(),
    );
    assert_eq!(got, Ok(true));
    // A pattern that does not compile matches nothing.
    let (got, _) = test_with(
        "'a' matches $(HTTP_HOST|'(')",
        &Request::new(),
        &Budget::default(),
    );
    assert_eq!(got, Ok(false));
}

#[test]
fn literal_patterns_are_checked_when_parsed() {
    let e = parse_expr("'a' matches '('", 8).expect_err("bad pattern");
    assert!(e.message.contains("bad regular expression"), "{e}");
    assert_eq!(e.offset, 12);
    let e = parse_expr("'a' matches '(a{1000}){1000}'", 8).expect_err("too big");
    assert!(e.message.contains("larger than"), "{e}");
    // Backreferences and look-around need backtracking: the linear-time engine refuses them.
    assert!(parse_expr("'aa' matches '(a)\\1'", 8).is_err());
    assert!(parse_expr("'ab' matches 'a(?=b)'", 8).is_err());
}

#[test]
fn the_evaluation_budget_is_per_page_and_counted() {
    let req = Request::new().with_host("h");
    let budget = Budget::new(Limits {
        max_evaluations: 50,
        ..Limits::default()
    });
    let expr = parse_expr("$(HTTP_HOST) == 'h' & $lower('A') == 'a'", 8).expect("parses");
    let policy = VarPolicy::default();
    let mut passes = 0;
    loop {
        let mut cx = Context::new(&req, &policy, &budget);
        match expr.test(&mut cx) {
            Ok(true) => passes += 1,
            Ok(false) => panic!("the test holds"),
            Err(bound) => {
                assert_eq!(bound, Bound::Evaluations);
                break;
            }
        }
        assert!(passes < 100, "the budget must run out");
    }
    // 8 nodes per pass: 6 passes fit in 50.
    assert_eq!(passes, 6);
    assert_eq!(budget.hits()[0], (Bound::Evaluations, 1));
    // Once spent, every later evaluation of the page is refused at once (and counted).
    assert!(Expr::Num(1.0)
        .value(&mut Context::new(&req, &policy, &budget))
        .is_err());
    assert_eq!(budget.hits()[0], (Bound::Evaluations, 2));
}

#[test]
fn literals_evaluate_and_print() {
    let req = Request::new();
    let budget = Budget::default();
    let policy = VarPolicy::default();
    let cases: &[(&str, &str)] = &[
        ("42", "42"),
        ("-3", "-3"),
        ("2.5", "2.5"),
        ("'it\\'s'", "it's"),
        ("\"say \\\"hi\\\"\"", "say \"hi\""),
        ("'''a\\b'c'''", "a\\b'c"),
        ("[1, 'a', [2, 3]]", "1,a,2,3"),
        ("{'a': 1, 'b': [2]}", "a=1&b=2"),
        ("[]", ""),
        ("1 == 1", "true"),
    ];
    for (src, want) in cases {
        let expr = parse_expr(src, 8).unwrap_or_else(|e| panic!("{src}: {e}"));
        let mut cx = Context::new(&req, &policy, &budget);
        assert_eq!(
            expr.value(&mut cx).expect("bounded").text(),
            *want,
            "src: {src}"
        );
    }
}

proptest! {
    /// Random expressions over the whole grammar never panic and never spend more than the
    /// budget allows (a hit stops evaluation at once).
    #[test]
    fn random_expressions_never_panic_and_stay_within_bounds(
        parts in proptest::collection::vec(proptest::sample::select(vec![
            "$lower(", "$upper(", "$substr(", "$replace(", "$join(", "$string_split(", "$len(",
            "$index(", "$list_delitem(", "$exists(", "$html_decode(", "$url_decode(",
            "$base64_decode(", "$digest_md5(", "$strftime(", "$rand(", "$time()", "$add_header(",
            "[", "]", "{", "}", "(", ")", ",", ":", "'a'", "'''x'''", "\"y\"", "1", "-2", "1000",
            "$(HTTP_HOST)", "$(QUERY_STRING{q})", "$(MATCHES{1})", " has ", " has_i ",
            " matches ", " matches_i ", "'(a+)+'", " == ", " != ", " < ", " & ", " | ", "!",
        ]), 1..24)
    ) {
        let src: String = parts.concat();
        if let Ok(expr) = parse_expr(&src, 16) {
            let req = Request::new().with_host("a.example").with_query("q=aaaa");
            let limits = Limits { max_evaluations: 500, max_value_bytes: 4096, max_list_items: 64, max_pattern_bytes: 4096, ..Limits::default() };
            let budget = Budget::new(limits);
            let policy = VarPolicy::default();
            for _ in 0..3 {
                let mut cx = Context::new(&req, &policy, &budget);
                if let Ok(v) = expr.value(&mut cx) {
                    prop_assert!(v.text().len() <= 4096 * 64 + 64 * 2);
                }
            }
            // The counter may pass the limit by the one charge that hit it, never more.
            prop_assert!(budget.evaluations() <= 500 + 64 + 3 * 64);
        }
    }
}

#[test]
fn assignments_set_variables_items_and_stay_bounded() {
    use crate::esi::{parse, ParseOptions};
    let doc = concat!(
        "<esi:assign name=\"colors\" value=\"['red', 'green']\"/>",
        "<esi:assign name=\"colors{1}\" value=\"'blue'\"/>",
        "<esi:assign name=\"colors{2}\" value=\"'black'\"/>",
        "<esi:assign name=\"colors{9}\" value=\"'never'\"/>",
        "<esi:assign name=\"greet\" value=\"{'fr': 'Bonjour'}\"/>",
        "<esi:assign name=\"greet{'en'}\" value=\"'Hello'\"/>",
        "<esi:assign name=\"host\" value=\"$upper($(HTTP_HOST))\"/>",
        "<esi:assign name=\"n\">$len($(colors))</esi:assign>",
    );
    let t = parse(
        bytes::Bytes::from_static(doc.as_bytes()),
        &ParseOptions::strict(),
    )
    .expect("valid");
    let req = Request::new().with_host("shop");
    let policy = VarPolicy::default();
    let budget = Budget::default();
    let mut cx = Context::new(&req, &policy, &budget);
    for node in &t.nodes {
        let crate::esi::Node::Assign(a) = node else {
            panic!("{node:?}")
        };
        // Each evaluation's borrows end with it: the scope keeps owned values.
        let mut inner = Context::new(&req, &policy, &budget);
        inner.scope = std::mem::take(&mut cx.scope);
        assign(a, &mut inner).expect("within bounds");
        cx.scope = std::mem::take(&mut inner.scope);
    }
    let read = |src: &str, cx: &Context<'_>| {
        let (var, _) = crate::esi::vars::parse_var_ref(src.as_bytes()).expect("a reference");
        cx.var(&var).text().into_owned()
    };
    let cases = [
        ("$(colors)", "red,blue,black"),
        ("$(colors{0})", "red"),
        ("$(colors{-1})", "black"),
        ("$(colors{5}|'none')", "none"),
        ("$(greet{fr})", "Bonjour"),
        ("$(greet{en})", "Hello"),
        ("$(host)", "SHOP"),
        ("$(n)", "3"),
        ("$(unset|'d')", "d"),
    ];
    for (src, want) in cases {
        assert_eq!(read(src, &cx), want, "{src}");
    }
    // Variables per document are bounded like list items.
    let small = Budget::new(Limits {
        max_list_items: 2,
        ..Limits::default()
    });
    let mut cx = Context::new(&req, &policy, &small);
    let mut results = Vec::new();
    for node in &t.nodes {
        if let crate::esi::Node::Assign(a) = node {
            let mut inner = Context::new(&req, &policy, &small);
            inner.scope = std::mem::take(&mut cx.scope);
            results.push(assign(a, &mut inner));
            cx.scope = std::mem::take(&mut inner.scope);
        }
    }
    assert!(results.contains(&Err(Bound::ListItems)), "{results:?}");
    assert!(cx.scope.assigned.len() <= 2);
}
