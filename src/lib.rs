//! posthoc: post-hoc OOD detection from an on-disk feature cache.
//!
//! `eval` holds the math (scores, masks, metrics), `evaluate` runs a request over a cache
//! (shared by the CLI and the Python binding), `config` reads experiment configs,
//! `report` prints and writes results, `plots` draws them.

pub mod config;
pub mod eval;
pub mod evaluate;
pub mod plots;
pub mod report;
