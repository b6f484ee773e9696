//! A scripted loopback server for network faults: raw tokio TCP, one behaviour per path, and
//! healthy keep-alive paths beside them so a test can prove a fault left the proxy's pools
//! usable. Every faulty body carries a marker unique to its fault, so a test can prove no byte
//! of a failed response reached a page.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::{gzip, read_head, serve_raw, Server};

/// How long a stalled connection is held before it is dropped: far past every deadline a test
/// sets, and still bounded so a test run leaves no connection behind for long.
const HOLD: Duration = Duration::from_secs(30);

/// The body of the healthy path `/ok`.
pub const HEALTHY: &str = "HEALTHY";

/// One scripted way for a response to go wrong (or, for a few, to be odd but valid).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Reads the request, then sends nothing.
    StallBeforeStatus,
    /// Sends the status line and part of a header, then nothing.
    StallMidHeaders,
    /// Sends the head and part of a `Content-Length` body, then nothing.
    StallMidBody,
    /// Sends the head and part of the body, then resets the connection (SO_LINGER 0).
    ResetMidBody,
    /// Sends the head and part of a `Content-Length` body, then closes cleanly (FIN).
    CloseEarly,
    /// A chunked body whose second chunk size is not hex.
    MalformedChunked,
    /// A chunked body of one byte every 20 ms, never ending.
    EndlessTrickle,
    /// `100 Continue` after `100 Continue`, never a final status.
    InformationalFlood,
    /// One unasked-for `100 Continue`, then a real 200: valid.
    StrayContinue,
    /// 200 KB of headers before the body.
    HugeHeaders,
    /// A status line that is not HTTP.
    InvalidStatusLine,
    /// An HTTP/1.0 response whose body ends with the connection: valid.
    Http10CloseDelimited,
    /// A whole gzip member followed by bytes that are not gzip.
    GzipTrailingGarbage,
    /// `Content-Encoding: gzip` on a body that is plain text.
    WrongContentEncoding,
    /// A `Content-Encoding` no one can decode.
    UnknownContentEncoding,
    /// Accepts the connection and never reads the request (nor answers).
    NeverRead,
}

/// Every fault, in a fixed order.
pub const ALL: [Fault; 16] = [
    Fault::StallBeforeStatus,
    Fault::StallMidHeaders,
    Fault::StallMidBody,
    Fault::ResetMidBody,
    Fault::CloseEarly,
    Fault::MalformedChunked,
    Fault::EndlessTrickle,
    Fault::InformationalFlood,
    Fault::StrayContinue,
    Fault::HugeHeaders,
    Fault::InvalidStatusLine,
    Fault::Http10CloseDelimited,
    Fault::GzipTrailingGarbage,
    Fault::WrongContentEncoding,
    Fault::UnknownContentEncoding,
    Fault::NeverRead,
];

/// The fault server: `/ok` answers [`HEALTHY`] with keep-alive; `/healthy` is an ESI layout
/// including `/ok`; `/layout/<fault>` is a healthy ESI layout including `/frag/<fault>` three
/// ways (with `alt`, with `onerror="continue"`, inside `esi:try`); `/frag/<fault>` and
/// `/page/<fault>` misbehave as the fault says, marked as ESI HTML (so `/page/...` is a layout).
pub struct FaultServer {
    server: Server,
    /// How many faulty responses ended with the proxy closing the connection while the fault
    /// held it (stalled, trickling, flooding): proof that a fetch given up on lets go of its
    /// socket.
    closed: Arc<watch::Sender<usize>>,
}

// === impl Fault ===

