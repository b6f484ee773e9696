//! Preload hints end to end: `Link` headers of the layout and the fragments in the composed
//! page's head (deduplicated, bounded, switched off), the `103 Early Hints` a page composed
//! before gets, read off the socket by a raw client to prove its place among the heads.

use esi_proxy::config::Config;
use http::Request;
use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::proxy::{client, proxy, Proxy};
use crate::support::{full, read_head, response, serve, serve_raw, Server, ESI, HTML, MUST};

const LAYOUT_HINT: &str = "</layout.css>; rel=preload; as=style";
const A_CSS: &str = "</a.css>; rel=preload; as=style";
const CDN: &str = "<https://cdn.test>; rel=preconnect";
const B_JS: &str = "</b.js>; rel=modulepreload";

/// One response read off a raw connection: the informational heads before it, its head, its
/// body with chunked framing removed.
#[derive(Debug)]
struct Answer {
    informational: Vec<String>,
    head: String,
    body: Vec<u8>,
}

/// A raw client connection that reads responses one after another.
struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    async fn open(proxy: &Proxy) -> Self {
        let stream = TcpStream::connect(proxy.addr).await.expect("connect");
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &str) {
        self.stream
            .write_all(bytes.as_bytes())
            .await
            .expect("write");
    }

    async fn get(&mut self, path: &str) -> Answer {
        self.send(&format!("GET {path} HTTP/1.1\r\nhost: shop.test\r\n\r\n"))
            .await;
        self.answer(false).await
    }

    /// Reads more bytes; false at the end of the connection.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        let n = tokio::time::timeout(MUST, self.stream.read(&mut chunk))
            .await
            .expect("the proxy answers")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    async fn head(&mut self) -> String {
        loop {
            if let Some(at) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..at]).into_owned();
                self.buf.drain(..at + 4);
                return head;
            }
            assert!(
                self.fill().await,
                "closed before a whole head: {:?}",
                self.buf
            );
        }
    }

    /// The next response; `head_only` for an answer to HEAD.
    async fn answer(&mut self, head_only: bool) -> Answer {
        let mut informational = Vec::new();
        let head = loop {
            let head = self.head().await;
            if head.starts_with("HTTP/1.1 1") {
                informational.push(head);
            } else {
                break head;
            }
        };
        let mut body = Vec::new();
        let lower = head.to_ascii_lowercase();
        if head_only {
        } else if lower.contains("transfer-encoding: chunked") {
            loop {
                let line = loop {
                    if let Some(at) = self.buf.windows(2).position(|w| w == b"\r\n") {
                        let line = String::from_utf8_lossy(&self.buf[..at]).into_owned();
                        self.buf.drain(..at + 2);
                        break line;
                    }
                    assert!(self.fill().await, "closed inside a chunked body");
                };
                let size = usize::from_str_radix(line.trim(), 16).expect("a chunk size");
                while self.buf.len() < size + 2 {
                    assert!(self.fill().await, "closed inside a chunk");
                }
                body.extend_from_slice(&self.buf[..size]);
                self.buf.drain(..size + 2);
                if size == 0 {
                    break;
                }
            }
        } else if let Some(n) = lower
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
        {
            let n: usize = n.trim().parse().expect("a length");
            while self.buf.len() < n {
                assert!(self.fill().await, "closed inside a body");
            }
            body = self.buf.drain(..n).collect();
        } else {
            while self.fill().await {}
            body = std::mem::take(&mut self.buf);
        }
        Answer {
            informational,
            head,
            body,
        }
    }
}

/// The values of the `Link` lines of a head, in order.
fn links(head: &str) -> Vec<String> {
    head.lines()
        .filter_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("link")
                .then(|| value.trim().to_owned())
        })
        .collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

