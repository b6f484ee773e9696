//! `esi-proxy lint`: checks ESI markup the way fragment teams need it, reporting every problem
//! with its line and column, plus mistakes that parse but break pages (an include with no
//! fallback outside `esi:try`, ESI inside `esi:remove`, unknown variables, `esi:vars` output
//! where HTML-escaping does not protect it). Reads no network.

mod context;

use bytes::Bytes;

use context::{Context, Tracker};

use crate::esi::vars::header_name;
use crate::esi::{
    parse, Include, Node, OnError, ParseOptions, Segment, Severity, VarName, VarString,
};

/// One problem lint found.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Finding {
    /// Line, from 1.
    pub line: u32,
    /// Byte column, from 1.
    pub col: u32,
    /// Error (the markup is malformed) or warning.
    pub severity: Severity,
    /// What is wrong, in words.
    pub message: String,
}

/// Most findings reported per file; past this, one more says how many were left out.
const MAX_FINDINGS: usize = 1000;

/// Checks one document and returns its findings in document order.
pub fn lint(input: Bytes) -> Vec<Finding> {
    let opts = ParseOptions {
        max_diagnostics: MAX_FINDINGS,
        ..ParseOptions::default()
    };
    let input_copy = input.clone();
    let template = match parse(input, &opts) {
        Ok(t) => t,
        // Lenient mode records problems instead of failing; keep this total all the same.
        Err(d) => {
            return vec![Finding {
                line: d.line,
                col: d.col,
                severity: Severity::Error,
                message: d.problem.to_string(),
            }]
        }
    };
    let mut findings: Vec<Finding> = template
        .diagnostics
        .iter()
        .map(|d| Finding {
            line: d.line,
            col: d.col,
            severity: d.problem.severity(),
            message: d.problem.to_string(),
        })
        .collect();
    let mut assigned = std::collections::HashSet::new();
    collect_assigned(&template.nodes, &mut assigned);
    let mut walk = Walk {
        input: &input_copy,
        cursor: 0,
        html: Tracker::default(),
        assigned,
        primary: None,
    };
    check_nodes(&template.nodes, false, &mut walk, &mut findings);
    findings.sort();
    let kept = template.diagnostics.len();
    if template.problem_count > kept {
        findings.push(Finding {
            line: 0,
            col: 0,
            severity: Severity::Error,
            message: format!("{} more problems not shown", template.problem_count - kept),
        });
    }
    findings
}

/// The document as lint walks it: the literal bytes seen so far, in source order, and where.
struct Walk<'a> {
    input: &'a Bytes,
    /// Offset in `input` just past the last literal bytes fed.
    cursor: usize,
    html: Tracker,
    /// Names the document assigns (or captures into): variables, not unknown names.
    assigned: std::collections::HashSet<String>,
    /// Line of the page's `primary="true"` include, once one is seen.
    primary: Option<u32>,
}

/// The names `nodes` assign with `esi:assign` or name as a `when`'s `matchname`.
fn collect_assigned(nodes: &[Node], names: &mut std::collections::HashSet<String>) {
    for node in nodes {
        match node {
            Node::Assign(a) => {
                names.insert(a.name.to_string());
            }
            Node::Try { attempt, except } => {
                collect_assigned(attempt, names);
                collect_assigned(except, names);
            }
            Node::Choose { whens, otherwise } => {
                for w in whens {
                    if let Some(name) = &w.match_name {
                        names.insert(name.to_string());
                    }
                    collect_assigned(&w.body, names);
                }
                if let Some(o) = otherwise {
                    collect_assigned(o, names);
                }
            }
            Node::Inline { body, .. } => collect_assigned(body, names),
            Node::Foreach(f) => {
                names.insert(f.item.to_string());
                collect_assigned(&f.body, names);
            }
            Node::Function(f) => collect_assigned(&f.body, names),
            Node::Text(_)
            | Node::Vars(_)
            | Node::Include(_)
            | Node::Eval(_)
            | Node::Break
            | Node::Return(_) => {}
        }
    }
}

