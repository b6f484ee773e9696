//! HTTP/1.1 for `http` fragments, spoken by the fetching task itself on a pooled TCP stream:
//! the request written in one go, the response head and body read as they arrive. No task per
//! connection, no channel between tasks, and no read buffer held while a response is awaited,
//! so an include waiting on a slow fragment holds little more than its socket (hyper's client
//! holds some 25 KB of buffers and channel per connection, and wakes two tasks per response).

mod body;
mod chunked;
mod head;

use std::io;
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use http::{HeaderMap, Method, StatusCode};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::pool::{PlainPool, MAX_RESPONSE_HEAD_BYTES};
use super::FetchError;
pub(super) use body::StreamBody;
use head::{Framing, Parsed};

/// The pool of fragment hosts' streams.
pub(super) type StreamPool = Arc<PlainPool<TcpStream>>;

/// Room a read needs before the buffer grows: a loopback fragment and its head arrive in one.
const READ_BUF: usize = 8 * 1024;

/// Largest read buffer a body with a known length grows to at once.
const MAX_READ_BUF: usize = 64 * 1024;

/// A response whose head has been read; its body follows on the stream.
pub(super) struct Response {
    pub(super) status: StatusCode,
    pub(super) headers: HeaderMap,
    body: BodyReader,
}

/// The rest of a response: its framing, the stream, and what was read past the head.
struct BodyReader {
    stream: TcpStream,
    buf: BytesMut,
    framing: Framing,
    keep_alive: bool,
}

/// Why an exchange on one stream failed.
enum Failed {
    /// The stream ended or failed before any byte of a response: on a reused stream, the host
    /// closed it while idle and the request may go again on a new one.
    Unanswered(String),
    Fetch(FetchError),
}

