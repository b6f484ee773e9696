//! Composition of one page. This file holds the contract: [`Composer`], [`Page`],
//! [`ComposeConfig`] and the errors; `stream` emits the page in document order as each part is
//! ready, `include` runs one include and its fallbacks, `buffered` composes whole documents,
//! `trace` records the build, and `hints` collects the page's preload hints. Knows no sockets: fragments come from a [`Fetcher`].

mod buffered;
mod checked;
mod head;
mod hints;
mod include;
mod resolve;
mod stream;
mod trace;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::Stream;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tracing::Instrument;
use url::Url;

use crate::config::{CookieNames, ErrorPages, HeaderNames, OnError, Settings};
use crate::esi::flow::foreach_items;
use crate::esi::{
    self, render_html_in, Assign, Bound, Budget, Context, CookieAccess, Expr, Foreach,
    HeaderAccess, Limits, ParseOptions, Scope, Segment, Template, Value, VarPolicy,
};
use crate::fetch::{deadline_after, ErrorKind, Fetcher};
use crate::telemetry::{self, Metrics};

pub use head::{BadRedirect, Head, PrimaryError, ERROR_PAGE_TYPE};
pub use hints::{PageHints, HINTS_DROPPED};
pub use trace::{FetchRecord, HeadRecord, LayoutRecord, Trace};

use stream::{Driver, Source};

/// The limits and policies composition runs under, taken from [`Settings`].
#[derive(Debug, Clone)]
pub struct ComposeConfig {
    /// How deep fragments that are ESI themselves are composed.
    pub max_depth: usize,
    /// Most includes per page, nested ones included.
    pub max_includes: usize,
    /// What an include that fails with no fallback yields outside `esi:try`.
    pub on_error: OnError,
    /// Deadline per fragment unless the tag sets `maxwait`.
    pub fragment_timeout: Duration,
    /// Deadline for the whole page.
    pub page_timeout: Duration,
    /// Largest composed page.
    pub max_page_bytes: usize,
    /// Most fetches in flight for one page.
    pub max_concurrent_per_page: usize,
    /// Parser settings (lenient) for layouts and ESI fragments.
    pub parse: ParseOptions,
    /// What variables may read and how they are escaped.
    pub vars: VarPolicy,
    /// The client headers every fragment host is sent (`fetch.forward_headers`): all that
    /// `$(HTTP_<NAME>)` reads in an untrusted document.
    pub shared_headers: Vec<String>,
    /// The bounds on what a page's expressions may compute.
    pub limits: Limits,
    /// Path globs whose streamed layouts open the head window; elsewhere a streamed layout's
    /// head is decided when the first part of the page is ready.
    pub head_window_paths: Vec<String>,
    /// The head window: while the layout's own output is under this many bytes (and the
    /// layout is not complete), the head is held for a `primary` include or a response
    /// function still to come.
    pub head_window_bytes: usize,
    /// The longest the window holds the head, from the page's start.
    pub max_head_hold: Duration,
    /// Pages sent instead of a primary's 4xx/5xx body.
    pub primary_error_pages: ErrorPages,
}

/// A page being composed: its head, decided before the first byte of its body, and its body.
#[derive(Debug)]
pub struct Composed {
    /// The decided head; sent before the body's first item. Closed without a value when the
    /// page fails first.
    pub head: oneshot::Receiver<Head>,
    /// The body in document order; an `Err` item means the page cannot be completed.
    pub body: mpsc::Receiver<Result<Bytes, ComposeError>>,
}

/// Runs pages: owns the fragment source, the process-wide fetch limit and the metrics.
pub struct Composer {
    /// Tells this composer from every other in the process (one per config): what a cached
    /// template keeps was checked by one of them.
    id: u64,
    fetcher: Arc<dyn Fetcher>,
    config: ComposeConfig,
    /// `config.vars` without credentials: what variables of an untrusted document read.
    untrusted_vars: VarPolicy,
    global: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

/// One page request: where its layout came from and what the client sent.
#[derive(Debug, Clone)]
pub struct Page {
    /// The layout's URL: relative `src` resolve against it.
    pub url: Url,
    /// Values for ESI variables.
    pub vars: esi::Request,
    /// The client's request headers (with the proxy's X-Forwarded-*), for fragment requests.
    pub client_headers: Arc<crate::fetch::ClientHeaders>,
    /// When the page started (its deadline counts from here).
    pub started: Instant,
    /// Where to record every fetch for the page-build waterfall; `None` records nothing.
    pub trace: Option<Arc<Trace>>,
    /// Where fragments' preload hints go; `None` when hints are off.
    pub hints: Option<Arc<PageHints>>,
}

/// Why a page could not be completed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ComposeError {
    /// Reading the layout body failed.
    #[error("layout body: {0}")]
    Layout(String),
    /// The layout did not finish before the page deadline.
    #[error("layout not complete within {0:?}")]
    LayoutTimeout(Duration),
    /// An include failed with no fallback and the policy is `fail`.
    #[error("required include failed: {0}")]
    Required(Failure),
    /// The page grew past `max_page_bytes`.
    #[error("page over {0} bytes")]
    PageTooLarge(usize),
    /// Composing the page panicked (logged and counted where it was caught).
    #[error("composition panicked")]
    Panic,
    /// The page's primary fragment failed with nothing in its place, or answered a redirect
    /// the page cannot send; always before the page's first byte.
    #[error("{0}")]
    Primary(PrimaryError),
}

