//! The fragment cache end to end: a `CachingFetcher` over a real `HttpClient` against loopback
//! fragment services. TTL precedence, per-user isolation, Vary, single-flight, leader failure,
//! hit-for-pass, stale-while-revalidate, stale-if-error, purge and the byte bound. Concurrency
//! is proven with gates and barriers (the service answers when the test says so), and expiry by
//! waiting past a 1 s TTL.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use esi_proxy::cache::{CachePolicy, CachingFetcher, FragmentCache, TtlSource};
use esi_proxy::config::{CacheConfig, CacheRule, Config};
use esi_proxy::fetch::{
    ErrorKind, FetchError, Fetcher, Fragment, FragmentRequest, HttpClient, SystemLookup,
};
use esi_proxy::telemetry::Metrics;
use futures::StreamExt;
use http::{HeaderMap, HeaderName, HeaderValue};
use tokio::sync::{watch, Barrier};

use crate::support::{self, full, response, Server};

/// Generous bound for anything that must happen; a hang fails the test instead of blocking CI.
const MUST: Duration = Duration::from_secs(10);
/// Past a 1 s TTL.
const PAST_ONE_SECOND: Duration = Duration::from_millis(1100);

/// A caching fetcher over a real HTTP client whose origin is the test's fragment service.
struct Setup {
    fetcher: CachingFetcher,
    cache: Arc<FragmentCache>,
    metrics: Arc<Metrics>,
}

fn setup(server: &Server, cache: CacheConfig) -> Setup {
    let mut config = Config::default();
    config.server.origin = server.base();
    config.cache = cache;
    let settings = config.settings().expect("valid test config");
    let client = HttpClient::new(&settings, Arc::new(SystemLookup)).expect("test config is valid");
    let metrics = Arc::new(Metrics::new());
    let cache = FragmentCache::new(
        settings.cache.fragment_capacity_bytes,
        settings.cache.max_surrogate_index_entries,
        Arc::clone(&metrics),
    );
    let policy = Arc::new(CachePolicy::from_config(&settings.cache));
    Setup {
        fetcher: CachingFetcher::new(
            Arc::new(client),
            Arc::clone(&cache),
            policy,
            esi_proxy::esi::ParseOptions::default(),
        ),
        cache,
        metrics,
    }
}

fn rule(pattern: &str, ttl_s: u64, key_headers: &[&str]) -> CacheRule {
    CacheRule {
        pattern: pattern.to_owned(),
        ttl_s,
        stale_while_revalidate_s: None,
        stale_if_error_s: None,
        key_headers: key_headers.iter().map(|h| (*h).to_owned()).collect(),
    }
}

/// Fetches `url` through the cache with these client headers.
async fn fetch(
    fetcher: &CachingFetcher,
    url: &str,
    headers: &[(&str, &str)],
) -> Result<Fragment, FetchError> {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).expect("test names are valid"),
            HeaderValue::from_str(value).expect("test values are valid"),
        );
    }
    let url = Arc::new(url.parse().expect("test URLs parse"));
    fetcher
        .fetch(FragmentRequest {
            url: fetcher.check(&url)?,
            client_headers: Arc::new(map.into()),
            timeout: MUST,
            options: Default::default(),
            keep_status: false,
        })
        .await
}

/// The body of a fetch that must succeed.
async fn body(fetcher: &CachingFetcher, url: &str, headers: &[(&str, &str)]) -> String {
    let fragment = fetch(fetcher, url, headers)
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    String::from_utf8(fragment.body.to_vec()).expect("test bodies are UTF-8")
}

/// A task fetching `url` through the cache (no client headers) and returning the body.
fn spawn_body(s: &Arc<Setup>, url: &str) -> tokio::task::JoinHandle<String> {
    let (s, url) = (Arc::clone(s), url.to_owned());
    tokio::spawn(async move { body(&s.fetcher, &url, &[]).await })
}

