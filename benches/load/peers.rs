//! What the bench runs: the in-process origin and the peers in front of it (esi-proxy, nginx,
//! Varnish), each a child process on a free loopback port, stopped when dropped, panics
//! included. Knows nothing of scenarios or measurements.

use std::fs;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fragments::origin::{self, Markup, OriginOptions, RequestCounter};

use crate::{say, Result};

const NGINX_CONF: &str = include_str!("nginx.conf");
const VARNISH_VCL: &str = include_str!("varnish.vcl");
const NGINX_CACHE_CONF: &str = include_str!("nginx-cache.conf");
const VARNISH_CACHE_VCL: &str = include_str!("varnish-cache.vcl");

/// Whether esi-proxy was started with `--no-cache` (binaries from before the switch have no
/// cache to turn off).
pub(crate) static NO_CACHE_FLAG: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// The origin's accept queue (the kernel caps it at `net.core.somaxconn`).
const ORIGIN_BACKLOG: u32 = 8192;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PeerKind {
    EsiProxy,
    /// esi-proxy with `fetch.origin_http2`: its fragment requests to the origin as HTTP/2
    /// streams (the origin accepts both).
    EsiProxyH2c,
    Nginx,
    Varnish,
}

/// A running peer: where it listens and the process to stop.
pub(crate) struct Peer {
    pub(crate) kind: PeerKind,
    /// Whether its cache is on: it serves the warm scenarios, the others the cold ones.
    pub(crate) cached: bool,
    pub(crate) addr: SocketAddr,
    pub(crate) process: ChildGuard,
}

/// A child process stopped (TERM, then KILL) when dropped, so a panic stops it too.
pub(crate) struct ChildGuard {
    name: &'static str,
    pub(crate) child: Child,
    log: PathBuf,
}

/// A directory removed when dropped.
pub(crate) struct TempDir(pub(crate) PathBuf);

/// The origin's runtime thread; stopping it closes the listener and every connection.
pub(crate) struct OriginGuard {
    pub(crate) addr: SocketAddr,
    /// What the origin has been asked, from every peer.
    pub(crate) requests: RequestCounter,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

// === impl Peer ===

impl Peer {
    /// Its name, and whether its cache is on: `nginx`, `nginx (cache on)`.
    pub(crate) fn label(&self) -> String {
        if self.cached {
            format!("{} (cache on)", self.kind.name())
        } else {
            self.kind.name().to_owned()
        }
    }
}

// === impl PeerKind ===

impl PeerKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            PeerKind::EsiProxy => "esi-proxy",
            PeerKind::EsiProxyH2c => "esi-proxy-h2c",
            PeerKind::Nginx => "nginx",
            PeerKind::Varnish => "varnish",
        }
    }

    /// Whether it is esi-proxy, in either configuration.
    pub(crate) fn is_esi_proxy(self) -> bool {
        matches!(self, PeerKind::EsiProxy | PeerKind::EsiProxyH2c)
    }

    pub(crate) fn program(self) -> &'static str {
        match self {
            PeerKind::EsiProxy | PeerKind::EsiProxyH2c => "esi-proxy",
            PeerKind::Nginx => "nginx",
            PeerKind::Varnish => "varnishd",
        }
    }

    pub(crate) fn package(self) -> &'static str {
        match self {
            PeerKind::EsiProxy | PeerKind::EsiProxyH2c => "(cargo build --release -p esi-proxy)",
            PeerKind::Nginx => "nginx",
            PeerKind::Varnish => "varnish",
        }
    }

    /// nginx composes SSI; the others ESI.
    pub(crate) fn markup(self) -> Markup {
        match self {
            PeerKind::Nginx => Markup::Ssi,
            PeerKind::EsiProxy | PeerKind::EsiProxyH2c | PeerKind::Varnish => Markup::Esi,
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
    pub(crate) fn check_alive(&self) -> Result<()> {
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
    pub(crate) fn new() -> Result<Self> {
        let path = std::env::temp_dir().join(format!("esi-load-{}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        create_dir(&path)?;
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
    pub(crate) fn start() -> Result<Self> {
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
pub(crate) fn target_dir() -> PathBuf {
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

pub(crate) fn which(program: &str) -> Option<PathBuf> {
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
/// `[cache]`: 256 MB of fragments, 64 MB of layouts, TTLs from the origin's headers);
/// `EsiProxyH2c` with `fetch.origin_http2`.
pub(crate) fn start_esi_proxy(
    tmp: &Path,
    origin: SocketAddr,
    cached: bool,
    kind: PeerKind,
) -> Result<Peer> {
    let bin = esi_proxy_bin()?;
    let addr = free_addr()?;
    let config = tmp.join(format!("{}.toml", kind.name()));
    // Limits roomy enough that the bench measures composition, not the bounds; idle pool as
    // large as nginx's (2 workers x 512).
    let mut toml = "[server]\nshutdown_grace_ms = 1000\n\n[fetch]\nmax_concurrent_per_page = 256\n\
                    fragment_timeout_ms = 5000\npage_timeout_ms = 30000\npool_idle_per_host = 1024\n"
        .to_owned();
    if kind == PeerKind::EsiProxyH2c {
        toml.push_str("origin_http2 = true\n");
    }
    if cached {
        toml.push_str("\n[cache]\nenabled = true\n");
    }
    write_file(&config, &toml)?;
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
    let log = tmp.join(format!("{}.log", kind.name()));
    let process = ChildGuard::spawn("esi-proxy", cmd, log)?;
    Ok(Peer {
        kind,
        cached,
        addr,
        process,
    })
}

/// nginx with `benches/load/nginx.conf` (no cache) or `nginx-cache.conf` (`proxy_cache` on the
/// layout and the SSI subrequests).
pub(crate) fn start_nginx(tmp: &Path, origin: SocketAddr, cached: bool) -> Result<Option<Peer>> {
    let Some(bin) = which("nginx") else {
        return Ok(None);
    };
    let prefix = tmp.join("nginx");
    create_dir(&prefix)?;
    let addr = free_addr()?;
    let template = if cached { NGINX_CACHE_CONF } else { NGINX_CONF };
    let conf = template
        .replace("{{PREFIX}}", &prefix.display().to_string())
        .replace("{{LISTEN}}", &addr.to_string())
        .replace("{{ORIGIN}}", &origin.to_string());
    let conf_path = prefix.join("nginx.conf");
    write_file(&conf_path, &conf)?;
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
pub(crate) fn start_varnish(tmp: &Path, origin: SocketAddr, cached: bool) -> Result<Option<Peer>> {
    let Some(bin) = which("varnishd") else {
        return Ok(None);
    };
    let dir = tmp.join("varnish");
    create_dir(&dir)?;
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
    write_file(&vcl_path, &vcl)?;
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
pub(crate) async fn wait_ready(peer: &Peer) -> Result<()> {
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

pub(crate) fn client() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(1024)
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| format!("HTTP client: {e}"))
}

/// `fs::create_dir_all`, its error naming the directory.
pub(crate) fn create_dir(path: &Path) -> Result<()> {
    fs::create_dir_all(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// `fs::write`, its error naming the file.
pub(crate) fn write_file(path: &Path, contents: &str) -> Result<()> {
    fs::write(path, contents).map_err(|e| format!("{}: {e}", path.display()))
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
