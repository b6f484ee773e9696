//! The end-to-end test binary: every integration test links in here.

mod admin;
mod browser;
mod cache;
mod cache_proxy;
mod config;
mod debug;
mod demo;
mod engine;
mod exposure;
mod fetch;
mod https;
mod layout;
mod lint_cli;
mod proxy;
mod proxy_limits;
mod readme;
mod reload;
mod shared_cache;
mod shutdown;
mod support;
mod targets;
mod trust;
