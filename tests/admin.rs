//! The admin endpoints' access rules, each refusal with its status and body: no token, a wrong
//! token, a client that is not on loopback when no token is set, a purge target that is not a
//! URL, a purge with the wrong parameters, and a method an endpoint does not take.

use std::process::Command;

use esi_proxy::config::Config;
use http::{Method, StatusCode};

use crate::support::process::{self, bin, Proc, Watch};
use crate::support::{client, html, proxy, serve};

/// README: "`GET /_esi/health` (public ...), `GET /_esi/metrics` ... and `POST
/// /_esi/purge?url=U` or `?prefix=P` ... need `Authorization: Bearer <server.admin_token>`".
#[tokio::test]
async fn admin_requests_are_refused_unless_authorised_and_well_formed() {
    let origin = serve(|_| async { html("origin") }).await;
    let mut config = Config::default();
    config.server.admin_token = "s3cret".into();
    let proxy = proxy(&origin.base(), config).await;
    let unauthorized = (StatusCode::UNAUTHORIZED, "401 Unauthorized\n");
    let not_a_url = (
        StatusCode::BAD_REQUEST,
        "400 Bad Request: purge target is not a valid URL\n",
    );
    let one_of = (
        StatusCode::BAD_REQUEST,
        "400 Bad Request: purge takes exactly one of url=, prefix= or key= (key= may repeat), and soft=1\n",
    );
    let not_allowed = (
        StatusCode::METHOD_NOT_ALLOWED,
        "405 Method Not Allowed: method not allowed on this endpoint\n",
    );
    /// A request (method, path, Authorization) and its answer (status, body; "": any body).
    type Case<'a> = (Method, &'a str, Option<&'a str>, (StatusCode, &'a str));
    let cases: &[Case] = &[
        (Method::GET, "/_esi/metrics", None, unauthorized),
        (
            Method::GET,
            "/_esi/metrics",
            Some("Bearer wrong"),
            unauthorized,
        ),
        (
            Method::GET,
            "/_esi/metrics",
            Some("Bearer s3cre"),
            unauthorized,
        ),
        (
            Method::GET,
            "/_esi/metrics",
            Some("Bearer s3cret2"),
            unauthorized,
        ),
        (Method::GET, "/_esi/metrics", Some("s3cret"), unauthorized),
        (
            Method::GET,
            "/_esi/metrics",
            Some("Basic s3cret"),
            unauthorized,
        ),
        (Method::POST, "/_esi/purge?url=/x", None, unauthorized),
        (
            Method::POST,
            "/_esi/purge?url=/x",
            Some("Bearer wrong"),
            unauthorized,
        ),
        (
            Method::GET,
            "/_esi/debug/page",
            Some("Bearer wrong"),
            unauthorized,
        ),
        (Method::GET, "/_esi/debug/page", None, unauthorized),
        (Method::GET, "/_esi/health?detail", None, unauthorized),
        (
            Method::POST,
            "/_esi/purge?url=http%3A%2F%2F%5B%3A%3A1",
            Some("Bearer s3cret"),
            not_a_url,
        ),
        (
            Method::POST,
            "/_esi/purge?url=not%20a%20url",
            Some("Bearer s3cret"),
            not_a_url,
        ),
        (
            Method::POST,
            "/_esi/purge?bogus=1",
            Some("Bearer s3cret"),
            one_of,
        ),
        (Method::POST, "/_esi/purge", Some("Bearer s3cret"), one_of),
        (
            Method::POST,
            "/_esi/purge?url=/a&prefix=/b",
            Some("Bearer s3cret"),
            one_of,
        ),
        (
            Method::GET,
            "/_esi/purge?url=/x",
            Some("Bearer s3cret"),
            not_allowed,
        ),
        (Method::POST, "/_esi/health", None, not_allowed),
        (
            Method::DELETE,
            "/_esi/metrics",
            Some("Bearer s3cret"),
            not_allowed,
        ),
        (
            Method::GET,
            "/_esi/nothing",
            Some("Bearer s3cret"),
            (StatusCode::NOT_FOUND, "404 Not Found\n"),
        ),
    ];
    for (method, path, auth, (want_status, want_body)) in cases {
        let mut req = client().request(method.clone(), proxy.url(path));
        if let Some(auth) = auth {
            req = req.header("authorization", *auth);
        }
        let resp = req.send().await.expect("answered");
        let status = resp.status();
        let body = resp.text().await.expect("body");
        assert_eq!(status, *want_status, "{method} {path} {auth:?}: {body}");
        if !want_body.is_empty() {
            assert_eq!(body, *want_body, "{method} {path} {auth:?}");
        }
    }
    // The same requests, authorised and well-formed, are answered.
    let ok = |method: Method, path: &str| {
        client()
            .request(method, proxy.url(path))
            .bearer_auth("s3cret")
            .send()
    };
    assert_eq!(
        ok(Method::GET, "/_esi/metrics").await.expect("ok").status(),
        200
    );
    assert_eq!(
        ok(Method::POST, "/_esi/purge?url=/x")
            .await
            .expect("ok")
            .status(),
        200
    );
    assert_eq!(
        ok(Method::GET, "/_esi/health").await.expect("ok").status(),
        200
    );
    assert_eq!(origin.hits(), 0, "no refused request reached the origin");
    assert_eq!(
        ok(Method::GET, "/_esi/debug/page")
            .await
            .expect("ok")
            .status(),
        200
    );
    assert_eq!(
        origin.hits(),
        1,
        "only the authorised debug page reached the origin"
    );
}