/// A counter's value in the metrics text (0 when absent).
fn metric(metrics: &Metrics, name: &str, label: Option<(&str, &str)>) -> u64 {
    let series = match label {
        Some((k, v)) => format!("{name}{{{k}=\"{v}\"}} "),
        None => format!("{name} "),
    };
    metrics
        .render()
        .lines()
        .find_map(|line| line.strip_prefix(&series))
        .map_or(0, |n| n.trim().parse().expect("counters are integers"))
}

/// Polls `done` until it holds; panics with `what` after [`MUST`].
async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + MUST;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A gate a handler waits on until the test opens it.
fn gate() -> (watch::Sender<bool>, watch::Receiver<bool>) {
    watch::channel(false)
}

async fn pass(gate: &mut watch::Receiver<bool>) {
    // An error means the test is over and dropped the sender: let the request finish.
    let _ = gate.wait_for(|open| *open).await;
}

/// README: "TTLs, first match wins: ... `Surrogate-Control: max-age`, then `Cache-Control: s-maxage`, then `max-age`; `cache.default_ttl_s`".
#[tokio::test]
async fn ttl_from_each_source_in_precedence_order() {
    // Each path gives 1 s from the source that must win and 60 s from the ones that must not
    // (or the other way round for the "long" paths): a refetch after 1.1 s shows which won.
    let server = support::serve(|req| async move {
        let headers: &[(&str, &str)] = match req.uri().path() {
            "/rule/f" => &[
                ("surrogate-control", "max-age=60"),
                ("cache-control", "s-maxage=60, max-age=60"),
            ],
            "/pinned/f" => &[("cache-control", "max-age=1")],
            "/surrogate" => &[
                ("surrogate-control", "content=\"ESI/1.0\", max-age=1+30"),
                ("cache-control", "s-maxage=60, max-age=60"),
            ],
            "/surrogate-long" => &[
                ("surrogate-control", "max-age=60;esi-proxy"),
                ("cache-control", "s-maxage=1"),
            ],
            "/s-maxage" => &[("cache-control", "max-age=60, s-maxage=1")],
            "/max-age" => &[("cache-control", "max-age=1")],
            _ => &[],
        };
        response(200, headers, full(req.uri().path().to_owned()))
    })
    .await;
    let headers_first = setup(
        &server,
        CacheConfig {
            default_ttl_s: 60,
            rules: vec![rule("/rule/*", 1, &[]), rule("/pinned/*", 60, &[])],
            ..CacheConfig::default()
        },
    );
    let default_only = setup(
        &server,
        CacheConfig {
            default_ttl_s: 1,
            ..CacheConfig::default()
        },
    );
    // (fetcher, path, refetched after 1.1 s, source)
    let cases: Vec<(&Setup, &str, bool, TtlSource)> = vec![
        (
            &headers_first,
            "/rule/f",
            true,
            TtlSource::Rule(0, "/rule/*".into()),
        ),
        (
            &headers_first,
            "/pinned/f",
            false,
            TtlSource::Rule(1, "/pinned/*".into()),
        ),
        (
            &headers_first,
            "/surrogate",
            true,
            TtlSource::SurrogateControl,
        ),
        (
            &headers_first,
            "/surrogate-long",
            false,
            TtlSource::SurrogateControl,
        ),
        (&headers_first, "/s-maxage", true, TtlSource::SMaxAge),
        (&headers_first, "/max-age", true, TtlSource::MaxAge),
        (&default_only, "/default", true, TtlSource::Default),
    ];
    for (s, path, _, source) in &cases {
        let url = server.url(path);
        assert_eq!(body(&s.fetcher, &url, &[]).await, *path);
        assert_eq!(body(&s.fetcher, &url, &[]).await, *path);
        assert_eq!(server.hits_on(path), 1, "{path}: second fetch is a hit");
        let stored = s.cache.entries_for_url(&url);
        assert_eq!(stored.len(), 1, "{path}");
        assert_eq!(stored[0].source, *source, "{path}");
    }
    tokio::time::sleep(PAST_ONE_SECOND).await;
    for (s, path, refetched, _) in &cases {
        assert_eq!(body(&s.fetcher, &server.url(path), &[]).await, *path);
        let want = if *refetched { 2 } else { 1 };
        assert_eq!(server.hits_on(path), want, "{path}: refetched: {refetched}");
    }
    assert_eq!(
        metric(
            &headers_first.metrics,
            "esi_proxy_cache_hits_total",
            Some(("cache", "fragment"))
        ),
        6 + 2
    );
}

