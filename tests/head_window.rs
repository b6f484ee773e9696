//! When a page's head is decided: a streamed layout's head leaves with its first ready part
//! unless its path is in `esi.head_window_paths`; a cached layout holds it exactly when it has a
//! primary. Layouts here stream in two stages, the second only once the test releases it.

use std::sync::Arc;

use bytes::Bytes;
use esi_proxy::config::Config;
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::support::proxy::{get, proxy, Proxy};
use crate::support::{full, parse_raw, response, serve, stream, Server, ESI, HTML, MUST};

/// A primary that finds nothing: a page it decides is a 404.
const MISSING: &str = "no such product";

/// An origin whose `/page` streams `first` at once and `rest` when the returned `Notify` is
/// notified (once per request), with `cache` as its `Cache-Control`; `/f/product` answers 404.
async fn staged(
    first: &'static str,
    rest: &'static str,
    cache: &'static str,
) -> (Server, Arc<Notify>) {
    let release = Arc::new(Notify::new());
    let gate = Arc::clone(&release);
    let origin = serve(move |req| {
        let gate = Arc::clone(&gate);
        async move {
            if req.uri().path() != "/page" {
                return response(404, &[HTML], full(MISSING));
            }
            let later = futures::stream::once(async move {
                gate.notified().await;
                Ok(Bytes::from_static(rest.as_bytes()))
            });
            let body = futures::stream::iter([Ok(Bytes::from_static(first.as_bytes()))]);
            response(
                200,
                &[HTML, ESI, ("cache-control", cache)],
                stream(body.chain(later)),
            )
        }
    })
    .await;
    (origin, release)
}

/// Sends `GET /page` on a raw connection.
async fn request(proxy: &Proxy) -> TcpStream {
    let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
    let request = format!(
        "GET /page HTTP/1.1\r\nhost: {}\r\nconnection: close\r\n\r\n",
        proxy.addr
    );
    s.write_all(request.as_bytes()).await.expect("write");
    s
}