impl Fault {
    /// The path segment naming the fault.
    pub fn name(self) -> &'static str {
        match self {
            Fault::StallBeforeStatus => "stall-before-status",
            Fault::StallMidHeaders => "stall-mid-headers",
            Fault::StallMidBody => "stall-mid-body",
            Fault::ResetMidBody => "reset-mid-body",
            Fault::CloseEarly => "close-early",
            Fault::MalformedChunked => "malformed-chunked",
            Fault::EndlessTrickle => "endless-trickle",
            Fault::InformationalFlood => "informational-flood",
            Fault::StrayContinue => "stray-continue",
            Fault::HugeHeaders => "huge-headers",
            Fault::InvalidStatusLine => "invalid-status-line",
            Fault::Http10CloseDelimited => "http10-close-delimited",
            Fault::GzipTrailingGarbage => "gzip-trailing-garbage",
            Fault::WrongContentEncoding => "wrong-content-encoding",
            Fault::UnknownContentEncoding => "unknown-content-encoding",
            Fault::NeverRead => "never-read",
        }
    }

    /// The marker in this fault's body, found nowhere else.
    pub fn marker(self) -> String {
        format!("MARKER-{}", self.name())
    }

    /// The whole body a valid fault delivers; the marker, then filler.
    pub fn body(self) -> String {
        format!("{}:{}", self.marker(), "x".repeat(64))
    }

    /// Whether the fault holds the connection open (stalled, trickling, flooding, or after a
    /// response that cannot be read) until the proxy closes it, which
    /// [`FaultServer::closed_by_proxy`] then counts.
    pub fn holds(self) -> bool {
        matches!(
            self,
            Fault::StallBeforeStatus
                | Fault::StallMidHeaders
                | Fault::StallMidBody
                | Fault::MalformedChunked
                | Fault::EndlessTrickle
                | Fault::InformationalFlood
                | Fault::HugeHeaders
                | Fault::InvalidStatusLine
        )
    }

    fn by_name(name: &str) -> Option<Fault> {
        ALL.into_iter().find(|f| f.name() == name)
    }
}

/// Starts the fault server on 127.0.0.1:0.
pub async fn fault_server() -> FaultServer {
    let closed = Arc::new(watch::Sender::new(0));
    let counter = Arc::clone(&closed);
    let server = serve_raw(move |stream| {
        let closed = Arc::clone(&counter);
        async move {
            let _ = connection(stream, &closed).await;
        }
    })
    .await;
    FaultServer { server, closed }
}

// === impl FaultServer ===

impl FaultServer {
    /// `http://127.0.0.1:port`.
    pub fn base(&self) -> String {
        self.server.base()
    }

    /// Connections accepted so far (see [`Server::connections`]).
    pub async fn connections(&self) -> usize {
        self.server.connections().await
    }

    /// Waits until the proxy has closed `n` connections a fault held; `false` if it has not
    /// within `within`.
    pub async fn closed_by_proxy(&self, n: usize, within: Duration) -> bool {
        let mut closed = self.closed.subscribe();
        let seen = tokio::time::timeout(within, closed.wait_for(|seen| *seen >= n)).await;
        seen.is_ok()
    }
}

/// The ESI layout that includes `/frag/<name>` three ways, between literal text.
pub fn layout_for(name: &str) -> String {
    format!(
        "<p>start</p>[<esi:include src=\"/frag/{name}?n=1\" alt=\"/ok?alt=1\"/>]\
         [<esi:include src=\"/frag/{name}?n=2\" onerror=\"continue\"/>]\
         [<esi:try><esi:attempt><esi:include src=\"/frag/{name}?n=3\"/></esi:attempt>\
         <esi:except>EXCEPT</esi:except></esi:try>]<p>end</p>"
    )
}