/// A request as written on the wire: request line, `Host`, the header `fields` (from
/// [`encode_fields`]; never `Host`), a `Content-Length` when there is a body, and the body.
pub(super) fn encode(
    method: &Method,
    target: &str,
    host: &[u8],
    fields: &[u8],
    body: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        method.as_str().len() + target.len() + host.len() + fields.len() + body.len() + 64,
    );
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(host);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(fields);
    if *method == Method::POST || !body.is_empty() {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(body.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// `headers` as header lines (`name: value` CRLF each), in their order.
pub(super) fn encode_fields(headers: &HeaderMap) -> Vec<u8> {
    let len = headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    let mut out = Vec::with_capacity(len);
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Sends `request` (from [`encode`]) to `authority` on an idle stream or a new one, and reads
/// the response head (`head_request`: the request is a `HEAD`, whose response has no body). A
/// reused stream that ends before any byte of a response was closed by the host while idle:
/// an idempotent request goes again, once per stream, on another.
pub(super) async fn send(
    pool: &StreamPool,
    authority: &str,
    request: &[u8],
    idempotent: bool,
    head_request: bool,
    url: &str,
) -> Result<Response, FetchError> {
    loop {
        let (stream, reused) = match pool.checkout(authority) {
            Some(stream) => (stream, true),
            None => {
                let stream = pool.connect_tcp(authority).await.map_err(|e| {
                    super::client::send_error(url, &*e, true, false, std::time::Duration::ZERO)
                })?;
                (stream, false)
            }
        };
        match exchange(stream, request, head_request, url).await {
            Ok(response) => return Ok(response),
            Err(Failed::Unanswered(_)) if reused && idempotent => continue,
            Err(Failed::Unanswered(message)) => {
                return Err(FetchError::Transport {
                    url: url.to_owned(),
                    message,
                })
            }
            Err(Failed::Fetch(e)) => return Err(e),
        }
    }
}

/// Writes `request` on `stream` and reads up to the end of the final response head.
async fn exchange(
    mut stream: TcpStream,
    request: &[u8],
    head_request: bool,
    url: &str,
) -> Result<Response, Failed> {
    if let Err(e) = stream.write_all(request).await {
        return Err(Failed::Unanswered(format!("sending the request: {e}")));
    }
    let mut buf = BytesMut::new();
    let mut answered = false;
    loop {
        if !buf.is_empty() {
            answered = true;
            match head::parse(&buf, head_request) {
                Ok(Parsed::Final(head, len)) => {
                    buf.advance(len);
                    return Ok(Response {
                        status: head.status,
                        headers: head.headers,
                        body: BodyReader {
                            stream,
                            buf,
                            framing: head.framing,
                            keep_alive: head.keep_alive,
                        },
                    });
                }
                Ok(Parsed::Interim(len)) => {
                    buf.advance(len);
                    continue;
                }
                Ok(Parsed::Partial) if buf.len() > MAX_RESPONSE_HEAD_BYTES => {
                    return Err(Failed::Fetch(malformed(
                        url,
                        format!("response head over {MAX_RESPONSE_HEAD_BYTES} bytes"),
                    )))
                }
                Ok(Parsed::Partial) => {}
                Err(message) => return Err(Failed::Fetch(malformed(url, message))),
            }
        }
        let read = read(&mut stream, &mut buf).await;
        let message = match read {
            Ok(0) => "connection closed before the response head ended".to_owned(),
            Ok(_) => continue,
            Err(e) => format!("reading the response head: {e}"),
        };
        return Err(if answered {
            Failed::Fetch(FetchError::Transport {
                url: url.to_owned(),
                message,
            })
        } else {
            Failed::Unanswered(message)
        });
    }
}

impl Response {
    /// The response with its body read as it is polled (see [`StreamBody`]); the stream goes
    /// back to `pool` once the body has been read to its end.
    pub(super) fn into_streaming(
        self,
        pool: &StreamPool,
        authority: &str,
    ) -> http::Response<StreamBody> {
        let body = self
            .body
            .into_body(Some((Arc::clone(pool), authority.to_owned())));
        let mut response = http::Response::new(body);
        *response.status_mut() = self.status;
        *response.headers_mut() = self.headers;
        response
    }

    /// The body's length as its head declares it (`None`: chunked or until close).
    pub(super) fn content_length(&self) -> Option<u64> {
        match self.body.framing {
            Framing::Empty => Some(0),
            Framing::Length(n) => Some(n),
            Framing::Chunked | Framing::UntilClose => None,
        }
    }

    /// Reads the body to its end, handing its bytes to `sink` as they come; the stream goes
    /// back to `pool` when it can carry another request. An error from `sink` ends the read
    /// (and the stream) with that error.
    pub(super) async fn read_body(
        self,
        pool: &StreamPool,
        authority: &str,
        url: &str,
        sink: &mut (dyn FnMut(&[u8]) -> Result<(), FetchError> + Send),
    ) -> Result<(), FetchError> {
        let mut body = self.body.into_body(None);
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| super::client::body_error(url, &e))?;
            if let Some(data) = frame.data_ref() {
                sink(data)?;
            }
        }
        if let Some(stream) = body.into_reusable() {
            pool.put(authority, stream);
        }
        Ok(())
    }
}

impl BodyReader {
    fn into_body(self, home: Option<(StreamPool, String)>) -> StreamBody {
        StreamBody::new(self.stream, self.buf, self.framing, self.keep_alive, home)
    }
}

/// Reads what has arrived on `stream` into `buf`, waiting until something has; 0 at the end of
/// the stream. The buffer gets room only once there is something to read, so a stream waiting
/// for its response holds no buffer.
async fn read(stream: &mut TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    stream.readable().await?;
    if buf.capacity() - buf.len() < READ_BUF / 2 {
        buf.reserve(READ_BUF);
    }
    // As the body's reads: a read that leaves room marks the stream drained for tokio.
    stream.read_buf(buf).await
}

fn malformed(url: &str, message: String) -> FetchError {
    FetchError::Malformed {
        url: url.to_owned(),
        message,
    }
}
