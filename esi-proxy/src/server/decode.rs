//! A layout body as composition reads it: decoded from gzip, deflate or brotli as it streams,
//! and failed once it passes its byte cap, so a compression bomb stops at the cap.
//! Knows nothing of HTTP or ESI: a stream of byte chunks in, a stream out.

use std::io::Write as _;

use bytes::Bytes;
use futures::{Stream, StreamExt};

/// Fails the stream once more than `cap` bytes went through.
pub(super) fn capped(
    stream: impl Stream<Item = Result<Bytes, String>> + Send,
    cap: usize,
) -> impl Stream<Item = Result<Bytes, String>> + Send {
    let mut seen = 0usize;
    stream.map(move |item| {
        let bytes = item?;
        seen += bytes.len();
        if seen > cap {
            return Err(format!("layout over {cap} bytes"));
        }
        Ok(bytes)
    })
}

/// A writer that refuses to grow past its limit, so a compression bomb stops at the cap.
struct CapWriter {
    buf: Vec<u8>,
    written: usize,
    cap: usize,
}

impl std::io::Write for CapWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.written + data.len() > self.cap {
            return Err(std::io::Error::other(format!(
                "decoded layout over {} bytes",
                self.cap
            )));
        }
        self.written += data.len();
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

enum Decoder {
    Gzip(flate2::write::MultiGzDecoder<CapWriter>),
    Deflate(flate2::write::ZlibDecoder<CapWriter>),
    Brotli(Box<brotli::DecompressorWriter<CapWriter>>),
}

impl Decoder {
    fn new(encoding: &str, cap: usize) -> Self {
        let sink = CapWriter {
            buf: Vec::new(),
            written: 0,
            cap,
        };
        match encoding {
            "deflate" => Decoder::Deflate(flate2::write::ZlibDecoder::new(sink)),
            "br" => Decoder::Brotli(Box::new(brotli::DecompressorWriter::new(sink, 4096))),
            _ => Decoder::Gzip(flate2::write::MultiGzDecoder::new(sink)),
        }
    }

    fn write(&mut self, data: &[u8]) -> std::io::Result<Bytes> {
        match self {
            Decoder::Gzip(d) => d.write_all(data),
            Decoder::Deflate(d) => d.write_all(data),
            Decoder::Brotli(d) => d.write_all(data),
        }?;
        Ok(self.take())
    }

    fn finish(&mut self) -> std::io::Result<Bytes> {
        match self {
            Decoder::Gzip(d) => d.try_finish(),
            Decoder::Deflate(d) => d.try_finish(),
            Decoder::Brotli(d) => d.flush(),
        }?;
        Ok(self.take())
    }

    fn take(&mut self) -> Bytes {
        let sink = match self {
            Decoder::Gzip(d) => d.get_mut(),
            Decoder::Deflate(d) => d.get_mut(),
            Decoder::Brotli(d) => d.get_mut(),
        };
        Bytes::from(std::mem::take(&mut sink.buf))
    }
}

/// Decodes a gzip, deflate or brotli body as it streams, at most `cap` decoded bytes.
pub(super) fn decoded(
    stream: impl Stream<Item = Result<Bytes, String>> + Send + Unpin + 'static,
    encoding: &str,
    cap: usize,
) -> impl Stream<Item = Result<Bytes, String>> + Send {
    let decoder = Decoder::new(encoding, cap);
    futures::stream::unfold(Some((stream, decoder)), |state| async move {
        let (mut stream, mut decoder) = state?;
        loop {
            match stream.next().await {
                Some(Ok(chunk)) => match decoder.write(&chunk) {
                    Ok(out) if out.is_empty() => continue,
                    Ok(out) => return Some((Ok(out), Some((stream, decoder)))),
                    Err(e) => return Some((Err(e.to_string()), None)),
                },
                Some(Err(e)) => return Some((Err(e), None)),
                None => {
                    return match decoder.finish() {
                        Ok(out) if out.is_empty() => None,
                        Ok(out) => Some((Ok(out), None)),
                        Err(e) => Some((Err(format!("decoding the layout: {e}")), None)),
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoder_stops_a_bomb_at_the_cap() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&vec![0u8; 8 * 1024 * 1024])
            .expect("in memory");
        let bomb = gz.finish().expect("in memory");
        let mut d = Decoder::new("gzip", 64 * 1024);
        let mut total = 0;
        let mut failed = false;
        for chunk in bomb.chunks(1024) {
            match d.write(chunk) {
                Ok(b) => total += b.len(),
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        assert!(failed, "decoded {total} bytes without hitting the cap");
        assert!(total <= 64 * 1024);
    }
}
