//! The Markdown report: the settings and the machine, one row per scenario and peer, esi-proxy's
//! ratios to the others, the warm-cache check, the floor, first bytes and memory. Formats what
//! was measured; measures nothing.

use std::fmt::Write as _;
use std::fs;
use std::io::Read as _;
use std::process::Command;
use std::time::Duration;

use fragments::origin::Delays;

use crate::measure::{Floor, Memory, Row, Ttfb};
use crate::peers::{PeerKind, NO_CACHE_FLAG};
use crate::verify::{PARAGRAPHS, WARM_REQUESTS};
use crate::{ms, Scenario, Settings, WARM_TTL_S};

/// Origin requests per page above which a warm run is reported as not warm.
const WARM_MAX_ORIGIN_PER_PAGE: f64 = 0.001;

/// The p99 esi-proxy aims for on the warm 10-fragment page.
const WARM_P99_TARGET_MS: f64 = 5.0;

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

/// One row of the ratio table: `esi` (esi-proxy as `kind`) against nginx and Varnish.
fn ratio_row<'r>(
    out: &mut String,
    scenario: &Scenario,
    esi: &Row,
    kind: PeerKind,
    find: &dyn Fn(PeerKind) -> Option<&'r Row>,
) {
    let cmp = |peer, f: fn(&Row) -> f64| {
        find(peer).map_or_else(|| "n/a".into(), |other| ratio(f(esi), f(other)))
    };
    let _ = writeln!(
        out,
        "| ({}) {}{} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
        scenario.key,
        scenario.title,
        if kind == PeerKind::EsiProxy {
            ""
        } else {
            ", h2c"
        },
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

pub(crate) fn render_report(
    settings: &Settings,
    rows: &[Row],
    floor: Option<&Floor>,
    ttfbs: &[Ttfb],
    memory: &[(PeerKind, Memory)],
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
         pages split), the like-for-like figure. wrk + origin CPU ms/page: what driving and \
         serving the peer cost the machine per page (wrk's processes and the in-process \
         origin's threads), on the same cores as the peer.\n"
    );
    let _ = writeln!(
        out,
        "| scenario | peer | req/s | p50 | p99 | p50 / floor | CPU ms/page | errors | listen drops | KB/page | origin requests (per page) | peer RSS | PSS | wrk + origin CPU ms/page |"
    );
    let _ = writeln!(
        out,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for row in rows {
        let r = &row.result;
        let floor_ms = floor
            .filter(|_| row.scenario.delays != Delays::None)
            .map(Floor::total_ms);
        let _ = writeln!(
            out,
            "| ({}) {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {:.1} | {} ({}) | {} | {} | {} |",
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
            row.rest_cpu_ms_per_page
                .map_or_else(|| "n/a".into(), |c| format!("{c:.2}")),
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
        for kind in [PeerKind::EsiProxy, PeerKind::EsiProxyH2c] {
            let Some(esi) = find(kind) else {
                continue;
            };
            ratio_row(&mut out, scenario, esi, kind, &find);
        }
    }

    render_warm(&mut out, rows);

    if let Some(f) = floor {
        let total = f.total_ms();
        let _ = writeln!(out, "\n## Floor of (c)\n");
        let _ = writeln!(
            out,
            "Layout from the origin {} + slowest fragment from the origin {} (its delay {} ms, \
             as the origin's timer keeps it, and one round trip) = **{}**: what a composer that \
             fetches every fragment at once cannot beat. A composer that fetches them one after \
             another pays the sum of the delays instead.\n",
            ms(f.layout_ms),
            ms(f.slowest_ms),
            f.max_delay_ms,
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

    if !memory.is_empty() {
        let _ = writeln!(out, "\n## esi-proxy memory per in-flight page");
    }
    for (kind, m) in memory {
        let grown = m.loaded_kb.saturating_sub(m.idle_kb);
        let _ = writeln!(
            out,
            "\n{} concurrent `/page/esi/120?delay={}` (every fragment {} ms), on a fresh {}: \
             RSS {:.1} MB idle, {:.1} MB at most while they were in flight (pages-in-flight \
             gauge: {}): **{:.1} KB per page** ({:.0} B per include). {} {}/{} pages \
             completed whole.",
            m.pages,
            m.delay_ms,
            m.delay_ms,
            kind.name(),
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
