//! End-to-end load bench: esi-proxy, nginx SSI and Varnish ESI side by side, in front of one
//! in-process origin (`fragments::origin`), each driven by `wrk` over loopback: cold (no cache
//! anywhere) and warm (each peer's cache in front of cacheable pages). It checks every peer
//! composes correctly, loads each scenario, and writes a Markdown report to
//! `target/load-report.md`. How to run it and its knobs: `benches/README.md`.

use std::fmt::Write as _;
use std::fs;
use std::io::Read as _;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fragments::origin::{self, Delays, Markup, OriginOptions, Page, RequestCounter};

const NGINX_CONF: &str = include_str!("load/nginx.conf");
const VARNISH_VCL: &str = include_str!("load/varnish.vcl");
const NGINX_CACHE_CONF: &str = include_str!("load/nginx-cache.conf");
const VARNISH_CACHE_VCL: &str = include_str!("load/varnish-cache.vcl");

/// TTL of the warm scenarios' pages and fragments: far longer than any run, so nothing
/// expires between the warm-up and the end of the measured run, whatever `LOAD_SECS` is.
const WARM_TTL_S: u64 = 3600;

/// Requests each warm peer serves before its cache is checked (the first fills it).
const WARM_REQUESTS: usize = 5;

/// Origin requests per page above which a warm run is reported as not warm.
const WARM_MAX_ORIGIN_PER_PAGE: f64 = 0.001;

/// The p99 esi-proxy aims for on the warm 10-fragment page.
const WARM_P99_TARGET_MS: f64 = 5.0;
/// Whether esi-proxy was started with `--no-cache` (binaries from before the switch have no
/// cache to turn off).
static NO_CACHE_FLAG: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Paragraphs of layout text before each include, as the origin serves them.
const PARAGRAPHS: usize = 2;

/// wrk's per-request timeout: Varnish composes includes one after another, so a delayed
/// 120-fragment page takes it seconds; a timeout would hide that as errors.
const WRK_TIMEOUT: &str = "10s";

/// The origin's accept queue (the kernel caps it at `net.core.somaxconn`).
const ORIGIN_BACKLOG: u32 = 8192;

type Result<T, E = String> = std::result::Result<T, E>;

