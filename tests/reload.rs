//! Config hot reload: a changed file applies to new requests while load runs on kept-alive
//! connections, each answer checked against the composition its config gives; a broken file is
//! refused naming its line while the old config stays in force, and `/_esi/health` and the
//! metrics show it until a good file clears it; the real binary reloads on SIGHUP and on a file
//! change with its command-line overrides still in force.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use esi_proxy::config::Config;
use esi_proxy::server;
use http_body_util::{BodyExt, Empty};

use crate::support::process;
use crate::support::proxy::Proxy;
use crate::support::{esi, full, get, html, proxy, response, serve, Server, ESI, HTML, MUST};

/// A fresh directory for one test's config file.
fn config_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("esi-proxy-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Writes `text` to `path` atomically (write a sibling, then rename), as editors and
/// deployment tools do, so a reload never reads half a file.
fn write_config(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write config");
    std::fs::rename(&tmp, path).expect("rename config");
}

fn config_text(origin: &str, process: &str, extra: &str) -> String {
    format!("[server]\norigin = \"{origin}\"\nlisten = \"127.0.0.1:0\"\nconfig_poll_ms = 50\nadmin_from_loopback = true\n\n[esi]\nprocess_paths = [{process}]\n{extra}")
}

/// Polls the admin view `/_esi/health?detail` (the test's loopback client is an admin) until
/// its body contains `needle`.
async fn health_until(base: &str, needle: &str) -> String {
    tokio::time::timeout(MUST, async {
        loop {
            let (_, _, body) = get(&format!("{base}/_esi/health?detail")).await;
            if body.contains(needle) {
                return body;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("health never showed {needle:?}"))
}

/// An origin whose `/page` is ESI including `/frag` ("F"), and whose `/legacy` is the same
/// markup unmarked: composed only when a config rule names its path.
async fn legacy_origin() -> Server {
    serve(|req| async move {
        match req.uri().path() {
            "/legacy" => html("<esi:include src=\"/frag\"/>"),
            "/frag" => html("F"),
            _ => esi("page<esi:include src=\"/frag\"/>"),
        }
    })
    .await
}

/// A proxy in front of `origin` with the config at `path`, reloaded when the file changes
/// (polled every 50 ms), and the task watching it.
async fn watched_proxy(origin: &Server, path: &Path) -> (Proxy, tokio::task::JoinHandle<()>) {
    let proxy = proxy(&origin.base(), Config::load(path).expect("valid")).await;
    let watcher = server::watch_config(
        Arc::clone(&proxy.state),
        path.to_owned(),
        Arc::new(|_: &mut Config| {}),
        Some(Duration::from_millis(50)),
    );
    (proxy, watcher)
}

/// What `/legacy` is before the rule and after it.
const RAW: &str = "<esi:include src=\"/frag\"/>";
const COMPOSED: &str = "F";

/// One client of the load: a single kept-alive HTTP/1.1 connection for all of its requests, so
/// a connection the proxy dropped fails the next request. Returns how many answers were right
/// and the first wrong one.
async fn load_client(
    addr: std::net::SocketAddr,
    path: &'static str,
    done: Arc<AtomicBool>,
) -> (usize, Option<String>) {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("handshake");
    tokio::spawn(conn);
    let mut ok = 0;
    while !done.load(Ordering::SeqCst) {
        let req = http::Request::get(path)
            .header("host", addr.to_string())
            .body(Empty::<Bytes>::new())
            .expect("request");
        let answer = match sender.send_request(req).await {
            Err(e) => Err(format!("request {}: {e}", ok + 1)),
            Ok(resp) => {
                let status = resp.status();
                match resp.into_body().collect().await {
                    Err(e) => Err(format!("body {}: {e}", ok + 1)),
                    Ok(body) => Ok((
                        status,
                        String::from_utf8_lossy(&body.to_bytes()).into_owned(),
                    )),
                }
            }
        };
        // Either config may be in force while a reload lands; nothing else is right.
        let right = match &answer {
            Ok((status, body)) if *status == 200 => match path {
                "/page" => body == "pageF",
                _ => body == RAW || body == COMPOSED,
            },
            _ => false,
        };
        if !right {
            return (ok, Some(format!("{path}: {answer:?}")));
        }
        ok += 1;
    }
    (ok, None)
}

/// README: "The config reloads ... when the file changes: TTL rules, timeouts, allowlists and
/// limits apply to new requests without dropping a connection. A broken file is refused with
/// its line, the old config stays in force, and `/_esi/health` and the
/// `esi_proxy_config_reload_failed` metric say so."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_of_valid_and_broken_files_under_load_drops_no_request() {
    let origin = legacy_origin().await;
    let dir = config_dir("reload");
    let path = dir.join("esi-proxy.toml");
    write_config(&path, &config_text(&origin.base(), "", ""));
    let (proxy, watcher) = watched_proxy(&origin, &path).await;
    let base = proxy.url("");

    // Load: four clients, two per page, each on one connection until told to stop.
    let done = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = ["/page", "/legacy", "/page", "/legacy"]
        .into_iter()
        .map(|path| tokio::spawn(load_client(proxy.addr, path, Arc::clone(&done))))
        .collect();
    let legacy = || async { get(&format!("{base}/legacy")).await.2 };
    assert_eq!(legacy().await, RAW);

    write_config(&path, &config_text(&origin.base(), "\"/legacy\"", ""));
    health_until(&base, "\"generation\":1").await;
    assert_eq!(
        legacy().await,
        COMPOSED,
        "the new rule applies to new requests"
    );

    write_config(
        &path,
        &config_text(&origin.base(), "\"/legacy\"", "max_depth = \"deep\"\n"),
    );
    let health = health_until(&base, "\"last_reload\":\"failed\"").await;
    assert!(
        health.contains("esi-proxy.toml:9"),
        "the error names the file and line: {health}"
    );
    assert!(health.contains("esi.max_depth"), "and the field: {health}");
    assert_eq!(
        legacy().await,
        COMPOSED,
        "the previous config stays in force"
    );
    assert_eq!(
        proxy.metric("esi_proxy_config_reloads_total{result=\"error\"}"),
        Some(1.0)
    );
    assert_eq!(proxy.metric("esi_proxy_config_reload_failed"), Some(1.0));

    write_config(&path, &config_text(&origin.base(), "", ""));
    let health = health_until(&base, "\"generation\":2").await;
    assert!(
        health.contains("\"last_reload\":\"ok\",\"error\":null"),
        "a good file clears the error: {health}"
    );
    assert_eq!(
        proxy.metric("esi_proxy_config_reload_failed"),
        Some(0.0),
        "and the gauge"
    );
    assert_eq!(
        proxy.metric("esi_proxy_config_reloads_total{result=\"ok\"}"),
        Some(2.0)
    );
    assert_eq!(legacy().await, RAW);

    done.store(true, Ordering::SeqCst);
    for client in load {
        let (ok, wrong) = tokio::time::timeout(MUST, client)
            .await
            .expect("the load stops")
            .expect("load task");
        assert_eq!(
            wrong, None,
            "after {ok} right answers on the same connection"
        );
        assert!(ok > 0);
    }
    watcher.abort();
    let _ = std::fs::remove_dir_all(&dir);
}

/// README: "Flags override the file" and "The config reloads on `SIGHUP` and when the file
/// changes": `--origin` and `--no-cache` stay in force across both kinds of reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_line_overrides_survive_sighup_and_file_changes() {
    // The file names `ignored`; the flag names `origin`. Everything is cacheable for a minute.
    let ignored = serve(|_| async { html("WRONG ORIGIN") }).await;
    let origin = serve(|req| async move {
        let cached = [("cache-control", "public, max-age=60")];
        let mut r = match req.uri().path() {
            "/legacy" => html("<esi:include src=\"/frag\"/>"),
            "/frag" => html("F"),
            _ => esi("page<esi:include src=\"/frag\"/>"),
        };
        for (name, value) in cached {
            r.headers_mut()
                .insert(name, http::HeaderValue::from_static(value));
        }
        r
    })
    .await;
    let dir = config_dir("overrides");
    let path = dir.join("esi-proxy.toml");
    write_config(&path, &config_text(&ignored.base(), "", ""));
    let (mut proxy, addr) = process::serve(&[
        "--config",
        path.to_str().expect("UTF-8"),
        "--origin",
        &origin.base(),
        "--no-cache",
    ])
    .await;
    let base = format!("http://{addr}");

    // Two pages per phase: with the cache off, each makes its own layout and fragment fetch.
    let mut fetched = 0;
    let mut pages_twice = || {
        fetched += 2;
        let base = base.clone();
        async move {
            for _ in 0..2 {
                let (status, _, body) = get(&format!("{base}/page")).await;
                assert_eq!((status.as_u16(), body.as_str()), (200, "pageF"));
            }
        }
    };
    pages_twice().await;
    assert_eq!((origin.hits_on("/page"), origin.hits_on("/frag")), (2, 2));

    // A file change: the new rule applies, the flags still do.
    write_config(&path, &config_text(&ignored.base(), "\"/legacy\"", ""));
    health_until(&base, "\"generation\":1").await;
    assert_eq!(get(&format!("{base}/legacy")).await.2, "F");
    pages_twice().await;
    // SIGHUP with the file unchanged: only the signal can make this reload.
    proxy.signal("HUP").await;
    let health = health_until(&base, "\"generation\":2").await;
    assert!(
        health.contains(&format!("\"origin\":\"{}\"", origin.base())),
        "{health}"
    );
    pages_twice().await;

    assert_eq!(
        (origin.hits_on("/page"), origin.hits_on("/frag") - 1),
        (fetched, fetched),
        "--no-cache: every page fetched its layout and fragment"
    );
    assert_eq!(
        ignored.hits(),
        0,
        "--origin: the file's origin is never asked"
    );
    proxy.signal("TERM").await;
    assert!(proxy.exit().await.success());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A cached layout's includes are joined and checked once and kept for the layout's next
/// requests; a reload that takes their host off the allowlist still refuses them on the very
/// next request of the same cached layout, and one that puts it back allows them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_taken_off_the_allowlist_is_refused_in_a_layout_already_cached() {
    let fragments = serve(|_| async { html("F") }).await;
    let layout = format!("page<esi:include src=\"{}/frag\"/>", fragments.base());
    let origin = serve(move |_| {
        let layout = layout.clone();
        async move {
            let cached = ("cache-control", "public, max-age=600");
            response(200, &[HTML, ESI, cached], full(layout))
        }
    })
    .await;
    let dir = config_dir("allowlist-cached-layout");
    let path = dir.join("esi-proxy.toml");
    let allowed = format!("\n[[fetch.hosts]]\nurl = \"{}\"\n", fragments.base());
    write_config(&path, &config_text(&origin.base(), "", &allowed));
    let (proxy, watcher) = watched_proxy(&origin, &path).await;
    let base = proxy.url("");
    let page = || async { get(&format!("{base}/page")).await.2 };

    // The first request parses and caches the layout; the next ones run it from the cache.
    for _ in 0..3 {
        assert_eq!(page().await, "pageF");
    }
    write_config(&path, &config_text(&origin.base(), "", ""));
    health_until(&base, "\"generation\":1").await;
    assert_eq!(
        page().await,
        "page",
        "the include is refused: its host is no longer allowed"
    );
    assert_eq!(
        proxy.metric("esi_proxy_fragment_failures_total{kind=\"refused\"}"),
        Some(1.0)
    );
    write_config(&path, &config_text(&origin.base(), "", &allowed));
    health_until(&base, "\"generation\":2").await;
    assert_eq!(page().await, "pageF");
    assert_eq!(
        origin.hits(),
        1,
        "every page but the first ran the cached layout"
    );
    watcher.abort();
    let _ = std::fs::remove_dir_all(&dir);
}
