//! Fuzz target: an include `src` with variables interpolated from hostile request values
//! (query, cookies, host, referer, user agent, language); nothing may panic, and an accepted
//! URL never holds whitespace or a control character, which could split the fragment request.
#![no_main]

use esi_proxy::esi::vars::{render_html, render_url, split_vars};
use esi_proxy::esi::{CookieAccess, Request, VarPolicy, VarString};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The src, then the request's values, separated by NUL bytes.
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\0');
    let src = parts.next().unwrap_or_default();
    let mut value = || parts.next().unwrap_or_default().to_owned();
    let req = Request::new()
        .with_query(value())
        .with_cookie(value())
        .with_host(value())
        .with_referer(value())
        .with_user_agent(value())
        .with_accept_language(value());
    let parsed = VarString::parse(src);
    let policies = [
        VarPolicy::default(),
        VarPolicy {
            cookies: CookieAccess::Only(vec!["id".into()]),
            whole_cookie_header: true,
            raw_output: true,
        },
    ];
    for policy in &policies {
        if let Ok(url) = render_url(&parsed, &req, policy) {
            assert!(
                !url.bytes()
                    .any(|b| b.is_ascii_whitespace() || b.is_ascii_control()),
                "{url:?}"
            );
        }
        if let Some(segments) = split_vars(&bytes::Bytes::copy_from_slice(src.as_bytes())) {
            let mut out = Vec::new();
            render_html(&segments, &req, policy, &mut out);
        }
    }
});
