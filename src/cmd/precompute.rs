//! `posthoc precompute`: the config's model over its image sets, into a feature cache.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use posthoc::config::{ExperimentConfig, required};
use posthoc_cache::Role;
use posthoc_pipeline::extractor::{ExtractorBackend, FeatureExtractor};
use posthoc_pipeline::model::Arch;
use posthoc_pipeline::precompute::{PrecomputeSpec, SetPlan, precompute};
use tracing::info;

/// `posthoc precompute` arguments.
#[derive(Debug, Args)]
pub struct PrecomputeArgs {
    /// Experiment config (`[model]`, `[preprocess]`, `[data]`, `[precompute]`).
    #[arg(long)]
    config: PathBuf,
    /// Cache directory (default: the config's `[precompute] out`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Only these sets (comma separated); the cache is finished once every set is done.
    #[arg(long, value_delimiter = ',')]
    only: Option<Vec<String>>,
    /// Only the first N images of every set (quick runs; use a separate --out).
    #[arg(long)]
    limit: Option<u64>,
    /// `i/n`: write the i-th of n disjoint slices of every set; join with `posthoc cache merge`.
    #[arg(long)]
    shard: Option<String>,
    /// Record unreadable images in the manifest instead of failing.
    #[arg(long)]
    skip_bad: bool,
    /// Rows per durable commit and Parquet row group (an interrupted run resumes after
    /// the last commit).
    #[arg(long, default_value_t = 8192)]
    commit_every: usize,
    /// Images per forward batch (default: the config's, else 128).
    #[arg(long)]
    batch_size: Option<usize>,
    /// Where the network runs: `cpu` (fused CPU engine, all cores), `cpu:N` (N threads),
    /// `flex` (burn's CPU backend), `cuda[:N]`, `tch-cuda[:N]`, `tch-cpu` (GPU builds only).
    #[arg(long, default_value = "cpu")]
    backend: String,
    /// Checkpoint to use instead of the config's (e.g. a fine-tuned one).
    #[arg(long)]
    checkpoint: Option<PathBuf>,
}

fn parse_shard(text: &str) -> anyhow::Result<(u64, u64)> {
    let (i, n) = text
        .split_once('/')
        .with_context(|| format!("--shard {text}: expected i/n, e.g. 0/4"))?;
    let (i, n): (u64, u64) = (
        i.trim()
            .parse()
            .with_context(|| format!("--shard {text}: i"))?,
        n.trim()
            .parse()
            .with_context(|| format!("--shard {text}: n"))?,
    );
    if n == 0 || i >= n {
        bail!("--shard {text}: need 0 <= i < n");
    }
    Ok((i, n))
}

/// Runs `posthoc precompute`.
pub fn run(args: PrecomputeArgs) -> anyhow::Result<()> {
    let path = &args.config;
    let cfg = ExperimentConfig::load(path)?;
    let model = required(&cfg.model, path, "model", "precompute")?;
    let pre = required(&cfg.preprocess, path, "preprocess", "precompute")?;
    let data = required(&cfg.data, path, "data", "precompute")?;
    let arch = model.architecture(path)?;
    let out = args
        .out
        .clone()
        .or_else(|| cfg.precompute.as_ref().map(|p| p.out.clone()))
        .with_context(|| format!("no --out and no [precompute] out in {}", path.display()))?;
    let batch_size = args
        .batch_size
        .or(cfg.precompute.as_ref().map(|p| p.batch_size))
        .unwrap_or(128);
    let preprocess = pre
        .transform()
        .with_context(|| format!("{}: [preprocess]", path.display()))?;
    let checkpoint = args
        .checkpoint
        .clone()
        .unwrap_or_else(|| model.checkpoint.clone());
    info!(checkpoint = %checkpoint.display(), "loading the network");
    let backend = args.backend.parse::<ExtractorBackend>()?;
    let net = if arch == Arch::DenseNetBc {
        FeatureExtractor::new(&model.densenet(path, 0.0)?, &checkpoint, backend)
    } else {
        let crop = preprocess.crop();
        FeatureExtractor::new_backbone(arch, model.num_classes, &checkpoint, backend, [crop, crop])
    }
    .with_context(|| format!("loading checkpoint {}", checkpoint.display()))?;
    let class_names = model.labelled_classes(path)?;

    let mut sets = vec![
        SetPlan {
            name: "id_train".into(),
            role: Role::IdTrain,
            source: data.id_train.spec(),
        },
        SetPlan {
            name: "id_test".into(),
            role: Role::IdTest,
            source: data.id_test.spec(),
        },
    ];
    sets.extend(data.ood.iter().map(|(name, source)| SetPlan {
        name: name.clone(),
        role: Role::Ood,
        source: source.spec(),
    }));
    let shard = args.shard.as_deref().map(parse_shard).transpose()?;
    let spec = PrecomputeSpec {
        out: out.clone(),
        model_id: model.id.clone(),
        class_names,
        preprocess,
        base_dir: Path::new(".").to_path_buf(),
        sets,
        only: args.only.clone(),
        batch_size,
        limit: args.limit,
        shard,
        skip_bad: args.skip_bad,
        commit_rows: args.commit_every,
        provenance: serde_json::json!({
            "command": std::env::args().collect::<Vec<_>>(),
            "config_file": path,
            "config": cfg,
            "checkpoint": checkpoint,
            "limit": args.limit,
            "shard": args.shard,
        }),
        progress: std::io::stderr().is_terminal(),
    };
    let report = precompute(&spec, &net)?;
    println!(
        "{:<14} {:>8} {:>10} {:>8} {:>9} {:>9}",
        "set", "rows", "processed", "skipped", "seconds", "images/s"
    );
    for s in &report.sets {
        println!(
            "{:<14} {:>8} {:>10} {:>8} {:>9.1} {:>9.1}",
            s.name,
            s.rows,
            s.processed,
            s.skipped,
            s.seconds,
            s.images_per_second()
        );
    }
    match &report.manifest {
        Some(m) => {
            let bytes: u64 = m.files.iter().map(|f| f.bytes).sum();
            println!(
                "cache {} complete: {} files, {:.1} MB",
                out.display(),
                m.files.len(),
                bytes as f64 / 1e6
            );
        }
        None => println!(
            "cache {} not finished yet: run again (without --only) to complete it",
            out.display()
        ),
    }
    Ok(())
}
