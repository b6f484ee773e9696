//! `esi.primary_error_pages`: a primary fragment's 4xx/5xx answer, or its failure, sends the
//! configured page instead of the primary's body (a status's own page before its class's);
//! redirects and statuses with no page keep what the primary sent; the pages are read when the
//! config is loaded and again at every reload, and a page that cannot be read refuses the config
//! while the old pages stay in force.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use esi_proxy::config::{Config, ConfigError};
use esi_proxy::server;

use crate::support::proxy::{get, proxy};
use crate::support::{esi, full, html, raw_get, response, serve, Server, MUST};

const LAYOUT: &str = "<p>prefix</p><esi:include src=\"/f/product\" primary=\"true\" \
                      maxwait=\"300\"/><p>foot</p>";

/// A fresh directory holding `404.html` and `5xx.html`.
fn pages_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("esi-error-pages-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(dir.join("404.html"), "<h1>No such product</h1>").expect("write");
    std::fs::write(dir.join("5xx.html"), "<h1>Back soon</h1>").expect("write");
    dir
}

fn path_text(path: &Path) -> String {
    path.to_str().expect("utf-8 temp path").to_owned()
}

fn with_pages(dir: &Path) -> Config {
    let mut config = Config::default();
    let pages = &mut config.esi.primary_error_pages;
    pages.insert("404".into(), path_text(&dir.join("404.html")));
    pages.insert("5xx".into(), path_text(&dir.join("5xx.html")));
    config
}

/// An origin whose `/page?s=X` is [`LAYOUT`] with the primary's `src` carrying the same query,
/// and whose product fragment answers status `X` (302 with a `Location`), `200`, or for
/// `s=slow` stalls past the include's `maxwait`.
async fn origin() -> Server {
    serve(|req| async move {
        let query = req.uri().query().unwrap_or_default().to_owned();
        match req.uri().path() {
            "/page" => esi(LAYOUT.replace("/f/product", &format!("/f/product?{query}"))),
            _ => match query.trim_start_matches("s=") {
                "slow" => {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    html("late")
                }
                "200" => html("product"),
                code => {
                    let status = code.parse().expect("a status");
                    let location = ("location", "/elsewhere");
                    let headers: &[(&str, &str)] = if status == 302 {
                        &[("content-type", "text/plain"), location]
                    } else {
                        &[("content-type", "text/plain")]
                    };
                    response(status, headers, full(format!("primary says {code}")))
                }
            },
        }
    })
    .await
}

