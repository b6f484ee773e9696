//! The demo shop: a product page composed from ~120 `<esi:include>`d fragments served by 35
//! fragment services (one loopback port each, as separate teams would run them) and a gateway
//! that serves the page layout. Each service has knobs: latency, jitter, error rate, a down
//! switch and the TTL it sends, from [`DemoConfig`], per request (query) and at runtime
//! ([`DemoHandle`]). Bodies come from the askama templates in `templates/demo/`.
//!
//! | service | fragments (`http://127.0.0.1:{port}/...`) |
//! |---|---|
//! | gateway | `/` the layout (ESI), `/login?user=Ann`, `/logout`, `/cart/add` (set cookies, redirect to `/`) |
//! | consent | `/banner` |
//! | promotions | `/strip`, `/coupon`, `/member-price`, `/bundle` |
//! | header | `/logo`, `/help` |
//! | search | `/box` |
//! | locale | `/picker`, `/footer` |
//! | wishlist | `/count`, `/button` |
//! | account | `/menu` (ESI: `esi:choose` on `$(HTTP_COOKIE{user})`: "Hi, Ann" or "Sign in") |
//! | cart | `/badge` (ESI: `esi:choose` on `$(HTTP_COOKIE{cart})`) |
//! | nav | `/menu`, `/categories` |
//! | breadcrumbs | `/trail` |
//! | gallery | `/main`, `/thumb/1` … `/thumb/8`, `/video` |
//! | sharing | `/buttons` |
//! | catalog | `/brand`, `/title`, `/badges`, `/sku`, `/colours`, `/sizes`, `/description`, `/highlights`, `/specs`, `/materials`, `/care` |
//! | reviews | `/summary` (ESI: includes a star widget), `/histogram`, `/list` (ESI: a star widget per review), `/photos`, `/write` |
//! | ratings | `/stars/0.0` … `/stars/5.0` (the star widget) |
//! | pricing | `/price`, `/was`, `/installments`, `/tax-note` |
//! | size-guide | `/fit`, `/table` |
//! | inventory | `/stock` |
//! | delivery | `/estimate`, `/click-collect`, `/returns` |
//! | stores | `/nearest` |
//! | compare | `/toggle` |
//! | financing, warranty | `/offer` |
//! | seller | `/info` |
//! | loyalty | `/points` (ESI: `esi:choose` on the `user` cookie) |
//! | qa | `/questions`, `/ask` |
//! | tiles | `/tile/NF-1000` … `/tile/NF-1059` |
//! | recommendations | `/trending` (ESI: includes 8 tiles) |
//! | ads | `/sponsored/1` … `/sponsored/4` |
//! | recently-viewed | `/strip` (ESI: 4 tiles in an `esi:try`, `esi:except` fallback) |
//! | newsletter | `/signup` |
//! | footer | `/column/{shop,help,company,services,community}`, `/social`, `/payments`, `/apps`, `/legal` |
//! | chat | `/launcher` |
//! | analytics | `/beacon` |
//! | static | `/nav`, `/house-ad`, `/image-placeholder` (snapshots, only ever an include's `alt`) |
//!
//! The layout holds 120 includes (40 of them recommendation tiles); the ESI fragments nest 18
//! more. Fallbacks: `alt` to a static snapshot (nav, promo strip, main picture), `esi:try` with a
//! visible `esi:except` (account, title, rating, price, reviews, Q&A), `onerror="continue"`
//! elsewhere. Every request to a service takes its knobs from the query too: `latency_ms`,
//! `jitter_ms`, `error_rate`, `down`, `max_age_s` (as in [`ServiceConfig`]).

mod catalog;
mod config;
mod pages;
mod registry;
mod services;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use askama::Template;
use bytes::Bytes;
use http::HeaderValue;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

pub use config::{DemoConfig, DemoConfigError, ServiceConfig, ServiceOverride, MAX_LATENCY_MS};
pub use registry::GATEWAY;

use crate::server;

use catalog::Catalog;
use pages::{Directory, FragmentPage, Layout};
use registry::{product_key, surrogate_keys, SERVICES};
use services::{Control, Page, ProductFragment, Site};

/// The service and path of the product fragment, the page's primary include: an unknown `id`
/// makes it (and so the page) a 404.
const PRODUCT_SERVICE: &str = "catalog";
const PRODUCT_PATH: &str = "/title";

/// The path globs whose pages hold their head for the primary product fragment: the proxy in
/// front of the demo sets them as `esi.head_window_paths` (the layout streams, and the product
/// fragment comes after its first part).
pub const HEAD_WINDOW_PATHS: &[&str] = &["/"];

/// A running demo: the gateway and every fragment service, each on its own loopback port.
/// Dropping it (or [`Demo::shutdown`]) stops them all and closes their connections.
pub struct Demo {
    /// The gateway: `http://{gateway}/` is the product page layout, the proxy's origin.
    pub gateway: SocketAddr,
    /// Every fragment service by name, in page order.
    pub services: Vec<(String, SocketAddr)>,
    handle: DemoHandle,
    /// Every fragment URL the services serve, service by service.
    fragment_urls: Vec<String>,
    /// The accept loops; each owns its connections, so aborting it closes them too.
    tasks: JoinSet<()>,
}

