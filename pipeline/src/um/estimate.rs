//! The loss constraint `UM`, two ways.
//!
//! 1. The repository's `estimate_loss.py`: the pretrained network wrapped as
//!    `configs/estimate_loss/estimate_loss_cifar10.yaml` says — `SubnetConv` / `SubnetLinear`
//!    with `prune_rate` 0.965 over frozen weights, `NonAffineBatchNorm` — evaluated in eval
//!    mode over the ID training loader (its train-time augmentation included) and averaged:
//!    `trainers/default.py::modifier` returns the sample-weighted mean cross-entropy. The
//!    scores of that wrapper are never trained or loaded (the pretrained state dict has
//!    none): they keep their `kaiming_uniform_(a = sqrt(5))` initialisation, so the mask
//!    is a uniformly random choice of `int(0.035 n)` zeroed weights in every convolution and
//!    the linear head. In eval mode this network is an ordinary DenseNet with weights `W * m`
//!    and BatchNorm gamma/beta as the [`BatchNormMode`] says, so it is folded into a state
//!    dict and run on the fast CPU engine (or any burn device).
//! 2. The plain form: the mean train cross-entropy of the unmodified network, read from a
//!    feature cache's statistics (free once the cache exists).

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use super::UmError;
use super::data::TrainImages;
use super::mask::KeepFraction;
use super::net::{BatchNormMode, NetSpec, UmNet, Variant};
use super::train::export;
use crate::checkpoint::load_densenet;
use crate::data::Preprocess;
use crate::extractor::{ExtractorBackend, FeatureExtractor};
use crate::model::{DenseNet, DenseNetPlan};

/// Settings of the repository-style estimate.
#[derive(Debug, Clone, PartialEq)]
pub struct EstimateSettings {
    /// Kept fraction of every masked layer (`prune_rate`, 0.965).
    pub keep: KeepFraction,
    /// BatchNorm treatment (the repository: [`BatchNormMode::NonAffine`]).
    pub batch_norm: BatchNormMode,
    /// Apply the training loader's augmentation (the repository does).
    pub augment: bool,
    /// Seed of the random scores and the augmentation draws.
    pub seed: u64,
    /// Images per forward batch (does not change the result).
    pub batch_size: usize,
}

/// The repository-style figure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RepositoryEstimate {
    /// Mean cross-entropy: the constraint `UM`.
    pub mean_ce: f64,
    /// Top-1 accuracy of the masked network on the same images.
    pub accuracy: f64,
    /// Images averaged over.
    pub images: usize,
    /// Kept fraction.
    pub keep: f64,
    /// BatchNorm treatment.
    pub batch_norm: BatchNormMode,
    /// Augmentation on/off.
    pub augment: bool,
    /// Seed.
    pub seed: u64,
    /// Weights zeroed by the random masks / weights masked.
    pub pruned: (usize, usize),
}

/// The plain figure from a cache.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheEstimate {
    /// The cache folder.
    pub cache: PathBuf,
    /// Mean train cross-entropy of the cached logits.
    pub mean_ce: f64,
    /// Train accuracy of the cached logits.
    pub accuracy: f64,
    /// Rows.
    pub images: u64,
}

/// Both figures, as written to `estimate.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    /// `estimate_loss.py`'s procedure.
    pub repository: Option<RepositoryEstimate>,
    /// The cache's mean train CE.
    pub cache: Option<CacheEstimate>,
}

