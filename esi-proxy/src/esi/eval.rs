//! Evaluation of an [`Expr`] against a request: the values expressions compute, the page's
//! evaluation budget and what hitting one of its bounds means, and the effects on the response
//! that functions ask for. Pure: no I/O, no clock (the caller passes the time).
//!
//! A bound hit stops the expression where it is: the evaluation is an `Err(Bound)`, which a
//! test reads as false and an output as empty; the budget counts the hit so the caller can log
//! and count it, and the rest of the page is untouched.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};

use std::sync::Arc;

use super::ast::{Assign, Node};
use super::expr::{CmpOp, Expr, Pattern, TestOp};
use super::{flow, func};
use bytes::Bytes;

use super::vars::{
    escape_html, render_url_with, Request, Segment, VarError, VarName, VarPolicy, VarRef, VarString,
};

/// The bounds on what expressions may compute for one page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Expression nodes evaluated per page, all tests and calls together (a regular-expression
    /// match also costs one per 256 bytes of its subject). Default: 100000.
    pub max_evaluations: u64,
    /// Longest string an expression may build, in bytes. Default: 65536.
    pub max_value_bytes: usize,
    /// Most items in a list or dictionary an expression may build. Default: 1000.
    pub max_list_items: usize,
    /// Largest compiled form of a regular expression built at run time (literal patterns are
    /// checked when parsed), in bytes. Default: 65536.
    pub max_pattern_bytes: usize,
    /// Most iterations of one `esi:foreach` (each also costs one evaluation). Default: 1000.
    pub max_foreach_iterations: usize,
    /// Deepest nesting of calls of document-defined functions (recursion included). Default: 10.
    pub max_function_depth: usize,
}

/// Which bound an evaluation hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// [`Limits::max_evaluations`].
    Evaluations,
    /// [`Limits::max_value_bytes`].
    ValueBytes,
    /// [`Limits::max_list_items`].
    ListItems,
    /// [`Limits::max_pattern_bytes`].
    PatternBytes,
    /// [`Limits::max_foreach_iterations`]: the loop stops there, what it wrote stays.
    ForeachIterations,
    /// [`Limits::max_function_depth`].
    FunctionDepth,
    /// Not a size bound: a call of a function the document has not defined (yet), which
    /// stops its expression the same way.
    UndefinedFunction,
}

/// A page's evaluation budget: shared by every expression of the page (it is `Sync`), it counts
/// evaluations against [`Limits`] and the bounds hit.
#[derive(Debug, Default)]
pub struct Budget {
    limits: Limits,
    evaluations: AtomicU64,
    hits: [AtomicU64; Bound::ALL.len()],
}

/// A value an expression computes.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    /// A missing variable, or what a function gives for nothing.
    Null,
    /// The result of a test.
    Bool(bool),
    /// A number (integers are exact up to 2^53).
    Num(f64),
    /// Text; literals and variable values are borrowed.
    Str(Cow<'a, str>),
    /// `[a, b]`
    List(Vec<Value<'a>>),
    /// `{'k': v}`: pairs in the order written; a later key does not replace an earlier one.
    Dict(Vec<(String, Value<'a>)>),
}

/// What a response function asked of the page's response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// `$add_header(name, value)`.
    AddHeader(String, String),
    /// `$set_response_code(code[, body])`.
    SetStatus(u16, Option<String>),
    /// `$set_redirect(url[, code])`: `code` is 301, 302 (the default), 303, 307 or 308.
    Redirect(String, u16),
}

/// The groups of a `matches`' match, by number: each group's name (if named) and text (if it
/// took part in the match).
pub type Captures = Vec<(Option<String>, Option<String>)>;

/// Variables set by `esi:assign`, by name.
pub type Assigned = std::collections::BTreeMap<String, Value<'static>>;

/// What a document's evaluations leave for its later ones: the captures of its last successful
/// `matches` and the variables it assigned.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// The captures of the last successful `matches`: group number, name and text.
    pub matches: Captures,
    /// The variable the captures are read through (empty: `MATCHES`).
    pub matches_name: String,
    /// Variables set by `esi:assign` (and `esi:foreach` items).
    pub assigned: Assigned,
    /// Functions defined by `esi:function`, by name.
    pub functions: std::collections::BTreeMap<String, UserFunction>,
}

/// A function a document defined.
#[derive(Debug, Clone)]
pub struct UserFunction {
    /// Its body.
    pub body: Arc<[Node]>,
    /// Whether the defining document was trusted: a call of an untrusted document's function
    /// reads no credentials, whoever calls it.
    pub trusted: bool,
}

/// Everything one evaluation reads and writes.
#[derive(Debug)]
pub struct Context<'a> {
    /// What the client sent.
    pub req: &'a Request,
    /// What variables may read.
    pub policy: &'a VarPolicy,
    /// The page's budget.
    pub budget: &'a Budget,
    /// Seconds since the Unix epoch, for `$time()`.
    pub now: i64,
    /// State of `$rand()`'s generator (any seed; 0 is replaced).
    pub seed: u64,
    /// The variable name a `matches` stores its captures under (the test's `matchname`).
    /// Default: `MATCHES`.
    pub match_name: &'a str,
    /// The document's captures and assigned variables.
    pub scope: Scope,
    /// Response effects asked for, in order.
    pub effects: Vec<Effect>,
    /// How many calls of document-defined functions this context is nested in.
    pub depth: usize,
    /// Evaluations spent by this context, added to the budget when it is dropped: one atomic
    /// update per evaluation rather than per node.
    spent: u64,
    /// What the budget allowed when this context began.
    allowance: u64,
}

