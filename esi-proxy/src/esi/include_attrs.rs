//! The include attributes past ESI 1.0 (Akamai's, as Fastly's `esi` crate reads them): `dca`,
//! `ttl`, `no-store`, `method`, `entity`, `appendheaders` / `setheaders` / `removeheaders` and
//! nested `<esi:param>`: their parsed form, their syntax and the header names a template may
//! never touch. Pure: no I/O; the composer applies them, lint reports their misuse.

use std::time::Duration;

use super::vars::VarString;

/// Most `<esi:param>` children one include keeps; more are reported and dropped.
pub const MAX_PARAMS: usize = 32;
/// Most header edits (`appendheaders`, `setheaders`, `removeheaders` entries together) one
/// include keeps; more are reported and dropped.
pub const MAX_HEADER_EDITS: usize = 16;
/// Most bytes of names and values one include's header edits may add once their variables are
/// substituted; past it every edit of the include is dropped (counted, logged).
pub const MAX_HEADER_EDIT_BYTES: usize = 8 * 1024;
/// Largest request body (`entity`) once its variables are substituted; past it the include
/// fails and takes its fallback (counted, logged).
pub const MAX_ENTITY_BYTES: usize = 64 * 1024;
/// Longest `ttl` kept: a year, as the cache keeps no entry longer.
const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// Request headers a template may never set, append or remove: they frame the request or
/// name its hop (`Host`, `Content-Length`, hop-by-hop ones), the fetcher sets them itself
/// (`Accept-Encoding`: it decodes only what it asks for), or they tell the fragment who the
/// client is (`X-Forwarded-*`, `Forwarded`): set only by the proxy, from what it saw.
pub const FORBIDDEN_HEADERS: [&str; 19] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "proxy-authorization",
    "proxy-authenticate",
    "accept-encoding",
    "surrogate-capability",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
    "content-encoding",
];

/// Request headers that carry a visitor's credentials: a template may set or append them only
/// toward a host trusted with credentials, from a trusted document.
pub const CREDENTIAL_HEADERS: [&str; 2] = ["cookie", "authorization"];

/// `dca`: whether the fragment's own ESI is processed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dca {
    /// No `dca`: processed when the response is marked `Surrogate-Control: content="ESI/1.0"`
    /// and its host may send ESI.
    #[default]
    Marked,
    /// `dca="none"`: placed as it is, never processed.
    None,
    /// `dca="esi"`: processed whether marked or not, when its host may send ESI.
    Esi,
}

/// `method`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Method {
    /// `GET` (the default).
    #[default]
    Get,
    /// `POST`, with `entity` as the body; never cached.
    Post,
}

/// What a header edit does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderOp {
    /// `setheaders`: replaces every value the request had.
    Set,
    /// `appendheaders`: adds a value after those the request has.
    Append,
    /// `removeheaders`: the request goes without it.
    Remove,
}

/// One entry of `appendheaders`, `setheaders` or `removeheaders`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderEdit {
    /// What it does.
    pub op: HeaderOp,
    /// The header's name, lowercase.
    pub name: Box<str>,
    /// The value (empty for a removal); variables are substituted, unencoded, and a value
    /// that is not a valid header value drops the edit.
    pub value: VarString,
}

/// `<esi:param name=".." value=".."/>`: appended to the URL's query, both percent-encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    /// The parameter's name, as written.
    pub name: Box<str>,
    /// Its value; variables are substituted.
    pub value: VarString,
}

/// An include's attributes past ESI 1.0; the default is an ESI 1.0 include.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IncludeOptions {
    /// `dca`.
    pub dca: Dca,
    /// `ttl`: how long the response is cached, in place of what its headers say; zero: not
    /// stored. Never makes storable what the cache policy refuses for safety.
    pub ttl: Option<Duration>,
    /// `no-store="on"`: neither read from nor written to the cache.
    pub no_store: bool,
    /// `method`.
    pub method: Method,
    /// `entity`: the body of a `POST`; variables are substituted, percent-encoded.
    pub entity: Option<VarString>,
    /// The header edits, in the order written (removals, then sets, then appends).
    pub headers: Vec<HeaderEdit>,
    /// `<esi:param>` children, in order.
    pub params: Vec<Param>,
}

/// A misuse of an include attribute: its message, and whether it is only suspicious.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttrProblem {
    /// What is wrong, in words.
    pub message: String,
    /// A warning (the attribute still applies) rather than an error (it is ignored).
    pub warning: bool,
}

// === impl IncludeOptions ===

