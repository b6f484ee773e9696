//! The `esi:when test="..."` expression language (ESI 1.0 §3.3): an operator-precedence parser
//! from text to [`Expr`] (explicit stacks, no recursion), and its evaluation against a [`Request`].
//! Pure: no I/O. Variable values come from [`Request::value`]; nothing here escapes or renders.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::fmt;

use super::vars::{parse_var_ref, Request, VarPolicy, VarRef};

/// The deepest nesting of `(` and `!` ever accepted, whatever `max_depth` asks for. The parser
/// itself uses heap stacks, but evaluating and dropping the tree recurse on its depth; with
/// [`MAX_OPERATORS`] this keeps the worst tree under ~512 KiB of stack in a debug build.
const HARD_MAX_DEPTH: usize = 256;

/// The most binary operators (`& | == != < <= > >=`) in one expression. A left-associative chain
/// makes the tree as deep as it is long, and evaluating or dropping the tree recurses on that
/// depth, so long chains are refused rather than risk the stack.
const MAX_OPERATORS: usize = 1024;

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

/// A parsed test expression.
///
/// Precedence, highest first: `!` (prefix), comparisons (non-associative), `&`, `|` (both
/// left-associative). So `!1==2` is `(!1)==2` and `a | b & c` is `a | (b & c)`.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// A quoted string, unescaped.
    Str(Box<str>),
    /// A number literal.
    Num(f64),
    /// A variable reference.
    Var(VarRef),
    /// `!e`
    Not(Box<Expr>),
    /// `a & b`
    And(Box<Expr>, Box<Expr>),
    /// `a | b`
    Or(Box<Expr>, Box<Expr>),
    /// `a <op> b`
    Cmp(CmpOp, Box<Expr>, Box<Expr>),
}

/// Why a test expression does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} at offset {offset}")]
pub struct ExprError {
    /// Byte offset in the expression string where the problem was found.
    pub offset: usize,
    /// What is wrong, for a template author.
    pub message: String,
}

/// One lexical token.
#[derive(Debug, Clone, PartialEq)]
enum Tok {
    LParen,
    RParen,
    Not,
    And,
    Or,
    Cmp(CmpOp),
    Str(Box<str>),
    Num(f64),
    Var(VarRef),
    End,
}

/// A token and the byte offset where it starts.
#[derive(Debug, Clone, PartialEq)]
struct Token {
    tok: Tok,
    start: usize,
}

/// An operator on the parser's stack, waiting for its right operand (or its `)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    Not,
    Cmp(CmpOp),
    And,
    Or,
    /// An open `(` at this byte offset.
    Paren(usize),
}

/// Parser state: a lexer, the operator and operand stacks, and the nesting and size budgets.
///
/// Operator precedence parsing with explicit stacks, so nesting costs heap, not call stack.
struct Parser<'a> {
    src: &'a str,
    pos: usize,
    ops: Vec<Pending>,
    operands: Vec<Expr>,
    depth: usize,
    max_depth: usize,
    operators: usize,
}

/// An operand's value during a comparison.
enum Value<'a> {
    Text(Cow<'a, str>),
    Num(f64),
}

// === impl CmpOp ===

impl CmpOp {
    /// The operator as written.
    pub fn as_str(self) -> &'static str {
        match self {
            CmpOp::Eq => "==",
            CmpOp::Ne => "!=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
        }
    }

    /// Whether `ord` (None for unordered numbers) satisfies the operator.
    fn holds(self, ord: Option<Ordering>) -> bool {
        let Some(ord) = ord else { return false };
        match self {
            CmpOp::Eq => ord.is_eq(),
            CmpOp::Ne => ord.is_ne(),
            CmpOp::Lt => ord.is_lt(),
            CmpOp::Le => ord.is_le(),
            CmpOp::Gt => ord.is_gt(),
            CmpOp::Ge => ord.is_ge(),
        }
    }
}

impl fmt::Display for CmpOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl Tok ===

impl fmt::Display for Tok {
    /// Describes the token for an error message.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::LParen => f.write_str("`(`"),
            Tok::RParen => f.write_str("`)`"),
            Tok::Not => f.write_str("`!`"),
            Tok::And => f.write_str("`&`"),
            Tok::Or => f.write_str("`|`"),
            Tok::Cmp(op) => write!(f, "`{op}`"),
            Tok::Str(_) => f.write_str("a string"),
            Tok::Num(_) => f.write_str("a number"),
            Tok::Var(_) => f.write_str("a variable"),
            Tok::End => f.write_str("the end of the expression"),
        }
    }
}

