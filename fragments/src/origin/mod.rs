//! A fast origin for tests and benches: one hyper server that is both the gateway (layouts with
//! N ESI or nginx SSI includes) and the fragment service (1–4 KB bodies, optionally delayed).
//! Bodies are generated once and shared; it never calls out to the network.
//!
//! | path | answer |
//! |---|---|
//! | `/page/esi/{n}` | a [`layout`](crate::layout) with `n` `<esi:include src="/frag/{i}"/>`, marked `Surrogate-Control: content="ESI/1.0"` |
//! | `/page/ssi/{n}` | the same layout with `<!--# include virtual="/frag/{i}" -->` (nginx SSI), unmarked |
//! | `/page/{esi,ssi}/{n}?delay=A-B` | each include asks for a delay in `A..=B` ms, fixed per `i`: `/frag/{i}?d={ms}` |
//! | `/page/{esi,ssi}/{n}?delay=A` | each include asks for `A` ms |
//! | `/page/{esi,ssi}/{n}?ttl=S` | cacheable: the layout says `Cache-Control: public, max-age=S` and each include asks for the same (`/frag/{i}?ttl=S`) |
//! | `/frag/{i}` | [`fragment(i)`](fragment), `text/html`, after `d` ms when the query has `d={ms}`; `Cache-Control: public, max-age=S` when it has `ttl=S` |
//!
//! Without `ttl`, every response carries [`OriginOptions::cache_control`] (`no-store`). Anything
//! else is a 404; a malformed number, a delay over [`MAX_DELAY_MS`], a TTL over [`MAX_TTL_S`] or
//! a count over [`OriginOptions::max_fragments`] is a 400. [`OriginOptions::requests`] counts
//! what was asked, so a bench can tell a warm cache in front (no request) from a cold one.

mod documents;

pub use documents::{
    fragment, fragment_bytes, page, page_path, Delays, Markup, Page, FRAGMENT_MAX_BYTES,
    FRAGMENT_MIN_BYTES, MAX_DELAY_MS,
};

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::net::TcpListener;

use crate::server::{self, Respond};

/// Longest TTL a request may ask for (one day): longer than any bench run, and a bound.
pub const MAX_TTL_S: u64 = 86_400;

/// How the origin behaves.
#[derive(Debug, Clone)]
pub struct OriginOptions {
    /// Paragraphs of layout text before each include (about 200 bytes each). Default: 2.
    pub paragraphs: usize,
    /// Fragments served (`/frag/0` to `/frag/{max_fragments - 1}`) and most includes in one
    /// page; all bodies are generated when the server starts. Default: 1024.
    pub max_fragments: usize,
    /// `Cache-Control` sent with every page and fragment not asked for with `ttl`; `None`
    /// sends none. Default: `Some("no-store")`, so a cache in front measures composition, not
    /// caching.
    pub cache_control: Option<String>,
    /// Counts the requests the origin answers; keep a clone to read it while it serves.
    /// Default: a fresh counter.
    pub requests: RequestCounter,
}

/// Requests an origin has answered, by kind. Clones share the counts.
#[derive(Debug, Clone, Default)]
pub struct RequestCounter(Arc<Counts>);

#[derive(Debug, Default)]
struct Counts {
    pages: AtomicU64,
    fragments: AtomicU64,
    total: AtomicU64,
}

/// The shared, read-only state of a running origin.
struct Origin {
    fragments: Vec<Bytes>,
    opts: OriginOptions,
    cache_control: Option<HeaderValue>,
    /// Layouts generated so far, by what determines their text. Bounded by [`LAYOUT_CACHE`].
    layouts: Mutex<HashMap<Page, Bytes>>,
}

/// Most distinct layouts kept; past that, layouts are generated per request.
const LAYOUT_CACHE: usize = 256;

// === impl OriginOptions ===

impl Default for OriginOptions {
    fn default() -> Self {
        Self {
            paragraphs: 2,
            max_fragments: 1024,
            cache_control: Some("no-store".into()),
            requests: RequestCounter::default(),
        }
    }
}

// === impl RequestCounter ===

impl RequestCounter {
    /// Requests for `/page/...` so far, answered or refused.
    pub fn pages(&self) -> u64 {
        self.0.pages.load(Ordering::Relaxed)
    }

    /// Requests for `/frag/...` so far, answered or refused.
    pub fn fragments(&self) -> u64 {
        self.0.fragments.load(Ordering::Relaxed)
    }

