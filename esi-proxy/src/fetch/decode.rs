//! Streaming decoders for `Content-Encoding` (gzip members, deflate, brotli) into a capped
//! buffer, so a compression bomb stops at the limit and a stream cut short is told from a
//! corrupt one; the one decoder for fragments and layouts alike.

use std::io::Write as _;
use std::pin::Pin;

use bytes::Bytes;
use futures::{Stream, StreamExt as _};

use super::FetchError;

/// A body in a `Content-Encoding` the proxy undoes: `gzip` (or `x-gzip`), `deflate` (zlib, as
/// RFC 9110 defines it) or `br`.
pub(crate) enum Decoder {
    Gzip(Box<GzipDecoder>),
    Deflate(Box<ZlibDecoder>),
    Brotli(Box<brotli::DecompressorWriter<CappedSink>>),
}

/// A streaming zlib decoder that knows whether its stream reached its end.
pub(crate) struct ZlibDecoder {
    inflate: flate2::Decompress,
    crc: flate2::Crc,
    ended: bool,
}

/// A decoded body as it streams: chunks of bytes, or why it failed.
pub(crate) type BodyStream = Pin<Box<dyn Stream<Item = Result<Bytes, FetchError>> + Send>>;

/// A streaming gzip decoder (RFC 1952, any number of members one after another) that tells a
/// stream cut short from a corrupt one, which flate2's own decoders report alike.
pub(crate) struct GzipDecoder {
    state: GzipState,
    /// The bytes of the member header read so far.
    header: Vec<u8>,
    inflate: flate2::Decompress,
    crc: flate2::Crc,
    /// The bytes of the member trailer (CRC-32, ISIZE) read so far.
    trailer: Vec<u8>,
}

/// Where a [`GzipDecoder`] is in the current member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum GzipState {
    Header,
    Deflate,
    Trailer,
}

/// Decoded bytes, refusing to grow past the limit so a compression bomb stops there. The
/// caller moves `buf` out after each write; `written` counts every byte taken.
pub(crate) struct CappedSink {
    buf: Vec<u8>,
    written: usize,
    limit: usize,
    over: bool,
}

/// Why an encoded body could not be decoded.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum DecodeError {
    /// The decoded body is over the limit.
    TooLarge,
    /// The encoded stream ended before it was complete.
    Cut(String),
    /// The bytes are not valid in the encoding.
    Corrupt(String),
}

/// `stream`, the body of `url`, decoded from `encoding` (lowercase; empty or `identity` for
/// none) as it arrives, failing once more than `cap` decoded bytes went through or when the
/// encoded stream ends before it is complete. `None` for an encoding the proxy cannot undo.
pub(crate) fn decode_stream(
    stream: impl Stream<Item = Result<Bytes, FetchError>> + Send + Unpin + 'static,
    encoding: &str,
    cap: usize,
    url: &str,
) -> Option<BodyStream> {
    let url = url.to_owned();
    if matches!(encoding, "" | "identity") {
        let mut seen = 0usize;
        return Some(Box::pin(stream.map(move |item| {
            let bytes = item?;
            seen = seen.saturating_add(bytes.len());
            if seen > cap {
                return Err(DecodeError::TooLarge.into_fetch_error(&url, cap));
            }
            Ok(bytes)
        })));
    }
    let decoder = Decoder::for_encoding(encoding, cap)?;
    // `push` bounds what one call adds to `out`; the stream hands each call's bytes on, so the
    // bound left is the cap less what went before.
    let start = (stream, decoder, 0usize, url);
    let steps = futures::stream::unfold(Some(start), move |state| async move {
        let (mut stream, mut decoder, mut emitted, url) = state?;
        let mut out = Vec::new();
        loop {
            let left = cap - emitted;
            let step = match stream.next().await {
                Some(Ok(chunk)) => decoder.push(&chunk, &mut out, left),
                Some(Err(e)) => return Some((Err(e), None)),
                None => {
                    return match decoder.finish(&mut out) {
                        Ok(()) if out.is_empty() => None,
                        Ok(()) => Some((Ok(Bytes::from(out)), None)),
                        Err(e) => Some((Err(e.into_fetch_error(&url, cap)), None)),
                    };
                }
            };
            match step {
                Ok(()) if out.is_empty() => {}
                Ok(()) => {
                    emitted += out.len();
                    let next = Some((stream, decoder, emitted, url));
                    return Some((Ok(Bytes::from(out)), next));
                }
                Err(e) => return Some((Err(e.into_fetch_error(&url, cap)), None)),
            }
        }
    });
    Some(Box::pin(steps))
}

