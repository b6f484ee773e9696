//! The demo shop's markup through the real ESI parser in strict mode (the layout and every ESI
//! fragment), and the page composed by the proxy with every include resolved.

use bytes::Bytes;
use esi_proxy::esi::{parse, ParseOptions};
use fragments::demo::{Demo, DemoConfig};

use crate::support::{client, demo_config, get, proxy};

/// README: "The product page is composed from 138 fragments, some of them ESI themselves".
#[tokio::test]
async fn demo_markup_is_strictly_valid_esi_and_composes_whole() {
    let demo = Demo::start(DemoConfig::default().without_latency())
        .await
        .expect("demo starts");
    let c = client();
    let mut urls = vec![demo.page_url()];
    urls.extend(demo.fragment_urls().iter().cloned());
    let mut esi_documents = 0;
    for url in &urls {
        let resp = c.get(url).send().await.expect("service answers");
        assert!(resp.status().is_success(), "{url}: {}", resp.status());
        let marked = resp
            .headers()
            .get("surrogate-control")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("ESI/1.0"));
        let body = resp.bytes().await.expect("body");
        if marked {
            esi_documents += 1;
            if let Err(e) = parse(Bytes::clone(&body), &ParseOptions::strict()) {
                panic!("{url}: {e}");
            }
        }
    }
    assert!(
        esi_documents >= 8,
        "the layout and the ESI fragments: {esi_documents}"
    );

    let proxy = proxy(&format!("http://{}", demo.gateway), demo_config(&demo)).await;
    let (status, _, page) = get(&proxy.url("/")).await;
    assert!(status.is_success());
    assert!(!page.contains("esi:"), "every include was resolved");
    let failures = proxy.metrics.render();
    assert!(
        !failures.contains("esi_proxy_fragment_failures_total{"),
        "no fragment failed: {failures}"
    );
}

/// README, preload hints: the demo's fragments send `Link: rel=preload` for the stylesheets
/// their markup uses; the page composed before carries them in its head, each once, and the
/// stylesheets are served.
#[tokio::test]
async fn demo_fragments_send_preload_hints_that_reach_the_page_head() {
    let demo = Demo::start(DemoConfig::default().without_latency())
        .await
        .expect("demo starts");
    let proxy = proxy(&format!("http://{}", demo.gateway), demo_config(&demo)).await;
    let c = client();
    let links = |resp: &reqwest::Response| -> Vec<String> {
        resp.headers()
            .get_all("link")
            .iter()
            .map(|v| v.to_str().expect("ascii").to_owned())
            .collect()
    };
    let first = c.get(proxy.url("/")).send().await.expect("page");
    first.bytes().await.expect("whole page");
    let second = c.get(proxy.url("/")).send().await.expect("page");
    let got = links(&second);
    second.bytes().await.expect("whole page");
    for want in [
        "</assets/shop.css>; rel=preload; as=style",
        "</assets/gallery.css>; rel=preload; as=style",
    ] {
        assert_eq!(
            got.iter().filter(|l| *l == want).count(),
            1,
            "{want} once in {got:?}"
        );
    }
    for path in ["/assets/shop.css", "/assets/gallery.css"] {
        let css = c.get(proxy.url(path)).send().await.expect("stylesheet");
        assert!(css.status().is_success(), "{path}: {}", css.status());
        let kind = css.headers().get("content-type").cloned();
        assert_eq!(
            kind.as_ref().and_then(|v| v.to_str().ok()),
            Some("text/css; charset=utf-8")
        );
    }
}

/// README, primary fragments: the demo's product fragment is primary, so a product id the
/// catalog does not know makes the whole page a 404 with the fragment's "no such product"
/// body; the known id (or none) is the whole page.
#[tokio::test]
async fn demo_unknown_product_id_is_a_404_page() {
    let demo = Demo::start(DemoConfig::default().without_latency())
        .await
        .expect("demo starts");
    let proxy = proxy(&format!("http://{}", demo.gateway), demo_config(&demo)).await;
    for path in ["/", "/?id=NF-4410-22"] {
        let (status, _, page) = get(&proxy.url(path)).await;
        assert_eq!(status, 200, "{path}");
        assert!(
            page.contains("<h1 class=\"title\">"),
            "{path}: the product's title"
        );
        assert!(page.contains("</html>"), "{path}: the whole page");
    }
    let (status, _, page) = get(&proxy.url("/?id=no-such-thing")).await;
    assert_eq!(status, 404, "{page}");
    assert!(page.contains("no such product"), "{page}");
    assert!(
        !page.contains("<html"),
        "the fragment's body, not the page: {page}"
    );
    assert_eq!(
        proxy.metric("esi_proxy_primary_total{outcome=\"client_error\"}"),
        Some(1.0)
    );
}
