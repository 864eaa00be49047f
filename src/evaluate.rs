//! A cache evaluated end to end: the settings of a request (flags or a config's
//! `[[eval.run]]` sweep), the OOD sets to report, one parallel read of the cache, the
//! engine, and the long-format rows. The CLI (`posthoc eval`) and the Python binding
//! both call [`evaluate_cache`]; printing and writing files stay with the caller.

use std::path::{Path, PathBuf};
use std::time::Instant;

use posthoc_cache::{CacheError, FeatureCache, Role, SplitFeatures, TrainStats, percentile};
use rayon::prelude::*;
use tracing::info;

use crate::config::{ExperimentConfig, RunSection};
use crate::eval::engine::{EvalInputs, Evaluation, ScoreSet, evaluate};
use crate::eval::sweep::{MethodName, Setting, SweepSpec, SweepValues};
use crate::eval::{Convention, EvalError, Head64};
use crate::report::EvalRow;

/// Errors of a whole evaluation request.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A bad parameter, method or convention.
    #[error(transparent)]
    Eval(#[from] EvalError),
    /// The cache could not be read.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// One `[[eval.run]]` of a config is invalid.
    #[error("{}: [[eval.run]] #{index} ({method}): {source}", path.display())]
    ConfigRun {
        /// The config file.
        path: PathBuf,
        /// 1-based position of the entry.
        index: usize,
        /// Its method name.
        method: String,
        /// What is wrong with it.
        source: EvalError,
    },
    /// The request does not fit the cache or names nothing to do.
    #[error("{0}")]
    Request(String),
}

/// The settings of one `[[eval.run]]`.
fn run_settings(run: &RunSection) -> Result<Vec<Setting>, EvalError> {
    let join = |v: Vec<String>| v.join(",");
    let nums = |o: &Option<crate::config::OneOrMany<f64>>| {
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

/// The settings to run: `methods` (comma separated) swept over `values`, or else, when
/// no method is given, the `[[eval.run]]` sweep of `config` (then `values` must be empty).
pub fn request_settings(
    methods: Option<&str>,
    values: SweepValues,
    config: Option<(&Path, &ExperimentConfig)>,
) -> Result<Vec<Setting>, RunError> {
    if let Some(methods) = methods {
        let methods = methods
            .split(',')
            .map(str::parse::<MethodName>)
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(SweepSpec { methods, values }.settings()?);
    }
    if values != SweepValues::default() {
        return Err(RunError::Request(
            "parameter flags (--p, --clip, --temperature, --p-a, --p-w) need --method".into(),
        ));
    }
    match config {
        Some((path, cfg)) if !cfg.eval.run.is_empty() => {
            let mut out = Vec::new();
            for (i, run) in cfg.eval.run.iter().enumerate() {
                out.extend(run_settings(run).map_err(|source| RunError::ConfigRun {
                    path: path.to_owned(),
                    index: i + 1,
                    method: run.method.clone(),
                    source,
                })?);
            }
            Ok(out)
        }
        Some((path, _)) => Err(RunError::Request(format!(
            "{} has no [[eval.run]] entries: give --method",
            path.display()
        ))),
        None => Err(RunError::Request(
            "nothing to evaluate: give --method (e.g. --method energy) or --config".into(),
        )),
    }
}

/// Checks that a config meant for one head fits the cache (class count and names; a
/// different model id only warns).
pub fn check_config_fits(
    path: &Path,
    cfg: &ExperimentConfig,
    cache: &FeatureCache,
) -> Result<(), RunError> {
    let Some(model) = &cfg.model else {
        return Ok(());
    };
    let found = &cache.manifest().model;
    if model.num_classes != found.num_classes {
        return Err(RunError::Request(format!(
            "config {} is for a {}-class head, but cache {} (model {}) has C = {}",
            path.display(),
            model.num_classes,
            cache.dir().display(),
            found.id,
            found.num_classes
        )));
    }
    if !model.class_names.is_empty() && model.class_names != found.class_names {
        return Err(RunError::Request(format!(
            "config {} names classes {:?}, cache {} has {:?}",
            path.display(),
            model.class_names,
            cache.dir().display(),
            found.class_names
        )));
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

/// The OOD sets to report: `requested`, else the config's `[eval] ood`, else every OOD
/// set of the cache (in the order of the config's `[data.ood]` where it names them).
pub fn ood_sets(
    requested: Option<Vec<String>>,
    cfg: Option<&ExperimentConfig>,
    cache: &FeatureCache,
) -> Result<Vec<String>, RunError> {
    let available = cache.sets(Role::Ood);
    let wanted = match requested.or_else(|| cfg.and_then(|c| c.eval.ood.clone())) {
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
    if let Some(name) = wanted.iter().find(|n| !available.contains(n)) {
        return Err(RunError::Request(format!(
            "OOD set {name:?} is not in cache {} (it has: {})",
            cache.dir().display(),
            available.join(", ")
        )));
    }
    if wanted.is_empty() {
        return Err(RunError::Request(format!(
            "cache {} has no OOD set to evaluate",
            cache.dir().display()
        )));
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

/// A cache evaluated: per-setting results (with per-sample scores) and the report rows.
#[derive(Debug)]
pub struct CacheEvaluation {
    /// The ID-test split's name.
    pub id_set: String,
    /// The OOD sets, in report order.
    pub ood_sets: Vec<String>,
    /// One result per setting, in request order (scores of every set, metrics).
    pub results: Vec<Evaluation>,
    /// Long-format rows: per setting, one row per OOD set then the average.
    pub rows: Vec<EvalRow>,
}

/// Reads the head, the ID-train statistics, the ID-test split and `ood_sets` of `cache`
/// once (in parallel), evaluates every setting and returns the results and rows.
pub fn evaluate_cache(
    cache: &FeatureCache,
    settings: &[Setting],
    ood_sets: &[String],
    convention: Convention,
) -> Result<CacheEvaluation, RunError> {
    let started = Instant::now();
    let id_name = cache.id_test().ok_or_else(|| {
        RunError::Request(format!(
            "cache {} has no ID-test split",
            cache.dir().display()
        ))
    })?;
    let names: Vec<&str> = std::iter::once(id_name.as_str())
        .chain(ood_sets.iter().map(String::as_str))
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
    let percentile = train_percentile_fn(cache, &stats);
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
        ood: ood_sets
            .iter()
            .zip(&splits[1..])
            .map(|(name, s)| ScoreSet {
                name,
                features: s.features.view(),
            })
            .collect(),
    };
    let results = evaluate(&inputs, settings, convention)?;
    info!(
        settings = results.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "scored"
    );
    let rows = rows_of(&results, &id_name, ood_sets, &splits, convention);
    Ok(CacheEvaluation {
        id_set: id_name,
        ood_sets: ood_sets.to_vec(),
        results,
        rows,
    })
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
                convention: convention.as_str().to_owned(),
            })
            .collect();
        let avg = EvalRow::average(&per_set);
        rows.extend(per_set);
        rows.extend(avg);
    }
    rows
}