/// Changes a running demo's knobs; cheap to clone, usable from any thread. A change applies
/// to requests that arrive after it.
#[derive(Clone)]
pub struct DemoHandle {
    controls: Arc<BTreeMap<&'static str, Arc<Control>>>,
}

// === impl Demo ===

impl Demo {
    /// Binds every service and the gateway on `127.0.0.1:0`, renders every page, and spawns the
    /// servers on the current tokio runtime.
    ///
    /// # Errors
    /// `InvalidInput` when `config` fails [`DemoConfig::validate`]; a bind error; `Other` when a
    /// template fails to render (a bug in the templates).
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub async fn start(config: DemoConfig) -> io::Result<Demo> {
        config
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let gateway_listener = TcpListener::bind(loopback).await?;
        let mut listeners = Vec::with_capacity(SERVICES.len());
        let mut directory = Directory::default();
        for def in SERVICES {
            let listener = TcpListener::bind(loopback).await?;
            directory.insert(def.name, format!("http://{}", listener.local_addr()?));
            listeners.push(listener);
        }

        let catalog = Catalog::new();
        let render_error = |e: askama::Error| io::Error::other(format!("demo template: {e}"));
        let mut controls = BTreeMap::new();
        let mut sites = Vec::with_capacity(SERVICES.len() + 1);
        let gateway_control = Arc::new(Control::new(
            config.service(GATEWAY),
            seed(&config, GATEWAY),
        ));
        controls.insert(GATEWAY, Arc::clone(&gateway_control));
        // Every page of the product carries its key, so one purge reaches all of them.
        let product = product_key(catalog.product.sku);
        let layout = Layout {
            d: &directory,
            c: &catalog,
        }
        .render()
        .map_err(render_error)?;
        let css = |body: &'static str| Page {
            body: Bytes::from_static(body.as_bytes()),
            esi: false,
            content_type: "text/css; charset=utf-8",
            link: None,
            keys: None,
        };
        let gateway_pages = HashMap::from([
            (
                "/".to_string(),
                Page {
                    body: Bytes::from(layout),
                    esi: true,
                    content_type: HTML,
                    link: None,
                    keys: HeaderValue::from_str(&format!("layout {product}")).ok(),
                },
            ),
            (SHOP_CSS.to_string(), css(SHOP_CSS_BODY)),
            (GALLERY_CSS.to_string(), css(GALLERY_CSS_BODY)),
        ]);
        sites.push(Site {
            name: GATEWAY,
            pages: gateway_pages,
            control: gateway_control,
            product: None,
        });

        let mut fragment_urls = Vec::new();
        for (def, listener) in SERVICES.iter().zip(&listeners) {
            let base = format!("http://{}", listener.local_addr()?);
            let mut pages = HashMap::new();
            for fragment in def.fragments {
                let skus = catalog.tiles.iter().map(|t| t.sku.as_str());
                for (path, arg) in fragment.paths(skus) {
                    let body = FragmentPage {
                        service: def.name,
                        fragment: fragment.name,
                        arg: &arg,
                        d: &directory,
                        c: &catalog,
                    }
                    .render()
                    .map_err(render_error)?;
                    fragment_urls.push(format!("{base}{path}"));
                    pages.insert(
                        path,
                        Page {
                            body: Bytes::from(body),
                            esi: fragment.esi,
                            content_type: HTML,
                            link: Some(preload_hints(def.name)),
                            keys: HeaderValue::from_str(&surrogate_keys(def.name, &arg, &product))
                                .ok(),
                        },
                    );
                }
            }
            let control = Arc::new(Control::new(
                config.service(def.name),
                seed(&config, def.name),
            ));
            controls.insert(def.name, Arc::clone(&control));
            let product = (def.name == PRODUCT_SERVICE).then_some(ProductFragment {
                path: PRODUCT_PATH,
                sku: catalog.product.sku,
            });
            sites.push(Site {
                name: def.name,
                pages,
                control,
                product,
            });
        }