/// README: "a response to a request that carried `Cookie` or `Authorization` is shared only when it says `public` or `s-maxage`, or a rule keys it by that header".
#[tokio::test]
async fn cookie_bearing_fragments_stay_per_user() {
    let server = support::serve(|req| async move {
        let cookie = req
            .headers()
            .get("cookie")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("anonymous")
            .to_owned();
        let cache_control = if req.uri().path().starts_with("/public/") {
            "public, max-age=60"
        } else {
            "max-age=60"
        };
        response(200, &[("cache-control", cache_control)], full(cookie))
    })
    .await;
    let s = setup(
        &server,
        CacheConfig {
            rules: vec![rule("/keyed/*", 60, &["cookie"])],
            ..CacheConfig::default()
        },
    );
    let (alice, bob) = ([("cookie", "user=alice")], [("cookie", "user=bob")]);

    // Not keyed, not public: never shared, never stored.
    let me = server.url("/me");
    for _ in 0..2 {
        assert_eq!(body(&s.fetcher, &me, &alice).await, "user=alice");
        assert_eq!(body(&s.fetcher, &me, &bob).await, "user=bob");
    }
    assert_eq!(server.hits_on("/me"), 4);

    // Keyed by cookie: one entry per user.
    let keyed = server.url("/keyed/me");
    for _ in 0..3 {
        assert_eq!(body(&s.fetcher, &keyed, &alice).await, "user=alice");
        assert_eq!(body(&s.fetcher, &keyed, &bob).await, "user=bob");
    }
    assert_eq!(server.hits_on("/keyed/me"), 2);
    assert_eq!(s.cache.entries_for_url(&keyed).len(), 2);

    // Public: the origin says it may be shared between users who send credentials; requests
    // without any keep their own entry.
    let public = server.url("/public/me");
    assert_eq!(body(&s.fetcher, &public, &alice).await, "user=alice");
    assert_eq!(body(&s.fetcher, &public, &bob).await, "user=alice");
    assert_eq!(body(&s.fetcher, &public, &[]).await, "anonymous");
    assert_eq!(server.hits_on("/public/me"), 2);
}

/// README: "a response to a request that carried `Cookie` or `Authorization` is shared only when it says `public` or `s-maxage`".
#[tokio::test]
async fn waiters_do_not_share_a_response_meant_for_another_user() {
    let (open, gate_rx) = gate();
    let first = Arc::new(AtomicUsize::new(0));
    let server = support::serve(move |req| {
        let mut gate = gate_rx.clone();
        let n = first.fetch_add(1, Ordering::SeqCst);
        async move {
            if n == 0 {
                pass(&mut gate).await;
            }
            let cookie = req.headers().get("cookie").cloned();
            let cookie = cookie.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("");
            response(
                200,
                &[("cache-control", "max-age=60")],
                full(cookie.to_owned()),
            )
        }
    })
    .await;
    let s = Arc::new(setup(&server, CacheConfig::default()));
    let url = server.url("/me");
    let alice = {
        let (s, url) = (Arc::clone(&s), url.clone());
        tokio::spawn(async move { body(&s.fetcher, &url, &[("cookie", "user=alice")]).await })
    };
    wait_until("alice's request reached the service", || {
        server.hits_on("/me") == 1
    })
    .await;
    let bob = {
        let (s, url) = (Arc::clone(&s), url.clone());
        tokio::spawn(async move { body(&s.fetcher, &url, &[("cookie", "user=bob")]).await })
    };
    wait_until("bob waits on alice's fetch", || {
        metric(&s.metrics, "esi_proxy_cache_coalesced_total", None) == 1
    })
    .await;
    open.send_replace(true);
    assert_eq!(alice.await.expect("task"), "user=alice");
    assert_eq!(bob.await.expect("task"), "user=bob");
    assert_eq!(server.hits_on("/me"), 2);
}