/// An origin serving `/page` (layout `body`, with [`LAYOUT_HINT`]) and fragments: `/a` and
/// `/b` with hints (one shared), `/plain` a page with no ESI, and `/first` a layout that opens
/// with an include, so its head leaves only once that fragment answered.
async fn origin() -> Server {
    serve(|req: Request<Incoming>| async move {
        let layout = |body: &'static str| {
            response(
                200,
                &[
                    HTML,
                    ESI,
                    ("link", LAYOUT_HINT),
                    ("link", "</c>; rel=canonical"),
                ],
                full(body),
            )
        };
        match req.uri().path() {
            "/page" => layout(
                "<html><head>x</head><esi:include src=\"/a\"/><esi:include src=\"/b\"/></html>",
            ),
            "/first" => layout("<esi:include src=\"/a\"/>|<esi:include src=\"/b\"/>"),
            "/a" => response(
                200,
                &[HTML, ("link", &format!("{A_CSS}, {CDN}"))],
                full("A"),
            ),
            "/b" => response(200, &[HTML, ("link", A_CSS), ("link", B_JS)], full("B")),
            "/plain" => response(200, &[HTML], full("plain")),
            _ => response(404, &[], full("")),
        }
    })
    .await
}

fn config() -> Config {
    Config::default()
}

#[tokio::test]
async fn a_page_composed_before_gets_a_103_before_its_head_which_carries_the_hints() {
    let origin = origin().await;
    let proxy = proxy(&origin.base(), config()).await;
    let mut conn = Raw::open(&proxy).await;
    let first = conn.get("/page").await;
    assert!(first.head.starts_with("HTTP/1.1 200"), "{}", first.head);
    assert!(
        first.informational.is_empty(),
        "nothing remembered yet: {first:?}"
    );
    assert_eq!(first.body, b"<html><head>x</head>AB</html>");

    // The same connection (keep-alive): the first composition is remembered.
    let second = conn.get("/page").await;
    assert_eq!(second.informational.len(), 1, "{second:?}");
    let early = &second.informational[0];
    assert!(early.starts_with("HTTP/1.1 103 Early Hints\r\n"), "{early}");
    assert_eq!(
        sorted(links(early)),
        sorted(strings(&[LAYOUT_HINT, A_CSS, CDN, B_JS])),
        "the layout's and both fragments', each once"
    );
    assert!(second.head.starts_with("HTTP/1.1 200"), "{}", second.head);
    assert_eq!(
        sorted(links(&second.head)),
        sorted(strings(&[
            LAYOUT_HINT,
            "</c>; rel=canonical",
            A_CSS,
            CDN,
            B_JS
        ])),
        "the layout's own Link headers as sent, then the hints, each once"
    );
    assert_eq!(second.body, b"<html><head>x</head>AB</html>");
    assert_eq!(
        proxy.metric("esi_proxy_early_hints_total{outcome=\"sent\"}"),
        Some(1.0)
    );

    // A third request on the connection is framed as well.
    let third = conn.get("/plain").await;
    assert!(third.informational.is_empty(), "{third:?}");
    assert_eq!(third.body, b"plain");
}

#[tokio::test]
async fn hints_of_fragments_answered_before_the_head_leaves_join_it() {
    let origin = origin().await;
    let proxy = proxy(&origin.base(), config()).await;
    let got = client()
        .get(proxy.url("/first"))
        .send()
        .await
        .expect("response");
    let values: Vec<String> = got
        .headers()
        .get_all("link")
        .iter()
        .map(|v| v.to_str().expect("ascii").to_owned())
        .collect();
    // `/a` answered before the head left (the page opens with it); `/b` may or may not have.
    assert!(values.contains(&A_CSS.to_owned()), "{values:?}");
    assert!(values.contains(&CDN.to_owned()), "{values:?}");
    assert_eq!(
        values.iter().filter(|v| *v == A_CSS).count(),
        1,
        "deduplicated: {values:?}"
    );
    assert_eq!(got.text().await.expect("body"), "A|B");
    assert!(proxy.metric("esi_proxy_hints_sent_total").unwrap_or(0.0) >= 2.0);
}

/// An origin whose `/page` opens with `/many`, which sends `n` distinct hints.
async fn many_origin(n: usize) -> Server {
    serve(move |req: Request<Incoming>| async move {
        match req.uri().path() {
            "/page" => response(200, &[HTML, ESI], full("<esi:include src=\"/many\"/>!")),
            "/many" => {
                let value = (0..n)
                    .map(|i| format!("</asset-{i:03}.css>; rel=preload; as=style"))
                    .collect::<Vec<_>>()
                    .join(", ");
                response(200, &[HTML, ("link", &value)], full("many"))
            }
            _ => response(404, &[], full("")),
        }
    })
    .await
}

