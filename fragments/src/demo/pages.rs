//! The demo's askama templates (`templates/demo/`): the gateway's page layout and every
//! fragment body, rendered once when the demo starts. Pure: text in, text out; no I/O.

use std::collections::BTreeMap;

use askama::Template;

use super::catalog::{Catalog, Tile};
use super::registry::FOOTER_COLUMNS;

/// Where each service listens: name → `http://127.0.0.1:{port}`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Directory {
    urls: BTreeMap<&'static str, String>,
}

/// A template named a service the demo does not run.
#[derive(Debug, thiserror::Error)]
#[error("template names service {0:?}, which the demo does not run")]
struct UnknownService(String);

/// A fragment argument the catalog does not know.
#[derive(Debug, thiserror::Error)]
#[error("{fragment}: no such item {arg:?}")]
struct UnknownItem {
    fragment: String,
    arg: String,
}

/// The product page the gateway serves: ~120 `<esi:include>`s of the services' absolute URLs.
#[derive(Template)]
#[template(path = "demo/layout.html")]
pub(crate) struct Layout<'a> {
    pub d: &'a Directory,
    pub c: &'a Catalog,
}

/// One fragment body: `service`'s fragment `fragment`, for path argument `arg` ("" for none).
#[derive(Template)]
#[template(path = "demo/fragment.html")]
pub(crate) struct FragmentPage<'a> {
    pub service: &'a str,
    pub fragment: &'a str,
    pub arg: &'a str,
    pub d: &'a Directory,
    pub c: &'a Catalog,
}

// === impl Directory ===

impl Directory {
    pub(crate) fn insert(&mut self, name: &'static str, url: String) {
        self.urls.insert(name, url);
    }

    /// The base URL of service `name`.
    fn url(&self, name: &str) -> askama::Result<&str> {
        self.urls
            .get(name)
            .map(String::as_str)
            .ok_or_else(|| askama::Error::custom(UnknownService(name.to_string())))
    }
}

// === impl Layout ===

impl Layout<'_> {
    /// The base URL of service `name`, for an include's `src`.
    fn url(&self, name: &str) -> askama::Result<&str> {
        self.d.url(name)
    }

    /// The SKUs of the "Customers also viewed" carousel.
    fn also_viewed(&self) -> &[Tile] {
        self.c.tiles(0..16)
    }

    /// The SKUs of the "Similar items" carousel.
    fn similar(&self) -> &[Tile] {
        self.c.tiles(16..32)
    }

    /// The SKUs of the "Complete the look" row.
    fn complete_the_look(&self) -> &[Tile] {
        self.c.tiles(32..40)
    }

    fn footer_columns(&self) -> &'static [&'static str] {
        FOOTER_COLUMNS
    }
}

// === impl FragmentPage ===

impl FragmentPage<'_> {
    /// The base URL of service `name`, for a nested include's `src`.
    fn url(&self, name: &str) -> askama::Result<&str> {
        self.d.url(name)
    }

    /// The tile named by the path's SKU.
    fn tile(&self) -> askama::Result<&Tile> {
        self.c.tile(self.arg).ok_or_else(|| self.unknown())
    }

    /// The tiles the trending block includes.
    fn trending(&self) -> &[Tile] {
        self.c.tiles(40..48)
    }

    /// The tiles the recently-viewed strip includes.
    fn recently_viewed(&self) -> &[Tile] {
        self.c.tiles(48..52)
    }

    /// The path's number (`/thumb/3`: 3).
    fn index(&self) -> askama::Result<u32> {
        self.arg.parse().map_err(|_| self.unknown())
    }

    /// The label of the path's gallery thumbnail.
    fn thumb_label(&self) -> askama::Result<&'static str> {
        const THUMBS: [&str; 8] = [
            "Front",
            "Back",
            "Hood",
            "Pit zip",
            "Cuff",
            "Chest pocket",
            "On the trail",
            "Packed",
        ];
        let i = self.index()? as usize;
        THUMBS
            .get(i.wrapping_sub(1))
            .copied()
            .ok_or_else(|| self.unknown())
    }

    /// The sponsored tile of the path's slot (`/sponsored/1`: the first).
    fn ad(&self) -> askama::Result<&Tile> {
        let i = self.index()? as usize;
        self.c
            .ads
            .get(i.wrapping_sub(1))
            .ok_or_else(|| self.unknown())
    }

    /// The path's star rating (`/stars/4.6`: 4.6).
    fn rating(&self) -> askama::Result<f32> {
        self.arg.parse().map_err(|_| self.unknown())
    }

    /// The product's rating as the path of the star widget: `4.6`.
    fn product_rating(&self) -> String {
        format!("{:.1}", self.c.product.rating)
    }

    fn unknown(&self) -> askama::Error {
        askama::Error::custom(UnknownItem {
            fragment: self.fragment.to_string(),
            arg: self.arg.to_string(),
        })
    }
}
