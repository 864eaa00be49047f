//! posthoc: post-hoc OOD detection from an on-disk feature cache.
//!
//! `eval` holds the math (scores, masks, metrics), `config` reads experiment configs,
//! `report` prints and writes results, `plots` draws them.

pub mod config;
pub mod eval;
pub mod plots;
pub mod report;
