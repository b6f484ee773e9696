//! Config reloads: the file loaded, adjusted by command-line overrides, validated and applied to
//! requests that start from now on (on SIGHUP or when the file changes), and the outcome kept
//! for `/_esi/health` and the metrics. A broken file never replaces the config in force, and a
//! panic while loading one is a refused reload, never the end of the watcher.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;

use super::AppState;

/// The outcome of config reloads so far, for `/_esi/health` and the metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadStatus {
    /// How many configs were applied since start (0: the one it started with).
    pub generation: u64,
    /// The last failed reload's error, naming file, line and field; cleared by a success.
    pub last_error: Option<String>,
}

// === impl ReloadStatus ===

impl ReloadStatus {
    /// "failed" while the last reload's error stands, else "ok".
    pub fn outcome(&self) -> &'static str {
        if self.last_error.is_some() {
            "failed"
        } else {
            "ok"
        }
    }
}

// === impl AppState ===

impl AppState {
    /// Loads `path`, lets `adjust` apply command-line overrides, validates and applies it. A
    /// broken file is refused and the config in force stays; either way the outcome is kept
    /// for `/_esi/health` and counted in the metrics.
    ///
    /// # Errors
    /// The file's problems, naming file, line and field.
    pub fn reload_file(
        &self,
        path: &Path,
        adjust: &(dyn Fn(&mut Config) + Send + Sync),
    ) -> Result<u64, String> {
        let load = || {
            Config::load(path)
                .map_err(|e| e.to_string())
                .and_then(|mut config| {
                    adjust(&mut config);
                    let settings = config
                        .settings_source(&path.display().to_string(), None)
                        .map_err(|e| e.to_string())?;
                    self.apply_settings(settings).map_err(|e| e.to_string())
                })
        };
        // A panic while loading or applying is a refused reload like any other: the watcher
        // that called this must live on to take the next file, and health must say it failed.
        // Unwind safe enough: the config in force is swapped whole, only after a success.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(load))
            .unwrap_or_else(|panic| Err(format!("{}: {}", path.display(), panic_message(&*panic))));
        let mut status = self
            .reload
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (label, failed) = match result {
            Ok(()) => ("ok", 0.0),
            Err(_) => ("error", 1.0),
        };
        self.metrics.inc_counter(
            "esi_proxy_config_reloads_total",
            "Config reloads, by result.",
            Some(("result", label)),
            1,
        );
        self.metrics.set_gauge(
            "esi_proxy_config_reload_failed",
            "1 while the last config reload failed.",
            failed,
        );
        match result {
            Ok(()) => {
                status.generation += 1;
                status.last_error = None;
                tracing::info!(path = %path.display(), generation = status.generation, "config reloaded");
                Ok(status.generation)
            }
            Err(e) => {
                status.last_error = Some(e.clone());
                tracing::error!(path = %path.display(), error = %e, "config reload refused; the previous config stays in force");
                Err(e)
            }
        }
    }

    /// The outcome of reloads so far.
    pub fn reload_status(&self) -> ReloadStatus {
        self.reload
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// What tells one state of the config file from another: modification time and length.
fn stamp(path: &Path) -> Option<(Option<std::time::SystemTime>, u64)> {
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.modified().ok(), m.len()))
}

/// What a caught panic said, for the refused reload's error.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let said = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("no message");
    format!("loading the config panicked: {said}")
}

/// Reloads the config on SIGHUP and whenever the file changes (checked every `poll`; `None`,
/// as `server.config_poll` is for `config_poll_ms = 0`: on SIGHUP only), until the returned
/// task is aborted. `adjust` re-applies command-line overrides to each new file.
pub fn watch_config(
    state: Arc<AppState>,
    path: PathBuf,
    adjust: Arc<dyn Fn(&mut Config) + Send + Sync>,
    poll: Option<Duration>,
) -> tokio::task::JoinHandle<()> {
    // The SIGHUP handler is installed before this returns: a signal that arrives before the
    // task first runs must not take the default action, which ends the process.
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    // Likewise the file's first state is taken before this returns: taken in the task, a
    // change written before the task first ran would pass for the state it started from.
    let mut last = stamp(&path);
    tokio::spawn(async move {
        // With no interval the ticks are ignored (reload on SIGHUP only); `interval` needs one.
        let mut tick = tokio::time::interval(poll.unwrap_or(Duration::from_secs(3600)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            #[cfg(unix)]
            let hangup = async {
                match hup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let hangup = std::future::pending::<Option<()>>();
            let forced = tokio::select! {
                _ = hangup => true,
                _ = tick.tick() => false,
            };
            if !forced && poll.is_none() {
                continue;
            }
            let now = stamp(&path);
            if forced || now != last {
                last = now;
                let _ = state.reload_file(&path, adjust.as_ref());
            }
        }
    })
}
