//! Properties of the ESI engine over generated documents: text with no ESI renders to itself,
//! arbitrary bytes never panic the scanner, parser or expression parser, and splitting the input
//! into chunks at any offsets gives the same template and the same diagnostics.

use bytes::{Bytes, BytesMut};
use esi_proxy::esi::{
    parse, parse_expr, Budget, Limits, Node, ParseOptions, Parser, Request, Scope, VarPolicy,
    VarString,
};
use proptest::prelude::*;

/// Pieces that look like HTML and ESI, to build documents that exercise every path.
const PIECES: &[&str] = &[
    "<p>text</p>",
    "\n",
    " ",
    "<",
    ">",
    "<!--",
    "-->",
    "<![CDATA[",
    "]]>",
    "<!--esi ",
    "<esi:text>",
    "</esi:text>",
    "<esi:assign name=\"x\" value=\"['a', $lower('B')]\"/>",
    "<esi:assign name=\"x\">",
    "<esi:foreach collection=\"[1, 2, $f(3)]\" item=\"i\">",
    "</esi:foreach>",
    "<esi:break/>",
    "<esi:function name=\"f\">",
    "</esi:function>",
    "<esi:return value=\"$f($(ARGS{0}))\"/>",
    "<esi:eval src=\"/e\" onerror=\"continue\"/>",
    "</esi:assign>",
    "{'k': 1}",
    "$(x{0})",
    "<esi:when test=\"$(HTTP_HOST) matches '''^(a)'''\">",
    "<esi:",
    "</esi:",
    "include",
    "src=\"/a\"",
    "alt='/b'",
    "onerror=\"continue\"",
    "/>",
    "<esi:include src=\"/f\"/>",
    "<esi:try>",
    "</esi:try>",
    "<esi:attempt>",
    "</esi:attempt>",
    "<esi:except>",
    "</esi:except>",
    "<esi:choose>",
    "</esi:choose>",
    "<esi:when test=\"$(HTTP_COOKIE{a})=='1'\">",
    "</esi:when>",
    "<esi:otherwise>",
    "</esi:otherwise>",
    "<esi:vars>",
    "</esi:vars>",
    "$(HTTP_HOST)",
    "$(QUERY_STRING{q}|'d')",
    "<esi:remove>",
    "</esi:remove>",
    "<esi:comment text=\"c\"/>",
    "<esi:unknown>",
    "&amp;",
    "\"",
    "'",
    "<script>if(a<b&&c)</script>",
    "\u{feff}",
    "é",
];

fn esi_like() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            4 => prop::sample::select(PIECES).prop_map(|s| s.as_bytes().to_vec()),
            1 => prop::collection::vec(any::<u8>(), 0..8),
        ],
        0..60,
    )
    .prop_map(|parts| parts.concat())
}

fn has_marker(doc: &[u8]) -> bool {
    [&b"<esi:"[..], b"</esi:", b"<!--esi"]
        .iter()
        .any(|m| doc.windows(m.len()).any(|w| w == *m))
}

/// Turns every ESI marker's `<` into `[`, leaving a document with no ESI but all else intact.
fn defuse(mut doc: Vec<u8>) -> Vec<u8> {
    for i in 0..doc.len() {
        if [&b"<esi:"[..], b"</esi:", b"<!--esi"]
            .iter()
            .any(|m| doc[i..].starts_with(m))
        {
            doc[i] = b'[';
        }
    }
    doc
}

/// Joins adjacent text nodes, so templates parsed from different chunkings compare equal.
fn normalize(nodes: &[Node]) -> Vec<Node> {
    let mut out: Vec<Node> = Vec::new();
    for node in nodes {
        let node = match node {
            Node::Try { attempt, except } => Node::Try {
                attempt: normalize(attempt),
                except: normalize(except),
            },
            Node::Choose { whens, otherwise } => Node::Choose {
                whens: whens
                    .iter()
                    .map(|w| esi_proxy::esi::When {
                        body: normalize(&w.body),
                        ..w.clone()
                    })
                    .collect(),
                otherwise: otherwise.as_deref().map(normalize),
            },
            Node::Inline {
                name,
                fetchable,
                body,
            } => Node::Inline {
                name: name.clone(),
                fetchable: *fetchable,
                body: normalize(body),
            },
            Node::Foreach(f) => Node::Foreach(esi_proxy::esi::Foreach {
                body: normalize(&f.body),
                ..f.clone()
            }),
            Node::Function(f) => Node::Function(esi_proxy::esi::Function {
                name: f.name.clone(),
                body: normalize(&f.body).into(),
            }),
            other => other.clone(),
        };
        match (out.last_mut(), node) {
            (Some(Node::Text(prev)), Node::Text(next)) => {
                let mut joined = BytesMut::from(&prev[..]);
                joined.extend_from_slice(&next);
                *prev = joined.freeze();
            }
            (_, node) => out.push(node),
        }
    }
    out
}

