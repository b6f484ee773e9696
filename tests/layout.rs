//! The layout end to end: `esi:choose` (driven by a cookie and by the query), `esi:vars` and
//! `esi:inline` in a layout, composed cold and again from the layout cache; and the layout's
//! failure paths: no response in time, a body cut by the origin, an encoding the proxy cannot
//! decode, the size cap, and gzip, deflate and br layouts whole and cut short.

use bytes::Bytes;
use esi_proxy::config::Config;
use http::StatusCode;
use tokio::io::AsyncWriteExt;

use crate::support::{
    brotli, client, deflate, full, get, gzip, html, proxy, raw_get, read_head, response, serve,
    serve_raw, Proxy, Server, ESI, HTML, MUST,
};

/// A layout that uses every ESI element the streaming composer handles itself: a `choose` whose
/// branches hold includes, a nested `choose` and a `try`, `vars` with a default, and an `inline`.
const LAYOUT: &str = concat!(
    "<h1>shop</h1>",
    "<esi:choose>",
    "<esi:when test=\"$(HTTP_COOKIE{user})=='ann'\">[member:<esi:include src=\"/f/member\"/>",
    "<esi:choose><esi:when test=\"$(QUERY_STRING{tab})=='reviews'\">(reviews)</esi:when>",
    "<esi:otherwise>(details)</esi:otherwise></esi:choose>]</esi:when>",
    "<esi:when test=\"$(HTTP_COOKIE{user})\">[other:<esi:include src=\"/f/other\"/>",
    "<esi:try><esi:attempt><esi:include src=\"/f/other-try\"/></esi:attempt>",
    "<esi:except>x</esi:except></esi:try>]</esi:when>",
    "<esi:otherwise>[guest:<esi:include src=\"/f/guest\"/>]</esi:otherwise>",
    "</esi:choose>",
    "|<esi:vars>hi $(HTTP_COOKIE{user}|'stranger') &amp; $(QUERY_STRING{tab}|'none')</esi:vars>|",
    "<esi:inline name=\"/inline/promo\" fetchable=\"no\">in:<esi:include src=\"/f/inline\"/></esi:inline>",
    "|end",
);

/// An origin serving [`LAYOUT`] at `/page` (cacheable, shared, for a minute) and `<path>` for
/// each fragment (not cacheable, so every page asks for the ones its branch holds).
async fn shop() -> Server {
    serve(|req| async move {
        match req.uri().path() {
            "/page" => response(
                200,
                &[HTML, ESI, ("cache-control", "public, max-age=60")],
                full(LAYOUT),
            ),
            p => html(format!("<{p}>")),
        }
    })
    .await
}

/// GETs `path` with `cookie` (when given).
async fn page(proxy: &Proxy, path: &str, cookie: Option<&str>) -> (StatusCode, String) {
    let mut req = client().get(proxy.url(path));
    if let Some(cookie) = cookie {
        req = req.header("cookie", cookie);
    }
    let resp = tokio::time::timeout(MUST, req.send())
        .await
        .expect("bounded")
        .expect("response");
    let status = resp.status();
    (status, resp.text().await.expect("body"))
}

/// README: "`choose`/`when`/`otherwise`, `vars`, `inline`" work in the proxy, and "a fully warm
/// page ... parses nothing": the same answers from a layout parsed while it streamed and from
/// the parsed layout in the cache; a cookie picks the `choose` branch; includes in branches not
/// taken are never fetched.
#[tokio::test]
async fn choose_vars_and_inline_in_a_layout_cold_and_from_the_layout_cache() {
    let origin = shop().await;
    let proxy = proxy(&origin.base(), Config::default()).await;
    // (path, cookie, page)
    let cases: &[(&str, Option<&str>, &str)] = &[
        (
            "/page?tab=reviews",
            Some("user=ann"),
            "<h1>shop</h1>[member:</f/member>(reviews)]|hi ann &amp; reviews|in:</f/inline>|end",
        ),
        (
            "/page?tab=reviews",
            None,
            "<h1>shop</h1>[guest:</f/guest>]|hi stranger &amp; reviews|in:</f/inline>|end",
        ),
        (
            "/page?tab=reviews",
            Some("theme=dark; user=bob"),
            "<h1>shop</h1>[other:</f/other></f/other-try>]|hi bob &amp; reviews|in:</f/inline>|end",
        ),
        (
            "/page?tab=reviews",
            Some("user=ann"),
            "<h1>shop</h1>[member:</f/member>(reviews)]|hi ann &amp; reviews|in:</f/inline>|end",
        ),
        (
            "/page",
            Some("user=ann"),
            "<h1>shop</h1>[member:</f/member>(details)]|hi ann &amp; none|in:</f/inline>|end",
        ),
        (
            "/page",
            Some("user=<b>"),
            "<h1>shop</h1>[other:</f/other></f/other-try>]|hi &lt;b&gt; &amp; none|in:</f/inline>|end",
        ),
    ];
    for (i, (path, cookie, want)) in cases.iter().enumerate() {
        let (status, body) = page(&proxy, path, *cookie).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, *want),
            "request {i}: {path} {cookie:?}"
        );
    }
    // Three were parsed as they streamed: one per URL, and for the first URL one per request
    // with and without credentials (kept apart in the cache). The other three pages were
    // composed from a cached layout.
    assert_eq!(origin.hits_on("/page"), 3);
    assert_eq!(
        proxy.metric("esi_proxy_cache_hits_total{cache=\"layout\"}"),
        Some(3.0)
    );
    let fetched = |p: &str| origin.hits_on(p);
    assert_eq!(
        [
            fetched("/f/member"),
            fetched("/f/guest"),
            fetched("/f/other"),
            fetched("/f/other-try"),
            fetched("/f/inline"),
        ],
        [3, 1, 2, 2, 6],
        "only the branch taken fetches its includes"
    );
    assert_eq!(
        proxy.metric("esi_proxy_esi_problems_total").unwrap_or(0.0),
        0.0,
        "the layout is clean ESI"
    );
}

