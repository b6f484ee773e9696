//! Unit tests of the function library: every function's result, arities, and the bounds on
//! what functions build.

use super::*;
use crate::esi::eval::{Budget, Limits};
use crate::esi::expr::{parse_expr, Expr};
use crate::esi::vars::{Request, VarPolicy};

/// Evaluates `src` and returns its value as text (lists as `[a|b]` to see their items).
fn run(src: &str, req: &Request, budget: &Budget) -> Result<String, Bound> {
    let expr = parse_expr(src, 32).unwrap_or_else(|e| panic!("{src:?} should parse: {e}"));
    let policy = VarPolicy::default();
    let mut cx = Context::new(req, &policy, budget);
    cx.now = 784_111_777; // Sun, 06 Nov 1994 08:49:37 GMT
    let v = expr.value(&mut cx)?;
    Ok(show(&v))
}

fn show(v: &Value<'_>) -> String {
    match v {
        Value::List(items) => format!("[{}]", items.iter().map(show).collect::<Vec<_>>().join("|")),
        Value::Null => "null".to_owned(),
        other => other.text().into_owned(),
    }
}

#[test]
fn every_function() {
    let req = Request::new()
        .with_host("Shop.Example")
        .with_query("q=a%20b%2Bc&list=x,y,z");
    let budget = Budget::default();
    let cases: &[(&str, &str)] = &[
        ("$lower('AbC É')", "abc é"),
        ("$upper($(HTTP_HOST))", "SHOP.EXAMPLE"),
        ("$strip('  a b  ')", "a b"),
        ("$lstrip('  a  ')", "a  "),
        ("$rstrip('  a  ')", "  a"),
        ("$substr('abcdef', 2)", "cdef"),
        ("$substr('abcdef', 1, 3)", "bcd"),
        ("$substr('abcdef', -2)", "ef"),
        ("$substr('abcdef', 1, -1)", "bcde"),
        ("$substr('héllo', 1, 2)", "él"),
        ("$substr('abc', 10)", ""),
        ("$replace('a-b-c', '-', '+')", "a+b+c"),
        ("$replace('a-b-c', '-', '', 1)", "ab-c"),
        ("$replace('abc', '', 'x')", "abc"),
        ("$str(12)", "12"),
        ("$str(1.5)", "1.5"),
        ("$int('42')", "42"),
        ("$int('4.9')", "4"),
        ("$int('x')", "0"),
        ("$join(['a', 'b', 'c'], ', ')", "a, b, c"),
        (
            "$join($string_split($(QUERY_STRING{list}), ','), '/')",
            "x/y/z",
        ),
        ("$string_split('a b  c')", "[a|b|c]"),
        ("$string_split('a,b,c', ',', 1)", "[a|b,c]"),
        ("$string_split('a b c', '', 1)", "[a|b c]"),
        ("$len('héllo')", "5"),
        ("$len(['a', 'b'])", "2"),
        ("$len({'a': 1})", "1"),
        ("$len($(UNKNOWN))", "0"),
        ("$index('abcabc', 'c')", "2"),
        ("$rindex('abcabc', 'c')", "5"),
        ("$index('abc', 'z')", "-1"),
        ("$list_delitem(['a', 'b', 'c'], 1)", "[a|c]"),
        ("$list_delitem(['a', 'b', 'c'], -1)", "[a|b]"),
        ("$list_delitem(['a'], 5)", "[a]"),
        ("$exists($(HTTP_HOST))", "true"),
        ("$exists($(QUERY_STRING{nope}))", "false"),
        ("$exists($(QUERY_STRING{nope}|'d'))", "true"),
        ("$is_empty($(QUERY_STRING{nope}))", "true"),
        ("$is_empty('')", "true"),
        ("$is_empty([])", "true"),
        ("$is_empty({})", "true"),
        ("$is_empty('x')", "false"),
        (
            "$html_encode('<a href=\"x\">&</a>')",
            "&lt;a href=&quot;x&quot;&gt;&amp;&lt;/a&gt;",
        ),
        ("$html_decode('&lt;b&gt; &amp;amp; &#39;')", "<b> &amp; '"),
        ("$url_encode('a b/é')", "a%20b%2F%C3%A9"),
        ("$url_decode($(QUERY_STRING{q}))", "a b+c"),
        ("$base64_encode('hello')", "aGVsbG8="),
        ("$base64_encode('hi')", "aGk="),
        ("$base64_encode('')", ""),
        ("$base64_decode('aGVsbG8=')", "hello"),
        ("$base64_decode('aGk')", "hi"),
        ("$base64_decode('!!')", "null"),
        ("$digest_md5_hex('abc')", "900150983cd24fb0d6963f7d28e17f72"),
        (
            "$digest_md5('')",
            "[3649838548|78774415|2550759657|2118318316]",
        ),
        ("$time()", "784111777"),
        ("$http_time($time())", "Sun, 06 Nov 1994 08:49:37 GMT"),
        ("$http_time(0)", "Thu, 01 Jan 1970 00:00:00 GMT"),
        (
            "$strftime($time(), '%Y-%m-%d %H:%M:%S %j %A %B %p %%')",
            "1994-11-06 08:49:37 310 Sunday November AM %",
        ),
        ("$strftime(951782400, '%d %b %Y %a')", "29 Feb 2000 Tue"),
        ("$strftime(0, '%q')", "%q"),
        ("$dollar()", "$"),
        ("$dquote()", "\""),
        ("$squote()", "'"),
        ("$add_header('X-A', 'b')", "null"),
    ];
    for (src, want) in cases {
        assert_eq!(run(src, &req, &budget).as_deref(), Ok(*want), "src: {src}");
    }
}

