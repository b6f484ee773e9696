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

use bytes::{Bytes, BytesMut};
use quick_xml::events::attributes::Attributes;

use super::ast::{Assign, Include, OnError, Template};
pub use super::build::TemplateBuilder;
pub use super::diag::{Diagnostic, ParseError, Problem, Severity};
pub use super::event::Event;
use super::expr::parse_expr;
use super::scan::{Pos, ScanProblem, Scanner, Token};
use super::vars::{split_vars_in, VarName, VarString};

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
        }
    }

    /// Whether text and ordinary elements may appear directly inside.
    fn holds_content(self) -> bool {
        !matches!(
            self,
            Kind::Try | Kind::Choose | Kind::Include | Kind::Comment | Kind::Assign
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
                self.close_open_include(out)?;
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
                if Kind::from_name(&name) != Some(Kind::Include) {
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
        let assigned = |name: &str| self.assigned.contains(name);
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
                        self.stack.push(Frame {
                            kind,
                            pos,
                            first: false,
                            second: false,
                            text_reported: false,
                        });
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
            Kind::Include => {
                match self.include(attrs, pos)? {
                    Some(inc) => {
                        out.push(Event::Include(inc));
                        if !self_closing {
                            self.stack.push(Frame {
                                kind,
                                pos,
                                first: false,
                                second: false,
                                text_reported: false,
                            });
                        }
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
                    Kind::Vars | Kind::Include | Kind::Comment | Kind::Assign => None,
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
                self.stack.push(Frame {
                    kind,
                    pos,
                    first: false,
                    second: false,
                    text_reported: false,
                });
                if kind == Kind::Vars {
                    self.vars_depth += 1;
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
            Kind::Include | Kind::Comment => None,
        };
        if let Some(event) = event {
            out.push(event);
        }
        Ok(())
    }

    fn include(&mut self, raw: &[u8], pos: Pos) -> Result<Option<Include>, ParseError> {
        let attrs = match attributes(raw) {
            Ok(a) => a,
            Err(message) => {
                self.problem(
                    pos,
                    Problem::BadAttribute {
                        element: "include",
                        message,
                    },
                )?;
                return Ok(None);
            }
        };
        let mut inc = Include {
            src: VarString {
                segments: Vec::new(),
            },
            alt: None,
            onerror: OnError::Fail,
            maxwait_ms: None,
            primary: false,
            line: pos.line,
            col: pos.col,
        };
        let mut has_src = false;
        for (key, value) in attrs {
            match key.as_str() {
                "src" => {
                    inc.src = VarString::parse_in(&value, &|n| self.assigned.contains(n));
                    has_src = true;
                }
                "alt" => {
                    inc.alt = Some(VarString::parse_in(&value, &|n| self.assigned.contains(n)))
                }
                "onerror" if value == "continue" => inc.onerror = OnError::Continue,
                "onerror" => self.problem(pos, Problem::BadOnError(value))?,
                "maxwait" => match value.trim().parse::<u64>() {
                    Ok(ms) => inc.maxwait_ms = Some(ms),
                    Err(_) => {
                        let message = format!("maxwait={value:?} is not a number of milliseconds");
                        self.problem(
                            pos,
                            Problem::BadAttribute {
                                element: "include",
                                message,
                            },
                        )?;
                    }
                },
                // Only the exact value counts: `primary="false"` or a typo leaves it off.
                "primary" => inc.primary = value.trim().eq_ignore_ascii_case("true"),
                // Other attributes (ttl, no-store, ...) belong to other dialects and are ignored.
                _ => {}
            }
        }
        if !has_src || inc.src.as_constant() == Some("") {
            self.problem(pos, Problem::MissingSrc)?;
            return Ok(None);
        }
        Ok(Some(inc))
    }

    /// Reads `esi:assign`'s `name` (with an optional `{key}`) and `value`: None (reported) when
    /// the name is missing, malformed or a request variable's.
    #[allow(clippy::type_complexity)] // (name, key, value): read once, here.
    fn assign_target(
        &mut self,
        raw: &[u8],
        pos: Pos,
    ) -> Result<Option<(Box<str>, Option<Box<str>>, Option<String>)>, ParseError> {
        let bad = |message: String| Problem::BadAttribute {
            element: "assign",
            message,
        };
        let attrs = match attributes(raw) {
            Ok(a) => a,
            Err(message) => {
                self.problem(pos, bad(message))?;
                return Ok(None);
            }
        };
        let mut name = None;
        let mut value = None;
        for (k, v) in attrs {
            match k.as_str() {
                "name" => name = Some(v),
                "value" => value = Some(v),
                _ => {}
            }
        }
        let Some(full) = name else {
            self.problem(pos, bad("without name".to_owned()))?;
            return Ok(None);
        };
        let (base, key) = match full.split_once('{') {
            Some((base, rest)) => match rest.strip_suffix('}') {
                Some(k) => {
                    let k = k.trim_matches('\'');
                    (base, Some(Box::from(k)))
                }
                None => (full.as_str(), Some(Box::from(""))),
            },
            None => (full.as_str(), None),
        };
        let well_formed = base
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && base.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && key.as_deref() != Some("");
        if !well_formed {
            self.problem(
                pos,
                bad(format!("name={full:?} is not NAME or NAME{{key}}")),
            )?;
            return Ok(None);
        }
        if VarName::is_reserved(base) {
            self.problem(pos, Problem::AssignToRequestVariable(base.to_owned()))?;
            return Ok(None);
        }
        Ok(Some((base.into(), key, value)))
    }

    /// Parses an assignment's expression: None (reported) when it does not parse.
    fn assign_expr(
        &mut self,
        name: Box<str>,
        key: Option<Box<str>>,
        source: &str,
        pos: Pos,
    ) -> Result<Option<Assign>, ParseError> {
        match parse_expr(source, self.opts.max_expr_depth) {
            Ok(value) => Ok(Some({
                self.assigned.insert(name.clone());
                Assign {
                    name,
                    key,
                    value,
                    source: source.into(),
                }
            })),
            Err(e) => {
                self.problem(pos, Problem::BadExpression(e))?;
                Ok(None)
            }
        }
    }

    fn when(&mut self, raw: &[u8], pos: Pos) -> Result<Event, ParseError> {
        let attrs = match attributes(raw) {
            Ok(a) => a,
            Err(message) => {
                self.problem(
                    pos,
                    Problem::BadAttribute {
                        element: "when",
                        message,
                    },
                )?;
                Vec::new()
            }
        };
        let match_name: Option<Box<str>> = attrs
            .iter()
            .find(|(k, _)| k == "matchname")
            .map(|(_, v)| Box::from(v.as_str()));
        if let Some(name) = match_name.as_deref() {
            let well_formed = name
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            // Later text may read the captures through this name, as an assigned variable.
            self.assigned.insert(name.into());
            if !well_formed || (VarName::is_reserved(name) && name != "MATCHES") {
                let message = format!("matchname={name:?} is not a variable name one may set");
                self.problem(
                    pos,
                    Problem::BadAttribute {
                        element: "when",
                        message,
                    },
                )?;
            }
        }
        let Some((_, source)) = attrs.into_iter().find(|(k, _)| k == "test") else {
            self.problem(pos, Problem::MissingTest)?;
            return Ok(Event::WhenStart {
                test: None,
                source: "".into(),
                match_name,
            });
        };
        let test = match parse_expr(&source, self.opts.max_expr_depth) {
            Ok(expr) => Some(expr),
            Err(e) => {
                self.problem(pos, Problem::BadExpression(e))?;
                None
            }
        };
        Ok(Event::WhenStart {
            test,
            source: source.into(),
            match_name,
        })
    }

    fn inline(&mut self, raw: &[u8], pos: Pos) -> Result<Event, ParseError> {
        let attrs = match attributes(raw) {
            Ok(a) => a,
            Err(message) => {
                self.problem(
                    pos,
                    Problem::BadAttribute {
                        element: "inline",
                        message,
                    },
                )?;
                Vec::new()
            }
        };
        let mut name = String::new();
        let mut fetchable = false;
        for (key, value) in attrs {
            match key.as_str() {
                "name" => name = value,
                "fetchable" => fetchable = value.eq_ignore_ascii_case("yes"),
                _ => {}
            }
        }
        Ok(Event::InlineStart {
            name: name.into(),
            fetchable,
        })
    }
}

/// Parses a tag's attributes (HTML syntax: quoted either way, unquoted, or bare) into lowercase
/// names and entity-decoded values.
fn attributes(raw: &[u8]) -> Result<Vec<(String, String)>, String> {
    let text = String::from_utf8_lossy(raw);
    let mut found = Vec::new();
    for attr in Attributes::html(&text, 0) {
        let attr = attr.map_err(|e| e.to_string())?;
        let key = String::from_utf8_lossy(attr.key.as_ref()).to_ascii_lowercase();
        let value = decode_entities(&String::from_utf8_lossy(&attr.value));
        found.push((key, value));
    }
    Ok(found)
}

/// Decodes HTML character references: named (`&amp;`, `&nbsp;` ...), decimal and hex. As in HTML,
/// an `&` that starts no known reference stays as it is.
pub fn decode_entities(s: &str) -> String {
    if !s.contains('&') {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let decoded = rest[1..]
            .find(';')
            .filter(|end| *end <= 32)
            .and_then(|end| {
                let entity = &rest[1..=end];
                let ch = if let Some(num) = entity.strip_prefix('#') {
                    let code = match num.strip_prefix(['x', 'X']) {
                        Some(hex) => u32::from_str_radix(hex, 16).ok(),
                        None => num.parse::<u32>().ok(),
                    };
                    code.and_then(char::from_u32).map(String::from)
                } else {
                    quick_xml::escape::resolve_html5_entity(entity).map(str::to_owned)
                };
                ch.map(|c| (c, end + 2))
            });
        match decoded {
            Some((text, used)) => {
                out.push_str(&text);
                rest = &rest[used..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
#[path = "parse_tests.rs"]
mod tests;
