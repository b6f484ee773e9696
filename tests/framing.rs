//! How the proxy frames what it sends the client when the origin's framing is odd: both
//! `Transfer-Encoding` and `Content-Length`, repeated `Content-Length`s, a length on a 204 or
//! 304. A raw origin writes the bytes, a raw client reads the proxy's.

use esi_proxy::config::Config;
use tokio::io::AsyncWriteExt;

use crate::support::{proxy, raw_get, read_head, serve_raw, RawResponse, Server};

/// The body the chunked responses carry: 40 bytes, so a `Content-Length: 5` beside it would cut
/// it short.
const WHOLE: &str = "0123456789abcdefghijklmnopqrstuvwxyzABCD";

/// A raw origin answering every request with `head` then `body`, then closing.
async fn origin(head: String, body: Vec<u8>) -> Server {
    serve_raw(move |mut stream| {
        let (head, body) = (head.clone(), body.clone());
        async move {
            if read_head(&mut stream).await.is_some() {
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(&body).await;
                let _ = stream.shutdown().await;
            }
        }
    })
    .await
}

/// [`WHOLE`] in three chunks.
fn chunked() -> Vec<u8> {
    let (a, rest) = WHOLE.split_at(10);
    let (b, c) = rest.split_at(20);
    format!(
        "{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n{:x}\r\n{c}\r\n0\r\n\r\n",
        a.len(),
        b.len(),
        c.len()
    )
    .into_bytes()
}

/// The values of `name` in a raw head.
fn values(got: &RawResponse, name: &str) -> Vec<String> {
    let prefix = format!("{name}:");
    got.head
        .lines()
        .filter_map(|l| {
            let lower = l.to_ascii_lowercase();
            lower
                .starts_with(&prefix)
                .then(|| lower[prefix.len()..].trim().to_owned())
        })
        .collect()
}

fn status(got: &RawResponse) -> u16 {
    got.head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// The body came whole and the head frames it one way only: chunked with no length, or one
/// length that is the body's.
fn assert_framed_whole(got: &RawResponse, what: &str) {
    assert_eq!(status(got), 200, "{what}: {}", got.head);
    let lengths = values(got, "content-length");
    let chunked = values(got, "transfer-encoding").contains(&"chunked".to_owned());
    match (chunked, lengths.as_slice()) {
        (true, []) => {}
        (false, [n]) => assert_eq!(n, &got.body.len().to_string(), "{what}"),
        _ => panic!("{what}: inconsistent framing: {}", got.head),
    }
    assert!(got.complete, "{what}: the body ends as HTTP says");
    assert_eq!(
        String::from_utf8_lossy(&got.body),
        WHOLE,
        "{what}: the body whole"
    );
}

/// RFC 9112 section 6.3: Transfer-Encoding overrides Content-Length, which a proxy must not
/// pass on; it did, and the client got the first 5 of 40 bytes as a complete response.
#[tokio::test]
async fn transfer_encoding_with_content_length_is_not_cut_to_the_length_when_passed_through() {
    let head = "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n\
                transfer-encoding: chunked\r\n\r\n";
    let origin = origin(head.to_owned(), chunked()).await;
    let proxy = proxy(&origin.base(), Config::default()).await;
    let got = raw_get(proxy.addr, "/plain").await;
    assert_framed_whole(&got, "pass-through");
}

/// The same for a layout: the composed page never carries the layout's length.
#[tokio::test]
async fn transfer_encoding_with_content_length_is_not_cut_to_the_length_when_composed() {
    let head = "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\n\
                surrogate-control: content=\"ESI/1.0\"\r\ncontent-length: 5\r\n\
                transfer-encoding: chunked\r\n\r\n";
    let origin = origin(head.to_owned(), chunked()).await;
    let proxy = proxy(&origin.base(), Config::default()).await;
    let got = raw_get(proxy.addr, "/page").await;
    assert_framed_whole(&got, "layout");
}

/// Two equal lengths frame the body; the client gets one.
#[tokio::test]
async fn repeated_equal_content_lengths_are_passed_on_once() {
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {n}\r\n\
         content-length: {n}\r\n\r\n",
        n = WHOLE.len()
    );
    let origin = origin(head, WHOLE.as_bytes().to_vec()).await;
    let proxy = proxy(&origin.base(), Config::default()).await;
    let got = raw_get(proxy.addr, "/plain").await;
    assert_framed_whole(&got, "equal lengths");
    assert_eq!(values(&got, "content-length").len(), 1, "{}", got.head);
}

/// Two different lengths frame nothing: a 502, none of the body.
#[tokio::test]
async fn different_content_lengths_are_a_bad_gateway() {
    let head = "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n\
                content-length: 40\r\n\r\n";
    let origin = origin(head.to_owned(), WHOLE.as_bytes().to_vec()).await;
    let proxy = proxy(&origin.base(), Config::default()).await;
    let got = raw_get(proxy.addr, "/plain").await;
    assert_eq!(status(&got), 502, "{}", got.head);
    assert!(got.complete, "the error page is whole");
    assert!(
        !String::from_utf8_lossy(&got.body).contains("01234"),
        "none of the origin's body"
    );
}

/// A 204 has no body and may carry no Content-Length (RFC 9110 section 8.6); a 304's describes
/// the representation, and is passed on with no body.
#[tokio::test]
async fn no_content_drops_its_length_and_not_modified_sends_no_body() {
    for (code, length_kept) in [(204, false), (304, true)] {
        let head =
            format!("HTTP/1.1 {code} X\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n\r\n");
        let origin = origin(head, Vec::new()).await;
        let proxy = proxy(&origin.base(), Config::default()).await;
        let got = raw_get(proxy.addr, "/plain").await;
        assert_eq!(status(&got), code, "{}", got.head);
        assert!(got.body.is_empty(), "{code}: no body: {:?}", got.body);
        // A 304 may keep its length (hyper leaves it out); a 204 may not have one.
        let lengths = values(&got, "content-length");
        let allowed = lengths.is_empty() || (length_kept && lengths == ["5"]);
        assert!(allowed, "{code}: {}", got.head);
        assert!(
            values(&got, "transfer-encoding").is_empty(),
            "{code}: {}",
            got.head
        );
    }
}
