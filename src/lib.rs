//! posthoc: post-hoc OOD detection from an on-disk feature cache.
//!
//! `config` reads experiment configs, `report` prints and writes results.

pub mod config;
pub mod plots;
pub mod report;
