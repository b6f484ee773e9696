//! Panic isolation: a panic while one page is answered (in the request path, in an include's
//! task, in a body as it streams) fails that page alone: 500 before the head, an aborted body
//! after it, logged and counted in `esi_proxy_panics_total{stage}`; other pages, in flight or
//! later, carry on. The panics come from a test fetcher the server is built around.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use esi_proxy::config::Config;
use esi_proxy::fetch::{
    Allowed, FetchError, Fetcher, Fragment, FragmentRequest, OriginBody, OriginRequest,
};
use futures::future::BoxFuture;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use url::Url;

use crate::support::{
    self, esi, html, parse_raw, proxy_with_layer, raw_get, Proxy, RawResponse, Server, Streamed,
    MUST,
};

/// What the test fetcher sends in place of a body before the body panics.
const BEFORE_PANIC: &str = "<p>first part</p>";

/// Passes everything to the real fetcher, except: a fragment at `/panic` panics, one at
/// `/panic-gated` panics once `gate` is notified; the origin request for `/panic-origin` panics
/// as it is made; the origin responses for `/panic-body` and `/panic-layout` get a body that
/// yields [`BEFORE_PANIC`], then panics once `gate` is notified.
struct Panicky {
    inner: Arc<dyn Fetcher>,
    /// Holds gated panics back until the client has seen the head and first part.
    gate: Arc<Notify>,
}

impl Fetcher for Panicky {
    fn fetch(&self, req: FragmentRequest) -> BoxFuture<'static, Result<Fragment, FetchError>> {
        match req.url.path() {
            "/panic" => Box::pin(async { panic!("a fragment fetch panicked on cue") }),
            "/panic-gated" => {
                let gate = Arc::clone(&self.gate);
                Box::pin(async move {
                    gate.notified().await;
                    panic!("a fragment fetch panicked on cue")
                })
            }
            _ => self.inner.fetch(req),
        }
    }

    fn check(&self, url: &Arc<Url>) -> Result<Allowed, FetchError> {
        self.inner.check(url)
    }

    fn send_origin(
        &self,
        req: OriginRequest,
    ) -> BoxFuture<'static, Result<http::Response<OriginBody>, FetchError>> {
        let path = req.path_and_query.clone();
        assert_ne!(path, "/panic-origin", "an origin request panicked on cue");
        let sent = self.inner.send_origin(req);
        if path != "/panic-body" && path != "/panic-layout" {
            return sent;
        }
        let gate = Arc::clone(&self.gate);
        Box::pin(async move {
            let mut response = sent.await?;
            response.headers_mut().remove(http::header::CONTENT_LENGTH);
            Ok(response.map(|_| panicking_body(gate)))
        })
    }
}

/// A body with one part, [`BEFORE_PANIC`], that panics once `gate` is notified.
fn panicking_body(gate: Arc<Notify>) -> OriginBody {
    let first =
        futures::stream::iter([Ok(Frame::data(Bytes::from_static(BEFORE_PANIC.as_bytes())))]);
    let then = futures::stream::once(async move {
        gate.notified().await;
        panic!("a body panicked on cue")
    });
    BodyExt::boxed(StreamBody::new(futures::StreamExt::chain(first, then)))
}

