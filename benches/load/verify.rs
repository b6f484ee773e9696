//! Correctness before speed: every peer must return the layout with each include replaced by
//! its fragment, whole; a warm peer must serve a checked page without asking the origin.

use fragments::origin::{self, RequestCounter};

use crate::peers::{client, Peer};
use crate::{say, Result, Scenario};

/// Requests each warm peer serves before its cache is checked (the first fills it).
pub(crate) const WARM_REQUESTS: usize = 5;

/// Paragraphs of layout text before each include, as the origin serves them.
pub(crate) const PARAGRAPHS: usize = 2;

/// The page every peer must return for `n` includes: the layout with each tag replaced by
/// its fragment's body.
pub(crate) fn expected_page(n: usize) -> String {
    fragments::layout_with(n, PARAGRAPHS, origin::fragment)
}

pub(crate) async fn verify(peer: &Peer, scenario: &Scenario) -> Result<()> {
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
pub(crate) async fn warm_up(
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
