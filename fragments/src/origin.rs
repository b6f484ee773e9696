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

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::{fragment_body, layout_with, Rng};

/// Longest delay a request may ask for: a bound, so a typo cannot park a connection for hours.
pub const MAX_DELAY_MS: u64 = 60_000;

/// Longest TTL a request may ask for (one day): longer than any bench run, and a bound.
pub const MAX_TTL_S: u64 = 86_400;

/// Smallest fragment body [`fragment`] generates (before the closing markup).
pub const FRAGMENT_MIN_BYTES: usize = 1024;

/// Largest fragment body size [`fragment`] asks the generator for.
pub const FRAGMENT_MAX_BYTES: usize = 4096;

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

/// A page the origin serves: `/page/{markup}/{n}`, optionally with `delay` and `ttl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Page {
    /// The include markup.
    pub markup: Markup,
    /// How many includes.
    pub n: usize,
    /// The delay each include asks its fragment for.
    pub delays: Delays,
    /// `Some(s)`: the layout and every include are cacheable for `s` seconds
    /// (`Cache-Control: public, max-age=s`); `None`: the origin's default `Cache-Control`.
    pub ttl_s: Option<u64>,
}

/// Which include markup a page carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Markup {
    /// `<esi:include src="..."/>`, marked with `Surrogate-Control: content="ESI/1.0"`.
    Esi,
    /// nginx SSI: `<!--# include virtual="..." -->`.
    Ssi,
}

/// The delay each include of a page asks its fragment for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Delays {
    /// No delay: `/frag/{i}`.
    #[default]
    None,
    /// The same delay in ms for every fragment.
    Fixed(u64),
    /// A delay in `lo..=hi` ms, chosen deterministically per fragment index.
    Range(u64, u64),
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

// === impl Page ===

impl Page {
    /// `n` undelayed includes in `markup`, with the origin's default `Cache-Control`.
    pub fn new(markup: Markup, n: usize) -> Self {
        Self {
            markup,
            n,
            delays: Delays::None,
            ttl_s: None,
        }
    }

    /// The same page with each include asking for `delays`.
    pub fn with_delays(self, delays: Delays) -> Self {
        Self { delays, ..self }
    }

    /// The same page, cacheable for `ttl_s` seconds (layout and includes).
    pub fn with_ttl_s(self, ttl_s: u64) -> Self {
        Self {
            ttl_s: Some(ttl_s),
            ..self
        }
    }

    /// The path that names it: `/page/esi/120`, `/page/ssi/120?delay=5-20`,
    /// `/page/esi/10?ttl=300`.
    pub fn path(&self) -> String {
        let mut path = format!("/page/{}/{}", self.markup.as_str(), self.n);
        let mut sep = '?';
        if self.delays != Delays::None {
            let _ = write!(path, "{sep}delay={}", self.delays);
            sep = '&';
        }
        if let Some(ttl) = self.ttl_s {
            let _ = write!(path, "{sep}ttl={ttl}");
        }
        path
    }

    /// The `src` of include `i`: `/frag/{i}`, then `?d={ms}` when delayed and `ttl={s}` when
    /// cacheable (`/frag/{i}?d=12&ttl=300`). The `&` is left raw: nginx and Varnish take the
    /// attribute as written, and esi-proxy decodes only character references (`&ttl` is none).
    pub fn src(&self, i: usize) -> String {
        let mut src = self.delays.src(i);
        if let Some(ttl) = self.ttl_s {
            let sep = if src.contains('?') { '&' } else { '?' };
            let _ = write!(src, "{sep}ttl={ttl}");
        }
        src
    }

    /// The layout the origin serves for it, with `paragraphs` paragraphs of text before each
    /// include.
    pub fn body(&self, paragraphs: usize) -> String {
        layout_with(self.n, paragraphs, |i| self.markup.include(&self.src(i)))
    }
}

// === impl Markup ===

