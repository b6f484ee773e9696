//! The shared cache tier with real processes: a `redis-server` of the test's own, two or three
//! `esi-proxy serve` processes with the same `--redis`, and a loopback origin counting every
//! fragment request. Sharing, one fetch per cluster, purges everywhere, and pages that never
//! fail while Redis is down.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::process::{self, Proc};
use crate::support::proxy::{client, metric};
use crate::support::redis::RedisServer;
use crate::support::{html, response, serve, Server, MUST};

const TOKEN: &str = "shared-test-token";
/// The site's name, the same through every node.
const SITE: &str = "shop.test";

/// `/page?n=K&count=C` is a layout including the fragments `/f/0?n=K` .. `/f/{C-1}?n=K`, never
/// stored; `/cached-page` the same layout, cacheable for a minute. Each fragment is cacheable for
/// a minute and answers after `delay`.
async fn origin(delay: Duration) -> Server {
    serve(move |req| async move {
        let query = req.uri().query().unwrap_or("").to_owned();
        let param = |name: &str| {
            query
                .split('&')
                .find_map(|p| p.strip_prefix(name)?.strip_prefix('='))
                .unwrap_or("0")
                .to_owned()
        };
        let path = req.uri().path().to_owned();
        if path == "/page" || path == "/cached-page" {
            let n = param("n");
            let count: usize = param("count").parse().unwrap_or(0);
            let mut layout = String::from("<html>");
            for i in 0..count {
                layout.push_str(&format!("<esi:include src=\"/f/{i}?n={n}\"/>"));
            }
            layout.push_str("</html>");
            return response(
                200,
                &[
                    ("content-type", "text/html"),
                    ("surrogate-control", "content=\"ESI/1.0\""),
                    (
                        "cache-control",
                        if path == "/page" {
                            "no-store"
                        } else {
                            "max-age=60"
                        },
                    ),
                ],
                crate::support::full(layout),
            );
        }
        if let Some(i) = path.strip_prefix("/f/") {
            tokio::time::sleep(delay).await;
            let body = format!("<p>f{i} n={}</p>", param("n"));
            return response(
                200,
                &[
                    ("content-type", "text/html"),
                    ("cache-control", "max-age=60"),
                ],
                crate::support::full(body),
            );
        }
        html("not found")
    })
    .await
}

/// Fragment requests the origin received.
fn fragment_hits(origin: &Server) -> usize {
    origin
        .received()
        .iter()
        .filter(|r| r.uri.path().starts_with("/f/"))
        .count()
}

/// A config file for nodes in front of `origin`, with the admin token and `timeout_ms` for
/// each Redis call.
pub(crate) fn config(origin: &Server, name: &str, timeout_ms: u64) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("esi-proxy-shared-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("esi-proxy.toml");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\norigin = \"{}\"\nadmin_token = \"{TOKEN}\"\n\n\
         [fetch]\nfragment_timeout_ms = 10000\npage_timeout_ms = 20000\n\n\
         [cache.shared]\ntimeout_ms = {timeout_ms}\n",
        origin.base()
    );
    std::fs::write(&path, text).expect("write config");
    path
}

/// Each Redis call's deadline where a test counts origin requests exactly. A loaded test
/// machine runs debug builds side by side, and a call that misses its deadline sends its
/// request to the origin (as it must): far more than the 5 ms default, which is for a
/// production node near its Redis. For the same reason fragments get 10 s, not 2 s.
pub(crate) const PATIENT_MS: u64 = 5000;

/// One `esi-proxy serve` process.
pub(crate) struct Node {
    proc: Proc,
    addr: String,
}

impl Node {
    async fn start(config: &Path, redis: Option<&str>) -> Node {
        let mut args = vec!["--config", config.to_str().expect("UTF-8")];
        if let Some(url) = redis {
            args.extend(["--redis", url]);
        }
        let (proc, addr) = process::serve(&args).await;
        Node { proc, addr }
    }

