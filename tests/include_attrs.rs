//! The include attributes past ESI 1.0 and `$(HTTP_<NAME>)`, end to end over loopback: a
//! fragment service that echoes what it received (method, path and query, body, headers)
//! proves each attribute, the cache's answer to `ttl` and `no-store` is counted at the
//! origin, and credentials never reach a host not trusted with them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use esi_proxy::config::{Config, HostConfig};
use http_body_util::BodyExt;

use crate::support::proxy::{client, proxy, Proxy};
use crate::support::{esi, full, html, response, serve, Server, HTML, MUST};

/// What the echo service answers: `[METHOD path?query body=.. h=name:value;..]`, with the
/// headers named in `shown` only (in that order, `-` when absent).
async fn echo(shown: &'static [&'static str]) -> Server {
    serve(move |req| async move {
        let (parts, body) = req.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        let mut out = format!(
            "[{} {} body={}",
            parts.method,
            parts.uri,
            String::from_utf8_lossy(&body)
        );
        for name in shown {
            let values: Vec<&str> = parts
                .headers
                .get_all(*name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            let value = if values.is_empty() {
                "-".to_owned()
            } else {
                values.join("|")
            };
            out.push_str(&format!(" {name}={value}"));
        }
        out.push(']');
        html(out)
    })
    .await
}

/// An origin serving `layout` at `/page`; other paths go to `fragments`.
async fn origin_with<F>(layout: String, fragments: F) -> Server
where
    F: Fn(&str) -> Option<hyper::Response<crate::support::Body>> + Send + Sync + 'static,
{
    let fragments = Arc::new(fragments);
    serve(move |req| {
        let layout = layout.clone();
        let fragments = Arc::clone(&fragments);
        async move {
            let path = req.uri().path().to_owned();
            if path == "/page" {
                return esi(layout);
            }
            fragments(&path).unwrap_or_else(|| html(format!("origin:{path}")))
        }
    })
    .await
}

fn host(server: &Server, trusted: bool, esi: bool) -> HostConfig {
    HostConfig {
        url: server.base(),
        trusted,
        esi,
        private_network: true,
        http2: false,
        breaker: None,
    }
}

/// GETs `path` with `headers`, within the generous bound.
async fn page(proxy: &Proxy, path: &str, headers: &[(&str, &str)]) -> String {
    let mut req = client().get(proxy.url(path));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    tokio::time::timeout(MUST, async {
        req.send()
            .await
            .expect("response")
            .text()
            .await
            .expect("body")
    })
    .await
    .expect("bounded")
}

/// `method="POST"` with `entity`, `<esi:param>`s, and the three header edits all reach the
/// fragment as written; an assigned variable in `src` is percent-encoded.
#[tokio::test]
async fn post_entity_params_and_header_edits_reach_the_fragment() {
    let svc = echo(&["x-device", "x-extra", "accept-language", "content-type"]).await;
    let layout = format!(
        "<esi:assign name=\"pid\" value=\"'a/b 7'\"/>\
         <esi:include src=\"{}/item/$(pid)\" method=\"POST\" entity=\"q=$(QUERY_STRING{{q}})&amp;who=$(HTTP_COOKIE{{uid}})\" \
         setheaders=\"X-Device: $(HTTP_X_DEVICE), Content-Type: application/x-www-form-urlencoded\" \
         appendheaders=\"X-Extra: one\" removeheaders=\"Accept-Language\">\
         <esi:param name=\"id\" value=\"$(pid)\"/><esi:param name=\"lang\" value=\"de fr\"/></esi:include>",
        svc.base()
    );
    let origin = origin_with(layout, |_| None).await;
    let mut config = Config::default();
    config.fetch.hosts = vec![host(&svc, true, false)];
    let proxy = proxy(&origin.base(), config).await;
    let body = page(
        &proxy,
        "/page?q=a+b",
        &[
            ("x-device", "tablet"),
            ("accept-language", "de"),
            ("cookie", "uid=ann"),
        ],
    )
    .await;
    assert_eq!(
        body,
        "[POST /item/a%2Fb%207?id=a%2Fb%207&lang=de%20fr body=q=a+b&who=ann x-device=tablet \
         x-extra=one accept-language=- content-type=application/x-www-form-urlencoded]"
    );
    let got = svc.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].method, http::Method::POST);
}

