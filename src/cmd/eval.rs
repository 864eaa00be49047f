//! `posthoc eval`: read a cache once, run a sweep, print the papers' tables, write
//! JSON / CSV / plots.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use posthoc::config::{ExperimentConfig, RunSection};
use posthoc::eval::engine::{EvalInputs, Evaluation, ScoreSet, evaluate};
use posthoc::eval::sweep::{MethodName, Setting, SweepSpec, SweepValues};
use posthoc::eval::{Convention, EvalError, Head64};
use posthoc::report::{self, EvalRow};
use posthoc_cache::{FeatureCache, SplitFeatures, TrainStats, percentile};
use rayon::prelude::*;
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

fn parse_convention(name: &str) -> anyhow::Result<Convention> {
    match name {
        "sklearn" => Ok(Convention::Sklearn),
        "dice" => Ok(Convention::Dice),
        other => bail!("--convention {other}: expected `sklearn` or `dice`"),
    }
}

fn convention_name(c: Convention) -> &'static str {
    match c {
        Convention::Sklearn => "sklearn",
        Convention::Dice => "dice",
    }
}

/// The settings of one `[[eval.run]]`.
fn run_settings(run: &RunSection) -> Result<Vec<Setting>, EvalError> {
    let join = |v: Vec<String>| v.join(",");
    let nums = |o: &Option<posthoc::config::OneOrMany<f64>>| {
        o.as_ref()
            .map(|v| join(v.to_vec().iter().map(|x| x.to_string()).collect()))
    };
    let clip = run
        .clip
        .as_ref()
        .map(|v| join(v.to_vec().iter().map(|c| c.to_cli_string()).collect()));
    SweepSpec {
        methods: vec![run.method.parse()?],
        values: SweepValues::parse(
            nums(&run.p).as_deref(),
            clip.as_deref(),
            nums(&run.temperature).as_deref(),
            nums(&run.p_a).as_deref(),
            nums(&run.p_w).as_deref(),
        )?,
    }
    .settings()
}

/// The settings from the flags, or else from the config's sweep.
fn settings(
    args: &EvalArgs,
    config: Option<&(PathBuf, ExperimentConfig)>,
) -> anyhow::Result<Vec<Setting>> {
    let values = SweepValues::parse(
        args.p.as_deref(),
        args.clip.as_deref(),
        args.temperature.as_deref(),
        args.p_a.as_deref(),
        args.p_w.as_deref(),
    )?;
    if let Some(methods) = &args.method {
        let methods = methods
            .split(',')
            .map(str::parse::<MethodName>)
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(SweepSpec { methods, values }.settings()?);
    }
    if values != SweepValues::default() {
        bail!("parameter flags (--p, --clip, --temperature, --p-a, --p-w) need --method");
    }
    match config {
        Some((path, cfg)) if !cfg.eval.run.is_empty() => {
            let mut out = Vec::new();
            for (i, run) in cfg.eval.run.iter().enumerate() {
                out.extend(run_settings(run).with_context(|| {
                    format!(
                        "{}: [[eval.run]] #{} ({})",
                        path.display(),
                        i + 1,
                        run.method
                    )
                })?);
            }
            Ok(out)
        }
        Some((path, _)) => bail!(
            "{} has no [[eval.run]] entries: give --method",
            path.display()
        ),
        None => bail!("nothing to evaluate: give --method (e.g. --method energy) or --config"),
    }
}

