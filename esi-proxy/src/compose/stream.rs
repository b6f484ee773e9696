//! The in-order output of one page: the `Driver` feeds the streamed (or cached, parsed) layout to
//! the parser, turns each event into a slot (ready bytes, or a spawned fetch aborted on drop),
//! tracks open try/choose blocks, and sends the ready front of the page in batches. A loop or
//! an eval runs as a unit (`buffered`'s), and what follows it waits until the unit has run.
//! Fetches nothing itself: an include is `include`'s, a whole `esi:try` is `buffered`'s.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::{FutureExt, Stream, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::esi::parse::TemplateBuilder;
use crate::esi::{Event, Node, Parser, Scope, Template, UserFunction};

use super::buffered::{run, run_try, start_include};
use super::head::{resolve, Head, PrimaryAnswer, PrimaryError};
use super::include::primary;
use super::{ComposeError, DocContext, Failure, FailureKind, OnParsed, PageState, WhenTest};
use crate::fetch::ErrorKind;

/// Ready parts at the front of the page are sent as one chunk up to about this size, so a large
/// ready run still streams in pieces rather than in one copy.
const MAX_BATCH_BYTES: usize = 64 * 1024;

/// A spawned task that is aborted when dropped, so a page's fetches stop with the page.
pub(super) struct Task<T>(JoinHandle<T>);

/// One piece of output in document order.
pub(super) enum Slot {
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
pub(super) struct Driver {
    state: Arc<PageState>,
    doc: Arc<DocContext>,
    queue: VecDeque<Slot>,
    frames: Vec<Frame>,
    /// While above zero, events belong to a branch that was not taken.
    skip: usize,
    /// This document's captures and assigned variables.
    scope: Scope,
    /// A loop or function definition being collected, and how deep inside it events are.
    unit: Option<(TemplateBuilder, usize)>,
    /// A unit (loop, eval) started and not yet run: its scope and slots come back.
    started: Option<Task<(Scope, Vec<Slot>)>>,
    /// Whether a unit is running: events wait in `held` until it has.
    waiting: bool,
    held: VecDeque<Event>,
    /// The page's head until it is decided.
    gate: Gate,
}

/// What holds the page's head, until it is decided and sent.
struct Gate {
    /// `None` once the head is decided and sent.
    tx: Option<oneshot::Sender<Head>>,
    /// The primary include's answer, while it is awaited.
    primary: Option<oneshot::Receiver<PrimaryAnswer>>,
    /// The answer, once it came.
    answer: Option<PrimaryAnswer>,
    /// Whether a primary include has been seen (a second is ignored).
    primary_seen: bool,
    /// Whether the page's path is in `esi.head_window_paths`: a streamed layout then holds the
    /// head within the window's bounds; otherwise its head is decided when the first part of
    /// the page is ready.
    window: bool,
    /// The layout's own output so far (literal text and `esi:vars`), for the head window.
    layout_bytes: usize,
    /// Whether `max_head_hold_ms` has passed.
    hold_expired: bool,
    /// When page bytes were first ready to send while the head was held.
    waiting_since: Option<std::time::Instant>,
}

/// Where a page's layout comes from.
pub(super) enum Source<S> {
    /// Streamed from the origin, parsed as it arrives.
    Stream(S, Option<OnParsed>),
    /// Parsed before.
    Parsed(Arc<Template>),
}

/// Room for events kept between layout chunks; a chunk that needed more gives it back.
const MAX_KEPT_EVENTS: usize = 64;

/// The events a parsed template stands for, in document order (what the parser emitted).
fn template_events(nodes: &[Node], out: &mut Vec<Event>) {
    for node in nodes {
        match node {
            Node::Text(b) => out.push(Event::Text(b.clone())),
            Node::Vars(segments) => out.push(Event::Vars(segments.clone())),
            Node::Include(inc) => out.push(Event::Include(inc.clone())),
            Node::Assign(a) => out.push(Event::Assign(a.clone())),
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
                        match_name: w.match_name.clone(),
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
            Node::Foreach(f) => {
                out.push(Event::ForeachStart {
                    collection: f.collection.clone(),
                    source: f.source.clone(),
                    item: f.item.clone(),
                });
                template_events(&f.body, out);
                out.push(Event::ForeachEnd);
            }
            Node::Function(f) => {
                out.push(Event::FunctionStart {
                    name: f.name.clone(),
                });
                template_events(&f.body, out);
                out.push(Event::FunctionEnd);
            }
            Node::Break => out.push(Event::Break),
            Node::Return(r) => out.push(Event::Return(r.clone())),
            Node::Eval(inc) => out.push(Event::Eval(inc.clone())),
        }
    }
}

// === impl Driver ===

impl Driver {
    pub(super) fn new(
        state: Arc<PageState>,
        doc: Arc<DocContext>,
        head: oneshot::Sender<Head>,
    ) -> Self {
        let path = state.page.url.path();
        let window = state
            .composer
            .config
            .head_window_paths
            .iter()
            .any(|glob| crate::config::glob_match(glob, path));
        Self {
            state,
            doc,
            queue: VecDeque::new(),
            frames: Vec::new(),
            skip: 0,
            scope: Scope::default(),
            unit: None,
            started: None,
            waiting: false,
            held: VecDeque::new(),
            gate: Gate {
                tx: Some(head),
                primary: None,
                answer: None,
                primary_seen: false,
                window,
                layout_bytes: 0,
                hold_expired: false,
                waiting_since: None,
            },
        }
    }

