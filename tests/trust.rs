//! Trust boundaries between the page and its fragment hosts: an untrusted host's ESI is placed
//! as it is unless its entry opts in; opted-in ESI reads no credentials and its includes carry
//! none; a variable's value never climbs the path it is written into.

use esi_proxy::config::{Config, HostConfig};

use crate::support::proxy::{client, get_with, proxy};
use crate::support::{esi, html, serve, Received, Server};

const SESSION: &str = "s3cret";

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

/// A server that answers every path with `"{tag}:{path};"`, as plain HTML.
async fn plain(tag: &'static str) -> Server {
    serve(move |req| async move { html(format!("{tag}:{};", req.uri().path())) }).await
}

/// A server answering `/frag` with `body` marked as ESI, anything else with `"{tag}:{path};"`.
async fn with_esi(tag: &'static str, body: String) -> Server {
    serve(move |req| {
        let body = body.clone();
        async move {
            match req.uri().path() {
                "/frag" => esi(body),
                p => html(format!("{tag}:{p};")),
            }
        }
    })
    .await
}

/// GETs `/page` through the proxy with the visitor's session cookie and a bearer token.
async fn visit(origin: &Server, config: Config) -> String {
    let proxy = proxy(&origin.base(), config).await;
    let cookie = format!("session={SESSION}; theme=dark");
    let headers = [
        ("cookie", cookie.as_str()),
        ("authorization", "Bearer t0ken"),
    ];
    get_with(&proxy.url("/page"), &headers).await.2
}

fn header<'a>(r: &'a Received, name: &str) -> &'a str {
    r.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
}

/// Whether any request `server` received shows the visitor's session, in its URL or headers.
fn saw_session(server: &Server) -> bool {
    server.received().iter().any(|r| {
        r.uri.to_string().contains(SESSION)
            || r.headers
                .values()
                .any(|v| v.to_str().is_ok_and(|v| v.contains(SESSION)))
    })
}

/// Trust-boundaries issue: a partner host (allowlisted, not trusted) answering with ESI had it
/// composed, so its includes reached internal hosts with the visitor's credentials. By default
/// its body is placed as literal bytes, as a fragment not marked ESI is: the markup reaches
/// the browser as written and nothing it names is fetched.
#[tokio::test]
async fn an_untrusted_hosts_esi_is_placed_as_it_is_by_default() {
    let internal = plain("internal").await;
    let markup = format!("<p><esi:include src=\"{}\"/></p>", internal.url("/private"));
    let partner = with_esi("partner", markup.clone()).await;
    let layout = format!("[<esi:include src=\"{}\"/>]", partner.url("/frag"));
    let origin = serve(move |_| {
        let layout = layout.clone();
        async move { esi(layout) }
    })
    .await;
    let mut config = Config::default();
    config.fetch.hosts.push(host(&internal, true, false));
    config.fetch.hosts.push(host(&partner, false, false));

    let body = visit(&origin, config).await;
    assert_eq!(body, format!("[{markup}]"));
    assert_eq!(internal.hits(), 0, "the partner's include was fetched");
}

/// Trust-boundaries issue: a partner fragment whose include src read `$(HTTP_COOKIE{session})`
/// made the proxy send every visitor's session to the partner. Opted in with `esi = true`, its
/// variables read no cookie: not in a src, a test or `esi:vars`.
#[tokio::test]
async fn an_untrusted_fragments_variables_read_no_cookie() {
    let markup = "<esi:include src=\"/x?s=$(HTTP_COOKIE{session})&t=$(HTTP_COOKIE{theme})\"/>\
                  <esi:choose><esi:when test=\"$(HTTP_COOKIE{session}) == 's3cret'\">\
                  <esi:include src=\"/leak\"/></esi:when></esi:choose>\
                  <esi:vars>[$(HTTP_COOKIE{session})]</esi:vars>"
        .to_owned();
    let partner = with_esi("partner", markup).await;
    let layout = format!("<esi:include src=\"{}\"/>", partner.url("/frag"));
    let origin = serve(move |_| {
        let layout = layout.clone();
        async move { esi(layout) }
    })
    .await;
    let mut config = Config::default();
    config.fetch.hosts.push(host(&partner, false, true));

    let body = visit(&origin, config).await;
    assert_eq!(body, "partner:/x;[]");
    let queries: Vec<String> = partner
        .received()
        .iter()
        .filter(|r| r.uri.path() == "/x")
        .map(|r| r.uri.query().unwrap_or("").to_owned())
        .collect();
    assert_eq!(queries, ["s=&t="], "the partner's include was fetched once");
    assert_eq!(partner.hits_on("/leak"), 0, "a test read the session");
    assert!(!saw_session(&partner), "the partner received the session");
}

