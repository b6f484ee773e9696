//! Unit tests of the parser: each construct, each problem in strict mode, each lenient outcome,
//! and the reference render.

use bytes::Bytes;

use super::*;
use crate::esi::ast::{Node, OnError, Template};
use crate::esi::vars::{Request, Segment, VarPolicy};

/// A compact picture of a template: text as is, ESI in braces.
fn show(nodes: &[Node]) -> String {
    let mut s = String::new();
    for n in nodes {
        match n {
            Node::Text(b) => s.push_str(&String::from_utf8_lossy(b)),
            Node::Vars(segs) => {
                s.push_str("{vars ");
                for seg in segs {
                    match seg {
                        Segment::Literal(b) => s.push_str(&String::from_utf8_lossy(b)),
                        Segment::Var(v) => s.push_str(&format!("<{:?}>", v.name)),
                    }
                }
                s.push('}');
            }
            Node::Include(inc) => {
                s.push_str(&format!("{{inc {}", inc.src));
                if let Some(alt) = &inc.alt {
                    s.push_str(&format!(" alt={alt}"));
                }
                if inc.onerror == OnError::Continue {
                    s.push_str(" continue");
                }
                s.push('}');
            }
            Node::Try { attempt, except } => {
                s.push_str(&format!("{{try {} | {}}}", show(attempt), show(except)));
            }
            Node::Foreach(f) => s.push_str(&format!("{{foreach {} {}}}", f.item, show(&f.body))),
            Node::Function(f) => s.push_str(&format!("{{function {} {}}}", f.name, show(&f.body))),
            Node::Break => s.push_str("{break}"),
            Node::Return(r) => s.push_str(&format!("{{return {}}}", r.source)),
            Node::Eval(inc) => s.push_str(&format!("{{eval {}}}", inc.src)),
            Node::Assign(a) => {
                let key = a
                    .key
                    .as_deref()
                    .map(|k| format!("[{k}]"))
                    .unwrap_or_default();
                s.push_str(&format!("{{set {}{key}={}}}", a.name, a.source));
            }
            Node::Choose { whens, otherwise } => {
                s.push_str("{choose");
                for w in whens {
                    let ok = if w.test.is_some() { "" } else { "!bad" };
                    s.push_str(&format!(" when[{}{ok}]:{}", w.source, show(&w.body)));
                }
                if let Some(o) = otherwise {
                    s.push_str(&format!(" otherwise:{}", show(o)));
                }
                s.push('}');
            }
            Node::Inline {
                name,
                fetchable,
                body,
            } => {
                s.push_str(&format!("{{inline {name} {fetchable}:{}}}", show(body)));
            }
        }
    }
    s
}

fn strict(input: &str) -> Result<Template, ParseError> {
    parse(
        Bytes::copy_from_slice(input.as_bytes()),
        &ParseOptions::strict(),
    )
}

fn lenient(input: &str) -> Template {
    parse(
        Bytes::copy_from_slice(input.as_bytes()),
        &ParseOptions::default(),
    )
    .expect("lenient never fails")
}

