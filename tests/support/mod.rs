//! Helpers shared by the end-to-end tests, one of each: loopback servers (`serve`, `serve_raw`,
//! `serve_tls`) with one body type and one response builder, the proxy run in process
//! (`proxy`), and the `esi-proxy` binary run as a child process (`process`).

pub mod fault;
pub mod process;
pub mod proxy;
pub mod redis;
pub mod tls;

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::{TcpSocket, TcpStream};

pub use proxy::{
    client, demo_config, get, proxy, proxy_with_layer, proxy_with_lookup, Proxy, Streamed,
};

/// Generous bound for anything that must happen; a hang fails the test instead of blocking CI.
pub const MUST: Duration = Duration::from_secs(20);

/// A test server's response body: whole, or streamed (and possibly failing part way).
pub type Body = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// What a test server received: one request's head.
#[derive(Debug, Clone)]
pub struct Received {
    /// The method.
    pub method: http::Method,
    /// Path and query as sent (with scheme and authority over HTTP/2).
    pub uri: http::Uri,
    /// HTTP/1.1, or HTTP/2 for a client that opened with its preface.
    pub version: http::Version,
    /// Every header, repeated ones included.
    pub headers: http::HeaderMap,
}

/// A loopback server that records what reaches it; stops when dropped.
pub struct Server {
    /// The bound address.
    pub addr: SocketAddr,
    scheme: &'static str,
    log: Arc<Log>,
    task: tokio::task::JoinHandle<()>,
}

/// What the accept loop and connections record.
struct Log {
    /// Peer address of every accepted connection, probes included.
    peers: tokio::sync::watch::Sender<Vec<SocketAddr>>,
    /// Local addresses of the probes `Server::connections` made.
    probes: Mutex<HashSet<SocketAddr>>,
    requests: Mutex<Vec<Received>>,
}

/// A connection as a test server's handler gets it: plain TCP or TLS over it.
trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// Turns an accepted socket into the connection to serve (a TLS handshake, or nothing).
type Accept = Arc<dyn Fn(TcpStream) -> BoxFuture<'static, Option<Pin<Box<dyn Io>>>> + Send + Sync>;

// === bodies and responses ===

/// A whole body.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A body streamed chunk by chunk (chunked transfer encoding unless a length is set).
pub fn stream(
    chunks: impl futures::Stream<Item = std::io::Result<Bytes>> + Send + Sync + 'static,
) -> Body {
    use futures::StreamExt;
    BodyExt::boxed(StreamBody::new(chunks.map(|chunk| chunk.map(Frame::data))))
}

/// The one response builder: `status`, `headers` and `body`.
pub fn response(status: u16, headers: &[(&str, &str)], body: Body) -> Response<Body> {
    let mut builder = Response::builder().status(status);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(body).expect("test responses are well-formed")
}

/// `Content-Type` of HTML.
pub const HTML: (&str, &str) = ("content-type", "text/html; charset=utf-8");

/// The mark that makes a response ESI.
pub const ESI: (&str, &str) = ("surrogate-control", "content=\"ESI/1.0\"");

/// A 200 HTML response with `body`.
pub fn html(body: impl Into<Bytes>) -> Response<Body> {
    response(200, &[HTML], full(body))
}

/// A 200 HTML response marked as ESI (`Surrogate-Control: content="ESI/1.0"`).
pub fn esi(body: impl Into<Bytes>) -> Response<Body> {
    response(200, &[HTML, ESI], full(body))
}

/// `data` gzip-compressed.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(data).expect("writing to memory");
    encoder.finish().expect("writing to memory")
}

/// `data` zlib-compressed (HTTP's `deflate`).
pub fn deflate(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(data).expect("writing to memory");
    encoder.finish().expect("writing to memory")
}

/// `data` brotli-compressed.
pub fn brotli(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut writer = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
        writer.write_all(data).expect("writing to memory");
    }
    out
}

// === loopback servers ===
//
// `serve` runs a hyper server on 127.0.0.1:0, `serve_tls` the same over TLS, and `serve_raw`
// hands each connection's socket to a handler that writes bytes by hand (for broken responses
// hyper would never send). All record every connection, so a test can prove a client never
// connected (`connections`).

