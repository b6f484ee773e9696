//! `esi-proxy lint`: checks ESI markup the way fragment teams need it, reporting every problem
//! with its line and column, plus mistakes that parse but break pages (an include with no
//! fallback outside `esi:try`, ESI inside `esi:remove`, unknown variables). Reads no network.

use bytes::Bytes;

use crate::esi::{parse, Include, Node, OnError, ParseOptions, Severity, VarName, VarString};

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
    check_nodes(&template.nodes, false, &mut findings);
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

fn check_nodes(nodes: &[Node], in_try: bool, findings: &mut Vec<Finding>) {
    for node in nodes {
        match node {
            Node::Include(inc) => check_include(inc, in_try, findings),
            Node::Try { attempt, except } => {
                check_nodes(attempt, true, findings);
                check_nodes(except, in_try, findings);
            }
            Node::Choose { whens, otherwise } => {
                for w in whens {
                    check_nodes(&w.body, in_try, findings);
                }
                if let Some(o) = otherwise {
                    check_nodes(o, in_try, findings);
                }
            }
            Node::Inline { body, .. } => check_nodes(body, in_try, findings),
            Node::Text(_) | Node::Vars(_) => {}
        }
    }
}

fn check_include(inc: &Include, in_try: bool, findings: &mut Vec<Finding>) {
    let at = |message: String| Finding {
        line: inc.line,
        col: inc.col,
        severity: Severity::Warning,
        message,
    };
    if inc.alt.is_none() && inc.onerror == OnError::Fail && !in_try {
        findings.push(at(format!(
            "<esi:include src=\"{}\"> has no alt, no onerror=\"continue\" and no enclosing <esi:try>: \
             a failure leaves the page to the proxy's policy",
            inc.src
        )));
    }
    for url in std::iter::once(&inc.src).chain(inc.alt.as_ref()) {
        check_vars(url, &at, findings);
    }
}

fn check_vars(url: &VarString, at: &dyn Fn(String) -> Finding, findings: &mut Vec<Finding>) {
    for var in url.vars() {
        if let VarName::Unknown(name) = &var.name {
            findings.push(at(format!("unknown variable $({name}) is always empty")));
        }
    }
}
