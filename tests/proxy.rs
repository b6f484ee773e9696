//! The composition proxy end to end: real origin and fragment servers on loopback, the proxy
//! started with `server::run`, a real HTTP client. Concurrency and streaming are proven with
//! gates (a fragment that answers only when the test says so), never with timing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use esi_proxy::config::Config;
use futures::StreamExt;
use http::StatusCode;
use tokio::sync::{Barrier, Notify};

use crate::support::{
    client, esi, full, get, html, proxy, response, serve, stream, Streamed, ESI, HTML, MUST,
};

fn cfg() -> Config {
    Config::default()
}

/// README: "a response marked `Surrogate-Control: content="ESI/1.0"` (HTML only) is composed ... in document order"; "`Surrogate-Control` is removed before the response leaves the proxy".
#[tokio::test]
async fn composes_includes_in_document_order_and_cleans_headers() {
    let frags = serve(|req| async move {
        let name = req.uri().path().trim_start_matches("/f/").to_owned();
        html(format!("[{name}]"))
    })
    .await;
    let f = frags.base();
    let layout = format!(
        "<html><esi:include src=\"{f}/f/a\"/>-<esi:include src=\"{f}/f/b\"/>-<esi:include src=\"{f}/f/c\"/></html>"
    );
    let origin = serve(move |_| {
        let layout = layout.clone();
        async move {
            let mut r = esi(layout);
            r.headers_mut()
                .insert("x-layout", http::HeaderValue::from_static("kept"));
            r.headers_mut()
                .insert("cache-control", http::HeaderValue::from_static("max-age=5"));
            r
        }
    })
    .await;
    let mut config = cfg();
    config.fetch.hosts.push(esi_proxy::config::HostConfig {
        url: f.clone(),
        trusted: false,
        esi: false,
        private_network: true,
        http2: false,
        breaker: None,
    });
    let proxy = proxy(&origin.base(), config).await;
    let (status, headers, body) = get(&proxy.url("/page")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "<html>[a]-[b]-[c]</html>");
    assert!(headers.get("surrogate-control").is_none());
    assert!(
        headers.get("content-length").is_none(),
        "composed bodies are chunked"
    );
    assert_eq!(
        headers.get("x-layout").map(|v| v.as_bytes()),
        Some(&b"kept"[..])
    );
    // Private by default (no esi.shareable_paths); the layout's max-age stays.
    assert_eq!(
        headers.get("cache-control").map(|v| v.as_bytes()),
        Some(&b"private, max-age=5"[..])
    );
    assert!(headers
        .get("server-timing")
        .is_some_and(|v| v.to_str().is_ok_and(|s| s.starts_with("layout;dur="))));
    assert_eq!(frags.hits(), 3);
}

/// README: "The origin's host is always allowed".
#[tokio::test]
async fn relative_src_resolves_against_the_layout_and_origin_is_allowed() {
    let origin = serve(|req| async move {
        match req.uri().path() {
            "/shop/page" => esi("<esi:include src=\"part\"/>|<esi:include src=\"/abs\"/>"),
            "/shop/part" => html("P"),
            "/abs" => html("A"),
            _ => response(404, &[("content-type", "text/plain")], full("nope")),
        }
    })
    .await;
    let proxy = proxy(&origin.base(), cfg()).await;
    let (_, _, body) = get(&proxy.url("/shop/page")).await;
    assert_eq!(body, "P|A");
}

/// README: "all of a page's fragments are in flight at once".
#[tokio::test]
async fn all_fragments_of_a_page_are_in_flight_at_once() {
    // Each fragment answers only once all 20 requests have arrived: a proxy that fetched them
    // one after another would never finish.
    const N: usize = 20;
    let barrier = Arc::new(Barrier::new(N));
    let origin = serve(move |req| {
        let barrier = Arc::clone(&barrier);
        async move {
            if req.uri().path() == "/page" {
                let layout: String = (0..N)
                    .map(|i| format!("<esi:include src=\"/f/{i}\"/>"))
                    .collect();
                return esi(layout);
            }
            barrier.wait().await;
            html(format!("{},", req.uri().path().trim_start_matches("/f/")))
        }
    })
    .await;
    let proxy = proxy(&origin.base(), cfg()).await;
    let (_, _, body) = tokio::time::timeout(MUST, get(&proxy.url("/page")))
        .await
        .expect("fan-out is concurrent");
    let want: String = (0..N).map(|i| format!("{i},")).collect();
    assert_eq!(body, want);
}