/// Checks that a config meant for one head fits the cache.
fn check_config_fits(
    path: &Path,
    cfg: &ExperimentConfig,
    cache: &FeatureCache,
) -> anyhow::Result<()> {
    let Some(model) = &cfg.model else {
        return Ok(());
    };
    let found = &cache.manifest().model;
    if model.num_classes != found.num_classes {
        bail!(
            "config {} is for a {}-class head, but cache {} (model {}) has C = {}",
            path.display(),
            model.num_classes,
            cache.dir().display(),
            found.id,
            found.num_classes
        );
    }
    if !model.class_names.is_empty() && model.class_names != found.class_names {
        bail!(
            "config {} names classes {:?}, cache {} has {:?}",
            path.display(),
            model.class_names,
            cache.dir().display(),
            found.class_names
        );
    }
    if model.id != found.id {
        tracing::warn!(
            config_model = %model.id,
            cache_model = %found.id,
            "the cache was made by another model than the config names; its head matches, evaluating anyway"
        );
    }
    Ok(())
}

/// The OOD sets to report: `--ood`, else the config's `[eval] ood`, else every OOD set
/// of the cache (in the order of the config's `[data.ood]` where it names them).
fn ood_sets(
    args: &EvalArgs,
    cfg: Option<&ExperimentConfig>,
    cache: &FeatureCache,
) -> anyhow::Result<Vec<String>> {
    let available = cache.sets(posthoc_cache::Role::Ood);
    let wanted = match args
        .ood
        .clone()
        .or_else(|| cfg.and_then(|c| c.eval.ood.clone()))
    {
        Some(list) => list,
        None => {
            let config_order: Vec<String> = cfg
                .and_then(|c| c.data.as_ref())
                .map(|d| {
                    d.ood
                        .keys()
                        .filter(|k| available.contains(k))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            let rest = available
                .iter()
                .filter(|s| !config_order.contains(s))
                .cloned();
            config_order.iter().cloned().chain(rest).collect()
        }
    };
    for name in &wanted {
        if !available.contains(name) {
            bail!(
                "OOD set {name:?} is not in cache {} (it has: {})",
                cache.dir().display(),
                available.join(", ")
            );
        }
    }
    if wanted.is_empty() {
        bail!("cache {} has no OOD set to evaluate", cache.dir().display());
    }
    Ok(wanted)
}

/// `q -> percentile of all ID-train activations` from the stored grid, else exactly from
/// the ID-train features (numpy's float32 interpolation, as the reference code gets it).
fn train_percentile_fn<'a>(
    cache: &'a FeatureCache,
    stats: &'a TrainStats,
) -> impl Fn(f64) -> Result<f64, EvalError> + Sync + 'a {
    let train: std::sync::OnceLock<Result<Vec<f32>, String>> = std::sync::OnceLock::new();
    move |q| {
        if let Some((v, _)) = stats.activation_percentiles.at(q) {
            return Ok(f64::from(v));
        }
        let values = train.get_or_init(|| {
            let name = cache.id_train().ok_or("the cache has no ID-train split")?;
            info!(
                q,
                "percentile off the stored grid: reading the ID-train features"
            );
            let split = cache.split_features(&name).map_err(|e| e.to_string())?;
            let mut values = split.features.into_raw_vec_and_offset().0;
            if !percentile::sort_for_percentiles(&mut values) {
                return Err("the ID-train features hold NaN".to_owned());
            }
            Ok(values)
        });
        match values {
            Ok(v) => percentile::percentile_sorted(v, q)
                .map(f64::from)
                .ok_or_else(|| EvalError::TrainPercentile {
                    q,
                    reason: "the ID-train split is empty".to_owned(),
                }),
            Err(e) => Err(EvalError::TrainPercentile {
                q,
                reason: e.clone(),
            }),
        }
    }
}

