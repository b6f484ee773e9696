//! Trust boundaries at the front door, end to end: request targets that name another host, the
//! `Host` a page is built for, and the forwarding headers a load balancer sends. Requests are
//! written as raw bytes, since the request line and `Host` are the point.

use std::net::SocketAddr;

use esi_proxy::config::{Config, HostConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{esi, full, html, proxy, response, serve, ESI, HTML, MUST};

/// Sends `head` (the request line and headers, without the blank line) with
/// `Connection: close` and returns the status and the answer as text, its body unchunked.
async fn send(addr: SocketAddr, head: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let request = format!("{head}\r\nconnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).await.expect("write");
    let mut bytes = Vec::new();
    tokio::time::timeout(MUST, s.read_to_end(&mut bytes))
        .await
        .expect("the response ends")
        .expect("read");
    let text = unchunk(&String::from_utf8_lossy(&bytes));
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    (status, text)
}

/// `text` with a chunked body's framing removed.
fn unchunk(text: &str) -> String {
    let Some((head, mut rest)) = text.split_once("\r\n\r\n") else {
        return text.to_owned();
    };
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return text.to_owned();
    }
    let mut body = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).expect("a chunk size");
        if size == 0 || after.len() < size {
            break;
        }
        body.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    format!("{head}\r\n\r\n{body}")
}

