//! `posthoc um`: Unleashing-Mask fine-tuning (`train`) and its loss constraint
//! (`estimate`), configured by the `[um]` section of an experiment config.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, Subcommand};
use posthoc::config::{ExperimentConfig, SetSource, required};
use posthoc_pipeline::data::{ImageSet, Preprocess};
use posthoc_pipeline::extractor::ExtractorBackend;
use posthoc_pipeline::model::DenseNetConfig;
use posthoc_pipeline::um::config::{ConstraintSource, UmSection};
use posthoc_pipeline::um::data::{Subset, TrainImages};
use posthoc_pipeline::um::estimate::{Estimate, estimate_from_cache, estimate_repository};
use posthoc_pipeline::um::tensors::write_atomic;
use posthoc_pipeline::um::train::{
    MODEL_FILE, TrainRun, cpu_training_device, load_pretrained, reuse_freed_memory,
};
use posthoc_pipeline::um::{BatchNormMode, UmNet, Variant};
use tracing::info;

/// `posthoc um` subcommands.
#[derive(Debug, Subcommand)]
pub enum UmCommand {
    /// The loss constraint UM: the repository's `estimate_loss.py` figure and the cache's
    /// mean train cross-entropy; written to `<um.out>/estimate.json`.
    Estimate(EstimateArgs),
    /// Fine-tune the pretrained network with the UM loss (UM or UMAP) and export
    /// `<um.out>/model.safetensors` for `posthoc precompute`.
    Train(TrainArgs),
}

