//! Circuit breakers per fragment host, through the whole proxy over loopback: a dead service on
//! a 120-include page stops costing its timeout once its breaker opens, one probe after the
//! open time decides, a stale copy comes first, metrics, health and the waterfall show it, and
//! a host that answers 4xx never opens.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use esi_proxy::config::{Config, HostBreakerConfig, HostConfig};
use http::StatusCode;

use crate::support::proxy::metric;
use crate::support::{
    full, get, html, proxy, read_head, response, serve, serve_raw, wait_closed, Proxy, Server,
};

/// Deadline per fragment in these tests.
const TIMEOUT: Duration = Duration::from_millis(2000);

/// What a page may take while its dead host's breaker is open: about 100 ms alone, several
/// times that on a busy machine, never the deadline.
const OPEN_WITHIN: Duration = Duration::from_millis(1000);

/// A healthy service: `[path]` for every path.
async fn healthy() -> Server {
    serve(|req| async move { html(format!("[{}]", req.uri().path())) }).await
}

/// A service that accepts connections, reads the request and never answers.
async fn dead() -> Server {
    serve_raw(|mut stream| async move {
        if read_head(&mut stream).await.is_some() {
            wait_closed(&mut stream).await;
        }
    })
    .await
}

/// A service that answers `[path]`, or, while `down` is set, sleeps far past any deadline.
async fn switchable(down: Arc<AtomicBool>, cache_control: &'static str) -> Server {
    serve(move |req| {
        let down = Arc::clone(&down);
        async move {
            if down.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
            let mut r = html(format!("[{}]", req.uri().path()));
            r.headers_mut().insert(
                "cache-control",
                http::HeaderValue::from_static(cache_control),
            );
            r
        }
    })
    .await
}

/// An origin whose layout at every path is `layout`.
async fn origin(layout: String) -> Server {
    serve(move |_| {
        let layout = layout.clone();
        async move { crate::support::esi(layout) }
    })
    .await
}

fn host(server: &Server, breaker: Option<HostBreakerConfig>) -> HostConfig {
    HostConfig {
        url: server.base(),
        trusted: false,
        esi: false,
        private_network: true,
        http2: false,
        breaker,
    }
}

/// Fragment deadline [`TIMEOUT`], loopback clients are admins, breakers as given.
fn config(failures: u32, open_ms: u64, max_open_ms: u64) -> Config {
    let mut config = Config::default();
    config.server.admin_from_loopback = true;
    config.fetch.fragment_timeout_ms = TIMEOUT.as_millis() as u64;
    config.fetch.breaker.failures = u64::from(failures);
    config.fetch.breaker.open_ms = open_ms;
    config.fetch.breaker.max_open_ms = max_open_ms;
    config
}

/// GETs `url` on the proxy: status, body and how long the whole page took.
async fn timed(proxy: &Proxy, path: &str) -> (StatusCode, String, Duration) {
    let started = Instant::now();
    let (status, _, body) = get(&proxy.url(path)).await;
    (status, body, started.elapsed())
}

async fn admin_text(proxy: &Proxy, path: &str) -> String {
    let (status, _, body) = get(&proxy.url(path)).await;
    assert_eq!(status, StatusCode::OK, "{path}: {body}");
    body
}

