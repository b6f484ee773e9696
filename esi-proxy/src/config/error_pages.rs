//! `esi.primary_error_pages`: the pages a page sends in place of its primary fragment's body when
//! the primary answers 4xx/5xx, or fails so the page is a 502/504. Keys are a status (`"404"`) or
//! a class (`"4xx"`, `"5xx"`); an exact status wins over its class. Each file is read and
//! size-checked when the config is validated (at start and at every reload), so a page that
//! cannot be read refuses the config instead of failing a visitor's request later.

use std::collections::BTreeMap;

use bytes::Bytes;
use http::StatusCode;

/// Largest error page file, in bytes: it is held in memory and sent whole.
pub const MAX_ERROR_PAGE_BYTES: u64 = 1024 * 1024;

/// The configured error pages, read from their files; empty when none is configured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorPages {
    exact: BTreeMap<u16, Bytes>,
    /// Index 0 for `4xx`, 1 for `5xx`.
    class: [Option<Bytes>; 2],
}

/// What a key of `esi.primary_error_pages` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PageKey {
    /// One status, 400 to 599.
    Exact(u16),
    /// Every status of a class: 4 or 5.
    Class(u8),
}

// === impl ErrorPages ===

impl ErrorPages {
    /// The page for `status`: its own, else its class's. `None` for statuses below 400, and
    /// when neither is configured.
    pub fn for_status(&self, status: StatusCode) -> Option<&Bytes> {
        let code = status.as_u16();
        let class = match code {
            400..=499 => 0,
            500..=599 => 1,
            _ => return None,
        };
        self.exact.get(&code).or(self.class[class].as_ref())
    }

    /// Whether no page is configured.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.class.iter().all(Option::is_none)
    }

    /// Adds the page for `key`: a status (`"404"`, 400 to 599) or a class (`"4xx"`, `"5xx"`).
    ///
    /// # Errors
    /// `key` is neither, with a message saying what it must be.
    pub fn insert(&mut self, key: &str, page: Bytes) -> Result<(), String> {
        match parse_key(key)? {
            PageKey::Exact(code) => {
                self.exact.insert(code, page);
            }
            PageKey::Class(class) => self.class[usize::from(class - 4)] = Some(page),
        }
        Ok(())
    }
}

/// Reads a key: `"404"` (400 to 599) or `"4xx"`/`"5xx"`.
fn parse_key(key: &str) -> Result<PageKey, String> {
    match key.to_ascii_lowercase().as_str() {
        "4xx" => return Ok(PageKey::Class(4)),
        "5xx" => return Ok(PageKey::Class(5)),
        _ => {}
    }
    match key.parse::<u16>() {
        Ok(code @ 400..=599) if key.len() == 3 => Ok(PageKey::Exact(code)),
        _ => Err(format!(
            "{key:?} is not a status from 400 to 599, \"4xx\" or \"5xx\""
        )),
    }
}

/// Reads an error page file whole, refusing one larger than [`MAX_ERROR_PAGE_BYTES`].
pub(super) fn read_page(file: &str) -> Result<Bytes, String> {
    use std::io::Read;

    let mut handle = std::fs::File::open(file).map_err(|e| format!("{file:?}: {e}"))?;
    let mut page = Vec::new();
    // One byte past the bound tells an oversize file without reading all of it.
    (&mut handle)
        .take(MAX_ERROR_PAGE_BYTES + 1)
        .read_to_end(&mut page)
        .map_err(|e| format!("{file:?}: {e}"))?;
    if page.len() as u64 > MAX_ERROR_PAGE_BYTES {
        return Err(format!(
            "{file:?} is larger than {MAX_ERROR_PAGE_BYTES} bytes"
        ));
    }
    Ok(Bytes::from(page))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert_eq!(parse_key("404"), Ok(PageKey::Exact(404)));
        assert_eq!(parse_key("599"), Ok(PageKey::Exact(599)));
        assert_eq!(parse_key("5XX"), Ok(PageKey::Class(5)));
        for bad in ["302", "600", "4x", "0404", "+404", "", "3xx", "404 "] {
            assert!(parse_key(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn exact_status_wins_over_its_class() {
        let mut pages = ErrorPages::default();
        assert!(pages.is_empty());
        pages
            .insert("4xx", Bytes::from_static(b"client"))
            .expect("class");
        pages
            .insert("404", Bytes::from_static(b"not found"))
            .expect("status");
        assert!(pages.insert("302", Bytes::new()).is_err());
        assert!(!pages.is_empty());
        let page = |code| pages.for_status(StatusCode::from_u16(code).expect("status"));
        assert_eq!(page(404).map(|b| &b[..]), Some(&b"not found"[..]));
        assert_eq!(page(410).map(|b| &b[..]), Some(&b"client"[..]));
        assert_eq!(page(503), None, "no 5xx page configured");
        assert_eq!(page(302), None);
    }

    #[test]
    fn files_are_read_whole_and_bounded() {
        let dir = std::env::temp_dir().join(format!("esi-error-pages-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let small = dir.join("404.html");
        std::fs::write(&small, "<h1>gone</h1>").expect("write");
        let big = dir.join("big.html");
        std::fs::write(&big, vec![b'x'; MAX_ERROR_PAGE_BYTES as usize + 1]).expect("write");
        let read = |p: &std::path::Path| read_page(p.to_str().expect("utf-8 path"));
        assert_eq!(read(&small).as_deref(), Ok(&b"<h1>gone</h1>"[..]));
        let err = read(&big).expect_err("oversize");
        assert!(err.contains("larger than"), "{err}");
        let err = read(&dir.join("missing.html")).expect_err("missing");
        assert!(err.contains("missing.html"), "{err}");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
