//! The soak's weather: which demo services are dead, hanging, slow or flapping; the config the
//! proxy runs with; and the chores done while the load runs (purges, reloads by file change
//! and by `SIGHUP`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fragments::demo::{Demo, DemoHandle};
use tokio::task::JoinHandle;

use super::FRAGMENT_TIMEOUT_MS;

/// Answers 503 at once for the whole run.
const DEAD: &str = "chat";
/// Answers after the fragment deadline for the whole run.
const HANGING: &str = "reviews";
/// Slow but within the deadline: its fragments must still be in every page.
const SLOW: &str = "recommendations";
/// Down and up in turns.
const FLAPPING: &str = "ads";
/// Fails half of its requests with a 500.
const ERRATIC: &str = "newsletter";

/// The faults in force, and the task that flaps a service.
pub struct Faulted {
    /// The services whose fragments a page may lack.
    pub services: BTreeSet<&'static str>,
    knobs: DemoHandle,
    flapper: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

/// What the chores did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Chores {
    pub purges: u64,
    pub reloads: u64,
}

/// Writes the proxy's config: the demo's gateway as origin, every service allowlisted and
/// trusted, stale windows on; `variant` changes the fragment deadline a little, so each write
/// is a real change.
pub fn write_config(path: &Path, demo: &Demo, variant: u64) {
    ConfigWriter::new(demo).write(path, variant);
}

/// Puts every fault in force at its worst: [`FLAPPING`] down, [`ERRATIC`] failing every
/// request. A page composed now holds only what a page must always hold.
pub fn worst(demo: &Demo) -> Faulted {
    let knobs = demo.handle();
    assert!(knobs.set_down(DEAD, true));
    assert!(knobs.set_latency(HANGING, FRAGMENT_TIMEOUT_MS + 1000));
    assert!(knobs.set_latency(SLOW, 120));
    assert!(knobs.set_error_rate(ERRATIC, 1.0));
    assert!(knobs.set_down(FLAPPING, true));
    Faulted {
        services: BTreeSet::from([DEAD, HANGING, FLAPPING, ERRATIC]),
        knobs,
        flapper: None,
        stop: Arc::new(AtomicBool::new(false)),
    }
}

async fn flap(knobs: DemoHandle, stop: Arc<AtomicBool>) {
    let mut down = false;
    while !stop.load(Ordering::Relaxed) {
        down = !down;
        knobs.set_down(FLAPPING, down);
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    knobs.set_down(FLAPPING, false);
}

/// Every 2 s a purge (each service's prefix in turn, and the layout), every 5 s a reload
/// (a changed file and a `SIGHUP` in turns), until `stop`.
pub fn chores(
    demo: &Demo,
    config: &Path,
    base: &str,
    token: &str,
    pid: u32,
    stop: &Arc<AtomicBool>,
) -> JoinHandle<Chores> {
    let mut targets: Vec<String> = demo
        .service_urls()
        .into_iter()
        .map(|url| format!("prefix={url}/"))
        .collect();
    targets.push("url=/".into());
    let config: PathBuf = config.to_owned();
    let (base, token, stop) = (base.to_owned(), token.to_owned(), Arc::clone(stop));
    let writer = ConfigWriter::new(demo);
    tokio::spawn(async move {
        let client = reqwest::Client::new();
        let mut done = Chores::default();
        let mut tick: u64 = 0;
        while !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_secs(1)).await;
            tick += 1;
            if tick.is_multiple_of(2) {
                let target = &targets[(tick / 2) as usize % targets.len()];
                let resp = client
                    .post(format!("{base}/_esi/purge?{target}"))
                    .bearer_auth(&token)
                    .send()
                    .await
                    .expect("purge answered");
                assert!(
                    resp.status().is_success(),
                    "purge {target}: {}",
                    resp.status()
                );
                done.purges += 1;
            }
            if tick.is_multiple_of(5) {
                if (tick / 5).is_multiple_of(2) {
                    writer.write(&config, tick / 5);
                } else {
                    let status = std::process::Command::new("kill")
                        .arg("-HUP")
                        .arg(pid.to_string())
                        .status()
                        .expect("kill runs");
                    assert!(status.success(), "kill -HUP {pid}");
                }
                done.reloads += 1;
            }
        }
        done
    })
}

/// What [`write_config`] needs of the demo, apart from it so the chores task can own it.
struct ConfigWriter {
    gateway: std::net::SocketAddr,
    services: Vec<String>,
}

// === impl ConfigWriter ===

impl ConfigWriter {
    fn new(demo: &Demo) -> Self {
        Self {
            gateway: demo.gateway,
            services: demo.service_urls(),
        }
    }

    fn write(&self, path: &Path, variant: u64) {
        let mut text = format!(
            "[server]\n\
             listen = \"127.0.0.1:0\"\n\
             origin = \"http://{gateway}\"\n\
             admin_token = \"{token}\"\n\
             access_log = false\n\
             config_poll_ms = 500\n\n\
             [fetch]\n\
             fragment_timeout_ms = {timeout}\n\n\
             [cache]\n\
             stale_while_revalidate_s = 2\n\
             stale_if_error_s = 30\n",
            gateway = self.gateway,
            token = super::TOKEN,
            timeout = FRAGMENT_TIMEOUT_MS + 50 * (variant % 2),
        );
        for url in &self.services {
            text.push_str(&format!(
                "\n[[fetch.hosts]]\nurl = \"{url}\"\ntrusted = true\nprivate_network = true\n"
            ));
        }
        // Written whole, then renamed, so the watcher never reads half a file.
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).expect("config written");
        std::fs::rename(&tmp, path).expect("config renamed");
    }
}

// === impl Faulted ===

impl Faulted {
    /// From the worst to the weather of the run: [`ERRATIC`] fails half of its requests and
    /// [`FLAPPING`] goes down and up in turns.
    pub fn run(&mut self) {
        assert!(self.knobs.set_error_rate(ERRATIC, 0.5));
        let flap = flap(self.knobs.clone(), Arc::clone(&self.stop));
        self.flapper = Some(tokio::spawn(flap));
    }

    /// Stops flapping.
    pub async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(flapper) = self.flapper {
            let _ = flapper.await;
        }
    }
}