/// Serves one connection: requests one after another while they are healthy ones.
async fn connection(mut stream: TcpStream, closed: &watch::Sender<usize>) -> std::io::Result<()> {
    loop {
        // The path is peeked so that a never-read fault can leave the request unread.
        let path = peek_path(&stream).await?;
        let fault = path
            .strip_prefix("/frag/")
            .or_else(|| path.strip_prefix("/page/"))
            .and_then(|rest| Fault::by_name(rest.split('?').next().unwrap_or_default()));
        if fault == Some(Fault::NeverRead) {
            // Whether the proxy lets go cannot be seen without reading: a FIN waits behind
            // the unread request.
            tokio::time::sleep(HOLD).await;
            return Ok(());
        }
        if read_head(&mut stream).await.is_none() {
            return Ok(());
        }
        let path_only = path.split('?').next().unwrap_or_default();
        if let Some(fault) = fault {
            // A fault whose framing is valid leaves the connection usable, as a real server
            // would: should the proxy reuse it, the next request is answered.
            match misbehave(&mut stream, fault).await {
                Ok(true) => continue,
                Ok(false) => return Ok(()),
                Err(e) => {
                    closed.send_modify(|n| *n += 1);
                    return Err(e);
                }
            }
        }
        let body = if path_only == "/ok" {
            ok(&mut stream, "text/plain", HEALTHY, false).await?;
            continue;
        } else if path_only == "/healthy" {
            "<p>h</p><esi:include src=\"/ok\"/><p>/h</p>".to_owned()
        } else if let Some(name) = path_only.strip_prefix("/layout/") {
            layout_for(name)
        } else {
            stream
                .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                .await?;
            continue;
        };
        ok(&mut stream, "text/html", &body, true).await?;
    }
}

/// Writes a keep-alive 200 with `body` (marked as ESI when `esi`).
async fn ok(
    stream: &mut TcpStream,
    content_type: &str,
    body: &str,
    esi: bool,
) -> std::io::Result<()> {
    let mark = if esi {
        "surrogate-control: content=\"ESI/1.0\"\r\n"
    } else {
        ""
    };
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\n{mark}content-length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await
}

