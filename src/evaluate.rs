//! A cache evaluated end to end: the settings of a request (flags or a config's
//! `[[eval.run]]` sweep), the OOD sets to report, one parallel read of the cache, the
//! engine, and the long-format rows. The CLI (`posthoc eval`) and the Python binding
//! both call [`evaluate_cache`]; printing and writing files stay with the caller.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use posthoc_cache::{CacheError, FeatureCache, Role, SplitFeatures, TrainStats, percentile};
use rayon::prelude::*;
use tracing::info;

use indexmap::IndexMap;

use crate::config::{ExperimentConfig, RunSection};
use crate::eval::engine::{EvalInputs, Evaluation, Plan, ScoreSet, needs_train};
use crate::eval::methods::TrainSet;
use crate::eval::select::{SelectMetric, ValFraction, best_per_method};
use crate::eval::sweep::{MethodName, Setting, SweepSpec, SweepValues};
use crate::eval::{Convention, EvalError, Head64};
use crate::report::{self, EvalRow};

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
    /// The cache of a request could not be opened.
    #[error("opening cache {location}: {source}")]
    Open {
        /// The directory or URL.
        location: String,
        /// Why (boxed: keeps `RunError` small).
        source: Box<CacheError>,
    },
    /// The request does not fit the cache or names nothing to do.
    #[error("{0}")]
    Request(String),
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
    if !values.is_empty() {
        return Err(RunError::Request(
            "parameter flags (--p, --clip, --temperature, --k, ...) need --method".into(),
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

/// Hyperparameter selection on a validation split (`--select`): the metric, the OOD set
/// held out for validation, and the seeded share of ID-test rows held out with it.
#[derive(Debug, Clone)]
pub struct Selection {
    /// What is maximised (AUROC) or minimised (FPR95) on the validation split.
    pub metric: SelectMetric,
    /// The OOD set used only for validation (left out of the reported sets).
    pub val_ood: String,
    /// Share of the ID-test rows held out for validation.
    pub fraction: ValFraction,
}

impl Selection {
    /// The selection of `--select METRIC --val-ood SET --val-fraction F`, checked against
    /// the cache; `None` when neither `select` nor `val_ood` is given.
    pub fn from_request(
        select: Option<&str>,
        val_ood: Option<&str>,
        val_fraction: &str,
        cache: &FeatureCache,
    ) -> Result<Option<Selection>, RunError> {
        match (select, val_ood) {
            (Some(metric), Some(val_ood)) => {
                let metric: SelectMetric = metric.parse()?;
                let fraction: ValFraction = val_fraction.parse()?;
                let available = cache.sets(Role::Ood);
                if !available.iter().any(|s| s == val_ood) {
                    return Err(RunError::Request(format!(
                        "--val-ood {val_ood:?} is not an OOD set of cache {} (it has: {})",
                        cache.dir().display(),
                        available.join(", ")
                    )));
                }
                Ok(Some(Selection {
                    metric,
                    val_ood: val_ood.to_owned(),
                    fraction,
                }))
            }
            (Some(_), None) => Err(RunError::Request(
                "--select needs --val-ood SET (an OOD set held out for validation)".into(),
            )),
            (None, Some(_)) => Err(RunError::Request(
                "--val-ood needs --select auroc|fpr95".into(),
            )),
            (None, None) => Ok(None),
        }
    }
}

/// Checks that every `[eval.groups]` member is an evaluated OOD set and that no group
/// is named like a set or `average`.
pub fn check_groups(
    path: &Path,
    groups: &IndexMap<String, Vec<String>>,
    ood_names: &[String],
) -> Result<(), RunError> {
    for (name, members) in groups {
        if ood_names.contains(name) || name == report::AVERAGE {
            return Err(RunError::Request(format!(
                "{}: [eval.groups] {name:?}: a group cannot be named like an OOD set or \"average\"",
                path.display()
            )));
        }
        if members.is_empty() {
            return Err(RunError::Request(format!(
                "{}: [eval.groups] {name:?} is empty",
                path.display()
            )));
        }
        if let Some(m) = members.iter().find(|m| !ood_names.contains(m)) {
            return Err(RunError::Request(format!(
                "{}: [eval.groups] {name:?} names {m:?}, which is not among the evaluated OOD sets ({})",
                path.display(),
                ood_names.join(", ")
            )));
        }
    }
    Ok(())
}

/// The default share of ID-test rows held out for validation by a selection.
pub const DEFAULT_VAL_FRACTION: &str = "0.2";

/// Where the cache of a request comes from.
#[derive(Debug, Clone, Copy)]
pub enum CacheSource<'a> {
    /// A cache the caller opened already.
    Opened(&'a FeatureCache),
    /// A directory or URL to open ([`FeatureCache::open_url`]); `None` = the config's
    /// `[eval] cache`. `verify = false` skips the sha256 checks on reads.
    Location {
        /// The directory or URL.
        location: Option<&'a str>,
        /// Check each file's sha256 while reading.
        verify: bool,
    },
}

/// An evaluation request as the caller gives it (the CLI's flags, the Python keywords):
/// texts parsed here, comma lists swept, plus the experiment config when one is given.
#[derive(Debug, Default)]
pub struct RequestArgs<'a> {
    /// Methods, comma separated; `None` runs the config's `[[eval.run]]` sweep.
    pub methods: Option<&'a str>,
    /// Parameter values swept over `methods` (must be empty without them).
    pub values: SweepValues,
    /// The config file and its contents.
    pub config: Option<(&'a Path, &'a ExperimentConfig)>,
    /// OOD sets to report (default: the config's `[eval] ood`, else every OOD set).
    pub ood: Option<Vec<String>>,
    /// Metric convention (default: the config's `[eval] convention`, else `sklearn`).
    pub convention: Option<&'a str>,
    /// Selection metric (`auroc`, `fpr95`); needs `val_ood`.
    pub select: Option<&'a str>,
    /// The OOD set held out for validation; needs `select`.
    pub val_ood: Option<&'a str>,
    /// Share of ID-test rows held out for validation (default [`DEFAULT_VAL_FRACTION`]).
    pub val_fraction: Option<&'a str>,
}

/// A request resolved against its (open) cache: the arguments of [`evaluate_cache`].
#[derive(Debug)]
pub struct ResolvedRequest<'a> {
    /// The cache: the caller's, or the one opened from its location.
    pub cache: Cow<'a, FeatureCache>,
    /// The settings to run, in request order.
    pub settings: Vec<Setting>,
    /// OOD sets, convention, groups and selection.
    pub request: EvalRequest,
}

impl ResolvedRequest<'_> {
    /// [`evaluate_cache`] of this request.
    pub fn evaluate(&self) -> Result<CacheEvaluation, RunError> {
        evaluate_cache(&self.cache, &self.settings, &self.request)
    }
}

