//! Purge by surrogate key and soft purge, through the whole proxy on loopback: responses tag
//! cache entries with `Surrogate-Key` / `xkey`, which never reach the client; `POST
//! /_esi/purge?key=K` drops exactly the tagged fragments and layouts; `&soft=1` serves stale
//! while one fetch refreshes; the key index is bounded and shrinks as entries expire; and a
//! key purge on one node reaches the others through Redis.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use esi_proxy::config::Config;
use http::StatusCode;
use tokio::sync::Semaphore;

use crate::shared_cache::{config as node_config, Node, PATIENT_MS};
use crate::support::proxy::{client, get, Proxy};
use crate::support::redis::RedisServer;
use crate::support::{full, proxy, raw_get, response, serve, Server, ESI, HTML, MUST};

const TOKEN: &str = "keys-t0ken";

/// The fragments of `/page`: path, `Surrogate-Key`, `xkey`.
const FRAGMENTS: [(&str, &str, &str); 3] = [
    ("/frag/p1", "product-1 prices", ""),
    ("/frag/p2", "", "product-2"),
    ("/frag/plain", "", ""),
];

/// An origin whose `/page` layout (tagged `xkey: page-home`) includes [`FRAGMENTS`], every
/// response cacheable for `max_age`; each fragment's body holds how many times it was
/// fetched. `/pass` is plain HTML, not ESI, tagged both ways.
async fn origin(max_age: &'static str) -> Server {
    let counts: Arc<[AtomicUsize; 3]> = Arc::new(Default::default());
    serve(move |req| {
        let counts = Arc::clone(&counts);
        async move {
            let cc = ("cache-control", max_age);
            let path = req.uri().path();
            if path == "/page" {
                let mut layout = String::from("<main>");
                for (src, _, _) in FRAGMENTS {
                    layout.push_str(&format!("<esi:include src=\"{src}\"/>"));
                }
                layout.push_str("</main>");
                return response(200, &[HTML, ESI, cc, ("xkey", "page-home")], full(layout));
            }
            if path == "/pass" {
                let tags = [("surrogate-key", "product-1"), ("xkey", "product-1")];
                return response(200, &[HTML, cc, tags[0], tags[1]], full("plain"));
            }
            let Some(i) = FRAGMENTS.iter().position(|(src, _, _)| *src == path) else {
                return response(404, &[HTML], full("no such page"));
            };
            let n = counts[i].fetch_add(1, Ordering::SeqCst) + 1;
            let (_, key, xkey) = FRAGMENTS[i];
            let mut headers = vec![HTML, cc];
            if !key.is_empty() {
                headers.push(("surrogate-key", key));
            }
            if !xkey.is_empty() {
                headers.push(("xkey", xkey));
            }
            response(200, &headers, full(format!("[{path} v{n}]")))
        }
    })
    .await
}

fn with_token(mut config: Config) -> Config {
    config.server.admin_token = TOKEN.into();
    config
}