impl IncludeOptions {
    /// Reads one attribute of `<esi:include>` into these options: `Ok(false)` when `key` is not
    /// one of them, an error when its value is malformed (the attribute is then ignored).
    /// Warnings are pushed to `problems`. `assigned` tells which lower-case names are variables.
    ///
    /// # Errors
    /// The problem with the value; the attribute is left out.
    pub fn read(
        &mut self,
        key: &str,
        value: &str,
        assigned: &dyn Fn(&str) -> bool,
        problems: &mut Vec<AttrProblem>,
    ) -> Result<bool, AttrProblem> {
        match key {
            "dca" => {
                self.dca = match value.trim().to_ascii_lowercase().as_str() {
                    "none" => Dca::None,
                    "esi" => Dca::Esi,
                    _ => return Err(error(format!("dca={value:?} is not \"none\" or \"esi\""))),
                }
            }
            "ttl" => self.ttl = Some(parse_ttl(value)?),
            "no-store" => {
                self.no_store = match value.trim().to_ascii_lowercase().as_str() {
                    "on" => true,
                    "off" => false,
                    _ => {
                        return Err(error(format!(
                            "no-store={value:?} is not \"on\" or \"off\""
                        )))
                    }
                }
            }
            "method" => {
                self.method = match value.trim().to_ascii_uppercase().as_str() {
                    "GET" => Method::Get,
                    "POST" => Method::Post,
                    _ => return Err(error(format!("method={value:?} is not GET or POST"))),
                }
            }
            "entity" => self.entity = Some(VarString::parse_in(value, assigned)),
            "setheaders" | "appendheaders" => {
                let op = if key == "setheaders" {
                    HeaderOp::Set
                } else {
                    HeaderOp::Append
                };
                for entry in split_header_list(value) {
                    let Some((name, text)) = entry.split_once(':') else {
                        problems.push(error(format!("{key}: {entry:?} is not \"Name: value\"")));
                        continue;
                    };
                    let value = VarString::parse_in(text.trim(), assigned);
                    self.edit(op, name.trim(), value, problems);
                }
            }
            "removeheaders" => {
                for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                    let empty = VarString {
                        segments: Vec::new(),
                    };
                    self.edit(HeaderOp::Remove, name, empty, problems);
                }
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Adds a `<esi:param>`, within [`MAX_PARAMS`].
    ///
    /// # Errors
    /// A missing or empty name, or one parameter too many: the parameter is dropped.
    pub fn add_param(&mut self, name: Option<&str>, value: VarString) -> Result<(), AttrProblem> {
        let Some(name) = name.filter(|n| !n.is_empty()) else {
            return Err(error("<esi:param> without name".into()));
        };
        if self.params.len() >= MAX_PARAMS {
            return Err(error(format!(
                "more than {MAX_PARAMS} <esi:param> in one include"
            )));
        }
        self.params.push(Param {
            name: name.into(),
            value,
        });
        Ok(())
    }

    /// Checks that the options fit together once every attribute is read.
    pub fn finish(&mut self, problems: &mut Vec<AttrProblem>) {
        if self.entity.is_some() && self.method == Method::Get {
            problems.push(warning(
                "entity is sent only with method=\"POST\"; this GET sends no body".into(),
            ));
        }
        if self.method == Method::Post && (self.ttl.is_some_and(|t| !t.is_zero())) {
            problems.push(warning(
                "a POST include is never cached; its ttl does nothing".into(),
            ));
        }
        if self.no_store && self.ttl.is_some_and(|t| !t.is_zero()) {
            problems.push(warning(
                "no-store=\"on\" keeps the include out of the cache; its ttl does nothing".into(),
            ));
        }
        // Removals first, then sets, then appends: what a tag writes in one attribute does
        // not depend on the order of the attributes.
        self.headers.sort_by_key(|e| match e.op {
            HeaderOp::Remove => 0,
            HeaderOp::Set => 1,
            HeaderOp::Append => 2,
        });
    }

    /// Whether the include must go past the cache: `no-store`, a `POST`, or a request whose
    /// headers the template changed (the response may depend on them, and their values may be
    /// one visitor's).
    pub fn bypasses_cache(&self) -> bool {
        self.no_store || self.method == Method::Post || !self.headers.is_empty()
    }

    fn edit(
        &mut self,
        op: HeaderOp,
        name: &str,
        value: VarString,
        problems: &mut Vec<AttrProblem>,
    ) {
        let lower = name.to_ascii_lowercase();
        let attr = match op {
            HeaderOp::Set => "setheaders",
            HeaderOp::Append => "appendheaders",
            HeaderOp::Remove => "removeheaders",
        };
        if lower.is_empty() || !lower.bytes().all(is_token_byte) {
            problems.push(error(format!("{attr}: {name:?} is not a header name")));
            return;
        }
        if FORBIDDEN_HEADERS.contains(&lower.as_str()) {
            problems.push(error(format!(
                "{attr}: {name} is a header only the proxy sets; the entry is ignored"
            )));
            return;
        }
        if op != HeaderOp::Remove && CREDENTIAL_HEADERS.contains(&lower.as_str()) {
            problems.push(warning(format!(
                "{attr}: {name} is sent only to hosts trusted with credentials, from a trusted \
                 document; elsewhere the entry is dropped"
            )));
        }
        if self.headers.len() >= MAX_HEADER_EDITS {
            problems.push(error(format!(
                "more than {MAX_HEADER_EDITS} header edits in one include; {name} is ignored"
            )));
            return;
        }
        self.headers.push(HeaderEdit {
            op,
            name: lower.into(),
            value,
        });
    }
}

/// Whether a header name may be written with this byte (RFC 9110 `tchar`).
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// `120s`, `5m`, `1h`, `1d`, or a bare number of seconds; `0` is "not stored".
///
/// # Errors
/// Any other text, or more than a year.
pub fn parse_ttl(value: &str) -> Result<Duration, AttrProblem> {
    let text = value.trim();
    let bad = || {
        error(format!(
            "ttl={value:?} is not a duration such as \"120s\", \"5m\", \"1h\", \"1d\" or \"0\""
        ))
    };
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let seconds = match unit {
        "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        "d" => n.checked_mul(86_400),
        _ => return Err(bad()),
    };
    match seconds.map(Duration::from_secs) {
        Some(ttl) if ttl <= MAX_TTL => Ok(ttl),
        _ => Err(error(format!("ttl={value:?} is longer than a year (365d)"))),
    }
}

/// Splits `"A: 1, B: 2"` into entries at each comma that a `Name:` follows, so that a value
/// holding commas (`Accept-Language: de, en;q=0.5`) stays whole.
fn split_header_list(value: &str) -> Vec<&str> {
    let mut entries = Vec::new();
    let mut start = 0;
    for (at, _) in value.match_indices(',') {
        let rest = value[at + 1..].trim_start();
        let name_len = rest.bytes().take_while(|&b| is_token_byte(b)).count();
        if name_len > 0 && rest[name_len..].trim_start().starts_with(':') {
            entries.push(value[start..at].trim());
            start = at + 1;
        }
    }
    entries.push(value[start..].trim());
    entries.retain(|e| !e.is_empty());
    entries
}

fn error(message: String) -> AttrProblem {
    AttrProblem {
        message,
        warning: false,
    }
}

fn warning(message: String) -> AttrProblem {
    AttrProblem {
        message,
        warning: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none(_: &str) -> bool {
        false
    }

    fn read(key: &str, value: &str) -> (IncludeOptions, Result<bool, String>, Vec<String>) {
        let mut opts = IncludeOptions::default();
        let mut problems = Vec::new();
        let result = opts
            .read(key, value, &none, &mut problems)
            .map_err(|p| p.message);
        opts.finish(&mut problems);
        let problems = problems.into_iter().map(|p| p.message).collect();
        (opts, result, problems)
    }

    #[test]
    fn ttl_forms() {
        let cases: &[(&str, Option<u64>)] = &[
            ("120s", Some(120)),
            ("5m", Some(300)),
            ("1h", Some(3600)),
            ("1d", Some(86_400)),
            ("0", Some(0)),
            ("0s", Some(0)),
            (" 30 ", Some(30)),
            ("365d", Some(365 * 86_400)),
            ("366d", None),
            ("99999999999999999999d", None),
            ("5 m", None),
            ("5M", None),
            ("1w", None),
            ("-1s", None),
            ("", None),
            ("s", None),
            ("1.5h", None),
        ];
        for (text, want) in cases {
            let got = parse_ttl(text).ok().map(|d| d.as_secs());
            assert_eq!(got, *want, "ttl={text:?}");
        }
    }

    #[test]
    fn attribute_values() {
        let (o, r, _) = read("dca", "ESI");
        assert_eq!((o.dca, r), (Dca::Esi, Ok(true)));
        let (o, r, _) = read("dca", "none");
        assert_eq!((o.dca, r), (Dca::None, Ok(true)));
        let (o, r, _) = read("dca", "xslt");
        assert_eq!(o.dca, Dca::Marked);
        assert!(r.expect_err("refused").contains("dca=\"xslt\""));
        let (o, r, _) = read("no-store", "on");
        assert_eq!((o.no_store, r), (true, Ok(true)));
        let (o, _, _) = read("no-store", "OFF");
        assert!(!o.no_store);
        let (o, r, _) = read("no-store", "yes");
        assert!(!o.no_store && r.expect_err("refused").contains("no-store=\"yes\""));
        let (o, r, _) = read("method", "post");
        assert_eq!((o.method, r), (Method::Post, Ok(true)));
        let (o, r, _) = read("method", "PUT");
        assert_eq!(o.method, Method::Get);
        assert!(r.expect_err("refused").contains("GET or POST"));
        let (o, r, _) = read("ttl", "5m");
        assert_eq!((o.ttl, r), (Some(Duration::from_secs(300)), Ok(true)));
        let (o, r, _) = read("ttl", "5 minutes");
        assert!(o.ttl.is_none() && r.expect_err("refused").contains("not a duration"));
        let (_, r, _) = read("primary", "true");
        assert_eq!(r, Ok(false));
        let (o, _, p) = read("entity", "a=1");
        assert!(o.entity.is_some());
        assert!(p[0].contains("only with method=\"POST\""), "{p:?}");
    }

    #[test]
    fn header_lists() {
        let (o, _, p) = read(
            "setheaders",
            "X-A: 1, Accept-Language: de, en;q=0.5,X-B:two",
        );
        assert!(p.is_empty(), "{p:?}");
        let got: Vec<(String, String)> = o
            .headers
            .iter()
            .map(|e| (e.name.to_string(), e.value.to_string()))
            .collect();
        let want = [
            ("x-a", "1"),
            ("accept-language", "de, en;q=0.5"),
            ("x-b", "two"),
        ];
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect();
        assert_eq!(got, want);
        assert!(o.headers.iter().all(|e| e.op == HeaderOp::Set));

        let (o, _, p) = read("removeheaders", "Accept-Language, X-Device ,");
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(o.headers.len(), 2);
        assert!(o.headers.iter().all(|e| e.op == HeaderOp::Remove));

        let (o, _, p) = read("appendheaders", "X-Device: $(HTTP_X_DEVICE)");
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(o.headers[0].value.vars().count(), 1);
    }

    #[test]
    fn header_misuse() {
        let cases: &[(&str, &str, &str, bool)] = &[
            ("setheaders", "Host: evil", "only the proxy sets", false),
            (
                "appendheaders",
                "Transfer-Encoding: chunked",
                "only the proxy sets",
                false,
            ),
            (
                "setheaders",
                "X-Forwarded-For: 1.2.3.4",
                "only the proxy sets",
                false,
            ),
            (
                "removeheaders",
                "Content-Length",
                "only the proxy sets",
                false,
            ),
            (
                "setheaders",
                "Connection: close",
                "only the proxy sets",
                false,
            ),
            (
                "setheaders",
                "Cookie: a=1",
                "trusted with credentials",
                true,
            ),
            (
                "appendheaders",
                "Authorization: Basic x",
                "trusted with credentials",
                true,
            ),
            ("setheaders", "X A: 1", "not a header name", false),
            ("setheaders", "novalue", "is not \"Name: value\"", false),
        ];
        for (key, value, want, kept) in cases {
            let (o, _, p) = read(key, value);
            assert!(p.iter().any(|m| m.contains(want)), "{key}={value:?}: {p:?}");
            assert_eq!(!o.headers.is_empty(), *kept, "{key}={value:?}");
        }
        // Removing a credential is always allowed: it only sends less.
        let (o, _, p) = read("removeheaders", "Cookie");
        assert!(p.is_empty() && o.headers.len() == 1, "{p:?}");
    }

    #[test]
    fn bounds_on_edits_and_params() {
        let many: Vec<String> = (0..MAX_HEADER_EDITS + 3)
            .map(|i| format!("X-{i}: v"))
            .collect();
        let (o, _, p) = read("setheaders", &many.join(", "));
        assert_eq!(o.headers.len(), MAX_HEADER_EDITS);
        assert_eq!(p.len(), 3, "{p:?}");

        let mut opts = IncludeOptions::default();
        for i in 0..MAX_PARAMS {
            opts.add_param(Some(&format!("p{i}")), VarString::parse("v"))
                .expect("within the bound");
        }
        let over = opts.add_param(Some("one-more"), VarString::parse("v"));
        assert!(over.expect_err("refused").message.contains("more than"));
        let unnamed = IncludeOptions::default().add_param(None, VarString::parse("v"));
        assert!(unnamed
            .expect_err("refused")
            .message
            .contains("without name"));
    }

    #[test]
    fn what_bypasses_the_cache() {
        assert!(!IncludeOptions::default().bypasses_cache());
        assert!(read("no-store", "on").0.bypasses_cache());
        assert!(read("method", "POST").0.bypasses_cache());
        assert!(read("setheaders", "X-A: 1").0.bypasses_cache());
        assert!(read("removeheaders", "Accept-Language").0.bypasses_cache());
        assert!(!read("ttl", "5m").0.bypasses_cache());
        assert!(!read("dca", "esi").0.bypasses_cache());
    }
}
