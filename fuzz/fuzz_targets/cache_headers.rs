//! Fuzz target: arbitrary response headers (`name: value` lines) through the TTL policy, which
//! parses `Cache-Control`, `Surrogate-Control`, `Age` and `Vary`, and through the header rules
//! of `headers.rs`; nothing may panic, and a stored TTL or stale window never exceeds a year.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use esi_proxy::cache::{CachePolicy, Credentials, Decision};
use esi_proxy::config::Config;
use esi_proxy::headers;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use libfuzzer_sys::fuzz_target;
use url::Url;

/// What the policy caps every age at.
const YEAR: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// Rules with stale windows and key headers, so every branch of the policy is reachable.
const CONFIG: &str = r#"
[cache]
default_ttl_s = 7
stale_while_revalidate_s = 2
stale_if_error_s = 3
key_headers = ["x-device"]
[[cache.rules]]
match = "/rule/*"
ttl_s = 11
stale_while_revalidate_s = 5
[[cache.rules]]
match = "/auth/*"
ttl_s = 17
key_headers = ["cookie", "authorization"]
"#;

fn policy() -> &'static CachePolicy {
    static POLICY: OnceLock<CachePolicy> = OnceLock::new();
    POLICY.get_or_init(|| {
        let config = Config::parse(CONFIG, "fuzz.toml".as_ref()).expect("valid");
        CachePolicy::from_config(&config.settings().expect("valid").cache)
    })
}

fuzz_target!(|data: &[u8]| {
    let (selector, data) = data.split_first().unwrap_or((&0, data));
    let mut map = HeaderMap::new();
    for line in data.split(|b| *b == b'\n') {
        let (name, value) = match line.iter().position(|b| *b == b':') {
            Some(i) => (&line[..i], &line[i + 1..]),
            // A bare line is a value of the header the selector picks.
            None => {
                let names: [&[u8]; 4] = [b"cache-control", b"surrogate-control", b"age", b"vary"];
                (names[usize::from(*selector) % 4], line)
            }
        };
        let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        else {
            continue;
        };
        map.append(name, value);
    }
    let paths = ["/plain", "/rule/a", "/auth/b"];
    let url = Url::parse(&format!(
        "http://a.test{}",
        paths[usize::from(*selector >> 2) % 3]
    ))
    .expect("valid");
    let credentials = Credentials {
        cookie: selector & 0x10 != 0,
        authorization: selector & 0x20 != 0,
    };
    if let Decision::Store {
        ttl,
        stale_while_revalidate,
        stale_if_error,
        ..
    } = policy().decide_for(&url, StatusCode::OK, &map, credentials)
    {
        assert!(!ttl.is_zero() && ttl <= YEAR, "ttl {ttl:?}");
        assert!(stale_while_revalidate <= YEAR && stale_if_error <= YEAR);
    }
    let _ = headers::is_esi(&map);
    for value in map.get_all(headers::SURROGATE_CONTROL) {
        if let Ok(text) = value.to_str() {
            let _ = headers::surrogate_control_has_esi(text);
            let _ = headers::split_unquoted(text, ',');
        }
    }
    let out = headers::client_response_headers(&map);
    assert!(!out.contains_key(headers::SURROGATE_CONTROL));
    let mut composed = headers::composed_headers(&map);
    headers::make_private(&mut composed);
});
