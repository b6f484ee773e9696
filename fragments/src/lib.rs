//! Realistic pages for esi-proxy's tests and benches: product-page layouts with N includes and
//! fragment bodies of a chosen size, generated deterministically from a seed.
//! The generators touch no network; [`origin`] serves them over HTTP for tests and benches.

use std::fmt::Write as _;

pub mod demo;
pub mod origin;
mod server;

const WORDS: &[&str] = &[
    "lorem",
    "ipsum",
    "dolor",
    "sit",
    "amet",
    "consectetur",
    "adipiscing",
    "elit",
    "sed",
    "do",
    "eiusmod",
    "tempor",
    "fresh",
    "organic",
    "sale",
    "price",
    "review",
    "shipping",
    "colour",
    "size",
];

/// A small deterministic generator (xorshift64*), so generated pages are the same on every run.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`; equal seeds give equal sequences.
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next pseudo-random number.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (`n` must be non-zero).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// Appends words to `out` until it is at least `len` bytes long.
fn fill_words(rng: &mut Rng, out: &mut String, len: usize) {
    while out.len() < len {
        let word = WORDS[rng.below(WORDS.len() as u64) as usize];
        out.push_str(word);
        out.push(' ');
    }
}

/// A fragment body of about `bytes` bytes: a `<div>` of paragraphs, as a fragment service returns.
pub fn fragment_body(id: usize, bytes: usize) -> String {
    let mut rng = Rng::new(id as u64 + 1);
    let mut out = String::with_capacity(bytes + 64);
    let _ = write!(out, "<div class=\"fragment\" data-fragment=\"{id}\">");
    while out.len() + 6 < bytes {
        out.push_str("<p>");
        let target = (out.len() + 120).min(bytes.saturating_sub(10));
        fill_words(&mut rng, &mut out, target);
        out.push_str("</p>");
    }
    out.push_str("</div>");
    out
}

/// A layout page holding `includes` `<esi:include>` tags whose `src` is `src_of(i)`, with
/// `paragraphs` paragraphs of text before each, as a gateway serves it.
pub fn layout(includes: usize, paragraphs: usize, src_of: impl Fn(usize) -> String) -> String {
    layout_with(includes, paragraphs, |i| {
        format!("<esi:include src=\"{}\"/>", src_of(i))
    })
}

/// The same layout as [`layout`] (same text for the same `includes` and `paragraphs`), with the
/// markup of slot `i` given whole by `tag_of(i)`: an `<esi:include>`, an nginx SSI
/// `<!--# include -->`, or anything else a composer understands.
pub fn layout_with(includes: usize, paragraphs: usize, tag_of: impl Fn(usize) -> String) -> String {
    let mut rng = Rng::new(includes as u64);
    let mut out = String::from("<!doctype html><html><head><title>Product</title></head><body>\n");
    for i in 0..includes {
        let _ = writeln!(out, "<section id=\"s{i}\">");
        for _ in 0..paragraphs {
            out.push_str("<p>");
            let target = out.len() + 200;
            fill_words(&mut rng, &mut out, target);
            out.push_str("</p>\n");
        }
        let _ = writeln!(out, "{}\n</section>", tag_of(i));
    }
    out.push_str("</body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragment_body_has_the_asked_size_and_is_deterministic() {
        for size in [64, 1024, 4096] {
            let body = fragment_body(7, size);
            assert!(
                body.len() >= size - 16 && body.len() <= size + 160,
                "{size}: {}",
                body.len()
            );
            assert_eq!(body, fragment_body(7, size));
            assert!(body.starts_with("<div") && body.ends_with("</div>"));
        }
        assert_ne!(fragment_body(1, 1024), fragment_body(2, 1024));
    }

    #[test]
    fn layout_holds_one_include_per_slot() {
        let page = layout(120, 3, |i| format!("/frag/{i}.html"));
        assert_eq!(page.matches("<esi:include").count(), 120);
        assert!(page.contains("src=\"/frag/119.html\""));
    }
}
