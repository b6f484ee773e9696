//! The parsed form of an ESI document, in the spec's words, and its reference evaluation against
//! a request with a synchronous fragment source (the proxy's composer does the same, async).
//! Literal runs are `Bytes` slices of the fetched body. No I/O.

use std::sync::Arc;

use bytes::Bytes;

use super::diag::Diagnostic;
use super::eval::{assign, render_html_in, render_url_in, Budget, Context, Scope, UserFunction};
use super::expr::Expr;
use super::flow::{foreach_items, set_item, Flow};
use super::include_attrs::IncludeOptions;
use super::memo::Memo;
use super::parse::{parse, ParseOptions};
use super::vars::{Request, Segment, VarPolicy, VarString};

/// A parsed document: literal runs and ESI instructions, in document order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Template {
    /// The top-level nodes.
    pub nodes: Vec<Node>,
    /// Problems met in lenient mode and the outcome applied (at most `max_diagnostics` kept).
    pub diagnostics: Vec<Diagnostic>,
    /// How many problems were met in all, including those not kept.
    pub problem_count: usize,
}

/// One piece of a document.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    /// Literal bytes, written as they are.
    Text(Bytes),
    /// Text inside `esi:vars` holding variables: literals and values (HTML-escaped on output).
    Vars(Vec<Segment<Bytes>>),
    /// `<esi:include>`.
    Include(Arc<Include>),
    /// `<esi:try>`: the attempt is used unless one of its includes fails, else the except.
    Try {
        /// `<esi:attempt>` content.
        attempt: Vec<Node>,
        /// `<esi:except>` content.
        except: Vec<Node>,
    },
    /// `<esi:choose>`: the first `when` whose test is true, else `otherwise`.
    Choose {
        /// The `<esi:when>` branches in order.
        whens: Vec<When>,
        /// `<esi:otherwise>` content, if present.
        otherwise: Option<Vec<Node>>,
    },
    /// `<esi:assign>`: sets a variable for the rest of the document.
    Assign(Assign),
    /// `<esi:foreach>`: its body once per item of a list (or `[key, value]` pair of a
    /// dictionary), the item in a variable.
    Foreach(Foreach),
    /// `<esi:break/>`: ends the innermost `esi:foreach`.
    Break,
    /// `<esi:function>`: defines a function for the rest of the document.
    Function(Function),
    /// `<esi:return/>`: ends the function being called with a value.
    Return(Return),
    /// `<esi:eval>`: a fragment whose ESI runs in this document's scope (its variables and
    /// functions stay visible afterwards).
    Eval(Arc<Include>),
    /// `<esi:inline>`: a fragment carried inside the document; its content renders in place.
    Inline {
        /// The `name` attribute: the URL the fragment stands for.
        name: Box<str>,
        /// The `fetchable` attribute (`yes` / `no`).
        fetchable: bool,
        /// The fragment's content.
        body: Vec<Node>,
    },
}

/// `<esi:assign name=".." value=".."/>` or `<esi:assign name="..">expression</esi:assign>`.
#[derive(Debug, Clone, PartialEq)]
pub struct Assign {
    /// The variable set.
    pub name: Box<str>,
    /// `name="x{key}"`: the list index or dictionary key set, unquoted.
    pub key: Option<Box<str>>,
    /// The value's expression.
    pub value: Expr,
    /// The expression as written, for logs.
    pub source: Box<str>,
}

/// `<esi:foreach collection=".." item="..">`.
#[derive(Debug, Clone, PartialEq)]
pub struct Foreach {
    /// The collection's expression.
    pub collection: Expr,
    /// The expression as written, for logs.
    pub source: Box<str>,
    /// The variable each item is assigned to (default `item`).
    pub item: Box<str>,
    /// The loop's body.
    pub body: Vec<Node>,
}

/// `<esi:function name="..">`: a body run when `$name(..)` is called, its arguments in
/// `$(ARGS)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Function {
    /// The function's name, called as `$name(..)`.
    pub name: Box<str>,
    /// The body, shared by every call.
    pub body: Arc<[Node]>,
}

/// `<esi:return value=".."/>`.
#[derive(Debug, Clone, PartialEq)]
pub struct Return {
    /// The value's expression.
    pub value: Expr,
    /// The expression as written, for logs.
    pub source: Box<str>,
}

/// What happens when an include fails and has no usable `alt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnError {
    /// The failure propagates: to the enclosing `esi:try`, else the proxy's policy applies.
    #[default]
    Fail,
    /// `onerror="continue"`: the include yields nothing.
    Continue,
}