// === failure paths ===

/// An origin that answers `/page` with `head` and `body` written raw, then closes.
async fn raw_origin(head: String, body: Vec<u8>) -> Server {
    serve_raw(move |mut s| {
        let (head, body) = (head.clone(), body.clone());
        async move {
            if read_head(&mut s).await.is_some() {
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(&body).await;
                let _ = s.shutdown().await;
            }
        }
    })
    .await
}

/// A config whose fragment and page deadlines (60 s) are far past [`MUST`]: a test that
/// finishes cannot have been finished by them.
fn patient() -> Config {
    let mut config = Config::default();
    config.fetch.fragment_timeout_ms = 60_000;
    config.fetch.page_timeout_ms = 60_000;
    config
}

/// README: "time (... `fetch.layout_timeout_ms` ...)": an origin that never answers gives a 504
/// when the layout deadline passes.
#[tokio::test]
async fn a_layout_with_no_response_in_time_is_a_504() {
    let origin = serve(|_| async {
        futures::future::pending::<()>().await;
        html("never")
    })
    .await;
    let mut config = patient();
    config.fetch.layout_timeout_ms = 200;
    let proxy = proxy(&origin.base(), config).await;
    let (status, _, body) = get(&proxy.url("/page")).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::GATEWAY_TIMEOUT, "504 Gateway Timeout\n")
    );
}

/// A layout the origin cuts off (it promised more bytes than it sent): what arrived goes out,
/// and the response is aborted rather than ended as if whole.
#[tokio::test]
async fn a_layout_body_cut_by_the_origin_aborts_the_page() {
    let body = b"<p>before</p><p>af".to_vec();
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\nsurrogate-control: content=\"ESI/1.0\"\r\ncontent-length: {}\r\n\r\n",
        body.len() + 100
    );
    let origin = raw_origin(head, body).await;
    let proxy = proxy(&origin.base(), patient()).await;
    let raw = raw_get(proxy.addr, "/page").await;
    assert!(raw.head.starts_with("HTTP/1.1 200 OK"), "{}", raw.head);
    assert_eq!(String::from_utf8_lossy(&raw.body), "<p>before</p><p>af");
    assert!(!raw.complete, "a cut layout must not end as a whole page");
}

/// A cut layout whose first byte would come after an include that stalls: the failure arrives
/// before the head, so it is a clean 502.
#[tokio::test]
async fn a_layout_cut_before_anything_was_sent_is_a_502() {
    let stall = serve(|_| async {
        futures::future::pending::<()>().await;
        html("never")
    })
    .await;
    let body = format!(
        "<esi:include src=\"{}/stall\"/><p>after the include</p>",
        stall.base()
    )
    .into_bytes();
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\nsurrogate-control: content=\"ESI/1.0\"\r\ncontent-length: {}\r\n\r\n",
        body.len() + 100
    );
    let origin = raw_origin(head, body).await;
    let mut config = patient();
    config.fetch.hosts.push(esi_proxy::config::HostConfig {
        url: stall.base(),
        trusted: false,
        esi: false,
        private_network: true,
        http2: false,
        breaker: None,
    });
    let proxy = proxy(&origin.base(), config).await;
    let (status, _, body) = get(&proxy.url("/page")).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::BAD_GATEWAY, "502 Bad Gateway\n")
    );
}

/// An origin serving `/page` marked as ESI with `Content-Encoding: encoding` and `body` (an
/// include of a stalling fragment first, so a failure reaches the client before any byte); every
/// other path is a fragment that never answers.
async fn encoded_origin(encoding: &'static str, body: Vec<u8>) -> Server {
    let body = Bytes::from(body);
    serve(move |req| {
        let body = body.clone();
        async move {
            if req.uri().path() != "/page" {
                futures::future::pending::<()>().await;
            }
            response(
                200,
                &[HTML, ESI, ("content-encoding", encoding)],
                full(body),
            )
        }
    })
    .await
}