/// The kind of an include's failure: a fetch's, or one the composer decides itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// The fetch failed.
    Fetch(ErrorKind),
    /// The include would fetch a document that is already being composed above it.
    Loop,
    /// The page has more includes than `esi.max_includes`.
    Limit,
    /// Nested deeper than `esi.max_depth`.
    Depth,
    /// The `src` (after variables) is not a URL that may be fetched.
    Url,
}

impl FailureKind {
    /// The label metrics, logs and the waterfall use: a fetch error's kind, or `loop`,
    /// `limit`, `depth`, `url`.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Fetch(kind) => kind.as_str(),
            FailureKind::Loop => "loop",
            FailureKind::Limit => "limit",
            FailureKind::Depth => "depth",
            FailureKind::Url => "url",
        }
    }
}

impl std::fmt::Display for FailureKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why one include produced nothing.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{url}: {kind}: {message}")]
pub struct Failure {
    /// The URL that failed last (the `alt` when there was one).
    pub url: String,
    /// What kind of failure, as metrics label it.
    pub kind: FailureKind,
    /// Details for the log.
    pub message: String,
    /// The trace row of the fetch that failed, when the page is traced.
    pub record: Option<usize>,
}

/// Per-page state shared by all of the page's fetch tasks.
struct PageState {
    composer: Arc<Composer>,
    page: Page,
    deadline: tokio::time::Instant,
    local: Semaphore,
    includes: AtomicUsize,
    /// What the page's expressions may still compute.
    budget: Budget,
    /// The layout's response functions, kept until the head is decided.
    effects: Mutex<head::Effects>,
    /// Set by the page's first warning about its head (a late or ignored primary or response
    /// function): later ones are counted and traced, not logged again.
    head_warned: AtomicBool,
    /// Cleared by the first include not ready at once (still fetching, or failed): the
    /// page's includes are then spawned as they come, without a poll in the driver first
    /// (see `Slot::start`).
    in_place: AtomicBool,
}

/// A `when`'s test, as written, and its `matchname`.
#[derive(Clone, Copy)]
struct WhenTest<'a>(&'a Expr, &'a str, Option<&'a str>);

/// Where a document sits: its URL, the URLs of the documents that include it, its depth, and
/// whether it may use the client's credentials.
#[derive(Debug, Clone)]
struct DocContext {
    base: Url,
    ancestors: Vec<Url>,
    depth: usize,
    /// Whether this document and every one above it came from a trusted host (the layout
    /// does): only then do its variables read cookies and its includes carry credentials.
    trusted: bool,
    /// The trace row of the fetch that brought this document (None: the layout).
    record: Option<usize>,
    /// Whether this document's template was parsed before and is run again (a cached layout
    /// or ESI fragment): only then is what its includes work out kept for the next request.
    reused: bool,
}

// === impl ComposeConfig ===

