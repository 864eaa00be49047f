//! The `posthoc` command line: `eval` scores a feature cache, `cache` inspects, verifies,
//! imports and merges caches, `precompute` writes one from images, `um` fine-tunes a
//! network with Unleashing Mask.

mod cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Post-hoc OOD detection from an on-disk feature cache.
#[derive(Debug, Parser)]
#[command(name = "posthoc", version, about, long_about = None)]
struct Cli {
    /// Log filter (`RUST_LOG` syntax), e.g. `debug` or `posthoc=trace`.
    #[arg(long, global = true, default_value = "info", env = "POSTHOC_LOG")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Score a cache with one or more methods and print FPR95 / AUROC / AUPR tables.
    Eval(cmd::eval::EvalArgs),
    /// Run the config's backbone over its image sets and write the feature cache.
    Precompute(cmd::precompute::PrecomputeArgs),
    /// Inspect, verify, import or merge feature caches.
    #[command(subcommand)]
    Cache(cmd::cache::CacheCommand),
    /// Unleashing-Mask fine-tuning (UM / UMAP) and its loss constraint.
    #[command(subcommand)]
    Um(cmd::um::UmCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cli.log)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
    let result = match cli.command {
        Command::Eval(args) => cmd::eval::run(args),
        Command::Cache(c) => cmd::cache::run(c),
        Command::Precompute(args) => cmd::precompute::run(args),
        Command::Um(c) => cmd::um::run(c),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
