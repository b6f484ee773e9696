//! `esi-proxy serve` as a real process: SIGTERM with a page in flight stops new connections,
//! lets the page finish, and exits 0.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::Notify;

use crate::support::harness::{client, esi, html, serve};
use crate::support::{bin, lines, wait_for_line};

const MUST: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_pages_finish_and_exits_zero() {
    let gate = Arc::new(Notify::new());
    let g = Arc::clone(&gate);
    let origin = serve(move |req| {
        let gate = Arc::clone(&g);
        async move {
            match req.uri().path() {
                "/page" => esi("<p>start</p><esi:include src=\"/slow\"/><p>end</p>"),
                _ => {
                    gate.notified().await;
                    html("SLOW")
                }
            }
        }
    })
    .await;
    let mut child = Command::new(bin())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--origin",
            &origin.url(),
        ])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("esi-proxy starts");
    let mut log = lines(child.stderr.take().expect("piped"));
    let addr = wait_for_line(&mut log, "the listening address", |line| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix("addr="))
            .map(str::to_owned)
    })
    .await;

    let resp = client()
        .get(format!("http://{addr}/page"))
        .send()
        .await
        .expect("page");
    let mut body = resp.bytes_stream();
    let first = tokio::time::timeout(MUST, body.next())
        .await
        .expect("first bytes")
        .expect("chunk")
        .expect("ok");
    assert_eq!(&first[..], b"<p>start</p>");

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    wait_for_line(&mut log, "shutting down", |line| {
        line.contains("shutting down").then_some(())
    })
    .await;
    let refused = tokio::net::TcpStream::connect(&addr).await;
    assert!(refused.is_err(), "no new connections once shutting down");

    gate.notify_one();
    let mut rest = Vec::new();
    while let Some(chunk) = tokio::time::timeout(MUST, body.next())
        .await
        .expect("in-flight page finishes")
    {
        rest.extend_from_slice(&chunk.expect("the page completes"));
    }
    assert_eq!(rest, b"SLOW<p>end</p>");
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("joined")
        .expect("waits");
    assert!(exit.success(), "exit status {exit:?}");
    // The pipe closes when the process exits, so this ends.
    let mut tail = Vec::new();
    while let Some(line) = log.recv().await {
        tail.push(line);
    }
    assert!(tail.iter().any(|l| l.contains("drained")), "{tail:?}");
    assert!(
        tail.iter()
            .any(|l| l.contains("request") && l.contains("path=/page") && l.contains("status=200")),
        "the access log has the page: {tail:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_starts_with_no_setup_serves_the_page_and_stops_on_ctrl_c() {
    let mut child = Command::new(bin())
        .args(["demo", "--listen", "127.0.0.1:0"])
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("esi-proxy demo starts");
    let mut out = lines(child.stdout.take().expect("piped"));
    let url = wait_for_line(&mut out, "the URL to open", |line| {
        line.trim()
            .strip_prefix("open")
            .map(|u| u.trim().to_owned())
    })
    .await;
    let page = client()
        .get(&url)
        .send()
        .await
        .expect("page")
        .text()
        .await
        .expect("text");
    assert!(
        page.contains("Trailhead 2 Waterproof Hiking Jacket"),
        "{page}"
    );
    assert!(!page.contains("esi:"));
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("joined")
        .expect("waits");
    assert!(exit.success(), "exit status {exit:?}");
}