/// The request target of the request waiting on `stream`, without reading it.
async fn peek_path(stream: &TcpStream) -> std::io::Result<String> {
    let mut buf = vec![0u8; 4096];
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let seen = &buf[..n];
        if let Some(eol) = seen.windows(2).position(|w| w == b"\r\n") {
            let line = String::from_utf8_lossy(&seen[..eol]);
            return Ok(line.split(' ').nth(1).unwrap_or("/").to_owned());
        }
        if n == buf.len() {
            return Err(std::io::ErrorKind::InvalidData.into());
        }
        // Only part of the request line is in: wait for more.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Holds the connection for [`HOLD`], or fails once the proxy closes it.
async fn hold(s: &mut TcpStream) -> std::io::Result<()> {
    let mut sink = [0u8; 1024];
    let closing = async { while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {} };
    tokio::select! {
        () = tokio::time::sleep(HOLD) => Ok(()),
        () = closing => Err(std::io::ErrorKind::ConnectionAborted.into()),
    }
}

/// Sends `fault`'s response; whether the connection may serve another request after it.
async fn misbehave(s: &mut TcpStream, fault: Fault) -> std::io::Result<bool> {
    const HTML: &str = "content-type: text/html\r\nsurrogate-control: content=\"ESI/1.0\"\r\n";
    let marker = fault.marker();
    let body = fault.body();
    match fault {
        Fault::StallBeforeStatus | Fault::NeverRead => hold(s).await?,
        Fault::StallMidHeaders => {
            let head = format!("HTTP/1.1 200 OK\r\n{HTML}x-marker: {marker}");
            s.write_all(head.as_bytes()).await?;
            hold(s).await?;
        }
        Fault::StallMidBody | Fault::ResetMidBody | Fault::CloseEarly => {
            let head = format!("HTTP/1.1 200 OK\r\n{HTML}content-length: 1000\r\n\r\n");
            s.write_all(head.as_bytes()).await?;
            s.write_all(body.as_bytes()).await?;
            s.flush().await?;
            match fault {
                Fault::StallMidBody => hold(s).await?,
                Fault::ResetMidBody => {
                    // Give the part sent a moment to be read, so the reset comes mid-body; the
                    // caller drops the socket, which with SO_LINGER 0 sends RST.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    // Deprecated because a non-zero linger blocks the thread on drop; zero never
                    // waits, it resets.
                    #[allow(deprecated)]
                    s.set_linger(Some(Duration::ZERO))?;
                }
                _ => s.shutdown().await?,
            }
        }
        Fault::MalformedChunked => {
            let head = format!("HTTP/1.1 200 OK\r\n{HTML}transfer-encoding: chunked\r\n\r\n");
            let chunks = format!("{:x}\r\n{body}\r\nZZ\r\n{body}\r\n0\r\n\r\n", body.len());
            s.write_all(head.as_bytes()).await?;
            s.write_all(chunks.as_bytes()).await?;
            hold(s).await?;
        }
        Fault::EndlessTrickle => {
            let head = format!("HTTP/1.1 200 OK\r\n{HTML}transfer-encoding: chunked\r\n\r\n");
            s.write_all(head.as_bytes()).await?;
            let started = tokio::time::Instant::now();
            for byte in body.bytes().cycle() {
                if started.elapsed() > HOLD {
                    break;
                }
                s.write_all(format!("1\r\n{}\r\n", byte as char).as_bytes())
                    .await?;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Fault::InformationalFlood => {
            let started = tokio::time::Instant::now();
            while started.elapsed() < HOLD {
                let info = format!("HTTP/1.1 100 Continue\r\nx-marker: {marker}\r\n\r\n");
                s.write_all(info.as_bytes()).await?;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        Fault::StrayContinue => {
            s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
            s.flush().await?;
            tokio::time::sleep(Duration::from_millis(20)).await;
            let head = format!(
                "HTTP/1.1 200 OK\r\n{HTML}content-length: {}\r\n\r\n{body}",
                body.len()
            );
            s.write_all(head.as_bytes()).await?;
            return Ok(true);
        }
        Fault::HugeHeaders => {
            let mut head = format!("HTTP/1.1 200 OK\r\n{HTML}");
            let filler = "h".repeat(4000);
            for i in 0..50 {
                head.push_str(&format!("x-filler-{i}: {filler}\r\n"));
            }
            head.push_str(&format!("content-length: {}\r\n\r\n{body}", body.len()));
            s.write_all(head.as_bytes()).await?;
            hold(s).await?;
        }
        Fault::InvalidStatusLine => {
            let head = format!(
                "HTTP/1.1 2OO OK\r\n{HTML}content-length: {}\r\n\r\n{body}",
                body.len()
            );
            s.write_all(head.as_bytes()).await?;
            hold(s).await?;
        }
        Fault::Http10CloseDelimited => {
            let head = format!("HTTP/1.0 200 OK\r\n{HTML}\r\n");
            s.write_all(head.as_bytes()).await?;
            // The body in parts, so its end is known only when the connection closes.
            let (first, rest) = body.split_at(body.len() / 2);
            s.write_all(first.as_bytes()).await?;
            s.flush().await?;
            tokio::time::sleep(Duration::from_millis(20)).await;
            s.write_all(rest.as_bytes()).await?;
            s.shutdown().await?;
        }
        Fault::GzipTrailingGarbage => {
            let mut encoded = gzip(body.as_bytes());
            encoded.extend_from_slice(b"\r\nGARBAGE AFTER THE GZIP MEMBER\r\n");
            let head = format!(
                "HTTP/1.1 200 OK\r\n{HTML}content-encoding: gzip\r\ncontent-length: {}\r\n\r\n",
                encoded.len()
            );
            s.write_all(head.as_bytes()).await?;
            s.write_all(&encoded).await?;
            return Ok(true);
        }
        Fault::WrongContentEncoding | Fault::UnknownContentEncoding => {
            let coding = if fault == Fault::WrongContentEncoding {
                "gzip"
            } else {
                "x-unheard-of"
            };
            let head = format!(
                "HTTP/1.1 200 OK\r\n{HTML}content-encoding: {coding}\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            s.write_all(head.as_bytes()).await?;
            return Ok(true);
        }
    }
    Ok(false)
}
