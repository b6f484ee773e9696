//! The ESI language (1.0 and the extensions other processors accept): an incremental scanner
//! and parser from bytes to a [`Template`], and the evaluation of expressions, functions and
//! `$(VARIABLES)` against a request.
//! Pure: no I/O, no async, no allocation per literal byte (literal runs are `Bytes` slices).

pub mod ast;
pub mod build;
pub mod diag;
pub mod eval;
pub mod event;
pub mod expr;
pub mod flow;
pub mod func;
pub mod include_attrs;
mod md5;
pub mod memo;
pub mod parse;
pub mod scan;
mod ua;
pub mod vars;

pub use ast::{Assign, Foreach, Function, Include, Node, OnError, Return, Template, When};
pub use diag::{Diagnostic, ParseError, Problem, Severity};
pub use eval::{
    assign, render_html_in, render_url_in, Assigned, Bound, Budget, Captures, Context, Effect,
    Limits, Scope, UserFunction, Value,
};
pub use expr::{parse_expr, CmpOp, Expr, ExprError, TestOp};
pub use flow::Flow;
pub use func::Func;
pub use include_attrs::{Dca, HeaderEdit, HeaderOp, IncludeOptions, Param};
pub use memo::Memo;
pub use parse::{parse, Event, Mode, ParseOptions, Parser};
pub use vars::{
    CookieAccess, HeaderAccess, Request, Segment, VarError, VarName, VarPolicy, VarRef, VarString,
};
