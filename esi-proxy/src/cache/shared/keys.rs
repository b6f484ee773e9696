//! How the shared tier names things in Redis: one key per stored variant, one per URL's vary
//! spec, one lease per cold key, one set per surrogate key, the purge generation and the purge
//! channel, all under the configured prefix, plus the SCAN patterns purges use. Pure: no I/O.

use super::super::store::{CacheKey, Urls};

/// The names of one prefix's keys.
///
/// Every stored key is `<prefix>u:<url> <kind>[ <variant as hex>]`: the URL right after a
/// fixed tag, so one SCAN pattern finds every kind of key of a URL or a URL prefix. Cache URLs
/// never hold a raw space (the URL parser encodes it), so the space ends the URL.
#[derive(Debug, Clone)]
pub(super) struct Keys {
    prefix: String,
}

/// What a name a purge found holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Held {
    /// A value of this kind.
    Value(Kind),
    /// A URL's vary spec.
    Vary,
}

/// What a stored key holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::cache) enum Kind {
    /// A fragment response.
    Fragment,
    /// A layout.
    Layout,
}

// === impl Keys ===

impl Keys {
    /// The names under `prefix`.
    pub(super) fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// Where the value of `key` is stored.
    pub(super) fn value(&self, kind: Kind, key: &CacheKey) -> String {
        let mut name = format!("{}u:{} {} ", self.prefix, key.url, kind.tag());
        push_hex(&mut name, key.variant());
        name
    }

    /// Where the names the last stored response for `url` varied on are kept.
    pub(super) fn vary(&self, kind: Kind, url: &str) -> String {
        format!("{}u:{url} {}v", self.prefix, kind.tag())
    }

    /// The lease of the node fetching `key` for the cluster (outside the `u:` names, so a
    /// purge never drops a lease: it expires by itself).
    pub(super) fn lease(&self, kind: Kind, key: &CacheKey) -> String {
        let mut name = format!("{}lease:{} {} ", self.prefix, key.url, kind.tag());
        push_hex(&mut name, key.variant());
        name
    }

    /// The set of the value names a surrogate key tags (outside the `u:` names, so URL purges
    /// never find it; it expires with the longest-lived value it names).
    pub(super) fn tag(&self, tag: &str) -> String {
        format!("{}k:{tag}", self.prefix)
    }

    /// The purge generation: a counter every purge bumps.
    pub(super) fn generation(&self) -> String {
        format!("{}generation", self.prefix)
    }

    /// The pub/sub channel purges are announced on.
    pub(super) fn channel(&self) -> String {
        format!("{}purge", self.prefix)
    }

    /// The SCAN `MATCH` pattern of every stored key (values and vary specs, both kinds) whose
    /// URL `urls` names.
    pub(super) fn pattern(&self, urls: &Urls) -> String {
        let mut pattern = glob_escape(&self.prefix);
        pattern.push_str("u:");
        match urls {
            Urls::Equal(url) => {
                pattern.push_str(&glob_escape(url));
                pattern.push_str(" *");
            }
            Urls::Prefix(prefix) => {
                pattern.push_str(&glob_escape(prefix));
                pattern.push('*');
            }
        }
        pattern
    }
}

/// What the stored name `name` (one [`Keys::value`] or [`Keys::vary`] made) holds; `None`
/// for any other name.
pub(super) fn held(name: &[u8]) -> Option<Held> {
    let mut words = name.rsplit(|b| *b == b' ');
    match words.next()? {
        b"fv" | b"lv" => Some(Held::Vary),
        _ => match words.next()? {
            b"f" => Some(Held::Value(Kind::Fragment)),
            b"l" => Some(Held::Value(Kind::Layout)),
            _ => None,
        },
    }
}

// === impl Kind ===

impl Kind {
    /// The letter keys use for it.
    fn tag(self) -> &'static str {
        match self {
            Self::Fragment => "f",
            Self::Layout => "l",
        }
    }

    /// The `cache` label of its metrics.
    pub(super) fn label(self) -> &'static str {
        match self {
            Self::Fragment => "fragment",
            Self::Layout => "layout",
        }
    }
}

// === helpers ===

/// Appends `bytes` as lowercase hex.
fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0xf)]));
    }
}

/// `text` with Redis glob characters (`*`, `?`, `[`, `]`, `\`) escaped.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use http::header::HeaderName;
    use http::HeaderMap;

    use super::*;
    use crate::cache::testing::{headers, NONE};

    #[test]
    fn key_names() {
        let keys = Keys::new("site1:");
        let url: Arc<str> = "http://a.test/f?x=1".into();
        let plain = CacheKey::new(&url, &[], &HeaderMap::new(), NONE);
        let lang = [HeaderName::from_static("accept-language")];
        let de = CacheKey::new(&url, &lang, &headers(&[("accept-language", "de")]), NONE);
        let cases = [
            (
                keys.value(Kind::Fragment, &plain),
                "site1:u:http://a.test/f?x=1 f 00",
            ),
            (
                keys.value(Kind::Layout, &plain),
                "site1:u:http://a.test/f?x=1 l 00",
            ),
            (
                keys.value(Kind::Fragment, &de),
                // credentials, "accept-language", 0x00, "de", 0x01, 0x02
                "site1:u:http://a.test/f?x=1 f 00616363657074\
                 2d6c616e677561676500646501\
                 02",
            ),
            (
                keys.vary(Kind::Fragment, &url),
                "site1:u:http://a.test/f?x=1 fv",
            ),
            (
                keys.lease(Kind::Fragment, &plain),
                "site1:lease:http://a.test/f?x=1 f 00",
            ),
            (keys.tag("product-4410"), "site1:k:product-4410"),
            (keys.generation(), "site1:generation"),
            (keys.channel(), "site1:purge"),
        ];
        for (got, want) in cases {
            assert_eq!(got, want);
        }
    }

    #[test]
    fn stored_names_say_what_they_hold() {
        let keys = Keys::new("p:");
        let url: Arc<str> = "http://a.test/f?x=1".into();
        let plain = CacheKey::new(&url, &[], &HeaderMap::new(), NONE);
        let cases = [
            (
                keys.value(Kind::Fragment, &plain),
                Some(Held::Value(Kind::Fragment)),
            ),
            (
                keys.value(Kind::Layout, &plain),
                Some(Held::Value(Kind::Layout)),
            ),
            (keys.vary(Kind::Fragment, &url), Some(Held::Vary)),
            (keys.vary(Kind::Layout, &url), Some(Held::Vary)),
            (keys.generation(), None),
            ("p:u:http://a.test/ x 00".to_owned(), None),
        ];
        for (name, want) in cases {
            assert_eq!(held(name.as_bytes()), want, "{name}");
        }
    }

    #[test]
    fn purge_patterns_escape_globs_and_stop_at_the_url() {
        let keys = Keys::new("a*:");
        let cases = [
            (
                Urls::equal("http://a.test/f?q=[1]"),
                r"a\*:u:http://a.test/f\?q=\[1\] *",
            ),
            (Urls::prefix("http://a.test/"), r"a\*:u:http://a.test/*"),
            (
                Urls::prefix("http://a.test/x?y*"),
                r"a\*:u:http://a.test/x\?y\**",
            ),
        ];
        for (urls, want) in cases {
            assert_eq!(keys.pattern(&urls), want, "{urls:?}");
        }
    }
}