// === impl Limits ===

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_evaluations: 100_000,
            max_value_bytes: 64 * 1024,
            max_list_items: 1000,
            max_pattern_bytes: 64 * 1024,
            max_foreach_iterations: 1000,
            max_function_depth: 10,
        }
    }
}

// === impl Bound ===

impl Bound {
    /// Every bound, in the order of [`Budget::hits`].
    pub const ALL: [Bound; 7] = [
        Bound::Evaluations,
        Bound::ValueBytes,
        Bound::ListItems,
        Bound::PatternBytes,
        Bound::ForeachIterations,
        Bound::FunctionDepth,
        Bound::UndefinedFunction,
    ];

    /// The label logs and metrics use.
    pub fn as_str(self) -> &'static str {
        match self {
            Bound::Evaluations => "evaluations",
            Bound::ValueBytes => "value_bytes",
            Bound::ListItems => "list_items",
            Bound::PatternBytes => "pattern_bytes",
            Bound::ForeachIterations => "foreach_iterations",
            Bound::FunctionDepth => "function_depth",
            Bound::UndefinedFunction => "undefined_function",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

// === impl Budget ===

impl Budget {
    /// A fresh budget under `limits`.
    pub fn new(limits: Limits) -> Self {
        Budget {
            limits,
            ..Budget::default()
        }
    }

    /// The limits this budget enforces.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Evaluations spent so far.
    pub fn evaluations(&self) -> u64 {
        self.evaluations.load(Ordering::Relaxed)
    }

    /// How often each bound was hit, in the order of [`Bound::ALL`].
    pub fn hits(&self) -> [(Bound, u64); Bound::ALL.len()] {
        Bound::ALL.map(|b| (b, self.hits[b.index()].load(Ordering::Relaxed)))
    }

    /// Spends `n` evaluations.
    ///
    /// # Errors
    /// [`Bound::Evaluations`] once the page's allowance is spent (counted).
    pub fn charge(&self, n: u64) -> Result<(), Bound> {
        let before = self.evaluations.fetch_add(n, Ordering::Relaxed);
        if before.saturating_add(n) > self.limits.max_evaluations {
            return Err(self.hit(Bound::Evaluations));
        }
        Ok(())
    }

    /// Counts a hit of `bound` and returns it, for `Err(budget.hit(..))`.
    pub fn hit(&self, bound: Bound) -> Bound {
        self.hits[bound.index()].fetch_add(1, Ordering::Relaxed);
        bound
    }

    /// `s` as a value, unless it is longer than the bound.
    ///
    /// # Errors
    /// [`Bound::ValueBytes`] (counted).
    pub fn string<'a>(&self, s: String) -> Result<Value<'a>, Bound> {
        if s.len() > self.limits.max_value_bytes {
            return Err(self.hit(Bound::ValueBytes));
        }
        Ok(Value::Str(Cow::Owned(s)))
    }

    /// Checks a list or dictionary of `len` items against the bound.
    ///
    /// # Errors
    /// [`Bound::ListItems`] (counted).
    pub fn items(&self, len: usize) -> Result<(), Bound> {
        if len > self.limits.max_list_items {
            return Err(self.hit(Bound::ListItems));
        }
        Ok(())
    }
}

// === impl Value ===

impl Value<'_> {
    /// Whether the value counts as true: not null, empty, `"false"` or zero.
    pub fn truthy(&self) -> bool {
        match self {
            Value::Null => false,
            Value::Bool(b) => *b,
            Value::Num(n) => *n != 0.0,
            Value::Str(s) => truthy_text(s),
            Value::List(items) => !items.is_empty(),
            Value::Dict(pairs) => !pairs.is_empty(),
        }
    }

    /// Whether the value is null or the empty string.
    pub fn is_empty(&self) -> bool {
        match self {
            Value::Null => true,
            Value::Str(s) => s.is_empty(),
            _ => false,
        }
    }

    /// The value as a number, if it reads as a finite one.
    pub fn as_num(&self) -> Option<f64> {
        let n = match self {
            Value::Num(n) => *n,
            Value::Str(t) => t.trim().parse::<f64>().ok()?,
            Value::Bool(b) => f64::from(u8::from(*b)),
            _ => return None,
        };
        n.is_finite().then_some(n)
    }

    /// The value as text: numbers without a fraction print as integers, lists as their items
    /// joined with `,`, dictionaries as `k=v` joined with `&`.
    pub fn text(&self) -> Cow<'_, str> {
        match self {
            Value::Null => Cow::Borrowed(""),
            Value::Bool(b) => Cow::Borrowed(if *b { "true" } else { "false" }),
            Value::Num(n) => Cow::Owned(num_text(*n)),
            Value::Str(s) => Cow::Borrowed(s),
            Value::List(items) => Cow::Owned(
                items
                    .iter()
                    .map(|v| v.text().into_owned())
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            Value::Dict(pairs) => Cow::Owned(
                pairs
                    .iter()
                    .map(|(k, v)| format!("{k}={}", v.text()))
                    .collect::<Vec<_>>()
                    .join("&"),
            ),
        }
    }

    /// The value with no borrow left.
    pub fn into_owned(self) -> Value<'static> {
        match self {
            Value::Null => Value::Null,
            Value::Bool(b) => Value::Bool(b),
            Value::Num(n) => Value::Num(n),
            Value::Str(s) => Value::Str(Cow::Owned(s.into_owned())),
            Value::List(items) => Value::List(items.into_iter().map(Value::into_owned).collect()),
            Value::Dict(pairs) => Value::Dict(
                pairs
                    .into_iter()
                    .map(|(k, v)| (k, v.into_owned()))
                    .collect(),
            ),
        }
    }
}

