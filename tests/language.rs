//! The ESI language through the proxy: the ESI 1.0 behaviours aligned with the spec and other
//! processors (an absent variable equals `''`, an unclosed `<!--esi` stays literal text, a query
//! parameter is read as sent), over real sockets, with the fragments the page asked for counted.

use std::sync::{Arc, Mutex};

use esi_proxy::config::Config;

use crate::support::{client, full, html, proxy, response, serve, Server, ESI, HTML, MUST};

/// An origin serving `layout` at `/page` and, at any other path, a fragment that echoes its
/// path and query as `<path?query>`; every fragment request's path and query is recorded.
async fn origin(layout: &'static str) -> (Server, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let server = serve(move |req| {
        let log = log.clone();
        async move {
            let target = req
                .uri()
                .path_and_query()
                .map_or("", |p| p.as_str())
                .to_owned();
            if req.uri().path() == "/page" {
                return response(200, &[HTML, ESI], full(layout));
            }
            log.lock().expect("not poisoned").push(target.clone());
            html(format!("<{target}>"))
        }
    })
    .await;
    (server, seen)
}

/// GETs `path` through the proxy and returns the body.
async fn body(proxy: &crate::support::Proxy, path: &str) -> String {
    let resp = tokio::time::timeout(MUST, client().get(proxy.url(path)).send())
        .await
        .expect("bounded")
        .expect("response");
    assert_eq!(resp.status(), 200, "{path}");
    resp.text().await.expect("body")
}

/// `$(QUERY_STRING{missing}) == ''` is true: the idiom fragment teams use to test for absence.
#[tokio::test]
async fn an_absent_variable_equals_the_empty_string_in_a_test() {
    const LAYOUT: &str = concat!(
        "<esi:choose><esi:when test=\"$(QUERY_STRING{tab}) == ''\">[no tab]</esi:when>",
        "<esi:otherwise>[tab]</esi:otherwise></esi:choose>",
        "<esi:choose><esi:when test=\"$(HTTP_COOKIE{user}) != ''\">[user]</esi:when>",
        "<esi:otherwise>[guest]</esi:otherwise></esi:choose>",
    );
    let (origin, _) = origin(LAYOUT).await;
    let proxy = proxy(&origin.base(), Config::default()).await;
    assert_eq!(body(&proxy, "/page").await, "[no tab][guest]");
    assert_eq!(body(&proxy, "/page?tab=").await, "[no tab][guest]");
    assert_eq!(body(&proxy, "/page?tab=x").await, "[tab][guest]");
}

/// An `<!--esi` with no `-->` is not ESI: the markup after it is sent as written and its
/// include is never fetched; a closed one is processed.
#[tokio::test]
async fn an_unclosed_esi_comment_stays_literal_text() {
    const LAYOUT: &str = concat!(
        "a<!--esi <esi:include src=\"/closed\"/>-->b",
        "<!--esi <esi:include src=\"/unclosed\"/> c",
    );
    let (origin, seen) = origin(LAYOUT).await;
    let proxy = proxy(&origin.base(), Config::default()).await;
    assert_eq!(
        body(&proxy, "/page").await,
        "a </closed>b<!--esi <esi:include src=\"/unclosed\"/> c"
    );
    assert_eq!(*seen.lock().expect("not poisoned"), vec!["/closed"]);
}

/// `$(QUERY_STRING{q})` is the value as sent: written into the page still encoded (and
/// HTML-escaped), and passed into a fragment's URL unchanged, never encoded twice.
#[tokio::test]
async fn a_query_parameter_is_read_as_sent() {
    const LAYOUT: &str = concat!(
        "<esi:vars>[$(QUERY_STRING{q})]</esi:vars>",
        "<esi:include src=\"/frag?q=$(QUERY_STRING{q})\"/>",
        "<esi:choose><esi:when test=\"$(QUERY_STRING{q}) == 'a%20b+%3Cc'\">[raw]</esi:when>",
        "<esi:otherwise>[decoded]</esi:otherwise></esi:choose>",
    );
    let (origin, seen) = origin(LAYOUT).await;
    let proxy = proxy(&origin.base(), Config::default()).await;
    assert_eq!(
        body(&proxy, "/page?q=a%20b+%3Cc").await,
        "[a%20b+%3Cc]</frag?q=a%20b+%3Cc>[raw]"
    );
    assert_eq!(
        *seen.lock().expect("not poisoned"),
        vec!["/frag?q=a%20b+%3Cc"]
    );
}