// === impl Decoder ===

impl Decoder {
    /// The decoder of a `Content-Encoding` value (lowercase), decoding at most `limit` bytes;
    /// `None` for one the proxy cannot undo.
    pub(crate) fn for_encoding(encoding: &str, limit: usize) -> Option<Decoder> {
        match encoding {
            "gzip" | "x-gzip" => Some(Decoder::Gzip(Box::default())),
            "deflate" => Some(Decoder::Deflate(Box::new(ZlibDecoder {
                inflate: flate2::Decompress::new(true),
                crc: flate2::Crc::new(),
                ended: false,
            }))),
            "br" => Some(Decoder::Brotli(Box::new(brotli::DecompressorWriter::new(
                CappedSink::new(limit),
                8 * 1024,
            )))),
            _ => None,
        }
    }

    /// Decodes `input` onto `out`, which may not grow past `limit`.
    pub(super) fn push(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        limit: usize,
    ) -> Result<(), DecodeError> {
        match self {
            Decoder::Gzip(gzip) => gzip.push(input, out, limit),
            Decoder::Deflate(zlib) => zlib.push(input, out, limit),
            Decoder::Brotli(brotli) => {
                // Bytes after the end of the stream are ignored.
                let written = brotli.write(input);
                let sink = brotli.get_mut();
                if sink.over {
                    return Err(DecodeError::TooLarge);
                }
                written.map_err(|e| DecodeError::Corrupt(format!("invalid brotli data: {e}")))?;
                out.append(&mut sink.buf);
                Ok(())
            }
        }
    }

    /// Checks that the stream ended where the body did.
    pub(super) fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), DecodeError> {
        match self {
            Decoder::Gzip(gzip) => gzip.finish(),
            Decoder::Deflate(zlib) if zlib.ended => Ok(()),
            Decoder::Deflate(_) => Err(DecodeError::Cut("deflate stream ended early".into())),
            Decoder::Brotli(brotli) => {
                let closed = brotli.close();
                let sink = brotli.get_mut();
                if sink.over {
                    return Err(DecodeError::TooLarge);
                }
                closed.map_err(|_| DecodeError::Cut("brotli stream ended early".into()))?;
                out.append(&mut sink.buf);
                Ok(())
            }
        }
    }
}

// === impl DecodeError ===

impl DecodeError {
    /// The failed fetch of `url`, its body decoded under `limit` bytes: over the limit, cut
    /// short, or undecodable.
    pub(crate) fn into_fetch_error(self, url: &str, limit: usize) -> FetchError {
        let url = url.to_owned();
        match self {
            DecodeError::TooLarge => FetchError::TooLarge { url, limit },
            DecodeError::Cut(message) => FetchError::Truncated { url, message },
            DecodeError::Corrupt(message) => FetchError::Decode { url, message },
        }
    }
}

// === impl GzipDecoder ===

impl Default for GzipDecoder {
    fn default() -> Self {
        Self {
            state: GzipState::Header,
            header: Vec::new(),
            inflate: flate2::Decompress::new(false),
            crc: flate2::Crc::new(),
            trailer: Vec::with_capacity(8),
        }
    }
}

impl GzipDecoder {
    /// Longest member header kept while it is incomplete (a name or comment with no end).
    const MAX_HEADER_BYTES: usize = 64 * 1024;

