//! The soak: the real `esi-proxy serve` in front of the demo's services, some of them slow,
//! flapping or dead, under mixed traffic with purges and config reloads, for `SOAK_SECS`
//! seconds (default 120). Passes when no request failed unexpectedly, every page is whole and
//! composed as expected, RSS stays flat after warm-up, and file descriptors and tokio tasks
//! come back to their baseline once the load stops. Its figures go to `target/soak-report.md`.
//!
//! A test binary of its own, so it runs alone rather than beside the end-to-end suite:
//! `cargo test --test soak` (two minutes), or longer with
//! `SOAK_SECS=1800 cargo test --release --test soak -- --nocapture`.

mod expected;
mod faults;
mod probe;
#[path = "../support/process.rs"]
#[allow(dead_code)]
mod process;
mod report;
mod traffic;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fragments::demo::{Demo, DemoConfig};

use expected::Expected;
use probe::Probe;
use traffic::{Clients, Tally};

/// How long [`process`] waits for a line or an exit.
const MUST: Duration = Duration::from_secs(30);

/// The admin token the soak's proxy is configured with.
const TOKEN: &str = "soak-admin-token";

/// A fragment answering later than this takes its fallback. Generous: a steady service
/// starved of CPU on a busy machine must not miss it.
const FRAGMENT_TIMEOUT_MS: u64 = 2000;

/// How long after the load descriptors and tasks may take to come back: past the longest
/// deadline (`fetch.layout_timeout_ms`, 10 s) nothing the load started may still run.
const SETTLE: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_under_faults_purges_and_reloads_loses_nothing() {
    let secs: u64 = std::env::var("SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    let clients: usize = std::env::var("SOAK_CLIENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    let total = Duration::from_secs(secs.max(20));
    let warm_up = (total / 6).clamp(Duration::from_secs(10), Duration::from_secs(60));

    let demo = Demo::start(DemoConfig::default())
        .await
        .expect("the demo's services start");
    let dir = std::env::temp_dir().join(format!("esi-proxy-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = dir.join("esi-proxy.toml");
    faults::write_config(&config, &demo, 0);
    let (mut proxy, addr) = process::serve(&["--config", config.to_str().expect("UTF-8")]).await;
    // The proxy's log is drained for the whole run; a panic or error line fails the soak.
    let log = traffic::drain_log(std::mem::replace(
        &mut proxy.lines,
        tokio::sync::mpsc::unbounded_channel().1,
    ));
    let base = format!("http://{addr}");

    // What a page must hold: the steady services' fragments of a page composed in the worst
    // weather, the first page this proxy composes.
    let bodies = Expected::fetch_bodies(&demo).await;
    let mut faulted = faults::worst(&demo);
    let expected = Arc::new(bodies.in_worst_page(&base, &faulted.services).await);
    faulted.run();

    let probe = Probe::new(proxy.id(), &base, TOKEN);
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let load = Clients::start(clients, &base, &expected, &tally, &stop);
    let chores = faults::chores(&demo, &config, &base, TOKEN, proxy.id(), &stop);

    // Warm-up: everything is cached and pooled; then a short quiet spell sets the baseline.
    let mut samples = probe.sample_until(started + warm_up, started).await;
    load.pause().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let baseline = probe.quiet().await;
    load.resume();
    let warm_rss = samples.iter().map(|s| s.rss_kb).max().unwrap_or(0);
    let measured_from = samples.len();
    samples.extend(probe.sample_until(started + total, started).await);

    stop.store(true, Ordering::Relaxed);
    load.finish().await;
    let chores = chores.await.expect("chores task");
    let faulted_services = faulted.services.clone();
    faulted.stop().await;
    // Work the load started may still be finishing (a refresh waiting out a hanging
    // service's deadline); everything it holds must be gone within the longest deadline.
    let after = probe.settle(baseline, SETTLE).await;
    let health = probe.health().await;
    proxy.signal("TERM").await;
    let exit = proxy.exit().await;
    let log = log.await.expect("log task");

    let report = report::Report {
        secs: started.elapsed().as_secs(),
        clients,
        expected_bodies: expected.len(),
        tally: &tally,
        samples: &samples,
        measured_from,
        warm_rss,
        baseline,
        after,
        chores,
        log: &log,
        faulted: &faulted_services,
    };
    let text = report.render();
    println!("{text}");
    let _ = std::fs::write(
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
            .parent()
            .unwrap_or(std::path::Path::new("."))
            .join("soak-report.md"),
        &text,
    );

    // The verdict, after the report so a failure still leaves its figures behind.
    let failures = tally.failures();
    assert!(
        failures.is_empty(),
        "{} unexpected failures, first ones: {:#?}",
        tally.failed(),
        failures
    );
    assert!(tally.pages() > 0, "pages were served");
    assert!(
        log.panics == 0,
        "the proxy logged a panic: {:?}",
        log.first_bad
    );
    for s in &samples[measured_from..] {
        assert!(
            s.rss_kb as f64 <= warm_rss as f64 * 1.10,
            "RSS {} kB at {} s is over 110 % of the warm-up's {} kB",
            s.rss_kb,
            s.at_s,
            warm_rss
        );
    }
    assert!(
        after.fds <= probe::slack(baseline.fds),
        "file descriptors: {} {} s after the load, {} at the quiet baseline",
        after.fds,
        after.at_s,
        baseline.fds
    );
    assert!(
        after.tasks <= probe::slack(baseline.tasks),
        "tokio tasks: {} {} s after the load, {} at the quiet baseline",
        after.tasks,
        after.at_s,
        baseline.tasks
    );
    assert!(
        health.contains("\"last_reload\":\"ok\""),
        "every reload was taken: {health}"
    );
    assert!(chores.reloads > 0 && chores.purges > 0, "{chores:?}");
    assert!(exit.success(), "the proxy exits cleanly: {exit:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
