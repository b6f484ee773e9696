//! Validation: values that parse but cannot work, every problem collected with its file, line
//! and field (`Problems`), in the order of the file. Reads the schema; never changes it.

use super::source::KeyMap;
use super::{Config, ConfigError, Invalid};

/// Deeper composition than this is an include loop, not a page design.
const MAX_ESI_DEPTH: usize = 20;

/// Collects problems found by [`Config::validate_source`].
struct Problems<'a> {
    path: &'a str,
    keys: KeyMap,
    found: Vec<Invalid>,
}

// === impl Config ===

impl Config {
    /// Checks values that parse but cannot work, reporting every problem.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] listing each problem.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_source("<config>", None)
    }

    /// [`Config::validate`], with lines looked up in the file's text when there is one.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] listing each problem, in the order of the file.
    pub fn validate_source(&self, path: &str, text: Option<&str>) -> Result<(), ConfigError> {
        let mut p = Problems {
            path,
            keys: text.map(KeyMap::new).unwrap_or_default(),
            found: Vec::new(),
        };
        self.validate_server(&mut p);
        self.validate_esi(&mut p);
        self.validate_fetch(&mut p);
        self.validate_cache(&mut p);
        if p.found.is_empty() {
            return Ok(());
        }
        // Stable: problems on one line, or not in the file, keep the order they were found in.
        p.found.sort_by_key(|i| i.line);
        Err(ConfigError::Invalid { problems: p.found })
    }

    fn validate_server(&self, p: &mut Problems<'_>) {
        let s = &self.server;
        if s.listen.parse::<std::net::SocketAddr>().is_err() {
            let message = format!("{:?} is not an address like 127.0.0.1:8080", s.listen);
            p.push("server.listen", message);
        }
        if let Err(e) = crate::fetch::parse_base_url(&s.origin) {
            p.push("server.origin", e.to_string());
        }
        if s.max_header_bytes < 8192 {
            let message = format!("{} is below the minimum of 8192", s.max_header_bytes);
            p.push("server.max_header_bytes", message);
        }
        if !s.admin_token.bytes().all(|b| b.is_ascii_graphic()) {
            // It is compared with what follows `Bearer ` in a header: a space, newline or
            // non-ASCII character (usually a copy-paste accident) makes it impossible to send.
            let message = "must be printable ASCII with no spaces or newlines".to_owned();
            p.push("server.admin_token", message);
        }
        if !matches!(s.log_format.as_str(), "text" | "json") {
            let message = format!("{:?}: expected \"text\" or \"json\"", s.log_format);
            p.push("server.log_format", message);
        }
    }

    fn validate_esi(&self, p: &mut Problems<'_>) {
        let e = &self.esi;
        for (i, glob) in e.process_paths.iter().enumerate() {
            if !glob.starts_with('/') {
                let field = format!("esi.process_paths[{i}]");
                let message = format!("{glob:?} does not start with '/': request paths always do");
                p.push(&field, message);
            }
        }
        if e.max_depth > MAX_ESI_DEPTH {
            let message = format!(
                "{} is over the limit of {MAX_ESI_DEPTH}: includes nested that deep are a loop",
                e.max_depth
            );
            p.push("esi.max_depth", message);
        }
        for (field, value) in [
            ("esi.max_includes", e.max_includes),
            ("esi.max_nesting", e.max_nesting),
        ] {
            if value == 0 {
                p.push(field, "must be greater than 0".into());
            }
        }
        if !matches!(e.on_error.as_str(), "empty" | "fail") {
            let message = format!("{:?}: expected \"empty\" or \"fail\"", e.on_error);
            p.push("esi.on_error", message);
        }
        for (i, name) in e.cookie_names.iter().enumerate() {
            if !is_token(name) {
                let field = format!("esi.cookie_names[{i}]");
                let message = format!(
                    "{name:?} is not a cookie name (letters, digits and !#$%&'*+-.^_`|~ only)"
                );
                p.push(&field, message);
            }
        }
    }

    fn validate_cache(&self, p: &mut Problems<'_>) {
        let c = &self.cache;
        let header_lists = std::iter::once(("cache.key_headers".to_owned(), &c.key_headers)).chain(
            c.rules
                .iter()
                .enumerate()
                .map(|(i, r)| (format!("cache.rules[{i}].key_headers"), &r.key_headers)),
        );
        for (field, names) in header_lists {
            for (i, name) in names.iter().enumerate() {
                if http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()).is_err() {
                    p.push(
                        &format!("{field}[{i}]"),
                        format!("{name:?} is not a header name"),
                    );
                }
            }
        }
        for (i, rule) in c.rules.iter().enumerate() {
            if rule.pattern.is_empty() {
                p.push(
                    &format!("cache.rules[{i}].match"),
                    "must not be empty".into(),
                );
            }
        }
        if c.enabled && c.fragment_capacity_bytes == 0 {
            p.push(
                "cache.fragment_capacity_bytes",
                "must be greater than 0 while the cache is enabled".into(),
            );
        }
    }

    fn validate_fetch(&self, p: &mut Problems<'_>) {
        let f = &self.fetch;
        for (field, value) in [
            ("fetch.connect_timeout_ms", f.connect_timeout_ms),
            ("fetch.fragment_timeout_ms", f.fragment_timeout_ms),
            ("fetch.layout_timeout_ms", f.layout_timeout_ms),
            ("fetch.page_timeout_ms", f.page_timeout_ms),
        ] {
            if value == 0 {
                p.push(field, "must be greater than 0".into());
            }
        }
        if f.fragment_timeout_ms > f.page_timeout_ms && f.page_timeout_ms > 0 {
            // Blame whichever of the two the file sets (the fragment one when it sets both).
            let (frag, page) = (f.fragment_timeout_ms, f.page_timeout_ms);
            if p.keys.line("fetch.page_timeout_ms") > 0
                && p.keys.line("fetch.fragment_timeout_ms") == 0
            {
                let message = format!(
                    "{page} ms is shorter than fetch.fragment_timeout_ms ({frag} ms): the page \
                     deadline would always cut a slow fragment off first"
                );
                p.push("fetch.page_timeout_ms", message);
            } else {
                let message = format!(
                    "{frag} ms is longer than fetch.page_timeout_ms ({page} ms): the page \
                     deadline would always cut a slow fragment off first"
                );
                p.push("fetch.fragment_timeout_ms", message);
            }
        }
        for (field, value) in [
            ("fetch.max_fragment_bytes", f.max_fragment_bytes),
            ("fetch.max_layout_bytes", f.max_layout_bytes),
            ("fetch.max_page_bytes", f.max_page_bytes),
            ("fetch.max_concurrent_per_page", f.max_concurrent_per_page),
            ("fetch.max_concurrent", f.max_concurrent),
        ] {
            if value == 0 {
                p.push(field, "must be greater than 0".into());
            }
        }
        for (i, name) in f.forward_headers.iter().enumerate() {
            let field = format!("fetch.forward_headers[{i}]");
            let lower = name.to_ascii_lowercase();
            if http::HeaderName::from_bytes(lower.as_bytes()).is_err() {
                p.push(&field, format!("{name:?} is not a header name"));
            } else if crate::fetch::NEVER_FORWARDED.contains(&lower.as_str()) {
                let message = format!("{name:?} is never forwarded to fragments");
                p.push(&field, message);
            }
        }
        // Compared as the allowlist compares them: scheme, lowercase host, port or its default.
        let origin = crate::fetch::parse_base_url(&self.server.origin).ok();
        let mut seen: Vec<(crate::fetch::BaseUrl, usize)> = Vec::new();
        for (i, host) in f.hosts.iter().enumerate() {
            let field = format!("fetch.hosts[{i}].url");
            let base = match crate::fetch::parse_base_url(&host.url) {
                Ok(base) => base,
                Err(e) => {
                    p.push(&field, e.to_string());
                    continue;
                }
            };
            if origin.as_ref() == Some(&base) {
                let message = format!(
                    "{:?} is the origin (server.origin), which is always allowed and trusted; \
                     remove this entry",
                    host.url
                );
                p.push(&field, message);
            } else if let Some((_, first)) = seen.iter().find(|(b, _)| *b == base) {
                let message = format!("{:?} is already listed as fetch.hosts[{first}]", host.url);
                p.push(&field, message);
            } else {
                seen.push((base, i));
            }
        }
    }
}

