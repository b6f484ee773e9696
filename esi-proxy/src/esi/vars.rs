//! ESI variables (ESI 1.0 §5): parsing `$(NAME{key}|default)` references, reading their values
//! from a [`Request`] under a [`VarPolicy`], and rendering them into URLs and HTML.
//! Pure: no I/O. Malformed references are never errors; they stay literal text.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use super::ua::{ua_browser, ua_os, ua_version};

/// The longest `$(...)` reference recognised, in bytes; anything longer stays literal text, which
/// bounds the work a single `$` can cost.
const MAX_REF_BYTES: usize = 4096;

/// A variable's name. The six names of ESI 1.0 §5; any other well-formed name is kept as
/// [`VarName::Unknown`]: a variable the document assigned, `MATCHES`, or missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VarName {
    /// `HTTP_ACCEPT_LANGUAGE`; with a key, `"true"` or `"false"`.
    AcceptLanguage,
    /// `HTTP_COOKIE`; with a key, one cookie's value.
    Cookie,
    /// `HTTP_HOST`.
    Host,
    /// `HTTP_REFERER`.
    Referer,
    /// `HTTP_USER_AGENT`; keys `browser`, `os`, `version`.
    UserAgent,
    /// `QUERY_STRING`; with a key, one parameter's value as sent (not decoded).
    QueryString,
    /// `REQUEST_METHOD` (extension): `GET`, `POST` ...
    RequestMethod,
    /// `REQUEST_PATH` (extension): the path of the request, without the query, as sent.
    RequestPath,
    /// `REMOTE_ADDR` (extension): the address of the client connection's peer.
    RemoteAddr,
    /// `HTTP_<NAME>` (extension) for any other header: `HTTP_X_DEVICE` reads `X-Device`, as
    /// the policy's [`HeaderAccess`] allows; several values are joined with `", "`.
    Header(Box<str>),
    /// Any other `[A-Za-z_][A-Za-z0-9_]*` name: an assigned variable, a capture, or empty.
    Unknown(Box<str>),
}

/// One variable reference: `$(NAME)`, `$(NAME{key})`, `$(NAME|default)` or `$(NAME{key}|default)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VarRef {
    /// The variable.
    pub name: VarName,
    /// The dictionary key inside `{}`, unquoted.
    pub key: Option<Box<str>>,
    /// The value used when the variable is missing or empty, unquoted.
    pub default: Option<Box<str>>,
}

/// A piece of text that may hold variables: literal text or one reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment<T> {
    /// Text copied as written.
    Literal(T),
    /// A variable reference, replaced by its value.
    Var(VarRef),
}

/// An attribute value (src, alt) that may hold variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VarString {
    /// Literal runs and references in source order; adjacent literals are merged and none is empty.
    pub segments: Vec<Segment<Box<str>>>,
}

/// What a request exposes to ESI variables. Built by the server from the client request's headers.
#[derive(Debug, Clone, Default)]
pub struct Request {
    host: Option<String>,
    query: Option<String>,
    cookie: Option<String>,
    referer: Option<String>,
    user_agent: Option<String>,
    accept_language: Option<String>,
    method: Option<String>,
    path: Option<String>,
    remote_addr: Option<String>,
    /// Every request header, for `HTTP_<NAME>`.
    headers: Option<Arc<http::HeaderMap>>,
    /// Set once a cookie value (or a credential header) was read: the page then holds a
    /// credential of the visitor's.
    /// Shared by clones, so every part of a page reports to the one page.
    cookie_read: Arc<AtomicBool>,
}

/// Which cookie names `HTTP_COOKIE{name}` may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CookieAccess {
    /// Every cookie.
    All,
    /// Only these names (compared exactly); any other cookie reads as missing.
    Only(Vec<String>),
}