// === parsing ===

/// Parses a test expression; nesting (parentheses and `!`) deeper than `max_depth` is an error.
/// `max_depth` is capped at 256, and an expression may hold at most 1024 binary operators, so
/// that evaluating and dropping the tree stays within a small stack.
///
/// # Errors
///
/// [`ExprError`] with the byte offset of the problem: an empty expression, an unterminated
/// string, an unexpected character or token, a bare word, a malformed `$(...)`, a missing `)`,
/// chained comparisons, input after the expression, or nesting or size over the bounds.
pub fn parse_expr(s: &str, max_depth: usize) -> Result<Expr, ExprError> {
    if s.bytes().all(|b| b.is_ascii_whitespace()) {
        return Err(err(0, "empty expression"));
    }
    Parser {
        src: s,
        pos: 0,
        ops: Vec::new(),
        operands: Vec::new(),
        depth: 0,
        max_depth: max_depth.min(HARD_MAX_DEPTH),
        operators: 0,
    }
    .parse()
}

fn err(offset: usize, message: impl Into<String>) -> ExprError {
    ExprError {
        offset,
        message: message.into(),
    }
}

#[cold]
fn chained(offset: usize, first: CmpOp, second: CmpOp) -> ExprError {
    err(
        offset,
        format!("`{first}` then `{second}`: comparisons do not chain; add parentheses"),
    )
}

#[cold]
fn expected_operand(found: &Token) -> ExprError {
    err(
        found.start,
        format!("expected an operand, found {}", found.tok),
    )
}

impl Pending {
    /// Binding strength: `!` > comparisons > `&` > `|`; an open `(` binds nothing.
    fn precedence(self) -> u8 {
        match self {
            Pending::Not => 4,
            Pending::Cmp(_) => 3,
            Pending::And => 2,
            Pending::Or => 1,
            Pending::Paren(_) => 0,
        }
    }
}

