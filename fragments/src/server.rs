//! The accept loop the test origin and the demo services share: HTTP/1.1 with keep-alive, or
//! HTTP/2 when a client opens with its preface (prior knowledge, h2c); one task per connection, every connection closed when the loop's future is dropped. What a
//! request is answered with is the [`Respond`] implementor's business.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// What a server answers: the whole response to one request, never an error (a refusal is a
/// response too).
pub(crate) trait Respond: Send + Sync + 'static {
    /// The response to `req`.
    fn respond(
        &self,
        req: &Request<Incoming>,
    ) -> impl Future<Output = Response<Full<Bytes>>> + Send;
}

/// Serves `handler` on `listener` (HTTP/1.1 with keep-alive, or h2c) until the future is dropped; dropping
/// it also closes every connection it accepted.
pub(crate) async fn serve<R: Respond>(listener: TcpListener, handler: Arc<R>) {
    let mut connections = JoinSet::new();
    loop {
        // Reap finished connections so the set stays as large as what is open.
        while connections.try_join_next().is_some() {}
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                // Out of descriptors and the like: back off rather than spin.
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let handler = Arc::clone(&handler);
        connections.spawn(async move {
            let service = service_fn(move |req| {
                let handler = Arc::clone(&handler);
                async move { Ok::<_, Infallible>(handler.respond(&req).await) }
            });
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder.http1().timer(TokioTimer::new());
            builder.http2().timer(TokioTimer::new());
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