/// README: "the page streams to the browser in document order as each part is ready".
#[tokio::test]
async fn first_bytes_reach_the_client_before_a_slow_fragment_completes() {
    let gate = Arc::new(Notify::new());
    let g = Arc::clone(&gate);
    let origin = serve(move |req| {
        let gate = Arc::clone(&g);
        async move {
            match req.uri().path() {
                "/page" => esi("<h1>Head</h1><esi:include src=\"/slow\"/><p>tail</p>"),
                _ => {
                    gate.notified().await;
                    html("SLOW")
                }
            }
        }
    })
    .await;
    let proxy = proxy(&origin.base(), cfg()).await;
    // The head and the first bytes come while the slow fragment is held.
    let page = Streamed::first(&proxy.url("/page"), b"<h1>Head</h1>").await;
    gate.notify_one();
    assert_eq!(page.rest().await.expect("whole"), b"SLOW<p>tail</p>");
}

/// README: "each include starts fetching the moment its tag is parsed".
#[tokio::test]
async fn includes_start_while_the_layout_is_still_arriving() {
    // The origin holds back the second half of the layout until the first include's request
    // has reached the fragment service.
    let seen = Arc::new(Notify::new());
    let s = Arc::clone(&seen);
    let origin = serve(move |req| {
        let seen = Arc::clone(&s);
        async move {
            match req.uri().path() {
                "/page" => {
                    let parts = futures::stream::iter([0, 1]).then(move |i| {
                        let seen = Arc::clone(&seen);
                        async move {
                            if i == 0 {
                                Ok(Bytes::from_static(b"A<esi:include src=\"/first\"/>B"))
                            } else {
                                seen.notified().await;
                                Ok(Bytes::from_static(b"C<esi:include src=\"/second\"/>D"))
                            }
                        }
                    });
                    response(200, &[HTML, ESI], stream(parts))
                }
                "/first" => {
                    seen.notify_one();
                    html("1")
                }
                _ => html("2"),
            }
        }
    })
    .await;
    let proxy = proxy(&origin.base(), cfg()).await;
    let (_, _, body) = tokio::time::timeout(MUST, get(&proxy.url("/page")))
        .await
        .expect("no deadlock");
    assert_eq!(body, "A1BC2D");
}

