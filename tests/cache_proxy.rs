//! Caching through the whole proxy: a warm page touches no upstream, 200 concurrent pages make
//! one fragment fetch, purge by URL and prefix, `--no-cache`, and config hot reload (valid and
//! broken files) while load runs with zero failed requests.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use esi_proxy::config::{CacheRule, Config};
use http::StatusCode;
use tokio::sync::Notify;

use crate::support::{client, esi, get, html, proxy, serve, Server, MUST};

/// An origin whose layout at `/page` includes `/frag/a` and `/frag/b`, both cacheable for a
/// minute, counting requests per path.
async fn counting_origin(layout_cc: &'static str) -> (Server, Arc<[AtomicUsize; 3]>) {
    let counts: Arc<[AtomicUsize; 3]> = Arc::new([
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
    ]);
    let c = Arc::clone(&counts);
    let origin = serve(move |req| {
        let counts = Arc::clone(&c);
        async move {
            let (slot, mut resp) = match req.uri().path() {
                "/page" => (
                    0,
                    esi(
                        "<h1>page</h1><esi:include src=\"/frag/a\"/><esi:include src=\"/frag/b\"/>",
                    ),
                ),
                "/frag/a" => (1, html("A")),
                _ => (2, html("B")),
            };
            counts[slot].fetch_add(1, Ordering::SeqCst);
            let cc = if slot == 0 { layout_cc } else { "max-age=60" };
            resp.headers_mut()
                .insert("cache-control", http::HeaderValue::from_static(cc));
            resp
        }
    })
    .await;
    (origin, counts)
}

fn hits(counts: &[AtomicUsize; 3]) -> [usize; 3] {
    [0, 1, 2].map(|i| counts[i].load(Ordering::SeqCst))
}

/// README: "A fully warm page makes no upstream request and parses nothing".
#[tokio::test]
async fn a_warm_page_touches_no_upstream() {
    let (origin, counts) = counting_origin("public, max-age=60").await;
    let proxy = proxy(&origin.base(), Config::default()).await;
    for _ in 0..3 {
        let (status, headers, body) = get(&proxy.url("/page")).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "<h1>page</h1>AB"));
        assert!(headers.get("surrogate-control").is_none());
    }
    assert_eq!(
        hits(&counts),
        [1, 1, 1],
        "layout and fragments fetched once each"
    );
    let (_, headers, _) = get(&proxy.url("/page")).await;
    let timing = headers
        .get("server-timing")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(timing.contains("cache hit"), "{timing}");
}

/// README: "`serve --no-cache` turns it off".
#[tokio::test]
async fn no_cache_turns_every_cache_off() {
    let (origin, counts) = counting_origin("public, max-age=60").await;
    let mut config = Config::default();
    config.cache.enabled = false;
    let proxy = proxy(&origin.base(), config).await;
    for _ in 0..3 {
        let (_, _, body) = get(&proxy.url("/page")).await;
        assert_eq!(body, "<h1>page</h1>AB");
    }
    assert_eq!(hits(&counts), [3, 3, 3]);
}

