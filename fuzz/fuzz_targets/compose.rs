//! Fuzz target: random layouts and fragments through the composer over an in-memory fetcher
//! (`/f0` .. `/f7` answer with the input's fragments, anything else is a 404), under small
//! limits the input picks; nothing may panic or hang, and the page never exceeds
//! `max_page_bytes`.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use esi_proxy::compose::{ComposeConfig, Composer, Page};
use esi_proxy::config::{Config, OnError};
use esi_proxy::esi::{self, ParseOptions};
use esi_proxy::fetch::{FetchError, Fetcher, Fragment, FragmentRequest};
use esi_proxy::telemetry::Metrics;
use futures::future::{self, BoxFuture};
use http::{HeaderMap, StatusCode};
use libfuzzer_sys::fuzz_target;
use url::Url;

/// Fragments by index: `/f{i}` answers with `bodies[i]` at once.
struct InMemory {
    bodies: Vec<Bytes>,
}

impl Fetcher for InMemory {
    fn fetch(&self, req: FragmentRequest) -> BoxFuture<'static, Result<Fragment, FetchError>> {
        let body = req
            .url
            .path()
            .strip_prefix("/f")
            .and_then(|i| i.parse::<usize>().ok())
            .and_then(|i| self.bodies.get(i));
        let result = match body {
            Some(body) => Ok(Fragment {
                status: StatusCode::OK,
                headers: Arc::new(esi_marked()),
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

/// Every fragment is marked as ESI, so includes compose it and `esi:eval` runs it.
fn esi_marked() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        "surrogate-control",
        http::HeaderValue::from_static("content=\"ESI/1.0\""),
    );
    headers
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a runtime")
    })
}

/// The composition settings of the default config, which the input's limits then change.
fn defaults() -> &'static ComposeConfig {
    static DEFAULTS: OnceLock<ComposeConfig> = OnceLock::new();
    DEFAULTS.get_or_init(|| {
        let settings = Config::default().settings().expect("the default is valid");
        ComposeConfig::from_config(&settings)
    })
}

fuzz_target!(|data: &[u8]| {
    let [limits, depth, cut, rest @ ..] = data else {
        return;
    };
    // The layout, then up to eight fragments, separated by NUL bytes.
    let mut parts = rest.split(|b| *b == 0).map(Bytes::copy_from_slice);
    let layout = parts.next().unwrap_or_default();
    let bodies: Vec<Bytes> = parts.take(8).collect();
    let mut config = defaults().clone();
    config.max_page_bytes = 1 + usize::from(*limits) * 16;
    config.max_includes = 1 + usize::from(limits & 0x1f);
    config.max_depth = usize::from(depth % 6);
    config.max_concurrent_per_page = 1 + usize::from(depth >> 4);
    config.on_error = if depth & 0x08 != 0 {
        OnError::Fail
    } else {
        OnError::Empty
    };
    config.parse = ParseOptions {
        max_depth: 1 + usize::from(cut % 32),
        ..ParseOptions::default()
    };
    config.page_timeout = Duration::from_secs(10);
    // Loops and calls under small bounds the input picks.
    config.limits.max_foreach_iterations = 1 + usize::from(limits >> 3);
    config.limits.max_function_depth = 1 + usize::from(depth >> 5);
    let max_page_bytes = config.max_page_bytes;
    let composer = Composer::new(
        Arc::new(InMemory { bodies }),
        config.clone(),
        4,
        Arc::new(Metrics::new()),
    );
    let page = Page {
        url: Url::parse("http://shop.test/page").expect("valid"),
        vars: esi::Request::new().with_query("a=1").with_cookie("id=7"),
        client_headers: Arc::new(HeaderMap::new()),
        started: Instant::now(),
        trace: None,
        hints: None,
    };
    let sent = runtime().block_on(async move {
        let mut rx = if cut & 0x80 != 0 {
            let template = esi::parse(layout, &config.parse).expect("lenient never fails");
            composer.compose_parsed(page, Arc::new(template))
        } else {
            let at = usize::from(*cut) % (layout.len() + 1);
            let chunks = vec![Ok(layout.slice(..at)), Ok(layout.slice(at..))];
            composer.compose(page, futures::stream::iter(chunks), None)
        };
        let mut sent = 0;
        while let Some(chunk) = rx.recv().await {
            match chunk {
                Ok(bytes) => sent += bytes.len(),
                Err(_) => break,
            }
        }
        sent
    });
    assert!(
        sent <= max_page_bytes,
        "{sent} bytes sent, limit {max_page_bytes}"
    );
});