async fn head_links(proxy: &Proxy, path: &str) -> Vec<String> {
    let got = client()
        .get(proxy.url(path))
        .send()
        .await
        .expect("response");
    let values = got
        .headers()
        .get_all("link")
        .iter()
        .map(|v| v.to_str().expect("ascii").to_owned())
        .collect();
    assert_eq!(got.text().await.expect("body"), "many!");
    values
}

#[tokio::test]
async fn the_head_holds_at_most_max_links_and_max_bytes_of_hints() {
    let origin = many_origin(10).await;
    let mut config = config();
    config.hints.max_links = 3;
    let proxy = proxy(&origin.base(), config).await;
    let got = head_links(&proxy, "/page").await;
    assert_eq!(
        got,
        strings(&[
            "</asset-000.css>; rel=preload; as=style",
            "</asset-001.css>; rel=preload; as=style",
            "</asset-002.css>; rel=preload; as=style",
        ]),
        "the first three, in order"
    );
    assert_eq!(
        proxy.metric("esi_proxy_hints_dropped_total{reason=\"count\"}"),
        Some(7.0)
    );

    // Each value is 39 bytes: 100 bytes hold two.
    let mut config = Config::default();
    config.hints.max_bytes = 100;
    let proxy = crate::support::proxy::proxy(&origin.base(), config).await;
    let got = head_links(&proxy, "/page").await;
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(
        proxy.metric("esi_proxy_hints_dropped_total{reason=\"bytes\"}"),
        Some(8.0)
    );
}

#[tokio::test]
async fn the_off_switches_leave_the_head_and_the_wire_as_before() {
    let origin = origin().await;
    let mut off = config();
    off.hints.enabled = false;
    let proxy = proxy(&origin.base(), off).await;
    let mut conn = Raw::open(&proxy).await;
    for _ in 0..2 {
        let got = conn.get("/first").await;
        assert!(got.informational.is_empty(), "{got:?}");
        assert_eq!(
            links(&got.head),
            strings(&[LAYOUT_HINT, "</c>; rel=canonical"]),
            "only the layout's own Link headers"
        );
    }

    let mut no_103 = config();
    no_103.hints.early_hints = false;
    let proxy = crate::support::proxy::proxy(&origin.base(), no_103).await;
    let mut conn = Raw::open(&proxy).await;
    for _ in 0..2 {
        let got = conn.get("/first").await;
        assert!(got.informational.is_empty(), "{got:?}");
        assert!(links(&got.head).contains(&A_CSS.to_owned()), "{}", got.head);
    }
    assert_eq!(
        proxy.metric("esi_proxy_early_hints_total{outcome=\"sent\"}"),
        None
    );
}