#[test]
fn constructs() {
    let cases = [
        ("<esi:include src=\"/a\"/>", "{inc /a}"),
        ("<esi:include src='/a' />", "{inc /a}"),
        ("<esi:include src=/a />", "{inc /a}"),
        ("<esi:include src=\"/a\"></esi:include>", "{inc /a}"),
        ("<esi:include src=\"/a\">\n </esi:include>", "{inc /a}"),
        ("<esi:include src=\"/a?x=1&amp;y=2\"/>", "{inc /a?x=1&y=2}"),
        ("<esi:include src=\"/a?x=1&y=2&#38;z=&#x33;\"/>", "{inc /a?x=1&y=2&z=3}"),
        ("<esi:include src=\"/a\" alt=\"/b\" onerror=\"continue\"/>", "{inc /a alt=/b continue}"),
        ("<esi:include SRC=\"/a\" maxwait=\"50\"/>", "{inc /a}"),
        ("<esi:include src=\"/p?id=$(QUERY_STRING{id})\"/>", "{inc /p?id=$(QUERY_STRING{id})}"),
        ("a<esi:remove><esi:include src=\"/x\"/> b</esi:remove>c", "ac"),
        ("a<esi:remove/>c", "ac"),
        ("a<esi:comment text=\"hi\"/>c", "ac"),
        ("a<esi:comment text=\"hi\">dropped</esi:comment>c", "ac"),
        ("a<!--esi <p>b</p> -->c", "a <p>b</p> c"),
        ("<!--esi\n<esi:include src=\"/a\"/>\n-->", "\n{inc /a}\n"),
        ("<!-- <esi:include src=\"/a\"/> -->", "<!-- <esi:include src=\"/a\"/> -->"),
        ("<![CDATA[<esi:include src=\"/a\"/>]]>", "<![CDATA[<esi:include src=\"/a\"/>]]>"),
        ("<script>if(a<b&&c)x('<esi:include src=\"/a\"/>')</script>", "<script>if(a<b&&c)x('{inc /a}')</script>"),
        (
            "<esi:try> <esi:attempt>A<esi:include src=\"/a\"/></esi:attempt>\n<esi:except>E</esi:except> </esi:try>",
            "{try A{inc /a} | E}",
        ),
        (
            "<esi:try><esi:attempt><esi:try><esi:attempt>1</esi:attempt><esi:except>2</esi:except></esi:try></esi:attempt><esi:except>3</esi:except></esi:try>",
            "{try {try 1 | 2} | 3}",
        ),
        (
            "<esi:choose>\n <esi:when test=\"1==1\">A</esi:when>\n <esi:when test=\"2==2\">B</esi:when>\n <esi:otherwise>C</esi:otherwise>\n</esi:choose>",
            "{choose when[1==1]:A when[2==2]:B otherwise:C}",
        ),
        ("<esi:choose><esi:when test=\"$(A) > 1\"></esi:when></esi:choose>", "{choose when[$(A) > 1]:}"),
        ("<esi:choose><esi:when test=\"'a>b' == 'a>b'\">x</esi:when></esi:choose>", "{choose when['a>b' == 'a>b']:x}"),
        ("<esi:vars>Hi $(HTTP_COOKIE{name})!</esi:vars>", "{vars Hi <Cookie>!}"),
        ("<esi:vars>no vars here</esi:vars>", "no vars here"),
        ("$(HTTP_HOST) outside vars", "$(HTTP_HOST) outside vars"),
        ("<esi:inline name=\"/f\" fetchable=\"yes\">x</esi:inline>", "{inline /f true:x}"),
        ("\u{feff}<p>bom</p>", "\u{feff}<p>bom</p>"),
        ("<img src=x alt=<esi> <e s i:>", "<img src=x alt=<esi> <e s i:>"),
    ];
    for (input, want) in cases {
        let t = strict(input).unwrap_or_else(|e| panic!("input {input:?}: {e}"));
        assert_eq!(show(&t.nodes), want, "input: {input:?}");
    }
}

#[test]
fn invalid_utf8_and_binary_pass_through() {
    let input = Bytes::from_static(b"\xff\xfe<p>\x00\x80</p><esi:include src=\"/a\"/>\xc3");
    let t = parse(input, &ParseOptions::strict()).expect("parses");
    let Node::Text(first) = &t.nodes[0] else {
        panic!("{:?}", t.nodes)
    };
    assert_eq!(&first[..], b"\xff\xfe<p>\x00\x80</p>");
    let Node::Text(last) = &t.nodes[2] else {
        panic!("{:?}", t.nodes)
    };
    assert_eq!(&last[..], b"\xc3");
}