/// Formats a number: integral values without a fraction.
pub(super) fn num_text(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 9.0e15 {
        format!("{}", n as i64)
    } else {
        n.to_string()
    }
}

fn truthy_text(s: &str) -> bool {
    if s.is_empty() || s == "false" {
        return false;
    }
    match s.parse::<f64>() {
        Ok(n) if n.is_finite() => n != 0.0,
        _ => true,
    }
}

// === impl Context ===

impl<'a> Context<'a> {
    /// A context with no clock (`$time()` is 0), a fixed seed and no captures.
    pub fn new(req: &'a Request, policy: &'a VarPolicy, budget: &'a Budget) -> Self {
        Context {
            req,
            policy,
            budget,
            now: 0,
            seed: 0x9e37_79b9_7f4a_7c15,
            match_name: "MATCHES",
            scope: Scope::default(),
            effects: Vec::new(),
            depth: 0,
            spent: 0,
            allowance: budget
                .limits
                .max_evaluations
                .saturating_sub(budget.evaluations()),
        }
    }

    /// Spends `n` evaluations of the page's budget. Contexts of one page that run at once each
    /// check against what was left when they began, so together they may pass the limit by at
    /// most what they spend at once; each one alone never does.
    ///
    /// # Errors
    /// [`Bound::Evaluations`] once the allowance is spent (counted).
    pub fn charge(&mut self, n: u64) -> Result<(), Bound> {
        self.spent = self.spent.saturating_add(n);
        if self.spent > self.allowance {
            return Err(self.budget.hit(Bound::Evaluations));
        }
        Ok(())
    }

