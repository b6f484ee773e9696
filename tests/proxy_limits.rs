//! The proxy's failure paths, bounds and guards end to end: broken fragment peers, the error
//! policy before and after the head is sent, allowlists and private addresses, trust of
//! credentials, page deadline and size, header size, concurrency, client disconnects, encoded
//! layouts, admin endpoints.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use esi_proxy::config::{Config, HostConfig};
use futures::StreamExt;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::support::{
    client, esi, full, get, gzip, html, proxy, proxy_with_lookup, raw_get, read_head, response,
    serve, serve_raw, stream, OnDrop, Server, StaticLookup, Streamed, ESI, HTML, MUST,
};

/// An origin serving `layout` at `/page` and `html(path)` elsewhere.
async fn origin_with(layout: String) -> Server {
    serve(move |req| {
        let layout = layout.clone();
        async move {
            match req.uri().path() {
                "/page" => esi(layout),
                p => html(format!("<{p}>")),
            }
        }
    })
    .await
}

fn host(url: &str, trusted: bool, private_network: bool) -> HostConfig {
    HostConfig {
        url: url.to_owned(),
        trusted,
        esi: false,
        private_network,
        http2: false,
        breaker: None,
    }
}

/// README: "size (`fetch.max_fragment_bytes` after decoding ...)"; "Failed fragments take their `alt`".
#[tokio::test]
async fn reset_short_and_oversized_fragments_fall_back_without_partial_bytes() {
    // Each peer promises 1000 bytes: one sends 500 and closes, one sends 500 and resets.
    let short = serve_raw(|mut s| async move {
        if read_head(&mut s).await.is_some() {
            let head = "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: 1000\r\n\r\n";
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(&[b'x'; 500]).await;
        }
    })
    .await;
    let reset = serve_raw(|mut s| async move {
        if read_head(&mut s).await.is_some() {
            let head = "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ntransfer-encoding: chunked\r\n\r\n1f4\r\n";
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(&[b'y'; 500]).await;
            // SO_LINGER 0 is how a test makes the close a TCP reset.
            #[allow(deprecated)]
            let _ = s.set_linger(Some(Duration::ZERO));
        }
    })
    .await;
    let big = serve(|_| async { html(vec![b'z'; 64 * 1024]) }).await;
    let layout = format!(
        "1<esi:include src=\"{}/s\" alt=\"/alt-short\"/>2<esi:include src=\"{}/r\" alt=\"/alt-reset\"/>3<esi:include src=\"{}/b\" alt=\"/alt-big\"/>4",
        short.base(),
        reset.base(),
        big.base()
    );
    let origin = origin_with(layout).await;
    let mut config = Config::default();
    config.fetch.max_fragment_bytes = 16 * 1024;
    for url in [short.base(), reset.base(), big.base()] {
        config.fetch.hosts.push(host(&url, false, true));
    }
    let proxy = proxy(&origin.base(), config).await;
    let (status, _, body) = get(&proxy.url("/page")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "1</alt-short>2</alt-reset>3</alt-big>4");
    let metrics = proxy.metrics.render();
    assert!(
        metrics.contains("esi_proxy_fragment_failures_total{kind=\"truncated\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("esi_proxy_fragment_failures_total{kind=\"too_large\"} 1"),
        "{metrics}"
    );
}

/// README: "What a failed include yields outside `esi:try` is `esi.on_error`: `"empty"` (default) or `"fail"`".
#[tokio::test]
async fn fail_policy_gives_502_before_the_head_and_aborts_after_it() {
    let origin = serve(|req| async move {
        match req.uri().path() {
            "/early" => esi("<esi:include src=\"/down\"/>after"),
            "/late" => esi("before<esi:include src=\"/down\"/>after"),
            _ => response(503, &[("content-type", "text/html")], full("down")),
        }
    })
    .await;
    let mut config = Config::default();
    config.esi.on_error = "fail".into();
    let proxy = proxy(&origin.base(), config).await;
    let (status, _, body) = get(&proxy.url("/early")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(
        !body.contains("down"),
        "the body shows no internals: {body}"
    );
    match Streamed::open(&proxy.url("/late")).await.rest().await {
        Err((got, _)) => assert_eq!(got, b"before"),
        Ok(got) => panic!(
            "a broken page must not end as if it were whole; got {:?}",
            String::from_utf8_lossy(&got)
        ),
    }
}

/// README: "other fragment hosts are allowed ... only by `[[fetch.hosts]]` entries. Names that resolve to loopback, private, link-local or metadata addresses are refused unless the entry allows it".
#[tokio::test]
async fn hosts_outside_the_allowlist_and_private_addresses_are_never_dialed() {
    let outside = serve(|_| async { html("SECRET") }).await;
    let named = serve(|_| async { html("NAMED") }).await;
    let layout = format!(
        "a<esi:include src=\"{}/x\" onerror=\"continue\"/>b<esi:include src=\"http://169.254.169.254/latest/meta-data/\" onerror=\"continue\"/>c<esi:include src=\"http://evil.test:{}/x\" onerror=\"continue\"/>d<esi:include src=\"http://user:pw@{}/x\" onerror=\"continue\"/>e",
        outside.base(),
        named.addr.port(),
        outside.addr,
    );
    let origin = origin_with(layout).await;
    let mut config = Config::default();
    // Listed by name, but the name resolves to loopback and the entry does not allow that.
    config.fetch.hosts.push(host(
        &format!("http://evil.test:{}", named.addr.port()),
        false,
        false,
    ));
    let lookup = StaticLookup(HashMap::from([("evil.test".to_owned(), vec![named.addr])]));
    let proxy = proxy_with_lookup(&origin.base(), config, Arc::new(lookup)).await;
    let (status, _, body) = get(&proxy.url("/page")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "abcde"));
    assert_eq!(outside.connections().await, 0);
    assert_eq!(named.connections().await, 0);
    let metrics = proxy.metrics.render();
    assert!(
        metrics.contains("esi_proxy_fragment_failures_total{kind=\"refused\"} 4"),
        "{metrics}"
    );
}

/// README: "The origin's host is always allowed and trusted (its fragments get the client's `Cookie` and `Authorization`); other fragment hosts are allowed, and trusted, only by `[[fetch.hosts]]` entries".
#[tokio::test]
async fn credentials_reach_trusted_hosts_only() {
    let seen = |tag: &'static str| {
        move |req: http::Request<hyper::body::Incoming>| async move {
            let cookie = req
                .headers()
                .get("cookie")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_owned();
            let auth = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_owned();
            let lang = req
                .headers()
                .get("accept-language")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_owned();
            let range = req
                .headers()
                .get("range")
                .map_or("-", |_| "RANGE")
                .to_owned();
            html(format!("{tag}:{cookie}:{auth}:{lang}:{range};"))
        }
    };
    let trusted = serve(seen("trusted")).await;
    let untrusted = serve(seen("untrusted")).await;
    let layout = format!(
        "<esi:include src=\"/own\"/><esi:include src=\"{}/t\"/><esi:include src=\"{}/u\"/>",
        trusted.base(),
        untrusted.base()
    );
    let origin = serve(move |req| {
        let layout = layout.clone();
        let own = seen("origin");
        async move {
            if req.uri().path() == "/page" {
                esi(layout)
            } else {
                own(req).await
            }
        }
    })
    .await;
    let mut config = Config::default();
    config.fetch.hosts.push(host(&trusted.base(), true, true));
    config
        .fetch
        .hosts
        .push(host(&untrusted.base(), false, true));
    let proxy = proxy(&origin.base(), config).await;
    let body = client()
        .get(proxy.url("/page"))
        .header("cookie", "sid=42")
        .header("authorization", "Bearer t")
        .header("accept-language", "de")
        .header("range", "bytes=0-10")
        .send()
        .await
        .expect("ok")
        .text()
        .await
        .expect("text");
    assert_eq!(
        body,
        "origin:sid=42:Bearer t:de:-;trusted:sid=42:Bearer t:de:-;untrusted:-:-:de:-;"
    );
}