#[tokio::test]
async fn http_1_0_clients_and_head_requests_get_no_103() {
    let origin = origin().await;
    let proxy = proxy(&origin.base(), config()).await;
    Raw::open(&proxy).await.get("/page").await;

    let mut old = Raw::open(&proxy).await;
    old.send("GET /page HTTP/1.0\r\nhost: shop.test\r\n\r\n")
        .await;
    let mut bytes = Vec::new();
    tokio::time::timeout(MUST, old.stream.read_to_end(&mut bytes))
        .await
        .expect("the proxy answers")
        .expect("read");
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.starts_with("HTTP/1.0 200"), "{text}");
    assert!(!text.contains(" 103 "), "{text}");
    assert!(text.ends_with("<html><head>x</head>AB</html>"), "{text}");

    let mut head = Raw::open(&proxy).await;
    head.send("HEAD /page HTTP/1.1\r\nhost: shop.test\r\n\r\n")
        .await;
    let got = head.answer(true).await;
    assert!(got.informational.is_empty(), "{got:?}");
    assert!(got.head.starts_with("HTTP/1.1 200"), "{}", got.head);
    // The connection is still well framed after it.
    assert!(head.get("/page").await.head.starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn pipelined_requests_stay_well_framed() {
    let origin = origin().await;
    let proxy = proxy(&origin.base(), config()).await;
    Raw::open(&proxy).await.get("/page").await;

    let mut conn = Raw::open(&proxy).await;
    let one = "GET /page HTTP/1.1\r\nhost: shop.test\r\n\r\n";
    let plain = "GET /plain HTTP/1.1\r\nhost: shop.test\r\n\r\n";
    conn.send(&format!("{one}{plain}{one}{one}{plain}")).await;
    let mut early = 0;
    for want in ["page", "plain", "page", "page", "plain"] {
        let got = conn.answer(false).await;
        assert!(got.head.starts_with("HTTP/1.1 200"), "{}", got.head);
        if want == "plain" {
            assert_eq!(got.body, b"plain");
            assert!(got.informational.is_empty(), "{got:?}");
        } else {
            assert_eq!(got.body, b"<html><head>x</head>AB</html>");
            // A 103 goes only where hyper had nothing left of the response before.
            assert!(got.informational.len() <= 1, "{got:?}");
            for i in &got.informational {
                assert!(i.starts_with("HTTP/1.1 103 Early Hints\r\n"), "{i}");
            }
            early += got.informational.len();
        }
    }
    let sent = proxy
        .metric("esi_proxy_early_hints_total{outcome=\"sent\"}")
        .unwrap_or(0.0);
    assert_eq!(
        sent as usize, early,
        "every 103 written was read in its place"
    );
    let withdrawn = proxy
        .metric("esi_proxy_early_hints_total{outcome=\"withdrawn\"}")
        .unwrap_or(0.0);
    assert_eq!(early + withdrawn as usize, 3, "one queued per page request");
}

#[tokio::test]
async fn hostile_link_values_are_dropped_and_nothing_else_reaches_the_head() {
    let huge = format!("</big>; rel=preload; as=\"{}\"", "x".repeat(9000));
    let many = (0..300)
        .map(|i| format!("</m{i}>; rel=preload"))
        .collect::<Vec<_>>()
        .join(",");
    // Raw bytes: what no hyper server would send, as a hostile fragment service may.
    let fragment = serve_raw(move |mut stream| {
        let (huge, many) = (huge.clone(), many.clone());
        async move {
            if read_head(&mut stream).await.is_some() {
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: 1\r\n\
                     link: </a b>; rel=preload\r\n\
                     link: </ok.css>; rel=preload; as=\"style\\\"; x=\\\"y\"\r\n\
                     link: </q\">; rel=preload\r\n\
                     link: </nl%0d%0aSet-Cookie:%20a=b>; rel=preload\r\n\
                     link: </caf\u{e9}>; rel=preload\r\n\
                     link: {huge}\r\nlink: {many}\r\n\r\nF"
                );
                let _ = stream.write_all(head.as_bytes()).await;
            }
        }
    })
    .await;
    let frag_url = fragment.url("/f");
    let origin = serve(move |_req: Request<Incoming>| {
        let body = format!("<esi:include src=\"{frag_url}\"/>.");
        async move { response(200, &[HTML, ESI], full(body)) }
    })
    .await;
    let mut config = config();
    config.fetch.hosts.push(esi_proxy::config::HostConfig {
        url: fragment.base(),
        trusted: false,
        esi: false,
        private_network: true,
        http2: false,
        breaker: None,
    });
    config.hints.max_links = 5;
    let proxy = proxy(&origin.base(), config).await;
    let mut conn = Raw::open(&proxy).await;
    let got = conn.get("/page").await;
    assert_eq!(got.body, b"F.");
    let values = links(&got.head);
    assert_eq!(
        values,
        strings(&[
            r#"</ok.css>; rel=preload; as="style\"; x=\"y""#,
            "</nl%0d%0aSet-Cookie:%20a=b>; rel=preload",
            "</m0>; rel=preload",
            "</m1>; rel=preload",
            "</m2>; rel=preload",
        ]),
        "{}",
        got.head
    );
    assert!(
        !got.head.to_ascii_lowercase().contains("\nset-cookie"),
        "{}",
        got.head
    );
    assert!(
        proxy
            .metric("esi_proxy_hints_dropped_total{reason=\"invalid\"}")
            .unwrap_or(0.0)
            >= 4.0
    );
    assert_eq!(
        proxy.metric("esi_proxy_hints_dropped_total{reason=\"count\"}"),
        Some(297.0)
    );
}

