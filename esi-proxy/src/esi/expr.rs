//! The ESI expression language: ESI 1.0 §3.3 `esi:when` tests and the extensions other
//! processors accept (string, list and dictionary literals, `has`/`matches` operators, function
//! calls). An operator-precedence parser from text to [`Expr`] (explicit stacks, no recursion).
//! Pure: no I/O. Evaluation lives in `eval`, functions in `func`.

use std::fmt;
use std::sync::Arc;

use super::func::Func;
use super::vars::{parse_var_ref, VarRef};

/// The deepest nesting of `(`, `!`, calls, lists and dictionaries ever accepted, whatever
/// `max_depth` asks for. The parser itself uses heap stacks, but evaluating and dropping the
/// tree recurse on its depth; with [`MAX_OPERATORS`] this keeps the worst tree under ~512 KiB of
/// stack in a debug build.
const HARD_MAX_DEPTH: usize = 256;

/// The most binary operators (`& | == != < <= > >= has matches ...`), arguments and items in one
/// expression. A left-associative chain makes the tree as deep as it is long, and evaluating or
/// dropping the tree recurses on that depth, so long chains are refused rather than risk the
/// stack; and the count bounds the size of a literal list.
const MAX_OPERATORS: usize = 1024;

/// The largest compiled form of a literal `matches` pattern, in bytes (the `regex` crate's
/// size limit): patterns whose automaton would be larger do not parse.
pub const MAX_PATTERN_BYTES: usize = 256 * 1024;

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

/// A parsed expression.
///
/// Precedence, highest first: `!` (prefix), comparisons and `has`/`matches` (non-associative),
/// `&`, `|` (both left-associative). So `!1==2` is `(!1)==2` and `a | b & c` is `a | (b & c)`.
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
    /// `a has b`, `a matches b` ...; a literal pattern is compiled when parsed.
    Test(TestOp, Box<Expr>, Box<Expr>, Option<Pattern>),
    /// `[a, b, ...]`
    List(Vec<Expr>),
    /// `{k: v, ...}`
    Dict(Vec<(Expr, Expr)>),
    /// `$name(args...)` of a library function.
    Call(Func, Vec<Expr>),
    /// `$name(args...)` of a function the document defines with `esi:function`.
    User(Box<str>, Vec<Expr>),
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

/// A test operator of comparison strength that is not an ordering: a word between operands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestOp {
    /// `a has b`: a list holds b, a dictionary has key b, or a string contains b.
    Has,
    /// `has_i`: `has`, ignoring case.
    HasI,
    /// `a matches 'regex'`: the regular expression finds a match in a (captures in `MATCHES`).
    Matches,
    /// `matches_i`: `matches`, ignoring case.
    MatchesI,
}

/// A compiled regular expression of a `matches` whose pattern is a literal: compiled once, when
/// the test is parsed, under the parse-time size bound. Compares by its source.
#[derive(Debug, Clone)]
pub struct Pattern(pub Arc<regex::Regex>);

/// One lexical token.
#[derive(Debug, Clone, PartialEq)]
enum Tok {
    LParen,
    RParen,
    LBracket,
    RBracket,
    LBrace,
    RBrace,
    Comma,
    Colon,
    Not,
    And,
    Or,
    Cmp(CmpOp),
    Test(TestOp),
    Str(Box<str>),
    Num(f64),
    Var(VarRef),
    /// `$name(`: a function call opened.
    Call(Callee),
    End,
}

/// A token and the byte offset where it starts.
#[derive(Debug, Clone, PartialEq)]
struct Token {
    tok: Tok,
    start: usize,
}

/// An operator on the parser's stack, waiting for its right operand (or its closing bracket).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    Not,
    Cmp(CmpOp),
    Test(TestOp),
    And,
    Or,
    /// An open `(` at this byte offset.
    Paren(usize),
    /// An open call at this byte offset, with the arguments complete so far.
    Call(Callee, usize, usize),
    /// An open `[` at this byte offset, with the items complete so far.
    List(usize, usize),
    /// An open `{` at this byte offset, with the pairs complete so far and whether a `:` was
    /// read for the next one (its value is being read).
    Dict(usize, usize, bool),
}