/// README: "`fetch.page_timeout_ms` for the whole page, after which what is unfinished takes its fallback".
#[tokio::test]
async fn page_deadline_gives_unfinished_fragments_their_fallback() {
    let origin = serve(|req| async move {
        match req.uri().path() {
            // maxwait lets these fragments wait longer than the page may.
            "/page" => esi("[<esi:include src=\"/slow\" maxwait=\"5000\" onerror=\"continue\"/>][<esi:try><esi:attempt><esi:include src=\"/slow\" maxwait=\"5000\"/></esi:attempt><esi:except>late</esi:except></esi:try>]"),
            _ => {
                tokio::time::sleep(Duration::from_secs(2)).await;
                html("slow")
            }
        }
    })
    .await;
    let mut config = Config::default();
    config.fetch.fragment_timeout_ms = 100;
    config.fetch.page_timeout_ms = 300;
    let proxy = proxy(&origin.base(), config).await;
    let (_, _, body) = tokio::time::timeout(MUST, get(&proxy.url("/page")))
        .await
        .expect("bounded");
    assert_eq!(body, "[][late]");
}

/// README: "size (... `max_page_bytes` ...)": the parts that fit go out whole, the page stops
/// at the bound and the response is cut off, not ended as if whole.
#[tokio::test]
async fn page_size_bound_aborts_the_response() {
    let origin = serve(|req| async move {
        match req.uri().path() {
            "/page" => esi("<esi:include src=\"/f\"/>".repeat(8)),
            _ => html(vec![b'f'; 10_000]),
        }
    })
    .await;
    let mut config = Config::default();
    config.fetch.max_page_bytes = 40_000;
    let proxy = proxy(&origin.base(), config).await;
    let raw = raw_get(proxy.addr, "/page").await;
    assert!(raw.head.starts_with("HTTP/1.1 200 OK"), "{}", raw.head);
    assert!(
        !raw.complete,
        "an over-size page is cut off, not ended cleanly"
    );
    assert_eq!(
        (raw.body.len(), raw.body.iter().all(|b| *b == b'f')),
        (40_000, true),
        "the four fragments that fit, and not a byte more"
    );
}

