//! `posthoc cache info|verify|import-npy|merge`.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use posthoc_cache::{FeatureCache, ImportOptions, Role};

/// Cache subcommands.
#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Print what a cache holds: model, dims, sets, row counts, statistics.
    Info {
        /// Cache directory.
        dir: PathBuf,
    },
    /// Read every file completely and check hashes, schemas, dims, row counts, values.
    Verify {
        /// Cache directory.
        dir: PathBuf,
    },
    /// Build a cache from a folder of `.npy` arrays (`<set>_feat.npy`, `<set>_logits.npy`,
    /// `<set>_files.txt`, `<set>_labels.npy`, `fc_weight.npy`, `fc_bias.npy`).
    ImportNpy(ImportArgs),
    /// Join caches written as disjoint shards (`precompute --shard i/n`) into one.
    Merge {
        /// Output cache directory.
        #[arg(long)]
        out: PathBuf,
        /// Shard cache directories.
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
    },
}

/// `posthoc cache import-npy`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Folder of `.npy` arrays.
    #[arg(long = "from")]
    from: PathBuf,
    /// Cache directory to create.
    #[arg(long)]
    out: PathBuf,
    /// Model id for the manifest.
    #[arg(long, default_value = "imported")]
    model_id: String,
    /// Class names in label order, comma separated (default 0..C-1).
    #[arg(long, value_delimiter = ',')]
    class_names: Option<Vec<String>>,
    /// sha256 of the checkpoint the features came from.
    #[arg(long)]
    checkpoint_sha256: Option<String>,
}

/// Runs a cache subcommand.
pub fn run(cmd: CacheCommand) -> anyhow::Result<()> {
    match cmd {
        CacheCommand::Info { dir } => info(&dir),
        CacheCommand::Verify { dir } => {
            let report = posthoc_cache::verify(&dir)?;
            for f in &report.passed {
                println!(
                    "ok       {:<28} {:<9} {:>9} rows {:>12} bytes",
                    f.name,
                    f.role.as_str(),
                    f.rows,
                    f.bytes
                );
            }
            for p in &report.problems {
                println!("PROBLEM  {p}");
            }
            if !report.is_ok() {
                bail!(
                    "{}: {} problem(s) found; the first: {}",
                    dir.display(),
                    report.problems.len(),
                    report.problems[0]
                );
            }
            println!("{}: verified {} files", dir.display(), report.passed.len());
            Ok(())
        }
        CacheCommand::ImportNpy(a) => {
            let options = ImportOptions {
                model_id: a.model_id,
                class_names: a.class_names,
                checkpoint_sha256: a.checkpoint_sha256,
                preprocessing: serde_json::json!({}),
                created: None,
            };
            let manifest = posthoc_cache::import_npy(&a.from, &a.out, &options)
                .with_context(|| format!("importing {}", a.from.display()))?;
            println!(
                "wrote {} ({} files, m = {}, C = {})",
                a.out.display(),
                manifest.files.len(),
                manifest.model.feature_dim,
                manifest.model.num_classes
            );
            Ok(())
        }
        CacheCommand::Merge { out, inputs } => {
            let manifest = posthoc_cache::merge(&inputs, &out)?;
            println!(
                "merged {} caches into {} ({} files)",
                inputs.len(),
                out.display(),
                manifest.files.len()
            );
            Ok(())
        }
    }
}

fn info(dir: &std::path::Path) -> anyhow::Result<()> {
    let cache = FeatureCache::open(dir)?;
    let m = cache.manifest();
    println!("cache        {}", dir.display());
    println!("format       v{}", m.format_version);
    println!("model        {}", m.model.id);
    if let Some(sha) = &m.model.checkpoint_sha256 {
        println!("checkpoint   sha256 {sha}");
    }
    println!(
        "dims         m = {} features, C = {} classes",
        m.model.feature_dim, m.model.num_classes
    );
    println!("classes      {}", m.model.class_names.join(", "));
    println!("tool         {} {}", m.tool.name, m.tool.version);
    if let Some(c) = &m.created {
        println!("created      {c}");
    }
    if !m.preprocessing.is_null() && m.preprocessing != serde_json::json!({}) {
        println!("preprocess   {}", m.preprocessing);
    }
    println!("files");
    for f in &m.files {
        println!(
            "  {:<28} {:<9} {:<14} {:>9} rows {:>12} bytes",
            f.name,
            f.role.as_str(),
            f.set.as_deref().unwrap_or("-"),
            f.rows,
            f.bytes
        );
    }
    if !m.skipped.is_empty() {
        println!("skipped inputs: {}", m.skipped.len());
        for s in m.skipped.iter().take(10) {
            println!("  {}/{}: {}", s.set, s.path, s.reason);
        }
    }
    if cache.sets(Role::IdTrain).is_empty() {
        println!("stats        none (no ID-train split)");
    } else if let Ok(stats) = cache.stats() {
        println!(
            "stats        n_train = {}, mean train CE = {:.6}, train accuracy = {:.4}",
            stats.n_train, stats.mean_ce, stats.accuracy
        );
        if let Some((f32v, _)) = stats.activation_percentiles.at(90.0) {
            println!("             ReAct threshold p90 = {f32v}");
        }
    }
    Ok(())
}
