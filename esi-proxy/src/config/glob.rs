//! The glob matcher of `[[cache.rules]]` `match` and `esi.process_paths`: `*` matches any run
//! of characters. Knows nothing of the schema.

/// Whether `text` matches `glob`, where `*` matches any run of characters and everything else
/// matches itself.
pub fn glob_match(glob: &str, text: &str) -> bool {
    let mut parts = glob.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    for (i, part) in parts.iter().enumerate() {
        if i + 1 == parts.len() {
            return rest.ends_with(part);
        }
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.is_empty()
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    /// `(glob, text, matches)`.
    const CASES: &[(&str, &str, bool)] = &[
        ("/a", "/a", true),
        ("/a", "/ab", false),
        ("/a/*", "/a/", true),
        ("/a/*", "/a/b/c", true),
        ("/a/*", "/b/a/", false),
        ("*", "", true),
        ("*.html", "/x/page.html", true),
        ("*.html", "/x/page.htm", false),
        ("/a/*/c", "/a/b/c", true),
        ("/a/*/c", "/a/b/d", false),
        ("/a*b*c", "/aXbYc", true),
        ("/a*b*c", "/acb", false),
        ("shop:8080/*", "shop:8080/cart", true),
        ("**", "anything", true),
    ];

    #[test]
    fn globs() {
        for (glob, text, want) in CASES {
            assert_eq!(glob_match(glob, text), *want, "{glob:?} on {text:?}");
        }
    }
}