/// An origin whose `/page` and `/page2` hold `per_page` includes of `/f/<page>/<n>`, each fragment
/// stalling past the page deadline, and a config whose page deadline is 2 s. No fetch ends
/// before the deadline, so the requests that reach the origin are exactly the fetches the
/// proxy had in flight at once: fewer than the bound if it fetched one after another, more if
/// it let more through.
async fn stalling_origin(per_page: usize) -> (Server, Config) {
    let origin = serve(move |req| async move {
        let path = req.uri().path();
        if path.starts_with("/page") {
            // Distinct per page: the cache would let pages share one fetch of the same URL.
            let layout: String = (0..per_page)
                .map(|n| format!("<esi:include src=\"/f{path}/{n}\"/>"))
                .collect();
            return esi(format!("[{layout}]"));
        }
        futures::future::pending::<()>().await;
        html("never")
    })
    .await;
    let mut config = Config::default();
    config.fetch.fragment_timeout_ms = 2000;
    config.fetch.page_timeout_ms = 2000;
    (origin, config)
}

/// README: "concurrency (`fetch.max_concurrent_per_page` ...)": a page's fetches run exactly
/// that many at a time.
#[tokio::test]
async fn per_page_concurrency_is_bounded() {
    let (origin, mut config) = stalling_origin(12).await;
    config.fetch.max_concurrent_per_page = 3;
    let proxy = proxy(&origin.base(), config).await;
    let (status, _, body) = get(&proxy.url("/page")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "[]"));
    assert_eq!(
        origin.hits() - 1,
        3,
        "as many fetches in flight as the bound, no more"
    );
}