/// Which request headers `$(HTTP_<NAME>)` may read (the ESI 1.0 `HTTP_*` variables keep their
/// own rules).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderAccess {
    /// Every header but the credentials (`Authorization`, `Proxy-Authorization`), which are
    /// read only when listed by name.
    All,
    /// Only these names (lowercase); `Cookie` never (it is `HTTP_COOKIE`'s, under its policy).
    Only(Vec<String>),
}

/// What variables may reveal and how their values are inserted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VarPolicy {
    /// Which cookies `HTTP_COOKIE{name}` may read. Default: [`CookieAccess::All`].
    pub cookies: CookieAccess,
    /// Whether a bare `$(HTTP_COOKIE)` yields the whole Cookie header (it may carry session
    /// tokens). Default: false.
    pub whole_cookie_header: bool,
    /// Insert values unescaped into URLs and HTML. Default: false.
    pub raw_output: bool,
    /// Which headers `$(HTTP_<NAME>)` may read. Default: [`HeaderAccess::All`].
    pub headers: HeaderAccess,
}

/// Why a rendered value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VarError {
    /// The URL after substitution would split a request line or header.
    #[error("`src` after substitution holds whitespace or a control character: {0:?}")]
    UnsafeUrl(String),
    /// A substituted value made, or took part in, a `.` or `..` path segment, which would
    /// move the URL to another path once resolved.
    #[error("`src` after substitution has a variable in a dot segment: {0:?}")]
    DotSegment(String),
}

// === impl VarName ===

impl VarName {
    /// Maps a name as written to the variable it denotes.
    fn from_name(name: &str) -> VarName {
        match name {
            "HTTP_ACCEPT_LANGUAGE" => VarName::AcceptLanguage,
            "HTTP_COOKIE" => VarName::Cookie,
            "HTTP_HOST" => VarName::Host,
            "HTTP_REFERER" => VarName::Referer,
            "HTTP_USER_AGENT" => VarName::UserAgent,
            "QUERY_STRING" => VarName::QueryString,
            "REQUEST_METHOD" => VarName::RequestMethod,
            "REQUEST_PATH" => VarName::RequestPath,
            "REMOTE_ADDR" => VarName::RemoteAddr,
            other if other.len() > 5 && other.starts_with("HTTP_") => VarName::Header(other.into()),
            other => VarName::Unknown(other.into()),
        }
    }

    /// Whether a document may not assign this name: a request variable (`HTTP_*`,
    /// `QUERY_STRING`, `REQUEST_*`, `REMOTE_ADDR`) or the captures' `MATCHES`.
    pub fn is_reserved(name: &str) -> bool {
        name.starts_with("HTTP_")
            || name.starts_with("REQUEST_")
            || matches!(name, "QUERY_STRING" | "REMOTE_ADDR" | "MATCHES")
    }

    /// The name as written in a template.
    pub fn as_str(&self) -> &str {
        match self {
            VarName::AcceptLanguage => "HTTP_ACCEPT_LANGUAGE",
            VarName::Cookie => "HTTP_COOKIE",
            VarName::Host => "HTTP_HOST",
            VarName::Referer => "HTTP_REFERER",
            VarName::UserAgent => "HTTP_USER_AGENT",
            VarName::QueryString => "QUERY_STRING",
            VarName::RequestMethod => "REQUEST_METHOD",
            VarName::RequestPath => "REQUEST_PATH",
            VarName::RemoteAddr => "REMOTE_ADDR",
            VarName::Header(name) | VarName::Unknown(name) => name,
        }
    }
}

// === impl VarRef ===

