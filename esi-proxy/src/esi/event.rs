//! The parser's output: one step of a document at a time, in document order, well nested
//! whatever the input. What the composer streams and the builder turns into a template.

use std::sync::Arc;

use bytes::Bytes;

use super::ast::{Assign, Include, Return};
use super::expr::Expr;
use super::vars::Segment;

/// One step of a parsed document, in document order. Block starts and ends always pair up and
/// nest as the language requires, whatever the input, so a consumer can trust the structure.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Literal bytes (a slice of the input).
    Text(Bytes),
    /// Text inside `esi:vars` that holds variables.
    Vars(Vec<Segment<Bytes>>),
    /// A complete `<esi:include>`.
    Include(Arc<Include>),
    /// A complete `<esi:assign>`.
    Assign(Assign),
    /// `<esi:try>`.
    TryStart,
    /// `<esi:attempt>`.
    AttemptStart,
    /// `</esi:attempt>`.
    AttemptEnd,
    /// `<esi:except>`.
    ExceptStart,
    /// `</esi:except>`.
    ExceptEnd,
    /// `</esi:try>`.
    TryEnd,
    /// `<esi:choose>`.
    ChooseStart,
    /// `<esi:when>`.
    WhenStart {
        /// The parsed test; `None` (never taken) when it did not parse in lenient mode.
        test: Option<Expr>,
        /// The test as written.
        source: Box<str>,
        /// `matchname`: the variable a `matches` in the test stores its captures under.
        match_name: Option<Box<str>>,
    },
    /// `</esi:when>`.
    WhenEnd,
    /// `<esi:otherwise>`.
    OtherwiseStart,
    /// `</esi:otherwise>`.
    OtherwiseEnd,
    /// `</esi:choose>`.
    ChooseEnd,
    /// `<esi:inline>`.
    InlineStart {
        /// The `name` attribute.
        name: Box<str>,
        /// The `fetchable` attribute.
        fetchable: bool,
    },
    /// `</esi:inline>`.
    InlineEnd,
    /// `<esi:foreach>`.
    ForeachStart {
        /// The collection's expression.
        collection: Expr,
        /// The expression as written.
        source: Box<str>,
        /// The item variable's name.
        item: Box<str>,
    },
    /// `</esi:foreach>`.
    ForeachEnd,
    /// `<esi:break/>`.
    Break,
    /// `<esi:function name="..">`.
    FunctionStart {
        /// The function's name.
        name: Box<str>,
    },
    /// `</esi:function>`.
    FunctionEnd,
    /// A complete `<esi:return/>`.
    Return(Return),
    /// A complete `<esi:eval/>`.
    Eval(Arc<Include>),
}
