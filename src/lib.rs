//! posthoc: post-hoc OOD detection from a feature cache.

pub mod eval;
