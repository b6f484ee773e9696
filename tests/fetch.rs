//! The HTTP client against real loopback servers: the header policy as fragments see it,
//! decoding, every failure path (status, timeout, reset, oversize, refused), the allowlist and
//! its connect-time guard, and pass-through requests to the origin.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use esi_proxy::config::{Config, HostConfig};
use esi_proxy::fetch::{
    ErrorKind, FetchError, Fetcher, Fragment, FragmentRequest, HttpClient, Lookup, OriginRequest,
    SystemLookup,
};
use esi_proxy::headers::CAPABILITY;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;

use crate::support::{self, full, response, Server, StaticLookup};

/// A config with `origin` and `hosts` as `(url, trusted, private_network)`.
fn config(origin: &str, hosts: &[(&str, bool, bool)]) -> Config {
    let mut config = Config::default();
    config.server.origin = origin.to_owned();
    config.fetch.hosts = hosts
        .iter()
        .map(|(url, trusted, private_network)| HostConfig {
            url: (*url).to_owned(),
            trusted: *trusted,
            esi: false,
            private_network: *private_network,
            http2: false,
            breaker: None,
        })
        .collect();
    config
}

fn client(config: &Config) -> HttpClient {
    client_with(config, Arc::new(SystemLookup))
}

fn client_with(config: &Config, lookup: Arc<dyn Lookup>) -> HttpClient {
    let settings = config.settings().expect("valid test config");
    HttpClient::new(&settings, lookup).expect("test configs are valid")
}

/// `names` mapped to their addresses.
fn lookup(names: &[(&str, &[SocketAddr])]) -> Arc<dyn Lookup> {
    let table: HashMap<String, Vec<SocketAddr>> = names
        .iter()
        .map(|(name, addrs)| ((*name).to_owned(), addrs.to_vec()))
        .collect();
    Arc::new(StaticLookup(table))
}

/// Checks `url` against the client's allowlist, then fetches it, as the composer does.
async fn fetch_with(
    client: &HttpClient,
    url: &str,
    headers: HeaderMap,
    timeout: Duration,
) -> Result<Fragment, FetchError> {
    let url = Arc::new(url.parse().expect("test URLs parse"));
    let request = FragmentRequest {
        url: client.check(&url)?,
        client_headers: Arc::new(headers.into()),
        timeout,
        options: Default::default(),
        keep_status: false,
    };
    client.fetch(request).await
}

async fn fetch(client: &HttpClient, url: &str) -> Result<Fragment, FetchError> {
    fetch_with(client, url, HeaderMap::new(), Duration::from_secs(5)).await
}

/// A server answering every request with 200 and `body`.
async fn ok_server(body: &'static str) -> Server {
    support::serve(move |_req| async move { response(200, &[], full(body)) }).await
}

/// The values a server received for `name` in its only request.
fn values(server: &Server, name: &str) -> Vec<String> {
    let received = server.received();
    assert_eq!(received.len(), 1, "one request to {}", server.addr);
    received[0]
        .headers
        .get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect()
}

