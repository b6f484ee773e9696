//! The end-to-end test binary: every integration test links in here.

mod engine;
mod support;
mod lint_cli;