#[tokio::test]
async fn vary_keeps_one_entry_per_variant() {
    let server = support::serve(|req| async move {
        let lang = req.headers().get("accept-language").cloned();
        let lang = lang
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none");
        response(
            200,
            &[
                ("cache-control", "max-age=60"),
                ("vary", "Accept-Language, Accept-Encoding"),
            ],
            full(lang.to_owned()),
        )
    })
    .await;
    let s = setup(&server, CacheConfig::default());
    let url = server.url("/lang");
    for lang in ["en", "de", "en", "de", "fr", "en"] {
        assert_eq!(
            body(&s.fetcher, &url, &[("accept-language", lang)]).await,
            lang
        );
    }
    assert_eq!(server.hits_on("/lang"), 3);
    assert_eq!(s.cache.entries_for_url(&url).len(), 3);

    // A hit shares the stored body.
    let a = fetch(&s.fetcher, &url, &[("accept-language", "en")])
        .await
        .expect("hit");
    let b = fetch(&s.fetcher, &url, &[("accept-language", "en")])
        .await
        .expect("hit");
    assert_eq!(a.body.as_ptr(), b.body.as_ptr());
}

#[tokio::test]
async fn a_waiter_of_another_variant_fetches_its_own() {
    let (open, gate_rx) = gate();
    let first = Arc::new(AtomicUsize::new(0));
    let server = support::serve(move |req| {
        let mut gate = gate_rx.clone();
        let n = first.fetch_add(1, Ordering::SeqCst);
        async move {
            if n == 0 {
                pass(&mut gate).await;
            }
            let lang = req.headers().get("accept-language").cloned();
            let lang = lang
                .as_ref()
                .and_then(|v| v.to_str().ok())
                .unwrap_or("none");
            response(
                200,
                &[("cache-control", "max-age=60"), ("vary", "accept-language")],
                full(lang.to_owned()),
            )
        }
    })
    .await;
    let s = Arc::new(setup(&server, CacheConfig::default()));
    let url = server.url("/lang");
    let spawn = |lang: &'static str| {
        let (s, url) = (Arc::clone(&s), url.clone());
        tokio::spawn(async move { body(&s.fetcher, &url, &[("accept-language", lang)]).await })
    };
    // The URL's Vary is not known yet, so both requests share one key and one fetch.
    let en = spawn("en");
    wait_until("en reached the service", || server.hits_on("/lang") == 1).await;
    let de = spawn("de");
    wait_until("de waits on en's fetch", || {
        metric(&s.metrics, "esi_proxy_cache_coalesced_total", None) == 1
    })
    .await;
    open.send_replace(true);
    assert_eq!(en.await.expect("task"), "en");
    assert_eq!(de.await.expect("task"), "de");
    assert_eq!(server.hits_on("/lang"), 2);
}

// Many worker threads, so waiters wake and race for real.
/// README: "Concurrent misses share one upstream fetch".
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_misses_make_one_upstream_request() {
    const N: usize = 200;
    let (open, gate_rx) = gate();
    let server = support::serve(move |_req| {
        let mut gate = gate_rx.clone();
        async move {
            pass(&mut gate).await;
            response(200, &[("cache-control", "max-age=60")], full("shared"))
        }
    })
    .await;
    let s = Arc::new(setup(&server, CacheConfig::default()));
    let url = server.url("/one");
    let tasks: Vec<_> = (0..N).map(|_| spawn_body(&s, &url)).collect();
    wait_until("every request waits on the one fetch", || {
        server.hits_on("/one") == 1
            && metric(&s.metrics, "esi_proxy_cache_coalesced_total", None) == N as u64 - 1
    })
    .await;
    open.send_replace(true);
    for task in tasks {
        assert_eq!(task.await.expect("task"), "shared");
    }
    assert_eq!(server.hits_on("/one"), 1);
    let misses = metric(
        &s.metrics,
        "esi_proxy_cache_misses_total",
        Some(("cache", "fragment")),
    );
    assert_eq!(misses, N as u64);
}

