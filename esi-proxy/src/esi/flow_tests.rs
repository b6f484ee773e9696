//! Tables for `esi:foreach`, `esi:break`, `esi:function`/`esi:return` and `esi:eval` in the
//! reference render, and the parser's messages for their misuse.

use bytes::Bytes;

use super::super::{parse, Budget, Limits, ParseOptions, Problem, Request, Scope, VarPolicy};

/// Renders `doc` by the reference evaluation; `/lib` is an ESI document for `esi:eval`, any
/// other URL echoes itself.
fn render(doc: &str, limits: Limits) -> String {
    let template = parse(
        Bytes::copy_from_slice(doc.as_bytes()),
        &ParseOptions::default(),
    )
    .expect("lenient");
    let mut fetch = |url: &str| -> Option<Bytes> {
        match url {
            "/lib" => Some(Bytes::from_static(
                b"<esi:assign name=\"v\" value=\"'L'\"/><esi:function name=\"f\"><esi:return value=\"'F'\"/></esi:function>",
            )),
            u if u.starts_with("/down") => None,
            u => Some(Bytes::from(format!("<{u}>"))),
        }
    };
    let mut out = Vec::new();
    let budget = Budget::new(limits);
    template
        .render_with(
            &Request::new(),
            &VarPolicy::default(),
            &budget,
            &mut Scope::default(),
            &mut fetch,
            &mut out,
        )
        .expect("renders");
    String::from_utf8(out).expect("utf-8")
}

#[test]
fn reference_render_of_loops_functions_and_eval() {
    let cases: &[(&str, &str)] = &[
        // Akamai's and Fastly's default item name.
        ("<esi:foreach collection=\"[0, 1, 2]\"><esi:vars>$(item)</esi:vars></esi:foreach>", "012"),
        ("<esi:foreach collection=\"$string_split('one,two,three', ',')\" item=\"w\"><p><esi:vars>$(w)</esi:vars></p></esi:foreach>", "<p>one</p><p>two</p><p>three</p>"),
        ("<esi:foreach collection=\"{'a': 1}\" item=\"p\"><esi:vars>$(p{0})$(p{1})</esi:vars></esi:foreach>", "a1"),
        ("<esi:foreach collection=\"''\" item=\"x\">never</esi:foreach>done", "done"),
        ("<esi:foreach collection=\"'one'\" item=\"x\"><esi:vars>$(x)</esi:vars></esi:foreach>", "one"),
        ("<esi:foreach collection=\"[1, 2, 3]\" item=\"n\"><esi:vars>$(n)</esi:vars><esi:choose><esi:when test=\"$(n) == 2\"><esi:break/></esi:when></esi:choose></esi:foreach>!", "12!"),
        ("<esi:foreach collection=\"['a','b']\" item=\"x\"><esi:include src=\"/i/$(x)\"/></esi:foreach>", "</i/a></i/b>"),
        ("<esi:function name=\"greet\"><esi:assign name=\"g\" value=\"$join(['Hello, ', $(ARGS{0}), '!'], '')\"/><esi:return value=\"$(g)\"/></esi:function><esi:assign name=\"r\" value=\"$greet('World')\"/><esi:vars>$(r)</esi:vars>", "Hello, World!"),
        ("<esi:function name=\"fact\"><esi:choose><esi:when test=\"$(ARGS{0}) <= 1\"><esi:return value=\"1\"/></esi:when></esi:choose><esi:return value=\"$len($join([$fact($int($(ARGS{0})) - 1)], ''))\"/></esi:function>", ""),
        ("<esi:function name=\"none\">text is not output</esi:function><esi:assign name=\"r\" value=\"$none()\"/>[<esi:vars>$(r)</esi:vars>]", "[]"),
        ("<esi:eval src=\"/lib\"/><esi:assign name=\"r\" value=\"$f()\"/><esi:vars>$(v)$(r)</esi:vars>", "LF"),
        ("<esi:eval src=\"/down\" alt=\"/lib\"/><esi:vars>$(v)</esi:vars>", "L"),
        ("<esi:eval src=\"/down\" onerror=\"continue\"/>ok", "ok"),
    ];
    for (doc, want) in cases {
        assert_eq!(render(doc, Limits::default()), *want, "doc: {doc}");
    }
}

