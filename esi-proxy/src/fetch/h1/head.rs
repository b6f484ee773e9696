//! A response head off the wire (status line and fields, parsed by httparse), and what it says
//! of its body's framing and of the connection's reuse (RFC 9112 §6.3 and §9.3).

use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

/// Most fields in a response head; more fail the fetch as malformed, as hyper bounds them.
const MAX_FIELDS: usize = 100;

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    /// No body: 101, 204, 304, or `Content-Length: 0`.
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// The chunked transfer coding.
    Chunked,
    /// Everything until the server closes the connection.
    UntilClose,
}

/// A final response head.
#[derive(Debug)]
pub(super) struct Head {
    pub(super) status: StatusCode,
    pub(super) headers: HeaderMap,
    pub(super) framing: Framing,
    /// Whether the connection can carry another request once this body is read whole.
    pub(super) keep_alive: bool,
}

/// What the start of a buffer holds.
#[derive(Debug)]
pub(super) enum Parsed {
    /// Not a whole head yet.
    Partial,
    /// A whole interim head (1xx but 101) of this many bytes, to skip.
    Interim(usize),
    /// A whole final head of this many bytes.
    Final(Head, usize),
}

/// Parses the response head at the start of `buf` (`head_request`: the response to a `HEAD`,
/// which has no body whatever its fields say); the error says what is wrong with it.
pub(super) fn parse(buf: &[u8], head_request: bool) -> Result<Parsed, String> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut response = httparse::Response::new(&mut fields);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(e) => return Err(format!("invalid response head: {e}")),
    };
    let code = response.code.unwrap_or_default();
    let status = StatusCode::from_u16(code).map_err(|_| format!("invalid status {code}"))?;
    // 101 ends the exchange (the stream would speak another protocol): a final status no
    // fragment can use, with no body, on a stream not used again.
    let switching = status == StatusCode::SWITCHING_PROTOCOLS;
    if status.is_informational() && !switching {
        return Ok(Parsed::Interim(len));
    }
    let mut headers = HeaderMap::with_capacity(response.headers.len());
    for field in response.headers.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| format!("invalid header name {:?}", field.name))?;
        let value = HeaderValue::from_bytes(field.value)
            .map_err(|_| format!("invalid value in header {:?}", field.name))?;
        headers.append(name, value);
    }
    let (framing, ambiguous) = if head_request {
        (Framing::Empty, false)
    } else {
        framing(status, &headers)?
    };
    let keep_alive = response.version == Some(1)
        && !switching
        && !ambiguous
        && framing != Framing::UntilClose
        && !has_token(&headers, &CONNECTION, "close");
    Ok(Parsed::Final(
        Head {
            status,
            headers,
            framing,
            keep_alive,
        },
        len,
    ))
}

/// The body's framing, and whether the head was ambiguous about it (`Transfer-Encoding` and
/// `Content-Length` both: the first wins and the connection is not reused).
fn framing(status: StatusCode, headers: &HeaderMap) -> Result<(Framing, bool), String> {
    if matches!(status.as_u16(), 101 | 204 | 304) {
        return Ok((Framing::Empty, false));
    }
    let has_length = headers.contains_key(CONTENT_LENGTH);
    if headers.contains_key(TRANSFER_ENCODING) {
        let last = tokens(headers, &TRANSFER_ENCODING).last();
        let framing = if last.is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
            Framing::Chunked
        } else {
            Framing::UntilClose
        };
        return Ok((framing, has_length));
    }
    if !has_length {
        return Ok((Framing::UntilClose, false));
    }
    let mut length = None;
    for token in tokens(headers, &CONTENT_LENGTH) {
        let valid =
            !token.is_empty() && token.len() <= 19 && token.bytes().all(|b| b.is_ascii_digit());
        let n: u64 = match token.parse() {
            Ok(n) if valid => n,
            _ => return Err(format!("invalid Content-Length {token:?}")),
        };
        if length.is_some_and(|seen| seen != n) {
            return Err("Content-Length values that differ".into());
        }
        length = Some(n);
    }
    match length {
        Some(0) => Ok((Framing::Empty, false)),
        Some(n) => Ok((Framing::Length(n), false)),
        None => Err("empty Content-Length".into()),
    }
}

