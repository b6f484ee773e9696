//! The page's head decided while streaming: a `primary="true"` include's status, `Location` and
//! trusted `Set-Cookie` become the page's; the layout's response functions change the head when
//! called in time; pages without either still stream their first bytes at once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use esi_proxy::config::{Config, HostConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::proxy::{get, proxy, Proxy};
use crate::support::{esi, full, html, raw_get, response, serve, Server, HTML, MUST};

/// An origin whose `/page` is `layout` (ESI) and whose fragments answer as `fragment` says.
async fn origin<F>(layout: &'static str, fragment: F) -> Server
where
    F: Fn(&str) -> http::Response<crate::support::Body> + Send + Sync + 'static,
{
    let fragment = Arc::new(fragment);
    serve(move |req| {
        let fragment = Arc::clone(&fragment);
        async move {
            match req.uri().path() {
                "/page" => esi(layout),
                p => fragment(p),
            }
        }
    })
    .await
}

async fn start(origin: &Server) -> Proxy {
    proxy(&origin.base(), Config::default()).await
}

fn header(headers: &http::HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().expect("text").to_owned())
        .collect()
}

/// A client that shows redirects instead of following them.
fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

const PRODUCT: &str = "<p>head</p><esi:include src=\"/f/product\" primary=\"true\"/><p>foot</p>";

#[tokio::test]
async fn a_trusted_primarys_set_cookie_reaches_the_visitor_and_the_page_is_private() {
    let origin = origin(PRODUCT, |_| {
        response(
            200,
            &[HTML, ("set-cookie", "sid=42; HttpOnly")],
            full("product"),
        )
    })
    .await;
    let proxy = start(&origin).await;
    let (status, headers, body) = get(&proxy.url("/page")).await;
    assert_eq!(status, 200);
    assert_eq!(body, "<p>head</p>product<p>foot</p>");
    assert_eq!(header(&headers, "set-cookie"), ["sid=42; HttpOnly"]);
    let cc = header(&headers, "cache-control").join(",");
    assert!(cc.contains("private"), "cache-control: {cc}");
    assert_eq!(
        proxy.metric("esi_proxy_primary_total{outcome=\"ok\"}"),
        Some(1.0)
    );
}

#[tokio::test]
async fn an_untrusted_primarys_set_cookie_is_dropped() {
    let partner =
        serve(|_| async { response(200, &[HTML, ("set-cookie", "track=1")], full("partner")) })
            .await;
    let layout: &'static str = Box::leak(
        format!(
            "<p>a</p><esi:include src=\"{}\" primary=\"true\"/>",
            partner.url("/f/p")
        )
        .into_boxed_str(),
    );
    let origin = origin(layout, |_| html("x")).await;
    let mut config = Config::default();
    config.fetch.hosts.push(HostConfig {
        url: partner.base(),
        trusted: false,
        esi: false,
        private_network: true,
        http2: false,
        breaker: None,
    });
    let proxy = proxy(&origin.base(), config).await;
    let (status, headers, body) = get(&proxy.url("/page")).await;
    assert_eq!(status, 200);
    assert_eq!(body, "<p>a</p>partner");
    assert!(header(&headers, "set-cookie").is_empty(), "{headers:?}");
}

#[tokio::test]
async fn a_primary_404_makes_the_page_404_with_the_primarys_body() {
    let origin = origin(PRODUCT, |_| {
        response(
            404,
            &[("content-type", "text/html")],
            full("no such product"),
        )
    })
    .await;
    let proxy = start(&origin).await;
    let (status, headers, body) = get(&proxy.url("/page")).await;
    assert_eq!(status, 404);
    assert_eq!(body, "no such product");
    assert_eq!(header(&headers, "content-type"), ["text/html"]);
    assert_eq!(
        proxy.metric("esi_proxy_primary_total{outcome=\"client_error\"}"),
        Some(1.0)
    );
}

#[tokio::test]
async fn a_primary_301_redirects_the_page() {
    let origin = origin(PRODUCT, |_| {
        response(301, &[("location", "/p/new-id")], full("moved"))
    })
    .await;
    let proxy = start(&origin).await;
    let resp = no_redirects()
        .get(proxy.url("/page"))
        .send()
        .await
        .expect("response");
    assert_eq!(resp.status(), 301);
    assert_eq!(header(resp.headers(), "location"), ["/p/new-id"]);
    assert_eq!(resp.text().await.expect("body"), "moved");
}

