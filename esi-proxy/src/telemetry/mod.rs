//! Telemetry: the global tracing subscriber and its filter ([`init_tracing`]), the process-wide
//! metrics registry ([`Metrics`], rendered in the Prometheus text format) and the
//! `Server-Timing` header value. Callers record plain numbers and labels; this module touches no
//! network and no ESI, and every label set it keeps is bounded.

#[cfg(test)]
mod exposition_check;
mod log_writer;
mod metrics;
#[cfg(test)]
mod metrics_tests;
mod prometheus;
mod server_timing;

use std::env::VarError;
use std::io::IsTerminal as _;

use tracing_subscriber::filter::{EnvFilter, ParseError};

pub use log_writer::flush_logs;
pub use metrics::{Counter, FragmentHost, Metrics};
pub use server_timing::server_timing;

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// A log filter is not valid `tracing` filter directives.
    #[error("bad log filter in {origin} ({directives:?}): {source}")]
    BadFilter {
        /// Where the directives came from: `RUST_LOG` or `default filter`.
        origin: &'static str,
        /// The directives as given.
        directives: String,
        /// What the parser objected to.
        #[source]
        source: ParseError,
    },
    /// `RUST_LOG` is set but is not valid Unicode.
    #[error("RUST_LOG is not valid Unicode")]
    FilterNotUnicode,
}

// === impl TelemetryError ===

impl TelemetryError {
    fn bad_filter(origin: &'static str, directives: &str, source: ParseError) -> Self {
        TelemetryError::BadFilter {
            origin,
            directives: directives.to_owned(),
            source,
        }
    }
}

// === tracing ===

/// Installs the global tracing subscriber, writing to stderr (`info` lines in batches, see
/// [`flush_logs`]): human-readable text (coloured on a terminal) or, with `json`, one JSON object
/// per line. The filter comes from `RUST_LOG` when it
/// is set and not empty, else from `default_filter` (e.g. `"info"`,
/// `"esi_proxy=debug,hyper=warn"`).
///
/// Returns `Ok(true)` when this call installed the subscriber and `Ok(false)` when one was
/// already installed (a second call is a no-op).
///
/// # Errors
///
/// [`TelemetryError::BadFilter`] when `default_filter` or `RUST_LOG` does not parse (both are
/// always checked, so a bad default shows up even where `RUST_LOG` is set), and
/// [`TelemetryError::FilterNotUnicode`] when `RUST_LOG` is not Unicode.
pub fn init_tracing(json: bool, default_filter: &str) -> Result<bool, TelemetryError> {
    let env = match std::env::var("RUST_LOG") {
        Ok(value) => Some(value),
        Err(VarError::NotPresent) => None,
        Err(VarError::NotUnicode(_)) => return Err(TelemetryError::FilterNotUnicode),
    };
    let filter = build_filter(env.as_deref(), default_filter)?;
    if tracing::dispatcher::has_been_set() {
        return Ok(false);
    }
    // `set_global_default` fails only when another thread installed one first: also a no-op.
    let installed = if json {
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_env_filter(filter)
            .with_writer(log_writer::BatchedStderr::get())
            .finish();
        tracing::subscriber::set_global_default(subscriber).is_ok()
    } else {
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(std::io::stderr().is_terminal())
            .with_env_filter(filter)
            .with_writer(log_writer::BatchedStderr::get())
            .finish();
        tracing::subscriber::set_global_default(subscriber).is_ok()
    };
    Ok(installed)
}

/// The family [`record_panic`] counts in, labelled by `stage`.
pub const PANICS: &str = "esi_proxy_panics_total";

/// A panic was caught at `stage` (`"request"`: before the response head; `"body"`: while the
/// body streamed; `"compose"`: in a page's composition): logs it at `error` with its message and
/// counts it in `esi_proxy_panics_total{stage}`. Only that response fails.
pub fn record_panic(metrics: &Metrics, stage: &'static str, payload: &(dyn std::any::Any + Send)) {
    let message = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)");
    tracing::error!(
        stage,
        panic = message,
        "panic caught: the response fails, the process carries on"
    );
    metrics.inc_counter(
        PANICS,
        "Panics caught, by stage; each failed one response only.",
        Some(("stage", stage)),
        1,
    );
}

/// The filter from `env` (the value of `RUST_LOG`) when set and not blank, else from
/// `default_filter`; `default_filter` is parsed either way.
fn build_filter(env: Option<&str>, default_filter: &str) -> Result<EnvFilter, TelemetryError> {
    let default = EnvFilter::try_new(default_filter)
        .map_err(|e| TelemetryError::bad_filter("default filter", default_filter, e))?;
    match env.map(str::trim).filter(|s| !s.is_empty()) {
        Some(directives) => EnvFilter::try_new(directives)
            .map_err(|e| TelemetryError::bad_filter("RUST_LOG", directives, e)),
        None => Ok(default),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters() {
        let cases: &[(Option<&str>, &str, Option<&str>)] = &[
            (None, "info", None),
            (None, "esi_proxy=debug,hyper=warn", None),
            (Some(""), "info", None),
            (Some("  "), "info", None),
            (Some("esi_proxy=trace"), "info", None),
            (None, "foo=notalevel", Some("default filter")),
            (Some("foo=notalevel"), "info", Some("RUST_LOG")),
            (Some("debug"), "foo=notalevel", Some("default filter")),
        ];
        for (env, default, want_err) in cases {
            let got = build_filter(*env, default);
            let origin = match &got {
                Err(TelemetryError::BadFilter { origin, .. }) => Some(*origin),
                Err(TelemetryError::FilterNotUnicode) => Some("not unicode"),
                Ok(_) => None,
            };
            assert_eq!(origin, *want_err, "env {env:?}, default {default:?}");
        }
    }

    #[test]
    fn init_tracing_twice() {
        // "off" keeps the other tests of this binary quiet once it is installed.
        let first = init_tracing(false, "off");
        assert!(first.is_ok(), "{first:?}");
        let second = init_tracing(true, "off");
        assert!(matches!(second, Ok(false)), "{second:?}");
        let bad = init_tracing(false, "foo=notalevel");
        assert!(
            matches!(bad, Err(TelemetryError::BadFilter { .. })),
            "{bad:?}"
        );
    }
}
