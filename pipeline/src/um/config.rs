//! The `[um]` section of an experiment config: the repository's hyperparameters
//! (`configs/smallscale/densenet_cifar10.yaml`, `densenet_cifar10_UMAP.yaml`,
//! `configs/estimate_loss/estimate_loss_cifar10.yaml`), checked once into
//! [`TrainSettings`] / [`EstimateSettings`].

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::UmError;
use super::estimate::{Estimate, EstimateSettings};
use super::loss::UmLoss;
use super::mask::KeepFraction;
use super::net::{BatchNormMode, NetSpec, Variant};
use super::optim::{CosineSchedule, Sgd};
use super::train::TrainSettings;

/// Where the loss constraint `UM` comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ConstraintSource {
    /// A number (`--UM 0.42` in the repository).
    Value(f64),
    /// `"estimate"`: the repository-style figure in `<out>/estimate.json` (written by
    /// `posthoc um estimate`); `"cache"`: the cache's mean train CE, from the same file.
    Named(String),
}

impl Default for ConstraintSource {
    fn default() -> Self {
        Self::Named("estimate".into())
    }
}

impl ConstraintSource {
    /// Parses `estimate`, `cache` or a number.
    pub fn parse(text: &str) -> Result<Self, UmError> {
        match text {
            "estimate" | "cache" => Ok(Self::Named(text.into())),
            _ => text.parse::<f64>().map(Self::Value).map_err(|_| {
                UmError::config(
                    "um.constraint",
                    format!("expected a number, `estimate` or `cache`, got `{text}`"),
                )
            }),
        }
    }

    /// The value of `UM`, reading `estimate_file` for the named sources.
    pub fn resolve(&self, estimate_file: &Path) -> Result<f64, UmError> {
        let name = match self {
            Self::Value(v) => return Ok(*v),
            Self::Named(n) => n.as_str(),
        };
        let read = || -> Result<Estimate, UmError> {
            let text = std::fs::read_to_string(estimate_file).map_err(|e| {
                UmError::config(
                    "um.constraint",
                    format!(
                        "`{name}` needs {} ({e}): run `posthoc um estimate` first, or give a number",
                        estimate_file.display()
                    ),
                )
            })?;
            serde_json::from_str(&text).map_err(|e| {
                UmError::config("um.constraint", format!("{}: {e}", estimate_file.display()))
            })
        };
        match name {
            "estimate" => read()?.repository.map(|r| r.mean_ce).ok_or_else(|| {
                UmError::config(
                    "um.constraint",
                    format!(
                        "{} has no repository-style estimate",
                        estimate_file.display()
                    ),
                )
            }),
            "cache" => read()?.cache.map(|c| c.mean_ce).ok_or_else(|| {
                UmError::config(
                    "um.constraint",
                    format!(
                        "{} has no cache figure ([um.estimate] cache)",
                        estimate_file.display()
                    ),
                )
            }),
            other => Err(UmError::config(
                "um.constraint",
                format!("expected a number, `estimate` or `cache`, got `{other}`"),
            )),
        }
    }
}

/// `[um]`: fine-tuning hyperparameters. Defaults are the repository's CIFAR-10 DenseNet
/// configs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UmSection {
    /// `um` or `umap`.
    #[serde(default = "default_variant")]
    pub variant: Variant,
    /// The pretrained checkpoint fine-tuning starts from (`pretrained:`).
    pub pretrained: PathBuf,
    /// Run folder: `state.safetensors`, `loss.csv`, `model.safetensors`, `estimate.json`.
    pub out: PathBuf,
    /// The loss constraint `UM` (`--UM`): a number, `"estimate"` or `"cache"`.
    #[serde(default)]
    pub constraint: ConstraintSource,
    /// `beta` of the loss (1).
    #[serde(default = "one")]
    pub beta: f64,
    /// `epochs` (100).
    #[serde(default = "hundred")]
    pub epochs: usize,
    /// `batch_size` (256).
    #[serde(default = "batch")]
    pub batch_size: usize,
    /// `lr` (0.1).
    #[serde(default = "lr")]
    pub lr: f64,
    /// `lr_policy`: only `cosine_lr` is implemented.
    #[serde(default = "cosine")]
    pub lr_policy: String,
    /// `warmup_length` in epochs (0).
    #[serde(default)]
    pub warmup_epochs: usize,
    /// `momentum` (0.9).
    #[serde(default = "momentum")]
    pub momentum: f64,
    /// `weight_decay` (1e-4; applied to every trained tensor, `no_bn_decay` false).
    #[serde(default = "weight_decay")]
    pub weight_decay: f64,
    /// `droprate` (0.3).
    #[serde(default = "droprate")]
    pub dropout: f64,
    /// BatchNorm treatment (`bn_type: NonAffineBatchNorm`; see [`BatchNormMode`]).
    #[serde(default = "frozen_affine")]
    pub batch_norm: BatchNormMode,
    /// UMAP's kept fraction `prune_rate` (0.8).
    #[serde(default = "umap_keep")]
    pub prune_rate: f64,
    /// Seed of all draws.
    #[serde(default)]
    pub seed: u64,
    /// Train-time augmentation (`RandomCrop(32, 4)`, `RandomHorizontalFlip`).
    #[serde(default = "yes")]
    pub augment: bool,
    /// Extra checkpoints every N iterations inside an epoch (0: epoch ends only).
    #[serde(default)]
    pub checkpoint_every: usize,
    /// `[um.estimate]`.
    #[serde(default)]
    pub estimate: EstimateSection,
}