/// Arguments shared by both subcommands.
#[derive(Debug, Args)]
pub struct Common {
    /// Experiment config with `[model]`, `[preprocess]`, `[data]` and `[um]`.
    #[arg(long)]
    config: PathBuf,
    /// Only a random subset of N training images (seeded by `um.seed`).
    #[arg(long)]
    limit: Option<usize>,
    /// Run folder (default: `um.out`); `train` reads the constraint from its `estimate.json`,
    /// else from `um.out`/estimate.json.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// `posthoc um estimate` arguments.
#[derive(Debug, Args)]
pub struct EstimateArgs {
    #[command(flatten)]
    common: Common,
    /// BatchNorm treatment of the estimate wrapper: non-affine (the repository), frozen-affine.
    #[arg(long)]
    batch_norm: Option<String>,
    /// Where the folded estimate network runs: `cpu` (fast engine), `cpu:N`, `flex` (burn).
    #[arg(long, default_value = "cpu")]
    backend: String,
    /// Skip the repository-style pass (only read the cache figure).
    #[arg(long)]
    cache_only: bool,
    /// Evaluate the un-augmented training images (the repository augments).
    #[arg(long)]
    no_augment: bool,
}

/// `posthoc um train` arguments.
#[derive(Debug, Args)]
pub struct TrainArgs {
    #[command(flatten)]
    common: Common,
    /// `um` (all weights) or `umap` (masks over frozen weights); default `um.variant`.
    #[arg(long)]
    variant: Option<String>,
    /// Epochs (the cosine schedule's length); default `um.epochs`.
    #[arg(long)]
    epochs: Option<usize>,
    /// The constraint UM: a number, `estimate` or `cache`; default `um.constraint`.
    #[arg(long)]
    constraint: Option<String>,
    /// Continue from `<out>/state.safetensors`.
    #[arg(long)]
    resume: bool,
    /// Images per batch; default `um.batch_size`.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Also checkpoint every N iterations; default `um.checkpoint_every`.
    #[arg(long)]
    checkpoint_every: Option<usize>,
    /// Seed; default `um.seed`.
    #[arg(long)]
    seed: Option<u64>,
}

/// Runs `posthoc um`.
pub fn run(cmd: UmCommand) -> anyhow::Result<()> {
    match cmd {
        UmCommand::Estimate(args) => estimate(args),
        UmCommand::Train(args) => train(args),
    }
}

/// What both subcommands read from the config.
struct Loaded {
    config_path: PathBuf,
    /// `estimate.json` of the config's own `um.out` (before `--out`).
    config_estimate_file: PathBuf,
    config: ExperimentConfig,
    um: UmSection,
    net: DenseNetConfig,
    preprocess: Preprocess,
    train_set: SetSource,
    class_names: Vec<String>,
}

fn load(common: &Common) -> anyhow::Result<Loaded> {
    let path = &common.config;
    let config = ExperimentConfig::load(path)?;
    let model = required(&config.model, path, "model", "um")?.clone();
    let pre = required(&config.preprocess, path, "preprocess", "um")?.clone();
    let data = required(&config.data, path, "data", "um")?.clone();
    let table = required(&config.um, path, "um", "um")?.clone();
    let mut um: UmSection = table
        .try_into()
        .with_context(|| format!("{}: [um]", path.display()))?;
    let config_estimate_file = um.estimate_file();
    if let Some(out) = &common.out {
        um.out = out.clone();
    }
    let net = model.densenet(path, um.dropout)?;
    let preprocess = pre
        .transform()
        .with_context(|| format!("{}: [preprocess]", path.display()))?;
    let class_names = model.labelled_classes(path)?;
    Ok(Loaded {
        config_path: path.clone(),
        config_estimate_file,
        net,
        config,
        um,
        preprocess,
        train_set: data.id_train,
        class_names,
    })
}

fn train_images(l: &Loaded, limit: Option<usize>, seed: u64) -> anyhow::Result<TrainImages> {
    let spec = l.train_set.spec();
    let set: Arc<dyn ImageSet> = spec
        .open(Path::new("."), Some(&l.class_names))
        .with_context(|| format!("{}: [data] id_train", l.config_path.display()))?;
    let subset = match limit {
        Some(n) => Subset::Random { n, seed },
        None => Subset::All,
    };
    let t = Instant::now();
    let images = TrainImages::load(set.clone(), subset, &l.preprocess)?;
    info!(
        images = images.len(),
        of = set.len(),
        seconds = format!("{:.1}", t.elapsed().as_secs_f64()),
        "training images decoded"
    );
    Ok(images)
}

fn progress() -> bool {
    std::io::stderr().is_terminal()
}

fn estimate(args: EstimateArgs) -> anyhow::Result<()> {
    let mut l = load(&args.common)?;
    if let Some(bn) = &args.batch_norm {
        l.um.estimate.batch_norm = bn.parse::<BatchNormMode>()?;
    }
    if args.no_augment {
        l.um.estimate.augment = false;
    }
    let estimate_file = l.um.estimate_file();
    let mut result = Estimate {
        repository: None,
        cache: None,
    };
    if !args.cache_only {
        let settings = l.um.estimate_settings()?;
        let backend: ExtractorBackend = args.backend.parse()?;
        info!(pretrained = %l.um.pretrained.display(), "loading the pretrained network");
        let loaded = load_pretrained(&l.net, &l.um.pretrained)
            .with_context(|| format!("loading {}", l.um.pretrained.display()))?;
        let images = train_images(&l, args.common.limit, l.um.seed)?;
        let t = Instant::now();
        let r = estimate_repository(
            &loaded.model,
            &loaded.plan,
            &images,
            &l.preprocess,
            &settings,
            backend,
            &l.um.out.join("estimate-model.safetensors"),
            progress(),
        )?;
        info!(
            seconds = format!("{:.1}", t.elapsed().as_secs_f64()),
            "estimate pass done"
        );
        result.repository = Some(r);
    }
    if let Some(cache) = &l.um.estimate.cache {
        if cache.join("manifest.json").exists() {
            result.cache = Some(estimate_from_cache(cache)?);
        } else {
            println!(
                "no finished cache at {} ([um.estimate] cache): run `posthoc precompute` on the pretrained model for the plain figure",
                cache.display()
            );
        }
    }
    if let Some(r) = &result.repository {
        println!(
            "UM (repository estimate_loss.py): {:.6}   mean CE in eval mode over {} training images{}, \
             the pretrained network with random masks keeping {} of every conv/linear weight \
             ({} of {} weights zeroed) and {} BatchNorm; accuracy {:.2}%",
            r.mean_ce,
            r.images,
            if r.augment {
                " (RandomCrop(32, 4) + flip, as its train loader)"
            } else {
                ""
            },
            r.keep,
            r.pruned.0,
            r.pruned.1,
            r.batch_norm,
            100.0 * r.accuracy
        );
    }
    if let Some(c) = &result.cache {
        println!(
            "UM (plain, from the cache):        {:.6}   mean CE of the unmodified network over the {} cached training logits \
             (eval mode, test-time preprocessing, no augmentation) of {}; accuracy {:.2}%",
            c.mean_ce,
            c.images,
            c.cache.display(),
            100.0 * c.accuracy
        );
    }
    // Keep the figure this invocation did not compute.
    if let Ok(text) = std::fs::read_to_string(&estimate_file)
        && let Ok(old) = serde_json::from_str::<Estimate>(&text)
    {
        if result.repository.is_none() {
            result.repository = old.repository;
        }
        if result.cache.is_none() {
            result.cache = old.cache;
        }
    }
    let json = serde_json::to_string_pretty(&result)? + "\n";
    write_atomic(&estimate_file, json.as_bytes())?;
    println!("wrote {}", estimate_file.display());
    Ok(())
}

fn train(args: TrainArgs) -> anyhow::Result<()> {
    let mut l = load(&args.common)?;
    if let Some(v) = &args.variant {
        l.um.variant = v.parse::<Variant>()?;
    }
    if let Some(e) = args.epochs {
        l.um.epochs = e;
    }
    if let Some(b) = args.batch_size {
        l.um.batch_size = b;
    }
    if let Some(c) = args.checkpoint_every {
        l.um.checkpoint_every = c;
    }
    if let Some(s) = args.seed {
        l.um.seed = s;
    }
    if let Some(c) = &args.constraint {
        l.um.constraint = ConstraintSource::parse(c)?;
    }
    // The run folder's estimate, else the one of the config's run folder.
    let estimate_file = if l.um.estimate_file().exists() {
        l.um.estimate_file()
    } else {
        l.config_estimate_file.clone()
    };
    let um_value = l.um.constraint.resolve(&estimate_file)?;
    let settings = l.um.train_settings(um_value)?;
    info!(
        variant = %l.um.variant,
        constraint = um_value,
        epochs = l.um.epochs,
        batch_size = l.um.batch_size,
        batch_norm = %l.um.batch_norm,
        out = %l.um.out.display(),
        "UM fine-tuning"
    );
    // Before the training allocates: its step buffers are then reused, not remapped.
    reuse_freed_memory();
    let loaded = load_pretrained(&l.net, &l.um.pretrained)
        .with_context(|| format!("loading {}", l.um.pretrained.display()))?;
    let mut net = UmNet::from_densenet(&loaded.model, &loaded.plan, settings.net, settings.seed)?;
    let images = train_images(&l, args.common.limit, l.um.seed)?;
    let description = serde_json::json!({
        "command": std::env::args().collect::<Vec<_>>(),
        "config_file": l.config_path,
        "um": l.um,
        "constraint": um_value,
        "pretrained_sha256": loaded.info.sha256,
        "limit": args.common.limit,
        "model": l.config.model,
    });
    let run = TrainRun {
        settings,
        images: &images,
        preprocess: l.preprocess.clone(),
        out: l.um.out.clone(),
        device: cpu_training_device(),
        progress: progress(),
        description,
        stop: None,
    };
    let report = run.run(&mut net, args.resume)?;
    println!(
        "trained {} epoch(s) in total ({} steps now) at {:.2} images/s; last epoch: loss {}, accuracy {}",
        report.epochs,
        report.steps,
        report.images_per_second,
        report
            .last_epoch_loss
            .map_or("-".into(), |v| format!("{v:.4}")),
        report
            .last_epoch_accuracy
            .map_or("-".into(), |v| format!("{:.2}%", 100.0 * v)),
    );
    println!(
        "exported {} (precompute it: posthoc precompute --config {} --checkpoint {})",
        report.model.display(),
        l.config_path.display(),
        l.um.out.join(MODEL_FILE).display()
    );
    Ok(())
}