/// Parse one `$(...)` reference starting at `s[0] == '$'`; returns the VarRef and bytes consumed,
/// or None if malformed (including longer than 4096 bytes or not UTF-8).
pub fn parse_var_ref(s: &[u8]) -> Option<(VarRef, usize)> {
    let s = &s[..s.len().min(MAX_REF_BYTES)];
    if !s.starts_with(b"$(") {
        return None;
    }
    let mut i = 2;
    let name_start = i;
    // Request variables are upper case; variables a document assigns may be lower case (text
    // and attributes take those only once assigned: see `next_var`).
    match s.get(i) {
        Some(b'A'..=b'Z' | b'a'..=b'z' | b'_') => i += 1,
        _ => return None,
    }
    while let Some(b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_') = s.get(i) {
        i += 1;
    }
    // The name is ASCII by construction.
    let name = VarName::from_name(std::str::from_utf8(&s[name_start..i]).ok()?);

    let mut key = None;
    if s.get(i) == Some(&b'{') {
        i += 1;
        let (k, next) = if s.get(i) == Some(&b'\'') {
            let end = i + 1 + memchr::memchr(b'\'', &s[i + 1..])?;
            (&s[i + 1..end], end + 1)
        } else {
            let len = s[i..]
                .iter()
                .position(|&b| !is_bare_key_byte(b))
                .unwrap_or(s.len() - i);
            (&s[i..i + len], i + len)
        };
        if k.is_empty() || s.get(next) != Some(&b'}') {
            return None;
        }
        key = Some(Box::from(std::str::from_utf8(k).ok()?));
        i = next + 1;
    }

    let mut default = None;
    if s.get(i) == Some(&b'|') {
        i += 1;
        let (d, next) = if s.get(i) == Some(&b'\'') {
            let end = i + 1 + memchr::memchr(b'\'', &s[i + 1..])?;
            (&s[i + 1..end], end + 1)
        } else {
            let len = memchr::memchr(b')', &s[i..])?;
            let d = &s[i..i + len];
            if d.iter().any(|b| matches!(b, b'(' | b'$' | b'\'')) {
                return None;
            }
            (d, i + len)
        };
        default = Some(Box::from(std::str::from_utf8(d).ok()?));
        i = next;
    }

    if s.get(i) != Some(&b')') {
        return None;
    }
    Some((VarRef { name, key, default }, i + 1))
}

/// A byte allowed in an unquoted key: not a delimiter, whitespace or control character.
fn is_bare_key_byte(b: u8) -> bool {
    !matches!(b, b'}' | b')' | b'\'' | 0..=0x20 | 0x7f)
}

/// Finds the next well-formed reference at or after `from`: its byte range and value. A name
/// with a lower-case letter counts only when `assigned` says the document set it, so text such
/// as `$(document)` in a script stays literal.
fn next_var(
    s: &[u8],
    mut from: usize,
    assigned: &dyn Fn(&str) -> bool,
) -> Option<(Range<usize>, VarRef)> {
    while let Some(off) = memchr::memchr(b'$', s.get(from..)?) {
        let start = from + off;
        if let Some((var, len)) = parse_var_ref(&s[start..]) {
            let lower = var.name.as_str().bytes().any(|b| b.is_ascii_lowercase());
            if !lower || assigned(var.name.as_str()) {
                return Some((start..start + len, var));
            }
        }
        from = start + 1;
    }
    None
}

/// For text with no assigned variable: only upper-case names are references.
fn none_assigned(_: &str) -> bool {
    false
}

impl fmt::Display for VarRef {
    /// Writes the reference in source form; keys and defaults are quoted unless they cannot be.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "$({}", self.name.as_str())?;
        if let Some(key) = &self.key {
            if !key.is_empty() && key.bytes().all(is_bare_key_byte) {
                write!(f, "{{{key}}}")?;
            } else {
                write!(f, "{{'{key}'}}")?;
            }
        }
        if let Some(default) = &self.default {
            if default.contains('\'') {
                write!(f, "|{default}")?;
            } else {
                write!(f, "|'{default}'")?;
            }
        }
        f.write_str(")")
    }
}

// === impl VarString ===

impl VarString {
    /// Parses an attribute value; never fails: malformed `$(` stays literal text.
    pub fn parse(s: &str) -> VarString {
        VarString::parse_in(s, &none_assigned)
    }