/// README: "Failed fragments take their `alt`, `onerror="continue"`, `esi:except`, or the configured policy".
#[tokio::test]
async fn fragment_failures_take_their_fallbacks() {
    let origin = serve(|req| async move {
        match req.uri().path() {
            "/page" => esi(concat!(
                "[<esi:include src=\"/500\" alt=\"/ok\"/>]",
                "[<esi:include src=\"/404\" onerror=\"continue\"/>]",
                "[<esi:try><esi:attempt>A<esi:include src=\"/500\"/></esi:attempt><esi:except>E</esi:except></esi:try>]",
                "[<esi:include src=\"/302\"/>]",
                "[<esi:include src=\"/ok\"/>]",
            )),
            "/ok" => html("ok"),
            "/404" => response(404, &[("content-type", "text/html")], full("not found page")),
            "/302" => {
                let mut r = response(302, &[("content-type", "text/html")], full("moved"));
                r.headers_mut().insert("location", http::HeaderValue::from_static("/ok"));
                r
            }
            _ => response(500, &[("content-type", "text/html")], full("boom")),
        }
    })
    .await;
    let proxy = proxy(&origin.base(), cfg()).await;
    let (status, _, body) = get(&proxy.url("/page")).await;
    assert_eq!(status, StatusCode::OK);
    // The 302 is a failure with no fallback: the default policy leaves its slot empty.
    assert_eq!(body, "[ok][][E][][ok]");
    let metrics = proxy.metrics.render();
    assert!(
        metrics.contains("esi_proxy_fallbacks_total{kind=\"alt\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("esi_proxy_fallbacks_total{kind=\"continue\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("esi_proxy_fallbacks_total{kind=\"except\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("esi_proxy_fallbacks_total{kind=\"empty\"} 1"),
        "{metrics}"
    );
}

/// README: "time (`fetch.fragment_timeout_ms` ...)".
#[tokio::test]
async fn slow_fragment_times_out_into_its_alt() {
    let origin = serve(|req| async move {
        match req.uri().path() {
            "/page" => esi("<esi:include src=\"/slow\" alt=\"/fast\"/>"),
            "/slow" => {
                tokio::time::sleep(Duration::from_secs(2)).await;
                html("slow")
            }
            _ => html("fast"),
        }
    })
    .await;
    let mut config = cfg();
    config.fetch.fragment_timeout_ms = 100;
    let proxy = proxy(&origin.base(), config).await;
    let (_, _, body) = get(&proxy.url("/page")).await;
    assert_eq!(body, "fast");
}

/// README: "time (`fetch.fragment_timeout_ms` ...)".
#[tokio::test]
async fn never_ending_trickle_is_cut_by_the_fragment_deadline() {
    let origin = serve(|req| async move {
        match req.uri().path() {
            "/page" => esi("a<esi:include src=\"/trickle\" onerror=\"continue\"/>b"),
            _ => response(
                200,
                &[HTML],
                stream(futures::stream::unfold((), |()| async {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Some((Ok(Bytes::from_static(b"x")), ()))
                })),
            ),
        }
    })
    .await;
    let mut config = cfg();
    config.fetch.fragment_timeout_ms = 200;
    let proxy = proxy(&origin.base(), config).await;
    let (_, _, body) = tokio::time::timeout(MUST, get(&proxy.url("/page")))
        .await
        .expect("bounded");
    assert_eq!(
        body, "ab",
        "no partial bytes of a failed fragment in the page"
    );
}

/// README: "Everything else streams through untouched"; "the proxy composes only marked HTML".
#[tokio::test]
async fn non_esi_responses_pass_through_untouched() {
    let origin = serve(|req| async move {
        match req.uri().path() {
            "/plain.html" => html("<esi:include src=\"/x\"/> not processed"),
            "/data.json" => {
                let json = "{\"a\":\"<esi:include src='/x'/>\"}";
                response(
                    200,
                    &[("content-type", "application/json"), ESI],
                    full(json),
                )
            }
            _ => response(404, &[("content-type", "text/plain")], full("missing")),
        }
    })
    .await;
    let proxy = proxy(&origin.base(), cfg()).await;
    let (status, headers, body) = get(&proxy.url("/plain.html")).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "<esi:include src=\"/x\"/> not processed")
    );
    assert_eq!(
        headers.get("content-length").map(|v| v.as_bytes()),
        Some(&b"37"[..])
    );
    let (_, headers, body) = get(&proxy.url("/data.json")).await;
    assert_eq!(
        body, "{\"a\":\"<esi:include src='/x'/>\"}",
        "only HTML is processed"
    );
    assert!(headers.get("surrogate-control").is_none());
    let (status, _, body) = get(&proxy.url("/nothing")).await;
    assert_eq!((status, body.as_str()), (StatusCode::NOT_FOUND, "missing"));
}

/// README: "Everything else streams through untouched".
#[tokio::test]
async fn ten_megabyte_download_streams_without_buffering() {
    // The origin sends 1 MiB, then waits until the client has received bytes: a proxy that
    // buffered the whole body would never deliver them.
    const CHUNK: usize = 64 * 1024;
    const TOTAL: usize = 10 * 1024 * 1024;
    let received = Arc::new(Notify::new());
    let r = Arc::clone(&received);
    let origin = serve(move |_| {
        let received = Arc::clone(&r);
        async move {
            let chunks = futures::stream::iter(0..TOTAL / CHUNK).then(move |i| {
                let received = Arc::clone(&received);
                async move {
                    if i == 16 {
                        received.notified().await;
                    }
                    Ok(Bytes::from(vec![(i % 251) as u8; CHUNK]))
                }
            });
            let length = TOTAL.to_string();
            let headers = [
                ("content-type", "application/octet-stream"),
                ("content-length", length.as_str()),
            ];
            response(200, &headers, stream(chunks))
        }
    })
    .await;
    let proxy = proxy(&origin.base(), cfg()).await;
    let resp = client()
        .get(proxy.url("/big.bin"))
        .send()
        .await
        .expect("response");
    assert_eq!(resp.content_length(), Some(TOTAL as u64));
    let mut body = resp.bytes_stream();
    let mut total = 0usize;
    let mut sum = 0u64;
    let mut notified = false;
    while let Some(chunk) = tokio::time::timeout(MUST, body.next())
        .await
        .expect("streaming, not buffered")
    {
        let chunk = chunk.expect("ok");
        sum += chunk.iter().map(|b| u64::from(*b)).sum::<u64>();
        total += chunk.len();
        if !notified {
            received.notify_one();
            notified = true;
        }
    }
    assert_eq!(total, TOTAL);
    let want: u64 = (0..TOTAL / CHUNK)
        .map(|i| (i % 251) as u64 * CHUNK as u64)
        .sum();
    assert_eq!(sum, want);
}

/// README: "Everything else streams through untouched".
///
/// The 304 is marked as ESI and HTML, so the rule that keeps 1xx, 204 and 304 out of composition
/// is what leaves it untouched (composing it would drop its ETag, as a composed page's headers
/// do).
#[tokio::test]
async fn head_and_304_keep_their_headers() {
    let origin = serve(|req| async move {
        if req.headers().contains_key("if-none-match") {
            return response(304, &[HTML, ESI, ("etag", "\"v1\"")], full(""));
        }
        let mut r = esi("<esi:include src=\"/x\"/>0123456789");
        r.headers_mut()
            .insert("content-length", http::HeaderValue::from_static("33"));
        r
    })
    .await;
    let proxy = proxy(&origin.base(), cfg()).await;
    let resp = client().head(proxy.url("/p")).send().await.expect("head");
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers().get("surrogate-control").is_none());
    assert!(
        resp.headers().get("content-length").is_none(),
        "the layout's length is not the composed page's"
    );
    let resp = client()
        .get(proxy.url("/p"))
        .header("if-none-match", "\"v1\"")
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(
        resp.headers().get("etag").map(|v| v.as_bytes()),
        Some(&b"\"v1\""[..])
    );
    assert!(
        resp.headers().get("surrogate-control").is_none(),
        "Surrogate-Control never leaves the proxy"
    );
    assert!(
        resp.headers().get("server-timing").is_none(),
        "not composed: a composed page carries Server-Timing"
    );
    assert_eq!(resp.text().await.expect("body"), "");
}

