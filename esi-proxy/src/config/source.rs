//! TOML with spans: where every key of a config text is (`KeyMap`, built through `Node`), and
//! a toml/serde error turned into one `file:line: field: message` line. Knows no field's meaning.

use std::fmt;
use std::path::Path;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use toml::Spanned;

use super::ConfigError;

/// Where every key of a TOML text is, by dotted path with list indices (`fetch.hosts[2].url`),
/// so errors can name both a line and a field. Built by the `toml` parser itself, so `[table]`,
/// `[[array]]`, dotted keys and inline tables are all understood.
#[derive(Debug, Default)]
pub(super) struct KeyMap {
    /// Each key and each list entry in tree order: (path, byte offset, line from 1).
    entries: Vec<(String, usize, usize)>,
}

/// A TOML tree with the byte offset of every key and list entry.
enum Node {
    Table(Vec<(Spanned<String>, Node)>),
    Array(Vec<Spanned<Node>>),
    Leaf,
}

/// Builds a [`Node`] from whatever the TOML deserializer hands it.
struct NodeVisitor;

/// A toml/serde error on `text` as [`ConfigError::Parse`]: its line and, when the problem is in
/// a key or value, the dotted field first; `path` is used in the message only.
pub(super) fn parse_error(text: &str, path: &Path, e: &toml::de::Error) -> ConfigError {
    let at = e.span().map(|span| span.start);
    let message = toml_message(e.message(), at.and_then(|at| text.get(at..)));
    let Some(at) = at else {
        return ConfigError::Parse {
            path: path.to_owned(),
            line: 0,
            message,
        };
    };
    // The text is valid TOML unless this is a syntax error; then there is no field.
    let message = match KeyMap::new(text).field_at(text, at) {
        Some(field) => format!("{field}: {message}"),
        None => message,
    };
    ConfigError::Parse {
        path: path.to_owned(),
        line: line_of(text, at),
        message,
    }
}

/// toml's message for a value at `value` (the text from there on), on one line and in TOML's
/// words rather than serde's and Rust's.
fn toml_message(raw: &str, value: Option<&str>) -> String {
    // Sometimes two lines: "invalid table header\nexpected `.`, `]`".
    let mut message = raw.trim().replace('\n', ": ");
    // A date-time reaches serde as a map: tell it from a real table by how it is written.
    let datetime = value.is_some_and(|v| v.starts_with(|c: char| c.is_ascii_digit()));
    let map = if datetime { "date-time" } else { "table" };
    for (serde, toml) in [
        ("expected u64", "expected a non-negative integer"),
        ("expected usize", "expected a non-negative integer"),
        ("expected a sequence", "expected an array"),
        ("invalid type: sequence", "invalid type: array"),
        ("invalid type: map", &format!("invalid type: {map}")),
        ("floating point", "float"),
    ] {
        message = message.replace(serde, toml);
    }
    // "expected struct EsiConfig": the name of a Rust type means nothing in the file.
    if let Some(i) = message.find("expected struct ") {
        message.truncate(i);
        message.push_str("expected a table");
    }
    message
}