    /// Parses an attribute value in a document that assigned the names `assigned` accepts (a
    /// lower-case name is a reference only then).
    pub fn parse_in(s: &str, assigned: &dyn Fn(&str) -> bool) -> VarString {
        let bytes = s.as_bytes();
        let mut segments = Vec::new();
        let mut pos = 0;
        while let Some((range, var)) = next_var(bytes, pos, assigned) {
            if range.start > pos {
                // Reference delimiters are ASCII, so these are char boundaries.
                segments.push(Segment::Literal(Box::from(&s[pos..range.start])));
            }
            segments.push(Segment::Var(var));
            pos = range.end;
        }
        if pos < s.len() {
            segments.push(Segment::Literal(Box::from(&s[pos..])));
        }
        // Kept as long as its template: no room for segments never pushed.
        segments.shrink_to_fit();
        VarString { segments }
    }

    /// The text when it holds no variable (an empty string gives `Some("")`).
    pub fn as_constant(&self) -> Option<&str> {
        match self.segments.as_slice() {
            [] => Some(""),
            [Segment::Literal(text)] => Some(text),
            _ => None,
        }
    }

    /// The variable references, in source order.
    pub fn vars(&self) -> impl Iterator<Item = &VarRef> {
        self.segments.iter().filter_map(|seg| match seg {
            Segment::Var(var) => Some(var),
            Segment::Literal(_) => None,
        })
    }
}

impl fmt::Display for VarString {
    /// Writes the source form, e.g. `/p?id=$(QUERY_STRING{id}|'x')`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for seg in &self.segments {
            match seg {
                Segment::Literal(text) => f.write_str(text)?,
                Segment::Var(var) => write!(f, "{var}")?,
            }
        }
        Ok(())
    }
}

/// Splits text from inside `<esi:vars>` into literal slices of `text` (zero-copy) and variables.
/// Returns None when the text holds no well-formed variable reference.
pub fn split_vars(text: &Bytes) -> Option<Vec<Segment<Bytes>>> {
    split_vars_in(text, &none_assigned)
}

/// [`split_vars`] in a document that assigned the names `assigned` accepts.
pub fn split_vars_in(text: &Bytes, assigned: &dyn Fn(&str) -> bool) -> Option<Vec<Segment<Bytes>>> {
    let (first, var) = next_var(text, 0, assigned)?;
    let mut segments = Vec::with_capacity(4);
    if first.start > 0 {
        segments.push(Segment::Literal(text.slice(..first.start)));
    }
    segments.push(Segment::Var(var));
    let mut pos = first.end;
    while let Some((range, var)) = next_var(text, pos, assigned) {
        if range.start > pos {
            segments.push(Segment::Literal(text.slice(pos..range.start)));
        }
        segments.push(Segment::Var(var));
        pos = range.end;
    }
    if pos < text.len() {
        segments.push(Segment::Literal(text.slice(pos..)));
    }
    Some(segments)
}

// === impl Request ===

impl Request {
    /// A request with no headers: every variable is missing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether a variable has read a cookie's value (or the whole Cookie header) so far.
    pub fn cookie_read(&self) -> bool {
        self.cookie_read.load(Ordering::Relaxed)
    }

    /// Sets the Host header.
    #[must_use]
    pub fn with_host(mut self, v: impl Into<String>) -> Self {
        self.host = Some(v.into());
        self
    }

    /// Sets the raw query string, without the leading `?`.
    #[must_use]
    pub fn with_query(mut self, v: impl Into<String>) -> Self {
        self.query = Some(v.into());
        self
    }

    /// Adds a raw Cookie header; a second call appends, joined with `"; "`.
    #[must_use]
    pub fn with_cookie(mut self, v: impl Into<String>) -> Self {
        append(&mut self.cookie, v.into(), "; ");
        self
    }

    /// Sets the Referer header.
    #[must_use]
    pub fn with_referer(mut self, v: impl Into<String>) -> Self {
        self.referer = Some(v.into());
        self
    }

    /// Sets the User-Agent header.
    #[must_use]
    pub fn with_user_agent(mut self, v: impl Into<String>) -> Self {
        self.user_agent = Some(v.into());
        self
    }

