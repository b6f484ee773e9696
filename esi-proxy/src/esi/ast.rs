//! The parsed form of an ESI document, in the spec's words, and its reference evaluation against
//! a request with a synchronous fragment source (the proxy's composer does the same, async).
//! Literal runs are `Bytes` slices of the fetched body. No I/O.

use bytes::Bytes;

use super::diag::Diagnostic;
use super::expr::Expr;
use super::vars::{render_html, render_url, Request, Segment, VarPolicy, VarString};

/// A parsed document: literal runs and ESI instructions, in document order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Template {
    /// The top-level nodes.
    pub nodes: Vec<Node>,
    /// Problems met in lenient mode and the outcome applied (at most `max_diagnostics` kept).
    pub diagnostics: Vec<Diagnostic>,
    /// How many problems were met in all, including those not kept.
    pub problem_count: usize,
}

/// One piece of a document.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    /// Literal bytes, written as they are.
    Text(Bytes),
    /// Text inside `esi:vars` holding variables: literals and values (HTML-escaped on output).
    Vars(Vec<Segment<Bytes>>),
    /// `<esi:include>`.
    Include(Include),
    /// `<esi:try>`: the attempt is used unless one of its includes fails, else the except.
    Try {
        /// `<esi:attempt>` content.
        attempt: Vec<Node>,
        /// `<esi:except>` content.
        except: Vec<Node>,
    },
    /// `<esi:choose>`: the first `when` whose test is true, else `otherwise`.
    Choose {
        /// The `<esi:when>` branches in order.
        whens: Vec<When>,
        /// `<esi:otherwise>` content, if present.
        otherwise: Option<Vec<Node>>,
    },
    /// `<esi:assign>`: sets a variable for the rest of the document.
    Assign(Assign),
    /// `<esi:inline>`: a fragment carried inside the document; its content renders in place.
    Inline {
        /// The `name` attribute: the URL the fragment stands for.
        name: Box<str>,
        /// The `fetchable` attribute (`yes` / `no`).
        fetchable: bool,
        /// The fragment's content.
        body: Vec<Node>,
    },
}

/// `<esi:assign name=".." value=".."/>` or `<esi:assign name="..">expression</esi:assign>`.
#[derive(Debug, Clone, PartialEq)]
pub struct Assign {
    /// The variable set.
    pub name: Box<str>,
    /// `name="x{key}"`: the list index or dictionary key set, unquoted.
    pub key: Option<Box<str>>,
    /// The value's expression.
    pub value: Expr,
    /// The expression as written, for logs.
    pub source: Box<str>,
}

/// What happens when an include fails and has no usable `alt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnError {
    /// The failure propagates: to the enclosing `esi:try`, else the proxy's policy applies.
    #[default]
    Fail,
    /// `onerror="continue"`: the include yields nothing.
    Continue,
}

/// `<esi:include src=".." alt=".." onerror="continue" maxwait=".." primary="true"/>`.
#[derive(Debug, Clone, PartialEq)]
pub struct Include {
    /// The fragment's URL, possibly relative, possibly holding variables.
    pub src: VarString,
    /// The URL tried when `src` fails.
    pub alt: Option<VarString>,
    /// What a failure yields when `alt` fails too.
    pub onerror: OnError,
    /// `maxwait` in milliseconds, when the tag sets a deadline of its own.
    pub maxwait_ms: Option<u64>,
    /// `primary="true"`: this fragment's status, `Location` and (from a trusted host)
    /// `Set-Cookie` become the page's. Other ESI processors ignore the attribute.
    pub primary: bool,
    /// Line of the tag.
    pub line: u32,
    /// Byte column of the tag.
    pub col: u32,
}

/// `<esi:when test="..">`.
#[derive(Debug, Clone, PartialEq)]
pub struct When {
    /// The parsed test; `None` when it did not parse (lenient mode), which counts as false.
    pub test: Option<Expr>,
    /// The test as written, for logs and debug output.
    pub source: Box<str>,
    /// `matchname`: the variable a `matches` in the test stores its captures under (default
    /// `MATCHES`).
    pub match_name: Option<Box<str>>,
    /// The branch content.
    pub body: Vec<Node>,
}

/// Why a synchronous render could not produce an include's content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// The fragment source failed for this URL and nothing caught it.
    #[error("include {url} failed")]
    IncludeFailed {
        /// The URL that failed last (`alt` if it was tried).
        url: String,
    },
}

