//! The demo's ESI markup through esi-proxy's parser in strict mode, with not even a warning, and
//! the demo's own rules on top: every include's `src` and `alt` an absolute URL of a running
//! service. The personal fragments are rendered by the same engine, signed in and not.

use std::collections::HashSet;

use bytes::Bytes;
use esi_proxy::esi::{self, Include, Node, OnError, ParseOptions, Request, Template, VarPolicy};

use super::*;

/// `body` parsed strictly, then held to the demo's rules: `src` and `alt` are plain absolute
/// URLs on a loopback service (no variables, but for the query of the primary include, which
/// passes the page's product id), and no `esi:inline` (the demo has none).
fn check(body: &str) -> Result<Template, String> {
    let template = esi::parse(
        Bytes::copy_from_slice(body.as_bytes()),
        &ParseOptions::strict(),
    )
    .map_err(|e| e.to_string())?;
    if let Some(warning) = template.diagnostics.first() {
        return Err(warning.to_string());
    }
    let mut problems = Vec::new();
    walk(&template.nodes, &mut |node| match node {
        Node::Include(inc) => {
            for url in std::iter::once(&inc.src).chain(&inc.alt) {
                let ok = match url.as_constant() {
                    Some(u) => u.starts_with("http://127.0.0.1:"),
                    None => inc.primary && !url_of(url).contains('$'),
                };
                if !ok {
                    problems.push(format!("line {}: include URL {url}", inc.line));
                }
            }
        }
        Node::Inline { name, .. } => problems.push(format!("<esi:inline name={name:?}>")),
        _ => {}
    });
    if problems.is_empty() {
        Ok(template)
    } else {
        Err(problems.join("; "))
    }
}

/// The markup, checked: any problem fails the test.
fn checked(url: &str, body: &str) -> Template {
    check(body).unwrap_or_else(|e| panic!("{url}: {e}\n{body}"))
}

/// Calls `visit` on every node of the tree, depth first, in document order.
fn walk<'a>(nodes: &'a [Node], visit: &mut impl FnMut(&'a Node)) {
    for node in nodes {
        visit(node);
        match node {
            Node::Try { attempt, except } => {
                walk(attempt, visit);
                walk(except, visit);
            }
            Node::Choose { whens, otherwise } => {
                for when in whens {
                    walk(&when.body, visit);
                }
                walk(otherwise.as_deref().unwrap_or_default(), visit);
            }
            Node::Inline { body, .. } => walk(body, visit),
            Node::Foreach(f) => walk(&f.body, visit),
            Node::Function(f) => walk(&f.body, visit),
            Node::Text(_)
            | Node::Vars(_)
            | Node::Include(_)
            | Node::Eval(_)
            | Node::Assign(_)
            | Node::Break
            | Node::Return(_) => {}
        }
    }
}

/// Every include in the tree, in document order.
fn includes(nodes: &[Node]) -> Vec<&Include> {
    let mut found = Vec::new();
    walk(nodes, &mut |node| {
        if let Node::Include(inc) = node {
            found.push(&**inc);
        }
    });
    found
}

/// The URL of a checked include (`src` or `alt`): a constant, or the primary's URL without the
/// query that holds its variable.
fn url_of(value: &esi::VarString) -> String {
    match value.as_constant() {
        Some(u) => u.to_owned(),
        None => {
            let source = value.to_string();
            source.split('?').next().unwrap_or_default().to_owned()
        }
    }
}

/// Every `src` and `alt` of the includes in the tree.
fn include_urls(nodes: &[Node]) -> Vec<String> {
    includes(nodes)
        .into_iter()
        .flat_map(|inc| std::iter::once(&inc.src).chain(&inc.alt))
        .map(url_of)
        .collect()
}

/// Every `esi:try` in the tree: its attempt and its except.
fn tries(nodes: &[Node]) -> Vec<(&[Node], &[Node])> {
    let mut found = Vec::new();
    walk(nodes, &mut |node| {
        if let Node::Try { attempt, except } = node {
            found.push((attempt.as_slice(), except.as_slice()));
        }
    });
    found
}

