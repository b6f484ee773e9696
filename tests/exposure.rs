//! What the proxy exposes across its trust boundaries: a composed page is never sent as a part
//! (ranges), a page built with a visitor's credentials never leaves as shareable, and the admin
//! token, debug page and health answer stay on the admin side.

use esi_proxy::config::Config;
use http::{HeaderMap, StatusCode};

use crate::support::{client, full, proxy, response, serve, Received, HTML, MUST};

/// Extra request headers for one case.
type Extra<'a> = &'a [(&'a str, &'a str)];

/// GETs `url` with extra request headers; status, headers and body.
async fn get_with(url: &str, extra: &[(&str, &str)]) -> (StatusCode, HeaderMap, String) {
    let mut req = client().get(url);
    for (name, value) in extra {
        req = req.header(*name, *value);
    }
    let exchange = async {
        let resp = req.send().await.expect("request");
        let (status, headers) = (resp.status(), resp.headers().clone());
        (status, headers, resp.text().await.expect("body"))
    };
    tokio::time::timeout(MUST, exchange)
        .await
        .expect("a whole response")
}

/// The value of `name` in `r`'s headers, as text.
fn header<'a>(r: &'a Received, name: &str) -> Option<&'a str> {
    r.headers.get(name).and_then(|v| v.to_str().ok())
}

// === ranges ===

/// An origin that honours `Range: bytes=a-b` on every path: `/page` is an ESI layout, `/file`
/// plain text, both with `Accept-Ranges: bytes`.
async fn ranged_origin() -> crate::support::Server {
    serve(|req| async move {
        let (body, esi_mark): (&[u8], bool) = match req.uri().path() {
            "/page" => (b"<p>A</p><esi:include src=\"/frag\"/><p>Z</p>", true),
            "/frag" => (b"[frag]", false),
            _ => (b"0123456789abcdef", false),
        };
        let mut headers = vec![("accept-ranges", "bytes")];
        if esi_mark {
            headers.extend([HTML, crate::support::ESI]);
        } else if req.uri().path() == "/frag" {
            headers.push(HTML);
        } else {
            headers.push(("content-type", "text/plain"));
        }
        let range = req
            .headers()
            .get("range")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("bytes="))
            .and_then(|v| v.split_once('-'))
            .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)));
        match range {
            Some((a, b)) if a <= b && b < body.len() => {
                let content_range = format!("bytes {a}-{b}/{}", body.len());
                headers.push(("content-range", &content_range));
                response(206, &headers, full(body[a..=b].to_vec()))
            }
            _ => response(200, &headers, full(body.to_vec())),
        }
    })
    .await
}

/// The bug: a range request for an ESI page composed the origin's 206 part of the layout and
/// kept its `Content-Range`, so the client got a broken page under a range that described
/// other bytes. Now the page is fetched whole and sent whole; pass-through ranges still work.
#[tokio::test]
async fn a_range_request_for_an_esi_page_gets_the_whole_composed_page() {
    let origin = ranged_origin().await;
    let proxy = proxy(&origin.base(), Config::default()).await;
    let whole = "<p>A</p>[frag]<p>Z</p>";
    for extra in [
        &[("range", "bytes=0-9")][..],
        &[("range", "bytes=3-20"), ("if-range", "\"v1\"")][..],
    ] {
        let (status, headers, body) = get_with(&proxy.url("/page"), extra).await;
        assert_eq!(status, StatusCode::OK, "{extra:?}: {body}");
        assert_eq!(body, whole, "{extra:?}");
        assert!(headers.get("content-range").is_none(), "{headers:?}");
        assert!(headers.get("accept-ranges").is_none(), "{headers:?}");
    }
    // Once the layout is cached, a range request is composed from the cache, whole too.
    let (status, headers, body) = get_with(&proxy.url("/page"), &[("range", "bytes=0-3")]).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, whole));
    assert!(headers.get("content-range").is_none(), "{headers:?}");

    // Content passed through untouched keeps the origin's part and range.
    let (status, headers, body) = get_with(&proxy.url("/file"), &[("range", "bytes=2-5")]).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(body, "2345");
    assert_eq!(
        headers.get("content-range").map(|v| v.as_bytes()),
        Some(&b"bytes 2-5/16"[..])
    );
    // The fragment was fetched whole every time: a range never reaches a fragment.
    assert!(origin
        .received()
        .iter()
        .filter(|r| r.uri.path() == "/frag")
        .all(|r| header(r, "range").is_none()));
}

