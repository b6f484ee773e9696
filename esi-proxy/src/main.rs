//! The `esi-proxy` command line: parses flags with clap and runs the chosen command.
//! Commands: `lint` checks ESI markup for fragment teams.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use esi_proxy::esi::Severity;

/// An Edge Side Includes page-composition server.
#[derive(Debug, Parser)]
#[command(name = "esi-proxy", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
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
        Command::Lint { files } => run_lint(&files),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("esi-proxy: {e:#}");
            ExitCode::from(2)
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
