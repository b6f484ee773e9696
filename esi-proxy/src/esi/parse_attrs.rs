//! The parser's attribute readers for the ESI 1.0 elements and `esi:assign`: `include` (and
//! `eval`), `assign`, `when`, `inline`; HTML attribute syntax and character references. Each
//! problem is reported with the tag's position and has the outcome the parser documents.

use quick_xml::events::attributes::Attributes;

use super::super::ast::{Assign, Include, OnError};
use super::super::expr::parse_expr;
use super::super::include_attrs::{AttrProblem, IncludeOptions};
use super::super::memo::Memo;
use super::super::vars::{VarName, VarString};
use super::{Event, ParseError, Parser, Pos, Problem};

impl Parser {
    pub(super) fn include(&mut self, raw: &[u8], pos: Pos) -> Result<Option<Include>, ParseError> {
        self.include_attrs("include", raw, pos)
    }

    /// Reads an `include`'s (or `eval`'s) attributes; `element` names it in problems.
    pub(super) fn include_attrs(
        &mut self,
        element: &'static str,
        raw: &[u8],
        pos: Pos,
    ) -> Result<Option<Include>, ParseError> {
        let attrs = match attributes(raw) {
            Ok(a) => a,
            Err(message) => {
                self.problem(pos, Problem::BadAttribute { element, message })?;
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
            options: IncludeOptions::default(),
            line: pos.line,
            col: pos.col,
            memo: Memo::default(),
        };
        let mut has_src = false;
        let mut notes = Vec::new();
        for (key, value) in attrs {
            if element == "eval" && key == "dca" {
                if value.trim().eq_ignore_ascii_case("esi") {
                    self.problem(pos, Problem::DcaEsi)?;
                }
                continue;
            }
            let assigned = |n: &str| self.is_assigned(n);
            match inc.options.read(&key, &value, &assigned, &mut notes) {
                Ok(true) => continue,
                Ok(false) => {}
                Err(problem) => {
                    notes.push(problem);
                    continue;
                }
            }
            match key.as_str() {
                "src" => {
                    inc.src = VarString::parse_in(&value, &|n| self.is_assigned(n));
                    has_src = true;
                }
                "alt" => inc.alt = Some(VarString::parse_in(&value, &|n| self.is_assigned(n))),
                "onerror" if value == "continue" => inc.onerror = OnError::Continue,
                "onerror" => self.problem(pos, Problem::BadOnError(value))?,
                "maxwait" => match value.trim().parse::<u64>() {
                    Ok(ms) => inc.maxwait_ms = Some(ms),
                    Err(_) => {
                        let message = format!("maxwait={value:?} is not a number of milliseconds");
                        self.problem(pos, Problem::BadAttribute { element, message })?;
                    }
                },
                // Only the exact value counts: `primary="false"` or a typo leaves it off.
                "primary" if element == "include" => {
                    inc.primary = value.trim().eq_ignore_ascii_case("true");
                }
                // Other attributes (other dialects') are ignored.
                _ => {}
            }
        }
        inc.options.finish(&mut notes);
        for note in notes {
            self.attr_problem(element, pos, note)?;
        }
        if !has_src || inc.src.as_constant() == Some("") {
            self.problem(pos, Problem::MissingSrc(element))?;
            return Ok(None);
        }
        Ok(Some(inc))
    }

    /// Reads an `<esi:param name=".." value=".."/>` into the open include.
    pub(super) fn param(&mut self, raw: &[u8], pos: Pos) -> Result<(), ParseError> {
        let attrs = match attributes(raw) {
            Ok(a) => a,
            Err(message) => {
                return self.problem(
                    pos,
                    Problem::BadAttribute {
                        element: "param",
                        message,
                    },
                )
            }
        };
        let mut name = None;
        let mut value = String::new();
        for (k, v) in attrs {
            match k.as_str() {
                "name" => name = Some(v),
                "value" => value = v,
                _ => {}
            }
        }
        let value = VarString::parse_in(&value, &|n| self.is_assigned(n));
        let Some(inc) = self.open_include.as_mut() else {
            return Ok(());
        };
        match inc.options.add_param(name.as_deref(), value) {
            Ok(()) => Ok(()),
            Err(problem) => self.attr_problem("include", pos, problem),
        }
    }

    /// Reports a misused include attribute: an error, or a warning when it still applies.
    fn attr_problem(
        &mut self,
        element: &'static str,
        pos: Pos,
        note: AttrProblem,
    ) -> Result<(), ParseError> {
        let problem = if note.warning {
            Problem::IncludeWarning(note.message)
        } else {
            Problem::BadAttribute {
                element,
                message: note.message,
            }
        };
        self.problem(pos, problem)
    }

    /// Reads `esi:assign`'s `name` (with an optional `{key}`) and `value`: None (reported) when
    /// the name is missing, malformed or a request variable's.
    #[allow(clippy::type_complexity)] // (name, key, value): read once, here.
    pub(super) fn assign_target(
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
    pub(super) fn assign_expr(
        &mut self,
        name: Box<str>,
        key: Option<Box<str>>,
        source: &str,
        pos: Pos,
    ) -> Result<Option<Assign>, ParseError> {
        match parse_expr(source, self.opts.max_expr_depth) {
            Ok(value) => Ok(Some({
                self.check_calls(&value, pos)?;
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

    pub(super) fn when(&mut self, raw: &[u8], pos: Pos) -> Result<Event, ParseError> {
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
            Ok(expr) => {
                self.check_calls(&expr, pos)?;
                Some(expr)
            }
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

    pub(super) fn inline(&mut self, raw: &[u8], pos: Pos) -> Result<Event, ParseError> {
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
pub(super) fn attributes(raw: &[u8]) -> Result<Vec<(String, String)>, String> {
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
