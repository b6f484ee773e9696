//! Composition of one page: parses the layout as it arrives, starts every include's fetch the
//! moment its tag is parsed, applies `alt` / `onerror` / `esi:try` / policy fallbacks, composes
//! fragments that are ESI themselves up to a depth, and emits the body in document order as
//! early as each part is ready. Knows no sockets: fragments come from a [`Fetcher`].

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::future::{try_join_all, BoxFuture, FutureExt};
use futures::{Stream, StreamExt};
use http::HeaderMap;
use tokio::sync::{mpsc, Semaphore, SemaphorePermit, TryAcquireError};
use tokio::task::JoinHandle;
use tracing::Instrument;
use url::{Position, Url};

use crate::config::Config;
use crate::esi::ast::choose_branch;
use crate::esi::parse::TemplateBuilder;
use crate::esi::vars::{render_html, render_url};
use crate::esi::{
    self, CookieAccess, Event, Include, Node, OnError, ParseOptions, Parser, Template, VarPolicy,
};
use crate::fetch::{FetchError, Fetcher, FragmentRequest};
use crate::telemetry::Metrics;

/// Ready parts at the front of the page are sent as one chunk up to about this size, so a large
/// ready run still streams in pieces rather than in one copy.
const MAX_BATCH_BYTES: usize = 64 * 1024;

/// What an include that fails with no fallback yields outside `esi:try`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorPolicy {
    /// An empty slot, logged and counted.
    Empty,
    /// The page fails: 502 if nothing was sent yet, else the connection is aborted.
    Fail,
}

/// The limits and policies composition runs under, taken from [`Config`].
#[derive(Debug, Clone)]
pub struct ComposeConfig {
    /// How deep fragments that are ESI themselves are composed.
    pub max_depth: usize,
    /// Most includes per page, nested ones included.
    pub max_includes: usize,
    /// Policy for failed includes with no fallback.
    pub on_error: ErrorPolicy,
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
}

/// Runs pages: owns the fragment source, the process-wide fetch limit and the metrics.
pub struct Composer {
    fetcher: Arc<dyn Fetcher>,
    config: ComposeConfig,
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
    pub client_headers: Arc<HeaderMap>,
    /// When the page started (its deadline counts from here).
    pub started: Instant,
    /// Where to record every fetch for the page-build waterfall; `None` records nothing.
    pub trace: Option<Arc<Trace>>,
}

/// The build record of one page, for `/_esi/debug`: the layout and one row per fetch.
#[derive(Debug, Default)]
pub struct Trace {
    records: std::sync::Mutex<Vec<FetchRecord>>,
    layout: std::sync::Mutex<Option<LayoutRecord>>,
    layout_done_ms: std::sync::Mutex<Option<f64>>,
}

/// The layout fetch of a traced page, times in milliseconds from the page's start.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct LayoutRecord {
    /// The layout's URL at the origin.
    pub url: String,
    /// The origin's status (or the cached one).
    pub status: u16,
    /// When the response head arrived (or the cache answered).
    pub headers_ms: f64,
    /// "hit" or "miss" when the layout cache was consulted.
    pub cache: Option<String>,
    /// The cached layout's TTL in seconds.
    pub ttl_s: Option<f64>,
    /// What set that TTL.
    pub ttl_source: Option<String>,
}

/// One fragment fetch of a page, times in milliseconds from the page's start.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct FetchRecord {
    /// Index in the trace.
    pub id: usize,
    /// The fetch whose ESI body included this one; `None` for includes in the layout.
    pub parent: Option<usize>,
    /// Nesting depth (0: in the layout).
    pub depth: usize,
    /// The URL fetched (after variables and resolution), or the `src` when it did not resolve.
    pub url: String,
    /// Line of the include tag in its document.
    pub line: u32,
    /// Whether this fetch was the include's `alt`.
    pub alt: bool,
    /// When the fetch started.
    pub start_ms: f64,
    /// When it ended (body received, and composed if it was ESI).
    pub end_ms: f64,
    /// HTTP status, when a response came.
    pub status: Option<u16>,
    /// Body bytes received.
    pub bytes: usize,
    /// What the cache did: "hit", "miss", "stale-while-revalidate", "stale-if-error", "pass".
    pub cache: Option<String>,
    /// The cached entry's TTL in seconds.
    pub ttl_s: Option<f64>,
    /// What set the TTL (a rule, Surrogate-Control, s-maxage, max-age, the default).
    pub ttl_source: Option<String>,
    /// "ok" or the failure kind.
    pub outcome: String,
    /// The failure, when there was one.
    pub error: Option<String>,
    /// The fallback that replaced this fetch's content: "alt", "continue", "except", "empty",
    /// "abort".
    pub fallback: Option<String>,
    /// Whether the body was ESI and composed in turn.
    pub esi: bool,
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
}