/// `ttl` overrides the response's headers (`no-cache`, `max-age=0`): one fetch serves the next
/// page; without it each page fetches. It never stores what the policy refuses for safety: a
/// `private` or `Set-Cookie` response is fetched every time, whatever the tag says.
#[tokio::test]
async fn ttl_overrides_headers_but_never_safety() {
    let hits = Arc::new([(); 4].map(|_| AtomicUsize::new(0)));
    let counted = Arc::clone(&hits);
    let layout = "<esi:include src=\"/nocache\" ttl=\"1h\"/>|<esi:include src=\"/maxage0\"/>|\
                  <esi:include src=\"/private\" ttl=\"1h\"/>|<esi:include src=\"/cookie\" ttl=\"5m\"/>"
        .to_owned();
    let origin = origin_with(layout, move |path| {
        let (i, cc, extra): (usize, &str, Option<(&str, &str)>) = match path {
            "/nocache" => (0, "no-cache", None),
            "/maxage0" => (1, "max-age=0", None),
            "/private" => (2, "private, max-age=600", None),
            "/cookie" => (3, "max-age=600", Some(("set-cookie", "s=1"))),
            _ => return None,
        };
        let n = counted[i].fetch_add(1, Ordering::SeqCst) + 1;
        let mut headers = vec![HTML, ("cache-control", cc)];
        headers.extend(extra);
        Some(response(200, &headers, full(format!("{path}#{n}"))))
    })
    .await;
    let proxy = proxy(&origin.base(), Config::default()).await;
    let first = page(&proxy, "/page", &[]).await;
    assert_eq!(first, "/nocache#1|/maxage0#1|/private#1|/cookie#1");
    let second = page(&proxy, "/page", &[]).await;
    assert_eq!(second, "/nocache#1|/maxage0#2|/private#2|/cookie#2");
    let counts: Vec<usize> = hits.iter().map(|h| h.load(Ordering::SeqCst)).collect();
    assert_eq!(counts, [1, 2, 2, 2]);
}

/// `no-store="on"`: never read from the cache (a stored copy does not answer it) and never
/// written (a later plain include still fetches).
#[tokio::test]
async fn no_store_neither_reads_nor_writes_the_cache() {
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&hits);
    let origin = serve(move |req| {
        let counted = Arc::clone(&counted);
        async move {
            match req.uri().path() {
                "/nostore" => esi("<esi:include src=\"/f\" no-store=\"on\"/>"),
                "/plain" => esi("<esi:include src=\"/f\"/>"),
                _ => {
                    let n = counted.fetch_add(1, Ordering::SeqCst) + 1;
                    let headers = [HTML, ("cache-control", "max-age=600")];
                    response(200, &headers, full(format!("f#{n}")))
                }
            }
        }
    })
    .await;
    let proxy = proxy(&origin.base(), Config::default()).await;
    assert_eq!(page(&proxy, "/nostore", &[]).await, "f#1");
    // Not written: the plain include finds nothing and fetches (and stores).
    assert_eq!(page(&proxy, "/plain", &[]).await, "f#2");
    assert_eq!(page(&proxy, "/plain", &[]).await, "f#2");
    // Not read: the stored copy does not answer it.
    assert_eq!(page(&proxy, "/nostore", &[]).await, "f#3");
    assert_eq!(hits.load(Ordering::SeqCst), 3);
}

/// `maxwait` is the include's own deadline: a fragment far slower than it takes its `alt`
/// well before the fragment deadline would have passed.
#[tokio::test]
async fn maxwait_fires_the_fallback() {
    let origin = serve(|req| async move {
        match req.uri().path() {
            "/page" => esi("[<esi:include src=\"/slow\" alt=\"/fast\" maxwait=\"100\"/>]"),
            "/slow" => {
                tokio::time::sleep(Duration::from_secs(8)).await;
                html("slow")
            }
            _ => html("fast"),
        }
    })
    .await;
    let mut config = Config::default();
    config.fetch.fragment_timeout_ms = 9000;
    config.fetch.page_timeout_ms = 10_000;
    let proxy = proxy(&origin.base(), config).await;
    let started = Instant::now();
    assert_eq!(page(&proxy, "/page", &[]).await, "[fast]");
    // Far under the 8 s the fragment takes and the 9 s fragment deadline.
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
}

