//! `scheme://host:port` of the origin and of allowlisted hosts: parsing for config validation
//! and the comparison the allowlist makes. Pure: no I/O.

use std::fmt;
use std::net::IpAddr;

use url::{Host, Url};

/// The scheme of a [`BaseUrl`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// `http`, default port 80.
    Http,
    /// `https`, default port 443.
    Https,
}

/// `scheme://host:port` of the origin or of an allowlisted fragment host: what the allowlist
/// compares URLs by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BaseUrl {
    /// `http` or `https`.
    pub scheme: Scheme,
    /// Lowercase domain (as `url` normalises it), IPv4 address, or IPv6 address without brackets.
    pub host: String,
    /// The port, explicit or the scheme's default.
    pub port: u16,
}

/// Parses `scheme://host[:port][/]` (http or https; no user info, path, query or fragment).
///
/// # Errors
/// A message naming the value and what is wrong with it, for config validation.
pub fn parse_base_url(s: &str) -> Result<BaseUrl, String> {
    let (scheme, rest) = s
        .split_once("://")
        .ok_or_else(|| format!("{s:?} is not a URL like http://host:port"))?;
    let scheme = if scheme.eq_ignore_ascii_case("http") {
        Scheme::Http
    } else if scheme.eq_ignore_ascii_case("https") {
        Scheme::Https
    } else {
        return Err(format!("{s:?}: scheme must be http or https"));
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    // Checked on the raw text, since `url` would quietly normalise some of these away.
    if authority.contains('@') {
        return Err(format!("{s:?}: user info is not allowed"));
    }
    if authority.contains('?') {
        return Err(format!("{s:?}: a query is not allowed"));
    }
    if authority.contains('#') {
        return Err(format!("{s:?}: a fragment is not allowed"));
    }
    if authority.contains(['/', '\\']) {
        return Err(format!("{s:?}: a path is not allowed (only \"/\")"));
    }
    if authority.is_empty() || authority.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return Err(format!("{s:?}: no valid host"));
    }
    let url = Url::parse(s).map_err(|e| format!("{s:?}: {e}"))?;
    let base = BaseUrl::of(&url).ok_or_else(|| format!("{s:?}: no valid host"))?;
    debug_assert_eq!(base.scheme, scheme);
    Ok(base)
}

// === impl Scheme ===

impl Scheme {
    /// `"http"` or `"https"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    /// 80 or 443.
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl BaseUrl ===

impl BaseUrl {
    /// `scheme://host:port/` as a URL, to resolve paths against.
    ///
    /// # Panics
    /// Only if the fields were set by hand to a host that is not one; values from
    /// [`parse_base_url`] always form a URL.
    pub fn to_url(&self) -> Url {
        Url::parse(&format!("{self}/")).expect("a BaseUrl from parse_base_url is a valid URL")
    }

    /// Whether `url` has this scheme, host and port (explicit or default).
    pub fn matches(&self, url: &Url) -> bool {
        BaseUrl::of(url).is_some_and(|base| base == *self)
    }

    /// The base of an http(s) URL with a host; `None` for other schemes or no host.
    pub(crate) fn of(url: &Url) -> Option<BaseUrl> {
        let scheme = match url.scheme() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            _ => return None,
        };
        let host = match url.host()? {
            Host::Domain(name) if !name.is_empty() => name.to_ascii_lowercase(),
            Host::Domain(_) => return None,
            Host::Ipv4(ip) => ip.to_string(),
            Host::Ipv6(ip) => ip.to_string(),
        };
        let port = url.port().unwrap_or_else(|| scheme.default_port());
        Some(BaseUrl { scheme, host, port })
    }

