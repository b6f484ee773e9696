//! Preload hints in `Link` headers (RFC 8288): which links count (`rel` preload, preconnect,
//! modulepreload), how a value from an upstream is parsed, checked and written again from its
//! parts alone, and [`HintSet`], the ordered, deduplicated set under a count and a byte bound.
//! Pure: no I/O, no config; the caller says where a set goes.

use std::collections::HashSet;

use http::header::{self, HeaderMap};

/// The `rel` tokens that make a link a hint, lowercase.
pub const HINT_RELS: [&str; 3] = ["preload", "preconnect", "modulepreload"];

/// A `Link` header value longer than this is not read at all: no real page needs one, and
/// parsing it would be work a hostile upstream chose.
pub const MAX_VALUE_BYTES: usize = 8 * 1024;

/// The longest URI reference a hint may carry.
pub const MAX_URI_BYTES: usize = 2048;

/// The target attributes a hint keeps (lowercase); every other parameter is left out, since
/// nothing the browser does with a preload reads it.
const KEPT_PARAMS: [&str; 9] = [
    "as",
    "crossorigin",
    "type",
    "media",
    "integrity",
    "fetchpriority",
    "referrerpolicy",
    "imagesrcset",
    "imagesizes",
];

/// What reading the `Link` headers of one response found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// The hints, each written as one `Link` value, in header order.
    pub hints: Vec<String>,
    /// Links or header values refused: not valid RFC 8288, a URI reference with characters it
    /// may not hold, a value over [`MAX_VALUE_BYTES`] or not visible ASCII.
    pub invalid: usize,
}

/// Why [`HintSet::add`] left a hint out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The set holds it already.
    Duplicate,
    /// The set is at its count bound.
    Count,
    /// The hint would take the set past its byte bound.
    Bytes,
}

/// Hints in the order they were added, each once, at most `max_links` of them and
/// `max_bytes` of values.
#[derive(Debug, Clone)]
pub struct HintSet {
    values: Vec<String>,
    seen: HashSet<String>,
    bytes: usize,
    max_links: usize,
    max_bytes: usize,
}

/// One link while it is read.
#[derive(Default)]
struct Link {
    uri: String,
    rels: Vec<&'static str>,
    params: Vec<(&'static str, Option<String>)>,
    seen: Vec<String>,
    anchored: bool,
}

/// The hints among the `Link` headers of `headers`.
pub fn parse_hints(headers: &HeaderMap) -> Parsed {
    let mut parsed = Parsed::default();
    for value in headers.get_all(header::LINK) {
        let bytes = value.as_bytes();
        let visible = bytes
            .iter()
            .all(|b| matches!(b, b' ' | b'\t' | 0x21..=0x7e));
        if bytes.len() > MAX_VALUE_BYTES || !visible {
            parsed.invalid += 1;
            continue;
        }
        // Visible ASCII, so valid UTF-8.
        let text = std::str::from_utf8(bytes).unwrap_or_default();
        parse_value(text, &mut parsed);
    }
    parsed
}

/// Reads one header value: a list of links. A syntax error ends the value there (what came
/// before it stands): past it, where one link ends is a guess.
fn parse_value(text: &str, parsed: &mut Parsed) {
    let mut rest = text;
    loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            return;
        }
        match parse_link(rest) {
            Some((link, after)) => {
                rest = after;
                match link.hint() {
                    Ok(Some(hint)) => parsed.hints.push(hint),
                    Ok(None) => {}
                    Err(()) => parsed.invalid += 1,
                }
            }
            None => {
                parsed.invalid += 1;
                return;
            }
        }
    }
}

/// One `<uri> *(; param)` from the start of `s`, and what follows it (at a `,` or the end).
fn parse_link(s: &str) -> Option<(Link, &str)> {
    let s = s.strip_prefix('<')?;
    let end = s.find('>')?;
    let mut link = Link {
        uri: s[..end].to_owned(),
        ..Link::default()
    };
    let mut rest = &s[end + 1..];
    loop {
        rest = rest.trim_start_matches([' ', '\t']);
        if rest.is_empty() || rest.starts_with(',') {
            return Some((link, rest));
        }
        rest = rest.strip_prefix(';')?.trim_start_matches([' ', '\t']);
        let name_len = rest.find(|c: char| !is_tchar(c)).unwrap_or(rest.len());
        if name_len == 0 {
            return None;
        }
        let name = rest[..name_len].to_ascii_lowercase();
        rest = rest[name_len..].trim_start_matches([' ', '\t']);
        let value = match rest.strip_prefix('=') {
            Some(after) => {
                let after = after.trim_start_matches([' ', '\t']);
                let (value, after) = if after.starts_with('"') {
                    quoted(after)?
                } else {
                    let len = after.find(|c: char| !is_tchar(c)).unwrap_or(after.len());
                    if len == 0 {
                        return None;
                    }
                    (after[..len].to_owned(), &after[len..])
                };
                rest = after;
                Some(value)
            }
            None => None,
        };
        link.param(name, value);
    }
}

