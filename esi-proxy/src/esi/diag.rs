//! Diagnostics of the ESI language: what a problem in markup is, how serious, and where.
//! Shared by the parser that finds them and the templates and lint that report them.

use super::expr::ExprError;

/// How serious a problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Not wrong, but probably not what was meant.
    Warning,
    /// Malformed ESI.
    Error,
}

/// A problem in ESI markup.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// An `esi:` element the language does not define.
    #[error("unknown element <esi:{0}>")]
    UnknownElement(String),
    /// A block still open at the end of input.
    #[error("<esi:{0}> is not closed")]
    Unclosed(&'static str),
    /// An end tag with no open element of that name.
    #[error("</esi:{0}> has no matching start tag")]
    StrayEndTag(String),
    /// An end tag for an element that is open, but not innermost.
    #[error("</esi:{found}> while <esi:{open}> is still open")]
    MismatchedEndTag {
        /// The innermost open element.
        open: &'static str,
        /// The end tag met.
        found: &'static str,
    },
    /// `<esi:include>` (or `esi:eval`) without `src`.
    #[error("<esi:{0}> without src")]
    MissingSrc(&'static str),
    /// `<esi:when>` without `test`.
    #[error("<esi:when> without test")]
    MissingTest,
    /// A `test` that does not parse.
    #[error("bad test expression: {0}")]
    BadExpression(ExprError),
    /// An element where its parent does not allow it.
    #[error("<esi:{element}> is not allowed {place}")]
    Misplaced {
        /// The element.
        element: &'static str,
        /// Where it was, in words.
        place: &'static str,
    },
    /// Nesting deeper than `max_depth`.
    #[error("nesting deeper than {0} ESI elements")]
    TooDeep(usize),
    /// An ESI tag longer than `max_tag_bytes`.
    #[error("ESI tag longer than {0} bytes")]
    TagTooLong(usize),
    /// An ESI tag cut off by the end of input.
    #[error("ESI tag not terminated by '>'")]
    UnterminatedTag,
    /// `<!--esi` without `-->`.
    #[error("<!--esi is not closed by -->")]
    UnclosedEsiComment,
    /// Non-blank text directly inside `try` or `choose`.
    #[error("text directly inside <esi:{0}> is dropped")]
    TextInBlock(&'static str),
    /// A `try` without one of its two branches.
    #[error("<esi:try> without <esi:{0}>")]
    TryWithout(&'static str),
    /// A `choose` without any `when`.
    #[error("<esi:choose> without <esi:when>")]
    EmptyChoose,
    /// `esi:assign` naming a request variable.
    #[error("<esi:assign> cannot set the request variable $({0})")]
    AssignToRequestVariable(String),
    /// Attributes that do not parse.
    #[error("bad attributes on <esi:{element}>: {message}")]
    BadAttribute {
        /// The element.
        element: &'static str,
        /// What is wrong.
        message: String,
    },
    /// An `onerror` other than `continue`.
    #[error("onerror={0:?} is ignored: only \"continue\" is defined")]
    BadOnError(String),
    /// An `esi:vars` text run longer than `max_vars_bytes`.
    #[error("text inside <esi:vars> longer than {0} bytes")]
    VarsTooLong(usize),
    /// An include attribute that applies, but likely not as meant (an `entity` on a GET, a
    /// credential header that only trusted hosts receive ...).
    #[error("<esi:include>: {0}")]
    IncludeWarning(String),
    /// ESI markup inside `esi:remove`, which is dropped unprocessed.
    #[error("ESI markup inside <esi:remove> is dropped unprocessed")]
    EsiInsideRemove,
    /// A call of a function the document has not defined before the call. After an
    /// `esi:eval` (whose fragment may define it) only a warning.
    #[error("unknown function `${name}`: not a library function, nor defined by an earlier <esi:function>{}", if *.after_eval { " (an earlier <esi:eval> may define it)" } else { "" })]
    UndefinedFunction {
        /// The name called.
        name: String,
        /// Whether an `esi:eval` came before the call.
        after_eval: bool,
    },
    /// `esi:foreach` without `item`: the items are in `$(item)`.
    #[error("<esi:foreach> without item: each item is in $(item)")]
    DefaultItem,
    /// `dca="esi"` on `esi:eval`, which runs as `dca="none"`.
    #[error("dca=\"esi\" on <esi:eval> is processed as dca=\"none\": the fragment runs once, in this document's scope")]
    DcaEsi,
}

/// A problem and where it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{line}:{col}: {problem}")]
pub struct Diagnostic {
    /// Line, from 1.
    pub line: u32,
    /// Byte column, from 1.
    pub col: u32,
    /// What is wrong.
    pub problem: Problem,
}

/// A strict-mode parse failure: the first problem met, with its line and column.
pub type ParseError = Diagnostic;

// === impl Problem ===

impl Problem {
    /// Whether the problem makes the markup malformed or is only suspicious.
    pub fn severity(&self) -> Severity {
        match self {
            Problem::BadOnError(_)
            | Problem::EsiInsideRemove
            | Problem::IncludeWarning(_)
            | Problem::DefaultItem
            | Problem::DcaEsi
            | Problem::UndefinedFunction {
                after_eval: true, ..
            } => Severity::Warning,
            _ => Severity::Error,
        }
    }
}
