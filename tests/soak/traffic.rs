//! The soak's clients: each loops over a fixed mix of requests (composed pages, a page per
//! query variant, `HEAD`, a missing page, health), checks every answer, and tallies what it
//! saw; they can pause together for a quiet measurement. Also drains the proxy's log.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::JoinHandle;

use super::expected::Expected;

/// Any one request taking longer than this is a failure.
const REQUEST_LIMIT: Duration = Duration::from_secs(15);

/// Failures kept with their message for the report.
const KEPT_FAILURES: usize = 20;

/// What every client saw.
#[derive(Default)]
pub struct Tally {
    pages: AtomicU64,
    heads: AtomicU64,
    not_found: AtomicU64,
    health: AtomicU64,
    failed: AtomicU64,
    failures: Mutex<Vec<String>>,
    /// Whole-page times in microseconds.
    page_us: Mutex<Vec<u32>>,
}

/// The running clients.
pub struct Clients {
    tasks: Vec<JoinHandle<()>>,
    gate: Arc<Gate>,
}

/// Lets the clients pause: a client counts itself in before it looks at `paused`, so once
/// `paused` is set and `in_flight` is 0, no request is out.
#[derive(Default)]
struct Gate {
    paused: AtomicBool,
    in_flight: AtomicUsize,
}

/// One request of the mix.
enum Ask {
    Page(String),
    Head,
    NotFound,
    Health,
}

/// What the proxy's log held.
#[derive(Debug, Default)]
pub struct LogSummary {
    pub lines: u64,
    pub warnings: u64,
    pub panics: u64,
    /// The first panic or error line.
    pub first_bad: Option<String>,
}

// === impl Clients ===

impl Clients {
    /// Starts `n` clients on `base`, until `stop`.
    pub fn start(
        n: usize,
        base: &str,
        expected: &Arc<Expected>,
        tally: &Arc<Tally>,
        stop: &Arc<AtomicBool>,
    ) -> Clients {
        let gate = Arc::new(Gate::default());
        let tasks = (0..n)
            .map(|id| {
                let client = reqwest::Client::builder()
                    .timeout(REQUEST_LIMIT)
                    .build()
                    .expect("client");
                let (base, expected, tally, stop, gate) = (
                    base.to_owned(),
                    Arc::clone(expected),
                    Arc::clone(tally),
                    Arc::clone(stop),
                    Arc::clone(&gate),
                );
                tokio::spawn(async move {
                    let mut i = id as u64;
                    while !stop.load(Ordering::SeqCst) {
                        gate.in_flight.fetch_add(1, Ordering::SeqCst);
                        if gate.paused.load(Ordering::SeqCst) {
                            gate.in_flight.fetch_sub(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        }
                        let ask = Ask::nth(i);
                        ask.run(&client, &base, &expected, &tally).await;
                        gate.in_flight.fetch_sub(1, Ordering::SeqCst);
                        i += 1;
                    }
                })
            })
            .collect();
        Clients { tasks, gate }
    }

    /// Holds every client back and waits until none has a request out.
    pub async fn pause(&self) {
        self.gate.paused.store(true, Ordering::SeqCst);
        while self.gate.in_flight.load(Ordering::SeqCst) > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn resume(&self) {
        self.gate.paused.store(false, Ordering::SeqCst);
    }

    /// Waits for every client to see the stop and end; their connections close with them.
    pub async fn finish(self) {
        for task in self.tasks {
            task.await.expect("a client task panicked");
        }
    }
}

// === impl Ask ===

impl Ask {
    /// The `i`th request of the fixed mix: 15 in 20 are pages (2 of them a query variant).
    fn nth(i: u64) -> Ask {
        match i % 20 {
            14 | 15 => Ask::Page(format!("/?soak={}", i % 50)),
            16 => Ask::Head,
            17 => Ask::NotFound,
            18 => Ask::Health,
            _ => Ask::Page("/".into()),
        }
    }

    async fn run(&self, client: &reqwest::Client, base: &str, expected: &Expected, tally: &Tally) {
        let started = Instant::now();
        let outcome = match self {
            Ask::Page(path) => page(client, base, path, expected).await,
            Ask::Head => {
                status_only(client.head(format!("{base}/")), 200, |body| body.is_empty()).await
            }
            Ask::NotFound => {
                status_only(client.get(format!("{base}/no-such-page")), 404, |_| true).await
            }
            Ask::Health => {
                status_only(client.get(format!("{base}/_esi/health")), 200, |body| {
                    body.contains("\"status\":\"ok\"")
                })
                .await
            }
        };
        match outcome {
            Ok(()) => {
                let counter = match self {
                    Ask::Page(_) => {
                        let us = started.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
                        lock(&tally.page_us).push(us);
                        &tally.pages
                    }
                    Ask::Head => &tally.heads,
                    Ask::NotFound => &tally.not_found,
                    Ask::Health => &tally.health,
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
            Err(message) => tally.fail(message),
        }
    }
}

async fn page(
    client: &reqwest::Client,
    base: &str,
    path: &str,
    expected: &Expected,
) -> Result<(), String> {
    let resp = client
        .get(format!("{base}{path}"))
        .send()
        .await
        .map_err(|e| format!("GET {path}: {e}"))?;
    let status = resp.status();
    let body = resp
        .text()
        .await
        .map_err(|e| format!("GET {path}: body: {e}"))?;
    if status != 200 {
        return Err(format!("GET {path}: status {status}"));
    }
    expected
        .check(&body)
        .map_err(|wrong| format!("GET {path}: {wrong}"))
}

async fn status_only(
    req: reqwest::RequestBuilder,
    want: u16,
    body_ok: impl Fn(&str) -> bool,
) -> Result<(), String> {
    let what = format!("{req:?}");
    let resp = req.send().await.map_err(|e| format!("{what}: {e}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .text()
        .await
        .map_err(|e| format!("{what}: body: {e}"))?;
    if status != want || !body_ok(&body) {
        return Err(format!("{what}: status {status}, body {body:.200}"));
    }
    Ok(())
}

// === impl Tally ===

impl Tally {
    fn fail(&self, message: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut kept = lock(&self.failures);
        if kept.len() < KEPT_FAILURES {
            kept.push(message);
        }
    }

    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    pub fn failures(&self) -> Vec<String> {
        lock(&self.failures).clone()
    }

    pub fn pages(&self) -> u64 {
        self.pages.load(Ordering::Relaxed)
    }

    /// Every request answered as expected, whatever its kind.
    pub fn answered(&self) -> u64 {
        [&self.pages, &self.heads, &self.not_found, &self.health]
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .sum()
    }

    /// The `q` quantile (0..=1) of whole-page times, in milliseconds.
    pub fn page_ms(&self, q: f64) -> f64 {
        let mut us = lock(&self.page_us).clone();
        if us.is_empty() {
            return 0.0;
        }
        us.sort_unstable();
        let at = ((us.len() - 1) as f64 * q).round() as usize;
        f64::from(us[at]) / 1000.0
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Reads the proxy's log until it ends, counting warnings and panics.
pub fn drain_log(mut lines: UnboundedReceiver<String>) -> JoinHandle<LogSummary> {
    tokio::spawn(async move {
        let mut summary = LogSummary::default();
        while let Some(line) = lines.recv().await {
            summary.lines += 1;
            let panic = line.contains("panicked");
            if line.contains(" WARN ") {
                summary.warnings += 1;
            }
            if panic {
                summary.panics += 1;
            }
            if (panic || line.contains(" ERROR ")) && summary.first_bad.is_none() {
                summary.first_bad = Some(line);
            }
        }
        summary
    })
}