/// README: "concurrency (... `fetch.max_concurrent`)": the process-wide bound holds across
/// pages, however many each page may run.
#[tokio::test]
async fn process_wide_concurrency_is_bounded_across_pages() {
    let (origin, mut config) = stalling_origin(3).await;
    config.fetch.max_concurrent = 4;
    let proxy = proxy(&origin.base(), config).await;
    let (first, second) = tokio::join!(get(&proxy.url("/page")), get(&proxy.url("/page2")));
    assert_eq!((first.2.as_str(), second.2.as_str()), ("[]", "[]"));
    assert_eq!(
        origin.hits() - 2,
        4,
        "as many fetches in flight as the bound, no more, over both pages"
    );
}

/// README: "`fetch.page_timeout_ms` for the whole page, after which what is unfinished takes its
/// fallback", also when the unfinished include is still waiting for a concurrency slot: page B
/// gives up on the slot at its own deadline while page A still holds it.
#[tokio::test]
async fn the_page_deadline_passes_while_waiting_for_a_concurrency_slot() {
    let b_first_gone = Arc::new(Notify::new());
    let hold_started = Arc::new(Notify::new());
    let b_rest = Arc::new(Notify::new());
    let hold_gone = Arc::new(AtomicBool::new(false));
    let (f, h, r, g) = (
        Arc::clone(&b_first_gone),
        Arc::clone(&hold_started),
        Arc::clone(&b_rest),
        Arc::clone(&hold_gone),
    );
    let origin = serve(move |req| {
        let (b_first_gone, hold_started, b_rest, hold_gone) = (
            Arc::clone(&f),
            Arc::clone(&h),
            Arc::clone(&r),
            Arc::clone(&g),
        );
        async move {
            match req.uri().path() {
                // B's second include arrives only once A holds the one slot.
                "/b" => {
                    let parts = futures::stream::iter([0, 1]).then(move |i| {
                        let b_rest = Arc::clone(&b_rest);
                        async move {
                            if i == 0 {
                                Ok(Bytes::from_static(
                                    b"b1<esi:include src=\"/slow\" onerror=\"continue\"/>",
                                ))
                            } else {
                                b_rest.notified().await;
                                Ok(Bytes::from_static(
                                    b"b2<esi:include src=\"/never\" onerror=\"continue\"/>b3",
                                ))
                            }
                        }
                    });
                    response(200, &[HTML, ESI], stream(parts))
                }
                "/a" => esi("a<esi:include src=\"/hold\" maxwait=\"60000\" onerror=\"continue\"/>"),
                // Cut by B's fragment deadline (1 s): B is that far into its page.
                "/slow" => {
                    let _gone = OnDrop(b_first_gone);
                    futures::future::pending::<()>().await;
                    html("never")
                }
                // A's own: its deadline is at least 1 s later than B's.
                "/hold" => {
                    struct Flag(Arc<AtomicBool>);
                    impl Drop for Flag {
                        fn drop(&mut self) {
                            self.0.store(true, Ordering::SeqCst);
                        }
                    }
                    let _gone = Flag(hold_gone);
                    hold_started.notify_one();
                    futures::future::pending::<()>().await;
                    html("never")
                }
                _ => html("NEVER"),
            }
        }
    })
    .await;
    let mut config = Config::default();
    config.fetch.max_concurrent = 1;
    config.fetch.fragment_timeout_ms = 1000;
    config.fetch.page_timeout_ms = 2000;
    let proxy = proxy(&origin.base(), config).await;
    let b = tokio::spawn(get(&proxy.url("/b")));
    tokio::time::timeout(MUST, b_first_gone.notified())
        .await
        .expect("B's first include times out");
    let a = tokio::spawn(get(&proxy.url("/a")));
    tokio::time::timeout(MUST, hold_started.notified())
        .await
        .expect("A takes the slot");
    b_rest.notify_one();
    let (status, _, body) = b.await.expect("joined");
    assert_eq!((status, body.as_str()), (StatusCode::OK, "b1b2b3"));
    assert!(
        !hold_gone.load(Ordering::SeqCst),
        "B ended at its deadline while A still held the slot"
    );
    assert_eq!(origin.hits_on("/never"), 0, "no slot, no request");
    let (_, _, body) = a.await.expect("joined");
    assert_eq!(body, "a");
}

