//! Fragment hosts spoken to over HTTP/2 with prior knowledge (`http2 = true`,
//! `fetch.origin_http2`): a page's fragment requests share one connection as streams, under the
//! same header policy as HTTP/1.1; a stream that fails (reset, oversize, stalled) takes its own
//! fallback and leaves the connection to the others; a refused request goes again on a new
//! connection, and one sent while its connection goes away keeps its stream there; a host that
//! does not speak HTTP/2 fails its includes, not the page.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use esi_proxy::config::{Config, HostConfig};
use h2::server::SendResponse;
use h2::{Reason, RecvStream};
use http::{Request, Response, StatusCode, Version};

use crate::support::proxy::{client, get, get_with, proxy, Proxy};
use crate::support::{
    esi, full, gzip, html, read_head, response, serve, serve_raw, stream, Received, Server, MUST,
};

/// An entry for `server` spoken to over HTTP/2.
fn h2_host(server: &Server, trusted: bool) -> HostConfig {
    HostConfig {
        url: server.base(),
        trusted,
        esi: false,
        private_network: true,
        http2: true,
        breaker: None,
    }
}

/// An origin answering `/page` with `layout` (as ESI) and any other path with `[path]`.
async fn origin(layout: String) -> Server {
    serve(move |req| {
        let layout = layout.clone();
        async move {
            match req.uri().path() {
                "/page" => esi(layout),
                p => html(format!("[{p}]")),
            }
        }
    })
    .await
}

/// `/page` through `proxy` with the visitor's `cookie`, as text.
async fn page_with_cookie(proxy: &Proxy, cookie: &str) -> String {
    get_with(&proxy.url("/page"), &[("cookie", cookie)]).await.2
}

fn header<'a>(r: &'a Received, name: &str) -> Option<&'a str> {
    r.headers.get(name).and_then(|v| v.to_str().ok())
}

/// README: "`http2 = true` ... its fragment requests share connections as streams": thirty
/// includes of one page, and a second page, reach the host as HTTP/2 streams on one
/// connection, with the header policy of HTTP/1.1 (forwarded headers, no credentials for an
/// untrusted host, `Surrogate-Capability`); the origin's own requests stay HTTP/1.1.
#[tokio::test]
async fn a_hosts_fragments_share_one_http2_connection() {
    let host = serve(|req| async move { html(format!("<{}>", req.uri().path())) }).await;
    let layout: String = (0..30)
        .map(|i| format!("<esi:include src=\"{}/f{i}\"/>", host.base()))
        .chain(["|<esi:include src=\"/own\"/>".to_owned()])
        .collect();
    let origin = origin(layout).await;
    let mut config = Config::default();
    config.fetch.hosts = vec![h2_host(&host, false)];
    let proxy = proxy(&origin.base(), config).await;

    let want: String = (0..30)
        .map(|i| format!("</f{i}>"))
        .chain(["|[/own]".to_owned()])
        .collect();
    for _ in 0..2 {
        let response = client()
            .get(proxy.url("/page"))
            .header("cookie", "session=s3cret")
            .header("accept-language", "de")
            .send()
            .await
            .expect("response");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.text().await.expect("body"), want);
    }

    let received = host.received();
    assert_eq!(received.len(), 60);
    for r in &received {
        assert_eq!(r.version, Version::HTTP_2, "{r:?}");
        assert_eq!(r.uri.scheme_str(), Some("http"));
        assert_eq!(
            r.uri.authority().map(|a| a.as_str()),
            Some(&*host.addr.to_string())
        );
        assert_eq!(header(r, "accept-language"), Some("de"));
        assert_eq!(
            header(r, "surrogate-capability"),
            Some("esi-proxy=\"ESI/1.0\"")
        );
        assert_eq!(header(r, "accept-encoding"), Some("gzip,br"));
        assert!(
            r.headers.get("cookie").is_none(),
            "credentials to an untrusted host"
        );
        assert!(
            r.headers.get("host").is_none(),
            "the authority is :authority"
        );
    }
    assert_eq!(host.connections().await, 1, "one connection for both pages");
    assert!(origin
        .received()
        .iter()
        .all(|r| r.version == Version::HTTP_11));
}