/// The function a call names: the library's, or a document's (by its index in
/// `Parser::user_names`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Callee {
    Lib(Func),
    User(usize),
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
    /// Names of document-defined functions called, for `Callee::User`.
    user_names: Vec<Box<str>>,
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
    pub(super) fn holds(self, ord: Option<std::cmp::Ordering>) -> bool {
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

// === impl TestOp ===

impl TestOp {
    /// The operator as written.
    pub fn as_str(self) -> &'static str {
        match self {
            TestOp::Has => "has",
            TestOp::HasI => "has_i",
            TestOp::Matches => "matches",
            TestOp::MatchesI => "matches_i",
        }
    }

    fn from_word(word: &str) -> Option<TestOp> {
        Some(match word {
            "has" => TestOp::Has,
            "has_i" => TestOp::HasI,
            "matches" => TestOp::Matches,
            "matches_i" => TestOp::MatchesI,
            _ => return None,
        })
    }

    /// Whether case is ignored.
    pub fn ignores_case(self) -> bool {
        matches!(self, TestOp::HasI | TestOp::MatchesI)
    }
}

impl fmt::Display for TestOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl Pattern ===

impl Pattern {
    /// Compiles `source` with linear-time matching, its automaton under `max_bytes`.
    ///
    /// # Errors
    /// The `regex` crate's message: bad syntax, or a pattern too large for the bound.
    pub fn compile(source: &str, ignore_case: bool, max_bytes: usize) -> Result<Self, String> {
        regex::RegexBuilder::new(source)
            .case_insensitive(ignore_case)
            .size_limit(max_bytes)
            .dfa_size_limit(max_bytes)
            .build()
            .map(|re| Pattern(Arc::new(re)))
            .map_err(|e| match e {
                regex::Error::CompiledTooBig(limit) => {
                    format!("regular expression larger than {limit} bytes compiled")
                }
                other => other
                    .to_string()
                    .lines()
                    .last()
                    .unwrap_or("")
                    .trim()
                    .to_owned(),
            })
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

// === impl Tok ===

impl fmt::Display for Tok {
    /// Describes the token for an error message.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::LParen => f.write_str("`(`"),
            Tok::RParen => f.write_str("`)`"),
            Tok::LBracket => f.write_str("`[`"),
            Tok::RBracket => f.write_str("`]`"),
            Tok::LBrace => f.write_str("`{`"),
            Tok::RBrace => f.write_str("`}`"),
            Tok::Comma => f.write_str("`,`"),
            Tok::Colon => f.write_str("`:`"),
            Tok::Not => f.write_str("`!`"),
            Tok::And => f.write_str("`&`"),
            Tok::Or => f.write_str("`|`"),
            Tok::Cmp(op) => write!(f, "`{op}`"),
            Tok::Test(op) => write!(f, "`{op}`"),
            Tok::Str(_) => f.write_str("a string"),
            Tok::Num(_) => f.write_str("a number"),
            Tok::Var(_) => f.write_str("a variable"),
            Tok::Call(Callee::Lib(func)) => write!(f, "a call of `${}`", func.name()),
            Tok::Call(Callee::User(_)) => f.write_str("a function call"),
            Tok::End => f.write_str("the end of the expression"),
        }
    }
}

// === impl Expr ===

impl Expr {
    /// Calls `f` with the name of every document-defined function the expression calls, in
    /// source order.
    pub fn user_calls(&self, f: &mut dyn FnMut(&str)) {
        match self {
            Expr::User(name, args) => {
                f(name);
                args.iter().for_each(|a| a.user_calls(f));
            }
            Expr::Call(_, args) | Expr::List(args) => args.iter().for_each(|a| a.user_calls(f)),
            Expr::Dict(pairs) => pairs.iter().for_each(|(k, v)| {
                k.user_calls(f);
                v.user_calls(f);
            }),
            Expr::Not(e) => e.user_calls(f),
            Expr::And(a, b) | Expr::Or(a, b) | Expr::Cmp(_, a, b) | Expr::Test(_, a, b, _) => {
                a.user_calls(f);
                b.user_calls(f);
            }
            Expr::Str(_) | Expr::Num(_) | Expr::Var(_) => {}
        }
    }
}

// === parsing ===