#[tokio::test]
async fn header_policy_seen_by_fragments() {
    let handler = |_req| async {
        let headers = [("surrogate-control", "max-age=60, content=\"ESI/1.0\"")];
        response(200, &headers, full("<p>fragment</p>"))
    };
    let origin = support::serve(handler).await;
    let trusted = support::serve(handler).await;
    let untrusted = support::serve(handler).await;
    let config = config(
        &origin.base(),
        &[
            (&trusted.base(), true, false),
            (&untrusted.base(), false, false),
        ],
    );
    let client = client(&config);

    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("cookie", "session=s3cret"),
        ("authorization", "Bearer t0ken"),
        ("accept-language", "de-CH"),
        ("user-agent", "browser/1.0"),
        ("x-forwarded-for", "192.0.2.7"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "www.example.test"),
        ("range", "bytes=0-10"),
        ("if-none-match", "\"abc\""),
        ("if-modified-since", "Mon, 01 Jan 2024 00:00:00 GMT"),
        ("accept-encoding", "identity"),
        ("surrogate-capability", "forged=\"ESI/1.0\""),
        ("x-custom", "not forwarded"),
    ] {
        headers.append(name, HeaderValue::from_static(value));
    }
    let headers: Arc<esi_proxy::fetch::ClientHeaders> = Arc::new(headers.into());

    // (server, gets Cookie and Authorization)
    for (server, credentials) in [(&origin, true), (&trusted, true), (&untrusted, false)] {
        let req = FragmentRequest {
            url: client
                .check(&Arc::new(server.url("/frag?x=1").parse().expect("valid")))
                .expect("allowed"),
            client_headers: Arc::clone(&headers),
            timeout: Duration::from_secs(5),
            options: Default::default(),
            keep_status: false,
        };
        let fragment = client.fetch(req).await.expect("fetch succeeds");
        assert_eq!(fragment.status, StatusCode::OK);
        assert_eq!(fragment.body, Bytes::from_static(b"<p>fragment</p>"));
        assert!(fragment.is_esi(), "Surrogate-Control marks ESI");

        let received = server.received();
        assert_eq!(received[0].method, Method::GET);
        assert_eq!(received[0].uri, "/frag?x=1");
        let present: &[(&str, &str)] = &[
            ("accept-language", "de-CH"),
            ("user-agent", "browser/1.0"),
            ("x-forwarded-for", "192.0.2.7"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "www.example.test"),
            ("surrogate-capability", CAPABILITY),
        ];
        for (name, value) in present {
            assert_eq!(values(server, name), [*value], "{name} at {}", server.addr);
        }
        for name in ["cookie", "authorization"] {
            let want: Vec<&str> = match (credentials, name) {
                (false, _) => vec![],
                (true, "cookie") => vec!["session=s3cret"],
                (true, _) => vec!["Bearer t0ken"],
            };
            assert_eq!(values(server, name), want, "{name} at {}", server.addr);
        }
        for name in [
            "range",
            "if-none-match",
            "if-modified-since",
            "x-custom",
            "content-length",
        ] {
            assert!(values(server, name).is_empty(), "{name} at {}", server.addr);
        }
        // reqwest's own, since the client's Accept-Encoding is never forwarded.
        let encodings = values(server, "accept-encoding").join(",");
        assert!(
            encodings.contains("gzip") && encodings.contains("br"),
            "{encodings}"
        );
    }
}

#[tokio::test]
async fn encoded_fragments_decoded() {
    let text = "<p>hello, compressed world</p>".repeat(100);
    let cases: &[(&str, Vec<u8>)] = &[
        ("gzip", support::gzip(text.as_bytes())),
        ("br", support::brotli(text.as_bytes())),
    ];
    for (encoding, encoded) in cases {
        let encoded = Bytes::from(encoded.clone());
        let encoding: &'static str = encoding;
        let server = support::serve(move |_req| {
            let body = encoded.clone();
            async move { response(200, &[("content-encoding", encoding)], full(body)) }
        })
        .await;
        let client = client(&config(&server.base(), &[]));
        let fragment = fetch(&client, &server.url("/"))
            .await
            .expect("fetch succeeds");
        assert_eq!(fragment.body, text.as_bytes(), "{encoding}");
        assert!(
            fragment.headers.get("content-encoding").is_none(),
            "{encoding}"
        );
    }
}

/// `fetch.pool_idle_timeout_ms`: fetches close together share one kept-alive connection; a
/// fetch after it has waited idle past the timeout gets a new one.
#[tokio::test]
async fn a_connection_idle_past_the_pool_timeout_is_not_used_again() {
    let server = support::serve(|_req| async { response(200, &[], full("ok")) }).await;
    let mut config = config(&server.base(), &[]);
    config.fetch.pool_idle_timeout_ms = 300;
    let client = client(&config);
    let fetch_ok = || async {
        let fragment = fetch(&client, &server.url("/f"))
            .await
            .expect("fetch succeeds");
        assert_eq!(fragment.body, "ok");
    };
    fetch_ok().await;
    fetch_ok().await;
    let kept = server.connections().await;
    assert_eq!(kept, 1, "kept alive within the timeout");
    tokio::time::sleep(Duration::from_millis(700)).await;
    fetch_ok().await;
    let after = server.connections().await;
    assert_eq!(after, 2, "a new connection past the timeout");
}

