//! Network faults, each against a fragment and against the layout, on the scripted fault server
//! (`support::fault`): the include takes its fallback within its deadline, no byte of a failed
//! response reaches the page, the keep-alive pools serve the next request, and the failure is
//! counted by its kind. The README's "Resilience" table is the one these tests hold to.

use std::time::{Duration, Instant};

use esi_proxy::config::Config;
use http::StatusCode;

use crate::support::fault::{fault_server, layout_for, Fault, FaultServer, HEALTHY};
use crate::support::proxy::metric;
use crate::support::{get, proxy, raw_get, Proxy};

/// The fragment deadline the tests set.
const FRAGMENT_TIMEOUT_MS: u64 = 300;
/// The layout's head deadline.
const LAYOUT_TIMEOUT_MS: u64 = 300;
/// The page deadline.
const PAGE_TIMEOUT_MS: u64 = 1000;
/// Room on top of a deadline for a loaded machine: generous, and still far below the 30 s a
/// stalled fault holds its connection.
const MARGIN: Duration = Duration::from_secs(5);

/// What an include of a faulty fragment must come to (and the kind a failed layout is counted
/// under too).
#[derive(Debug, Clone, Copy)]
enum FragmentOutcome {
    /// The response is valid: the fragment is placed whole.
    Whole,
    /// The fetch fails with this kind and every include takes its fallback.
    Fails(&'static str),
}

/// What a faulty layout must come to. The page's head leaves once its first part is ready, so
/// a layout that fails before any of its body is a clean error page, and one that fails after
/// is a response cut off (its connection closed before the body's end), never a complete one.
#[derive(Debug, Clone, Copy)]
enum LayoutOutcome {
    /// The response is valid: the page is the layout, whole.
    Whole,
    /// An error page with this status, none of the layout in it.
    Status(u16),
    /// A 200 whose body stops short: the fault came after the first bytes were sent.
    CutOff,
    /// [`LayoutOutcome::Status`] or [`LayoutOutcome::CutOff`], as the bytes before the fault
    /// happen to arrive together with it or not.
    StatusOrCutOff(u16),
}

/// The outcomes each fault must have; the README's "Resilience" table says the same.
fn expected(fault: Fault) -> (FragmentOutcome, LayoutOutcome) {
    use FragmentOutcome as F;
    use LayoutOutcome as L;
    match fault {
        Fault::StallBeforeStatus
        | Fault::StallMidHeaders
        | Fault::InformationalFlood
        | Fault::NeverRead => (F::Fails("timeout"), L::Status(504)),
        Fault::StallMidBody | Fault::EndlessTrickle => (F::Fails("timeout"), L::CutOff),
        Fault::ResetMidBody => (F::Fails("truncated"), L::CutOff),
        Fault::CloseEarly => (F::Fails("truncated"), L::StatusOrCutOff(502)),
        Fault::MalformedChunked => (F::Fails("malformed"), L::StatusOrCutOff(502)),
        Fault::HugeHeaders | Fault::InvalidStatusLine => (F::Fails("malformed"), L::Status(502)),
        Fault::GzipTrailingGarbage => (F::Fails("decode"), L::StatusOrCutOff(502)),
        Fault::WrongContentEncoding | Fault::UnknownContentEncoding => {
            (F::Fails("decode"), L::Status(502))
        }
        Fault::StrayContinue | Fault::Http10CloseDelimited => (F::Whole, L::Whole),
    }
}

fn config() -> Config {
    let mut config = Config::default();
    config.fetch.fragment_timeout_ms = FRAGMENT_TIMEOUT_MS;
    config.fetch.layout_timeout_ms = LAYOUT_TIMEOUT_MS;
    config.fetch.page_timeout_ms = PAGE_TIMEOUT_MS;
    // Nothing cached: every request reaches the fault server.
    config.cache.enabled = false;
    config.server.admin_from_loopback = true;
    config
}

async fn start() -> (FaultServer, Proxy) {
    let faults = fault_server().await;
    let proxy = proxy(&faults.base(), config()).await;
    (faults, proxy)
}

/// The metrics text as `/_esi/metrics` serves it.
async fn metrics(proxy: &Proxy) -> String {
    let (status, _, text) = get(&proxy.url("/_esi/metrics")).await;
    assert_eq!(status, StatusCode::OK, "metrics endpoint");
    text
}

/// Requests answered with `status`, over every route.
fn requests_with_status(text: &str, status: u16) -> f64 {
    let label = format!("status=\"{status}\"}}");
    text.lines()
        .filter(|l| l.starts_with("esi_proxy_requests_total{") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Both pools still serve the fault server: a pass-through request (the origin pool) and a
/// page with a fragment from it (the fragment pool); the second round reuses the connections
/// the first put back, so what the pools hold is proven usable, not only replaced.
async fn assert_pools_healthy(proxy: &Proxy, faults: &FaultServer, fault: Fault) {
    let mut after_first = 0;
    for round in 0..2 {
        let (status, _, body) = get(&proxy.url("/ok")).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, HEALTHY),
            "{fault:?}: the origin pool after the fault"
        );
        let (status, _, body) = get(&proxy.url("/healthy")).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, "<p>h</p>HEALTHY<p>/h</p>"),
            "{fault:?}: the fragment pool after the fault"
        );
        if round == 0 {
            after_first = faults.connections().await;
        }
    }
    assert_eq!(
        faults.connections().await,
        after_first,
        "{fault:?}: the second round opened new connections"
    );
}