/// The text of a subtree as written, ESI tags left out and variables in source form.
fn text(nodes: &[Node]) -> String {
    let mut out = String::new();
    walk(nodes, &mut |node| match node {
        Node::Text(bytes) => out.push_str(&String::from_utf8_lossy(bytes)),
        Node::Vars(segments) => {
            for segment in segments {
                match segment {
                    esi::Segment::Literal(bytes) => out.push_str(&String::from_utf8_lossy(bytes)),
                    esi::Segment::Var(var) => out.push_str(&var.to_string()),
                }
            }
        }
        _ => {}
    });
    out
}

/// The page a fragment with no includes renders to for a visitor with `cookie`.
fn render(template: &Template, cookie: &str) -> String {
    let req = Request::new().with_cookie(cookie);
    let mut out = Vec::new();
    template
        .render(&req, &VarPolicy::default(), &mut |_: &str| None, &mut out)
        .expect("no include to fail");
    String::from_utf8(out).expect("UTF-8")
}

#[test]
fn the_checker_refuses_broken_markup() {
    let ok = "<p><esi:try><esi:attempt><esi:include src=\"http://127.0.0.1:1/a\"/></esi:attempt>\
              <esi:except>x</esi:except></esi:try></p>";
    assert_eq!(
        include_urls(&check(ok).expect("valid").nodes),
        ["http://127.0.0.1:1/a"]
    );
    for bad in [
        "<esi:includ src=\"http://127.0.0.1:1/a\"/>",
        "<esi:include src=\"http://127.0.0.1:1/a\">",
        "<esi:include src=\"/relative\"/>",
        "<esi:include src=\"http://127.0.0.1:1/$(QUERY_STRING{a})\"/>",
        "<esi:include src=\"http://127.0.0.1:1/a\" alt=\"/relative\"/>",
        "<esi:include alt=\"http://127.0.0.1:1/a\"/>",
        "<esi:include src=\"http://127.0.0.1:1/a\" onerror=\"ignore\"/>",
        "<esi:try><esi:attempt>a</esi:attempt></esi:try>",
        "<esi:try>text<esi:attempt>a</esi:attempt><esi:except>b</esi:except></esi:try>",
        "<esi:choose><esi:when>a</esi:when></esi:choose>",
        "<esi:choose><esi:otherwise>a</esi:otherwise></esi:choose>",
        "<esi:when test=\"1\">a</esi:when>",
        "<esi:vars>a",
        "a</esi:vars>",
        "<esi:vars><esi:try></esi:vars></esi:try>",
        "<esi:inline name=\"http://127.0.0.1:1/a\" fetchable=\"no\">a</esi:inline>",
    ] {
        assert!(check(bad).is_err(), "{bad}");
    }
}

#[tokio::test]
async fn layout_holds_120_includes_of_running_services() {
    let demo = start().await;
    let (status, headers, body) = get(&client(), &demo.page_url()).await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "surrogate-control"), "content=\"ESI/1.0\"");
    assert_eq!(header(&headers, "content-type"), "text/html; charset=utf-8");
    assert_eq!(header(&headers, "cache-control"), "public, max-age=30");
    assert!(body.starts_with("<!doctype html>") && body.contains("<style>"));

    let layout = checked("layout", &body);
    assert_eq!(layout.includes().len(), 120);
    let services: HashSet<String> = demo.service_urls().into_iter().collect();
    assert_eq!(services.len(), 35);
    let served: HashSet<&str> = demo.fragment_urls().iter().map(String::as_str).collect();
    let mut used = HashSet::new();
    for url in include_urls(&layout.nodes) {
        let base = url[..url[7..].find('/').expect("has a path") + 7].to_string();
        assert!(services.contains(&base), "{url} is on a running service");
        assert!(served.contains(url.as_str()), "{url} is served");
        used.insert(base);
    }
    assert!(
        used.len() >= 30,
        "the layout draws on {} services",
        used.len()
    );
    let layout_includes = includes(&layout.nodes);
    assert!(layout_includes.iter().any(|inc| inc.alt.is_some()), "alt");
    assert!(
        layout_includes
            .iter()
            .any(|inc| inc.onerror == OnError::Continue),
        "onerror=\"continue\""
    );
    assert!(!tries(&layout.nodes).is_empty(), "esi:try");
    assert!(body.contains("Reviews are unavailable right now"));
    demo.shutdown();
}