/// The case: 117 fragments on a healthy service and 3 on one that never answers. The
/// first page waits out the deadline and opens the dead host's breaker; from then on whole
/// pages take the time of the healthy fragments, the dead service sees no connection, and each
/// of its includes shows its `alt`. Metrics, health and the waterfall say why.
#[tokio::test]
async fn an_open_breaker_keeps_a_dead_service_off_a_120_include_page() {
    let good = healthy().await;
    let down = dead().await;
    let (g, d) = (good.base(), down.base());
    let mut layout = String::from("<html>");
    for i in 0..117 {
        layout.push_str(&format!("<esi:include src=\"{g}/f/{i}\"/>"));
    }
    for i in 0..3 {
        layout.push_str(&format!(
            "<esi:include src=\"{d}/d/{i}\" alt=\"{g}/alt/{i}\"/>"
        ));
    }
    layout.push_str("</html>");
    let gateway = origin(layout).await;
    let mut config = config(3, 60_000, 300_000);
    config.fetch.hosts = vec![host(&good, None), host(&down, None)];
    let proxy = proxy(&gateway.base(), config.clone()).await;
    let want: String = (0..117)
        .map(|i| format!("[/f/{i}]"))
        .chain((0..3).map(|i| format!("[/alt/{i}]")))
        .collect();
    let want = format!("<html>{want}</html>");

    let (status, body, first) = timed(&proxy, "/page").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, want, "the dead includes take their alt");
    assert!(
        first >= TIMEOUT,
        "the first page waits out the deadline: {first:?}"
    );
    let seen = down.connections().await;
    assert!(seen >= 1, "the first page reached the dead service");

    let mut slowest = Duration::ZERO;
    for _ in 0..3 {
        let (status, body, took) = timed(&proxy, "/page").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, want);
        slowest = slowest.max(took);
    }
    assert!(
        slowest < OPEN_WITHIN,
        "with the breaker open a page takes the healthy fragments' time, not the deadline: \
         {slowest:?} (first page {first:?})"
    );
    assert_eq!(down.connections().await, seen, "no connection while open");

    let dead_host = format!("127.0.0.1:{}", down.port());
    let text = admin_text(&proxy, "/_esi/metrics").await;
    let state = format!("esi_proxy_breaker_state{{host=\"{dead_host}\"}}");
    let good_state = format!(
        "esi_proxy_breaker_state{{host=\"127.0.0.1:{}\"}}",
        good.port()
    );
    let opens = format!("esi_proxy_breaker_opens_total{{host=\"{dead_host}\"}}");
    assert_eq!(metric(&text, &state), Some(1.0), "{text}");
    assert_eq!(metric(&text, &good_state), Some(0.0), "{text}");
    assert_eq!(metric(&text, &opens), Some(1.0), "{text}");
    let refused = "esi_proxy_fragment_failures_total{kind=\"breaker_open\"}";
    assert_eq!(
        metric(&text, refused),
        Some(9.0),
        "3 includes on 3 pages: {text}"
    );
    let timeouts = "esi_proxy_fragment_failures_total{kind=\"timeout\"}";
    assert_eq!(metric(&text, timeouts), Some(3.0), "{text}");

    let health: serde_json::Value =
        serde_json::from_str(&admin_text(&proxy, "/_esi/health?detail").await).expect("JSON");
    assert_eq!(
        health["breakers"],
        serde_json::json!([{ "host": dead_host, "state": "open" }]),
        "{health}"
    );
    let public = admin_text(&proxy, "/_esi/health").await;
    assert!(
        !public.contains("breaker"),
        "hosts stay off the public health: {public}"
    );

    let report: serde_json::Value =
        serde_json::from_str(&admin_text(&proxy, "/_esi/debug/page?format=json").await)
            .expect("JSON");
    let rows = report["fragments"].as_array().expect("fragments");
    let dead_rows: Vec<_> = rows
        .iter()
        .filter(|r| r["url"].as_str().is_some_and(|u| u.contains("/d/")))
        .collect();
    assert_eq!(dead_rows.len(), 3, "{report}");
    for row in dead_rows {
        assert_eq!(row["outcome"], "breaker_open", "{row}");
        assert_eq!(row["fallback"], "alt", "{row}");
        assert!(
            row["error"]
                .as_str()
                .is_some_and(|e| e.contains("breaker open")),
            "{row}"
        );
        assert!(
            row["end_ms"].as_f64() < Some(OPEN_WITHIN.as_secs_f64() * 1000.0),
            "{row}"
        );
    }
    let page = admin_text(&proxy, "/_esi/debug/page").await;
    assert!(page.contains("breaker open"), "the HTML waterfall says so");
    assert_eq!(
        down.connections().await,
        seen,
        "the debug page did not connect either"
    );

    // A reload that still lists the host keeps its breaker open under the new values.
    config.server.origin = gateway.base();
    config.fetch.breaker.failures = 10;
    proxy.state.apply(config).expect("valid config");
    let (_, body, took) = timed(&proxy, "/page").await;
    assert_eq!(body, want);
    assert!(took < OPEN_WITHIN, "still open after the reload: {took:?}");
    assert_eq!(down.connections().await, seen);
}