#[test]
fn strict_mode_errors_carry_line_and_column() {
    let cases = [
        (
            "<esi:try><esi:attempt>x</esi:attempt><esi:except>y</esi:except>",
            1,
            1,
            "<esi:try> is not closed",
        ),
        (
            "ab\n  <esi:choose><esi:when test=\"1\">",
            2,
            15,
            "<esi:when> is not closed",
        ),
        ("</esi:try>", 1, 1, "</esi:try> has no matching start tag"),
        (
            "<esi:try><esi:attempt></esi:try>",
            1,
            23,
            "</esi:try> while <esi:attempt> is still open",
        ),
        ("x<esi:foo a=1/>", 1, 2, "unknown element <esi:foo>"),
        ("</esi:bar>", 1, 1, "unknown element <esi:bar>"),
        (
            "<esi:include alt=\"/a\"/>",
            1,
            1,
            "<esi:include> without src",
        ),
        ("<esi:include src=\"\"/>", 1, 1, "<esi:include> without src"),
        (
            "<esi:when test=\"1==1\">x</esi:when>",
            1,
            1,
            "<esi:when> is not allowed outside <esi:choose>",
        ),
        (
            "<esi:otherwise>x</esi:otherwise>",
            1,
            1,
            "<esi:otherwise> is not allowed outside <esi:choose>",
        ),
        (
            "<esi:attempt>x</esi:attempt>",
            1,
            1,
            "<esi:attempt> is not allowed outside <esi:try>",
        ),
        (
            "<esi:choose><esi:when test=\"1==\">x</esi:when></esi:choose>",
            1,
            13,
            "bad test expression",
        ),
        (
            "<esi:choose><esi:when>x</esi:when></esi:choose>",
            1,
            13,
            "<esi:when> without test",
        ),
        (
            "<esi:choose><esi:include src=\"/a\"/></esi:choose>",
            1,
            13,
            "not allowed directly inside <esi:choose>",
        ),
        (
            "<esi:try>text<esi:attempt/><esi:except/></esi:try>",
            1,
            1,
            "text directly inside <esi:try>",
        ),
        (
            "<esi:try><esi:attempt>x</esi:attempt></esi:try>",
            1,
            1,
            "<esi:try> without <esi:except>",
        ),
        (
            "<esi:choose></esi:choose>",
            1,
            1,
            "<esi:choose> without <esi:when>",
        ),
        (
            "<esi:choose><esi:otherwise/><esi:when test=\"1\"/></esi:choose>",
            1,
            29,
            "<esi:when> is not allowed after <esi:otherwise>",
        ),
        ("x\n<esi:include src=\"/a\"", 2, 1, "ESI tag not terminated"),
        ("<esi:remove>x", 1, 1, "<esi:remove> is not closed"),
        ("<!--esi x", 1, 1, "<!--esi is not closed"),
        (
            "<esi:include src=\"/a\">x",
            1,
            1,
            "<esi:include> is not closed",
        ),
        (
            "<esi:include src=\"/a\" src=\"/b\"/>",
            1,
            1,
            "bad attributes",
        ),
    ];
    for (input, line, col, want) in cases {
        let err = strict(input).expect_err(input);
        assert!(err.to_string().contains(want), "input {input:?}: got {err}");
        assert_eq!((err.line, err.col), (line, col), "input {input:?}: {err}");
    }
}

#[test]
fn nesting_is_bounded() {
    let deep = "<esi:vars>".repeat(40) + &"</esi:vars>".repeat(40);
    let err = strict(&deep).expect_err("too deep");
    assert_eq!(err.problem, Problem::TooDeep(32));
    assert_eq!((err.line, err.col), (1, 32 * 10 + 1));
    // Lenient: the element past the bound is dropped with its content; no panic, no recursion.
    let deep = "<esi:try><esi:attempt>".repeat(5000) + "x";
    let t = lenient(&deep);
    assert!(t.problem_count > 0);
}