/// Resolves `args` against the cache of `source`, the one path from flags (or keywords)
/// and a config to what [`evaluate_cache`] runs: the settings ([`request_settings`],
/// before the cache is opened), the convention, the cache opened (CLI wording: "opening
/// cache LOCATION: ..."), [`check_config_fits`], the [`Selection`], the OOD sets
/// ([`ood_sets`]) and the config's groups checked against the reported ones
/// ([`check_groups`]).
pub fn resolve_request<'a>(
    args: RequestArgs<'_>,
    source: CacheSource<'a>,
) -> Result<ResolvedRequest<'a>, RunError> {
    let config = args.config;
    let settings = request_settings(args.methods, args.values, config)?;
    let convention: Convention = args
        .convention
        .or(config.and_then(|(_, c)| c.eval.convention.as_deref()))
        .unwrap_or("sklearn")
        .parse()?;
    let cache = match source {
        CacheSource::Opened(cache) => Cow::Borrowed(cache),
        CacheSource::Location { location, verify } => {
            let location: Cow<'_, str> = match location {
                Some(l) => Cow::Borrowed(l),
                None => config
                    .and_then(|(_, c)| c.eval.cache.as_deref())
                    .map(Path::to_string_lossy)
                    .ok_or_else(|| {
                        RunError::Request(
                            "no cache: give --cache DIR (Python: cache=) or a config with [eval] cache"
                                .into(),
                        )
                    })?,
            };
            let cache =
                FeatureCache::open_url(&location, verify).map_err(|source| RunError::Open {
                    location: location.clone().into_owned(),
                    source: Box::new(source),
                })?;
            Cow::Owned(cache)
        }
    };
    if let Some((path, cfg)) = config {
        check_config_fits(path, cfg, &cache)?;
    }
    let selection = Selection::from_request(
        args.select,
        args.val_ood,
        args.val_fraction.unwrap_or(DEFAULT_VAL_FRACTION),
        &cache,
    )?;
    let ood_names = ood_sets(args.ood, config.map(|(_, c)| c), &cache)?;
    let groups = match config {
        Some((path, c)) => {
            let reported: Vec<String> = ood_names
                .iter()
                .filter(|n| selection.as_ref().is_none_or(|s| s.val_ood != **n))
                .cloned()
                .collect();
            check_groups(path, &c.eval.groups, &reported)?;
            c.eval.groups.clone()
        }
        None => Default::default(),
    };
    Ok(ResolvedRequest {
        cache,
        settings,
        request: EvalRequest {
            ood_sets: ood_names,
            convention,
            groups,
            selection,
        },
    })
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
    /// The reported OOD sets, in report order (without a validation set).
    pub ood_sets: Vec<String>,
    /// ID-test rows the reported metrics use (all of them, or those left after the
    /// validation hold-out).
    pub n_id: usize,
    /// One result per setting, in request order (scores of every set, metrics).
    pub results: Vec<Evaluation>,
    /// Long-format rows: per setting, one row per OOD set, one per OOD set group, then
    /// the average; with a selection, `selected` says which setting each method picked.
    pub rows: Vec<EvalRow>,
}