/// README: "`fetch.origin_http2` ... layouts and passed-through requests stay HTTP/1.1": the
/// origin's fragments come as streams, with the visitor's cookie (the origin is trusted).
#[tokio::test]
async fn the_origins_fragments_go_over_http2_and_its_layout_over_http11() {
    let origin = origin("<esi:include src=\"/a\"/>|<esi:include src=\"/b\"/>".into()).await;
    let mut config = Config::default();
    config.fetch.origin_http2 = true;
    let proxy = proxy(&origin.base(), config).await;

    let body = page_with_cookie(&proxy, "session=s3cret").await;
    assert_eq!(body, "[/a]|[/b]");
    let received = origin.received();
    let version = |path: &str| {
        received
            .iter()
            .find(|r| r.uri.path() == path)
            .map(|r| (r.version, header(r, "cookie").map(str::to_owned)))
    };
    assert_eq!(version("/page").map(|v| v.0), Some(Version::HTTP_11));
    for path in ["/a", "/b"] {
        assert_eq!(
            version(path),
            Some((Version::HTTP_2, Some("session=s3cret".to_owned()))),
            "{path}"
        );
    }
}

/// A compressed fragment is decoded over HTTP/2 as over HTTP/1.1.
#[tokio::test]
async fn an_encoded_fragment_is_decoded() {
    let host = serve(|_| async {
        response(
            200,
            &[("content-type", "text/html"), ("content-encoding", "gzip")],
            full(gzip(b"<p>unzipped</p>")),
        )
    })
    .await;
    let origin = origin(format!("<esi:include src=\"{}/z\"/>", host.base())).await;
    let mut config = Config::default();
    config.fetch.hosts = vec![h2_host(&host, false)];
    let proxy = proxy(&origin.base(), config).await;
    let (status, _, body) = get(&proxy.url("/page")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "<p>unzipped</p>"));
    assert_eq!(host.received()[0].version, Version::HTTP_2);
}

// === hosts that misbehave, spoken by hand ===

/// Serves HTTP/2 with prior knowledge, each stream handed to `handler` with the number of the
/// connection it came on (from 1) and how many streams that connection had before it.
async fn serve_h2<F, Fut>(handler: F) -> Server
where
    F: Fn(usize, usize, Request<RecvStream>, SendResponse<Bytes>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let handler = Arc::new(handler);
    let connections = Arc::new(AtomicUsize::new(0));
    serve_raw(move |stream| {
        let handler = Arc::clone(&handler);
        let number = connections.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            let Ok(mut conn) = h2::server::handshake(stream).await else {
                return;
            };
            let mut streams = 0;
            while let Some(Ok((req, respond))) = conn.accept().await {
                tokio::spawn(handler(number, streams, req, respond));
                streams += 1;
            }
        }
    })
    .await
}

/// Answers `respond` with `body` as HTML.
fn answer(mut respond: SendResponse<Bytes>, body: &str) {
    let head = Response::builder()
        .header("content-type", "text/html")
        .body(())
        .expect("head");
    let mut stream = respond.send_response(head, false).expect("head sent");
    stream
        .send_data(Bytes::copy_from_slice(body.as_bytes()), true)
        .expect("body sent");
}

/// Waits until the client resets `respond`'s stream, and returns why.
async fn reset_reason(mut respond: SendResponse<Bytes>) -> Reason {
    let reset = std::future::poll_fn(|cx| respond.poll_reset(cx));
    tokio::time::timeout(MUST, reset)
        .await
        .expect("the client resets the stream")
        .expect("the connection lasts")
}

