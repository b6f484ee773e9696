//! The ESI 1.0 language: an incremental scanner and parser from bytes to a [`Template`], and the
//! evaluation of `esi:when` tests and `$(VARIABLES)` against a request.
//! Pure: no I/O, no async, no allocation per literal byte (literal runs are `Bytes` slices).

pub mod ast;
pub mod build;
pub mod diag;
pub mod event;
pub mod expr;
pub mod parse;
pub mod scan;
pub mod vars;

pub use ast::{Include, Node, OnError, Template, When};
pub use diag::{Diagnostic, ParseError, Problem, Severity};
pub use expr::{parse_expr, CmpOp, Expr, ExprError};
pub use parse::{parse, Event, Mode, ParseOptions, Parser};
pub use vars::{CookieAccess, Request, Segment, VarError, VarName, VarPolicy, VarRef, VarString};