/// Parses an expression; nesting (parentheses, `!`, calls, lists, dictionaries) deeper than
/// `max_depth` is an error. `max_depth` is capped at 256, and an expression may hold at most
/// 1024 binary operators, arguments and items, so that evaluating and dropping the tree stays
/// within a small stack. Function names and arities are checked, and literal `matches`
/// patterns compiled, here.
///
/// # Errors
///
/// [`ExprError`] with the byte offset of the problem: an empty expression, an unterminated
/// string, an unexpected character or token, a bare word, a malformed `$(...)`, an unknown
/// function or a call with the wrong number of arguments, a bad regular expression, a missing
/// closing bracket, chained comparisons, input after the expression, or nesting or size over
/// the bounds.
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
        user_names: Vec::new(),
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
fn chained(offset: usize, first: &str, second: &str) -> ExprError {
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
    /// Binding strength: `!` > comparisons and tests > `&` > `|`; an open bracket binds
    /// nothing.
    fn precedence(self) -> u8 {
        match self {
            Pending::Not => 4,
            Pending::Cmp(_) | Pending::Test(_) => 3,
            Pending::And => 2,
            Pending::Or => 1,
            Pending::Paren(_) | Pending::Call(..) | Pending::List(..) | Pending::Dict(..) => 0,
        }
    }

    /// The comparison-strength operator as written, if this is one.
    fn comparison(self) -> Option<&'static str> {
        match self {
            Pending::Cmp(op) => Some(op.as_str()),
            Pending::Test(op) => Some(op.as_str()),
            _ => None,
        }
    }
}