/// Why one include produced nothing.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{url}: {kind}: {message}")]
pub struct Failure {
    /// The URL that failed last (the `alt` when there was one).
    pub url: String,
    /// Failure kind, as in metrics: a [`FetchError::kind`], or "loop", "limit", "depth", "url".
    pub kind: &'static str,
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
}

/// Where a document sits: its URL, the URLs of the documents that include it, its depth.
#[derive(Debug, Clone)]
struct DocContext {
    base: Url,
    ancestors: Vec<Url>,
    depth: usize,
    /// The trace row of the fetch that brought this document (None: the layout).
    record: Option<usize>,
}

/// A spawned task that is aborted when dropped, so a page's fetches stop with the page.
struct Task<T>(JoinHandle<T>);

/// One piece of output in document order.
enum Slot {
    Ready(Bytes),
    Pending(Task<Result<Bytes, Failure>>),
}

/// A block open while the layout streams in.
enum Frame {
    Try {
        attempt: Vec<Slot>,
        in_attempt: bool,
        /// The except branch, collected as nodes and rendered only if the attempt fails.
        except: Vec<Node>,
        collecting: Option<(TemplateBuilder, usize)>,
    },
    Choose {
        taken: bool,
    },
    /// A taken `when`/`otherwise`, or an `inline`: transparent.
    Transparent,
}

/// The streaming state of one page.
struct Driver {
    state: Arc<PageState>,
    doc: Arc<DocContext>,
    queue: VecDeque<Slot>,
    frames: Vec<Frame>,
    /// While above zero, events belong to a branch that was not taken.
    skip: usize,
}

// === impl ComposeConfig ===