/// `<esi:include src=".." alt=".." onerror="continue" maxwait=".." primary="true"/>`.
#[derive(Debug, Clone, PartialEq)]
pub struct Include {
    /// The fragment's URL, possibly relative, possibly holding variables.
    pub src: VarString,
    /// The URL tried when `src` fails.
    pub alt: Option<VarString>,
    /// What a failure yields when `alt` fails too.
    pub onerror: OnError,
    /// `maxwait` in milliseconds, when the tag sets a deadline of its own.
    pub maxwait_ms: Option<u64>,
    /// The attributes past ESI 1.0 (`dca`, `ttl`, `no-store`, `method`, `entity`, header
    /// edits) and nested `<esi:param>`s.
    pub options: IncludeOptions,
    /// `primary="true"`: this fragment's status, `Location` and (from a trusted host)
    /// `Set-Cookie` become the page's. Other ESI processors ignore the attribute.
    pub primary: bool,
    /// Line of the tag.
    pub line: u32,
    /// Byte column of the tag.
    pub col: u32,
    /// What the composer worked out for this include, kept for the next request that runs
    /// the same parsed template.
    pub memo: Memo,
}

/// `<esi:when test="..">`.
#[derive(Debug, Clone, PartialEq)]
pub struct When {
    /// The parsed test; `None` when it did not parse (lenient mode), which counts as false.
    pub test: Option<Expr>,
    /// The test as written, for logs and debug output.
    pub source: Box<str>,
    /// `matchname`: the variable a `matches` in the test stores its captures under (default
    /// `MATCHES`).
    pub match_name: Option<Box<str>>,
    /// The branch content.
    pub body: Vec<Node>,
}

/// Why a synchronous render could not produce an include's content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// The fragment source failed for this URL and nothing caught it.
    #[error("include {url} failed")]
    IncludeFailed {
        /// The URL that failed last (`alt` if it was tried).
        url: String,
    },
}

// === impl Template ===

impl Template {
    /// Renders the template for `req`, asking `fetch` for each include's URL (after variable
    /// substitution), with the spec's fallbacks: `alt`, then `onerror="continue"`, then the
    /// enclosing `esi:try`'s except. Assignments, loops, functions and `esi:eval` run as the
    /// proxy runs them, under a default budget.
    ///
    /// # Errors
    /// An include that fails with no fallback and no enclosing `esi:try`.
    pub fn render(
        &self,
        req: &Request,
        policy: &VarPolicy,
        fetch: &mut dyn FnMut(&str) -> Option<Bytes>,
        out: &mut Vec<u8>,
    ) -> Result<(), RenderError> {
        let budget = Budget::default();
        self.render_with(req, policy, &budget, &mut Scope::default(), fetch, out)
    }

    /// [`Template::render`] under `budget`, starting from (and leaving its changes in) `scope`.
    ///
    /// # Errors
    /// An include that fails with no fallback and no enclosing `esi:try`.
    pub fn render_with(
        &self,
        req: &Request,
        policy: &VarPolicy,
        budget: &Budget,
        scope: &mut Scope,
        fetch: &mut dyn FnMut(&str) -> Option<Bytes>,
        out: &mut Vec<u8>,
    ) -> Result<(), RenderError> {
        let env = Env {
            req,
            policy,
            budget,
        };
        let mut run = Run {
            env: &env,
            scope,
            fetch,
            evals: 0,
        };
        run.nodes(&self.nodes, out).map(|_| ())
    }

    /// Whether the document holds no ESI instruction at all (only literal text).
    pub fn is_static(&self) -> bool {
        self.nodes.iter().all(|n| matches!(n, Node::Text(_)))
    }

    /// Every include in document order, nested ones included (`esi:eval` too).
    pub fn includes(&self) -> Vec<&Include> {
        let mut found = Vec::new();
        collect_includes(&self.nodes, &mut found);
        found
    }
}

fn collect_includes<'a>(nodes: &'a [Node], found: &mut Vec<&'a Include>) {
    for node in nodes {
        match node {
            Node::Include(inc) | Node::Eval(inc) => found.push(inc),
            Node::Try { attempt, except } => {
                collect_includes(attempt, found);
                collect_includes(except, found);
            }
            Node::Choose { whens, otherwise } => {
                for w in whens {
                    collect_includes(&w.body, found);
                }
                if let Some(o) = otherwise {
                    collect_includes(o, found);
                }
            }
            Node::Inline { body, .. } => collect_includes(body, found),
            Node::Foreach(f) => collect_includes(&f.body, found),
            Node::Text(_)
            | Node::Vars(_)
            | Node::Assign(_)
            | Node::Break
            | Node::Function(_)
            | Node::Return(_) => {}
        }
    }
}

/// Picks the branch of a `choose` that applies to `req`: the first true `when`, else `otherwise`.
pub fn choose_branch<'a>(
    whens: &'a [When],
    otherwise: Option<&'a Vec<Node>>,
    req: &Request,
    policy: &VarPolicy,
) -> Option<&'a [Node]> {
    whens
        .iter()
        .find(|w| w.test.as_ref().is_some_and(|t| t.eval(req, policy)))
        .map(|w| w.body.as_slice())
        .or(otherwise.map(Vec::as_slice))
}

/// The reference evaluation: `esi:eval` documents nest at most this deep (the proxy's own
/// bound is `esi.max_depth`).
const MAX_EVAL_DEPTH: usize = 8;

