//! One include (or `esi:eval`): its `src` fetched (then its `alt`), refused on a loop or past
//! the include limit, bounded by the page's deadline and fetch permits, composed in turn when
//! the fragment is ESI (up to the depth; an eval's is handed back to run in its parent's
//! scope), and on failure its fallback: `onerror="continue"`, or the page's policy.
//! Records metrics and trace rows; never writes page output.

use std::borrow::Cow;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt};
use http::{header, HeaderMap, StatusCode};
use tokio::sync::oneshot;
use tokio::sync::{Semaphore, SemaphorePermit, TryAcquireError};
use tracing::Instrument;
use url::{Position, Url};

use crate::config;
use crate::esi::{self, Dca, Include, OnError, ParseOptions, Scope, Template, VarError};
use crate::fetch::{Access, Allowed, ErrorKind, FetchError, FragmentRequest, RequestOptions};
use crate::telemetry::FragmentHost;

use super::buffered::compose_nodes;
use super::checked;
use super::head::PrimaryAnswer;
use super::resolve::Resolved;
use super::{DocContext, Failure, FailureKind, Fallback, PageState};

/// One include with its fallbacks: `src`, then `alt`, then `onerror="continue"`; then, outside
/// an attempt, the policy. `resolved` holds its variables as read where the tag stands.
pub(super) fn include<'a>(
    state: &'a Arc<PageState>,
    inc: &'a Include,
    resolved: &'a Resolved,
    doc: &'a DocContext,
    in_try: bool,
) -> impl std::future::Future<Output = Result<Bytes, Failure>> + Send + 'a {
    // Not boxed: the include's task holds its state in the task's own allocation. A
    // fragment's nested includes recurse through `buffered::run`, which is boxed.
    resolve(state, inc, resolved, doc, in_try, false)
        .map(|fetched| Ok(fetched?.map_or_else(Bytes::new, |f| f.body)))
}