/// A quoted-string at the start of `s` (which starts with `"`), unescaped, and what follows.
fn quoted(s: &str) -> Option<(String, &str)> {
    let mut out = String::new();
    let mut chars = s.char_indices().skip(1);
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((out, &s[i + 1..])),
            '\\' => out.push(chars.next()?.1),
            c => out.push(c),
        }
    }
    None
}

/// A `tchar` of RFC 9110 section 5.6.2.
fn is_tchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

/// Whether `uri` is a URI reference of RFC 3986 the proxy passes on: only its characters
/// (unreserved, reserved, `%` with two hex digits), not empty, at most [`MAX_URI_BYTES`].
fn valid_uri(uri: &str) -> bool {
    let b = uri.as_bytes();
    if b.is_empty() || b.len() > MAX_URI_BYTES {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'%' {
            let hex = |j: usize| b.get(j).is_some_and(u8::is_ascii_hexdigit);
            if !hex(i + 1) || !hex(i + 2) {
                return false;
            }
            i += 3;
            continue;
        }
        let allowed = c.is_ascii_alphanumeric() || b"-._~:/?#[]@!$&'()*+,;=".contains(&c);
        if !allowed {
            return false;
        }
        i += 1;
    }
    true
}

/// `value` as a parameter value: a token when it is one, else a quoted-string.
fn write_value(out: &mut String, value: &str) {
    if !value.is_empty() && value.chars().all(is_tchar) {
        out.push_str(value);
        return;
    }
    out.push('"');
    for c in value.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

// === impl Link ===

impl Link {
    /// Takes one parameter: the first of each name counts (RFC 8288 section 3.3 for `rel`).
    fn param(&mut self, name: String, value: Option<String>) {
        if self.seen.contains(&name) {
            return;
        }
        match name.as_str() {
            "rel" => {
                for token in value
                    .as_deref()
                    .unwrap_or_default()
                    .split_ascii_whitespace()
                {
                    let token = token.to_ascii_lowercase();
                    if let Some(rel) = HINT_RELS.iter().find(|r| **r == token) {
                        if !self.rels.contains(rel) {
                            self.rels.push(rel);
                        }
                    }
                }
            }
            // A link about another resource than the response is not a hint for this page.
            "anchor" => self.anchored = true,
            other => {
                if let Some(kept) = KEPT_PARAMS.iter().find(|p| **p == other) {
                    self.params.push((kept, value));
                }
            }
        }
        self.seen.push(name);
    }

    /// The link written as one `Link` value when it is a hint; `Ok(None)` when it is not one
    /// (another relation, an anchor); `Err` when it is one the proxy will not pass on.
    fn hint(self) -> Result<Option<String>, ()> {
        if self.rels.is_empty() || self.anchored {
            return Ok(None);
        }
        if !valid_uri(&self.uri) {
            return Err(());
        }
        let mut out = format!("<{}>; rel=", self.uri);
        write_value(&mut out, &self.rels.join(" "));
        for (name, value) in &self.params {
            out.push_str("; ");
            out.push_str(name);
            if let Some(value) = value {
                // Parsed from visible ASCII; written back escaped, so it stays one parameter.
                out.push('=');
                write_value(&mut out, value);
            }
        }
        Ok(Some(out))
    }
}

// === impl HintSet ===

impl HintSet {
    /// An empty set under these bounds.
    pub fn new(max_links: usize, max_bytes: usize) -> Self {
        Self {
            values: Vec::new(),
            seen: HashSet::new(),
            bytes: 0,
            max_links,
            max_bytes,
        }
    }

    /// Adds `hint` at the end unless the set holds it or it would pass a bound.
    ///
    /// # Errors
    /// Why it was left out.
    pub fn add(&mut self, hint: &str) -> Result<(), Refused> {
        if self.seen.contains(hint) {
            return Err(Refused::Duplicate);
        }
        if self.values.len() >= self.max_links {
            return Err(Refused::Count);
        }
        if self.bytes + hint.len() > self.max_bytes {
            return Err(Refused::Bytes);
        }
        self.bytes += hint.len();
        self.seen.insert(hint.to_owned());
        self.values.push(hint.to_owned());
        Ok(())
    }

    /// Whether the set holds `hint`.
    pub fn contains(&self, hint: &str) -> bool {
        self.seen.contains(hint)
    }

    /// The hints, in the order added.
    pub fn values(&self) -> &[String] {
        &self.values
    }

    /// The number of hints.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn parse(values: &[&str]) -> Parsed {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(
                header::LINK,
                HeaderValue::from_bytes(v.as_bytes()).expect("test value"),
            );
        }
        parse_hints(&headers)
    }

    #[test]
    fn link_values() {
        let cases: &[(&[&str], &[&str], usize)] = &[
            (
                &["</a.css>; rel=preload; as=style"],
                &["</a.css>; rel=preload; as=style"],
                0,
            ),
            // Several links in one value, quoted parameters, case and spaces.
            (
                &[
                    r#"</a.js>;REL="ModulePreload", <https://cdn.test>; rel = "preconnect" ; crossorigin"#,
                ],
                &[
                    "</a.js>; rel=modulepreload",
                    "<https://cdn.test>; rel=preconnect; crossorigin",
                ],
                0,
            ),
            // Several rel tokens: the hint ones are kept; other relations are not hints.
            (
                &[r#"</x.css>; rel="stylesheet preload"; as=style, </c>; rel=canonical"#],
                &["</x.css>; rel=preload; as=style"],
                0,
            ),
            // The first rel counts; unknown parameters go; anchored links are not hints.
            (
                &[
                    r#"</f.woff2>; rel=preload; rel=canonical; as=font; foo=bar; type="font/woff2""#,
                    r#"</y>; rel=preload; anchor="/other""#,
                ],
                &[r#"</f.woff2>; rel=preload; as=font; type="font/woff2""#],
                0,
            ),
            // A quoted value with an escaped quote is written back escaped.
            (
                &[r#"</m.css>; rel=preload; as=style; media="(min-width: \"1\")""#],
                &[r#"</m.css>; rel=preload; as=style; media="(min-width: \"1\")""#],
                0,
            ),
            // Characters a URI may not hold, a missing `>`, a stray token: refused and counted.
            (
                &[
                    "</a b>; rel=preload",
                    "</ok>; rel=preload, <broken; rel=preload",
                ],
                &["</ok>; rel=preload"],
                2,
            ),
            (
                &[
                    r#"</a">; rel=preload"#,
                    "</%zz>; rel=preload",
                    "<>; rel=preload",
                ],
                &[],
                3,
            ),
            (&["</a>; rel=preload; junk here"], &[], 1),
            (&[r#"</a>; rel="preload"#], &[], 1),
        ];
        for (values, want, invalid) in cases {
            let got = parse(values);
            assert_eq!(got.hints, *want, "{values:?}");
            assert_eq!(got.invalid, *invalid, "{values:?}");
        }
    }

    #[test]
    fn hostile_values_are_refused_whole() {
        let huge = format!("</a>; rel=preload; as=\"{}\"", "x".repeat(MAX_VALUE_BYTES));
        let long_uri = format!("</{}>; rel=preload", "a".repeat(MAX_URI_BYTES));
        let got = parse(&[&huge, &long_uri, "</b>; rel=preload; as=\"caf\u{e9}\""]);
        assert_eq!(got.hints, Vec::<String>::new());
        assert_eq!(got.invalid, 3);
    }

    #[test]
    fn sets_keep_order_drop_duplicates_and_hold_their_bounds() {
        let mut set = HintSet::new(2, 40);
        assert_eq!(set.add("</a>; rel=preload"), Ok(()));
        assert_eq!(set.add("</a>; rel=preload"), Err(Refused::Duplicate));
        assert_eq!(
            set.add("</bbbbbbbbbbbbbbbbbbbbbbbbb>; rel=preload"),
            Err(Refused::Bytes)
        );
        assert_eq!(set.add("</b>; rel=preload"), Ok(()));
        assert_eq!(set.add("</c>; rel=preload"), Err(Refused::Count));
        assert_eq!(set.values(), ["</a>; rel=preload", "</b>; rel=preload"]);
        assert!(set.contains("</b>; rel=preload"));
        assert_eq!(set.len(), 2);
    }
}