/// What every evaluation of a reference render reads.
struct Env<'e> {
    req: &'e Request,
    policy: &'e VarPolicy,
    budget: &'e Budget,
}

/// A reference render in progress: the document's scope, the fragment source, and how deep
/// `esi:eval` documents are nested.
struct Run<'r, 'e> {
    env: &'r Env<'e>,
    scope: &'r mut Scope,
    fetch: &'r mut dyn FnMut(&str) -> Option<Bytes>,
    evals: usize,
}

impl<'e> Run<'_, 'e> {
    /// Runs `f` in a context over the document's scope (a context lives for one step, as in
    /// the composer).
    fn with_cx<'n, R>(&mut self, match_name: &'n str, f: impl FnOnce(&mut Context<'n>) -> R) -> R
    where
        'e: 'n,
    {
        let env = self.env;
        let mut cx = Context::new(env.req, env.policy, env.budget);
        cx.match_name = match_name;
        cx.scope = std::mem::take(self.scope);
        let result = f(&mut cx);
        *self.scope = std::mem::take(&mut cx.scope);
        result
    }

    fn nodes(&mut self, nodes: &[Node], out: &mut Vec<u8>) -> Result<Flow, RenderError> {
        for node in nodes {
            if self.node(node, out)? == Flow::Break {
                return Ok(Flow::Break);
            }
        }
        Ok(Flow::Continue)
    }

    fn node(&mut self, node: &Node, out: &mut Vec<u8>) -> Result<Flow, RenderError> {
        match node {
            Node::Text(b) => out.extend_from_slice(b),
            Node::Vars(segments) => self.with_cx("MATCHES", |cx| render_html_in(segments, cx, out)),
            Node::Include(inc) => {
                if let Some(body) = self.fetch_include(inc)? {
                    out.extend_from_slice(&body);
                }
            }
            Node::Eval(inc) => {
                if let Some(body) = self.fetch_include(inc)? {
                    if self.evals < MAX_EVAL_DEPTH {
                        // Its `$(name)`s read this document's variables.
                        let opts = ParseOptions {
                            shared_scope: true,
                            ..ParseOptions::default()
                        };
                        let doc = parse(body, &opts).unwrap_or_default();
                        self.evals += 1;
                        let result = self.nodes(&doc.nodes, out);
                        self.evals -= 1;
                        result?;
                    }
                }
            }
            Node::Try { attempt, except } => {
                // The attempt is buffered: its output is used only if it completes; the except
                // branch sees the variables as they were at the try.
                let at_try = self.scope.clone();
                let mut buf = Vec::new();
                match self.nodes(attempt, &mut buf) {
                    Ok(flow) => {
                        out.extend_from_slice(&buf);
                        return Ok(flow);
                    }
                    Err(_) => {
                        *self.scope = at_try;
                        return self.nodes(except, out);
                    }
                }
            }
            Node::Choose { whens, otherwise } => {
                let mut branch = otherwise.as_deref();
                for w in whens {
                    let Some(test) = &w.test else { continue };
                    let name = w.match_name.as_deref().unwrap_or("MATCHES");
                    if self.with_cx(name, |cx| test.test(cx).unwrap_or(false)) {
                        branch = Some(&w.body);
                        break;
                    }
                }
                if let Some(b) = branch {
                    return self.nodes(b, out);
                }
            }
            Node::Inline { body, .. } => return self.nodes(body, out),
            Node::Assign(a) => {
                // A bound hit leaves the variable as it was.
                let _ = self.with_cx("MATCHES", |cx| assign(a, cx));
            }
            Node::Foreach(f) => {
                let (items, _) = self.with_cx("MATCHES", |cx| foreach_items(f, cx));
                for item in items {
                    set_item(self.scope, &f.item, item);
                    if self.nodes(&f.body, out)? == Flow::Break {
                        break;
                    }
                }
            }
            Node::Break => return Ok(Flow::Break),
            Node::Function(func) => {
                self.scope.functions.insert(
                    func.name.to_string(),
                    UserFunction {
                        body: Arc::clone(&func.body),
                        trusted: true,
                    },
                );
            }
            // Only meaningful in a function body, which `flow` runs.
            Node::Return(_) => {}
        }
        Ok(Flow::Continue)
    }

    /// The body of an include (or eval) with its fallbacks; `None` when `onerror="continue"`
    /// left it out.
    fn fetch_include(&mut self, inc: &Include) -> Result<Option<Bytes>, RenderError> {
        let mut last_url = String::new();
        for url in std::iter::once(&inc.src).chain(inc.alt.as_ref()) {
            match self.with_cx("MATCHES", |cx| render_url_in(url, cx)) {
                Ok(u) => {
                    if let Some(body) = (self.fetch)(&u) {
                        return Ok(Some(body));
                    }
                    last_url = u;
                }
                Err(e) => last_url = e.to_string(),
            }
        }
        match inc.onerror {
            OnError::Continue => Ok(None),
            OnError::Fail => Err(RenderError::IncludeFailed { url: last_url }),
        }
    }
}
