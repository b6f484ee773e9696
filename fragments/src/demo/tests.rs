//! The demo on loopback: the layout and every fragment over real HTTP, their ESI markup
//! checked for structure, and the knobs. esi-proxy depends on this crate (for `esi-proxy demo`),
//! so composing the page through the proxy is tested in the root package, not here.

use std::collections::HashSet;

use super::*;

/// A demo with no latency, so fetching ~200 URLs in a row stays quick.
async fn start() -> Demo {
    Demo::start(DemoConfig::default().without_latency())
        .await
        .expect("demo starts on loopback")
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

async fn get(client: &reqwest::Client, url: &str) -> (u16, reqwest::header::HeaderMap, String) {
    let resp = client.get(url).send().await.expect("service answers");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.text().await.expect("body"))
}

fn header<'a>(headers: &'a reqwest::header::HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// ESI markup as a tree: `esi:` elements with their attributes; everything else is text.
#[derive(Debug)]
enum Node {
    Text(String),
    Esi {
        name: String,
        attrs: Vec<(String, String)>,
        children: Vec<Node>,
    },
}

/// The elements the demo uses, and where each may appear ("" is anywhere but `try`/`choose`).
const ELEMENTS: &[(&str, &str)] = &[
    ("include", ""),
    ("try", ""),
    ("attempt", "try"),
    ("except", "try"),
    ("choose", ""),
    ("when", "choose"),
    ("otherwise", "choose"),
    ("vars", ""),
];

/// Parses `body`'s ESI with the rules of ESI 1.0 the demo relies on: known elements only,
/// balanced, `attempt`/`except` directly in `try` (one each), `when`/`otherwise` directly in
/// `choose`, no text directly in either, `include` empty with an absolute `src`, an optional
/// `alt` and `onerror="continue"`, `when` with a `test`.
fn parse_esi(body: &str) -> Result<Vec<Node>, String> {
    type Open = (String, Vec<(String, String)>, Vec<Node>);
    let mut stack: Vec<Open> = vec![(String::new(), Vec::new(), Vec::new())];
    let mut rest = body;
    if body.contains("<!--esi") {
        return Err("<!--esi is not used by the demo".into());
    }
    loop {
        let at = [rest.find("<esi:"), rest.find("</esi:")]
            .into_iter()
            .flatten()
            .min();
        let text = &rest[..at.unwrap_or(rest.len())];
        let (parent, _, children) = stack.last_mut().expect("root stays");
        if !text.is_empty() {
            if (parent == "try" || parent == "choose") && !text.trim().is_empty() {
                return Err(format!("text {text:?} directly inside <esi:{parent}>"));
            }
            children.push(Node::Text(text.to_string()));
        }
        let Some(at) = at else { break };
        let end = rest[at..].find('>').ok_or("tag not closed")? + at;
        let tag = &rest[at..=end];
        rest = &rest[end + 1..];
        if let Some(name) = tag.strip_prefix("</esi:") {
            let name = name.trim_end_matches('>');
            let (open, attrs, children) = stack
                .pop()
                .filter(|_| !stack.is_empty())
                .ok_or("stray end tag")?;
            if open != name {
                return Err(format!("</esi:{name}> closes <esi:{open}>"));
            }
            check_children(&open, &children)?;
            let node = Node::Esi {
                name: open,
                attrs,
                children,
            };
            stack.last_mut().ok_or("stray end tag")?.2.push(node);
            continue;
        }
        let inner = &tag["<esi:".len()..tag.len() - 1];
        let empty = inner.ends_with('/');
        let inner = inner.trim_end_matches('/');
        let (name, attr_text) = inner.split_once(' ').unwrap_or((inner, ""));
        let attrs = parse_attrs(attr_text)?;
        let parent = stack.last().map(|(p, _, _)| p.as_str()).unwrap_or("");
        let Some((_, allowed)) = ELEMENTS.iter().find(|(n, _)| *n == name) else {
            return Err(format!("unknown element <esi:{name}>"));
        };
        if *allowed != parent && !(allowed.is_empty() && parent != "try" && parent != "choose") {
            return Err(format!("<esi:{name}> inside <esi:{parent}>"));
        }
        let attr = |key: &str| {
            attrs
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        match name {
            "include" => {
                if !empty {
                    return Err("<esi:include> must be empty (/>)".into());
                }
                for (key, value) in &attrs {
                    let ok = match key.as_str() {
                        "src" | "alt" => value.starts_with("http://127.0.0.1:"),
                        "onerror" => value == "continue",
                        _ => false,
                    };
                    if !ok {
                        return Err(format!("<esi:include {key}={value:?}>"));
                    }
                }
                attr("src").ok_or("<esi:include> without src")?;
            }
            "when" if attr("test").is_none_or(str::is_empty) => {
                return Err("<esi:when> without test".into())
            }
            _ if empty => return Err(format!("<esi:{name}/> is empty")),
            _ => {}
        }
        let node = (name.to_string(), attrs, Vec::new());
        if empty {
            let (name, attrs, children) = node;
            stack.last_mut().expect("root stays").2.push(Node::Esi {
                name,
                attrs,
                children,
            });
        } else {
            stack.push(node);
        }
    }
    match stack.pop() {
        Some((root, _, nodes)) if root.is_empty() && stack.is_empty() => Ok(nodes),
        Some((open, _, _)) => Err(format!("<esi:{open}> is not closed")),
        None => unreachable!("the root is only popped here"),
    }
}

fn parse_attrs(mut text: &str) -> Result<Vec<(String, String)>, String> {
    let mut attrs = Vec::new();
    loop {
        text = text.trim_start();
        if text.is_empty() {
            return Ok(attrs);
        }
        let (key, after) = text
            .split_once("=\"")
            .ok_or_else(|| format!("attribute {text:?}"))?;
        let (value, after) = after
            .split_once('"')
            .ok_or_else(|| format!("unquoted {text:?}"))?;
        attrs.push((key.to_string(), value.to_string()));
        text = after;
    }
}

fn check_children(name: &str, children: &[Node]) -> Result<(), String> {
    let names: Vec<&str> = children
        .iter()
        .filter_map(|n| match n {
            Node::Esi { name, .. } => Some(name.as_str()),
            Node::Text(_) => None,
        })
        .collect();
    let ok = match name {
        "try" => names == ["attempt", "except"],
        "choose" => {
            let whens = names.iter().take_while(|n| **n == "when").count();
            whens > 0 && (names.len() == whens || names[whens..] == ["otherwise"])
        }
        _ => true,
    };
    ok.then_some(())
        .ok_or_else(|| format!("<esi:{name}> holds {names:?}"))
}

/// The markup, checked: any problem fails the test.
fn parse_checked(url: &str, body: &str) -> Vec<Node> {
    parse_esi(body).unwrap_or_else(|e| panic!("{url}: {e}\n{body}"))
}

/// Every `esi:` element named `name` in the tree, depth first.
fn find<'a>(nodes: &'a [Node], name: &str, found: &mut Vec<&'a Node>) {
    for node in nodes {
        if let Node::Esi {
            name: n, children, ..
        } = node
        {
            if n == name {
                found.push(node);
            }
            find(children, name, found);
        }
    }
}