/// An origin whose page opens with `/cached` (cacheable for a minute, with a hint), counting
/// the fragment's fetches in `Server::hits_on`.
async fn cached_origin() -> Server {
    serve(|req: Request<Incoming>| async move {
        match req.uri().path() {
            "/page" | "/other" => {
                response(200, &[HTML, ESI], full("<esi:include src=\"/cached\"/>."))
            }
            "/cached" => response(
                200,
                &[
                    HTML,
                    ("cache-control", "public, max-age=60"),
                    ("link", A_CSS),
                ],
                full("C"),
            ),
            _ => response(404, &[], full("")),
        }
    })
    .await
}

#[tokio::test]
async fn a_cached_fragments_hints_join_the_head_without_a_fetch() {
    let origin = cached_origin().await;
    let mut config = config();
    // Nothing remembered: the hint can only come from the fragment cache's entry.
    config.hints.max_pages = 0;
    let proxy = proxy(&origin.base(), config).await;
    let mut conn = Raw::open(&proxy).await;
    let first = conn.get("/page").await;
    assert_eq!(links(&first.head), strings(&[A_CSS]));
    let second = conn.get("/other").await;
    assert!(second.informational.is_empty(), "no memory, no 103");
    assert_eq!(links(&second.head), strings(&[A_CSS]), "{}", second.head);
    assert_eq!(second.body, b"C.");
    assert_eq!(origin.hits_on("/cached"), 1, "served from the cache");
}

#[tokio::test]
async fn nothing_a_visitor_with_credentials_fetched_is_remembered_for_others() {
    let origin = serve(|req: Request<Incoming>| async move {
        match req.uri().path() {
            "/page" | "/private" => response(
                200,
                &[HTML, ESI],
                full(if req.uri().path() == "/page" {
                    "<esi:include src=\"/a\"/>."
                } else {
                    "<esi:include src=\"/mine\"/>."
                }),
            ),
            "/a" => response(200, &[HTML, ("link", A_CSS)], full("A")),
            "/mine" => response(
                200,
                &[
                    HTML,
                    ("cache-control", "private"),
                    ("link", "</for-ann.css>; rel=preload"),
                ],
                full("M"),
            ),
            _ => response(404, &[], full("")),
        }
    })
    .await;
    let proxy = proxy(&origin.base(), config()).await;
    let mut conn = Raw::open(&proxy).await;
    // A visitor with a cookie gets the hints in the head, and leaves none behind.
    conn.send("GET /page HTTP/1.1\r\nhost: shop.test\r\ncookie: user=ann\r\n\r\n")
        .await;
    let ann = conn.answer(false).await;
    assert_eq!(links(&ann.head), strings(&[A_CSS]));
    let next = Raw::open(&proxy).await.get("/page").await;
    assert!(next.informational.is_empty(), "{next:?}");

    // A private response's hints, even to an anonymous request, stay with that visitor.
    let mut conn = Raw::open(&proxy).await;
    let first = conn.get("/private").await;
    assert_eq!(
        links(&first.head),
        strings(&["</for-ann.css>; rel=preload"])
    );
    let second = conn.get("/private").await;
    assert!(second.informational.is_empty(), "{second:?}");
}

#[tokio::test]
async fn the_waterfall_shows_each_fragments_hints() {
    let origin = origin().await;
    let mut config = config();
    config.server.admin_from_loopback = true;
    let proxy = proxy(&origin.base(), config).await;
    let text = client()
        .get(proxy.url("/_esi/debug/page?format=json"))
        .send()
        .await
        .expect("response")
        .text()
        .await
        .expect("json");
    let _: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert!(
        text.contains(&serde_json::to_string(CDN).expect("json")),
        "{text}"
    );
    let html = client()
        .get(proxy.url("/_esi/debug/page"))
        .send()
        .await
        .expect("response")
        .text()
        .await
        .expect("html");
    assert!(
        html.contains("Link: &#60;/b.js&#62;; rel=modulepreload"),
        "{html}"
    );
}