/// An include's or eval's fetch with its fallbacks; `None` when a fallback leaves its place
/// empty. With `eval`, an ESI fragment comes back parsed instead of composed.
pub(super) async fn resolve(
    state: &Arc<PageState>,
    inc: &Include,
    resolved: &Resolved,
    doc: &DocContext,
    in_try: bool,
    eval: bool,
) -> Result<Option<Fetched>, Failure> {
    let cfg = &state.composer.config;
    let metrics = &state.composer.metrics;
    let mut last = None;
    if state.includes.fetch_add(1, Ordering::Relaxed) >= cfg.max_includes {
        metrics.record_fragment("", FailureKind::Limit.as_str(), 0.0, 0);
        last = Some(Failure {
            url: inc.src.to_string(),
            kind: FailureKind::Limit,
            message: format!("more than {} includes in the page", cfg.max_includes),
            record: None,
        });
    } else {
        let urls = std::iter::once((&inc.src, &resolved.src));
        let alts = inc.alt.as_ref().zip(resolved.alt.as_ref());
        let purpose = if eval {
            Purpose::Eval
        } else {
            Purpose::Include
        };
        for (i, (src, url)) in urls.chain(alts).enumerate() {
            let alt = i > 0;
            let target = Target {
                src,
                url,
                resolved,
                alt,
            };
            match fetch_fragment(state, target, inc, doc, purpose).await {
                Ok(body) => {
                    if i > 0 {
                        state.record_fallback(Fallback::Alt, last.as_ref());
                    }
                    return Ok(Some(body));
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
        state.record_fallback(Fallback::Continue, Some(&failure));
        return Ok(None);
    }
    if in_try {
        return Err(failure);
    }
    match cfg.on_error {
        config::OnError::Empty => {
            state.record_fallback(Fallback::Empty, Some(&failure));
            Ok(None)
        }
        config::OnError::Fail => {
            state.record_fallback(Fallback::Abort, Some(&failure));
            Err(failure)
        }
    }
}

/// One URL of an include: as written, as substituted, and the include's request options.
#[derive(Clone, Copy)]
struct Target<'a> {
    src: &'a esi::VarString,
    url: &'a Result<String, VarError>,
    resolved: &'a Resolved,
    /// Whether this is the include's `alt` rather than its `src`.
    alt: bool,
}

/// What a fetch is for: a plain include, an `esi:eval`, or the page's primary include.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Purpose {
    Include,
    Eval,
    Primary,
}

/// The page's primary include: `src` fetched keeping any status (its answer goes to the driver
/// at once, to decide the page's head), then its `alt` as a plain include. A primary that gives
/// no answer and has no `alt` that does fails the page, whatever its `onerror`.
pub(super) fn primary<'a>(
    state: &'a Arc<PageState>,
    inc: &'a Include,
    doc: &'a DocContext,
    resolved: &'a Resolved,
    answer: oneshot::Sender<PrimaryAnswer>,
) -> BoxFuture<'a, Result<Bytes, Failure>> {
    async move {
        let cfg = &state.composer.config;
        let failure = if state.includes.fetch_add(1, Ordering::Relaxed) >= cfg.max_includes {
            Failure {
                url: inc.src.to_string(),
                kind: FailureKind::Limit,
                message: format!("more than {} includes in the page", cfg.max_includes),
                record: None,
            }
        } else {
            let target = Target {
                src: &inc.src,
                url: &resolved.src,
                resolved,
                alt: false,
            };
            match fetch_fragment(state, target, inc, doc, Purpose::Primary).await {
                Ok(fetched) => {
                    let body = fetched.body.clone();
                    let _ = answer.send(PrimaryAnswer::Answered {
                        status: fetched.status,
                        headers: fetched.headers,
                        body: fetched.body,
                        trusted: fetched.trusted,
                        url: fetched.url,
                    });
                    return Ok(body);
                }
                Err(f) => f,
            }
        };
        tracing::warn!(failure = %failure, line = inc.line, "primary include failed");
        let failure = match inc.alt.as_ref().zip(resolved.alt.as_ref()) {
            Some((src, url)) => match fetch_fragment(
                state,
                Target {
                    src,
                    url,
                    resolved,
                    alt: true,
                },
                inc,
                doc,
                Purpose::Include,
            )
            .await
            {
                Ok(fetched) => {
                    state.record_fallback(Fallback::Alt, Some(&failure));
                    let _ = answer.send(PrimaryAnswer::Alt);
                    return Ok(fetched.body);
                }
                Err(f) => f,
            },
            None => failure,
        };
        state.record_fallback(Fallback::Abort, Some(&failure));
        let _ = answer.send(PrimaryAnswer::Failed(failure.clone()));
        Err(failure)
    }
    .boxed()
}

/// A fetched include: its body (composed when it was ESI; empty for an eval's ESI), the parsed
/// fragment an `esi:eval` runs in its parent's scope, and what a primary's answer needs.
pub(super) struct Fetched {
    pub(super) body: Bytes,
    /// An eval's ESI fragment, parsed to read its parent's variables, and where it sits.
    pub(super) eval: Option<(Arc<Template>, DocContext)>,
    pub(super) status: StatusCode,
    /// The response's headers; only kept for a primary.
    pub(super) headers: HeaderMap,
    /// Whether the host is trusted (and every document above it).
    pub(super) trusted: bool,
    /// The URL fetched; only kept for a primary.
    pub(super) url: String,
}

/// Fetches one URL of an include, composing it if it is ESI itself (an eval's comes back
/// parsed); traced when the page is. A primary's answer may have any status; its headers are
/// kept.
async fn fetch_fragment(
    state: &Arc<PageState>,
    target: Target<'_>,
    inc: &Include,
    doc: &DocContext,
    purpose: Purpose,
) -> Result<Fetched, Failure> {
    let record = state.trace_start(doc, target.src, inc.line, target.alt);
    if purpose == Purpose::Primary {
        if let Some(id) = record {
            state.trace_update(id, |r| r.primary = true);
        }
    }
    let result = fetch_one(state, target, inc, doc, record, purpose).await;
    if let Some(id) = record {
        state.trace_update(id, |r| {
            r.end_ms = state.elapsed_ms();
            match &result {
                Ok(fetched) => r.bytes = r.bytes.max(fetched.body.len()),
                Err(f) => {
                    f.kind.as_str().clone_into(&mut r.outcome);
                    r.error = Some(f.message.clone());
                }
            }
        });
    }
    result
}

