//! esi-proxy: an Edge Side Includes page-composition server.
//!
//! Modules in data-flow order; every import points down this list, none up:
//! - [`server`]: the hyper listener, routing, origin pass-through, the composed response, admin
//!   endpoints (health, metrics, purge, the page-build waterfall), config reload, graceful
//!   shutdown, and the one status mapping of errors.
//! - [`compose`]: runs a [`esi::Template`] for one page: concurrent fetches, fallbacks, nested
//!   includes, the body streamed in document order, the build trace.
//! - [`cache`]: the pure TTL policy, one store (keys, Vary, weigher, purge) for fragments and
//!   layouts, and the caching [`fetch::Fetcher`] with single-flight and stale serving.
//! - [`fetch`]: the [`fetch::Fetcher`] contract, and its HTTP client: HTTP/1.1 pools and h2c
//!   streams, the allowlist and address guard, body decoding, circuit breakers per fragment host.
//! - [`config`]: the TOML schema and defaults, file:line errors, validation into the typed
//!   [`config::Settings`].
//! - [`esi`]: the ESI language, bytes → [`esi::Template`]; expressions, functions, variables. Pure.
//! - [`telemetry`]: tracing subscriber, metrics registry and Prometheus text, Server-Timing.
//! - [`headers`]: every HTTP header rule, in one place.
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
