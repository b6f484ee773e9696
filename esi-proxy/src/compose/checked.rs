//! An include's `src`, joined against its document's URL and checked against the allowlist,
//! and its host's metric series, worked out once per parsed template that is run again (a
//! cached layout, a cached ESI fragment) rather than once per request. Kept in the include's
//! [`Memo`] with everything it was worked out from (the composer, which a config reload
//! replaces with its fetcher; what the join reads of the document's URL; the `src` as
//! rendered) and used only while all of them are the same. Only a `src` with no variables is
//! kept, so requests that render it differently never take turns replacing it.

use url::Url;

use crate::esi::Include;
use crate::fetch::Allowed;
use crate::telemetry::FragmentHost;

/// An include's `src` as one composer checked it, in one document.
struct Checked {
    composer: u64,
    base: Box<str>,
    rendered: Box<str>,
    allowed: Allowed,
    host: FragmentHost,
}

/// The include's `src`, rendered as `rendered` in the document at `base`, as `composer`
/// checked it before, and its host's series.
pub(super) fn kept(
    inc: &Include,
    composer: u64,
    base: &Url,
    rendered: &str,
) -> Option<(Allowed, FragmentHost)> {
    let checked = inc.memo.get::<Checked>()?;
    let same = checked.composer == composer
        && *checked.rendered == *rendered
        && *checked.base == *read_of_base(base, rendered);
    same.then(|| (checked.allowed.clone(), checked.host.clone()))
}

/// Keeps what `composer` decided for the include's `src` (rendered as `rendered`, in the
/// document at `base`) and its host's series, when the `src` holds no variable.
pub(super) fn keep(
    inc: &Include,
    (composer, base, rendered): (u64, &Url, &str),
    allowed: &Allowed,
    host: &FragmentHost,
) {
    if !is_constant(inc) {
        return;
    }
    inc.memo.set(std::sync::Arc::new(Checked {
        composer,
        base: read_of_base(base, rendered).into(),
        rendered: rendered.into(),
        allowed: allowed.clone(),
        host: host.clone(),
    }));
}

/// What joining `rendered` against `base` reads of it: nothing for an absolute `http(s)` URL;
/// the scheme and authority for a path from the root; otherwise the whole URL. What is kept is
/// compared with it, so documents that differ only past it (a page's query, which its visitor
/// chooses) share one kept decision, and an absolute `src` or a path from the root keeps no
/// copy of the visitor's URL.
fn read_of_base<'a>(base: &'a Url, rendered: &str) -> &'a str {
    let bytes = rendered.as_bytes();
    let starts = |prefix: &[u8]| {
        bytes
            .get(..prefix.len())
            .is_some_and(|b| b.eq_ignore_ascii_case(prefix))
    };
    if starts(b"http://") || starts(b"https://") {
        ""
    } else if bytes.first() == Some(&b'/') && !matches!(bytes.get(1), Some(b'/' | b'\\')) {
        &base[..url::Position::BeforePath]
    } else {
        base.as_str()
    }
}

