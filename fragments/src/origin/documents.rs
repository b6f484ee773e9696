//! The documents the origin serves and how they are named: [`Page`] (a layout with `n`
//! includes in some [`Markup`], their [`Delays`], a TTL), its path and its body, and the
//! fragment bodies. Pure: no I/O; the server in the parent module answers with them.

use std::fmt::{self, Write as _};

use crate::{fragment_body, layout_with, Rng};

/// Longest delay a request may ask for: a bound, so a typo cannot park a connection for hours.
pub const MAX_DELAY_MS: u64 = 60_000;

/// Smallest fragment body [`fragment`] generates (before the closing markup).
pub const FRAGMENT_MIN_BYTES: usize = 1024;

/// Largest fragment body size [`fragment`] asks the generator for.
pub const FRAGMENT_MAX_BYTES: usize = 4096;

/// A page the origin serves: `/page/{markup}/{n}`, optionally with `delay` and `ttl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Page {
    /// The include markup.
    pub markup: Markup,
    /// How many includes.
    pub n: usize,
    /// The delay each include asks its fragment for.
    pub delays: Delays,
    /// `Some(s)`: the layout and every include are cacheable for `s` seconds
    /// (`Cache-Control: public, max-age=s`); `None`: the origin's default `Cache-Control`.
    pub ttl_s: Option<u64>,
}

/// Which include markup a page carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Markup {
    /// `<esi:include src="..."/>`, marked with `Surrogate-Control: content="ESI/1.0"`.
    Esi,
    /// nginx SSI: `<!--# include virtual="..." -->`.
    Ssi,
}

/// The delay each include of a page asks its fragment for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Delays {
    /// No delay: `/frag/{i}`.
    #[default]
    None,
    /// The same delay in ms for every fragment.
    Fixed(u64),
    /// A delay in `lo..=hi` ms, chosen deterministically per fragment index.
    Range(u64, u64),
}

// === impl Page ===

impl Page {
    /// `n` undelayed includes in `markup`, with the origin's default `Cache-Control`.
    pub fn new(markup: Markup, n: usize) -> Self {
        Self {
            markup,
            n,
            delays: Delays::None,
            ttl_s: None,
        }
    }

    /// The same page with each include asking for `delays`.
    pub fn with_delays(self, delays: Delays) -> Self {
        Self { delays, ..self }
    }

    /// The same page, cacheable for `ttl_s` seconds (layout and includes).
    pub fn with_ttl_s(self, ttl_s: u64) -> Self {
        Self {
            ttl_s: Some(ttl_s),
            ..self
        }
    }

    /// The path that names it: `/page/esi/120`, `/page/ssi/120?delay=5-20`,
    /// `/page/esi/10?ttl=300`.
    pub fn path(&self) -> String {
        let mut path = format!("/page/{}/{}", self.markup.as_str(), self.n);
        let mut sep = '?';
        if self.delays != Delays::None {
            let _ = write!(path, "{sep}delay={}", self.delays);
            sep = '&';
        }
        if let Some(ttl) = self.ttl_s {
            let _ = write!(path, "{sep}ttl={ttl}");
        }
        path
    }

    /// The `src` of include `i`: `/frag/{i}`, then `?d={ms}` when delayed and `ttl={s}` when
    /// cacheable (`/frag/{i}?d=12&ttl=300`). The `&` is left raw: nginx and Varnish take the
    /// attribute as written, and esi-proxy decodes only character references (`&ttl` is none).
    pub fn src(&self, i: usize) -> String {
        let mut src = self.delays.src(i);
        if let Some(ttl) = self.ttl_s {
            let sep = if src.contains('?') { '&' } else { '?' };
            let _ = write!(src, "{sep}ttl={ttl}");
        }
        src
    }

    /// The layout the origin serves for it, with `paragraphs` paragraphs of text before each
    /// include.
    pub fn body(&self, paragraphs: usize) -> String {
        layout_with(self.n, paragraphs, |i| self.markup.include(&self.src(i)))
    }
}

// === impl Markup ===

impl Markup {
    /// The path segment naming this markup: `esi` or `ssi`.
    pub fn as_str(self) -> &'static str {
        match self {
            Markup::Esi => "esi",
            Markup::Ssi => "ssi",
        }
    }

    /// The include tag for `src` in this markup.
    pub fn include(self, src: &str) -> String {
        match self {
            Markup::Esi => format!("<esi:include src=\"{src}\"/>"),
            Markup::Ssi => format!("<!--# include virtual=\"{src}\" -->"),
        }
    }
}

// === impl Delays ===

impl Delays {
    /// Parses the `delay` query value: `A` (fixed) or `A-B` (range, `A <= B`), in ms, each at
    /// most [`MAX_DELAY_MS`]; `0` means no delay.
    pub fn parse(value: &str) -> Option<Delays> {
        let ms = |s: &str| s.parse::<u64>().ok().filter(|&v| v <= MAX_DELAY_MS);
        match value.split_once('-') {
            None => match ms(value)? {
                0 => Some(Delays::None),
                v => Some(Delays::Fixed(v)),
            },
            Some((lo, hi)) => {
                let (lo, hi) = (ms(lo)?, ms(hi)?);
                (lo <= hi).then_some(Delays::Range(lo, hi))
            }
        }
    }

    /// The delay in ms that include `i` asks for (0 for none).
    pub fn for_fragment(self, i: usize) -> u64 {
        match self {
            Delays::None => 0,
            Delays::Fixed(ms) => ms,
            // Its own stream (salted), so delays do not follow the fragment sizes.
            Delays::Range(lo, hi) => lo + Rng::new(i as u64 ^ 0xD1A7).below(hi - lo + 1),
        }
    }