impl Walk<'_> {
    /// Feeds literal bytes (a slice of the input) to the HTML tracker.
    fn literal(&mut self, bytes: &Bytes) {
        let start = bytes.as_ptr() as usize;
        let base = self.input.as_ptr() as usize;
        if let Some(offset) = start.checked_sub(base).filter(|o| *o <= self.input.len()) {
            self.cursor = offset + bytes.len();
        }
        self.html.feed(bytes);
    }

    /// Line and column of the next `$(` at or after the cursor.
    fn position_of_next_var(&self) -> (u32, u32) {
        let rest = self.input.get(self.cursor..).unwrap_or_default();
        let at = self.cursor + memchr::memmem::find(rest, b"$(").unwrap_or(0);
        let before = self.input.get(..at).unwrap_or_default();
        let line = bytecount::count(before, b'\n') + 1;
        let col = at
            - before
                .iter()
                .rposition(|b| *b == b'\n')
                .map_or(0, |nl| nl + 1)
            + 1;
        (
            u32::try_from(line).unwrap_or(u32::MAX),
            u32::try_from(col).unwrap_or(u32::MAX),
        )
    }
}

fn check_nodes(nodes: &[Node], in_try: bool, walk: &mut Walk<'_>, findings: &mut Vec<Finding>) {
    for node in nodes {
        match node {
            Node::Include(inc) | Node::Eval(inc) => check_include(inc, in_try, walk, findings),
            Node::Foreach(f) => check_nodes(&f.body, in_try, walk, findings),
            Node::Function(f) => check_nodes(&f.body, in_try, walk, findings),
            Node::Try { attempt, except } => {
                check_nodes(attempt, true, walk, findings);
                check_nodes(except, in_try, walk, findings);
            }
            Node::Choose { whens, otherwise } => {
                for w in whens {
                    check_nodes(&w.body, in_try, walk, findings);
                }
                if let Some(o) = otherwise {
                    check_nodes(o, in_try, walk, findings);
                }
            }
            Node::Inline { body, .. } => check_nodes(body, in_try, walk, findings),
            Node::Text(text) => walk.literal(text),
            Node::Vars(segments) => check_vars_output(segments, walk, findings),
            // Checked when parsed: the name, the target, the expression, the placement.
            Node::Assign(_) | Node::Break | Node::Return(_) => {}
        }
    }
}

/// Warns for each variable in `esi:vars` text that lands where HTML-escaping does not make it
/// safe: a script body or event handler, or a URL attribute.
fn check_vars_output(
    segments: &[Segment<Bytes>],
    walk: &mut Walk<'_>,
    findings: &mut Vec<Finding>,
) {
    for segment in segments {
        match segment {
            Segment::Literal(text) => walk.literal(text),
            Segment::Var(var) => {
                let context = walk.html.context();
                walk.html.value();
                let why = match context {
                    Context::Text => continue,
                    Context::Script => "inside a <script>, <style> or event handler".to_owned(),
                    Context::Url(attr) => format!("inside the URL attribute {attr}"),
                };
                let (line, col) = walk.position_of_next_var();
                findings.push(Finding {
                    line,
                    col,
                    severity: Severity::Warning,
                    message: format!(
                        "{var} in <esi:vars> lands {why}: its value is HTML-escaped, which does not \
                         make it safe there"
                    ),
                });
            }
        }
    }
}

fn check_include(inc: &Include, in_try: bool, walk: &mut Walk<'_>, findings: &mut Vec<Finding>) {
    let at = |message: String| Finding {
        line: inc.line,
        col: inc.col,
        severity: Severity::Warning,
        message,
    };
    if inc.primary {
        // The proxy's rules for `primary` (README, "Primary fragments"): one per page, never
        // inside an attempt (whose failure the page's head could not undo).
        if let Some(first) = walk.primary {
            findings.push(Finding {
                severity: Severity::Error,
                ..at(format!(
                    "a second primary=\"true\" include (the first is on line {first}): \
                     a page has one primary fragment; this one is ignored"
                ))
            });
        } else if in_try {
            findings.push(at(
                "primary=\"true\" inside <esi:attempt> is ignored: a primary fragment \
                 decides the page's status, which an esi:except cannot take back"
                    .to_owned(),
            ));
        } else {
            walk.primary = Some(inc.line);
        }
    }
    if inc.alt.is_none() && inc.onerror == OnError::Fail && !in_try {
        findings.push(at(format!(
            "<esi:include src=\"{}\"> has no alt, no onerror=\"continue\" and no enclosing <esi:try>: \
             a failure leaves the page to the proxy's policy",
            inc.src
        )));
    }
    let opts = &inc.options;
    let strings = std::iter::once(&inc.src)
        .chain(inc.alt.as_ref())
        .chain(opts.entity.as_ref())
        .chain(opts.params.iter().map(|p| &p.value))
        .chain(opts.headers.iter().map(|e| &e.value));
    for text in strings {
        check_vars(text, &walk.assigned, &at, findings);
    }
}