    /// Whether the head can be decided now: no primary answer is awaited, and the layout is
    /// complete (a cached layout always is), or else, on a `head_window_paths` page, the head
    /// window has closed (the layout's output reached `head_window_bytes`, or
    /// `max_head_hold_ms` passed), or, on any other page, the first part is ready to send.
    fn head_ready(&self, layout_done: bool, first_ready: bool) -> bool {
        if self.gate.primary.is_some() {
            return false;
        }
        if layout_done {
            return true;
        }
        if self.gate.window {
            let bytes = self.state.composer.config.head_window_bytes;
            self.gate.layout_bytes >= bytes || self.gate.hold_expired
        } else {
            first_ready
        }
    }

    /// Decides the head and sends it. `Ok(Some(body))`: the composed page is not sent, `body`
    /// is, and the page ends. `Err`: the page fails before its first byte.
    fn decide_head(&mut self) -> Result<Option<Bytes>, ComposeError> {
        let Some(tx) = self.gate.tx.take() else {
            return Ok(None);
        };
        if let Some(mut rx) = self.gate.primary.take() {
            // Only when the primary's slot was joined first: its answer was sent before.
            self.gate.answer = rx.try_recv().ok();
        }
        let state = &self.state;
        let effects = state.close_head();
        let had_primary = self.gate.primary_seen;
        let mut answer = self.gate.answer.take();
        if had_primary && answer.is_none() {
            answer = Some(PrimaryAnswer::Failed(Failure {
                url: String::new(),
                kind: FailureKind::Fetch(ErrorKind::Transport),
                message: "primary fetch ended without an answer".into(),
                record: None,
            }));
        }
        let held_ms = self
            .gate
            .waiting_since
            .map_or(0.0, |t| t.elapsed().as_secs_f64() * 1000.0);
        let decided_ms = state.elapsed_ms();
        let result = resolve(effects, answer, &state.composer.config.primary_error_pages);
        let outcome = match &result {
            Ok(r) => r.primary,
            Err(PrimaryError::Failed(_)) => Some("failed"),
            Err(PrimaryError::BadRedirect(_)) => Some("bad_redirect"),
        };
        if let Some(outcome) = outcome {
            state.composer.metrics.inc_counter(
                "esi_proxy_primary_total",
                "Primary fragments by what they came to: ok, redirect, client_error, \
                 server_error, alt, failed, bad_redirect, late, ignored.",
                Some(("outcome", outcome)),
                1,
            );
        }
        if held_ms > 0.0 {
            state.composer.metrics.inc_counter(
                "esi_proxy_head_held_total",
                "Pages whose first byte waited for the head (a primary or the head window).",
                None,
                1,
            );
            // Whole milliseconds: a counter, read as a rate against the one above.
            state.composer.metrics.inc_counter(
                "esi_proxy_head_held_milliseconds_total",
                "Milliseconds first bytes waited for the head, summed.",
                None,
                held_ms as u64,
            );
        }
        state.trace_head(|h| {
            h.decided_ms = Some(decided_ms);
            h.held_ms = held_ms;
            h.primary_outcome = outcome.map(str::to_owned);
        });
        match result {
            Err(e) => {
                tracing::warn!(url = %state.page.url, error = %e, "page failed on its primary fragment");
                Err(ComposeError::Primary(e))
            }
            Ok(mut resolved) => {
                resolved.head.held_ms = held_ms;
                for note in resolved.notes.drain(..) {
                    state.trace_head_note(note);
                }
                let status = resolved.head.status.map(|s| s.as_u16());
                state.trace_head(|h| h.status = status);
                // A receiver gone is a caller that wants the body only.
                let _ = tx.send(resolved.head);
                Ok(resolved.replace)
            }
        }
    }