/// A stream cut in its body (`RST_STREAM`) and one over `fetch.max_fragment_bytes` take their
/// own fallbacks, counted as `truncated` and `too_large`; the proxy cancels the oversize one;
/// the includes around them compose on the same connection.
#[tokio::test]
async fn a_failed_stream_takes_its_fallback_and_the_connection_serves_the_others() {
    let (cancelled_tx, cancelled_rx) = tokio::sync::oneshot::channel();
    let cancelled_tx = Arc::new(std::sync::Mutex::new(Some(cancelled_tx)));
    let host = serve_h2(move |_, _, req, mut respond| {
        let cancelled_tx = Arc::clone(&cancelled_tx);
        async move {
            match req.uri().path() {
                "/cut" => {
                    let head = Response::builder()
                        .header("content-length", "100")
                        .body(())
                        .expect("head");
                    let mut stream = respond.send_response(head, false).expect("head");
                    stream
                        .send_data(Bytes::from_static(b"partial"), false)
                        .expect("data");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    stream.send_reset(Reason::INTERNAL_ERROR);
                }
                "/big" => {
                    let head = Response::builder().body(()).expect("head");
                    let mut stream = respond.send_response(head, false).expect("head");
                    stream
                        .send_data(Bytes::from(vec![b'x'; 5000]), false)
                        .expect("data");
                    let reason = std::future::poll_fn(|cx| stream.poll_reset(cx)).await;
                    if let Some(tx) = cancelled_tx.lock().expect("not poisoned").take() {
                        let _ = tx.send(reason.ok());
                    }
                }
                path => answer(respond, &format!("<{path}>")),
            }
        }
    })
    .await;
    let base = host.base();
    let origin = origin(format!(
        "<esi:include src=\"{base}/a\"/>|<esi:include src=\"{base}/cut\" alt=\"/alt\"/>|\
         <esi:include src=\"{base}/big\" onerror=\"continue\"/>|<esi:include src=\"{base}/b\"/>"
    ))
    .await;
    let mut config = Config::default();
    config.fetch.hosts = vec![h2_host(&host, false)];
    config.fetch.max_fragment_bytes = 1000;
    let proxy = proxy(&origin.base(), config).await;

    let (status, _, body) = get(&proxy.url("/page")).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "</a>|[/alt]||</b>")
    );
    let failures = |kind: &str| {
        proxy.metric(&format!(
            "esi_proxy_fragment_failures_total{{kind=\"{kind}\"}}"
        ))
    };
    assert_eq!(failures("truncated"), Some(1.0));
    assert_eq!(failures("too_large"), Some(1.0));
    let reason = tokio::time::timeout(MUST, cancelled_rx)
        .await
        .expect("the oversize stream ends")
        .expect("reported");
    assert_eq!(
        reason,
        Some(Reason::CANCEL),
        "the proxy cancels what it will not read"
    );
    assert_eq!(host.connections().await, 1);
}

/// A stream the host never answers is given up at `fetch.fragment_timeout_ms` and reset, while
/// the include beside it on the same connection composes.
#[tokio::test]
async fn a_stalled_stream_times_out_alone_and_is_reset() {
    let (reason_tx, reason_rx) = tokio::sync::mpsc::unbounded_channel();
    let host = serve_h2(move |_, _, req, respond| {
        let reason_tx = reason_tx.clone();
        async move {
            if req.uri().path() == "/stall" {
                let _ = reason_tx.send(reset_reason(respond).await);
            } else {
                answer(respond, "<ok>");
            }
        }
    })
    .await;
    let base = host.base();
    let origin = origin(format!(
        "<esi:include src=\"{base}/stall\" alt=\"/alt\"/>|<esi:include src=\"{base}/fine\"/>"
    ))
    .await;
    let mut config = Config::default();
    config.fetch.hosts = vec![h2_host(&host, false)];
    config.fetch.fragment_timeout_ms = 300;
    let proxy = proxy(&origin.base(), config).await;

    let (status, _, body) = get(&proxy.url("/page")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "[/alt]|<ok>"));
    assert_eq!(
        proxy.metric("esi_proxy_fragment_failures_total{kind=\"timeout\"}"),
        Some(1.0)
    );
    let mut reason_rx = reason_rx;
    let reason = tokio::time::timeout(MUST, reason_rx.recv())
        .await
        .expect("reset reported");
    assert_eq!(reason, Some(Reason::CANCEL));
}