/// `GET path` on a raw connection: reads until the head and `first` have arrived, lets the
/// gated panic go, and reads on to the end of the connection.
async fn get_then_panic(addr: SocketAddr, path: &str, first: &str, gate: &Notify) -> RawResponse {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).await.expect("write");
    let mut bytes = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let want = first.as_bytes();
    tokio::time::timeout(MUST, async {
        while !bytes.windows(want.len()).any(|w| w == want) {
            match s.read(&mut buf).await {
                Ok(n @ 1..) => bytes.extend_from_slice(&buf[..n]),
                _ => panic!("{path}: the connection ended before {first:?}: {bytes:?}"),
            }
        }
        gate.notify_one();
        // A reset is how an aborted response ends too; what came before it counts.
        while let Ok(n @ 1..) = s.read(&mut buf).await {
            bytes.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{path}: no end within {MUST:?}"));
    parse_raw(&bytes)
}

/// The origin: pages that lead to each panic, a good page, and a page whose one fragment
/// waits for `gate`.
async fn origin(gate: Arc<Notify>) -> Server {
    support::serve(move |req| {
        let gate = Arc::clone(&gate);
        async move {
            match req.uri().path() {
                "/ok" => esi("<p>ok</p><esi:include src=\"/frag\"/>"),
                "/frag" => html("<i>frag</i>"),
                "/panic-first" => esi("<esi:include src=\"/panic\"/><p>after</p>"),
                "/panic-in-try" => esi(
                    "<esi:try><esi:attempt><esi:include src=\"/panic\"/></esi:attempt>\
                     <esi:except>fallback</esi:except></esi:try><p>after</p>",
                ),
                "/panic-later" => esi("<p>start</p><esi:include src=\"/panic-gated\"/><p>end</p>"),
                "/panic-layout" => esi("<p>replaced by the test fetcher</p>"),
                "/panic-body" => html("<p>replaced by the test fetcher</p>"),
                "/slow" => esi("<p>slow</p><esi:include src=\"/gated\"/><p>done</p>"),
                "/gated" => {
                    gate.notified().await;
                    html("<i>gated</i>")
                }
                _ => support::response(404, &[], support::full("")),
            }
        }
    })
    .await
}

/// The proxy in front of `origin`, built around a [`Panicky`] fetcher with `gate`.
async fn panicky_proxy(origin: &Server, gate: &Arc<Notify>) -> Proxy {
    let gate = Arc::clone(gate);
    let layer = Arc::new(move |inner: Arc<dyn Fetcher>| {
        let gate = Arc::clone(&gate);
        Arc::new(Panicky { inner, gate }) as Arc<dyn Fetcher>
    });
    // Far past the test's length: the page held in flight must not fall back on a deadline.
    let mut config = Config::default();
    config.fetch.fragment_timeout_ms = 60_000;
    config.fetch.page_timeout_ms = 60_000;
    proxy_with_layer(&origin.base(), config, layer).await
}

fn panics(proxy: &Proxy, stage: &str) -> f64 {
    proxy
        .metric(&format!("esi_proxy_panics_total{{stage=\"{stage}\"}}"))
        .unwrap_or(0.0)
}

/// Every good page still composes whole.
async fn still_serves(proxy: &Proxy) {
    let ok = raw_get(proxy.addr, "/ok").await;
    assert!(ok.head.starts_with("HTTP/1.1 200"), "{}", ok.head);
    assert!(ok.complete, "the good page ends cleanly");
    assert_eq!(ok.body, b"<p>ok</p><i>frag</i>");
}

#[tokio::test]
async fn panic_before_the_head_is_a_500_for_that_request_alone() {
    let origin = origin(Arc::new(Notify::new())).await;
    let proxy = panicky_proxy(&origin, &Arc::new(Notify::new())).await;
    for (path, stage) in [
        ("/panic-origin", "request"),
        ("/panic-first", "compose"),
        // A panic is no failed fragment: the except branch does not hide it.
        ("/panic-in-try", "compose"),
    ] {
        let before = panics(&proxy, stage);
        let got = raw_get(proxy.addr, path).await;
        assert!(got.head.starts_with("HTTP/1.1 500"), "{path}: {}", got.head);
        assert!(got.complete, "{path}: the 500 is a whole response");
        let body = String::from_utf8_lossy(&got.body);
        assert_eq!(
            body, "500 Internal Server Error\n",
            "{path}: no internals shown"
        );
        assert_eq!(
            panics(&proxy, stage),
            before + 1.0,
            "{path}: counted at {stage}"
        );
        still_serves(&proxy).await;
    }
}

#[tokio::test]
async fn panic_after_the_head_aborts_the_body() {
    let origin = origin(Arc::new(Notify::new())).await;
    let gate = Arc::new(Notify::new());
    let proxy = panicky_proxy(&origin, &gate).await;
    for (path, first, stage) in [
        // In an include's task, after the page's first part went out.
        ("/panic-later", "<p>start</p>", "compose"),
        // In the layout's body, read by the composer.
        ("/panic-layout", BEFORE_PANIC, "compose"),
        // In a passed-through body, as the server sends it.
        ("/panic-body", BEFORE_PANIC, "body"),
    ] {
        let before = panics(&proxy, stage);
        let got = get_then_panic(proxy.addr, path, first, &gate).await;
        assert!(got.head.starts_with("HTTP/1.1 200"), "{path}: {}", got.head);
        assert!(
            got.head
                .to_ascii_lowercase()
                .contains("transfer-encoding: chunked"),
            "{path}: {}",
            got.head
        );
        assert!(!got.complete, "{path}: the body must not end cleanly");
        let body = String::from_utf8_lossy(&got.body);
        assert!(body.starts_with(first), "{path}: {body:?}");
        assert!(
            !body.contains("end"),
            "{path}: nothing after the panic: {body:?}"
        );
        assert_eq!(
            panics(&proxy, stage),
            before + 1.0,
            "{path}: counted at {stage}"
        );
        still_serves(&proxy).await;
    }
}

#[tokio::test]
async fn pages_in_flight_finish_while_others_panic() {
    let gate = Arc::new(Notify::new());
    let origin = origin(Arc::clone(&gate)).await;
    let panic_gate = Arc::new(Notify::new());
    let proxy = panicky_proxy(&origin, &panic_gate).await;
    // Its head and first part are out; its fragment waits for the gate.
    let slow = Streamed::first(&proxy.url("/slow"), b"<p>slow</p>").await;
    for path in ["/panic-origin", "/panic-first", "/panic-in-try"] {
        let got = raw_get(proxy.addr, path).await;
        assert!(got.head.starts_with("HTTP/1.1 500"), "{path}: {}", got.head);
    }
    let got = get_then_panic(proxy.addr, "/panic-body", BEFORE_PANIC, &panic_gate).await;
    assert!(!got.complete, "the passed-through body is aborted");
    gate.notify_one();
    let rest = slow.rest().await.expect("the slow page ends cleanly");
    assert_eq!(String::from_utf8_lossy(&rest), "<i>gated</i><p>done</p>");
    still_serves(&proxy).await;
    let total: f64 = ["request", "compose", "body"]
        .iter()
        .map(|stage| panics(&proxy, stage))
        .sum();
    assert_eq!(total, 4.0, "one panic counted per failed page");
}
