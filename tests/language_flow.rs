//! ESI control flow through the proxy: `esi:foreach`/`esi:break` building includes,
//! `esi:function`/`esi:return` under the call-depth bound, and `esi:eval` running a fragment in
//! the page's scope, with its fallbacks and trust rules, over real sockets.

use std::sync::{Arc, Mutex};

use esi_proxy::config::{Config, HostConfig};

use crate::support::{client, full, response, serve, Server, ESI, HTML, MUST};

/// An origin serving `layout` at `/page`, the ESI documents of `docs` at their paths, 500 at
/// `/down*`, and at any other path a fragment echoing its path and query as `<path?query>`;
/// every request's path and query and whether it carried a Cookie is recorded.
async fn origin(
    layout: &'static str,
    docs: &'static [(&'static str, &'static str)],
) -> (Server, Arc<Mutex<Vec<String>>>) {
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
            let path = req.uri().path().to_owned();
            if path == "/page" {
                return response(200, &[HTML, ESI], full(layout));
            }
            let cookie = if req.headers().contains_key("cookie") {
                "+cookie"
            } else {
                ""
            };
            log.lock()
                .expect("not poisoned")
                .push(format!("{target}{cookie}"));
            if let Some((_, doc)) = docs.iter().find(|(p, _)| *p == path) {
                return response(200, &[HTML, ESI], full(*doc));
            }
            if path.starts_with("/down") {
                return response(500, &[HTML], full("down"));
            }
            response(200, &[HTML], full(format!("<{target}>")))
        }
    })
    .await;
    (server, seen)
}

/// GETs `path` through the proxy (with a session cookie) and returns status and body.
async fn get(proxy: &crate::support::Proxy, path: &str) -> (u16, String) {
    let resp = tokio::time::timeout(
        MUST,
        client()
            .get(proxy.url(path))
            .header("cookie", "session=s3cret")
            .send(),
    )
    .await
    .expect("bounded")
    .expect("response");
    let status = resp.status().as_u16();
    (status, resp.text().await.expect("body"))
}

fn bound(proxy: &crate::support::Proxy, name: &str) -> f64 {
    proxy
        .metric(&format!("esi_proxy_esi_bounds_total{{bound=\"{name}\"}}"))
        .unwrap_or(0.0)
}

/// A loop builds one include per item (URLs rendered with the item as it was), a nested loop
/// runs per outer item, a dictionary gives `[key, value]` pairs, and `esi:break` ends only the
/// innermost loop; the page goes on after it.
#[tokio::test]
async fn foreach_builds_includes_breaks_and_nests() {
    const LAYOUT: &str = concat!(
        "<esi:assign name=\"ids\" value=\"['a', 'b', 'c', 'd']\"/>",
        "<esi:foreach collection=\"$(ids)\" item=\"id\">",
        "<esi:choose><esi:when test=\"$(id) == 'c'\"><esi:break/></esi:when></esi:choose>",
        "<esi:include src=\"/f/$(id)\"/></esi:foreach>|",
        "<esi:foreach collection=\"[1, 2]\" item=\"i\"><esi:foreach collection=\"['x', 'y']\" item=\"j\">",
        "<esi:vars>$(i)$(j) </esi:vars><esi:break/></esi:foreach></esi:foreach>|",
        "<esi:foreach collection=\"{'k': 'v', 'm': 'n'}\" item=\"p\">",
        "<esi:vars>$(p{0})=$(p{1});</esi:vars></esi:foreach>|after",
    );
    let (origin, seen) = origin(LAYOUT, &[]).await;
    let proxy = crate::support::proxy(&origin.base(), Config::default()).await;
    let (status, body) = get(&proxy, "/page").await;
    assert_eq!(status, 200);
    assert_eq!(body, "</f/a></f/b>|1x 2x |k=v;m=n;|after");
    assert_eq!(
        *seen.lock().expect("not poisoned"),
        vec!["/f/a+cookie", "/f/b+cookie"]
    );
}

/// `esi.max_foreach_iterations` stops a loop where it is: the items before the bound ran, the
/// hit is counted, and the rest of the page is intact.
#[tokio::test]
async fn foreach_hitting_its_bound_stops_and_the_page_goes_on() {
    const LAYOUT: &str = concat!(
        "<esi:foreach collection=\"$string_split('1 2 3 4 5 6')\" item=\"n\">",
        "<esi:vars>$(n)</esi:vars></esi:foreach>|rest",
    );
    let (origin, _) = origin(LAYOUT, &[]).await;
    let mut config = Config::default();
    config.esi.max_foreach_iterations = 3;
    let proxy = crate::support::proxy(&origin.base(), config).await;
    assert_eq!(get(&proxy, "/page").await, (200, "123|rest".to_owned()));
    assert_eq!(bound(&proxy, "foreach_iterations"), 1.0);
}