// === shared caches ===

/// `config` from TOML text, as an operator writes it.
fn config_of(text: &str) -> Config {
    Config::parse(text, std::path::Path::new("exposure.toml")).expect("valid config")
}

/// The demo's shape: a layout that says `public, max-age=30, s-maxage=60` around a greeting
/// from the origin (a trusted host: it gets the visitor's Cookie), and one that reads a cookie
/// itself. Both fragments also say public.
async fn greeting_origin() -> crate::support::Server {
    serve(|req| async move {
        let public = ("cache-control", "public, max-age=30, s-maxage=60");
        match req.uri().path() {
            "/greet" => {
                let who = req
                    .headers()
                    .get("cookie")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("guest")
                    .to_owned();
                response(200, &[HTML, public], full(format!("Hello {who}")))
            }
            "/vars" => response(
                200,
                &[HTML, crate::support::ESI, public],
                full("<esi:vars>Hi $(HTTP_COOKIE{user})</esi:vars>"),
            ),
            path => response(
                200,
                &[HTML, crate::support::ESI, public],
                full(format!("<h1>{path}</h1><esi:include src=\"/greet\"/>")),
            ),
        }
    })
    .await
}

/// The `Cache-Control` a response left with.
fn cache_control(headers: &HeaderMap) -> &str {
    headers
        .get("cache-control")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// The bug: a composed page kept the layout's `public, max-age=30` while a fragment greeted
/// the visitor by their cookie, so a shared cache could hand one visitor's page to the next.
/// Now every composed page leaves private unless its path is declared shareable and the
/// request is anonymous; `max-age` stays for the visitor's own cache.
#[tokio::test]
async fn a_page_composed_with_the_visitors_credentials_leaves_private() {
    let origin = greeting_origin().await;
    let proxy = proxy(&origin.base(), Config::default()).await;
    for (path, extra) in [
        ("/home", &[("cookie", "user=ann")][..]),
        ("/home", &[("authorization", "Bearer ann")][..]),
        ("/vars", &[("cookie", "user=ann")][..]),
        // Anonymous, but no path is declared shareable: private by default.
        ("/home", &[][..]),
    ] {
        let (status, headers, body) = get_with(&proxy.url(path), extra).await;
        assert_eq!(status, StatusCode::OK, "{path} {extra:?}: {body}");
        assert_eq!(
            cache_control(&headers),
            "private, max-age=30",
            "{path} {extra:?}: {body}"
        );
    }
    // Content passed through untouched keeps its own Cache-Control.
    let (_, headers, _) = get_with(&proxy.url("/greet"), &[("cookie", "user=ann")]).await;
    assert_eq!(cache_control(&headers), "public, max-age=30, s-maxage=60");
}

/// README: "`esi.shareable_paths` ... lets anonymous requests on those paths keep the layout's
/// Cache-Control".
#[tokio::test]
async fn shareable_paths_keep_the_layouts_cache_control_for_anonymous_requests_only() {
    let origin = greeting_origin().await;
    let config = config_of("[esi]\nshareable_paths = [\"/products/*\"]\n");
    let proxy = proxy(&origin.base(), config).await;
    let shared = "public, max-age=30, s-maxage=60";
    let cases: &[(&str, Extra, &str)] = &[
        ("/products/1", &[], shared),
        (
            "/products/1",
            &[("cookie", "user=ann")],
            "private, max-age=30",
        ),
        (
            "/products/1",
            &[("authorization", "Bearer a")],
            "private, max-age=30",
        ),
        ("/account", &[], "private, max-age=30"),
    ];
    for (path, extra, want) in cases {
        let (status, headers, body) = get_with(&proxy.url(path), extra).await;
        assert_eq!(status, StatusCode::OK, "{path} {extra:?}: {body}");
        assert_eq!(cache_control(&headers), *want, "{path} {extra:?}");
    }
}

/// README: "The waterfall's `private_reason` names what made a page private".
#[tokio::test]
async fn the_waterfall_names_what_made_a_page_private() {
    let origin = greeting_origin().await;
    let config = config_of(concat!(
        "[server]\nadmin_from_loopback = true\n",
        "[esi]\nshareable_paths = [\"/products/*\"]\n"
    ));
    let proxy = proxy(&origin.base(), config).await;
    let greet = origin.url("/greet");
    let fetched = format!("fragment {greet} fetched with credentials");
    let cases: &[(&str, Extra, Option<&str>)] = &[
        ("/home", &[("cookie", "user=ann")], Some(&fetched)),
        (
            "/vars",
            &[("cookie", "user=ann")],
            Some("variable HTTP_COOKIE"),
        ),
        ("/home", &[], Some("default")),
        ("/products/1", &[], None),
    ];
    for (path, extra, want) in cases {
        let url = proxy.url(&format!("/_esi/debug{path}?format=json"));
        let (status, _, body) = get_with(&url, extra).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        let report: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(
            report["private_reason"].as_str(),
            *want,
            "{path} {extra:?}: {report}"
        );
    }
}

// === admin access ===

/// An origin whose `/page` includes `/frag` from itself (a trusted host); everything else is
/// plain HTML. Records every request.
async fn recording_origin() -> crate::support::Server {
    serve(|req| async move {
        match req.uri().path() {
            "/page" | "/search" => response(
                200,
                &[HTML, crate::support::ESI],
                full("<p>page</p><esi:include src=\"/frag\"/>"),
            ),
            _ => response(200, &[HTML], full("[frag]")),
        }
    })
    .await
}

/// The bug: the admin token sent to `/_esi/debug/...` went on to the origin and to trusted
/// fragment hosts with the page's requests. Now the proxy consumes it, on the debug page and
/// on the public path; a visitor's own `Authorization` still reaches trusted hosts.
#[tokio::test]
async fn the_admin_token_is_consumed_and_never_forwarded() {
    let origin = recording_origin().await;
    let proxy = proxy(
        &origin.base(),
        config_of("[server]\nadmin_token = \"s3cret\"\n"),
    )
    .await;
    let admin = [("authorization", "Bearer s3cret")];
    let (status, _, body) = get_with(&proxy.url("/_esi/debug/page?format=json"), &admin).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _, body) = get_with(&proxy.url("/page"), &admin).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "<p>page</p>[frag]")
    );
    let received = origin.received();
    assert_eq!(received.len(), 4, "layout and fragment, twice");
    for r in &received {
        assert_eq!(
            header(r, "authorization"),
            None,
            "{} {:?}",
            r.uri,
            r.headers
        );
    }
    let _ = get_with(&proxy.url("/page"), &[("authorization", "Bearer visitor")]).await;
    let received = origin.received();
    assert!(received[4..]
        .iter()
        .all(|r| header(r, "authorization") == Some("Bearer visitor")));
}