#[test]
fn bounds_stop_loops_and_calls_and_the_document_goes_on() {
    let limits = Limits {
        max_foreach_iterations: 2,
        max_function_depth: 3,
        ..Limits::default()
    };
    let cases: &[(&str, &str)] = &[
        ("<esi:foreach collection=\"[1, 2, 3, 4]\" item=\"n\"><esi:vars>$(n)</esi:vars></esi:foreach>|rest", "12|rest"),
        ("<esi:function name=\"r\"><esi:return value=\"$r()\"/></esi:function><esi:choose><esi:when test=\"$r()\">x</esi:when><esi:otherwise>stopped</esi:otherwise></esi:choose>|rest", "stopped|rest"),
        ("<esi:choose><esi:when test=\"$undefined()\">x</esi:when><esi:otherwise>undefined</esi:otherwise></esi:choose>", "undefined"),
    ];
    for (doc, want) in cases {
        assert_eq!(render(doc, limits), *want, "doc: {doc}");
    }
}

#[test]
fn misuse_is_reported_with_a_message() {
    let cases: &[(&str, &str)] = &[
        ("<esi:break/>", "<esi:break> is not allowed outside <esi:foreach>"),
        ("<esi:return value=\"1\"/>", "<esi:return> is not allowed outside <esi:function>"),
        ("<esi:foreach item=\"x\">a</esi:foreach>", "bad attributes on <esi:foreach>: without collection"),
        ("<esi:foreach collection=\"[1]\">a</esi:foreach>", "<esi:foreach> without item: each item is in $(item)"),
        ("<esi:foreach collection=\"[1]\" item=\"HTTP_HOST\">a</esi:foreach>", "<esi:assign> cannot set the request variable $(HTTP_HOST)"),
        ("<esi:assign name=\"x\" value=\"$nope(1)\"/>", "unknown function `$nope`: not a library function, nor defined by an earlier <esi:function>"),
        ("<esi:eval src=\"/l\"/><esi:assign name=\"x\" value=\"$nope(1)\"/>", "unknown function `$nope`: not a library function, nor defined by an earlier <esi:function> (an earlier <esi:eval> may define it)"),
        ("<esi:assign name=\"x\" value=\"$lower(1, 2)\"/>", "bad test expression: `$lower` takes 1 argument, found 2 at offset 0"),
        ("<esi:function name=\"lower\"></esi:function>", "bad attributes on <esi:function>: name=\"lower\" is a library function"),
        ("<esi:function name=\"f\"><esi:include src=\"/x\"/></esi:function>", "<esi:include> is not allowed inside <esi:function>"),
        ("<esi:function name=\"f\"><esi:foreach collection=\"[1]\" item=\"i\"></esi:foreach><esi:break/></esi:function>", "<esi:break> is not allowed outside <esi:foreach>"),
        ("<esi:eval/>", "<esi:eval> without src"),
        ("<esi:eval src=\"/x\" dca=\"esi\"/>", "dca=\"esi\" on <esi:eval> is processed as dca=\"none\": the fragment runs once, in this document's scope"),
        ("<esi:assign name=\"REQUEST_PATH\" value=\"1\"/>", "<esi:assign> cannot set the request variable $(REQUEST_PATH)"),
    ];
    for (doc, want) in cases {
        let template = parse(
            Bytes::copy_from_slice(doc.as_bytes()),
            &ParseOptions::default(),
        )
        .expect("lenient");
        let messages: Vec<String> = template
            .diagnostics
            .iter()
            .map(|d| d.problem.to_string())
            .collect();
        assert!(
            messages.iter().any(|m| m == want),
            "doc: {doc}: {messages:?}"
        );
    }
    // A function may call itself, and one defined before is known.
    let ok = "<esi:function name=\"f\"><esi:return value=\"$f(1)\"/></esi:function><esi:assign name=\"x\" value=\"$f()\"/>";
    let template = parse(Bytes::from_static(ok.as_bytes()), &ParseOptions::strict());
    assert!(template.is_ok(), "{template:?}");
    assert!(matches!(
        Problem::DefaultItem.severity(),
        super::super::Severity::Warning
    ));
}

/// The deepest call depth the config allows fits a 2 MiB stack (a tokio worker's), debug
/// build included, with expressions nested in each call.
#[test]
fn the_deepest_allowed_recursion_fits_a_worker_stack() {
    let limits = Limits {
        max_function_depth: 64,
        ..Limits::default()
    };
    let doc = concat!(
        "<esi:function name=\"r\"><esi:foreach collection=\"[1]\" item=\"i\"><esi:choose>",
        "<esi:when test=\"!(($r() == 1) | ($r() == 2))\">x</esi:when></esi:choose>",
        "</esi:foreach></esi:function>",
        "<esi:choose><esi:when test=\"$r()\">x</esi:when><esi:otherwise>stopped</esi:otherwise></esi:choose>",
    );
    let out = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || render(doc, limits))
        .expect("a thread")
        .join()
        .expect("no overflow");
    assert_eq!(out, "stopped");
}
