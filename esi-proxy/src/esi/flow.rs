//! Control flow of the ESI language past 1.0: the items an `esi:foreach` runs over (under its
//! iteration bound), and calls of document-defined functions (`esi:function`, `esi:return`,
//! `$(ARGS)`) under the call-depth bound. Pure: no I/O; the composer and the reference render
//! run loop bodies themselves, since those may fetch.

use std::borrow::Cow;
use std::sync::Arc;

use super::ast::{Foreach, Node};
use super::eval::{assign, Bound, Context, Scope, Value};

/// How a run of nodes ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Flow {
    /// It ran to its end.
    Continue,
    /// An `esi:break` ended it: the innermost loop stops.
    Break,
    /// An `esi:return` ended it with a value (in a function body).
    Return(Value<'static>),
}

/// The name of the variable that holds a call's arguments.
pub const ARGS: &str = "ARGS";

/// The items `f` runs over, at most [`super::Limits::max_foreach_iterations`] of them, each
/// costing one evaluation: a list's elements, a dictionary's `[key, value]` pairs, nothing for
/// a missing or empty value, else the value alone. Also returns the bound hit, if any (counted):
/// the items before it still run.
pub fn foreach_items<'a>(
    f: &'a Foreach,
    cx: &mut Context<'a>,
) -> (Vec<Value<'static>>, Option<Bound>) {
    let value = match f.collection.value(cx) {
        Ok(v) => v.into_owned(),
        Err(bound) => return (Vec::new(), Some(bound)),
    };
    let mut items = match value {
        Value::List(items) => items,
        Value::Dict(pairs) => pairs
            .into_iter()
            .map(|(k, v)| Value::List(vec![Value::Str(Cow::Owned(k)), v]))
            .collect(),
        v if v.is_empty() => Vec::new(),
        v => vec![v],
    };
    let max = cx.budget.limits().max_foreach_iterations;
    let mut hit = None;
    if items.len() > max {
        items.truncate(max);
        hit = Some(cx.budget.hit(Bound::ForeachIterations));
    }
    for i in 0..items.len() {
        if let Err(bound) = cx.charge(1) {
            items.truncate(i);
            hit = Some(bound);
            break;
        }
    }
    (items, hit)
}

/// Sets a loop's item variable in `scope`.
pub fn set_item(scope: &mut Scope, name: &str, value: Value<'static>) {
    match scope.assigned.get_mut(name) {
        Some(slot) => *slot = value,
        None => {
            scope.assigned.insert(name.to_owned(), value);
        }
    }
}

/// Calls the document-defined function `name` with `args`: its body runs in a scope of its
/// own (`$(ARGS)` and the functions defined so far; what it assigns stays there), one level
/// deeper; its value is what its `esi:return` gives, or null. The body's text and
/// `esi:vars` output is not placed anywhere: a function computes a value.
///
/// # Errors
/// [`Bound::UndefinedFunction`] when no such function is defined (yet);
/// [`Bound::FunctionDepth`] past the call-depth bound; any bound the body hits.
pub fn call<'a>(
    name: &str,
    args: Vec<Value<'static>>,
    cx: &mut Context<'a>,
) -> Result<Value<'a>, Bound> {
    let Some(f) = cx.scope.functions.get(name) else {
        return Err(cx.budget.hit(Bound::UndefinedFunction));
    };
    let (body, trusted) = (Arc::clone(&f.body), f.trusted);
    if cx.depth >= cx.budget.limits().max_function_depth {
        return Err(cx.budget.hit(Bound::FunctionDepth));
    }
    cx.budget.items(args.len())?;
    let mut scope = Scope {
        functions: cx.scope.functions.clone(),
        ..Scope::default()
    };
    scope.assigned.insert(ARGS.to_owned(), Value::List(args));
    // A function an untrusted document defined reads no credentials, whoever calls it.
    let weak;
    let policy = if trusted {
        cx.policy
    } else {
        // Nor any request header: the function may run in any document's place.
        weak = cx.policy.without_credentials(&[]);
        &weak
    };
    let mut child = cx.nested(policy, scope);
    let result = run(&body, &mut child);
    cx.absorb(child);
    match result? {
        Flow::Return(v) => Ok(v),
        Flow::Continue | Flow::Break => Ok(Value::Null),
    }
}

/// Runs a function body's nodes in `cx`. Includes and evals are refused in function bodies
/// when parsed, so nothing here fetches.
fn run<'b>(nodes: &'b [Node], cx: &mut Context<'b>) -> Result<Flow, Bound> {
    for node in nodes {
        let flow = match node {
            Node::Assign(a) => {
                assign(a, cx)?;
                Flow::Continue
            }
            Node::Choose { whens, otherwise } => {
                let mut branch = otherwise.as_deref();
                for w in whens {
                    let Some(test) = &w.test else { continue };
                    cx.match_name = w.match_name.as_deref().unwrap_or("MATCHES");
                    if test.test(cx)? {
                        branch = Some(&w.body);
                        break;
                    }
                }
                match branch {
                    Some(b) => run(b, cx)?,
                    None => Flow::Continue,
                }
            }
            Node::Foreach(f) => {
                let (items, hit) = foreach_items(f, cx);
                if let Some(bound) = hit {
                    return Err(bound);
                }
                let mut flow = Flow::Continue;
                for item in items {
                    set_item(&mut cx.scope, &f.item, item);
                    match run(&f.body, cx)? {
                        Flow::Continue => {}
                        Flow::Break => break,
                        ret @ Flow::Return(_) => {
                            flow = ret;
                            break;
                        }
                    }
                }
                flow
            }
            Node::Inline { body, .. } => run(body, cx)?,
            Node::Try { attempt, .. } => run(attempt, cx)?,
            Node::Break => Flow::Break,
            Node::Return(r) => Flow::Return(r.value.value(cx)?.into_owned()),
            // Output of a function body goes nowhere; definitions inside one are refused when
            // parsed; fetches too.
            Node::Text(_)
            | Node::Vars(_)
            | Node::Function(_)
            | Node::Include(_)
            | Node::Eval(_) => Flow::Continue,
        };
        if flow != Flow::Continue {
            return Ok(flow);
        }
    }
    Ok(Flow::Continue)
}

#[cfg(test)]
#[path = "flow_tests.rs"]
mod tests;