/// Line (from 1) of byte offset `at` in `text`.
fn line_of(text: &str, at: usize) -> usize {
    let at = at.min(text.len());
    text.as_bytes()[..at]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

// === impl KeyMap ===

impl KeyMap {
    /// The keys of `text`; empty when it is not TOML.
    pub(super) fn new(text: &str) -> KeyMap {
        let mut map = KeyMap::default();
        if let Ok(root) = toml::from_str::<Node>(text) {
            map.add(text, &root, "");
        }
        map
    }

    fn add(&mut self, text: &str, node: &Node, prefix: &str) {
        match node {
            Node::Table(entries) => {
                for (key, value) in entries {
                    let path = if prefix.is_empty() {
                        key_name(key.get_ref())
                    } else {
                        format!("{prefix}.{}", key_name(key.get_ref()))
                    };
                    self.push(text, path.clone(), key.span().start);
                    self.add(text, value, &path);
                }
            }
            Node::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let path = format!("{prefix}[{i}]");
                    self.push(text, path.clone(), item.span().start);
                    self.add(text, item.get_ref(), &path);
                }
            }
            Node::Leaf => {}
        }
    }

    fn push(&mut self, text: &str, path: String, at: usize) {
        self.entries.push((path, at, line_of(text, at)));
    }

    /// Line (from 1) of a dotted field such as `fetch.hosts[2].url`: of its key, or of the list
    /// entry for a path ending in an index. 0 when the text does not set it.
    pub(super) fn line(&self, field: &str) -> usize {
        self.entries
            .iter()
            .find(|(path, _, _)| path == field)
            .map_or(0, |&(_, _, line)| line)
    }

    /// The dotted field that byte offset `at` of `text` belongs to: the nearest key or list
    /// entry before it on its line, or, for a table header, the last key of the header.
    fn field_at(&self, text: &str, at: usize) -> Option<&str> {
        let line = line_of(text, at);
        let on_line = || self.entries.iter().filter(move |(_, _, l)| *l == line);
        on_line()
            .filter(|(_, start, _)| *start <= at)
            .max_by_key(|(_, start, _)| *start)
            .or_else(|| on_line().max_by_key(|(_, start, _)| *start))
            .map(|(path, _, _)| path.as_str())
    }
}

/// A key as written in a dotted path: bare when TOML allows it, else quoted.
pub(super) fn key_name(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare {
        key.to_owned()
    } else {
        format!("{key:?}")
    }
}

