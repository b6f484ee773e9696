//! The parser's part for the control-flow elements past ESI 1.0: where `esi:foreach`,
//! `esi:break`, `esi:function`, `esi:return` and `esi:eval` may stand, their attributes, and
//! the check that every function an expression calls is a library one or defined before.

use super::super::ast::{Include, Return};
use super::super::expr::{parse_expr, Expr};
use super::super::func::Func;
use super::super::vars::VarName;
use super::{attributes, Event, Kind, ParseError, Parser, Pos, Problem};

impl Parser {
    /// Where the control-flow rules refuse `kind` at this point, in words; `None` when it may
    /// stand here. A `break` needs a loop (inside the open function, if any), a `return` a
    /// function; function bodies compute values, so they define no functions and fetch
    /// nothing.
    pub(super) fn flow_place(&self, kind: Kind) -> Option<&'static str> {
        match kind {
            Kind::Break if self.loops <= self.loops_at_function => Some("outside <esi:foreach>"),
            Kind::Return if !self.in_function => Some("outside <esi:function>"),
            Kind::Function | Kind::Include | Kind::Eval if self.in_function => {
                Some("inside <esi:function>")
            }
            _ => None,
        }
    }

    /// Reads `esi:foreach`'s `collection` and `item`: None (reported) when the collection is
    /// missing or does not parse, or the item is not a name one may set.
    pub(super) fn foreach(&mut self, raw: &[u8], pos: Pos) -> Result<Option<Event>, ParseError> {
        let Some(attrs) = self.flow_attributes("foreach", raw, pos)? else {
            return Ok(None);
        };
        let mut collection = None;
        let mut item = None;
        for (k, v) in attrs {
            match k.as_str() {
                "collection" => collection = Some(v),
                "item" => item = Some(v),
                _ => {}
            }
        }
        let Some(source) = collection else {
            let message = "without collection".to_owned();
            self.problem(
                pos,
                Problem::BadAttribute {
                    element: "foreach",
                    message,
                },
            )?;
            return Ok(None);
        };
        let item = match item {
            Some(name) => name,
            None => {
                self.problem(pos, Problem::DefaultItem)?;
                "item".to_owned()
            }
        };
        if !is_name(&item) {
            let message = format!("item={item:?} is not a variable name");
            self.problem(
                pos,
                Problem::BadAttribute {
                    element: "foreach",
                    message,
                },
            )?;
            return Ok(None);
        }
        if VarName::is_reserved(&item) {
            self.problem(pos, Problem::AssignToRequestVariable(item))?;
            return Ok(None);
        }
        let Some(collection) = self.flow_expr(&source, pos)? else {
            return Ok(None);
        };
        // The body (and what follows) may read the item.
        self.assigned.insert(item.as_str().into());
        Ok(Some(Event::ForeachStart {
            collection,
            source: source.into(),
            item: item.into(),
        }))
    }

    /// Reads `esi:function`'s `name`: None (reported) when missing, malformed or a library
    /// function's. The name is defined from here on (so the body may call itself).
    pub(super) fn function(&mut self, raw: &[u8], pos: Pos) -> Result<Option<Event>, ParseError> {
        let Some(attrs) = self.flow_attributes("function", raw, pos)? else {
            return Ok(None);
        };
        let name = attrs.into_iter().find(|(k, _)| k == "name").map(|(_, v)| v);
        let message = match name.as_deref() {
            None => "without name".to_owned(),
            Some(n) if !is_name(n) => format!("name={n:?} is not a function name"),
            Some(n) if Func::from_name(n).is_some() => {
                format!("name={n:?} is a library function")
            }
            Some(n) => {
                self.functions.insert(n.into());
                return Ok(Some(Event::FunctionStart { name: n.into() }));
            }
        };
        self.problem(
            pos,
            Problem::BadAttribute {
                element: "function",
                message,
            },
        )?;
        Ok(None)
    }

    /// Reads `esi:return`'s `value`: None (reported) when missing or when it does not parse.
    pub(super) fn return_value(
        &mut self,
        raw: &[u8],
        pos: Pos,
    ) -> Result<Option<Return>, ParseError> {
        let Some(attrs) = self.flow_attributes("return", raw, pos)? else {
            return Ok(None);
        };
        let Some(source) = attrs
            .into_iter()
            .find(|(k, _)| k == "value")
            .map(|(_, v)| v)
        else {
            let message = "without value".to_owned();
            self.problem(
                pos,
                Problem::BadAttribute {
                    element: "return",
                    message,
                },
            )?;
            return Ok(None);
        };
        Ok(self.flow_expr(&source, pos)?.map(|value| Return {
            value,
            source: source.into(),
        }))
    }

    /// Reads `esi:eval`'s attributes, those of `esi:include` (and `dca`).
    pub(super) fn eval(&mut self, raw: &[u8], pos: Pos) -> Result<Option<Include>, ParseError> {
        let eval = self.include_attrs("eval", raw, pos)?;
        if eval.is_some() {
            self.eval_seen = true;
        }
        Ok(eval)
    }

    /// Reports each call of a function that is neither the library's nor defined before.
    pub(super) fn check_calls(&mut self, expr: &Expr, pos: Pos) -> Result<(), ParseError> {
        let mut unknown = Vec::new();
        expr.user_calls(&mut |name| {
            if !self.functions.contains(name) && !unknown.iter().any(|n: &String| n == name) {
                unknown.push(name.to_owned());
            }
        });
        for name in unknown {
            let after_eval = self.eval_seen;
            self.problem(pos, Problem::UndefinedFunction { name, after_eval })?;
        }
        Ok(())
    }

    /// Parses an attribute's expression and checks its calls: None (reported) when it does not
    /// parse.
    fn flow_expr(&mut self, source: &str, pos: Pos) -> Result<Option<Expr>, ParseError> {
        match parse_expr(source, self.opts.max_expr_depth) {
            Ok(expr) => {
                self.check_calls(&expr, pos)?;
                Ok(Some(expr))
            }
            Err(e) => {
                self.problem(pos, Problem::BadExpression(e))?;
                Ok(None)
            }
        }
    }

    /// A tag's attributes, or None (reported) when they do not parse.
    fn flow_attributes(
        &mut self,
        element: &'static str,
        raw: &[u8],
        pos: Pos,
    ) -> Result<Option<Vec<(String, String)>>, ParseError> {
        match attributes(raw) {
            Ok(a) => Ok(Some(a)),
            Err(message) => {
                self.problem(pos, Problem::BadAttribute { element, message })?;
                Ok(None)
            }
        }
    }
}

/// `[A-Za-z_][A-Za-z0-9_]*`.
fn is_name(s: &str) -> bool {
    s.bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}
