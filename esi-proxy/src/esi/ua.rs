//! `HTTP_USER_AGENT{browser|os|version}` (ESI 1.0 §5): what a User-Agent header says of the
//! browser, its operating system and its version, read the way other processors read it.
//! Pure string work: no I/O.

/// The browser families ESI 1.0 names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Browser {
    Msie,
    Mozilla,
    Other,
}

impl Browser {
    /// `MSIE`, `MOZILLA` or `OTHER`.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Browser::Msie => "MSIE",
            Browser::Mozilla => "MOZILLA",
            Browser::Other => "OTHER",
        }
    }
}

/// The browser family of a User-Agent.
pub(super) fn ua_browser(ua: &str) -> Browser {
    if ua.contains("MSIE ") || ua.contains("Trident/") {
        Browser::Msie
    } else if ua.starts_with("Mozilla/") {
        Browser::Mozilla
    } else {
        Browser::Other
    }
}

/// `WIN`, `MAC`, `UNIX` or `OTHER`.
pub(super) fn ua_os(ua: &str) -> &'static str {
    const WIN: [&str; 5] = ["Windows", "Win32", "Win64", "Win98", "Win95"];
    const UNIX: [&str; 6] = ["X11", "Linux", "BSD", "SunOS", "Unix", "UNIX"];
    if WIN.iter().any(|w| ua.contains(w)) {
        "WIN"
    } else if ua.contains("Mac") {
        "MAC"
    } else if UNIX.iter().any(|u| ua.contains(u)) {
        "UNIX"
    } else {
        "OTHER"
    }
}

/// The browser's version as the User-Agent writes it; empty when it names none.
pub(super) fn ua_version(ua: &str) -> &str {
    /// The text after `marker` up to a space, `;` or `)`.
    fn after<'a>(ua: &'a str, marker: &str) -> Option<&'a str> {
        let rest = &ua[ua.find(marker)? + marker.len()..];
        let end = rest.find([' ', ';', ')']).unwrap_or(rest.len());
        Some(&rest[..end])
    }
    let version = match ua_browser(ua) {
        Browser::Msie => after(ua, "MSIE ").or_else(|| after(ua, "rv:")),
        Browser::Mozilla => after(ua, "Mozilla/"),
        Browser::Other => ua.split_ascii_whitespace().find_map(|token| {
            let (product, version) = token.split_once('/')?;
            let end = version.find([';', ')']).unwrap_or(version.len());
            let version = &version[..end];
            (!product.is_empty() && !version.is_empty()).then_some(version)
        }),
    };
    version.unwrap_or("")
}