impl ComposeConfig {
    /// Composition settings from `[esi]` and `[fetch]`.
    pub fn from_config(settings: &Settings) -> Self {
        let (e, f) = (&settings.esi, &settings.fetch);
        let cookies = match &e.cookies {
            CookieNames::All => CookieAccess::All,
            CookieNames::Only(names) => CookieAccess::Only(names.clone()),
        };
        Self {
            max_depth: e.max_depth,
            max_includes: e.max_includes,
            on_error: e.on_error,
            fragment_timeout: f.fragment_timeout,
            page_timeout: f.page_timeout,
            max_page_bytes: f.max_page_bytes,
            max_concurrent_per_page: f.max_concurrent_per_page,
            parse: ParseOptions {
                max_depth: e.max_nesting,
                ..ParseOptions::default()
            },
            vars: VarPolicy {
                cookies,
                whole_cookie_header: e.expose_cookie_header,
                raw_output: e.raw_vars,
                headers: match &e.headers {
                    HeaderNames::All => HeaderAccess::All,
                    HeaderNames::Only(names) => HeaderAccess::Only(names.clone()),
                },
            },
            shared_headers: f
                .forward_headers
                .iter()
                .map(|n| n.as_str().to_owned())
                .collect(),
            limits: Limits {
                max_evaluations: e.max_expr_evaluations,
                max_value_bytes: e.max_expr_value_bytes,
                max_list_items: e.max_expr_list_items,
                max_pattern_bytes: e.max_pattern_bytes,
                max_foreach_iterations: e.max_foreach_iterations,
                max_function_depth: e.max_function_depth,
            },
            head_window_paths: e.head_window_paths.clone(),
            head_window_bytes: e.head_window_bytes,
            max_head_hold: e.max_head_hold,
            primary_error_pages: e.primary_error_pages.clone(),
        }
    }
}

// === impl Composer ===

impl Composer {
    /// A composer fetching from `fetcher`, with at most `max_concurrent` fetches in flight
    /// process-wide.
    pub fn new(
        fetcher: Arc<dyn Fetcher>,
        config: ComposeConfig,
        max_concurrent: usize,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        Arc::new(Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            fetcher,
            untrusted_vars: config.vars.without_credentials(&config.shared_headers),
            config,
            global: Arc::new(Semaphore::new(max_concurrent)),
            metrics,
        })
    }

    /// The settings this composer runs under.
    pub fn config(&self) -> &ComposeConfig {
        &self.config
    }

    /// Composes a page whose layout body arrives as `layout` (already decoded). Returns the
    /// page body in document order; an `Err` item means the page cannot be completed and the
    /// response must be aborted. Dropping the receiver stops the page and all its fetches.
    /// When `on_parsed` is given, it receives the parsed layout and its size once the layout
    /// has arrived whole (to cache it). The head decision is dropped: see [`Self::compose_page`].
    pub fn compose<S>(
        self: &Arc<Self>,
        page: Page,
        layout: S,
        on_parsed: Option<OnParsed>,
    ) -> mpsc::Receiver<Result<Bytes, ComposeError>>
    where
        S: Stream<Item = Result<Bytes, String>> + Send + Unpin + 'static,
    {
        self.compose_page(page, layout, on_parsed).body
    }

    /// [`Self::compose`], with the page's head: the status and headers the layout's response
    /// functions and its primary fragment decided, ready before the body's first item.
    pub fn compose_page<S>(
        self: &Arc<Self>,
        page: Page,
        layout: S,
        on_parsed: Option<OnParsed>,
    ) -> Composed
    where
        S: Stream<Item = Result<Bytes, String>> + Send + Unpin + 'static,
    {
        self.start(page, Source::Stream(layout, on_parsed))
    }

    /// Composes a page from a layout parsed earlier (a layout cache hit): no upstream request
    /// and no parse for the layout itself.
    pub fn compose_parsed(
        self: &Arc<Self>,
        page: Page,
        template: Arc<Template>,
    ) -> mpsc::Receiver<Result<Bytes, ComposeError>> {
        self.compose_parsed_page(page, template).body
    }

    /// [`Self::compose_parsed`], with the page's head (see [`Self::compose_page`]).
    pub fn compose_parsed_page(self: &Arc<Self>, page: Page, template: Arc<Template>) -> Composed {
        self.start::<futures::stream::Empty<Result<Bytes, String>>>(page, Source::Parsed(template))
    }

    fn start<S>(self: &Arc<Self>, page: Page, source: Source<S>) -> Composed
    where
        S: Stream<Item = Result<Bytes, String>> + Send + Unpin + 'static,
    {
        let (tx, rx) = mpsc::channel(16);
        let (head_tx, head_rx) = oneshot::channel();
        let started = tokio::time::Instant::from_std(page.started);
        let deadline = deadline_after(started, self.config.page_timeout);
        let doc = Arc::new(DocContext {
            base: page.url.clone(),
            ancestors: vec![page.url.clone()],
            depth: 0,
            // The layout comes from the origin, which is trusted.
            trusted: true,
            record: None,
            reused: matches!(source, Source::Parsed(_)),
        });
        let state = Arc::new(PageState {
            composer: Arc::clone(self),
            page,
            deadline,
            local: Semaphore::new(self.config.max_concurrent_per_page),
            includes: AtomicUsize::new(0),
            budget: Budget::new(self.config.limits),
            effects: Mutex::default(),
            head_warned: AtomicBool::new(false),
            in_place: AtomicBool::new(true),
        });
        let driver = Driver::new(state, doc, head_tx);
        let span = tracing::Span::current();
        // A panic in the driver, or re-raised from one of its include tasks, fails this page
        // alone: the receiver gets an error, never a clean end of a page cut short.
        let (on_panic, metrics) = (tx.clone(), Arc::clone(&self.metrics));
        let run = async move {
            let run = std::panic::AssertUnwindSafe(driver.run(source, tx));
            if let Err(panic) = futures::FutureExt::catch_unwind(run).await {
                telemetry::record_panic(&metrics, "compose", panic.as_ref());
                let _ = on_panic.send(Err(ComposeError::Panic)).await;
            }
        };
        tokio::spawn(run.instrument(span));
        Composed {
            head: head_rx,
            body: rx,
        }
    }
}

