//! End-to-end harness: real hyper servers on 127.0.0.1:0 as origins and fragment services
//! (with request and connection counters), raw TCP servers for misbehaving peers, and the proxy
//! itself started with `server::run` on its own listener.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use esi_proxy::config::Config;
use esi_proxy::fetch::{Lookup, SystemLookup};
use esi_proxy::server::{self, AppState};
use esi_proxy::telemetry::Metrics;
use futures::future::BoxFuture;
use futures::Stream;
use http::{Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A test server's response body.
pub type TestBody = BoxBody<Bytes, std::io::Error>;

/// What a test server does with each request.
pub type Handler =
    Arc<dyn Fn(Request<Incoming>) -> BoxFuture<'static, Response<TestBody>> + Send + Sync>;

/// A server on loopback; stops when dropped.
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Requests received.
    pub requests: Arc<AtomicUsize>,
    /// Connections accepted.
    pub connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl TestServer {
    /// `http://127.0.0.1:port`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests received so far.
    pub fn hits(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts a hyper HTTP/1.1 server on loopback that answers with `handler`.
pub async fn serve<F, Fut>(handler: F) -> TestServer
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<TestBody>> + Send + 'static,
{
    let handler: Handler = Arc::new(move |req| Box::pin(handler(req)));
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("bound");
    let requests = Arc::new(AtomicUsize::new(0));
    let connections = Arc::new(AtomicUsize::new(0));
    let (req_count, conn_count) = (Arc::clone(&requests), Arc::clone(&connections));
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            conn_count.fetch_add(1, Ordering::SeqCst);
            let handler = Arc::clone(&handler);
            let req_count = Arc::clone(&req_count);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    req_count.fetch_add(1, Ordering::SeqCst);
                    let fut = handler(req);
                    async move { Ok::<_, Infallible>(fut.await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    TestServer {
        addr,
        requests,
        connections,
        task,
    }
}

/// A response with a body, status 200.
pub fn html(body: impl Into<Bytes>) -> Response<TestBody> {
    response(StatusCode::OK, "text/html; charset=utf-8", body)
}

/// An ESI layout: HTML marked with `Surrogate-Control: content="ESI/1.0"`.
pub fn esi(body: impl Into<Bytes>) -> Response<TestBody> {
    let mut r = html(body);
    r.headers_mut().insert(
        "surrogate-control",
        http::HeaderValue::from_static("content=\"ESI/1.0\""),
    );
    r
}

/// A response with the given status, content type and body.
pub fn response(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<TestBody> {
    let mut r = Response::new(
        Full::new(body.into())
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    r
}

/// A response whose body streams from `stream`.
pub fn streaming<S>(content_type: &'static str, stream: S) -> Response<TestBody>
where
    S: Stream<Item = Result<Bytes, std::io::Error>> + Send + Sync + 'static,
{
    use futures::StreamExt;
    let body = StreamBody::new(stream.map(|r| r.map(Frame::data)));
    let mut r = Response::new(BodyExt::boxed(body));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    r
}

/// The proxy under test; shuts down when dropped.
pub struct TestProxy {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its metrics.
    pub metrics: Arc<Metrics>,
    /// Dropping it ends `server::run`'s shutdown future.
    _shutdown: oneshot::Sender<()>,
    task: Option<JoinHandle<()>>,
}

impl TestProxy {
    /// `http://127.0.0.1:port` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Starts the proxy in front of `origin` with `config` (its origin is overwritten).
pub async fn proxy(origin: &str, config: Config) -> TestProxy {
    proxy_with_lookup(origin, config, Arc::new(SystemLookup)).await
}

/// [`proxy`] with injected name resolution.
pub async fn proxy_with_lookup(
    origin: &str,
    mut config: Config,
    lookup: Arc<dyn Lookup>,
) -> TestProxy {
    config.server.origin = origin.to_owned();
    config.validate().expect("test config is valid");
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("bound");
    let metrics = Arc::new(Metrics::new());
    let state = AppState::new(config, lookup, Arc::clone(&metrics)).expect("state");
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let _ = server::run(listener, state, async move {
            let _ = rx.await;
        })
        .await;
    });
    TestProxy {
        addr,
        metrics,
        _shutdown: tx,
        task: Some(task),
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

/// GETs `url` and returns status, headers and the whole body as text.
pub async fn get(url: &str) -> (StatusCode, http::HeaderMap, String) {
    let resp = client().get(url).send().await.expect("request");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.text().await.expect("body");
    (status, headers, body)
}