/// After the open time one probe goes through while the others still fail at once: while the
/// service is still down it reopens for twice as long; once it is back, the probe closes the
/// breaker and the fragment's content returns.
#[tokio::test]
async fn one_probe_after_the_open_time_decides() {
    let good = healthy().await;
    let down = Arc::new(AtomicBool::new(true));
    let flaky = switchable(Arc::clone(&down), "no-store").await;
    let (g, f) = (good.base(), flaky.base());
    let layout: String = (0..3)
        .map(|i| format!("<esi:include src=\"{f}/d/{i}\" alt=\"{g}/alt/{i}\"/>"))
        .collect();
    let gateway = origin(layout).await;
    // The flaky host's own breaker: one failure opens it for 1 s, then 2 s (wide windows, so a
    // stalled machine cannot carry a request across one).
    let own = HostBreakerConfig {
        failures: Some(1),
        open_ms: Some(1000),
        ..HostBreakerConfig::default()
    };
    let mut config = config(5, 10_000, 300_000);
    config.fetch.hosts = vec![host(&good, None), host(&flaky, Some(own))];
    let proxy = proxy(&gateway.base(), config).await;
    let fallback = "[/alt/0][/alt/1][/alt/2]";
    let opens = format!(
        "esi_proxy_breaker_opens_total{{host=\"127.0.0.1:{}\"}}",
        flaky.port()
    );
    let state = format!(
        "esi_proxy_breaker_state{{host=\"127.0.0.1:{}\"}}",
        flaky.port()
    );

    let (_, body, took) = timed(&proxy, "/page").await;
    assert_eq!(body, fallback);
    assert!(took >= TIMEOUT, "{took:?}");
    assert_eq!(flaky.hits(), 3);
    let (_, body, took) = timed(&proxy, "/page").await;
    assert_eq!(body, fallback);
    assert!(took < OPEN_WITHIN, "open: {took:?}");
    assert_eq!(flaky.hits(), 3, "nothing reaches the host while open");

    // Past 1 s: exactly one of the three includes probes; it times out and the breaker
    // reopens, now for 2 s.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (_, body, took) = timed(&proxy, "/page").await;
    assert_eq!(body, fallback);
    assert!(
        took >= TIMEOUT,
        "the probe waits out its deadline: {took:?}"
    );
    assert_eq!(flaky.hits(), 4, "one probe, the other two refused at once");
    assert_eq!(proxy.metric(&opens), Some(2.0));
    let reopened = Instant::now();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (_, body, took) = timed(&proxy, "/page").await;
    assert_eq!(body, fallback);
    assert!(took < OPEN_WITHIN, "400 ms into 2 s: still open: {took:?}");
    assert_eq!(flaky.hits(), 4);

    // The service is back; past the 2 s the probe closes the breaker.
    down.store(false, Ordering::SeqCst);
    let left = Duration::from_millis(2100).saturating_sub(reopened.elapsed());
    tokio::time::sleep(left).await;
    let (_, body, _) = timed(&proxy, "/page").await;
    let one_back = body.matches("[/d/").count();
    assert_eq!(one_back, 1, "the probe's content, the others' alt: {body}");
    assert_eq!(flaky.hits(), 5);
    let (_, body, _) = timed(&proxy, "/page").await;
    assert_eq!(
        body, "[/d/0][/d/1][/d/2]",
        "closed: every include fetched again"
    );
    assert_eq!(flaky.hits(), 8);
    proxy.state.breakers().publish_metrics();
    assert_eq!(proxy.metric(&state), Some(0.0));
    assert_eq!(proxy.metric(&opens), Some(2.0));
    let health = admin_text(&proxy, "/_esi/health?detail").await;
    assert!(health.contains("\"breakers\":[]"), "{health}");
}