/// Trust-boundaries issue: an include in a partner's ESI fragment naming a trusted host's URL
/// was fetched with the visitor's Cookie and Authorization. It is fetched without them, while
/// the same URL included from the layout gets them; and the trusted fragment, nested under the
/// partner, is composed with the partner's (least) trust.
#[tokio::test]
async fn an_untrusted_fragments_includes_carry_no_credentials() {
    let internal = with_esi(
        "internal",
        "<esi:include src=\"/x?s=$(HTTP_COOKIE{session})\"/>".to_owned(),
    )
    .await;
    let private = internal.url("/private");
    let nested = internal.url("/frag");
    let markup = format!("<esi:include src=\"{private}\"/><esi:include src=\"{nested}\"/>");
    let partner = with_esi("partner", markup).await;
    let layout = format!(
        "<esi:include src=\"{private}\"/>|<esi:include src=\"{}\"/>",
        partner.url("/frag")
    );
    let origin = serve(move |_| {
        let layout = layout.clone();
        async move { esi(layout) }
    })
    .await;
    let mut config = Config::default();
    config.fetch.hosts.push(host(&internal, true, false));
    config.fetch.hosts.push(host(&partner, false, true));

    let body = visit(&origin, config).await;
    assert_eq!(body, "internal:/private;|internal:/private;internal:/x;");
    let mut got: Vec<String> = internal
        .received()
        .iter()
        .map(|r| {
            format!(
                "{} {} {}",
                r.uri,
                header(r, "cookie"),
                header(r, "authorization")
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            "/frag - -",
            "/private - -",
            "/private session=s3cret; theme=dark Bearer t0ken",
            "/x?s= - -",
        ]
    );
    assert!(!saw_session(&partner), "the partner received the session");
}
/// Trust-boundaries issue: a variable whose value is `..` passed percent-encoding untouched,
/// so `/svc/users/$(HTTP_COOKIE{uid})/card` with `uid=..` fetched `/svc/card`. A value that
/// would make a path segment `.` or `..` refuses the include, which takes its `alt`; a value
/// with dots that is not one is fetched as it is.
#[tokio::test]
async fn a_variable_never_climbs_the_path() {
    let layout = "<esi:include src=\"/svc/users/$(HTTP_COOKIE{uid})/card\" alt=\"/svc/alt\"/>";
    let origin = serve(move |req| async move {
        match req.uri().path() {
            "/page" => esi(layout),
            p => html(format!("{p};")),
        }
    })
    .await;
    let proxy = proxy(&origin.base(), Config::default()).await;
    let mut bodies = Vec::new();
    for uid in ["..", ".", "7", "..."] {
        let body = client()
            .get(proxy.url("/page"))
            .header("cookie", format!("uid={uid}"))
            .send()
            .await
            .expect("response")
            .text()
            .await
            .expect("body");
        bodies.push(body);
    }
    assert_eq!(
        bodies,
        [
            "/svc/alt;",
            "/svc/alt;",
            "/svc/users/7/card;",
            "/svc/users/.../card;"
        ]
    );
    let paths: Vec<String> = origin
        .received()
        .iter()
        .map(|r| r.uri.path().to_owned())
        .filter(|p| p != "/page")
        .collect();
    assert_eq!(
        paths,
        [
            "/svc/alt",
            "/svc/alt",
            "/svc/users/7/card",
            "/svc/users/.../card"
        ]
    );
}