#[test]
fn lenient_outcomes() {
    let cases = [
        // Unknown elements: markup dropped, content kept, counted.
        ("a<esi:foo x=1>b</esi:foo>c", "abc", 2),
        ("a</esi:try>b", "ab", 1),
        // Mismatched end: inner elements closed first.
        ("<esi:try><esi:attempt>x</esi:try>y", "{try x | }y", 2),
        // Unclosed at end of input: closed there.
        ("<esi:choose><esi:when test=\"1==1\">x", "{choose when[1==1]:x}", 2),
        ("a<esi:remove>x", "a", 1),
        ("a<!--esi b", "a<!--esi b", 1),
        ("a<esi:text><esi:include src=\"/x\"/>", "a<esi:include src=\"/x\"/>", 1),
        ("a<esi:text/>b</esi:text>c", "abc", 1),
        (
            "<esi:choose><esi:when test=\"1\" matchname=\"HTTP_HOST\">x</esi:when></esi:choose>",
            "{choose when[1]:x}",
            1,
        ),
        (
            "<esi:choose><esi:when test=\"1\" matchname=\"m\">x</esi:when></esi:choose>",
            "{choose when[1]:x}",
            0,
        ),
        ("a<!--esi <esi:include src=\"/x\"/>", "a<!--esi <esi:include src=\"/x\"/>", 1),
        ("<esi:include/>x", "x", 1),
        ("<esi:include src=\"/a\" onerror=\"stop\"/>", "{inc /a}", 0),
        // Misplaced elements dropped with their content.
        ("a<esi:when test=\"1\">b<esi:include src=\"/x\"/></esi:when>c", "ac", 1),
        ("<esi:try><esi:attempt>1</esi:attempt><esi:attempt>2</esi:attempt><esi:except>3</esi:except></esi:try>", "{try 1 | 3}", 1),
        ("<esi:choose><esi:when test=\"1==\">x</esi:when><esi:otherwise>o</esi:otherwise></esi:choose>", "{choose when[1==!bad]:x otherwise:o}", 1),
        ("<esi:choose>junk<esi:when test=\"1\">x</esi:when></esi:choose>", "{choose when[1]:x}", 1),
        ("<esi:include src=\"/a\">x", "{inc /a}x", 1),
        ("<esi:include src=\"/a\"", "<esi:include src=\"/a\"", 1),
    ];
    for (input, want, problems) in cases {
        let t = lenient(input);
        assert_eq!(show(&t.nodes), want, "input: {input:?}");
        assert_eq!(
            t.problem_count, problems,
            "input: {input:?}: {:?}",
            t.diagnostics
        );
    }
}

#[test]
fn warnings_do_not_fail_strict_mode() {
    let t = strict(
        "<esi:remove><esi:include src=\"/a\"/></esi:remove><esi:include src=\"/b\" onerror=\"x\"/>",
    )
    .expect("warnings only");
    let problems: Vec<_> = t.diagnostics.iter().map(|d| d.problem.clone()).collect();
    assert_eq!(
        problems,
        vec![Problem::EsiInsideRemove, Problem::BadOnError("x".into())]
    );
    assert_eq!(t.problem_count, 0);
}

#[test]
fn literal_runs_are_slices_of_the_input() {
    let input = Bytes::from_static(b"<p>head</p><esi:include src=\"/a\"/><p>tail</p>");
    let t = parse(input.clone(), &ParseOptions::strict()).expect("parses");
    let range = input.as_ptr() as usize..input.as_ptr() as usize + input.len();
    for node in &t.nodes {
        if let Node::Text(b) = node {
            assert!(range.contains(&(b.as_ptr() as usize)), "{b:?} was copied");
        }
    }
}

#[test]
fn events_stream_before_the_input_ends() {
    let mut parser = Parser::new(ParseOptions::strict());
    let mut out = Vec::new();
    parser
        .feed(
            Bytes::from_static(b"<p>a</p><esi:include src=\"/x\"/><esi:include src=\"/y"),
            &mut out,
        )
        .expect("ok");
    assert!(
        matches!(out.as_slice(), [Event::Text(_), Event::Include(_)]),
        "{out:?}"
    );
    parser
        .feed(Bytes::from_static(b"\"/>tail"), &mut out)
        .expect("ok");
    assert_eq!(out.len(), 4, "{out:?}");
    parser.finish(&mut out).expect("ok");
}

#[test]
fn chunk_splits_give_the_same_template() {
    let input =
        "<p>x</p><esi:vars>Hi $(HTTP_COOKIE{name}) and $(QUERY_STRING{q}|'none')</esi:vars>\
                 <esi:try><esi:attempt><esi:include src=\"/a\" alt=\"/b\"/></esi:attempt>\
                 <esi:except><!--esi <esi:include src=\"/c\"/> --></esi:except></esi:try>";
    let whole = show(&strict(input).expect("parses").nodes);
    for cut in 0..=input.len() {
        let mut parser = Parser::new(ParseOptions::strict());
        let mut events = Vec::new();
        parser
            .feed(
                Bytes::copy_from_slice(&input.as_bytes()[..cut]),
                &mut events,
            )
            .expect("ok");
        parser
            .feed(
                Bytes::copy_from_slice(&input.as_bytes()[cut..]),
                &mut events,
            )
            .expect("ok");
        parser.finish(&mut events).expect("ok");
        let mut b = TemplateBuilder::default();
        for e in events {
            b.push(e);
        }
        assert_eq!(show(&b.finish().nodes), whole, "cut at {cut}");
    }
}