/// What to evaluate on a cache besides the settings: the reported OOD sets, the metric
/// convention, OOD set groups reported as extra average rows, and an optional selection.
#[derive(Debug, Clone, Default)]
pub struct EvalRequest {
    /// OOD sets to report, in order (a selection's validation set is left out of them).
    pub ood_sets: Vec<String>,
    /// Metric convention.
    pub convention: Convention,
    /// `[eval.groups]`: name -> member OOD sets (checked with [`check_groups`]).
    pub groups: IndexMap<String, Vec<String>>,
    /// Pick each method's best setting on a validation split.
    pub selection: Option<Selection>,
}

/// Reads the head, the ID-train statistics, the ID-test split, the OOD sets (and the
/// ID-train split when a method fits on it) of `cache` once, in parallel, evaluates every
/// setting and returns the results and rows.
pub fn evaluate_cache(
    cache: &FeatureCache,
    settings: &[Setting],
    request: &EvalRequest,
) -> Result<CacheEvaluation, RunError> {
    let started = Instant::now();
    let convention = request.convention;
    let id_name = cache.id_test().ok_or_else(|| {
        RunError::Request(format!(
            "cache {} has no ID-test split",
            cache.dir().display()
        ))
    })?;
    let mut ood_names = request.ood_sets.clone();
    let selection = request.selection.as_ref();
    if let Some(sel) = selection {
        ood_names.retain(|n| *n != sel.val_ood);
        if ood_names.is_empty() {
            return Err(RunError::Request(format!(
                "--val-ood {}: no OOD set is left to report on",
                sel.val_ood
            )));
        }
    }
    let names: Vec<&str> = std::iter::once(id_name.as_str())
        .chain(ood_names.iter().map(String::as_str))
        .chain(selection.map(|s| s.val_ood.as_str()))
        .collect();
    let (head, stats) = rayon::join(|| cache.head(), || cache.stats());
    let (head, stats) = (head?, stats?);
    let head64 = Head64::from_f32(head.weight.view(), head.bias.view())?;
    let percentile = train_percentile_fn(cache, &stats);
    // Fits first, on the ID-train split alone (read only when a selected method fits on
    // it), which is freed before the scored sets are read: the plan holds every fit, so
    // the split and the fits' temporaries never sit beside the scored features.
    let plan = {
        let train = if needs_train(settings) {
            let name = cache.id_train().ok_or_else(|| {
                RunError::Request(format!(
                    "cache {} has no ID-train split (knn, mahalanobis, vim, ... fit on it)",
                    cache.dir().display()
                ))
            })?;
            let split = cache.split_features(&name)?;
            let labels: Vec<i64> = split.labels.iter().map(|&l| i64::from(l)).collect();
            info!(rows = split.rows(), "ID-train split read");
            Some((split, labels))
        } else {
            None
        };
        let no_rows = ndarray::Array2::<f32>::zeros((0, head64.width()));
        Plan::new(
            &EvalInputs {
                head: &head64,
                train_mean: stats.mean.view(),
                class_means: stats.class_means.view(),
                train_percentile: &percentile,
                id: ScoreSet {
                    name: &id_name,
                    features: no_rows.view(),
                },
                id_labels: &[],
                ood: Vec::new(),
                train: train.as_ref().map(|(split, labels)| TrainSet {
                    features: split.features.view(),
                    labels,
                }),
            },
            settings,
        )?
    };
    let splits = names
        .par_iter()
        .map(|n| cache.split_features(n))
        .collect::<Result<Vec<SplitFeatures>, _>>()?;
    info!(
        sets = splits.len(),
        rows = splits.iter().map(|s| s.rows()).sum::<usize>(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "cache read"
    );
    let labels: Vec<i64> = splits[0].labels.iter().map(|&l| i64::from(l)).collect();
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
        train: None,
    };
    let (results, n_id, selected) = match selection {
        None => (plan.evaluate(&inputs, convention)?, splits[0].rows(), None),
        Some(sel) => {
            let (val_rows, test_rows) = sel.fraction.split(splits[0].rows())?;
            let pick = |rows: &[usize]| {
                (
                    splits[0].features.select(ndarray::Axis(0), rows),
                    rows.iter().map(|&r| labels[r]).collect::<Vec<i64>>(),
                )
            };
            let ((val_f, val_l), (test_f, test_l)) = (pick(&val_rows), pick(&test_rows));
            let val_split = splits.last().expect("the validation OOD set was read");
            let validation = plan.evaluate(
                &EvalInputs {
                    id: ScoreSet {
                        name: &id_name,
                        features: val_f.view(),
                    },
                    id_labels: &val_l,
                    ood: vec![ScoreSet {
                        name: &sel.val_ood,
                        features: val_split.features.view(),
                    }],
                    ..inputs
                },
                convention,
            )?;
            let chosen = best_per_method(&validation, sel.metric);
            info!(
                validation_id_rows = val_rows.len(),
                val_ood = %sel.val_ood,
                "selected on the validation split"
            );
            let tested = plan.evaluate(
                &EvalInputs {
                    id: ScoreSet {
                        name: &id_name,
                        features: test_f.view(),
                    },
                    id_labels: &test_l,
                    ..inputs
                },
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
        &request.groups,
        selected.as_deref(),
    );
    Ok(CacheEvaluation {
        id_set: id_name,
        ood_sets: ood_names,
        n_id,
        results,
        rows,
    })
}

/// Long-format rows: per setting, one row per OOD set, one per OOD set group (its
/// members' mean), then the average over all sets; `counts` = ID rows and rows per OOD
/// set; `selected` = whether each setting was selected (with a selection).
fn rows_of(
    results: &[Evaluation],
    id_name: &str,
    ood_names: &[String],
    counts: (usize, &[usize]),
    convention: Convention,
    groups: &IndexMap<String, Vec<String>>,
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
                convention: convention.as_str().to_owned(),
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