impl Markup {
    /// The path segment naming this markup: `esi` or `ssi`.
    pub fn as_str(self) -> &'static str {
        match self {
            Markup::Esi => "esi",
            Markup::Ssi => "ssi",
        }
    }

    /// The include tag for `src` in this markup.
    pub fn include(self, src: &str) -> String {
        match self {
            Markup::Esi => format!("<esi:include src=\"{src}\"/>"),
            Markup::Ssi => format!("<!--# include virtual=\"{src}\" -->"),
        }
    }
}

// === impl Delays ===

impl Delays {
    /// Parses the `delay` query value: `A` (fixed) or `A-B` (range, `A <= B`), in ms, each at
    /// most [`MAX_DELAY_MS`]; `0` means no delay.
    pub fn parse(value: &str) -> Option<Delays> {
        let ms = |s: &str| s.parse::<u64>().ok().filter(|&v| v <= MAX_DELAY_MS);
        match value.split_once('-') {
            None => match ms(value)? {
                0 => Some(Delays::None),
                v => Some(Delays::Fixed(v)),
            },
            Some((lo, hi)) => {
                let (lo, hi) = (ms(lo)?, ms(hi)?);
                (lo <= hi).then_some(Delays::Range(lo, hi))
            }
        }
    }

    /// The delay in ms that include `i` asks for (0 for none).
    pub fn for_fragment(self, i: usize) -> u64 {
        match self {
            Delays::None => 0,
            Delays::Fixed(ms) => ms,
            // Its own stream (salted), so delays do not follow the fragment sizes.
            Delays::Range(lo, hi) => lo + Rng::new(i as u64 ^ 0xD1A7).below(hi - lo + 1),
        }
    }

    /// The longest delay among includes `0..n`: with the layout's time, the floor of a page
    /// that fetches its fragments concurrently.
    pub fn max_of(self, n: usize) -> u64 {
        (0..n).map(|i| self.for_fragment(i)).max().unwrap_or(0)
    }

    /// The `src` of include `i`: `/frag/{i}` or `/frag/{i}?d={ms}`.
    pub fn src(self, i: usize) -> String {
        match self.for_fragment(i) {
            0 => format!("/frag/{i}"),
            ms => format!("/frag/{i}?d={ms}"),
        }
    }
}

impl fmt::Display for Delays {
    /// The `delay` query value that [`Delays::parse`] reads back (`0` for none).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Delays::None => f.write_str("0"),
            Delays::Fixed(ms) => write!(f, "{ms}"),
            Delays::Range(lo, hi) => write!(f, "{lo}-{hi}"),
        }
    }
}

// === the documents ===

/// The size asked of the generator for fragment `i`: in `1024..=4096`, fixed per `i`.
pub fn fragment_bytes(i: usize) -> usize {
    let span = (FRAGMENT_MAX_BYTES - FRAGMENT_MIN_BYTES + 1) as u64;
    FRAGMENT_MIN_BYTES + Rng::new(i as u64 ^ 0xF4A6).below(span) as usize
}

/// The body `/frag/{i}` serves: a `<div data-fragment="{i}">` of 1–4 KB, the same on every run.
pub fn fragment(i: usize) -> String {
    fragment_body(i, fragment_bytes(i))
}

/// The body `/page/{markup}/{n}?delay={delays}` serves, with `paragraphs` paragraphs of text
/// before each include.
pub fn page(markup: Markup, n: usize, delays: Delays, paragraphs: usize) -> String {
    Page::new(markup, n).with_delays(delays).body(paragraphs)
}

/// The path of a page: `/page/esi/120` or `/page/ssi/120?delay=5-20` ([`Page::path`] also
/// names cacheable pages).
pub fn page_path(markup: Markup, n: usize, delays: Delays) -> String {
    Page::new(markup, n).with_delays(delays).path()
}