/// A page including the faulty fragment three ways (`alt`, `onerror="continue"`, `esi:try`).
async fn fragment_fault(fault: Fault) {
    let (outcome, _) = expected(fault);
    let (faults, proxy) = start().await;
    let started = Instant::now();
    let (status, _, body) = get(&proxy.url(&format!("/layout/{}", fault.name()))).await;
    let took = started.elapsed();
    assert_eq!(status, StatusCode::OK, "{fault:?}: the page renders");
    let deadline = Duration::from_millis(FRAGMENT_TIMEOUT_MS) + MARGIN;
    assert!(
        took < deadline,
        "{fault:?}: page took {took:?}, over the fragment deadline and margin"
    );
    let text = metrics(&proxy).await;
    match outcome {
        FragmentOutcome::Whole => {
            let want = fault.body();
            assert_eq!(
                body,
                format!("<p>start</p>[{want}][{want}][{want}]<p>end</p>"),
                "{fault:?}: the fragment is placed whole"
            );
            assert!(
                !text.contains("esi_proxy_fragment_failures_total{"),
                "{fault:?}: no failure counted:\n{text}"
            );
        }
        FragmentOutcome::Fails(kind) => {
            assert_eq!(
                body,
                format!("<p>start</p>[{HEALTHY}][][EXCEPT]<p>end</p>"),
                "{fault:?}: alt, continue and except, in place of the fragment"
            );
            assert!(
                !body.contains(&fault.marker()),
                "{fault:?}: bytes of the failed fragment reached the page"
            );
            let series = format!("esi_proxy_fragment_failures_total{{kind=\"{kind}\"}}");
            assert_eq!(
                metric(&text, &series),
                Some(3.0),
                "{fault:?}: three failures counted as {kind}:\n{text}"
            );
        }
    }
    assert_lets_go(&faults, fault, 3).await;
    assert_pools_healthy(&proxy, &faults, fault).await;
}

/// The faulty response as the page's layout, read off the socket.
async fn layout_fault(fault: Fault) {
    let (counted, outcome) = expected(fault);
    let (faults, proxy) = start().await;
    let started = Instant::now();
    let got = raw_get(proxy.addr, &format!("/page/{}", fault.name())).await;
    let took = started.elapsed();
    let status: u16 = got
        .head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let deadline = Duration::from_millis(PAGE_TIMEOUT_MS) + MARGIN;
    assert!(
        took < deadline,
        "{fault:?}: the layout took {took:?}, over the page deadline and margin"
    );
    let body = String::from_utf8_lossy(&got.body).into_owned();
    let text = metrics(&proxy).await;
    match (outcome, status) {
        (LayoutOutcome::Whole, _) => {
            assert_eq!(status, 200, "{fault:?}: {}", got.head);
            assert!(got.complete, "{fault:?}: the page ends as HTTP says");
            assert_eq!(body, fault.body(), "{fault:?}: the layout whole");
        }
        (LayoutOutcome::CutOff | LayoutOutcome::StatusOrCutOff(_), 200) => {
            assert!(
                !got.complete,
                "{fault:?}: a failed layout sent as a complete 200: {body:?}"
            );
            assert!(
                fault.body().starts_with(&body),
                "{fault:?}: only what the layout sent, in order: {body:?}"
            );
        }
        (LayoutOutcome::Status(want) | LayoutOutcome::StatusOrCutOff(want), _) => {
            assert_eq!(status, want, "{fault:?}: {}", got.head);
            assert!(got.complete, "{fault:?}: the error page is whole");
            assert!(
                !body.contains(&fault.marker()),
                "{fault:?}: layout bytes in the error page: {body:?}"
            );
            assert_eq!(
                requests_with_status(&text, want),
                1.0,
                "{fault:?}: the {want} counted:\n{text}"
            );
        }
        (LayoutOutcome::CutOff, _) => panic!("{fault:?}: want a cut-off 200: {}", got.head),
    }
    // The layout fails as the fragment does, and is counted by the same kind.
    match counted {
        FragmentOutcome::Whole => assert!(
            !text.contains("esi_proxy_layout_failures_total{"),
            "{fault:?}: no layout failure counted:\n{text}"
        ),
        FragmentOutcome::Fails(kind) => {
            let series = format!("esi_proxy_layout_failures_total{{kind=\"{kind}\"}}");
            assert_eq!(
                metric(&text, &series),
                Some(1.0),
                "{fault:?}: the layout failure counted as {kind}:\n{text}"
            );
        }
    }
    assert_lets_go(&faults, fault, 1).await;
    assert_pools_healthy(&proxy, &faults, fault).await;
}