/// The bug: the debug page re-encoded the query (`%7e` as `%7E`, `%20` as `+`, `flag` as
/// `flag=`), so the waterfall showed a different page than the one asked for. Now the origin
/// gets the path and query bytes as sent, less the waterfall's own `format`.
#[tokio::test]
async fn the_debug_page_composes_exactly_the_requested_path_and_query() {
    let origin = recording_origin().await;
    let proxy = proxy(
        &origin.base(),
        config_of("[server]\nadmin_token = \"s3cret\"\n"),
    )
    .await;
    let admin = [("authorization", "Bearer s3cret")];
    let asked = "/search?q=a+b&x=%7e&flag&y=%20";
    let url = proxy.url(&format!("/_esi/debug{asked}&format=json"));
    let (status, _, body) = get_with(&url, &admin).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let report: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(report["path"], asked);
    let layout = &origin.received()[0];
    assert_eq!(layout.uri.path_and_query().map(|p| p.as_str()), Some(asked));
}

/// The bug: every loopback client was an admin by default (metrics, purge, debug). Now that is
/// an opt-in, `server.admin_from_loopback`.
#[tokio::test]
async fn loopback_clients_are_admins_only_when_the_operator_opts_in() {
    let origin = recording_origin().await;
    let closed = proxy(&origin.base(), Config::default()).await;
    let open = proxy(
        &origin.base(),
        config_of("[server]\nadmin_from_loopback = true\n"),
    )
    .await;
    for path in ["/_esi/metrics", "/_esi/debug/page", "/_esi/health?detail"] {
        let (status, _, body) = get_with(&closed.url(path), &[]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}: {body}");
        let (status, _, body) = get_with(&open.url(path), &[]).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
    }
    let resp = client()
        .post(closed.url("/_esi/purge?url=/page"))
        .send()
        .await
        .expect("answer");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
}