/// What an include's fetch needs once it holds its permits: worked out before it waits for
/// them, and kept boxed, so that an include waiting for a permit (a page beyond
/// `fetch.max_concurrent`) holds a few hundred bytes rather than its whole fetch.
struct Prepared {
    /// The URL, allowed (it derefs to the URL).
    allowed: Allowed,
    /// Its host's metric series.
    host: FragmentHost,
    options: RequestOptions,
    started: Instant,
    /// Whether the include waited for a permit after `started`.
    waited: bool,
    span: tracing::Span,
}

async fn fetch_one(
    state: &Arc<PageState>,
    target: Target<'_>,
    inc: &Include,
    doc: &DocContext,
    record: Option<usize>,
    purpose: Purpose,
) -> Result<Fetched, Failure> {
    let mut prepared = Box::new(prepare(state, target, inc, doc, record)?);
    let Some((_local, waited)) = acquire_by(&state.local, state.deadline).await else {
        return Err(prepared.deadline_passed(state, record));
    };
    prepared.waited = waited;
    let Some((_global, waited)) = acquire_by(&state.composer.global, state.deadline).await else {
        return Err(prepared.deadline_passed(state, record));
    };
    prepared.waited |= waited;
    Box::pin(exchange(state, inc, doc, record, purpose, prepared)).await
}

impl Prepared {
    /// The page's deadline passed before a permit came: the include fails as timed out.
    fn deadline_passed(&self, state: &PageState, record: Option<usize>) -> Failure {
        let kind = FailureKind::Fetch(ErrorKind::Timeout);
        let seconds = self.started.elapsed().as_secs_f64();
        self.span.record("ms", seconds * 1000.0);
        state
            .composer
            .metrics
            .record_fragment_at(&self.host, kind.as_str(), seconds, 0);
        failure(
            self.allowed.as_str(),
            kind,
            "page deadline passed".into(),
            record,
        )
    }
}

/// An include's URL resolved, checked (loop, allowlist) and its request options: everything
/// before it waits for a permit. A refusal is recorded here.
fn prepare(
    state: &Arc<PageState>,
    target: Target<'_>,
    inc: &Include,
    doc: &DocContext,
    record: Option<usize>,
) -> Result<Prepared, Failure> {
    let composer = &state.composer;
    let fail = |url: &str, kind: FailureKind, message: String| failure(url, kind, message, record);
    let rendered = target
        .url
        .as_ref()
        .map_err(|e| fail(&target.src.to_string(), FailureKind::Url, e.to_string()))?;
    target.resolved.body.as_ref().map_err(|message| {
        composer.metrics.inc_counter(
            INCLUDE_BOUNDS,
            INCLUDE_BOUNDS_HELP,
            Some(("bound", "entity_bytes")),
            1,
        );
        fail(rendered, FailureKind::Url, message.clone())
    })?;
    // A reused template's `src` was joined and checked by an earlier request.
    let is_src = !target.alt;
    let kept = is_src
        .then(|| checked::kept(inc, composer.id, &doc.base, rendered))
        .flatten();
    // Shared with the fetch's request and what comes after it: one URL per include.
    let url = match &kept {
        Some((allowed, _)) => Arc::clone(allowed.shared_url()),
        None => Arc::new(
            doc.base
                .join(rendered)
                .map_err(|e| fail(rendered, FailureKind::Url, e.to_string()))?,
        ),
    };
    if let Some(id) = record {
        state.trace_update(id, |r| url.as_str().clone_into(&mut r.url));
    }
    let allowed = if doc.ancestors.contains(&*url) {
        Err(fail(
            url.as_str(),
            FailureKind::Loop,
            "includes itself or a document that includes it".into(),
        ))
    } else if let Some(kept) = kept {
        Ok(kept)
    } else {
        // The one allowlist decision for this include; the fetch takes it as it is.
        match composer.fetcher.check(&url) {
            Ok(allowed) => {
                let host = composer.metrics.fragment_host(&host_label(&url));
                if is_src && doc.reused {
                    let of = (composer.id, &doc.base, rendered.as_str());
                    checked::keep(inc, of, &allowed, &host);
                }
                Ok((allowed, host))
            }
            Err(e) => Err(fetch_failure(url.as_str(), &e, record)),
        }
    };
    let (allowed, host) = match allowed {
        // An untrusted document's includes carry no credentials, whichever host they name:
        // trust along a chain of includes is the least of its links.
        Ok((allowed, host)) if doc.trusted => (allowed, host),
        Ok((allowed, host)) => (allowed.untrusted(), host),
        Err(f) => {
            composer
                .metrics
                .record_fragment(&host_label(&url), f.kind.as_str(), 0.0, 0);
            return Err(f);
        }
    };
    let access = allowed.access();
    let (options, dropped) = target.resolved.options_for(access, doc.trusted);
    for (reason, name) in &dropped {
        composer.metrics.inc_counter(
            "esi_proxy_include_headers_dropped_total",
            "Header edits of include tags left out of a fragment request (credential, forbidden, invalid, too_large).",
            Some(("reason", reason.as_str())),
            1,
        );
        tracing::warn!(url = %url, header = %name, reason = reason.as_str(), line = inc.line, "include header edit dropped");
    }
    let credentials = [header::COOKIE, header::AUTHORIZATION]
        .iter()
        .any(|name| state.page.client_headers.contains_key(name));
    if access.trusted && credentials {
        // A trusted host gets the visitor's Cookie and Authorization (the fetcher's rule).
        state.note_credentials(|| format!("fragment {url} fetched with credentials"));
    }
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
    Ok(Prepared {
        allowed,
        host,
        options,
        started: Instant::now(),
        waited: false,
        span,
    })
}

