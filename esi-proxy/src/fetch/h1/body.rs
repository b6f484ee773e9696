//! A response body read off its stream as its reader polls it: the origin's stream on to the
//! client or into the layout parser as they arrive, a fragment's are collected. Once the body
//! has been read to its end, a stream that can carry another request goes back to its pool
//! (or to the reader that will put it back); dropped before, it closes.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Frame, SizeHint};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use super::chunked::{Chunked, Step};
use super::head::Framing;
use super::{StreamPool, MAX_READ_BUF, READ_BUF};

/// A body being read; see the module.
pub(in crate::fetch) struct StreamBody {
    /// `None` once the body has ended (and its stream gone back or closed).
    reader: Option<Reader>,
    /// The pool and authority the stream goes back to at the end; `None`: it is kept in
    /// `reusable` for [`StreamBody::into_reusable`].
    home: Option<(StreamPool, String)>,
    reusable: Option<TcpStream>,
}

struct Reader {
    stream: TcpStream,
    buf: BytesMut,
    framing: Framing,
    /// Bytes of a `Content-Length` body not yet handed out.
    left: u64,
    chunked: Chunked,
    keep_alive: bool,
}

impl StreamBody {
    pub(super) fn new(
        stream: TcpStream,
        buf: BytesMut,
        framing: Framing,
        keep_alive: bool,
        home: Option<(StreamPool, String)>,
    ) -> Self {
        let left = match framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        let mut body = Self {
            reader: Some(Reader {
                stream,
                buf,
                framing,
                left,
                chunked: Chunked::default(),
                keep_alive,
            }),
            home,
            reusable: None,
        };
        if framing == Framing::Empty {
            body.end();
        }
        body
    }

    /// The stream, when the body was read to its end and the stream can carry another request;
    /// for a body made without a pool to go back to.
    pub(super) fn into_reusable(self) -> Option<TcpStream> {
        self.reusable
    }

    /// The body has been read whole: its stream goes back if it can carry another request
    /// (nothing past the body's end, a head that allowed it).
    fn end(&mut self) {
        let Some(reader) = self.reader.take() else {
            return;
        };
        if !reader.keep_alive || !reader.buf.is_empty() {
            return;
        }
        match &self.home {
            Some((pool, authority)) => pool.put(authority, reader.stream),
            None => self.reusable = Some(reader.stream),
        }
    }
}

/// What the front of the buffer gives.
enum Next {
    Data(Bytes),
    /// More bytes are needed.
    Read,
    End,
}

impl http_body::Body for StreamBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        loop {
            let Some(reader) = this.reader.as_mut() else {
                return Poll::Ready(None);
            };
            let next = match reader.framing {
                Framing::Empty => Next::End,
                Framing::Length(_) if reader.left == 0 => Next::End,
                Framing::Length(_) if reader.buf.is_empty() => Next::Read,
                Framing::Length(_) => {
                    let take = usize::try_from(reader.left)
                        .unwrap_or(usize::MAX)
                        .min(reader.buf.len());
                    reader.left -= take as u64;
                    Next::Data(reader.buf.split_to(take).freeze())
                }
                Framing::Chunked => match reader.chunked.step(&mut reader.buf) {
                    Ok(Step::Data(n)) => Next::Data(reader.buf.split_to(n).freeze()),
                    Ok(Step::More) => Next::Read,
                    Ok(Step::Done) => Next::End,
                    Err(message) => {
                        this.reader = None;
                        return Poll::Ready(Some(Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            message,
                        ))));
                    }
                },
                Framing::UntilClose if reader.buf.is_empty() => Next::Read,
                Framing::UntilClose => Next::Data(reader.buf.split().freeze()),
            };
            match next {
                Next::Data(bytes) => {
                    // A reader that knows the length stops at its last byte: the stream goes
                    // back now.
                    if matches!(reader.framing, Framing::Length(_)) && reader.left == 0 {
                        this.end();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(bytes))));
                }
                Next::End => {
                    this.end();
                    return Poll::Ready(None);
                }
                Next::Read => match ready!(poll_read(reader, cx)) {
                    Ok(0) if reader.framing == Framing::UntilClose => {
                        this.reader = None;
                        return Poll::Ready(None);
                    }
                    Ok(0) => {
                        this.reader = None;
                        return Poll::Ready(Some(Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "connection closed before the body's end",
                        ))));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        this.reader = None;
                        return Poll::Ready(Some(Err(e)));
                    }
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.reader {
            None => true,
            Some(reader) => match reader.framing {
                Framing::Empty => true,
                Framing::Length(_) => reader.left == 0,
                Framing::Chunked | Framing::UntilClose => false,
            },
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.reader {
            None => SizeHint::with_exact(0),
            Some(reader) => match reader.framing {
                Framing::Empty => SizeHint::with_exact(0),
                Framing::Length(_) => SizeHint::with_exact(reader.left),
                Framing::Chunked | Framing::UntilClose => SizeHint::default(),
            },
        }
    }
}

/// Reads what has arrived into the reader's buffer, registering for a wake-up when nothing has.
fn poll_read(reader: &mut Reader, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
    ready!(reader.stream.poll_read_ready(cx))?;
    if reader.buf.capacity() - reader.buf.len() < READ_BUF / 2 {
        // A long body of known length is read in larger pieces.
        let want = match reader.framing {
            Framing::Length(_) => usize::try_from(reader.left).unwrap_or(MAX_READ_BUF),
            _ => READ_BUF,
        };
        reader.buf.reserve(want.clamp(READ_BUF, MAX_READ_BUF));
    }
    // Through `AsyncRead`: a read that leaves room in the buffer tells tokio the socket is
    // drained, so the stream's next use (the pool's check, the next response) asks the kernel
    // nothing; `try_read_buf` would leave it marked readable until a read came back empty.
    // Nothing there after all: pending, the wake-up registered.
    let read = reader.stream.read_buf(&mut reader.buf);
    std::pin::pin!(read).poll(cx)
}