/// README: "`max_layout_bytes`": a plain layout over the cap is refused with a 502 before any
/// byte of it is sent.
#[tokio::test]
async fn a_plain_layout_over_the_size_cap_is_a_502() {
    let mut layout = b"<esi:include src=\"/stall\"/>".to_vec();
    layout.extend(std::iter::repeat_n(b'x', 4096));
    let origin = encoded_origin("identity", layout).await;
    let mut config = patient();
    config.fetch.max_layout_bytes = 1024;
    let proxy = proxy(&origin.base(), config).await;
    let (status, _, body) = get(&proxy.url("/page")).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::BAD_GATEWAY, "502 Bad Gateway\n")
    );
}

/// A layout in an encoding the proxy cannot decode is a 502, never composed from encoded bytes.
#[tokio::test]
async fn a_layout_in_an_unsupported_encoding_is_a_502() {
    let origin = encoded_origin("zstd", b"(zstd bytes)".to_vec()).await;
    let proxy = proxy(&origin.base(), patient()).await;
    let (status, _, body) = get(&proxy.url("/page")).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::BAD_GATEWAY, "502 Bad Gateway\n")
    );
    assert_eq!(origin.hits(), 1, "the stalling include was never fetched");
}

/// gzip, deflate and br layouts are decoded and composed; the same layouts cut short (a
/// well-framed body that holds only the first half of the compressed stream) are refused, never
/// composed as if whole.
#[tokio::test]
async fn encoded_layouts_whole_and_cut_short() {
    let text = format!("<p>{}</p>", "lorem ipsum ".repeat(400));
    let layout = format!("{text}<esi:include src=\"/f\"/>");
    /// A `Content-Encoding` and how to encode a body with it.
    type Encoder = (&'static str, fn(&[u8]) -> Vec<u8>);
    let encoders: [Encoder; 3] = [("gzip", gzip), ("deflate", deflate), ("br", brotli)];
    for (encoding, encode) in encoders {
        let encoded = Bytes::from(encode(layout.as_bytes()));
        let origin = serve(move |req| {
            let encoded = encoded.clone();
            async move {
                let body = match req.uri().path() {
                    "/whole" => encoded,
                    "/cut" => encoded.slice(..encoded.len() / 2),
                    _ => return html("F"),
                };
                response(
                    200,
                    &[HTML, ESI, ("content-encoding", encoding)],
                    full(body),
                )
            }
        })
        .await;
        let proxy = proxy(&origin.base(), patient()).await;
        let (status, headers, body) = get(&proxy.url("/whole")).await;
        assert_eq!(status, StatusCode::OK, "{encoding}");
        assert_eq!(body, format!("{text}F"), "{encoding}");
        assert!(headers.get("content-encoding").is_none(), "{encoding}");

        let raw = raw_get(proxy.addr, "/cut").await;
        let refused = raw.head.starts_with("HTTP/1.1 502") || !raw.complete;
        assert!(
            refused,
            "{encoding}: a layout cut short was composed as if whole: {}\n{:?}",
            raw.head,
            String::from_utf8_lossy(&raw.body)
        );
        assert!(
            text.as_bytes().starts_with(&raw.body) || raw.head.starts_with("HTTP/1.1 502"),
            "{encoding}: only decoded layout bytes are sent"
        );
    }
}

/// A cached layout counts against `cache.layout_capacity_bytes` for its includes as well as its
/// text: 768 bytes and the layout's URL each, for the parsed include and what is kept of it
/// between requests.
#[tokio::test]
async fn a_cached_layouts_includes_count_against_the_layout_cache_bound() {
    let layout: String = (0..50)
        .map(|i| format!("<esi:include src=\"/f/{i}\"/>"))
        .collect();
    let text_bytes = layout.len() as f64;
    let origin = serve(move |req| {
        let layout = layout.clone();
        async move {
            match req.uri().path() {
                "/page" => {
                    let cached = ("cache-control", "public, max-age=600");
                    response(200, &[HTML, ESI, cached], full(layout))
                }
                _ => html("x"),
            }
        }
    })
    .await;
    let mut config = Config::default();
    config.server.admin_from_loopback = true;
    let proxy = proxy(&origin.base(), config).await;
    for _ in 0..2 {
        assert_eq!(
            page(&proxy, "/page", None).await,
            (StatusCode::OK, "x".repeat(50))
        );
    }
    let held = tokio::time::timeout(MUST, async {
        loop {
            let (_, _, text) = get(&proxy.url("/_esi/metrics")).await;
            match crate::support::proxy::metric(&text, "esi_proxy_layout_cache_bytes") {
                Some(bytes) if bytes > 0.0 => return bytes,
                _ => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
        }
    })
    .await
    .expect("the layout is stored");
    // 768 bytes and the layout's URL (origin and path, as keys hold it) per include.
    let url_bytes = format!("{}/page", origin.base()).len() as f64;
    let includes = 50.0 * (768.0 + url_bytes);
    assert!(
        held >= text_bytes + includes && held < text_bytes + includes + 2048.0,
        "{held} bytes for {text_bytes} bytes of text and 50 includes"
    );
    assert_eq!(
        origin.hits_on("/page"),
        1,
        "the second page came from the layout cache"
    );
}
