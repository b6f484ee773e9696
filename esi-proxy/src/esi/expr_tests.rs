//! Unit tests of the test-expression language: parsing, evaluation, bounds.

use super::*;
use crate::esi::vars::{Request, VarPolicy};
use proptest::prelude::*;

fn eval(s: &str, req: &Request) -> bool {
    parse_expr(s, 32)
        .unwrap_or_else(|e| panic!("{s:?} should parse: {e}"))
        .eval(req, &VarPolicy::default())
}

fn num(n: f64) -> Box<Expr> {
    Box::new(Expr::Num(n))
}

#[test]
fn spec_examples() {
    let req = Request::new();
    let cases = [
        ("!(1==1)", false),
        ("!('a'<='c')", false),
        ("(1==1)|('abc'=='def')", true),
        ("(4!=5)&(4==5)", false),
    ];
    for (input, want) in cases {
        assert_eq!(eval(input, &req), want, "input: {input}");
    }
}

#[test]
fn evaluation() {
    let req = Request::new()
        .with_host("example.com")
        .with_cookie("group=Advanced; zero=0; no=false; n=10")
        .with_query("n=10&s=abc&neg=-2.5&e=")
        .with_accept_language("en-US,fr;q=0");
    let cases = [
        ("$(HTTP_COOKIE{group})=='Advanced'", true),
        ("$(HTTP_COOKIE{group})=='advanced'", false),
        ("$(HTTP_COOKIE{group})!='Basic'", true),
        ("$(HTTP_HOST)=='example.com'", true),
        ("$(HTTP_HOST) == 'example.org'", false),
        ("$(QUERY_STRING{n}) > 5", true),
        ("$(QUERY_STRING{n}) > '9'", true),
        ("$(QUERY_STRING{n}) == 10.0", true),
        ("$(QUERY_STRING{n}) == $(HTTP_COOKIE{n})", true),
        ("$(QUERY_STRING{neg}) < -2", true),
        ("$(QUERY_STRING{neg}) >= -2.5", true),
        ("$(QUERY_STRING{s}) > 5", true),
        ("'10' > '9'", true),
        ("'10' < '9'", false),
        ("'abc' < 'abd'", true),
        ("'abc' >= 'abd'", false),
        ("'B' < 'a'", true),
        ("'a' < 'é'", true),
        ("1 == 1.0", true),
        ("1 <= 1", true),
        ("2 >= 3", false),
        ("'1e3' == 1000", true),
        ("'inf' == 'inf'", true),
        ("'inf' > 5", true),
        // An empty or undefined operand is '': equal to '' only, and never ordered.
        ("'' == ''", true),
        ("'' != ''", false),
        ("'' != 'x'", true),
        ("'x' == ''", false),
        ("$(QUERY_STRING{e}) == ''", true),
        ("$(QUERY_STRING{missing}) == ''", true),
        ("$(QUERY_STRING{n}) == ''", false),
        ("$(QUERY_STRING{n}) != ''", true),
        ("$(QUERY_STRING{e}) != 'x'", true),
        ("$(HTTP_COOKIE{missing}) != 'x'", true),
        ("$(HTTP_COOKIE{missing}) == $(HTTP_COOKIE{other})", true),
        ("$(HTTP_COOKIE{missing}) == 0", false),
        ("$(UNKNOWN) < 1", false),
        ("$(UNKNOWN) >= ''", false),
        ("'' <= ''", false),
        ("!($(UNKNOWN) == 'x')", true),
        ("$(HTTP_COOKIE{missing}|'x') == 'x'", true),
        // Operands in boolean position.
        ("$(HTTP_ACCEPT_LANGUAGE{en})", true),
        ("$(HTTP_ACCEPT_LANGUAGE{fr})", false),
        ("!$(HTTP_ACCEPT_LANGUAGE{de})", true),
        ("$(HTTP_COOKIE{group})", true),
        ("$(HTTP_COOKIE{zero})", false),
        ("$(HTTP_COOKIE{no})", false),
        ("!$(HTTP_COOKIE{x})", true),
        ("'x'", true),
        ("''", false),
        ("'false'", false),
        ("'0.0'", false),
        ("0", false),
        ("-1", true),
        // Precedence: `&` binds tighter than `|`; `!` tighter than comparisons.
        ("1==1 | 1==2 & 1==2", true),
        ("(1==1 | 1==2) & 1==2", false),
        ("1==2 & 1==2 | 1==1", true),
        ("!1==2", false),
        ("!1=='false'", true),
        ("!(1==2)", true),
        ("!!1", true),
        ("(1==1)==(2==2)", true),
        ("(1==1)=='true'", true),
        (" ( 1 == 1 ) ", true),
        ("'it\\'s' == 'it\\'s'", true),
        ("'a\\\\' < 'a\\\\b'", true),
    ];
    for (input, want) in cases {
        assert_eq!(eval(input, &req), want, "input: {input}");
    }
}

