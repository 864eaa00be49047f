//! posthoc precompute and fine-tuning.

pub mod data;