    /// Adds an Accept-Language header; a second call appends, joined with `", "` (HTTP list rules).
    #[must_use]
    pub fn with_accept_language(mut self, v: impl Into<String>) -> Self {
        append(&mut self.accept_language, v.into(), ", ");
        self
    }

    /// The variable's raw value (no escaping) with the policy applied; the default when the value
    /// is missing or empty; "" when neither.
    pub fn value(&self, var: &VarRef, policy: &VarPolicy) -> Cow<'_, str> {
        match self.lookup(var, policy) {
            Some(v) if !v.is_empty() => v,
            _ => match &var.default {
                Some(d) => Cow::Owned(d.to_string()),
                None => Cow::Borrowed(""),
            },
        }
    }

    /// Sets every request header, for `$(HTTP_<NAME>)`.
    #[must_use]
    pub fn with_headers(mut self, headers: Arc<http::HeaderMap>) -> Self {
        self.headers = Some(headers);
        self
    }

    /// Sets the request method.
    #[must_use]
    pub fn with_method(mut self, v: impl Into<String>) -> Self {
        self.method = Some(v.into());
        self
    }

    /// Sets the request path (without the query).
    #[must_use]
    pub fn with_path(mut self, v: impl Into<String>) -> Self {
        self.path = Some(v.into());
        self
    }

    /// Sets the client connection's peer address.
    #[must_use]
    pub fn with_remote_addr(mut self, v: impl Into<String>) -> Self {
        self.remote_addr = Some(v.into());
        self
    }

    /// The variable's raw value with the policy applied, or its default when missing or empty:
    /// `None` when missing (or hidden) with no default, `Some("")` when empty with none.
    pub fn get<'a>(&'a self, var: &'a VarRef, policy: &VarPolicy) -> Option<Cow<'a, str>> {
        match self.lookup(var, policy) {
            Some(v) if !v.is_empty() => Some(v),
            found => match &var.default {
                Some(d) => Some(Cow::Borrowed(d)),
                None => found,
            },
        }
    }

    /// The value before defaults; None when missing or hidden by the policy.
    fn lookup(&self, var: &VarRef, policy: &VarPolicy) -> Option<Cow<'_, str>> {
        let key = var.key.as_deref();
        match &var.name {
            VarName::AcceptLanguage => match key {
                // Never missing, so a default never replaces "false".
                Some(lang) => {
                    let header = self.accept_language.as_deref().unwrap_or("");
                    let listed = accepts_language(header, lang);
                    Some(Cow::Borrowed(if listed { "true" } else { "false" }))
                }
                None => borrowed(&self.accept_language),
            },
            VarName::Cookie => {
                let value = match key {
                    Some(name) if policy.cookies.allows(name) => {
                        cookie_value(self.cookie.as_deref()?, name).map(Cow::Borrowed)
                    }
                    Some(_) => None,
                    None if policy.whole_cookie_header => borrowed(&self.cookie),
                    None => None,
                };
                if value.is_some() {
                    self.cookie_read.store(true, Ordering::Relaxed);
                }
                value
            }
            VarName::Host => borrowed(&self.host),
            VarName::Referer => borrowed(&self.referer),
            VarName::UserAgent => {
                let ua = self.user_agent.as_deref().unwrap_or("");
                match key {
                    None => borrowed(&self.user_agent),
                    Some(k) if k.eq_ignore_ascii_case("browser") => {
                        Some(Cow::Borrowed(ua_browser(ua).as_str()))
                    }
                    Some(k) if k.eq_ignore_ascii_case("os") => Some(Cow::Borrowed(ua_os(ua))),
                    Some(k) if k.eq_ignore_ascii_case("version") => {
                        Some(Cow::Borrowed(ua_version(ua)))
                    }
                    Some(_) => None,
                }
            }
            VarName::QueryString => match key {
                None => borrowed(&self.query),
                Some(name) => query_param(self.query.as_deref()?, name),
            },
            VarName::RequestMethod => borrowed(&self.method),
            VarName::RequestPath => borrowed(&self.path),
            VarName::RemoteAddr => borrowed(&self.remote_addr),
            VarName::Header(var) => {
                let name = header_name(var);
                if !policy.headers.allows(&name) {
                    return None;
                }
                let mut values = self
                    .headers
                    .as_deref()?
                    .get_all(name.as_str())
                    .iter()
                    .filter_map(|v| v.to_str().ok());
                let first = values.next()?;
                let value = match values.next() {
                    None => Cow::Borrowed(first),
                    Some(second) => {
                        let mut all = format!("{first}, {second}");
                        for v in values {
                            all.push_str(", ");
                            all.push_str(v);
                        }
                        Cow::Owned(all)
                    }
                };
                if is_credential_header(&name) {
                    self.cookie_read.store(true, Ordering::Relaxed);
                }
                Some(value)
            }
            VarName::Unknown(_) => None,
        }
    }
}