/// What took a failed include's place. Its name is a metrics label
/// (`esi_proxy_fallbacks_total{kind}`) and a waterfall column, so the names never change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fallback {
    /// The include's `alt`.
    Alt,
    /// `onerror="continue"`: an empty slot.
    Continue,
    /// The enclosing `esi:try`'s except branch.
    Except,
    /// Policy `empty`: an empty slot.
    Empty,
    /// Policy `fail`: the page fails.
    Abort,
}

/// Seconds since the Unix epoch, for `$time()`.
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A seed for `$rand()` that differs between pages.
fn seed(started: &Instant) -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(started)
}

/// Receives a layout parsed while it streamed, with its size in bytes.
pub type OnParsed = Box<dyn FnOnce(Template, usize) + Send>;

// === impl Fallback ===

impl Fallback {
    /// The name in metrics labels and the waterfall.
    fn as_str(self) -> &'static str {
        match self {
            Fallback::Alt => "alt",
            Fallback::Continue => "continue",
            Fallback::Except => "except",
            Fallback::Empty => "empty",
            Fallback::Abort => "abort",
        }
    }
}

// === impl PageState ===

impl PageState {
    /// What the variables of `doc` may read: the page's policy, without credentials when the
    /// document is not trusted.
    fn vars(&self, doc: &DocContext) -> &VarPolicy {
        if doc.trusted {
            &self.composer.config.vars
        } else {
            &self.composer.untrusted_vars
        }
    }

    /// Evaluates a `when` test of `doc` under the page's budget; a bound hit counts as false
    /// (counted and logged). A successful `matches` leaves its captures in `scope`, for the
    /// rest of the document.
    fn test(&self, when: WhenTest<'_>, doc: &DocContext, scope: &mut Scope) -> bool {
        let WhenTest(test, source, match_name) = when;
        let mut cx = Context::new(&self.page.vars, self.vars(doc), &self.budget);
        if let Some(name) = match_name {
            cx.match_name = name;
        }
        cx.now = unix_now();
        cx.seed = seed(&self.page.started);
        cx.scope = std::mem::take(scope);
        let result = test.test(&mut cx);
        *scope = std::mem::take(&mut cx.scope);
        let effects = std::mem::take(&mut cx.effects);
        drop(cx);
        self.take_effects(doc, effects);
        match result {
            Ok(pass) => pass,
            Err(bound) => {
                self.expr_bound(bound, source);
                false
            }
        }
    }

    /// Renders `esi:vars` text of `doc`: request variables as its trust allows, and `scope`'s
    /// captures and assigned variables.
    fn render_vars(
        &self,
        segments: &[Segment<Bytes>],
        doc: &DocContext,
        scope: &mut Scope,
    ) -> Bytes {
        let mut out = Vec::new();
        let mut cx = Context::new(&self.page.vars, self.vars(doc), &self.budget);
        cx.scope = std::mem::take(scope);
        render_html_in(segments, &cx, &mut out);
        *scope = std::mem::take(&mut cx.scope);
        self.note_cookie_read();
        Bytes::from(out)
    }