/// Serves HTTP/1.1 (or HTTP/2 with prior knowledge) on 127.0.0.1:0 with `handler`; returns
/// once the listener is bound.
pub async fn serve<F, Fut>(handler: F) -> Server
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let plain: Accept =
        Arc::new(|stream| Box::pin(async move { Some(Box::pin(stream) as Pin<Box<dyn Io>>) }));
    serve_with(plain, "http", handler).await
}

/// [`serve`] over TLS with `identity`'s certificate (see [`tls::Identity`]).
pub async fn serve_tls<F, Fut>(identity: &tls::Identity, handler: F) -> Server
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let acceptor = identity.acceptor();
    let tls: Accept = Arc::new(move |stream| {
        let acceptor = acceptor.clone();
        Box::pin(async move {
            // A failed handshake (a client that does not trust the certificate) ends here.
            let tls = acceptor.accept(stream).await.ok()?;
            Some(Box::pin(tls) as Pin<Box<dyn Io>>)
        })
    });
    serve_with(tls, "https", handler).await
}

async fn serve_with<F, Fut>(accept: Accept, scheme: &'static str, handler: F) -> Server
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let handler = Arc::new(handler);
    start(scheme, move |stream: TcpStream, log: Arc<Log>| {
        let (handler, accept) = (Arc::clone(&handler), Arc::clone(&accept));
        async move {
            let Some(io) = accept(stream).await else {
                return;
            };
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                log.requests.lock().expect("not poisoned").push(Received {
                    method: req.method().clone(),
                    uri: req.uri().clone(),
                    version: req.version(),
                    headers: req.headers().clone(),
                });
                let reply = handler(req);
                async move { Ok::<_, Infallible>(reply.await) }
            });
            // HTTP/1.1, or HTTP/2 when the client opens with its preface (h2c, or over TLS
            // without ALPN). Errors here are the client going away, which some tests do on
            // purpose.
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(hyper_util::rt::TokioIo::new(io), service)
                .await;
        }
    })
    .await
}

/// Accepts on 127.0.0.1:0 and gives each connection's socket to `handler`; returns once bound.
pub async fn serve_raw<F, Fut>(handler: F) -> Server
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    start("http", move |stream, _log| handler(stream)).await
}

/// Reads a request head (through the blank line) from a raw connection; `None` at EOF first.
pub async fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// Waits until the peer closes a raw connection (or it fails), discarding what it sends.
pub async fn wait_closed(stream: &mut TcpStream) {
    let mut sink = [0u8; 1024];
    while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
}

async fn start<F, Fut>(scheme: &'static str, on_connection: F) -> Server
where
    F: Fn(TcpStream, Arc<Log>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    // A backlog past std's 128, so a burst of connections from the proxy is not met with SYN
    // retries a second apart.
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("address"))
        .expect("bind loopback");
    let listener = socket.listen(4096).expect("listen");
    let addr = listener.local_addr().expect("bound address");
    let log = Arc::new(Log {
        peers: tokio::sync::watch::Sender::new(Vec::new()),
        probes: Mutex::new(HashSet::new()),
        requests: Mutex::new(Vec::new()),
    });
    let accept_log = Arc::clone(&log);
    let task = tokio::spawn(async move {
        while let Ok((stream, peer)) = listener.accept().await {
            accept_log.peers.send_modify(|peers| peers.push(peer));
            if accept_log
                .probes
                .lock()
                .expect("not poisoned")
                .contains(&peer)
            {
                continue;
            }
            tokio::spawn(on_connection(stream, Arc::clone(&accept_log)));
        }
    });
    Server {
        addr,
        scheme,
        log,
        task,
    }
}

// === impl Server ===