// === impl Template ===

impl Template {
    /// Renders the template for `req`, asking `fetch` for each include's URL (after variable
    /// substitution), with the spec's fallbacks: `alt`, then `onerror="continue"`, then the
    /// enclosing `esi:try`'s except.
    ///
    /// # Errors
    /// An include that fails with no fallback and no enclosing `esi:try`.
    pub fn render(
        &self,
        req: &Request,
        policy: &VarPolicy,
        fetch: &mut dyn FnMut(&str) -> Option<Bytes>,
        out: &mut Vec<u8>,
    ) -> Result<(), RenderError> {
        render_nodes(&self.nodes, req, policy, fetch, out)
    }

    /// Whether the document holds no ESI instruction at all (only literal text).
    pub fn is_static(&self) -> bool {
        self.nodes.iter().all(|n| matches!(n, Node::Text(_)))
    }

    /// Every include in document order, nested ones included.
    pub fn includes(&self) -> Vec<&Include> {
        let mut found = Vec::new();
        collect_includes(&self.nodes, &mut found);
        found
    }
}

fn collect_includes<'a>(nodes: &'a [Node], found: &mut Vec<&'a Include>) {
    for node in nodes {
        match node {
            Node::Include(inc) => found.push(inc),
            Node::Try { attempt, except } => {
                collect_includes(attempt, found);
                collect_includes(except, found);
            }
            Node::Choose { whens, otherwise } => {
                for w in whens {
                    collect_includes(&w.body, found);
                }
                if let Some(o) = otherwise {
                    collect_includes(o, found);
                }
            }
            Node::Inline { body, .. } => collect_includes(body, found),
            Node::Text(_) | Node::Vars(_) | Node::Assign(_) => {}
        }
    }
}

/// Picks the branch of a `choose` that applies to `req`: the first true `when`, else `otherwise`.
pub fn choose_branch<'a>(
    whens: &'a [When],
    otherwise: Option<&'a Vec<Node>>,
    req: &Request,
    policy: &VarPolicy,
) -> Option<&'a [Node]> {
    whens
        .iter()
        .find(|w| w.test.as_ref().is_some_and(|t| t.eval(req, policy)))
        .map(|w| w.body.as_slice())
        .or(otherwise.map(Vec::as_slice))
}

fn render_nodes(
    nodes: &[Node],
    req: &Request,
    policy: &VarPolicy,
    fetch: &mut dyn FnMut(&str) -> Option<Bytes>,
    out: &mut Vec<u8>,
) -> Result<(), RenderError> {
    for node in nodes {
        match node {
            Node::Text(b) => out.extend_from_slice(b),
            Node::Vars(segments) => render_html(segments, req, policy, out),
            Node::Include(inc) => render_include(inc, req, policy, fetch, out)?,
            Node::Try { attempt, except } => {
                // The attempt is buffered: its output is used only if it completes.
                let mut buf = Vec::new();
                match render_nodes(attempt, req, policy, fetch, &mut buf) {
                    Ok(()) => out.extend_from_slice(&buf),
                    Err(_) => render_nodes(except, req, policy, fetch, out)?,
                }
            }
            Node::Choose { whens, otherwise } => {
                if let Some(branch) = choose_branch(whens, otherwise.as_ref(), req, policy) {
                    render_nodes(branch, req, policy, fetch, out)?;
                }
            }
            Node::Inline { body, .. } => render_nodes(body, req, policy, fetch, out)?,
            // The reference render reads request variables only.
            Node::Assign(_) => {}
        }
    }
    Ok(())
}

fn render_include(
    inc: &Include,
    req: &Request,
    policy: &VarPolicy,
    fetch: &mut dyn FnMut(&str) -> Option<Bytes>,
    out: &mut Vec<u8>,
) -> Result<(), RenderError> {
    let mut last_url = String::new();
    for url in std::iter::once(&inc.src).chain(inc.alt.as_ref()) {
        match render_url(url, req, policy) {
            Ok(u) => {
                if let Some(body) = fetch(&u) {
                    out.extend_from_slice(&body);
                    return Ok(());
                }
                last_url = u;
            }
            Err(e) => last_url = e.to_string(),
        }
    }
    match inc.onerror {
        OnError::Continue => Ok(()),
        OnError::Fail => Err(RenderError::IncludeFailed { url: last_url }),
    }
}
