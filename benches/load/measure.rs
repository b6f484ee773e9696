//! Measurements: one scenario on one peer under wrk (with the peer's CPU, memory and the origin
//! requests it caused, read from /proc), the floor of the delayed page, first bytes against the
//! whole page, and esi-proxy's memory per page in flight.

use std::fs;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fragments::origin::{self, Delays, Markup, RequestCounter};

use crate::peers::{client, Peer, PeerKind};
use crate::verify::{expected_page, warm_up};
use crate::{ms, say, Result, Scenario, Settings};

/// wrk's per-request timeout: Varnish composes includes one after another, so a delayed
/// 120-fragment page takes it seconds; a timeout would hide that as errors.
const WRK_TIMEOUT: &str = "10s";

/// What one wrk run measured.
#[derive(Debug, Clone, Default)]
pub(crate) struct WrkResult {
    pub(crate) requests: u64,
    pub(crate) rps: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) bytes_read: f64,
    pub(crate) socket_errors: u64,
    pub(crate) non_2xx: u64,
    /// wrk's own CPU time over the run (all its threads), ms.
    pub(crate) cpu_ms: Option<f64>,
}

/// One row of the results table.
pub(crate) struct Row {
    pub(crate) scenario: Scenario,
    pub(crate) peer: PeerKind,
    pub(crate) result: WrkResult,
    /// esi-proxy: peak RSS during the scenario (VmHWM, reset before it); nginx and Varnish:
    /// the sum of their processes' RSS at the end of the run. kB.
    pub(crate) rss_kb: Option<u64>,
    /// The sum of the peer's processes' PSS at the end of the run (shared pages split between
    /// the processes that map them), kB.
    pub(crate) pss_kb: Option<u64>,
    /// Requests the origin received during the measured run (from this peer alone: the
    /// others are idle).
    pub(crate) origin_requests: u64,
    /// Warm scenarios: origin requests while one page was verified through the warm cache.
    pub(crate) verify_origin_requests: Option<u64>,
    /// CPU time (user + system) the peer's processes used per page served during the run, ms.
    pub(crate) cpu_ms_per_page: Option<f64>,
    /// CPU time per page of what drives and serves the peer: wrk and the in-process origin's
    /// threads. With the peer's, what one page costs the machine.
    pub(crate) rest_cpu_ms_per_page: Option<f64>,
    /// Connections the kernel dropped from full accept queues during the run (machine-wide):
    /// each costs its client a 1 s SYN retry.
    pub(crate) listen_drops: Option<u64>,
}

/// The origin measured directly, for the floor of the delayed scenario.
pub(crate) struct Floor {
    pub(crate) layout_ms: f64,
    /// The slowest include's own URL fetched from the origin: its delay as the origin's timer
    /// really keeps it, plus one round trip.
    pub(crate) slowest_ms: f64,
    pub(crate) max_delay_ms: u64,
    pub(crate) min_delay_ms: u64,
}

/// Time to first body bytes and to completion, per peer, for the delayed scenario.
pub(crate) struct Ttfb {
    pub(crate) peer: PeerKind,
    pub(crate) samples: usize,
    pub(crate) head_ms: f64,
    pub(crate) first_ms: f64,
    pub(crate) done_ms: f64,
    pub(crate) first_chunk_is_prefix: bool,
}

/// Memory held by esi-proxy for pages in flight.
pub(crate) struct Memory {
    pub(crate) pages: usize,
    pub(crate) delay_ms: u64,
    pub(crate) idle_kb: u64,
    pub(crate) loaded_kb: u64,
    pub(crate) gauge: Option<i64>,
    pub(crate) completed: usize,
}

// === impl Floor ===

impl Floor {
    /// What a composer that fetches every fragment at once cannot beat: the layout, then the
    /// slowest fragment.
    pub(crate) fn total_ms(&self) -> f64 {
        self.layout_ms + self.slowest_ms
    }
}

