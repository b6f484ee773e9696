//! HTTPS origins and fragment hosts: a CA made for the test and trusted only through
//! `fetch.ca_certs`, a page composed over TLS, and the failures when a certificate is not
//! trusted.

use esi_proxy::config::{Config, HostConfig};
use http::StatusCode;

use crate::support::tls::Identity;
use crate::support::{esi, full, get, html, proxy, response, serve, serve_tls, Server};

/// A fresh directory for one test's CA files.
fn temp_dir(test: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("esi-proxy-{test}-{}", std::process::id()))
}

/// A host entry on a loopback address.
fn host(server: &Server) -> HostConfig {
    HostConfig {
        url: server.base(),
        trusted: false,
        esi: false,
        private_network: true,
        http2: false,
        breaker: None,
    }
}

/// README: "The origin's host is always allowed ... other fragment hosts are allowed ... by
/// `[[fetch.hosts]]` entries", over `https` as over `http`: the layout, a fragment on the
/// origin and a fragment on another host all come over TLS, trusted through `fetch.ca_certs`;
/// a host whose certificate no trusted CA signed is never sent a request and takes its `alt`.
#[tokio::test]
async fn a_page_composed_over_tls_with_a_ca_from_the_config() {
    let ca = Identity::new("esi-proxy test CA");
    let stranger_ca = Identity::new("a CA nobody trusts");
    let fragments = serve_tls(
        &ca,
        |req| async move { html(format!("<{}>", req.uri().path())) },
    )
    .await;
    let stranger = serve_tls(&stranger_ca, |_| async { html("NEVER") }).await;
    let layout = format!(
        "<h1>tls</h1><esi:include src=\"{}/f\"/>|<esi:include src=\"/own\"/>|<esi:include src=\"{}/x\" alt=\"/fallback\"/>|",
        fragments.base(),
        stranger.base()
    );
    let origin = serve_tls(&ca, move |req| {
        let layout = layout.clone();
        async move {
            match req.uri().path() {
                "/page" => esi(layout),
                p => html(format!("[{p}]")),
            }
        }
    })
    .await;
    assert!(origin.base().starts_with("https://127.0.0.1:"));
    let dir = temp_dir("tls-page");
    let mut config = Config::default();
    config.fetch.ca_certs = vec![ca.write_ca(&dir, "ca.pem").display().to_string()];
    config.fetch.hosts = vec![host(&fragments), host(&stranger)];
    let proxy = proxy(&origin.base(), config).await;

    let (status, _, body) = get(&proxy.url("/page")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "<h1>tls</h1></f>|[/own]|[/fallback]|");
    assert_eq!(stranger.hits(), 0, "no request over an untrusted handshake");
    assert!(
        stranger.connections().await > 0,
        "refused for its certificate, in the handshake, not before connecting"
    );
    assert_eq!(
        proxy.metric("esi_proxy_fallbacks_total{kind=\"alt\"}"),
        Some(1.0)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// An `https` origin is trusted through `fetch.ca_certs` and nothing else: with its CA the page
/// is served; with another CA only, or none, the handshake fails and the client gets a 502.
#[tokio::test]
async fn an_https_origin_without_a_trusted_certificate_is_a_502() {
    let ca = Identity::new("the origin's CA");
    let other = Identity::new("another CA");
    let origin = serve_tls(&ca, |_| async { esi("<p>secure</p>") }).await;
    let dir = temp_dir("tls-origin");
    // (CA files, status, body)
    let cases = [
        (
            vec![ca.write_ca(&dir, "origin.pem")],
            StatusCode::OK,
            "<p>secure</p>",
        ),
        (
            vec![other.write_ca(&dir, "other.pem")],
            StatusCode::BAD_GATEWAY,
            "502 Bad Gateway\n",
        ),
        (vec![], StatusCode::BAD_GATEWAY, "502 Bad Gateway\n"),
    ];
    for (files, want_status, want_body) in cases {
        let mut config = Config::default();
        config.fetch.ca_certs = files.iter().map(|f| f.display().to_string()).collect();
        let proxy = proxy(&origin.base(), config).await;
        let (status, _, body) = get(&proxy.url("/page")).await;
        assert_eq!(
            (status, body.as_str()),
            (want_status, want_body),
            "{files:?}"
        );
    }
    assert_eq!(
        origin.hits(),
        1,
        "only the trusting proxy got as far as a request"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `fetch.ca_certs` naming a file that does not exist is a config error naming the field.
#[test]
fn a_missing_ca_file_is_refused_by_validation() {
    let mut config = Config::default();
    config.fetch.ca_certs = vec!["/nonexistent/ca.pem".into()];
    let err = config.validate().expect_err("refused").to_string();
    assert!(
        err.starts_with("<config>:0: fetch.ca_certs[0]: \"/nonexistent/ca.pem\": "),
        "{err}"
    );
}

/// Over TLS, as over plain HTTP (tests/faults.rs), a fragment in a `Content-Encoding` the
/// proxy does not undo is a failure counted as `decode`, never placed still encoded: reqwest
/// passes such a body through as it came.
#[tokio::test]
async fn an_https_fragment_in_an_unknown_encoding_takes_its_alt() {
    let ca = Identity::new("esi-proxy test CA");
    let fragments = serve_tls(&ca, |_| async {
        response(
            200,
            &[("content-encoding", "x-unheard-of")],
            full("MARKER-TLS-ENCODED"),
        )
    })
    .await;
    let layout = format!(
        "[<esi:include src=\"{}/f\" alt=\"/fallback\"/>]",
        fragments.base()
    );
    let origin = serve(move |req| {
        let layout = layout.clone();
        async move {
            match req.uri().path() {
                "/page" => esi(layout),
                p => html(format!("({p})")),
            }
        }
    })
    .await;
    let dir = temp_dir("tls-encoding");
    let mut config = Config::default();
    config.fetch.ca_certs = vec![ca.write_ca(&dir, "ca.pem").display().to_string()];
    config.fetch.hosts = vec![host(&fragments)];
    config.cache.enabled = false;
    let proxy = proxy(&origin.base(), config).await;
    let (status, _, body) = get(&proxy.url("/page")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "[(/fallback)]"));
    assert_eq!(
        proxy.metric("esi_proxy_fragment_failures_total{kind=\"decode\"}"),
        Some(1.0)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