#[test]
fn render_applies_fallbacks_and_branches() {
    let req = Request::new()
        .with_cookie("group=Advanced; name=<Ann>")
        .with_query("id=7");
    let policy = VarPolicy::default();
    let cases = [
        ("<esi:include src=\"/ok\"/>", Some("OK")),
        ("<esi:include src=\"/down\" alt=\"/ok\"/>", Some("OK")),
        ("a<esi:include src=\"/down\" onerror=\"continue\"/>b", Some("ab")),
        ("<esi:include src=\"/down\"/>", None),
        (
            "<esi:try><esi:attempt>A<esi:include src=\"/down\"/></esi:attempt><esi:except>E</esi:except></esi:try>",
            Some("E"),
        ),
        (
            "<esi:try><esi:attempt>A<esi:include src=\"/ok\"/></esi:attempt><esi:except>E</esi:except></esi:try>",
            Some("AOK"),
        ),
        (
            "<esi:choose><esi:when test=\"$(HTTP_COOKIE{group})=='Advanced'\">adv</esi:when><esi:otherwise>basic</esi:otherwise></esi:choose>",
            Some("adv"),
        ),
        (
            "<esi:choose><esi:when test=\"$(HTTP_COOKIE{group})=='Basic'\">b</esi:when><esi:otherwise>o</esi:otherwise></esi:choose>",
            Some("o"),
        ),
        ("<esi:vars>Hi $(HTTP_COOKIE{name})</esi:vars>", Some("Hi &lt;Ann&gt;")),
        ("<esi:include src=\"/echo?id=$(QUERY_STRING{id})\"/>", Some("/echo?id=7")),
    ];
    for (input, want) in cases {
        let t = strict(input).expect(input);
        let mut out = Vec::new();
        let mut fetch = |url: &str| -> Option<Bytes> {
            match url {
                "/ok" => Some(Bytes::from_static(b"OK")),
                u if u.starts_with("/echo") => Some(Bytes::copy_from_slice(u.as_bytes())),
                _ => None,
            }
        };
        let got = t
            .render(&req, &policy, &mut fetch, &mut out)
            .ok()
            .map(|()| String::from_utf8_lossy(&out).into_owned());
        assert_eq!(got.as_deref(), want, "input: {input:?}");
    }
}

#[test]
fn entities_decode() {
    let cases = [
        ("a&amp;b", "a&b"),
        ("&lt;&gt;&quot;&apos;", "<>\"'"),
        ("&#65;&#x42;&#X43;", "ABC"),
        ("x=1&y=2", "x=1&y=2"),
        ("&nbsp;", "\u{a0}"),
        ("&bogus;", "&bogus;"),
        ("&#xffffffff;", "&#xffffffff;"),
        ("&", "&"),
    ];
    for (input, want) in cases {
        assert_eq!(decode_entities(input), want, "input: {input:?}");
    }
}