/// `[um.estimate]`: `estimate_loss_cifar10.yaml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EstimateSection {
    /// Kept fraction of the random masks (`prune_rate` 0.965).
    #[serde(default = "estimate_keep")]
    pub prune_rate: f64,
    /// BatchNorm treatment (the repository: `non-affine`).
    #[serde(default = "non_affine")]
    pub batch_norm: BatchNormMode,
    /// Augment the training images as the repository's train loader does.
    #[serde(default = "yes")]
    pub augment: bool,
    /// Images per forward batch (512; does not change the result).
    #[serde(default = "estimate_batch")]
    pub batch_size: usize,
    /// A feature cache of the unmodified network whose mean train CE is the plain figure.
    #[serde(default)]
    pub cache: Option<PathBuf>,
}

impl Default for EstimateSection {
    fn default() -> Self {
        Self {
            prune_rate: estimate_keep(),
            batch_norm: non_affine(),
            augment: true,
            batch_size: estimate_batch(),
            cache: None,
        }
    }
}

fn default_variant() -> Variant {
    Variant::Um
}
fn one() -> f64 {
    1.0
}
fn hundred() -> usize {
    100
}
fn batch() -> usize {
    256
}
fn lr() -> f64 {
    0.1
}
fn cosine() -> String {
    "cosine_lr".into()
}
fn momentum() -> f64 {
    0.9
}
fn weight_decay() -> f64 {
    1e-4
}
fn droprate() -> f64 {
    0.3
}
fn frozen_affine() -> BatchNormMode {
    BatchNormMode::FrozenAffine
}
fn non_affine() -> BatchNormMode {
    BatchNormMode::NonAffine
}
fn umap_keep() -> f64 {
    0.8
}
fn yes() -> bool {
    true
}
fn estimate_keep() -> f64 {
    0.965
}
fn estimate_batch() -> usize {
    512
}

impl UmSection {
    /// `<out>/estimate.json`.
    pub fn estimate_file(&self) -> PathBuf {
        self.out.join("estimate.json")
    }

    /// The checked training settings with the constraint `um`.
    pub fn train_settings(&self, um: f64) -> Result<TrainSettings, UmError> {
        if self.lr_policy != "cosine_lr" {
            return Err(UmError::config(
                "um.lr_policy",
                format!("only cosine_lr is implemented, got `{}`", self.lr_policy),
            ));
        }
        if self.batch_size == 0 {
            return Err(UmError::config(
                "um.batch_size",
                "must be at least 1".into(),
            ));
        }
        if !(self.dropout.is_finite() && (0.0..1.0).contains(&self.dropout)) {
            return Err(UmError::config(
                "um.dropout",
                format!("must lie in [0, 1), got {}", self.dropout),
            ));
        }
        Ok(TrainSettings {
            net: NetSpec {
                variant: self.variant,
                batch_norm: self.batch_norm,
                dropout: self.dropout,
                keep: KeepFraction::new(self.prune_rate)?,
            },
            loss: UmLoss::new(self.beta, um)?,
            schedule: CosineSchedule::new(self.lr, self.epochs, self.warmup_epochs)?,
            sgd: Sgd::new(self.momentum, self.weight_decay)?,
            batch_size: self.batch_size,
            seed: self.seed,
            augment: self.augment,
            checkpoint_every: self.checkpoint_every,
        })
    }

    /// The checked estimate settings.
    pub fn estimate_settings(&self) -> Result<EstimateSettings, UmError> {
        Ok(EstimateSettings {
            keep: KeepFraction::new(self.estimate.prune_rate)?,
            batch_norm: self.estimate.batch_norm,
            augment: self.estimate.augment,
            seed: self.seed,
            batch_size: self.estimate.batch_size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_repository_configs() {
        let s: UmSection = toml::from_str("pretrained = \"a.pth\"\nout = \"o\"\n").unwrap();
        assert_eq!(s.variant, Variant::Um);
        assert_eq!(
            (s.epochs, s.batch_size, s.lr, s.momentum),
            (100, 256, 0.1, 0.9)
        );
        assert_eq!((s.weight_decay, s.dropout, s.prune_rate), (1e-4, 0.3, 0.8));
        assert_eq!(s.estimate.prune_rate, 0.965);
        assert_eq!(s.estimate.batch_norm, BatchNormMode::NonAffine);
        let t = s.train_settings(0.25).unwrap();
        assert_eq!(t.loss.constraint(), 0.25);
        assert_eq!(t.schedule.lr(0), 0.1);
        let bad: Result<UmSection, _> =
            toml::from_str("pretrained = \"a\"\nout = \"o\"\nlrate = 1\n");
        assert!(bad.unwrap_err().to_string().contains("lrate"));
        let mut s2 = s.clone();
        s2.lr_policy = "step".into();
        assert!(
            s2.train_settings(0.0)
                .unwrap_err()
                .to_string()
                .contains("lr_policy")
        );
    }

    #[test]
    fn constraint_sources_resolve() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("estimate.json");
        assert_eq!(
            ConstraintSource::parse("0.5").unwrap().resolve(&f).unwrap(),
            0.5
        );
        let err = ConstraintSource::parse("estimate")
            .unwrap()
            .resolve(&f)
            .unwrap_err();
        assert!(err.to_string().contains("posthoc um estimate"), "{err}");
        std::fs::write(
            &f,
            r#"{"repository": null, "cache": {"cache": "c", "mean_ce": 0.3, "accuracy": 0.9, "images": 5}}"#,
        )
        .unwrap();
        assert_eq!(
            ConstraintSource::parse("cache")
                .unwrap()
                .resolve(&f)
                .unwrap(),
            0.3
        );
        assert!(
            ConstraintSource::parse("estimate")
                .unwrap()
                .resolve(&f)
                .is_err()
        );
        assert!(ConstraintSource::parse("x").is_err());
    }
}