fn elements<'a>(nodes: &'a [Node], name: &str) -> Vec<&'a Node> {
    let mut found = Vec::new();
    find(nodes, name, &mut found);
    found
}

fn attr<'a>(node: &'a Node, key: &str) -> Option<&'a str> {
    match node {
        Node::Esi { attrs, .. } => attrs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str()),
        Node::Text(_) => None,
    }
}

fn children(node: &Node) -> &[Node] {
    match node {
        Node::Esi { children, .. } => children,
        Node::Text(_) => &[],
    }
}

/// The text of a subtree, ESI tags left out.
fn text(nodes: &[Node]) -> String {
    nodes
        .iter()
        .map(|n| match n {
            Node::Text(t) => t.clone(),
            Node::Esi { children, .. } => text(children),
        })
        .collect()
}

/// Every `src` and `alt` of the includes in the tree.
fn include_urls(nodes: &[Node]) -> Vec<String> {
    elements(nodes, "include")
        .into_iter()
        .flat_map(|i| [attr(i, "src"), attr(i, "alt")])
        .flatten()
        .map(str::to_string)
        .collect()
}

fn service_base(demo: &Demo, name: &str) -> String {
    let (_, addr) = demo
        .services
        .iter()
        .find(|(n, _)| n == name)
        .expect("service");
    format!("http://{addr}")
}

