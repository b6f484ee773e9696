//! The proxy under test run in process with `server::run` on its own loopback listener, and the
//! plain HTTP client the tests talk to it with.

use std::net::SocketAddr;
use std::sync::Arc;

use esi_proxy::config::Config;
use esi_proxy::fetch::{Lookup, SystemLookup};
use esi_proxy::server::{self, AppState};
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
pub async fn proxy_with_lookup(origin: &str, mut config: Config, lookup: Arc<dyn Lookup>) -> Proxy {
    config.server.origin = origin.to_owned();
    config.validate().expect("test config is valid");
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("bound");
    let metrics = Arc::new(Metrics::new());
    let state = AppState::new(config, lookup, Arc::clone(&metrics)).expect("state");
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
    let url = url.to_owned();
    async move {
        let exchange = async {
            let resp = client().get(&url).send().await.expect("request");
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