/// A stream the host refuses (`REFUSED_STREAM`: it did not process it) goes again, on a
/// connection made since, and the page is whole; the refusing connection stays in use; a
/// request the host processed and then failed is not sent twice.
#[tokio::test]
async fn a_refused_stream_goes_again_on_a_new_connection() {
    let broken = Arc::new(AtomicUsize::new(0));
    let broken_seen = Arc::clone(&broken);
    let host = serve_h2(move |connection, before, req, mut respond| {
        let broken = Arc::clone(&broken_seen);
        async move {
            let path = req.uri().path().to_owned();
            if connection == 1 && before > 0 {
                respond.send_reset(Reason::REFUSED_STREAM);
            } else if path == "/broken" {
                broken.fetch_add(1, Ordering::SeqCst);
                respond.send_reset(Reason::INTERNAL_ERROR);
            } else {
                answer(respond, &format!("<{path}@{connection}>"));
            }
        }
    })
    .await;
    let base = host.base();
    let origin = serve(move |req| {
        let base = base.clone();
        async move {
            match req.uri().path() {
                "/one" => esi(format!("<esi:include src=\"{base}/first\"/>")),
                "/two" => esi(format!("<esi:include src=\"{base}/second\"/>")),
                "/three" => esi(format!(
                    "<esi:include src=\"{base}/broken\" onerror=\"continue\"/>."
                )),
                p => html(format!("[{p}]")),
            }
        }
    })
    .await;
    let mut config = Config::default();
    config.fetch.hosts = vec![h2_host(&host, false)];
    // The fragment cache sends a failed fetch once more itself; off, what reaches the host is
    // the HTTP/2 client's doing alone.
    config.cache.enabled = false;
    let proxy = proxy(&origin.base(), config).await;

    assert_eq!(get(&proxy.url("/one")).await.2, "</first@1>");
    assert_eq!(get(&proxy.url("/two")).await.2, "</second@2>");
    assert_eq!(host.connections().await, 2);
    assert_eq!(get(&proxy.url("/three")).await.2, ".");
    assert_eq!(
        proxy.metric("esi_proxy_fragment_failures_total{kind=\"transport\"}"),
        Some(1.0),
        "reset after the host took it: failed once, not sent again"
    );
    assert_eq!(
        broken.load(Ordering::SeqCst),
        1,
        "/broken reached the host once"
    );
    // A refusal is the stream's, not the connection's: the first connection stayed in use
    // (its refusal of /broken sent it to a third connection, made since).
    assert_eq!(host.connections().await, 3);
}

/// An origin whose `/page` includes `host`'s `/f`, and a proxy in front of it speaking HTTP/2 to
/// `host` with an idle timeout of `idle_ms`.
async fn one_include_of(host: &Server, idle_ms: u64) -> (Server, Proxy) {
    let origin = origin(format!("<esi:include src=\"{}/f\"/>", host.base())).await;
    let mut config = Config::default();
    config.fetch.hosts = vec![h2_host(host, false)];
    config.fetch.pool_idle_timeout_ms = idle_ms;
    let proxy = proxy(&origin.base(), config).await;
    (origin, proxy)
}

/// `fetch.pool_idle_timeout_ms`: the proxy closes a host's HTTP/2 connection once it has carried
/// no stream for the timeout, not before, and the next page opens a new one.
#[tokio::test]
async fn an_http2_connection_idle_past_the_pool_timeout_is_closed() {
    let closed = Arc::new(tokio::sync::watch::Sender::new(0_usize));
    let mut closed_rx = closed.subscribe();
    let host = serve_raw(move |stream| {
        let closed = Arc::clone(&closed);
        async move {
            if let Ok(mut conn) = h2::server::handshake(stream).await {
                while let Some(Ok((req, respond))) = conn.accept().await {
                    answer(respond, &format!("<{}>", req.uri().path()));
                }
            }
            closed.send_modify(|n| *n += 1);
        }
    })
    .await;
    let (_origin, proxy) = one_include_of(&host, 600).await;

    assert_eq!(get(&proxy.url("/page")).await.2, "</f>");
    let idle_from = Instant::now();
    tokio::time::timeout(MUST, closed_rx.wait_for(|n| *n == 1))
        .await
        .expect("the idle connection is closed")
        .expect("the host's counter lives");
    let after = idle_from.elapsed();
    assert!(
        after >= Duration::from_millis(500),
        "closed {after:?} after the page: before the 600 ms idle timeout"
    );
    assert_eq!(get(&proxy.url("/page")).await.2, "</f>");
    assert_eq!(
        host.connections().await,
        2,
        "a new connection for the next page"
    );
}