        let gateway = gateway_listener.local_addr()?;
        let mut services = Vec::with_capacity(listeners.len());
        for (def, listener) in SERVICES.iter().zip(&listeners) {
            services.push((def.name.to_string(), listener.local_addr()?));
        }
        let mut tasks = JoinSet::new();
        for (site, listener) in sites
            .into_iter()
            .zip(std::iter::once(gateway_listener).chain(listeners))
        {
            tasks.spawn(server::serve(listener, Arc::new(site)));
        }
        Ok(Demo {
            gateway,
            services,
            handle: DemoHandle {
                controls: Arc::new(controls),
            },
            fragment_urls,
            tasks,
        })
    }

    /// The product page at the gateway: `http://127.0.0.1:{port}/`.
    pub fn page_url(&self) -> String {
        format!("http://{}/", self.gateway)
    }

    /// `http://127.0.0.1:{port}` of each fragment service, for the proxy's `[[fetch.hosts]]`
    /// allowlist (they are loopback addresses, so entries need `private_network = true`).
    pub fn service_urls(&self) -> Vec<String> {
        self.services
            .iter()
            .map(|(_, addr)| format!("http://{addr}"))
            .collect()
    }

    /// Every URL the fragment services answer (194: each fragment, every tile and star
    /// widget), for warming caches or checking markup.
    pub fn fragment_urls(&self) -> &[String] {
        &self.fragment_urls
    }

    /// A handle on the knobs that outlives `&self` borrows (clone it into an admin endpoint).
    pub fn handle(&self) -> DemoHandle {
        self.handle.clone()
    }

    /// Turns `service`'s down switch (503 for every request) on or off; false if no such
    /// service. The gateway is `"gateway"`.
    pub fn set_down(&self, service: &str, down: bool) -> bool {
        self.handle.set_down(service, down)
    }

    /// Sets `service`'s latency in ms (capped at [`MAX_LATENCY_MS`]); false if no such service.
    pub fn set_latency(&self, service: &str, ms: u64) -> bool {
        self.handle.set_latency(service, ms)
    }

    /// Stops every service and the gateway and closes their connections. Listeners close as
    /// the runtime drops the aborted tasks, an instant later.
    pub fn shutdown(mut self) {
        self.tasks.abort_all();
    }
}

impl fmt::Debug for Demo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Demo")
            .field("gateway", &self.gateway)
            .field("services", &self.services)
            .finish_non_exhaustive()
    }
}

/// Each service's own seed, so services draw different sequences from one config seed.
fn seed(config: &DemoConfig, name: &str) -> u64 {
    // FNV-1a: stable across runs and Rust versions, unlike the std hasher.
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    config.seed ^ hash
}

// === impl DemoHandle ===

impl DemoHandle {
    fn control(&self, service: &str) -> Option<&Control> {
        self.controls.get(service).map(Arc::as_ref)
    }

    /// Turns `service`'s down switch on or off; false if no such service.
    pub fn set_down(&self, service: &str, down: bool) -> bool {
        self.control(service).map(|c| c.set_down(down)).is_some()
    }

    /// Sets `service`'s latency in ms (capped at [`MAX_LATENCY_MS`]); false if no such service.
    pub fn set_latency(&self, service: &str, ms: u64) -> bool {
        self.control(service).map(|c| c.set_latency(ms)).is_some()
    }

    /// Sets `service`'s jitter in ms (capped at [`MAX_LATENCY_MS`]); false if no such service.
    pub fn set_jitter(&self, service: &str, ms: u64) -> bool {
        self.control(service).map(|c| c.set_jitter(ms)).is_some()
    }

    /// Sets `service`'s error rate, clamped to `0.0..=1.0` (NaN: 0); false if no such service.
    pub fn set_error_rate(&self, service: &str, rate: f64) -> bool {
        self.control(service)
            .map(|c| c.set_error_rate(rate))
            .is_some()
    }

    /// Sets the `max-age` `service` sends, in seconds (0: `no-store`); false if no such service.
    pub fn set_max_age(&self, service: &str, s: u64) -> bool {
        self.control(service).map(|c| c.set_max_age(s)).is_some()
    }

    /// `service`'s knobs as they are now; `None` if no such service.
    pub fn knobs(&self, service: &str) -> Option<ServiceConfig> {
        self.control(service).map(Control::get)
    }

    /// Every name a knob can be set for: the fragment services and `"gateway"`, sorted.
    pub fn names(&self) -> Vec<&'static str> {
        self.controls.keys().copied().collect()
    }
}

impl fmt::Debug for DemoHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.controls.iter().map(|(k, c)| (k, c.get())))
            .finish()
    }
}

#[cfg(test)]
mod tests;

/// `Content-Type` of the demo's pages and fragments.
const HTML: &str = "text/html; charset=utf-8";
/// The stylesheet every fragment's markup may use, served by the gateway.
const SHOP_CSS: &str = "/assets/shop.css";
const SHOP_CSS_BODY: &str = "/* Rules the fragments share; the layout's own are inline. */\n\
    .demo-error { color: #b3261e; font-size: 13px; }\n";
/// The gallery's own stylesheet, served by the gateway.
const GALLERY_CSS: &str = "/assets/gallery.css";
const GALLERY_CSS_BODY: &str =
    "/* The gallery fragment's rules. */\n.hero svg { max-width: 100%; }\n";

/// The preload hints a demo service sends with each fragment (as fragment teams do: the
/// stylesheets its markup links): every one the shared stylesheet, which the proxy sends once,
/// the gallery its own too.
fn preload_hints(service: &str) -> String {
    let mut link = format!("<{SHOP_CSS}>; rel=preload; as=style");
    if service == "gallery" {
        link.push_str(&format!(", <{GALLERY_CSS}>; rel=preload; as=style"));
    }
    link
}