/// Knobs, from the environment (see benches/README.md).
struct Settings {
    secs: u64,
    warmup_secs: u64,
    conns: u64,
    conns_delayed: u64,
    threads: u64,
    peers: Vec<PeerKind>,
    scenarios: Vec<Scenario>,
    inflight_pages: usize,
    inflight_delay_ms: u64,
    report: PathBuf,
    /// /proc/loadavg when the run started: the machine is shared.
    load_average: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PeerKind {
    EsiProxy,
    Nginx,
    Varnish,
}

/// A running peer: where it listens and the process to stop.
struct Peer {
    kind: PeerKind,
    /// Whether its cache is on: it serves the warm scenarios, the others the cold ones.
    cached: bool,
    addr: SocketAddr,
    process: ChildGuard,
}

/// A child process stopped (TERM, then KILL) when dropped, so a panic stops it too.
struct ChildGuard {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

/// The origin's runtime thread; stopping it closes the listener and every connection.
struct OriginGuard {
    addr: SocketAddr,
    /// What the origin has been asked, from every peer.
    requests: RequestCounter,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Debug, Clone, Copy)]
struct Scenario {
    key: &'static str,
    title: &'static str,
    n: usize,
    delays: Delays,
    conns: u64,
    /// Cacheable pages (`?ttl=`), served by the peers with their cache on, warmed first.
    warm: bool,
}

/// What one wrk run measured.
#[derive(Debug, Clone, Default)]
struct WrkResult {
    requests: u64,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    bytes_read: f64,
    socket_errors: u64,
    non_2xx: u64,
}

/// One row of the results table.
struct Row {
    scenario: Scenario,
    peer: PeerKind,
    result: WrkResult,
    /// esi-proxy: peak RSS during the scenario (VmHWM, reset before it); nginx and Varnish:
    /// the sum of their processes' RSS at the end of the run. kB.
    rss_kb: Option<u64>,
    /// The sum of the peer's processes' PSS at the end of the run (shared pages split between
    /// the processes that map them), kB.
    pss_kb: Option<u64>,
    /// Requests the origin received during the measured run (from this peer alone: the
    /// others are idle).
    origin_requests: u64,
    /// Warm scenarios: origin requests while one page was verified through the warm cache.
    verify_origin_requests: Option<u64>,
    /// CPU time (user + system) the peer's processes used per page served during the run, ms.
    cpu_ms_per_page: Option<f64>,
    /// Connections the kernel dropped from full accept queues during the run (machine-wide):
    /// each costs its client a 1 s SYN retry.
    listen_drops: Option<u64>,
}

/// The origin measured directly, for the floor of the delayed scenario.
struct Floor {
    layout_ms: f64,
    fragment_rtt_ms: f64,
    max_delay_ms: u64,
    min_delay_ms: u64,
}

/// Time to first body bytes and to completion, per peer, for the delayed scenario.
struct Ttfb {
    peer: PeerKind,
    samples: usize,
    head_ms: f64,
    first_ms: f64,
    done_ms: f64,
    first_chunk_is_prefix: bool,
}

/// Memory held by esi-proxy for pages in flight.
struct Memory {
    pages: usize,
    delay_ms: u64,
    idle_kb: u64,
    loaded_kb: u64,
    gauge: Option<i64>,
    completed: usize,
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
        fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for kind in &settings.peers {
            let started = match kind {
                PeerKind::EsiProxy => start_esi_proxy(&dir, origin.addr, cached).map(Some),
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
                Err(e) if *kind == PeerKind::EsiProxy => return Err(e),
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
    let has_cold_proxy = peers
        .iter()
        .any(|p| p.kind == PeerKind::EsiProxy && !p.cached);

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
    let memory = if has_cold_proxy && settings.inflight_pages > 0 {
        let dir = tmp.0.join("memory");
        fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let proxy = start_esi_proxy(&dir, origin.addr, false)?;
        client_rt.block_on(wait_ready(&proxy))?;
        let pid = proxy.process.child.id();
        let memory = client_rt.block_on(measure_memory(
            &proxy,
            pid,
            settings.inflight_pages,
            settings.inflight_delay_ms,
        ))?;
        drop(proxy);
        Some(memory)
    } else {
        None
    };

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
        memory.as_ref(),
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

fn say(line: &str) {
    eprintln!("[load] {line}");
}

/// One scenario on one peer: for a warm scenario, warm its cache and check a page comes whole
/// from it; then a wrk warm-up run, and the measured run with the peer's CPU, memory and the
/// origin requests it caused.
fn load(
    client_rt: &tokio::runtime::Runtime,
    peer: &Peer,
    scenario: &Scenario,
    settings: &Settings,
    origin_requests: &RequestCounter,
) -> Result<Row> {
    let url = format!(
        "http://{}{}",
        peer.addr,
        scenario.page(peer.kind.markup()).path()
    );
    say(&format!(
        "{} / {}: {} conns, {} s",
        scenario.key,
        peer.label(),
        scenario.conns,
        settings.secs
    ));
    let verify_origin_requests = if scenario.warm {
        Some(client_rt.block_on(warm_up(peer, scenario, origin_requests))?)
    } else {
        None
    };
    if settings.warmup_secs > 0 {
        wrk(&url, settings, scenario.conns, settings.warmup_secs)?;
    }
    let root = peer.process.child.id();
    let proxy_pid = (peer.kind == PeerKind::EsiProxy).then_some(root);
    if let Some(pid) = proxy_pid {
        reset_peak_rss(pid);
    }
    let drops_before = listen_overflows();
    let cpu_before = tree_cpu_ms(root);
    let origin_before = origin_requests.total();
    let result = wrk(&url, settings, scenario.conns, settings.secs)?;
    let origin_requests = origin_requests.total() - origin_before;
    let cpu_ms_per_page = cpu_before
        .zip(tree_cpu_ms(root))
        .filter(|_| result.requests > 0)
        .map(|(before, after)| (after - before) / result.requests as f64);
    let listen_drops = drops_before
        .zip(listen_overflows())
        .map(|(before, after)| after.saturating_sub(before));
    peer.process.check_alive()?;
    let (rss_sum, pss_kb) = tree_memory_kb(root);
    let rss_kb = match proxy_pid {
        Some(pid) => proc_status_kb(pid, "VmHWM"),
        None => rss_sum,
    };
    say(&format!(
        "    {:.0} req/s, p50 {}, p99 {}, errors {}, origin requests {}",
        result.rps,
        ms(result.p50_ms),
        ms(result.p99_ms),
        result.socket_errors + result.non_2xx,
        origin_requests
    ));
    Ok(Row {
        scenario: *scenario,
        peer: peer.kind,
        result,
        rss_kb,
        pss_kb,
        origin_requests,
        verify_origin_requests,
        cpu_ms_per_page,
        listen_drops,
    })
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
            Err(_) => vec![PeerKind::EsiProxy, PeerKind::Nginx, PeerKind::Varnish],
            Ok(list) => list
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| match s {
                    "esi-proxy" => Ok(PeerKind::EsiProxy),
                    "nginx" => Ok(PeerKind::Nginx),
                    "varnish" => Ok(PeerKind::Varnish),
                    other => Err(format!(
                        "LOAD_PEERS: unknown peer {other:?} (esi-proxy, nginx, varnish)"
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
    fn page(&self, markup: Markup) -> Page {
        let page = Page::new(markup, self.n).with_delays(self.delays);
        if self.warm {
            page.with_ttl_s(WARM_TTL_S)
        } else {
            page
        }
    }
}

// === impl Peer ===

impl Peer {
    /// Its name, and whether its cache is on: `nginx`, `nginx (cache on)`.
    fn label(&self) -> String {
        if self.cached {
            format!("{} (cache on)", self.kind.name())
        } else {
            self.kind.name().to_owned()
        }
    }
}

// === impl PeerKind ===

impl PeerKind {
    fn name(self) -> &'static str {
        match self {
            PeerKind::EsiProxy => "esi-proxy",
            PeerKind::Nginx => "nginx",
            PeerKind::Varnish => "varnish",
        }
    }

    fn program(self) -> &'static str {
        match self {
            PeerKind::EsiProxy => "esi-proxy",
            PeerKind::Nginx => "nginx",
            PeerKind::Varnish => "varnishd",
        }
    }

    fn package(self) -> &'static str {
        match self {
            PeerKind::EsiProxy => "(cargo build --release -p esi-proxy)",
            PeerKind::Nginx => "nginx",
            PeerKind::Varnish => "varnish",
        }
    }

    /// nginx composes SSI; the others ESI.
    fn markup(self) -> Markup {
        match self {
            PeerKind::Nginx => Markup::Ssi,
            PeerKind::EsiProxy | PeerKind::Varnish => Markup::Esi,
        }
    }
}

// === impl ChildGuard ===

impl ChildGuard {
    /// Starts `cmd` with its output in `log`.
    fn spawn(name: &'static str, mut cmd: Command, log: PathBuf) -> Result<Self> {
        let out = fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out
            .try_clone()
            .map_err(|e| format!("{}: {e}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("starting {name}: {e}"))?;
        Ok(Self { name, child, log })
    }

    /// An error with the end of the log if the process has exited.
    fn check_alive(&self) -> Result<()> {
        // `try_wait` needs `&mut`; /proc tells the same without reaping.
        let pid = self.child.id();
        let state = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let zombie = state
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z'));
        if state.is_empty() || zombie {
            return Err(format!(
                "{} exited; end of {}:\n{}",
                self.name,
                self.log.display(),
                tail(&self.log, 20)
            ));
        }
        Ok(())
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        // TERM lets nginx's master stop its workers and varnishd its cache process; a KILL
        // would orphan them, still listening.
        let pid = self.child.id().to_string();
        let _ = Command::new("kill")
            .args(["-TERM", &pid])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// === impl TempDir ===

impl TempDir {
    fn new() -> Result<Self> {
        let path = std::env::temp_dir().join(format!("esi-load-{}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        // nginx workers and varnishd's jailed processes run as other users and must reach it.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let _ = fs::set_permissions(&path, fs::Permissions::from_mode(0o755));
        }
        Ok(Self(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("LOAD_KEEP_TMP").is_none() {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

// === impl OriginGuard ===

impl OriginGuard {
    /// Starts the origin on its own two-thread runtime, on 127.0.0.1:0.
    fn start() -> Result<Self> {
        let opts = OriginOptions::default();
        let requests = opts.requests.clone();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("origin".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("origin-worker")
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = addr_tx.send(Err(format!("origin runtime: {e}")));
                        return;
                    }
                };
                rt.block_on(async move {
                    let listener = match origin_listener() {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = addr_tx.send(Err(format!("origin bind: {e}")));
                            return;
                        }
                    };
                    let _ = addr_tx.send(listener.local_addr().map_err(|e| e.to_string()));
                    tokio::select! {
                        () = origin::serve(listener, opts) => {}
                        _ = stopped => {}
                    }
                });
            })
            .map_err(|e| format!("origin thread: {e}"))?;
        let addr = addr_rx
            .recv()
            .map_err(|_| "origin thread ended before listening".to_owned())??;
        Ok(Self {
            addr,
            requests,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

/// 127.0.0.1:0 with a deep accept queue: nginx opens hundreds of upstream connections at
/// once, and with tokio's default backlog (1024) the overflow shows as 1 s SYN retries in p99.
fn origin_listener() -> std::io::Result<tokio::net::TcpListener> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    socket.listen(ORIGIN_BACKLOG)
}

impl Drop for OriginGuard {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

// === starting the peers ===

/// `target/` of this build: the bench runs from `target/release/deps/`.
fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.to_path_buf()))
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

/// The release esi-proxy binary, built if missing (`ESI_PROXY_BIN` overrides).
fn esi_proxy_bin() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("ESI_PROXY_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let bin = target_dir().join("release").join("esi-proxy");
    if bin.exists() {
        return Ok(bin);
    }
    say("target/release/esi-proxy is missing: cargo build --release -p esi-proxy");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "-p", "esi-proxy"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .map_err(|e| format!("cargo build: {e}"))?;
    if !status.success() || !bin.exists() {
        return Err(format!(
            "cargo build --release -p esi-proxy failed ({status})"
        ));
    }
    Ok(bin)
}

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// A free loopback port (bound and released: another process could take it first, which
/// shows as the peer failing to start).
fn free_addr() -> Result<SocketAddr> {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("finding a free port: {e}"))
}

/// esi-proxy with its cache off (`--no-cache`, when the binary has it) or on (the default
/// `[cache]`: 256 MB of fragments, 64 MB of layouts, TTLs from the origin's headers).
fn start_esi_proxy(tmp: &Path, origin: SocketAddr, cached: bool) -> Result<Peer> {
    let bin = esi_proxy_bin()?;
    let addr = free_addr()?;
    let config = tmp.join("esi-proxy.toml");
    // Limits roomy enough that the bench measures composition, not the bounds; idle pool as
    // large as nginx's (2 workers x 512).
    let mut toml = "[server]\nshutdown_grace_ms = 1000\n\n[fetch]\nmax_concurrent_per_page = 256\n\
                    fragment_timeout_ms = 5000\npage_timeout_ms = 30000\npool_idle_per_host = 1024\n"
        .to_owned();
    if cached {
        toml.push_str("\n[cache]\nenabled = true\n");
    }
    fs::write(&config, toml).map_err(|e| format!("{}: {e}", config.display()))?;
    let mut cmd = Command::new(&bin);
    cmd.arg("serve")
        .arg("--config")
        .arg(&config)
        .arg("--listen")
        .arg(addr.to_string())
        .arg("--origin")
        .arg(format!("http://{origin}"));
    // Caching off when the binary has the switch (no cache exists before it does).
    let help = Command::new(&bin)
        .args(["serve", "--help"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if help.contains("--no-cache") && !cached {
        cmd.arg("--no-cache");
        NO_CACHE_FLAG.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    let process = ChildGuard::spawn("esi-proxy", cmd, tmp.join("esi-proxy.log"))?;
    Ok(Peer {
        kind: PeerKind::EsiProxy,
        cached,
        addr,
        process,
    })
}

/// nginx with `benches/load/nginx.conf` (no cache) or `nginx-cache.conf` (`proxy_cache` on the
/// layout and the SSI subrequests).
fn start_nginx(tmp: &Path, origin: SocketAddr, cached: bool) -> Result<Option<Peer>> {
    let Some(bin) = which("nginx") else {
        return Ok(None);
    };
    let prefix = tmp.join("nginx");
    fs::create_dir_all(&prefix).map_err(|e| format!("{}: {e}", prefix.display()))?;
    let addr = free_addr()?;
    let template = if cached { NGINX_CACHE_CONF } else { NGINX_CONF };
    let conf = template
        .replace("{{PREFIX}}", &prefix.display().to_string())
        .replace("{{LISTEN}}", &addr.to_string())
        .replace("{{ORIGIN}}", &origin.to_string());
    let conf_path = prefix.join("nginx.conf");
    fs::write(&conf_path, conf).map_err(|e| format!("{}: {e}", conf_path.display()))?;
    let mut cmd = Command::new(bin);
    cmd.arg("-p")
        .arg(&prefix)
        .arg("-c")
        .arg(&conf_path)
        .arg("-e")
        .arg(prefix.join("error.log"))
        .args(["-g", "daemon off;"]);
    let process = ChildGuard::spawn("nginx", cmd, prefix.join("stderr.log"))?;
    Ok(Some(Peer {
        kind: PeerKind::Nginx,
        cached,
        addr,
        process,
    }))
}

/// varnishd with `benches/load/varnish.vcl` (`return (pass)`) or `varnish-cache.vcl` (cached,
/// TTLs from the origin's headers).
fn start_varnish(tmp: &Path, origin: SocketAddr, cached: bool) -> Result<Option<Peer>> {
    let Some(bin) = which("varnishd") else {
        return Ok(None);
    };
    let dir = tmp.join("varnish");
    fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let addr = free_addr()?;
    let template = if cached {
        VARNISH_CACHE_VCL
    } else {
        VARNISH_VCL
    };
    let vcl = template
        .replace("{{ORIGIN_HOST}}", &origin.ip().to_string())
        .replace("{{ORIGIN_PORT}}", &origin.port().to_string());
    let vcl_path = dir.join("load.vcl");
    fs::write(&vcl_path, vcl).map_err(|e| format!("{}: {e}", vcl_path.display()))?;
    let mut cmd = Command::new(bin);
    cmd.arg("-F")
        .arg("-n")
        .arg(dir.join("work"))
        .arg("-a")
        .arg(addr.to_string())
        .args(["-T", "none"])
        .arg("-f")
        .arg(&vcl_path)
        .args(["-s", "malloc,64m"]);
    let process = ChildGuard::spawn("varnishd", cmd, dir.join("varnishd.log"))?;
    Ok(Some(Peer {
        kind: PeerKind::Varnish,
        cached,
        addr,
        process,
    }))
}

/// Waits until the peer answers a fragment through itself (varnishd compiles its VCL first).
async fn wait_ready(peer: &Peer) -> Result<()> {
    let client = client()?;
    let url = format!("http://{}/frag/0", peer.addr);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        peer.process.check_alive()?;
        if let Ok(resp) = client.get(&url).send().await {
            if resp.status().is_success() {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{} did not answer {url} within 30 s; end of {}:\n{}",
                peer.kind.name(),
                peer.process.log.display(),
                tail(&peer.process.log, 20)
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn client() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(1024)
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| format!("HTTP client: {e}"))
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// === correctness ===

/// The page every peer must return for `n` includes: the layout with each tag replaced by
/// its fragment's body.
fn expected_page(n: usize) -> String {
    fragments::layout_with(n, PARAGRAPHS, origin::fragment)
}

async fn verify(peer: &Peer, scenario: &Scenario) -> Result<()> {
    let path = scenario.page(peer.kind.markup()).path();
    let url = format!("http://{}{path}", peer.addr);
    let resp = client()?
        .get(&url)
        .send()
        .await
        .map_err(|e| format!("{}: GET {url}: {e}", peer.label()))?;
    let status = resp.status();
    let body = resp
        .text()
        .await
        .map_err(|e| format!("{}: reading {url}: {e}", peer.label()))?;
    let want = expected_page(scenario.n);
    if status.is_success() && body == want {
        return Ok(());
    }
    let mut problems = Vec::new();
    if !status.is_success() {
        problems.push(format!("status {status}"));
    }
    let missing: Vec<usize> = (0..scenario.n)
        .filter(|&i| !body.contains(&origin::fragment(i)))
        .collect();
    if !missing.is_empty() {
        problems.push(format!(
            "{} of {} fragments missing (first: {:?})",
            missing.len(),
            scenario.n,
            &missing[..missing.len().min(5)]
        ));
    }
    for leftover in ["<esi:", "<!--#"] {
        if body.contains(leftover) {
            problems.push(format!("{leftover} left in the page"));
        }
    }
    if problems.is_empty() {
        let at = body
            .bytes()
            .zip(want.bytes())
            .position(|(a, b)| a != b)
            .unwrap_or(body.len().min(want.len()));
        problems.push(format!(
            "page differs from the expected one at byte {at} ({} vs {} bytes): {:?}",
            body.len(),
            want.len(),
            body.get(at..(at + 80).min(body.len())).unwrap_or("")
        ));
    }
    Err(format!(
        "{} composed {url} wrongly: {}",
        peer.label(),
        problems.join("; ")
    ))
}

/// Fills a warm peer's cache with [`WARM_REQUESTS`] pages, then checks one more comes whole
/// from it; returns the origin requests that check caused (0 when the page was all hits).
async fn warm_up(
    peer: &Peer,
    scenario: &Scenario,
    origin_requests: &RequestCounter,
) -> Result<u64> {
    let client = client()?;
    let url = format!(
        "http://{}{}",
        peer.addr,
        scenario.page(peer.kind.markup()).path()
    );
    for _ in 0..WARM_REQUESTS {
        client
            .get(&url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| format!("{}: GET {url}: {e}", peer.label()))?
            .bytes()
            .await
            .map_err(|e| format!("{}: reading {url}: {e}", peer.label()))?;
    }
    let before = origin_requests.total();
    verify(peer, scenario).await?;
    let after = origin_requests.total();
    if after > before {
        say(&format!(
            "    {} is not warm: a verified page cost {} origin requests",
            peer.label(),
            after - before
        ));
    }
    Ok(after - before)
}

// === measurements ===

/// Runs wrk once and parses its report.
fn wrk(url: &str, settings: &Settings, conns: u64, secs: u64) -> Result<WrkResult> {
    let output = Command::new("wrk")
        .arg(format!("-t{}", settings.threads))
        .arg(format!("-c{conns}"))
        .arg(format!("-d{secs}s"))
        .args(["--latency", "--timeout", WRK_TIMEOUT, url])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running wrk: {e}"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!(
            "wrk {url} failed ({}): {text}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    parse_wrk(&text).ok_or_else(|| format!("cannot read wrk's report:\n{text}"))
}

/// Reads requests/s, p50, p99, bytes and errors from wrk's `--latency` report.
fn parse_wrk(text: &str) -> Option<WrkResult> {
    let mut r = WrkResult::default();
    let (mut p50, mut p99, mut rps) = (None, None, None);
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["50%", v] => p50 = parse_duration_ms(v),
            ["99%", v] => p99 = parse_duration_ms(v),
            ["Requests/sec:", v] => rps = v.parse().ok(),
            [n, "requests", "in", _, bytes, "read"] => {
                r.requests = n.parse().ok()?;
                r.bytes_read = parse_bytes(bytes)?;
            }
            ["Non-2xx", "or", "3xx", "responses:", n] => r.non_2xx = n.parse().ok()?,
            ["Socket", "errors:", rest @ ..] => {
                r.socket_errors = rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum();
            }
            _ => {}
        }
    }
    r.p50_ms = p50?;
    r.p99_ms = p99?;
    r.rps = rps?;
    Some(r)
}

/// wrk's durations: `812.00us`, `1.23ms`, `2.01s`, `1.50m`.
fn parse_duration_ms(v: &str) -> Option<f64> {
    let split = v.find(|c: char| c.is_ascii_alphabetic())?;
    let (num, unit) = v.split_at(split);
    let num: f64 = num.parse().ok()?;
    let scale = match unit {
        "us" => 0.001,
        "ms" => 1.0,
        "s" => 1000.0,
        "m" => 60_000.0,
        "h" => 3_600_000.0,
        _ => return None,
    };
    Some(num * scale)
}

/// wrk's byte counts, binary units: `1.23MB`, `512.00KB`, `800B`.
fn parse_bytes(v: &str) -> Option<f64> {
    let split = v.find(|c: char| c.is_ascii_alphabetic())?;
    let (num, unit) = v.split_at(split);
    let num: f64 = num.parse().ok()?;
    let scale = match unit {
        "B" => 1.0,
        "KB" => 1024.0,
        "MB" => 1024.0 * 1024.0,
        "GB" => 1024.0 * 1024.0 * 1024.0,
        "TB" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    Some(num * scale)
}

/// A `kB` line of /proc/<pid>/status (`VmRSS`, `VmHWM`).
fn proc_status_kb(pid: u32, field: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// CPU time (user + system, ms) used so far by process `root` and its descendants: nginx's
/// workers, varnishd's cache process.
fn tree_cpu_ms(root: u32) -> Option<f64> {
    let ticks: u64 = process_tree(root)?.iter().map(|&(_, t)| t).sum();
    Some(ticks as f64 * 1000.0 / clock_ticks_per_sec())
}

/// The sums of VmRSS and of PSS (`/proc/<pid>/smaps_rollup`) over process `root` and its
/// descendants, kB. RSS counts a page shared by nginx's master and workers once per process;
/// PSS splits it between them.
fn tree_memory_kb(root: u32) -> (Option<u64>, Option<u64>) {
    let Some(tree) = process_tree(root) else {
        return (None, None);
    };
    let mut rss = Some(0);
    let mut pss = Some(0);
    for (pid, _) in tree {
        rss = rss.zip(proc_status_kb(pid, "VmRSS")).map(|(a, b)| a + b);
        pss = pss.zip(pss_kb(pid)).map(|(a, b)| a + b);
    }
    (rss, pss)
}

/// `Pss:` of /proc/<pid>/smaps_rollup, kB (readable for processes we may ptrace).
fn pss_kb(pid: u32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Process `root` and its descendants, each with its CPU time so far (utime + stime, clock
/// ticks); `None` when /proc cannot be read.
fn process_tree(root: u32) -> Option<Vec<(u32, u64)>> {
    // (pid, ppid, utime + stime in clock ticks) of every process.
    let mut procs = Vec::new();
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the command, which is in parentheses and may hold spaces.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        // rest[0] is field 3 (state): ppid is field 4, utime 14, stime 15.
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
        if let (Some(ppid), Some(utime), Some(stime)) = (num(1), num(11), num(12)) {
            procs.push((pid, ppid as u32, utime + stime));
        }
    }
    let mut tree = vec![root];
    let mut out = Vec::new();
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        for &(pid, ppid, t) in &procs {
            if pid == parent {
                out.push((pid, t));
            }
            if ppid == parent && !tree.contains(&pid) {
                tree.push(pid);
            }
        }
        i += 1;
    }
    Some(out)
}

/// `getconf CLK_TCK`, the unit of /proc's CPU times (100 on Linux unless told otherwise).
fn clock_ticks_per_sec() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .filter(|&t: &f64| t > 0.0)
            .unwrap_or(100.0)
    })
}

/// `TcpExt: ListenOverflows` from /proc/net/netstat: connections dropped because an accept
/// queue was full, machine-wide.
fn listen_overflows() -> Option<u64> {
    let text = fs::read_to_string("/proc/net/netstat").ok()?;
    let mut tcp_ext = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (tcp_ext.next()?, tcp_ext.next()?);
    let at = names
        .split_whitespace()
        .position(|n| n == "ListenOverflows")?;
    values.split_whitespace().nth(at)?.parse().ok()
}

/// Resets VmHWM to the current RSS (Linux `clear_refs` 5), so each scenario has its own peak.
fn reset_peak_rss(pid: u32) {
    let _ = fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The floor of the delayed page: the layout's time from the origin, plus the slowest
/// fragment's delay, plus one fragment round trip; medians of sequential requests.
async fn measure_floor(origin_addr: SocketAddr, s: &Scenario) -> Result<Floor> {
    let client = client()?;
    let layout_url = format!("http://{origin_addr}{}", s.page(Markup::Esi).path());
    let frag_url = format!("http://{origin_addr}/frag/0");
    let mut layout = Vec::new();
    let mut frag = Vec::new();
    for _ in 0..30 {
        for (url, out) in [(&layout_url, &mut layout), (&frag_url, &mut frag)] {
            let t = Instant::now();
            let body = client
                .get(url.as_str())
                .send()
                .await
                .and_then(reqwest::Response::error_for_status)
                .map_err(|e| format!("origin {url}: {e}"))?
                .bytes()
                .await
                .map_err(|e| format!("origin {url}: {e}"))?;
            out.push(t.elapsed().as_secs_f64() * 1000.0);
            drop(body);
        }
    }
    Ok(Floor {
        layout_ms: median(layout),
        fragment_rtt_ms: median(frag),
        max_delay_ms: s.delays.max_of(s.n),
        min_delay_ms: (0..s.n)
            .map(|i| s.delays.for_fragment(i))
            .min()
            .unwrap_or(0),
    })
}

/// Sequential requests for the delayed page: time to the response head, to the first body
/// bytes and to the end; and whether the first bytes were only the layout's prefix.
async fn measure_ttfb(peer: &Peer, s: &Scenario) -> Result<Ttfb> {
    let client = client()?;
    let url = format!("http://{}{}", peer.addr, s.page(peer.kind.markup()).path());
    let prefix = expected_page(s.n);
    let prefix = &prefix[..prefix.find("<div class=\"fragment\"").unwrap_or(0)];
    let (mut head, mut first, mut done) = (Vec::new(), Vec::new(), Vec::new());
    let mut prefix_first = true;
    // Bounded by count and time: Varnish takes seconds per delayed page.
    let budget = Instant::now() + Duration::from_secs(8);
    while head.len() < 20 && (head.len() < 3 || Instant::now() < budget) {
        let t = Instant::now();
        let mut resp = client
            .get(&url)
            .send()
            .await
            .map_err(|e| format!("{} {url}: {e}", peer.kind.name()))?;
        head.push(t.elapsed().as_secs_f64() * 1000.0);
        let mut got_first = false;
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| format!("{} {url}: {e}", peer.kind.name()))?
        {
            if !got_first && !chunk.is_empty() {
                got_first = true;
                first.push(t.elapsed().as_secs_f64() * 1000.0);
                // The first bytes hold no fragment: they are (a part of) the layout's prefix.
                prefix_first &=
                    chunk.len() <= prefix.len() && prefix.as_bytes().starts_with(&chunk);
            }
        }
        done.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(Ttfb {
        peer: peer.kind,
        samples: head.len(),
        head_ms: median(head),
        first_ms: median(first),
        done_ms: median(done),
        first_chunk_is_prefix: prefix_first,
    })
}

/// Holds `pages` delayed 120-fragment pages in flight at once and compares esi-proxy's RSS
/// with its idle RSS.
async fn measure_memory(proxy: &Peer, pid: u32, pages: usize, delay_ms: u64) -> Result<Memory> {
    say(&format!(
        "memory: {pages} pages of 120 fragments ({delay_ms} ms each) in flight"
    ));
    let client = client()?;
    let url = format!(
        "http://{}{}",
        proxy.addr,
        origin::page_path(Markup::Esi, 120, Delays::Fixed(delay_ms))
    );
    let want_len = expected_page(120).len();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let idle_kb = proc_status_kb(pid, "VmRSS").unwrap_or(0);
    let heads = Arc::new(tokio::sync::Semaphore::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..pages {
        let (client, url, heads) = (client.clone(), url.clone(), Arc::clone(&heads));
        tasks.spawn(async move {
            let resp = client.get(&url).send().await;
            heads.add_permits(1);
            let body = resp.ok()?.bytes().await.ok()?;
            Some(body.len())
        });
    }
    // Every page has its head (its layout is parsed and its includes started) ...
    let all_heads = heads.acquire_many(pages as u32);
    let _ = tokio::time::timeout(Duration::from_secs(10), all_heads).await;
    // ... and the fetches are in flight: sample over most of one delay.
    let mut loaded_kb = 0;
    let sample_until = Instant::now() + Duration::from_millis(delay_ms.clamp(100, 2000) * 8 / 10);
    while Instant::now() < sample_until {
        loaded_kb = loaded_kb.max(proc_status_kb(pid, "VmRSS").unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let gauge = pages_in_flight(&client, proxy.addr).await;
    let mut completed = 0;
    let all_done = async {
        while let Some(done) = tasks.join_next().await {
            if matches!(done, Ok(Some(len)) if len == want_len) {
                completed += 1;
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(90), all_done)
        .await
        .is_err()
    {
        say("memory: pages still not complete after 90 s; abandoning them");
    }
    Ok(Memory {
        pages,
        delay_ms,
        idle_kb,
        loaded_kb,
        gauge,
        completed,
    })
}

/// `esi_proxy_pages_in_flight` from the metrics endpoint, if it answers.
async fn pages_in_flight(client: &reqwest::Client, addr: SocketAddr) -> Option<i64> {
    let text = client
        .get(format!("http://{addr}/_esi/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("esi_proxy_pages_in_flight "))
        .and_then(|v| v.trim().parse().ok())
}

// === the report ===

fn ms(v: f64) -> String {
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

fn mb(kb: Option<u64>) -> String {
    kb.map_or_else(
        || "n/a".into(),
        |kb| format!("{:.1} MB", kb as f64 / 1024.0),
    )
}

/// `n / pages` with enough digits to tell 0 from a few stray requests.
fn per_page(n: u64, pages: u64) -> String {
    if pages == 0 {
        "n/a".into()
    } else if n == 0 {
        "0".into()
    } else {
        let v = n as f64 / pages as f64;
        if v < 0.01 {
            format!("{v:.5}")
        } else {
            format!("{v:.2}")
        }
    }
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 && a.is_finite() && b.is_finite() {
        format!("{:.2}x", a / b)
    } else {
        "n/a".into()
    }
}

fn version(program: &str, args: &[&str]) -> String {
    let Ok(out) = Command::new(program).args(args).output() else {
        return "not installed".into();
    };
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    text.lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("?")
        .trim()
        .to_owned()
}

fn cpu_model() -> String {
    let mut text = String::new();
    if let Ok(mut f) = fs::File::open("/proc/cpuinfo") {
        let _ = f.read_to_string(&mut text);
    }
    text.lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "?".into())
}

/// Whether each warm run was really served from the caches, and esi-proxy's p99 on (d)
/// against [`WARM_P99_TARGET_MS`].
fn render_warm(out: &mut String, rows: &[Row]) {
    let warm: Vec<&Row> = rows.iter().filter(|r| r.scenario.warm).collect();
    if warm.is_empty() {
        return;
    }
    let _ = writeln!(out, "\n## Warm caches\n");
    let _ = writeln!(
        out,
        "Origin requests while one page was checked through the warm cache (after \
         {WARM_REQUESTS} warming pages), and during the measured run: a warm peer makes none. \
         A run with more than {WARM_MAX_ORIGIN_PER_PAGE} per page is marked not warm.\n"
    );
    let _ = writeln!(
        out,
        "| scenario | peer | check page | measured run | per page | warm |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---|");
    let mut all_warm = true;
    for row in &warm {
        let pages = row.result.requests.max(1) as f64;
        let is_warm = row.verify_origin_requests == Some(0)
            && (row.origin_requests as f64 / pages) <= WARM_MAX_ORIGIN_PER_PAGE;
        all_warm &= is_warm;
        let _ = writeln!(
            out,
            "| ({}) {} | {} | {} | {} | {} | {} |",
            row.scenario.key,
            row.scenario.title,
            row.peer.name(),
            row.verify_origin_requests
                .map_or_else(|| "n/a".into(), |n| n.to_string()),
            row.origin_requests,
            per_page(row.origin_requests, row.result.requests),
            if is_warm { "yes" } else { "**no**" }
        );
    }
    let _ = writeln!(
        out,
        "\n{}",
        if all_warm {
            "Every warm run was served from its peer's cache."
        } else {
            "**At least one warm run reached the origin: its row measures more than the cache.**"
        }
    );
    if let Some(d) = warm
        .iter()
        .find(|r| r.scenario.key == "d" && r.peer == PeerKind::EsiProxy)
    {
        let p99 = d.result.p99_ms;
        // wrk keeps every connection busy: by Little's law the mean latency is at least
        // connections / throughput, whatever the peer does per page.
        let queueing_ms = d.scenario.conns as f64 / d.result.rps * 1000.0;
        let _ = writeln!(
            out,
            "\nesi-proxy p99 on warm (d): {} at {} connections: {} the {} target. wrk is closed \
             loop: {} connections / {:.0} req/s = {} mean latency from queueing alone; \
             `LOAD_SCENARIOS=d LOAD_CONNS=2` measures the page unloaded.",
            ms(p99),
            d.scenario.conns,
            if p99 < WARM_P99_TARGET_MS {
                "under"
            } else {
                "**over**"
            },
            ms(WARM_P99_TARGET_MS),
            d.scenario.conns,
            d.result.rps,
            ms(queueing_ms)
        );
    }
}

fn render_report(
    settings: &Settings,
    rows: &[Row],
    floor: Option<&Floor>,
    ttfbs: &[Ttfb],
    memory: Option<&Memory>,
    skipped: &[String],
    took: Duration,
) -> String {
    let mut out = String::new();
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let _ = writeln!(out, "# esi-proxy load report\n");
    let _ = writeln!(
        out,
        "wrk -t{} --latency, {} s per run after {} s warm-up, {} conns for (a)/(b)/(d)/(e), {} \
         for (c); origin in-process ({} paragraphs of layout text per include, fragments 1-4 \
         KB). {cores} cores: {}; load average before the run {}. Whole run: {:.0} s.\n",
        settings.threads,
        settings.secs,
        settings.warmup_secs,
        settings.conns,
        settings.conns_delayed,
        PARAGRAPHS,
        cpu_model(),
        settings.load_average.as_deref().unwrap_or("n/a"),
        took.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "Cold (a)-(c): no caching anywhere, every origin response says `Cache-Control: \
         no-store`. Warm (d)/(e): the page and every include say `Cache-Control: public, \
         max-age={WARM_TTL_S}` (`?ttl={WARM_TTL_S}`), served by a second instance of each peer \
         with its cache on (esi-proxy without `--no-cache`; nginx `proxy_cache` on the layout \
         and the SSI subrequests, keyed on the URI, `proxy_cache_lock on`; Varnish without \
         `return (pass)`), each warmed with {WARM_REQUESTS} pages and the wrk warm-up before \
         its measured run.\n"
    );
    let _ = writeln!(
        out,
        "Peers: {}; {}; {}.\n",
        version("nginx", &["-v"]),
        version("varnishd", &["-V"]),
        version("wrk", &["-v"])
    );
    let cold = rows.iter().any(|r| !r.scenario.warm);
    let warm = rows.iter().any(|r| r.scenario.warm);
    let _ = writeln!(
        out,
        "esi-proxy: `serve --config` with `max_concurrent_per_page = 256`, \
         `pool_idle_per_host = 1024`{}{}.\n",
        match (
            cold,
            NO_CACHE_FLAG.load(std::sync::atomic::Ordering::Relaxed)
        ) {
            (false, _) => "",
            (true, true) => "; cold: `--no-cache`",
            (true, false) => "; cold: this binary has no `--no-cache`",
        },
        if warm {
            "; warm: the default `[cache]`"
        } else {
            ""
        }
    );
    for line in skipped {
        let _ = writeln!(out, "**{line}**\n");
    }

    let _ = writeln!(out, "## Throughput and latency\n");
    let _ = writeln!(
        out,
        "CPU ms/page: user + system time of the peer's processes during the measured run, per \
         page. Origin requests: what the origin received during the measured run, and per page. \
         Peer RSS: esi-proxy's peak (`VmHWM`, reset before the scenario); nginx and Varnish: \
         the sum of their processes' RSS at the end of the run (shared pages counted once per \
         process). PSS: the sum of the processes' proportional set size at the end (shared \
         pages split), the like-for-like figure.\n"
    );
    let _ = writeln!(
        out,
        "| scenario | peer | req/s | p50 | p99 | p50 / floor | CPU ms/page | errors | listen drops | KB/page | origin requests (per page) | peer RSS | PSS |"
    );
    let _ = writeln!(
        out,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for row in rows {
        let r = &row.result;
        let floor_ms = floor
            .filter(|_| row.scenario.delays != Delays::None)
            .map(|f| f.layout_ms + f.max_delay_ms as f64 + f.fragment_rtt_ms);
        let _ = writeln!(
            out,
            "| ({}) {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {:.1} | {} ({}) | {} | {} |",
            row.scenario.key,
            row.scenario.title,
            row.peer.name(),
            r.rps,
            ms(r.p50_ms),
            ms(r.p99_ms),
            floor_ms.map_or_else(|| "".into(), |f| ratio(r.p50_ms, f)),
            row.cpu_ms_per_page
                .map_or_else(|| "n/a".into(), |c| format!("{c:.2}")),
            r.socket_errors + r.non_2xx,
            row.listen_drops
                .map_or_else(|| "n/a".into(), |d| d.to_string()),
            if r.requests > 0 {
                r.bytes_read / r.requests as f64 / 1024.0
            } else {
                0.0
            },
            row.origin_requests,
            per_page(row.origin_requests, r.requests),
            mb(row.rss_kb),
            mb(row.pss_kb),
        );
    }

    let _ = writeln!(out, "\n## esi-proxy relative to the others\n");
    let _ = writeln!(
        out,
        "req/s: above 1x means esi-proxy serves more; p50, p99 and CPU per page: below 1x means \
         esi-proxy is faster or cheaper.\n"
    );
    let _ = writeln!(
        out,
        "| scenario | req/s vs nginx | req/s vs varnish | p50 vs nginx | p50 vs varnish | p99 vs nginx | p99 vs varnish | CPU/page vs nginx | CPU/page vs varnish | RSS vs nginx | RSS vs varnish | PSS vs nginx | PSS vs varnish |"
    );
    let _ = writeln!(
        out,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for scenario in &settings.scenarios {
        let find = |peer| {
            rows.iter()
                .find(|r| r.scenario.key == scenario.key && r.peer == peer)
        };
        let Some(esi) = find(PeerKind::EsiProxy) else {
            continue;
        };
        let cmp = |peer, f: fn(&Row) -> f64| {
            find(peer).map_or_else(|| "n/a".into(), |other| ratio(f(esi), f(other)))
        };
        let _ = writeln!(
            out,
            "| ({}) {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            scenario.key,
            scenario.title,
            cmp(PeerKind::Nginx, |r| r.result.rps),
            cmp(PeerKind::Varnish, |r| r.result.rps),
            cmp(PeerKind::Nginx, |r| r.result.p50_ms),
            cmp(PeerKind::Varnish, |r| r.result.p50_ms),
            cmp(PeerKind::Nginx, |r| r.result.p99_ms),
            cmp(PeerKind::Varnish, |r| r.result.p99_ms),
            cmp(PeerKind::Nginx, |r| r.cpu_ms_per_page.unwrap_or(f64::NAN)),
            cmp(PeerKind::Varnish, |r| r.cpu_ms_per_page.unwrap_or(f64::NAN)),
            cmp(PeerKind::Nginx, |r| r
                .rss_kb
                .map_or(f64::NAN, |kb| kb as f64)),
            cmp(PeerKind::Varnish, |r| r
                .rss_kb
                .map_or(f64::NAN, |kb| kb as f64)),
            cmp(PeerKind::Nginx, |r| r
                .pss_kb
                .map_or(f64::NAN, |kb| kb as f64)),
            cmp(PeerKind::Varnish, |r| r
                .pss_kb
                .map_or(f64::NAN, |kb| kb as f64)),
        );
    }

    render_warm(&mut out, rows);

    if let Some(f) = floor {
        let total = f.layout_ms + f.max_delay_ms as f64 + f.fragment_rtt_ms;
        let _ = writeln!(out, "\n## Floor of (c)\n");
        let _ = writeln!(
            out,
            "Layout from the origin {} + slowest fragment's delay {} ms + one fragment round \
             trip {} = **{}**: what a composer that fetches every fragment at once cannot beat. \
             A composer that fetches them one after another pays the sum of the delays instead.\n",
            ms(f.layout_ms),
            f.max_delay_ms,
            ms(f.fragment_rtt_ms),
            ms(total)
        );
    }

    if !ttfbs.is_empty() {
        let _ = writeln!(
            out,
            "## First bytes vs. whole page, (c), one request at a time\n"
        );
        if let Some(f) = floor {
            let _ = writeln!(
                out,
                "No fragment can be ready before the layout ({}) plus the shortest delay ({} ms). \
                 Medians:\n",
                ms(f.layout_ms),
                f.min_delay_ms
            );
        }
        let _ = writeln!(
            out,
            "| peer | samples | response head | first body bytes | whole page | first bytes before any fragment |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---|");
        for t in ttfbs {
            let early = floor.map(|f| t.first_ms < f.layout_ms + f.min_delay_ms as f64);
            let verdict = match (t.first_chunk_is_prefix, early) {
                (true, Some(true)) => "yes (layout prefix, before the first fragment)",
                (true, _) => "prefix first, but not sooner than a fragment",
                (false, _) => "no (first bytes held a fragment)",
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {verdict} |",
                t.peer.name(),
                t.samples,
                ms(t.head_ms),
                ms(t.first_ms),
                ms(t.done_ms)
            );
        }
    }

    if let Some(m) = memory {
        let grown = m.loaded_kb.saturating_sub(m.idle_kb);
        let _ = writeln!(out, "\n## esi-proxy memory per in-flight page\n");
        let _ = writeln!(
            out,
            "{} concurrent `/page/esi/120?delay={}` (every fragment {} ms), on a fresh esi-proxy: \
             RSS {:.1} MB idle, {:.1} MB at most while they were in flight (pages-in-flight \
             gauge: {}): **{:.1} KB per page** ({:.0} B per include). {} {}/{} pages \
             completed whole.",
            m.pages,
            m.delay_ms,
            m.delay_ms,
            m.idle_kb as f64 / 1024.0,
            m.loaded_kb as f64 / 1024.0,
            m.gauge.map_or_else(|| "n/a".into(), |g| g.to_string()),
            grown as f64 / m.pages.max(1) as f64,
            grown as f64 * 1024.0 / (m.pages.max(1) * 120) as f64,
            if m.pages * 120 > 4096 {
                format!(
                    "Their {} includes exceed `fetch.max_concurrent` (4096 by default): about \
                     4096 fetches were in flight and the rest waited for a permit.",
                    m.pages * 120
                )
            } else {
                format!("All {} includes were in flight at once.", m.pages * 120)
            },
            m.completed,
            m.pages
        );
    }
    out
}