/// A function returns a value computed from `$(ARGS)`; endless recursion stops at
/// `esi.max_function_depth` (counted), its expression reads as false, and the page goes on;
/// a call of an undefined function is an evaluation error the page survives.
#[tokio::test]
async fn functions_return_values_and_recursion_hits_the_depth_bound() {
    const LAYOUT: &str = concat!(
        "<esi:function name=\"shout\"><esi:assign name=\"s\" value=\"$upper($(ARGS{0}))\"/>",
        "<esi:return value=\"$(s)\"/></esi:function>",
        "<esi:function name=\"forever\"><esi:return value=\"$forever($(ARGS{0}))\"/></esi:function>",
        "<esi:assign name=\"x\" value=\"$shout('hi')\"/><esi:vars>[$(x)]</esi:vars>",
        "<esi:choose><esi:when test=\"$forever(1)\">[looped]</esi:when>",
        "<esi:otherwise>[stopped]</esi:otherwise></esi:choose>",
        "<esi:choose><esi:when test=\"$nowhere(1)\">[?]</esi:when>",
        "<esi:otherwise>[undefined]</esi:otherwise></esi:choose>|rest",
    );
    let (origin, _) = origin(LAYOUT, &[]).await;
    let mut config = Config::default();
    config.esi.max_function_depth = 4;
    let proxy = crate::support::proxy(&origin.base(), config).await;
    assert_eq!(
        get(&proxy, "/page").await,
        (200, "[HI][stopped][undefined]|rest".to_owned())
    );
    assert_eq!(bound(&proxy, "function_depth"), 1.0);
    assert_eq!(bound(&proxy, "undefined_function"), 1.0);
}

/// `esi:eval` runs the fragment in the page's scope: it reads the page's variables, and what it
/// assigns and defines is visible to the page afterwards; an include's fragment keeps its own.
#[tokio::test]
async fn eval_shares_variables_and_functions_with_the_page() {
    const LAYOUT: &str = concat!(
        "<esi:assign name=\"who\" value=\"'ann'\"/>",
        "<esi:eval src=\"/lib\"/>",
        "<esi:include src=\"/own\"/>",
        "<esi:assign name=\"y\" value=\"$twice($(set_by_lib))\"/>",
        "<esi:vars>[$(y)]</esi:vars><esi:include src=\"/f/$(set_by_lib)\"/>",
    );
    const DOCS: &[(&str, &str)] = &[
        (
            "/lib",
            concat!(
                "<esi:vars>(lib sees $(who))</esi:vars><esi:assign name=\"set_by_lib\" value=\"'z'\"/>",
                "<esi:function name=\"twice\"><esi:return value=\"$join([$(ARGS{0}), $(ARGS{0})], '')\"/></esi:function>",
            ),
        ),
        (
            "/own",
            "<esi:assign name=\"set_by_lib\" value=\"'own'\"/>(own)",
        ),
    ];
    let (origin, _) = origin(LAYOUT, DOCS).await;
    let proxy = crate::support::proxy(&origin.base(), Config::default()).await;
    assert_eq!(
        get(&proxy, "/page").await,
        (200, "(lib sees ann)(own)[zz]</f/z>".to_owned())
    );
}

/// A failed eval falls back as an include does: its `alt`, `onerror="continue"`, the enclosing
/// `esi:try`'s except; the page goes on after each.
#[tokio::test]
async fn eval_failures_fall_back_like_includes() {
    const LAYOUT: &str = concat!(
        "<esi:eval src=\"/down1\" alt=\"/alt\"/>|",
        "<esi:eval src=\"/down2\" onerror=\"continue\"/>|",
        "<esi:try><esi:attempt><esi:eval src=\"/down3\"/></esi:attempt>",
        "<esi:except>[except]</esi:except></esi:try>|",
        "<esi:vars>$(from_alt)</esi:vars>",
    );
    const DOCS: &[(&str, &str)] = &[("/alt", "<esi:assign name=\"from_alt\" value=\"'A'\"/>alt")];
    let (origin, _) = origin(LAYOUT, DOCS).await;
    let proxy = crate::support::proxy(&origin.base(), Config::default()).await;
    assert_eq!(
        get(&proxy, "/page").await,
        (200, "alt||[except]|A".to_owned())
    );
}