/// An include's fetch, its permits held, and what its fragment becomes: placed as it came,
/// composed when it is ESI, or parsed for an eval.
async fn exchange(
    state: &Arc<PageState>,
    inc: &Include,
    doc: &DocContext,
    record: Option<usize>,
    purpose: Purpose,
    prepared: Box<Prepared>,
) -> Result<Fetched, Failure> {
    // Each phase in a block of its own: what one holds is not kept in the future's room
    // while the next waits (an include in flight holds only its fetch).
    let (sent, result) = {
        let (sent, request) = Sent::request(state, inc, record, purpose, *prepared);
        let result = match request {
            Ok(request) => state
                .composer
                .fetcher
                .fetch(request)
                .instrument(sent.span.clone())
                .await
                .map_err(|e| fetch_failure(sent.url.as_str(), &e, record)),
            Err(f) => Err(f),
        };
        (sent, result)
    };
    let compose = {
        let fragment = sent.settle(state, inc, record, result)?;
        let place = Place {
            inc,
            doc,
            record,
            purpose,
            url: sent.url,
            access: sent.access,
        };
        match place.fragment(state, fragment)? {
            Placed::Done(fetched) => return Ok(fetched),
            // Boxed: a fragment's own includes are rare, and every include would carry their
            // room.
            Placed::Compose(fetched, template, child) => {
                Box::pin(compose_fragment(state, fetched, template, child))
            }
        }
    };
    compose.await
}

/// An include's request on its way: what is recorded of it when its answer comes.
struct Sent {
    url: Arc<Url>,
    access: Access,
    host: FragmentHost,
    started: Instant,
    span: tracing::Span,
}

impl Sent {
    /// The fragment request of a prepared include, bounded by its own `maxwait` (or the
    /// fragment timeout) and the page's deadline; a deadline already passed fails it.
    fn request(
        state: &PageState,
        inc: &Include,
        record: Option<usize>,
        purpose: Purpose,
        prepared: Prepared,
    ) -> (Self, Result<FragmentRequest, Failure>) {
        let Prepared {
            allowed,
            host,
            options,
            started,
            waited,
            span,
        } = prepared;
        let sent = Sent {
            url: Arc::clone(allowed.shared_url()),
            access: allowed.access(),
            host,
            started,
            span,
        };
        // The clock read when the include was prepared, unless it waited for a permit since.
        let now = if waited {
            tokio::time::Instant::now()
        } else {
            tokio::time::Instant::from_std(started)
        };
        let remaining = state.deadline.saturating_duration_since(now);
        let own = inc.maxwait_ms.map_or(
            state.composer.config.fragment_timeout,
            Duration::from_millis,
        );
        let timeout = own.min(remaining);
        if timeout.is_zero() {
            let f = failure(
                sent.url.as_str(),
                FailureKind::Fetch(ErrorKind::Timeout),
                "page deadline passed".into(),
                record,
            );
            return (sent, Err(f));
        }
        let request = FragmentRequest {
            url: allowed,
            client_headers: Arc::clone(&state.page.client_headers),
            timeout,
            options,
            keep_status: purpose == Purpose::Primary,
        };
        (sent, Ok(request))
    }

