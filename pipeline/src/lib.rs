//! posthoc precompute and fine-tuning.