/// One scenario on one peer: for a warm scenario, warm its cache and check a page comes whole
/// from it; then a wrk warm-up run, and the measured run with the peer's CPU, memory and the
/// origin requests it caused.
pub(crate) fn load(
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
    let proxy_pid = peer.kind.is_esi_proxy().then_some(root);
    if let Some(pid) = proxy_pid {
        reset_peak_rss(pid);
    }
    let drops_before = listen_overflows();
    let cpu_before = tree_cpu_ms(root);
    let origin_cpu_before = origin_cpu_ms();
    let origin_before = origin_requests.total();
    let result = wrk(&url, settings, scenario.conns, settings.secs)?;
    let origin_requests = origin_requests.total() - origin_before;
    let per_page = |ms: f64| (result.requests > 0).then(|| ms / result.requests as f64);
    let cpu_ms_per_page = cpu_before
        .zip(tree_cpu_ms(root))
        .and_then(|(before, after)| per_page(after - before));
    let rest_cpu_ms_per_page = origin_cpu_before
        .zip(origin_cpu_ms())
        .zip(result.cpu_ms)
        .and_then(|((before, after), wrk)| per_page(after - before + wrk));
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
        rest_cpu_ms_per_page,
        listen_drops,
    })
}

/// Runs wrk once and parses its report, with wrk's CPU time.
fn wrk(url: &str, settings: &Settings, conns: u64, secs: u64) -> Result<WrkResult> {
    let child = Command::new("wrk")
        .arg(format!("-t{}", settings.threads))
        .arg(format!("-c{conns}"))
        .arg(format!("-d{secs}s"))
        .args(["--latency", "--timeout", WRK_TIMEOUT, url])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running wrk: {e}"))?;
    let cpu_ms = exited_cpu_ms(child.id());
    let output = child
        .wait_with_output()
        .map_err(|e| format!("running wrk: {e}"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!(
            "wrk {url} failed ({}): {text}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let mut result =
        parse_wrk(&text).ok_or_else(|| format!("cannot read wrk's report:\n{text}"))?;
    result.cpu_ms = cpu_ms;
    Ok(result)
}

/// The CPU time (user + system, all threads) of child `pid` once it has exited, read from
/// /proc while it is a zombie: not yet reaped, its totals are still there. Its report is read
/// after (wrk writes it before exiting, well under a pipe's buffer). `None` when /proc cannot
/// be read.
fn exited_cpu_ms(pid: u32) -> Option<f64> {
    loop {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (_, rest) = stat.rsplit_once(')')?;
        let f: Vec<&str> = rest.split_whitespace().collect();
        // rest[0] is field 3 (state); utime is field 14, stime 15.
        if f.first() == Some(&"Z") {
            let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
            let ticks = num(11)? + num(12)?;
            return Some(ticks as f64 * 1000.0 / clock_ticks_per_sec());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The CPU time so far of the in-process origin's threads (its runtime's `origin` and
/// `origin-worker` threads), ms; `None` when /proc cannot be read.
fn origin_cpu_ms() -> Option<f64> {
    let mut ticks = 0;
    for task in fs::read_dir("/proc/self/task").ok()?.flatten() {
        let Ok(stat) = fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let name = head.split_once('(').map_or("", |(_, n)| n);
        if name != "origin" && name != "origin-worker" {
            continue;
        }
        let f: Vec<&str> = rest.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
        ticks += num(11).unwrap_or(0) + num(12).unwrap_or(0);
    }
    Some(ticks as f64 * 1000.0 / clock_ticks_per_sec())
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
/// fragment's, each fetched from the origin on its own; medians of sequential requests.
pub(crate) async fn measure_floor(origin_addr: SocketAddr, s: &Scenario) -> Result<Floor> {
    let client = client()?;
    let layout_url = format!("http://{origin_addr}{}", s.page(Markup::Esi).path());
    let max_delay_ms = s.delays.max_of(s.n);
    let slowest = (0..s.n)
        .find(|&i| s.delays.for_fragment(i) == max_delay_ms)
        .unwrap_or(0);
    let frag_url = format!("http://{origin_addr}{}", s.delays.src(slowest));
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
        slowest_ms: median(frag),
        max_delay_ms,
        min_delay_ms: (0..s.n)
            .map(|i| s.delays.for_fragment(i))
            .min()
            .unwrap_or(0),
    })
}

/// Sequential requests for the delayed page: time to the response head, to the first body
/// bytes and to the end; and whether the first bytes were only the layout's prefix.
pub(crate) async fn measure_ttfb(peer: &Peer, s: &Scenario) -> Result<Ttfb> {
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
pub(crate) async fn measure_memory(
    proxy: &Peer,
    pid: u32,
    pages: usize,
    delay_ms: u64,
) -> Result<Memory> {
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