/// `POST /_esi/purge?{query}` with the token: status and body.
async fn purge(proxy: &Proxy, query: &str) -> (StatusCode, String) {
    let resp = client()
        .post(proxy.url(&format!("/_esi/purge?{query}")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("purge answered");
    let status = resp.status();
    (status, resp.text().await.expect("purge body"))
}

/// [`purge`], which must succeed: its JSON.
async fn purged(proxy: &Proxy, query: &str) -> serde_json::Value {
    let (status, body) = purge(proxy, query).await;
    assert_eq!(status, StatusCode::OK, "{query}: {body}");
    serde_json::from_str(&body).expect("purge JSON")
}

/// How many times the origin served each of `/page`, then [`FRAGMENTS`].
fn fetched(origin: &Server) -> [usize; 4] {
    ["/page", FRAGMENTS[0].0, FRAGMENTS[1].0, FRAGMENTS[2].0].map(|p| origin.hits_on(p))
}

/// The page through `proxy`: must be a whole 200.
async fn page(proxy: &Proxy) -> String {
    let (status, _, body) = get(&proxy.url("/page")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body.starts_with("<main>") && body.ends_with("</main>"),
        "{body}"
    );
    body
}

/// DESIGN: "`POST /_esi/purge?url=U | prefix=P | key=K`"; README: "a purge by key drops every
/// fragment and layout tagged with it, and nothing else".
#[tokio::test]
async fn a_key_purge_drops_exactly_the_tagged_entries() {
    let origin = origin("max-age=60").await;
    let proxy = proxy(&origin.base(), with_token(Config::default())).await;
    let body = page(&proxy).await;
    assert_eq!(
        body,
        "<main>[/frag/p1 v1][/frag/p2 v1][/frag/plain v1]</main>"
    );
    page(&proxy).await;
    assert_eq!(fetched(&origin), [1, 1, 1, 1], "warm: all hits");

    let done = purged(&proxy, "key=product-1").await;
    assert_eq!(done["keys"], serde_json::json!(["product-1"]), "{done}");
    assert_eq!(
        (done["mode"].as_str(), done["entries"].as_u64()),
        (Some("hard"), Some(1))
    );
    let body = page(&proxy).await;
    assert!(body.contains("[/frag/p1 v2]"), "{body}");
    assert_eq!(fetched(&origin), [1, 2, 1, 1], "only the tagged fragment");

    // Several keys: `key=` repeated, one tagging by `xkey`, one tagging the layout.
    let done = purged(&proxy, "key=product-2&key=page-home&key=nothing-tagged").await;
    assert_eq!(done["entries"], 2, "{done}");
    page(&proxy).await;
    assert_eq!(fetched(&origin), [2, 2, 2, 1], "layout and p2");

    // Several keys in one value, separated by a space (`+` in a query).
    let done = purged(&proxy, "key=prices+product-2").await;
    assert_eq!(
        done["keys"],
        serde_json::json!(["prices", "product-2"]),
        "{done}"
    );
    assert_eq!(done["entries"], 2, "{done}");
    page(&proxy).await;
    assert_eq!(fetched(&origin), [2, 3, 3, 1]);

    // An untagged fragment is reached by URL only; the purge answer counts what went.
    let done = purged(&proxy, "key=unknown").await;
    assert_eq!(done["entries"], 0, "{done}");
    let done = purged(&proxy, "url=/frag/plain").await;
    assert_eq!(
        (done["url"].as_str(), done["entries"].as_u64()),
        (Some(origin.url("/frag/plain").as_str()), Some(1))
    );
    page(&proxy).await;
    assert_eq!(fetched(&origin), [2, 3, 3, 2]);

    let hard_keys = "esi_proxy_cache_purges_total{kind=\"key\",mode=\"hard\"}";
    assert_eq!(proxy.metric(hard_keys), Some(4.0));
    let hard_urls = "esi_proxy_cache_purges_total{kind=\"url\",mode=\"hard\"}";
    assert_eq!(proxy.metric(hard_urls), Some(1.0));
}

/// DESIGN: "fragments' `Surrogate-Key` headers tag cache entries and never leave the proxy":
/// checked on the raw bytes of a composed page, a passed-through response, and the cached
/// copies of both.
#[tokio::test]
async fn surrogate_key_headers_never_reach_the_client() {
    let origin = origin("max-age=60").await;
    let proxy = proxy(&origin.base(), with_token(Config::default())).await;
    for round in ["cold", "warm"] {
        for path in ["/page", "/pass"] {
            let raw = raw_get(proxy.addr, path).await;
            let head = raw.head.to_ascii_lowercase();
            assert!(head.starts_with("http/1.1 200"), "{round} {path}: {head}");
            assert!(
                !head.contains("surrogate-key") && !head.contains("xkey"),
                "{round} {path}: {head}"
            );
            assert!(
                !head.contains("product-1") && !head.contains("page-home"),
                "{head}"
            );
        }
    }
    // The waterfall shows each fragment's keys (and the tags stay out of the page it composed).
    let resp = client()
        .get(proxy.url("/_esi/debug/page?format=json"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("waterfall");
    let text = resp.text().await.expect("waterfall body");
    let report: serde_json::Value = serde_json::from_str(&text).expect("waterfall JSON");
    let keys: Vec<_> = report["fragments"]
        .as_array()
        .expect("fragments")
        .iter()
        .map(|f| {
            (
                f["url"].as_str().unwrap_or("").to_owned(),
                f["keys"].clone(),
            )
        })
        .collect();
    assert_eq!(
        keys,
        vec![
            (
                origin.url("/frag/p1"),
                serde_json::json!(["product-1", "prices"])
            ),
            (origin.url("/frag/p2"), serde_json::json!(["product-2"])),
            (origin.url("/frag/plain"), serde_json::json!([])),
        ]
    );
    let html = client()
        .get(proxy.url("/_esi/debug/page"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("waterfall page")
        .text()
        .await
        .expect("waterfall HTML");
    assert!(
        html.contains("<td class=\"keys\">product-1 prices</td>"),
        "{html}"
    );
}

/// An origin with one fragment at `/soft/frag`, tagged `soft-key`, cacheable for a minute
/// (`extra` adds to its Cache-Control), behind the layout `/soft/page`. From its second
/// fetch on, the fragment answers only once the test adds a permit to the returned gate.
async fn gated_origin(extra: &'static str) -> (Server, Arc<Semaphore>) {
    let gate = Arc::new(Semaphore::new(0));
    let g = Arc::clone(&gate);
    let fetches = Arc::new(AtomicUsize::new(0));
    let server = serve(move |req| {
        let (gate, fetches) = (Arc::clone(&g), Arc::clone(&fetches));
        async move {
            if req.uri().path() == "/soft/page" {
                let layout = "<p><esi:include src=\"/soft/frag\"/></p>";
                let cc = ("cache-control", "max-age=60");
                return response(
                    200,
                    &[HTML, ESI, cc, ("surrogate-key", "soft-key")],
                    full(layout),
                );
            }
            let n = fetches.fetch_add(1, Ordering::SeqCst) + 1;
            if n > 1 {
                gate.acquire().await.expect("gate open").forget();
            }
            let cc = format!("max-age=60{extra}");
            let tags = ("surrogate-key", "soft-key other");
            let headers = [HTML, ("cache-control", cc.as_str()), tags];
            response(200, &headers, full(format!("v{n}")))
        }
    })
    .await;
    (server, gate)
}

/// Issue 14: "soft purge: entries become stale instead of gone, so stale-while-revalidate
/// serves them while one fetch refreshes, with no stampede". For each kind of purge, 50
/// concurrent pages after a soft purge are all served the stale copy at once while the
/// origin's one refresh is held, and the fragment is fetched exactly once more. The fragment
/// has no stale-while-revalidate of its own: the grace (`cache.soft_purge_grace_s`) serves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_soft_purge_serves_stale_while_one_fetch_refreshes() {
    for (query, extra) in [
        ("key=soft-key&soft=1", ""),
        ("url=/soft/frag&soft=1", ", stale-while-revalidate=30"),
        ("prefix=/soft/&soft=true", ""),
    ] {
        let (origin, gate) = gated_origin(extra).await;
        let proxy = proxy(&origin.base(), with_token(Config::default())).await;
        let (status, _, body) = get(&proxy.url("/soft/page")).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "<p>v1</p>"));
        assert_eq!(origin.hits_on("/soft/frag"), 1);

        let done = purged(&proxy, query).await;
        assert_eq!(done["mode"], "soft", "{query}: {done}");
        // The fragment, and for a key or prefix the layout too (a layout is never served
        // stale: a soft purge drops it).
        let want = if query.starts_with("url") { 1 } else { 2 };
        assert_eq!(done["entries"], want, "{query}: {done}");

        let pages: Vec<_> = (0..50).map(|_| get(&proxy.url("/soft/page"))).collect();
        let pages = tokio::time::timeout(MUST, futures::future::join_all(pages))
            .await
            .unwrap_or_else(|_| panic!("{query}: pages waited on the held refresh"));
        for (status, _, body) in pages {
            assert_eq!(
                (status, body.as_str()),
                (StatusCode::OK, "<p>v1</p>"),
                "{query}"
            );
        }
        // The refresh runs in the background: wait for it to reach the origin.
        tokio::time::timeout(MUST, async {
            while origin.hits_on("/soft/frag") < 2 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{query}: no refresh"));
        assert_eq!(
            origin.hits_on("/soft/frag"),
            2,
            "{query}: one refresh for 50 pages"
        );
        gate.add_permits(1);
        tokio::time::timeout(MUST, async {
            while get(&proxy.url("/soft/page")).await.2 != "<p>v2</p>" {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{query}: the refreshed copy is served"));
        assert_eq!(
            origin.hits_on("/soft/frag"),
            2,
            "{query}: still one refresh"
        );
        let series = format!(
            "esi_proxy_cache_purges_total{{kind=\"{}\",mode=\"soft\"}}",
            query.split('=').next().unwrap_or("")
        );
        assert_eq!(proxy.metric(&series), Some(1.0), "{query}");
    }
}

/// Issue 14: "the key index is bounded in memory and cleaned as entries expire". Keys over
/// the length and count bounds are dropped and counted; a tagged response the full index
/// cannot take is not stored (so a key purge never misses a copy); once entries expire the
/// index is empty again.
#[tokio::test]
async fn the_key_index_is_bounded_and_shrinks_as_entries_expire() {
    let tags: [(&str, &str); 4] = [
        ("/b/many", "a b c d"),
        ("/b/one", "e"),
        ("/b/long", "abcdefghi"),
        ("/b/full", "f"),
    ];
    // `/b/first` includes the first three, `/b/second` the last: the order they are indexed
    // in is the test's, not the scheduler's.
    let origin = serve(move |req| async move {
        let path = req.uri().path().to_owned();
        let page = match path.as_str() {
            "/b/first" => Some(&tags[..3]),
            "/b/second" => Some(&tags[3..]),
            _ => None,
        };
        if let Some(part) = page {
            let includes: String = part
                .iter()
                .map(|(src, _)| format!("<esi:include src=\"{src}\"/>"))
                .collect();
            return response(
                200,
                &[HTML, ESI, ("cache-control", "no-store")],
                full(includes),
            );
        }
        let key = tags.iter().find(|(p, _)| *p == path).map_or("", |(_, k)| k);
        let headers = [HTML, ("cache-control", "max-age=1"), ("surrogate-key", key)];
        response(200, &headers, full(format!("[{path}]")))
    })
    .await;
    let mut config = with_token(Config::default());
    config.cache.max_surrogate_key_bytes = 8;
    config.cache.max_surrogate_keys = 2;
    config.cache.max_surrogate_index_entries = 3;
    let proxy = proxy(&origin.base(), config).await;
    let load = |path: &'static str, want: &'static str| {
        let url = proxy.url(path);
        async move {
            let (status, _, body) = get(&url).await;
            assert_eq!((status, body.as_str()), (StatusCode::OK, want));
        }
    };
    for _ in 0..2 {
        load("/b/first", "[/b/many][/b/one][/b/long]").await;
        load("/b/second", "[/b/full]").await;
    }
    let hits: Vec<usize> = tags.iter().map(|(p, _)| origin.hits_on(p)).collect();
    assert_eq!(
        hits,
        [1, 1, 1, 2],
        "only the one the full index refused is fetched again"
    );
    let metrics = |series: &str| proxy.metric(series).unwrap_or(0.0);
    let dropped = |reason: &str| {
        metrics(&format!(
            "esi_proxy_surrogate_keys_dropped_total{{reason=\"{reason}\"}}"
        ))
    };
    assert_eq!(dropped("too_many"), 2.0, "c and d");
    assert_eq!(dropped("too_long"), 1.0);
    assert_eq!(dropped("index_full"), 2.0, "f, on each of its two fetches");

    // Scraping runs the stores' pending work: the gauge is exact.
    let gauge = "esi_proxy_surrogate_index_entries{cache=\"fragment\"}";
    let scrape = || async {
        let text = client()
            .get(proxy.url("/_esi/metrics"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text");
        crate::support::proxy::metric(&text, gauge)
    };
    assert_eq!(scrape().await, Some(3.0), "a, b and e");
    // The purge finds what the index holds; the refused one was never stored.
    let done = purged(&proxy, "key=b+f").await;
    assert_eq!(done["entries"], 1, "{done}");
    assert_eq!(scrape().await, Some(1.0), "e only");
    load("/b/first", "[/b/many][/b/one][/b/long]").await;
    assert_eq!(scrape().await, Some(3.0), "a, b and e again");
    // Past the one-second TTL the entries expire, and the index empties with them.
    tokio::time::timeout(MUST, async {
        while scrape().await != Some(0.0) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the index empties as its entries expire");
}

/// README: "`&soft=1` ... bad input gets a 400", and every purge needs the admin token.
#[tokio::test]
async fn key_purges_need_the_token_and_well_formed_keys() {
    let origin = origin("max-age=60").await;
    let mut config = with_token(Config::default());
    config.cache.max_surrogate_keys = 3;
    config.cache.max_surrogate_key_bytes = 16;
    let proxy = proxy(&origin.base(), config).await;
    page(&proxy).await;

    let resp = client()
        .post(proxy.url("/_esi/purge?key=product-1"))
        .send()
        .await
        .expect("answered");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let resp = client()
        .post(proxy.url("/_esi/purge?key=product-1"))
        .bearer_auth("wrong")
        .send()
        .await
        .expect("answered");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    let one_of = "400 Bad Request: purge takes exactly one of url=, prefix= or key= (key= may repeat), and soft=1\n";
    let cases: &[(&str, &str)] = &[
        ("", one_of),
        ("soft=1", one_of),
        ("key=a&url=/frag/p1", one_of),
        ("url=/frag/p1&key=a", one_of),
        ("url=/a&url=/b", one_of),
        ("key=a&soft=1&soft=1", one_of),
        ("key=a&bogus=1", one_of),
        ("key=", "400 Bad Request: key= needs a surrogate key\n"),
        ("key=+", "400 Bad Request: key= needs a surrogate key\n"),
        ("key=a&soft=2", "400 Bad Request: soft= takes 1 or 0\n"),
        (
            "key=a+b&key=c+d",
            "400 Bad Request: more keys than cache.max_surrogate_keys in one purge\n",
        ),
        (
            "key=abcdefghijklmnopq",
            "400 Bad Request: surrogate key over cache.max_surrogate_key_bytes\n",
        ),
        (
            "key=caf%C3%A9",
            "400 Bad Request: surrogate key holds a byte that is not visible ASCII, or a comma\n",
        ),
        (
            "key=a%2Cb",
            "400 Bad Request: surrogate key holds a byte that is not visible ASCII, or a comma\n",
        ),
    ];
    for (query, want) in cases {
        let (status, body) = purge(&proxy, query).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::BAD_REQUEST, *want),
            "{query}"
        );
    }
    page(&proxy).await;
    assert_eq!(
        fetched(&origin),
        [1, 1, 1, 1],
        "no refused purge dropped anything"
    );
    // `soft=0` is a hard purge.
    let done = purged(&proxy, "key=product-1&soft=0").await;
    assert_eq!(
        (done["mode"].as_str(), done["entries"].as_u64()),
        (Some("hard"), Some(1))
    );
}

/// Issue 14: "key purges and soft purges must work across nodes too": a key purge on node A
/// removes the tagged values from Redis and B's in-process copies; a soft key purge on A makes
/// B serve its copy stale while one fetch refreshes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_purge_on_one_node_reaches_the_others() {
    let redis = RedisServer::start().await;
    let origin = origin("max-age=60").await;
    let config = node_config(&origin, "keys", PATIENT_MS);
    let nodes = Node::cluster(&config, &redis, 2).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let body = a.body("/page").await;
    assert!(body.contains("[/frag/p1 v1]"), "{body}");
    let body = b.body("/page").await;
    assert!(
        body.contains("[/frag/p1 v1]"),
        "B served A's copies: {body}"
    );
    assert_eq!(fetched(&origin), [1, 1, 1, 1]);

    let done = a.purge("key=product-1+product-2").await;
    assert_eq!(done["shared_cache"]["status"], "announced", "{done}");
    assert_eq!(
        done["shared_cache"]["removed"], 2,
        "both values in Redis: {done}"
    );
    b.wait_received(1).await;
    let body = b.body("/page").await;
    assert!(
        body.contains("[/frag/p1 v2]") && body.contains("[/frag/p2 v2]"),
        "{body}"
    );
    assert_eq!(
        fetched(&origin),
        [1, 2, 2, 1],
        "B fetched only the tagged two"
    );
    let body = a.body("/page").await;
    assert!(
        body.contains("[/frag/p1 v2]"),
        "A found B's fresh copy in Redis: {body}"
    );
    assert_eq!(fetched(&origin), [1, 2, 2, 1]);

    // Soft: B keeps serving its copy, stale, while one fetch refreshes it.
    let done = a.purge("key=prices&soft=1").await;
    assert_eq!(
        (done["mode"].as_str(), done["entries"].as_u64()),
        (Some("soft"), Some(1))
    );
    assert_eq!(
        done["shared_cache"]["removed"], 1,
        "the value made stale in Redis: {done}"
    );
    b.wait_received(2).await;
    let body = b.body("/page").await;
    assert!(
        body.contains("[/frag/p1 v2]"),
        "served stale at once: {body}"
    );
    tokio::time::timeout(MUST, async {
        while !b.body("/page").await.contains("[/frag/p1 v3]") {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("B serves the refreshed copy");
    assert_eq!(fetched(&origin), [1, 3, 2, 1], "one refresh");
    // A's own copy was softened too: served stale once, refreshed from B's copy in Redis.
    tokio::time::timeout(MUST, async {
        while !a.body("/page").await.contains("[/frag/p1 v3]") {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("A serves the refreshed copy");
    assert_eq!(origin.hits_on("/frag/p1"), 3, "with no fetch of its own");
}
