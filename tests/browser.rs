//! The demo shop in a real browser: headless Chromium loads the composed product page and the
//! page-build waterfall through the proxy, the DOM is checked (every fragment there, no `esi:`
//! markup left, the logged-in `choose`, the fallback of a service switched down) and
//! screenshots are saved under `target/screenshots/`.
//!
//! Chromium is found on `PATH` (Debian's `chromium`, or `chromium-browser`); `.ci/run` installs
//! it. Without it these tests say so and pass, except under CI (`CI` set), where they fail.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use fragments::demo::{Demo, DemoConfig};

use crate::support::process::{self};
use crate::support::{demo_config, get, proxy, Proxy};

/// Product tiles on the page: recommendations, trending, recently viewed, sponsored.
const TILES: usize = 52;

/// The names Chromium goes by.
const NAMES: [&str; 2] = ["chromium", "chromium-browser"];

/// The first Chromium on `path` (a `PATH` value).
fn find_chromium(path: &std::ffi::OsStr) -> Option<PathBuf> {
    std::env::split_paths(path)
        .flat_map(|dir| NAMES.map(|name| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// Chromium from `PATH`; `None` (with a note) when it is missing outside CI. Under CI a missing
/// Chromium fails the test.
fn chromium() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| find_chromium(&path));
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "no chromium on PATH: .ci/run installs Debian's chromium"
        );
        eprintln!("skipping: no chromium on PATH (apt-get install chromium)");
    }
    found
}

#[test]
fn chromium_is_found_on_path() {
    let dir = std::env::temp_dir().join(format!("esi-proxy-path-{}", std::process::id()));
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).expect("temp dir");
    std::fs::write(bin.join("chromium-browser"), "").expect("write");
    let path = std::env::join_paths([dir.join("empty"), bin.clone()]).expect("PATH");
    assert_eq!(find_chromium(&path), Some(bin.join("chromium-browser")));
    let path = std::env::join_paths([dir.join("empty")]).expect("PATH");
    assert_eq!(find_chromium(&path), None);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs headless Chromium on `url` with the given extra flags and returns its stdout; each run
/// gets a fresh profile, and the network flags keep it off everything but loopback.
async fn run_chromium(url: &str, extra: &[String]) -> String {
    let chromium = chromium().expect("checked by the test");
    let profile = tempdir("chromium-profile");
    let mut cmd = Command::new(chromium);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
    ]);
    cmd.arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url);
    let out = process::output_within(cmd, Duration::from_secs(90)).await;
    let _ = std::fs::remove_dir_all(&profile);
    assert!(
        out.status.success(),
        "chromium failed on {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The DOM Chromium built for `url`, after following redirects.
async fn dom(url: &str) -> String {
    run_chromium(url, &["--dump-dom".to_owned()]).await
}

/// Saves a screenshot of `url` as `target/screenshots/<name>.png` and checks it is a PNG.
async fn screenshot(url: &str, name: &str, height: u32) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    let file = dir.join(format!("{name}.png"));
    let _ = std::fs::remove_file(&file);
    run_chromium(
        url,
        &[
            format!("--screenshot={}", file.display()),
            format!("--window-size=1280,{height}"),
        ],
    )
    .await;
    let png = std::fs::read(&file).expect("screenshot written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{name}.png is not a real screenshot"
    );
    file
}

fn tempdir(what: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("esi-proxy-{what}-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// The demo services and a proxy in front of them, as `esi-proxy demo` wires them.
async fn shop(cache: bool) -> (Demo, Proxy) {
    let demo = Demo::start(DemoConfig::default().without_latency())
        .await
        .expect("demo starts");
    let mut config = demo_config(&demo);
    config.cache.enabled = cache;
    let proxy = proxy(&format!("http://{}", demo.gateway), config).await;
    (demo, proxy)
}

/// README: "the browser tests drive headless (they load the demo page and the waterfall, check the DOM and save screenshots to `target/screenshots/`)".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_product_page_renders_whole_in_a_browser() {
    if chromium().is_none() {
        return;
    }
    let (_demo, proxy) = shop(true).await;
    let (_, _, raw) = get(&proxy.url("/")).await;
    assert!(!raw.contains("esi:"), "no ESI markup leaves the proxy");
    let dom = tokio::time::timeout(Duration::from_secs(90), dom(&proxy.url("/")))
        .await
        .expect("bounded");
    assert!(
        dom.contains("Trailhead 2 Waterproof Hiking Jacket"),
        "{dom}"
    );
    assert!(!dom.contains("esi:"), "the browser sees no ESI markup");
    assert_eq!(
        dom.matches("class=\"tile\"").count(),
        TILES,
        "every product tile is there"
    );
    for text in [
        "NORTHFOLD",
        "€149.00",
        "Size guide",
        "Sign in",
        "Chat with us",
        "Product details",
    ] {
        assert!(dom.contains(text), "{text:?} missing from the page");
    }
    screenshot(&proxy.url("/"), "page", 2400).await;
}

/// README: "a `choose` on a logged-in cookie — try `/login?user=Ann`".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logged_in_cookie_changes_the_page_through_esi_choose() {
    if chromium().is_none() {
        return;
    }
    let (_demo, proxy) = shop(true).await;
    // The gateway's /login sets the cookie and redirects to the page.
    let dom = dom(&proxy.url("/login?user=Ann")).await;
    assert!(dom.contains("Hi, Ann"), "{dom}");
    assert!(
        !dom.contains(">Sign in<"),
        "the signed-out branch is not taken"
    );
}

/// README: "its services' knobs (latency, jitter, error rate, down switch, TTL)"; "and a `try` with a fallback".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_switched_down_shows_its_fallback() {
    if chromium().is_none() {
        return;
    }
    let (demo, proxy) = shop(false).await;
    assert!(demo.set_down("reviews", true));
    let dom = dom(&proxy.url("/")).await;
    assert!(dom.contains("Reviews are unavailable right now"), "{dom}");
    assert!(
        dom.contains("Trailhead 2 Waterproof Hiking Jacket"),
        "the rest of the page is whole"
    );
    screenshot(&proxy.url("/"), "page-reviews-down", 2400).await;
}

/// README: "Every page can be opened as its page-build waterfall at `/_esi/debug/<path>`".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_waterfall_renders_in_a_browser() {
    if chromium().is_none() {
        return;
    }
    let (_demo, proxy) = shop(true).await;
    let _ = get(&proxy.url("/")).await;
    let dom = dom(&proxy.url("/_esi/debug/")).await;
    assert!(dom.contains("Page build: /"), "{dom}");
    let bars = dom.matches("class=\"bar ").count();
    assert!(bars > 120, "one bar per fetch and the layout, got {bars}");
    assert!(dom.contains("class=\"critical\""));
    assert!(dom.contains(">hit<"), "cache hits are shown");
    screenshot(&proxy.url("/_esi/debug/"), "waterfall", 1600).await;
}