    /// The host as an IP address, when it is one.
    pub(crate) fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

impl fmt::Display for BaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "{}://[{}]:{}", self.scheme, self.host, self.port)
        } else {
            write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(scheme: Scheme, host: &str, port: u16) -> BaseUrl {
        BaseUrl {
            scheme,
            host: host.to_owned(),
            port,
        }
    }

    #[test]
    fn parse_base_url_accepts() {
        let cases: &[(&str, BaseUrl, &str)] = &[
            (
                "http://example.com",
                base(Scheme::Http, "example.com", 80),
                "http://example.com:80",
            ),
            (
                "http://example.com/",
                base(Scheme::Http, "example.com", 80),
                "http://example.com:80",
            ),
            (
                "https://Example.COM",
                base(Scheme::Https, "example.com", 443),
                "https://example.com:443",
            ),
            (
                "HTTP://a.test:8080/",
                base(Scheme::Http, "a.test", 8080),
                "http://a.test:8080",
            ),
            (
                "https://a.test:80",
                base(Scheme::Https, "a.test", 80),
                "https://a.test:80",
            ),
            (
                "http://127.0.0.1:8081",
                base(Scheme::Http, "127.0.0.1", 8081),
                "http://127.0.0.1:8081",
            ),
            (
                "http://[::1]:9000/",
                base(Scheme::Http, "::1", 9000),
                "http://[::1]:9000",
            ),
            (
                "http://[FE80::1]",
                base(Scheme::Http, "fe80::1", 80),
                "http://[fe80::1]:80",
            ),
            // `url` normalises IPv4 written other ways, so the allowlist sees the real address.
            (
                "http://0x7f.1:81",
                base(Scheme::Http, "127.0.0.1", 81),
                "http://127.0.0.1:81",
            ),
        ];
        for (input, want, shown) in cases {
            let got = parse_base_url(input);
            assert_eq!(got.as_ref(), Ok(want), "input: {input}");
            let got = got.expect("checked above");
            assert_eq!(got.to_string(), *shown, "input: {input}");
            let url = Url::parse(&format!("{shown}/")).expect("test URLs parse");
            assert_eq!(got.to_url(), url, "input: {input}");
            assert!(got.matches(&got.to_url()), "input: {input}");
        }
    }

    #[test]
    fn parse_base_url_refuses() {
        let cases: &[(&str, &str)] = &[
            ("example.com", "not a URL"),
            ("", "not a URL"),
            ("ftp://example.com", "scheme must be http or https"),
            ("file:///etc/passwd", "scheme must be http or https"),
            ("http://user@example.com", "user info"),
            ("http://user:pw@example.com/", "user info"),
            ("http://example.com/path", "path"),
            ("http://example.com//", "path"),
            ("http://example.com\\", "path"),
            ("http://example.com/?q=1", "query"),
            ("http://example.com?q=1", "query"),
            ("http://example.com#top", "fragment"),
            ("http://", "no valid host"),
            ("http:///", "no valid host"),
            ("http://exa mple.com", "no valid host"),
            ("http://example.com:99999", "invalid port"),
            ("http://[::1", "invalid IPv6"),
        ];
        for (input, want) in cases {
            match parse_base_url(input) {
                Ok(got) => panic!("input: {input}: accepted as {got}"),
                Err(message) => {
                    assert!(
                        message.contains(want),
                        "input: {input}: {message:?} should mention {want:?}"
                    );
                    assert!(
                        message.contains(&format!("{input:?}")),
                        "input: {input}: {message:?} should name the value"
                    );
                }
            }
        }
    }

    #[test]
    fn base_url_matches() {
        let origin = base(Scheme::Http, "a.test", 80);
        let cases: &[(&str, bool)] = &[
            ("http://a.test/x?y", true),
            ("http://A.TEST:80/", true),
            ("http://a.test:8080/", false),
            ("https://a.test/", false),
            ("http://b.test/", false),
            ("http://a.test.evil/", false),
            ("ftp://a.test/", false),
        ];
        for (url, want) in cases {
            let url = Url::parse(url).expect("test URLs parse");
            assert_eq!(origin.matches(&url), *want, "url: {url}");
        }
    }
}