/// Whether every request renders the include's `src` the same way: no variable in it or in
/// its `<esi:param>`s.
fn is_constant(inc: &Include) -> bool {
    inc.src.as_constant().is_some()
        && inc
            .options
            .params
            .iter()
            .all(|p| p.value.as_constant().is_some())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Instant;

    use bytes::Bytes;
    use futures::future::BoxFuture;
    use url::Url;

    use crate::compose::tests::Echo;
    use crate::compose::{ComposeConfig, Composer, Page};
    use crate::esi::{self, ParseOptions, Template};
    use crate::fetch::{Allowed, FetchError, Fetcher, Fragment, FragmentRequest};
    use crate::telemetry::Metrics;

    /// [`Echo`], counting its allowlist decisions; with `refuse`, refusing `/f`.
    struct Counting {
        checks: AtomicUsize,
        refuse: bool,
    }

    impl Fetcher for Counting {
        fn fetch(&self, req: FragmentRequest) -> BoxFuture<'static, Result<Fragment, FetchError>> {
            Echo.fetch(req)
        }

        fn check(&self, url: &Arc<Url>) -> Result<Allowed, FetchError> {
            self.checks.fetch_add(1, Ordering::Relaxed);
            if self.refuse && url.path() == "/f" {
                return Err(FetchError::Refused {
                    url: url.to_string(),
                    reason: "not on the allowlist".into(),
                });
            }
            Echo.check(url)
        }
    }

    fn composer(refuse: bool) -> (Arc<Composer>, Arc<Counting>) {
        let settings = crate::config::Config::default()
            .settings()
            .expect("the default is valid");
        let fetcher = Arc::new(Counting {
            checks: AtomicUsize::new(0),
            refuse,
        });
        let config = ComposeConfig::from_config(&settings);
        let composer = Composer::new(fetcher.clone(), config, 64, Arc::new(Metrics::new()));
        (composer, fetcher)
    }

    async fn page(composer: &Arc<Composer>, base: &str, template: &Arc<Template>) -> String {
        let page = Page {
            url: Url::parse(base).expect("valid"),
            vars: esi::Request::new(),
            client_headers: Arc::default(),
            started: Instant::now(),
            trace: None,
            hints: None,
        };
        let mut rx = composer.compose_parsed(page, Arc::clone(template));
        let mut body = Vec::new();
        while let Some(chunk) = rx.recv().await {
            body.extend_from_slice(&chunk.expect("the page completes"));
        }
        String::from_utf8(body).expect("utf-8")
    }

    /// Two documents whose URLs agree on what a `src` reads of them join it the same way.
    #[test]
    fn what_a_join_reads_of_the_base_decides_it() {
        let bases = [
            "http://shop.test/p/a?x=1",
            "http://shop.test/p/a?x=2",
            "http://shop.test/p/b?x=1",
            "http://shop.test:8080/p/a",
            "https://shop.test/p/a",
            "http://user@shop.test/p/a",
            "http://other.test/q/",
        ];
        let srcs = [
            "http://frag.test/f",
            "HTTPS://frag.test/f",
            "/f?y=1",
            "/",
            "//frag.test/f",
            "/\\frag.test/f",
            "\\f",
            "f",
            "../f",
            "?y=1",
            "",
            "#top",
            "http:f",
        ];
        for src in srcs {
            for a in bases {
                for b in bases {
                    let (a, b) = (Url::parse(a).expect("valid"), Url::parse(b).expect("valid"));
                    if super::read_of_base(&a, src) == super::read_of_base(&b, src) {
                        assert_eq!(
                            a.join(src).ok(),
                            b.join(src).ok(),
                            "{src:?} against {a} and {b}"
                        );
                    }
                }
            }
        }
        let page = Url::parse("http://shop.test/p?q=visitor").expect("valid");
        assert_eq!(super::read_of_base(&page, "http://frag.test/f"), "");
        assert_eq!(super::read_of_base(&page, "/f"), "http://shop.test");
        assert_eq!(super::read_of_base(&page, "f"), page.as_str());
    }

    #[tokio::test]
    async fn a_reused_templates_constant_src_is_checked_once_per_composer_and_base() {
        let layout = Bytes::from_static(
            b"a<esi:include src=\"/f\"/>b<esi:include src=\"/g?q=$(QUERY_STRING)\"/>c",
        );
        let template = Arc::new(esi::parse(layout, &ParseOptions::default()).expect("lenient"));
        let (first, counted) = composer(false);
        let checks = || counted.checks.load(Ordering::Relaxed);

        assert_eq!(
            page(&first, "http://shop.test/p", &template).await,
            "a/fb/gc"
        );
        assert_eq!(checks(), 2);
        assert_eq!(
            page(&first, "http://shop.test/p", &template).await,
            "a/fb/gc"
        );
        assert_eq!(
            checks(),
            3,
            "the constant src kept, the one with a variable checked again"
        );

        // Another document URL: a relative src may mean another URL there.
        assert_eq!(
            page(&first, "http://other.test/p", &template).await,
            "a/fb/gc"
        );
        assert_eq!(checks(), 5);

        // A reload brings another composer and fetcher: their allowlist decides, not the kept one.
        let (reloaded, refusing) = composer(true);
        assert_eq!(
            page(&reloaded, "http://other.test/p", &template).await,
            "ab/gc"
        );
        assert_eq!(refusing.checks.load(Ordering::Relaxed), 2);
        assert_eq!(
            page(&reloaded, "http://other.test/p", &template).await,
            "ab/gc"
        );
        assert_eq!(
            refusing.checks.load(Ordering::Relaxed),
            4,
            "a refusal is not kept: it is decided again"
        );
    }
}