impl Parser<'_> {
    /// Alternates between operand position (prefix `!` and `(`, then one operand) and operator
    /// position (`)`s, then a binary operator or the end), reducing the stacks by precedence.
    fn parse(mut self) -> Result<Expr, ExprError> {
        loop {
            self.operand()?;
            loop {
                let token = self.lex()?;
                match token.tok {
                    Tok::RParen => {
                        self.reduce(1);
                        if !self.close_paren() {
                            return Err(self.after_operand(&token));
                        }
                    }
                    Tok::Cmp(op) => {
                        // `!` binds tighter, so `!a == b` is `(!a) == b`.
                        self.reduce(4);
                        if let Some(&Pending::Cmp(first)) = self.ops.last() {
                            return Err(chained(token.start, first, op));
                        }
                        self.push_binary(Pending::Cmp(op), token.start)?;
                        break;
                    }
                    Tok::And => {
                        self.reduce(2);
                        self.push_binary(Pending::And, token.start)?;
                        break;
                    }
                    Tok::Or => {
                        self.reduce(1);
                        self.push_binary(Pending::Or, token.start)?;
                        break;
                    }
                    Tok::End => {
                        self.reduce(1);
                        if !self.ops.is_empty() {
                            return Err(self.after_operand(&token));
                        }
                        return Ok(self.pop_operand());
                    }
                    _ => return Err(self.after_operand(&token)),
                }
            }
        }
    }

    /// Reads any prefix `!` and `(` and then one operand.
    fn operand(&mut self) -> Result<(), ExprError> {
        loop {
            let token = self.lex()?;
            let leaf = match token.tok {
                Tok::Not => {
                    self.enter(token.start)?;
                    self.ops.push(Pending::Not);
                    continue;
                }
                Tok::LParen => {
                    self.enter(token.start)?;
                    self.ops.push(Pending::Paren(token.start));
                    continue;
                }
                Tok::Str(s) => Expr::Str(s),
                Tok::Num(n) => Expr::Num(n),
                Tok::Var(v) => Expr::Var(v),
                _ => return Err(expected_operand(&token)),
            };
            self.operands.push(leaf);
            return Ok(());
        }
    }

    /// Pops the innermost open `(` after its contents were reduced; false when there is none.
    fn close_paren(&mut self) -> bool {
        match self.ops.last() {
            Some(Pending::Paren(_)) => {
                self.ops.pop();
                self.depth -= 1;
                true
            }
            _ => false,
        }
    }

    /// The error for `found` where a binary operator, `)` or the end was expected.
    #[cold]
    fn after_operand(&self, found: &Token) -> ExprError {
        let open = self.ops.iter().rev().find_map(|op| match op {
            Pending::Paren(at) => Some(*at),
            _ => None,
        });
        let message = match open {
            Some(at) => format!(
                "missing `)` to close the `(` at offset {at}, found {}",
                found.tok
            ),
            None => format!("unexpected {} after the expression", found.tok),
        };
        err(found.start, message)
    }

    /// Applies stacked operators binding at least as tightly as `min` (left associativity).
    fn reduce(&mut self, min: u8) {
        while let Some(&op) = self.ops.last() {
            if op.precedence() < min {
                return;
            }
            let rhs = Box::new(self.pop_operand());
            let node = match op {
                Pending::Not => {
                    self.depth -= 1;
                    Expr::Not(rhs)
                }
                Pending::Cmp(cmp) => Expr::Cmp(cmp, Box::new(self.pop_operand()), rhs),
                Pending::And => Expr::And(Box::new(self.pop_operand()), rhs),
                Pending::Or => Expr::Or(Box::new(self.pop_operand()), rhs),
                // Unreached: every caller passes `min >= 1`, so the loop stops at an open `(`.
                Pending::Paren(_) => {
                    self.operands.push(*rhs);
                    return;
                }
            };
            self.ops.pop();
            self.operands.push(node);
        }
    }

    fn pop_operand(&mut self) -> Expr {
        self.operands
            .pop()
            .expect("operand and operator positions alternate, so each operator has its operands")
    }

    /// Opens one level of nesting (`(` or `!`) at `offset`.
    fn enter(&mut self, offset: usize) -> Result<(), ExprError> {
        if self.depth >= self.max_depth {
            return Err(err(
                offset,
                format!("nesting deeper than {} levels", self.max_depth),
            ));
        }
        self.depth += 1;
        Ok(())
    }

    fn push_binary(&mut self, op: Pending, offset: usize) -> Result<(), ExprError> {
        self.operators += 1;
        if self.operators > MAX_OPERATORS {
            return Err(err(offset, format!("more than {MAX_OPERATORS} operators")));
        }
        self.ops.push(op);
        Ok(())
    }

    /// Reads the token at `self.pos`, skipping whitespace before it.
    fn lex(&mut self) -> Result<Token, ExprError> {
        let b = self.src.as_bytes();
        while b.get(self.pos).is_some_and(u8::is_ascii_whitespace) {
            self.pos += 1;
        }
        let start = self.pos;
        let Some(&c) = b.get(start) else {
            return Ok(Token {
                tok: Tok::End,
                start,
            });
        };
        let next_is_eq = b.get(start + 1) == Some(&b'=');
        let (tok, len) = match c {
            b'(' => (Tok::LParen, 1),
            b')' => (Tok::RParen, 1),
            b'&' => (Tok::And, 1),
            b'|' => (Tok::Or, 1),
            b'=' if next_is_eq => (Tok::Cmp(CmpOp::Eq), 2),
            b'!' if next_is_eq => (Tok::Cmp(CmpOp::Ne), 2),
            b'<' if next_is_eq => (Tok::Cmp(CmpOp::Le), 2),
            b'>' if next_is_eq => (Tok::Cmp(CmpOp::Ge), 2),
            b'!' => (Tok::Not, 1),
            b'<' => (Tok::Cmp(CmpOp::Lt), 1),
            b'>' => (Tok::Cmp(CmpOp::Gt), 1),
            b'=' => return Err(err(start, "unexpected `=` (equality is `==`)")),
            b'\'' => self.string(start)?,
            b'-' | b'0'..=b'9' => self.number(start)?,
            b'$' => match parse_var_ref(&b[start..]) {
                Some((var, len)) => (Tok::Var(var), len),
                None => return Err(err(start, "malformed variable reference")),
            },
            b'A'..=b'Z' | b'a'..=b'z' | b'_' => {
                let len = b[start..]
                    .iter()
                    .take_while(|c| c.is_ascii_alphanumeric() || **c == b'_')
                    .count();
                let word = &self.src[start..start + len.min(40)];
                return Err(err(
                    start,
                    format!("bare word `{word}`: quote strings, as in '{word}'"),
                ));
            }
            _ => {
                let ch = self.src[start..].chars().next().unwrap_or('\u{fffd}');
                return Err(err(start, format!("unexpected character {ch:?}")));
            }
        };
        self.pos = start + len;
        Ok(Token { tok, start })
    }

    /// Lexes `'...'` at `start`, where `\'` and `\\` are escapes and any other `\` is literal.
    fn string(&self, start: usize) -> Result<(Tok, usize), ExprError> {
        let b = self.src.as_bytes();
        let mut out = String::new();
        let mut run = start + 1;
        let mut i = start + 1;
        loop {
            match b.get(i) {
                None => return Err(err(start, "unterminated string")),
                Some(b'\'') => {
                    out.push_str(&self.src[run..i]);
                    return Ok((Tok::Str(out.into()), i + 1 - start));
                }
                Some(b'\\') if matches!(b.get(i + 1), Some(b'\'' | b'\\')) => {
                    out.push_str(&self.src[run..i]);
                    run = i + 1;
                    i += 2;
                }
                Some(_) => i += 1,
            }
        }
    }

    /// Lexes `-?[0-9]+(\.[0-9]+)?` at `start`.
    fn number(&self, start: usize) -> Result<(Tok, usize), ExprError> {
        let b = self.src.as_bytes();
        let digits = |from: usize| b[from..].iter().take_while(|c| c.is_ascii_digit()).count();
        let mut i = start + usize::from(b[start] == b'-');
        let int = digits(i);
        if int == 0 {
            return Err(err(
                start,
                "unexpected `-` (a number needs digits after it)",
            ));
        }
        i += int;
        if b.get(i) == Some(&b'.') {
            let frac = digits(i + 1);
            if frac > 0 {
                i += 1 + frac;
            }
        }
        let text = &self.src[start..i];
        let n = text
            .parse::<f64>()
            .map_err(|e| err(start, format!("bad number `{text}`: {e}")))?;
        Ok((Tok::Num(n), i - start))
    }
}

