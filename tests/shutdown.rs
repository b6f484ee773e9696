//! `esi-proxy serve` and `esi-proxy demo` as real processes: SIGTERM with a page in flight stops
//! new connections, lets the page finish and exits 0; a page that outlives
//! `server.shutdown_grace_ms` is cut off when the grace period ends; the demo starts with no
//! setup and stops on Ctrl-C; the process guard leaves nothing behind.

use std::sync::Arc;

use tokio::sync::Notify;

use crate::support::process::{self, Proc, Watch};
use crate::support::{client, esi, html, serve, Server, Streamed};

/// An origin whose `/page` is `<p>start</p>`, then `/slow` (answered when `gate` is notified),
/// then `<p>end</p>`.
async fn gated_origin(gate: Arc<Notify>) -> Server {
    serve(move |req| {
        let gate = Arc::clone(&gate);
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
    .await
}

/// README: "`SIGTERM`/`SIGINT` stop accepting and let in-flight pages finish".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_pages_finish_and_exits_zero() {
    let gate = Arc::new(Notify::new());
    let origin = gated_origin(Arc::clone(&gate)).await;
    let (mut proxy, addr) =
        process::serve(&["--listen", "127.0.0.1:0", "--origin", &origin.base()]).await;

    let page = Streamed::first(&format!("http://{addr}/page"), b"<p>start</p>").await;

    proxy.signal("TERM").await;
    proxy.line_with("shutting down").await;
    let refused = tokio::net::TcpStream::connect(&addr).await;
    assert!(refused.is_err(), "no new connections once shutting down");

    gate.notify_one();
    assert_eq!(
        page.rest().await.expect("the page completes"),
        b"SLOW<p>end</p>"
    );
    let exit = proxy.exit().await;
    assert!(exit.success(), "exit status {exit:?}");
    let tail = proxy.rest().await;
    assert!(tail.iter().any(|l| l.contains("drained")), "{tail:?}");
    assert!(
        tail.iter()
            .any(|l| l.contains("request") && l.contains("path=/page") && l.contains("status=200")),
        "the access log has the page: {tail:?}"
    );
}

/// README: "in-flight pages finish (up to `server.shutdown_grace_ms`)": a page still waiting on
/// a fragment when the grace period ends is cut off, and the process exits then, long before
/// the fragment's 60 s deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grace_period_ends_a_page_that_would_outlive_it() {
    // Never notified: the fragment stalls past every deadline.
    let gate = Arc::new(Notify::new());
    let origin = gated_origin(Arc::clone(&gate)).await;
    let dir = std::env::temp_dir().join(format!("esi-proxy-grace-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("esi-proxy.toml");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\norigin = \"{}\"\nshutdown_grace_ms = 300\n\n\
         [fetch]\nfragment_timeout_ms = 60000\npage_timeout_ms = 60000\n",
        origin.base()
    );
    std::fs::write(&path, text).expect("write config");
    let (mut proxy, addr) = process::serve(&["--config", path.to_str().expect("UTF-8")]).await;

    let page = Streamed::first(&format!("http://{addr}/page"), b"<p>start</p>").await;

    proxy.signal("TERM").await;
    // MUST (20 s) is far below the fragment's 60 s: only the grace period can end it this soon.
    let exit = proxy.exit().await;
    assert!(exit.success(), "exit status {exit:?}");
    let tail = proxy.rest().await;
    assert!(
        tail.iter()
            .any(|l| l.contains("shutdown grace period over")),
        "{tail:?}"
    );
    match page.rest().await {
        Err((got, _)) => assert_eq!(got, b"", "nothing after the first part"),
        Ok(got) => panic!(
            "a page cut off by the grace period ended as if whole: {:?}",
            String::from_utf8_lossy(&got)
        ),
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// README: "`cargo run --release -- demo` ... prints the URL to open ... Ctrl-C stops
/// everything".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_starts_with_no_setup_serves_the_page_and_stops_on_ctrl_c() {
    let (mut demo, url) = process::demo(&["--listen", "127.0.0.1:0"]).await;
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
    demo.signal("INT").await;
    let exit = demo.exit().await;
    assert!(exit.success(), "exit status {exit:?}");
}

/// A test that fails with its process running does not leave the process behind: dropping the
/// guard kills and reaps it.
#[tokio::test]
async fn a_dropped_process_guard_kills_the_process() {
    let (proxy, addr) = process::serve(&["--listen", "127.0.0.1:0"]).await;
    let pid = proxy.id();
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    drop(proxy);
    // Reaped by the guard, so the pid is gone, not a zombie.
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "process {pid} outlived its guard"
    );
    assert!(
        tokio::net::TcpStream::connect(&addr).await.is_err(),
        "nothing listens at {addr} any more"
    );
}

/// A process that never exits is not waited for forever: the wait has a deadline.
#[tokio::test]
#[should_panic(expected = "did not exit within")]
async fn waiting_for_a_process_that_does_not_exit_times_out() {
    let mut sleeper = std::process::Command::new("sleep");
    sleeper.arg("600");
    let mut proc = Proc::spawn(sleeper, Watch::Stdout);
    proc.exit_within(std::time::Duration::from_millis(200))
        .await;
}