    /// A context for a call one level deeper: this context's request, budget, clock and
    /// seed, `policy` and `scope`; what it spends counts against what this one has left (see
    /// [`Context::absorb`]).
    pub(super) fn nested<'c>(&self, policy: &'c VarPolicy, scope: Scope) -> Context<'c>
    where
        'a: 'c,
    {
        Context {
            req: self.req,
            policy,
            budget: self.budget,
            now: self.now,
            seed: self.seed,
            match_name: "MATCHES",
            scope,
            effects: Vec::new(),
            depth: self.depth + 1,
            spent: 0,
            allowance: self.allowance.saturating_sub(self.spent),
        }
    }

    /// Takes back a [`Context::nested`] context: its spending, effects and random state.
    pub(super) fn absorb(&mut self, mut child: Context<'_>) {
        self.spent = self.spent.saturating_add(child.spent);
        child.spent = 0;
        self.seed = child.seed;
        self.effects.append(&mut child.effects);
    }

    /// The next pseudo-random number (xorshift64*: for `$rand`, not for secrets).
    pub fn next_random(&mut self) -> u64 {
        let mut x = if self.seed == 0 {
            0x9e37_79b9_7f4a_7c15
        } else {
            self.seed
        };
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.seed = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A variable's value: a capture of the last `matches` under `match_name`, an assigned
    /// variable (an item of it with a key), else the request's; its default when missing or
    /// empty; `Null` when missing with no default.
    pub fn var<'v>(&self, var: &'v VarRef) -> Value<'v>
    where
        'a: 'v,
    {
        let VarName::Unknown(name) = &var.name else {
            return match self.req.get(var, self.policy) {
                Some(v) => Value::Str(v),
                None => Value::Null,
            };
        };
        let key = var.key.as_deref();
        let captures_name = match self.scope.matches_name.as_str() {
            "" => "MATCHES",
            other => other,
        };
        let found = if **name == *captures_name {
            key.and_then(|key| {
                let text = match key.parse::<usize>() {
                    Ok(i) => self.scope.matches.get(i)?.1.clone(),
                    Err(_) => self
                        .scope
                        .matches
                        .iter()
                        .find(|(n, _)| n.as_deref() == Some(key))?
                        .1
                        .clone(),
                };
                text.map(|t| Value::Str(Cow::Owned(t)))
            })
        } else {
            self.scope
                .assigned
                .get(&**name)
                .and_then(|v| match key {
                    None => Some(v),
                    Some(k) => item(v, k),
                })
                .cloned()
        };
        match (found, &var.default) {
            (Some(v), _) if !v.is_empty() => v,
            (_, Some(d)) => Value::Str(Cow::Borrowed(d)),
            (found, None) => found.unwrap_or(Value::Null),
        }
    }
}

/// Runs an `esi:assign` in `cx`: evaluates its value and stores it in `cx.scope.assigned`, as
/// the whole variable, or with a key as an item (a list index, replaced or appended at the end;
/// a dictionary key, replaced or added; anything else becomes a dictionary).
///
/// # Errors
/// The bound hit (the variable is then left as it was): the value's, or more variables or items
/// than [`Limits::max_list_items`].
pub fn assign<'a>(a: &'a Assign, cx: &mut Context<'a>) -> Result<(), Bound> {
    let value = a.value.value(cx)?.into_owned();
    let assigned = &mut cx.scope.assigned;
    if !assigned.contains_key(&*a.name) {
        cx.budget.items(assigned.len() + 1)?;
    }
    let Some(key) = &a.key else {
        assigned.insert(a.name.to_string(), value);
        return Ok(());
    };
    let slot = assigned
        .entry(a.name.to_string())
        .or_insert_with(|| Value::Dict(Vec::new()));
    match slot {
        Value::List(items) => {
            let len = items.len() as i64;
            match key.trim().parse::<i64>() {
                Ok(i) if (-len..len).contains(&i) => {
                    let i = if i < 0 { len + i } else { i };
                    items[i as usize] = value;
                }
                Ok(i) if i == len => {
                    cx.budget.items(items.len() + 1)?;
                    items.push(value);
                }
                // Out of range: nothing to set.
                _ => {}
            }
        }
        Value::Dict(pairs) => match pairs.iter_mut().find(|(k, _)| **k == **key) {
            Some((_, v)) => *v = value,
            None => {
                cx.budget.items(pairs.len() + 1)?;
                pairs.push((key.to_string(), value));
            }
        },
        other => *other = Value::Dict(vec![(key.to_string(), value)]),
    }
    Ok(())
}

/// Item `key` of a list (an index; negative counts from the end) or a dictionary.
fn item<'v>(value: &'v Value<'static>, key: &str) -> Option<&'v Value<'static>> {
    match value {
        Value::List(items) => {
            let i = key.trim().parse::<i64>().ok()?;
            let i = if i < 0 { items.len() as i64 + i } else { i };
            items.get(usize::try_from(i).ok()?)
        }
        Value::Dict(pairs) => pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v),
        _ => None,
    }
}