#[tokio::test]
async fn a_leader_that_goes_away_does_not_fail_the_waiters() {
    let (open, gate_rx) = gate();
    let server = support::serve(move |_req| {
        let mut gate = gate_rx.clone();
        async move {
            pass(&mut gate).await;
            response(200, &[("cache-control", "max-age=60")], full("kept"))
        }
    })
    .await;
    let s = Arc::new(setup(&server, CacheConfig::default()));
    let url = server.url("/leader");
    let spawn = || spawn_body(&s, &url);
    let leader = spawn();
    wait_until("the leader's request reached the service", || {
        server.hits_on("/leader") == 1
    })
    .await;
    let waiter = spawn();
    wait_until("the waiter waits on the leader's fetch", || {
        metric(&s.metrics, "esi_proxy_cache_coalesced_total", None) == 1
    })
    .await;
    leader.abort();
    assert!(leader.await.is_err_and(|e| e.is_cancelled()));
    open.send_replace(true);
    assert_eq!(waiter.await.expect("task"), "kept");
    assert_eq!(
        server.hits_on("/leader"),
        1,
        "the fetch went on for the waiter"
    );
}

// Many worker threads, so waiters wake and race for real.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_shared_fetch_is_retried_once_for_everyone() {
    const N: usize = 100;
    let (open, gate_rx) = gate();
    let count = Arc::new(AtomicUsize::new(0));
    let server = support::serve(move |_req| {
        let mut gate = gate_rx.clone();
        let n = count.fetch_add(1, Ordering::SeqCst);
        async move {
            if n == 0 {
                pass(&mut gate).await;
                return response(500, &[], full("broken"));
            }
            response(200, &[("cache-control", "max-age=60")], full("second"))
        }
    })
    .await;
    let s = Arc::new(setup(&server, CacheConfig::default()));
    let url = server.url("/flaky");
    let tasks: Vec<_> = (0..N).map(|_| spawn_body(&s, &url)).collect();
    wait_until("every request waits on the first fetch", || {
        metric(&s.metrics, "esi_proxy_cache_coalesced_total", None) == N as u64 - 1
    })
    .await;
    open.send_replace(true);
    for task in tasks {
        assert_eq!(task.await.expect("task"), "second");
    }
    assert_eq!(server.hits_on("/flaky"), 2);
}

#[tokio::test]
async fn a_failure_after_the_retry_is_reported() {
    let server = support::serve(|_req| async { response(503, &[], full("down")) }).await;
    let s = setup(&server, CacheConfig::default());
    let error = fetch(&s.fetcher, &server.url("/down"), &[])
        .await
        .expect_err("the service is down");
    assert_eq!(error.kind(), ErrorKind::Status);
    assert_eq!(server.hits_on("/down"), 2, "one try and one retry");
}