#[tokio::test]
async fn a_primary_redirect_to_another_scheme_fails_the_page() {
    let origin = origin(PRODUCT, |_| {
        response(302, &[("location", "javascript:alert(1)")], full(""))
    })
    .await;
    let proxy = start(&origin).await;
    let (status, headers, _) = get(&proxy.url("/page")).await;
    assert_eq!(status, 502);
    assert!(header(&headers, "location").is_empty());
}

#[tokio::test]
async fn a_primary_timeout_is_a_504_before_any_byte() {
    let layout = "<p>prefix</p><esi:include src=\"/f/slow\" primary=\"true\" maxwait=\"150\"/>";
    let origin = serve(move |req| async move {
        if req.uri().path() == "/page" {
            return esi(layout);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        html("late")
    })
    .await;
    let proxy = start(&origin).await;
    let raw = raw_get(proxy.addr, "/page").await;
    assert!(raw.head.starts_with("HTTP/1.1 504"), "head: {}", raw.head);
    let body = String::from_utf8_lossy(&raw.body);
    assert!(!body.contains("prefix"), "no page byte was sent: {body}");
    assert_eq!(
        proxy.metric("esi_proxy_primary_total{outcome=\"failed\"}"),
        Some(1.0)
    );
}

#[tokio::test]
async fn a_failed_primary_with_an_alt_keeps_the_layouts_head() {
    let layout =
        "<p>a</p><esi:include src=\"/f/slow\" alt=\"/f/alt\" primary=\"true\" maxwait=\"150\"/>";
    let origin = serve(move |req| async move {
        match req.uri().path() {
            "/page" => esi(layout),
            "/f/alt" => html("alt content"),
            _ => {
                tokio::time::sleep(Duration::from_secs(2)).await;
                html("late")
            }
        }
    })
    .await;
    let proxy = start(&origin).await;
    let (status, _, body) = get(&proxy.url("/page")).await;
    assert_eq!(status, 200);
    assert_eq!(body, "<p>a</p>alt content");
    assert_eq!(
        proxy.metric("esi_proxy_primary_total{outcome=\"alt\"}"),
        Some(1.0)
    );
}

/// The include after the primary is asked for while the primary is still answering: the head
/// waits for the primary alone, never serialising the page's fetches behind it.
#[tokio::test]
async fn other_includes_are_fetched_while_the_head_waits() {
    let layout =
        "<esi:include src=\"/f/product\" primary=\"true\"/><esi:include src=\"/f/other\"/>";
    let seen: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let record = Arc::clone(&seen);
    let origin = serve(move |req| {
        let record = Arc::clone(&record);
        async move {
            let path = req.uri().path().to_owned();
            if path == "/page" {
                return esi(layout);
            }
            record
                .lock()
                .expect("lock")
                .push((path.clone(), Instant::now()));
            if path == "/f/product" {
                tokio::time::sleep(Duration::from_millis(800)).await;
                let answered = Instant::now();
                record
                    .lock()
                    .expect("lock")
                    .push(("answered".into(), answered));
            }
            html(path)
        }
    })
    .await;
    let proxy = start(&origin).await;
    let (status, _, body) = get(&proxy.url("/page")).await;
    assert_eq!(status, 200);
    assert_eq!(body, "/f/product/f/other");
    let seen = seen.lock().expect("lock").clone();
    let at = |name: &str| {
        seen.iter()
            .find(|(p, _)| p == name)
            .map(|(_, t)| *t)
            .unwrap_or_else(|| panic!("{name} in {seen:?}"))
    };
    assert!(
        at("/f/other") < at("answered"),
        "the other include started before the primary answered: {seen:?}"
    );
}

/// A page without a primary sends its head and prefix while a fragment is still being fetched:
/// the fragment answers only once the test has read the prefix off the socket.
#[tokio::test]
async fn without_a_primary_first_bytes_leave_before_a_slow_fragment() {
    let layout = "<p>prefix</p><esi:include src=\"/f/slow\"/><p>end</p>";
    let release = Arc::new(tokio::sync::Notify::new());
    let gate = Arc::clone(&release);
    let origin = serve(move |req| {
        let gate = Arc::clone(&gate);
        async move {
            if req.uri().path() == "/page" {
                return esi(layout);
            }
            gate.notified().await;
            html("slow")
        }
    })
    .await;
    let proxy = proxy(&origin.base(), Config::default()).await;
    let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
    let request = format!("GET /page HTTP/1.1\r\nhost: {}\r\n\r\n", proxy.addr);
    s.write_all(request.as_bytes()).await.expect("write");
    let mut got = Vec::new();
    tokio::time::timeout(MUST, async {
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&got).contains("<p>prefix</p>") {
            let n = s.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("head and prefix arrive while the fragment is held back");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(!text.contains("slow"), "{text}");
    release.notify_one();
}

/// A layout, the status, headers and body the page gets.
type Case = (
    &'static str,
    u16,
    &'static [(&'static str, &'static str)],
    &'static str,
);

#[tokio::test]
async fn response_functions_before_the_first_output_change_the_head() {
    let cases: &[Case] = &[
        (
            "<esi:assign name=\"x\" value=\"$set_response_code(404)\"/>not found page",
            404,
            &[],
            "not found page",
        ),
        (
            "<esi:assign name=\"x\" value=\"$set_response_code(410, 'gone')\"/>page",
            410,
            &[],
            "gone",
        ),
        (
            "<esi:assign name=\"x\" value=\"$set_redirect('/login')\"/>page",
            302,
            &[("location", "/login")],
            "",
        ),
        (
            "<esi:assign name=\"x\" value=\"$add_header('X-Tier', 'gold')\"/>\
             <esi:assign name=\"y\" value=\"$add_header('Set-Cookie', 'a=1')\"/>page",
            200,
            &[("x-tier", "gold")],
            "page",
        ),
    ];
    for (layout, want_status, want_headers, want_body) in cases {
        let layout: &'static str = layout;
        let origin = origin(layout, |_| html("")).await;
        let proxy = start(&origin).await;
        let resp = no_redirects()
            .get(proxy.url("/page"))
            .send()
            .await
            .expect("response");
        assert_eq!(resp.status(), *want_status, "{layout}");
        for (name, value) in *want_headers {
            assert_eq!(header(resp.headers(), name), [*value], "{layout}");
        }
        assert!(header(resp.headers(), "set-cookie").is_empty(), "{layout}");
        assert_eq!(resp.text().await.expect("body"), *want_body, "{layout}");
    }
}

#[tokio::test]
async fn a_second_primary_is_ignored() {
    let layout = "<esi:include src=\"/f/a\" primary=\"true\"/>\
                  <esi:include src=\"/f/b\" primary=\"true\" onerror=\"continue\"/>";
    let origin = origin(layout, |p| {
        if p == "/f/b" {
            response(404, &[HTML], full("b missing"))
        } else {
            html("a")
        }
    })
    .await;
    let proxy = start(&origin).await;
    let (status, _, body) = get(&proxy.url("/page")).await;
    assert_eq!(
        status, 200,
        "the second primary's 404 does not decide the page"
    );
    assert_eq!(body, "a");
    assert_eq!(
        proxy.metric("esi_proxy_primary_total{outcome=\"ignored\"}"),
        Some(1.0)
    );
}

/// A primary's `Set-Cookie` response is never stored: each visitor gets the cookie made for
/// them, even when the fragment says it may be cached.
#[tokio::test]
async fn a_cached_primary_never_hands_one_visitors_cookie_to_another() {
    let counter = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&counter);
    let origin = origin(PRODUCT, move |_| {
        let n = count.fetch_add(1, Ordering::SeqCst);
        let cookie = format!("sid=visitor{n}");
        let cookie: &'static str = Box::leak(cookie.into_boxed_str());
        response(
            200,
            &[
                HTML,
                ("cache-control", "public, max-age=60"),
                ("set-cookie", cookie),
            ],
            full("product"),
        )
    })
    .await;
    let proxy = start(&origin).await;
    let (_, first, _) = get(&proxy.url("/page")).await;
    let (_, second, body) = get(&proxy.url("/page")).await;
    assert_eq!(body, "<p>head</p>product<p>foot</p>");
    assert_eq!(header(&first, "set-cookie"), ["sid=visitor0"]);
    assert_eq!(header(&second, "set-cookie"), ["sid=visitor1"]);
    assert_eq!(
        counter.load(Ordering::SeqCst),
        2,
        "fetched for each visitor"
    );
}

/// The waterfall marks the primary row and says how the head was decided.
#[tokio::test]
async fn the_waterfall_marks_the_primary_and_the_heads_wait() {
    let origin = origin(PRODUCT, |_| response(404, &[HTML], full("no such product"))).await;
    let mut config = Config::default();
    config.server.admin_from_loopback = true;
    let proxy = proxy(&origin.base(), config).await;
    let (_, _, body) = get(&proxy.url("/_esi/debug/page?format=json")).await;
    let report: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(report["status"], 404, "{report}");
    assert_eq!(report["fragments"][0]["primary"], true, "{report}");
    assert_eq!(
        report["head"]["primary_outcome"], "client_error",
        "{report}"
    );
    assert_eq!(report["head"]["status"], 404, "{report}");
}
