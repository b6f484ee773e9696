//! The ESI parser: turns scanner tokens into a flat, always well-nested stream of [`Event`]s (so a
//! proxy can start a fetch the moment an include's tag is complete) and builds [`Template`]s.
//! Checks nesting and attributes. In strict mode the first problem is an error; in lenient mode
//! each problem is recorded and has one documented outcome. No I/O.
//!
//! Lenient outcomes, one per problem:
//! - unknown `esi:` element: its tag markup is dropped (start and end), its content kept;
//! - stray end tag: dropped; mismatched end tag: the elements opened inside it are closed first;
//! - unclosed element at end of input: closed there (`esi:remove`: everything after it dropped);
//! - `<!--esi` never closed by `-->`: it and everything after it stay literal text (a wrapper
//!   longer than the scanner's look-ahead is processed as it streams, its content kept);
//! - `include` without `src`: dropped; a bad `onerror` value: treated as absent;
//! - an element where its parent does not allow it (`when` outside `choose`, `attempt` outside
//!   `try`, a second `except`, an include directly in `choose` ...): dropped with its content;
//! - nesting deeper than `max_depth`: the element is dropped with its content;
//! - a `when` whose test is missing or does not parse: the branch is never taken;
//! - text directly inside `try` or `choose`: dropped (whitespace silently);
//! - content inside `<esi:include>..</esi:include>`: the include is closed before it;
//! - an ESI tag longer than `max_tag_bytes` or cut off by the end: left as literal text.
//! - `break` outside a loop, `return` outside a function, a function, include or eval inside a
//!   function: dropped (as misplaced);
//! - `foreach` without `collection` or with a bad one, `function` without a usable name,
//!   `return` without a usable `value`: dropped with its content;
//! - a call of a function not defined before: kept (it may come from an `esi:eval`), reported;
//!   at run time it stops its expression.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::ast::{Include, Template};
pub use super::build::TemplateBuilder;
pub use super::diag::{Diagnostic, ParseError, Problem, Severity};
pub use super::event::Event;
use super::scan::{Pos, ScanProblem, Scanner, Token};
use super::vars::split_vars_in;

/// How problems in the markup are handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// The first problem is an error (lint, tests).
    Strict,
    /// Problems are recorded and given their documented outcome; parsing never fails (the proxy).
    #[default]
    Lenient,
}

/// Parser settings and bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseOptions {
    /// Strict or lenient. Default: lenient.
    pub mode: Mode,
    /// Deepest nesting of ESI block elements. Default: 32.
    pub max_depth: usize,
    /// Deepest nesting of parentheses and `!` in a test. Default: 32.
    pub max_expr_depth: usize,
    /// Longest ESI tag, attributes included. Default: 16384.
    pub max_tag_bytes: usize,
    /// Longest run of text inside `esi:vars` between two tags. Default: 262144.
    pub max_vars_bytes: usize,
    /// How many diagnostics are kept (all are counted). Default: 64.
    pub max_diagnostics: usize,
    /// Whether every well-formed `$(name)` is a variable, assigned here or not: for documents
    /// run by `esi:eval`, which read the including document's variables. Default: false.
    pub shared_scope: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Try,
    Attempt,
    Except,
    Choose,
    When,
    Otherwise,
    Vars,
    Inline,
    /// `<esi:include ...>` written with an end tag.
    Include,
    /// `<esi:comment ...>` written with an end tag: its content is dropped.
    Comment,
    /// `<esi:assign name="..">` written with an end tag: its content is the expression.
    Assign,
    Foreach,
    Function,
    /// Empty elements: never open frames.
    Break,
    Return,
    Eval,
    /// `<esi:param>` inside a long-form `<esi:include>`.
    Param,
}