/// Three fetches of `server`'s `ok` fragment all succeed, each on a connection of its own.
async fn each_fetch_on_a_new_connection(server: &Server) {
    let client = client(&config(&server.base(), &[]));
    for _ in 0..3 {
        let fragment = fetch(&client, &server.url("/f"))
            .await
            .expect("every fetch succeeds");
        assert_eq!(fragment.body, "ok");
    }
    assert_eq!(server.connections().await, 3, "a new connection per fetch");
}

/// A host that closes each connection right after its answer, though the answer says nothing
/// of it: the stream is not used again (or, found closed once sent on, the GET goes again on a
/// new one), and every fetch succeeds.
#[tokio::test]
async fn a_stream_its_host_closed_after_answering_is_not_used_again() {
    let server = support::serve_raw(|mut stream| async move {
        if support::read_head(&mut stream).await.is_some() {
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .await;
        }
    })
    .await;
    each_fetch_on_a_new_connection(&server).await;
}

/// Bytes after a body's end answer no request: the stream they came on is not used again, so
/// they never become the start of the next fragment's response.
#[tokio::test]
async fn a_stream_with_bytes_past_the_body_is_not_used_again() {
    let server = support::serve_raw(|mut stream| async move {
        while support::read_head(&mut stream).await.is_some() {
            let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n\r\n";
            if stream.write_all(answer).await.is_err() {
                return;
            }
        }
    })
    .await;
    each_fetch_on_a_new_connection(&server).await;
}

#[tokio::test]
async fn error_statuses() {
    let target = ok_server("redirected").await;
    let location = target.url("/elsewhere");
    for status in [500, 503, 404, 302, 304, 101] {
        let location = location.clone();
        let server = support::serve(move |_req| {
            let location = location.clone();
            async move { response(status, &[("location", &location)], full("nope")) }
        })
        .await;
        let client = client(&config(&server.base(), &[(&target.base(), false, false)]));
        match fetch(&client, &server.url("/f")).await {
            Err(FetchError::Status { status: got, url }) => {
                assert_eq!(got.as_u16(), status);
                assert_eq!(url, server.url("/f"));
            }
            other => panic!("status {status}: {other:?}"),
        }
    }
    assert_eq!(target.connections().await, 0, "redirects are not followed");
}

#[tokio::test]
async fn timeout() {
    let server = support::serve(|_req| async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        response(200, &[], full("late"))
    })
    .await;
    let client = client(&config(&server.base(), &[]));
    let after = Duration::from_millis(100);
    let got = fetch_with(&client, &server.url("/slow"), HeaderMap::new(), after).await;
    match got {
        Err(e @ FetchError::Timeout { .. }) => {
            assert!(e.is_timeout());
            assert_eq!(e.kind(), ErrorKind::Timeout);
            assert!(matches!(e, FetchError::Timeout { after: a, .. } if a == after));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn body_cut_short() {
    // (what the server writes before closing)
    let cases: &[&[u8]] = &[
        b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n01234567890123456789012345678901234567890123456789",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n10\r\n0123456789",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\n01234\r\n",
    ];
    for written in cases {
        let server = support::serve_raw(move |mut stream| async move {
            if support::read_head(&mut stream).await.is_some() {
                let _ = stream.write_all(written).await;
                let _ = stream.shutdown().await;
            }
        })
        .await;
        let client = client(&config(&server.base(), &[]));
        match fetch(&client, &server.url("/")).await {
            Err(FetchError::Truncated { .. }) => {}
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(written)),
        }
    }
}

#[tokio::test]
async fn compressed_body_cut_short() {
    let encoded = support::gzip(&[b'x'; 100_000].repeat(3));
    let half = encoded.len() / 2;
    let server = support::serve_raw(move |mut stream| {
        let encoded = encoded.clone();
        async move {
            if support::read_head(&mut stream).await.is_some() {
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\ncontent-length: {}\r\n\r\n",
                    encoded.len()
                );
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(&encoded[..half]).await;
            }
        }
    })
    .await;
    let client = client(&config(&server.base(), &[]));
    match fetch(&client, &server.url("/")).await {
        Err(FetchError::Truncated { .. }) => {}
        other => panic!("{other:?}"),
    }
}

