//! Composition of documents node by node: the body of an ESI fragment, an except branch, and
//! the loops and evals of a streamed layout. Variables, tests, assignments, loops and function
//! definitions run in document order; each include starts (as its own task) the moment it is
//! reached; an `esi:eval` holds up what follows until its fragment has run. Output is a list of
//! slots in document order.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt};

use crate::esi::{Flow, Node, Scope, UserFunction};

use super::include::{include, resolve, Fetched};
use super::stream::{concat, Slot, Task};
use super::{DocContext, Failure, Fallback, PageState, WhenTest};

/// Runs a streamed `esi:try`: the attempt's slots are already in flight; if one fails, the
/// except branch is composed instead, in `scope` (the document's as it was at the try).
pub(super) async fn run_try(
    state: &Arc<PageState>,
    attempt: Vec<Slot>,
    except: Vec<Node>,
    doc: &Arc<DocContext>,
    in_try: bool,
    mut scope: Scope,
) -> Result<Bytes, Failure> {
    match join(attempt).await {
        Ok(parts) => Ok(parts),
        Err(f) => {
            fall_back_to_except(state, &f);
            compose_nodes(state, &except, doc, in_try, &mut scope).await
        }
    }
}

/// Logs and counts an attempt that failed; its except branch is composed in its place.
fn fall_back_to_except(state: &PageState, failure: &Failure) {
    tracing::info!(failure = %failure, "esi:attempt failed, using esi:except");
    state.record_fallback(Fallback::Except, Some(failure));
}

/// Composes a whole document (an except branch, an ESI fragment) in `scope`, and joins its
/// output in order.
pub(super) async fn compose_nodes(
    state: &Arc<PageState>,
    nodes: &[Node],
    doc: &Arc<DocContext>,
    in_try: bool,
    scope: &mut Scope,
) -> Result<Bytes, Failure> {
    let mut slots = Vec::new();
    run(state, nodes, doc, in_try, scope, &mut slots).await;
    join(slots).await
}

/// The slots' output in order; the first failure ends the wait (the other tasks stop when
/// their slots are dropped).
async fn join(slots: Vec<Slot>) -> Result<Bytes, Failure> {
    let mut parts = Vec::with_capacity(slots.len());
    for slot in slots {
        match slot {
            Slot::Ready(b) => parts.push(b),
            Slot::Pending(mut task) => parts.push(task.join().await?),
        }
    }
    Ok(concat(parts))
}

/// Runs `nodes` of `doc` in `scope`, appending the output to `out` as slots; what ended them
/// (an `esi:break` ends the innermost loop). A failure is a slot too, where its output would
/// be.
pub(super) fn run<'a>(
    state: &'a Arc<PageState>,
    nodes: &'a [Node],
    doc: &'a Arc<DocContext>,
    in_try: bool,
    scope: &'a mut Scope,
    out: &'a mut Vec<Slot>,
) -> BoxFuture<'a, Flow> {
    async move {
        for node in nodes {
            let flow = match node {
                Node::Text(b) => {
                    out.push(Slot::Ready(b.clone()));
                    Flow::Continue
                }
                Node::Vars(segments) => {
                    out.push(Slot::Ready(state.render_vars(segments, doc, scope)));
                    Flow::Continue
                }
                Node::Include(inc) => {
                    out.push(start_include(state, inc, doc, in_try, scope));
                    Flow::Continue
                }
                Node::Try { attempt, except } => {
                    let at_try = scope.clone();
                    let mut slots = Vec::new();
                    let flow = run(state, attempt, doc, true, scope, &mut slots).await;
                    let (state, doc, except) = (Arc::clone(state), Arc::clone(doc), except.clone());
                    out.push(Slot::Pending(Task::spawn(async move {
                        run_try(&state, slots, except, &doc, in_try, at_try).await
                    })));
                    flow
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
                        Some(branch) => run(state, branch, doc, in_try, scope, out).await,
                        None => Flow::Continue,
                    }
                }
                Node::Inline { body, .. } => run(state, body, doc, in_try, scope, out).await,
                Node::Assign(a) => {
                    state.assign(a, doc, scope);
                    Flow::Continue
                }
                Node::Foreach(f) => {
                    for item in state.foreach_items(f, doc, scope) {
                        crate::esi::flow::set_item(scope, &f.item, item);
                        let flow = run(state, &f.body, doc, in_try, scope, out).await;
                        if flow == Flow::Break {
                            break;
                        }
                    }
                    Flow::Continue
                }
                Node::Break => Flow::Break,
                Node::Function(func) => {
                    let def = UserFunction {
                        body: Arc::clone(&func.body),
                        trusted: doc.trusted,
                    };
                    scope.functions.insert(func.name.to_string(), def);
                    Flow::Continue
                }
                // Only meaningful in a function body, which runs inside an expression.
                Node::Return(_) => Flow::Continue,
                Node::Eval(inc) => {
                    eval(state, inc, doc, in_try, scope, out).await;
                    Flow::Continue
                }
            };
            if flow == Flow::Break {
                return Flow::Break;
            }
        }
        Flow::Continue
    }
    .boxed()
}

/// Starts an include with its URLs as the variables are now.
pub(super) fn start_include(
    state: &Arc<PageState>,
    inc: &Arc<crate::esi::Include>,
    doc: &Arc<DocContext>,
    in_try: bool,
    scope: &mut Scope,
) -> Slot {
    let resolved = state.resolve(inc, doc, scope);
    let in_place = &state.in_place;
    let polled_here = in_place.load(Ordering::Relaxed);
    let (page, doc, inc) = (Arc::clone(state), Arc::clone(doc), Arc::clone(inc));
    let fetch = async move { include(&page, &inc, &resolved, &doc, in_try).await };
    let slot = Slot::start(fetch, polled_here);
    if polled_here && matches!(slot, Slot::Pending(_)) {
        in_place.store(false, Ordering::Relaxed);
    }
    slot
}

/// Runs an `esi:eval`: waits for its fragment, then runs the fragment's ESI in `scope`, where
/// its assignments and functions stay. A fragment from an untrusted document starts from an
/// empty scope (the page's variables may hold what credentials gave), and what it assigns and
/// defines is then added to `scope`, its functions marked untrusted.
async fn eval(
    state: &Arc<PageState>,
    inc: &crate::esi::Include,
    doc: &Arc<DocContext>,
    in_try: bool,
    scope: &mut Scope,
    out: &mut Vec<Slot>,
) {
    let resolved = state.resolve(inc, doc, scope);
    // Boxed: a loop or fragment holding an eval does not carry a fetch's room otherwise.
    match Box::pin(resolve(state, inc, &resolved, doc, in_try, true)).await {
        Ok(None) => {}
        Ok(Some(Fetched {
            eval: Some((template, child)),
            ..
        })) => {
            let child = Arc::new(child);
            if child.trusted {
                run(state, &template.nodes, &child, in_try, scope, out).await;
            } else {
                let mut own = Scope::default();
                run(state, &template.nodes, &child, in_try, &mut own, out).await;
                scope.assigned.extend(own.assigned);
                scope.functions.extend(own.functions);
            }
        }
        Ok(Some(fetched)) => out.push(Slot::Ready(fetched.body)),
        Err(failure) => out.push(Slot::Pending(Task::failed(failure))),
    }
}
