//! `posthoc eval`: read a cache once, run a sweep, print the papers' tables, write
//! JSON / CSV / plots.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use posthoc::config::{ExperimentConfig, RunSection};
use posthoc::eval::engine::needs_train;
use posthoc::eval::engine::{EvalInputs, Evaluation, ScoreSet, evaluate};
use posthoc::eval::methods::TrainSet;
use posthoc::eval::select::{SelectMetric, ValFraction, best_per_method};
use posthoc::eval::sweep::{MethodName, Param, Setting, SweepSpec, SweepValues};
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
    /// dice-react, line, himplos, entropy, gen, kl-matching, ash-p, ash-b, ash-s, scale,
    /// knn, mahalanobis, rmd, vim, residual, she, nnguide, fdbd, gradnorm.
    #[arg(long)]
    method: Option<String>,
    /// Percent p: head sparsity (dice, dice-react, himplos) or activation percentile
    /// (ash-p, ash-b, ash-s, scale), e.g. `0,50,70,90`.
    #[arg(long, allow_hyphen_values = true)]
    p: Option<String>,
    /// Clip threshold: a number, or `pNN` = that percentile of ID-train activations.
    #[arg(long, allow_hyphen_values = true)]
    clip: Option<String>,
    /// Temperature T (energy, temp-msp, himplos, gradnorm).
    #[arg(long, allow_hyphen_values = true)]
    temperature: Option<String>,
    /// LINe activation-mask percentile p_a.
    #[arg(long = "p-a", allow_hyphen_values = true)]
    p_a: Option<String>,
    /// LINe weight-mask percentile p_w.
    #[arg(long = "p-w", allow_hyphen_values = true)]
    p_w: Option<String>,
    /// GEN's exponent gamma.
    #[arg(long, allow_hyphen_values = true)]
    gamma: Option<String>,
    /// GEN's M: how many of the largest softmax probabilities (default: all classes).
    #[arg(long = "top-m", allow_hyphen_values = true)]
    top_m: Option<String>,
    /// Nearest neighbours k (knn, nnguide).
    #[arg(long, allow_hyphen_values = true)]
    k: Option<String>,
    /// ViM / Residual principal dimension D (< m).
    #[arg(long, allow_hyphen_values = true)]
    dim: Option<String>,
    /// Fraction of ID-train rows in the knn / nnguide bank, (0, 1], seeded.
    #[arg(long = "bank-fraction", allow_hyphen_values = true)]
    bank_fraction: Option<String>,
    /// Logit score after activation shaping (react, ash-*, scale): energy, msp, maxlogit, gen.
    #[arg(long)]
    score: Option<String>,
    /// Whose reading where it differs: `paper` (default) or `pytorch-ood`.
    #[arg(long)]
    variant: Option<String>,
    /// OOD sets to report, comma separated (default: the config's, else every OOD set).
    #[arg(long, value_delimiter = ',')]
    ood: Option<Vec<String>>,
    /// Metric convention: `sklearn` (default), `dice` (DICE's `cal_metric`) or `openood`
    /// (OpenOOD v1.5: OOD positive, FPR@95 on the ID samples, trapezoid AUPRs).
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
    /// Pick each method's best setting by `auroc` or `fpr95` on a validation split (needs
    /// --val-ood); the tables show the picks, JSON/CSV the whole sweep with `selected`.
    #[arg(long)]
    select: Option<String>,
    /// The OOD set used only for validation (left out of the reported sets).
    #[arg(long = "val-ood")]
    val_ood: Option<String>,
    /// Share of the ID test rows held out for validation (seeded), in (0, 1).
    #[arg(long = "val-fraction", default_value = "0.2")]
    val_fraction: String,
    /// Skip the sha256 checks while reading (sizes, schemas, dims, values are still checked).
    #[arg(long)]
    no_verify: bool,
}

fn parse_convention(name: &str) -> anyhow::Result<Convention> {
    match name {
        "sklearn" => Ok(Convention::Sklearn),
        "dice" => Ok(Convention::Dice),
        "openood" => Ok(Convention::Openood),
        other => bail!("--convention {other}: expected `sklearn`, `dice` or `openood`"),
    }
}

fn convention_name(c: Convention) -> &'static str {
    match c {
        Convention::Sklearn => "sklearn",
        Convention::Dice => "dice",
        Convention::Openood => "openood",
    }
}

/// The settings of one `[[eval.run]]`.
fn run_settings(run: &RunSection) -> Result<Vec<Setting>, EvalError> {
    let mut values = SweepValues::default();
    for (param, text) in run.values() {
        values.set(param, &text)?;
    }
    SweepSpec {
        methods: vec![run.method.parse()?],
        values,
    }
    .settings()
}

