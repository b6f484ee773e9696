//! Preload hints on the way out: the hints remembered from each page's last composition
//! ([`HintMemory`], bounded in pages), the `103 Early Hints` response built from them, and the
//! `Link` headers added to a composed page's head. Collecting them is the composer's.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use moka::future::Cache;

use crate::compose::PageHints;
use crate::headers::{X_FORWARDED_HOST, X_FORWARDED_PROTO};
use crate::telemetry::Metrics;

/// `Link` values the proxy added to composed pages' heads.
pub(super) const HINTS_SENT: &str = "esi_proxy_hints_sent_total";
const HINTS_SENT_HELP: &str = "Preload hints (Link values) added to composed pages' heads.";

/// The hints of each page's last composition, for the 103 of its next request. Holds only
/// what [`PageHints::remembered`] gives: nothing from a request with credentials nor from a
/// response marked private. Keyed by the page URL with the host and scheme it was asked for,
/// as the layout cache is; at most `max_pages` pages, least recently used first out.
pub(super) struct HintMemory {
    pages: Option<Cache<String, Arc<[String]>>>,
}

/// What a composed page leaves to [`HintMemory`] once its body has ended whole.
pub(super) struct Remember {
    memory: Arc<HintMemory>,
    key: String,
    hints: Arc<PageHints>,
}

/// The key of a page in [`HintMemory`]: its URL (no fragment) and the `X-Forwarded-Host` and
/// `-Proto` the origin is told, so a page of one site or scheme never lends hints to another.
pub(super) fn page_key(url: &url::Url, origin_headers: &HeaderMap) -> String {
    let value = |name| {
        origin_headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .unwrap_or("")
    };
    let url = url.as_str().split('#').next().unwrap_or_default();
    format!(
        "{url}\n{}\n{}",
        value(X_FORWARDED_HOST),
        value(X_FORWARDED_PROTO)
    )
}

/// A whole `103 Early Hints` response carrying `hints`, one `Link` header each.
pub(super) fn early_hints_response(hints: &[String]) -> Bytes {
    let mut out = BytesMut::from(&b"HTTP/1.1 103 Early Hints\r\n"[..]);
    for hint in hints {
        // Each value was written from parts checked to be visible ASCII (`headers::link`).
        out.extend_from_slice(b"Link: ");
        out.extend_from_slice(hint.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.freeze()
}

/// Appends `hints` to a page head as `Link` headers, counted as sent.
pub(super) fn add_to_head(headers: &mut HeaderMap, hints: &[String], metrics: &Metrics) {
    let mut added = 0;
    for hint in hints {
        if let Ok(value) = HeaderValue::from_str(hint) {
            headers.append(header::LINK, value);
            added += 1;
        }
    }
    if added > 0 {
        metrics.inc_counter(HINTS_SENT, HINTS_SENT_HELP, None, added);
    }
}

// === impl HintMemory ===

impl HintMemory {
    /// Room for `max_pages` pages; 0 remembers nothing.
    pub(super) fn new(max_pages: u64) -> Arc<Self> {
        let pages = (max_pages > 0).then(|| Cache::builder().max_capacity(max_pages).build());
        Arc::new(Self { pages })
    }

    /// The hints remembered for `key`.
    pub(super) async fn get(&self, key: &str) -> Option<Arc<[String]>> {
        self.pages.as_ref()?.get(key).await
    }

    /// A [`Remember`] of `hints` under `key`.
    pub(super) fn remember(
        self: &Arc<Self>,
        key: String,
        hints: &Arc<PageHints>,
    ) -> Option<Remember> {
        self.pages.as_ref()?;
        Some(Remember {
            memory: Arc::clone(self),
            key,
            hints: Arc::clone(hints),
        })
    }
}

// === impl Remember ===

impl Remember {
    /// The page ended whole: its hints replace the page's earlier ones (none: the entry goes).
    pub(super) fn page_ended(self) {
        let Some(pages) = self.memory.pages.clone() else {
            return;
        };
        let Some(hints) = self.hints.remembered() else {
            return;
        };
        let key = self.key;
        let store = async move {
            if hints.is_empty() {
                pages.invalidate(&key).await;
            } else {
                pages.insert(key, hints.into()).await;
            }
        };
        crate::cache::run_soon(Box::pin(store));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_103_is_one_head_of_link_lines() {
        let got = early_hints_response(&[
            "</a.css>; rel=preload; as=style".into(),
            "<https://cdn.test>; rel=preconnect".into(),
        ]);
        assert_eq!(
            &got[..],
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload; as=style\r\nLink: <https://cdn.test>; rel=preconnect\r\n\r\n"
        );
    }

    #[test]
    fn keys_hold_the_page_host_and_scheme() {
        let url = url::Url::parse("http://gw:8081/p?q=1#frag").expect("url");
        let mut headers = HeaderMap::new();
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        let a = page_key(&url, &headers);
        assert_eq!(a, "http://gw:8081/p?q=1\n\nhttps");
        headers.insert(X_FORWARDED_HOST, HeaderValue::from_static("shop.test"));
        assert_ne!(page_key(&url, &headers), a);
    }
}