/// README: "`no-store` ... responses are never stored".
#[tokio::test]
async fn uncacheable_responses_are_fetched_concurrently() {
    const N: usize = 20;
    let barrier = Arc::new(Barrier::new(N));
    let count = Arc::new(AtomicUsize::new(0));
    let server = support::serve(move |_req| {
        let barrier = Arc::clone(&barrier);
        let n = count.fetch_add(1, Ordering::SeqCst);
        async move {
            // The first answer makes the key hit-for-pass; the next N answer only once all N
            // are in the service at the same time.
            if n > 0 {
                barrier.wait().await;
            }
            response(200, &[("cache-control", "no-store")], full(format!("n{n}")))
        }
    })
    .await;
    let s = Arc::new(setup(&server, CacheConfig::default()));
    let url = server.url("/uncacheable");
    assert_eq!(body(&s.fetcher, &url, &[]).await, "n0");
    let all = futures::stream::iter(0..N)
        .map(|_| {
            let (s, url) = (Arc::clone(&s), url.clone());
            async move { body(&s.fetcher, &url, &[]).await }
        })
        .buffer_unordered(N)
        .collect::<Vec<_>>();
    let bodies = tokio::time::timeout(MUST, all)
        .await
        .expect("hit-for-pass requests are not serialised");
    assert_eq!(bodies.len(), N);
    assert!(
        bodies.iter().all(|b| b != "n0"),
        "nothing served from the cache"
    );
    assert_eq!(server.hits_on("/uncacheable"), N + 1);
    assert_eq!(
        metric(&s.metrics, "esi_proxy_cache_coalesced_total", None),
        0
    );
    assert_eq!(
        metric(&s.metrics, "esi_proxy_cache_passes_total", None),
        N as u64 + 1
    );
}

/// README: "`stale-while-revalidate` ... serve an expired copy while one background fetch refreshes it".
#[tokio::test]
async fn stale_while_revalidate_serves_at_once_and_refreshes_once() {
    let (open, gate_rx) = gate();
    let count = Arc::new(AtomicUsize::new(0));
    let server = support::serve(move |_req| {
        let mut gate = gate_rx.clone();
        let n = count.fetch_add(1, Ordering::SeqCst);
        async move {
            if n > 0 {
                pass(&mut gate).await;
            }
            let cache_control = "max-age=1, stale-while-revalidate=60";
            response(
                200,
                &[("cache-control", cache_control)],
                full(format!("v{n}")),
            )
        }
    })
    .await;
    let s = Arc::new(setup(&server, CacheConfig::default()));
    let url = server.url("/swr");
    assert_eq!(body(&s.fetcher, &url, &[]).await, "v0");
    tokio::time::sleep(PAST_ONE_SECOND).await;

    // The refresh is held at the gate; stale hits are answered regardless.
    let stale = futures::stream::iter(0..10)
        .map(|_| body(&s.fetcher, &url, &[]))
        .buffer_unordered(10)
        .collect::<Vec<_>>();
    let bodies = tokio::time::timeout(MUST, stale)
        .await
        .expect("stale entries are served without waiting");
    assert!(bodies.iter().all(|b| b == "v0"), "{bodies:?}");
    wait_until("the refresh reached the service", || {
        server.hits_on("/swr") == 2
    })
    .await;
    assert_eq!(body(&s.fetcher, &url, &[]).await, "v0");
    assert_eq!(server.hits_on("/swr"), 2, "one background refresh");

    open.send_replace(true);
    let deadline = tokio::time::Instant::now() + MUST;
    while body(&s.fetcher, &url, &[]).await != "v1" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "refresh never stored"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(server.hits_on("/swr"), 2);
    let stale_served = metric(
        &s.metrics,
        "esi_proxy_cache_stale_served_total",
        Some(("reason", "while_revalidate")),
    );
    assert!(stale_served >= 11, "{stale_served}");
}

/// README: "`stale-if-error` ... serve an expired copy ... when the fragment service fails".
#[tokio::test]
async fn stale_if_error_when_the_service_is_gone() {
    let server = support::serve(|req| async move {
        let cache_control = match req.uri().path() {
            "/sie" => "max-age=1, stale-if-error=60",
            _ => "max-age=1",
        };
        // No keep-alive: once the server is dropped, nothing answers.
        let headers = [("cache-control", cache_control), ("connection", "close")];
        response(200, &headers, full("v0"))
    })
    .await;
    let s = setup(&server, CacheConfig::default());
    let (sie, plain) = (server.url("/sie"), server.url("/plain"));
    assert_eq!(body(&s.fetcher, &sie, &[]).await, "v0");
    assert_eq!(body(&s.fetcher, &plain, &[]).await, "v0");
    drop(server);
    tokio::time::sleep(PAST_ONE_SECOND).await;

    assert_eq!(body(&s.fetcher, &sie, &[]).await, "v0");
    let error = fetch(&s.fetcher, &plain, &[])
        .await
        .expect_err("no stale-if-error window");
    assert_eq!(error.kind(), ErrorKind::Connect);
    let served = metric(
        &s.metrics,
        "esi_proxy_cache_stale_served_total",
        Some(("reason", "if_error")),
    );
    assert_eq!(served, 1);
}

