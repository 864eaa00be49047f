//! The pipeline crate's error type.

use std::path::PathBuf;

/// Every error of the pipeline crate.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// A model hyperparameter is out of range.
    #[error(transparent)]
    ModelConfig(#[from] ModelConfigError),
    /// A checkpoint could not be read or does not fit the model.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// An image set could not be opened or read.
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    /// The feature cache could not be written.
    #[error(transparent)]
    Cache(#[from] posthoc_cache::CacheError),
    /// The precompute run cannot go on as configured.
    #[error("precompute: {reason}")]
    Precompute {
        /// What is wrong and what to do.
        reason: String,
    },
    /// A backend name that is unknown or not compiled in.
    #[error("unknown or unavailable backend `{spec}`: {reason}")]
    Backend {
        /// The name as given.
        spec: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// An input batch does not have the shape the network expects.
    #[error("input batch holds {found} values, expected {expected} ({n} x {shape:?})")]
    InputShape {
        /// Values found in the buffer.
        found: usize,
        /// Values expected: `n * product(shape)`.
        expected: usize,
        /// Number of images requested.
        n: usize,
        /// Shape of one image, `[channels, height, width]`.
        shape: [usize; 3],
    },
}

/// A [`DenseNetConfig`](crate::model::DenseNetConfig) field out of range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid DenseNet config: `{field}` {reason}")]
pub struct ModelConfigError {
    /// The offending field.
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

/// A tensor whose shape differs between the model and a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeMismatch {
    /// State-dict key (PyTorch naming).
    pub key: String,
    /// Shape the model needs.
    pub expected: Vec<usize>,
    /// Shape stored in the checkpoint.
    pub found: Vec<usize>,
}

/// Why a checkpoint could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The file could not be opened or read.
    #[error("cannot read checkpoint {path}: {source}")]
    Io {
        /// The checkpoint file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// burn's PyTorch reader rejected the file (not a `torch.save` file, no `state_dict`, ...).
    #[error("cannot parse checkpoint {path}: {message}")]
    Parse {
        /// The checkpoint file.
        path: PathBuf,
        /// The reader's message.
        message: String,
    },
    /// The state dict's keys or shapes do not match the model.
    #[error(
        "checkpoint {path} does not fit {model}: {}",
        describe_mismatch(missing, unexpected, shape_mismatches)
    )]
    StateDictMismatch {
        /// The checkpoint file.
        path: PathBuf,
        /// The model, e.g. `DenseNet-BC-100 (growth 12, 10 classes)`.
        model: String,
        /// Keys the model needs that the checkpoint lacks.
        missing: Vec<String>,
        /// Keys in the checkpoint the model has no place for.
        unexpected: Vec<String>,
        /// Keys present on both sides with different shapes, in the model's key order.
        shape_mismatches: Vec<ShapeMismatch>,
    },
    /// A tensor could not be applied to the model (dtype or conversion error).
    #[error("cannot load checkpoint {path} into the model: {message}")]
    Apply {
        /// The checkpoint file.
        path: PathBuf,
        /// burn-store's report.
        message: String,
    },
}

/// At most this many keys are listed per category in a message.
const MAX_LISTED_KEYS: usize = 12;

fn list_keys(keys: &[String]) -> String {
    let mut s = keys
        .iter()
        .take(MAX_LISTED_KEYS)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    if keys.len() > MAX_LISTED_KEYS {
        s.push_str(&format!(", ... ({} more)", keys.len() - MAX_LISTED_KEYS));
    }
    s
}

fn describe_mismatch(
    missing: &[String],
    unexpected: &[String],
    shapes: &[ShapeMismatch],
) -> String {
    let mut parts = Vec::new();
    if !missing.is_empty() {
        parts.push(format!(
            "{} missing key(s): {}",
            missing.len(),
            list_keys(missing)
        ));
    }
    if !unexpected.is_empty() {
        parts.push(format!(
            "{} unexpected key(s): {}",
            unexpected.len(),
            list_keys(unexpected)
        ));
    }
    if !shapes.is_empty() {
        let mut listed = shapes
            .iter()
            .take(MAX_LISTED_KEYS)
            .map(|m| {
                format!(
                    "{} (model {:?}, checkpoint {:?})",
                    m.key, m.expected, m.found
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        if shapes.len() > MAX_LISTED_KEYS {
            listed.push_str(&format!(", ... ({} more)", shapes.len() - MAX_LISTED_KEYS));
        }
        parts.push(format!("{} shape mismatch(es): {listed}", shapes.len()));
    }
    parts.join("; ")
}
