//! The precompute driver: runs the backbone once over every image set and writes the
//! feature cache (`posthoc-cache`), resumably.
//!
//! For each set in order (ID train, ID test, OOD sets): open it, ask the cache writer
//! which dataset indices are already committed, stream the rest through the loader
//! (decoding on its own threads, a bounded queue ahead of the network), run the network
//! on each batch and append features and logits. A set that an earlier run closed is
//! skipped; an interrupted one continues after its last committed row group. The cache
//! is finished (statistics computed, `manifest.json` written last) only once every set
//! of the run is closed, so `--only` runs build up one cache over several invocations.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use ndarray::Array2;
use posthoc_cache::{
    CacheWriter, Head, Manifest, ManifestInit, ModelInfo, Role, SplitData, ToolInfo, WriterOptions,
};
use tracing::info;

use crate::data::{ImageSet, ImageSetSpec, Loader, LoaderOptions, Preprocess};
use crate::error::PipelineError;
use crate::extractor::FeatureExtractor;

/// One image set of a run.
#[derive(Debug, Clone)]
pub struct SetPlan {
    /// Set name in the cache (`id_train`, `id_test`, `isun`, ...).
    pub name: String,
    /// Its role.
    pub role: Role,
    /// Where its images are.
    pub source: ImageSetSpec,
}

/// Everything a precompute run needs besides the loaded network.
#[derive(Debug, Clone)]
pub struct PrecomputeSpec {
    /// Cache directory to write (or resume).
    pub out: PathBuf,
    /// Model id for the manifest.
    pub model_id: String,
    /// Class names in label order (ID folders must match them).
    pub class_names: Vec<String>,
    /// Test-time transform.
    pub preprocess: Preprocess,
    /// Relative set paths are resolved against this folder.
    pub base_dir: PathBuf,
    /// Sets, in cache order.
    pub sets: Vec<SetPlan>,
    /// Only these sets (by name) in this invocation; `None` = all.
    pub only: Option<Vec<String>>,
    /// Images per forward batch.
    pub batch_size: usize,
    /// First `limit` images of every set (quick runs); `None` = all.
    pub limit: Option<u64>,
    /// `(i, n)`: write the `i`-th of `n` disjoint slices of every set (join with `cache merge`).
    pub shard: Option<(u64, u64)>,
    /// Record unreadable images in the manifest instead of failing.
    pub skip_bad: bool,
    /// Rows per durable commit (and per Parquet row group) of a new cache: an interrupted
    /// run resumes after the last commit.
    pub commit_rows: usize,
    /// Free-form provenance for the manifest (command line, config, ...).
    pub provenance: serde_json::Value,
    /// Show progress bars (off in tests and when stderr is not a terminal).
    pub progress: bool,
}

/// What one set's pass did.
#[derive(Debug, Clone, PartialEq)]
pub struct SetReport {
    /// Set name.
    pub name: String,
    /// Rows in the set after this run.
    pub rows: u64,
    /// Images processed by this run (0 when the set was already complete).
    pub processed: u64,
    /// Images skipped as unreadable in this run.
    pub skipped: u64,
    /// Wall time of this run's pass over the set.
    pub seconds: f64,
}

impl SetReport {
    /// Images per second of this run's pass.
    pub fn images_per_second(&self) -> f64 {
        if self.seconds > 0.0 {
            self.processed as f64 / self.seconds
        } else {
            0.0
        }
    }
}

/// The outcome of a run.
#[derive(Debug)]
pub struct PrecomputeReport {
    /// Per set, in order.
    pub sets: Vec<SetReport>,
    /// The manifest, when the cache was finished by this run.
    pub manifest: Option<Manifest>,
}

fn fail(reason: impl Into<String>) -> PipelineError {
    PipelineError::Precompute {
        reason: reason.into(),
    }
}

/// Opens the writer: a new cache, or the interrupted one in `out` (which must be from the
/// same model and checkpoint), or `None` when `out` is already a finished cache.
fn open_writer(
    spec: &PrecomputeSpec,
    init: ManifestInit,
) -> Result<Option<CacheWriter>, PipelineError> {
    let out = &spec.out;
    let has_entries = std::fs::read_dir(out)
        .is_ok_and(|mut d| d.any(|e| e.is_ok_and(|e| e.file_name() != posthoc_cache::LOCK_FILE)));
    if !has_entries {
        let options = WriterOptions {
            commit_rows: Some(spec.commit_rows),
            ..WriterOptions::default()
        };
        return Ok(Some(CacheWriter::create_with(out, init, options)?));
    }
    let writer = CacheWriter::open_resume(out)?;
    if writer.is_finished() {
        let manifest = Manifest::read(out)?;
        check_same_model(out, &manifest.model, &init.model)?;
        return Ok(None);
    }
    check_same_model(out, &writer.init().model, &init.model)?;
    Ok(Some(writer))
}