#[derive(Debug, Clone, Copy)]
struct Frame {
    kind: Kind,
    pos: Pos,
    /// try: attempt seen; choose: a when seen.
    first: bool,
    /// try: except seen; choose: otherwise seen.
    second: bool,
    /// Stray text inside was reported already (once per element, however the text is split).
    text_reported: bool,
}

/// An element being dropped with its content: everything up to its matching end tag.
#[derive(Debug, Clone, Copy)]
struct Skip {
    kind: Kind,
    pos: Pos,
    nested: u32,
}

/// The incremental parser. Feed chunks with [`Parser::feed`], then call [`Parser::finish`].
#[derive(Debug)]
pub struct Parser {
    opts: ParseOptions,
    scanner: Scanner,
    tokens: Vec<Token>,
    stack: Vec<Frame>,
    skip: Option<Skip>,
    vars_depth: usize,
    vars_text: Vec<Bytes>,
    vars_len: usize,
    diagnostics: Vec<Diagnostic>,
    problem_count: usize,
    /// The target of the open long-form `esi:assign` and its content so far.
    assign: Option<(Box<str>, Option<Box<str>>)>,
    assign_text: Vec<Bytes>,
    /// Names the document assigned (or named as a `matchname`) so far: later text and
    /// attributes may read them.
    assigned: std::collections::HashSet<Box<str>>,
    /// Names of the functions the document defined so far.
    functions: std::collections::HashSet<Box<str>>,
    /// Whether an `esi:eval` came before (its fragment may define functions).
    eval_seen: bool,
    /// Open `esi:foreach` elements, and how many were open when the open `esi:function`
    /// began (a `break` belongs to a loop inside the function).
    loops: usize,
    loops_at_function: usize,
    /// Whether an `esi:function` is open.
    in_function: bool,
    /// A long-form `<esi:include>` being read: emitted at its end tag, with its params.
    open_include: Option<Include>,
}

/// Parses a whole document.
///
/// # Errors
/// In strict mode, the first problem, with its line and column. Lenient mode never fails.
pub fn parse(input: Bytes, opts: &ParseOptions) -> Result<Template, ParseError> {
    let mut parser = Parser::new(opts.clone());
    let mut events = Vec::new();
    parser.feed(input, &mut events)?;
    parser.finish(&mut events)?;
    let mut builder = TemplateBuilder::default();
    for e in events {
        builder.push(e);
    }
    let mut template = builder.finish();
    template.problem_count = parser.problem_count;
    template.diagnostics = parser.diagnostics;
    Ok(template)
}

// === impl ParseOptions ===

impl Default for ParseOptions {
    fn default() -> Self {
        Self {
            mode: Mode::Lenient,
            max_depth: 32,
            max_expr_depth: 32,
            max_tag_bytes: 16 * 1024,
            max_vars_bytes: 256 * 1024,
            max_diagnostics: 64,
            shared_scope: false,
        }
    }
}

impl ParseOptions {
    /// The defaults in strict mode.
    pub fn strict() -> Self {
        Self {
            mode: Mode::Strict,
            ..Self::default()
        }
    }
}

// === impl Kind ===