// === impl Expr ===

impl Expr {
    /// Evaluates the test against a request.
    ///
    /// A comparison whose operands both read as finite numbers compares numerically, else
    /// byte-wise as strings. An empty or undefined operand is `''`: it equals `''` and nothing
    /// else (`$(QUERY_STRING{missing}) == ''` is true, as in ESI 1.0 and other processors), and
    /// an ordering (`< <= > >=`) with it is false. An operand alone is true when non-empty and not `"false"` (a number: non-zero).
    /// A boolean sub-expression used as an operand reads as `"true"` or `"false"`.
    pub fn eval(&self, req: &Request, policy: &VarPolicy) -> bool {
        match self {
            Expr::Str(s) => truthy(s),
            Expr::Num(n) => *n != 0.0,
            Expr::Var(var) => truthy(&req.value(var, policy)),
            Expr::Not(e) => !e.eval(req, policy),
            Expr::And(a, b) => a.eval(req, policy) && b.eval(req, policy),
            Expr::Or(a, b) => a.eval(req, policy) || b.eval(req, policy),
            Expr::Cmp(op, a, b) => compare(*op, &a.value(req, policy), &b.value(req, policy)),
        }
    }

    /// The operand value of this expression in a comparison.
    fn value<'a>(&'a self, req: &'a Request, policy: &VarPolicy) -> Value<'a> {
        match self {
            Expr::Str(s) => Value::Text(Cow::Borrowed(s)),
            Expr::Num(n) => Value::Num(*n),
            Expr::Var(var) => Value::Text(req.value(var, policy)),
            Expr::Not(_) | Expr::And(..) | Expr::Or(..) | Expr::Cmp(..) => {
                let b = self.eval(req, policy);
                Value::Text(Cow::Borrowed(if b { "true" } else { "false" }))
            }
        }
    }
}

fn truthy(s: &str) -> bool {
    if s.is_empty() || s == "false" {
        return false;
    }
    match s.parse::<f64>() {
        Ok(n) if n.is_finite() => n != 0.0,
        _ => true,
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

// === impl Value ===

impl Value<'_> {
    fn is_empty(&self) -> bool {
        matches!(self, Value::Text(t) if t.is_empty())
    }

    fn as_num(&self) -> Option<f64> {
        let n = match self {
            Value::Num(n) => *n,
            Value::Text(t) => t.parse::<f64>().ok()?,
        };
        n.is_finite().then_some(n)
    }

    fn text(&self) -> Cow<'_, str> {
        match self {
            Value::Text(t) => Cow::Borrowed(t),
            Value::Num(n) => Cow::Owned(n.to_string()),
        }
    }
}

#[cfg(test)]
#[path = "expr_tests.rs"]
mod tests;
