//! `posthoc eval`: read a cache once, run a sweep, print the papers' tables, write
//! JSON / CSV / plots.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use posthoc::config::ExperimentConfig;
use posthoc::eval::Convention;
use posthoc::eval::sweep::SweepValues;
use posthoc::evaluate::{check_config_fits, evaluate_cache, ood_sets, request_settings};
use posthoc::report;
use posthoc_cache::FeatureCache;
use tracing::info;

/// `posthoc eval` arguments. Comma lists sweep (cartesian product).
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Cache directory (default: the config's `[eval] cache`).
    #[arg(long)]
    cache: Option<PathBuf>,
    /// Experiment config whose `[[eval.run]]` sweep runs when `--method` is not given.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Methods, comma separated: msp, maxlogit, energy, temp-msp, react, dice,
    /// dice-react, line, himplos.
    #[arg(long)]
    method: Option<String>,
    /// Sparsity p in percent (dice, dice-react, himplos), e.g. `0,50,70,90`.
    #[arg(long, allow_hyphen_values = true)]
    p: Option<String>,
    /// Clip threshold: a number, or `pNN` = that percentile of ID-train activations.
    #[arg(long, allow_hyphen_values = true)]
    clip: Option<String>,
    /// Temperature T (energy, temp-msp, himplos).
    #[arg(long, allow_hyphen_values = true)]
    temperature: Option<String>,
    /// LINe activation-mask percentile p_a.
    #[arg(long = "p-a", allow_hyphen_values = true)]
    p_a: Option<String>,
    /// LINe weight-mask percentile p_w.
    #[arg(long = "p-w", allow_hyphen_values = true)]
    p_w: Option<String>,
    /// OOD sets to report, comma separated (default: the config's, else every OOD set).
    #[arg(long, value_delimiter = ',')]
    ood: Option<Vec<String>>,
    /// Metric convention: `sklearn` (default) or `dice` (DICE's `cal_metric`).
    #[arg(long)]
    convention: Option<String>,
    /// Write one long-format JSON row per (method, params, OOD set).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the same rows as CSV.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Write score histograms, ROC curves and sweep curves (SVG + PNG) here.
    #[arg(long)]
    plots: Option<PathBuf>,
    /// Skip the sha256 checks while reading (sizes, schemas, dims, values are still checked).
    #[arg(long)]
    no_verify: bool,
}

/// Runs `posthoc eval`.
pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let config = args
        .config
        .as_ref()
        .map(|p| ExperimentConfig::load(p).map(|c| (p.clone(), c)))
        .transpose()?;
    let values = SweepValues::parse(
        args.p.as_deref(),
        args.clip.as_deref(),
        args.temperature.as_deref(),
        args.p_a.as_deref(),
        args.p_w.as_deref(),
    )?;
    let settings = request_settings(
        args.method.as_deref(),
        values,
        config.as_ref().map(|(p, c)| (p.as_path(), c)),
    )?;
    let cache_dir = args
        .cache
        .clone()
        .or_else(|| config.as_ref().and_then(|(_, c)| c.eval.cache.clone()))
        .context("no cache: give --cache DIR (or a config with [eval] cache)")?;
    let convention: Convention = args
        .convention
        .as_deref()
        .or(config
            .as_ref()
            .and_then(|(_, c)| c.eval.convention.as_deref()))
        .unwrap_or("sklearn")
        .parse()?;
    let cache = FeatureCache::open_with(&cache_dir, !args.no_verify)
        .with_context(|| format!("opening cache {}", cache_dir.display()))?;
    if let Some((path, cfg)) = &config {
        check_config_fits(path, cfg, &cache)?;
    }
    let ood_names = ood_sets(args.ood.clone(), config.as_ref().map(|(_, c)| c), &cache)?;
    let evaluation = evaluate_cache(&cache, &settings, &ood_names, convention)?;
    let rows = &evaluation.rows;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    report::write_tables(&mut out, rows)?;
    report::write_summary(&mut out, rows)?;
    if let Some(path) = &args.json {
        report::write_json(path, rows).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.csv {
        report::write_csv(path, rows).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(dir) = &args.plots {
        super::plots::write_all(dir, &evaluation.results, rows, &ood_names)?;
    }
    info!(elapsed_ms = started.elapsed().as_millis() as u64, "done");
    Ok(())
}