    /// Runs an `esi:assign` of `doc` under the page's budget, into `scope`; a bound hit leaves
    /// the variable as it was (counted and logged).
    fn assign(&self, a: &Assign, doc: &DocContext, scope: &mut Scope) {
        let mut cx = Context::new(&self.page.vars, self.vars(doc), &self.budget);
        cx.now = unix_now();
        cx.seed = seed(&self.page.started);
        cx.scope = std::mem::take(scope);
        let result = esi::assign(a, &mut cx);
        *scope = std::mem::take(&mut cx.scope);
        let effects = std::mem::take(&mut cx.effects);
        drop(cx);
        self.take_effects(doc, effects);
        if let Err(bound) = result {
            self.expr_bound(bound, &a.source);
        }
    }

    /// The items of an `esi:foreach` of `doc` under the page's budget and the loop bound; a
    /// bound hit is counted and logged, and the items before it still run.
    fn foreach_items(
        &self,
        f: &Foreach,
        doc: &DocContext,
        scope: &mut Scope,
    ) -> Vec<Value<'static>> {
        let mut cx = Context::new(&self.page.vars, self.vars(doc), &self.budget);
        cx.now = unix_now();
        cx.seed = seed(&self.page.started);
        cx.scope = std::mem::take(scope);
        let (items, hit) = foreach_items(f, &mut cx);
        *scope = std::mem::take(&mut cx.scope);
        self.note_cookie_read();
        if let Some(bound) = hit {
            self.expr_bound(bound, &f.source);
        }
        items
    }

    /// Counts and logs an expression stopped by a bound; `what` is the construct, as written.
    fn expr_bound(&self, bound: Bound, what: &str) {
        self.composer.metrics.inc_counter(
            "esi_proxy_esi_bounds_total",
            "ESI expressions stopped by a bound (evaluations, value_bytes, list_items, pattern_bytes, foreach_iterations, function_depth, undefined_function).",
            Some(("bound", bound.as_str())),
            1,
        );
        tracing::warn!(
            url = %self.page.url,
            bound = bound.as_str(),
            expression = what,
            "ESI expression stopped by a bound; it counts as false and the page goes on"
        );
    }

    fn elapsed_ms(&self) -> f64 {
        self.page.started.elapsed().as_secs_f64() * 1000.0
    }

    /// Counts a fallback and notes it on the trace row of the fetch whose place it took.
    fn record_fallback(&self, kind: Fallback, failure: Option<&Failure>) {
        self.composer.metrics.record_fallback(kind.as_str());
        self.trace_fallback(failure, kind);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fetch::{FetchError, Fragment, FragmentRequest};

    /// Answers every fragment at once with its own path.
    pub(super) struct Echo;

    impl Fetcher for Echo {
        fn fetch(
            &self,
            req: FragmentRequest,
        ) -> futures::future::BoxFuture<'static, Result<Fragment, FetchError>> {
            let body = Bytes::from(req.url.path().to_owned());
            Box::pin(futures::future::ready(Ok(Fragment {
                status: http::StatusCode::OK,
                headers: Arc::default(),
                body,
                cache: None,
                template: None,
            })))
        }
    }

    /// Regression: `page.started + page_timeout` panicked for a timeout too long to add to an
    /// `Instant` (a config built in code; files are held to their ranges).
    #[tokio::test]
    async fn huge_timeouts_compose_instead_of_overflowing_the_deadline() {
        let settings = crate::config::Config::default()
            .settings()
            .expect("the default is valid");
        let mut config = ComposeConfig::from_config(&settings);
        config.page_timeout = Duration::MAX;
        config.fragment_timeout = Duration::MAX;
        let composer = Composer::new(Arc::new(Echo), config, 4, Arc::new(Metrics::new()));
        let page = Page {
            url: Url::parse("http://shop.test/page").expect("valid"),
            vars: esi::Request::new(),
            client_headers: Arc::default(),
            started: Instant::now(),
            trace: None,
            hints: None,
        };
        let layout =
            Bytes::from_static(b"a<esi:include src=\"/f\" maxwait=\"18446744073709551615\"/>b");
        let template = esi::parse(layout, &ParseOptions::default()).expect("lenient");
        let mut rx = composer.compose_parsed(page, Arc::new(template));
        let mut body = Vec::new();
        while let Some(chunk) = rx.recv().await {
            body.extend_from_slice(&chunk.expect("the page completes"));
        }
        assert_eq!(body, b"a/fb");
    }

    #[test]
    fn fallback_names() {
        let cases = [
            (Fallback::Alt, "alt"),
            (Fallback::Continue, "continue"),
            (Fallback::Except, "except"),
            (Fallback::Empty, "empty"),
            (Fallback::Abort, "abort"),
        ];
        for (kind, want) in cases {
            assert_eq!(kind.as_str(), want, "{kind:?}");
        }
    }
}