#[tokio::test]
async fn every_fragment_answers_html_and_esi_ones_are_marked() {
    let demo = start().await;
    let client = client();
    let services = demo.service_urls();
    let mut marked_count = 0;
    for url in demo.fragment_urls() {
        let (status, headers, body) = get(&client, url).await;
        assert_eq!(status, 200, "{url}");
        assert_eq!(
            header(&headers, "content-type"),
            "text/html; charset=utf-8",
            "{url}"
        );
        assert!(
            header(&headers, "cache-control").contains("max-age")
                || header(&headers, "cache-control") == "no-store",
            "{url}"
        );
        assert!(
            body.trim_start().starts_with('<') && body.len() > 20,
            "{url}: {body:?}"
        );
        let marked = header(&headers, "surrogate-control") == "content=\"ESI/1.0\"";
        let template = checked(url, &body);
        assert_eq!(
            marked,
            !template.is_static(),
            "{url}: marked iff it holds ESI"
        );
        if marked {
            marked_count += 1;
            for src in include_urls(&template.nodes) {
                assert!(
                    services.iter().any(|s| src.starts_with(s.as_str())),
                    "{url}: {src}"
                );
                assert!(
                    demo.fragment_urls().contains(&src),
                    "{url}: {src} is served"
                );
            }
        }
    }
    assert_eq!(
        marked_count, 7,
        "menu, badge, summary, list, points, trending, strip"
    );
    assert_eq!(
        demo.fragment_urls().len(),
        194,
        "each fragment, 60 tiles, 51 star widgets"
    );
}

/// The `when` test, `when` text and `otherwise` text of the fragment's one `esi:choose`.
fn choose_of(template: &Template) -> (String, String, String) {
    let mut chooses = Vec::new();
    walk(&template.nodes, &mut |node| {
        if let Node::Choose { whens, otherwise } = node {
            chooses.push((whens, otherwise));
        }
    });
    assert_eq!(chooses.len(), 1, "one esi:choose");
    let (whens, otherwise) = chooses[0];
    assert_eq!(whens.len(), 1, "one esi:when");
    let otherwise = otherwise.as_deref().expect("an esi:otherwise");
    (
        whens[0].source.to_string(),
        text(&whens[0].body),
        text(otherwise),
    )
}

#[tokio::test]
async fn personal_content_is_chosen_by_esi_on_the_cookie() {
    let demo = start().await;
    let client = client();
    let fetch = |name: &str, path: &str| {
        let url = format!("{}{path}", service_base(&demo, name));
        let client = client.clone();
        async move {
            let (status, headers, body) = get(&client, &url).await;
            assert_eq!(status, 200, "{url}");
            // The same bytes for every user: cacheable, the proxy does the choosing.
            assert!(
                header(&headers, "cache-control").starts_with("public"),
                "{url}"
            );
            checked(&url, &body)
        }
    };
    let menu = fetch("account", "/menu").await;
    let (test, signed_in, anonymous) = choose_of(&menu);
    assert_eq!(test, "$(HTTP_COOKIE{user})");
    assert!(signed_in.contains("Hi, $(HTTP_COOKIE{user})") && signed_in.contains("Sign out"));
    assert!(anonymous.contains("Sign in") && !anonymous.contains("HTTP_COOKIE"));
    let ann = render(&menu, "user=Ann");
    assert!(
        ann.contains(">Hi, Ann<") && ann.contains("Sign out"),
        "{ann}"
    );
    let nobody = render(&menu, "");
    assert!(
        nobody.contains("Sign in") && !nobody.contains("Hi,"),
        "{nobody}"
    );

    let badge = fetch("cart", "/badge").await;
    let (test, full, empty) = choose_of(&badge);
    assert_eq!(test, "$(HTTP_COOKIE{cart})");
    assert!(
        full.contains("<span class=\"badge\">$(HTTP_COOKIE{cart})</span>"),
        "{full}"
    );
    assert!(empty.contains(">0</span>"), "{empty}");
    assert!(render(&badge, "cart=3").contains("<span class=\"badge\">3</span>"));

    let points = fetch("loyalty", "/points").await;
    let (test, signed_in, anonymous) = choose_of(&points);
    assert_eq!(test, "$(HTTP_COOKIE{user})");
    assert!(signed_in.starts_with("$(HTTP_COOKIE{user}), you earn"));
    assert!(anonymous.contains("Sign in"));
    assert!(render(&points, "user=Ann").contains("Ann, you earn"));
}