#[test]
fn parse_trees() {
    use Expr::*;
    let s = |v: &str| Box::new(Str(v.into()));
    let cmp = |op, a, b| Box::new(Cmp(op, a, b));
    let cases: Vec<(&str, Expr)> = vec![
        ("1", Num(1.0)),
        ("-2.5", Num(-2.5)),
        ("007", Num(7.0)),
        ("'a b'", Str("a b".into())),
        ("'it\\'s'", Str("it's".into())),
        ("'a\\\\b'", Str("a\\b".into())),
        ("'a\\nb'", Str("a\\nb".into())),
        ("'é'", Str("é".into())),
        (
            "$(HTTP_HOST)",
            Var(VarRef {
                name: crate::esi::vars::VarName::Host,
                key: None,
                default: None,
            }),
        ),
        ("1!=2", Cmp(CmpOp::Ne, num(1.0), num(2.0))),
        ("1<2", Cmp(CmpOp::Lt, num(1.0), num(2.0))),
        ("1<=2", Cmp(CmpOp::Le, num(1.0), num(2.0))),
        ("1>2", Cmp(CmpOp::Gt, num(1.0), num(2.0))),
        ("1>=2", Cmp(CmpOp::Ge, num(1.0), num(2.0))),
        ("!1==2", Cmp(CmpOp::Eq, Box::new(Not(num(1.0))), num(2.0))),
        ("!!1", Not(Box::new(Not(num(1.0))))),
        (
            "1==1 | 1==2 & 1==3",
            Or(
                cmp(CmpOp::Eq, num(1.0), num(1.0)),
                Box::new(And(
                    cmp(CmpOp::Eq, num(1.0), num(2.0)),
                    cmp(CmpOp::Eq, num(1.0), num(3.0)),
                )),
            ),
        ),
        ("'a'&'b'&'c'", And(Box::new(And(s("a"), s("b"))), s("c"))),
        ("'a'|'b'|'c'", Or(Box::new(Or(s("a"), s("b"))), s("c"))),
        ("('a'|'b')&'c'", And(Box::new(Or(s("a"), s("b"))), s("c"))),
        ("((('a')))", Str("a".into())),
    ];
    for (input, want) in cases {
        assert_eq!(parse_expr(input, 8), Ok(want), "input: {input}");
    }
}

#[test]
fn errors() {
    // (input, max_depth, offset, part of the message)
    let cases = [
        ("", 8, 0, "empty expression"),
        ("  \t ", 8, 0, "empty expression"),
        ("'abc", 8, 0, "unterminated string"),
        ("1 == 'abc\\'", 8, 5, "unterminated string"),
        ("1 # 2", 8, 2, "unexpected character '#'"),
        ("1 == é", 8, 5, "unexpected character 'é'"),
        ("1 = 2", 8, 2, "unexpected `=`"),
        ("-x", 8, 0, "unexpected `-`"),
        ("1.x", 8, 1, "unexpected character '.'"),
        ("abc", 8, 0, "bare word `abc`"),
        ("true", 8, 0, "bare word `true`"),
        ("1 == abc", 8, 5, "bare word `abc`"),
        ("$(1bad)", 8, 0, "malformed variable reference"),
        ("1 == $(HTTP_HOST", 8, 5, "malformed variable reference"),
        ("(1==1", 8, 5, "missing `)` to close the `(` at offset 0"),
        (
            "((1==1) 2",
            8,
            8,
            "missing `)` to close the `(` at offset 0, found a number",
        ),
        ("1==1)", 8, 4, "unexpected `)` after the expression"),
        ("1 2", 8, 2, "unexpected a number after the expression"),
        ("'a' 'b'", 8, 4, "unexpected a string after the expression"),
        ("1==1==1", 8, 4, "comparisons do not chain"),
        ("1 < 2 > 3", 8, 6, "comparisons do not chain"),
        ("&1", 8, 0, "expected an operand, found `&`"),
        (
            "1 &",
            8,
            3,
            "expected an operand, found the end of the expression",
        ),
        ("1 & | 2", 8, 4, "expected an operand, found `|`"),
        ("()", 8, 1, "expected an operand, found `)`"),
        ("1 == == 2", 8, 5, "expected an operand, found `==`"),
        ("!", 8, 1, "expected an operand, found the end"),
        ("(1)", 0, 0, "nesting deeper than 0 levels"),
        ("!1", 0, 0, "nesting deeper than 0 levels"),
        ("((1))", 1, 1, "nesting deeper than 1 levels"),
        ("(!1)", 1, 1, "nesting deeper than 1 levels"),
        ("!!1", 1, 1, "nesting deeper than 1 levels"),
    ];
    for (input, depth, offset, message) in cases {
        let got = parse_expr(input, depth);
        match &got {
            Err(e) => {
                assert_eq!(e.offset, offset, "input: {input:?}: {e}");
                assert!(e.message.contains(message), "input: {input:?}: {e}");
            }
            Ok(expr) => panic!("input {input:?} parsed as {expr:?}"),
        }
    }
    let e = parse_expr("1 == abc", 8).expect_err("bare word");
    assert_eq!(
        e.to_string(),
        "bare word `abc`: quote strings, as in 'abc' at offset 5"
    );
}