    pub(super) async fn run<S>(
        mut self,
        source: Source<S>,
        tx: mpsc::Sender<Result<Bytes, ComposeError>>,
    ) where
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
        // The page lives on for as long as its slowest fragment: what the events took goes now.
        events = Vec::new();
        let mut current: Option<Task<Result<Bytes, Failure>>> = None;
        let mut unit: Option<Task<(Scope, Vec<Slot>)>> = None;
        let mut sent = 0usize;
        let deadline = self.state.deadline;
        let page_timeout = cfg.page_timeout;
        // Parts ready at the front, sent as one chunk: one channel message and one body chunk
        // for what would be several.
        let mut batch: Vec<Bytes> = Vec::new();
        let mut batch_bytes = 0usize;
        // Whether the batch waited once for fetches finishing in the same wake-up.
        let mut yielded = false;

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
                        if batch_bytes >= MAX_BATCH_BYTES && self.gate.tx.is_none() {
                            batch_bytes = 0;
                            if tx.send(Ok(concat_batch(&mut batch))).await.is_err() {
                                return;
                            }
                        }
                    }
                    // A part that has finished already joins this batch: a page whose
                    // fragments came from the cache, or arrived together, goes out in one write.
                    Some(Slot::Pending(mut task)) => match task.finished() {
                        Some(Ok(bytes)) => self.queue.push_front(Slot::Ready(bytes)),
                        // Read once: the failure is handed on as the wait below expects it.
                        Some(Err(failure)) => current = Some(Task::failed(failure)),
                        None => current = Some(task),
                    },
                    None => break,
                }
            }
            if unit.is_none() {
                unit = self.started.take();
            }
            // A unit (loop, eval) still running holds the events after it.
            let finished =
                layout_done && current.is_none() && self.queue.is_empty() && !self.waiting;
            if self.gate.tx.is_some()
                && (finished || self.head_ready(layout_done, !batch.is_empty()))
            {
                match self.decide_head() {
                    Ok(None) => {}
                    Ok(Some(body)) => {
                        // The composed page is replaced: what was held is dropped, and
                        // the page's fetches stop with the driver.
                        if !body.is_empty() {
                            let _ = tx.send(Ok(body)).await;
                        }
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
            }
            if self.gate.tx.is_some() && !batch.is_empty() && self.gate.waiting_since.is_none() {
                // Page bytes are ready and the head is not: from here the first byte waits.
                self.gate.waiting_since = Some(std::time::Instant::now());
            }
            if !batch.is_empty() && self.gate.tx.is_none() {
                if let Some(task) = current.as_mut().filter(|_| !yielded) {
                    // Fetches that are done but whose tasks have not run yet (their answers came
                    // in the same wake-up) finish first, and their parts go in the same write:
                    // one yield, then the part waited on joins the batch if it has finished.
                    yielded = true;
                    tokio::task::yield_now().await;
                    match task.finished() {
                        None => {}
                        Some(Ok(bytes)) => {
                            current = None;
                            self.queue.push_front(Slot::Ready(bytes));
                            continue;
                        }
                        Some(Err(failure)) => current = Some(Task::failed(failure)),
                    }
                }
                yielded = false;
                batch_bytes = 0;
                if tx.send(Ok(concat_batch(&mut batch))).await.is_err() {
                    return;
                }
            }
            if finished {
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
            let hold_at = tokio::time::Instant::from_std(self.state.page.started)
                .checked_add(cfg.max_head_hold)
                .unwrap_or(deadline);
            let holding = self.gate.window
                && self.gate.tx.is_some()
                && !self.gate.hold_expired
                && !layout_done;
            tokio::select! {
                () = tx.closed() => return,
                answer = async { self.gate.primary.as_mut().expect("guarded by is_some").await }, if self.gate.primary.is_some() => {
                    self.gate.primary = None;
                    self.gate.answer = answer.ok();
                }
                () = tokio::time::sleep_until(hold_at), if holding => {
                    self.gate.hold_expired = true;
                }
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
                    if events.capacity() > MAX_KEPT_EVENTS {
                        // A large chunk's room is not kept for the rest of the page.
                        events = Vec::new();
                    }
                    if layout_done {
                        if let Some(trace) = &self.state.page.trace {
                            trace.set_layout_done_ms(self.state.elapsed_ms());
                        }
                        if let (Some((builder, size)), Some(store)) = (keep.take(), on_parsed.take()) {
                            let mut template = builder.finish();
                            template.problem_count = parser.problem_count();
                            store(template, size);
                        }
                    }
                }
                (scope, slots) = async { unit.as_mut().expect("guarded by is_some").finish().await }, if unit.is_some() => {
                    unit = None;
                    self.waiting = false;
                    self.scope = scope;
                    for slot in slots {
                        self.push(slot);
                    }
                    for event in std::mem::take(&mut self.held) {
                        self.handle(event);
                    }
                }
                result = async { current.as_mut().expect("guarded by is_some").join().await }, if current.is_some() => {
                    current = None;
                    match result {
                        Ok(bytes) => self.queue.push_front(Slot::Ready(bytes)),
                        Err(failure) => {
                            // A failed primary joined before its answer was read: the head
                            // decides the page's error (and counts it) as it would have.
                            let error = match self.gate.primary_seen && self.gate.tx.is_some() {
                                true => self.decide_head().err(),
                                false => None,
                            };
                            let error = error.unwrap_or(ComposeError::Required(failure));
                            let _ = tx.send(Err(error)).await;
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
        if self.waiting {
            // A unit may change variables: what follows it waits until it has run.
            self.held.push_back(event);
            return;
        }
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
        if let Some((builder, depth)) = &mut self.unit {
            if is_start(&event) {
                *depth += 1;
            } else if is_end(&event) {
                *depth -= 1;
            }
            builder.push(event);
            if *depth == 0 {
                let (builder, _) = self.unit.take().expect("matched Some");
                self.start_unit(builder.finish().nodes);
            }
            return;
        }
        match event {
            Event::Text(bytes) => {
                self.gate.layout_bytes += bytes.len();
                self.push(Slot::Ready(bytes));
            }
            Event::ForeachStart { .. } | Event::FunctionStart { .. } => {
                let mut builder = TemplateBuilder::default();
                builder.push(event);
                self.unit = Some((builder, 1));
            }
            Event::Eval(inc) => self.start_unit(vec![Node::Eval(inc)]),
            // Only inside loops and functions, which units collect whole.
            Event::Break | Event::Return(_) | Event::ForeachEnd | Event::FunctionEnd => {}
            Event::Vars(segments) => {
                let out = self
                    .state
                    .render_vars(&segments, &self.doc, &mut self.scope);
                self.gate.layout_bytes += out.len();
                self.push(Slot::Ready(out));
            }
            Event::Include(inc) if inc.primary && self.take_primary(inc.line) => {
                let (tx, rx) = oneshot::channel();
                self.gate.primary = Some(rx);
                let resolved = self.state.resolve(&inc, &self.doc, &mut self.scope);
                let (state, doc) = (Arc::clone(&self.state), Arc::clone(&self.doc));
                let task =
                    Task::spawn(async move { primary(&state, &inc, &doc, &resolved, tx).await });
                self.push(Slot::Pending(task));
            }
            Event::Include(inc) => {
                let in_try = self.in_attempt();
                let slot = start_include(&self.state, &inc, &self.doc, in_try, &mut self.scope);
                self.push(slot);
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
                    let scope = self.scope.clone();
                    let task = Task::spawn(async move {
                        run_try(&state, attempt, except, &doc, in_try, scope).await
                    });
                    self.push(Slot::Pending(task));
                }
            }
            Event::Assign(a) => self.state.assign(&a, &self.doc, &mut self.scope),
            Event::ChooseStart => self.frames.push(Frame::Choose { taken: false }),
            Event::WhenStart {
                test,
                source,
                match_name,
            } => {
                let pass = test.is_some_and(|t| {
                    let when = WhenTest(&t, &source, match_name.as_deref());
                    self.state.test(when, &self.doc, &mut self.scope)
                });
                self.state.note_cookie_read();
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

    /// Runs collected nodes: a function definition at once; a loop or an eval as a unit, with
    /// the document's scope, while later events wait.
    fn start_unit(&mut self, nodes: Vec<Node>) {
        if let [Node::Function(f)] = nodes.as_slice() {
            let def = UserFunction {
                body: Arc::clone(&f.body),
                trusted: self.doc.trusted,
            };
            self.scope.functions.insert(f.name.to_string(), def);
            return;
        }
        let in_try = self.in_attempt();
        let (state, doc) = (Arc::clone(&self.state), Arc::clone(&self.doc));
        let mut scope = std::mem::take(&mut self.scope);
        self.waiting = true;
        self.started = Some(Task::spawn(async move {
            let mut slots = Vec::new();
            run(&state, &nodes, &doc, in_try, &mut scope, &mut slots).await;
            (scope, slots)
        }));
    }

    /// Whether a `primary="true"` include on `line` becomes the page's primary: not inside an
    /// attempt, not a second one, not after the head was decided. Otherwise it is a plain
    /// include (counted, logged, noted on the waterfall).
    fn take_primary(&mut self, line: u32) -> bool {
        let why = if self.in_attempt() {
            "inside esi:attempt"
        } else if self.gate.primary_seen {
            "a second primary"
        } else if self.gate.tx.is_none() {
            "after the head was sent"
        } else {
            self.gate.primary_seen = true;
            return true;
        };
        let outcome = if self.gate.tx.is_none() && why.starts_with("after") {
            "late"
        } else {
            "ignored"
        };
        self.state.composer.metrics.inc_counter(
            "esi_proxy_primary_total",
            "Primary fragments by what they came to: ok, redirect, client_error, server_error, \
             alt, failed, bad_redirect, late, ignored.",
            Some(("outcome", outcome)),
            1,
        );
        if self.state.first_head_warning() {
            tracing::warn!(url = %self.state.page.url, line, reason = why, "primary=\"true\" ignored; included as a plain include");
        }
        self.state
            .trace_head_note(format!("primary on line {line} ignored: {why}"));
        false
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
            | Event::ForeachStart { .. }
            | Event::FunctionStart { .. }
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
            | Event::ForeachEnd
            | Event::FunctionEnd
    )
}

// === impl Task ===

impl<T: Send + 'static> Task<T> {
    pub(super) fn spawn(fut: impl std::future::Future<Output = T> + Send + 'static) -> Self {
        Task(tokio::spawn(fut.instrument(tracing::Span::current())))
    }
}

impl Slot {
    /// The slot of an include's future. With `in_place`, polled once here, so that one that
    /// can answer at once (a cached fragment) is ready without a task of its own; otherwise,
    /// or when it cannot answer yet, spawned as a task. A page's first include that cannot
    /// answer at once turns `in_place` off for the rest (`PageState::in_place`): on a cold page
    /// the first poll sends the request, and spawned tasks send them from every worker rather
    /// than one after another from the driver's.
    pub(super) fn start<F>(fetch: F, in_place: bool) -> Slot
    where
        F: std::future::Future<Output = Result<Bytes, Failure>> + Send + 'static,
    {
        if !in_place {
            // The future goes into the task's own allocation: no box of its own.
            return Slot::Pending(Task::spawn(fetch));
        }
        let mut fetch = Box::pin(fetch);
        match (&mut fetch).now_or_never() {
            Some(Ok(bytes)) => Slot::Ready(bytes),
            Some(Err(failure)) => Slot::Pending(Task::failed(failure)),
            None => Slot::Pending(Task::spawn(fetch)),
        }
    }
}

impl Task<Result<Bytes, Failure>> {
    /// A task that has failed with `failure`: a slot whose failure is read where a fetch's
    /// would be.
    pub(super) fn failed(failure: Failure) -> Self {
        Task::spawn(async move { Err(failure) })
    }

    /// The task's result when it has finished and can be read without waiting; once read, it
    /// is gone from the task.
    fn finished(&mut self) -> Option<Result<Bytes, Failure>> {
        if !self.0.is_finished() {
            return None;
        }
        self.join().now_or_never()
    }

    pub(super) async fn join(&mut self) -> Result<Bytes, Failure> {
        match (&mut self.0).await {
            Ok(result) => result,
            // Not a failed fragment to fall back from: the page fails, where the driver
            // catches it.
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(Failure {
                url: String::new(),
                kind: FailureKind::Fetch(ErrorKind::Transport),
                message: format!("fetch task ended: {e}"),
                record: None,
            }),
        }
    }
}

impl Task<(Scope, Vec<Slot>)> {
    /// Waits for a unit; one cancelled (never, while the page runs) gives nothing.
    async fn finish(&mut self) -> (Scope, Vec<Slot>) {
        match (&mut self.0).await {
            Ok(done) => done,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => (Scope::default(), Vec::new()),
        }
    }
}

impl<T> Drop for Task<T> {
    fn drop(&mut self) {
        self.0.abort();
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
pub(super) fn concat(mut parts: Vec<Bytes>) -> Bytes {
    parts.retain(|p| !p.is_empty());
    concat_batch(&mut parts)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let cases: &[(&[&str], &str)] = &[
            (&["", ""], ""),
            (&["", "one", ""], "one"),
            (&["a", "", "b"], "ab"),
        ];
        for (input, want) in cases {
            assert_eq!(concat(parts(input)), want.as_bytes(), "{input:?}");
        }
    }
}
