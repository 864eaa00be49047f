//! posthoc precompute and fine-tuning: DenseNet-BC in burn, PyTorch checkpoints, image sets,
//! torchvision-exact preprocessing, and the precompute driver.
//!
//! - [`model`]: DenseNet-BC ([`model::DenseNet`], DICE's `DenseNet3`) as a burn module that
//!   runs on any burn device (CPU `flex` by default; `tch` / `cuda` crate features), its
//!   checked configuration ([`model::DenseNetConfig`]), and [`model::CpuDenseNet`], a fused
//!   eval-mode CPU engine computing the same network several times faster on both cores.
//! - [`checkpoint`]: loading the papers' PyTorch checkpoints with every key and shape
//!   checked, and their sha256.
//! - [`extractor`]: [`extractor::FeatureExtractor`], batches of normalised images in,
//!   penultimate features and logits out, on the CPU engine or a burn device.
//! - [`data`]: image sets (ImageFolder, tar shards), Pillow-exact decoding and
//!   preprocessing, and the ordered parallel loader.
//! - [`precompute`]: the driver writing (and resuming) the feature cache.
//! - [`um`]: Unleashing-Mask fine-tuning (UM, UMAP), the loss-constraint estimate and the
//!   safetensors export precompute reads.

pub mod checkpoint;
pub mod data;
pub mod error;
pub mod extractor;
pub mod model;
pub mod precompute;
pub mod um;

pub use error::{CheckpointError, ModelConfigError, PipelineError, ShapeMismatch};