impl Drop for Context<'_> {
    fn drop(&mut self) {
        self.budget.evaluations.fetch_add(
            self.spent.min(self.allowance.saturating_add(1)),
            Ordering::Relaxed,
        );
    }
}

/// Appends `esi:vars` text: literal segments as they are, each variable's value as `cx` reads
/// it (captures of the last `matches` included), HTML-escaped unless `policy.raw_output`.
pub fn render_html_in(segments: &[Segment<Bytes>], cx: &Context<'_>, out: &mut Vec<u8>) {
    for seg in segments {
        match seg {
            Segment::Literal(text) => out.extend_from_slice(text),
            Segment::Var(var) => {
                let value = cx.var(var);
                let text = value.text();
                if cx.policy.raw_output {
                    out.extend_from_slice(text.as_bytes());
                } else {
                    escape_html(&text, out);
                }
            }
        }
    }
}

/// Renders a `src`/`alt` as [`super::vars::render_url`] does, reading variables as `cx`
/// does (assigned ones and `esi:foreach` items included).
///
/// # Errors
/// As [`super::vars::render_url`].
pub fn render_url_in(s: &VarString, cx: &Context<'_>) -> Result<String, VarError> {
    render_url_with(s, cx.policy.raw_output, &|var| {
        cx.var(var).text().into_owned()
    })
}

// === impl Expr ===

impl Expr {
    /// Evaluates the expression as a test against a request, with a budget of its own and no
    /// clock: the ESI 1.0 reading, for callers with no page context.
    ///
    /// A comparison whose operands both read as finite numbers compares numerically, else
    /// byte-wise as strings. An empty or undefined operand is `''`: it equals `''` and nothing
    /// else (`$(QUERY_STRING{missing}) == ''` is true, as in ESI 1.0 and other processors), and
    /// an ordering (`< <= > >=`) with it is false. An operand alone is true when non-empty and
    /// not `"false"` (a number: non-zero). A test used as an operand reads as `"true"` or
    /// `"false"`.
    pub fn eval(&self, req: &Request, policy: &VarPolicy) -> bool {
        let budget = Budget::default();
        let mut cx = Context::new(req, policy, &budget);
        self.test(&mut cx).unwrap_or(false)
    }

    /// Evaluates the expression as a test in `cx`.
    ///
    /// # Errors
    /// The bound hit, if any (the test is then to be read as false).
    pub fn test<'a>(&'a self, cx: &mut Context<'a>) -> Result<bool, Bound> {
        // `!`, `&` and `|` recurse here, with small frames: the deepest trees the parser
        // accepts are chains of these, and they must fit a worker thread's stack.
        match self {
            Expr::Not(e) => {
                cx.charge(1)?;
                Ok(!e.test(cx)?)
            }
            Expr::And(a, b) => {
                cx.charge(1)?;
                Ok(a.test(cx)? && b.test(cx)?)
            }
            Expr::Or(a, b) => {
                cx.charge(1)?;
                Ok(a.test(cx)? || b.test(cx)?)
            }
            _ => Ok(self.value(cx)?.truthy()),
        }
    }

    /// Evaluates the expression to a value in `cx`.
    ///
    /// # Errors
    /// The bound hit, if any.
    pub fn value<'a>(&'a self, cx: &mut Context<'a>) -> Result<Value<'a>, Bound> {
        match self {
            Expr::Not(_) | Expr::And(..) | Expr::Or(..) => Ok(Value::Bool(self.test(cx)?)),
            Expr::Str(s) => {
                cx.charge(1)?;
                Ok(Value::Str(Cow::Borrowed(s)))
            }
            Expr::Num(n) => {
                cx.charge(1)?;
                Ok(Value::Num(*n))
            }
            Expr::Var(var) => {
                cx.charge(1)?;
                Ok(cx.var(var))
            }
            _ => self.compound(cx),
        }
    }

    /// The value of a comparison, test, literal list or dictionary, or call. Kept out of
    /// [`Expr::value`] so that its locals do not weigh on every level of a deep tree.
    #[inline(never)]
    fn compound<'a>(&'a self, cx: &mut Context<'a>) -> Result<Value<'a>, Bound> {
        cx.charge(1)?;
        Ok(match self {
            Expr::Cmp(op, a, b) => {
                let a = a.value(cx)?;
                let b = b.value(cx)?;
                Value::Bool(compare(*op, &a, &b))
            }
            Expr::Test(op, a, b, pattern) => {
                let a = a.value(cx)?;
                let b = b.value(cx)?;
                Value::Bool(match op {
                    TestOp::Has | TestOp::HasI => has(&a, &b, op.ignores_case()),
                    TestOp::Matches | TestOp::MatchesI => {
                        matches(&a, &b, pattern.as_ref(), op.ignores_case(), cx)?
                    }
                })
            }
            Expr::List(items) => {
                cx.budget.items(items.len())?;
                let mut out = Vec::with_capacity(items.len());
                for item in items {
                    out.push(item.value(cx)?);
                }
                Value::List(out)
            }
            Expr::Dict(pairs) => {
                cx.budget.items(pairs.len())?;
                let mut out = Vec::with_capacity(pairs.len());
                for (k, v) in pairs {
                    let key = k.value(cx)?.text().into_owned();
                    out.push((key, v.value(cx)?));
                }
                Value::Dict(out)
            }
            Expr::Call(f, args) => {
                let mut values = Vec::with_capacity(args.len());
                for arg in args {
                    values.push(arg.value(cx)?);
                }
                func::call(*f, values, cx)?
            }
            Expr::User(name, args) => {
                let mut values = Vec::with_capacity(args.len());
                for arg in args {
                    values.push(arg.value(cx)?.into_owned());
                }
                flow::call(name, values, cx)?
            }
            Expr::Str(_)
            | Expr::Num(_)
            | Expr::Var(_)
            | Expr::Not(_)
            | Expr::And(..)
            | Expr::Or(..) => {
                unreachable!("handled by `value`")
            }
        })
    }
}