fn render(doc: &[u8]) -> Vec<u8> {
    let template = parse(Bytes::copy_from_slice(doc), &ParseOptions::default()).expect("lenient");
    let mut out = Vec::new();
    let mut fetch = |_: &str| Some(Bytes::from_static(b"[fragment]"));
    template
        .render(&Request::new(), &VarPolicy::default(), &mut fetch, &mut out)
        .expect("fetch never fails");
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// README: "All other bytes pass through exactly, including invalid UTF-8".
    #[test]
    fn input_with_no_esi_renders_to_itself(doc in esi_like().prop_map(defuse)) {
        prop_assert_eq!(render(&doc), doc);
    }

    #[test]
    fn arbitrary_bytes_render_to_themselves_when_free_of_markers(doc in prop::collection::vec(any::<u8>(), 0..2048)) {
        prop_assume!(!has_marker(&doc));
        prop_assert_eq!(render(&doc), doc);
    }

    #[test]
    fn arbitrary_input_never_panics(doc in prop_oneof![esi_like(), prop::collection::vec(any::<u8>(), 0..512)]) {
        let input = Bytes::from(doc);
        let _ = parse(input.clone(), &ParseOptions::strict());
        let lenient = parse(input, &ParseOptions::default()).expect("lenient never fails");
        let mut out = Vec::new();
        let mut fetch = |_: &str| None;
        let _ = lenient.render(&Request::new().with_cookie("a=1"), &VarPolicy::default(), &mut fetch, &mut out);
    }

    /// Loops, recursive functions and expressions of any shape never panic, and a page's
    /// evaluations stay within the budget (each step may pass it by the one that hit it).
    #[test]
    fn loops_and_calls_stay_within_their_bounds(
        exprs in prop::collection::vec(prop_oneof![
            Just("$f($(ARGS{0}))".to_owned()),
            Just("[$f(1), $f(2), $f(3)]".to_owned()),
            Just("$string_split('a b c d e f g h')".to_owned()),
            Just("{'a': $f(1), 'b': [1, 2]}".to_owned()),
            "[$a-z(),' 0-9\\[\\]{}:]{0,24}",
        ], 1..6),
        shape in prop::collection::vec(0u8..6, 1..12),
    ) {
        let mut doc = String::from("<esi:function name=\"f\">");
        for (i, s) in shape.iter().enumerate() {
            let e = exprs[i % exprs.len()].replace('"', "'");
            doc.push_str(&match s {
                0 => format!("<esi:foreach collection=\"{e}\" item=\"i\"><esi:assign name=\"x\" value=\"$f($(i))\"/>"),
                1 => "</esi:foreach>".to_owned(),
                2 => format!("<esi:return value=\"{e}\"/>"),
                3 => "</esi:function><esi:function name=\"f\">".to_owned(),
                4 => format!("<esi:choose><esi:when test=\"{e}\"><esi:break/></esi:when></esi:choose>"),
                _ => format!("<esi:assign name=\"y\" value=\"{e}\"/><esi:vars>$(y)</esi:vars>"),
            });
        }
        doc.push_str("</esi:function><esi:foreach collection=\"[1, 2, 3]\" item=\"n\"><esi:assign name=\"z\" value=\"$f($(n))\"/></esi:foreach>");
        let template = parse(Bytes::from(doc), &ParseOptions::default()).expect("lenient");
        let limits = Limits {
            max_evaluations: 3000,
            max_foreach_iterations: 8,
            max_function_depth: 6,
            ..Limits::default()
        };
        let budget = Budget::new(limits);
        let mut out = Vec::new();
        let mut fetch = |_: &str| None;
        let _ = template.render_with(&Request::new(), &VarPolicy::default(), &budget, &mut Scope::default(), &mut fetch, &mut out);
        prop_assert!(budget.evaluations() <= limits.max_evaluations + 256, "{} evaluations", budget.evaluations());
        prop_assert!(out.len() <= 1 << 20);
    }

    #[test]
    fn expressions_and_variables_never_panic(s in ".{0,64}", raw in prop::collection::vec(any::<u8>(), 0..64)) {
        let lossy = String::from_utf8_lossy(&raw);
        for text in [s.as_str(), &lossy] {
            if let Ok(e) = parse_expr(text, 32) {
                e.eval(&Request::new().with_query("a=1"), &VarPolicy::default());
            }
            let _ = VarString::parse(text);
        }
    }

    /// README: "It is incremental".
    #[test]
    fn chunk_splits_give_the_same_template(doc in esi_like(), cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6)) {
        let whole = parse(Bytes::copy_from_slice(&doc), &ParseOptions::default()).expect("lenient");
        let mut offsets: Vec<usize> = cuts.iter().map(|i| i.index(doc.len() + 1)).collect();
        offsets.sort_unstable();
        let mut parser = Parser::new(ParseOptions::default());
        let mut events = Vec::new();
        let mut from = 0;
        for to in offsets.into_iter().chain([doc.len()]) {
            parser.feed(Bytes::copy_from_slice(&doc[from..to]), &mut events).expect("lenient");
            from = to;
        }
        parser.finish(&mut events).expect("lenient");
        let mut builder = esi_proxy::esi::parse::TemplateBuilder::default();
        for e in events {
            builder.push(e);
        }
        let chunked = builder.finish();
        prop_assert_eq!(normalize(&chunked.nodes), normalize(&whole.nodes));
        prop_assert_eq!(parser.diagnostics(), whole.diagnostics.as_slice());
        prop_assert_eq!(parser.problem_count(), whole.problem_count);
    }
}

#[test]
fn standard_bench_inputs_parse_cleanly() {
    for (doc, includes) in [
        (&include_bytes!("../benches/data/layout-120.html")[..], 120),
        (&include_bytes!("../benches/data/noesi-1mb.html")[..], 0),
    ] {
        let t = parse(Bytes::from_static(doc), &ParseOptions::strict()).expect("valid ESI");
        assert_eq!(t.includes().len(), includes);
        let out = render(doc);
        assert_eq!(
            out.windows(10).filter(|w| *w == b"[fragment]").count(),
            includes
        );
        assert!(!has_marker(&out));
    }
}