#[test]
fn the_checker_refuses_broken_markup() {
    let ok = "<p><esi:try><esi:attempt><esi:include src=\"http://127.0.0.1:1/a\"/></esi:attempt>\
              <esi:except>x</esi:except></esi:try></p>";
    assert_eq!(
        include_urls(&parse_esi(ok).expect("valid")),
        ["http://127.0.0.1:1/a"]
    );
    for bad in [
        "<esi:includ src=\"http://127.0.0.1:1/a\"/>",
        "<esi:include src=\"/relative\"/>",
        "<esi:include alt=\"http://127.0.0.1:1/a\"/>",
        "<esi:include src=\"http://127.0.0.1:1/a\" onerror=\"ignore\"/>",
        "<esi:include src=\"http://127.0.0.1:1/a\">",
        "<esi:try><esi:attempt>a</esi:attempt></esi:try>",
        "<esi:try>text<esi:attempt>a</esi:attempt><esi:except>b</esi:except></esi:try>",
        "<esi:choose><esi:when>a</esi:when></esi:choose>",
        "<esi:choose><esi:otherwise>a</esi:otherwise></esi:choose>",
        "<esi:when test=\"1\">a</esi:when>",
        "<esi:vars>a",
        "a</esi:vars>",
        "<esi:vars><esi:try></esi:vars></esi:try>",
    ] {
        assert!(parse_esi(bad).is_err(), "{bad}");
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

    let layout = parse_checked("layout", &body);
    assert_eq!(elements(&layout, "include").len(), 120);
    let services: HashSet<String> = demo.service_urls().into_iter().collect();
    assert_eq!(services.len(), 35);
    let served: HashSet<&str> = demo.fragment_urls().iter().map(String::as_str).collect();
    let mut used = HashSet::new();
    for url in include_urls(&layout) {
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
    let fallbacks = [
        "alt=\"",
        "onerror=\"continue\"",
        "<esi:try>",
        "<esi:except>",
    ];
    for fallback in fallbacks {
        assert!(body.contains(fallback), "{fallback}");
    }
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
        assert_eq!(
            marked,
            body.contains("<esi:"),
            "{url}: marked iff it holds ESI"
        );
        if marked {
            marked_count += 1;
            for src in include_urls(&parse_checked(url, &body)) {
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
fn choose_of(url: &str, body: &str) -> (String, String, String) {
    let tree = parse_checked(url, body);
    let chooses = elements(&tree, "choose");
    assert_eq!(chooses.len(), 1, "{url}");
    let when = elements(children(chooses[0]), "when")[0];
    let otherwise = elements(children(chooses[0]), "otherwise")[0];
    let test = attr(when, "test").expect("test").to_string();
    (test, text(children(when)), text(children(otherwise)))
}

#[tokio::test]
async fn personal_content_is_chosen_by_esi_on_the_cookie() {
    let demo = start().await;
    let client = client();
    let body = |name: &str, path: &str| {
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
            (url, body)
        }
    };
    let (url, menu) = body("account", "/menu").await;
    let (test, signed_in, anonymous) = choose_of(&url, &menu);
    assert_eq!(test, "$(HTTP_COOKIE{user})");
    assert!(signed_in.contains("Hi, $(HTTP_COOKIE{user})") && signed_in.contains("Sign out"));
    assert!(anonymous.contains("Sign in") && !anonymous.contains("HTTP_COOKIE"));
    let tree = parse_checked(&url, &menu);
    let vars = text(children(elements(&tree, "vars")[0]));
    assert!(
        vars.contains(">Hi, $(HTTP_COOKIE{user})<"),
        "substituted in esi:vars: {vars}"
    );

    let (url, badge) = body("cart", "/badge").await;
    let (test, full, empty) = choose_of(&url, &badge);
    assert_eq!(test, "$(HTTP_COOKIE{cart})");
    assert!(
        full.contains("<span class=\"badge\">$(HTTP_COOKIE{cart})</span>"),
        "{full}"
    );
    assert!(empty.contains(">0</span>"), "{empty}");

    let (url, points) = body("loyalty", "/points").await;
    let (test, signed_in, anonymous) = choose_of(&url, &points);
    assert_eq!(test, "$(HTTP_COOKIE{user})");
    assert!(signed_in.starts_with("$(HTTP_COOKIE{user}), you earn"));
    assert!(anonymous.contains("Sign in"));
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
        let srcs = include_urls(&parse_checked(&url, &body));
        assert_eq!(srcs.len(), nested, "{url}");
        assert!(
            srcs.iter().all(|s| s.starts_with(on.as_str())),
            "{url}: {srcs:?}"
        );
    }
    let url = format!("{}/strip", service_base(&demo, "recently-viewed"));
    let strip = parse_checked(&url, &get(&client, &url).await.2);
    let except = elements(&strip, "except");
    assert!(text(children(except[0])).contains("Items you look at will show up here."));
}

#[tokio::test]
async fn every_include_of_the_layout_has_a_fallback_a_reader_sees() {
    let demo = start().await;
    let body = get(&client(), &demo.page_url()).await.2;
    let layout = parse_checked("layout", &body);
    // Includes in an attempt fail into their except; every other include has its own way out.
    let mut in_attempts = HashSet::new();
    for attempt in elements(&layout, "attempt") {
        in_attempts.extend(include_urls(children(attempt)));
    }
    for include in elements(&layout, "include") {
        let src = attr(include, "src").expect("src");
        assert!(
            in_attempts.contains(src) || attr(include, "onerror") == Some("continue"),
            "{src} has no fallback"
        );
    }
    let except_for = |service: &str, path: &str| -> String {
        let src = format!("{}{path}", service_base(&demo, service));
        let tries = elements(&layout, "try");
        let found = tries
            .iter()
            .find(|t| include_urls(children(t)).contains(&src));
        let except = elements(children(found.expect("in a try")), "except");
        text(children(except[0]))
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
        ("catalog", "/title", "Trailhead 2 Waterproof Hiking Jacket"),
    ];
    for (service, path, want) in visible {
        assert!(except_for(service, path).contains(want), "{service}{path}");
    }
    // alt: a static snapshot on another service, for what a page cannot lose.
    let snapshots = service_base(&demo, "static");
    let alts: Vec<&str> = elements(&layout, "include")
        .into_iter()
        .filter_map(|i| attr(i, "alt"))
        .collect();
    assert_eq!(alts.len(), 3);
    assert!(alts.iter().all(|a| a.starts_with(&snapshots)), "{alts:?}");
}

#[tokio::test]
async fn down_switch_refuses_with_503_and_recovers() {
    let demo = start().await;
    let client = client();
    let reviews = demo
        .fragment_urls()
        .iter()
        .find(|u| u.ends_with("/summary"))
        .expect("summary")
        .clone();
    assert_eq!(get(&client, &reviews).await.0, 200);
    assert!(demo.set_down("reviews", true));
    let (status, headers, _) = get(&client, &reviews).await;
    assert_eq!(status, 503);
    assert_eq!(header(&headers, "cache-control"), "no-store");
    assert!(headers.get("surrogate-control").is_none());
    assert!(demo.handle().knobs("reviews").expect("knobs").down);
    assert!(demo.set_down("reviews", false));
    assert_eq!(get(&client, &reviews).await.0, 200);
    assert_eq!(get(&client, &format!("{reviews}?down=1")).await.0, 503);
    assert!(!demo.set_down("no-such-service", true));

    assert!(demo.set_down(GATEWAY, true));
    assert_eq!(get(&client, &demo.page_url()).await.0, 503);
}

#[tokio::test]
async fn error_rate_one_answers_500_and_zero_never_does() {
    let mut config = DemoConfig::default().without_latency();
    config
        .services
        .entry("pricing".into())
        .or_default()
        .error_rate = Some(1.0);
    let demo = Demo::start(config).await.expect("starts");
    let client = client();
    let url = |suffix: &str| {
        demo.fragment_urls()
            .iter()
            .find(|u| u.ends_with(suffix))
            .expect("served")
            .clone()
    };
    for _ in 0..5 {
        let (status, headers, _) = get(&client, &url("/price")).await;
        assert_eq!(status, 500);
        assert_eq!(header(&headers, "cache-control"), "no-store");
    }
    assert_eq!(
        get(&client, &format!("{}?error_rate=0", url("/price")))
            .await
            .0,
        200
    );
    assert_eq!(
        get(&client, &format!("{}?error_rate=1", url("/stock")))
            .await
            .0,
        500
    );
    assert!(demo.handle().set_error_rate("pricing", 0.0));
    assert_eq!(get(&client, &url("/price")).await.0, 200);
    assert!(!demo.handle().set_error_rate("nope", 1.0));
}

#[tokio::test]
async fn knobs_are_set_at_runtime_and_bounded() {
    let demo = start().await;
    let client = client();
    let handle = demo.handle();
    assert!(demo.set_latency("recommendations", 5));
    assert!(!demo.set_latency("nope", 5));
    assert!(handle.set_jitter("recommendations", 0));
    assert!(handle.set_max_age("recommendations", 0));
    let knobs = handle.knobs("recommendations").expect("knobs");
    assert_eq!(
        (knobs.latency_ms, knobs.jitter_ms, knobs.max_age_s),
        (5, 0, 0)
    );
    assert!(handle.knobs("nope").is_none());
    assert!(demo.set_latency("tiles", u64::MAX));
    assert_eq!(
        handle.knobs("tiles").expect("knobs").latency_ms,
        MAX_LATENCY_MS
    );
    assert_eq!(handle.names().len(), 36);

    let trending = demo
        .fragment_urls()
        .iter()
        .find(|u| u.ends_with("/trending"))
        .expect("served")
        .clone();
    let (status, headers, _) = get(&client, &trending).await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "cache-control"), "no-store", "max_age 0");
    assert_eq!(header(&headers, "x-demo-service"), "recommendations");
    let (_, headers, _) = get(&client, &format!("{trending}?max_age_s=90&latency_ms=1")).await;
    assert_eq!(header(&headers, "cache-control"), "public, max-age=90");
    for bad in [
        "latency_ms=60001",
        "jitter_ms=x",
        "error_rate=2",
        "down=maybe",
    ] {
        assert_eq!(
            get(&client, &format!("{trending}?{bad}")).await.0,
            400,
            "{bad}"
        );
    }
}

#[tokio::test]
async fn unknown_paths_and_methods_are_refused() {
    let demo = start().await;
    let client = client();
    let base = &demo.service_urls()[0];
    assert_eq!(get(&client, &format!("{base}/nope")).await.0, 404);
    assert_eq!(
        get(&client, &format!("{}nope", demo.page_url())).await.0,
        404
    );
    let tiles = demo
        .services
        .iter()
        .find(|(n, _)| n == "tiles")
        .expect("tiles")
        .1;
    assert_eq!(
        get(&client, &format!("http://{tiles}/tile/NF-9999"))
            .await
            .0,
        404
    );
    let post = client.post(demo.page_url()).send().await.expect("answers");
    assert_eq!(post.status().as_u16(), 405);
}

#[tokio::test]
async fn gateway_sets_cookies_to_try_the_personal_fragments() {
    let demo = start().await;
    let client = client();
    let page = demo.page_url();
    let resp = client
        .get(format!("{page}login?user=Ann"))
        .send()
        .await
        .expect("answers");
    assert_eq!(resp.status().as_u16(), 303);
    assert_eq!(header(resp.headers(), "location"), "/");
    assert_eq!(
        header(resp.headers(), "set-cookie"),
        "user=Ann; Path=/; SameSite=Lax"
    );
    let bad = client
        .get(format!("{page}login?user=%3Cb%3E"))
        .send()
        .await
        .expect("answers");
    assert_eq!(bad.status().as_u16(), 400);
    let add = client
        .get(format!("{page}cart/add"))
        .header("cookie", "user=Ann; cart=2")
        .send()
        .await
        .expect("answers");
    assert_eq!(
        header(add.headers(), "set-cookie"),
        "cart=3; Path=/; SameSite=Lax"
    );
    let out = client
        .get(format!("{page}logout"))
        .send()
        .await
        .expect("answers");
    let cleared: Vec<_> = out.headers().get_all("set-cookie").iter().collect();
    assert_eq!(cleared.len(), 2);
}

#[tokio::test]
async fn start_refuses_a_bad_config() {
    let mut config = DemoConfig::default();
    config.defaults.error_rate = 2.0;
    let err = Demo::start(config).await.expect_err("refused");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    assert!(err.to_string().contains("defaults.error_rate"), "{err}");
}

#[tokio::test]
async fn shutdown_closes_every_listener() {
    let demo = start().await;
    let mut addrs: Vec<_> = demo.services.iter().map(|(_, a)| *a).collect();
    addrs.push(demo.gateway);
    demo.shutdown();
    // The aborted accept loops are dropped when the runtime next polls them: wait on that,
    // bounded, not on a clock.
    for addr in addrs {
        let mut closed = false;
        for _ in 0..1000 {
            if tokio::net::TcpStream::connect(addr).await.is_err() {
                closed = true;
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(closed, "{addr} still accepts");
    }
}