    pub(super) fn push(
        &mut self,
        mut input: &[u8],
        out: &mut Vec<u8>,
        limit: usize,
    ) -> Result<(), DecodeError> {
        while !input.is_empty() {
            match self.state {
                GzipState::Header => {
                    let before = self.header.len();
                    self.header.extend_from_slice(input);
                    let Some(len) = gzip_header_len(&self.header)? else {
                        if self.header.len() > Self::MAX_HEADER_BYTES {
                            return Err(DecodeError::Corrupt("gzip header too long".into()));
                        }
                        return Ok(());
                    };
                    input = input.get(len.saturating_sub(before)..).unwrap_or_default();
                    self.header.clear();
                    self.inflate.reset(false);
                    self.crc.reset();
                    self.state = GzipState::Deflate;
                }
                GzipState::Deflate => {
                    let (used, done) =
                        inflate(&mut self.inflate, &mut self.crc, input, out, limit)?;
                    input = input.get(used..).unwrap_or_default();
                    if done {
                        self.state = GzipState::Trailer;
                    } else if used == 0 {
                        // No progress on the input left: it is all held by the inflater.
                        return Ok(());
                    }
                }
                GzipState::Trailer => {
                    let take = (8 - self.trailer.len()).min(input.len());
                    let (part, rest) = input.split_at(take);
                    self.trailer.extend_from_slice(part);
                    input = rest;
                    if self.trailer.len() == 8 {
                        let word = |at: usize| {
                            self.trailer
                                .get(at..at + 4)
                                .and_then(|b| b.try_into().ok())
                                .map_or(0, u32::from_le_bytes)
                        };
                        if word(0) != self.crc.sum() {
                            return Err(DecodeError::Corrupt("gzip CRC mismatch".into()));
                        }
                        if word(4) != self.crc.amount() {
                            return Err(DecodeError::Corrupt("gzip length mismatch".into()));
                        }
                        self.trailer.clear();
                        self.state = GzipState::Header;
                    }
                }
            }
        }
        Ok(())
    }

    pub(super) fn finish(&self) -> Result<(), DecodeError> {
        if self.state == GzipState::Header && self.header.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Cut("gzip stream ended early".into()))
        }
    }
}

// === impl ZlibDecoder ===

impl ZlibDecoder {
    fn push(&mut self, input: &[u8], out: &mut Vec<u8>, limit: usize) -> Result<(), DecodeError> {
        // Bytes after the end of the stream are ignored, as brotli's are.
        if !self.ended {
            let (_, ended) = inflate(&mut self.inflate, &mut self.crc, input, out, limit)?;
            self.ended = ended;
        }
        Ok(())
    }
}

/// Inflates from `input` until it is used up or the deflate stream ends, adding what it
/// produces to `crc`: the bytes used and whether the stream ended.
fn inflate(
    decompress: &mut flate2::Decompress,
    crc: &mut flate2::Crc,
    input: &[u8],
    out: &mut Vec<u8>,
    limit: usize,
) -> Result<(usize, bool), DecodeError> {
    let mut used = 0usize;
    loop {
        if out.capacity() - out.len() < 4096 {
            out.reserve(16 * 1024);
        }
        let (in_before, out_before) = (decompress.total_in(), out.len());
        let status = decompress
            .decompress_vec(
                input.get(used..).unwrap_or_default(),
                out,
                flate2::FlushDecompress::None,
            )
            .map_err(|e| DecodeError::Corrupt(format!("invalid deflate data: {e}")))?;
        let consumed = usize::try_from(decompress.total_in() - in_before).unwrap_or(usize::MAX);
        used = used.saturating_add(consumed).min(input.len());
        let produced = out.get(out_before..).unwrap_or_default();
        crc.update(produced);
        let produced = produced.len();
        if out.len() > limit {
            return Err(DecodeError::TooLarge);
        }
        if status == flate2::Status::StreamEnd {
            return Ok((used, true));
        }
        let output_full = out.len() == out.capacity();
        if (consumed == 0 && produced == 0) || (used == input.len() && !output_full) {
            return Ok((used, false));
        }
    }
}

/// The length of the gzip member header at the start of `buf`, `None` while it is incomplete.
fn gzip_header_len(buf: &[u8]) -> Result<Option<usize>, DecodeError> {
    const FHCRC: u8 = 0x02;
    const FEXTRA: u8 = 0x04;
    const FNAME: u8 = 0x08;
    const FCOMMENT: u8 = 0x10;
    let corrupt = |what: &str| Err(DecodeError::Corrupt(format!("invalid gzip header: {what}")));
    let byte = |at: usize| buf.get(at).copied();
    if byte(0).is_some_and(|b| b != 0x1f) || byte(1).is_some_and(|b| b != 0x8b) {
        return corrupt("not gzip");
    }
    if byte(2).is_some_and(|b| b != 8) {
        return corrupt("not deflate");
    }
    let Some(flags) = byte(3) else {
        return Ok(None);
    };
    if flags & 0xe0 != 0 {
        return corrupt("reserved flags");
    }
    let mut end = 10;
    if flags & FEXTRA != 0 {
        let (Some(lo), Some(hi)) = (byte(end), byte(end + 1)) else {
            return Ok(None);
        };
        end += 2 + usize::from(u16::from_le_bytes([lo, hi]));
    }
    for flag in [FNAME, FCOMMENT] {
        if flags & flag != 0 {
            let Some(zero) = buf.get(end..).and_then(|rest| memchr::memchr(0, rest)) else {
                return Ok(None);
            };
            end += zero + 1;
        }
    }
    if flags & FHCRC != 0 {
        end += 2;
    }
    Ok((buf.len() >= end).then_some(end))
}