#[test]
fn rand_stays_in_range_and_varies() {
    let req = Request::new();
    let budget = Budget::default();
    let policy = VarPolicy::default();
    let expr = parse_expr("$rand(10)", 8).expect("parses");
    let mut cx = Context::new(&req, &policy, &budget);
    let mut seen = std::collections::HashSet::new();
    for _ in 0..200 {
        let v = expr.value(&mut cx).expect("within bounds");
        let n = v.as_num().expect("a number");
        assert!((0.0..10.0).contains(&n) && n.fract() == 0.0, "{n}");
        seen.insert(n as i64);
    }
    assert!(seen.len() > 5, "{seen:?}");
}

#[test]
fn response_functions_record_effects_and_refuse_unsafe_values() {
    let req = Request::new();
    let budget = Budget::default();
    let policy = VarPolicy::default();
    let cases: &[(&str, Option<Effect>)] = &[
        (
            "$add_header('X-Tag', 'a b')",
            Some(Effect::AddHeader("X-Tag".into(), "a b".into())),
        ),
        ("$add_header('X Tag', 'a')", None),
        ("$add_header('X-Tag', 'a\r\nSet-Cookie: x')", None),
        (
            "$set_response_code(404)",
            Some(Effect::SetStatus(404, None)),
        ),
        (
            "$set_response_code(503, 'busy')",
            Some(Effect::SetStatus(503, Some("busy".into()))),
        ),
        ("$set_response_code(99)", None),
        ("$set_response_code('x')", None),
        (
            "$set_redirect('/login')",
            Some(Effect::Redirect("/login".into(), 302)),
        ),
        (
            "$set_redirect('/moved', 301)",
            Some(Effect::Redirect("/moved".into(), 301)),
        ),
        ("$set_redirect('/x', 200)", None),
        ("$set_redirect('/x\n')", None),
        ("$set_redirect('')", None),
    ];
    for (src, want) in cases {
        let expr = parse_expr(src, 8).expect("parses");
        let mut cx = Context::new(&req, &policy, &budget);
        expr.value(&mut cx).expect("within bounds");
        assert_eq!(cx.effects.first(), want.as_ref(), "src: {src}");
    }
}

#[test]
fn arity_is_checked_when_parsed() {
    let cases = [
        ("$lower()", "`$lower` takes 1 argument, found 0"),
        ("$lower('a', 'b')", "`$lower` takes 1 argument, found 2"),
        ("$substr('a')", "`$substr` takes 2 or 3 arguments, found 1"),
        ("$time(1)", "`$time` takes no arguments, found 1"),
        (
            "$string_split()",
            "`$string_split` takes 1 to 3 arguments, found 0",
        ),
        ("$lower", "`$lower` is a function: call it as `$lower(...)`"),
    ];
    for (src, want) in cases {
        let e = parse_expr(src, 8).expect_err(src);
        assert!(e.message.contains(want), "{src}: {e}");
        assert_eq!(e.offset, 0, "{src}: {e}");
    }
    // A name the library does not have is a call of a document-defined function: whether
    // the document defines it is checked where the expression stands (see `flow_tests`).
    assert!(matches!(parse_expr("$nope(1)", 8), Ok(Expr::User(..))));
    for name in Func::names() {
        assert_eq!(Func::from_name(name).map(Func::name), Some(name));
    }
}

#[test]
fn what_functions_build_is_bounded() {
    let req = Request::new().with_query(format!("big={}", "x".repeat(5000)));
    let limits = Limits {
        max_value_bytes: 10_000,
        max_list_items: 100,
        ..Limits::default()
    };
    let cases: &[(&str, Bound)] = &[
        (
            "$replace($(QUERY_STRING{big}), 'x', 'xyz')",
            Bound::ValueBytes,
        ),
        (
            "$join([$(QUERY_STRING{big}), $(QUERY_STRING{big}), $(QUERY_STRING{big})], '')",
            Bound::ValueBytes,
        ),
        (
            "$upper($join([$(QUERY_STRING{big}), $(QUERY_STRING{big}), 'a'], ''))",
            Bound::ValueBytes,
        ),
        ("$string_split($(QUERY_STRING{big}), 'x')", Bound::ListItems),
        ("$strftime(0, $(QUERY_STRING{big}))", Bound::ValueBytes),
    ];
    for (src, bound) in cases {
        let budget = Budget::new(limits);
        assert_eq!(run(src, &req, &budget), Err(*bound), "src: {src}");
        let hits = budget.hits();
        assert_eq!(hits.iter().map(|h| h.1).sum::<u64>(), 1, "{src}: {hits:?}");
    }
    // Within the bounds the same functions work.
    let budget = Budget::new(limits);
    assert_eq!(
        run(
            "$len($replace($(QUERY_STRING{big}), 'x', 'y'))",
            &req,
            &budget
        )
        .as_deref(),
        Ok("5000")
    );
}