/// README: "`POST /_esi/purge?url=U` or `?prefix=P` (drops cached fragments and layouts)".
#[tokio::test]
async fn purge_by_url_and_by_prefix() {
    let server = support::serve(|req| async move {
        response(
            200,
            &[("cache-control", "max-age=60")],
            full(req.uri().path().to_owned()),
        )
    })
    .await;
    let s = setup(&server, CacheConfig::default());
    let paths = ["/p/a", "/p/b", "/q"];
    let fetch_all = || async {
        for path in paths {
            assert_eq!(body(&s.fetcher, &server.url(path), &[]).await, path);
        }
    };
    let counts = || paths.map(|p| server.hits_on(p));
    fetch_all().await;
    fetch_all().await;
    assert_eq!(counts(), [1, 1, 1]);

    s.cache.purge_url(&server.url("/p/a"));
    fetch_all().await;
    assert_eq!(counts(), [2, 1, 1]);

    s.cache.purge_prefix(&server.url("/p/"));
    fetch_all().await;
    assert_eq!(counts(), [3, 2, 1]);
}

#[tokio::test]
async fn refused_urls_fail_before_the_cache() {
    let server = support::serve(|_req| async { response(200, &[], full("x")) }).await;
    let s = setup(&server, CacheConfig::default());
    let error = fetch(&s.fetcher, "http://not-allowed.test/x", &[])
        .await
        .expect_err("host not in the allowlist");
    assert_eq!(error.kind(), ErrorKind::Refused);
    assert_eq!(
        metric(
            &s.metrics,
            "esi_proxy_cache_misses_total",
            Some(("cache", "fragment"))
        ),
        0
    );
}

#[tokio::test]
async fn memory_stays_within_the_byte_bound() {
    const CAPACITY: u64 = 64 * 1024;
    const BODY: usize = 1024;
    let server = support::serve(|_req| async {
        response(
            200,
            &[("cache-control", "max-age=60")],
            full(vec![b'x'; BODY]),
        )
    })
    .await;
    let s = setup(
        &server,
        CacheConfig {
            fragment_capacity_bytes: CAPACITY,
            ..CacheConfig::default()
        },
    );
    let count = 10 * CAPACITY as usize / BODY;
    futures::stream::iter(0..count)
        .for_each_concurrent(32, |i| {
            let url = server.url(&format!("/big/{i}"));
            let fetcher = &s.fetcher;
            async move {
                assert_eq!(body(fetcher, &url, &[]).await.len(), BODY);
            }
        })
        .await;
    assert_eq!(server.received().len(), count);
    s.cache.run_pending_tasks().await;
    let (size, entries) = (s.cache.weighted_size(), s.cache.entry_count());
    assert!(size <= CAPACITY, "{size} bytes held, bound {CAPACITY}");
    assert!(entries > 0 && entries < count as u64, "{entries} entries");
    let evicted = metric(
        &s.metrics,
        "esi_proxy_cache_evictions_total",
        Some(("cache", "fragment")),
    );
    assert!(evicted > 0, "size evictions counted");

    s.cache.publish_metrics();
    let text = s.metrics.render();
    assert!(
        text.contains(&format!("esi_proxy_fragment_cache_bytes {size}")),
        "{text}"
    );
    assert!(
        text.contains(&format!("esi_proxy_fragment_cache_entries {entries}")),
        "{text}"
    );
}
