//! Config hot reload: a changed file applies to new requests while load runs, a broken file is
//! refused naming its line while the old config stays in force, `/_esi/health` and the metrics
//! show the failed reload, and SIGHUP reloads the real binary. Zero failed requests throughout.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use esi_proxy::config::Config;
use esi_proxy::fetch::SystemLookup;
use esi_proxy::server::{self, AppState};
use esi_proxy::telemetry::Metrics;
use http::StatusCode;

use crate::support::harness::{client, esi, html, serve};
use crate::support::{bin, lines, wait_for_line};

const MUST: Duration = Duration::from_secs(20);

/// Writes `text` to `path` atomically (write a sibling, then rename), as editors and
/// deployment tools do, so a reload never reads half a file.
fn write_config(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write config");
    std::fs::rename(&tmp, path).expect("rename config");
}

fn config_text(origin: &str, process: &str, extra: &str) -> String {
    format!("[server]\norigin = \"{origin}\"\nlisten = \"127.0.0.1:0\"\n\n[esi]\nprocess_paths = [{process}]\n{extra}")
}

/// The same config with file polling off.
fn poll_off(text: &str) -> String {
    text.replacen("[server]\n", "[server]\nconfig_poll_ms = 0\n", 1)
}

/// Polls `/_esi/health` until its body contains `needle`.
async fn health_until(base: &str, needle: &str) -> String {
    tokio::time::timeout(MUST, async {
        loop {
            let body = client()
                .get(format!("{base}/_esi/health"))
                .send()
                .await
                .expect("health")
                .text()
                .await
                .expect("text");
            if body.contains(needle) {
                return body;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("health never showed {needle:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_of_valid_and_broken_files_under_load_drops_no_request() {
    // /legacy is plain HTML (unmarked): processed only when a config rule says so.
    let origin = serve(|req| async move {
        match req.uri().path() {
            "/legacy" => html("<esi:include src=\"/frag\"/>"),
            "/frag" => html("F"),
            _ => esi("page<esi:include src=\"/frag\"/>"),
        }
    })
    .await;
    let dir = std::env::temp_dir().join(format!("esi-proxy-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("esi-proxy.toml");
    write_config(&path, &config_text(&origin.url(), "", ""));

    let config = Config::load(&path).expect("valid");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("bound"));
    let state =
        AppState::new(config, Arc::new(SystemLookup), Arc::new(Metrics::new())).expect("state");
    let watcher = server::watch_config(
        Arc::clone(&state),
        path.clone(),
        Arc::new(|_: &mut Config| {}),
        Duration::from_millis(50),
    );
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server::run(listener, Arc::clone(&state), async move {
        let _ = stopped.await;
    }));

    // Load: four clients loop over both pages until told to stop, counting failures.
    let done = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load: Vec<_> = (0..4)
        .map(|i| {
            let (done, ok, failed, base) = (
                Arc::clone(&done),
                Arc::clone(&ok),
                Arc::clone(&failed),
                base.clone(),
            );
            tokio::spawn(async move {
                let c = client();
                while !done.load(Ordering::SeqCst) {
                    let path = if i % 2 == 0 { "/page" } else { "/legacy" };
                    let good = match c.get(format!("{base}{path}")).send().await {
                        Ok(r) => r.status() == StatusCode::OK && r.text().await.is_ok(),
                        Err(_) => false,
                    };
                    let counter = if good { &ok } else { &failed };
                    counter.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();

    let legacy = || async {
        client()
            .get(format!("{base}/legacy"))
            .send()
            .await
            .expect("ok")
            .text()
            .await
            .expect("text")
    };
    assert_eq!(legacy().await, "<esi:include src=\"/frag\"/>");
    write_config(&path, &config_text(&origin.url(), "\"/legacy\"", ""));
    health_until(&base, "\"generation\":1").await;
    assert_eq!(legacy().await, "F", "the new rule applies to new requests");

    write_config(
        &path,
        &config_text(&origin.url(), "\"/legacy\"", "max_depth = \"deep\"\n"),
    );
    let health = health_until(&base, "\"last_reload\":\"failed\"").await;
    assert!(
        health.contains("esi-proxy.toml:7"),
        "the error names the file and line: {health}"
    );
    assert!(health.contains("esi.max_depth"), "and the field: {health}");
    assert_eq!(legacy().await, "F", "the previous config stays in force");
    let metrics = client()
        .get(format!("{base}/_esi/metrics"))
        .send()
        .await
        .expect("ok")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("esi_proxy_config_reloads_total{result=\"error\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("esi_proxy_config_reload_failed 1"),
        "{metrics}"
    );

    write_config(&path, &config_text(&origin.url(), "", ""));
    health_until(&base, "\"generation\":2").await;
    assert_eq!(legacy().await, "<esi:include src=\"/frag\"/>");

    done.store(true, Ordering::SeqCst);
    for l in load {
        l.await.expect("load task");
    }
    watcher.abort();
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "{} requests succeeded",
        ok.load(Ordering::SeqCst)
    );
    assert!(ok.load(Ordering::SeqCst) > 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_running_binary() {
    let origin = serve(|req| async move {
        match req.uri().path() {
            "/legacy" => html("<esi:include src=\"/frag\"/>"),
            _ => html("F"),
        }
    })
    .await;
    let dir = std::env::temp_dir().join(format!("esi-proxy-sighup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("esi-proxy.toml");
    write_config(&path, &poll_off(&config_text(&origin.url(), "", "")));
    let mut child = Command::new(bin())
        .args(["serve", "--config"])
        .arg(&path)
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
    let base = format!("http://{addr}");
    // Polling is off in this file (config_poll_ms = 0): only the signal can reload it.
    std::fs::write(
        &path,
        poll_off(&config_text(&origin.url(), "\"/legacy\"", "")),
    )
    .expect("write");
    let status = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    health_until(&base, "\"generation\":1").await;
    let body = client()
        .get(format!("{base}/legacy"))
        .send()
        .await
        .expect("ok")
        .text()
        .await
        .expect("text");
    assert_eq!(body, "F");
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("joined")
        .expect("waits");
    assert!(exit.success());
    let _ = std::fs::remove_dir_all(&dir);
}
