//! The `esi-proxy` command line: parses flags with clap and runs the chosen command.
//! Commands: `demo` runs the demo shop; `serve` runs the proxy; `check-config` validates a config file; `lint` checks ESI markup for fragment teams.
//! The demo is the `demo` cargo feature (on by default); a build without it answers `demo` with
//! an error that says so.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use std::sync::Arc;

use esi_proxy::config::{Config, LogFormat};
use esi_proxy::esi::Severity;
use esi_proxy::{fetch, server, telemetry};

// Composition allocates many short-lived buffers from many threads; mimalloc cuts the CPU per
// 120-fragment page by a fifth against glibc's malloc (measured with benches/load/).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// An Edge Side Includes page-composition server.
#[derive(Debug, Parser)]
#[command(name = "esi-proxy", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the demo shop: ~120 fragments from a few dozen services, a gateway and the proxy,
    /// all on loopback, with no setup; prints the URL to open.
    // Without the feature it stays, hidden, so `esi-proxy demo` says why there is none rather
    // than "unrecognized subcommand".
    #[cfg_attr(not(feature = "demo"), command(hide = true))]
    Demo {
        /// Address for the proxy. Default: 127.0.0.1:8080, or a free loopback port when 8080
        /// is taken (the URL printed is the one to open).
        #[arg(long)]
        listen: Option<String>,
    },
    /// Run the proxy in front of an origin (flags override the config file).
    Serve {
        /// TOML config file; without one, built-in defaults apply.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Address to listen on, e.g. 127.0.0.1:8080.
        #[arg(long)]
        listen: Option<String>,
        /// The origin (gateway) URL, e.g. http://127.0.0.1:8081.
        #[arg(long)]
        origin: Option<String>,
        /// Turn every cache off (for benchmarks and debugging).
        #[arg(long)]
        no_cache: bool,
        /// The shared cache tier on Redis (`cache.shared.url`), e.g. redis://127.0.0.1:6379.
        #[arg(long)]
        redis: Option<String>,
        /// Log JSON lines instead of text.
        #[arg(long)]
        json_logs: bool,
    },
    /// Validate a config file: prints every problem with its line, exit status 1 if any.
    CheckConfig {
        /// The TOML file.
        file: PathBuf,
    },
    /// Check ESI markup: prints `file:line:col: message` for each problem, exit status 1 on errors.
    Lint {
        /// Files to check.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo { listen } => demo(listen.as_deref()),
        Command::Serve {
            config,
            listen,
            origin,
            no_cache,
            redis,
            json_logs,
        } => serve(
            config,
            Overrides {
                listen,
                origin,
                no_cache,
                redis,
            },
            json_logs,
        ),
        Command::Lint { files } => run_lint(&files),
        Command::CheckConfig { file } => Ok(check_config(&file)),
    };
    // Log lines still gathered leave before the process does.
    telemetry::flush_logs();
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("esi-proxy: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Command-line settings that win over the config file, at start and on every reload.
#[derive(Debug, Clone)]
struct Overrides {
    listen: Option<String>,
    origin: Option<String>,
    no_cache: bool,
    redis: Option<String>,
}

impl Overrides {
    fn apply(&self, config: &mut Config) {
        if let Some(listen) = &self.listen {
            config.server.listen.clone_from(listen);
        }
        if let Some(origin) = &self.origin {
            config.server.origin.clone_from(origin);
        }
        if self.no_cache {
            config.cache.enabled = false;
        }
        if let Some(redis) = &self.redis {
            config.cache.shared.url.clone_from(redis);
        }
    }
}

fn serve(file: Option<PathBuf>, overrides: Overrides, json_logs: bool) -> anyhow::Result<ExitCode> {
    let mut config = match &file {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    overrides.apply(&mut config);
    let source = file.as_ref().map_or_else(
        || "<defaults and flags>".to_owned(),
        |p| p.display().to_string(),
    );
    let settings = config.settings_source(&source, None)?;
    let json = json_logs || settings.server.log_format == LogFormat::Json;
    telemetry::init_tracing(json, "info")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listen = settings.server.listen;
        let listener = server::bind(listen)
            .with_context(|| format!("listening on {listen}"))?;
        let addr = listener.local_addr()?;
        let metrics = Arc::new(telemetry::Metrics::new());
        let cache = settings.cache.enabled;
        let poll = settings.server.config_poll;
        let state = server::AppState::new(config, Arc::new(fetch::SystemLookup), metrics)?;
        let watcher = file.map(|path| {
            tracing::info!(path = %path.display(), "reloading the config on SIGHUP and when the file changes");
            let adjust = move |c: &mut Config| overrides.apply(c);
            server::watch_config(Arc::clone(&state), path, Arc::new(adjust), poll)
        });
        let admin = match settings.server.admin_listen {
            Some(admin_addr) => {
                let admin_listener = server::bind(admin_addr)
                    .with_context(|| format!("listening for admin on {admin_addr}"))?;
                tracing::info!(addr = %admin_listener.local_addr()?, "admin endpoints listening");
                let state = Arc::clone(&state);
                Some(tokio::spawn(server::run_admin(
                    admin_listener,
                    state,
                    shutdown_signal(),
                )))
            }
            None => None,
        };
        tracing::info!(%addr, cache, "esi-proxy listening");
        server::run(listener, state, shutdown_signal()).await?;
        if let Some(w) = watcher {
            w.abort();
        }
        if let Some(a) = admin {
            a.abort();
        }
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Runs the demo until Ctrl-C: the services and the gateway from the `fragments` crate, the
/// proxy in front with the services allowlisted and trusted (they are the shop's own).
#[cfg(feature = "demo")]
fn demo(listen: Option<&str>) -> anyhow::Result<ExitCode> {
    telemetry::init_tracing(false, "info")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let shop = fragments::demo::Demo::start(fragments::demo::DemoConfig::default())
            .await
            .context("starting the demo services")?;
        let listener = bind_demo(listen).await?;
        let mut config = Config::default();
        config.server.listen = listener.local_addr()?.to_string();
        config.server.origin = format!("http://{}", shop.gateway);
        for url in shop.service_urls() {
            config.fetch.hosts.push(esi_proxy::config::HostConfig {
                url,
                trusted: true,
                esi: false,
                private_network: true,
                http2: false,
                breaker: None,
            });
        }
        // The product fragment is primary; its page holds the head for it.
        config.esi.head_window_paths = fragments::demo::HEAD_WINDOW_PATHS
            .iter()
            .map(|p| p.to_string())
            .collect();
        // The demo runs on one machine for the person who started it.
        config.server.admin_from_loopback = true;
        config.validate_source("<demo>", None)?;
        let addr = listener.local_addr()?;
        let metrics = Arc::new(telemetry::Metrics::new());
        let state = server::AppState::new(config, Arc::new(fetch::SystemLookup), metrics)?;
        println!();
        println!(
            "  esi-proxy demo: a product page composed from {} services",
            shop.services.len()
        );
        println!();
        println!("  open      http://{addr}/");
        println!("  waterfall http://{addr}/_esi/debug/");
        println!("  metrics   http://{addr}/_esi/metrics");
        println!();
        println!("  Ctrl-C stops everything.");
        println!();
        server::run(listener, state, shutdown_signal()).await?;
        shop.shutdown();
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// A build without the `demo` feature: no services, no pages; says so and how to get them.
#[cfg(not(feature = "demo"))]
fn demo(_listen: Option<&str>) -> anyhow::Result<ExitCode> {
    anyhow::bail!(
        "this build has no demo (built without the `demo` cargo feature); build with the default \
         features for it: cargo build --release -p esi-proxy"
    )
}

/// The demo's listener: `--listen` exactly as given; without it 127.0.0.1:8080, or any free
/// loopback port when 8080 is taken, so the first command of the README works on any machine.
#[cfg(feature = "demo")]
async fn bind_demo(listen: Option<&str>) -> anyhow::Result<tokio::net::TcpListener> {
    const DEFAULT: &str = "127.0.0.1:8080";
    if let Some(addr) = listen {
        return tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listening on {addr} (choose another with --listen)"));
    }
    match tokio::net::TcpListener::bind(DEFAULT).await {
        Ok(listener) => Ok(listener),
        Err(e) => {
            eprintln!("esi-proxy demo: {DEFAULT} is not free ({e}); using another loopback port");
            Ok(tokio::net::TcpListener::bind("127.0.0.1:0").await?)
        }
    }
}

/// Completes on SIGTERM or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = tokio::signal::ctrl_c() => {},
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("shutdown signal received");
}

fn check_config(file: &std::path::Path) -> ExitCode {
    match esi_proxy::config::Config::load(file) {
        Ok(_) => {
            println!("{}: ok", file.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn run_lint(files: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let mut errors = 0usize;
    let mut warnings = 0usize;
    for file in files {
        let body = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        for f in esi_proxy::lint::lint(body.into()) {
            let level = match f.severity {
                Severity::Error => {
                    errors += 1;
                    "error"
                }
                Severity::Warning => {
                    warnings += 1;
                    "warning"
                }
            };
            println!(
                "{}:{}:{}: {level}: {}",
                file.display(),
                f.line,
                f.col,
                f.message
            );
        }
    }
    if errors + warnings > 0 {
        eprintln!(
            "{errors} errors, {warnings} warnings in {} files",
            files.len()
        );
    }
    Ok(if errors > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