#[test]
fn depth_is_bounded() {
    let within = format!("{}1{}", "(".repeat(32), ")".repeat(32));
    assert_eq!(parse_expr(&within, 32), Ok(Expr::Num(1.0)));
    assert!(parse_expr(&within, 31).is_err());
    // 10,000 levels must fail fast, not overflow the stack, whatever max_depth says.
    for deep in [
        format!("{}1{}", "(".repeat(10_000), ")".repeat(10_000)),
        "(".repeat(10_000),
        format!("{}1", "!".repeat(10_000)),
        format!("{}1", "!(".repeat(10_000)),
    ] {
        for max_depth in [32, usize::MAX] {
            let e = parse_expr(&deep, max_depth).expect_err("too deep");
            assert!(e.message.contains("nesting deeper than"), "{e}");
            assert!(e.offset <= HARD_MAX_DEPTH * 2, "{e}");
        }
    }
}

#[test]
fn operator_count_is_bounded() {
    let req = Request::new();
    let chain = |n: usize| vec!["1==1"; n].join("&");
    // n comparisons joined by n-1 `&`: 2n-1 operators.
    let ok = chain(MAX_OPERATORS / 2);
    assert!(eval(&ok, &req));
    let e = parse_expr(&chain(100_000), 32).expect_err("too long");
    assert!(e.message.contains("operators"), "{e}");
}

#[test]
fn deepest_accepted_tree_evaluates_and_drops() {
    // The deepest tree the bounds allow: a left-deep chain of MAX_OPERATORS binary operators
    // whose leftmost operand is HARD_MAX_DEPTH nested `!`. Evaluating and dropping it recurse
    // on its depth, so this runs on the test thread's default (small) stack.
    let worst = format!(
        "{}1{}",
        "!".repeat(HARD_MAX_DEPTH),
        "|0".repeat(MAX_OPERATORS)
    );
    let expr = parse_expr(&worst, usize::MAX).expect("within the bounds");
    assert!(expr.eval(&Request::new(), &VarPolicy::default()));
    drop(expr);
    let over = format!("{}1", "!".repeat(HARD_MAX_DEPTH + 1));
    assert!(parse_expr(&over, usize::MAX).is_err());
    let over = format!("1{}", "|0".repeat(MAX_OPERATORS + 1));
    assert!(parse_expr(&over, usize::MAX).is_err());
}

proptest! {
    #[test]
    fn arbitrary_input_never_panics(s in any::<String>(), raw in proptest::collection::vec(any::<u8>(), 0..64)) {
        let req = Request::new().with_query(s.clone()).with_cookie(s.clone());
        for text in [s.clone(), String::from_utf8_lossy(&raw).into_owned()] {
            for depth in [0, 4, usize::MAX] {
                if let Ok(expr) = parse_expr(&text, depth) {
                    let _ = expr.eval(&req, &VarPolicy::default());
                }
            }
        }
    }

    #[test]
    fn expression_like_input_never_panics(
        s in "([()!&|<>=' $\\\\]|==|!=|<=|>=|-?[0-9]{1,3}(\\.[0-9])?|'[a-z]{0,3}'|\\$\\(QUERY_STRING\\{n\\}\\)|[a-z])*"
    ) {
        let req = Request::new().with_query("n=5");
        if let Ok(expr) = parse_expr(&s, 16) {
            let _ = expr.eval(&req, &VarPolicy::default());
        }
    }
}