/// `fetch.pool_idle_timeout_ms` shorter than a host's handshake: a new connection is not taken
/// for idle before it has carried its first stream, so the page's include is answered.
#[tokio::test]
async fn an_idle_timeout_shorter_than_the_handshake_spares_a_new_connection() {
    let host = serve_raw(|stream| async move {
        // The host's SETTINGS and its answer to the PING come 300 ms late.
        tokio::time::sleep(Duration::from_millis(300)).await;
        if let Ok(mut conn) = h2::server::handshake(stream).await {
            while let Some(Ok((req, respond))) = conn.accept().await {
                answer(respond, &format!("<{}>", req.uri().path()));
            }
        }
    })
    .await;
    let (_origin, proxy) = one_include_of(&host, 50).await;

    assert_eq!(get(&proxy.url("/page")).await.2, "</f>");
}

/// A host that shuts its connection down gracefully (`GOAWAY`) between pages: the next page's
/// fragment goes on a new connection.
#[tokio::test]
async fn a_host_going_away_is_left_for_a_new_connection() {
    let host = serve_raw(|stream| async move {
        let Ok(mut conn) = h2::server::handshake(stream).await else {
            return;
        };
        if let Some(Ok((req, respond))) = conn.accept().await {
            answer(respond, &format!("<{}>", req.uri().path()));
            conn.graceful_shutdown();
            while let Some(Ok((_, mut respond))) = conn.accept().await {
                respond.send_reset(Reason::REFUSED_STREAM);
            }
        }
    })
    .await;
    let base = host.base();
    let origin = serve(move |req| {
        let base = base.clone();
        async move {
            let path = req.uri().path().to_owned();
            esi(format!("<esi:include src=\"{base}{path}x\"/>"))
        }
    })
    .await;
    let mut config = Config::default();
    config.fetch.hosts = vec![h2_host(&host, false)];
    let proxy = proxy(&origin.base(), config).await;

    assert_eq!(get(&proxy.url("/one")).await.2, "</onex>");
    // Let the shutdown reach the proxy, as it would between two visitors' pages.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(get(&proxy.url("/two")).await.2, "</twox>");
    assert_eq!(host.connections().await, 2);
}