/// `dca="none"` places a marked fragment's ESI as it is; `dca="esi"` processes an unmarked
/// one, but only from a host that may send ESI: a partner host's stays literal.
#[tokio::test]
async fn dca_chooses_processing_within_the_trust_rules() {
    let partner = serve(|_req| async move { html("<esi:include src=\"/inner\"/>") }).await;
    let layout = format!(
        "<esi:include src=\"/marked\" dca=\"none\"/>|<esi:include src=\"/unmarked\" dca=\"esi\"/>|\
         <esi:include src=\"/marked\"/>|<esi:include src=\"{}/x\" dca=\"esi\"/>",
        partner.base()
    );
    let origin = origin_with(layout, |path| match path {
        "/marked" => Some(esi("<esi:include src=\"/inner\"/>")),
        "/unmarked" => Some(html("<esi:include src=\"/inner\"/>")),
        "/inner" => Some(html("IN")),
        _ => None,
    })
    .await;
    let mut config = Config::default();
    config.fetch.hosts = vec![host(&partner, false, false)];
    let proxy = proxy(&origin.base(), config).await;
    let body = page(&proxy, "/page", &[]).await;
    assert_eq!(
        body,
        "<esi:include src=\"/inner\"/>|IN|IN|<esi:include src=\"/inner\"/>"
    );
    assert_eq!(origin.hits_on("/inner"), 2);
}

/// Credentials never reach a host not trusted with them: not through `setheaders` or
/// `appendheaders` (Cookie, Authorization), not through `$(HTTP_<NAME>)` in an untrusted
/// document's includes; header names only the proxy sets stay the proxy's. A trusted host
/// gets what the trusted layout sets.
#[tokio::test]
async fn credentials_never_reach_an_untrusted_host() {
    let shown: &'static [&'static str] = &[
        "cookie",
        "authorization",
        "x-forwarded-for",
        "x-device",
        "host",
    ];
    let partner_svc = echo(shown).await;
    let internal = echo(shown).await;
    // The partner's ESI (processed: `esi = true`, not trusted) reads header variables into an
    // include of the trusted internal host, and tries to set credentials on it.
    let partner_esi = format!(
        "<esi:include src=\"{}/from-partner?auth=$(HTTP_AUTHORIZATION)&amp;key=$(HTTP_X_API_KEY)&amp;dev=$(HTTP_X_DEVICE)\" \
         setheaders=\"Cookie: stolen=1, Authorization: Bearer forged\"/>",
        internal.base()
    );
    let partner = serve(move |_req| {
        let body = partner_esi.clone();
        async move { esi(body) }
    })
    .await;
    let layout = format!(
        "<esi:include src=\"{p}/svc\" setheaders=\"Cookie: sid=$(HTTP_COOKIE{{sid}}), Authorization: $(HTTP_AUTHORIZATION), Host: evil.test, X-Forwarded-For: 6.6.6.6\"/>|\
         <esi:include src=\"{i}/svc\" setheaders=\"Authorization: Bearer for-internal\"/>|\
         <esi:include src=\"{q}/esi\"/>",
        p = partner_svc.base(),
        i = internal.base(),
        q = partner.base(),
    );
    let origin = origin_with(layout, |_| None).await;
    let mut config = Config::default();
    config.esi.header_names = vec!["*".into(), "authorization".into()];
    config.fetch.forward_headers = vec!["x-device".into()];
    config.fetch.hosts = vec![
        host(&partner_svc, false, false),
        host(&internal, true, false),
        host(&partner, false, true),
    ];
    let proxy = proxy(&origin.base(), config).await;
    let body = page(
        &proxy,
        "/page",
        &[
            ("cookie", "sid=s3cr3t"),
            ("authorization", "Bearer t0ken"),
            ("x-api-key", "k3y"),
            ("x-device", "phone"),
        ],
    )
    .await;
    let parts: Vec<&str> = body.split('|').collect();
    assert_eq!(parts.len(), 3, "{body}");
    let partner_host = format!("127.0.0.1:{}", partner_svc.port());
    assert_eq!(
        parts[0],
        format!(
            "[GET /svc body= cookie=- authorization=- x-forwarded-for=127.0.0.1 x-device=phone host={partner_host}]"
        )
    );
    assert!(
        parts[1].contains("authorization=Bearer for-internal"),
        "{}",
        parts[1]
    );
    // The untrusted document read no credential and set none: only the shared X-Device.
    assert!(
        parts[2]
            .starts_with("[GET /from-partner?auth=&key=&dev=phone body= cookie=- authorization=- "),
        "{}",
        parts[2]
    );
    for server in [&partner_svc, &partner] {
        for r in server.received() {
            let text = format!("{:?} {:?}", r.uri, r.headers);
            assert!(
                !text.contains("s3cr3t") && !text.contains("t0ken") && !text.contains("k3y"),
                "{text}"
            );
        }
    }
    let dropped = proxy
        .metric("esi_proxy_include_headers_dropped_total{reason=\"credential\"}")
        .unwrap_or(0.0);
    assert_eq!(dropped, 4.0);
}