// === impl Node ===

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Node, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a TOML value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Node, E> {
        Ok(Node::Leaf)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Node, E> {
        Ok(Node::Leaf)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Node, E> {
        Ok(Node::Leaf)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Node, E> {
        Ok(Node::Leaf)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Node, E> {
        Ok(Node::Leaf)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        loop {
            let key = match map.next_key::<Spanned<String>>() {
                Ok(Some(key)) => key,
                Ok(None) => break,
                // A date-time reaches us as a one-entry map whose key has no span: a leaf.
                Err(_) if entries.is_empty() => return Ok(Node::Leaf),
                Err(e) => return Err(e),
            };
            entries.push((key, map.next_value()?));
        }
        Ok(Node::Table(entries))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::KeyMap;
    use crate::config::Config;

    /// `(toml, wanted Parse display without the "f.toml:" prefix)`.
    const PARSE_ERRORS: &[(&str, &str)] = &[
        ("[esi\nmax_depth = 1\n", "1: invalid table header: expected `.`, `]`"),
        ("[fetch]\nx = \"unterminated\n", "2: invalid basic string"),
        (
            "[fetch]\n\nbogus = 1\n",
            "3: fetch.bogus: unknown field `bogus`, expected one of",
        ),
        ("[nope]\n", "1: nope: unknown field `nope`, expected one of"),
        (
            "# c\nfetch.page_timeout_ms = 1\nfetch.bogus = 1\n",
            "3: fetch.bogus: unknown field `bogus`, expected one of",
        ),
        (
            "esi = { max_depth = 1, bogus = 2 }\n",
            "1: esi.bogus: unknown field `bogus`, expected one of",
        ),
        (
            "[[fetch.hosts]]\nurl = \"http://a\"\n[[fetch.hosts]]\nurl = \"http://b\"\ntrusted = \"yes\"\n",
            "5: fetch.hosts[1].trusted: invalid type: string \"yes\", expected a boolean",
        ),
        (
            "[esi]\nmax_depth = 99999999999999999999\n",
            // TOML integers are i64: a syntax error, so no field.
            "2: number too large to fit in target type",
        ),
        (
            "[fetch]\nfragment_timeout_ms = \"fast\"\n",
            "2: fetch.fragment_timeout_ms: invalid type: string \"fast\", expected a non-negative integer",
        ),
        (
            "fetch.fragment_timeout_ms = -1\n",
            "1: fetch.fragment_timeout_ms: invalid value: integer `-1`, expected a non-negative integer",
        ),
        (
            "fetch = { page_timeout_ms = 1.5 }\n",
            "1: fetch.page_timeout_ms: invalid type: float `1.5`, expected a non-negative integer",
        ),
        (
            "[fetch]\nforward_headers = [\n  \"a\",\n  3,\n]\n",
            "4: fetch.forward_headers[1]: invalid type: integer `3`, expected a string",
        ),
        (
            "[esi]\ncookie_names = \"*\"\n",
            "2: esi.cookie_names: invalid type: string \"*\", expected an array",
        ),
        ("esi = 3\n", "1: esi: invalid type: integer `3`, expected a table"),
        (
            "[server]\nlisten = 1979-05-27T07:32:00Z\n",
            "2: server.listen: invalid type: date-time, expected a string",
        ),
        (
            "[[fetch.hosts]]\nurl = \"http://a\"\n[[fetch.hosts]]\ntrusted = true\n",
            "3: fetch.hosts[1]: missing field `url`",
        ),
        (
            "[[fetch.hosts]]\nurl = \"http://a\"\n\n[[fetch.hosts]]\nurl = \"http://b\"\nweight = 2\n",
            "6: fetch.hosts[1].weight: unknown field `weight`, expected one of",
        ),
        (
            "[server]\nlisten = \"x\"\n[fetch.hosts]\nurl = \"http://a\"\n",
            "3: fetch.hosts: invalid type: table, expected an array",
        ),
        (
            "[esi]\nmax_depth = 1\nmax_depth = 2\n",
            "3: duplicate key `max_depth` in table `esi`",
        ),
    ];

    #[test]
    fn parse_errors_name_line_and_field() {
        for (input, want) in PARSE_ERRORS {
            let err = Config::parse(input, Path::new("f.toml")).expect_err(input);
            let got = err.to_string();
            let want = format!("f.toml:{want}");
            assert!(
                got.starts_with(&want),
                "input: {input:?}\n got: {got}\nwant: {want}"
            );
            assert!(!got.contains('\n'), "one line: {got:?}");
        }
    }

    const FIELD_LINES: &[(&str, &str, usize)] = &[
        ("[fetch]\npage_timeout_ms = 1\n", "fetch.page_timeout_ms", 2),
        (
            "[fetch]\npage_timeout_ms = 1\n",
            "fetch.fragment_timeout_ms",
            0,
        ),
        (
            "[fetch]\npage_timeout_ms = 1\n",
            "server.page_timeout_ms",
            0,
        ),
        (
            "[esi]\nmax_depth = 1\n[fetch]\nmax_depth = 1\n",
            "fetch.max_depth",
            4,
        ),
        (
            "# max_depth = 3\n[esi]\n  max_depth=1 # x\n",
            "esi.max_depth",
            3,
        ),
        ("fetch.page_timeout_ms = 1\n", "fetch.page_timeout_ms", 1),
        (
            "[fetch]\n\"page_timeout_ms\" = 1\n",
            "fetch.page_timeout_ms",
            2,
        ),
        (
            "fetch = { hosts = [{ url = \"a\" }] }\n",
            "fetch.hosts[0].url",
            1,
        ),
        (
            "[esi.sub]\nk = 1\n[esi]\nmax_depth = 1\n",
            "esi.max_depth",
            4,
        ),
        ("[esi.sub]\nk = 1\n[esi]\nmax_depth = 1\n", "esi.sub.k", 2),
        (
            "[esi]\ncookie_names = [\n  \"a\",\n  \"b c\",\n]\n",
            "esi.cookie_names[1]",
            4,
        ),
        (HOSTS, "fetch.hosts[0].url", 2),
        (HOSTS, "fetch.hosts[1].url", 6),
        (HOSTS, "fetch.hosts[2].url", 10),
        (HOSTS, "fetch.hosts[2]", 8),
        (HOSTS, "fetch.hosts[3].url", 0),
        (HOSTS, "fetch.hosts[1].trusted", 5),
        (HOSTS, "fetch.hosts[0].trusted", 0),
        ("not = [toml\n", "not", 0),
    ];

    const HOSTS: &str = "[[fetch.hosts]]\nurl = \"http://a\"\n\n[[fetch.hosts]]\ntrusted = true\n\
                         url = \"http://b\"\n\n[[fetch.hosts]]\n\nurl = \"http://c\"\n";

    #[test]
    fn field_lines() {
        for (text, field, want) in FIELD_LINES {
            let got = KeyMap::new(text).line(field);
            assert_eq!(got, *want, "field {field} in {text:?}");
        }
    }
}