/// Serves the origin on `listener` (HTTP/1.1, keep-alive) until the returned future is
/// dropped; dropping it also closes every connection it accepted.
pub async fn serve(listener: TcpListener, opts: OriginOptions) {
    let origin = Arc::new(Origin::new(opts));
    let mut connections = JoinSet::new();
    loop {
        // Reap finished connections so the set stays as large as what is open.
        while connections.try_join_next().is_some() {}
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                // Out of descriptors and the like: back off rather than spin.
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let origin = Arc::clone(&origin);
        connections.spawn(async move {
            let service = service_fn(move |req| {
                let origin = Arc::clone(&origin);
                async move { Ok::<_, Infallible>(origin.respond(&req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

// === impl Origin ===

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
    fn delays_parse_and_print() {
        for (text, want) in [
            ("0", Some(Delays::None)),
            ("15", Some(Delays::Fixed(15))),
            ("5-20", Some(Delays::Range(5, 20))),
            ("7-7", Some(Delays::Range(7, 7))),
            ("20-5", None),
            ("-5", None),
            ("5-", None),
            ("x", None),
            ("60001", None),
            ("", None),
        ] {
            assert_eq!(Delays::parse(text), want, "{text:?}");
            if let Some(d) = want.filter(|d| *d != Delays::None) {
                assert_eq!(d.to_string(), text);
            }
        }
    }

    #[test]
    fn range_delays_are_fixed_per_fragment_and_cover_the_range() {
        let d = Delays::Range(5, 20);
        let all: Vec<u64> = (0..120).map(|i| d.for_fragment(i)).collect();
        assert!(all.iter().all(|ms| (5..=20).contains(ms)), "{all:?}");
        assert_eq!(all, (0..120).map(|i| d.for_fragment(i)).collect::<Vec<_>>());
        assert_eq!(all.iter().min(), Some(&5), "{all:?}");
        assert_eq!(d.max_of(120), 20, "{all:?}");
        assert_eq!(Delays::Fixed(9).max_of(3), 9);
        assert_eq!(Delays::None.max_of(3), 0);
        assert_eq!(d.max_of(0), 0);
    }

    #[test]
    fn fragments_are_one_to_four_kb_and_distinct() {
        for i in 0..200 {
            let body = fragment(i);
            assert!((1000..=4200).contains(&body.len()), "{i}: {}", body.len());
            assert!(
                body.starts_with(&format!("<div class=\"fragment\" data-fragment=\"{i}\">")),
                "{i}"
            );
            assert!(!body.contains("esi:") && !body.contains("<!--"), "{i}");
        }
        let sizes: std::collections::HashSet<usize> = (0..200).map(fragment_bytes).collect();
        assert!(sizes.len() > 100, "sizes vary: {}", sizes.len());
    }

    #[test]
    fn page_paths() {
        for (markup, n, delays, want) in [
            (Markup::Esi, 10, Delays::None, "/page/esi/10"),
            (
                Markup::Ssi,
                120,
                Delays::Range(5, 20),
                "/page/ssi/120?delay=5-20",
            ),
            (Markup::Esi, 1, Delays::Fixed(30), "/page/esi/1?delay=30"),
        ] {
            assert_eq!(page_path(markup, n, delays), want);
        }
    }

    #[test]
    fn cacheable_page_paths_and_srcs() {
        let esi = Page::new(Markup::Esi, 10);
        let delayed = Page::new(Markup::Ssi, 120).with_delays(Delays::Fixed(12));
        for (page, want_path, want_src_3) in [
            (esi, "/page/esi/10", "/frag/3"),
            (
                esi.with_ttl_s(300),
                "/page/esi/10?ttl=300",
                "/frag/3?ttl=300",
            ),
            (esi.with_ttl_s(0), "/page/esi/10?ttl=0", "/frag/3?ttl=0"),
            (delayed, "/page/ssi/120?delay=12", "/frag/3?d=12"),
            (
                delayed.with_ttl_s(60),
                "/page/ssi/120?delay=12&ttl=60",
                "/frag/3?d=12&ttl=60",
            ),
        ] {
            assert_eq!(page.path(), want_path, "{page:?}");
            assert_eq!(page.src(3), want_src_3, "{page:?}");
        }
        // Without a TTL, `Page` is what `page` and `page_path` always served.
        assert_eq!(
            delayed.body(2),
            page(Markup::Ssi, 120, Delays::Fixed(12), 2)
        );
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