/// README: "Every request goes to the origin".
#[tokio::test]
async fn requests_reach_the_origin_with_method_body_and_clean_headers() {
    let origin = serve(|req| async move {
        let mut lines: Vec<String> = req
            .headers()
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "host" | "accept" | "content-length"))
            .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap_or("?")))
            .collect();
        lines.sort();
        let head = format!("{} {}\n{}\n", req.method(), req.uri(), lines.join("\n"));
        let body = http_body_util::BodyExt::collect(req.into_body())
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let text = format!("{head}body={}", String::from_utf8_lossy(&body));
        response(200, &[("content-type", "text/plain")], full(text))
    })
    .await;
    let proxy = proxy(&origin.base(), cfg()).await;
    let text = client()
        .post(proxy.url("/submit?a=1&b=two"))
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "secret")
        .header("x-forwarded-for", "6.6.6.6")
        .header("surrogate-capability", "forged=\"ESI/1.0\"")
        .header("x-app", "kept")
        .header("accept-encoding", "gzip, zstd")
        .body("payload")
        .send()
        .await
        .expect("post")
        .text()
        .await
        .expect("text");
    assert!(text.starts_with("POST /submit?a=1&b=two\n"), "{text}");
    assert!(text.contains("x-app: kept"), "{text}");
    assert!(
        text.contains("accept-encoding: gzip\n"),
        "only decodable encodings reach the origin: {text}"
    );
    assert!(text.contains("x-forwarded-for: 127.0.0.1\n"), "{text}");
    assert!(text.contains("x-forwarded-proto: http"), "{text}");
    assert!(
        !text.contains("x-forwarded-host"),
        "no site names: the client's Host is told to no one: {text}"
    );
    assert!(
        text.contains("surrogate-capability: esi-proxy=\"ESI/1.0\""),
        "{text}"
    );
    assert!(!text.contains("x-hop"), "{text}");
    assert!(!text.contains("6.6.6.6"), "{text}");
    assert!(!text.contains("forged"), "{text}");
    assert!(text.ends_with("body=payload"), "{text}");
}