fn check_vars(
    text: &VarString,
    assigned: &std::collections::HashSet<String>,
    at: &dyn Fn(String) -> Finding,
    findings: &mut Vec<Finding>,
) {
    for var in text.vars() {
        match &var.name {
            VarName::Unknown(name) if !assigned.contains(&**name) && &**name != "MATCHES" => {
                findings.push(at(format!("unknown variable $({name}) is always empty")));
            }
            VarName::Header(name)
                if matches!(
                    header_name(name).as_str(),
                    "authorization" | "proxy-authorization" | "cookie"
                ) =>
            {
                findings.push(at(format!(
                    "$({name}) is a credential: empty unless esi.header_names lists it by name,                      and always empty in a document from a host not trusted with credentials"
                )));
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A warning expected: line, column and a part of its message.
    type Want = (u32, u32, &'static str);

    /// (document, each warning about vars output)
    const CASES: &[(&str, &[Want])] = &[
        (
            "<esi:vars><p>Hi $(HTTP_COOKIE{name})</p></esi:vars>",
            &[],
        ),
        (
            "<esi:vars><script>\nvar u = '$(HTTP_COOKIE{name})';</script></esi:vars>",
            &[(2, 10, "inside a <script>")],
        ),
        (
            "<esi:vars><a href=\"/u/$(QUERY_STRING{id})\">x</a> $(HTTP_HOST)</esi:vars>",
            &[(1, 23, "inside the URL attribute href")],
        ),
        (
            "<script>var a = 1;</script><esi:vars><img src=$(HTTP_REFERER) alt=\"$(HTTP_HOST)\"></esi:vars>",
            &[(1, 47, "inside the URL attribute src")],
        ),
        (
            "<esi:vars><button onclick=\"go('$(HTTP_COOKIE{x})')\">go</button></esi:vars>",
            &[(1, 32, "inside a <script>, <style> or event handler")],
        ),
    ];

    /// Misuses of the expression language: each an error at its element, with a message.
    #[test]
    fn expression_misuse_is_an_error_with_a_message() {
        let cases: &[(&str, u32, u32, &str)] = &[
            (
                "<esi:choose>\n<esi:when test=\"$lowercase($(HTTP_HOST)) == 'a'\">x</esi:when></esi:choose>",
                2,
                1,
                "unknown function `$lowercase`",
            ),
            (
                "<esi:choose><esi:when test=\"$substr($(HTTP_HOST)) == 'a'\">x</esi:when></esi:choose>",
                1,
                13,
                "`$substr` takes 2 or 3 arguments, found 1",
            ),
            (
                "<esi:choose><esi:when test=\"$(HTTP_HOST) matches '(a'\">x</esi:when></esi:choose>",
                1,
                13,
                "bad regular expression",
            ),
            (
                "<esi:choose><esi:when test=\"[1, 2 has 1\">x</esi:when></esi:choose>",
                1,
                13,
                "missing `]`",
            ),
            (
                "<esi:choose><esi:when test=\"'a' has 'b' has 'c'\">x</esi:when></esi:choose>",
                1,
                13,
                "comparisons do not chain",
            ),
            ("a\n<!--esi <esi:include src=\"/x\"/>", 2, 1, "<!--esi is not closed"),
        ];
        for (doc, line, col, part) in cases {
            let errors: Vec<Finding> = lint(Bytes::from_static(doc.as_bytes()))
                .into_iter()
                .filter(|f| f.severity == Severity::Error)
                .collect();
            assert_eq!(errors.len(), 1, "{doc}: {errors:?}");
            assert_eq!((errors[0].line, errors[0].col), (*line, *col), "{doc}");
            assert!(
                errors[0].message.contains(part),
                "{doc}: {}",
                errors[0].message
            );
        }
    }

    #[test]
    fn vars_output_where_escaping_does_not_protect_is_warned() {
        for (doc, want) in CASES {
            let got: Vec<(u32, u32, String)> = lint(Bytes::from_static(doc.as_bytes()))
                .into_iter()
                .filter(|f| f.message.contains("in <esi:vars> lands"))
                .map(|f| (f.line, f.col, f.message))
                .collect();
            assert_eq!(got.len(), want.len(), "{doc}: {got:?}");
            for ((line, col, message), (want_line, want_col, part)) in got.iter().zip(*want) {
                assert_eq!((line, col), (want_line, want_col), "{doc}: {message}");
                assert!(message.contains(part), "{doc}: {message}");
                assert_eq!(
                    lint(Bytes::from_static(doc.as_bytes()))
                        .iter()
                        .filter(|f| f.severity == Severity::Error)
                        .count(),
                    0,
                    "{doc}: only warnings"
                );
            }
        }
    }

    /// Every misuse of the include attributes has its message; a variable the document
    /// assigns is no unknown variable in a `src`; a credential header variable is warned.
    #[test]
    fn include_attribute_misuse_has_a_message() {
        let cases: &[(&str, Severity, &str)] = &[
            ("<esi:include src=\"/a\" dca=\"xml\" onerror=\"continue\"/>", Severity::Error, "dca=\"xml\" is not \"none\" or \"esi\""),
            ("<esi:include src=\"/a\" ttl=\"2 hours\" onerror=\"continue\"/>", Severity::Error, "is not a duration such as"),
            ("<esi:include src=\"/a\" no-store=\"1\" onerror=\"continue\"/>", Severity::Error, "no-store=\"1\" is not \"on\" or \"off\""),
            ("<esi:include src=\"/a\" method=\"PUT\" onerror=\"continue\"/>", Severity::Error, "method=\"PUT\" is not GET or POST"),
            ("<esi:include src=\"/a\" setheaders=\"Host: x\" onerror=\"continue\"/>", Severity::Error, "Host is a header only the proxy sets"),
            ("<esi:include src=\"/a\" appendheaders=\"X-Forwarded-For: 1.2.3.4\" onerror=\"continue\"/>", Severity::Error, "only the proxy sets"),
            ("<esi:include src=\"/a\" setheaders=\"Authorization: $(HTTP_COOKIE{t})\" onerror=\"continue\"/>", Severity::Warning, "sent only to hosts trusted with credentials"),
            ("<esi:include src=\"/a\" entity=\"a=1\" onerror=\"continue\"/>", Severity::Warning, "entity is sent only with method"),
            ("<esi:include src=\"/a?t=$(HTTP_AUTHORIZATION)\" onerror=\"continue\"/>", Severity::Warning, "$(HTTP_AUTHORIZATION) is a credential"),
            ("<esi:include src=\"/a\" onerror=\"continue\"><esi:param name=\"a\" value=\"$(NOPE)\"/></esi:include>", Severity::Warning, "unknown variable $(NOPE)"),
        ];
        for (doc, severity, part) in cases {
            let findings = lint(Bytes::from_static(doc.as_bytes()));
            assert_eq!(findings.len(), 1, "{doc}: {findings:?}");
            assert_eq!(findings[0].severity, *severity, "{doc}");
            assert!(
                findings[0].message.contains(part),
                "{doc}: {}",
                findings[0].message
            );
        }
        let fine = "<esi:assign name=\"pid\" value=\"'7'\"/><esi:include src=\"/p/$(pid)?d=$(HTTP_X_DEVICE)\" onerror=\"continue\"><esi:param name=\"id\" value=\"$(pid)\"/></esi:include>";
        let findings = lint(Bytes::from_static(fine.as_bytes()));
        assert!(findings.is_empty(), "{findings:?}");
    }
}
