//! esi-proxy: an Edge Side Includes page-composition server.
//!
//! Modules in data-flow order (arrows point one way: server → compose → cache → fetch → config):
//! - [`server`]: hyper server, proxying of non-ESI responses, admin endpoints (with the
//!   page-build waterfall behind `/_esi/debug/<path>`), reload, graceful shutdown, and the one
//!   status mapping of errors.
//! - [`compose`]: runs a [`esi::Template`] for one request: concurrent fetches, fallbacks, nested
//!   includes, the body streamed in document order.
//! - [`cache`]: moka caches of fragments and parsed layouts: TTL rules, single-flight,
//!   stale-while-revalidate / stale-if-error, purge. A [`fetch::Fetcher`] over the HTTP one.
//! - [`fetch`]: HTTP client to origin and fragments: timeouts, host allowlist, header policy,
//!   size limits.
//! - [`config`]: TOML schema, defaults, validation with file/line/field errors.
//! - [`esi`]: the ESI 1.0 language, bytes → [`esi::Template`]; expressions and variables. Pure.
//! - [`telemetry`]: tracing subscriber, metrics registry, Server-Timing.
//! - [`lint`]: checks ESI markup for fragment teams (`esi-proxy lint`).

pub mod cache;
pub mod compose;
pub mod config;
pub mod esi;
pub mod fetch;
pub mod headers;
pub mod lint;
pub mod server;
pub mod telemetry;

/// The request error and its status, at its old path; it lives in [`server::error`].
pub use server::error;
/// The page-build waterfall, at its old path; it lives in [`server::waterfall`].
pub use server::waterfall as debug;