/// README: "fan-out (`esi.max_includes`, `esi.max_depth` for fragments that are ESI themselves)":
/// a chain of distinct ESI fragments (no loop) is composed exactly `max_depth` levels deep; the
/// level below takes its fallback.
#[tokio::test]
async fn nested_esi_fragments_stop_at_max_depth() {
    let origin = serve(|req| async move {
        let level: usize = req.uri().path()[2..].parse().unwrap_or(0);
        // /d/0 is the layout; /d/n includes /d/n+1, up to /d/4, which is plain ESI text.
        if level < 4 {
            esi(format!(
                "{level}[<esi:include src=\"/d{}\" onerror=\"continue\"/>]",
                level + 1
            ))
        } else {
            esi("4")
        }
    })
    .await;
    // (max_depth, page)
    let cases = [
        (0, "0[]"),
        (1, "0[1[]]"),
        (2, "0[1[2[]]]"),
        (3, "0[1[2[3[]]]]"),
        (4, "0[1[2[3[4]]]]"),
    ];
    for (max_depth, want) in cases {
        let mut config = Config::default();
        config.esi.max_depth = max_depth;
        config.cache.enabled = false;
        let proxy = proxy(&origin.base(), config).await;
        let (status, _, body) = get(&proxy.url("/d0")).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, want),
            "max_depth {max_depth}"
        );
    }
}

/// README: "Fetches belong to their request": a client that goes away stops its page's
/// fragment fetches at once. The deadlines are 60 s, so only the disconnect can end the fetch
/// within the 5 s allowed.
#[tokio::test]
async fn client_disconnect_cancels_the_page_fetches() {
    let dropped = Arc::new(Notify::new());
    let started = Arc::new(Notify::new());
    let (d, s) = (Arc::clone(&dropped), Arc::clone(&started));
    let origin = serve(move |req| {
        let (dropped, started) = (Arc::clone(&d), Arc::clone(&s));
        async move {
            if req.uri().path() == "/page" {
                return esi("head<esi:include src=\"/forever\"/>");
            }
            // Notifies when the proxy gives up on this request (its future is dropped).
            let _guard = OnDrop(dropped);
            started.notify_one();
            futures::future::pending::<()>().await;
            html("never")
        }
    })
    .await;
    let mut config = Config::default();
    config.fetch.fragment_timeout_ms = 60_000;
    config.fetch.page_timeout_ms = 60_000;
    let proxy = proxy(&origin.base(), config).await;
    let page = Streamed::first(&proxy.url("/page"), b"head").await;
    tokio::time::timeout(MUST, started.notified())
        .await
        .expect("fragment requested");
    drop(page);
    tokio::time::timeout(Duration::from_secs(5), dropped.notified())
        .await
        .expect("the fragment fetch is cancelled promptly, long before its 60 s deadline");
}

/// README: "size (... `max_layout_bytes` ...)".
#[tokio::test]
async fn encoded_layouts_are_decoded_and_bombs_refused() {
    let page = b"<p>zipped</p><esi:include src=\"/f\"/>".to_vec();
    let zipped = gzip(&page);
    let bomb = gzip(&vec![b' '; 32 * 1024 * 1024]);
    let origin = serve(move |req| {
        let (zipped, bomb) = (zipped.clone(), bomb.clone());
        async move {
            let body = match req.uri().path() {
                "/gz" => zipped,
                "/bomb" => bomb,
                _ => return html("F"),
            };
            let mut r = esi(body);
            r.headers_mut()
                .insert("content-encoding", http::HeaderValue::from_static("gzip"));
            r
        }
    })
    .await;
    let mut config = Config::default();
    config.fetch.max_layout_bytes = 1024 * 1024;
    let proxy = proxy(&origin.base(), config).await;
    let (status, headers, body) = get(&proxy.url("/gz")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "<p>zipped</p>F"));
    assert!(headers.get("content-encoding").is_none());
    let (status, _, _) = tokio::time::timeout(MUST, get(&proxy.url("/bomb")))
        .await
        .expect("bounded");
    assert_eq!(status, StatusCode::BAD_GATEWAY);
}