    /// Every request so far, 404s included.
    pub fn total(&self) -> u64 {
        self.0.total.load(Ordering::Relaxed)
    }

    fn count(&self, path: &str) {
        self.0.total.fetch_add(1, Ordering::Relaxed);
        if path.starts_with("/page/") {
            self.0.pages.fetch_add(1, Ordering::Relaxed);
        } else if path.starts_with("/frag/") {
            self.0.fragments.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Serves the origin on `listener` (HTTP/1.1 with keep-alive, or h2c) until the returned future is
/// dropped; dropping it also closes every connection it accepted.
pub async fn serve(listener: TcpListener, opts: OriginOptions) {
    server::serve(listener, Arc::new(Origin::new(opts))).await;
}

// === impl Origin ===

impl Respond for Origin {
    async fn respond(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path();
        let query = req.uri().query().unwrap_or("");
        self.opts.requests.count(path);
        let mut segments = path.trim_start_matches('/').split('/');
        match (
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
        ) {
            (Some("frag"), Some(i), None, None) => self.fragment(i, query).await,
            (Some("page"), Some(kind), Some(n), None) => {
                let markup = match kind {
                    "esi" => Markup::Esi,
                    "ssi" => Markup::Ssi,
                    _ => return plain(StatusCode::NOT_FOUND, "no such page kind"),
                };
                self.page(markup, n, query)
            }
            _ => plain(StatusCode::NOT_FOUND, "not found"),
        }
    }
}

impl Origin {
    fn new(opts: OriginOptions) -> Self {
        let fragments = (0..opts.max_fragments)
            .map(|i| Bytes::from(fragment(i)))
            .collect();
        let cache_control = opts
            .cache_control
            .as_deref()
            .and_then(|v| HeaderValue::from_str(v).ok());
        Self {
            fragments,
            opts,
            cache_control,
            layouts: Mutex::new(HashMap::new()),
        }
    }

    async fn fragment(&self, i: &str, query: &str) -> Response<Full<Bytes>> {
        let Some(body) = i.parse::<usize>().ok().and_then(|i| self.fragments.get(i)) else {
            return plain(StatusCode::NOT_FOUND, "no such fragment");
        };
        let delay = match param(query, "d").map(str::parse::<u64>) {
            None => 0,
            Some(Ok(ms)) if ms <= MAX_DELAY_MS => ms,
            Some(_) => return plain(StatusCode::BAD_REQUEST, "d: not a delay in ms"),
        };
        let Ok(ttl_s) = ttl(query) else {
            return plain(StatusCode::BAD_REQUEST, "ttl: not a TTL in seconds");
        };
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        self.html(body.clone(), ttl_s, None)
    }

    fn page(&self, markup: Markup, n: &str, query: &str) -> Response<Full<Bytes>> {
        let Some(n) = n
            .parse::<usize>()
            .ok()
            .filter(|&n| n <= self.fragments.len())
        else {
            return plain(
                StatusCode::BAD_REQUEST,
                "not an include count the origin serves",
            );
        };
        let delays = match param(query, "delay").map(Delays::parse) {
            None => Delays::None,
            Some(Some(d)) => d,
            Some(None) => return plain(StatusCode::BAD_REQUEST, "delay: not A or A-B in ms"),
        };
        let Ok(ttl_s) = ttl(query) else {
            return plain(StatusCode::BAD_REQUEST, "ttl: not a TTL in seconds");
        };
        let key = Page {
            markup,
            n,
            delays,
            ttl_s,
        };
        let cached = self.layouts().get(&key).cloned();
        let body = cached.unwrap_or_else(|| {
            let body = Bytes::from(key.body(self.opts.paragraphs));
            let mut layouts = self.layouts();
            if layouts.len() < LAYOUT_CACHE {
                layouts.insert(key, body.clone());
            }
            body
        });
        let marked = (markup == Markup::Esi).then_some("content=\"ESI/1.0\"");
        self.html(body, ttl_s, marked)
    }

    /// The layout cache; a panic while it was held cannot leave it inconsistent (inserts are
    /// whole), so a poisoned lock is used as is.
    fn layouts(&self) -> std::sync::MutexGuard<'_, HashMap<Page, Bytes>> {
        self.layouts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A `text/html` answer: cacheable for `ttl_s` seconds when asked with `ttl`, else with
    /// the configured `Cache-Control`.
    fn html(
        &self,
        body: Bytes,
        ttl_s: Option<u64>,
        surrogate_control: Option<&'static str>,
    ) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(body));
        let headers = response.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        // `public`: shared caches may store it even for a request that carried a cookie.
        let cache_control = match ttl_s {
            Some(s) => HeaderValue::from_str(&format!("public, max-age={s}")).ok(),
            None => self.cache_control.clone(),
        };
        if let Some(value) = cache_control {
            headers.insert(CACHE_CONTROL, value);
        }
        if let Some(value) = surrogate_control {
            headers.insert("surrogate-control", HeaderValue::from_static(value));
        }
        response
    }
}

/// The first value of `name` in a query string (no percent-decoding: the origin's own
/// parameters are plain numbers).
fn param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// The `ttl` query value in seconds: `Ok(None)` when absent, `Err` when not a number up to
/// [`MAX_TTL_S`].
fn ttl(query: &str) -> Result<Option<u64>, ()> {
    match param(query, "ttl") {
        None => Ok(None),
        Some(v) => v
            .parse::<u64>()
            .ok()
            .filter(|&s| s <= MAX_TTL_S)
            .map(Some)
            .ok_or(()),
    }
}

fn plain(status: StatusCode, message: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(message.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Instant;

    use super::*;

    /// An origin on 127.0.0.1:0, stopped when the test's runtime ends.
    async fn start(opts: OriginOptions) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("bound");
        tokio::spawn(serve(listener, opts));
        addr
    }

    async fn get(addr: SocketAddr, path: &str) -> reqwest::Response {
        reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client")
            .get(format!("http://{addr}{path}"))
            .send()
            .await
            .expect("origin answers")
    }

    #[test]
    fn ttl_query_values() {
        for (query, want) in [
            ("", Ok(None)),
            ("d=5", Ok(None)),
            ("ttl=300", Ok(Some(300))),
            ("d=5&ttl=0", Ok(Some(0))),
            ("ttl=86400", Ok(Some(MAX_TTL_S))),
            ("ttl=86401", Err(())),
            ("ttl=-1", Err(())),
            ("ttl=", Err(())),
            ("ttl=5m", Err(())),
        ] {
            assert_eq!(ttl(query), want, "{query:?}");
        }
    }

    #[tokio::test]
    async fn esi_page_is_a_marked_layout_with_n_includes() {
        let addr = start(OriginOptions::default()).await;
        let resp = get(addr, "/page/esi/10").await;
        assert_eq!(resp.status(), 200);
        let h = resp.headers();
        assert_eq!(h["surrogate-control"], "content=\"ESI/1.0\"");
        assert!(h["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("text/html"));
        assert_eq!(h["cache-control"], "no-store");
        let body = resp.text().await.expect("body");
        assert_eq!(body.matches("<esi:include ").count(), 10);
        for i in 0..10 {
            assert!(
                body.contains(&format!("<esi:include src=\"/frag/{i}\"/>")),
                "{i}"
            );
        }
        assert_eq!(body, page(Markup::Esi, 10, Delays::None, 2));
    }

    #[tokio::test]
    async fn delayed_pages_put_each_fragments_delay_on_its_include() {
        let addr = start(OriginOptions::default()).await;
        let body = get(addr, "/page/esi/120?delay=5-20")
            .await
            .text()
            .await
            .expect("body");
        let d = Delays::Range(5, 20);
        for i in 0..120 {
            let tag = format!("<esi:include src=\"/frag/{i}?d={}\"/>", d.for_fragment(i));
            assert!(body.contains(&tag), "{tag}");
        }
        let fixed = get(addr, "/page/esi/3?delay=40")
            .await
            .text()
            .await
            .expect("body");
        assert!(fixed.contains("src=\"/frag/2?d=40\""), "{fixed}");
    }

    #[tokio::test]
    async fn ssi_page_uses_nginx_syntax_and_is_not_marked() {
        let addr = start(OriginOptions::default()).await;
        let resp = get(addr, "/page/ssi/4?delay=5-20").await;
        assert_eq!(resp.status(), 200);
        assert!(resp.headers().get("surrogate-control").is_none());
        let body = resp.text().await.expect("body");
        assert!(!body.contains("<esi:"), "{body}");
        assert_eq!(body.matches("<!--# include virtual=\"/frag/").count(), 4);
        let d = Delays::Range(5, 20).for_fragment(3);
        assert!(body.contains(&format!("<!--# include virtual=\"/frag/3?d={d}\" -->")));
        // Same text around the includes as the ESI page.
        let esi = page(Markup::Esi, 4, Delays::Range(5, 20), 2);
        assert_eq!(
            body.len() - esi.len(),
            4 * ("<!--# include virtual=\"\" -->".len() - "<esi:include src=\"\"/>".len())
        );
    }

    #[tokio::test]
    async fn fragment_serves_its_body_after_its_delay() {
        let addr = start(OriginOptions::default()).await;
        let resp = get(addr, "/frag/7").await;
        assert_eq!(resp.status(), 200);
        assert!(resp.headers().get("surrogate-control").is_none());
        assert_eq!(resp.text().await.expect("body"), fragment(7));
        // A lower bound only: sleeping less than asked would be a bug, longer is the machine.
        let started = Instant::now();
        let body = get(addr, "/frag/8?d=60").await.text().await.expect("body");
        assert!(started.elapsed() >= Duration::from_millis(60));
        assert_eq!(body, fragment(8));
    }

    #[tokio::test]
    async fn cacheable_page_marks_the_layout_and_every_include() {
        let addr = start(OriginOptions::default()).await;
        for (markup, path) in [
            (Markup::Esi, "/page/esi/10?ttl=300"),
            (Markup::Ssi, "/page/ssi/10?ttl=300"),
        ] {
            let resp = get(addr, path).await;
            assert_eq!(resp.status(), 200, "{path}");
            assert_eq!(resp.headers()["cache-control"], "public, max-age=300");
            let body = resp.text().await.expect("body");
            assert_eq!(
                body,
                Page::new(markup, 10).with_ttl_s(300).body(2),
                "{path}"
            );
            for i in 0..10 {
                let tag = markup.include(&format!("/frag/{i}?ttl=300"));
                assert!(body.contains(&tag), "{path}: {tag}");
            }
            // Each include's URL is cacheable too, with the same body as uncached.
            let frag = get(addr, "/frag/4?ttl=300").await;
            assert_eq!(frag.headers()["cache-control"], "public, max-age=300");
            assert_eq!(frag.text().await.expect("body"), fragment(4));
        }
        // Delayed and cacheable at once; the uncached page keeps `no-store`.
        let resp = get(addr, "/page/esi/3?delay=7&ttl=60").await;
        assert_eq!(resp.headers()["cache-control"], "public, max-age=60");
        let body = resp.text().await.expect("body");
        assert!(
            body.contains("<esi:include src=\"/frag/2?d=7&ttl=60\"/>"),
            "{body}"
        );
        let frag = get(addr, "/frag/2?d=7&ttl=60").await;
        assert_eq!(frag.headers()["cache-control"], "public, max-age=60");
        let plain = get(addr, "/page/esi/3").await;
        assert_eq!(plain.headers()["cache-control"], "no-store");
        assert!(!plain.text().await.expect("body").contains("ttl="));
    }

    #[tokio::test]
    async fn requests_are_counted_by_kind() {
        let opts = OriginOptions::default();
        let counter = opts.requests.clone();
        let addr = start(opts).await;
        assert_eq!(
            (counter.pages(), counter.fragments(), counter.total()),
            (0, 0, 0)
        );
        for path in [
            "/page/esi/2",
            "/page/ssi/2?ttl=5",
            "/frag/0",
            "/frag/1?ttl=5",
            "/frag/9999",
            "/nowhere",
        ] {
            let _ = get(addr, path).await;
        }
        // The response is sent after the count: every request above is in it.
        assert_eq!(counter.pages(), 2);
        assert_eq!(counter.fragments(), 3);
        assert_eq!(counter.total(), 6);
    }

    #[tokio::test]
    async fn bad_requests_are_refused() {
        let opts = OriginOptions {
            max_fragments: 16,
            cache_control: None,
            ..OriginOptions::default()
        };
        let addr = start(opts).await;
        for (path, status) in [
            ("/", 404),
            ("/frag/16", 404),
            ("/frag/x", 404),
            ("/frag/1/2", 404),
            ("/page/xml/3", 404),
            ("/page/esi/17", 400),
            ("/page/esi/x", 400),
            ("/page/esi/3?delay=9-1", 400),
            ("/frag/1?d=999999", 400),
            ("/frag/1?d=x", 400),
            ("/frag/1?ttl=86401", 400),
            ("/page/esi/3?ttl=x", 400),
            ("/page/esi/16", 200),
            ("/frag/15", 200),
        ] {
            let resp = get(addr, path).await;
            assert_eq!(resp.status(), status, "{path}");
            assert!(resp.headers().get("cache-control").is_none(), "{path}");
        }
    }
}