    /// The longest delay among includes `0..n`: with the layout's time, the floor of a page
    /// that fetches its fragments concurrently.
    pub fn max_of(self, n: usize) -> u64 {
        (0..n).map(|i| self.for_fragment(i)).max().unwrap_or(0)
    }

    /// The `src` of include `i`: `/frag/{i}` or `/frag/{i}?d={ms}`.
    pub fn src(self, i: usize) -> String {
        match self.for_fragment(i) {
            0 => format!("/frag/{i}"),
            ms => format!("/frag/{i}?d={ms}"),
        }
    }
}

impl fmt::Display for Delays {
    /// The `delay` query value that [`Delays::parse`] reads back (`0` for none).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Delays::None => f.write_str("0"),
            Delays::Fixed(ms) => write!(f, "{ms}"),
            Delays::Range(lo, hi) => write!(f, "{lo}-{hi}"),
        }
    }
}

// === the documents ===

/// The size asked of the generator for fragment `i`: in `1024..=4096`, fixed per `i`.
pub fn fragment_bytes(i: usize) -> usize {
    let span = (FRAGMENT_MAX_BYTES - FRAGMENT_MIN_BYTES + 1) as u64;
    FRAGMENT_MIN_BYTES + Rng::new(i as u64 ^ 0xF4A6).below(span) as usize
}

/// The body `/frag/{i}` serves: a `<div data-fragment="{i}">` of 1–4 KB, the same on every run.
pub fn fragment(i: usize) -> String {
    fragment_body(i, fragment_bytes(i))
}

/// The body `/page/{markup}/{n}?delay={delays}` serves, with `paragraphs` paragraphs of text
/// before each include.
pub fn page(markup: Markup, n: usize, delays: Delays, paragraphs: usize) -> String {
    Page::new(markup, n).with_delays(delays).body(paragraphs)
}

/// The path of a page: `/page/esi/120` or `/page/ssi/120?delay=5-20` ([`Page::path`] also
/// names cacheable pages).
pub fn page_path(markup: Markup, n: usize, delays: Delays) -> String {
    Page::new(markup, n).with_delays(delays).path()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_parse_and_print() {
        for (text, want) in [
            ("0", Some(Delays::None)),
            ("15", Some(Delays::Fixed(15))),
            ("5-20", Some(Delays::Range(5, 20))),
            ("7-7", Some(Delays::Range(7, 7))),
            ("20-5", None),
            ("-5", None),
            ("5-", None),
            ("x", None),
            ("60001", None),
            ("", None),
        ] {
            assert_eq!(Delays::parse(text), want, "{text:?}");
            if let Some(d) = want.filter(|d| *d != Delays::None) {
                assert_eq!(d.to_string(), text);
            }
        }
    }

    #[test]
    fn range_delays_are_fixed_per_fragment_and_cover_the_range() {
        let d = Delays::Range(5, 20);
        let all: Vec<u64> = (0..120).map(|i| d.for_fragment(i)).collect();
        assert!(all.iter().all(|ms| (5..=20).contains(ms)), "{all:?}");
        assert_eq!(all, (0..120).map(|i| d.for_fragment(i)).collect::<Vec<_>>());
        assert_eq!(all.iter().min(), Some(&5), "{all:?}");
        assert_eq!(d.max_of(120), 20, "{all:?}");
        assert_eq!(Delays::Fixed(9).max_of(3), 9);
        assert_eq!(Delays::None.max_of(3), 0);
        assert_eq!(d.max_of(0), 0);
    }

    #[test]
    fn fragments_are_one_to_four_kb_and_distinct() {
        for i in 0..200 {
            let body = fragment(i);
            assert!((1000..=4200).contains(&body.len()), "{i}: {}", body.len());
            assert!(
                body.starts_with(&format!("<div class=\"fragment\" data-fragment=\"{i}\">")),
                "{i}"
            );
            assert!(!body.contains("esi:") && !body.contains("<!--"), "{i}");
        }
        let sizes: std::collections::HashSet<usize> = (0..200).map(fragment_bytes).collect();
        assert!(sizes.len() > 100, "sizes vary: {}", sizes.len());
    }

    #[test]
    fn page_paths() {
        for (markup, n, delays, want) in [
            (Markup::Esi, 10, Delays::None, "/page/esi/10"),
            (
                Markup::Ssi,
                120,
                Delays::Range(5, 20),
                "/page/ssi/120?delay=5-20",
            ),
            (Markup::Esi, 1, Delays::Fixed(30), "/page/esi/1?delay=30"),
        ] {
            assert_eq!(page_path(markup, n, delays), want);
        }
    }

    #[test]
    fn cacheable_page_paths_and_srcs() {
        let esi = Page::new(Markup::Esi, 10);
        let delayed = Page::new(Markup::Ssi, 120).with_delays(Delays::Fixed(12));
        for (page, want_path, want_src_3) in [
            (esi, "/page/esi/10", "/frag/3"),
            (
                esi.with_ttl_s(300),
                "/page/esi/10?ttl=300",
                "/frag/3?ttl=300",
            ),
            (esi.with_ttl_s(0), "/page/esi/10?ttl=0", "/frag/3?ttl=0"),
            (delayed, "/page/ssi/120?delay=12", "/frag/3?d=12"),
            (
                delayed.with_ttl_s(60),
                "/page/ssi/120?delay=12&ttl=60",
                "/frag/3?d=12&ttl=60",
            ),
        ] {
            assert_eq!(page.path(), want_path, "{page:?}");
            assert_eq!(page.src(3), want_src_3, "{page:?}");
        }
        // Without a TTL, `Page` is what `page` and `page_path` always served.
        assert_eq!(
            delayed.body(2),
            page(Markup::Ssi, 120, Delays::Fixed(12), 2)
        );
    }
}
