//! posthoc precompute and fine-tuning: DenseNet-BC in burn, PyTorch checkpoints, image
//! sets and torchvision-exact preprocessing.

pub mod checkpoint;
pub mod data;
pub mod error;
pub mod extractor;
pub mod model;
pub mod precompute;

pub use error::{CheckpointError, ModelConfigError, PipelineError, ShapeMismatch};