/// The header `HTTP_<NAME>` reads: `<NAME>` lowercase, `_` read as `-`.
pub fn header_name(var: &str) -> String {
    var.trim_start_matches("HTTP_")
        .to_ascii_lowercase()
        .replace('_', "-")
}

/// Whether a request header carries a credential of the visitor's.
fn is_credential_header(name: &str) -> bool {
    matches!(name, "authorization" | "proxy-authorization" | "cookie")
}

fn borrowed(v: &Option<String>) -> Option<Cow<'_, str>> {
    v.as_deref().map(Cow::Borrowed)
}

fn append(slot: &mut Option<String>, v: String, sep: &str) {
    match slot {
        Some(existing) if !existing.is_empty() => {
            existing.push_str(sep);
            existing.push_str(&v);
        }
        _ => *slot = Some(v),
    }
}

/// The value of cookie `name` in a Cookie header (`a=1; b=2`); the first match wins.
fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k.trim() == name).then(|| v.trim())
    })
}

/// Parameter `name` of a raw query string, its value as sent (not percent-decoded, as ESI 1.0
/// and other processors give it; `$url_decode` decodes). Names compare after decoding, so
/// `{k[]}` finds `k%5B%5D`. The first match wins and a parameter without `=` has value "".
fn query_param<'a>(query: &'a str, name: &str) -> Option<Cow<'a, str>> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == name).then_some(Cow::Borrowed(v))
    })
}