// === impl CappedSink ===

impl CappedSink {
    pub(super) fn new(limit: usize) -> Self {
        Self {
            buf: Vec::new(),
            written: 0,
            limit,
            over: false,
        }
    }
}

impl std::io::Write for CappedSink {
    /// Takes all of `data`, or fails if that would make the total over the limit.
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.written.saturating_add(data.len()) > self.limit {
            self.over = true;
            return Err(std::io::Error::other("decoded body over the limit"));
        }
        self.written += data.len();
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(data).expect("writing to a Vec");
        encoder.finish().expect("writing to a Vec")
    }

    fn brotli(data: &[u8]) -> Vec<u8> {
        let mut encoder = brotli::CompressorWriter::new(Vec::new(), 4096, 5, 22);
        encoder.write_all(data).expect("writing to a Vec");
        encoder.into_inner()
    }

    /// Decodes `input` fed in pieces of `piece` bytes, as a body arriving in chunks would be.
    fn decode(
        mut decoder: Decoder,
        input: &[u8],
        piece: usize,
        limit: usize,
    ) -> Result<Vec<u8>, DecodeError> {
        let mut out = Vec::new();
        for chunk in input.chunks(piece) {
            decoder.push(chunk, &mut out, limit)?;
        }
        decoder.finish(&mut out)?;
        Ok(out)
    }

    /// (what, input, limit, the body or the kind of error)
    type DecodeCase<'a> = (&'a str, Vec<u8>, usize, Result<&'a [u8], &'a str>);

    /// What a decode came to: the body, or the kind of error.
    fn outcome(result: Result<Vec<u8>, DecodeError>) -> Result<Vec<u8>, &'static str> {
        result.map_err(|e| match e {
            DecodeError::TooLarge => "too large",
            DecodeError::Cut(_) => "cut",
            DecodeError::Corrupt(_) => "corrupt",
        })
    }

    #[test]
    fn gzip_decoding() {
        let text = b"<p>hello, compressed world</p>".repeat(200);
        let member = gzip(&text);
        let n = member.len();
        let with = |edit: &dyn Fn(&mut Vec<u8>)| {
            let mut bytes = member.clone();
            edit(&mut bytes);
            bytes
        };
        // Header with a name, a comment and an extra field; and with a header CRC.
        let mut named = flate2::GzBuilder::new()
            .filename("f.html")
            .comment("made by a test")
            .extra(vec![1, 2, 3, 4])
            .write(Vec::new(), flate2::Compression::fast());
        named.write_all(&text).expect("writing to a Vec");
        let named = named.finish().expect("writing to a Vec");
        let header_crc = with(&|b| {
            b[3] |= 0x02;
            b.splice(10..10, [0xab, 0xcd]);
        });
        let two = [member.clone(), member.clone()].concat();
        let twice = text.repeat(2);
        let limit = text.len();
        let cases: Vec<DecodeCase> = vec![
            ("one member", member.clone(), limit, Ok(&text)),
            ("named header", named, limit, Ok(&text)),
            ("header CRC", header_crc, limit, Ok(&text)),
            ("two members", two.clone(), 2 * limit, Ok(&twice)),
            ("empty member", gzip(b""), limit, Ok(b"")),
            ("no input", Vec::new(), limit, Ok(b"")),
            (
                "over the limit",
                member.clone(),
                limit - 1,
                Err("too large"),
            ),
            ("second member over", two, limit + 1, Err("too large")),
            ("cut in the header", member[..5].to_vec(), limit, Err("cut")),
            (
                "cut in the data",
                member[..n / 2].to_vec(),
                limit,
                Err("cut"),
            ),
            (
                "cut in the trailer",
                member[..n - 3].to_vec(),
                limit,
                Err("cut"),
            ),
            (
                "CRC mismatch",
                with(&|b| b[n - 8] ^= 1),
                limit,
                Err("corrupt"),
            ),
            (
                "length mismatch",
                with(&|b| b[n - 4] ^= 1),
                limit,
                Err("corrupt"),
            ),
            ("not gzip", b"<p>plain</p>".to_vec(), limit, Err("corrupt")),
            ("not deflate", with(&|b| b[2] = 7), limit, Err("corrupt")),
            (
                "reserved flag",
                with(&|b| b[3] |= 0x80),
                limit,
                Err("corrupt"),
            ),
            (
                "garbage after",
                [member.clone(), b"junk".to_vec()].concat(),
                limit,
                Err("corrupt"),
            ),
        ];
        for (what, input, limit, want) in cases {
            for piece in [usize::MAX, 1, 7, 4096] {
                let got = outcome(decode(
                    Decoder::Gzip(Box::default()),
                    &input,
                    piece.min(input.len().max(1)),
                    limit,
                ));
                assert_eq!(got, want.map(<[u8]>::to_vec), "{what}, pieces of {piece}");
            }
        }
    }

    #[test]
    fn brotli_decoding() {
        let text = b"<p>hello, compressed world</p>".repeat(200);
        let encoded = brotli(&text);
        let n = encoded.len();
        let limit = text.len();
        let cases: Vec<DecodeCase> = vec![
            ("whole", encoded.clone(), limit, Ok(&text)),
            (
                "over the limit",
                encoded.clone(),
                limit - 1,
                Err("too large"),
            ),
            ("cut", encoded[..n / 2].to_vec(), limit, Err("cut")),
            (
                "bytes after the end are ignored",
                [encoded.clone(), b"junk".to_vec()].concat(),
                limit,
                Ok(&text),
            ),
            ("not brotli", vec![0xff; 64], limit, Err("corrupt")),
        ];
        for (what, input, limit, want) in cases {
            for piece in [usize::MAX, 1, 7] {
                let decoder = Decoder::Brotli(Box::new(brotli::DecompressorWriter::new(
                    CappedSink::new(limit),
                    8 * 1024,
                )));
                let got = outcome(decode(decoder, &input, piece.min(input.len()), limit));
                assert_eq!(got, want.map(<[u8]>::to_vec), "{what}, pieces of {piece}");
            }
        }
    }

    fn zlib(data: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(data).expect("writing to a Vec");
        encoder.finish().expect("writing to a Vec")
    }

    /// What `decode_stream` makes of `input` sent in 7-byte chunks: the body, or the error.
    async fn stream(encoding: &str, input: &[u8], cap: usize) -> Result<Vec<u8>, String> {
        let chunks: Vec<Result<Bytes, FetchError>> = input
            .chunks(7)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let body = decode_stream(
            futures::stream::iter(chunks),
            encoding,
            cap,
            "http://a.test/",
        )
        .ok_or_else(|| "unsupported".to_owned())?;
        body.collect::<Vec<_>>()
            .await
            .into_iter()
            .try_fold(Vec::new(), |mut all, chunk| {
                all.extend_from_slice(&chunk.map_err(|e| e.to_string())?);
                Ok(all)
            })
    }

    #[tokio::test]
    async fn streams_decode_whole_and_fail_when_cut_short_or_over_the_cap() {
        let page = b"<html>a layout that streams</html>".repeat(50);
        let whole: [(&str, Vec<u8>); 5] = [
            ("", page.clone()),
            ("identity", page.clone()),
            ("gzip", gzip(&page)),
            ("deflate", zlib(&page)),
            ("br", brotli(&page)),
        ];
        for (encoding, encoded) in &whole {
            let got = stream(encoding, encoded, page.len()).await;
            assert!(
                got.as_ref() == Ok(&page),
                "{encoding}: {:?}",
                got.map(|b| b.len())
            );
            let over = stream(encoding, encoded, page.len() - 1).await;
            assert!(
                over.as_ref().is_err_and(|e| e.contains("over")),
                "{encoding}: {over:?}"
            );
            if !encoding.is_empty() && *encoding != "identity" {
                let cut = stream(encoding, &encoded[..encoded.len() * 2 / 3], page.len()).await;
                assert!(
                    cut.as_ref().is_err_and(|e| e.contains("cut short")),
                    "{encoding}: {cut:?}"
                );
            }
        }
        assert_eq!(
            stream("zstd", b"x", 10).await,
            Err("unsupported".to_owned())
        );
    }
}
