//! Criterion bench of the composer on the 107 KB layout with 120 includes, every fragment ready:
//! an in-memory `Fetcher` answers each `src` at once with a small HTML body, so what is timed is
//! the composer's own work per include (URL resolution, the fetch task and its permits, ordered
//! output), apart from the network. `compose_cached` puts the fragment cache in front of it,
//! warmed, so every include is a cache hit: the warm page's path without the network. Inputs
//! are built outside the timed loops.

// criterion_group! generates an undocumented pub fn.
#![allow(missing_docs)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use futures::future::{self, BoxFuture};
use http::header::CACHE_CONTROL;
use http::{HeaderMap, HeaderValue, StatusCode};
use tokio::sync::mpsc;
use url::Url;

use esi_proxy::cache::{CachePolicy, CachingFetcher, FragmentCache};
use esi_proxy::compose::{ComposeConfig, ComposeError, Composer, Page};
use esi_proxy::config::Config;
use esi_proxy::esi::{self, ParseOptions, Template};
use esi_proxy::fetch::{FetchError, Fetcher, Fragment, FragmentRequest};
use esi_proxy::telemetry::Metrics;

const LAYOUT_120: &[u8] = include_bytes!("data/layout-120.html");

/// Size of each fragment body: small, so the bench weighs the composer, not the copying.
const FRAGMENT_BYTES: usize = 200;

/// Every fragment of the layout, ready: a body per path, answered at once with `headers`.
struct Ready {
    bodies: HashMap<String, Bytes>,
    headers: Arc<HeaderMap>,
}

impl Fetcher for Ready {
    fn fetch(&self, req: FragmentRequest) -> BoxFuture<'static, Result<Fragment, FetchError>> {
        let result = match self.bodies.get(req.url.path()) {
            Some(body) => Ok(Fragment {
                status: StatusCode::OK,
                headers: Arc::clone(&self.headers),
                body: body.clone(),
                cache: None,
                template: None,
            }),
            None => Err(FetchError::Status {
                url: req.url.to_string(),
                status: StatusCode::NOT_FOUND,
            }),
        };
        Box::pin(future::ready(result))
    }
}

/// The page request every iteration starts from (with its own start time).
fn page() -> Page {
    Page {
        url: Url::parse("http://shop.test/product/42").expect("valid URL"),
        vars: esi::Request::new(),
        client_headers: Arc::default(),
        started: Instant::now(),
        trace: None,
        hints: None,
    }
}

/// Reads a page to its end; the composed body's length.
async fn drain(mut rx: mpsc::Receiver<Result<Bytes, ComposeError>>) -> usize {
    let mut len = 0;
    while let Some(chunk) = rx.recv().await {
        len += chunk.expect("every fragment is ready").len();
    }
    len
}

/// A layout-cache hit: the page from the layout parsed once. Runs on the runtime, as the
/// composer spawns the page's task the moment it is asked.
async fn compose_parsed(composer: &Arc<Composer>, template: &Arc<Template>) -> usize {
    drain(composer.compose_parsed(page(), Arc::clone(template))).await
}

/// A miss: the page from the layout as it arrives in `chunks`, parsed while it streams.
async fn compose_streamed(composer: &Arc<Composer>, chunks: &[Bytes]) -> usize {
    // Owned: the stream outlives this call, on the page's task.
    let layout: Vec<Result<Bytes, String>> = chunks.iter().cloned().map(Ok).collect();
    drain(composer.compose(page(), futures::stream::iter(layout), None)).await
}

fn compose_layout_120(c: &mut Criterion) {
    let template = Arc::new(
        esi::parse(Bytes::from_static(LAYOUT_120), &ParseOptions::default())
            .expect("lenient parse never fails"),
    );
    let paths: Vec<String> = template
        .includes()
        .iter()
        .map(|inc| inc.src.as_constant().expect("plain src").to_owned())
        .collect();
    assert_eq!(paths.len(), 120);
    let bodies: HashMap<String, Bytes> = paths
        .iter()
        .enumerate()
        .map(|(i, path)| {
            (
                path.clone(),
                Bytes::from(fragments::fragment_body(i, FRAGMENT_BYTES)),
            )
        })
        .collect();
    let want = reference(&template, &bodies);
    let settings = Config::default()
        .settings()
        .expect("the default config is valid");
    let composer_over = |fetcher: Arc<dyn Fetcher>| {
        Composer::new(
            fetcher,
            ComposeConfig::from_config(&settings),
            settings.fetch.max_concurrent,
            Arc::new(Metrics::new()),
        )
    };
    let composer = composer_over(Arc::new(Ready {
        bodies: bodies.clone(),
        headers: Arc::default(),
    }));
    let mut cacheable = HeaderMap::new();
    cacheable.insert(CACHE_CONTROL, HeaderValue::from_static("max-age=3600"));
    let cache = FragmentCache::new(
        settings.cache.fragment_capacity_bytes,
        settings.cache.max_surrogate_index_entries,
        Arc::new(Metrics::new()),
    );
    let cached = composer_over(Arc::new(CachingFetcher::new(
        Arc::new(Ready {
            bodies,
            headers: Arc::new(cacheable),
        }),
        Arc::clone(&cache),
        Arc::new(CachePolicy::from_config(&settings.cache)),
        ParseOptions::default(),
    )));
    let chunks: Vec<Bytes> = LAYOUT_120
        .chunks(16 * 1024)
        .map(Bytes::copy_from_slice)
        .collect();
    // One thread: the composer's CPU per include, without hand-offs between workers.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    assert_eq!(rt.block_on(compose_parsed(&composer, &template)), want);
    assert_eq!(rt.block_on(compose_streamed(&composer, &chunks)), want);
    // The first page fills the cache; every later one is all hits.
    assert_eq!(rt.block_on(compose_parsed(&cached, &template)), want);
    rt.block_on(cache.run_pending_tasks());
    assert_eq!(cache.entry_count(), 120, "every fragment is cached");

    let mut group = c.benchmark_group("layout_120_includes");
    group.throughput(Throughput::Elements(paths.len() as u64));
    group.bench_function("compose_parsed", |b| {
        b.iter(|| black_box(rt.block_on(compose_parsed(&composer, &template))))
    });
    group.bench_function("compose_streamed_16k", |b| {
        b.iter(|| black_box(rt.block_on(compose_streamed(&composer, &chunks))))
    });
    group.bench_function("compose_cached", |b| {
        b.iter(|| black_box(rt.block_on(compose_parsed(&cached, &template))))
    });
    group.finish();
}

/// The composed page's length by the engine's reference renderer: what the composer must send.
fn reference(template: &Template, bodies: &HashMap<String, Bytes>) -> usize {
    let mut out = Vec::new();
    template
        .render(
            &esi::Request::new(),
            &esi::VarPolicy::default(),
            &mut |src: &str| bodies.get(src).cloned(),
            &mut out,
        )
        .expect("every include answers");
    out.len()
}

criterion_group!(benches, compose_layout_120);
criterion_main!(benches);