/// Decodes `%XX` and `+`; a `%` not followed by two hex digits stays as written. Borrows when
/// there is nothing to decode.
pub(crate) fn percent_decode(s: &str) -> Cow<'_, str> {
    if !s.bytes().any(|b| b == b'%' || b == b'+') {
        return Cow::Borrowed(s);
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => match (
                b.get(i + 1).and_then(hex_val),
                b.get(i + 2).and_then(hex_val),
            ) {
                (Some(hi), Some(lo)) => {
                    out.push((hi << 4) | lo);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            other => out.push(other),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

fn hex_val(b: &u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Whether an Accept-Language header lists `lang`: a listed tag matches when equal to the key or
/// when the key is its prefix up to a `-` (listed `en-US` matches `en`; listed `en` does not match
/// `en-us`), ignoring case. `q=0` entries and `*` do not count.
fn accepts_language(header: &str, lang: &str) -> bool {
    if lang.is_empty() {
        return false;
    }
    header.split(',').any(|entry| {
        let mut parts = entry.split(';');
        let tag = parts.next().unwrap_or("").trim();
        if tag.is_empty() || tag == "*" {
            return false;
        }
        let refused = parts.any(|p| {
            let p = p.trim();
            let q = match p.split_once('=') {
                Some((k, v)) if k.trim().eq_ignore_ascii_case("q") => v.trim(),
                _ => return false,
            };
            // An unreadable weight counts as accepted, like a missing one.
            q.parse::<f64>().is_ok_and(|q| q <= 0.0)
        });
        if refused {
            return false;
        }
        match tag.get(..lang.len()) {
            Some(prefix) if prefix.eq_ignore_ascii_case(lang) => {
                tag.len() == lang.len() || tag.as_bytes()[lang.len()] == b'-'
            }
            _ => false,
        }
    })
}

// === impl CookieAccess / VarPolicy ===

impl CookieAccess {
    /// Whether cookie `name` may be read.
    pub fn allows(&self, name: &str) -> bool {
        match self {
            CookieAccess::All => true,
            CookieAccess::Only(names) => names.iter().any(|n| n == name),
        }
    }
}

impl HeaderAccess {
    /// Whether header `name` (lowercase) may be read.
    pub fn allows(&self, name: &str) -> bool {
        match self {
            HeaderAccess::All => !is_credential_header(name),
            HeaderAccess::Only(names) => name != "cookie" && names.iter().any(|n| n == name),
        }
    }
}

impl VarPolicy {
    /// The policy for a document from a host not trusted with the client's credentials: no
    /// cookie by name, no whole Cookie header, and of `HTTP_<NAME>` only the headers in
    /// `shared` (those sent to every fragment host anyway) that carry no credential;
    /// escaping as `self` says.
    #[must_use]
    pub fn without_credentials(&self, shared: &[String]) -> VarPolicy {
        let shared = shared
            .iter()
            .filter(|n| !is_credential_header(n) && self.headers.allows(n))
            .cloned()
            .collect();
        VarPolicy {
            cookies: CookieAccess::Only(Vec::new()),
            whole_cookie_header: false,
            raw_output: self.raw_output,
            headers: HeaderAccess::Only(shared),
        }
    }
}

impl Default for VarPolicy {
    /// Every cookie by name, no whole Cookie header, escaped output.
    fn default() -> Self {
        VarPolicy {
            cookies: CookieAccess::All,
            whole_cookie_header: false,
            raw_output: false,
            headers: HeaderAccess::All,
        }
    }
}

// === rendering ===

/// Renders a src/alt: literals as written, each variable's value percent-encoded (all bytes except
/// ASCII alphanumerics and `-._~`), except `$(QUERY_STRING)` and `$(QUERY_STRING{name})`, which
/// keep `&`, `=`, `+`, `%`: their values are already encoded, as sent, and pass through. With `policy.raw_output`, values are inserted unencoded.
///
/// A value never climbs the path: a path segment that a value has a byte in may not be a dot
/// segment (`.`, `..`, or either spelled with `%2e`, which URL parsers take as the same).
///
/// # Errors
///
/// [`VarError::UnsafeUrl`] if the result contains ASCII whitespace or a control character
/// (below 0x20, or 0x7f), which could split or smuggle the fragment request;
/// [`VarError::DotSegment`] if a value made or joined a dot segment of the path.
pub fn render_url(s: &VarString, req: &Request, policy: &VarPolicy) -> Result<String, VarError> {
    render_url_with(s, policy.raw_output, &|var| {
        req.value(var, policy).into_owned()
    })
}

/// [`render_url`] with each variable's value from `value` (unencoded when `raw`).
///
/// # Errors
/// As [`render_url`].
pub fn render_url_with(
    s: &VarString,
    raw: bool,
    value: &dyn Fn(&VarRef) -> String,
) -> Result<String, VarError> {
    let mut out = String::new();
    // Where each value landed in `out`, for the dot-segment check.
    let mut values: Vec<Range<usize>> = Vec::new();
    for seg in &s.segments {
        match seg {
            Segment::Literal(text) => out.push_str(text),
            Segment::Var(var) => {
                let start = out.len();
                let value = value(var);
                if raw {
                    out.push_str(&value);
                } else {
                    let as_sent = var.name == VarName::QueryString;
                    percent_encode(&value, as_sent, &mut out);
                }
                if out.len() > start {
                    values.push(start..out.len());
                }
            }
        }
    }
    if out
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b < 0x20 || b == 0x7f)
    {
        return Err(VarError::UnsafeUrl(out));
    }
    if climbs(&out, &values) {
        return Err(VarError::DotSegment(out));
    }
    Ok(out)
}

/// Renders an attribute whose values go out as text, not into a URL (a header value): literals
/// and values as they are; the caller checks the result is a valid header value.
pub fn render_text_by(s: &VarString, value: &dyn Fn(&VarRef) -> String) -> String {
    let mut out = String::new();
    for seg in &s.segments {
        match seg {
            Segment::Literal(text) => out.push_str(text),
            Segment::Var(var) => out.push_str(&value(var)),
        }
    }
    out
}

/// Renders a form body (`entity`): literals as written, each value percent-encoded as in a
/// URL (`$(QUERY_STRING...)` kept as sent) unless `raw`.
pub fn render_form_by(s: &VarString, raw: bool, value: &dyn Fn(&VarRef) -> String) -> String {
    let mut out = String::new();
    for seg in &s.segments {
        match seg {
            Segment::Literal(text) => out.push_str(text),
            Segment::Var(var) if raw => out.push_str(&value(var)),
            Segment::Var(var) => {
                percent_encode(&value(var), var.name == VarName::QueryString, &mut out);
            }
        }
    }
    out
}

/// Whether a path segment of `url` (up to its query or fragment; `/` and `\` separate, as
/// for http URLs) that overlaps one of `values` is a dot segment. Encoding the dots cannot
/// help: URL parsers treat `%2e` as `.`, so such a value has no spelling that stays in place.
fn climbs(url: &str, values: &[Range<usize>]) -> bool {
    if values.is_empty() {
        return false;
    }
    let path_end = url.find(['?', '#']).unwrap_or(url.len());
    let mut start = 0;
    for segment in url[..path_end].split(['/', '\\']) {
        let end = start + segment.len();
        let from_value = values.iter().any(|v| v.start < end && v.end > start);
        if from_value && is_dot_segment(segment) {
            return true;
        }
        start = end + 1;
    }
    false
}

/// `.` or `..`, each dot possibly written `%2e` (any case).
fn is_dot_segment(segment: &str) -> bool {
    let lower = segment.to_ascii_lowercase();
    matches!(
        lower.as_str(),
        "." | "%2e" | ".." | ".%2e" | "%2e." | "%2e%2e"
    )
}

/// Percent-encodes `value` into `out`: every byte but ASCII alphanumerics and `-._~`, and with
/// `keep_query` also `&=+%`.
pub(crate) fn percent_encode(value: &str, keep_query: bool, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in value.as_bytes() {
        let keep = b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'.' | b'_' | b'~')
            || (keep_query && matches!(b, b'&' | b'=' | b'+' | b'%'));
        if keep {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
}

/// Appends esi:vars text: literal segments copied as is, variable values HTML-escaped
/// (`& < > " '` → `&amp; &lt; &gt; &quot; &#39;`) unless `policy.raw_output`.
pub fn render_html(
    segments: &[Segment<Bytes>],
    req: &Request,
    policy: &VarPolicy,
    out: &mut Vec<u8>,
) {
    for seg in segments {
        match seg {
            Segment::Literal(text) => out.extend_from_slice(text),
            Segment::Var(var) => {
                let value = req.value(var, policy);
                if policy.raw_output {
                    out.extend_from_slice(value.as_bytes());
                } else {
                    escape_html(&value, out);
                }
            }
        }
    }
}

/// Appends `s` with `& < > " '` replaced by `&amp; &lt; &gt; &quot; &#39;`.
pub fn escape_html(s: &str, out: &mut Vec<u8>) {
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let entity: &[u8] = match b {
            b'&' => b"&amp;",
            b'<' => b"&lt;",
            b'>' => b"&gt;",
            b'"' => b"&quot;",
            b'\'' => b"&#39;",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(entity);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

#[cfg(test)]
#[path = "vars_tests.rs"]
mod tests;