impl ComposeConfig {
    /// Composition settings from a validated config.
    pub fn from_config(config: &Config) -> Self {
        let e = &config.esi;
        let cookies = if e.cookie_names.iter().any(|n| n == "*") {
            CookieAccess::All
        } else {
            CookieAccess::Only(e.cookie_names.clone())
        };
        Self {
            max_depth: e.max_depth,
            max_includes: e.max_includes,
            on_error: if e.on_error == "fail" {
                ErrorPolicy::Fail
            } else {
                ErrorPolicy::Empty
            },
            fragment_timeout: Duration::from_millis(config.fetch.fragment_timeout_ms),
            page_timeout: Duration::from_millis(config.fetch.page_timeout_ms),
            max_page_bytes: config.fetch.max_page_bytes,
            max_concurrent_per_page: config.fetch.max_concurrent_per_page,
            parse: ParseOptions {
                max_depth: e.max_nesting,
                ..ParseOptions::default()
            },
            vars: VarPolicy {
                cookies,
                whole_cookie_header: e.expose_cookie_header,
                raw_output: e.raw_vars,
            },
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
        Arc::new(Self {
            fetcher,
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
    /// has arrived whole (to cache it).
    pub fn compose<S>(
        self: &Arc<Self>,
        page: Page,
        layout: S,
        on_parsed: Option<OnParsed>,
    ) -> mpsc::Receiver<Result<Bytes, ComposeError>>
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
        self.start::<futures::stream::Empty<Result<Bytes, String>>>(page, Source::Parsed(template))
    }

    fn start<S>(
        self: &Arc<Self>,
        page: Page,
        source: Source<S>,
    ) -> mpsc::Receiver<Result<Bytes, ComposeError>>
    where
        S: Stream<Item = Result<Bytes, String>> + Send + Unpin + 'static,
    {
        let (tx, rx) = mpsc::channel(16);
        let deadline = tokio::time::Instant::from_std(page.started + self.config.page_timeout);
        let doc = Arc::new(DocContext {
            base: page.url.clone(),
            ancestors: vec![page.url.clone()],
            depth: 0,
            record: None,
        });
        let state = Arc::new(PageState {
            composer: Arc::clone(self),
            page,
            deadline,
            local: Semaphore::new(self.config.max_concurrent_per_page),
            includes: AtomicUsize::new(0),
        });
        let driver = Driver {
            state,
            doc,
            queue: VecDeque::new(),
            frames: Vec::new(),
            skip: 0,
        };
        let span = tracing::Span::current();
        tokio::spawn(driver.run(source, tx).instrument(span));
        rx
    }
}

/// Receives a layout parsed while it streamed, with its size in bytes.
pub type OnParsed = Box<dyn FnOnce(Template, usize) + Send>;

/// Where a page's layout comes from.
enum Source<S> {
    /// Streamed from the origin, parsed as it arrives.
    Stream(S, Option<OnParsed>),
    /// Parsed before.
    Parsed(Arc<Template>),
}

/// The events a parsed template stands for, in document order (what the parser emitted).
fn template_events(nodes: &[Node], out: &mut Vec<Event>) {
    for node in nodes {
        match node {
            Node::Text(b) => out.push(Event::Text(b.clone())),
            Node::Vars(segments) => out.push(Event::Vars(segments.clone())),
            Node::Include(inc) => out.push(Event::Include(inc.clone())),
            Node::Try { attempt, except } => {
                out.push(Event::TryStart);
                out.push(Event::AttemptStart);
                template_events(attempt, out);
                out.push(Event::AttemptEnd);
                out.push(Event::ExceptStart);
                template_events(except, out);
                out.push(Event::ExceptEnd);
                out.push(Event::TryEnd);
            }
            Node::Choose { whens, otherwise } => {
                out.push(Event::ChooseStart);
                for w in whens {
                    out.push(Event::WhenStart {
                        test: w.test.clone(),
                        source: w.source.clone(),
                    });
                    template_events(&w.body, out);
                    out.push(Event::WhenEnd);
                }
                if let Some(o) = otherwise {
                    out.push(Event::OtherwiseStart);
                    template_events(o, out);
                    out.push(Event::OtherwiseEnd);
                }
                out.push(Event::ChooseEnd);
            }
            Node::Inline {
                name,
                fetchable,
                body,
            } => {
                out.push(Event::InlineStart {
                    name: name.clone(),
                    fetchable: *fetchable,
                });
                template_events(body, out);
                out.push(Event::InlineEnd);
            }
        }
    }
}

// === impl Driver ===

impl Driver {
    async fn run<S>(mut self, source: Source<S>, tx: mpsc::Sender<Result<Bytes, ComposeError>>)
    where
        S: Stream<Item = Result<Bytes, String>> + Send + Unpin,
    {
        let composer = Arc::clone(&self.state.composer);
        let cfg = &composer.config;
        let max_page_bytes = cfg.max_page_bytes;
        let mut parser = Parser::new(cfg.parse.clone());
        let mut events = Vec::new();
        let (mut layout, mut on_parsed, mut layout_done) = match source {
            Source::Stream(layout, on_parsed) => (Some(layout), on_parsed, false),
            Source::Parsed(template) => {
                template_events(&template.nodes, &mut events);
                (None, None, true)
            }
        };
        // Only built when the layout is to be cached: a copy of the events, cheap (Bytes).
        let mut keep = on_parsed
            .as_ref()
            .map(|_| (TemplateBuilder::default(), 0usize));
        for event in events.drain(..) {
            self.handle(event);
        }
        let mut current: Option<Task<Result<Bytes, Failure>>> = None;
        let mut sent = 0usize;
        let deadline = self.state.deadline;
        let page_timeout = cfg.page_timeout;
        // Parts ready at the front, sent as one chunk: one channel message and one body chunk
        // for what would be several.
        let mut batch: Vec<Bytes> = Vec::new();
        let mut batch_bytes = 0usize;

        loop {
            // Send everything that is ready at the front, in order.
            while current.is_none() {
                match self.queue.pop_front() {
                    Some(Slot::Ready(bytes)) => {
                        if bytes.is_empty() {
                            continue;
                        }
                        sent += bytes.len();
                        if sent > max_page_bytes {
                            // What came before the part that crosses the limit still goes out
                            // first, as it would have one part at a time.
                            if !batch.is_empty()
                                && tx.send(Ok(concat_batch(&mut batch))).await.is_err()
                            {
                                return;
                            }
                            let _ = tx
                                .send(Err(ComposeError::PageTooLarge(max_page_bytes)))
                                .await;
                            return;
                        }
                        batch_bytes += bytes.len();
                        batch.push(bytes);
                        if batch_bytes >= MAX_BATCH_BYTES {
                            batch_bytes = 0;
                            if tx.send(Ok(concat_batch(&mut batch))).await.is_err() {
                                return;
                            }
                        }
                    }
                    Some(Slot::Pending(task)) => current = Some(task),
                    None => break,
                }
            }
            if !batch.is_empty() {
                batch_bytes = 0;
                if tx.send(Ok(concat_batch(&mut batch))).await.is_err() {
                    return;
                }
            }
            if layout_done && current.is_none() && self.queue.is_empty() {
                let problems = parser.problem_count();
                if problems > 0 {
                    self.state
                        .composer
                        .metrics
                        .add_esi_problems(problems as u64);
                    tracing::debug!(problems, diagnostics = ?parser.diagnostics(), "lenient ESI problems in layout");
                }
                return;
            }
            tokio::select! {
                () = tx.closed() => return,
                chunk = tokio::time::timeout_at(deadline, next_chunk(&mut layout)), if !layout_done => {
                    let step = match chunk {
                        Err(_) => Err(ComposeError::LayoutTimeout(page_timeout)),
                        Ok(Some(Err(e))) => Err(ComposeError::Layout(e)),
                        Ok(Some(Ok(bytes))) => {
                            if let Some((_, size)) = &mut keep {
                                *size += bytes.len();
                            }
                            Ok(parser.feed(bytes, &mut events))
                        }
                        Ok(None) => {
                            layout_done = true;
                            Ok(parser.finish(&mut events))
                        }
                    };
                    if let Err(e) = step {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                    for event in events.drain(..) {
                        if let Some((builder, _)) = &mut keep {
                            builder.push(event.clone());
                        }
                        self.handle(event);
                    }
                    if layout_done {
                        if let Some(trace) = &self.state.page.trace {
                            *trace.layout_done_ms.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
                                Some(self.state.elapsed_ms());
                        }
                        if let (Some((builder, size)), Some(store)) = (keep.take(), on_parsed.take()) {
                            let mut template = builder.finish();
                            template.problem_count = parser.problem_count();
                            store(template, size);
                        }
                    }
                }
                result = async { current.as_mut().expect("guarded by is_some").join().await }, if current.is_some() => {
                    current = None;
                    match result {
                        Ok(bytes) => self.queue.push_front(Slot::Ready(bytes)),
                        Err(failure) => {
                            let _ = tx.send(Err(ComposeError::Required(failure))).await;
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Whether content now lands inside an `esi:attempt`.
    fn in_attempt(&self) -> bool {
        self.frames.iter().rev().find_map(|f| match f {
            Frame::Try { in_attempt, .. } => Some(*in_attempt),
            _ => None,
        }) == Some(true)
    }

    fn push(&mut self, slot: Slot) {
        for frame in self.frames.iter_mut().rev() {
            if let Frame::Try {
                attempt,
                in_attempt: true,
                ..
            } = frame
            {
                attempt.push(slot);
                return;
            }
        }
        self.queue.push_back(slot);
    }

    fn handle(&mut self, event: Event) {
        if self.skip > 0 {
            if is_start(&event) {
                self.skip += 1;
            } else if is_end(&event) {
                self.skip -= 1;
            }
            return;
        }
        if let Some(Frame::Try {
            collecting: collecting @ Some(_),
            except,
            ..
        }) = self.frames.last_mut()
        {
            let (builder, depth) = collecting.as_mut().expect("matched Some");
            if is_end(&event) && *depth == 0 {
                // The `</esi:except>` closing the branch being collected.
                let (builder, _) = collecting.take().expect("matched Some");
                *except = builder.finish().nodes;
                return;
            }
            if is_start(&event) {
                *depth += 1;
            } else if is_end(&event) {
                *depth -= 1;
            }
            builder.push(event);
            return;
        }
        match event {
            Event::Text(bytes) => self.push(Slot::Ready(bytes)),
            Event::Vars(segments) => {
                let mut out = Vec::new();
                render_html(
                    &segments,
                    &self.state.page.vars,
                    &self.state.composer.config.vars,
                    &mut out,
                );
                self.push(Slot::Ready(Bytes::from(out)));
            }
            Event::Include(inc) => {
                let in_try = self.in_attempt();
                let (state, doc) = (Arc::clone(&self.state), Arc::clone(&self.doc));
                let task = Task::spawn(async move { include(&state, &inc, &doc, in_try).await });
                self.push(Slot::Pending(task));
            }
            Event::TryStart => self.frames.push(Frame::Try {
                attempt: Vec::new(),
                in_attempt: false,
                except: Vec::new(),
                collecting: None,
            }),
            Event::AttemptStart | Event::AttemptEnd => {
                if let Some(Frame::Try { in_attempt, .. }) = self.frames.last_mut() {
                    *in_attempt = matches!(event, Event::AttemptStart);
                }
            }
            Event::ExceptStart => {
                if let Some(Frame::Try { collecting, .. }) = self.frames.last_mut() {
                    *collecting = Some((TemplateBuilder::default(), 0));
                }
            }
            Event::TryEnd => {
                if let Some(Frame::Try {
                    attempt, except, ..
                }) = self.frames.pop()
                {
                    let in_try = self.in_attempt();
                    let (state, doc) = (Arc::clone(&self.state), Arc::clone(&self.doc));
                    let task =
                        Task::spawn(
                            async move { run_try(&state, attempt, except, &doc, in_try).await },
                        );
                    self.push(Slot::Pending(task));
                }
            }
            Event::ChooseStart => self.frames.push(Frame::Choose { taken: false }),
            Event::WhenStart { test, .. } => {
                let pass = test.is_some_and(|t| {
                    t.eval(&self.state.page.vars, &self.state.composer.config.vars)
                });
                self.enter_branch(pass);
            }
            Event::OtherwiseStart => self.enter_branch(true),
            Event::InlineStart { .. } => self.frames.push(Frame::Transparent),
            Event::WhenEnd | Event::OtherwiseEnd | Event::ChooseEnd | Event::InlineEnd => {
                self.frames.pop();
            }
            // Consumed while collecting the except branch.
            Event::ExceptEnd => {}
        }
    }

    /// Opens a `when` (if `pass`) or `otherwise` branch: taken if no earlier branch was.
    fn enter_branch(&mut self, pass: bool) {
        let take = match self.frames.last_mut() {
            Some(Frame::Choose { taken }) if !*taken && pass => {
                *taken = true;
                true
            }
            _ => false,
        };
        if take {
            self.frames.push(Frame::Transparent);
        } else {
            self.skip = 1;
        }
    }
}

/// The next chunk of a streamed layout; a parsed one has none.
async fn next_chunk<S>(layout: &mut Option<S>) -> Option<Result<Bytes, String>>
where
    S: Stream<Item = Result<Bytes, String>> + Unpin,
{
    match layout.as_mut() {
        Some(l) => l.next().await,
        None => None,
    }
}

fn is_start(e: &Event) -> bool {
    matches!(
        e,
        Event::TryStart
            | Event::AttemptStart
            | Event::ExceptStart
            | Event::ChooseStart
            | Event::WhenStart { .. }
            | Event::OtherwiseStart
            | Event::InlineStart { .. }
    )
}

fn is_end(e: &Event) -> bool {
    matches!(
        e,
        Event::TryEnd
            | Event::AttemptEnd
            | Event::ExceptEnd
            | Event::ChooseEnd
            | Event::WhenEnd
            | Event::OtherwiseEnd
            | Event::InlineEnd
    )
}

// === impl PageState ===

impl PageState {
    fn elapsed_ms(&self) -> f64 {
        self.page.started.elapsed().as_secs_f64() * 1000.0
    }

    /// Opens a trace row for a fetch, when the page is traced.
    fn trace_start(
        &self,
        doc: &DocContext,
        src: &esi::VarString,
        line: u32,
        alt: bool,
    ) -> Option<usize> {
        let trace = self.page.trace.as_ref()?;
        let mut records = trace
            .records
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let id = records.len();
        records.push(FetchRecord {
            id,
            parent: doc.record,
            depth: doc.depth,
            url: src.to_string(),
            line,
            alt,
            start_ms: self.elapsed_ms(),
            outcome: "ok".into(),
            ..FetchRecord::default()
        });
        Some(id)
    }

    fn trace_update(&self, id: usize, update: impl FnOnce(&mut FetchRecord)) {
        if let Some(trace) = &self.page.trace {
            let mut records = trace
                .records
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(r) = records.get_mut(id) {
                update(r);
            }
        }
    }

    /// Notes on the failed fetch's row which fallback took its place.
    fn trace_fallback(&self, failure: Option<&Failure>, kind: &str) {
        if let Some(id) = failure.and_then(|f| f.record) {
            self.trace_update(id, |r| r.fallback = Some(kind.to_owned()));
        }
    }
}

// === impl Trace ===

impl Trace {
    /// The rows recorded so far, in the order the fetches started.
    pub fn records(&self) -> Vec<FetchRecord> {
        self.records
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Records the layout fetch.
    pub fn set_layout(&self, layout: LayoutRecord) {
        *self
            .layout
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(layout);
    }

    /// The layout fetch, once recorded.
    pub fn layout(&self) -> Option<LayoutRecord> {
        self.layout
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// When the whole layout body had arrived and was parsed.
    pub fn layout_done_ms(&self) -> Option<f64> {
        *self
            .layout_done_ms
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

// === impl Task ===

impl<T: Send + 'static> Task<T> {
    fn spawn(fut: impl std::future::Future<Output = T> + Send + 'static) -> Self {
        Task(tokio::spawn(fut.instrument(tracing::Span::current())))
    }
}

impl Task<Result<Bytes, Failure>> {
    async fn join(&mut self) -> Result<Bytes, Failure> {
        match (&mut self.0).await {
            Ok(result) => result,
            Err(e) => Err(Failure {
                url: String::new(),
                kind: "transport",
                message: format!("fetch task ended: {e}"),
                record: None,
            }),
        }
    }
}

impl<T> Drop for Task<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

// === composition of buffered documents ===

/// Runs a streamed `esi:try`: the attempt's slots are already in flight; if one fails, the
/// except branch is composed instead.
async fn run_try(
    state: &Arc<PageState>,
    attempt: Vec<Slot>,
    except: Vec<Node>,
    doc: &DocContext,
    in_try: bool,
) -> Result<Bytes, Failure> {
    let mut parts = Vec::with_capacity(attempt.len());
    let mut failure = None;
    for slot in attempt {
        match slot {
            Slot::Ready(b) => parts.push(b),
            Slot::Pending(mut task) => match task.join().await {
                Ok(b) => parts.push(b),
                Err(f) => {
                    failure = Some(f);
                    break;
                }
            },
        }
    }
    match failure {
        None => Ok(concat(parts)),
        Some(f) => {
            tracing::info!(failure = %f, "esi:attempt failed, using esi:except");
            state.composer.metrics.record_fallback("except");
            state.trace_fallback(Some(&f), "except");
            compose_nodes(state, &except, doc, in_try).await.map(concat)
        }
    }
}

/// Composes a buffered document (an except branch, an ESI fragment): every include starts at
/// once; output is kept in order.
fn compose_nodes<'a>(
    state: &'a Arc<PageState>,
    nodes: &'a [Node],
    doc: &'a DocContext,
    in_try: bool,
) -> BoxFuture<'a, Result<Vec<Bytes>, Failure>> {
    async move {
        let cfg = &state.composer.config;
        let parts = nodes.iter().map(|node| -> BoxFuture<'a, Result<Vec<Bytes>, Failure>> {
            match node {
                Node::Text(b) => futures::future::ready(Ok(vec![b.clone()])).boxed(),
                Node::Vars(segments) => {
                    let mut out = Vec::new();
                    render_html(segments, &state.page.vars, &cfg.vars, &mut out);
                    futures::future::ready(Ok(vec![Bytes::from(out)])).boxed()
                }
                Node::Include(inc) => include(state, inc, doc, in_try).map(|r| r.map(|b| vec![b])).boxed(),
                Node::Try { attempt, except } => async move {
                    match compose_nodes(state, attempt, doc, true).await {
                        Ok(parts) => Ok(parts),
                        Err(f) => {
                            tracing::info!(failure = %f, "esi:attempt failed, using esi:except");
                            state.composer.metrics.record_fallback("except");
                            state.trace_fallback(Some(&f), "except");
                            compose_nodes(state, except, doc, in_try).await
                        }
                    }
                }
                .boxed(),
                Node::Choose { whens, otherwise } => {
                    match choose_branch(whens, otherwise.as_ref(), &state.page.vars, &cfg.vars) {
                        Some(branch) => compose_nodes(state, branch, doc, in_try),
                        None => futures::future::ready(Ok(Vec::new())).boxed(),
                    }
                }
                Node::Inline { body, .. } => compose_nodes(state, body, doc, in_try),
            }
        });
        let parts = try_join_all(parts).await?;
        Ok(parts.into_iter().flatten().collect())
    }
    .boxed()
}

/// One include with its fallbacks: `src`, then `alt`, then `onerror="continue"`; then, outside
/// an attempt, the policy.
fn include<'a>(
    state: &'a Arc<PageState>,
    inc: &'a Include,
    doc: &'a DocContext,
    in_try: bool,
) -> BoxFuture<'a, Result<Bytes, Failure>> {
    async move {
        let cfg = &state.composer.config;
        let metrics = &state.composer.metrics;
        let mut last = None;
        if state.includes.fetch_add(1, Ordering::Relaxed) >= cfg.max_includes {
            metrics.record_fragment("", "limit", 0.0, 0);
            last = Some(Failure {
                url: inc.src.to_string(),
                kind: "limit",
                message: format!("more than {} includes in the page", cfg.max_includes),
                record: None,
            });
        } else {
            for (i, src) in std::iter::once(&inc.src).chain(inc.alt.as_ref()).enumerate() {
                match fetch_fragment(state, src, inc, i > 0, doc).await {
                    Ok(body) => {
                        if i > 0 {
                            metrics.record_fallback("alt");
                            state.trace_fallback(last.as_ref(), "alt");
                        }
                        return Ok(body);
                    }
                    Err(f) => {
                        tracing::warn!(failure = %f, alt = i > 0, line = inc.line, "include failed");
                        last = Some(f);
                    }
                }
            }
        }
        let failure = last.expect("an include fails only after an attempt or the limit");
        if inc.onerror == OnError::Continue {
            metrics.record_fallback("continue");
            state.trace_fallback(Some(&failure), "continue");
            return Ok(Bytes::new());
        }
        if in_try {
            return Err(failure);
        }
        match cfg.on_error {
            ErrorPolicy::Empty => {
                metrics.record_fallback("empty");
                state.trace_fallback(Some(&failure), "empty");
                Ok(Bytes::new())
            }
            ErrorPolicy::Fail => {
                metrics.record_fallback("abort");
                state.trace_fallback(Some(&failure), "abort");
                Err(failure)
            }
        }
    }
    .boxed()
}

/// Fetches one URL of an include, composing it if it is ESI itself; traced when the page is.
async fn fetch_fragment(
    state: &Arc<PageState>,
    src: &esi::VarString,
    inc: &Include,
    alt: bool,
    doc: &DocContext,
) -> Result<Bytes, Failure> {
    let record = state.trace_start(doc, src, inc.line, alt);
    let result = fetch_one(state, src, inc.maxwait_ms, doc, record).await;
    if let Some(id) = record {
        state.trace_update(id, |r| {
            r.end_ms = state.elapsed_ms();
            match &result {
                Ok(body) => r.bytes = r.bytes.max(body.len()),
                Err(f) => {
                    f.kind.clone_into(&mut r.outcome);
                    r.error = Some(f.message.clone());
                }
            }
        });
    }
    result
}

async fn fetch_one(
    state: &Arc<PageState>,
    src: &esi::VarString,
    maxwait_ms: Option<u64>,
    doc: &DocContext,
    record: Option<usize>,
) -> Result<Bytes, Failure> {
    let composer = &state.composer;
    let cfg = &composer.config;
    let fail = |url: &str, kind: &'static str, message: String| Failure {
        url: url.to_owned(),
        kind,
        message,
        record,
    };
    let rendered = render_url(src, &state.page.vars, &cfg.vars)
        .map_err(|e| fail(&src.to_string(), "url", e.to_string()))?;
    let url = doc
        .base
        .join(&rendered)
        .map_err(|e| fail(&rendered, "url", e.to_string()))?;
    if let Some(id) = record {
        state.trace_update(id, |r| url.as_str().clone_into(&mut r.url));
    }
    let host = host_label(&url);
    let refused = if doc.ancestors.contains(&url) {
        Some(fail(
            url.as_str(),
            "loop",
            "includes itself or a document that includes it".into(),
        ))
    } else {
        composer
            .fetcher
            .check(&url)
            .err()
            .map(|e| fetch_failure(url.as_str(), &e, record))
    };
    if let Some(f) = refused {
        composer.metrics.record_fragment(&host, f.kind, 0.0, 0);
        return Err(f);
    }
    let started = Instant::now();
    // Debug level: at the default `info` filter the span costs next to nothing per fragment
    // (failures are logged as warnings on their own).
    let span = tracing::debug_span!(
        "fragment",
        url = %url,
        depth = doc.depth,
        status = tracing::field::Empty,
        cache = tracing::field::Empty,
        ms = tracing::field::Empty,
    );
    let result = async {
        let timeout_err = || fail(url.as_str(), "timeout", "page deadline passed".into());
        let _local = acquire_by(&state.local, state.deadline)
            .await
            .ok_or_else(timeout_err)?;
        let _global = acquire_by(&composer.global, state.deadline)
            .await
            .ok_or_else(timeout_err)?;
        let remaining = state
            .deadline
            .saturating_duration_since(tokio::time::Instant::now());
        let own = maxwait_ms.map_or(cfg.fragment_timeout, Duration::from_millis);
        let timeout = own.min(remaining);
        if timeout.is_zero() {
            return Err(timeout_err());
        }
        let request = FragmentRequest {
            url: url.clone(),
            client_headers: Arc::clone(&state.page.client_headers),
            timeout,
        };
        composer
            .fetcher
            .fetch(request)
            .await
            .map_err(|e| fetch_failure(url.as_str(), &e, record))
    }
    .instrument(span.clone())
    .await;
    let seconds = started.elapsed().as_secs_f64();
    span.record("ms", seconds * 1000.0);
    let fragment = match result {
        Ok(f) => {
            span.record("status", f.status.as_u16());
            if let Some(cache) = &f.cache {
                span.record("cache", cache.status);
            }
            if let Some(id) = record {
                state.trace_update(id, |r| {
                    r.status = Some(f.status.as_u16());
                    r.bytes = f.body.len();
                    r.esi = f.is_esi();
                    if let Some(c) = &f.cache {
                        r.cache = Some(c.status.to_owned());
                        r.ttl_s = c.ttl.map(|t| t.as_secs_f64());
                        r.ttl_source.clone_from(&c.source);
                    }
                });
            }
            composer
                .metrics
                .record_fragment(&host, "ok", seconds, f.body.len());
            f
        }
        Err(f) => {
            composer.metrics.record_fragment(&host, f.kind, seconds, 0);
            return Err(f);
        }
    };
    if !fragment.is_esi() {
        return Ok(fragment.body);
    }
    if doc.depth + 1 > cfg.max_depth {
        return Err(fail(
            url.as_str(),
            "depth",
            format!("ESI nested deeper than {}", cfg.max_depth),
        ));
    }
    // A cached ESI fragment is parsed once per cache entry; lenient parsing never fails.
    let parse = || {
        let template = esi::parse(fragment.body.clone(), &cfg.parse).unwrap_or_default();
        if template.problem_count > 0 {
            composer
                .metrics
                .add_esi_problems(template.problem_count as u64);
        }
        Arc::new(template)
    };
    let template = match &fragment.parsed {
        Some(slot) => Arc::clone(slot.get_or_init(parse)),
        None => parse(),
    };
    let mut ancestors = doc.ancestors.clone();
    ancestors.push(url.clone());
    let child = DocContext {
        base: url,
        ancestors,
        depth: doc.depth + 1,
        record,
    };
    let parts = compose_nodes(state, &template.nodes, &child, false).await?;
    let total: usize = parts.iter().map(Bytes::len).sum();
    if total > cfg.max_page_bytes {
        return Err(fail(
            child.base.as_str(),
            "too_large",
            format!("composed fragment over {} bytes", cfg.max_page_bytes),
        ));
    }
    Ok(concat(parts))
}

/// The metrics label of a fragment's host: `host:port`, the port explicit or the scheme's.
/// Borrowed from the URL when it spells the port out.
fn host_label(url: &Url) -> Cow<'_, str> {
    match url.port() {
        Some(_) => Cow::Borrowed(&url[Position::BeforeHost..Position::AfterPort]),
        None => Cow::Owned(format!(
            "{}:{}",
            url.host_str().unwrap_or(""),
            url.port_or_known_default().unwrap_or(0)
        )),
    }
}

/// Waits for a permit from `semaphore` until `deadline`; `None` when the deadline passes
/// first. The deadline's timer is only set up when there is a wait. A closed semaphore (these
/// never are) lets the fetch go ahead without a permit.
async fn acquire_by(
    semaphore: &Semaphore,
    deadline: tokio::time::Instant,
) -> Option<Option<SemaphorePermit<'_>>> {
    match semaphore.try_acquire() {
        Ok(permit) => Some(Some(permit)),
        Err(TryAcquireError::Closed) => Some(None),
        Err(TryAcquireError::NoPermits) => tokio::time::timeout_at(deadline, semaphore.acquire())
            .await
            .ok()
            .map(Result::ok),
    }
}

fn fetch_failure(url: &str, e: &FetchError, record: Option<usize>) -> Failure {
    Failure {
        url: url.to_owned(),
        kind: e.kind(),
        message: e.to_string(),
        record,
    }
}

/// Joins the parts of a send batch into one `Bytes` (no copy when there is only one), leaving
/// the batch empty for reuse.
fn concat_batch(parts: &mut Vec<Bytes>) -> Bytes {
    match parts.len() {
        0 => Bytes::new(),
        1 => parts.pop().expect("one part"),
        _ => {
            let mut out = BytesMut::with_capacity(parts.iter().map(Bytes::len).sum());
            for p in parts.drain(..) {
                out.extend_from_slice(&p);
            }
            out.freeze()
        }
    }
}

/// Joins parts into one `Bytes`, without a copy when there is only one.
fn concat(mut parts: Vec<Bytes>) -> Bytes {
    parts.retain(|p| !p.is_empty());
    match parts.len() {
        0 => Bytes::new(),
        1 => parts.pop().expect("one part"),
        _ => {
            let mut out = BytesMut::with_capacity(parts.iter().map(Bytes::len).sum());
            for p in parts {
                out.extend_from_slice(&p);
            }
            out.freeze()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_labels() {
        let cases: &[(&str, &str)] = &[
            ("http://a.test:8080/f", "a.test:8080"),
            ("http://a.test/f", "a.test:80"),
            ("http://a.test:80/f", "a.test:80"),
            ("https://a.test/f?q", "a.test:443"),
            ("http://127.0.0.1:18081/frag/3?d=12", "127.0.0.1:18081"),
            ("http://[::1]:9000/", "[::1]:9000"),
            ("http://[::1]/", "[::1]:80"),
        ];
        for (url, want) in cases {
            let url = Url::parse(url).expect("test URLs parse");
            let label = host_label(&url);
            let old_form = format!(
                "{}:{}",
                url.host_str().unwrap_or(""),
                url.port_or_known_default().unwrap_or(0)
            );
            assert_eq!(label, *want, "url: {url}");
            assert_eq!(label, old_form, "url: {url}");
        }
    }

    #[test]
    fn batches_join_in_order() {
        let parts = |list: &[&'static str]| -> Vec<Bytes> {
            list.iter()
                .map(|p| Bytes::from_static(p.as_bytes()))
                .collect()
        };
        let cases: &[(&[&str], &str)] = &[(&[], ""), (&["one"], "one"), (&["a", "b", "c"], "abc")];
        for (input, want) in cases {
            let mut batch = parts(input);
            assert_eq!(concat_batch(&mut batch), want.as_bytes(), "{input:?}");
            assert!(batch.is_empty(), "{input:?}: the batch is left empty");
        }
    }
}