/// A host that shuts a connection down gracefully (`GOAWAY`) while a page's requests are in
/// flight on it: they are answered there, after the page's later includes, which went on a new
/// connection; nothing fails and the host processes each request once.
#[tokio::test]
async fn a_host_going_away_mid_page_keeps_its_streams_and_later_ones_go_on_a_new_connection() {
    let (went_away_tx, went_away) = tokio::sync::oneshot::channel::<()>();
    let (second_wave_tx, second_wave) = tokio::sync::oneshot::channel::<()>();
    let signals = Arc::new(std::sync::Mutex::new((
        Some(went_away_tx),
        Some(second_wave),
        Some(second_wave_tx),
    )));
    let (connections, streams) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (seen_connections, seen_streams) = (Arc::clone(&connections), Arc::clone(&streams));
    let host = serve_raw(move |stream| {
        let (signals, streams) = (Arc::clone(&signals), Arc::clone(&seen_streams));
        let number = seen_connections.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            let Ok(mut conn) = h2::server::handshake(stream).await else {
                return;
            };
            if number == 1 {
                // The page's first three requests, held unanswered.
                let mut held = Vec::new();
                while held.len() < 3 {
                    let Some(Ok((req, respond))) = conn.accept().await else {
                        return;
                    };
                    streams.fetch_add(1, Ordering::SeqCst);
                    held.push((req.uri().path().to_owned(), respond));
                }
                conn.graceful_shutdown();
                let (went_away, second_wave) = {
                    let mut signals = signals.lock().expect("not poisoned");
                    (signals.0.take(), signals.1.take())
                };
                let _ = went_away.expect("one first connection").send(());
                tokio::spawn(async move {
                    let _ = second_wave.expect("one first connection").await;
                    for (path, respond) in held {
                        answer(respond, &format!("<{path}@1>"));
                    }
                });
                // Drives the connection (the GOAWAY out, the held answers) until it closes.
                // A request sent before the proxy read the GOAWAY is refused, unprocessed (the
                // proxy sends it again on a new connection).
                while let Some(Ok((_, mut respond))) = conn.accept().await {
                    respond.send_reset(Reason::REFUSED_STREAM);
                }
                return;
            }
            let mut answered = 0;
            while let Some(Ok((req, respond))) = conn.accept().await {
                streams.fetch_add(1, Ordering::SeqCst);
                answer(respond, &format!("<{}@{number}>", req.uri().path()));
                answered += 1;
                if answered == 3 {
                    let tx = signals.lock().expect("not poisoned").2.take();
                    let _ = tx.expect("one second wave").send(());
                }
            }
        }
    })
    .await;
    let base = host.base();
    let went_away = Arc::new(std::sync::Mutex::new(Some(went_away)));
    let origin = serve(move |_| {
        let includes = |names: &[&str]| -> Bytes {
            let tags: String = names
                .iter()
                .map(|n| format!("<esi:include src=\"{base}/{n}\"/>"))
                .collect();
            Bytes::from(tags)
        };
        let (first, later) = (includes(&["a", "b", "c"]), includes(&["d", "e", "f"]));
        let went_away = went_away.lock().expect("not poisoned").take();
        async move {
            let went_away = went_away.expect("one page");
            let later = async move {
                let _ = went_away.await;
                // Let the GOAWAY reach the proxy before the later includes are asked for.
                tokio::time::sleep(Duration::from_millis(100)).await;
                Ok(later)
            };
            let body = futures::StreamExt::chain(
                futures::stream::iter([Ok(first)]),
                futures::stream::once(later),
            );
            response(
                200,
                &[crate::support::HTML, crate::support::ESI],
                stream(body),
            )
        }
    })
    .await;
    let mut config = Config::default();
    config.fetch.hosts = vec![h2_host(&host, false)];
    config.cache.enabled = false;
    let proxy = proxy(&origin.base(), config).await;

    let (status, _, body) = get(&proxy.url("/page")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "</a@1></b@1></c@1></d@2></e@2></f@2>");
    assert_eq!(host.connections().await, 2);
    assert_eq!(
        streams.load(Ordering::SeqCst),
        6,
        "each request processed once"
    );
    assert_eq!(connections.load(Ordering::SeqCst), 2);
}

/// A host listed with `http2 = true` that speaks only HTTP/1.1 fails its includes (they take
/// their fallback) as a connect failure, not the page.
#[tokio::test]
async fn a_host_that_does_not_speak_http2_fails_its_includes_only() {
    let host = serve_raw(|mut stream| async move {
        use tokio::io::AsyncWriteExt;
        // The preface reads as a request line hyper-style servers refuse.
        let _ = read_head(&mut stream).await;
        let _ = stream
            .write_all(
                b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            )
            .await;
    })
    .await;
    let origin = origin(format!(
        "<esi:include src=\"{}/f\" alt=\"/alt\"/>|",
        host.base()
    ))
    .await;
    let mut config = Config::default();
    config.fetch.hosts = vec![h2_host(&host, false)];
    let proxy = proxy(&origin.base(), config).await;
    let (status, _, body) = get(&proxy.url("/page")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "[/alt]|"));
    let failures = |kind: &str| {
        proxy.metric(&format!(
            "esi_proxy_fragment_failures_total{{kind=\"{kind}\"}}"
        ))
    };
    // Refused in the handshake: it never answers HTTP/2's PING.
    assert_eq!(failures("connect"), Some(1.0));
}

/// `http2` is HTTP/2 with prior knowledge, over plain TCP only: on an `https` host or with an
/// `https` origin the config is refused, naming the field.
#[test]
fn http2_on_https_is_refused() {
    let mut config = Config::default();
    config.server.origin = "https://origin.example.com".into();
    config.fetch.origin_http2 = true;
    config.fetch.hosts = vec![HostConfig {
        url: "https://fragments.example.com".into(),
        trusted: false,
        esi: false,
        private_network: false,
        http2: true,
        breaker: None,
    }];
    let message = config.validate().expect_err("refused").to_string();
    assert!(message.contains("fetch.hosts[0].http2"), "{message}");
    assert!(message.contains("fetch.origin_http2"), "{message}");
}