/// A raw server that declares `content-length: 10000000`, sends three bytes and waits: only a
/// client that checks the header first can finish.
async fn declares_ten_megabytes() -> Server {
    support::serve_raw(|mut stream| async move {
        if support::read_head(&mut stream).await.is_some() {
            let head = "HTTP/1.1 200 OK\r\ncontent-length: 10000000\r\n\r\nabc";
            let _ = stream.write_all(head.as_bytes()).await;
            support::wait_closed(&mut stream).await;
        }
    })
    .await
}

/// A server streaming `chunks` chunks of 64 KiB, chunked.
async fn streams(chunks: usize) -> Server {
    support::serve(move |_req| async move {
        let chunk = Bytes::from(vec![b'a'; 64 * 1024]);
        let body = futures::stream::iter((0..chunks).map(move |_| Ok(chunk.clone())));
        response(200, &[], support::stream(body))
    })
    .await
}

#[tokio::test]
async fn size_limit() {
    const LIMIT: usize = 1024 * 1024;
    // (server, limit, Ok(body length) or Err(()) for TooLarge)
    let cases: Vec<(Server, Result<usize, ()>)> = vec![
        (declares_ten_megabytes().await, Err(())),
        (streams(40).await, Err(())),
        (streams(17).await, Err(())),
        (streams(16).await, Ok(LIMIT)),
        (streams(1).await, Ok(64 * 1024)),
    ];
    for (server, want) in cases {
        let mut config = config(&server.base(), &[]);
        config.fetch.max_fragment_bytes = LIMIT;
        let client = client(&config);
        match (fetch(&client, &server.url("/big")).await, want) {
            (Ok(fragment), Ok(len)) => assert_eq!(fragment.body.len(), len),
            (Err(FetchError::TooLarge { limit, .. }), Err(())) => assert_eq!(limit, LIMIT),
            (got, want) => panic!("{}: got {got:?}, want {want:?}", server.addr),
        }
    }
}

