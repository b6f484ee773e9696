//! The end-to-end test binary: every integration test links in here.

mod admin;
mod bounds;
mod breaker;
mod browser;
mod cache;
mod cache_proxy;
mod config;
mod debug;
mod demo;
mod engine;
mod exposure;
mod faults;
mod fetch;
mod framing;
mod https;
mod layout;
mod lint_cli;
mod panics;
mod proxy;
mod proxy_limits;
mod readme;
mod reload;
mod shutdown;
mod support;
mod targets;
mod trust;