/// Runs `posthoc eval`.
pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let config = args
        .config
        .as_ref()
        .map(|p| ExperimentConfig::load(p).map(|c| (p.clone(), c)))
        .transpose()?;
    let settings = settings(&args, config.as_ref())?;
    let cache_dir = args
        .cache
        .clone()
        .or_else(|| config.as_ref().and_then(|(_, c)| c.eval.cache.clone()))
        .context("no cache: give --cache DIR (or a config with [eval] cache)")?;
    let convention = parse_convention(
        args.convention
            .as_deref()
            .or(config
                .as_ref()
                .and_then(|(_, c)| c.eval.convention.as_deref()))
            .unwrap_or("sklearn"),
    )?;
    let cache = FeatureCache::open_url(&cache_dir.to_string_lossy(), !args.no_verify)
        .with_context(|| format!("opening cache {}", cache_dir.display()))?;
    if let Some((path, cfg)) = &config {
        check_config_fits(path, cfg, &cache)?;
    }
    let ood_names = ood_sets(&args, config.as_ref().map(|(_, c)| c), &cache)?;
    let id_name = cache
        .id_test()
        .with_context(|| format!("cache {} has no ID-test split", cache_dir.display()))?;

    // Read everything once, in parallel: head, statistics, ID test and OOD sets.
    let names: Vec<&str> = std::iter::once(id_name.as_str())
        .chain(ood_names.iter().map(String::as_str))
        .collect();
    let (head, (stats, splits)) = rayon::join(
        || cache.head(),
        || {
            rayon::join(
                || cache.stats(),
                || {
                    names
                        .par_iter()
                        .map(|n| cache.split_features(n))
                        .collect::<Result<Vec<SplitFeatures>, _>>()
                },
            )
        },
    );
    let (head, stats, splits) = (head?, stats?, splits?);
    info!(
        sets = splits.len(),
        rows = splits.iter().map(|s| s.rows()).sum::<usize>(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "cache read"
    );
    let head64 = Head64::from_f32(head.weight.view(), head.bias.view())?;
    let labels: Vec<i64> = splits[0].labels.iter().map(|&l| i64::from(l)).collect();
    let percentile = train_percentile_fn(&cache, &stats);
    let inputs = EvalInputs {
        head: &head64,
        train_mean: stats.mean.view(),
        class_means: stats.class_means.view(),
        train_percentile: &percentile,
        id: ScoreSet {
            name: &id_name,
            features: splits[0].features.view(),
        },
        id_labels: &labels,
        ood: ood_names
            .iter()
            .zip(&splits[1..])
            .map(|(name, s)| ScoreSet {
                name,
                features: s.features.view(),
            })
            .collect(),
    };
    let results = evaluate(&inputs, &settings, convention)?;
    info!(
        settings = results.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "scored"
    );

    let rows = rows_of(&results, &id_name, &ood_names, &splits, convention);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    report::write_tables(&mut out, &rows)?;
    report::write_summary(&mut out, &rows)?;
    if let Some(path) = &args.json {
        report::write_json(path, &rows).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.csv {
        report::write_csv(path, &rows).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(dir) = &args.plots {
        super::plots::write_all(dir, &results, &rows, &ood_names)?;
    }
    info!(elapsed_ms = started.elapsed().as_millis() as u64, "done");
    Ok(())
}

/// Long-format rows: per setting, one row per OOD set then the average.
fn rows_of(
    results: &[Evaluation],
    id_name: &str,
    ood_names: &[String],
    splits: &[SplitFeatures],
    convention: Convention,
) -> Vec<EvalRow> {
    let mut rows = Vec::new();
    for r in results {
        let per_set: Vec<EvalRow> = ood_names
            .iter()
            .zip(&r.metrics)
            .zip(&splits[1..])
            .map(|((name, m), split)| EvalRow {
                method: r.setting.method().as_str().to_owned(),
                params: r.params.clone(),
                id_set: id_name.to_owned(),
                ood_set: name.clone(),
                n_id: splits[0].rows(),
                n_ood: split.rows(),
                fpr95: m.fpr95,
                auroc: m.auroc,
                aupr_in: m.aupr_in,
                aupr_out: m.aupr_out,
                id_accuracy: r.id_accuracy,
                convention: convention_name(convention).to_owned(),
            })
            .collect();
        let avg = EvalRow::average(&per_set);
        rows.extend(per_set);
        rows.extend(avg);
    }
    rows
}