/// A cached fragment past its TTL whose host's breaker is open is served stale within
/// stale-if-error, at once and without touching the host, to every request that asks at the
/// same time; only with no such copy does the include take its `alt`.
#[tokio::test]
async fn an_open_breaker_serves_the_stale_copy_first() {
    let good = healthy().await;
    let down = Arc::new(AtomicBool::new(false));
    let flaky = switchable(Arc::clone(&down), "max-age=1, stale-if-error=600").await;
    let (g, f) = (good.base(), flaky.base());
    let gateway = serve(move |req| {
        let (g, f) = (g.clone(), f.clone());
        async move {
            match req.uri().path() {
                "/open" => {
                    crate::support::esi(format!("<esi:include src=\"{f}/other\" alt=\"{g}/alt\"/>"))
                }
                _ => crate::support::esi(format!(
                    "<esi:include src=\"{f}/cached\" alt=\"{g}/alt\"/>"
                )),
            }
        }
    })
    .await;
    let mut config = config(1, 60_000, 300_000);
    config.fetch.hosts = vec![host(&good, None), host(&flaky, None)];
    let proxy = proxy(&gateway.base(), config).await;

    let (_, body, _) = timed(&proxy, "/page").await;
    assert_eq!(body, "[/cached]");
    down.store(true, Ordering::SeqCst);
    // `/other` is not cached: it times out and opens the breaker.
    let (_, body, _) = timed(&proxy, "/open").await;
    assert_eq!(body, "[/alt]");
    // Past the cached copy's one-second TTL.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let hits = flaky.hits();
    let started = Instant::now();
    let pages = futures::future::join_all((0..4).map(|_| get(&proxy.url("/page")))).await;
    let took = started.elapsed();
    for (status, _, body) in pages {
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "[/cached]", "the stale copy, not the alt");
    }
    assert!(took < OPEN_WITHIN, "stale at once: {took:?}");
    assert_eq!(flaky.hits(), hits, "the host was not asked");
    assert_eq!(
        proxy.metric("esi_proxy_cache_stale_served_total{reason=\"if_error\"}"),
        Some(4.0)
    );
    let report = admin_text(&proxy, "/_esi/debug/page?format=json").await;
    let report: serde_json::Value = serde_json::from_str(&report).expect("JSON");
    assert_eq!(
        report["fragments"][0]["cache"], "stale-if-error",
        "{report}"
    );
    // With no copy to fall back on, the alt.
    let (_, body, took) = timed(&proxy, "/open").await;
    assert_eq!(body, "[/alt]");
    assert!(took < OPEN_WITHIN, "{took:?}");
}

/// A host that answers every fragment with 404 is answering: its breaker never opens, every
/// fetch reaches it, and each include takes its fallback for the 404 itself.
#[tokio::test]
async fn a_host_answering_4xx_never_opens() {
    let good = healthy().await;
    let missing = serve(|_| async move { response(404, &[], full("gone")) }).await;
    let (g, m) = (good.base(), missing.base());
    let layout: String = (0..3)
        .map(|i| format!("<esi:include src=\"{m}/m/{i}\" alt=\"{g}/alt/{i}\"/>"))
        .collect();
    let gateway = origin(layout).await;
    let mut config = config(1, 60_000, 300_000);
    config.fetch.hosts = vec![host(&good, None), host(&missing, None)];
    let proxy = proxy(&gateway.base(), config).await;
    let mut per_page = 0;
    for round in 1..=4 {
        let (status, body, _) = timed(&proxy, "/page").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "[/alt/0][/alt/1][/alt/2]");
        if round == 1 {
            // Each include at least once (the cache may try a failed fetch once more).
            per_page = missing.hits();
            assert!(per_page >= 3, "{per_page}");
        }
        assert_eq!(
            missing.hits(),
            per_page * round,
            "every fetch reaches the host"
        );
    }
    let text = admin_text(&proxy, "/_esi/metrics").await;
    let state = format!(
        "esi_proxy_breaker_state{{host=\"127.0.0.1:{}\"}}",
        missing.port()
    );
    assert_eq!(metric(&text, &state), Some(0.0), "{text}");
    assert!(!text.contains("esi_proxy_breaker_opens_total"), "{text}");
    assert_eq!(
        metric(&text, "esi_proxy_fragment_failures_total{kind=\"status\"}"),
        Some(12.0)
    );
    assert!(!text.contains("kind=\"breaker_open\""), "{text}");
}