/// ESI evaluated from a host allowed to send ESI but not trusted sees no credentials: not the
/// cookie, not the page's variables (which may hold what the cookie gave), and its includes
/// carry no Cookie; what it assigns still reaches the page.
#[tokio::test]
async fn eval_from_an_untrusted_host_sees_no_credentials() {
    const DOC: &str = concat!(
        "<esi:vars>(cookie=$(HTTP_COOKIE{session}) page=$(token))</esi:vars>",
        "<esi:include src=\"/f/x?t=$(token)\"/><esi:assign name=\"from_untrusted\" value=\"'u'\"/>",
        "<esi:function name=\"peek\"><esi:return value=\"$(HTTP_COOKIE{session})\"/></esi:function>",
    );
    let (other, seen) = origin("", &[("/doc", DOC)]).await;
    let layout: &'static str = Box::leak(
        format!(
            concat!(
                "<esi:assign name=\"token\" value=\"$(HTTP_COOKIE{{session}})\"/>",
                "<esi:eval src=\"{}/doc\"/>",
                "<esi:assign name=\"p\" value=\"$peek()\"/>",
                "<esi:vars>[$(from_untrusted)|$(p)|$(token)]</esi:vars>",
            ),
            other.base()
        )
        .into_boxed_str(),
    );
    let (origin, _) = origin(layout, &[]).await;
    let mut config = Config::default();
    config.fetch.hosts = vec![HostConfig {
        url: other.base(),
        trusted: false,
        esi: true,
        private_network: true,
        http2: false,
        breaker: None,
    }];
    let proxy = crate::support::proxy(&origin.base(), config).await;
    let (status, body) = get(&proxy, "/page").await;
    assert_eq!(status, 200);
    assert_eq!(body, "(cookie= page=)</f/x?t=>[u||s3cret]");
    assert_eq!(*seen.lock().expect("not poisoned"), vec!["/doc", "/f/x?t="]);
}

/// The proxy and the reference evaluation (`Template::render`) give the same page for
/// documents using loops, breaks, functions and evals, with the same fragments.
#[tokio::test]
async fn the_proxy_matches_the_reference_evaluation() {
    const DOCS: &[(&str, &str)] = &[(
        "/lib",
        "<esi:assign name=\"n\" value=\"2\"/><esi:function name=\"wrap\"><esi:return value=\"$join(['(', $(ARGS{0}), ')'], '')\"/></esi:function>lib",
    )];
    const LAYOUTS: &[&str] = &[
        "<esi:foreach collection=\"['a', 'b', 'c']\" item=\"x\"><esi:include src=\"/f/$(x)\"/><esi:choose><esi:when test=\"$(x) == 'b'\"><esi:break/></esi:when></esi:choose></esi:foreach>!",
        "<esi:eval src=\"/lib\"/><esi:foreach collection=\"$string_split('p q')\" item=\"w\"><esi:assign name=\"v\" value=\"$wrap($(w))\"/><esi:vars>$(v)$(n)</esi:vars></esi:foreach>",
        "<esi:try><esi:attempt><esi:foreach collection=\"[1, 2]\" item=\"i\"><esi:include src=\"/f/$(i)\"/><esi:include src=\"/down\"/></esi:foreach></esi:attempt><esi:except>[x]</esi:except></esi:try>",
        "<esi:function name=\"c\"><esi:return value=\"$len($(ARGS))\"/></esi:function><esi:assign name=\"k\" value=\"$c(1, 2, 3)\"/><esi:vars>$(k)</esi:vars><esi:eval src=\"/down\" alt=\"/lib\"/>",
    ];
    for layout in LAYOUTS {
        let (origin, _) = origin(layout, DOCS).await;
        let proxy = crate::support::proxy(&origin.base(), Config::default()).await;
        let (status, got) = get(&proxy, "/page").await;
        assert_eq!(status, 200, "{layout}");
        let template = esi_proxy::esi::parse(
            bytes::Bytes::from_static(layout.as_bytes()),
            &esi_proxy::esi::ParseOptions::default(),
        )
        .expect("lenient");
        let mut fetch = |url: &str| -> Option<bytes::Bytes> {
            match DOCS.iter().find(|(p, _)| *p == url) {
                Some((_, doc)) => Some(bytes::Bytes::from_static(doc.as_bytes())),
                None if url.starts_with("/down") => None,
                None => Some(bytes::Bytes::from(format!("<{url}>"))),
            }
        };
        let mut want = Vec::new();
        template
            .render(
                &esi_proxy::esi::Request::new(),
                &esi_proxy::esi::VarPolicy::default(),
                &mut fetch,
                &mut want,
            )
            .expect("renders");
        assert_eq!(got, String::from_utf8(want).expect("utf-8"), "{layout}");
    }
}