impl Kind {
    fn from_name(name: &[u8]) -> Option<Kind> {
        Some(match name {
            b"try" => Kind::Try,
            b"attempt" => Kind::Attempt,
            b"except" => Kind::Except,
            b"choose" => Kind::Choose,
            b"when" => Kind::When,
            b"otherwise" => Kind::Otherwise,
            b"vars" => Kind::Vars,
            b"inline" => Kind::Inline,
            b"include" => Kind::Include,
            b"comment" => Kind::Comment,
            b"assign" => Kind::Assign,
            b"foreach" => Kind::Foreach,
            b"function" => Kind::Function,
            b"break" => Kind::Break,
            b"return" => Kind::Return,
            b"eval" => Kind::Eval,
            b"param" => Kind::Param,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Try => "try",
            Kind::Attempt => "attempt",
            Kind::Except => "except",
            Kind::Choose => "choose",
            Kind::When => "when",
            Kind::Otherwise => "otherwise",
            Kind::Vars => "vars",
            Kind::Inline => "inline",
            Kind::Include => "include",
            Kind::Comment => "comment",
            Kind::Assign => "assign",
            Kind::Foreach => "foreach",
            Kind::Function => "function",
            Kind::Break => "break",
            Kind::Return => "return",
            Kind::Eval => "eval",
            Kind::Param => "param",
        }
    }

    /// Whether text and ordinary elements may appear directly inside.
    fn holds_content(self) -> bool {
        !matches!(
            self,
            Kind::Try | Kind::Choose | Kind::Include | Kind::Comment | Kind::Assign | Kind::Param
        )
    }
}

// === impl Parser ===

impl Parser {
    /// A parser with the given options.
    pub fn new(opts: ParseOptions) -> Self {
        Self {
            scanner: Scanner::new(opts.max_tag_bytes),
            opts,
            tokens: Vec::new(),
            stack: Vec::new(),
            skip: None,
            vars_depth: 0,
            vars_text: Vec::new(),
            vars_len: 0,
            diagnostics: Vec::new(),
            problem_count: 0,
            assign: None,
            assign_text: Vec::new(),
            assigned: std::collections::HashSet::new(),
            functions: std::collections::HashSet::new(),
            eval_seen: false,
            loops: 0,
            loops_at_function: 0,
            in_function: false,
            open_include: None,
        }
    }

    /// Parses the next chunk of the body, appending complete events to `out`.
    ///
    /// # Errors
    /// In strict mode, the first problem met.
    pub fn feed(&mut self, chunk: Bytes, out: &mut Vec<Event>) -> Result<(), ParseError> {
        let mut tokens = std::mem::take(&mut self.tokens);
        self.scanner.feed(chunk, &mut tokens);
        let result = self.handle_all(&mut tokens, out);
        tokens.clear();
        self.tokens = tokens;
        result
    }

    /// Ends the input: closes what is still open and reports it.
    ///
    /// # Errors
    /// In strict mode, the first problem met.
    pub fn finish(&mut self, out: &mut Vec<Event>) -> Result<(), ParseError> {
        let mut tokens = std::mem::take(&mut self.tokens);
        self.scanner.finish(&mut tokens);
        self.handle_all(&mut tokens, out)?;
        self.flush_vars(out)?;
        if let Some(skip) = self.skip.take() {
            self.problem(skip.pos, Problem::Unclosed(skip.kind.name()))?;
        }
        while let Some(frame) = self.stack.last().copied() {
            self.problem(frame.pos, Problem::Unclosed(frame.kind.name()))?;
            self.close_top(out)?;
        }
        Ok(())
    }

    /// Problems recorded so far (lenient mode; warnings in both modes), at most `max_diagnostics`.
    pub fn diagnostics(&self) -> &[Diagnostic] {
        &self.diagnostics
    }

    /// How many errors were met in all (lenient mode).
    pub fn problem_count(&self) -> usize {
        self.problem_count
    }

    fn handle_all(
        &mut self,
        tokens: &mut Vec<Token>,
        out: &mut Vec<Event>,
    ) -> Result<(), ParseError> {
        for token in tokens.drain(..) {
            self.handle(token, out)?;
        }
        Ok(())
    }

    fn problem(&mut self, pos: Pos, problem: Problem) -> Result<(), ParseError> {
        let diag = Diagnostic {
            line: pos.line,
            col: pos.col,
            problem,
        };
        let is_error = diag.problem.severity() == Severity::Error;
        if is_error && self.opts.mode == Mode::Strict {
            return Err(diag);
        }
        if is_error {
            self.problem_count += 1;
        }
        if self.diagnostics.len() < self.opts.max_diagnostics {
            self.diagnostics.push(diag);
        }
        Ok(())
    }

