//! End-to-end load bench: esi-proxy, nginx SSI and Varnish ESI side by side, in front of one
//! in-process origin (`fragments::origin`), each driven by `wrk` over loopback: cold (no cache
//! anywhere) and warm (each peer's cache in front of cacheable pages). It checks every peer
//! composes correctly, loads each scenario, and writes a Markdown report to
//! `target/load-report.md`. How to run it and its knobs: `benches/README.md`.
//!
//! This file holds the knobs, the scenarios and the run in order; `peers` starts the origin and
//! the peers, `verify` checks their pages, `measure` runs wrk and reads /proc, `report` writes
//! the Markdown.

mod measure;
mod peers;
mod report;
mod verify;

use std::fs;
use std::path::PathBuf;
use std::time::Instant;

use fragments::origin::{Delays, Markup, Page};

use measure::{load, measure_floor, measure_memory, measure_ttfb};
use peers::{
    create_dir, start_esi_proxy, start_nginx, start_varnish, target_dir, wait_ready, which,
};
use peers::{OriginGuard, PeerKind, TempDir};
use report::render_report;
use verify::verify;

/// TTL of the warm scenarios' pages and fragments: far longer than any run, so nothing
/// expires between the warm-up and the end of the measured run, whatever `LOAD_SECS` is.
pub(crate) const WARM_TTL_S: u64 = 3600;

pub(crate) type Result<T, E = String> = std::result::Result<T, E>;

/// Knobs, from the environment (see benches/README.md).
pub(crate) struct Settings {
    pub(crate) secs: u64,
    pub(crate) warmup_secs: u64,
    pub(crate) conns: u64,
    pub(crate) conns_delayed: u64,
    pub(crate) threads: u64,
    pub(crate) peers: Vec<PeerKind>,
    pub(crate) scenarios: Vec<Scenario>,
    pub(crate) inflight_pages: usize,
    pub(crate) inflight_delay_ms: u64,
    pub(crate) report: PathBuf,
    /// /proc/loadavg when the run started: the machine is shared.
    pub(crate) load_average: Option<String>,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Scenario {
    pub(crate) key: &'static str,
    pub(crate) title: &'static str,
    pub(crate) n: usize,
    pub(crate) delays: Delays,
    pub(crate) conns: u64,
    /// Cacheable pages (`?ttl=`), served by the peers with their cache on, warmed first.
    pub(crate) warm: bool,
}

fn main() {
    // `cargo bench` passes `--bench`; a filter or other flags are not used here.
    match run() {
        Ok(()) => {}
        Err(e) => {
            eprintln!("load bench failed: {e}");
            std::process::exit(1);
        }
    }
}

fn run() -> Result<()> {
    let settings = Settings::from_env()?;
    let wall = Instant::now();
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("client runtime: {e}"))?;
    if which("wrk").is_none() {
        return Err("wrk is not installed: apt-get install -y wrk".into());
    }
    let tmp = TempDir::new()?;
    let origin = OriginGuard::start()?;
    say(&format!("origin on http://{}", origin.addr));

