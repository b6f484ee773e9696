//! The chunked transfer coding (RFC 9112 §7.1) undone from the front of a read buffer, a step at
//! a time: chunk-size lines (extensions ignored), data, and the trailer section (read and
//! dropped), each line bounded.

use bytes::{Buf, BytesMut};

/// Longest chunk-size line, extensions included.
const MAX_SIZE_LINE: usize = 4 * 1024;

/// Longest trailer section.
const MAX_TRAILERS: usize = 64 * 1024;

/// Where in the coding the decoder stands.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before a chunk-size line.
    #[default]
    Size,
    /// Inside a chunk, with this many data bytes left.
    Data(u64),
    /// After a chunk's data, before its CRLF.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one.
    Trailers,
    /// The body has ended.
    Done,
}

/// A chunked body being read.
#[derive(Debug, Default)]
pub(super) struct Chunked {
    state: State,
    trailer_bytes: usize,
}

/// What the decoder found at the front of the buffer.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// This many bytes of body data are at the front of the buffer: the caller takes them
    /// (and advances past them) before the next step.
    Data(usize),
    /// More bytes are needed.
    More,
    /// The body has ended; what follows in the buffer is not its.
    Done,
}

impl Chunked {
    /// Consumes framing from the front of `buf` up to the next data, the need for more bytes,
    /// or the end; the error says how the coding is broken.
    pub(super) fn step(&mut self, buf: &mut BytesMut) -> Result<Step, String> {
        loop {
            match self.state {
                State::Size => {
                    let Some(line) = line(buf, MAX_SIZE_LINE, "chunk-size line")? else {
                        return Ok(Step::More);
                    };
                    let size = chunk_size(&buf[..line])?;
                    buf.advance(line + 1);
                    self.state = if size == 0 {
                        State::Trailers
                    } else {
                        State::Data(size)
                    };
                }
                State::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Step::More);
                    }
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    self.state = match left - n as u64 {
                        0 => State::DataEnd,
                        rest => State::Data(rest),
                    };
                    return Ok(Step::Data(n));
                }
                State::DataEnd => match buf.first() {
                    None => return Ok(Step::More),
                    Some(b'\n') => {
                        buf.advance(1);
                        self.state = State::Size;
                    }
                    Some(b'\r') => match buf.get(1) {
                        None => return Ok(Step::More),
                        Some(b'\n') => {
                            buf.advance(2);
                            self.state = State::Size;
                        }
                        Some(_) => return Err("chunk data longer than its size".into()),
                    },
                    Some(_) => return Err("chunk data longer than its size".into()),
                },
                State::Trailers => {
                    let room = MAX_TRAILERS.saturating_sub(self.trailer_bytes);
                    let Some(line) = line(buf, room, "trailer section")? else {
                        return Ok(Step::More);
                    };
                    let empty = buf[..line].is_empty() || &buf[..line] == b"\r";
                    self.trailer_bytes += line + 1;
                    buf.advance(line + 1);
                    if empty {
                        self.state = State::Done;
                    }
                }
                State::Done => return Ok(Step::Done),
            }
        }
    }
}

/// Where the line at the front of `buf` ends (its LF), within `max` bytes.
fn line(buf: &[u8], max: usize, what: &str) -> Result<Option<usize>, String> {
    match memchr::memchr(b'\n', &buf[..buf.len().min(max)]) {
        Some(end) => Ok(Some(end)),
        None if buf.len() >= max => Err(format!("{what} over {max} bytes")),
        None => Ok(None),
    }
}

/// The size on a chunk-size line (without its LF): hex digits, then nothing, or extensions
/// after optional whitespace and `;`.
fn chunk_size(line: &[u8]) -> Result<u64, String> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    let invalid = || format!("invalid chunk size {:?}", String::from_utf8_lossy(line));
    if digits == 0 || digits > 15 {
        return Err(invalid());
    }
    let rest = line[digits..].trim_ascii_start();
    if !rest.is_empty() && rest[0] != b';' {
        return Err(invalid());
    }
    let text = std::str::from_utf8(&line[..digits]).map_err(|_| invalid())?;
    u64::from_str_radix(text, 16).map_err(|_| invalid())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `wire` fed in pieces of `piece` bytes: the body, and what followed its end.
    fn decode(wire: &[u8], piece: usize) -> Result<(Vec<u8>, Vec<u8>), String> {
        let mut chunked = Chunked::default();
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut rest = wire;
        loop {
            match chunked.step(&mut buf)? {
                Step::Data(n) => {
                    body.extend_from_slice(&buf[..n]);
                    buf.advance(n);
                }
                Step::More if rest.is_empty() => return Err("ended early".into()),
                Step::More => {
                    let n = piece.min(rest.len());
                    buf.extend_from_slice(&rest[..n]);
                    rest = &rest[n..];
                }
                Step::Done => {
                    buf.extend_from_slice(rest);
                    return Ok((body, buf.to_vec()));
                }
            }
        }
    }

    #[test]
    fn decodes_whatever_the_pieces() {
        let wire =
            b"5\r\nhello\r\n1;ext=\"a;b\"\r\n \r\nA ; x\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        for piece in [1, 2, 3, 7, wire.len()] {
            let (body, rest) = decode(wire, piece).expect("decodes");
            assert_eq!(body, b"hello 0123456789", "piece {piece}");
            assert_eq!(rest, b"NEXT", "piece {piece}");
        }
        // Bare LFs are taken as line ends too.
        let (body, _) = decode(b"3\nabc\n0\n\n", 1).expect("decodes");
        assert_eq!(body, b"abc");
    }

    #[test]
    fn broken_codings_are_errors() {
        let cases: [&[u8]; 6] = [
            b"zz\r\nhello\r\n0\r\n\r\n",
            b"5\r\nhello!!\r\n0\r\n\r\n",
            b"\r\n",
            b"5 x\r\nhello\r\n0\r\n\r\n",
            b"1000000000000000\r\n",
            b"-1\r\n",
        ];
        for wire in cases {
            assert!(
                decode(wire, 1).is_err(),
                "{:?}",
                String::from_utf8_lossy(wire)
            );
        }
    }

    #[test]
    fn lines_are_bounded() {
        let mut wire = b"1;".to_vec();
        wire.extend(std::iter::repeat_n(b'x', MAX_SIZE_LINE));
        let err = decode(&wire, 512).expect_err("over the bound");
        assert!(err.contains("chunk-size line over"), "{err}");
        let mut wire = b"0\r\n".to_vec();
        for _ in 0..MAX_TRAILERS / 8 {
            wire.extend_from_slice(b"X-A: 1\r\n");
        }
        wire.extend_from_slice(b"X-B: 2\r\n\r\n");
        let err = decode(&wire, 4096).expect_err("over the bound");
        assert!(err.contains("trailer section over"), "{err}");
    }
}
