//! `esi-proxy serve` as a real process: SIGTERM with a page in flight stops new connections,
//! lets the page finish, and exits 0.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::Notify;

use crate::support::bin;
use crate::support::harness::{client, esi, html, serve};

const MUST: Duration = Duration::from_secs(20);

/// Reads the child's log lines until one contains `needle`; returns that line.
fn wait_for_line(
    lines: &mut impl Iterator<Item = std::io::Result<String>>,
    needle: &str,
) -> String {
    for line in lines.by_ref() {
        let line = line.expect("log line");
        if line.contains(needle) {
            return line;
        }
    }
    panic!("the process ended before logging {needle:?}");
}

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
    let stderr = child.stderr.take().expect("piped");
    let (line_tx, mut line_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    // Log lines are read on a thread; the test waits on them, never on sleeps.
    let reader = std::thread::spawn(move || {
        let mut lines = BufReader::new(stderr).lines();
        let listening = wait_for_line(&mut lines, "listening");
        let _ = line_tx.send(listening);
        let draining = wait_for_line(&mut lines, "shutting down");
        let _ = line_tx.send(draining);
        lines.map_while(Result::ok).collect::<Vec<_>>()
    });
    let listening = tokio::time::timeout(MUST, line_rx.recv())
        .await
        .expect("starts")
        .expect("line");
    let addr = listening
        .split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))
        .expect("the log names the address")
        .to_owned();

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
    tokio::time::timeout(MUST, line_rx.recv())
        .await
        .expect("drains")
        .expect("line");
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
    let tail = reader.join().expect("reader");
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
    let stdout = child.stdout.take().expect("piped");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let url = loop {
        let line = tokio::time::timeout(MUST, rx.recv())
            .await
            .expect("prints the URL")
            .expect("line");
        if let Some(url) = line.trim().strip_prefix("open") {
            break url.trim().to_owned();
        }
    };
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