/// README: "Concurrent misses share one upstream fetch".
#[tokio::test]
async fn two_hundred_concurrent_pages_make_one_fragment_fetch() {
    // The fragment is held until every page request has reached the proxy's cache.
    let gate = Arc::new(Notify::new());
    let fetches = Arc::new(AtomicUsize::new(0));
    let (g, f) = (Arc::clone(&gate), Arc::clone(&fetches));
    let origin = serve(move |req| {
        let (gate, fetches) = (Arc::clone(&g), Arc::clone(&f));
        async move {
            if req.uri().path() == "/page" {
                return esi("[<esi:include src=\"/shared\"/>]");
            }
            fetches.fetch_add(1, Ordering::SeqCst);
            gate.notified().await;
            let mut r = html("shared");
            r.headers_mut().insert(
                "cache-control",
                http::HeaderValue::from_static("max-age=60"),
            );
            r
        }
    })
    .await;
    // Room for a slow machine: the one fetch waits for all 200 pages, far inside its deadline.
    let mut config = Config::default();
    config.fetch.fragment_timeout_ms = 60_000;
    config.fetch.page_timeout_ms = 60_000;
    let proxy = proxy(&origin.base(), config).await;
    let url = proxy.url("/page");
    let c = client();
    let pages: Vec<_> = (0..200)
        .map(|_| {
            let (c, url) = (c.clone(), url.clone());
            tokio::spawn(async move { c.get(&url).send().await?.text().await })
        })
        .collect();
    // Wait until the other 199 pages have joined the first one's fetch, then let it answer. (A
    // page whose layout reached the origin may not have reached the cache yet: counting origin
    // requests is not enough.)
    tokio::time::timeout(MUST, async {
        while proxy.metric("esi_proxy_cache_coalesced_total") < Some(199.0) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("199 pages wait on one fetch");
    gate.notify_one();
    for page in pages {
        let body = tokio::time::timeout(MUST, page)
            .await
            .expect("done")
            .expect("joined")
            .expect("ok");
        assert_eq!(body, "[shared]");
    }
    assert_eq!(fetches.load(Ordering::SeqCst), 1);
    assert_eq!(
        proxy.metric("esi_proxy_cache_coalesced_total"),
        Some(199.0),
        "every page but the first waited on the first one's fetch, and no other"
    );
    assert_eq!(origin.hits(), 201, "200 layouts and one fragment");
}

/// README: "`POST /_esi/purge?url=U` or `?prefix=P` (drops cached fragments and layouts)".
#[tokio::test]
async fn purge_by_url_and_prefix_refetches_next_time() {
    let (origin, counts) = counting_origin("public, max-age=60").await;
    let mut config = Config::default();
    config.server.admin_token = "t0ken".into();
    let proxy = proxy(&origin.base(), config).await;
    let _ = get(&proxy.url("/page")).await;
    assert_eq!(hits(&counts), [1, 1, 1]);
    let purge = |q: &str| {
        client()
            .post(proxy.url(&format!("/_esi/purge?{q}")))
            .bearer_auth("t0ken")
            .send()
    };
    let resp = client()
        .post(proxy.url("/_esi/purge?url=/frag/a"))
        .send()
        .await
        .expect("ok");
    assert_eq!(
        resp.status(),
        StatusCode::UNAUTHORIZED,
        "purge needs the token"
    );
    let resp = purge("url=/frag/a").await.expect("ok");
    assert_eq!(resp.status(), StatusCode::OK);
    let _ = get(&proxy.url("/page")).await;
    assert_eq!(
        hits(&counts),
        [1, 2, 1],
        "only the purged fragment is refetched"
    );
    let resp = purge(&format!(
        "prefix={}",
        urlencode(&format!("{}/", origin.base()))
    ))
    .await
    .expect("ok");
    assert_eq!(resp.status(), StatusCode::OK);
    let (_, _, body) = get(&proxy.url("/page")).await;
    assert_eq!(body, "<h1>page</h1>AB");
    assert_eq!(
        hits(&counts),
        [2, 3, 2],
        "a prefix purge drops layout and fragments"
    );
    let resp = purge("bogus=1").await.expect("ok");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// README: "TTLs, first match wins: 1. a `[[cache.rules]]` entry".
#[tokio::test]
async fn ttl_rule_in_config_beats_the_response_headers() {
    let fetches = Arc::new(AtomicUsize::new(0));
    let f = Arc::clone(&fetches);
    let origin = serve(move |req| {
        let fetches = Arc::clone(&f);
        async move {
            if req.uri().path() == "/page" {
                return esi("<esi:include src=\"/fragments/header/x\"/>");
            }
            fetches.fetch_add(1, Ordering::SeqCst);
            let mut r = html("H");
            r.headers_mut().insert(
                "cache-control",
                http::HeaderValue::from_static("no-cache, max-age=0"),
            );
            r
        }
    })
    .await;
    let mut config = Config::default();
    config.cache.rules.push(CacheRule {
        pattern: "/fragments/header/*".into(),
        ttl_s: 300,
        stale_while_revalidate_s: None,
        stale_if_error_s: None,
        key_headers: Vec::new(),
    });
    let proxy = proxy(&origin.base(), config).await;
    for _ in 0..3 {
        assert_eq!(get(&proxy.url("/page")).await.2, "H");
    }
    assert_eq!(fetches.load(Ordering::SeqCst), 1);
}

/// README: "A fully warm page makes no upstream request and parses nothing".
#[tokio::test]
async fn a_cached_esi_fragment_is_parsed_once() {
    // The nested fragment holds one lenient problem (an unknown element), counted per parse.
    let origin = serve(|req| async move {
        let mut r = match req.uri().path() {
            "/page" => esi("<esi:include src=\"/nested\"/>"),
            "/nested" => esi("N<esi:bogus/><esi:include src=\"/leaf\"/>"),
            _ => html("L"),
        };
        r.headers_mut().insert(
            "cache-control",
            http::HeaderValue::from_static("public, max-age=60"),
        );
        r
    })
    .await;
    let proxy = proxy(&origin.base(), Config::default()).await;
    for _ in 0..3 {
        assert_eq!(get(&proxy.url("/page")).await.2, "NL");
    }
    assert_eq!(
        origin.hits(),
        3,
        "layout, nested and leaf fetched once each"
    );
    let metrics = proxy.metrics.render();
    assert!(
        metrics.contains("esi_proxy_esi_problems_total 1\n"),
        "{metrics}"
    );
}