    fn handle(&mut self, token: Token, out: &mut Vec<Event>) -> Result<(), ParseError> {
        match token {
            Token::Text(text) => self.text(text, out),
            Token::Start {
                name,
                attrs,
                self_closing,
                pos,
            } => {
                if let Some(skip) = &mut self.skip {
                    if !self_closing && Kind::from_name(&name) == Some(skip.kind) {
                        skip.nested += 1;
                    }
                    return Ok(());
                }
                self.flush_vars(out)?;
                if Kind::from_name(&name) != Some(Kind::Param) {
                    self.close_open_include(out)?;
                }
                self.start(&name, &attrs, self_closing, pos, out)
            }
            Token::End { name, pos } => {
                if let Some(skip) = &mut self.skip {
                    if Kind::from_name(&name) == Some(skip.kind) {
                        if skip.nested == 0 {
                            self.skip = None;
                        } else {
                            skip.nested -= 1;
                        }
                    }
                    return Ok(());
                }
                self.flush_vars(out)?;
                if !matches!(Kind::from_name(&name), Some(Kind::Include | Kind::Param)) {
                    self.close_open_include(out)?;
                }
                self.end(&name, pos, out)
            }
            Token::Remove { pos, contains_esi } => {
                if contains_esi {
                    self.problem(pos, Problem::EsiInsideRemove)?;
                }
                Ok(())
            }
            Token::EsiCommentOpen(_) | Token::EsiCommentClose(_) => Ok(()),
            Token::Malformed { problem, pos } => {
                let problem = match problem {
                    ScanProblem::TagTooLong => Problem::TagTooLong(self.opts.max_tag_bytes),
                    ScanProblem::UnterminatedTag => Problem::UnterminatedTag,
                    ScanProblem::UnclosedRemove => Problem::Unclosed("remove"),
                    ScanProblem::UnclosedEsiComment => Problem::UnclosedEsiComment,
                    ScanProblem::UnclosedText => Problem::Unclosed("text"),
                };
                self.problem(pos, problem)
            }
        }
    }

    fn text(&mut self, text: Bytes, out: &mut Vec<Event>) -> Result<(), ParseError> {
        if self.skip.is_some() {
            return Ok(());
        }
        let blank = text.iter().all(u8::is_ascii_whitespace);
        if self.stack.last().is_some_and(|f| f.kind == Kind::Assign) {
            // The long form's expression; bounded like `esi:vars` text.
            let held: usize = self.assign_text.iter().map(Bytes::len).sum();
            if held + text.len() <= self.opts.max_vars_bytes {
                self.assign_text.push(text);
            }
            return Ok(());
        }
        if let Some(top) = self.stack.last().copied() {
            if top.kind == Kind::Include && !blank {
                self.close_open_include(out)?;
            } else if !top.kind.holds_content() {
                if !blank && !top.text_reported {
                    if let Some(frame) = self.stack.last_mut() {
                        frame.text_reported = true;
                    }
                    // Text has no position of its own; the enclosing tag's is the useful one.
                    self.problem(top.pos, Problem::TextInBlock(top.kind.name()))?;
                }
                return Ok(());
            }
        }
        if self.vars_depth > 0 {
            self.vars_len += text.len();
            self.vars_text.push(text);
            if self.vars_len > self.opts.max_vars_bytes {
                let pos = self.stack.last().map(|f| f.pos).unwrap_or_default();
                self.problem(pos, Problem::VarsTooLong(self.opts.max_vars_bytes))?;
                self.flush_vars(out)?;
            }
        } else {
            out.push(Event::Text(text));
        }
        Ok(())
    }