/// Sends raw bytes to the proxy and returns the status line it answers with.
async fn raw_status(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("write");
    let mut buf = vec![0u8; 256];
    let n = tokio::time::timeout(MUST, s.read(&mut buf))
        .await
        .expect("answered")
        .expect("read");
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or("")
        .to_owned()
}

/// README: "size (... `server.max_header_bytes`)".
#[tokio::test]
async fn not_an_open_proxy_and_bad_requests_are_refused() {
    let origin = serve(|_| async { html("origin") }).await;
    let proxy = proxy(&origin.base(), Config::default()).await;
    let cases: [(&[u8], &str); 6] = [
        (
            b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
            "HTTP/1.1 405",
        ),
        (b"TRACE / HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1 405"),
        (
            b"GET http://example.com/ HTTP/1.1\r\nHost: localhost\r\n\r\n",
            "HTTP/1.1 400",
        ),
        (
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
            "HTTP/1.1 501",
        ),
        (b"GARBAGE\r\n\r\n", "HTTP/1.1 400"),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1 200"),
    ];
    for (request, want) in cases {
        let got = raw_status(proxy.addr, request).await;
        assert!(
            got.starts_with(want),
            "{}: got {got:?}",
            String::from_utf8_lossy(request)
        );
    }
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    assert!(raw_status(proxy.addr, huge.as_bytes())
        .await
        .starts_with("HTTP/1.1 431"));
    assert_eq!(
        origin.hits(),
        1,
        "only the valid request reached the origin"
    );
}

/// README: "Every request goes to the origin".
#[tokio::test]
async fn origin_failures_are_502_and_504() {
    let slow = serve(|_| async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        html("late")
    })
    .await;
    let mut config = Config::default();
    config.fetch.layout_timeout_ms = 100;
    let proxy_slow = proxy(&slow.base(), config).await;
    let (status, _, _) = get(&proxy_slow.url("/")).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    let closed = format!("http://127.0.0.1:{}", crate::support::closed_port());
    let proxy_down = proxy(&closed, Config::default()).await;
    let (status, _, body) = get(&proxy_down.url("/")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(body, "502 Bad Gateway\n");
}

/// README: "Admin endpoints: `GET /_esi/health` (public ...), `GET /_esi/metrics` (Prometheus text)".
#[tokio::test]
async fn admin_endpoints_health_and_guarded_metrics() {
    let origin =
        serve(|_| async { esi("x<esi:include src=\"/nope\" onerror=\"continue\"/>") }).await;
    let mut config = Config::default();
    config.server.admin_token = "s3cret".into();
    let proxy = proxy(&origin.base(), config).await;
    let _ = get(&proxy.url("/")).await;
    let (status, _, body) = get(&proxy.url("/_esi/health")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("\"status\":\"ok\""), "{body}");
    let (status, _, _) = get(&proxy.url("/_esi/metrics")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let resp = client()
        .get(proxy.url("/_esi/metrics"))
        .bearer_auth("wrong")
        .send()
        .await
        .expect("ok");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let resp = client()
        .get(proxy.url("/_esi/metrics"))
        .bearer_auth("s3cret")
        .send()
        .await
        .expect("ok");
    assert_eq!(resp.status(), StatusCode::OK);
    let text = resp.text().await.expect("text");
    assert!(
        text.contains("esi_proxy_requests_total{route=\"esi\",status=\"200\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("esi_proxy_fragment_duration_seconds_bucket"),
        "{text}"
    );
    assert!(
        text.contains("esi_proxy_fallbacks_total{kind=\"continue\"} 1"),
        "{text}"
    );
    let (status, _, _) = get(&proxy.url("/_esi/nothing")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
