//! The proxy under test run in process with `server::run` on its own loopback listener, and the
//! plain HTTP client the tests talk to it with.

use std::net::SocketAddr;
use std::sync::Arc;

use esi_proxy::config::Config;
use esi_proxy::fetch::{Lookup, SystemLookup};
use esi_proxy::server::{self, AppState, FetcherLayer};
use esi_proxy::telemetry::Metrics;
use http::StatusCode;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The proxy under test; shuts down when dropped.
pub struct Proxy {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its metrics.
    pub metrics: Arc<Metrics>,
    /// Its state (config in force, caches, reload status).
    pub state: Arc<AppState>,
    /// Dropping it completes `server::run`'s shutdown future.
    _shutdown: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// `http://127.0.0.1:port` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A counter's or gauge's value in the metrics text; `None` when the series is absent.
    pub fn metric(&self, series: &str) -> Option<f64> {
        metric(&self.metrics.render(), series)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The value of `series` (name and labels, as written) in Prometheus text `text`.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|n| n.trim().parse().expect("metric values are numbers"))
}

/// Starts the proxy in front of `origin` with `config` (its origin is overwritten).
pub async fn proxy(origin: &str, config: Config) -> Proxy {
    proxy_with_lookup(origin, config, Arc::new(SystemLookup)).await
}

/// [`proxy`] with injected name resolution.
pub async fn proxy_with_lookup(origin: &str, config: Config, lookup: Arc<dyn Lookup>) -> Proxy {
    start(origin, config, |config, metrics| {
        AppState::new(config, lookup, metrics).expect("state")
    })
    .await
}

/// [`proxy`] with every fetcher it builds wrapped by `layer` (a test fetcher between the
/// composer and the network).
pub async fn proxy_with_layer(origin: &str, config: Config, layer: FetcherLayer) -> Proxy {
    start(origin, config, |config, metrics| {
        AppState::with_fetcher_layer(config, Arc::new(SystemLookup), metrics, layer).expect("state")
    })
    .await
}

async fn start(
    origin: &str,
    mut config: Config,
    state: impl FnOnce(Config, Arc<Metrics>) -> Arc<AppState>,
) -> Proxy {
    config.server.origin = origin.to_owned();
    config.validate().expect("test config is valid");
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("bound");
    let metrics = Arc::new(Metrics::new());
    let state = state(config, Arc::clone(&metrics));
    let (tx, rx) = oneshot::channel::<()>();
    let run_state = Arc::clone(&state);
    let task = tokio::spawn(async move {
        let _ = server::run(listener, run_state, async move {
            let _ = rx.await;
        })
        .await;
    });
    Proxy {
        addr,
        metrics,
        state,
        _shutdown: tx,
        task,
    }
}

/// A plain HTTP client with no pooling surprises: no proxy, no decompression.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .no_gzip()
        .no_brotli()
        .build()
        .expect("client")
}

/// GETs `url` and returns status, headers and the whole body as text (at most
/// [`super::MUST`]). The future owns what it needs, so it can be spawned.
pub fn get(
    url: &str,
) -> impl std::future::Future<Output = (StatusCode, http::HeaderMap, String)> + Send + 'static {
    get_with(url, &[])
}

/// [`get`] with request `headers` (a visitor's cookie, a token ...).
pub fn get_with(
    url: &str,
    headers: &[(&str, &str)],
) -> impl std::future::Future<Output = (StatusCode, http::HeaderMap, String)> + Send + 'static {
    let url = url.to_owned();
    let request = headers
        .iter()
        .fold(client().get(&url), |req, (name, value)| {
            req.header(*name, *value)
        });
    async move {
        let exchange = async {
            let resp = request.send().await.expect("request");
            let status = resp.status();
            let headers = resp.headers().clone();
            let body = resp.text().await.expect("body");
            (status, headers, body)
        };
        tokio::time::timeout(super::MUST, exchange)
            .await
            .unwrap_or_else(|_| panic!("GET {url}: no whole response within {:?}", super::MUST))
    }
}

/// A response body read chunk by chunk as it streams, each wait bounded by [`super::MUST`].
pub struct Streamed {
    body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
}

impl Streamed {
    /// GETs `url` and waits for the response head.
    pub async fn open(url: &str) -> Streamed {
        let resp = tokio::time::timeout(super::MUST, client().get(url).send())
            .await
            .unwrap_or_else(|_| panic!("GET {url}: no response head within {:?}", super::MUST))
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        Streamed {
            body: Box::pin(resp.bytes_stream()),
        }
    }

    /// [`Streamed::open`], then checks that the first chunk of the body is `want`.
    pub async fn first(url: &str, want: &[u8]) -> Streamed {
        let mut page = Streamed::open(url).await;
        let first = page.next().await.expect("a first chunk").expect("readable");
        assert_eq!(
            String::from_utf8_lossy(&first),
            String::from_utf8_lossy(want),
            "the first chunk of {url}"
        );
        page
    }

    /// The next chunk; `None` at the end of the body.
    pub async fn next(&mut self) -> Option<reqwest::Result<bytes::Bytes>> {
        use futures::StreamExt;
        tokio::time::timeout(super::MUST, self.body.next())
            .await
            .unwrap_or_else(|_| panic!("no chunk and no end within {:?}", super::MUST))
    }

    /// The rest of the body; when it fails part way, what came before and the error.
    pub async fn rest(mut self) -> Result<Vec<u8>, (Vec<u8>, reqwest::Error)> {
        let mut got = Vec::new();
        while let Some(chunk) = self.next().await {
            match chunk {
                Ok(chunk) => got.extend_from_slice(&chunk),
                Err(e) => return Err((got, e)),
            }
        }
        Ok(got)
    }
}

/// A config with the demo's services allowlisted and trusted, as `esi-proxy demo` wires them.
pub fn demo_config(demo: &fragments::demo::Demo) -> Config {
    let mut config = Config::default();
    for url in demo.service_urls() {
        config.fetch.hosts.push(esi_proxy::config::HostConfig {
            url,
            trusted: true,
            esi: false,
            private_network: true,
            http2: false,
            breaker: None,
        });
    }
    // The product fragment is primary; its page holds the head for it.
    config.esi.head_window_paths = fragments::demo::HEAD_WINDOW_PATHS
        .iter()
        .map(|p| p.to_string())
        .collect();
    // The demo runs on one machine for the person who started it: loopback is an admin.
    config.server.admin_from_loopback = true;
    config
}
