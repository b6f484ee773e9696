//! The client's unit tests: allowlist decisions, the header policy, error kinds, bodies.

use http::StatusCode;

use super::super::decode::Decoder;
use super::super::{FetchError, FragmentRequest, SystemLookup};
use super::*;
use crate::config::{Config, HostConfig};
use crate::headers::CAPABILITY;

fn client(hosts: &[(&str, bool, bool)]) -> HttpClient {
    let mut config = Config::default();
    config.server.origin = "http://origin.test:8081".into();
    config.fetch.forward_headers = vec!["Accept-Language".into(), "user-agent".into()];
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
    let mut settings = config.settings().expect("valid test config");
    // Validation refuses `cookie` here; the client drops it too, for a hand-built `Settings`.
    settings
        .fetch
        .forward_headers
        .push(HeaderName::from_static("cookie"));
    HttpClient::new(&settings, Arc::new(SystemLookup)).expect("test config is valid")
}

#[test]
fn allowlist() {
    let client = client(&[
        ("https://frag.test", false, false),
        ("http://trusted.test:9000", true, false),
        ("http://10.1.2.3:8000", false, false),
        ("http://[fd00:ec2::254]:80", false, false),
    ]);
    // (url, Ok(trusted) or Err(part of the reason))
    let cases: &[(&str, Result<bool, &str>)] = &[
        ("http://origin.test:8081/a", Ok(true)),
        ("http://ORIGIN.test:8081/a?b#c", Ok(true)),
        ("https://frag.test/x", Ok(false)),
        ("https://frag.test:443/x", Ok(false)),
        ("http://trusted.test:9000/", Ok(true)),
        ("http://10.1.2.3:8000/f", Ok(false)),
        ("http://[fd00:ec2::254]/latest", Ok(false)),
        ("http://origin.test:8082/a", Err("host not in allowlist")),
        ("https://origin.test:8081/a", Err("host not in allowlist")),
        ("http://frag.test/x", Err("host not in allowlist")),
        ("https://frag.test.evil.test/", Err("host not in allowlist")),
        ("http://trusted.test/", Err("host not in allowlist")),
        (
            "http://10.1.2.3:8001/f",
            Err("10.1.2.3 is a private address"),
        ),
        (
            "http://127.0.0.1:8081/",
            Err("127.0.0.1 is a loopback address"),
        ),
        (
            "http://2130706433:8081/",
            Err("127.0.0.1 is a loopback address"),
        ),
        (
            "http://169.254.169.254/latest/meta-data/",
            Err("169.254.169.254 is a cloud metadata address"),
        ),
        (
            "http://[::ffff:169.254.169.254]/",
            Err("cloud metadata address"),
        ),
        ("http://[::1]:8081/", Err("::1 is a loopback address")),
        ("http://100.64.0.1/", Err("shared (CGNAT) address")),
        ("http://8.8.8.8/", Err("host not in allowlist")),
        ("http://user@origin.test:8081/", Err("user info")),
        ("http://:pw@origin.test:8081/", Err("user info")),
        ("ftp://origin.test:8081/", Err("scheme \"ftp\"")),
        ("data:text/html,hi", Err("scheme \"data\"")),
    ];
    for (url, want) in cases {
        let parsed = Arc::new(Url::parse(url).expect("test URLs parse"));
        match (client.check(&parsed), want) {
            (Ok(allowed), Ok(trusted)) => {
                assert_eq!(allowed.access().trusted, *trusted, "url: {url}");
                // No entry here opts in to ESI: only the trusted hosts' ESI is processed.
                assert_eq!(allowed.access().esi, *trusted, "url: {url}");
                let lowered = allowed.clone().untrusted().access();
                assert!(!lowered.trusted, "url: {url}");
                assert_eq!(lowered.esi, allowed.access().esi, "url: {url}");
                assert_eq!(*allowed, *parsed, "url: {url}");
            }
            (Err(FetchError::Refused { url: shown, reason }), Err(part)) => {
                assert!(
                    reason.contains(part),
                    "url: {url}: reason {reason:?} should contain {part:?}"
                );
                assert!(
                    !shown.contains("pw"),
                    "url: {url}: password shown in {shown:?}"
                );
            }
            (got, _) => panic!("url: {url}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn header_policy() {
    let client = client(&[]);
    let mut from_client = HeaderMap::new();
    for (name, value) in [
        ("accept-language", "de"),
        ("accept-language", "en;q=0.5"),
        ("user-agent", "test"),
        ("cookie", "session=1"),
        ("authorization", "Bearer t"),
        ("proxy-authorization", "Basic x"),
        ("range", "bytes=0-1"),
        ("if-none-match", "\"e\""),
        ("if-modified-since", "Mon, 01 Jan 2024 00:00:00 GMT"),
        ("accept-encoding", "zstd"),
        ("connection", "close"),
        ("host", "proxy.test"),
        ("surrogate-capability", "evil=\"ESI/1.0\""),
        ("x-forwarded-for", "192.0.2.1"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "www.test"),
        ("x-custom", "no"),
    ] {
        from_client.append(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    let always: &[(&str, &[&str])] = &[
        ("accept-language", &["de", "en;q=0.5"]),
        ("user-agent", &["test"]),
        ("x-forwarded-for", &["192.0.2.1"]),
        ("x-forwarded-proto", &["https"]),
        ("x-forwarded-host", &["www.test"]),
        ("surrogate-capability", &[CAPABILITY]),
        ("proxy-authorization", &[]),
        ("range", &[]),
        ("if-none-match", &[]),
        ("if-modified-since", &[]),
        ("accept-encoding", &[]),
        ("connection", &[]),
        ("host", &[]),
        ("x-custom", &[]),
    ];
    let credentials: &[(&str, &[&str])] =
        &[("cookie", &["session=1"]), ("authorization", &["Bearer t"])];
    for trusted in [false, true] {
        let sent = client.shared.fragment_headers(&from_client, trusted);
        let mut want: Vec<(&str, &[&str])> = always.to_vec();
        for (name, values) in credentials {
            want.push((name, if trusted { values } else { &[] }));
        }
        for (name, values) in want {
            let got: Vec<&str> = sent
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            assert_eq!(got, values, "header {name}, trusted: {trusted}");
        }
    }
}

#[test]
fn error_kinds() {
    let url = || "http://a.test/".to_owned();
    let cases: Vec<(FetchError, &str, bool)> = vec![
        (
            FetchError::Refused {
                url: url(),
                reason: "r".into(),
            },
            "refused",
            false,
        ),
        (
            FetchError::Timeout {
                url: url(),
                after: Duration::from_millis(5),
            },
            "timeout",
            true,
        ),
        (
            FetchError::Connect {
                url: url(),
                message: "m".into(),
            },
            "connect",
            false,
        ),
        (
            FetchError::Status {
                url: url(),
                status: StatusCode::NOT_FOUND,
            },
            "status",
            false,
        ),
        (
            FetchError::TooLarge {
                url: url(),
                limit: 1,
            },
            "too_large",
            false,
        ),
        (
            FetchError::Truncated {
                url: url(),
                message: "m".into(),
            },
            "truncated",
            false,
        ),
        (
            FetchError::Malformed {
                url: url(),
                message: "m".into(),
            },
            "malformed",
            false,
        ),
        (
            FetchError::Decode {
                url: url(),
                message: "m".into(),
            },
            "decode",
            false,
        ),
        (
            FetchError::Transport {
                url: url(),
                message: "m".into(),
            },
            "transport",
            false,
        ),
    ];
    for (error, kind, timeout) in cases {
        assert_eq!(error.kind().as_str(), kind, "{error}");
        assert_eq!(error.is_timeout(), timeout, "{error}");
        assert_eq!(error.url(), "http://a.test/", "{error}");
        assert!(error.to_string().starts_with("http://a.test/: "), "{error}");
    }
}

#[test]
fn futures_are_send() {
    fn send<T: Send>(_: &T) {}
    let client = client(&[]);
    let origin = client.send_origin(OriginRequest {
        method: Method::GET,
        path_and_query: "/".into(),
        headers: HeaderMap::new(),
        body: OriginBody::default(),
    });
    send(&origin);
    let url = Arc::new(Url::parse("http://origin.test:8081/f").expect("valid"));
    let headers = Arc::default();
    let req = FragmentRequest {
        url: client.check(&url).expect("the origin is allowed"),
        client_headers: headers,
        timeout: Duration::from_secs(1),
        options: Default::default(),
        keep_status: false,
    };
    send(&client.fetch(req));
}

#[test]
fn body_collected_without_copy_when_one_chunk() {
    let one = Bytes::from_static(b"only chunk");
    let mut body = Collected::Empty;
    body.push(one.clone(), 100);
    let got = body.into_bytes();
    assert_eq!(
        got.as_ptr(),
        one.as_ptr(),
        "a single chunk is returned as is"
    );

    let mut body = Collected::Empty;
    for chunk in ["ab", "cd", "ef"] {
        body.push(Bytes::from_static(chunk.as_bytes()), 6);
    }
    assert_eq!(body.into_bytes(), Bytes::from_static(b"abcdef"));
    assert_eq!(Collected::Empty.into_bytes(), Bytes::new());
}

#[test]
fn content_coding_names_are_read_without_case_and_lists_kept_whole() {
    let cases: &[(&[&str], Coding)] = &[
        (&[], Coding::Identity),
        (&["identity"], Coding::Identity),
        (&[" Identity "], Coding::Identity),
        (&["gzip"], Coding::Named("gzip".into())),
        (&["GZIP"], Coding::Named("gzip".into())),
        (&[" br "], Coding::Named("br".into())),
        (&["gzip, br"], Coding::Named("gzip, br".into())),
        (&["gzip", "br"], Coding::Named("gzip, br".into())),
        (&["identity", "gzip"], Coding::Named("gzip".into())),
        (&["x-unheard-of"], Coding::Named("x-unheard-of".into())),
    ];
    for (values, want) in cases {
        let mut headers = HeaderMap::new();
        for value in *values {
            headers.append(CONTENT_ENCODING, HeaderValue::from_static(value));
        }
        assert_eq!(content_coding(&headers), *want, "{values:?}");
    }
    // A list names no one decoder, so it is refused rather than half decoded.
    assert!(Decoder::for_encoding("gzip, br", 10).is_none());
}
