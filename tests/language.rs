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