impl Parser<'_> {
    /// Alternates between operand position (prefix `!` and openings, then one operand) and
    /// operator position (closings and separators, then a binary operator or the end),
    /// reducing the stacks by precedence.
    fn parse(mut self) -> Result<Expr, ExprError> {
        loop {
            self.operand()?;
            loop {
                let token = self.lex()?;
                let binary = match token.tok {
                    Tok::RParen | Tok::RBracket | Tok::RBrace => {
                        self.reduce(1);
                        if !self.close(&token, false)? {
                            return Err(self.after_operand(&token));
                        }
                        continue;
                    }
                    Tok::Comma | Tok::Colon => {
                        self.reduce(1);
                        if !self.separate(&token)? {
                            return Err(self.after_operand(&token));
                        }
                        break;
                    }
                    Tok::Cmp(op) => Pending::Cmp(op),
                    Tok::Test(op) => Pending::Test(op),
                    Tok::And => {
                        self.reduce(2);
                        Pending::And
                    }
                    Tok::Or => {
                        self.reduce(1);
                        Pending::Or
                    }
                    Tok::End => {
                        self.reduce(1);
                        if !self.ops.is_empty() {
                            return Err(self.after_operand(&token));
                        }
                        return Ok(self.pop_operand());
                    }
                    _ => return Err(self.after_operand(&token)),
                };
                if let Some(second) = binary.comparison() {
                    // `!` binds tighter, so `!a == b` is `(!a) == b`.
                    self.reduce(4);
                    if let Some(first) = self.ops.last().and_then(|op| op.comparison()) {
                        return Err(chained(token.start, first, second));
                    }
                }
                self.push_binary(binary, token.start)?;
                break;
            }
        }
    }

    /// Reads any prefix `!` and openings, and then one operand (an empty list, dictionary or
    /// argument list counts as one).
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
                Tok::LBracket => {
                    self.enter(token.start)?;
                    self.ops.push(Pending::List(token.start, 0));
                    continue;
                }
                Tok::LBrace => {
                    self.enter(token.start)?;
                    self.ops.push(Pending::Dict(token.start, 0, false));
                    continue;
                }
                Tok::Call(func) => {
                    self.enter(token.start)?;
                    self.ops.push(Pending::Call(func, token.start, 0));
                    continue;
                }
                // Closing right after opening: an empty list, dictionary or argument list.
                Tok::RParen | Tok::RBracket | Tok::RBrace if self.just_opened() => {
                    if self.close(&token, true)? {
                        return Ok(());
                    }
                    return Err(expected_operand(&token));
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

    /// Whether the innermost open bracket is a call, list or dictionary with nothing in it yet.
    fn just_opened(&self) -> bool {
        matches!(
            self.ops.last(),
            Some(Pending::Call(_, _, 0) | Pending::List(_, 0) | Pending::Dict(_, 0, false))
        )
    }

    /// Closes the innermost open bracket with `token`, after its last item was reduced or, when
    /// `empty`, right after it opened: false when the bracket does not match.
    fn close(&mut self, token: &Token, empty: bool) -> Result<bool, ExprError> {
        let last = usize::from(!empty);
        let node = match (self.ops.last().copied(), &token.tok) {
            (Some(Pending::Paren(_)), Tok::RParen) => None,
            (Some(Pending::Call(Callee::Lib(func), at, n)), Tok::RParen) => {
                let args = self.pop_operands(n + last);
                func.check_arity(args.len())
                    .map_err(|message| err(at, message))?;
                Some(Expr::Call(func, args))
            }
            (Some(Pending::Call(Callee::User(i), _, n)), Tok::RParen) => {
                let args = self.pop_operands(n + last);
                let name = std::mem::take(&mut self.user_names[i]);
                Some(Expr::User(name, args))
            }
            (Some(Pending::List(_, n)), Tok::RBracket) => {
                Some(Expr::List(self.pop_operands(n + last)))
            }
            (Some(Pending::Dict(_, n, want_value)), Tok::RBrace) => {
                if !empty && !want_value {
                    return Err(err(
                        token.start,
                        "expected `:` and a value in the dictionary",
                    ));
                }
                let flat = self.pop_operands(2 * (n + last));
                let mut pairs = Vec::with_capacity(flat.len() / 2);
                let mut it = flat.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    pairs.push((k, v));
                }
                Some(Expr::Dict(pairs))
            }
            _ => return Ok(false),
        };
        self.ops.pop();
        self.depth -= 1;
        if let Some(node) = node {
            self.operands.push(node);
        }
        Ok(true)
    }

    /// Handles `,` or `:` inside a call, list or dictionary: false when it is not allowed here.
    fn separate(&mut self, token: &Token) -> Result<bool, ExprError> {
        let top = self.ops.last_mut();
        match (top, &token.tok) {
            (Some(Pending::Call(_, _, n) | Pending::List(_, n)), Tok::Comma) => *n += 1,
            (Some(Pending::Dict(_, n, want_value)), Tok::Comma) if *want_value => {
                *n += 1;
                *want_value = false;
            }
            (Some(Pending::Dict(_, _, want_value)), Tok::Colon) if !*want_value => {
                *want_value = true;
            }
            _ => return Ok(false),
        }
        self.grow(token.start)?;
        Ok(true)
    }

    fn pop_operands(&mut self, n: usize) -> Vec<Expr> {
        let at = self
            .operands
            .len()
            .checked_sub(n)
            .expect("each item pushed one operand");
        self.operands.split_off(at)
    }

    /// The error for `found` where a binary operator, a closing bracket or the end was expected.
    #[cold]
    fn after_operand(&self, found: &Token) -> ExprError {
        let open = self.ops.iter().rev().find_map(|op| match *op {
            Pending::Paren(at) => Some(("`)`", "`(`", at)),
            Pending::Call(_, at, _) => Some(("`)`", "call", at)),
            Pending::List(at, _) => Some(("`]`", "`[`", at)),
            Pending::Dict(at, _, _) => Some(("`}`", "`{`", at)),
            _ => None,
        });
        let message = match open {
            Some((close, what, at)) => format!(
                "missing {close} to close the {what} at offset {at}, found {}",
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
                Pending::Test(test) => {
                    let lhs = Box::new(self.pop_operand());
                    let pattern = match (test, rhs.as_ref()) {
                        (TestOp::Matches | TestOp::MatchesI, Expr::Str(p)) => {
                            // Checked when the operator was pushed; see `push_binary`.
                            Pattern::compile(p, test.ignores_case(), MAX_PATTERN_BYTES).ok()
                        }
                        _ => None,
                    };
                    Expr::Test(test, lhs, rhs, pattern)
                }
                Pending::And => Expr::And(Box::new(self.pop_operand()), rhs),
                Pending::Or => Expr::Or(Box::new(self.pop_operand()), rhs),
                // Unreached: every caller passes `min >= 1`, so the loop stops at a bracket.
                Pending::Paren(_) | Pending::Call(..) | Pending::List(..) | Pending::Dict(..) => {
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

    /// Opens one level of nesting (`(`, `!`, a call, list or dictionary) at `offset`.
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

    /// Counts one more operator, argument or item against [`MAX_OPERATORS`].
    fn grow(&mut self, offset: usize) -> Result<(), ExprError> {
        self.operators += 1;
        if self.operators > MAX_OPERATORS {
            return Err(err(
                offset,
                format!("more than {MAX_OPERATORS} operators and items"),
            ));
        }
        Ok(())
    }

    fn push_binary(&mut self, op: Pending, offset: usize) -> Result<(), ExprError> {
        self.grow(offset)?;
        if let Pending::Test(test @ (TestOp::Matches | TestOp::MatchesI)) = op {
            // A literal pattern must compile: peek at the next token without consuming it.
            let save = self.pos;
            let next = self.lex();
            self.pos = save;
            if let Ok(Token {
                tok: Tok::Str(p),
                start,
            }) = next
            {
                Pattern::compile(&p, test.ignores_case(), MAX_PATTERN_BYTES)
                    .map_err(|e| err(start, format!("bad regular expression: {e}")))?;
            }
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
            b'[' => (Tok::LBracket, 1),
            b']' => (Tok::RBracket, 1),
            b'{' => (Tok::LBrace, 1),
            b'}' => (Tok::RBrace, 1),
            b',' => (Tok::Comma, 1),
            b':' => (Tok::Colon, 1),
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
            b'\'' if b[start..].starts_with(b"'''") => self.triple(start)?,
            b'\'' | b'"' => self.string(start, c)?,
            b'-' | b'0'..=b'9' => self.number(start)?,
            b'$' if b
                .get(start + 1)
                .is_some_and(|c| c.is_ascii_lowercase() || *c == b'_') =>
            {
                self.call_name(start)?
            }
            b'$' => match parse_var_ref(&b[start..]) {
                Some((var, len)) => (Tok::Var(var), len),
                None => return Err(err(start, "malformed variable reference")),
            },
            b'A'..=b'Z' | b'a'..=b'z' | b'_' => {
                let len = b[start..]
                    .iter()
                    .take_while(|c| c.is_ascii_alphanumeric() || **c == b'_')
                    .count();
                let word = &self.src[start..start + len];
                match TestOp::from_word(word) {
                    Some(op) => (Tok::Test(op), len),
                    None => {
                        let word = &self.src[start..start + len.min(40)];
                        return Err(err(
                            start,
                            format!("bare word `{word}`: quote strings, as in '{word}'"),
                        ));
                    }
                }
            }
            _ => {
                let ch = self.src[start..].chars().next().unwrap_or('\u{fffd}');
                return Err(err(start, format!("unexpected character {ch:?}")));
            }
        };
        self.pos = start + len;
        Ok(Token { tok, start })
    }

    /// Lexes `$name(` at `start`: a library function, or else one the document defines
    /// (whether it does is checked where the expression is used), opened.
    fn call_name(&mut self, start: usize) -> Result<(Tok, usize), ExprError> {
        let b = self.src.as_bytes();
        let len = b[start + 1..]
            .iter()
            .take_while(|c| c.is_ascii_alphanumeric() || **c == b'_')
            .count();
        let name = &self.src[start + 1..start + 1 + len];
        if b.get(start + 1 + len) != Some(&b'(') {
            let name = &name[..name.len().min(40)];
            return Err(err(
                start,
                format!("`${name}` is a function: call it as `${name}(...)`"),
            ));
        }
        let callee = match Func::from_name(name) {
            Some(func) => Callee::Lib(func),
            None => {
                self.user_names.push(name.into());
                Callee::User(self.user_names.len() - 1)
            }
        };
        Ok((Tok::Call(callee), len + 2))
    }

    /// Lexes `'...'` or `"..."` at `start`, where a backslash escapes the quote and itself and
    /// any other `\` is literal.
    fn string(&self, start: usize, quote: u8) -> Result<(Tok, usize), ExprError> {
        let b = self.src.as_bytes();
        let mut out = String::new();
        let mut run = start + 1;
        let mut i = start + 1;
        loop {
            match b.get(i) {
                None => return Err(err(start, "unterminated string")),
                Some(&c) if c == quote => {
                    out.push_str(&self.src[run..i]);
                    return Ok((Tok::Str(out.into()), i + 1 - start));
                }
                Some(b'\\') if b.get(i + 1).is_some_and(|&n| n == quote || n == b'\\') => {
                    out.push_str(&self.src[run..i]);
                    run = i + 1;
                    i += 2;
                }
                Some(_) => i += 1,
            }
        }
    }

    /// Lexes `'''...'''` at `start`: raw text, no escapes (regular expressions keep their
    /// backslashes).
    fn triple(&self, start: usize) -> Result<(Tok, usize), ExprError> {
        let body = start + 3;
        match memchr::memmem::find(&self.src.as_bytes()[body..], b"'''") {
            Some(len) => Ok((Tok::Str(self.src[body..body + len].into()), len + 6)),
            None => Err(err(start, "unterminated string")),
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

#[cfg(test)]
#[path = "expr_tests.rs"]
mod tests;