/// A fault that holds its connection sees the proxy close all `n` of them once it gave up:
/// no socket or connection task is left behind for the fault to keep.
async fn assert_lets_go(faults: &FaultServer, fault: Fault, n: usize) {
    if fault.holds() {
        assert!(
            faults.closed_by_proxy(n, MARGIN).await,
            "{fault:?}: the proxy kept a connection it gave up on"
        );
    }
}

/// A test per fault and per place (`<fault>_fragment`, `<fault>_layout`), so each is named in
/// the failure output.
macro_rules! fault_tests {
    ($($fault:ident => $fragment:ident, $layout:ident;)*) => {$(
        #[tokio::test]
        async fn $fragment() {
            fragment_fault(Fault::$fault).await;
        }

        #[tokio::test]
        async fn $layout() {
            layout_fault(Fault::$fault).await;
        }
    )*};
}

fault_tests! {
    StallBeforeStatus => stall_before_status_fragment, stall_before_status_layout;
    StallMidHeaders => stall_mid_headers_fragment, stall_mid_headers_layout;
    StallMidBody => stall_mid_body_fragment, stall_mid_body_layout;
    ResetMidBody => reset_mid_body_fragment, reset_mid_body_layout;
    CloseEarly => close_early_fragment, close_early_layout;
    MalformedChunked => malformed_chunked_fragment, malformed_chunked_layout;
    EndlessTrickle => endless_trickle_fragment, endless_trickle_layout;
    InformationalFlood => informational_flood_fragment, informational_flood_layout;
    StrayContinue => stray_continue_fragment, stray_continue_layout;
    HugeHeaders => huge_headers_fragment, huge_headers_layout;
    InvalidStatusLine => invalid_status_line_fragment, invalid_status_line_layout;
    Http10CloseDelimited => http10_close_delimited_fragment, http10_close_delimited_layout;
    GzipTrailingGarbage => gzip_trailing_garbage_fragment, gzip_trailing_garbage_layout;
    WrongContentEncoding => wrong_content_encoding_fragment, wrong_content_encoding_layout;
    UnknownContentEncoding => unknown_content_encoding_fragment, unknown_content_encoding_layout;
    NeverRead => never_read_fragment, never_read_layout;
}

/// A passed-through body framed by Content-Length is read by a server that stops at its
/// length, so the origin's connection went back to the pool only if one more poll came: it
/// never did, and every pass-through request opened a new connection.
#[tokio::test]
async fn passed_through_bodies_with_a_length_return_their_connection_to_the_pool() {
    let (faults, proxy) = start().await;
    for _ in 0..3 {
        let (status, headers, body) = get(&proxy.url("/ok")).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, HEALTHY));
        assert_eq!(headers["content-length"], HEALTHY.len().to_string());
    }
    assert_eq!(faults.connections().await, 1, "one kept-alive connection");
}

/// The layout the fault server serves for a fragment fault is what the tests expect.
#[test]
fn the_fault_layout_includes_three_ways() {
    let layout = layout_for("x");
    assert_eq!(layout.matches("<esi:include").count(), 3);
    assert!(layout.contains("alt=") && layout.contains("onerror=\"continue\""));
}