fn check_same_model(out: &Path, found: &ModelInfo, want: &ModelInfo) -> Result<(), PipelineError> {
    if found != want {
        return Err(fail(format!(
            "{} holds a cache of another model ({} checkpoint {:?}, m = {}, C = {}); this run is {} checkpoint {:?}, m = {}, C = {}: use another --out",
            out.display(),
            found.id,
            found.checkpoint_sha256,
            found.feature_dim,
            found.num_classes,
            want.id,
            want.checkpoint_sha256,
            want.feature_dim,
            want.num_classes
        )));
    }
    Ok(())
}

/// Runs the network over every set of `spec` and writes (or resumes) the cache.
pub fn precompute(
    spec: &PrecomputeSpec,
    net: &FeatureExtractor,
) -> Result<PrecomputeReport, PipelineError> {
    let (m, c) = (net.feature_dim(), net.num_classes());
    if spec.class_names.len() != c {
        return Err(fail(format!(
            "{} class names given for a {c}-class head",
            spec.class_names.len()
        )));
    }
    if let Some(only) = &spec.only {
        for name in only {
            if !spec.sets.iter().any(|s| &s.name == name) {
                return Err(fail(format!(
                    "--only {name}: no such set (the config has {})",
                    spec.sets
                        .iter()
                        .map(|s| s.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
    }
    let init = ManifestInit {
        model: ModelInfo {
            id: spec.model_id.clone(),
            checkpoint_sha256: Some(net.checkpoint().sha256.clone()),
            feature_dim: m,
            num_classes: c,
            class_names: spec.class_names.clone(),
        },
        preprocessing: serde_json::json!({
            "resize": spec.preprocess.resize(),
            "resize_interpolation": spec.preprocess.interpolation().describe(),
            "crop": spec.preprocess.crop(),
            "center_crop_rounding": "round half to even (torchvision CenterCrop)",
            "to_tensor": "uint8 / 255",
            "mean": spec.preprocess.mean(),
            "std": spec.preprocess.std(),
            "decode": "libjpeg-turbo default (accurate integer IDCT, fancy upsampling); PNG; converted to RGB as PIL convert('RGB')",
        }),
        tool: ToolInfo {
            name: "posthoc".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        },
        created: None,
        provenance: spec.provenance.clone(),
    };
    let Some(mut writer) = open_writer(spec, init)? else {
        info!(out = %spec.out.display(), "cache is already complete: nothing to do");
        let manifest = Manifest::read(&spec.out)?;
        let sets = manifest
            .files
            .iter()
            .filter_map(|f| {
                f.set.clone().map(|name| SetReport {
                    name,
                    rows: f.rows,
                    processed: 0,
                    skipped: 0,
                    seconds: 0.0,
                })
            })
            .collect();
        return Ok(PrecomputeReport {
            sets,
            manifest: Some(manifest),
        });
    };
    let (w, b) = net.head();
    writer.write_head(&Head {
        weight: Array2::from_shape_vec((c, m), w.to_vec()).expect("head is C x m"),
        bias: ndarray::Array1::from(b.to_vec()),
    })?;

    let mut reports = Vec::new();
    let mut all_closed = true;
    for set in &spec.sets {
        let selected = spec.only.as_ref().is_none_or(|o| o.contains(&set.name));
        if !selected {
            all_closed &= writer.split_writer(&set.name, set.role)?.is_closed();
            continue;
        }
        reports.push(run_set(spec, net, &writer, set)?);
    }
    let manifest = if all_closed {
        info!(out = %spec.out.display(), "finishing cache (statistics, manifest)");
        record_run(writer.provenance_mut(), &reports);
        Some(writer.finish()?)
    } else {
        info!(
            out = %spec.out.display(),
            "some sets are not done yet: the cache stays unfinished until a run completes them"
        );
        None
    };
    Ok(PrecomputeReport {
        sets: reports,
        manifest,
    })
}

/// Adds the finish time and this run's per-set throughput to the manifest's provenance
/// (when it is a JSON object).
fn record_run(provenance: &mut serde_json::Value, reports: &[SetReport]) {
    let Some(p) = provenance.as_object_mut() else {
        return;
    };
    p.insert(
        "finished".into(),
        chrono::Utc::now()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            .into(),
    );
    let sets: Vec<serde_json::Value> = reports
        .iter()
        .map(|r| {
            serde_json::json!({
                "name": r.name,
                "rows": r.rows,
                "processed": r.processed,
                "skipped": r.skipped,
                "seconds": r.seconds,
                "images_per_second": r.images_per_second(),
            })
        })
        .collect();
    p.insert("sets".into(), sets.into());
}

/// One set: resume point, loader, network, appends.
fn run_set(
    spec: &PrecomputeSpec,
    net: &FeatureExtractor,
    writer: &CacheWriter,
    plan: &SetPlan,
) -> Result<SetReport, PipelineError> {
    let mut split = writer.split_writer(&plan.name, plan.role)?;
    let started = Instant::now();
    if split.is_closed() {
        let rows = split.resume_point().rows;
        info!(set = plan.name, rows, "set already complete: skipped");
        return Ok(SetReport {
            name: plan.name.clone(),
            rows,
            processed: 0,
            skipped: 0,
            seconds: 0.0,
        });
    }
    let is_id = plan.role.is_id();
    let classes = is_id.then_some(spec.class_names.as_slice());
    let set: Arc<dyn ImageSet> = plan.source.open(&spec.base_dir, classes)?;
    if is_id && set.classes() != spec.class_names.as_slice() {
        return Err(fail(format!(
            "ID set {} ({}) has classes {:?}, the model's class names are {:?}",
            plan.name,
            set.location().display(),
            set.classes(),
            spec.class_names
        )));
    }
    let mut options = LoaderOptions {
        batch_size: spec.batch_size,
        limit: spec.limit,
        shard: spec.shard,
        ..LoaderOptions::default()
    };
    options.skip_bad = spec.skip_bad;
    // Resume after the committed rows of this run's slice.
    let range = options.selection(set.len())?;
    let done = split.resume_point();
    let mut start = range.start;
    while start < range.end && done.contains(start) {
        start += 1;
    }
    options.resume_from = start;
    let todo = range.end - start;
    info!(
        set = plan.name,
        images = range.end - range.start,
        already = start - range.start,
        todo,
        "precomputing"
    );
    let bar = progress_bar(spec.progress, &plan.name, todo);
    let loader = Loader::new(set.clone(), spec.preprocess.clone(), &options)?;
    let (mut processed, mut skipped) = (0u64, 0u64);
    for batch in loader {
        let batch = batch?;
        for bad in &batch.skipped {
            tracing::warn!(
                set = plan.name,
                path = bad.path,
                reason = bad.reason,
                "skipped unreadable image"
            );
            split.skip(bad.index, &bad.path, &bad.reason)?;
            skipped += 1;
        }
        if batch.is_empty() {
            bar.inc(batch.skipped.len() as u64);
            continue;
        }
        let n = batch.len();
        let out = net.extract(&batch.data, n)?;
        let labels = if is_id {
            batch.labels.clone()
        } else {
            vec![-1; n]
        };
        split.append(&SplitData {
            index: batch.indices.clone(),
            paths: batch.paths.clone(),
            labels,
            features: Array2::from_shape_vec((n, net.feature_dim()), out.features)
                .expect("extractor returns n x m"),
            logits: Array2::from_shape_vec((n, net.num_classes()), out.logits)
                .expect("extractor returns n x C"),
        })?;
        processed += n as u64;
        bar.inc((n + batch.skipped.len()) as u64);
    }
    let rows = split.close()?;
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    let report = SetReport {
        name: plan.name.clone(),
        rows,
        processed,
        skipped,
        seconds,
    };
    info!(
        set = plan.name,
        rows,
        processed,
        skipped,
        seconds = format!("{seconds:.1}"),
        images_per_s = format!("{:.1}", report.images_per_second()),
        "set done"
    );
    Ok(report)
}

fn progress_bar(enabled: bool, name: &str, total: u64) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>14} [{bar:36}] {pos}/{len} {per_sec:>12} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(name.to_owned());
    bar
}
