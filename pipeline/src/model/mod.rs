//! DenseNet-BC (the DICE / Unleashing-Mask CIFAR network) as a burn module.

mod config;
mod cpu;
mod dense_block;
mod densenet;
pub mod kernels;

pub use config::{BlockPlan, DenseNetConfig, DenseNetPlan, TransitionPlan};
pub use cpu::CpuDenseNet;
pub use dense_block::{DenseBlock, DenseLayer, TransitionBlock};
pub use densenet::{DenseNet, DenseNetActivations, global_average_pool, tensor_values};