#[test]
fn assign_forms_and_misuse() {
    // (input, shown, problems)
    let cases: &[(&str, &str, usize)] = &[
        ("<esi:assign name=\"x\" value=\"'a'\"/>b", "{set x='a'}b", 0),
        (
            "<esi:assign name=\"colors\" value=\"['red', 'blue']\"/>",
            "{set colors=['red', 'blue']}",
            0,
        ),
        ("<esi:assign name=\"d{'k'}\" value=\"1\"/>", "{set d[k]=1}", 0),
        ("<esi:assign name=\"l{0}\" value=\"1\"/>", "{set l[0]=1}", 0),
        (
            "<esi:assign name=\"x\">\n  '''long\nform'''\n</esi:assign>y",
            "{set x='''long\nform'''}y",
            0,
        ),
        ("<esi:assign name=\"x\" value=\"1\">ignored</esi:assign>y", "{set x=1}y", 0),
        // Misuse: each reported, the assignment dropped, the rest kept.
        ("<esi:assign name=\"HTTP_HOST\" value=\"'x'\"/>a", "a", 1),
        ("<esi:assign name=\"QUERY_STRING{a}\" value=\"'x'\"/>a", "a", 1),
        ("<esi:assign name=\"REQUEST_PATH\">'x'</esi:assign>a", "a", 1),
        ("<esi:assign value=\"1\"/>a", "a", 1),
        ("<esi:assign name=\"1x\" value=\"1\"/>a", "a", 1),
        ("<esi:assign name=\"x{}\" value=\"1\"/>a", "a", 1),
        ("<esi:assign name=\"x\"/>a", "a", 1),
        ("<esi:assign name=\"x\" value=\"1 ==\"/>a", "a", 1),
        // Kept, and reported: the function may not be defined.
        ("<esi:assign name=\"x\">$nope()</esi:assign>a", "{set x=$nope()}a", 1),
        (
            "<esi:assign name=\"x\"><esi:include src=\"/a\"/>1</esi:assign>a",
            "{set x=1}a",
            1,
        ),
        (
            "<esi:try><esi:assign name=\"x\" value=\"1\"/><esi:attempt>a</esi:attempt><esi:except>b</esi:except></esi:try>",
            "{try a | b}",
            1,
        ),
    ];
    for (input, want, problems) in cases {
        let t = lenient(input);
        assert_eq!(show(&t.nodes), *want, "input: {input:?}");
        assert_eq!(
            t.problem_count, *problems,
            "input: {input:?}: {:?}",
            t.diagnostics
        );
    }
    let err = strict("<esi:assign name=\"HTTP_COOKIE\" value=\"'x'\"/>").expect_err("reserved");
    assert_eq!(
        err.to_string(),
        "1:1: <esi:assign> cannot set the request variable $(HTTP_COOKIE)"
    );
}

/// The include attributes past ESI 1.0: each form, `<esi:param>` children (the include is
/// emitted at its end tag, params and all), and each bad value reported with the attribute
/// left out.
#[test]
fn include_attribute_forms() {
    use crate::esi::include_attrs::{Dca, HeaderOp, Method};
    use std::time::Duration;
    let one = |input: &str| -> Include {
        let t = strict(input).unwrap_or_else(|e| panic!("{input:?}: {e}"));
        match t.nodes.as_slice() {
            [Node::Include(inc)] => (**inc).clone(),
            other => panic!("{input:?}: {other:?}"),
        }
    };
    let inc =
        one("<esi:include src=\"/a\" dca=\"esi\" ttl=\"5m\" no-store=\"off\" maxwait=\"250\"/>");
    assert_eq!(inc.options.dca, Dca::Esi);
    assert_eq!(inc.options.ttl, Some(Duration::from_secs(300)));
    assert!(!inc.options.no_store);
    assert_eq!(inc.maxwait_ms, Some(250));
    let inc = one("<esi:include src=\"/a\" dca=\"none\" no-store=\"on\" ttl=\"0\"/>");
    assert_eq!(
        (inc.options.dca, inc.options.no_store, inc.options.ttl),
        (Dca::None, true, Some(Duration::ZERO))
    );
    let inc = one("<esi:include src=\"/a\" method=\"POST\" entity=\"q=$(QUERY_STRING{q})\"/>");
    assert_eq!(inc.options.method, Method::Post);
    assert_eq!(
        inc.options.entity.as_ref().map(|e| e.vars().count()),
        Some(1)
    );
    let inc = one(
        "<esi:include src=\"/a\" setheaders=\"X-A: 1, X-B: 2\" appendheaders=\"X-C: $(HTTP_X_DEVICE)\" removeheaders=\"Accept-Language\"/>",
    );
    let ops: Vec<(HeaderOp, &str)> = inc
        .options
        .headers
        .iter()
        .map(|e| (e.op, &*e.name))
        .collect();
    assert_eq!(
        ops,
        [
            (HeaderOp::Remove, "accept-language"),
            (HeaderOp::Set, "x-a"),
            (HeaderOp::Set, "x-b"),
            (HeaderOp::Append, "x-c")
        ]
    );
    // Long form with params: one include, emitted once its end tag is met.
    let input = "<esi:assign name=\"pid\" value=\"'7'\"/>a<esi:include src=\"/p\" onerror=\"continue\">\n  <esi:param name=\"id\" value=\"$(pid)\"/>\n  <esi:param name=\"lang\" value=\"de\"></esi:param>\n</esi:include>b";
    let t = strict(input).expect("parses");
    let incs = t.includes();
    assert_eq!(incs.len(), 1, "{:?}", t.nodes);
    let params: Vec<(String, String)> = incs[0]
        .options
        .params
        .iter()
        .map(|p| (p.name.to_string(), p.value.to_string()))
        .collect();
    assert_eq!(
        params,
        [("id".into(), "$(pid)".into()), ("lang".into(), "de".into())]
    );
    assert_eq!(show(&t.nodes), "{set pid='7'}a{inc /p continue}b");
}