/// Functions and `matches` in tests, as fragment teams write them: the branch reads the
/// captures through `$(MATCHES{n})`, as any variable.
#[tokio::test]
async fn functions_and_matches_choose_branches_and_captures_reach_the_branch() {
    const LAYOUT: &str = concat!(
        "<esi:choose>",
        "<esi:when test=\"$lower($(QUERY_STRING{section})) matches '''^(news|sport)-(\\d+)$'''\">",
        "<esi:vars>[$(MATCHES{1}) #$(MATCHES{2})]</esi:vars></esi:when>",
        "<esi:when test=\"$(QUERY_STRING{section}) has_i 'x'\">",
        "<esi:vars>[x: $(QUERY_STRING{section})]</esi:vars></esi:when>",
        "<esi:otherwise>[other]</esi:otherwise></esi:choose>",
        "<esi:choose><esi:when test=\"['a', 'b'] has $(QUERY_STRING{v}) & $len($(QUERY_STRING{v})) == 1\">",
        "[listed]</esi:when><esi:otherwise>[unlisted]</esi:otherwise></esi:choose>",
    );
    let (origin, _) = origin(LAYOUT).await;
    let proxy = proxy(&origin.base(), Config::default()).await;
    let cases = [
        ("/page?section=NEWS-42&v=a", "[news #42][listed]"),
        ("/page?section=sport-7&v=c", "[sport #7][unlisted]"),
        ("/page?section=%3CX%3E", "[x: %3CX%3E][unlisted]"),
        ("/page?section=weather", "[other][unlisted]"),
        ("/page", "[other][unlisted]"),
    ];
    for (path, want) in cases {
        assert_eq!(body(&proxy, path).await, want, "{path}");
    }
}

/// A page whose tests would evaluate more than the page's allowance: the test that hits the
/// bound and every later one count as false, each hit is counted, and the rest of the page
/// (text, includes) is served.
#[tokio::test]
async fn the_evaluation_bound_stops_tests_and_leaves_the_page_intact() {
    // Each test evaluates 2001 nodes (`|` does not stop on a false operand); 60 of them pass
    // the default 100000 evaluations per page.
    static LAYOUT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let layout = LAYOUT.get_or_init(|| {
        let costly = format!("0{}", "|0".repeat(1000));
        let mut page = String::from("start");
        for _ in 0..60 {
            page.push_str(&format!(
                "<esi:choose><esi:when test=\"{costly}\">!</esi:when></esi:choose>"
            ));
        }
        page.push_str("<esi:choose><esi:when test=\"1==1\">[tested]</esi:when>");
        page.push_str("<esi:otherwise>[stopped]</esi:otherwise></esi:choose>");
        page.push_str("<esi:include src=\"/frag\"/>end");
        page
    });
    let (origin, seen) = origin(layout).await;
    let proxy = proxy(&origin.base(), Config::default()).await;
    assert_eq!(body(&proxy, "/page").await, "start[stopped]</frag>end");
    assert_eq!(*seen.lock().expect("not poisoned"), vec!["/frag"]);
    let hits = proxy
        .metric("esi_proxy_esi_bounds_total{bound=\"evaluations\"}")
        .expect("the hit is counted");
    // Tests 50 to 60 and the last one: 2001 nodes each, 49 fit in 100000.
    assert_eq!(hits, 12.0);
    // The budget is per page: the next page evaluates afresh.
    assert_eq!(body(&proxy, "/page").await, "start[stopped]</frag>end");
    assert_eq!(
        proxy.metric("esi_proxy_esi_bounds_total{bound=\"evaluations\"}"),
        Some(24.0)
    );
}

/// `esi:assign` in a layout: short and long forms, items by index and key, read by later
/// tests and `esi:vars` (escaped); `$(document)` in a script stays as written; an assignment
/// to a request variable is refused and changes nothing.
#[tokio::test]
async fn assigned_variables_reach_later_tests_and_vars() {
    const LAYOUT: &str = concat!(
        "<esi:assign name=\"tabs\" value=\"['home', 'news']\"/>",
        "<esi:assign name=\"tabs{1}\" value=\"'<news>'\"/>",
        "<esi:assign name=\"title\">$upper($(QUERY_STRING{t}|'shop'))</esi:assign>",
        "<esi:assign name=\"HTTP_HOST\" value=\"'evil'\"/>",
        "<esi:vars>[$(title)|$(tabs{0})|$(tabs{1})|$(HTTP_HOST)]",
        "<script>$(document).ready()</script></esi:vars>",
        "<esi:choose><esi:when test=\"$(tabs) has 'home' & $len($(tabs)) == 2\">[two]</esi:when>",
        "<esi:otherwise>[not two]</esi:otherwise></esi:choose>",
    );
    let (origin, _) = origin(LAYOUT).await;
    let proxy = proxy(&origin.base(), Config::default()).await;
    let host = proxy.addr.to_string();
    for path in ["/page?t=deals", "/page"] {
        let want_title = if path.ends_with("deals") {
            "DEALS"
        } else {
            "SHOP"
        };
        assert_eq!(
            body(&proxy, path).await,
            format!(
                "[{want_title}|home|&lt;news&gt;|{host}]<script>$(document).ready()</script>[two]"
            ),
            "{path}"
        );
    }
}