#[tokio::test]
async fn esi_fragments_nest_the_includes_they_promise() {
    let demo = start().await;
    let client = client();
    let (tiles, ratings) = (service_base(&demo, "tiles"), service_base(&demo, "ratings"));
    for (service, path, nested, on) in [
        ("recommendations", "/trending", 8, &tiles),
        ("recently-viewed", "/strip", 4, &tiles),
        ("reviews", "/summary", 1, &ratings),
        ("reviews", "/list", 5, &ratings),
    ] {
        let url = format!("{}{path}", service_base(&demo, service));
        let (_, headers, body) = get(&client, &url).await;
        assert_eq!(
            header(&headers, "surrogate-control"),
            "content=\"ESI/1.0\"",
            "{url}"
        );
        let srcs = include_urls(&checked(&url, &body).nodes);
        assert_eq!(srcs.len(), nested, "{url}");
        assert!(
            srcs.iter().all(|s| s.starts_with(on.as_str())),
            "{url}: {srcs:?}"
        );
    }
    let url = format!("{}/strip", service_base(&demo, "recently-viewed"));
    let strip = checked(&url, &get(&client, &url).await.2);
    let (_, except) = tries(&strip.nodes)[0];
    assert!(text(except).contains("Items you look at will show up here."));
}

#[tokio::test]
async fn every_include_of_the_layout_has_a_fallback_a_reader_sees() {
    let demo = start().await;
    let body = get(&client(), &demo.page_url()).await.2;
    let layout = checked("layout", &body);
    // Includes in an attempt fail into their except; every other include has its own way out.
    let mut in_attempts = HashSet::new();
    for (attempt, _) in tries(&layout.nodes) {
        in_attempts.extend(include_urls(attempt));
    }
    // The primary has none on purpose: when it fails, the page is a 5xx.
    let primaries: Vec<String> = includes(&layout.nodes)
        .into_iter()
        .filter(|inc| inc.primary)
        .map(|inc| url_of(&inc.src))
        .collect();
    assert_eq!(
        primaries,
        [format!("{}/title", service_base(&demo, "catalog"))],
        "one primary: the product fragment"
    );
    for include in includes(&layout.nodes) {
        let src = url_of(&include.src);
        assert!(
            in_attempts.contains(&src) || include.onerror == OnError::Continue || include.primary,
            "{src} has no fallback"
        );
    }
    let except_for = |service: &str, path: &str| -> String {
        let src = format!("{}{path}", service_base(&demo, service));
        let (_, except) = tries(&layout.nodes)
            .into_iter()
            .find(|(attempt, _)| include_urls(attempt).contains(&src))
            .expect("in a try");
        text(except)
    };
    let visible = [
        ("reviews", "/list", "Reviews are unavailable right now"),
        ("reviews", "/histogram", "Reviews are unavailable right now"),
        ("reviews", "/summary", "Ratings are unavailable right now"),
        ("pricing", "/price", "Price unavailable right now"),
        (
            "qa",
            "/questions",
            "Questions &amp; answers are unavailable",
        ),
        ("account", "/menu", "Account"),
    ];
    for (service, path, want) in visible {
        assert!(except_for(service, path).contains(want), "{service}{path}");
    }
    // alt: a static snapshot on another service, for what a page cannot lose.
    let snapshots = service_base(&demo, "static");
    let alts: Vec<String> = includes(&layout.nodes)
        .into_iter()
        .filter_map(|inc| inc.alt.as_ref().map(url_of))
        .collect();
    assert_eq!(alts.len(), 3);
    assert!(alts.iter().all(|a| a.starts_with(&snapshots)), "{alts:?}");
}
