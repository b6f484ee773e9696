//! `/_esi/debug/<path>`: the page-build waterfall as JSON and HTML, with nesting, cache
//! outcomes, fallbacks and the critical path, and its access rule.

use esi_proxy::config::Config;
use http::StatusCode;

use crate::support::{client, esi, full, get, html, proxy, response, serve, Server};

async fn shop() -> Server {
    serve(|req| async move {
        let mut r = match req.uri().path() {
            "/product" => esi(concat!(
                "<h1>P</h1><esi:include src=\"/header\"/>",
                "<esi:include src=\"/down\" alt=\"/fallback\"/>",
                "<esi:include src=\"/recs\"/>",
            )),
            "/recs" => esi("<esi:include src=\"/tile/1\"/><esi:include src=\"/tile/2\"/>"),
            "/down" => response(500, &[("content-type", "text/html")], full("boom")),
            p => html(format!("[{p}]")),
        };
        if req.uri().path() == "/header" {
            r.headers_mut().insert(
                "cache-control",
                http::HeaderValue::from_static("max-age=60"),
            );
        }
        r
    })
    .await
}

/// A config under which this test's loopback client is an admin.
fn loopback_admin() -> Config {
    let mut config = Config::default();
    config.server.admin_from_loopback = true;
    config
}

/// README: "Every page can be opened as its page-build waterfall at `/_esi/debug/<path>` ... (`?format=json` gives the same data to tools)".
#[tokio::test]
async fn json_waterfall_shows_every_fetch_nested_with_cache_and_fallbacks() {
    let origin = shop().await;
    let proxy = proxy(&origin.base(), loopback_admin()).await;
    let _ = get(&proxy.url("/product")).await; // warms /header
    let (status, headers, body) = get(&proxy.url("/_esi/debug/product?format=json")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(headers
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json")));
    let report: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(report["path"], "/product");
    assert_eq!(report["composed"], true);
    assert_eq!(
        report["bytes"],
        "<h1>P</h1>[/header][/fallback][/tile/1][/tile/2]".len()
    );
    let rows = report["fragments"].as_array().expect("fragments");
    let find = |suffix: &str| {
        rows.iter()
            .find(|r| r["url"].as_str().is_some_and(|u| u.ends_with(suffix)))
            .expect(suffix)
    };
    assert_eq!(find("/header")["cache"], "hit");
    assert_eq!(find("/down")["outcome"], "status");
    assert_eq!(find("/down")["fallback"], "alt");
    assert_eq!(find("/fallback")["alt"], true);
    let recs = find("/recs");
    assert_eq!(recs["esi"], true);
    let tile = find("/tile/2");
    assert_eq!(tile["parent"], recs["id"]);
    assert_eq!(tile["depth"], 1);
    assert!(rows.iter().any(|r| r["critical"] == true));
    assert!(
        report["vs_floor"].as_f64().is_some_and(|v| v > 0.0),
        "{report}"
    );
    assert!(report["layout"]["status"] == 200);
}

/// README: "the layout and every fragment fetch on one time axis, nested ones indented under their parent ... the critical path highlighted".
#[tokio::test]
async fn html_waterfall_draws_bars_on_a_time_axis() {
    let origin = shop().await;
    let proxy = proxy(&origin.base(), loopback_admin()).await;
    let (status, headers, body) = get(&proxy.url("/_esi/debug/product")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"text/html")));
    assert!(body.contains("Page build: /product"), "{body}");
    assert_eq!(
        body.matches("class=\"bar ").count(),
        7,
        "layout + 6 fetches: {body}"
    );
    assert!(
        body.contains("data-depth=\"2\""),
        "nested rows are indented"
    );
    assert!(body.contains("class=\"critical\""));
    assert!(body.contains("tag fallback\">alt"));
    assert!(!body.contains("<esi:"));
}

#[tokio::test]
async fn debug_needs_the_token_when_loopback_is_not_trusted() {
    let origin = shop().await;
    // Loopback is not trusted by default (server.admin_from_loopback = false).
    let mut config = Config::default();
    config.server.admin_token = "tok".into();
    let proxy = proxy(&origin.base(), config).await;
    let (status, _, _) = get(&proxy.url("/_esi/debug/product")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let resp = client()
        .get(proxy.url("/_esi/debug/product?format=json"))
        .bearer_auth("tok")
        .send()
        .await
        .expect("ok");
    assert_eq!(resp.status(), StatusCode::OK);
}
