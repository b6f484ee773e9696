//! Helpers shared by the end-to-end tests: the `esi-proxy` binary, built once per run.

pub mod harness;

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The path of the `esi-proxy` binary of this build profile, building it if it is missing.
pub fn bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("test binary path");
        // target/<profile>/deps/tests-<hash> -> target/<profile>
        let profile_dir = exe
            .parent()
            .and_then(|d| d.parent())
            .expect("target/<profile>")
            .to_path_buf();
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build.args(["build", "-p", "esi-proxy", "--bin", "esi-proxy"]);
        if release {
            build.arg("--release");
        }
        let status = build.status().expect("cargo runs");
        assert!(status.success(), "building esi-proxy failed");
        profile_dir.join(format!("esi-proxy{}", std::env::consts::EXE_SUFFIX))
    })
    .clone()
}

// === loopback HTTP servers ===
//
// `serve` runs a hyper server on 127.0.0.1:0 and `serve_raw` hands each connection's socket to
// a handler that writes bytes by hand (for broken responses hyper would never send). Both
// record every connection, so a test can prove a client never connected (`connections`).

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// A test server's response body: whole, or streamed (and possibly failing part way).
pub type Body = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// What a test server received: one request's head.
#[derive(Debug, Clone)]
pub struct Received {
    /// The method.
    pub method: http::Method,
    /// Path and query as sent.
    pub uri: http::Uri,
    /// Every header, repeated ones included.
    pub headers: http::HeaderMap,
}

/// A loopback server that counts what reaches it; stops when dropped.
pub struct Server {
    /// The bound address.
    pub addr: SocketAddr,
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

/// A response with `status`, `headers` and `body`.
pub fn response(status: u16, headers: &[(&str, &str)], body: Body) -> Response<Body> {
    let mut builder = Response::builder().status(status);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(body).expect("test responses are well-formed")
}

/// Serves HTTP/1.1 on 127.0.0.1:0 with `handler`; returns once the listener is bound.
pub async fn serve<F, Fut>(handler: F) -> Server
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let handler = Arc::new(handler);
    start(move |stream: TcpStream, log: Arc<Log>| {
        let handler = Arc::clone(&handler);
        async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                log.requests.lock().expect("not poisoned").push(Received {
                    method: req.method().clone(),
                    uri: req.uri().clone(),
                    headers: req.headers().clone(),
                });
                let reply = handler(req);
                async move { Ok::<_, Infallible>(reply.await) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            // Errors here are the client going away, which some tests do on purpose.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
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
    start(move |stream, _log| handler(stream)).await
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

async fn start<F, Fut>(on_connection: F) -> Server
where
    F: Fn(TcpStream, Arc<Log>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
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
    Server { addr, log, task }
}

// === impl Server ===

impl Server {
    /// `http://127.0.0.1:port{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `http://127.0.0.1:port`, for config.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Requests received so far (not recorded by `serve_raw` servers).
    pub fn received(&self) -> Vec<Received> {
        self.log.requests.lock().expect("not poisoned").clone()
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

/// `data` gzip-compressed.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
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

/// The lines a child process writes to `pipe`, read on a thread of their own so a test can
/// wait on them (never on sleeps).
pub fn lines(
    pipe: impl std::io::Read + Send + 'static,
) -> tokio::sync::mpsc::UnboundedReceiver<String> {
    use std::io::BufRead;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits (up to 20 s) for the first line from which `find` takes a value; `what` names it in
/// the failure message.
pub async fn wait_for_line<T>(
    lines: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    what: &str,
    find: impl Fn(&str) -> Option<T>,
) -> T {
    let wait = async {
        while let Some(line) = lines.recv().await {
            if let Some(found) = find(&line) {
                return found;
            }
        }
        panic!("the process ended before printing {what}");
    };
    tokio::time::timeout(std::time::Duration::from_secs(20), wait)
        .await
        .unwrap_or_else(|_| panic!("no {what} within 20 s"))
}