#[tokio::test]
async fn error_answers_send_the_configured_page_and_others_keep_theirs() {
    let dir = pages_dir("answers");
    let origin = origin().await;
    let proxy = proxy(&origin.base(), with_pages(&dir)).await;

    let (status, headers, body) = get(&proxy.url("/page?s=404")).await;
    assert_eq!(status, 404);
    assert_eq!(body, "<h1>No such product</h1>");
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");

    let (status, _, body) = get(&proxy.url("/page?s=503")).await;
    assert_eq!(status, 503);
    assert_eq!(body, "<h1>Back soon</h1>", "the 5xx class's page");

    let (status, headers, body) = get(&proxy.url("/page?s=410")).await;
    assert_eq!(status, 410);
    assert_eq!(
        body, "primary says 410",
        "no 410 or 4xx page: the primary's body"
    );
    assert_eq!(headers["content-type"], "text/plain");

    let (status, _, body) = get(&proxy.url("/page?s=200")).await;
    assert_eq!(status, 200);
    assert_eq!(body, "<p>prefix</p>product<p>foot</p>");

    let redirect = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
        .get(proxy.url("/page?s=302"))
        .send()
        .await
        .expect("response");
    assert_eq!(redirect.status(), 302);
    assert_eq!(redirect.headers()["location"], "/elsewhere");
    assert_eq!(redirect.text().await.expect("body"), "primary says 302");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A primary that never answers fails the page with a 504 before any page byte: the body is
/// the 5xx page, not the plain status text, and not the layout's prefix.
#[tokio::test]
async fn a_failed_primary_sends_the_5xx_page_before_any_page_byte() {
    let dir = pages_dir("failed");
    let origin = origin().await;
    let proxy = proxy(&origin.base(), with_pages(&dir)).await;
    let raw = raw_get(proxy.addr, "/page?s=slow").await;
    assert!(raw.head.starts_with("HTTP/1.1 504"), "head: {}", raw.head);
    assert!(
        raw.head
            .to_ascii_lowercase()
            .contains("content-type: text/html; charset=utf-8"),
        "head: {}",
        raw.head
    );
    assert_eq!(String::from_utf8_lossy(&raw.body), "<h1>Back soon</h1>");

    // Without pages, the same failure is the plain status text.
    let plain = crate::support::proxy::proxy(&origin.base(), Config::default()).await;
    let raw = raw_get(plain.addr, "/page?s=slow").await;
    assert!(raw.head.starts_with("HTTP/1.1 504"), "head: {}", raw.head);
    assert_eq!(String::from_utf8_lossy(&raw.body), "504 Gateway Timeout\n");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_missing_or_oversize_page_or_a_wrong_key_refuses_the_config() {
    let dir = pages_dir("invalid");
    let big = dir.join("big.html");
    let size = esi_proxy::config::MAX_ERROR_PAGE_BYTES as usize + 1;
    std::fs::write(&big, vec![b'x'; size]).expect("write");
    let cases = [
        ("404", dir.join("missing.html"), "missing.html"),
        ("5xx", big, "larger than"),
        ("302", dir.join("404.html"), "not a status from 400 to 599"),
    ];
    for (key, file, wanted) in cases {
        let mut config = Config::default();
        config
            .esi
            .primary_error_pages
            .insert(key.into(), path_text(&file));
        let Err(ConfigError::Invalid { problems, .. }) = config.validate() else {
            panic!("{key} = {file:?} was accepted");
        };
        let text = format!("{problems:?}");
        assert!(
            text.contains(&format!("esi.primary_error_pages.{key}")),
            "{text}"
        );
        assert!(text.contains(wanted), "{key}: {text}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Pages are read again at a reload: an edited page applies to new requests, and a reload whose
/// page cannot be read is refused while the pages in force keep being sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_are_read_again_at_reload_and_an_unreadable_one_is_refused() {
    let dir = pages_dir("reload");
    let origin = origin().await;
    let config_path = dir.join("esi-proxy.toml");
    let write_config = |page: &Path| {
        let text = format!(
            "[server]\norigin = \"{}\"\nlisten = \"127.0.0.1:0\"\nadmin_from_loopback = true\n\n\
             [esi]\nprimary_error_pages = {{ \"404\" = {:?} }}\n",
            origin.base(),
            path_text(page)
        );
        let tmp = config_path.with_extension("tmp");
        std::fs::write(&tmp, text).expect("write config");
        std::fs::rename(&tmp, &config_path).expect("rename config");
    };
    write_config(&dir.join("404.html"));
    let config = Config::load(&config_path).expect("valid");
    let proxy = proxy(&origin.base(), config).await;
    let watcher = server::watch_config(
        Arc::clone(&proxy.state),
        config_path.clone(),
        Arc::new(|_: &mut Config| {}),
        Some(Duration::from_millis(50)),
    );
    let page = || async { get(&proxy.url("/page?s=404")).await.2 };
    assert_eq!(page().await, "<h1>No such product</h1>");

    let edited = dir.join("404-v2.html");
    std::fs::write(&edited, "<h1>Not in the catalog</h1>").expect("write");
    write_config(&edited);
    until(&proxy, "esi_proxy_config_reloads_total{result=\"ok\"}").await;
    assert_eq!(page().await, "<h1>Not in the catalog</h1>");

    write_config(&dir.join("gone.html"));
    until(&proxy, "esi_proxy_config_reloads_total{result=\"error\"}").await;
    assert_eq!(
        page().await,
        "<h1>Not in the catalog</h1>",
        "the pages in force stay"
    );
    watcher.abort();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Waits until the counter `series` is at least 1.
async fn until(proxy: &crate::support::proxy::Proxy, series: &str) {
    tokio::time::timeout(MUST, async {
        while proxy.metric(series).unwrap_or(0.0) < 1.0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{series} never counted"));
}