    /// Starts `count` nodes sharing `redis`, each subscribed to purges before it returns.
    pub(crate) async fn cluster(config: &Path, redis: &RedisServer, count: usize) -> Vec<Node> {
        let mut nodes = Vec::new();
        for _ in 0..count {
            let node = Node::start(config, Some(&redis.url())).await;
            node.wait_shared("purge_channel", "subscribed").await;
            nodes.push(node);
        }
        nodes
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The page `n` of `count` fragments; asserts it is whole.
    async fn page(&self, n: usize, count: usize) -> Result<(), String> {
        self.page_at("/page", n, count).await
    }

    /// [`Node::page`] with the layout at `path`.
    async fn page_at(&self, path: &str, n: usize, count: usize) -> Result<(), String> {
        // One site name for every node, as behind a load balancer: the host is part of keys.
        let send = client()
            .get(self.url(&format!("{path}?n={n}&count={count}")))
            .header("host", SITE)
            .send();
        let resp = tokio::time::timeout(MUST, send)
            .await
            .map_err(|_| format!("{}: page {n}: no response", self.addr))?
            .map_err(|e| format!("{}: page {n}: {e}", self.addr))?;
        let status = resp.status();
        let body = tokio::time::timeout(MUST, resp.text())
            .await
            .map_err(|_| format!("{}: page {n}: body not whole", self.addr))?
            .map_err(|e| format!("{}: page {n}: {e}", self.addr))?;
        if status != 200 {
            return Err(format!("{}: page {n}: status {status}", self.addr));
        }
        for i in 0..count {
            if !body.contains(&format!("<p>f{i} n={n}</p>")) {
                return Err(format!(
                    "{}: page {n}: fragment {i} missing: {body}",
                    self.addr
                ));
            }
        }
        Ok(())
    }

    async fn admin(&self, method: reqwest::Method, path: &str) -> reqwest::Response {
        let resp = client()
            .request(method, self.url(path))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("admin request");
        assert_eq!(resp.status(), 200, "{path}");
        resp
    }

    async fn health(&self) -> serde_json::Value {
        let resp = self
            .admin(reqwest::Method::GET, "/_esi/health?detail")
            .await;
        let text = resp.text().await.expect("health");
        let health: serde_json::Value = serde_json::from_str(&text).expect("health JSON");
        health["shared_cache"].clone()
    }

    async fn metric(&self, series: &str) -> f64 {
        let resp = self.admin(reqwest::Method::GET, "/_esi/metrics").await;
        metric(&resp.text().await.expect("metrics"), series).unwrap_or(0.0)
    }

    pub(crate) async fn purge(&self, query: &str) -> serde_json::Value {
        let resp = self
            .admin(reqwest::Method::POST, &format!("/_esi/purge?{query}"))
            .await;
        serde_json::from_str(&resp.text().await.expect("purge")).expect("purge JSON")
    }

    /// The body of a 200 answer to `GET path` with the site's `Host`.
    pub(crate) async fn body(&self, path: &str) -> String {
        let send = client().get(self.url(path)).header("host", SITE).send();
        let resp = tokio::time::timeout(MUST, send)
            .await
            .expect("answered in time")
            .expect("answered");
        assert_eq!(resp.status(), 200, "{}: {path}", self.addr);
        tokio::time::timeout(MUST, resp.text())
            .await
            .expect("body in time")
            .expect("body")
    }

    /// Waits (at most [`MUST`]) until this node has applied `n` purges announced by any node.
    pub(crate) async fn wait_received(&self, n: u64) {
        tokio::time::timeout(MUST, async {
            while self.health().await["stats"]["purges_received"].as_u64() < Some(n) {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{}: {n} purges never received", self.addr));
    }

    /// Waits (at most [`MUST`]) until the shared tier's health shows `field` = `want`.
    async fn wait_shared(&self, field: &str, want: &str) {
        tokio::time::timeout(MUST, async {
            while self.health().await[field] != want {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{}: shared_cache.{field} never became {want}", self.addr));
    }
}

/// Item 1: what one node fetched, another serves with no origin request, and a warm node's
/// in-process hits never call Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fragment_fetched_through_one_node_is_served_by_another() {
    let redis = RedisServer::start().await;
    let origin = origin(Duration::ZERO).await;
    let config = config(&origin, "share", PATIENT_MS);
    let nodes = Node::cluster(&config, &redis, 2).await;
    let (a, b) = (&nodes[0], &nodes[1]);

    a.page_at("/cached-page", 1, 10)
        .await
        .expect("page through A");
    assert_eq!(fragment_hits(&origin), 10);
    b.page_at("/cached-page", 1, 10)
        .await
        .expect("page through B");
    assert_eq!(
        fragment_hits(&origin),
        10,
        "B served every fragment from Redis"
    );
    let series = "esi_proxy_shared_cache_hits_total{cache=\"fragment\"}";
    assert_eq!(b.metric(series).await, 10.0);

    // A layout that may not be stored is asked of Redis once, then not for a while.
    b.page(1, 10)
        .await
        .expect("uncacheable layout, warm fragments");
    // Layout and fragments warm in B's own cache now: Redis is not called at all.
    let calls = b.metric("esi_proxy_shared_cache_calls_total").await;
    for _ in 0..5 {
        b.page_at("/cached-page", 1, 10).await.expect("warm page");
        b.page(1, 10)
            .await
            .expect("uncacheable layout, warm fragments");
    }
    assert_eq!(b.metric("esi_proxy_shared_cache_calls_total").await, calls);
    assert_eq!(fragment_hits(&origin), 10);
    assert_eq!(b.health().await["state"], "up");
}

/// Item 1, layouts: a layout one node fetched is served by another from Redis (parsed there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layout_fetched_through_one_node_is_served_by_another() {
    let redis = RedisServer::start().await;
    let origin = origin(Duration::ZERO).await;
    let config = config(&origin, "layout", PATIENT_MS);
    let nodes = Node::cluster(&config, &redis, 2).await;
    let (a, b) = (&nodes[0], &nodes[1]);

    a.page_at("/cached-page", 4, 3)
        .await
        .expect("page through A");
    assert_eq!(origin.hits_on("/cached-page"), 1);
    // The write to Redis runs behind the page: wait until it is there.
    tokio::time::timeout(MUST, async {
        while redis
            .command(&[
                "EVAL",
                "return #redis.call('KEYS', ARGV[1])",
                "0",
                "esi:u:*cached-page* l *",
            ])
            .await
            != "1"
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("A stores the layout in Redis");
    b.page_at("/cached-page", 4, 3)
        .await
        .expect("page through B");
    assert_eq!(
        origin.hits_on("/cached-page"),
        1,
        "B took the layout from Redis"
    );
    assert_eq!(fragment_hits(&origin), 3, "and the fragments");
    let series = "esi_proxy_shared_cache_hits_total{cache=\"layout\"}";
    assert_eq!(b.metric(series).await, 1.0);
    b.page_at("/cached-page", 4, 3)
        .await
        .expect("warm page through B");
    assert_eq!(b.metric(series).await, 1.0, "then from B's own cache");
    assert_eq!(origin.hits_on("/cached-page"), 1);
}

/// Item 2: 100 concurrent cold page requests spread over two nodes make exactly one origin
/// request per fragment: within a node single-flight, across nodes the lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_pages_over_two_nodes_fetch_each_fragment_once() {
    let redis = RedisServer::start().await;
    // Slow fragments: every page request overlaps every fetch, on both nodes.
    let origin = origin(Duration::from_millis(300)).await;
    let config = config(&origin, "cold", PATIENT_MS);
    let nodes = Node::cluster(&config, &redis, 2).await;

    let count = 20;
    let pages = (0..100).map(|i| nodes[i % 2].page(2, count));
    let results = futures::future::join_all(pages).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    for i in 0..count {
        let path = format!("/f/{i}");
        assert_eq!(origin.hits_on(&path), 1, "{path}");
    }
    assert_eq!(fragment_hits(&origin), count);
    let leader = "esi_proxy_shared_cache_leases_total{outcome=\"leader\"}";
    let leaders = nodes[0].metric(leader).await + nodes[1].metric(leader).await;
    assert_eq!(leaders, count as f64, "one lease per fragment");
}

/// Item 2, failure: a leader that dies mid-fetch releases the key when its lease expires; the
/// node waiting on it then fetches the fragment itself, and its page is whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_dies_mid_fetch_releases_the_key_by_lease_expiry() {
    let redis = RedisServer::start().await;
    let origin = Arc::new(origin(Duration::from_millis(1000)).await);
    let config = config(&origin, "leader", PATIENT_MS);
    let nodes: Vec<Arc<Node>> = Node::cluster(&config, &redis, 2)
        .await
        .into_iter()
        .map(Arc::new)
        .collect();
    let (a, b) = (Arc::clone(&nodes[0]), Arc::clone(&nodes[1]));

    let leader = tokio::spawn(async move { a.page(5, 1).await });
    tokio::time::timeout(MUST, async {
        while origin.hits_on("/f/0") == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("A asks the origin");
    let follower = tokio::spawn(async move { b.page(5, 1).await });
    let series = "esi_proxy_shared_cache_leases_total{outcome=\"follower\"}";
    tokio::time::timeout(MUST, async {
        while nodes[1].metric(series).await != 1.0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("B waits on A's lease");

    // A dies holding the lease (SIGKILL: nothing is released).
    nodes[0].proc.signal("KILL").await;
    assert!(
        leader.await.expect("joined").is_err(),
        "A's page dies with A"
    );
    follower
        .await
        .expect("joined")
        .expect("B's page is whole once the lease expired");
    assert_eq!(
        origin.hits_on("/f/0"),
        2,
        "A's fetch, then B's after the lease"
    );
}

/// Item 3: a purge on A removes the shared copy and reaches B's in-process cache within
/// 100 ms; a node that was not listening when a purge went out drops its whole in-process cache
/// when it subscribes again and sees a generation it did not hear about.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_on_one_node_reaches_the_others() {
    let redis = RedisServer::start().await;
    let origin = origin(Duration::ZERO).await;
    let config = config(&origin, "purge", PATIENT_MS);
    let nodes = Node::cluster(&config, &redis, 2).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    a.page(3, 3).await.expect("page through A");
    b.page(3, 3).await.expect("page through B");
    assert_eq!(fragment_hits(&origin), 3);

    let purged = a.purge("url=/f/1%3Fn%3D3").await;
    let announced = Instant::now();
    assert_eq!(purged["shared_cache"]["status"], "announced", "{purged}");
    // The stored variant and the URL's vary spec.
    assert_eq!(purged["shared_cache"]["removed"], 2, "{purged}");
    let received = async {
        while b.health().await["stats"]["purges_received"] != 1 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    };
    tokio::time::timeout(MUST, received)
        .await
        .expect("B hears the purge");
    let took = announced.elapsed();
    println!("purge on A applied on B after {took:?}");
    assert!(took < Duration::from_millis(100), "{took:?}");

    b.page(3, 3).await.expect("page through B after the purge");
    assert_eq!(
        origin.hits_on("/f/1"),
        2,
        "B dropped its copy and fetched again"
    );
    a.page(3, 3).await.expect("page through A after the purge");
    assert_eq!(
        fragment_hits(&origin),
        4,
        "A dropped its copy and took B's from Redis"
    );

    // Both nodes stop listening; meanwhile a purge goes out that neither hears (the shared
    // copy of f/2 removed, the generation bumped, no announcement).
    let killed = redis.command(&["CLIENT", "KILL", "TYPE", "pubsub"]).await;
    assert_eq!(killed, "2", "both nodes' subscriptions");
    let missed = "for _, k in ipairs(redis.call('KEYS', ARGV[1])) do redis.call('DEL', k) end \
                  return redis.call('INCR', ARGV[2])";
    let generation = redis
        .command(&["EVAL", missed, "0", "esi:u:*/f/2?n=3 *", "esi:generation"])
        .await;
    assert_eq!(generation, "2");
    tokio::time::timeout(MUST, async {
        while b.health().await["generation"] != 2
            || b.health().await["purge_channel"] != "subscribed"
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("B subscribes again and reads the generation");
    assert_eq!(
        b.metric("esi_proxy_shared_cache_local_flushes_total").await,
        1.0
    );
    b.page(3, 3)
        .await
        .expect("page through B after reconnecting");
    assert_eq!(
        origin.hits_on("/f/2"),
        2,
        "B did not serve the copy purged while it was not listening"
    );
}

/// Item 4: Redis slow, then killed, mid-load: every page is served (from the in-process cache
/// and the origin); Redis back: the nodes rejoin and share again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_never_fail_while_redis_is_slow_or_down_and_sharing_resumes() {
    let mut redis = RedisServer::start().await;
    let origin = origin(Duration::ZERO).await;
    let config = config(&origin, "down", 100);
    let nodes = Arc::new(Node::cluster(&config, &redis, 2).await);

    // Four clients, each page cold (a new n), over both nodes; bounded by `stop` and a cap.
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let next = Arc::new(AtomicUsize::new(1000));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (nodes, stop, served, next) = (
                Arc::clone(&nodes),
                Arc::clone(&stop),
                Arc::clone(&served),
                Arc::clone(&next),
            );
            tokio::spawn(async move {
                let mut failures = Vec::new();
                while !stop.load(Ordering::Relaxed) && served.load(Ordering::Relaxed) < 5000 {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = nodes[n % 2].page(n, 5).await {
                        failures.push(e);
                    }
                    served.fetch_add(1, Ordering::Relaxed);
                }
                failures
            })
        })
        .collect();
    let wait_pages = |more: usize| {
        let served = Arc::clone(&served);
        async move {
            let until = served.load(Ordering::Relaxed) + more;
            tokio::time::timeout(MUST, async {
                while served.load(Ordering::Relaxed) < until {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
            .await
            .expect("the load goes on");
        }
    };
    wait_pages(40).await;

    // Slow: Redis answers nothing for 800 ms; every call times out after its 100 ms.
    let sleeper = {
        let url = redis.url();
        let port: u16 = url.rsplit(':').next().expect("port").parse().expect("port");
        tokio::spawn(async move {
            let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .expect("connect");
            let cmd = b"*3\r\n$5\r\nDEBUG\r\n$5\r\nSLEEP\r\n$3\r\n0.8\r\n";
            tokio::io::AsyncWriteExt::write_all(&mut stream, cmd)
                .await
                .expect("send");
            let mut reply = [0; 5];
            tokio::io::AsyncReadExt::read_exact(&mut stream, &mut reply)
                .await
                .expect("reply");
            reply
        })
    };
    wait_pages(40).await;
    assert_eq!(&sleeper.await.expect("joined"), b"+OK\r\n");

    // Down.
    redis.kill();
    wait_pages(60).await;
    redis.restart().await;
    for node in nodes.iter() {
        node.wait_shared("state", "up").await;
        node.wait_shared("purge_channel", "subscribed").await;
    }
    wait_pages(20).await;
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for task in load {
        failures.extend(task.await.expect("load task"));
    }
    assert!(failures.is_empty(), "failed pages: {failures:?}");
    let errors = nodes[0]
        .metric("esi_proxy_shared_cache_errors_total{kind=\"timeout\"}")
        .await
        + nodes[1]
            .metric("esi_proxy_shared_cache_errors_total{kind=\"timeout\"}")
            .await;
    assert!(errors > 0.0, "the slow phase timed out calls");
    let skipped = nodes[0]
        .metric("esi_proxy_shared_cache_skipped_total")
        .await
        + nodes[1]
            .metric("esi_proxy_shared_cache_skipped_total")
            .await;
    assert!(
        skipped > 0.0,
        "the breaker skipped calls while Redis was down"
    );

    // Sharing again: what A fetches now, B serves with no origin request.
    let before = fragment_hits(&origin);
    nodes[0].page(1, 5).await.expect("page through A");
    assert_eq!(fragment_hits(&origin), before + 5);
    nodes[1].page(1, 5).await.expect("page through B");
    assert_eq!(
        fragment_hits(&origin),
        before + 5,
        "B served A's fragments from Redis"
    );
}

/// The figures for the closing note: origin requests for a cold start of three nodes with and
/// without the shared tier (3 nodes × 20 concurrent requests of a 60-fragment page), and warm
/// requests per second of one node with the tier configured and without (printed; run with
/// `--nocapture`). Only the request counts are asserted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_node_cold_start_and_warm_overhead() {
    let redis = RedisServer::start().await;
    let origin = origin(Duration::from_millis(50)).await;
    let config = config(&origin, "measure", PATIENT_MS);
    let count = 60;

    let mut cold = Vec::new();
    for (n, shared) in [(1, true), (2, false)] {
        let nodes = if shared {
            Node::cluster(&config, &redis, 3).await
        } else {
            let mut nodes = Vec::new();
            for _ in 0..3 {
                nodes.push(Node::start(&config, None).await);
            }
            nodes
        };
        let before = fragment_hits(&origin);
        let pages = (0..60).map(|i| nodes[i % 3].page(n, count));
        let results = futures::future::join_all(pages).await;
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        cold.push(fragment_hits(&origin) - before);
        if shared {
            for node in &nodes {
                println!("shared tier after the cold start: {}", node.health().await);
                let text = node
                    .admin(reqwest::Method::GET, "/_esi/metrics")
                    .await
                    .text()
                    .await
                    .expect("metrics");
                for line in text
                    .lines()
                    .filter(|l| l.starts_with("esi_proxy_shared_cache_errors"))
                {
                    println!("  {line}");
                }
            }
        }
    }
    println!(
        "cold start, 3 nodes x 20 concurrent requests of a {count}-fragment page: \
         {} origin fragment requests with the shared tier, {} without",
        cold[0], cold[1]
    );
    assert_eq!(cold[0], count, "one request per fragment for the cluster");
    assert_eq!(cold[1], 3 * count, "one per fragment per node");

    let with = Node::start(&config, Some(&redis.url())).await;
    let without = Node::start(&config, None).await;
    for path in ["/cached-page", "/page"] {
        let mut rates = Vec::new();
        for node in [&with, &without] {
            node.page_at(path, 3, 20).await.expect("warm-up");
            let started = Instant::now();
            let clients = (0..4).map(|_| async {
                for _ in 0..150 {
                    node.page_at(path, 3, 20).await.expect("warm page");
                }
            });
            futures::future::join_all(clients).await;
            rates.push(600.0 / started.elapsed().as_secs_f64());
        }
        println!(
            "warm {path} (20 fragments), 4 clients x 150 requests: {:.0} req/s with the shared \
             tier configured, {:.0} req/s without",
            rates[0], rates[1]
        );
    }
}