fn compare(op: CmpOp, a: &Value<'_>, b: &Value<'_>) -> bool {
    if a.is_empty() || b.is_empty() {
        return match op {
            CmpOp::Eq => a.is_empty() && b.is_empty(),
            CmpOp::Ne => a.is_empty() != b.is_empty(),
            CmpOp::Lt | CmpOp::Le | CmpOp::Gt | CmpOp::Ge => false,
        };
    }
    match (a.as_num(), b.as_num()) {
        (Some(x), Some(y)) => op.holds(x.partial_cmp(&y)),
        _ => op.holds(Some(a.text().as_bytes().cmp(b.text().as_bytes()))),
    }
}

/// `a has b`: a list item equal to b, a dictionary key equal to b, or text containing b.
fn has(a: &Value<'_>, b: &Value<'_>, ignore_case: bool) -> bool {
    let needle = b.text();
    let same = |s: &str| {
        if ignore_case {
            s.to_lowercase() == needle.to_lowercase()
        } else {
            s == needle
        }
    };
    match a {
        Value::List(items) => items.iter().any(|v| same(&v.text())),
        Value::Dict(pairs) => pairs.iter().any(|(k, _)| same(k)),
        Value::Null => false,
        other if ignore_case => other.text().to_lowercase().contains(&needle.to_lowercase()),
        other => other.text().contains(&*needle),
    }
}

/// `a matches b`: runs the pattern (compiled when parsed, or now under the size bound) over a's
/// text; on a match the captures replace `cx.scope.matches`. A pattern that does not compile matches
/// nothing.
fn matches<'a>(
    subject: &Value<'_>,
    pattern: &Value<'_>,
    compiled: Option<&Pattern>,
    ignore_case: bool,
    cx: &mut Context<'a>,
) -> Result<bool, Bound> {
    let built;
    let re = match compiled {
        Some(p) => &p.0,
        None => {
            cx.charge(16)?;
            let limit = cx.budget.limits().max_pattern_bytes;
            match Pattern::compile(&pattern.text(), ignore_case, limit) {
                Ok(p) => {
                    built = p;
                    &built.0
                }
                Err(e) if e.contains("larger than") => {
                    return Err(cx.budget.hit(Bound::PatternBytes))
                }
                Err(_) => return Ok(false),
            }
        }
    };
    let text = subject.text();
    // Matching is linear in the subject; its cost is charged by length.
    cx.charge(1 + text.len() as u64 / 256)?;
    let Some(caps) = re.captures(&text) else {
        return Ok(false);
    };
    cx.scope.matches_name = cx.match_name.to_owned();
    cx.scope.matches = re
        .capture_names()
        .zip(caps.iter())
        .map(|(name, m)| (name.map(str::to_owned), m.map(|m| m.as_str().to_owned())))
        .collect();
    Ok(true)
}

#[cfg(test)]
#[path = "eval_tests.rs"]
mod tests;