impl Server {
    /// `http://127.0.0.1:port{path}` (`https` for a TLS server).
    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{path}", self.scheme, self.addr)
    }

    /// `http://127.0.0.1:port`, for config.
    pub fn base(&self) -> String {
        self.url("")
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Requests received so far (not recorded by `serve_raw` servers).
    pub fn received(&self) -> Vec<Received> {
        self.log.requests.lock().expect("not poisoned").clone()
    }

    /// How many requests reached the server so far.
    pub fn hits(&self) -> usize {
        self.log.requests.lock().expect("not poisoned").len()
    }

    /// How many requests for `path` reached the server so far.
    pub fn hits_on(&self, path: &str) -> usize {
        self.log
            .requests
            .lock()
            .expect("not poisoned")
            .iter()
            .filter(|r| r.uri.path() == path)
            .count()
    }

    /// Connections accepted so far. Exact, without sleeping: connects a probe and waits until it
    /// is accepted, so every connection made before this call has been accepted and counted.
    pub async fn connections(&self) -> usize {
        let socket = TcpSocket::new_v4().expect("socket");
        socket
            .bind("127.0.0.1:0".parse().expect("address"))
            .expect("bind probe");
        let local = socket.local_addr().expect("probe address");
        self.log.probes.lock().expect("not poisoned").insert(local);
        let _probe = socket.connect(self.addr).await.expect("probe connects");
        let mut peers = self.log.peers.subscribe();
        let peers = peers
            .wait_for(|peers| peers.contains(&local))
            .await
            .expect("server runs");
        let probes = self.log.probes.lock().expect("not poisoned");
        peers.iter().filter(|peer| !probes.contains(peer)).count()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A port nothing listens on (bound, then released).
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    listener.local_addr().expect("bound address").port()
}

/// Name resolution from a fixed table, for `esi_proxy::fetch::HttpClient::new`.
#[derive(Debug, Default)]
pub struct StaticLookup(pub HashMap<String, Vec<SocketAddr>>);

impl esi_proxy::fetch::Lookup for StaticLookup {
    fn lookup(
        &self,
        host: &str,
        _port: u16,
    ) -> BoxFuture<'static, std::io::Result<Vec<SocketAddr>>> {
        let found = self.0.get(host).cloned().ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{host}: not in the test table"),
            )
        });
        Box::pin(async move { found })
    }
}

/// Notifies its `Notify` when dropped: a handler holds one to tell the test that the proxy gave
/// up on its request (the request's future was dropped).
pub struct OnDrop(pub Arc<tokio::sync::Notify>);

impl Drop for OnDrop {
    fn drop(&mut self) {
        self.0.notify_one();
    }
}

/// A response read as raw bytes off the socket, for tests where the framing is the point.
#[derive(Debug)]
pub struct RawResponse {
    /// The status line and headers, as text.
    pub head: String,
    /// The body with its chunked framing removed.
    pub body: Vec<u8>,
    /// Whether the body ended as HTTP says a body ends (the last chunk, or the whole length);
    /// `false` when the connection closed before that.
    pub complete: bool,
}

/// Sends `GET path` with `Connection: close` to `addr` and reads the answer to the end of the
/// connection (at most [`MUST`]).
pub async fn raw_get(addr: SocketAddr, path: &str) -> RawResponse {
    use tokio::io::AsyncWriteExt;
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).await.expect("write");
    let mut bytes = Vec::new();
    tokio::time::timeout(MUST, async {
        // A reset is how an aborted response ends too; what came before it counts.
        let mut buf = [0u8; 16 * 1024];
        while let Ok(n @ 1..) = s.read(&mut buf).await {
            bytes.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("the response ends");
    parse_raw(&bytes)
}

/// `bytes` as a response; a connection closed before a whole head gives an empty head and no
/// body, incomplete (an aborted page may end before its buffered head was written).
pub fn parse_raw(bytes: &[u8]) -> RawResponse {
    let Some(split) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
        return RawResponse {
            head: String::new(),
            body: Vec::new(),
            complete: false,
        };
    };
    let head = String::from_utf8_lossy(&bytes[..split]).into_owned();
    let mut rest = &bytes[split + 4..];
    let lower = head.to_ascii_lowercase();
    if !lower.contains("transfer-encoding: chunked") {
        let length = lower
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .map(|n| n.trim().parse::<usize>().expect("a length"));
        let complete = length.is_none_or(|n| rest.len() == n);
        return RawResponse {
            head,
            body: rest.to_vec(),
            complete,
        };
    }
    let mut body = Vec::new();
    while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&rest[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
            .expect("a chunk size");
        rest = &rest[eol + 2..];
        if size == 0 {
            return RawResponse {
                head,
                body,
                complete: rest.starts_with(b"\r\n"),
            };
        }
        if rest.len() < size + 2 {
            body.extend_from_slice(&rest[..size.min(rest.len())]);
            break;
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
    RawResponse {
        head,
        body,
        complete: false,
    }
}