    /// Records the answer (span, trace row, hints, metrics) and hands on the fragment.
    fn settle(
        &self,
        state: &PageState,
        inc: &Include,
        record: Option<usize>,
        result: Result<crate::fetch::Fragment, Failure>,
    ) -> Result<crate::fetch::Fragment, Failure> {
        let metrics = &state.composer.metrics;
        let host = &self.host;
        let seconds = self.started.elapsed().as_secs_f64();
        self.span.record("ms", seconds * 1000.0);
        let f = match result {
            Ok(f) => f,
            Err(f) => {
                metrics.record_fragment_at(host, f.kind.as_str(), seconds, 0);
                return Err(f);
            }
        };
        self.span.record("status", f.status.as_u16());
        if let Some(cache) = &f.cache {
            self.span.record("cache", cache.status.as_str());
        }
        let hints = state
            .page
            .hints
            .as_ref()
            .map(|h| h.add_fragment(&f.headers))
            .unwrap_or_default();
        if let Some(id) = record {
            state.trace_update(id, |r| {
                r.hints = hints;
                r.status = Some(f.status.as_u16());
                r.bytes = f.body.len();
                r.esi = processes(inc.options.dca, &f) && self.access.esi;
                if let Some(c) = &f.cache {
                    r.cache = Some(c.status);
                    r.ttl_s = c.ttl.map(|t| t.as_secs_f64());
                    r.ttl_source.clone_from(&c.source);
                    r.keys = c.keys.iter().map(|k| k.to_string()).collect();
                }
            });
        }
        metrics.record_fragment_at(host, "ok", seconds, f.body.len());
        Ok(f)
    }
}

/// What placing a fetched fragment needs to know of its include.
struct Place<'a> {
    inc: &'a Include,
    doc: &'a DocContext,
    record: Option<usize>,
    purpose: Purpose,
    url: Arc<Url>,
    access: Access,
}

/// A fetched fragment, placed: as it came (or parsed, for an eval), or still to compose.
enum Placed {
    Done(Fetched),
    Compose(Fetched, Arc<Template>, Arc<DocContext>),
}