/// The parameter flags given, as `(parameter, comma list)`.
fn flag_values(args: &EvalArgs) -> Vec<(Param, &str)> {
    [
        (Param::P, &args.p),
        (Param::Clip, &args.clip),
        (Param::Temperature, &args.temperature),
        (Param::PA, &args.p_a),
        (Param::PW, &args.p_w),
        (Param::Gamma, &args.gamma),
        (Param::TopM, &args.top_m),
        (Param::K, &args.k),
        (Param::Dim, &args.dim),
        (Param::BankFraction, &args.bank_fraction),
        (Param::Score, &args.score),
        (Param::Variant, &args.variant),
    ]
    .into_iter()
    .filter_map(|(p, v)| v.as_deref().map(|v| (p, v)))
    .collect()
}

/// The settings from the flags, or else from the config's sweep.
fn settings(
    args: &EvalArgs,
    config: Option<&(PathBuf, ExperimentConfig)>,
) -> anyhow::Result<Vec<Setting>> {
    let mut values = SweepValues::default();
    for (param, text) in flag_values(args) {
        values.set(param, text)?;
    }
    if let Some(methods) = &args.method {
        let methods = methods
            .split(',')
            .map(str::parse::<MethodName>)
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(SweepSpec { methods, values }.settings()?);
    }
    if !values.is_empty() {
        bail!("parameter flags (--p, --clip, --temperature, --k, ...) need --method");
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
    let cache = FeatureCache::open_with(&cache_dir, !args.no_verify)
        .with_context(|| format!("opening cache {}", cache_dir.display()))?;
    if let Some((path, cfg)) = &config {
        check_config_fits(path, cfg, &cache)?;
    }
    let selection = match (&args.select, &args.val_ood) {
        (Some(metric), Some(val_ood)) => {
            let metric: SelectMetric = metric.parse()?;
            let fraction: ValFraction = args.val_fraction.parse()?;
            let available = cache.sets(posthoc_cache::Role::Ood);
            if !available.contains(val_ood) {
                bail!(
                    "--val-ood {val_ood:?} is not an OOD set of cache {} (it has: {})",
                    cache.dir().display(),
                    available.join(", ")
                );
            }
            Some((metric, val_ood.clone(), fraction))
        }
        (Some(_), None) => {
            bail!("--select needs --val-ood SET (an OOD set held out for validation)")
        }
        (None, Some(_)) => bail!("--val-ood needs --select auroc|fpr95"),
        (None, None) => None,
    };
    let mut ood_names = ood_sets(&args, config.as_ref().map(|(_, c)| c), &cache)?;
    if let Some((_, val_ood, _)) = &selection {
        ood_names.retain(|n| n != val_ood);
        if ood_names.is_empty() {
            bail!("--val-ood {val_ood}: no OOD set is left to report on");
        }
    }
    let id_name = cache
        .id_test()
        .with_context(|| format!("cache {} has no ID-test split", cache_dir.display()))?;

    // Read everything once, in parallel: head, statistics, ID test and OOD sets.
    let names: Vec<&str> = std::iter::once(id_name.as_str())
        .chain(ood_names.iter().map(String::as_str))
        .chain(selection.iter().map(|(_, v, _)| v.as_str()))
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
    // The ID-train split, only when a selected method fits on it.
    let train = if needs_train(&settings) {
        let name = cache.id_train().with_context(|| {
            format!(
                "cache {} has no ID-train split (knn, mahalanobis, vim, ... fit on it)",
                cache_dir.display()
            )
        })?;
        let split = cache.split_features(&name)?;
        let labels: Vec<i64> = split.labels.iter().map(|&l| i64::from(l)).collect();
        info!(rows = split.rows(), "ID-train split read");
        Some((split, labels))
    } else {
        None
    };
    info!(
        sets = splits.len(),
        rows = splits.iter().map(|s| s.rows()).sum::<usize>(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "cache read"
    );
    let head64 = Head64::from_f32(head.weight.view(), head.bias.view())?;
    let labels: Vec<i64> = splits[0].labels.iter().map(|&l| i64::from(l)).collect();
    let percentile = train_percentile_fn(&cache, &stats);
    let train_set = train.as_ref().map(|(split, labels)| TrainSet {
        features: split.features.view(),
        labels,
    });
    let report_sets: Vec<ScoreSet> = ood_names
        .iter()
        .zip(&splits[1..])
        .map(|(name, s)| ScoreSet {
            name,
            features: s.features.view(),
        })
        .collect();
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
        ood: report_sets,
        train: train_set,
    };
    let (results, n_id, selected) = match &selection {
        None => (
            evaluate(&inputs, &settings, convention)?,
            splits[0].rows(),
            None,
        ),
        Some((metric, val_ood, fraction)) => {
            let (val_rows, test_rows) = fraction.split(splits[0].rows())?;
            let pick = |rows: &[usize]| {
                (
                    splits[0].features.select(ndarray::Axis(0), rows),
                    rows.iter().map(|&r| labels[r]).collect::<Vec<i64>>(),
                )
            };
            let ((val_f, val_l), (test_f, test_l)) = (pick(&val_rows), pick(&test_rows));
            let val_split = splits.last().expect("the validation OOD set was read");
            let validation = evaluate(
                &EvalInputs {
                    id: ScoreSet {
                        name: &id_name,
                        features: val_f.view(),
                    },
                    id_labels: &val_l,
                    ood: vec![ScoreSet {
                        name: val_ood,
                        features: val_split.features.view(),
                    }],
                    ..inputs
                },
                &settings,
                convention,
            )?;
            let chosen = best_per_method(&validation, *metric);
            info!(
                validation_id_rows = val_rows.len(),
                val_ood = %val_ood,
                "selected on the validation split"
            );
            let tested = evaluate(
                &EvalInputs {
                    id: ScoreSet {
                        name: &id_name,
                        features: test_f.view(),
                    },
                    id_labels: &test_l,
                    ..inputs
                },
                &settings,
                convention,
            )?;
            (tested, test_rows.len(), Some(chosen))
        }
    };
    info!(
        settings = results.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "scored"
    );

    let groups = config
        .as_ref()
        .map(|(path, c)| {
            check_groups(path, &c.eval.groups, &ood_names).map(|()| c.eval.groups.clone())
        })
        .transpose()?
        .unwrap_or_default();
    let n_ood: Vec<usize> = splits[1..=ood_names.len()]
        .iter()
        .map(|s| s.rows())
        .collect();
    let rows = rows_of(
        &results,
        &id_name,
        &ood_names,
        (n_id, &n_ood),
        convention,
        &groups,
        selected.as_deref(),
    );
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let shown: Vec<EvalRow> = rows
        .iter()
        .filter(|r| r.selected != Some(false))
        .cloned()
        .collect();
    if let Some((metric, val_ood, fraction)) = &selection {
        use std::io::Write;
        writeln!(
            out,
            "== each method's setting selected by {metric:?} on {val_ood} and a held-out {fraction:?} of {id_name}; reported on the other {n_id} ID rows\n"
        )?;
    }
    report::write_tables(&mut out, &shown)?;
    report::write_summary(&mut out, &shown)?;
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

/// Checks that every `[eval.groups]` member is an evaluated OOD set and that no group
/// is named like a set or `average`.
fn check_groups(
    path: &Path,
    groups: &indexmap::IndexMap<String, Vec<String>>,
    ood_names: &[String],
) -> anyhow::Result<()> {
    for (name, members) in groups {
        if ood_names.contains(name) || name == report::AVERAGE {
            bail!(
                "{}: [eval.groups] {name:?}: a group cannot be named like an OOD set or \"average\"",
                path.display()
            );
        }
        if members.is_empty() {
            bail!("{}: [eval.groups] {name:?} is empty", path.display());
        }
        for m in members {
            if !ood_names.contains(m) {
                bail!(
                    "{}: [eval.groups] {name:?} names {m:?}, which is not among the evaluated OOD sets ({})",
                    path.display(),
                    ood_names.join(", ")
                );
            }
        }
    }
    Ok(())
}

/// Long-format rows: per setting, one row per OOD set, one per OOD set group (its
/// members' mean), then the average over all sets; `counts` = ID rows and rows per OOD
/// set; `selected` = whether each setting was selected (with `--select`).
fn rows_of(
    results: &[Evaluation],
    id_name: &str,
    ood_names: &[String],
    counts: (usize, &[usize]),
    convention: Convention,
    groups: &indexmap::IndexMap<String, Vec<String>>,
    selected: Option<&[bool]>,
) -> Vec<EvalRow> {
    let mut rows = Vec::new();
    for (i, r) in results.iter().enumerate() {
        let per_set: Vec<EvalRow> = ood_names
            .iter()
            .zip(&r.metrics)
            .zip(counts.1)
            .map(|((name, m), &n_ood)| EvalRow {
                method: r.setting.method().as_str().to_owned(),
                params: r.params.clone(),
                id_set: id_name.to_owned(),
                ood_set: name.clone(),
                n_id: counts.0,
                n_ood,
                fpr95: m.fpr95,
                auroc: m.auroc,
                aupr_in: m.aupr_in,
                aupr_out: m.aupr_out,
                id_accuracy: r.id_accuracy,
                convention: convention_name(convention).to_owned(),
                selected: selected.map(|s| s[i]),
            })
            .collect();
        let avg = EvalRow::average(&per_set);
        let grouped: Vec<EvalRow> = groups
            .iter()
            .filter_map(|(name, members)| EvalRow::group_average(&per_set, name, members))
            .collect();
        rows.extend(per_set);
        rows.extend(grouped);
        rows.extend(avg);
    }
    rows
}
