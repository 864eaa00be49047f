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
    Eval(Box<cmd::eval::EvalArgs>),
    #[cfg(feature = "pipeline")]
    /// Run the config's backbone over its image sets and write the feature cache.
    Precompute(cmd::precompute::PrecomputeArgs),
    /// Inspect, verify, import or merge feature caches.
    #[command(subcommand)]
    Cache(cmd::cache::CacheCommand),
    #[cfg(feature = "pipeline")]
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
        Command::Eval(args) => cmd::eval::run(*args),
        Command::Cache(c) => cmd::cache::run(c),
        #[cfg(feature = "pipeline")]
        Command::Precompute(args) => cmd::precompute::run(args),
        #[cfg(feature = "pipeline")]
        Command::Um(c) => cmd::um::run(c),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// `e` and its causes joined by `": "`, leaving out a cause whose text the message so far
/// already ends with (library errors quote their source in their own message).
fn error_chain(e: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if message.is_empty() {
            message = text;
        } else if !message.ends_with(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
    }
    message
}

#[cfg(test)]
mod tests {
    use super::error_chain;
    use std::fmt;

    /// An error that quotes its source in its own message.
    #[derive(Debug)]
    struct Quoting(std::io::Error);

    impl fmt::Display for Quoting {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "cannot read model.bin: {}", self.0)
        }
    }

    impl std::error::Error for Quoting {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    fn gone() -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::NotFound, "gone")
    }

    #[test]
    fn causes_already_quoted_are_not_repeated() {
        let e = anyhow::Error::new(Quoting(gone())).context("loading the network");
        assert_eq!(
            error_chain(&e),
            "loading the network: cannot read model.bin: gone"
        );
        let e = anyhow::Error::new(gone()).context("opening cache out/x");
        assert_eq!(error_chain(&e), "opening cache out/x: gone");
    }
}