    /// Emits buffered `esi:vars` text, split into literals and variables.
    fn flush_vars(&mut self, out: &mut Vec<Event>) -> Result<(), ParseError> {
        if self.vars_text.is_empty() {
            return Ok(());
        }
        let text = if self.vars_text.len() == 1 {
            self.vars_text.pop().expect("one piece")
        } else {
            let mut joined = BytesMut::with_capacity(self.vars_len);
            for piece in self.vars_text.drain(..) {
                joined.extend_from_slice(&piece);
            }
            joined.freeze()
        };
        self.vars_text.clear();
        self.vars_len = 0;
        let assigned = |name: &str| self.is_assigned(name);
        out.push(match split_vars_in(&text, &assigned) {
            Some(segments) => Event::Vars(segments),
            None => Event::Text(text),
        });
        Ok(())
    }

    /// A `<esi:include ...>` written with an end tag is closed by anything but blank text.
    fn close_open_include(&mut self, out: &mut Vec<Event>) -> Result<(), ParseError> {
        if let Some(top) = self.stack.last().copied() {
            if top.kind == Kind::Include {
                self.problem(top.pos, Problem::Unclosed("include"))?;
                self.close_top(out)?;
            }
        }
        Ok(())
    }

    /// Whether `$(name)` with a lower-case letter is a variable here: assigned before, or
    /// anything in a document that shares a scope (run by `esi:eval`, or after one, whose
    /// fragment may have assigned it).
    fn is_assigned(&self, name: &str) -> bool {
        self.opts.shared_scope || self.eval_seen || self.assigned.contains(name)
    }

    /// Opens an element's frame, nothing in it seen yet.
    fn open(&mut self, kind: Kind, pos: Pos) {
        self.stack.push(Frame {
            kind,
            pos,
            first: false,
            second: false,
            text_reported: false,
        });
    }

    fn depth(&self) -> usize {
        self.stack.len()
    }

