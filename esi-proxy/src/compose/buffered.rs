//! Composition of buffered documents: a streamed `esi:try` awaited whole (its except branch
//! composed when the attempt fails), and the body of an ESI fragment or an except branch, every
//! include started at once and the output kept in order.

use std::sync::Arc;

use bytes::Bytes;
use futures::future::{ready, try_join_all, BoxFuture, FutureExt};

use crate::esi::{Node, Scope};

use super::include::include;
use super::stream::{concat, Slot};
use super::{DocContext, Failure, Fallback, PageState, WhenTest};

/// Runs a streamed `esi:try`: the attempt's slots are already in flight; if one fails, the
/// except branch is composed instead, in `scope` (the document's as it was at the try's end).
pub(super) async fn run_try(
    state: &Arc<PageState>,
    attempt: Vec<Slot>,
    except: Vec<Node>,
    doc: &DocContext,
    in_try: bool,
    mut scope: Scope,
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
            fall_back_to_except(state, &f);
            compose_nodes(state, &except, doc, in_try, &mut scope)
                .await
                .map(concat)
        }
    }
}

/// Logs and counts an attempt that failed; its except branch is composed in its place.
fn fall_back_to_except(state: &PageState, failure: &Failure) {
    tracing::info!(failure = %failure, "esi:attempt failed, using esi:except");
    state.record_fallback(Fallback::Except, Some(failure));
}

/// Composes a buffered document (an except branch, an ESI fragment): every include starts at
/// once; output is kept in order. Variables, tests and assignments are evaluated now, in
/// document order, through `scope` (the returned future does not hold it); only fetches run
/// concurrently. An except branch runs later, if at all, in a copy of the scope as it was at
/// its `esi:try`.
pub(super) fn compose_nodes<'a>(
    state: &'a Arc<PageState>,
    nodes: &'a [Node],
    doc: &'a DocContext,
    in_try: bool,
    scope: &mut Scope,
) -> BoxFuture<'a, Result<Vec<Bytes>, Failure>> {
    let mut parts: Vec<BoxFuture<'a, Result<Vec<Bytes>, Failure>>> =
        Vec::with_capacity(nodes.len());
    for node in nodes {
        let part = match node {
            Node::Text(b) => ready(Ok(vec![b.clone()])).boxed(),
            Node::Vars(segments) => {
                let out = state.render_vars(segments, doc, scope);
                ready(Ok(vec![out])).boxed()
            }
            Node::Include(inc) => {
                let resolved = state.resolve(inc, doc, scope);
                include(state, inc, doc, in_try, resolved)
                    .map(|r| r.map(|b| vec![b]))
                    .boxed()
            }
            Node::Try { attempt, except } => {
                let attempt = compose_nodes(state, attempt, doc, true, scope);
                let mut at_try = scope.clone();
                async move {
                    match attempt.await {
                        Ok(parts) => Ok(parts),
                        Err(f) => {
                            fall_back_to_except(state, &f);
                            compose_nodes(state, except, doc, in_try, &mut at_try).await
                        }
                    }
                }
                .boxed()
            }
            Node::Choose { whens, otherwise } => {
                let branch = whens
                    .iter()
                    .find(|w| {
                        w.test.as_ref().is_some_and(|t| {
                            let when = WhenTest(t, &w.source, w.match_name.as_deref());
                            state.test(when, doc, scope)
                        })
                    })
                    .map(|w| w.body.as_slice())
                    .or(otherwise.as_deref());
                state.note_cookie_read();
                match branch {
                    Some(branch) => compose_nodes(state, branch, doc, in_try, scope),
                    None => ready(Ok(Vec::new())).boxed(),
                }
            }
            Node::Inline { body, .. } => compose_nodes(state, body, doc, in_try, scope),
            Node::Assign(a) => {
                state.assign(a, doc, scope);
                ready(Ok(Vec::new())).boxed()
            }
        };
        parts.push(part);
    }
    async move {
        let parts = try_join_all(parts).await?;
        Ok(parts.into_iter().flatten().collect())
    }
    .boxed()
}
