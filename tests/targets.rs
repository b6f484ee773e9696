//! Trust boundaries at the front door, end to end: request targets that name another host, the
//! `Host` a page is built for, and the forwarding headers a load balancer sends. Requests are
//! written as raw bytes, since the request line and `Host` are the point.

use std::net::SocketAddr;

use esi_proxy::config::{Config, HostConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{esi, html, proxy, serve, MUST};

/// Sends `head` (the request line and headers, without the blank line) with
/// `Connection: close` and returns the status and the whole answer as text.
async fn send(addr: SocketAddr, head: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let request = format!("{head}\r\nconnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).await.expect("write");
    let mut bytes = Vec::new();
    tokio::time::timeout(MUST, s.read_to_end(&mut bytes))
        .await
        .expect("the response ends")
        .expect("read");
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    (status, text)
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