/// Reads from `s` into `got` until it holds `needle` (bounded by [`MUST`]).
async fn read_until(s: &mut TcpStream, got: &mut Vec<u8>, needle: &str) {
    tokio::time::timeout(MUST, async {
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(got).contains(needle) {
            let n = s.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed early: {}", String::from_utf8_lossy(got));
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{needle:?} never came: {}", String::from_utf8_lossy(got)));
}

/// Reads `s` to its end (bounded by [`MUST`]).
async fn read_to_end(s: &mut TcpStream, got: &mut Vec<u8>) {
    tokio::time::timeout(MUST, s.read_to_end(got))
        .await
        .expect("the page ends")
        .expect("read");
}

/// The "first bytes for pages without a primary stay as they are", with the default
/// config: the head and the layout's first part leave while the origin still holds the rest.
#[tokio::test]
async fn a_streamed_layout_without_a_primary_sends_first_bytes_before_it_completes() {
    let (origin, release) = staged("<p>top</p>", "<p>rest</p>", "no-store").await;
    let proxy = proxy(&origin.base(), Config::default()).await;
    let mut s = request(&proxy).await;
    let mut got = Vec::new();
    read_until(&mut s, &mut got, "<p>top</p>").await;
    let text = String::from_utf8_lossy(&got).into_owned();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        !text.contains("rest"),
        "the layout is not complete yet: {text}"
    );
    release.notify_one();
    read_to_end(&mut s, &mut got).await;
    let raw = parse_raw(&got);
    assert_eq!(String::from_utf8_lossy(&raw.body), "<p>top</p><p>rest</p>");
    assert!(raw.complete, "{}", raw.head);
    assert_eq!(proxy.metric("esi_proxy_head_held_total"), None);
}

/// Without a window, a response function parsed after the head left is late: counted, and the
/// page goes on intact with the status it was sent with.
#[tokio::test]
async fn a_late_response_function_is_counted_and_the_page_goes_on() {
    let rest = "<esi:assign name=\"x\" value=\"$set_response_code(404)\"/><p>rest</p>";
    let (origin, release) = staged("<p>top</p>", rest, "no-store").await;
    let proxy = proxy(&origin.base(), Config::default()).await;
    let mut s = request(&proxy).await;
    let mut got = Vec::new();
    read_until(&mut s, &mut got, "<p>top</p>").await;
    release.notify_one();
    read_to_end(&mut s, &mut got).await;
    let raw = parse_raw(&got);
    assert!(raw.head.starts_with("HTTP/1.1 200"), "{}", raw.head);
    assert_eq!(String::from_utf8_lossy(&raw.body), "<p>top</p><p>rest</p>");
    assert_eq!(
        proxy.metric("esi_proxy_esi_late_effects_total{reason=\"late\"}"),
        Some(1.0)
    );
}

/// Without a window, a primary parsed after the head left is late: a plain include (its 404 is
/// an empty slot), counted, and the page stays a 200.
#[tokio::test]
async fn a_late_primary_is_a_plain_include() {
    let rest = "<esi:include src=\"/f/product\" primary=\"true\"/><p>rest</p>";
    let (origin, release) = staged("<p>top</p>", rest, "no-store").await;
    let proxy = proxy(&origin.base(), Config::default()).await;
    let mut s = request(&proxy).await;
    let mut got = Vec::new();
    read_until(&mut s, &mut got, "<p>top</p>").await;
    release.notify_one();
    read_to_end(&mut s, &mut got).await;
    let raw = parse_raw(&got);
    assert!(raw.head.starts_with("HTTP/1.1 200"), "{}", raw.head);
    assert_eq!(String::from_utf8_lossy(&raw.body), "<p>top</p><p>rest</p>");
    assert_eq!(
        proxy.metric("esi_proxy_primary_total{outcome=\"late\"}"),
        Some(1.0)
    );
}

/// On a `head_window_paths` page the head waits (within the window's bounds) for what the
/// layout says later: the same late primary decides the page.
#[tokio::test]
async fn a_head_window_path_holds_the_head_for_a_later_primary() {
    let rest = "<esi:include src=\"/f/product\" primary=\"true\"/><p>rest</p>";
    let (origin, release) = staged("<p>top</p>", rest, "no-store").await;
    let mut config = Config::default();
    config.esi.head_window_paths = vec!["/pa*".into()];
    config.esi.max_head_hold_ms = 60_000;
    let proxy = proxy(&origin.base(), config).await;
    let mut s = request(&proxy).await;
    // Nothing may arrive while the layout is held back: the head is not decided.
    let mut buf = [0u8; 64];
    let early = tokio::time::timeout(std::time::Duration::from_millis(300), s.read(&mut buf)).await;
    assert!(
        early.is_err(),
        "bytes before the head was decided: {early:?}"
    );
    release.notify_one();
    let mut got = Vec::new();
    read_to_end(&mut s, &mut got).await;
    let raw = parse_raw(&got);
    assert!(raw.head.starts_with("HTTP/1.1 404"), "{}", raw.head);
    assert_eq!(String::from_utf8_lossy(&raw.body), MISSING);
    assert_eq!(
        proxy.metric("esi_proxy_primary_total{outcome=\"client_error\"}"),
        Some(1.0)
    );
}

/// A layout served from the layout cache is known whole, so its primary holds the head with no
/// window configured: the first, streamed request finds it late; the cached one does not.
#[tokio::test]
async fn a_cached_layout_with_a_primary_holds_the_head_without_a_window() {
    let rest = "<esi:include src=\"/f/product\" primary=\"true\"/><p>rest</p>";
    let (origin, release) = staged("<p>top</p>", rest, "public, max-age=60").await;
    let proxy = proxy(&origin.base(), Config::default()).await;
    let mut s = request(&proxy).await;
    let mut got = Vec::new();
    read_until(&mut s, &mut got, "<p>top</p>").await;
    release.notify_one();
    read_to_end(&mut s, &mut got).await;
    assert!(parse_raw(&got).head.starts_with("HTTP/1.1 200"));
    let (status, _, body) = get(&proxy.url("/page")).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body, MISSING);
    assert_eq!(origin.hits_on("/page"), 1, "the layout came from the cache");
}