/// Mean cross-entropy of the repository's estimate wrapper of `model` over `images`.
///
/// Writes the folded network to `folded` (a safetensors state dict, also useful to inspect)
/// and runs it on `backend`.
#[allow(clippy::too_many_arguments)]
pub fn estimate_repository(
    model: &DenseNet,
    plan: &DenseNetPlan,
    images: &TrainImages,
    preprocess: &Preprocess,
    settings: &EstimateSettings,
    backend: ExtractorBackend,
    folded: &Path,
    progress: bool,
) -> Result<RepositoryEstimate, UmError> {
    if settings.batch_size == 0 {
        return Err(UmError::config(
            "estimate.batch_size",
            "must be at least 1".into(),
        ));
    }
    let spec = NetSpec {
        variant: Variant::Umap,
        batch_norm: settings.batch_norm,
        dropout: 0.0,
        keep: settings.keep,
    };
    let net = UmNet::from_densenet(model, plan, spec, settings.seed)?;
    let (mut pruned, mut total) = (0usize, 0usize);
    for e in net.entries().iter().filter(|e| e.key.ends_with(".scores")) {
        let w = format!("{}.weight", e.key.trim_end_matches(".scores"));
        let mask = net.mask_of(&w).expect("scores have a weight");
        pruned += mask.iter().filter(|&&m| m == 0.0).count();
        total += mask.len();
    }
    export(
        &net,
        folded,
        &serde_json::json!({"estimate": format!("{settings:?}")}),
    )?;
    let device = match &backend {
        ExtractorBackend::Cpu { .. } => Device::flex(),
        ExtractorBackend::Burn(device) => device.clone(),
    };
    let loaded = load_densenet(&plan.config, folded, &device)?;
    let extractor = FeatureExtractor::from_loaded(loaded, backend);

    let order = images.epoch_order(settings.seed, 0);
    let augment = settings
        .augment
        .then(|| TrainImages::epoch_stream(settings.seed, 0));
    let bar = progress.then(|| {
        let b = ProgressBar::new(images.len() as u64);
        b.set_style(
            ProgressStyle::with_template(
                "{bar:30} {pos}/{len} images [{elapsed_precise}<{eta_precise}] {msg}",
            )
            .expect("valid template"),
        );
        b
    });
    let classes = plan.config.num_classes;
    let (mut ce_sum, mut correct) = (0.0f64, 0usize);
    for chunk in order.chunks(settings.batch_size) {
        let (pixels, labels) = images.batch(chunk, augment, preprocess);
        let out = extractor.extract(&pixels, chunk.len())?;
        for (z, &y) in out.logits.chunks_exact(classes).zip(&labels) {
            let (ce, top) = sample_ce(z, y as usize);
            ce_sum += ce;
            correct += usize::from(top == y as usize);
        }
        if let Some(b) = &bar {
            b.inc(chunk.len() as u64);
        }
    }
    if let Some(b) = &bar {
        b.finish();
    }
    let n = images.len();
    Ok(RepositoryEstimate {
        mean_ce: ce_sum / n.max(1) as f64,
        accuracy: correct as f64 / n.max(1) as f64,
        images: n,
        keep: settings.keep.get(),
        batch_norm: settings.batch_norm,
        augment: settings.augment,
        seed: settings.seed,
        pruned: (pruned, total),
    })
}

/// `logsumexp(z) - z[y]` in f64 and the argmax of `z` (lowest index on ties).
pub fn sample_ce(z: &[f32], y: usize) -> (f64, usize) {
    let mut top = 0;
    for (i, v) in z.iter().enumerate() {
        if *v > z[top] {
            top = i;
        }
    }
    let m = f64::from(z[top]);
    let lse = m + z
        .iter()
        .map(|v| (f64::from(*v) - m).exp())
        .sum::<f64>()
        .ln();
    (lse - f64::from(z[y]), top)
}

/// The plain figure: mean train CE of the cache at `dir` (its statistics).
pub fn estimate_from_cache(dir: &Path) -> Result<CacheEstimate, UmError> {
    let stats = posthoc_cache::FeatureCache::open(dir)?.stats()?;
    Ok(CacheEstimate {
        cache: dir.to_path_buf(),
        mean_ce: stats.mean_ce,
        accuracy: stats.accuracy,
        images: stats.n_train,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_cross_entropy() {
        let (ce, top) = sample_ce(&[1.0, 2.0, 3.0], 2);
        assert!((ce - 0.407_605_96).abs() < 1e-7);
        assert_eq!(top, 2);
        let (ce, top) = sample_ce(&[0.0, 0.0, 0.0], 1);
        assert!((ce - 3f64.ln()).abs() < 1e-12);
        assert_eq!(top, 0);
    }
}