/// The address the proxy sees a client come from in its own network namespace: not a loopback
/// address, reachable only inside the namespace (a documentation address, TEST-NET-2).
const OUTSIDE: &str = "198.51.100.7";

/// `curl` run inside the network namespace of process `pid`: status and body of `GET url`.
async fn curl_in(pid: u32, url: &str) -> (u16, String) {
    let mut cmd = Command::new("nsenter");
    cmd.args([
        "-t",
        &pid.to_string(),
        "-n",
        "curl",
        "-s",
        "-w",
        "\n%{http_code}",
        url,
    ]);
    let out = process::output(cmd).await;
    assert!(out.status.success(), "curl {url}: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').expect("status after the body");
    (code.parse().expect("a status"), body.to_owned())
}

/// README: "The last two need `Authorization: Bearer <server.admin_token>`, or a loopback
/// client when `server.admin_from_loopback` opts in". With no token and the opt-in, a client on
/// another address is refused and a loopback client of the same proxy is answered. The proxy runs in a network namespace of its
/// own (needs `unshare`, `nsenter`, `ip` and `curl`, and root, as CI has), where a second
/// address on its loopback interface stands for a client elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_token_only_loopback_clients_reach_the_admin_endpoints() {
    let dir = std::env::temp_dir().join(format!("esi-admin-ns-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = dir.join("esi-proxy.toml");
    std::fs::write(&config, "[server]\nadmin_from_loopback = true\n").expect("write config");
    let script = format!(
        "ip link set lo up && ip addr add {OUTSIDE}/32 dev lo && exec \"$0\" serve --config {} --listen 0.0.0.0:8080",
        config.display()
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["--net", "bash", "-c", &script])
        .arg(bin())
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    let mut proxy = Proc::spawn(cmd, Watch::Stderr);
    proxy
        .line(
            "the proxy listening in its namespace (unshare needs root)",
            |l| l.contains("addr=0.0.0.0:8080").then_some(()),
        )
        .await;
    let pid = proxy.id();
    let outside = format!("http://{OUTSIDE}:8080");
    let loopback = "http://127.0.0.1:8080";
    assert_eq!(
        curl_in(pid, &format!("{outside}/_esi/metrics")).await,
        (401, "401 Unauthorized\n".to_owned())
    );
    let (status, body) = curl_in(pid, &format!("{loopback}/_esi/metrics")).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("esi_proxy_requests_total"), "{body}");
    let (status, body) = curl_in(pid, &format!("{outside}/_esi/health")).await;
    assert_eq!(status, 200, "health is public: {body}");
}
