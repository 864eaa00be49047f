//! `posthoc precompute`: the config's model over its image sets, into a feature cache.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use posthoc::config::{ExperimentConfig, required};
use posthoc_cache::{CacheLocation, Role};
use posthoc_pipeline::extractor::{ExtractorBackend, FeatureExtractor};
use posthoc_pipeline::model::Arch;
use posthoc_pipeline::precompute::{PrecomputeSpec, SetPlan, precompute};
use tracing::info;

use super::cache::LockArgs;

/// `posthoc precompute` arguments.
#[derive(Debug, Args)]
pub struct PrecomputeArgs {
    /// Experiment config (`[model]`, `[preprocess]`, `[data]`, `[precompute]`).
    #[arg(long)]
    config: PathBuf,
    /// Cache location (default: the config's `[precompute] out`): a directory or a URL
    /// (`s3://`, `gs://`, `az://`; a remote cache is written in a local staging directory
    /// and uploaded, manifest last, once complete).
    #[arg(long)]
    out: Option<String>,
    /// Only these sets (comma separated); the cache is finished once every set is done.
    #[arg(long, value_delimiter = ',')]
    only: Option<Vec<String>>,
    /// Only the first N images of every set (quick runs; use a separate --out).
    #[arg(long)]
    limit: Option<u64>,
    /// `i/n`: write the i-th of n disjoint slices of every set; join with `posthoc cache
    /// merge`. `auto`: take the slice from the scheduler (a Slurm job array's
    /// `SLURM_ARRAY_TASK_*`, or a Kubernetes Indexed Job's `JOB_COMPLETION_INDEX` with
    /// `--shards N`).
    #[arg(long)]
    shard: Option<String>,
    /// Number of shards for `--shard auto` under Kubernetes (the Job's `completions`);
    /// under Slurm, a check against `SLURM_ARRAY_TASK_COUNT`.
    #[arg(long)]
    shards: Option<u64>,
    #[command(flatten)]
    lock: LockArgs,
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

/// The shard `(i, n)` a scheduler assigned to this process, from its environment
/// (`get` reads a variable): a Slurm job array (`SLURM_ARRAY_TASK_ID`, `_COUNT`, `_MIN`,
/// `_STEP`; i = (ID - MIN) / STEP, n = COUNT) or a Kubernetes Indexed Job
/// (`JOB_COMPLETION_INDEX`, n = `shards`).
fn shard_from_env(
    get: impl Fn(&str) -> Option<String>,
    shards: Option<u64>,
) -> anyhow::Result<(u64, u64)> {
    let number = |key: &str| -> anyhow::Result<Option<u64>> {
        get(key)
            .map(|v| {
                v.trim()
                    .parse::<u64>()
                    .with_context(|| format!("--shard auto: {key}={v:?} is not a number"))
            })
            .transpose()
    };
    let (i, n) = if let Some(id) = number("SLURM_ARRAY_TASK_ID")? {
        let count = number("SLURM_ARRAY_TASK_COUNT")?.context(
            "--shard auto: SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not",
        )?;
        let min = number("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
        let step = number("SLURM_ARRAY_TASK_STEP")?.unwrap_or(1).max(1);
        if id < min || (id - min) % step != 0 {
            bail!(
                "--shard auto: SLURM_ARRAY_TASK_ID={id} is not MIN + k * STEP (MIN={min}, STEP={step})"
            );
        }
        if let Some(s) = shards
            && s != count
        {
            bail!("--shard auto: --shards {s} but the Slurm array has {count} tasks");
        }
        ((id - min) / step, count)
    } else if let Some(index) = number("JOB_COMPLETION_INDEX")? {
        let n = shards.with_context(|| {
            format!(
                "--shard auto: JOB_COMPLETION_INDEX={index} (a Kubernetes Indexed Job) needs --shards N, the Job's completions"
            )
        })?;
        (index, n)
    } else {
        bail!(
            "--shard auto: no scheduler shard in the environment: looked for SLURM_ARRAY_TASK_ID (with SLURM_ARRAY_TASK_COUNT, _MIN, _STEP) of a Slurm job array and JOB_COMPLETION_INDEX (with --shards N) of a Kubernetes Indexed Job"
        );
    };
    if n == 0 || i >= n {
        bail!("--shard auto: shard index {i} is not below the shard count {n}");
    }
    Ok((i, n))
}

/// This build's git commit (from `build.rs`), or `unknown`.
pub(crate) fn git_commit() -> &'static str {
    option_env!("POSTHOC_GIT_COMMIT").unwrap_or("unknown")
}

/// Runs `posthoc precompute`.
pub fn run(args: PrecomputeArgs) -> anyhow::Result<()> {
    let path = &args.config;
    let cfg = ExperimentConfig::load(path)?;
    let model = required(&cfg.model, path, "model", "precompute")?;
    let pre = required(&cfg.preprocess, path, "preprocess", "precompute")?;
    let data = required(&cfg.data, path, "data", "precompute")?;
    let arch = model.architecture(path)?;
    let out_text = args
        .out
        .clone()
        .or_else(|| {
            cfg.precompute
                .as_ref()
                .map(|p| p.out.to_string_lossy().into_owned())
        })
        .with_context(|| format!("no --out and no [precompute] out in {}", path.display()))?;
    let location = CacheLocation::parse(&out_text)?;
    let _lock = args.lock.acquire(&location)?;
    // A remote cache is built in a local staging directory (resumable there), then uploaded.
    let out = match &location {
        CacheLocation::Local(dir) => dir.clone(),
        CacheLocation::Remote(url) => {
            if !url.writable() {
                bail!("--out {url}: http(s) locations are read-only");
            }
            let store = posthoc_cache::RemoteStore::connect(url)?;
            if store.head(posthoc_cache::MANIFEST_FILE)?.is_some() {
                println!("cache {url} is already complete: nothing to do");
                return Ok(());
            }
            let staging = posthoc_cache::store::staging_dir(url);
            info!(out = %url, staging = %staging.display(), "writing a remote cache through a local staging directory");
            staging
        }
    };
    let _staging_lock = match &location {
        CacheLocation::Remote(_) => Some(args.lock.acquire(&CacheLocation::Local(out.clone()))?),
        CacheLocation::Local(_) => None,
    };
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
    let shard = match args.shard.as_deref() {
        Some("auto") => Some(shard_from_env(|k| std::env::var(k).ok(), args.shards)?),
        Some(text) => Some(parse_shard(text)?),
        None => None,
    };
    if let Some((i, n)) = shard {
        info!(shard = format!("{i}/{n}"), "writing one shard");
    }
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
            "shard": shard.map(|(index, count)| serde_json::json!({"index": index, "count": count})),
            "tool": {
                "name": "posthoc",
                "version": env!("CARGO_PKG_VERSION"),
                "git_commit": git_commit(),
            },
            "host": posthoc_cache::lock::host_name(),
            "started": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
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
            if let CacheLocation::Remote(url) = &location {
                info!(out = %url, "uploading the finished cache (manifest last)");
                posthoc_cache::store::copy(
                    &CacheLocation::Local(out.clone()),
                    &location,
                    |_, _| {},
                )?;
                drop(_staging_lock);
                std::fs::remove_dir_all(&out)
                    .with_context(|| format!("removing the staging directory {}", out.display()))?;
            }
            let bytes: u64 = m.files.iter().map(|f| f.bytes).sum();
            println!(
                "cache {location} complete: {} files, {:.1} MB",
                m.files.len(),
                bytes as f64 / 1e6
            );
        }
        None => {
            println!("cache {location} not finished yet: run again (without --only) to complete it")
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            vars.iter()
                .find(|(key, _)| *key == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn slurm_arrays_give_the_shard_from_min_and_step() {
        let array = [
            ("SLURM_ARRAY_TASK_ID", "6"),
            ("SLURM_ARRAY_TASK_COUNT", "3"),
            ("SLURM_ARRAY_TASK_MIN", "0"),
            ("SLURM_ARRAY_TASK_STEP", "3"),
        ];
        assert_eq!(shard_from_env(env(&array), None).unwrap(), (2, 3));
        let one_based = [
            ("SLURM_ARRAY_TASK_ID", "1"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
            ("SLURM_ARRAY_TASK_STEP", "1"),
        ];
        assert_eq!(shard_from_env(env(&one_based), None).unwrap(), (0, 4));
        let err = shard_from_env(env(&one_based), Some(3))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--shards 3") && err.contains("4 tasks"),
            "{err}"
        );
        let off_step = [
            ("SLURM_ARRAY_TASK_ID", "4"),
            ("SLURM_ARRAY_TASK_COUNT", "3"),
            ("SLURM_ARRAY_TASK_MIN", "0"),
            ("SLURM_ARRAY_TASK_STEP", "3"),
        ];
        assert!(shard_from_env(env(&off_step), None).is_err());
    }

    #[test]
    fn kubernetes_indexed_jobs_need_shards() {
        let k8s = [("JOB_COMPLETION_INDEX", "2")];
        assert_eq!(shard_from_env(env(&k8s), Some(4)).unwrap(), (2, 4));
        let err = shard_from_env(env(&k8s), None).unwrap_err().to_string();
        assert!(err.contains("--shards N"), "{err}");
        let err = shard_from_env(env(&k8s), Some(2)).unwrap_err().to_string();
        assert!(
            err.contains("index 2 is not below the shard count 2"),
            "{err}"
        );
    }

    #[test]
    fn no_scheduler_says_what_was_looked_for() {
        let err = shard_from_env(env(&[]), Some(4)).unwrap_err().to_string();
        assert!(
            err.contains("SLURM_ARRAY_TASK_ID") && err.contains("JOB_COMPLETION_INDEX"),
            "{err}"
        );
        let err = shard_from_env(env(&[("SLURM_ARRAY_TASK_ID", "x")]), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a number"), "{err}");
    }
}