/// A host that takes one stream per connection gets at most 64 connections from the proxy,
/// however many includes wait: the rest queue on those connections, and the page is whole.
#[tokio::test]
async fn a_host_allowing_few_streams_gets_a_bounded_number_of_connections() {
    // No stream is answered before 64 have arrived: the proxy must have opened 64
    // connections, and opening more would show.
    let (arrived_tx, arrived) = tokio::sync::watch::channel(0usize);
    let arrived_tx = Arc::new(arrived_tx);
    let host = serve_raw(move |stream| {
        let (arrived_tx, arrived) = (Arc::clone(&arrived_tx), arrived.clone());
        async move {
            let Ok(mut conn) = h2::server::Builder::new()
                .max_concurrent_streams(1)
                .handshake::<_, Bytes>(stream)
                .await
            else {
                return;
            };
            while let Some(Ok((req, respond))) = conn.accept().await {
                arrived_tx.send_modify(|n| *n += 1);
                let mut arrived = arrived.clone();
                tokio::spawn(async move {
                    let all_in = arrived.wait_for(|n| *n >= 64);
                    let _ = tokio::time::timeout(MUST, all_in).await;
                    // Time for a 65th connection to show, were one opened.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    answer(respond, &format!("<{}>", req.uri().path()));
                });
            }
        }
    })
    .await;
    let layout: String = (0..80)
        .map(|i| format!("<esi:include src=\"{}/f{i}\"/>", host.base()))
        .collect();
    let origin = origin(layout).await;
    let mut config = Config::default();
    config.fetch.hosts = vec![h2_host(&host, false)];
    let proxy = proxy(&origin.base(), config).await;

    let (status, _, body) = get(&proxy.url("/page")).await;
    let want: String = (0..80).map(|i| format!("</f{i}>")).collect();
    assert_eq!((status, body), (StatusCode::OK, want));
    assert_eq!(host.connections().await, 64);
}

/// Include header edits and a `POST` body over HTTP/2, as over HTTP/1.1: credentials set on an
/// untrusted host's include are dropped, a trusted host gets what the layout sets, and a
/// `POST` arrives with its body and its declared length.
#[tokio::test]
async fn header_edits_and_post_bodies_keep_their_rules() {
    let echo = || {
        serve(|req| async move {
            use http_body_util::BodyExt;
            let (parts, body) = req.into_parts();
            let body = body.collect().await.expect("body").to_bytes();
            let header = |name: &str| {
                parts
                    .headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-")
                    .to_owned()
            };
            html(format!(
                "[{} {} body={} cookie={} authorization={} x-device={} content-length={}]",
                parts.method,
                parts.uri.path(),
                String::from_utf8_lossy(&body),
                header("cookie"),
                header("authorization"),
                header("x-device"),
                header("content-length"),
            ))
        })
    };
    let partner = echo().await;
    let internal = echo().await;
    let origin = origin(format!(
        "<esi:include src=\"{p}/svc\" setheaders=\"Cookie: stolen=1, Authorization: Bearer forged, X-Device: set\"/>|\
         <esi:include src=\"{i}/svc\" setheaders=\"Authorization: Bearer for-internal\"/>|\
         <esi:include src=\"{i}/post\" method=\"POST\" entity=\"q=1\"/>",
        p = partner.base(),
        i = internal.base(),
    ))
    .await;
    let mut config = Config::default();
    config.fetch.hosts = vec![h2_host(&partner, false), h2_host(&internal, true)];
    let proxy = proxy(&origin.base(), config).await;
    let body = page_with_cookie(&proxy, "sid=s3cr3t").await;
    assert_eq!(
        body,
        "[GET /svc body= cookie=- authorization=- x-device=set content-length=-]|\
         [GET /svc body= cookie=sid=s3cr3t authorization=Bearer for-internal x-device=- content-length=-]|\
         [POST /post body=q=1 cookie=sid=s3cr3t authorization=- x-device=- content-length=3]"
    );
    for server in [&partner, &internal] {
        assert!(server
            .received()
            .iter()
            .all(|r| r.version == Version::HTTP_2));
    }
}