/// The comma-separated tokens of every `name` field, trimmed, empty ones left out; a value that
/// is not text gives one token no valid value equals.
fn tokens<'a>(headers: &'a HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(name)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("\u{fffd}").split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    tokens(headers, name).any(|t| t.eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Head {
        match parse(text.as_bytes(), false) {
            Ok(Parsed::Final(head, len)) => {
                assert_eq!(len, text.len(), "{text:?}");
                head
            }
            other => panic!("{text:?}: {other:?}"),
        }
    }

    #[test]
    fn framing_and_reuse_follow_the_head() {
        let cases = [
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
                Framing::Length(5),
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
                Framing::Empty,
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 7, 7\r\n\r\n",
                Framing::Length(7),
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                Framing::Chunked,
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n",
                Framing::Chunked,
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
                Framing::UntilClose,
                false,
            ),
            // Both: the transfer coding wins and the connection is not trusted again.
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
                Framing::Chunked,
                false,
            ),
            ("HTTP/1.1 200 OK\r\n\r\n", Framing::UntilClose, false),
            (
                "HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n",
                Framing::Empty,
                true,
            ),
            ("HTTP/1.1 304 Not Modified\r\n\r\n", Framing::Empty, true),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: Close\r\n\r\n",
                Framing::Length(5),
                false,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive, close\r\n\r\n",
                Framing::Length(5),
                false,
            ),
            (
                "HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\n",
                Framing::Length(5),
                false,
            ),
            (
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n",
                Framing::Empty,
                false,
            ),
        ];
        for (text, framing, keep_alive) in cases {
            let h = head(text);
            assert_eq!((h.framing, h.keep_alive), (framing, keep_alive), "{text:?}");
        }
    }

    #[test]
    fn a_response_to_head_has_no_body_whatever_it_declares() {
        let text = b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n";
        match parse(text, true) {
            Ok(Parsed::Final(head, len)) => {
                assert_eq!(len, text.len());
                assert_eq!((head.framing, head.keep_alive), (Framing::Empty, true));
                assert_eq!(head.headers["content-length"], "500");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn fields_keep_their_order_and_repeats() {
        let h = head("HTTP/1.1 404 Not Found\r\nSet-Cookie: a=1\r\nX-Y: z\r\nSet-Cookie: b=2\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(h.status, StatusCode::NOT_FOUND);
        let cookies: Vec<_> = h.headers.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
        assert_eq!(h.headers["x-y"], "z");
    }

    #[test]
    fn partial_and_interim_heads() {
        assert!(matches!(
            parse(b"HTTP/1.1 200 OK\r\nContent-Le", false),
            Ok(Parsed::Partial)
        ));
        assert!(matches!(parse(b"", false), Ok(Parsed::Partial)));
        let interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n";
        assert!(matches!(parse(interim, false), Ok(Parsed::Interim(25))));
    }

    #[test]
    fn broken_heads_are_errors() {
        let cases: [&[u8]; 8] = [
            b"SMTP ready\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 0x10\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n",
        ];
        for text in cases {
            assert!(
                parse(text, false).is_err(),
                "{:?}",
                String::from_utf8_lossy(text)
            );
        }
    }

    #[test]
    fn too_many_fields_are_an_error() {
        let mut text = String::from("HTTP/1.1 200 OK\r\n");
        for i in 0..=MAX_FIELDS {
            text.push_str(&format!("X-{i}: v\r\n"));
        }
        text.push_str("\r\n");
        assert!(parse(text.as_bytes(), false).is_err());
    }
}
