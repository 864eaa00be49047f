//! DenseNet-BC (the DICE / Unleashing-Mask CIFAR network) as a burn module.

mod config;
mod dense_block;
mod densenet;

pub use config::{BlockPlan, DenseNetConfig, DenseNetPlan, TransitionPlan};
pub use dense_block::{DenseBlock, DenseLayer, TransitionBlock};
pub use densenet::{DenseNet, DenseNetActivations, global_average_pool};
