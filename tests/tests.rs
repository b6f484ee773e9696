//! The end-to-end test binary: every integration test links in here.

mod engine;
mod lint_cli;
mod support;