    // Cold scenarios go to peers with no cache, warm ones to a second instance of each with
    // its cache on; only the instances some selected scenario needs are started.
    let mut peers = Vec::new();
    let mut skipped = Vec::new();
    for cached in [false, true] {
        if !settings.scenarios.iter().any(|s| s.warm == cached) {
            continue;
        }
        let dir = if cached {
            tmp.0.join("warm")
        } else {
            tmp.0.clone()
        };
        create_dir(&dir)?;
        for kind in &settings.peers {
            let started = match kind {
                PeerKind::EsiProxy | PeerKind::EsiProxyH2c => {
                    start_esi_proxy(&dir, origin.addr, cached, *kind).map(Some)
                }
                PeerKind::Nginx => start_nginx(&dir, origin.addr, cached),
                PeerKind::Varnish => start_varnish(&dir, origin.addr, cached),
            };
            match started {
                Ok(Some(peer)) => {
                    client_rt.block_on(wait_ready(&peer))?;
                    say(&format!("{} on http://{}", peer.label(), peer.addr));
                    peers.push(peer);
                }
                Ok(None) => {
                    let line = format!(
                        "{} skipped: {} is not installed (apt-get install -y {})",
                        kind.name(),
                        kind.program(),
                        kind.package()
                    );
                    // Said once, for the cold and warm instances alike.
                    if !skipped.contains(&line) {
                        skipped.push(line);
                    }
                }
                Err(e) if kind.is_esi_proxy() => return Err(e),
                Err(e) => skipped.push(format!(
                    "{} skipped: {e}",
                    if cached {
                        format!("{} (cache on)", kind.name())
                    } else {
                        kind.name().to_owned()
                    }
                )),
            }
        }
    }
    for line in &skipped {
        say(line);
    }
    // Each esi-proxy configuration that runs cold, in the order asked for.
    let cold_proxies: Vec<PeerKind> = settings
        .peers
        .iter()
        .copied()
        .filter(|kind| kind.is_esi_proxy())
        .filter(|kind| peers.iter().any(|p| p.kind == *kind && !p.cached))
        .collect();

    // Correctness first: a fast wrong answer is not a result. For warm scenarios this first
    // request also fills the caches.
    for scenario in &settings.scenarios {
        for peer in peers.iter().filter(|p| p.cached == scenario.warm) {
            client_rt.block_on(verify(peer, scenario))?;
        }
    }
    say("every peer returned every page whole, with no include left");

    // On a process of its own, so its idle RSS is a fresh process's and the thousands of
    // connections it opens do not linger in the pool the load runs use.
    let mut memory = Vec::new();
    for kind in cold_proxies.iter().filter(|_| settings.inflight_pages > 0) {
        let dir = tmp.0.join(format!("memory-{}", kind.name()));
        create_dir(&dir)?;
        let proxy = start_esi_proxy(&dir, origin.addr, false, *kind)?;
        client_rt.block_on(wait_ready(&proxy))?;
        let pid = proxy.process.child.id();
        memory.push((
            *kind,
            client_rt.block_on(measure_memory(
                &proxy,
                pid,
                settings.inflight_pages,
                settings.inflight_delay_ms,
            ))?,
        ));
        drop(proxy);
    }

    let delayed = settings
        .scenarios
        .iter()
        .find(|s| s.delays != Delays::None)
        .copied();
    let floor = match delayed {
        Some(s) => Some(client_rt.block_on(measure_floor(origin.addr, &s))?),
        None => None,
    };
    let mut ttfbs = Vec::new();
    if let Some(s) = delayed {
        for peer in peers.iter().filter(|p| !p.cached) {
            ttfbs.push(client_rt.block_on(measure_ttfb(peer, &s))?);
        }
    }

    let mut rows = Vec::new();
    for scenario in &settings.scenarios {
        for peer in peers.iter().filter(|p| p.cached == scenario.warm) {
            rows.push(load(
                &client_rt,
                peer,
                scenario,
                &settings,
                &origin.requests,
            )?);
        }
    }

    let report = render_report(
        &settings,
        &rows,
        floor.as_ref(),
        &ttfbs,
        &memory,
        &skipped,
        wall.elapsed(),
    );
    println!("\n{report}");
    if let Some(dir) = settings.report.parent() {
        let _ = fs::create_dir_all(dir);
    }
    fs::write(&settings.report, &report)
        .map_err(|e| format!("writing {}: {e}", settings.report.display()))?;
    say(&format!("report written to {}", settings.report.display()));
    drop(peers);
    drop(origin);
    Ok(())
}

pub(crate) fn say(line: &str) {
    eprintln!("[load] {line}");
}

/// Milliseconds for people: `0.84 ms`, `12.3 ms`, `1.25 s`.
pub(crate) fn ms(v: f64) -> String {
    if v.is_nan() {
        "n/a".into()
    } else if v < 10.0 {
        format!("{v:.2} ms")
    } else if v < 1000.0 {
        format!("{v:.1} ms")
    } else {
        format!("{:.2} s", v / 1000.0)
    }
}

