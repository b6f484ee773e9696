//! Streaming decoders for `Content-Encoding` (gzip members, brotli) into a capped buffer, so
//! a compression bomb stops at the limit and a stream cut short is told from a corrupt one.

use std::io::Write as _;

/// A fragment body in a `Content-Encoding` the client undoes: exactly `gzip` or `br`, the
/// encodings it asks for (what reqwest decoded).
pub(super) enum Decoder {
    Gzip(Box<GzipDecoder>),
    Brotli(Box<brotli::DecompressorWriter<CappedSink>>),
}

/// A streaming gzip decoder (RFC 1952, any number of members one after another) that tells a
/// stream cut short from a corrupt one, which flate2's own decoders report alike.
pub(super) struct GzipDecoder {
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
pub(super) struct CappedSink {
    buf: Vec<u8>,
    written: usize,
    limit: usize,
    over: bool,
}

/// Why an encoded body could not be decoded.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum DecodeError {
    /// The decoded body is over the limit.
    TooLarge,
    /// The encoded stream ended before it was complete.
    Cut(String),
    /// The bytes are not valid in the encoding.
    Corrupt(String),
}

// === impl Decoder ===

impl Decoder {
    /// Decodes `input` onto `out`, which may not grow past `limit`.
    pub(super) fn push(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        limit: usize,
    ) -> Result<(), DecodeError> {
        match self {
            Decoder::Gzip(gzip) => gzip.push(input, out, limit),
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
                    let (used, done) = self.inflate(input, out, limit)?;
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

    /// Inflates from `input` until it is used up or the member's deflate stream ends: the bytes
    /// used and whether it ended.
    pub(super) fn inflate(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        limit: usize,
    ) -> Result<(usize, bool), DecodeError> {
        let mut used = 0usize;
        loop {
            if out.capacity() - out.len() < 4096 {
                out.reserve(16 * 1024);
            }
            let (in_before, out_before) = (self.inflate.total_in(), out.len());
            let status = self
                .inflate
                .decompress_vec(
                    input.get(used..).unwrap_or_default(),
                    out,
                    flate2::FlushDecompress::None,
                )
                .map_err(|e| DecodeError::Corrupt(format!("invalid deflate data: {e}")))?;
            let consumed =
                usize::try_from(self.inflate.total_in() - in_before).unwrap_or(usize::MAX);
            used = used.saturating_add(consumed).min(input.len());
            let produced = out.get(out_before..).unwrap_or_default();
            self.crc.update(produced);
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

    pub(super) fn finish(&self) -> Result<(), DecodeError> {
        if self.state == GzipState::Header && self.header.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Cut("gzip stream ended early".into()))
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
}