#[test]
fn include_attribute_problems() {
    // (input, the message lint shows, error or warning)
    let cases: &[(&str, &str, Severity)] = &[
        (
            "<esi:include src=\"/a\" dca=\"xslt\"/>",
            "dca=\"xslt\" is not \"none\" or \"esi\"",
            Severity::Error,
        ),
        (
            "<esi:include src=\"/a\" ttl=\"5 minutes\"/>",
            "is not a duration",
            Severity::Error,
        ),
        (
            "<esi:include src=\"/a\" ttl=\"400d\"/>",
            "longer than a year",
            Severity::Error,
        ),
        (
            "<esi:include src=\"/a\" no-store=\"yes\"/>",
            "no-store=\"yes\" is not \"on\" or \"off\"",
            Severity::Error,
        ),
        (
            "<esi:include src=\"/a\" method=\"DELETE\"/>",
            "method=\"DELETE\" is not GET or POST",
            Severity::Error,
        ),
        (
            "<esi:include src=\"/a\" setheaders=\"Host: evil\"/>",
            "Host is a header only the proxy sets",
            Severity::Error,
        ),
        (
            "<esi:include src=\"/a\" removeheaders=\"Content-Length\"/>",
            "only the proxy sets",
            Severity::Error,
        ),
        (
            "<esi:include src=\"/a\" setheaders=\"Cookie: a=1\"/>",
            "only to hosts trusted with credentials",
            Severity::Warning,
        ),
        (
            "<esi:include src=\"/a\" entity=\"x\"/>",
            "only with method=\"POST\"",
            Severity::Warning,
        ),
        (
            "<esi:include src=\"/a\" method=\"POST\" ttl=\"5m\"/>",
            "never cached",
            Severity::Warning,
        ),
        (
            "<esi:include src=\"/a\" no-store=\"on\" ttl=\"5m\"/>",
            "its ttl does nothing",
            Severity::Warning,
        ),
        (
            "<esi:include src=\"/a\"><esi:param value=\"1\"/></esi:include>",
            "<esi:param> without name",
            Severity::Error,
        ),
        (
            "<esi:param name=\"a\" value=\"1\"/>",
            "<esi:param> is not allowed outside a long-form <esi:include>",
            Severity::Error,
        ),
        (
            "<esi:include src=\"/a\"/><esi:param name=\"a\" value=\"1\"/>",
            "outside a long-form",
            Severity::Error,
        ),
    ];
    for (input, want, severity) in cases {
        let t = lenient(input);
        let found = t
            .diagnostics
            .iter()
            .find(|d| d.problem.to_string().contains(want))
            .unwrap_or_else(|| panic!("{input:?}: {:?}", t.diagnostics));
        assert_eq!(found.problem.severity(), *severity, "{input:?}");
        // The include itself stays (lenient), only the bad attribute is left out.
        if input.starts_with("<esi:include") {
            assert_eq!(t.includes().len(), 1, "{input:?}");
        }
    }
    // Too many params: the ones past the bound are dropped and reported.
    let params: String = (0..crate::esi::include_attrs::MAX_PARAMS + 2)
        .map(|i| format!("<esi:param name=\"p{i}\" value=\"v\"/>"))
        .collect();
    let t = lenient(&format!("<esi:include src=\"/a\">{params}</esi:include>"));
    assert_eq!(
        t.includes()[0].options.params.len(),
        crate::esi::include_attrs::MAX_PARAMS
    );
    assert_eq!(t.problem_count, 2);
}