#[tokio::test]
async fn gzip_bomb_stops_at_limit() {
    // 50 MB of zeros: a few tens of KB on the wire.
    let bomb = Bytes::from(support::gzip(&vec![0u8; 50 * 1024 * 1024]));
    assert!(bomb.len() < 1024 * 1024, "the bomb is small on the wire");
    let server = support::serve(move |_req| {
        let bomb = bomb.clone();
        async move { response(200, &[("content-encoding", "gzip")], full(bomb)) }
    })
    .await;
    let mut config = config(&server.base(), &[]);
    config.fetch.max_fragment_bytes = 1024 * 1024;
    let client = client(&config);
    match fetch(&client, &server.url("/bomb")).await {
        Err(FetchError::TooLarge { limit, .. }) => assert_eq!(limit, 1024 * 1024),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn connection_refused() {
    let base = format!("http://127.0.0.1:{}", support::closed_port());
    let client = client(&config(&base, &[]));
    match fetch(&client, &format!("{base}/f")).await {
        Err(e @ FetchError::Connect { .. }) => assert_eq!(e.kind(), ErrorKind::Connect),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn refused_before_connecting() {
    let origin = ok_server("origin").await;
    let other = ok_server("other").await;
    let client = client(&config(&origin.base(), &[]));
    let with_password = format!("http://user:pw@{}/f", origin.addr);
    // (url, part of the reason)
    let cases: &[(&str, &str)] = &[
        (&other.url("/f"), "127.0.0.1 is a loopback address"),
        (&with_password, "user info"),
        ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
        ("http://[fd00:ec2::254]/latest/meta-data/", "cloud metadata"),
        ("http://evil.test/", "host not in allowlist"),
        ("ftp://127.0.0.1/", "scheme"),
    ];
    for (url, reason_part) in cases {
        match fetch(&client, url).await {
            Err(FetchError::Refused { url: shown, reason }) => {
                assert!(reason.contains(reason_part), "{url}: {reason}");
                assert!(!shown.contains("pw"), "{url}: password in {shown}");
            }
            got => panic!("{url}: {got:?}"),
        }
    }
    assert_eq!(other.connections().await, 0);
    assert_eq!(origin.connections().await, 0, "user info refused first");
}

#[tokio::test]
async fn names_resolving_to_private_addresses() {
    let server = ok_server("internal").await;
    let loopback = server.addr;
    let metadata: SocketAddr = "169.254.169.254:80".parse().expect("valid");
    let lookup = lookup(&[
        ("evil.test", &[loopback]),
        ("internal.test", &[loopback]),
        ("metadata.test", &[metadata]),
        ("nothing.test", &[]),
    ]);
    let port = server.port();
    let hosts = [
        format!("http://evil.test:{port}"),
        format!("http://internal.test:{port}"),
        format!("http://metadata.test:{port}"),
        format!("http://nothing.test:{port}"),
    ];
    let config = config(
        "http://origin.test:1",
        &[
            (&hosts[0], true, false),
            (&hosts[1], false, true),
            (&hosts[2], true, true),
            (&hosts[3], false, true),
        ],
    );
    let client = client_with(&config, lookup);

    let refused = "resolves only to private/loopback addresses";
    /// The body, or the error's kind and part of its message.
    type Want<'a> = Result<&'a str, (&'a str, &'a str)>;
    let cases: &[(&str, Want)] = &[
        (&hosts[0], Err(("refused", refused))),
        (&hosts[2], Err(("refused", refused))),
        (&hosts[3], Err(("connect", "no addresses"))),
        (&hosts[1], Ok("internal")),
    ];
    for (url, want) in cases {
        match (fetch(&client, &format!("{url}/f")).await, want) {
            (Ok(fragment), Ok(body)) => assert_eq!(fragment.body, body.as_bytes(), "{url}"),
            (Err(e), Err((kind, part))) => {
                assert_eq!(e.kind().as_str(), *kind, "{url}: {e}");
                assert!(e.to_string().contains(part), "{url}: {e}");
            }
            (got, want) => panic!("{url}: got {got:?}, want {want:?}"),
        }
    }
    assert_eq!(
        server.received().len(),
        1,
        "only internal.test reached the server"
    );
    assert_eq!(server.connections().await, 1);
}

#[tokio::test]
async fn origin_by_name_may_be_private() {
    let origin = support::serve(|req: http::Request<hyper::body::Incoming>| async move {
        let cookie = req.headers().get("cookie").cloned();
        let body = cookie.map_or_else(Bytes::new, |c| Bytes::copy_from_slice(c.as_bytes()));
        response(200, &[], full(body))
    })
    .await;
    let lookup = lookup(&[("origin.test", &[origin.addr])]);
    let base = format!("http://origin.test:{}", origin.port());
    let client = client_with(&config(&base, &[]), lookup);
    let mut headers = HeaderMap::new();
    headers.insert("cookie", HeaderValue::from_static("id=7"));
    let fragment = fetch_with(
        &client,
        &format!("{base}/f"),
        headers,
        Duration::from_secs(5),
    )
    .await
    .expect("the origin may resolve to loopback");
    assert_eq!(fragment.body, "id=7", "the origin is trusted");
}

#[tokio::test]
async fn send_origin_streams_undecoded() {
    let encoded = Bytes::from(support::gzip(b"<html>layout</html>"));
    let (more_tx, more_rx) = tokio::sync::oneshot::channel::<()>();
    let more_rx = std::sync::Mutex::new(Some(more_rx));
    let first = encoded.slice(..10);
    let rest = encoded.slice(10..);
    let origin = support::serve(move |req: http::Request<hyper::body::Incoming>| {
        let first = first.clone();
        let rest = rest.clone();
        let more = more_rx.lock().expect("not poisoned").take();
        async move {
            let uploaded = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            if uploaded != "payload" {
                return response(400, &[], full("request body lost"));
            }
            // The second part is sent only once the test has the response head: streaming.
            let second = futures::stream::once(async move {
                if let Some(more) = more {
                    let _ = more.await;
                }
                Ok(rest)
            });
            let body =
                futures::StreamExt::chain(futures::stream::once(async { Ok(first) }), second);
            let headers = [
                ("content-encoding", "gzip"),
                ("surrogate-control", "content=\"ESI/1.0\""),
                ("x-origin", "yes"),
            ];
            response(201, &headers, support::stream(body))
        }
    })
    .await;
    let client = client(&config(&origin.base(), &[]));
    assert_eq!(client.origin().to_string(), origin.base());

    let mut headers = HeaderMap::new();
    headers.insert("accept-encoding", HeaderValue::from_static("gzip"));
    headers.insert("cookie", HeaderValue::from_static("id=7"));
    headers.insert("x-request", HeaderValue::from_static("1"));
    let mut response = client
        .send_origin(origin_request(
            Method::POST,
            "/page?q=1",
            headers,
            "payload",
        ))
        .await
        .expect("origin answers");
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(response.headers()["content-encoding"], "gzip");
    assert_eq!(response.headers()["x-origin"], "yes");
    let mut body = Vec::new();
    let head = response
        .body_mut()
        .frame()
        .await
        .expect("not the end")
        .expect("first chunk");
    body.extend_from_slice(head.data_ref().expect("a data frame"));
    more_tx.send(()).expect("origin waits for the signal");
    let rest = response
        .into_body()
        .collect()
        .await
        .expect("rest of the body");
    body.extend_from_slice(&rest.to_bytes());
    assert_eq!(body, encoded, "the body is passed through as encoded");

    let received = origin.received();
    assert_eq!(received[0].method, Method::POST);
    assert_eq!(received[0].uri, "/page?q=1");
    for (name, value) in [
        ("accept-encoding", "gzip"),
        ("cookie", "id=7"),
        ("x-request", "1"),
        ("surrogate-capability", CAPABILITY),
    ] {
        assert_eq!(values(&origin, name), [value], "{name}");
    }
}

#[tokio::test]
async fn send_origin_does_not_follow_redirects() {
    let target = ok_server("target").await;
    let location = target.url("/there");
    let origin = support::serve(move |_req| {
        let location = location.clone();
        async move { response(302, &[("location", &location)], full("")) }
    })
    .await;
    let client = client(&config(&origin.base(), &[(&target.base(), true, false)]));
    let response = client
        .send_origin(origin_request(Method::GET, "/here", HeaderMap::new(), ""))
        .await
        .expect("origin answers");
    assert_eq!(response.status(), StatusCode::FOUND);
    assert_eq!(
        response.headers()["location"],
        target.url("/there").as_str()
    );
    assert_eq!(target.connections().await, 0);
}

#[tokio::test]
async fn send_origin_failures() {
    let slow = support::serve(|_req| async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        response(200, &[], full("late"))
    })
    .await;
    let closed = format!("http://127.0.0.1:{}", support::closed_port());
    // (origin, path, kind)
    let cases: &[(&str, &str, &str)] = &[
        (&slow.base(), "/", "timeout"),
        (&closed, "/", "connect"),
        (&slow.base(), "relative", "refused"),
        (&slow.base(), "@evil.test/", "refused"),
    ];
    for (origin, path, kind) in cases {
        let mut config = config(origin, &[]);
        config.fetch.layout_timeout_ms = 100;
        let client = client(&config);
        match client
            .send_origin(origin_request(Method::GET, path, HeaderMap::new(), ""))
            .await
        {
            Err(e) => assert_eq!(e.kind().as_str(), *kind, "{origin}{path}: {e}"),
            Ok(response) => panic!("{origin}{path}: {}", response.status()),
        }
    }
}

/// A request to the origin with a whole body.
fn origin_request(
    method: Method,
    path: &str,
    headers: HeaderMap,
    body: &'static str,
) -> OriginRequest {
    OriginRequest {
        method,
        path_and_query: path.to_owned(),
        headers,
        body: http_body_util::Full::new(Bytes::from_static(body.as_bytes()))
            .map_err(|never| match never {})
            .boxed(),
    }
}