// === impl Settings ===

impl Settings {
    fn from_env() -> Result<Self> {
        let num = |name: &str, default: u64| -> Result<u64> {
            match std::env::var(name) {
                Ok(v) => v
                    .trim()
                    .parse()
                    .map_err(|_| format!("{name}={v:?}: not a whole number")),
                Err(_) => Ok(default),
            }
        };
        let secs = num("LOAD_SECS", 8)?.max(1);
        let warmup_secs = num("LOAD_WARMUP_SECS", 2)?;
        let conns = num("LOAD_CONNS", 32)?;
        let conns_delayed = num("LOAD_CONNS_DELAYED", 16)?;
        let threads = num("LOAD_THREADS", 2)?.max(1);
        if conns < threads || conns_delayed < threads {
            return Err(format!(
                "wrk needs at least as many connections as threads ({threads})"
            ));
        }
        let peers = match std::env::var("LOAD_PEERS") {
            Err(_) => vec![
                PeerKind::EsiProxy,
                PeerKind::EsiProxyH2c,
                PeerKind::Nginx,
                PeerKind::Varnish,
            ],
            Ok(list) => list
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| match s {
                    "esi-proxy" => Ok(PeerKind::EsiProxy),
                    "esi-proxy-h2c" => Ok(PeerKind::EsiProxyH2c),
                    "nginx" => Ok(PeerKind::Nginx),
                    "varnish" => Ok(PeerKind::Varnish),
                    other => Err(format!(
                        "LOAD_PEERS: unknown peer {other:?} (esi-proxy, esi-proxy-h2c, nginx, \
                         varnish)"
                    )),
                })
                .collect::<Result<Vec<_>>>()?,
        };
        let all = [
            Scenario {
                key: "a",
                title: "10 fragments",
                n: 10,
                delays: Delays::None,
                conns,
                warm: false,
            },
            Scenario {
                key: "b",
                title: "120 fragments",
                n: 120,
                delays: Delays::None,
                conns,
                warm: false,
            },
            Scenario {
                key: "c",
                title: "120 fragments, 5-20 ms each",
                n: 120,
                delays: Delays::Range(5, 20),
                conns: conns_delayed,
                warm: false,
            },
            Scenario {
                key: "d",
                title: "10 fragments, warm cache",
                n: 10,
                delays: Delays::None,
                conns,
                warm: true,
            },
            Scenario {
                key: "e",
                title: "120 fragments, warm cache",
                n: 120,
                delays: Delays::None,
                conns,
                warm: true,
            },
        ];
        let wanted = std::env::var("LOAD_SCENARIOS").unwrap_or_else(|_| "a,b,c,d,e".into());
        let mut scenarios = Vec::new();
        for key in wanted.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let s = all.iter().find(|s| s.key == key).ok_or_else(|| {
                format!("LOAD_SCENARIOS: unknown scenario {key:?} (a, b, c, d, e)")
            })?;
            scenarios.push(*s);
        }
        let report = match std::env::var("LOAD_REPORT") {
            Ok(p) => PathBuf::from(p),
            Err(_) => target_dir().join("load-report.md"),
        };
        Ok(Self {
            secs,
            warmup_secs,
            conns,
            conns_delayed,
            threads,
            peers,
            scenarios,
            inflight_pages: num("LOAD_INFLIGHT_PAGES", 200)? as usize,
            inflight_delay_ms: num("LOAD_INFLIGHT_DELAY_MS", 1000)?,
            report,
            load_average: fs::read_to_string("/proc/loadavg")
                .ok()
                .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" ")),
        })
    }
}

// === impl Scenario ===

impl Scenario {
    /// The page this scenario asks `markup`'s peers for.
    pub(crate) fn page(&self, markup: Markup) -> Page {
        let page = Page::new(markup, self.n).with_delays(self.delays);
        if self.warm {
            page.with_ttl_s(WARM_TTL_S)
        } else {
            page
        }
    }
}