    fn start(
        &mut self,
        name: &[u8],
        attrs: &[u8],
        self_closing: bool,
        pos: Pos,
        out: &mut Vec<Event>,
    ) -> Result<(), ParseError> {
        if name == b"remove" || name == b"text" {
            // `<esi:remove/>`, `<esi:text/>`: empty; the scanner handles the block forms whole.
            return Ok(());
        }
        let Some(kind) = Kind::from_name(name) else {
            let name = String::from_utf8_lossy(name).into_owned();
            return self.problem(pos, Problem::UnknownElement(name));
        };
        let parent = self.stack.last().copied();
        let parent_kind = parent.map(|f| f.kind);
        // Where may this element stand?
        let place = match kind {
            Kind::Comment => None,
            Kind::Attempt | Kind::Except => match parent {
                Some(f) if f.kind == Kind::Try => {
                    let seen = if kind == Kind::Attempt {
                        f.first
                    } else {
                        f.second
                    };
                    seen.then_some("twice in one <esi:try>")
                }
                _ => Some("outside <esi:try>"),
            },
            Kind::Param => match parent_kind {
                Some(Kind::Include) => None,
                _ => Some("outside a long-form <esi:include>"),
            },
            Kind::When | Kind::Otherwise => match parent {
                Some(f) if f.kind == Kind::Choose => {
                    if f.second {
                        Some("after <esi:otherwise>")
                    } else {
                        None
                    }
                }
                _ => Some("outside <esi:choose>"),
            },
            _ => match parent_kind {
                Some(Kind::Assign) => Some("inside <esi:assign>"),
                Some(Kind::Try) => Some("directly inside <esi:try>"),
                Some(Kind::Choose) => Some("directly inside <esi:choose>"),
                _ => None,
            },
        };
        let place = place.or_else(|| self.flow_place(kind));
        if let Some(place) = place {
            self.problem(
                pos,
                Problem::Misplaced {
                    element: kind.name(),
                    place,
                },
            )?;
            if !self_closing {
                self.skip = Some(Skip {
                    kind,
                    pos,
                    nested: 0,
                });
            }
            return Ok(());
        }
        match kind {
            Kind::Comment => {
                if !self_closing {
                    self.skip = Some(Skip {
                        kind,
                        pos,
                        nested: 0,
                    });
                }
                Ok(())
            }
            Kind::Assign => {
                let target = self.assign_target(attrs, pos)?;
                match target {
                    Some((name, key, Some(source))) => {
                        if let Some(a) = self.assign_expr(name, key, &source, pos)? {
                            out.push(Event::Assign(a));
                        }
                    }
                    Some((name, key, None)) if !self_closing => {
                        self.assign = Some((name, key));
                        self.assign_text.clear();
                        self.open(kind, pos);
                        return Ok(());
                    }
                    Some(_) => {
                        let message = "without value".to_owned();
                        self.problem(
                            pos,
                            Problem::BadAttribute {
                                element: "assign",
                                message,
                            },
                        )?;
                    }
                    None => {}
                }
                if !self_closing {
                    // A long form with `value` set, or a refused one: its content is dropped.
                    self.skip = Some(Skip {
                        kind,
                        pos,
                        nested: 0,
                    });
                }
                Ok(())
            }
            Kind::Break | Kind::Return | Kind::Eval => {
                let event = match kind {
                    Kind::Break => Some(Event::Break),
                    Kind::Return => self.return_value(attrs, pos)?.map(Event::Return),
                    _ => {
                        let eval = self.eval(attrs, pos)?;
                        eval.map(|inc| Event::Eval(Arc::new(inc)))
                    }
                };
                if let Some(event) = event {
                    out.push(event);
                }
                if !self_closing {
                    // Empty elements: content written inside is dropped.
                    self.skip = Some(Skip {
                        kind,
                        pos,
                        nested: 0,
                    });
                }
                Ok(())
            }
            Kind::Param => {
                self.param(attrs, pos)?;
                if !self_closing {
                    self.open(kind, pos);
                }
                Ok(())
            }
            Kind::Include => {
                match self.include(attrs, pos)? {
                    Some(inc) if self_closing => out.push(Event::Include(Arc::new(inc))),
                    Some(inc) => {
                        // Emitted at its end tag, once its `<esi:param>`s are read.
                        self.open_include = Some(inc);
                        self.open(kind, pos);
                    }
                    None if !self_closing => {
                        self.skip = Some(Skip {
                            kind,
                            pos,
                            nested: 0,
                        })
                    }
                    None => {}
                }
                Ok(())
            }
            _ => {
                if self.depth() >= self.opts.max_depth {
                    self.problem(pos, Problem::TooDeep(self.opts.max_depth))?;
                    if !self_closing {
                        self.skip = Some(Skip {
                            kind,
                            pos,
                            nested: 0,
                        });
                    }
                    return Ok(());
                }
                let event = match kind {
                    Kind::Try => Some(Event::TryStart),
                    Kind::Attempt => Some(Event::AttemptStart),
                    Kind::Except => Some(Event::ExceptStart),
                    Kind::Choose => Some(Event::ChooseStart),
                    Kind::Otherwise => Some(Event::OtherwiseStart),
                    Kind::When => Some(self.when(attrs, pos)?),
                    Kind::Inline => Some(self.inline(attrs, pos)?),
                    Kind::Foreach | Kind::Function => {
                        let event = if kind == Kind::Foreach {
                            self.foreach(attrs, pos)?
                        } else {
                            self.function(attrs, pos)?
                        };
                        if event.is_none() {
                            if !self_closing {
                                self.skip = Some(Skip {
                                    kind,
                                    pos,
                                    nested: 0,
                                });
                            }
                            return Ok(());
                        }
                        event
                    }
                    Kind::Vars
                    | Kind::Include
                    | Kind::Comment
                    | Kind::Assign
                    | Kind::Break
                    | Kind::Return
                    | Kind::Eval
                    | Kind::Param => None,
                };
                if let Some(parent) = self.stack.last_mut() {
                    match kind {
                        Kind::Attempt | Kind::When => parent.first = true,
                        Kind::Except | Kind::Otherwise => parent.second = true,
                        _ => {}
                    }
                }
                if let Some(event) = event {
                    out.push(event);
                }
                self.open(kind, pos);
                match kind {
                    Kind::Vars => self.vars_depth += 1,
                    Kind::Foreach => self.loops += 1,
                    Kind::Function => {
                        self.in_function = true;
                        self.loops_at_function = self.loops;
                    }
                    _ => {}
                }
                if self_closing {
                    self.close_top(out)?;
                }
                Ok(())
            }
        }
    }