/// The bug: the public `/_esi/health` echoed the last reload's error (file paths, lines,
/// values). Now it says only ok or failed; the details are for admins at `?detail`.
#[tokio::test]
async fn public_health_says_only_whether_the_last_reload_failed() {
    let origin = recording_origin().await;
    let proxy = proxy(
        &origin.base(),
        config_of("[server]\nadmin_token = \"s3cret\"\n"),
    )
    .await;
    let dir = std::env::temp_dir().join(format!("esi-exposure-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("secret-name.toml");
    std::fs::write(&file, "[esi]\nmax_depth = \"deep\"\n").expect("write config");
    assert!(proxy.state.reload_file(&file, &|_| {}).is_err());
    let (status, _, body) = get_with(&proxy.url("/_esi/health"), &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.trim(), r#"{"status":"ok","last_reload":"failed"}"#);
    let (status, _, _) = get_with(&proxy.url("/_esi/health?detail"), &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let admin = [("authorization", "Bearer s3cret")];
    let (status, _, body) = get_with(&proxy.url("/_esi/health?detail"), &admin).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("secret-name.toml"), "{body}");
    assert!(body.contains("esi.max_depth"), "{body}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// README: "`server.admin_listen` serves the admin endpoints on an address of their own, and
/// the public listener then serves none of them".
#[tokio::test]
async fn a_separate_admin_listener_takes_the_admin_endpoints_off_the_public_one() {
    let origin = recording_origin().await;
    let config = config_of("[server]\nadmin_token = \"s3cret\"\nadmin_listen = \"127.0.0.1:0\"\n");
    let proxy = proxy(&origin.base(), config).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let admin_addr = listener.local_addr().expect("bound");
    let admin = tokio::spawn(esi_proxy::server::run_admin(
        listener,
        std::sync::Arc::clone(&proxy.state),
        std::future::pending(),
    ));
    let token = [("authorization", "Bearer s3cret")];
    let on_admin = |path: &str| format!("http://{admin_addr}{path}");
    for path in ["/_esi/health", "/_esi/metrics", "/_esi/debug/page"] {
        let (status, _, _) = get_with(&proxy.url(path), &token).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "public {path}");
        let (status, _, body) = get_with(&on_admin(path), &token).await;
        assert_eq!(status, StatusCode::OK, "admin {path}: {body}");
    }
    let (status, _, _) = get_with(&on_admin("/page"), &[]).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "the admin listener proxies nothing"
    );
    let (status, _, body) = get_with(&proxy.url("/page"), &[]).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "<p>page</p>[frag]")
    );
    admin.abort();
}