/// An include whose headers the template set goes past the cache, so one visitor's variant
/// never answers another; a header variable in `src` keys the cache by URL, so each device
/// gets its own entry while each entry is still shared.
#[tokio::test]
async fn cache_variants_do_not_cross_visitors() {
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&hits);
    let origin = serve(move |req| {
        let counted = Arc::clone(&counted);
        async move {
            match req.uri().path() {
                "/page" => esi(
                    "<esi:include src=\"/who\" setheaders=\"X-User: $(HTTP_COOKIE{uid})\"/>|\
                     <esi:include src=\"/dev?d=$(HTTP_X_DEVICE)\"/>",
                ),
                path => {
                    counted.fetch_add(1, Ordering::SeqCst);
                    let user = req
                        .headers()
                        .get("x-user")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-")
                        .to_owned();
                    let query = req.uri().query().unwrap_or("").to_owned();
                    // Cacheable by its headers: only the template's edit keeps it out.
                    let headers = [HTML, ("cache-control", "public, max-age=600")];
                    response(200, &headers, full(format!("{path}:{user}:{query}")))
                }
            }
        }
    })
    .await;
    let proxy = proxy(&origin.base(), Config::default()).await;
    let ann = [("cookie", "uid=ann"), ("x-device", "phone")];
    let bob = [("cookie", "uid=bob"), ("x-device", "desk")];
    assert_eq!(
        page(&proxy, "/page", &ann).await,
        "/who:ann:|/dev:-:d=phone"
    );
    assert_eq!(page(&proxy, "/page", &bob).await, "/who:bob:|/dev:-:d=desk");
    assert_eq!(
        page(&proxy, "/page", &ann).await,
        "/who:ann:|/dev:-:d=phone"
    );
    // /who every time (3), /dev once per device (2).
    assert_eq!(hits.load(Ordering::SeqCst), 5);
}

/// `$(HTTP_<NAME>)` in page text is HTML-escaped; `esi.header_names` limits what it reads.
#[tokio::test]
async fn header_variables_are_escaped_and_limited_by_config() {
    let origin = serve(|_req| async move {
        esi("<esi:vars>[$(HTTP_X_DEVICE)][$(HTTP_ACCEPT|'none')][$(HTTP_AUTHORIZATION|'hidden')]</esi:vars>")
    })
    .await;
    let headers = [
        ("x-device", "<b>\"x\""),
        ("accept", "text/html"),
        ("authorization", "Bearer t"),
    ];
    let open = proxy(&origin.base(), Config::default()).await;
    assert_eq!(
        page(&open, "/p", &headers).await,
        "[&lt;b&gt;&quot;x&quot;][text/html][hidden]"
    );
    let mut config = Config::default();
    config.esi.header_names = vec!["x-device".into()];
    let listed = proxy(&origin.base(), config).await;
    assert_eq!(
        page(&listed, "/p", &headers).await,
        "[&lt;b&gt;&quot;x&quot;][none][hidden]"
    );
}

/// An `entity` over its bound fails the include (its fallback is taken, the bound counted)
/// instead of sending it; one under it is sent whole.
#[tokio::test]
async fn entity_over_its_bound_takes_the_fallback() {
    let svc = echo(&[]).await;
    let five = "$(HTTP_X_BIG)".repeat(5);
    let layout = format!(
        "[<esi:include src=\"{b}/small\" method=\"POST\" entity=\"$(HTTP_X_BIG)\" onerror=\"continue\"/>]\
         [<esi:include src=\"{b}/big\" method=\"POST\" entity=\"{five}\" onerror=\"continue\"/>]",
        b = svc.base()
    );
    let origin = origin_with(layout, |_| None).await;
    let mut config = Config::default();
    config.fetch.hosts = vec![host(&svc, true, false)];
    // Room in the request head for a header a fifth of the way past the entity bound.
    config.server.max_header_bytes = 256 * 1024;
    let proxy = proxy(&origin.base(), config).await;
    let part = "x".repeat(esi_proxy::esi::include_attrs::MAX_ENTITY_BYTES / 5 + 1);
    let body = page(&proxy, "/page", &[("x-big", &part)]).await;
    assert_eq!(body, format!("[[POST /small body={part}]][]"));
    assert_eq!(svc.hits(), 1);
    assert_eq!(
        proxy.metric("esi_proxy_include_bounds_total{bound=\"entity_bytes\"}"),
        Some(1.0)
    );
}