    fn end(&mut self, name: &[u8], pos: Pos, out: &mut Vec<Event>) -> Result<(), ParseError> {
        let Some(kind) = Kind::from_name(name) else {
            let name = String::from_utf8_lossy(name).into_owned();
            return if name == "remove" || name == "text" {
                self.problem(pos, Problem::StrayEndTag(name))
            } else {
                self.problem(pos, Problem::UnknownElement(name))
            };
        };
        let Some(at) = self.stack.iter().rposition(|f| f.kind == kind) else {
            return self.problem(pos, Problem::StrayEndTag(kind.name().to_owned()));
        };
        if at + 1 != self.stack.len() {
            let open = self.stack.last().map_or("?", |f| f.kind.name());
            self.problem(
                pos,
                Problem::MismatchedEndTag {
                    open,
                    found: kind.name(),
                },
            )?;
            while self.stack.len() > at + 1 {
                self.close_top(out)?;
            }
        }
        self.close_top(out)
    }

    /// Closes the innermost open element, checking what it required.
    fn close_top(&mut self, out: &mut Vec<Event>) -> Result<(), ParseError> {
        self.flush_vars(out)?;
        let Some(frame) = self.stack.pop() else {
            return Ok(());
        };
        let event = match frame.kind {
            Kind::Try => {
                if !frame.first {
                    self.problem(frame.pos, Problem::TryWithout("attempt"))?;
                }
                if !frame.second {
                    self.problem(frame.pos, Problem::TryWithout("except"))?;
                }
                Some(Event::TryEnd)
            }
            Kind::Choose => {
                if !frame.first {
                    self.problem(frame.pos, Problem::EmptyChoose)?;
                }
                Some(Event::ChooseEnd)
            }
            Kind::Attempt => Some(Event::AttemptEnd),
            Kind::Except => Some(Event::ExceptEnd),
            Kind::When => Some(Event::WhenEnd),
            Kind::Otherwise => Some(Event::OtherwiseEnd),
            Kind::Inline => Some(Event::InlineEnd),
            Kind::Foreach => {
                self.loops -= 1;
                Some(Event::ForeachEnd)
            }
            Kind::Function => {
                self.in_function = false;
                self.loops_at_function = 0;
                Some(Event::FunctionEnd)
            }
            Kind::Break | Kind::Return | Kind::Eval => None,
            Kind::Vars => {
                self.vars_depth -= 1;
                None
            }
            Kind::Assign => {
                let text: Vec<u8> = self
                    .assign_text
                    .drain(..)
                    .flat_map(|b| b.to_vec())
                    .collect();
                match self.assign.take() {
                    Some((name, key)) => {
                        let source = String::from_utf8_lossy(&text).trim().to_owned();
                        self.assign_expr(name, key, &source, frame.pos)?
                            .map(Event::Assign)
                    }
                    None => None,
                }
            }
            Kind::Include => self
                .open_include
                .take()
                .map(|inc| Event::Include(Arc::new(inc))),
            Kind::Comment | Kind::Param => None,
        };
        if let Some(event) = event {
            out.push(event);
        }
        Ok(())
    }
}

#[path = "parse_attrs.rs"]
mod attrs;
#[path = "parse_flow.rs"]
mod flow;

use attrs::attributes;
pub use attrs::decode_entities;

#[cfg(test)]
#[path = "parse_tests.rs"]
mod tests;
