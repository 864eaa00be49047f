//! Unleashing Mask (Zhu et al., ICML 2023; `ZFancy/Unleashing-Mask`): fine-tuning a
//! pretrained DenseNet with the loss constraint `|beta * CE - UM| + UM` (UM: all weights;
//! UMAP: learnable masks over frozen weights), estimating that constraint, and exporting the
//! result as a checkpoint that precompute reads.
//!
//! - [`loss`]: the UM loss and the batch cross-entropy.
//! - [`mask`]: UMAP's top-`|score|` mask with the straight-through gradient.
//! - [`optim`]: PyTorch's SGD step and the repository's per-epoch cosine schedule.
//! - [`net`]: the training network (dropout, train-mode BatchNorm, masks) with host-side
//!   named parameters.
//! - [`data`]: the training set in memory with `RandomCrop(32, padding=4)` and
//!   `RandomHorizontalFlip()`, deterministic from a seed.
//! - [`tensors`]: safetensors files (export and training checkpoints), written atomically.
//! - [`train`]: the training loop with checkpoints and exact resume.
//! - [`estimate`]: the repository's `estimate_loss.py` procedure.
//! - [`config`]: the `[um]` config section and its checks.
//! - [`rng`]: counter-based random numbers keyed by seed, epoch and position.

pub mod config;
pub mod data;
pub mod estimate;
pub mod loss;
pub mod mask;
pub mod net;
pub mod optim;
pub mod rng;
pub mod tensors;
pub mod train;

pub use loss::{UmLoss, cross_entropy};
pub use mask::{KeepFraction, subnet_mask};
pub use net::{BatchNormMode, NetSpec, ParamEntry, Pass, UmNet, Variant};
pub use optim::{CosineSchedule, Sgd, SgdState};

use std::path::PathBuf;

/// Every error of Unleashing-Mask training and estimation.
#[derive(Debug, thiserror::Error)]
pub enum UmError {
    /// A hyperparameter is out of range.
    #[error("invalid UM setting `{field}`: {reason}")]
    Config {
        /// The setting (`um.lr`, `prune_rate`, ...).
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A set of named tensors does not fit the network.
    #[error("network state: {0}")]
    State(String),
    /// A tensor file could not be read or written.
    #[error("{path}: {reason}")]
    TensorFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A training checkpoint does not belong to this run.
    #[error("cannot resume from {path}: {reason}")]
    Resume {
        /// The checkpoint.
        path: PathBuf,
        /// Why not.
        reason: String,
    },
    /// An I/O error on a file the run writes.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Loading the pretrained network or the images failed.
    #[error(transparent)]
    Pipeline(#[from] crate::PipelineError),
    /// Reading the feature cache failed.
    #[error(transparent)]
    Cache(#[from] posthoc_cache::CacheError),
    /// The run was stopped (Ctrl-C or a stop file) after its last checkpoint.
    #[error("stopped after epoch {epoch}")]
    Stopped {
        /// Epochs completed.
        epoch: usize,
    },
}

impl UmError {
    pub(crate) fn config(field: &'static str, reason: String) -> Self {
        Self::Config { field, reason }
    }

    pub(crate) fn state(reason: String) -> Self {
        Self::State(reason)
    }

    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }
}

impl From<crate::data::DataError> for UmError {
    fn from(e: crate::data::DataError) -> Self {
        Self::Pipeline(e.into())
    }
}