/// A layout whose include is relative to the page URL.
async fn layout_origin() -> crate::support::Server {
    serve(|_req| async { esi(r#"<p><esi:include src="frag"/></p>"#) }).await
}

/// The proxy with `other` allowlisted and trusted (it would get the visitor's cookies).
fn trusting(other: &crate::support::Server) -> Config {
    let mut config = Config::default();
    config.fetch.hosts.push(HostConfig {
        url: other.base(),
        trusted: true,
        private_network: true,
        esi: false,
        http2: false,
        breaker: None,
    });
    config
}

/// `GET //other-host/page` was joined to the origin URL as a scheme-relative reference: the
/// page URL named the other host, so the layout's relative include went there with cookies.
#[tokio::test]
async fn scheme_relative_target_reaches_no_host() {
    let origin = layout_origin().await;
    let other = serve(|_req| async { html("other") }).await;
    let proxy = proxy(&origin.base(), trusting(&other)).await;
    for target in [
        format!("//{}/page", other.addr),
        format!("/\\{}/page", other.addr),
        format!("/\\/{}/page", other.addr),
    ] {
        let head = format!(
            "GET {target} HTTP/1.1\r\nhost: {}\r\ncookie: session=secret",
            proxy.addr
        );
        let (status, text) = send(proxy.addr, &head).await;
        assert_eq!(status, 400, "{target}: {text}");
    }
    assert_eq!(origin.hits(), 0, "the origin was asked");
    assert_eq!(other.hits(), 0, "the other host was asked");
}

/// An absolute-form request for a host that is not this site was forwarded as a local path.
#[tokio::test]
async fn absolute_form_for_another_host_reaches_nothing() {
    let origin = serve(|_req| async { html("page") }).await;
    let proxy = proxy(&origin.base(), Config::default()).await;
    let head = "GET http://other.example/x HTTP/1.1\r\nhost: other.example";
    let (status, text) = send(proxy.addr, head).await;
    assert_eq!(status, 400, "{text}");
    assert_eq!(origin.hits(), 0, "the origin was asked");
}

/// A plain origin-form target still goes through, the origin asked for the path it names.
#[tokio::test]
async fn origin_form_target_reaches_the_origin() {
    let origin = serve(|_req| async { html("page") }).await;
    let proxy = proxy(&origin.base(), Config::default()).await;
    let head = format!("GET /a/page?q=1 HTTP/1.1\r\nhost: {}", proxy.addr);
    let (status, text) = send(proxy.addr, &head).await;
    assert_eq!(status, 200, "{text}");
    let received = origin.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].uri, "/a/page?q=1");
}

/// What the origin was told about the host, or `-`.
fn told_host(req: &http::Request<hyper::body::Incoming>) -> String {
    req.headers()
        .get("x-forwarded-host")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned()
}

/// An origin whose cacheable layout and fragment both print the host they were told of.
async fn host_echoing_origin() -> crate::support::Server {
    serve(|req| async move {
        let host = told_host(&req);
        let cc = ("cache-control", "public, max-age=60");
        if req.uri().path() == "/frag" {
            return response(200, &[HTML, cc], full(format!("frag:{host}")));
        }
        let layout = format!(r#"layout:{host} <esi:include src="/frag"/>"#);
        response(200, &[HTML, ESI, cc], full(layout))
    })
    .await
}

/// A request for a host that is not one of `server.site_names` was served.
#[tokio::test]
async fn host_that_is_not_a_site_name_is_misdirected() {
    let origin = serve(|req| async move { html(told_host(&req)) }).await;
    let mut config = Config::default();
    config.server.site_names = vec!["www.example".into()];
    let proxy = proxy(&origin.base(), config).await;
    let (status, text) = send(proxy.addr, "GET /page HTTP/1.1\r\nhost: evil.example").await;
    assert_eq!(status, 421, "{text}");
    assert_eq!(origin.hits(), 0, "the origin was asked");
    let (status, text) = send(proxy.addr, "GET /page HTTP/1.1\r\nhost: WWW.example").await;
    assert_eq!(status, 200, "{text}");
    assert!(text.ends_with("\r\n\r\nwww.example"), "{text}");
    // Absolute-form: served for the site name `Host` repeats, refused for any other.
    let head = "GET http://www.example/page HTTP/1.1\r\nhost: www.example";
    assert_eq!(send(proxy.addr, head).await.0, 200);
    let head = "GET http://evil.example/page HTTP/1.1\r\nhost: www.example";
    assert_eq!(send(proxy.addr, head).await.0, 400);
    assert_eq!(origin.hits(), 2, "only the two requests for www.example");
}

/// With no site names, the client's `Host` went to the origin as `X-Forwarded-Host` while the
/// cached layout's key did not hold it: one request poisoned the page for everyone.
#[tokio::test]
async fn client_host_does_not_poison_a_cached_layout() {
    let origin = host_echoing_origin().await;
    let proxy = proxy(&origin.base(), Config::default()).await;
    let (status, text) = send(proxy.addr, "GET /page HTTP/1.1\r\nhost: evil.example").await;
    assert_eq!(status, 200, "{text}");
    let head = format!("GET /page HTTP/1.1\r\nhost: {}", proxy.addr);
    let (status, text) = send(proxy.addr, &head).await;
    assert_eq!(status, 200, "{text}");
    assert!(!text.contains("evil.example"), "poisoned: {text}");
    for req in origin.received() {
        assert_eq!(req.headers.get("x-forwarded-host"), None, "{}", req.uri);
    }
}

/// With site names, each host gets the layout and fragments built for it, though both are
/// cached: the host the origin was told is part of the cache keys.
#[tokio::test]
async fn each_site_name_has_its_own_cached_page() {
    let origin = host_echoing_origin().await;
    let mut config = Config::default();
    config.server.site_names = vec!["a.example".into(), "b.example".into()];
    let proxy = proxy(&origin.base(), config).await;
    for host in ["a.example", "b.example", "a.example", "b.example"] {
        let head = format!("GET /page HTTP/1.1\r\nhost: {host}");
        let (status, text) = send(proxy.addr, &head).await;
        assert_eq!(status, 200, "{text}");
        let want = format!("\r\n\r\nlayout:{host} frag:{host}");
        assert!(text.ends_with(&want), "{host}: {text}");
    }
    assert_eq!(origin.hits(), 4, "each host's layout and fragment, once");
}

/// An origin that answers with the forwarding headers it received, one `name: value` a line.
async fn forwarding_echo() -> crate::support::Server {
    serve(|req| async move {
        let mut lines = Vec::new();
        for name in [
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
            "forwarded",
        ] {
            for value in req.headers().get_all(name) {
                lines.push(format!("{name}: {}", value.to_str().unwrap_or("?")));
            }
        }
        html(lines.join("\n"))
    })
    .await
}

/// What a load balancer in front sends.
const FROM_BALANCER: &str = "x-forwarded-for: 203.0.113.9\r\nx-forwarded-proto: https\r\n\
    x-forwarded-host: www.example\r\nforwarded: for=203.0.113.9;proto=https";

/// Behind a load balancer, the client's address, scheme and host were lost: X-Forwarded-For
/// was replaced by the balancer's address and X-Forwarded-Proto hard-coded to `http`.
#[tokio::test]
async fn forwarding_headers_from_a_trusted_proxy_are_kept() {
    let origin = forwarding_echo().await;
    let mut config = Config::default();
    config.server.trusted_proxies = vec!["127.0.0.1/32".into()];
    let proxy = proxy(&origin.base(), config).await;
    let head = format!(
        "GET /page HTTP/1.1\r\nhost: {}\r\n{FROM_BALANCER}",
        proxy.addr
    );
    let (status, text) = send(proxy.addr, &head).await;
    assert_eq!(status, 200, "{text}");
    let want = "x-forwarded-for: 203.0.113.9, 127.0.0.1\nx-forwarded-proto: https\n\
        x-forwarded-host: www.example\nforwarded: for=203.0.113.9;proto=https";
    assert!(text.ends_with(want), "{text}");
}

/// From a peer that is not a trusted proxy, the same headers are replaced, as before.
#[tokio::test]
async fn forwarding_headers_from_anyone_else_are_replaced() {
    let origin = forwarding_echo().await;
    let mut config = Config::default();
    config.server.trusted_proxies = vec!["10.0.0.0/8".into()];
    let proxy = proxy(&origin.base(), config).await;
    let head = format!(
        "GET /page HTTP/1.1\r\nhost: {}\r\n{FROM_BALANCER}",
        proxy.addr
    );
    let (status, text) = send(proxy.addr, &head).await;
    assert_eq!(status, 200, "{text}");
    let want = "\r\n\r\nx-forwarded-for: 127.0.0.1\nx-forwarded-proto: http";
    assert!(text.ends_with(want), "{text}");
}

/// A trusted proxy's X-Forwarded-Host names the host the client asked for, so it is what the
/// site names are checked against: one that is none of them was served under the proxy's Host.
#[tokio::test]
async fn trusted_proxy_forwarded_host_must_be_a_site_name() {
    let origin = forwarding_echo().await;
    let mut config = Config::default();
    config.server.trusted_proxies = vec!["127.0.0.1".into()];
    config.server.site_names = vec!["www.example".into()];
    let proxy = proxy(&origin.base(), config).await;
    let head = "GET /page HTTP/1.1\r\nhost: www.example\r\nx-forwarded-host: evil.example";
    let (status, text) = send(proxy.addr, head).await;
    assert_eq!(status, 421, "{text}");
    let head = "GET /page HTTP/1.1\r\nhost: internal.lb\r\nx-forwarded-host: WWW.example";
    let (status, text) = send(proxy.addr, head).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("x-forwarded-host: www.example"), "{text}");
    assert_eq!(origin.hits(), 1, "only the request for www.example");
}