impl Place<'_> {
    /// What `fragment` becomes, short of composing it: placed as it came when its ESI is not
    /// processed, refused past the depth, parsed for an eval, or handed back to compose.
    fn fragment(
        self,
        state: &Arc<PageState>,
        fragment: crate::fetch::Fragment,
    ) -> Result<Placed, Failure> {
        let Place {
            inc,
            doc,
            record,
            purpose,
            url,
            access,
        } = self;
        let cfg = &state.composer.config;
        let keep_status = purpose == Purpose::Primary;
        let trusted = doc.trusted && access.trusted;
        let esi =
            processes(inc.options.dca, &fragment) && access.esi && fragment.status.is_success();
        let mut fetched = Fetched {
            body: Bytes::new(),
            status: fragment.status,
            headers: if keep_status {
                Arc::unwrap_or_clone(fragment.headers)
            } else {
                HeaderMap::new()
            },
            trusted,
            // Only a primary's answer names its URL (in the head's notes).
            url: if keep_status {
                url.as_str().to_owned()
            } else {
                String::new()
            },
            eval: None,
        };
        // ESI from a host that is neither trusted nor opted in (`esi = true`) is placed as
        // literal bytes, as a fragment not marked ESI is: its markup fetches nothing and reads
        // nothing. `dca` chooses between those the host may send: `none` never, `esi` even
        // unmarked. A primary's answer outside 2xx is placed as it came.
        if !esi {
            fetched.body = fragment.body;
            return Ok(Placed::Done(fetched));
        }
        if doc.depth + 1 > cfg.max_depth {
            return Err(failure(
                url.as_str(),
                FailureKind::Depth,
                format!("ESI nested deeper than {}", cfg.max_depth),
                record,
            ));
        }
        // A cached ESI fragment comes parsed (once per cache entry); lenient parsing never
        // fails.
        let template = match &fragment.template {
            Some(template) => Arc::clone(template),
            None => {
                let template = esi::parse(fragment.body.clone(), &cfg.parse).unwrap_or_default();
                if template.problem_count > 0 {
                    state
                        .composer
                        .metrics
                        .add_esi_problems(template.problem_count as u64);
                }
                Arc::new(template)
            }
        };
        let url = Arc::unwrap_or_clone(url);
        let mut ancestors = doc.ancestors.clone();
        ancestors.push(url.clone());
        let child = DocContext {
            base: url,
            ancestors,
            depth: doc.depth + 1,
            trusted: access.trusted,
            record,
            // An eval's fragment is parsed again below, per request: nothing to keep in it.
            reused: fragment.template.is_some() && purpose != Purpose::Eval,
        };
        if purpose == Purpose::Eval {
            // Parsed again: its `$(name)`s read the including document's variables.
            let opts = ParseOptions {
                shared_scope: true,
                ..cfg.parse.clone()
            };
            let shared = esi::parse(fragment.body.clone(), &opts).unwrap_or_default();
            fetched.eval = Some((Arc::new(shared), child));
            return Ok(Placed::Done(fetched));
        }
        // A fragment's variables are its own.
        Ok(Placed::Compose(fetched, template, Arc::new(child)))
    }
}

/// An ESI fragment composed in its own document context, its size bounded as a page's is.
async fn compose_fragment(
    state: &Arc<PageState>,
    mut fetched: Fetched,
    template: Arc<Template>,
    child: Arc<DocContext>,
) -> Result<Fetched, Failure> {
    let cfg = &state.composer.config;
    let parts = compose_nodes(state, &template.nodes, &child, false, &mut Scope::default()).await?;
    if parts.len() > cfg.max_page_bytes {
        return Err(failure(
            child.base.as_str(),
            FailureKind::Fetch(ErrorKind::TooLarge),
            format!("composed fragment over {} bytes", cfg.max_page_bytes),
            child.record,
        ));
    }
    fetched.body = parts;
    Ok(fetched)
}

/// Whether a fragment's ESI is to be processed, its host permitting: as marked, unless the
/// tag's `dca` says `none` (never) or `esi` (marked or not).
fn processes(dca: Dca, fragment: &crate::fetch::Fragment) -> bool {
    match dca {
        Dca::Marked => fragment.is_esi(),
        Dca::None => false,
        Dca::Esi => true,
    }
}

/// Include bounds hit (`bound`: `entity_bytes`).
const INCLUDE_BOUNDS: &str = "esi_proxy_include_bounds_total";
const INCLUDE_BOUNDS_HELP: &str =
    "Includes that hit a bound of their tag's attributes (entity_bytes): they take their fallback.";

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

/// Waits for a permit from `semaphore` until `deadline`, and says whether it had to wait;
/// `None` when the deadline passes first. The deadline's timer is only set up when there is a
/// wait. A closed semaphore (these never are) lets the fetch go ahead without a permit.
async fn acquire_by(
    semaphore: &Semaphore,
    deadline: tokio::time::Instant,
) -> Option<(Option<SemaphorePermit<'_>>, bool)> {
    match semaphore.try_acquire() {
        Ok(permit) => Some((Some(permit), false)),
        Err(TryAcquireError::Closed) => Some((None, false)),
        Err(TryAcquireError::NoPermits) => tokio::time::timeout_at(deadline, semaphore.acquire())
            .await
            .ok()
            .map(|permit| (permit.ok(), true)),
    }
}

fn failure(url: &str, kind: FailureKind, message: String, record: Option<usize>) -> Failure {
    Failure {
        url: url.to_owned(),
        kind,
        message,
        record,
    }
}

fn fetch_failure(url: &str, e: &FetchError, record: Option<usize>) -> Failure {
    failure(url, FailureKind::Fetch(e.kind()), e.to_string(), record)
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
}