#[test]
fn extension_parse_trees() {
    use Expr::*;
    let s = |v: &str| Str(v.into());
    let cases: Vec<(&str, Expr)> = vec![
        ("\"a\\\"b\"", s("a\"b")),
        ("'''a\\'b'''", s("a\\'b")),
        ("[]", List(vec![])),
        ("[1, 'a']", List(vec![Num(1.0), s("a")])),
        ("[[1], []]", List(vec![List(vec![Num(1.0)]), List(vec![])])),
        ("{}", Dict(vec![])),
        (
            "{'a': 1, 'b': [2]}",
            Dict(vec![(s("a"), Num(1.0)), (s("b"), List(vec![Num(2.0)]))]),
        ),
        ("$time()", Call(Func::Time, vec![])),
        (
            "$substr('abc', 1, 2)",
            Call(Func::Substr, vec![s("abc"), Num(1.0), Num(2.0)]),
        ),
        (
            "$lower($upper('a'))",
            Call(Func::Lower, vec![Call(Func::Upper, vec![s("a")])]),
        ),
        (
            "'ab' has 'a' & !('b' has_i 'B')",
            And(
                Box::new(Test(TestOp::Has, Box::new(s("ab")), Box::new(s("a")), None)),
                Box::new(Not(Box::new(Test(
                    TestOp::HasI,
                    Box::new(s("b")),
                    Box::new(s("B")),
                    None,
                )))),
            ),
        ),
    ];
    for (input, want) in cases {
        assert_eq!(parse_expr(input, 32), Ok(want), "input: {input}");
    }
    // A literal pattern is compiled when parsed; one from a value is not.
    match parse_expr("'a' matches_i 'A'", 8) {
        Ok(Test(TestOp::MatchesI, _, _, Some(p))) => assert!(p.0.is_match("a")),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        parse_expr("'a' matches $(HTTP_HOST)", 8),
        Ok(Test(TestOp::Matches, _, _, None))
    ));
}

#[test]
fn extension_errors() {
    // (input, offset, part of the message)
    let cases = [
        ("[1, 2", 5, "missing `]` to close the `[` at offset 0"),
        (
            "[1 2]",
            3,
            "missing `]` to close the `[` at offset 0, found a number",
        ),
        ("[1,]", 3, "expected an operand, found `]`"),
        ("{'a'}", 4, "expected `:` and a value"),
        ("{'a': }", 6, "expected an operand, found `}`"),
        ("{'a': 1", 7, "missing `}` to close the `{` at offset 0"),
        (
            "$lower('a'",
            10,
            "missing `)` to close the call at offset 0",
        ),
        (
            "(1, 2)",
            2,
            "missing `)` to close the `(` at offset 0, found `,`",
        ),
        ("1, 2", 1, "unexpected `,` after the expression"),
        ("'a' : 1", 4, "unexpected `:` after the expression"),
        (
            "[1)",
            2,
            "missing `]` to close the `[` at offset 0, found `)`",
        ),
        (
            "'a' has 'b' has 'c'",
            12,
            "`has` then `has`: comparisons do not chain",
        ),
        ("'a' == 'b' matches 'c'", 11, "`==` then `matches`"),
        ("'a' has", 7, "expected an operand, found the end"),
        ("has 'a'", 0, "expected an operand, found `has`"),
        ("'''abc", 0, "unterminated string"),
        ("\"abc", 0, "unterminated string"),
        ("$Lower('a')", 0, "malformed variable reference"),
        ("'a' matches '['", 12, "bad regular expression"),
    ];
    for (input, offset, message) in cases {
        match parse_expr(input, 8) {
            Err(e) => {
                assert_eq!(e.offset, offset, "input: {input:?}: {e}");
                assert!(e.message.contains(message), "input: {input:?}: {e}");
            }
            Ok(expr) => panic!("input {input:?} parsed as {expr:?}"),
        }
    }
    // Nesting through brackets counts like parentheses.
    assert!(parse_expr("[[[1]]]", 3).is_ok());
    assert!(parse_expr("[[[1]]]", 2).is_err());
    assert!(parse_expr("$lower($lower($lower('a')))", 2).is_err());
    let long = format!("[{}]", vec!["1"; MAX_OPERATORS + 2].join(","));
    assert!(parse_expr(&long, 8).is_err());
}