/// README: "fan-out (`esi.max_includes` ...)".
#[tokio::test]
async fn include_loops_and_fan_out_bombs_are_bounded() {
    let fetches = Arc::new(AtomicUsize::new(0));
    let f = Arc::clone(&fetches);
    let origin = serve(move |req| {
        let fetches = Arc::clone(&f);
        async move {
            match req.uri().path() {
                "/loop" => esi("L<esi:include src=\"/self\" onerror=\"continue\"/>"),
                // A fragment that includes itself: composed, then stopped.
                "/self" => {
                    fetches.fetch_add(1, Ordering::SeqCst);
                    esi("S<esi:include src=\"/self\" onerror=\"continue\"/>")
                }
                "/bomb" => esi("<esi:include src=\"/wide\"/>".repeat(10)),
                // Each fragment includes ten more: 10^5 without a cap.
                "/wide" => {
                    fetches.fetch_add(1, Ordering::SeqCst);
                    esi("w<esi:include src=\"/wide2\"/>".repeat(10))
                }
                _ => {
                    fetches.fetch_add(1, Ordering::SeqCst);
                    esi("<esi:include src=\"/wide\"/>".repeat(10))
                }
            }
        }
    })
    .await;
    let mut config = cfg();
    config.esi.max_includes = 50;
    let proxy = proxy(&origin.base(), config).await;
    let (status, _, body) = get(&proxy.url("/loop")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "LS"));
    assert_eq!(
        fetches.swap(0, Ordering::SeqCst),
        1,
        "the loop is stopped before a second fetch"
    );
    let (status, _, _) = tokio::time::timeout(MUST, get(&proxy.url("/bomb")))
        .await
        .expect("bounded");
    assert_eq!(status, StatusCode::OK);
    assert!(
        fetches.load(Ordering::SeqCst) <= 50,
        "fetched {} fragments",
        fetches.load(Ordering::SeqCst)
    );
    let metrics = proxy.metrics.render();
    assert!(metrics.contains("outcome=\"loop\""), "{metrics}");
    assert!(metrics.contains("outcome=\"limit\""), "{metrics}");
}

/// Regression: a layout marked with several capabilities (`content="ESI/1.0 ESI-Inline/1.0"`,
/// targeted, or among other directives) was passed through with its raw `<esi:include>`, while
/// a fragment with the same marker was composed. Layouts and fragments now share one parser.
#[tokio::test]
async fn layouts_are_recognised_as_esi_by_the_same_marker_parser_as_fragments() {
    let markers = [
        "content=\"ESI/1.0 ESI-Inline/1.0\"",
        "max-age=60, content=\"ESI/1.0\";esi-proxy",
        "no-store, Content = \"esi/1.0\"",
    ];
    let origin = serve(move |req| async move {
        if req.uri().path() == "/f" {
            return html("fragment");
        }
        let n: usize = req
            .uri()
            .path()
            .trim_start_matches('/')
            .parse()
            .unwrap_or(0);
        let mut r = html("<p><esi:include src=\"/f\"/></p>");
        r.headers_mut().insert(
            "surrogate-control",
            http::HeaderValue::from_static(markers[n]),
        );
        r
    })
    .await;
    let proxy = proxy(&origin.base(), cfg()).await;
    for (n, marker) in markers.iter().enumerate() {
        let (status, headers, body) = get(&proxy.url(&format!("/{n}"))).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, "<p>fragment</p>"),
            "{marker}"
        );
        assert!(headers.get("surrogate-control").is_none(), "{marker}");
    }
}