/// `esi.max_expr_evaluations` from the config bounds the page: with 10, the first test (9
/// nodes) passes and the second is stopped, read as false, and counted.
#[tokio::test]
async fn the_configured_evaluation_bound_applies() {
    const LAYOUT: &str = concat!(
        "<esi:choose><esi:when test=\"$lower('A') == 'a' & $upper('b') == 'B'\">[1]</esi:when></esi:choose>",
        "<esi:choose><esi:when test=\"1 == 1\">[2]</esi:when><esi:otherwise>[stopped]</esi:otherwise></esi:choose>",
    );
    let (origin, _) = origin(LAYOUT).await;
    let mut config = Config::default();
    config.esi.max_expr_evaluations = 10;
    let proxy = proxy(&origin.base(), config).await;
    assert_eq!(body(&proxy, "/page").await, "[1][stopped]");
    assert_eq!(
        proxy.metric("esi_proxy_esi_bounds_total{bound=\"evaluations\"}"),
        Some(1.0)
    );
}

/// `REQUEST_METHOD`, `REQUEST_PATH` and `REMOTE_ADDR` read the client's request.
#[tokio::test]
async fn request_method_path_and_remote_addr_variables() {
    const LAYOUT: &str = concat!(
        "<esi:vars>[$(REQUEST_METHOD) $(REQUEST_PATH) $(REMOTE_ADDR)]</esi:vars>",
        "<esi:choose><esi:when test=\"$(REQUEST_PATH) matches '^/page$' & $(REQUEST_METHOD) == 'GET'\">",
        "[yes]</esi:when></esi:choose>",
    );
    let (origin, _) = origin(LAYOUT).await;
    let proxy = proxy(&origin.base(), Config::default()).await;
    assert_eq!(
        body(&proxy, "/page?x=1").await,
        "[GET /page 127.0.0.1][yes]"
    );
}

/// `esi:text`: its content is sent as written, ESI and all, and nothing in it is fetched.
#[tokio::test]
async fn esi_text_content_is_sent_as_written() {
    const LAYOUT: &str =
        "x<esi:text><esi:include src=\"/never\"/> $(HTTP_HOST)</esi:text>y<esi:include src=\"/f\"/>";
    let (origin, seen) = origin(LAYOUT).await;
    let proxy = proxy(&origin.base(), Config::default()).await;
    assert_eq!(
        body(&proxy, "/page").await,
        "x<esi:include src=\"/never\"/> $(HTTP_HOST)y</f>"
    );
    assert_eq!(*seen.lock().expect("not poisoned"), vec!["/f"]);
}

/// `matchname` names the variable a test's captures are read through.
#[tokio::test]
async fn matchname_names_the_captures() {
    const LAYOUT: &str = concat!(
        "<esi:choose><esi:when test=\"$(REQUEST_PATH) matches '''^/(\\w+)$'''\" matchname=\"route\">",
        "<esi:vars>[$(route{1})|$(MATCHES{1}|'none')]</esi:vars></esi:when></esi:choose>",
    );
    let (origin, _) = origin(LAYOUT).await;
    let proxy = proxy(&origin.base(), Config::default()).await;
    assert_eq!(body(&proxy, "/page").await, "[page|none]");
}

/// Assignments in buffered documents: an ESI fragment has a scope of its own, evaluated in
/// document order; an `esi:except` branch sees the layout's variables as they were at its try.
#[tokio::test]
async fn assignments_in_esi_fragments_and_except_branches() {
    const LAYOUT: &str = concat!(
        "<esi:assign name=\"who\" value=\"'ann'\"/>",
        "<esi:try><esi:attempt><esi:include src=\"/broken\"/></esi:attempt>",
        "<esi:except><esi:vars>[except $(who)]</esi:vars></esi:except></esi:try>",
        "<esi:include src=\"/esi-frag\"/>",
    );
    const FRAGMENT: &str = concat!(
        "<esi:assign name=\"n\" value=\"$len('abc')\"/>",
        "<esi:choose><esi:when test=\"$(n) == 3\">",
        "<esi:assign name=\"n\" value=\"'three'\"/></esi:when></esi:choose>",
        "<esi:choose><esi:when test=\"$exists($(who))\">[sees the layout's]</esi:when>",
        "<esi:otherwise>[own scope]</esi:otherwise></esi:choose>",
        "<esi:choose><esi:when test=\"'x-42' matches '''(\\d+)'''\">",
        "<esi:vars>[$(n)|$(MATCHES{1})]</esi:vars></esi:when></esi:choose>",
    );
    let server = serve(|req| async move {
        match req.uri().path() {
            "/page" => response(200, &[HTML, ESI], full(LAYOUT)),
            "/esi-frag" => response(200, &[HTML, ESI], full(FRAGMENT)),
            _ => response(500, &[HTML], full("down")),
        }
    })
    .await;
    let proxy = proxy(&server.base(), Config::default()).await;
    assert_eq!(
        body(&proxy, "/page").await,
        "[except ann][own scope][three|42]"
    );
}