/// An RFC 6265 cookie-name: an RFC 2616 token, i.e. visible ASCII except separators.
fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
}

// === impl Problems ===

impl Problems<'_> {
    /// Records a problem with `field`, at the field's line (0 when the text does not set it).
    fn push(&mut self, field: &str, message: String) {
        self.found.push(Invalid {
            path: self.path.to_owned(),
            line: self.keys.line(field),
            field: field.to_owned(),
            message,
        });
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::is_token;
    use crate::config::{Config, ConfigError, HostConfig};

    /// `(toml, wanted problems as "line: field: message start")`.
    const INVALID: &[(&str, &[&str])] = &[
        ("", &[]),
        ("[server]\nlisten = \"localhost\"\n", &["2: server.listen: \"localhost\" is not"]),
        ("[server]\nmax_header_bytes = 100\n", &["2: server.max_header_bytes: 100 is below"]),
        ("[server]\nadmin_token = \"abc \"\n", &["2: server.admin_token: must be printable"]),
        ("[server]\nlog_format = \"xml\"\n", &["2: server.log_format: \"xml\": expected"]),
        ("[esi]\nmax_depth = 21\n", &["2: esi.max_depth: 21 is over the limit of 20"]),
        ("[esi]\nmax_depth = 20\n", &[]),
        ("[esi]\nmax_depth = 0\n", &[]),
        ("[esi]\nmax_includes = 0\n", &["2: esi.max_includes: must be greater than 0"]),
        ("[esi]\non_error = \"ignore\"\n", &["2: esi.on_error: \"ignore\": expected"]),
        (
            "[esi]\nprocess_paths = [\"/a/*\", \"b/*\", \"*\"]\n",
            &[
                "2: esi.process_paths[1]: \"b/*\" does not start with '/'",
                "2: esi.process_paths[2]: \"*\" does not start with '/'",
            ],
        ),
        (
            "[esi]\ncookie_names = [\n  \"session_id\",\n  \"a b\",\n  \"\",\n  \"x=y\",\n]\n",
            &[
                "4: esi.cookie_names[1]: \"a b\" is not a cookie name",
                "5: esi.cookie_names[2]: \"\" is not a cookie name",
                "6: esi.cookie_names[3]: \"x=y\" is not a cookie name",
            ],
        ),
        ("[esi]\ncookie_names = [\"*\", \"__Host-x\", \"a.b~c\"]\n", &[]),
        (
            "[fetch]\nfragment_timeout_ms = 3000\npage_timeout_ms = 2000\n",
            &["2: fetch.fragment_timeout_ms: 3000 ms is longer than fetch.page_timeout_ms (2000 ms)"],
        ),
        (
            "[fetch]\npage_timeout_ms = 1000\n",
            &["2: fetch.page_timeout_ms: 1000 ms is shorter than fetch.fragment_timeout_ms (2000 ms)"],
        ),
        ("[fetch]\nfragment_timeout_ms = 10000\n", &[]),
        (
            "[fetch]\npage_timeout_ms = 0\n",
            &["2: fetch.page_timeout_ms: must be greater than 0"],
        ),
        (
            "[fetch]\nforward_headers = [\"accept\", \"bad header\", \"Cookie\"]\n",
            &[
                "2: fetch.forward_headers[1]: \"bad header\" is not a header name",
                "2: fetch.forward_headers[2]: \"Cookie\" is never forwarded",
            ],
        ),
        (
            "[server]\norigin = \"http://gw:8081\"\n\
             [[fetch.hosts]]\nurl = \"http://a\"\n\
             [[fetch.hosts]]\nurl = \"HTTP://A:80\"\n\
             [[fetch.hosts]]\nurl = \"http://gw:8081\"\n\
             [[fetch.hosts]]\nurl = \"https://a\"\n",
            &[
                "6: fetch.hosts[1].url: \"HTTP://A:80\" is already listed as fetch.hosts[0]",
                "8: fetch.hosts[2].url: \"http://gw:8081\" is the origin (server.origin)",
            ],
        ),
        (
            "[server]\nlisten = \"nope\"\n[esi]\nmax_depth = 99\n[fetch]\nmax_concurrent = 0\n",
            &[
                "2: server.listen: \"nope\" is not",
                "4: esi.max_depth: 99 is over",
                "6: fetch.max_concurrent: must be greater than 0",
            ],
        ),
    ];

    #[test]
    fn validation_lists_every_problem_in_file_order() {
        for (text, want) in INVALID {
            let config = Config::parse(text, Path::new("f.toml")).expect(text);
            let got: Vec<String> = match config.validate_source("f.toml", Some(text)) {
                Ok(()) => Vec::new(),
                Err(ConfigError::Invalid { problems }) => {
                    problems.iter().map(ToString::to_string).collect()
                }
                Err(e) => panic!("{text:?}: unexpected {e}"),
            };
            assert_eq!(got.len(), want.len(), "{text:?}: {got:#?}");
            for (got, want) in got.iter().zip(*want) {
                let want = format!("f.toml:{want}");
                assert!(
                    got.starts_with(&want),
                    "{text:?}\n got: {got}\nwant: {want}"
                );
            }
        }
    }

    #[test]
    fn validate_without_text_reports_line_zero() {
        let mut config = Config::default();
        config.esi.max_depth = 50;
        config.fetch.hosts.push(HostConfig {
            url: "http://127.0.0.1:8081".into(),
            trusted: false,
            private_network: false,
        });
        let err = config.validate().expect_err("invalid");
        let lines: Vec<String> = err.to_string().lines().map(str::to_owned).collect();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(
            lines[0].starts_with("<config>:0: esi.max_depth: 50 is over"),
            "{lines:?}"
        );
        assert!(
            lines[1].starts_with("<config>:0: fetch.hosts[0].url: "),
            "{lines:?}"
        );
    }

    #[test]
    fn cookie_name_tokens() {
        for (name, ok) in [
            ("session", true),
            ("*", true),
            ("a-b_c.d!#$%&'*+^`|~", true),
            ("", false),
            ("a b", false),
            ("a;b", false),
            ("a=b", false),
            ("\"a\"", false),
            ("a\tb", false),
            ("é", false),
        ] {
            assert_eq!(is_token(name), ok, "{name:?}");
        }
    }
}
